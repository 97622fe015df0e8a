/* test_common.c - status table, counted allocation, narrow-float conversions,
 * the KV layout's row addressing and wire form. */
#include "mls_alloc.h"
#include "mls_kv_layout.h"
#include "mls_num.h"
#include "mls_status.h"
#include "mls_test.h"

static void test_status_names(void)
{
    CHECK_STR_EQ(mls_status_name(MLS_OK), "OK");
    CHECK_STR_EQ(mls_status_name(MLS_ERR_CHECKSUM), "ERR_CHECKSUM");
    CHECK_STR_EQ(mls_status_name((mls_status)999), "UNKNOWN");
    CHECK_EQ_INT(mls_status_group_of(MLS_ERR_PARSE), MLS_STATUS_GROUP_REQUEST);
    CHECK_EQ_INT(mls_status_group_of(MLS_ERR_PEER_DEAD), MLS_STATUS_GROUP_PEER);
    CHECK_EQ_INT(mls_status_group_of(MLS_ERR_NO_MEMORY), MLS_STATUS_GROUP_NODE);
    CHECK_EQ_INT(mls_status_group_of(MLS_ERR_INTERNAL), MLS_STATUS_GROUP_FATAL);
}

static void test_alloc_counts(void)
{
    int64_t before = mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH);
    char *p = mls_alloc(MLS_ALLOC_TAG_SCRATCH, 1000);
    CHECK(p != NULL);
    CHECK_EQ_INT((uintptr_t)p % 64, 0);
    CHECK_EQ_INT(p[999], 0);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH) - before, 1000);
    mls_free(MLS_ALLOC_TAG_SCRATCH, p, 1000);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH), before);
    CHECK(mls_alloc(MLS_ALLOC_TAG_SCRATCH, 0) == NULL);
}

static void test_fp8_roundtrip(void)
{
    /* every finite code decodes and re-encodes to itself (-0 included) */
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) {
            continue;
        }
        float f = mls_fp8_e4m3_to_f32((uint8_t)c);
        CHECK_MSG(mls_f32_to_fp8_e4m3(f) == c, "code 0x%02x -> %g -> 0x%02x", c, f,
                  mls_f32_to_fp8_e4m3(f));
    }
    CHECK(mls_fp8_e4m3_to_f32(0x7e) == 448.0f);
    CHECK(mls_fp8_e4m3_to_f32(0x01) == ldexpf(1.0f, -9));
    CHECK(mls_f32_to_fp8_e4m3(1000.0f) == 0x7e);
    CHECK(mls_f32_to_fp8_e4m3(-1000.0f) == 0xfe);
    /* ties go to even: 1.0625 lies between 1.0 (0x38) and 1.125 (0x39) */
    CHECK_EQ_INT(mls_f32_to_fp8_e4m3(1.0625f), 0x38);
    CHECK_EQ_INT(mls_f32_to_fp8_e4m3(1.1875f), 0x3a);
}

static void test_bf16_f16(void)
{
    CHECK(mls_bf16_to_f32(mls_f32_to_bf16(1.0f)) == 1.0f);
    CHECK_EQ_INT(mls_f32_to_bf16(1.00390625f), 0x3f80); /* tie -> even */
    CHECK_EQ_INT(mls_f32_to_bf16(1.01171875f), 0x3f82);
    for (uint32_t h = 0; h < 0x7c00; h++) {
        float f = mls_f16_to_f32((uint16_t)h);
        CHECK_MSG(mls_f32_to_f16(f) == h, "f16 0x%04x -> %g -> 0x%04x", h, f, mls_f32_to_f16(f));
    }
}

/* ---- KV layout ------------------------------------------------------------ */

/* A page table that is not the identity: page i of the sequence is pool page
 * (7i + 3) mod n. */
static void kvl_test_table(uint32_t *table, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        table[i] = (7u * i + 3u) % n;
    }
}

