/*
 * kvx_internal.h - internals of the KV transfer: wire messages (the contract
 * between a prefill and a decode node, versioned by KVX_PROTO_VERSION), the
 * context, peers, reservations, requests, the table through which the two
 * sides plug into the context, and the context's functions (kvx_ctx.c).
 * Only the transport sources include this.
 *
 * The files layer like this, each using only the ones below it
 * (tools/check_includes.py checks it):
 *   kvx.c                  kvx_ctx_create: a context with both sides attached
 *   kvx_send.c, kvx_recv.c the prefill and the decode side (kvx_send.h, kvx_recv.h)
 *   kvx_path.c             the transfer paths the sender issues rows on (kvx_path.h)
 *   kvx_ctx.c, kvx_pool.c  the context, its loop, peers and operation records
 * A side registers its handlers with the context (kvx_ctx_register_side,
 * kvx_ctx_register_handler); the context never names a side's functions.
 */
#ifndef MLS_KVX_INTERNAL_H
#define MLS_KVX_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <ucp/api/ucp.h>
#include <uv.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t is embedded */
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h> /* XXH3 with runtime AVX2/AVX-512 selection: ~3x the SSE2 speed */
#endif

#include "kvx.h"

/* ---- wire ---------------------------------------------------------------- */

/* Active message ids. Headers are fixed-size little-endian structs (both ends
 * of a link run on the same architecture family; the HELLO magic catches a
 * byte-order mismatch). */
typedef enum {
    KVX_AM_HELLO = 0x6b76, /* sender -> receiver: our layout */
    KVX_AM_HELLO_REPLY,    /* receiver -> sender: verdict, connection nonce */
    KVX_AM_BEGIN,          /* sender -> receiver: request + proof of its token */
    KVX_AM_DATA,           /* sender -> receiver: one run of rows (AM path) */
    KVX_AM_LAYER,          /* sender -> receiver: a layer's puts landed (RMA path) */
    KVX_AM_FINISH,         /* sender -> receiver: per-layer checksums, after all data */
    KVX_AM_CANCEL,         /* sender -> receiver: request aborted */
    KVX_AM_RESULT,         /* receiver -> sender: the reservation's verdict */
    KVX_AM_GRANT,          /* receiver -> sender: pools, rkeys (after a proof) */
    KVX_AM_ID_END
} kvx_am_id;

#define KVX_AM_ID_COUNT ((unsigned)(KVX_AM_ID_END - KVX_AM_HELLO))
#define KVX_WIRE_MAGIC  0x4b565831u /* "KVX1" */
#define KVX_WHY_LEN     256
#define KVX_NONCE_BYTES 32u /* receiver's per-connection nonce */
#define KVX_MAC_BYTES   32u /* BLAKE2b-256 proof of a request's token */

/* The layouts travel in the KV contract's one wire form (kvl_layout_encode). */
typedef struct {
    uint32_t magic;
    uint32_t proto_version;
    uint32_t n_layers;
    uint32_t reserved;
    uint8_t layout[KVL_WIRE_BYTES];
} kvx_msg_hello;
_Static_assert(sizeof(kvx_msg_hello) == 16 + KVL_WIRE_BYTES, "kvx_msg_hello is 216 bytes");

/* No data: the pools come in a GRANT, once a request was proven. */
typedef struct {
    uint32_t magic;
    uint32_t status; /* mls_status: MLS_OK or the refusal */
    uint32_t n_layers;
    uint32_t pool_pages;
    uint8_t nonce[KVX_NONCE_BYTES]; /* random, this connection's: proofs cover it */
    uint8_t layout[KVL_WIRE_BYTES];
    char why[KVX_WHY_LEN];
} kvx_msg_hello_reply;
_Static_assert(sizeof(kvx_msg_hello_reply) == 16 + KVX_NONCE_BYTES + KVL_WIRE_BYTES + KVX_WHY_LEN,
               "kvx_msg_hello_reply size");

