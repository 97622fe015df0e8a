/*
 * decode_batch.c - the decode role on the compute thread: the continuous
 * batch. Each turn admits waiting sequences up to max_batch, runs one decode
 * step over every running sequence, samples, and sweeps out what finished or
 * was cancelled so its pages return at once.
 */
#include <stdlib.h>

#include "mlaserve.pb-c.h"
#include "decode_internal.h"

#define DECODE_MAX_BATCH 1024 /* the CLI's bound on --max-batch */

void decode_compute_accept(mls_node *n, node_job *job)
{
    decode_state *ds = node_role_state(n, NODE_PHASE_DECODE);
    node_job **tail = &ds->waiting;

    while (*tail != NULL) {
        tail = &(*tail)->next_q;
    }
    job->next_q = NULL;
    *tail = job;
    atomic_fetch_add(&n->n_waiting, 1);
}

bool decode_compute_busy(mls_node *n)
{
    decode_state *ds = node_role_state(n, NODE_PHASE_DECODE);
    return ds->running != NULL || ds->waiting != NULL;
}

static void decode_admit_waiting(mls_node *n, decode_state *ds)
{
    while (ds->waiting != NULL && atomic_load(&n->n_running) < n->cfg.max_batch) {
        node_job *job = ds->waiting;
        ds->waiting = job->next_q;
        job->next_q = ds->running;
        ds->running = job;
        atomic_fetch_sub(&n->n_waiting, 1);
        atomic_fetch_add(&n->n_running, 1);
    }
}

/* Take the jobs flagged cancelled (finished ones are flagged too) out of a
 * list; they leave compute and their pages return. */
static void decode_sweep(mls_node *n, node_job **list, atomic_uint *count)
{
    node_job **pp = list;

    while (*pp != NULL) {
        node_job *job = *pp;
        if (atomic_load(&job->cancelled)) {
            *pp = job->next_q;
            atomic_fetch_sub(count, 1);
            node_job_leave(n, job, false);
            continue;
        }
        pp = &job->next_q;
    }
}

static void decode_step(mls_node *n, decode_state *ds)
{
    const eng_config *c = eng_model_config(n->model);
    eng_seq *seqs[DECODE_MAX_BATCH];
    int32_t ids[DECODE_MAX_BATCH];
    node_job *batch[DECODE_MAX_BATCH];
    int32_t cnt = 0;
    node_job **pp = &ds->running;

    /* drop canceled or full sequences, collect the batch */
    while (*pp != NULL) {
        node_job *job = *pp;
        bool full = (int64_t)job->seq.n_pages * KVL_PAGE_TOKENS <= job->seq.n_tokens;
        if (atomic_load(&job->cancelled) || full || cnt == DECODE_MAX_BATCH) {
            if (full && !atomic_load(&job->cancelled)) {
                node_post_finish(n, job, MLASERVE__FINISH_REASON__FINISH_REASON_LENGTH);
            }
            if (atomic_load(&job->cancelled) || full) {
                *pp = job->next_q;
                atomic_fetch_sub(&n->n_running, 1);
                node_job_leave(n, job, false);
                continue;
            }
        }
        seqs[cnt] = &job->seq;
        ids[cnt] = job->last_token;
        batch[cnt++] = job;
        pp = &job->next_q;
    }
    if (cnt == 0) {
        return;
    }
    if (eng_decode_step(n->ctx, seqs, ids, cnt, n->logits) != MLS_OK) {
        for (int32_t i = 0; i < cnt; i++) {
            node_post_error(n, batch[i], MLS_ERR_INTERNAL, "decode step failed");
            atomic_store(&batch[i]->cancelled, true);
        }
        return;
    }
    for (int32_t i = 0; i < cnt; i++) {
        node_job *job = batch[i];
        const float *logits = n->logits + (int64_t)i * c->vocab_size;
        int32_t token, reason;
        float logprob;
        bool finished = node_sample(n, job, logits, &token, &logprob, &reason);
        node_event *ev = node_token_event(n, job, NODE_EV_TOKEN, token, logprob, logits);

        atomic_fetch_add(&n->tokens_generated, 1);
        if (ev != NULL) {
            node_post(n, ev);
        }
        if (finished) {
            node_post_finish(n, job, reason);
            atomic_store(&job->cancelled, true); /* swept below */
        }
    }
    decode_sweep(n, &ds->running, &n->n_running);
}

void decode_compute_turn(mls_node *n)
{
    decode_state *ds = node_role_state(n, NODE_PHASE_DECODE);

    decode_admit_waiting(n, ds);
    if (ds->running != NULL) {
        decode_step(n, ds);
    }
    /* a waiting sequence that was canceled before running leaves here */
    decode_sweep(n, &ds->waiting, &n->n_waiting);
}

void decode_compute_drain(mls_node *n)
{
    decode_state *ds = node_role_state(n, NODE_PHASE_DECODE);
    node_job **lists[2] = {&ds->running, &ds->waiting};

    for (int i = 0; i < 2; i++) {
        while (*lists[i] != NULL) {
            node_job *job = *lists[i];
            *lists[i] = job->next_q;
            node_job_leave(n, job, false);
        }
    }
}
