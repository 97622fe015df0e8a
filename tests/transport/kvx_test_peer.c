/*
 * kvx_test_peer.c - the prefill side of the transport tests, run as a real
 * second process: connects to the decode node given on the command line,
 * sends deterministic rows (kvx_test_gen.h) for a few requests from a compute
 * thread while its libuv loop runs the transport, and prints one line per
 * event on stdout:
 *   PATH <rma|am>             once connected (the path the probe/option chose)
 *   SENT <rid> <layer>        after kvx_send_layer of a layer's last chunk
 *   RESULT <rid> <STATUS> <why>
 * Usage: kvx_test_peer --port P --dtype D --layers L --fingerprint F
 *        --path auto|rma|am --seed S --req RID:NTOK:PAGE,PAGE,... [--req ...]
 *        [--chunk N] [--delay-ms MS] [--corrupt] [--token good|wrong|zero]
 * Each request's token is kvx_test_token(seed, rid); --token wrong proves one
 * that differs in one byte, zero proves all zeros (a sender the router never
 * introduced).
 * With --role recv it is a decode node instead (for tests of the sender):
 * listens on 127.0.0.1:0, prints "PORT <p>", reserves every --req in a pool of
 * 64 pages per layer and prints "RESULT <rid> <STATUS> <why>" per reservation.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <signal.h>
#include <unistd.h>

#include "kvx.h"
#include "kvx_test_gen.h"
#include "mls_alloc.h"

#define PEER_MAX_REQS 8

typedef struct {
    uint64_t rid;
    uint32_t n_tokens;
    uint32_t page_ids[256];
    uint32_t n_pages;
    kvx_req *req;
    uint8_t *rows; /* (n_layers, n_tokens, row_bytes) */
    int done;
} peer_req;

static struct {
    kvx_ctx *ctx;
    uv_loop_t loop;
    char peer[64];
    kvx_config cfg;
    uint64_t seed;
    uint32_t chunk;
    uint32_t delay_ms;
    peer_req reqs[PEER_MAX_REQS];
    int n_reqs;
    int n_done;
    int path_printed;
    int token_mode; /* 0 good, 1 wrong, 2 zero */
    atomic_int compute_done;
} g;

static void peer_token(uint64_t rid, uint8_t *token)
{
    kvx_test_token(g.seed, rid, token, KVX_TOKEN_BYTES);
    if (g.token_mode == 1) {
        token[KVX_TOKEN_BYTES / 2] ^= 0x01;
    } else if (g.token_mode == 2) {
        memset(token, 0, KVX_TOKEN_BYTES);
    }
}

static void peer_done_cb(void *arg, uint64_t rid, mls_status st, const char *why)
{
    peer_req *r = arg;
    if (!g.path_printed) {
        const char *path = kvx_peer_path(g.ctx, g.peer);
        if (path != NULL) {
            printf("PATH %s\n", path);
            g.path_printed = 1;
        }
    }
    printf("RESULT %" PRIu64 " %s %s\n", rid, mls_status_name(st), why ? why : "-");
    fflush(stdout);
    r->done = 1;
    if (++g.n_done == g.n_reqs) {
        uv_stop(&g.loop);
    }
}

