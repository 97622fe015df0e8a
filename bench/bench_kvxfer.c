/*
 * bench_kvxfer.c - `mlaserve bench kvxfer`: KV transfer bandwidth between two
 * processes on loopback, against ucx_perftest run in the same invocation with
 * the same UCX transports and sizes.
 *
 * This process is the prefill side; for every scenario it starts itself again
 * as the decode side (`bench kvxfer --role recv ...`), which owns the pools,
 * reserves pages (re-reserving a slot as soon as its request completes, as a
 * decode node would) and reports, per request, the CLOCK_MONOTONIC time the
 * transport declared it ready. Scenarios per UCX_TLS setting:
 *   setup     1 token x 1 layer requests one at a time: per-request overhead
 *             (create on prefill -> ready on decode), microseconds
 *   plain     64 KiB / 1 MiB / 16 MiB messages (one layer of contiguous pages,
 *             a window of requests in flight) vs ucx_perftest at that size
 *   requests  realistic prefill outputs: 2,000 and 32,000 tokens x 61 layers of
 *             bf16 (1152 B) and fp8 (656 B) rows, one request at a time, vs
 *             ucx_perftest at the per-layer run size; plus the time from the
 *             last layer's kvx_send_layer to ready on the decode side
 * ucx_perftest test: ucp_put_bw for the RMA path, ucp_am_bw for the AM path.
 * Bandwidth is bytes / (first create -> last ready), GB = 1e9 bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "bench_stat.h"
#include "kvx.h"
#include "mls_cli.h"
#include "mls_num.h"
#include "mls_proc.h"

extern char **environ;

#define BK_MAX_REPS    64
#define BK_MAX_CONFIGS 4
#define BK_MAX_ITEMS   8
#define BK_LEASE_MS    120000u

/* The request's token as both bench processes derive it (in a cluster the
 * router draws a random one per request). */
static void bk_token(uint64_t rid, uint8_t *token)
{
    for (uint32_t i = 0; i < KVX_TOKEN_BYTES; i++) {
        token[i] = (uint8_t)(rid >> (8 * (i % 8))) ^ (uint8_t)(0xa5 + i);
    }
}

typedef struct {
    char name[48];
    uint64_t bytes; /* per message / request */
    uint32_t tokens, layers, row_bytes;
    uint32_t window, count; /* requests in flight, requests per rep */
    uint64_t run_bytes;     /* size given to ucx_perftest */
    bench_stat gbps;
    double perftest_gbps; /* NAN when it could not run */
    bench_stat ratio;
    bench_stat last_to_ready_us; /* requests only */
    double perftest_req_gbps; /* requests only: ucx_perftest moving the whole request at once */
    bench_stat ratio_req;
    bool ok;
    char error[600];
} bk_item;

typedef struct {
    char tls[128];
    char path[8]; /* what the transport picked */
    const char *perftest_test;
    bench_stat setup_us;
    bool setup_ok;
    bk_item plain[BK_MAX_ITEMS];
    int n_plain;
    bk_item reqs[BK_MAX_ITEMS];
    int n_reqs;
} bk_config;

typedef struct {
    bool json, quick;
    int reps;
    kvx_path path;
    char tls_list[BK_MAX_CONFIGS][128];
    int n_tls;
    char *saved_env_mm, *saved_env_ka; /* operator's values, for ucx_perftest */
} bk_opts;

/* ---- small helpers ------------------------------------------------------- */

static uint16_t bk_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    socklen_t len = sizeof(sin);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    uint16_t port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sin, &len) == 0) {
        port = ntohs(sin.sin_port);
    }
    if (fd >= 0) {
        close(fd);
    }
    return port;
}

/* Build an environment: ours with UCX_TLS replaced; for ucx_perftest the
 * transport's own additions are put back to what the operator had. */
static char **bk_env(const bk_opts *o, const char *tls, bool for_perftest, char *store, size_t cap)
{
    size_t n = 0;
    for (char **p = environ; *p != NULL; p++) {
        n++;
    }
    char **env = calloc(n + 4, sizeof(char *));
    size_t e = 0, off = 0;
    for (char **p = environ; *p != NULL; p++) {
        if (strncmp(*p, "UCX_TLS=", 8) == 0) {
            continue;
        }
        if (for_perftest && (strncmp(*p, "UCX_MM_ERROR_HANDLING=", 22) == 0 ||
                             strncmp(*p, "UCX_KEEPALIVE_INTERVAL=", 23) == 0)) {
            continue;
        }
        env[e++] = *p;
    }
    int k = snprintf(store + off, cap - off, "UCX_TLS=%s", tls);
    env[e++] = store + off;
    off += (size_t)k + 1;
    if (for_perftest && o->saved_env_mm != NULL) {
        k = snprintf(store + off, cap - off, "UCX_MM_ERROR_HANDLING=%s", o->saved_env_mm);
        env[e++] = store + off;
        off += (size_t)k + 1;
    }
    if (for_perftest && o->saved_env_ka != NULL) {
        snprintf(store + off, cap - off, "UCX_KEEPALIVE_INTERVAL=%s", o->saved_env_ka);
        env[e++] = store + off;
    }
    env[e] = NULL;
    return env;
}

