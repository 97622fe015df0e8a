/*
 * eng_v4_moe.c - DeepSeek-V4's FFN half: routed experts and a shared expert
 * (README-v4 section 4).
 *
 * s = sqrt(softplus(gate x)) (E scores per token). The first num_hash_layers
 * layers take the token's experts from tid2eid; the others the top-k of
 * s + bias. Routing weights = s[chosen] / sum(s[chosen]) * routed_scaling_factor.
 * An expert: g = w1 x, u = clamp(w3 x, -lim, lim), g = min(g, lim),
 * w2(silu(g) * u * weight) (the weight applied before w2). The shared expert
 * likewise with weight 1; the output is their sum. In an FP8 model the
 * expert inputs and the w2 inputs (after the weight) are FP8
 * quantize-dequantized in blocks of 128 (eng_v4_linear's act_quant).
 */
#include <math.h>
#include <string.h>

#include "eng_v4_forward.h"
#include "eng_v4_ops.h"
#include "mls_alloc.h"

#define V4_MAX_TOPK 64 /* num_experts_per_tok at most here */

/* torch.nn.functional.softplus (beta 1, threshold 20). */
static float v4_softplus(float v)
{
    return v > 20.0f ? v : log1pf(expf(v));
}

/* topk (T, k) experts and topw (T, k) weights of every token. */
static mls_status v4_route(eng_v4_ctx *ctx, int32_t layer, const float *x, const int32_t *ids,
                           int32_t T, int32_t *topk, float *topw, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    const eng_v4_layer *L = &ctx->model->layers[layer];
    int32_t E = c->n_routed_experts, k = c->num_experts_per_tok;
    size_t bytes = sizeof(float) * (size_t)T * E;
    float *s;
    mls_status st;

    if ((s = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes)) == NULL) {
        mls_err_set(err, "out of memory for layer %d's router", layer);
        return MLS_ERR_NO_MEMORY;
    }
    if ((st = eng_v4_linear(ctx, &L->gate, x, T, s, false, err)) != MLS_OK) {
        goto out_free;
    }
    for (int32_t t = 0; t < T; t++) {
        float *st_ = s + (size_t)t * E, sum = 0.0f;
        int32_t *kt = topk + (size_t)t * k;
        float *wt = topw + (size_t)t * k;
        for (int32_t e = 0; e < E; e++) {
            st_[e] = sqrtf(v4_softplus(st_[e]));
        }
        if (L->tid2eid != NULL) {
            memcpy(kt, L->tid2eid + (size_t)ids[t] * k, sizeof(int32_t) * (size_t)k);
        } else {
            /* top-k of s + bias, the lower expert first on a tie */
            for (int32_t i = 0; i < k; i++) {
                int32_t best = -1;
                float bv = -INFINITY;
                for (int32_t e = 0; e < E; e++) {
                    float v = st_[e] + L->gate_bias[e];
                    bool taken = false;
                    for (int32_t j = 0; j < i; j++) {
                        taken |= kt[j] == e;
                    }
                    if (!taken && (best < 0 || v > bv)) {
                        best = e;
                        bv = v;
                    }
                }
                kt[i] = best;
            }
        }
        for (int32_t i = 0; i < k; i++) {
            wt[i] = st_[kt[i]];
            sum += wt[i];
        }
        for (int32_t i = 0; i < k; i++) {
            wt[i] = (c->norm_topk_prob ? wt[i] / sum : wt[i]) * c->routed_scaling_factor;
        }
    }

out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, s, bytes);
    return st;
}

/*
 * out (n, D) = expert e on x (n, D) with per-row weights w (n) (NULL: 1).
 * scratch: (n, 2F) floats.
 */
