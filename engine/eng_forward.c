/*
 * eng_forward.c - the DeepSeek-V2/V3 forward pass over a batch of tokens.
 *
 * One routine serves prefill (T tokens of one sequence) and batched decode
 * (one token of each of T sequences): every token carries its sequence and
 * position; the GEMMs run over all T rows at once. Per layer:
 *
 *   h      = rmsnorm(x)                                  (T, hidden)
 *   q      = q_b(rmsnorm(q_a(h)))  or  q_proj(h)         (T, heads, nope+rope)
 *   kv     = kv_a_proj_with_mqa(h)                       (T, R + D)
 *   latent = rmsnorm(kv[:, :R]);  k_pe = rope(kv[:, R:]) -> written into the pool
 *   q_lat  = q_nope . W_UK[h]   (absorbed)               (T, heads, R)
 *   att    = MLA attention over the paged latent cache   (T, heads, R)
 *   o      = o_proj(att . W_UV[h]^T)                     (T, hidden)
 *   x     += o;  x += ffn(rmsnorm(x))   (dense MLP, or routed + shared experts)
 *
 * The cache is only ever read as latent rows: decode never decompresses it.
 *
 * A DeepSeek-V4 model's context hands eng_prefill / eng_decode_step to
 * eng_v4_forward.c with the sequence's own state (eng_seq.v4).
 */
#include <math.h>
#include <string.h>

#include "eng_internal.h"
#include "eng_v4_forward.h"
#include "mls_alloc.h"
#include "mls_log.h"
#include "mls_num.h"

typedef struct {
    float *x;         /* (T, hidden) residual stream */
    float *h;         /* (T, hidden) normalised input of a block */
    float *qa;        /* (T, q_lora_rank) */
    float *q;         /* (T, heads * (nope + rope)) */
    float *kv;        /* (T, R + D) */
    float *q_lat;     /* (T, heads, R) absorbed queries */
    float *q_rope;    /* (T, heads, D) */
    float *att;       /* (T, heads, R) attention output in latent space */
    float *g_in;      /* (T, max(R, nope)) one head's gathered rows */
    float *g_out;     /* (T, max(R, v)) */
    float *attn_out;  /* (T, heads * v) */
    float *f_gate;    /* (T, max ffn width) */
    float *f_up;      /* (T, max ffn width) */
    float *f_in;      /* (T, hidden) rows routed to one expert */
    float *f_out;     /* (T, hidden) */
    float *moe;       /* (T, hidden) routed + shared expert sum */
    float *scores;    /* (T, E) router scores */
    float *biased;    /* (E) selection scores */
    float *topw;      /* (T, K) routing weights */
    int32_t *topk;    /* (T, K) chosen experts */
    int32_t *route;   /* (T * K) token indices grouped by expert */
    int32_t *route_k; /* (T * K) which of the token's K slots */
    int32_t *count;   /* (E + 1) tokens per expert, then offsets */
    int32_t *pos;     /* (T) position of each token */
    int32_t *tok_seq; /* (T) sequence index of each token */
    int32_t *out_row; /* (T) rows whose logits are wanted */
    kc_mla_seq *mseq; /* (T) attention descriptors */
} eng_scratch;

struct eng_ctx {
    const eng_model *model;
    eng_v4_ctx *v4;           /* DeepSeek-V4 models: their forward pass (eng_v4_forward.c) */
    kvl_dtype v4_kv_dtype;    /* DeepSeek-V4: how new sequences store their rows */
    eng_kv_pool *pool;
    const eng_backend_ops *be;
    void *bctx;               /* the backend's context (CPU: the kc_pool) */
    eng_loc loc;              /* where the scratch lives: be->loc */
    mls_err err;              /* the last failed op's cause */
    int32_t chunk;
    int32_t cap_tokens;       /* rows the scratch holds */
    void *scratch_mem;
    size_t scratch_bytes;
    eng_scratch s;
    void *mla_ws;
    size_t mla_ws_bytes;
};

