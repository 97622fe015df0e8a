/*
 * node_link.c - the node's links to its routers: for each configured router,
 * dial, authenticate (proto/mls_conn.c), register (role, model, KV layout,
 * capacity, transport address), report load every heartbeat, and reconnect
 * after a loss with capped exponential backoff; dispatch of each router's
 * messages to the roles. A node serves every router it reaches: each router
 * owns the requests it sent, and losing one router cancels only its requests.
 * Loop thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mls_log.h"
#include "mls_num.h"
#include "node_role.h"

#define NODE_BACKOFF_FIRST_MS     250   /* first redial after a loss */
#define NODE_BACKOFF_MAX_MS       2000  /* a router back on its port has its nodes within ~2 s */
#define NODE_REFUSED_RECONNECT_MS 5000  /* after the router refused the cluster key */
#define NODE_REGISTER_DEADLINE_MS 10000 /* connected, but no RegisterAck: drop and redial */
#define NODE_TICK_MS              1000  /* the roles' on_tick */

static void node_dial(node_link *l);

static void node_report_fill(node_link *l, Mlaserve__LoadReport *r)
{
    mls_node *n = l->n;
    uint64_t now = mls_now_ns(),
             tokens = atomic_load(&n->tokens_generated) + atomic_load(&n->tokens_prefilled);
    uint32_t total = eng_kv_pool_pages_total(n->pool), free_pages = eng_kv_pool_pages_free(n->pool);

    if (l->last_report_ns != 0 && now > l->last_report_ns) {
        n->tokens_per_s =
            (double)(tokens - l->last_report_tokens) * 1e9 / (double)(now - l->last_report_ns);
    }
    l->last_report_ns = now;
    l->last_report_tokens = tokens;
    r->seq = ++l->report_seq;
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
    node_link *l = t->data;
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__LoadReport r = MLASERVE__LOAD_REPORT__INIT;

    node_report_fill(l, &r);
    env.msg_case = MLASERVE__ENVELOPE__MSG_LOAD_REPORT;
    env.load_report = &r;
    node_send_link(l->n, l, &env);
}

static void node_on_tick(uv_timer_t *t)
{
    mls_node *n = t->data;
    uint64_t now = mls_now_ns();

    for (int i = 0; i < 2; i++) {
        if (n->roles[i] != NULL && n->roles[i]->on_tick != NULL) {
            n->roles[i]->on_tick(n, now);
        }
    }
}

/* A role message no role of this node takes: the answer a wrong node gives. */
static void node_refuse(mls_node *n, const Mlaserve__Envelope *env)
{
    switch (env->msg_case) {
    case MLASERVE__ENVELOPE__MSG_RESERVE: {
        Mlaserve__Envelope out = MLASERVE__ENVELOPE__INIT;
        Mlaserve__Reserved r = MLASERVE__RESERVED__INIT;
        r.request_id = env->reserve->request_id;
        r.status = (int32_t)MLS_ERR_INVALID_ARG;
        r.message = "this node is not a decode node";
        out.msg_case = MLASERVE__ENVELOPE__MSG_RESERVED;
        out.reserved = &r;
        node_reply(n, &out);
        break;
    }
    case MLASERVE__ENVELOPE__MSG_PREFILL_REQUEST:
        node_send_error(n, env->prefill_request->request_id, MLS_ERR_INVALID_ARG,
                        "this node is not a prefill node");
        break;
    case MLASERVE__ENVELOPE__MSG_START_DECODE:
        node_send_error(n, env->start_decode->request_id, MLS_ERR_NOT_FOUND,
                        "no reservation for this request");
        break;
    default:
        node_send_error(n, 0, MLS_ERR_UNSUPPORTED, "unexpected message for a node");
        break;
    }
}

static void node_on_registered(node_link *l, const Mlaserve__RegisterAck *ack)
{
    mls_node *n = l->n;

    l->registered = true;
    l->backoff_ms = NODE_BACKOFF_FIRST_MS;
    uv_timer_stop(&l->deadline_timer);
    l->heartbeat_ms = ack->heartbeat_interval_ms ? ack->heartbeat_interval_ms : 1000;
    uv_timer_start(&l->heartbeat_timer, node_on_heartbeat, 0, l->heartbeat_ms);
    mls_info("node %s: registered with the router at %s:%d", n->node_id, l->host, l->port);
}

