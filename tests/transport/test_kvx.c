/*
 * test_kvx.c - the KV transfer between two real processes on loopback.
 *
 * This process is the decode node (receiver: pools, listener, reservations,
 * checks of the pages); build/bin/kvx_test_peer is exec'd as the prefill
 * node. Covers: bit-exact pages for several requests and layers on both paths
 * and for f32/bf16/fp8 layouts, the automatic path probe, a sender killed
 * mid-transfer (failure reported within 1 s, pages freed), a stopped sender
 * caught by the lease, a corrupted payload caught by the checksum, a layout
 * mismatch refused at connect, cancellation, and no transport memory left;
 * a sender without the request's token (a wrong or an all-zero one) refused
 * on both paths with the pages untouched and the reservation still open for
 * the right sender; the UCX listeners of a context bound to 127.0.0.1 on
 * 127.0.0.1 only. One test turns the roles round (kvx_test_peer --role recv)
 * to freeze the decode node under a sender with a request timeout.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>

#include "kvx.h"
#include "kvx_test_gen.h"
#include "mls_alloc.h"
#include "mls_num.h"
#include "mls_proc.h"
#include "mls_test.h"

extern char **environ;

#define T_POOL_PAGES 24u
#define T_MAX_RESV   8
#define T_SEED       0x5eedull

typedef struct {
    uint64_t rid;
    uint32_t n_tokens;
    uint32_t page_ids[16];
    uint32_t n_pages;
    bool called;
    mls_status status;
    char why[512];
    uint64_t t_cb_ns;
} t_resv;

typedef struct {
    uv_loop_t loop;
    kvx_ctx *ctx;
    kvx_config cfg;
    uint8_t *pool[KVX_MAX_LAYERS];
    void *pool_mem; /* one block carved into layer pools */
    size_t pool_bytes;
    bool pool_from_kvx;
    uint16_t port;
    t_resv resv[T_MAX_RESV];
    int n_resv;
    /* the sender process */
    pid_t pid;
    int out_fd;
    char out[16384];
    size_t out_len;
} t_node;

static int64_t t_base_bytes; /* transport bytes held before the test (a failed test may leak) */

static void t_resv_cb(void *arg, uint64_t rid, mls_status st, const char *why)
{
    t_resv *r = arg;
    r->called = true;
    r->status = st;
    r->t_cb_ns = mls_now_ns();
    snprintf(r->why, sizeof(r->why), "%s", why ? why : "");
}

static mls_status t_node_start_tls(t_node *n, kvl_dtype dtype, uint32_t layers, bool pool_from_kvx,
                                   const char *tls);

static mls_status t_node_start(t_node *n, kvl_dtype dtype, uint32_t layers, bool pool_from_kvx)
{
    return t_node_start_tls(n, dtype, layers, pool_from_kvx, NULL);
}

/* tls: UCX_TLS for this node's UCX context (read at kvx_ctx_create), or NULL. */
static mls_status t_node_start_tls(t_node *n, kvl_dtype dtype, uint32_t layers, bool pool_from_kvx,
                                   const char *tls)
{
    memset(n, 0, sizeof(*n));
    t_base_bytes = mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT);
    n->pid = -1;
    n->out_fd = -1;
    uv_loop_init(&n->loop);
    n->cfg.loop = &n->loop;
    n->cfg.n_layers = layers;
    n->cfg.tick_ms = 5;
    kvl_layout_init(dtype, 512, 64, 0xfeedull, &n->cfg.layout);
    mls_err err = {{0}};
    char *saved = getenv("UCX_TLS") ? strdup(getenv("UCX_TLS")) : NULL;
    if (tls != NULL) {
        setenv("UCX_TLS", tls, 1);
    }
    mls_status st = kvx_ctx_create(&n->cfg, &n->ctx, &err);
    if (tls != NULL && saved != NULL) {
        setenv("UCX_TLS", saved, 1);
    } else if (tls != NULL) {
        unsetenv("UCX_TLS");
    }
    free(saved);
    if (st != MLS_OK) {
        fprintf(stderr, "kvx_ctx_create: %s\n", err.msg);
        return st;
    }
    n->pool_bytes = (size_t)layers * T_POOL_PAGES * n->cfg.layout.page_bytes;
    n->pool_from_kvx = pool_from_kvx;
    if (pool_from_kvx) {
        st = kvx_pool_alloc(n->ctx, KVX_MEM_HOST, n->pool_bytes, &n->pool_mem, &err);
    } else {
        n->pool_mem = mls_alloc(MLS_ALLOC_TAG_KV_POOL, n->pool_bytes);
        st = n->pool_mem ? MLS_OK : MLS_ERR_NO_MEMORY;
    }
    if (st != MLS_OK) {
        return st;
    }
    memset(n->pool_mem, 0xee, n->pool_bytes); /* canary: untouched pages keep it */
    for (uint32_t l = 0; l < layers; l++) {
        n->pool[l] = (uint8_t *)n->pool_mem + (size_t)l * T_POOL_PAGES * n->cfg.layout.page_bytes;
    }
    st = kvx_pool_register(n->ctx, KVX_MEM_HOST, (void *const *)n->pool, T_POOL_PAGES, &err);
    if (st == MLS_OK) {
        st = kvx_listen(n->ctx, "127.0.0.1", 0, &n->port, &err);
    }
    if (st != MLS_OK) {
        fprintf(stderr, "kvx setup: %s\n", err.msg);
    }
    return st;
}

