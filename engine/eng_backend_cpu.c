/*
 * eng_backend_cpu.c - the CPU backend table: kernels/cpu behind
 * eng_backend_ops, over host memory. The context is a kc_pool. Every op is a
 * thin unwrapping of its tensors into the kc_* call the forward pass made
 * before the table took tensors; the kernels and their results are the same.
 */
#include <assert.h>

#include "eng_internal.h"
#include "mls_alloc.h"

/* A tensor in the wrong place is the caller's mistake, named in *err. */
#define ENG_CPU_CHECK_HOST(t, what, err)                                                       \
    do {                                                                                       \
        if ((t)->loc != ENG_LOC_HOST) {                                                        \
            mls_err_set((err), "cpu backend: %s: tensor '%s' is not in host memory", __func__, \
                        (what));                                                               \
            return MLS_ERR_INVALID_ARG;                                                        \
        }                                                                                      \
    } while (0)

static mls_status eng_cpu_probe(int index, mls_err *err)
{
    if (index != 0) {
        mls_err_set(err, "cpu backend: device index %d (the host is device 0)", index);
        return MLS_ERR_INVALID_ARG;
    }
    return MLS_OK;
}

static mls_status eng_cpu_ctx_create(int n_threads, int index, void **ctx_p, mls_err *err)
{
    kc_pool *pool;
    mls_status st = kc_pool_create(n_threads, &pool);

    if (st != MLS_OK) {
        mls_err_set(err, "cpu backend: cannot start %d threads", n_threads);
        return st;
    }
    *ctx_p = pool;
    return MLS_OK;
}

static void eng_cpu_ctx_destroy(void *ctx)
{
    kc_pool_destroy(ctx);
}

static mls_status eng_cpu_sync(void *ctx, mls_err *err)
{
    return MLS_OK; /* every op has finished when it returns */
}

static mls_status eng_cpu_mem_alloc(mls_alloc_tag tag, size_t bytes, void **ptr_p, mls_err *err)
{
    void *p = mls_alloc(tag, bytes);

    if (p == NULL) {
        mls_err_set(err, "cpu backend: cannot allocate %zu bytes (%s)", bytes,
                    mls_alloc_tag_name(tag));
        return MLS_ERR_NO_MEMORY;
    }
    *ptr_p = p;
    return MLS_OK;
}

static void eng_cpu_mem_free(mls_alloc_tag tag, void *ptr, size_t bytes)
{
    mls_free(tag, ptr, bytes);
}

static mls_status eng_cpu_linear_upload(void *ctx, eng_linear *w, mls_err *err)
{
    return MLS_OK; /* the kernels read the host view */
}

static void eng_cpu_linear_release(eng_linear *w)
{
}

static mls_status eng_cpu_matmul(void *ctx, const eng_linear *w, const eng_tensor *x,
                                 eng_tensor *y, mls_err *err)
{
    ENG_CPU_CHECK_HOST(x, "x", err);
    ENG_CPU_CHECK_HOST(y, "y", err);
    assert(x->shape[1] == w->m.cols && y->shape[1] == w->m.rows && x->shape[0] == y->shape[0]);
    kc_matmul(ctx, &w->m, x->data, x->shape[0], y->data);
    return MLS_OK;
}

static mls_status eng_cpu_matmul_t(void *ctx, const eng_linear *w, const eng_tensor *x,
                                   eng_tensor *y, mls_err *err)
{
    ENG_CPU_CHECK_HOST(x, "x", err);
    ENG_CPU_CHECK_HOST(y, "y", err);
    assert(x->shape[1] == w->m.rows && y->shape[1] == w->m.cols && x->shape[0] == y->shape[0]);
    kc_matmul_t(ctx, &w->m, x->data, x->shape[0], y->data);
    return MLS_OK;
}

static mls_status eng_cpu_rmsnorm(void *ctx, const eng_tensor *x, const eng_tensor *w, float eps,
                                  eng_tensor *out, mls_err *err)
{
    int64_t n = x->shape[0], dim = x->shape[1], stride = x->stride[0];

    ENG_CPU_CHECK_HOST(x, "x", err);
    ENG_CPU_CHECK_HOST(w, "w", err);
    ENG_CPU_CHECK_HOST(out, "out", err);
    assert(out->stride[0] == stride && w->shape[0] == dim);
    if (stride == dim || n == 1) {
        kc_rmsnorm(x->data, w->data, n, dim, eps, out->data);
        return MLS_OK;
    }
    for (int64_t r = 0; r < n; r++) {
        kc_rmsnorm((const float *)x->data + r * stride, w->data, 1, dim, eps,
                   (float *)out->data + r * stride);
    }
    return MLS_OK;
}

static mls_status eng_cpu_silu_mul(void *ctx, eng_tensor *gate, const eng_tensor *up, mls_err *err)
{
    ENG_CPU_CHECK_HOST(gate, "gate", err);
    ENG_CPU_CHECK_HOST(up, "up", err);
    kc_silu_mul(gate->data, up->data, eng_tensor_elems(gate));
    return MLS_OK;
}

static mls_status eng_cpu_rope(void *ctx, eng_tensor *x, const eng_tensor *pos,
                               const eng_tensor *inv_freq, float mscale, mls_err *err)
{
    int64_t n_vec = x->shape[1], dim = x->shape[2];

    ENG_CPU_CHECK_HOST(x, "x", err);
    ENG_CPU_CHECK_HOST(pos, "pos", err);
    ENG_CPU_CHECK_HOST(inv_freq, "inv_freq", err);
    for (int64_t t = 0; t < x->shape[0]; t++) {
        float *xt = (float *)x->data + t * x->stride[0];

        kc_rope_interleaved(xt, n_vec, dim, x->stride[1], ((const int32_t *)pos->data)[t],
                            inv_freq->data);
        if (mscale != 1.0f) {
            for (int64_t v = 0; v < n_vec; v++) {
                for (int64_t i = 0; i < dim; i++) {
                    xt[v * x->stride[1] + i] *= mscale;
                }
            }
        }
    }
    return MLS_OK;
}

