/*
 * eng_v4_kvrow.c - DeepSeek-V4's KV rows in their stored forms (see
 * eng_v4_forward.h): f32, or the production FP8 row of FlashMLA's V4 format
 * whose sizes mls_kv_layout.h defines (KVL_ROW_BYTES_V4_ENTRY/_INDEXER).
 *
 *   entry (window row or compressed entry, d = nope + r):
 *     [nope e4m3 x nope][UE8M0 scale per 64, padded to 8 bytes][rope bf16 x r]
 *   indexer key (Id values):
 *     [e2m1 x Id, two per byte, low nibble first][UE8M0 scale per 32]
 *
 * The reference has already rounded what is stored: an entry's nope dims to
 * FP8 in blocks of 64, an indexer key to FP4 in blocks of 32, each with a
 * power-of-two scale. Re-encoding such a block gives back the same values
 * (the largest magnitude is code * 2^e with code in [224, 448], so the scale
 * comes out as 2^e, or 2^(e-1) when every code is at most 224, and every
 * value stays on the grid), so only the rope dims round (to bf16).
 */
#include <math.h>
#include <string.h>

#include "eng_v4_forward.h"
#include "eng_v4_ops.h"
#include "mls_num.h"

uint32_t eng_v4_kv_row_bytes(kvl_dtype dtype, int32_t d, int32_t r)
{
    return dtype == KVL_DTYPE_FP8 ? KVL_ROW_BYTES_V4_ENTRY((uint32_t)(d - r), (uint32_t)r)
                                  : 4u * (uint32_t)d;
}

uint32_t eng_v4_idx_row_bytes(kvl_dtype dtype, int32_t Id)
{
    return dtype == KVL_DTYPE_FP8 ? KVL_ROW_BYTES_V4_INDEXER((uint32_t)Id) : 4u * (uint32_t)Id;
}

void eng_v4_kv_row_store(kvl_dtype dtype, int32_t d, int32_t r, const float *x, uint8_t *row)
{
    int32_t nope = d - r;
    uint8_t *scales = row + nope, *rope = scales + KVL_V4_SCALE_BYTES((uint32_t)nope);

    if (dtype != KVL_DTYPE_FP8) {
        memcpy(row, x, sizeof(float) * (size_t)d);
        return;
    }
    memset(scales, 0, KVL_V4_SCALE_BYTES((uint32_t)nope));
    for (int32_t b = 0; b < nope / ENG_V4_KV_FP8_BLOCK; b++) {
        int32_t e;
        eng_v4_fp8_block_encode(x + b * ENG_V4_KV_FP8_BLOCK, ENG_V4_KV_FP8_BLOCK,
                                row + b * ENG_V4_KV_FP8_BLOCK, &e);
        scales[b] = (uint8_t)(e + ENG_V4_UE8M0_BIAS);
    }
    for (int32_t i = 0; i < r; i++) {
        uint16_t h = mls_f32_to_bf16(x[nope + i]);
        memcpy(rope + 2 * i, &h, sizeof(h));
    }
}

void eng_v4_kv_row_load(kvl_dtype dtype, int32_t d, int32_t r, const uint8_t *row, float *x)
{
    int32_t nope = d - r;
    const uint8_t *scales = row + nope, *rope = scales + KVL_V4_SCALE_BYTES((uint32_t)nope);

    if (dtype != KVL_DTYPE_FP8) {
        memcpy(x, row, sizeof(float) * (size_t)d);
        return;
    }
    for (int32_t i = 0; i < nope; i++) {
        x[i] = ldexpf(eng_v4_e4m3_decode(row[i]),
                      (int)scales[i / ENG_V4_KV_FP8_BLOCK] - ENG_V4_UE8M0_BIAS);
    }
    for (int32_t i = 0; i < r; i++) {
        uint16_t h;
        memcpy(&h, rope + 2 * i, sizeof(h));
        x[nope + i] = mls_bf16_to_f32(h);
    }
}

void eng_v4_idx_row_store(kvl_dtype dtype, int32_t Id, const float *x, uint8_t *row)
{
    uint8_t nib[ENG_V4_FP4_BLOCK], *scales = row + Id / 2;

    if (dtype != KVL_DTYPE_FP8) {
        memcpy(row, x, sizeof(float) * (size_t)Id);
        return;
    }
    for (int32_t b = 0; b < Id / ENG_V4_FP4_BLOCK; b++) {
        int32_t e;
        eng_v4_fp4_block_encode(x + b * ENG_V4_FP4_BLOCK, ENG_V4_FP4_BLOCK, nib, &e);
        for (int32_t i = 0; i < ENG_V4_FP4_BLOCK; i += 2) {
            row[(b * ENG_V4_FP4_BLOCK + i) / 2] = (uint8_t)(nib[i] | (nib[i + 1] << 4));
        }
        scales[b] = (uint8_t)(e + ENG_V4_UE8M0_BIAS);
    }
}

void eng_v4_idx_row_load(kvl_dtype dtype, int32_t Id, const uint8_t *row, float *x)
{
    const uint8_t *scales = row + Id / 2;

    if (dtype != KVL_DTYPE_FP8) {
        memcpy(x, row, sizeof(float) * (size_t)Id);
        return;
    }
    for (int32_t i = 0; i < Id; i++) {
        uint8_t nib = (i & 1) ? (uint8_t)(row[i / 2] >> 4) : (uint8_t)(row[i / 2] & 0xf);
        x[i] =
            ldexpf(eng_v4_e2m1_decode(nib), (int)scales[i / ENG_V4_FP4_BLOCK] - ENG_V4_UE8M0_BIAS);
    }
}
