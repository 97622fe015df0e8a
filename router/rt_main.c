/*
 * rt_main.c - mlaserve-router: the cluster's front door.
 *
 * Serves the OpenAI-compatible HTTP API, accepts node registrations on the
 * node port, schedules each request on a decode + prefill pair (or a
 * colocated node) and streams the tokens back. Runs until SIGINT/SIGTERM.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mls_log.h"
#include "rt_api.h"

static void rt_usage(FILE *out)
{
    fprintf(out,
            "usage: mlaserve-router --tokenizer DIR [options]\n"
            "\n"
            "The mlaserve router: OpenAI-compatible HTTP API in front of prefill and decode\n"
            "nodes (which dial its node port). Endpoints: POST /v1/completions,\n"
            "POST /v1/chat/completions, GET /v1/models, /health, /metrics.\n"
            "\n"
            "  --tokenizer DIR        tokenizer.json (+ tokenizer_config.json) of the model\n"
            "  --host ADDR            listen address (default 127.0.0.1)\n"
            "  --port P               HTTP port (default 8000; 0 = any)\n"
            "  --node-port P          port the nodes dial (default 7100; 0 = any)\n"
            "  --model-name NAME      served model id (default: the nodes' model name)\n"
            "  --api-key KEY          require 'Authorization: Bearer KEY' (repeatable;\n"
            "                         also MLASERVE_API_KEY)\n"
            "  --max-outstanding N    requests in flight before 429 (default 256)\n"
            "  --request-timeout S    per-request deadline in seconds (default 600)\n"
            "  --lease-ms MS          KV reservation lease (default: the request timeout).\n"
            "                         A reservation waits while its prompt is queued on a\n"
            "                         prefill node; dead or frozen prefill nodes are caught\n"
            "                         by their connection and load reports (3 s), which\n"
            "                         cancel the reservation - the lease is the backstop\n"
            "  --default-max-tokens N chat max_tokens when absent (default 1024)\n"
            "  --colocated-only       schedule on colocated nodes only\n"
            "  --port-file FILE       write \"HTTP_PORT NODE_PORT\" here once listening\n");
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

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'},   {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},        {"node-port", required_argument, NULL, 'n'},
        {"model-name", required_argument, NULL, 'm'},  {"api-key", required_argument, NULL, 'k'},
        {"max-outstanding", required_argument, NULL, 'o'}, {"request-timeout", required_argument, NULL, 'T'},
        {"lease-ms", required_argument, NULL, 'l'},    {"default-max-tokens", required_argument, NULL, 'M'},
        {"colocated-only", no_argument, NULL, 'C'},    {"port-file", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},              {NULL, 0, NULL, 0}};
    rt_router rt;
    uv_loop_t loop;
    const char *tokenizer = NULL, *port_file = NULL;
    char *keys[16];
    mls_http_config hc;
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
    rt.api_keys = keys;
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
    if (rt.lease_ms == 0) {
        rt.lease_ms = rt.request_timeout_ms;
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
    rt_requests_init(&rt);
    if (rt_nodes_listen(&rt, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve-router: node port: %s\n", err.msg);
        goto out;
    }
    mls_http_config_default(&hc);
    hc.host = rt.host;
    hc.port = rt.http_port;
    hc.server_name = "mlaserve";
    if (mls_http_server_create(&loop, &hc, rt_api_handle, &rt, &rt.http, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve-router: http: %s\n", err.msg);
        goto out;
    }
    rt.http_port = mls_http_server_port(rt.http);
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
            fprintf(f, "%d %d\n", rt.http_port, rt.node_port);
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
    uv_walk(&loop, rt_close_walk, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
out:
    uv_loop_close(&loop);
    mls_prom_registry_destroy(rt.prom);
    tok_tokenizer_destroy(rt.tok);
    return rc;
}
