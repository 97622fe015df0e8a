/*
 * kvx_path.h - the transfer paths (kvx_path.c) the sender issues rows on:
 * RMA puts into the decode node's registered pool, or rendezvous active
 * messages; and the probe that picks one per endpoint. Used by kvx_send.c.
 */
#ifndef MLS_KVX_PATH_H
#define MLS_KVX_PATH_H

#include "kvx_internal.h"

/* A transfer path: how rows reach the destination pages. */
typedef struct {
    const char *name;
    /* Issue one coalesced run: src (n_tokens, row_bytes) to tokens
     * [tok_begin, +n_tokens) of `layer`, contiguous at byte offset dst_off of
     * the layer's remote pool. */
    mls_status (*send_run)(kvx_req *req, uint32_t layer, uint32_t tok_begin, uint32_t n_tokens,
                           const uint8_t *src, uint64_t dst_off);
    /* The layer's last run was issued. */
    mls_status (*layer_issued)(kvx_req *req, uint32_t layer);
} kvx_path_ops;

extern const kvx_path_ops kvx_path_rma_ops;
extern const kvx_path_ops kvx_path_am_ops;

/* Issue rows (n_tokens, row_bytes) of tokens [tok_begin, +n_tokens) of
 * `layer` on the request's path. MLS_ERR_NO_MEMORY: nothing issued, the
 * caller fails the request; a UCX error already failed it through the
 * operation's completion. */
mls_status kvx_req_issue_rows(kvx_req *req, uint32_t layer, uint32_t tok_begin, uint32_t n_tokens,
                              const uint8_t *rows);
/* The path for a connected peer (its pools and rkeys known). */
kvx_path kvx_path_probe(kvx_peer *peer);

#endif