static void t_node_stop(t_node *n)
{
    if (n->pid > 0) {
        kill(n->pid, SIGKILL);
        waitpid(n->pid, NULL, 0);
    }
    if (n->out_fd >= 0) {
        close(n->out_fd);
    }
    kvx_ctx_destroy(n->ctx);
    uv_loop_close(&n->loop);
    if (!n->pool_from_kvx) {
        mls_free(MLS_ALLOC_TAG_KV_POOL, n->pool_mem, n->pool_bytes);
    }
}

static t_resv *t_reserve(t_node *n, uint64_t rid, uint32_t n_tokens, const uint32_t *pages,
                         uint32_t n_pages, uint32_t lease_ms)
{
    t_resv *r = &n->resv[n->n_resv++];
    r->rid = rid;
    r->n_tokens = n_tokens;
    r->n_pages = n_pages;
    memcpy(r->page_ids, pages, sizeof(uint32_t) * n_pages);
    mls_err err = {{0}};
    uint8_t token[KVX_TOKEN_BYTES];
    kvx_test_token(T_SEED, rid, token, sizeof(token));
    if (kvx_reserve(n->ctx, rid, pages, n_pages, token, lease_ms, t_resv_cb, r, &err) != MLS_OK) {
        fprintf(stderr, "kvx_reserve: %s\n", err.msg);
        return NULL;
    }
    return r;
}

/* Start the sender. extra: NULL-terminated extra arguments; tls: UCX_TLS for
 * the child or NULL to inherit. Every reservation of n is sent. */
static int t_spawn(t_node *n, const char *path, const char *dtype, const char *fingerprint,
                   const char *tls, const char *const *extra)
{
    char port[16], layers[16], seed[32];
    char reqs[T_MAX_RESV][512];
    const char *argv[64];
    int a = 0;
    snprintf(port, sizeof(port), "%u", n->port);
    snprintf(layers, sizeof(layers), "%u", n->cfg.n_layers);
    snprintf(seed, sizeof(seed), "%llu", (unsigned long long)T_SEED);
    argv[a++] = MLS_BIN_DIR "/kvx_test_peer";
    argv[a++] = "--port", argv[a++] = port;
    argv[a++] = "--dtype", argv[a++] = dtype;
    argv[a++] = "--layers", argv[a++] = layers;
    argv[a++] = "--fingerprint", argv[a++] = fingerprint;
    argv[a++] = "--path", argv[a++] = path;
    argv[a++] = "--seed", argv[a++] = seed;
    for (int i = 0; i < n->n_resv; i++) {
        t_resv *r = &n->resv[i];
        int off =
            snprintf(reqs[i], sizeof(reqs[i]), "%llu:%u:", (unsigned long long)r->rid, r->n_tokens);
        for (uint32_t p = 0; p < r->n_pages; p++) {
            off += snprintf(reqs[i] + off, sizeof(reqs[i]) - (size_t)off, "%s%u", p ? "," : "",
                            r->page_ids[p]);
        }
        argv[a++] = "--req", argv[a++] = reqs[i];
    }
    for (int i = 0; extra != NULL && extra[i] != NULL; i++) {
        argv[a++] = extra[i];
    }
    argv[a] = NULL;

    /* environment: inherited, UCX_TLS replaced when asked */
    char *envp[512];
    char tls_env[128];
    int e = 0;
    for (char **p = environ; *p != NULL && e < 500; p++) {
        if (tls == NULL || strncmp(*p, "UCX_TLS=", 8) != 0) {
            envp[e++] = *p;
        }
    }
    if (tls != NULL) {
        snprintf(tls_env, sizeof(tls_env), "UCX_TLS=%s", tls);
        envp[e++] = tls_env;
    }
    envp[e] = NULL;
    int fd = -1, rc = mls_spawn_piped((char *const *)argv, envp, false, &n->pid, &fd);
    if (rc != 0) {
        fprintf(stderr, "spawn %s: %s\n", argv[0], strerror(rc));
        n->pid = -1;
        return -1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    n->out_fd = fd;
    n->out_len = 0;
    return 0;
}

static void t_read_child(t_node *n)
{
    for (;;) {
        if (n->out_len + 1 >= sizeof(n->out)) {
            return;
        }
        ssize_t k = read(n->out_fd, n->out + n->out_len, sizeof(n->out) - 1 - n->out_len);
        if (k <= 0) {
            return;
        }
        n->out_len += (size_t)k;
        n->out[n->out_len] = '\0';
    }
}

/* Run the loop until pred(n, arg) or timeout; true when pred held. */
static bool t_run_until(t_node *n, bool (*pred)(t_node *, const void *), const void *arg,
                        uint32_t timeout_ms)
{
    uint64_t deadline = mls_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (mls_now_ns() < deadline) {
        uv_run(&n->loop, UV_RUN_NOWAIT);
        if (n->out_fd >= 0) {
            t_read_child(n);
        }
        if (pred(n, arg)) {
            return true;
        }
        usleep(200);
    }
    return false;
}

static bool t_pred_all_called(t_node *n, const void *arg)
{
    for (int i = 0; i < n->n_resv; i++) {
        if (!n->resv[i].called) {
            return false;
        }
    }
    return true;
}

static bool t_pred_output(t_node *n, const void *arg)
{
    return strstr(n->out, (const char *)arg) != NULL;
}

static bool t_pred_child_exit(t_node *n, const void *arg)
{
    int status;
    if (n->pid > 0 && waitpid(n->pid, &status, WNOHANG) == n->pid) {
        n->pid = -1;
        *(int *)arg = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return n->pid < 0;
}

/* Every reserved row equals the generator's; every other byte of the pools
 * still holds the canary. Returns the number of bad rows/pages. */
static int t_check_pages(t_node *n)
{
    uint32_t rb = n->cfg.layout.row_bytes;
    uint64_t pb = n->cfg.layout.page_bytes;
    uint8_t *want = malloc(rb);
    uint8_t used[T_POOL_PAGES] = {0};
    int bad = 0;
    for (int i = 0; i < n->n_resv; i++) {
        t_resv *r = &n->resv[i];
        for (uint32_t p = 0; p < r->n_pages; p++) {
            used[r->page_ids[p]] = 1;
        }
        for (uint32_t l = 0; l < n->cfg.n_layers; l++) {
            for (uint32_t t = 0; t < r->n_tokens; t++) {
                kvx_test_row(T_SEED, r->rid, l, t, want, rb);
                const uint8_t *got = kvl_row_cptr(&n->cfg.layout, n->pool[l], r->page_ids, t);
                if (memcmp(got, want, rb) != 0 && bad++ < 5) {
                    fprintf(stderr, "  rid %llu layer %u token %u: row differs\n",
                            (unsigned long long)r->rid, l, t);
                }
            }
        }
    }
    for (uint32_t l = 0; l < n->cfg.n_layers; l++) {
        for (uint32_t p = 0; p < T_POOL_PAGES; p++) {
            const uint8_t *pg = n->pool[l] + p * pb;
            if (!used[p] && (pg[0] != 0xee || memcmp(pg, pg + 1, pb - 1) != 0) && bad++ < 10) {
                fprintf(stderr, "  layer %u page %u (not reserved) was written\n", l, p);
            }
        }
    }
    free(want);
    return bad;
}

static int t_count(const char *hay, const char *needle)
{
    int c = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle)) {
        c++;
    }
    return c;
}

