/*
 * node_compute.c - the node's compute thread: prefill jobs and the
 * continuous-batching decode loop.
 *
 * The thread owns the engine context. Each turn it takes new jobs from the
 * inbox, runs at most one prefill (prefill or colocated roles), then one
 * decode step over every running sequence (decode or colocated roles).
 * Results go back to the loop as events; it never touches a socket.
 * Sequences join the batch at step boundaries and leave when they finish or
 * are canceled; their pages go back to the pool at once.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mlaserve.pb-c.h"
#include "mls_alloc.h"
#include "mls_log.h"
#include "mls_num.h"
#include "node_internal.h"

void node_rng_for(uint64_t seed, uint32_t index, eng_rng *rng)
{
    eng_rng_seed(rng, seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(index + 1)));
}

void node_post(mls_node *n, node_event *ev)
{
    ev->next = NULL;
    pthread_mutex_lock(&n->out_lock);
    if (n->out_tail != NULL) {
        n->out_tail->next = ev;
    } else {
        n->out_head = ev;
    }
    n->out_tail = ev;
    pthread_mutex_unlock(&n->out_lock);
    uv_async_send(&n->wake);
}

static void node_post_simple(mls_node *n, node_ev_kind kind, node_job *job)
{
    node_event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL) {
        mls_error("node: out of memory posting an event for request %llu",
                  (unsigned long long)job->rid);
        return;
    }
    ev->kind = kind;
    ev->job = job;
    ev->rid = job->rid;
    node_post(n, ev);
}

static void node_post_error(mls_node *n, node_job *job, mls_status st, const char *msg)
{
    node_event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL) {
        return;
    }
    ev->kind = NODE_EV_ERROR;
    ev->job = job;
    ev->rid = job->rid;
    ev->st = st;
    snprintf(ev->msg, sizeof(ev->msg), "%s", msg);
    node_post(n, ev);
}

static void node_post_finish(mls_node *n, node_job *job, int32_t reason)
{
    node_event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL) {
        return;
    }
    ev->kind = NODE_EV_FINISH;
    ev->job = job;
    ev->rid = job->rid;
    ev->reason = reason;
    ev->prompt_tokens = (uint32_t)job->n_prompt;
    ev->completion_tokens = job->n_generated;
    node_post(n, ev);
}

void node_compute_submit(mls_node *n, node_job *job)
{
    job->next_q = NULL;
    pthread_mutex_lock(&n->in_lock);
    if (n->in_tail != NULL) {
        n->in_tail->next_q = job;
    } else {
        n->in_head = job;
    }
    n->in_tail = job;
    pthread_cond_signal(&n->in_cond);
    pthread_mutex_unlock(&n->in_lock);
}

/* The k most likely tokens of logits[vocab] with their log-softmax values. */
static void node_top_logprobs(const float *logits, int32_t vocab, uint32_t k, node_event *ev)
{
    float max = logits[0];
    double z = 0, lse;

    for (int32_t i = 1; i < vocab; i++) {
        max = logits[i] > max ? logits[i] : max;
    }
    for (int32_t i = 0; i < vocab; i++) {
        z += exp((double)(logits[i] - max));
    }
    lse = (double)max + log(z);
    ev->n_top = 0;
    for (int32_t i = 0; i < vocab; i++) { /* insertion into a sorted list of k */
        uint32_t at = ev->n_top;
        if (at == k && logits[i] <= logits[ev->top_ids[k - 1]]) {
            continue;
        }
        if (at == k) {
            at--;
        } else {
            ev->n_top++;
        }
        while (at > 0 && logits[ev->top_ids[at - 1]] < logits[i]) {
            ev->top_ids[at] = ev->top_ids[at - 1];
            at--;
        }
        ev->top_ids[at] = i;
    }
    for (uint32_t j = 0; j < ev->n_top; j++) {
        ev->top_logprobs[j] = (float)((double)logits[ev->top_ids[j]] - lse);
    }
}

/* Sample completion token `job->n_generated` from logits; true when finished. */
static bool node_sample(mls_node *n, node_job *job, const float *logits, int32_t *token_p,
                        float *logprob_p, int32_t *reason_p)
{
    const eng_config *c = eng_model_config(n->model);
    eng_rng rng;

    node_rng_for(job->seed, job->n_generated, &rng);
    *token_p = eng_sample(logits, c->vocab_size, &job->sampling, &rng, n->sample_scratch, logprob_p);
    job->n_generated++;
    job->last_token = *token_p;
    if (!job->ignore_eos && *token_p == c->eos_token_id) {
        *reason_p = MLASERVE__FINISH_REASON__FINISH_REASON_STOP;
        return true;
    }
    if (job->n_generated >= job->max_tokens) {
        *reason_p = MLASERVE__FINISH_REASON__FINISH_REASON_LENGTH;
        return true;
    }
    return false;
}

