/*
 * kcu_kv_store.h - write latent KV rows into device pages (the GPU side of
 * kvl_row_store): bf16 rounds to nearest even; fp8 computes one scale per
 * 128 latent values (amax / 448) and rounds codes to nearest even with
 * saturation, bit-identical to kvl_row_store.
 */
#ifndef KCU_KV_STORE_H
#define KCU_KV_STORE_H

#include <stdint.h>

#include "mls_kv_layout.h"
#include "mls_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kcu_ctx kcu_ctx;

/*
 * For token t: latent[t, R] and rope[t, D] (device f32, row strides
 * latent_stride / rope_stride in floats) go to row slot[t] of page page[t]
 * of the pool at kv_base (device). page, slot: device [n_tok].
 * Layout dtype bf16 or fp8.
 */
mls_status kcu_kv_store(kcu_ctx *ctx, const kvl_layout *layout, uint8_t *kv_base,
                        const float *latent, int64_t latent_stride, const float *rope,
                        int64_t rope_stride, const uint32_t *page, const uint32_t *slot,
                        int64_t n_tok, mls_err *err);

#ifdef __cplusplus
}
#endif

#endif
