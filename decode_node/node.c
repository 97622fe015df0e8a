/*
 * node.c - the node daemon's control loop: router connection, registration
 * and load reports, request handlers, transport callbacks, /metrics.
 * Everything here runs on the loop thread (see node.h for the flows).
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mls_alloc.h"
#include "mls_log.h"
#include "mls_num.h"
#include "node_internal.h"

#define NODE_RECONNECT_MS   500
#define NODE_STALE_READY_MS 30000   /* KV arrived but StartDecode never came */
#define NODE_DRAIN_MS       30000   /* SIGTERM: finish running requests for this long */

void mls_node_config_default(mls_node_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->role = MLS_NODE_ROLE_DECODE;
    cfg->router_host = "127.0.0.1";
    cfg->router_port = 7100;
    cfg->listen_host = "127.0.0.1";
    cfg->kv_dtype = KVL_DTYPE_BF16;
    cfg->kv_pages = 512;
    cfg->max_batch = 64;
    cfg->prefill_chunk = 256;
    cfg->kvx_path = "auto";
}

static const char *node_role_name(mls_node_role role)
{
    switch (role) {
    case MLS_NODE_ROLE_PREFILL: return "prefill";
    case MLS_NODE_ROLE_DECODE: return "decode";
    default: return "colocated";
    }
}

/* ---- registry ---------------------------------------------------------------- */

static node_job *node_job_find(mls_node *n, uint64_t rid)
{
    for (node_job *j = n->jobs; j != NULL; j = j->next_reg) {
        if (j->rid == rid) {
            return j;
        }
    }
    return NULL;
}

static node_job *node_job_new(mls_node *n, uint64_t rid)
{
    node_job *job = calloc(1, sizeof(*job));
    if (job == NULL) {
        return NULL;
    }
    job->rid = rid;
    eng_seq_init(&job->seq);
    atomic_init(&job->cancelled, false);
    job->t_created_ns = mls_now_ns();
    job->next_reg = n->jobs;
    n->jobs = job;
    return job;
}

void node_job_free(mls_node *n, node_job *job)
{
    for (node_job **pp = &n->jobs; *pp != NULL; pp = &(*pp)->next_reg) {
        if (*pp == job) {
            *pp = job->next_reg;
            break;
        }
    }
    if (job->xreq != NULL) {
        kvx_req_release(job->xreq);
    }
    eng_seq_release(&job->seq, n->pool);
    free(job->prompt);
    free(job->pages);
    free(job);
}

/* ---- sending ------------------------------------------------------------------ */

static void node_send(mls_node *n, const Mlaserve__Envelope *env)
{
    if (n->router != NULL && n->registered) {
        mls_conn_send(n->router, env);
    }
}

static void node_send_error(mls_node *n, uint64_t rid, mls_status st, const char *msg)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Error e = MLASERVE__ERROR__INIT;

    mls_proto_error_init(&env, &e, rid, st, msg);
    node_send(n, &env);
}

/* ---- transport callbacks ------------------------------------------------------- */

/* decode role: a reservation finished (KV verified, or failed). */
static void node_on_kv_done(void *arg, uint64_t rid, mls_status st, const char *why)
{
    mls_node *n = arg;
    node_job *job = node_job_find(n, rid);

    if (job == NULL) {
        return;
    }
    job->reserved = false;
    atomic_fetch_sub(&n->pages_reserved, job->n_pages);
    if (st != MLS_OK) {
        mls_warn("node: request %llu: KV transfer failed: %s (%s)", (unsigned long long)rid,
                 why ? why : "", mls_status_name(st));
        if (st != MLS_ERR_CANCELED) {
            node_send_error(n, rid, st, why ? why : mls_status_message(st));
            atomic_fetch_add(&n->requests_failed, 1);
        }
        eng_kv_pool_free(n->pool, job->pages, job->n_pages);
        node_job_free(n, job);
        return;
    }
    job->kv_ready = true;
    job->t_ready_ns = mls_now_ns();
    eng_seq_adopt(&job->seq, job->pages, job->n_pages, job->n_prompt);
    if (job->start_received) {
        node_compute_submit(n, job);
    }
}

/* prefill role: our transfer finished. */
static void node_on_xfer_done(void *arg, uint64_t rid, mls_status st, const char *why)
{
    mls_node *n = arg;
    node_job *job = node_job_find(n, rid);

    if (job == NULL) {
        return;
    }
    job->xfer_done = true;
    if (st != MLS_OK) {
        atomic_store(&job->cancelled, true);
        if (!job->failed && st != MLS_ERR_CANCELED) {
            mls_warn("node: request %llu: KV transfer failed: %s (%s)", (unsigned long long)rid,
                     why ? why : "", mls_status_name(st));
            node_send_error(n, rid, st, why ? why : mls_status_message(st));
            job->failed = true;
            atomic_fetch_add(&n->requests_failed, 1);
        }
    }
    if (job->compute_done) {
        node_job_free(n, job);
    }
}

/* ---- compute events --------------------------------------------------------------- */

