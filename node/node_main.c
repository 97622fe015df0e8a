/*
 * node_main.c - a node's lifecycle: load the model, set up the transport and
 * the roles' resources, start the compute thread, the metrics endpoint and the
 * router link; on the first SIGTERM/SIGINT drain, on the second stop; tear
 * everything down in reverse. Loop thread.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mls_log.h"
#include "mls_num.h"
#include "node_role.h"

#define NODE_DRAIN_MS 30000 /* SIGTERM: finish running requests for this long */

/* ---- drain and signals ---------------------------------------------------------------- */

static void node_on_drain_tick(uv_timer_t *t)
{
    mls_node *n = t->data;

    if (n->jobs == NULL || mls_now_ns() > n->drain_deadline_ns || !node_link_any_connected(n)) {
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
    if (n->draining || n->jobs == NULL || !node_link_any_registered(n)) {
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

static void node_on_wake(uv_async_t *h)
{
    node_events_drain(h->data);
}

/* ---- set-up --------------------------------------------------------------------------- */

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
    if (c->is_v4) {
        mls_err_set(err,
                    "%s: DeepSeek-V4 models are not served by the nodes yet (they build an "
                    "MLA KV layout; mlaserve generate runs V4)",
                    n->cfg.model_dir);
        return MLS_ERR_UNSUPPORTED;
    }
    if ((st = kvl_layout_init(n->cfg.kv_dtype, (uint32_t)c->kv_lora_rank,
                              (uint32_t)c->qk_rope_head_dim, eng_model_fingerprint(n->model),
                              &n->layout)) != MLS_OK) {
        mls_err_set(err, "the model's latent shape does not fit the KV layout");
    }
    return st;
}

/*
 * The transport (prefill and decode nodes), the roles' resources, then the KV
 * pool - a role may have made it (a decode node's lives in transport memory);
 * otherwise a private one - and the compute context over it.
 */
static mls_status node_setup_engine(mls_node *n, mls_err *err)
{
    const eng_config *c = eng_model_config(n->model);
    uint32_t n_layers = (uint32_t)c->num_hidden_layers;
    mls_status st;

    if (n->cfg.role != MLS_NODE_ROLE_COLOCATED) {
        kvx_config xc = {0};
        xc.loop = &n->loop;
        xc.layout = n->layout;
        xc.n_layers = n_layers;
        xc.bind_ip = n->cfg.listen_host; /* UCX listens on that interface only */
        xc.path = strcmp(n->cfg.kvx_path, "rma") == 0  ? KVX_PATH_RMA
                  : strcmp(n->cfg.kvx_path, "am") == 0 ? KVX_PATH_AM
                                                       : KVX_PATH_AUTO;
        if ((st = kvx_ctx_create(&xc, &n->kvx, err)) != MLS_OK) {
            return st;
        }
    }
    for (int i = 0; i < 2; i++) {
        if (n->roles[i] != NULL && n->roles[i]->setup != NULL &&
            (st = n->roles[i]->setup(n, err)) != MLS_OK) {
            return st;
        }
    }
    if (n->pool == NULL) {
        eng_kv_pool_opts po = {.device = n->cfg.device};
        if ((st = eng_kv_pool_create_opts(&n->layout, (int32_t)n_layers, n->cfg.kv_pages, &po,
                                          &n->pool, err)) != MLS_OK) {
            return st;
        }
    }
    {
        eng_ctx_opts co = {.n_threads = n->cfg.threads, .device = n->cfg.device};
        if ((st = eng_ctx_create_opts(n->model, n->pool, &co, &n->ctx, err)) != MLS_OK) {
            return st;
        }
    }
    eng_ctx_set_chunk(n->ctx, n->cfg.prefill_chunk);
    return MLS_OK;
}

static mls_status node_setup_http(mls_node *n, mls_err *err)
{
    mls_http_config hc;
    mls_status st;

    if ((st = node_metrics_create(n, err)) != MLS_OK) {
        return st;
    }
    mls_http_config_default(&hc);
    hc.host = n->cfg.listen_host;
    hc.port = n->cfg.metrics_port;
    if ((st = mls_http_server_create(&n->loop, &hc, node_metrics_on_http, n, &n->http, err)) !=
        MLS_OK) {
        return st;
    }
    n->metrics_port = mls_http_server_port(n->http);
    return MLS_OK;
}

static void node_setup_handles(mls_node *n)
{
    uv_async_init(&n->loop, &n->wake, node_on_wake);
    n->wake.data = n;
    uv_timer_init(&n->loop, &n->drain_timer);
    n->drain_timer.data = n;
    uv_signal_init(&n->loop, &n->sigint);
    uv_signal_init(&n->loop, &n->sigterm);
    n->sigint.data = n->sigterm.data = n;
    uv_signal_start(&n->sigint, node_on_signal, SIGINT);
    uv_signal_start(&n->sigterm, node_on_signal, SIGTERM);
}

/* The roles a configured role runs, in calling order. */
static mls_status node_pick_roles(mls_node *n, const mls_node_roles *roles, mls_err *err)
{
    bool want_prefill = n->cfg.role != MLS_NODE_ROLE_DECODE;
    bool want_decode = n->cfg.role != MLS_NODE_ROLE_PREFILL;

    if ((want_prefill && roles->prefill == NULL) || (want_decode && roles->decode == NULL)) {
        mls_err_set(err, "this binary cannot run the %s role", mls_node_role_name(n->cfg.role));
        return MLS_ERR_UNSUPPORTED;
    }
    n->roles[0] = want_prefill ? roles->prefill : NULL;
    n->roles[1] = want_decode ? roles->decode : NULL;
    return MLS_OK;
}

static void node_name(mls_node *n)
{
    const mls_node_config *cfg = &n->cfg;
    const char *base = strrchr(cfg->model_dir, '/');

    if (cfg->node_id != NULL) {
        snprintf(n->node_id, sizeof(n->node_id), "%s", cfg->node_id);
    } else {
        snprintf(n->node_id, sizeof(n->node_id), "%s-%s-%d", mls_node_role_name(cfg->role),
                 cfg->listen_host, (int)getpid());
    }
    snprintf(n->model_name, sizeof(n->model_name), "%s",
             cfg->model_name ? cfg->model_name : (base && base[1] ? base + 1 : cfg->model_dir));
}

/* ---- run ------------------------------------------------------------------------------- */

static void node_teardown_loop(mls_node *n)
{
    n->stopping = true;
    node_compute_stop(n);
    node_events_drain(n); /* free what compute handed back */
    node_link_stop(n);
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
}

int mls_node_main(const mls_node_config *cfg, const mls_node_roles *roles)
{
    const char *who = mls_node_role_name(cfg->role);
    mls_node *n = calloc(1, sizeof(*n));
    mls_err err = {{0}};
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
    node_name(n);
    if (node_pick_roles(n, roles, &err) != MLS_OK || node_setup_model(n, &err) != MLS_OK ||
        node_setup_engine(n, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve-%s: %s\n", who, err.msg);
        goto out_free_engine;
    }
    if (node_setup_http(n, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve-%s: metrics endpoint: %s\n", who, err.msg);
        goto out_free_engine;
    }
    node_setup_handles(n);
    if (node_compute_start(n) != MLS_OK) {
        fprintf(stderr, "mlaserve-%s: cannot start the compute thread\n", who);
        goto out_close_loop;
    }
    fprintf(
        stderr, "mlaserve-%s %s: model %s, kv %s x %u pages, metrics http://%s:%d/metrics%s%s\n",
        who, n->node_id, n->model_name, kvl_dtype_name(n->layout.dtype), cfg->kv_pages,
        cfg->listen_host, n->metrics_port, n->xfer_addr[0] ? ", kv transport " : "", n->xfer_addr);
    node_link_start(n);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    rc = 0;

out_close_loop:
    node_teardown_loop(n);
out_free_engine:
    for (int i = 0; i < 2; i++) {
        if (n->roles[i] != NULL && n->roles[i]->teardown != NULL) {
            n->roles[i]->teardown(n);
        }
    }
    eng_ctx_destroy(n->ctx);
    eng_kv_pool_destroy(n->pool); /* a decode pool's memory is the transport's: freed below */
    if (n->kvx != NULL) {
        kvx_ctx_destroy(n->kvx);
    }
    eng_model_destroy(n->model);
    node_metrics_destroy(n);
    uv_loop_close(&n->loop);
    free(n);
    return rc;
}
