/*
 * kcu_moe_gate.h - the MoE router on the device (DeepSeek semantics, the
 * same as engine/eng_forward.c's router): scores = softmax|sigmoid(logits);
 * selection uses scores + correction bias restricted to the topk_group best
 * groups (group score = top-2 sum when a bias is present, else the max);
 * weights are the unbiased scores of the chosen experts, normalised when
 * norm_topk_prob (and top_k > 1), then scaled by routed_scaling_factor
 * (DeepSeek-V2 skips the scaling when it normalises). Ties pick the lower
 * index, as the CPU does. One warp per token.
 */
#ifndef KCU_MOE_GATE_H
#define KCU_MOE_GATE_H

#include <stdbool.h>
#include <stdint.h>

#include "mls_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kcu_ctx kcu_ctx;

#define KCU_MOE_MAX_EXPERTS 512
#define KCU_MOE_MAX_GROUPS  64
#define KCU_MOE_MAX_TOPK    32

typedef enum {
    KCU_MOE_SCORE_SOFTMAX,
    KCU_MOE_SCORE_SIGMOID,
} kcu_moe_score;

typedef struct {
    int32_t n_experts;          /* E, <= KCU_MOE_MAX_EXPERTS */
    int32_t top_k;              /* K, 1..min(E, KCU_MOE_MAX_TOPK) */
    int32_t n_group;            /* groups (E % n_group == 0), <= KCU_MOE_MAX_GROUPS */
    int32_t topk_group;         /* groups kept, 1..n_group */
    bool group_limited;         /* false: greedy over all experts */
    kcu_moe_score score;
    bool norm_topk_prob;
    bool v2_scaling;            /* DeepSeek-V2: no scaling factor when normalising */
    float routed_scaling_factor;
} kcu_moe_gate_params;

/* logits: device [n_tok, E]; bias: device [E] or NULL;
 * ids_p: device [n_tok, K]; weights_p: device [n_tok, K]. */
mls_status kcu_moe_gate(kcu_ctx *ctx, const kcu_moe_gate_params *p, const float *logits,
                        const float *bias, int64_t n_tok, int32_t *ids_p, float *weights_p,
                        mls_err *err);

#ifdef __cplusplus
}
#endif

#endif
