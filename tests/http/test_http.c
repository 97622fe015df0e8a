/*
 * test_http.c - the HTTP/1.1 layer over real sockets: a server on
 * 127.0.0.1:0 in its own thread with a small in-test handler, and a blocking
 * client in the test thread. Covers keep-alive, pipelining, malformed HTTP,
 * size limits (431/413), request timeout (408), OpenAI error JSON for bad
 * JSON and bad parameters, SSE streaming chunk by chunk, and the cancel
 * callback on client disconnect; the connection limits: 1100 idle connections
 * from 127.0.0.1 do not lock out a client from 127.0.0.2 and are closed by the
 * first-byte timeout, the per-address limit, idle connections evicted at the
 * cap (oldest first) and refusal when none is idle. Every socket read has a
 * timeout.
 */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include "mls_alloc.h"
#include "mls_http.h"
#include "mls_num.h"
#include "mls_oai.h"
#include "mls_test.h"

/* ---- the server side (runs on the server thread) --------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    mls_http_server *srv;
    pthread_t thread;
    int port;
    atomic_int canceled;        /* close callbacks seen by stream jobs */
    atomic_int stream_sent;     /* events sent by the endless stream */
    atomic_int flood_events;    /* events queued by /flood before backpressure */
    atomic_int flood_paused;    /* /flood saw mls_http_req_writable() turn false */
    atomic_int flood_drained;   /* /flood got its drain callback */
    atomic_int flood_max_queued; /* largest write queue /flood saw */
    mls_http_stats stats;       /* snapshot taken at shutdown */
} test_server;

typedef struct {
    uv_timer_t timer;
    mls_http_req *req;
    test_server *ts;
    int n, i;
    int forever;
} sse_job;

static void sse_job_free(uv_handle_t *h)
{
    free(h->data);
}

static void sse_job_on_close(mls_http_req *req, void *owner)
{
    sse_job *job = owner;

    atomic_fetch_add(&job->ts->canceled, 1);
    uv_timer_stop(&job->timer);
    (void)mls_http_req_stream_end(req); /* completes (frees) the request */
    job->req = NULL;
    uv_close((uv_handle_t *)&job->timer, sse_job_free);
}

static void sse_job_tick(uv_timer_t *t)
{
    sse_job *job = t->data;
    char ev[64];
    int n;

    if (job->forever || job->i < job->n) {
        n = snprintf(ev, sizeof(ev), "{\"i\":%d}", job->i++);
        if (mls_http_req_sse_send(job->req, ev, (size_t)n) != MLS_OK) {
            return; /* the close callback follows */
        }
        if (job->forever) {
            atomic_fetch_add(&job->ts->stream_sent, 1);
        }
        return;
    }
    (void)mls_http_req_sse_send(job->req, MLS_OAI_SSE_DONE, 6);
    (void)mls_http_req_stream_end(job->req);
    job->req = NULL;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, sse_job_free);
}

typedef struct {
    uv_timer_t timer;
    mls_http_req *req;
} slow_job;

static void slow_job_free(uv_handle_t *h)
{
    free(h->data);
}

static void slow_job_fire(uv_timer_t *t)
{
    slow_job *job = t->data;

    (void)mls_http_req_respond(job->req, 200, "text/plain", "slow", 4);
    uv_close((uv_handle_t *)t, slow_job_free);
}

#define FLOOD_EVENT_BYTES (16 * 1024)
#define FLOOD_EVENTS      600          /* ~9.8 MB: more than socket buffers hold */

/* Send until done or backpressure; resumed from the drain callback. */
static void flood_pump(mls_http_req *req, test_server *ts)
{
    static char ev[FLOOD_EVENT_BYTES];

    memset(ev, 'x', sizeof(ev));
    while (atomic_load(&ts->flood_events) < FLOOD_EVENTS) {
        size_t q;
        if (!mls_http_req_writable(req)) {
            atomic_fetch_add(&ts->flood_paused, 1);
            return; /* wait for the drain callback */
        }
        if (mls_http_req_sse_send(req, ev, sizeof(ev)) != MLS_OK) {
            return;
        }
        atomic_fetch_add(&ts->flood_events, 1);
        q = mls_http_req_write_queued(req);
        if ((int)q > atomic_load(&ts->flood_max_queued)) {
            atomic_store(&ts->flood_max_queued, (int)q);
        }
    }
    (void)mls_http_req_sse_send(req, MLS_OAI_SSE_DONE, 6);
    (void)mls_http_req_stream_end(req);
}

static void flood_on_drain(mls_http_req *req, void *owner)
{
    test_server *ts = owner;

    atomic_fetch_add(&ts->flood_drained, 1);
    flood_pump(req, ts);
}

