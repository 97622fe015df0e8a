/*
 * bpe_train.c - the byte-level BPE trainer of bpe_train.h.
 *
 * Data, all in flat arrays with indices (so growing never invalidates anything):
 *   words   the distinct pre-tokenized pieces: raw bytes in one arena, a count,
 *           and (during run) their current symbols in one int32 array that
 *           shrinks in place as merges apply
 *   tokens  every id's tokenizer.json spelling in one arena; a hash from
 *           spelling to id so a merge that spells an existing token reuses it
 *   pairs   (left, right) -> count and the words that (may) hold the pair;
 *           a merge visits only those words
 *   heap    a max-heap of (count, pair) with lazy deletion: counts only go
 *           down after a pair is pushed, so an entry whose count is stale is
 *           re-pushed with the true count when it reaches the top; pairs whose
 *           count went up in a merge are pushed again after it
 */
#define _GNU_SOURCE
#define PCRE2_CODE_UNIT_WIDTH 8
#include "bpe_train.h"
#include "bpe_internal.h"
#include "mls_buf.h"

#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The GPT-2 pre-tokenizer (HF ByteLevel use_regex). */
static const char bpe_gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

#define BPE_N_BYTES 256

typedef struct {
    uint32_t off, len; /* raw bytes in tr->wbytes */
    uint64_t hash;
    int64_t count;
    uint32_t sym_off, sym_len; /* current symbols in run's sym[] */
} bpe_word;

typedef struct {
    uint32_t off, len; /* spelling in tr->tstr */
} bpe_span;

struct bpe_trainer {
    int32_t vocab_target;
    int64_t min_count;
    int32_t n_added;
    bool *added_special; /* (n_added) */
    pcre2_code *re;
    pcre2_match_data *md;

    char *wbytes; /* raw bytes of the distinct words */
    size_t wbytes_len, wbytes_cap;
    bpe_word *words;
    uint32_t n_words;
    size_t words_cap;
    uint32_t *wmap; /* open addressing: word index + 1, 0 empty */
    size_t wmap_cap;

    char *tstr; /* token spellings */
    size_t tstr_len, tstr_cap;
    bpe_span *tok;
    int32_t n_tok;
    size_t tok_cap;
    int32_t *tmap; /* open addressing: id + 1, 0 empty */
    size_t tmap_cap;

    int32_t (*merges)[2];
    int32_t n_merges;

    int32_t byte_id[BPE_N_BYTES]; /* raw byte -> its token id */
    bool trained;
    bpe_stats stats;
};

/* ---- small helpers ------------------------------------------------------- */

static double bpe_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t bpe_hash(const void *p, size_t n) /* FNV-1a, then a final mix */
{
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ s[i]) * 0x100000001b3ull;
    }
    h ^= h >> 32;
    h *= 0x9e3779b97f4a7c15ull;
    return h ^ (h >> 29);
}

/* The trainer's arrays (mls_array_reserve) count under MISC: it is a tool's. */
#define BPE_TAG MLS_ALLOC_TAG_MISC

/* Grows the array *items_p (elements of size `elem`) to hold at least `need`:
 * 64 the first time, then by doubling; false when out of memory. Give it back
 * with bpe_array_free. */
static bool bpe_grow(void *items_p, size_t *cap_p, size_t need, size_t elem)
{
    return need <= *cap_p ||
           mls_array_reserve(items_p, cap_p, need > 64 ? need : 64, elem, BPE_TAG) == MLS_OK;
}

static void bpe_array_free(void *items_p, size_t *cap_p, size_t elem)
{
    mls_array_free(items_p, cap_p, elem, BPE_TAG);
}

/* GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the 68
 * others take code points 256, 257, ... in byte order. */
static uint32_t bpe_byte_cp(unsigned b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        return b;
    }
    uint32_t n = 0;
    for (unsigned x = 0; x < b; x++) {
        n += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
    }
    return 256 + n;
}

static size_t bpe_utf8_put(uint32_t cp, char *out) /* cp < 0x800 here */
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

/* Length of the valid UTF-8 prefix of s. */
static size_t bpe_utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (k >= n - i) { /* truncated sequence */
            return i;
        }
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) {
                return i;
            }
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            return i;
        }
        i += k + 1;
    }
    return n;
}

/* ---- tokens -------------------------------------------------------------- */

static int32_t bpe_tok_find(const bpe_trainer *tr, const char *s, size_t n, uint64_t h)
{
    size_t mask = tr->tmap_cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        int32_t e = tr->tmap[i];
        if (e == 0) {
            return -1;
        }
        const bpe_span *sp = &tr->tok[e - 1];
        if (sp->len == n && memcmp(tr->tstr + sp->off, s, n) == 0) {
            return e - 1;
        }
    }
}

