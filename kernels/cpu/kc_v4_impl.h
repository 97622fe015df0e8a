/*
 * kc_v4_impl.h - DeepSeek-V4's decode kernels, written once over kc_simd.h.
 *
 * Included by kc_v4_scalar.c, kc_v4_avx2.c and kc_v4_avx512.c (KC_SIMD 0, 1,
 * 2), compiled with -ffp-contract=off: the indexer's head sum rounds each
 * w * relu(dot) before adding it, as the reference does.
 *
 * Indexer scores (lanes over keys): a block of KC_V4_KB = 2 VL keys is
 * decoded from FP4 into a transposed tile [head_dim][KC_V4_KB] (AVX2/AVX-512:
 * one 32-bit gather brings 8 nibbles of VL keys, a permute looks up the e2m1
 * value), then for KC_V4_MH heads at a time every dim c adds q[h, c] * tile[c]
 * (a broadcast and two FMAs per head): each key's dot runs over the dims in
 * order and its head sum over the heads in order, with no horizontal sums.
 *
 * Row decode: FP8 V4 entries to f32 (e4m3 raw-decoded, times the block's
 * 2^(scale - 127) folded with 2^120; rope bf16), for the MLA tile kernels.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kc_internal.h"
#include "kc_simd.h"

#define KC_V4_KB (2 * VL) /* keys per indexer block */
#define KC_V4_MH 4        /* heads per register block */

static const float kc_v4_e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* tile[c * KC_V4_KB + k] (k < VL) = dim c of the key at base + off[k]. */
static void kc_v4_keys_decode_vl(const uint8_t *base, const int32_t *off, int32_t Id, float *tile)
{
#if KC_SIMD == 2
    __m512i vo = _mm512_loadu_si512(off), m4 = _mm512_set1_epi32(0xf);
    __m512 tab = _mm512_loadu_ps(kc_v4_e2m1);
    for (int32_t g = 0; g < Id / 32; g++) {
        /* the scale byte as the top byte of the dword ending at it (stays in the row) */
        __m512i e = _mm512_srli_epi32(_mm512_i32gather_epi32(vo, base + Id / 2 + g - 3, 1), 24);
        __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
        for (int32_t b4 = 0; b4 < 4; b4++) {
            __m512i w = _mm512_i32gather_epi32(vo, base + g * 16 + b4 * 4, 1);
            for (int j = 0; j < 8; j++) {
                __m512i nib = _mm512_and_si512(_mm512_srli_epi32(w, 4 * j), m4);
                _mm512_storeu_ps(tile + (int64_t)(g * 32 + b4 * 8 + j) * KC_V4_KB,
                                 _mm512_mul_ps(_mm512_permutexvar_ps(nib, tab), sc));
            }
        }
    }
#elif KC_SIMD == 1
    __m256i vo = _mm256_loadu_si256((const __m256i *)off), m4 = _mm256_set1_epi32(0xf);
    __m256 tab = _mm256_loadu_ps(kc_v4_e2m1); /* magnitudes; bit 3 is the sign */
    for (int32_t g = 0; g < Id / 32; g++) {
        __m256i e = _mm256_srli_epi32(
            _mm256_i32gather_epi32((const int *)(base + Id / 2 + g - 3), vo, 1), 24);
        __m256 sc = _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
        for (int32_t b4 = 0; b4 < 4; b4++) {
            __m256i w = _mm256_i32gather_epi32((const int *)(base + g * 16 + b4 * 4), vo, 1);
            for (int j = 0; j < 8; j++) {
                __m256i nib = _mm256_and_si256(_mm256_srli_epi32(w, 4 * j), m4);
                __m256 mag = _mm256_permutevar8x32_ps(tab, nib); /* uses bits 0..2 */
                __m256i sgn = _mm256_slli_epi32(_mm256_srli_epi32(nib, 3), 31);
                __m256 v = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(mag), sgn));
                _mm256_storeu_ps(tile + (int64_t)(g * 32 + b4 * 8 + j) * KC_V4_KB,
                                 _mm256_mul_ps(v, sc));
            }
        }
    }
#else
    const uint8_t *row = base + off[0];
    for (int32_t c = 0; c < Id; c++) {
        uint8_t b = row[c / 2], nib = (c & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0xf);
        tile[(int64_t)c * KC_V4_KB] = ldexpf(kc_v4_e2m1[nib], (int)row[Id / 2 + c / 32] - 127);
    }
#endif
}

