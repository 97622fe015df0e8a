/*
 * mls_oai_render.c - OpenAI response bodies: completions and chat completions
 * (choices, logprobs, usage), the /v1/models list and response ids (see
 * mls_oai.h).
 */
#include "mls_oai.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mls_num.h"

/* OpenAI/vLLM clamp -inf logprobs to this so the JSON stays numeric. */
#define MLS_OAI_LOGPROB_FLOOR (-9999.0)

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