static void bpe_tmap_insert(bpe_trainer *tr, int32_t id)
{
    const bpe_span *sp = &tr->tok[id];
    size_t mask = tr->tmap_cap - 1;
    size_t i = bpe_hash(tr->tstr + sp->off, sp->len) & mask;
    while (tr->tmap[i] != 0) {
        i = (i + 1) & mask;
    }
    tr->tmap[i] = id + 1;
}

/* Appends token s (a new spelling) and returns its id, or -1 when out of memory. */
static int32_t bpe_tok_add(bpe_trainer *tr, const char *s, size_t n)
{
    if (!bpe_grow(&tr->tstr, &tr->tstr_cap, tr->tstr_len + n, 1) ||
        !bpe_grow(&tr->tok, &tr->tok_cap, (size_t)tr->n_tok + 1, sizeof(bpe_span))) {
        return -1;
    }
    if ((size_t)(tr->n_tok + 1) * 2 > tr->tmap_cap) { /* keep the load under 1/2 */
        size_t nc = tr->tmap_cap ? tr->tmap_cap * 2 : 1024;
        int32_t *nm = calloc(nc, sizeof(*nm));
        if (nm == NULL) {
            return -1;
        }
        free(tr->tmap);
        tr->tmap = nm;
        tr->tmap_cap = nc;
        for (int32_t i = 0; i < tr->n_tok; i++) {
            bpe_tmap_insert(tr, i);
        }
    }
    memcpy(tr->tstr + tr->tstr_len, s, n);
    tr->tok[tr->n_tok] = (bpe_span){(uint32_t)tr->tstr_len, (uint32_t)n};
    tr->tstr_len += n;
    bpe_tmap_insert(tr, tr->n_tok);
    return tr->n_tok++;
}

/* strcmp-like order of two tokens' spellings. */
static int bpe_tok_cmp(const bpe_trainer *tr, int32_t x, int32_t y)
{
    if (x == y) {
        return 0;
    }
    const bpe_span *a = &tr->tok[x], *b = &tr->tok[y];
    int c = memcmp(tr->tstr + a->off, tr->tstr + b->off, a->len < b->len ? a->len : b->len);
    if (c != 0) {
        return c;
    }
    return (a->len > b->len) - (a->len < b->len);
}

/* ---- create / destroy ---------------------------------------------------- */

