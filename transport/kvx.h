/*
 * kvx.h - KV transfer: ship a request's latent KV pages from a prefill node
 * into the pages a decode node reserved for it, layer by layer, over UCX.
 *
 * One context per process, bound to one libuv loop (the node's control loop):
 * the UCX worker's event fd is watched with uv_poll, a uv_timer ticks leases,
 * and a uv_async wakes the loop when compute threads hand it work. Every
 * callback below runs on that loop thread.
 *
 * Decode side (receiver)
 *   kvx_ctx_create -> [kvx_pool_alloc] -> kvx_pool_register -> kvx_listen ->
 *   kvx_reserve(rid, page ids, token, lease) ... done callback ... ->
 *   kvx_ctx_destroy.
 *   The KV pools belong to the caller (its engine's page pool): one pool per
 *   layer, page p of layer l at pool_base[l] + p * layout.page_bytes. The
 *   caller picks the page ids of a reservation from its own allocator.
 *   Page ownership: from kvx_reserve until the reservation's done callback the
 *   transport may write into those pages; after the callback it never touches
 *   them again (see "Known limit" below) and the caller may free or use them.
 *   The callback fires exactly once per reservation:
 *     MLS_OK               all layers arrived and every per-layer XXH3 matched:
 *                          the rows are ready to decode
 *     MLS_ERR_CHECKSUM     a layer's bytes differ from what the sender hashed
 *     MLS_ERR_PEER_DEAD    the sender's endpoint failed (killed, link lost)
 *     MLS_ERR_TIMED_OUT    the lease lapsed before the transfer completed
 *     MLS_ERR_CANCELED     kvx_cancel
 *     MLS_ERR_INVALID_ARG  the sender's request did not match the reservation
 *   A lease that lapses while a receive from the sender is stuck in flight (a
 *   frozen prefill process) also drops that sender's endpoint, so the receive
 *   fails and the pages come back; its other reservations end TIMED_OUT too.
 *   Receiver calls (kvx_reserve, kvx_cancel, kvx_listen, kvx_pool_*) are made
 *   on the loop thread.
 *
 * Prefill side (sender)
 *   kvx_req_create(peer "ip:port", rid, token, page ids, n_tokens) -> for each layer,
 *   as soon as its rows exist: kvx_send_layer (one or more token chunks, in
 *   token order) -> kvx_finish -> done callback -> kvx_req_release.
 *   Sender calls are thread-safe and never block on the network: they hash the
 *   rows on the calling thread and queue the work to the loop. Endpoints are
 *   created on demand and cached per peer address.
 *   Source ownership: rows passed to kvx_send_layer stay valid and unchanged
 *   until the request's done callback, which runs only once no UCX operation
 *   reads them any more (operations stuck 2 s after the verdict get their
 *   endpoint dropped). The request handle stays valid until both the callback
 *   has run and the caller called kvx_req_release.
 *   The sender callback carries the receiver's verdict (MLS_OK, CHECKSUM,
 *   TIMED_OUT, CANCELED, INVALID_ARG, PEER_MISMATCH when the proof of the
 *   token was refused) or a local failure (PEER_DEAD, PEER_MISMATCH when the
 *   decode node refused our KV layout, CANCELED after kvx_req_abort).
 *
 * Paths (ops table inside): RMA - ucp_put_nbx into the registered pages, flush
 * per layer, then active messages; AM - rendezvous active message per
 * coalesced run of contiguous destination pages, received straight into the
 * pages. KVX_PATH_AUTO probes after connecting: RMA when the decode node's
 * pools are mapped into this process by shared memory (ucp_rkey_ptr works for
 * every layer) or the endpoint's RMA lane is RDMA/CMA/KNEM/XPMEM; AM otherwise
 * (TCP, whose put UCX 1.13 emulates slowly). MLS_KVX_PATH=rma|am overrides.
 * Shared memory reaches only memory UCX allocated: a decode node that wants
 * shared-memory RMA carves its KV pools from kvx_pool_alloc (plain registered
 * memory needs CMA/XPMEM/RDMA; UCX 1.13 picked no CMA lane in this container).
 *
 * Connect: the sender's layout and layer count go to the decode node in a
 * HELLO active message; a decode node whose layout differs (fingerprint,
 * dtype, page size, version, ...) refuses and the sender's requests fail with
 * MLS_ERR_PEER_MISMATCH naming the field. Otherwise the reply carries a fresh
 * random nonce for this connection (and no pool addresses, no rkeys).
 *
 * Introduction: only a sender the router introduced may write a reservation's
 * pages. The router draws a random token (KVX_TOKEN_BYTES) per request and
 * hands it to the decode node (kvx_reserve) and to the prefill node
 * (kvx_req_create); the token itself never crosses the transport. A request
 * opens with BEGIN carrying MAC = BLAKE2b-256 keyed by the token over (the
 * connection's nonce, rid, n_tokens, n_layers, page ids); the decode node
 * checks it in constant time before binding the sender to the reservation,
 * and every later message of the request (rows, layer marks, completion,
 * cancel) is accepted only from the bound sender. A missing or wrong proof
 * fails that sender's request with MLS_ERR_PEER_MISMATCH ("proof refused");
 * nothing is written and the reservation stays open for the sender the router
 * introduced. A proof is bound to the connection's nonce, so it cannot be
 * replayed on another connection.
 * RMA: the pool addresses and rkeys (the capability to put into the pools)
 * go to a sender only in a GRANT, after the first request it proved on that
 * connection was accepted; until then the sender holds its rows back (one
 * round trip on a new connection; KVX_PATH_AM never asks for them). UCX cannot
 * scope an rkey to one reservation: a granted sender - one that was introduced
 * for at least one request - can put into any page of the pools until its
 * connection closes (see "Known limit").
 *
 * Memory types: KVX_MEM_HOST works. KVX_MEM_CUDA is registered directly when
 * the UCX in use reports CUDA memory support; otherwise it needs pinned host
 * staging, which comes with the CUDA backend: until then kvx_pool_register
 * returns MLS_ERR_UNSUPPORTED for it (Debian's UCX 1.13 has no CUDA support).
 *
 * Known limit: UCX cannot revoke one reservation's remote access, so on the
 * RMA path a sender that resumes after its lease lapsed, or that has puts in
 * flight when the reservation is canceled, may still write into those pages
 * until it sees the receiver's verdict; likewise a granted sender's rkeys
 * reach the whole pool, not just the reservations it proved. The AM path is
 * safe: the receiver decides where data lands, only for the proven sender,
 * and drops runs of finished reservations.
 *
 * Interfaces: with cfg.bind_ip set, UCX's network transports (TCP and any
 * other) use only the interface holding that address (UCX_NET_DEVICES, set
 * in the context's configuration unless the operator set UCX_NET_DEVICES),
 * so no UCX socket listens on another interface; loopback ("lo") for
 * 127.0.0.1.
 *
 * Failure detection needs UCX_MM_ERROR_HANDLING=y (shared memory with peer
 * error handling) and a keepalive well under a second; kvx_ctx_create sets
 * both in the environment before ucp_init unless the operator set them.
 * Connections are made with ucp_listener/sockaddr, which in UCX 1.13 needs a
 * sockaddr-capable transport (tcp) in UCX_TLS even when the data moves over
 * shared memory: use e.g. UCX_TLS=posix,cma,tcp,self, not posix,cma,self.
 *
 * transport/ owns moving KV rows between processes (UCX); it may include
 * common/ only: it knows the KV layout (common/mls_kv_layout.h) but nothing
 * of the engine, the protobuf control plane or the roles.
 */