/* Leave compute: pages back to the pool (unless the transfer still reads them). */
static void node_job_leave(mls_node *n, node_job *job, bool keep_pages)
{
    if (!keep_pages) {
        eng_seq_release(&job->seq, n->pool);
    }
    node_post_simple(n, NODE_EV_COMPUTE_DONE, job);
}

/* ---- prefill --------------------------------------------------------------- */

typedef struct {
    mls_node *n;
    node_job *job;
    mls_status st;
} node_prefill_ctx;

/* Ship layer `layer`'s rows for positions [b, e), page run by page run. */
static void node_layer_send(void *arg, int32_t layer, int32_t b, int32_t e)
{
    node_prefill_ctx *pc = arg;
    const kvl_layout *layout = eng_kv_pool_layout(pc->n->pool);
    node_job *job = pc->job;

    if (pc->st != MLS_OK || atomic_load(&job->cancelled)) {
        return;
    }
    for (int32_t p = b; p < e;) {
        int32_t page_end = (p / (int32_t)KVL_PAGE_TOKENS + 1) * (int32_t)KVL_PAGE_TOKENS;
        int32_t run = (e < page_end ? e : page_end) - p;
        const uint8_t *rows = eng_kv_pool_page(pc->n->pool, layer, job->seq.pages[p / KVL_PAGE_TOKENS]) +
                              (uint64_t)(p % KVL_PAGE_TOKENS) * layout->row_bytes;
        mls_err err = {{0}};
        mls_status st = kvx_send_layer(job->xreq, (uint32_t)layer, (uint32_t)p, (uint32_t)run, rows, &err);
        if (st != MLS_OK) {
            mls_warn("node: request %llu: sending layer %d failed: %s", (unsigned long long)job->rid,
                     layer, err.msg);
            pc->st = st;
            return;
        }
        p += run;
    }
}

static void node_run_prefill(mls_node *n, node_job *job)
{
    const eng_config *c = eng_model_config(n->model);
    bool remote = job->decode_addr[0] != '\0';
    int32_t need = remote ? job->n_prompt : job->n_prompt + (int32_t)(job->max_tokens - job->n_generated) + 1;
    node_prefill_ctx pc = {n, job, MLS_OK};
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
                     remote ? node_layer_send : NULL, &pc);
    if (st == MLS_OK) {
        st = pc.st;
    }
    if (st != MLS_OK) {
        if (!atomic_load(&job->cancelled)) {
            node_post_error(n, job, st, remote ? "KV transfer failed during prefill" : "prefill failed");
        }
        if (remote) {
            kvx_req_abort(job->xreq);
        }
        node_job_leave(n, job, remote);
        return;
    }
    atomic_fetch_add(&n->tokens_prefilled, (unsigned long long)job->n_prompt);
    finished = node_sample(n, job, n->logits, &token, &logprob, &reason);
    ev = calloc(1, sizeof(*ev));
    if (ev != NULL) {
        ev->kind = NODE_EV_FIRST;
        ev->job = job;
        ev->rid = job->rid;
        ev->token = token;
        ev->logprob = logprob;
        ev->index = job->n_generated - 1;
        ev->prompt_tokens = (uint32_t)job->n_prompt;
        ev->ns = mls_now_ns() - t0;
        if (job->top_logprobs > 0) {
            node_top_logprobs(n->logits, c->vocab_size, job->top_logprobs, ev);
        }
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
    /* colocated: continue in the batch */
    if (finished) {
        node_post_finish(n, job, reason);
        node_job_leave(n, job, false);
        return;
    }
    job->phase = NODE_PHASE_DECODE;
    job->next_q = n->waiting;
    n->waiting = job;
    atomic_fetch_add(&n->n_waiting, 1);
}

/* ---- decode ---------------------------------------------------------------- */

static void node_admit_waiting(mls_node *n)
{
    while (n->waiting != NULL && atomic_load(&n->n_running) < n->cfg.max_batch) {
        node_job *job = n->waiting;
        n->waiting = job->next_q;
        job->next_q = n->running;
        n->running = job;
        atomic_fetch_sub(&n->n_waiting, 1);
        atomic_fetch_add(&n->n_running, 1);
    }
}