static void node_on_event(mls_node *n, node_event *ev)
{
    node_job *job = ev->job;
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;

    switch (ev->kind) {
    case NODE_EV_FIRST: {
        Mlaserve__FirstToken m = MLASERVE__FIRST_TOKEN__INIT;
        Mlaserve__TopLogprobs top = MLASERVE__TOP_LOGPROBS__INIT;
        if (job->failed) {
            break;
        }
        if (ev->n_top > 0) {
            top.n_token_ids = top.n_logprobs = ev->n_top;
            top.token_ids = ev->top_ids;
            top.logprobs = ev->top_logprobs;
            m.top = &top;
        }
        m.request_id = ev->rid;
        m.token_id = ev->token;
        m.logprob = ev->logprob;
        m.prefill_ns = ev->ns;
        m.queue_ns = 0;
        m.n_prompt_tokens = ev->prompt_tokens;
        env.msg_case = MLASERVE__ENVELOPE__MSG_FIRST_TOKEN;
        env.first_token = &m;
        node_send(n, &env);
        break;
    }
    case NODE_EV_TOKEN: {
        Mlaserve__TokenChunk m = MLASERVE__TOKEN_CHUNK__INIT;
        Mlaserve__TopLogprobs top = MLASERVE__TOP_LOGPROBS__INIT, *tops[1] = {&top};
        if (ev->n_top > 0) {
            top.n_token_ids = top.n_logprobs = ev->n_top;
            top.token_ids = ev->top_ids;
            top.logprobs = ev->top_logprobs;
            m.n_top = 1;
            m.top = tops;
        }
        m.request_id = ev->rid;
        m.first_index = ev->index;
        m.n_token_ids = 1;
        m.token_ids = &ev->token;
        m.n_logprobs = 1;
        m.logprobs = &ev->logprob;
        env.msg_case = MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK;
        env.token_chunk = &m;
        node_send(n, &env);
        break;
    }
    case NODE_EV_FINISH: {
        Mlaserve__Finish m = MLASERVE__FINISH__INIT;
        m.request_id = ev->rid;
        m.reason = ev->reason;
        m.prompt_tokens = ev->prompt_tokens;
        m.completion_tokens = ev->completion_tokens;
        env.msg_case = MLASERVE__ENVELOPE__MSG_FINISH;
        env.finish = &m;
        node_send(n, &env);
        atomic_fetch_add(&n->requests_finished, 1);
        break;
    }
    case NODE_EV_ERROR:
        if (!job->failed) {
            node_send_error(n, ev->rid, ev->st, ev->msg);
            job->failed = true;
            atomic_fetch_add(&n->requests_failed, 1);
        }
        break;
    case NODE_EV_COMPUTE_DONE:
        job->compute_done = true;
        if (job->xreq == NULL || job->xfer_done) {
            node_job_free(n, job);
        }
        break;
    }
    free(ev);
}

static void node_on_wake(uv_async_t *h)
{
    mls_node *n = h->data;
    node_event *ev;

    pthread_mutex_lock(&n->out_lock);
    ev = n->out_head;
    n->out_head = n->out_tail = NULL;
    pthread_mutex_unlock(&n->out_lock);
    while (ev != NULL) {
        node_event *next = ev->next;
        node_on_event(n, ev);
        ev = next;
    }
}

/* ---- requests from the router --------------------------------------------------------- */

static void node_fill_sampling(node_job *job, const Mlaserve__SamplingParams *sp)
{
    job->sampling.temperature = sp ? sp->temperature : 0.0f;
    job->sampling.top_p = sp && sp->top_p > 0.0f && sp->top_p < 1.0f ? sp->top_p : 1.0f;
    job->sampling.top_k = sp && sp->top_k > 0 ? sp->top_k : 0;
    job->seed = sp && sp->has_seed ? sp->seed : (uint64_t)mls_now_ns();
    job->max_tokens = sp && sp->max_tokens > 0 ? sp->max_tokens : 16;
    job->ignore_eos = sp ? sp->ignore_eos : false;
    job->top_logprobs = sp == NULL ? 0 : sp->top_logprobs < NODE_MAX_TOP ? sp->top_logprobs : NODE_MAX_TOP;
}

static void node_on_reserve(mls_node *n, const Mlaserve__Reserve *m)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Reserved r = MLASERVE__RESERVED__INIT;
    node_job *job = NULL;
    mls_err err = {{0}};
    mls_status st = MLS_OK;

    r.request_id = m->request_id;
    if (n->draining) {
        st = MLS_ERR_BUSY;
        mls_err_set(&err, "node is draining");
    } else if (n->cfg.role != MLS_NODE_ROLE_DECODE) {
        st = MLS_ERR_INVALID_ARG;
        mls_err_set(&err, "this node is not a decode node");
    } else if (m->n_pages == 0 || m->n_pages > eng_kv_pool_pages_total(n->pool)) {
        st = MLS_ERR_TOO_LARGE;
        mls_err_set(&err, "%u pages requested, the pool has %u", m->n_pages,
                    eng_kv_pool_pages_total(n->pool));
    } else if (node_job_find(n, m->request_id) != NULL) {
        st = MLS_ERR_INVALID_ARG;
        mls_err_set(&err, "request %llu is already open", (unsigned long long)m->request_id);
    } else if ((job = node_job_new(n, m->request_id)) == NULL ||
               (job->pages = malloc(sizeof(uint32_t) * m->n_pages)) == NULL) {
        st = MLS_ERR_NO_MEMORY;
        mls_err_set(&err, "out of memory");
    } else if ((st = eng_kv_pool_alloc(n->pool, m->n_pages, job->pages)) != MLS_OK) {
        mls_err_set(&err, "%u pages requested, %u free", m->n_pages, eng_kv_pool_pages_free(n->pool));
    } else {
        job->n_pages = m->n_pages;
        st = kvx_reserve(n->kvx, m->request_id, job->pages, m->n_pages,
                         m->lease_ms ? m->lease_ms : 10000, node_on_kv_done, n, &err);
        if (st != MLS_OK) {
            eng_kv_pool_free(n->pool, job->pages, m->n_pages);
            job->n_pages = 0;
        } else {
            job->reserved = true;
            atomic_fetch_add(&n->pages_reserved, m->n_pages);
        }
    }
    if (st != MLS_OK) {
        if (job != NULL) {
            node_job_free(n, job);
        }
        r.status = (int32_t)st;
        r.message = err.msg;
        mls_info("node: reserve %llu refused: %s", (unsigned long long)m->request_id, err.msg);
    } else {
        r.n_page_ids = job->n_pages;
        r.page_ids = job->pages;
        r.decode_address.data = (uint8_t *)n->xfer_addr;
        r.decode_address.len = strlen(n->xfer_addr);
        r.lease_ms = m->lease_ms;
    }
    env.msg_case = MLASERVE__ENVELOPE__MSG_RESERVED;
    env.reserved = &r;
    node_send(n, &env);
}

