/*
 * tok_internal.h - the tokenizer's internals, shared by its .c files only.
 *
 * Layout: every table of a loaded tokenizer is carved out of one arena (blocks
 * counted under MLS_ALLOC_TAG_TOKENIZER). Token strings live in the arena and are
 * referred to by (offset, length) spans.
 */
#ifndef TOK_INTERNAL_H
#define TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mls_buf.h"
#include "tok.h"

/* ---- arena --------------------------------------------------------------- */

typedef struct tok_arena_block tok_arena_block;
typedef struct {
    tok_arena_block *head;
} tok_arena;

/* Zeroed, 16-byte aligned; NULL when out of memory. Freed all at once. */
void *tok_arena_alloc(tok_arena *a, size_t size);
void tok_arena_release(tok_arena *a);

/* ---- hashing ------------------------------------------------------------- */

static inline uint64_t tok_hash_bytes(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ s[i]) * 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static inline uint64_t tok_hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* ---- tables -------------------------------------------------------------- */

/* String -> value, open addressing; keys are spans of tok->strings. */
typedef struct {
    int32_t val; /* -1 = empty */
    uint32_t hash;
    uint32_t off, len;
} tok_str_slot;

typedef struct {
    tok_str_slot *slots; /* (mask + 1) */
    uint32_t mask;
} tok_strmap;

/* (left id, right id) -> merge rank and merged id. */
typedef struct {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
    int32_t rank;
    int32_t merged;
} tok_pair_slot;

typedef struct {
    tok_pair_slot *slots; /* (mask + 1) */
    uint32_t mask;
} tok_pairmap;

/* Byte trie of added-token contents (children as sibling lists). */
typedef struct {
    int32_t first_child;
    int32_t next_sibling;
    int32_t added; /* index into tok->added, -1 when no token ends here */
    uint8_t byte;
} tok_trie_node;

typedef struct {
    tok_trie_node *nodes; /* node 0 is the root */
    int32_t n_nodes;
} tok_trie;