mls_status bpe_trainer_create(const bpe_params *p, bpe_trainer **tr_p, mls_err *err)
{
    if (p->vocab_size < 0 || (size_t)p->vocab_size < p->n_added + BPE_N_BYTES) {
        mls_err_set(err, "bpe: vocab_size %d cannot hold %zu added tokens and %d byte tokens",
                    (int)p->vocab_size, p->n_added, BPE_N_BYTES);
        return MLS_ERR_INVALID_ARG;
    }
    bpe_trainer *tr = calloc(1, sizeof(*tr));
    if (tr == NULL) {
        mls_err_set(err, "bpe: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    tr->vocab_target = p->vocab_size;
    tr->min_count = p->min_pair_count < 1 ? 1 : p->min_pair_count;
    tr->n_added = (int32_t)p->n_added;
    tr->added_special = calloc(p->n_added + 1, sizeof(bool));
    if (tr->added_special == NULL) {
        goto err_destroy_trainer;
    }
    for (size_t i = 0; i < p->n_added; i++) {
        const char *s = p->added[i].content;
        size_t n = s ? strlen(s) : 0;
        if (n == 0 || bpe_utf8_valid_prefix((const unsigned char *)s, n) != n) {
            mls_err_set(err, "bpe: added token %zu is empty or not UTF-8", i);
            bpe_trainer_destroy(tr);
            return MLS_ERR_INVALID_ARG;
        }
        if (tr->n_tok > 0 && bpe_tok_find(tr, s, n, bpe_hash(s, n)) >= 0) {
            mls_err_set(err, "bpe: added token '%s' given twice", s);
            bpe_trainer_destroy(tr);
            return MLS_ERR_INVALID_ARG;
        }
        if (bpe_tok_add(tr, s, n) < 0) {
            goto err_destroy_trainer;
        }
        tr->added_special[i] = p->added[i].special;
    }
    /* The byte tokens in GPT-2 order: printable bytes (their own code points)
     * ascending, then the others (code points 256+) in byte order. */
    for (int pass = 0; pass < 2; pass++) {
        for (unsigned b = 0; b < BPE_N_BYTES; b++) {
            uint32_t cp = bpe_byte_cp(b);
            if ((pass == 0) != (cp < 256)) {
                continue;
            }
            char s[2];
            size_t n = bpe_utf8_put(cp, s);
            int32_t id = bpe_tok_find(tr, s, n, bpe_hash(s, n));
            if (id < 0 && (id = bpe_tok_add(tr, s, n)) < 0) {
                goto err_destroy_trainer;
            }
            tr->byte_id[b] = id; /* an added token spelled like a byte token is that token */
        }
    }
    if (tr->n_tok != tr->n_added + BPE_N_BYTES) {
        mls_err_set(err, "bpe: an added token is spelled like a byte token");
        bpe_trainer_destroy(tr);
        return MLS_ERR_INVALID_ARG;
    }
    int rc;
    PCRE2_SIZE eoff;
    tr->re = pcre2_compile((PCRE2_SPTR)bpe_gpt2_regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP,
                           &rc, &eoff, NULL);
    if (tr->re == NULL) {
        mls_err_set(err, "bpe: PCRE2 rejects the GPT-2 regex (error %d at %zu)", rc, (size_t)eoff);
        bpe_trainer_destroy(tr);
        return MLS_ERR_INTERNAL;
    }
    (void)pcre2_jit_compile(tr->re, PCRE2_JIT_COMPLETE); /* the interpreter when JIT is absent */
    tr->md = pcre2_match_data_create_from_pattern(tr->re, NULL);
    if (tr->md == NULL) {
        goto err_destroy_trainer;
    }
    *tr_p = tr;
    return MLS_OK;

err_destroy_trainer:
    bpe_trainer_destroy(tr);
    mls_err_set(err, "bpe: out of memory");
    return MLS_ERR_NO_MEMORY;
}

void bpe_trainer_destroy(bpe_trainer *tr)
{
    if (tr == NULL) {
        return;
    }
    pcre2_match_data_free(tr->md);
    pcre2_code_free(tr->re);
    free(tr->added_special);
    bpe_array_free(&tr->wbytes, &tr->wbytes_cap, 1);
    bpe_array_free(&tr->words, &tr->words_cap, sizeof(*tr->words));
    free(tr->wmap);
    bpe_array_free(&tr->tstr, &tr->tstr_cap, 1);
    bpe_array_free(&tr->tok, &tr->tok_cap, sizeof(*tr->tok));
    free(tr->tmap);
    free(tr->merges);
    free(tr);
}

/* ---- feeding: pre-tokenize and count ------------------------------------ */

static void bpe_wmap_insert(uint32_t *map, size_t cap, const bpe_word *w, uint32_t idx)
{
    size_t mask = cap - 1;
    size_t i = w->hash & mask;
    while (map[i] != 0) {
        i = (i + 1) & mask;
    }
    map[i] = idx + 1;
}

/* Counts one piece; -1 out of memory, -2 too large. */
static int bpe_count_word(bpe_trainer *tr, const char *s, size_t n)
{
    uint64_t h = bpe_hash(s, n);
    if (tr->wmap_cap > 0) {
        size_t mask = tr->wmap_cap - 1;
        for (size_t i = h & mask; tr->wmap[i] != 0; i = (i + 1) & mask) {
            bpe_word *w = &tr->words[tr->wmap[i] - 1];
            if (w->hash == h && w->len == n && memcmp(tr->wbytes + w->off, s, n) == 0) {
                w->count++;
                return 0;
            }
        }
    }
    if (tr->wbytes_len + n > UINT32_MAX || tr->n_words == UINT32_MAX - 1) {
        return -2;
    }
    if (!bpe_grow(&tr->wbytes, &tr->wbytes_cap, tr->wbytes_len + n, 1) ||
        !bpe_grow(&tr->words, &tr->words_cap, (size_t)tr->n_words + 1, sizeof(bpe_word))) {
        return -1;
    }
    if ((size_t)(tr->n_words + 1) * 2 > tr->wmap_cap) {
        size_t nc = tr->wmap_cap ? tr->wmap_cap * 2 : 4096;
        uint32_t *nm = calloc(nc, sizeof(*nm));
        if (nm == NULL) {
            return -1;
        }
        for (uint32_t i = 0; i < tr->n_words; i++) {
            bpe_wmap_insert(nm, nc, &tr->words[i], i);
        }
        free(tr->wmap);
        tr->wmap = nm;
        tr->wmap_cap = nc;
    }
    bpe_word *w = &tr->words[tr->n_words];
    memset(w, 0, sizeof(*w));
    w->off = (uint32_t)tr->wbytes_len;
    w->len = (uint32_t)n;
    w->hash = h;
    w->count = 1;
    memcpy(tr->wbytes + tr->wbytes_len, s, n);
    tr->wbytes_len += n;
    bpe_wmap_insert(tr->wmap, tr->wmap_cap, w, tr->n_words);
    tr->n_words++;
    return 0;
}

mls_status bpe_trainer_feed(bpe_trainer *tr, const char *text, size_t len, const char *source,
                            mls_err *err)
{
    double t0 = bpe_now();
    if (tr->trained) {
        mls_err_set(err, "bpe: %s: the trainer has already run", source);
        return MLS_ERR_UNSUPPORTED;
    }
    size_t valid = bpe_utf8_valid_prefix((const unsigned char *)text, len);
    if (valid != len) {
        mls_err_set(err, "bpe: %s: invalid UTF-8 at byte %zu", source, valid);
        return MLS_ERR_INVALID_ARG;
    }
    /* The counts before this text, to undo a failed call. */
    uint32_t words0 = tr->n_words;
    size_t wbytes0 = tr->wbytes_len;
    int64_t *counts0 = NULL;
    if (words0 > 0 && (counts0 = malloc(words0 * sizeof(*counts0))) == NULL) {
        mls_err_set(err, "bpe: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    for (uint32_t i = 0; i < words0; i++) {
        counts0[i] = tr->words[i].count;
    }
    uint64_t pieces = 0;
    size_t pos = 0;
    int rc = 0;
    while (pos < len && rc == 0) {
        int m = pcre2_match(tr->re, (PCRE2_SPTR)text, len, pos, PCRE2_NO_UTF_CHECK, tr->md, NULL);
        size_t s = len, e = len;
        if (m >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(tr->md);
            s = ov[0];
            e = ov[1];
        } else if (m != PCRE2_ERROR_NOMATCH) {
            rc = -3;
            break;
        }
        if (s > pos) { /* text no alternative matched stays one piece */
            rc = bpe_count_word(tr, text + pos, s - pos);
            pieces++;
        }
        if (rc == 0 && e > s) {
            rc = bpe_count_word(tr, text + s, e - s);
            pieces++;
        }
        pos = e > s ? e : len; /* an empty match cannot happen with this regex */
    }
    if (rc != 0) { /* roll back to the state before the call; the map is rebuilt */
        tr->n_words = words0;
        tr->wbytes_len = wbytes0;
        for (uint32_t i = 0; i < words0; i++) {
            tr->words[i].count = counts0[i];
        }
        if (tr->wmap != NULL) {
            memset(tr->wmap, 0, tr->wmap_cap * sizeof(*tr->wmap));
        }
        for (uint32_t i = 0; i < tr->n_words; i++) {
            bpe_wmap_insert(tr->wmap, tr->wmap_cap, &tr->words[i], i);
        }
        free(counts0);
        if (rc == -2) {
            mls_err_set(err, "bpe: %s: more than 4 GiB of distinct words", source);
            return MLS_ERR_TOO_LARGE;
        }
        if (rc == -3) {
            mls_err_set(err, "bpe: %s: PCRE2 match failed", source);
            return MLS_ERR_INTERNAL;
        }
        mls_err_set(err, "bpe: %s: out of memory", source);
        return MLS_ERR_NO_MEMORY;
    }
    free(counts0);
    tr->stats.bytes += len;
    tr->stats.words += pieces;
    tr->stats.unique_words = tr->n_words;
    tr->stats.seconds += bpe_now() - t0;
    return MLS_OK;
}

mls_status bpe_trainer_feed_file(bpe_trainer *tr, const char *path, mls_err *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        mls_err_set(err, "bpe: cannot open %s: %s", path, strerror(errno));
        return MLS_ERR_IO;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    mls_status st = MLS_OK;
    for (;;) {
        if (!bpe_grow(&buf, &cap, len + 65536, 1)) {
            mls_err_set(err, "bpe: %s: out of memory", path);
            st = MLS_ERR_NO_MEMORY;
            break;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                mls_err_set(err, "bpe: cannot read %s: %s", path, strerror(errno));
                st = MLS_ERR_IO;
            }
            break;
        }
    }
    fclose(f);
    if (st == MLS_OK) {
        st = bpe_trainer_feed(tr, buf, len, path, err);
    }
    bpe_array_free(&buf, &cap, 1);
    return st;
}

/* ---- training ------------------------------------------------------------ */

typedef struct {
    int32_t a, b;
    int64_t count;
    uint32_t *w; /* (capw) words that may hold the pair, each once per merge
                    step, nw of them */
    uint32_t nw, capw;
    bool merged; /* already in the merge list */
    bool raised; /* count went up in the current merge step */
} bpe_pair;

typedef struct {
    int64_t count;
    int32_t pair;
} bpe_heap_ent;

typedef struct {
    bpe_trainer *tr;
    int32_t *sym; /* symbols of every word, word i at words[i].sym_off */
    bpe_pair *pairs;
    size_t n_pairs, pairs_cap;
    int32_t *pmap; /* open addressing on (a, b): pair index + 1, 0 empty */
    size_t pmap_cap;
    bpe_heap_ent *heap;
    size_t n_heap, heap_cap;
    int32_t *raised; /* pairs raised in this merge step */
    size_t n_raised, raised_cap;
} bpe_run;

static inline uint64_t bpe_pair_hash(int32_t a, int32_t b)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    k *= 0x9e3779b97f4a7c15ull;
    return k ^ (k >> 31);
}

static void bpe_pmap_insert(int32_t *map, size_t cap, const bpe_pair *p, int32_t idx)
{
    size_t mask = cap - 1;
    size_t i = bpe_pair_hash(p->a, p->b) & mask;
    while (map[i] != 0) {
        i = (i + 1) & mask;
    }
    map[i] = idx + 1;
}

/* Index of pair (a, b), created with count 0 when absent; -1 out of memory. */
static int32_t bpe_pair_get(bpe_run *r, int32_t a, int32_t b)
{
    size_t mask = r->pmap_cap - 1;
    size_t i = bpe_pair_hash(a, b) & mask;
    for (; r->pmap[i] != 0; i = (i + 1) & mask) {
        const bpe_pair *p = &r->pairs[r->pmap[i] - 1];
        if (p->a == a && p->b == b) {
            return r->pmap[i] - 1;
        }
    }
    if (r->n_pairs >= INT32_MAX - 1 ||
        !bpe_grow(&r->pairs, &r->pairs_cap, r->n_pairs + 1, sizeof(bpe_pair))) {
        return -1;
    }
    int32_t idx = (int32_t)r->n_pairs++;
    r->pairs[idx] = (bpe_pair){.a = a, .b = b};
    r->pmap[i] = idx + 1;
    if (r->n_pairs * 2 > r->pmap_cap) {
        size_t nc = r->pmap_cap * 2;
        int32_t *nm = calloc(nc, sizeof(*nm));
        if (nm == NULL) {
            return -1;
        }
        for (size_t k = 0; k < r->n_pairs; k++) {
            bpe_pmap_insert(nm, nc, &r->pairs[k], (int32_t)k);
        }
        free(r->pmap);
        r->pmap = nm;
        r->pmap_cap = nc;
    }
    return idx;
}

/* Adds delta occurrences (weighted) of (a, b) found in word w; false out of memory. */
static bool bpe_pair_add(bpe_run *r, int32_t a, int32_t b, int64_t delta, uint32_t w)
{
    int32_t idx = bpe_pair_get(r, a, b);
    if (idx < 0) {
        return false;
    }
    bpe_pair *p = &r->pairs[idx];
    p->count += delta;
    if (delta > 0) {
        if (p->nw == 0 || p->w[p->nw - 1] != w) {
            size_t cap = p->capw;
            if (p->nw == UINT32_MAX || !bpe_grow(&p->w, &cap, (size_t)p->nw + 1, 4)) {
                return false;
            }
            p->capw = (uint32_t)(cap > UINT32_MAX ? UINT32_MAX : cap);
            p->w[p->nw++] = w;
        }
        if (!p->raised) {
            if (!bpe_grow(&r->raised, &r->raised_cap, r->n_raised + 1, sizeof(int32_t))) {
                return false;
            }
            p->raised = true;
            r->raised[r->n_raised++] = idx;
        }
    }
    return true;
}

/* Whether heap entry x comes out before y: higher count, then smaller spellings. */
static bool bpe_heap_before(const bpe_run *r, const bpe_heap_ent *x, const bpe_heap_ent *y)
{
    if (x->count != y->count) {
        return x->count > y->count;
    }
    const bpe_pair *p = &r->pairs[x->pair], *q = &r->pairs[y->pair];
    int c = bpe_tok_cmp(r->tr, p->a, q->a);
    if (c == 0) {
        c = bpe_tok_cmp(r->tr, p->b, q->b);
    }
    return c < 0 || (c == 0 && x->pair < y->pair);
}

static bool bpe_heap_push(bpe_run *r, int64_t count, int32_t pair)
{
    if (!bpe_grow(&r->heap, &r->heap_cap, r->n_heap + 1, sizeof(bpe_heap_ent))) {
        return false;
    }
    size_t i = r->n_heap++;
    bpe_heap_ent e = {count, pair};
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!bpe_heap_before(r, &e, &r->heap[up])) {
            break;
        }
        r->heap[i] = r->heap[up];
        i = up;
    }
    r->heap[i] = e;
    return true;
}

