/* mls_alloc.c - counted, 64-byte aligned host allocation. */
#include "mls_alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic int64_t mls_alloc_counters[MLS_ALLOC_TAG_COUNT];

static const char *const mls_alloc_tag_names[] = {
#define MLS_ALLOC_TAG_NAME_(name) #name,
    MLS_ALLOC_TAG_LIST(MLS_ALLOC_TAG_NAME_)
#undef MLS_ALLOC_TAG_NAME_
};
_Static_assert(sizeof(mls_alloc_tag_names) / sizeof(mls_alloc_tag_names[0]) == MLS_ALLOC_TAG_COUNT,
               "tag name table out of sync");

void *mls_alloc(mls_alloc_tag tag, size_t size)
{
    void *ptr = NULL;
    size_t rounded = (size + 63) & ~(size_t)63;

    if (size == 0 || rounded < size) {
        return NULL;
    }
    if (posix_memalign(&ptr, 64, rounded) != 0) {
        return NULL;
    }
    memset(ptr, 0, rounded);
    atomic_fetch_add(&mls_alloc_counters[tag], (int64_t)size);
    return ptr;
}

void mls_free(mls_alloc_tag tag, void *ptr, size_t size)
{
    if (ptr == NULL) {
        return;
    }
    atomic_fetch_sub(&mls_alloc_counters[tag], (int64_t)size);
    free(ptr);
}

void mls_alloc_count(mls_alloc_tag tag, int64_t delta)
{
    atomic_fetch_add(&mls_alloc_counters[tag], delta);
}

int64_t mls_alloc_bytes(mls_alloc_tag tag)
{
    return atomic_load(&mls_alloc_counters[tag]);
}

const char *mls_alloc_tag_name(mls_alloc_tag tag)
{
    return ((unsigned)tag < MLS_ALLOC_TAG_COUNT) ? mls_alloc_tag_names[tag] : "UNKNOWN";
}
