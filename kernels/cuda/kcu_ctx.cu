/*
 * kcu_ctx.cu - the CUDA context (device, stream, cuBLAS/cuBLASLt handles),
 * error mapping, and the device memory helpers: plain allocations, pinned
 * host staging buffers and arenas.
 */
#include <stdlib.h>
#include <string.h>

#include "kcu_internal.cuh"

#define KCU_LT_WORKSPACE_BYTES (32u << 20) /* cuBLASLt's recommendation for Hopper */

mls_status kcu_status_from_cuda(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return MLS_OK;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInvalidDevice:
    case cudaErrorDevicesUnavailable:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
        return MLS_ERR_NO_DEVICE;
    case cudaErrorMemoryAllocation:
        return MLS_ERR_NO_MEMORY;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
        return MLS_ERR_INVALID_ARG;
    default:
        return MLS_ERR_INTERNAL;
    }
}

mls_status kcu_status_from_cublas(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS:
        return MLS_OK;
    case CUBLAS_STATUS_ALLOC_FAILED:
        return MLS_ERR_NO_MEMORY;
    case CUBLAS_STATUS_INVALID_VALUE:
        return MLS_ERR_INVALID_ARG;
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return MLS_ERR_UNSUPPORTED;
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return MLS_ERR_NO_DEVICE;
    default:
        return MLS_ERR_INTERNAL;
    }
}

mls_status kcu_device_count(int *count_p, mls_err *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    *count_p = 0;
    if (e != cudaSuccess) {
        mls_err_set(err, "cudaGetDeviceCount: %s (%s)", cudaGetErrorString(e),
                    cudaGetErrorName(e));
        cudaGetLastError(); /* clear the error so later calls start clean */
        return MLS_ERR_NO_DEVICE;
    }
    if (n == 0) {
        mls_err_set(err, "cudaGetDeviceCount: no CUDA device");
        return MLS_ERR_NO_DEVICE;
    }
    *count_p = n;
    return MLS_OK;
}

mls_status kcu_ctx_create(int device, kcu_ctx **ctx_p, mls_err *err)
{
    mls_status st = MLS_OK;
    cudaDeviceProp prop;
    int n = 0;
    kcu_ctx *ctx;

    KCU_CHECK_ARG(ctx_p != NULL, err, "kcu_ctx_create: ctx_p is NULL");
    st = kcu_device_count(&n, err);
    if (st != MLS_OK) {
        return st;
    }
    KCU_CHECK_ARG(device >= 0 && device < n, err, "kcu_ctx_create: device %d of %d", device, n);
    ctx = (kcu_ctx *)calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        mls_err_set(err, "kcu_ctx_create: out of host memory");
        return MLS_ERR_NO_MEMORY;
    }
    ctx->device = device;
    ctx->gemm_precision = KCU_GEMM_SPLIT;
    KCU_TRY_CUDA(cudaSetDevice(device), err, st, err_free_ctx);
    KCU_TRY_CUDA(cudaGetDeviceProperties(&prop, device), err, st, err_free_ctx);
    ctx->sm_count = prop.multiProcessorCount;
    ctx->max_smem_optin = (int)prop.sharedMemPerBlockOptin;
    snprintf(ctx->name, sizeof(ctx->name), "%.200s (sm_%d%d, %d SMs, %.1f GiB)", prop.name,
             prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    KCU_TRY_CUDA(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking), err, st,
                 err_free_ctx);
    KCU_TRY_CUBLAS(cublasCreate(&ctx->blas), err, st, err_destroy_stream);
    KCU_TRY_CUBLAS(cublasSetStream(ctx->blas, ctx->stream), err, st, err_destroy_blas);
    KCU_TRY_CUBLAS(cublasLtCreate(&ctx->lt), err, st, err_destroy_blas);
    ctx->lt_workspace_bytes = KCU_LT_WORKSPACE_BYTES;
    KCU_TRY_CUDA(cudaMalloc(&ctx->lt_workspace, ctx->lt_workspace_bytes), err, st, err_destroy_lt);
    KCU_TRY_CUBLAS(cublasSetWorkspace(ctx->blas, ctx->lt_workspace, ctx->lt_workspace_bytes),
                   err, st, err_free_workspace);
    *ctx_p = ctx;
    return MLS_OK;

err_free_workspace:
    cudaFree(ctx->lt_workspace);
err_destroy_lt:
    cublasLtDestroy(ctx->lt);
err_destroy_blas:
    cublasDestroy(ctx->blas);
err_destroy_stream:
    cudaStreamDestroy(ctx->stream);
err_free_ctx:
    free(ctx);
    return st;
}

void kcu_ctx_destroy(kcu_ctx *ctx)
{
    if (ctx == NULL) {
        return;
    }
    cudaSetDevice(ctx->device);
    cudaStreamSynchronize(ctx->stream);
    cudaFree(ctx->scratch);
    cudaFree(ctx->lt_workspace);
    cublasLtDestroy(ctx->lt);
    cublasDestroy(ctx->blas);
    cudaStreamDestroy(ctx->stream);
    free(ctx);
}

mls_status kcu_ctx_sync(kcu_ctx *ctx, mls_err *err)
{
    KCU_CHECK_CUDA(cudaStreamSynchronize(ctx->stream), err);
    KCU_CHECK_CUDA(cudaGetLastError(), err);
    return MLS_OK;
}

int kcu_ctx_device(const kcu_ctx *ctx)
{
    return ctx->device;
}

int kcu_ctx_sm_count(const kcu_ctx *ctx)
{
    return ctx->sm_count;
}

const char *kcu_ctx_device_name(const kcu_ctx *ctx)
{
    return ctx->name;
}