static void *peer_compute(void *arg)
{
    uint32_t rb = g.cfg.layout.row_bytes;
    mls_err err = {{0}};
    for (int i = 0; i < g.n_reqs; i++) {
        peer_req *r = &g.reqs[i];
        uint8_t token[KVX_TOKEN_BYTES];
        peer_token(r->rid, token);
        if (kvx_req_create(g.ctx, g.peer, r->rid, token, r->page_ids, r->n_pages, r->n_tokens,
                           peer_done_cb, r, &r->req, &err) != MLS_OK) {
            fprintf(stderr, "kvx_test_peer: %s\n", err.msg);
            exit(3);
        }
    }
    /* layers interleaved across requests, each layer in chunks */
    for (uint32_t l = 0; l < g.cfg.n_layers; l++) {
        for (int i = 0; i < g.n_reqs; i++) {
            peer_req *r = &g.reqs[i];
            uint8_t *rows = r->rows + (size_t)l * r->n_tokens * rb;
            for (uint32_t t = 0; t < r->n_tokens; t++) {
                kvx_test_row(g.seed, r->rid, l, t, rows + (size_t)t * rb, rb);
            }
            for (uint32_t t = 0; t < r->n_tokens; t += g.chunk) {
                uint32_t n = r->n_tokens - t < g.chunk ? r->n_tokens - t : g.chunk;
                if (kvx_send_layer(r->req, l, t, n, rows + (size_t)t * rb, &err) != MLS_OK) {
                    break; /* the request ended; its RESULT line says why */
                }
            }
            printf("SENT %" PRIu64 " %u\n", r->rid, l);
            fflush(stdout);
        }
        if (g.delay_ms > 0) {
            usleep(g.delay_ms * 1000u);
        }
    }
    for (int i = 0; i < g.n_reqs; i++) {
        kvx_finish(g.reqs[i].req, &err);
    }
    atomic_store(&g.compute_done, 1);
    return NULL;
}

static int peer_parse_req(const char *s, peer_req *r)
{
    char *end;
    r->rid = strtoull(s, &end, 10);
    if (*end != ':') {
        return -1;
    }
    r->n_tokens = (uint32_t)strtoul(end + 1, &end, 10);
    if (*end != ':') {
        return -1;
    }
    s = end + 1;
    while (*s && r->n_pages < 256) {
        r->page_ids[r->n_pages++] = (uint32_t)strtoul(s, &end, 10);
        s = *end == ',' ? end + 1 : end;
        if (end == s && *s) {
            return -1;
        }
    }
    return r->n_pages > 0 ? 0 : -1;
}

static void peer_resv_cb(void *arg, uint64_t rid, mls_status st, const char *why)
{
    printf("RESULT %" PRIu64 " %s %s\n", rid, mls_status_name(st), why ? why : "-");
    fflush(stdout);
    if (++g.n_done == g.n_reqs) {
        uv_stop(&g.loop);
    }
}

static int peer_recv_main(void)
{
    mls_err err = {{0}};
    void *mem = NULL;
    void *bases[KVX_MAX_LAYERS];
    size_t layer_bytes = 64u * g.cfg.layout.page_bytes;
    uint16_t port = 0;
    if (kvx_pool_alloc(g.ctx, KVX_MEM_HOST, layer_bytes * g.cfg.n_layers, &mem, &err) != MLS_OK) {
        goto err;
    }
    for (uint32_t l = 0; l < g.cfg.n_layers; l++) {
        bases[l] = (uint8_t *)mem + l * layer_bytes;
    }
    if (kvx_pool_register(g.ctx, KVX_MEM_HOST, bases, 64, &err) != MLS_OK ||
        kvx_listen(g.ctx, "127.0.0.1", 0, &port, &err) != MLS_OK) {
        goto err;
    }
    for (int i = 0; i < g.n_reqs; i++) {
        uint8_t token[KVX_TOKEN_BYTES];
        kvx_test_token(g.seed, g.reqs[i].rid, token, KVX_TOKEN_BYTES);
        if (kvx_reserve(g.ctx, g.reqs[i].rid, g.reqs[i].page_ids, g.reqs[i].n_pages, token, 60000,
                        peer_resv_cb, NULL, &err) != MLS_OK) {
            goto err;
        }
    }
    printf("PORT %u\n", port);
    fflush(stdout);
    uv_run(&g.loop, UV_RUN_DEFAULT);
    kvx_ctx_destroy(g.ctx);
    uv_loop_close(&g.loop);
    return 0;
err:
    fprintf(stderr, "kvx_test_peer (recv): %s\n", err.msg);
    return 3;
}

