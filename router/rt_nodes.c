/*
 * rt_nodes.c - the router's node registry: nodes dial in and register, report
 * load every heartbeat, and are declared dead when their connection drops or
 * three reports are missed. Scheduling picks from the live ones:
 *   decode    most free KV pages (after the router's own leases), then the
 *             smallest running batch;
 *   prefill   longest remembered prefix (64-token block hashes) among the
 *             least-loaded, then the shortest queue.
 * What nodes say about requests goes up to the request layer through the
 * rt_node_events it registered; this file knows nothing of requests.
 *
 * Before trust: a connection must prove the cluster key (mls_conn does the
 * handshake, with 4 KiB frames until it is done) and register within
 * RT_REGISTER_DEADLINE_MS, else it is closed; at most max_node_conns node
 * connections are open at once (more are closed as they come); a node id
 * that is registered and alive cannot register a second time.
 */
#include <stdlib.h>
#include <string.h>

#include "mls_log.h"
#include "mls_num.h"
#include "rt_nodes.h"

static void rt_node_on_msg(mls_conn *conn, Mlaserve__Envelope *env, void *user);
static void rt_node_on_close(mls_conn *conn, mls_status st, void *user);

bool rt_node_alive(const rt_node *node)
{
    return node != NULL && node->conn != NULL && node->registered && !node->draining;
}

void rt_node_send(rt_node *node, const Mlaserve__Envelope *env)
{
    if (node != NULL && node->conn != NULL) {
        mls_conn_send(node->conn, env);
    }
}

static void rt_node_free(rt_router *rt, rt_node *node)
{
    for (rt_node **pp = &rt->nodes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == node) {
            *pp = node->next;
            break;
        }
    }
    free(node->affinity);
    free(node);
}

/* The node is gone: its requests move elsewhere; the record stays while any
 * request still points at it, and is dropped at the next tick otherwise. */
static void rt_node_kill(rt_router *rt, rt_node *node, const char *why)
{
    bool was_registered = node->registered;

    if (node->conn != NULL) {
        mls_conn *c = node->conn;
        node->conn = NULL;
        rt->n_node_conns--;
        mls_conn_set_user(c, NULL);
        mls_conn_close(c);
    }
    node->registered = false;
    if (was_registered) {
        mls_warn("router: node %s (%s) is dead: %s", node->node_id,
                 node->role == MLASERVE__ROLE__ROLE_PREFILL  ? "prefill"
                 : node->role == MLASERVE__ROLE__ROLE_DECODE ? "decode"
                                                             : "colocated",
                 why);
        rt->node_events->on_node_dead(rt, node);
    }
}

static void rt_node_refuse(rt_router *rt, rt_node *node, mls_status st, const char *msg)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__RegisterAck ack = MLASERVE__REGISTER_ACK__INIT;

    mls_warn("router: refusing node %s: %s", node->node_id[0] ? node->node_id : "?", msg);
    ack.accepted = false;
    ack.protocol_version = MLS_PROTO_VERSION;
    ack.status = (int32_t)st;
    ack.message = (char *)msg;
    env.msg_case = MLASERVE__ENVELOPE__MSG_REGISTER_ACK;
    env.register_ack = &ack;
    rt_node_send(node, &env);
}

