/*
 * eng_model.c - bind a DeepSeek-V2/V3 checkpoint's tensors to the model.
 * (A DeepSeek-V4 checkpoint is bound by eng_v4_model.c and held in model->v4.)
 *
 * Every tensor the config implies is looked up with its expected dtype and
 * shape before anything runs, so a wrong checkpoint fails at load with the
 * file and tensor named, never in the middle of a request. Linear weights stay
 * in the read-only mapping (bf16/f16/f32, or e4m3 + 128x128 block scales);
 * only the small vectors (norms, router bias) are copied to f32.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "eng_internal.h"
#include "eng_v4.h"
#include "mls_alloc.h"
#include "mls_log.h"
#include "mls_num.h"

typedef struct {
    eng_model *model;
    mls_err *err;
    char prefix[96];
} eng_binder;

static mls_status eng_bind_linear(eng_binder *b, const char *name, int64_t out, int64_t in,
                                  eng_linear *lin)
{
    static const st_dtype dense_types[] = {ST_DTYPE_BF16, ST_DTYPE_F16, ST_DTYPE_F32,
                                           ST_DTYPE_F8_E4M3};
    const st_tensor *w, *s;
    char full[160], scale_name[192];
    int64_t shape[2] = {out, in};
    mls_status st;

    snprintf(full, sizeof(full), "%s%s.weight", b->prefix, name);
    st = st_expect(b->model->archive, full, dense_types, 4, 2, shape, &w, b->err);
    if (st != MLS_OK) {
        return st;
    }
    memset(lin, 0, sizeof(*lin));
    lin->m.rows = out;
    lin->m.cols = in;
    lin->m.data = w->data;
    switch (w->dtype) {
    case ST_DTYPE_BF16:
        lin->m.dtype = KC_DTYPE_BF16;
        break;
    case ST_DTYPE_F16:
        lin->m.dtype = KC_DTYPE_F16;
        break;
    case ST_DTYPE_F32:
        lin->m.dtype = KC_DTYPE_F32;
        break;
    case ST_DTYPE_F8_E4M3: {
        static const st_dtype scale_types[] = {ST_DTYPE_F32};
        int64_t sshape[2] = {(out + KC_FP8_BLOCK - 1) / KC_FP8_BLOCK,
                             (in + KC_FP8_BLOCK - 1) / KC_FP8_BLOCK};
        snprintf(scale_name, sizeof(scale_name), "%s_scale_inv", full);
        st = st_expect(b->model->archive, scale_name, scale_types, 1, 2, sshape, &s, b->err);
        if (st != MLS_OK) {
            return st;
        }
        if (((uintptr_t)s->data & 3u) != 0) {
            mls_err_set(b->err, "%s: tensor '%s': data is not 4-byte aligned", s->file, s->name);
            return MLS_ERR_BAD_MODEL;
        }
        lin->m.dtype = KC_DTYPE_FP8_E4M3;
        lin->m.scale_inv = s->data;
        break;
    }
    default:
        mls_err_set(b->err, "%s: tensor '%s': unsupported dtype %s", w->file, full,
                    st_dtype_name(w->dtype));
        return MLS_ERR_UNSUPPORTED;
    }
    b->model->weight_bytes += w->nbytes;
    return MLS_OK;
}

/* A small 1-D float tensor copied to f32 (norm weights, router bias). */
static mls_status eng_bind_vector(eng_binder *b, const char *name, int64_t n, float **out_p)
{
    static const st_dtype types[] = {ST_DTYPE_BF16, ST_DTYPE_F16, ST_DTYPE_F32};
    const st_tensor *t;
    char full[160];
    mls_status st;
    float *v;

    snprintf(full, sizeof(full), "%s%s", b->prefix, name);
    st = st_expect(b->model->archive, full, types, 3, 1, &n, &t, b->err);
    if (st != MLS_OK) {
        return st;
    }
    v = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, (size_t)n * sizeof(float));
    if (v == NULL) {
        mls_err_set(b->err, "out of memory for '%s'", full);
        return MLS_ERR_NO_MEMORY;
    }
    eng_tensor_to_f32(t, v);
    b->model->small_bytes += (size_t)n * sizeof(float);
    *out_p = v;
    return MLS_OK;
}

static void eng_free_vector(eng_model *model, float *v, int64_t n)
{
    if (v != NULL) {
        mls_free(MLS_ALLOC_TAG_WEIGHTS, v, (size_t)n * sizeof(float));
    }
}

