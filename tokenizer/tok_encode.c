/*
 * tok_encode.c - text -> ids, in Hugging Face's order:
 *   1. added tokens are cut out of the raw text (leftmost-longest, the
 *      non-normalized ones first, then the normalized ones in what is left);
 *   2. each remaining stretch goes through the pre-tokenizer steps (regex splits,
 *      ByteLevel prefix space), giving words;
 *   3. each word's bytes are merged by BPE rank (a min-heap over a linked list of
 *      symbols, O(n log n) per word), with a word cache in front.
 */
#include <string.h>

#include "tok_internal.h"

typedef struct {
    uint32_t off, len;
} tok_piece;

typedef struct {
    tok_piece *v;
    size_t n, cap;
} tok_pieces;

typedef struct {
    int32_t rank;
    int32_t left, right;
    int32_t a, b, merged;
} tok_heap_ent;

/* A BPE symbol of the word being merged: its id (-1 once merged into the one
 * on its left) and its neighbours (-1 at the ends). */
typedef struct {
    int32_t id, prev, next;
} tok_sym;

/* A stretch of a piece a regex step cut: [s, t), and whether it matched
 * (inverted for an inverted step). */
typedef struct {
    uint32_t s, t;
    bool match;
} tok_span;

/* Per-call scratch, so tok_encode needs no lock but the cache's. The text and
 * the arrays are counted under TOKENIZER and kept for the whole call: each
 * array grows only when full (the first time to 64 entries, 32 for spans),
 * then by doubling. */
typedef struct {
    const tok_tokenizer *tok;
    tok_ids *out;
    tok_buf text; /* bytes the pieces point into */
    tok_pieces cur, nxt;
    pcre2_match_data *md;
    tok_sym *sym; /* (sym_cap) the word's symbols */
    size_t sym_cap;
    tok_heap_ent *heap; /* (heap_cap) merge candidates, heap_n in the heap */
    size_t heap_n, heap_cap;
    tok_span *span; /* (span_cap) one regex step's spans of one piece */
    size_t span_n, span_cap;
} tok_enc;

/* Room for `need` entries in a scratch array: at least `first` the first
 * time, then by doubling. Callers check for a full array first (hot path). */
static bool tok_scratch_reserve(void *items_p, size_t *cap_p, size_t need, size_t elem_size,
                                size_t first)
{
    return mls_array_reserve(items_p, cap_p, need > first ? need : first, elem_size,
                             MLS_ALLOC_TAG_TOKENIZER) == MLS_OK;
}

static void tok_scratch_free(void *items_p, size_t *cap_p, size_t elem_size)
{
    mls_array_free(items_p, cap_p, elem_size, MLS_ALLOC_TAG_TOKENIZER);
}

static bool tok_pieces_push(tok_pieces *p, uint32_t off, uint32_t len)
{
    if (p->n == p->cap && !tok_scratch_reserve(&p->v, &p->cap, p->n + 1, sizeof(*p->v), 64)) {
        return false;
    }
    p->v[p->n++] = (tok_piece){off, len};
    return true;
}

/* ---- BPE ----------------------------------------------------------------- */

/* The word cache is the one mutable part of a loaded (const) tokenizer. */
static void tok_cache_lock(const tok_tokenizer *tok)
{
    pthread_mutex_lock((pthread_mutex_t *)&tok->cache_mu);
}

static void tok_cache_unlock(const tok_tokenizer *tok)
{
    pthread_mutex_unlock((pthread_mutex_t *)&tok->cache_mu);
}

static bool tok_heap_less(const tok_heap_ent *x, const tok_heap_ent *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static bool tok_heap_push(tok_enc *e, tok_heap_ent ent)
{
    if (e->heap_n == e->heap_cap &&
        !tok_scratch_reserve(&e->heap, &e->heap_cap, e->heap_n + 1, sizeof(*e->heap), 64)) {
        return false;
    }
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!tok_heap_less(&ent, &e->heap[parent])) {
            break;
        }
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i] = ent;
    return true;
}

