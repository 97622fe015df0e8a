/*
 * fuzz_tokenizer.c - libFuzzer harness for the tokenizer (tokenizer/tok.h):
 * prompt text and chat messages from API clients, and token ids from nodes.
 *
 * The fixture tokenizers (tests/fixtures/tokenizers: gpt2, byte-level BPE with
 * the GPT-2 regex; deepseek-v3, a Split sequence, 818 added tokens and the
 * chat template) are loaded once. Input: one byte, whose bit 0 picks the
 * tokenizer and the rest the surface, then
 *   encode  UTF-8 text: encoded, decoded back (must give the text again),
 *           and streamed through the detokenizer (must give tok_decode's text);
 *   decode  little-endian int32 ids, any value: decoded with and without
 *           specials, and streamed (same text as tok_decode);
 *   chat    messages separated by 0x1e, each a role byte then its content
 *           (deepseek-v3's template; gpt2 has none and must say so), rendered
 *           and encoded.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "tok.h"

#define FUZZ_TOK_MAX_MSGS 16

static tok_tokenizer *fuzz_tok[2];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *const names[2] = {"gpt2", "deepseek-v3"};
    char path[512];
    mls_err err = {{0}};

    (void)argc;
    (void)argv;
    fuzz_log_quiet();
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/tokenizers/%s", MLS_FIXTURES_DIR, names[i]);
        FUZZ_CHECK(tok_tokenizer_load(path, &fuzz_tok[i], &err) == MLS_OK, "load %s: %s", path,
                   err.msg);
    }
    return 0;
}

/* Stream ids through a detokenizer; the text must equal tok_decode's. */
static void fuzz_tok_stream(const tok_tokenizer *tok, const int32_t *ids, size_t n,
                            bool skip_special)
{
    tok_detok *d = NULL;
    char *whole = NULL, *streamed;
    size_t whole_len = 0, len = 0, cap = 64;
    const char *piece;
    size_t piece_len;
    mls_err err = {{0}};

    FUZZ_CHECK(tok_decode(tok, ids, n, skip_special, &whole, &whole_len, &err) == MLS_OK,
               "decode: %s", err.msg);
    FUZZ_CHECK(tok_detok_create(tok, skip_special, &d, &err) == MLS_OK, "detok: %s", err.msg);
    streamed = malloc(cap);
    FUZZ_CHECK(streamed != NULL, "out of memory");
    for (size_t i = 0; i <= n; i++) {
        mls_status st = i < n ? tok_detok_feed(d, ids[i], &piece, &piece_len)
                              : tok_detok_flush(d, &piece, &piece_len);
        FUZZ_CHECK(st == MLS_OK, "detok at %zu: %s", i, mls_status_name(st));
        while (len + piece_len > cap) {
            cap *= 2;
            streamed = realloc(streamed, cap);
            FUZZ_CHECK(streamed != NULL, "out of memory");
        }
        memcpy(streamed + len, piece, piece_len);
        len += piece_len;
    }
    FUZZ_CHECK(tok_detok_pending(d) == 0, "%zu bytes held after the flush", tok_detok_pending(d));
    FUZZ_CHECK(len == whole_len && memcmp(streamed, whole, len) == 0,
               "streamed %zu bytes, decoded %zu: \"%.*s\" vs \"%.*s\"", len, whole_len, (int)len,
               streamed, (int)whole_len, whole);
    free(streamed);
    free(whole);
    tok_detok_destroy(d);
}

static void fuzz_tok_encode(const tok_tokenizer *tok, const uint8_t *text, size_t len)
{
    tok_ids ids = {0};
    char *back = NULL;
    size_t back_len = 0;
    mls_err err = {{0}};

    if (tok_encode(tok, (const char *)text, len, &ids, &err) != MLS_OK) {
        FUZZ_CHECK(err.msg[0] != '\0' && ids.n == 0, "refused without a reason, or left ids");
        tok_ids_free(&ids);
        return;
    }
    for (size_t i = 0; i < ids.n; i++) {
        FUZZ_CHECK(ids.ids[i] >= 0 && ids.ids[i] < tok_vocab_size(tok), "id %d", ids.ids[i]);
    }
    FUZZ_CHECK(tok_decode(tok, ids.ids, ids.n, false, &back, &back_len, &err) == MLS_OK,
               "decode: %s", err.msg);
    FUZZ_CHECK(back_len == len && memcmp(back, text, len) == 0,
               "round trip: %zu bytes in, %zu out: \"%.*s\"", len, back_len, (int)back_len, back);
    free(back);
    fuzz_tok_stream(tok, ids.ids, ids.n, false);
    fuzz_tok_stream(tok, ids.ids, ids.n, true);
    tok_ids_free(&ids);
}

