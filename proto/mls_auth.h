/*
 * mls_auth.h - the cluster key and what the control plane does with it: a
 * mutual challenge-response on every router <-> node connection, then a
 * sealed channel (libsodium). mls_conn.c drives it; the messages are
 * AuthHello and AuthProof in mlaserve.proto.
 *
 * Handshake (both sides at once, as soon as TCP is up):
 *   -> AuthHello{protocol_version, role (dialer = node, acceptor = router),
 *                nonce: 32 fresh random bytes}
 *   on the peer's AuthHello:
 *   -> AuthProof{proof = BLAKE2b-256 keyed with the cluster key over
 *                "mlaserve-auth-v1" | sender's role | dialer nonce |
 *                acceptor nonce | protocol version (u32 LE)}
 *   on the peer's AuthProof: recompute it for the peer's role and compare in
 *   constant time. Both nonces enter every proof, so a proof recorded on
 *   another connection is worthless, and the role byte keeps a side's own
 *   proof from being reflected back at it.
 * Session: one key per direction, BLAKE2b-256 keyed with the cluster key over
 *   "mlaserve-session-v1" | direction | dialer nonce | acceptor nonce.
 *   Every frame after the proofs is sealed with ChaCha20-Poly1305 (IETF): the
 *   payload is the envelope encrypted + a 16-byte tag, the AEAD nonce is the
 *   frame's sequence number in its direction (0, 1, 2, ...). A frame that is
 *   altered, injected, replayed, dropped or reordered does not open, and the
 *   connection closes: an authenticated connection cannot be hijacked, and
 *   prompts do not cross the network in clear.
 *
 * The key file: any bytes, at least MLS_AUTH_KEY_MIN_BYTES of them (trailing
 * whitespace ignored; `mlaserve cluster up` writes 64 hex digits), at most
 * MLS_AUTH_KEY_MAX_FILE_BYTES, readable by its owner only. The cluster key is
 * BLAKE2b-256 of those bytes.
 */
#ifndef MLS_AUTH_H
#define MLS_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mls_status.h"

#define MLS_AUTH_KEY_BYTES          32u
#define MLS_AUTH_KEY_MIN_BYTES      32u    /* key file content at least */
#define MLS_AUTH_KEY_MAX_FILE_BYTES 4096u
#define MLS_AUTH_NONCE_BYTES        32u
#define MLS_AUTH_PROOF_BYTES        32u
#define MLS_AUTH_TAG_BYTES          16u    /* added to every sealed frame */

/* Who says what in the handshake; mirrors AuthRole in mlaserve.proto. */
typedef enum {
    MLS_AUTH_ROLE_DIALER = 1,    /* the node */
    MLS_AUTH_ROLE_ACCEPTOR = 2,  /* the router */
} mls_auth_role;

typedef struct {
    uint8_t bytes[MLS_AUTH_KEY_BYTES];
} mls_auth_key;

/* One authenticated connection's keys and sequence numbers. */
typedef struct {
    uint8_t tx_key[MLS_AUTH_KEY_BYTES];
    uint8_t rx_key[MLS_AUTH_KEY_BYTES];
    uint64_t tx_seq;   /* next frame sent */
    uint64_t rx_seq;   /* next frame expected */
} mls_auth_session;

/*
 * Read the cluster key file once. Refused with a reason in err: a file that
 * is not a regular file, is readable or writable by group or others
 * (MLS_ERR_INVALID_ARG: "chmod 600 it"), holds fewer than
 * MLS_AUTH_KEY_MIN_BYTES bytes or more than MLS_AUTH_KEY_MAX_FILE_BYTES.
 */
mls_status mls_auth_key_load(const char *path, mls_auth_key *key_p, mls_err *err);
/* The key from bytes already read (tests, and key_load itself). */
mls_status mls_auth_key_from_bytes(const uint8_t *data, size_t len, mls_auth_key *key_p,
                                   mls_err *err);
/* Create path (must not exist) with mode 0600 holding 64 fresh hex digits. */
mls_status mls_auth_key_file_create(const char *path, mls_err *err);

/* 32 random bytes (libsodium's CSPRNG). */
void mls_auth_nonce(uint8_t nonce_p[MLS_AUTH_NONCE_BYTES]);

/* The proof the side playing role sends on the connection of these nonces. */
void mls_auth_proof(const mls_auth_key *key, mls_auth_role role,
                    const uint8_t dialer_nonce[MLS_AUTH_NONCE_BYTES],
                    const uint8_t acceptor_nonce[MLS_AUTH_NONCE_BYTES], uint32_t version,
                    uint8_t proof_p[MLS_AUTH_PROOF_BYTES]);
/* Whether proof (len bytes) is what role would send; constant time. */
bool mls_auth_proof_check(const mls_auth_key *key, mls_auth_role role,
                          const uint8_t dialer_nonce[MLS_AUTH_NONCE_BYTES],
                          const uint8_t acceptor_nonce[MLS_AUTH_NONCE_BYTES], uint32_t version,
                          const uint8_t *proof, size_t len);

/* The session of the side playing own_role; sequence numbers start at 0. */
void mls_auth_session_init(const mls_auth_key *key, mls_auth_role own_role,
                           const uint8_t dialer_nonce[MLS_AUTH_NONCE_BYTES],
                           const uint8_t acceptor_nonce[MLS_AUTH_NONCE_BYTES],
                           mls_auth_session *session_p);
/* Seal buf[0..len) in place and write the tag after it (buf holds
 * len + MLS_AUTH_TAG_BYTES); takes the next send sequence number. */
void mls_auth_seal(mls_auth_session *session, uint8_t *buf, size_t len);
/* Open a sealed payload (len >= MLS_AUTH_TAG_BYTES, tag included) into out
 * (len - MLS_AUTH_TAG_BYTES bytes; may not overlap). MLS_ERR_CHECKSUM when it
 * was not sealed by the peer as the next frame: the caller closes. */
mls_status mls_auth_open(mls_auth_session *session, const uint8_t *sealed, size_t len,
                         uint8_t *out, mls_err *err);
/* Wipe the keys. */
void mls_auth_session_clear(mls_auth_session *session);

#endif