#ifndef MLS_KVX_H
#define MLS_KVX_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "mls_kv_layout.h"
#include "mls_status.h"

#define KVX_PROTO_VERSION 3u
#define KVX_TOKEN_BYTES   32u /* the router's per-request secret */
#define KVX_MAX_LAYERS    256u

typedef struct kvx_ctx kvx_ctx;
typedef struct kvx_req kvx_req;

typedef enum {
    KVX_MEM_HOST,
    KVX_MEM_CUDA,
} kvx_mem_type;

typedef enum {
    KVX_PATH_AUTO, /* probe the endpoint's transports */
    KVX_PATH_RMA,
    KVX_PATH_AM,
} kvx_path;

typedef enum {
    KVX_TEST_NONE = 0,
    /* Sender: flip one byte of each request's first run on the wire, after the
     * checksum was taken (exercises the receiver's verification). */
    KVX_TEST_CORRUPT_PAYLOAD = 1u << 0,
} kvx_test_flags;

typedef struct {
    uv_loop_t *loop;         /* caller-owned; outlives the context */
    kvl_layout layout;       /* the KV layout this node produces/consumes */
    uint32_t n_layers;       /* layers per request, <= KVX_MAX_LAYERS */
    kvx_path path;           /* sender path choice; AUTO probes */
    uint32_t tick_ms;        /* lease/housekeeping tick; 0 = 10 ms */
    uint32_t req_timeout_ms; /* sender: a request with no verdict this long after
                                kvx_req_create fails MLS_ERR_TIMED_OUT and, if operations
                                are stuck, drops the endpoint (UCX does not notice a
                                frozen decode node); 0 = wait for ever */
    uint32_t test_flags;     /* kvx_test_flags; 0 in production */
    const char *bind_ip;     /* numeric IPv4 of the interface UCX may use (the node's
                                listen address); NULL or "0.0.0.0" = every interface */
} kvx_config;

/* Fires once per reservation (receiver) or request (sender), on the loop.
 * why: the human-readable cause for an error, NULL on MLS_OK. */
