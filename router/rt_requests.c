/*
 * rt_requests.c - one request's life in the router: reserve -> prefill ->
 * first token -> decode -> finish, retries on node failure, and the text the
 * client sees (incremental detokenization, stop strings, SSE chunks). Hears
 * from the nodes through the rt_node_events it registers with the registry.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "mls_log.h"
#include "mls_num.h"
#include "rt_requests.h"

rt_request *rt_request_find(rt_router *rt, uint64_t rid)
{
    for (rt_request *r = rt->requests; r != NULL; r = r->next) {
        if (r->rid == rid && r->state != RQ_DONE) {
            return r;
        }
    }
    return NULL;
}

static void rq_fill_sampling(const rt_request *r, Mlaserve__SamplingParams *sp)
{
    sp->temperature = (float)r->oai->temperature;
    sp->top_p = (float)r->oai->top_p;
    sp->top_k = r->oai->top_k > 0 ? r->oai->top_k : 0;
    sp->has_seed = true;
    sp->seed = r->oai->has_seed ? r->oai->seed : r->serial * 0x9e3779b97f4a7c15ull;
    sp->max_tokens = r->max_tokens;
    sp->ignore_eos = r->oai->ignore_eos;
    sp->logprobs = r->oai->logprobs;
    sp->top_logprobs = r->top_n;
}

/*
 * Leave the current pair: tell the nodes still working on this attempt to
 * drop it, and undo the router's load accounting. `assigned` counts a request
 * on its prefill node until the first token, and on its decode (or
 * colocated) node until it ends.
 */
static void rq_leave_nodes(rt_request *r, bool cancel)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Cancel c = MLASERVE__CANCEL__INIT;

    c.request_id = r->rid;
    c.reason = "request ended";
    env.msg_case = MLASERVE__ENVELOPE__MSG_CANCEL;
    env.cancel = &c;
    if (r->p != NULL && !r->colocated) {
        if (cancel) {
            rt_node_send(r->p, &env);
        }
        if (r->p->assigned > 0) {
            r->p->assigned--;
        }
    }
    if (r->d != NULL) {
        if (cancel) {
            rt_node_send(r->d, &env);
        }
        if (r->d->assigned > 0) {
            r->d->assigned--;
        }
    }
    r->p = r->d = NULL;
    r->colocated = false;
    free(r->pages);
    r->pages = NULL;
    r->n_pages = 0;
}

/* ---- text out ---------------------------------------------------------------- */

static bool rq_text_append(rt_request *r, const char *s, size_t n)
{
    return mls_buf_append(&r->text, s, n) == MLS_OK;
}

static size_t rq_max_stop_len(const rt_request *r)
{
    size_t m = 0;
    for (size_t i = 0; i < r->oai->n_stop; i++) {
        size_t l = strlen(r->oai->stop[i]);
        m = l > m ? l : m;
    }
    return m;
}

/* A stop string in the text: truncate before it and return true. */
static bool rq_find_stop(rt_request *r)
{
    size_t maxlen = rq_max_stop_len(r);
    size_t from = r->stop_scan > maxlen ? r->stop_scan - maxlen : 0;
    size_t cut = SIZE_MAX;

    for (size_t i = 0; i < r->oai->n_stop; i++) {
        const char *hit = strstr(r->text.data ? r->text.data + from : "", r->oai->stop[i]);
        if (hit != NULL && (size_t)(hit - r->text.data) < cut) {
            cut = (size_t)(hit - r->text.data);
        }
    }
    r->stop_scan = r->text.len;
    if (cut == SIZE_MAX) {
        return false;
    }
    r->text.len = cut;
    r->text.data[cut] = '\0';
    return true;
}

/* Logprob entries for completion tokens [from, to): each token's own text and
 * its alternatives. *texts_p collects the strings to free afterwards. */
typedef struct {
    mls_oai_token_logprob *tokens;
    mls_oai_top_logprob *tops;
    char **texts;
    size_t n, n_texts;
} rq_logprobs;

