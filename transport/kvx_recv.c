/*
 * kvx_recv.c - the decode side of the KV transfer: the listener and the
 * connect-time layout check, reservations with leases and tokens, the check
 * of each request's proof before its sender may write, the pool grant (rkeys)
 * to proven senders, rendezvous receives straight into the reserved pages,
 * per-layer XXH3 verification and the verdict sent back to the prefill node.
 * (Pool registration: kvx_pool.c.)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "kvx_recv.h"
#include "mls_alloc.h"
#include "mls_log.h"
#include "mls_num.h"

/* ---- listener ------------------------------------------------------------ */

static void kvx_listener_conn_cb(ucp_conn_request_h conn_request, void *arg)
{
    kvx_ctx *ctx = arg;
    kvx_peer *peer = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(*peer));
    if (peer == NULL) {
        mls_error("kvx: out of memory for an incoming connection; rejected");
        ucp_listener_reject(ctx->listener, conn_request);
        return;
    }
    peer->ctx = ctx;
    peer->is_client = false;
    peer->state = KVX_PEER_CONNECTING;
    peer->refs = 1;
    ucp_conn_request_attr_t ca = {.field_mask = UCP_CONN_REQUEST_ATTR_FIELD_CLIENT_ADDR};
    if (ucp_conn_request_query(conn_request, &ca) == UCS_OK &&
        ca.client_address.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&ca.client_address;
        char ip[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(peer->addr, sizeof(peer->addr), "%s:%u", ip, ntohs(sin->sin_port));
    } else {
        snprintf(peer->addr, sizeof(peer->addr), "(accepted)");
    }
    ucp_ep_params_t ep_params = {
        .field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER,
        .conn_request = conn_request,
        .err_mode = UCP_ERR_HANDLING_MODE_PEER,
        .err_handler = {.cb = kvx_ep_err_cb, .arg = peer},
    };
    ucs_status_t us = ucp_ep_create(ctx->worker, &ep_params, &peer->ep);
    if (us != UCS_OK) {
        mls_error("kvx: ucp_ep_create for %s: %s", peer->addr, ucs_status_string(us));
        mls_free(MLS_ALLOC_TAG_TRANSPORT, peer, sizeof(*peer));
        return;
    }
    peer->next = ctx->peers;
    ctx->peers = peer;
    mls_debug("kvx: accepted %s", peer->addr);
}

mls_status kvx_listen(kvx_ctx *ctx, const char *ip, uint16_t port, uint16_t *port_p, mls_err *err)
{
    if (ctx->listener != NULL) {
        mls_err_set(err, "kvx_listen: already listening");
        return MLS_ERR_INVALID_ARG;
    }
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &sin.sin_addr) != 1) {
        mls_err_set(err, "kvx_listen: '%s' is not an IPv4 address", ip);
        return MLS_ERR_INVALID_ARG;
    }
    ucp_listener_params_t lp = {
        .field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
        .sockaddr = {.addr = (const struct sockaddr *)&sin, .addrlen = sizeof(sin)},
        .conn_handler = {.cb = kvx_listener_conn_cb, .arg = ctx},
    };
    ucs_status_t us = ucp_listener_create(ctx->worker, &lp, &ctx->listener);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx_listen: ucp_listener_create(%s:%u): %s", ip, port,
                    ucs_status_string(us));
        return MLS_ERR_IO;
    }
    ucp_listener_attr_t la = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    us = ucp_listener_query(ctx->listener, &la);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx_listen: ucp_listener_query: %s", ucs_status_string(us));
        ucp_listener_destroy(ctx->listener);
        ctx->listener = NULL;
        return MLS_ERR_IO;
    }
    *port_p = ntohs(((const struct sockaddr_in *)&la.sockaddr)->sin_port);
    kvx_drain_soon(ctx);
    return MLS_OK;
}

/* ---- reservations -------------------------------------------------------- */

static uint32_t kvx_resv_bucket(uint64_t rid)
{
    return (uint32_t)((rid * 0x9e3779b97f4a7c15ull) >> 56) % KVX_RESV_BUCKETS;
}