/* Carve (or, with base NULL, size) the scratch tensors for T rows. */
static size_t eng_scratch_carve(const eng_config *c, int32_t T, uint8_t *base, eng_scratch *s)
{
    size_t off = 0;
    int64_t heads = c->num_attention_heads, R = c->kv_lora_rank, D = c->qk_rope_head_dim;
    int64_t nope = c->qk_nope_head_dim, v = c->v_head_dim;
    int64_t E = c->n_routed_experts > 0 ? c->n_routed_experts : 1;
    int64_t K = c->num_experts_per_tok > 0 ? c->num_experts_per_tok : 1;
    int64_t ffn = c->intermediate_size;
    int64_t shared = (int64_t)c->moe_intermediate_size * (c->n_shared_experts > 0 ? c->n_shared_experts : 1);

    if (shared > ffn) {
        ffn = shared;
    }
    if (c->moe_intermediate_size > ffn) {
        ffn = c->moe_intermediate_size;
    }
#define ENG_CARVE(field, count)                                                   \
    do {                                                                          \
        size_t bytes_ = ((size_t)(count) * sizeof(*s->field) + 63) & ~(size_t)63; \
        if (base != NULL) {                                                       \
            s->field = (void *)(base + off);                                      \
        }                                                                         \
        off += bytes_;                                                            \
    } while (0)
    ENG_CARVE(x, T * c->hidden_size);
    ENG_CARVE(h, T * c->hidden_size);
    ENG_CARVE(qa, T * (c->q_lora_rank > 0 ? c->q_lora_rank : 1));
    ENG_CARVE(q, T * heads * (nope + D));
    ENG_CARVE(kv, T * (R + D));
    ENG_CARVE(q_lat, T * heads * R);
    ENG_CARVE(q_rope, T * heads * D);
    ENG_CARVE(att, T * heads * R);
    ENG_CARVE(g_in, T * (R > nope ? R : nope));
    ENG_CARVE(g_out, T * (R > v ? R : v));
    ENG_CARVE(attn_out, T * heads * v);
    ENG_CARVE(f_gate, T * ffn);
    ENG_CARVE(f_up, T * ffn);
    ENG_CARVE(f_in, T * c->hidden_size);
    ENG_CARVE(f_out, T * c->hidden_size);
    ENG_CARVE(moe, T * c->hidden_size);
    ENG_CARVE(scores, T * E);
    ENG_CARVE(biased, E);
    ENG_CARVE(topw, T * K);
    ENG_CARVE(topk, T * K);
    ENG_CARVE(route, T * K);
    ENG_CARVE(route_k, T * K);
    ENG_CARVE(count, E + 1);
    ENG_CARVE(pos, T);
    ENG_CARVE(tok_seq, T);
    ENG_CARVE(out_row, T);
    ENG_CARVE(mseq, T);
#undef ENG_CARVE
    return off;
}

static mls_status eng_ctx_reserve(eng_ctx *ctx, int32_t T)
{
    const eng_config *c = &ctx->model->cfg;
    size_t bytes;
    void *mem;

    if (T <= ctx->cap_tokens) {
        return MLS_OK;
    }
    bytes = eng_scratch_carve(c, T, NULL, &ctx->s);
    mem = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes);
    if (mem == NULL) {
        mls_error("engine: cannot allocate %zu bytes of scratch for %d tokens", bytes, T);
        return MLS_ERR_NO_MEMORY;
    }
    mls_free(MLS_ALLOC_TAG_SCRATCH, ctx->scratch_mem, ctx->scratch_bytes);
    ctx->scratch_mem = mem;
    ctx->scratch_bytes = bytes;
    eng_scratch_carve(c, T, mem, &ctx->s);
    ctx->cap_tokens = T;
    return MLS_OK;
}

/* A DeepSeek-V4 model's context: the CPU, no pool (the state is per sequence). */
static mls_status eng_ctx_create_v4(const eng_model *model, eng_kv_pool *pool,
                                    const eng_ctx_opts *opts, eng_ctx **ctx_p, mls_err *err)
{
    eng_ctx *ctx;
    mls_status st;

    if (opts->device != ENG_DEVICE_CPU) {
        mls_err_set(err, "engine: DeepSeek-V4 models run on the CPU only (not %s) for now",
                    eng_device_name(opts->device));
        return MLS_ERR_UNSUPPORTED;
    }
    if (pool != NULL) {
        mls_err_set(err, "engine: a DeepSeek-V4 model keeps its KV state per sequence, not in a "
                    "latent KV pool (pass none)");
        return MLS_ERR_INVALID_ARG;
    }
    if (opts->v4_kv_dtype != KVL_DTYPE_F32 && opts->v4_kv_dtype != KVL_DTYPE_FP8) {
        mls_err_set(err, "engine: DeepSeek-V4 stores its KV state as f32 or fp8, not %s",
                    kvl_dtype_name(opts->v4_kv_dtype));
        return MLS_ERR_UNSUPPORTED;
    }
    if (opts->v4_kv_dtype == KVL_DTYPE_FP8 &&
        (model->cfg.v4.head_dim - model->cfg.qk_rope_head_dim) % 64 != 0) {
        mls_err_set(err, "engine: an fp8 DeepSeek-V4 state needs nope dims (head_dim - "
                    "qk_rope_head_dim = %d) in tiles of 64",
                    model->cfg.v4.head_dim - model->cfg.qk_rope_head_dim);
        return MLS_ERR_UNSUPPORTED;
    }
    if ((ctx = mls_alloc(MLS_ALLOC_TAG_SCRATCH, sizeof(*ctx))) == NULL) {
        mls_err_set(err, "engine: out of memory for a context");
        return MLS_ERR_NO_MEMORY;
    }
    if ((st = eng_v4_ctx_create(model->v4, opts->n_threads, &ctx->v4, err)) != MLS_OK) {
        mls_free(MLS_ALLOC_TAG_SCRATCH, ctx, sizeof(*ctx));
        return st;
    }
    ctx->model = model;
    ctx->v4_kv_dtype = opts->v4_kv_dtype;
    ctx->be = &eng_backend_cpu;
    ctx->loc = ENG_LOC_HOST;
    ctx->chunk = 256;
    *ctx_p = ctx;
    return MLS_OK;
}