static pid_t bk_spawn(char *const *argv, char **env, int *out_fd, bool search_path)
{
    pid_t pid = -1;
    return mls_spawn_piped(argv, env, search_path, &pid, out_fd) == 0 ? pid : -1;
}

/* Read one line (without '\n') from fd within timeout_ms; 0 ok, -1 on EOF/timeout. */
static int bk_read_line(int fd, char *buf, size_t cap, char *pend, size_t *pend_len, int timeout_ms)
{
    uint64_t deadline = mls_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        char *nl = memchr(pend, '\n', *pend_len);
        if (nl != NULL) {
            size_t n = (size_t)(nl - pend);
            size_t c = n < cap - 1 ? n : cap - 1;
            memcpy(buf, pend, c);
            buf[c] = '\0';
            memmove(pend, nl + 1, *pend_len - n - 1);
            *pend_len -= n + 1;
            return 0;
        }
        int64_t left = (int64_t)(deadline - mls_now_ns()) / 1000000;
        if (left <= 0 || *pend_len >= 4095) {
            return -1;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, (int)left) <= 0) {
            return -1;
        }
        ssize_t k = read(fd, pend + *pend_len, 4095 - *pend_len);
        if (k <= 0) {
            return -1;
        }
        *pend_len += (size_t)k;
    }
}

/* ---- ucx_perftest -------------------------------------------------------- */

/* Bandwidth in bytes/s of `test` at `size`, or NAN. */
static double bk_perftest(const bk_opts *o, const char *tls, const char *test, uint64_t size,
                          uint64_t iters)
{
    char store[512], sz[32], it[32], warm[32], port[16];
    char **env = bk_env(o, tls, true, store, sizeof(store));
    snprintf(sz, sizeof(sz), "%llu", (unsigned long long)size);
    snprintf(it, sizeof(it), "%llu", (unsigned long long)iters);
    snprintf(warm, sizeof(warm), "%llu", (unsigned long long)(iters / 10 + 1));
    double bw = NAN;
    for (int attempt = 0; attempt < 3 && isnan(bw); attempt++) {
        snprintf(port, sizeof(port), "%u", bk_free_port());
        char *srv_argv[] = {"ucx_perftest", "-p", port, "-t", (char *)test, "-s", sz,
                            "-n",           it,   "-w", warm, NULL};
        char *cli_argv[] = {"ucx_perftest", "127.0.0.1", "-p", port, "-t", (char *)test, "-s", sz,
                            "-n",           it,          "-w", warm, NULL};
        int srv_fd = -1, cli_fd = -1;
        pid_t srv = bk_spawn(srv_argv, env, &srv_fd, true);
        if (srv < 0) {
            break;
        }
        usleep(300000 + 300000 * (useconds_t)attempt); /* let the server listen */
        pid_t cli = bk_spawn(cli_argv, env, &cli_fd, true);
        char out[8192];
        size_t len = 0;
        if (cli > 0) {
            uint64_t deadline = mls_now_ns() + 60ull * 1000000000ull;
            while (len < sizeof(out) - 1 && mls_now_ns() < deadline) {
                struct pollfd pfd = {.fd = cli_fd, .events = POLLIN};
                if (poll(&pfd, 1, 1000) <= 0) {
                    continue;
                }
                ssize_t k = read(cli_fd, out + len, sizeof(out) - 1 - len);
                if (k <= 0) {
                    break;
                }
                len += (size_t)k;
            }
            out[len] = '\0';
            kill(cli, SIGKILL);
            waitpid(cli, NULL, 0);
            close(cli_fd);
            const char *fin = strstr(out, "Final:");
            double v[7];
            if (fin != NULL && sscanf(fin + 6, "%lf %lf %lf %lf %lf %lf %lf", &v[0], &v[1], &v[2],
                                      &v[3], &v[4], &v[5], &v[6]) == 7) {
                bw = v[5] * 1048576.0; /* overall MB/s, MB = 2^20 */
            }
        }
        kill(srv, SIGKILL);
        waitpid(srv, NULL, 0);
        close(srv_fd);
    }
    free(env);
    return bw;
}

/* ---- decode side (child) ------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    kvx_ctx *ctx;
    uint32_t pages_per_req, window, count, group, done;
    uint64_t *t_ready;  /* (count) */
    mls_status *status; /* (count) */
    char *pages_buf;
} bk_recv;

static void bk_recv_reserve(bk_recv *r, uint64_t rid);

static void bk_recv_flush(bk_recv *r, uint32_t from, uint32_t to)
{
    for (uint32_t i = from; i < to; i++) {
        printf("READY %u %llu %s\n", i + 1, (unsigned long long)r->t_ready[i],
               mls_status_name(r->status[i]));
    }
    fflush(stdout);
}

