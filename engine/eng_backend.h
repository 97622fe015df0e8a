/*
 * eng_backend.h - the compute backend table: every op the forward pass runs,
 * as a struct of function pointers over a backend context and tensors that
 * know where they live (engine internals; not part of the engine API).
 *
 * Two implementations: eng_backend_cpu.c (kernels/cpu, host memory, the
 * oracle) and eng_backend_cuda.c (kernels/cuda, device memory; compiled only
 * when MLS_HAVE_CUDA). eng_backend_get() picks one by eng_device.
 *
 * Contract for every op:
 * - ctx is the backend context made by ops->ctx_create (CPU: a kc_pool;
 *   CUDA: a kcu_ctx); never NULL.
 * - Tensors are never NULL unless the op says so. Each names its location;
 *   a backend reads and writes only tensors in its own location (ops->loc)
 *   and answers anything else with MLS_ERR_INVALID_ARG and the tensor named.
 * - Ops return MLS_OK or a status with the cause in *err (err may be NULL).
 *   The CPU ops cannot fail once their arguments are valid; a CUDA op may fail
 *   at launch. An op a backend does not have returns MLS_ERR_UNSUPPORTED with
 *   the op named: no backend falls back to another silently.
 * - Ops are asynchronous on a device backend (stream order); ops->sync waits.
 *   The CPU ops return when their results are written.
 */
#ifndef ENG_BACKEND_H
#define ENG_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_route.h"
#include "engine.h"
#include "kc.h"
#include "mls_alloc.h"
#include "mls_kv_layout.h"
#include "mls_status.h"

/* ---- tensors ------------------------------------------------------------------ */

typedef enum {
    ENG_LOC_HOST,   /* host memory: the CPU backend's */
    ENG_LOC_CUDA,   /* CUDA device memory */
} eng_loc;

typedef enum {
    ENG_DTYPE_F32,
    ENG_DTYPE_I32,
    ENG_DTYPE_U32,
    ENG_DTYPE_U8,
} eng_dtype;

#define ENG_TENSOR_MAX_DIMS 4

/*
 * A view of n_dims-dimensional data (dims outermost first). Element
 * (i0, .., i_{n-1}) is at ((T *)data)[i0*stride[0] + .. + i_{n-1}*stride[n-1]]:
 * strides count ELEMENTS, not bytes. The innermost stride is 1 in every op
 * below (rows may be strided, elements within a row never are). The tensor
 * does not own data.
 */
typedef struct {
    void *data;
    eng_dtype dtype;
    eng_loc loc;
    int32_t n_dims;
    int64_t shape[ENG_TENSOR_MAX_DIMS];
    int64_t stride[ENG_TENSOR_MAX_DIMS];  /* elements */
} eng_tensor;

/* Dense (n) vector. */
static inline eng_tensor eng_tensor_1d(eng_loc loc, eng_dtype dtype, void *data, int64_t n)
{
    eng_tensor t = {data, dtype, loc, 1, {n, 0, 0, 0}, {1, 0, 0, 0}};
    return t;
}

/* (rows, cols) with rows row_stride elements apart. */
static inline eng_tensor eng_tensor_2d_strided(eng_loc loc, eng_dtype dtype, void *data,
                                               int64_t rows, int64_t cols, int64_t row_stride)
{
    eng_tensor t = {data, dtype, loc, 2, {rows, cols, 0, 0}, {row_stride, 1, 0, 0}};
    return t;
}

/* Dense (rows, cols). */
static inline eng_tensor eng_tensor_2d(eng_loc loc, eng_dtype dtype, void *data, int64_t rows,
                                       int64_t cols)
{
    return eng_tensor_2d_strided(loc, dtype, data, rows, cols, cols);
}

/* Elements of the tensor (the product of its shape). */
static inline int64_t eng_tensor_elems(const eng_tensor *t)
{
    int64_t n = 1;
    for (int32_t i = 0; i < t->n_dims; i++) {
        n *= t->shape[i];
    }
    return n;
}

/* True when the tensor's elements are one dense run. */
static inline bool eng_tensor_is_dense(const eng_tensor *t)
{
    int64_t want = 1;
    for (int32_t i = t->n_dims - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != want) {
            return false;
        }
        want *= t->shape[i];
    }
    return true;
}

/*
 * A linear weight: the host view the checkpoint maps (always present: the CPU
 * kernels read it, a device backend uploads from it) and a device backend's
 * copy. A view of a view (eng_attention's W_UK/W_UV per head) copies the
 * struct and moves m.row0 / m.rows; dev stays the whole matrix.
 */
typedef struct {
    kc_matrix m;               /* host (out_features, in_features) view into the mmap */
    const void *dev;           /* CUDA: kcu_matrix of the whole matrix (rows from m.row0); NULL: none */
} eng_linear;

/* MLA attention over one layer's paged latent cache (kc_mla_params' maths). */
typedef struct {
    const kvl_layout *layout;  /* host */
    eng_tensor kv;             /* (n_pages, page_bytes) u8: page p at data + p*page_bytes */
    int32_t n_heads;
    float softmax_scale;
    eng_tensor q_latent;       /* (total_q, n_heads * R) f32, dense */
    eng_tensor q_rope;         /* (total_q, n_heads * D) f32, dense */
    eng_tensor out;            /* (total_q, n_heads * R) f32, dense */
    const kc_mla_seq *seqs;    /* host [n_seqs]: page tables (host), kv_len, n_q, q_index */
    int32_t n_seqs;
    /* A device backend's copy of seqs; n_dims 0 on the CPU. */
    eng_tensor page_table;     /* (n_seqs, stride) u32: row s = seqs[s].page_table */
    eng_tensor seq_lens;       /* (n_seqs) i32: seqs[s].kv_len */
} eng_mla_args;

