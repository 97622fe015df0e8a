/*
 * rt_main.c - mlaserve-router: the cluster's front door.
 *
 * Serves the OpenAI-compatible HTTP API, accepts node registrations on the
 * node port, schedules each request on a decode + prefill pair (or a
 * colocated node) and streams the tokens back. Runs until SIGINT/SIGTERM.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "mls_log.h"
#include "rt_api.h"

static void rt_usage(FILE *out)
{
    fprintf(out,
            "usage: mlaserve-router --tokenizer DIR [options]\n"
            "\n"
            "The mlaserve router: OpenAI-compatible HTTP API in front of prefill and decode\n"
            "nodes (which dial its node port). Endpoints: POST /v1/completions,\n"
            "POST /v1/chat/completions, GET /v1/models, /metrics; /health (liveness: 200\n"
            "while the process serves) and /ready (200 only with a prefill and a decode node\n"
            "or a colocated one; else 503 with the reason).\n"
            "\n"
            "  --tokenizer DIR        tokenizer.json (+ tokenizer_config.json) of the model\n"
            "  --host ADDR            listen address (default 127.0.0.1)\n"
            "  --port P               HTTP port (default 8000; 0 = any)\n"
            "  --node-port P          port the nodes dial (default 7100; 0 = any)\n"
            "  --model-name NAME      served model id (default: the nodes' model name)\n"
            "  --api-key-file FILE    require 'Authorization: Bearer KEY' for a KEY of FILE\n"
            "                         (one a line; blank and # lines skipped); repeatable.\n"
            "                         The environment's MLASERVE_API_KEY is one more key.\n"
            "                         With a key set, /metrics on the API port needs it too\n"
            "  --api-key KEY          the same with KEY itself (repeatable) - visible to\n"
            "                         every local user in ps: prefer the file or environment\n"
            "  --metrics-listen HOST:PORT\n"
            "                         serve /metrics (and /health, /ready) here, with no key,\n"
            "                         instead of on the API port\n"
            "  --max-outstanding N    requests in flight before 429 (default 256)\n"
            "  --request-timeout S    per-request deadline in seconds (default 600)\n"
            "  --capacity-wait-ms MS  a request with no path (no prefill or no decode node,\n"
            "                         and no colocated one) fails with 503 - an SSE error\n"
            "                         event once its stream started - after MS (default 30000)\n"
            "  --lease-ms MS          KV reservation lease (default: the request timeout).\n"
            "                         A reservation waits while its prompt is queued on a\n"
            "                         prefill node; dead or frozen prefill nodes are caught\n"
            "                         by their connection and load reports (3 s), which\n"
            "                         cancel the reservation - the lease is the backstop\n"
            "  --default-max-tokens N chat max_tokens when absent (default 1024)\n"
            "  --max-model-len N      cap the context (prompt + completion) the router accepts\n"
            "                         and reports in /v1/models; by default it is what the live\n"
            "                         prefill and decode nodes can hold\n"
            "  --colocated-only       schedule on colocated nodes only\n"
            "  --cluster-key-file FILE  nodes must prove this key (also\n"
            "                         MLASERVE_CLUSTER_KEY_FILE; mode 0600, >= 32 bytes;\n"
            "                         `mlaserve cluster up` makes one). Required unless:\n"
            "  --insecure-no-cluster-key  let any process that reaches the node port join\n"
            "                         as a node (and read every prompt)\n"
            "  --max-node-conns N     node connections at most, registered or not (default\n"
            "                         256); each must authenticate and register in 5 s\n"
            "  --port-file FILE       write \"HTTP_PORT NODE_PORT\" here once listening\n"
            "                         (\"HTTP_PORT NODE_PORT METRICS_PORT\" with --metrics-listen)\n"
            "HTTP limits (API and metrics ports):\n"
            "  --http-max-connections N   open at once (default 1024); at the cap the\n"
            "                         connection idle longest is closed to make room, and a\n"
            "                         new one is refused only when none is idle\n"
            "  --http-max-per-addr N  connections from one client address (default 64; 0 = no\n"
            "                         limit)\n"
            "  --http-first-byte-ms MS  a new connection that sends nothing is closed after\n"
            "                         MS (default 5000)\n"
            "  --http-idle-ms MS      keep-alive connection with no request (default 60000)\n"
            "  --http-read-ms MS      a request's head and body must arrive within MS, else\n"
            "                         408 (default 30000)\n"
            "  --http-write-ms MS     a client that reads nothing for MS is dropped (default\n"
            "                         30000)\n"
            "  --http-max-body BYTES  request body (default 4194304); larger -> 413\n"
            "  --http-max-header-bytes BYTES  request line + headers (default 16384) -> 431\n"
            "  --http-max-headers N   header fields (default 100) -> 431\n");
}

/* A decimal number for flag into *v_p; false (said on stderr) when it is not one. */
static bool rt_parse_u64(const char *flag, const char *s, uint64_t max, uint64_t *v_p)
{
    char *end = NULL;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno != 0 || v > max) {
        fprintf(stderr, "mlaserve-router: %s: '%s' is not a number from 0 to %llu\n", flag, s,
                (unsigned long long)max);
        return false;
    }
    *v_p = v;
    return true;
}

