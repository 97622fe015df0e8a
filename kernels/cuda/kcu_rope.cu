/* kcu_rope.cu - interleaved-pair rotary: one thread per (token, vector, pair). */
#include "kcu_internal.cuh"

__global__ void kcu_rope_kernel(float *x, int64_t n_tok, int64_t tok_stride, int64_t n_vec,
                                int64_t vec_stride, int64_t half, const int32_t *pos,
                                const float *inv_freq, float mscale)
{
    const int64_t total = n_tok * n_vec * half;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = idx % half, tv = idx / half;
        const int64_t v = tv % n_vec, t = tv / n_vec;
        float *p = x + t * tok_stride + v * vec_stride + 2 * i;
        const float a = (float)pos[t] * inv_freq[i]; /* fp32 angle, as the CPU computes it */
        float s, c;
        sincosf(a, &s, &c);
        const float x0 = p[0], x1 = p[1];
        p[0] = (x0 * c - x1 * s) * mscale;
        p[1] = (x0 * s + x1 * c) * mscale;
    }
}

extern "C" mls_status kcu_rope_interleaved(kcu_ctx *ctx, float *x, int64_t n_tok,
                                           int64_t tok_stride, int64_t n_vec,
                                           int64_t vec_stride, int64_t dim, const int32_t *pos,
                                           const float *inv_freq, float mscale, mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL && x != NULL && pos != NULL && inv_freq != NULL, err,
                  "kcu_rope_interleaved: NULL argument");
    KCU_CHECK_ARG(n_tok >= 0 && n_vec >= 0 && dim >= 0 && dim % 2 == 0 && vec_stride >= dim &&
                      tok_stride >= 0,
                  err, "kcu_rope_interleaved: n_tok %lld n_vec %lld dim %lld strides %lld/%lld",
                  (long long)n_tok, (long long)n_vec, (long long)dim, (long long)tok_stride,
                  (long long)vec_stride);
    const int64_t total = n_tok * n_vec * (dim / 2);
    if (total == 0) {
        return MLS_OK;
    }
    unsigned blocks = kcu_blocks(total, 256);
    kcu_rope_kernel<<<blocks > 8192 ? 8192 : blocks, 256, 0, ctx->stream>>>(
        x, n_tok, tok_stride, n_vec, vec_stride, dim / 2, pos, inv_freq, mscale);
    KCU_CHECK_LAUNCH("kcu_rope_kernel", err);
    return MLS_OK;
}