void eng_tensor_to_f32(const st_tensor *t, float *out)
{
    uint64_t n = t->nbytes / st_dtype_size(t->dtype);
    const uint8_t *p = t->data;

    for (uint64_t i = 0; i < n; i++) {
        uint16_t h;
        switch (t->dtype) {
        case ST_DTYPE_BF16:
            memcpy(&h, p + 2 * i, 2);
            out[i] = mls_bf16_to_f32(h);
            break;
        case ST_DTYPE_F16:
            memcpy(&h, p + 2 * i, 2);
            out[i] = mls_f16_to_f32(h);
            break;
        default:
            memcpy(&out[i], p + 4 * i, 4);
            break;
        }
    }
}

static mls_status eng_bind_mlp(eng_binder *b, const char *base, int64_t hidden, int64_t inter,
                               eng_mlp *mlp)
{
    char name[96];
    mls_status st;

    snprintf(name, sizeof(name), "%s.gate_proj", base);
    if ((st = eng_bind_linear(b, name, inter, hidden, &mlp->gate)) != MLS_OK) {
        return st;
    }
    snprintf(name, sizeof(name), "%s.up_proj", base);
    if ((st = eng_bind_linear(b, name, inter, hidden, &mlp->up)) != MLS_OK) {
        return st;
    }
    snprintf(name, sizeof(name), "%s.down_proj", base);
    return eng_bind_linear(b, name, hidden, inter, &mlp->down);
}

static mls_status eng_bind_layer(eng_binder *b, int32_t l, eng_layer *layer)
{
    const eng_config *c = &b->model->cfg;
    int64_t hidden = c->hidden_size, heads = c->num_attention_heads;
    int64_t qk_head = c->qk_nope_head_dim + c->qk_rope_head_dim;
    mls_status st;

    snprintf(b->prefix, sizeof(b->prefix), "model.layers.%d.", l);
    if ((st = eng_bind_vector(b, "input_layernorm.weight", hidden, &layer->attn_norm)) ||
        (st = eng_bind_vector(b, "post_attention_layernorm.weight", hidden, &layer->ffn_norm))) {
        return st;
    }
    if (c->q_lora_rank > 0) {
        if ((st = eng_bind_linear(b, "self_attn.q_a_proj", c->q_lora_rank, hidden, &layer->q_a)) ||
            (st = eng_bind_vector(b, "self_attn.q_a_layernorm.weight", c->q_lora_rank,
                                  &layer->q_a_norm)) ||
            (st = eng_bind_linear(b, "self_attn.q_b_proj", heads * qk_head, c->q_lora_rank,
                                  &layer->q_b))) {
            return st;
        }
    } else if ((st = eng_bind_linear(b, "self_attn.q_proj", heads * qk_head, hidden, &layer->q))) {
        return st;
    }
    if ((st = eng_bind_linear(b, "self_attn.kv_a_proj_with_mqa",
                              c->kv_lora_rank + c->qk_rope_head_dim, hidden, &layer->kv_a)) ||
        (st = eng_bind_vector(b, "self_attn.kv_a_layernorm.weight", c->kv_lora_rank,
                              &layer->kv_a_norm)) ||
        (st = eng_bind_linear(b, "self_attn.kv_b_proj",
                              heads * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
                              &layer->kv_b)) ||
        (st = eng_bind_linear(b, "self_attn.o_proj", hidden, heads * c->v_head_dim, &layer->o))) {
        return st;
    }

    layer->is_moe = eng_config_layer_is_moe(c, l);
    if (!layer->is_moe) {
        return eng_bind_mlp(b, "mlp", hidden, c->intermediate_size, &layer->mlp);
    }
    if ((st = eng_bind_linear(b, "mlp.gate", c->n_routed_experts, hidden, &layer->router))) {
        return st;
    }
    if (c->topk_method == ENG_TOPK_NOAUX_TC &&
        (st = eng_bind_vector(b, "mlp.gate.e_score_correction_bias", c->n_routed_experts,
                              &layer->router_bias))) {
        return st;
    }
    layer->experts = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, sizeof(eng_mlp) * (size_t)c->n_routed_experts);
    if (layer->experts == NULL) {
        mls_err_set(b->err, "out of memory for the expert table of layer %d", l);
        return MLS_ERR_NO_MEMORY;
    }
    for (int32_t e = 0; e < c->n_routed_experts; e++) {
        char base[48];
        snprintf(base, sizeof(base), "mlp.experts.%d", e);
        if ((st = eng_bind_mlp(b, base, hidden, c->moe_intermediate_size, &layer->experts[e]))) {
            return st;
        }
    }
    if (c->n_shared_experts > 0) {
        return eng_bind_mlp(b, "mlp.shared_experts", hidden,
                            (int64_t)c->moe_intermediate_size * c->n_shared_experts,
                            &layer->shared);
    }
    return MLS_OK;
}

