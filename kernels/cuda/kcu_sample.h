/*
 * kcu_sample.h - sampling helpers on the device: argmax (greedy decoding,
 * with the row's log-sum-exp for the logprob) and exact top-k candidates
 * (radix select; the host sampler finishes temperature/top-p on k values).
 * Ties order by the lower token id, as the CPU sampler does.
 */
#ifndef KCU_SAMPLE_H
#define KCU_SAMPLE_H

#include <stdint.h>

#include "mls_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kcu_ctx kcu_ctx;

#define KCU_TOPK_MAX 1024

/* logits: device [n, vocab]; ids_p: device [n]; lse_p: device [n] or NULL
 * (log-sum-exp of each row, natural log). */
mls_status kcu_argmax(kcu_ctx *ctx, const float *logits, int64_t n, int64_t vocab,
                      int32_t *ids_p, float *lse_p, mls_err *err);

/* The k largest logits of each row, sorted descending (ties: lower id
 * first). vals_p, ids_p: device [n, k]; 1 <= k <= min(vocab, KCU_TOPK_MAX). */
mls_status kcu_topk(kcu_ctx *ctx, const float *logits, int64_t n, int64_t vocab, int32_t k,
                    float *vals_p, int32_t *ids_p, mls_err *err);

#ifdef __cplusplus
}
#endif

#endif