mls_status eng_ctx_create_opts(const eng_model *model, eng_kv_pool *pool,
                               const eng_ctx_opts *opts, eng_ctx **ctx_p, mls_err *err)
{
    const eng_config *c = &model->cfg;
    const kvl_layout *layout;
    eng_ctx_opts cpu = {0, ENG_DEVICE_CPU, 0, KVL_DTYPE_F32};
    const eng_backend_ops *be;
    void *bctx = NULL;
    eng_ctx *ctx;
    mls_status st;

    if (opts == NULL) {
        opts = &cpu;
    }
    if (model->v4 != NULL) {
        return eng_ctx_create_v4(model, pool, opts, ctx_p, err);
    }
    layout = eng_kv_pool_layout(pool);
    if (layout->kv_lora_rank != (uint32_t)c->kv_lora_rank ||
        layout->rope_dim != (uint32_t)c->qk_rope_head_dim ||
        eng_kv_pool_layers(pool) != c->num_hidden_layers) {
        mls_err_set(err, "engine: kv pool shape (R=%u D=%u layers=%d) does not fit the model "
                    "(R=%d D=%d layers=%d)", layout->kv_lora_rank, layout->rope_dim,
                    eng_kv_pool_layers(pool), c->kv_lora_rank, c->qk_rope_head_dim,
                    c->num_hidden_layers);
        return MLS_ERR_INVALID_ARG;
    }
    if ((st = eng_device_check(opts->device, opts->device_index, err)) != MLS_OK ||
        (st = eng_backend_get(opts->device, &be, err)) != MLS_OK) {
        return st;
    }
    if (eng_kv_pool_device(pool) != opts->device) {
        mls_err_set(err, "engine: the kv pool lives on %s, the context computes on %s",
                    eng_device_name(eng_kv_pool_device(pool)), eng_device_name(opts->device));
        return MLS_ERR_INVALID_ARG;
    }
    if ((st = be->ctx_create(opts->n_threads, opts->device_index, &bctx, err)) != MLS_OK) {
        return st;
    }
    if (be->loc != ENG_LOC_HOST) {
        /* What remains: weights on the device (eng_linear.dev, norms), the
         * scratch in device memory, and the host glue of this file (embedding
         * lookup, residual adds, per-head gathers, expert grouping) as ops. */
        mls_err_set(err, "engine: the %s backend is built but the forward pass does not run "
                    "on it yet (weights, scratch and the residual/gather glue are host-only)",
                    be->name);
        st = MLS_ERR_UNSUPPORTED;
        goto err_destroy_backend;
    }
    ctx = mls_alloc(MLS_ALLOC_TAG_SCRATCH, sizeof(*ctx));
    if (ctx == NULL) {
        mls_err_set(err, "engine: out of memory for a context");
        st = MLS_ERR_NO_MEMORY;
        goto err_destroy_backend;
    }
    ctx->model = model;
    ctx->pool = pool;
    ctx->be = be;
    ctx->bctx = bctx;
    ctx->loc = be->loc;
    ctx->chunk = 256;
    *ctx_p = ctx;
    return MLS_OK;

err_destroy_backend:
    be->ctx_destroy(bctx);
    return st;
}

mls_status eng_ctx_create(const eng_model *model, eng_kv_pool *pool, int n_threads,
                          eng_ctx **ctx_p)
{
    eng_ctx_opts opts = {n_threads, ENG_DEVICE_CPU, 0, KVL_DTYPE_F32};
    mls_err err = {{0}};
    mls_status st = eng_ctx_create_opts(model, pool, &opts, ctx_p, &err);

    if (st != MLS_OK) {
        mls_error("%s", err.msg);
    }
    return st;
}