static char *rq_token_text(rt_request *r, int32_t id)
{
    char *text = NULL;
    size_t len = 0;
    if (tok_decode(r->rt->tok, &id, 1, false, &text, &len, NULL) != MLS_OK) {
        return strdup("");
    }
    return text;
}

static bool rq_logprobs_build(rt_request *r, uint32_t from, uint32_t to, rq_logprobs *lp)
{
    size_t n = to > from ? to - from : 0;

    memset(lp, 0, sizeof(*lp));
    if (!r->oai->logprobs || n == 0) {
        return true;
    }
    lp->tokens = calloc(n, sizeof(*lp->tokens));
    lp->tops = calloc(n * (r->top_n ? r->top_n : 1), sizeof(*lp->tops));
    lp->texts = calloc(n * (1 + r->top_n), sizeof(char *));
    if (lp->tokens == NULL || lp->tops == NULL || lp->texts == NULL) {
        return false;
    }
    for (uint32_t i = from; i < to; i++) {
        mls_oai_token_logprob *t = &lp->tokens[lp->n++];
        char *s = rq_token_text(r, r->gen[i]);
        lp->texts[lp->n_texts++] = s;
        t->text = s ? s : "";
        t->logprob = r->gen_logprob[i];
        t->top = lp->tops + (size_t)(i - from) * r->top_n;
        for (uint32_t k = 0; k < r->top_n; k++) {
            char *ts = rq_token_text(r, r->gen_top_ids[(size_t)i * r->top_n + k]);
            lp->texts[lp->n_texts++] = ts;
            lp->tops[(size_t)(i - from) * r->top_n + k].text = ts ? ts : "";
            lp->tops[(size_t)(i - from) * r->top_n + k].logprob = r->gen_top_lp[(size_t)i * r->top_n + k];
        }
        t->n_top = r->top_n;
    }
    return true;
}

static void rq_logprobs_free(rq_logprobs *lp)
{
    for (size_t i = 0; i < lp->n_texts; i++) {
        free(lp->texts[i]);
    }
    free(lp->texts);
    free(lp->tops);
    free(lp->tokens);
}

/* Send one SSE event built by a renderer (NULL: out of memory, skipped) and free it. */
static void rq_sse_send_json(rt_request *r, char *json)
{
    if (json != NULL) {
        mls_http_req_sse_send(r->http, json, strlen(json));
        free(json);
    }
}

/* "data: [DONE]" and the end of the stream; completes the HTTP request. */
static void rq_sse_finish(rt_request *r)
{
    mls_http_req_sse_send(r->http, MLS_OAI_SSE_DONE, strlen(MLS_OAI_SSE_DONE));
    mls_http_req_stream_end(r->http);
}

static void rq_send_chunk(rt_request *r, const char *text, size_t len, const char *finish)
{
    rt_router *rt = r->rt;
    mls_oai_choice ch = {0};
    mls_oai_render_args a = {0};
    char *json;

    if (!r->stream_started) {
        if (mls_http_req_sse_begin(r->http, 200) != MLS_OK) {
            return;
        }
        r->stream_started = true;
    }
    rq_logprobs lp;
    ch.text = text;
    ch.text_len = len;
    ch.finish_reason = finish;
    if (rq_logprobs_build(r, r->tokens_sent, r->n_gen, &lp)) {
        ch.logprobs = lp.tokens;
        ch.n_logprobs = lp.n;
        ch.text_offset = r->sent;
        r->tokens_sent = r->n_gen;
    }
    a.kind = r->kind;
    a.chunk = true;
    a.id = r->id;
    a.created = r->created;
    a.model = rt->served_model;
    a.choice = &ch;
    a.first_chunk = !r->first_chunk_sent;
    a.logprobs_requested = r->oai->logprobs;
    json = mls_oai_render(&a);
    rq_logprobs_free(&lp);
    rq_sse_send_json(r, json);
    r->first_chunk_sent = true;
}

/* Send what is safe to show: never a byte a stop string might still claim,
 * never half a UTF-8 character. */