static tok_heap_ent tok_heap_pop(tok_enc *e)
{
    tok_heap_ent top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const tok_heap_ent *best = &last;
        if (l < n && tok_heap_less(&e->heap[l], best)) {
            m = l;
            best = &e->heap[l];
        }
        if (r < n && tok_heap_less(&e->heap[r], best)) {
            m = r;
        }
        if (m == i) {
            break;
        }
        e->heap[i] = e->heap[m];
        i = m;
    }
    if (n > 0) {
        e->heap[i] = last;
    }
    return top;
}

/* Pushes the merge candidate (left, right) if the pair has a rank. */
static bool tok_bpe_candidate(tok_enc *e, int32_t left, int32_t right)
{
    const tok_pairmap *m = &e->tok->merges;
    int32_t a = e->sym[left].id, b = e->sym[right].id;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t i = (uint32_t)tok_hash_u64(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX) {
        if (m->slots[i].key == key) {
            return tok_heap_push(e, (tok_heap_ent){.rank = m->slots[i].rank,
                                                   .left = left,
                                                   .right = right,
                                                   .a = a,
                                                   .b = b,
                                                   .merged = m->slots[i].merged});
        }
        i = (i + 1) & m->mask;
    }
    return true;
}

/* BPE of one word's bytes; appends ids to e->out. */
static mls_status tok_bpe_word(tok_enc *e, const uint8_t *s, size_t n)
{
    const tok_tokenizer *tok = e->tok;
    tok_ids *out = e->out;
    size_t first = out->n;
    uint64_t h = 0;
    tok_cache_slot *slot = NULL;

    if (n == 1) {
        return tok_ids_push(out, tok->byte_id[s[0]]);
    }
    if (n <= TOK_CACHE_KEY) {
        h = tok_hash_bytes(s, n);
        slot = &tok->cache[h & (TOK_CACHE_SLOTS - 1)];
        int32_t ids[TOK_CACHE_KEY];
        int n_ids = 0;
        tok_cache_lock(tok);
        if (slot->key_len == n && slot->hash == h && memcmp(slot->key, s, n) == 0) {
            n_ids = slot->n_ids;
            memcpy(ids, slot->ids, (size_t)n_ids * sizeof(ids[0]));
        }
        tok_cache_unlock(tok);
        for (int i = 0; i < n_ids; i++) {
            if (tok_ids_push(out, ids[i]) != MLS_OK) {
                return MLS_ERR_NO_MEMORY;
            }
        }
        if (n_ids > 0) {
            return MLS_OK;
        }
    }
    if (tok->ignore_merges) {
        /* the whole word as one vocab entry wins over merging */
        tok_buf w = {0};
        for (size_t i = 0; i < n; i++) {
            uint32_t cp = tok_byte_to_cp(s[i]);
            char u[2] = {(char)(0xC0 | (cp >> 6)), (char)(0x80 | (cp & 0x3F))};
            if (!(cp < 0x80 ? tok_buf_append(&w, &s[i], 1) : tok_buf_append(&w, u, 2))) {
                tok_buf_free(&w);
                return MLS_ERR_NO_MEMORY;
            }
        }
        int32_t id = tok_model_lookup(tok, w.data, w.len);
        tok_buf_free(&w);
        if (id >= 0) {
            return tok_ids_push(out, id);
        }
    }

    if (n > e->sym_cap && !tok_scratch_reserve(&e->sym, &e->sym_cap, n, sizeof(*e->sym), 64)) {
        return MLS_ERR_NO_MEMORY;
    }
    for (size_t i = 0; i < n; i++) {
        e->sym[i] = (tok_sym){.id = tok->byte_id[s[i]],
                              .prev = (int32_t)i - 1,
                              .next = i + 1 < n ? (int32_t)i + 1 : -1};
    }
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (!tok_bpe_candidate(e, (int32_t)i, (int32_t)i + 1)) {
            return MLS_ERR_NO_MEMORY;
        }
    }
    while (e->heap_n > 0) {
        tok_heap_ent m = tok_heap_pop(e);
        if (e->sym[m.left].id != m.a || e->sym[m.left].next != m.right ||
            e->sym[m.right].id != m.b) {
            continue; /* stale: one side has merged since */
        }
        int32_t after = e->sym[m.right].next;
        e->sym[m.left].id = m.merged;
        e->sym[m.right].id = -1;
        e->sym[m.left].next = after;
        if (after >= 0) {
            e->sym[after].prev = m.left;
        }
        if ((e->sym[m.left].prev >= 0 && !tok_bpe_candidate(e, e->sym[m.left].prev, m.left)) ||
            (after >= 0 && !tok_bpe_candidate(e, m.left, after))) {
            return MLS_ERR_NO_MEMORY;
        }
    }
    for (int32_t i = 0; i >= 0; i = e->sym[i].next) {
        if (tok_ids_push(out, e->sym[i].id) != MLS_OK) {
            return MLS_ERR_NO_MEMORY;
        }
    }
    if (slot != NULL) {
        tok_cache_lock(tok);
        slot->hash = h;
        slot->key_len = (uint8_t)n;
        slot->n_ids = (uint8_t)(out->n - first);
        memcpy(slot->key, s, n);
        memcpy(slot->ids, out->ids + first, (out->n - first) * sizeof(int32_t));
        tok_cache_unlock(tok);
    }
    return MLS_OK;
}