static void fuzz_tok_decode(const tok_tokenizer *tok, const uint8_t *data, size_t size)
{
    size_t n = size / 4;
    int32_t *ids = malloc((n + 1) * sizeof(*ids));

    FUZZ_CHECK(ids != NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        uint32_t v = (uint32_t)data[4 * i] | (uint32_t)data[4 * i + 1] << 8 |
                     (uint32_t)data[4 * i + 2] << 16 | (uint32_t)data[4 * i + 3] << 24;
        /* Mostly real ids (top bit clear: modulo a little past the vocabulary), some wild. */
        ids[i] =
            (v & 0x80000000u) ? (int32_t)v : (int32_t)(v % ((uint32_t)tok_vocab_size(tok) + 16u));
    }
    fuzz_tok_stream(tok, ids, n, false);
    fuzz_tok_stream(tok, ids, n, true);
    free(ids);
}

static void fuzz_tok_chat(const tok_tokenizer *tok, bool gen_prompt, fuzz_cursor *in)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool", "developer"};
    tok_chat_msg msgs[FUZZ_TOK_MAX_MSGS];
    tok_tool_call calls[FUZZ_TOK_MAX_MSGS];
    char *texts[FUZZ_TOK_MAX_MSGS];
    size_t n = 0;
    char *out = NULL;
    size_t out_len = 0;
    tok_ids ids = {0};
    mls_err err = {{0}};
    mls_status st;

    while (in->n > 0 && n < FUZZ_TOK_MAX_MSGS) {
        uint8_t role = fuzz_byte(in);
        size_t len;
        const uint8_t *s = fuzz_until(in, 0x1e, &len);
        texts[n] = malloc(len + 1);
        FUZZ_CHECK(texts[n] != NULL, "out of memory");
        memcpy(texts[n], s, len);
        texts[n][len] = '\0';
        memset(&msgs[n], 0, sizeof(msgs[n]));
        msgs[n].role = roles[role % 5];
        msgs[n].content = (role & 0x80) ? NULL : texts[n];
        if (role & 0x40) { /* an assistant tool call: name, then arguments after a NUL */
            calls[n].type = (role & 0x20) ? NULL : "function";
            calls[n].name = texts[n];
            size_t name_len = strlen(texts[n]);
            calls[n].arguments = texts[n] + name_len + (name_len < len ? 1 : 0);
            msgs[n].tool_calls = &calls[n];
            msgs[n].n_tool_calls = 1;
        }
        n++;
    }
    st = tok_chat_render(tok, msgs, n, gen_prompt, &out, &out_len, &err);
    if (tok == fuzz_tok[0]) {
        FUZZ_CHECK(st == MLS_ERR_UNSUPPORTED, "gpt2 has no chat template, got %s",
                   mls_status_name(st));
    }
    if (st == MLS_OK) {
        FUZZ_CHECK(out != NULL && strlen(out) <= out_len, "rendered text");
        free(out);
        st = tok_chat_encode(tok, msgs, n, gen_prompt, &ids, &err);
        /* The render succeeded; encoding may refuse only invalid UTF-8. */
        FUZZ_CHECK(st == MLS_OK || st == MLS_ERR_INVALID_ARG, "chat encode: %s: %s",
                   mls_status_name(st), err.msg);
        tok_ids_free(&ids);
    } else {
        FUZZ_CHECK(err.msg[0] != '\0', "chat refused without a reason");
    }
    for (size_t i = 0; i < n; i++) {
        free(texts[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_cursor in = {data, size};
    uint8_t mode = fuzz_byte(&in);
    const tok_tokenizer *tok = fuzz_tok[mode & 1];

    switch ((mode >> 1) % 3) {
    case 0:
        fuzz_tok_encode(tok, in.p, in.n);
        break;
    case 1:
        fuzz_tok_decode(tok, in.p, in.n);
        break;
    default:
        fuzz_tok_chat(tok, (mode & 0x80) != 0, &in);
        break;
    }
    return 0;
}
