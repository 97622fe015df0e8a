/*
 * eng_v4_model.c - bind a DeepSeek-V4 checkpoint's tensors (see eng_v4.h).
 *
 * Names, shapes and dtypes are README-v4 section 2's. Linears are BF16 (or
 * F32), or F8_E4M3 with an F8_E8M0 `.scale` of 128x128 blocks; routed experts
 * with expert_dtype fp4 are I8 (two e2m1 per byte) with an F8_E8M0 `.scale`
 * per 32 inputs. A scale byte 0xFF (NaN) is refused, and so is a tid2eid row
 * whose experts are out of range or repeated.
 */
#include <stdio.h>
#include <string.h>

#include "eng_internal.h"
#include "eng_v4.h"
#include "eng_v4_ops.h"
#include "mls_alloc.h"
#include "mls_num.h"

typedef struct {
    eng_v4_model *model;
    mls_err *err;
    char prefix[64]; /* "layers.L." or "" */
} v4_binder;

/* ---- weights -------------------------------------------------------------- */

void eng_v4_weight_row(const eng_v4_weight *w, int64_t r, float *out)
{
    switch (w->fmt) {
    case ENG_V4_WFMT_BF16: {
        const uint16_t *row = (const uint16_t *)w->data + r * w->cols;
        for (int64_t c = 0; c < w->cols; c++) {
            uint16_t h;
            memcpy(&h, row + c, sizeof(h));
            out[c] = mls_bf16_to_f32(h);
        }
        break;
    }
    case ENG_V4_WFMT_F32:
        memcpy(out, (const float *)w->data + r * w->cols, sizeof(float) * (size_t)w->cols);
        break;
    case ENG_V4_WFMT_FP8:
        eng_v4_fp8_weight_row(w->data, w->scale, w->cols, r, out);
        break;
    case ENG_V4_WFMT_FP4:
        eng_v4_fp4_weight_row(w->data, w->scale, w->cols, r, out);
        break;
    }
}

/* The UE8M0 scale `<base>.scale` of shape (srows, scols); refuses NaN codes. */
static mls_status v4_bind_scale(v4_binder *b, const char *base, int64_t srows, int64_t scols,
                                const uint8_t **scale_p)
{
    static const st_dtype types[] = {ST_DTYPE_F8_E8M0};
    int64_t shape[2] = {srows, scols};
    const st_tensor *s;
    char name[192];
    mls_status st;

    snprintf(name, sizeof(name), "%s.scale", base);
    if ((st = st_expect(b->model->archive, name, types, 1, 2, shape, &s, b->err)) != MLS_OK) {
        return st;
    }
    for (uint64_t i = 0; i < s->nbytes; i++) {
        if (((const uint8_t *)s->data)[i] == 0xff) {
            mls_err_set(b->err, "%s: tensor '%s': scale code 0xFF (NaN) at element %llu", s->file,
                        name, (unsigned long long)i);
            return MLS_ERR_BAD_MODEL;
        }
    }
    b->model->weight_bytes += s->nbytes;
    *scale_p = s->data;
    return MLS_OK;
}

static void *v4_own(v4_binder *b, size_t bytes);

/* w->lin as f32: w decoded once into memory the model owns. */
static mls_status v4_weight_widen(v4_binder *b, const char *name, eng_v4_weight *w)
{
    float *f = v4_own(b, sizeof(float) * (size_t)(w->rows * w->cols));

    if (f == NULL) {
        mls_err_set(b->err, "out of memory widening '%s' to f32", name);
        return MLS_ERR_NO_MEMORY;
    }
    for (int64_t r = 0; r < w->rows; r++) {
        eng_v4_weight_row(w, r, f + r * w->cols);
    }
    w->lin.m.dtype = KC_DTYPE_F32;
    w->lin.m.data = f;
    w->lin.m.scale_inv = NULL;
    return MLS_OK;
}

/*
 * w->lin, the GEMM view of w (kc_matrix). The V4 reference computes in fp32
 * and rounds to FP8/FP4 in the middle of the network, so a GEMM must not
 * round its input: kc's BF16 path on AVX512_BF16 splits the input into two
 * bf16 halves (~2^-17 relative), which flips quantization ties (measured on
 * tiny-v4-fp8: a layer-local position 4e-2 off instead of 3e-7). So BF16
 * weights (whose inputs are never quantized) are widened to f32. FP8 and FP4
 * weights take FP8-quantized inputs (eng_v4_linear), which both halves carry
 * exactly: FP8 stays in place (scales as f32 powers of two), FP4 is decoded
 * to BF16 (exact: an e2m1 value times a power of two).
 */