/* ---- pre-tokenization ---------------------------------------------------- */

static size_t tok_utf8_len(uint8_t lead)
{
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

static bool tok_span_push(tok_enc *e, size_t s, size_t t, bool match)
{
    if (e->span_n == e->span_cap &&
        !tok_scratch_reserve(&e->span, &e->span_cap, e->span_n + 1, sizeof(*e->span), 32)) {
        return false;
    }
    e->span[e->span_n++] = (tok_span){(uint32_t)s, (uint32_t)t, match};
    return true;
}

/* Splits piece p by a regex step, appending the resulting pieces to e->nxt
 * (HF's NormalizedString::split with the regex's find_iter). */
static mls_status tok_pre_split(tok_enc *e, const tok_pre_step *step, tok_piece p)
{
    /* the piece's spans, gaps included, in e->span */
    tok_span *sp;
    size_t n_sp;
    size_t pos = 0, prev = 0;
    const PCRE2_SPTR subj = (PCRE2_SPTR)(e->text.data + p.off);

    e->span_n = 0;
    while (pos <= p.len) {
        int rc = pcre2_match(step->re, subj, p.len, pos, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) {
            break;
        }
        if (rc < 0) {
            return MLS_ERR_INTERNAL;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if ((prev != ms && !tok_span_push(e, prev, ms, step->invert)) ||
            !tok_span_push(e, ms, me, !step->invert)) {
            return MLS_ERR_NO_MEMORY;
        }
        prev = me;
        if (me == ms) { /* empty match: step over one character */
            if (me >= p.len) {
                break;
            }
            pos = me + tok_utf8_len(subj[me]);
        } else {
            pos = me;
        }
    }
    if (prev != p.len && !tok_span_push(e, prev, p.len, step->invert)) {
        return MLS_ERR_NO_MEMORY;
    }
    sp = e->span;
    n_sp = e->span_n;

    /* apply the behavior (HF SplitDelimiterBehavior), then drop empty pieces */
    size_t w = 0;
    bool prev_match = false;
    switch (step->behavior) {
    case TOK_SPLIT_ISOLATED:
        w = n_sp;
        break;
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < n_sp; i++) {
            if (!sp[i].match) {
                sp[w++] = sp[i];
            }
        }
        break;
    case TOK_SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < n_sp; i++) {
            bool m = sp[i].match;
            if (m && !prev_match && w > 0) {
                sp[w - 1].t = sp[i].t;
            } else {
                sp[w++] = sp[i];
            }
            prev_match = m;
        }
        break;
    case TOK_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n_sp; i++) {
            bool m = sp[i].match;
            if (m == prev_match && w > 0) {
                sp[w - 1].t = sp[i].t;
            } else {
                sp[w++] = sp[i];
            }
            prev_match = m;
        }
        break;
    case TOK_SPLIT_MERGED_WITH_NEXT: {
        /* right to left, merging a delimiter into the piece after it */
        size_t r = n_sp;
        for (size_t k = n_sp; k-- > 0;) {
            bool m = sp[k].match;
            if (m && !prev_match && r < n_sp) {
                sp[r].s = sp[k].s;
            } else {
                sp[--r] = sp[k];
            }
            prev_match = m;
        }
        memmove(sp, sp + r, (n_sp - r) * sizeof(*sp));
        w = n_sp - r;
        break;
    }
    }
    for (size_t i = 0; i < w; i++) {
        if (sp[i].t > sp[i].s && !tok_pieces_push(&e->nxt, p.off + sp[i].s, sp[i].t - sp[i].s)) {
            return MLS_ERR_NO_MEMORY;
        }
    }
    return MLS_OK;
}

