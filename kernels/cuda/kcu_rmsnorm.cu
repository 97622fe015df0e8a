/* kcu_rmsnorm.cu - RMSNorm: one 256-thread block per row, fp32 sum of squares. */
#include "kcu_internal.cuh"

__global__ void kcu_rmsnorm_kernel(const float *x, const float *w, int64_t dim, float eps,
                                   float *out)
{
    __shared__ float partial[32];
    const float *xr = x + blockIdx.x * dim;
    float *orow = out + blockIdx.x * dim;
    float ss = 0.f;

    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        ss += xr[i] * xr[i];
    }
    for (int off = 16; off > 0; off /= 2) {
        ss += __shfl_xor_sync(0xffffffffu, ss, off);
    }
    if ((threadIdx.x & 31) == 0) {
        partial[threadIdx.x >> 5] = ss;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.f;
        for (int off = 16; off > 0; off /= 2) {
            v += __shfl_xor_sync(0xffffffffu, v, off);
        }
        if (threadIdx.x == 0) {
            partial[0] = v;
        }
    }
    __syncthreads();
    const float inv = rsqrtf(partial[0] / (float)dim + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        orow[i] = xr[i] * inv * w[i];
    }
}

extern "C" mls_status kcu_rmsnorm(kcu_ctx *ctx, const float *x, const float *w, int64_t n,
                                  int64_t dim, float eps, float *out, mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL && x != NULL && w != NULL && out != NULL, err,
                  "kcu_rmsnorm: NULL argument");
    KCU_CHECK_ARG(n >= 0 && n <= INT32_MAX && dim > 0 && eps >= 0.f, err,
                  "kcu_rmsnorm: n %lld, dim %lld, eps %g", (long long)n, (long long)dim,
                  (double)eps);
    if (n == 0) {
        return MLS_OK;
    }
    kcu_rmsnorm_kernel<<<(unsigned)n, 256, 0, ctx->stream>>>(x, w, dim, eps, out);
    KCU_CHECK_LAUNCH("kcu_rmsnorm_kernel", err);
    return MLS_OK;
}