int main(int argc, char **argv)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
    kvl_dtype dtype = KVL_DTYPE_BF16;
    uint32_t layers = 4;
    uint64_t fp = 1;
    uint32_t tflags = 0;
    int port = 0;
    kvx_path path = KVX_PATH_AUTO;
    int recv_role = 0;
    g.chunk = 1u << 30;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (strcmp(a, "--port") == 0) {
            port = atoi(v), i++;
        } else if (strcmp(a, "--dtype") == 0) {
            if (kvl_dtype_parse(v, &dtype) != MLS_OK) {
                return 2;
            }
            i++;
        } else if (strcmp(a, "--layers") == 0) {
            layers = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--fingerprint") == 0) {
            fp = strtoull(v, NULL, 0), i++;
        } else if (strcmp(a, "--path") == 0) {
            path = strcmp(v, "rma") == 0  ? KVX_PATH_RMA
                   : strcmp(v, "am") == 0 ? KVX_PATH_AM
                                          : KVX_PATH_AUTO;
            i++;
        } else if (strcmp(a, "--seed") == 0) {
            g.seed = strtoull(v, NULL, 0), i++;
        } else if (strcmp(a, "--chunk") == 0) {
            g.chunk = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--delay-ms") == 0) {
            g.delay_ms = (uint32_t)atoi(v), i++;
        } else if (strcmp(a, "--role") == 0 && strcmp(v, "recv") == 0) {
            recv_role = 1, i++;
        } else if (strcmp(a, "--token") == 0) {
            g.token_mode = strcmp(v, "wrong") == 0 ? 1 : strcmp(v, "zero") == 0 ? 2 : 0;
            i++;
        } else if (strcmp(a, "--corrupt") == 0) {
            tflags |= KVX_TEST_CORRUPT_PAYLOAD;
        } else if (strcmp(a, "--req") == 0 && g.n_reqs < PEER_MAX_REQS) {
            if (peer_parse_req(v, &g.reqs[g.n_reqs++]) != 0) {
                fprintf(stderr, "kvx_test_peer: bad --req '%s'\n", v);
                return 2;
            }
            i++;
        } else {
            fprintf(stderr, "kvx_test_peer: unknown argument '%s'\n", a);
            return 2;
        }
    }
    if ((port <= 0 && !recv_role) || g.n_reqs == 0 || g.chunk == 0) {
        fprintf(stderr, "kvx_test_peer: need --port and --req\n");
        return 2;
    }
    snprintf(g.peer, sizeof(g.peer), "127.0.0.1:%d", port);
    uv_loop_init(&g.loop);
    g.cfg.loop = &g.loop;
    g.cfg.n_layers = layers;
    g.cfg.path = path;
    g.cfg.test_flags = tflags;
    kvl_layout_init(dtype, 512, 64, fp, &g.cfg.layout);
    mls_err err = {{0}};
    if (kvx_ctx_create(&g.cfg, &g.ctx, &err) != MLS_OK) {
        fprintf(stderr, "kvx_test_peer: %s\n", err.msg);
        return 3;
    }
    if (recv_role) {
        return peer_recv_main();
    }
    for (int i = 0; i < g.n_reqs; i++) {
        size_t bytes = (size_t)layers * g.reqs[i].n_tokens * g.cfg.layout.row_bytes;
        g.reqs[i].rows = malloc(bytes);
    }
    pthread_t th;
    pthread_create(&th, NULL, peer_compute, NULL);
    uv_run(&g.loop, UV_RUN_DEFAULT);
    /* keep the transport running (as a node would) until compute is done */
    while (!atomic_load(&g.compute_done)) {
        uv_run(&g.loop, UV_RUN_NOWAIT);
        usleep(500);
    }
    pthread_join(th, NULL);
    for (int i = 0; i < g.n_reqs; i++) {
        kvx_req_release(g.reqs[i].req);
        free(g.reqs[i].rows);
    }
    kvx_ctx_destroy(g.ctx);
    uv_loop_close(&g.loop);
    printf("EXIT transport_bytes=%lld\n", (long long)mls_alloc_bytes(MLS_ALLOC_TAG_TRANSPORT));
    return 0;
}
