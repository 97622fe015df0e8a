/*
 * kc_internal.h - what the pieces of kernels/cpu share and nobody else sees.
 *
 * Each ISA level provides one kc_ops table (kc_vec_scalar.c, kc_vec_avx2.c,
 * kc_vec_avx512.c build the same template kc_vec_impl.h with different vector
 * widths; kc_gemm_avx512.c adds the vdpbf16ps matmul). The drivers
 * (kc_matmul.c, kc_mla.c, kc_elem.c) split work over the pool and call the
 * table of kc_isa_active().
 */
#ifndef KC_INTERNAL_H
#define KC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kc.h"

/* Rows of the MLA tile a unit decodes at a time (a page holds 64). */
#define KC_MLA_BLOCK 32

/* The fused few-heads MLA path (kc_ops.mla_few): at most KC_MLA_FEW_QV query
 * vectors (heads x queries) per unit. kc_mla_attention takes it up to
 * KC_MLA_FEW_AUTO_BF16 / _FP8 of them; beyond that, decoding a tile once and
 * reusing it for every vector wins (measured on Zen 4). Rows are consumed
 * KC_MLA_FEW_ROWS at a time (a divisor of a page), each block's rows
 * prefetched into L2 KC_MLA_FEW_PF rows ahead, spread over the block's
 * work (Zen 4, 1 head, bf16 KV, 2 threads: a burst of L1 prefetches per
 * block ~0.6 of a read of the same pages; L2 prefetches spread over the
 * scores 32..256 rows ahead ~0.75, over scores and P.V ~0.85). */
#define KC_MLA_FEW_QV        4
#define KC_MLA_FEW_AUTO_BF16 4 /* f32 and bf16 rows */
#define KC_MLA_FEW_AUTO_FP8  2 /* fp8 rows widened to f32 (the AVX512-BF16 table path: 4) */
#define KC_MLA_FEW_ROWS      16
#define KC_MLA_FEW_PF        128

/* Tests: -1 (default) chooses the MLA path by the rule above; 0 never takes
 * the fused path; 1..KC_MLA_FEW_QV takes it up to that many query vectors. */
extern int kc_mla_few_force;

/* Floats of scratch mla_few needs (64-byte aligned start):
 * permuted queries, permuted output, scores, fp8 scaled probabilities, a
 * block of rows decoded to bf16 (the AVX512-BF16 fp8 path). */
#define KC_MLA_FEW_SCRATCH(nqv, R, D) \
    ((size_t)(nqv) * ((R) + (D) + 64) + (size_t)(nqv) * ((R) + 64) + \
     (size_t)(nqv) * KC_MLA_FEW_ROWS * (2 + ((R) + 127) / 128) + \
     (size_t)KC_MLA_FEW_ROWS * ((R) + 64) / 2 + 64)

/* One unit of the fused path: rows [r0, r1) of one sequence against n_qv
 * consecutive query vectors, with an online softmax (m, l) whose unnormalised
 * output o the caller normalises or combines. */
typedef struct {
    const kvl_layout *layout;
    const uint8_t *kv_base;      /* layer pool; page p at kv_base + p*page_bytes */
    const uint32_t *page_table;  /* the sequence's pages */
    int64_t r0, r1;              /* cache rows; r0 % KVL_PAGE_TOKENS == 0 */
    int n_qv;                    /* 1..KC_MLA_FEW_QV */
    const float *q_latent;       /* [n_qv, R] */
    const float *q_rope;         /* [n_qv, D] */
    float softmax_scale;
    const int64_t *last;         /* [n_qv] last row each vector may see (>= r0 for one) */
    float *scratch;              /* KC_MLA_FEW_SCRATCH(n_qv, R, D) floats, 64-byte aligned */
    float *o;                    /* out [n_qv, R] (row stride R): sum_t e^(s_t - m) latent_t */
    float *m, *l;                /* out [n_qv]: running max, sum of e^(s_t - m) */
} kc_mla_few_args;

/* Independent FMA chains in the peak-FLOP loop. */
#define KC_FMA_CHAINS 12