static void flood_on_close(mls_http_req *req, void *owner)
{
    (void)owner;
    (void)mls_http_req_stream_end(req);
}

static void flood_start(mls_http_req *req, test_server *ts)
{
    mls_http_req_set_callbacks(req, flood_on_close, flood_on_drain, ts);
    (void)mls_http_req_sse_begin(req, 200);
    flood_pump(req, ts);
}

static void test_handler(mls_http_req *req, void *user)
{
    test_server *ts = user;
    const char *path = mls_http_req_path(req);
    const char *method = mls_http_req_method(req);
    mls_oai_error oerr;

    if (strcmp(path, "/hello") == 0) {
        char body[256];
        int n = snprintf(body, sizeof(body), "hello %s?%s", method, mls_http_req_query(req));
        (void)mls_http_req_add_header(req, "X-Test", "yes");
        (void)mls_http_req_respond(req, 200, "text/plain", body, (size_t)n);
    } else if (strcmp(path, "/echo") == 0) {
        size_t len;
        const char *body = mls_http_req_body(req, &len);
        (void)mls_http_req_respond(req, 200, "application/octet-stream", body, len);
    } else if (strcmp(path, "/flood") == 0) {
        flood_start(req, ts);
    } else if (strcmp(path, "/slow") == 0) {
        slow_job *job = calloc(1, sizeof(*job));
        job->req = req;
        uv_timer_init(&ts->loop, &job->timer);
        job->timer.data = job;
        uv_timer_start(&job->timer, slow_job_fire, 60, 0);
    } else if (strcmp(path, "/sse") == 0 || strcmp(path, "/sse_forever") == 0) {
        sse_job *job = calloc(1, sizeof(*job));
        job->req = req;
        job->ts = ts;
        job->n = 5;
        job->forever = strcmp(path, "/sse_forever") == 0;
        uv_timer_init(&ts->loop, &job->timer);
        job->timer.data = job;
        mls_http_req_set_callbacks(req, sse_job_on_close, NULL, job);
        (void)mls_http_req_sse_begin(req, 200);
        uv_timer_start(&job->timer, sse_job_tick, 30, 30);
    } else {
        mls_oai_endpoint ep = mls_oai_route(method, path, &oerr);
        mls_oai_request *r = NULL;
        size_t len;
        const char *body;

        if (ep == MLS_OAI_EP_NONE) {
            if (oerr.allow[0] != '\0') {
                (void)mls_http_req_add_header(req, "Allow", oerr.allow);
            }
            (void)mls_http_req_respond_error(req, oerr.http_status, oerr.type, NULL,
                                             oerr.code[0] ? oerr.code : NULL, oerr.message);
            return;
        }
        body = mls_http_req_body(req, &len);
        if (mls_oai_request_parse(ep == MLS_OAI_EP_CHAT ? MLS_OAI_KIND_CHAT
                                                        : MLS_OAI_KIND_COMPLETION,
                                  body, len, NULL, &r, &oerr) != MLS_OK) {
            char *json = mls_oai_error_render(&oerr);
            (void)mls_http_req_respond(req, oerr.http_status, "application/json", json,
                                       strlen(json));
            free(json);
            return;
        }
        mls_oai_request_free(r);
        (void)mls_http_req_respond(req, 200, "application/json", "{\"ok\":true}", 11);
    }
}

static void test_server_stop_cb(uv_async_t *a)
{
    test_server *ts = a->data;

    mls_http_server_stats(ts->srv, &ts->stats);
    mls_http_server_shutdown(ts->srv);
    uv_close((uv_handle_t *)a, NULL);
}

static void *test_server_main(void *arg)
{
    test_server *ts = arg;

    uv_run(&ts->loop, UV_RUN_DEFAULT);
    return NULL;
}

static int test_server_start_cfg(test_server *ts, const mls_http_config *cfg)
{
    mls_err err = {{0}};

    memset(ts, 0, sizeof(*ts));
    uv_loop_init(&ts->loop);
    if (mls_http_server_create(&ts->loop, cfg, test_handler, ts, &ts->srv, &err) != MLS_OK) {
        fprintf(stderr, "server: %s\n", err.msg);
        return -1;
    }
    ts->port = mls_http_server_port(ts->srv);
    uv_async_init(&ts->loop, &ts->stop, test_server_stop_cb);
    ts->stop.data = ts;
    return pthread_create(&ts->thread, NULL, test_server_main, ts);
}

static int test_server_start(test_server *ts)
{
    mls_http_config cfg;

    mls_http_config_default(&cfg);
    cfg.max_header_bytes = 2048;
    cfg.max_headers = 20;
    cfg.max_body_bytes = 4096;
    cfg.request_timeout_ms = 400;
    cfg.idle_timeout_ms = 5000;
    return test_server_start_cfg(ts, &cfg);
}

