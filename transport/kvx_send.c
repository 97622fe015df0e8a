/*
 * kvx_send.c - the prefill side of the KV transfer: requests created and fed
 * from compute threads (rows hashed there, work queued to the loop), endpoints
 * created on demand and cached per decode node address, the HELLO exchange
 * (layout check, the connection's nonce), each request's proof of its token,
 * the pool grant (addresses and rkeys) that rows wait for unless the path is
 * AM, completion and verdicts.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "kvx_path.h"
#include "kvx_send.h"
#include "mls_alloc.h"
#include "mls_log.h"
#include "mls_num.h"

static void kvx_req_try_progress(kvx_req *req);

/* ---- request memory ------------------------------------------------------ */

static void kvx_req_free(kvx_req *req)
{
    uint32_t nl = req->n_layers;
    sodium_memzero(req->token, sizeof(req->token));
    mls_free(MLS_ALLOC_TAG_TRANSPORT, req->page_ids, sizeof(uint32_t) * req->n_pages);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, req->layer_sent, sizeof(uint32_t) * nl);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, req->layer_issued, sizeof(uint32_t) * nl);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, req->hash, sizeof(XXH3_state_t) * nl);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, req->checksums, sizeof(uint64_t) * nl);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, req->scratch, req->scratch_len);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, req, sizeof(*req));
}

static void kvx_req_unref(kvx_req *req)
{
    if (atomic_fetch_sub(&req->refs, 1) == 1) {
        kvx_req_free(req);
    }
}

static mls_status kvx_req_enqueue(kvx_req *req, kvx_op_type type, uint32_t layer,
                                  uint32_t tok_begin, uint32_t n_tokens, const void *rows,
                                  mls_err *err)
{
    kvx_op *op = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(*op));
    if (op == NULL) {
        mls_err_set(err, "kvx: rid %llu: out of memory queueing work",
                    (unsigned long long)req->rid);
        return MLS_ERR_NO_MEMORY;
    }
    *op = (kvx_op){.type = type,
                   .req = req,
                   .layer = layer,
                   .tok_begin = tok_begin,
                   .n_tokens = n_tokens,
                   .rows = rows};
    atomic_fetch_add(&req->refs, 1);
    kvx_queue_push(req->ctx, op);
    return MLS_OK;
}

static void kvx_op_free(kvx_op *op)
{
    kvx_req *req = op->req;
    mls_free(MLS_ALLOC_TAG_TRANSPORT, op, sizeof(*op));
    kvx_req_unref(req);
}

/* ---- public sender API (any thread) -------------------------------------- */

mls_status kvx_req_create(kvx_ctx *ctx, const char *peer, uint64_t rid, const uint8_t *token,
                          const uint32_t *page_ids, uint32_t n_pages, uint32_t n_tokens,
                          kvx_done_cb cb, void *arg, kvx_req **req_p, mls_err *err)
{
    if (peer == NULL || strlen(peer) >= sizeof(((kvx_req *)0)->peer_addr) || cb == NULL ||
        token == NULL || page_ids == NULL || n_pages == 0 || n_tokens == 0 ||
        n_tokens > (uint64_t)n_pages * KVL_PAGE_TOKENS) {
        mls_err_set(err,
                    "kvx_req_create(rid %llu): need a peer, a callback, a token, pages, "
                    "and 1..%llu tokens (got %u)",
                    (unsigned long long)rid, (unsigned long long)n_pages * KVL_PAGE_TOKENS,
                    n_tokens);
        return MLS_ERR_INVALID_ARG;
    }
    uint32_t nl = ctx->cfg.n_layers;
    kvx_req *req = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(*req));
    if (req == NULL) {
        goto err;
    }
    req->n_layers = nl;
    req->n_pages = n_pages;
    req->page_ids = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(uint32_t) * n_pages);
    req->layer_sent = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(uint32_t) * nl);
    req->layer_issued = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(uint32_t) * nl);
    req->hash = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(XXH3_state_t) * nl);
    req->checksums = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(uint64_t) * nl);
    if (req->page_ids == NULL || req->layer_sent == NULL || req->layer_issued == NULL ||
        req->hash == NULL || req->checksums == NULL) {
        kvx_req_free(req);
        goto err;
    }
    memcpy(req->page_ids, page_ids, sizeof(uint32_t) * n_pages);
    memcpy(req->token, token, KVX_TOKEN_BYTES);
    for (uint32_t l = 0; l < nl; l++) {
        XXH3_INITSTATE(&req->hash[l]);
        XXH3_64bits_reset(&req->hash[l]);
    }
    req->ctx = ctx;
    req->rid = rid;
    snprintf(req->peer_addr, sizeof(req->peer_addr), "%s", peer);
    req->n_tokens = n_tokens;
    if (ctx->cfg.req_timeout_ms > 0) {
        req->deadline_ns = mls_now_ns() + (uint64_t)ctx->cfg.req_timeout_ms * 1000000ull;
    }
    req->cb = cb;
    req->arg = arg;
    atomic_init(&req->status, MLS_OK);
    atomic_init(&req->refs, 2); /* caller + loop */
    mls_status st = kvx_req_enqueue(req, KVX_OP_BEGIN, 0, 0, 0, NULL, err);
    if (st != MLS_OK) {
        kvx_req_free(req);
        return st;
    }
    *req_p = req;
    return MLS_OK;