static kvx_resv *kvx_resv_find(kvx_ctx *ctx, uint64_t rid)
{
    for (kvx_resv *r = ctx->resv_hash[kvx_resv_bucket(rid)]; r != NULL; r = r->hnext) {
        if (r->rid == rid) {
            return r;
        }
    }
    return NULL;
}

static void kvx_resv_free(kvx_ctx *ctx, kvx_resv *r)
{
    uint32_t nl = ctx->cfg.n_layers;
    sodium_memzero(r->token, sizeof(r->token));
    mls_free(MLS_ALLOC_TAG_TRANSPORT, r->page_ids, sizeof(uint32_t) * r->n_pages);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, r->layer_bytes, sizeof(uint64_t) * nl);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, r->layer_state, nl);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, r->layer_hash, sizeof(uint64_t) * nl);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, r->want_hash, sizeof(uint64_t) * nl);
    mls_free(MLS_ALLOC_TAG_TRANSPORT, r, sizeof(*r));
}

mls_status kvx_reserve(kvx_ctx *ctx, uint64_t rid, const uint32_t *page_ids, uint32_t n_pages,
                       const uint8_t *token, uint32_t lease_ms, kvx_done_cb cb, void *arg,
                       mls_err *err)
{
    if (!ctx->pool_registered) {
        mls_err_set(err, "kvx_reserve(rid %llu): no KV pool registered", (unsigned long long)rid);
        return MLS_ERR_INVALID_ARG;
    }
    if (n_pages == 0 || page_ids == NULL || token == NULL || cb == NULL || lease_ms == 0) {
        mls_err_set(err, "kvx_reserve(rid %llu): need pages, a token, a callback and a lease",
                    (unsigned long long)rid);
        return MLS_ERR_INVALID_ARG;
    }
    for (uint32_t i = 0; i < n_pages; i++) {
        if (page_ids[i] >= ctx->pool_pages) {
            mls_err_set(err,
                        "kvx_reserve(rid %llu): page_ids[%u] = %u outside the pool of %u pages",
                        (unsigned long long)rid, i, page_ids[i], ctx->pool_pages);
            return MLS_ERR_INVALID_ARG;
        }
    }
    if (kvx_resv_find(ctx, rid) != NULL) {
        mls_err_set(err, "kvx_reserve: rid %llu is already reserved", (unsigned long long)rid);
        return MLS_ERR_INVALID_ARG;
    }
    uint32_t nl = ctx->cfg.n_layers;
    kvx_resv *r = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(*r));
    if (r == NULL) {
        goto err;
    }
    r->page_ids = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(uint32_t) * n_pages);
    r->n_pages = n_pages;
    r->layer_bytes = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(uint64_t) * nl);
    r->layer_state = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, nl);
    r->layer_hash = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(uint64_t) * nl);
    r->want_hash = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, sizeof(uint64_t) * nl);
    if (r->page_ids == NULL || r->layer_bytes == NULL || r->layer_state == NULL ||
        r->layer_hash == NULL || r->want_hash == NULL) {
        kvx_resv_free(ctx, r);
        goto err;
    }
    memcpy(r->page_ids, page_ids, sizeof(uint32_t) * n_pages);
    memcpy(r->token, token, KVX_TOKEN_BYTES);
    r->rid = rid;
    r->deadline_ns = mls_now_ns() + (uint64_t)lease_ms * 1000000ull;
    r->cb = cb;
    r->arg = arg;
    r->state = KVX_RESV_OPEN;
    uint32_t b = kvx_resv_bucket(rid);
    r->hnext = ctx->resv_hash[b];
    ctx->resv_hash[b] = r;
    r->next = ctx->resv_list;
    if (ctx->resv_list != NULL) {
        ctx->resv_list->prev = r;
    }
    ctx->resv_list = r;
    ctx->n_resv++;
    return MLS_OK;
err:
    mls_err_set(err, "kvx_reserve(rid %llu): out of memory", (unsigned long long)rid);
    return MLS_ERR_NO_MEMORY;
}

