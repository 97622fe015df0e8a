/*
 * kc_vec_impl.h - the f32-FMA kernels, written once over kc_simd.h.
 *
 * Included by kc_vec_scalar.c, kc_vec_avx2.c and kc_vec_avx512.c, each
 * defining KC_SIMD before including it; defines static kernels and the
 * function-table entries those files put into their kc_ops.
 *
 * Register blocking: matmul and MLA scores are dot products along the
 * contiguous dimension (acc[4 x rows][4 W rows], one horizontal sum per
 * output); matmul_t and the MLA P.V product are axpy over 4 x rows by
 * 4 vectors of output columns.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kc_internal.h"
#include "kc_simd.h"

#define KC_MR 4
#define KC_NR 4

static inline int64_t kc_min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* ---- matmul: y[i, r] = x[i, :] . W[r, :] ------------------------------------ */

/* One (mr x nr) tile over the whole K. w points at row 0 of the tile (row
 * stride ldw elements), x at row 0 (stride ldx), y at (0, 0) (stride ldy). */
#define KC_DEFINE_MM_TILE(NAME, ET, LOADV, LOADS)                                            \
    KC_AI void NAME(int mr, int nr, const ET *w, int64_t ldw, const float *x, int64_t ldx,    \
                    int64_t k, float *y, int64_t ldy)                                         \
    {                                                                                         \
        V acc[KC_MR][KC_NR];                                                                  \
        int64_t kk = 0;                                                                       \
        _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) acc[i][j] = v_zero();        \
        for (; kk + VL <= k; kk += VL) {                                                      \
            V wv[KC_NR];                                                                      \
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) wv[j] = LOADV(w + j * ldw + kk); \
            _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)                              \
            {                                                                                 \
                V xv = v_load(x + i * ldx + kk);                                              \
                _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) acc[i][j] =              \
                    v_fma(xv, wv[j], acc[i][j]);                                              \
            }                                                                                 \
        }                                                                                     \
        _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)                              \
            {                                                                                 \
                float s = v_reduce_add(acc[i][j]);                                            \
                for (int64_t t = kk; t < k; t++) {                                            \
                    s += x[i * ldx + t] * LOADS(w + j * ldw + t);                             \
                }                                                                             \
                y[i * ldy + j] = s;                                                           \
            }                                                                                 \
    }

KC_DEFINE_MM_TILE(kc_mm_tile_f32, float, v_load, s_load_f32)
KC_DEFINE_MM_TILE(kc_mm_tile_bf16, uint16_t, v_load_bf16, s_load_bf16)
KC_DEFINE_MM_TILE(kc_mm_tile_f16, uint16_t, v_load_f16, s_load_f16)
#if KC_SIMD == 2
/* fp8 without vcvtph2ps (slow on some cores): sign-extend each code to 32
 * bits, shift the 7 magnitude bits to f32 bits 20..26 and keep the sign:
 * that is e4m3 * 2^-120 exactly (subnormal codes become f32 denormals), and
 * one multiply by 2^112 gives e4m3 * 2^-8 like v_load_fp8. */
KC_AI V kc_fp8_load_f32bits(const uint8_t *p)
{
    __m512i d = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
    d = _mm512_and_si512(_mm512_slli_epi32(d, 20), _mm512_set1_epi32((int)0x87ffffffu));
    return _mm512_mul_ps(_mm512_castsi512_ps(d), _mm512_set1_ps(0x1p112f));
}
KC_DEFINE_MM_TILE(kc_mm_tile_fp8, uint8_t, kc_fp8_load_f32bits, s_load_fp8)
#else
KC_DEFINE_MM_TILE(kc_mm_tile_fp8, uint8_t, v_load_fp8, s_load_fp8)
#endif

/* Scaled copy of x for the fp8 row block of view row r: xs[i, c] =
 * x[i, c] * scale(r, c) * 2^8. */
