/*
 * mls_oai.c - OpenAI API routing, auth, request validation and response
 * rendering (see mls_oai.h).
 */
#include "mls_oai.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mls_num.h"

/* OpenAI/vLLM clamp -inf logprobs to this so the JSON stays numeric. */
#define MLS_OAI_LOGPROB_FLOOR (-9999.0)

/* ---- errors ----------------------------------------------------------------- */

static const char *mls_oai_error_type(int http_status)
{
    switch (http_status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    default:  return http_status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void mls_oai_error_set(mls_oai_error *err, int http_status, const char *param, const char *code,
                       const char *fmt, ...)
{
    va_list ap;

    if (err == NULL) {
        return;
    }
    memset(err, 0, sizeof(*err));
    err->http_status = http_status;
    err->type = mls_oai_error_type(http_status);
    snprintf(err->param, sizeof(err->param), "%s", param != NULL ? param : "");
    snprintf(err->code, sizeof(err->code), "%s", code != NULL ? code : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
}

int mls_oai_status_http(mls_status st)
{
    switch (st) {
    case MLS_OK:               return 200;
    case MLS_ERR_INVALID_ARG:
    case MLS_ERR_PARSE:
    case MLS_ERR_UNSUPPORTED:  return 400;
    case MLS_ERR_TOO_LARGE:    return 413;
    case MLS_ERR_NOT_FOUND:    return 404;
    case MLS_ERR_BUSY:         return 429;
    case MLS_ERR_TIMED_OUT:    return 504;
    case MLS_ERR_CANCELED:
    case MLS_ERR_PEER_DEAD:
    case MLS_ERR_PEER_MISMATCH:
    case MLS_ERR_CHECKSUM:
    case MLS_ERR_IO:
    case MLS_ERR_NO_MEMORY:
    case MLS_ERR_BAD_MODEL:
    case MLS_ERR_NO_DEVICE:    return 503;
    default:                   return 500;
    }
}

char *mls_oai_error_render(const mls_oai_error *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *e = cJSON_AddObjectToObject(root, "error");
    char *out;

    if (e == NULL) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddStringToObject(e, "message", err->message);
    cJSON_AddStringToObject(e, "type", err->type != NULL ? err->type : "server_error");
    if (err->param[0] != '\0') {
        cJSON_AddStringToObject(e, "param", err->param);
    } else {
        cJSON_AddNullToObject(e, "param");
    }
    if (err->code[0] != '\0') {
        cJSON_AddStringToObject(e, "code", err->code);
    } else {
        cJSON_AddNullToObject(e, "code");
    }
    out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

/* ---- routing and auth --------------------------------------------------------- */

mls_oai_endpoint mls_oai_route(const char *method, const char *path, mls_oai_error *err)
{
    static const struct {
        const char *path;
        const char *method;
        mls_oai_endpoint ep;
    } routes[] = {
        {"/v1/completions", "POST", MLS_OAI_EP_COMPLETIONS},
        {"/v1/chat/completions", "POST", MLS_OAI_EP_CHAT},
        {"/v1/models", "GET", MLS_OAI_EP_MODELS},
        {"/health", "GET", MLS_OAI_EP_HEALTH},
        {"/metrics", "GET", MLS_OAI_EP_METRICS},
    };
    size_t plen = strlen(path);
    size_t i;

    /* One trailing slash is tolerated ("/v1/models/"). */
    if (plen > 1 && path[plen - 1] == '/') {
        plen--;
    }
    for (i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strlen(routes[i].path) != plen || strncmp(routes[i].path, path, plen) != 0) {
            continue;
        }
        if (strcmp(method, routes[i].method) == 0 ||
            (strcmp(routes[i].method, "GET") == 0 && strcmp(method, "HEAD") == 0)) {
            return routes[i].ep;
        }
        mls_oai_error_set(err, 405, NULL, "method_not_allowed",
                          "method %s is not allowed on %s; use %s", method, routes[i].path,
                          routes[i].method);
        snprintf(err->allow, sizeof(err->allow), "%s",
                 strcmp(routes[i].method, "GET") == 0 ? "GET, HEAD" : routes[i].method);
        return MLS_OAI_EP_NONE;
    }
    mls_oai_error_set(err, 404, NULL, "not_found", "no such endpoint: %s %s", method, path);
    return MLS_OAI_EP_NONE;
}

/* Constant-time in the length of the candidate key. */
static bool mls_oai_key_equal(const char *given, size_t glen, const char *key)
{
    size_t klen = strlen(key);
    unsigned diff = (unsigned)(glen ^ klen);
    size_t i;

    for (i = 0; i < klen; i++) {
        diff |= (unsigned)(unsigned char)key[i] ^ (unsigned)(unsigned char)(i < glen ? given[i] : 0);
    }
    return diff == 0;
}

bool mls_oai_auth_check(const char *authorization, const char *const *keys, size_t n_keys,
                        mls_oai_error *err)
{
    const char *tok;
    size_t tlen, i;
    bool ok = false;

    if (n_keys == 0) {
        return true;
    }
    if (authorization == NULL) {
        mls_oai_error_set(err, 401, NULL, "invalid_api_key",
                          "missing API key: send 'Authorization: Bearer <key>'");
        return false;
    }
    if (strncasecmp(authorization, "Bearer ", 7) != 0) {
        mls_oai_error_set(err, 401, NULL, "invalid_api_key",
                          "the Authorization header must be 'Bearer <key>'");
        return false;
    }
    tok = authorization + 7;
    while (*tok == ' ') {
        tok++;
    }
    tlen = strlen(tok);
    while (tlen > 0 && tok[tlen - 1] == ' ') {
        tlen--;
    }
    for (i = 0; i < n_keys; i++) {
        ok |= mls_oai_key_equal(tok, tlen, keys[i]);
    }
    if (!ok) {
        mls_oai_error_set(err, 401, NULL, "invalid_api_key", "incorrect API key provided");
    }
    return ok;
}

/* ---- request parsing -------------------------------------------------------------- */

void mls_oai_limits_default(mls_oai_limits *lim)
{
    memset(lim, 0, sizeof(*lim));
    lim->max_prompt_bytes = 1u << 20;
    lim->max_prompt_tokens = 256u * 1024u;
    lim->max_messages = 1024;
    lim->max_stop = 4;
    lim->max_stop_bytes = 256;
    lim->max_tokens_limit = 0;
    lim->max_top_logprobs = 20;
    lim->vocab_size = 0;
}

void mls_oai_request_free(mls_oai_request *r)
{
    size_t i;

    if (r == NULL) {
        return;
    }
    free(r->model);
    free(r->prompt);
    free(r->prompt_ids);
    for (i = 0; i < r->n_messages; i++) {
        free(r->messages[i].role);
        free(r->messages[i].content);
    }
    free(r->messages);
    for (i = 0; i < r->n_stop; i++) {
        free(r->stop[i]);
    }
    free(r->stop);
    free(r->stop_token_ids);
    free(r->user);
    free(r);
}

/* The member, or NULL when absent or JSON null (null means "default" in the API). */
static const cJSON *mls_oai_get(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);

    return (v == NULL || cJSON_IsNull(v)) ? NULL : v;
}

static mls_status mls_oai_bad(mls_oai_error *err, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static mls_status mls_oai_bad(mls_oai_error *err, const char *param, const char *fmt, ...)
{
    char msg[sizeof(err->message)];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    mls_oai_error_set(err, 400, param, NULL, "%s", msg);
    return MLS_ERR_INVALID_ARG;
}

static mls_status mls_oai_unsupported(mls_oai_error *err, const char *param, const char *what)
{
    mls_oai_error_set(err, 400, param, "unsupported_parameter", "'%s' is not supported: %s",
                      param, what);
    return MLS_ERR_UNSUPPORTED;
}

static mls_status mls_oai_number(const cJSON *obj, const char *name, double lo, double hi,
                                 double *v_p, mls_oai_error *err)
{
    const cJSON *v = mls_oai_get(obj, name);

    if (v == NULL) {
        return MLS_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        return mls_oai_bad(err, name, "'%s' must be a number", name);
    }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        return mls_oai_bad(err, name, "'%s' must be between %g and %g, got %g", name, lo, hi,
                           v->valuedouble);
    }
    *v_p = v->valuedouble;
    return MLS_OK;
}

static bool mls_oai_is_int(const cJSON *v, double lo, double hi)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble) &&
           v->valuedouble >= lo && v->valuedouble <= hi;
}