static void bk_recv_cb(void *arg, uint64_t rid, mls_status st, const char *why)
{
    bk_recv *r = arg;
    r->t_ready[rid - 1] = mls_now_ns();
    r->status[rid - 1] = st;
    if (st != MLS_OK) {
        fprintf(stderr, "bench kvxfer (decode): rid %llu: %s %s\n", (unsigned long long)rid,
                mls_status_name(st), why ? why : "");
    }
    r->done++;
    if (rid + r->window <= r->count) {
        bk_recv_reserve(r, rid + r->window);
    }
    if (r->done % r->group == 0 || r->done == r->count) {
        uint32_t from = r->done % r->group == 0 ? r->done - r->group : r->done - r->done % r->group;
        bk_recv_flush(r, from, r->done);
    }
    if (r->done == r->count) {
        uv_stop(&r->loop);
    }
}

static void bk_recv_reserve(bk_recv *r, uint64_t rid)
{
    uint32_t slot = (uint32_t)((rid - 1) % r->window);
    uint32_t ids[4096];
    for (uint32_t p = 0; p < r->pages_per_req; p++) {
        ids[p] = slot * r->pages_per_req + p;
    }
    mls_err err = {{0}};
    uint8_t token[KVX_TOKEN_BYTES];
    bk_token(rid, token);
    if (kvx_reserve(r->ctx, rid, ids, r->pages_per_req, token, BK_LEASE_MS, bk_recv_cb, r, &err) !=
        MLS_OK) {
        fprintf(stderr, "bench kvxfer (decode): %s\n", err.msg);
        exit(1);
    }
}

static int bk_recv_main(kvl_dtype dtype, uint32_t rank, uint32_t rope, uint32_t layers,
                        uint32_t tokens, uint32_t window, uint32_t count, uint32_t group)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    bk_recv r = {0};
    r.window = window;
    r.count = count;
    r.group = group;
    r.pages_per_req = (tokens + KVL_PAGE_TOKENS - 1) / KVL_PAGE_TOKENS;
    if (r.pages_per_req > 4096 || window == 0 || count == 0 || group == 0) {
        fprintf(stderr, "bench kvxfer (decode): bad shape\n");
        return 2;
    }
    r.t_ready = calloc(count, sizeof(uint64_t));
    r.status = calloc(count, sizeof(mls_status));
    uv_loop_init(&r.loop);
    kvx_config cfg = {.loop = &r.loop, .n_layers = layers, .tick_ms = 10};
    kvl_layout_init(dtype, rank, rope, 0xbe4c4ull, &cfg.layout);
    mls_err err = {{0}};
    if (kvx_ctx_create(&cfg, &r.ctx, &err) != MLS_OK) {
        fprintf(stderr, "bench kvxfer (decode): %s\n", err.msg);
        return 1;
    }
    uint32_t pool_pages = r.pages_per_req * window;
    size_t layer_bytes = (size_t)pool_pages * cfg.layout.page_bytes;
    void *mem = NULL;
    if (kvx_pool_alloc(r.ctx, KVX_MEM_HOST, layer_bytes * layers, &mem, &err) != MLS_OK) {
        fprintf(stderr, "bench kvxfer (decode): %s\n", err.msg);
        return 1;
    }
    memset(mem, 0, layer_bytes * layers); /* fault the pages in before timing */
    void *bases[KVX_MAX_LAYERS];
    for (uint32_t l = 0; l < layers; l++) {
        bases[l] = (uint8_t *)mem + l * layer_bytes;
    }
    uint16_t port = 0;
    if (kvx_pool_register(r.ctx, KVX_MEM_HOST, bases, pool_pages, &err) != MLS_OK ||
        kvx_listen(r.ctx, "127.0.0.1", 0, &port, &err) != MLS_OK) {
        fprintf(stderr, "bench kvxfer (decode): %s\n", err.msg);
        return 1;
    }
    for (uint64_t rid = 1; rid <= window && rid <= count; rid++) {
        bk_recv_reserve(&r, rid);
    }
    printf("PORT %u\n", port);
    fflush(stdout);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    printf("END\n");
    fflush(stdout);
    kvx_ctx_destroy(r.ctx);
    uv_loop_close(&r.loop);
    free(r.t_ready);
    free(r.status);
    return 0;
}

/* ---- prefill side -------------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    kvx_ctx *ctx;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint32_t done, failed;
    char path[8];
    char peer[64];
    char first_error[600];
} bk_send;

static void bk_send_cb(void *arg, uint64_t rid, mls_status st, const char *why)
{
    bk_send *s = arg;
    if (s->path[0] == '\0') {
        const char *p = kvx_peer_path(s->ctx, s->peer);
        snprintf(s->path, sizeof(s->path), "%s", p ? p : "?");
    }
    pthread_mutex_lock(&s->lock);
    s->done++;
    if (st != MLS_OK && s->failed++ == 0) {
        snprintf(s->first_error, sizeof(s->first_error), "rid %llu: %s %s", (unsigned long long)rid,
                 mls_status_name(st), why ? why : "");
    }
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void bk_stop_cb(uv_async_t *h)
{
    uv_stop(h->loop);
}

static void *bk_loop_thread(void *arg)
{
    bk_send *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void bk_wait_done(bk_send *s, uint32_t target)
{
    pthread_mutex_lock(&s->lock);
    while (s->done < target) {
        pthread_cond_wait(&s->cond, &s->lock);
    }
    pthread_mutex_unlock(&s->lock);
}

typedef struct {
    const bk_opts *o;
    const char *tls;
    kvl_dtype dtype;
    uint32_t rank, rope, layers, tokens, window, count, reps;
    bool per_layer_src; /* distinct rows per layer (requests) or one buffer (plain) */
    /* out, per rep */
    double gbps[BK_MAX_REPS];
    double last_to_ready_us[BK_MAX_REPS];
    double setup_us[4096];
    int n_setup;
    char path[8];
    char error[600];
} bk_run;

