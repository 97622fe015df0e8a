/*
 * mls_test.h - the tiny test harness every component test uses.
 *
 * A test file defines static void test_x(void) functions and lists them in
 * main with MLS_TEST_RUN. Checks print both sides and the location, count the
 * failure and return from the current test. main ends with MLS_TEST_DONE(),
 * which prints "N passed, N failed" and returns non-zero on any failure.
 * A test that cannot run here (no GPU, a system tool absent) calls
 * MLS_TEST_SKIP: the whole executable then exits 77, so ctest shows it as
 * skipped rather than passed, unless something else failed. Fixtures are part
 * of the repository (tests/fixtures): a missing one fails, never skips.
 */
#ifndef MLS_TEST_H
#define MLS_TEST_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int mls_test_failed_count;
static int mls_test_passed_count;
static int mls_test_skipped_count;
static int mls_test_cur_failed;
static int mls_test_cur_skipped;

#define MLS_FAIL_(...)                                                         \
    do {                                                                       \
        fprintf(stderr, "  FAIL %s:%d: ", __FILE__, __LINE__);                \
        fprintf(stderr, __VA_ARGS__);                                          \
        fprintf(stderr, "\n");                                                 \
        mls_test_cur_failed = 1;                                               \
        return;                                                                \
    } while (0)

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            MLS_FAIL_("CHECK(%s)", #cond);                                     \
        }                                                                      \
    } while (0)

#define CHECK_MSG(cond, ...)                                                   \
    do {                                                                       \
        if (!(cond)) {                                                         \
            MLS_FAIL_(__VA_ARGS__);                                            \
        }                                                                      \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                     \
    do {                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                    \
        if (a_ != b_) {                                                        \
            MLS_FAIL_("%s == %s: %lld != %lld", #a, #b, a_, b_);               \
        }                                                                      \
    } while (0)

#define CHECK_STATUS(expr, want)                                               \
    do {                                                                       \
        mls_status got_ = (expr);                                              \
        if (got_ != (want)) {                                                  \
            MLS_FAIL_("%s: got %s, want %s", #expr, mls_status_name(got_),    \
                      mls_status_name(want));                                  \
        }                                                                      \
    } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, MLS_OK)

#define CHECK_STR_EQ(a, b)                                                     \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                 \
            MLS_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)",  \
                      b_ ? b_ : "(null)");                                     \
        }                                                                      \
    } while (0)

#define CHECK_LE_DBL(a, b)                                                     \
    do {                                                                       \
        double a_ = (double)(a), b_ = (double)(b);                             \
        if (!(a_ <= b_)) {                                                     \
            MLS_FAIL_("%s <= %s: %.6g > %.6g", #a, #b, a_, b_);                \
        }                                                                      \
    } while (0)

#define MLS_TEST_SKIP(...)                                                     \
    do {                                                                       \
        fprintf(stderr, "  SKIP: ");                                           \
        fprintf(stderr, __VA_ARGS__);                                          \
        fprintf(stderr, "\n");                                                 \
        mls_test_cur_skipped = 1;                                              \
        return;                                                                \
    } while (0)

/* MLS_TEST_ONLY=substring runs only the tests whose name contains it. */
#define MLS_TEST_RUN(fn)                                                       \
    do {                                                                       \
        const char *only_ = getenv("MLS_TEST_ONLY");                           \
        if (only_ != NULL && strstr(#fn, only_) == NULL) {                     \
            break;                                                             \
        }                                                                      \
        mls_test_cur_failed = 0;                                               \
        mls_test_cur_skipped = 0;                                              \
        fprintf(stderr, "RUN  %s\n", #fn);                                     \
        fn();                                                                  \
        if (mls_test_cur_failed) {                                             \
            mls_test_failed_count++;                                           \
            fprintf(stderr, "FAIL %s\n", #fn);                                 \
        } else if (mls_test_cur_skipped) {                                     \
            mls_test_skipped_count++;                                          \
            fprintf(stderr, "SKIP %s\n", #fn);                                 \
        } else {                                                               \
            mls_test_passed_count++;                                           \
            fprintf(stderr, "OK   %s\n", #fn);                                 \
        }                                                                      \
    } while (0)

/* 1 on any failure, else 77 (skipped) when any test skipped: a run that left
 * cases out is not reported as a pass. */
#define MLS_TEST_DONE()                                                        \
    (printf("%d passed, %d failed, %d skipped\n", mls_test_passed_count,      \
            mls_test_failed_count, mls_test_skipped_count),                    \
     mls_test_failed_count ? 1 : (mls_test_skipped_count ? 77 : 0))

/* Relative L2 error ||a-b|| / ||b||. */
static inline double mls_test_rel_l2(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Path of fixture `rel` (relative to tests/fixtures, MLS_FIXTURES_DIR) in buf,
 * or NULL when it cannot be read (the reason is printed); the caller fails. */
static inline const char *mls_test_fixture_path(const char *rel, char *buf, size_t len)
{
    if ((size_t)snprintf(buf, len, "%s/%s", MLS_FIXTURES_DIR, rel) >= len) {
        fprintf(stderr, "  fixture path too long: %s/%s\n", MLS_FIXTURES_DIR, rel);
        return NULL;
    }
    if (access(buf, R_OK) != 0) {
        fprintf(stderr, "  cannot read %s: %s\n", buf, strerror(errno));
        return NULL;
    }
    return buf;
}

/* Fixture `rel`'s path into buf (a char array), or fail the current test
 * naming the missing file. */
#define CHECK_FIXTURE(rel, buf)                                                \
    CHECK_MSG(mls_test_fixture_path((rel), (buf), sizeof(buf)) != NULL,        \
              "fixture %s/%s is missing", MLS_FIXTURES_DIR, (rel))

#endif
