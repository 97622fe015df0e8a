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
#include <pthread.h>

#define KC_SIMD 2
#include "kc_vec_impl.h"

const kc_ops kc_ops_avx512 = {
    KC_VEC_OPS_ENTRIES(kc_vec_matmul_rows, kc_vec_mla_few, KC_MLA_FEW_AUTO_FP8)};

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


/* ---- MLA fused few-heads path over fp8 rows: table decode + vdpbf16ps ----------------
 *
 * The generic fused path widens e4m3 codes to f32 16 at a time (three ops),
 * twice per row (scores, then P.V), which leaves fp8 decode compute-bound at
 * about half the memory bandwidth on Zen 4. Here 64 codes are decoded at once
 * into bf16 words with two vpermt2b table look-ups (AVX512-VBMI: the low and
 * high byte of the bf16 value of each 7-bit magnitude, exact since bf16 holds
 * every e4m3 value), the sign bit or-ed into the high byte, and two byte
 * unpacks, once per row: the scores use them at once and keep them in an L1
 * tile for P.V. The dot products are vdpbf16ps. As in FlashMLA, the query and the
 * softmax weights enter the products rounded to bf16 (accumulation is f32);
 * the per-128 scales are applied to each block's partial dot product (scores)
 * and folded into the weights (P.V). Zen 4, 1 head, rows in L1/L2, one
 * thread: 11 GB/s of fp8 rows before, 19 GB/s with this path.
 *
 * Word order: unpacklo_epi8(lo, hi) of 64 decoded codes gives channels
 * 16k+0..7 of each 128-bit lane k, unpackhi 16k+8..15; queries are stored in
 * that order. For P.V the words of two rows t, u are interleaved, so each
 * 32-bit lane holds (v_t[c], v_u[c]) and one vdpbf16ps with the broadcast pair
 * (p_t, p_u) adds both rows; accumulator q of a 64-channel chunk holds
 * channels 16k + 4q + 0..3 in its lane group k, un-permuted once at the end. */

#define KC_F8_TGT __attribute__((target("avx512vbmi"), always_inline)) static inline

typedef struct {
    __m512i lo0, lo1, hi0, hi1;
} kc_f8_lut;

/* The low and high bytes of the bf16 value of each 7-bit magnitude, built once. */
static uint8_t kc_f8_lut_lo[128], kc_f8_lut_hi[128];
static pthread_once_t kc_f8_lut_once = PTHREAD_ONCE_INIT;

static void kc_f8_lut_init(void)
{
    for (int c = 0; c < 128; c++) {
        uint16_t b = mls_f32_to_bf16(mls_fp8_e4m3_table()[c]);
        kc_f8_lut_lo[c] = (uint8_t)(b & 0xff);
        kc_f8_lut_hi[c] = (uint8_t)(b >> 8);
    }
}

static kc_f8_lut kc_f8_lut_make(void)
{
    kc_f8_lut t;
    pthread_once(&kc_f8_lut_once, kc_f8_lut_init);
    t.lo0 = _mm512_loadu_si512(kc_f8_lut_lo);
    t.lo1 = _mm512_loadu_si512(kc_f8_lut_lo + 64);
    t.hi0 = _mm512_loadu_si512(kc_f8_lut_hi);
    t.hi1 = _mm512_loadu_si512(kc_f8_lut_hi + 64);
    return t;
}

/* Low and high bytes of the bf16 values of 64 codes. */
KC_F8_TGT void kc_f8_bytes(const kc_f8_lut *t, __m512i codes, __m512i *lo, __m512i *hi)
{
    *lo = _mm512_permutex2var_epi8(t->lo0, codes, t->lo1);
    *hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(t->hi0, codes, t->hi1), codes,
                                    _mm512_set1_epi8((char)0x80), 0xf8); /* a | (b & c) */
}

KC_AI __mmask64 kc_f8_mask(int64_t n)
{
    return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
}

KC_AI __mmask32 kc_f8_mask32(int64_t n)
{
    return n >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << n) - 1);
}

/* Word position of channel c of a 64-channel chunk in the score order, and
 * the P.V accumulators' lane of channel c. */