static void kvx_result_send(kvx_peer *peer, uint64_t rid, mls_status st, const char *why)
{
    if (peer == NULL || peer->state != KVX_PEER_READY) {
        return;
    }
    kvx_sop *sop = kvx_sop_new(peer->ctx, KVX_SOP_CTRL);
    if (sop == NULL) {
        mls_error("kvx: out of memory for the verdict of rid %llu", (unsigned long long)rid);
        return;
    }
    kvx_msg_result *m = (kvx_msg_result *)sop->hdr;
    m->rid = rid;
    m->status = (uint32_t)st;
    snprintf(m->why, sizeof(m->why), "%s", why != NULL ? why : "");
    kvx_am_send(peer, sop, KVX_AM_RESULT, sizeof(*m), UCP_AM_SEND_FLAG_EAGER);
}

/* The reservation's callback runs and it is gone. */
static void kvx_resv_finalize(kvx_ctx *ctx, kvx_resv *r)
{
    kvx_resv **pp = &ctx->resv_hash[kvx_resv_bucket(r->rid)];
    while (*pp != r) {
        pp = &(*pp)->hnext;
    }
    *pp = r->hnext;
    if (r->prev != NULL) {
        r->prev->next = r->next;
    } else {
        ctx->resv_list = r->next;
    }
    if (r->next != NULL) {
        r->next->prev = r->prev;
    }
    ctx->n_resv--;
    if (r->peer != NULL) {
        kvx_peer_unref(r->peer);
    }
    r->cb(r->arg, r->rid, r->end_status, r->end_status == MLS_OK ? NULL : r->end_why);
    kvx_resv_free(ctx, r);
}

/* Make the verdict: tell the sender (when notify), then call back as soon as
 * no receive into the pages is in flight. */
static void kvx_resv_end(kvx_ctx *ctx, kvx_resv *r, mls_status st, bool notify, const char *fmt,
                         ...) __attribute__((format(printf, 5, 6)));
static void kvx_resv_end(kvx_ctx *ctx, kvx_resv *r, mls_status st, bool notify, const char *fmt,
                         ...)
{
    if (r->state != KVX_RESV_OPEN) {
        return;
    }
    r->state = KVX_RESV_ENDING;
    r->end_status = st;
    ctx->ended[ctx->ended_next % KVX_ENDED_RING].rid = r->rid;
    ctx->ended[ctx->ended_next % KVX_ENDED_RING].status = st;
    ctx->ended_next++;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->end_why, sizeof(r->end_why), fmt, ap);
    va_end(ap);
    if (st != MLS_OK && st != MLS_ERR_CANCELED) {
        mls_warn("kvx: rid %llu: %s: %s", (unsigned long long)r->rid, mls_status_name(st),
                 r->end_why);
    }
    if (notify) {
        kvx_result_send(r->peer, r->rid, st, r->end_why);
    }
    if (r->inflight > 0 && st == MLS_ERR_TIMED_OUT && r->peer != NULL) {
        /* A receive from this sender is stuck (frozen process): drop the
         * endpoint, which fails the receive and frees the pages. */
        char why[KVX_WHY_LEN];
        snprintf(why, sizeof(why),
                 "sender %s stalled with a transfer in flight (lease of rid %llu "
                 "lapsed)",
                 r->peer->addr, (unsigned long long)r->rid);
        kvx_peer_fail(r->peer, MLS_ERR_TIMED_OUT, why);
    }
    if (r->inflight == 0) {
        kvx_resv_finalize(ctx, r);
    }
}

mls_status kvx_cancel(kvx_ctx *ctx, uint64_t rid)
{
    kvx_resv *r = kvx_resv_find(ctx, rid);
    if (r == NULL || r->state != KVX_RESV_OPEN) {
        return MLS_ERR_NOT_FOUND;
    }
    mls_debug("kvx: cancel rid %llu with %u receives in flight", (unsigned long long)rid,
              r->inflight);
    kvx_resv_end(ctx, r, MLS_ERR_CANCELED, true, "reservation canceled by the decode node");
    return MLS_OK;
}

/* XXH3 of tokens [0, n_tokens) of `layer` as laid out in the reservation's
 * pages; contiguous pages are hashed in one update. */