/* Followed (as AM data) by n_layers kvx_wire_pool, then n_regions times
 * (uint32 rkey length, rkey bytes). Sent once per connection, after the
 * first BEGIN with KVX_BEGIN_WANT_POOLS whose proof was accepted. */
typedef struct {
    uint32_t magic;
    uint32_t n_layers;
    uint32_t n_regions;
    uint32_t reserved;
} kvx_msg_grant;
_Static_assert(sizeof(kvx_msg_grant) == 16, "kvx_msg_grant is 16 bytes");

typedef struct {
    uint64_t base;   /* remote address of page 0 of the layer */
    uint32_t region; /* index of the rkey */
    uint32_t reserved;
} kvx_wire_pool;
_Static_assert(sizeof(kvx_wire_pool) == 16, "kvx_wire_pool is 16 bytes");

/* BEGIN flags */
#define KVX_BEGIN_WANT_POOLS 1u /* no GRANT on this connection yet: send one */

/* Followed by n_pages uint32 page ids. mac: kvx_begin_mac with the
 * request's token over the connection's nonce and these fields. */
typedef struct {
    uint64_t rid;
    uint32_t n_tokens;
    uint32_t n_pages;
    uint32_t n_layers;
    uint32_t flags; /* KVX_BEGIN_* */
    uint8_t mac[KVX_MAC_BYTES];
} kvx_msg_begin;
_Static_assert(sizeof(kvx_msg_begin) == 24 + KVX_MAC_BYTES, "kvx_msg_begin is 56 bytes");

/* DATA (rows of tokens [tok_begin, +n_tokens) of layer; the AM data), LAYER
 * (n_tokens = 0) and CANCEL (layer = n_tokens = 0). */
typedef struct {
    uint64_t rid;
    uint32_t layer;
    uint32_t tok_begin;
    uint32_t n_tokens;
    uint32_t reserved;
} kvx_msg_rows;
_Static_assert(sizeof(kvx_msg_rows) == 24, "kvx_msg_rows is 24 bytes");

/* Followed by n_layers uint64 XXH3-64 checksums of each layer's rows, tokens
 * 0..n_tokens-1 in order. */
typedef struct {
    uint64_t rid;
    uint32_t n_layers;
    uint32_t n_tokens;
    uint32_t path; /* kvx_path the rows took: KVX_PATH_RMA or KVX_PATH_AM */
    uint32_t reserved;
} kvx_msg_finish;
_Static_assert(sizeof(kvx_msg_finish) == 24, "kvx_msg_finish is 24 bytes");

typedef struct {
    uint64_t rid;
    uint32_t status; /* mls_status */
    uint32_t reserved;
    char why[KVX_WHY_LEN];
} kvx_msg_result;
_Static_assert(sizeof(kvx_msg_result) == 16 + KVX_WHY_LEN, "kvx_msg_result size");

/* Any message header, aligned: UCX hands headers over at any alignment, so
 * handlers copy them into this before reading fields. */
typedef union {
    kvx_msg_hello hello;
    kvx_msg_hello_reply hello_reply;
    kvx_msg_grant grant;
    kvx_msg_begin begin;
    kvx_msg_rows rows;
    kvx_msg_finish finish;
    kvx_msg_result result;
} kvx_msg_any;

/* ---- context ------------------------------------------------------------- */

typedef struct kvx_peer kvx_peer;
typedef struct kvx_resv kvx_resv;

/* One UCX operation in flight, owning its header and optional blob. */
typedef enum {
    KVX_SOP_DATA,     /* put or data AM of a request */
    KVX_SOP_FLUSH,    /* per-layer flush of a request (RMA) */
    KVX_SOP_CTRL,     /* control AM with no request attached */
    KVX_SOP_REQ_CTRL, /* control AM of a request (BEGIN/LAYER/FINISH) */
    KVX_SOP_RECV,     /* rendezvous receive into a reservation */
} kvx_sop_kind;