err:
    mls_err_set(err, "kvx_req_create(rid %llu): out of memory", (unsigned long long)rid);
    return MLS_ERR_NO_MEMORY;
}

mls_status kvx_send_layer(kvx_req *req, uint32_t layer, uint32_t tok_begin, uint32_t n_tokens,
                          const void *rows, mls_err *err)
{
    mls_status st = atomic_load(&req->status);
    if (st != MLS_OK) {
        mls_err_set(err, "kvx: rid %llu already ended: %s", (unsigned long long)req->rid,
                    mls_status_name(st));
        return st;
    }
    if (layer >= req->n_layers || rows == NULL || n_tokens == 0 || req->finish_called ||
        tok_begin != req->layer_sent[layer] || n_tokens > req->n_tokens - tok_begin) {
        mls_err_set(err,
                    "kvx_send_layer(rid %llu, layer %u, tokens [%u, +%u)): layers come in "
                    "token order, next token %u of %u, %u layers",
                    (unsigned long long)req->rid, layer, tok_begin, n_tokens,
                    layer < req->n_layers ? req->layer_sent[layer] : 0, req->n_tokens,
                    req->n_layers);
        return MLS_ERR_INVALID_ARG;
    }
    size_t bytes = (size_t)n_tokens * req->ctx->cfg.layout.row_bytes;
    XXH3_64bits_update(&req->hash[layer], rows, bytes);
    req->layer_sent[layer] += n_tokens;
    if (req->layer_sent[layer] == req->n_tokens) {
        req->checksums[layer] = XXH3_64bits_digest(&req->hash[layer]);
    }
    return kvx_req_enqueue(req, KVX_OP_ROWS, layer, tok_begin, n_tokens, rows, err);
}

mls_status kvx_finish(kvx_req *req, mls_err *err)
{
    mls_status st = atomic_load(&req->status);
    if (st != MLS_OK) {
        mls_err_set(err, "kvx: rid %llu already ended: %s", (unsigned long long)req->rid,
                    mls_status_name(st));
        return st;
    }
    for (uint32_t l = 0; l < req->n_layers; l++) {
        if (req->layer_sent[l] != req->n_tokens) {
            mls_err_set(err, "kvx_finish(rid %llu): layer %u has %u of %u tokens",
                        (unsigned long long)req->rid, l, req->layer_sent[l], req->n_tokens);
            return MLS_ERR_INVALID_ARG;
        }
    }
    if (req->finish_called) {
        mls_err_set(err, "kvx_finish(rid %llu): called twice", (unsigned long long)req->rid);
        return MLS_ERR_INVALID_ARG;
    }
    req->finish_called = true;
    return kvx_req_enqueue(req, KVX_OP_FINISH, 0, 0, 0, NULL, err);
}

void kvx_req_abort(kvx_req *req)
{
    if (kvx_req_enqueue(req, KVX_OP_ABORT, 0, 0, 0, NULL, NULL) != MLS_OK) {
        mls_error("kvx: rid %llu: could not queue the abort", (unsigned long long)req->rid);
    }
}

void kvx_req_release(kvx_req *req)
{
    if (req != NULL) {
        kvx_req_unref(req);
    }
}

/* ---- request state on the loop ------------------------------------------- */