static uint64_t kvx_resv_hash_layer(kvx_ctx *ctx, const kvx_resv *r, uint32_t layer)
{
    const kvl_layout *lay = &ctx->cfg.layout;
    XXH3_state_t state;
    XXH3_INITSTATE(&state);
    XXH3_64bits_reset(&state);
    uint32_t t = 0;
    while (t < r->n_tokens) {
        uint32_t p = t / KVL_PAGE_TOKENS;
        uint32_t q = p;
        while ((q + 1) * KVL_PAGE_TOKENS < r->n_tokens &&
               r->page_ids[q + 1] == r->page_ids[q] + 1) {
            q++;
        }
        uint32_t end = (q + 1) * KVL_PAGE_TOKENS;
        if (end > r->n_tokens) {
            end = r->n_tokens;
        }
        const uint8_t *src = ctx->pool_base[layer] + kvl_page_offset(lay, r->page_ids[p]);
        XXH3_64bits_update(&state, src, (size_t)(end - t) * lay->row_bytes);
        t = end;
    }
    return XXH3_64bits_digest(&state);
}

static void kvx_resv_try_complete(kvx_ctx *ctx, kvx_resv *r)
{
    if (r->state != KVX_RESV_OPEN || !r->finished || r->inflight > 0) {
        return;
    }
    uint32_t nl = ctx->cfg.n_layers;
    for (uint32_t l = 0; l < nl; l++) {
        if (r->layer_state[l] == 0) {
            return; /* AM path: data still coming */
        }
    }
    for (uint32_t l = 0; l < nl; l++) {
        if (r->layer_state[l] == 1) {
            r->layer_hash[l] = kvx_resv_hash_layer(ctx, r, l);
            r->layer_state[l] = 2;
        }
        if (r->layer_hash[l] != r->want_hash[l]) {
            kvx_resv_end(ctx, r, MLS_ERR_CHECKSUM, true,
                         "layer %u: XXH3 of the received rows is %016llx, the sender's is %016llx",
                         l, (unsigned long long)r->layer_hash[l],
                         (unsigned long long)r->want_hash[l]);
            return;
        }
    }
    ctx->bytes_received += (uint64_t)r->n_tokens * ctx->cfg.layout.row_bytes * nl;
    kvx_resv_end(ctx, r, MLS_OK, true, "ok");
}

/* A layer's rows are all in the pages: hash it now, overlapping the transfer
 * of later layers. */
static void kvx_resv_layer_landed(kvx_ctx *ctx, kvx_resv *r, uint32_t layer)
{
    if (r->layer_state[layer] == 0) {
        r->layer_state[layer] = 1;
        if (r->n_tokens > 0) {
            r->layer_hash[layer] = kvx_resv_hash_layer(ctx, r, layer);
            r->layer_state[layer] = 2;
        }
    }
    kvx_resv_try_complete(ctx, r);
}

static void kvx_resv_bytes_landed(kvx_ctx *ctx, kvx_resv *r, uint32_t layer, uint64_t bytes)
{
    r->layer_bytes[layer] += bytes;
    if (r->layer_bytes[layer] == (uint64_t)r->n_tokens * ctx->cfg.layout.row_bytes) {
        kvx_resv_layer_landed(ctx, r, layer);
    }
}

static void kvx_recv_recv_done(kvx_sop *sop, ucs_status_t status)
{
    kvx_ctx *ctx = sop->ctx;
    kvx_resv *r = sop->resv;
    r->inflight--;
    if (status != UCS_OK) {
        kvx_resv_end(ctx, r, kvx_status_from_ucs(status), false, "receiving layer %u failed: %s",
                     sop->layer, ucs_status_string(status));
    } else if (r->state == KVX_RESV_OPEN) {
        kvx_resv_bytes_landed(ctx, r, sop->layer, sop->bytes);
        return;
    }
    if (r->state == KVX_RESV_ENDING && r->inflight == 0) {
        kvx_resv_finalize(ctx, r);
    }
}

static void kvx_recv_data_cb(void *request, ucs_status_t status, size_t length, void *user_data)
{
    kvx_sop_complete(user_data, status);
    ucp_request_free(request);
}

