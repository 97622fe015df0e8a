/*
 * rt_internal.h - the router daemon's state (router/rt_*.c). Single-threaded:
 * everything runs on the router's libuv loop.
 *
 * A request's life: admitted by the HTTP handler (rt_api.c) -> RESERVING
 * (pages leased on a decode node) -> PREFILLING (a prefill node computes the
 * prompt and streams the KV into those pages) -> first token -> DECODING (the
 * decode node continues) -> Finish. A colocated node does both halves alone.
 * When a node dies or reports a retryable error, the request goes back to
 * RESERVING with prompt + tokens generated so far (re-prefill) on a healthy
 * pair, and the client's stream continues where it stopped.
 */
#ifndef MLS_RT_INTERNAL_H
#define MLS_RT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "mls_conn.h"
#include "mls_http.h"
#include "mls_oai.h"
#include "mls_prom.h"
#include "tok.h"

#define RT_HEARTBEAT_MS     1000
#define RT_DEAD_AFTER_MS    3000
#define RT_MAX_RETRIES      4
#define RT_AFFINITY_BLOCKS  4096   /* prefix block hashes remembered per prefill node */

typedef struct rt_node {
    struct rt_router *rt;
    uint64_t index;
    mls_conn *conn;                /* NULL once dead */
    Mlaserve__Role role;
    char node_id[96];
    char model_name[128];
    uint64_t fingerprint;
    kvl_layout layout;
    uint32_t n_layers;
    uint32_t pages_total;
    uint32_t pages_free;           /* last report minus router-side leases since */
    uint32_t max_batch;
    uint32_t max_seq_len;
    uint32_t running;              /* last report */
    uint32_t queue_depth;          /* last report */
    uint32_t assigned;             /* requests the router has on this node now */
    char host[64];
    uint32_t metrics_port;
    uint64_t last_seen_ns;
    bool registered;
    bool draining;
    uint64_t *affinity;            /* (RT_AFFINITY_BLOCKS) ring of prefix block hashes */
    uint32_t affinity_next;
    struct rt_node *next;
} rt_node;

typedef enum {
    RQ_QUEUED,                     /* waiting for capacity */
    RQ_RESERVING,
    RQ_PREFILLING,
    RQ_DECODING,
    RQ_DONE,
} rq_state;

typedef struct rt_request {
    uint64_t rid;                  /* unique per attempt: changes on a retry */
    uint64_t serial;               /* stable id for logs */
    struct rt_router *rt;
    mls_http_req *http;            /* NULL once the response completed */
    mls_oai_request *oai;
    mls_oai_kind kind;
    char id[48];                   /* "cmpl-..." */
    int64_t created;
    rq_state state;
    int32_t *prompt;               /* (n_prompt) */
    int32_t n_prompt;
    int32_t *gen;                  /* (cap_gen) completion ids so far */
    float *gen_logprob;            /* (cap_gen) */
    int32_t *gen_top_ids;          /* (cap_gen, top_n) alternatives, when requested */
    float *gen_top_lp;             /* (cap_gen, top_n) */
    uint32_t top_n;
    uint32_t n_gen, cap_gen;
    uint32_t max_tokens;
    rt_node *p, *d;                /* current pair; p == d when colocated */
    bool colocated;                /* this attempt runs on one colocated node */
    uint32_t n_pages;              /* pages leased on d */
    uint32_t *pages;
    char decode_addr[80];
    int retries;
    mls_status last_error;
    char last_error_msg[192];
    /* output */
    tok_detok *detok;
    char *text;                    /* completion text so far */
    size_t text_len, text_cap;
    size_t sent;                   /* bytes of text already sent to the client */
    size_t stop_scan;              /* stop strings searched up to here */
    uint32_t tokens_sent;          /* completion tokens reported in sent chunks */
    bool stream_started;
    bool first_chunk_sent;
    const char *finish_reason;
    /* timing (mls_now_ns) */
    uint64_t t_arrival, t_first, t_last, t_deadline;
    struct rt_request *next;       /* router's list */
} rt_request;

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
    uint32_t lease_ms;
    uint32_t default_max_tokens;
    bool colocated_only;           /* schedule on colocated nodes only */
    /* parts */
    tok_tokenizer *tok;
    mls_http_server *http;
    uv_tcp_t node_listener;
    uv_timer_t tick;
    uv_signal_t sigint, sigterm;
    mls_oai_limits limits;
    const char *models[1];
    char served_model[128];
    /* state */
    rt_node *nodes;
    uint64_t next_node_index;
    rt_request *requests;
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

/* rt_nodes.c */
mls_status rt_nodes_listen(rt_router *rt, mls_err *err);
void rt_nodes_tick(rt_router *rt);
rt_node *rt_pick_decode(rt_router *rt, uint32_t n_pages, const rt_node *avoid);
rt_node *rt_pick_prefill(rt_router *rt, const rt_request *r, const rt_node *avoid);
rt_node *rt_pick_colocated(rt_router *rt, uint32_t n_pages, const rt_node *avoid);
void rt_node_send(rt_node *node, const Mlaserve__Envelope *env);
bool rt_node_alive(const rt_node *node);
uint32_t rt_context_limit(rt_router *rt);
void rt_nodes_update_gauges(rt_router *rt);
void rt_nodes_close_all(rt_router *rt);

/* rt_requests.c */
rt_request *rt_request_find(rt_router *rt, uint64_t rid);
void rt_request_start(rt_request *r);
void rt_request_fail(rt_request *r, int http_status, mls_status st, const char *msg);
void rt_request_retry(rt_request *r, mls_status st, const char *why);
void rt_request_free(rt_request *r);
void rt_on_reserved(rt_router *rt, rt_node *node, const Mlaserve__Reserved *m);
void rt_on_first_token(rt_router *rt, rt_node *node, const Mlaserve__FirstToken *m);
void rt_on_token_chunk(rt_router *rt, rt_node *node, const Mlaserve__TokenChunk *m);
void rt_on_finish(rt_router *rt, rt_node *node, const Mlaserve__Finish *m);
void rt_on_node_error(rt_router *rt, rt_node *node, const Mlaserve__Error *m);
void rt_on_node_dead(rt_router *rt, rt_node *node);
void rt_requests_tick(rt_router *rt);
void rt_requests_kick(rt_router *rt);

/* rt_api.c */
void rt_api_handle(mls_http_req *req, void *user);

#endif
