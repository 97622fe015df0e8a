/*
 * eng_v4_indexer.c - DeepSeek-V4's lightning indexer (README-v4 section 4):
 * which compressed entries a CSA query attends to.
 *
 * qI = indexer.wq_b qr (T, IH, Id), rotary on each head's last r dims at the
 * query's position, Hadamard, FP4 (blocks of 32); w = weights_proj x *
 * Id^-0.5 * IH^-0.5 (T, IH). score[t, j] = sum_h w[t,h] relu(qI[t,h] . kI[j])
 * over the visible entries j < (p+1)/4; the top min(index_topk, visible) are
 * chosen (descending score, the lower entry first on a tie; kc_v4_topk).
 *
 * An f32 state is scored here, query by query over the CPU backend's threads
 * (the reference); an FP8 state's keys by kc_v4_index_scores, split over the
 * threads by keys (decode has one query), which gives the same bits: the
 * queries are on the FP4 grid, so every product is exact and the sums run in
 * the same order.
 */
#include <math.h>
#include <string.h>

#include "eng_v4_forward.h"
#include "eng_v4_ops.h"
#include "mls_alloc.h"

/* Scores and selections of queries, split over the CPU backend's threads by query. */
typedef struct {
    const float *q;    /* (T, IH, Id) */
    const float *wts;  /* (T, IH) */
    const float *keys; /* (n_keys, Id) */
    int32_t n_keys;
    int32_t *sel; /* (T, topk) */
    float *score; /* (n_tasks, n_keys) one row per task */
    int32_t T, pos0, IH, Id, topk;
} v4_idx_job;

static void v4_idx_task(void *arg, int task, int n_tasks)
{
    const v4_idx_job *j = arg;
    int32_t t0 = (int32_t)((int64_t)j->T * task / n_tasks);
    int32_t t1 = (int32_t)((int64_t)j->T * (task + 1) / n_tasks);
    float *score = j->score + (size_t)task * j->n_keys;

    for (int32_t t = t0; t < t1; t++) {
        int32_t n_vis = (j->pos0 + t + 1) / 4, k;
        int32_t *st_sel = j->sel + (int64_t)t * j->topk;
        if (n_vis > j->n_keys) {
            n_vis = j->n_keys;
        }
        for (int32_t e = 0; e < n_vis; e++) {
            const float *ke = j->keys + (int64_t)e * j->Id;
            float s = 0.0f;
            for (int32_t hd = 0; hd < j->IH; hd++) {
                const float *qh = j->q + ((int64_t)t * j->IH + hd) * j->Id;
                float dot = 0.0f;
                for (int32_t i = 0; i < j->Id; i++) {
                    dot += qh[i] * ke[i];
                }
                s += j->wts[(int64_t)t * j->IH + hd] * fmaxf(dot, 0.0f);
            }
            score[e] = s;
        }
        k = (int32_t)kc_v4_topk(score, n_vis, j->topk, st_sel);
        for (int32_t i = k; i < j->topk; i++) {
            st_sel[i] = -1;
        }
    }
}

/* The FP8 state: per query, the kernels over the stored keys. */
static void v4_idx_select_fp8(kc_pool *pool, const float *q, const float *wts, const uint8_t *keys,
                              int32_t n_keys, int32_t T, int32_t pos0, int32_t IH, int32_t Id,
                              int32_t topk, float *score, int32_t *sel)
{
    for (int32_t t = 0; t < T; t++) {
        int32_t n_vis = (pos0 + t + 1) / 4, k;
        int32_t *st_sel = sel + (int64_t)t * topk;
        if (n_vis > n_keys) {
            n_vis = n_keys;
        }
        kc_v4_index_params p = {keys,
                                n_vis,
                                KVL_ROW_BYTES_V4_INDEXER((uint32_t)Id),
                                IH,
                                Id,
                                q + (int64_t)t * IH * Id,
                                wts + (int64_t)t * IH,
                                score};
        kc_v4_index_scores(pool, &p);
        k = (int32_t)kc_v4_topk(score, n_vis, topk, st_sel);
        for (int32_t i = k; i < topk; i++) {
            st_sel[i] = -1;
        }
    }
}

mls_status eng_v4_indexer_select(eng_v4_ctx *ctx, int32_t layer, const float *qr, const float *x,
                                 int32_t T, int32_t pos0, kvl_dtype dtype, const uint8_t *keys,
                                 int32_t n_keys, int32_t *sel, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    const eng_v4_layer *L = &ctx->model->layers[layer];
    int32_t IH = c->v4.index_n_heads, Id = c->v4.index_head_dim, r = c->qk_rope_head_dim;
    int32_t topk = c->v4.index_topk;
    const float *freqs = eng_v4_layer_freqs(ctx, layer);
    int32_t n_threads = kc_pool_size(ctx->bctx);
    size_t bytes =
        sizeof(float) * ((size_t)T * IH * Id + (size_t)T * IH + (size_t)n_keys * (size_t)n_threads);
    float *q, *wts, *score;
    mls_status st;

    if ((q = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes)) == NULL) {
        mls_err_set(err, "out of memory for layer %d's indexer", layer);
        return MLS_ERR_NO_MEMORY;
    }
    wts = q + (size_t)T * IH * Id; /* (T, IH) */
    score = wts + (size_t)T * IH;  /* (n_threads, n_keys) */
    /* q (T, IH, Id), wts (T, IH) */
    if ((st = eng_v4_linear(ctx, &L->idx_wq_b, qr, T, q,
                            eng_v4_weight_quantizes_input(&L->idx_wq_b), err)) ||
        (st = eng_v4_linear(ctx, &L->idx_weights_proj, x, T, wts, false, err))) {
        goto out_free;
    }
    float wscale = 1.0f / sqrtf((float)Id), hscale = 1.0f / sqrtf((float)IH);
    for (int32_t t = 0; t < T; t++) {
        for (int32_t hd = 0; hd < IH; hd++) {
            float *qh = q + ((int64_t)t * IH + hd) * Id;
            eng_v4_rope_apply(freqs, r, pos0 + t, false, qh + Id - r);
            eng_v4_hadamard(qh, Id);
            eng_v4_fp4_qdq(qh, Id, qh, NULL);
            wts[t * IH + hd] = wts[t * IH + hd] * wscale * hscale;
        }
    }
    /* the CPU backend's context is its kc_pool (a V4 context is CPU-only) */
    kc_pool *pool = ctx->bctx;
    if (dtype == KVL_DTYPE_FP8) {
        v4_idx_select_fp8(pool, q, wts, keys, n_keys, T, pos0, IH, Id, topk, score, sel);
    } else {
        int32_t n_tasks = T < kc_pool_size(pool) ? T : kc_pool_size(pool);
        v4_idx_job job = {q, wts, (const float *)(const void *)keys, n_keys, sel, score, T, pos0,
                          IH, Id, topk};
        kc_pool_run(pool, v4_idx_task, &job, n_tasks);
    }

out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, q, bytes);
    return st;
}