static void rq_stream_flush(rt_request *r, bool all)
{
    size_t hold = all ? 0 : (rq_max_stop_len(r) > 0 ? rq_max_stop_len(r) - 1 : 0);
    size_t safe = r->text.len > hold ? r->text.len - hold : 0;

    while (safe > r->sent && safe < r->text.len && ((unsigned char)r->text.data[safe] & 0xC0) == 0x80) {
        safe--;
    }
    if (!r->oai->stream || r->http == NULL || safe <= r->sent) {
        return;
    }
    rq_send_chunk(r, r->text.data + r->sent, safe - r->sent, NULL);
    r->sent = safe;
}

static void rq_complete_http(rt_request *r)
{
    rt_router *rt = r->rt;
    mls_oai_usage usage = {r->n_prompt, r->n_gen};
    char *json;

    if (r->http == NULL) {
        return;
    }
    if (r->oai->stream) {
        rq_stream_flush(r, true);
        rq_send_chunk(r, "", 0, r->finish_reason);
        if (r->oai->include_usage) {
            mls_oai_render_args a = {0};
            a.kind = r->kind;
            a.chunk = true;
            a.id = r->id;
            a.created = r->created;
            a.model = rt->served_model;
            a.usage = &usage;
            rq_sse_send_json(r, mls_oai_render(&a));
        }
        rq_sse_finish(r);
    } else {
        mls_oai_choice ch = {0};
        mls_oai_render_args a = {0};
        rq_logprobs lp;
        bool have_lp = rq_logprobs_build(r, 0, r->n_gen, &lp);
        ch.text = r->text.data ? r->text.data : "";
        ch.text_len = r->text.len;
        ch.finish_reason = r->finish_reason;
        if (have_lp) {
            ch.logprobs = lp.tokens;
            ch.n_logprobs = lp.n;
        }
        a.kind = r->kind;
        a.id = r->id;
        a.created = r->created;
        a.model = rt->served_model;
        a.choice = &ch;
        a.usage = &usage;
        a.logprobs_requested = r->oai->logprobs;
        json = mls_oai_render(&a);
        rq_logprobs_free(&lp);
        if (json == NULL) {
            mls_http_req_respond_error(r->http, 500, "server_error", NULL, NULL, "out of memory");
        } else {
            mls_http_req_respond(r->http, 200, "application/json", json, strlen(json));
            free(json);
        }
    }
    r->http = NULL;
}

static void rq_finish(rt_request *r, const char *reason, bool cancel_nodes)
{
    rt_router *rt = r->rt;
    uint64_t now = mls_now_ns();

    if (r->state == RQ_DONE) {
        return;
    }
    rq_leave_nodes(r, cancel_nodes);
    r->state = RQ_DONE;
    r->finish_reason = reason;
    {
        const char *rest;
        size_t n;
        if (r->detok != NULL && strcmp(reason, "stop") != 0 && tok_detok_flush(r->detok, &rest, &n) == MLS_OK) {
            rq_text_append(r, rest, n);
        }
    }
    rq_complete_http(r);
    mls_prom_observe(rt->m_e2e, (double)(now - r->t_arrival) * 1e-9);
    if (r->n_gen > 1 && r->t_first != 0) {
        mls_prom_observe(rt->m_tpot, (double)(r->t_last - r->t_first) * 1e-9 / (r->n_gen - 1));
    }
    mls_prom_add(strcmp(reason, "length") == 0 ? rt->m_ok_length : rt->m_ok_stop, 1);
    mls_prom_add(rt->m_gen_tokens, r->n_gen);
    rt_request_free(r);
}

/* ---- failures ------------------------------------------------------------------ */

static void rq_error_metric(rt_router *rt, mls_status st)
{
    const char *labels[] = {"status", mls_status_name(st), NULL};
    mls_prom_metric *m = mls_prom_counter(rt->prom, MLS_PROM_ERRORS, "Requests that failed, by status.",
                                          labels, NULL);
    if (m != NULL) {
        mls_prom_add(m, 1);
    }
}

