/*
 * mls_conn.h - one control-plane connection: protobuf Envelopes in frames over
 * a libuv TCP stream, for the router (accepting nodes) and the nodes (dialing
 * the router).
 *
 * Authentication (mls_conn_opts.key set; mls_auth.h has the protocol): both
 * sides run the cluster-key handshake first, with frames capped at
 * preauth_max_frame_bytes; anything else, a bad frame or a wrong proof closes
 * the connection after one log line and an Error saying "cluster key
 * refused". Then every frame is sealed: one that does not open (altered,
 * replayed, reordered) closes the connection. Without a key no handshake is
 * run and frames go in clear (a side without a key refuses a peer that
 * starts the handshake). The acceptor's on_msg sees only what follows the
 * handshake; the dialer's on_connect fires once it is done.
 * Reading: bytes go through an mls_proto_reader (frame limit, buffers that
 * grow with the bytes that arrive, bounded unpack); each Envelope is handed
 * to on_msg. After authentication a bad frame (too large, not protobuf) is
 * answered with an Error envelope and the connection goes on: one peer's
 * garbage never takes the process down.
 * Writing: mls_conn_send packs and queues; it never blocks. A peer that
 * leaves more than max_send_queue_bytes unread is disconnected (logged).
 * Closing: on EOF, a read/write error or mls_conn_close, on_close runs once
 * (asynchronously) and the connection frees itself afterwards.
 *
 * Single-threaded: everything on the loop thread.
 */
#ifndef MLS_CONN_H
#define MLS_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "mls_proto.h"

typedef struct mls_conn mls_conn;

#define MLS_CONN_PREAUTH_MAX_FRAME_BYTES 4096u
#define MLS_CONN_MAX_SEND_QUEUE_BYTES    (64u << 20)

typedef struct {
    mls_proto_limits limits;           /* once authenticated (or without a key) */
    uint32_t preauth_max_frame_bytes;  /* frame cap during the handshake */
    size_t max_send_queue_bytes;       /* unsent bytes at most; more disconnects */
    const mls_auth_key *key;           /* cluster key (borrowed); NULL: no handshake */
} mls_conn_opts;

/* Defaults: mls_proto_limits_default, the caps above, no key. */
void mls_conn_opts_default(mls_conn_opts *opts);

typedef struct {
    /* A valid Envelope; it lives until on_msg returns. */
    void (*on_msg)(mls_conn *conn, Mlaserve__Envelope *env, void *user);
    /* The connection is gone (st: MLS_OK on orderly EOF/close, else why). */
    void (*on_close)(mls_conn *conn, mls_status st, void *user);
    /* Dial only: the connection is up and authenticated (st MLS_OK) or failed
     * (then on_close does not run): MLS_ERR_PEER_DEAD when it could not be
     * made, MLS_ERR_PEER_MISMATCH when the cluster key was refused. */
    void (*on_connect)(mls_conn *conn, mls_status st, void *user);
} mls_conn_callbacks;

/* Accept a pending connection on a listening stream. opts NULL = defaults. */
mls_status mls_conn_accept(uv_stream_t *server, const mls_conn_opts *opts,
                           const mls_conn_callbacks *cb, void *user, mls_conn **conn_p);
/* Dial host:port (numeric IPv4/IPv6). on_connect reports the outcome. */
mls_status mls_conn_dial(uv_loop_t *loop, const char *host, int port, const mls_conn_opts *opts,
                         const mls_conn_callbacks *cb, void *user, mls_conn **conn_p);

/* Pack env (sealed once authenticated) and queue it. MLS_ERR_PEER_DEAD once
 * closing or before the handshake is done. */
mls_status mls_conn_send(mls_conn *conn, const Mlaserve__Envelope *env);
/* Start closing (idempotent); on_close follows. */
void mls_conn_close(mls_conn *conn);

void mls_conn_set_user(mls_conn *conn, void *user);
void *mls_conn_user(const mls_conn *conn);
/* "127.0.0.1:5000" of the peer ("" when unknown). */
const char *mls_conn_peer(const mls_conn *conn);
/* Whether the handshake is done (always, without a key). */
bool mls_conn_authenticated(const mls_conn *conn);
/* Frames refused so far (malformed or oversized). */
uint64_t mls_conn_bad_frames(const mls_conn *conn);

/* Listen on host:port (port 0 picks one) for mls_conn_accept; *port_p gets the port. */
mls_status mls_conn_listen(uv_loop_t *loop, uv_tcp_t *server, const char *host, int port,
                           uv_connection_cb on_connection, int *port_p, mls_err *err);

#endif
