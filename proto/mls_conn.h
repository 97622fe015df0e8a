/*
 * mls_conn.h - one control-plane connection: protobuf Envelopes in frames over
 * a libuv TCP stream, for the router (accepting nodes) and the nodes (dialing
 * the router).
 *
 * Reading: bytes go through an mls_proto_reader (frame limit, bounded unpack);
 * each Envelope is handed to on_msg. A bad frame (too large, not protobuf)
 * is answered with an Error envelope and the connection goes on: one peer's
 * garbage never takes the process down.
 * Writing: mls_conn_send packs and queues; it never blocks.
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

typedef struct {
    /* A valid Envelope; it lives until on_msg returns. */
    void (*on_msg)(mls_conn *conn, Mlaserve__Envelope *env, void *user);
    /* The connection is gone (st: MLS_OK on orderly EOF/close, else why). */
    void (*on_close)(mls_conn *conn, mls_status st, void *user);
    /* Dial only: the connection is up (st MLS_OK) or failed (then on_close does not run). */
    void (*on_connect)(mls_conn *conn, mls_status st, void *user);
} mls_conn_callbacks;

/* Accept a pending connection on a listening stream. */
mls_status mls_conn_accept(uv_stream_t *server, const mls_proto_limits *lim,
                           const mls_conn_callbacks *cb, void *user, mls_conn **conn_p);
/* Dial host:port (numeric IPv4/IPv6). on_connect reports the outcome. */
mls_status mls_conn_dial(uv_loop_t *loop, const char *host, int port, const mls_proto_limits *lim,
                         const mls_conn_callbacks *cb, void *user, mls_conn **conn_p);

/* Pack env and queue it. MLS_ERR_PEER_DEAD once closing. */
mls_status mls_conn_send(mls_conn *conn, const Mlaserve__Envelope *env);
/* Start closing (idempotent); on_close follows. */
void mls_conn_close(mls_conn *conn);

void mls_conn_set_user(mls_conn *conn, void *user);
void *mls_conn_user(const mls_conn *conn);
/* "127.0.0.1:5000" of the peer ("" when unknown). */
const char *mls_conn_peer(const mls_conn *conn);
/* Frames refused so far (malformed or oversized). */
uint64_t mls_conn_bad_frames(const mls_conn *conn);

/* Listen on host:port (port 0 picks one) for mls_conn_accept; *port_p gets the port. */
mls_status mls_conn_listen(uv_loop_t *loop, uv_tcp_t *server, const char *host, int port,
                           uv_connection_cb on_connection, int *port_p, mls_err *err);

#endif