void rt_request_fail(rt_request *r, int http_status, mls_status st, const char *msg)
{
    rt_router *rt = r->rt;

    if (r->state == RQ_DONE) {
        return;
    }
    mls_warn("router: request %llu failed: %s (%s)", (unsigned long long)r->serial, msg, mls_status_name(st));
    rq_error_metric(rt, st);
    rq_leave_nodes(r, true);
    r->state = RQ_DONE;
    if (r->http != NULL) {
        if (r->stream_started) {
            mls_oai_error e;
            mls_oai_error_set(&e, http_status, NULL, mls_status_name(st), "%s", msg);
            rq_sse_send_json(r, mls_oai_error_render(&e));
            rq_sse_finish(r);
        } else {
            mls_http_req_respond_error(r->http, http_status, http_status >= 500 ? "server_error" : "invalid_request_error",
                                       NULL, mls_status_name(st), msg);
        }
        r->http = NULL;
    }
    rt_request_free(r);
}

void rt_request_retry(rt_request *r, mls_status st, const char *why)
{
    rt_router *rt = r->rt;

    if (r->state == RQ_DONE) {
        return;
    }
    rq_leave_nodes(r, true);
    r->last_error = st;
    snprintf(r->last_error_msg, sizeof(r->last_error_msg), "%s", why);
    if (++r->retries > RT_MAX_RETRIES) {
        rt_request_fail(r, 503, st, why);
        return;
    }
    mls_info("router: request %llu: retrying after %s (%s), %u tokens kept",
             (unsigned long long)r->serial, why, mls_status_name(st), r->n_gen);
    mls_prom_add(rt->m_retries, 1);
    r->state = RQ_QUEUED;
    rt_request_start(r);
}

/* ---- scheduling ---------------------------------------------------------------- */

static uint32_t rq_pages_needed(const rt_request *r)
{
    uint64_t rows = (uint64_t)r->n_prompt + r->max_tokens;
    return (uint32_t)((rows + KVL_PAGE_TOKENS - 1) / KVL_PAGE_TOKENS);
}

static void rq_send_prefill(rt_request *r, rt_node *p, bool remote)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__PrefillRequest m = MLASERVE__PREFILL_REQUEST__INIT;
    Mlaserve__SamplingParams sp = MLASERVE__SAMPLING_PARAMS__INIT;
    int32_t *ids = malloc(sizeof(int32_t) * ((size_t)r->n_prompt + r->n_gen));

    if (ids == NULL) {
        rt_request_fail(r, 500, MLS_ERR_NO_MEMORY, "out of memory");
        return;
    }
    memcpy(ids, r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
    if (r->n_gen > 0) {
        memcpy(ids + r->n_prompt, r->gen, sizeof(int32_t) * r->n_gen);
    }
    rq_fill_sampling(r, &sp);
    m.request_id = r->rid;
    m.prompt_token_ids = ids;
    m.n_prompt_token_ids = (size_t)r->n_prompt + r->n_gen;
    m.sampling = &sp;
    m.n_generated = r->n_gen;
    if (remote) {
        m.decode_node_id = r->d->node_id;
        m.decode_address.data = (uint8_t *)r->decode_addr;
        m.decode_address.len = strlen(r->decode_addr);
        m.page_ids = r->pages;
        m.n_page_ids = r->n_pages;
        m.kv_token.data = r->kv_token;
        m.kv_token.len = sizeof(r->kv_token);
    }
    m.deadline_ms = (uint32_t)((r->t_deadline - mls_now_ns()) / 1000000ull);
    env.msg_case = MLASERVE__ENVELOPE__MSG_PREFILL_REQUEST;
    env.prefill_request = &m;
    r->p = p;
    if (!r->colocated) {
        p->assigned++;
    }
    r->state = RQ_PREFILLING;
    rt_node_send(p, &env);
    free(ids);
}