static mls_status v4_weight_linear(v4_binder *b, const char *name, eng_v4_weight *w)
{
    kc_matrix *m = &w->lin.m;

    memset(&w->lin, 0, sizeof(w->lin));
    m->rows = w->rows;
    m->cols = w->cols;
    m->data = w->data;
    switch (w->fmt) {
    case ENG_V4_WFMT_BF16:
        return v4_weight_widen(b, name, w);
    case ENG_V4_WFMT_F32:
        m->dtype = KC_DTYPE_F32;
        return MLS_OK;
    case ENG_V4_WFMT_FP8: {
        int64_t n = ((w->rows + ENG_V4_W_BLOCK - 1) / ENG_V4_W_BLOCK) *
                    ((w->cols + ENG_V4_W_BLOCK - 1) / ENG_V4_W_BLOCK);
        float *scale_inv = v4_own(b, sizeof(float) * (size_t)n);
        if (scale_inv == NULL) {
            mls_err_set(b->err, "out of memory for the scales of '%s'", name);
            return MLS_ERR_NO_MEMORY;
        }
        for (int64_t i = 0; i < n; i++) {
            scale_inv[i] = eng_v4_ue8m0_decode(w->scale[i]);
        }
        m->dtype = KC_DTYPE_FP8_E4M3;
        m->scale_inv = scale_inv;
        return MLS_OK;
    }
    case ENG_V4_WFMT_FP4: {
        uint16_t *bf = v4_own(b, sizeof(uint16_t) * (size_t)(w->rows * w->cols));
        float *row = mls_alloc(MLS_ALLOC_TAG_SCRATCH, sizeof(float) * (size_t)w->cols);
        if (bf == NULL || row == NULL) {
            mls_free(MLS_ALLOC_TAG_SCRATCH, row, sizeof(float) * (size_t)w->cols);
            mls_err_set(b->err, "out of memory decoding the FP4 weight '%s'", name);
            return MLS_ERR_NO_MEMORY;
        }
        for (int64_t r = 0; r < w->rows; r++) {
            eng_v4_weight_row(w, r, row);
            for (int64_t c = 0; c < w->cols; c++) {
                bf[r * w->cols + c] = mls_f32_to_bf16(row[c]);
            }
        }
        mls_free(MLS_ALLOC_TAG_SCRATCH, row, sizeof(float) * (size_t)w->cols);
        m->dtype = KC_DTYPE_BF16;
        m->data = bf;
        return MLS_OK;
    }
    }
    return MLS_OK;
}

/*
 * `<prefix><name>.weight` as an (out, in) linear: BF16/F32, or F8_E4M3 with
 * 128x128 block scales, or - fp4 true - I8 (out, in/2) with per-32 scales.
 */
static mls_status v4_bind_weight(v4_binder *b, const char *name, int64_t out, int64_t in, bool fp4,
                                 eng_v4_weight *w)
{
    static const st_dtype dense_types[] = {ST_DTYPE_BF16, ST_DTYPE_F32, ST_DTYPE_F8_E4M3};
    static const st_dtype fp4_types[] = {ST_DTYPE_I8};
    char base[160], full[176];
    const st_tensor *t;
    mls_status st;

    snprintf(base, sizeof(base), "%s%s", b->prefix, name);
    snprintf(full, sizeof(full), "%s.weight", base);
    memset(w, 0, sizeof(*w));
    w->rows = out;
    w->cols = in;
    if (fp4) {
        int64_t shape[2] = {out, in / 2};
        if (in % ENG_V4_FP4_BLOCK != 0) {
            mls_err_set(b->err, "%s: %lld inputs are not a multiple of the FP4 block (32)", full,
                        (long long)in);
            return MLS_ERR_BAD_MODEL;
        }
        if ((st = st_expect(b->model->archive, full, fp4_types, 1, 2, shape, &t, b->err)) ||
            (st = v4_bind_scale(b, base, out, in / ENG_V4_FP4_BLOCK, &w->scale))) {
            return st;
        }
        w->fmt = ENG_V4_WFMT_FP4;
    } else {
        int64_t shape[2] = {out, in};
        if ((st = st_expect(b->model->archive, full, dense_types, 3, 2, shape, &t, b->err))) {
            return st;
        }
        switch (t->dtype) {
        case ST_DTYPE_BF16:
            w->fmt = ENG_V4_WFMT_BF16;
            break;
        case ST_DTYPE_F32:
            w->fmt = ENG_V4_WFMT_F32;
            break;
        default: /* F8_E4M3 */
            w->fmt = ENG_V4_WFMT_FP8;
            st = v4_bind_scale(b, base, (out + ENG_V4_W_BLOCK - 1) / ENG_V4_W_BLOCK,
                               (in + ENG_V4_W_BLOCK - 1) / ENG_V4_W_BLOCK, &w->scale);
            if (st != MLS_OK) {
                return st;
            }
            break;
        }
        if (w->fmt == ENG_V4_WFMT_F32 && ((uintptr_t)t->data & 3u) != 0) {
            mls_err_set(b->err, "%s: tensor '%s': data is not 4-byte aligned", t->file, full);
            return MLS_ERR_BAD_MODEL;
        }
    }
    w->data = t->data;
    b->model->weight_bytes += t->nbytes;
    return v4_weight_linear(b, full, w);
}

