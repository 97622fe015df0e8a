/*
 * eng_backend_cuda.c - the CUDA backend table: kernels/cuda (kcu.h) behind
 * eng_backend_ops, over device memory. The context is a kcu_ctx (one device,
 * one stream); ops are queued on its stream and ops->sync waits. Compiled only
 * where kernels/cuda is built (MLS_HAVE_CUDA; engine/CMakeLists.txt).
 *
 * Every op checks that its tensors live on the device and hands them to the
 * kcu op of the same maths; kcu validates shapes and reports launch failures.
 * What kcu cannot do is answered with MLS_ERR_UNSUPPORTED and the reason
 * (strided rmsnorm rows, MLA batches with unequal query counts, a weight
 * without a device copy); nothing falls back to the CPU.
 */
#include <stdlib.h>

#include "eng_internal.h"
#include "kcu.h"

#define ENG_CUDA_CHECK_DEVICE(t, op, what, err)                                             \
    do {                                                                                    \
        if ((t)->loc != ENG_LOC_CUDA) {                                                     \
            mls_err_set((err), "cuda backend: %s: tensor '%s' is not in device memory", (op), \
                        (what));                                                            \
            return MLS_ERR_INVALID_ARG;                                                     \
        }                                                                                   \
    } while (0)

#define ENG_CUDA_UNSUPPORTED(err, ...)                       \
    do {                                                     \
        mls_err_set((err), "cuda backend: " __VA_ARGS__);   \
        return MLS_ERR_UNSUPPORTED;                          \
    } while (0)

static mls_status eng_cuda_probe(int index, mls_err *err)
{
    mls_err kerr = {{0}};
    int n = 0;

    if (kcu_device_count(&n, &kerr) != MLS_OK) {
        mls_err_set(err, "no CUDA device: %s", kerr.msg);
        return MLS_ERR_NO_DEVICE;
    }
    if (index < 0 || index >= n) {
        mls_err_set(err, "no CUDA device: index %d, this machine has %d", index, n);
        return MLS_ERR_NO_DEVICE;
    }
    return MLS_OK;
}

static mls_status eng_cuda_ctx_create(int n_threads, int index, void **ctx_p, mls_err *err)
{
    mls_err kerr = {{0}};
    kcu_ctx *ctx;
    mls_status st = kcu_ctx_create(index, &ctx, &kerr);

    if (st != MLS_OK) {
        mls_err_set(err, "%s%s", st == MLS_ERR_NO_DEVICE ? "no CUDA device: " : "cuda backend: ",
                    kerr.msg);
        return st;
    }
    *ctx_p = ctx;
    return MLS_OK;
}

static void eng_cuda_ctx_destroy(void *ctx)
{
    kcu_ctx_destroy(ctx);
}

static mls_status eng_cuda_sync(void *ctx, mls_err *err)
{
    return kcu_ctx_sync(ctx, err);
}

/* Device memory is not counted under a host tag. */
static mls_status eng_cuda_mem_alloc(mls_alloc_tag tag, size_t bytes, void **ptr_p, mls_err *err)
{
    return kcu_malloc(bytes, ptr_p, err);
}

static void eng_cuda_mem_free(mls_alloc_tag tag, void *ptr, size_t bytes)
{
    kcu_free(ptr);
}

static mls_status eng_cuda_linear_upload(void *ctx, eng_linear *w, mls_err *err)
{
    kcu_matrix *dev;
    mls_status st;

    if (w->m.row0 != 0) {
        mls_err_set(err, "cuda backend: linear_upload: a view (row0 %lld), not a whole matrix",
                    (long long)w->m.row0);
        return MLS_ERR_INVALID_ARG;
    }
    dev = calloc(1, sizeof(*dev));
    if (dev == NULL) {
        mls_err_set(err, "cuda backend: linear_upload: out of host memory");
        return MLS_ERR_NO_MEMORY;
    }
    if ((st = kcu_matrix_upload(ctx, &w->m, NULL, dev, err)) != MLS_OK) {
        free(dev);
        return st;
    }
    w->dev = dev;
    return MLS_OK;
}

