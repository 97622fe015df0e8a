/* test_common.c - status table, counted allocation, narrow-float conversions. */
#include "mls_alloc.h"
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

int main(void)
{
    MLS_TEST_RUN(test_status_names);
    MLS_TEST_RUN(test_alloc_counts);
    MLS_TEST_RUN(test_fp8_roundtrip);
    MLS_TEST_RUN(test_bf16_f16);
    return MLS_TEST_DONE();
}