void eng_rope_init(const eng_config *cfg, float *inv_freq, float *mscale_p, float *softmax_scale_p)
{
    int32_t d = cfg->qk_rope_head_dim;
    double base = cfg->rope_theta;
    float scale = 1.0f / sqrtf((float)(cfg->qk_nope_head_dim + cfg->qk_rope_head_dim));
    float mscale = 1.0f;

    for (int32_t i = 0; i < d / 2; i++) {
        /* as the reference: 1 / base^(2i/d) in fp32 */
        inv_freq[i] = (float)(1.0 / pow(base, (double)(2 * i) / d));
    }
    if (cfg->rope_yarn && cfg->rope_factor > 1.0f) {
        double orig = (double)cfg->rope_original_max_position_embeddings;
        double lo = floor(d * log(orig / (cfg->rope_beta_fast * 2 * M_PI)) / (2 * log(base)));
        double hi = ceil(d * log(orig / (cfg->rope_beta_slow * 2 * M_PI)) / (2 * log(base)));
        float m_all, m;
        lo = fmax(lo, 0);
        hi = fmin(hi, d - 1);
        if (lo == hi) {
            hi += 0.001;
        }
        for (int32_t i = 0; i < d / 2; i++) {
            float ramp = (float)((i - lo) / (hi - lo));
            ramp = fminf(fmaxf(ramp, 0.0f), 1.0f);
            inv_freq[i] = inv_freq[i] / cfg->rope_factor * ramp + inv_freq[i] * (1.0f - ramp);
        }
        /* yarn_get_mscale(s, m) = 0.1 m ln s + 1 */
        m_all = 0.1f * cfg->rope_mscale_all_dim * logf(cfg->rope_factor) + 1.0f;
        m = 0.1f * cfg->rope_mscale * logf(cfg->rope_factor) + 1.0f;
        scale *= m_all * m_all;
        mscale = m / m_all;
    }
    *mscale_p = mscale;
    *softmax_scale_p = scale;
}

/* Config + every tensor's name, dtype, shape and its first/last bytes. */
static uint64_t eng_model_fingerprint_compute(const eng_model *model)
{
    XXH3_state_t *h = XXH3_createState();
    uint64_t fp;

    XXH3_64bits_reset(h);
    XXH3_64bits_update(h, &model->cfg,
                       model->cfg.is_v4 ? sizeof(model->cfg) : ENG_CONFIG_V23_BYTES);
    for (size_t i = 0; i < st_count(model->archive); i++) {
        const st_tensor *t = st_at(model->archive, i);
        uint64_t edge = t->nbytes < 64 ? t->nbytes : 64;
        XXH3_64bits_update(h, t->name, strlen(t->name));
        XXH3_64bits_update(h, &t->dtype, sizeof(t->dtype));
        XXH3_64bits_update(h, t->shape, sizeof(t->shape[0]) * (size_t)t->n_dims);
        XXH3_64bits_update(h, t->data, edge);
        XXH3_64bits_update(h, (const uint8_t *)t->data + t->nbytes - edge, edge);
    }
    fp = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    return fp;
}

/*
 * A DeepSeek-V4 checkpoint: eng_v4_model_load binds and checks every tensor
 * (a malformed one gets its precise error); model->v4 holds it, and the
 * fingerprint covers its config and tensor table like a V2/V3 model's.
 */
static mls_status eng_model_load_v4(const char *dir, eng_model *model, mls_err *err)
{
    mls_status st = eng_v4_model_load(dir, &model->v4, err);

    if (st != MLS_OK) {
        return st;
    }
    model->cfg = model->v4->cfg;
    model->archive = model->v4->archive; /* borrowed: the V4 model closes it */
    model->weight_bytes = model->v4->weight_bytes;
    model->fingerprint = eng_model_fingerprint_compute(model);
    mls_info("loaded %s: DeepSeek-V4, %d layers, %.1f MB of weights, fingerprint %016llx", dir,
             model->cfg.num_hidden_layers, (double)model->weight_bytes / 1e6,
             (unsigned long long)model->fingerprint);
    return MLS_OK;
}