static void rt_on_register(rt_router *rt, rt_node *node, const Mlaserve__Register *m)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__RegisterAck ack = MLASERVE__REGISTER_ACK__INIT;
    uint32_t n_layers = 0;
    mls_err err = {{0}};

    if (node->registered) {
        rt_node_refuse(rt, node, MLS_ERR_INVALID_ARG, "already registered on this connection");
        return;
    }
    snprintf(node->node_id, sizeof(node->node_id), "%s", m->node_id ? m->node_id : "");
    for (rt_node *o = rt->nodes; o != NULL; o = o->next) {
        if (o != node && o->registered && o->conn != NULL &&
            strcmp(o->node_id, node->node_id) == 0) {
            snprintf(err.msg, sizeof(err.msg),
                     "node id '%s' is already registered (from %s): node ids must be unique",
                     node->node_id, mls_conn_peer(o->conn));
            rt_node_refuse(rt, node, MLS_ERR_INVALID_ARG, err.msg);
            return;
        }
    }
    if (m->protocol_version != MLS_PROTO_VERSION) {
        snprintf(err.msg, sizeof(err.msg), "protocol version %u, the router speaks %u",
                 m->protocol_version, MLS_PROTO_VERSION);
        rt_node_refuse(rt, node, MLS_ERR_PEER_MISMATCH, err.msg);
        return;
    }
    if (m->role != MLASERVE__ROLE__ROLE_PREFILL && m->role != MLASERVE__ROLE__ROLE_DECODE &&
        m->role != MLASERVE__ROLE__ROLE_COLOCATED) {
        rt_node_refuse(rt, node, MLS_ERR_INVALID_ARG, "unknown role");
        return;
    }
    if (m->kv_layout == NULL || mls_proto_kv_layout_from_wire(m->kv_layout, &node->layout, &n_layers, &err) != MLS_OK) {
        rt_node_refuse(rt, node, MLS_ERR_INVALID_ARG, err.msg[0] ? err.msg : "missing kv layout");
        return;
    }
    /* every node must serve the same weights and KV layout as the first one */
    for (rt_node *o = rt->nodes; o != NULL; o = o->next) {
        const char *why = NULL;
        if (o == node || !o->registered) {
            continue;
        }
        if (o->fingerprint != m->model_fingerprint) {
            why = "model fingerprint";
        } else if (kvl_layout_check_peer(&o->layout, &node->layout, &why) == MLS_OK &&
                   o->n_layers != n_layers) {
            why = "layer count";
        }
        if (why != NULL) {
            snprintf(err.msg, sizeof(err.msg), "%s differs from node %s", why, o->node_id);
            rt_node_refuse(rt, node, MLS_ERR_PEER_MISMATCH, err.msg);
            return;
        }
        break;
    }
    node->role = m->role;
    node->fingerprint = m->model_fingerprint;
    node->n_layers = n_layers;
    snprintf(node->model_name, sizeof(node->model_name), "%s", m->model_name ? m->model_name : "");
    snprintf(node->host, sizeof(node->host), "%s", m->host ? m->host : "");
    node->metrics_port = m->metrics_port;
    if (m->capacity != NULL) {
        node->pages_total = m->capacity->kv_pages_total;
        node->pages_free = m->capacity->kv_pages_free;
        node->max_batch = m->capacity->max_batch;
        node->max_seq_len = m->capacity->max_seq_len;
    }
    node->registered = true;
    node->last_seen_ns = mls_now_ns();
    if (rt->served_model[0] == '\0') {
        snprintf(rt->served_model, sizeof(rt->served_model), "%s",
                 rt->model_name ? rt->model_name : node->model_name);
    }
    ack.accepted = true;
    ack.node_index = node->index;
    ack.protocol_version = MLS_PROTO_VERSION;
    ack.heartbeat_interval_ms = RT_HEARTBEAT_MS;
    ack.dead_after_ms = RT_DEAD_AFTER_MS;
    env.msg_case = MLASERVE__ENVELOPE__MSG_REGISTER_ACK;
    env.register_ack = &ack;
    rt_node_send(node, &env);
    mls_info("router: node %s registered (role %d, %u pages, %s)", node->node_id, node->role,
             node->pages_total, mls_conn_peer(node->conn));
    rt_nodes_update_gauges(rt);
    rt->node_events->on_capacity(rt);
}

static void rt_on_load_report(rt_router *rt, rt_node *node, const Mlaserve__LoadReport *m)
{
    node->last_seen_ns = mls_now_ns();
    node->running = m->running;
    node->queue_depth = m->queue_depth;
    node->pages_free = m->kv_pages_free;
    rt_nodes_update_gauges(rt);
    rt->node_events->on_capacity(rt);
}

