/*
 * test_oai.c - OpenAI request validation (table-driven: each case names the
 * status and the param the client must see), routing and auth, response
 * rendering in all four shapes, and the Prometheus exposition.
 */
#include <cjson/cJSON.h>

#include "mls_oai.h"
#include "mls_prom.h"
#include "mls_test.h"

typedef struct {
    mls_oai_kind kind;
    const char *body;
    int want_http;          /* 200 = must parse */
    const char *want_param; /* NULL = param must be null */
} parse_case;

#define C MLS_OAI_KIND_COMPLETION
#define H MLS_OAI_KIND_CHAT
#define MSG "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"

static const parse_case cases[] = {
    /* good */
    {C, "{\"model\":\"m\",\"prompt\":\"hello\"}", 200, NULL},
    {C, "{\"prompt\":[1,2,3],\"max_tokens\":16,\"temperature\":0,\"seed\":-5}", 200, NULL},
    {C, "{\"prompt\":[\"only one\"],\"stop\":[\"a\",\"b\"],\"logprobs\":3,\"top_k\":0}", 200, NULL},
    {C, "{\"prompt\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}", 200, NULL},
    {C, "{\"prompt\":\"x\",\"n\":1,\"best_of\":1,\"presence_penalty\":0,\"logit_bias\":{},\"user\":\"u\",\"ignore_eos\":true,\"echo\":false}", 200, NULL},
    {C, "{\"prompt\":\"x\",\"temperature\":null,\"max_tokens\":null,\"stop\":null}", 200, NULL},
    {H, "{" MSG ",\"logprobs\":true,\"top_logprobs\":5,\"max_completion_tokens\":7}", 200, NULL},
    {H, "{\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}]}", 200, NULL},
    {H, "{\"messages\":[{\"role\":\"developer\",\"content\":\"d\"},{\"role\":\"assistant\",\"content\":\"x\"}],\"response_format\":{\"type\":\"text\"}}", 200, NULL},
    /* malformed JSON and shape */
    {C, "{\"prompt\":\"x\"", 400, NULL},
    {C, "[1,2]", 400, NULL},
    {C, "{\"prompt\":\"x\"} trailing", 400, NULL},
    {C, "", 400, NULL},
    /* prompt */
    {C, "{}", 400, "prompt"},
    {C, "{\"prompt\":\"\"}", 400, "prompt"},
    {C, "{\"prompt\":[]}", 400, "prompt"},
    {C, "{\"prompt\":[1,-2]}", 400, "prompt"},
    {C, "{\"prompt\":[1,2.5]}", 400, "prompt"},
    {C, "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt"},
    {C, "{\"prompt\":42}", 400, "prompt"},
    /* messages */
    {H, "{}", 400, "messages"},
    {H, "{\"messages\":[]}", 400, "messages"},
    {H, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages"},
    {H, "{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", 400, "messages"},
    {H, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}", 400, "messages"},
    {H, "{\"messages\":[\"hi\"]}", 400, "messages"},
    /* sampling parameters */
    {C, "{\"prompt\":\"x\",\"temperature\":2.5}", 400, "temperature"},
    {C, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "temperature"},
    {C, "{\"prompt\":\"x\",\"top_p\":0}", 400, "top_p"},
    {C, "{\"prompt\":\"x\",\"top_p\":1.5}", 400, "top_p"},
    {C, "{\"prompt\":\"x\",\"top_k\":-3}", 400, "top_k"},
    {C, "{\"prompt\":\"x\",\"max_tokens\":0}", 400, "max_tokens"},
    {C, "{\"prompt\":\"x\",\"max_tokens\":1.5}", 400, "max_tokens"},
    {H, "{" MSG ",\"max_completion_tokens\":-1}", 400, "max_completion_tokens"},
    {C, "{\"prompt\":\"x\",\"seed\":\"abc\"}", 400, "seed"},
    {C, "{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "stop"},
    {C, "{\"prompt\":\"x\",\"stop\":[1]}", 400, "stop"},
    {C, "{\"prompt\":\"x\",\"stop\":[\"\"]}", 400, "stop"},
    {C, "{\"prompt\":\"x\",\"n\":2}", 400, "n"},
    {C, "{\"prompt\":\"x\",\"n\":0}", 400, "n"},
    {C, "{\"prompt\":\"x\",\"best_of\":3}", 400, "best_of"},
    {C, "{\"prompt\":\"x\",\"stream\":\"yes\"}", 400, "stream"},
    {C, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}", 400, "stream_options"},
    {C, "{\"prompt\":\"x\",\"logprobs\":true}", 400, "logprobs"},
    {C, "{\"prompt\":\"x\",\"logprobs\":21}", 400, "logprobs"},
    {H, "{" MSG ",\"logprobs\":3}", 400, "logprobs"},
    {H, "{" MSG ",\"top_logprobs\":2}", 400, "top_logprobs"},
    {H, "{" MSG ",\"logprobs\":true,\"top_logprobs\":21}", 400, "top_logprobs"},
    {C, "{\"prompt\":\"x\",\"ignore_eos\":1}", 400, "ignore_eos"},
    {C, "{\"prompt\":\"x\",\"user\":5}", 400, "user"},
    {C, "{\"prompt\":\"x\",\"echo\":true}", 400, "echo"},
    {C, "{\"prompt\":\"x\",\"suffix\":\"s\"}", 400, "suffix"},
    {C, "{\"prompt\":\"x\",\"presence_penalty\":0.5}", 400, "presence_penalty"},
    {C, "{\"prompt\":\"x\",\"frequency_penalty\":3}", 400, "frequency_penalty"},
    {C, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":1}}", 400, "logit_bias"},
    {H, "{" MSG ",\"tools\":[]}", 400, "tools"},
    {H, "{" MSG ",\"response_format\":{\"type\":\"json_object\"}}", 400, "response_format"},
    {C, "{\"prompt\":\"x\",\"model\":7}", 400, "model"},
};

static void test_validation_table(void)
{
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const parse_case *pc = &cases[i];
        mls_oai_request *r = NULL;
        mls_oai_error err;
        mls_status st;

        memset(&err, 0, sizeof(err));
        st = mls_oai_request_parse(pc->kind, pc->body, strlen(pc->body), NULL, &r, &err);
        if (pc->want_http == 200) {
            CHECK_MSG(st == MLS_OK, "case %zu %s: %s (%s)", i, pc->body, mls_status_name(st),
                      err.message);
            mls_oai_request_free(r);
            continue;
        }
        CHECK_MSG(st != MLS_OK, "case %zu %s: accepted", i, pc->body);
        CHECK_MSG(err.http_status == pc->want_http, "case %zu %s: status %d, want %d (%s)", i,
                  pc->body, err.http_status, pc->want_http, err.message);
        CHECK_MSG(strcmp(err.param, pc->want_param ? pc->want_param : "") == 0,
                  "case %zu %s: param '%s', want '%s' (%s)", i, pc->body, err.param,
                  pc->want_param ? pc->want_param : "", err.message);
        CHECK_MSG(err.message[0] != '\0', "case %zu: empty message", i);
        CHECK_STR_EQ(err.type, "invalid_request_error");
    }
}

static void test_parsed_values(void)
{
    const char *body = "{\"model\":\"m\",\"prompt\":[7,8,9],\"max_tokens\":16,\"temperature\":0.5,"
                       "\"top_p\":0.9,\"top_k\":40,\"seed\":-1,\"stop\":\"END\",\"stream\":true,"
                       "\"stream_options\":{\"include_usage\":true},\"logprobs\":2,"
                       "\"ignore_eos\":true,\"user\":\"bob\",\"stop_token_ids\":[3]}";
    mls_oai_request *r = NULL;
    mls_oai_error err;

    CHECK_OK(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, body, strlen(body), NULL, &r, &err));
    CHECK_STR_EQ(r->model, "m");
    CHECK(r->prompt == NULL && r->n_prompt_ids == 3 && r->prompt_ids[2] == 9);
    CHECK_EQ_INT(r->max_tokens, 16);
    CHECK(r->temperature == 0.5 && r->top_p == 0.9);
    CHECK_EQ_INT(r->top_k, 40);
    CHECK(r->has_seed && r->seed == UINT64_MAX);
    CHECK(r->n_stop == 1);
    CHECK_STR_EQ(r->stop[0], "END");
    CHECK(r->stream && r->include_usage && r->logprobs && r->top_logprobs == 2 && r->ignore_eos);
    CHECK_STR_EQ(r->user, "bob");
    CHECK(r->n_stop_token_ids == 1 && r->stop_token_ids[0] == 3);
    mls_oai_request_free(r);

    body = "{\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
           "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}]}";
    CHECK_OK(mls_oai_request_parse(MLS_OAI_KIND_CHAT, body, strlen(body), NULL, &r, &err));
    CHECK_EQ_INT(r->n_messages, 2);
    CHECK_STR_EQ(r->messages[0].role, "system");
    CHECK_STR_EQ(r->messages[1].content, "ab");
    CHECK_EQ_INT(r->max_tokens, -1);
    CHECK(r->temperature == 1.0 && r->top_p == 1.0 && r->top_k == -1 && !r->has_seed);
    mls_oai_request_free(r);
}