static void kc_fp8_scale_x(const kc_matrix *w, int64_t r, const float *x, int64_t n, float *xs)
{
    int64_t k = w->cols;
    for (int64_t c0 = 0; c0 < k; c0 += KC_FP8_BLOCK) {
        int64_t c1 = kc_min64(k, c0 + KC_FP8_BLOCK);
        V s = v_set1(kc_fp8_scale(w, r, c0));
        float ss = kc_fp8_scale(w, r, c0);
        for (int64_t i = 0; i < n; i++) {
            int64_t c = c0;
            for (; c + VL <= c1; c += VL) {
                v_store(xs + i * k + c, v_mul(v_load(x + i * k + c), s));
            }
            for (; c < c1; c++) {
                xs[i * k + c] = x[i * k + c] * ss;
            }
        }
    }
}

#define KC_DEFINE_MM_ROWS(NAME, TILE, ET)                                                    \
    static void NAME(const kc_matrix *w, const float *x, int64_t n, float *y, int64_t ldy,    \
                     int64_t r_begin, int64_t r_end)                                          \
    {                                                                                         \
        int64_t k = w->cols;                                                                  \
        int64_t mb = (256 * 1024) / (k * 4 + 1);                                              \
        mb = mb < KC_MR ? KC_MR : (mb / KC_MR) * KC_MR;                                       \
        for (int64_t s0 = r_begin; s0 < r_end;) {                                             \
            int64_t s1 = r_end;                                                               \
            const float *xs = x;                                                              \
            if (w->dtype == KC_DTYPE_FP8_E4M3) {                                              \
                int64_t blk_end = ((w->row0 + s0) / KC_FP8_BLOCK + 1) * KC_FP8_BLOCK - w->row0; \
                float *buf = kc_scratch_get(0, (size_t)(n * k) * sizeof(float));             \
                s1 = kc_min64(s1, blk_end);                                                   \
                if (buf == NULL) {                                                            \
                    return; /* out of memory: nothing sane left to do */                      \
                }                                                                             \
                kc_fp8_scale_x(w, s0, x, n, buf);                                             \
                xs = buf;                                                                     \
            }                                                                                 \
            for (int64_t i0 = 0; i0 < n; i0 += mb) {                                          \
                int64_t i1 = kc_min64(n, i0 + mb);                                            \
                for (int64_t r = s0; r < s1; r += KC_NR) {                                    \
                    int nr = (int)kc_min64(KC_NR, s1 - r);                                    \
                    const ET *wr = (const ET *)kc_row_ptr(w, r);                              \
                    for (int64_t i = i0; i < i1; i += KC_MR) {                                \
                        int mr = (int)kc_min64(KC_MR, i1 - i);                                \
                        const float *xi = xs + i * k;                                         \
                        float *yi = y + i * ldy + (r - r_begin);                              \
                        if (nr == KC_NR) {                                                    \
                            switch (mr) {                                                     \
                            case 4: TILE(4, KC_NR, wr, k, xi, k, k, yi, ldy); break;          \
                            case 3: TILE(3, KC_NR, wr, k, xi, k, k, yi, ldy); break;          \
                            case 2: TILE(2, KC_NR, wr, k, xi, k, k, yi, ldy); break;          \
                            default: TILE(1, KC_NR, wr, k, xi, k, k, yi, ldy); break;         \
                            }                                                                 \
                        } else {                                                              \
                            for (int j = 0; j < nr; j++) {                                    \
                                switch (mr) {                                                 \
                                case 4: TILE(4, 1, wr + j * k, k, xi, k, k, yi + j, ldy); break; \
                                case 3: TILE(3, 1, wr + j * k, k, xi, k, k, yi + j, ldy); break; \
                                case 2: TILE(2, 1, wr + j * k, k, xi, k, k, yi + j, ldy); break; \
                                default: TILE(1, 1, wr + j * k, k, xi, k, k, yi + j, ldy); break; \
                                }                                                             \
                            }                                                                 \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            s0 = s1;                                                                          \
        }                                                                                     \
    }

KC_DEFINE_MM_ROWS(kc_mm_rows_f32, kc_mm_tile_f32, float)
KC_DEFINE_MM_ROWS(kc_mm_rows_bf16, kc_mm_tile_bf16, uint16_t)
KC_DEFINE_MM_ROWS(kc_mm_rows_f16, kc_mm_tile_f16, uint16_t)
KC_DEFINE_MM_ROWS(kc_mm_rows_fp8, kc_mm_tile_fp8, uint8_t)

static void kc_vec_matmul_rows(const kc_matrix *w, const float *x, int64_t n, float *y,
                               int64_t ldy, int64_t r_begin, int64_t r_end)
{
    switch (w->dtype) {
    case KC_DTYPE_F32: kc_mm_rows_f32(w, x, n, y, ldy, r_begin, r_end); break;
    case KC_DTYPE_BF16: kc_mm_rows_bf16(w, x, n, y, ldy, r_begin, r_end); break;
    case KC_DTYPE_F16: kc_mm_rows_f16(w, x, n, y, ldy, r_begin, r_end); break;
    case KC_DTYPE_FP8_E4M3: kc_mm_rows_fp8(w, x, n, y, ldy, r_begin, r_end); break;
    }
}

/* ---- matmul_t: y[i, c] = sum_r x[i, r] W[r, c] ---------------------------------- */

/* mr x rows of x by nv vectors of columns starting at column c. */
#define KC_DEFINE_MMT_TILE(NAME, ET, LOADV, FP8)                                             \
    KC_AI void NAME(int mr, int nv, const kc_matrix *w, const float *x, int64_t c, float *y,  \
                    int64_t ldy)                                                              \
    {                                                                                         \
        V acc[KC_MR][4];                                                                      \
        int64_t rows = w->rows, cols = w->cols;                                               \
        const ET *base = (const ET *)kc_row_ptr(w, 0) + c;                                    \
        _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < nv; j++) acc[i][j] = v_zero();        \
        for (int64_t r = 0; r < rows; r++) {                                                  \
            V wv[4];                                                                          \
            float s = FP8 ? kc_fp8_scale(w, r, c) : 1.0f;                                     \
            _Pragma("GCC unroll 4") for (int j = 0; j < nv; j++) wv[j] =                      \
                LOADV(base + r * cols + j * VL);                                              \
            _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)                              \
            {                                                                                 \
                V xb = v_set1(x[i * rows + r] * s);                                           \
                _Pragma("GCC unroll 4") for (int j = 0; j < nv; j++) acc[i][j] =              \
                    v_fma(xb, wv[j], acc[i][j]);                                              \
            }                                                                                 \
        }                                                                                     \
        _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < nv; j++)                              \
                v_store(y + i * ldy + c + j * VL, acc[i][j]);                                 \
    }

KC_DEFINE_MMT_TILE(kc_mmt_tile_f32, float, v_load, 0)
KC_DEFINE_MMT_TILE(kc_mmt_tile_bf16, uint16_t, v_load_bf16, 0)
KC_DEFINE_MMT_TILE(kc_mmt_tile_f16, uint16_t, v_load_f16, 0)
KC_DEFINE_MMT_TILE(kc_mmt_tile_fp8, uint8_t, v_load_fp8, 1)

#define KC_DEFINE_MMT_COLS(NAME, TILE, ET, LOADS, FP8)                                       \
    static void NAME(const kc_matrix *w, const float *x, int64_t n, float *y, int64_t ldy,    \
                     int64_t c_begin, int64_t c_end)                                          \
    {                                                                                         \
        int64_t c = c_begin;                                                                  \
        for (; c + 4 * VL <= c_end; c += 4 * VL) {                                            \
            for (int64_t i = 0; i < n; i += KC_MR) {                                          \
                const float *xi = x + i * w->rows;                                            \
                switch ((int)kc_min64(KC_MR, n - i)) {                                        \
                case 4: TILE(4, 4, w, xi, c, y + i * ldy, ldy); break;                        \
                case 3: TILE(3, 4, w, xi, c, y + i * ldy, ldy); break;                        \
                case 2: TILE(2, 4, w, xi, c, y + i * ldy, ldy); break;                        \
                default: TILE(1, 4, w, xi, c, y + i * ldy, ldy); break;                       \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        for (; c + VL <= c_end; c += VL) {                                                    \
            for (int64_t i = 0; i < n; i++) {                                                 \
                TILE(1, 1, w, x + i * w->rows, c, y + i * ldy, ldy);                          \
            }                                                                                 \
        }                                                                                     \
        for (; c < c_end; c++) {                                                              \
            const ET *col = (const ET *)kc_row_ptr(w, 0) + c;                                 \
            for (int64_t i = 0; i < n; i++) {                                                 \
                float s = 0.0f;                                                               \
                for (int64_t r = 0; r < w->rows; r++) {                                       \
                    float sc = FP8 ? kc_fp8_scale(w, r, c) : 1.0f;                            \
                    s += x[i * w->rows + r] * sc * LOADS(col + r * w->cols);                  \
                }                                                                             \
                y[i * ldy + c] = s;                                                           \
            }                                                                                 \
        }                                                                                     \
    }

KC_DEFINE_MMT_COLS(kc_mmt_cols_f32, kc_mmt_tile_f32, float, s_load_f32, 0)
KC_DEFINE_MMT_COLS(kc_mmt_cols_bf16, kc_mmt_tile_bf16, uint16_t, s_load_bf16, 0)
KC_DEFINE_MMT_COLS(kc_mmt_cols_f16, kc_mmt_tile_f16, uint16_t, s_load_f16, 0)
KC_DEFINE_MMT_COLS(kc_mmt_cols_fp8, kc_mmt_tile_fp8, uint8_t, s_load_fp8, 1)

static void kc_vec_matmul_t_cols(const kc_matrix *w, const float *x, int64_t n, float *y,
                                 int64_t ldy, int64_t c_begin, int64_t c_end)
{
    switch (w->dtype) {
    case KC_DTYPE_F32: kc_mmt_cols_f32(w, x, n, y, ldy, c_begin, c_end); break;
    case KC_DTYPE_BF16: kc_mmt_cols_bf16(w, x, n, y, ldy, c_begin, c_end); break;
    case KC_DTYPE_F16: kc_mmt_cols_f16(w, x, n, y, ldy, c_begin, c_end); break;
    case KC_DTYPE_FP8_E4M3: kc_mmt_cols_fp8(w, x, n, y, ldy, c_begin, c_end); break;
    }
}

/* ---- MLA pieces ---------------------------------------------------------------- */

static void kc_vec_mla_decode(const kvl_layout *l, const uint8_t *const *rows, int n_rows,
                              float *tile, int64_t ld)
{
    int64_t r = l->kv_lora_rank, d = l->rope_dim;
    for (int t = 0; t < n_rows; t++) {
        const uint8_t *row = rows[t];
        float *o = tile + t * ld;
        int64_t i;
        switch (l->dtype) {
        case KVL_DTYPE_F32:
            memcpy(o, row, (size_t)r * 4);
            memcpy(o + r, row + l->rope_offset, (size_t)d * 4);
            break;
        case KVL_DTYPE_BF16: {
            const uint16_t *h = (const uint16_t *)row; /* latent then rope, contiguous */
            for (i = 0; i + VL <= r + d; i += VL) {
                v_store(o + i, v_load_bf16(h + i));
            }
            for (; i < r + d; i++) {
                o[i] = s_load_bf16(h + i);
            }
            break;
        }
        case KVL_DTYPE_FP8: {
            const float *scales = (const float *)(row + l->scale_offset);
            const uint16_t *h = (const uint16_t *)(row + l->rope_offset);
            for (int64_t b0 = 0; b0 < r; b0 += KVL_FP8_TILE) {
                int64_t b1 = kc_min64(r, b0 + KVL_FP8_TILE);
                float s = scales[b0 / KVL_FP8_TILE] * 256.0f;
                V sv = v_set1(s);
                for (i = b0; i + VL <= b1; i += VL) {
                    v_store(o + i, v_mul(v_load_fp8(row + i), sv));
                }
                for (; i < b1; i++) {
                    o[i] = s_load_fp8(row + i) * s;
                }
            }
            for (i = 0; i + VL <= d; i += VL) {
                v_store(o + r + i, v_load_bf16(h + i));
            }
            for (; i < d; i++) {
                o[r + i] = s_load_bf16(h + i);
            }
            break;
        }
        default:
            break;
        }
        for (i = r + d; i < ld; i++) {
            o[i] = 0.0f;
        }
    }
}

KC_AI void kc_scores_tile(int mq, int nt, const float *q, int64_t ldq, const float *tile,
                          int64_t ldt, int64_t k, float *s, int64_t lds)
{
    V acc[KC_MR][KC_NR];
    _Pragma("GCC unroll 4") for (int i = 0; i < mq; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nt; j++) acc[i][j] = v_zero();
    for (int64_t kk = 0; kk < k; kk += VL) {
        V tv[KC_NR];
        _Pragma("GCC unroll 4") for (int j = 0; j < nt; j++) tv[j] = v_load(tile + j * ldt + kk);
        _Pragma("GCC unroll 4") for (int i = 0; i < mq; i++) {
            V qv = v_load(q + i * ldq + kk);
            _Pragma("GCC unroll 4") for (int j = 0; j < nt; j++) acc[i][j] =
                v_fma(qv, tv[j], acc[i][j]);
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < mq; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nt; j++) s[i * lds + j] =
            v_reduce_add(acc[i][j]);
}

static void kc_vec_mla_scores(const float *q, int64_t ldq, int64_t n_q, const float *tile,
                              int64_t ldt, int64_t n_t, int64_t k, float *s, int64_t lds)
{
    for (int64_t i = 0; i < n_q; i += KC_MR) {
        int mq = (int)kc_min64(KC_MR, n_q - i);
        for (int64_t t = 0; t < n_t; t += KC_NR) {
            int nt = (int)kc_min64(KC_NR, n_t - t);
            const float *qi = q + i * ldq, *tt = tile + t * ldt;
            float *si = s + i * lds + t;
            if (nt == KC_NR) {
                switch (mq) {
                case 4: kc_scores_tile(4, 4, qi, ldq, tt, ldt, k, si, lds); break;
                case 3: kc_scores_tile(3, 4, qi, ldq, tt, ldt, k, si, lds); break;
                case 2: kc_scores_tile(2, 4, qi, ldq, tt, ldt, k, si, lds); break;
                default: kc_scores_tile(1, 4, qi, ldq, tt, ldt, k, si, lds); break;
                }
            } else {
                for (int j = 0; j < nt; j++) {
                    switch (mq) {
                    case 4: kc_scores_tile(4, 1, qi, ldq, tt + j * ldt, ldt, k, si + j, lds); break;
                    case 3: kc_scores_tile(3, 1, qi, ldq, tt + j * ldt, ldt, k, si + j, lds); break;
                    case 2: kc_scores_tile(2, 1, qi, ldq, tt + j * ldt, ldt, k, si + j, lds); break;
                    default: kc_scores_tile(1, 1, qi, ldq, tt + j * ldt, ldt, k, si + j, lds); break;
                    }
                }
            }
        }
    }
}

/* o[0:mq, c:c+nv*VL] += p[0:mq, 0:n_t] . tile[0:n_t, c:c+nv*VL] */
KC_AI void kc_pv_tile(int mq, int nv, const float *p, int64_t ldp, const float *tile, int64_t ldt,
                      int64_t n_t, float *o, int64_t ldo)
{
    V acc[KC_MR][4];
    _Pragma("GCC unroll 4") for (int i = 0; i < mq; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nv; j++) acc[i][j] = v_load(o + i * ldo + j * VL);
    for (int64_t t = 0; t < n_t; t++) {
        V tv[4];
        _Pragma("GCC unroll 4") for (int j = 0; j < nv; j++) tv[j] = v_load(tile + t * ldt + j * VL);
        _Pragma("GCC unroll 4") for (int i = 0; i < mq; i++) {
            V pb = v_set1(p[i * ldp + t]);
            _Pragma("GCC unroll 4") for (int j = 0; j < nv; j++) acc[i][j] =
                v_fma(pb, tv[j], acc[i][j]);
        }
    }
    _Pragma("GCC unroll 4") for (int i = 0; i < mq; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nv; j++) v_store(o + i * ldo + j * VL, acc[i][j]);
}

static void kc_vec_mla_pv(const float *p, int64_t ldp, int64_t n_q, const float *tile,
                          int64_t ldt, int64_t n_t, int64_t r, float *o, int64_t ldo)
{
    for (int64_t i = 0; i < n_q; i += KC_MR) {
        int mq = (int)kc_min64(KC_MR, n_q - i);
        const float *pi = p + i * ldp;
        float *oi = o + i * ldo;
        int64_t c = 0;
        for (; c + 4 * VL <= r; c += 4 * VL) {
            switch (mq) {
            case 4: kc_pv_tile(4, 4, pi, ldp, tile + c, ldt, n_t, oi + c, ldo); break;
            case 3: kc_pv_tile(3, 4, pi, ldp, tile + c, ldt, n_t, oi + c, ldo); break;
            case 2: kc_pv_tile(2, 4, pi, ldp, tile + c, ldt, n_t, oi + c, ldo); break;
            default: kc_pv_tile(1, 4, pi, ldp, tile + c, ldt, n_t, oi + c, ldo); break;
            }
        }
        for (; c + VL <= r; c += VL) {
            switch (mq) {
            case 4: kc_pv_tile(4, 1, pi, ldp, tile + c, ldt, n_t, oi + c, ldo); break;
            case 3: kc_pv_tile(3, 1, pi, ldp, tile + c, ldt, n_t, oi + c, ldo); break;
            case 2: kc_pv_tile(2, 1, pi, ldp, tile + c, ldt, n_t, oi + c, ldo); break;
            default: kc_pv_tile(1, 1, pi, ldp, tile + c, ldt, n_t, oi + c, ldo); break;
            }
        }
        for (; c < r; c++) {
            for (int ii = 0; ii < mq; ii++) {
                float acc = oi[ii * ldo + c];
                for (int64_t t = 0; t < n_t; t++) {
                    acc += pi[ii * ldp + t] * tile[t * ldt + c];
                }
                oi[ii * ldo + c] = acc;
            }
        }
    }
}

static float kc_vec_exp_sum(float *s, int64_t n, float m)
{
    V acc = v_zero(), mv = v_set1(m);
    float sum = 0.0f;
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        V e = v_exp(v_add(v_load(s + i), v_mul(mv, v_set1(-1.0f))));
        v_store(s + i, e);
        acc = v_add(acc, e);
    }
    for (; i < n; i++) {
        s[i] = expf(s[i] - m);
        sum += s[i];
    }
    return sum + v_reduce_add(acc);
}

static void kc_vec_scale(float *x, int64_t n, float a)
{
    V av = v_set1(a);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        v_store(x + i, v_mul(v_load(x + i), av));
    }
    for (; i < n; i++) {
        x[i] *= a;
    }
}

/* ---- elementwise ---------------------------------------------------------------- */

static void kc_vec_rmsnorm(const float *x, const float *w, int64_t n, int64_t dim, float eps,
                           float *out)
{
    for (int64_t r = 0; r < n; r++) {
        const float *xr = x + r * dim;
        float *orow = out + r * dim;
        V a0 = v_zero(), a1 = v_zero();
        float ss = 0.0f, inv;
        int64_t i = 0;
        for (; i + 2 * VL <= dim; i += 2 * VL) {
            a0 = v_sqr_acc(a0, v_load(xr + i));
            a1 = v_sqr_acc(a1, v_load(xr + i + VL));
        }
        for (; i < dim; i++) {
            ss += xr[i] * xr[i];
        }
        ss += v_reduce_add(v_add(a0, a1));
        inv = 1.0f / sqrtf(ss / (float)dim + eps);
        V iv = v_set1(inv);
        for (i = 0; i + VL <= dim; i += VL) {
            v_store(orow + i, v_mul(v_mul(v_load(xr + i), iv), v_load(w + i)));
        }
        for (; i < dim; i++) {
            orow[i] = xr[i] * inv * w[i];
        }
    }
}

static void kc_vec_silu_mul(float *gate, const float *up, int64_t n)
{
    int64_t i = 0;
    V one = v_set1(1.0f), neg = v_set1(-1.0f);
    for (; i + VL <= n; i += VL) {
        V g = v_load(gate + i);
        V e = v_exp(v_mul(g, neg));
        v_store(gate + i, v_mul(v_mul(g, v_load(up + i)), v_set1(1.0f) / v_add(one, e)));
    }
    for (; i < n; i++) {
        gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
    }
}

static uint64_t kc_vec_read_sum(const void *p, size_t bytes)
{
#if KC_SIMD == 2
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const __m512i *v = p;
    for (size_t i = 0; i < bytes / 64; i += 4) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(v + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(v + i + 1));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(v + i + 2));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(v + i + 3));
    }
    return (uint64_t)_mm512_reduce_add_epi64(
        _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
#elif KC_SIMD == 1
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    const __m256i *v = p;
    for (size_t i = 0; i < bytes / 32; i += 4) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256(v + i));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256(v + i + 1));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256(v + i + 2));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256(v + i + 3));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    return (uint64_t)_mm256_extract_epi64(a0, 0) + (uint64_t)_mm256_extract_epi64(a0, 1) +
           (uint64_t)_mm256_extract_epi64(a0, 2) + (uint64_t)_mm256_extract_epi64(a0, 3);