void eng_ctx_destroy(eng_ctx *ctx)
{
    if (ctx == NULL) {
        return;
    }
    eng_v4_ctx_destroy(ctx->v4);
    ctx->be->ctx_destroy(ctx->bctx);
    mls_free(MLS_ALLOC_TAG_SCRATCH, ctx->scratch_mem, ctx->scratch_bytes);
    ctx->be->mem_free(MLS_ALLOC_TAG_SCRATCH, ctx->mla_ws, ctx->mla_ws_bytes);
    mls_free(MLS_ALLOC_TAG_SCRATCH, ctx, sizeof(*ctx));
}

eng_device eng_ctx_device(const eng_ctx *ctx)
{
    return ctx->be->device;
}

void eng_ctx_set_chunk(eng_ctx *ctx, int32_t chunk_tokens)
{
    ctx->chunk = chunk_tokens > 0 ? chunk_tokens : 256;
}

/* ---- backend ops on the context's scratch ------------------------------------ */

/* An op's status passes straight up; its cause is in ctx->err, logged once by
 * the API call that ran the forward pass. */
#define ENG_TRY(expr)            \
    do {                         \
        mls_status st_ = (expr); \
        if (st_ != MLS_OK) {     \
            return st_;          \
        }                        \
    } while (0)

/* Dense f32 (rows, cols) scratch or weight data where the context computes. */
static inline eng_tensor eng_f32(const eng_ctx *ctx, const float *data, int64_t rows, int64_t cols)
{
    return eng_tensor_2d(ctx->loc, ENG_DTYPE_F32, (void *)data, rows, cols);
}

/* y (n, w.rows) = x (n, w.cols) . W^T */
static inline mls_status eng_mm(eng_ctx *ctx, const eng_linear *w, const float *x, int64_t n,
                                float *y)
{
    eng_tensor tx = eng_f32(ctx, x, n, w->m.cols), ty = eng_f32(ctx, y, n, w->m.rows);
    return ctx->be->matmul(ctx->bctx, w, &tx, &ty, &ctx->err);
}

/* y (n, w.cols) = x (n, w.rows) . W */
static inline mls_status eng_mm_t(eng_ctx *ctx, const eng_linear *w, const float *x, int64_t n,
                                  float *y)
{
    eng_tensor tx = eng_f32(ctx, x, n, w->m.rows), ty = eng_f32(ctx, y, n, w->m.cols);
    return ctx->be->matmul_t(ctx->bctx, w, &tx, &ty, &ctx->err);
}

/* out (n, dim) = rmsnorm(x (n, dim)) * w (dim); rows `stride` floats apart. */
static inline mls_status eng_norm(eng_ctx *ctx, const float *x, const float *w, int64_t n,
                                  int64_t dim, int64_t stride, float *out)
{
    eng_tensor tx = eng_tensor_2d_strided(ctx->loc, ENG_DTYPE_F32, (void *)x, n, dim, stride);
    eng_tensor to = eng_tensor_2d_strided(ctx->loc, ENG_DTYPE_F32, out, n, dim, stride);
    eng_tensor tw = eng_tensor_1d(ctx->loc, ENG_DTYPE_F32, (void *)w, dim);
    return ctx->be->rmsnorm(ctx->bctx, &tx, &tw, ctx->model->cfg.rms_norm_eps, &to, &ctx->err);
}

/* Rotary (and the YaRN mscale) on one token's n_vec vectors of dim floats,
 * vec_stride floats apart, at position *pos. */
static inline mls_status eng_rope(eng_ctx *ctx, float *x, int64_t n_vec, int64_t dim,
                                  int64_t vec_stride, const int32_t *pos)
{
    const eng_model *m = ctx->model;
    eng_tensor tx = {x, ENG_DTYPE_F32, ctx->loc, 3, {1, n_vec, dim, 0},
                     {n_vec * vec_stride, vec_stride, 1, 0}};
    eng_tensor tp = eng_tensor_1d(ctx->loc, ENG_DTYPE_I32, (void *)pos, 1);
    eng_tensor tf = eng_tensor_1d(ctx->loc, ENG_DTYPE_F32, m->inv_freq, dim / 2);
    return ctx->be->rope(ctx->bctx, &tx, &tp, &tf, m->rope_mscale, &ctx->err);
}

/* ---- attention ------------------------------------------------------------ */