static bpe_heap_ent bpe_heap_pop(bpe_run *r)
{
    bpe_heap_ent top = r->heap[0], last = r->heap[--r->n_heap];
    size_t i = 0, n = r->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && bpe_heap_before(r, &r->heap[c + 1], &r->heap[c])) {
            c++;
        }
        if (!bpe_heap_before(r, &r->heap[c], &last)) {
            break;
        }
        r->heap[i] = r->heap[c];
        i = c;
    }
    if (n > 0) {
        r->heap[i] = last;
    }
    return top;
}

/* Words as byte-token sequences; the initial pair counts and heap. */
static bool bpe_run_init(bpe_run *r)
{
    bpe_trainer *tr = r->tr;
    r->sym = malloc((tr->wbytes_len ? tr->wbytes_len : 1) * sizeof(int32_t));
    r->pmap_cap = 1 << 16;
    r->pmap = calloc(r->pmap_cap, sizeof(int32_t));
    if (r->sym == NULL || r->pmap == NULL) {
        return false;
    }
    for (uint32_t i = 0; i < tr->n_words; i++) {
        bpe_word *w = &tr->words[i];
        const unsigned char *s = (const unsigned char *)tr->wbytes + w->off;
        w->sym_off = w->off;
        w->sym_len = w->len;
        for (uint32_t k = 0; k < w->len; k++) {
            r->sym[w->off + k] = tr->byte_id[s[k]];
        }
        for (uint32_t k = 0; k + 1 < w->len; k++) {
            if (!bpe_pair_add(r, r->sym[w->off + k], r->sym[w->off + k + 1], w->count, i)) {
                return false;
            }
        }
    }
    for (size_t k = 0; k < r->n_raised; k++) {
        bpe_pair *p = &r->pairs[r->raised[k]];
        p->raised = false;
        if (!bpe_heap_push(r, p->count, r->raised[k])) {
            return false;
        }
    }
    r->n_raised = 0;
    return true;
}

