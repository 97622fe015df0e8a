/* mls_num.c - scalar narrow-float conversions and monotonic time. */
#include "mls_num.h"

#include <math.h>
#include <pthread.h>
#include <time.h>

float mls_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    float mag;

    if (exp == 0) {
        mag = ldexpf((float)mant, -24);
    } else if (exp == 31) {
        mag = mant ? NAN : INFINITY;
    } else {
        mag = ldexpf((float)(mant | 0x400), (int)exp - 25);
    }
    return sign ? -mag : mag;
}

uint16_t mls_f32_to_f16(float f)
{
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    float a = fabsf(f);
    int e;

    if (isnan(f)) {
        return 0x7e00;
    }
    if (a >= 65520.0f) {
        return sign | 0x7c00;
    }
    if (a < ldexpf(1.0f, -14)) { /* subnormal: units of 2^-24 */
        return sign | (uint16_t)nearbyintf(a * 16777216.0f);
    }
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    {
        float scaled = ldexpf(a, 11 - e); /* in [1024, 2048) */
        uint32_t m = (uint32_t)nearbyintf(scaled);
        int exp = e - 1 + 15;
        if (m == 2048) {
            m = 1024;
            exp++;
        }
        if (exp >= 31) {
            return sign | 0x7c00;
        }
        return sign | (uint16_t)((uint32_t)exp << 10) | (uint16_t)(m & 0x3ff);
    }
}

float mls_fp8_e4m3_to_f32(uint8_t code)
{
    uint32_t exp = (code >> 3) & 0xf;
    uint32_t mant = code & 0x7;
    float mag;

    if ((code & 0x7f) == 0x7f) {
        return NAN;
    }
    if (exp == 0) {
        mag = ldexpf((float)mant, -9); /* m/8 * 2^-6 */
    } else {
        mag = ldexpf((float)(mant | 8), (int)exp - 10);
    }
    return (code & 0x80) ? -mag : mag;
}

uint8_t mls_f32_to_fp8_e4m3(float f)
{
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    int e;

    if (isnan(f)) {
        return 0x7f;
    }
    if (a >= MLS_FP8_E4M3_MAX) {
        return sign | 0x7e;
    }
    if (a < ldexpf(1.0f, -6)) { /* subnormal: units of 2^-9 */
        return sign | (uint8_t)nearbyintf(a * 512.0f); /* 8 rounds up to the first normal */
    }
    frexpf(a, &e);
    {
        uint32_t m = (uint32_t)nearbyintf(ldexpf(a, 4 - e)); /* in [8, 16] */
        int exp = e - 1 + 7;
        if (m == 16) {
            m = 8;
            exp++;
        }
        if (exp > 15 || (exp == 15 && (m & 7) == 7)) {
            return sign | 0x7e;
        }
        return sign | (uint8_t)(exp << 3) | (uint8_t)(m & 7);
    }
}

static float mls_fp8_table_values[256];
static pthread_once_t mls_fp8_table_once = PTHREAD_ONCE_INIT;

static void mls_fp8_table_fill(void)
{
    for (int i = 0; i < 256; i++) {
        mls_fp8_table_values[i] = mls_fp8_e4m3_to_f32((uint8_t)i);
    }
}

const float *mls_fp8_e4m3_table(void)
{
    pthread_once(&mls_fp8_table_once, mls_fp8_table_fill);
    return mls_fp8_table_values;
}

uint64_t mls_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double mls_now_s(void)
{
    return (double)mls_now_ns() * 1e-9;
}