static void test_kv_row_offset(void)
{
    uint32_t table[37];
    kvl_test_table(table, 37);
    for (int d = 0; d < KVL_DTYPE_COUNT; d++) {
        kvl_layout l;
        CHECK_OK(kvl_layout_init((kvl_dtype)d, 512, 64, 1, &l));
        const kvl_kind_layout *k = &l.kinds[KVL_KIND_LATENT];
        CHECK_EQ_INT(k->row_bytes, l.row_bytes);
        CHECK_EQ_INT(k->page_bytes, l.page_bytes);
        CHECK_EQ_INT(k->page_rows, l.page_tokens);
        CHECK_EQ_INT(k->tokens_per_row, 1);
        for (int kind = 0; kind < KVL_KIND_COUNT; kind++) {
            CHECK_MSG(kind == KVL_KIND_LATENT || l.kinds[kind].row_bytes == 0,
                      "version 1 has kind %s", kvl_kind_name((kvl_kind)kind));
        }
        /* the formula every caller wrote out before the codec */
        for (uint64_t t = 0; t < 37u * KVL_PAGE_TOKENS; t++) {
            uint64_t old = (uint64_t)table[t / 64] * l.page_bytes + (t % 64) * l.row_bytes;
            CHECK_MSG(kvl_row_offset(&l, table, t) == old, "%s token %llu: %llu != %llu",
                      kvl_dtype_name(l.dtype), (unsigned long long)t,
                      (unsigned long long)kvl_row_offset(&l, table, t), (unsigned long long)old);
        }
        uint8_t base[16];
        CHECK(kvl_row_ptr(&l, base, table, 65) == base + kvl_row_offset(&l, table, 65));
        CHECK(kvl_row_cptr(&l, base, table, 65) == base + kvl_row_offset(&l, table, 65));
        CHECK_EQ_INT(kvl_page_offset(&l, 5), 5 * l.page_bytes);
        CHECK(kvl_page_row(&l, base, 3) == base + 3 * l.row_bytes);
        CHECK_EQ_INT(kvl_kind_pages(&l, KVL_KIND_LATENT, 0), 0);
        CHECK_EQ_INT(kvl_kind_pages(&l, KVL_KIND_LATENT, 64), 1);
        CHECK_EQ_INT(kvl_kind_pages(&l, KVL_KIND_LATENT, 65), 2);
    }
}

/* The V4 kinds' arithmetic on a hand-filled table (no version has them yet):
 * a compressed kind pages entries, a ring wraps in its slot. */
static void test_kv_row_kinds(void)
{
    kvl_layout l;
    uint32_t table[4] = {9, 2, 7, 1}, ring_slot = 3;
    CHECK_OK(kvl_layout_init(KVL_DTYPE_FP8, 512, 64, 1, &l));
    l.kinds[KVL_KIND_HCA] = (kvl_kind_layout){584, 128, KVL_PAGE_TOKENS, 0, 584u * 64u};
    l.kinds[KVL_KIND_WINDOW] = (kvl_kind_layout){584, 1, 128, 0, 584u * 128u};

    CHECK(!kvl_kind_is_ring(KVL_KIND_LATENT) && !kvl_kind_is_ring(KVL_KIND_HCA));
    CHECK(kvl_kind_is_ring(KVL_KIND_WINDOW) && kvl_kind_is_ring(KVL_KIND_CSA_STATE));
    /* entry 70 of an HCA layer: page table[1], slot 6 */
    CHECK_EQ_INT(kvl_kind_row_offset(&l, KVL_KIND_HCA, table, 70), 2u * 584u * 64u + 6u * 584u);
    CHECK_EQ_INT(kvl_kind_rows(&l, KVL_KIND_HCA, 1000), 7);
    CHECK_EQ_INT(kvl_kind_pages(&l, KVL_KIND_HCA, 128u * 65u), 2);
    /* window row of token 130: ring slot 3, position 2 */
    CHECK_EQ_INT(kvl_kind_row_offset(&l, KVL_KIND_WINDOW, &ring_slot, 130),
                 3u * 584u * 128u + 2u * 584u);
    CHECK_EQ_INT(kvl_kind_rows(&l, KVL_KIND_WINDOW, 1000), 128);
    CHECK_EQ_INT(kvl_kind_rows(&l, KVL_KIND_WINDOW, 5), 5);
    CHECK_STR_EQ(kvl_kind_name(KVL_KIND_INDEXER), "indexer");
    CHECK_STR_EQ(kvl_kind_name(KVL_KIND_COUNT), "unknown");
}

