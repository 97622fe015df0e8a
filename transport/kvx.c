/*
 * kvx.c - the transport's entry point: a context (kvx_ctx.c) with the
 * sender (kvx_send.c) and the receiver (kvx_recv.c) attached. Every context
 * has both sides; a node uses the one its role needs.
 */
#include "kvx_recv.h"
#include "kvx_send.h"

mls_status kvx_ctx_create(const kvx_config *cfg, kvx_ctx **ctx_p, mls_err *err)
{
    kvx_ctx *ctx;
    mls_status st = kvx_ctx_open(cfg, &ctx, err);
    if (st != MLS_OK) {
        return st;
    }
    /* no peer can exist yet: the handlers are in place before any message */
    kvx_send_attach(ctx);
    kvx_recv_attach(ctx);
    *ctx_p = ctx;
    return MLS_OK;
}