static void node_on_prefill(mls_node *n, const Mlaserve__PrefillRequest *m)
{
    const eng_config *c = eng_model_config(n->model);
    node_job *job;
    mls_err err = {{0}};
    bool remote = m->decode_address.len > 0;

    if (n->cfg.role == MLS_NODE_ROLE_DECODE) {
        node_send_error(n, m->request_id, MLS_ERR_INVALID_ARG, "this node is not a prefill node");
        return;
    }
    if (n->draining) {
        node_send_error(n, m->request_id, MLS_ERR_BUSY, "node is draining");
        return;
    }
    if (m->n_prompt_token_ids == 0) {
        node_send_error(n, m->request_id, MLS_ERR_INVALID_ARG, "empty prompt");
        return;
    }
    for (size_t i = 0; i < m->n_prompt_token_ids; i++) {
        if (m->prompt_token_ids[i] < 0 || m->prompt_token_ids[i] >= c->vocab_size) {
            mls_err_set(&err, "prompt token %d at %zu is outside the vocabulary (%d)",
                        m->prompt_token_ids[i], i, c->vocab_size);
            node_send_error(n, m->request_id, MLS_ERR_INVALID_ARG, err.msg);
            return;
        }
    }
    if (remote && (m->decode_address.len >= sizeof(job->decode_addr) || m->n_page_ids == 0 ||
                   (uint64_t)m->n_page_ids * KVL_PAGE_TOKENS < m->n_prompt_token_ids)) {
        node_send_error(n, m->request_id, MLS_ERR_INVALID_ARG,
                        "decode address or reserved pages do not fit the prompt");
        return;
    }
    if (node_job_find(n, m->request_id) != NULL) {
        node_send_error(n, m->request_id, MLS_ERR_INVALID_ARG, "request id already open");
        return;
    }
    job = node_job_new(n, m->request_id);
    if (job == NULL || (job->prompt = malloc(sizeof(int32_t) * m->n_prompt_token_ids)) == NULL ||
        (remote && (job->pages = malloc(sizeof(uint32_t) * m->n_page_ids)) == NULL)) {
        if (job != NULL) {
            node_job_free(n, job);
        }
        node_send_error(n, m->request_id, MLS_ERR_NO_MEMORY, "out of memory");
        return;
    }
    memcpy(job->prompt, m->prompt_token_ids, sizeof(int32_t) * m->n_prompt_token_ids);
    job->n_prompt = (int32_t)m->n_prompt_token_ids;
    node_fill_sampling(job, m->sampling);
    job->n_generated = m->n_generated;
    job->phase = NODE_PHASE_PREFILL;
    if (remote) {
        mls_status st;
        memcpy(job->decode_addr, m->decode_address.data, m->decode_address.len);
        memcpy(job->pages, m->page_ids, sizeof(uint32_t) * m->n_page_ids);
        job->n_pages = (uint32_t)m->n_page_ids;
        st = kvx_req_create(n->kvx, job->decode_addr, job->rid, job->pages, job->n_pages,
                            (uint32_t)job->n_prompt, node_on_xfer_done, n, &job->xreq, &err);
        if (st != MLS_OK) {
            node_send_error(n, job->rid, st, err.msg);
            node_job_free(n, job);
            return;
        }
    }
    atomic_fetch_add(&n->n_prefill_queued, 1);
    node_compute_submit(n, job);
}

static void node_on_start_decode(mls_node *n, const Mlaserve__StartDecode *m)
{
    node_job *job = node_job_find(n, m->request_id);

    if (job == NULL || n->cfg.role != MLS_NODE_ROLE_DECODE || job->start_received) {
        node_send_error(n, m->request_id, MLS_ERR_NOT_FOUND, "no reservation for this request");
        return;
    }
    if (m->n_prompt_tokens == 0 || (uint64_t)job->n_pages * KVL_PAGE_TOKENS < m->n_prompt_tokens) {
        node_send_error(n, m->request_id, MLS_ERR_INVALID_ARG, "prompt does not fit the reservation");
        return;
    }
    node_fill_sampling(job, m->sampling);
    job->n_prompt = (int32_t)m->n_prompt_tokens;
    job->last_token = m->first_token_id;
    job->n_generated = m->n_generated;
    job->phase = NODE_PHASE_DECODE;
    job->start_received = true;
    if (job->kv_ready) {
        job->seq.n_tokens = job->n_prompt;
        node_compute_submit(n, job);
    }
}

static void node_on_cancel(mls_node *n, const Mlaserve__Cancel *m)
{
    node_job *job = node_job_find(n, m->request_id);

    if (job == NULL) {
        return;
    }
    job->failed = true; /* nothing more goes to the router for it */
    if (job->reserved) {
        kvx_cancel(n->kvx, job->rid); /* the callback frees pages and the job */
        return;
    }
    if (job->kv_ready && !job->start_received) {
        node_job_free(n, job); /* frees the adopted pages */
        return;
    }
    atomic_store(&job->cancelled, true);
    if (job->xreq != NULL && !job->xfer_done) {
        kvx_req_abort(job->xreq);
    }
    pthread_mutex_lock(&n->in_lock);
    pthread_cond_signal(&n->in_cond);
    pthread_mutex_unlock(&n->in_lock);
}