static mls_status eng_cpu_kv_store(void *ctx, const kvl_layout *layout, eng_tensor *kv,
                                   const eng_tensor *latent, const eng_tensor *rope,
                                   const eng_tensor *page, const eng_tensor *slot, mls_err *err)
{
    ENG_CPU_CHECK_HOST(kv, "kv", err);
    ENG_CPU_CHECK_HOST(latent, "latent", err);
    ENG_CPU_CHECK_HOST(rope, "rope", err);
    ENG_CPU_CHECK_HOST(page, "page", err);
    ENG_CPU_CHECK_HOST(slot, "slot", err);
    for (int64_t t = 0; t < latent->shape[0]; t++) {
        uint8_t *row = (uint8_t *)kv->data +
                       kvl_slot_offset(layout->page_bytes, layout->row_bytes,
                                       ((const uint32_t *)page->data)[t],
                                       ((const uint32_t *)slot->data)[t]);

        kvl_row_store(layout, row, (const float *)latent->data + t * latent->stride[0],
                      (const float *)rope->data + t * rope->stride[0]);
    }
    return MLS_OK;
}

static void eng_cpu_mla_params(const eng_mla_args *a, kc_mla_params *mp)
{
    mp->layout = a->layout;
    mp->kv_base = a->kv.data;
    mp->n_heads = a->n_heads;
    mp->softmax_scale = a->softmax_scale;
    mp->q_latent = a->q_latent.data;
    mp->q_rope = a->q_rope.data;
    mp->out = a->out.data;
    mp->seqs = a->seqs;
    mp->n_seqs = a->n_seqs;
}

static size_t eng_cpu_mla_workspace_size(void *ctx, const eng_mla_args *a)
{
    kc_mla_params mp;

    eng_cpu_mla_params(a, &mp);
    return kc_mla_workspace_size(ctx, &mp);
}

static mls_status eng_cpu_mla_attention(void *ctx, const eng_mla_args *a, void *workspace,
                                        mls_err *err)
{
    kc_mla_params mp;

    ENG_CPU_CHECK_HOST(&a->kv, "kv", err);
    ENG_CPU_CHECK_HOST(&a->q_latent, "q_latent", err);
    ENG_CPU_CHECK_HOST(&a->q_rope, "q_rope", err);
    ENG_CPU_CHECK_HOST(&a->out, "out", err);
    eng_cpu_mla_params(a, &mp);
    kc_mla_attention(ctx, &mp, workspace);
    return MLS_OK;
}

static mls_status eng_cpu_moe_gate(void *ctx, const eng_gate_args *g, eng_tensor *scores,
                                   eng_tensor *topk, eng_tensor *topw, mls_err *err)
{
    int64_t E = scores->shape[1], K = topk->shape[1];
    const float *bias = g->bias != NULL ? g->bias->data : NULL;

    ENG_CPU_CHECK_HOST(scores, "scores", err);
    ENG_CPU_CHECK_HOST(topk, "topk", err);
    ENG_CPU_CHECK_HOST(topw, "topw", err);
    assert(g->scratch != NULL && g->scratch->shape[0] >= E);
    for (int64_t t = 0; t < scores->shape[0]; t++) {
        eng_route(g->route, bias, (float *)scores->data + t * E, g->scratch->data,
                  (int32_t *)topk->data + t * K, (float *)topw->data + t * K);
    }
    return MLS_OK;
}

static mls_status eng_cpu_argmax(void *ctx, const eng_tensor *logits, eng_tensor *ids,
                                 mls_err *err)
{
    int64_t vocab = logits->shape[1];

    ENG_CPU_CHECK_HOST(logits, "logits", err);
    ENG_CPU_CHECK_HOST(ids, "ids", err);
    for (int64_t r = 0; r < logits->shape[0]; r++) {
        const float *x = (const float *)logits->data + r * logits->stride[0];
        int32_t best = 0;

        for (int64_t i = 1; i < vocab; i++) {
            if (x[i] > x[best]) {
                best = (int32_t)i;
            }
        }
        ((int32_t *)ids->data)[r] = best;
    }
    return MLS_OK;
}

const eng_backend_ops eng_backend_cpu = {
    .name = "cpu",
    .device = ENG_DEVICE_CPU,
    .loc = ENG_LOC_HOST,
    .probe = eng_cpu_probe,
    .ctx_create = eng_cpu_ctx_create,
    .ctx_destroy = eng_cpu_ctx_destroy,
    .sync = eng_cpu_sync,
    .mem_alloc = eng_cpu_mem_alloc,
    .mem_free = eng_cpu_mem_free,
    .linear_upload = eng_cpu_linear_upload,
    .linear_release = eng_cpu_linear_release,
    .matmul = eng_cpu_matmul,
    .matmul_t = eng_cpu_matmul_t,
    .rmsnorm = eng_cpu_rmsnorm,
    .silu_mul = eng_cpu_silu_mul,
    .rope = eng_cpu_rope,
    .kv_store = eng_cpu_kv_store,
    .mla_workspace_size = eng_cpu_mla_workspace_size,
    .mla_attention = eng_cpu_mla_attention,
    .moe_gate = eng_cpu_moe_gate,
    .argmax = eng_cpu_argmax,
};
