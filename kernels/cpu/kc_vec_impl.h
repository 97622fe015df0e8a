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
 * stride ldw elements), x at row 0 (stride ldx), y at (0, 0) (stride ldy).
 * PF > 0: as each cache line of a W row is reached, the line PF bytes
 * further on is asked into L2. */
#define KC_DEFINE_MM_TILE(NAME, ET, LOADV, LOADS, PF)                                        \
    KC_AI void NAME(int mr, int nr, const ET *w, int64_t ldw, const float *x, int64_t ldx,    \
                    int64_t k, float *y, int64_t ldy)                                         \
    {                                                                                         \
        V acc[KC_MR][KC_NR];                                                                  \
        int64_t kk = 0;                                                                       \
        _Pragma("GCC unroll 4") for (int i = 0; i < mr; i++)                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) acc[i][j] = v_zero();        \
        for (; kk + VL <= k; kk += VL) {                                                      \
            V wv[KC_NR];                                                                      \
            if (PF > 0 && (kk * (int64_t)sizeof(ET)) % 64 == 0) {                             \
                _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)                          \
                    __builtin_prefetch(w + j * ldw + kk + PF / (int64_t)sizeof(ET), 0, 2);    \
            }                                                                                 \
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

KC_DEFINE_MM_TILE(kc_mm_tile_f32, float, v_load, s_load_f32, 0)
KC_DEFINE_MM_TILE(kc_mm_tile_bf16, uint16_t, v_load_bf16, s_load_bf16, 0)
KC_DEFINE_MM_TILE(kc_mm_tile_f16, uint16_t, v_load_f16, s_load_f16, 0)
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
KC_DEFINE_MM_TILE(kc_mm_tile_fp8, uint8_t, kc_fp8_load_f32bits, s_load_fp8, 0)
#else
KC_DEFINE_MM_TILE(kc_mm_tile_fp8, uint8_t, v_load_fp8, s_load_fp8, 0)
#endif
/* fp8 codes decoded raw (e4m3 * 2^-120, no float op) against x scaled by
 * another 2^112: the GEMV's cheapest decode, used where that cannot overflow.
 * Decoding keeps a core busy for about half the time it takes to stream the
 * rows from DRAM, and the hardware prefetcher falls behind in those bursts:
 * each row's line KC_MM_FP8_PF bytes ahead is asked into L2 (GEMV 16384 x
 * 8192, Zen 4, 2 threads: 0.72-0.75 of a read probe without, 0.80 with). */
#define KC_MM_FP8_PF 2048
KC_DEFINE_MM_TILE(kc_mm_tile_fp8raw, uint8_t, v_load_fp8_raw, s_load_fp8_raw, KC_MM_FP8_PF)

/* Multiplies xs[0:n] by 2^112 and returns 1 when every |xs| < 2^14 (so the
 * raw fp8 decode can be used); else leaves xs alone and returns 0. */
static int kc_fp8_x_to_raw(float *xs, int64_t n)
{
    V mx = v_zero();
    float m = 0.0f;
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        V v = v_load(xs + i);
        mx = v_max(mx, v_max(v, v_mul(v, v_set1(-1.0f))));
    }
    for (; i < n; i++) {
        m = fabsf(xs[i]) > m ? fabsf(xs[i]) : m;
    }
    m = v_reduce_max(mx) > m ? v_reduce_max(mx) : m;
    if (!(m < 0x1p14f)) {
        return 0;
    }
    for (i = 0; i + VL <= n; i += VL) {
        v_store(xs + i, v_mul(v_load(xs + i), v_set1(0x1p112f)));
    }
    for (; i < n; i++) {
        xs[i] *= 0x1p112f;
    }
    return 1;
}

/* A TILE call, or its raw-fp8 twin TILE2 when raw is set. */
#define KC_MM_CALL(TILE, TILE2, raw, ...) \
    do {                                 \
        if (raw) {                       \
            TILE2(__VA_ARGS__);          \
        } else {                         \
            TILE(__VA_ARGS__);           \
        }                                \
    } while (0)

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