/* Drop the loop's reference once the callback ran and no UCX operation
 * refers to the request. Must be the last thing a caller does with req. */
static void kvx_req_loop_release(kvx_req *req)
{
    kvx_ctx *ctx = req->ctx;
    if (req->lprev != NULL) {
        req->lprev->lnext = req->lnext;
    } else {
        ctx->reqs = req->lnext;
    }
    if (req->lnext != NULL) {
        req->lnext->lprev = req->lprev;
    }
    ctx->n_reqs--;
    if (req->peer != NULL) {
        kvx_peer_unref(req->peer);
        req->peer = NULL;
    }
    kvx_req_unref(req);
}

/* The caller hears the verdict once no UCX operation still reads its rows
 * (the source buffers are the caller's again after the callback). */
static void kvx_req_call_back(kvx_req *req)
{
    if (req->done && !req->cb_called && req->outstanding == 0) {
        req->cb_called = true;
        req->cb(req->arg, req->rid, req->end_status,
                req->end_status == MLS_OK ? NULL : req->end_why);
    }
}

/* Free the request's operations still waiting on its peer (for the
 * HELLO_REPLY or the GRANT): it ended, they will never be issued. */
static void kvx_req_pend_drop(kvx_req *req)
{
    kvx_peer *peer = req->peer;
    if (peer == NULL) {
        return;
    }
    kvx_op **pp = &peer->pend_head;
    kvx_op *last = NULL;
    while (*pp != NULL) {
        kvx_op *op = *pp;
        if (op->req == req) {
            *pp = op->next;
            kvx_op_free(op); /* the loop still holds its reference */
        } else {
            last = op;
            pp = &op->next;
        }
    }
    peer->pend_tail = last;
}

static void kvx_req_fail(kvx_req *req, mls_status st, const char *why)
{
    if (req->done) {
        return;
    }
    kvx_req_pend_drop(req);
    req->done = true;
    atomic_store(&req->status, st == MLS_OK ? MLS_ERR_CANCELED : st); /* no more sends */
    req->end_status = st;
    req->end_ns = mls_now_ns();
    snprintf(req->end_why, sizeof(req->end_why), "%s", why ? why : "");
    if (st != MLS_OK && st != MLS_ERR_CANCELED) {
        mls_warn("kvx: rid %llu to %s: %s: %s", (unsigned long long)req->rid, req->peer_addr,
                 mls_status_name(st), req->end_why);
    }
    kvx_req_call_back(req);
}

/* Operations of an ended request that do not complete (a frozen decode
 * node holding a rendezvous) would keep the caller's rows forever: after
 * 2 s the endpoint is dropped, which completes them with an error. */
static void kvx_send_cancel_msg(kvx_req *req)
{
    if (req->peer != NULL && req->peer->state == KVX_PEER_READY) {
        kvx_sop *sop = kvx_sop_new(req->ctx, KVX_SOP_CTRL);
        if (sop != NULL) {
            kvx_msg_rows *m = (kvx_msg_rows *)sop->hdr;
            m->rid = req->rid;
            kvx_am_send(req->peer, sop, KVX_AM_CANCEL, sizeof(*m), UCP_AM_SEND_FLAG_EAGER);
        }
    }
}

static void kvx_send_tick(kvx_ctx *ctx, uint64_t now_ns)
{
    for (kvx_req *req = ctx->reqs; req != NULL; req = req->lnext) {
        if (!req->done && req->deadline_ns != 0 && now_ns > req->deadline_ns) {
            char why[KVX_WHY_LEN];
            snprintf(why, sizeof(why), "no verdict from decode node %s within %u ms",
                     req->peer_addr, ctx->cfg.req_timeout_ms);
            kvx_send_cancel_msg(req); /* a live decode node frees the pages now */
            kvx_req_fail(req, MLS_ERR_TIMED_OUT, why);
            if (req->outstanding > 0 && req->peer != NULL) {
                kvx_peer_fail(req->peer, MLS_ERR_TIMED_OUT, why); /* frozen: stuck operations */
            }
            kvx_req_try_progress(req);
            return; /* the request list may have changed; the next tick goes on */
        }
        if (req->done && !req->cb_called && req->outstanding > 0 && req->peer != NULL &&
            req->peer->state != KVX_PEER_FAILED && now_ns - req->end_ns > 2000000000ull) {
            char why[KVX_WHY_LEN];
            snprintf(why, sizeof(why),
                     "%u operations of rid %llu to %s still in flight 2 s after "
                     "it ended",
                     req->outstanding, (unsigned long long)req->rid, req->peer_addr);
            mls_warn("kvx: %s: dropping the endpoint", why);
            kvx_peer_fail(req->peer, MLS_ERR_PEER_DEAD, why);
            return; /* the request list may have changed */
        }
    }
}