static void test_limits_and_models(void)
{
    static const char *const models[] = {"deepseek-tiny", "other"};
    mls_oai_limits lim;
    mls_oai_request *r = NULL;
    mls_oai_error err;
    const char *body;

    mls_oai_limits_default(&lim);
    lim.max_prompt_bytes = 8;
    lim.vocab_size = 100;
    lim.max_tokens_limit = 64;
    lim.models = models;
    lim.n_models = 2;
    body = "{\"prompt\":\"123456789\"}";
    CHECK_STATUS(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, body, strlen(body), &lim, &r, &err),
                 MLS_ERR_TOO_LARGE);
    CHECK_EQ_INT(err.http_status, 413);
    CHECK_STR_EQ(err.param, "prompt");
    body = "{\"prompt\":[1,100]}";
    CHECK_STATUS(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, body, strlen(body), &lim, &r, &err),
                 MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.message, "outside the vocabulary") != NULL);
    body = "{\"prompt\":[1],\"max_tokens\":65}";
    CHECK_STATUS(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, body, strlen(body), &lim, &r, &err),
                 MLS_ERR_INVALID_ARG);
    CHECK_STR_EQ(err.param, "max_tokens");
    body = "{\"prompt\":[1],\"model\":\"gpt-4\"}";
    CHECK_STATUS(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, body, strlen(body), &lim, &r, &err),
                 MLS_ERR_NOT_FOUND);
    CHECK_EQ_INT(err.http_status, 404);
    CHECK_STR_EQ(err.code, "model_not_found");
    body = "{\"prompt\":[1]}";
    CHECK_OK(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, body, strlen(body), &lim, &r, &err));
    CHECK_STR_EQ(r->model, "deepseek-tiny");
    mls_oai_request_free(r);
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"12345\"},{\"role\":\"user\",\"content\":\"6789\"}]}";
    CHECK_STATUS(mls_oai_request_parse(MLS_OAI_KIND_CHAT, body, strlen(body), &lim, &r, &err),
                 MLS_ERR_TOO_LARGE);
}

