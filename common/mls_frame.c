/*
 * mls_frame.c - incremental decoder for 4-byte big-endian length-prefixed
 * frames, and the byte-capped arena used to unpack them (see mls_frame.h).
 */
#include "mls_frame.h"

#include <assert.h>
#include <string.h>

#include "mls_alloc.h"

/* A finished frame's buffer larger than this is given back instead of kept. */
#define MLS_FRAME_KEEP_BUFFER_BYTES (256u * 1024u)
#define MLS_FRAME_MIN_BUFFER_BYTES  4096u
#define MLS_FRAME_ARENA_ALIGN       16u
#define MLS_FRAME_ARENA_MIN_BLOCK   4096u

struct mls_frame_decoder {
    uint32_t max_frame_bytes;
    uint8_t hdr[MLS_FRAME_HEADER_BYTES];
    uint32_t hdr_got;       /* header bytes received of the current frame */
    uint32_t want;          /* payload length of the current frame (valid once hdr_got == 4) */
    uint32_t got;           /* payload bytes received into buf */
    uint64_t skip_left;     /* payload bytes still to discard of an oversized frame */
    int frame_done;         /* the last call returned the buffered frame: reset first */
    uint8_t *buf;           /* payload buffer, cap bytes (mls_alloc NET) */
    size_t cap;
};

void mls_frame_header_write(uint32_t payload_len, uint8_t hdr_p[MLS_FRAME_HEADER_BYTES])
{
    hdr_p[0] = (uint8_t)(payload_len >> 24);
    hdr_p[1] = (uint8_t)(payload_len >> 16);
    hdr_p[2] = (uint8_t)(payload_len >> 8);
    hdr_p[3] = (uint8_t)payload_len;
}

uint32_t mls_frame_header_read(const uint8_t hdr[MLS_FRAME_HEADER_BYTES])
{
    return ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) | ((uint32_t)hdr[2] << 8) |
           (uint32_t)hdr[3];
}