mls_status eng_model_load(const char *dir, const eng_load_opts *opts, eng_model **model_p,
                          mls_err *err)
{
    eng_binder b = {0};
    eng_model *model;
    const eng_config *c;
    char path[4096];
    mls_status st;
    bool progress = opts != NULL && opts->progress && isatty(STDERR_FILENO);

    model = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, sizeof(*model));
    if (model == NULL) {
        mls_err_set(err, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    snprintf(path, sizeof(path), "%s/config.json", dir);
    st = eng_config_load(path, &model->cfg, err);
    if (st != MLS_OK) {
        goto err_free_model;
    }
    c = &model->cfg;
    if (c->is_v4) {
        if ((st = eng_model_load_v4(dir, model, err)) != MLS_OK) {
            goto err_free_model;
        }
        *model_p = model;
        return MLS_OK;
    }
    if (c->n_group > ENG_ROUTE_MAX_GROUPS) {
        mls_err_set(err, "%s: n_group %d exceeds the %d expert groups supported", path, c->n_group,
                    ENG_ROUTE_MAX_GROUPS);
        st = MLS_ERR_UNSUPPORTED;
        goto err_free_model;
    }
    st = st_open_dir(dir, &model->archive, err);
    if (st != MLS_OK) {
        goto err_free_model;
    }

    b.model = model;
    b.err = err;
    {
        static const st_dtype embed_types[] = {ST_DTYPE_BF16};
        int64_t shape[2] = {c->vocab_size, c->hidden_size};
        const st_tensor *t;
        st = st_expect(model->archive, "model.embed_tokens.weight", embed_types, 1, 2, shape, &t,
                       err);
        if (st != MLS_OK) {
            goto err_destroy;
        }
        model->embed = t->data;
        model->embed_dtype = t->dtype;
    }
    model->layers = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, sizeof(eng_layer) * (size_t)c->num_hidden_layers);
    if (model->layers == NULL) {
        st = MLS_ERR_NO_MEMORY;
        goto err_destroy;
    }
    for (int32_t l = 0; l < c->num_hidden_layers; l++) {
        if (progress) {
            fprintf(stderr, "\rloading %s: layer %d/%d", dir, l + 1, c->num_hidden_layers);
        }
        st = eng_bind_layer(&b, l, &model->layers[l]);
        if (st != MLS_OK) {
            goto err_destroy;
        }
    }
    if (progress) {
        fprintf(stderr, "\n");
    }
    b.prefix[0] = '\0';
    if ((st = eng_bind_vector(&b, "model.norm.weight", c->hidden_size, &model->final_norm)) ||
        (st = eng_bind_linear(&b, "lm_head", c->vocab_size, c->hidden_size, &model->lm_head))) {
        goto err_destroy;
    }
    model->inv_freq = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, sizeof(float) * (size_t)c->qk_rope_head_dim);
    if (model->inv_freq == NULL) {
        st = MLS_ERR_NO_MEMORY;
        goto err_destroy;
    }
    eng_rope_init(c, model->inv_freq, &model->rope_mscale, &model->softmax_scale);
    eng_route_params_from_config(c, &model->route);
    model->fingerprint = eng_model_fingerprint_compute(model);
    model->weight_bytes += (uint64_t)c->vocab_size * c->hidden_size * 2;
    mls_info("loaded %s: %d layers, %.1f MB of weights, fingerprint %016llx", dir,
             c->num_hidden_layers, (double)model->weight_bytes / 1e6,
             (unsigned long long)model->fingerprint);
    *model_p = model;
    return MLS_OK;

err_destroy:
    if (st == MLS_ERR_NO_MEMORY && err != NULL && err->msg[0] == '\0') {
        mls_err_set(err, "%s: out of memory while binding weights", dir);
    }
    eng_model_destroy(model);
    return st;
err_free_model:
    mls_free(MLS_ALLOC_TAG_WEIGHTS, model, sizeof(*model));
    return st;
}

void eng_model_destroy(eng_model *model)
{
    const eng_config *c;

    if (model == NULL) {
        return;
    }
    if (model->v4 != NULL) {
        eng_v4_model_destroy(model->v4); /* closes the archive */
        mls_free(MLS_ALLOC_TAG_WEIGHTS, model, sizeof(*model));
        return;
    }
    c = &model->cfg;
    if (model->layers != NULL) {
        for (int32_t l = 0; l < c->num_hidden_layers; l++) {
            eng_layer *layer = &model->layers[l];
            eng_free_vector(model, layer->attn_norm, c->hidden_size);
            eng_free_vector(model, layer->ffn_norm, c->hidden_size);
            eng_free_vector(model, layer->q_a_norm, c->q_lora_rank);
            eng_free_vector(model, layer->kv_a_norm, c->kv_lora_rank);
            eng_free_vector(model, layer->router_bias, c->n_routed_experts);
            mls_free(MLS_ALLOC_TAG_WEIGHTS, layer->experts,
                     sizeof(eng_mlp) * (size_t)c->n_routed_experts);
        }
        mls_free(MLS_ALLOC_TAG_WEIGHTS, model->layers, sizeof(eng_layer) * (size_t)c->num_hidden_layers);
    }
    eng_free_vector(model, model->final_norm, c->hidden_size);
    eng_free_vector(model, model->inv_freq, c->qk_rope_head_dim);
    st_close(model->archive);
    mls_free(MLS_ALLOC_TAG_WEIGHTS, model, sizeof(*model));
}

const eng_config *eng_model_config(const eng_model *model)
{
    return &model->cfg;
}

uint64_t eng_model_fingerprint(const eng_model *model)
{
    return model->fingerprint;
}

uint64_t eng_model_weight_bytes(const eng_model *model)
{
    return model->weight_bytes;
}
