/*
 * mls_http.c - HTTP/1.1 server on libuv + llhttp (see mls_http.h for the
 * contract).
 *
 * Per connection: one uv_tcp_t, one uv_timer_t (the single deadline that
 * matters in the current state), one llhttp parser and an input buffer.
 * Bytes read are appended to the input buffer and parsed from there; the
 * parser pauses at the end of every message, the request is handed to the
 * handler, and parsing of any pipelined bytes resumes only when that request
 * is complete. States:
 *
 *   IDLE      keep-alive, waiting for a request      (idle timeout; first-byte
 *                                                    timeout until a byte came)
 *   READING   inside a request's head or body         (request timeout)
 *   HANDLING  request owned by the handler            (write timeout only)
 *   LINGER    error answer sent, draining the client  (short timeout)
 *
 * A connection is freed only from its handles' close callbacks, never from
 * inside an API call, so a request's connection pointer stays valid until
 * the close callback detaches it.
 *
 * Admission: connections are counted per client address (a hash of chains
 * through the connections themselves) and in all; at max_connections the
 * connection idle longest (IDLE, nothing queued) is closed to make room, and
 * only when none is idle is the new one refused. IDLE connections sit on one
 * list in the order they became idle, so the oldest is its head.
 */
#include "mls_http.h"

#include <cjson/cJSON.h>
#include <llhttp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mls_alloc.h"
#include "mls_buf.h"
#include "mls_log.h"
#include "mls_num.h"

#define MLS_HTTP_LINGER_MS        2000u
#define MLS_HTTP_READ_AHEAD_BYTES (64u * 1024u)  /* pipelined bytes held while handling */
#define MLS_HTTP_READ_BUF_BYTES   (64u * 1024u)
#define MLS_HTTP_EVICT_SCAN       64u            /* idle connections looked at per eviction */

typedef enum {
    MLS_HTTP_CONN_IDLE,
    MLS_HTTP_CONN_READING,
    MLS_HTTP_CONN_HANDLING,
    MLS_HTTP_CONN_LINGER,
} mls_http_conn_state;

typedef enum {
    MLS_HTTP_RESP_NONE,
    MLS_HTTP_RESP_STREAMING,
} mls_http_resp_state;

typedef struct mls_http_conn mls_http_conn;

typedef struct {
    uint32_t name, value;   /* offsets into hdrs */
} mls_http_hdr;

struct mls_http_req {
    mls_http_conn *conn;    /* NULL once the client is gone */
    char method[24];
    mls_buf url;            /* raw target, then "path\0query\0" */
    const char *path, *query;
    mls_buf hdrs;           /* "name\0value\0" ... */
    mls_http_hdr *hdr;      /* (max_headers) */
    uint32_t n_hdr;
    uint32_t field_start;
    int in_field;
    uint64_t head_bytes;
    mls_buf body;
    int http_major, http_minor;
    bool keep_alive;
    bool head_only;         /* HEAD: no body in the answer */
    bool disconnected;
    bool chunked;           /* streaming with chunked encoding */
    mls_http_resp_state resp;
    mls_buf resp_hdrs;      /* extra "Name: value\r\n" lines */
    mls_http_close_fn on_close;
    mls_http_drain_fn on_drain;
    void *owner;
    uint64_t start_ns;
    char peer[64];
};

struct mls_http_conn {
    uv_tcp_t tcp;           /* handle.data = this */
    uv_timer_t timer;
    mls_http_server *srv;
    mls_http_conn *prev, *next;
    llhttp_t parser;
    mls_http_conn_state state;
    mls_http_req *req;      /* being read, or owned by the handler (HANDLING) */
    bool req_ready;         /* parser completed req; dispatch pending */
    mls_buf in;             /* bytes not yet parsed */
    size_t write_queued;
    bool above_high_water;
    bool closing;
    bool close_when_flushed;
    bool reading;
    bool in_process;
    int handles_open;
    int reject_status;      /* set by parser callbacks that refuse the request */
    const char *reject_msg;
    uint64_t t_activity_ms, t_request_ms, t_write_ms, t_linger_ms;
    bool got_byte;          /* the client has sent something (first-byte timeout) */
    bool counted;           /* in the address table, n_active and (IDLE) the idle list */
    bool on_idle;
    uint8_t addr[17];       /* family byte + IPv4/IPv6 address: the per-address key */
    mls_http_conn *addr_next;                /* chain of its address-table bucket */
    mls_http_conn *idle_prev, *idle_next;    /* idle list, oldest first */
    char peer[64];
};

struct mls_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    mls_http_config cfg;
    char host[64];
    char server_name[64];
    mls_http_handler_fn handler;
    void *user;
    int port;
    bool listener_closed;
    bool shutting_down;
    mls_http_conn *conns;
    mls_http_conn **addr_buckets;            /* (addr_mask + 1) chains by client address */
    uint32_t addr_mask;
    mls_http_conn *idle_head, *idle_tail;    /* IDLE connections, oldest first */
    uint32_t n_active;                       /* accepted, admitted and not closing */
    mls_http_stats stats;
};

typedef struct {
    uv_write_t w;
    mls_http_conn *conn;
    size_t len;
    char data[];
} mls_http_write;

static llhttp_settings_t mls_http_settings;
static int mls_http_settings_ready;

static void mls_http_conn_close(mls_http_conn *c);
static void mls_http_conn_process(mls_http_conn *c);
static void mls_http_conn_timer_update(mls_http_conn *c);

/* ---- config, reasons ------------------------------------------------------- */

void mls_http_config_default(mls_http_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host = "127.0.0.1";
    cfg->port = 0;
    cfg->backlog = 511;
    cfg->max_connections = 1024;
    cfg->max_connections_per_addr = 64;
    cfg->max_header_bytes = 16 * 1024;
    cfg->max_headers = 100;
    cfg->max_body_bytes = 4u << 20;
    cfg->idle_timeout_ms = 60000;
    cfg->first_byte_timeout_ms = 5000;
    cfg->request_timeout_ms = 30000;
    cfg->write_timeout_ms = 30000;
    cfg->write_high_water_bytes = 256u * 1024u;
    cfg->max_write_queue_bytes = 16u << 20;
    cfg->server_name = "mlaserve";
}