/* A NUL in a string (escaped or raw) is refused with 400, never truncated;
 * an escaped backslash before "u0000" is text, not a NUL. */
static void test_nul_in_strings_refused(void)
{
    static const char *const refused[] = {
        "{\"prompt\":\"abc\\u0000def\"}",
        "{\"prompt\":[\"ok\",\"x\\u0000\"]}",
        "{\"prompt\":\"hi\",\"stop\":\"a\\u0000\"}",
    };
    const char chat[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}";
    const char raw[] = "{\"prompt\":\"ab\0cd\"}";
    mls_oai_request *r = NULL;
    mls_oai_error err;

    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        memset(&err, 0, sizeof(err));
        CHECK_STATUS(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, refused[i], strlen(refused[i]), NULL, &r,
                                           &err),
                     MLS_ERR_INVALID_ARG);
        CHECK_EQ_INT(err.http_status, 400);
        CHECK_MSG(strstr(err.message, "prompt contains a NUL character") != NULL, "%s -> %s", refused[i],
                  err.message);
    }
    CHECK_STATUS(mls_oai_request_parse(MLS_OAI_KIND_CHAT, chat, strlen(chat), NULL, &r, &err), MLS_ERR_INVALID_ARG);
    CHECK_STR_EQ(err.param, "messages");
    CHECK_STATUS(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, raw, sizeof(raw) - 1, NULL, &r, &err),
                 MLS_ERR_INVALID_ARG);
    CHECK_EQ_INT(err.http_status, 400);
    /* "\\u0000" in JSON is a backslash followed by the text u0000: kept whole */
    {
        const char ok[] = "{\"prompt\":\"a\\\\u0000b\"}";
        CHECK_OK(mls_oai_request_parse(MLS_OAI_KIND_COMPLETION, ok, strlen(ok), NULL, &r, &err));
        CHECK_STR_EQ(r->prompt, "a\\u0000b");
        mls_oai_request_free(r);
        r = NULL;
    }
}