#define KC_DEFINE_MM_ROWS(NAME, TILE, TILE2, ET)                                              \
    static void NAME(const kc_matrix *w, const float *x, int64_t n, float *y, int64_t ldy,    \
                     int64_t r_begin, int64_t r_end)                                          \
    {                                                                                         \
        int64_t k = w->cols;                                                                  \
        int64_t mb = (256 * 1024) / (k * 4 + 1);                                              \
        mb = mb < KC_MR ? KC_MR : (mb / KC_MR) * KC_MR;                                       \
        for (int64_t s0 = r_begin; s0 < r_end;) {                                             \
            int64_t s1 = r_end;                                                               \
            const float *xs = x;                                                              \
            int raw = 0;                                                                      \
            if (w->dtype == KC_DTYPE_FP8_E4M3) {                                              \
                int64_t blk_end = ((w->row0 + s0) / KC_FP8_BLOCK + 1) * KC_FP8_BLOCK - w->row0; \
                float *buf = kc_scratch_get(0, (size_t)(n * k) * sizeof(float));              \
                s1 = kc_min64(s1, blk_end);                                                   \
                if (buf == NULL) {                                                            \
                    return; /* out of memory: nothing sane left to do */                      \
                }                                                                             \
                kc_fp8_scale_x(w, s0, x, n, buf);                                             \
                raw = kc_fp8_x_to_raw(buf, n * k);                                            \
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
                            case 4:                                                           \
                                KC_MM_CALL(TILE, TILE2, raw, 4, KC_NR, wr, k, xi, k, k, yi, ldy); \
                                break;                                                        \
                            case 3:                                                           \
                                KC_MM_CALL(TILE, TILE2, raw, 3, KC_NR, wr, k, xi, k, k, yi, ldy); \
                                break;                                                        \
                            case 2:                                                           \
                                KC_MM_CALL(TILE, TILE2, raw, 2, KC_NR, wr, k, xi, k, k, yi, ldy); \
                                break;                                                        \
                            default:                                                          \
                                KC_MM_CALL(TILE, TILE2, raw, 1, KC_NR, wr, k, xi, k, k, yi, ldy); \
                                break;                                                        \
                            }                                                                 \
                        } else {                                                              \
                            for (int j = 0; j < nr; j++) {                                    \
                                switch (mr) {                                                 \
                                case 4:                                                       \
                                    KC_MM_CALL(TILE, TILE2, raw, 4, 1, wr + j * k, k, xi, k, k, \
                                               yi + j, ldy);                                  \
                                    break;                                                    \
                                case 3:                                                       \
                                    KC_MM_CALL(TILE, TILE2, raw, 3, 1, wr + j * k, k, xi, k, k, \
                                               yi + j, ldy);                                  \
                                    break;                                                    \
                                case 2:                                                       \
                                    KC_MM_CALL(TILE, TILE2, raw, 2, 1, wr + j * k, k, xi, k, k, \
                                               yi + j, ldy);                                  \
                                    break;                                                    \
                                default:                                                      \
                                    KC_MM_CALL(TILE, TILE2, raw, 1, 1, wr + j * k, k, xi, k, k, \
                                               yi + j, ldy);                                  \
                                    break;                                                    \
                                }                                                             \
                            }                                                                 \
                        }                                                                     \
                    }                                                                         \
                }                                                                             \
            }                                                                                 \
            s0 = s1;                                                                          \
        }                                                                                     \
    }

KC_DEFINE_MM_ROWS(kc_mm_rows_f32, kc_mm_tile_f32, kc_mm_tile_f32, float)
KC_DEFINE_MM_ROWS(kc_mm_rows_bf16, kc_mm_tile_bf16, kc_mm_tile_bf16, uint16_t)
KC_DEFINE_MM_ROWS(kc_mm_rows_f16, kc_mm_tile_f16, kc_mm_tile_f16, uint16_t)
KC_DEFINE_MM_ROWS(kc_mm_rows_fp8, kc_mm_tile_fp8, kc_mm_tile_fp8raw, uint8_t)

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

