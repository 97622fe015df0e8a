/*
 * node_role.h - the contract between the node runtime (node/) and a role
 * (prefill_node/, decode_node/): the table a role fills, and the runtime
 * services a role may use (job registry, messages to the router, the compute
 * queue, events back to the loop, sampling).
 *
 * Threads: every field and function is annotated with the thread that owns or
 * calls it - "loop" (the libuv control loop) or "compute" (the compute
 * thread). A job belongs to the loop until node_compute_submit() hands it to
 * compute; compute hands it back with NODE_EV_COMPUTE_DONE.
 */
#ifndef MLS_NODE_ROLE_H
#define MLS_NODE_ROLE_H

#include <pthread.h>
#include <stdatomic.h>

#include <uv.h>

#include "engine.h"
#include "kvx.h"
#include "mls_conn.h"
#include "mls_http.h"
#include "mls_prom.h"
#include "node.h"

typedef enum {
    NODE_PHASE_PREFILL, /* compute: run the prompt (prefill role) */
    NODE_PHASE_DECODE,  /* compute: in the continuous batch (decode role) */
    NODE_PHASE_COUNT
} node_phase;

typedef struct node_job {
    uint64_t rid;
    struct node_job *next_reg; /* loop: registry list */
    struct node_job *next_q;   /* queue link (inbox / a role's compute queues) */
    node_phase phase;
    /* the request (immutable once handed to compute) */
    int32_t *prompt; /* (n_prompt) prefill only */
    int32_t n_prompt;
    eng_sampling sampling;
    uint64_t seed;
    uint32_t max_tokens; /* completion tokens at most */
    bool ignore_eos;
    uint32_t top_logprobs; /* alternatives to report per token (0..NODE_MAX_TOP) */
    uint32_t n_generated;  /* completion tokens so far (compute once running) */
    int32_t last_token;    /* compute: next token to feed */
    uint32_t *pages;       /* (n_pages) reserved pages (decode) / remote ids (prefill) */
    uint32_t n_pages;
    bool failed;            /* loop: an Error went to the router: send nothing else */
    struct node_link *link; /* loop: the router that sent the request */
    /* decode role, loop thread */
    bool kv_ready;
    bool start_received;
    bool reserved;       /* a transport reservation is open */
    uint64_t t_ready_ns; /* KV ready, waiting for StartDecode since */
    /* prefill role, loop thread */
    char decode_addr[80]; /* transport address of the decode node ("" = colocated) */
    bool compute_done;
    bool xfer_done;
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
    int32_t reason; /* Mlaserve__FinishReason */
    mls_status st;
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
    uint64_t ns;
    uint32_t n_top; /* alternatives: ids and logprobs, best first */
    int32_t top_ids[NODE_MAX_TOP];
    float top_logprobs[NODE_MAX_TOP];
    char msg[160];
    struct node_event *next;
} node_event;

typedef struct mls_node mls_node;

/*
 * One router the node registers with. A node serves every router it reaches;
 * each router owns the requests it sent (a job remembers its link). Loop.
 */
typedef struct node_link {
    mls_node *n;
    int index;
    const char *host; /* numeric */
    int port;
    mls_conn *conn; /* NULL while disconnected */
    bool registered;
    uint32_t backoff_ms; /* next reconnect delay (doubles to a cap, reset on register) */
    uv_timer_t reconnect_timer;
    uv_timer_t deadline_timer; /* connected but not registered in time: drop and redial */
    uv_timer_t heartbeat_timer;
    uint32_t heartbeat_ms;
    uint64_t report_seq;
    uint64_t last_report_ns;
    uint64_t last_report_tokens;
} node_link;

/*
 * What a role plugs into the runtime. Every member may be NULL (nothing to
 * do). The runtime calls the roles of a node in a fixed order: prefill, then
 * decode.
 */
struct node_role_ops {
    const char *name;
    node_phase phase; /* jobs of this phase are this role's on the compute thread */
    /* loop, at start-up once the model, layout and transport exist: the role's
     * resources. The decode role may set n->pool (a KV pool in transport
     * memory); a node whose roles set none gets a private pool. */
    mls_status (*setup)(mls_node *n, mls_err *err);
    /* loop, at exit after compute stopped (compute_drain ran). */
    void (*teardown)(mls_node *n);
    /* loop: a message from the router; false when it is not this role's. */
    bool (*on_msg)(mls_node *n, const Mlaserve__Envelope *env);
    /* loop: Cancel of an open job (job->failed and job->cancelled are set
     * already). True when the role completed it (the job may be gone); false
     * lets the runtime wake compute, which drops it. */
    bool (*on_cancel)(mls_node *n, node_job *job);
    /* loop: once per load report. */
    void (*on_tick)(mls_node *n, uint64_t now_ns);
    /* compute: a job of this role's phase arrived (inbox or handoff). */
    void (*compute_accept)(mls_node *n, node_job *job);
    /* compute: true while the role has queued or running work. */
    bool (*compute_busy)(mls_node *n);
    /* compute: one turn of work (called every loop iteration). */
    void (*compute_turn)(mls_node *n);
    /* compute, shutting down: every job the role holds leaves. */
    void (*compute_drain)(mls_node *n);
};

