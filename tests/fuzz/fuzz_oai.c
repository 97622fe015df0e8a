/*
 * fuzz_oai.c - libFuzzer harness for the OpenAI request bodies
 * (router/mls_oai.h): what any API client may POST to /v1/completions and
 * /v1/chat/completions, parsed and validated without the HTTP server around
 * it (fuzz_http.c covers the two together).
 *
 * Input: one byte choosing the endpoint (even: completions, odd: chat), then
 * the body. Properties: a refusal fills the error (4xx status, a message) and
 * leaves no request; an accepted request has its kind, exactly one prompt
 * form or its messages, values inside the limits; the error and an echo
 * response render as JSON that carries the text unchanged.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_oai_common.h"

static mls_oai_limits fuzz_lim;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_log_quiet();
    fuzz_oai_limits(&fuzz_lim);
    return 0;
}

static void fuzz_oai_check_request(const mls_oai_request *r, mls_oai_kind kind)
{
    FUZZ_CHECK(r->kind == kind, "kind %d, parsed as %d", kind, r->kind);
    FUZZ_CHECK(r->model != NULL, "no model string");
    if (kind == MLS_OAI_KIND_COMPLETION) {
        FUZZ_CHECK((r->prompt != NULL) != (r->prompt_ids != NULL && r->n_prompt_ids > 0) ||
                       (r->prompt == NULL && r->n_prompt_ids == 0 && r->prompt_ids == NULL),
                   "prompt text and ids both set");
        FUZZ_CHECK(r->prompt == NULL || strlen(r->prompt) <= fuzz_lim.max_prompt_bytes,
                   "prompt of %zu bytes", strlen(r->prompt));
        FUZZ_CHECK(r->n_prompt_ids <= fuzz_lim.max_prompt_tokens, "%zu prompt ids",
                   r->n_prompt_ids);
        for (size_t i = 0; i < r->n_prompt_ids; i++) {
            FUZZ_CHECK(r->prompt_ids[i] >= 0 && r->prompt_ids[i] < fuzz_lim.vocab_size,
                       "prompt id %d", r->prompt_ids[i]);
        }
    } else {
        FUZZ_CHECK(r->n_messages > 0 && r->n_messages <= fuzz_lim.max_messages, "%zu messages",
                   r->n_messages);
        for (size_t i = 0; i < r->n_messages; i++) {
            FUZZ_CHECK(r->messages[i].role != NULL && r->messages[i].content != NULL,
                       "message %zu without role or content", i);
        }
    }
    FUZZ_CHECK(r->n_stop <= fuzz_lim.max_stop, "%zu stops", r->n_stop);
    for (size_t i = 0; i < r->n_stop; i++) {
        FUZZ_CHECK(strlen(r->stop[i]) <= fuzz_lim.max_stop_bytes, "stop of %zu bytes",
                   strlen(r->stop[i]));
    }
    FUZZ_CHECK(r->max_tokens == -1 ||
                   (r->max_tokens >= 0 && r->max_tokens <= fuzz_lim.max_tokens_limit),
               "max_tokens %lld", (long long)r->max_tokens);
    FUZZ_CHECK(r->top_logprobs <= fuzz_lim.max_top_logprobs, "top_logprobs %u", r->top_logprobs);
    FUZZ_CHECK(!r->echo, "echo accepted");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_cursor in = {data, size};
    mls_oai_kind kind = (fuzz_byte(&in) & 1) ? MLS_OAI_KIND_CHAT : MLS_OAI_KIND_COMPLETION;
    mls_oai_request *r = NULL;
    mls_oai_error e;
    char *body, *out;
    mls_status st;

    /* The server hands the handler a NUL-terminated body; so do we. */
    body = malloc(in.n + 1);
    FUZZ_CHECK(body != NULL, "out of memory");
    memcpy(body, in.p, in.n);
    body[in.n] = '\0';
    memset(&e, 0, sizeof(e));
    st = mls_oai_request_parse(kind, body, in.n, &fuzz_lim, &r, &e);
    if (st != MLS_OK) {
        FUZZ_CHECK(r == NULL, "refused (%s) but a request was left", mls_status_name(st));
        FUZZ_CHECK(e.http_status >= 400 && e.http_status < 500, "refused with HTTP %d",
                   e.http_status);
        FUZZ_CHECK(e.message[0] != '\0' && e.type != NULL, "refused without a message");
        out = mls_oai_error_render(&e);
        FUZZ_CHECK(out != NULL, "error render failed");
        cJSON *root = cJSON_Parse(out);
        FUZZ_CHECK(root != NULL, "rendered error is not JSON: %s", out);
        cJSON_Delete(root);
        free(out);
        free(body);
        return 0;
    }
    FUZZ_CHECK(r != NULL, "accepted without a request");
    fuzz_oai_check_request(r, kind);
    free(fuzz_oai_render_echo(r, false));
    free(fuzz_oai_render_echo(r, true));
    mls_oai_request_free(r);
    free(body);
    return 0;
}
