/*
 * node_sample.c - turning a request's logits into its next token, the same
 * way on every role: seeded per completion index, so a request re-prefilled
 * elsewhere after a failure draws the same tokens. Compute thread.
 */
#include <math.h>
#include <stdlib.h>

#include "mlaserve.pb-c.h"
#include "node_role.h"

void node_rng_for(uint64_t seed, uint32_t index, eng_rng *rng)
{
    eng_rng_seed(rng, seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(index + 1)));
}

void node_top_logprobs(const float *logits, int32_t vocab, uint32_t k, node_event *ev)
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

bool node_sample(mls_node *n, node_job *job, const float *logits, int32_t *token_p,
                 float *logprob_p, int32_t *reason_p)
{
    const eng_config *c = eng_model_config(n->model);
    eng_rng rng;

    node_rng_for(job->seed, job->n_generated, &rng);
    *token_p =
        eng_sample(logits, c->vocab_size, &job->sampling, &rng, n->sample_scratch, logprob_p);
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

node_event *node_token_event(mls_node *n, node_job *job, node_ev_kind kind, int32_t token,
                             float logprob, const float *logits)
{
    node_event *ev = calloc(1, sizeof(*ev));

    if (ev == NULL) {
        return NULL;
    }
    ev->kind = kind;
    ev->job = job;
    ev->rid = job->rid;
    ev->token = token;
    ev->logprob = logprob;
    ev->index = job->n_generated - 1;
    if (job->top_logprobs > 0) {
        node_top_logprobs(logits, eng_model_config(n->model)->vocab_size, job->top_logprobs, ev);
    }
    return ev;
}