static void kvx_recv_lease_tick(kvx_ctx *ctx, uint64_t now_ns)
{
    kvx_resv *r = ctx->resv_list;
    while (r != NULL) {
        kvx_resv *next = r->next;
        if (r->state == KVX_RESV_OPEN && now_ns > r->deadline_ns) {
            uint32_t landed = 0;
            for (uint32_t l = 0; l < ctx->cfg.n_layers; l++) {
                landed += r->layer_state[l] != 0;
            }
            kvx_resv_end(ctx, r, MLS_ERR_TIMED_OUT, true,
                         "lease lapsed: %s, %u of %u layers landed",
                         r->peer ? "sender bound" : "no sender arrived", landed, ctx->cfg.n_layers);
        }
        r = next;
    }
}

static void kvx_recv_peer_failed(kvx_peer *peer)
{
    kvx_ctx *ctx = peer->ctx;
    kvx_resv *r = ctx->resv_list;
    while (r != NULL) {
        kvx_resv *next = r->next;
        if (r->peer == peer && r->state == KVX_RESV_OPEN) {
            kvx_resv_end(ctx, r, MLS_ERR_PEER_DEAD, false, "%s", peer->fail_why);
        }
        r = next;
    }
}

static void kvx_recv_destroy(kvx_ctx *ctx, bool force)
{
    kvx_resv *r = ctx->resv_list;
    while (r != NULL) {
        kvx_resv *next = r->next;
        if (r->state == KVX_RESV_OPEN) {
            kvx_resv_end(ctx, r, MLS_ERR_CANCELED, false, "transport shut down");
        } else if (force) {
            mls_warn("kvx: rid %llu: %u receives never completed", (unsigned long long)r->rid,
                     r->inflight);
            kvx_resv_finalize(ctx, r);
        }
        r = next;
    }
}

/* ---- messages from prefill nodes ----------------------------------------- */

static ucs_status_t kvx_recv_hello(kvx_ctx *ctx, kvx_peer *peer, const void *header,
                                   size_t header_length)
{
    kvx_sop *sop = kvx_sop_new(ctx, KVX_SOP_CTRL);
    if (sop == NULL) {
        mls_error("kvx: out of memory answering HELLO from %s", peer->addr);
        return UCS_OK;
    }
    kvx_msg_hello_reply *rep = (kvx_msg_hello_reply *)sop->hdr;
    memset(rep, 0, sizeof(*rep));
    rep->magic = KVX_WIRE_MAGIC;
    rep->n_layers = ctx->cfg.n_layers;
    rep->pool_pages = ctx->pool_pages;
    kvl_layout_encode(&ctx->cfg.layout, rep->layout);
    mls_status st = MLS_OK;
    const kvx_msg_hello *h = header;
    if (header_length != sizeof(*h) || h->magic != KVX_WIRE_MAGIC) {
        st = MLS_ERR_PEER_MISMATCH;
        snprintf(rep->why, sizeof(rep->why), "malformed HELLO (%zu bytes)", header_length);
    } else if (h->proto_version != KVX_PROTO_VERSION) {
        st = MLS_ERR_PEER_MISMATCH;
        snprintf(rep->why, sizeof(rep->why), "transfer protocol version %u, decode node speaks %u",
                 h->proto_version, KVX_PROTO_VERSION);
    } else if (h->n_layers != ctx->cfg.n_layers) {
        st = MLS_ERR_PEER_MISMATCH;
        snprintf(rep->why, sizeof(rep->why), "n_layers differs (decode node %u, prefill node %u)",
                 ctx->cfg.n_layers, h->n_layers);
    } else if (!ctx->pool_registered) {
        st = MLS_ERR_UNSUPPORTED;
        snprintf(rep->why, sizeof(rep->why), "decode node has no KV pool registered");
    } else {
        st = kvx_layout_check_wire(&ctx->cfg.layout, h->layout, rep->why, sizeof(rep->why));
    }
    rep->status = (uint32_t)st;
    if (st == MLS_OK) {
        /* No pools yet: a GRANT follows the first request proven here. */
        randombytes_buf(peer->nonce, sizeof(peer->nonce));
        memcpy(rep->nonce, peer->nonce, sizeof(rep->nonce));
        peer->state = KVX_PEER_READY;
        mls_debug("kvx: %s connected", peer->addr);
    } else {
        mls_warn("kvx: refusing prefill node %s: %s", peer->addr, rep->why);
    }
    kvx_am_send(peer, sop, KVX_AM_HELLO_REPLY, sizeof(*rep), UCP_AM_SEND_FLAG_EAGER);
    return UCS_OK;
}

