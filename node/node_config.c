/*
 * node_config.c - a node's configuration defaults and role names (used by
 * the CLI, the lifecycle and the metrics alike).
 */
#include <string.h>

#include "node.h"

void mls_node_config_default(mls_node_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->role = MLS_NODE_ROLE_DECODE;
    cfg->n_routers = 0; /* none given: 127.0.0.1:7100 (node_cli.c) */
    cfg->listen_host = "127.0.0.1";
    cfg->kv_dtype = KVL_DTYPE_BF16;
    cfg->kv_pages = 512;
    cfg->max_batch = 64;
    cfg->prefill_chunk = 256;
    cfg->kvx_path = "auto";
    cfg->device = ENG_DEVICE_CPU;
}

const char *mls_node_role_name(mls_node_role role)
{
    switch (role) {
    case MLS_NODE_ROLE_PREFILL:
        return "prefill";
    case MLS_NODE_ROLE_DECODE:
        return "decode";
    default:
        return "colocated";
    }
}
