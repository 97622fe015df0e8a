/*
 * kcu_mla_decode.h - paged absorbed MLA decode on the device.
 *
 * For every sequence s, query i < n_q and head h (row r = i*n_heads + h):
 *   score_t = softmax_scale * (q_latent[s,r,:] . latent_t + q_rope[s,r,:] . rope_t)
 *   out[s,r,:] = sum_t softmax(score)_t * latent_t,   t < kv_len[s] - n_q + 1 + i
 * over the sequence's cache rows read straight from the 64-token pages (bf16
 * or the 656-byte fp8 layout of mls_kv_layout.h); the same maths as
 * kc_mla_attention_ref. q is rounded to bf16 and fp8 latents are dequantized
 * to bf16 for the tensor cores (mma.sync m16n8k16, fp32 accumulation, online
 * softmax in fp32).
 *
 * Work split (FlashMLA's idea): rows are cut into head blocks of 16/32/64
 * rows (heads in the MMA M dimension, so each KV row is read once per head
 * block); the KV of all sequences is cut into 32-token tiles and a scheduler
 * kernel, from the device seq_lens, hands each of n_parts CTAs per head block
 * an equal share of tiles plus a fixed cost per sequence piece. A sequence cut
 * over several CTAs writes partial results with their log-sum-exp and a
 * combine kernel merges them. No host round trip: the three launches are
 * stream-ordered and graph-capturable.
 *
 * Use: kcu_mla_plan() once per (batch shape), allocate plan.workspace_bytes
 * of device memory, then kcu_mla_decode() every step.
 */
#ifndef KCU_MLA_DECODE_H
#define KCU_MLA_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "mls_kv_layout.h"
#include "mls_status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kcu_ctx kcu_ctx;

#define KCU_MLA_MAX_RANK   512   /* kv_lora_rank R: multiple of 8, <= 512 */
#define KCU_MLA_MAX_ROPE   64    /* rope_dim D: even, <= 64 */
#define KCU_MLA_MAX_ROWS   4096  /* n_q * n_heads */

typedef struct {
    const kvl_layout *layout;     /* host; dtype BF16 or FP8 (F32: MLS_ERR_UNSUPPORTED) */
    const uint8_t *kv_base;       /* device: this layer's pool, page p at + p*page_bytes; 16-B aligned */
    int32_t n_seqs;               /* >= 1 */
    int32_t n_q;                  /* queries per sequence (1 = decode), causal among them */
    int32_t n_heads;              /* >= 1 */
    float softmax_scale;          /* > 0 */
    const int32_t *seq_lens;      /* device [n_seqs]: kv_len; 0 gives zeros, else >= n_q */
    int32_t max_kv_len;           /* host: upper bound of seq_lens (checks page_table_stride) */
    const uint32_t *page_table;   /* device [n_seqs, page_table_stride] page ids (trusted) */
    int32_t page_table_stride;    /* entries per row, >= ceil(max_kv_len / 64) */
    const float *q_latent;        /* device [n_seqs, n_q, n_heads, R], 8-B aligned */
    const float *q_rope;          /* device [n_seqs, n_q, n_heads, D], 8-B aligned */
    float *out;                   /* device [n_seqs, n_q, n_heads, R], 8-B aligned */
} kcu_mla_params;

typedef struct {
    int32_t n_seqs;               /* the shape this plan was made for */
    int32_t rows;                 /* n_q * n_heads */
    int32_t kv_lora_rank;
    kvl_dtype dtype;
    int32_t block_rows;           /* 16, 32 or 64 rows (heads) per CTA */
    int32_t n_head_blocks;        /* ceil(rows / block_rows) */
    int32_t n_parts;              /* CTAs per head block */
    size_t workspace_bytes;       /* device scratch kcu_mla_decode needs */
} kcu_mla_plan;

/* Plan the launch for this batch shape (host only, no device work). */
mls_status kcu_mla_plan_make(kcu_ctx *ctx, const kcu_mla_params *p, kcu_mla_plan *plan_p,
                             mls_err *err);

/* Run the scheduler, decode and combine kernels on ctx's stream.
 * workspace: device, >= plan->workspace_bytes, 256-B aligned. */
mls_status kcu_mla_decode(kcu_ctx *ctx, const kcu_mla_params *p, const kcu_mla_plan *plan,
                          void *workspace, size_t workspace_bytes, mls_err *err);

#ifdef __cplusplus
}
#endif

#endif
