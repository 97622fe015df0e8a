/*
 * prefill_compute.c - the prefill role on the compute thread: one prompt per
 * turn, chunked by the engine; after each layer of a chunk its rows go to the
 * decode node's pages. Then the first token; a colocated node's sequence goes
 * on to the decode role in the same pool.
 */
#include <stdlib.h>

#include "mls_log.h"
#include "mls_num.h"
#include "prefill_internal.h"

typedef struct {
    mls_node *n;
    node_job *job;
    mls_status st;
} prefill_send_ctx;

/* Ship layer `layer`'s rows for positions [b, e), page run by page run. */
static void prefill_layer_send(void *arg, int32_t layer, int32_t b, int32_t e)
{
    prefill_send_ctx *pc = arg;
    const kvl_layout *layout = eng_kv_pool_layout(pc->n->pool);
    const uint8_t *base = eng_kv_pool_layer_base(pc->n->pool, layer);
    node_job *job = pc->job;

    if (pc->st != MLS_OK || atomic_load(&job->cancelled)) {
        return;
    }
    for (int32_t p = b; p < e;) {
        int32_t page_left = (int32_t)KVL_PAGE_TOKENS - p % (int32_t)KVL_PAGE_TOKENS;
        int32_t run = e - p < page_left ? e - p : page_left; /* rows of one page are contiguous */
        const uint8_t *rows = kvl_row_cptr(layout, base, job->seq.pages, (uint64_t)p);
        mls_err err = {{0}};
        mls_status st =
            kvx_send_layer(job->xreq, (uint32_t)layer, (uint32_t)p, (uint32_t)run, rows, &err);
        if (st != MLS_OK) {
            mls_warn("node: request %llu: sending layer %d failed: %s",
                     (unsigned long long)job->rid, layer, err.msg);
            pc->st = st;
            return;
        }
        p += run;
    }
}

static void prefill_run(mls_node *n, node_job *job)
{
    bool remote = job->decode_addr[0] != '\0';
    int32_t need =
        remote ? job->n_prompt : job->n_prompt + (int32_t)(job->max_tokens - job->n_generated) + 1;
    prefill_send_ctx pc = {n, job, MLS_OK};
    node_event *ev;
    float logprob = 0.0f;
    int32_t token, reason;
    uint64_t t0;
    mls_status st;
    bool finished;

    atomic_fetch_sub(&n->n_prefill_queued, 1);
    if (atomic_load(&job->cancelled)) {
        node_job_leave(n, job, false);
        return;
    }
    st = eng_seq_reserve(&job->seq, n->pool, need);
    if (st != MLS_OK) {
        node_post_error(n, job, MLS_ERR_BUSY, "no free KV pages for the prompt on this node");
        node_job_leave(n, job, false);
        return;
    }
    t0 = mls_now_ns();
    st = eng_prefill(n->ctx, &job->seq, job->prompt, job->n_prompt, false, n->logits,
                     remote ? prefill_layer_send : NULL, &pc);
    if (st == MLS_OK) {
        st = pc.st;
    }
    if (st != MLS_OK) {
        if (!atomic_load(&job->cancelled)) {
            node_post_error(n, job, st,
                            remote ? "KV transfer failed during prefill" : "prefill failed");
        }
        if (remote) {
            kvx_req_abort(job->xreq);
        }
        node_job_leave(n, job, remote);
        return;
    }
    atomic_fetch_add(&n->tokens_prefilled, (unsigned long long)job->n_prompt);
    finished = node_sample(n, job, n->logits, &token, &logprob, &reason);
    ev = node_token_event(n, job, NODE_EV_FIRST, token, logprob, n->logits);
    if (ev != NULL) {
        ev->prompt_tokens = (uint32_t)job->n_prompt;
        ev->ns = mls_now_ns() - t0;
        node_post(n, ev);
    }
    if (remote) {
        mls_err err = {{0}};
        if (kvx_finish(job->xreq, &err) != MLS_OK) {
            mls_warn("node: request %llu: finishing the transfer: %s", (unsigned long long)job->rid,
                     err.msg);
        }
        node_job_leave(n, job, true); /* the loop frees the pages once the transfer is done */
        return;
    }
    /* colocated: the decode role continues it in its batch */
    if (finished) {
        node_post_finish(n, job, reason);
        node_job_leave(n, job, false);
        return;
    }
    job->phase = NODE_PHASE_DECODE;
    node_compute_handoff(n, job);
}

void prefill_compute_accept(mls_node *n, node_job *job)
{
    prefill_state *ps = node_role_state(n, NODE_PHASE_PREFILL);
    node_job **tail = &ps->queue;

    while (*tail != NULL) {
        tail = &(*tail)->next_q;
    }
    job->next_q = NULL;
    *tail = job;
}

bool prefill_compute_busy(mls_node *n)
{
    prefill_state *ps = node_role_state(n, NODE_PHASE_PREFILL);
    return ps->queue != NULL;
}

void prefill_compute_turn(mls_node *n)
{
    prefill_state *ps = node_role_state(n, NODE_PHASE_PREFILL);
    node_job *job = ps->queue;

    if (job != NULL) {
        ps->queue = job->next_q;
        prefill_run(n, job);
    }
}

void prefill_compute_drain(mls_node *n)
{
    prefill_state *ps = node_role_state(n, NODE_PHASE_PREFILL);

    while (ps->queue != NULL) {
        node_job *job = ps->queue;
        ps->queue = job->next_q;
        node_job_leave(n, job, false);
    }
}
