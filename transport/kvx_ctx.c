/*
 * kvx_ctx.c - the KV transfer context: UCX context and worker, their place
 * in the libuv loop (worker event fd in a uv_poll with the arm/drain loop, a
 * uv_timer tick for leases, a uv_async for work handed over by compute
 * threads), the op queue, in-flight operation records and peer lifetime.
 * The sender and the receiver plug in through kvx_ctx_register_side and
 * kvx_ctx_register_handler; this file calls them only through that table.
 * Also the interface UCX may use (from the listen address) and the proof a
 * request's BEGIN carries (both sides compute it).
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "kvx_internal.h"
#include "mls_alloc.h"
#include "mls_log.h"
#include "mls_num.h"

const char *kvx_path_name(kvx_path path)
{
    switch (path) {
    case KVX_PATH_AUTO:
        return "auto";
    case KVX_PATH_RMA:
        return "rma";
    case KVX_PATH_AM:
        return "am";
    }
    return "unknown";
}

mls_status kvx_status_from_ucs(ucs_status_t st)
{
    switch (st) {
    case UCS_OK:
        return MLS_OK;
    case UCS_ERR_CANCELED:
        return MLS_ERR_CANCELED;
    case UCS_ERR_TIMED_OUT:
        return MLS_ERR_TIMED_OUT;
    case UCS_ERR_NO_MEMORY:
        return MLS_ERR_NO_MEMORY;
    case UCS_ERR_INVALID_PARAM:
        return MLS_ERR_INVALID_ARG;
    case UCS_ERR_UNSUPPORTED:
        return MLS_ERR_UNSUPPORTED;
    default:
        return MLS_ERR_PEER_DEAD; /* connection reset, unreachable, endpoint timeout... */
    }
}

mls_status kvx_layout_check_wire(const kvl_layout *ours, const uint8_t *wire, char *why,
                                 size_t len)
{
    kvl_layout theirs;
    const char *field = NULL;
    mls_err err = {{0}};

    if (kvl_layout_decode(wire, KVL_WIRE_BYTES, &theirs, &err) != MLS_OK) {
        snprintf(why, len, "%s", err.msg);
        return MLS_ERR_PEER_MISMATCH;
    }
    if (kvl_layout_check_peer(ours, &theirs, &field) == MLS_OK) {
        return MLS_OK;
    }
    snprintf(why, len,
             "KV layout field '%s' differs: here v%u %s R=%u D=%u page=%u row=%uB "
             "fp=%016llx, peer v%u %s R=%u D=%u page=%u row=%uB fp=%016llx",
             field, ours->version, kvl_dtype_name(ours->dtype), ours->kv_lora_rank, ours->rope_dim,
             ours->page_tokens, ours->row_bytes, (unsigned long long)ours->model_fingerprint,
             theirs.version, kvl_dtype_name(theirs.dtype), theirs.kv_lora_rank, theirs.rope_dim,
             theirs.page_tokens, theirs.row_bytes, (unsigned long long)theirs.model_fingerprint);
    return MLS_ERR_PEER_MISMATCH;
}

/* ---- in-flight operations ------------------------------------------------ */

void kvx_begin_mac(const uint8_t *token, const uint8_t *nonce, const kvx_msg_begin *m,
                   const void *ids, size_t ids_len, uint8_t *mac_p)
{
    static const char domain[] = "mlaserve kvx begin v3";
    uint8_t fields[8 + 4 * 3];
    memcpy(fields, &m->rid, 8);
    memcpy(fields + 8, &m->n_tokens, 4);
    memcpy(fields + 12, &m->n_pages, 4);
    memcpy(fields + 16, &m->n_layers, 4);
    crypto_generichash_state st;
    crypto_generichash_init(&st, token, KVX_TOKEN_BYTES, KVX_MAC_BYTES);
    crypto_generichash_update(&st, (const uint8_t *)domain, sizeof(domain));
    crypto_generichash_update(&st, nonce, KVX_NONCE_BYTES);
    crypto_generichash_update(&st, fields, sizeof(fields));
    crypto_generichash_update(&st, ids, ids_len);
    crypto_generichash_final(&st, mac_p, KVX_MAC_BYTES);
}

