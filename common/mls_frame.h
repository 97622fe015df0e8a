/*
 * mls_frame.h - length-prefixed framing of control-plane messages, and the
 * byte-capped arena their unpacking allocates from.
 *
 * Wire format: a 4-byte big-endian payload length, then the payload (one
 * protobuf Envelope, see proto/mls_proto.h). A length of 0 is a valid, empty
 * frame.
 *
 * The decoder is incremental: feed it whatever byte chunks the socket hands
 * over (a libuv read callback may deliver half a header or ten frames at once)
 * and pull out complete frames. A header announcing more than max_frame_bytes
 * is rejected with MLS_ERR_TOO_LARGE before a single payload byte is buffered;
 * below the limit the buffer grows with the payload bytes that actually
 * arrive, never to the announced length up front;
 * the decoder then discards that frame's payload as it streams past, so the
 * caller may answer with an Error message and keep the connection, or close it.
 *
 * The arena gives a parser memory from a fixed byte budget, so a malicious
 * frame cannot make it allocate without bound: when the budget is spent,
 * allocation fails and the arena remembers that it did (mls_frame_arena_exhausted).
 * mls_frame_arena_reset() gives everything back at once, between frames.
 *
 * Neither object is thread-safe; each belongs to one connection.
 */
#ifndef MLS_FRAME_H
#define MLS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mls_status.h"

#define MLS_FRAME_HEADER_BYTES 4u
#define MLS_FRAME_MAX_LIMIT    (1u << 30)   /* largest max_frame_bytes accepted */

/* Write the 4-byte big-endian header for a payload of payload_len bytes. */
void mls_frame_header_write(uint32_t payload_len, uint8_t hdr_p[MLS_FRAME_HEADER_BYTES]);
uint32_t mls_frame_header_read(const uint8_t hdr[MLS_FRAME_HEADER_BYTES]);

typedef struct mls_frame_decoder mls_frame_decoder;

/* max_frame_bytes: largest payload accepted, 1..MLS_FRAME_MAX_LIMIT. */
mls_status mls_frame_decoder_create(uint32_t max_frame_bytes, mls_frame_decoder **dec_p,
                                    mls_err *err);
void mls_frame_decoder_destroy(mls_frame_decoder *dec);
/* Change the limit for headers read from now on (1..MLS_FRAME_MAX_LIMIT):
 * e.g. a small one until the peer has authenticated, the normal one after. */
void mls_frame_decoder_set_max(mls_frame_decoder *dec, uint32_t max_frame_bytes);

/*
 * Consume bytes from (*data, *len) until one frame is complete or the input is
 * used up; advances *data and *len past what was consumed.
 *
 *  MLS_OK, *frame_p != NULL  a complete payload of *frame_len_p bytes. It points
 *                            into the caller's input (when the frame arrived in
 *                            one piece) or into the decoder's buffer; either
 *                            way it is valid until the next call or until the
 *                            input buffer is released. Call again for the rest.
 *  MLS_OK, *frame_p == NULL  all input consumed, the frame is incomplete.
 *  MLS_ERR_TOO_LARGE         a header announced a payload over the limit (err
 *                            says how big). The payload is skipped on the next
 *                            calls, never buffered; call again to go on.
 *
 * Typical loop:
 *     while ((st = mls_frame_decoder_next(d, &p, &n, &f, &fl, &err)) == MLS_OK && f) use(f, fl);
 */
mls_status mls_frame_decoder_next(mls_frame_decoder *dec, const uint8_t **data, size_t *len,
                                  const uint8_t **frame_p, size_t *frame_len_p, mls_err *err);

/* Bytes of a partially received frame (header or payload) held or skipped so far. */
size_t mls_frame_decoder_pending(const mls_frame_decoder *dec);
/* Bytes currently held in the decoder's buffer (its capacity). */
size_t mls_frame_decoder_buffer_bytes(const mls_frame_decoder *dec);

typedef struct mls_frame_arena mls_frame_arena;

/* cap_bytes: the budget of all blocks together (block headers included). */
mls_status mls_frame_arena_create(size_t cap_bytes, mls_frame_arena **arena_p, mls_err *err);
void mls_frame_arena_destroy(mls_frame_arena *arena);

/* 16-byte aligned memory, or NULL when the budget would be exceeded (then
 * mls_frame_arena_exhausted() is true until the next reset). size 0 gives a
 * valid unique pointer. Memory stays valid until reset or destroy. */
void *mls_frame_arena_alloc(mls_frame_arena *arena, size_t size);
/* Forget every allocation; keeps one block for reuse. */
void mls_frame_arena_reset(mls_frame_arena *arena);
bool mls_frame_arena_exhausted(const mls_frame_arena *arena);
/* Bytes handed out since the last reset, and the bytes of blocks held. */
size_t mls_frame_arena_used(const mls_frame_arena *arena);
size_t mls_frame_arena_held(const mls_frame_arena *arena);
size_t mls_frame_arena_cap(const mls_frame_arena *arena);

#endif