const char *mls_http_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:  return "Unknown";
    }
}

/* ---- admission: the address table and the idle list ------------------------- */

static uint32_t mls_http_addr_hash(const uint8_t addr[17])
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (int i = 0; i < 17; i++) {
        h = (h ^ addr[i]) * 16777619u;
    }
    return h;
}

/* Connections counted from c's address (c itself not yet among them). */
static uint32_t mls_http_addr_count(const mls_http_server *srv, const uint8_t addr[17])
{
    uint32_t n = 0;

    for (const mls_http_conn *o = srv->addr_buckets[mls_http_addr_hash(addr) & srv->addr_mask];
         o != NULL; o = o->addr_next) {
        n += memcmp(o->addr, addr, sizeof(o->addr)) == 0;
    }
    return n;
}

static void mls_http_idle_unlink(mls_http_conn *c)
{
    mls_http_server *srv = c->srv;

    if (!c->on_idle) {
        return;
    }
    if (c->idle_prev != NULL) {
        c->idle_prev->idle_next = c->idle_next;
    } else {
        srv->idle_head = c->idle_next;
    }
    if (c->idle_next != NULL) {
        c->idle_next->idle_prev = c->idle_prev;
    } else {
        srv->idle_tail = c->idle_prev;
    }
    c->idle_prev = c->idle_next = NULL;
    c->on_idle = false;
}

/* Every state change goes through here: IDLE puts c at the idle list's tail. */
static void mls_http_conn_set_state(mls_http_conn *c, mls_http_conn_state state)
{
    mls_http_server *srv = c->srv;

    c->state = state;
    mls_http_idle_unlink(c);
    if (state != MLS_HTTP_CONN_IDLE || !c->counted) {
        return;
    }
    c->idle_prev = srv->idle_tail;
    if (srv->idle_tail != NULL) {
        srv->idle_tail->idle_next = c;
    } else {
        srv->idle_head = c;
    }
    srv->idle_tail = c;
    c->on_idle = true;
}

/* Count c in (address table, n_active, idle list when IDLE). */
static void mls_http_conn_admit(mls_http_conn *c)
{
    mls_http_server *srv = c->srv;
    uint32_t b = mls_http_addr_hash(c->addr) & srv->addr_mask;

    c->addr_next = srv->addr_buckets[b];
    srv->addr_buckets[b] = c;
    srv->n_active++;
    c->counted = true;
    mls_http_conn_set_state(c, c->state);
}

/* Count c out again (it is closing). */
static void mls_http_conn_forget(mls_http_conn *c)
{
    mls_http_server *srv = c->srv;
    mls_http_conn **pp;

    if (!c->counted) {
        return;
    }
    for (pp = &srv->addr_buckets[mls_http_addr_hash(c->addr) & srv->addr_mask]; *pp != NULL;
         pp = &(*pp)->addr_next) {
        if (*pp == c) {
            *pp = c->addr_next;
            break;
        }
    }
    mls_http_idle_unlink(c);
    srv->n_active--;
    c->counted = false;
}

/* At the cap: close the connection idle longest (no request, nothing queued)
 * to make room. False when none is idle. */
static bool mls_http_evict_idle(mls_http_server *srv)
{
    mls_http_conn *c = srv->idle_head;

    for (uint32_t i = 0; c != NULL && i < MLS_HTTP_EVICT_SCAN; i++, c = c->idle_next) {
        if (c->write_queued == 0 && !c->close_when_flushed && !c->closing) {
            mls_debug("http %s: idle, closed to make room for a new connection", c->peer);
            srv->stats.connections_evicted++;
            mls_http_conn_close(c);
            return true;
        }
    }
    return false;
}

/* ---- requests -------------------------------------------------------------- */

static mls_http_req *mls_http_req_new(mls_http_conn *c)
{
    mls_http_req *req = mls_alloc(MLS_ALLOC_TAG_NET, sizeof(*req));

    if (req == NULL) {
        return NULL;
    }
    req->hdr = malloc(sizeof(*req->hdr) * (c->srv->cfg.max_headers + 1));
    if (req->hdr == NULL) {
        mls_free(MLS_ALLOC_TAG_NET, req, sizeof(*req));
        return NULL;
    }
    mls_buf_init(&req->url, MLS_ALLOC_TAG_NET);
    mls_buf_init(&req->hdrs, MLS_ALLOC_TAG_NET);
    mls_buf_init(&req->body, MLS_ALLOC_TAG_NET);
    mls_buf_init(&req->resp_hdrs, MLS_ALLOC_TAG_NET);
    req->conn = c;
    req->start_ns = mls_now_ns();
    snprintf(req->peer, sizeof(req->peer), "%s", c->peer);
    return req;
}

static void mls_http_req_free(mls_http_req *req)
{
    mls_buf_free(&req->url);
    mls_buf_free(&req->hdrs);
    mls_buf_free(&req->body);
    mls_buf_free(&req->resp_hdrs);
    free(req->hdr);
    mls_free(MLS_ALLOC_TAG_NET, req, sizeof(*req));
}

const char *mls_http_req_method(const mls_http_req *req)
{
    return req->method;
}

const char *mls_http_req_path(const mls_http_req *req)
{
    return req->path != NULL ? req->path : "";
}

const char *mls_http_req_query(const mls_http_req *req)
{
    return req->query != NULL ? req->query : "";
}

const char *mls_http_req_header(const mls_http_req *req, const char *name)
{
    uint32_t i;

    for (i = 0; i < req->n_hdr; i++) {
        if (strcasecmp(req->hdrs.data + req->hdr[i].name, name) == 0) {
            return req->hdrs.data + req->hdr[i].value;
        }
    }
    return NULL;
}

const char *mls_http_req_body(const mls_http_req *req, size_t *len_p)
{
    *len_p = req->body.len;
    return req->body.data != NULL ? req->body.data : "";
}

const char *mls_http_req_peer(const mls_http_req *req)
{
    return req->peer;
}

uint64_t mls_http_req_start_ns(const mls_http_req *req)
{
    return req->start_ns;
}

