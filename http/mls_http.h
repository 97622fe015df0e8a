/*
 * mls_http.h - a small HTTP/1.1 server on libuv, for the router's OpenAI API
 * and the nodes' /metrics and /health.
 *
 * Parsing is llhttp (Debian's node-llhttp sources, compiled in). What it does:
 *   - keep-alive and pipelining: requests on one connection are handed to the
 *     handler one at a time, in order; the next is parsed only after the
 *     current one's response is complete, so responses never interleave.
 *   - limits: header block (request line + headers) over max_header_bytes or
 *     more than max_headers fields -> 431; a body over max_body_bytes -> 413,
 *     refused from Content-Length before any of it is buffered. Malformed HTTP
 *     -> 400. These answers carry an OpenAI-style JSON error and close the
 *     connection; other connections are not disturbed.
 *   - connections: at most max_connections_per_addr from one client address
 *     (more are closed at once); at max_connections in all, the connection
 *     idle longest (no request in progress, nothing queued) is closed to make
 *     room for the new one, which is refused only when none is idle.
 *   - timeouts: a new connection that sends nothing within
 *     first_byte_timeout_ms is closed; an idle keep-alive connection is
 *     closed after idle_timeout_ms;
 *     a request whose head and body do not arrive within request_timeout_ms
 *     gets 408 (slow clients); a client that stops reading while output is
 *     queued is dropped after write_timeout_ms.
 *   - responses: whole (Content-Length), streamed (chunked transfer encoding,
 *     or close-delimited for HTTP/1.0), and Server-Sent Events on top of that.
 *     Output is queued in libuv; mls_http_req_write_queued() and the drain
 *     callback let a producer slow down, and a client that lets more than
 *     max_write_queue_bytes pile up is dropped.
 *   - disconnect: if the client goes away (EOF, reset, timeout, shutdown)
 *     before the response is complete, the request's close callback runs, so
 *     its owner can cancel the work.
 *
 * http/ owns the HTTP server and the Prometheus registry (mls_prom.h) that the
 * router and the nodes serve through; it may include common/ only (and libuv,
 * llhttp, cJSON): it knows nothing of OpenAI, the engine or the cluster.
 *
 * Threading: single-threaded. Everything, including every mls_http_req_* call,
 * happens on the server's loop thread.
 *
 * Request lifetime (the contract the router daemon builds on):
 *   The handler receives an mls_http_req and from then on owns it until it
 *   completes the response exactly once, with mls_http_req_respond(),
 *   mls_http_req_respond_error() or mls_http_req_stream_end() - possibly much
 *   later, from another callback on the same loop. The request is freed by
 *   that completing call; it must not be touched afterwards. If the client
 *   disconnects first, the close callback runs (once, asynchronously, never
 *   from inside an mls_http_req_* call); writes then return
 *   MLS_ERR_PEER_DEAD, and the owner must still complete the request (any
 *   completing call) to free it.
 */
#ifndef MLS_HTTP_H
#define MLS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "mls_status.h"

typedef struct mls_http_server mls_http_server;
typedef struct mls_http_req mls_http_req;

typedef struct {
    const char *host;               /* "127.0.0.1", "0.0.0.0", "::" */
    int port;                       /* 0 = pick one; see mls_http_server_port */
    int backlog;
    uint32_t max_connections;       /* open at once; idle ones make room, see above */
    uint32_t max_connections_per_addr; /* from one client address; 0 = no limit */
    uint32_t max_header_bytes;      /* request line + header fields and values */
    uint32_t max_headers;           /* header fields per request */
    uint64_t max_body_bytes;
    uint32_t idle_timeout_ms;       /* keep-alive connection with no request */
    uint32_t first_byte_timeout_ms; /* a new connection's first byte; 0 = idle_timeout_ms */
    uint32_t request_timeout_ms;    /* first byte of a request to its last */
    uint32_t write_timeout_ms;      /* output queued without progress */
    size_t write_high_water_bytes;  /* mls_http_req_writable() false above this */
    size_t max_write_queue_bytes;   /* a client that lets more pile up is dropped */
    const char *server_name;        /* "Server:" header; NULL = none */
} mls_http_config;

/* Defaults: 127.0.0.1:0, 1024 connections (64 per client address), 16 KiB /
 * 100 headers, 4 MiB body, 5 s to the first byte, 60 s idle, 30 s request,
 * 30 s write, 256 KiB high water, 16 MiB queue cap. */
void mls_http_config_default(mls_http_config *cfg);

/* Called on the loop thread for each complete request; see the lifetime contract. */
typedef void (*mls_http_handler_fn)(mls_http_req *req, void *user);

/*
 * Bind and listen on loop. The server runs as long as the loop runs.
 * MLS_ERR_IO with the cause in err when the address cannot be bound.
 */