#else
    const uint64_t *v = p;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i < bytes / 8; i += 4) {
        a0 += v[i];
        a1 += v[i + 1];
        a2 += v[i + 2];
        a3 += v[i + 3];
    }
    return a0 + a1 + a2 + a3;
#endif
}

static float kc_vec_fma_loop(int64_t iters)
{
    V a[KC_FMA_CHAINS], b = v_set1(0.999999f), c = v_set1(1e-6f), s = v_zero();
    for (int j = 0; j < KC_FMA_CHAINS; j++) {
        a[j] = v_set1(1.0f + 0.01f * (float)j);
    }
    for (int64_t i = 0; i < iters; i++) {
        _Pragma("GCC unroll 12") for (int j = 0; j < KC_FMA_CHAINS; j++) a[j] = v_fma(a[j], b, c);
    }
    for (int j = 0; j < KC_FMA_CHAINS; j++) {
        s = v_add(s, a[j]);
    }
    return v_reduce_add(s);
}

#define KC_VEC_OPS_ENTRIES(MATMUL_ROWS)             \
    .matmul_rows = MATMUL_ROWS,                     \
    .matmul_t_cols = kc_vec_matmul_t_cols,          \
    .mla_decode = kc_vec_mla_decode,                \
    .mla_scores = kc_vec_mla_scores,                \
    .mla_pv = kc_vec_mla_pv,                        \
    .exp_sum = kc_vec_exp_sum,                      \
    .scale = kc_vec_scale,                          \
    .rmsnorm = kc_vec_rmsnorm,                      \
    .silu_mul = kc_vec_silu_mul,                    \
    .read_sum = kc_vec_read_sum,                    \
    .fma_loop = kc_vec_fma_loop,                    \
    .lanes = VL
