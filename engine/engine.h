/*
 * engine.h - the mlaserve model runtime: the public contract of engine/.
 *
 * Objects and ownership:
 *   eng_model    weights (mmapped checkpoint) + config; immutable after load,
 *                shared read-only by any number of contexts.
 *   eng_kv_pool  the paged latent KV cache: one pool per layer, pages of
 *                KVL_PAGE_TOKENS rows in the layout of mls_kv_layout.h; page
 *                ids are shared by all layers. Thread-safe alloc/free.
 *   eng_seq      one sequence's page table and length; owned by the caller,
 *                pages owned by the pool (eng_seq_release gives them back).
 *   eng_ctx      compute context: a backend (CPU thread pool, or a CUDA
 *                stream) + scratch; one thread at a time.
 *
 * Forward passes: eng_prefill runs a chunk of prompt tokens of one sequence;
 * eng_decode_step advances N sequences (different lengths, joined or left
 * between steps freely) by one token each. Both write the new tokens' latent
 * rows into the pool before attention reads them, and both use the absorbed
 * form (W_UK folded into the query, attention over the latent cache, W_UV
 * after): the cache is never decompressed.
 */
#ifndef ENGINE_H
#define ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "eng_config.h"
#include "mls_kv_layout.h"
#include "mls_rng.h"
#include "mls_status.h"

/* ---- devices -------------------------------------------------------------- */

/* Where a context computes and a KV pool keeps its pages. */
typedef enum {
    ENG_DEVICE_CPU,     /* kernels/cpu over host memory (the default: a zeroed opts) */
    ENG_DEVICE_CUDA,    /* kernels/cuda over device memory (builds with MLS_HAVE_CUDA) */
    ENG_DEVICE_COUNT
} eng_device;

const char *eng_device_name(eng_device device);                  /* "cpu", "cuda" */
/* "cpu" or "cuda"; MLS_ERR_INVALID_ARG otherwise. */
mls_status eng_device_parse(const char *name, eng_device *device_p);
/*
 * Can `device` (ordinal `index` for CUDA) run here? MLS_OK; or
 * MLS_ERR_UNSUPPORTED with *err "built without CUDA" when this build has no
 * CUDA backend; or MLS_ERR_NO_DEVICE with *err "no CUDA device: <cause>".
 * Cheap; call it before loading a model to fail fast.
 */
mls_status eng_device_check(eng_device device, int index, mls_err *err);

/* ---- model ---------------------------------------------------------------- */

typedef struct eng_model eng_model;

typedef struct {
    bool progress;      /* progress lines on stderr while binding weights */
} eng_load_opts;

/* Load <dir>/config.json and its safetensors (single or sharded). Every
 * tensor the config implies is checked (present, dtype, shape); errors name
 * the file and tensor in *err. */
mls_status eng_model_load(const char *dir, const eng_load_opts *opts, eng_model **model_p,
                          mls_err *err);
void eng_model_destroy(eng_model *model); /* accepts NULL */
const eng_config *eng_model_config(const eng_model *model);
/* Identifies the weights (config + tensor table + weight samples). Two nodes
 * exchange KV only when their fingerprints match. */
uint64_t eng_model_fingerprint(const eng_model *model);
/* Bytes of weights the model maps. */
uint64_t eng_model_weight_bytes(const eng_model *model);

/* ---- paged latent KV pool ------------------------------------------------- */

typedef struct eng_kv_pool eng_kv_pool;

/* n_pages pages per layer, for n_layers layers, in `layout`. */
mls_status eng_kv_pool_create(const kvl_layout *layout, int32_t n_layers, uint32_t n_pages,
                              eng_kv_pool **pool_p);
/* The same over caller-owned memory: bases[l] holds n_pages * layout->page_bytes
 * bytes for layer l (e.g. memory the transport allocated so peers can write it
 * directly). The pool never frees it; it must outlive the pool. */
