/*
 * kcu_gemm.h - dense GEMMs over bf16 device weights with f32 activations
 * (cuBLASLt, fp32 accumulation; cublasGemmEx when Lt has no algorithm).
 *
 * Activations are rounded to bf16 for the tensor cores. In the default
 * KCU_GEMM_SPLIT precision each activation is split into hi + lo bf16 halves
 * (x = hi + lo to ~2^-16 relative) that ride in one GEMM as 2n columns, so
 * the weights are still read once and the result keeps close to f32
 * accuracy (what the CPU kernels promise). KCU_GEMM_BF16 rounds once and is
 * the fast choice for large n (prefill).
 */
#ifndef KCU_GEMM_H
#define KCU_GEMM_H

#include <stdint.h>

#include "mls_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kcu_ctx kcu_ctx;
struct kcu_matrix_s;

typedef enum {
    KCU_GEMM_SPLIT,   /* x = hi + lo bf16: ~f32 accuracy, 2x tensor work */
    KCU_GEMM_BF16,    /* x rounded to bf16 once */
} kcu_gemm_precision;

void kcu_ctx_set_gemm_precision(kcu_ctx *ctx, kcu_gemm_precision prec);

/* y[n, w->rows] = x[n, w->cols] . W^T   (all device, row-major, dense). */
mls_status kcu_matmul(kcu_ctx *ctx, const struct kcu_matrix_s *w, const float *x, int64_t n,
                      float *y, mls_err *err);

/* y[n, w->cols] = x[n, w->rows] . W     (the transposed use: absorbing W_UK). */
mls_status kcu_matmul_t(kcu_ctx *ctx, const struct kcu_matrix_s *w, const float *x, int64_t n,
                        float *y, mls_err *err);

#ifdef __cplusplus
}
#endif

#endif
