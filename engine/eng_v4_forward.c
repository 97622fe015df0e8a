/*
 * eng_v4_forward.c - DeepSeek-V4's forward pass: the context, the
 * per-sequence state, the mHC mixing around each half-block, the embedding
 * and the head (see eng_v4_forward.h; README-v4 section 4).
 */
#include <math.h>
#include <string.h>

#include "eng_v4_forward.h"
#include "eng_v4_ops.h"
#include "mls_alloc.h"
#include "mls_num.h"

/* ---- context -------------------------------------------------------------------- */

mls_status eng_v4_ctx_create(const eng_v4_model *model, int n_threads, eng_v4_ctx **ctx_p,
                             mls_err *err)
{
    const eng_config *c = &model->cfg;
    int32_t r = c->qk_rope_head_dim;
    size_t fbytes = sizeof(float) * (size_t)(r / 2);
    eng_v4_ctx *ctx;
    mls_status st;

    if ((ctx = mls_alloc(MLS_ALLOC_TAG_MISC, sizeof(*ctx))) == NULL) {
        mls_err_set(err, "out of memory for a V4 context");
        return MLS_ERR_NO_MEMORY;
    }
    memset(ctx, 0, sizeof(*ctx));
    ctx->model = model;
    ctx->ops = &eng_backend_cpu;
    ctx->freqs_swa = mls_alloc(MLS_ALLOC_TAG_MISC, fbytes);
    ctx->freqs_cmp = mls_alloc(MLS_ALLOC_TAG_MISC, fbytes);
    if (ctx->freqs_swa == NULL || ctx->freqs_cmp == NULL) {
        mls_err_set(err, "out of memory for the rotary tables");
        st = MLS_ERR_NO_MEMORY;
        goto err_destroy;
    }
    eng_v4_rope_params swa = {r,
                              c->rope_theta,
                              false,
                              c->rope_factor,
                              c->rope_original_max_position_embeddings,
                              c->rope_beta_fast,
                              c->rope_beta_slow};
    eng_v4_rope_params cmp = swa;
    cmp.theta = c->v4.compress_rope_theta;
    cmp.yarn = c->rope_yarn && c->rope_original_max_position_embeddings > 0;
    eng_v4_rope_freqs(&swa, ctx->freqs_swa);
    eng_v4_rope_freqs(&cmp, ctx->freqs_cmp);
    if ((st = ctx->ops->ctx_create(n_threads, 0, &ctx->bctx, err)) != MLS_OK) {
        goto err_destroy;
    }
    *ctx_p = ctx;
    return MLS_OK;

err_destroy:
    eng_v4_ctx_destroy(ctx);
    return st;
}

void eng_v4_ctx_destroy(eng_v4_ctx *ctx)
{
    if (ctx == NULL) {
        return;
    }
    size_t fbytes = sizeof(float) * (size_t)(ctx->model->cfg.qk_rope_head_dim / 2);
    if (ctx->bctx != NULL) {
        ctx->ops->ctx_destroy(ctx->bctx);
    }
    mls_free(MLS_ALLOC_TAG_MISC, ctx->freqs_swa, fbytes);
    mls_free(MLS_ALLOC_TAG_MISC, ctx->freqs_cmp, fbytes);
    mls_free(MLS_ALLOC_TAG_MISC, ctx, sizeof(*ctx));
}

/* ---- state ---------------------------------------------------------------------- */

static size_t v4_cmp_rows_bytes(const eng_v4_cmp_state *cs)
{
    int32_t coff = cs->ratio == 4 ? 2 : 1;
    return sizeof(float) * (size_t)(coff * cs->ratio) * (size_t)(coff * cs->width);
}