static void test_kv_layout_wire(void)
{
    uint8_t w[KVL_WIRE_BYTES], w2[KVL_WIRE_BYTES];
    kvl_layout a, b;
    mls_err err = {{0}};

    for (int d = 0; d < KVL_DTYPE_COUNT; d++) {
        CHECK_OK(kvl_layout_init((kvl_dtype)d, 512, 64, 0x1122334455667788ull, &a));
        kvl_layout_encode(&a, w);
        CHECK_OK(kvl_layout_decode(w, sizeof(w), &b, &err));
        CHECK_MSG(memcmp(&a, &b, sizeof(a)) == 0, "%s layout changed on the round trip",
                  kvl_dtype_name(a.dtype));
        kvl_layout_encode(&b, w2);
        CHECK(memcmp(w, w2, sizeof(w)) == 0);
        CHECK_OK(kvl_layout_check_peer(&a, &b, NULL));
    }
    /* the fixed little-endian form (fp8 last) */
    CHECK(memcmp(w, "KVL1", 4) == 0);
    CHECK_EQ_INT(w[4] | w[5] << 8, KVL_VERSION);
    CHECK_EQ_INT(w[6] | w[7] << 8, KVL_WIRE_BYTES);
    CHECK_EQ_INT(w[8], 0x88);
    CHECK_EQ_INT(w[15], 0x11);
    CHECK_EQ_INT(w[16], KVL_DTYPE_FP8);
    CHECK_EQ_INT(w[17], KVL_KIND_COUNT);
    CHECK_EQ_INT(w[20] | w[21] << 8, 512);
    CHECK_EQ_INT(w[24], 64);
    CHECK_EQ_INT(w[28], 64);
    CHECK_EQ_INT(w[32] | w[33] << 8, 656); /* latent row_bytes */
    for (size_t i = KVL_WIRE_HEADER_BYTES + KVL_WIRE_KIND_BYTES; i < KVL_WIRE_BYTES; i++) {
        CHECK_MSG(w[i] == 0, "byte %zu of an absent kind is 0x%02x", i, w[i]);
    }
}

/* Short, long, garbled: refused with a message, never read past len (the
 * copies are exactly len bytes, so ASan sees an over-read). */