static mls_status eng_attention(eng_ctx *ctx, const eng_layer *L, int32_t layer, int32_t T,
                                eng_seq *const *seqs, int32_t n_seqs)
{
    const eng_model *m = ctx->model;
    const eng_config *c = &m->cfg;
    const eng_backend_ops *be = ctx->be;
    const kvl_layout *layout = eng_kv_pool_layout(ctx->pool);
    eng_scratch *s = &ctx->s;
    int64_t H = c->hidden_size, heads = c->num_attention_heads, R = c->kv_lora_rank;
    int64_t D = c->qk_rope_head_dim, nope = c->qk_nope_head_dim, v = c->v_head_dim;
    int64_t qk = nope + D;
    uint8_t *kv_base = eng_kv_pool_layer_base(ctx->pool, layer);
    eng_mla_args mp;
    size_t ws;

    /* queries */
    if (c->q_lora_rank > 0) {
        ENG_TRY(eng_mm(ctx, &L->q_a, s->h, T, s->qa));
        ENG_TRY(eng_norm(ctx, s->qa, L->q_a_norm, T, c->q_lora_rank, c->q_lora_rank, s->qa));
        ENG_TRY(eng_mm(ctx, &L->q_b, s->qa, T, s->q));
    } else {
        ENG_TRY(eng_mm(ctx, &L->q, s->h, T, s->q));
    }
    /* this layer's latent rows: normalise, rotate, store into the pages */
    ENG_TRY(eng_mm(ctx, &L->kv_a, s->h, T, s->kv));
    for (int32_t t = 0; t < T; t++) {
        float *row = s->kv + t * (R + D);
        const eng_seq *seq = seqs[s->tok_seq[t]];
        int32_t p = s->pos[t];
        uint8_t *dst;

        ENG_TRY(eng_norm(ctx, row, L->kv_a_norm, 1, R, R + D, row));
        ENG_TRY(eng_rope(ctx, row + R, 1, D, D, &s->pos[t]));
        ENG_TRY(eng_rope(ctx, s->q + t * heads * qk + nope, heads, D, qk, &s->pos[t]));
        dst = kvl_row_ptr(layout, kv_base, seq->pages, (uint64_t)p);
        kvl_row_store(layout, dst, row, row + R);
    }

    /* absorb W_UK: q_lat[t, h, :] = q_nope[t, h, :] . kv_b[h*(nope+v) : +nope, :] */
    for (int64_t h = 0; h < heads; h++) {
        eng_linear wuk = L->kv_b;
        wuk.m.row0 = h * (nope + v);
        wuk.m.rows = nope;
        for (int32_t t = 0; t < T; t++) {
            memcpy(s->g_in + t * nope, s->q + t * heads * qk + h * qk, sizeof(float) * nope);
            memcpy(s->q_rope + (t * heads + h) * D, s->q + t * heads * qk + h * qk + nope,
                   sizeof(float) * D);
        }
        ENG_TRY(eng_mm_t(ctx, &wuk, s->g_in, T, s->g_out));
        for (int32_t t = 0; t < T; t++) {
            memcpy(s->q_lat + (t * heads + h) * R, s->g_out + t * R, sizeof(float) * R);
        }
    }

    /* attention over the latent cache */
    for (int32_t i = 0; i < n_seqs; i++) {
        s->mseq[i].page_table = seqs[i]->pages;
    }
    memset(&mp, 0, sizeof(mp));
    mp.layout = layout;
    mp.kv = eng_tensor_2d(ctx->loc, ENG_DTYPE_U8, kv_base, ctx->pool->n_pages,
                          (int64_t)layout->page_bytes);
    mp.n_heads = (int32_t)heads;
    mp.softmax_scale = m->softmax_scale;
    mp.q_latent = eng_f32(ctx, s->q_lat, T, heads * R);
    mp.q_rope = eng_f32(ctx, s->q_rope, T, heads * D);
    mp.out = eng_f32(ctx, s->att, T, heads * R);
    mp.seqs = s->mseq;
    mp.n_seqs = n_seqs;
    ws = be->mla_workspace_size(ctx->bctx, &mp);
    if (ws > ctx->mla_ws_bytes) {
        void *mem = NULL;
        ENG_TRY(be->mem_alloc(MLS_ALLOC_TAG_SCRATCH, ws, &mem, &ctx->err));
        be->mem_free(MLS_ALLOC_TAG_SCRATCH, ctx->mla_ws, ctx->mla_ws_bytes);
        ctx->mla_ws = mem;
        ctx->mla_ws_bytes = ws;
    }
    ENG_TRY(be->mla_attention(ctx->bctx, &mp, ctx->mla_ws, &ctx->err));

    /* W_UV: attn_out[t, h*v + j] = att[t, h, :] . kv_b[h*(nope+v) + nope + j, :] */
    for (int64_t h = 0; h < heads; h++) {
        eng_linear wuv = L->kv_b;
        wuv.m.row0 = h * (nope + v) + nope;
        wuv.m.rows = v;
        for (int32_t t = 0; t < T; t++) {
            memcpy(s->g_in + t * R, s->att + (t * heads + h) * R, sizeof(float) * R);
        }
        ENG_TRY(eng_mm(ctx, &wuv, s->g_in, T, s->g_out));
        for (int32_t t = 0; t < T; t++) {
            memcpy(s->attn_out + t * heads * v + h * v, s->g_out + t * v, sizeof(float) * v);
        }
    }
    ENG_TRY(eng_mm(ctx, &L->o, s->attn_out, T, s->f_out));
    for (int64_t i = 0; i < (int64_t)T * H; i++) {
        s->x[i] += s->f_out[i];
    }
    return MLS_OK;
}

