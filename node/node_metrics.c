/*
 * node_metrics.c - a node's /metrics (Prometheus, through http/'s registry,
 * in the router's vocabulary: vLLM-style names under "mlaserve:", with the
 * labels role and node) and /health. Loop thread.
 *
 * Values are read at scrape time from the node's load counters; counters
 * mirror monotonic sources (they only ever add what the source grew by).
 */
#include <stdlib.h>
#include <string.h>

#include "mls_log.h"
#include "node_role.h"

typedef enum {
    NODE_M_KV_TOTAL,
    NODE_M_KV_FREE,
    NODE_M_KV_USED,
    NODE_M_KV_RESERVED,
    NODE_M_KV_USAGE,
    NODE_M_RUNNING,
    NODE_M_WAITING,
    NODE_M_GEN_TOKENS,
    NODE_M_PROMPT_TOKENS,
    NODE_M_XFER_SENT,
    NODE_M_XFER_RECEIVED,
    NODE_M_FAILURES,
    NODE_M_COUNT
} node_metric_id;

typedef struct {
    const char *name;
    const char *help;
    bool counter;              /* else a gauge */
    const char *label, *value; /* one extra label, or NULL */
} node_metric_def;

static const node_metric_def node_metric_defs[NODE_M_COUNT] = {
    [NODE_M_KV_TOTAL] = {"mlaserve:kv_pages_total", "KV pages in the pool (per layer).", false,
                         NULL, NULL},
    [NODE_M_KV_FREE] = {MLS_PROM_KV_PAGES_FREE, "Free KV pages.", false, NULL, NULL},
    [NODE_M_KV_USED] = {MLS_PROM_KV_PAGES_USED, "KV pages held by requests.", false, NULL, NULL},
    [NODE_M_KV_RESERVED] = {"mlaserve:kv_pages_reserved",
                            "KV pages leased for transfers in flight.", false, NULL, NULL},
    [NODE_M_KV_USAGE] = {MLS_PROM_KV_USAGE, "Fraction of KV pages in use (0..1).", false, NULL,
                         NULL},
    [NODE_M_RUNNING] = {MLS_PROM_RUNNING, "Sequences in the decode batch.", false, NULL, NULL},
    [NODE_M_WAITING] = {MLS_PROM_WAITING, "Sequences waiting for a batch slot or prefill.", false,
                        NULL, NULL},
    [NODE_M_GEN_TOKENS] = {MLS_PROM_GEN_TOKENS, "Tokens generated.", true, NULL, NULL},
    [NODE_M_PROMPT_TOKENS] = {MLS_PROM_PROMPT_TOKENS, "Prompt tokens prefilled.", true, NULL, NULL},
    [NODE_M_XFER_SENT] = {MLS_PROM_KV_XFER_BYTES, "KV bytes sent, or received and verified.", true,
                          "direction", "sent"},
    [NODE_M_XFER_RECEIVED] = {MLS_PROM_KV_XFER_BYTES, "KV bytes sent, or received and verified.",
                              true, "direction", "received"},
    [NODE_M_FAILURES] = {"mlaserve:request_failures_total", "Requests that failed on this node.",
                         true, NULL, NULL},
};

struct node_metrics {
    mls_prom_metric *m[NODE_M_COUNT];
};

mls_status node_metrics_create(mls_node *n, mls_err *err)
{
    const char *role = mls_node_role_name(n->cfg.role);
    mls_status st;

    if ((st = mls_prom_registry_create(&n->prom)) != MLS_OK) {
        mls_err_set(err, "cannot create the metrics registry: %s", mls_status_message(st));
        return st;
    }
    if ((n->metrics = calloc(1, sizeof(*n->metrics))) == NULL) {
        mls_err_set(err, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    for (int i = 0; i < NODE_M_COUNT; i++) {
        const node_metric_def *d = &node_metric_defs[i];
        const char *labels[] = {"role", role, "node", n->node_id, d->label, d->value, NULL};
        n->metrics->m[i] = d->counter ? mls_prom_counter(n->prom, d->name, d->help, labels, err)
                                      : mls_prom_gauge(n->prom, d->name, d->help, labels, err);
        if (n->metrics->m[i] == NULL) {
            return MLS_ERR_INVALID_ARG;
        }
    }
    return MLS_OK;
}

void node_metrics_destroy(mls_node *n)
{
    free(n->metrics);
    n->metrics = NULL;
    if (n->prom != NULL) {
        mls_prom_registry_destroy(n->prom);
        n->prom = NULL;
    }
}

/* The node's figures now, by metric. */
static void node_metrics_snapshot(mls_node *n, double v[NODE_M_COUNT])
{
    uint32_t total = eng_kv_pool_pages_total(n->pool), free_pages = eng_kv_pool_pages_free(n->pool);
    kvx_stats xs = {0};

    if (n->kvx != NULL) {
        kvx_ctx_stats(n->kvx, &xs);
    }
    v[NODE_M_KV_TOTAL] = total;
    v[NODE_M_KV_FREE] = free_pages;
    v[NODE_M_KV_USED] = total - free_pages;
    v[NODE_M_KV_RESERVED] = atomic_load(&n->pages_reserved);
    v[NODE_M_KV_USAGE] = total > 0 ? (double)(total - free_pages) / total : 0.0;
    v[NODE_M_RUNNING] = atomic_load(&n->n_running);
    v[NODE_M_WAITING] = atomic_load(&n->n_waiting) + atomic_load(&n->n_prefill_queued);
    v[NODE_M_GEN_TOKENS] = (double)atomic_load(&n->tokens_generated);
    v[NODE_M_PROMPT_TOKENS] = (double)atomic_load(&n->tokens_prefilled);
    v[NODE_M_XFER_SENT] = (double)xs.bytes_sent;
    v[NODE_M_XFER_RECEIVED] = (double)xs.bytes_received;
    v[NODE_M_FAILURES] = (double)atomic_load(&n->requests_failed);
}

static void node_metrics_update(mls_node *n)
{
    double v[NODE_M_COUNT];

    node_metrics_snapshot(n, v);
    for (int i = 0; i < NODE_M_COUNT; i++) {
        mls_prom_metric *m = n->metrics->m[i];
        if (node_metric_defs[i].counter) {
            double grew = v[i] - mls_prom_value(m);
            if (grew > 0) {
                mls_prom_add(m, grew);
            }
        } else {
            mls_prom_set(m, v[i]);
        }
    }
}

void node_metrics_on_http(mls_http_req *req, void *user)
{
    mls_node *n = user;
    const char *path = mls_http_req_path(req);
    char *text = NULL;
    size_t len = 0;

    if (strcmp(path, "/health") == 0) {
        bool up = node_link_any_registered(n);
        const char *ok = up ? "{\"status\":\"ok\"}" : "{\"status\":\"starting\"}";
        mls_http_req_respond(req, up ? 200 : 503, "application/json", ok, strlen(ok));
        return;
    }
    if (strcmp(path, "/metrics") != 0) {
        mls_http_req_respond_error(req, 404, "invalid_request_error", NULL, NULL, "not found");
        return;
    }
    node_metrics_update(n);
    if (mls_prom_render(n->prom, &text, &len) != MLS_OK) {
        mls_http_req_respond_error(req, 500, "server_error", NULL, NULL,
                                   "cannot render the metrics");
        return;
    }
    mls_http_req_respond(req, 200, MLS_PROM_CONTENT_TYPE, text, len);
    free(text);
}
