/* mls_conn.c - framed protobuf connections over libuv TCP (see mls_conn.h). */
#include "mls_conn.h"

#include <stdlib.h>
#include <string.h>

#include "mls_log.h"

/* Where the cluster-key handshake stands (mls_auth.h). */
typedef enum {
    MLS_CONN_AUTH_HELLO,   /* our AuthHello is out; waiting for the peer's */
    MLS_CONN_AUTH_PROOF,   /* our AuthProof is out; waiting for the peer's */
    MLS_CONN_AUTH_DONE,    /* authenticated, or no key configured */
} mls_conn_auth_state;

struct mls_conn {
    uv_tcp_t tcp;                 /* first: the handle's data points back here */
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;   /* refusing: flush the Error, then close */
    mls_proto_reader *reader;
    mls_conn_opts opts;
    mls_conn_callbacks cb;
    void *user;
    bool closing;
    bool connected;               /* on_close is owed (accepted, or dialed + authenticated) */
    bool dialer;
    bool tcp_up;                  /* dialer: TCP is connected */
    bool refused;                 /* handshake refused: read nothing more */
    mls_status close_status;
    uint64_t bad_frames;
    size_t queued_bytes;          /* written but not yet sent */
    mls_conn_auth_state auth;
    mls_auth_key key;             /* copy of opts.key (valid when opts.key != NULL) */
    uint8_t nonce_own[MLS_AUTH_NONCE_BYTES];
    uint8_t nonce_peer[MLS_AUTH_NONCE_BYTES];
    mls_auth_session session;
    char peer[64];
};

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} mls_conn_write;

void mls_conn_opts_default(mls_conn_opts *opts)
{
    memset(opts, 0, sizeof(*opts));
    mls_proto_limits_default(&opts->limits);
    opts->preauth_max_frame_bytes = MLS_CONN_PREAUTH_MAX_FRAME_BYTES;
    opts->max_send_queue_bytes = MLS_CONN_MAX_SEND_QUEUE_BYTES;
}

static void mls_conn_on_closed(uv_handle_t *h)
{
    mls_conn *c = h->data;

    if (c->connected && c->cb.on_close != NULL) {
        c->cb.on_close(c, c->close_status, c->user);
    } else if (c->dialer && c->tcp_up && !c->connected && c->cb.on_connect != NULL) {
        /* dialed, but the handshake did not finish */
        c->cb.on_connect(c, c->close_status == MLS_OK ? MLS_ERR_PEER_DEAD : c->close_status,
                         c->user);
    }
    mls_proto_reader_destroy(c->reader);
    mls_auth_session_clear(&c->session);
    memset(&c->key, 0, sizeof(c->key));
    free(c);
}

static void mls_conn_close_with(mls_conn *c, mls_status st)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    c->close_status = st;
    uv_close((uv_handle_t *)&c->tcp, mls_conn_on_closed);
}

void mls_conn_close(mls_conn *conn)
{
    mls_conn_close_with(conn, MLS_OK);
}

static void mls_conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    buf->base = malloc(65536);
    buf->len = buf->base ? 65536 : 0;
}

static void mls_conn_on_written(uv_write_t *req, int status)
{
    mls_conn_write *w = (mls_conn_write *)req;
    mls_conn *c = req->handle->data;

    c->queued_bytes -= w->buf.len;
    free(w->buf.base);
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        mls_warn("conn %s: write failed: %s", c->peer, uv_strerror(status));
        mls_conn_close_with(c, MLS_ERR_PEER_DEAD);
    }
}

/* Queue one packed frame (takes frame). */
static mls_status mls_conn_write_frame(mls_conn *c, uint8_t *frame, size_t len)
{
    mls_conn_write *w;

    if (c->queued_bytes + len > c->opts.max_send_queue_bytes) {
        mls_error("conn %s: %zu bytes already wait for a peer that does not read them (cap %zu): "
                  "disconnecting it",
                  c->peer, c->queued_bytes, c->opts.max_send_queue_bytes);
        free(frame);
        mls_conn_close_with(c, MLS_ERR_BUSY);
        return MLS_ERR_PEER_DEAD;
    }
    w = malloc(sizeof(*w));
    if (w == NULL) {
        free(frame);
        return MLS_ERR_NO_MEMORY;
    }
    w->buf = uv_buf_init((char *)frame, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, mls_conn_on_written) != 0) {
        free(frame);
        free(w);
        mls_conn_close_with(c, MLS_ERR_PEER_DEAD);
        return MLS_ERR_PEER_DEAD;
    }
    c->queued_bytes += len;
    return MLS_OK;
}