void rt_request_start(rt_request *r)
{
    rt_router *rt = r->rt;
    uint32_t n_pages = rq_pages_needed(r);
    rt_node *d = NULL, *c = NULL;
    bool have_prefill = false;

    if (r->state != RQ_QUEUED) {
        return;
    }
    for (rt_node *n = rt->nodes; n != NULL; n = n->next) {
        have_prefill |= rt_node_alive(n) && n->role == MLASERVE__ROLE__ROLE_PREFILL;
    }
    r->rid = ++rt->next_rid; /* a new attempt: stale messages of older ones are ignored */
    if (!rt->colocated_only && have_prefill) {
        d = rt_pick_decode(rt, n_pages, NULL);
    }
    if (d == NULL) {
        c = rt_pick_colocated(rt, n_pages, NULL);
    }
    if (d != NULL) {
        Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
        Mlaserve__Reserve m = MLASERVE__RESERVE__INIT;
        /* A fresh secret per attempt from the kernel's CSPRNG: only the prefill
         * node this router picks for the attempt can write d's pages. */
        if (getrandom(r->kv_token, sizeof(r->kv_token), 0) != (ssize_t)sizeof(r->kv_token)) {
            /* not failed here: callers walk the request list */
            mls_error("router: request %llu: getrandom for the KV token: %s; stays queued",
                      (unsigned long long)r->serial, strerror(errno));
            return;
        }
        m.request_id = r->rid;
        m.n_pages = n_pages;
        m.lease_ms = rt->lease_ms;
        m.kv_token.data = r->kv_token;
        m.kv_token.len = sizeof(r->kv_token);
        env.msg_case = MLASERVE__ENVELOPE__MSG_RESERVE;
        env.reserve = &m;
        r->d = d;
        d->assigned++;
        d->pages_free -= n_pages; /* until its next report */
        r->state = RQ_RESERVING;
        rt_node_send(d, &env);
        return;
    }
    if (c != NULL) {
        r->d = c;
        r->colocated = true;
        c->assigned++;
        c->pages_free -= n_pages;
        rq_send_prefill(r, c, false);
        return;
    }
    /* no capacity now: stays queued until a report or a finish frees some */
}

void rt_requests_kick(rt_router *rt)
{
    for (rt_request *r = rt->requests; r != NULL; r = r->next) {
        if (r->state == RQ_QUEUED) {
            rt_request_start(r);
        }
    }
}

/* ---- messages from nodes ---------------------------------------------------------- */

static void rt_cancel_stale(rt_node *node, uint64_t rid)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Cancel c = MLASERVE__CANCEL__INIT;
    c.request_id = rid;
    c.reason = "stale attempt";
    env.msg_case = MLASERVE__ENVELOPE__MSG_CANCEL;
    env.cancel = &c;
    rt_node_send(node, &env);
}

static void rt_on_reserved(rt_router *rt, rt_node *node, const Mlaserve__Reserved *m)
{
    rt_request *r = rt_request_find(rt, m->request_id);
    rt_node *p;

    if (r == NULL || r->d != node || r->state != RQ_RESERVING) {
        if (m->status == 0) {
            rt_cancel_stale(node, m->request_id);
        }
        return;
    }
    if (m->status != 0) {
        mls_status st = mls_proto_status_from_wire(m->status);
        node->pages_free = 0; /* refused: treat as full until its next report */
        if (st == MLS_ERR_BUSY) {
            /* out of pages right now: wait in the queue, this is not a failure */
            rq_leave_nodes(r, false);
            r->state = RQ_QUEUED;
            return;
        }
        rt_request_retry(r, st, m->message ? m->message : "reserve refused");
        return;
    }
    if (m->n_page_ids == 0 || m->decode_address.len == 0 || m->decode_address.len >= sizeof(r->decode_addr) ||
        (r->pages = malloc(sizeof(uint32_t) * m->n_page_ids)) == NULL) {
        rt_request_retry(r, MLS_ERR_INTERNAL, "malformed reservation");
        return;
    }
    memcpy(r->pages, m->page_ids, sizeof(uint32_t) * m->n_page_ids);
    r->n_pages = (uint32_t)m->n_page_ids;
    memcpy(r->decode_addr, m->decode_address.data, m->decode_address.len);
    r->decode_addr[m->decode_address.len] = '\0';
    p = rt_pick_prefill(rt, r->prompt, r->n_prompt, NULL);
    if (p == NULL) {
        rt_request_retry(r, MLS_ERR_BUSY, "no prefill node available");
        return;
    }
    rq_send_prefill(r, p, true);
}

