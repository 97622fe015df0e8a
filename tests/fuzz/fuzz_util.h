/*
 * fuzz_util.h - what the libFuzzer harnesses share: a property check that
 * aborts with both sides printed (libFuzzer then saves the input as a crash),
 * quiet logging, and a cursor that carves a structured input out of the bytes.
 */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "mls_log.h"

/* A property of the code under test failed: report and abort (a crash to libFuzzer). */
#define FUZZ_CHECK(cond_, ...)                                                                     \
    do {                                                                                           \
        if (!(cond_)) {                                                                            \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond_);           \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Only errors reach stderr: refusals of bad input are the normal case here. */
static inline void fuzz_log_quiet(void)
{
    mls_log_set_level(MLS_LOG_LEVEL_ERROR);
}

/* The unread rest of an input. */
typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_cursor;

/* One byte (0 once the input is used up). */
static inline uint8_t fuzz_byte(fuzz_cursor *c)
{
    uint8_t b = 0;
    if (c->n > 0) {
        b = c->p[0];
        c->p++;
        c->n--;
    }
    return b;
}

/* The bytes up to the next `sep` (or the end); *len_p their count. The
 * separator is consumed, not returned. */
static inline const uint8_t *fuzz_until(fuzz_cursor *c, uint8_t sep, size_t *len_p)
{
    const uint8_t *s = c->p;
    size_t i = 0;
    while (i < c->n && c->p[i] != sep) {
        i++;
    }
    *len_p = i;
    c->p += i < c->n ? i + 1 : i;
    c->n -= i < c->n ? i + 1 : i;
    return s;
}

#endif