typedef void (*kvx_done_cb)(void *arg, uint64_t rid, mls_status status, const char *why);

/* Create the UCX context and worker and hook them into cfg->loop. */
mls_status kvx_ctx_create(const kvx_config *cfg, kvx_ctx **ctx_p, mls_err *err);
/* Fail every open reservation and request (MLS_ERR_CANCELED), close endpoints,
 * run the loop until the handles are closed, release UCX. Loop thread only;
 * the loop must not be running another uv_run at the same time. */
void kvx_ctx_destroy(kvx_ctx *ctx);

/* ---- decode side (loop thread) ------------------------------------------ */

/* Memory from UCX (shared-memory capable for host, so shm peers write it with
 * a plain copy), registered; for KV pools. Freed by kvx_pool_free or at
 * kvx_ctx_destroy. */
mls_status kvx_pool_alloc(kvx_ctx *ctx, kvx_mem_type mem, size_t bytes, void **ptr_p, mls_err *err);
void kvx_pool_free(kvx_ctx *ctx, void *ptr);

/* Register the receiving pools once: pool_base[l] (n_layers pointers) each
 * holds n_pages pages of layout.page_bytes. Caller-owned memory, or carved
 * from kvx_pool_alloc (then no second registration is made). */
mls_status kvx_pool_register(kvx_ctx *ctx, kvx_mem_type mem, void *const *pool_base,
                             uint32_t n_pages, mls_err *err);

/* Listen on ip:port (port 0 picks one); the bound port in *port_p. */
mls_status kvx_listen(kvx_ctx *ctx, const char *ip, uint16_t port, uint16_t *port_p, mls_err *err);

/* Reserve pages for request rid (unique among open reservations): page_ids
 * (n_pages entries, copied) hold tokens 0.. in order, 64 per page. token
 * (KVX_TOKEN_BYTES, copied): the router's secret for this request; only a
 * sender proving it may write the pages. */
mls_status kvx_reserve(kvx_ctx *ctx, uint64_t rid, const uint32_t *page_ids, uint32_t n_pages,
                       const uint8_t *token, uint32_t lease_ms, kvx_done_cb cb, void *arg,
                       mls_err *err);
/* Cancel an open reservation and tell the sender. Its callback runs with
 * MLS_ERR_CANCELED before this returns - or, on the AM path, as soon as the
 * runs whose receive had already started have landed (later ones are
 * dropped). MLS_ERR_NOT_FOUND if the reservation is not open. */
mls_status kvx_cancel(kvx_ctx *ctx, uint64_t rid);

/* ---- prefill side (any thread) ------------------------------------------ */

/* Start a request towards peer "ip:port": rid, page_ids and token
 * (KVX_TOKEN_BYTES) as the router gave them to the decode node (both copied);
 * n_tokens rows per layer will be sent. */
mls_status kvx_req_create(kvx_ctx *ctx, const char *peer, uint64_t rid, const uint8_t *token,
                          const uint32_t *page_ids, uint32_t n_pages, uint32_t n_tokens,
                          kvx_done_cb cb, void *arg, kvx_req **req_p, mls_err *err);
/* Rows of `layer` for tokens [tok_begin, tok_begin + n_tokens): rows is
 * (n_tokens, row_bytes) contiguous. A layer's chunks come in token order from
 * one thread at a time. MLS_ERR_CANCELED/PEER_DEAD/... once the request has
 * failed (nothing queued then). */
mls_status kvx_send_layer(kvx_req *req, uint32_t layer, uint32_t tok_begin, uint32_t n_tokens,
                          const void *rows, mls_err *err);
/* All layers sent: queue the completion (per-layer checksums), ordered after
 * the data. MLS_ERR_INVALID_ARG when a layer is incomplete. */
mls_status kvx_finish(kvx_req *req, mls_err *err);
/* Give up on the request: its callback runs with MLS_ERR_CANCELED (unless it
 * already ran) and the receiver is told. */
void kvx_req_abort(kvx_req *req);
/* Drop the caller's reference (after the callback may have run or not). */
void kvx_req_release(kvx_req *req);

/* ---- introspection (loop thread) ---------------------------------------- */

typedef struct {
    uint32_t reservations_open; /* receiver: reservations not yet called back */
    uint32_t requests_open;     /* sender: requests not yet called back */
    uint32_t peers;             /* cached endpoints (both sides) */
    uint64_t bytes_received;    /* receiver: bytes landed and verified */
    uint64_t bytes_sent;        /* sender: bytes issued */
} kvx_stats;

void kvx_ctx_stats(kvx_ctx *ctx, kvx_stats *stats_p);
/* Path a connected peer uses ("rma"/"am"), or NULL when not connected yet. */
const char *kvx_peer_path(kvx_ctx *ctx, const char *peer);
const char *kvx_path_name(kvx_path path);

#endif