/* ---- MLA fused few-heads path --------------------------------------------------------
 *
 * With few query vectors per cache row (decode with 1..4 heads) attention is
 * memory-bound: each row is used for a handful of dot products. This path
 * never writes a decoded tile: rows are loaded 2*VL values at a time and
 * widened in registers (bf16: shift/mask into even/odd lanes; fp8: raw codes
 * as e4m3 * 2^-120, with 2^120 and the per-128 scale folded into the query
 * and score and into the softmax weights), KC_MLA_FEW_ROWS rows per block:
 * scores of the block (several rows in flight), one online-softmax step,
 * then O += P.V re-reading the block's rows from L1. Queries and O are kept
 * in the x2 loads' order (pair order for bf16) and un-permuted once at the
 * end. */

#define KC_PW (2 * VL) /* elements per x2 load */

KC_AI void v_load_f32x2(const float *p, V *lo, V *hi)
{
    *lo = v_load(p);
    *hi = v_load(p + VL);
}

/* Rows per score step (loads of q shared by nr rows) and column pairs per
 * P.V pass for nq query vectors: 8..16 independent accumulators. */
#define KC_FEW_NR(nq) ((nq) == 1 ? 4 : (VL >= 16 ? 2 : 1))
#define KC_FEW_NC(nq) ((nq) == 1 ? 4 : ((nq) == 2 ? 2 : 1))

/* x[0:n] to pair order in place: full KC_PW blocks evens then odds, tail kept. */
static void kc_few_to_pairs(float *x, int64_t n)
{
    float tmp[KC_PW];
    for (int64_t c = 0; c + KC_PW <= n; c += KC_PW) {
        for (int k = 0; k < VL; k++) {
            tmp[k] = x[c + 2 * k];
            tmp[VL + k] = x[c + 2 * k + 1];
        }
        memcpy(x + c, tmp, sizeof(tmp));
    }
}

/* y[0:n] = x[0:n] back from pair order. */
static void kc_few_from_pairs(const float *x, int64_t n, float *y)
{
    int64_t c = 0;
    for (; c + KC_PW <= n; c += KC_PW) {
        for (int k = 0; k < VL; k++) {
            y[c + 2 * k] = x[c + k];
            y[c + 2 * k + 1] = x[c + VL + k];
        }
    }
    for (; c < n; c++) {
        y[c] = x[c];
    }
}

/* s[i*lds + j] = qp[i, :K] . row_j[:K] for rows whose K values are one
 * contiguous run (f32 and bf16 layouts: latent then rope). */
#define KC_DEFINE_FEW_SCORES(NAME, ET, LOADX2, LOADS)                                        \
    KC_AI void NAME(int nq, int nr, const float *qp, int64_t ldq, const uint8_t *row0,        \
                    int64_t rb, int64_t K, float *s, int64_t lds)                             \
    {                                                                                         \
        V acc[KC_MLA_FEW_QV][4][2];                                                           \
        int64_t kk = 0;                                                                       \
        _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)                              \
        {                                                                                     \
            acc[i][j][0] = v_zero();                                                          \
            acc[i][j][1] = v_zero();                                                          \
        }                                                                                     \
        for (; kk + KC_PW <= K; kk += KC_PW) {                                                \
            V lo[4], hi[4];                                                                   \
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)                              \
                LOADX2((const ET *)(row0 + j * rb) + kk, &lo[j], &hi[j]);                     \
            _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)                              \
            {                                                                                 \
                V q0 = v_load(qp + i * ldq + kk), q1 = v_load(qp + i * ldq + kk + VL);        \
                _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)                          \
                {                                                                             \
                    acc[i][j][0] = v_fma(q0, lo[j], acc[i][j][0]);                            \
                    acc[i][j][1] = v_fma(q1, hi[j], acc[i][j][1]);                            \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)                              \
        {                                                                                     \
            float sum = v_reduce_add(v_add(acc[i][j][0], acc[i][j][1]));                      \
            for (int64_t t = kk; t < K; t++) {                                                \
                sum += qp[i * ldq + t] * LOADS((const ET *)(row0 + j * rb) + t);              \
            }                                                                                 \
            s[i * lds + j] = sum;                                                             \
        }                                                                                     \
    }

KC_DEFINE_FEW_SCORES(kc_few_scores_f32, float, v_load_f32x2, s_load_f32)
KC_DEFINE_FEW_SCORES(kc_few_scores_bf16, uint16_t, v_load_bf16x2, s_load_bf16)

