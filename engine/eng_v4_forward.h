/*
 * eng_v4_forward.h - DeepSeek-V4's forward pass on the CPU with an f32
 * per-sequence state (engine internal).
 *
 * The maths is README-v4 section 4's (DeepSeek's inference/model.py): mHC
 * residual of hc_mult copies around each half-block; attention with q LoRA,
 * per-head q norm, one shared K=V vector per token (FP8-simulated nope dims),
 * a sliding window on every layer, compressed entries (CSA: ratio 4,
 * overlapping gated pooling, lightning-indexer top-k; HCA: any other ratio,
 * all entries), an attention sink, inverse rotary on the output and a grouped
 * low-rank output; MoE with sqrt-softplus scores, hash routing on the first
 * layers, SwiGLU clamping and a shared expert. In an FP8 model the input of
 * every FP8/FP4 GEMM is FP8 quantize-dequantized in blocks of 128 first.
 *
 * One code path serves prefill (a chunk of any length) and decode (a chunk
 * of one): a chunk's tokens pass through the compressors one at a time, as
 * the reference's decode does, so any chunking gives the same state.
 *
 * The state (eng_v4_state) is what the reference keeps per sequence
 * (README-v4 section 3): per layer the window ring, the compressed entries,
 * the indexer keys (CSA) and the compressors' partial blocks (f32). Window
 * rows, entries and keys are stored f32 or as FP8 rows (eng_v4_kvrow.c);
 * attention reads what was stored, so a chunk's own rows go through the same
 * rounding as the rows it reads back later.
 *
 * Files (each uses only those listed after it): eng_v4_forward.c (context,
 * state, mHC, blocks, head), eng_v4_attn.c (the attention half),
 * eng_v4_indexer.c (the lightning indexer), eng_v4_moe.c (the FFN half),
 * eng_v4_compress.c (compressors), eng_v4_kvrow.c (stored rows: f32 or
 * FlashMLA's FP8 V4 rows), eng_v4_linear.c (GEMM, RMSNorm, rotary table).
 */
#ifndef ENG_V4_FORWARD_H
#define ENG_V4_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_backend.h"
#include "eng_v4.h"
#include "mls_status.h"

#define ENG_V4_MAX_HC 64 /* hc_mult at most (eng_config refuses more) */

/* One compressor's partial blocks (README-v4 section 3): rows of raw wkv
 * outputs and gate scores (wgate + ape). CSA (c = 2): rows [0, 4) the last
 * complete block, rows [4, 8) the current one; HCA (c = 1): rows [0, m). */
typedef struct {
    int32_t ratio; /* m */
    int32_t width; /* d': head_dim or index_head_dim */
    float *kv;     /* (c*m, c*d') */
    float *score;  /* (c*m, c*d'); -inf where no token was written (CSA's empty previous block) */
} eng_v4_cmp_state;

typedef struct {
    int32_t ratio;     /* 0 window only, 4 CSA, else HCA */
    int32_t W, d, Id;  /* sliding_window, head_dim, index_head_dim */
    kvl_dtype dtype;   /* how rows are stored: F32, or FP8 (eng_v4_kvrow.c) */
    uint32_t kv_row;   /* bytes of a window row or compressed entry */
    uint32_t idx_row;  /* bytes of an indexer key */
    uint8_t *window;   /* (W, kv_row) ring: slot p mod W holds position p's K=V vector */
    uint8_t *comp;     /* (cap_entries, kv_row) compressed entries (ratio > 0) */
    uint8_t *idx_keys; /* (cap_entries, idx_row) indexer keys (CSA) */
    int32_t n_entries; /* compressed entries held */
    int32_t cap_entries;
    eng_v4_cmp_state cmp;  /* ratio > 0 */
    eng_v4_cmp_state icmp; /* CSA: the indexer's compressor (m 4, width Id) */
    int32_t *last_topk;    /* (index_topk) or NULL: CSA, the chunk's last query's selection
                            * (descending score, -1 pads); the caller's, for inspection */
} eng_v4_layer_state;