static bool kvx_req_all_issued(const kvx_req *req)
{
    for (uint32_t l = 0; l < req->n_layers; l++) {
        if (req->layer_issued[l] != req->n_tokens) {
            return false;
        }
    }
    return true;
}

static void kvx_req_try_progress(kvx_req *req)
{
    if (!req->done && req->finish_queued && !req->finish_sent && req->outstanding == 0 &&
        kvx_req_all_issued(req)) {
        req->finish_sent = true;
        kvx_sop *sop = kvx_sop_new(req->ctx, KVX_SOP_REQ_CTRL);
        size_t len = sizeof(uint64_t) * req->n_layers;
        void *blob = sop ? mls_alloc(MLS_ALLOC_TAG_TRANSPORT, len) : NULL;
        if (blob == NULL) {
            kvx_sop_free(sop);
            kvx_req_fail(req, MLS_ERR_NO_MEMORY, "out of memory for the completion message");
        } else {
            memcpy(blob, req->checksums, len);
            sop->blob = blob;
            sop->blob_len = len;
            sop->req = req;
            kvx_msg_finish *m = (kvx_msg_finish *)sop->hdr;
            m->rid = req->rid;
            m->n_layers = req->n_layers;
            m->n_tokens = req->n_tokens;
            m->path = (uint32_t)req->peer->path;
            m->reserved = 0;
            req->outstanding++;
            kvx_am_send(req->peer, sop, KVX_AM_FINISH, sizeof(*m), UCP_AM_SEND_FLAG_EAGER);
            return; /* a completion inside the send already ran try_progress */
        }
    }
    kvx_req_call_back(req);
    if (req->cb_called && req->outstanding == 0 && req->begun) {
        req->begun = false; /* loop reference dropped exactly once */
        kvx_req_loop_release(req);
    }
}

static void kvx_send_sop_done(kvx_sop *sop, ucs_status_t status)
{
    kvx_req *req = sop->req;
    req->outstanding--;
    if (status != UCS_OK) {
        char why[KVX_WHY_LEN];
        snprintf(why, sizeof(why), "%s to %s failed: %s",
                 sop->kind == KVX_SOP_FLUSH  ? "flush"
                 : sop->kind == KVX_SOP_DATA ? "data"
                                             : "control message",
                 req->peer_addr, ucs_status_string(status));
        kvx_req_fail(req, kvx_status_from_ucs(status), why);
    } else if (sop->kind == KVX_SOP_FLUSH && !req->done) {
        /* The layer's puts are in the decode node's pages: say so. */
        kvx_sop *msg = kvx_sop_new(req->ctx, KVX_SOP_REQ_CTRL);
        if (msg != NULL) {
            kvx_msg_rows *m = (kvx_msg_rows *)msg->hdr;
            m->rid = req->rid;
            m->layer = sop->layer;
            msg->req = req;
            req->outstanding++;
            kvx_am_send(req->peer, msg, KVX_AM_LAYER, sizeof(*m), UCP_AM_SEND_FLAG_EAGER);
            return;
        }
    }
    kvx_req_try_progress(req);
}

/* ---- peers (client side) ------------------------------------------------- */