typedef struct {
    int32_t id;
    uint32_t off, len; /* content span in tok->strings */
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added_token;

typedef enum {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_WITH_PREVIOUS,
    TOK_SPLIT_MERGED_WITH_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

typedef enum {
    TOK_PRE_SPLIT,        /* split by re with behavior/invert */
    TOK_PRE_PREFIX_SPACE, /* ByteLevel add_prefix_space */
} tok_pre_kind;

typedef struct {
    tok_pre_kind kind;
    pcre2_code *re;
    tok_split_behavior behavior;
    bool invert;
} tok_pre_step;

#define TOK_PRE_MAX_STEPS 16

/* Word cache: direct-mapped, words of up to TOK_CACHE_KEY bytes. */
#define TOK_CACHE_KEY   30
#define TOK_CACHE_SLOTS 8192
typedef struct {
    uint64_t hash;
    uint8_t key_len; /* 0 = empty */
    uint8_t n_ids;
    char key[TOK_CACHE_KEY];
    int32_t ids[TOK_CACHE_KEY];
} tok_cache_slot;

typedef enum {
    TOK_CHAT_NONE,
    TOK_CHAT_DEEPSEEK_V3,      /* exactly the V3 template */
    TOK_CHAT_DEEPSEEK_V3_LIKE, /* a DeepSeek template rendered with V3 rules */
    TOK_CHAT_OTHER,
} tok_chat_kind;

/* Flags per id. */
enum {
    TOK_ID_MODEL = 1,   /* in the model vocab */
    TOK_ID_ADDED = 2,   /* an added token */
    TOK_ID_SPECIAL = 4, /* an added token with special: true */
    TOK_ID_RAWDEC = 8,  /* model token whose string is not byte-level: decodes as its UTF-8 */
};

struct tok_tokenizer {
    tok_arena arena;
    char *strings; /* all token strings, back to back */
    size_t strings_len;

    int32_t n_ids;        /* max id + 1 */
    uint8_t *id_flags;    /* (n_ids) TOK_ID_* */
    uint32_t *model_off;  /* (n_ids) model token string span; */
    uint32_t *model_len;  /* (n_ids) */
    uint32_t *dec_off;    /* (n_ids) decoded bytes span of model tokens (in strings) */
    uint32_t *dec_len;    /* (n_ids) */
    int32_t *added_of_id; /* (n_ids) index into added, -1 when not added */

    tok_strmap model_map; /* model token string -> id */
    tok_strmap added_map; /* added content -> index into added */
    tok_pairmap merges;
    int32_t byte_id[256]; /* model id of the byte-level char of each byte */
    bool ignore_merges;

    tok_added_token *added; /* (n_added) */
    int32_t n_added;
    tok_trie trie_raw;  /* added tokens with normalized: false */
    tok_trie trie_norm; /* added tokens with normalized: true */

    tok_pre_step pre[TOK_PRE_MAX_STEPS];
    int n_pre;

    pthread_mutex_t cache_mu;
    tok_cache_slot *cache; /* (TOK_CACHE_SLOTS) */

    int32_t bos_id, eos_id;
    bool add_bos;
    char *bos_str; /* arena strings, NUL-terminated; "" when unknown */
    char *eos_str;
    tok_chat_kind chat_kind;
};

/* Tables (tok_table.c), sized for n entries at load; false on OOM. */
bool tok_strmap_init(tok_arena *a, tok_strmap *m, size_t n);
/* Value of the key s[0..len), or -1. */
int32_t tok_strmap_get(const tok_strmap *m, const char *strings, const char *s, size_t len);
/* Inserts or overwrites the key strings[off..off+len); returns the previous value or -1. */
int32_t tok_strmap_put(tok_strmap *m, const char *strings, uint32_t off, uint32_t len, int32_t val);
bool tok_pairmap_init(tok_arena *a, tok_pairmap *m, size_t n);
/* A repeated key keeps the last rank, as HF's HashMap collect does. */
void tok_pairmap_put(tok_pairmap *m, uint64_t key, int32_t rank, int32_t merged);
/* Adds s[0..n) with payload `added`; false when the trie's cap nodes are used up. */
bool tok_trie_add(tok_trie *t, int32_t cap, const uint8_t *s, size_t n, int32_t added);

/* Model vocab / added lookups by string. */
int32_t tok_model_lookup(const tok_tokenizer *tok, const char *s, size_t len);

/* Length of the valid UTF-8 prefix of s (== n when all valid). */
size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n);

/*
 * Appends the lossy UTF-8 decoding of s[0..n) to out (U+FFFD per maximal invalid
 * subpart). With partial, a trailing sequence that is a valid but unfinished
 * prefix is not decoded; its length goes to *held_p. Returns false on OOM.
 */
/* common's growable buffer (mls_buf.h); zero-initialised it counts under
 * MLS_ALLOC_TAG_MISC. Text handed to a caller leaves it by mls_buf_detach. */
typedef mls_buf tok_buf;

/* Room for n more bytes (and a NUL) without moving the buffer again. */
bool tok_buf_reserve(tok_buf *b, size_t n);
/* Appends n bytes and keeps the buffer NUL-terminated; false on OOM. */
bool tok_buf_append(tok_buf *b, const void *p, size_t n);
void tok_buf_free(tok_buf *b);
bool tok_utf8_lossy(const uint8_t *s, size_t n, bool partial, tok_buf *out, size_t *held_p);

/* Byte-level map (GPT-2 bytes_to_unicode): byte -> code point, and back. */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp); /* -1 when cp is not a byte-level char */

/* Translates an HF (Oniguruma) regex to PCRE2 and compiles it; NULL + err on failure. */
pcre2_code *tok_regex_compile(const char *pattern, size_t len, bool literal, const char *what,
                              mls_err *err);

#endif
