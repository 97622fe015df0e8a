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
 *
 * Row kinds. A layer may hold more than one kind of row (KVL_KIND_LIST), each
 * with its own row size, count rule (tokens_per_row: one row per token, or one
 * per `ratio` tokens for compressed entries) and placement: PAGED kinds keep a
 * page table per sequence (rows r at page_table[r / 64], slot r % 64); RING
 * kinds keep page_rows rows per sequence in one slot that wraps (row r at
 * slot page_table[0], position r % page_rows). The layout version says which
 * kinds exist: version 1 (DeepSeek-V2/V3) has only KVL_KIND_LATENT, the row
 * above. The DeepSeek-V4 kinds are declared with their size rules for the V4
 * issue (see ../shared/notes/v4-serving.md); no version uses them yet.
 *
 * Row addressing is written once, below (kvl_slot_offset and its callers);
 * C and CUDA device code call the same inline functions.
 *
 * Wire form (kvl_layout_encode / kvl_layout_decode, used by the transport
 * handshake and the protobuf messages alike): KVL_WIRE_BYTES, little-endian,
 *
 *   off size
 *     0    4  magic "KVL1"
 *     4    2  layout version
 *     6    2  bytes of the encoding (KVL_WIRE_BYTES for version 1)
 *     8    8  model fingerprint
 *    16    1  dtype (kvl_dtype)
 *    17    1  kinds that follow (KVL_KIND_COUNT)
 *    18    2  0
 *    20    4  kv_lora_rank
 *    24    4  rope_dim
 *    28    4  page_tokens
 *    32  24k  per kind, in KVL_KIND_LIST order: row_bytes u32,
 *             tokens_per_row u32, page_rows u32, 0 u32, page_bytes u64
 *             (all zero for a kind the version does not have)
 *
 * The decoder rederives every size from (version, dtype, R, D) and refuses an
 * encoding whose sizes differ, so two nodes that decode each other's layout
 * agree on every byte offset.
 */
#ifndef MLS_KV_LAYOUT_H
#define MLS_KV_LAYOUT_H

#include <assert.h> /* static_assert: C11 and C++ alike */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mls_status.h"

#define KVL_VERSION        1u     /* V2/V3: KVL_KIND_LATENT only */
#define KVL_PAGE_TOKENS    64u    /* rows per page of every paged kind */
#define KVL_FP8_TILE       128u   /* latent values per fp8 scale */
#define KVL_MAX_DIM        65536u /* R and D at most (row sizes stay far from 2^32) */
#define KVL_WIRE_MAGIC     0x314c564bu /* "KVL1" little-endian */

/* Device code calls the row arithmetic too. */
#ifdef __CUDACC__
#define KVL_HD static inline __host__ __device__
#else
#define KVL_HD static inline
#endif

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

/* The kinds of row a layer can hold: X(name, string, placement). Only LATENT
 * exists in version 1; the others are DeepSeek-V4's (sizes below). */
#define KVL_KIND_LIST(X)                                                         \
    X(LATENT, "latent", PAGED)       /* V2/V3 MLA [latent|rope], 1 per token */  \
    X(WINDOW, "window", RING)        /* V4 last sliding_window tokens' entries */ \
    X(CSA, "csa", PAGED)             /* V4 CSA compressed entries, 1 per 4 */     \
    X(HCA, "hca", PAGED)             /* V4 HCA compressed entries, 1 per 128 */   \
    X(INDEXER, "indexer", PAGED)     /* V4 CSA indexer keys, 1 per 4 */           \
    X(CSA_STATE, "csa_state", RING)  /* V4 CSA compressor's raw rows in flight */ \
    X(HCA_STATE, "hca_state", RING)  /* V4 HCA compressor's raw rows in flight */

typedef enum {
#define KVL_KIND_ENUM_(name, str, place) KVL_KIND_##name,
    KVL_KIND_LIST(KVL_KIND_ENUM_)
#undef KVL_KIND_ENUM_
    KVL_KIND_COUNT
} kvl_kind;

typedef enum { KVL_PLACE_PAGED, KVL_PLACE_RING } kvl_place;

/* DeepSeek-V4 row sizes (FlashMLA "MODEL1"): an entry is `nope` e4m3 values
 * in tiles of 64 with one UE8M0 scale byte each (scale bytes padded to 8),
 * then `rope` bf16; an indexer key is `dim` FP4 values with one UE8M0 scale
 * per 32. Compressor state rows are f32 (CSA: main + indexer, HCA: main). */