/* ---- feed-forward ---------------------------------------------------------- */

/* out[n, hidden] = down(silu(gate(in)) * up(in)) */
static mls_status eng_mlp_run(eng_ctx *ctx, const eng_mlp *mlp, const float *in, int32_t n,
                              float *out)
{
    int64_t inter = mlp->gate.m.rows;
    eng_tensor gate = eng_f32(ctx, ctx->s.f_gate, n, inter), up = eng_f32(ctx, ctx->s.f_up, n, inter);

    ENG_TRY(eng_mm(ctx, &mlp->gate, in, n, ctx->s.f_gate));
    ENG_TRY(eng_mm(ctx, &mlp->up, in, n, ctx->s.f_up));
    ENG_TRY(ctx->be->silu_mul(ctx->bctx, &gate, &up, &ctx->err));
    return eng_mm(ctx, &mlp->down, ctx->s.f_gate, n, out);
}

static mls_status eng_moe(eng_ctx *ctx, const eng_layer *L, int32_t T)
{
    const eng_config *c = &ctx->model->cfg;
    eng_scratch *s = &ctx->s;
    int32_t E = c->n_routed_experts, K = c->num_experts_per_tok;
    int64_t H = c->hidden_size;
    eng_tensor scores = eng_f32(ctx, s->scores, T, E), topw = eng_f32(ctx, s->topw, T, K);
    eng_tensor topk = eng_tensor_2d(ctx->loc, ENG_DTYPE_I32, s->topk, T, K);
    eng_tensor bias = eng_tensor_1d(ctx->loc, ENG_DTYPE_F32, L->router_bias, E);
    eng_tensor biased = eng_tensor_1d(ctx->loc, ENG_DTYPE_F32, s->biased, E);
    eng_gate_args gate = {&ctx->model->route, L->router_bias != NULL ? &bias : NULL, &biased};

    ENG_TRY(eng_mm(ctx, &L->router, s->h, T, s->scores));
    ENG_TRY(ctx->be->moe_gate(ctx->bctx, &gate, &scores, &topk, &topw, &ctx->err));
    /* group (token, slot) pairs by expert: counting sort */
    memset(s->count, 0, sizeof(int32_t) * (size_t)(E + 1));
    for (int32_t i = 0; i < T * K; i++) {
        s->count[s->topk[i] + 1]++;
    }
    for (int32_t e = 0; e < E; e++) {
        s->count[e + 1] += s->count[e];
    }
    for (int32_t i = 0; i < T * K; i++) {
        int32_t e = s->topk[i];
        int32_t at = s->count[e]++;
        s->route[at] = i / K;
        s->route_k[at] = i;
    }
    /* count[e] now holds the end of expert e's run; its start is count[e-1] */
    memset(s->moe, 0, sizeof(float) * (size_t)(T * H));
    for (int32_t e = 0; e < E; e++) {
        int32_t begin = e > 0 ? s->count[e - 1] : 0, n = s->count[e] - begin;
        if (n == 0) {
            continue;
        }
        for (int32_t i = 0; i < n; i++) {
            memcpy(s->f_in + i * H, s->h + (int64_t)s->route[begin + i] * H, sizeof(float) * H);
        }
        ENG_TRY(eng_mlp_run(ctx, &L->experts[e], s->f_in, n, s->f_out));
        for (int32_t i = 0; i < n; i++) {
            float w = s->topw[s->route_k[begin + i]];
            float *dst = s->moe + (int64_t)s->route[begin + i] * H;
            const float *src = s->f_out + i * H;
            for (int64_t j = 0; j < H; j++) {
                dst[j] += w * src[j];
            }
        }
    }
    if (c->n_shared_experts > 0) {
        ENG_TRY(eng_mlp_run(ctx, &L->shared, s->h, T, s->f_out));
        for (int64_t i = 0; i < (int64_t)T * H; i++) {
            s->moe[i] += s->f_out[i];
        }
    }
    for (int64_t i = 0; i < (int64_t)T * H; i++) {
        s->x[i] += s->moe[i];
    }
    return MLS_OK;
}

