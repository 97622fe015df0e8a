/*
 * mls_rng.h - the project's one pseudo-random generator: xoshiro256**,
 * seeded through splitmix64. Deterministic on every machine, fast enough for
 * generating multi-GB random checkpoints (inline). Not for cryptography.
 */
#ifndef MLS_RNG_H
#define MLS_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} mls_rng;

static inline uint64_t mls_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void mls_rng_seed(mls_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) {
        r->s[i] = mls_splitmix64(&seed);
    }
}

static inline uint64_t mls_rng_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t mls_rng_next(mls_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = mls_rng_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = mls_rng_rotl(s[3], 45);
    return out;
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double mls_rng_uniform(mls_rng *r)
{
    return (double)(mls_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

#endif