static void node_decode_step(mls_node *n)
{
    const eng_config *c = eng_model_config(n->model);
    eng_seq *seqs[1024];
    int32_t ids[1024];
    node_job *batch[1024];
    int32_t cnt = 0;
    node_job **pp = &n->running;

    /* drop canceled or full sequences, collect the batch */
    while (*pp != NULL) {
        node_job *job = *pp;
        bool full = (int64_t)job->seq.n_pages * KVL_PAGE_TOKENS <= job->seq.n_tokens;
        if (atomic_load(&job->cancelled) || full || cnt == (int32_t)(sizeof(ids) / sizeof(ids[0]))) {
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
        node_event *ev = calloc(1, sizeof(*ev));
        int32_t token, reason;
        float logprob;
        bool finished = node_sample(n, job, n->logits + (int64_t)i * c->vocab_size, &token,
                                    &logprob, &reason);

        atomic_fetch_add(&n->tokens_generated, 1);
        if (ev != NULL) {
            ev->kind = NODE_EV_TOKEN;
            ev->job = job;
            ev->rid = job->rid;
            ev->token = token;
            ev->logprob = logprob;
            ev->index = job->n_generated - 1;
            if (job->top_logprobs > 0) {
                node_top_logprobs(n->logits + (int64_t)i * c->vocab_size, c->vocab_size,
                                  job->top_logprobs, ev);
            }
            node_post(n, ev);
        }
        if (finished) {
            node_post_finish(n, job, reason);
            atomic_store(&job->cancelled, true); /* swept below */
        }
    }
    /* sweep finished ones now so their pages return at once */
    pp = &n->running;
    while (*pp != NULL) {
        node_job *job = *pp;
        if (atomic_load(&job->cancelled)) {
            *pp = job->next_q;
            atomic_fetch_sub(&n->n_running, 1);
            node_job_leave(n, job, false);
            continue;
        }
        pp = &job->next_q;
    }
}

/* ---- thread ------------------------------------------------------------------ */

static void *node_compute_main(void *arg)
{
    mls_node *n = arg;

    for (;;) {
        node_job *in;

        pthread_mutex_lock(&n->in_lock);
        while (!n->compute_stop && n->in_head == NULL && n->prefill_q == NULL &&
               n->running == NULL && n->waiting == NULL) {
            pthread_cond_wait(&n->in_cond, &n->in_lock);
        }
        if (n->compute_stop) {
            pthread_mutex_unlock(&n->in_lock);
            break;
        }
        in = n->in_head;
        n->in_head = n->in_tail = NULL;
        pthread_mutex_unlock(&n->in_lock);

        while (in != NULL) {
            node_job *job = in;
            in = in->next_q;
            if (job->phase == NODE_PHASE_PREFILL) {
                node_job **tail = &n->prefill_q;
                while (*tail != NULL) {
                    tail = &(*tail)->next_q;
                }
                job->next_q = NULL;
                *tail = job;
            } else {
                job->next_q = NULL;
                {
                    node_job **tail = &n->waiting;
                    while (*tail != NULL) {
                        tail = &(*tail)->next_q;
                    }
                    *tail = job;
                }
                atomic_fetch_add(&n->n_waiting, 1);
            }
        }
        if (n->prefill_q != NULL) {
            node_job *job = n->prefill_q;
            n->prefill_q = job->next_q;
            node_run_prefill(n, job);
        }
        node_admit_waiting(n);
        if (n->running != NULL) {
            node_decode_step(n);
        }
        /* a waiting sequence that was canceled before running leaves here */
        {
            node_job **pp = &n->waiting;
            while (*pp != NULL) {
                node_job *job = *pp;
                if (atomic_load(&job->cancelled)) {
                    *pp = job->next_q;
                    atomic_fetch_sub(&n->n_waiting, 1);
                    node_job_leave(n, job, false);
                    continue;
                }
                pp = &job->next_q;
            }
        }
    }
    /* shutting down: every job still here leaves */
    {
        node_job **lists[3] = {&n->prefill_q, &n->running, &n->waiting};
        for (int i = 0; i < 3; i++) {
            while (*lists[i] != NULL) {
                node_job *job = *lists[i];
                *lists[i] = job->next_q;
                node_job_leave(n, job, false);
            }
        }
    }
    return NULL;
}

mls_status node_compute_start(mls_node *n)
{
    const eng_config *c = eng_model_config(n->model);

    n->logits = mls_alloc(MLS_ALLOC_TAG_SCRATCH, sizeof(float) * (size_t)c->vocab_size *
                                                     (n->cfg.max_batch > 0 ? n->cfg.max_batch : 1));
    n->sample_scratch = mls_alloc(MLS_ALLOC_TAG_SCRATCH, sizeof(float) * 2 * (size_t)c->vocab_size);
    if (n->logits == NULL || n->sample_scratch == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    if (pthread_create(&n->compute, NULL, node_compute_main, n) != 0) {
        return MLS_ERR_NO_MEMORY;
    }
    n->compute_started = true;
    return MLS_OK;
}

void node_compute_stop(mls_node *n)
{
    const eng_config *c = eng_model_config(n->model);

    if (n->compute_started) {
        pthread_mutex_lock(&n->in_lock);
        n->compute_stop = true;
        pthread_cond_signal(&n->in_cond);
        pthread_mutex_unlock(&n->in_lock);
        pthread_join(n->compute, NULL);
        n->compute_started = false;
    }
    mls_free(MLS_ALLOC_TAG_SCRATCH, n->logits, sizeof(float) * (size_t)c->vocab_size *
                                                   (n->cfg.max_batch > 0 ? n->cfg.max_batch : 1));
    mls_free(MLS_ALLOC_TAG_SCRATCH, n->sample_scratch, sizeof(float) * 2 * (size_t)c->vocab_size);
    n->logits = NULL;
    n->sample_scratch = NULL;
}