void mls_http_req_set_callbacks(mls_http_req *req, mls_http_close_fn on_close,
                                mls_http_drain_fn on_drain, void *owner)
{
    req->on_close = on_close;
    req->on_drain = on_drain;
    req->owner = owner;
}

bool mls_http_req_disconnected(const mls_http_req *req)
{
    return req->conn == NULL || req->conn->closing;
}

size_t mls_http_req_write_queued(const mls_http_req *req)
{
    return req->conn != NULL ? req->conn->write_queued : 0;
}

bool mls_http_req_writable(const mls_http_req *req)
{
    return !mls_http_req_disconnected(req) && !req->conn->above_high_water;
}

/* ---- writing --------------------------------------------------------------- */

static void mls_http_shutdown_cb(uv_shutdown_t *sh, int status)
{
    (void)status;
    free(sh);
}

static void mls_http_write_cb(uv_write_t *w, int status)
{
    mls_http_write *wr = (mls_http_write *)w;
    mls_http_conn *c = wr->conn;

    c->write_queued -= wr->len;
    free(wr);
    if (status < 0) {
        if (status != UV_ECANCELED) {
            mls_debug("http %s: write failed: %s", c->peer, uv_strerror(status));
        }
        mls_http_conn_close(c);
        return;
    }
    c->t_write_ms = uv_now(c->srv->loop);
    if (c->closing) {
        return;
    }
    if (c->close_when_flushed && c->write_queued == 0) {
        if (c->state == MLS_HTTP_CONN_LINGER) {
            /* Error answered: stop sending, keep draining what the client sends. */
            uv_shutdown_t *sh = malloc(sizeof(*sh));
            if (sh == NULL ||
                uv_shutdown(sh, (uv_stream_t *)&c->tcp, mls_http_shutdown_cb) != 0) {
                free(sh);
                mls_http_conn_close(c);
                return;
            }
            c->t_linger_ms = uv_now(c->srv->loop);
            c->close_when_flushed = false;
        } else {
            mls_http_conn_close(c);
            return;
        }
    }
    if (c->above_high_water && c->write_queued < c->srv->cfg.write_high_water_bytes) {
        c->above_high_water = false;
        if (c->state == MLS_HTTP_CONN_HANDLING && c->req != NULL && c->req->on_drain != NULL) {
            c->req->on_drain(c->req, c->req->owner); /* may complete (free) the request */
        }
    }
    mls_http_conn_timer_update(c);
}

/* Queue head[0..hlen) + body[0..blen) + tail[0..tlen) as one write. */
static mls_status mls_http_conn_write3(mls_http_conn *c, const void *head, size_t hlen,
                                       const void *body, size_t blen, const void *tail,
                                       size_t tlen)
{
    size_t len = hlen + blen + tlen;
    mls_http_write *wr;
    uv_buf_t buf;
    int rc;

    if (c->closing) {
        return MLS_ERR_PEER_DEAD;
    }
    if (c->write_queued + len > c->srv->cfg.max_write_queue_bytes) {
        mls_warn("http %s: client is not reading (%zu bytes queued), dropping it", c->peer,
                 c->write_queued);
        mls_http_conn_close(c);
        return MLS_ERR_PEER_DEAD;
    }
    wr = malloc(sizeof(*wr) + len);
    if (wr == NULL) {
        mls_http_conn_close(c);
        return MLS_ERR_NO_MEMORY;
    }
    wr->conn = c;
    wr->len = len;
    if (hlen > 0) {
        memcpy(wr->data, head, hlen);
    }
    if (blen > 0) {
        memcpy(wr->data + hlen, body, blen);
    }
    if (tlen > 0) {
        memcpy(wr->data + hlen + blen, tail, tlen);
    }
    buf = uv_buf_init(wr->data, (unsigned)len);
    if (c->write_queued == 0) {
        c->t_write_ms = uv_now(c->srv->loop);
    }
    rc = uv_write(&wr->w, (uv_stream_t *)&c->tcp, &buf, 1, mls_http_write_cb);
    if (rc != 0) {
        free(wr);
        mls_debug("http %s: write: %s", c->peer, uv_strerror(rc));
        mls_http_conn_close(c);
        return MLS_ERR_PEER_DEAD;
    }
    c->write_queued += len;
    c->srv->stats.bytes_out += len;
    if (c->write_queued > c->srv->cfg.write_high_water_bytes) {
        c->above_high_water = true;
    }
    mls_http_conn_timer_update(c);
    return MLS_OK;
}

static char *mls_http_error_body(const char *type, const char *param, const char *code,
                                 const char *msg)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    char *out;

    cJSON_AddStringToObject(e, "message", msg != NULL ? msg : "");
    cJSON_AddStringToObject(e, "type", type != NULL ? type : "invalid_request_error");
    if (param != NULL) {
        cJSON_AddStringToObject(e, "param", param);
    } else {
        cJSON_AddNullToObject(e, "param");
    }
    if (code != NULL) {
        cJSON_AddStringToObject(e, "code", code);
    } else {
        cJSON_AddNullToObject(e, "code");
    }
    out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* Status line and common headers into h. length < 0: no Content-Length. */
static mls_status mls_http_head_build(mls_http_conn *c, mls_http_req *req, mls_buf *h, int status,
                                      const char *content_type, long long length, bool keep_alive)
{
    mls_status st =
        mls_buf_append_fmt(h, "HTTP/1.1 %d %s\r\n", status, mls_http_status_reason(status));

    if (st == MLS_OK && c->srv->server_name[0] != '\0') {
        st = mls_buf_append_fmt(h, "Server: %s\r\n", c->srv->server_name);
    }
    if (st == MLS_OK && content_type != NULL) {
        st = mls_buf_append_fmt(h, "Content-Type: %s\r\n", content_type);
    }
    if (st == MLS_OK && length >= 0) {
        st = mls_buf_append_fmt(h, "Content-Length: %lld\r\n", length);
    }
    if (st == MLS_OK && req != NULL && req->resp_hdrs.len > 0) {
        st = mls_buf_append(h, req->resp_hdrs.data, req->resp_hdrs.len);
    }
    if (st == MLS_OK) {
        st = mls_buf_append_fmt(h, "Connection: %s\r\n\r\n", keep_alive ? "keep-alive" : "close");
    }
    return st;
}

