/*
 * eng_v4_linear.c - the small pieces every part of DeepSeek-V4's forward pass
 * uses (see eng_v4_forward.h): a GEMM through the backend table with the FP8
 * model's input quantization, RMSNorm, and the layer's rotary table.
 */
#include <math.h>
#include <string.h>

#include "eng_v4_forward.h"
#include "eng_v4_ops.h"
#include "mls_alloc.h"

bool eng_v4_weight_quantizes_input(const eng_v4_weight *w)
{
    return w->fmt == ENG_V4_WFMT_FP8 || w->fmt == ENG_V4_WFMT_FP4;
}

mls_status eng_v4_linear(eng_v4_ctx *ctx, const eng_v4_weight *w, const float *x, int64_t n,
                         float *y, bool act_quant, mls_err *err)
{
    size_t qbytes = 0;
    float *xq = NULL;
    mls_status st;

    if (n == 0) {
        return MLS_OK;
    }
    if (act_quant) {
        if (w->cols % ENG_V4_ACT_FP8_BLOCK != 0) {
            mls_err_set(err, "an FP8 GEMM input of %lld values is not a multiple of %d",
                        (long long)w->cols, ENG_V4_ACT_FP8_BLOCK);
            return MLS_ERR_BAD_MODEL;
        }
        qbytes = sizeof(float) * (size_t)(n * w->cols);
        if ((xq = mls_alloc(MLS_ALLOC_TAG_SCRATCH, qbytes)) == NULL) {
            mls_err_set(err, "out of memory for a quantized GEMM input");
            return MLS_ERR_NO_MEMORY;
        }
        for (int64_t i = 0; i < n; i++) {
            eng_v4_fp8_qdq(x + i * w->cols, (int32_t)w->cols, ENG_V4_ACT_FP8_BLOCK,
                           xq + i * w->cols, NULL);
        }
        x = xq;
    }
    eng_tensor xt = eng_tensor_2d(ENG_LOC_HOST, ENG_DTYPE_F32, (void *)x, n, w->cols);
    eng_tensor yt = eng_tensor_2d(ENG_LOC_HOST, ENG_DTYPE_F32, y, n, w->rows);
    st = ctx->ops->matmul(ctx->bctx, &w->lin, &xt, &yt, err);
    mls_free(MLS_ALLOC_TAG_SCRATCH, xq, qbytes);
    return st;
}

void eng_v4_rmsnorm(float *x, const float *w, int64_t n, int32_t dim, int64_t stride, float eps)
{
    for (int64_t i = 0; i < n; i++) {
        float *row = x + i * stride, ss = 0.0f;
        for (int32_t c = 0; c < dim; c++) {
            ss += row[c] * row[c];
        }
        float inv = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int32_t c = 0; c < dim; c++) {
            row[c] = w != NULL ? row[c] * inv * w[c] : row[c] * inv;
        }
    }
}

const float *eng_v4_layer_freqs(const eng_v4_ctx *ctx, int32_t layer)
{
    return ctx->model->layers[layer].ratio > 0 ? ctx->freqs_cmp : ctx->freqs_swa;
}
