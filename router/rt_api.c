/*
 * rt_api.c - the router's HTTP handler: OpenAI endpoints, authentication,
 * tokenization, admission control, and the glue from a validated request to
 * rt_request_start().
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mls_log.h"
#include "mls_num.h"
#include "rt_api.h"

static void rt_api_error(mls_http_req *req, const mls_oai_error *e)
{
    char *json = mls_oai_error_render(e);
    char buf[16];

    if (e->allow[0] != '\0') {
        mls_http_req_add_header(req, "Allow", e->allow);
    }
    if (e->retry_after_s > 0) {
        snprintf(buf, sizeof(buf), "%u", e->retry_after_s);
        mls_http_req_add_header(req, "Retry-After", buf);
    }
    if (json == NULL) {
        mls_http_req_respond_error(req, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    mls_http_req_respond(req, e->http_status, "application/json", json, strlen(json));
    free(json);
}

static void rt_on_client_close(mls_http_req *req, void *owner)
{
    rt_request *r = owner;

    /* the client went away: free the pages and slots at once */
    mls_info("router: request %llu: client disconnected", (unsigned long long)r->serial);
    r->http = NULL;
    /* complete (and so free) the HTTP request; nothing reaches the client now */
    if (r->stream_started) {
        mls_http_req_stream_end(req);
    } else {
        mls_http_req_respond_error(req, 499, "invalid_request_error", NULL, NULL, "client disconnected");
    }
    rt_request_fail(r, 499, MLS_ERR_CANCELED, "client disconnected");
}

/* Tokenize the prompt: chat messages through the template, text with BOS. */
static mls_status rt_tokenize(rt_router *rt, const mls_oai_request *o, tok_ids *ids, mls_oai_error *e)
{
    mls_err err = {{0}};
    mls_status st;

    if (o->kind == MLS_OAI_KIND_CHAT) {
        tok_chat_msg *msgs = calloc(o->n_messages, sizeof(*msgs));
        if (msgs == NULL) {
            return MLS_ERR_NO_MEMORY;
        }
        for (size_t i = 0; i < o->n_messages; i++) {
            msgs[i].role = o->messages[i].role;
            msgs[i].content = o->messages[i].content;
        }
        st = tok_chat_encode(rt->tok, msgs, o->n_messages, true, ids, &err);
        free(msgs);
    } else if (o->prompt != NULL) {
        st = MLS_OK;
        if (tok_add_bos(rt->tok) && tok_bos_id(rt->tok) >= 0) {
            st = tok_ids_push(ids, tok_bos_id(rt->tok));
        }
        if (st == MLS_OK) {
            st = tok_encode(rt->tok, o->prompt, strlen(o->prompt), ids, &err);
        }
    } else {
        st = MLS_OK;
        for (size_t i = 0; i < o->n_prompt_ids && st == MLS_OK; i++) {
            st = tok_ids_push(ids, o->prompt_ids[i]);
        }
    }
    if (st != MLS_OK) {
        mls_oai_error_set(e, 400, o->kind == MLS_OAI_KIND_CHAT ? "messages" : "prompt", NULL,
                          "cannot tokenize the prompt: %s", err.msg[0] ? err.msg : mls_status_message(st));
    }
    return st;
}