static void rt_node_on_msg(mls_conn *conn, Mlaserve__Envelope *env, void *user)
{
    rt_node *node = user;
    rt_router *rt;

    if (node == NULL) {
        return;
    }
    rt = node->rt;
    if (!node->registered && env->msg_case != MLASERVE__ENVELOPE__MSG_REGISTER_NODE) {
        rt_node_refuse(rt, node, MLS_ERR_INVALID_ARG, "register first");
        return;
    }
    switch (env->msg_case) {
    case MLASERVE__ENVELOPE__MSG_REGISTER_NODE:
        rt_on_register(rt, node, env->register_node);
        break;
    case MLASERVE__ENVELOPE__MSG_LOAD_REPORT:
        rt_on_load_report(rt, node, env->load_report);
        break;
    case MLASERVE__ENVELOPE__MSG_HEARTBEAT:
        node->last_seen_ns = mls_now_ns();
        break;
    case MLASERVE__ENVELOPE__MSG_RESERVED:
    case MLASERVE__ENVELOPE__MSG_FIRST_TOKEN:
    case MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK:
    case MLASERVE__ENVELOPE__MSG_FINISH:
    case MLASERVE__ENVELOPE__MSG_ERROR:
        rt->node_events->on_request_msg(rt, node, env);
        break;
    case MLASERVE__ENVELOPE__MSG_DRAIN:
        mls_info("router: node %s is draining", node->node_id);
        node->draining = true;
        break;
    default: {
        Mlaserve__Envelope e = MLASERVE__ENVELOPE__INIT;
        Mlaserve__Error m = MLASERVE__ERROR__INIT;
        mls_proto_error_init(&e, &m, 0, MLS_ERR_UNSUPPORTED, "unexpected message for the router");
        rt_node_send(node, &e);
        break;
    }
    }
}

static void rt_node_on_close(mls_conn *conn, mls_status st, void *user)
{
    rt_node *node = user;

    if (node == NULL) {
        return;
    }
    node->conn = NULL;
    node->rt->n_node_conns--;
    rt_node_kill(node->rt, node, st == MLS_OK ? "connection closed" : "connection lost");
}

static void rt_on_node_connection(uv_stream_t *server, int status)
{
    static const mls_conn_callbacks cb = {
        .on_msg = rt_node_on_msg,
        .on_close = rt_node_on_close,
    };
    rt_router *rt = server->data;
    mls_conn_opts opts;
    rt_node *node;

    if (status < 0) {
        return;
    }
    mls_conn_opts_default(&opts);
    opts.key = rt->cluster_key;
    if (rt->n_node_conns >= rt->max_node_conns) {
        mls_conn *c = NULL;
        uint64_t now = mls_now_ns();
        if (mls_conn_accept(server, &opts, &cb, NULL, &c) == MLS_OK) {
            if (now - rt->conn_cap_logged_ns > 1000000000ull) { /* one line a second at most */
                rt->conn_cap_logged_ns = now;
                mls_warn("router: closing a node connection from %s: %u node connections are "
                         "open (--max-node-conns)",
                         mls_conn_peer(c), rt->n_node_conns);
            }
            mls_conn_close(c);
        }
        return;
    }
    node = calloc(1, sizeof(*node));
    if (node == NULL || (node->affinity = calloc(RT_AFFINITY_BLOCKS, sizeof(uint64_t))) == NULL) {
        free(node);
        return;
    }
    node->rt = rt;
    node->index = ++rt->next_node_index;
    node->accepted_ns = mls_now_ns();
    if (mls_conn_accept(server, &opts, &cb, node, &node->conn) != MLS_OK) {
        free(node->affinity);
        free(node);
        return;
    }
    rt->n_node_conns++;
    node->next = rt->nodes;
    rt->nodes = node;
}

