/* mls_kv_layout.c - row encode/decode and peer checks for the KV contract. */
#include "mls_kv_layout.h"

#include <math.h>
#include <string.h>

#include "mls_num.h"

static const char *const kvl_dtype_names[] = {
#define KVL_DTYPE_NAME_(name, str) str,
    KVL_DTYPE_LIST(KVL_DTYPE_NAME_)
#undef KVL_DTYPE_NAME_
};
_Static_assert(sizeof(kvl_dtype_names) / sizeof(kvl_dtype_names[0]) == KVL_DTYPE_COUNT,
               "kv dtype names out of sync");

const char *kvl_dtype_name(kvl_dtype dtype)
{
    return ((unsigned)dtype < KVL_DTYPE_COUNT) ? kvl_dtype_names[dtype] : "unknown";
}

mls_status kvl_dtype_parse(const char *name, kvl_dtype *dtype_p)
{
    for (int i = 0; i < KVL_DTYPE_COUNT; i++) {
        if (strcmp(name, kvl_dtype_names[i]) == 0) {
            *dtype_p = (kvl_dtype)i;
            return MLS_OK;
        }
    }
    return MLS_ERR_INVALID_ARG;
}

mls_status kvl_layout_init(kvl_dtype dtype, uint32_t kv_lora_rank, uint32_t rope_dim,
                           uint64_t model_fingerprint, kvl_layout *layout_p)
{
    kvl_layout l;

    if ((unsigned)dtype >= KVL_DTYPE_COUNT || kv_lora_rank == 0 || kv_lora_rank % 4 != 0 ||
        rope_dim % 2 != 0) {
        return MLS_ERR_INVALID_ARG;
    }
    memset(&l, 0, sizeof(l));
    l.version = KVL_VERSION;
    l.dtype = dtype;
    l.kv_lora_rank = kv_lora_rank;
    l.rope_dim = rope_dim;
    l.page_tokens = KVL_PAGE_TOKENS;
    switch (dtype) {
    case KVL_DTYPE_F32:
        l.row_bytes = KVL_ROW_BYTES_F32(kv_lora_rank, rope_dim);
        l.rope_offset = 4u * kv_lora_rank;
        break;
    case KVL_DTYPE_BF16:
        l.row_bytes = KVL_ROW_BYTES_BF16(kv_lora_rank, rope_dim);
        l.rope_offset = 2u * kv_lora_rank;
        break;
    case KVL_DTYPE_FP8:
        l.row_bytes = KVL_ROW_BYTES_FP8(kv_lora_rank, rope_dim);
        l.scale_offset = kv_lora_rank;
        l.rope_offset = kv_lora_rank + 4u * KVL_FP8_SCALES(kv_lora_rank);
        break;
    default:
        return MLS_ERR_INVALID_ARG;
    }
    l.page_bytes = (uint64_t)l.page_tokens * l.row_bytes;
    l.model_fingerprint = model_fingerprint;
    *layout_p = l;
    return MLS_OK;
}

mls_status kvl_layout_check_peer(const kvl_layout *ours, const kvl_layout *theirs,
                                 const char **why_p)
{
    const char *why = NULL;

    if (ours->version != theirs->version) {
        why = "layout version";
    } else if (ours->model_fingerprint != theirs->model_fingerprint) {
        why = "model fingerprint";
    } else if (ours->dtype != theirs->dtype) {
        why = "kv dtype";
    } else if (ours->page_tokens != theirs->page_tokens) {
        why = "page size";
    } else if (ours->kv_lora_rank != theirs->kv_lora_rank || ours->rope_dim != theirs->rope_dim ||
               ours->row_bytes != theirs->row_bytes) {
        why = "row shape";
    }
    if (why_p != NULL) {
        *why_p = why;
    }
    return why ? MLS_ERR_PEER_MISMATCH : MLS_OK;
}

void kvl_row_store(const kvl_layout *layout, uint8_t *row, const float *latent, const float *rope)
{
    uint32_t r = layout->kv_lora_rank, d = layout->rope_dim;

    switch (layout->dtype) {
    case KVL_DTYPE_F32:
        memcpy(row, latent, 4u * r);
        memcpy(row + layout->rope_offset, rope, 4u * d);
        break;
    case KVL_DTYPE_BF16:
        for (uint32_t i = 0; i < r; i++) {
            uint16_t h = mls_f32_to_bf16(latent[i]);
            memcpy(row + 2u * i, &h, 2);
        }
        for (uint32_t i = 0; i < d; i++) {
            uint16_t h = mls_f32_to_bf16(rope[i]);
            memcpy(row + layout->rope_offset + 2u * i, &h, 2);
        }
        break;
    case KVL_DTYPE_FP8:
        for (uint32_t t = 0; t < KVL_FP8_SCALES(r); t++) {
            uint32_t lo = t * KVL_FP8_TILE, hi = lo + KVL_FP8_TILE < r ? lo + KVL_FP8_TILE : r;
            float amax = 0.0f, scale, inv;
            for (uint32_t i = lo; i < hi; i++) {
                amax = fmaxf(amax, fabsf(latent[i]));
            }
            scale = amax > 0.0f ? amax / MLS_FP8_E4M3_MAX : 1.0f;
            inv = 1.0f / scale;
            for (uint32_t i = lo; i < hi; i++) {
                row[i] = mls_f32_to_fp8_e4m3(latent[i] * inv);
            }
            memcpy(row + layout->scale_offset + 4u * t, &scale, 4);
        }
        for (uint32_t i = 0; i < d; i++) {
            uint16_t h = mls_f32_to_bf16(rope[i]);
            memcpy(row + layout->rope_offset + 2u * i, &h, 2);
        }
        break;
    default:
        break;
    }
}

void kvl_row_load(const kvl_layout *layout, const uint8_t *row, float *latent, float *rope)
{
    uint32_t r = layout->kv_lora_rank, d = layout->rope_dim;
    uint16_t h;

    switch (layout->dtype) {
    case KVL_DTYPE_F32:
        memcpy(latent, row, 4u * r);
        memcpy(rope, row + layout->rope_offset, 4u * d);
        break;
    case KVL_DTYPE_BF16:
        for (uint32_t i = 0; i < r; i++) {
            memcpy(&h, row + 2u * i, 2);
            latent[i] = mls_bf16_to_f32(h);
        }
        for (uint32_t i = 0; i < d; i++) {
            memcpy(&h, row + layout->rope_offset + 2u * i, 2);
            rope[i] = mls_bf16_to_f32(h);
        }
        break;
    case KVL_DTYPE_FP8: {
        const float *tab = mls_fp8_e4m3_table();
        for (uint32_t t = 0; t < KVL_FP8_SCALES(r); t++) {
            uint32_t lo = t * KVL_FP8_TILE, hi = lo + KVL_FP8_TILE < r ? lo + KVL_FP8_TILE : r;
            float scale;
            memcpy(&scale, row + layout->scale_offset + 4u * t, 4);
            for (uint32_t i = lo; i < hi; i++) {
                latent[i] = tab[row[i]] * scale;
            }
        }
        for (uint32_t i = 0; i < d; i++) {
            memcpy(&h, row + layout->rope_offset + 2u * i, 2);
            rope[i] = mls_bf16_to_f32(h);
        }
        break;
    }
    default:
        break;
    }
}