/* Replaces every (a, b) in word wi by `id`, left to right, updating the pair counts. */
static bool bpe_word_merge(bpe_run *r, uint32_t wi, int32_t a, int32_t b, int32_t id)
{
    bpe_word *w = &r->tr->words[wi];
    int32_t *s = r->sym + w->sym_off;
    const uint32_t n = w->sym_len;
    const int64_t f = w->count;
    uint32_t i = 0, j = 0;
    while (i < n) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
            if (j > 0 &&
                (!bpe_pair_add(r, s[j - 1], a, -f, wi) || !bpe_pair_add(r, s[j - 1], id, f, wi))) {
                return false;
            }
            if (i + 2 < n &&
                (!bpe_pair_add(r, b, s[i + 2], -f, wi) || !bpe_pair_add(r, id, s[i + 2], f, wi))) {
                return false;
            }
            s[j++] = id;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    w->sym_len = j;
    return true;
}

/* Merge the best pair (popped, count current): true to go on, false out of memory. */
static bool bpe_merge_pair(bpe_run *r, int32_t pi)
{
    bpe_trainer *tr = r->tr;
    const int32_t a = r->pairs[pi].a, b = r->pairs[pi].b;
    const bpe_span sa = tr->tok[a], sb = tr->tok[b];
    char stack[256], *cat = sa.len + sb.len <= sizeof(stack) ? stack : malloc(sa.len + sb.len);
    if (cat == NULL) {
        return false;
    }
    memcpy(cat, tr->tstr + sa.off, sa.len);
    memcpy(cat + sa.len, tr->tstr + sb.off, sb.len);
    size_t n = (size_t)sa.len + sb.len;
    int32_t id = bpe_tok_find(tr, cat, n, bpe_hash(cat, n));
    if (id < 0) {
        id = bpe_tok_add(tr, cat, n);
    }
    if (cat != stack) {
        free(cat);
    }
    if (id < 0) {
        return false;
    }
    if (!r->pairs[pi].merged) { /* a pair formed again after its merge is not listed twice */
        size_t cap = (size_t)tr->vocab_target;
        if (tr->merges == NULL && (tr->merges = malloc(cap * sizeof(*tr->merges))) == NULL) {
            return false;
        }
        tr->merges[tr->n_merges][0] = a;
        tr->merges[tr->n_merges][1] = b;
        tr->n_merges++;
        r->pairs[pi].merged = true;
    }
    /* Take the word list: bpe_word_merge may grow r->pairs. */
    uint32_t *wl = r->pairs[pi].w, nw = r->pairs[pi].nw;
    size_t wl_cap = r->pairs[pi].capw;
    r->pairs[pi].w = NULL;
    r->pairs[pi].nw = r->pairs[pi].capw = 0;
    bool ok = true;
    for (uint32_t k = 0; k < nw && ok; k++) {
        ok = bpe_word_merge(r, wl[k], a, b, id);
    }
    bpe_array_free(&wl, &wl_cap, sizeof(*wl));
    r->pairs[pi].count = 0; /* every occurrence is merged; left-to-right leaves none */
    for (size_t k = 0; k < r->n_raised && ok; k++) {
        bpe_pair *p = &r->pairs[r->raised[k]];
        p->raised = false;
        if (p->count > 0) {
            ok = bpe_heap_push(r, p->count, r->raised[k]);
        }
    }
    r->n_raised = 0;
    return ok;
}