static void test_server_stop(test_server *ts)
{
    uv_async_send(&ts->stop);
    pthread_join(ts->thread, NULL);
    uv_loop_close(&ts->loop);
}

static test_server g_srv;

/* ---- the client side ------------------------------------------------------- */

typedef struct {
    int fd;
    char buf[1 << 17];
    size_t len;
} client;

static int client_open(client *c)
{
    struct sockaddr_in sa;
    struct timeval tv = {.tv_sec = 5};

    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) {
        return -1;
    }
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)g_srv.port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return connect(c->fd, (struct sockaddr *)&sa, sizeof(sa));
}

static void client_close(client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    c->fd = -1;
}

static int client_send(client *c, const char *s, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, s, len, MSG_NOSIGNAL);
        if (n <= 0) {
            return -1;
        }
        s += n;
        len -= (size_t)n;
    }
    return 0;
}

static int client_sends(client *c, const char *s)
{
    return client_send(c, s, strlen(s));
}

/* Read more bytes; 0 on EOF, -1 on error/timeout. */
static int client_fill(client *c)
{
    ssize_t n;

    if (c->len + 1 >= sizeof(c->buf)) {
        return -1;
    }
    n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
    if (n <= 0) {
        return (int)n;
    }
    c->len += (size_t)n;
    c->buf[c->len] = '\0';
    return 1;
}

static void client_consume(client *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0';
}

typedef struct {
    int status;
    char head[4096];
    char body[1 << 16];
    size_t body_len;
    int chunked;
} response;

static const char *resp_header(const response *r, const char *name, char *out, size_t cap)
{
    const char *p = r->head;
    size_t nl = strlen(name);

    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1, *e;
            while (*v == ' ') {
                v++;
            }
            e = strstr(v, "\r\n");
            snprintf(out, cap, "%.*s", (int)(e ? e - v : (long)strlen(v)), v);
            return out;
        }
    }
    return NULL;
}

/* Read one response head (status + headers). 0 ok, -1 on failure. */
static int client_read_head(client *c, response *r)
{
    char *end;
    char v[64];

    memset(r, 0, sizeof(*r));
    while ((end = strstr(c->buf, "\r\n\r\n")) == NULL) {
        if (client_fill(c) <= 0) {
            return -1;
        }
    }
    snprintf(r->head, sizeof(r->head), "%.*s", (int)(end - c->buf + 2), c->buf);
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) {
        return -1;
    }
    client_consume(c, (size_t)(end - c->buf) + 4);
    r->chunked = resp_header(r, "Transfer-Encoding", v, sizeof(v)) != NULL &&
                 strcmp(v, "chunked") == 0;
    return 0;
}

/* Read one chunk of a chunked body into out; returns its size, 0 at the end, -1 on error. */
static long client_read_chunk(client *c, char *out, size_t cap)
{
    char *eol;
    unsigned long size;

    while ((eol = strstr(c->buf, "\r\n")) == NULL) {
        if (client_fill(c) <= 0) {
            return -1;
        }
    }
    size = strtoul(c->buf, NULL, 16);
    client_consume(c, (size_t)(eol - c->buf) + 2);
    while (c->len < size + 2) {
        if (client_fill(c) <= 0) {
            return -1;
        }
    }
    if (size + 1 > cap) {
        return -1;
    }
    memcpy(out, c->buf, size);
    out[size] = '\0';
    client_consume(c, size + 2);
    return (long)size;
}

/* Read a whole response (Content-Length, chunked, or until EOF). */
static int client_read_response(client *c, response *r)
{
    char v[64];

    if (client_read_head(c, r) != 0) {
        return -1;
    }
    if (r->chunked) {
        long n;
        while ((n = client_read_chunk(c, r->body + r->body_len, sizeof(r->body) - r->body_len)) > 0) {
            r->body_len += (size_t)n;
        }
        return n == 0 ? 0 : -1;
    }
    if (resp_header(r, "Content-Length", v, sizeof(v)) != NULL) {
        size_t want = strtoul(v, NULL, 10);
        if (want >= sizeof(r->body)) {
            return -1;
        }
        while (c->len < want) {
            if (client_fill(c) <= 0) {
                return -1;
            }
        }
        memcpy(r->body, c->buf, want);
        r->body[want] = '\0';
        r->body_len = want;
        client_consume(c, want);
        return 0;
    }
    while (client_fill(c) > 0) {
    }
    memcpy(r->body, c->buf, c->len);
    r->body_len = c->len;
    r->body[r->body_len] = '\0';
    client_consume(c, c->len);
    return 0;
}