static void node_report_fill(mls_node *n, Mlaserve__LoadReport *r)
{
    uint64_t now = mls_now_ns(), tokens = atomic_load(&n->tokens_generated) + atomic_load(&n->tokens_prefilled);
    uint32_t total = eng_kv_pool_pages_total(n->pool), free_pages = eng_kv_pool_pages_free(n->pool);

    if (n->last_report_ns != 0 && now > n->last_report_ns) {
        n->tokens_per_s = (double)(tokens - n->last_report_tokens) * 1e9 / (double)(now - n->last_report_ns);
    }
    n->last_report_ns = now;
    n->last_report_tokens = tokens;
    r->seq = ++n->report_seq;
    r->queue_depth = atomic_load(&n->n_prefill_queued);
    r->running = atomic_load(&n->n_running);
    r->waiting = atomic_load(&n->n_waiting);
    r->kv_pages_free = free_pages;
    r->kv_pages_used = total - free_pages;
    r->kv_pages_reserved = atomic_load(&n->pages_reserved);
    r->tokens_per_s = n->tokens_per_s;
    r->sent_unix_ns = now;
}

static void node_on_heartbeat(uv_timer_t *t)
{
    mls_node *n = t->data;
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__LoadReport r = MLASERVE__LOAD_REPORT__INIT;
    uint64_t now = mls_now_ns();

    node_report_fill(n, &r);
    env.msg_case = MLASERVE__ENVELOPE__MSG_LOAD_REPORT;
    env.load_report = &r;
    node_send(n, &env);
    /* KV that arrived for a request the router never started: give it back */
    for (node_job *j = n->jobs, *next; j != NULL; j = next) {
        next = j->next_reg;
        if (j->kv_ready && !j->start_received &&
            now - j->t_ready_ns > (uint64_t)NODE_STALE_READY_MS * 1000000ull) {
            mls_warn("node: request %llu: KV arrived but decode never started; freeing its pages",
                     (unsigned long long)j->rid);
            node_job_free(n, j);
        }
    }
}

static void node_on_msg(mls_conn *conn, Mlaserve__Envelope *env, void *user)
{
    mls_node *n = user;

    switch (env->msg_case) {
    case MLASERVE__ENVELOPE__MSG_REGISTER_ACK:
        if (!env->register_ack->accepted) {
            mls_error("node: the router refused registration: %s", env->register_ack->message);
            mls_conn_close(conn);
            return;
        }
        n->registered = true;
        n->heartbeat_ms = env->register_ack->heartbeat_interval_ms ? env->register_ack->heartbeat_interval_ms : 1000;
        uv_timer_start(&n->heartbeat_timer, node_on_heartbeat, 0, n->heartbeat_ms);
        mls_info("node %s: registered with the router", n->node_id);
        break;
    case MLASERVE__ENVELOPE__MSG_RESERVE:
        node_on_reserve(n, env->reserve);
        break;
    case MLASERVE__ENVELOPE__MSG_PREFILL_REQUEST:
        node_on_prefill(n, env->prefill_request);
        break;
    case MLASERVE__ENVELOPE__MSG_START_DECODE:
        node_on_start_decode(n, env->start_decode);
        break;
    case MLASERVE__ENVELOPE__MSG_CANCEL:
        node_on_cancel(n, env->cancel);
        break;
    case MLASERVE__ENVELOPE__MSG_ERROR:
        mls_warn("node: router reports for request %llu: %s %s",
                 (unsigned long long)env->error->request_id, env->error->status_name,
                 env->error->message);
        break;
    default:
        node_send_error(n, 0, MLS_ERR_UNSUPPORTED, "unexpected message for a node");
        break;
    }
}

/* ---- router connection -------------------------------------------------------------- */

static void node_dial(mls_node *n);

static void node_on_reconnect(uv_timer_t *t)
{
    node_dial(t->data);
}

static void node_cancel_all(mls_node *n)
{
    /* the router is gone: nobody will read our results; free everything */
    for (node_job *j = n->jobs, *next; j != NULL; j = next) {
        Mlaserve__Cancel c = MLASERVE__CANCEL__INIT;
        next = j->next_reg;
        c.request_id = j->rid;
        node_on_cancel(n, &c);
    }
}

static void node_on_router_close(mls_conn *conn, mls_status st, void *user)
{
    mls_node *n = user;

    n->router = NULL;
    n->registered = false;
    uv_timer_stop(&n->heartbeat_timer);
    if (n->stopping) {
        return;
    }
    mls_warn("node %s: lost the router connection (%s); reconnecting", n->node_id,
             mls_status_name(st));
    node_cancel_all(n);
    uv_timer_start(&n->reconnect_timer, node_on_reconnect, NODE_RECONNECT_MS, 0);
}

