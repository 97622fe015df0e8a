/*
 * eng_route.h - the MoE router for one token (DeepSeek semantics):
 * scores = softmax|sigmoid(logits); selection uses scores + bias (noaux_tc)
 * restricted to the topk_group best groups (group score = top-2 sum with a
 * bias, else max); weights are the unbiased scores of the chosen experts,
 * normalised when norm_topk_prob, then scaled by routed_scaling_factor (V2
 * skips the scaling when normalising).
 */
#ifndef ENG_ROUTE_H
#define ENG_ROUTE_H

#include <stdbool.h>
#include <stdint.h>

#define ENG_ROUTE_MAX_GROUPS 64 /* expert groups (n_group) the router supports */

typedef struct {
    int32_t n_experts;   /* E */
    int32_t top_k;       /* K */
    int32_t n_group;     /* E % n_group == 0, <= ENG_ROUTE_MAX_GROUPS */
    int32_t topk_group;  /* groups kept */
    bool group_limited;  /* group-limited selection (else greedy over all experts) */
    bool softmax;        /* softmax scores (else sigmoid) */
    bool norm_topk_prob;
    bool v2_scaling;     /* DeepSeek-V2: no scaling factor when normalising */
    float routed_scaling_factor;
} eng_route_params;

/* scores (E): the router logits in, the scores out; biased (E): scratch;
 * ids, w (K): the chosen experts and their weights. bias (E) may be NULL. */
void eng_route(const eng_route_params *p, const float *bias, float *scores, float *biased,
               int32_t *ids, float *w);

#endif