static int kc_f8_qpos(int c)
{
    int k = c / 16, m = c % 16;
    return (m < 8 ? 0 : 32) + 8 * k + m % 8;
}

static int kc_f8_opos(int c)
{
    int k = c / 16, q = (c % 16) / 4, m = c % 4;
    return 16 * q + 4 * k + m;
}

/* s[i*lds + j] = q_i . row_j for nr rows at row0 + j*rb (qb: bf16 queries,
 * ldq words each: RP latent words in score order, then the rope part). */
KC_F8_TGT void kc_f8_scores(const kc_f8_lut *lut, int nq, int nr, const uint16_t *qb, int64_t ldq,
                            const uint8_t *row0, int64_t rb, const kvl_layout *l, float *s,
                            int64_t lds, uint16_t *tile, int64_t ldt)
{
    int64_t R = l->kv_lora_rank, D = l->rope_dim, RP = (R + 63) & ~(int64_t)63;
    __m512 acc[KC_MLA_FEW_QV][4][2], tot[KC_MLA_FEW_QV][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < nq; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
    {
        tot[i][j] = _mm512_setzero_ps();
        acc[i][j][0] = _mm512_setzero_ps();
        acc[i][j][1] = _mm512_setzero_ps();
    }
    for (int64_t c = 0; c < R; c += 64) {
        __mmask64 mk = kc_f8_mask(R - c);
        __m512i w0[4], w1[4];
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
        {
            __m512i x = _mm512_maskz_loadu_epi8(mk, row0 + j * rb + c), lo, hi;
            kc_f8_bytes(lut, x, &lo, &hi);
            w0[j] = _mm512_unpacklo_epi8(lo, hi);
            w1[j] = _mm512_unpackhi_epi8(lo, hi);
            _mm512_storeu_si512(tile + j * ldt + c, w0[j]);
            _mm512_storeu_si512(tile + j * ldt + c + 32, w1[j]);
        }
        _Pragma("GCC unroll 4") for (int i = 0; i < nq; i++)
        {
            __m512bh q0 = (__m512bh)_mm512_loadu_si512(qb + i * ldq + c);
            __m512bh q1 = (__m512bh)_mm512_loadu_si512(qb + i * ldq + c + 32);
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
            {
                acc[i][j][0] = _mm512_dpbf16_ps(acc[i][j][0], q0, (__m512bh)w0[j]);
                acc[i][j][1] = _mm512_dpbf16_ps(acc[i][j][1], q1, (__m512bh)w1[j]);
            }
        }
        if ((c + 64) % KVL_FP8_TILE == 0 || c + 64 >= R) {
            float sc[4];
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
                memcpy(&sc[j], row0 + j * rb + l->scale_offset + 4 * (c / KVL_FP8_TILE), 4);
            _Pragma("GCC unroll 4") for (int i = 0; i < nq; i++)
                _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
            {
                tot[i][j] = _mm512_fmadd_ps(_mm512_add_ps(acc[i][j][0], acc[i][j][1]),
                                            _mm512_set1_ps(sc[j]), tot[i][j]);
                acc[i][j][0] = _mm512_setzero_ps();
                acc[i][j][1] = _mm512_setzero_ps();
            }
        }
    }
    for (int64_t c = 0; c < D; c += 32) {
        __mmask32 mk = kc_f8_mask32(D - c);
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
        {
            __m512bh r = (__m512bh)_mm512_maskz_loadu_epi16(
                mk, (const uint16_t *)(row0 + j * rb + l->rope_offset) + c);
            _Pragma("GCC unroll 4") for (int i = 0; i < nq; i++)
                tot[i][j] = _mm512_dpbf16_ps(
                    tot[i][j], (__m512bh)_mm512_loadu_si512(qb + i * ldq + RP + c), r);
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < nq; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
            s[i * lds + j] = _mm512_reduce_add_ps(tot[i][j]);
}

/* op[i, c : c + 64*nc] = alpha[i] * op[...] + sum over the nt rows of p * row,
 * for nc 64-channel chunks at c, all in one 128-channel scale block, of the
 * decoded rows (tile, score order, stride ldt); pw[i*ldw + k]: bf16 weights of
 * rows 2k, 2k+1, already times the block's scale; an odd last row's pair
 * weight is 0. */
KC_AI void kc_f8_pv(int nq, int nc, const uint32_t *pw, int64_t ldw,
                    const uint16_t *tile, int64_t ldt, int nt, int64_t c, const float *alpha,
                    float *op, int64_t ldo)
{
    __m512 acc[KC_MLA_FEW_QV][2][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < nq; i++)
    {
        __m512 a = _mm512_set1_ps(alpha[i]);
        _Pragma("GCC unroll 2") for (int h = 0; h < nc; h++)
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)
                acc[i][h][k] =
                    _mm512_mul_ps(_mm512_loadu_ps(op + i * ldo + c + 64 * h + 16 * k), a);
    }
    for (int t = 0; t < nt; t += 2) {
        const uint16_t *rt = tile + t * ldt + c, *ru = t + 1 < nt ? rt + ldt : rt;
        _Pragma("GCC unroll 2") for (int h = 0; h < nc; h++)
        {
            __m512i a0 = _mm512_loadu_si512(rt + 64 * h), a1 = _mm512_loadu_si512(rt + 64 * h + 32);
            __m512i b0 = _mm512_loadu_si512(ru + 64 * h), b1 = _mm512_loadu_si512(ru + 64 * h + 32);
            __m512i v[4];
            v[0] = _mm512_unpacklo_epi16(a0, b0);
            v[1] = _mm512_unpackhi_epi16(a0, b0);
            v[2] = _mm512_unpacklo_epi16(a1, b1);
            v[3] = _mm512_unpackhi_epi16(a1, b1);
            _Pragma("GCC unroll 4") for (int i = 0; i < nq; i++)
            {
                __m512bh w = (__m512bh)_mm512_set1_epi32((int)pw[i * ldw + t / 2]);
                _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)
                    acc[i][h][k] = _mm512_dpbf16_ps(acc[i][h][k], w, (__m512bh)v[k]);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < nq; i++)
        _Pragma("GCC unroll 2") for (int h = 0; h < nc; h++)
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++)
                _mm512_storeu_ps(op + i * ldo + c + 64 * h + 16 * k, acc[i][h][k]);
}

KC_F8_TGT void kc_f8_run(const kc_mla_few_args *a, const int nq)
{
    const kvl_layout *l = a->layout;
    const int T = KC_MLA_FEW_ROWS;
    const kc_f8_lut lut = kc_f8_lut_make();
    int64_t R = l->kv_lora_rank, D = l->rope_dim, rb = l->row_bytes;
    int64_t RP = (R + 63) & ~(int64_t)63, ldq = RP + ((D + 31) & ~(int64_t)31);
    int64_t nb = (R + KVL_FP8_TILE - 1) / KVL_FP8_TILE, ldw = T / 2;
    _Static_assert(KC_MLA_FEW_ROWS == 16 && KVL_FP8_TILE == 128,
                   "kc_f8_run: one vector of weights per block, two 64-channel chunks per scale");
    uint16_t *qb = (uint16_t *)a->scratch;
    float *op = a->scratch + (nq * ldq / 2 + 15) / 16 * 16, *S = op + nq * RP;
    uint32_t *pw = (uint32_t *)(S + nq * T);
    uint16_t *tile = (uint16_t *)(S + nq * T + (nb * nq * ldw + 15) / 16 * 16);
    float m[KC_MLA_FEW_QV], lsum[KC_MLA_FEW_QV], alpha[KC_MLA_FEW_QV];

    memset(qb, 0, (size_t)(nq * ldq) * 2);
    for (int i = 0; i < nq; i++) {
        uint16_t *q = qb + i * ldq;
        for (int64_t c = 0; c < R; c++) {
            q[c / 64 * 64 + kc_f8_qpos((int)(c % 64))] =
                mls_f32_to_bf16(a->q_latent[i * R + c] * a->softmax_scale);
        }
        for (int64_t c = 0; c < D; c++) {
            q[RP + c] = mls_f32_to_bf16(a->q_rope[i * D + c] * a->softmax_scale);
        }
        memset(op + i * RP, 0, (size_t)RP * 4);
        m[i] = -INFINITY;
        lsum[i] = 0.0f;
    }

    for (int64_t t0 = a->r0; t0 < a->r1; t0 += T) {
        int nt = (int)kc_min64(T, a->r1 - t0), nr = nq == 1 ? 4 : 2, t = 0;
        const uint8_t *row0 = kvl_row_cptr(l, a->kv_base, a->page_table, t0);
        kc_few_pf pf = kc_few_pf_block(a, t0);

        for (; t + nr <= nt; t += nr) {
            kc_few_pf_step(&pf, nr * rb / 2);
            if (nr == 4) {
                kc_f8_scores(&lut, nq, 4, qb, ldq, row0 + t * rb, rb, l, S + t, T,
                             tile + t * RP, RP);
            } else {
                kc_f8_scores(&lut, nq, 2, qb, ldq, row0 + t * rb, rb, l, S + t, T,
                             tile + t * RP, RP);
            }
        }
        for (; t < nt; t++) {
            kc_f8_scores(&lut, nq, 1, qb, ldq, row0 + t * rb, rb, l, S + t, T, tile + t * RP,
                         RP);
        }
        kc_few_softmax(nq, nt, t0, a->last, S, T, m, lsum, alpha);

        /* weights per (128-channel block, vector, row pair): P times the
         * row's scale of the block, rounded to bf16; 16 bf16 values are 8
         * (p_t, p_u) pairs as they stand */
        for (int64_t b = 0; b < nb; b++) {
            __m512i at = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                             5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32((int)rb));
            __m512 sc = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), (__mmask16)((1u << nt) - 1),
                                                 at, row0 + l->scale_offset + 4 * b, 1);
            for (int i = 0; i < nq; i++) {
                __m256bh w = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(S + i * T), sc));
                _mm256_storeu_si256((__m256i *)(pw + (b * nq + i) * ldw), (__m256i)w);
            }
        }
        {
            int64_t c = 0;
            for (; nq <= 2 && c + 128 <= R; c += 128) {
                kc_few_pf_step(&pf, (pf.bytes - pf.off) * 128 / (R - c) + 64);
                kc_f8_pv(nq, 2, pw + (c / KVL_FP8_TILE) * nq * ldw, ldw, tile, RP, nt, c, alpha,
                         op, RP);
            }
            kc_few_pf_step(&pf, pf.bytes);
            for (; c < R; c += 64) {
                kc_f8_pv(nq, 1, pw + (c / KVL_FP8_TILE) * nq * ldw, ldw, tile, RP, nt, c, alpha,
                         op, RP);
            }
        }
    }

    for (int i = 0; i < nq; i++) {
        for (int64_t c = 0; c < R; c++) {
            a->o[i * R + c] = op[i * RP + c / 64 * 64 + kc_f8_opos((int)(c % 64))];
        }
        a->m[i] = m[i];
        a->l[i] = lsum[i];
    }
}

__attribute__((target("avx512vbmi"))) static void kc_f8_mla_few(const kc_mla_few_args *a)
{
    switch (a->n_qv) {
    case 1: kc_f8_run(a, 1); break;
    case 2: kc_f8_run(a, 2); break;
    case 3: kc_f8_run(a, 3); break;
    default: kc_f8_run(a, 4); break;
    }
}

static void kc_dp_mla_few(const kc_mla_few_args *a)
{
    if (a->layout->dtype == KVL_DTYPE_FP8 && __builtin_cpu_supports("avx512vbmi")) {
        kc_f8_mla_few(a);
    } else {
        kc_vec_mla_few(a);
    }
}

/* fp8 rows up to 4 query vectors take the table path (Zen 4, 16k x 4 context:
 * 2-4 heads 1.3-3x the tiled path's bandwidth) */
const kc_ops kc_ops_avx512_bf16 = {KC_VEC_OPS_ENTRIES(kc_dp_matmul_rows, kc_dp_mla_few, 4)};