static kvx_peer *kvx_peer_connect(kvx_ctx *ctx, const char *addr, mls_err *err)
{
    char ip[64];
    snprintf(ip, sizeof(ip), "%s", addr);
    char *colon = strrchr(ip, ':');
    struct sockaddr_in sin = {.sin_family = AF_INET};
    long port = colon ? strtol(colon + 1, NULL, 10) : 0;
    if (colon == NULL || port <= 0 || port > 65535) {
        mls_err_set(err, "kvx: peer '%s' is not ip:port", addr);
        return NULL;
    }
    *colon = '\0';
    if (inet_pton(AF_INET, ip, &sin.sin_addr) != 1) {
        mls_err_set(err, "kvx: peer '%s': '%s' is not an IPv4 address", addr, ip);
        return NULL;
    }
    sin.sin_port = htons((uint16_t)port);
    kvx_peer *peer = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(*peer));
    kvx_sop *hello = kvx_sop_new(ctx, KVX_SOP_CTRL);
    if (peer == NULL || hello == NULL) {
        mls_free(MLS_ALLOC_TAG_TRANSPORT, peer, sizeof(*peer));
        kvx_sop_free(hello);
        mls_err_set(err, "kvx: out of memory connecting to %s", addr);
        return NULL;
    }
    peer->ctx = ctx;
    peer->is_client = true;
    peer->state = KVX_PEER_CONNECTING;
    peer->refs = 1;
    snprintf(peer->addr, sizeof(peer->addr), "%s", addr);
    ucp_ep_params_t ep_params = {
        .field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
        .sockaddr = {.addr = (const struct sockaddr *)&sin, .addrlen = sizeof(sin)},
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = kvx_ep_err_cb, .arg = peer},
    };
    ucs_status_t us = ucp_ep_create(ctx->worker, &ep_params, &peer->ep);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx: ucp_ep_create to %s: %s", addr, ucs_status_string(us));
        mls_free(MLS_ALLOC_TAG_TRANSPORT, peer, sizeof(*peer));
        kvx_sop_free(hello);
        return NULL;
    }
    peer->next = ctx->peers;
    ctx->peers = peer;
    kvx_msg_hello *h = (kvx_msg_hello *)hello->hdr;
    h->magic = KVX_WIRE_MAGIC;
    h->proto_version = KVX_PROTO_VERSION;
    h->n_layers = ctx->cfg.n_layers;
    kvl_layout_encode(&ctx->cfg.layout, h->layout);
    kvx_am_send(peer, hello, KVX_AM_HELLO, sizeof(*h), UCP_AM_SEND_FLAG_EAGER);
    return peer;
}

static kvx_peer *kvx_peer_get(kvx_ctx *ctx, const char *addr, mls_err *err)
{
    for (kvx_peer *p = ctx->peers; p != NULL; p = p->next) {
        if (p->is_client && p->state != KVX_PEER_FAILED && strcmp(p->addr, addr) == 0) {
            return p;
        }
    }
    return kvx_peer_connect(ctx, addr, err);
}

const char *kvx_peer_path(kvx_ctx *ctx, const char *peer)
{
    for (kvx_peer *p = ctx->peers; p != NULL; p = p->next) {
        if (p->is_client && p->state == KVX_PEER_READY && p->rows_ready &&
            strcmp(p->addr, peer) == 0) {
            return kvx_path_name(p->path);
        }
    }
    return NULL;
}

static void kvx_send_peer_failed(kvx_peer *peer)
{
    kvx_ctx *ctx = peer->ctx;
    kvx_op *op = peer->pend_head;
    peer->pend_head = peer->pend_tail = NULL;
    kvx_req *req = ctx->reqs;
    while (req != NULL) {
        kvx_req *next = req->lnext;
        if (req->peer == peer && !req->done) {
            kvx_req_fail(req, peer->fail_status, peer->fail_why);
            kvx_req_try_progress(req);
        }
        req = next;
    }
    while (op != NULL) {
        kvx_op *next = op->next;
        kvx_op_free(op);
        op = next;
    }
}

/* ---- loop-side processing of queued work --------------------------------- */

