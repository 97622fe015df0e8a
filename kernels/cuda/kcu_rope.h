/* kcu_rope.h - interleaved-pair rotary embedding on the device. */
#ifndef KCU_ROPE_H
#define KCU_ROPE_H

#include <stdint.h>

#include "mls_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kcu_ctx kcu_ctx;

/*
 * For token t, vector v: x + t*tok_stride + v*vec_stride holds dim values
 * (strides in floats). With a = pos[t] * inv_freq[i] (fp32, as the CPU
 * kc_rope_interleaved computes it) and c = cos a, s = sin a:
 *   out[2i] = x0*c - x1*s,  out[2i+1] = x0*s + x1*c
 * then both are multiplied by mscale (1.0f for none). In place, device.
 * pos: device [n_tok]; inv_freq: device [dim/2]. dim even.
 */
mls_status kcu_rope_interleaved(kcu_ctx *ctx, float *x, int64_t n_tok, int64_t tok_stride,
                                int64_t n_vec, int64_t vec_stride, int64_t dim,
                                const int32_t *pos, const float *inv_freq, float mscale,
                                mls_err *err);

#ifdef __cplusplus
}
#endif

#endif