static mls_status v4_cmp_state_init(eng_v4_cmp_state *cs, int32_t ratio, int32_t width)
{
    cs->ratio = ratio;
    cs->width = width;
    cs->kv = mls_alloc(MLS_ALLOC_TAG_KV_POOL, v4_cmp_rows_bytes(cs));
    cs->score = mls_alloc(MLS_ALLOC_TAG_KV_POOL, v4_cmp_rows_bytes(cs));
    if (cs->kv == NULL || cs->score == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    eng_v4_cmp_state_reset(cs);
    return MLS_OK;
}

static void v4_cmp_state_free(eng_v4_cmp_state *cs)
{
    if (cs->ratio > 0) {
        mls_free(MLS_ALLOC_TAG_KV_POOL, cs->kv, v4_cmp_rows_bytes(cs));
        mls_free(MLS_ALLOC_TAG_KV_POOL, cs->score, v4_cmp_rows_bytes(cs));
    }
}

mls_status eng_v4_state_create(const eng_v4_model *model, kvl_dtype dtype, eng_v4_state **state_p)
{
    const eng_config *c = &model->cfg;
    int32_t L = c->num_hidden_layers, W = c->v4.sliding_window, d = c->v4.head_dim;
    int32_t r = c->qk_rope_head_dim;
    eng_v4_state *s;

    if (dtype != KVL_DTYPE_F32 && dtype != KVL_DTYPE_FP8) {
        return MLS_ERR_UNSUPPORTED;
    }
    if (dtype == KVL_DTYPE_FP8 && (d - r) % ENG_V4_KV_FP8_BLOCK != 0) {
        return MLS_ERR_UNSUPPORTED;
    }
    if ((s = mls_alloc(MLS_ALLOC_TAG_KV_POOL, sizeof(*s))) == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    s->dtype = dtype;
    if ((s->layers = mls_alloc(MLS_ALLOC_TAG_KV_POOL, sizeof(*s->layers) * (size_t)L)) == NULL) {
        goto err_destroy;
    }
    s->n_layers = L;
    for (int32_t l = 0; l < L; l++) {
        eng_v4_layer_state *ls = &s->layers[l];
        ls->ratio = model->layers[l].ratio;
        ls->W = W;
        ls->d = d;
        ls->Id = ls->ratio == 4 ? c->v4.index_head_dim : 0;
        ls->dtype = dtype;
        ls->kv_row = eng_v4_kv_row_bytes(dtype, d, r);
        ls->idx_row = ls->ratio == 4 ? eng_v4_idx_row_bytes(dtype, ls->Id) : 0;
        if ((ls->window = mls_alloc(MLS_ALLOC_TAG_KV_POOL, (size_t)W * ls->kv_row)) == NULL) {
            goto err_destroy;
        }
        if (ls->ratio > 0 && v4_cmp_state_init(&ls->cmp, ls->ratio, d) != MLS_OK) {
            goto err_destroy;
        }
        if (ls->ratio == 4 && v4_cmp_state_init(&ls->icmp, 4, ls->Id) != MLS_OK) {
            goto err_destroy;
        }
    }
    *state_p = s;
    return MLS_OK;

err_destroy:
    eng_v4_state_destroy(s);
    return MLS_ERR_NO_MEMORY;
}

void eng_v4_state_destroy(eng_v4_state *state)
{
    if (state == NULL) {
        return;
    }
    for (int32_t l = 0; state->layers != NULL && l < state->n_layers; l++) {
        eng_v4_layer_state *ls = &state->layers[l];
        mls_free(MLS_ALLOC_TAG_KV_POOL, ls->window, (size_t)ls->W * ls->kv_row);
        mls_free(MLS_ALLOC_TAG_KV_POOL, ls->comp, (size_t)ls->cap_entries * ls->kv_row);
        mls_free(MLS_ALLOC_TAG_KV_POOL, ls->idx_keys, (size_t)ls->cap_entries * ls->idx_row);
        v4_cmp_state_free(&ls->cmp);
        v4_cmp_state_free(&ls->icmp);
    }
    mls_free(MLS_ALLOC_TAG_KV_POOL, state->layers,
             sizeof(*state->layers) * (size_t)state->n_layers);
    mls_free(MLS_ALLOC_TAG_KV_POOL, state, sizeof(*state));
}

/* A copy of old (old_cap rows of row_bytes) with room for cap rows, or NULL. */
static uint8_t *v4_grown(const uint8_t *old, uint32_t row_bytes, int32_t old_cap, int32_t cap)
{
    uint8_t *n = mls_alloc(MLS_ALLOC_TAG_KV_POOL, (size_t)cap * row_bytes);

    if (n != NULL && old_cap > 0) {
        memcpy(n, old, (size_t)old_cap * row_bytes);
    }
    return n;
}

mls_status eng_v4_state_reserve(eng_v4_state *state, const eng_v4_model *model, int32_t n_tokens)
{
    (void)model;
    for (int32_t l = 0; l < state->n_layers; l++) {
        eng_v4_layer_state *ls = &state->layers[l];
        uint8_t *comp, *keys = NULL;
        int32_t need;
        if (ls->ratio == 0 || (need = n_tokens / ls->ratio) <= ls->cap_entries) {
            continue;
        }
        if (need < 2 * ls->cap_entries) {
            need = 2 * ls->cap_entries;
        }
        comp = v4_grown(ls->comp, ls->kv_row, ls->cap_entries, need);
        if (ls->ratio == 4) {
            keys = v4_grown(ls->idx_keys, ls->idx_row, ls->cap_entries, need);
        }
        if (comp == NULL || (ls->ratio == 4 && keys == NULL)) {
            mls_free(MLS_ALLOC_TAG_KV_POOL, comp, (size_t)need * ls->kv_row);
            mls_free(MLS_ALLOC_TAG_KV_POOL, keys, (size_t)need * ls->idx_row);
            return MLS_ERR_NO_MEMORY;
        }
        mls_free(MLS_ALLOC_TAG_KV_POOL, ls->comp, (size_t)ls->cap_entries * ls->kv_row);
        mls_free(MLS_ALLOC_TAG_KV_POOL, ls->idx_keys, (size_t)ls->cap_entries * ls->idx_row);
        ls->comp = comp;
        ls->idx_keys = keys;
        ls->cap_entries = need;
    }
    return MLS_OK;
}

/* ---- mHC -------------------------------------------------------------------------- */

/* mix (T, n_mix) = (xf . fn^T) * rsqrt(mean(xf^2) + eps), xf = resid flattened (T, h*D). */
static mls_status v4_hc_mix(eng_v4_ctx *ctx, const float *fn, int32_t n_mix, const float *resid,
                            int32_t T, float *mix, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    int64_t hD = (int64_t)c->v4.hc_mult * c->hidden_size;
    eng_linear lin = {{KC_DTYPE_F32, n_mix, hD, 0, fn, NULL}, NULL};
    eng_tensor xt = eng_tensor_2d(ENG_LOC_HOST, ENG_DTYPE_F32, (void *)resid, T, hD);
    eng_tensor yt = eng_tensor_2d(ENG_LOC_HOST, ENG_DTYPE_F32, mix, T, n_mix);
    mls_status st;

    if ((st = ctx->ops->matmul(ctx->bctx, &lin, &xt, &yt, err)) != MLS_OK) {
        return st;
    }
    for (int32_t t = 0; t < T; t++) {
        const float *xf = resid + t * hD;
        float ss = 0.0f;
        for (int64_t i = 0; i < hD; i++) {
            ss += xf[i] * xf[i];
        }
        float inv = 1.0f / sqrtf(ss / (float)hD + c->rms_norm_eps);
        for (int32_t j = 0; j < n_mix; j++) {
            mix[t * n_mix + j] *= inv;
        }
    }
    return MLS_OK;
}

/* The half-block's input: y (T, D) = sum_i pre_i h_i, normed by norm; post
 * (T, h) and comb (T, h, h) kept for v4_hc_post. mix: (T, M) scratch. */
static mls_status v4_hc_pre(eng_v4_ctx *ctx, const eng_v4_hc *hc, const float *norm,
                            const float *resid, int32_t T, float *mix, float *y, float *post,
                            float *comb, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    int32_t h = c->v4.hc_mult, D = c->hidden_size, M = (2 + h) * h;
    mls_status st;

    if ((st = v4_hc_mix(ctx, hc->fn, M, resid, T, mix, err)) != MLS_OK) {
        return st;
    }
    for (int32_t t = 0; t < T; t++) {
        float pre[ENG_V4_MAX_HC];
        eng_v4_hc_split(mix + t * M, hc->scale, hc->base, h, c->v4.hc_sinkhorn_iters, c->v4.hc_eps,
                        pre, post + t * h, comb + t * h * h);
        float *yt = y + (int64_t)t * D;
        const float *ht = resid + (int64_t)t * h * D;
        for (int32_t k = 0; k < D; k++) {
            float acc = 0.0f;
            for (int32_t i = 0; i < h; i++) {
                acc += pre[i] * ht[i * D + k];
            }
            yt[k] = acc;
        }
    }
    eng_v4_rmsnorm(y, norm, T, D, D, c->rms_norm_eps);
    return MLS_OK;
}

/* resid (T, h, D): h'_j = post_j * out + sum_i comb[i][j] h_i. */
static void v4_hc_post(const eng_config *c, float *resid, const float *out, const float *post,
                       const float *comb, int32_t T)
{
    int32_t h = c->v4.hc_mult, D = c->hidden_size;
    float old[ENG_V4_MAX_HC];

    for (int32_t t = 0; t < T; t++) {
        float *ht = resid + (int64_t)t * h * D;
        const float *pt = post + t * h, *ct = comb + t * h * h, *ot = out + (int64_t)t * D;
        for (int32_t k = 0; k < D; k++) {
            for (int32_t i = 0; i < h; i++) {
                old[i] = ht[i * D + k];
            }
            for (int32_t j = 0; j < h; j++) {
                float acc = pt[j] * ot[k];
                for (int32_t i = 0; i < h; i++) {
                    acc += ct[i * h + j] * old[i];
                }
                ht[j * D + k] = acc;
            }
        }
    }
}

/* ---- blocks ------------------------------------------------------------------------- */

mls_status eng_v4_block_forward(eng_v4_ctx *ctx, int32_t layer, eng_v4_layer_state *ls,
                                const int32_t *ids, int32_t T, int32_t pos0, float *resid,
                                float *attn_out, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    const eng_v4_layer *L = &ctx->model->layers[layer];
    int32_t h = c->v4.hc_mult, D = c->hidden_size, M = (2 + h) * h;
    size_t bytes = sizeof(float) * (size_t)T * (size_t)(2 * D + M + h + h * h);
    float *buf, *y, *out, *mix, *post, *comb;
    mls_status st;

    if (T == 0) {
        return MLS_OK;
    }
    if ((buf = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes)) == NULL) {
        mls_err_set(err, "out of memory for layer %d's scratch", layer);
        return MLS_ERR_NO_MEMORY;
    }
    y = buf;                     /* (T, D) */
    out = y + (size_t)T * D;     /* (T, D) */
    mix = out + (size_t)T * D;   /* (T, M) */
    post = mix + (size_t)T * M;  /* (T, h) */
    comb = post + (size_t)T * h; /* (T, h, h) */

    if ((st = v4_hc_pre(ctx, &L->hc_attn, L->attn_norm, resid, T, mix, y, post, comb, err)) ||
        (st = eng_v4_attn_forward(ctx, layer, ls, y, T, pos0, out, err))) {
        goto out_free;
    }
    if (attn_out != NULL) {
        memcpy(attn_out, out, sizeof(float) * (size_t)T * D);
    }
    v4_hc_post(c, resid, out, post, comb, T);
    if ((st = v4_hc_pre(ctx, &L->hc_ffn, L->ffn_norm, resid, T, mix, y, post, comb, err)) ||
        (st = eng_v4_moe_forward(ctx, layer, y, ids, T, out, err))) {
        goto out_free;
    }
    v4_hc_post(c, resid, out, post, comb, T);

out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, buf, bytes);
    return st;
}