/* ---- vectors ---------------------------------------------------------------- */

/* An allocation the model owns (freed by eng_v4_model_destroy). */
static void *v4_own(v4_binder *b, size_t bytes)
{
    eng_v4_model *m = b->model;
    void *p;

    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? 2 * m->cap_owned : 64;
        void **owned = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, cap * sizeof(void *));
        size_t *sizes = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, cap * sizeof(size_t));
        if (owned == NULL || sizes == NULL) {
            mls_free(MLS_ALLOC_TAG_WEIGHTS, owned, cap * sizeof(void *));
            mls_free(MLS_ALLOC_TAG_WEIGHTS, sizes, cap * sizeof(size_t));
            return NULL;
        }
        if (m->n_owned > 0) {
            memcpy(owned, m->owned, m->n_owned * sizeof(void *));
            memcpy(sizes, m->owned_bytes, m->n_owned * sizeof(size_t));
        }
        mls_free(MLS_ALLOC_TAG_WEIGHTS, m->owned, m->cap_owned * sizeof(void *));
        mls_free(MLS_ALLOC_TAG_WEIGHTS, m->owned_bytes, m->cap_owned * sizeof(size_t));
        m->owned = owned;
        m->owned_bytes = sizes;
        m->cap_owned = cap;
    }
    p = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, bytes);
    if (p != NULL) {
        m->owned[m->n_owned] = p;
        m->owned_bytes[m->n_owned] = bytes;
        m->n_owned++;
    }
    return p;
}

/* `<prefix><name>`, n_dims dims of shape, BF16 or F32, copied to f32. */
static mls_status v4_bind_vector(v4_binder *b, const char *name, int n_dims, const int64_t *shape,
                                 float **out_p)
{
    static const st_dtype types[] = {ST_DTYPE_BF16, ST_DTYPE_F32};
    const st_tensor *t;
    char full[160];
    mls_status st;
    float *v;

    snprintf(full, sizeof(full), "%s%s", b->prefix, name);
    if ((st = st_expect(b->model->archive, full, types, 2, n_dims, shape, &t, b->err))) {
        return st;
    }
    v = v4_own(b, t->nbytes / st_dtype_size(t->dtype) * sizeof(float));
    if (v == NULL) {
        mls_err_set(b->err, "out of memory for '%s'", full);
        return MLS_ERR_NO_MEMORY;
    }
    for (uint64_t i = 0; i < t->nbytes / st_dtype_size(t->dtype); i++) {
        if (t->dtype == ST_DTYPE_BF16) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
            v[i] = mls_bf16_to_f32(h);
        } else {
            memcpy(&v[i], (const uint8_t *)t->data + 4 * i, 4);
        }
    }
    *out_p = v;
    return MLS_OK;
}

static mls_status v4_bind_vec1(v4_binder *b, const char *name, int64_t n, float **out_p)
{
    return v4_bind_vector(b, name, 1, &n, out_p);
}

/* `<prefix><name>`: F32 (rows, cols) used in place (4-byte aligned). */
static mls_status v4_bind_f32_matrix(v4_binder *b, const char *name, int64_t rows, int64_t cols,
                                     const float **out_p)
{
    static const st_dtype types[] = {ST_DTYPE_F32};
    int64_t shape[2] = {rows, cols};
    const st_tensor *t;
    char full[160];
    mls_status st;

    snprintf(full, sizeof(full), "%s%s", b->prefix, name);
    if ((st = st_expect(b->model->archive, full, types, 1, 2, shape, &t, b->err))) {
        return st;
    }
    if (((uintptr_t)t->data & 3u) != 0) {
        mls_err_set(b->err, "%s: tensor '%s': data is not 4-byte aligned", t->file, full);
        return MLS_ERR_BAD_MODEL;
    }
    b->model->weight_bytes += t->nbytes;
    *out_p = t->data;
    return MLS_OK;
}

