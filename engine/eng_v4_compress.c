/*
 * eng_v4_compress.c - DeepSeek-V4's KV compressor (README-v4 sections 3-4):
 * gated pooling of every `ratio` tokens into one entry.
 *
 * Per token: a = wkv x, b = wgate x + ape[pos mod m] (c*d' channels each)
 * go to a row of the partial-block state. When a block completes, each
 * channel is a softmax-weighted sum over the block's rows: HCA (c = 1) the
 * m rows; CSA (m == 4, c = 2, overlapping) channels [0, d') of the previous
 * block's 4 rows and channels [d', 2d') of the current block's, 8 rows in
 * all. The entry is normed (the compressor's RMSNorm), rotated at the block's
 * first position on its last r dims, then quantize-dequantized: the main KV
 * in FP8 (blocks of 64) on its first d'-r dims, the indexer's keys Hadamard-
 * rotated and FP4 (blocks of 32) on all of them.
 */
#include <math.h>
#include <string.h>

#include "eng_v4_forward.h"
#include "eng_v4_ops.h"
#include "mls_alloc.h"

void eng_v4_cmp_state_reset(eng_v4_cmp_state *cs)
{
    int32_t coff = cs->ratio == 4 ? 2 : 1;
    int64_t n = (int64_t)coff * cs->ratio * coff * cs->width;

    for (int64_t i = 0; i < n; i++) {
        cs->kv[i] = 0.0f;
        cs->score[i] = -INFINITY;
    }
}

/* Pool the completed block of cs into entry (d'): softmax per channel over its rows. */
static void v4_cmp_pool(const eng_v4_cmp_state *cs, float *entry)
{
    int32_t m = cs->ratio, w = cs->width;
    bool overlap = m == 4;
    int32_t cw = overlap ? 2 * w : w; /* row width */

    for (int32_t ch = 0; ch < w; ch++) {
        /* rows (row, column): CSA previous block (r, ch) r < 4 then current (4 + r, w + ch) */
        int32_t n_rows = overlap ? 8 : m;
        float mx = -INFINITY, sum = 0.0f, acc = 0.0f;
        for (int32_t r = 0; r < n_rows; r++) {
            int32_t col = (overlap && r >= 4) ? w + ch : ch;
            mx = fmaxf(mx, cs->score[(int64_t)r * cw + col]);
        }
        for (int32_t r = 0; r < n_rows; r++) {
            int32_t col = (overlap && r >= 4) ? w + ch : ch;
            float e = expf(cs->score[(int64_t)r * cw + col] - mx);
            sum += e;
            acc += e * cs->kv[(int64_t)r * cw + col];
        }
        entry[ch] = acc / sum;
    }
}

mls_status eng_v4_compress(eng_v4_ctx *ctx, const eng_v4_compressor *cmp, eng_v4_cmp_kind kind,
                           int32_t layer, eng_v4_cmp_state *cs, const float *x, int32_t T,
                           int32_t pos0, kvl_dtype dtype, uint8_t *entries, int32_t *n_entries_p,
                           mls_err *err)
{
    const eng_config *c = &ctx->model->cfg;
    int32_t m = cs->ratio, w = cs->width, r = c->qk_rope_head_dim;
    int32_t coff = m == 4 ? 2 : 1, cw = coff * w;
    uint32_t row_bytes =
        kind == ENG_V4_CMP_KV ? eng_v4_kv_row_bytes(dtype, w, r) : eng_v4_idx_row_bytes(dtype, w);
    size_t bytes = sizeof(float) * ((size_t)T * (size_t)(2 * cw) + (size_t)w);
    float *a, *b, *entry;
    mls_status st;

    if (T == 0) {
        return MLS_OK;
    }
    if ((a = mls_alloc(MLS_ALLOC_TAG_SCRATCH, bytes)) == NULL) {
        mls_err_set(err, "out of memory for layer %d's compressor", layer);
        return MLS_ERR_NO_MEMORY;
    }
    b = a + (size_t)T * cw;     /* (T, c*d') */
    entry = b + (size_t)T * cw; /* (d') */
    /* a, b (T, c*d'): the compressors take unquantized inputs */
    if ((st = eng_v4_linear(ctx, &cmp->wkv, x, T, a, false, err)) ||
        (st = eng_v4_linear(ctx, &cmp->wgate, x, T, b, false, err))) {
        goto out_free;
    }
    for (int32_t t = 0; t < T; t++) {
        int32_t pos = pos0 + t, in_block = pos % m;
        int32_t row = (m == 4 ? 4 : 0) + in_block;
        const float *ape = cmp->ape + (int64_t)in_block * cw;
        for (int32_t ch = 0; ch < cw; ch++) {
            cs->kv[(int64_t)row * cw + ch] = a[(int64_t)t * cw + ch];
            cs->score[(int64_t)row * cw + ch] = b[(int64_t)t * cw + ch] + ape[ch];
        }
        if ((pos + 1) % m != 0) {
            continue;
        }
        v4_cmp_pool(cs, entry);
        eng_v4_rmsnorm(entry, cmp->norm, 1, w, w, c->rms_norm_eps);
        eng_v4_rope_apply(eng_v4_layer_freqs(ctx, layer), r, pos + 1 - m, false, entry + w - r);
        uint8_t *out = entries + (size_t)(*n_entries_p) * row_bytes;
        if (kind == ENG_V4_CMP_KV) {
            eng_v4_fp8_qdq(entry, w - r, ENG_V4_KV_FP8_BLOCK, entry, NULL);
            eng_v4_kv_row_store(dtype, w, r, entry, out);
        } else {
            eng_v4_hadamard(entry, w);
            eng_v4_fp4_qdq(entry, w, entry, NULL);
            eng_v4_idx_row_store(dtype, w, entry, out);
        }
        (*n_entries_p)++;
        if (m == 4) {
            /* the current block becomes the previous one */
            memcpy(cs->kv, cs->kv + (size_t)4 * cw, sizeof(float) * (size_t)4 * cw);
            memcpy(cs->score, cs->score + (size_t)4 * cw, sizeof(float) * (size_t)4 * cw);
        }
    }

out_free:
    mls_free(MLS_ALLOC_TAG_SCRATCH, a, bytes);
    return st;
}
