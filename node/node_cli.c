/*
 * node_cli.c - the command line every node daemon shares (mlaserve-prefill,
 * mlaserve-decode): flags into an mls_node_config, then run.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node.h"

static void node_usage(FILE *out, mls_node_role role)
{
    const char *name = mls_node_role_name(role);

    fprintf(out,
            "usage: mlaserve-%s --model DIR [options]\n"
            "\n"
            "A %s node of an mlaserve cluster: loads the model, dials the router and\n"
            "serves what it is sent until SIGINT/SIGTERM.\n"
            "\n"
            "  --model DIR          checkpoint directory (config.json + safetensors)\n"
            "  --model-name NAME    served model id (default: the directory's name)\n"
            "  --router HOST:PORT   a router's node port (default 127.0.0.1:7100); repeat it\n"
            "                       or give a comma-separated list to serve several routers\n"
            "                       (the node registers with each it reaches and reconnects\n"
            "                       with backoff)\n"
            "  --role R             prefill | decode | colocated (default %s)\n"
            "  --node-id ID         name in the router's registry (default role-host-pid)\n"
            "  --listen HOST        address for the KV transport and /metrics (default 127.0.0.1)\n"
            "  --metrics-port P     /metrics and /health port (default: any free port)\n"
            "  --device D           cpu | cuda: where the model runs (default cpu)\n"
            "  --kv-dtype D         f32 | bf16 | fp8 latent KV (default bf16)\n"
            "  --kv-pages N         KV pool pages (64 tokens each; default 512)\n"
            "  --max-batch N        sequences decoded together at most (default 64)\n"
            "  --threads N          compute threads (default: all cores)\n"
            "  --prefill-chunk N    prefill chunk in tokens (default 256)\n"
            "  --kvx-path P         KV transfer path: auto | rma | am (default auto)\n"
            "  --cluster-key-file F the router's cluster key (also MLASERVE_CLUSTER_KEY_FILE;\n"
            "                       mode 0600). Without one the node connects unauthenticated,\n"
            "                       which only a router run with --insecure-no-cluster-key takes\n",
            name, name, name);
}

/* One or more comma-separated HOST:PORT, added to the node's routers. */
static int node_parse_router(const char *arg, mls_node_config *cfg)
{
    const char *p = arg;

    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *colon = NULL;
        char *num_end;
        long port;
        int i = cfg->n_routers;

        for (size_t k = 0; k < len; k++) { /* the last ':' (IPv6 hosts hold more) */
            colon = p[k] == ':' ? p + k : colon;
        }
        if (i == MLS_NODE_MAX_ROUTERS) {
            fprintf(stderr, "--router: at most %d routers\n", MLS_NODE_MAX_ROUTERS);
            return 2;
        }
        if (colon == NULL || colon == p || (size_t)(colon - p) >= sizeof(cfg->router_hosts[0])) {
            fprintf(stderr, "--router wants HOST:PORT[,HOST:PORT...]\n");
            return 2;
        }
        port = strtol(colon + 1, &num_end, 10);
        if (num_end != p + len || port <= 0 || port > 65535) {
            fprintf(stderr, "--router: bad port in '%.*s'\n", (int)len, p);
            return 2;
        }
        memcpy(cfg->router_hosts[i], p, (size_t)(colon - p));
        cfg->router_hosts[i][colon - p] = '\0';
        cfg->router_ports[i] = (int)port;
        cfg->n_routers++;
        p += len;
        p += *p == ',';
    }
    return -1;
}

static int node_parse_role(const char *arg, mls_node_config *cfg)
{
    static const mls_node_role all[] = {MLS_NODE_ROLE_PREFILL, MLS_NODE_ROLE_DECODE,
                                        MLS_NODE_ROLE_COLOCATED};

    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(arg, mls_node_role_name(all[i])) == 0) {
            cfg->role = all[i];
            return -1;
        }
    }
    fprintf(stderr, "--role must be prefill, decode or colocated\n");
    return 2;
}

