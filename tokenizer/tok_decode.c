/*
 * tok_decode.c - ids -> text, whole (tok_decode) and streaming (tok_detok).
 *
 * HF semantics: byte-level tokens are concatenated as bytes and decoded as UTF-8
 * with U+FFFD per maximal invalid subpart; an added token is written verbatim and
 * ends the byte run before it (that run is decoded on its own); skip_special drops
 * special added tokens without ending the run; ids naming no token are skipped.
 *
 * Streaming: the detokenizer keeps only the bytes of a trailing UTF-8 sequence
 * that is valid so far but unfinished. Everything before it is final, because
 * lossy decoding of a prefix never changes once the decoder has moved past it,
 * and the held bytes start at a lead byte, so decoding can resume there.
 */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

struct tok_detok {
    const tok_tokenizer *tok;
    bool skip_special;
    tok_buf held;  /* unfinished UTF-8 sequence (at most 3 bytes) */
    tok_buf chunk; /* the text handed out by the last call */
};

mls_status tok_decode(const tok_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                      char **text_p, size_t *len_p, mls_err *err)
{
    tok_buf out = {0}, run = {0};
    mls_status st = MLS_OK;

    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_ids) {
            continue;
        }
        uint8_t f = tok->id_flags[id];
        if (f & TOK_ID_ADDED) {
            const tok_added_token *a = &tok->added[tok->added_of_id[id]];
            if (skip_special && (f & TOK_ID_SPECIAL)) {
                continue;
            }
            if (!tok_utf8_lossy((const uint8_t *)run.data, run.len, false, &out, NULL) ||
                !tok_buf_append(&out, tok->strings + a->off, a->len)) {
                goto err_free_bufs;
            }
            run.len = 0;
        } else if (f & TOK_ID_MODEL) {
            if (!tok_buf_append(&run, tok->strings + tok->dec_off[id], tok->dec_len[id])) {
                goto err_free_bufs;
            }
        }
    }
    if (!tok_utf8_lossy((const uint8_t *)run.data, run.len, false, &out, NULL) ||
        !tok_buf_append(&out, "", 0)) {
        goto err_free_bufs;
    }
    *text_p = mls_buf_detach(&out, len_p);
    tok_buf_free(&run);
    return MLS_OK;
err_free_bufs:
    st = MLS_ERR_NO_MEMORY;
    mls_err_set(err, "decode of %zu ids: out of memory", n);
    tok_buf_free(&out);
    tok_buf_free(&run);
    return st;
}

mls_status tok_detok_create(const tok_tokenizer *tok, bool skip_special, tok_detok **d_p,
                            mls_err *err)
{
    tok_detok *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        mls_err_set(err, "detokenizer: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    d->tok = tok;
    d->skip_special = skip_special;
    if (!tok_buf_append(&d->chunk, "", 0) || !tok_buf_append(&d->held, "", 0)) {
        tok_detok_destroy(d);
        mls_err_set(err, "detokenizer: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    *d_p = d;
    return MLS_OK;
}

/* Decodes the held bytes into the chunk; with partial, an unfinished tail stays held. */
static bool tok_detok_drain(tok_detok *d, bool partial)
{
    size_t held = 0;
    if (!tok_utf8_lossy((const uint8_t *)d->held.data, d->held.len, partial, &d->chunk, &held)) {
        return false;
    }
    memmove(d->held.data, d->held.data + d->held.len - held, held);
    d->held.len = held;
    return true;
}

mls_status tok_detok_feed(tok_detok *d, int32_t id, const char **text_p, size_t *len_p)
{
    const tok_tokenizer *tok = d->tok;
    bool ok = true;

    d->chunk.len = 0;
    d->chunk.data[0] = '\0';
    if (id >= 0 && id < tok->n_ids) {
        uint8_t f = tok->id_flags[id];
        if ((f & TOK_ID_ADDED) && !(d->skip_special && (f & TOK_ID_SPECIAL))) {
            const tok_added_token *a = &tok->added[tok->added_of_id[id]];
            ok = tok_detok_drain(d, false) &&
                 tok_buf_append(&d->chunk, tok->strings + a->off, a->len);
        } else if (!(f & TOK_ID_ADDED) && (f & TOK_ID_MODEL)) {
            ok = tok_buf_append(&d->held, tok->strings + tok->dec_off[id], tok->dec_len[id]) &&
                 tok_detok_drain(d, true);
        }
    }
    *text_p = d->chunk.data;
    *len_p = d->chunk.len;
    return ok ? MLS_OK : MLS_ERR_NO_MEMORY;
}

mls_status tok_detok_flush(tok_detok *d, const char **text_p, size_t *len_p)
{
    bool ok;

    d->chunk.len = 0;
    d->chunk.data[0] = '\0';
    ok = tok_detok_drain(d, false);
    *text_p = d->chunk.data;
    *len_p = d->chunk.len;
    return ok ? MLS_OK : MLS_ERR_NO_MEMORY;
}

size_t tok_detok_pending(const tok_detok *d)
{
    return d->held.len;
}

void tok_detok_destroy(tok_detok *d)
{
    if (d == NULL) {
        return;
    }
    tok_buf_free(&d->held);
    tok_buf_free(&d->chunk);
    free(d);
}