/* One sequence's V4 state. Owned by the caller (eng_v4_state_destroy); the
 * engine API keeps one per eng_seq (eng_seq.v4). */
typedef struct eng_v4_state {
    kvl_dtype dtype; /* KVL_DTYPE_F32 or KVL_DTYPE_FP8 */
    int32_t n_layers;
    int32_t n_tokens;           /* positions [0, n_tokens) are folded in */
    eng_v4_layer_state *layers; /* [n_layers] */
} eng_v4_state;

/* A compute context: the backend (CPU) and the rotary tables. One thread at a time. */
typedef struct eng_v4_ctx {
    const eng_v4_model *model;
    const eng_backend_ops *ops;
    void *bctx;       /* the backend's context (CPU: a kc_pool) */
    float *freqs_swa; /* (r/2) rope_theta, no YaRN: window-only layers */
    float *freqs_cmp; /* (r/2) compress_rope_theta with YaRN: compressed layers */
} eng_v4_ctx;

mls_status eng_v4_ctx_create(const eng_v4_model *model, int n_threads, eng_v4_ctx **ctx_p,
                             mls_err *err);
void eng_v4_ctx_destroy(eng_v4_ctx *ctx); /* accepts NULL */

/* An empty state (no tokens) for model, its rows stored as dtype: KVL_DTYPE_F32
 * (the reference's values exactly) or KVL_DTYPE_FP8 (FlashMLA's V4 rows: the
 * same values but the rope dims rounded to bf16). KVL_DTYPE_BF16 and an FP8
 * state whose nope dims are not a multiple of 64: MLS_ERR_UNSUPPORTED. */
mls_status eng_v4_state_create(const eng_v4_model *model, kvl_dtype dtype, eng_v4_state **state_p);
void eng_v4_state_destroy(eng_v4_state *state); /* accepts NULL */
/* Make room for compressed entries up to n_tokens positions. */
mls_status eng_v4_state_reserve(eng_v4_state *state, const eng_v4_model *model, int32_t n_tokens);

/*
 * Block `layer` on T tokens at positions pos0 .. pos0+T-1 (pos0 = the tokens
 * the layer's state already holds): resid (T, h, D) is the hc residual in and
 * out; ids (T) the tokens (hash routing); attn_out (T, D), if not NULL, gets
 * the attention half's output (after wo_b). Updates the layer's state.
 */
mls_status eng_v4_block_forward(eng_v4_ctx *ctx, int32_t layer, eng_v4_layer_state *ls,
                                const int32_t *ids, int32_t T, int32_t pos0,
                                float *resid /* (T, h, D) */, float *attn_out /* (T, D) or NULL */,
                                mls_err *err);

/*
 * ids[T] at positions state->n_tokens ..: every block, then the head.
 * logits: (T, V) when all_logits, else (V) for the last token; may be NULL.
 * A failure (out of memory) may leave some layers advanced and others not:
 * the state is then unusable and should be destroyed.
 */
mls_status eng_v4_forward(eng_v4_ctx *ctx, eng_v4_state *state, const int32_t *ids, int32_t T,
                          bool all_logits, float *logits, mls_err *err);

/* ---- internals shared by the eng_v4_*.c files ------------------------------------ */

/* eng_v4_linear.c */

/* y (n, w->rows) = x (n, w->cols) . W^T; act_quant: FP8 quantize-dequantize x
 * in blocks of 128 first (the FP8 model's GEMM inputs), into a scratch copy. */
mls_status eng_v4_linear(eng_v4_ctx *ctx, const eng_v4_weight *w, const float *x, int64_t n,
                         float *y, bool act_quant, mls_err *err);
/* Does the reference quantize this weight's input (an FP8 or FP4 GEMM)? */
bool eng_v4_weight_quantizes_input(const eng_v4_weight *w);
/* x (n, dim) * rsqrt(mean(x^2) + eps) * w (dim; NULL: none), rows `stride` apart, in place. */
void eng_v4_rmsnorm(float *x, const float *w, int64_t n, int32_t dim, int64_t stride, float eps);
/* The layer's rotary frequencies (r/2). */
const float *eng_v4_layer_freqs(const eng_v4_ctx *ctx, int32_t layer);

