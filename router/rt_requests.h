/*
 * rt_requests.h - a request's life in the router (rt_requests.c), on top of
 * the node registry (rt_nodes.h).
 *
 * Admitted by the HTTP handler (rt_api.c) -> RESERVING (pages leased on a
 * decode node) -> PREFILLING (a prefill node computes the prompt and streams
 * the KV into those pages) -> first token -> DECODING (the decode node
 * continues) -> Finish. A colocated node does both halves alone. When a node
 * dies or reports a retryable error, the request goes back to RESERVING with
 * prompt + tokens generated so far (re-prefill) on a healthy pair, and the
 * client's stream continues where it stopped.
 */
#ifndef MLS_RT_REQUESTS_H
#define MLS_RT_REQUESTS_H

#include "mls_buf.h"
#include "rt_nodes.h"

#define RT_MAX_RETRIES      4
#define RT_KV_TOKEN_BYTES   32 /* = KVX_TOKEN_BYTES (transport/kvx.h) */

typedef enum {
    RQ_QUEUED,                     /* waiting for capacity */
    RQ_RESERVING,
    RQ_PREFILLING,
    RQ_DECODING,
    RQ_DONE,
} rq_state;

struct rt_request {
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
    int32_t *gen;                  /* (n_gen) completion ids so far; cap_gen allocated */
    float *gen_logprob;            /* (n_gen); cap_logprob allocated */
    int32_t *gen_top_ids;          /* (n_gen, top_n) alternatives, when requested */
    float *gen_top_lp;             /* (n_gen, top_n) */
    size_t cap_gen, cap_logprob, cap_top_ids, cap_top_lp; /* elements (mls_array_reserve) */
    uint32_t top_n;
    uint32_t n_gen;
    uint32_t max_tokens;
    rt_node *p, *d;                /* current pair; p == d when colocated */
    bool colocated;                /* this attempt runs on one colocated node */
    uint32_t n_pages;              /* pages leased on d */
    uint32_t *pages;
    char decode_addr[80];
    uint8_t kv_token[RT_KV_TOKEN_BYTES]; /* this attempt's secret: to d in Reserve, to p in
                                            PrefillRequest; the KV transfer proves it */
    int retries;
    mls_status last_error;
    char last_error_msg[192];
    /* output */
    tok_detok *detok;
    mls_buf text;                  /* completion text so far (MISC tag; data NULL until some) */
    size_t sent;                   /* bytes of text already sent to the client */
    size_t stop_scan;              /* stop strings searched up to here */
    uint32_t tokens_sent;          /* completion tokens reported in sent chunks */
    bool stream_started;
    bool first_chunk_sent;
    const char *finish_reason;
    /* timing (mls_now_ns) */
    uint64_t t_arrival, t_first, t_last, t_deadline;
    uint64_t t_no_path;            /* queued with no prefill or no decode path since; 0 = has one */
    struct rt_request *next;       /* router's list */
};

/* Registers the request layer's rt_node_events with the registry; before
 * rt_nodes_listen. */
void rt_requests_init(rt_router *rt);
rt_request *rt_request_find(rt_router *rt, uint64_t rid);
void rt_request_start(rt_request *r);
void rt_request_fail(rt_request *r, int http_status, mls_status st, const char *msg);
void rt_request_retry(rt_request *r, mls_status st, const char *why);
void rt_request_free(rt_request *r);
/* Once a tick: the deadline, and the capacity wait - a queued request with no
 * path (no prefill or no decode node, and no colocated one) for
 * capacity_wait_ms fails with 503 (an SSE error event if its stream started). */
void rt_requests_tick(rt_router *rt);
/* Whether a request can be served at all now: a live colocated node, or a live
 * prefill and a live decode node (only colocated with colocated_only). False
 * with what is missing in *why_p (static string). */
bool rt_requests_have_path(rt_router *rt, const char **why_p);
void rt_requests_kick(rt_router *rt);

#endif