/* The MoE router (DeepSeek semantics, eng_route). */
typedef struct {
    const eng_route_params *route;  /* host */
    const eng_tensor *bias;    /* (E) f32 correction bias, or NULL */
    eng_tensor *scratch;       /* (E) f32 selection scores; the CPU's, NULL elsewhere */
} eng_gate_args;

/* ---- the table ---------------------------------------------------------------------- */

typedef struct {
    const char *name;          /* "cpu", "cuda" */
    eng_device device;
    eng_loc loc;               /* where its tensors live */

    /* Is device `index` usable? MLS_ERR_NO_DEVICE with the cause otherwise. */
    mls_status (*probe)(int index, mls_err *err);
    /* Context for one host thread at a time: n_threads (CPU; <= 0: one per
     * core), index (device ordinal). *ctx_p owned by the caller (ctx_destroy). */
    mls_status (*ctx_create)(int n_threads, int index, void **ctx_p, mls_err *err);
    void (*ctx_destroy)(void *ctx);            /* accepts NULL */
    /* Wait for every op queued on ctx; reports asynchronous failures. */
    mls_status (*sync)(void *ctx, mls_err *err);

    /* Memory in the backend's location, counted under tag on the host.
     * *ptr_p 64-byte aligned (host) / 256-byte aligned (device); free accepts NULL. */
    mls_status (*mem_alloc)(mls_alloc_tag tag, size_t bytes, void **ptr_p, mls_err *err);
    void (*mem_free)(mls_alloc_tag tag, void *ptr, size_t bytes);

    /* Give w a copy in the backend's memory (w->dev) from its host view, the
     * whole matrix (w->m.row0 == 0); CPU: nothing to do (dev stays NULL).
     * linear_release frees it and accepts a weight without one. */
    mls_status (*linear_upload)(void *ctx, eng_linear *w, mls_err *err);
    void (*linear_release)(eng_linear *w);

    /* y (n, w->m.rows) = x (n, w->m.cols) . W^T; x, y dense f32. */
    mls_status (*matmul)(void *ctx, const eng_linear *w, const eng_tensor *x, eng_tensor *y,
                         mls_err *err);
    /* y (n, w->m.cols) = x (n, w->m.rows) . W (absorbing W_UK); x, y dense f32. */
    mls_status (*matmul_t)(void *ctx, const eng_linear *w, const eng_tensor *x, eng_tensor *y,
                           mls_err *err);
    /* out (n, dim) = x (n, dim) * rsqrt(mean(x^2) + eps) * w (dim); rows of x
     * and out may be strided (same stride); out may alias x. */
    mls_status (*rmsnorm)(void *ctx, const eng_tensor *x, const eng_tensor *w, float eps,
                          eng_tensor *out, mls_err *err);
    /* gate (n) = silu(gate) * up (n), in place; both dense f32, same shape. */
    mls_status (*silu_mul)(void *ctx, eng_tensor *gate, const eng_tensor *up, mls_err *err);
    /* Interleaved-pair rotary in place on x (n_tok, n_vec, dim) (strided rows,
     * dim dense) at positions pos (n_tok) i32, frequencies inv_freq (dim/2),
     * then every rotated value times mscale (1: none). kc_rope_interleaved's maths. */
    mls_status (*rope)(void *ctx, eng_tensor *x, const eng_tensor *pos, const eng_tensor *inv_freq,
                       float mscale, mls_err *err);
    /* Token t's latent (n_tok, R) and rope (n_tok, D) rows (strided) go to
     * row slot[t] of page page[t] of the layer pool kv (page (n_tok) u32,
     * slot (n_tok) u32), encoded as layout says (kvl_row_store's bytes). */
    mls_status (*kv_store)(void *ctx, const kvl_layout *layout, eng_tensor *kv,
                           const eng_tensor *latent, const eng_tensor *rope,
                           const eng_tensor *page, const eng_tensor *slot, mls_err *err);
    /* Bytes of workspace mla_attention needs for these arguments (0 allowed). */
    size_t (*mla_workspace_size)(void *ctx, const eng_mla_args *a);
    /* a->out = MLA attention; workspace: mla_workspace_size bytes of mem_alloc
     * memory (NULL when that is 0). */
    mls_status (*mla_attention)(void *ctx, const eng_mla_args *a, void *workspace, mls_err *err);
    /* Route each token: scores (n_tok, E) f32 router logits -> topk (n_tok, K)
     * i32 experts and topw (n_tok, K) f32 weights. scores is clobbered (the
     * CPU leaves the routing scores in it). */
    mls_status (*moe_gate)(void *ctx, const eng_gate_args *g, eng_tensor *scores,
                           eng_tensor *topk, eng_tensor *topw, mls_err *err);
    /* Greedy pick per row of logits (n, vocab) f32 -> ids (n) i32 (ties: the
     * lower id, as eng_sample). */
    mls_status (*argmax)(void *ctx, const eng_tensor *logits, eng_tensor *ids, mls_err *err);
} eng_backend_ops;

extern const eng_backend_ops eng_backend_cpu;
#ifdef MLS_HAVE_CUDA
extern const eng_backend_ops eng_backend_cuda;
#endif

/* The table of `device`: MLS_ERR_UNSUPPORTED ("built without CUDA") when this
 * build has none. */
mls_status eng_backend_get(eng_device device, const eng_backend_ops **ops_p, mls_err *err);

#endif
