/*
 * rt_router.h - the router daemon's state (router/rt_*.c). Single-threaded:
 * everything runs on the router's libuv loop.
 *
 * The router's files layer like this, each including only the headers below
 * it (tools/check_includes.py checks that no two files use each other):
 *   rt_main.c      the daemon: options, start, shutdown
 *   rt_api.c       the HTTP handler: admission, tokenization   (rt_api.h)
 *   rt_requests.c  a request's life on the nodes                (rt_requests.h)
 *   rt_nodes.c     the node registry and scheduling            (rt_nodes.h)
 *   rt_router.h    this struct: configuration, parts, metrics
 * The registry tells the request layer what it hears through the events the
 * request layer registers (rt_node_events), never by calling it.
 *
 * router/ owns the front end: the OpenAI layer (mls_oai.h), tokenization,
 * the node registry, scheduling, admission. It may include common/, http/,
 * proto/ and tokenizer/; never engine/, kernels/, transport/ or the node
 * folders: it knows the nodes only through the protocol.
 */
#ifndef MLS_RT_ROUTER_H
#define MLS_RT_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "mls_conn.h"
#include "mls_http.h"
#include "mls_oai.h"
#include "mls_prom.h"
#include "tok.h"

typedef struct rt_node rt_node;
typedef struct rt_request rt_request;
typedef struct rt_node_events rt_node_events;

typedef struct rt_router {
    uv_loop_t *loop;
    /* configuration */
    const char *host;
    int http_port;
    int node_port;
    const char *model_name;        /* served id; NULL = first node's */
    char **api_keys;
    size_t n_api_keys;
    uint32_t max_outstanding;      /* admitted requests at most (429 beyond) */
    uint32_t request_timeout_ms;
    uint32_t capacity_wait_ms;     /* a queued request with no path fails after this */
    uint32_t max_model_len;        /* --max-model-len: caps the context (0 = no cap) */
    uint32_t lease_ms;
    uint32_t default_max_tokens;
    bool colocated_only;           /* schedule on colocated nodes only */
    const mls_auth_key *cluster_key; /* nodes must prove it; NULL = --insecure-no-cluster-key */
    uint32_t max_node_conns;       /* node connections at most (registered or not) */
    /* parts */
    tok_tokenizer *tok;
    mls_http_server *http;
    mls_http_server *metrics_http; /* --metrics-listen; NULL = /metrics on the API port */
    uv_tcp_t node_listener;
    uv_timer_t tick;
    uv_signal_t sigint, sigterm;
    mls_oai_limits limits;
    const char *models[1];
    char served_model[128];
    /* state */
    rt_node *nodes;                /* rt_nodes.c */
    uint64_t next_node_index;
    uint32_t n_node_conns;         /* open node connections */
    uint64_t conn_cap_logged_ns;   /* last "too many node connections" line */
    const rt_node_events *node_events; /* registered by the request layer */
    rt_request *requests;          /* rt_requests.c */
    uint32_t n_outstanding;
    uint64_t next_rid;
    uint64_t next_serial;
    bool stopping;
    /* metrics */
    mls_prom_registry *prom;
    mls_prom_metric *m_ttft, *m_tpot, *m_e2e, *m_queue;
    mls_prom_metric *m_running, *m_waiting, *m_pages_used, *m_pages_free, *m_kv_usage;
    mls_prom_metric *m_prompt_tokens, *m_gen_tokens, *m_xfer_bytes, *m_retries;
    mls_prom_metric *m_ok_stop, *m_ok_length, *m_nodes_prefill, *m_nodes_decode;
} rt_router;

#endif
