/* mls_kv_layout.c - the KV contract: layout derivation, row encode/decode,
 * the layout's wire form and peer checks. */
#include "mls_kv_layout.h"

#include <inttypes.h>
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

static const char *const kvl_kind_names[] = {
#define KVL_KIND_NAME_(name, str, place) str,
    KVL_KIND_LIST(KVL_KIND_NAME_)
#undef KVL_KIND_NAME_
};
_Static_assert(sizeof(kvl_kind_names) / sizeof(kvl_kind_names[0]) == KVL_KIND_COUNT,
               "kv kind names out of sync");

const char *kvl_kind_name(kvl_kind kind)
{
    return ((unsigned)kind < KVL_KIND_COUNT) ? kvl_kind_names[kind] : "unknown";
}

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
        kv_lora_rank > KVL_MAX_DIM || rope_dim % 2 != 0 || rope_dim > KVL_MAX_DIM) {
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
    l.kinds[KVL_KIND_LATENT].row_bytes = l.row_bytes;
    l.kinds[KVL_KIND_LATENT].tokens_per_row = 1;
    l.kinds[KVL_KIND_LATENT].page_rows = l.page_tokens;
    l.kinds[KVL_KIND_LATENT].page_bytes = l.page_bytes;
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
    } else if (memcmp(ours->kinds, theirs->kinds, sizeof(ours->kinds)) != 0) {
        why = "row kinds";
    }
    if (why_p != NULL) {
        *why_p = why;
    }
    return why ? MLS_ERR_PEER_MISMATCH : MLS_OK;
}

/* ---- wire form ------------------------------------------------------------ */

static void kvl_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void kvl_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static void kvl_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

static uint16_t kvl_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t kvl_get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

static uint64_t kvl_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

void kvl_layout_encode(const kvl_layout *layout, uint8_t *wire)
{
    memset(wire, 0, KVL_WIRE_BYTES);
    kvl_put32(wire + 0, KVL_WIRE_MAGIC);
    kvl_put16(wire + 4, (uint16_t)layout->version);
    kvl_put16(wire + 6, (uint16_t)KVL_WIRE_BYTES);
    kvl_put64(wire + 8, layout->model_fingerprint);
    wire[16] = (uint8_t)layout->dtype;
    wire[17] = (uint8_t)KVL_KIND_COUNT;
    kvl_put32(wire + 20, layout->kv_lora_rank);
    kvl_put32(wire + 24, layout->rope_dim);
    kvl_put32(wire + 28, layout->page_tokens);
    for (int k = 0; k < KVL_KIND_COUNT; k++) {
        const kvl_kind_layout *kl = &layout->kinds[k];
        uint8_t *e = wire + KVL_WIRE_HEADER_BYTES + KVL_WIRE_KIND_BYTES * (unsigned)k;
        kvl_put32(e + 0, kl->row_bytes);
        kvl_put32(e + 4, kl->tokens_per_row);
        kvl_put32(e + 8, kl->page_rows);
        kvl_put32(e + 12, kl->reserved);
        kvl_put64(e + 16, kl->page_bytes);
    }
}

/* One kind's entry against what this build derives; names the first field
 * that differs. */
static mls_status kvl_kind_decode(const uint8_t *e, kvl_kind kind, const kvl_layout *derived,
                                  mls_err *err)
{
    const kvl_kind_layout *want = &derived->kinds[kind];
    const struct {
        const char *name;
        uint64_t got, want;
    } f[] = {
        {"row_bytes", kvl_get32(e + 0), want->row_bytes},
        {"tokens_per_row", kvl_get32(e + 4), want->tokens_per_row},
        {"page_rows", kvl_get32(e + 8), want->page_rows},
        {"reserved", kvl_get32(e + 12), want->reserved},
        {"page_bytes", kvl_get64(e + 16), want->page_bytes},
    };

    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (f[i].got == f[i].want) {
            continue;
        }
        if (want->row_bytes == 0) {
            mls_err_set(err, "kv layout: kind %s has %s %" PRIu64 ", layout version %u has none",
                        kvl_kind_name(kind), f[i].name, f[i].got, derived->version);
        } else {
            mls_err_set(err,
                        "kv layout: kind %s %s %" PRIu64 ", this build derives %" PRIu64
                        " (%s R=%u D=%u)",
                        kvl_kind_name(kind), f[i].name, f[i].got, f[i].want,
                        kvl_dtype_name(derived->dtype), derived->kv_lora_rank, derived->rope_dim);
        }
        return MLS_ERR_PEER_MISMATCH;
    }
    return MLS_OK;
}

