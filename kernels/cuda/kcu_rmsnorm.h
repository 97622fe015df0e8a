/* kcu_rmsnorm.h - RMSNorm on the device (one block per row, f32). */
#ifndef KCU_RMSNORM_H
#define KCU_RMSNORM_H

#include <stdint.h>

#include "mls_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kcu_ctx kcu_ctx;

/* out[n, dim] = x * rsqrt(mean(x^2) + eps) * w   (device; out may alias x). */
mls_status kcu_rmsnorm(kcu_ctx *ctx, const float *x, const float *w /* (dim) */, int64_t n,
                       int64_t dim, float eps, float *out, mls_err *err);

#ifdef __cplusplus
}
#endif

#endif