kvx_sop *kvx_sop_new(kvx_ctx *ctx, kvx_sop_kind kind)
{
    kvx_sop *sop = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(*sop));
    if (sop != NULL) {
        sop->ctx = ctx;
        sop->kind = kind;
    }
    return sop;
}

void kvx_sop_free(kvx_sop *sop)
{
    if (sop == NULL) {
        return;
    }
    mls_free(MLS_ALLOC_TAG_TRANSPORT, sop->blob, sop->blob_len);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, sop, sizeof(*sop));
}

/* The side an operation record belongs to; KVX_SIDE_COUNT: none (a control
 * message with no request or reservation behind it). */
static kvx_side kvx_sop_side(kvx_sop_kind kind)
{
    switch (kind) {
    case KVX_SOP_DATA:
    case KVX_SOP_FLUSH:
    case KVX_SOP_REQ_CTRL:
        return KVX_SIDE_SEND;
    case KVX_SOP_RECV:
        return KVX_SIDE_RECV;
    case KVX_SOP_CTRL:
        break;
    }
    return KVX_SIDE_COUNT;
}

void kvx_sop_complete(kvx_sop *sop, ucs_status_t status)
{
    kvx_side side = kvx_sop_side(sop->kind);
    if (side != KVX_SIDE_COUNT) {
        sop->ctx->side[side]->sop_done(sop, status);
    } else if (status != UCS_OK) {
        mls_debug("kvx: control message failed: %s", ucs_status_string(status));
    }
    kvx_sop_free(sop);
}

static void kvx_sop_send_cb(void *request, ucs_status_t status, void *user_data)
{
    kvx_sop_complete(user_data, status);
    ucp_request_free(request);
}

mls_status kvx_am_send(kvx_peer *peer, kvx_sop *sop, unsigned am_id, size_t hdr_len, unsigned flags)
{
    ucp_request_param_t param = {
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = kvx_sop_send_cb,
        .user_data = sop,
        .flags = flags | UCP_AM_SEND_FLAG_REPLY,
    };
    if (hdr_len > sizeof(sop->hdr)) {
        mls_error("kvx: AM header %zu bytes over %zu", hdr_len, sizeof(sop->hdr));
        kvx_sop_complete(sop, UCS_ERR_INVALID_PARAM);
        return MLS_ERR_INTERNAL;
    }
    ucs_status_ptr_t r =
        ucp_am_send_nbx(peer->ep, am_id, sop->hdr, hdr_len, sop->blob, sop->blob_len, &param);
    if (r == NULL) {
        kvx_sop_complete(sop, UCS_OK);
        return MLS_OK;
    }
    if (UCS_PTR_IS_ERR(r)) {
        ucs_status_t st = UCS_PTR_STATUS(r);
        kvx_sop_complete(sop, st);
        return kvx_status_from_ucs(st);
    }
    kvx_drain_soon(peer->ctx);
    return MLS_OK;
}

/* ---- peers --------------------------------------------------------------- */

static kvx_side kvx_peer_side(const kvx_peer *peer)
{
    return peer->is_client ? KVX_SIDE_SEND : KVX_SIDE_RECV;
}

void kvx_peer_unref(kvx_peer *peer)
{
    if (peer->refs > 0) {
        peer->refs--;
    }
}

/* Mark a peer failed (endpoint error, refusal). Its requests/reservations fail
 * now; the endpoint is closed and the peer freed from the drain loop. */
void kvx_peer_fail(kvx_peer *peer, mls_status st, const char *why)
{
    if (peer->state == KVX_PEER_FAILED) {
        return;
    }
    peer->state = KVX_PEER_FAILED;
    peer->fail_status = st;
    snprintf(peer->fail_why, sizeof(peer->fail_why), "%s", why);
    peer->ctx->side[kvx_peer_side(peer)]->peer_failed(peer);
    kvx_peer_unref(peer); /* the cache's reference */
    kvx_drain_soon(peer->ctx);
}