/* Answer a request the server refuses itself (400/408/413/414/431), then linger and close. */
static void mls_http_conn_reject(mls_http_conn *c, int status, const char *msg)
{
    mls_buf h = MLS_BUF_INIT(MLS_ALLOC_TAG_NET);
    char *body;

    if (c->closing || c->state == MLS_HTTP_CONN_LINGER) {
        return;
    }
    c->srv->stats.bad_requests++;
    mls_debug("http %s: answering %d: %s", c->peer, status, msg);
    if (c->req != NULL) {
        mls_http_req_free(c->req);
        c->req = NULL;
    }
    c->req_ready = false;
    mls_http_conn_set_state(c, MLS_HTTP_CONN_LINGER);
    c->in.len = 0;
    body = mls_http_error_body(status == 408 ? "timeout_error" : "invalid_request_error", NULL,
                               NULL, msg);
    if (body == NULL || mls_http_head_build(c, NULL, &h, status, "application/json",
                                            (long long)strlen(body), false) != MLS_OK) {
        free(body);
        mls_buf_free(&h);
        mls_http_conn_close(c);
        return;
    }
    c->close_when_flushed = true;
    (void)mls_http_conn_write3(c, h.data, h.len, body, strlen(body), NULL, 0);
    free(body);
    mls_buf_free(&h);
}

/* The handler completed c's current request: go on with pipelined input. */
static void mls_http_conn_request_done(mls_http_conn *c, bool keep_alive)
{
    c->req = NULL;
    c->req_ready = false;
    mls_http_conn_set_state(c, MLS_HTTP_CONN_IDLE);
    c->t_activity_ms = uv_now(c->srv->loop);
    if (!keep_alive || c->srv->shutting_down) {
        c->close_when_flushed = true;
        if (c->write_queued == 0) {
            mls_http_conn_close(c);
        }
        return;
    }
    mls_http_conn_process(c);
}

mls_status mls_http_req_add_header(mls_http_req *req, const char *name, const char *value)
{
    if (req->resp != MLS_HTTP_RESP_NONE || strpbrk(name, "\r\n:") != NULL ||
        strpbrk(value, "\r\n") != NULL || name[0] == '\0') {
        return MLS_ERR_INVALID_ARG;
    }
    if (mls_buf_append_fmt(&req->resp_hdrs, "%s: %s\r\n", name, value) != MLS_OK) {
        return MLS_ERR_NO_MEMORY;
    }
    return MLS_OK;
}

/* The handler gave req back: forget it on its connection, free it. */
static void mls_http_req_release(mls_http_req *req)
{
    mls_http_conn *c = req->conn;

    if (c != NULL && c->req == req) {
        c->req = NULL;
        mls_http_conn_set_state(c, MLS_HTTP_CONN_IDLE);
    }
    mls_http_req_free(req);
}

/* Completion after the client is gone (or going): free, report. */
static mls_status mls_http_req_complete_dead(mls_http_req *req)
{
    mls_http_req_release(req);
    return MLS_ERR_PEER_DEAD;
}

mls_status mls_http_req_respond(mls_http_req *req, int status, const char *content_type,
                                const void *body, size_t len)
{
    mls_http_conn *c = req->conn;
    mls_buf h = MLS_BUF_INIT(MLS_ALLOC_TAG_NET);
    mls_status st;
    bool keep_alive;

    if (c == NULL || c->closing) {
        return mls_http_req_complete_dead(req);
    }
    if (req->resp != MLS_HTTP_RESP_NONE) {
        return MLS_ERR_INVALID_ARG; /* streaming: use mls_http_req_stream_end */
    }
    keep_alive = req->keep_alive && !c->srv->shutting_down;
    if (mls_http_head_build(c, req, &h, status, content_type, (long long)len, keep_alive) != MLS_OK) {
        mls_buf_free(&h);
        mls_http_conn_close(c);
        mls_http_req_release(req);
        return MLS_ERR_NO_MEMORY;
    }
    st = mls_http_conn_write3(c, h.data, h.len, req->head_only ? NULL : body,
                              req->head_only ? 0 : len, NULL, 0);
    mls_buf_free(&h);
    mls_http_req_release(req);
    if (st == MLS_OK) {
        mls_http_conn_request_done(c, keep_alive);
    }
    return st;
}

mls_status mls_http_req_respond_error(mls_http_req *req, int status, const char *type,
                                      const char *param, const char *code, const char *msg)
{
    char *body = mls_http_error_body(type, param, code, msg);
    mls_status st;

    if (body == NULL) {
        return mls_http_req_respond(req, 500, "text/plain", "out of memory", 13);
    }
    st = mls_http_req_respond(req, status, "application/json", body, strlen(body));
    free(body);
    return st;
}

mls_status mls_http_req_stream_begin(mls_http_req *req, int status, const char *content_type)
{
    mls_http_conn *c = req->conn;
    mls_buf h = MLS_BUF_INIT(MLS_ALLOC_TAG_NET);
    mls_status st;
    bool keep_alive;

    if (c == NULL || c->closing) {
        return MLS_ERR_PEER_DEAD;
    }
    if (req->resp != MLS_HTTP_RESP_NONE) {
        return MLS_ERR_INVALID_ARG;
    }
    req->chunked = req->http_major == 1 && req->http_minor >= 1;
    keep_alive = req->keep_alive && req->chunked && !c->srv->shutting_down;
    req->keep_alive = keep_alive;
    if (req->chunked) {
        (void)mls_buf_append_str(&req->resp_hdrs, "Transfer-Encoding: chunked\r\n");
    }
    if (mls_http_head_build(c, req, &h, status, content_type, -1, keep_alive) != MLS_OK) {
        mls_buf_free(&h);
        mls_http_conn_close(c);
        return MLS_ERR_NO_MEMORY;
    }
    req->resp = MLS_HTTP_RESP_STREAMING;
    st = mls_http_conn_write3(c, h.data, h.len, NULL, 0, NULL, 0);
    mls_buf_free(&h);
    return st;
}