/* The fp8 scale of 128-value block b of a row (as stored: value = e4m3 * scale). */
KC_AI float kc_few_fp8_scale(const uint8_t *row, const kvl_layout *l, int64_t b)
{
    float sc;
    memcpy(&sc, row + l->scale_offset + 4 * b, 4);
    return sc;
}

/* fp8 rows: latent codes decoded raw (e4m3 * 2^-120) against the query's
 * latent part, which the caller scaled by 2^e_i: each 128 block's dot is
 * folded into the score with scale * qf[i], qf[i] = 2^(120 - e_i); then the
 * bf16 rope (pair order, like the query's rope part). */
KC_AI void kc_few_scores_fp8(int nq, int nr, const float *qp, int64_t ldq, const float *qf,
                             const uint8_t *row0, int64_t rb, const kvl_layout *l, float *s,
                             int64_t lds)
{
    int64_t R = l->kv_lora_rank, D = l->rope_dim;
    V tot[KC_MLA_FEW_QV][4];
    float tail[KC_MLA_FEW_QV][4];
    int64_t kk;
    _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
    {
        tot[i][j] = v_zero();
        tail[i][j] = 0.0f;
    }
    for (int64_t b0 = 0; b0 < R; b0 += KVL_FP8_TILE) {
        int64_t b1 = kc_min64(R, b0 + KVL_FP8_TILE);
        V acc[KC_MLA_FEW_QV][4];
        float sc[4];
        _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) acc[i][j] = v_zero();
        for (kk = b0; kk + KC_PW <= b1; kk += KC_PW) {
            V lo[4], hi[4];
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
                v_load_fp8x2_raw(row0 + j * rb + kk, &lo[j], &hi[j]);
            _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++) {
                V q0 = v_load(qp + i * ldq + kk), q1 = v_load(qp + i * ldq + kk + VL);
                _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) {
                    acc[i][j] = v_fma(q0, lo[j], acc[i][j]);
                    acc[i][j] = v_fma(q1, hi[j], acc[i][j]);
                }
            }
        }
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
            sc[j] = kc_few_fp8_scale(row0 + j * rb, l, b0 / KVL_FP8_TILE);
        _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
        {
            float bt = 0.0f;
            tot[i][j] = v_fma(acc[i][j], v_set1(sc[j] * qf[i]), tot[i][j]);
            for (int64_t t = kk; t < b1; t++) {
                bt += qp[i * ldq + t] * (mls_fp8_e4m3_table()[row0[j * rb + t]] * 0x1p-120f);
            }
            tail[i][j] += bt * (sc[j] * qf[i]);
        }
    }
    for (kk = 0; kk + KC_PW <= D; kk += KC_PW) {
        V lo[4], hi[4];
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
            v_load_bf16x2((const uint16_t *)(row0 + j * rb + l->rope_offset) + kk, &lo[j], &hi[j]);
        _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++) {
            V q0 = v_load(qp + i * ldq + R + kk), q1 = v_load(qp + i * ldq + R + kk + VL);
            _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++) {
                tot[i][j] = v_fma(q0, lo[j], tot[i][j]);
                tot[i][j] = v_fma(q1, hi[j], tot[i][j]);
            }
        }
    }
    _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)
        _Pragma("GCC unroll 4") for (int j = 0; j < nr; j++)
    {
        float sum = v_reduce_add(tot[i][j]) + tail[i][j];
        for (int64_t t = kk; t < D; t++) {
            sum += qp[i * ldq + R + t] *
                   s_load_bf16((const uint16_t *)(row0 + j * rb + l->rope_offset) + t);
        }
        s[i * lds + j] = sum;
    }
}

/* op[i, c : c + nc*KC_PW] = alpha[i] * op[...] + sum_t p[i*ldp + t] * row_t[c : ...]
 * for t < nt (rows at row0 + t*rb; lat = byte offset of the latent values). */
