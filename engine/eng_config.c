/*
 * eng_config.c - parse and validate a DeepSeek-V2/V3/V4 config.json.
 *
 * Keys follow the Hugging Face configs (configuration_deepseek.py). Architecture
 * dimensions are required; routing and numeric knobs take the defaults of
 * DeepSeek's own config class when absent (moe_layer_freq 1, n_group 1,
 * topk_group 1, norm_topk_prob false, routed_scaling_factor 1.0,
 * n_shared_experts none, first_k_dense_replace 0, rms_norm_eps 1e-6,
 * rope_theta 10000, topk_method greedy, scoring_func softmax). bos/eos are -1
 * when absent. Every error names the source and the key.
 *
 * DeepSeek-V4 (model_type deepseek_v4) has its own key set, the official
 * DeepSeek-V4-Flash config.json's (README-v4 section 1); cfg_parse_v4 reads
 * it. Its dimensions are all required; hc_eps 1e-6, hc_sinkhorn_iters 20,
 * swiglu_limit 0 (no clamp), num_hash_layers 0, num_nextn_predict_layers 0
 * and compress_rope_theta = rope_theta are the defaults.
 */
#include "eng_config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const cJSON *obj;
    const char *source;
    const char *prefix; /* "" or "rope_scaling." */
    mls_err *err;
} cfg_ctx;

static const cJSON *cfg_get(const cfg_ctx *c, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->obj, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static mls_status cfg_missing(const cfg_ctx *c, const char *key)
{
    mls_err_set(c->err, "%s: missing required key \"%s%s\"", c->source, c->prefix, key);
    return MLS_ERR_BAD_MODEL;
}

static mls_status cfg_bad(const cfg_ctx *c, const char *key, const char *what)
{
    mls_err_set(c->err, "%s: key \"%s%s\" %s", c->source, c->prefix, key, what);
    return MLS_ERR_BAD_MODEL;
}

/* The integer value of item `v` (of key `key`). */
static mls_status cfg_int_value(const cfg_ctx *c, const char *key, const cJSON *v, int64_t *v_p)
{
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        fabs(v->valuedouble) > 9007199254740992.0) {
        return cfg_bad(c, key, "must be an integer");
    }
    *v_p = (int64_t)v->valuedouble;
    return MLS_OK;
}

/* Integer key; *present_p false (and *v_p untouched) when absent or null. */
static mls_status cfg_int_opt(const cfg_ctx *c, const char *key, int64_t *v_p, bool *present_p)
{
    const cJSON *v = cfg_get(c, key);
    *present_p = v != NULL;
    return v == NULL ? MLS_OK : cfg_int_value(c, key, v, v_p);
}

static mls_status cfg_i32(const cfg_ctx *c, const char *key, bool required, int32_t dflt,
                          int32_t *v_p)
{
    int64_t v = dflt;
    bool present;
    mls_status st = cfg_int_opt(c, key, &v, &present);
    if (st != MLS_OK) {
        return st;
    }
    if (!present && required) {
        return cfg_missing(c, key);
    }
    if (v < INT32_MIN || v > INT32_MAX) {
        return cfg_bad(c, key, "is out of the 32-bit range");
    }
    *v_p = (int32_t)v;
    return MLS_OK;
}

static mls_status cfg_f32(const cfg_ctx *c, const char *key, bool required, float dflt, float *v_p)
{
    const cJSON *v = cfg_get(c, key);
    if (v == NULL) {
        if (required) {
            return cfg_missing(c, key);
        }
        *v_p = dflt;
        return MLS_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        return cfg_bad(c, key, "must be a number");
    }
    *v_p = (float)v->valuedouble;
    return MLS_OK;
}

static mls_status cfg_bool(const cfg_ctx *c, const char *key, bool dflt, bool *v_p)
{
    const cJSON *v = cfg_get(c, key);
    if (v == NULL) {
        *v_p = dflt;
        return MLS_OK;
    }
    if (!cJSON_IsBool(v)) {
        return cfg_bad(c, key, "must be true or false");
    }
    *v_p = cJSON_IsTrue(v);
    return MLS_OK;
}

/* String key; NULL when absent or null. */
static mls_status cfg_str(const cfg_ctx *c, const char *key, const char **v_p)
{
    const cJSON *v = cfg_get(c, key);
    *v_p = NULL;
    if (v == NULL) {
        return MLS_OK;
    }
    if (!cJSON_IsString(v)) {
        return cfg_bad(c, key, "must be a string");
    }
    *v_p = v->valuestring;
    return MLS_OK;
}

/* A token id: integer, or a list of them (the first is taken); -1 when absent. */
static mls_status cfg_token_id(const cfg_ctx *c, const char *key, int32_t *v_p)
{
    const cJSON *v = cfg_get(c, key);
    int64_t id = -1;
    *v_p = -1;
    if (v == NULL) {
        return MLS_OK;
    }
    if (cJSON_IsArray(v)) {
        if (cJSON_GetArraySize(v) == 0) {
            return cfg_bad(c, key, "is an empty list");
        }
        v = cJSON_GetArrayItem(v, 0);
    }
    mls_status st = cfg_int_value(c, key, v, &id);
    if (st != MLS_OK) {
        return st;
    }
    if (id < 0 || id > INT32_MAX) {
        return cfg_bad(c, key, "must be a non-negative token id");
    }
    *v_p = (int32_t)id;
    return MLS_OK;
}

