/*
 * kc_vec_avx512.c - the AVX-512 kernel tables.
 *
 * kc_ops_avx512 is kc_vec_impl.h at width 16. kc_ops_avx512_bf16 replaces
 * matmul for bf16 and fp8 weights with vdpbf16ps: each f32 activation is split
 * into hi = bf16(x) and lo = bf16(x - hi) and both are dotted with the (exactly
 * bf16) weights, which keeps ~2^-16 relative accuracy per product. fp8 weights
 * are decoded to bf16 once per 4-row group and x block (e4m3 -> f16 bits ->
 * f32 -> bf16 is exact; the 128x128 block scale is folded into x, together
 * with the 2^8 of the f16 trick), then reused across every row of the x block.
 */
#define KC_SIMD 2
#include "kc_vec_impl.h"

const kc_ops kc_ops_avx512 = {KC_VEC_OPS_ENTRIES(kc_vec_matmul_rows)};

#define KC_DP_MR 4
#define KC_DP_NR 4

/* xh/xl[i, 0:kp] = hi/lo bf16 halves of x[i, :k] * scale(c) (zero padded). */
static void kc_dp_split_x(const kc_matrix *w, int64_t seg_row, const float *x, int64_t n,
                          int64_t kp, uint16_t *xh, uint16_t *xl)
{
    int64_t k = w->cols;
    int fp8 = w->dtype == KC_DTYPE_FP8_E4M3;
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * k;
        for (int64_t c = 0; c < kp; c += 16) {
            __mmask16 m = c + 16 <= k ? 0xffff : (c < k ? (__mmask16)((1u << (k - c)) - 1) : 0);
            __m512 v = _mm512_maskz_loadu_ps(m, xr + c);
            if (fp8) {
                v = _mm512_mul_ps(v, _mm512_set1_ps(kc_fp8_scale(w, seg_row, c)));
            }
            __m256bh h = _mm512_cvtneps_pbh(v);
            __m512 hf = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)h), 16));
            __m256bh l = _mm512_cvtneps_pbh(_mm512_sub_ps(v, hf));
            _mm256_storeu_si256((__m256i *)(xh + i * kp + c), (__m256i)h);
            _mm256_storeu_si256((__m256i *)(xl + i * kp + c), (__m256i)l);
        }
    }
}

/* wt[j, 0:kp] = bf16(e4m3(w[r+j, :]) * 2^-8) for j < nr, zero padded. */
static void kc_dp_decode_fp8(const kc_matrix *w, int64_t r, int nr, int64_t kp, uint16_t *wt)
{
    int64_t k = w->cols;
    for (int j = 0; j < nr; j++) {
        const uint8_t *src = kc_row_ptr(w, r + j);
        for (int64_t c = 0; c < kp; c += 32) {
            __mmask32 m = c + 32 <= k ? 0xffffffffu
                                      : (c < k ? (__mmask32)((1ull << (k - c)) - 1) : 0);
            __m512i t = _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, src + c)), 7);
            __m512i h = _mm512_add_epi16(t, _mm512_and_si512(t, _mm512_set1_epi16(0x4000)));
            __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
            __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
            _mm512_storeu_si512(wt + j * kp + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

/* y[0:mr, 0:nr] = (xh + xl)[0:mr, :] . wt[0:nr, :]^T over k (kp padded for x;
 * w rows have stride ldw and k valid elements). */
KC_AI void kc_dp_tile(int mr, int nr, const uint16_t *wt, int64_t ldw, int64_t k,
                      const uint16_t *xh, const uint16_t *xl, int64_t ldx, float *y, int64_t ldy)
{
    __m512 acc[KC_DP_MR][KC_DP_NR];
    int64_t kk = 0;
    _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) acc[i][j] = _mm512_setzero_ps();
    for (; kk + 32 <= k; kk += 32) {
        __m512i wv[KC_DP_NR];
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
            wv[j] = _mm512_loadu_si512(wt + j * ldw + kk);
        _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++) {
            __m512bh h = (__m512bh)_mm512_loadu_si512(xh + i * ldx + kk);
            __m512bh l = (__m512bh)_mm512_loadu_si512(xl + i * ldx + kk);
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], h, (__m512bh)wv[j]);
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], l, (__m512bh)wv[j]);
            }
        }
    }
    if (kk < k) {
        __mmask32 m = (__mmask32)((1ull << (k - kk)) - 1);
        __m512i wv[KC_DP_NR];
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
            wv[j] = _mm512_maskz_loadu_epi16(m, wt + j * ldw + kk);
        _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++) {
            __m512bh h = (__m512bh)_mm512_loadu_si512(xh + i * ldx + kk);
            __m512bh l = (__m512bh)_mm512_loadu_si512(xl + i * ldx + kk);
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], h, (__m512bh)wv[j]);
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], l, (__m512bh)wv[j]);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
            y[i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]);
}

