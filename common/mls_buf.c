/*
 * mls_buf.c - the growable buffer and array (mls_buf.h): realloc by doubling,
 * the bytes counted under the owner's tag with mls_alloc_count.
 */
#include "mls_buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mls_buf_init(mls_buf *b, mls_alloc_tag tag)
{
    *b = (mls_buf)MLS_BUF_INIT(tag);
}

mls_status mls_buf_reserve(mls_buf *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    size_t cap = b->cap ? b->cap : 64;
    char *data;

    if (extra > SIZE_MAX - 1 - b->len) {
        return MLS_ERR_NO_MEMORY; /* len + extra + 1 overflows */
    }
    if (need <= b->cap) {
        return MLS_OK;
    }
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            return MLS_ERR_NO_MEMORY;
        }
        cap *= 2;
    }
    data = realloc(b->data, cap);
    if (data == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    mls_alloc_count(b->tag, (int64_t)cap - (int64_t)b->cap);
    if (b->cap == 0) {
        data[0] = '\0';
    }
    b->data = data;
    b->cap = cap;
    return MLS_OK;
}

mls_status mls_buf_append(mls_buf *b, const void *p, size_t n)
{
    mls_status st = mls_buf_reserve(b, n);
    if (st != MLS_OK) {
        return st;
    }
    if (n > 0) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return MLS_OK;
}

mls_status mls_buf_append_str(mls_buf *b, const char *s)
{
    return mls_buf_append(b, s, strlen(s));
}

mls_status mls_buf_append_vfmt(mls_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    size_t room = b->cap > b->len ? b->cap - b->len : 0;
    int n;

    va_copy(ap2, ap);
    n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        if (b->data != NULL) {
            b->data[b->len] = '\0';
        }
        return MLS_ERR_INVALID_ARG;
    }
    if ((size_t)n >= room) {
        mls_status st = mls_buf_reserve(b, (size_t)n);
        if (st != MLS_OK) {
            if (b->data != NULL) {
                b->data[b->len] = '\0';
            }
            return st;
        }
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    }
    b->len += (size_t)n;
    return MLS_OK;
}

mls_status mls_buf_append_fmt(mls_buf *b, const char *fmt, ...)
{
    va_list ap;
    mls_status st;

    va_start(ap, fmt);
    st = mls_buf_append_vfmt(b, fmt, ap);
    va_end(ap);
    return st;
}

void mls_buf_reset(mls_buf *b)
{
    b->len = 0;
    if (b->data != NULL) {
        b->data[0] = '\0';
    }
}

char *mls_buf_detach(mls_buf *b, size_t *len_p)
{
    char *data = b->data;

    if (data == NULL) {
        data = calloc(1, 1);
    } else {
        mls_alloc_count(b->tag, -(int64_t)b->cap);
    }
    if (len_p != NULL) {
        *len_p = data != NULL ? b->len : 0;
    }
    b->data = NULL;
    b->len = b->cap = 0;
    return data;
}

void mls_buf_free(mls_buf *b)
{
    if (b->data != NULL) {
        mls_alloc_count(b->tag, -(int64_t)b->cap);
        free(b->data);
    }
    b->data = NULL;
    b->len = b->cap = 0;
}

mls_status mls_array_reserve(void *items_p, size_t *cap_p, size_t need, size_t elem_size,
                             mls_alloc_tag tag)
{
    void **items = items_p;
    size_t cap = *cap_p ? *cap_p : 8;
    void *grown;

    if (need <= *cap_p) {
        return MLS_OK;
    }
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            return MLS_ERR_NO_MEMORY;
        }
        cap *= 2;
    }
    if (elem_size != 0 && cap > SIZE_MAX / elem_size) {
        return MLS_ERR_NO_MEMORY;
    }
    grown = realloc(*items, cap * elem_size);
    if (grown == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    mls_alloc_count(tag, (int64_t)((cap - *cap_p) * elem_size));
    *items = grown;
    *cap_p = cap;
    return MLS_OK;
}

void mls_array_free(void *items_p, size_t *cap_p, size_t elem_size, mls_alloc_tag tag)
{
    void **items = items_p;

    if (*items != NULL) {
        mls_alloc_count(tag, -(int64_t)(*cap_p * elem_size));
        free(*items);
    }
    *items = NULL;
    *cap_p = 0;
}