typedef struct {
    kvx_sop_kind kind;
    uint32_t layer;
    uint64_t bytes;
    kvx_req *req;   /* DATA/FLUSH/REQ_CTRL */
    kvx_resv *resv; /* RECV */
    kvx_ctx *ctx;
    void *blob; /* owned extra payload (page ids, checksums...) */
    size_t blob_len;
    uint8_t hdr[sizeof(kvx_msg_hello_reply)]; /* the AM header (at most the largest one),
                                                 alive until completion */
} kvx_sop;

typedef enum {
    KVX_PEER_CONNECTING, /* sender: waiting for HELLO_REPLY; receiver: for HELLO */
    KVX_PEER_READY,
    KVX_PEER_FAILED, /* endpoint error or refusal: closing */
} kvx_peer_state;

typedef struct kvx_op kvx_op;

struct kvx_peer {
    kvx_peer *next;
    kvx_ctx *ctx;
    ucp_ep_h ep;
    bool is_client; /* we connected (sender side) */
    kvx_peer_state state;
    bool closed; /* ucp_ep_close issued */
    bool close_done;
    uint32_t refs;                  /* requests/reservations bound + the cache */
    char addr[64];                  /* "ip:port" (client) or "accepted" */
    uint8_t nonce[KVX_NONCE_BYTES]; /* receiver: ours for this connection; sender: the
                                       decode node's, from HELLO_REPLY */
    bool pools_sent;                /* receiver: GRANT sent on this connection */
    bool rows_ready;                /* sender: path known (pools granted, or AM) */
    kvx_path path;
    mls_status fail_status;
    char fail_why[2 * KVX_WHY_LEN];
    /* sender: the decode node's pools */
    uint32_t n_regions;
    ucp_rkey_h *rkeys;    /* (n_regions) */
    kvx_wire_pool *pools; /* (n_layers) */
    uint32_t remote_pages;
    /* sender: operations waiting for HELLO_REPLY (any) or GRANT (rows,
     * finish), in order */
    kvx_op *pend_head, *pend_tail;
};

/* A reservation on the decode side. */
typedef enum {
    KVX_RESV_OPEN,
    KVX_RESV_ENDING, /* verdict made; waiting for in-flight receives */
} kvx_resv_state;

struct kvx_resv {
    kvx_resv *hnext;       /* hash chain */
    kvx_resv *next, *prev; /* all reservations (lease scan) */
    uint64_t rid;
    uint32_t *page_ids; /* (n_pages) */
    uint32_t n_pages;
    uint8_t token[KVX_TOKEN_BYTES]; /* the router's secret: BEGIN proves it */
    uint64_t deadline_ns;
    kvx_done_cb cb;
    void *arg;
    kvx_resv_state state;
    kvx_peer *peer; /* bound by a BEGIN whose proof was accepted */
    kvx_path path;
    uint32_t n_tokens;
    uint32_t inflight;     /* rendezvous receives */
    bool finished;         /* FINISH received */
    uint64_t *layer_bytes; /* (n_layers) bytes landed (AM) */
    uint8_t *layer_state;  /* (n_layers) 0 pending, 1 landed, 2 hashed */
    uint64_t *layer_hash;  /* (n_layers) our XXH3 of the landed rows */
    uint64_t *want_hash;   /* (n_layers) from FINISH */
    mls_status end_status;
    char end_why[KVX_WHY_LEN];
};

#define KVX_RESV_BUCKETS 256u
#define KVX_ENDED_RING   1024u

typedef struct {
    void *base;
    size_t len;
    ucp_mem_h memh;
    bool allocated; /* kvx_pool_alloc: UCX owns the memory */
    bool in_pool;   /* referenced by the registered pool */
} kvx_region;

#define KVX_MAX_REGIONS (KVX_MAX_LAYERS + 8u)

typedef enum {
    KVX_OP_BEGIN,
    KVX_OP_ROWS,
    KVX_OP_FINISH,
    KVX_OP_ABORT,
} kvx_op_type;

struct kvx_op {
    kvx_op *next;
    kvx_op_type type;
    kvx_req *req;
    uint32_t layer;
    uint32_t tok_begin;
    uint32_t n_tokens;
    const uint8_t *rows;
};

