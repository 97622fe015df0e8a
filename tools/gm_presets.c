/*
 * gm_presets.c - genmodel's presets as constants: the tiny-v3 fixture's
 * shape, the local cluster's demo model, and the real DeepSeek-V2-Lite and
 * DeepSeek-V3 shapes. Fields not named are zero (no q LoRA where
 * q_lora_rank is absent, untied embeddings).
 */
#include "gm_presets.h"

#include <stddef.h>
#include <string.h>

/* What every preset shares: RMSNorm eps, rope theta and the YaRN constants
 * of DeepSeek-V3 (written only where rope_yarn is set), fp8 blocks. */
#define GM_PRESET_COMMON                                                                           \
    .moe_layer_freq = 1, .rms_norm_eps = 1e-6f, .rope_theta = 10000.0f, .rope_factor = 40.0f,      \
    .rope_original_max_position_embeddings = 4096, .rope_beta_fast = 32.0f,                        \
    .rope_beta_slow = 1.0f, .fp8_block = {GM_BLOCK, GM_BLOCK}

static const gm_preset gm_presets[] = {
    {
        .name = "tiny", /* the tiny-v3 fixture's shape */
        .fp8 = false,
        .cfg = {GM_PRESET_COMMON,
                .model_type = "deepseek_v3",
                .vocab_size = 1024,
                .hidden_size = 64,
                .intermediate_size = 128,
                .moe_intermediate_size = 32,
                .num_hidden_layers = 3,
                .num_attention_heads = 4,
                .q_lora_rank = 48,
                .kv_lora_rank = 32,
                .qk_nope_head_dim = 16,
                .qk_rope_head_dim = 8,
                .v_head_dim = 16,
                .n_routed_experts = 16,
                .num_experts_per_tok = 4,
                .n_shared_experts = 1,
                .n_group = 4,
                .topk_group = 2,
                .first_k_dense_replace = 1,
                .topk_method = ENG_TOPK_NOAUX_TC,
                .scoring_func = ENG_SCORE_SIGMOID,
                .norm_topk_prob = true,
                .routed_scaling_factor = 2.5f,
                .max_position_embeddings = 163840,
                .bos_token_id = 0,
                .eos_token_id = 1,
                .rope_yarn = true,
                .rope_mscale = 1.0f,
                .rope_mscale_all_dim = 1.0f},
    },
    {
        .name = "demo", /* small V2-shaped MoE for the local cluster */
        .fp8 = false,
        .cfg = {GM_PRESET_COMMON,
                .model_type = "deepseek_v2",
                .vocab_size = 4096,
                .hidden_size = 256,
                .intermediate_size = 512,
                .moe_intermediate_size = 128,
                .num_hidden_layers = 4,
                .num_attention_heads = 8,
                .q_lora_rank = 0,
                .kv_lora_rank = 128,
                .qk_nope_head_dim = 32,
                .qk_rope_head_dim = 32,
                .v_head_dim = 32,
                .n_routed_experts = 8,
                .num_experts_per_tok = 2,
                .n_shared_experts = 1,
                .n_group = 1,
                .topk_group = 1,
                .first_k_dense_replace = 1,
                .topk_method = ENG_TOPK_GREEDY,
                .scoring_func = ENG_SCORE_SOFTMAX,
                .norm_topk_prob = false,
                .routed_scaling_factor = 1.0f,
                .max_position_embeddings = 4096,
                .bos_token_id = 0,
                .eos_token_id = 1,
                .rope_yarn = false,
                .rope_mscale = 1.0f,
                .rope_mscale_all_dim = 1.0f},
    },
    {
        .name = "deepseek-v2-lite",
        .fp8 = false,
        .cfg = {GM_PRESET_COMMON,
                .model_type = "deepseek_v2",
                .vocab_size = 102400,
                .hidden_size = 2048,
                .intermediate_size = 10944,
                .moe_intermediate_size = 1408,
                .num_hidden_layers = 27,
                .num_attention_heads = 16,
                .q_lora_rank = 0,
                .kv_lora_rank = 512,
                .qk_nope_head_dim = 128,
                .qk_rope_head_dim = 64,
                .v_head_dim = 128,
                .n_routed_experts = 64,
                .num_experts_per_tok = 6,
                .n_shared_experts = 2,
                .n_group = 1,
                .topk_group = 1,
                .first_k_dense_replace = 1,
                .topk_method = ENG_TOPK_GREEDY,
                .scoring_func = ENG_SCORE_SOFTMAX,
                .norm_topk_prob = false,
                .routed_scaling_factor = 1.0f,
                .max_position_embeddings = 163840,
                .bos_token_id = 100000,
                .eos_token_id = 100001,
                .rope_yarn = true,
                .rope_mscale = 0.707f,
                .rope_mscale_all_dim = 0.707f},
    },
    {
        .name = "deepseek-v3",
        .fp8 = true,
        .cfg = {GM_PRESET_COMMON,
                .model_type = "deepseek_v3",
                .vocab_size = 129280,
                .hidden_size = 7168,
                .intermediate_size = 18432,
                .moe_intermediate_size = 2048,
                .num_hidden_layers = 61,
                .num_attention_heads = 128,
                .q_lora_rank = 1536,
                .kv_lora_rank = 512,
                .qk_nope_head_dim = 128,
                .qk_rope_head_dim = 64,
                .v_head_dim = 128,
                .n_routed_experts = 256,
                .num_experts_per_tok = 8,
                .n_shared_experts = 1,
                .n_group = 8,
                .topk_group = 4,
                .first_k_dense_replace = 3,
                .topk_method = ENG_TOPK_NOAUX_TC,
                .scoring_func = ENG_SCORE_SIGMOID,
                .norm_topk_prob = true,
                .routed_scaling_factor = 2.5f,
                .max_position_embeddings = 163840,
                .bos_token_id = 0,
                .eos_token_id = 1,
                .rope_yarn = true,
                .rope_mscale = 1.0f,
                .rope_mscale_all_dim = 1.0f},
    },
};

const gm_preset *gm_preset_find(const char *name)
{
    for (size_t i = 0; i < sizeof(gm_presets) / sizeof(gm_presets[0]); i++) {
        if (strcmp(gm_presets[i].name, name) == 0) {
            return &gm_presets[i];
        }
    }
    return NULL;
}
