/*
 * eng_v4_attn.c - DeepSeek-V4's attention half (README-v4 section 4).
 *
 * qr = q_norm(wq_a x); q = wq_b qr (T, H, d), each head RMS-normalised (no
 * weight) and rotated on its last r dims. kv = kv_norm(wkv x) (T, d): one
 * vector per token, key and value of every head, rotated, its first d-r
 * (nope) dims FP8 quantize-dequantized in blocks of 64. Query p attends to
 * the window (positions p-W+1 .. p) plus compressed entries: CSA the
 * indexer's top-k of the visible ones, HCA all visible ones (entry j is
 * visible from p >= m*j + m - 1), with the head's attention sink in the
 * softmax denominator. The output of every head is rotated back (angle -p*f)
 * on its last r dims, then wo_a maps each group of H/G heads to R and wo_b
 * the G*R to D.
 */
#include <math.h>
#include <string.h>

#include "eng_v4_forward.h"
#include "eng_v4_ops.h"
#include "mls_alloc.h"

/* Sparse attention of T queries x H heads, split over the CPU backend's threads by
 * (query, head) (eng_v4_sparse_attn's maths, one head at a time). */
typedef struct {
    const float *q;     /* (T, H, d) */
    const float *rows;  /* (n_rows, d) */
    const int32_t *idx; /* (T, k) */
    const float *sink;  /* (H) */
    float *o;           /* (T, H, d) */
    int32_t T, H, d, n_rows, k;
    float scale;
} v4_attn_job;

static void v4_attn_task(void *arg, int task, int n_tasks)
{
    const v4_attn_job *j = arg;
    int64_t units = (int64_t)j->T * j->H;
    int64_t u0 = units * task / n_tasks, u1 = units * (task + 1) / n_tasks;

    for (int64_t u = u0; u < u1; u++) {
        int64_t t = u / j->H, h = u % j->H;
        eng_v4_sparse_attn(j->q + u * j->d, j->rows, j->idx + t * j->k, j->sink + h, 1, 1, j->d,
                           j->n_rows, j->k, j->scale, j->o + u * j->d);
    }
}

/* q (T, H, d) and kv (T, d) of the chunk; qr (T, Q) kept for the indexer. */
static mls_status v4_attn_qkv(eng_v4_ctx *ctx, int32_t layer, const float *x, int32_t T,
                              int32_t pos0, float *qr, float *q, float *kv, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    const eng_v4_layer *L = &ctx->model->layers[layer];
    int32_t H = c->num_attention_heads, d = c->v4.head_dim, r = c->qk_rope_head_dim;
    int32_t Q = c->q_lora_rank;
    const float *freqs = eng_v4_layer_freqs(ctx, layer);
    mls_status st;

    if ((st = eng_v4_linear(ctx, &L->wq_a, x, T, qr, eng_v4_weight_quantizes_input(&L->wq_a),
                            err)) != MLS_OK) {
        return st;
    }
    eng_v4_rmsnorm(qr, L->q_norm, T, Q, Q, c->rms_norm_eps);
    if ((st = eng_v4_linear(ctx, &L->wq_b, qr, T, q, eng_v4_weight_quantizes_input(&L->wq_b),
                            err)) ||
        (st = eng_v4_linear(ctx, &L->wkv, x, T, kv, eng_v4_weight_quantizes_input(&L->wkv), err))) {
        return st;
    }
    eng_v4_rmsnorm(q, NULL, (int64_t)T * H, d, d, c->rms_norm_eps);
    eng_v4_rmsnorm(kv, L->kv_norm, T, d, d, c->rms_norm_eps);
    for (int32_t t = 0; t < T; t++) {
        for (int32_t hd = 0; hd < H; hd++) {
            eng_v4_rope_apply(freqs, r, pos0 + t, false, q + ((int64_t)t * H + hd) * d + d - r);
        }
        float *kt = kv + (int64_t)t * d;
        eng_v4_rope_apply(freqs, r, pos0 + t, false, kt + d - r);
        eng_v4_fp8_qdq(kt, d - r, ENG_V4_KV_FP8_BLOCK, kt, NULL);
    }
    return MLS_OK;
}