kvx_peer *kvx_peer_by_ep(kvx_ctx *ctx, ucp_ep_h ep)
{
    for (kvx_peer *p = ctx->peers; p != NULL; p = p->next) {
        if (p->ep == ep && p->state != KVX_PEER_FAILED) {
            return p;
        }
    }
    return NULL;
}

void kvx_ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    kvx_peer *peer = arg;
    char why[KVX_WHY_LEN];
    snprintf(why, sizeof(why), "endpoint %s %s failed: %s", peer->is_client ? "to" : "from",
             peer->addr, ucs_status_string(status));
    /* A peer going away with nothing in flight is a normal disconnect. */
    bool busy = peer->ctx->side[kvx_peer_side(peer)]->peer_busy(peer);
    if (busy && !peer->ctx->destroying) {
        mls_warn("kvx: %s", why);
    } else {
        mls_debug("kvx: %s", why);
    }
    kvx_peer_fail(peer, MLS_ERR_PEER_DEAD, why);
}

static void kvx_ep_close_cb(void *request, ucs_status_t status, void *user_data)
{
    kvx_peer *peer = user_data;
    peer->close_done = true;
    ucp_request_free(request);
}

static void kvx_peer_close(kvx_peer *peer, bool force)
{
    if (peer->closed) {
        return;
    }
    peer->closed = true;
    ucp_request_param_t param = {
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = kvx_ep_close_cb,
        .user_data = peer,
        .flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0,
    };
    ucs_status_ptr_t r = ucp_ep_close_nbx(peer->ep, &param);
    if (r == NULL || UCS_PTR_IS_ERR(r)) {
        peer->close_done = true;
    }
}

static void kvx_peer_free(kvx_peer *peer)
{
    for (uint32_t i = 0; i < peer->n_regions; i++) {
        if (peer->rkeys[i] != NULL) {
            ucp_rkey_destroy(peer->rkeys[i]);
        }
    }
    mls_free(MLS_ALLOC_TAG_TRANSPORT, peer->rkeys, sizeof(ucp_rkey_h) * peer->n_regions);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, peer->pools, sizeof(kvx_wire_pool) * peer->ctx->cfg.n_layers);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, peer, sizeof(*peer));
}

/* Close failed endpoints; free peers whose close finished and that nothing
 * references any more. */
static void kvx_peers_reap(kvx_ctx *ctx)
{
    kvx_peer **pp = &ctx->peers;
    while (*pp != NULL) {
        kvx_peer *peer = *pp;
        if (peer->state == KVX_PEER_FAILED && !peer->closed) {
            kvx_peer_close(peer, true);
        }
        if (peer->state == KVX_PEER_FAILED && peer->close_done && peer->refs == 0) {
            *pp = peer->next;
            kvx_peer_free(peer);
            continue;
        }
        pp = &peer->next;
    }
}

/* ---- the loop ------------------------------------------------------------ */

static void kvx_poll_cb(uv_poll_t *handle, int status, int events);

static void kvx_queue_drain(kvx_ctx *ctx)
{
    kvx_op *op = kvx_queue_take(ctx);
    while (op != NULL) {
        kvx_op *next = op->next;
        op->next = NULL;
        ctx->side[KVX_SIDE_SEND]->process_op(ctx, op); /* takes ownership of op */
        op = next;
    }
}

static bool kvx_queue_empty(kvx_ctx *ctx)
{
    pthread_mutex_lock(&ctx->q_lock);
    bool empty = ctx->q_head == NULL;
    pthread_mutex_unlock(&ctx->q_lock);
    return empty;
}

/* Run queued work and progress the worker until it can be armed. Bounded:
 * should the worker keep reporting events (seen once after a peer died in the
 * middle of a put over TCP), the event fd watch is paused and the timer tick
 * progresses the worker until it can be armed again - a slow poll instead of
 * a spinning loop. */