/* The pools and their rkeys, once per connection, to a sender whose proof
 * for a request was accepted. */
static void kvx_recv_grant(kvx_ctx *ctx, kvx_peer *peer)
{
    kvx_sop *sop = kvx_sop_new(ctx, KVX_SOP_CTRL);
    void *blob = sop ? mls_alloc(MLS_ALLOC_TAG_TRANSPORT, ctx->rkey_blob_len) : NULL;
    if (blob == NULL) {
        kvx_sop_free(sop);
        kvx_peer_fail(peer, MLS_ERR_NO_MEMORY, "out of memory granting the pools");
        return;
    }
    memcpy(blob, ctx->rkey_blob, ctx->rkey_blob_len);
    sop->blob = blob;
    sop->blob_len = ctx->rkey_blob_len;
    kvx_msg_grant *g = (kvx_msg_grant *)sop->hdr;
    memset(g, 0, sizeof(*g));
    g->magic = KVX_WIRE_MAGIC;
    g->n_layers = ctx->cfg.n_layers;
    g->n_regions = ctx->n_wire_regions;
    peer->pools_sent = true;
    mls_debug("kvx: pools granted to %s", peer->addr);
    kvx_am_send(peer, sop, KVX_AM_GRANT, sizeof(*g), UCP_AM_SEND_FLAG_EAGER);
}

static void kvx_recv_begin(kvx_ctx *ctx, kvx_peer *peer, const kvx_msg_begin *m, const void *data,
                           size_t length)
{
    kvx_resv *r = kvx_resv_find(ctx, m->rid);
    char why[KVX_WHY_LEN];
    if (r == NULL || r->state != KVX_RESV_OPEN) {
        for (uint32_t i = 0; i < KVX_ENDED_RING && i < ctx->ended_next; i++) {
            uint32_t at = (ctx->ended_next - 1 - i) % KVX_ENDED_RING;
            if (ctx->ended[at].rid == m->rid && ctx->ended[at].status != MLS_OK) {
                snprintf(why, sizeof(why), "the reservation for rid %llu already ended: %s",
                         (unsigned long long)m->rid, mls_status_message(ctx->ended[at].status));
                kvx_result_send(peer, m->rid, ctx->ended[at].status, why);
                return;
            }
        }
        snprintf(why, sizeof(why),
                 "no open reservation for rid %llu on the decode node "
                 "(expired, canceled or never made)",
                 (unsigned long long)m->rid);
        kvx_result_send(peer, m->rid, MLS_ERR_NOT_FOUND, why);
        return;
    }
    /* Only the sender the router introduced (it knows the token) gets past
     * here; a refused one leaves the reservation open for that sender. */
    uint8_t mac[KVX_MAC_BYTES];
    kvx_begin_mac(r->token, peer->nonce, m, data, length, mac);
    int proof = crypto_verify_32(mac, m->mac);
    sodium_memzero(mac, sizeof(mac));
    if (proof != 0) {
        snprintf(why, sizeof(why),
                 "proof for rid %llu refused: %s does not hold the token the router issued "
                 "for it",
                 (unsigned long long)m->rid, peer->addr);
        mls_warn("kvx: %s", why);
        kvx_result_send(peer, m->rid, MLS_ERR_PEER_MISMATCH, why);
        return;
    }
    if (r->peer != NULL) {
        snprintf(why, sizeof(why), "rid %llu is already being sent by %s",
                 (unsigned long long)m->rid, r->peer->addr);
        kvx_result_send(peer, m->rid, MLS_ERR_INVALID_ARG, why);
        return;
    }
    r->peer = peer;
    peer->refs++;
    r->path = KVX_PATH_AM; /* until FINISH says which path the rows took */
    if ((m->flags & KVX_BEGIN_WANT_POOLS) && !peer->pools_sent) {
        kvx_recv_grant(ctx, peer);
        if (peer->state != KVX_PEER_READY) {
            return; /* failed: the reservation fails with it */
        }
    }
    if (m->n_layers != ctx->cfg.n_layers || m->n_pages != r->n_pages ||
        length != sizeof(uint32_t) * (size_t)m->n_pages || memcmp(data, r->page_ids, length) != 0 ||
        m->n_tokens > r->n_pages * KVL_PAGE_TOKENS) {
        kvx_resv_end(ctx, r, MLS_ERR_INVALID_ARG, true,
                     "request does not match the reservation (%u pages/%u tokens/%u layers "
                     "sent, %u pages reserved, %u layers here)",
                     m->n_pages, m->n_tokens, m->n_layers, r->n_pages, ctx->cfg.n_layers);
        return;
    }
    r->n_tokens = m->n_tokens;
}