static void test_route_and_auth(void)
{
    static const char *const keys[] = {"sk-one", "sk-two"};
    mls_oai_error err;

    CHECK_EQ_INT(mls_oai_route("POST", "/v1/completions", &err), MLS_OAI_EP_COMPLETIONS);
    CHECK_EQ_INT(mls_oai_route("POST", "/v1/chat/completions", &err), MLS_OAI_EP_CHAT);
    CHECK_EQ_INT(mls_oai_route("GET", "/v1/models/", &err), MLS_OAI_EP_MODELS);
    CHECK_EQ_INT(mls_oai_route("HEAD", "/health", &err), MLS_OAI_EP_HEALTH);
    CHECK_EQ_INT(mls_oai_route("GET", "/ready", &err), MLS_OAI_EP_READY);
    CHECK_EQ_INT(mls_oai_route("GET", "/metrics", &err), MLS_OAI_EP_METRICS);
    CHECK_EQ_INT(mls_oai_route("GET", "/v1/completions", &err), MLS_OAI_EP_NONE);
    CHECK_EQ_INT(err.http_status, 405);
    CHECK_STR_EQ(err.allow, "POST");
    CHECK_EQ_INT(mls_oai_route("POST", "/v1/completionsX", &err), MLS_OAI_EP_NONE);
    CHECK_EQ_INT(err.http_status, 404);

    CHECK(mls_oai_auth_check(NULL, NULL, 0, &err));
    CHECK(!mls_oai_auth_check(NULL, keys, 2, &err));
    CHECK_EQ_INT(err.http_status, 401);
    CHECK_STR_EQ(err.type, "authentication_error");
    CHECK_STR_EQ(err.code, "invalid_api_key");
    CHECK(!mls_oai_auth_check("Basic abc", keys, 2, &err));
    CHECK(!mls_oai_auth_check("Bearer sk-on", keys, 2, &err));
    CHECK(!mls_oai_auth_check("Bearer sk-one1", keys, 2, &err));
    CHECK(mls_oai_auth_check("Bearer sk-two", keys, 2, &err));
    CHECK(mls_oai_auth_check("bearer  sk-one ", keys, 2, &err));

    CHECK_EQ_INT(mls_oai_status_http(MLS_ERR_BUSY), 429);
    CHECK_EQ_INT(mls_oai_status_http(MLS_ERR_PEER_DEAD), 503);
    CHECK_EQ_INT(mls_oai_status_http(MLS_ERR_TOO_LARGE), 413);
    CHECK_EQ_INT(mls_oai_status_http(MLS_ERR_INTERNAL), 500);
    mls_oai_error_set(&err, 429, NULL, "rate_limit_exceeded", "saturated");
    CHECK_STR_EQ(err.type, "rate_limit_error");
    {
        char *json = mls_oai_error_render(&err);
        CHECK_STR_EQ(json, "{\"error\":{\"message\":\"saturated\",\"type\":\"rate_limit_error\","
                           "\"param\":null,\"code\":\"rate_limit_exceeded\"}}");
        free(json);
    }
}

/* Render args and return the parsed JSON (caller deletes). */
static cJSON *render_parse(const mls_oai_render_args *a)
{
    char *s = mls_oai_render(a);
    cJSON *j = s != NULL ? cJSON_Parse(s) : NULL;

    free(s);
    return j;
}