/* ---- blocks ------------------------------------------------------------------- */

/* hc_<which>_fn (M, h*D), _base (M), _scale (n_scale); M = (2+h)*h, or h for the head. */
static mls_status v4_bind_hc(v4_binder *b, const char *which, int64_t m, int64_t n_scale,
                             eng_v4_hc *hc)
{
    const eng_config *c = &b->model->cfg;
    char name[48];
    mls_status st;

    snprintf(name, sizeof(name), "hc_%s_fn", which);
    if ((st = v4_bind_f32_matrix(b, name, m, (int64_t)c->v4.hc_mult * c->hidden_size, &hc->fn))) {
        return st;
    }
    snprintf(name, sizeof(name), "hc_%s_base", which);
    if ((st = v4_bind_vec1(b, name, m, &hc->base))) {
        return st;
    }
    snprintf(name, sizeof(name), "hc_%s_scale", which);
    return v4_bind_vec1(b, name, n_scale, &hc->scale);
}

/* <base>.ape (m, c*width), .wkv / .wgate (c*width, D), .norm (width). */
static mls_status v4_bind_compressor(v4_binder *b, const char *base, int64_t ratio, int64_t width,
                                     eng_v4_compressor *cmp)
{
    int64_t coff = ratio == 4 ? 2 : 1, hidden = b->model->cfg.hidden_size;
    char name[96];
    mls_status st;

    snprintf(name, sizeof(name), "%s.ape", base);
    if ((st = v4_bind_f32_matrix(b, name, ratio, coff * width, &cmp->ape))) {
        return st;
    }
    snprintf(name, sizeof(name), "%s.wkv", base);
    if ((st = v4_bind_weight(b, name, coff * width, hidden, false, &cmp->wkv))) {
        return st;
    }
    snprintf(name, sizeof(name), "%s.wgate", base);
    if ((st = v4_bind_weight(b, name, coff * width, hidden, false, &cmp->wgate))) {
        return st;
    }
    snprintf(name, sizeof(name), "%s.norm.weight", base);
    return v4_bind_vec1(b, name, width, &cmp->norm);
}

static mls_status v4_bind_attn(v4_binder *b, eng_v4_layer *layer)
{
    const eng_config *c = &b->model->cfg;
    const eng_config_v4 *v = &c->v4;
    int64_t D = c->hidden_size, H = c->num_attention_heads, d = v->head_dim, Q = c->q_lora_rank;
    int64_t G = v->o_groups, R = v->o_lora_rank;
    mls_status st;

    if ((st = v4_bind_vec1(b, "attn.attn_sink", H, &layer->attn_sink)) ||
        (st = v4_bind_weight(b, "attn.wq_a", Q, D, false, &layer->wq_a)) ||
        (st = v4_bind_vec1(b, "attn.q_norm.weight", Q, &layer->q_norm)) ||
        (st = v4_bind_weight(b, "attn.wq_b", H * d, Q, false, &layer->wq_b)) ||
        (st = v4_bind_weight(b, "attn.wkv", d, D, false, &layer->wkv)) ||
        (st = v4_bind_vec1(b, "attn.kv_norm.weight", d, &layer->kv_norm)) ||
        (st = v4_bind_weight(b, "attn.wo_a", G * R, H * d / G, false, &layer->wo_a)) ||
        /* wo_a is BF16 after DeepSeek's conversion and takes an unquantized input */
        (layer->wo_a.fmt == ENG_V4_WFMT_FP8 &&
         (st = v4_weight_widen(b, "attn.wo_a", &layer->wo_a))) ||
        (st = v4_bind_weight(b, "attn.wo_b", D, G * R, false, &layer->wo_b))) {
        return st;
    }
    if (layer->ratio > 0 &&
        (st = v4_bind_compressor(b, "attn.compressor", layer->ratio, d, &layer->compressor))) {
        return st;
    }
    if (layer->ratio == 4) {
        int64_t IH = v->index_n_heads, Id = v->index_head_dim;
        if ((st = v4_bind_weight(b, "attn.indexer.wq_b", IH * Id, Q, false, &layer->idx_wq_b)) ||
            (st = v4_bind_weight(b, "attn.indexer.weights_proj", IH, D, false,
                                 &layer->idx_weights_proj)) ||
            (st =
                 v4_bind_compressor(b, "attn.indexer.compressor", 4, Id, &layer->idx_compressor))) {
            return st;
        }
    }
    return MLS_OK;
}