/* True once the server closed the connection (EOF within the read timeout). */
static int client_sees_eof(client *c)
{
    int rc;

    while ((rc = client_fill(c)) > 0) {
    }
    return rc == 0;
}

static double now_s(void)
{
    return (double)mls_now_ns() * 1e-9;
}

/* A blocking socket to 127.0.0.1:port from the local address from_ip
 * ("127.0.0.2": the whole of 127/8 is loopback); -1 on failure. */
static int conn_from(int port, const char *from_ip)
{
    struct sockaddr_in sa, local;
    struct timeval tv = {.tv_sec = 5};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0) {
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    memset(&local, 0, sizeof(local));
    local.sin_family = AF_INET;
    inet_pton(AF_INET, from_ip, &local.sin_addr);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&local, sizeof(local)) != 0 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* GET /hello on fd and read the answer: its status, or -1. */
static int fd_get_hello(int fd)
{
    static const char req[] = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    client c = {.fd = fd};
    response r;

    if (client_send(&c, req, sizeof(req) - 1) != 0 || client_read_head(&c, &r) != 0) {
        return -1;
    }
    return r.status;
}

/* 1: the server closed fd (EOF or reset) within timeout_s; 0: still open. */
static int fd_closed_within(int fd, double timeout_s)
{
    double t_end = now_s() + timeout_s;
    char b[256];

    do {
        ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            return 1;
        }
        if (timeout_s > 0) {
            usleep(10000);
        }
    } while (now_s() < t_end);
    return 0;
}

/* ---- tests ------------------------------------------------------------------ */

static client g_c;
static response g_r;

