/*
 * kcu_gemm.cu - y = x W^T and y = x W over bf16 device weights with f32
 * activations: activations are staged as bf16 (hi, or hi + lo halves as 2n
 * extra columns) in the context's scratch, one cuBLASLt matmul with fp32
 * compute runs, and the hi/lo partial results are summed. Row-major data is
 * handed to the column-major BLAS as its transpose (no copies).
 */
#include "kcu_internal.cuh"

/* xs[0:n) = bf16(x) (hi); with split, xs[n:2n) = bf16(x - hi) (lo). */
__global__ void kcu_gemm_stage_kernel(const float *x, int64_t count, int split,
                                      __nv_bfloat16 *xs)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        const __nv_bfloat16 hi = __float2bfloat16_rn(v);
        xs[i] = hi;
        if (split) {
            xs[count + i] = __float2bfloat16_rn(v - __bfloat162float(hi));
        }
    }
}

/* y[i] = y2[i] + y2[count + i] */
__global__ void kcu_gemm_sum_kernel(const float *y2, int64_t count, float *y)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count;
         i += (int64_t)gridDim.x * blockDim.x) {
        y[i] = y2[i] + y2[count + i];
    }
}

/*
 * Column-major D (m x ncol) = op(A) (m x k) . B (k x ncol), A bf16 with
 * leading dimension lda, B bf16 (ld k), D f32 (ld m).
 */
static mls_status kcu_lt_matmul(kcu_ctx *ctx, bool trans_a, int64_t m, int64_t ncol, int64_t k,
                                const void *A, int64_t lda, const void *B, float *D, mls_err *err)
{
    mls_status st = MLS_OK;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    const float alpha = 1.0f, beta = 0.0f;

    KCU_TRY_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), err, st,
                   out_destroy_descs);
    KCU_TRY_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)),
                   err, st, out_destroy_descs);
    KCU_TRY_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)),
                   err, st, out_destroy_descs);
    KCU_TRY_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, trans_a ? (uint64_t)k : (uint64_t)m,
                                              trans_a ? (uint64_t)m : (uint64_t)k, lda),
                   err, st, out_destroy_descs);
    KCU_TRY_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, (uint64_t)k, (uint64_t)ncol, k),
                   err, st, out_destroy_descs);
    KCU_TRY_CUBLAS(cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, (uint64_t)m, (uint64_t)ncol, m),
                   err, st, out_destroy_descs);
    KCU_TRY_CUBLAS(cublasLtMatmulPreferenceCreate(&pref), err, st, out_destroy_descs);
    KCU_TRY_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref,
                                                        CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                        &ctx->lt_workspace_bytes,
                                                        sizeof(ctx->lt_workspace_bytes)),
                   err, st, out_destroy_descs);
    KCU_TRY_CUBLAS(cublasLtMatmulAlgoGetHeuristic(ctx->lt, op, la, lb, ld, ld, pref, 1, &heur,
                                                  &found),
                   err, st, out_destroy_descs);
    if (found > 0) {
        KCU_TRY_CUBLAS(cublasLtMatmul(ctx->lt, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld,
                                      &heur.algo, ctx->lt_workspace, ctx->lt_workspace_bytes,
                                      ctx->stream),
                       err, st, out_destroy_descs);
    } else { /* no Lt algorithm for this shape: the classic entry point */
        KCU_TRY_CUBLAS(cublasGemmEx(ctx->blas, ta, tb, (int)m, (int)ncol, (int)k, &alpha, A,
                                    CUDA_R_16BF, (int)lda, B, CUDA_R_16BF, (int)k, &beta, D,
                                    CUDA_R_32F, (int)m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       err, st, out_destroy_descs);
    }
out_destroy_descs:
    if (pref != NULL) {
        cublasLtMatmulPreferenceDestroy(pref);
    }
    if (ld != NULL) {
        cublasLtMatrixLayoutDestroy(ld);
    }
    if (lb != NULL) {
        cublasLtMatrixLayoutDestroy(lb);
    }
    if (la != NULL) {
        cublasLtMatrixLayoutDestroy(la);
    }
    if (op != NULL) {
        cublasLtMatmulDescDestroy(op);
    }
    return st;
}