static void kvx_req_begin(kvx_ctx *ctx, kvx_req *req)
{
    kvx_peer *peer = req->peer;
    for (uint32_t i = 0; i < req->n_pages; i++) {
        if (req->page_ids[i] >= peer->remote_pages) {
            char why[KVX_WHY_LEN];
            snprintf(why, sizeof(why),
                     "page_ids[%u] = %u outside the decode node's pool of %u "
                     "pages",
                     i, req->page_ids[i], peer->remote_pages);
            kvx_req_fail(req, MLS_ERR_INVALID_ARG, why);
            return;
        }
    }
    kvx_sop *sop = kvx_sop_new(ctx, KVX_SOP_REQ_CTRL);
    size_t len = sizeof(uint32_t) * req->n_pages;
    void *blob = sop ? mls_alloc(MLS_ALLOC_TAG_TRANSPORT, len) : NULL;
    if (blob == NULL) {
        kvx_sop_free(sop);
        kvx_req_fail(req, MLS_ERR_NO_MEMORY, "out of memory for the request header");
        return;
    }
    memcpy(blob, req->page_ids, len);
    sop->blob = blob;
    sop->blob_len = len;
    sop->req = req;
    kvx_msg_begin *m = (kvx_msg_begin *)sop->hdr;
    m->rid = req->rid;
    m->n_tokens = req->n_tokens;
    m->n_pages = req->n_pages;
    m->n_layers = req->n_layers;
    m->flags = peer->rows_ready ? 0u : KVX_BEGIN_WANT_POOLS;
    kvx_begin_mac(req->token, peer->nonce, m, blob, len, m->mac);
    req->outstanding++;
    kvx_am_send(peer, sop, KVX_AM_BEGIN, sizeof(*m), UCP_AM_SEND_FLAG_EAGER);
}

static void kvx_send_process_op(kvx_ctx *ctx, kvx_op *op)
{
    kvx_req *req = op->req;
    if (op->type == KVX_OP_BEGIN && !req->begun) {
        req->begun = true; /* the loop now holds its reference in ctx->reqs */
        req->lnext = ctx->reqs;
        if (ctx->reqs != NULL) {
            ctx->reqs->lprev = req;
        }
        ctx->reqs = req;
        ctx->n_reqs++;
        mls_err err = {{0}};
        kvx_peer *peer = ctx->destroying ? NULL : kvx_peer_get(ctx, req->peer_addr, &err);
        if (peer == NULL) {
            kvx_req_fail(req, ctx->destroying ? MLS_ERR_CANCELED : MLS_ERR_PEER_DEAD,
                         ctx->destroying ? "transport shut down" : err.msg);
            goto out_free;
        }
        req->peer = peer;
        peer->refs++;
    }
    if (req->done) {
        goto out_free;
    }
    if (op->type == KVX_OP_ABORT) {
        kvx_send_cancel_msg(req);
        kvx_req_fail(req, MLS_ERR_CANCELED, "request aborted by the prefill node");
        goto out_free;
    }
    if (req->peer->state == KVX_PEER_CONNECTING ||
        (op->type != KVX_OP_BEGIN && !req->peer->rows_ready)) {
        /* Replayed in order once the HELLO_REPLY (or, for rows, the GRANT)
         * arrives. */
        op->next = NULL;
        if (req->peer->pend_tail != NULL) {
            req->peer->pend_tail->next = op;
        } else {
            req->peer->pend_head = op;
        }
        req->peer->pend_tail = op;
        return;
    }
    switch (op->type) {
    case KVX_OP_BEGIN:
        kvx_req_begin(ctx, req);
        break;
    case KVX_OP_ROWS:
        if (kvx_req_issue_rows(req, op->layer, op->tok_begin, op->n_tokens, op->rows) ==
            MLS_ERR_NO_MEMORY) {
            kvx_req_fail(req, MLS_ERR_NO_MEMORY, "out of memory issuing rows");
        }
        break;
    case KVX_OP_FINISH:
        req->finish_queued = true;
        break;
    case KVX_OP_ABORT:
        break;
    }
out_free:
    kvx_req_try_progress(req); /* safe: the op still holds a reference */
    kvx_op_free(op);
}

/* ---- messages from decode nodes ------------------------------------------ */

/* Issue the operations that waited for the connection (or the grant), in
 * order; those that still cannot go are queued again. */
static void kvx_peer_replay(kvx_ctx *ctx, kvx_peer *peer)
{
    kvx_op *op = peer->pend_head;
    peer->pend_head = peer->pend_tail = NULL;
    while (op != NULL) {
        kvx_op *next = op->next;
        kvx_send_process_op(ctx, op);
        op = next;
    }
}