#define KC_DEFINE_FEW_PV(NAME, ET, LOADX2)                                                   \
    KC_AI void NAME(int nq, int nc, const float *p, int64_t ldp, const uint8_t *row0,         \
                    int64_t rb, int nt, int64_t c, const float *alpha, float *op, int64_t ldo) \
    {                                                                                         \
        V acc[KC_MLA_FEW_QV][4][2];                                                           \
        _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)                                  \
        {                                                                                     \
            V a = v_set1(alpha[i]);                                                           \
            _Pragma("GCC unroll 4") for (int k = 0; k < nc; k++)                              \
            {                                                                                 \
                acc[i][k][0] = v_mul(v_load(op + i * ldo + c + k * KC_PW), a);                \
                acc[i][k][1] = v_mul(v_load(op + i * ldo + c + k * KC_PW + VL), a);           \
            }                                                                                 \
        }                                                                                     \
        for (int t = 0; t < nt; t++) {                                                        \
            const ET *r = (const ET *)(row0 + t * rb) + c;                                    \
            V lo[4], hi[4];                                                                   \
            _Pragma("GCC unroll 4") for (int k = 0; k < nc; k++)                              \
                LOADX2(r + k * KC_PW, &lo[k], &hi[k]);                                        \
            _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)                              \
            {                                                                                 \
                V pb = v_set1(p[i * ldp + t]);                                                \
                _Pragma("GCC unroll 4") for (int k = 0; k < nc; k++)                          \
                {                                                                             \
                    acc[i][k][0] = v_fma(pb, lo[k], acc[i][k][0]);                            \
                    acc[i][k][1] = v_fma(pb, hi[k], acc[i][k][1]);                            \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        _Pragma("GCC unroll 8") for (int i = 0; i < nq; i++)                                  \
            _Pragma("GCC unroll 4") for (int k = 0; k < nc; k++)                              \
        {                                                                                     \
            v_store(op + i * ldo + c + k * KC_PW, acc[i][k][0]);                              \
            v_store(op + i * ldo + c + k * KC_PW + VL, acc[i][k][1]);                         \
        }                                                                                     \
    }

KC_DEFINE_FEW_PV(kc_few_pv_f32, float, v_load_f32x2)
KC_DEFINE_FEW_PV(kc_few_pv_bf16, uint16_t, v_load_bf16x2)
KC_DEFINE_FEW_PV(kc_few_pv_fp8, uint8_t, v_load_fp8x2)
KC_DEFINE_FEW_PV(kc_few_pv_fp8raw, uint8_t, v_load_fp8x2_raw)

/* The block KC_MLA_FEW_PF rows ahead of row t0 (a block never straddles a
 * page, so it is one contiguous run), prefetched into L2 evenly over the
 * block's work: half a row's worth per row scored, the rest spread over P.V.
 * The hardware prefetcher alone restarts at every page, and one burst per
 * block stalls on the miss buffers. */
typedef struct {
    const uint8_t *p;
    int64_t bytes, off;
} kc_few_pf;

KC_AI kc_few_pf kc_few_pf_block(const kc_mla_few_args *a, int64_t t0)
{
    const kvl_layout *l = a->layout;
    int64_t tp = t0 + KC_MLA_FEW_PF;
    kc_few_pf pf = {NULL, 0, 0};
    if (tp < a->r1) {
        pf.p = kvl_row_cptr(l, a->kv_base, a->page_table, tp);
        pf.bytes = kc_min64(KC_MLA_FEW_ROWS, a->r1 - tp) * l->row_bytes;
    }
    return pf;
}

/* Prefetches the next `bytes` of the block (the rest, when it ends sooner). */
KC_AI void kc_few_pf_step(kc_few_pf *pf, int64_t bytes)
{
    for (int64_t e = kc_min64(pf->bytes, pf->off + bytes); pf->off < e; pf->off += 64) {
        __builtin_prefetch(pf->p + pf->off, 0, 2);
    }
}

/* One online-softmax step over a block of nt rows starting at row t0:
 * S[i, :nt] (stride lds) becomes e^(s - m_new) (0 past vector i's last
 * visible row), m and lsum are updated and alpha[i] = e^(m_old - m_new)
 * is the factor the vector's output must be rescaled by. */
static void kc_few_softmax(int nq, int nt, int64_t t0, const int64_t *last, float *S, int64_t lds,
                           float *m, float *lsum, float *alpha)
{
    const int64_t T = lds;
    for (int i = 0; i < nq; i++) {
        int64_t nv = kc_min64(nt, last[i] - t0 + 1);
        float *si = S + i * T, mx = -INFINITY, mnew, sum;
        if (nv <= 0) {
            memset(si, 0, (size_t)T * 4);
            alpha[i] = 1.0f;
            continue;
        }
        for (int64_t u = 0; u < nv; u++) {
            mx = si[u] > mx ? si[u] : mx;
        }
        mnew = mx > m[i] ? mx : m[i];
        alpha[i] = m[i] == -INFINITY ? 0.0f : expf(m[i] - mnew);
        sum = kc_vec_exp_sum(si, nv, mnew);
        for (int64_t u = nv; u < T; u++) {
            si[u] = 0.0f;
        }
        lsum[i] = lsum[i] * alpha[i] + sum;
        m[i] = mnew;
    }
}

/* One unit of the fused path for nq query vectors (a constant after inlining)
 * over rows of layout dtype dt. */
KC_AI void kc_few_run(const kc_mla_few_args *a, const int nq, const kvl_dtype dt)
{
    const kvl_layout *l = a->layout;
    const int T = KC_MLA_FEW_ROWS;
    int64_t R = l->kv_lora_rank, D = l->rope_dim, K = R + D, rb = l->row_bytes;
    int64_t ldq = (K + 15) & ~(int64_t)15, ldo = (R + 15) & ~(int64_t)15;
    int64_t nb = (R + KVL_FP8_TILE - 1) / KVL_FP8_TILE;
    int64_t rfull = R / KC_PW * KC_PW;
    float *qp = a->scratch, *op = qp + nq * ldq, *S = op + nq * ldo, *ps = S + nq * T;
    float m[KC_MLA_FEW_QV], lsum[KC_MLA_FEW_QV], alpha[KC_MLA_FEW_QV], qf[KC_MLA_FEW_QV];

    for (int i = 0; i < nq; i++) {
        float *q = qp + i * ldq;
        for (int64_t c = 0; c < R; c++) {
            q[c] = a->q_latent[i * R + c] * a->softmax_scale;
        }
        for (int64_t c = 0; c < D; c++) {
            q[R + c] = a->q_rope[i * D + c] * a->softmax_scale;
        }
        if (dt == KVL_DTYPE_BF16) {
            kc_few_to_pairs(q, K);
        } else if (dt == KVL_DTYPE_FP8) {
            /* latent part times 2^e, e <= 112 keeping it below 2^100, so
             * that raw codes (e4m3 * 2^-120) give products in normal range */
            float mx = 0.0f, ldexp2;
            int x = 0, e;
            for (int64_t c = 0; c < R; c++) {
                mx = fabsf(q[c]) > mx ? fabsf(q[c]) : mx;
            }
            (void)frexpf(mx, &x);
            e = mx > 0.0f && 100 - x < 112 ? 100 - x : 112;
            e = e < 0 ? 0 : e;
            ldexp2 = ldexpf(1.0f, e); /* exact scaling by a power of two */
            for (int64_t c = 0; c < R; c++) {
                q[c] *= ldexp2;
            }
            qf[i] = ldexpf(1.0f, 120 - e);
            kc_few_to_pairs(q + R, D);
        }
        memset(op + i * ldo, 0, (size_t)ldo * 4);
        m[i] = -INFINITY;
        lsum[i] = 0.0f;
    }

    for (int64_t t0 = a->r0; t0 < a->r1; t0 += T) {
        int nt = (int)kc_min64(T, a->r1 - t0);
        const uint8_t *row0 = kvl_row_cptr(l, a->kv_base, a->page_table, t0);
        int nr = KC_FEW_NR(nq), nc = KC_FEW_NC(nq), t = 0, raw = 0;
        kc_few_pf pf = kc_few_pf_block(a, t0);

        /* scores S[i, t] */
        for (; t + nr <= nt; t += nr) {
            kc_few_pf_step(&pf, nr * rb / 2);
            if (dt == KVL_DTYPE_FP8) {
                kc_few_scores_fp8(nq, nr, qp, ldq, qf, row0 + t * rb, rb, l, S + t, T);
            } else if (dt == KVL_DTYPE_BF16) {
                kc_few_scores_bf16(nq, nr, qp, ldq, row0 + t * rb, rb, K, S + t, T);
            } else {
                kc_few_scores_f32(nq, nr, qp, ldq, row0 + t * rb, rb, K, S + t, T);
            }
        }
        for (; t < nt; t++) {
            if (dt == KVL_DTYPE_FP8) {
                kc_few_scores_fp8(nq, 1, qp, ldq, qf, row0 + t * rb, rb, l, S + t, T);
            } else if (dt == KVL_DTYPE_BF16) {
                kc_few_scores_bf16(nq, 1, qp, ldq, row0 + t * rb, rb, K, S + t, T);
            } else {
                kc_few_scores_f32(nq, 1, qp, ldq, row0 + t * rb, rb, K, S + t, T);
            }
        }

        kc_few_softmax(nq, nt, t0, a->last, S, T, m, lsum, alpha);

        /* O += P . V over the latent columns */
        if (dt == KVL_DTYPE_FP8) {
            /* ps[b, i, t] = P[i, t] * scale_t[b] * 2^120 for raw codes; with
             * a scale of 2^7 or more that could overflow: then 2^8 and the
             * f16 decode (e4m3 * 2^-8) for this block */
            float k = 0x1p120f;
            raw = 1;
            for (int u = 0; u < nt && raw; u++) {
                for (int64_t b = 0; b < nb; b++) {
                    raw &= fabsf(kc_few_fp8_scale(row0 + u * rb, l, b)) < 128.0f;
                }
            }
            k = raw ? k : 256.0f;
            for (int u = 0; u < nt; u++) {
                for (int64_t b = 0; b < nb; b++) {
                    float sc = kc_few_fp8_scale(row0 + u * rb, l, b) * k;
                    for (int i = 0; i < nq; i++) {
                        ps[(b * nq + i) * T + u] = S[i * T + u] * sc;
                    }
                }
            }
        }
        {
            int64_t c = 0;
            for (; c + nc * KC_PW <= rfull; c += nc * KC_PW) {
                kc_few_pf_step(&pf, (pf.bytes - pf.off) * nc * KC_PW / (rfull - c) + 64);
                if (dt == KVL_DTYPE_FP8) {
                    const float *pb = ps + (c / KVL_FP8_TILE) * nq * T;
                    if (raw) {
                        kc_few_pv_fp8raw(nq, nc, pb, T, row0, rb, nt, c, alpha, op, ldo);
                    } else {
                        kc_few_pv_fp8(nq, nc, pb, T, row0, rb, nt, c, alpha, op, ldo);
                    }
                } else if (dt == KVL_DTYPE_BF16) {
                    kc_few_pv_bf16(nq, nc, S, T, row0, rb, nt, c, alpha, op, ldo);
                } else {
                    kc_few_pv_f32(nq, nc, S, T, row0, rb, nt, c, alpha, op, ldo);
                }
            }
            for (; c < rfull; c += KC_PW) {
                if (dt == KVL_DTYPE_FP8) {
                    const float *pb = ps + (c / KVL_FP8_TILE) * nq * T;
                    if (raw) {
                        kc_few_pv_fp8raw(nq, 1, pb, T, row0, rb, nt, c, alpha, op, ldo);
                    } else {
                        kc_few_pv_fp8(nq, 1, pb, T, row0, rb, nt, c, alpha, op, ldo);
                    }
                } else if (dt == KVL_DTYPE_BF16) {
                    kc_few_pv_bf16(nq, 1, S, T, row0, rb, nt, c, alpha, op, ldo);
                } else {
                    kc_few_pv_f32(nq, 1, S, T, row0, rb, nt, c, alpha, op, ldo);
                }
            }
            kc_few_pf_step(&pf, pf.bytes);
            for (; c < R; c++) {
                for (int i = 0; i < nq; i++) {
                    float acc = op[i * ldo + c] * alpha[i];
                    for (int u = 0; u < nt; u++) {
                        const uint8_t *row = row0 + u * rb;
                        float v;
                        if (dt == KVL_DTYPE_FP8) {
                            v = s_load_fp8(row + c) * 256.0f *
                                kc_few_fp8_scale(row, l, c / KVL_FP8_TILE);
                        } else if (dt == KVL_DTYPE_BF16) {
                            v = s_load_bf16((const uint16_t *)row + c);
                        } else {
                            v = s_load_f32((const float *)row + c);
                        }
                        acc += S[i * T + u] * v;
                    }
                    op[i * ldo + c] = acc;
                }
            }
        }
    }

    for (int i = 0; i < nq; i++) {
        if (dt == KVL_DTYPE_BF16) {
            kc_few_from_pairs(op + i * ldo, R, a->o + i * R);
        } else {
            memcpy(a->o + i * R, op + i * ldo, (size_t)R * 4);
        }
        a->m[i] = m[i];
        a->l[i] = lsum[i];
    }
}

#define KC_FEW_CASES(DT)                                   \
    switch (a->n_qv) {                                     \
    case 1: kc_few_run(a, 1, DT); break;                   \
    case 2: kc_few_run(a, 2, DT); break;                   \
    case 3: kc_few_run(a, 3, DT); break;                   \
    default: kc_few_run(a, 4, DT); break;                  \
    }
_Static_assert(KC_MLA_FEW_QV == 4, "kc_vec_mla_few instantiates 1..4 query vectors");

static void kc_vec_mla_few(const kc_mla_few_args *a)
{
    switch (a->layout->dtype) {
    case KVL_DTYPE_BF16: KC_FEW_CASES(KVL_DTYPE_BF16); break;
    case KVL_DTYPE_FP8: KC_FEW_CASES(KVL_DTYPE_FP8); break;
    default: KC_FEW_CASES(KVL_DTYPE_F32); break;
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

/* pf (NULL: none) is prefetched into L2 line by line as p is read. */
static uint64_t kc_vec_read_sum(const void *p, size_t bytes, const void *pf)
{
    const char *q = pf;
#if KC_SIMD == 2
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const __m512i *v = p;
    for (size_t i = 0; i < bytes / 64; i += 4) {
        if (q != NULL) {
            for (int k = 0; k < 4; k++) {
                __builtin_prefetch(q + (i + (size_t)k) * 64, 0, 2);
            }
        }
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(v + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(v + i + 1));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(v + i + 2));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(v + i + 3));
    }
    {
        /* summed as unsigned: the checksum of arbitrary bytes wraps */
        uint64_t lanes[8], sum = 0;
        _mm512_storeu_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a0, a1),
                                                     _mm512_add_epi64(a2, a3)));
        for (int k = 0; k < 8; k++) {
            sum += lanes[k];
        }
        return sum;
    }