#define KVL_V4_SCALE_BYTES(nope)      ((((nope) + 63u) / 64u + 7u) / 8u * 8u)
#define KVL_ROW_BYTES_V4_ENTRY(n, d)  ((n) + KVL_V4_SCALE_BYTES(n) + 2u * (d))
#define KVL_ROW_BYTES_V4_INDEXER(dim) ((dim) / 2u + (dim) / 32u)
#define KVL_ROW_BYTES_V4_STATE(d)     (4u * (d))

static_assert(KVL_ROW_BYTES_V4_ENTRY(448u, 64u) == 584u, "V4 entry is 584 bytes");
static_assert(KVL_ROW_BYTES_V4_INDEXER(128u) == 68u, "V4 indexer key is 68 bytes");
static_assert(KVL_KIND_COUNT <= 32, "kinds fit a 32-bit mask and the wire's u8 count");

/* One kind of row in a layer. Shapes: a paged kind's pool is [pages][page_rows
 * rows][row_bytes]; a ring kind's is [ring slots][page_rows rows][row_bytes]. */
typedef struct {
    uint32_t row_bytes;      /* bytes of one row; 0 = the kind is absent */
    uint32_t tokens_per_row; /* tokens one row stands for: 1, or the ratio (4, 128) */
    uint32_t page_rows;      /* rows per page: KVL_PAGE_TOKENS, or a ring's length */
    uint32_t reserved;       /* 0 */
    uint64_t page_bytes;     /* page_rows * row_bytes */
} kvl_kind_layout;

/* The fields before `kinds` describe KVL_KIND_LATENT, the one kind V2/V3 use,
 * and equal kinds[KVL_KIND_LATENT] wherever they overlap (kvl_layout_init and
 * kvl_layout_decode are the only writers). */
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
    kvl_kind_layout kinds[KVL_KIND_COUNT]; /* row_bytes 0: kind absent */
} kvl_layout;

/* The wire form (see the top of this file). */
#define KVL_WIRE_HEADER_BYTES 32u
#define KVL_WIRE_KIND_BYTES   24u
#define KVL_WIRE_BYTES        (KVL_WIRE_HEADER_BYTES + KVL_WIRE_KIND_BYTES * KVL_KIND_COUNT)
static_assert(KVL_WIRE_BYTES == 200u, "the version 1 wire form is 200 bytes");
static_assert(KVL_WIRE_BYTES % 8u == 0, "the wire form keeps what follows it 8-byte aligned");

/* Fill *layout_p. R must be a multiple of 4 (keeps fp8 scales aligned), D even;
 * both at most KVL_MAX_DIM. */
mls_status kvl_layout_init(kvl_dtype dtype, uint32_t kv_lora_rank, uint32_t rope_dim,
                           uint64_t model_fingerprint, kvl_layout *layout_p);

/* MLS_OK when a peer's layout can exchange pages with ours; else
 * MLS_ERR_PEER_MISMATCH with *why_p naming the field that differs. */
mls_status kvl_layout_check_peer(const kvl_layout *ours, const kvl_layout *theirs,
                                 const char **why_p);

/* Write the layout's wire form: exactly KVL_WIRE_BYTES bytes to wire. */
void kvl_layout_encode(const kvl_layout *layout, uint8_t *wire);

/* Parse a peer's wire form of len bytes. Never reads past len; refuses
 * (MLS_ERR_PEER_MISMATCH, err says which field) a wrong length, magic or
 * version, an unknown dtype, nonzero reserved bytes, a kind the version does
 * not have, or sizes that differ from what this build derives from
 * (version, dtype, R, D). *layout_p is written only on success. */
mls_status kvl_layout_decode(const uint8_t *wire, size_t len, kvl_layout *layout_p, mls_err *err);

/* "bf16" / parse "bf16" (MLS_ERR_INVALID_ARG for anything else). */
const char *kvl_dtype_name(kvl_dtype dtype);
mls_status kvl_dtype_parse(const char *name, kvl_dtype *dtype_p);
/* "latent", "window", ... ("unknown" out of range). */
const char *kvl_kind_name(kvl_kind kind);

/* Encode one token's latent[R] and rope[D] (f32) into row (row_bytes). */
void kvl_row_store(const kvl_layout *layout, uint8_t *row, const float *latent, const float *rope);
/* Decode one row back to f32 latent[R] and rope[D]. */
void kvl_row_load(const kvl_layout *layout, const uint8_t *row, float *latent, float *rope);

/* ---- row addressing: the one place the arithmetic lives ----------------- */