mls_status eng_kv_pool_create_external(const kvl_layout *layout, int32_t n_layers, uint32_t n_pages,
                                       uint8_t *const *bases, eng_kv_pool **pool_p);
/* Where the pages live: opts->device's memory (ENG_DEVICE_CUDA: device
 * memory, allocated by the CUDA backend), device ordinal opts->index; or,
 * with opts->bases, caller-owned layer memory on that device (as
 * eng_kv_pool_create_external: e.g. KVX_MEM_CUDA memory the transport
 * registered). opts NULL: host, as eng_kv_pool_create. Errors as
 * eng_device_check's, in *err. */
typedef struct {
    eng_device device;
    int index;
    uint8_t *const *bases;  /* [n_layers] n_pages * page_bytes each, or NULL: the pool allocates */
} eng_kv_pool_opts;

mls_status eng_kv_pool_create_opts(const kvl_layout *layout, int32_t n_layers, uint32_t n_pages,
                                   const eng_kv_pool_opts *opts, eng_kv_pool **pool_p,
                                   mls_err *err);
void eng_kv_pool_destroy(eng_kv_pool *pool); /* accepts NULL */
eng_device eng_kv_pool_device(const eng_kv_pool *pool);
const kvl_layout *eng_kv_pool_layout(const eng_kv_pool *pool);
int32_t eng_kv_pool_layers(const eng_kv_pool *pool);
/* Layer and page addresses are in the pool's device memory (eng_kv_pool_device). */
uint8_t *eng_kv_pool_layer_base(const eng_kv_pool *pool, int32_t layer);
/* Page `page` of `layer` (page_bytes long). */
uint8_t *eng_kv_pool_page(const eng_kv_pool *pool, int32_t layer, uint32_t page);
/* Take n pages (all or nothing: MLS_ERR_BUSY when fewer are free). */
mls_status eng_kv_pool_alloc(eng_kv_pool *pool, uint32_t n, uint32_t *pages_p /* [n] */);
void eng_kv_pool_free(eng_kv_pool *pool, const uint32_t *pages, uint32_t n);
uint32_t eng_kv_pool_pages_total(const eng_kv_pool *pool);
uint32_t eng_kv_pool_pages_free(const eng_kv_pool *pool);
/* Bytes one token costs across all layers (row_bytes * layers). */
uint64_t eng_kv_pool_bytes_per_token(const eng_kv_pool *pool);

/* ---- sequences -------------------------------------------------------------- */

typedef struct {
    uint32_t *pages;     /* [cap_pages] page table, shared by every layer */
    uint32_t n_pages;    /* pages held */
    size_t cap_pages;    /* capacity of pages[] (mls_array_reserve, tag KV_POOL) */
    int32_t n_tokens;    /* tokens whose latent rows are in the cache */
    /* DeepSeek-V4: the sequence's state (window rings, compressed entries,
     * indexer keys, compressor rows; f32, outside the pool), made by its first
     * eng_prefill and freed by eng_seq_release; NULL for V2/V3. */
    struct eng_v4_state *v4;
} eng_seq;

void eng_seq_init(eng_seq *seq);
/* Make sure the sequence owns pages for n_tokens tokens (allocates from pool). */
mls_status eng_seq_reserve(eng_seq *seq, eng_kv_pool *pool, int32_t n_tokens);
/* Adopt pages reserved elsewhere (e.g. by the transport); the seq owns them after. */
mls_status eng_seq_adopt(eng_seq *seq, const uint32_t *pages, uint32_t n, int32_t n_tokens);
/* Give the pages back to the pool and reset; frees the page table and a V4
 * state. pool may be NULL when the sequence holds no pages (a V4 sequence). */
void eng_seq_release(eng_seq *seq, eng_kv_pool *pool);

/* ---- compute ------------------------------------------------------------------ */

typedef struct eng_ctx eng_ctx;

