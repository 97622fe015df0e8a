/*
 * prefill_requests.c - the prefill role on the loop thread: PrefillRequest
 * checks and the job it opens (with its transport request when the KV goes to
 * a decode node), Cancel, and the end of the transfer.
 */
#include <stdlib.h>
#include <string.h>

#include "mls_log.h"
#include "prefill_internal.h"

/* Our transfer finished (verified by the decode node, or failed). */
static void prefill_on_xfer_done(void *arg, uint64_t rid, mls_status st, const char *why)
{
    mls_node *n = arg;
    node_job *job = node_job_find(n, rid);

    if (job == NULL) {
        return;
    }
    job->xfer_done = true;
    if (st != MLS_OK) {
        atomic_store(&job->cancelled, true);
        if (!job->failed && st != MLS_ERR_CANCELED) {
            mls_warn("node: request %llu: KV transfer failed: %s (%s)", (unsigned long long)rid,
                     why ? why : "", mls_status_name(st));
            node_job_fail(n, job, st, why ? why : mls_status_message(st));
        }
    }
    if (job->compute_done) {
        node_job_free(n, job);
    }
}

/* Why m cannot be run here, or NULL. */
static const char *prefill_refusal(mls_node *n, const Mlaserve__PrefillRequest *m, mls_status *st_p,
                                   mls_err *err)
{
    const eng_config *c = eng_model_config(n->model);
    bool remote = m->decode_address.len > 0;

    *st_p = MLS_ERR_INVALID_ARG;
    if (n->draining) {
        *st_p = MLS_ERR_BUSY;
        return "node is draining";
    }
    if (m->n_prompt_token_ids == 0) {
        return "empty prompt";
    }
    for (size_t i = 0; i < m->n_prompt_token_ids; i++) {
        if (m->prompt_token_ids[i] < 0 || m->prompt_token_ids[i] >= c->vocab_size) {
            mls_err_set(err, "prompt token %d at %zu is outside the vocabulary (%d)",
                        m->prompt_token_ids[i], i, c->vocab_size);
            return err->msg;
        }
    }
    if (remote &&
        (m->decode_address.len >= sizeof(((node_job *)0)->decode_addr) || m->n_page_ids == 0 ||
         (uint64_t)m->n_page_ids * KVL_PAGE_TOKENS < m->n_prompt_token_ids)) {
        return "decode address or reserved pages do not fit the prompt";
    }
    if (node_job_find(n, m->request_id) != NULL) {
        return "request id already open";
    }
    return NULL;
}

static void prefill_on_request(mls_node *n, const Mlaserve__PrefillRequest *m)
{
    bool remote = m->decode_address.len > 0;
    mls_err err = {{0}};
    mls_status st;
    const char *why = prefill_refusal(n, m, &st, &err);
    node_job *job;

    if (why != NULL) {
        node_send_error(n, m->request_id, st, why);
        return;
    }
    job = node_job_new(n, m->request_id);
    if (job == NULL || (job->prompt = malloc(sizeof(int32_t) * m->n_prompt_token_ids)) == NULL ||
        (remote && (job->pages = malloc(sizeof(uint32_t) * m->n_page_ids)) == NULL)) {
        if (job != NULL) {
            node_job_free(n, job);
        }
        node_send_error(n, m->request_id, MLS_ERR_NO_MEMORY, "out of memory");
        return;
    }
    memcpy(job->prompt, m->prompt_token_ids, sizeof(int32_t) * m->n_prompt_token_ids);
    job->n_prompt = (int32_t)m->n_prompt_token_ids;
    node_job_fill_sampling(job, m->sampling);
    job->n_generated = m->n_generated;
    job->phase = NODE_PHASE_PREFILL;
    if (remote) {
        memcpy(job->decode_addr, m->decode_address.data, m->decode_address.len);
        memcpy(job->pages, m->page_ids, sizeof(uint32_t) * m->n_page_ids);
        job->n_pages = (uint32_t)m->n_page_ids;
        if (m->kv_token.len != KVX_TOKEN_BYTES) {
            mls_err_set(&err, "PrefillRequest carries a %zu-byte kv_token, want %u",
                        m->kv_token.len, KVX_TOKEN_BYTES);
            st = MLS_ERR_INVALID_ARG;
        } else {
            st = kvx_req_create(n->kvx, job->decode_addr, job->rid, m->kv_token.data, job->pages,
                                job->n_pages, (uint32_t)job->n_prompt, prefill_on_xfer_done, n,
                                &job->xreq, &err);
        }
        if (st != MLS_OK) {
            node_send_error(n, job->rid, st, err.msg);
            node_job_free(n, job);
            return;
        }
    }
    atomic_fetch_add(&n->n_prefill_queued, 1);
    node_compute_submit(n, job);
}

static bool prefill_on_msg(mls_node *n, const Mlaserve__Envelope *env)
{
    if (env->msg_case != MLASERVE__ENVELOPE__MSG_PREFILL_REQUEST) {
        return false;
    }
    prefill_on_request(n, env->prefill_request);
    return true;
}

static bool prefill_on_cancel(mls_node *n, node_job *job)
{
    if (job->xreq != NULL && !job->xfer_done) {
        kvx_req_abort(job->xreq);
    }
    return false;
}

static mls_status prefill_setup(mls_node *n, mls_err *err)
{
    prefill_state *ps = calloc(1, sizeof(*ps));

    if (ps == NULL) {
        mls_err_set(err, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    n->role_state[NODE_PHASE_PREFILL] = ps;
    return MLS_OK;
}

static void prefill_teardown(mls_node *n)
{
    free(n->role_state[NODE_PHASE_PREFILL]);
    n->role_state[NODE_PHASE_PREFILL] = NULL;
}

const node_role_ops mls_prefill_role = {
    .name = "prefill",
    .phase = NODE_PHASE_PREFILL,
    .setup = prefill_setup,
    .teardown = prefill_teardown,
    .on_msg = prefill_on_msg,
    .on_cancel = prefill_on_cancel,
    .compute_accept = prefill_compute_accept,
    .compute_busy = prefill_compute_busy,
    .compute_turn = prefill_compute_turn,
    .compute_drain = prefill_compute_drain,
};