/* Pack (sealed once authenticated with a key) and queue, whatever the state. */
static mls_status mls_conn_write_env(mls_conn *c, const Mlaserve__Envelope *env)
{
    uint8_t *frame;
    size_t len;
    mls_err err = {{0}};
    mls_status st;

    if (c->closing) {
        return MLS_ERR_PEER_DEAD;
    }
    if (c->opts.key != NULL && c->auth == MLS_CONN_AUTH_DONE) {
        st = mls_proto_frame_pack_sealed(env, c->opts.limits.max_frame_bytes, &c->session, &frame,
                                         &len, &err);
    } else {
        st = mls_proto_frame_pack(env, c->auth == MLS_CONN_AUTH_DONE
                                           ? c->opts.limits.max_frame_bytes
                                           : c->opts.preauth_max_frame_bytes,
                                  &frame, &len, &err);
    }
    if (st != MLS_OK) {
        mls_error("conn %s: cannot pack %s: %s", c->peer, mls_proto_msg_name(env->msg_case),
                  err.msg);
        return st;
    }
    return mls_conn_write_frame(c, frame, len);
}

mls_status mls_conn_send(mls_conn *conn, const Mlaserve__Envelope *env)
{
    if (conn->closing || conn->refused || conn->auth != MLS_CONN_AUTH_DONE) {
        return MLS_ERR_PEER_DEAD;
    }
    return mls_conn_write_env(conn, env);
}

static void mls_conn_reply_error(mls_conn *c, mls_status st, const char *msg)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Error e = MLASERVE__ERROR__INIT;

    mls_proto_error_init(&env, &e, 0, st, msg);
    mls_conn_write_env(c, &env);
}

static void mls_conn_on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    mls_conn_close_with(req->handle->data, MLS_ERR_PEER_MISMATCH);
}

/*
 * The handshake failed: say why once (log and, unless the peer refused us,
 * an Error in clear), read nothing more, close once the Error is out.
 */
static void mls_conn_refuse(mls_conn *c, bool tell_peer, const char *why)
{
    char msg[256];

    if (c->refused || c->closing) {
        return;
    }
    c->refused = true;
    snprintf(msg, sizeof(msg), "cluster key refused: %s", why);
    mls_error("conn %s: %s", c->peer, msg);
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (tell_peer) {
        mls_conn_reply_error(c, MLS_ERR_PEER_MISMATCH, msg);
    }
    if (c->closing) {
        return;
    }
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, mls_conn_on_shutdown) != 0) {
        mls_conn_close_with(c, MLS_ERR_PEER_MISMATCH);
    }
}

static mls_auth_role mls_conn_own_role(const mls_conn *c)
{
    return c->dialer ? MLS_AUTH_ROLE_DIALER : MLS_AUTH_ROLE_ACCEPTOR;
}

static void mls_conn_send_hello(mls_conn *c)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__AuthHello h = MLASERVE__AUTH_HELLO__INIT;

    mls_auth_nonce(c->nonce_own);
    h.protocol_version = MLS_PROTO_VERSION;
    h.role = c->dialer ? MLASERVE__AUTH_ROLE__AUTH_ROLE_DIALER
                       : MLASERVE__AUTH_ROLE__AUTH_ROLE_ACCEPTOR;
    h.nonce.data = c->nonce_own;
    h.nonce.len = sizeof(c->nonce_own);
    env.msg_case = MLASERVE__ENVELOPE__MSG_AUTH_HELLO;
    env.auth_hello = &h;
    c->auth = MLS_CONN_AUTH_HELLO;
    mls_conn_write_env(c, &env);
}

static void mls_conn_on_hello(mls_conn *c, const Mlaserve__AuthHello *h)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__AuthProof p = MLASERVE__AUTH_PROOF__INIT;
    Mlaserve__AuthRole want = c->dialer ? MLASERVE__AUTH_ROLE__AUTH_ROLE_ACCEPTOR
                                        : MLASERVE__AUTH_ROLE__AUTH_ROLE_DIALER;
    uint8_t proof[MLS_AUTH_PROOF_BYTES];
    char why[128];

    if (h->protocol_version != MLS_PROTO_VERSION) {
        snprintf(why, sizeof(why), "the peer speaks protocol %u, this side %u",
                 h->protocol_version, MLS_PROTO_VERSION);
        mls_conn_refuse(c, true, why);
        return;
    }
    if (h->role != want || h->nonce.len != MLS_AUTH_NONCE_BYTES) {
        mls_conn_refuse(c, true, "malformed auth_hello (role or nonce)");
        return;
    }
    memcpy(c->nonce_peer, h->nonce.data, MLS_AUTH_NONCE_BYTES);
    mls_auth_proof(&c->key, mls_conn_own_role(c), c->dialer ? c->nonce_own : c->nonce_peer,
                   c->dialer ? c->nonce_peer : c->nonce_own, MLS_PROTO_VERSION, proof);
    p.proof.data = proof;
    p.proof.len = sizeof(proof);
    env.msg_case = MLASERVE__ENVELOPE__MSG_AUTH_PROOF;
    env.auth_proof = &p;
    c->auth = MLS_CONN_AUTH_PROOF;
    mls_conn_write_env(c, &env);
}

