/*
 * decode_requests.c - the decode role on the loop thread: the KV pool in
 * transport memory, Reserve (pages + a transport reservation), the
 * transport's verdict on the KV that arrived, StartDecode, Cancel, and KV
 * that arrived for a request the router never started.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mls_log.h"
#include "mls_num.h"
#include "decode_internal.h"

#define DECODE_STALE_READY_MS 30000 /* KV arrived but StartDecode never came */

/* A disaggregated decode node (one with a transport) serves Reserve and
 * StartDecode; a colocated node only runs what its prefill role hands over. */
static bool decode_is_remote(const mls_node *n)
{
    return n->cfg.role == MLS_NODE_ROLE_DECODE;
}

/* The reservation finished: KV verified, or failed. */
static void decode_on_kv_done(void *arg, uint64_t rid, mls_status st, const char *why)
{
    mls_node *n = arg;
    node_job *job = node_job_find(n, rid);

    if (job == NULL) {
        return;
    }
    job->reserved = false;
    atomic_fetch_sub(&n->pages_reserved, job->n_pages);
    if (st != MLS_OK) {
        mls_warn("node: request %llu: KV transfer failed: %s (%s)", (unsigned long long)rid,
                 why ? why : "", mls_status_name(st));
        if (st != MLS_ERR_CANCELED) {
            node_job_fail(n, job, st, why ? why : mls_status_message(st));
        }
        eng_kv_pool_free(n->pool, job->pages, job->n_pages);
        node_job_free(n, job);
        return;
    }
    job->kv_ready = true;
    job->t_ready_ns = mls_now_ns();
    eng_seq_adopt(&job->seq, job->pages, job->n_pages, job->n_prompt);
    if (job->start_received) {
        node_compute_submit(n, job);
    }
}

