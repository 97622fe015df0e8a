/*
 * mls_oai_parse.c - OpenAI request bodies (completions and chat completions)
 * parsed and validated into an mls_oai_request against the configured limits;
 * every refusal names the offending parameter (see mls_oai.h).
 */
#include "mls_oai.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/*
 * True when a string of the (valid) JSON text body holds a NUL: a raw 0 byte
 * or a \u0000 escape. cJSON ends its strings at a NUL, so the prompt would be
 * cut there silently. Outside strings a backslash is not valid JSON, so every
 * backslash starts a two-character escape ("\\u0000" is a backslash, then text).
 */
static bool mls_oai_body_has_nul(const char *body, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (body[i] == '\0') {
            return true;
        }
        if (body[i] == '\\' && i + 1 < len) {
            if (body[i + 1] == 'u' && i + 5 < len && memcmp(body + i + 2, "0000", 4) == 0) {
                return true;
            }
            i++; /* the escaped character */
        }
    }
    return false;
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
    if (mls_oai_body_has_nul(body, len)) {
        st = mls_oai_bad(err, kind == MLS_OAI_KIND_CHAT ? "messages" : "prompt",
                         "prompt contains a NUL character (\\u0000); strings with NUL are refused, "
                         "not truncated");
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
