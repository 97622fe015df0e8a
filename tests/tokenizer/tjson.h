/*
 * tjson.h - a minimal JSON reader for the tokenizer tests.
 *
 * cJSON keeps strings NUL-terminated without a length, so it cannot hand back
 * the fixture texts that contain U+0000; this reader keeps every string's length.
 * Test code only: recursion-bounded, no streaming, whole values in memory.
 */
#ifndef TJSON_H
#define TJSON_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { TJ_NULL, TJ_BOOL, TJ_NUM, TJ_STR, TJ_ARR, TJ_OBJ } tj_type;

typedef struct tj_val {
    tj_type type;
    bool b;
    double num;
    char *str; /* TJ_STR: NUL-terminated, len bytes (may contain NULs) */
    size_t len;
    struct tj_val **items; /* TJ_ARR / TJ_OBJ: (items_cap) n values */
    char **keys;           /* TJ_OBJ: (keys_cap) n keys */
    size_t n;
    size_t items_cap, keys_cap;
} tj_val;

/* Parses s[0..n); NULL on a syntax error (or trailing garbage). Free with tj_free. */
tj_val *tj_parse(const char *s, size_t n);
void tj_free(tj_val *v);
/* Object member by key, or NULL. */
const tj_val *tj_get(const tj_val *obj, const char *key);

#endif