static void test_keep_alive_two_requests(void)
{
    char v[64];

    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /hello?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    CHECK_STR_EQ(g_r.body, "hello GET?a=1");
    CHECK_STR_EQ(resp_header(&g_r, "Connection", v, sizeof(v)), "keep-alive");
    CHECK_STR_EQ(resp_header(&g_r, "X-Test", v, sizeof(v)), "yes");
    CHECK_EQ_INT(client_sends(&g_c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    CHECK_STR_EQ(g_r.body, "abcde");
    /* HEAD gets the headers and no body. */
    CHECK_EQ_INT(client_sends(&g_c, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_head(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    CHECK_STR_EQ(resp_header(&g_r, "Content-Length", v, sizeof(v)), "11");
    /* A chunked request body is reassembled. */
    CHECK_EQ_INT(client_sends(&g_c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    "3\r\nfoo\r\n4\r\nbar!\r\n0\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_STR_EQ(g_r.body, "foobar!");
    client_close(&g_c);
}

static void test_pipelined_requests_answered_in_order(void)
{
    const char *three = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /hello?second HTTP/1.1\r\nHost: x\r\n\r\n"
                        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthird";
    const char *want[] = {"slow", "hello GET?second", "third"};
    int i;

    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, three), 0);
    for (i = 0; i < 3; i++) {
        CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
        CHECK_EQ_INT(g_r.status, 200);
        CHECK_STR_EQ(g_r.body, want[i]);
    }
    /* Byte by byte works too. */
    {
        const char *req = "GET /hello?bytes HTTP/1.1\r\nHost: x\r\n\r\n";
        size_t k;
        for (k = 0; req[k] != '\0'; k++) {
            CHECK_EQ_INT(client_send(&g_c, req + k, 1), 0);
        }
        CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
        CHECK_STR_EQ(g_r.body, "hello GET?bytes");
    }
    client_close(&g_c);
}

static void test_malformed_http_gets_400_and_server_keeps_serving(void)
{
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcde",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ_INT(client_open(&g_c), 0);
        CHECK_EQ_INT(client_sends(&g_c, bad[i]), 0);
        CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
        CHECK_MSG(g_r.status == 400, "case %zu: status %d", i, g_r.status);
        CHECK(strstr(g_r.body, "\"error\"") != NULL && strstr(g_r.body, "malformed HTTP") != NULL);
        CHECK(client_sees_eof(&g_c));
        client_close(&g_c);
    }
    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /hello HTTP/1.1\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    client_close(&g_c);
}

static void test_size_limits_431_413(void)
{
    char big[4096];

    memset(big, 'a', sizeof(big));
    big[sizeof(big) - 1] = '\0';
    /* Header block over 2048 bytes. */
    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /hello HTTP/1.1\r\nX-Big: "), 0);
    CHECK_EQ_INT(client_sends(&g_c, big), 0);
    CHECK_EQ_INT(client_sends(&g_c, "\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 431);
    client_close(&g_c);
    /* Too many header fields. */
    {
        char many[2048] = "GET /hello HTTP/1.1\r\n";
        int i;
        for (i = 0; i < 30; i++) {
            snprintf(many + strlen(many), sizeof(many) - strlen(many), "H%d: v\r\n", i);
        }
        strcat(many, "\r\n");
        CHECK_EQ_INT(client_open(&g_c), 0);
        CHECK_EQ_INT(client_sends(&g_c, many), 0);
        CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
        CHECK_EQ_INT(g_r.status, 431);
        client_close(&g_c);
    }
    /* Content-Length over 4096: refused from the header, before the body. */
    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "POST /echo HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 413);
    CHECK(strstr(g_r.body, "invalid_request_error") != NULL);
    client_close(&g_c);
    /* Chunked body growing over the limit. */
    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    {
        int i;
        for (i = 0; i < 3; i++) {
            CHECK_EQ_INT(client_sends(&g_c, "7ff\r\n"), 0);
            CHECK_EQ_INT(client_send(&g_c, big, 0x7ff), 0);
            CHECK_EQ_INT(client_sends(&g_c, "\r\n"), 0);
        }
    }
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 413);
    client_close(&g_c);
    /* Expect: 100-continue with an acceptable body gets the interim answer. */
    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_head(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 100);
    CHECK_EQ_INT(client_sends(&g_c, "ok"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    CHECK_STR_EQ(g_r.body, "ok");
    client_close(&g_c);
}

static void test_slow_client_gets_408(void)
{
    double t0 = now_s();

    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /hello HTTP/1.1\r\nHost: x\r\n"), 0); /* never finished */
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 408);
    CHECK_LE_DBL(now_s() - t0, 3.0);
    CHECK(now_s() - t0 >= 0.3);
    client_close(&g_c);
}

static void test_http10_closes_after_response(void)
{
    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /hello HTTP/1.0\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    CHECK(client_sees_eof(&g_c));
    client_close(&g_c);
    /* Connection: close on 1.1 as well. */
    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    CHECK(client_sees_eof(&g_c));
    client_close(&g_c);
}

/* POST body to path; parse the OpenAI error JSON of the answer. */
static void api_call(const char *path, const char *body, int *status_p, char *param, size_t pcap,
                     char *type, size_t tcap)
{
    char head[256];
    cJSON *j, *e, *p, *t;

    *status_p = -1;
    param[0] = type[0] = '\0';
    if (client_open(&g_c) != 0) {
        return;
    }
    snprintf(head, sizeof(head), "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n", path, strlen(body));
    if (client_sends(&g_c, head) != 0 || client_sends(&g_c, body) != 0 ||
        client_read_response(&g_c, &g_r) != 0) {
        client_close(&g_c);
        return;
    }
    client_close(&g_c);
    *status_p = g_r.status;
    j = cJSON_Parse(g_r.body);
    e = cJSON_GetObjectItemCaseSensitive(j, "error");
    p = cJSON_GetObjectItemCaseSensitive(e, "param");
    t = cJSON_GetObjectItemCaseSensitive(e, "type");
    if (cJSON_IsString(p)) {
        snprintf(param, pcap, "%s", p->valuestring);
    } else if (cJSON_IsNull(p)) {
        snprintf(param, pcap, "null");
    }
    if (cJSON_IsString(t)) {
        snprintf(type, tcap, "%s", t->valuestring);
    }
    cJSON_Delete(j);
}

static void test_api_errors_over_http(void)
{
    char param[64], type[64];
    int status;

    api_call("/v1/completions", "{\"prompt\": \"hi\", ", &status, param, sizeof(param), type, sizeof(type));
    CHECK_EQ_INT(status, 400);
    CHECK_STR_EQ(type, "invalid_request_error");
    CHECK_STR_EQ(param, "null");
    api_call("/v1/completions", "{\"prompt\":\"hi\",\"temperature\":5}", &status, param,
             sizeof(param), type, sizeof(type));
    CHECK_EQ_INT(status, 400);
    CHECK_STR_EQ(param, "temperature");
    api_call("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":3}",
             &status, param, sizeof(param), type, sizeof(type));
    CHECK_EQ_INT(status, 400);
    CHECK_STR_EQ(param, "n");
    api_call("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
             &status, param, sizeof(param), type, sizeof(type));
    CHECK_EQ_INT(status, 200);
    CHECK_STR_EQ(g_r.body, "{\"ok\":true}");
    api_call("/v1/nope", "{}", &status, param, sizeof(param), type, sizeof(type));
    CHECK_EQ_INT(status, 404);
    /* Wrong method: 405 with Allow. */
    {
        char v[64];
        CHECK_EQ_INT(client_open(&g_c), 0);
        CHECK_EQ_INT(client_sends(&g_c, "GET /v1/completions HTTP/1.1\r\n\r\n"), 0);
        CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
        CHECK_EQ_INT(g_r.status, 405);
        CHECK_STR_EQ(resp_header(&g_r, "Allow", v, sizeof(v)), "POST");
        client_close(&g_c);
    }
}

static void test_sse_stream_chunk_by_chunk(void)
{
    char chunk[256], want[64], v[128];
    double t_first = 0, t_last = 0;
    long n;
    int i;

    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /sse HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_head(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    CHECK(g_r.chunked);
    CHECK(strncmp(resp_header(&g_r, "Content-Type", v, sizeof(v)), "text/event-stream", 17) == 0);
    CHECK_STR_EQ(resp_header(&g_r, "Cache-Control", v, sizeof(v)), "no-cache");
    for (i = 0; i < 5; i++) {
        n = client_read_chunk(&g_c, chunk, sizeof(chunk));
        snprintf(want, sizeof(want), "data: {\"i\":%d}\n\n", i);
        CHECK_EQ_INT(n, strlen(want));
        CHECK_STR_EQ(chunk, want);
        if (i == 0) {
            t_first = now_s();
        }
    }
    n = client_read_chunk(&g_c, chunk, sizeof(chunk));
    CHECK_STR_EQ(chunk, "data: [DONE]\n\n");
    t_last = now_s();
    CHECK_EQ_INT(client_read_chunk(&g_c, chunk, sizeof(chunk)), 0);
    /* Events arrived as produced (30 ms apart), not all at the end. */
    CHECK(t_last - t_first >= 0.1);
    /* The connection is still usable afterwards. */
    CHECK_EQ_INT(client_sends(&g_c, "GET /hello HTTP/1.1\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_response(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    client_close(&g_c);
}

static void test_client_disconnect_cancels_stream(void)
{
    char chunk[256];
    int before = atomic_load(&g_srv.canceled);
    int sent_at_close, i;
    double t0;

    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /sse_forever HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    CHECK_EQ_INT(client_read_head(&g_c, &g_r), 0);
    for (i = 0; i < 2; i++) {
        CHECK(client_read_chunk(&g_c, chunk, sizeof(chunk)) > 0);
    }
    client_close(&g_c);
    t0 = now_s();
    while (atomic_load(&g_srv.canceled) == before && now_s() - t0 < 5.0) {
        usleep(5000);
    }
    CHECK_EQ_INT(atomic_load(&g_srv.canceled), before + 1);
    /* The stream stopped: no more events are produced. */
    sent_at_close = atomic_load(&g_srv.stream_sent);
    usleep(150000);
    CHECK_EQ_INT(atomic_load(&g_srv.stream_sent), sent_at_close);
}

static void test_sse_backpressure_and_drain(void)
{
    static char chunk[FLOOD_EVENT_BYTES + 64];
    int events = 0, done = 0;
    long n;

    CHECK_EQ_INT(client_open(&g_c), 0);
    CHECK_EQ_INT(client_sends(&g_c, "GET /flood HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    usleep(200000); /* not reading: socket buffers fill, the producer must pause */
    CHECK_MSG(atomic_load(&g_srv.flood_paused) >= 1, "producer never paused (%d events sent)",
              atomic_load(&g_srv.flood_events));
    CHECK(atomic_load(&g_srv.flood_events) < FLOOD_EVENTS);
    CHECK_EQ_INT(client_read_head(&g_c, &g_r), 0);
    CHECK_EQ_INT(g_r.status, 200);
    while ((n = client_read_chunk(&g_c, chunk, sizeof(chunk))) > 0) {
        if (strcmp(chunk, "data: [DONE]\n\n") == 0) {
            done++;
            continue;
        }
        CHECK_EQ_INT(n, FLOOD_EVENT_BYTES + 8);
        events++;
    }
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(done, 1);
    CHECK_EQ_INT(events, FLOOD_EVENTS);
    CHECK(atomic_load(&g_srv.flood_drained) >= 1);
    /* The queue stayed bounded by the high-water mark (+ one event). */
    CHECK_LE_DBL(atomic_load(&g_srv.flood_max_queued), 256 * 1024 + FLOOD_EVENT_BYTES + 64);
    client_close(&g_c);
}

/* ---- connection limits (each on its own server) ------------------------------ */

#define FLOOD_CONNS 1100

/*
 * FLOOD_CONNS connections from 127.0.0.1 that send nothing: a client from
 * 127.0.0.2 is still served at once, and the first-byte timeout closes every
 * flood connection. per_addr 0 leaves only the cap (1024) between them:
 * then idle ones are evicted to make room.
 */
static void idle_flood(uint32_t per_addr)
{
    mls_http_config cfg;
    test_server ts;
    struct rlimit rl;
    static int fds[FLOOD_CONNS];
    int opened = 0, fd, closed = 0;
    double t0;

    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 3 * FLOOD_CONNS) {
        rl.rlim_cur = rl.rlim_max < 3 * FLOOD_CONNS ? rl.rlim_max : 3 * FLOOD_CONNS;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    CHECK_MSG(rl.rlim_cur >= 2 * FLOOD_CONNS + 64, "RLIMIT_NOFILE %llu is too low for %d connections",
              (unsigned long long)rl.rlim_cur, FLOOD_CONNS);
    mls_http_config_default(&cfg);
    cfg.max_connections_per_addr = per_addr;
    cfg.first_byte_timeout_ms = 3000;
    CHECK_EQ_INT(test_server_start_cfg(&ts, &cfg), 0);
    t0 = now_s();
    for (int i = 0; i < FLOOD_CONNS; i++) {
        fds[i] = conn_from(ts.port, "127.0.0.1");
        opened += fds[i] >= 0;
    }
    CHECK_EQ_INT(opened, FLOOD_CONNS);
    /* a normal client from another address gets in, long before any timeout frees a slot */
    fd = conn_from(ts.port, "127.0.0.2");
    CHECK(fd >= 0);
    CHECK_EQ_INT(fd_get_hello(fd), 200);
    fprintf(stderr, "  per-address limit %u: %d idle connections, then a client from 127.0.0.2 "
            "served %.2f s after the first\n", per_addr, FLOOD_CONNS, now_s() - t0);
    CHECK_LE_DBL(now_s() - t0, 2.5);
    close(fd);
    /* the first-byte timeout (3 s) closes every flood connection */
    for (int i = 0; i < FLOOD_CONNS; i++) {
        double left = t0 + 8.0 - now_s();
        closed += fds[i] >= 0 && fd_closed_within(fds[i], left > 0 ? left : 0);
    }
    CHECK_EQ_INT(closed, FLOOD_CONNS);
    for (int i = 0; i < FLOOD_CONNS; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    test_server_stop(&ts);
    fprintf(stderr, "  accepted %llu, refused per address %llu, evicted %llu, refused %llu\n",
            (unsigned long long)ts.stats.connections_accepted,
            (unsigned long long)ts.stats.connections_refused_per_addr,
            (unsigned long long)ts.stats.connections_evicted,
            (unsigned long long)ts.stats.connections_refused);
    if (per_addr > 0) {
        CHECK(ts.stats.connections_refused_per_addr >= FLOOD_CONNS - per_addr);
    } else {
        CHECK(ts.stats.connections_evicted >= FLOOD_CONNS + 1 - 1024);
    }
    CHECK_EQ_INT((int)ts.stats.connections_refused, 0);
}

static void test_idle_flood_does_not_lock_out_others(void)
{
    idle_flood(64); /* the default per-address limit */
}

static void test_idle_flood_evicted_at_the_cap(void)
{
    idle_flood(0);
}

static void test_per_address_limit(void)
{
    mls_http_config cfg;
    test_server ts;
    int fds[4], extra, other;

    mls_http_config_default(&cfg);
    cfg.max_connections_per_addr = 4;
    CHECK_EQ_INT(test_server_start_cfg(&ts, &cfg), 0);
    for (int i = 0; i < 4; i++) {
        fds[i] = conn_from(ts.port, "127.0.0.1");
        CHECK(fds[i] >= 0);
    }
    extra = conn_from(ts.port, "127.0.0.1");
    CHECK(extra >= 0);
    CHECK_MSG(fd_closed_within(extra, 2.0), "a fifth connection from one address stays open");
    other = conn_from(ts.port, "127.0.0.2");
    CHECK_EQ_INT(fd_get_hello(other), 200);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(fd_get_hello(fds[i]), 200); /* the four admitted ones serve */
        close(fds[i]);
    }
    close(extra);
    close(other);
    test_server_stop(&ts);
    CHECK_EQ_INT((int)ts.stats.connections_refused_per_addr, 1);
}

/* At the cap the connection idle longest goes; with none idle the new one is refused. */
static void test_idle_evicted_oldest_first_then_refused(void)
{
    mls_http_config cfg;
    test_server ts;
    int fd[6], s1, s2;

    mls_http_config_default(&cfg);
    cfg.max_connections = 4;
    cfg.max_connections_per_addr = 0;
    CHECK_EQ_INT(test_server_start_cfg(&ts, &cfg), 0);
    for (int i = 0; i < 4; i++) { /* A B C D, idle, in this order */
        fd[i] = conn_from(ts.port, "127.0.0.1");
        CHECK(fd[i] >= 0);
        usleep(20000);
    }
    fd[4] = conn_from(ts.port, "127.0.0.2"); /* E: A makes room */
    CHECK_EQ_INT(fd_get_hello(fd[4]), 200);
    CHECK_MSG(fd_closed_within(fd[0], 2.0), "the oldest idle connection was not evicted");
    CHECK_EQ_INT(fd_get_hello(fd[1]), 200); /* B served: now idle last (C D E B) */
    fd[5] = conn_from(ts.port, "127.0.0.2"); /* F: C makes room */
    CHECK_EQ_INT(fd_get_hello(fd[5]), 200);
    CHECK_MSG(fd_closed_within(fd[2], 2.0), "C (idle longest) was not evicted");
    CHECK_MSG(!fd_closed_within(fd[3], 0.2), "D was evicted before C");
    CHECK_MSG(!fd_closed_within(fd[1], 0), "B (recently served) was evicted");
    for (int i = 0; i < 6; i++) {
        close(fd[i]);
    }
    /* none idle: four endless streams hold every slot; a fifth connection is refused */
    usleep(100000);
    {
        static const char sse[] = "GET /sse_forever HTTP/1.1\r\nHost: x\r\n\r\n";
        int st[4];
        for (int i = 0; i < 4; i++) {
            client c = {.fd = conn_from(ts.port, "127.0.0.1")};
            response r;
            st[i] = c.fd;
            CHECK(c.fd >= 0 && client_send(&c, sse, sizeof(sse) - 1) == 0);
            CHECK(client_read_head(&c, &r) == 0 && r.status == 200);
        }
        s1 = conn_from(ts.port, "127.0.0.2");
        CHECK_MSG(fd_closed_within(s1, 2.0), "a connection beyond the cap was admitted with none idle");
        for (int i = 0; i < 4; i++) {
            close(st[i]);
        }
    }
    /* streams gone: room again */
    usleep(200000);
    s2 = conn_from(ts.port, "127.0.0.2");
    CHECK_EQ_INT(fd_get_hello(s2), 200);
    close(s1);
    close(s2);
    test_server_stop(&ts);
    CHECK_EQ_INT((int)ts.stats.connections_evicted, 2);
    CHECK_EQ_INT((int)ts.stats.connections_refused, 1);
}

int main(void)
{
    int64_t net0 = mls_alloc_bytes(MLS_ALLOC_TAG_NET);
    int rc;

    if (test_server_start(&g_srv) != 0) {
        fprintf(stderr, "cannot start the test server\n");
        return 1;
    }
    MLS_TEST_RUN(test_keep_alive_two_requests);
    MLS_TEST_RUN(test_pipelined_requests_answered_in_order);
    MLS_TEST_RUN(test_malformed_http_gets_400_and_server_keeps_serving);
    MLS_TEST_RUN(test_size_limits_431_413);
    MLS_TEST_RUN(test_slow_client_gets_408);
    MLS_TEST_RUN(test_http10_closes_after_response);
    MLS_TEST_RUN(test_api_errors_over_http);
    MLS_TEST_RUN(test_sse_stream_chunk_by_chunk);
    MLS_TEST_RUN(test_client_disconnect_cancels_stream);
    MLS_TEST_RUN(test_sse_backpressure_and_drain);
    MLS_TEST_RUN(test_per_address_limit);
    MLS_TEST_RUN(test_idle_evicted_oldest_first_then_refused);
    MLS_TEST_RUN(test_idle_flood_does_not_lock_out_others);
    MLS_TEST_RUN(test_idle_flood_evicted_at_the_cap);
    client_close(&g_c);
    test_server_stop(&g_srv);
    fprintf(stderr, "server stats: %llu connections, %llu requests, %llu refused by the server, "
            "%llu disconnects\n", (unsigned long long)g_srv.stats.connections_accepted,
            (unsigned long long)g_srv.stats.requests, (unsigned long long)g_srv.stats.bad_requests,
            (unsigned long long)g_srv.stats.client_disconnects);
    rc = MLS_TEST_DONE();
    if (g_srv.stats.client_disconnects < 1 || g_srv.stats.bad_requests < 10) {
        fprintf(stderr, "FAIL: server stats do not match the traffic\n");
        rc = 1;
    }
    if (mls_alloc_bytes(MLS_ALLOC_TAG_NET) != net0) {
        fprintf(stderr, "FAIL: %lld NET bytes not given back after shutdown\n",
                (long long)(mls_alloc_bytes(MLS_ALLOC_TAG_NET) - net0));
        rc = 1;
    }
    return rc;
}
