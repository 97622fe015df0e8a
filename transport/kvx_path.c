/*
 * kvx_path.c - the two transfer paths behind one ops table, the coalescing of
 * a chunk of rows into runs of contiguous destination pages, and the probe
 * that picks a path from the transports an endpoint really uses.
 *
 *   RMA: ucp_put_nbx of each run into the decode node's registered pool; when
 *        a layer's runs are issued, ucp_ep_flush_nbx, then a LAYER message so
 *        the decode node can verify that layer while later ones are in flight.
 *   AM:  one rendezvous active message per run; the decode node receives it
 *        with ucp_am_recv_data_nbx straight into the pages and counts bytes.
 * Either way the FINISH message goes out only after every operation of the
 * request completed, so it is ordered after the data.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvx_path.h"
#include "mls_alloc.h"
#include "mls_log.h"

static mls_status kvx_issue_result(kvx_req *req, kvx_sop *sop, ucs_status_ptr_t r)
{
    if (r == NULL) {
        kvx_sop_complete(sop, UCS_OK);
        return MLS_OK;
    }
    if (UCS_PTR_IS_ERR(r)) {
        kvx_sop_complete(sop, UCS_PTR_STATUS(r));
        return kvx_status_from_ucs(UCS_PTR_STATUS(r));
    }
    return MLS_OK;
}

static void kvx_path_send_cb(void *request, ucs_status_t status, void *user_data)
{
    kvx_sop_complete(user_data, status);
    ucp_request_free(request);
}

static mls_status kvx_rma_send_run(kvx_req *req, uint32_t layer, uint32_t tok_begin,
                                   uint32_t n_tokens, const uint8_t *src, uint64_t dst_off)
{
    kvx_peer *peer = req->peer;
    size_t len = (size_t)n_tokens * req->ctx->cfg.layout.row_bytes;
    kvx_sop *sop = kvx_sop_new(req->ctx, KVX_SOP_DATA);
    if (sop == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    sop->req = req;
    sop->layer = layer;
    sop->bytes = len;
    const kvx_wire_pool *pool = &peer->pools[layer];
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = kvx_path_send_cb,
        .user_data = sop,
    };
    req->outstanding++;
    req->ctx->bytes_sent += len;
    ucs_status_ptr_t r =
        ucp_put_nbx(peer->ep, src, len, pool->base + dst_off, peer->rkeys[pool->region], &param);
    return kvx_issue_result(req, sop, r);
}

static mls_status kvx_rma_layer_issued(kvx_req *req, uint32_t layer)
{
    kvx_sop *sop = kvx_sop_new(req->ctx, KVX_SOP_FLUSH);
    if (sop == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    sop->req = req;
    sop->layer = layer;
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = kvx_path_send_cb,
        .user_data = sop,
    };
    req->outstanding++;
    ucs_status_ptr_t r = ucp_ep_flush_nbx(req->peer->ep, &param);
    return kvx_issue_result(req, sop, r);
}

static mls_status kvx_am_send_run(kvx_req *req, uint32_t layer, uint32_t tok_begin,
                                  uint32_t n_tokens, const uint8_t *src, uint64_t dst_off)
{
    size_t len = (size_t)n_tokens * req->ctx->cfg.layout.row_bytes;
    kvx_sop *sop = kvx_sop_new(req->ctx, KVX_SOP_DATA);
    if (sop == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    sop->req = req;
    sop->layer = layer;
    sop->bytes = len;
    kvx_msg_rows *m = (kvx_msg_rows *)sop->hdr;
    m->rid = req->rid;
    m->layer = layer;
    m->tok_begin = tok_begin;
    m->n_tokens = n_tokens;
    ucp_request_param_t param = {
        .op_attr_mask =
            UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = kvx_path_send_cb,
        .user_data = sop,
        .flags = UCP_AM_SEND_FLAG_RNDV | UCP_AM_SEND_FLAG_REPLY,
    };
    req->outstanding++;
    req->ctx->bytes_sent += len;
    ucs_status_ptr_t r =
        ucp_am_send_nbx(req->peer->ep, KVX_AM_DATA, sop->hdr, sizeof(*m), src, len, &param);
    return kvx_issue_result(req, sop, r);
}

static mls_status kvx_am_layer_issued(kvx_req *req, uint32_t layer)
{
    return MLS_OK; /* the decode node counts the bytes of each layer */
}

const kvx_path_ops kvx_path_rma_ops = {
    .name = "rma",
    .send_run = kvx_rma_send_run,
    .layer_issued = kvx_rma_layer_issued,
};

