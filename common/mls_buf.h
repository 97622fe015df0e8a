/*
 * mls_buf.h - the one growable buffer: bytes (text being built, a response,
 * a file read whole) and arrays of any element type that grow by doubling.
 *
 * The memory is counted under a tag (mls_alloc.h), so a buffer that grows
 * shows in the tag's bytes until it is freed or detached. A buffer is a plain
 * struct the owner embeds; MLS_BUF_INIT(tag) or mls_buf_init makes an empty
 * one, which holds no memory. Not thread-safe: one owner at a time.
 *
 *   mls_buf b = MLS_BUF_INIT(MLS_ALLOC_TAG_NET);
 *   if (mls_buf_append_fmt(&b, "%d items", n) != MLS_OK) goto err_free_buf;
 *   send(b.data, b.len); mls_buf_free(&b);
 */
#ifndef MLS_BUF_H
#define MLS_BUF_H

#include <stdarg.h>
#include <stddef.h>

#include "mls_alloc.h"
#include "mls_status.h"

typedef struct {
    char *data; /* (cap) bytes; NUL-terminated at len once anything was
                   appended or reserved; NULL while cap == 0 */
    size_t len; /* bytes in use, not counting the NUL */
    size_t cap; /* bytes allocated */
    mls_alloc_tag tag;
} mls_buf;

#define MLS_BUF_INIT(tag_)                                                                         \
    {                                                                                              \
        .data = NULL, .len = 0, .cap = 0, .tag = (tag_)                                            \
    }

void mls_buf_init(mls_buf *b, mls_alloc_tag tag);
/* Room for `extra` more bytes and the NUL; data may move. MLS_ERR_NO_MEMORY
 * leaves the buffer as it was. */
mls_status mls_buf_reserve(mls_buf *b, size_t extra);
mls_status mls_buf_append(mls_buf *b, const void *p, size_t n);
mls_status mls_buf_append_str(mls_buf *b, const char *s);
mls_status mls_buf_append_fmt(mls_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
mls_status mls_buf_append_vfmt(mls_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Empty again (len 0), keeping the memory. */
void mls_buf_reset(mls_buf *b);
/* Hands the bytes over: the caller owns the returned pointer (NUL-terminated,
 * *len_p bytes before the NUL when len_p is not NULL) and frees it with
 * free(); it no longer counts under the tag. An empty buffer returns an
 * allocated "" (NULL only when that allocation fails). The buffer is left
 * empty, with no memory. */
char *mls_buf_detach(mls_buf *b, size_t *len_p);
/* Gives the memory back; the buffer is empty and reusable. */
void mls_buf_free(mls_buf *b);

/* Arrays: *items_p holds *cap_p elements of elem_size bytes; grows it (by
 * doubling, at least to 8) so that it holds `need`, counting the bytes under
 * tag. MLS_ERR_NO_MEMORY (or a size overflow) leaves the array as it was.
 * Free with mls_array_free on the same tag and capacity. */
mls_status mls_array_reserve(void *items_p, size_t *cap_p, size_t need, size_t elem_size,
                             mls_alloc_tag tag);
void mls_array_free(void *items_p, size_t *cap_p, size_t elem_size, mls_alloc_tag tag);

#endif