static void kc_dp_group(int nr, const uint16_t *wt, int64_t ldw, int64_t k, const uint16_t *xh,
                        const uint16_t *xl, int64_t kp, int64_t n, float *y, int64_t ldy)
{
    for (int64_t i = 0; i < n; i += KC_DP_MR) {
        int mr = (int)kc_min64(KC_DP_MR, n - i);
        const uint16_t *h = xh + i * kp, *l = xl + i * kp;
        float *yi = y + i * ldy;
        if (nr == KC_DP_NR) {
            switch (mr) {
            case 4: kc_dp_tile(4, 4, wt, ldw, k, h, l, kp, yi, ldy); break;
            case 3: kc_dp_tile(3, 4, wt, ldw, k, h, l, kp, yi, ldy); break;
            case 2: kc_dp_tile(2, 4, wt, ldw, k, h, l, kp, yi, ldy); break;
            default: kc_dp_tile(1, 4, wt, ldw, k, h, l, kp, yi, ldy); break;
            }
        } else {
            for (int j = 0; j < nr; j++) {
                switch (mr) {
                case 4: kc_dp_tile(4, 1, wt + j * ldw, ldw, k, h, l, kp, yi + j, ldy); break;
                case 3: kc_dp_tile(3, 1, wt + j * ldw, ldw, k, h, l, kp, yi + j, ldy); break;
                case 2: kc_dp_tile(2, 1, wt + j * ldw, ldw, k, h, l, kp, yi + j, ldy); break;
                default: kc_dp_tile(1, 1, wt + j * ldw, ldw, k, h, l, kp, yi + j, ldy); break;
                }
            }
        }
    }
}

static void kc_dp_matmul_rows(const kc_matrix *w, const float *x, int64_t n, float *y,
                              int64_t ldy, int64_t r_begin, int64_t r_end)
{
    int fp8 = w->dtype == KC_DTYPE_FP8_E4M3;
    int64_t k = w->cols, kp = (k + 31) & ~(int64_t)31;
    int64_t mb;
    uint16_t *xh, *xl, *wt = NULL;

    if (w->dtype != KC_DTYPE_BF16 && !(fp8 && n >= 4)) {
        kc_vec_matmul_rows(w, x, n, y, ldy, r_begin, r_end);
        return;
    }
    mb = (384 * 1024) / (kp * 4);
    mb = mb < KC_DP_MR ? KC_DP_MR : (mb / KC_DP_MR) * KC_DP_MR;
    mb = kc_min64(mb, n);
    xh = kc_scratch_get(0, (size_t)(mb * kp) * 2 * sizeof(uint16_t));
    if (fp8) {
        wt = kc_scratch_get(1, (size_t)(KC_DP_NR * kp) * sizeof(uint16_t));
    }
    if (xh == NULL || (fp8 && wt == NULL)) {
        kc_vec_matmul_rows(w, x, n, y, ldy, r_begin, r_end);
        return;
    }
    xl = xh + mb * kp;
    for (int64_t s0 = r_begin; s0 < r_end;) {
        int64_t s1 = r_end;
        if (fp8) {
            s1 = kc_min64(s1, ((w->row0 + s0) / KC_FP8_BLOCK + 1) * KC_FP8_BLOCK - w->row0);
        }
        for (int64_t i0 = 0; i0 < n; i0 += mb) {
            int64_t ni = kc_min64(mb, n - i0);
            kc_dp_split_x(w, s0, x + i0 * k, ni, kp, xh, xl);
            for (int64_t r = s0; r < s1; r += KC_DP_NR) {
                int nr = (int)kc_min64(KC_DP_NR, s1 - r);
                float *yr = y + i0 * ldy + (r - r_begin);
                if (fp8) {
                    kc_dp_decode_fp8(w, r, nr, kp, wt);
                    kc_dp_group(nr, wt, kp, kp, xh, xl, kp, ni, yr, ldy);
                } else {
                    kc_dp_group(nr, (const uint16_t *)kc_row_ptr(w, r), k, k, xh, xl, kp, ni, yr,
                                ldy);
                }
            }
        }
        s0 = s1;
    }
}

const kc_ops kc_ops_avx512_bf16 = {
    KC_VEC_OPS_ENTRIES(kc_dp_matmul_rows)
};