/* Pre-tokenizes text[off..off+len) and BPE-encodes the words. */
static mls_status tok_encode_stretch(tok_enc *e, const char *text, size_t len)
{
    const tok_tokenizer *tok = e->tok;
    mls_status st;

    e->text.len = 0;
    e->cur.n = 0;
    if (!tok_buf_append(&e->text, text, len) || !tok_pieces_push(&e->cur, 0, (uint32_t)len)) {
        return MLS_ERR_NO_MEMORY;
    }
    for (int k = 0; k < tok->n_pre; k++) {
        const tok_pre_step *step = &tok->pre[k];
        e->nxt.n = 0;
        for (size_t i = 0; i < e->cur.n; i++) {
            tok_piece p = e->cur.v[i];
            if (step->kind == TOK_PRE_PREFIX_SPACE) {
                if (p.len > 0 && e->text.data[p.off] == ' ') {
                    if (!tok_pieces_push(&e->nxt, p.off, p.len)) {
                        return MLS_ERR_NO_MEMORY;
                    }
                    continue;
                }
                uint32_t noff = (uint32_t)e->text.len;
                /* grow first: the copy below reads from the same buffer */
                if (!tok_buf_reserve(&e->text, p.len + 1) || !tok_buf_append(&e->text, " ", 1) ||
                    !tok_buf_append(&e->text, e->text.data + p.off, p.len) ||
                    !tok_pieces_push(&e->nxt, noff, p.len + 1)) {
                    return MLS_ERR_NO_MEMORY;
                }
            } else if ((st = tok_pre_split(e, step, p)) != MLS_OK) {
                return st;
            }
        }
        tok_pieces t = e->cur;
        e->cur = e->nxt;
        e->nxt = t;
    }
    for (size_t i = 0; i < e->cur.n; i++) {
        tok_piece p = e->cur.v[i];
        if ((st = tok_bpe_word(e, (const uint8_t *)e->text.data + p.off, p.len)) != MLS_OK) {
            return st;
        }
    }
    return MLS_OK;
}

/* ---- added tokens -------------------------------------------------------- */

static uint32_t tok_cp_at(const uint8_t *s, size_t *len_p)
{
    size_t n = tok_utf8_len(s[0]);
    uint32_t cp = n == 1   ? s[0]
                  : n == 2 ? (s[0] & 0x1Fu)
                  : n == 3 ? (s[0] & 0x0Fu)
                           : (s[0] & 0x07u);
    for (size_t i = 1; i < n; i++) {
        cp = (cp << 6) | (s[i] & 0x3Fu);
    }
    *len_p = n;
    return cp;
}

