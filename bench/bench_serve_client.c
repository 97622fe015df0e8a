/*
 * bench_serve_client.c - the load generator's HTTP client: one libuv loop,
 * one TCP connection per request ("Connection: close"), responses parsed by
 * llhttp (chunked or close-delimited), Server-Sent Events split into events
 * and their JSON read with cJSON.
 *
 * Arrivals come from a timer walking the precomputed offsets; an arrived
 * request waits in a FIFO while --max-concurrency requests are open. The
 * clock of every content chunk is taken when its bytes are read from the
 * socket (mls_now_ns, monotonic), before any parsing, so TTFT and ITL measure
 * the server, not this client. Nothing here blocks the loop, so hundreds of
 * streams run at once (the fd limit is raised to its hard maximum).
 *
 * A request succeeds when the server answered 200, streamed at least one
 * content chunk, reported usage, and ended the stream with "data: [DONE]".
 * Anything else is a failure whose error names what happened (connect
 * refused, HTTP 500 and the server's message, timeout, truncated stream).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <llhttp.h>
#include <uv.h>

#include "bench_serve.h"
#include "mls_log.h"
#include "mls_num.h"

#define BS_PLAIN_BODY_MAX (8u << 20) /* a GET body (or an error body's first bytes) */
#define BS_ERR_BODY_MAX 4096

typedef struct bs_client bs_client;

/* One request on its own connection. Freed when both handles have closed. */
typedef struct {
    uv_tcp_t tcp;
    uv_timer_t timer;      /* the request's timeout */
    uv_connect_t connect;
    uv_write_t write;
    llhttp_t parser;
    bs_client *cl;
    bs_outcome *out;       /* where the measurements go; NULL for a plain GET */
    int open_handles;
    bool finished;         /* outcome decided, handles closing */
    bool message_done;     /* llhttp saw the end of the response */
    bool sse_done;         /* "data: [DONE]" */
    bool got_content;
    char *req;             /* the whole HTTP request */
    size_t req_len;
    mls_buf body;          /* plain GET or error response body */
    mls_buf line;          /* SSE: the current, unfinished line */
    mls_buf ev;            /* SSE: the current event's data lines */
    uint64_t t_send;       /* ns */
    uint64_t t_read;       /* ns: when the bytes being parsed were read */
    uint64_t t_last;       /* ns: the previous content chunk */
    double timeout_s;
    char err[BS_ERROR_MAX];
} bs_conn;

struct bs_client {
    uv_loop_t loop;
    uv_timer_t arrive;     /* fires at the next arrival */
    uv_timer_t progress;   /* redraws the progress bar */
    struct sockaddr_storage addr;
    const bs_target *t;
    const bs_dataset *ds;
    const bs_run_cfg *cfg;
    bs_run *run;
    double *arrival;       /* s from t0, ds->n */
    int next_arrival;
    int *queue;            /* arrived, waiting for a concurrency slot (FIFO, ds->n) */
    int q_head, q_tail;
    int in_flight, n_done, n_failed;
    uint64_t t0;
    bool progress_on;
    /* plain GET mode */
    char *get_body;
    size_t get_len;
    int get_status;
    char get_err[BS_ERROR_MAX];
};

/* Read buffer shared by all connections: every read is consumed in its callback. */
static char bs_rbuf[1 << 16];

static llhttp_settings_t bs_http_settings;

/* ---- small buffers ---------------------------------------------------------------- */

/* Appends n bytes, cut so that b holds at most max; false when out of memory. */
static bool bs_buf_append(mls_buf *b, const char *data, size_t n, size_t max)
{
    if (b->len + n > max) {
        n = max > b->len ? max - b->len : 0;
    }
    return mls_buf_append(b, data, n) == MLS_OK;
}

