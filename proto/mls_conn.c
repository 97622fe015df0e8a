/* mls_conn.c - framed protobuf connections over libuv TCP (see mls_conn.h). */
#include "mls_conn.h"

#include <stdlib.h>
#include <string.h>

#include "mls_log.h"

struct mls_conn {
    uv_tcp_t tcp;                 /* first: the handle's data points back here */
    uv_connect_t connect_req;
    mls_proto_reader *reader;
    mls_proto_limits limits;
    mls_conn_callbacks cb;
    void *user;
    bool closing;
    bool connected;
    mls_status close_status;
    uint64_t bad_frames;
    char peer[64];
};

typedef struct {
    uv_write_t req;
    uv_buf_t buf;
} mls_conn_write;

static void mls_conn_on_closed(uv_handle_t *h)
{
    mls_conn *c = h->data;

    if (c->connected && c->cb.on_close != NULL) {
        c->cb.on_close(c, c->close_status, c->user);
    }
    mls_proto_reader_destroy(c->reader);
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

static void mls_conn_reply_error(mls_conn *c, mls_status st, const char *msg)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Error e = MLASERVE__ERROR__INIT;

    mls_proto_error_init(&env, &e, 0, st, msg);
    mls_conn_send(c, &env);
}

static void mls_conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mls_conn *c = s->data;
    const uint8_t *p = (const uint8_t *)buf->base;
    size_t len = nread > 0 ? (size_t)nread : 0;

    while (len > 0 && !c->closing) {
        Mlaserve__Envelope *env = NULL;
        mls_err err = {{0}};
        mls_status st = mls_proto_reader_next(c->reader, &p, &len, &env, &err);

        if (st != MLS_OK) {
            c->bad_frames++;
            mls_warn("conn %s: refused a frame: %s (%s)", c->peer, err.msg, mls_status_name(st));
            mls_conn_reply_error(c, st, err.msg);
            continue;
        }
        if (env == NULL) {
            break;
        }
        c->cb.on_msg(c, env, c->user);
    }
    free(buf->base);
    if (nread < 0) {
        mls_conn_close_with(c, nread == UV_EOF ? MLS_OK : MLS_ERR_PEER_DEAD);
    }
}

static void mls_conn_on_written(uv_write_t *req, int status)
{
    mls_conn_write *w = (mls_conn_write *)req;
    mls_conn *c = req->handle->data;

    free(w->buf.base);
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        mls_warn("conn %s: write failed: %s", c->peer, uv_strerror(status));
        mls_conn_close_with(c, MLS_ERR_PEER_DEAD);
    }
}

mls_status mls_conn_send(mls_conn *conn, const Mlaserve__Envelope *env)
{
    mls_conn_write *w;
    uint8_t *frame;
    size_t len;
    mls_err err = {{0}};
    mls_status st;

    if (conn->closing || !conn->connected) {
        return MLS_ERR_PEER_DEAD;
    }
    st = mls_proto_frame_pack(env, conn->limits.max_frame_bytes, &frame, &len, &err);
    if (st != MLS_OK) {
        mls_error("conn %s: cannot pack %s: %s", conn->peer, mls_proto_msg_name(env->msg_case),
                  err.msg);
        return st;
    }
    w = malloc(sizeof(*w));
    if (w == NULL) {
        free(frame);
        return MLS_ERR_NO_MEMORY;
    }
    w->buf = uv_buf_init((char *)frame, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&conn->tcp, &w->buf, 1, mls_conn_on_written) != 0) {
        free(frame);
        free(w);
        mls_conn_close_with(conn, MLS_ERR_PEER_DEAD);
        return MLS_ERR_PEER_DEAD;
    }
    return MLS_OK;
}

static mls_conn *mls_conn_new(uv_loop_t *loop, const mls_proto_limits *lim,
                              const mls_conn_callbacks *cb, void *user)
{
    mls_conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        return NULL;
    }
    if (lim != NULL) {
        c->limits = *lim;
    } else {
        mls_proto_limits_default(&c->limits);
    }
    if (mls_proto_reader_create(&c->limits, &c->reader, NULL) != MLS_OK) {
        free(c);
        return NULL;
    }
    c->cb = *cb;
    c->user = user;
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

mls_status mls_conn_accept(uv_stream_t *server, const mls_proto_limits *lim,
                           const mls_conn_callbacks *cb, void *user, mls_conn **conn_p)
{
    mls_conn *c = mls_conn_new(server->loop, lim, cb, user);

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
    c->connected = true;
    mls_conn_fill_peer(c);
    if (c->cb.on_connect != NULL) {
        c->cb.on_connect(c, MLS_OK, c->user);
    }
}

mls_status mls_conn_dial(uv_loop_t *loop, const char *host, int port, const mls_proto_limits *lim,
                         const mls_conn_callbacks *cb, void *user, mls_conn **conn_p)
{
    struct sockaddr_storage addr;
    mls_conn *c;

    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0) {
        return MLS_ERR_INVALID_ARG;
    }
    c = mls_conn_new(loop, lim, cb, user);
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