/* *present_p (may be NULL) says whether the member was there. */
static mls_status mls_oai_int(const cJSON *obj, const char *name, double lo, double hi,
                              int64_t *v_p, bool *present_p, mls_oai_error *err)
{
    const cJSON *v = mls_oai_get(obj, name);

    if (present_p != NULL) {
        *present_p = v != NULL;
    }
    if (v == NULL) {
        return MLS_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || !isfinite(v->valuedouble)) {
        return mls_oai_bad(err, name, "'%s' must be an integer", name);
    }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        return mls_oai_bad(err, name, "'%s' must be between %.0f and %.0f, got %.0f", name, lo, hi,
                           v->valuedouble);
    }
    *v_p = (int64_t)v->valuedouble;
    return MLS_OK;
}

static mls_status mls_oai_bool(const cJSON *obj, const char *name, bool *v_p, mls_oai_error *err)
{
    const cJSON *v = mls_oai_get(obj, name);

    if (v == NULL) {
        return MLS_OK;
    }
    if (!cJSON_IsBool(v)) {
        return mls_oai_bad(err, name, "'%s' must be a boolean", name);
    }
    *v_p = cJSON_IsTrue(v);
    return MLS_OK;
}

static mls_status mls_oai_strdup(const char *s, char **out_p, mls_oai_error *err)
{
    *out_p = strdup(s);
    if (*out_p == NULL) {
        mls_oai_error_set(err, 500, NULL, NULL, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    return MLS_OK;
}

/* Token ids from a JSON array. */
static mls_status mls_oai_ids(const cJSON *arr, const char *param, size_t max, int32_t vocab,
                              int32_t **ids_p, size_t *n_p, mls_oai_error *err)
{
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    const cJSON *v;
    int32_t *ids;

    if (n > max) {
        mls_oai_error_set(err, 413, param, "context_length_exceeded",
                          "'%s' has %zu tokens, the limit is %zu", param, n, max);
        return MLS_ERR_TOO_LARGE;
    }
    ids = malloc((n ? n : 1) * sizeof(*ids));
    if (ids == NULL) {
        mls_oai_error_set(err, 500, NULL, NULL, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    cJSON_ArrayForEach(v, arr)
    {
        double hi = vocab > 0 ? (double)vocab - 1 : 2147483647.0;
        if (!mls_oai_is_int(v, 0, hi)) {
            free(ids);
            if (vocab > 0 && mls_oai_is_int(v, 0, 2147483647.0)) {
                return mls_oai_bad(err, param, "'%s'[%zu]: token id %.0f is outside the vocabulary (%d)",
                                   param, i, v->valuedouble, vocab);
            }
            return mls_oai_bad(err, param, "'%s'[%zu] must be a non-negative integer token id",
                               param, i);
        }
        ids[i++] = (int32_t)v->valuedouble;
    }
    *ids_p = ids;
    *n_p = n;
    return MLS_OK;
}

static mls_status mls_oai_parse_prompt(const cJSON *root, const mls_oai_limits *lim,
                                       mls_oai_request *r, mls_oai_error *err)
{
    const cJSON *p = mls_oai_get(root, "prompt");
    mls_status st;

    if (p == NULL) {
        return mls_oai_bad(err, "prompt", "'prompt' is required");
    }
    /* A batch of one is the same as its element. */
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) >= 1 &&
        (cJSON_IsString(p->child) || cJSON_IsArray(p->child))) {
        if (cJSON_GetArraySize(p) > 1) {
            return mls_oai_unsupported(err, "prompt", "batched prompts (send one request each)");
        }
        p = p->child;
    }
    if (cJSON_IsString(p)) {
        size_t len = strlen(p->valuestring);
        if (len == 0) {
            return mls_oai_bad(err, "prompt", "'prompt' must not be empty");
        }
        if (len > lim->max_prompt_bytes) {
            mls_oai_error_set(err, 413, "prompt", "context_length_exceeded",
                              "'prompt' is %zu bytes, the limit is %zu", len, lim->max_prompt_bytes);
            return MLS_ERR_TOO_LARGE;
        }
        return mls_oai_strdup(p->valuestring, &r->prompt, err);
    }
    if (cJSON_IsArray(p)) {
        st = mls_oai_ids(p, "prompt", lim->max_prompt_tokens, lim->vocab_size, &r->prompt_ids,
                         &r->n_prompt_ids, err);
        if (st == MLS_OK && r->n_prompt_ids == 0) {
            return mls_oai_bad(err, "prompt", "'prompt' must not be empty");
        }
        return st;
    }
    return mls_oai_bad(err, "prompt", "'prompt' must be a string or an array of token ids");
}

/* Message content: a string, or an array of {"type":"text","text":...} parts. */
static mls_status mls_oai_parse_content(const cJSON *c, size_t i, char **out_p, size_t *total,
                                        const mls_oai_limits *lim, mls_oai_error *err)
{
    const cJSON *part;
    size_t len = 0, off = 0;
    char *s;

    if (cJSON_IsString(c)) {
        len = strlen(c->valuestring);
    } else if (cJSON_IsArray(c)) {
        cJSON_ArrayForEach(part, c)
        {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
            if (!cJSON_IsObject(part) || !cJSON_IsString(type)) {
                return mls_oai_bad(err, "messages", "messages[%zu].content parts must be objects with a 'type'", i);
            }
            if (strcmp(type->valuestring, "text") != 0) {
                mls_oai_error_set(err, 400, "messages", "unsupported_parameter",
                                  "messages[%zu].content: part type '%s' is not supported (text only)",
                                  i, type->valuestring);
                return MLS_ERR_UNSUPPORTED;
            }
            if (!cJSON_IsString(text)) {
                return mls_oai_bad(err, "messages", "messages[%zu].content: a text part needs a string 'text'", i);
            }
            len += strlen(text->valuestring);
        }
    } else {
        return mls_oai_bad(err, "messages", "messages[%zu].content must be a string or an array of text parts", i);
    }
    *total += len;
    if (*total > lim->max_prompt_bytes) {
        mls_oai_error_set(err, 413, "messages", "context_length_exceeded",
                          "messages are over %zu bytes in total", lim->max_prompt_bytes);
        return MLS_ERR_TOO_LARGE;
    }
    s = malloc(len + 1);
    if (s == NULL) {
        mls_oai_error_set(err, 500, NULL, NULL, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    if (cJSON_IsString(c)) {
        memcpy(s, c->valuestring, len);
    } else {
        cJSON_ArrayForEach(part, c)
        {
            const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
            size_t tl = strlen(t);
            memcpy(s + off, t, tl);
            off += tl;
        }
    }
    s[len] = '\0';
    *out_p = s;
    return MLS_OK;
}

static mls_status mls_oai_parse_messages(const cJSON *root, const mls_oai_limits *lim,
                                         mls_oai_request *r, mls_oai_error *err)
{
    const cJSON *msgs = mls_oai_get(root, "messages");
    const cJSON *m;
    size_t n, i = 0, total = 0;
    mls_status st;

    if (msgs == NULL) {
        return mls_oai_bad(err, "messages", "'messages' is required");
    }
    if (!cJSON_IsArray(msgs) || (n = (size_t)cJSON_GetArraySize(msgs)) == 0) {
        return mls_oai_bad(err, "messages", "'messages' must be a non-empty array");
    }
    if (n > lim->max_messages) {
        mls_oai_error_set(err, 413, "messages", NULL, "%zu messages, the limit is %u", n,
                          lim->max_messages);
        return MLS_ERR_TOO_LARGE;
    }
    r->messages = calloc(n, sizeof(*r->messages));
    if (r->messages == NULL) {
        mls_oai_error_set(err, 500, NULL, NULL, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    cJSON_ArrayForEach(m, msgs)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = mls_oai_get(m, "content");
        const char *rs;

        if (!cJSON_IsObject(m)) {
            return mls_oai_bad(err, "messages", "messages[%zu] must be an object", i);
        }
        if (!cJSON_IsString(role)) {
            return mls_oai_bad(err, "messages", "messages[%zu].role must be a string", i);
        }
        rs = role->valuestring;
        if (strcmp(rs, "developer") == 0) {
            rs = "system";
        }
        if (strcmp(rs, "system") != 0 && strcmp(rs, "user") != 0 && strcmp(rs, "assistant") != 0) {
            if (strcmp(rs, "tool") == 0 || strcmp(rs, "function") == 0) {
                mls_oai_error_set(err, 400, "messages", "unsupported_parameter",
                                  "messages[%zu]: role '%s' is not supported (no tool calling)", i, rs);
                return MLS_ERR_UNSUPPORTED;
            }
            return mls_oai_bad(err, "messages",
                               "messages[%zu].role '%s' must be system, user, assistant or developer",
                               i, rs);
        }
        if (mls_oai_get(m, "tool_calls") != NULL || mls_oai_get(m, "function_call") != NULL) {
            mls_oai_error_set(err, 400, "messages", "unsupported_parameter",
                              "messages[%zu]: tool calls are not supported", i);
            return MLS_ERR_UNSUPPORTED;
        }
        if (content == NULL) {
            return mls_oai_bad(err, "messages", "messages[%zu].content is required", i);
        }
        r->n_messages = i + 1; /* owned from here on, so free() sees it */
        st = mls_oai_strdup(rs, &r->messages[i].role, err);
        if (st != MLS_OK) {
            return st;
        }
        st = mls_oai_parse_content(content, i, &r->messages[i].content, &total, lim, err);
        if (st != MLS_OK) {
            return st;
        }
        i++;
    }
    return MLS_OK;
}

static mls_status mls_oai_parse_stop(const cJSON *root, const mls_oai_limits *lim,
                                     mls_oai_request *r, mls_oai_error *err)
{
    const cJSON *s = mls_oai_get(root, "stop");
    const cJSON *v;
    size_t n, i = 0;
    mls_status st;

    if (s == NULL) {
        return MLS_OK;
    }
    if (!cJSON_IsString(s) && !cJSON_IsArray(s)) {
        return mls_oai_bad(err, "stop", "'stop' must be a string or an array of strings");
    }
    n = cJSON_IsString(s) ? 1 : (size_t)cJSON_GetArraySize(s);
    if (n > lim->max_stop) {
        return mls_oai_bad(err, "stop", "'stop' has %zu sequences, at most %u are allowed", n,
                           lim->max_stop);
    }
    if (n == 0) {
        return MLS_OK;
    }
    r->stop = calloc(n, sizeof(*r->stop));
    if (r->stop == NULL) {
        mls_oai_error_set(err, 500, NULL, NULL, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    for (v = cJSON_IsString(s) ? s : s->child; v != NULL && i < n; v = v->next) {
        if (!cJSON_IsString(v)) {
            return mls_oai_bad(err, "stop", "'stop'[%zu] must be a string", i);
        }
        if (v->valuestring[0] == '\0' || strlen(v->valuestring) > lim->max_stop_bytes) {
            return mls_oai_bad(err, "stop", "'stop'[%zu] must be 1 to %zu bytes long", i,
                               lim->max_stop_bytes);
        }
        st = mls_oai_strdup(v->valuestring, &r->stop[i], err);
        r->n_stop = i + 1;
        if (st != MLS_OK) {
            return st;
        }
        i++;
    }
    return MLS_OK;
}

/* Parameters OpenAI defines that this server refuses unless they are neutral. */
static mls_status mls_oai_parse_refused(const cJSON *root, mls_oai_kind kind, mls_oai_error *err)
{
    static const char *const absent_only[] = {"tools", "tool_choice", "functions",
                                              "function_call", "suffix", "audio",
                                              "prediction", "guided_json", "guided_regex"};
    const cJSON *v;
    double d = 0;
    int64_t i64 = 1;
    size_t i;
    mls_status st;

    for (i = 0; i < sizeof(absent_only) / sizeof(absent_only[0]); i++) {
        if (mls_oai_get(root, absent_only[i]) != NULL) {
            return mls_oai_unsupported(err, absent_only[i], "this server does plain generation only");
        }
    }
    if ((st = mls_oai_int(root, "n", 1, 128, &i64, NULL, err)) != MLS_OK) {
        return st;
    }
    if (i64 != 1) {
        return mls_oai_unsupported(err, "n", "only n=1 is supported");
    }
    if ((st = mls_oai_int(root, "best_of", 1, 128, &i64, NULL, err)) != MLS_OK) {
        return st;
    }
    if (i64 != 1) {
        return mls_oai_unsupported(err, "best_of", "only best_of=1 is supported");
    }
    if ((st = mls_oai_number(root, "presence_penalty", -2, 2, &d, err)) != MLS_OK) {
        return st;
    }
    if (d != 0) {
        return mls_oai_unsupported(err, "presence_penalty", "only 0 is supported");
    }
    if ((st = mls_oai_number(root, "frequency_penalty", -2, 2, &d, err)) != MLS_OK) {
        return st;
    }
    if (d != 0) {
        return mls_oai_unsupported(err, "frequency_penalty", "only 0 is supported");
    }
    d = 1;
    if ((st = mls_oai_number(root, "repetition_penalty", 0, 1e9, &d, err)) != MLS_OK) {
        return st;
    }
    if (d != 1) {
        return mls_oai_unsupported(err, "repetition_penalty", "only 1 is supported");
    }
    v = mls_oai_get(root, "logit_bias");
    if (v != NULL && (!cJSON_IsObject(v) || v->child != NULL)) {
        return mls_oai_unsupported(err, "logit_bias", "logit bias is not implemented");
    }
    v = mls_oai_get(root, "response_format");
    if (v != NULL) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
        if (!cJSON_IsObject(v) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") != 0) {
            return mls_oai_unsupported(err, "response_format", "only {\"type\":\"text\"}");
        }
    }
    if (kind == MLS_OAI_KIND_COMPLETION) {
        bool echo = false;
        if ((st = mls_oai_bool(root, "echo", &echo, err)) != MLS_OK) {
            return st;
        }
        if (echo) {
            return mls_oai_unsupported(err, "echo", "echo=true");
        }
    }
    return MLS_OK;
}

static mls_status mls_oai_parse_model(const cJSON *root, const mls_oai_limits *lim,
                                      mls_oai_request *r, mls_oai_error *err)
{
    const cJSON *m = mls_oai_get(root, "model");
    size_t i;

    if (m != NULL && !cJSON_IsString(m)) {
        return mls_oai_bad(err, "model", "'model' must be a string");
    }
    if (lim->n_models == 0) {
        return mls_oai_strdup(m != NULL ? m->valuestring : "", &r->model, err);
    }
    if (m == NULL) {
        return mls_oai_strdup(lim->models[0], &r->model, err); /* the default model */
    }
    for (i = 0; i < lim->n_models; i++) {
        if (strcmp(lim->models[i], m->valuestring) == 0) {
            return mls_oai_strdup(m->valuestring, &r->model, err);
        }
    }
    mls_oai_error_set(err, 404, "model", "model_not_found", "the model '%.200s' does not exist",
                      m->valuestring);
    return MLS_ERR_NOT_FOUND;
}

static mls_status mls_oai_parse_sampling(const cJSON *root, mls_oai_kind kind,
                                         const mls_oai_limits *lim, mls_oai_request *r,
                                         mls_oai_error *err)
{
    double max_tok_hi = lim->max_tokens_limit > 0 ? (double)lim->max_tokens_limit : 2147483647.0;
    int64_t i64 = 0;
    bool present = false;
    const cJSON *v;
    mls_status st;

    if ((st = mls_oai_int(root, "max_tokens", 1, max_tok_hi, &r->max_tokens, NULL, err)) != MLS_OK ||
        (st = mls_oai_int(root, "max_completion_tokens", 1, max_tok_hi, &r->max_tokens, NULL, err)) != MLS_OK ||
        (st = mls_oai_number(root, "temperature", 0, 2, &r->temperature, err)) != MLS_OK ||
        (st = mls_oai_number(root, "top_p", 0, 1, &r->top_p, err)) != MLS_OK ||
        (st = mls_oai_bool(root, "ignore_eos", &r->ignore_eos, err)) != MLS_OK ||
        (st = mls_oai_bool(root, "stream", &r->stream, err)) != MLS_OK) {
        return st;
    }
    if (r->top_p <= 0) {
        return mls_oai_bad(err, "top_p", "'top_p' must be in (0, 1]");
    }
    if ((st = mls_oai_int(root, "top_k", -1, 1e9, &i64, &present, err)) != MLS_OK) {
        return st;
    }
    if (present) {
        r->top_k = i64 == 0 ? -1 : (int32_t)i64; /* 0 and -1 both disable */
    }
    v = mls_oai_get(root, "seed");
    if (v != NULL) {
        /* Any 64-bit integer, signed or unsigned; negative ones wrap as in two's complement. */
        if (!mls_oai_is_int(v, -9223372036854775808.0, 18446744073709549568.0)) {
            return mls_oai_bad(err, "seed", "'seed' must be a 64-bit integer");
        }
        r->has_seed = true;
        r->seed = v->valuedouble < 0 ? (uint64_t)(int64_t)v->valuedouble
                                     : (uint64_t)v->valuedouble;
    }
    v = mls_oai_get(root, "stop_token_ids");
    if (v != NULL) {
        if (!cJSON_IsArray(v)) {
            return mls_oai_bad(err, "stop_token_ids", "'stop_token_ids' must be an array of token ids");
        }
        if ((st = mls_oai_ids(v, "stop_token_ids", 1024, lim->vocab_size, &r->stop_token_ids,
                              &r->n_stop_token_ids, err)) != MLS_OK) {
            return st;
        }
    }
    v = mls_oai_get(root, "stream_options");
    if (v != NULL) {
        if (!cJSON_IsObject(v)) {
            return mls_oai_bad(err, "stream_options", "'stream_options' must be an object");
        }
        if (!r->stream) {
            return mls_oai_bad(err, "stream_options", "'stream_options' is only allowed when 'stream' is true");
        }
        if (mls_oai_bool(v, "include_usage", &r->include_usage, err) != MLS_OK) {
            return mls_oai_bad(err, "stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
        }
    }
    /* logprobs: completions take an integer (alternatives); chat a boolean + top_logprobs. */
    v = mls_oai_get(root, "logprobs");
    if (kind == MLS_OAI_KIND_COMPLETION) {
        if (v != NULL) {
            if (!mls_oai_is_int(v, 0, lim->max_top_logprobs)) {
                return mls_oai_bad(err, "logprobs", "'logprobs' must be an integer between 0 and %u",
                                   lim->max_top_logprobs);
            }
            r->logprobs = true;
            r->top_logprobs = (uint32_t)v->valuedouble;
        }
    } else {
        if ((st = mls_oai_bool(root, "logprobs", &r->logprobs, err)) != MLS_OK) {
            return st;
        }
        if ((st = mls_oai_int(root, "top_logprobs", 0, lim->max_top_logprobs, &i64, &present, err)) != MLS_OK) {
            return st;
        }
        if (present) {
            if (!r->logprobs && i64 > 0) {
                return mls_oai_bad(err, "top_logprobs", "'top_logprobs' requires 'logprobs': true");
            }
            r->top_logprobs = (uint32_t)i64;
        }
    }
    v = mls_oai_get(root, "user");
    if (v != NULL) {
        if (!cJSON_IsString(v)) {
            return mls_oai_bad(err, "user", "'user' must be a string");
        }
        if ((st = mls_oai_strdup(v->valuestring, &r->user, err)) != MLS_OK) {
            return st;
        }
    }
    return MLS_OK;
}

mls_status mls_oai_request_parse(mls_oai_kind kind, const char *body, size_t len,
                                 const mls_oai_limits *lim, mls_oai_request **req_p,
                                 mls_oai_error *err)
{
    mls_oai_limits dflt;
    mls_oai_request *r = NULL;
    const char *end = NULL;
    cJSON *root;
    mls_status st;

    if (lim == NULL) {
        mls_oai_limits_default(&dflt);
        lim = &dflt;
    }
    root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (root == NULL) {
        size_t off = end != NULL && end >= body ? (size_t)(end - body) : 0;
        mls_oai_error_set(err, 400, NULL, "invalid_json",
                          "request body is not valid JSON (error near byte %zu)", off);
        return MLS_ERR_PARSE;
    }
    /* Only whitespace may follow the value. */
    while (end != NULL && end < body + len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t')) {
        end++;
    }
    if (end != NULL && end < body + len) {
        mls_oai_error_set(err, 400, NULL, "invalid_json",
                          "request body is not valid JSON (trailing data at byte %zu)",
                          (size_t)(end - body));
        st = MLS_ERR_PARSE;
        goto out_delete_json;
    }
    if (!cJSON_IsObject(root)) {
        mls_oai_error_set(err, 400, NULL, "invalid_json", "request body must be a JSON object");
        st = MLS_ERR_PARSE;
        goto out_delete_json;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL) {
        mls_oai_error_set(err, 500, NULL, NULL, "out of memory");
        st = MLS_ERR_NO_MEMORY;
        goto out_delete_json;
    }
    r->kind = kind;
    r->max_tokens = -1;
    r->temperature = 1.0;
    r->top_p = 1.0;
    r->top_k = -1;
    st = mls_oai_parse_model(root, lim, r, err);
    if (st == MLS_OK) {
        st = kind == MLS_OAI_KIND_COMPLETION ? mls_oai_parse_prompt(root, lim, r, err)
                                             : mls_oai_parse_messages(root, lim, r, err);
    }
    if (st == MLS_OK) {
        st = mls_oai_parse_refused(root, kind, err);
    }
    if (st == MLS_OK) {
        st = mls_oai_parse_sampling(root, kind, lim, r, err);
    }
    if (st == MLS_OK) {
        st = mls_oai_parse_stop(root, lim, r, err);
    }
    if (st != MLS_OK) {
        mls_oai_request_free(r);
        goto out_delete_json;
    }
    *req_p = r;
out_delete_json:
    cJSON_Delete(root);
    return st;
}

/* ---- rendering -------------------------------------------------------------------- */

static double mls_oai_lp(double lp)
{
    return (isfinite(lp) && lp > MLS_OAI_LOGPROB_FLOOR) ? lp : MLS_OAI_LOGPROB_FLOOR;
}

static cJSON *mls_oai_bytes_array(const char *s)
{
    cJSON *a = cJSON_CreateArray();
    size_t i;

    for (i = 0; a != NULL && s[i] != '\0'; i++) {
        cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)s[i]));
    }
    return a;
}

/* Completions: {"tokens","token_logprobs","top_logprobs","text_offset"}. */
static cJSON *mls_oai_completion_logprobs(const mls_oai_choice *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    size_t off = c->text_offset, i, k;

    for (i = 0; i < c->n_logprobs; i++) {
        const mls_oai_token_logprob *t = &c->logprobs[i];
        cJSON *top = cJSON_CreateObject();
        cJSON_AddItemToArray(tokens, cJSON_CreateString(t->text));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(mls_oai_lp(t->logprob)));
        for (k = 0; k < t->n_top; k++) {
            if (cJSON_GetObjectItemCaseSensitive(top, t->top[k].text) == NULL) {
                cJSON_AddNumberToObject(top, t->top[k].text, mls_oai_lp(t->top[k].logprob));
            }
        }
        cJSON_AddItemToArray(tops, top);
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        off += strlen(t->text);
    }
    return o;
}

/* Chat: {"content":[{"token","logprob","bytes","top_logprobs":[...]}]}. */
static cJSON *mls_oai_chat_logprobs(const mls_oai_choice *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(o, "content");
    size_t i, k;

    for (i = 0; i < c->n_logprobs; i++) {
        const mls_oai_token_logprob *t = &c->logprobs[i];
        cJSON *e = cJSON_CreateObject();
        cJSON *tops;
        cJSON_AddStringToObject(e, "token", t->text);
        cJSON_AddNumberToObject(e, "logprob", mls_oai_lp(t->logprob));
        cJSON_AddItemToObject(e, "bytes", mls_oai_bytes_array(t->text));
        tops = cJSON_AddArrayToObject(e, "top_logprobs");
        for (k = 0; k < t->n_top; k++) {
            cJSON *te = cJSON_CreateObject();
            cJSON_AddStringToObject(te, "token", t->top[k].text);
            cJSON_AddNumberToObject(te, "logprob", mls_oai_lp(t->top[k].logprob));
            cJSON_AddItemToObject(te, "bytes", mls_oai_bytes_array(t->top[k].text));
            cJSON_AddItemToArray(tops, te);
        }
        cJSON_AddItemToArray(content, e);
    }
    return o;
}

static char *mls_oai_text_dup(const mls_oai_choice *c)
{
    char *s = malloc(c->text_len + 1);

    if (s != NULL) {
        if (c->text_len > 0) {
            memcpy(s, c->text, c->text_len);
        }
        s[c->text_len] = '\0';
    }
    return s;
}

static bool mls_oai_render_choice(const mls_oai_render_args *a, cJSON *choices)
{
    const mls_oai_choice *c = a->choice;
    cJSON *ch = cJSON_CreateObject();
    char *text = mls_oai_text_dup(c);
    bool chat = a->kind == MLS_OAI_KIND_CHAT;

    if (ch == NULL || text == NULL) {
        cJSON_Delete(ch);
        free(text);
        return false;
    }
    cJSON_AddItemToArray(choices, ch);
    cJSON_AddNumberToObject(ch, "index", c->index);
    if (!chat) {
        cJSON_AddStringToObject(ch, "text", text);
    } else if (a->chunk) {
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        if (a->first_chunk) {
            cJSON_AddStringToObject(delta, "role", "assistant");
        }
        if (c->text_len > 0 || a->first_chunk) {
            cJSON_AddStringToObject(delta, "content", text);
        }
    } else {
        cJSON *msg = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", text);
    }
    free(text);
    if (c->logprobs != NULL && c->n_logprobs > 0) {
        cJSON_AddItemToObject(ch, "logprobs", chat ? mls_oai_chat_logprobs(c)
                                                   : mls_oai_completion_logprobs(c));
    } else if (a->logprobs_requested && chat) {
        cJSON *lp = cJSON_AddObjectToObject(ch, "logprobs");
        cJSON_AddArrayToObject(lp, "content");
    } else {
        cJSON_AddNullToObject(ch, "logprobs");
    }
    if (c->finish_reason != NULL) {
        cJSON_AddStringToObject(ch, "finish_reason", c->finish_reason);
    } else {
        cJSON_AddNullToObject(ch, "finish_reason");
    }
    return true;
}

char *mls_oai_render(const mls_oai_render_args *a)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *choices;
    const char *object;
    char *out = NULL;

    if (root == NULL) {
        return NULL;
    }
    if (a->kind == MLS_OAI_KIND_COMPLETION) {
        object = "text_completion";
    } else {
        object = a->chunk ? "chat.completion.chunk" : "chat.completion";
    }
    cJSON_AddStringToObject(root, "id", a->id != NULL ? a->id : "");
    cJSON_AddStringToObject(root, "object", object);
    cJSON_AddNumberToObject(root, "created", (double)a->created);
    cJSON_AddStringToObject(root, "model", a->model != NULL ? a->model : "");
    choices = cJSON_AddArrayToObject(root, "choices");
    if (choices == NULL || (a->choice != NULL && !mls_oai_render_choice(a, choices))) {
        goto out_delete;
    }
    if (a->usage != NULL) {
        cJSON *u = cJSON_AddObjectToObject(root, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", (double)a->usage->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens", (double)a->usage->completion_tokens);
        cJSON_AddNumberToObject(u, "total_tokens",
                                (double)(a->usage->prompt_tokens + a->usage->completion_tokens));
    }
    out = cJSON_PrintUnformatted(root);
out_delete:
    cJSON_Delete(root);
    return out;
}

char *mls_oai_models_render(const char *const *ids, size_t n, int64_t created,
                            const char *owned_by, uint32_t max_model_len)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *data;
    char *out;
    size_t i;

    cJSON_AddStringToObject(root, "object", "list");
    data = cJSON_AddArrayToObject(root, "data");
    for (i = 0; data != NULL && i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "id", ids[i]);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", (double)created);
        cJSON_AddStringToObject(m, "owned_by", owned_by != NULL ? owned_by : "mlaserve");
        if (max_model_len > 0) {
            cJSON_AddNumberToObject(m, "max_model_len", (double)max_model_len);
        }
        cJSON_AddItemToArray(data, m);
    }
    out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

void mls_oai_id_make(mls_oai_kind kind, char *buf, size_t len)
{
    static atomic_uint_fast64_t counter;
    static atomic_uint_fast32_t salt;
    uint32_t s = (uint32_t)atomic_load(&salt);
    uint64_t n = atomic_fetch_add(&counter, 1) + 1;

    if (s == 0) {
        uint64_t x = mls_now_ns() ^ ((uint64_t)getpid() << 32);
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        s = (uint32_t)x | 1u;
        atomic_store(&salt, s);
    }
    /* Mix the counter so consecutive ids do not look sequential. */
    n *= 0x9e3779b97f4a7c15ull;
    snprintf(buf, len, "%s%08x%016llx", kind == MLS_OAI_KIND_CHAT ? "chatcmpl-" : "cmpl-", s,
             (unsigned long long)n);
}