static void test_render_shapes(void)
{
    mls_oai_top_logprob top[2] = {{"Hel", -0.1}, {"He", -2.5}};
    mls_oai_token_logprob lps[2] = {{"Hel", -0.1, top, 2}, {"lo", -1.0 / 0.0, NULL, 0}};
    mls_oai_choice ch = {.text = "Hello", .text_len = 5, .finish_reason = "stop",
                         .logprobs = lps, .n_logprobs = 2, .text_offset = 10};
    mls_oai_usage usage = {.prompt_tokens = 3, .completion_tokens = 2};
    mls_oai_render_args a = {.kind = MLS_OAI_KIND_COMPLETION, .id = "cmpl-1", .created = 1700000000,
                             .model = "m", .choice = &ch, .usage = &usage};
    cJSON *j, *c0;
    char *s;

    /* Completion, whole. */
    j = render_parse(&a);
    CHECK(j != NULL);
    CHECK_STR_EQ(cJSON_GetObjectItem(j, "object")->valuestring, "text_completion");
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    CHECK_STR_EQ(cJSON_GetObjectItem(c0, "text")->valuestring, "Hello");
    CHECK_STR_EQ(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    CHECK_EQ_INT(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "total_tokens")->valuedouble, 5);
    {
        cJSON *lp = cJSON_GetObjectItem(c0, "logprobs");
        CHECK_EQ_INT(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "text_offset"), 1)->valuedouble, 13);
        CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "token_logprobs"), 1)->valuedouble == -9999.0);
        CHECK(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0), "He")->valuedouble == -2.5);
    }
    cJSON_Delete(j);

    /* Chat, whole. */
    a.kind = MLS_OAI_KIND_CHAT;
    j = render_parse(&a);
    CHECK_STR_EQ(cJSON_GetObjectItem(j, "object")->valuestring, "chat.completion");
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0);
    CHECK_STR_EQ(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "role")->valuestring, "assistant");
    CHECK_STR_EQ(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "content")->valuestring, "Hello");
    {
        cJSON *e0 = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "content"), 0);
        CHECK_STR_EQ(cJSON_GetObjectItem(e0, "token")->valuestring, "Hel");
        CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(e0, "bytes")), 3);
        CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(e0, "top_logprobs")), 2);
    }
    cJSON_Delete(j);

    /* Chat chunks: first carries the role, finish chunk has an empty delta, usage chunk no choices. */
    ch.logprobs = NULL;
    ch.n_logprobs = 0;
    ch.finish_reason = NULL;
    ch.text = "Hi";
    ch.text_len = 2;
    a.chunk = true;
    a.first_chunk = true;
    a.usage = NULL;
    s = mls_oai_render(&a);
    CHECK_STR_EQ(s, "{\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,"
                    "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
                    "\"content\":\"Hi\"},\"logprobs\":null,\"finish_reason\":null}]}");
    free(s);
    a.first_chunk = false;
    ch.text_len = 0;
    ch.finish_reason = "length";
    s = mls_oai_render(&a);
    CHECK(strstr(s, "\"delta\":{}") != NULL && strstr(s, "\"finish_reason\":\"length\"") != NULL);
    CHECK(strchr(s, '\n') == NULL);
    free(s);
    a.choice = NULL;
    a.usage = &usage;
    s = mls_oai_render(&a);
    CHECK(strstr(s, "\"choices\":[]") != NULL &&
          strstr(s, "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}") != NULL);
    free(s);

    /* Completion chunk with a quote and a newline escaped (SSE-safe). */
    ch.text = "a\"b\nc";
    ch.text_len = 5;
    ch.finish_reason = NULL;
    a.kind = MLS_OAI_KIND_COMPLETION;
    a.choice = &ch;
    a.usage = NULL;
    s = mls_oai_render(&a);
    CHECK(strstr(s, "\"text\":\"a\\\"b\\nc\"") != NULL && strchr(s, '\n') == NULL);
    free(s);

    {
        const char *ids[] = {"deepseek-tiny"};
        char id1[64], id2[64];
        s = mls_oai_models_render(ids, 1, 42, NULL, 0);
        CHECK_STR_EQ(s, "{\"object\":\"list\",\"data\":[{\"id\":\"deepseek-tiny\",\"object\":\"model\","
                        "\"created\":42,\"owned_by\":\"mlaserve\"}]}");
        free(s);
        s = mls_oai_models_render(ids, 1, 42, "x", 4096);
        CHECK_STR_EQ(s, "{\"object\":\"list\",\"data\":[{\"id\":\"deepseek-tiny\",\"object\":\"model\","
                        "\"created\":42,\"owned_by\":\"x\",\"max_model_len\":4096}]}");
        free(s);
        mls_oai_id_make(MLS_OAI_KIND_CHAT, id1, sizeof(id1));
        mls_oai_id_make(MLS_OAI_KIND_CHAT, id2, sizeof(id2));
        CHECK(strncmp(id1, "chatcmpl-", 9) == 0 && strlen(id1) == 9 + 24 && strcmp(id1, id2) != 0);
    }
}