void rt_nodes_set_events(rt_router *rt, const rt_node_events *events)
{
    rt->node_events = events;
}

mls_status rt_nodes_listen(rt_router *rt, mls_err *err)
{
    int port;
    mls_status st = mls_conn_listen(rt->loop, &rt->node_listener, rt->host, rt->node_port,
                                    rt_on_node_connection, &port, err);
    if (st == MLS_OK) {
        rt->node_listener.data = rt;
        rt->node_port = port;
    }
    return st;
}

void rt_nodes_tick(rt_router *rt)
{
    uint64_t now = mls_now_ns();
    rt_node *node = rt->nodes, *next;

    for (; node != NULL; node = next) {
        next = node->next;
        if (node->registered && now - node->last_seen_ns > (uint64_t)RT_DEAD_AFTER_MS * 1000000ull) {
            rt_node_kill(rt, node, "missed three load reports");
        }
        if (!node->registered && node->conn != NULL &&
            now - node->accepted_ns > (uint64_t)RT_REGISTER_DEADLINE_MS * 1000000ull) {
            mls_warn("router: closing the node connection from %s: no %s within %d ms",
                     mls_conn_peer(node->conn),
                     mls_conn_authenticated(node->conn) ? "registration" : "authentication",
                     RT_REGISTER_DEADLINE_MS);
            rt_node_kill(rt, node, "registration deadline");
        }
        if (node->conn == NULL && node->assigned == 0) {
            rt_node_free(rt, node);
        }
    }
    rt_nodes_update_gauges(rt);
}

void rt_nodes_close_all(rt_router *rt)
{
    while (rt->nodes != NULL) {
        rt_node *node = rt->nodes;
        if (node->conn != NULL) {
            mls_conn_set_user(node->conn, NULL);
            mls_conn_close(node->conn);
        }
        rt_node_free(rt, node);
    }
}

uint32_t rt_context_limit(rt_router *rt)
{
    uint32_t decode = 0, prefill = 0;

    for (rt_node *n = rt->nodes; n != NULL; n = n->next) {
        uint32_t l = n->max_seq_len ? n->max_seq_len : n->pages_total * KVL_PAGE_TOKENS;
        if (!rt_node_alive(n)) {
            continue;
        }
        if (n->role != MLASERVE__ROLE__ROLE_PREFILL) { /* decode or colocated: the whole sequence */
            decode = l > decode ? l : decode;
        }
        if (n->role != MLASERVE__ROLE__ROLE_DECODE) { /* prefill or colocated: the prompt */
            prefill = l > prefill ? l : prefill;
        }
    }
    /* The prompt must fit a prefill node too: the context promised is what
     * both hold, so an over-long prompt is a 400 up front, never retried. With
     * no prefill node yet the decode side decides (the capacity wait applies). */
    if (prefill > 0 && prefill < decode) {
        decode = prefill;
    }
    return rt->max_model_len > 0 && decode > rt->max_model_len ? rt->max_model_len : decode;
}

static rt_node *rt_pick_kv_node(rt_router *rt, Mlaserve__Role role, uint32_t n_pages,
                                const rt_node *avoid)
{
    rt_node *best = NULL;

    for (rt_node *n = rt->nodes; n != NULL; n = n->next) {
        if (!rt_node_alive(n) || n->role != role || n == avoid || n->pages_free < n_pages) {
            continue;
        }
        if (best == NULL || n->pages_free > best->pages_free ||
            (n->pages_free == best->pages_free && n->running + n->assigned < best->running + best->assigned)) {
            best = n;
        }
    }
    if (best == NULL && avoid != NULL) {
        return rt_pick_kv_node(rt, role, n_pages, NULL); /* the only candidate is the one to avoid */
    }
    return best;
}

rt_node *rt_pick_decode(rt_router *rt, uint32_t n_pages, const rt_node *avoid)
{
    return rt_pick_kv_node(rt, MLASERVE__ROLE__ROLE_DECODE, n_pages, avoid);
}