static bool rt_parse_u32(const char *flag, const char *s, uint32_t *v_p)
{
    uint64_t v;

    if (!rt_parse_u64(flag, s, UINT32_MAX, &v)) {
        return false;
    }
    *v_p = (uint32_t)v;
    return true;
}

/* Keys of an --api-key-file: one a line, surrounding blanks trimmed, blank
 * and '#' lines skipped. Appended to keys (malloc'd, the caller frees them). */
static bool rt_api_keys_load(const char *path, char **keys, size_t cap, size_t *n_p)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    size_t n0 = *n_p;

    if (f == NULL) {
        fprintf(stderr, "mlaserve-router: --api-key-file %s: %s\n", path, strerror(errno));
        return false;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        char *k = line, *e;
        while (*k == ' ' || *k == '\t') {
            k++;
        }
        e = k + strlen(k);
        while (e > k && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) {
            *--e = '\0';
        }
        if (*k == '\0' || *k == '#') {
            continue;
        }
        if (*n_p == cap || (keys[*n_p] = strdup(k)) == NULL) {
            fprintf(stderr, "mlaserve-router: at most %zu API keys\n", cap);
            fclose(f);
            return false;
        }
        (*n_p)++;
    }
    fclose(f);
    if (*n_p == n0) {
        fprintf(stderr, "mlaserve-router: --api-key-file %s holds no key\n", path);
        return false;
    }
    return true;
}