static void kvx_send_hello_reply(kvx_ctx *ctx, kvx_peer *peer, const kvx_msg_hello_reply *rep)
{
    char why[2 * KVX_WHY_LEN];
    uint32_t nl = ctx->cfg.n_layers;
    if (rep->status != MLS_OK) {
        snprintf(why, sizeof(why), "decode node %s refused the connection: %.*s", peer->addr,
                 KVX_WHY_LEN - 1, rep->why);
        kvx_peer_fail(peer, MLS_ERR_PEER_MISMATCH, why);
        return;
    }
    char lbuf[KVX_WHY_LEN];
    if (kvx_layout_check_wire(&ctx->cfg.layout, rep->layout, lbuf, sizeof(lbuf)) != MLS_OK) {
        snprintf(why, sizeof(why), "decode node %s: %s", peer->addr, lbuf);
        kvx_peer_fail(peer, MLS_ERR_PEER_MISMATCH, why);
        return;
    }
    if (rep->n_layers != nl) {
        snprintf(why, sizeof(why), "decode node %s: n_layers differs (decode node %u, here %u)",
                 peer->addr, rep->n_layers, nl);
        kvx_peer_fail(peer, MLS_ERR_PEER_MISMATCH, why);
        return;
    }
    memcpy(peer->nonce, rep->nonce, sizeof(peer->nonce));
    peer->remote_pages = rep->pool_pages;
    peer->state = KVX_PEER_READY;
    if (ctx->cfg.path == KVX_PATH_AM) {
        peer->path = KVX_PATH_AM; /* the pools are never needed: not asked for */
        peer->rows_ready = true;
    }
    mls_debug("kvx: connected to %s%s", peer->addr,
              peer->rows_ready ? ", path am" : "; rows wait for the pool grant");
    kvx_peer_replay(ctx, peer);
}

/* The decode node's pools and rkeys, after it accepted our first proof. */
static void kvx_send_grant(kvx_ctx *ctx, kvx_peer *peer, const kvx_msg_grant *g,
                           const uint8_t *data, size_t length)
{
    char why[2 * KVX_WHY_LEN];
    uint32_t nl = ctx->cfg.n_layers;
    size_t off = sizeof(kvx_wire_pool) * nl;
    if (g->n_layers != nl || length < off || g->n_regions == 0 || g->n_regions > KVX_MAX_REGIONS) {
        snprintf(why, sizeof(why), "decode node %s: malformed pool description", peer->addr);
        kvx_peer_fail(peer, MLS_ERR_PEER_MISMATCH, why);
        return;
    }
    peer->pools = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, off);
    peer->rkeys = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(ucp_rkey_h) * g->n_regions);
    peer->n_regions = peer->rkeys != NULL ? g->n_regions : 0; /* what kvx_peer_free releases */
    if (peer->pools == NULL || peer->rkeys == NULL) {
        kvx_peer_fail(peer, MLS_ERR_NO_MEMORY, "out of memory for the decode node's rkeys");
        return;
    }
    memcpy(peer->pools, data, off);
    for (uint32_t i = 0; i < g->n_regions; i++) {
        uint32_t klen;
        if (off + sizeof(klen) > length) {
            goto err;
        }
        memcpy(&klen, data + off, sizeof(klen));
        off += sizeof(klen);
        if (klen > length - off) {
            goto err;
        }
        ucs_status_t us = ucp_ep_rkey_unpack(peer->ep, data + off, &peer->rkeys[i]);
        if (us != UCS_OK) {
            snprintf(why, sizeof(why), "decode node %s: ucp_ep_rkey_unpack: %s", peer->addr,
                     ucs_status_string(us));
            kvx_peer_fail(peer, MLS_ERR_PEER_MISMATCH, why);
            return;
        }
        off += klen;
    }
    for (uint32_t l = 0; l < nl; l++) {
        if (peer->pools[l].region >= peer->n_regions) {
            goto err;
        }
    }
    peer->path = ctx->cfg.path == KVX_PATH_AUTO ? kvx_path_probe(peer) : ctx->cfg.path;
    peer->rows_ready = true;
    mls_debug("kvx: pools of %s granted, path %s", peer->addr, kvx_path_name(peer->path));
    kvx_peer_replay(ctx, peer);
    return;
err:
    snprintf(why, sizeof(why), "decode node %s: malformed rkey list", peer->addr);
    kvx_peer_fail(peer, MLS_ERR_PEER_MISMATCH, why);
}