/* A completion token arrived (index must be the next one); false when finished. */
static bool rq_take_token(rt_request *r, int32_t id, float logprob, const Mlaserve__TopLogprobs *top)
{
    rt_router *rt = r->rt;
    const char *piece;
    size_t n;

    size_t need = (size_t)r->n_gen + 1;
    if (mls_array_reserve(&r->gen, &r->cap_gen, need, sizeof(*r->gen), MLS_ALLOC_TAG_MISC) != MLS_OK ||
        mls_array_reserve(&r->gen_logprob, &r->cap_logprob, need, sizeof(*r->gen_logprob),
                          MLS_ALLOC_TAG_MISC) != MLS_OK ||
        (r->top_n > 0 &&
         (mls_array_reserve(&r->gen_top_ids, &r->cap_top_ids, need * r->top_n, sizeof(*r->gen_top_ids),
                            MLS_ALLOC_TAG_MISC) != MLS_OK ||
          mls_array_reserve(&r->gen_top_lp, &r->cap_top_lp, need * r->top_n, sizeof(*r->gen_top_lp),
                            MLS_ALLOC_TAG_MISC) != MLS_OK))) {
        rt_request_fail(r, 500, MLS_ERR_NO_MEMORY, "out of memory");
        return false;
    }
    for (uint32_t k = 0; k < r->top_n; k++) {
        bool have = top != NULL && k < top->n_token_ids && k < top->n_logprobs;
        r->gen_top_ids[(size_t)r->n_gen * r->top_n + k] = have ? top->token_ids[k] : 0;
        r->gen_top_lp[(size_t)r->n_gen * r->top_n + k] = have ? top->logprobs[k] : -9999.0f;
    }
    r->gen[r->n_gen] = id;
    r->gen_logprob[r->n_gen] = logprob;
    r->n_gen++;
    r->t_last = mls_now_ns();
    if (r->t_first == 0) {
        r->t_first = r->t_last;
        mls_prom_observe(rt->m_ttft, (double)(r->t_first - r->t_arrival) * 1e-9);
    }
    if (tok_detok_feed(r->detok, id, &piece, &n) == MLS_OK && n > 0) {
        rq_text_append(r, piece, n);
    }
    if (r->oai->n_stop > 0 && rq_find_stop(r)) {
        rq_finish(r, "stop", true);
        return false;
    }
    for (size_t i = 0; i < r->oai->n_stop_token_ids; i++) {
        if (r->oai->stop_token_ids[i] == id) {
            rq_finish(r, "stop", true);
            return false;
        }
    }
    if (!r->oai->ignore_eos && id == tok_eos_id(rt->tok)) {
        rq_finish(r, "stop", true);
        return false;
    }
    if (r->n_gen >= r->max_tokens) {
        rq_finish(r, "length", true);
        return false;
    }
    rq_stream_flush(r, false);
    return true;
}

static void rt_on_first_token(rt_router *rt, rt_node *node, const Mlaserve__FirstToken *m)
{
    rt_request *r = rt_request_find(rt, m->request_id);
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__StartDecode sd = MLASERVE__START_DECODE__INIT;
    Mlaserve__SamplingParams sp = MLASERVE__SAMPLING_PARAMS__INIT;
    uint32_t kv_rows;
    bool colocated;

    if (r == NULL || r->p != node || r->state != RQ_PREFILLING) {
        return;
    }
    colocated = r->colocated;
    kv_rows = (uint32_t)r->n_prompt + r->n_gen;
    if (!colocated) {
        /* the prefill node is done with it (its transfer finishes on its own) */
        if (node->assigned > 0) {
            node->assigned--;
        }
        r->p = NULL;
        mls_prom_add(rt->m_xfer_bytes, (double)kv_rows * r->d->layout.row_bytes * r->d->n_layers);
    }
    mls_prom_add(rt->m_prompt_tokens, m->n_prompt_tokens);
    r->state = RQ_DECODING;
    if (!rq_take_token(r, m->token_id, m->logprob, m->top)) {
        return;
    }
    if (colocated) {
        return;
    }
    rq_fill_sampling(r, &sp);
    sd.request_id = r->rid;
    sd.n_prompt_tokens = kv_rows;
    sd.first_token_id = m->token_id;
    sd.n_generated = r->n_gen;
    sd.sampling = &sp;
    env.msg_case = MLASERVE__ENVELOPE__MSG_START_DECODE;
    env.start_decode = &sd;
    rt_node_send(r->d, &env);
}