static void eng_cuda_linear_release(eng_linear *w)
{
    kcu_matrix *dev = (kcu_matrix *)w->dev;

    if (dev != NULL) {
        kcu_matrix_free(dev);
        free(dev);
        w->dev = NULL;
    }
}

/* The device rows [w->m.row0, +w->m.rows) of w's device copy, as a kcu_matrix. */
static mls_status eng_cuda_view(const eng_linear *w, const char *op, kcu_matrix *view,
                                mls_err *err)
{
    const kcu_matrix *dev = w->dev;

    if (dev == NULL) {
        ENG_CUDA_UNSUPPORTED(err, "%s: the weight has no device copy (linear_upload first)", op);
    }
    if (w->m.row0 < 0 || w->m.row0 + w->m.rows > dev->rows || w->m.cols != dev->cols) {
        mls_err_set(err, "cuda backend: %s: view rows [%lld, +%lld) x %lld outside the device "
                    "matrix (%lld, %lld)", op, (long long)w->m.row0, (long long)w->m.rows,
                    (long long)w->m.cols, (long long)dev->rows, (long long)dev->cols);
        return MLS_ERR_INVALID_ARG;
    }
    view->rows = w->m.rows;
    view->cols = dev->cols;
    view->data = dev->data + w->m.row0 * dev->cols;
    view->owned = false;
    return MLS_OK;
}

static mls_status eng_cuda_matmul(void *ctx, const eng_linear *w, const eng_tensor *x,
                                  eng_tensor *y, mls_err *err)
{
    kcu_matrix view;
    mls_status st;

    ENG_CUDA_CHECK_DEVICE(x, "matmul", "x", err);
    ENG_CUDA_CHECK_DEVICE(y, "matmul", "y", err);
    if ((st = eng_cuda_view(w, "matmul", &view, err)) != MLS_OK) {
        return st;
    }
    return kcu_matmul(ctx, &view, x->data, x->shape[0], y->data, err);
}

static mls_status eng_cuda_matmul_t(void *ctx, const eng_linear *w, const eng_tensor *x,
                                    eng_tensor *y, mls_err *err)
{
    kcu_matrix view;
    mls_status st;

    ENG_CUDA_CHECK_DEVICE(x, "matmul_t", "x", err);
    ENG_CUDA_CHECK_DEVICE(y, "matmul_t", "y", err);
    if ((st = eng_cuda_view(w, "matmul_t", &view, err)) != MLS_OK) {
        return st;
    }
    return kcu_matmul_t(ctx, &view, x->data, x->shape[0], y->data, err);
}

static mls_status eng_cuda_rmsnorm(void *ctx, const eng_tensor *x, const eng_tensor *w, float eps,
                                   eng_tensor *out, mls_err *err)
{
    ENG_CUDA_CHECK_DEVICE(x, "rmsnorm", "x", err);
    ENG_CUDA_CHECK_DEVICE(w, "rmsnorm", "w", err);
    ENG_CUDA_CHECK_DEVICE(out, "rmsnorm", "out", err);
    if (x->shape[0] > 1 && x->stride[0] != x->shape[1]) {
        ENG_CUDA_UNSUPPORTED(err, "rmsnorm: strided rows (stride %lld, dim %lld): kcu_rmsnorm "
                             "takes dense rows", (long long)x->stride[0], (long long)x->shape[1]);
    }
    return kcu_rmsnorm(ctx, x->data, w->data, x->shape[0], x->shape[1], eps, out->data, err);
}

static mls_status eng_cuda_silu_mul(void *ctx, eng_tensor *gate, const eng_tensor *up,
                                    mls_err *err)
{
    ENG_CUDA_CHECK_DEVICE(gate, "silu_mul", "gate", err);
    ENG_CUDA_CHECK_DEVICE(up, "silu_mul", "up", err);
    return kcu_silu_mul(ctx, gate->data, up->data, eng_tensor_elems(gate), err);
}