/* out_dim x n result of W (rows x cols) against x (n x in_dim). */
static mls_status kcu_gemm_run(kcu_ctx *ctx, const kcu_matrix *w, bool transposed_use,
                               const float *x, int64_t n, float *y, const char *what, mls_err *err)
{
    const int64_t in_dim = transposed_use ? w->rows : w->cols;
    const int64_t out_dim = transposed_use ? w->cols : w->rows;
    const bool split = ctx->gemm_precision == KCU_GEMM_SPLIT;
    const int64_t ncol = split ? 2 * n : n;
    const int threads = 256;
    size_t xs_bytes, y2_bytes;
    void *scratch = NULL;
    mls_status st;

    KCU_CHECK_ARG(w != NULL && w->data != NULL && w->rows > 0 && w->cols > 0, err,
                  "%s: empty weight matrix", what);
    KCU_CHECK_ARG(x != NULL && y != NULL && n > 0, err, "%s: x %p, y %p, n %lld", what,
                  (const void *)x, (void *)y, (long long)n);
    KCU_CHECK_SUPPORTED(w->rows <= INT32_MAX && w->cols <= INT32_MAX && ncol <= INT32_MAX, err,
                        "%s: %lld x %lld (n %lld) exceeds 32-bit BLAS dimensions", what,
                        (long long)w->rows, (long long)w->cols, (long long)n);
    xs_bytes = ((size_t)(ncol * in_dim) * 2 + 255) & ~(size_t)255;
    y2_bytes = split ? (size_t)(ncol * out_dim) * 4 : 0;
    st = kcu_ctx_scratch(ctx, xs_bytes + y2_bytes, &scratch, err);
    if (st != MLS_OK) {
        return st;
    }
    __nv_bfloat16 *xs = (__nv_bfloat16 *)scratch;
    float *d = split ? (float *)((uint8_t *)scratch + xs_bytes) : y;
    kcu_gemm_stage_kernel<<<kcu_blocks(n * in_dim, threads) > 4096 ? 4096 : kcu_blocks(n * in_dim, threads),
                            threads, 0, ctx->stream>>>(x, n * in_dim, split ? 1 : 0, xs);
    KCU_CHECK_LAUNCH("kcu_gemm_stage_kernel", err);
    /* row-major W (rows x cols) is column-major W^T (cols x rows), ld = cols */
    st = kcu_lt_matmul(ctx, !transposed_use, out_dim, ncol, in_dim, w->data, w->cols, xs, d, err);
    if (st != MLS_OK) {
        return st;
    }
    if (split) {
        unsigned b = kcu_blocks(n * out_dim, threads);
        kcu_gemm_sum_kernel<<<b > 4096 ? 4096 : b, threads, 0, ctx->stream>>>(d, n * out_dim, y);
        KCU_CHECK_LAUNCH("kcu_gemm_sum_kernel", err);
    }
    return MLS_OK;
}

extern "C" mls_status kcu_matmul(kcu_ctx *ctx, const kcu_matrix *w, const float *x, int64_t n,
                                 float *y, mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL, err, "kcu_matmul: ctx is NULL");
    return kcu_gemm_run(ctx, w, false, x, n, y, "kcu_matmul", err);
}

extern "C" mls_status kcu_matmul_t(kcu_ctx *ctx, const kcu_matrix *w, const float *x, int64_t n,
                                   float *y, mls_err *err)
{
    KCU_CHECK_ARG(ctx != NULL, err, "kcu_matmul_t: ctx is NULL");
    return kcu_gemm_run(ctx, w, true, x, n, y, "kcu_matmul_t", err);
}
