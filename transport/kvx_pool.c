/*
 * kvx_pool.c - the decode node's KV pools as UCX sees them: memory allocated
 * through UCX (shared-memory capable) or caller memory registered once with
 * ucp_mem_map, the memory-type check (CUDA only where UCX reports it), and the
 * packed rkeys + per-layer base addresses sent to every prefill node.
 */
#include <stdio.h>
#include <string.h>

#include "kvx_internal.h"
#include "mls_alloc.h"
#include "mls_log.h"

/* ---- pools --------------------------------------------------------------- */

static int kvx_region_slot(kvx_ctx *ctx)
{
    for (uint32_t i = 0; i < ctx->n_regions; i++) {
        if (ctx->regions[i].memh == NULL) {
            return (int)i;
        }
    }
    return ctx->n_regions < KVX_MAX_REGIONS ? (int)ctx->n_regions++ : -1;
}

static mls_status kvx_mem_check(kvx_ctx *ctx, kvx_mem_type mem, ucs_memory_type_t *ucs_p,
                                mls_err *err)
{
    if (mem == KVX_MEM_HOST) {
        *ucs_p = UCS_MEMORY_TYPE_HOST;
        return MLS_OK;
    }
    if (mem == KVX_MEM_CUDA) {
        if (ctx->mem_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) {
            *ucs_p = UCS_MEMORY_TYPE_CUDA;
            return MLS_OK;
        }
        mls_err_set(err,
                    "kvx: the UCX in use reports no CUDA memory support; CUDA KV pools "
                    "need staging through pinned host buffers, which comes with the CUDA backend");
        return MLS_ERR_UNSUPPORTED;
    }
    mls_err_set(err, "kvx: memory type %d unknown", (int)mem);
    return MLS_ERR_INVALID_ARG;
}

mls_status kvx_pool_alloc(kvx_ctx *ctx, kvx_mem_type mem, size_t bytes, void **ptr_p, mls_err *err)
{
    ucs_memory_type_t ucs_mem;
    mls_status st = kvx_mem_check(ctx, mem, &ucs_mem, err);
    if (st != MLS_OK) {
        return st;
    }
    int slot = kvx_region_slot(ctx);
    if (slot < 0 || bytes == 0) {
        mls_err_set(err, "kvx_pool_alloc: %s", bytes == 0 ? "size 0" : "too many regions");
        return MLS_ERR_INVALID_ARG;
    }
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS | UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE,
        .address = NULL,
        .length = bytes,
        .flags = UCP_MEM_MAP_ALLOCATE,
        .memory_type = ucs_mem,
    };
    ucp_mem_h memh;
    ucs_status_t us = ucp_mem_map(ctx->ucp, &mp, &memh);
    if (us != UCS_OK) {
        mls_err_set(err, "kvx_pool_alloc: ucp_mem_map(%zu bytes): %s", bytes,
                    ucs_status_string(us));
        return MLS_ERR_NO_MEMORY;
    }
    ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH};
    us = ucp_mem_query(memh, &ma);
    if (us != UCS_OK) {
        ucp_mem_unmap(ctx->ucp, memh);
        mls_err_set(err, "kvx_pool_alloc: ucp_mem_query: %s", ucs_status_string(us));
        return MLS_ERR_INTERNAL;
    }
    ctx->regions[slot] =
        (kvx_region){.base = ma.address, .len = ma.length, .memh = memh, .allocated = true};
    *ptr_p = ma.address;
    return MLS_OK;
}

void kvx_pool_free(kvx_ctx *ctx, void *ptr)
{
    for (uint32_t i = 0; i < ctx->n_regions; i++) {
        kvx_region *r = &ctx->regions[i];
        if (r->memh != NULL && r->allocated && r->base == ptr) {
            if (r->in_pool) {
                mls_error("kvx_pool_free: %p is the registered KV pool; freed at kvx_ctx_destroy",
                          ptr);
                return;
            }
            ucp_mem_unmap(ctx->ucp, r->memh);
            memset(r, 0, sizeof(*r));
            return;
        }
    }
    mls_error("kvx_pool_free: %p was not allocated by kvx_pool_alloc", ptr);
}

/* Build the HELLO_REPLY blob: n_layers kvx_wire_pool, then per pool region
 * (uint32 length, packed rkey). */