static void test_prometheus(void)
{
    mls_prom_registry *reg = NULL;
    mls_prom_metric *ttft, *run, *e1, *e2, *e1b;
    const char *lab1[] = {"status", "ERR_BUSY", NULL};
    const char *lab2[] = {"status", "a\"b\\c\nd", NULL};
    const char *bad[] = {"le", "x", NULL};
    const double b3[] = {0.1, 0.5, 1.0};
    mls_err err = {{0}};
    char *text = NULL;
    size_t len = 0;

    CHECK_OK(mls_prom_registry_create(&reg));
    ttft = mls_prom_histogram(reg, MLS_PROM_TTFT, "Time to first token.", NULL, b3, 3, &err);
    run = mls_prom_gauge(reg, MLS_PROM_RUNNING, "Requests running.", NULL, &err);
    e1 = mls_prom_counter(reg, MLS_PROM_ERRORS, "Errors by status.", lab1, &err);
    e2 = mls_prom_counter(reg, MLS_PROM_ERRORS, "Errors by status.", lab2, &err);
    e1b = mls_prom_counter(reg, MLS_PROM_ERRORS, "Errors by status.", lab1, &err);
    CHECK(ttft && run && e1 && e2 && e1 == e1b);
    CHECK(mls_prom_gauge(reg, MLS_PROM_ERRORS, "x", lab1, &err) == NULL);
    CHECK(strstr(err.msg, "counter") != NULL);
    CHECK(mls_prom_counter(reg, "bad name", "x", NULL, &err) == NULL);
    CHECK(mls_prom_counter(reg, "ok_name", "x", bad, &err) == NULL);
    mls_prom_observe(ttft, 0.05);
    mls_prom_observe(ttft, 0.5);
    mls_prom_observe(ttft, 3.0);
    mls_prom_set(run, 7);
    mls_prom_add(run, -2);
    mls_prom_add(e1, 2);
    mls_prom_add(e1, -1); /* ignored: counters only go up */
    mls_prom_add(e2, 1);
    CHECK(mls_prom_value(ttft) == 3 && mls_prom_value(run) == 5 && mls_prom_value(e1) == 2);
    CHECK_OK(mls_prom_render(reg, &text, &len));
    CHECK_EQ_INT(strlen(text), len);
    CHECK_STR_EQ(text,
                 "# HELP mlaserve:time_to_first_token_seconds Time to first token.\n"
                 "# TYPE mlaserve:time_to_first_token_seconds histogram\n"
                 "mlaserve:time_to_first_token_seconds_bucket{le=\"0.1\"} 1\n"
                 "mlaserve:time_to_first_token_seconds_bucket{le=\"0.5\"} 2\n"
                 "mlaserve:time_to_first_token_seconds_bucket{le=\"1\"} 2\n"
                 "mlaserve:time_to_first_token_seconds_bucket{le=\"+Inf\"} 3\n"
                 "mlaserve:time_to_first_token_seconds_sum 3.55\n"
                 "mlaserve:time_to_first_token_seconds_count 3\n"
                 "# HELP mlaserve:num_requests_running Requests running.\n"
                 "# TYPE mlaserve:num_requests_running gauge\n"
                 "mlaserve:num_requests_running 5\n"
                 "# HELP mlaserve:request_errors_total Errors by status.\n"
                 "# TYPE mlaserve:request_errors_total counter\n"
                 "mlaserve:request_errors_total{status=\"ERR_BUSY\"} 2\n"
                 "mlaserve:request_errors_total{status=\"a\\\"b\\\\c\\nd\"} 1\n");
    free(text);
    CHECK_EQ_INT(mls_prom_buckets_ttft_n, 22);
    CHECK(mls_prom_histogram(reg, "h2", "x", NULL, mls_prom_buckets_e2e, mls_prom_buckets_e2e_n, &err) != NULL);
    mls_prom_registry_destroy(reg);
}

int main(void)
{
    MLS_TEST_RUN(test_validation_table);
    MLS_TEST_RUN(test_parsed_values);
    MLS_TEST_RUN(test_limits_and_models);
    MLS_TEST_RUN(test_route_and_auth);
    MLS_TEST_RUN(test_nul_in_strings_refused);
    MLS_TEST_RUN(test_render_shapes);
    MLS_TEST_RUN(test_prometheus);
    return MLS_TEST_DONE();
}
