/*
 * rt_nodes.h - the router's node registry (rt_nodes.c): nodes dial in and
 * register, report load, die; scheduling picks decode, prefill and colocated
 * nodes from the live ones. Knows nothing of requests: what a node says
 * about a request goes to the rt_node_events the request layer registered.
 */
#ifndef MLS_RT_NODES_H
#define MLS_RT_NODES_H

#include "rt_router.h"

#define RT_HEARTBEAT_MS     1000
#define RT_DEAD_AFTER_MS    3000
#define RT_AFFINITY_BLOCKS  4096   /* prefix block hashes remembered per prefill node */
#define RT_REGISTER_DEADLINE_MS 5000 /* a connection must authenticate and register in this */

struct rt_node {
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
    uint64_t accepted_ns;          /* when the connection came in */
    bool registered;
    bool draining;
    uint64_t *affinity;            /* (RT_AFFINITY_BLOCKS) ring of prefix block hashes */
    uint32_t affinity_next;
    struct rt_node *next;
};

/* What the registry tells the layer above it. Every callback is required. */
struct rt_node_events {
    /* A registered node sent a request message: Reserved, FirstToken,
     * TokenChunk, Finish or Error (env->msg_case says which). */
    void (*on_request_msg)(rt_router *rt, rt_node *node, const Mlaserve__Envelope *env);
    /* A registered node died (connection lost, reports missed): what ran on
     * it moves elsewhere. The record stays while node->assigned > 0. */
    void (*on_node_dead)(rt_router *rt, rt_node *node);
    /* Capacity may have appeared (a node registered or reported load). */
    void (*on_capacity)(rt_router *rt);
};

/* Registers the layer above (events stays alive while the router runs);
 * before rt_nodes_listen. */
void rt_nodes_set_events(rt_router *rt, const rt_node_events *events);
mls_status rt_nodes_listen(rt_router *rt, mls_err *err);
void rt_nodes_tick(rt_router *rt);
rt_node *rt_pick_decode(rt_router *rt, uint32_t n_pages, const rt_node *avoid);
/* The prefill node for a prompt (n_prompt) ids: load first, then the longest
 * remembered prefix; remembers the prompt's blocks on the one picked. */
rt_node *rt_pick_prefill(rt_router *rt, const int32_t *prompt, int32_t n_prompt,
                         const rt_node *avoid);
rt_node *rt_pick_colocated(rt_router *rt, uint32_t n_pages, const rt_node *avoid);
void rt_node_send(rt_node *node, const Mlaserve__Envelope *env);
bool rt_node_alive(const rt_node *node);
/* The context the router enforces and reports (/v1/models max_model_len): the
 * longest sequence that fits both a decode node (prompt + completion) and a
 * prefill node (the prompt), over the live nodes, capped by --max-model-len; 0
 * with no decode path. */
uint32_t rt_context_limit(rt_router *rt);
void rt_nodes_update_gauges(rt_router *rt);
void rt_nodes_close_all(rt_router *rt);

#endif
