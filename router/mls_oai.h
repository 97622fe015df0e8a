/*
 * mls_oai.h - the OpenAI-compatible API surface: routing, authentication,
 * request parsing/validation and response rendering. Pure functions over
 * JSON text (cJSON); no I/O, no tokenizer, no scheduler - the router daemon
 * glues these to mls_http.h and the cluster.
 *
 * Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models,
 * GET /health, GET /ready, GET /metrics (HEAD allowed on the GETs).
 *
 * Strings: a NUL character in any JSON string of a request (a "\u0000"
 * escape or a raw 0 byte) is refused with 400 rather than truncated.
 *
 * Errors follow OpenAI's shape, {"error":{"message","type","param","code"}},
 * with these HTTP statuses and types:
 *   400 invalid_request_error   bad JSON, bad or unsupported parameter (param names it)
 *   401 authentication_error    missing/wrong API key (code "invalid_api_key")
 *   404 invalid_request_error   unknown path (code "not_found"), unknown model
 *                               (code "model_not_found")
 *   405 invalid_request_error   wrong method (the response carries Allow)
 *   413 invalid_request_error   body or prompt too large
 *   429 rate_limit_error        saturated (the response carries Retry-After)
 *   500 server_error, 503 server_error (code "unavailable")
 *
 * Ownership: a parsed mls_oai_request owns all its strings and arrays and is
 * freed with mls_oai_request_free(). Renderers return malloc'd NUL-terminated
 * JSON (free()).
 */
#ifndef MLS_OAI_H
#define MLS_OAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mls_status.h"

typedef enum {
    MLS_OAI_EP_NONE,
    MLS_OAI_EP_COMPLETIONS,       /* POST /v1/completions */
    MLS_OAI_EP_CHAT,              /* POST /v1/chat/completions */
    MLS_OAI_EP_MODELS,            /* GET /v1/models */
    MLS_OAI_EP_HEALTH,            /* GET /health: liveness */
    MLS_OAI_EP_READY,             /* GET /ready: readiness (capacity to serve) */
    MLS_OAI_EP_METRICS,           /* GET /metrics */
} mls_oai_endpoint;

/* An API error, ready to render. */
typedef struct {
    int http_status;
    const char *type;             /* static string */
    char param[64];               /* "" = null */
    char code[48];                /* "" = null */
    char message[512];
    char allow[32];               /* 405: value of the Allow header */
    uint32_t retry_after_s;       /* 429/503: value of Retry-After (0 = none) */
} mls_oai_error;

