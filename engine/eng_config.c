/*
 * eng_config.c - parse and validate a DeepSeek-V2/V3 config.json.
 *
 * Keys follow the Hugging Face configs (configuration_deepseek.py). Architecture
 * dimensions are required; routing and numeric knobs take the defaults of
 * DeepSeek's own config class when absent (moe_layer_freq 1, n_group 1,
 * topk_group 1, norm_topk_prob false, routed_scaling_factor 1.0,
 * n_shared_experts none, first_k_dense_replace 0, rms_norm_eps 1e-6,
 * rope_theta 10000, topk_method greedy, scoring_func softmax). bos/eos are -1
 * when absent. Every error names the source and the key.
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

static mls_status cfg_parse_obj(const cfg_ctx *c, eng_config *cfg)
{
    const char *model_type;
    int64_t v64 = 0;
    bool present;

    CFG_TRY(cfg_str(c, "model_type", &model_type));
    if (model_type == NULL) {
        return cfg_missing(c, "model_type");
    }
    if (strcmp(model_type, "deepseek_v2") != 0 && strcmp(model_type, "deepseek_v3") != 0) {
        mls_err_set(c->err, "%s: key \"model_type\" is \"%.32s\"; want deepseek_v2 or deepseek_v3",
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
