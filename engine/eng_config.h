/*
 * eng_config.h - a DeepSeek-V2/V3/V4-family config.json, parsed and validated.
 *
 * One eng_config holds the keys the families share; a DeepSeek-V4 config
 * (model_type deepseek_v4, README-v4 section 1) also fills the `v4` part and
 * leaves the MLA-only fields (intermediate_size, kv_lora_rank,
 * qk_nope_head_dim, v_head_dim, n_group, topk_group) at 0.
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
    ENG_SCORE_SQRTSOFTPLUS, /* DeepSeek-V4: sqrt(softplus(logit)) */
} eng_score_func;

#define ENG_V4_MAX_LAYERS 512 /* compress_ratios entries at most (V4-Flash: 44) */

/* The DeepSeek-V4 part of a config (README-v4 section 1). */
typedef struct {
    int32_t head_dim;                 /* d: the shared K=V vector, nope (d - rope) + rope */
    int32_t o_groups;                 /* G: grouped low-rank output */
    int32_t o_lora_rank;              /* R: per group */
    int32_t sliding_window;           /* W: window rows on every layer */
    int32_t index_n_heads;            /* IH: lightning indexer heads (CSA layers) */
    int32_t index_head_dim;           /* Id: indexer head dim (power of two, >= 32) */
    int32_t index_topk;               /* compressed entries a CSA query attends to */
    int32_t num_hash_layers;          /* layers [0, n) route by tid2eid */
    int32_t num_nextn_predict_layers; /* MTP layers (not run; their ratios are listed) */
    int32_t hc_mult;                  /* h: residual copies */
    int32_t hc_sinkhorn_iters;
    float hc_eps;
    float swiglu_limit;               /* 0: no clamp */
    float compress_rope_theta;        /* rotary base of compressed layers */
    int32_t n_compress_ratios;        /* num_hidden_layers (+ MTP layers) */
    int32_t compress_ratios[ENG_V4_MAX_LAYERS]; /* 0 window only, 4 CSA, else HCA */
    bool expert_fp4;                  /* expert_dtype "fp4": routed experts I8 + UE8M0 per 32 */
} eng_config_v4;

typedef enum {
    ENG_TOPK_GREEDY,
    ENG_TOPK_GROUP_LIMITED_GREEDY,
    ENG_TOPK_NOAUX_TC,
} eng_topk_method;

typedef struct {
    char model_type[32];          /* "deepseek_v2" | "deepseek_v3" | "deepseek_v4" */
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

    /* Everything above is all a V2/V3 config holds (the model fingerprint
     * hashes only it, ENG_CONFIG_V23_BYTES, so V2/V3 fingerprints stay). */
    bool is_v4;                       /* model_type deepseek_v4 */
    eng_config_v4 v4;                 /* is_v4 only; else zero */
} eng_config;

/* Parse and validate config.json text. Unknown keys are ignored; missing
 * required keys, wrong types and inconsistent values are MLS_ERR_BAD_MODEL
 * with the key named in *err (which starts with `source`). */
mls_status eng_config_parse(const char *json, size_t len, const char *source, eng_config *cfg_p,
                            mls_err *err);
/* Read and parse <path>. */
mls_status eng_config_load(const char *path, eng_config *cfg_p, mls_err *err);

/* Bytes of eng_config a V2/V3 model's fingerprint covers: the struct as it
 * was before the V4 part (the V4 fields are zero for V2/V3). */
#define ENG_CONFIG_V23_BYTES                                                                       \
    ((offsetof(eng_config, is_v4) + _Alignof(eng_config) - 1) / _Alignof(eng_config) *             \
     _Alignof(eng_config))

/* Compress ratio of V4 layer `layer` (0: window only, 4: CSA, other: HCA). */
static inline int32_t eng_config_v4_ratio(const eng_config *cfg, int layer)
{
    return cfg->v4.compress_ratios[layer];
}

/* Is layer `layer` an MoE layer (first_k_dense_replace, moe_layer_freq)? */
bool eng_config_layer_is_moe(const eng_config *cfg, int layer);

#endif
