/*
 * node.h - the mlaserve node runtime: what every node role shares.
 *
 * node/ owns the process around a role: the router link (dial, register,
 * load reports, reconnect), the job registry, the lifecycle (signals, drain),
 * /metrics and /health, and the compute thread with its two queues. It knows
 * no role: a role (prefill_node/, decode_node/) plugs in through the table in
 * node_role.h. node/ may include common/, http/, proto/, transport/ and
 * engine/; never router/, prefill_node/ or decode_node/.
 *
 * One process = one engine (model + KV pool + compute thread) + one libuv
 * control loop that owns every socket: the protobuf connection to the router,
 * the UCX KV transport (transport/kvx.h) and the HTTP /metrics + /health
 * endpoint. The loop never runs model math; the compute thread never touches
 * a socket: they exchange work through two queues (mutex + condvar one way,
 * mutex + uv_async the other).
 *
 * Roles and the request flow they implement (router's view in router/):
 *   decode     Reserve -> pages from the pool + a transport reservation ->
 *              Reserved(page ids, transport address). StartDecode (sampling,
 *              first token) + the KV verified by the transport -> the sequence
 *              joins the continuous batch -> TokenChunk per step -> Finish.
 *   prefill    PrefillRequest -> chunked prefill into a local pool while each
 *              layer's rows are shipped to the decode node's pages -> first
 *              token sampled -> FirstToken -> transport completion (checksums)
 *              -> local pages freed; a transfer failure -> Error.
 *   colocated  the two roles composed: PrefillRequest without a decode node
 *              prefills into the node's own pool, FirstToken, then the decode
 *              role continues it in its batch.
 * Cancel frees a request's pages and slots at once, in any state. Sampling is
 * seeded per completion index, so a request re-prefilled elsewhere after a
 * failure draws the same tokens.
 */
#ifndef MLS_NODE_H
#define MLS_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include "engine.h"
#include "mls_auth.h"
#include "mls_kv_layout.h"
#include "mls_status.h"

typedef enum {
    MLS_NODE_ROLE_PREFILL,
    MLS_NODE_ROLE_DECODE,
    MLS_NODE_ROLE_COLOCATED,
} mls_node_role;

#define MLS_NODE_MAX_ROUTERS 8 /* routers a node registers with at once */

typedef struct {
    mls_node_role role;
    const char *model_dir;
    const char *model_name;                      /* served name; NULL = basename of model_dir */
    int n_routers;                               /* routers to register with (at least 1) */
    char router_hosts[MLS_NODE_MAX_ROUTERS][64]; /* numeric addresses of their node ports */
    int router_ports[MLS_NODE_MAX_ROUTERS];
    const char *node_id;     /* NULL = role-host-pid */
    const char *listen_host; /* transport + metrics address (numeric) */
    int metrics_port;        /* 0 = pick one */
    kvl_dtype kv_dtype;
    uint32_t kv_pages;        /* pages per layer in the pool */
    int threads;              /* compute threads (0 = all cores) */
    uint32_t max_batch;       /* sequences decoded together at most */
    int32_t prefill_chunk;    /* tokens per prefill chunk */
    const char *kvx_path;     /* "auto" | "rma" | "am" */
    eng_device device;        /* where the model runs and the KV pool lives */
    bool has_cluster_key;     /* cluster_key was read (--cluster-key-file) */
    mls_auth_key cluster_key; /* proven to the router on every connection */
} mls_node_config;

typedef struct node_role_ops node_role_ops; /* node_role.h */

/* The role implementations a daemon is built with (either may be NULL when
 * the binary does not offer that role). Colocated uses both. */
typedef struct {
    const node_role_ops *prefill;
    const node_role_ops *decode;
} mls_node_roles;

void mls_node_config_default(mls_node_config *cfg);

/* "prefill" / "decode" / "colocated". */
const char *mls_node_role_name(mls_node_role role);

/* Run the node until SIGINT/SIGTERM. Returns the process exit status. */
int mls_node_main(const mls_node_config *cfg, const mls_node_roles *roles);

/*
 * Parse a daemon's command line into *cfg_p (defaults first). Returns -1 when
 * the node should run, else the exit status (0 after --help, 2 on a bad flag,
 * with the reason on stderr).
 */
int mls_node_parse_args(int argc, char **argv, mls_node_role default_role, mls_node_config *cfg_p);

/* The CLI shared by mlaserve-prefill / mlaserve-decode: parse, then run. */
int mls_node_cli(int argc, char **argv, mls_node_role default_role, const mls_node_roles *roles);

#endif
