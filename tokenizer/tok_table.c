/*
 * tok_table.c - the tokenizer's lookup tables: string -> id and (id, id) -> merge
 * maps (open addressing, linear probing, sized once at load), and the byte trie
 * of added-token contents.
 */
#include <string.h>

#include "tok_internal.h"

static uint32_t tok_pow2_at_least(size_t n)
{
    uint32_t c = 16;
    while (c < n) {
        c <<= 1;
    }
    return c;
}

bool tok_strmap_init(tok_arena *a, tok_strmap *m, size_t n)
{
    uint32_t cap = tok_pow2_at_least(n * 2 + 1);
    m->slots = tok_arena_alloc(a, (size_t)cap * sizeof(*m->slots));
    if (m->slots == NULL) {
        return false;
    }
    for (uint32_t i = 0; i < cap; i++) {
        m->slots[i].val = -1;
    }
    m->mask = cap - 1;
    return true;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *strings, const char *s, size_t len)
{
    uint64_t h = tok_hash_bytes(s, len);
    uint32_t i = (uint32_t)h & m->mask;
    while (m->slots[i].val >= 0) {
        const tok_str_slot *sl = &m->slots[i];
        if (sl->hash == (uint32_t)(h >> 32) && sl->len == len &&
            memcmp(strings + sl->off, s, len) == 0) {
            return sl->val;
        }
        i = (i + 1) & m->mask;
    }
    return -1;
}

/* Inserts or overwrites; returns the previous value or -1. */
int32_t tok_strmap_put(tok_strmap *m, const char *strings, uint32_t off, uint32_t len, int32_t val)
{
    uint64_t h = tok_hash_bytes(strings + off, len);
    uint32_t i = (uint32_t)h & m->mask;
    while (m->slots[i].val >= 0) {
        tok_str_slot *sl = &m->slots[i];
        if (sl->hash == (uint32_t)(h >> 32) && sl->len == len &&
            memcmp(strings + sl->off, strings + off, len) == 0) {
            int32_t old = sl->val;
            sl->val = val;
            return old;
        }
        i = (i + 1) & m->mask;
    }
    m->slots[i] = (tok_str_slot){.val = val, .hash = (uint32_t)(h >> 32), .off = off, .len = len};
    return -1;
}

bool tok_pairmap_init(tok_arena *a, tok_pairmap *m, size_t n)
{
    uint32_t cap = tok_pow2_at_least(n * 2 + 1);
    m->slots = tok_arena_alloc(a, (size_t)cap * sizeof(*m->slots));
    if (m->slots == NULL) {
        return false;
    }
    for (uint32_t i = 0; i < cap; i++) {
        m->slots[i].key = UINT64_MAX;
    }
    m->mask = cap - 1;
    return true;
}

void tok_pairmap_put(tok_pairmap *m, uint64_t key, int32_t rank, int32_t merged)
{
    uint32_t i = (uint32_t)tok_hash_u64(key) & m->mask;
    while (m->slots[i].key != UINT64_MAX && m->slots[i].key != key) {
        i = (i + 1) & m->mask;
    }
    /* a repeated merge keeps the last rank, as HF's HashMap collect does */
    m->slots[i] = (tok_pair_slot){.key = key, .rank = rank, .merged = merged};
}

int32_t tok_model_lookup(const tok_tokenizer *tok, const char *s, size_t len)
{
    return tok_strmap_get(&tok->model_map, tok->strings, s, len);
}

/* Adds `content` to the trie with payload `added`. */
bool tok_trie_add(tok_trie *t, int32_t cap, const uint8_t *s, size_t n, int32_t added)
{
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = t->nodes[node].first_child;
        while (c >= 0 && t->nodes[c].byte != s[i]) {
            c = t->nodes[c].next_sibling;
        }
        if (c < 0) {
            if (t->n_nodes >= cap) {
                return false;
            }
            c = t->n_nodes++;
            t->nodes[c] = (tok_trie_node){.first_child = -1,
                                          .next_sibling = t->nodes[node].first_child,
                                          .added = -1,
                                          .byte = s[i]};
            t->nodes[node].first_child = c;
        }
        node = c;
    }
    if (t->nodes[node].added < 0) {
        t->nodes[node].added = added; /* same content twice: the first one wins */
    }
    return true;
}