typedef struct {
    int n_threads;          /* CPU compute threads; <= 0: one per core */
    eng_device device;      /* the backend (ENG_DEVICE_CPU when zeroed) */
    int device_index;       /* CUDA device ordinal */
    /* DeepSeek-V4 only: how each sequence's state stores its window rows,
     * compressed entries and indexer keys: KVL_DTYPE_F32 (zeroed opts) or
     * KVL_DTYPE_FP8 (FlashMLA's V4 rows); V2/V3 ignore it (the pool's layout
     * says). */
    kvl_dtype v4_kv_dtype;
} eng_ctx_opts;

/*
 * A context computing on opts->device (opts NULL: CPU, all cores). The pool
 * must live on the same device. A DeepSeek-V4 model computes on the CPU only
 * and keeps its state per sequence (eng_seq.v4), not in a pool: pool must be
 * NULL (MLS_ERR_INVALID_ARG otherwise; MLS_ERR_UNSUPPORTED for another device
 * or a v4_kv_dtype other than f32/fp8). Errors in *err (may be NULL): those of
 * eng_device_check, a pool/model shape mismatch (MLS_ERR_INVALID_ARG), and
 * for ENG_DEVICE_CUDA on a machine with a device, MLS_ERR_UNSUPPORTED: the
 * CUDA backend table is filled but the forward pass does not run on it yet.
 */
mls_status eng_ctx_create_opts(const eng_model *model, eng_kv_pool *pool,
                               const eng_ctx_opts *opts, eng_ctx **ctx_p, mls_err *err);
/* The CPU context: eng_ctx_create_opts with {n_threads}; n_threads <= 0: one per core. */
mls_status eng_ctx_create(const eng_model *model, eng_kv_pool *pool, int n_threads,
                          eng_ctx **ctx_p);
eng_device eng_ctx_device(const eng_ctx *ctx);
void eng_ctx_destroy(eng_ctx *ctx); /* accepts NULL */

/* Called after layer `layer`'s latent rows for positions [pos_begin, pos_end)
 * are in the pool (prefill only): the transport ships them from here. */
typedef void (*eng_layer_done_fn)(void *arg, int32_t layer, int32_t pos_begin, int32_t pos_end);

/*
 * Prefill ids[n] at positions seq->n_tokens .. +n-1 (the sequence must hold
 * pages for them: eng_seq_reserve; a V4 sequence needs none). Runs in chunks.
 * logits_out: [n, vocab] when all_logits, else [vocab] for the last token; may
 * be NULL. layer_done is not called for a V4 model (the nodes do not serve V4).
 */
mls_status eng_prefill(eng_ctx *ctx, eng_seq *seq, const int32_t *ids, int32_t n,
                       bool all_logits, float *logits_out, eng_layer_done_fn layer_done,
                       void *layer_done_arg);

/* Feed ids[i] to seqs[i] at position seqs[i]->n_tokens, for i < n_seqs;
 * logits_out: [n_seqs, vocab]. Each sequence must hold a page for the new token. */
mls_status eng_decode_step(eng_ctx *ctx, eng_seq *const *seqs, const int32_t *ids,
                           int32_t n_seqs, float *logits_out);

/* Tokens per prefill chunk (default 256). */
void eng_ctx_set_chunk(eng_ctx *ctx, int32_t chunk_tokens);

/* ---- sampling ------------------------------------------------------------------ */

typedef struct {
    float temperature;  /* 0: greedy */
    float top_p;        /* 1: off */
    int32_t top_k;      /* 0: off */
} eng_sampling;

typedef mls_rng eng_rng; /* seeded per request (and per token by the nodes) */

void eng_rng_seed(eng_rng *rng, uint64_t seed);
/* Pick a token from logits[vocab]; *logprob_p gets log softmax(logits)[id]
 * of the unmodified distribution. scratch: [2*vocab] floats. */
int32_t eng_sample(const float *logits, int32_t vocab, const eng_sampling *params, eng_rng *rng,
                   float *scratch, float *logprob_p);

#endif