static void bpe_run_free(bpe_run *r)
{
    for (size_t i = 0; i < r->n_pairs; i++) {
        size_t cap = r->pairs[i].capw;
        bpe_array_free(&r->pairs[i].w, &cap, sizeof(*r->pairs[i].w));
    }
    bpe_array_free(&r->pairs, &r->pairs_cap, sizeof(*r->pairs));
    free(r->pmap);
    bpe_array_free(&r->heap, &r->heap_cap, sizeof(*r->heap));
    bpe_array_free(&r->raised, &r->raised_cap, sizeof(*r->raised));
    free(r->sym);
}

mls_status bpe_trainer_run(bpe_trainer *tr, mls_err *err)
{
    if (tr->trained) {
        mls_err_set(err, "bpe: the trainer has already run");
        return MLS_ERR_UNSUPPORTED;
    }
    double t0 = bpe_now();
    bpe_run r = {.tr = tr};
    bool ok = bpe_run_init(&r);
    /* tr->merges holds vocab_target entries (a merge whose spelling exists adds no id). */
    while (ok && tr->n_tok < tr->vocab_target && r.n_heap > 0 && tr->n_merges < tr->vocab_target) {
        bpe_heap_ent top = bpe_heap_pop(&r);
        const bpe_pair *p = &r.pairs[top.pair];
        if (top.count != p->count) { /* stale: the pair lost occurrences since */
            if (p->count > 0) {
                ok = bpe_heap_push(&r, p->count, top.pair);
            }
            continue;
        }
        if (top.count < tr->min_count) {
            break;
        }
        ok = bpe_merge_pair(&r, top.pair);
    }
    if (ok) {
        uint64_t tokens = 0;
        for (uint32_t i = 0; i < tr->n_words; i++) {
            tokens += (uint64_t)tr->words[i].count * tr->words[i].sym_len;
        }
        tr->stats.tokens = tokens;
    }
    bpe_run_free(&r);
    if (!ok) {
        mls_err_set(err, "bpe: out of memory while training");
        return MLS_ERR_NO_MEMORY;
    }
    tr->trained = true;
    tr->stats.vocab_size = tr->n_tok;
    tr->stats.n_merges = tr->n_merges;
    tr->stats.seconds += bpe_now() - t0;
    return MLS_OK;
}