/* Sender request. Fields marked [caller] are touched only by the thread
 * calling kvx_send_layer/kvx_finish; [loop] only on the loop thread. */
struct kvx_req {
    kvx_ctx *ctx;
    atomic_int refs;   /* caller + loop + one per queued op */
    atomic_int status; /* MLS_OK while alive; the final status after */
    uint64_t rid;
    char peer_addr[64];
    uint8_t token[KVX_TOKEN_BYTES]; /* the router's secret; never sent */
    uint32_t *page_ids;             /* (n_pages) */
    uint32_t n_pages;
    uint32_t n_tokens;
    uint32_t n_layers;
    kvx_done_cb cb;
    void *arg;
    /* [caller] */
    uint32_t *layer_sent; /* (n_layers) tokens handed over */
    XXH3_state_t *hash;   /* (n_layers) running checksums */
    uint64_t *checksums;  /* (n_layers) final; read by the loop after FINISH op */
    bool finish_called;
    /* [loop] */
    kvx_req *lnext, *lprev; /* ctx->reqs */
    kvx_peer *peer;
    bool begun;
    bool finish_queued;
    bool finish_sent;
    bool done;            /* verdict made: no more sends */
    bool cb_called;       /* callback ran: only once no UCX op reads the rows */
    uint64_t deadline_ns; /* config.req_timeout_ms after create; 0 = none */
    mls_status end_status;
    uint64_t end_ns;
    char end_why[2 * KVX_WHY_LEN];
    bool corrupted;         /* test hook applied */
    uint32_t *layer_issued; /* (n_layers) tokens issued on the wire */
    uint32_t outstanding;   /* UCX ops referencing this request */
    uint8_t *scratch;       /* test hook copy */
    size_t scratch_len;
};

/* ---- the sides as the context sees them ---------------------------------- */

/* The sender (kvx_send.c) and the receiver (kvx_recv.c). A peer belongs to
 * the sender when peer->is_client; an operation record by its kind. */
typedef enum { KVX_SIDE_SEND, KVX_SIDE_RECV, KVX_SIDE_COUNT } kvx_side;

/* What the context asks of a side. A side fills one of these and registers it
 * with kvx_ctx_register_side from its attach function; NULL entries are
 * skipped. */
typedef struct {
    const char *name;
    /* Work a compute thread queued (kvx_queue_push); takes ownership of op. */
    void (*process_op)(kvx_ctx *ctx, kvx_op *op);
    /* One of the side's UCX operations completed; the context frees sop after. */
    void (*sop_done)(kvx_sop *sop, ucs_status_t status);
    /* One of the side's peers failed: fail what is bound to it. */
    void (*peer_failed)(kvx_peer *peer);
    /* Whether the side has work in flight on peer (a failure is then news). */
    bool (*peer_busy)(const kvx_peer *peer);
    /* The timer tick: leases, deadlines. */
    void (*tick)(kvx_ctx *ctx, uint64_t now_ns);
    /* Shutdown: once before the endpoints close, once with force after. */
    void (*destroy)(kvx_ctx *ctx, bool force);
} kvx_side_ops;

/* An active-message handler (UCX's receive callback with the context). */
typedef ucs_status_t (*kvx_am_handler_fn)(kvx_ctx *ctx, unsigned id, const void *header,
                                          size_t header_length, void *data, size_t length,
                                          const ucp_am_recv_param_t *param);

