/*
 * eng_route.c - the MoE router for one token, DeepSeek's semantics; the
 * engine's forward pass calls it, and the CUDA gate's test checks against it.
 */
#include <math.h>
#include <string.h>

#include "eng_internal.h"
#include "eng_route.h"

void eng_route_params_from_config(const eng_config *c, eng_route_params *p)
{
    p->n_experts = c->n_routed_experts;
    p->top_k = c->num_experts_per_tok;
    p->n_group = c->n_group;
    p->topk_group = c->topk_group;
    p->group_limited = c->topk_method != ENG_TOPK_GREEDY;
    p->softmax = c->scoring_func == ENG_SCORE_SOFTMAX;
    p->norm_topk_prob = c->norm_topk_prob;
    p->v2_scaling = strcmp(c->model_type, "deepseek_v2") == 0;
    p->routed_scaling_factor = c->routed_scaling_factor;
}

void eng_route(const eng_route_params *p, const float *bias, float *scores, float *biased,
               int32_t *ids, float *w)
{
    int32_t E = p->n_experts, K = p->top_k;
    double sum = 0;

    if (p->softmax) {
        float max = scores[0];
        double z = 0;
        for (int32_t e = 1; e < E; e++) {
            max = fmaxf(max, scores[e]);
        }
        for (int32_t e = 0; e < E; e++) {
            scores[e] = expf(scores[e] - max);
            z += scores[e];
        }
        for (int32_t e = 0; e < E; e++) {
            scores[e] = (float)(scores[e] / z);
        }
    } else {
        for (int32_t e = 0; e < E; e++) {
            scores[e] = 1.0f / (1.0f + expf(-scores[e]));
        }
    }
    for (int32_t e = 0; e < E; e++) {
        biased[e] = scores[e] + (bias != NULL ? bias[e] : 0.0f);
    }
    if (p->group_limited && p->n_group > 1) {
        int32_t per = E / p->n_group;
        float gscore[ENG_ROUTE_MAX_GROUPS];
        bool keep[ENG_ROUTE_MAX_GROUPS] = {false};
        for (int32_t g = 0; g < p->n_group; g++) {
            const float *b = biased + g * per;
            float top1 = -INFINITY, top2 = -INFINITY;
            for (int32_t i = 0; i < per; i++) {
                if (b[i] > top1) {
                    top2 = top1;
                    top1 = b[i];
                } else if (b[i] > top2) {
                    top2 = b[i];
                }
            }
            gscore[g] = bias != NULL ? top1 + (per > 1 ? top2 : 0.0f) : top1;
        }
        for (int32_t k = 0; k < p->topk_group; k++) {
            int32_t best = -1;
            for (int32_t g = 0; g < p->n_group; g++) {
                if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) {
                    best = g;
                }
            }
            keep[best] = true;
        }
        for (int32_t g = 0; g < p->n_group; g++) {
            if (!keep[g]) {
                for (int32_t i = 0; i < per; i++) {
                    biased[g * per + i] = -INFINITY;
                }
            }
        }
    }
    for (int32_t k = 0; k < K; k++) {
        int32_t best = -1;
        for (int32_t e = 0; e < E; e++) {
            if (biased[e] > -INFINITY && (best < 0 || biased[e] > biased[best])) {
                best = e;
            }
        }
        if (best < 0) { /* fewer selectable experts than K: cannot happen with a valid config */
            best = 0;
        }
        ids[k] = best;
        w[k] = scores[best];
        sum += w[k];
        biased[best] = -INFINITY;
    }
    if (p->norm_topk_prob && K > 1) {
        for (int32_t k = 0; k < K; k++) {
            w[k] = (float)(w[k] / (sum + 1e-20));
        }
    }
    if (!p->v2_scaling || !(p->norm_topk_prob && K > 1)) {
        for (int32_t k = 0; k < K; k++) {
            w[k] *= p->routed_scaling_factor;
        }
    }
}