/* ---- queries ------------------------------------------------------------- */

void bpe_trainer_stats(const bpe_trainer *tr, bpe_stats *stats_p)
{
    *stats_p = tr->stats;
    stats_p->vocab_size = tr->n_tok;
    stats_p->n_merges = tr->n_merges;
}

int32_t bpe_trainer_vocab_size(const bpe_trainer *tr)
{
    return tr->n_tok;
}

const char *bpe_trainer_token(const bpe_trainer *tr, int32_t id, size_t *len_p)
{
    if (id < 0 || id >= tr->n_tok) {
        return NULL;
    }
    *len_p = tr->tok[id].len;
    return tr->tstr + tr->tok[id].off;
}

int32_t bpe_trainer_n_merges(const bpe_trainer *tr)
{
    return tr->n_merges;
}

bool bpe_trainer_merge(const bpe_trainer *tr, int32_t i, int32_t *left_p, int32_t *right_p)
{
    if (i < 0 || i >= tr->n_merges) {
        return false;
    }
    *left_p = tr->merges[i][0];
    *right_p = tr->merges[i][1];
    return true;
}

/* ---- writing JSON -------------------------------------------------------- */

void bpe_json_str(FILE *fp, const char *s, size_t n)
{
    fputc('"', fp);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', fp);
            fputc(c, fp);
        } else if (c == '\n') {
            fputs("\\n", fp);
        } else if (c == '\t') {
            fputs("\\t", fp);
        } else if (c == '\r') {
            fputs("\\r", fp);
        } else if (c < 0x20) {
            fprintf(fp, "\\u%04x", c);
        } else {
            fputc(c, fp);
        }
    }
    fputc('"', fp);
}

