/*
 * node_events.c - what the compute thread reports, turned into messages to
 * the router on the loop thread: FirstToken, TokenChunk, Finish, Error, and
 * the end of a job's compute (its record is freed once nothing else - a KV
 * transfer - still needs it).
 */
#include <stdlib.h>

#include "node_role.h"

static void node_on_first(mls_node *n, const node_event *ev)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__FirstToken m = MLASERVE__FIRST_TOKEN__INIT;
    Mlaserve__TopLogprobs top = MLASERVE__TOP_LOGPROBS__INIT;

    if (ev->job->failed) {
        return;
    }
    if (ev->n_top > 0) {
        top.n_token_ids = top.n_logprobs = ev->n_top;
        top.token_ids = (int32_t *)ev->top_ids;
        top.logprobs = (float *)ev->top_logprobs;
        m.top = &top;
    }
    m.request_id = ev->rid;
    m.token_id = ev->token;
    m.logprob = ev->logprob;
    m.prefill_ns = ev->ns;
    m.queue_ns = 0;
    m.n_prompt_tokens = ev->prompt_tokens;
    env.msg_case = MLASERVE__ENVELOPE__MSG_FIRST_TOKEN;
    env.first_token = &m;
    node_job_send(n, ev->job, &env);
}

static void node_on_token(mls_node *n, const node_event *ev)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__TokenChunk m = MLASERVE__TOKEN_CHUNK__INIT;
    Mlaserve__TopLogprobs top = MLASERVE__TOP_LOGPROBS__INIT, *tops[1] = {&top};

    if (ev->n_top > 0) {
        top.n_token_ids = top.n_logprobs = ev->n_top;
        top.token_ids = (int32_t *)ev->top_ids;
        top.logprobs = (float *)ev->top_logprobs;
        m.n_top = 1;
        m.top = tops;
    }
    m.request_id = ev->rid;
    m.first_index = ev->index;
    m.n_token_ids = 1;
    m.token_ids = (int32_t *)&ev->token;
    m.n_logprobs = 1;
    m.logprobs = (float *)&ev->logprob;
    env.msg_case = MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK;
    env.token_chunk = &m;
    node_job_send(n, ev->job, &env);
}

static void node_on_finish(mls_node *n, const node_event *ev)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Finish m = MLASERVE__FINISH__INIT;

    m.request_id = ev->rid;
    m.reason = ev->reason;
    m.prompt_tokens = ev->prompt_tokens;
    m.completion_tokens = ev->completion_tokens;
    env.msg_case = MLASERVE__ENVELOPE__MSG_FINISH;
    env.finish = &m;
    node_job_send(n, ev->job, &env);
    atomic_fetch_add(&n->requests_finished, 1);
}

static void node_on_event(mls_node *n, node_event *ev)
{
    node_job *job = ev->job;

    switch (ev->kind) {
    case NODE_EV_FIRST:
        node_on_first(n, ev);
        break;
    case NODE_EV_TOKEN:
        node_on_token(n, ev);
        break;
    case NODE_EV_FINISH:
        node_on_finish(n, ev);
        break;
    case NODE_EV_ERROR:
        node_job_fail(n, job, ev->st, ev->msg);
        break;
    case NODE_EV_COMPUTE_DONE:
        job->compute_done = true;
        if (job->xreq == NULL || job->xfer_done) {
            node_job_free(n, job);
        }
        break;
    }
    free(ev);
}

void node_events_drain(mls_node *n)
{
    node_event *ev;

    pthread_mutex_lock(&n->out_lock);
    ev = n->out_head;
    n->out_head = n->out_tail = NULL;
    pthread_mutex_unlock(&n->out_lock);
    while (ev != NULL) {
        node_event *next = ev->next;
        node_on_event(n, ev);
        ev = next;
    }
}
