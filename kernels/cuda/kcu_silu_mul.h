/* kcu_silu_mul.h - gate = silu(gate) * up on the device. */
#ifndef KCU_SILU_MUL_H
#define KCU_SILU_MUL_H

#include <stdint.h>

#include "mls_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kcu_ctx kcu_ctx;

/* gate[n_elems] = gate / (1 + exp(-gate)) * up[n_elems]   (device, in place). */
mls_status kcu_silu_mul(kcu_ctx *ctx, float *gate, const float *up, int64_t n_elems, mls_err *err);

#ifdef __cplusplus
}
#endif

#endif
