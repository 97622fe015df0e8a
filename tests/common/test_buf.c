/*
 * test_buf.c - the growable buffer and array (common/mls_buf.h): appends,
 * formatting across the growth boundary, reset, detach, and that every byte
 * is counted under the tag and given back.
 */
#include "mls_buf.h"
#include "mls_test.h"

static void test_buf_append(void)
{
    int64_t before = mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH);
    mls_buf b = MLS_BUF_INIT(MLS_ALLOC_TAG_SCRATCH);
    char want[1000];

    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
    for (int i = 0; i < 1000; i++) {
        char c = (char)('a' + i % 26);
        want[i] = c;
        CHECK_OK(mls_buf_append(&b, &c, 1));
    }
    CHECK_EQ_INT(b.len, 1000);
    CHECK(b.cap > 1000);
    CHECK(memcmp(b.data, want, 1000) == 0 && b.data[1000] == '\0');
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH) - before, (int64_t)b.cap);
    CHECK_OK(mls_buf_append(&b, NULL, 0));
    CHECK_EQ_INT(b.len, 1000);
    mls_buf_reset(&b);
    CHECK(b.len == 0 && b.cap > 0 && b.data[0] == '\0');
    CHECK_OK(mls_buf_append_str(&b, "xyz"));
    CHECK_STR_EQ(b.data, "xyz");
    mls_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH), before);
}

static void test_buf_reserve(void)
{
    mls_buf b;

    mls_buf_init(&b, MLS_ALLOC_TAG_SCRATCH);
    CHECK_OK(mls_buf_reserve(&b, 0));
    CHECK(b.data != NULL && b.data[0] == '\0' && b.len == 0);
    CHECK_OK(mls_buf_reserve(&b, 500));
    CHECK(b.cap >= 501);
    CHECK_STATUS(mls_buf_reserve(&b, SIZE_MAX), MLS_ERR_NO_MEMORY);
    CHECK(b.cap >= 501 && b.len == 0);
    mls_buf_free(&b);
}

static void test_buf_fmt(void)
{
    int64_t before = mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH);
    mls_buf b = MLS_BUF_INIT(MLS_ALLOC_TAG_SCRATCH);
    char want[4096];
    size_t n = 0;

    /* crosses the first capacity (64) and several doublings mid-format */
    for (int i = 0; i < 200; i++) {
        CHECK_OK(mls_buf_append_fmt(&b, "%d:%s,", i, i % 7 ? "x" : "a longer piece of text"));
        n += (size_t)snprintf(want + n, sizeof(want) - n, "%d:%s,", i,
                              i % 7 ? "x" : "a longer piece of text");
    }
    CHECK_EQ_INT(b.len, n);
    CHECK_STR_EQ(b.data, want);
    CHECK_OK(mls_buf_append_fmt(&b, "%s", ""));
    CHECK_EQ_INT(b.len, n);
    mls_buf_free(&b);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH), before);
}

static void test_buf_detach(void)
{
    int64_t before = mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH);
    mls_buf b = MLS_BUF_INIT(MLS_ALLOC_TAG_SCRATCH);
    size_t len = 99;
    char *s;

    s = mls_buf_detach(&b, &len);
    CHECK(s != NULL && s[0] == '\0' && len == 0);
    free(s);
    CHECK_OK(mls_buf_append_fmt(&b, "hello %s", "world"));
    s = mls_buf_detach(&b, &len);
    CHECK_STR_EQ(s, "hello world");
    CHECK_EQ_INT(len, 11);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH), before); /* the caller's now */
    free(s);
    CHECK_OK(mls_buf_append_str(&b, "again")); /* reusable */
    CHECK_STR_EQ(b.data, "again");
    mls_buf_free(&b);
}

static void test_array_reserve(void)
{
    int64_t before = mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH);
    struct pair {
        int32_t a;
        double b;
    } *v = NULL;
    size_t cap = 0;

    for (size_t i = 0; i < 1000; i++) {
        CHECK_OK(mls_array_reserve(&v, &cap, i + 1, sizeof(*v), MLS_ALLOC_TAG_SCRATCH));
        v[i].a = (int32_t)i;
        v[i].b = (double)i / 2;
    }
    CHECK(cap >= 1000 && cap < 2000);
    for (size_t i = 0; i < 1000; i++) {
        CHECK(v[i].a == (int32_t)i && v[i].b == (double)i / 2);
    }
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH) - before, (int64_t)(cap * sizeof(*v)));
    CHECK_OK(mls_array_reserve(&v, &cap, 10, sizeof(*v), MLS_ALLOC_TAG_SCRATCH)); /* no shrink */
    CHECK(cap >= 1000);
    CHECK_STATUS(mls_array_reserve(&v, &cap, SIZE_MAX / 2, sizeof(*v), MLS_ALLOC_TAG_SCRATCH),
                 MLS_ERR_NO_MEMORY);
    CHECK(cap >= 1000 && v[999].a == 999);
    mls_array_free(&v, &cap, sizeof(*v), MLS_ALLOC_TAG_SCRATCH);
    CHECK(v == NULL && cap == 0);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_SCRATCH), before);
}

int main(void)
{
    MLS_TEST_RUN(test_buf_append);
    MLS_TEST_RUN(test_buf_reserve);
    MLS_TEST_RUN(test_buf_fmt);
    MLS_TEST_RUN(test_buf_detach);
    MLS_TEST_RUN(test_array_reserve);
    return MLS_TEST_DONE();
}