static mls_status eng_cuda_rope(void *ctx, eng_tensor *x, const eng_tensor *pos,
                                const eng_tensor *inv_freq, float mscale, mls_err *err)
{
    ENG_CUDA_CHECK_DEVICE(x, "rope", "x", err);
    ENG_CUDA_CHECK_DEVICE(pos, "rope", "pos", err);
    ENG_CUDA_CHECK_DEVICE(inv_freq, "rope", "inv_freq", err);
    return kcu_rope_interleaved(ctx, x->data, x->shape[0], x->stride[0], x->shape[1],
                                x->stride[1], x->shape[2], pos->data, inv_freq->data, mscale, err);
}

static mls_status eng_cuda_kv_store(void *ctx, const kvl_layout *layout, eng_tensor *kv,
                                    const eng_tensor *latent, const eng_tensor *rope,
                                    const eng_tensor *page, const eng_tensor *slot, mls_err *err)
{
    ENG_CUDA_CHECK_DEVICE(kv, "kv_store", "kv", err);
    ENG_CUDA_CHECK_DEVICE(latent, "kv_store", "latent", err);
    ENG_CUDA_CHECK_DEVICE(rope, "kv_store", "rope", err);
    ENG_CUDA_CHECK_DEVICE(page, "kv_store", "page", err);
    ENG_CUDA_CHECK_DEVICE(slot, "kv_store", "slot", err);
    return kcu_kv_store(ctx, layout, kv->data, latent->data, latent->stride[0], rope->data,
                        rope->stride[0], page->data, slot->data, latent->shape[0], err);
}

/*
 * kcu's decode takes n_q queries for every sequence, sequence s's at rows
 * s*n_q.., and device copies of the page tables and lengths; the host
 * descriptors say whether this batch is of that shape.
 */
static mls_status eng_cuda_mla_params(const eng_mla_args *a, kcu_mla_params *kp, mls_err *err)
{
    int32_t n_q = a->seqs[0].n_q, max_len = 0;

    if (a->page_table.n_dims != 2 || a->seq_lens.n_dims != 1) {
        ENG_CUDA_UNSUPPORTED(err, "mla_attention: no device page table / sequence lengths");
    }
    ENG_CUDA_CHECK_DEVICE(&a->kv, "mla_attention", "kv", err);
    ENG_CUDA_CHECK_DEVICE(&a->q_latent, "mla_attention", "q_latent", err);
    ENG_CUDA_CHECK_DEVICE(&a->q_rope, "mla_attention", "q_rope", err);
    ENG_CUDA_CHECK_DEVICE(&a->out, "mla_attention", "out", err);
    ENG_CUDA_CHECK_DEVICE(&a->page_table, "mla_attention", "page_table", err);
    ENG_CUDA_CHECK_DEVICE(&a->seq_lens, "mla_attention", "seq_lens", err);
    for (int32_t s = 0; s < a->n_seqs; s++) {
        if (a->seqs[s].n_q != n_q || a->seqs[s].q_index != (int64_t)s * n_q) {
            ENG_CUDA_UNSUPPORTED(err, "mla_attention: sequence %d has %d queries at row %lld; "
                                 "kcu_mla_decode takes %d per sequence, packed", s,
                                 a->seqs[s].n_q, (long long)a->seqs[s].q_index, n_q);
        }
        if (a->seqs[s].kv_len > max_len) {
            max_len = a->seqs[s].kv_len;
        }
    }
    kp->layout = a->layout;
    kp->kv_base = a->kv.data;
    kp->n_seqs = a->n_seqs;
    kp->n_q = n_q;
    kp->n_heads = a->n_heads;
    kp->softmax_scale = a->softmax_scale;
    kp->seq_lens = a->seq_lens.data;
    kp->max_kv_len = max_len;
    kp->page_table = a->page_table.data;
    kp->page_table_stride = (int32_t)a->page_table.stride[0];
    kp->q_latent = a->q_latent.data;
    kp->q_rope = a->q_rope.data;
    kp->out = a->out.data;
    return MLS_OK;
}