static void node_on_router_connect(mls_conn *conn, mls_status st, void *user)
{
    mls_node *n = user;
    const eng_config *c = eng_model_config(n->model);
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Register r = MLASERVE__REGISTER__INIT;
    Mlaserve__KvLayout kl = MLASERVE__KV_LAYOUT__INIT;
    Mlaserve__Capacity cap = MLASERVE__CAPACITY__INIT;

    if (st != MLS_OK) {
        n->router = NULL;
        if (!n->stopping) {
            uv_timer_start(&n->reconnect_timer, node_on_reconnect, NODE_RECONNECT_MS, 0);
        }
        return;
    }
    switch (n->cfg.role) {
    case MLS_NODE_ROLE_PREFILL: r.role = MLASERVE__ROLE__ROLE_PREFILL; break;
    case MLS_NODE_ROLE_DECODE: r.role = MLASERVE__ROLE__ROLE_DECODE; break;
    default: r.role = MLASERVE__ROLE__ROLE_COLOCATED; break;
    }
    r.node_id = n->node_id;
    r.protocol_version = MLS_PROTO_VERSION;
    r.model_fingerprint = eng_model_fingerprint(n->model);
    r.model_name = n->model_name;
    mls_proto_kv_layout_to_wire(&n->layout, (uint32_t)c->num_hidden_layers, &kl);
    r.kv_layout = &kl;
    cap.kv_pages_total = eng_kv_pool_pages_total(n->pool);
    cap.kv_pages_free = eng_kv_pool_pages_free(n->pool);
    cap.page_bytes = n->layout.page_bytes * (uint64_t)c->num_hidden_layers;
    cap.kv_dtype = mls_proto_kv_dtype_to_wire(n->layout.dtype);
    cap.max_batch = n->cfg.max_batch;
    cap.max_seq_len = (uint32_t)(c->max_position_embeddings < (int64_t)cap.kv_pages_total * KVL_PAGE_TOKENS
                                     ? c->max_position_embeddings
                                     : (int64_t)cap.kv_pages_total * KVL_PAGE_TOKENS);
    cap.max_prefill_tokens = (uint32_t)n->cfg.prefill_chunk;
    r.capacity = &cap;
    r.ucx_worker_address.data = (uint8_t *)n->xfer_addr;
    r.ucx_worker_address.len = strlen(n->xfer_addr);
    r.host = (char *)n->cfg.listen_host;
    r.metrics_port = (uint32_t)n->metrics_port;
    r.pid = (uint32_t)getpid();
    env.msg_case = MLASERVE__ENVELOPE__MSG_REGISTER_NODE;
    env.register_node = &r;
    mls_conn_send(conn, &env);
}

static void node_dial(mls_node *n)
{
    static const mls_conn_callbacks cb = {
        .on_msg = node_on_msg,
        .on_close = node_on_router_close,
        .on_connect = node_on_router_connect,
    };

    if (n->stopping || n->router != NULL) {
        return;
    }
    if (mls_conn_dial(&n->loop, n->cfg.router_host, n->cfg.router_port, NULL, &cb, n, &n->router) !=
        MLS_OK) {
        n->router = NULL;
        uv_timer_start(&n->reconnect_timer, node_on_reconnect, NODE_RECONNECT_MS, 0);
    }
}

/* ---- /metrics and /health ---------------------------------------------------------------- */