/* One scenario: a decode child, our context, reps x count requests. */
static int bk_scenario(bk_run *run)
{
    const bk_opts *o = run->o;
    char store[512];
    if (o->saved_env_mm == NULL) {
        unsetenv("UCX_MM_ERROR_HANDLING");
    }
    char **env = bk_env(o, run->tls, false, store, sizeof(store));
    char a_dtype[8], a_rank[16], a_rope[16], a_layers[16], a_tokens[16], a_window[16], a_count[16],
        a_group[16];
    snprintf(a_dtype, sizeof(a_dtype), "%s", kvl_dtype_name(run->dtype));
    snprintf(a_rank, sizeof(a_rank), "%u", run->rank);
    snprintf(a_rope, sizeof(a_rope), "%u", run->rope);
    snprintf(a_layers, sizeof(a_layers), "%u", run->layers);
    snprintf(a_tokens, sizeof(a_tokens), "%u", run->tokens);
    snprintf(a_window, sizeof(a_window), "%u", run->window);
    snprintf(a_count, sizeof(a_count), "%u", run->count * (run->reps + 1)); /* + warm-up rep */
    snprintf(a_group, sizeof(a_group), "%u", run->count);
    char *argv[] = {"/proc/self/exe", "bench",    "kvxfer", "--role",   "recv",   "--dtype",
                    a_dtype,          "--rank",   a_rank,   "--rope",   a_rope,   "--layers",
                    a_layers,         "--tokens", a_tokens, "--window", a_window, "--count",
                    a_count,          "--group",  a_group,  NULL};
    int fd = -1;
    pid_t child = bk_spawn(argv, env, &fd, false);
    free(env);
    if (child < 0) {
        snprintf(run->error, sizeof(run->error), "could not start the decode process");
        return -1;
    }
    int rc = -1;
    char line[256], pend[4096];
    size_t pend_len = 0;
    unsigned port = 0;
    bk_send s = {0};
    uint8_t *src = NULL;
    size_t src_bytes = 0;
    /* UCX may log on stdout too: skip what is not ours */
    do {
        if (bk_read_line(fd, line, sizeof(line), pend, &pend_len, 30000) != 0) {
            snprintf(run->error, sizeof(run->error), "decode process did not start");
            goto out_child;
        }
    } while (sscanf(line, "PORT %u", &port) != 1);
    snprintf(s.peer, sizeof(s.peer), "127.0.0.1:%u", port);
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    uv_loop_init(&s.loop);
    uv_async_init(&s.loop, &s.stop, bk_stop_cb);
    kvx_config cfg = {.loop = &s.loop, .n_layers = run->layers, .path = o->path, .tick_ms = 10};
    kvl_layout_init(run->dtype, run->rank, run->rope, 0xbe4c4ull, &cfg.layout);
    mls_err err = {{0}};
    if (o->saved_env_mm == NULL) {
        unsetenv("UCX_MM_ERROR_HANDLING"); /* kvx sets it again where shared memory is in use */
    }
    setenv("UCX_TLS", run->tls, 1);
    if (kvx_ctx_create(&cfg, &s.ctx, &err) != MLS_OK) {
        snprintf(run->error, sizeof(run->error), "%s", err.msg);
        goto out_loop;
    }
    uint32_t rb = cfg.layout.row_bytes;
    size_t layer_src = (size_t)run->tokens * rb;
    src_bytes = layer_src * (run->per_layer_src ? run->layers : 1);
    src = malloc(src_bytes);
    if (src == NULL) {
        snprintf(run->error, sizeof(run->error), "out of memory for %zu source bytes", src_bytes);
        goto out_ctx;
    }
    for (size_t i = 0; i < src_bytes; i += 8) { /* distinct, non-zero rows */
        uint64_t v = (i * 0x9e3779b97f4a7c15ull) ^ 0x5555aaaa5555aaaaull;
        memcpy(src + i, &v, src_bytes - i < 8 ? src_bytes - i : 8);
    }
    pthread_create(&s.thread, NULL, bk_loop_thread, &s);
    uint32_t pages = (run->tokens + KVL_PAGE_TOKENS - 1) / KVL_PAGE_TOKENS;
    uint32_t *ids = malloc(sizeof(uint32_t) * pages);
    kvx_req **reqs = calloc(run->count, sizeof(kvx_req *));
    uint64_t *t_create = calloc(run->count, sizeof(uint64_t));
    uint64_t *t_last = calloc(run->count, sizeof(uint64_t));
    uint64_t rid = 0;
    /* rep 0 warms up (connection, rkeys, first-touch mappings); not counted */
    for (uint32_t rep = 0; rep <= run->reps && rc != -2; rep++) {
        uint32_t base_done = s.done;
        uint64_t t0 = mls_now_ns();
        for (uint32_t i = 0; i < run->count; i++) {
            bk_wait_done(&s, base_done + (i >= run->window ? i - run->window + 1 : 0));
            rid++;
            uint32_t slot = (uint32_t)((rid - 1) % run->window);
            for (uint32_t p = 0; p < pages; p++) {
                ids[p] = slot * pages + p;
            }
            t_create[i] = mls_now_ns();
            uint8_t token[KVX_TOKEN_BYTES];
            bk_token(rid, token);
            if (kvx_req_create(s.ctx, s.peer, rid, token, ids, pages, run->tokens, bk_send_cb, &s,
                               &reqs[i], &err) != MLS_OK) {
                snprintf(run->error, sizeof(run->error), "%s", err.msg);
                rc = -2;
                break;
            }
            for (uint32_t l = 0; l < run->layers; l++) {
                const uint8_t *rows = src + (run->per_layer_src ? l * layer_src : 0);
                if (kvx_send_layer(reqs[i], l, 0, run->tokens, rows, &err) != MLS_OK) {
                    break;
                }
            }
            t_last[i] = mls_now_ns();
            kvx_finish(reqs[i], &err);
        }
        bk_wait_done(&s, base_done + run->count);
        for (uint32_t i = 0; i < run->count; i++) {
            kvx_req_release(reqs[i]);
            reqs[i] = NULL;
        }
        if (s.failed > 0) {
            snprintf(run->error, sizeof(run->error), "%s", s.first_error);
            rc = -2;
            break;
        }
        /* the decode side's ready times for this rep */
        uint64_t t_end = 0;
        for (uint32_t i = 0; i < run->count; i++) {
            unsigned got_rid;
            unsigned long long t_ready;
            char st[32];
            int got;
            do {
                got = bk_read_line(fd, line, sizeof(line), pend, &pend_len, 30000);
            } while (got == 0 && strncmp(line, "READY ", 6) != 0);
            if (got != 0 || sscanf(line, "READY %u %llu %31s", &got_rid, &t_ready, st) != 3 ||
                strcmp(st, "OK") != 0) {
                snprintf(run->error, sizeof(run->error), "decode side: '%s'", line);
                rc = -2;
                break;
            }
            uint32_t k = got_rid - 1 - rep * run->count;
            if (k < run->count && rep > 0) {
                if (run->count == 1) {
                    run->last_to_ready_us[rep - 1] = ((double)t_ready - (double)t_last[k]) / 1e3;
                }
                if (run->n_setup < 4096) {
                    run->setup_us[run->n_setup++] = ((double)t_ready - (double)t_create[k]) / 1e3;
                }
            }
            t_end = t_ready > t_end ? t_ready : t_end;
        }
        if (rc == -2) {
            break;
        }
        double bytes = (double)run->count * run->layers * layer_src;
        if (rep > 0) {
            run->gbps[rep - 1] = bytes / (double)(t_end - t0); /* bytes/ns = GB/s */
        }
    }
    if (rc != -2) {
        rc = 0;
    }
    snprintf(run->path, sizeof(run->path), "%s", s.path);
    uv_async_send(&s.stop);
    pthread_join(s.thread, NULL);
    free(ids);
    free(reqs);
    free(t_create);
    free(t_last);
out_ctx:
    kvx_ctx_destroy(s.ctx);
out_loop:
    uv_close((uv_handle_t *)&s.stop, NULL);
    uv_run(&s.loop, UV_RUN_NOWAIT);
    uv_loop_close(&s.loop);
    pthread_mutex_destroy(&s.lock);
    pthread_cond_destroy(&s.cond);
    free(src);
out_child:
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    close(fd);
    return rc;
}

