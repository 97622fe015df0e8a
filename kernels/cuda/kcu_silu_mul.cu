/* kcu_silu_mul.cu - gate = silu(gate) * up, grid-stride, precise expf. */
#include "kcu_internal.cuh"

__global__ void kcu_silu_mul_kernel(float *gate, const float *up, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

extern "C" mls_status kcu_silu_mul(kcu_ctx *ctx, float *gate, const float *up, int64_t n_elems,
                                   mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL && gate != NULL && up != NULL && n_elems >= 0, err,
                  "kcu_silu_mul: NULL argument or n_elems %lld", (long long)n_elems);
    if (n_elems == 0) {
        return MLS_OK;
    }
    unsigned blocks = kcu_blocks(n_elems, 256);
    kcu_silu_mul_kernel<<<blocks > 8192 ? 8192 : blocks, 256, 0, ctx->stream>>>(gate, up, n_elems);
    KCU_CHECK_LAUNCH("kcu_silu_mul_kernel", err);
    return MLS_OK;
}