static mls_status v4_expert(eng_v4_ctx *ctx, const eng_v4_expert *e, const float *x, int32_t n,
                            const float *w, float *scratch, float *out, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    int32_t F = c->moe_intermediate_size;
    float lim = c->v4.swiglu_limit;
    float *g = scratch, *u = scratch + (size_t)n * F;
    mls_status st;

    if ((st = eng_v4_linear(ctx, &e->w1, x, n, g, eng_v4_weight_quantizes_input(&e->w1), err)) ||
        (st = eng_v4_linear(ctx, &e->w3, x, n, u, eng_v4_weight_quantizes_input(&e->w3), err))) {
        return st;
    }
    for (int32_t i = 0; i < n; i++) {
        float wi = w != NULL ? w[i] : 1.0f;
        for (int32_t j = 0; j < F; j++) {
            float gv = g[(size_t)i * F + j], uv = u[(size_t)i * F + j];
            if (lim > 0.0f) {
                uv = fminf(fmaxf(uv, -lim), lim);
                gv = fminf(gv, lim);
            }
            float v = gv / (1.0f + expf(-gv)) * uv;
            g[(size_t)i * F + j] = w != NULL ? v * wi : v;
        }
    }
    return eng_v4_linear(ctx, &e->w2, g, n, out, eng_v4_weight_quantizes_input(&e->w2), err);
}

mls_status eng_v4_moe_forward(eng_v4_ctx *ctx, int32_t layer, const float *x, const int32_t *ids,
                              int32_t T, float *out, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    const eng_v4_layer *L = &ctx->model->layers[layer];
    int32_t E = c->n_routed_experts, k = c->num_experts_per_tok, D = c->hidden_size;
    int32_t F = c->moe_intermediate_size;
    size_t rbytes = (sizeof(int32_t) + sizeof(float)) * (size_t)T * k;
    size_t bytes =
        sizeof(float) * (size_t)T * (size_t)(2 * D + 2 * F + 1) + sizeof(int32_t) * (size_t)T;
    int32_t *topk = NULL, *rows;
    float *topw, *xs = NULL, *ys, *ws, *scratch;
    mls_status st;

    if (k > V4_MAX_TOPK) {
        mls_err_set(err, "num_experts_per_tok %d exceeds %d", k, V4_MAX_TOPK);
        return MLS_ERR_UNSUPPORTED;
    }
    if ((topk = mls_alloc(MLS_ALLOC_TAG_SCRATCH, rbytes)) == NULL ||
        (xs = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes)) == NULL) {
        mls_err_set(err, "out of memory for layer %d's experts", layer);
        st = MLS_ERR_NO_MEMORY;
        goto out_free;
    }
    topw = (float *)(topk + (size_t)T * k);
    ys = xs + (size_t)T * D;          /* (T, D) one expert's output */
    scratch = ys + (size_t)T * D;     /* (T, 2F) */
    ws = scratch + (size_t)T * 2 * F; /* (T) */
    rows = (int32_t *)(ws + T);       /* (T) */
    if ((st = v4_route(ctx, layer, x, ids, T, topk, topw, err)) != MLS_OK) {
        goto out_free;
    }
    /* the shared expert on every token, then each routed expert on its tokens */
    if (c->n_shared_experts > 0) {
        if ((st = v4_expert(ctx, &L->shared, x, T, NULL, scratch, out, err)) != MLS_OK) {
            goto out_free;
        }
    } else {
        memset(out, 0, sizeof(float) * (size_t)T * D);
    }
    for (int32_t e = 0; e < E; e++) {
        int32_t n = 0;
        for (int32_t t = 0; t < T; t++) {
            for (int32_t i = 0; i < k; i++) {
                if (topk[(size_t)t * k + i] == e) {
                    rows[n] = t;
                    ws[n] = topw[(size_t)t * k + i];
                    memcpy(xs + (size_t)n * D, x + (size_t)t * D, sizeof(float) * (size_t)D);
                    n++;
                }
            }
        }
        if (n == 0) {
            continue;
        }
        if ((st = v4_expert(ctx, &L->experts[e], xs, n, ws, scratch, ys, err)) != MLS_OK) {
            goto out_free;
        }
        for (int32_t i = 0; i < n; i++) {
            float *ot = out + (size_t)rows[i] * D;
            for (int32_t j = 0; j < D; j++) {
                ot[j] += ys[(size_t)i * D + j];
            }
        }
    }

out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, topk, rbytes);
    mls_free(MLS_ALLOC_TAG_SCRATCH, xs, bytes);
    return st;
}