/* ---- the whole benchmark ------------------------------------------------- */

static void bk_item_finish(const bk_opts *o, bk_item *it, bk_run *run, int rc, const char *tls,
                           const char *perftest_test)
{
    it->ok = rc == 0;
    snprintf(it->error, sizeof(it->error), "%s", run->error);
    it->gbps = bench_stat_of(run->gbps, it->ok ? (int)run->reps : 0);
    double last[BK_MAX_REPS];
    memcpy(last, run->last_to_ready_us, sizeof(last));
    it->last_to_ready_us = bench_stat_of(last, it->ok && run->count == 1 ? (int)run->reps : 0);
    uint64_t target = o->quick ? (64ull << 20) : (1ull << 30);
    uint64_t iters = target / it->run_bytes;
    iters = iters < 20 ? 20 : iters > 20000 ? 20000 : iters;
    double pt = bk_perftest(o, tls, perftest_test, it->run_bytes, iters);
    it->perftest_gbps = pt / 1e9;
    double r[BK_MAX_REPS];
    for (uint32_t i = 0; i < run->reps; i++) {
        r[i] = run->gbps[i] / it->perftest_gbps;
    }
    it->ratio = bench_stat_of(r, it->ok && !isnan(pt) ? (int)run->reps : 0);
    it->perftest_req_gbps = NAN;
    it->ratio_req = bench_stat_of(r, 0);
    if (run->count == 1 && it->layers > 1) {
        /* The same bytes as one message: a memory-bound baseline, where the
         * per-run size above lets ucx_perftest copy one cache-resident buffer. */
        iters = target / it->bytes;
        iters = iters < 3 ? 3 : iters > 20000 ? 20000 : iters;
        pt = bk_perftest(o, tls, perftest_test, it->bytes, iters);
        it->perftest_req_gbps = pt / 1e9;
        for (uint32_t i = 0; i < run->reps; i++) {
            r[i] = run->gbps[i] / it->perftest_req_gbps;
        }
        it->ratio_req = bench_stat_of(r, it->ok && !isnan(pt) ? (int)run->reps : 0);
    }
}