/* The attention half of layer `layer` (eng_v4_attn.c): x (T, D) normed
 * input at positions pos0..; out (T, D). */
mls_status eng_v4_attn_forward(eng_v4_ctx *ctx, int32_t layer, eng_v4_layer_state *ls,
                               const float *x, int32_t T, int32_t pos0, float *out, mls_err *err);

/* The FFN half (eng_v4_moe.c): x (T, D) normed input, ids (T), out (T, D). */
mls_status eng_v4_moe_forward(eng_v4_ctx *ctx, int32_t layer, const float *x, const int32_t *ids,
                              int32_t T, float *out, mls_err *err);

/* The compressor (eng_v4_compress.c). kind: the main KV (FP8 nope dims) or
 * the indexer's keys (Hadamard, FP4). */
typedef enum {
    ENG_V4_CMP_KV,
    ENG_V4_CMP_INDEX,
} eng_v4_cmp_kind;

/* Fresh partial-block state: kv 0, score -inf. */
void eng_v4_cmp_state_reset(eng_v4_cmp_state *cs);
/*
 * Feed T tokens at positions pos0.. (x (T, D) the attention input): every
 * completed block appends one entry (d') to entries at *n_entries_p, stored
 * as dtype (eng_v4_kv_row_store / eng_v4_idx_row_store; room for all of them
 * is the caller's).
 */
mls_status eng_v4_compress(eng_v4_ctx *ctx, const eng_v4_compressor *cmp, eng_v4_cmp_kind kind,
                           int32_t layer, eng_v4_cmp_state *cs, const float *x, int32_t T,
                           int32_t pos0, kvl_dtype dtype, uint8_t *entries /* (cap, row bytes) */,
                           int32_t *n_entries_p, mls_err *err);

/* ---- stored rows (eng_v4_kvrow.c) ---------------------------------------------------- */

/* Bytes of an entry (d values, the last r rope) / an indexer key (Id values) as dtype
 * (F32: 4 per value; FP8: KVL_ROW_BYTES_V4_ENTRY / KVL_ROW_BYTES_V4_INDEXER). */
uint32_t eng_v4_kv_row_bytes(kvl_dtype dtype, int32_t d, int32_t r);
uint32_t eng_v4_idx_row_bytes(kvl_dtype dtype, int32_t Id);
/* x (d) <-> row. FP8: [nope e4m3][UE8M0 per 64, padded to 8][rope bf16]. */
void eng_v4_kv_row_store(kvl_dtype dtype, int32_t d, int32_t r, const float *x, uint8_t *row);
void eng_v4_kv_row_load(kvl_dtype dtype, int32_t d, int32_t r, const uint8_t *row, float *x);
/* x (Id) <-> row. FP8: [e2m1 x Id packed, low nibble first][UE8M0 per 32]. */
void eng_v4_idx_row_store(kvl_dtype dtype, int32_t Id, const float *x, uint8_t *row);
void eng_v4_idx_row_load(kvl_dtype dtype, int32_t Id, const uint8_t *row, float *x);

/*
 * The lightning indexer (eng_v4_indexer.c) for T queries at pos0..: qr (T, Q)
 * the normed q LoRA, x (T, D) the attention input, keys the n_keys indexer
 * keys as stored (rows of eng_v4_idx_row_bytes(dtype, Id): FP8 rows are
 * scored by kc_v4_index_scores, bit for bit what f32 keys give). sel (T, topk)
 * gets each query's chosen entries (descending score; -1 pads when fewer are
 * visible: entries j < (p+1)/4).
 */
mls_status eng_v4_indexer_select(eng_v4_ctx *ctx, int32_t layer, const float *qr, const float *x,
                                 int32_t T, int32_t pos0, kvl_dtype dtype,
                                 const uint8_t *keys /* (n_keys, row bytes) */, int32_t n_keys,
                                 int32_t *sel /* (T, topk) */, mls_err *err);

#endif