/* Rust char::is_whitespace (the White_Space property). */
static bool tok_is_ws(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

/* A word character for single_word: ASCII alphanumerics and '_', and any non-ASCII
 * character that is not whitespace (an approximation of Unicode \w). */
static bool tok_is_word(uint32_t cp)
{
    return (cp >= '0' && cp <= '9') || (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z') ||
           cp == '_' || (cp >= 0x80 && !tok_is_ws(cp));
}

static uint32_t tok_cp_before(const uint8_t *s, size_t pos, size_t *start_p)
{
    size_t i = pos - 1, n;
    while (i > 0 && (s[i] & 0xC0) == 0x80) {
        i--;
    }
    *start_p = i;
    return tok_cp_at(s + i, &n);
}

/*
 * Cuts the added tokens of `trie` out of text[s..t). Stretches between them go to
 * the next level: the normalized trie after the raw one, then the pre-tokenizer.
 */
static mls_status tok_split_added(tok_enc *e, const uint8_t *text, size_t s, size_t t, int level)
{
    const tok_tokenizer *tok = e->tok;
    const tok_trie *trie = level == 0 ? &tok->trie_raw : &tok->trie_norm;
    size_t pos = s, from = s;
    mls_status st;

    while (pos < t) {
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = pos; j < t; j++) {
            int32_t c = trie->nodes[node].first_child;
            while (c >= 0 && trie->nodes[c].byte != text[j]) {
                c = trie->nodes[c].next_sibling;
            }
            if (c < 0) {
                break;
            }
            node = c;
            if (trie->nodes[node].added >= 0) {
                best = trie->nodes[node].added;
                best_end = j + 1;
            }
        }
        if (best < 0) {
            pos++;
            continue;
        }
        const tok_added_token *a = &tok->added[best];
        size_t start = pos, stop = best_end, cl;
        if (a->single_word) {
            size_t ps;
            bool word_before = pos > s && tok_is_word(tok_cp_before(text, pos, &ps));
            bool word_after = stop < t && tok_is_word(tok_cp_at(text + stop, &cl));
            if (word_before || word_after) {
                pos = best_end;
                continue;
            }
        }
        if (a->lstrip) {
            size_t ps;
            while (start > from && tok_is_ws(tok_cp_before(text, start, &ps))) {
                start = ps;
            }
        }
        if (a->rstrip) {
            while (stop < t && tok_is_ws(tok_cp_at(text + stop, &cl))) {
                stop += cl;
            }
        }
        if (start > from) {
            st = level == 0 ? tok_split_added(e, text, from, start, 1)
                            : tok_encode_stretch(e, (const char *)text + from, start - from);
            if (st != MLS_OK) {
                return st;
            }
        }
        if ((st = tok_ids_push(e->out, a->id)) != MLS_OK) {
            return st;
        }
        from = pos = stop;
    }
    if (t > from) {
        return level == 0 ? tok_split_added(e, text, from, t, 1)
                          : tok_encode_stretch(e, (const char *)text + from, t - from);
    }
    return MLS_OK;
}

mls_status tok_encode(const tok_tokenizer *tok, const char *text, size_t len, tok_ids *out,
                      mls_err *err)
{
    size_t n0 = out->n, valid = tok_utf8_valid_prefix((const uint8_t *)text, len);
    mls_status st;
    tok_enc e = {.tok = tok, .out = out, .text = MLS_BUF_INIT(MLS_ALLOC_TAG_TOKENIZER)};

    if (valid != len) {
        mls_err_set(err, "text is not valid UTF-8 at byte %zu", valid);
        return MLS_ERR_INVALID_ARG;
    }
    if (len > UINT32_MAX / 2) {
        mls_err_set(err, "text of %zu bytes is too long to encode", len);
        return MLS_ERR_TOO_LARGE;
    }
    if (len == 0) {
        return MLS_OK;
    }
    e.md = pcre2_match_data_create(8, NULL);
    if (e.md == NULL) {
        st = MLS_ERR_NO_MEMORY;
        goto out_free_scratch;
    }
    st = tok_split_added(&e, (const uint8_t *)text, 0, len, 0);
out_free_scratch:
    if (st != MLS_OK) {
        out->n = n0;
        mls_err_set(err, "encode failed: %s", mls_status_message(st));
    }
    pcre2_match_data_free(e.md);
    tok_buf_free(&e.text);
    tok_scratch_free(&e.cur.v, &e.cur.cap, sizeof(*e.cur.v));
    tok_scratch_free(&e.nxt.v, &e.nxt.cap, sizeof(*e.nxt.v));
    tok_scratch_free(&e.sym, &e.sym_cap, sizeof(*e.sym));
    tok_scratch_free(&e.heap, &e.heap_cap, sizeof(*e.heap));
    tok_scratch_free(&e.span, &e.span_cap, sizeof(*e.span));
    return st;
}