/* "HOST:PORT" or "[V6]:PORT" into host (cap bytes) and *port_p. */
static bool rt_parse_listen(const char *flag, const char *s, char *host, size_t cap, int *port_p)
{
    const char *colon = strrchr(s, ':');
    const char *h = s;
    size_t hlen;
    uint64_t port;

    if (colon == NULL || !rt_parse_u64(flag, colon + 1, 65535, &port)) {
        fprintf(stderr, "mlaserve-router: %s wants HOST:PORT, not '%s'\n", flag, s);
        return false;
    }
    hlen = (size_t)(colon - s);
    if (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= cap) {
        fprintf(stderr, "mlaserve-router: %s wants HOST:PORT, not '%s'\n", flag, s);
        return false;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port_p = (int)port;
    return true;
}

static void rt_on_tick(uv_timer_t *t)
{
    rt_router *rt = t->data;
    rt_nodes_tick(rt);
    rt_requests_tick(rt);
}

static void rt_on_signal(uv_signal_t *s, int signum)
{
    rt_router *rt = s->data;
    if (!rt->stopping) {
        mls_info("router: signal %d, shutting down", signum);
        rt->stopping = true;
        uv_stop(rt->loop);
    }
}

static void rt_close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

static mls_status rt_metrics_init(rt_router *rt, mls_err *err)
{
    if (mls_prom_registry_create(&rt->prom) != MLS_OK) {
        return MLS_ERR_NO_MEMORY;
    }
    rt->m_ttft = mls_prom_histogram(rt->prom, MLS_PROM_TTFT, "Time to first token.", NULL,
                                    mls_prom_buckets_ttft, mls_prom_buckets_ttft_n, err);
    rt->m_tpot = mls_prom_histogram(rt->prom, MLS_PROM_TPOT, "Time per output token after the first.", NULL,
                                    mls_prom_buckets_tpot, mls_prom_buckets_tpot_n, err);
    rt->m_e2e = mls_prom_histogram(rt->prom, MLS_PROM_E2E, "End-to-end request latency.", NULL,
                                   mls_prom_buckets_e2e, mls_prom_buckets_e2e_n, err);
    rt->m_running = mls_prom_gauge(rt->prom, MLS_PROM_RUNNING, "Requests being prefilled or decoded.", NULL, err);
    rt->m_waiting = mls_prom_gauge(rt->prom, MLS_PROM_WAITING, "Requests waiting for capacity.", NULL, err);
    rt->m_pages_used = mls_prom_gauge(rt->prom, MLS_PROM_KV_PAGES_USED, "KV pages in use on decode nodes.", NULL, err);
    rt->m_pages_free = mls_prom_gauge(rt->prom, MLS_PROM_KV_PAGES_FREE, "Free KV pages on decode nodes.", NULL, err);
    rt->m_kv_usage = mls_prom_gauge(rt->prom, MLS_PROM_KV_USAGE, "Fraction of decode KV pages in use.", NULL, err);
    rt->m_prompt_tokens = mls_prom_counter(rt->prom, MLS_PROM_PROMPT_TOKENS, "Prompt tokens prefilled.", NULL, err);
    rt->m_gen_tokens = mls_prom_counter(rt->prom, MLS_PROM_GEN_TOKENS, "Tokens generated.", NULL, err);
    rt->m_xfer_bytes = mls_prom_counter(rt->prom, MLS_PROM_KV_XFER_BYTES,
                                        "Latent KV bytes shipped from prefill to decode nodes.", NULL, err);
    rt->m_retries = mls_prom_counter(rt->prom, "mlaserve:request_retries_total",
                                     "Request attempts restarted after a node failure.", NULL, err);
    {
        const char *stop[] = {"finished_reason", "stop", NULL}, *length[] = {"finished_reason", "length", NULL};
        const char *pre[] = {"role", "prefill", NULL}, *dec[] = {"role", "decode", NULL};
        rt->m_ok_stop = mls_prom_counter(rt->prom, MLS_PROM_REQUESTS, "Requests finished.", stop, err);
        rt->m_ok_length = mls_prom_counter(rt->prom, MLS_PROM_REQUESTS, "Requests finished.", length, err);
        rt->m_nodes_prefill = mls_prom_gauge(rt->prom, "mlaserve:nodes", "Live nodes by role.", pre, err);
        rt->m_nodes_decode = mls_prom_gauge(rt->prom, "mlaserve:nodes", "Live nodes by role.", dec, err);
    }
    if (!rt->m_ttft || !rt->m_tpot || !rt->m_e2e || !rt->m_running || !rt->m_waiting || !rt->m_pages_used ||
        !rt->m_pages_free || !rt->m_kv_usage || !rt->m_prompt_tokens || !rt->m_gen_tokens ||
        !rt->m_xfer_bytes || !rt->m_retries || !rt->m_ok_stop || !rt->m_ok_length || !rt->m_nodes_prefill ||
        !rt->m_nodes_decode) {
        return MLS_ERR_INTERNAL;
    }
    return MLS_OK;
}

/* Long-only options of the HTTP limits, keys and capacity wait. */
enum {
    RT_OPT_API_KEY_FILE = 256,
    RT_OPT_METRICS_LISTEN,
    RT_OPT_CAPACITY_WAIT,
    RT_OPT_MAX_MODEL_LEN,
    RT_OPT_HTTP_MAX_CONN,
    RT_OPT_HTTP_MAX_PER_ADDR,
    RT_OPT_HTTP_FIRST_BYTE,
    RT_OPT_HTTP_IDLE,
    RT_OPT_HTTP_READ,
    RT_OPT_HTTP_WRITE,
    RT_OPT_HTTP_MAX_BODY,
    RT_OPT_HTTP_MAX_HEADER_BYTES,
    RT_OPT_HTTP_MAX_HEADERS,
};

/* One of the options above into rt / hc; false on a bad value (said on stderr). */
static bool rt_option_limit(int opt, const char *arg, rt_router *rt, mls_http_config *hc)
{
    uint64_t v;

    switch (opt) {
    case RT_OPT_CAPACITY_WAIT: return rt_parse_u32("--capacity-wait-ms", arg, &rt->capacity_wait_ms);
    case RT_OPT_MAX_MODEL_LEN: return rt_parse_u32("--max-model-len", arg, &rt->max_model_len);
    case RT_OPT_HTTP_MAX_CONN: return rt_parse_u32("--http-max-connections", arg, &hc->max_connections);
    case RT_OPT_HTTP_MAX_PER_ADDR:
        return rt_parse_u32("--http-max-per-addr", arg, &hc->max_connections_per_addr);
    case RT_OPT_HTTP_FIRST_BYTE: return rt_parse_u32("--http-first-byte-ms", arg, &hc->first_byte_timeout_ms);
    case RT_OPT_HTTP_IDLE: return rt_parse_u32("--http-idle-ms", arg, &hc->idle_timeout_ms);
    case RT_OPT_HTTP_READ: return rt_parse_u32("--http-read-ms", arg, &hc->request_timeout_ms);
    case RT_OPT_HTTP_WRITE: return rt_parse_u32("--http-write-ms", arg, &hc->write_timeout_ms);
    case RT_OPT_HTTP_MAX_BODY:
        if (!rt_parse_u64("--http-max-body", arg, UINT64_MAX, &v)) {
            return false;
        }
        hc->max_body_bytes = v;
        return true;
    case RT_OPT_HTTP_MAX_HEADER_BYTES:
        return rt_parse_u32("--http-max-header-bytes", arg, &hc->max_header_bytes);
    case RT_OPT_HTTP_MAX_HEADERS: return rt_parse_u32("--http-max-headers", arg, &hc->max_headers);
    default: return false;
    }
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"api-key-file", required_argument, NULL, RT_OPT_API_KEY_FILE},
        {"metrics-listen", required_argument, NULL, RT_OPT_METRICS_LISTEN},
        {"capacity-wait-ms", required_argument, NULL, RT_OPT_CAPACITY_WAIT},
        {"max-model-len", required_argument, NULL, RT_OPT_MAX_MODEL_LEN},
        {"http-max-connections", required_argument, NULL, RT_OPT_HTTP_MAX_CONN},
        {"http-max-per-addr", required_argument, NULL, RT_OPT_HTTP_MAX_PER_ADDR},
        {"http-first-byte-ms", required_argument, NULL, RT_OPT_HTTP_FIRST_BYTE},
        {"http-idle-ms", required_argument, NULL, RT_OPT_HTTP_IDLE},
        {"http-read-ms", required_argument, NULL, RT_OPT_HTTP_READ},
        {"http-write-ms", required_argument, NULL, RT_OPT_HTTP_WRITE},
        {"http-max-body", required_argument, NULL, RT_OPT_HTTP_MAX_BODY},
        {"http-max-header-bytes", required_argument, NULL, RT_OPT_HTTP_MAX_HEADER_BYTES},
        {"http-max-headers", required_argument, NULL, RT_OPT_HTTP_MAX_HEADERS},
        {"tokenizer", required_argument, NULL, 't'},   {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},        {"node-port", required_argument, NULL, 'n'},
        {"model-name", required_argument, NULL, 'm'},  {"api-key", required_argument, NULL, 'k'},
        {"max-outstanding", required_argument, NULL, 'o'}, {"request-timeout", required_argument, NULL, 'T'},
        {"lease-ms", required_argument, NULL, 'l'},    {"default-max-tokens", required_argument, NULL, 'M'},
        {"colocated-only", no_argument, NULL, 'C'},    {"port-file", required_argument, NULL, 'f'},
        {"cluster-key-file", required_argument, NULL, 'K'},
        {"insecure-no-cluster-key", no_argument, NULL, 'I'},
        {"max-node-conns", required_argument, NULL, 'X'},
        {"help", no_argument, NULL, 'h'},              {NULL, 0, NULL, 0}};
    rt_router rt;
    uv_loop_t loop;
    const char *tokenizer = NULL, *port_file = NULL, *metrics_listen = NULL;
    const char *key_file = getenv("MLASERVE_CLUSTER_KEY_FILE");
    static mls_auth_key cluster_key;
    bool insecure = false;
    static char *keys[16];            /* static: the file keys (malloc'd) stay reachable */
    char metrics_host[64];
    int metrics_port = 0;
    mls_http_config hc, mc;
    mls_err err = {{0}};
    int c, rc = 1;

    memset(&rt, 0, sizeof(rt));
    rt.host = "127.0.0.1";
    rt.http_port = 8000;
    rt.node_port = 7100;
    rt.max_outstanding = 256;
    rt.request_timeout_ms = 600000;
    rt.lease_ms = 0; /* default: the request timeout (see --help) */
    rt.default_max_tokens = 1024;
    rt.capacity_wait_ms = 30000;
    rt.max_node_conns = 256;
    rt.api_keys = keys;
    mls_http_config_default(&hc);
    if (getenv("MLASERVE_API_KEY") != NULL && getenv("MLASERVE_API_KEY")[0] != '\0') {
        keys[rt.n_api_keys++] = getenv("MLASERVE_API_KEY");
    }
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': tokenizer = optarg; break;
        case 'H': rt.host = optarg; break;
        case 'p': rt.http_port = atoi(optarg); break;
        case 'n': rt.node_port = atoi(optarg); break;
        case 'm': rt.model_name = optarg; break;
        case 'k':
            if (rt.n_api_keys == sizeof(keys) / sizeof(keys[0])) {
                fprintf(stderr, "mlaserve-router: at most 16 API keys\n");
                return 2;
            }
            keys[rt.n_api_keys++] = optarg;
            break;
        case 'o': rt.max_outstanding = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'T': rt.request_timeout_ms = (uint32_t)(strtod(optarg, NULL) * 1000); break;
        case 'l': rt.lease_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'M': rt.default_max_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'C': rt.colocated_only = true; break;
        case 'f': port_file = optarg; break;
        case 'K': key_file = optarg; break;
        case 'I': insecure = true; break;
        case 'X': rt.max_node_conns = (uint32_t)strtoul(optarg, NULL, 10); break;
        case RT_OPT_API_KEY_FILE:
            if (!rt_api_keys_load(optarg, keys, sizeof(keys) / sizeof(keys[0]), &rt.n_api_keys)) {
                return 2;
            }
            break;
        case RT_OPT_METRICS_LISTEN:
            if (!rt_parse_listen("--metrics-listen", optarg, metrics_host, sizeof(metrics_host), &metrics_port)) {
                return 2;
            }
            metrics_listen = optarg;
            break;
        case RT_OPT_CAPACITY_WAIT:
        case RT_OPT_MAX_MODEL_LEN:
        case RT_OPT_HTTP_MAX_CONN:
        case RT_OPT_HTTP_MAX_PER_ADDR:
        case RT_OPT_HTTP_FIRST_BYTE:
        case RT_OPT_HTTP_IDLE:
        case RT_OPT_HTTP_READ:
        case RT_OPT_HTTP_WRITE:
        case RT_OPT_HTTP_MAX_BODY:
        case RT_OPT_HTTP_MAX_HEADER_BYTES:
        case RT_OPT_HTTP_MAX_HEADERS:
            if (!rt_option_limit(c, optarg, &rt, &hc)) {
                return 2;
            }
            break;
        case 'h': rt_usage(stdout); return 0;
        default: rt_usage(stderr); return 2;
        }
    }
    if (tokenizer == NULL) {
        fprintf(stderr, "mlaserve-router: --tokenizer is required\n");
        rt_usage(stderr);
        return 2;
    }
    if (rt.max_outstanding == 0 || rt.request_timeout_ms == 0) {
        fprintf(stderr, "mlaserve-router: --max-outstanding and --request-timeout must be > 0\n");
        return 2;
    }
    if (hc.max_connections == 0 || hc.max_headers == 0 || hc.max_header_bytes == 0) {
        fprintf(stderr, "mlaserve-router: --http-max-connections, --http-max-headers and "
                        "--http-max-header-bytes must be > 0\n");
        return 2;
    }
    if (rt.lease_ms == 0) {
        rt.lease_ms = rt.request_timeout_ms;
    }
    if (rt.max_node_conns == 0) {
        fprintf(stderr, "mlaserve-router: --max-node-conns must be > 0\n");
        return 2;
    }
    if (key_file != NULL && key_file[0] != '\0') {
        if (mls_auth_key_load(key_file, &cluster_key, &err) != MLS_OK) {
            fprintf(stderr, "mlaserve-router: %s\n", err.msg);
            return 2;
        }
        rt.cluster_key = &cluster_key;
    } else if (!insecure) {
        fprintf(stderr, "mlaserve-router: no cluster key: give --cluster-key-file FILE (or "
                        "MLASERVE_CLUSTER_KEY_FILE); `mlaserve cluster up` makes one. "
                        "--insecure-no-cluster-key lets any local process join as a node\n");
        return 2;
    } else {
        fprintf(stderr, "mlaserve-router: WARNING: no cluster key (--insecure-no-cluster-key): "
                        "any process that reaches the node port can join as a node\n");
    }
    signal(SIGPIPE, SIG_IGN);
    if (tok_tokenizer_load(tokenizer, &rt.tok, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve-router: tokenizer: %s\n", err.msg);
        return 1;
    }
    uv_loop_init(&loop);
    rt.loop = &loop;
    mls_oai_limits_default(&rt.limits);
    rt.limits.vocab_size = tok_vocab_size(rt.tok);
    if (rt_metrics_init(&rt, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve-router: metrics: %s\n", err.msg);
        goto out;
    }
    /* Request ids start at a random 32-bit epoch: a node serving several
     * routers, or a router restarted while its nodes still hold requests of
     * the old one, never sees two requests with one id. */
    {
        uint32_t epoch = 0;
        if (getrandom(&epoch, sizeof(epoch), 0) != (ssize_t)sizeof(epoch)) {
            epoch = (uint32_t)time(NULL) ^ (uint32_t)getpid();
        }
        rt.next_rid = (uint64_t)(epoch | 1u) << 32;
    }
    rt_requests_init(&rt);
    if (rt_nodes_listen(&rt, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve-router: node port: %s\n", err.msg);
        goto out;
    }
    hc.host = rt.host;
    hc.port = rt.http_port;
    hc.server_name = "mlaserve";
    if (mls_http_server_create(&loop, &hc, rt_api_handle, &rt, &rt.http, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve-router: http: %s\n", err.msg);
        goto out;
    }
    rt.http_port = mls_http_server_port(rt.http);
    if (metrics_listen != NULL) {
        mc = hc;
        mc.host = metrics_host;
        mc.port = metrics_port;
        if (mls_http_server_create(&loop, &mc, rt_api_metrics_handle, &rt, &rt.metrics_http, &err) != MLS_OK) {
            fprintf(stderr, "mlaserve-router: --metrics-listen: %s\n", err.msg);
            goto out;
        }
        metrics_port = mls_http_server_port(rt.metrics_http);
        fprintf(stderr, "mlaserve-router: http://%s:%d/metrics\n", metrics_host, metrics_port);
    }
    uv_timer_init(&loop, &rt.tick);
    rt.tick.data = &rt;
    uv_timer_start(&rt.tick, rt_on_tick, 100, 100);
    uv_signal_init(&loop, &rt.sigint);
    uv_signal_init(&loop, &rt.sigterm);
    rt.sigint.data = rt.sigterm.data = &rt;
    uv_signal_start(&rt.sigint, rt_on_signal, SIGINT);
    uv_signal_start(&rt.sigterm, rt_on_signal, SIGTERM);
    fprintf(stderr, "mlaserve-router: http://%s:%d (OpenAI API), nodes dial %s:%d\n", rt.host, rt.http_port,
            rt.host, rt.node_port);
    if (port_file != NULL) {
        FILE *f = fopen(port_file, "w");
        if (f != NULL) {
            if (rt.metrics_http != NULL) {
                fprintf(f, "%d %d %d\n", rt.http_port, rt.node_port, metrics_port);
            } else {
                fprintf(f, "%d %d\n", rt.http_port, rt.node_port);
            }
            fclose(f);
        }
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = 0;

    /* shutdown: fail what is in flight, close every handle */
    while (rt.requests != NULL) {
        rt_request_fail(rt.requests, 503, MLS_ERR_CANCELED, "router shutting down");
    }
    rt_nodes_close_all(&rt);
    if (rt.http != NULL) {
        mls_http_server_shutdown(rt.http);
    }
    if (rt.metrics_http != NULL) {
        mls_http_server_shutdown(rt.metrics_http);
    }
    uv_walk(&loop, rt_close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
out:
    uv_loop_close(&loop);
    mls_prom_registry_destroy(rt.prom);
    tok_tokenizer_destroy(rt.tok);
    return rc;
}
