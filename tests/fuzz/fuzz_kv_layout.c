/*
 * fuzz_kv_layout.c - libFuzzer harness for the KV layout's wire form
 * (common/mls_kv_layout.h): the bytes a peer sends in the transport HELLO and
 * in every KvLayout message.
 *
 * Input: the wire bytes, as kvl_layout_decode receives them. Properties beyond
 * "no crash, no sanitizer report":
 *   - what decodes encodes back to the same bytes (the form is canonical);
 *   - a decoded layout is a valid peer of itself;
 *   - its row arithmetic stays inside its pages, and a row stored and loaded
 *     through it comes back finite.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mls_kv_layout.h"

/* Rows up to this size are stored and loaded (bigger ones cost time, not paths). */
#define FUZZ_KVL_MAX_ROW_BYTES (64u << 10)

static void fuzz_kvl_rows(const kvl_layout *l)
{
    static uint8_t row[FUZZ_KVL_MAX_ROW_BYTES];
    static float latent[FUZZ_KVL_MAX_ROW_BYTES], rope[FUZZ_KVL_MAX_ROW_BYTES];
    static const uint32_t pages[2] = {1, 0}; /* a two-page table, out of order */
    uint32_t r = l->kv_lora_rank, d = l->rope_dim;

    for (uint64_t t = 0; t < 2u * KVL_PAGE_TOKENS; t += 37) {
        uint64_t off = kvl_row_offset(l, pages, t);
        FUZZ_CHECK(off + l->row_bytes <= 2u * l->page_bytes, "token %llu: row at %llu past %llu",
                   (unsigned long long)t, (unsigned long long)off,
                   (unsigned long long)(2u * l->page_bytes));
        FUZZ_CHECK(off % l->row_bytes == 0, "token %llu: offset %llu not a row boundary",
                   (unsigned long long)t, (unsigned long long)off);
    }
    if (l->row_bytes > FUZZ_KVL_MAX_ROW_BYTES || r + d > FUZZ_KVL_MAX_ROW_BYTES) {
        return;
    }
    for (uint32_t i = 0; i < r; i++) {
        latent[i] = (float)((int)(i * 2654435761u % 2001u) - 1000) / 7.0f;
    }
    for (uint32_t i = 0; i < d; i++) {
        rope[i] = (float)((int)(i * 40503u % 301u) - 150) / 3.0f;
    }
    kvl_row_store(l, row, latent, rope);
    kvl_row_load(l, row, latent, rope);
    for (uint32_t i = 0; i < r; i++) {
        FUZZ_CHECK(isfinite(latent[i]), "latent[%u] = %g after a round trip", i, latent[i]);
    }
    for (uint32_t i = 0; i < d; i++) {
        FUZZ_CHECK(isfinite(rope[i]), "rope[%u] = %g after a round trip", i, rope[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kvl_layout l;
    uint8_t again[KVL_WIRE_BYTES];
    const char *why = NULL;
    mls_err err = {{0}};

    if (kvl_layout_decode(data, size, &l, &err) != MLS_OK) {
        FUZZ_CHECK(err.msg[0] != '\0', "a refusal without a reason");
        return 0;
    }
    FUZZ_CHECK(size == KVL_WIRE_BYTES, "accepted %zu bytes", size);
    kvl_layout_encode(&l, again);
    FUZZ_CHECK(memcmp(again, data, KVL_WIRE_BYTES) == 0, "decode then encode changed the bytes");
    FUZZ_CHECK(kvl_layout_check_peer(&l, &l, &why) == MLS_OK, "not its own peer: %s", why);
    FUZZ_CHECK(l.page_bytes == (uint64_t)l.page_tokens * l.row_bytes, "page_bytes %llu",
               (unsigned long long)l.page_bytes);
    fuzz_kvl_rows(&l);
    return 0;
}
