/*
 * node_jobs.c - the node's registry of open requests and what it says to the
 * router about them. Loop thread only.
 */
#include <stdlib.h>
#include <string.h>

#include "mls_log.h"
#include "mls_num.h"
#include "node_role.h"

node_job *node_job_find(mls_node *n, uint64_t rid)
{
    for (node_job *j = n->jobs; j != NULL; j = j->next_reg) {
        if (j->rid == rid) {
            return j;
        }
    }
    return NULL;
}

node_job *node_job_new(mls_node *n, uint64_t rid)
{
    node_job *job = calloc(1, sizeof(*job));
    if (job == NULL) {
        return NULL;
    }
    job->rid = rid;
    job->link = n->cur_link;
    eng_seq_init(&job->seq);
    atomic_init(&job->cancelled, false);
    job->t_created_ns = mls_now_ns();
    job->next_reg = n->jobs;
    n->jobs = job;
    return job;
}

void node_job_free(mls_node *n, node_job *job)
{
    for (node_job **pp = &n->jobs; *pp != NULL; pp = &(*pp)->next_reg) {
        if (*pp == job) {
            *pp = job->next_reg;
            break;
        }
    }
    if (job->xreq != NULL) {
        kvx_req_release(job->xreq);
    }
    eng_seq_release(&job->seq, n->pool);
    free(job->prompt);
    free(job->pages);
    free(job);
}

void node_job_fill_sampling(node_job *job, const Mlaserve__SamplingParams *sp)
{
    job->sampling.temperature = sp ? sp->temperature : 0.0f;
    job->sampling.top_p = sp && sp->top_p > 0.0f && sp->top_p < 1.0f ? sp->top_p : 1.0f;
    job->sampling.top_k = sp && sp->top_k > 0 ? sp->top_k : 0;
    job->seed = sp && sp->has_seed ? sp->seed : (uint64_t)mls_now_ns();
    job->max_tokens = sp && sp->max_tokens > 0 ? sp->max_tokens : 16;
    job->ignore_eos = sp ? sp->ignore_eos : false;
    job->top_logprobs = sp == NULL                        ? 0
                        : sp->top_logprobs < NODE_MAX_TOP ? sp->top_logprobs
                                                          : NODE_MAX_TOP;
}

void node_job_cancel(mls_node *n, node_job *job)
{
    job->failed = true; /* nothing more goes to the router for it */
    atomic_store(&job->cancelled, true);
    for (int i = 0; i < 2; i++) {
        const node_role_ops *r = n->roles[i];
        if (r != NULL && r->on_cancel != NULL && r->on_cancel(n, job)) {
            return; /* the role completed it: the job may be gone */
        }
    }
    node_compute_kick(n);
}

void node_send_link(mls_node *n, node_link *l, const Mlaserve__Envelope *env)
{
    if (l != NULL && l->conn != NULL && l->registered) {
        mls_conn_send(l->conn, env);
    }
}

void node_send(mls_node *n, const Mlaserve__Envelope *env)
{
    for (int i = 0; i < n->n_links; i++) {
        node_send_link(n, &n->links[i], env);
    }
}

void node_reply(mls_node *n, const Mlaserve__Envelope *env)
{
    node_send_link(n, n->cur_link, env);
}

void node_job_send(mls_node *n, const node_job *job, const Mlaserve__Envelope *env)
{
    node_send_link(n, job->link, env);
}

void node_send_error(mls_node *n, uint64_t rid, mls_status st, const char *msg)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Error e = MLASERVE__ERROR__INIT;

    node_job *job = rid != 0 ? node_job_find(n, rid) : NULL;

    mls_proto_error_init(&env, &e, rid, st, msg);
    node_send_link(n, job != NULL ? job->link : n->cur_link, &env);
}

void node_job_fail(mls_node *n, node_job *job, mls_status st, const char *msg)
{
    if (job->failed) {
        return;
    }
    node_send_error(n, job->rid, st, msg);
    job->failed = true;
    atomic_fetch_add(&n->requests_failed, 1);
}
