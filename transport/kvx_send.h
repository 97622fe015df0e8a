/*
 * kvx_send.h - the prefill side of the KV transfer (kvx_send.c) as kvx.c
 * attaches it; its public functions (kvx_req_create, kvx_send_layer, ...) are
 * in kvx.h.
 */
#ifndef MLS_KVX_SEND_H
#define MLS_KVX_SEND_H

#include "kvx_internal.h"

/* Registers the sender's side ops and its message handlers (HELLO_REPLY,
 * RESULT) with the context. */
void kvx_send_attach(kvx_ctx *ctx);

#endif