mls_status mls_http_req_stream_write(mls_http_req *req, const void *data, size_t len)
{
    mls_http_conn *c = req->conn;
    char size_line[24];
    int n;

    if (c == NULL || c->closing) {
        return MLS_ERR_PEER_DEAD;
    }
    if (req->resp != MLS_HTTP_RESP_STREAMING) {
        return MLS_ERR_INVALID_ARG;
    }
    if (len == 0 || req->head_only) {
        return MLS_OK; /* a zero-length chunk would end the stream */
    }
    if (!req->chunked) {
        return mls_http_conn_write3(c, data, len, NULL, 0, NULL, 0);
    }
    n = snprintf(size_line, sizeof(size_line), "%zx\r\n", len);
    return mls_http_conn_write3(c, size_line, (size_t)n, data, len, "\r\n", 2);
}

mls_status mls_http_req_stream_end(mls_http_req *req)
{
    mls_http_conn *c = req->conn;
    mls_status st = MLS_OK;
    bool keep_alive = req->keep_alive;

    if (c == NULL || c->closing) {
        return mls_http_req_complete_dead(req);
    }
    if (req->resp != MLS_HTTP_RESP_STREAMING) {
        /* Never started: answer with an empty 200 rather than leave the client hanging. */
        return mls_http_req_respond(req, 200, NULL, NULL, 0);
    }
    if (req->chunked && !req->head_only) {
        st = mls_http_conn_write3(c, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
    }
    mls_http_req_release(req);
    if (st == MLS_OK) {
        mls_http_conn_request_done(c, keep_alive);
    }
    return st;
}

mls_status mls_http_req_sse_begin(mls_http_req *req, int status)
{
    mls_status st;

    if (req->resp == MLS_HTTP_RESP_NONE) {
        st = mls_http_req_add_header(req, "Cache-Control", "no-cache");
        if (st != MLS_OK) {
            return st;
        }
        st = mls_http_req_add_header(req, "X-Accel-Buffering", "no");
        if (st != MLS_OK) {
            return st;
        }
    }
    return mls_http_req_stream_begin(req, status, "text/event-stream; charset=utf-8");
}

mls_status mls_http_req_sse_send(mls_http_req *req, const char *data, size_t len)
{
    mls_http_conn *c = req->conn;
    char size_line[24];
    int n;

    if (c == NULL || c->closing) {
        return MLS_ERR_PEER_DEAD;
    }
    if (req->resp != MLS_HTTP_RESP_STREAMING || memchr(data, '\n', len) != NULL ||
        memchr(data, '\r', len) != NULL) {
        return MLS_ERR_INVALID_ARG;
    }
    if (req->head_only) {
        return MLS_OK;
    }
    if (!req->chunked) {
        return mls_http_conn_write3(c, "data: ", 6, data, len, "\n\n", 2);
    }
    /* One chunk holding one event: "<hex>\r\ndata: <data>\n\n\r\n". */
    n = snprintf(size_line, sizeof(size_line), "%zx\r\ndata: ", len + 8);
    return mls_http_conn_write3(c, size_line, (size_t)n, data, len, "\n\n\r\n", 4);
}

/* ---- parser callbacks ---------------------------------------------------------- */

static mls_http_conn *mls_http_parser_conn(llhttp_t *p)
{
    return p->data;
}

/* Count head bytes; refuse (431, or 414 for the URL) over the limit. */
static int mls_http_head_grow(mls_http_conn *c, size_t len, bool is_url)
{
    c->req->head_bytes += len;
    if (c->req->head_bytes > c->srv->cfg.max_header_bytes) {
        c->reject_status = is_url ? 414 : 431;
        c->reject_msg = is_url ? "request target exceeds the server's header size limit"
                               : "request header fields exceed the server's size limit";
        return -1;
    }
    return 0;
}

static int mls_http_on_message_begin(llhttp_t *p)
{
    mls_http_conn *c = mls_http_parser_conn(p);

    c->req = mls_http_req_new(c);
    if (c->req == NULL) {
        c->reject_status = 503;
        c->reject_msg = "out of memory";
        return -1;
    }
    mls_http_conn_set_state(c, MLS_HTTP_CONN_READING);
    c->t_request_ms = uv_now(c->srv->loop);
    return 0;
}

static int mls_http_on_url(llhttp_t *p, const char *at, size_t len)
{
    mls_http_conn *c = mls_http_parser_conn(p);

    if (mls_http_head_grow(c, len, true) != 0) {
        return -1;
    }
    return mls_buf_append(&c->req->url, at, len) == MLS_OK ? 0 : -1;
}

static int mls_http_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    mls_http_conn *c = mls_http_parser_conn(p);
    mls_http_req *req = c->req;

    if (mls_http_head_grow(c, len, false) != 0) {
        return -1;
    }
    if (!req->in_field) {
        if (req->n_hdr >= c->srv->cfg.max_headers) {
            c->reject_status = 431;
            c->reject_msg = "too many request header fields";
            return -1;
        }
        req->in_field = 1;
        req->field_start = (uint32_t)req->hdrs.len;
    }
    return mls_buf_append(&req->hdrs, at, len) == MLS_OK ? 0 : -1;
}

static int mls_http_on_header_field_complete(llhttp_t *p)
{
    mls_http_req *req = mls_http_parser_conn(p)->req;

    if (!req->in_field) { /* empty field name: llhttp refuses those, be safe */
        req->field_start = (uint32_t)req->hdrs.len;
    }
    req->in_field = 0;
    if (mls_buf_append(&req->hdrs, "", 1) != MLS_OK) {
        return -1;
    }
    req->hdr[req->n_hdr].name = req->field_start;
    req->hdr[req->n_hdr].value = (uint32_t)req->hdrs.len;
    return 0;
}

static int mls_http_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    mls_http_conn *c = mls_http_parser_conn(p);

    if (mls_http_head_grow(c, len, false) != 0) {
        return -1;
    }
    return mls_buf_append(&c->req->hdrs, at, len) == MLS_OK ? 0 : -1;
}

static int mls_http_on_header_value_complete(llhttp_t *p)
{
    mls_http_req *req = mls_http_parser_conn(p)->req;

    if (mls_buf_append(&req->hdrs, "", 1) != MLS_OK) {
        return -1;
    }
    req->n_hdr++;
    return 0;
}