static void kvx_drain(kvx_ctx *ctx)
{
    if (ctx->in_drain) {
        return;
    }
    ctx->in_drain = true;
    bool armed = false;
    for (int round = 0; round < 256 && !armed; round++) {
        kvx_queue_drain(ctx);
        while (ucp_worker_progress(ctx->worker) != 0) {
        }
        kvx_peers_reap(ctx);
        if (!kvx_queue_empty(ctx)) {
            continue;
        }
        ucs_status_t st = ucp_worker_arm(ctx->worker);
        if (st == UCS_ERR_BUSY) {
            continue;
        }
        if (st != UCS_OK) {
            mls_error("kvx: ucp_worker_arm: %s", ucs_status_string(st));
        }
        armed = true;
    }
    if (!armed && !ctx->poll_paused && !ctx->destroying) {
        mls_debug("kvx: worker stays busy; polling it from the timer tick");
        uv_poll_stop(&ctx->poll);
        ctx->poll_paused = true;
    } else if (armed && ctx->poll_paused && !ctx->destroying) {
        uv_poll_start(&ctx->poll, UV_READABLE, kvx_poll_cb);
        ctx->poll_paused = false;
    }
    ctx->in_drain = false;
}

void kvx_drain_soon(kvx_ctx *ctx)
{
    if (!ctx->in_drain && !ctx->destroying) {
        uv_async_send(&ctx->async);
    }
}

static void kvx_poll_cb(uv_poll_t *handle, int status, int events)
{
    kvx_drain(handle->data);
}

static void kvx_async_cb(uv_async_t *handle)
{
    kvx_drain(handle->data);
}

static void kvx_timer_cb(uv_timer_t *handle)
{
    kvx_ctx *ctx = handle->data;
    uint64_t now = mls_now_ns();
    for (unsigned s = 0; s < KVX_SIDE_COUNT; s++) {
        if (ctx->side[s] != NULL) {
            ctx->side[s]->tick(ctx, now);
        }
    }
    kvx_drain(ctx);
}

kvx_op *kvx_queue_take(kvx_ctx *ctx)
{
    kvx_op *op;
    pthread_mutex_lock(&ctx->q_lock);
    op = ctx->q_head;
    ctx->q_head = ctx->q_tail = NULL;
    pthread_mutex_unlock(&ctx->q_lock);
    return op;
}

void kvx_queue_push(kvx_ctx *ctx, kvx_op *op)
{
    op->next = NULL;
    pthread_mutex_lock(&ctx->q_lock);
    if (ctx->q_tail != NULL) {
        ctx->q_tail->next = op;
    } else {
        ctx->q_head = op;
    }
    ctx->q_tail = op;
    pthread_mutex_unlock(&ctx->q_lock);
    uv_async_send(&ctx->async);
}

void kvx_ctx_register_side(kvx_ctx *ctx, kvx_side side, const kvx_side_ops *ops)
{
    assert(side < KVX_SIDE_COUNT && ctx->side[side] == NULL);
    assert(ops->sop_done && ops->peer_failed && ops->peer_busy && ops->tick && ops->destroy);
    ctx->side[side] = ops;
}

void kvx_ctx_register_handler(kvx_ctx *ctx, kvx_am_id id, kvx_am_handler_fn fn)
{
    assert(id >= KVX_AM_HELLO && id < KVX_AM_ID_END && ctx->am_handler[id - KVX_AM_HELLO] == NULL);
    ctx->am_handler[id - KVX_AM_HELLO] = fn;
}

static ucs_status_t kvx_am_cb(void *arg, const void *header, size_t header_length, void *data,
                              size_t length, const ucp_am_recv_param_t *param)
{
    struct kvx_am_arg *a = arg;
    kvx_am_handler_fn fn = a->ctx->am_handler[a->id - KVX_AM_HELLO];
    if (fn == NULL) {
        mls_error("kvx: message %u has no handler; dropped", a->id);
        return UCS_OK;
    }
    return fn(a->ctx, a->id, header, header_length, data, length, param);
}

static mls_status kvx_handlers_register(kvx_ctx *ctx, mls_err *err)
{
    for (unsigned i = 0; i < KVX_AM_ID_COUNT; i++) {
        ctx->am_arg[i].ctx = ctx;
        ctx->am_arg[i].id = KVX_AM_HELLO + i;
        ucp_am_handler_param_t p = {
            .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                          UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS,
            .id = KVX_AM_HELLO + i,
            .flags = UCP_AM_FLAG_WHOLE_MSG,
            .cb = kvx_am_cb,
            .arg = &ctx->am_arg[i],
        };
        ucs_status_t st = ucp_worker_set_am_recv_handler(ctx->worker, &p);
        if (st != UCS_OK) {
            mls_err_set(err, "kvx: ucp_worker_set_am_recv_handler(%u): %s", p.id,
                        ucs_status_string(st));
            return MLS_ERR_INTERNAL;
        }
    }
    return MLS_OK;
}

