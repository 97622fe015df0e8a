/*
 * kcu.h - the CUDA backend: public contract of kernels/cuda (prefix kcu_).
 *
 * Plain C: the engine, the daemons, the tests and the bench include it without
 * CUDA headers. Every op is one .cu/.h pair (kernel -> launcher -> the
 * exported function declared in its header); this header holds the context,
 * the memory helpers, and includes the op headers.
 *
 * Conventions:
 * - Every pointer named "device" lives in device memory (kcu_malloc, an arena,
 *   a KV pool); host pointers are said to be host.
 * - Every op runs asynchronously on the context's stream and returns after the
 *   launch; launch failures are checked at once (cudaGetLastError) and mapped
 *   to an mls_status, with the cause in *err. Nothing here calls exit().
 * - Status groups: bad parameters MLS_ERR_INVALID_ARG / MLS_ERR_UNSUPPORTED
 *   (request), device out of memory MLS_ERR_NO_MEMORY, no device
 *   MLS_ERR_NO_DEVICE (node), a failed launch or a sticky CUDA error
 *   MLS_ERR_INTERNAL (the context can no longer be trusted).
 * - One context per host thread at a time; a context is bound to one device.
 */
#ifndef KCU_H
#define KCU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "kc.h"
#include "mls_kv_layout.h"
#include "mls_status.h"

/* ---- context ------------------------------------------------------------------ */

typedef struct kcu_ctx kcu_ctx;

/* Number of CUDA devices. MLS_ERR_NO_DEVICE with the CUDA error in *err when
 * the runtime cannot reach a driver or device (then *count_p = 0). */
mls_status kcu_device_count(int *count_p, mls_err *err);

/* Context on `device`: a non-blocking stream, cuBLAS and cuBLASLt handles and
 * their workspace. *ctx_p is owned by the caller (kcu_ctx_destroy). */
mls_status kcu_ctx_create(int device, kcu_ctx **ctx_p, mls_err *err);
void kcu_ctx_destroy(kcu_ctx *ctx); /* accepts NULL; synchronizes first */

/* Wait for everything queued on the stream; reports asynchronous errors. */
mls_status kcu_ctx_sync(kcu_ctx *ctx, mls_err *err);

int kcu_ctx_device(const kcu_ctx *ctx);
int kcu_ctx_sm_count(const kcu_ctx *ctx);
const char *kcu_ctx_device_name(const kcu_ctx *ctx);
void *kcu_ctx_stream(kcu_ctx *ctx); /* the cudaStream_t, as void * */

/* ---- memory -------------------------------------------------------------------- */

/* Device allocation (cudaMalloc, 256-byte aligned); kcu_free accepts NULL. */
mls_status kcu_malloc(size_t bytes, void **ptr_p, mls_err *err);
void kcu_free(void *ptr);

/* Pinned host memory for staging transfers (cudaHostAlloc, portable). */
mls_status kcu_host_alloc(size_t bytes, void **ptr_p, mls_err *err);
void kcu_host_free(void *ptr);

/* Copies on the context's stream. h2d/d2h wait for completion (host buffers
 * may be pageable); d2d and memset are asynchronous. */
mls_status kcu_memcpy_h2d(kcu_ctx *ctx, void *dst, const void *src, size_t bytes, mls_err *err);
mls_status kcu_memcpy_d2h(kcu_ctx *ctx, void *dst, const void *src, size_t bytes, mls_err *err);
mls_status kcu_memcpy_d2d(kcu_ctx *ctx, void *dst, const void *src, size_t bytes, mls_err *err);
mls_status kcu_memset(kcu_ctx *ctx, void *dst, int value, size_t bytes, mls_err *err);

/*
 * Arena: one device allocation carved into tensors (weights, scratch). Carves
 * are never freed one by one; the arena is destroyed whole.
 */
typedef struct {
    uint8_t *base;   /* device */
    size_t size;     /* bytes */
    size_t used;     /* bytes handed out */
} kcu_arena;

mls_status kcu_arena_create(size_t bytes, kcu_arena *arena_p, mls_err *err);
void kcu_arena_destroy(kcu_arena *arena); /* accepts a zeroed arena */
/* align: power of two; MLS_ERR_NO_MEMORY when the arena is full. */
mls_status kcu_arena_carve(kcu_arena *arena, size_t bytes, size_t align, void **ptr_p,
                           mls_err *err);

/* The paged latent KV pool in device memory is the engine's pool
 * (eng_kv_pool_create_opts with ENG_DEVICE_CUDA): its layer memory comes
 * from kcu_malloc through the engine's CUDA backend table. */

/* ---- weights -------------------------------------------------------------------- */

/* A device weight matrix: bf16, row-major (out_features, in_features). */
typedef struct kcu_matrix_s {
    int64_t rows;
    int64_t cols;
    uint16_t *data;         /* device bf16 [rows, cols]; owned by an arena or kcu_malloc */
    bool owned;             /* true: kcu_matrix_free releases data */
} kcu_matrix;

/*
 * Upload the view `w` (host; any kc_dtype) as bf16: f32/f16 are rounded to
 * bf16 on the device, block-fp8 is dequantized on the device with its
 * 128x128 scales (value = e4m3 * scale_inv, then rounded to bf16 once).
 * arena may be NULL (then the matrix owns a kcu_malloc allocation). Waits for
 * the upload to finish.
 */
mls_status kcu_matrix_upload(kcu_ctx *ctx, const kc_matrix *w, kcu_arena *arena,
                             kcu_matrix *out_p, mls_err *err);
void kcu_matrix_free(kcu_matrix *m); /* frees only owned data; accepts NULL */

#ifdef __cplusplus
}
#endif

#include "kcu_gemm.h"
#include "kcu_kv_store.h"
#include "kcu_mla_decode.h"
#include "kcu_moe_gate.h"
#include "kcu_rmsnorm.h"
#include "kcu_rope.h"
#include "kcu_sample.h"
#include "kcu_silu_mul.h"

#endif