mls_status kvl_layout_decode(const uint8_t *wire, size_t len, kvl_layout *layout_p, mls_err *err)
{
    kvl_layout l;
    uint32_t magic, version, wire_bytes, dtype, n_kinds, page_tokens;
    mls_status st;

    if (wire == NULL || len < KVL_WIRE_HEADER_BYTES) {
        mls_err_set(err, "kv layout: %zu bytes, shorter than its %u-byte header", len,
                    KVL_WIRE_HEADER_BYTES);
        return MLS_ERR_PARSE;
    }
    magic = kvl_get32(wire + 0);
    version = kvl_get16(wire + 4);
    wire_bytes = kvl_get16(wire + 6);
    if (magic != KVL_WIRE_MAGIC) {
        mls_err_set(err, "kv layout: magic 0x%08x, want 0x%08x (\"KVL1\")", magic,
                    KVL_WIRE_MAGIC);
        return MLS_ERR_PARSE;
    }
    if (version != KVL_VERSION) {
        mls_err_set(err, "kv layout: version %u, this build speaks %u", version, KVL_VERSION);
        return MLS_ERR_PEER_MISMATCH;
    }
    if (wire_bytes != KVL_WIRE_BYTES || len != KVL_WIRE_BYTES) {
        mls_err_set(err, "kv layout: %zu bytes (header says %u), version %u is %u bytes", len,
                    wire_bytes, version, KVL_WIRE_BYTES);
        return MLS_ERR_PARSE;
    }
    dtype = wire[16];
    n_kinds = wire[17];
    if (dtype >= KVL_DTYPE_COUNT) {
        mls_err_set(err, "kv layout: unknown dtype %u", dtype);
        return MLS_ERR_PEER_MISMATCH;
    }
    if (n_kinds != KVL_KIND_COUNT || kvl_get16(wire + 18) != 0) {
        mls_err_set(err, "kv layout: %u row kinds, reserved 0x%04x; version %u has %u and 0",
                    n_kinds, kvl_get16(wire + 18), version, (unsigned)KVL_KIND_COUNT);
        return MLS_ERR_PARSE;
    }
    if (kvl_layout_init((kvl_dtype)dtype, kvl_get32(wire + 20), kvl_get32(wire + 24),
                        kvl_get64(wire + 8), &l) != MLS_OK) {
        mls_err_set(err, "kv layout: kv_lora_rank %u / rope_dim %u do not form a row",
                    kvl_get32(wire + 20), kvl_get32(wire + 24));
        return MLS_ERR_PEER_MISMATCH;
    }
    page_tokens = kvl_get32(wire + 28);
    if (page_tokens != l.page_tokens) {
        mls_err_set(err, "kv layout: page_tokens %u, this build derives %u", page_tokens,
                    l.page_tokens);
        return MLS_ERR_PEER_MISMATCH;
    }
    for (int k = 0; k < KVL_KIND_COUNT; k++) {
        st = kvl_kind_decode(wire + KVL_WIRE_HEADER_BYTES + KVL_WIRE_KIND_BYTES * (unsigned)k,
                             (kvl_kind)k, &l, err);
        if (st != MLS_OK) {
            return st;
        }
    }
    *layout_p = l;
    return MLS_OK;
}

/* ---- rows --------------------------------------------------------------- */

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