/* Where tokens [tok_begin, +n_tokens) of `layer` live, if they are one
 * contiguous run in the reservation's pages. */
static uint8_t *kvx_resv_run_dst(kvx_ctx *ctx, const kvx_resv *r, uint32_t layer,
                                 uint32_t tok_begin, uint32_t n_tokens)
{
    const kvl_layout *lay = &ctx->cfg.layout;
    if (layer >= ctx->cfg.n_layers || n_tokens == 0 || tok_begin >= r->n_tokens ||
        n_tokens > r->n_tokens - tok_begin) {
        return NULL;
    }
    uint32_t p0 = tok_begin / KVL_PAGE_TOKENS;
    uint32_t p1 = (tok_begin + n_tokens - 1) / KVL_PAGE_TOKENS;
    for (uint32_t p = p0; p < p1; p++) {
        if (r->page_ids[p + 1] != r->page_ids[p] + 1) {
            return NULL;
        }
    }
    return kvl_row_ptr(lay, ctx->pool_base[layer], r->page_ids, tok_begin);
}

static ucs_status_t kvx_recv_data(kvx_ctx *ctx, kvx_peer *peer, const kvx_msg_rows *m, void *data,
                                  size_t length, const ucp_am_recv_param_t *param)
{
    kvx_resv *r = kvx_resv_find(ctx, m->rid);
    if (r == NULL || r->state != KVX_RESV_OPEN || r->peer != peer) {
        return UCS_OK; /* finished reservation: the run is dropped */
    }
    uint8_t *dst = kvx_resv_run_dst(ctx, r, m->layer, m->tok_begin, m->n_tokens);
    if (dst == NULL || length != (uint64_t)m->n_tokens * ctx->cfg.layout.row_bytes) {
        kvx_resv_end(ctx, r, MLS_ERR_INVALID_ARG, true,
                     "run of layer %u tokens [%u, +%u) (%zu bytes) does not fit the reservation",
                     m->layer, m->tok_begin, m->n_tokens, length);
        return UCS_OK;
    }
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        memcpy(dst, data, length);
        kvx_resv_bytes_landed(ctx, r, m->layer, length);
        return UCS_OK;
    }
    kvx_sop *sop = kvx_sop_new(ctx, KVX_SOP_RECV);
    if (sop == NULL) {
        kvx_resv_end(ctx, r, MLS_ERR_NO_MEMORY, true, "out of memory receiving a run");
        return UCS_OK;
    }
    sop->resv = r;
    sop->layer = m->layer;
    sop->bytes = length;
    r->inflight++;
    ucp_request_param_t rp = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.recv_am = kvx_recv_data_cb,
        .user_data = sop,
    };
    ucs_status_ptr_t q = ucp_am_recv_data_nbx(ctx->worker, data, dst, length, &rp);
    if (q == NULL) {
        kvx_sop_complete(sop, UCS_OK);
    } else if (UCS_PTR_IS_ERR(q)) {
        kvx_sop_complete(sop, UCS_PTR_STATUS(q));
    }
    return UCS_OK;
}