static mls_status kvx_pool_pack(kvx_ctx *ctx, mls_err *err)
{
    uint32_t n_layers = ctx->cfg.n_layers;
    int wire_of[KVX_MAX_REGIONS];
    uint32_t n_wire = 0;
    void *packed[KVX_MAX_REGIONS];
    size_t packed_len[KVX_MAX_REGIONS];
    mls_status st = MLS_OK;
    for (uint32_t i = 0; i < ctx->n_regions; i++) {
        wire_of[i] = -1;
    }
    size_t len = sizeof(kvx_wire_pool) * n_layers;
    for (uint32_t i = 0; i < ctx->n_regions; i++) {
        if (!ctx->regions[i].in_pool) {
            continue;
        }
        ucs_status_t us =
            ucp_rkey_pack(ctx->ucp, ctx->regions[i].memh, &packed[n_wire], &packed_len[n_wire]);
        if (us != UCS_OK) {
            mls_err_set(err, "kvx: ucp_rkey_pack: %s", ucs_status_string(us));
            st = MLS_ERR_INTERNAL;
            goto out_release;
        }
        len += sizeof(uint32_t) + packed_len[n_wire];
        wire_of[i] = (int)n_wire++;
    }
    uint8_t *blob = mls_alloc(MLS_ALLOC_TAG_TRANSPORT, len);
    if (blob == NULL) {
        mls_err_set(err, "kvx: out of memory for the rkey blob");
        st = MLS_ERR_NO_MEMORY;
        goto out_release;
    }
    kvx_wire_pool *pools = (kvx_wire_pool *)blob;
    for (uint32_t l = 0; l < n_layers; l++) {
        pools[l].base = (uint64_t)(uintptr_t)ctx->pool_base[l];
        pools[l].region = (uint32_t)wire_of[ctx->pool_region[l]];
    }
    uint8_t *p = blob + sizeof(kvx_wire_pool) * n_layers;
    for (uint32_t w = 0; w < n_wire; w++) {
        uint32_t l32 = (uint32_t)packed_len[w];
        memcpy(p, &l32, sizeof(l32));
        memcpy(p + sizeof(l32), packed[w], packed_len[w]);
        p += sizeof(l32) + packed_len[w];
    }
    ctx->rkey_blob = blob;
    ctx->rkey_blob_len = len;
    ctx->n_wire_regions = n_wire;
out_release:
    for (uint32_t w = 0; w < n_wire; w++) {
        ucp_rkey_buffer_release(packed[w]);
    }
    return st;
}

mls_status kvx_pool_register(kvx_ctx *ctx, kvx_mem_type mem, void *const *pool_base,
                             uint32_t n_pages, mls_err *err)
{
    if (ctx->pool_registered) {
        mls_err_set(err, "kvx_pool_register: the KV pool is already registered");
        return MLS_ERR_INVALID_ARG;
    }
    if (pool_base == NULL || n_pages == 0) {
        mls_err_set(err, "kvx_pool_register: no pool (base %p, %u pages)", (void *)pool_base,
                    n_pages);
        return MLS_ERR_INVALID_ARG;
    }
    ucs_memory_type_t ucs_mem;
    mls_status st = kvx_mem_check(ctx, mem, &ucs_mem, err);
    if (st != MLS_OK) {
        return st;
    }
    size_t len = (size_t)n_pages * ctx->cfg.layout.page_bytes;
    for (uint32_t l = 0; l < ctx->cfg.n_layers; l++) {
        uint8_t *base = pool_base[l];
        if (base == NULL) {
            mls_err_set(err, "kvx_pool_register: pool_base[%u] is NULL", l);
            return MLS_ERR_INVALID_ARG;
        }
        int found = -1;
        for (uint32_t i = 0; i < ctx->n_regions && found < 0; i++) {
            kvx_region *r = &ctx->regions[i];
            if (r->memh != NULL && base >= (uint8_t *)r->base &&
                base + len <= (uint8_t *)r->base + r->len) {
                found = (int)i;
            }
        }
        if (found < 0) {
            found = kvx_region_slot(ctx);
            if (found < 0) {
                mls_err_set(err, "kvx_pool_register: too many regions");
                return MLS_ERR_INVALID_ARG;
            }
            ucp_mem_map_params_t mp = {
                .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                              UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE,
                .address = base,
                .length = len,
                .memory_type = ucs_mem,
            };
            ucp_mem_h memh;
            ucs_status_t us = ucp_mem_map(ctx->ucp, &mp, &memh);
            if (us != UCS_OK) {
                mls_err_set(err, "kvx_pool_register: ucp_mem_map(layer %u, %zu bytes): %s", l, len,
                            ucs_status_string(us));
                return MLS_ERR_NO_MEMORY; /* regions mapped so far are unmapped at destroy */
            }
            ctx->regions[found] = (kvx_region){.base = base, .len = len, .memh = memh};
        }
        ctx->regions[found].in_pool = true;
        ctx->pool_base[l] = base;
        ctx->pool_region[l] = (uint32_t)found;
    }
    ctx->pool_pages = n_pages;
    ctx->pool_mem = mem;
    st = kvx_pool_pack(ctx, err);
    if (st != MLS_OK) {
        return st;
    }
    ctx->pool_registered = true;
    return MLS_OK;
}