static void node_on_http(mls_http_req *req, void *user)
{
    mls_node *n = user;
    const char *path = mls_http_req_path(req);
    char body[4096];
    int len;

    if (strcmp(path, "/health") == 0) {
        const char *ok = n->registered ? "{\"status\":\"ok\"}" : "{\"status\":\"starting\"}";
        mls_http_req_respond(req, n->registered ? 200 : 503, "application/json", ok, strlen(ok));
        return;
    }
    if (strcmp(path, "/metrics") != 0) {
        mls_http_req_respond_error(req, 404, "invalid_request_error", NULL, NULL, "not found");
        return;
    }
    {
        kvx_stats xs = {0};
        uint32_t total = eng_kv_pool_pages_total(n->pool), free_pages = eng_kv_pool_pages_free(n->pool);
        if (n->kvx != NULL) {
            kvx_ctx_stats(n->kvx, &xs);
        }
        len = snprintf(body, sizeof(body),
                       "# HELP mlaserve_node_kv_pages_total KV pages in the pool (per layer).\n"
                       "# TYPE mlaserve_node_kv_pages_total gauge\n"
                       "mlaserve_node_kv_pages_total{node=\"%s\",role=\"%s\"} %u\n"
                       "# HELP mlaserve_node_kv_pages_free Free KV pages.\n"
                       "# TYPE mlaserve_node_kv_pages_free gauge\n"
                       "mlaserve_node_kv_pages_free{node=\"%s\",role=\"%s\"} %u\n"
                       "# HELP mlaserve_node_kv_pages_used KV pages held by requests.\n"
                       "# TYPE mlaserve_node_kv_pages_used gauge\n"
                       "mlaserve_node_kv_pages_used{node=\"%s\",role=\"%s\"} %u\n"
                       "# HELP mlaserve_node_kv_pages_reserved KV pages leased for transfers in flight.\n"
                       "# TYPE mlaserve_node_kv_pages_reserved gauge\n"
                       "mlaserve_node_kv_pages_reserved{node=\"%s\",role=\"%s\"} %u\n"
                       "# HELP mlaserve_node_num_requests_running Sequences in the decode batch.\n"
                       "# TYPE mlaserve_node_num_requests_running gauge\n"
                       "mlaserve_node_num_requests_running{node=\"%s\",role=\"%s\"} %u\n"
                       "# HELP mlaserve_node_num_requests_waiting Sequences waiting for a batch slot or prefill.\n"
                       "# TYPE mlaserve_node_num_requests_waiting gauge\n"
                       "mlaserve_node_num_requests_waiting{node=\"%s\",role=\"%s\"} %u\n"
                       "# HELP mlaserve_node_generation_tokens_total Tokens generated.\n"
                       "# TYPE mlaserve_node_generation_tokens_total counter\n"
                       "mlaserve_node_generation_tokens_total{node=\"%s\",role=\"%s\"} %llu\n"
                       "# HELP mlaserve_node_prompt_tokens_total Prompt tokens prefilled.\n"
                       "# TYPE mlaserve_node_prompt_tokens_total counter\n"
                       "mlaserve_node_prompt_tokens_total{node=\"%s\",role=\"%s\"} %llu\n"
                       "# HELP mlaserve_node_kv_transfer_bytes_total KV bytes sent or received and verified.\n"
                       "# TYPE mlaserve_node_kv_transfer_bytes_total counter\n"
                       "mlaserve_node_kv_transfer_bytes_total{node=\"%s\",direction=\"sent\"} %llu\n"
                       "mlaserve_node_kv_transfer_bytes_total{node=\"%s\",direction=\"received\"} %llu\n"
                       "# HELP mlaserve_node_request_failures_total Requests that failed on this node.\n"
                       "# TYPE mlaserve_node_request_failures_total counter\n"
                       "mlaserve_node_request_failures_total{node=\"%s\"} %llu\n",
                       n->node_id, node_role_name(n->cfg.role), total,
                       n->node_id, node_role_name(n->cfg.role), free_pages,
                       n->node_id, node_role_name(n->cfg.role), total - free_pages,
                       n->node_id, node_role_name(n->cfg.role), atomic_load(&n->pages_reserved),
                       n->node_id, node_role_name(n->cfg.role), atomic_load(&n->n_running),
                       n->node_id, node_role_name(n->cfg.role),
                       atomic_load(&n->n_waiting) + atomic_load(&n->n_prefill_queued),
                       n->node_id, node_role_name(n->cfg.role),
                       (unsigned long long)atomic_load(&n->tokens_generated),
                       n->node_id, node_role_name(n->cfg.role),
                       (unsigned long long)atomic_load(&n->tokens_prefilled),
                       n->node_id, (unsigned long long)xs.bytes_sent,
                       n->node_id, (unsigned long long)xs.bytes_received,
                       n->node_id, (unsigned long long)atomic_load(&n->requests_failed));
    }
    mls_http_req_respond(req, 200, "text/plain; version=0.0.4", body, (size_t)len);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void node_on_drain_tick(uv_timer_t *t)
{
    mls_node *n = t->data;

    if (n->jobs == NULL || mls_now_ns() > n->drain_deadline_ns || n->router == NULL) {
        if (n->jobs != NULL) {
            mls_warn("node %s: drain deadline passed with requests still open", n->node_id);
        }
        n->stopping = true;
        uv_stop(&n->loop);
    }
}

/*
 * First SIGTERM/SIGINT: drain - tell the router to send nothing new, finish
 * the requests that run (up to NODE_DRAIN_MS), then stop. A second signal
 * stops at once.
 */
static void node_on_signal(uv_signal_t *s, int signum)
{
    mls_node *n = s->data;
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Drain d = MLASERVE__DRAIN__INIT;

    if (n->stopping) {
        return;
    }
    if (n->draining || n->jobs == NULL || !n->registered) {
        mls_info("node %s: signal %d, shutting down", n->node_id, signum);
        n->stopping = true;
        uv_stop(&n->loop);
        return;
    }
    mls_info("node %s: signal %d, draining", n->node_id, signum);
    n->draining = true;
    n->drain_deadline_ns = mls_now_ns() + (uint64_t)NODE_DRAIN_MS * 1000000ull;
    d.deadline_ms = NODE_DRAIN_MS;
    d.reason = "node shutting down";
    env.msg_case = MLASERVE__ENVELOPE__MSG_DRAIN;
    env.drain = &d;
    node_send(n, &env);
    uv_timer_start(&n->drain_timer, node_on_drain_tick, 100, 100);
}

static void node_close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) {
        uv_close(h, NULL);
    }
}

/* The model and the KV layout it implies. */
static mls_status node_setup_model(mls_node *n, mls_err *err)
{
    const eng_config *c;
    eng_load_opts opts = {.progress = false};
    mls_status st;

    if ((st = eng_model_load(n->cfg.model_dir, &opts, &n->model, err)) != MLS_OK) {
        return st;
    }
    c = eng_model_config(n->model);
    if ((st = kvl_layout_init(n->cfg.kv_dtype, (uint32_t)c->kv_lora_rank, (uint32_t)c->qk_rope_head_dim,
                              eng_model_fingerprint(n->model), &n->layout)) != MLS_OK) {
        mls_err_set(err, "the model's latent shape does not fit the KV layout");
    }
    return st;
}

/*
 * The transport, then the KV pool: a decode node's pool lives in memory the
 * transport allocates (so shared-memory peers can put into it directly) and
 * is registered once; other roles keep a private pool.
 */