void *kcu_ctx_stream(kcu_ctx *ctx)
{
    return (void *)ctx->stream;
}

void kcu_ctx_set_gemm_precision(kcu_ctx *ctx, kcu_gemm_precision prec)
{
    ctx->gemm_precision = prec;
}

mls_status kcu_ctx_scratch(kcu_ctx *ctx, size_t bytes, void **ptr_p, mls_err *err)
{
    if (bytes > ctx->scratch_bytes) {
        size_t want = bytes + bytes / 4;
        void *p = NULL;
        KCU_CHECK_CUDA(cudaStreamSynchronize(ctx->stream), err); /* the old one may be in use */
        cudaFree(ctx->scratch);
        ctx->scratch = NULL;
        ctx->scratch_bytes = 0;
        KCU_CHECK_CUDA(cudaMalloc(&p, want), err);
        ctx->scratch = p;
        ctx->scratch_bytes = want;
    }
    *ptr_p = ctx->scratch;
    return MLS_OK;
}

/* ---- memory ----------------------------------------------------------------------- */

mls_status kcu_malloc(size_t bytes, void **ptr_p, mls_err *err)
{
    void *p = NULL;

    KCU_CHECK_ARG(ptr_p != NULL && bytes > 0, err, "kcu_malloc: %zu bytes", bytes);
    KCU_CHECK_CUDA(cudaMalloc(&p, bytes), err);
    *ptr_p = p;
    return MLS_OK;
}

void kcu_free(void *ptr)
{
    if (ptr != NULL) {
        cudaFree(ptr);
    }
}

mls_status kcu_host_alloc(size_t bytes, void **ptr_p, mls_err *err)
{
    void *p = NULL;

    KCU_CHECK_ARG(ptr_p != NULL && bytes > 0, err, "kcu_host_alloc: %zu bytes", bytes);
    KCU_CHECK_CUDA(cudaHostAlloc(&p, bytes, cudaHostAllocPortable), err);
    *ptr_p = p;
    return MLS_OK;
}

void kcu_host_free(void *ptr)
{
    if (ptr != NULL) {
        cudaFreeHost(ptr);
    }
}

static mls_status kcu_memcpy_kind(kcu_ctx *ctx, void *dst, const void *src, size_t bytes,
                                  cudaMemcpyKind kind, bool wait, mls_err *err)
{
    if (bytes == 0) {
        return MLS_OK;
    }
    KCU_CHECK_ARG(dst != NULL && src != NULL, err, "kcu_memcpy: NULL %s",
                  dst == NULL ? "dst" : "src");
    KCU_CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, kind, ctx->stream), err);
    if (wait) {
        KCU_CHECK_CUDA(cudaStreamSynchronize(ctx->stream), err);
    }
    return MLS_OK;
}

mls_status kcu_memcpy_h2d(kcu_ctx *ctx, void *dst, const void *src, size_t bytes, mls_err *err)
{
    return kcu_memcpy_kind(ctx, dst, src, bytes, cudaMemcpyHostToDevice, true, err);
}

mls_status kcu_memcpy_d2h(kcu_ctx *ctx, void *dst, const void *src, size_t bytes, mls_err *err)
{
    return kcu_memcpy_kind(ctx, dst, src, bytes, cudaMemcpyDeviceToHost, true, err);
}

mls_status kcu_memcpy_d2d(kcu_ctx *ctx, void *dst, const void *src, size_t bytes, mls_err *err)
{
    return kcu_memcpy_kind(ctx, dst, src, bytes, cudaMemcpyDeviceToDevice, false, err);
}

mls_status kcu_memset(kcu_ctx *ctx, void *dst, int value, size_t bytes, mls_err *err)
{
    if (bytes == 0) {
        return MLS_OK;
    }
    KCU_CHECK_ARG(dst != NULL, err, "kcu_memset: NULL dst");
    KCU_CHECK_CUDA(cudaMemsetAsync(dst, value, bytes, ctx->stream), err);
    return MLS_OK;
}

/* ---- arena ------------------------------------------------------------------------ */

mls_status kcu_arena_create(size_t bytes, kcu_arena *arena_p, mls_err *err)
{
    void *p = NULL;
    mls_status st;

    KCU_CHECK_ARG(arena_p != NULL, err, "kcu_arena_create: arena_p is NULL");
    st = kcu_malloc(bytes, &p, err);
    if (st != MLS_OK) {
        return st;
    }
    arena_p->base = (uint8_t *)p;
    arena_p->size = bytes;
    arena_p->used = 0;
    return MLS_OK;
}

void kcu_arena_destroy(kcu_arena *arena)
{
    if (arena != NULL) {
        kcu_free(arena->base);
        memset(arena, 0, sizeof(*arena));
    }
}

mls_status kcu_arena_carve(kcu_arena *arena, size_t bytes, size_t align, void **ptr_p,
                           mls_err *err)
{
    size_t off;

    KCU_CHECK_ARG(arena != NULL && arena->base != NULL && ptr_p != NULL, err,
                  "kcu_arena_carve: no arena");
    KCU_CHECK_ARG(align != 0 && (align & (align - 1)) == 0, err,
                  "kcu_arena_carve: align %zu is not a power of two", align);
    off = (arena->used + align - 1) & ~(align - 1);
    if (off > arena->size || bytes > arena->size - off) {
        mls_err_set(err, "kcu_arena_carve: %zu bytes do not fit (%zu of %zu used)", bytes,
                    arena->used, arena->size);
        return MLS_ERR_NO_MEMORY;
    }
    *ptr_p = arena->base + off;
    arena->used = off + bytes;
    return MLS_OK;
}