KVL_HD bool kvl_kind_is_ring(kvl_kind kind)
{
    switch (kind) {
#define KVL_KIND_RING_(name, str, place) \
    case KVL_KIND_##name:                \
        return KVL_PLACE_##place == KVL_PLACE_RING;
        KVL_KIND_LIST(KVL_KIND_RING_)
#undef KVL_KIND_RING_
    default:
        return false;
    }
}

/* Byte offset of row `slot` of page `page` in a pool of pages of page_bytes
 * holding rows of row_bytes. Everything below, and every caller that has
 * only the fields (CUDA argument structs), goes through this. */
KVL_HD uint64_t kvl_slot_offset(uint64_t page_bytes, uint32_t row_bytes, uint32_t page,
                                uint32_t slot)
{
    return (uint64_t)page * page_bytes + (uint64_t)slot * row_bytes;
}

/* Row `row` of a paged kind: page page_table[row / KVL_PAGE_TOKENS], slot
 * row % KVL_PAGE_TOKENS. */
KVL_HD uint64_t kvl_paged_row_offset(uint64_t page_bytes, uint32_t row_bytes,
                                     const uint32_t *page_table, uint64_t row)
{
    return kvl_slot_offset(page_bytes, row_bytes, page_table[row / KVL_PAGE_TOKENS],
                           (uint32_t)(row % KVL_PAGE_TOKENS));
}

/* Byte offset, from the start of a layer's pool of `kind`, of row `row`
 * (token / tokens_per_row) of a sequence whose pages of that kind are
 * page_table (a ring kind: page_table[0] is the sequence's ring slot). */
KVL_HD uint64_t kvl_kind_row_offset(const kvl_layout *l, kvl_kind kind,
                                    const uint32_t *page_table, uint64_t row)
{
    const kvl_kind_layout *k = &l->kinds[kind];
    if (kvl_kind_is_ring(kind)) {
        return kvl_slot_offset(k->page_bytes, k->row_bytes, page_table[0],
                               (uint32_t)(row % k->page_rows));
    }
    return kvl_paged_row_offset(k->page_bytes, k->row_bytes, page_table, row);
}

/* Byte offset of token's latent row from the start of a layer's pool. */
KVL_HD uint64_t kvl_row_offset(const kvl_layout *l, const uint32_t *page_table, uint64_t token)
{
    return kvl_kind_row_offset(l, KVL_KIND_LATENT, page_table, token);
}

/* token's latent row in the layer pool at layer_base. */
KVL_HD uint8_t *kvl_row_ptr(const kvl_layout *l, uint8_t *layer_base, const uint32_t *page_table,
                            uint64_t token)
{
    return layer_base + kvl_row_offset(l, page_table, token);
}

KVL_HD const uint8_t *kvl_row_cptr(const kvl_layout *l, const uint8_t *layer_base,
                                   const uint32_t *page_table, uint64_t token)
{
    return layer_base + kvl_row_offset(l, page_table, token);
}

/* Byte offset of latent page `page` from the start of a layer's pool. */
KVL_HD uint64_t kvl_page_offset(const kvl_layout *l, uint32_t page)
{
    const kvl_kind_layout *k = &l->kinds[KVL_KIND_LATENT];
    return kvl_slot_offset(k->page_bytes, k->row_bytes, page, 0);
}

/* Row of token `slot` within a latent page. */
KVL_HD uint8_t *kvl_page_row(const kvl_layout *l, uint8_t *page, uint32_t slot)
{
    const kvl_kind_layout *k = &l->kinds[KVL_KIND_LATENT];
    return page + kvl_slot_offset(k->page_bytes, k->row_bytes, 0, slot);
}

/* Rows of `kind` a sequence of n_tokens holds: one per tokens_per_row
 * complete tokens, at most page_rows for a ring. */
KVL_HD uint64_t kvl_kind_rows(const kvl_layout *l, kvl_kind kind, uint64_t n_tokens)
{
    const kvl_kind_layout *k = &l->kinds[kind];
    uint64_t rows = n_tokens / k->tokens_per_row;
    if (kvl_kind_is_ring(kind) && rows > k->page_rows) {
        rows = k->page_rows;
    }
    return rows;
}

/* Pages of a paged kind a sequence of n_tokens needs. */
KVL_HD uint64_t kvl_kind_pages(const kvl_layout *l, kvl_kind kind, uint64_t n_tokens)
{
    return (kvl_kind_rows(l, kind, n_tokens) + KVL_PAGE_TOKENS - 1) / KVL_PAGE_TOKENS;
}

#endif
