/*
 * kc.h - CPU compute kernels: the public contract of kernels/cpu.
 *
 * Every kernel has a scalar reference (kc_*_ref) and runtime-dispatched vector
 * versions (AVX-512 with BF16 dot products where present, AVX2+FMA, scalar);
 * tests compare each ISA level against the reference on random inputs.
 * Activations are f32; weights are f32, bf16, f16 or block-fp8. Results agree
 * with the f32 reference to ~1e-6 relative (the bf16 dot-product path splits
 * activations into hi+lo bf16 halves so it keeps f32 accuracy).
 *
 * kernels/cpu/ owns the CPU math; it may include common/ only: it knows
 * nothing of models, requests or the engine's structures.
 *
 * Threading: kernels take a kc_pool (NULL = run on the calling thread) and
 * split work over it; they are safe to call from one thread at a time per pool.
 */
#ifndef KC_H
#define KC_H

#include <stddef.h>
#include <stdint.h>

#include "mls_kv_layout.h"
#include "mls_status.h"

/* ---- thread pool -------------------------------------------------------- */

typedef struct kc_pool kc_pool;

/* fn(ctx, task, n_tasks) is called once for each task in [0, n_tasks). */
typedef void (*kc_task_fn)(void *ctx, int task, int n_tasks);

/* n_threads <= 0: one per online core. The calling thread counts as one. */
mls_status kc_pool_create(int n_threads, kc_pool **pool_p);
void kc_pool_destroy(kc_pool *pool); /* accepts NULL */
int kc_pool_size(const kc_pool *pool); /* 1 for NULL */
/* Run all tasks and return when every one has finished. pool may be NULL. */
void kc_pool_run(kc_pool *pool, kc_task_fn fn, void *ctx, int n_tasks);

/* ---- ISA dispatch --------------------------------------------------------- */

typedef enum {
    KC_ISA_SCALAR,
    KC_ISA_AVX2,        /* AVX2 + FMA + F16C */
    KC_ISA_AVX512,      /* F, BW, VL, DQ */
    KC_ISA_AVX512_BF16, /* plus AVX512_BF16 (vdpbf16ps) */
    KC_ISA_COUNT
} kc_isa;

kc_isa kc_isa_detect(void);       /* best level this CPU supports */
kc_isa kc_isa_active(void);       /* level in use: detect(), or MLS_ISA=scalar|avx2|avx512|avx512_bf16 */
void kc_isa_force(kc_isa isa);    /* tests/benches; clamps to detect() */
const char *kc_isa_name(kc_isa isa);

/* ---- weights -------------------------------------------------------------- */

typedef enum {
    KC_DTYPE_F32,
    KC_DTYPE_BF16,
    KC_DTYPE_F16,
    KC_DTYPE_FP8_E4M3,  /* with 128x128 block scales */
} kc_dtype;

#define KC_FP8_BLOCK 128

/*
 * A weight matrix view: rows [row0, row0+rows) of a parent matrix with
 * parent_cols columns stored row-major (out_features x in_features, as in
 * Hugging Face checkpoints). For fp8, scale_inv is the parent's block-scale
 * grid [ceil(parent_rows/128), ceil(cols/128)] (fp32) and
 *   w[r][c] = e4m3(data[r][c]) * scale_inv[r/128][c/128]
 * with r counted in the parent. For other dtypes row0 may be folded into data.
 */
typedef struct {
    kc_dtype dtype;
    int64_t rows;            /* rows of the view */
    int64_t cols;            /* columns (= parent columns; views never cut columns) */
    int64_t row0;            /* first parent row of the view */
    const void *data;        /* parent data, element (r, c) at data[r*cols + c] */
    const float *scale_inv;  /* FP8 only: [ceil(parent_rows/128), ceil(cols/128)] */
} kc_matrix;

/* y[n, w->rows] = x[n, w->cols] . W^T  (row-major, dense strides). */
void kc_matmul(kc_pool *pool, const kc_matrix *w, const float *x, int64_t n, float *y);
void kc_matmul_ref(const kc_matrix *w, const float *x, int64_t n, float *y);

