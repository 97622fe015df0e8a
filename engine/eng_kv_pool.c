/*
 * eng_kv_pool.c - the paged latent KV pool and sequence page tables.
 *
 * One allocation per layer (n_pages * page_bytes), carved into pages; a free
 * stack of page ids shared by every layer, so a sequence's page table is valid
 * in all of them. Page ids are what the transport and the router exchange.
 */
#include <stdlib.h>
#include <string.h>

#include "eng_internal.h"
#include "eng_v4_forward.h"
#include "mls_alloc.h"
#include "mls_buf.h"
#include "mls_log.h"

/* Layer memory on `device`: bases (the caller's), or from mem (that device's
 * backend) when bases is NULL. */
static mls_status eng_kv_pool_new(const kvl_layout *layout, int32_t n_layers, uint32_t n_pages,
                                  eng_device device, const eng_backend_ops *mem,
                                  uint8_t *const *bases, eng_kv_pool **pool_p, mls_err *err)
{
    mls_status st = MLS_ERR_NO_MEMORY;
    eng_kv_pool *pool;
    int32_t l;

    if (n_layers <= 0 || n_pages == 0) {
        mls_err_set(err, "kv pool: %d layers of %u pages", n_layers, n_pages);
        return MLS_ERR_INVALID_ARG;
    }
    pool = mls_alloc(MLS_ALLOC_TAG_KV_POOL, sizeof(*pool));
    if (pool == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    pool->layout = *layout;
    pool->n_layers = n_layers;
    pool->n_pages = n_pages;
    pool->layer_bytes = (uint64_t)n_pages * layout->page_bytes;
    pool->layer_base = mls_alloc(MLS_ALLOC_TAG_KV_POOL, sizeof(uint8_t *) * (size_t)n_layers);
    pool->free_list = mls_alloc(MLS_ALLOC_TAG_KV_POOL, sizeof(uint32_t) * n_pages);
    if (pool->layer_base == NULL || pool->free_list == NULL) {
        goto err_free_tables;
    }
    pool->owns_memory = bases == NULL;
    pool->mem = mem;
    pool->device = device;
    for (l = 0; l < n_layers; l++) {
        void *base = NULL;
        if (bases != NULL) {
            base = bases[l];
        } else if ((st = mem->mem_alloc(MLS_ALLOC_TAG_KV_POOL, pool->layer_bytes, &base, err))) {
            goto err_free_layers;
        }
        pool->layer_base[l] = base;
    }
    /* pop order 0, 1, 2, ...: the stack holds ids in reverse */
    for (uint32_t i = 0; i < n_pages; i++) {
        pool->free_list[i] = n_pages - 1 - i;
    }
    pool->n_free = n_pages;
    pthread_mutex_init(&pool->lock, NULL);
    *pool_p = pool;
    return MLS_OK;

err_free_layers:
    while (pool->owns_memory && l-- > 0) {
        mem->mem_free(MLS_ALLOC_TAG_KV_POOL, pool->layer_base[l], pool->layer_bytes);
    }
err_free_tables:
    if (st == MLS_ERR_NO_MEMORY) {
        mls_err_set(err, "kv pool: out of memory for %d layers of %u pages", n_layers, n_pages);
    }
    mls_free(MLS_ALLOC_TAG_KV_POOL, pool->free_list, sizeof(uint32_t) * n_pages);
    mls_free(MLS_ALLOC_TAG_KV_POOL, pool->layer_base, sizeof(uint8_t *) * (size_t)n_layers);
    mls_free(MLS_ALLOC_TAG_KV_POOL, pool, sizeof(*pool));
    return st;
}

mls_status eng_kv_pool_create(const kvl_layout *layout, int32_t n_layers, uint32_t n_pages,
                              eng_kv_pool **pool_p)
{
    return eng_kv_pool_new(layout, n_layers, n_pages, ENG_DEVICE_CPU, &eng_backend_cpu, NULL,
                           pool_p, NULL);
}

mls_status eng_kv_pool_create_opts(const kvl_layout *layout, int32_t n_layers, uint32_t n_pages,
                                   const eng_kv_pool_opts *opts, eng_kv_pool **pool_p,
                                   mls_err *err)
{
    eng_kv_pool_opts host = {ENG_DEVICE_CPU, 0, NULL};
    const eng_backend_ops *mem;
    mls_status st;

    if (opts == NULL) {
        opts = &host;
    }
    if ((st = eng_device_check(opts->device, opts->index, err)) != MLS_OK ||
        (st = eng_backend_get(opts->device, &mem, err)) != MLS_OK) {
        return st;
    }
    return eng_kv_pool_new(layout, n_layers, n_pages, opts->device, mem, opts->bases, pool_p, err);
}

mls_status eng_kv_pool_create_external(const kvl_layout *layout, int32_t n_layers, uint32_t n_pages,
                                       uint8_t *const *bases, eng_kv_pool **pool_p)
{
    if (bases == NULL) {
        return MLS_ERR_INVALID_ARG;
    }
    return eng_kv_pool_new(layout, n_layers, n_pages, ENG_DEVICE_CPU, NULL, bases, pool_p, NULL);
}

eng_device eng_kv_pool_device(const eng_kv_pool *pool)
{
    return pool->device;
}

void eng_kv_pool_destroy(eng_kv_pool *pool)
{
    if (pool == NULL) {
        return;
    }
    for (int32_t l = 0; pool->owns_memory && l < pool->n_layers; l++) {
        pool->mem->mem_free(MLS_ALLOC_TAG_KV_POOL, pool->layer_base[l], pool->layer_bytes);
    }
    pthread_mutex_destroy(&pool->lock);
    mls_free(MLS_ALLOC_TAG_KV_POOL, pool->free_list, sizeof(uint32_t) * pool->n_pages);
    mls_free(MLS_ALLOC_TAG_KV_POOL, pool->layer_base, sizeof(uint8_t *) * (size_t)pool->n_layers);
    mls_free(MLS_ALLOC_TAG_KV_POOL, pool, sizeof(*pool));
}

const kvl_layout *eng_kv_pool_layout(const eng_kv_pool *pool)
{
    return &pool->layout;
}

int32_t eng_kv_pool_layers(const eng_kv_pool *pool)
{
    return pool->n_layers;
}

uint8_t *eng_kv_pool_layer_base(const eng_kv_pool *pool, int32_t layer)
{
    return pool->layer_base[layer];
}

uint8_t *eng_kv_pool_page(const eng_kv_pool *pool, int32_t layer, uint32_t page)
{
    return pool->layer_base[layer] + kvl_page_offset(&pool->layout, page);
}

mls_status eng_kv_pool_alloc(eng_kv_pool *pool, uint32_t n, uint32_t *pages_p)
{
    mls_status st = MLS_OK;

    pthread_mutex_lock(&pool->lock);
    if (n > pool->n_free) {
        st = MLS_ERR_BUSY;
    } else {
        for (uint32_t i = 0; i < n; i++) {
            pages_p[i] = pool->free_list[--pool->n_free];
        }
    }
    pthread_mutex_unlock(&pool->lock);
    return st;
}

void eng_kv_pool_free(eng_kv_pool *pool, const uint32_t *pages, uint32_t n)
{
    pthread_mutex_lock(&pool->lock);
    for (uint32_t i = 0; i < n; i++) {
        if (pages[i] >= pool->n_pages || pool->n_free >= pool->n_pages) {
            /* impossible but survivable: never corrupt the free stack */
            mls_error("kv pool: ignoring free of page %u (pages %u, free %u)", pages[i],
                      pool->n_pages, pool->n_free);
            continue;
        }
        pool->free_list[pool->n_free++] = pages[i];
    }
    pthread_mutex_unlock(&pool->lock);
}

uint32_t eng_kv_pool_pages_total(const eng_kv_pool *pool)
{
    return pool->n_pages;
}

uint32_t eng_kv_pool_pages_free(const eng_kv_pool *pool)
{
    uint32_t n;
    pthread_mutex_lock((pthread_mutex_t *)&pool->lock);
    n = pool->n_free;
    pthread_mutex_unlock((pthread_mutex_t *)&pool->lock);
    return n;
}

uint64_t eng_kv_pool_bytes_per_token(const eng_kv_pool *pool)
{
    return (uint64_t)pool->layout.row_bytes * (uint64_t)pool->n_layers;
}

void eng_seq_init(eng_seq *seq)
{
    memset(seq, 0, sizeof(*seq));
}

static mls_status eng_seq_grow_table(eng_seq *seq, uint32_t need)
{
    return mls_array_reserve(&seq->pages, &seq->cap_pages, need, sizeof(uint32_t),
                             MLS_ALLOC_TAG_KV_POOL);
}

mls_status eng_seq_reserve(eng_seq *seq, eng_kv_pool *pool, int32_t n_tokens)
{
    uint32_t need = (uint32_t)kvl_kind_pages(&pool->layout, KVL_KIND_LATENT, (uint64_t)n_tokens);
    mls_status st;

    if (n_tokens < 0) {
        return MLS_ERR_INVALID_ARG;
    }
    if (need <= seq->n_pages) {
        return MLS_OK;
    }
    st = eng_seq_grow_table(seq, need);
    if (st != MLS_OK) {
        return st;
    }
    st = eng_kv_pool_alloc(pool, need - seq->n_pages, seq->pages + seq->n_pages);
    if (st != MLS_OK) {
        return st;
    }
    seq->n_pages = need;
    return MLS_OK;
}

mls_status eng_seq_adopt(eng_seq *seq, const uint32_t *pages, uint32_t n, int32_t n_tokens)
{
    mls_status st = eng_seq_grow_table(seq, seq->n_pages + n);

    if (st != MLS_OK) {
        return st;
    }
    memcpy(seq->pages + seq->n_pages, pages, sizeof(uint32_t) * n);
    seq->n_pages += n;
    seq->n_tokens = n_tokens;
    return MLS_OK;
}

void eng_seq_release(eng_seq *seq, eng_kv_pool *pool)
{
    eng_v4_state_destroy(seq->v4);
    if (seq->n_pages > 0) {
        eng_kv_pool_free(pool, seq->pages, seq->n_pages);
    }
    mls_array_free(&seq->pages, &seq->cap_pages, sizeof(uint32_t), MLS_ALLOC_TAG_KV_POOL);
    eng_seq_init(seq);
}