mls_status bpe_write_file(const char *path, const char *text, size_t len, mls_err *err)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= sizeof(tmp)) {
        mls_err_set(err, "bpe: path too long: %s", path);
        return MLS_ERR_INVALID_ARG;
    }
    FILE *fp = fopen(tmp, "wb");
    if (fp == NULL) {
        mls_err_set(err, "bpe: cannot create %s: %s", tmp, strerror(errno));
        return MLS_ERR_IO;
    }
    bool ok = fwrite(text, 1, len, fp) == len;
    ok = (fclose(fp) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        mls_err_set(err, "bpe: cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return MLS_ERR_IO;
    }
    return MLS_OK;
}

static void bpe_json_bytelevel(FILE *fp, const char *key, bool prefix, bool trim, bool last)
{
    fprintf(fp,
            "  \"%s\": {\n    \"type\": \"ByteLevel\",\n    \"add_prefix_space\": %s,\n"
            "    \"trim_offsets\": %s,\n    \"use_regex\": true\n  }%s\n",
            key, prefix ? "true" : "false", trim ? "true" : "false", last ? "" : ",");
}

mls_status bpe_trainer_write_json(const bpe_trainer *tr, const char *path, mls_err *err)
{
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    if (fp == NULL) {
        mls_err_set(err, "bpe: %s: out of memory", path);
        return MLS_ERR_NO_MEMORY;
    }
    fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n"
          "  \"added_tokens\": [",
          fp);
    for (int32_t i = 0; i < tr->n_added; i++) {
        bool sp = tr->added_special[i];
        fprintf(fp, "%s\n    {\n      \"id\": %d,\n      \"content\": ", i ? "," : "", (int)i);
        bpe_json_str(fp, tr->tstr + tr->tok[i].off, tr->tok[i].len);
        fprintf(fp,
                ",\n      \"single_word\": false,\n      \"lstrip\": false,\n"
                "      \"rstrip\": false,\n      \"normalized\": %s,\n      \"special\": %s\n"
                "    }",
                sp ? "false" : "true", sp ? "true" : "false");
    }
    fputs(tr->n_added ? "\n  ],\n" : "],\n", fp);
    fputs("  \"normalizer\": null,\n", fp);
    bpe_json_bytelevel(fp, "pre_tokenizer", false, true, false);
    bpe_json_bytelevel(fp, "post_processor", true, false, false);
    bpe_json_bytelevel(fp, "decoder", true, true, false);
    fputs("  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n"
          "    \"unk_token\": null,\n    \"continuing_subword_prefix\": null,\n"
          "    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n"
          "    \"byte_fallback\": false,\n    \"ignore_merges\": false,\n    \"vocab\": {",
          fp);
    for (int32_t i = 0; i < tr->n_tok; i++) {
        fputs(i ? ",\n      " : "\n      ", fp);
        bpe_json_str(fp, tr->tstr + tr->tok[i].off, tr->tok[i].len);
        fprintf(fp, ": %d", (int)i);
    }
    fputs("\n    },\n    \"merges\": [", fp);
    for (int32_t i = 0; i < tr->n_merges; i++) {
        const bpe_span *a = &tr->tok[tr->merges[i][0]], *b = &tr->tok[tr->merges[i][1]];
        fputs(i ? ",\n      [" : "\n      [", fp);
        bpe_json_str(fp, tr->tstr + a->off, a->len);
        fputs(", ", fp);
        bpe_json_str(fp, tr->tstr + b->off, b->len);
        fputc(']', fp);
    }
    fputs(tr->n_merges ? "\n    ]\n  }\n}\n" : "]\n  }\n}\n", fp);
    if (fclose(fp) != 0) {
        free(text);
        mls_err_set(err, "bpe: %s: out of memory", path);
        return MLS_ERR_NO_MEMORY;
    }
    mls_status st = bpe_write_file(path, text, len, err);
    free(text);
    return st;
}