mls_status mls_frame_decoder_create(uint32_t max_frame_bytes, mls_frame_decoder **dec_p,
                                    mls_err *err)
{
    mls_frame_decoder *dec;

    if (max_frame_bytes == 0 || max_frame_bytes > MLS_FRAME_MAX_LIMIT) {
        mls_err_set(err, "frame decoder: max_frame_bytes %u not in 1..%u", max_frame_bytes,
                    MLS_FRAME_MAX_LIMIT);
        return MLS_ERR_INVALID_ARG;
    }
    dec = mls_alloc(MLS_ALLOC_TAG_NET, sizeof(*dec));
    if (dec == NULL) {
        mls_err_set(err, "frame decoder: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    dec->max_frame_bytes = max_frame_bytes;
    *dec_p = dec;
    return MLS_OK;
}

void mls_frame_decoder_destroy(mls_frame_decoder *dec)
{
    if (dec == NULL) {
        return;
    }
    mls_free(MLS_ALLOC_TAG_NET, dec->buf, dec->cap);
    mls_free(MLS_ALLOC_TAG_NET, dec, sizeof(*dec));
}

static void mls_frame_decoder_reset_frame(mls_frame_decoder *dec)
{
    dec->hdr_got = 0;
    dec->want = 0;
    dec->got = 0;
    dec->frame_done = 0;
    if (dec->cap > MLS_FRAME_KEEP_BUFFER_BYTES) {
        mls_free(MLS_ALLOC_TAG_NET, dec->buf, dec->cap);
        dec->buf = NULL;
        dec->cap = 0;
    }
}

/*
 * Make room for k more payload bytes of the current frame (got + k <= want).
 * The buffer grows with the bytes that actually arrived (doubling, at least
 * MLS_FRAME_MIN_BUFFER_BYTES, never past want): a header that announces a
 * large frame costs nothing until its bytes come.
 */
static mls_status mls_frame_decoder_reserve(mls_frame_decoder *dec, size_t k, mls_err *err)
{
    size_t need = (size_t)dec->got + k, ncap;
    uint8_t *nbuf;

    if (dec->cap >= need) {
        return MLS_OK;
    }
    ncap = dec->cap * 2 > MLS_FRAME_MIN_BUFFER_BYTES ? dec->cap * 2 : MLS_FRAME_MIN_BUFFER_BYTES;
    ncap = ncap < need ? need : ncap;
    ncap = ncap > dec->want ? dec->want : ncap;
    nbuf = mls_alloc(MLS_ALLOC_TAG_NET, ncap);
    if (nbuf == NULL) {
        mls_err_set(err, "frame decoder: out of memory for %zu bytes of a %u-byte frame", ncap,
                    dec->want);
        return MLS_ERR_NO_MEMORY;
    }
    if (dec->got > 0) {
        memcpy(nbuf, dec->buf, dec->got);
    }
    mls_free(MLS_ALLOC_TAG_NET, dec->buf, dec->cap);
    dec->buf = nbuf;
    dec->cap = ncap;
    return MLS_OK;
}

void mls_frame_decoder_set_max(mls_frame_decoder *dec, uint32_t max_frame_bytes)
{
    assert(max_frame_bytes > 0 && max_frame_bytes <= MLS_FRAME_MAX_LIMIT);
    dec->max_frame_bytes = max_frame_bytes;
}

mls_status mls_frame_decoder_next(mls_frame_decoder *dec, const uint8_t **data, size_t *len,
                                  const uint8_t **frame_p, size_t *frame_len_p, mls_err *err)
{
    const uint8_t *p = *data;
    size_t n = *len;
    mls_status st = MLS_OK;

    *frame_p = NULL;
    *frame_len_p = 0;
    if (dec->frame_done) {
        mls_frame_decoder_reset_frame(dec);
    }
    while (n > 0) {
        if (dec->skip_left > 0) {
            size_t k = n < dec->skip_left ? n : (size_t)dec->skip_left;
            p += k;
            n -= k;
            dec->skip_left -= k;
            if (dec->skip_left == 0) {
                dec->hdr_got = 0;
            }
            continue;
        }
        if (dec->hdr_got < MLS_FRAME_HEADER_BYTES) {
            /* Fast path: a whole frame sits in the input: hand it out in place. */
            if (dec->hdr_got == 0 && n >= MLS_FRAME_HEADER_BYTES) {
                uint32_t plen = mls_frame_header_read(p);
                if (plen <= dec->max_frame_bytes && n - MLS_FRAME_HEADER_BYTES >= plen) {
                    *frame_p = p + MLS_FRAME_HEADER_BYTES;
                    *frame_len_p = plen;
                    p += MLS_FRAME_HEADER_BYTES + plen;
                    n -= MLS_FRAME_HEADER_BYTES + plen;
                    goto out;
                }
            }
            while (n > 0 && dec->hdr_got < MLS_FRAME_HEADER_BYTES) {
                dec->hdr[dec->hdr_got++] = *p++;
                n--;
            }
            if (dec->hdr_got < MLS_FRAME_HEADER_BYTES) {
                break;
            }
            dec->want = mls_frame_header_read(dec->hdr);
            dec->got = 0;
            if (dec->want > dec->max_frame_bytes) {
                mls_err_set(err, "frame of %u bytes exceeds the %u-byte limit", dec->want,
                            dec->max_frame_bytes);
                dec->skip_left = dec->want;
                dec->want = 0;
                if (dec->skip_left == 0) {
                    dec->hdr_got = 0;
                }
                st = MLS_ERR_TOO_LARGE;
                goto out;
            }
        }
        if (dec->got < dec->want && n > 0) { /* n == 0: the header ended the input */
            size_t k = dec->want - dec->got;
            if (k > n) {
                k = n;
            }
            st = mls_frame_decoder_reserve(dec, k, err);
            if (st != MLS_OK) {
                /* Cannot hold it: skip the rest like an oversized frame. */
                dec->skip_left = dec->want - dec->got;
                dec->want = 0;
                dec->got = 0;
                goto out;
            }
            memcpy(dec->buf + dec->got, p, k);
            dec->got += (uint32_t)k;
            p += k;
            n -= k;
        }
        if (dec->got == dec->want) {
            *frame_p = dec->want > 0 ? dec->buf : p; /* any non-NULL pointer for empty */
            *frame_len_p = dec->want;
            dec->frame_done = 1;
            goto out;
        }
    }
out:
    *data = p;
    *len = n;
    return st;
}

size_t mls_frame_decoder_pending(const mls_frame_decoder *dec)
{
    if (dec->frame_done) {
        return 0;
    }
    return dec->hdr_got + dec->got + (dec->skip_left > 0 ? 1 : 0);
}

size_t mls_frame_decoder_buffer_bytes(const mls_frame_decoder *dec)
{
    return dec->cap;
}

/* ---- arena ---------------------------------------------------------------- */

typedef struct mls_frame_arena_block {
    struct mls_frame_arena_block *next;
    size_t size;            /* bytes of the whole block, header included */
    size_t used;            /* bytes of data[] handed out */
    _Alignas(16) uint8_t data[];
} mls_frame_arena_block;

struct mls_frame_arena {
    size_t cap;             /* budget for all blocks */
    size_t held;            /* bytes of all blocks */
    size_t used;            /* bytes handed out since reset */
    bool exhausted;
    mls_frame_arena_block *head; /* current block first */
};

mls_status mls_frame_arena_create(size_t cap_bytes, mls_frame_arena **arena_p, mls_err *err)
{
    mls_frame_arena *a;

    if (cap_bytes < sizeof(mls_frame_arena_block) + MLS_FRAME_ARENA_ALIGN) {
        mls_err_set(err, "frame arena: cap %zu bytes is too small", cap_bytes);
        return MLS_ERR_INVALID_ARG;
    }
    a = mls_alloc(MLS_ALLOC_TAG_NET, sizeof(*a));
    if (a == NULL) {
        mls_err_set(err, "frame arena: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    a->cap = cap_bytes;
    *arena_p = a;
    return MLS_OK;
}

static void mls_frame_arena_free_blocks(mls_frame_arena *a, mls_frame_arena_block *b)
{
    while (b != NULL) {
        mls_frame_arena_block *next = b->next;
        a->held -= b->size;
        mls_free(MLS_ALLOC_TAG_NET, b, b->size);
        b = next;
    }
}

void mls_frame_arena_destroy(mls_frame_arena *arena)
{
    if (arena == NULL) {
        return;
    }
    mls_frame_arena_free_blocks(arena, arena->head);
    mls_free(MLS_ALLOC_TAG_NET, arena, sizeof(*arena));
}

void *mls_frame_arena_alloc(mls_frame_arena *a, size_t size)
{
    mls_frame_arena_block *b = a->head;
    size_t need = (size + MLS_FRAME_ARENA_ALIGN - 1) & ~(size_t)(MLS_FRAME_ARENA_ALIGN - 1);
    void *ptr;

    if (need == 0) {
        need = MLS_FRAME_ARENA_ALIGN;
    }
    if (size > a->cap || need < size) {
        a->exhausted = true;
        return NULL;
    }
    if (b == NULL || b->size - sizeof(*b) - b->used < need) {
        size_t room = a->cap - a->held;
        size_t want = b != NULL ? 2 * b->size : MLS_FRAME_ARENA_MIN_BLOCK;

        if (want < sizeof(*b) + need) {
            want = sizeof(*b) + need;
        }
        if (want > room) {
            want = room;
        }
        if (want < sizeof(*b) + need) {
            a->exhausted = true;
            return NULL;
        }
        b = mls_alloc(MLS_ALLOC_TAG_NET, want);
        if (b == NULL) {
            a->exhausted = true;
            return NULL;
        }
        b->size = want;
        b->next = a->head;
        a->head = b;
        a->held += want;
    }
    ptr = b->data + b->used;
    b->used += need;
    a->used += need;
    return ptr;
}

void mls_frame_arena_reset(mls_frame_arena *a)
{
    if (a->head != NULL) {
        /* The head is the newest and largest block: keep it. */
        mls_frame_arena_free_blocks(a, a->head->next);
        a->head->next = NULL;
        a->head->used = 0;
    }
    a->used = 0;
    a->exhausted = false;
}

bool mls_frame_arena_exhausted(const mls_frame_arena *a)
{
    return a->exhausted;
}

size_t mls_frame_arena_used(const mls_frame_arena *a)
{
    return a->used;
}

size_t mls_frame_arena_held(const mls_frame_arena *a)
{
    return a->held;
}

size_t mls_frame_arena_cap(const mls_frame_arena *a)
{
    return a->cap;
}