static void mls_conn_on_proof(mls_conn *c, const Mlaserve__AuthProof *p)
{
    mls_auth_role peer = c->dialer ? MLS_AUTH_ROLE_ACCEPTOR : MLS_AUTH_ROLE_DIALER;
    const uint8_t *dn = c->dialer ? c->nonce_own : c->nonce_peer;
    const uint8_t *an = c->dialer ? c->nonce_peer : c->nonce_own;

    if (!mls_auth_proof_check(&c->key, peer, dn, an, MLS_PROTO_VERSION, p->proof.data,
                              p->proof.len)) {
        mls_conn_refuse(c, true,
                        c->dialer ? "the router's proof does not match this node's cluster key"
                                  : "the node's proof does not match this router's cluster key");
        return;
    }
    mls_auth_session_init(&c->key, mls_conn_own_role(c), dn, an, &c->session);
    mls_proto_reader_set_session(c->reader, &c->session);
    mls_proto_reader_set_max_frame(c->reader, c->opts.limits.max_frame_bytes);
    c->auth = MLS_CONN_AUTH_DONE;
    if (c->dialer) {
        c->connected = true;
        if (c->cb.on_connect != NULL) {
            c->cb.on_connect(c, MLS_OK, c->user);
        }
    }
}

/* A message before the handshake is done. */
static void mls_conn_on_auth_msg(mls_conn *c, const Mlaserve__Envelope *env)
{
    char why[192];

    if (env->msg_case == MLASERVE__ENVELOPE__MSG_AUTH_HELLO && c->auth == MLS_CONN_AUTH_HELLO) {
        mls_conn_on_hello(c, env->auth_hello);
    } else if (env->msg_case == MLASERVE__ENVELOPE__MSG_AUTH_PROOF &&
               c->auth == MLS_CONN_AUTH_PROOF) {
        mls_conn_on_proof(c, env->auth_proof);
    } else if (env->msg_case == MLASERVE__ENVELOPE__MSG_ERROR) {
        snprintf(why, sizeof(why), "the peer says: %.150s",
                 env->error->message ? env->error->message : "?");
        mls_conn_refuse(c, false, why);
    } else {
        snprintf(why, sizeof(why), "%s before the handshake (no cluster key on the peer?)",
                 mls_proto_msg_name(env->msg_case));
        mls_conn_refuse(c, true, why);
    }
}

static void mls_conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mls_conn *c = s->data;
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t len = nread > 0 ? (size_t)nread : 0;

    while (len > 0 && !c->closing && !c->refused) {
        Mlaserve__Envelope *env = NULL;
        mls_err err = {{0}};
        mls_status st = mls_proto_reader_next(c->reader, &p, &len, &env, &err);

        if (st != MLS_OK) {
            c->bad_frames++;
            if (c->auth != MLS_CONN_AUTH_DONE) {
                mls_conn_refuse(c, true, err.msg);
                break;
            }
            mls_warn("conn %s: refused a frame: %s (%s)", c->peer, err.msg, mls_status_name(st));
            if (st == MLS_ERR_CHECKSUM) { /* the session is broken: nothing more can open */
                mls_conn_close_with(c, MLS_ERR_CHECKSUM);
                break;
            }
            mls_conn_reply_error(c, st, err.msg);
            continue;
        }
        if (env == NULL) {
            break;
        }
        if (c->auth != MLS_CONN_AUTH_DONE) {
            mls_conn_on_auth_msg(c, env);
        } else if (c->opts.key == NULL && (env->msg_case == MLASERVE__ENVELOPE__MSG_AUTH_HELLO ||
                                           env->msg_case == MLASERVE__ENVELOPE__MSG_AUTH_PROOF)) {
            mls_conn_refuse(c, true, "the peer has a cluster key, this side runs without one");
        } else {
            c->cb.on_msg(c, env, c->user);
        }
    }
    free(buf->base);
    if (nread < 0) {
        if (c->auth != MLS_CONN_AUTH_DONE && !c->refused && !c->closing) {
            mls_warn("conn %s: the peer closed the connection during the handshake", c->peer);
        }
        mls_conn_close_with(c, nread == UV_EOF ? MLS_OK : MLS_ERR_PEER_DEAD);
    }
}