struct kvx_ctx {
    kvx_config cfg;
    uv_loop_t *loop;
    ucp_context_h ucp;
    ucp_worker_h worker;
    ucp_listener_h listener;
    uint64_t mem_types; /* UCX-supported memory types */
    int efd;
    uv_poll_t poll;
    uv_timer_t timer;
    uv_async_t async;
    int handles_open;
    struct kvx_am_arg {
        kvx_ctx *ctx;
        unsigned id;
    } am_arg[KVX_AM_ID_COUNT];
    kvx_am_handler_fn am_handler[KVX_AM_ID_COUNT]; /* by id - KVX_AM_HELLO; set by the sides */
    const kvx_side_ops *side[KVX_SIDE_COUNT];      /* set by the sides */
    bool in_drain;
    bool poll_paused; /* worker kept busy: progressed from the tick only */
    bool destroying;
    /* op queue from compute threads */
    pthread_mutex_t q_lock;
    kvx_op *q_head, *q_tail;
    /* peers (both roles) */
    kvx_peer *peers;
    /* receiver */
    kvx_region regions[KVX_MAX_REGIONS];
    uint32_t n_regions;
    bool pool_registered;
    kvx_mem_type pool_mem;
    uint8_t *pool_base[KVX_MAX_LAYERS];
    uint32_t pool_region[KVX_MAX_LAYERS];
    uint32_t pool_pages;
    void *rkey_blob; /* packed rkeys, sent in every HELLO_REPLY */
    size_t rkey_blob_len;
    uint32_t n_wire_regions; /* rkeys in the blob */
    kvx_resv *resv_hash[KVX_RESV_BUCKETS];
    kvx_resv *resv_list;
    uint32_t n_resv;
    /* verdicts of recently ended reservations, so a sender that arrives late
     * (after a cancel or a lapsed lease) hears why instead of "not found" */
    struct {
        uint64_t rid;
        mls_status status;
    } ended[KVX_ENDED_RING];
    uint32_t ended_next;
    uint64_t bytes_received;
    /* sender */
    kvx_req *reqs;
    uint32_t n_reqs;
    uint64_t bytes_sent;
};

/* kvx_ctx.c */
/* The context without its sides (kvx_ctx_create in kvx.c attaches them). */
mls_status kvx_ctx_open(const kvx_config *cfg, kvx_ctx **ctx_p, mls_err *err);
/* A side plugs in; ops stays alive while the context does. */
void kvx_ctx_register_side(kvx_ctx *ctx, kvx_side side, const kvx_side_ops *ops);
/* Messages with this id go to fn (one handler per id). */
void kvx_ctx_register_handler(kvx_ctx *ctx, kvx_am_id id, kvx_am_handler_fn fn);
void kvx_queue_push(kvx_ctx *ctx, kvx_op *op);
/* Detaches and returns the whole queue (oldest first, linked by next). */
kvx_op *kvx_queue_take(kvx_ctx *ctx);
void kvx_ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status);
kvx_peer *kvx_peer_by_ep(kvx_ctx *ctx, ucp_ep_h ep);
void kvx_drain_soon(kvx_ctx *ctx);
kvx_sop *kvx_sop_new(kvx_ctx *ctx, kvx_sop_kind kind);
void kvx_sop_free(kvx_sop *sop);
/* Send a control AM (header <= sizeof sop->hdr, blob owned by the sop). On
 * immediate completion or error the sop's completion runs before return. */
mls_status kvx_am_send(kvx_peer *peer, kvx_sop *sop, unsigned am_id, size_t hdr_len,
                       unsigned flags);
void kvx_peer_fail(kvx_peer *peer, mls_status st, const char *why);
void kvx_peer_unref(kvx_peer *peer);
void kvx_sop_complete(kvx_sop *sop, ucs_status_t status);
/* MLS_OK when a peer's layout (kvl_layout_encode's KVL_WIRE_BYTES at wire)
 * decodes and matches ours; else MLS_ERR_PEER_MISMATCH with why (len bytes)
 * naming the field that differs or what is malformed. */
mls_status kvx_layout_check_wire(const kvl_layout *ours, const uint8_t *wire, char *why,
                                 size_t len);
mls_status kvx_status_from_ucs(ucs_status_t st);
/* The proof a BEGIN carries: BLAKE2b-256 keyed by token (KVX_TOKEN_BYTES)
 * over a domain string, nonce (KVX_NONCE_BYTES), the header's rid,
 * n_tokens, n_pages, n_layers and the page ids (ids_len bytes as on the
 * wire). mac_p: KVX_MAC_BYTES. */
void kvx_begin_mac(const uint8_t *token, const uint8_t *nonce, const kvx_msg_begin *m,
                   const void *ids, size_t ids_len, uint8_t *mac_p);

#endif