/* ---- embedding and head -------------------------------------------------------------- */

/* logits (n, V) of the residual rows resid (n, h, D). */
static mls_status v4_head(eng_v4_ctx *ctx, const float *resid, int32_t n, float *logits,
                          mls_err *err)
{
    const eng_v4_model *m = ctx->model;
    const eng_config *c = &m->cfg;
    int32_t h = c->v4.hc_mult, D = c->hidden_size;
    size_t bytes = sizeof(float) * (size_t)n * (size_t)(D + h);
    float *y, *mix;
    mls_status st;

    if ((y = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes)) == NULL) {
        mls_err_set(err, "out of memory for the head's scratch");
        return MLS_ERR_NO_MEMORY;
    }
    mix = y + (size_t)n * D; /* (n, h) */
    if ((st = v4_hc_mix(ctx, m->hc_head.fn, h, resid, n, mix, err)) != MLS_OK) {
        goto out_free;
    }
    for (int32_t t = 0; t < n; t++) {
        const float *ht = resid + (int64_t)t * h * D;
        float pre[ENG_V4_MAX_HC];
        for (int32_t i = 0; i < h; i++) {
            float v = mix[t * h + i] * m->hc_head.scale[0] + m->hc_head.base[i];
            pre[i] = 1.0f / (1.0f + expf(-v)) + c->v4.hc_eps;
        }
        for (int32_t k = 0; k < D; k++) {
            float acc = 0.0f;
            for (int32_t i = 0; i < h; i++) {
                acc += pre[i] * ht[i * D + k];
            }
            y[(int64_t)t * D + k] = acc;
        }
    }
    eng_v4_rmsnorm(y, m->norm, n, D, D, c->rms_norm_eps);
    st = eng_v4_linear(ctx, &m->head, y, n, logits, false, err);

