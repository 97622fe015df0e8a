/*
 * kvx_test_gen.h - deterministic row contents shared by the transport test
 * (decode side, checks the pages) and its sender helper (prefill side), so
 * both agree on every byte without shipping the expected data separately.
 */
#ifndef MLS_KVX_TEST_GEN_H
#define MLS_KVX_TEST_GEN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t kvx_test_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Fill one row (row_bytes) of request rid, layer, token. */
static inline void kvx_test_row(uint64_t seed, uint64_t rid, uint32_t layer, uint32_t token,
                                uint8_t *row, size_t row_bytes)
{
    uint64_t s =
        kvx_test_mix(seed ^ kvx_test_mix(rid * 0x100000001b3ull + layer) ^ ((uint64_t)token << 20));
    for (size_t i = 0; i < row_bytes; i += 8) {
        s = kvx_test_mix(s);
        size_t n = row_bytes - i < 8 ? row_bytes - i : 8;
        memcpy(row + i, &s, n);
    }
}

/* The request's token (token_bytes), as the router would have drawn it: the
 * decode side reserves with it, the sender proves it (or, under test, proves
 * a wrong one). */
static inline void kvx_test_token(uint64_t seed, uint64_t rid, uint8_t *token, size_t token_bytes)
{
    uint64_t s = kvx_test_mix(seed ^ kvx_test_mix(rid ^ 0x746f6b656eull));
    for (size_t i = 0; i < token_bytes; i += 8) {
        s = kvx_test_mix(s);
        size_t n = token_bytes - i < 8 ? token_bytes - i : 8;
        memcpy(token + i, &s, n);
    }
}

#endif