static void rt_on_token_chunk(rt_router *rt, rt_node *node, const Mlaserve__TokenChunk *m)
{
    rt_request *r = rt_request_find(rt, m->request_id);

    if (r == NULL || r->d != node || r->state != RQ_DECODING) {
        return;
    }
    for (size_t i = 0; i < m->n_token_ids; i++) {
        uint32_t index = m->first_index + (uint32_t)i;
        if (index < r->n_gen) {
            continue; /* already have it (a retry resent it) */
        }
        if (index > r->n_gen) {
            rt_request_retry(r, MLS_ERR_INTERNAL, "token stream has a gap");
            return;
        }
        if (!rq_take_token(r, m->token_ids[i], i < m->n_logprobs ? m->logprobs[i] : 0.0f,
                           i < m->n_top ? m->top[i] : NULL)) {
            return;
        }
    }
}

static void rt_on_finish(rt_router *rt, rt_node *node, const Mlaserve__Finish *m)
{
    rt_request *r = rt_request_find(rt, m->request_id);

    if (r == NULL || r->d != node) {
        return;
    }
    switch (m->reason) {
    case MLASERVE__FINISH_REASON__FINISH_REASON_STOP:
        rq_finish(r, "stop", false);
        break;
    case MLASERVE__FINISH_REASON__FINISH_REASON_LENGTH:
        rq_finish(r, "length", false);
        break;
    default:
        rt_request_retry(r, mls_proto_status_from_wire(m->status), m->message ? m->message : "node finished with an error");
        break;
    }
}

static void rt_on_node_error(rt_router *rt, rt_node *node, const Mlaserve__Error *m)
{
    rt_request *r;
    mls_status st = mls_proto_status_from_wire(m->status);

    if (m->request_id == 0) {
        mls_warn("router: node %s reports: %s %s", node->node_id, m->status_name ? m->status_name : "",
                 m->message ? m->message : "");
        return;
    }
    r = rt_request_find(rt, m->request_id);
    if (r == NULL || (r->p != node && r->d != node)) {
        return;
    }
    /* bad input is the client's; capacity, cancellations and peer or node
     * trouble are retried on another pair */
    if (mls_status_group_of(st) == MLS_STATUS_GROUP_REQUEST && st != MLS_ERR_BUSY &&
        st != MLS_ERR_CANCELED) {
        rt_request_fail(r, 400, st, m->message ? m->message : "rejected by a node");
        return;
    }
    rt_request_retry(r, st, m->message ? m->message : mls_status_message(st));
}

static void rt_on_node_dead(rt_router *rt, rt_node *node)
{
    for (rt_request *r = rt->requests, *next; r != NULL; r = next) {
        bool hit;
        next = r->next;
        hit = r->state != RQ_DONE && r->state != RQ_QUEUED && (r->d == node || r->p == node);
        if (hit) {
            rt_request_retry(r, MLS_ERR_PEER_DEAD, "node died");
        }
    }
}

static void rt_on_request_msg(rt_router *rt, rt_node *node, const Mlaserve__Envelope *env)
{
    switch (env->msg_case) {
    case MLASERVE__ENVELOPE__MSG_RESERVED:
        rt_on_reserved(rt, node, env->reserved);
        break;
    case MLASERVE__ENVELOPE__MSG_FIRST_TOKEN:
        rt_on_first_token(rt, node, env->first_token);
        break;
    case MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK:
        rt_on_token_chunk(rt, node, env->token_chunk);
        break;
    case MLASERVE__ENVELOPE__MSG_FINISH:
        rt_on_finish(rt, node, env->finish);
        break;
    case MLASERVE__ENVELOPE__MSG_ERROR:
        rt_on_node_error(rt, node, env->error);
        break;
    default:
        mls_debug("router: node %s: message %d is not about a request", node->node_id,
                  (int)env->msg_case);
        break;
    }
}