/* ---- create / destroy ---------------------------------------------------- */

static mls_status kvx_config_check(const kvx_config *cfg, mls_err *err)
{
    const kvl_layout *l = &cfg->layout;
    if (cfg->loop == NULL) {
        mls_err_set(err, "kvx: config.loop is NULL");
        return MLS_ERR_INVALID_ARG;
    }
    if (cfg->n_layers == 0 || cfg->n_layers > KVX_MAX_LAYERS) {
        mls_err_set(err, "kvx: config.n_layers %u not in 1..%u", cfg->n_layers, KVX_MAX_LAYERS);
        return MLS_ERR_INVALID_ARG;
    }
    if (l->row_bytes == 0 || l->page_tokens != KVL_PAGE_TOKENS ||
        l->page_bytes != (uint64_t)l->page_tokens * l->row_bytes) {
        mls_err_set(err,
                    "kvx: config.layout is not initialised (row_bytes %u, page_tokens %u, "
                    "page_bytes %llu)",
                    l->row_bytes, l->page_tokens, (unsigned long long)l->page_bytes);
        return MLS_ERR_INVALID_ARG;
    }
    if (cfg->path > KVX_PATH_AM) {
        mls_err_set(err, "kvx: config.path %d unknown", (int)cfg->path);
        return MLS_ERR_INVALID_ARG;
    }
    return MLS_OK;
}

/* The name of the interface holding IPv4 address ip ("lo" for 127.0.0.1),
 * in name_p (IF_NAMESIZE bytes). */
static mls_status kvx_ifname_of(const char *ip, char *name_p, mls_err *err)
{
    struct in_addr want;
    if (inet_pton(AF_INET, ip, &want) != 1) {
        mls_err_set(err, "kvx: bind address '%s' is not an IPv4 address", ip);
        return MLS_ERR_INVALID_ARG;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) {
        mls_err_set(err, "kvx: getifaddrs: %s", strerror(errno));
        return MLS_ERR_IO;
    }
    mls_status st = MLS_ERR_NOT_FOUND;
    for (struct ifaddrs *i = ifs; i != NULL; i = i->ifa_next) {
        if (i->ifa_addr != NULL && i->ifa_addr->sa_family == AF_INET &&
            ((const struct sockaddr_in *)i->ifa_addr)->sin_addr.s_addr == want.s_addr) {
            snprintf(name_p, IF_NAMESIZE, "%s", i->ifa_name);
            st = MLS_OK;
            break;
        }
    }
    freeifaddrs(ifs);
    if (st != MLS_OK) {
        mls_err_set(err, "kvx: no network interface has the address %s", ip);
    }
    return st;
}

/* UCX's network transports on the bind address's interface only, unless the
 * operator chose devices (UCX_NET_DEVICES) or every interface is wanted. */
static mls_status kvx_ucp_config_bind(const char *bind_ip, ucp_config_t *ucfg, mls_err *err)
{
    if (bind_ip == NULL || bind_ip[0] == '\0' || strcmp(bind_ip, "0.0.0.0") == 0) {
        return MLS_OK;
    }
    char ifname[IF_NAMESIZE];
    mls_status st = kvx_ifname_of(bind_ip, ifname, err);
    if (st != MLS_OK) {
        return st;
    }
    const char *op = getenv("UCX_NET_DEVICES");
    if (op != NULL) {
        mls_info("kvx: UCX_NET_DEVICES=%s set by the operator (the listen address %s is on %s)", op,
                 bind_ip, ifname);
        return MLS_OK;
    }
    ucs_status_t us = ucp_config_modify(ucfg, "NET_DEVICES", ifname);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx: ucp_config_modify(NET_DEVICES, %s): %s", ifname,
                    ucs_status_string(us));
        return MLS_ERR_IO;
    }
    mls_debug("kvx: UCX network devices: %s (the interface of %s)", ifname, bind_ip);
    return MLS_OK;
}