static mls_status node_setup_transport_and_pool(mls_node *n, mls_err *err)
{
    const eng_config *c = eng_model_config(n->model);
    uint32_t n_layers = (uint32_t)c->num_hidden_layers;
    kvx_config xc = {0};
    mls_status st;

    if (n->cfg.role != MLS_NODE_ROLE_COLOCATED) {
        xc.loop = &n->loop;
        xc.layout = n->layout;
        xc.n_layers = n_layers;
        xc.path = strcmp(n->cfg.kvx_path, "rma") == 0  ? KVX_PATH_RMA
                  : strcmp(n->cfg.kvx_path, "am") == 0 ? KVX_PATH_AM
                                                       : KVX_PATH_AUTO;
        if ((st = kvx_ctx_create(&xc, &n->kvx, err)) != MLS_OK) {
            return st;
        }
    }
    if (n->cfg.role == MLS_NODE_ROLE_DECODE) {
        uint8_t *bases[KVX_MAX_LAYERS];
        uint64_t bytes = (uint64_t)n->cfg.kv_pages * n->layout.page_bytes;
        uint16_t port;
        if (n_layers > KVX_MAX_LAYERS) {
            mls_err_set(err, "%u layers: the transport handles at most %u", n_layers, KVX_MAX_LAYERS);
            return MLS_ERR_UNSUPPORTED;
        }
        for (uint32_t l = 0; l < n_layers; l++) {
            void *mem;
            if ((st = kvx_pool_alloc(n->kvx, KVX_MEM_HOST, bytes, &mem, err)) != MLS_OK) {
                return st;
            }
            bases[l] = mem;
        }
        if ((st = eng_kv_pool_create_external(&n->layout, (int32_t)n_layers, n->cfg.kv_pages, bases,
                                              &n->pool)) != MLS_OK ||
            (st = kvx_pool_register(n->kvx, KVX_MEM_HOST, (void *const *)bases, n->cfg.kv_pages, err)) != MLS_OK ||
            (st = kvx_listen(n->kvx, n->cfg.listen_host, 0, &port, err)) != MLS_OK) {
            if (err->msg[0] == '\0') {
                mls_err_set(err, "cannot set up the KV pool: %s", mls_status_message(st));
            }
            return st;
        }
        snprintf(n->xfer_addr, sizeof(n->xfer_addr), "%s:%u", n->cfg.listen_host, port);
    } else if ((st = eng_kv_pool_create(&n->layout, (int32_t)n_layers, n->cfg.kv_pages, &n->pool)) != MLS_OK) {
        mls_err_set(err, "cannot create a KV pool of %u pages: %s", n->cfg.kv_pages, mls_status_message(st));
        return st;
    }
    if ((st = eng_ctx_create(n->model, n->pool, n->cfg.threads, &n->ctx)) != MLS_OK) {
        mls_err_set(err, "cannot create the compute context: %s", mls_status_message(st));
        return st;
    }
    eng_ctx_set_chunk(n->ctx, n->cfg.prefill_chunk);
    return MLS_OK;
}

int mls_node_main(const mls_node_config *cfg)
{
    mls_node *n = calloc(1, sizeof(*n));
    mls_http_config hc;
    mls_err err = {{0}};
    mls_status st;
    int rc = 1;

    if (n == NULL) {
        return 1;
    }
    n->cfg = *cfg;
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&n->loop);
    pthread_mutex_init(&n->out_lock, NULL);
    pthread_mutex_init(&n->in_lock, NULL);
    pthread_cond_init(&n->in_cond, NULL);
    if (cfg->node_id != NULL) {
        snprintf(n->node_id, sizeof(n->node_id), "%s", cfg->node_id);
    } else {
        snprintf(n->node_id, sizeof(n->node_id), "%s-%s-%d", node_role_name(cfg->role), cfg->listen_host,
                 (int)getpid());
    }
    {
        const char *base = strrchr(cfg->model_dir, '/');
        snprintf(n->model_name, sizeof(n->model_name), "%s",
                 cfg->model_name ? cfg->model_name : (base && base[1] ? base + 1 : cfg->model_dir));
    }
    if ((st = node_setup_model(n, &err)) != MLS_OK) {
        fprintf(stderr, "mlaserve-%s: %s\n", node_role_name(cfg->role), err.msg);
        goto out;
    }
    if ((st = node_setup_transport_and_pool(n, &err)) != MLS_OK) {
        fprintf(stderr, "mlaserve-%s: %s\n", node_role_name(cfg->role), err.msg);
        goto out;
    }
    mls_http_config_default(&hc);
    hc.host = cfg->listen_host;
    hc.port = cfg->metrics_port;
    if ((st = mls_http_server_create(&n->loop, &hc, node_on_http, n, &n->http, &err)) != MLS_OK) {
        fprintf(stderr, "mlaserve-%s: metrics endpoint: %s\n", node_role_name(cfg->role), err.msg);
        goto out;
    }
    n->metrics_port = mls_http_server_port(n->http);
    uv_async_init(&n->loop, &n->wake, node_on_wake);
    n->wake.data = n;
    uv_timer_init(&n->loop, &n->reconnect_timer);
    n->reconnect_timer.data = n;
    uv_timer_init(&n->loop, &n->heartbeat_timer);
    n->heartbeat_timer.data = n;
    uv_timer_init(&n->loop, &n->drain_timer);
    n->drain_timer.data = n;
    uv_signal_init(&n->loop, &n->sigint);
    uv_signal_init(&n->loop, &n->sigterm);
    n->sigint.data = n->sigterm.data = n;
    uv_signal_start(&n->sigint, node_on_signal, SIGINT);
    uv_signal_start(&n->sigterm, node_on_signal, SIGTERM);
    if ((st = node_compute_start(n)) != MLS_OK) {
        fprintf(stderr, "mlaserve-%s: cannot start the compute thread\n", node_role_name(cfg->role));
        goto out_loop;
    }
    fprintf(stderr, "mlaserve-%s %s: model %s, kv %s x %u pages, metrics http://%s:%d/metrics%s%s\n",
            node_role_name(cfg->role), n->node_id, n->model_name, kvl_dtype_name(n->layout.dtype),
            cfg->kv_pages, cfg->listen_host, n->metrics_port, n->xfer_addr[0] ? ", kv transport " : "",
            n->xfer_addr);
    node_dial(n);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    rc = 0;