void rt_requests_init(rt_router *rt)
{
    static const rt_node_events events = {
        .on_request_msg = rt_on_request_msg,
        .on_node_dead = rt_on_node_dead,
        .on_capacity = rt_requests_kick,
    };
    rt_nodes_set_events(rt, &events);
}

bool rt_requests_have_path(rt_router *rt, const char **why_p)
{
    bool prefill = false, decode = false, colocated = false;
    const char *why;

    for (rt_node *n = rt->nodes; n != NULL; n = n->next) {
        if (rt_node_alive(n)) {
            prefill |= n->role == MLASERVE__ROLE__ROLE_PREFILL;
            decode |= n->role == MLASERVE__ROLE__ROLE_DECODE;
            colocated |= n->role == MLASERVE__ROLE__ROLE_COLOCATED;
        }
    }
    if (colocated || (!rt->colocated_only && prefill && decode)) {
        return true;
    }
    if (rt->colocated_only) {
        why = "no colocated node";
    } else if (!prefill && !decode) {
        why = "no prefill and no decode node";
    } else {
        why = !prefill ? "no prefill node" : "no decode node";
    }
    *why_p = why;
    return false;
}

void rt_requests_tick(rt_router *rt)
{
    uint64_t now = mls_now_ns();
    uint32_t running = 0, waiting = 0;
    const char *why = NULL;
    bool have_path = rt_requests_have_path(rt, &why);

    for (rt_request *r = rt->requests, *next; r != NULL; r = next) {
        next = r->next;
        if (r->state != RQ_DONE && now > r->t_deadline) {
            rt_request_fail(r, 504, MLS_ERR_TIMED_OUT, "request deadline passed");
            continue;
        }
        if (r->state == RQ_QUEUED && !have_path) {
            if (r->t_no_path == 0) {
                r->t_no_path = now;
            } else if (now - r->t_no_path >= (uint64_t)rt->capacity_wait_ms * 1000000ull) {
                char msg[160];
                snprintf(msg, sizeof(msg), "no capacity to serve the request: %s for %u ms", why,
                         rt->capacity_wait_ms);
                rt_request_fail(r, 503, MLS_ERR_BUSY, msg);
                continue;
            }
        } else {
            r->t_no_path = 0;
        }
        if (r->state == RQ_QUEUED) {
            waiting++;
        } else if (r->state != RQ_DONE) {
            running++;
        }
    }
    mls_prom_set(rt->m_running, running);
    mls_prom_set(rt->m_waiting, waiting);
    rt_requests_kick(rt);
}

void rt_request_free(rt_request *r)
{
    rt_router *rt = r->rt;

    for (rt_request **pp = &rt->requests; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    if (rt->n_outstanding > 0) {
        rt->n_outstanding--;
    }
    if (r->http != NULL) {
        /* still owned by us: complete it so the HTTP layer frees it */
        mls_http_req_respond_error(r->http, 500, "server_error", NULL, NULL, "request abandoned");
    }
    tok_detok_destroy(r->detok);
    mls_oai_request_free(r->oai);
    free(r->prompt);
    mls_array_free(&r->gen, &r->cap_gen, sizeof(*r->gen), MLS_ALLOC_TAG_MISC);
    mls_array_free(&r->gen_logprob, &r->cap_logprob, sizeof(*r->gen_logprob), MLS_ALLOC_TAG_MISC);
    mls_array_free(&r->gen_top_ids, &r->cap_top_ids, sizeof(*r->gen_top_ids), MLS_ALLOC_TAG_MISC);
    mls_array_free(&r->gen_top_lp, &r->cap_top_lp, sizeof(*r->gen_top_lp), MLS_ALLOC_TAG_MISC);
    free(r->pages);
    mls_buf_free(&r->text);
    free(r);
    rt_requests_kick(rt);
}
