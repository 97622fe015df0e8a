/*
 * kcu_kv_store.cu - latent rows -> device KV pages, one block per token.
 * fp8: one warp per 128-value scale tile (amax by warp reduction), then
 * codes with round-to-nearest-even and saturation - the arithmetic of
 * kvl_row_store, so both sides write identical bytes.
 */
#include <cuda_fp8.h>

#include "kcu_internal.cuh"

extern "C" {
#include "mls_num.h"
}

struct kcu_kvs_args {
    uint64_t page_bytes;
    int row_bytes, rope_off, scale_off, R, D, fp8;
};

__global__ void kcu_kv_store_kernel(kcu_kvs_args a, uint8_t *kv, const float *latent,
                                    int64_t latent_stride, const float *rope, int64_t rope_stride,
                                    const uint32_t *page, const uint32_t *slot)
{
    const int64_t t = blockIdx.x;
    const float *lat = latent + t * latent_stride;
    const float *rp = rope + t * rope_stride;
    uint8_t *row = kv + kvl_slot_offset(a.page_bytes, (uint32_t)a.row_bytes, page[t], slot[t]);

    if (a.fp8) {
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        const int n_tiles = (int)KVL_FP8_SCALES((unsigned)a.R);
        for (int tile = warp; tile < n_tiles; tile += blockDim.x >> 5) {
            const int lo = tile * (int)KVL_FP8_TILE;
            const int hi = min(a.R, lo + (int)KVL_FP8_TILE);
            float amax = 0.f;
            for (int i = lo + lane; i < hi; i += 32) {
                amax = fmaxf(amax, fabsf(lat[i]));
            }
            for (int off = 16; off > 0; off /= 2) {
                amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
            }
            const float scale = amax > 0.f ? amax / MLS_FP8_E4M3_MAX : 1.0f;
            const float inv = 1.0f / scale;
            for (int i = lo + lane; i < hi; i += 32) {
                row[i] = (uint8_t)__nv_cvt_float_to_fp8(lat[i] * inv, __NV_SATFINITE, __NV_E4M3);
            }
            if (lane == 0) {
                *(float *)(row + a.scale_off + 4 * tile) = scale;
            }
        }
    } else {
        __nv_bfloat16 *dst = (__nv_bfloat16 *)row;
        for (int i = threadIdx.x; i < a.R; i += blockDim.x) {
            dst[i] = __float2bfloat16_rn(lat[i]);
        }
    }
    __nv_bfloat16 *rdst = (__nv_bfloat16 *)(row + a.rope_off);
    for (int i = threadIdx.x; i < a.D; i += blockDim.x) {
        rdst[i] = __float2bfloat16_rn(rp[i]);
    }
}

extern "C" mls_status kcu_kv_store(kcu_ctx *ctx, const kvl_layout *layout, uint8_t *kv_base,
                                   const float *latent, int64_t latent_stride, const float *rope,
                                   int64_t rope_stride, const uint32_t *page, const uint32_t *slot,
                                   int64_t n_tok, mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL && layout != NULL && kv_base != NULL && latent != NULL &&
                      page != NULL && slot != NULL && (rope != NULL || layout->rope_dim == 0),
                  err, "kcu_kv_store: NULL argument");
    KCU_CHECK_ARG(layout->version == KVL_VERSION, err, "kcu_kv_store: layout version %u",
                  layout->version);
    KCU_CHECK_SUPPORTED(layout->dtype == KVL_DTYPE_BF16 || layout->dtype == KVL_DTYPE_FP8, err,
                        "kcu_kv_store: kv dtype %s (bf16 or fp8 on the GPU)",
                        kvl_dtype_name(layout->dtype));
    KCU_CHECK_ARG(n_tok >= 0 && n_tok <= INT32_MAX && latent_stride >= layout->kv_lora_rank &&
                      rope_stride >= 0,
                  err, "kcu_kv_store: n_tok %lld, strides %lld/%lld", (long long)n_tok,
                  (long long)latent_stride, (long long)rope_stride);
    KCU_CHECK_ARG(kcu_aligned(kv_base, 4), err, "kcu_kv_store: kv_base must be 4-B aligned");
    if (n_tok == 0) {
        return MLS_OK;
    }
    kcu_kvs_args a;
    a.page_bytes = layout->page_bytes;
    a.row_bytes = (int)layout->row_bytes;
    a.rope_off = (int)layout->rope_offset;
    a.scale_off = (int)layout->scale_offset;
    a.R = (int)layout->kv_lora_rank;
    a.D = (int)layout->rope_dim;
    a.fp8 = layout->dtype == KVL_DTYPE_FP8;
    kcu_kv_store_kernel<<<(unsigned)n_tok, 128, 0, ctx->stream>>>(a, kv_base, latent, latent_stride,
                                                                  rope, rope_stride, page, slot);
    KCU_CHECK_LAUNCH("kcu_kv_store_kernel", err);
    return MLS_OK;
}