mls_status mls_http_server_create(uv_loop_t *loop, const mls_http_config *cfg,
                                  mls_http_handler_fn handler, void *user,
                                  mls_http_server **server_p, mls_err *err);

/* The bound port (useful with port 0). */
int mls_http_server_port(const mls_http_server *server);
uv_loop_t *mls_http_server_loop(const mls_http_server *server);

/*
 * Stop listening and close every connection (requests in flight get their
 * close callback). The server frees itself once its handles are closed; the
 * handle must not be used after this call. Requests still owned by handlers
 * stay valid until completed.
 */
void mls_http_server_shutdown(mls_http_server *server);

typedef struct {
    uint64_t connections_accepted;
    uint64_t connections_open;
    uint64_t connections_refused;   /* at max_connections with none idle */
    uint64_t connections_refused_per_addr; /* over max_connections_per_addr */
    uint64_t connections_evicted;   /* idle ones closed to make room */
    uint64_t requests;              /* handed to the handler */
    uint64_t bad_requests;          /* 400/408/413/431 answered by the server itself */
    uint64_t client_disconnects;    /* close callbacks delivered */
    uint64_t bytes_in, bytes_out;
} mls_http_stats;

void mls_http_server_stats(const mls_http_server *server, mls_http_stats *stats_p);

/* ---- the request --------------------------------------------------------- */

/* "GET", "POST", ... */
const char *mls_http_req_method(const mls_http_req *req);
/* The path without the query string, e.g. "/v1/completions". */
const char *mls_http_req_path(const mls_http_req *req);
/* The query string without '?', "" when there is none. */
const char *mls_http_req_query(const mls_http_req *req);
/* First header with this name (case-insensitive), or NULL. */
const char *mls_http_req_header(const mls_http_req *req, const char *name);
/* Body bytes (NUL-terminated for convenience; len excludes the NUL). */
const char *mls_http_req_body(const mls_http_req *req, size_t *len_p);
/* Peer address "1.2.3.4:5678" ("" when unknown). */
const char *mls_http_req_peer(const mls_http_req *req);
/* Monotonic time (ns, mls_now_ns) at which the request's first byte arrived. */
uint64_t mls_http_req_start_ns(const mls_http_req *req);

/* Opaque pointer for the owner; the callbacks receive it. */
typedef void (*mls_http_close_fn)(mls_http_req *req, void *owner);
typedef void (*mls_http_drain_fn)(mls_http_req *req, void *owner);

/*
 * on_close: the client went away before the response was complete.
 * on_drain: the write queue fell below the high-water mark after having been
 * above it (a producer that paused may resume). Either may be NULL.
 */
void mls_http_req_set_callbacks(mls_http_req *req, mls_http_close_fn on_close,
                                mls_http_drain_fn on_drain, void *owner);

/* True once the client has gone away (writes are then refused). */
bool mls_http_req_disconnected(const mls_http_req *req);

/*
 * Add a response header (before the response starts). Name and value are
 * copied; CR/LF in either is refused (MLS_ERR_INVALID_ARG).
 */
mls_status mls_http_req_add_header(mls_http_req *req, const char *name, const char *value);

/* Complete the request with a whole response. content_type NULL = no header.
 * MLS_ERR_PEER_DEAD when the client is gone (the request is freed anyway). */
mls_status mls_http_req_respond(mls_http_req *req, int status, const char *content_type,
                                const void *body, size_t len);

/* Complete the request with an OpenAI-style error body:
 * {"error":{"message":msg,"type":type,"param":param|null,"code":code|null}}. */
mls_status mls_http_req_respond_error(mls_http_req *req, int status, const char *type,
                                      const char *param, const char *code, const char *msg);

/* Start a streamed response (chunked on HTTP/1.1, close-delimited on 1.0). */
mls_status mls_http_req_stream_begin(mls_http_req *req, int status, const char *content_type);
/* Queue len bytes (len 0 is a no-op). MLS_ERR_PEER_DEAD once the client is gone. */
mls_status mls_http_req_stream_write(mls_http_req *req, const void *data, size_t len);
/* Finish the stream and complete the request (frees it). */
mls_status mls_http_req_stream_end(mls_http_req *req);

/* Server-Sent Events: stream_begin with text/event-stream and no-cache headers. */
mls_status mls_http_req_sse_begin(mls_http_req *req, int status);
/* One event: "data: <data>\n\n" (data must not contain a newline: JSON from
 * cJSON_PrintUnformatted never does; MLS_ERR_INVALID_ARG otherwise). */
mls_status mls_http_req_sse_send(mls_http_req *req, const char *data, size_t len);

/* Bytes queued to this client and not yet written. */
size_t mls_http_req_write_queued(const mls_http_req *req);
/* False while the queue is above the high-water mark (or the client is gone). */
bool mls_http_req_writable(const mls_http_req *req);

/* "OK", "Not Found", ... ("Unknown" for unlisted codes). */
const char *mls_http_status_reason(int status);

#endif