static int mls_http_on_headers_complete(llhttp_t *p)
{
    mls_http_conn *c = mls_http_parser_conn(p);
    mls_http_req *req = c->req;
    const char *expect;
    char *q;

    snprintf(req->method, sizeof(req->method), "%s",
             llhttp_method_name((llhttp_method_t)llhttp_get_method(p)));
    req->http_major = llhttp_get_http_major(p);
    req->http_minor = llhttp_get_http_minor(p);
    req->keep_alive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
    req->head_only = strcmp(req->method, "HEAD") == 0;
    /* Split the target into path and query. */
    if (req->url.data == NULL && mls_buf_append(&req->url, "", 0) != MLS_OK) {
        return -1;
    }
    q = strchr(req->url.data, '?');
    if (q != NULL) {
        *q = '\0';
        req->query = q + 1;
    } else {
        req->query = "";
    }
    req->path = req->url.data;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->srv->cfg.max_body_bytes) {
        c->reject_status = 413;
        c->reject_msg = "request body exceeds the server's size limit";
        return -1;
    }
    expect = mls_http_req_header(req, "Expect");
    if (expect != NULL && strcasecmp(expect, "100-continue") == 0 && req->http_minor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (mls_http_conn_write3(c, cont, sizeof(cont) - 1, NULL, 0, NULL, 0) != MLS_OK) {
            return -1;
        }
    }
    return 0;
}

static int mls_http_on_body(llhttp_t *p, const char *at, size_t len)
{
    mls_http_conn *c = mls_http_parser_conn(p);
    mls_http_req *req = c->req;

    if (req->body.len + len > c->srv->cfg.max_body_bytes) {
        c->reject_status = 413;
        c->reject_msg = "request body exceeds the server's size limit";
        return -1;
    }
    return mls_buf_append(&req->body, at, len) == MLS_OK ? 0 : -1;
}

static int mls_http_on_message_complete(llhttp_t *p)
{
    mls_http_conn *c = mls_http_parser_conn(p);

    if (c->req->body.data == NULL && mls_buf_append(&c->req->body, "", 0) != MLS_OK) {
        return -1;
    }
    c->req_ready = true;
    return HPE_PAUSED; /* one request at a time: resume after it is answered */
}

static void mls_http_settings_init_once(void)
{
    if (mls_http_settings_ready) {
        return;
    }
    llhttp_settings_init(&mls_http_settings);
    mls_http_settings.on_message_begin = mls_http_on_message_begin;
    mls_http_settings.on_url = mls_http_on_url;
    mls_http_settings.on_header_field = mls_http_on_header_field;
    mls_http_settings.on_header_field_complete = mls_http_on_header_field_complete;
    mls_http_settings.on_header_value = mls_http_on_header_value;
    mls_http_settings.on_header_value_complete = mls_http_on_header_value_complete;
    mls_http_settings.on_headers_complete = mls_http_on_headers_complete;
    mls_http_settings.on_body = mls_http_on_body;
    mls_http_settings.on_message_complete = mls_http_on_message_complete;
    mls_http_settings_ready = 1;
}

/* ---- connections --------------------------------------------------------------- */

static void mls_http_server_maybe_free(mls_http_server *srv)
{
    if (srv->shutting_down && srv->listener_closed && srv->conns == NULL) {
        mls_free(MLS_ALLOC_TAG_NET, srv->addr_buckets,
                 sizeof(*srv->addr_buckets) * ((size_t)srv->addr_mask + 1));
        mls_free(MLS_ALLOC_TAG_NET, srv, sizeof(*srv));
    }
}

static void mls_http_conn_handle_closed(uv_handle_t *h)
{
    mls_http_conn *c = h->data;
    mls_http_server *srv = c->srv;
    mls_http_req *req = c->req;

    if (--c->handles_open > 0) {
        return;
    }
    /* Unlink first: the close callback below may call into the server. */
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        srv->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    srv->stats.connections_open--;
    c->req = NULL;
    if (req != NULL) {
        if (c->state == MLS_HTTP_CONN_HANDLING) {
            /* The handler owns it: detach and tell the owner. */
            req->conn = NULL;
            req->disconnected = true;
            srv->stats.client_disconnects++;
            if (req->on_close != NULL) {
                req->on_close(req, req->owner);
            }
        } else {
            mls_http_req_free(req);
        }
    }
    mls_buf_free(&c->in);
    mls_free(MLS_ALLOC_TAG_NET, c, sizeof(*c));
    mls_http_server_maybe_free(srv);
}

static void mls_http_conn_close(mls_http_conn *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    mls_http_conn_forget(c);
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, mls_http_conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, mls_http_conn_handle_closed);
}

/* An IDLE connection's deadline: the first-byte timeout until the client sent
 * something, then the keep-alive idle timeout. */
static uint64_t mls_http_conn_idle_deadline(const mls_http_conn *c)
{
    const mls_http_config *cfg = &c->srv->cfg;
    uint32_t ms = cfg->idle_timeout_ms;

    if (!c->got_byte && cfg->first_byte_timeout_ms > 0 && cfg->first_byte_timeout_ms < ms) {
        ms = cfg->first_byte_timeout_ms;
    }
    return c->t_activity_ms + ms;
}

static void mls_http_conn_timer_cb(uv_timer_t *t)
{
    mls_http_conn *c = t->data;
    const mls_http_config *cfg = &c->srv->cfg;
    uint64_t now = uv_now(c->srv->loop);

    if (c->closing) {
        return;
    }
    if (c->write_queued > 0 && now >= c->t_write_ms + cfg->write_timeout_ms) {
        mls_debug("http %s: no write progress for %u ms, dropping the client", c->peer,
                  cfg->write_timeout_ms);
        mls_http_conn_close(c);
        return;
    }
    switch (c->state) {
    case MLS_HTTP_CONN_IDLE:
        if (now >= mls_http_conn_idle_deadline(c)) {
            if (!c->got_byte) {
                mls_debug("http %s: nothing sent within %u ms, closing", c->peer,
                          cfg->first_byte_timeout_ms);
            }
            mls_http_conn_close(c);
            return;
        }
        break;
    case MLS_HTTP_CONN_READING:
        if (now >= c->t_request_ms + cfg->request_timeout_ms) {
            mls_http_conn_reject(c, 408, "request not received in time");
            return;
        }
        break;
    case MLS_HTTP_CONN_LINGER:
        if (c->write_queued == 0 && now >= c->t_linger_ms + MLS_HTTP_LINGER_MS) {
            mls_http_conn_close(c);
            return;
        }
        break;
    case MLS_HTTP_CONN_HANDLING:
        break;
    }
    mls_http_conn_timer_update(c);
}

