/*
 * mls_num.h - scalar number formats: bf16, f16 and float8 e4m3 (fn) <-> f32.
 *
 * These are the scalar references; kernels/cpu has the vector versions and
 * tests them against these. Conversions to narrow formats round to nearest
 * even. e4m3fn: bias 7, max 448, no infinities, 0x7F/0xFF are NaN; values
 * beyond 448 saturate to +-448.
 */
#ifndef MLS_NUM_H
#define MLS_NUM_H

#include <stdint.h>
#include <string.h>

#define MLS_FP8_E4M3_MAX 448.0f

static inline float mls_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline uint16_t mls_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) { /* NaN stays a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mls_f16_to_f32(uint16_t h);
uint16_t mls_f32_to_f16(float f);

/* Exact: every e4m3 code is representable in f32. */
float mls_fp8_e4m3_to_f32(uint8_t code);
/* Round to nearest even, saturating to +-448; NaN -> 0x7F. */
uint8_t mls_f32_to_fp8_e4m3(float f);

/* The 256 decoded e4m3 values, filled on first use (thread-safe). */
const float *mls_fp8_e4m3_table(void);

/* Monotonic time in nanoseconds and seconds. */
uint64_t mls_now_ns(void);
double mls_now_s(void);

#endif