/* y[n, w->cols] = x[n, w->rows] . W  (the transposed use: absorbing W_UK). */
void kc_matmul_t(kc_pool *pool, const kc_matrix *w, const float *x, int64_t n, float *y);
void kc_matmul_t_ref(const kc_matrix *w, const float *x, int64_t n, float *y);

/* Decode a whole view to f32 out[rows, cols] (reference for tests, slow paths). */
void kc_matrix_to_f32(const kc_matrix *w, float *out);

/* ---- elementwise ------------------------------------------------------------ */

/* out[n, dim] = x * rsqrt(mean(x^2) + eps) * w; out may alias x. */
void kc_rmsnorm(const float *x, const float *w, int64_t n, int64_t dim, float eps, float *out);
void kc_rmsnorm_ref(const float *x, const float *w, int64_t n, int64_t dim, float eps, float *out);

/* gate[n, dim] = silu(gate) * up, in place. */
void kc_silu_mul(float *gate, const float *up, int64_t n_elems);

/* Interleaved-pair rotary on x[n_vec, dim] at position pos:
 * out[2i] = x0*cos(a) - x1*sin(a), out[2i+1] = x0*sin(a) + x1*cos(a),
 * a = pos * inv_freq[i]; angles computed in fp32 as the reference does. */
void kc_rope_interleaved(float *x, int64_t n_vec, int64_t dim, int64_t stride, int64_t pos,
                         const float *inv_freq);

/* ---- MLA attention over the paged latent cache ------------------------------- */

/*
 * Absorbed multi-head latent attention. For every query token q of a sequence
 * and head h:
 *   s_t  = scale * (q_latent[q,h,:] . latent_t + q_rope[q,h,:] . rope_t)
 *   out[q,h,:] = sum_t softmax(s)_t * latent_t
 * over the cache rows t that query may see. Rows are read straight from the
 * pages (f32, bf16 or fp8 as the layout says); nothing is decompressed to a
 * per-head K or V.
 */
typedef struct {
    const uint32_t *page_table; /* [ceil(kv_len/64)] page ids of this sequence */
    int32_t kv_len;             /* cache rows visible to the sequence's last query */
    int32_t n_q;                /* query tokens (1 in decode); query i sees rows [0, kv_len-n_q+i] */
    int64_t q_index;            /* row of its first query in q_latent/q_rope/out */
} kc_mla_seq;

typedef struct {
    const kvl_layout *layout;
    const uint8_t *kv_base;     /* this layer's pool; page p at kv_base + p*layout->page_bytes */
    int32_t n_heads;
    float softmax_scale;
    const float *q_latent;      /* [total_q, n_heads, kv_lora_rank] */
    const float *q_rope;        /* [total_q, n_heads, rope_dim] */
    float *out;                 /* [total_q, n_heads, kv_lora_rank] */
    const kc_mla_seq *seqs;     /* [n_seqs] */
    int32_t n_seqs;
} kc_mla_params;

/* Bytes of scratch kc_mla_attention needs for these params with this pool. */
size_t kc_mla_workspace_size(const kc_pool *pool, const kc_mla_params *p);
/* Splits long contexts into chunks across threads and combines them
 * (log-sum-exp), so batch 1 at 128k context still uses every core. */
void kc_mla_attention(kc_pool *pool, const kc_mla_params *p, void *workspace);
void kc_mla_attention_ref(const kc_mla_params *p);

/* ---- DeepSeek-V4 decode: lightning indexer, sparse attention with sink ------ */

/*
 * V4 rows as stored (mls_kv_layout.h, FlashMLA's V4 format):
 *   indexer key (head_dim values):  [e2m1 x head_dim, two per byte, low nibble
 *     first][UE8M0 scale per 32]: KVL_ROW_BYTES_V4_INDEXER(head_dim) bytes
 *   entry (nope + rope values):     [e4m3 x nope][UE8M0 per 64, padded to 8
 *     bytes][bf16 x rope]: KVL_ROW_BYTES_V4_ENTRY(nope, rope) bytes
 * value = code * 2^(scale - 127); scale bytes are 1..254 (no NaN code).
 */