static void kvx_handle_close_cb(uv_handle_t *h)
{
    kvx_ctx *ctx = h->data;
    ctx->handles_open--;
}

static void kvx_ctx_free(kvx_ctx *ctx)
{
    pthread_mutex_destroy(&ctx->q_lock);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, ctx, sizeof(*ctx));
}

mls_status kvx_ctx_open(const kvx_config *cfg, kvx_ctx **ctx_p, mls_err *err)
{
    mls_status st = kvx_config_check(cfg, err);
    if (st != MLS_OK) {
        return st;
    }
    kvx_ctx *ctx = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(*ctx));
    if (ctx == NULL) {
        mls_err_set(err, "kvx: out of memory for the context");
        return MLS_ERR_NO_MEMORY;
    }
    ctx->cfg = *cfg;
    ctx->loop = cfg->loop;
    ctx->efd = -1;
    if (ctx->cfg.tick_ms == 0) {
        ctx->cfg.tick_ms = 10;
    }
    const char *force = getenv("MLS_KVX_PATH");
    if (force != NULL && strcmp(force, "rma") == 0) {
        ctx->cfg.path = KVX_PATH_RMA;
    } else if (force != NULL && strcmp(force, "am") == 0) {
        ctx->cfg.path = KVX_PATH_AM;
    }
    pthread_mutex_init(&ctx->q_lock, NULL);

    /* Shared memory keeps working with peer error handling only with this;
     * a dead peer whose link is shared memory is found by keepalive. */
    const char *tls = getenv("UCX_TLS");
    if (tls == NULL || strstr(tls, "posix") || strstr(tls, "sysv") || strstr(tls, "sm") ||
        strstr(tls, "all") || tls[0] == '^') {
        /* only where shared memory may be used: UCX warns about unused variables */
        setenv("UCX_MM_ERROR_HANDLING", "y", 0);
    }
    setenv("UCX_KEEPALIVE_INTERVAL", "250ms", 0);

    if (sodium_init() < 0) {
        mls_err_set(err, "kvx: sodium_init failed");
        st = MLS_ERR_INTERNAL;
        goto err_free_ctx;
    }
    ucp_config_t *ucfg = NULL;
    ucs_status_t us = ucp_config_read(NULL, NULL, &ucfg);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx: ucp_config_read: %s", ucs_status_string(us));
        st = MLS_ERR_IO;
        goto err_free_ctx;
    }
    if ((st = kvx_ucp_config_bind(cfg->bind_ip, ucfg, err)) != MLS_OK) {
        ucp_config_release(ucfg);
        goto err_free_ctx;
    }
    ctx->cfg.bind_ip = NULL; /* the caller's string: not kept */
    ucp_params_t params = {
        .field_mask =
            UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME,
        .features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
        .mt_workers_shared = 0,
        .name = "mlaserve-kvx",
    };
    us = ucp_init(&params, ucfg, &ctx->ucp);
    ucp_config_release(ucfg);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx: ucp_init: %s", ucs_status_string(us));
        st = MLS_ERR_IO;
        goto err_free_ctx;
    }
    ucp_context_attr_t cattr = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
    if (ucp_context_query(ctx->ucp, &cattr) == UCS_OK) {
        ctx->mem_types = cattr.memory_types;
    }

    ucp_worker_params_t wparams = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE, /* touched only on the loop thread */
    };
    us = ucp_worker_create(ctx->ucp, &wparams, &ctx->worker);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx: ucp_worker_create: %s", ucs_status_string(us));
        st = MLS_ERR_IO;
        goto err_cleanup_ucp;
    }
    us = ucp_worker_get_efd(ctx->worker, &ctx->efd);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx: ucp_worker_get_efd: %s", ucs_status_string(us));
        st = MLS_ERR_IO;
        goto err_destroy_worker;
    }
    st = kvx_handlers_register(ctx, err);
    if (st != MLS_OK) {
        goto err_destroy_worker;
    }

    int rc = uv_poll_init(ctx->loop, &ctx->poll, ctx->efd);
    if (rc != 0) {
        mls_err_set(err, "kvx: uv_poll_init(efd %d): %s", ctx->efd, uv_strerror(rc));
        st = MLS_ERR_IO;
        goto err_destroy_worker;
    }
    ctx->poll.data = ctx;
    ctx->handles_open++;
    uv_timer_init(ctx->loop, &ctx->timer);
    ctx->timer.data = ctx;
    ctx->handles_open++;
    uv_async_init(ctx->loop, &ctx->async, kvx_async_cb);
    ctx->async.data = ctx;
    ctx->handles_open++;
    uv_poll_start(&ctx->poll, UV_READABLE, kvx_poll_cb);
    uv_timer_start(&ctx->timer, kvx_timer_cb, ctx->cfg.tick_ms, ctx->cfg.tick_ms);
    kvx_drain(ctx); /* arm */
    *ctx_p = ctx;
    return MLS_OK;

