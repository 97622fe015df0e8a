/*
 * kcu_internal.cuh - what the .cu files of kernels/cuda share: the context
 * struct, the one CHECK macro family (returns a status, never exits), and
 * the CUDA -> mls_status mapping.
 */
#ifndef KCU_INTERNAL_CUH
#define KCU_INTERNAL_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kcu.h"

struct kcu_ctx {
    int device;
    int sm_count;
    int max_smem_optin;              /* bytes of shared memory a block may opt into */
    char name[256];
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *lt_workspace;              /* device, lt_workspace_bytes */
    size_t lt_workspace_bytes;
    void *scratch;                   /* device, grown on demand (activation staging) */
    size_t scratch_bytes;
    kcu_gemm_precision gemm_precision;
};

/* CUDA error -> status group: no driver/device is the node's problem, device
 * OOM too; bad values are the caller's; anything else (launch failure,
 * illegal address, sticky errors) means the context is broken. */
mls_status kcu_status_from_cuda(cudaError_t e);
mls_status kcu_status_from_cublas(cublasStatus_t s);

/* Device scratch of at least `bytes` owned by ctx (grows; the old buffer is
 * freed after the stream drains). */
mls_status kcu_ctx_scratch(kcu_ctx *ctx, size_t bytes, void **ptr_p, mls_err *err);

#define KCU_CHECK_CUDA(call, err)                                                        \
    do {                                                                                 \
        cudaError_t kcu_e_ = (call);                                                     \
        if (kcu_e_ != cudaSuccess) {                                                     \
            mls_err_set((err), "%s:%d: %s: %s (%s)", __FILE__, __LINE__, #call,          \
                        cudaGetErrorString(kcu_e_), cudaGetErrorName(kcu_e_));           \
            return kcu_status_from_cuda(kcu_e_);                                         \
        }                                                                                \
    } while (0)

/* After every <<<>>>: configuration errors now, and any sticky error. */
#define KCU_CHECK_LAUNCH(what, err)                                                      \
    do {                                                                                 \
        cudaError_t kcu_e_ = cudaGetLastError();                                         \
        if (kcu_e_ != cudaSuccess) {                                                     \
            mls_err_set((err), "%s:%d: launch of %s: %s (%s)", __FILE__, __LINE__, (what), \
                        cudaGetErrorString(kcu_e_), cudaGetErrorName(kcu_e_));           \
            return kcu_status_from_cuda(kcu_e_);                                         \
        }                                                                                \
    } while (0)

#define KCU_CHECK_CUBLAS(call, err)                                                      \
    do {                                                                                 \
        cublasStatus_t kcu_s_ = (call);                                                  \
        if (kcu_s_ != CUBLAS_STATUS_SUCCESS) {                                           \
            mls_err_set((err), "%s:%d: %s: %s", __FILE__, __LINE__, #call,               \
                        cublasGetStatusString(kcu_s_));                                  \
            return kcu_status_from_cublas(kcu_s_);                                       \
        }                                                                                \
    } while (0)

/* Validation ladder step: bad caller input. */
#define KCU_CHECK_ARG(cond, err, ...)                                                    \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            mls_err_set((err), __VA_ARGS__);                                             \
            return MLS_ERR_INVALID_ARG;                                                  \
        }                                                                                \
    } while (0)

#define KCU_CHECK_SUPPORTED(cond, err, ...)                                              \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            mls_err_set((err), __VA_ARGS__);                                             \
            return MLS_ERR_UNSUPPORTED;                                                  \
        }                                                                                \
    } while (0)

/* Variants for functions with a cleanup ladder: set st, jump to label. */
#define KCU_TRY_CUDA(call, err, st, label)                                               \
    do {                                                                                 \
        cudaError_t kcu_e_ = (call);                                                     \
        if (kcu_e_ != cudaSuccess) {                                                     \
            mls_err_set((err), "%s:%d: %s: %s (%s)", __FILE__, __LINE__, #call,          \
                        cudaGetErrorString(kcu_e_), cudaGetErrorName(kcu_e_));           \
            (st) = kcu_status_from_cuda(kcu_e_);                                         \
            goto label;                                                                  \
        }                                                                                \
    } while (0)

#define KCU_TRY_CUBLAS(call, err, st, label)                                             \
    do {                                                                                 \
        cublasStatus_t kcu_s_ = (call);                                                  \
        if (kcu_s_ != CUBLAS_STATUS_SUCCESS) {                                           \
            mls_err_set((err), "%s:%d: %s: %s", __FILE__, __LINE__, #call,               \
                        cublasGetStatusString(kcu_s_));                                  \
            (st) = kcu_status_from_cublas(kcu_s_);                                       \
            goto label;                                                                  \
        }                                                                                \
    } while (0)

#define KCU_TRY(expr, st, label)                                                         \
    do {                                                                                 \
        (st) = (expr);                                                                   \
        if ((st) != MLS_OK) {                                                            \
            goto label;                                                                  \
        }                                                                                \
    } while (0)

static inline unsigned kcu_blocks(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : (b > 0x7fffffff ? 0x7fffffff : b));
}

static inline bool kcu_aligned(const void *p, size_t a)
{
    return ((uintptr_t)p & (a - 1)) == 0;
}

#endif