/* out (T, D) = wo_b(concat_g wo_a_g(o[:, heads of g])); o (T, H, d). */
static mls_status v4_attn_out(eng_v4_ctx *ctx, int32_t layer, const float *o, int32_t T, float *out,
                              mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    const eng_v4_layer *L = &ctx->model->layers[layer];
    int32_t H = c->num_attention_heads, d = c->v4.head_dim, G = c->v4.o_groups;
    int32_t R = c->v4.o_lora_rank, gw = H / G * d; /* a group's input width */
    size_t bytes = sizeof(float) * (size_t)T * (size_t)(gw + R + G * R);
    float *gin, *gout, *lo;
    mls_status st = MLS_OK;

    if ((gin = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes)) == NULL) {
        mls_err_set(err, "out of memory for layer %d's output projection", layer);
        return MLS_ERR_NO_MEMORY;
    }
    gout = gin + (size_t)T * gw; /* (T, R) */
    lo = gout + (size_t)T * R;   /* (T, G*R) */
    for (int32_t g = 0; g < G; g++) {
        /* wo_a rows [g*R, (g+1)*R): a view of the (G*R, gw) weight (BF16 after conversion:
         * no activation quantization) */
        eng_v4_weight wg = L->wo_a;
        wg.rows = R;
        wg.lin.m.rows = R;
        wg.lin.m.row0 = (int64_t)g * R;
        for (int32_t t = 0; t < T; t++) {
            memcpy(gin + (size_t)t * gw, o + (size_t)t * H * d + (size_t)g * gw,
                   sizeof(float) * (size_t)gw);
        }
        if ((st = eng_v4_linear(ctx, &wg, gin, T, gout, false, err)) != MLS_OK) {
            goto out_free;
        }
        for (int32_t t = 0; t < T; t++) {
            memcpy(lo + (size_t)t * G * R + (size_t)g * R, gout + (size_t)t * R,
                   sizeof(float) * (size_t)R);
        }
    }
    st = eng_v4_linear(ctx, &L->wo_b, lo, T, out, eng_v4_weight_quantizes_input(&L->wo_b), err);

out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, gin, bytes);
    return st;
}

/* o (T, H, d) = attention of q (T, H, d) over the rows idx (T, k) names (-1: none):
 * row i < n_hist is position pos0 - n_hist + i in the window ring, then the chunk's
 * kv (T, d), then the compressed entries. The f32 state (the reference): rows
 * loaded to f32, eng_v4_sparse_attn by (query, head) over the threads. */
