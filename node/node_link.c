/*
 * node_link.c - the node's link to the router: dial, register (role, model,
 * KV layout, capacity, transport address), load reports every heartbeat,
 * reconnect after a loss, and dispatch of the router's messages to the roles.
 * Loop thread only.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mls_log.h"
#include "mls_num.h"
#include "node_role.h"

#define NODE_RECONNECT_MS 500
#define NODE_REFUSED_RECONNECT_MS 5000 /* after the router refused the cluster key */

static void node_dial(mls_node *n);

static void node_report_fill(mls_node *n, Mlaserve__LoadReport *r)
{
    uint64_t now = mls_now_ns(),
             tokens = atomic_load(&n->tokens_generated) + atomic_load(&n->tokens_prefilled);
    uint32_t total = eng_kv_pool_pages_total(n->pool), free_pages = eng_kv_pool_pages_free(n->pool);

    if (n->last_report_ns != 0 && now > n->last_report_ns) {
        n->tokens_per_s =
            (double)(tokens - n->last_report_tokens) * 1e9 / (double)(now - n->last_report_ns);
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
        node_send(n, &out);
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
        n->heartbeat_ms = env->register_ack->heartbeat_interval_ms
                              ? env->register_ack->heartbeat_interval_ms
                              : 1000;
        uv_timer_start(&n->heartbeat_timer, node_on_heartbeat, 0, n->heartbeat_ms);
        mls_info("node %s: registered with the router", n->node_id);
        return;
    case MLASERVE__ENVELOPE__MSG_CANCEL: {
        node_job *job = node_job_find(n, env->cancel->request_id);
        if (job != NULL) {
            node_job_cancel(n, job);
        }
        return;
    }
    case MLASERVE__ENVELOPE__MSG_ERROR:
        if (!n->registered && env->error->request_id == 0) {
            mls_error("node %s: the router refused the connection: %s", n->node_id,
                      env->error->message);
            return;
        }
        mls_warn("node: router reports for request %llu: %s %s",
                 (unsigned long long)env->error->request_id, env->error->status_name,
                 env->error->message);
        return;
    default:
        break;
    }
    for (int i = 0; i < 2; i++) {
        if (n->roles[i] != NULL && n->roles[i]->on_msg != NULL && n->roles[i]->on_msg(n, env)) {
            return;
        }
    }
    node_refuse(n, env);
}

void node_cancel_all(mls_node *n)
{
    /* the router is gone: nobody will read our results; free everything */
    for (node_job *j = n->jobs, *next; j != NULL; j = next) {
        next = j->next_reg;
        node_job_cancel(n, j);
    }
}

static void node_on_reconnect(uv_timer_t *t)
{
    node_dial(t->data);
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
    uv_timer_start(&n->reconnect_timer, node_on_reconnect,
                   st == MLS_ERR_PEER_MISMATCH ? NODE_REFUSED_RECONNECT_MS : NODE_RECONNECT_MS, 0);
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
    mls_node *n = user;
    const eng_config *c = eng_model_config(n->model);
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Register r = MLASERVE__REGISTER__INIT;
    Mlaserve__KvLayout kl = MLASERVE__KV_LAYOUT__INIT;
    Mlaserve__Capacity cap = MLASERVE__CAPACITY__INIT;
    uint8_t layout_wire[KVL_WIRE_BYTES];

    if (st != MLS_OK) {
        n->router = NULL;
        if (st == MLS_ERR_PEER_MISMATCH) {
            mls_error("node %s: cluster key refused by the router at %s:%d; retrying in %d ms",
                      n->node_id, n->cfg.router_host, n->cfg.router_port,
                      NODE_REFUSED_RECONNECT_MS);
        }
        if (!n->stopping) {
            uv_timer_start(&n->reconnect_timer, node_on_reconnect,
                           st == MLS_ERR_PEER_MISMATCH ? NODE_REFUSED_RECONNECT_MS
                                                       : NODE_RECONNECT_MS,
                           0);
        }
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

static void node_dial(mls_node *n)
{
    static const mls_conn_callbacks cb = {
        .on_msg = node_on_msg,
        .on_close = node_on_router_close,
        .on_connect = node_on_router_connect,
    };
    mls_conn_opts opts;

    if (n->stopping || n->router != NULL) {
        return;
    }
    mls_conn_opts_default(&opts);
    opts.key = n->cfg.has_cluster_key ? &n->cfg.cluster_key : NULL;
    if (mls_conn_dial(&n->loop, n->cfg.router_host, n->cfg.router_port, &opts, &cb, n, &n->router) !=
        MLS_OK) {
        n->router = NULL;
        uv_timer_start(&n->reconnect_timer, node_on_reconnect, NODE_RECONNECT_MS, 0);
    }
}

void node_link_start(mls_node *n)
{
    if (!n->cfg.has_cluster_key) {
        mls_warn("node %s: no cluster key (--cluster-key-file): connecting unauthenticated; only "
                 "a router run with --insecure-no-cluster-key accepts that",
                 n->node_id);
    }
    uv_timer_init(&n->loop, &n->reconnect_timer);
    n->reconnect_timer.data = n;
    uv_timer_init(&n->loop, &n->heartbeat_timer);
    n->heartbeat_timer.data = n;
    node_dial(n);
}

void node_link_stop(mls_node *n)
{
    if (n->router != NULL) {
        mls_conn_close(n->router);
    }
}
