/*
 * kc_simd.h - the small vector vocabulary kc_vec_impl.h is written in.
 *
 * KC_SIMD selects the width: 0 = scalar (V is a float), 1 = AVX2 (8 lanes),
 * 2 = AVX-512 (16 lanes). Narrow loads decode exactly: bf16 by a shift, f16
 * by vcvtph2ps, fp8 e4m3 through f16 bits ((b & 0x7f) << 7 | (b & 0x80) << 8),
 * computed as t = b << 7; t + (t & 0x4000),
 * which yields e4m3 * 2^-8 exactly, subnormals included (callers fold the
 * 2^8 into the block scale). The 0x7f/0xff NaN codes do not survive.
 *
 * The x2 loads decode 2*VL narrow values from one load: v_load_bf16x2 gives
 * the even elements in ev and the odd ones in od (a shift and a mask of the
 * 32-bit lanes: no widening shuffles), so its users keep their f32 operands
 * in that "pair order" (per 2*VL block: evens, then odds); v_load_fp8x2
 * gives elements [0, VL) and [VL, 2VL) in natural order; v_load_fp8x2_raw
 * (and v_load_fp8_raw, VL values) too, but as e4m3 * 2^-120 with no float
 * op at all (sign-extend, shift the 7 magnitude bits to f32 bits 20..26,
 * keep the sign: subnormal codes become exact f32 denormals), for callers
 * that fold 2^120 into their other operand.
 */
#ifndef KC_SIMD_H
#define KC_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mls_num.h"

#define KC_AI static inline __attribute__((always_inline))

#if KC_SIMD == 2
#include <immintrin.h>
typedef __m512 V;
#define VL 16
KC_AI V v_zero(void) { return _mm512_setzero_ps(); }
KC_AI V v_load(const float *p) { return _mm512_loadu_ps(p); }
KC_AI void v_store(float *p, V v) { _mm512_storeu_ps(p, v); }
KC_AI V v_set1(float f) { return _mm512_set1_ps(f); }
KC_AI V v_add(V a, V b) { return _mm512_add_ps(a, b); }
KC_AI V v_mul(V a, V b) { return _mm512_mul_ps(a, b); }
KC_AI V v_fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
KC_AI V v_max(V a, V b) { return _mm512_max_ps(a, b); }
KC_AI float v_reduce_add(V v) { return _mm512_reduce_add_ps(v); }
KC_AI float v_reduce_max(V v) { return _mm512_reduce_max_ps(v); }
KC_AI V v_load_bf16(const uint16_t *p)
{
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
KC_AI V v_load_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
KC_AI V v_load_fp8(const uint8_t *p)
{
    /* b << 7 puts the sign at bit 14; adding bit 14 to itself carries it to 15 */
    __m256i t = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), 7);
    return _mm512_cvtph_ps(_mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000))));
}
KC_AI V v_exp(V x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
    V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
    V p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
KC_AI V v_sqr_acc(V acc, V x) { return _mm512_fmadd_ps(x, x, acc); }
KC_AI void v_load_bf16x2(const uint16_t *p, V *ev, V *od)
{
    __m512i x = _mm512_loadu_si512(p);
    *ev = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    *od = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
}
KC_AI void v_load_fp8x2(const uint8_t *p, V *lo, V *hi)
{
    __m512i t = _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p)), 7);
    __m512i h = _mm512_add_epi16(t, _mm512_and_si512(t, _mm512_set1_epi16(0x4000)));
    *lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    *hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
}
KC_AI V v_load_fp8_raw(const uint8_t *p)
{
    __m512i a = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_slli_epi32(a, 20), _mm512_set1_epi32((int)0x87ffffffu)));
}
KC_AI void v_load_fp8x2_raw(const uint8_t *p, V *lo, V *hi)
{
    __m512i a = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512i b = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16)));
    __m512i k = _mm512_set1_epi32((int)0x87ffffffu);
    *lo = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(a, 20), k));
    *hi = _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(b, 20), k));
}