static mls_status v4_attn_rows_f32(eng_v4_ctx *ctx, int32_t layer, const eng_v4_layer_state *ls,
                                   const float *q, const float *kv, const int32_t *idx, int32_t T,
                                   int32_t pos0, int32_t n_hist, int32_t k, float *o)
{
    const eng_config *c = &ctx->model->cfg;
    int32_t H = c->num_attention_heads, d = c->v4.head_dim, r = c->qk_rope_head_dim;
    int32_t W = c->v4.sliding_window, n_ent = ls->n_entries;
    size_t rbytes = sizeof(float) * (size_t)(n_hist + T + n_ent) * d;
    float *rows; /* (n_hist + T + n_ent, d) */

    if ((rows = mls_alloc(MLS_ALLOC_TAG_SCRATCH, rbytes)) == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    for (int32_t i = 0; i < n_hist; i++) {
        int32_t p = pos0 - n_hist + i;
        eng_v4_kv_row_load(ls->dtype, d, r, ls->window + (size_t)(p % W) * ls->kv_row,
                           rows + (size_t)i * d);
    }
    memcpy(rows + (size_t)n_hist * d, kv, sizeof(float) * (size_t)T * d);
    for (int32_t j = 0; j < n_ent; j++) {
        eng_v4_kv_row_load(ls->dtype, d, r, ls->comp + (size_t)j * ls->kv_row,
                           rows + (size_t)(n_hist + T + j) * d);
    }
    {
        /* the CPU backend's context is its kc_pool (a V4 context is CPU-only) */
        kc_pool *pool = ctx->bctx;
        v4_attn_job job = {q, rows, idx, ctx->model->layers[layer].attn_sink, o, T, H, d,
                           n_hist + T + n_ent, k, 1.0f / sqrtf((float)d)};
        int64_t units = (int64_t)T * H, n_tasks = 4 * (int64_t)kc_pool_size(pool);
        kc_pool_run(pool, v4_attn_task, &job, (int)(units < n_tasks ? units : n_tasks));
    }
    mls_free(MLS_ALLOC_TAG_SCRATCH, rows, rbytes);
    return MLS_OK;
}

/* The same over an FP8 state: the chunk's vectors stored as FP8 rows (as the
 * window will hold them), then kc_v4_attn reads every row where it is stored. */
static mls_status v4_attn_rows_fp8(eng_v4_ctx *ctx, int32_t layer, const eng_v4_layer_state *ls,
                                   const float *q, const float *kv, const int32_t *idx, int32_t T,
                                   int32_t pos0, int32_t n_hist, int32_t k, float *o)
{
    const eng_config *c = &ctx->model->cfg;
    int32_t H = c->num_attention_heads, d = c->v4.head_dim, r = c->qk_rope_head_dim;
    int32_t W = c->v4.sliding_window;
    size_t cbytes = ((size_t)T * ls->kv_row + 7) / 8 * 8, pbytes = sizeof(uint8_t *) * (size_t)T * k;
    uint8_t *chunk; /* (T, kv_row) */
    const uint8_t **ptrs; /* (T, k) rows or NULL */

    if ((chunk = mls_alloc(MLS_ALLOC_TAG_SCRATCH, cbytes + pbytes)) == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    ptrs = (const uint8_t **)(void *)(chunk + cbytes);
    for (int32_t t = 0; t < T; t++) {
        eng_v4_kv_row_store(ls->dtype, d, r, kv + (size_t)t * d, chunk + (size_t)t * ls->kv_row);
    }
    for (int64_t i = 0; i < (int64_t)T * k; i++) {
        int32_t j = idx[i];
        if (j < 0) {
            ptrs[i] = NULL;
        } else if (j < n_hist) {
            ptrs[i] = ls->window + (size_t)((pos0 - n_hist + j) % W) * ls->kv_row;
        } else if (j < n_hist + T) {
            ptrs[i] = chunk + (size_t)(j - n_hist) * ls->kv_row;
        } else {
            ptrs[i] = ls->comp + (size_t)(j - n_hist - T) * ls->kv_row;
        }
    }
    kc_v4_attn_params p = {H,    d - r, r, 1.0f / sqrtf((float)d), ctx->model->layers[layer].attn_sink,
                           q,    ptrs,  T, k, o};
    /* the CPU backend's context is its kc_pool (a V4 context is CPU-only) */
    kc_v4_attn(ctx->bctx, &p);
    mls_free(MLS_ALLOC_TAG_SCRATCH, chunk, cbytes + pbytes);
    return MLS_OK;
}

mls_status eng_v4_attn_forward(eng_v4_ctx *ctx, int32_t layer, eng_v4_layer_state *ls,
                               const float *x, int32_t T, int32_t pos0, float *out, mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    const eng_v4_layer *L = &ctx->model->layers[layer];
    int32_t H = c->num_attention_heads, d = c->v4.head_dim, r = c->qk_rope_head_dim;
    int32_t Q = c->q_lora_rank, W = c->v4.sliding_window, m = L->ratio;
    int32_t topk = c->v4.index_topk;
    const float *freqs = eng_v4_layer_freqs(ctx, layer);
    int32_t n_hist = pos0 < W - 1 ? pos0 : W - 1; /* window rows before the chunk */
    int32_t ent0 = ls->n_entries, n_ent, k_cmp, k;
    float *qr = NULL, *q, *kv, *o;
    int32_t *idx = NULL, *sel = NULL;
    size_t qbytes, ibytes = 0, sbytes = 0;
    mls_status st;

    qbytes = sizeof(float) * ((size_t)T * Q + (size_t)2 * T * H * d + (size_t)T * d);
    if ((qr = mls_alloc(MLS_ALLOC_TAG_SCRATCH, qbytes)) == NULL) {
        goto err_nomem;
    }
    q = qr + (size_t)T * Q;       /* (T, H, d) */
    o = q + (size_t)T * H * d;    /* (T, H, d) */
    kv = o + (size_t)T * H * d;   /* (T, d) */
    if ((st = v4_attn_qkv(ctx, layer, x, T, pos0, qr, q, kv, err)) != MLS_OK) {
        goto out_free;
    }
    /* compressed entries of the blocks this chunk completes */
    if (m > 0 && (st = eng_v4_compress(ctx, &L->compressor, ENG_V4_CMP_KV, layer, &ls->cmp, x, T,
                                       pos0, ls->dtype, ls->comp, &ls->n_entries, err))) {
        goto out_free;
    }
    if (m == 4) {
        int32_t n_keys = ent0;
        if ((st = eng_v4_compress(ctx, &L->idx_compressor, ENG_V4_CMP_INDEX, layer, &ls->icmp, x, T,
                                  pos0, ls->dtype, ls->idx_keys, &n_keys, err))) {
            goto out_free;
        }
        sbytes = sizeof(int32_t) * (size_t)T * topk;
        if ((sel = mls_alloc(MLS_ALLOC_TAG_SCRATCH, sbytes)) == NULL) {
            goto err_nomem;
        }
        if ((st = eng_v4_indexer_select(ctx, layer, qr, x, T, pos0, ls->dtype, ls->idx_keys, n_keys,
                                        sel, err))) {
            goto out_free;
        }
        if (ls->last_topk != NULL) {
            memcpy(ls->last_topk, sel + (size_t)(T - 1) * topk, sizeof(int32_t) * (size_t)topk);
        }
    }
    n_ent = ls->n_entries;
    k_cmp = m == 0 ? 0 : (m == 4 ? topk : n_ent);
    k = W + k_cmp;

    /* rows n_hist + T + n_ent: the window before the chunk, the chunk, the entries */
    ibytes = sizeof(int32_t) * (size_t)T * k;
    if ((idx = mls_alloc(MLS_ALLOC_TAG_SCRATCH, ibytes)) == NULL) {
        goto err_nomem;
    }
    /* idx (T, k): query t at p sees positions max(0, p-W+1) .. p (row p - pos0 + n_hist),
     * then its entries (row n_hist + T + j) */
    for (int32_t t = 0; t < T; t++) {
        int32_t p = pos0 + t, *it = idx + (size_t)t * k, n = 0;
        int32_t first = p - W + 1 < 0 ? 0 : p - W + 1;
        for (int32_t q_pos = first; q_pos <= p; q_pos++) {
            it[n++] = q_pos - pos0 + n_hist;
        }
        if (m == 4) {
            for (int32_t i = 0; i < topk; i++) {
                int32_t j = sel[(size_t)t * topk + i];
                if (j >= 0) {
                    it[n++] = n_hist + T + j;
                }
            }
        } else if (m > 0) {
            int32_t n_vis = (p + 1) / m;
            for (int32_t j = 0; j < n_vis && j < n_ent; j++) {
                it[n++] = n_hist + T + j;
            }
        }
        while (n < k) {
            it[n++] = -1;
        }
    }
    if ((st = (ls->dtype == KVL_DTYPE_FP8 ? v4_attn_rows_fp8 : v4_attn_rows_f32)(
             ctx, layer, ls, q, kv, idx, T, pos0, n_hist, k, o)) != MLS_OK) {
        goto err_nomem;
    }
    for (int32_t t = 0; t < T; t++) {
        for (int32_t hd = 0; hd < H; hd++) {
            eng_v4_rope_apply(freqs, r, pos0 + t, true, o + ((int64_t)t * H + hd) * d + d - r);
        }
    }
    if ((st = v4_attn_out(ctx, layer, o, T, out, err)) != MLS_OK) {
        goto out_free;
    }
    /* the window ring takes the chunk's vectors */
    for (int32_t t = 0; t < T; t++) {
        eng_v4_kv_row_store(ls->dtype, d, r, kv + (size_t)t * d,
                            ls->window + (size_t)((pos0 + t) % W) * ls->kv_row);
    }
    st = MLS_OK;
    goto out_free;

err_nomem:
    mls_err_set(err, "out of memory for layer %d's attention over %d tokens", layer, T);
    st = MLS_ERR_NO_MEMORY;
out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, qr, qbytes);
    mls_free(MLS_ALLOC_TAG_SCRATCH, idx, ibytes);
    mls_free(MLS_ALLOC_TAG_SCRATCH, sel, sbytes);
    return st;
}