static void rt_api_generate(rt_router *rt, mls_http_req *req, mls_oai_kind kind)
{
    mls_oai_error e;
    mls_oai_request *o = NULL;
    tok_ids ids = {0};
    rt_request *r = NULL;
    size_t len;
    const char *body = mls_http_req_body(req, &len);
    uint32_t ctx_limit = rt_context_limit(rt);
    mls_err err = {{0}};

    memset(&e, 0, sizeof(e));
    if (mls_oai_request_parse(kind, body, len, &rt->limits, &o, &e) != MLS_OK) {
        rt_api_error(req, &e);
        return;
    }
    if (ctx_limit == 0) {
        mls_oai_error_set(&e, 503, NULL, "unavailable", "no decode capacity: no live decode or colocated node");
        e.retry_after_s = 1;
        goto err_free_request;
    }
    if (rt->n_outstanding >= rt->max_outstanding) {
        mls_oai_error_set(&e, 429, NULL, "rate_limited", "the cluster is saturated (%u requests in flight); retry later",
                          rt->n_outstanding);
        e.retry_after_s = 1;
        goto err_free_request;
    }
    if (rt_tokenize(rt, o, &ids, &e) != MLS_OK) {
        goto err_free_request;
    }
    if (ids.n == 0) {
        mls_oai_error_set(&e, 400, "prompt", NULL, "the prompt is empty");
        goto err_free_request;
    }
    for (size_t i = 0; i < ids.n; i++) {
        if (ids.ids[i] < 0 || ids.ids[i] >= tok_vocab_size(rt->tok)) {
            mls_oai_error_set(&e, 400, "prompt", NULL, "token id %d is outside the vocabulary", ids.ids[i]);
            goto err_free_request;
        }
    }
    if (ids.n >= ctx_limit) {
        mls_oai_error_set(&e, 400, kind == MLS_OAI_KIND_CHAT ? "messages" : "prompt", "context_length_exceeded",
                          "the prompt has %zu tokens; this cluster's context is %u tokens", ids.n, ctx_limit);
        goto err_free_request;
    }
    if (o->max_tokens >= 0 && (uint64_t)ids.n + (uint64_t)o->max_tokens > ctx_limit) {
        mls_oai_error_set(&e, 400, "max_tokens", "context_length_exceeded",
                          "prompt (%zu tokens) + max_tokens (%lld) exceeds the context of %u tokens", ids.n,
                          (long long)o->max_tokens, ctx_limit);
        goto err_free_request;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL || tok_detok_create(rt->tok, true, &r->detok, &err) != MLS_OK) {
        mls_oai_error_set(&e, 500, NULL, NULL, "out of memory");
        free(r);
        r = NULL;
        goto err_free_request;
    }
    r->rt = rt;
    r->http = req;
    r->oai = o;
    r->kind = kind;
    r->serial = ++rt->next_serial;
    mls_oai_id_make(kind, r->id, sizeof(r->id));
    r->created = (int64_t)time(NULL);
    r->top_n = o->logprobs ? o->top_logprobs : 0;
    r->n_prompt = (int32_t)ids.n;
    r->prompt = tok_ids_detach(&ids, NULL); /* the request's now, freed with it */
    if (o->max_tokens >= 0) {
        r->max_tokens = (uint32_t)o->max_tokens;
    } else {
        uint32_t room = ctx_limit - (uint32_t)r->n_prompt;
        r->max_tokens = kind == MLS_OAI_KIND_COMPLETION ? 16 : rt->default_max_tokens;
        r->max_tokens = r->max_tokens < room ? r->max_tokens : room;
    }
    if (r->max_tokens == 0) {
        r->max_tokens = 1;
    }
    r->t_arrival = mls_http_req_start_ns(req);
    r->t_deadline = mls_now_ns() + (uint64_t)rt->request_timeout_ms * 1000000ull;
    r->state = RQ_QUEUED;
    /* append: the queue is served in arrival order */
    {
        rt_request **pp = &rt->requests;
        while (*pp != NULL) {
            pp = &(*pp)->next;
        }
        *pp = r;
    }
    rt->n_outstanding++;
    mls_http_req_set_callbacks(req, rt_on_client_close, NULL, r);
    rt_request_start(r);
    return;

err_free_request:
    tok_ids_free(&ids);
    mls_oai_request_free(o);
    rt_api_error(req, &e);
}

/* /health: liveness, 200 while the process serves. /ready: readiness, 200
 * only with a path for requests (a prefill and a decode node, or a colocated
 * one), else 503 with the reason. */