static void bs_conn_error(bs_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Remember the first error only: it is the cause, the rest are consequences. */
static void bs_conn_error(bs_conn *c, const char *fmt, ...)
{
    va_list ap;

    if (c->err[0] != '\0') {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

/* ---- SSE -------------------------------------------------------------------------- */

static void bs_outcome_content(bs_conn *c, const char *text, size_t len)
{
    bs_outcome *o = c->out;

    if (!c->got_content) {
        c->got_content = true;
        o->ttft = (double)(c->t_read - c->t_send) * 1e-9;
    } else {
        if ((size_t)o->n_itl == o->cap_itl &&
            mls_array_reserve(&o->itl, &o->cap_itl, o->cap_itl ? (size_t)o->n_itl + 1 : 64, sizeof(*o->itl),
                              MLS_ALLOC_TAG_MISC) != MLS_OK) {
            bs_conn_error(c, "out of memory recording inter-token latencies");
            return;
        }
        o->itl[o->n_itl++] = (double)(c->t_read - c->t_last) * 1e-9;
    }
    c->t_last = c->t_read;
    if (!bs_buf_append(&o->text, text, len, SIZE_MAX / 2)) {
        bs_conn_error(c, "out of memory keeping the generated text");
    }
}

/* One event's data: a chunk object, an error object, or [DONE]. */
static void bs_sse_event(bs_conn *c, const char *data)
{
    cJSON *root, *choices, *usage, *error;

    if (strcmp(data, "[DONE]") == 0) {
        c->sse_done = true;
        return;
    }
    if (c->sse_done) {
        bs_conn_error(c, "data after [DONE]: %.100s", data);
        return;
    }
    root = cJSON_Parse(data);
    if (root == NULL) {
        bs_conn_error(c, "malformed JSON in the stream: %.120s", data);
        return;
    }
    error = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (error != NULL) {
        const cJSON *msg = cJSON_GetObjectItemCaseSensitive(error, "message");
        bs_conn_error(c, "error in the stream: %.300s",
                      cJSON_IsString(msg) ? msg->valuestring : cJSON_IsString(error) ? error->valuestring : data);
    }
    choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
    if (cJSON_IsArray(choices) && cJSON_GetArraySize(choices) > 0) {
        const cJSON *ch = cJSON_GetArrayItem(choices, 0), *text;
        text = cJSON_GetObjectItemCaseSensitive(ch, "text");
        if (text == NULL) {
            text = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ch, "delta"), "content");
        }
        if (cJSON_IsString(text) && text->valuestring[0] != '\0') {
            bs_outcome_content(c, text->valuestring, strlen(text->valuestring));
        }
    }
    usage = cJSON_GetObjectItemCaseSensitive(root, "usage");
    if (cJSON_IsObject(usage)) {
        const cJSON *pt = cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(usage, "completion_tokens");
        if (cJSON_IsNumber(pt) && cJSON_IsNumber(ct) && pt->valuedouble >= 0 && ct->valuedouble >= 0) {
            c->out->prompt_tokens = (int)pt->valuedouble;
            c->out->output_tokens = (int)ct->valuedouble;
        } else {
            bs_conn_error(c, "usage without numeric prompt_tokens/completion_tokens");
        }
    }
    cJSON_Delete(root);
}

/* One complete line of the stream (without its line ending). */
static void bs_sse_line(bs_conn *c, const char *line, size_t len)
{
    if (len == 0) { /* blank line: dispatch the event */
        if (c->ev.len > 0) {
            bs_sse_event(c, c->ev.data);
            mls_buf_reset(&c->ev);
        }
        return;
    }
    if (line[0] == ':' || len < 5 || strncmp(line, "data:", 5) != 0) {
        return; /* comments, event:, id:, retry: */
    }
    line += 5;
    len -= 5;
    if (len > 0 && line[0] == ' ') {
        line++;
        len--;
    }
    if ((c->ev.len > 0 && !bs_buf_append(&c->ev, "\n", 1, SIZE_MAX / 2)) ||
        !bs_buf_append(&c->ev, line, len, SIZE_MAX / 2)) {
        bs_conn_error(c, "out of memory buffering an event");
    }
}

static void bs_sse_feed(bs_conn *c, const char *at, size_t len)
{
    while (len > 0) {
        const char *nl = memchr(at, '\n', len);
        size_t n = nl ? (size_t)(nl - at) : len;
        if (!bs_buf_append(&c->line, at, n, SIZE_MAX / 2)) {
            bs_conn_error(c, "out of memory buffering the stream");
            return;
        }
        if (nl == NULL) {
            return;
        }
        if (c->line.len > 0 && c->line.data[c->line.len - 1] == '\r') {
            c->line.data[--c->line.len] = '\0';
        }
        bs_sse_line(c, c->line.data, c->line.len);
        mls_buf_reset(&c->line);
        at += n + 1;
        len -= n + 1;
    }
}

/* ---- llhttp callbacks --------------------------------------------------------------- */

static int bs_on_body(llhttp_t *p, const char *at, size_t len)
{
    bs_conn *c = p->data;

    if (c->out != NULL && p->status_code == 200) {
        bs_sse_feed(c, at, len);
    } else {
        size_t max = c->out != NULL ? BS_ERR_BODY_MAX : BS_PLAIN_BODY_MAX;
        if (c->body.len < max && !bs_buf_append(&c->body, at, len, max)) {
            bs_conn_error(c, "out of memory buffering the response");
        }
    }
    return 0;
}

static int bs_on_message_complete(llhttp_t *p)
{
    bs_conn *c = p->data;

    c->message_done = true;
    return HPE_PAUSED; /* nothing after the one response matters */
}

static void bs_http_settings_init(void)
{
    llhttp_settings_init(&bs_http_settings);
    bs_http_settings.on_body = bs_on_body;
    bs_http_settings.on_message_complete = bs_on_message_complete;
}

/* ---- request lifecycle ------------------------------------------------------------ */

static void bs_dispatch(bs_client *cl);
static void bs_progress_draw(bs_client *cl, bool final);

/* "HTTP 500: the message" from an OpenAI-style error body, or its first bytes. */
static void bs_http_status_error(bs_conn *c)
{
    cJSON *root = c->body.data ? cJSON_Parse(c->body.data) : NULL;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error"), *msg = NULL;
    char snippet[201];
    size_t n = 0;

    msg = cJSON_IsObject(e) ? cJSON_GetObjectItemCaseSensitive(e, "message") : e;
    if (!cJSON_IsString(msg)) {
        msg = cJSON_GetObjectItemCaseSensitive(root, "message");
    }
    if (cJSON_IsString(msg)) {
        bs_conn_error(c, "HTTP %d: %.300s", c->parser.status_code, msg->valuestring);
    } else {
        /* one line of the raw body */
        for (size_t i = 0; i < c->body.len && n < sizeof(snippet) - 1; i++) {
            char ch = c->body.data[i];
            snippet[n++] = (ch == '\n' || ch == '\r' || ch == '\t') ? ' ' : ch;
        }
        snippet[n] = '\0';
        bs_conn_error(c, "HTTP %d%s%s", c->parser.status_code, n ? ": " : "", snippet);
    }
    cJSON_Delete(root);
}

static void bs_conn_free(bs_conn *c)
{
    free(c->req);
    mls_buf_free(&c->body);
    mls_buf_free(&c->line);
    mls_buf_free(&c->ev);
    free(c);
}

/* A load request is over: free its slot, start queued ones, end the run after the last. */
static void bs_request_done(bs_client *cl)
{
    cl->in_flight--;
    cl->n_done++;
    if (cl->n_done == cl->ds->n) {
        uv_timer_stop(&cl->arrive);
        uv_close((uv_handle_t *)&cl->arrive, NULL);
        if (cl->progress_on) {
            uv_timer_stop(&cl->progress);
            uv_close((uv_handle_t *)&cl->progress, NULL);
            bs_progress_draw(cl, true);
        }
        return;
    }
    bs_dispatch(cl);
}

static void bs_on_close(uv_handle_t *h)
{
    bs_conn *c = h->data;
    bs_client *cl = c->cl;

    if (--c->open_handles > 0) {
        return;
    }
    bs_conn_free(c);
    if (cl->ds != NULL) { /* a plain GET's loop just ends */
        bs_request_done(cl);
    }
}

/* Decide the outcome (once) and close the connection. */
static void bs_conn_finish(bs_conn *c)
{
    bs_client *cl = c->cl;
    uint64_t t_end = mls_now_ns();

    if (c->finished) {
        return;
    }
    c->finished = true;
    if (c->err[0] == '\0' && c->message_done && c->parser.status_code != 200) {
        bs_http_status_error(c);
    }
    if (c->out != NULL) {
        bs_outcome *o = c->out;
        if (c->err[0] == '\0' && !c->message_done) {
            bs_conn_error(c, "the connection closed before the response ended");
        }
        if (c->err[0] == '\0' && !c->sse_done) {
            bs_conn_error(c, "the stream ended without \"data: [DONE]\"");
        }
        if (c->err[0] == '\0' && !c->got_content) {
            bs_conn_error(c, "no chunk with content in the stream (nothing to time the first token by)");
        }
        if (c->err[0] == '\0' && o->output_tokens < 0) {
            bs_conn_error(c, "no usage in the stream (the server ignored stream_options.include_usage)");
        }
        o->success = c->err[0] == '\0';
        o->latency = (double)(t_end - c->t_send) * 1e-9;
        snprintf(o->error, sizeof(o->error), "%s", c->err);
        if (!o->success) {
            cl->n_failed++;
        }
    } else {
        cl->get_status = c->message_done ? c->parser.status_code : -1;
        snprintf(cl->get_err, sizeof(cl->get_err), "%s", c->err);
        if (c->message_done && c->err[0] == '\0' && c->body.data != NULL) {
            cl->get_body = mls_buf_detach(&c->body, &cl->get_len); /* NULL: no body */
        }
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, bs_on_close);
    uv_close((uv_handle_t *)&c->tcp, bs_on_close);
}

static void bs_on_timeout(uv_timer_t *t)
{
    bs_conn *c = t->data;

    bs_conn_error(c, "timed out after %g s", c->timeout_s);
    bs_conn_finish(c);
}

static void bs_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    buf->base = bs_rbuf;
    buf->len = sizeof(bs_rbuf);
}