static ucs_status_t kvx_send_am(kvx_ctx *ctx, unsigned id, const void *header, size_t header_length,
                                void *data, size_t length, const ucp_am_recv_param_t *param)
{
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ||
        (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        return UCS_OK;
    }
    kvx_peer *peer = kvx_peer_by_ep(ctx, param->reply_ep);
    kvx_msg_any hbuf;
    if (peer == NULL || !peer->is_client || header_length > sizeof(hbuf)) {
        return UCS_OK;
    }
    memcpy(&hbuf, header, header_length); /* UCX gives no alignment */
    header = &hbuf;
    if (id == KVX_AM_HELLO_REPLY) {
        const kvx_msg_hello_reply *rep = header;
        if (header_length == sizeof(*rep) && rep->magic == KVX_WIRE_MAGIC &&
            peer->state == KVX_PEER_CONNECTING) {
            kvx_send_hello_reply(ctx, peer, rep);
        }
        return UCS_OK;
    }
    if (id == KVX_AM_GRANT) {
        const kvx_msg_grant *g = header;
        if (header_length == sizeof(*g) && g->magic == KVX_WIRE_MAGIC &&
            peer->state == KVX_PEER_READY && !peer->rows_ready && peer->rkeys == NULL) {
            kvx_send_grant(ctx, peer, g, data, length);
        }
        return UCS_OK;
    }
    if (id == KVX_AM_RESULT && header_length == sizeof(kvx_msg_result)) {
        const kvx_msg_result *m = header;
        for (kvx_req *req = ctx->reqs; req != NULL; req = req->lnext) {
            if (req->rid == m->rid && req->peer == peer && !req->done) {
                char why[KVX_WHY_LEN + 32];
                snprintf(why, sizeof(why), "decode node: %.*s", KVX_WHY_LEN - 1, m->why);
                mls_status st =
                    m->status < MLS_STATUS_COUNT ? (mls_status)m->status : MLS_ERR_INTERNAL;
                kvx_req_fail(req, st, why);
                kvx_req_try_progress(req);
                break;
            }
        }
    }
    return UCS_OK;
}

static void kvx_send_destroy(kvx_ctx *ctx, bool force)
{
    kvx_op *op = kvx_queue_take(ctx);
    while (op != NULL) {
        kvx_op *next = op->next;
        kvx_req *req = op->req;
        if (!req->begun && op->type == KVX_OP_BEGIN) {
            /* never reached the loop: call back and drop the loop's reference */
            req->done = req->cb_called = true;
            atomic_store(&req->status, MLS_ERR_CANCELED);
            req->cb(req->arg, req->rid, MLS_ERR_CANCELED, "transport shut down");
            kvx_req_unref(req);
        }
        kvx_op_free(op);
        op = next;
    }
    kvx_req *req = ctx->reqs;
    while (req != NULL) {
        kvx_req *next = req->lnext;
        kvx_req_fail(req, MLS_ERR_CANCELED, "transport shut down");
        if (force && req->outstanding > 0) {
            mls_warn("kvx: rid %llu: %u operations never completed", (unsigned long long)req->rid,
                     req->outstanding);
            req->outstanding = 0;
        }
        kvx_req_try_progress(req);
        req = next;
    }
    for (kvx_peer *p = ctx->peers; p != NULL; p = p->next) {
        kvx_op *pop = p->pend_head;
        p->pend_head = p->pend_tail = NULL;
        while (pop != NULL) {
            kvx_op *next = pop->next;
            kvx_op_free(pop);
            pop = next;
        }
    }
}

static bool kvx_send_peer_busy(const kvx_peer *peer)
{
    for (kvx_req *q = peer->ctx->reqs; q != NULL; q = q->lnext) {
        if (q->peer == peer && !q->done) {
            return true;
        }
    }
    return false;
}

void kvx_send_attach(kvx_ctx *ctx)
{
    static const kvx_side_ops ops = {
        .name = "send",
        .process_op = kvx_send_process_op,
        .sop_done = kvx_send_sop_done,
        .peer_failed = kvx_send_peer_failed,
        .peer_busy = kvx_send_peer_busy,
        .tick = kvx_send_tick,
        .destroy = kvx_send_destroy,
    };
    kvx_ctx_register_side(ctx, KVX_SIDE_SEND, &ops);
    kvx_ctx_register_handler(ctx, KVX_AM_HELLO_REPLY, kvx_send_am);
    kvx_ctx_register_handler(ctx, KVX_AM_RESULT, kvx_send_am);
    kvx_ctx_register_handler(ctx, KVX_AM_GRANT, kvx_send_am);
}