static void test_kv_layout_wire_bad(void)
{
    uint8_t w[KVL_WIRE_BYTES];
    kvl_layout a, b;
    mls_err err = {{0}};

    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 0xfeedull, &a));
    kvl_layout_encode(&a, w);
    for (size_t len = 0; len <= KVL_WIRE_BYTES + 8; len++) {
        if (len == KVL_WIRE_BYTES) {
            continue;
        }
        uint8_t *copy = malloc(len + 1); /* +1: malloc(0) may return NULL */
        memcpy(copy, w, len < KVL_WIRE_BYTES ? len : KVL_WIRE_BYTES);
        memset(copy + KVL_WIRE_BYTES, 0, len > KVL_WIRE_BYTES ? len - KVL_WIRE_BYTES : 0);
        err.msg[0] = 0;
        mls_status st = kvl_layout_decode(copy, len, &b, &err);
        free(copy);
        CHECK_MSG(st != MLS_OK && err.msg[0] != 0, "%zu bytes accepted", len);
    }
    CHECK(kvl_layout_decode(NULL, 0, &b, &err) == MLS_ERR_PARSE);
    CHECK_MSG(strstr(err.msg, "shorter") != NULL, "%s", err.msg);

    /* every byte but the fingerprint's is checked */
    for (size_t i = 0; i < KVL_WIRE_BYTES; i++) {
        uint8_t g[KVL_WIRE_BYTES];
        memcpy(g, w, sizeof(g));
        g[i] ^= 0x5a;
        err.msg[0] = 0;
        mls_status st = kvl_layout_decode(g, sizeof(g), &b, &err);
        if (i >= 8 && i < 16) {
            CHECK_OK(st);
            CHECK(b.model_fingerprint != a.model_fingerprint);
        } else {
            CHECK_MSG(st != MLS_OK && err.msg[0] != 0, "byte %zu garbled, accepted", i);
        }
    }

    /* the messages name what is wrong */
    uint8_t g[KVL_WIRE_BYTES];
    memcpy(g, w, sizeof(g));
    g[4] = 2;
    CHECK_STATUS(kvl_layout_decode(g, sizeof(g), &b, &err), MLS_ERR_PEER_MISMATCH);
    CHECK_MSG(strstr(err.msg, "version 2") != NULL, "%s", err.msg);
    memcpy(g, w, sizeof(g));
    g[0] = 'X';
    CHECK_STATUS(kvl_layout_decode(g, sizeof(g), &b, &err), MLS_ERR_PARSE);
    CHECK_MSG(strstr(err.msg, "magic") != NULL, "%s", err.msg);
    memcpy(g, w, sizeof(g));
    g[16] = KVL_DTYPE_COUNT;
    CHECK_STATUS(kvl_layout_decode(g, sizeof(g), &b, &err), MLS_ERR_PEER_MISMATCH);
    CHECK_MSG(strstr(err.msg, "dtype") != NULL, "%s", err.msg);
    memcpy(g, w, sizeof(g));
    g[KVL_WIRE_HEADER_BYTES + 16] ^= 1; /* latent page_bytes */
    CHECK_STATUS(kvl_layout_decode(g, sizeof(g), &b, &err), MLS_ERR_PEER_MISMATCH);
    CHECK_MSG(strstr(err.msg, "latent page_bytes") != NULL, "%s", err.msg);
    memcpy(g, w, sizeof(g));
    g[KVL_WIRE_HEADER_BYTES + KVL_WIRE_KIND_BYTES * KVL_KIND_WINDOW] = 1;
    CHECK_STATUS(kvl_layout_decode(g, sizeof(g), &b, &err), MLS_ERR_PEER_MISMATCH);
    CHECK_MSG(strstr(err.msg, "window") != NULL, "%s", err.msg);
    /* a rank that would overflow the row size */
    memcpy(g, w, sizeof(g));
    g[23] = 0x40;
    CHECK_STATUS(kvl_layout_decode(g, sizeof(g), &b, &err), MLS_ERR_PEER_MISMATCH);
    CHECK_MSG(strstr(err.msg, "kv_lora_rank") != NULL, "%s", err.msg);
}

static void test_kv_layout_check_peer(void)
{
    kvl_layout a, b;
    const char *why = NULL;

    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 1, &a));
    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 2, &b));
    CHECK_STATUS(kvl_layout_check_peer(&a, &b, &why), MLS_ERR_PEER_MISMATCH);
    CHECK_STR_EQ(why, "model fingerprint");
    CHECK_OK(kvl_layout_init(KVL_DTYPE_FP8, 512, 64, 1, &b));
    CHECK_STATUS(kvl_layout_check_peer(&a, &b, &why), MLS_ERR_PEER_MISMATCH);
    CHECK_STR_EQ(why, "kv dtype");
    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, 256, 64, 1, &b));
    CHECK_STATUS(kvl_layout_check_peer(&a, &b, &why), MLS_ERR_PEER_MISMATCH);
    CHECK_STR_EQ(why, "row shape");
    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 1, &b));
    b.kinds[KVL_KIND_WINDOW].row_bytes = 584;
    CHECK_STATUS(kvl_layout_check_peer(&a, &b, &why), MLS_ERR_PEER_MISMATCH);
    CHECK_STR_EQ(why, "row kinds");
    CHECK_STATUS(kvl_layout_init(KVL_DTYPE_BF16, KVL_MAX_DIM + 4, 64, 1, &b), MLS_ERR_INVALID_ARG);
}

int main(void)
{
    MLS_TEST_RUN(test_status_names);
    MLS_TEST_RUN(test_alloc_counts);
    MLS_TEST_RUN(test_fp8_roundtrip);
    MLS_TEST_RUN(test_bf16_f16);
    MLS_TEST_RUN(test_kv_row_offset);
    MLS_TEST_RUN(test_kv_row_kinds);
    MLS_TEST_RUN(test_kv_layout_wire);
    MLS_TEST_RUN(test_kv_layout_wire_bad);
    MLS_TEST_RUN(test_kv_layout_check_peer);
    return MLS_TEST_DONE();
}
