/*
 * kcu_sample.cu - argmax (+ log-sum-exp) and exact top-k per row, one block
 * per row. Top-k is a radix select on order-preserving 32-bit keys (four
 * 8-bit passes find the k-th largest key), then one ordered pass collects
 * the keys above it and the lowest-index ties equal to it, and a rank sort
 * orders the k candidates (value descending, id ascending).
 */
#include <math_constants.h>

#include "kcu_internal.cuh"

#define KCU_SAMPLE_THREADS 1024

/* Larger float -> larger key; -0 sorts just below +0. */
__device__ __forceinline__ uint32_t kcu_key(float f)
{
    const uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ bool kcu_better(float v, int i, float bv, int bi)
{
    return bi < 0 || v > bv || (v == bv && i < bi);
}

__global__ void kcu_argmax_kernel(const float *logits, int64_t vocab, int32_t *ids, float *lse)
{
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    __shared__ float s_sum[32];
    const float *x = logits + blockIdx.x * vocab;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float bv = -CUDART_INF_F;
    int bi = -1;

    for (int64_t e = threadIdx.x; e < vocab; e += blockDim.x) {
        if (kcu_better(x[e], (int)e, bv, bi)) {
            bv = x[e];
            bi = (int)e;
        }
    }
    for (int off = 16; off > 0; off /= 2) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (oi >= 0 && kcu_better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if (lane == 0) {
        s_v[warp] = bv;
        s_i[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nwarps; w++) {
            if (s_i[w] >= 0 && kcu_better(s_v[w], s_i[w], s_v[0], s_i[0])) {
                s_v[0] = s_v[w];
                s_i[0] = s_i[w];
            }
        }
        ids[blockIdx.x] = s_i[0] < 0 ? 0 : s_i[0];
    }
    __syncthreads();
    if (lse == NULL) {
        return;
    }
    const float mx = s_v[0];
    float sum = 0.f;
    for (int64_t e = threadIdx.x; e < vocab; e += blockDim.x) {
        sum += expf(x[e] - mx);
    }
    for (int off = 16; off > 0; off /= 2) {
        sum += __shfl_xor_sync(0xffffffffu, sum, off);
    }
    if (lane == 0) {
        s_sum[warp] = sum;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < nwarps; w++) {
            total += s_sum[w];
        }
        lse[blockIdx.x] = mx + (float)log(total);
    }
}

/* Exclusive block prefix of a 0/1 flag; *total_p gets the block's sum. */
__device__ __forceinline__ int kcu_block_scan(bool flag, int *warp_tot, int *total_p)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const unsigned ballot = __ballot_sync(0xffffffffu, flag);
    const int in_warp = __popc(ballot & ((1u << lane) - 1u));
    if (lane == 0) {
        warp_tot[warp] = __popc(ballot);
    }
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < nwarps; w++) {
        before += w < warp ? warp_tot[w] : 0;
        total += warp_tot[w];
    }
    __syncthreads();
    *total_p = total;
    return before + in_warp;
}