/* s[0:KC_V4_KB] += the head sum over heads [h0, h0 + mh) for the keys of tile. */
KC_AI void kc_v4_heads(int mh, const kc_v4_index_params *p, int32_t h0, const float *tile, V *s0,
                       V *s1)
{
    V a[KC_V4_MH][2];
    const float *q = p->q + (int64_t)h0 * p->head_dim;
    _Pragma("GCC unroll 4") for (int i = 0; i < mh; i++) a[i][0] = a[i][1] = v_zero();
    for (int32_t c = 0; c < p->head_dim; c++) {
        V t0 = v_load(tile + (int64_t)c * KC_V4_KB), t1 = v_load(tile + (int64_t)c * KC_V4_KB + VL);
        _Pragma("GCC unroll 4") for (int i = 0; i < mh; i++)
        {
            V qb = v_set1(q[(int64_t)i * p->head_dim + c]);
            a[i][0] = v_fma(qb, t0, a[i][0]);
            a[i][1] = v_fma(qb, t1, a[i][1]);
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < mh; i++)
    {
        V w = v_set1(p->w[h0 + i]);
        *s0 = v_add(*s0, v_mul(w, v_max(a[i][0], v_zero())));
        *s1 = v_add(*s1, v_mul(w, v_max(a[i][1], v_zero())));
    }
}

static void kc_v4_vec_index_scores(const kc_v4_index_params *p, int64_t j0, int64_t j1)
{
    float tile[KC_V4_INDEX_MAX_DIM * KC_V4_KB] __attribute__((aligned(64)));
    float s[KC_V4_KB] __attribute__((aligned(64)));
    int32_t off[KC_V4_KB];

    for (int64_t jb = j0; jb < j1; jb += KC_V4_KB) {
        const uint8_t *base = p->keys + jb * p->row_bytes;
        int64_t n = j1 - jb < KC_V4_KB ? j1 - jb : KC_V4_KB;
        V s0 = v_zero(), s1 = v_zero();
        /* keys past the range repeat its last key; their scores are dropped */
        for (int k = 0; k < KC_V4_KB; k++) {
            off[k] = (int32_t)((k < n ? k : n - 1) * p->row_bytes);
        }
        kc_v4_keys_decode_vl(base, off, p->head_dim, tile);
        kc_v4_keys_decode_vl(base, off + VL, p->head_dim, tile + VL);
        int32_t h0 = 0;
        for (; h0 + KC_V4_MH <= p->n_heads; h0 += KC_V4_MH) {
            kc_v4_heads(KC_V4_MH, p, h0, tile, &s0, &s1);
        }
        for (; h0 < p->n_heads; h0++) {
            kc_v4_heads(1, p, h0, tile, &s0, &s1);
        }
        v_store(s, s0);
        v_store(s + VL, s1);
        memcpy(p->score + jb, s, sizeof(float) * (size_t)n);
    }
}

static void kc_v4_vec_row_decode(const uint8_t *const *rows, int n_rows, int32_t nope, int32_t rope,
                                 float *tile, int64_t ld)
{
    int32_t d = nope + rope;
    for (int t = 0; t < n_rows; t++) {
        const uint8_t *row = rows[t];
        float *o = tile + (int64_t)t * ld;
        if (row == NULL) {
            memset(o, 0, sizeof(float) * (size_t)ld);
            continue;
        }
        const uint8_t *sc = row + nope;
        const uint16_t *rp =
            (const uint16_t *)(const void *)(sc + KVL_V4_SCALE_BYTES((uint32_t)nope));
        for (int32_t b = 0; b < nope / 64; b++) {
            /* raw e4m3 is code * 2^-120: times 2^(scale - 7), in two steps past 2^127 */
            int e = sc[b];
            V s1 = v_set1(e <= 134 ? ldexpf(1.0f, e - 7) : 0x1p120f);
            V s2 = v_set1(ldexpf(1.0f, e - 127));
            for (int32_t i = 0; i < 64; i += VL) {
                V x = v_mul(v_load_fp8_raw(row + b * 64 + i), s1);
                v_store(o + b * 64 + i, e <= 134 ? x : v_mul(x, s2));
            }
        }
        int32_t i = 0;
        for (; i + VL <= rope; i += VL) {
            v_store(o + nope + i, v_load_bf16(rp + i));
        }
        for (; i < rope; i++) {
            o[nope + i] = s_load_bf16(rp + i);
        }
        for (int64_t c = d; c < ld; c++) {
            o[c] = 0.0f;
        }
    }
}

#define KC_V4_OPS_ENTRIES .index_scores = kc_v4_vec_index_scores, .row_decode = kc_v4_vec_row_decode