static void bs_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    bs_conn *c = s->data;
    llhttp_errno_t e;

    if (c->finished) {
        return;
    }
    if (nread > 0) {
        c->t_read = mls_now_ns();
        e = llhttp_execute(&c->parser, buf->base, (size_t)nread);
        if (e != HPE_OK && e != HPE_PAUSED) {
            bs_conn_error(c, "malformed HTTP response: %s", llhttp_get_error_reason(&c->parser));
        }
        if (c->message_done || c->err[0] != '\0') {
            bs_conn_finish(c);
        }
    } else if (nread == UV_EOF) {
        c->t_read = mls_now_ns();
        if (!c->message_done && llhttp_finish(&c->parser) != HPE_OK && !c->message_done) {
            bs_conn_error(c, "the connection closed before the response ended (%s)",
                          llhttp_get_error_reason(&c->parser));
        }
        bs_conn_finish(c);
    } else if (nread < 0) {
        bs_conn_error(c, "read: %s", uv_strerror((int)nread));
        bs_conn_finish(c);
    }
}

static void bs_on_write(uv_write_t *w, int status)
{
    bs_conn *c = w->data;

    if (status < 0 && !c->finished) {
        bs_conn_error(c, "write: %s", uv_strerror(status));
        bs_conn_finish(c);
    }
}