/* ---- tests --------------------------------------------------------------- */

/* Three requests x 4 layers: non-contiguous page lists (runs to coalesce),
 * partial last pages, chunks that split pages. */
static void t_roundtrip(kvl_dtype dtype, const char *path, const char *tls, const char *want_path,
                        bool pool_from_kvx)
{
    t_node n;
    CHECK_OK(t_node_start_tls(&n, dtype, 4, pool_from_kvx, tls));
    static const uint32_t p1[] = {3, 4, 5, 9}; /* 3-page run + 1 */
    static const uint32_t p2[] = {20, 12, 13}; /* 1 + 2-page run */
    static const uint32_t p3[] = {0};
    CHECK(t_reserve(&n, 101, 230, p1, 4, 10000) != NULL);
    CHECK(t_reserve(&n, 102, 150, p2, 3, 10000) != NULL);
    CHECK(t_reserve(&n, 103, 17, p3, 1, 10000) != NULL);
    static const char *const extra[] = {"--chunk", "50", NULL};
    CHECK(t_spawn(&n, path, kvl_dtype_name(dtype), "0xfeed", tls, extra) == 0);
    bool ok = t_run_until(&n, t_pred_all_called, NULL, 20000);
    CHECK_MSG(ok, "callbacks missing; sender said:\n%s", n.out);
    for (int i = 0; i < n.n_resv; i++) {
        CHECK_MSG(n.resv[i].status == MLS_OK, "rid %llu: %s %s", (unsigned long long)n.resv[i].rid,
                  mls_status_name(n.resv[i].status), n.resv[i].why);
    }
    int code = -1;
    CHECK(t_run_until(&n, t_pred_child_exit, &code, 10000));
    CHECK_EQ_INT(code, 0);
    CHECK_EQ_INT(t_count(n.out, " ERR_"), 0);
    CHECK_EQ_INT(t_count(n.out, " OK -"), 3);
    CHECK_MSG(strstr(n.out, "transport_bytes=0") != NULL, "sender leaked: %s", n.out);
    if (want_path != NULL) {
        char line[32];
        snprintf(line, sizeof(line), "PATH %s", want_path);
        CHECK_MSG(strstr(n.out, line) != NULL, "want %s, sender said:\n%s", line, n.out);
    }
    CHECK_EQ_INT(t_check_pages(&n), 0);
    kvx_stats s;
    kvx_ctx_stats(n.ctx, &s);
    CHECK_EQ_INT(s.reservations_open, 0);
    CHECK_EQ_INT(s.bytes_received, (230 + 150 + 17) * 4ull * n.cfg.layout.row_bytes);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

static void test_roundtrip_f32_rma(void)
{
    t_roundtrip(KVL_DTYPE_F32, "rma", NULL, "rma", false);
}
static void test_roundtrip_f32_am(void)
{
    t_roundtrip(KVL_DTYPE_F32, "am", NULL, "am", true);
}
static void test_roundtrip_bf16_rma(void)
{
    t_roundtrip(KVL_DTYPE_BF16, "rma", NULL, "rma", true);
}
static void test_roundtrip_bf16_am(void)
{
    t_roundtrip(KVL_DTYPE_BF16, "am", NULL, "am", false);
}
static void test_roundtrip_fp8_rma(void)
{
    t_roundtrip(KVL_DTYPE_FP8, "rma", NULL, "rma", false);
}
static void test_roundtrip_fp8_am(void)
{
    t_roundtrip(KVL_DTYPE_FP8, "am", NULL, "am", true);
}

/* The probe: shared memory -> RMA; TCP only -> AM (data still bit-exact). */
static void test_auto_path_shm(void)
{
    t_roundtrip(KVL_DTYPE_BF16, "auto", "posix,cma,tcp,self", "rma", true);
}
static void test_auto_path_tcp(void)
{
    t_roundtrip(KVL_DTYPE_BF16, "auto", "tcp,self", "am", false);
}

/* SIGKILL of the sender mid-transfer: the reservation fails with PEER_DEAD
 * within 1 s and the transport lets go of it. */
static void t_sender_killed(const char *path)
{
    t_node n;
    CHECK_OK(t_node_start(&n, KVL_DTYPE_BF16, 32, true));
    static const uint32_t pages[] = {1, 2, 3, 4};
    CHECK(t_reserve(&n, 7, 256, pages, 4, 30000) != NULL);
    static const char *const extra[] = {"--delay-ms", "40", NULL};
    CHECK(t_spawn(&n, path, "bf16", "0xfeed", NULL, extra) == 0);
    CHECK_MSG(t_run_until(&n, t_pred_output, "SENT 7 2\n", 10000), "sender said:\n%s", n.out);
    uint64_t t_kill = mls_now_ns();
    kill(n.pid, SIGKILL);
    CHECK(t_run_until(&n, t_pred_all_called, NULL, 3000));
    double dt = (double)(n.resv[0].t_cb_ns - t_kill) / 1e9;
    CHECK_MSG(n.resv[0].status == MLS_ERR_PEER_DEAD, "got %s %s", mls_status_name(n.resv[0].status),
              n.resv[0].why);
    CHECK_LE_DBL(dt, 1.0);
    fprintf(stderr, "  %s: failure reported %.0f ms after SIGKILL\n", path, dt * 1e3);
    kvx_stats s;
    kvx_ctx_stats(n.ctx, &s);
    CHECK_EQ_INT(s.reservations_open, 0);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

static void test_sender_killed_rma(void)
{
    t_sender_killed("rma");
}
static void test_sender_killed_am(void)
{
    t_sender_killed("am");
}

/* SIGSTOP: UCX sees nothing wrong; the lease frees the pages. */
static void test_sender_stopped_lease(void)
{
    t_node n;
    CHECK_OK(t_node_start(&n, KVL_DTYPE_BF16, 32, true));
    static const uint32_t pages[] = {5, 6};
    const uint32_t lease_ms = 1500;
    uint64_t t0 = mls_now_ns();
    CHECK(t_reserve(&n, 8, 100, pages, 2, lease_ms) != NULL);
    static const char *const extra[] = {"--delay-ms", "40", NULL};
    CHECK(t_spawn(&n, "am", "bf16", "0xfeed", NULL, extra) == 0);
    CHECK_MSG(t_run_until(&n, t_pred_output, "SENT 8 1\n", 10000), "sender said:\n%s", n.out);
    kill(n.pid, SIGSTOP);
    CHECK(t_run_until(&n, t_pred_all_called, NULL, 5000));
    double dt = (double)(n.resv[0].t_cb_ns - t0) / 1e9;
    CHECK_MSG(n.resv[0].status == MLS_ERR_TIMED_OUT, "got %s %s", mls_status_name(n.resv[0].status),
              n.resv[0].why);
    CHECK_LE_DBL(lease_ms / 1e3, dt);
    CHECK_LE_DBL(dt, lease_ms / 1e3 + 0.5);
    kvx_stats s;
    kvx_ctx_stats(n.ctx, &s);
    CHECK_EQ_INT(s.reservations_open, 0);
    kill(n.pid, SIGCONT);
    /* the woken sender settles its request (the verdict, or its endpoint
     * timing out across the freeze) before it is killed: UCX leaks a little
     * when a peer dies while an endpoint to it is still being wired up */
    CHECK_MSG(t_run_until(&n, t_pred_output, "RESULT 8 ", 5000), "sender said:\n%s", n.out);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

/* A byte flipped on the wire after the sender hashed the rows. */
static void t_corrupt(const char *path)
{
    t_node n;
    CHECK_OK(t_node_start(&n, KVL_DTYPE_FP8, 4, false));
    static const uint32_t pages[] = {10, 11};
    CHECK(t_reserve(&n, 9, 100, pages, 2, 10000) != NULL);
    static const char *const extra[] = {"--corrupt", NULL};
    CHECK(t_spawn(&n, path, "fp8", "0xfeed", NULL, extra) == 0);
    CHECK(t_run_until(&n, t_pred_all_called, NULL, 10000));
    CHECK_MSG(n.resv[0].status == MLS_ERR_CHECKSUM, "got %s %s", mls_status_name(n.resv[0].status),
              n.resv[0].why);
    CHECK_MSG(strstr(n.resv[0].why, "layer 0") != NULL, "why: %s", n.resv[0].why);
    CHECK_MSG(t_run_until(&n, t_pred_output, "RESULT 9 ERR_CHECKSUM", 5000), "sender said:\n%s",
              n.out);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

static void test_corrupt_rma(void)
{
    t_corrupt("rma");
}
static void test_corrupt_am(void)
{
    t_corrupt("am");
}

/* A prefill node with another model fingerprint / dtype is refused at
 * connect; the message names the field; our reservation is untouched. */
static void t_mismatch(const char *dtype, const char *fingerprint, const char *field)
{
    t_node n;
    CHECK_OK(t_node_start(&n, KVL_DTYPE_BF16, 4, true));
    static const uint32_t pages[] = {2};
    CHECK(t_reserve(&n, 11, 10, pages, 1, 10000) != NULL);
    CHECK(t_spawn(&n, "auto", dtype, fingerprint, NULL, NULL) == 0);
    CHECK_MSG(t_run_until(&n, t_pred_output, "RESULT 11 ERR_PEER_MISMATCH", 10000),
              "sender said:\n%s", n.out);
    CHECK_MSG(strstr(n.out, field) != NULL, "want '%s' in:\n%s", field, n.out);
    int code = -1;
    CHECK(t_run_until(&n, t_pred_child_exit, &code, 10000));
    CHECK(!n.resv[0].called);
    CHECK_OK(kvx_cancel(n.ctx, 11));
    CHECK(n.resv[0].called && n.resv[0].status == MLS_ERR_CANCELED);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

static void test_mismatch_fingerprint(void)
{
    t_mismatch("bf16", "0xbad", "model fingerprint");
}
static void test_mismatch_dtype(void)
{
    t_mismatch("fp8", "0xfeed", "kv dtype");
}

/* Cancel mid-transfer: the callback runs at once, the sender hears of it,
 * later runs are dropped; cancel of an unbound reservation; unknown rid. */
static void test_cancel(void)
{
    t_node n;
    CHECK_OK(t_node_start(&n, KVL_DTYPE_BF16, 32, true));
    static const uint32_t pages[] = {7, 8};
    static const uint32_t idle_pages[] = {15};
    CHECK(t_reserve(&n, 12, 128, pages, 2, 10000) != NULL);
    static const char *const extra[] = {"--delay-ms", "20", NULL};
    CHECK(t_spawn(&n, "am", "bf16", "0xfeed", NULL, extra) == 0);
    CHECK_MSG(t_run_until(&n, t_pred_output, "SENT 12 1\n", 10000), "sender said:\n%s", n.out);
    CHECK(t_reserve(&n, 13, 10, idle_pages, 1, 10000) != NULL);
    uint64_t t0 = mls_now_ns();
    CHECK_OK(kvx_cancel(n.ctx, 12));
    /* at once, or (AM) as soon as a run already being received has landed */
    n.n_resv = 1;
    CHECK_MSG(n.resv[0].called || t_run_until(&n, t_pred_all_called, NULL, 1000),
              "cancel did not call back within 1 s");
    n.n_resv = 2;
    uint64_t dt_ns = n.resv[0].t_cb_ns - t0;
    CHECK_EQ_INT(n.resv[0].status, MLS_ERR_CANCELED);
    fprintf(stderr, "  cancel called back after %.2f ms\n", dt_ns / 1e6);
    CHECK_LE_DBL(dt_ns / 1e6, 250.0); /* at once, or one in-flight run later */
    CHECK_STATUS(kvx_cancel(n.ctx, 12), MLS_ERR_NOT_FOUND);
    CHECK_MSG(t_run_until(&n, t_pred_output, "RESULT 12 ERR_CANCELED", 5000), "sender said:\n%s",
              n.out);
    CHECK_OK(kvx_cancel(n.ctx, 13));
    CHECK(n.resv[1].called && n.resv[1].status == MLS_ERR_CANCELED);
    kvx_stats s;
    kvx_ctx_stats(n.ctx, &s);
    CHECK_EQ_INT(s.reservations_open, 0);
    /* pages of the canceled reservation: only rows already landed changed;
     * nothing outside the reservation did */
    n.n_resv = 0;
    uint64_t pb = n.cfg.layout.page_bytes;
    for (uint32_t l = 0; l < n.cfg.n_layers; l++) {
        for (uint32_t p = 0; p < T_POOL_PAGES; p++) {
            const uint8_t *pg = n.pool[l] + p * pb;
            if (p != 7 && p != 8) {
                CHECK_MSG(pg[0] == 0xee && memcmp(pg, pg + 1, pb - 1) == 0,
                          "layer %u page %u was written", l, p);
            }
        }
    }
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

/* A sender for a reservation the decode node never made gets NOT_FOUND; one
 * whose reservation was canceled before it arrived hears CANCELED. */
static void test_unknown_reservation(void)
{
    t_node n;
    CHECK_OK(t_node_start(&n, KVL_DTYPE_BF16, 4, true));
    static const uint32_t pages[] = {4};
    /* the decode node holds rid 15; the sender asks for rid 14 */
    CHECK(t_reserve(&n, 15, 10, pages, 1, 10000) != NULL);
    n.resv[0].rid = 14;
    CHECK(t_spawn(&n, "am", "bf16", "0xfeed", NULL, NULL) == 0);
    CHECK_MSG(t_run_until(&n, t_pred_output, "RESULT 14 ERR_NOT_FOUND", 10000), "sender said:\n%s",
              n.out);
    CHECK_OK(kvx_cancel(n.ctx, 15));
    t_node_stop(&n);
    CHECK_OK(t_node_start(&n, KVL_DTYPE_BF16, 4, true));
    CHECK(t_reserve(&n, 14, 10, pages, 1, 10000) != NULL);
    CHECK_OK(kvx_cancel(n.ctx, 14)); /* the sender still believes in rid 14 */
    CHECK(t_spawn(&n, "am", "bf16", "0xfeed", NULL, NULL) == 0);
    CHECK_MSG(t_run_until(&n, t_pred_output, "RESULT 14 ERR_CANCELED", 10000), "sender said:\n%s",
              n.out);
    uint64_t pb = n.cfg.layout.page_bytes;
    const uint8_t *pg = n.pool[0] + 4 * pb;
    CHECK(pg[0] == 0xee && memcmp(pg, pg + 1, pb - 1) == 0);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

typedef struct {
    bool called;
    mls_status status;
    uint64_t t_ns;
    char why[512];
} t_sent;

static void t_sent_cb(void *arg, uint64_t rid, mls_status st, const char *why)
{
    t_sent *s = arg;
    s->called = true;
    s->status = st;
    s->t_ns = mls_now_ns();
    snprintf(s->why, sizeof(s->why), "%s", why ? why : "");
}

static bool t_pred_sent(t_node *n, const void *arg)
{
    return ((const t_sent *)arg)->called;
}

/* A decode node frozen (SIGSTOP) in the middle of a rendezvous: the sender's
 * request times out, its stuck operations are dropped with the endpoint, and
 * only then do the rows go back to the caller. */
static void test_receiver_frozen_timeout(void)
{
    t_node n;
    memset(&n, 0, sizeof(n));
    t_base_bytes = mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT);
    n.pid = -1;
    uv_loop_init(&n.loop);
    n.cfg.loop = &n.loop;
    n.cfg.n_layers = 32;
    n.cfg.tick_ms = 5;
    n.cfg.path = KVX_PATH_AM;
    n.cfg.req_timeout_ms = 800;
    kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 0xfeedull, &n.cfg.layout);
    mls_err err = {{0}};
    CHECK_OK(kvx_ctx_create(&n.cfg, &n.ctx, &err));
    /* the helper as decode node, holding rid 21 */
    const char *argv[] = {MLS_BIN_DIR "/kvx_test_peer",
                          "--role",
                          "recv",
                          "--dtype",
                          "bf16",
                          "--layers",
                          "32",
                          "--fingerprint",
                          "0xfeed",
                          "--req",
                          "21:256:1,2,3,4",
                          NULL};
    CHECK(mls_spawn_piped((char *const *)argv, NULL, false, &n.pid, &n.out_fd) == 0);
    fcntl(n.out_fd, F_SETFL, O_NONBLOCK);
    CHECK_MSG(t_run_until(&n, t_pred_output, "PORT ", 10000), "helper said:\n%s", n.out);
    char peer[64];
    snprintf(peer, sizeof(peer), "127.0.0.1:%d", atoi(strstr(n.out, "PORT ") + 5));

    static const uint32_t pages[] = {1, 2, 3, 4};
    uint32_t rb = n.cfg.layout.row_bytes;
    uint8_t *rows = malloc((size_t)256 * rb);
    memset(rows, 0x3c, (size_t)256 * rb);
    t_sent sent = {0};
    kvx_req *req = NULL;
    uint64_t t0 = mls_now_ns();
    uint8_t token[KVX_TOKEN_BYTES];
    kvx_test_token(0, 21, token, sizeof(token)); /* the helper's --seed is 0 */
    CHECK_OK(kvx_req_create(n.ctx, peer, 21, token, pages, 4, 256, t_sent_cb, &sent, &req, &err));
    for (uint32_t l = 0; l < 4; l++) {
        CHECK_OK(kvx_send_layer(req, l, 0, 256, rows, &err));
    }
    /* let the first layers through, then freeze the decode node */
    CHECK(!t_run_until(&n, t_pred_sent, &sent, 100));
    kill(n.pid, SIGSTOP);
    for (uint32_t l = 4; l < 32; l++) {
        CHECK_OK(kvx_send_layer(req, l, 0, 256, rows, &err));
    }
    CHECK_OK(kvx_finish(req, &err));
    CHECK(t_run_until(&n, t_pred_sent, &sent, 5000));
    double dt = (double)(sent.t_ns - t0) / 1e9;
    CHECK_MSG(sent.status == MLS_ERR_TIMED_OUT, "got %s %s", mls_status_name(sent.status),
              sent.why);
    CHECK_LE_DBL(0.8, dt);
    CHECK_LE_DBL(dt, 1.5);
    fprintf(stderr, "  request timed out after %.0f ms: %s\n", dt * 1e3, sent.why);
    kvx_req_release(req);
    free(rows);
    kill(n.pid, SIGCONT);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

/* Pages of the pools: every byte still holds the canary. Returns the number
 * of written pages. */
static int t_pages_untouched(t_node *n)
{
    uint64_t pb = n->cfg.layout.page_bytes;
    int bad = 0;
    for (uint32_t l = 0; l < n->cfg.n_layers; l++) {
        for (uint32_t p = 0; p < T_POOL_PAGES; p++) {
            const uint8_t *pg = n->pool[l] + p * pb;
            if ((pg[0] != 0xee || memcmp(pg, pg + 1, pb - 1) != 0) && bad++ < 5) {
                fprintf(stderr, "  layer %u page %u was written\n", l, p);
            }
        }
    }
    return bad;
}

/* A sender that does not hold the request's token (a wrong one, or none: all
 * zeros) is refused with PEER_MISMATCH before a byte lands, on either path
 * (RMA: it never gets the rkeys); the reservation stays open, and then the
 * sender the router introduced delivers into it. */
static void t_token_refused(const char *path, const char *mode)
{
    t_node n;
    CHECK_OK(t_node_start(&n, KVL_DTYPE_BF16, 4, true));
    static const uint32_t pages[] = {2, 3, 7};
    CHECK(t_reserve(&n, 41, 150, pages, 3, 20000) != NULL);
    const char *const bad[] = {"--token", mode, NULL};
    CHECK(t_spawn(&n, path, "bf16", "0xfeed", NULL, bad) == 0);
    int code = -1;
    CHECK_MSG(t_run_until(&n, t_pred_child_exit, &code, 10000), "sender said:\n%s", n.out);
    CHECK_EQ_INT(code, 0);
    CHECK_MSG(strstr(n.out, "RESULT 41 ERR_PEER_MISMATCH") != NULL &&
                  strstr(n.out, "proof for rid 41 refused") != NULL,
              "sender said:\n%s", n.out);
    CHECK_MSG(strstr(n.out, "PATH rma") == NULL, "the refused sender got the rkeys:\n%s", n.out);
    CHECK(!n.resv[0].called);
    CHECK_EQ_INT(t_pages_untouched(&n), 0);
    kvx_stats s;
    kvx_ctx_stats(n.ctx, &s);
    CHECK_EQ_INT(s.reservations_open, 1);
    /* the introduced sender */
    CHECK(t_spawn(&n, path, "bf16", "0xfeed", NULL, NULL) == 0);
    CHECK_MSG(t_run_until(&n, t_pred_all_called, NULL, 10000), "sender said:\n%s", n.out);
    CHECK_MSG(n.resv[0].status == MLS_OK, "%s %s", mls_status_name(n.resv[0].status),
              n.resv[0].why);
    CHECK(t_run_until(&n, t_pred_child_exit, &code, 10000));
    CHECK_EQ_INT(code, 0);
    CHECK_EQ_INT(t_check_pages(&n), 0);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

static void test_token_wrong_rma(void)
{
    t_token_refused("rma", "wrong");
}
static void test_token_wrong_am(void)
{
    t_token_refused("am", "wrong");
}
static void test_token_none_auto(void)
{
    t_token_refused("auto", "zero");
}

/* Listening TCP sockets of this process (IPv4 and IPv6) other than those in
 * skip (n_skip inodes), as "addr:port" lines in out (one per socket); their
 * inodes in inodes_p (up to 64) when not NULL. Returns how many are not on
 * 127.0.0.1. */
static int t_listeners_off_loopback(const unsigned long *skip, int n_skip, unsigned long *inodes_p,
                                    int *n_p, char *out, size_t cap)
{
    /* socket inodes this process holds */
    unsigned long inodes[512];
    int n_in = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL && n_in < 512;) {
        char path[300], link[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, link, sizeof(link) - 1);
        if (k > 0) {
            link[k] = '\0';
            if (sscanf(link, "socket:[%lu]", &inodes[n_in]) == 1) {
                n_in++;
            }
        }
    }
    if (d != NULL) {
        closedir(d);
    }
    int off = 0;
    size_t used = 0;
    out[0] = '\0';
    static const char *const files[] = {"/proc/self/net/tcp", "/proc/self/net/tcp6"};
    for (int f = 0; f < 2; f++) {
        FILE *fp = fopen(files[f], "r");
        char line[512];
        while (fp != NULL && fgets(line, sizeof(line), fp) != NULL) {
            char local[64];
            unsigned st;
            unsigned long inode;
            if (sscanf(line, " %*d: %63s %*s %x %*s %*s %*s %*s %*s %lu", local, &st, &inode) !=
                    3 ||
                st != 0x0a) {
                continue; /* header, or not LISTEN */
            }
            bool ours = false;
            for (int i = 0; i < n_in; i++) {
                ours |= inodes[i] == inode;
            }
            for (int i = 0; i < n_skip; i++) {
                ours &= skip[i] != inode;
            }
            if (!ours) {
                continue;
            }
            if (inodes_p != NULL && *n_p < 64) {
                inodes_p[(*n_p)++] = inode;
            }
            /* 0100007F:port (v4) or the v4-mapped 127.0.0.1 in v6 */
            bool lo = strncmp(local, "0100007F:", 9) == 0 ||
                      strncmp(local, "0000000000000000FFFF00000100007F:", 33) == 0;
            off += !lo;
            used += (size_t)snprintf(out + used, used < cap ? cap - used : 0, "%s%s\n", local,
                                     lo ? "" : "  <- not 127.0.0.1");
            if (used >= cap) {
                used = cap - 1;
            }
        }
        if (fp != NULL) {
            fclose(fp);
        }
    }
    return off;
}

static mls_status t_ctx_bound(t_node *n, const char *bind_ip)
{
    memset(n, 0, sizeof(*n));
    n->pid = -1;
    n->out_fd = -1;
    uv_loop_init(&n->loop);
    n->cfg.loop = &n->loop;
    n->cfg.n_layers = 2;
    n->cfg.bind_ip = bind_ip;
    kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 0xfeedull, &n->cfg.layout);
    mls_err err = {{0}};
    mls_status st = kvx_ctx_create(&n->cfg, &n->ctx, &err);
    if (st == MLS_OK) {
        n->pool_from_kvx = true;
        n->pool_bytes = 2u * T_POOL_PAGES * n->cfg.layout.page_bytes;
        st = kvx_pool_alloc(n->ctx, KVX_MEM_HOST, n->pool_bytes, &n->pool_mem, &err);
    }
    if (st == MLS_OK) {
        n->pool[0] = n->pool_mem;
        n->pool[1] = (uint8_t *)n->pool_mem + T_POOL_PAGES * n->cfg.layout.page_bytes;
        st = kvx_pool_register(n->ctx, KVX_MEM_HOST, (void *const *)n->pool, T_POOL_PAGES, &err);
    }
    if (st == MLS_OK) {
        st = kvx_listen(n->ctx, "127.0.0.1", 0, &n->port, &err);
    }
    if (st != MLS_OK) {
        fprintf(stderr, "kvx bound context: %s\n", err.msg);
    }
    return st;
}

/* A context bound to 127.0.0.1: every socket UCX listens on (the sockaddr
 * listener and each transport's own) is on 127.0.0.1. Unbound, for contrast,
 * UCX listens on the other interfaces too (where the machine has one). */
static void test_bind_loopback_only(void)
{
    char *saved = getenv("UCX_NET_DEVICES") ? strdup(getenv("UCX_NET_DEVICES")) : NULL;
    unsetenv("UCX_NET_DEVICES");
    char list[4096];
    /* sockets that were there before (earlier tests) are not this context's */
    unsigned long before[64];
    int n_before = 0;
    t_listeners_off_loopback(NULL, 0, before, &n_before, list, sizeof(list));
    t_node n;
    CHECK_OK(t_ctx_bound(&n, NULL));
    int off_unbound = t_listeners_off_loopback(before, n_before, NULL, NULL, list, sizeof(list));
    fprintf(stderr, "  unbound: %d listeners off 127.0.0.1:\n%s", off_unbound, list);
    t_node_stop(&n);

    n_before = 0;
    t_listeners_off_loopback(NULL, 0, before, &n_before, list, sizeof(list));
    CHECK_OK(t_ctx_bound(&n, "127.0.0.1"));
    int off_bound = t_listeners_off_loopback(before, n_before, NULL, NULL, list, sizeof(list));
    fprintf(stderr, "  bound to 127.0.0.1:\n%s", list);
    CHECK_MSG(off_bound == 0, "%d listeners off 127.0.0.1:\n%s", off_bound, list);
    char port[16];
    snprintf(port, sizeof(port), ":%04X\n", n.port);
    CHECK_MSG(strstr(list, port) != NULL, "the KV listener (port %u) is not among:\n%s", n.port,
              list);
    t_node_stop(&n);

    mls_err err = {{0}};
    t_node bad;
    memset(&bad, 0, sizeof(bad));
    uv_loop_init(&bad.loop);
    bad.cfg.loop = &bad.loop;
    bad.cfg.n_layers = 2;
    bad.cfg.bind_ip = "192.0.2.254"; /* TEST-NET: held by no interface here */
    kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 0xfeedull, &bad.cfg.layout);
    if (kvx_ctx_create(&bad.cfg, &bad.ctx, &err) == MLS_OK) {
        kvx_ctx_destroy(bad.ctx); /* this machine happens to hold it */
    } else {
        CHECK_MSG(strstr(err.msg, "no network interface has the address 192.0.2.254") != NULL, "%s",
                  err.msg);
    }
    uv_loop_close(&bad.loop);
    if (saved != NULL) {
        setenv("UCX_NET_DEVICES", saved, 1);
        free(saved);
    }
}

/* Bad input to the API is refused with a status, not a crash. */
static void test_api_errors(void)
{
    t_node n;
    CHECK_OK(t_node_start(&n, KVL_DTYPE_BF16, 2, false));
    mls_err err = {{0}};
    uint8_t token[KVX_TOKEN_BYTES] = {1};
    uint32_t big = T_POOL_PAGES;
    CHECK_STATUS(kvx_reserve(n.ctx, 1, &big, 1, token, 100, t_resv_cb, &n.resv[0], &err),
                 MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "outside the pool") != NULL);
    uint32_t ok_page = 0;
    CHECK_STATUS(kvx_reserve(n.ctx, 1, &ok_page, 1, NULL, 100, t_resv_cb, &n.resv[0], &err),
                 MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "token") != NULL);
    CHECK_OK(kvx_reserve(n.ctx, 1, &ok_page, 1, token, 100, t_resv_cb, &n.resv[0], &err));
    CHECK_STATUS(kvx_reserve(n.ctx, 1, &ok_page, 1, token, 100, t_resv_cb, &n.resv[0], &err),
                 MLS_ERR_INVALID_ARG);
    void *p = NULL;
    CHECK_STATUS(kvx_pool_alloc(n.ctx, KVX_MEM_CUDA, 4096, &p, &err), MLS_ERR_UNSUPPORTED);
    kvx_req *req = NULL;
    CHECK_STATUS(kvx_req_create(n.ctx, "127.0.0.1:1", 5, token, &ok_page, 1, 65, t_resv_cb, NULL,
                                &req, &err),
                 MLS_ERR_INVALID_ARG);
    CHECK_STATUS(
        kvx_req_create(n.ctx, "127.0.0.1:1", 5, NULL, &ok_page, 1, 64, t_resv_cb, NULL, &req, &err),
        MLS_ERR_INVALID_ARG);
    /* lease of 100 ms lapses with no sender */
    n.n_resv = 1;
    CHECK(t_run_until(&n, t_pred_all_called, NULL, 2000));
    CHECK_EQ_INT(n.resv[0].status, MLS_ERR_TIMED_OUT);
    t_node_stop(&n);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT), t_base_bytes);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
#if defined(__SANITIZE_THREAD__)
    /* UCX's memory-event hooks (libucm) crash under ThreadSanitizer at thread
     * exit; the transport does not need them. UCX reads this when it loads,
     * so start again with it set (children inherit it). */
    if (getenv("UCX_MEM_EVENTS") == NULL) {
        setenv("UCX_MEM_EVENTS", "no", 1);
        execv("/proc/self/exe", argv);
    }
#endif
    if (access(MLS_BIN_DIR "/kvx_test_peer", X_OK) != 0) {
        fprintf(stderr, "kvx_test_peer not built at %s\n", MLS_BIN_DIR);
        return 1;
    }
    MLS_TEST_RUN(test_api_errors);
    MLS_TEST_RUN(test_roundtrip_f32_rma);
    MLS_TEST_RUN(test_roundtrip_f32_am);
    MLS_TEST_RUN(test_roundtrip_bf16_rma);
    MLS_TEST_RUN(test_roundtrip_bf16_am);
    MLS_TEST_RUN(test_roundtrip_fp8_rma);
    MLS_TEST_RUN(test_roundtrip_fp8_am);
    MLS_TEST_RUN(test_auto_path_shm);
    MLS_TEST_RUN(test_auto_path_tcp);
    MLS_TEST_RUN(test_sender_killed_rma);
    MLS_TEST_RUN(test_sender_killed_am);
    MLS_TEST_RUN(test_sender_stopped_lease);
    MLS_TEST_RUN(test_corrupt_rma);
    MLS_TEST_RUN(test_corrupt_am);
    MLS_TEST_RUN(test_mismatch_fingerprint);
    MLS_TEST_RUN(test_mismatch_dtype);
    MLS_TEST_RUN(test_cancel);
    MLS_TEST_RUN(test_unknown_reservation);
    MLS_TEST_RUN(test_receiver_frozen_timeout);
    MLS_TEST_RUN(test_token_wrong_rma);
    MLS_TEST_RUN(test_token_wrong_am);
    MLS_TEST_RUN(test_token_none_auto);
    MLS_TEST_RUN(test_bind_loopback_only);
    return MLS_TEST_DONE();
}