out_loop:
    n->stopping = true;
    node_compute_stop(n);
    node_on_wake(&n->wake); /* free what compute handed back */
    if (n->router != NULL) {
        mls_conn_close(n->router);
    }
    node_cancel_all(n);
    if (n->http != NULL) {
        mls_http_server_shutdown(n->http);
    }
    if (n->kvx != NULL) {
        kvx_ctx_destroy(n->kvx); /* fails what is open: its callbacks free those jobs */
        n->kvx = NULL;
        for (node_job *j = n->jobs; j != NULL; j = j->next_reg) {
            j->xreq = NULL; /* request handles died with the context */
        }
    }
    uv_walk(&n->loop, node_close_walk, NULL);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    while (n->jobs != NULL) {
        node_job_free(n, n->jobs);
    }
out:
    eng_ctx_destroy(n->ctx);
    eng_kv_pool_destroy(n->pool); /* a decode pool's memory is the transport's: freed below */
    if (n->kvx != NULL) {
        kvx_ctx_destroy(n->kvx);
    }
    eng_model_destroy(n->model);
    uv_loop_close(&n->loop);
    free(n);
    return rc;
}

/* ---- command line ------------------------------------------------------------------------------ */

static void node_usage(FILE *out, mls_node_role role)
{
    fprintf(out,
            "usage: mlaserve-%s --model DIR [options]\n"
            "\n"
            "A %s node of an mlaserve cluster: loads the model, dials the router and\n"
            "serves what it is sent until SIGINT/SIGTERM.\n"
            "\n"
            "  --model DIR          checkpoint directory (config.json + safetensors)\n"
            "  --model-name NAME    served model id (default: the directory's name)\n"
            "  --router HOST:PORT   the router's node port (default 127.0.0.1:7100)\n"
            "  --role R             prefill | decode | colocated (default %s)\n"
            "  --node-id ID         name in the router's registry (default role-host-pid)\n"
            "  --listen HOST        address for the KV transport and /metrics (default 127.0.0.1)\n"
            "  --metrics-port P     /metrics and /health port (default: any free port)\n"
            "  --kv-dtype D         f32 | bf16 | fp8 latent KV (default bf16)\n"
            "  --kv-pages N         KV pool pages (64 tokens each; default 512)\n"
            "  --max-batch N        sequences decoded together at most (default 64)\n"
            "  --threads N          compute threads (default: all cores)\n"
            "  --prefill-chunk N    prefill chunk in tokens (default 256)\n"
            "  --kvx-path P         KV transfer path: auto | rma | am (default auto)\n",
            node_role_name(role), node_role_name(role), node_role_name(role));
}

int mls_node_cli(int argc, char **argv, mls_node_role default_role)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},     {"model-name", required_argument, NULL, 'N'},
        {"router", required_argument, NULL, 'r'},    {"role", required_argument, NULL, 'R'},
        {"node-id", required_argument, NULL, 'i'},   {"listen", required_argument, NULL, 'l'},
        {"metrics-port", required_argument, NULL, 'p'}, {"kv-dtype", required_argument, NULL, 'k'},
        {"kv-pages", required_argument, NULL, 'P'},  {"max-batch", required_argument, NULL, 'b'},
        {"threads", required_argument, NULL, 'j'},   {"prefill-chunk", required_argument, NULL, 'c'},
        {"kvx-path", required_argument, NULL, 'x'},  {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    mls_node_config cfg;
    static char router_host[64];
    int c;

    mls_node_config_default(&cfg);
    cfg.role = default_role;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': cfg.model_dir = optarg; break;
        case 'N': cfg.model_name = optarg; break;
        case 'r': {
            const char *colon = strrchr(optarg, ':');
            if (colon == NULL || colon == optarg || (size_t)(colon - optarg) >= sizeof(router_host)) {
                fprintf(stderr, "--router wants HOST:PORT\n");
                return 2;
            }
            memcpy(router_host, optarg, (size_t)(colon - optarg));
            router_host[colon - optarg] = '\0';
            cfg.router_host = router_host;
            cfg.router_port = atoi(colon + 1);
            break;
        }
        case 'R':
            if (strcmp(optarg, "prefill") == 0) {
                cfg.role = MLS_NODE_ROLE_PREFILL;
            } else if (strcmp(optarg, "decode") == 0) {
                cfg.role = MLS_NODE_ROLE_DECODE;
            } else if (strcmp(optarg, "colocated") == 0) {
                cfg.role = MLS_NODE_ROLE_COLOCATED;
            } else {
                fprintf(stderr, "--role must be prefill, decode or colocated\n");
                return 2;
            }
            break;
        case 'i': cfg.node_id = optarg; break;
        case 'l': cfg.listen_host = optarg; break;
        case 'p': cfg.metrics_port = atoi(optarg); break;
        case 'k':
            if (kvl_dtype_parse(optarg, &cfg.kv_dtype) != MLS_OK) {
                fprintf(stderr, "--kv-dtype must be f32, bf16 or fp8\n");
                return 2;
            }
            break;
        case 'P': cfg.kv_pages = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'b': cfg.max_batch = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'j': cfg.threads = atoi(optarg); break;
        case 'c': cfg.prefill_chunk = atoi(optarg); break;
        case 'x': cfg.kvx_path = optarg; break;
        case 'h': node_usage(stdout, default_role); return 0;
        default: node_usage(stderr, default_role); return 2;
        }
    }
    if (cfg.model_dir == NULL) {
        fprintf(stderr, "--model is required\n");
        node_usage(stderr, default_role);
        return 2;
    }
    if (cfg.kv_pages == 0 || cfg.max_batch == 0 || cfg.max_batch > 1024 || cfg.router_port <= 0) {
        fprintf(stderr, "--kv-pages, --max-batch (1..1024) and --router need sensible values\n");
        return 2;
    }
    return mls_node_main(&cfg);
}