static ucs_status_t kvx_recv_am(kvx_ctx *ctx, unsigned id, const void *header, size_t header_length,
                                void *data, size_t length, const ucp_am_recv_param_t *param)
{
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP)) {
        mls_error("kvx: message %u without a reply endpoint; dropped", id);
        return UCS_OK;
    }
    kvx_peer *peer = kvx_peer_by_ep(ctx, param->reply_ep);
    if (peer == NULL || peer->is_client) {
        return UCS_OK; /* endpoint already failed, or one we opened as a sender */
    }
    kvx_msg_any hbuf;
    if (header_length > sizeof(hbuf)) {
        mls_error("kvx: message %u from %s with a %zu-byte header; dropped", id, peer->addr,
                  header_length);
        return UCS_OK;
    }
    memcpy(&hbuf, header, header_length);
    header = &hbuf;
    if (id == KVX_AM_HELLO) {
        return kvx_recv_hello(ctx, peer, header, header_length);
    }
    if (peer->state != KVX_PEER_READY) {
        return UCS_OK; /* refused at connect */
    }
    bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    switch ((kvx_am_id)id) {
    case KVX_AM_BEGIN:
        if (header_length == sizeof(kvx_msg_begin) && !rndv) {
            kvx_recv_begin(ctx, peer, header, data, length);
        }
        return UCS_OK;
    case KVX_AM_DATA:
        if (header_length == sizeof(kvx_msg_rows)) {
            return kvx_recv_data(ctx, peer, header, data, length, param);
        }
        return UCS_OK;
    case KVX_AM_LAYER: {
        const kvx_msg_rows *m = header;
        kvx_resv *r = header_length == sizeof(*m) ? kvx_resv_find(ctx, m->rid) : NULL;
        if (r != NULL && r->peer == peer && r->state == KVX_RESV_OPEN &&
            m->layer < ctx->cfg.n_layers) {
            kvx_resv_layer_landed(ctx, r, m->layer);
        }
        return UCS_OK;
    }
    case KVX_AM_FINISH: {
        const kvx_msg_finish *m = header;
        kvx_resv *r = header_length == sizeof(*m) ? kvx_resv_find(ctx, m->rid) : NULL;
        if (r == NULL || r->peer != peer || r->state != KVX_RESV_OPEN || rndv) {
            return UCS_OK;
        }
        if (m->n_layers != ctx->cfg.n_layers || m->n_tokens != r->n_tokens ||
            length != sizeof(uint64_t) * ctx->cfg.n_layers) {
            kvx_resv_end(ctx, r, MLS_ERR_INVALID_ARG, true, "malformed completion message");
            return UCS_OK;
        }
        memcpy(r->want_hash, data, length);
        r->finished = true;
        r->path = m->path == KVX_PATH_RMA ? KVX_PATH_RMA : KVX_PATH_AM;
        if (r->path == KVX_PATH_RMA) {
            /* Sent after a flush of every put: all layers are in the pages. */
            for (uint32_t l = 0; l < ctx->cfg.n_layers; l++) {
                r->layer_state[l] = r->layer_state[l] ? r->layer_state[l] : 1;
            }
        }
        kvx_resv_try_complete(ctx, r);
        return UCS_OK;
    }
    case KVX_AM_CANCEL: {
        const kvx_msg_rows *m = header;
        kvx_resv *r = header_length == sizeof(*m) ? kvx_resv_find(ctx, m->rid) : NULL;
        if (r != NULL && r->peer == peer) {
            kvx_resv_end(ctx, r, MLS_ERR_CANCELED, false, "prefill node aborted the request");
        }
        return UCS_OK;
    }
    default:
        mls_error("kvx: unexpected message %u from %s", id, peer->addr);
        return UCS_OK;
    }
}

static bool kvx_recv_peer_busy(const kvx_peer *peer)
{
    for (kvx_resv *r = peer->ctx->resv_list; r != NULL; r = r->next) {
        if (r->peer == peer && r->state == KVX_RESV_OPEN) {
            return true;
        }
    }
    return false;
}

void kvx_recv_attach(kvx_ctx *ctx)
{
    static const kvx_side_ops ops = {
        .name = "recv",
        .sop_done = kvx_recv_recv_done,
        .peer_failed = kvx_recv_peer_failed,
        .peer_busy = kvx_recv_peer_busy,
        .tick = kvx_recv_lease_tick,
        .destroy = kvx_recv_destroy,
    };
    static const kvx_am_id ids[] = {KVX_AM_HELLO, KVX_AM_BEGIN,  KVX_AM_DATA,
                                    KVX_AM_LAYER, KVX_AM_FINISH, KVX_AM_CANCEL};
    kvx_ctx_register_side(ctx, KVX_SIDE_RECV, &ops);
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        kvx_ctx_register_handler(ctx, ids[i], kvx_recv_am);
    }
}