static mls_status v4_bind_expert(v4_binder *b, const char *base, bool fp4, eng_v4_expert *e)
{
    const eng_config *c = &b->model->cfg;
    int64_t D = c->hidden_size, F = c->moe_intermediate_size;
    char name[96];
    mls_status st;

    snprintf(name, sizeof(name), "%s.w1", base);
    if ((st = v4_bind_weight(b, name, F, D, fp4, &e->w1))) {
        return st;
    }
    snprintf(name, sizeof(name), "%s.w3", base);
    if ((st = v4_bind_weight(b, name, F, D, fp4, &e->w3))) {
        return st;
    }
    snprintf(name, sizeof(name), "%s.w2", base);
    return v4_bind_weight(b, name, D, F, fp4, &e->w2);
}

/* ffn.gate.tid2eid (V, k) I64: every row k distinct experts in [0, E). */
static mls_status v4_bind_tid2eid(v4_binder *b, eng_v4_layer *layer)
{
    static const st_dtype types[] = {ST_DTYPE_I64};
    const eng_config *c = &b->model->cfg;
    int64_t V = c->vocab_size, k = c->num_experts_per_tok, shape[2] = {V, k};
    const st_tensor *t;
    char full[96];
    mls_status st;

    snprintf(full, sizeof(full), "%sffn.gate.tid2eid", b->prefix);
    if ((st = st_expect(b->model->archive, full, types, 1, 2, shape, &t, b->err))) {
        return st;
    }
    layer->tid2eid = v4_own(b, sizeof(int32_t) * (size_t)(V * k));
    if (layer->tid2eid == NULL) {
        mls_err_set(b->err, "out of memory for '%s'", full);
        return MLS_ERR_NO_MEMORY;
    }
    for (int64_t tok = 0; tok < V; tok++) {
        for (int64_t j = 0; j < k; j++) {
            int64_t e;
            memcpy(&e, (const uint8_t *)t->data + 8 * (tok * k + j), sizeof(e));
            if (e < 0 || e >= c->n_routed_experts) {
                mls_err_set(b->err,
                            "%s: tensor '%s': token %lld routes to expert %lld, outside "
                            "[0, %d)",
                            t->file, full, (long long)tok, (long long)e, c->n_routed_experts);
                return MLS_ERR_BAD_MODEL;
            }
            for (int64_t i = 0; i < j; i++) {
                if (layer->tid2eid[tok * k + i] == e) {
                    mls_err_set(b->err, "%s: tensor '%s': token %lld names expert %lld twice",
                                t->file, full, (long long)tok, (long long)e);
                    return MLS_ERR_BAD_MODEL;
                }
            }
            layer->tid2eid[tok * k + j] = (int32_t)e;
        }
    }
    return MLS_OK;
}

static mls_status v4_bind_ffn(v4_binder *b, int32_t l, eng_v4_layer *layer)
{
    const eng_config *c = &b->model->cfg;
    int64_t E = c->n_routed_experts;
    mls_status st;

    if ((st = v4_bind_weight(b, "ffn.gate", E, c->hidden_size, false, &layer->gate))) {
        return st;
    }
    st = l < c->v4.num_hash_layers ? v4_bind_tid2eid(b, layer)
                                   : v4_bind_vec1(b, "ffn.gate.bias", E, &layer->gate_bias);
    if (st != MLS_OK) {
        return st;
    }
    layer->experts = v4_own(b, sizeof(eng_v4_expert) * (size_t)E);
    if (layer->experts == NULL) {
        mls_err_set(b->err, "out of memory for the expert table of layer %d", l);
        return MLS_ERR_NO_MEMORY;
    }
    for (int64_t e = 0; e < E; e++) {
        char base[48];
        snprintf(base, sizeof(base), "ffn.experts.%lld", (long long)e);
        if ((st = v4_bind_expert(b, base, c->v4.expert_fp4, &layer->experts[e]))) {
            return st;
        }
    }
    if (c->n_shared_experts > 0) {
        return v4_bind_expert(b, "ffn.shared_experts", false, &layer->shared);
    }
    return MLS_OK;
}

