/*
 * kvx_recv.h - the decode side of the KV transfer (kvx_recv.c) as kvx.c
 * attaches it; its public functions (kvx_listen, kvx_reserve, ...) are in
 * kvx.h.
 */
#ifndef MLS_KVX_RECV_H
#define MLS_KVX_RECV_H

#include "kvx_internal.h"

/* Registers the receiver's side ops and its message handlers (HELLO, BEGIN,
 * DATA, LAYER, FINISH, CANCEL) with the context. */
void kvx_recv_attach(kvx_ctx *ctx);

#endif