static void bs_on_connect(uv_connect_t *req, int status)
{
    bs_conn *c = req->data;
    uv_buf_t b;
    int rc;

    if (c->finished) {
        return;
    }
    if (status < 0) {
        bs_conn_error(c, "connect to %s:%s: %s", c->cl->t->host, c->cl->t->port, uv_strerror(status));
        bs_conn_finish(c);
        return;
    }
    b = uv_buf_init(c->req, (unsigned)c->req_len);
    c->write.data = c;
    if ((rc = uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, bs_on_write)) < 0 ||
        (rc = uv_read_start((uv_stream_t *)&c->tcp, bs_on_alloc, bs_on_read)) < 0) {
        bs_conn_error(c, "write: %s", uv_strerror(rc));
        bs_conn_finish(c);
    }
}

static char *bs_request_render(const bs_target *t, const char *method, const char *path, const char *body,
                               size_t *len_p)
{
    size_t body_len = body ? strlen(body) : 0;
    size_t cap = body_len + strlen(path) + strlen(t->host) + (t->api_key ? strlen(t->api_key) : 0) + 512;
    char *req = malloc(cap);
    int n;

    if (req == NULL) {
        return NULL;
    }
    n = snprintf(req, cap,
                 "%s %s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: mlaserve-bench-serve\r\n"
                 "Accept: %s\r\nConnection: close\r\n%s%s%s",
                 method, path, t->host, t->port, body ? "text/event-stream" : "application/json",
                 t->api_key ? "Authorization: Bearer " : "", t->api_key ? t->api_key : "",
                 t->api_key ? "\r\n" : "");
    if (body != NULL) {
        n += snprintf(req + n, cap - (size_t)n, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                      body_len);
        memcpy(req + n, body, body_len);
        n += (int)body_len;
    } else {
        n += snprintf(req + n, cap - (size_t)n, "\r\n");
    }
    *len_p = (size_t)n;
    return req;
}

