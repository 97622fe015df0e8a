/*
 * fuzz_oai_common.h - the OpenAI layer as the fuzz harnesses drive it
 * (fuzz_oai.c directly, fuzz_http.c behind the HTTP server): the limits they
 * parse under, and a response rendered from what a parsed request carries,
 * checked to be JSON that gives the same text back.
 */
#ifndef FUZZ_OAI_COMMON_H
#define FUZZ_OAI_COMMON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "mls_oai.h"

static const char *const fuzz_oai_models[] = {"deepseek-v3", "tiny"};

/* Small limits, so that every refusal is reachable from a short input. */
static inline void fuzz_oai_limits(mls_oai_limits *lim)
{
    mls_oai_limits_default(lim);
    lim->max_prompt_bytes = 2048;
    lim->max_prompt_tokens = 64;
    lim->max_messages = 8;
    lim->max_stop_bytes = 32;
    lim->max_tokens_limit = 4096;
    lim->vocab_size = 1000;
    lim->models = fuzz_oai_models;
    lim->n_models = 2;
}

/* The text a response to r echoes: the prompt, or the last message's content. */
static inline const char *fuzz_oai_text(const mls_oai_request *r)
{
    if (r->prompt != NULL) {
        return r->prompt;
    }
    if (r->n_messages > 0 && r->messages[r->n_messages - 1].content != NULL) {
        return r->messages[r->n_messages - 1].content;
    }
    return "";
}

/* The text field of a rendered response or chunk, or NULL. */
static inline const char *fuzz_oai_rendered_text(const cJSON *root, bool chat, bool chunk)
{
    const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "choices"), 0);
    const cJSON *t;

    if (!chat) {
        t = cJSON_GetObjectItem(ch, "text");
    } else {
        t = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, chunk ? "delta" : "message"), "content");
    }
    return cJSON_GetStringValue(t);
}

/*
 * Render r's echo as a whole response (chunk false) or a first stream chunk,
 * with one logprob entry per stop string; returns the malloc'd JSON after
 * checking it parses and carries the text unchanged.
 */
static inline char *fuzz_oai_render_echo(const mls_oai_request *r, bool chunk)
{
    enum { FUZZ_OAI_MAX_LP = 8 };
    mls_oai_top_logprob top[FUZZ_OAI_MAX_LP];
    mls_oai_token_logprob lps[FUZZ_OAI_MAX_LP];
    mls_oai_choice choice;
    mls_oai_usage usage = {(int64_t)r->n_prompt_ids, r->max_tokens};
    mls_oai_render_args a;
    const char *text = fuzz_oai_text(r);
    size_t n_lp = r->n_stop < FUZZ_OAI_MAX_LP ? r->n_stop : FUZZ_OAI_MAX_LP;
    char id[64];
    char *out;
    cJSON *root;
    const char *back;

    mls_oai_id_make(r->kind, id, sizeof(id));
    for (size_t i = 0; i < n_lp; i++) {
        top[i].text = r->stop[i];
        top[i].logprob = -r->temperature * (double)i;
        lps[i].text = r->stop[i];
        lps[i].logprob = -r->top_p * (double)i;
        lps[i].top = top;
        lps[i].n_top = i + 1 < r->top_logprobs ? i + 1 : r->top_logprobs;
    }
    memset(&choice, 0, sizeof(choice));
    choice.text = text;
    choice.text_len = strlen(text);
    choice.logprobs = r->logprobs ? lps : NULL;
    choice.n_logprobs = r->logprobs ? n_lp : 0;
    choice.finish_reason = chunk ? NULL : "stop";
    memset(&a, 0, sizeof(a));
    a.kind = r->kind;
    a.chunk = chunk;
    a.id = id;
    a.created = 1700000000;
    a.model = r->model;
    a.choice = &choice;
    a.usage = chunk ? NULL : &usage;
    a.first_chunk = chunk;
    a.logprobs_requested = r->logprobs;
    out = mls_oai_render(&a);
    FUZZ_CHECK(out != NULL, "render failed");
    root = cJSON_Parse(out);
    FUZZ_CHECK(root != NULL, "rendered response is not JSON: %s", out);
    back = fuzz_oai_rendered_text(root, r->kind == MLS_OAI_KIND_CHAT, chunk);
    FUZZ_CHECK(back != NULL && strcmp(back, text) == 0, "text changed in rendering: %s", out);
    cJSON_Delete(root);
    return out;
}

#endif