static void bk_config_run(const bk_opts *o, bk_config *c)
{
    int reps = o->reps;
    /* setup overhead: 1-token requests, one at a time */
    bk_run *run = calloc(1, sizeof(*run));
    *run = (bk_run){.o = o,
                    .tls = c->tls,
                    .dtype = KVL_DTYPE_BF16,
                    .rank = 512,
                    .rope = 64,
                    .layers = 1,
                    .tokens = 1,
                    .window = 1,
                    .count = o->quick ? 50 : 200,
                    .reps = 1};
    int rc = bk_scenario(run);
    c->setup_ok = rc == 0;
    c->setup_us = bench_stat_of(run->setup_us, rc == 0 ? run->n_setup : 0);
    snprintf(c->path, sizeof(c->path), "%s", run->path);
    if (strcmp(c->path, "rma") == 0) {
        c->perftest_test = "ucp_put_bw";
    } else {
        c->perftest_test = "ucp_am_bw";
    }
    if (rc != 0) {
        fprintf(stderr, "bench kvxfer [%s] setup: %s\n", c->tls, run->error);
    }

    /* plain messages: one layer of 1 KiB rows (f32, R=192, D=64): 64 KiB pages */
    static const uint64_t sizes[] = {64u << 10, 1u << 20, 16u << 20};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        bk_item *it = &c->plain[c->n_plain++];
        uint64_t total = o->quick ? (32ull << 20) : (512ull << 20);
        uint32_t count = (uint32_t)(total / sizes[i]);
        count = count < 8 ? 8 : count > 4096 ? 4096 : count;
        memset(run, 0, sizeof(*run));
        *run = (bk_run){.o = o,
                        .tls = c->tls,
                        .dtype = KVL_DTYPE_F32,
                        .rank = 192,
                        .rope = 64,
                        .layers = 1,
                        .tokens = (uint32_t)(sizes[i] / 1024),
                        .window = sizes[i] >= (16u << 20) ? 4 : 8,
                        .count = count,
                        .reps = (uint32_t)reps};
        snprintf(it->name, sizeof(it->name), "%llu KiB", (unsigned long long)(sizes[i] >> 10));
        it->bytes = sizes[i];
        it->tokens = run->tokens;
        it->layers = 1;
        it->row_bytes = 1024;
        it->window = run->window;
        it->count = count;
        it->run_bytes = sizes[i];
        rc = bk_scenario(run);
        if (rc != 0) {
            fprintf(stderr, "bench kvxfer [%s] %s: %s\n", c->tls, it->name, run->error);
        }
        bk_item_finish(o, it, run, rc, c->tls, c->perftest_test);
    }

    /* realistic requests: DeepSeek-V3 rows, 61 layers */
    static const struct {
        kvl_dtype dtype;
        uint32_t tokens;
        bool full_only;
    } shapes[] = {
        {KVL_DTYPE_BF16, 2000, false},
        {KVL_DTYPE_FP8, 2000, false},
        {KVL_DTYPE_BF16, 32000, true},
        {KVL_DTYPE_FP8, 32000, true},
    };
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        if (o->quick && shapes[i].full_only) {
            continue;
        }
        bk_item *it = &c->reqs[c->n_reqs++];
        uint32_t layers = o->quick ? 8 : 61;
        memset(run, 0, sizeof(*run));
        *run = (bk_run){.o = o,
                        .tls = c->tls,
                        .dtype = shapes[i].dtype,
                        .rank = 512,
                        .rope = 64,
                        .layers = layers,
                        .tokens = shapes[i].tokens,
                        .window = 1,
                        .count = 1,
                        .reps = (uint32_t)reps,
                        .per_layer_src = true};
        kvl_layout lay;
        kvl_layout_init(shapes[i].dtype, 512, 64, 0, &lay);
        snprintf(it->name, sizeof(it->name), "%s %u tok x %u layers",
                 kvl_dtype_name(shapes[i].dtype), shapes[i].tokens, layers);
        it->tokens = shapes[i].tokens;
        it->layers = layers;
        it->row_bytes = lay.row_bytes;
        it->bytes = (uint64_t)shapes[i].tokens * lay.row_bytes * layers;
        it->window = 1;
        it->count = 1;
        it->run_bytes = (uint64_t)shapes[i].tokens * lay.row_bytes;
        rc = bk_scenario(run);
        if (rc != 0) {
            fprintf(stderr, "bench kvxfer [%s] %s: %s\n", c->tls, it->name, run->error);
        }
        bk_item_finish(o, it, run, rc, c->tls, c->perftest_test);
    }
    free(run);
}