/* Open one connection and send; failures become the outcome, never a lost request. */
static void bs_conn_start(bs_client *cl, bs_outcome *out, const char *method, const char *path, const char *body,
                          double timeout_s)
{
    bs_conn *c = calloc(1, sizeof(*c));
    int rc;

    if (c == NULL) {
        if (out != NULL) {
            snprintf(out->error, sizeof(out->error), "out of memory starting the request");
            out->prompt_tokens = -1;
            out->output_tokens = -1;
            cl->n_failed++;
            bs_request_done(cl);
        }
        return;
    }
    c->cl = cl;
    mls_buf_init(&c->body, MLS_ALLOC_TAG_NET);
    mls_buf_init(&c->line, MLS_ALLOC_TAG_NET);
    mls_buf_init(&c->ev, MLS_ALLOC_TAG_NET);
    c->timeout_s = timeout_s;
    c->out = out;
    c->t_send = mls_now_ns();
    if (out != NULL) {
        out->t_send = (double)(c->t_send - cl->t0) * 1e-9;
        out->prompt_tokens = -1;
        out->output_tokens = -1;
    }
    llhttp_init(&c->parser, HTTP_RESPONSE, &bs_http_settings);
    c->parser.data = c;
    uv_tcp_init(&cl->loop, &c->tcp);
    uv_timer_init(&cl->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->connect.data = c;
    c->open_handles = 2;
    uv_timer_start(&c->timer, bs_on_timeout, (uint64_t)(timeout_s * 1000.0), 0);
    c->req = bs_request_render(cl->t, method, path, body, &c->req_len);
    if (c->req == NULL) {
        bs_conn_error(c, "out of memory rendering the request");
        bs_conn_finish(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    rc = uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&cl->addr, bs_on_connect);
    if (rc < 0) {
        bs_conn_error(c, "connect to %s:%s: %s", cl->t->host, cl->t->port, uv_strerror(rc));
        bs_conn_finish(c);
    }
}

/* ---- arrivals and concurrency ------------------------------------------------------ */

static void bs_dispatch(bs_client *cl)
{
    while (cl->q_head < cl->q_tail && (cl->cfg->max_concurrency <= 0 || cl->in_flight < cl->cfg->max_concurrency)) {
        int i = cl->queue[cl->q_head++];
        cl->in_flight++;
        if (cl->in_flight > cl->run->max_in_flight) {
            cl->run->max_in_flight = cl->in_flight;
        }
        cl->run->out[i].prompt_len = cl->ds->v[i].prompt_len;
        bs_conn_start(cl, &cl->run->out[i], "POST", cl->t->path, cl->ds->v[i].body, cl->cfg->timeout_s);
    }
}

static void bs_on_arrive(uv_timer_t *t)
{
    bs_client *cl = t->data;
    double now = (double)(mls_now_ns() - cl->t0) * 1e-9;

    /* within a millisecond counts as now: the timer's resolution */
    while (cl->next_arrival < cl->ds->n && cl->arrival[cl->next_arrival] <= now + 1e-3) {
        cl->queue[cl->q_tail++] = cl->next_arrival++;
    }
    bs_dispatch(cl);
    if (cl->next_arrival < cl->ds->n && !uv_is_closing((uv_handle_t *)&cl->arrive)) {
        double wait_ms = (cl->arrival[cl->next_arrival] - now) * 1e3;
        uv_timer_start(&cl->arrive, bs_on_arrive, wait_ms > 1 ? (uint64_t)wait_ms : 0, 0);
    }
}

static void bs_progress_draw(bs_client *cl, bool final)
{
    const int width = 30;
    int n = cl->ds->n, done = cl->n_done, filled = n > 0 ? done * width / n : width;
    char bar[64];

    for (int i = 0; i < width; i++) {
        bar[i] = i < filled ? '#' : '.';
    }
    bar[width] = '\0';
    fprintf(stderr, "\r%s%s[%s] %d/%d  ok %d  failed %d  in flight %d  %.1f s\033[K%s",
            cl->cfg->label ? cl->cfg->label : "", cl->cfg->label ? " " : "", bar, done, n, done - cl->n_failed,
            cl->n_failed, cl->in_flight, (double)(mls_now_ns() - cl->t0) * 1e-9, final ? "\n" : "");
    fflush(stderr);
}

static void bs_on_progress(uv_timer_t *t)
{
    bs_progress_draw(t->data, false);
}

/* ---- public ------------------------------------------------------------------------ */

mls_status bs_target_parse(const char *url, const char *endpoint, bs_target *t_p, mls_err *err)
{
    bs_target t = {0};
    const char *p = url, *host_end, *path;
    size_t host_len, prefix_len;

    if (strncmp(p, "http://", 7) != 0) {
        mls_err_set(err, "--url %s: only http:// URLs are supported", url);
        return MLS_ERR_INVALID_ARG;
    }
    p += 7;
    path = strchr(p, '/');
    path = path ? path : p + strlen(p);
    if (*p == '[') { /* [v6]:port */
        host_end = memchr(p, ']', (size_t)(path - p));
        if (host_end == NULL) {
            mls_err_set(err, "--url %s: unterminated IPv6 address", url);
            return MLS_ERR_INVALID_ARG;
        }
        host_len = (size_t)(host_end - p - 1);
        memcpy(t.host, p + 1, host_len < sizeof(t.host) - 1 ? host_len : sizeof(t.host) - 1);
        p = host_end + 1;
    } else {
        host_end = memchr(p, ':', (size_t)(path - p));
        host_end = host_end ? host_end : path;
        host_len = (size_t)(host_end - p);
        if (host_len == 0 || host_len >= sizeof(t.host)) {
            mls_err_set(err, "--url %s: no host", url);
            return MLS_ERR_INVALID_ARG;
        }
        memcpy(t.host, p, host_len);
        p = host_end;
    }
    if (*p == ':') {
        long port = strtol(p + 1, NULL, 10);
        if (port < 1 || port > 65535) {
            mls_err_set(err, "--url %s: bad port", url);
            return MLS_ERR_INVALID_ARG;
        }
        snprintf(t.port, sizeof(t.port), "%ld", port);
    } else {
        snprintf(t.port, sizeof(t.port), "80");
    }
    prefix_len = strlen(path);
    while (prefix_len > 0 && path[prefix_len - 1] == '/') {
        prefix_len--;
    }
    if (prefix_len >= 200 || strlen(endpoint) >= 200) {
        mls_err_set(err, "--url %s: path too long", url);
        return MLS_ERR_INVALID_ARG;
    }
    snprintf(t.base, sizeof(t.base), "http://%.*s%.*s", (int)(path - url - 7), url + 7, (int)prefix_len, path);
    snprintf(t.prefix, sizeof(t.prefix), "%.*s", (int)prefix_len, path);
    snprintf(t.path, sizeof(t.path), "%s%s", t.prefix, endpoint);
    *t_p = t;
    return MLS_OK;
}

static mls_status bs_client_init(bs_client *cl, const bs_target *t, mls_err *err)
{
    struct addrinfo hints = {0}, *res = NULL;
    int rc;

    memset(cl, 0, sizeof(*cl));
    cl->t = t;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(t->host, t->port, &hints, &res);
    if (rc != 0 || res == NULL) {
        mls_err_set(err, "cannot resolve %s:%s: %s", t->host, t->port, gai_strerror(rc));
        return MLS_ERR_INVALID_ARG;
    }
    memcpy(&cl->addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if ((rc = uv_loop_init(&cl->loop)) < 0) {
        mls_err_set(err, "uv_loop_init: %s", uv_strerror(rc));
        return MLS_ERR_IO;
    }
    if (bs_http_settings.on_body == NULL) {
        bs_http_settings_init();
    }
    return MLS_OK;
}

static void bs_client_close(bs_client *cl)
{
    uv_run(&cl->loop, UV_RUN_DEFAULT); /* let close callbacks run */
    if (uv_loop_close(&cl->loop) != 0) {
        mls_warn("bench serve: the event loop still had handles at exit");
    }
}

mls_status bs_http_get(const bs_target *t, const char *path, double timeout_s, char **body_p, mls_err *err)
{
    bs_client cl;
    char full[1024];
    mls_status st;

    if ((st = bs_client_init(&cl, t, err)) != MLS_OK) {
        return st;
    }
    snprintf(full, sizeof(full), "%s%s", t->prefix, path);
    cl.t0 = mls_now_ns();
    bs_conn_start(&cl, NULL, "GET", full, NULL, timeout_s);
    bs_client_close(&cl);
    if (cl.get_body == NULL) {
        mls_err_set(err, "GET %s: %s", full,
                    cl.get_err[0] ? cl.get_err : cl.get_status > 0 ? "no body" : "no response");
        return MLS_ERR_IO;
    }
    if (cl.get_status != 200) {
        mls_err_set(err, "GET %s: HTTP %d: %.200s", full, cl.get_status, cl.get_body);
        free(cl.get_body);
        return MLS_ERR_IO;
    }
    *body_p = cl.get_body;
    return MLS_OK;
}

static void bs_raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

mls_status bs_run_load(const bs_target *t, const bs_dataset *ds, const bs_run_cfg *cfg, bs_run *run_p,
                       mls_err *err)
{
    bs_client cl;
    bs_run run = {0};
    mls_status st;
    uint64_t t_end;

    bs_raise_fd_limit();
    if ((st = bs_client_init(&cl, t, err)) != MLS_OK) {
        return st;
    }
    cl.ds = ds;
    cl.cfg = cfg;
    cl.run = &run;
    run.n = ds->n;
    run.out = calloc((size_t)ds->n, sizeof(*run.out));
    cl.arrival = malloc((size_t)ds->n * sizeof(double));
    cl.queue = malloc((size_t)ds->n * sizeof(int));
    if (run.out == NULL || cl.arrival == NULL || cl.queue == NULL) {
        mls_err_set(err, "out of memory for %d requests", ds->n);
        st = MLS_ERR_NO_MEMORY;
        bs_client_close(&cl);
        goto out_free_run;
    }
    bs_arrivals(cfg->rate, cfg->burstiness, cfg->seed, ds->n, cl.arrival);
    uv_timer_init(&cl.loop, &cl.arrive);
    cl.arrive.data = &cl;
    cl.progress_on = cfg->progress;
    if (cl.progress_on) {
        uv_timer_init(&cl.loop, &cl.progress);
        cl.progress.data = &cl;
        uv_timer_start(&cl.progress, bs_on_progress, 250, 250);
    }
    cl.t0 = mls_now_ns();
    bs_on_arrive(&cl.arrive);
    uv_run(&cl.loop, UV_RUN_DEFAULT);
    t_end = mls_now_ns();
    run.duration = (double)(t_end - cl.t0) * 1e-9;
    bs_client_close(&cl);
    *run_p = run;
    run.out = NULL;
out_free_run:
    free(run.out);
    free(cl.arrival);
    free(cl.queue);
    return st;
}

void bs_run_free(bs_run *run)
{
    for (int i = 0; run->out != NULL && i < run->n; i++) {
        mls_array_free(&run->out[i].itl, &run->out[i].cap_itl, sizeof(*run->out[i].itl), MLS_ALLOC_TAG_MISC);
        mls_buf_free(&run->out[i].text);
    }
    free(run->out);
    run->out = NULL;
    run->n = 0;
}