static mls_status v4_bind_layer(v4_binder *b, int32_t l, eng_v4_layer *layer)
{
    const eng_config *c = &b->model->cfg;
    int64_t h = c->v4.hc_mult, M = (2 + h) * h;
    mls_status st;

    snprintf(b->prefix, sizeof(b->prefix), "layers.%d.", l);
    layer->ratio = eng_config_v4_ratio(c, l);
    if ((st = v4_bind_hc(b, "attn", M, 3, &layer->hc_attn)) ||
        (st = v4_bind_hc(b, "ffn", M, 3, &layer->hc_ffn)) ||
        (st = v4_bind_vec1(b, "attn_norm.weight", c->hidden_size, &layer->attn_norm)) ||
        (st = v4_bind_vec1(b, "ffn_norm.weight", c->hidden_size, &layer->ffn_norm)) ||
        (st = v4_bind_attn(b, layer))) {
        return st;
    }
    return v4_bind_ffn(b, l, layer);
}

static mls_status v4_bind_top(v4_binder *b)
{
    static const st_dtype embed_types[] = {ST_DTYPE_BF16};
    eng_v4_model *m = b->model;
    const eng_config *c = &m->cfg;
    int64_t shape[2] = {c->vocab_size, c->hidden_size};
    const st_tensor *t;
    mls_status st;

    b->prefix[0] = '\0';
    if ((st = st_expect(m->archive, "embed.weight", embed_types, 1, 2, shape, &t, b->err))) {
        return st;
    }
    m->embed = t->data;
    m->weight_bytes += t->nbytes;
    if ((st = v4_bind_weight(b, "head", c->vocab_size, c->hidden_size, false, &m->head)) ||
        (st = v4_bind_vec1(b, "norm.weight", c->hidden_size, &m->norm))) {
        return st;
    }
    return v4_bind_hc(b, "head", c->v4.hc_mult, 1, &m->hc_head);
}

mls_status eng_v4_model_load(const char *dir, eng_v4_model **model_p, mls_err *err)
{
    v4_binder b = {0};
    eng_v4_model *model;
    char path[4096];
    mls_status st;

    model = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, sizeof(*model));
    if (model == NULL) {
        mls_err_set(err, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    memset(model, 0, sizeof(*model));
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if ((st = eng_config_load(path, &model->cfg, err)) != MLS_OK) {
        goto err_destroy;
    }
    if (!model->cfg.is_v4) {
        mls_err_set(err, "%s: model_type is %s, not deepseek_v4", path, model->cfg.model_type);
        st = MLS_ERR_INVALID_ARG;
        goto err_destroy;
    }
    if ((st = st_open_dir(dir, &model->archive, err)) != MLS_OK) {
        goto err_destroy;
    }
    b.model = model;
    b.err = err;
    if ((st = v4_bind_top(&b)) != MLS_OK) {
        goto err_destroy;
    }
    model->layers = v4_own(&b, sizeof(eng_v4_layer) * (size_t)model->cfg.num_hidden_layers);
    if (model->layers == NULL) {
        mls_err_set(err, "%s: out of memory for the layer table", dir);
        st = MLS_ERR_NO_MEMORY;
        goto err_destroy;
    }
    memset(model->layers, 0, sizeof(eng_v4_layer) * (size_t)model->cfg.num_hidden_layers);
    for (int32_t l = 0; l < model->cfg.num_hidden_layers; l++) {
        if ((st = v4_bind_layer(&b, l, &model->layers[l])) != MLS_OK) {
            goto err_destroy;
        }
    }
    *model_p = model;
    return MLS_OK;

err_destroy:
    eng_v4_model_destroy(model);
    return st;
}

void eng_v4_model_destroy(eng_v4_model *model)
{
    if (model == NULL) {
        return;
    }
    for (size_t i = 0; i < model->n_owned; i++) {
        mls_free(MLS_ALLOC_TAG_WEIGHTS, model->owned[i], model->owned_bytes[i]);
    }
    mls_free(MLS_ALLOC_TAG_WEIGHTS, model->owned, model->cap_owned * sizeof(void *));
    mls_free(MLS_ALLOC_TAG_WEIGHTS, model->owned_bytes, model->cap_owned * sizeof(size_t));
    st_close(model->archive);
    mls_free(MLS_ALLOC_TAG_WEIGHTS, model, sizeof(*model));
}