static mls_conn *mls_conn_new(uv_loop_t *loop, const mls_conn_opts *opts,
                              const mls_conn_callbacks *cb, void *user, bool dialer)
{
    mls_conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        return NULL;
    }
    if (opts != NULL) {
        c->opts = *opts;
    } else {
        mls_conn_opts_default(&c->opts);
    }
    if (c->opts.key != NULL) {
        c->key = *c->opts.key;
        c->opts.key = &c->key;
        c->auth = MLS_CONN_AUTH_HELLO;
    } else {
        c->auth = MLS_CONN_AUTH_DONE;
    }
    if (mls_proto_reader_create(&c->opts.limits, &c->reader, NULL) != MLS_OK) {
        free(c);
        return NULL;
    }
    if (c->auth != MLS_CONN_AUTH_DONE &&
        c->opts.preauth_max_frame_bytes < c->opts.limits.max_frame_bytes) {
        mls_proto_reader_set_max_frame(c->reader, c->opts.preauth_max_frame_bytes);
    }
    c->cb = *cb;
    c->user = user;
    c->dialer = dialer;
    uv_tcp_init(loop, &c->tcp);
    uv_tcp_nodelay(&c->tcp, 1);
    c->tcp.data = c;
    return c;
}

static void mls_conn_fill_peer(mls_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[48] = "";

    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) {
        return;
    }
    if (ss.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
        snprintf(c->peer, sizeof(c->peer), "[%s]:%d", ip,
                 ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    }
}

mls_status mls_conn_accept(uv_stream_t *server, const mls_conn_opts *opts,
                           const mls_conn_callbacks *cb, void *user, mls_conn **conn_p)
{
    mls_conn *c = mls_conn_new(server->loop, opts, cb, user, false);

    if (c == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, mls_conn_alloc, mls_conn_on_read) != 0) {
        mls_conn_close_with(c, MLS_ERR_IO);
        return MLS_ERR_IO;
    }
    c->connected = true;
    mls_conn_fill_peer(c);
    if (c->auth != MLS_CONN_AUTH_DONE) {
        mls_conn_send_hello(c);
    }
    *conn_p = c;
    return MLS_OK;
}

static void mls_conn_on_connected(uv_connect_t *req, int status)
{
    mls_conn *c = req->handle->data;

    if (status != 0 || uv_read_start((uv_stream_t *)&c->tcp, mls_conn_alloc, mls_conn_on_read) != 0) {
        if (c->cb.on_connect != NULL) {
            c->cb.on_connect(c, MLS_ERR_PEER_DEAD, c->user);
        }
        mls_conn_close_with(c, MLS_ERR_PEER_DEAD);
        return;
    }
    c->tcp_up = true;
    mls_conn_fill_peer(c);
    if (c->auth != MLS_CONN_AUTH_DONE) {
        mls_conn_send_hello(c); /* on_connect once the peer has proven the key */
        return;
    }
    c->connected = true;
    if (c->cb.on_connect != NULL) {
        c->cb.on_connect(c, MLS_OK, c->user);
    }
}

mls_status mls_conn_dial(uv_loop_t *loop, const char *host, int port, const mls_conn_opts *opts,
                         const mls_conn_callbacks *cb, void *user, mls_conn **conn_p)
{
    struct sockaddr_storage addr;
    mls_conn *c;

    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        return MLS_ERR_INVALID_ARG;
    }
    c = mls_conn_new(loop, opts, cb, user, true);
    if (c == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
    if (uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&addr,
                       mls_conn_on_connected) != 0) {
        mls_conn_close_with(c, MLS_ERR_IO);
        return MLS_ERR_IO;
    }
    *conn_p = c;
    return MLS_OK;
}

bool mls_conn_authenticated(const mls_conn *conn)
{
    return conn->auth == MLS_CONN_AUTH_DONE && !conn->refused;
}

void mls_conn_set_user(mls_conn *conn, void *user)
{
    conn->user = user;
}

void *mls_conn_user(const mls_conn *conn)
{
    return conn->user;
}

const char *mls_conn_peer(const mls_conn *conn)
{
    return conn->peer;
}

uint64_t mls_conn_bad_frames(const mls_conn *conn)
{
    return conn->bad_frames;
}

mls_status mls_conn_listen(uv_loop_t *loop, uv_tcp_t *server, const char *host, int port,
                           uv_connection_cb on_connection, int *port_p, mls_err *err)
{
    struct sockaddr_storage addr;
    int rc, len = sizeof(addr);

    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        mls_err_set(err, "'%s' is not a numeric IP address", host);
        return MLS_ERR_INVALID_ARG;
    }
    uv_tcp_init(loop, server);
    if ((rc = uv_tcp_bind(server, (const struct sockaddr *)&addr, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)server, 128, on_connection)) != 0) {
        mls_err_set(err, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
        return MLS_ERR_IO;
    }
    uv_tcp_getsockname(server, (struct sockaddr *)&addr, &len);
    *port_p = ntohs(addr.ss_family == AF_INET ? ((struct sockaddr_in *)&addr)->sin_port
                                               : ((struct sockaddr_in6 *)&addr)->sin6_port);
    return MLS_OK;
}