#define CFG_TRY(expr)                                                                              \
    do {                                                                                           \
        mls_status st_ = (expr);                                                                   \
        if (st_ != MLS_OK) {                                                                       \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

static mls_status cfg_rope_scaling(const cfg_ctx *c, eng_config *cfg)
{
    const cJSON *rs = cfg_get(c, "rope_scaling");
    if (rs == NULL) {
        return MLS_OK;
    }
    if (!cJSON_IsObject(rs)) {
        return cfg_bad(c, "rope_scaling", "must be an object or null");
    }
    cfg_ctx r = {rs, c->source, "rope_scaling.", c->err};
    const char *type, *rope_type;
    CFG_TRY(cfg_str(&r, "type", &type));
    CFG_TRY(cfg_str(&r, "rope_type", &rope_type));
    if (type == NULL) {
        type = rope_type;
    }
    if (type == NULL) {
        return cfg_missing(&r, "type");
    }
    if (strcmp(type, "yarn") != 0) {
        mls_err_set(c->err,
                    "%s: key \"rope_scaling.type\" is \"%.32s\"; only \"yarn\" is supported",
                    c->source, type);
        return MLS_ERR_UNSUPPORTED;
    }
    int64_t orig = 0;
    bool present;
    cfg->rope_yarn = true;
    CFG_TRY(cfg_f32(&r, "factor", true, 1.0f, &cfg->rope_factor));
    CFG_TRY(cfg_int_opt(&r, "original_max_position_embeddings", &orig, &present));
    if (!present) {
        return cfg_missing(&r, "original_max_position_embeddings");
    }
    cfg->rope_original_max_position_embeddings = orig;
    CFG_TRY(cfg_f32(&r, "beta_fast", false, 32.0f, &cfg->rope_beta_fast));
    CFG_TRY(cfg_f32(&r, "beta_slow", false, 1.0f, &cfg->rope_beta_slow));
    CFG_TRY(cfg_f32(&r, "mscale", false, 1.0f, &cfg->rope_mscale));
    CFG_TRY(cfg_f32(&r, "mscale_all_dim", false, 0.0f, &cfg->rope_mscale_all_dim));
    if (!(cfg->rope_factor >= 1.0f)) {
        return cfg_bad(&r, "factor", "must be >= 1");
    }
    if (orig <= 0) {
        return cfg_bad(&r, "original_max_position_embeddings", "must be positive");
    }
    if (!(cfg->rope_beta_fast > 0 && cfg->rope_beta_slow > 0)) {
        return cfg_bad(&r, "beta_fast", "and beta_slow must be positive");
    }
    return MLS_OK;
}

static mls_status cfg_quantization(const cfg_ctx *c, eng_config *cfg)
{
    const cJSON *q = cfg_get(c, "quantization_config");
    if (q == NULL) {
        return MLS_OK;
    }
    if (!cJSON_IsObject(q)) {
        return cfg_bad(c, "quantization_config", "must be an object or null");
    }
    cfg_ctx r = {q, c->source, "quantization_config.", c->err};
    const char *method, *fmt, *act;
    CFG_TRY(cfg_str(&r, "quant_method", &method));
    CFG_TRY(cfg_str(&r, "fmt", &fmt));
    CFG_TRY(cfg_str(&r, "activation_scheme", &act));
    if (method == NULL) {
        return cfg_missing(&r, "quant_method");
    }
    if (strcmp(method, "fp8") != 0) {
        mls_err_set(c->err,
                    "%s: key \"quantization_config.quant_method\" is \"%.32s\"; only \"fp8\" is "
                    "supported",
                    c->source, method);
        return MLS_ERR_UNSUPPORTED;
    }
    if (fmt != NULL && strcmp(fmt, "e4m3") != 0) {
        mls_err_set(c->err,
                    "%s: key \"quantization_config.fmt\" is \"%.32s\"; only \"e4m3\" is supported",
                    c->source, fmt);
        return MLS_ERR_UNSUPPORTED;
    }
    if (act != NULL && strcmp(act, "dynamic") != 0) {
        mls_err_set(c->err,
                    "%s: key \"quantization_config.activation_scheme\" is \"%.32s\"; only "
                    "\"dynamic\" is supported",
                    c->source, act);
        return MLS_ERR_UNSUPPORTED;
    }
    const cJSON *bs = cfg_get(&r, "weight_block_size");
    if (bs == NULL) {
        return cfg_missing(&r, "weight_block_size");
    }
    if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 ||
        !cJSON_IsNumber(cJSON_GetArrayItem(bs, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(bs, 1))) {
        return cfg_bad(&r, "weight_block_size", "must be a list of two integers");
    }
    double b0 = cJSON_GetArrayItem(bs, 0)->valuedouble, b1 = cJSON_GetArrayItem(bs, 1)->valuedouble;
    if (b0 != 128 || b1 != 128) {
        mls_err_set(c->err,
                    "%s: key \"quantization_config.weight_block_size\" is [%g, %g]; only [128, "
                    "128] is supported",
                    c->source, b0, b1);
        return MLS_ERR_UNSUPPORTED;
    }
    cfg->fp8 = true;
    cfg->fp8_block[0] = 128;
    cfg->fp8_block[1] = 128;
    return MLS_OK;
}

static mls_status cfg_enums(const cfg_ctx *c, eng_config *cfg)
{
    const char *s;
    CFG_TRY(cfg_str(c, "topk_method", &s));
    if (s == NULL || strcmp(s, "greedy") == 0 || strcmp(s, "gready") == 0) {
        cfg->topk_method = ENG_TOPK_GREEDY; /* "gready" is the typo in DeepSeek-V2's default */
    } else if (strcmp(s, "group_limited_greedy") == 0) {
        cfg->topk_method = ENG_TOPK_GROUP_LIMITED_GREEDY;
    } else if (strcmp(s, "noaux_tc") == 0) {
        cfg->topk_method = ENG_TOPK_NOAUX_TC;
    } else {
        mls_err_set(c->err,
                    "%s: key \"topk_method\" is \"%.32s\"; want greedy, "
                    "group_limited_greedy or noaux_tc",
                    c->source, s);
        return MLS_ERR_UNSUPPORTED;
    }
    CFG_TRY(cfg_str(c, "scoring_func", &s));
    if (s == NULL || strcmp(s, "softmax") == 0) {
        cfg->scoring_func = ENG_SCORE_SOFTMAX;
    } else if (strcmp(s, "sigmoid") == 0) {
        cfg->scoring_func = ENG_SCORE_SIGMOID;
    } else {
        mls_err_set(c->err, "%s: key \"scoring_func\" is \"%.32s\"; want softmax or sigmoid",
                    c->source, s);
        return MLS_ERR_UNSUPPORTED;
    }
    CFG_TRY(cfg_str(c, "hidden_act", &s));
    if (s != NULL && strcmp(s, "silu") != 0) {
        mls_err_set(c->err, "%s: key \"hidden_act\" is \"%.32s\"; only silu is supported",
                    c->source, s);
        return MLS_ERR_UNSUPPORTED;
    }
    bool attention_bias;
    CFG_TRY(cfg_bool(c, "attention_bias", false, &attention_bias));
    if (attention_bias) {
        mls_err_set(c->err, "%s: key \"attention_bias\" is true; unsupported", c->source);
        return MLS_ERR_UNSUPPORTED;
    }
    return MLS_OK;
}

static mls_status cfg_positive(const cfg_ctx *c, const char *key, int64_t v)
{
    return v > 0 ? MLS_OK : cfg_bad(c, key, "must be positive");
}

/* The checks every model family shares: norms, rotary base, special tokens. */
static mls_status cfg_validate_shared(const cfg_ctx *c, const eng_config *cfg)
{
    if (!(cfg->rms_norm_eps > 0)) {
        return cfg_bad(c, "rms_norm_eps", "must be positive");
    }
    if (!(cfg->rope_theta > 0)) {
        return cfg_bad(c, "rope_theta", "must be positive");
    }
    if (cfg->bos_token_id >= cfg->vocab_size || cfg->bos_token_id < -1) {
        return cfg_bad(c, "bos_token_id", "is outside the vocabulary");
    }
    if (cfg->eos_token_id >= cfg->vocab_size || cfg->eos_token_id < -1) {
        return cfg_bad(c, "eos_token_id", "is outside the vocabulary");
    }
    return MLS_OK;
}

static mls_status cfg_validate(const cfg_ctx *c, const eng_config *cfg)
{
    CFG_TRY(cfg_positive(c, "vocab_size", cfg->vocab_size));
    CFG_TRY(cfg_positive(c, "hidden_size", cfg->hidden_size));
    CFG_TRY(cfg_positive(c, "intermediate_size", cfg->intermediate_size));
    CFG_TRY(cfg_positive(c, "num_hidden_layers", cfg->num_hidden_layers));
    CFG_TRY(cfg_positive(c, "num_attention_heads", cfg->num_attention_heads));
    CFG_TRY(cfg_positive(c, "kv_lora_rank", cfg->kv_lora_rank));
    CFG_TRY(cfg_positive(c, "qk_nope_head_dim", cfg->qk_nope_head_dim));
    CFG_TRY(cfg_positive(c, "qk_rope_head_dim", cfg->qk_rope_head_dim));
    CFG_TRY(cfg_positive(c, "v_head_dim", cfg->v_head_dim));
    CFG_TRY(cfg_positive(c, "max_position_embeddings", cfg->max_position_embeddings));
    if (cfg->q_lora_rank < 0) {
        return cfg_bad(c, "q_lora_rank", "must be positive or null");
    }
    if (cfg->kv_lora_rank % 4 != 0) {
        return cfg_bad(c, "kv_lora_rank", "must be a multiple of 4 (KV page layout)");
    }
    if (cfg->qk_rope_head_dim % 2 != 0) {
        return cfg_bad(c, "qk_rope_head_dim", "must be even (rotary pairs)");
    }
    int64_t q_rows =
        (int64_t)cfg->num_attention_heads * (cfg->qk_nope_head_dim + cfg->qk_rope_head_dim);
    int64_t kv_rows = (int64_t)cfg->num_attention_heads * (cfg->qk_nope_head_dim + cfg->v_head_dim);
    if (q_rows > INT32_MAX || kv_rows > INT32_MAX) {
        return cfg_bad(c, "num_attention_heads", "times the head dims exceeds 2^31");
    }
    if (cfg->n_routed_experts < 0) {
        return cfg_bad(c, "n_routed_experts", "must be non-negative or null");
    }
    if (cfg->n_shared_experts < 0) {
        return cfg_bad(c, "n_shared_experts", "must be non-negative or null");
    }
    if (cfg->first_k_dense_replace < 0) {
        return cfg_bad(c, "first_k_dense_replace", "must be non-negative");
    }
    CFG_TRY(cfg_positive(c, "moe_layer_freq", cfg->moe_layer_freq));
    if (cfg->n_routed_experts > 0) {
        CFG_TRY(cfg_positive(c, "moe_intermediate_size", cfg->moe_intermediate_size));
        CFG_TRY(cfg_positive(c, "num_experts_per_tok", cfg->num_experts_per_tok));
        CFG_TRY(cfg_positive(c, "n_group", cfg->n_group));
        CFG_TRY(cfg_positive(c, "topk_group", cfg->topk_group));
        if (cfg->num_experts_per_tok > cfg->n_routed_experts) {
            return cfg_bad(c, "num_experts_per_tok", "exceeds n_routed_experts");
        }
        if (cfg->n_routed_experts % cfg->n_group != 0) {
            return cfg_bad(c, "n_group", "must divide n_routed_experts");
        }
        if (cfg->topk_group > cfg->n_group) {
            return cfg_bad(c, "topk_group", "exceeds n_group");
        }
        if (cfg->topk_method != ENG_TOPK_GREEDY &&
            cfg->num_experts_per_tok > cfg->topk_group * (cfg->n_routed_experts / cfg->n_group)) {
            return cfg_bad(c, "num_experts_per_tok",
                           "exceeds the experts in topk_group groups of n_routed_experts/n_group");
        }
        if (!(cfg->routed_scaling_factor > 0)) {
            return cfg_bad(c, "routed_scaling_factor", "must be positive");
        }
    }
    return cfg_validate_shared(c, cfg);
}

/* ---- DeepSeek-V4 ------------------------------------------------------- */

/* quantization_config.scale_fmt (V4: the scales are UE8M0) and expert_dtype. */
static mls_status cfg_v4_formats(const cfg_ctx *c, eng_config *cfg)
{
    const char *s;
    const cJSON *q = cfg_get(c, "quantization_config");
    if (q != NULL) {
        cfg_ctx r = {q, c->source, "quantization_config.", c->err};
        CFG_TRY(cfg_str(&r, "scale_fmt", &s));
        if (s != NULL && strcmp(s, "ue8m0") != 0) {
            mls_err_set(c->err,
                        "%s: key \"quantization_config.scale_fmt\" is \"%.32s\"; only \"ue8m0\" "
                        "is supported",
                        c->source, s);
            return MLS_ERR_UNSUPPORTED;
        }
    }
    CFG_TRY(cfg_str(c, "expert_dtype", &s));
    if (s != NULL && strcmp(s, "fp4") != 0 && strcmp(s, "fp8") != 0 && strcmp(s, "bf16") != 0) {
        mls_err_set(c->err, "%s: key \"expert_dtype\" is \"%.32s\"; want fp4, fp8 or bf16",
                    c->source, s);
        return MLS_ERR_UNSUPPORTED;
    }
    cfg->v4.expert_fp4 = s != NULL && strcmp(s, "fp4") == 0;
    if (cfg->v4.expert_fp4 && !cfg->fp8) {
        return cfg_bad(c, "expert_dtype", "is fp4 but quantization_config is absent");
    }
    return MLS_OK;
}

/* compress_ratios: one per layer (MTP layers' may follow), each 0 or > 1. */
static mls_status cfg_v4_ratios(const cfg_ctx *c, eng_config *cfg)
{
    const cJSON *a = cfg_get(c, "compress_ratios");
    eng_config_v4 *v = &cfg->v4;
    int n;

    if (a == NULL) {
        return cfg_missing(c, "compress_ratios");
    }
    if (!cJSON_IsArray(a)) {
        return cfg_bad(c, "compress_ratios", "must be a list of integers");
    }
    n = cJSON_GetArraySize(a);
    if (n != cfg->num_hidden_layers && n != cfg->num_hidden_layers + v->num_nextn_predict_layers) {
        mls_err_set(c->err,
                    "%s: key \"compress_ratios\" has %d entries; want num_hidden_layers (%d) or "
                    "num_hidden_layers + num_nextn_predict_layers (%d)",
                    c->source, n, cfg->num_hidden_layers,
                    cfg->num_hidden_layers + v->num_nextn_predict_layers);
        return MLS_ERR_BAD_MODEL;
    }
    if (n > ENG_V4_MAX_LAYERS) {
        return cfg_bad(c, "compress_ratios", "has more entries than this build supports (512)");
    }
    for (int i = 0; i < n; i++) {
        int64_t r;
        CFG_TRY(cfg_int_value(c, "compress_ratios", cJSON_GetArrayItem(a, i), &r));
        if (r < 0 || r == 1 || r > 65536) {
            mls_err_set(c->err,
                        "%s: key \"compress_ratios\" entry %d is %lld; want 0 (window only), 4 "
                        "(CSA) or another ratio in 2..65536 (HCA)",
                        c->source, i, (long long)r);
            return MLS_ERR_BAD_MODEL;
        }
        v->compress_ratios[i] = (int32_t)r;
    }
    v->n_compress_ratios = n;
    return MLS_OK;
}

static mls_status cfg_v4_enums(const cfg_ctx *c, eng_config *cfg)
{
    const char *s;
    CFG_TRY(cfg_str(c, "scoring_func", &s));
    if (s == NULL) {
        return cfg_missing(c, "scoring_func");
    }
    if (strcmp(s, "sqrtsoftplus") == 0) {
        cfg->scoring_func = ENG_SCORE_SQRTSOFTPLUS;
    } else if (strcmp(s, "sigmoid") == 0) {
        cfg->scoring_func = ENG_SCORE_SIGMOID;
    } else if (strcmp(s, "softmax") == 0) {
        cfg->scoring_func = ENG_SCORE_SOFTMAX;
    } else {
        mls_err_set(c->err,
                    "%s: key \"scoring_func\" is \"%.32s\"; want sqrtsoftplus, sigmoid or softmax",
                    c->source, s);
        return MLS_ERR_UNSUPPORTED;
    }
    CFG_TRY(cfg_str(c, "topk_method", &s));
    if (s != NULL && strcmp(s, "noaux_tc") != 0) {
        mls_err_set(c->err, "%s: key \"topk_method\" is \"%.32s\"; DeepSeek-V4 wants noaux_tc",
                    c->source, s);
        return MLS_ERR_UNSUPPORTED;
    }
    cfg->topk_method = ENG_TOPK_NOAUX_TC;
    CFG_TRY(cfg_str(c, "hidden_act", &s));
    if (s != NULL && strcmp(s, "silu") != 0) {
        mls_err_set(c->err, "%s: key \"hidden_act\" is \"%.32s\"; only silu is supported",
                    c->source, s);
        return MLS_ERR_UNSUPPORTED;
    }
    bool attention_bias;
    CFG_TRY(cfg_bool(c, "attention_bias", false, &attention_bias));
    if (attention_bias) {
        mls_err_set(c->err, "%s: key \"attention_bias\" is true; unsupported", c->source);
        return MLS_ERR_UNSUPPORTED;
    }
    return MLS_OK;
}

static bool cfg_pow2(int64_t v)
{
    return v > 0 && (v & (v - 1)) == 0;
}

/* The V4 values that the forward pass and the KV layout rely on. */
static mls_status cfg_v4_validate(const cfg_ctx *c, const eng_config *cfg)
{
    const eng_config_v4 *v = &cfg->v4;
    int32_t rope = cfg->qk_rope_head_dim;

    CFG_TRY(cfg_positive(c, "vocab_size", cfg->vocab_size));
    CFG_TRY(cfg_positive(c, "hidden_size", cfg->hidden_size));
    CFG_TRY(cfg_positive(c, "num_hidden_layers", cfg->num_hidden_layers));
    CFG_TRY(cfg_positive(c, "num_attention_heads", cfg->num_attention_heads));
    CFG_TRY(cfg_positive(c, "q_lora_rank", cfg->q_lora_rank));
    CFG_TRY(cfg_positive(c, "qk_rope_head_dim", rope));
    CFG_TRY(cfg_positive(c, "head_dim", v->head_dim));
    CFG_TRY(cfg_positive(c, "o_groups", v->o_groups));
    CFG_TRY(cfg_positive(c, "o_lora_rank", v->o_lora_rank));
    CFG_TRY(cfg_positive(c, "sliding_window", v->sliding_window));
    CFG_TRY(cfg_positive(c, "index_n_heads", v->index_n_heads));
    CFG_TRY(cfg_positive(c, "index_topk", v->index_topk));
    CFG_TRY(cfg_positive(c, "hc_mult", v->hc_mult));
    CFG_TRY(cfg_positive(c, "hc_sinkhorn_iters", v->hc_sinkhorn_iters));
    CFG_TRY(cfg_positive(c, "n_routed_experts", cfg->n_routed_experts));
    CFG_TRY(cfg_positive(c, "num_experts_per_tok", cfg->num_experts_per_tok));
    CFG_TRY(cfg_positive(c, "moe_intermediate_size", cfg->moe_intermediate_size));
    CFG_TRY(cfg_positive(c, "max_position_embeddings", cfg->max_position_embeddings));
    if (rope % 2 != 0) {
        return cfg_bad(c, "qk_rope_head_dim", "must be even (rotary pairs)");
    }
    if (v->head_dim <= rope || (v->head_dim - rope) % 64 != 0) {
        return cfg_bad(c, "head_dim",
                       "minus qk_rope_head_dim must be a positive multiple of 64 (FP8 KV blocks)");
    }
    if (!cfg_pow2(v->index_head_dim) || v->index_head_dim < 32 || v->index_head_dim < rope) {
        return cfg_bad(c, "index_head_dim",
                       "must be a power of two, at least 32 (FP4 blocks) and qk_rope_head_dim");
    }
    if (cfg->num_attention_heads % v->o_groups != 0) {
        return cfg_bad(c, "o_groups", "must divide num_attention_heads");
    }
    if ((int64_t)cfg->num_attention_heads * v->head_dim > INT32_MAX ||
        (int64_t)v->index_n_heads * v->index_head_dim > INT32_MAX ||
        (int64_t)v->o_groups * v->o_lora_rank > INT32_MAX ||
        (int64_t)v->hc_mult * cfg->hidden_size > INT32_MAX) {
        return cfg_bad(c, "num_attention_heads", "or another dimension product exceeds 2^31");
    }
    if (v->hc_mult > 64) {
        return cfg_bad(c, "hc_mult", "exceeds 64");
    }
    if (!(v->hc_eps > 0)) {
        return cfg_bad(c, "hc_eps", "must be positive");
    }
    if (v->num_hash_layers < 0 || v->num_hash_layers > cfg->num_hidden_layers) {
        return cfg_bad(c, "num_hash_layers", "must be in [0, num_hidden_layers]");
    }
    if (v->num_nextn_predict_layers < 0) {
        return cfg_bad(c, "num_nextn_predict_layers", "must be non-negative");
    }
    if (cfg->num_experts_per_tok > cfg->n_routed_experts) {
        return cfg_bad(c, "num_experts_per_tok", "exceeds n_routed_experts");
    }
    if (cfg->n_shared_experts < 0 || cfg->n_shared_experts > 1) {
        return cfg_bad(c, "n_shared_experts", "must be 0 or 1");
    }
    if (!(cfg->routed_scaling_factor > 0)) {
        return cfg_bad(c, "routed_scaling_factor", "must be positive");
    }
    if (!(v->swiglu_limit >= 0)) {
        return cfg_bad(c, "swiglu_limit", "must be non-negative");
    }
    if (!(v->compress_rope_theta > 0)) {
        return cfg_bad(c, "compress_rope_theta", "must be positive");
    }
    return cfg_validate_shared(c, cfg);
}

/* A deepseek_v4 config: the shared fields, then the V4 part. */
static mls_status cfg_parse_v4(const cfg_ctx *c, eng_config *cfg)
{
    eng_config_v4 *v = &cfg->v4;
    int64_t v64 = 0;
    bool present;
    int32_t kv_heads = 1;

    cfg->is_v4 = true;
    CFG_TRY(cfg_i32(c, "vocab_size", true, 0, &cfg->vocab_size));
    CFG_TRY(cfg_i32(c, "hidden_size", true, 0, &cfg->hidden_size));
    CFG_TRY(cfg_i32(c, "num_hidden_layers", true, 0, &cfg->num_hidden_layers));
    CFG_TRY(cfg_i32(c, "num_attention_heads", true, 0, &cfg->num_attention_heads));
    CFG_TRY(cfg_i32(c, "num_key_value_heads", false, 1, &kv_heads));
    CFG_TRY(cfg_i32(c, "q_lora_rank", true, 0, &cfg->q_lora_rank));
    CFG_TRY(cfg_i32(c, "qk_rope_head_dim", true, 0, &cfg->qk_rope_head_dim));
    CFG_TRY(cfg_i32(c, "head_dim", true, 0, &v->head_dim));
    CFG_TRY(cfg_i32(c, "o_groups", true, 0, &v->o_groups));
    CFG_TRY(cfg_i32(c, "o_lora_rank", true, 0, &v->o_lora_rank));
    CFG_TRY(cfg_i32(c, "sliding_window", true, 0, &v->sliding_window));
    CFG_TRY(cfg_i32(c, "index_n_heads", true, 0, &v->index_n_heads));
    CFG_TRY(cfg_i32(c, "index_head_dim", true, 0, &v->index_head_dim));
    CFG_TRY(cfg_i32(c, "index_topk", true, 0, &v->index_topk));
    CFG_TRY(cfg_i32(c, "num_hash_layers", false, 0, &v->num_hash_layers));
    CFG_TRY(cfg_i32(c, "num_nextn_predict_layers", false, 0, &v->num_nextn_predict_layers));
    CFG_TRY(cfg_i32(c, "hc_mult", true, 0, &v->hc_mult));
    CFG_TRY(cfg_i32(c, "hc_sinkhorn_iters", false, 20, &v->hc_sinkhorn_iters));
    CFG_TRY(cfg_f32(c, "hc_eps", false, 1e-6f, &v->hc_eps));
    CFG_TRY(cfg_f32(c, "swiglu_limit", false, 0.0f, &v->swiglu_limit));
    CFG_TRY(cfg_i32(c, "n_routed_experts", true, 0, &cfg->n_routed_experts));
    CFG_TRY(cfg_i32(c, "moe_intermediate_size", true, 0, &cfg->moe_intermediate_size));
    CFG_TRY(cfg_i32(c, "num_experts_per_tok", true, 0, &cfg->num_experts_per_tok));
    CFG_TRY(cfg_i32(c, "n_shared_experts", false, 0, &cfg->n_shared_experts));
    cfg->n_group = 1;
    cfg->topk_group = 1;
    cfg->moe_layer_freq = 1;
    CFG_TRY(cfg_v4_enums(c, cfg));
    CFG_TRY(cfg_bool(c, "norm_topk_prob", true, &cfg->norm_topk_prob));
    CFG_TRY(cfg_f32(c, "routed_scaling_factor", false, 1.0f, &cfg->routed_scaling_factor));
    CFG_TRY(cfg_f32(c, "rms_norm_eps", false, 1e-6f, &cfg->rms_norm_eps));
    CFG_TRY(cfg_f32(c, "rope_theta", false, 10000.0f, &cfg->rope_theta));
    CFG_TRY(cfg_f32(c, "compress_rope_theta", false, cfg->rope_theta, &v->compress_rope_theta));
    CFG_TRY(cfg_int_opt(c, "max_position_embeddings", &v64, &present));
    if (!present) {
        return cfg_missing(c, "max_position_embeddings");
    }
    cfg->max_position_embeddings = v64;
    CFG_TRY(cfg_token_id(c, "bos_token_id", &cfg->bos_token_id));
    CFG_TRY(cfg_token_id(c, "eos_token_id", &cfg->eos_token_id));
    CFG_TRY(cfg_bool(c, "tie_word_embeddings", false, &cfg->tie_word_embeddings));
    if (cfg->tie_word_embeddings) {
        return cfg_bad(c, "tie_word_embeddings", "is true; DeepSeek-V4 has its own head.weight");
    }
    CFG_TRY(cfg_rope_scaling(c, cfg));
    CFG_TRY(cfg_quantization(c, cfg));
    CFG_TRY(cfg_v4_formats(c, cfg));
    CFG_TRY(cfg_v4_validate(c, cfg));
    CFG_TRY(cfg_v4_ratios(c, cfg));
    if (kv_heads != 1) {
        return cfg_bad(c, "num_key_value_heads", "must be 1 (one shared K=V vector per token)");
    }
    return MLS_OK;
}

static mls_status cfg_parse_obj(const cfg_ctx *c, eng_config *cfg)
{
    const char *model_type;
    int64_t v64 = 0;
    bool present;

    CFG_TRY(cfg_str(c, "model_type", &model_type));
    if (model_type == NULL) {
        return cfg_missing(c, "model_type");
    }
    if (strcmp(model_type, "deepseek_v4") == 0) {
        snprintf(cfg->model_type, sizeof(cfg->model_type), "%s", model_type);
        return cfg_parse_v4(c, cfg);
    }
    if (strcmp(model_type, "deepseek_v2") != 0 && strcmp(model_type, "deepseek_v3") != 0) {
        mls_err_set(c->err,
                    "%s: key \"model_type\" is \"%.32s\"; want deepseek_v2, deepseek_v3 or "
                    "deepseek_v4",
                    c->source, model_type);
        return MLS_ERR_UNSUPPORTED;
    }
    snprintf(cfg->model_type, sizeof(cfg->model_type), "%s", model_type);

    CFG_TRY(cfg_i32(c, "vocab_size", true, 0, &cfg->vocab_size));
    CFG_TRY(cfg_i32(c, "hidden_size", true, 0, &cfg->hidden_size));
    CFG_TRY(cfg_i32(c, "intermediate_size", true, 0, &cfg->intermediate_size));
    CFG_TRY(cfg_i32(c, "num_hidden_layers", true, 0, &cfg->num_hidden_layers));
    CFG_TRY(cfg_i32(c, "num_attention_heads", true, 0, &cfg->num_attention_heads));
    if (!cJSON_HasObjectItem(c->obj, "q_lora_rank")) {
        return cfg_missing(c, "q_lora_rank"); /* null is fine, absent is not */
    }
    CFG_TRY(cfg_i32(c, "q_lora_rank", false, 0, &cfg->q_lora_rank));
    if (cfg_get(c, "q_lora_rank") != NULL && cfg->q_lora_rank <= 0) {
        return cfg_bad(c, "q_lora_rank", "must be positive or null");
    }
    CFG_TRY(cfg_i32(c, "kv_lora_rank", true, 0, &cfg->kv_lora_rank));
    CFG_TRY(cfg_i32(c, "qk_nope_head_dim", true, 0, &cfg->qk_nope_head_dim));
    CFG_TRY(cfg_i32(c, "qk_rope_head_dim", true, 0, &cfg->qk_rope_head_dim));
    CFG_TRY(cfg_i32(c, "v_head_dim", true, 0, &cfg->v_head_dim));
    int32_t kv_heads = cfg->num_attention_heads;
    CFG_TRY(cfg_i32(c, "num_key_value_heads", false, cfg->num_attention_heads, &kv_heads));

    CFG_TRY(cfg_i32(c, "n_routed_experts", false, 0, &cfg->n_routed_experts));
    bool moe = cfg->n_routed_experts > 0;
    CFG_TRY(cfg_i32(c, "moe_intermediate_size", moe, 0, &cfg->moe_intermediate_size));
    CFG_TRY(cfg_i32(c, "num_experts_per_tok", moe, 0, &cfg->num_experts_per_tok));
    CFG_TRY(cfg_i32(c, "n_shared_experts", false, 0, &cfg->n_shared_experts));
    CFG_TRY(cfg_i32(c, "n_group", false, 1, &cfg->n_group));
    CFG_TRY(cfg_i32(c, "topk_group", false, 1, &cfg->topk_group));
    CFG_TRY(cfg_i32(c, "first_k_dense_replace", false, 0, &cfg->first_k_dense_replace));
    CFG_TRY(cfg_i32(c, "moe_layer_freq", false, 1, &cfg->moe_layer_freq));
    CFG_TRY(cfg_enums(c, cfg));
    CFG_TRY(cfg_bool(c, "norm_topk_prob", false, &cfg->norm_topk_prob));
    CFG_TRY(cfg_f32(c, "routed_scaling_factor", false, 1.0f, &cfg->routed_scaling_factor));
    CFG_TRY(cfg_f32(c, "rms_norm_eps", false, 1e-6f, &cfg->rms_norm_eps));
    CFG_TRY(cfg_f32(c, "rope_theta", false, 10000.0f, &cfg->rope_theta));
    v64 = 0;
    CFG_TRY(cfg_int_opt(c, "max_position_embeddings", &v64, &present));
    if (!present) {
        return cfg_missing(c, "max_position_embeddings");
    }
    cfg->max_position_embeddings = v64;
    CFG_TRY(cfg_token_id(c, "bos_token_id", &cfg->bos_token_id));
    CFG_TRY(cfg_token_id(c, "eos_token_id", &cfg->eos_token_id));
    CFG_TRY(cfg_bool(c, "tie_word_embeddings", false, &cfg->tie_word_embeddings));
    CFG_TRY(cfg_rope_scaling(c, cfg));
    CFG_TRY(cfg_quantization(c, cfg));
    CFG_TRY(cfg_validate(c, cfg));
    if (kv_heads != cfg->num_attention_heads) {
        return cfg_bad(c, "num_key_value_heads", "must equal num_attention_heads (MLA)");
    }
    return MLS_OK;
}

mls_status eng_config_parse(const char *json, size_t len, const char *source, eng_config *cfg_p,
                            mls_err *err)
{
    eng_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (root == NULL) {
        const char *at = cJSON_GetErrorPtr();
        long off = at != NULL && at >= json && at <= json + len ? (long)(at - json) : -1;
        mls_err_set(err, "%s: not valid JSON (error near byte %ld)", source, off);
        return MLS_ERR_BAD_MODEL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        mls_err_set(err, "%s: not a JSON object", source);
        return MLS_ERR_BAD_MODEL;
    }
    cfg_ctx c = {root, source, "", err};
    mls_status st = cfg_parse_obj(&c, &cfg);
    cJSON_Delete(root);
    if (st == MLS_OK) {
        *cfg_p = cfg;
    }
    return st;
}

mls_status eng_config_load(const char *path, eng_config *cfg_p, mls_err *err)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        int e = errno;
        mls_err_set(err, "%s: cannot open: %s", path, strerror(e));
        return e == ENOENT ? MLS_ERR_NOT_FOUND : MLS_ERR_IO;
    }
    mls_status st;
    char *buf = NULL;
    long size = -1;
    if (fseek(fp, 0, SEEK_END) == 0) {
        size = ftell(fp);
    }
    if (size < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        mls_err_set(err, "%s: cannot determine the file size", path);
        st = MLS_ERR_IO;
        goto out_close;
    }
    if (size > (16l << 20)) {
        mls_err_set(err, "%s: %ld bytes is too large for a config", path, size);
        st = MLS_ERR_BAD_MODEL;
        goto out_close;
    }
    buf = malloc((size_t)size + 1);
    if (buf == NULL) {
        mls_err_set(err, "%s: out of memory", path);
        st = MLS_ERR_NO_MEMORY;
        goto out_close;
    }
    if (fread(buf, 1, (size_t)size, fp) != (size_t)size) {
        mls_err_set(err, "%s: read error", path);
        st = MLS_ERR_IO;
        goto out_close;
    }
    buf[size] = 0;
    st = eng_config_parse(buf, (size_t)size, path, cfg_p, err);

out_close:
    free(buf);
    fclose(fp);
    return st;
}

bool eng_config_layer_is_moe(const eng_config *cfg, int layer)
{
    return cfg->n_routed_experts > 0 && layer >= 0 && layer < cfg->num_hidden_layers &&
           layer >= cfg->first_k_dense_replace && layer % cfg->moe_layer_freq == 0;
}