#elif KC_SIMD == 1
#include <immintrin.h>
typedef __m256 V;
#define VL 8
KC_AI V v_zero(void) { return _mm256_setzero_ps(); }
KC_AI V v_load(const float *p) { return _mm256_loadu_ps(p); }
KC_AI void v_store(float *p, V v) { _mm256_storeu_ps(p, v); }
KC_AI V v_set1(float f) { return _mm256_set1_ps(f); }
KC_AI V v_add(V a, V b) { return _mm256_add_ps(a, b); }
KC_AI V v_mul(V a, V b) { return _mm256_mul_ps(a, b); }
KC_AI V v_fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
KC_AI V v_max(V a, V b) { return _mm256_max_ps(a, b); }
KC_AI float v_reduce_add(V v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
KC_AI float v_reduce_max(V v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
KC_AI V v_load_bf16(const uint16_t *p)
{
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
KC_AI V v_load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
KC_AI V v_load_fp8(const uint8_t *p)
{
    __m128i t = _mm_slli_epi16(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p)), 7);
    return _mm256_cvtph_ps(_mm_add_epi16(t, _mm_and_si128(t, _mm_set1_epi16(0x4000))));
}
KC_AI V v_exp(V x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3f));
    V n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f), r);
    V p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
KC_AI V v_sqr_acc(V acc, V x) { return _mm256_fmadd_ps(x, x, acc); }
KC_AI void v_load_bf16x2(const uint16_t *p, V *ev, V *od)
{
    __m256i x = _mm256_loadu_si256((const __m256i *)p);
    *ev = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    *od = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
}
KC_AI void v_load_fp8x2(const uint8_t *p, V *lo, V *hi)
{
    __m256i t = _mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), 7);
    __m256i h = _mm256_add_epi16(t, _mm256_and_si256(t, _mm256_set1_epi16(0x4000)));
    *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}
KC_AI V v_load_fp8_raw(const uint8_t *p)
{
    __m256i a = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return _mm256_castsi256_ps(
        _mm256_and_si256(_mm256_slli_epi32(a, 20), _mm256_set1_epi32((int)0x87ffffffu)));
}
KC_AI void v_load_fp8x2_raw(const uint8_t *p, V *lo, V *hi)
{
    __m256i a = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
    __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 8)));
    __m256i k = _mm256_set1_epi32((int)0x87ffffffu);
    *lo = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(a, 20), k));
    *hi = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(b, 20), k));
}

#else
typedef float V;
#define VL 1
KC_AI V v_zero(void) { return 0.0f; }
KC_AI V v_load(const float *p) { return *p; }
KC_AI void v_store(float *p, V v) { *p = v; }
KC_AI V v_set1(float f) { return f; }
KC_AI V v_add(V a, V b) { return a + b; }
KC_AI V v_mul(V a, V b) { return a * b; }
KC_AI V v_fma(V a, V b, V c) { return a * b + c; }
KC_AI V v_max(V a, V b) { return a > b ? a : b; }
KC_AI float v_reduce_add(V v) { return v; }
KC_AI float v_reduce_max(V v) { return v; }
KC_AI V v_load_bf16(const uint16_t *p) { return mls_bf16_to_f32(*p); }
KC_AI V v_load_f16(const uint16_t *p) { return mls_f16_to_f32(*p); }
KC_AI V v_load_fp8(const uint8_t *p) { return mls_fp8_e4m3_table()[*p] * (1.0f / 256.0f); }
KC_AI V v_exp(V x) { return expf(x); }
KC_AI V v_sqr_acc(V acc, V x) { return x * x + acc; }
KC_AI void v_load_bf16x2(const uint16_t *p, V *ev, V *od)
{
    *ev = mls_bf16_to_f32(p[0]);
    *od = mls_bf16_to_f32(p[1]);
}
KC_AI void v_load_fp8x2(const uint8_t *p, V *lo, V *hi)
{
    *lo = mls_fp8_e4m3_table()[p[0]] * (1.0f / 256.0f);
    *hi = mls_fp8_e4m3_table()[p[1]] * (1.0f / 256.0f);
}
KC_AI V v_load_fp8_raw(const uint8_t *p) { return mls_fp8_e4m3_table()[*p] * 0x1p-120f; }
KC_AI void v_load_fp8x2_raw(const uint8_t *p, V *lo, V *hi)
{
    *lo = mls_fp8_e4m3_table()[p[0]] * 0x1p-120f;
    *hi = mls_fp8_e4m3_table()[p[1]] * 0x1p-120f;
}
#endif

/* Scalar decodes with the same scaling as the vector loads (tails). */
KC_AI float s_load_f32(const float *p) { return *p; }
KC_AI float s_load_bf16(const uint16_t *p) { return mls_bf16_to_f32(*p); }
KC_AI float s_load_f16(const uint16_t *p) { return mls_f16_to_f32(*p); }
KC_AI float s_load_fp8(const uint8_t *p) { return mls_fp8_e4m3_table()[*p] * (1.0f / 256.0f); }
KC_AI float s_load_fp8_raw(const uint8_t *p) { return mls_fp8_e4m3_table()[*p] * 0x1p-120f; }

#endif