static void rt_api_health(rt_router *rt, mls_http_req *req, bool ready)
{
    const char *why = NULL;
    char body[160];
    int n;

    if (!ready || rt_requests_have_path(rt, &why)) {
        n = snprintf(body, sizeof(body), "{\"status\":\"ok\"}");
        mls_http_req_respond(req, 200, "application/json", body, (size_t)n);
        return;
    }
    n = snprintf(body, sizeof(body), "{\"status\":\"not ready\",\"reason\":\"%s\"}", why);
    mls_http_req_respond(req, 503, "application/json", body, (size_t)n);
}

static void rt_api_metrics(rt_router *rt, mls_http_req *req)
{
    char *text;
    size_t len;

    if (mls_prom_render(rt->prom, &text, &len) != MLS_OK) {
        mls_http_req_respond_error(req, 500, "server_error", NULL, NULL, "cannot render metrics");
        return;
    }
    mls_http_req_respond(req, 200, MLS_PROM_CONTENT_TYPE, text, len);
    free(text);
}

void rt_api_metrics_handle(mls_http_req *req, void *user)
{
    rt_router *rt = user;
    mls_oai_error e;
    mls_oai_endpoint ep;

    memset(&e, 0, sizeof(e));
    ep = mls_oai_route(mls_http_req_method(req), mls_http_req_path(req), &e);
    if (ep == MLS_OAI_EP_METRICS) {
        rt_api_metrics(rt, req);
    } else if (ep == MLS_OAI_EP_HEALTH || ep == MLS_OAI_EP_READY) {
        rt_api_health(rt, req, ep == MLS_OAI_EP_READY);
    } else {
        if (ep != MLS_OAI_EP_NONE) {
            mls_oai_error_set(&e, 404, NULL, "not_found", "this address serves /metrics, /health and /ready only");
        }
        rt_api_error(req, &e);
    }
}

void rt_api_handle(mls_http_req *req, void *user)
{
    rt_router *rt = user;
    mls_oai_error e;
    mls_oai_endpoint ep;

    memset(&e, 0, sizeof(e));
    ep = mls_oai_route(mls_http_req_method(req), mls_http_req_path(req), &e);
    if (ep == MLS_OAI_EP_NONE) {
        rt_api_error(req, &e);
        return;
    }
    if (ep == MLS_OAI_EP_HEALTH || ep == MLS_OAI_EP_READY) {
        rt_api_health(rt, req, ep == MLS_OAI_EP_READY);
        return;
    }
    /* everything else, /metrics included, behind the key when one is set */
    if (!mls_oai_auth_check(mls_http_req_header(req, "Authorization"), (const char *const *)rt->api_keys,
                            rt->n_api_keys, &e)) {
        rt_api_error(req, &e);
        return;
    }
    if (ep == MLS_OAI_EP_METRICS) {
        if (rt->metrics_http != NULL) {
            mls_oai_error_set(&e, 404, NULL, "not_found", "/metrics is served on its own address (--metrics-listen)");
            rt_api_error(req, &e);
            return;
        }
        rt_api_metrics(rt, req);
        return;
    }
    if (ep == MLS_OAI_EP_MODELS) {
        const char *ids[1] = {rt->served_model};
        char *json = mls_oai_models_render(ids, rt->served_model[0] ? 1 : 0, (int64_t)time(NULL), "mlaserve",
                                           rt_context_limit(rt));
        if (json == NULL) {
            mls_http_req_respond_error(req, 500, "server_error", NULL, NULL, "out of memory");
            return;
        }
        mls_http_req_respond(req, 200, "application/json", json, strlen(json));
        free(json);
        return;
    }
    /* the served model id is only known once a node registered */
    if (rt->served_model[0] != '\0') {
        rt->models[0] = rt->served_model;
        rt->limits.models = rt->models;
        rt->limits.n_models = 1;
    }
    rt_api_generate(rt, req, ep == MLS_OAI_EP_CHAT ? MLS_OAI_KIND_CHAT : MLS_OAI_KIND_COMPLETION);
}
