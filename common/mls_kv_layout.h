/*
 * mls_kv_layout.h - THE latent KV layout contract (versioned).
 *
 * Shared by the engine (writes rows), the kernels (read rows), the transport
 * (moves pages) and both daemons (refuse peers whose layout differs). Defined
 * here once; every other file derives sizes and offsets from a kvl_layout.
 *
 * Per token per layer MLA stores the normalised latent kv_a_layernorm(c_kv)
 * (kv_lora_rank values) and the rotary key k_pe after rotary, interleaved-pair
 * order (rope_dim values). One row per token:
 *
 *   F32   [latent f32 x R][rope f32 x D]                       4R + 4D bytes
 *   BF16  [latent bf16 x R][rope bf16 x D]                     2R + 2D bytes
 *   FP8   [latent e4m3 x R][scale f32 x ceil(R/128)][rope bf16 x D]
 *                                                              R + 4*ceil(R/128) + 2D
 *
 * (DeepSeek-V3, R=512 D=64: 2304 / 1152 / 656 bytes - the FlashMLA fp8 row.)
 * FP8 scales: one fp32 per 128 latent values, scale = amax/448, code =
 * round-nearest-even(x/scale) saturated to +-448; value = e4m3(code) * scale.
 *
 * Pages hold KVL_PAGE_TOKENS rows back to back; page p of a layer's pool
 * starts at pool_base + p * page_bytes. One pool per layer; a sequence's page
 * table is shared by all layers.
 */
#ifndef MLS_KV_LAYOUT_H
#define MLS_KV_LAYOUT_H

#include <assert.h> /* static_assert: C11 and C++ alike */
#include <stdbool.h>
#include <stdint.h>

#include "mls_status.h"

#define KVL_VERSION        1u
#define KVL_PAGE_TOKENS    64u
#define KVL_FP8_TILE       128u   /* latent values per fp8 scale */

#define KVL_DTYPE_LIST(X) \
    X(F32, "f32")         \
    X(BF16, "bf16")       \
    X(FP8, "fp8")

typedef enum {
#define KVL_DTYPE_ENUM_(name, str) KVL_DTYPE_##name,
    KVL_DTYPE_LIST(KVL_DTYPE_ENUM_)
#undef KVL_DTYPE_ENUM_
    KVL_DTYPE_COUNT
} kvl_dtype;

#define KVL_FP8_SCALES(r)          (((r) + KVL_FP8_TILE - 1) / KVL_FP8_TILE)
#define KVL_ROW_BYTES_F32(r, d)    (4u * (r) + 4u * (d))
#define KVL_ROW_BYTES_BF16(r, d)   (2u * (r) + 2u * (d))
#define KVL_ROW_BYTES_FP8(r, d)    ((r) + 4u * KVL_FP8_SCALES(r) + 2u * (d))

static_assert(KVL_ROW_BYTES_FP8(512u, 64u) == 656u, "DeepSeek-V3 fp8 row is 656 bytes");
static_assert(KVL_ROW_BYTES_BF16(512u, 64u) == 1152u, "DeepSeek-V3 bf16 row is 1152 bytes");
static_assert(KVL_PAGE_TOKENS == 64u, "pages are 64 tokens");

typedef struct {
    uint32_t version;           /* KVL_VERSION */
    kvl_dtype dtype;
    uint32_t kv_lora_rank;      /* R: latent values per row */
    uint32_t rope_dim;          /* D: rotary key values per row */
    uint32_t page_tokens;       /* KVL_PAGE_TOKENS */
    uint32_t row_bytes;         /* bytes per token per layer */
    uint32_t rope_offset;       /* byte offset of the rope part in a row */
    uint32_t scale_offset;      /* FP8: byte offset of the scales; else 0 */
    uint64_t page_bytes;        /* page_tokens * row_bytes */
    uint64_t model_fingerprint; /* identifies the weights that produced the KV */
} kvl_layout;

/* Fill *layout_p. R must be a multiple of 4 (keeps fp8 scales aligned), D even. */
mls_status kvl_layout_init(kvl_dtype dtype, uint32_t kv_lora_rank, uint32_t rope_dim,
                           uint64_t model_fingerprint, kvl_layout *layout_p);

/* MLS_OK when a peer's layout can exchange pages with ours; else
 * MLS_ERR_PEER_MISMATCH with *why_p naming the field that differs. */
mls_status kvl_layout_check_peer(const kvl_layout *ours, const kvl_layout *theirs,
                                 const char **why_p);

/* "bf16" / parse "bf16" (MLS_ERR_INVALID_ARG for anything else). */
const char *kvl_dtype_name(kvl_dtype dtype);
mls_status kvl_dtype_parse(const char *name, kvl_dtype *dtype_p);

/* Encode one token's latent[R] and rope[D] (f32) into row (row_bytes). */
void kvl_row_store(const kvl_layout *layout, uint8_t *row, const float *latent, const float *rope);
/* Decode one row back to f32 latent[R] and rope[D]. */
void kvl_row_load(const kvl_layout *layout, const uint8_t *row, float *latent, float *rope);

/* Row of token `slot` within a page. */
static inline uint8_t *kvl_page_row(const kvl_layout *layout, uint8_t *page, uint32_t slot)
{
    return page + (uint64_t)slot * layout->row_bytes;
}

#endif