/* ---- whole model --------------------------------------------------------------- */

/*
 * Run T tokens (ids, with s.pos / s.tok_seq / s.mseq filled by the caller)
 * through every layer; logits for the n_out rows listed in s.out_row go to
 * logits_out [n_out, vocab].
 */
static mls_status eng_forward(eng_ctx *ctx, const int32_t *ids, int32_t T, eng_seq *const *seqs,
                              int32_t n_seqs, int32_t n_out, float *logits_out,
                              eng_layer_done_fn layer_done, void *layer_done_arg)
{
    const eng_model *m = ctx->model;
    const eng_config *c = &m->cfg;
    eng_scratch *s = &ctx->s;
    int64_t H = c->hidden_size;
    mls_status st;

    for (int32_t t = 0; t < T; t++) {
        const uint16_t *e = m->embed + (int64_t)ids[t] * H;
        for (int64_t j = 0; j < H; j++) {
            s->x[t * H + j] = mls_bf16_to_f32(e[j]);
        }
    }
    for (int32_t l = 0; l < c->num_hidden_layers; l++) {
        const eng_layer *L = &m->layers[l];

        ENG_TRY(eng_norm(ctx, s->x, L->attn_norm, T, H, H, s->h));
        st = eng_attention(ctx, L, l, T, seqs, n_seqs);
        if (st != MLS_OK) {
            return st;
        }
        if (layer_done != NULL) {
            layer_done(layer_done_arg, l, s->pos[0], s->pos[T - 1] + 1);
        }
        ENG_TRY(eng_norm(ctx, s->x, L->ffn_norm, T, H, H, s->h));
        if (L->is_moe) {
            ENG_TRY(eng_moe(ctx, L, T));
        } else {
            ENG_TRY(eng_mlp_run(ctx, &L->mlp, s->h, T, s->f_out));
            for (int64_t i = 0; i < (int64_t)T * H; i++) {
                s->x[i] += s->f_out[i];
            }
        }
    }
    if (n_out > 0 && logits_out != NULL) {
        for (int32_t i = 0; i < n_out; i++) {
            ENG_TRY(eng_norm(ctx, s->x + (int64_t)s->out_row[i] * H, m->final_norm, 1, H, H,
                             s->h + (int64_t)i * H));
        }
        ENG_TRY(eng_mm(ctx, &m->lm_head, s->h, n_out, logits_out));
    }
    return MLS_OK;
}

static mls_status eng_check_ids(const eng_config *c, const int32_t *ids, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= c->vocab_size) {
            mls_error("engine: token id %d at index %d is outside the vocabulary [0, %d)", ids[i],
                      i, c->vocab_size);
            return MLS_ERR_INVALID_ARG;
        }
    }
    return MLS_OK;
}

static bool eng_seq_has_room(const eng_seq *seq, int32_t n_tokens)
{
    return (int64_t)seq->n_pages * KVL_PAGE_TOKENS >= (int64_t)n_tokens;
}

/* ---- DeepSeek-V4 ---------------------------------------------------------------- */

/* ids[n] of seq through the V4 forward pass in chunks of ctx->chunk; logits as
 * eng_prefill's (all_logits: every row; else the last token's; NULL: none). */
static mls_status eng_forward_v4(eng_ctx *ctx, eng_seq *seq, const int32_t *ids, int32_t n,
                                 bool all_logits, float *logits_out)
{
    int32_t V = ctx->model->cfg.vocab_size;
    mls_status st;

    if (seq->v4 == NULL) {
        if (seq->n_tokens != 0) {
            mls_error("engine: a DeepSeek-V4 sequence of %d tokens has no state", seq->n_tokens);
            return MLS_ERR_INVALID_ARG;
        }
        if ((st = eng_v4_state_create(ctx->model->v4, ctx->v4_kv_dtype, &seq->v4)) != MLS_OK) {
            mls_error("engine: cannot make a DeepSeek-V4 sequence state (%s)",
                      mls_status_message(st));
            return st;
        }
    }
    for (int32_t off = 0; off < n; off += ctx->chunk) {
        int32_t T = n - off < ctx->chunk ? n - off : ctx->chunk;
        float *out = NULL;
        if (logits_out != NULL && all_logits) {
            out = logits_out + (size_t)off * V;
        } else if (logits_out != NULL && off + T == n) {
            out = logits_out;
        }
        if ((st = eng_v4_forward(ctx->v4, seq->v4, ids + off, T, all_logits, out, &ctx->err)) !=
            MLS_OK) {
            mls_error("engine: %s", ctx->err.msg);
            return st;
        }
        seq->n_tokens = seq->v4->n_tokens;
    }
    return MLS_OK;
}