static void node_on_msg(mls_conn *conn, Mlaserve__Envelope *env, void *user)
{
    node_link *l = user;
    mls_node *n = l->n;

    switch (env->msg_case) {
    case MLASERVE__ENVELOPE__MSG_REGISTER_ACK:
        if (!env->register_ack->accepted) {
            mls_error("node %s: the router at %s:%d refused registration: %s", n->node_id, l->host,
                      l->port, env->register_ack->message);
            mls_conn_close(conn);
            return;
        }
        node_on_registered(l, env->register_ack);
        return;
    case MLASERVE__ENVELOPE__MSG_CANCEL: {
        node_job *job = node_job_find(n, env->cancel->request_id);
        if (job != NULL && job->link == l) {
            node_job_cancel(n, job);
        }
        return;
    }
    case MLASERVE__ENVELOPE__MSG_ERROR:
        if (!l->registered && env->error->request_id == 0) {
            mls_error("node %s: the router at %s:%d refused the connection: %s", n->node_id,
                      l->host, l->port, env->error->message);
            return;
        }
        mls_warn("node: router reports for request %llu: %s %s",
                 (unsigned long long)env->error->request_id, env->error->status_name,
                 env->error->message);
        return;
    default:
        break;
    }
    if (!l->registered) {
        return; /* nothing but the handshake before RegisterAck */
    }
    n->cur_link = l;
    for (int i = 0; i < 2; i++) {
        if (n->roles[i] != NULL && n->roles[i]->on_msg != NULL && n->roles[i]->on_msg(n, env)) {
            n->cur_link = NULL;
            return;
        }
    }
    node_refuse(n, env);
    n->cur_link = NULL;
}

/* Cancel the open jobs of one router (NULL: of every router). */
static void node_cancel_link(mls_node *n, const node_link *l)
{
    for (node_job *j = n->jobs, *next; j != NULL; j = next) {
        next = j->next_reg;
        if (l == NULL || j->link == l) {
            node_job_cancel(n, j);
        }
    }
}

void node_cancel_all(mls_node *n)
{
    node_cancel_link(n, NULL);
}

static void node_on_reconnect(uv_timer_t *t)
{
    node_dial(t->data);
}

/* Redial after delay_ms, jittered by up to a fifth so nodes do not redial in step. */
static void node_redial_later(node_link *l, uint32_t delay_ms)
{
    uint32_t jitter = delay_ms / 5 > 0 ? (uint32_t)(rand() % (int)(delay_ms / 5 + 1)) : 0;

    if (!l->n->stopping) {
        uv_timer_start(&l->reconnect_timer, node_on_reconnect, delay_ms - delay_ms / 10 + jitter,
                       0);
    }
}

/* The next backoff step: doubled, capped. */
static uint32_t node_backoff_next(node_link *l)
{
    uint32_t d = l->backoff_ms;
    l->backoff_ms = d * 2 < NODE_BACKOFF_MAX_MS ? d * 2 : NODE_BACKOFF_MAX_MS;
    return d;
}

static void node_on_router_close(mls_conn *conn, mls_status st, void *user)
{
    node_link *l = user;
    mls_node *n = l->n;
    bool was_registered = l->registered;

    l->conn = NULL;
    l->registered = false;
    uv_timer_stop(&l->heartbeat_timer);
    uv_timer_stop(&l->deadline_timer);
    if (n->stopping) {
        return;
    }
    if (was_registered) {
        mls_warn("node %s: lost the router at %s:%d (%s); reconnecting", n->node_id, l->host,
                 l->port, mls_status_name(st));
    }
    node_cancel_link(n, l); /* nobody will read their results */
    node_redial_later(l, st == MLS_ERR_PEER_MISMATCH ? NODE_REFUSED_RECONNECT_MS
                                                     : node_backoff_next(l));
}

static void node_on_register_deadline(uv_timer_t *t)
{
    node_link *l = t->data;

    if (l->conn != NULL && !l->registered) {
        mls_warn("node %s: the router at %s:%d did not accept the registration within %d ms; "
                 "reconnecting",
                 l->n->node_id, l->host, l->port, NODE_REGISTER_DEADLINE_MS);
        mls_conn_close(l->conn);
    }
}

static Mlaserve__Role node_role_to_wire(mls_node_role role)
{
    switch (role) {
    case MLS_NODE_ROLE_PREFILL:
        return MLASERVE__ROLE__ROLE_PREFILL;
    case MLS_NODE_ROLE_DECODE:
        return MLASERVE__ROLE__ROLE_DECODE;
    default:
        return MLASERVE__ROLE__ROLE_COLOCATED;
    }
}