err_destroy_worker:
    ucp_worker_destroy(ctx->worker);
err_cleanup_ucp:
    ucp_cleanup(ctx->ucp);
err_free_ctx:
    kvx_ctx_free(ctx);
    return st;
}

static void kvx_sides_destroy(kvx_ctx *ctx, bool force)
{
    for (unsigned s = 0; s < KVX_SIDE_COUNT; s++) {
        if (ctx->side[s] != NULL) {
            ctx->side[s]->destroy(ctx, force);
        }
    }
}

void kvx_ctx_destroy(kvx_ctx *ctx)
{
    if (ctx == NULL) {
        return;
    }
    kvx_drain(ctx);
    ctx->destroying = true;
    kvx_sides_destroy(ctx, false); /* fail open requests and reservations, drop queued ops */
    if (ctx->listener != NULL) {
        ucp_listener_destroy(ctx->listener);
        ctx->listener = NULL;
    }
    /* Close every endpoint: flush the healthy ones (bounded), force the rest. */
    for (kvx_peer *p = ctx->peers; p != NULL; p = p->next) {
        kvx_peer_close(p, p->state != KVX_PEER_READY);
    }
    uint64_t deadline = mls_now_ns() + 1000000000ull;
    for (;;) {
        ucp_worker_progress(ctx->worker);
        bool all = true;
        for (kvx_peer *p = ctx->peers; p != NULL; p = p->next) {
            all = all && p->close_done;
        }
        if (all || mls_now_ns() > deadline) {
            break;
        }
    }
    kvx_sides_destroy(ctx, true); /* what close did not complete */
    while (ctx->peers != NULL) {
        kvx_peer *p = ctx->peers;
        ctx->peers = p->next;
        if (!p->close_done) {
            mls_warn("kvx: endpoint to %s did not close within 1 s", p->addr);
        }
        kvx_peer_free(p);
    }
    mls_free(MLS_ALLOC_TAG_TRANSPORT, ctx->rkey_blob, ctx->rkey_blob_len);
    for (uint32_t i = 0; i < ctx->n_regions; i++) {
        ucp_mem_unmap(ctx->ucp, ctx->regions[i].memh);
    }
    uv_close((uv_handle_t *)&ctx->poll, kvx_handle_close_cb);
    uv_close((uv_handle_t *)&ctx->timer, kvx_handle_close_cb);
    uv_close((uv_handle_t *)&ctx->async, kvx_handle_close_cb);
    while (ctx->handles_open > 0) {
        uv_run(ctx->loop, UV_RUN_NOWAIT);
    }
    ucp_worker_destroy(ctx->worker);
    ucp_cleanup(ctx->ucp);
    kvx_ctx_free(ctx);
}

void kvx_ctx_stats(kvx_ctx *ctx, kvx_stats *stats_p)
{
    kvx_stats s = {0};
    s.reservations_open = ctx->n_resv;
    s.requests_open = ctx->n_reqs;
    for (kvx_peer *p = ctx->peers; p != NULL; p = p->next) {
        s.peers += p->state != KVX_PEER_FAILED;
    }
    s.bytes_received = ctx->bytes_received;
    s.bytes_sent = ctx->bytes_sent;
    *stats_p = s;
}
