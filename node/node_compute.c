/*
 * node_compute.c - the node's compute thread and the two queues between it
 * and the loop.
 *
 * The thread owns the engine context. Each turn it takes new jobs from the
 * inbox and gives each to the role of its phase, then lets every role take
 * one turn (prefill: at most one prompt; decode: one step over its batch).
 * Results go back to the loop as events (node_events.c); it never touches a
 * socket.
 */
#include <stdlib.h>
#include <string.h>

#include "mls_alloc.h"
#include "mls_log.h"
#include "node_role.h"

static const node_role_ops *node_role_for(mls_node *n, node_phase phase)
{
    for (int i = 0; i < 2; i++) {
        if (n->roles[i] != NULL && n->roles[i]->phase == phase) {
            return n->roles[i];
        }
    }
    return NULL;
}

/* ---- compute -> loop ---------------------------------------------------------- */

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

static node_event *node_event_new(node_ev_kind kind, node_job *job)
{
    node_event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL) {
        mls_error("node: out of memory posting an event for request %llu",
                  (unsigned long long)job->rid);
        return NULL;
    }
    ev->kind = kind;
    ev->job = job;
    ev->rid = job->rid;
    return ev;
}

void node_post_simple(mls_node *n, node_ev_kind kind, node_job *job)
{
    node_event *ev = node_event_new(kind, job);
    if (ev != NULL) {
        node_post(n, ev);
    }
}

void node_post_error(mls_node *n, node_job *job, mls_status st, const char *msg)
{
    node_event *ev = node_event_new(NODE_EV_ERROR, job);
    if (ev != NULL) {
        ev->st = st;
        snprintf(ev->msg, sizeof(ev->msg), "%s", msg);
        node_post(n, ev);
    }
}

void node_post_finish(mls_node *n, node_job *job, int32_t reason)
{
    node_event *ev = node_event_new(NODE_EV_FINISH, job);
    if (ev != NULL) {
        ev->reason = reason;
        ev->prompt_tokens = (uint32_t)job->n_prompt;
        ev->completion_tokens = job->n_generated;
        node_post(n, ev);
    }
}

void node_job_leave(mls_node *n, node_job *job, bool keep_pages)
{
    if (!keep_pages) {
        eng_seq_release(&job->seq, n->pool);
    }
    node_post_simple(n, NODE_EV_COMPUTE_DONE, job);
}

/* ---- loop -> compute ---------------------------------------------------------- */

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

void node_compute_kick(mls_node *n)
{
    pthread_mutex_lock(&n->in_lock);
    pthread_cond_signal(&n->in_cond);
    pthread_mutex_unlock(&n->in_lock);
}

void node_compute_handoff(mls_node *n, node_job *job)
{
    const node_role_ops *r = node_role_for(n, job->phase);

    job->next_q = NULL;
    if (r == NULL || r->compute_accept == NULL) {
        mls_error("node: request %llu: no role runs phase %d here", (unsigned long long)job->rid,
                  (int)job->phase);
        node_post_error(n, job, MLS_ERR_INTERNAL, "this node cannot run the request's phase");
        node_job_leave(n, job, false);
        return;
    }
    r->compute_accept(n, job);
}

/* ---- the thread ---------------------------------------------------------------- */

static bool node_compute_busy(mls_node *n)
{
    for (int i = 0; i < 2; i++) {
        if (n->roles[i] != NULL && n->roles[i]->compute_busy != NULL &&
            n->roles[i]->compute_busy(n)) {
            return true;
        }
    }
    return false;
}

static void *node_compute_main(void *arg)
{
    mls_node *n = arg;

    for (;;) {
        node_job *in;

        pthread_mutex_lock(&n->in_lock);
        while (!n->compute_stop && n->in_head == NULL && !node_compute_busy(n)) {
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
            node_compute_handoff(n, job);
        }
        for (int i = 0; i < 2; i++) {
            if (n->roles[i] != NULL && n->roles[i]->compute_turn != NULL) {
                n->roles[i]->compute_turn(n);
            }
        }
    }
    /* shutting down: every job still here leaves */
    for (int i = 0; i < 2; i++) {
        if (n->roles[i] != NULL && n->roles[i]->compute_drain != NULL) {
            n->roles[i]->compute_drain(n);
        }
    }
    return NULL;
}

static size_t node_logits_bytes(mls_node *n)
{
    const eng_config *c = eng_model_config(n->model);
    return sizeof(float) * (size_t)c->vocab_size * (n->cfg.max_batch > 0 ? n->cfg.max_batch : 1);
}

mls_status node_compute_start(mls_node *n)
{
    const eng_config *c = eng_model_config(n->model);

    n->logits = mls_alloc(MLS_ALLOC_TAG_SCRATCH, node_logits_bytes(n));
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
    mls_free(MLS_ALLOC_TAG_SCRATCH, n->logits, node_logits_bytes(n));
    mls_free(MLS_ALLOC_TAG_SCRATCH, n->sample_scratch, sizeof(float) * 2 * (size_t)c->vocab_size);
    n->logits = NULL;
    n->sample_scratch = NULL;
}
