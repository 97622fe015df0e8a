/*
 * fuzz_http.c - libFuzzer harness for the HTTP server (http/mls_http.h) with
 * the OpenAI layer behind it (router/mls_oai.h), as the router serves them:
 * the bytes any client may send to the API port.
 *
 * One server listens on 127.0.0.1 for the whole run. Each input is sent on a
 * fresh TCP connection exactly as it is (pipelined requests, broken ones,
 * bodies with or without Content-Length, chunked), the client then half-closes
 * and reads until the server closes, and the loop runs until the server has
 * let the connection go. The handler does what the router's does up to the
 * scheduler: route (404/405), API key (enforced when the query string is
 * "auth"), parse and validate the body, and answer with an echo of the
 * request, whole or as Server-Sent Events when it asks to stream.
 *
 * Properties: every connection ends (the server closes after the client's EOF
 * within FUZZ_HTTP_DEADLINE_MS), the server holds no connection afterwards,
 * what it sends starts with an HTTP/1.x status line, and every request the
 * handler got was completed.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fuzz_oai_common.h"
#include "mls_http.h"

#define FUZZ_HTTP_DEADLINE_MS 5000
#define FUZZ_HTTP_KEY         "sk-fuzz"

static uv_loop_t fuzz_loop;
static mls_http_server *fuzz_srv;
static mls_oai_limits fuzz_lim;
static uint64_t fuzz_handled, fuzz_completed;

static void fuzz_http_respond_error(mls_http_req *req, const mls_oai_error *e)
{
    char *body = mls_oai_error_render(e);
    char retry[16];

    FUZZ_CHECK(body != NULL, "error render failed");
    if (e->allow[0] != '\0') {
        mls_http_req_add_header(req, "Allow", e->allow);
    }
    if (e->retry_after_s > 0) {
        snprintf(retry, sizeof(retry), "%u", e->retry_after_s);
        mls_http_req_add_header(req, "Retry-After", retry);
    }
    mls_http_req_respond(req, e->http_status, "application/json", body, strlen(body));
    free(body);
}

/* Echo a parsed request: whole, or as a stream of two chunks and [DONE]. */
static void fuzz_http_respond_echo(mls_http_req *req, const mls_oai_request *r)
{
    char *whole = fuzz_oai_render_echo(r, false);

    if (!r->stream) {
        mls_http_req_respond(req, 200, "application/json", whole, strlen(whole));
        free(whole);
        return;
    }
    char *chunk = fuzz_oai_render_echo(r, true);
    if (mls_http_req_sse_begin(req, 200) == MLS_OK) {
        mls_http_req_sse_send(req, chunk, strlen(chunk));
        mls_http_req_sse_send(req, whole, strlen(whole));
        mls_http_req_sse_send(req, MLS_OAI_SSE_DONE, strlen(MLS_OAI_SSE_DONE));
    }
    mls_http_req_stream_end(req);
    free(chunk);
    free(whole);
}