static void mls_http_conn_timer_update(mls_http_conn *c)
{
    const mls_http_config *cfg = &c->srv->cfg;
    uint64_t now, deadline;

    if (c->closing) {
        return;
    }
    now = uv_now(c->srv->loop);
    if (c->write_queued > 0) {
        deadline = c->t_write_ms + cfg->write_timeout_ms;
    } else if (c->state == MLS_HTTP_CONN_IDLE) {
        deadline = mls_http_conn_idle_deadline(c);
    } else if (c->state == MLS_HTTP_CONN_READING) {
        deadline = c->t_request_ms + cfg->request_timeout_ms;
    } else if (c->state == MLS_HTTP_CONN_LINGER) {
        deadline = c->t_linger_ms + MLS_HTTP_LINGER_MS;
    } else {
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, mls_http_conn_timer_cb, deadline > now ? deadline - now : 0, 0);
}

static void mls_http_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char slab[MLS_HTTP_READ_BUF_BYTES]; /* single-threaded loop: one slab suffices */

    (void)h;
    (void)suggested;
    *buf = uv_buf_init(slab, sizeof(slab));
}

static void mls_http_conn_read_start(mls_http_conn *c);

static void mls_http_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mls_http_conn *c = s->data;

    if (nread == 0) {
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF) {
            mls_debug("http %s: read: %s", c->peer, uv_strerror((int)nread));
        }
        mls_http_conn_close(c);
        return;
    }
    c->srv->stats.bytes_in += (uint64_t)nread;
    c->got_byte = true;
    c->t_activity_ms = uv_now(c->srv->loop);
    if (c->state == MLS_HTTP_CONN_LINGER) {
        return; /* draining after an error answer */
    }
    if (mls_buf_append(&c->in, buf->base, (size_t)nread) != MLS_OK) {
        mls_http_conn_close(c);
        return;
    }
    if (c->state == MLS_HTTP_CONN_HANDLING) {
        /* Pipelined bytes wait for the current request; bound the read-ahead. */
        if (c->in.len > MLS_HTTP_READ_AHEAD_BYTES && c->reading) {
            uv_read_stop(s);
            c->reading = false;
        }
        return;
    }
    mls_http_conn_process(c);
}

static void mls_http_conn_read_start(mls_http_conn *c)
{
    int rc;

    if (c->reading || c->closing) {
        return;
    }
    rc = uv_read_start((uv_stream_t *)&c->tcp, mls_http_alloc_cb, mls_http_read_cb);
    if (rc != 0) {
        mls_debug("http %s: read start: %s", c->peer, uv_strerror(rc));
        mls_http_conn_close(c);
        return;
    }
    c->reading = true;
}

static void mls_http_conn_dispatch(mls_http_conn *c)
{
    mls_http_req *req = c->req;

    c->req_ready = false;
    mls_http_conn_set_state(c, MLS_HTTP_CONN_HANDLING);
    c->srv->stats.requests++;
    mls_http_conn_timer_update(c);
    c->srv->handler(req, c->srv->user); /* may complete req before returning */
}

/* Parse buffered input until it is used up or a request is being handled. */
static void mls_http_conn_process(mls_http_conn *c)
{
    size_t off = 0;

    if (c->in_process) {
        return; /* a handler completed its request from inside dispatch: the loop goes on */
    }
    c->in_process = true;
    while (!c->closing && !c->close_when_flushed && c->state != MLS_HTTP_CONN_HANDLING &&
           c->state != MLS_HTTP_CONN_LINGER && off < c->in.len) {
        const char *data = c->in.data + off;
        size_t len = c->in.len - off;
        llhttp_errno_t e = llhttp_execute(&c->parser, data, len);

        if (e == HPE_OK) {
            off += len;
        } else if (e == HPE_PAUSED && c->req_ready) {
            off += (size_t)(llhttp_get_error_pos(&c->parser) - data);
            llhttp_resume(&c->parser);
            mls_http_conn_dispatch(c);
        } else {
            char msg[160];
            int status = c->reject_status ? c->reject_status : 400;
            if (c->reject_status) {
                snprintf(msg, sizeof(msg), "%s", c->reject_msg);
            } else {
                snprintf(msg, sizeof(msg), "malformed HTTP request: %s (%s)",
                         llhttp_get_error_reason(&c->parser), llhttp_errno_name(e));
            }
            mls_http_conn_reject(c, status, msg);
            break;
        }
    }
    if (c->state == MLS_HTTP_CONN_LINGER) {
        c->in.len = 0;
    } else if (off > 0) {
        memmove(c->in.data, c->in.data + off, c->in.len - off);
        c->in.len -= off;
    }
    c->in_process = false;
    if (!c->closing && c->state != MLS_HTTP_CONN_HANDLING) {
        mls_http_conn_read_start(c);
    }
    mls_http_conn_timer_update(c);
}

