/*
 * kcu_matrix.cu - weight upload: a host kc_matrix view (f32, bf16, f16 or
 * block-fp8) becomes a device bf16 matrix. Conversion runs on the device so
 * the host only copies the raw bytes; fp8 is dequantized with its 128x128
 * scale grid (value = e4m3 * scale_inv, rounded to bf16 once).
 */
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "kcu_internal.cuh"

/* ---- kernels ------------------------------------------------------------------------ */

__global__ void kcu_f32_to_bf16_kernel(const float *src, __nv_bfloat16 *dst, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        dst[i] = __float2bfloat16_rn(src[i]);
    }
}

__global__ void kcu_f16_to_bf16_kernel(const __half *src, __nv_bfloat16 *dst, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        dst[i] = __float2bfloat16_rn(__half2float(src[i]));
    }
}

/* dst[r, c] = e4m3(code[r, c]) * scale[(row0 + r)/128 - (row0/128), c/128] */
__global__ void kcu_fp8_dequant_kernel(const uint8_t *code /* (rows, cols) */,
                                       const float *scale /* (scale rows, scols) */,
                                       int64_t rows, int64_t cols, int64_t row0, int64_t scols,
                                       __nv_bfloat16 *dst /* (rows, cols) */)
{
    const int64_t n = rows * cols;
    const int64_t sb0 = row0 / KC_FP8_BLOCK;

    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols, c = i - r * cols;
        __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)code[i], __NV_E4M3);
        float s = scale[((row0 + r) / KC_FP8_BLOCK - sb0) * scols + c / KC_FP8_BLOCK];
        dst[i] = __float2bfloat16_rn(__half2float(__half(h)) * s);
    }
}

/* ---- upload ----------------------------------------------------------------------- */

static int64_t kcu_dtype_bytes(kc_dtype t)
{
    return t == KC_DTYPE_F32 ? 4 : (t == KC_DTYPE_FP8_E4M3 ? 1 : 2);
}

extern "C" mls_status kcu_matrix_upload(kcu_ctx *ctx, const kc_matrix *w, kcu_arena *arena,
                                        kcu_matrix *out_p, mls_err *err)
{
    mls_status st = MLS_OK;
    kcu_matrix m = {0, 0, NULL, false};
    void *raw = NULL, *scales = NULL;
    int64_t n, esize, scols = 0, srows = 0;
    const uint8_t *src;
    const int threads = 256;
    unsigned blocks;

    KCU_CHECK_ARG(ctx != NULL && w != NULL && out_p != NULL, err,
                  "kcu_matrix_upload: NULL argument");
    KCU_CHECK_ARG(w->rows > 0 && w->cols > 0 && w->row0 >= 0 && w->data != NULL, err,
                  "kcu_matrix_upload: view %lld x %lld at row %lld", (long long)w->rows,
                  (long long)w->cols, (long long)w->row0);
    KCU_CHECK_ARG(w->dtype != KC_DTYPE_FP8_E4M3 || w->scale_inv != NULL, err,
                  "kcu_matrix_upload: fp8 view without scale_inv");
    KCU_CHECK_ARG((unsigned)w->dtype <= KC_DTYPE_FP8_E4M3, err,
                  "kcu_matrix_upload: dtype %d", (int)w->dtype);
    n = w->rows * w->cols;
    esize = kcu_dtype_bytes(w->dtype);
    src = (const uint8_t *)w->data + w->row0 * w->cols * esize;
    m.rows = w->rows;
    m.cols = w->cols;
    if (arena != NULL) {
        void *p = NULL;
        KCU_TRY(kcu_arena_carve(arena, (size_t)n * 2, 256, &p, err), st, err);
        m.data = (uint16_t *)p;
    } else {
        void *p = NULL;
        KCU_TRY(kcu_malloc((size_t)n * 2, &p, err), st, err);
        m.data = (uint16_t *)p;
        m.owned = true;
    }
    blocks = kcu_blocks(n, threads);
    if (blocks > 65535u * 8u) {
        blocks = 65535u * 8u;
    }
    switch (w->dtype) {
    case KC_DTYPE_BF16:
        KCU_TRY(kcu_memcpy_h2d(ctx, m.data, src, (size_t)n * 2, err), st, err_free_data);
        break;
    case KC_DTYPE_F32:
    case KC_DTYPE_F16:
        KCU_TRY(kcu_malloc((size_t)(n * esize), &raw, err), st, err_free_data);
        KCU_TRY(kcu_memcpy_h2d(ctx, raw, src, (size_t)(n * esize), err), st, err_free_raw);
        if (w->dtype == KC_DTYPE_F32) {
            kcu_f32_to_bf16_kernel<<<blocks, threads, 0, ctx->stream>>>(
                (const float *)raw, (__nv_bfloat16 *)m.data, n);
        } else {
            kcu_f16_to_bf16_kernel<<<blocks, threads, 0, ctx->stream>>>(
                (const __half *)raw, (__nv_bfloat16 *)m.data, n);
        }
        KCU_TRY_CUDA(cudaGetLastError(), err, st, err_free_raw);
        break;
    case KC_DTYPE_FP8_E4M3: {
        int64_t sb0 = w->row0 / KC_FP8_BLOCK, sb1 = (w->row0 + w->rows - 1) / KC_FP8_BLOCK;
        scols = (w->cols + KC_FP8_BLOCK - 1) / KC_FP8_BLOCK;
        srows = sb1 - sb0 + 1;
        KCU_TRY(kcu_malloc((size_t)n, &raw, err), st, err_free_data);
        KCU_TRY(kcu_malloc((size_t)(srows * scols) * 4, &scales, err), st, err_free_raw);
        KCU_TRY(kcu_memcpy_h2d(ctx, raw, src, (size_t)n, err), st, err_free_scales);
        KCU_TRY(kcu_memcpy_h2d(ctx, scales, w->scale_inv + sb0 * scols,
                               (size_t)(srows * scols) * 4, err),
                st, err_free_scales);
        kcu_fp8_dequant_kernel<<<blocks, threads, 0, ctx->stream>>>(
            (const uint8_t *)raw, (const float *)scales, w->rows, w->cols, w->row0, scols,
            (__nv_bfloat16 *)m.data);
        KCU_TRY_CUDA(cudaGetLastError(), err, st, err_free_scales);
        break;
    }
    }
    KCU_TRY_CUDA(cudaStreamSynchronize(ctx->stream), err, st, err_free_scales);
    kcu_free(scales);
    kcu_free(raw);
    *out_p = m;
    return MLS_OK;

err_free_scales:
    cudaStreamSynchronize(ctx->stream);
    kcu_free(scales);
err_free_raw:
    kcu_free(raw);
err_free_data:
    if (m.owned) {
        kcu_free(m.data);
    }
err:
    return st;
}

extern "C" void kcu_matrix_free(kcu_matrix *m)
{
    if (m != NULL && m->owned) {
        kcu_free(m->data);
    }
    if (m != NULL) {
        m->data = NULL;
        m->owned = false;
    }
}