mls_status eng_prefill(eng_ctx *ctx, eng_seq *seq, const int32_t *ids, int32_t n,
                       bool all_logits, float *logits_out, eng_layer_done_fn layer_done,
                       void *layer_done_arg)
{
    const eng_config *c = &ctx->model->cfg;
    eng_seq *seqs[1] = {seq};
    mls_status st;

    if (ctx->v4 != NULL) {
        if (n <= 0) {
            return MLS_ERR_INVALID_ARG;
        }
        if ((st = eng_check_ids(c, ids, n)) != MLS_OK) {
            return st;
        }
        return eng_forward_v4(ctx, seq, ids, n, all_logits, logits_out);
    }

    if (n <= 0 || !eng_seq_has_room(seq, seq->n_tokens + n)) {
        mls_error("engine: prefill of %d tokens at %d does not fit the sequence's %u pages", n,
                  seq->n_tokens, seq->n_pages);
        return MLS_ERR_INVALID_ARG;
    }
    if ((st = eng_check_ids(c, ids, n)) != MLS_OK) {
        return st;
    }
    for (int32_t off = 0; off < n; off += ctx->chunk) {
        int32_t T = n - off < ctx->chunk ? n - off : ctx->chunk;
        bool last = off + T == n;
        int32_t n_out = 0;
        float *out = NULL;

        if ((st = eng_ctx_reserve(ctx, T)) != MLS_OK) {
            return st;
        }
        for (int32_t t = 0; t < T; t++) {
            ctx->s.pos[t] = seq->n_tokens + t;
            ctx->s.tok_seq[t] = 0;
        }
        ctx->s.mseq[0].kv_len = seq->n_tokens + T;
        ctx->s.mseq[0].n_q = T;
        ctx->s.mseq[0].q_index = 0;
        if (logits_out != NULL && all_logits) {
            for (int32_t t = 0; t < T; t++) {
                ctx->s.out_row[t] = t;
            }
            n_out = T;
            out = logits_out + (int64_t)off * c->vocab_size;
        } else if (logits_out != NULL && last) {
            ctx->s.out_row[0] = T - 1;
            n_out = 1;
            out = logits_out;
        }
        st = eng_forward(ctx, ids + off, T, seqs, 1, n_out, out, layer_done, layer_done_arg);
        if (st != MLS_OK) {
            mls_error("engine: prefill on %s: %s", ctx->be->name, ctx->err.msg);
            return st;
        }
        seq->n_tokens += T;
    }
    return MLS_OK;
}

mls_status eng_decode_step(eng_ctx *ctx, eng_seq *const *seqs, const int32_t *ids,
                           int32_t n_seqs, float *logits_out)
{
    const eng_config *c = &ctx->model->cfg;
    mls_status st;

    if (n_seqs <= 0) {
        return MLS_ERR_INVALID_ARG;
    }
    if ((st = eng_check_ids(c, ids, n_seqs)) != MLS_OK) {
        return st;
    }
    if (ctx->v4 != NULL) {
        /* one sequence at a time: the V4 pass does not batch sequences yet */
        for (int32_t i = 0; i < n_seqs; i++) {
            float *out = logits_out != NULL ? logits_out + (size_t)i * c->vocab_size : NULL;
            if ((st = eng_forward_v4(ctx, seqs[i], &ids[i], 1, false, out)) != MLS_OK) {
                return st;
            }
        }
        return MLS_OK;
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        if (!eng_seq_has_room(seqs[i], seqs[i]->n_tokens + 1)) {
            mls_error("engine: sequence %d (%d tokens) has no page for its next token", i,
                      seqs[i]->n_tokens);
            return MLS_ERR_INVALID_ARG;
        }
    }
    if ((st = eng_ctx_reserve(ctx, n_seqs)) != MLS_OK) {
        return st;
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        ctx->s.pos[i] = seqs[i]->n_tokens;
        ctx->s.tok_seq[i] = i;
        ctx->s.out_row[i] = i;
        ctx->s.mseq[i].kv_len = seqs[i]->n_tokens + 1;
        ctx->s.mseq[i].n_q = 1;
        ctx->s.mseq[i].q_index = i;
    }
    st = eng_forward(ctx, ids, n_seqs, seqs, n_seqs, n_seqs, logits_out, NULL, NULL);
    if (st != MLS_OK) {
        mls_error("engine: decode on %s: %s", ctx->be->name, ctx->err.msg);
        return st;
    }
    for (int32_t i = 0; i < n_seqs; i++) {
        seqs[i]->n_tokens++;
    }
    return MLS_OK;
}