/* ---- output -------------------------------------------------------------- */

static void bk_json_num(double v)
{
    if (isfinite(v)) {
        printf("%.6g", v);
    } else {
        printf("null");
    }
}

static void bk_json_stat(const char *name, bench_stat s)
{
    printf("\"%s\":{\"min\":", name);
    bk_json_num(s.min);
    printf(",\"median\":");
    bk_json_num(s.med);
    printf(",\"max\":");
    bk_json_num(s.max);
    printf("}");
}

static void bk_json_item(const bk_item *it, bool request)
{
    printf("{\"name\":\"%s\",\"ok\":%s,\"bytes\":%llu,\"tokens\":%u,\"layers\":%u,"
           "\"row_bytes\":%u,\"window\":%u,\"count\":%u,\"perftest_bytes\":%llu,",
           it->name, it->ok ? "true" : "false", (unsigned long long)it->bytes, it->tokens,
           it->layers, it->row_bytes, it->window, it->count, (unsigned long long)it->run_bytes);
    bk_json_stat("gbps", it->gbps);
    printf(",\"perftest_gbps\":");
    bk_json_num(it->perftest_gbps);
    printf(",");
    bk_json_stat("ratio", it->ratio);
    if (request) {
        printf(",");
        bk_json_stat("last_layer_to_ready_us", it->last_to_ready_us);
        printf(",\"perftest_request_gbps\":");
        bk_json_num(it->perftest_req_gbps);
        printf(",");
        bk_json_stat("ratio_request", it->ratio_req);
    }
    if (!it->ok) {
        printf(",\"error\":\"");
        for (const char *p = it->error; *p; p++) {
            if (*p == '"' || *p == '\\') {
                putchar('\\');
            }
            putchar((unsigned char)*p >= 0x20 ? *p : ' ');
        }
        printf("\"");
    }
    printf("}");
}

static void bk_print_json(const bk_opts *o, const bk_config *cs, int n)
{
    printf(
        "{\"bench\":\"kvxfer\",\"quick\":%s,\"reps\":%d,\"unit\":\"GB/s (1e9 B/s)\",\"configs\":[",
        o->quick ? "true" : "false", o->reps);
    for (int i = 0; i < n; i++) {
        const bk_config *c = &cs[i];
        printf("%s{\"tls\":\"%s\",\"path\":\"%s\",\"perftest_test\":\"%s\",", i ? "," : "", c->tls,
               c->path, c->perftest_test ? c->perftest_test : "");
        bk_json_stat("setup_us", c->setup_us);
        printf(",\"plain\":[");
        for (int k = 0; k < c->n_plain; k++) {
            printf("%s", k ? "," : "");
            bk_json_item(&c->plain[k], false);
        }
        printf("],\"requests\":[");
        for (int k = 0; k < c->n_reqs; k++) {
            printf("%s", k ? "," : "");
            bk_json_item(&c->reqs[k], true);
        }
        printf("]}");
    }
    printf("]}\n");
}

static void bk_print_text(const bk_opts *o, const bk_config *cs, int n)
{
    for (int i = 0; i < n; i++) {
        const bk_config *c = &cs[i];
        printf("UCX_TLS=%s  path %s  vs ucx_perftest %s  (%d reps, min/median/max)\n", c->tls,
               c->path, c->perftest_test ? c->perftest_test : "-", o->reps);
        printf("  per-request setup (1 token, create -> ready): %.1f / %.1f / %.1f us\n",
               c->setup_us.min, c->setup_us.med, c->setup_us.max);
        printf("  %-26s %8s %24s %10s %20s %s\n", "transfer", "MB", "ours GB/s", "perftest",
               "ratio", "last layer->ready us");
        for (int pass = 0; pass < 2; pass++) {
            const bk_item *items = pass ? c->reqs : c->plain;
            int m = pass ? c->n_reqs : c->n_plain;
            for (int k = 0; k < m; k++) {
                const bk_item *it = &items[k];
                if (!it->ok) {
                    printf("  %-26s failed: %s\n", it->name, it->error);
                    continue;
                }
                printf("  %-26s %8.1f %7.2f/%7.2f/%7.2f %10.2f %6.2f/%6.2f/%6.2f", it->name,
                       it->bytes / 1e6, it->gbps.min, it->gbps.med, it->gbps.max,
                       it->perftest_gbps, it->ratio.min, it->ratio.med, it->ratio.max);
                if (pass) {
                    printf("  %.0f/%.0f/%.0f", it->last_to_ready_us.min,
                           it->last_to_ready_us.med, it->last_to_ready_us.max);
                    printf("\n  %-26s %8s %24s %10.2f %6.2f/%6.2f/%6.2f  (perftest moving the "
                           "whole request as one message)",
                           "", "", "", it->perftest_req_gbps, it->ratio_req.min,
                           it->ratio_req.med, it->ratio_req.max);
                }
                printf("\n");
            }
        }
    }
}