struct mls_node {
    mls_node_config cfg;
    const node_role_ops *roles[2];      /* in calling order; NULL = none */
    void *role_state[NODE_PHASE_COUNT]; /* each role's own state, by its phase */
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
    char xfer_addr[80]; /* decode: "host:port" the prefill nodes dial */
    /* router links (loop): one per configured router, each registered on its own */
    node_link links[MLS_NODE_MAX_ROUTERS];
    int n_links;
    node_link *cur_link;   /* the link whose message is being handled (NULL outside) */
    uv_timer_t tick_timer; /* roles' on_tick, once a second */
    /* metrics endpoint (loop) */
    mls_http_server *http;
    int metrics_port;
    mls_prom_registry *prom;
    struct node_metrics *metrics;
    uv_signal_t sigint, sigterm;
    uv_timer_t drain_timer;
    bool draining; /* refusing new work, finishing what runs */
    uint64_t drain_deadline_ns;
    bool stopping;
    node_job *jobs; /* loop: registry of open requests */
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
    /* compute-thread scratch */
    float *logits;         /* (max_batch, vocab) */
    float *sample_scratch; /* (2 * vocab) */
    /* load counters (atomics: roles update them, the loop reads them) */
    atomic_uint n_running;
    atomic_uint n_waiting;
    atomic_uint n_prefill_queued;
    atomic_uint pages_reserved;
    atomic_ullong tokens_generated;
    atomic_ullong tokens_prefilled;
    atomic_ullong requests_finished;
    atomic_ullong requests_failed;
    double tokens_per_s; /* loop: over the last report interval */
    uint64_t last_report_tokens;
    uint64_t last_report_ns;
};

/* ---- job registry (node_jobs.c; loop) ---- */

node_job *node_job_find(mls_node *n, uint64_t rid);
/* A new job in the registry, owned by the router whose message is being
 * handled (n->cur_link); NULL when out of memory. */
node_job *node_job_new(mls_node *n, uint64_t rid);
/* Out of the registry; releases its transport request, pages and memory. */
void node_job_free(mls_node *n, node_job *job);
/* Sampling parameters of a request (defaults where absent). */
void node_job_fill_sampling(node_job *job, const Mlaserve__SamplingParams *sp);
/* Cancel an open job: the role's hook, then compute is told. */
void node_job_cancel(mls_node *n, node_job *job);

/* ---- messages to the router (node_jobs.c; loop) ---- */

/* To every router the node is registered with (Drain). */
void node_send(mls_node *n, const Mlaserve__Envelope *env);
/* To one router, while registered with it; dropped otherwise. */
void node_send_link(mls_node *n, node_link *l, const Mlaserve__Envelope *env);
/* The answer to the message being handled: to the router that sent it. */
void node_reply(mls_node *n, const Mlaserve__Envelope *env);
/* A message about one request: to the router that owns it. */
void node_job_send(mls_node *n, const node_job *job, const Mlaserve__Envelope *env);
/* An Error about request rid: to the router that owns its job, else to the
 * router whose message is being handled. */
void node_send_error(mls_node *n, uint64_t rid, mls_status st, const char *msg);
/* An Error for the job unless one went already; counts the failure. */
void node_job_fail(mls_node *n, node_job *job, mls_status st, const char *msg);

/* ---- the compute thread (node_compute.c) ---- */

mls_status node_compute_start(mls_node *n);
void node_compute_stop(mls_node *n);
/* loop: hand a job to compute (it goes to the role of job->phase). */
void node_compute_submit(mls_node *n, node_job *job);
/* loop: wake compute (a job was cancelled). */
void node_compute_kick(mls_node *n);
/* compute: hand a job to the role of its (new) phase at once. */
void node_compute_handoff(mls_node *n, node_job *job);
/* compute: post an event to the loop (takes ev, calloc'd). */
void node_post(mls_node *n, node_event *ev);
/* compute: post a bare event / an error / a finish for job. */
void node_post_simple(mls_node *n, node_ev_kind kind, node_job *job);
void node_post_error(mls_node *n, node_job *job, mls_status st, const char *msg);
void node_post_finish(mls_node *n, node_job *job, int32_t reason);
/* compute: the job leaves compute; its pages go back to the pool unless a
 * transfer still reads them (keep_pages). */
void node_job_leave(mls_node *n, node_job *job, bool keep_pages);
/* loop: drain compute's events now (also at shutdown). */
void node_events_drain(mls_node *n);

/* ---- sampling (node_sample.c; compute) ---- */

/* Per-index seeded generator: index i of a completion always draws the same. */
void node_rng_for(uint64_t seed, uint32_t index, eng_rng *rng);
/* Sample completion token job->n_generated from logits; true when finished
 * (*reason_p says why). */
bool node_sample(mls_node *n, node_job *job, const float *logits, int32_t *token_p,
                 float *logprob_p, int32_t *reason_p);
/* The k most likely tokens of logits[vocab] with their log-softmax values. */
void node_top_logprobs(const float *logits, int32_t vocab, uint32_t k, node_event *ev);
/* An event carrying one sampled token (NODE_EV_FIRST or NODE_EV_TOKEN), with
 * its alternatives when the request asked for them; NULL when out of memory. */
node_event *node_token_event(mls_node *n, node_job *job, node_ev_kind kind, int32_t token,
                             float logprob, const float *logits);

/* ---- role state ---- */

static inline void *node_role_state(mls_node *n, node_phase phase)
{
    return n->role_state[phase];
}

/* ---- metrics (node_metrics.c; loop) ---- */

mls_status node_metrics_create(mls_node *n, mls_err *err);
void node_metrics_destroy(mls_node *n);
/* The HTTP handler: /metrics and /health. */
void node_metrics_on_http(mls_http_req *req, void *user);

/* ---- router link (node_link.c; loop) ---- */

void node_link_start(mls_node *n);
void node_link_stop(mls_node *n);
/* Registered with at least one router / connected to at least one. */
bool node_link_any_registered(const mls_node *n);
bool node_link_any_connected(const mls_node *n);
/* The node stops: every open job is cancelled. */
void node_cancel_all(mls_node *n);

#endif
