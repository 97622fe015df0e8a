/*
 * kcu_moe_gate.cu - MoE router, one warp per token (4 tokens per block):
 * scores and biased scores live in shared memory, group scores are computed
 * lane-parallel, and every selection is a warp argmax that prefers the lower
 * index on ties - the CPU router's order, so ids match exactly.
 */
#include <math_constants.h>

#include "kcu_internal.cuh"

#define KCU_MOE_WARPS 4

struct kcu_moe_args {
    int E, K, n_group, topk_group, group_limited, sigmoid, norm, v2_scaling;
    float scaling;
};

/* Warp argmax of (v, i): larger value wins, then lower index; i < 0 = none. */
__device__ __forceinline__ void kcu_warp_argmax(float *v, int *i)
{
    for (int off = 16; off > 0; off /= 2) {
        const float ov = __shfl_xor_sync(0xffffffffu, *v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, *i, off);
        if (oi >= 0 && (*i < 0 || ov > *v || (ov == *v && oi < *i))) {
            *v = ov;
            *i = oi;
        }
    }
}

__global__ void kcu_moe_gate_kernel(kcu_moe_args a, const float *logits, const float *bias,
                                    int64_t n_tok, int32_t *ids, float *weights)
{
    __shared__ float s_scores[KCU_MOE_WARPS][KCU_MOE_MAX_EXPERTS];
    __shared__ float s_biased[KCU_MOE_WARPS][KCU_MOE_MAX_EXPERTS];
    __shared__ float s_group[KCU_MOE_WARPS][KCU_MOE_MAX_GROUPS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t t = (int64_t)blockIdx.x * KCU_MOE_WARPS + warp;
    if (t >= n_tok) {
        return; /* whole warp leaves together */
    }
    float *sc = s_scores[warp], *bi = s_biased[warp], *gs = s_group[warp];
    const float *lg = logits + t * a.E;

    if (a.sigmoid) {
        for (int e = lane; e < a.E; e += 32) {
            sc[e] = 1.0f / (1.0f + expf(-lg[e]));
        }
    } else {
        float mx = -CUDART_INF_F;
        for (int e = lane; e < a.E; e += 32) {
            mx = fmaxf(mx, lg[e]);
        }
        for (int off = 16; off > 0; off /= 2) {
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        }
        double z = 0.0;
        for (int e = lane; e < a.E; e += 32) {
            const float ex = expf(lg[e] - mx);
            sc[e] = ex;
            z += ex;
        }
        for (int off = 16; off > 0; off /= 2) {
            z += __shfl_xor_sync(0xffffffffu, z, off);
        }
        for (int e = lane; e < a.E; e += 32) {
            sc[e] = (float)(sc[e] / z);
        }
    }
    for (int e = lane; e < a.E; e += 32) {
        bi[e] = sc[e] + (bias != NULL ? bias[e] : 0.0f);
    }
    __syncwarp();

    if (a.group_limited && a.n_group > 1) {
        const int per = a.E / a.n_group;
        for (int gi = lane; gi < a.n_group; gi += 32) {
            float top1 = -CUDART_INF_F, top2 = -CUDART_INF_F;
            for (int i = 0; i < per; i++) {
                const float b = bi[gi * per + i];
                if (b > top1) {
                    top2 = top1;
                    top1 = b;
                } else if (b > top2) {
                    top2 = b;
                }
            }
            gs[gi] = bias != NULL ? top1 + (per > 1 ? top2 : 0.0f) : top1;
        }
        __syncwarp();
        unsigned long long keep = 0;
        for (int k = 0; k < a.topk_group; k++) {
            float v = -CUDART_INF_F;
            int idx = -1;
            for (int gi = lane; gi < a.n_group; gi += 32) {
                if (!((keep >> gi) & 1ull) && (idx < 0 || gs[gi] > v)) {
                    v = gs[gi];
                    idx = gi;
                }
            }
            kcu_warp_argmax(&v, &idx);
            keep |= 1ull << idx;
        }
        for (int e = lane; e < a.E; e += 32) {
            if (!((keep >> (e / per)) & 1ull)) {
                bi[e] = -CUDART_INF_F;
            }
        }
        __syncwarp();
    }

    double sum = 0.0;
    float w_lane = 0.0f; /* lane k keeps weight k */
    int id_lane = 0;
    for (int k = 0; k < a.K; k++) {
        float v = -CUDART_INF_F;
        int idx = -1;
        for (int e = lane; e < a.E; e += 32) {
            if (bi[e] > -CUDART_INF_F && (idx < 0 || bi[e] > v)) {
                v = bi[e];
                idx = e;
            }
        }
        kcu_warp_argmax(&v, &idx);
        if (idx < 0) { /* fewer selectable experts than K: the CPU picks expert 0 */
            idx = 0;
        }
        const float w = sc[idx];
        sum += w;
        if (lane == k) {
            w_lane = w;
            id_lane = idx;
        }
        __syncwarp();
        if (lane == 0) {
            bi[idx] = -CUDART_INF_F;
        }
        __syncwarp();
    }
    if (lane < a.K) {
        if (a.norm && a.K > 1) {
            w_lane = (float)(w_lane / (sum + 1e-20));
        }
        if (!a.v2_scaling || !(a.norm && a.K > 1)) {
            w_lane *= a.scaling;
        }
        ids[t * a.K + lane] = id_lane;
        weights[t * a.K + lane] = w_lane;
    }
}

extern "C" mls_status kcu_moe_gate(kcu_ctx *ctx, const kcu_moe_gate_params *p,
                                   const float *logits, const float *bias, int64_t n_tok,
                                   int32_t *ids_p, float *weights_p, mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL && p != NULL && logits != NULL && ids_p != NULL &&
                      weights_p != NULL,
                  err, "kcu_moe_gate: NULL argument");
    KCU_CHECK_SUPPORTED(p->n_experts >= 1 && p->n_experts <= KCU_MOE_MAX_EXPERTS, err,
                        "kcu_moe_gate: n_experts %d (1..%d)", p->n_experts, KCU_MOE_MAX_EXPERTS);
    KCU_CHECK_ARG(p->top_k >= 1 && p->top_k <= p->n_experts && p->top_k <= KCU_MOE_MAX_TOPK, err,
                  "kcu_moe_gate: top_k %d (1..min(n_experts, %d))", p->top_k, KCU_MOE_MAX_TOPK);
    if (p->group_limited && p->n_group > 1) {
        KCU_CHECK_SUPPORTED(p->n_group <= KCU_MOE_MAX_GROUPS, err,
                            "kcu_moe_gate: n_group %d > %d", p->n_group, KCU_MOE_MAX_GROUPS);
        KCU_CHECK_ARG(p->n_experts % p->n_group == 0 && p->topk_group >= 1 &&
                          p->topk_group <= p->n_group,
                      err, "kcu_moe_gate: %d experts in %d groups, topk_group %d", p->n_experts,
                      p->n_group, p->topk_group);
    }
    KCU_CHECK_ARG(n_tok >= 0, err, "kcu_moe_gate: n_tok %lld", (long long)n_tok);
    if (n_tok == 0) {
        return MLS_OK;
    }
    kcu_moe_args a;
    a.E = p->n_experts;
    a.K = p->top_k;
    a.n_group = p->n_group;
    a.topk_group = p->topk_group;
    a.group_limited = p->group_limited ? 1 : 0;
    a.sigmoid = p->score == KCU_MOE_SCORE_SIGMOID;
    a.norm = p->norm_topk_prob ? 1 : 0;
    a.v2_scaling = p->v2_scaling ? 1 : 0;
    a.scaling = p->routed_scaling_factor;
    kcu_moe_gate_kernel<<<kcu_blocks(n_tok, KCU_MOE_WARPS), 32 * KCU_MOE_WARPS, 0, ctx->stream>>>(
        a, logits, bias, n_tok, ids_p, weights_p);
    KCU_CHECK_LAUNCH("kcu_moe_gate_kernel", err);
    return MLS_OK;
}