__global__ void kcu_topk_kernel(const float *logits, int64_t vocab, int k, float *vals,
                                int32_t *ids)
{
    __shared__ uint32_t hist[256];
    __shared__ uint32_t s_prefix, s_mask;
    __shared__ int s_remaining;
    __shared__ int warp_gt[32], warp_eq[32];
    __shared__ float c_val[KCU_TOPK_MAX];
    __shared__ int c_id[KCU_TOPK_MAX];
    const float *x = logits + blockIdx.x * vocab;

    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_mask = 0;
        s_remaining = k;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) {
            hist[b] = 0;
        }
        __syncthreads();
        const uint32_t prefix = s_prefix, mask = s_mask;
        for (int64_t e = threadIdx.x; e < vocab; e += blockDim.x) {
            const uint32_t key = kcu_key(x[e]);
            if ((key & mask) == prefix) {
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int remaining = s_remaining;
            uint32_t cum = 0;
            for (int b = 255; b >= 0; b--) {
                if (cum + hist[b] >= (uint32_t)remaining) {
                    s_remaining = remaining - (int)cum;
                    s_prefix = prefix | ((uint32_t)b << shift);
                    s_mask = mask | (255u << shift);
                    break;
                }
                cum += hist[b];
            }
        }
        __syncthreads();
    }
    const uint32_t kth = s_prefix;
    const int need_eq = s_remaining;          /* ties at the k-th key to take */
    const int n_gt = k - need_eq;             /* keys strictly above it */
    int run_gt = 0, run_eq = 0;
    for (int64_t base = 0; base < vocab; base += blockDim.x) {
        const int64_t e = base + threadIdx.x;
        const float v = e < vocab ? x[e] : 0.f;
        const uint32_t key = e < vocab ? kcu_key(v) : 0u;
        const bool gt = e < vocab && key > kth, eq = e < vocab && key == kth;
        int tot_gt, tot_eq;
        const int pg = kcu_block_scan(gt, warp_gt, &tot_gt);
        const int pe = kcu_block_scan(eq, warp_eq, &tot_eq);
        if (gt && run_gt + pg < n_gt) {
            c_val[run_gt + pg] = v;
            c_id[run_gt + pg] = (int)e;
        }
        if (eq && run_eq + pe < need_eq) {
            c_val[n_gt + run_eq + pe] = v;
            c_id[n_gt + run_eq + pe] = (int)e;
        }
        run_gt += tot_gt;
        run_eq += tot_eq;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const float v = c_val[i];
        const int id = c_id[i];
        int rank = 0;
        for (int j = 0; j < k; j++) {
            rank += (c_val[j] > v || (c_val[j] == v && c_id[j] < id)) ? 1 : 0;
        }
        vals[(int64_t)blockIdx.x * k + rank] = v;
        ids[(int64_t)blockIdx.x * k + rank] = id;
    }
}

extern "C" mls_status kcu_argmax(kcu_ctx *ctx, const float *logits, int64_t n, int64_t vocab,
                                 int32_t *ids_p, float *lse_p, mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL && logits != NULL && ids_p != NULL, err,
                  "kcu_argmax: NULL argument");
    KCU_CHECK_ARG(n >= 0 && n <= INT32_MAX && vocab >= 1 && vocab <= INT32_MAX, err,
                  "kcu_argmax: n %lld, vocab %lld", (long long)n, (long long)vocab);
    if (n == 0) {
        return MLS_OK;
    }
    kcu_argmax_kernel<<<(unsigned)n, KCU_SAMPLE_THREADS, 0, ctx->stream>>>(logits, vocab, ids_p,
                                                                           lse_p);
    KCU_CHECK_LAUNCH("kcu_argmax_kernel", err);
    return MLS_OK;
}

extern "C" mls_status kcu_topk(kcu_ctx *ctx, const float *logits, int64_t n, int64_t vocab,
                               int32_t k, float *vals_p, int32_t *ids_p, mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL && logits != NULL && vals_p != NULL && ids_p != NULL, err,
                  "kcu_topk: NULL argument");
    KCU_CHECK_ARG(n >= 0 && n <= INT32_MAX && vocab >= 1 && vocab <= INT32_MAX, err,
                  "kcu_topk: n %lld, vocab %lld", (long long)n, (long long)vocab);
    KCU_CHECK_ARG(k >= 1 && k <= KCU_TOPK_MAX && k <= vocab, err,
                  "kcu_topk: k %d (1..min(vocab %lld, %d))", k, (long long)vocab, KCU_TOPK_MAX);
    if (n == 0) {
        return MLS_OK;
    }
    kcu_topk_kernel<<<(unsigned)n, KCU_SAMPLE_THREADS, 0, ctx->stream>>>(logits, vocab, k, vals_p,
                                                                         ids_p);
    KCU_CHECK_LAUNCH("kcu_topk_kernel", err);
    return MLS_OK;
}