#elif KC_SIMD == 1
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    const __m256i *v = p;
    for (size_t i = 0; i < bytes / 32; i += 4) {
        if (q != NULL) {
            __builtin_prefetch(q + i * 32, 0, 2);
            __builtin_prefetch(q + i * 32 + 64, 0, 2);
        }
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
        if (q != NULL && i % 8 == 0) {
            __builtin_prefetch(q + i * 8, 0, 2);
        }
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

#define KC_VEC_OPS_ENTRIES(MATMUL_ROWS, MLA_FEW, FEW_AUTO_FP8) \
    .matmul_rows = MATMUL_ROWS,                     \
    .matmul_t_cols = kc_vec_matmul_t_cols,          \
    .mla_decode = kc_vec_mla_decode,                \
    .mla_scores = kc_vec_mla_scores,                \
    .mla_pv = kc_vec_mla_pv,                        \
    .mla_few = MLA_FEW,                             \
    .exp_sum = kc_vec_exp_sum,                      \
    .scale = kc_vec_scale,                          \
    .rmsnorm = kc_vec_rmsnorm,                      \
    .silu_mul = kc_vec_silu_mul,                    \
    .read_sum = kc_vec_read_sum,                    \
    .fma_loop = kc_vec_fma_loop,                    \
    .lanes = VL,                                    \
    .mla_few_auto_fp8 = FEW_AUTO_FP8