rt_node *rt_pick_colocated(rt_router *rt, uint32_t n_pages, const rt_node *avoid)
{
    return rt_pick_kv_node(rt, MLASERVE__ROLE__ROLE_COLOCATED, n_pages, avoid);
}

/* 64-token block hashes of the prompt, chained so a block's hash names its prefix. */
static uint32_t rt_prefix_hits(const rt_node *node, const int32_t *prompt, int32_t n_prompt)
{
    uint64_t h = 1469598103934665603ull;
    uint32_t hits = 0;

    for (int32_t b = 0; (b + 1) * (int32_t)KVL_PAGE_TOKENS <= n_prompt; b++) {
        bool found = false;
        for (int32_t i = 0; i < (int32_t)KVL_PAGE_TOKENS; i++) {
            h = (h ^ (uint32_t)prompt[b * KVL_PAGE_TOKENS + i]) * 1099511628211ull;
        }
        for (uint32_t k = 0; k < RT_AFFINITY_BLOCKS && !found; k++) {
            found = node->affinity[k] == h;
        }
        if (!found) {
            break;
        }
        hits++;
    }
    return hits;
}

static void rt_prefix_remember(rt_node *node, const int32_t *prompt, int32_t n_prompt)
{
    uint64_t h = 1469598103934665603ull;

    for (int32_t b = 0; (b + 1) * (int32_t)KVL_PAGE_TOKENS <= n_prompt; b++) {
        for (int32_t i = 0; i < (int32_t)KVL_PAGE_TOKENS; i++) {
            h = (h ^ (uint32_t)prompt[b * KVL_PAGE_TOKENS + i]) * 1099511628211ull;
        }
        node->affinity[node->affinity_next++ % RT_AFFINITY_BLOCKS] = h;
    }
}

rt_node *rt_pick_prefill(rt_router *rt, const int32_t *prompt, int32_t n_prompt,
                         const rt_node *avoid)
{
    rt_node *best = NULL;
    uint32_t best_load = 0, best_hits = 0;

    for (rt_node *n = rt->nodes; n != NULL; n = n->next) {
        uint32_t load, hits;
        if (!rt_node_alive(n) || n->role != MLASERVE__ROLE__ROLE_PREFILL || n == avoid) {
            continue;
        }
        load = n->queue_depth > n->assigned ? n->queue_depth : n->assigned;
        hits = rt_prefix_hits(n, prompt, n_prompt);
        /* affinity wins only among nodes within one queued request of the least loaded */
        if (best == NULL || load + 1 < best_load ||
            (load <= best_load + 1 && hits > best_hits) ||
            (hits == best_hits && load < best_load)) {
            best = n;
            best_load = load;
            best_hits = hits;
        }
    }
    if (best == NULL && avoid != NULL) {
        return rt_pick_prefill(rt, prompt, n_prompt, NULL);
    }
    if (best != NULL) {
        rt_prefix_remember(best, prompt, n_prompt);
    }
    return best;
}

void rt_nodes_update_gauges(rt_router *rt)
{
    double used = 0, free_pages = 0, total = 0, n_p = 0, n_d = 0;

    for (rt_node *n = rt->nodes; n != NULL; n = n->next) {
        if (!rt_node_alive(n)) {
            continue;
        }
        if (n->role == MLASERVE__ROLE__ROLE_PREFILL) {
            n_p++;
            continue;
        }
        n_d++;
        total += n->pages_total;
        free_pages += n->pages_free;
        used += n->pages_total - (n->pages_free < n->pages_total ? n->pages_free : n->pages_total);
    }
    mls_prom_set(rt->m_pages_used, used);
    mls_prom_set(rt->m_pages_free, free_pages);
    mls_prom_set(rt->m_kv_usage, total > 0 ? used / total : 0);
    mls_prom_set(rt->m_nodes_prefill, n_p);
    mls_prom_set(rt->m_nodes_decode, n_d);
}
