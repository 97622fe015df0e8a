/*
 * node_internal.h - state shared by the node's loop (node.c) and compute
 * thread (node_compute.c). Fields are annotated with the thread that owns them.
 */
#ifndef MLS_NODE_INTERNAL_H
#define MLS_NODE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include <uv.h>

#include "engine.h"
#include "kvx.h"
#include "mls_conn.h"
#include "mls_http.h"
#include "node.h"

typedef enum {
    NODE_PHASE_PREFILL,          /* compute: run the prompt */
    NODE_PHASE_DECODE,           /* compute: in the continuous batch */
} node_phase;

typedef struct node_job {
    uint64_t rid;
    struct node_job *next_reg;   /* loop: registry list */
    struct node_job *next_q;     /* queue link (inbox / prefill queue / waiting) */
    node_phase phase;
    /* the request (immutable once handed to compute) */
    int32_t *prompt;             /* (n_prompt) prefill only */
    int32_t n_prompt;
    eng_sampling sampling;
    uint64_t seed;
    uint32_t max_tokens;         /* completion tokens at most */
    bool ignore_eos;
    uint32_t top_logprobs;       /* alternatives to report per token (0..NODE_MAX_TOP) */
    uint32_t n_generated;        /* completion tokens so far (compute once running) */
    int32_t last_token;          /* compute: next token to feed */
    uint32_t *pages;             /* (n_pages) reserved pages (decode) / remote ids (prefill) */
    uint32_t n_pages;
    char decode_addr[80];        /* prefill: transport address of the decode node */
    /* decode role, loop thread */
    bool kv_ready;
    bool start_received;
    bool reserved;               /* a transport reservation is open */
    uint64_t t_ready_ns;         /* KV ready, waiting for StartDecode since */
    /* prefill role, loop thread */
    bool compute_done;
    bool xfer_done;
    bool failed;                 /* an Error went to the router: send nothing else */
    kvx_req *xreq;
    /* compute thread */
    eng_seq seq;
    atomic_bool cancelled;
    uint64_t t_created_ns;
} node_job;

typedef enum {
    NODE_EV_FIRST,
    NODE_EV_TOKEN,
    NODE_EV_FINISH,
    NODE_EV_ERROR,
    NODE_EV_COMPUTE_DONE,
} node_ev_kind;

#define NODE_MAX_TOP 20

typedef struct node_event {
    node_ev_kind kind;
    node_job *job;
    uint64_t rid;
    int32_t token;
    float logprob;
    uint32_t index;
    int32_t reason;              /* Mlaserve__FinishReason */
    mls_status st;
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
    uint64_t ns;
    uint32_t n_top;              /* alternatives: ids and logprobs, best first */
    int32_t top_ids[NODE_MAX_TOP];
    float top_logprobs[NODE_MAX_TOP];
    char msg[160];
    struct node_event *next;
} node_event;

typedef struct mls_node {
    mls_node_config cfg;
    char node_id[96];
    char model_name[128];
    uv_loop_t loop;
    /* engine */
    eng_model *model;
    eng_kv_pool *pool;
    eng_ctx *ctx;
    kvl_layout layout;
    /* transport (prefill and decode roles) */
    kvx_ctx *kvx;
    char xfer_addr[80];          /* decode: "host:port" the prefill nodes dial */
    /* router connection (loop) */
    mls_conn *router;
    bool registered;
    uv_timer_t reconnect_timer;
    uv_timer_t heartbeat_timer;
    uint32_t heartbeat_ms;
    uint64_t report_seq;
    /* metrics endpoint */
    mls_http_server *http;
    int metrics_port;
    uv_signal_t sigint, sigterm;
    uv_timer_t drain_timer;
    bool draining;               /* refusing new work, finishing what runs */
    uint64_t drain_deadline_ns;
    bool stopping;
    node_job *jobs;              /* loop: registry of open requests */
    /* loop <- compute */
    uv_async_t wake;
    pthread_mutex_t out_lock;
    node_event *out_head, *out_tail;
    /* loop -> compute */
    pthread_t compute;
    bool compute_started;
    pthread_mutex_t in_lock;
    pthread_cond_t in_cond;
    node_job *in_head, *in_tail;
    bool compute_stop;
    /* compute-thread state */
    node_job *prefill_q;
    node_job *running;           /* linked by next_q */
    node_job *waiting;
    float *logits;               /* (max_batch, vocab) */
    float *sample_scratch;       /* (2 * vocab) */
    /* counters (atomics: read by the loop for reports and metrics) */
    atomic_uint n_running;
    atomic_uint n_waiting;
    atomic_uint n_prefill_queued;
    atomic_uint pages_reserved;
    atomic_ullong tokens_generated;
    atomic_ullong tokens_prefilled;
    atomic_ullong requests_finished;
    atomic_ullong requests_failed;
    double tokens_per_s;         /* loop: over the last report interval */
    uint64_t last_report_tokens;
    uint64_t last_report_ns;
} mls_node;

/* node_compute.c */
mls_status node_compute_start(mls_node *n);
void node_compute_stop(mls_node *n);
void node_compute_submit(mls_node *n, node_job *job);
void node_post(mls_node *n, node_event *ev);
/* Per-index seeded generator: index i of a completion always draws the same. */
void node_rng_for(uint64_t seed, uint32_t index, eng_rng *rng);

/* node.c (loop thread) */
void node_job_free(mls_node *n, node_job *job);

#endif