static void node_on_router_connect(mls_conn *conn, mls_status st, void *user)
{
    node_link *l = user;
    mls_node *n = l->n;
    const eng_config *c = eng_model_config(n->model);
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Register r = MLASERVE__REGISTER__INIT;
    Mlaserve__KvLayout kl = MLASERVE__KV_LAYOUT__INIT;
    Mlaserve__Capacity cap = MLASERVE__CAPACITY__INIT;
    uint8_t layout_wire[KVL_WIRE_BYTES];

    if (st != MLS_OK) {
        l->conn = NULL;
        uv_timer_stop(&l->deadline_timer);
        if (st == MLS_ERR_PEER_MISMATCH) {
            mls_error("node %s: cluster key refused by the router at %s:%d; retrying in %d ms",
                      n->node_id, l->host, l->port, NODE_REFUSED_RECONNECT_MS);
        }
        node_redial_later(l, st == MLS_ERR_PEER_MISMATCH ? NODE_REFUSED_RECONNECT_MS
                                                         : node_backoff_next(l));
        return;
    }
    r.role = node_role_to_wire(n->cfg.role);
    r.node_id = n->node_id;
    r.protocol_version = MLS_PROTO_VERSION;
    r.model_fingerprint = eng_model_fingerprint(n->model);
    r.model_name = n->model_name;
    mls_proto_kv_layout_to_wire(&n->layout, (uint32_t)c->num_hidden_layers, layout_wire, &kl);
    r.kv_layout = &kl;
    cap.kv_pages_total = eng_kv_pool_pages_total(n->pool);
    cap.kv_pages_free = eng_kv_pool_pages_free(n->pool);
    cap.page_bytes = n->layout.page_bytes * (uint64_t)c->num_hidden_layers;
    cap.kv_dtype = mls_proto_kv_dtype_to_wire(n->layout.dtype);
    cap.max_batch = n->cfg.max_batch;
    cap.max_seq_len =
        (uint32_t)(c->max_position_embeddings < (int64_t)cap.kv_pages_total * KVL_PAGE_TOKENS
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

static void node_dial(node_link *l)
{
    static const mls_conn_callbacks cb = {
        .on_msg = node_on_msg,
        .on_close = node_on_router_close,
        .on_connect = node_on_router_connect,
    };
    mls_node *n = l->n;
    mls_conn_opts opts;

    if (n->stopping || l->conn != NULL) {
        return;
    }
    mls_conn_opts_default(&opts);
    opts.key = n->cfg.has_cluster_key ? &n->cfg.cluster_key : NULL;
    if (mls_conn_dial(&n->loop, l->host, l->port, &opts, &cb, l, &l->conn) != MLS_OK) {
        l->conn = NULL;
        node_redial_later(l, node_backoff_next(l));
        return;
    }
    /* the handshake and registration must finish in time (a router that
     * accepts and never answers would hold this link forever) */
    uv_timer_start(&l->deadline_timer, node_on_register_deadline, NODE_REGISTER_DEADLINE_MS, 0);
}

bool node_link_any_registered(const mls_node *n)
{
    for (int i = 0; i < n->n_links; i++) {
        if (n->links[i].registered) {
            return true;
        }
    }
    return false;
}

bool node_link_any_connected(const mls_node *n)
{
    for (int i = 0; i < n->n_links; i++) {
        if (n->links[i].conn != NULL) {
            return true;
        }
    }
    return false;
}

void node_link_start(mls_node *n)
{
    if (!n->cfg.has_cluster_key) {
        mls_warn("node %s: no cluster key (--cluster-key-file): connecting unauthenticated; only "
                 "a router run with --insecure-no-cluster-key accepts that",
                 n->node_id);
    }
    srand((unsigned)(mls_now_ns() ^ (uint64_t)getpid()));
    uv_timer_init(&n->loop, &n->tick_timer);
    n->tick_timer.data = n;
    uv_timer_start(&n->tick_timer, node_on_tick, NODE_TICK_MS, NODE_TICK_MS);
    n->n_links = n->cfg.n_routers;
    for (int i = 0; i < n->n_links; i++) {
        node_link *l = &n->links[i];
        l->n = n;
        l->index = i;
        l->host = n->cfg.router_hosts[i];
        l->port = n->cfg.router_ports[i];
        l->backoff_ms = NODE_BACKOFF_FIRST_MS;
        uv_timer_init(&n->loop, &l->reconnect_timer);
        uv_timer_init(&n->loop, &l->deadline_timer);
        uv_timer_init(&n->loop, &l->heartbeat_timer);
        l->reconnect_timer.data = l->deadline_timer.data = l->heartbeat_timer.data = l;
        node_dial(l);
    }
}

void node_link_stop(mls_node *n)
{
    for (int i = 0; i < n->n_links; i++) {
        if (n->links[i].conn != NULL) {
            mls_conn_close(n->links[i].conn);
        }
    }
}
