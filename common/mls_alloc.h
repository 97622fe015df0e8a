/*
 * mls_alloc.h - host allocation counted by tag.
 *
 * Every long-lived host allocation names a tag, so a node can report how many
 * bytes each part of it holds (and tests can assert that everything was given
 * back). Counters are atomic; the functions are thread-safe. Ownership: the
 * caller owns what mls_alloc returns and gives it back with mls_free on the
 * same tag.
 */
#ifndef MLS_ALLOC_H
#define MLS_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#define MLS_ALLOC_TAG_LIST(X) \
    X(MISC)                   \
    X(WEIGHTS)                \
    X(KV_POOL)                \
    X(SCRATCH)                \
    X(TOKENIZER)              \
    X(TRANSPORT)              \
    X(NET)

typedef enum {
#define MLS_ALLOC_TAG_ENUM_(name) MLS_ALLOC_TAG_##name,
    MLS_ALLOC_TAG_LIST(MLS_ALLOC_TAG_ENUM_)
#undef MLS_ALLOC_TAG_ENUM_
    MLS_ALLOC_TAG_COUNT
} mls_alloc_tag;

/* Zeroed memory aligned to 64 bytes, or NULL. size 0 returns NULL. */
void *mls_alloc(mls_alloc_tag tag, size_t size);
/* Accepts NULL. size must be what was asked of mls_alloc. */
void mls_free(mls_alloc_tag tag, void *ptr, size_t size);

/* Counts delta bytes (negative: given back) under a tag for memory managed
 * elsewhere, e.g. mls_buf's realloc'd buffers. */
void mls_alloc_count(mls_alloc_tag tag, int64_t delta);

/* Bytes currently held under a tag, and the tag's name ("KV_POOL"). */
int64_t mls_alloc_bytes(mls_alloc_tag tag);
const char *mls_alloc_tag_name(mls_alloc_tag tag);

#endif