int mls_node_parse_args(int argc, char **argv, mls_node_role default_role, mls_node_config *cfg)
{
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"model-name", required_argument, NULL, 'N'},
                                         {"router", required_argument, NULL, 'r'},
                                         {"role", required_argument, NULL, 'R'},
                                         {"node-id", required_argument, NULL, 'i'},
                                         {"listen", required_argument, NULL, 'l'},
                                         {"metrics-port", required_argument, NULL, 'p'},
                                         {"kv-dtype", required_argument, NULL, 'k'},
                                         {"kv-pages", required_argument, NULL, 'P'},
                                         {"max-batch", required_argument, NULL, 'b'},
                                         {"threads", required_argument, NULL, 'j'},
                                         {"prefill-chunk", required_argument, NULL, 'c'},
                                         {"kvx-path", required_argument, NULL, 'x'},
                                         {"device", required_argument, NULL, 'd'},
                                         {"cluster-key-file", required_argument, NULL, 'K'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *key_file = getenv("MLASERVE_CLUSTER_KEY_FILE");
    mls_err err = {{0}};
    int c, rc = -1;

    mls_node_config_default(cfg);
    cfg->role = default_role;
    optind = 1;
    while (rc < 0 && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            cfg->model_dir = optarg;
            break;
        case 'N':
            cfg->model_name = optarg;
            break;
        case 'r':
            rc = node_parse_router(optarg, cfg);
            break;
        case 'R':
            rc = node_parse_role(optarg, cfg);
            break;
        case 'i':
            cfg->node_id = optarg;
            break;
        case 'l':
            cfg->listen_host = optarg;
            break;
        case 'p':
            cfg->metrics_port = atoi(optarg);
            break;
        case 'k':
            if (kvl_dtype_parse(optarg, &cfg->kv_dtype) != MLS_OK) {
                fprintf(stderr, "--kv-dtype must be f32, bf16 or fp8\n");
                rc = 2;
            }
            break;
        case 'P':
            cfg->kv_pages = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'b':
            cfg->max_batch = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'j':
            cfg->threads = atoi(optarg);
            break;
        case 'c':
            cfg->prefill_chunk = atoi(optarg);
            break;
        case 'x':
            cfg->kvx_path = optarg;
            break;
        case 'd':
            if (eng_device_parse(optarg, &cfg->device) != MLS_OK) {
                fprintf(stderr, "--device must be cpu or cuda\n");
                rc = 2;
            }
            break;
        case 'K':
            key_file = optarg;
            break;
        case 'h':
            node_usage(stdout, default_role);
            return 0;
        default:
            node_usage(stderr, default_role);
            return 2;
        }
    }
    if (rc >= 0) {
        return rc;
    }
    if (cfg->model_dir == NULL) {
        fprintf(stderr, "--model is required\n");
        node_usage(stderr, default_role);
        return 2;
    }
    if (cfg->kv_pages == 0 || cfg->max_batch == 0 || cfg->max_batch > 1024) {
        fprintf(stderr, "--kv-pages and --max-batch (1..1024) need sensible values\n");
        return 2;
    }
    if (cfg->n_routers == 0) {
        snprintf(cfg->router_hosts[0], sizeof(cfg->router_hosts[0]), "127.0.0.1");
        cfg->router_ports[0] = 7100;
        cfg->n_routers = 1;
    }
    if (key_file != NULL && key_file[0] != '\0') {
        if (mls_auth_key_load(key_file, &cfg->cluster_key, &err) != MLS_OK) {
            fprintf(stderr, "%s\n", err.msg);
            return 2;
        }
        cfg->has_cluster_key = true;
    }
    if (eng_device_check(cfg->device, 0, &err) != MLS_OK) { /* before a model is loaded */
        fprintf(stderr, "--device %s: %s\n", eng_device_name(cfg->device), err.msg);
        return 2;
    }
    return -1;
}

int mls_node_cli(int argc, char **argv, mls_node_role default_role, const mls_node_roles *roles)
{
    mls_node_config cfg;
    int rc = mls_node_parse_args(argc, argv, default_role, &cfg);

    return rc >= 0 ? rc : mls_node_main(&cfg, roles);
}
