/*
 * eng_config.h - a DeepSeek-V2/V3-family config.json, parsed and validated.
 */
#ifndef ENG_CONFIG_H
#define ENG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mls_status.h"

typedef enum {
    ENG_SCORE_SOFTMAX,
    ENG_SCORE_SIGMOID,
} eng_score_func;

typedef enum {
    ENG_TOPK_GREEDY,
    ENG_TOPK_GROUP_LIMITED_GREEDY,
    ENG_TOPK_NOAUX_TC,
} eng_topk_method;

typedef struct {
    char model_type[32];          /* "deepseek_v2" | "deepseek_v3" */
    int32_t vocab_size;
    int32_t hidden_size;
    int32_t intermediate_size;        /* dense MLP */
    int32_t moe_intermediate_size;    /* per routed/shared expert */
    int32_t num_hidden_layers;
    int32_t num_attention_heads;
    int32_t q_lora_rank;              /* 0 when null: q_proj used directly */
    int32_t kv_lora_rank;
    int32_t qk_nope_head_dim;
    int32_t qk_rope_head_dim;
    int32_t v_head_dim;
    int32_t n_routed_experts;         /* 0: every layer dense */
    int32_t num_experts_per_tok;
    int32_t n_shared_experts;
    int32_t n_group;
    int32_t topk_group;
    int32_t first_k_dense_replace;
    int32_t moe_layer_freq;
    eng_topk_method topk_method;
    eng_score_func scoring_func;
    bool norm_topk_prob;
    float routed_scaling_factor;
    float rms_norm_eps;
    float rope_theta;
    int64_t max_position_embeddings;
    int32_t bos_token_id;
    int32_t eos_token_id;
    bool tie_word_embeddings;

    bool rope_yarn;                   /* rope_scaling {"type":"yarn"} present */
    float rope_factor;
    int64_t rope_original_max_position_embeddings;
    float rope_beta_fast;
    float rope_beta_slow;
    float rope_mscale;
    float rope_mscale_all_dim;

    bool fp8;                         /* quantization_config quant_method fp8 */
    int32_t fp8_block[2];             /* weight_block_size, [128, 128] */
} eng_config;

/* Parse and validate config.json text. Unknown keys are ignored; missing
 * required keys, wrong types and inconsistent values are MLS_ERR_BAD_MODEL
 * with the key named in *err (which starts with `source`). */
mls_status eng_config_parse(const char *json, size_t len, const char *source, eng_config *cfg_p,
                            mls_err *err);
/* Read and parse <path>. */
mls_status eng_config_load(const char *path, eng_config *cfg_p, mls_err *err);

/* Is layer `layer` an MoE layer (first_k_dense_replace, moe_layer_freq)? */
bool eng_config_layer_is_moe(const eng_config *cfg, int layer);

#endif