static void fuzz_http_handler(mls_http_req *req, void *user)
{
    static const char *const keys[] = {FUZZ_HTTP_KEY};
    mls_oai_error e;
    mls_oai_endpoint ep;
    mls_oai_request *r = NULL;
    const char *body;
    size_t len;

    (void)user;
    fuzz_handled++;
    memset(&e, 0, sizeof(e));
    ep = mls_oai_route(mls_http_req_method(req), mls_http_req_path(req), &e);
    if (ep == MLS_OAI_EP_NONE) {
        FUZZ_CHECK(e.http_status == 404 || e.http_status == 405, "route: HTTP %d", e.http_status);
        fuzz_http_respond_error(req, &e);
        goto out;
    }
    if (!mls_oai_auth_check(mls_http_req_header(req, "Authorization"), keys, 1, &e) &&
        strcmp(mls_http_req_query(req), "auth") == 0) {
        FUZZ_CHECK(e.http_status == 401, "auth: HTTP %d", e.http_status);
        fuzz_http_respond_error(req, &e);
        goto out;
    }
    switch (ep) {
    case MLS_OAI_EP_COMPLETIONS:
    case MLS_OAI_EP_CHAT:
        body = mls_http_req_body(req, &len);
        memset(&e, 0, sizeof(e));
        if (mls_oai_request_parse(ep == MLS_OAI_EP_CHAT ? MLS_OAI_KIND_CHAT
                                                        : MLS_OAI_KIND_COMPLETION,
                                  body, len, &fuzz_lim, &r, &e) != MLS_OK) {
            fuzz_http_respond_error(req, &e);
            goto out;
        }
        fuzz_http_respond_echo(req, r);
        mls_oai_request_free(r);
        break;
    case MLS_OAI_EP_MODELS: {
        char *m = mls_oai_models_render(fuzz_oai_models, 2, 1700000000, "mlaserve", 4096);
        FUZZ_CHECK(m != NULL, "models render failed");
        mls_http_req_respond(req, 200, "application/json", m, strlen(m));
        free(m);
        break;
    }
    default:
        mls_http_req_respond(req, 200, "text/plain", "ok\n", 3);
        break;
    }
out:
    fuzz_completed++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    mls_http_config cfg;
    mls_err err = {{0}};

    (void)argc;
    (void)argv;
    fuzz_log_quiet();
    fuzz_oai_limits(&fuzz_lim);
    FUZZ_CHECK(uv_loop_init(&fuzz_loop) == 0, "uv_loop_init");
    mls_http_config_default(&cfg);
    cfg.max_header_bytes = 2048;
    cfg.max_headers = 16;
    cfg.max_body_bytes = 8192;
    cfg.write_high_water_bytes = 512;
    cfg.server_name = "fuzz";
    FUZZ_CHECK(mls_http_server_create(&fuzz_loop, &cfg, fuzz_http_handler, NULL, &fuzz_srv, &err) ==
                   MLS_OK,
               "server: %s", err.msg);
    return 0;
}

static uint64_t fuzz_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Connect a non-blocking client socket to the server. */
static int fuzz_http_connect(void)
{
    struct sockaddr_in sa;
    struct linger lg = {1, 0}; /* close with RST: no TIME_WAIT pile-up over millions of runs */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    FUZZ_CHECK(fd >= 0, "socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)mls_http_server_port(fuzz_srv));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        FUZZ_CHECK(errno == EINPROGRESS, "connect: %s", strerror(errno));
    }
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t deadline = fuzz_now_ms() + FUZZ_HTTP_DEADLINE_MS;
    mls_http_stats st;
    char head[16];
    size_t sent = 0, got = 0;
    bool shut = false, eof = false;
    int fd = fuzz_http_connect();

    while (!eof) {
        struct pollfd pfd[2] = {{fd, POLLIN | (shut ? 0 : POLLOUT), 0},
                                {uv_backend_fd(&fuzz_loop), POLLIN, 0}};
        char buf[4096];
        ssize_t n;

        FUZZ_CHECK(fuzz_now_ms() < deadline, "the server did not close within %d ms (%zu/%zu sent)",
                   FUZZ_HTTP_DEADLINE_MS, sent, size);
        uv_run(&fuzz_loop, UV_RUN_NOWAIT);
        if (!shut && sent < size) {
            n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += (size_t)n;
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                shut = true; /* the server closed on us: still read what it said */
            }
        }
        if (!shut && sent == size) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        n = recv(fd, buf, sizeof(buf), 0);
        if (n > 0) {
            if (got < sizeof(head)) {
                size_t k = (size_t)n < sizeof(head) - got ? (size_t)n : sizeof(head) - got;
                memcpy(head + got, buf, k);
            }
            got += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            eof = true;
            break;
        }
        poll(pfd, 2, 10);
    }
    close(fd);
    if (got > 0) {
        FUZZ_CHECK(got >= 9 && memcmp(head, "HTTP/1.", 7) == 0, "the reply starts \"%.*s\"",
                   (int)(got < sizeof(head) ? got : sizeof(head)), head);
    }
    /* The server sees the EOF or reset and lets go of the connection. */
    for (;;) {
        mls_http_server_stats(fuzz_srv, &st);
        if (st.connections_open == 0) {
            break;
        }
        FUZZ_CHECK(fuzz_now_ms() < deadline, "%llu connections still open",
                   (unsigned long long)st.connections_open);
        struct pollfd pb = {uv_backend_fd(&fuzz_loop), POLLIN, 0};
        uv_run(&fuzz_loop, UV_RUN_NOWAIT);
        poll(&pb, 1, 1);
    }
    FUZZ_CHECK(fuzz_handled == fuzz_completed, "%llu requests handled, %llu completed",
               (unsigned long long)fuzz_handled, (unsigned long long)fuzz_completed);
    return 0;
}