out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, y, bytes);
    return st;
}

mls_status eng_v4_forward(eng_v4_ctx *ctx, eng_v4_state *state, const int32_t *ids, int32_t T,
                          bool all_logits, float *logits, mls_err *err)
{
    const eng_v4_model *m = ctx->model;
    const eng_config *c = &m->cfg;
    int32_t h = c->v4.hc_mult, D = c->hidden_size;
    size_t bytes = sizeof(float) * (size_t)T * h * D;
    float *resid;
    mls_status st;

    if (T <= 0) {
        return MLS_OK;
    }
    for (int32_t t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= c->vocab_size) {
            mls_err_set(err, "token id %d at %d is outside the vocabulary [0, %d)", ids[t], t,
                        c->vocab_size);
            return MLS_ERR_INVALID_ARG;
        }
    }
    if (eng_v4_state_reserve(state, m, state->n_tokens + T) != MLS_OK) {
        mls_err_set(err, "out of memory for the V4 state of %d tokens", state->n_tokens + T);
        return MLS_ERR_NO_MEMORY;
    }
    if ((resid = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes)) == NULL) {
        mls_err_set(err, "out of memory for the residual of %d tokens", T);
        return MLS_ERR_NO_MEMORY;
    }
    /* resid (T, h, D): the embedding repeated h times */
    for (int32_t t = 0; t < T; t++) {
        const uint16_t *e = m->embed + (int64_t)ids[t] * D;
        for (int32_t k = 0; k < D; k++) {
            uint16_t b;
            memcpy(&b, e + k, sizeof(b));
            resid[(int64_t)t * h * D + k] = mls_bf16_to_f32(b);
        }
        for (int32_t i = 1; i < h; i++) {
            memcpy(resid + ((int64_t)t * h + i) * D, resid + (int64_t)t * h * D,
                   sizeof(float) * (size_t)D);
        }
    }
    for (int32_t l = 0; l < c->num_hidden_layers; l++) {
        st = eng_v4_block_forward(ctx, l, &state->layers[l], ids, T, state->n_tokens, resid, NULL,
                                  err);
        if (st != MLS_OK) {
            goto out_free;
        }
    }
    st = MLS_OK;
    if (logits != NULL) {
        st = all_logits ? v4_head(ctx, resid, T, logits, err)
                        : v4_head(ctx, resid + (size_t)(T - 1) * h * D, 1, logits, err);
    }
    if (st == MLS_OK) {
        state->n_tokens += T;
    }

out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, resid, bytes);
    return st;
}