/* Fill err; the type follows from the status (table above). param/code NULL = null. */
void mls_oai_error_set(mls_oai_error *err, int http_status, const char *param, const char *code,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Map an internal status to the HTTP status an API client should see. */
int mls_oai_status_http(mls_status st);
/* Render err as OpenAI error JSON. NULL on out of memory. */
char *mls_oai_error_render(const mls_oai_error *err);

/* Which endpoint (method, path) names; on NONE err is 404 or 405. */
mls_oai_endpoint mls_oai_route(const char *method, const char *path, mls_oai_error *err);

/*
 * API keys: n_keys == 0 means no authentication. Otherwise the Authorization
 * header must be "Bearer <key>" for one of keys (compared in constant time).
 * False with err set to 401 when refused.
 */
bool mls_oai_auth_check(const char *authorization, const char *const *keys, size_t n_keys,
                        mls_oai_error *err);

typedef enum {
    MLS_OAI_KIND_COMPLETION,
    MLS_OAI_KIND_CHAT,
} mls_oai_kind;

typedef struct {
    char *role;                   /* "system", "user", "assistant" ("developer" -> "system") */
    char *content;                /* text; array-of-parts content is joined */
} mls_oai_message;

/* What the server accepts; requests outside these get 400/413. */
typedef struct {
    size_t max_prompt_bytes;      /* prompt text / all message contents together */
    size_t max_prompt_tokens;     /* prompt given as token ids */
    uint32_t max_messages;
    uint32_t max_stop;            /* stop strings (OpenAI: 4) */
    size_t max_stop_bytes;        /* each */
    uint32_t max_tokens_limit;    /* max_tokens above this: 400 (0 = no limit) */
    uint32_t max_top_logprobs;    /* chat top_logprobs / completions logprobs (OpenAI: 20 / 5) */
    int32_t vocab_size;           /* token ids must be < this (0 = not checked here) */
    const char *const *models;    /* served model ids; NULL/0 = any "model" accepted */
    size_t n_models;
} mls_oai_limits;

/* 1 MiB prompt, 256k prompt tokens, 1024 messages, 4 stops of 256 bytes,
 * no max_tokens cap, 20 top logprobs, vocab unchecked, any model. */
void mls_oai_limits_default(mls_oai_limits *lim);

typedef struct {
    mls_oai_kind kind;
    char *model;                  /* as sent ("" when absent and any model is accepted) */
    /* completions: the prompt is text or token ids (exactly one is set) */
    char *prompt;                 /* NULL when given as ids */
    int32_t *prompt_ids;          /* (n_prompt_ids) */
    size_t n_prompt_ids;
    /* chat */
    mls_oai_message *messages;    /* (n_messages) */
    size_t n_messages;
    /* sampling */
    int64_t max_tokens;           /* -1 = absent: the router fills in the context budget */
    double temperature;           /* default 1.0; 0 = greedy */
    double top_p;                 /* default 1.0 */
    int32_t top_k;                /* default -1 = disabled (extension, as in vLLM) */
    bool has_seed;
    uint64_t seed;
    char **stop;                  /* (n_stop) stop strings */
    size_t n_stop;
    int32_t *stop_token_ids;      /* (n_stop_token_ids) extension, as in vLLM */
    size_t n_stop_token_ids;
    bool ignore_eos;              /* extension, as in vLLM */
    bool stream;
    bool include_usage;           /* stream_options.include_usage */
    bool logprobs;                /* report logprobs of sampled tokens */
    uint32_t top_logprobs;        /* alternatives per token (completions: logprobs=N) */
    bool echo;                    /* completions: always false (echo is refused) */
    char *user;                   /* NULL when absent */
} mls_oai_request;

/*
 * Parse and validate a request body for kind. On failure returns
 * MLS_ERR_PARSE (malformed JSON), MLS_ERR_INVALID_ARG / MLS_ERR_UNSUPPORTED
 * (a bad parameter), MLS_ERR_TOO_LARGE, or MLS_ERR_NOT_FOUND (unknown model),
 * with err filled (status, param, message) for the client.
 */
mls_status mls_oai_request_parse(mls_oai_kind kind, const char *body, size_t len,
                                 const mls_oai_limits *lim, mls_oai_request **req_p,
                                 mls_oai_error *err);
void mls_oai_request_free(mls_oai_request *req);

/* ---- responses ---------------------------------------------------------- */

typedef struct {
    const char *text;             /* token text (may be a partial UTF-8-safe piece) */
    double logprob;
} mls_oai_top_logprob;

typedef struct {
    const char *text;             /* detokenized text of this token */
    double logprob;
    const mls_oai_top_logprob *top; /* (n_top) */
    size_t n_top;
} mls_oai_token_logprob;

typedef struct {
    uint32_t index;               /* always 0 (n = 1) */
    const char *text;             /* full text (whole response) or delta (chunk) */
    size_t text_len;
    const mls_oai_token_logprob *logprobs; /* (n_logprobs), NULL when not requested */
    size_t n_logprobs;
    size_t text_offset;           /* completions logprobs: offset of text in the completion */
    const char *finish_reason;    /* "stop", "length", or NULL (stream continues) */
} mls_oai_choice;

typedef struct {
    int64_t prompt_tokens;
    int64_t completion_tokens;
} mls_oai_usage;

typedef struct {
    mls_oai_kind kind;
    bool chunk;                   /* a streaming chunk, else the whole response */
    const char *id;               /* "cmpl-..." / "chatcmpl-..." */
    int64_t created;              /* unix seconds */
    const char *model;
    const mls_oai_choice *choice; /* NULL: a usage-only final chunk ("choices": []) */
    const mls_oai_usage *usage;   /* NULL: no "usage" (chunks); whole responses need it */
    bool first_chunk;             /* chat chunk: the delta carries "role":"assistant" */
    bool logprobs_requested;      /* render "logprobs": null vs the object when absent */
} mls_oai_render_args;

/* One JSON object: text_completion / chat.completion / chat.completion.chunk. */
char *mls_oai_render(const mls_oai_render_args *args);

/* {"object":"list","data":[{"id","object":"model","created","owned_by",
 * "max_model_len"}...]}; max_model_len (the context in tokens: prompt plus
 * completion) is left out when 0. */
char *mls_oai_models_render(const char *const *ids, size_t n, int64_t created,
                            const char *owned_by, uint32_t max_model_len);

/* "cmpl-" / "chatcmpl-" followed by 24 hex digits, unique in this process. */
void mls_oai_id_make(mls_oai_kind kind, char *buf, size_t len);

/* The SSE terminator payload: the router sends mls_http_req_sse_send(req, MLS_OAI_SSE_DONE, 6). */
#define MLS_OAI_SSE_DONE "[DONE]"

#endif