typedef struct kc_ops {
    /* y[i, r - r_begin] (row stride ldy) = x[i, :] . W[r, :] for view rows
     * r in [r_begin, r_end), i in [0, n). */
    void (*matmul_rows)(const kc_matrix *w, const float *x, int64_t n, float *y, int64_t ldy,
                        int64_t r_begin, int64_t r_end);
    /* y[i, c] (row stride ldy) = sum_r x[i, r] W[r, c] for c in [c_begin, c_end);
     * c_begin is a multiple of 64. */
    void (*matmul_t_cols)(const kc_matrix *w, const float *x, int64_t n, float *y, int64_t ldy,
                          int64_t c_begin, int64_t c_end);
    /* tile[t, 0:R] = latent, tile[t, R:R+D] = rope, tile[t, R+D:ld] = 0, t < n_rows. */
    void (*mla_decode)(const kvl_layout *l, const uint8_t *const *rows, int n_rows, float *tile,
                       int64_t ld);
    /* s[q, t] (stride lds) = q[q, :k] . tile[t, :k] for q < n_q, t < n_t; k % VL == 0
     * (both operands are zero padded). */
    void (*mla_scores)(const float *q, int64_t ldq, int64_t n_q, const float *tile, int64_t ldt,
                       int64_t n_t, int64_t k, float *s, int64_t lds);
    /* o[q, :r] (stride ldo) += p[q, :n_t] . tile[:n_t, :r]. */
    void (*mla_pv)(const float *p, int64_t ldp, int64_t n_q, const float *tile, int64_t ldt,
                   int64_t n_t, int64_t r, float *o, int64_t ldo);
    /* The fused path: decodes rows in registers straight from the pages. */
    void (*mla_few)(const kc_mla_few_args *a);
    /* s[t] = exp(s[t] - m) for t < n; returns the sum. */
    float (*exp_sum)(float *s, int64_t n, float m);
    /* x[i] *= a for i < n. */
    void (*scale)(float *x, int64_t n, float a);
    void (*rmsnorm)(const float *x, const float *w, int64_t n, int64_t dim, float eps, float *out);
    void (*silu_mul)(float *gate, const float *up, int64_t n);
    /* Reads every byte of p[0, bytes) (bytes % 256 == 0, p 64-byte aligned)
     * and prefetches pf[0, bytes) into L2 on the way unless pf is NULL;
     * returns a checksum. */
    uint64_t (*read_sum)(const void *p, size_t bytes, const void *pf);
    /* iters rounds of KC_FMA_CHAINS independent vector FMAs; returns a checksum. */
    float (*fma_loop)(int64_t iters);
    int lanes;            /* f32 lanes per vector */
    int mla_few_auto_fp8; /* query vectors up to which fp8 rows take mla_few */
} kc_ops;

extern const kc_ops kc_ops_scalar;
extern const kc_ops kc_ops_avx2;
extern const kc_ops kc_ops_avx512;
extern const kc_ops kc_ops_avx512_bf16;

/* The table for kc_isa_active(). */
const kc_ops *kc_ops_active(void);
const kc_ops *kc_ops_for(kc_isa isa);

/* Index of the calling thread within the pool running it: 0 for the thread
 * that called kc_pool_run (or any thread outside a pool), 1.. for workers. */
int kc_pool_thread_index(void);

/* Per-thread scratch of at least `bytes`, 64-byte aligned, grown on demand and
 * kept until the thread exits (workers free theirs; see kc_scratch_release).
 * `slot` (0..3) names independent buffers. NULL when out of memory. */
void *kc_scratch_get(int slot, size_t bytes);
void kc_scratch_release(void);

/* fp8 weight scale of (view row r, column c), times 2^8 (the vector decode
 * yields e4m3 * 2^-8). */
static inline float kc_fp8_scale(const kc_matrix *w, int64_t r, int64_t c)
{
    int64_t scols = (w->cols + KC_FP8_BLOCK - 1) / KC_FP8_BLOCK;
    return w->scale_inv[((w->row0 + r) / KC_FP8_BLOCK) * scols + c / KC_FP8_BLOCK] * 256.0f;
}

/* Bytes per element of a weight dtype. */
static inline int64_t kc_dtype_bytes(kc_dtype t)
{
    return t == KC_DTYPE_F32 ? 4 : (t == KC_DTYPE_FP8_E4M3 ? 1 : 2);
}

/* Element pointer of view row r (counted in the view). */
static inline const uint8_t *kc_row_ptr(const kc_matrix *w, int64_t r)
{
    return (const uint8_t *)w->data + (w->row0 + r) * w->cols * kc_dtype_bytes(w->dtype);
}

/* The DeepSeek-V4 kernels of one ISA level (kc_v4_impl.h built by
 * kc_v4_scalar.c, kc_v4_avx2.c, kc_v4_avx512.c, with -ffp-contract=off so
 * each term of the indexer's head sum is rounded as the reference rounds it);
 * kc_v4.c splits the work and adds the MLA tile kernels of kc_ops. */
typedef struct kc_v4_ops {
    /* p->score[j] for keys j in [j0, j1). */
    void (*index_scores)(const kc_v4_index_params *p, int64_t j0, int64_t j1);
    /* tile[t, 0:d] = row t decoded to f32 (d = nope + rope), tile[t, d:ld] = 0;
     * a NULL row gives zeros. */
    void (*row_decode)(const uint8_t *const *rows, int n_rows, int32_t nope, int32_t rope,
                       float *tile, int64_t ld);
} kc_v4_ops;

extern const kc_v4_ops kc_v4_ops_scalar;
extern const kc_v4_ops kc_v4_ops_avx2;
extern const kc_v4_ops kc_v4_ops_avx512;

#endif