static void bk_usage(FILE *f)
{
    fprintf(f, "usage: mlaserve bench kvxfer [--json] [--quick] [--tls LIST[;LIST...]] [--reps N]\n"
               "                             [--path auto|rma|am]\n"
               "  Two processes on 127.0.0.1: KV transfer bandwidth vs ucx_perftest with the same\n"
               "  UCX_TLS (default: \"posix,cma,tcp,self;tcp,self\" - shared memory needs tcp\n"
               "  for the sockaddr connection setup), per-request setup overhead and the time\n"
               "  from the last layer's send to ready on the decode side.\n");
}

int mls_cmd_bench_kvxfer(int argc, char **argv)
{
    bk_opts o = {.reps = 0, .path = KVX_PATH_AUTO};
    const char *tls = "posix,cma,tcp,self;tcp,self";
    const char *role = NULL;
    kvl_dtype dtype = KVL_DTYPE_BF16;
    uint32_t rank = 512, rope = 64, layers = 1, tokens = 1, window = 1, count = 1, group = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else if (strcmp(a, "--quick") == 0) {
            o.quick = true;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            bk_usage(stdout);
            return 0;
        } else if (v == NULL) {
            bk_usage(stderr);
            return 2;
        } else if (strcmp(a, "--tls") == 0) {
            tls = v, i++;
        } else if (strcmp(a, "--reps") == 0) {
            o.reps = atoi(v), i++;
        } else if (strcmp(a, "--path") == 0) {
            o.path = strcmp(v, "rma") == 0  ? KVX_PATH_RMA
                     : strcmp(v, "am") == 0 ? KVX_PATH_AM
                                            : KVX_PATH_AUTO;
            i++;
        } else if (strcmp(a, "--role") == 0) {
            role = v, i++;
        } else if (strcmp(a, "--dtype") == 0) {
            if (kvl_dtype_parse(v, &dtype) != MLS_OK) {
                return 2;
            }
            i++;
        } else if (strcmp(a, "--rank") == 0) {
            rank = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--rope") == 0) {
            rope = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--layers") == 0) {
            layers = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--tokens") == 0) {
            tokens = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--window") == 0) {
            window = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--count") == 0) {
            count = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--group") == 0) {
            group = (uint32_t)atoi(v), i++;
        } else {
            fprintf(stderr, "bench kvxfer: unknown option '%s'\n", a);
            bk_usage(stderr);
            return 2;
        }
    }
    if (role != NULL) {
        if (strcmp(role, "recv") != 0) {
            return 2;
        }
        return bk_recv_main(dtype, rank, rope, layers, tokens, window, count, group);
    }
    if (o.reps <= 0) {
        o.reps = o.quick ? 2 : 5;
    }
    if (o.reps > BK_MAX_REPS) {
        o.reps = BK_MAX_REPS;
    }
    char tls_copy[512];
    snprintf(tls_copy, sizeof(tls_copy), "%s", tls);
    for (char *t = strtok(tls_copy, ";"); t != NULL && o.n_tls < BK_MAX_CONFIGS;
         t = strtok(NULL, ";")) {
        snprintf(o.tls_list[o.n_tls++], sizeof(o.tls_list[0]), "%s", t);
    }
    signal(SIGPIPE, SIG_IGN);
    if (getenv("UCX_MM_ERROR_HANDLING") != NULL) {
        o.saved_env_mm = strdup(getenv("UCX_MM_ERROR_HANDLING"));
    }
    if (getenv("UCX_KEEPALIVE_INTERVAL") != NULL) {
        o.saved_env_ka = strdup(getenv("UCX_KEEPALIVE_INTERVAL"));
    }
    bk_config *cs = calloc((size_t)o.n_tls, sizeof(bk_config));
    for (int i = 0; i < o.n_tls; i++) {
        snprintf(cs[i].tls, sizeof(cs[i].tls), "%s", o.tls_list[i]);
        bk_config_run(&o, &cs[i]);
    }
    if (o.json) {
        bk_print_json(&o, cs, o.n_tls);
    } else {
        bk_print_text(&o, cs, o.n_tls);
    }
    int fail = 0;
    for (int i = 0; i < o.n_tls; i++) {
        fail |= !cs[i].setup_ok;
        for (int k = 0; k < cs[i].n_plain; k++) {
            fail |= !cs[i].plain[k].ok;
        }
        for (int k = 0; k < cs[i].n_reqs; k++) {
            fail |= !cs[i].reqs[k].ok;
        }
    }
    free(cs);
    free(o.saved_env_mm);
    free(o.saved_env_ka);
    return fail ? 1 : 0;
}