const kvx_path_ops kvx_path_am_ops = {
    .name = "am",
    .send_run = kvx_am_send_run,
    .layer_issued = kvx_am_layer_issued,
};

/* Test hook: the first run of the request goes out of a copy with one byte
 * flipped, after the checksum was taken from the caller's rows. */
static const uint8_t *kvx_corrupt_run(kvx_req *req, const uint8_t *src, size_t len)
{
    req->scratch = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, len);
    if (req->scratch == NULL) {
        return src;
    }
    req->scratch_len = len;
    memcpy(req->scratch, src, len);
    req->scratch[len / 2] ^= 0x5a;
    req->corrupted = true;
    return req->scratch;
}

mls_status kvx_req_issue_rows(kvx_req *req, uint32_t layer, uint32_t tok_begin, uint32_t n_tokens,
                              const uint8_t *rows)
{
    const kvx_path_ops *ops =
        req->peer->path == KVX_PATH_RMA ? &kvx_path_rma_ops : &kvx_path_am_ops;
    const kvl_layout *lay = &req->ctx->cfg.layout;
    uint32_t end = tok_begin + n_tokens;
    uint32_t t = tok_begin;
    while (t < end) {
        /* extend the run over pages whose ids follow each other */
        uint32_t p = t / KVL_PAGE_TOKENS;
        uint32_t q = p;
        while ((q + 1) * KVL_PAGE_TOKENS < end && req->page_ids[q + 1] == req->page_ids[q] + 1) {
            q++;
        }
        uint32_t run_end = (q + 1) * KVL_PAGE_TOKENS < end ? (q + 1) * KVL_PAGE_TOKENS : end;
        uint64_t dst_off = kvl_row_offset(lay, req->page_ids, t);
        const uint8_t *src = rows + (size_t)(t - tok_begin) * lay->row_bytes;
        if ((req->ctx->cfg.test_flags & KVX_TEST_CORRUPT_PAYLOAD) && !req->corrupted) {
            src = kvx_corrupt_run(req, src, (size_t)(run_end - t) * lay->row_bytes);
        }
        mls_status st = ops->send_run(req, layer, t, run_end - t, src, dst_off);
        if (st != MLS_OK || req->done) {
            return st;
        }
        t = run_end;
    }
    req->layer_issued[layer] += n_tokens;
    if (req->layer_issued[layer] == req->n_tokens) {
        return ops->layer_issued(req, layer);
    }
    return MLS_OK;
}

/* RMA where puts land fast: the decode node's pools are mapped into this
 * process by shared memory (ucp_rkey_ptr succeeds for every layer's rkey), or
 * the endpoint's RMA lane is RDMA / a kernel-assisted copy. AM otherwise,
 * e.g. TCP (UCX 1.13 emulates put over TCP slowly), or shared memory where the
 * pools are caller memory that only TCP can reach. The lanes come from
 * ucp_ep_print_info, lines like
 *   "lane[2]:  1:tcp/lo.0 md[1]  -> md[1]/tcp/sysdev[255] rma_bw#0 wireup". */
kvx_path kvx_path_probe(kvx_peer *peer)
{
    bool mapped = true;
    for (uint32_t l = 0; l < peer->ctx->cfg.n_layers && mapped; l++) {
        void *local = NULL;
        const kvx_wire_pool *pool = &peer->pools[l];
        mapped = ucp_rkey_ptr(peer->rkeys[pool->region], pool->base, &local) == UCS_OK;
    }
    kvx_path path = mapped ? KVX_PATH_RMA : KVX_PATH_AM;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL) {
        return path;
    }
    ucp_ep_print_info(peer->ep, f);
    fclose(f);
    mls_trace("kvx: lanes to %s:\n%s", peer->addr, buf);
    static const char *const fast[] = {"xpmem/", "cma/",      "knem/",     "rc_",
                                       "dc_",    "gdr_copy/", "cuda_ipc/", "rocm_ipc/"};
    for (char *line = strtok(buf, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (strstr(line, "lane[") == NULL || strstr(line, "rma_bw") == NULL) {
            continue;
        }
        for (size_t i = 0; i < sizeof(fast) / sizeof(fast[0]); i++) {
            if (strstr(line, fast[i]) != NULL) {
                path = KVX_PATH_RMA;
            }
        }
    }
    free(buf);
    mls_debug("kvx: probe of %s: pools %smapped, picked %s", peer->addr, mapped ? "" : "not ",
              kvx_path_name(path));
    return path;
}