/* 0 when the batch is not one kcu can run: mla_attention then says why. */
static size_t eng_cuda_mla_workspace_size(void *ctx, const eng_mla_args *a)
{
    kcu_mla_params kp;
    kcu_mla_plan plan;

    if (eng_cuda_mla_params(a, &kp, NULL) != MLS_OK ||
        kcu_mla_plan_make(ctx, &kp, &plan, NULL) != MLS_OK) {
        return 0;
    }
    return plan.workspace_bytes;
}

static mls_status eng_cuda_mla_attention(void *ctx, const eng_mla_args *a, void *workspace,
                                         mls_err *err)
{
    kcu_mla_params kp;
    kcu_mla_plan plan;
    mls_status st;

    if ((st = eng_cuda_mla_params(a, &kp, err)) != MLS_OK ||
        (st = kcu_mla_plan_make(ctx, &kp, &plan, err)) != MLS_OK) {
        return st;
    }
    return kcu_mla_decode(ctx, &kp, &plan, workspace, plan.workspace_bytes, err);
}

static mls_status eng_cuda_moe_gate(void *ctx, const eng_gate_args *g, eng_tensor *scores,
                                    eng_tensor *topk, eng_tensor *topw, mls_err *err)
{
    const eng_route_params *r = g->route;
    kcu_moe_gate_params p = {
        .n_experts = r->n_experts,
        .top_k = r->top_k,
        .n_group = r->n_group,
        .topk_group = r->topk_group,
        .group_limited = r->group_limited,
        .score = r->softmax ? KCU_MOE_SCORE_SOFTMAX : KCU_MOE_SCORE_SIGMOID,
        .norm_topk_prob = r->norm_topk_prob,
        .v2_scaling = r->v2_scaling,
        .routed_scaling_factor = r->routed_scaling_factor,
    };

    ENG_CUDA_CHECK_DEVICE(scores, "moe_gate", "scores", err);
    ENG_CUDA_CHECK_DEVICE(topk, "moe_gate", "topk", err);
    ENG_CUDA_CHECK_DEVICE(topw, "moe_gate", "topw", err);
    if (g->bias != NULL) {
        ENG_CUDA_CHECK_DEVICE(g->bias, "moe_gate", "bias", err);
    }
    return kcu_moe_gate(ctx, &p, scores->data, g->bias != NULL ? g->bias->data : NULL,
                        scores->shape[0], topk->data, topw->data, err);
}

static mls_status eng_cuda_argmax(void *ctx, const eng_tensor *logits, eng_tensor *ids,
                                  mls_err *err)
{
    ENG_CUDA_CHECK_DEVICE(logits, "argmax", "logits", err);
    ENG_CUDA_CHECK_DEVICE(ids, "argmax", "ids", err);
    if (logits->shape[0] > 1 && logits->stride[0] != logits->shape[1]) {
        ENG_CUDA_UNSUPPORTED(err, "argmax: strided rows: kcu_argmax takes dense logits");
    }
    return kcu_argmax(ctx, logits->data, logits->shape[0], logits->shape[1], ids->data, NULL, err);
}

const eng_backend_ops eng_backend_cuda = {
    .name = "cuda",
    .device = ENG_DEVICE_CUDA,
    .loc = ENG_LOC_CUDA,
    .probe = eng_cuda_probe,
    .ctx_create = eng_cuda_ctx_create,
    .ctx_destroy = eng_cuda_ctx_destroy,
    .sync = eng_cuda_sync,
    .mem_alloc = eng_cuda_mem_alloc,
    .mem_free = eng_cuda_mem_free,
    .linear_upload = eng_cuda_linear_upload,
    .linear_release = eng_cuda_linear_release,
    .matmul = eng_cuda_matmul,
    .matmul_t = eng_cuda_matmul_t,
    .rmsnorm = eng_cuda_rmsnorm,
    .silu_mul = eng_cuda_silu_mul,
    .rope = eng_cuda_rope,
    .kv_store = eng_cuda_kv_store,
    .mla_workspace_size = eng_cuda_mla_workspace_size,
    .mla_attention = eng_cuda_mla_attention,
    .moe_gate = eng_cuda_moe_gate,
    .argmax = eng_cuda_argmax,
};