/* Open the reservation for m; MLS_OK with *job_p, or a status with err set. */
static mls_status decode_reserve(mls_node *n, const Mlaserve__Reserve *m, node_job **job_p,
                                 mls_err *err)
{
    node_job *job;
    mls_status st;

    if (n->draining) {
        mls_err_set(err, "node is draining");
        return MLS_ERR_BUSY;
    }
    if (m->n_pages == 0 || m->n_pages > eng_kv_pool_pages_total(n->pool)) {
        mls_err_set(err, "%u pages requested, the pool has %u", m->n_pages,
                    eng_kv_pool_pages_total(n->pool));
        return MLS_ERR_TOO_LARGE;
    }
    if (node_job_find(n, m->request_id) != NULL) {
        mls_err_set(err, "request %llu is already open", (unsigned long long)m->request_id);
        return MLS_ERR_INVALID_ARG;
    }
    if ((job = node_job_new(n, m->request_id)) == NULL) {
        mls_err_set(err, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    if ((job->pages = malloc(sizeof(uint32_t) * m->n_pages)) == NULL) {
        mls_err_set(err, "out of memory");
        st = MLS_ERR_NO_MEMORY;
        goto err_free_job;
    }
    if ((st = eng_kv_pool_alloc(n->pool, m->n_pages, job->pages)) != MLS_OK) {
        mls_err_set(err, "%u pages requested, %u free", m->n_pages,
                    eng_kv_pool_pages_free(n->pool));
        goto err_free_job;
    }
    job->n_pages = m->n_pages;
    if (m->kv_token.len != KVX_TOKEN_BYTES) {
        mls_err_set(err, "Reserve carries a %zu-byte kv_token, want %u", m->kv_token.len,
                    KVX_TOKEN_BYTES);
        st = MLS_ERR_INVALID_ARG;
        goto err_free_pages;
    }
    st = kvx_reserve(n->kvx, m->request_id, job->pages, m->n_pages, m->kv_token.data,
                     m->lease_ms ? m->lease_ms : 10000, decode_on_kv_done, n, err);
    if (st != MLS_OK) {
        goto err_free_pages;
    }
    job->reserved = true;
    atomic_fetch_add(&n->pages_reserved, m->n_pages);
    *job_p = job;
    return MLS_OK;

err_free_pages:
    eng_kv_pool_free(n->pool, job->pages, m->n_pages);
    job->n_pages = 0;
err_free_job:
    node_job_free(n, job);
    return st;
}

static void decode_on_reserve(mls_node *n, const Mlaserve__Reserve *m)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Reserved r = MLASERVE__RESERVED__INIT;
    node_job *job = NULL;
    mls_err err = {{0}};
    mls_status st = decode_reserve(n, m, &job, &err);

    r.request_id = m->request_id;
    if (st != MLS_OK) {
        r.status = (int32_t)st;
        r.message = err.msg;
        mls_info("node: reserve %llu refused: %s", (unsigned long long)m->request_id, err.msg);
    } else {
        r.n_page_ids = job->n_pages;
        r.page_ids = job->pages;
        r.decode_address.data = (uint8_t *)n->xfer_addr;
        r.decode_address.len = strlen(n->xfer_addr);
        r.lease_ms = m->lease_ms;
    }
    env.msg_case = MLASERVE__ENVELOPE__MSG_RESERVED;
    env.reserved = &r;
    node_reply(n, &env);
}

static void decode_on_start(mls_node *n, const Mlaserve__StartDecode *m)
{
    node_job *job = node_job_find(n, m->request_id);

    if (job == NULL || job->start_received) {
        node_send_error(n, m->request_id, MLS_ERR_NOT_FOUND, "no reservation for this request");
        return;
    }
    if (m->n_prompt_tokens == 0 || (uint64_t)job->n_pages * KVL_PAGE_TOKENS < m->n_prompt_tokens) {
        node_send_error(n, m->request_id, MLS_ERR_INVALID_ARG,
                        "prompt does not fit the reservation");
        return;
    }
    node_job_fill_sampling(job, m->sampling);
    job->n_prompt = (int32_t)m->n_prompt_tokens;
    job->last_token = m->first_token_id;
    job->n_generated = m->n_generated;
    job->phase = NODE_PHASE_DECODE;
    job->start_received = true;
    if (job->kv_ready) {
        job->seq.n_tokens = job->n_prompt;
        node_compute_submit(n, job);
    }
}

static bool decode_on_msg(mls_node *n, const Mlaserve__Envelope *env)
{
    if (!decode_is_remote(n)) {
        return false; /* the runtime refuses what a colocated node does not serve */
    }
    switch (env->msg_case) {
    case MLASERVE__ENVELOPE__MSG_RESERVE:
        decode_on_reserve(n, env->reserve);
        return true;
    case MLASERVE__ENVELOPE__MSG_START_DECODE:
        decode_on_start(n, env->start_decode);
        return true;
    default:
        return false;
    }
}

static bool decode_on_cancel(mls_node *n, node_job *job)
{
    if (job->reserved) {
        kvx_cancel(n->kvx, job->rid); /* the callback frees pages and the job */
        return true;
    }
    if (job->kv_ready && !job->start_received) {
        node_job_free(n, job); /* frees the adopted pages */
        return true;
    }
    return false;
}

/* KV that arrived for a request the router never started: give it back. */
static void decode_on_tick(mls_node *n, uint64_t now)
{
    for (node_job *j = n->jobs, *next; j != NULL; j = next) {
        next = j->next_reg;
        if (j->kv_ready && !j->start_received &&
            now - j->t_ready_ns > (uint64_t)DECODE_STALE_READY_MS * 1000000ull) {
            mls_warn("node: request %llu: KV arrived but decode never started; freeing its pages",
                     (unsigned long long)j->rid);
            node_job_free(n, j);
        }
    }
}

/*
 * A disaggregated decode node's pool lives in memory the transport allocates
 * (so shared-memory peers can put into it directly), registered once, behind
 * a listener; a colocated node keeps the runtime's private pool.
 */
static mls_status decode_setup_pool(mls_node *n, mls_err *err)
{
    uint32_t n_layers = (uint32_t)eng_model_config(n->model)->num_hidden_layers;
    uint64_t bytes = (uint64_t)n->cfg.kv_pages * n->layout.page_bytes;
    uint8_t *bases[KVX_MAX_LAYERS];
    uint16_t port;
    mls_status st;

    if (n_layers > KVX_MAX_LAYERS) {
        mls_err_set(err, "%u layers: the transport handles at most %u", n_layers, KVX_MAX_LAYERS);
        return MLS_ERR_UNSUPPORTED;
    }
    for (uint32_t l = 0; l < n_layers; l++) {
        void *mem;
        if ((st = kvx_pool_alloc(n->kvx, KVX_MEM_HOST, bytes, &mem, err)) != MLS_OK) {
            return st;
        }
        bases[l] = mem;
    }
    if ((st = eng_kv_pool_create_external(&n->layout, (int32_t)n_layers, n->cfg.kv_pages, bases,
                                          &n->pool)) != MLS_OK ||
        (st = kvx_pool_register(n->kvx, KVX_MEM_HOST, (void *const *)bases, n->cfg.kv_pages,
                                err)) != MLS_OK ||
        (st = kvx_listen(n->kvx, n->cfg.listen_host, 0, &port, err)) != MLS_OK) {
        if (err->msg[0] == '\0') {
            mls_err_set(err, "cannot set up the KV pool: %s", mls_status_message(st));
        }
        return st;
    }
    snprintf(n->xfer_addr, sizeof(n->xfer_addr), "%s:%u", n->cfg.listen_host, port);
    return MLS_OK;
}

static mls_status decode_setup(mls_node *n, mls_err *err)
{
    decode_state *ds = calloc(1, sizeof(*ds));

    if (ds == NULL) {
        mls_err_set(err, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    n->role_state[NODE_PHASE_DECODE] = ds;
    return decode_is_remote(n) ? decode_setup_pool(n, err) : MLS_OK;
}

static void decode_teardown(mls_node *n)
{
    free(n->role_state[NODE_PHASE_DECODE]);
    n->role_state[NODE_PHASE_DECODE] = NULL;
}

const node_role_ops mls_decode_role = {
    .name = "decode",
    .phase = NODE_PHASE_DECODE,
    .setup = decode_setup,
    .teardown = decode_teardown,
    .on_msg = decode_on_msg,
    .on_cancel = decode_on_cancel,
    .on_tick = decode_on_tick,
    .compute_accept = decode_compute_accept,
    .compute_busy = decode_compute_busy,
    .compute_turn = decode_compute_turn,
    .compute_drain = decode_compute_drain,
};