static void mls_http_on_connection(uv_stream_t *listener, int status)
{
    mls_http_server *srv = listener->data;
    mls_http_conn *c;
    struct sockaddr_storage sa;
    int salen = sizeof(sa);

    if (status < 0) {
        mls_warn("http: accept: %s", uv_strerror(status));
        return;
    }
    c = mls_alloc(MLS_ALLOC_TAG_NET, sizeof(*c));
    if (c == NULL) {
        mls_error("http: out of memory accepting a connection");
        return;
    }
    c->srv = srv;
    mls_buf_init(&c->in, MLS_ALLOC_TAG_NET);
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->next = srv->conns;
    if (srv->conns != NULL) {
        srv->conns->prev = c;
    }
    srv->conns = c;
    srv->stats.connections_open++;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
        mls_http_conn_close(c);
        return;
    }
    srv->stats.connections_accepted++;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&sa, &salen) == 0) {
        char ip[INET6_ADDRSTRLEN] = "";
        int port = 0;
        if (sa.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&sa, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
            c->addr[0] = 4;
            memcpy(c->addr + 1, &((struct sockaddr_in *)&sa)->sin_addr, 4);
        } else if (sa.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&sa, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
            c->addr[0] = 6;
            memcpy(c->addr + 1, &((struct sockaddr_in6 *)&sa)->sin6_addr, 16);
        }
        snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
    }
    /* one address may not take every slot; then the cap, idle ones making room */
    if (srv->cfg.max_connections_per_addr > 0 &&
        mls_http_addr_count(srv, c->addr) >= srv->cfg.max_connections_per_addr) {
        mls_debug("http %s: refused: %u connections from this address already", c->peer,
                  srv->cfg.max_connections_per_addr);
        srv->stats.connections_refused_per_addr++;
        mls_http_conn_close(c);
        return;
    }
    if (srv->n_active >= srv->cfg.max_connections && !mls_http_evict_idle(srv)) {
        mls_debug("http %s: refused: %u connections open, none idle", c->peer, srv->n_active);
        srv->stats.connections_refused++;
        mls_http_conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &mls_http_settings);
    c->parser.data = c;
    c->state = MLS_HTTP_CONN_IDLE;
    c->t_activity_ms = uv_now(srv->loop);
    mls_http_conn_admit(c); /* counted, and on the idle list */
    mls_http_conn_read_start(c);
    mls_http_conn_timer_update(c);
}

/* ---- server ---------------------------------------------------------------- */

static void mls_http_listener_closed(uv_handle_t *h);

mls_status mls_http_server_create(uv_loop_t *loop, const mls_http_config *cfg,
                                  mls_http_handler_fn handler, void *user,
                                  mls_http_server **server_p, mls_err *err)
{
    mls_http_server *srv;
    struct sockaddr_storage sa;
    int salen = sizeof(sa);
    int rc;

    if (cfg->host == NULL || handler == NULL || cfg->port < 0 || cfg->port > 65535 ||
        cfg->max_headers == 0 || cfg->max_header_bytes == 0 || cfg->max_write_queue_bytes == 0) {
        mls_err_set(err, "http: invalid server configuration");
        return MLS_ERR_INVALID_ARG;
    }
    mls_http_settings_init_once();
    srv = mls_alloc(MLS_ALLOC_TAG_NET, sizeof(*srv));
    if (srv == NULL) {
        mls_err_set(err, "http: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    srv->loop = loop;
    srv->cfg = *cfg;
    snprintf(srv->host, sizeof(srv->host), "%s", cfg->host);
    snprintf(srv->server_name, sizeof(srv->server_name), "%s",
             cfg->server_name != NULL ? cfg->server_name : "");
    srv->cfg.host = srv->host;
    srv->cfg.server_name = srv->server_name;
    srv->handler = handler;
    srv->user = user;
    if (uv_ip4_addr(cfg->host, cfg->port, (struct sockaddr_in *)&sa) != 0 &&
        uv_ip6_addr(cfg->host, cfg->port, (struct sockaddr_in6 *)&sa) != 0) {
        mls_err_set(err, "http: '%s' is not an IPv4 or IPv6 address", cfg->host);
        mls_free(MLS_ALLOC_TAG_NET, srv, sizeof(*srv));
        return MLS_ERR_INVALID_ARG;
    }
    /* address table: about one chain per two connections, 64 to 64k chains */
    srv->addr_mask = 63;
    while (srv->addr_mask < 65535 && srv->addr_mask + 1 < cfg->max_connections / 2) {
        srv->addr_mask = srv->addr_mask * 2 + 1;
    }
    srv->addr_buckets = mls_alloc(MLS_ALLOC_TAG_NET,
                                  sizeof(*srv->addr_buckets) * ((size_t)srv->addr_mask + 1));
    if (srv->addr_buckets == NULL) {
        mls_err_set(err, "http: out of memory");
        mls_free(MLS_ALLOC_TAG_NET, srv, sizeof(*srv));
        return MLS_ERR_NO_MEMORY;
    }
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&sa, 0);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&srv->listener, cfg->backlog > 0 ? cfg->backlog : 511,
                       mls_http_on_connection);
    }
    if (rc == 0) {
        rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&sa, &salen);
    }
    if (rc != 0) {
        mls_err_set(err, "http: cannot listen on %s:%d: %s", cfg->host, cfg->port,
                    uv_strerror(rc));
        /* The handle must outlive uv_close: srv is freed by the close callback
         * the next time the loop runs. */
        srv->shutting_down = true;
        uv_close((uv_handle_t *)&srv->listener, mls_http_listener_closed);
        return MLS_ERR_IO;
    }
    srv->port = sa.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&sa)->sin6_port)
                                         : ntohs(((struct sockaddr_in *)&sa)->sin_port);
    mls_info("http: listening on %s:%d", cfg->host, srv->port);
    *server_p = srv;
    return MLS_OK;
}

int mls_http_server_port(const mls_http_server *srv)
{
    return srv->port;
}

uv_loop_t *mls_http_server_loop(const mls_http_server *srv)
{
    return srv->loop;
}

void mls_http_server_stats(const mls_http_server *srv, mls_http_stats *stats_p)
{
    *stats_p = srv->stats;
}

static void mls_http_listener_closed(uv_handle_t *h)
{
    mls_http_server *srv = h->data;

    srv->listener_closed = true;
    mls_http_server_maybe_free(srv);
}

void mls_http_server_shutdown(mls_http_server *srv)
{
    mls_http_conn *c, *next;

    if (srv->shutting_down) {
        return;
    }
    srv->shutting_down = true;
    uv_close((uv_handle_t *)&srv->listener, mls_http_listener_closed);
    for (c = srv->conns; c != NULL; c = next) {
        next = c->next;
        mls_http_conn_close(c);
    }
}