#define KC_V4_INDEX_MAX_DIM 256 /* index_head_dim up to this (a multiple of 32) */

/*
 * Indexer scores of one query over n_keys FP4 keys:
 *   score[j] = sum_h w[h] * relu(q[h, :] . key_j)
 * the dot accumulated over dims in order with fused multiply-adds, the heads
 * summed in order (h = 0 first), each term rounded before it is added. With q
 * on the FP4 grid (as the indexer quantizes it) every product is exact, so
 * every ISA level gives the reference's bits, and those of the same sum over
 * the decoded keys in f32.
 */
typedef struct {
    const uint8_t *keys; /* [n_keys] rows of row_bytes (KVL_ROW_BYTES_V4_INDEXER(head_dim)) */
    int64_t n_keys;
    int64_t row_bytes;   /* bytes from one key to the next (>= the row) */
    int32_t n_heads;     /* IH */
    int32_t head_dim;    /* Id: a multiple of 32, <= KC_V4_INDEX_MAX_DIM */
    const float *q;      /* [n_heads, head_dim] */
    const float *w;      /* [n_heads] head weights */
    float *score;        /* out [n_keys] */
} kc_v4_index_params;

/* Splits the keys over pool's threads (NULL: the calling thread). */
void kc_v4_index_scores(kc_pool *pool, const kc_v4_index_params *p);
void kc_v4_index_scores_ref(const kc_v4_index_params *p);

/* sel[0, min(k, n)) = the indices of the min(k, n) largest scores, best first
 * (higher score first, the lower index first on a tie); returns that count. */
int64_t kc_v4_topk(const float *score, int64_t n, int64_t k, int32_t *sel);

/*
 * Attention with sink of n_q queries x n_heads heads over the rows each query
 * lists (one shared K=V vector per row, every head reads it):
 *   s_j = scale * q[i, h, :] . row_j
 *   out[i, h, :] = sum_j e^(s_j - m) row_j / (e^(sink[h] - m) + sum_j e^(s_j - m)),
 *   m = max_j s_j
 * over the non-NULL rows[i, j]; a query with none gets zeros. Sparse
 * attention lists the window rows and the selected entries; HCA the window
 * and all visible entries. Rows are decoded to f32 in blocks and reduced with
 * an online softmax; a head's result does not depend on n_q, on the pool or
 * on the other heads.
 */
typedef struct {
    int32_t n_heads;              /* H */
    int32_t nope, rope;           /* d = nope + rope; nope % 64 == 0 */
    float softmax_scale;
    const float *sink;            /* [n_heads] */
    const float *q;               /* [n_q, n_heads, d] */
    const uint8_t *const *rows;   /* [n_q, k] KVL_ROW_BYTES_V4_ENTRY(nope, rope) rows or NULL */
    int32_t n_q, k;
    float *out;                   /* [n_q, n_heads, d] */
} kc_v4_attn_params;

void kc_v4_attn(kc_pool *pool, const kc_v4_attn_params *p);
void kc_v4_attn_ref(const kc_v4_attn_params *p);

/* ---- memory bandwidth ------------------------------------------------------- */

/* Measured read bandwidth in bytes/s over a buffer of `bytes`, using every
 * thread of pool (best of `reps`). The reference the benches divide by. */
double kc_measure_read_bandwidth(kc_pool *pool, size_t bytes, int reps);

/* Read bandwidth in bytes/s of one pass over n_pages pages of page_bytes
 * (a multiple of 256 is read) at base + pages[i] * page_bytes, in that order,
 * split over every thread of pool, each page's successor prefetched while it
 * is read: what a kernel streaming those pages could reach, as opposed to one
 * contiguous buffer. */
double kc_measure_paged_read(kc_pool *pool, const uint8_t *base, const uint32_t *pages,
                             int64_t n_pages, size_t page_bytes);

/* Measured f32 FMA throughput in FLOP/s of the active ISA on every thread of
 * pool (a register-only FMA loop, best of `reps`): the compute roof the
 * benches classify against. */
double kc_measure_peak_flops(kc_pool *pool, int reps);

#endif
