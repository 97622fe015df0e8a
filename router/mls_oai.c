/*
 * mls_oai.c - the OpenAI API's front door: errors in OpenAI's shape and the
 * HTTP status for a status code, routing and API-key authentication (see
 * mls_oai.h). Request parsing is mls_oai_parse.c, response rendering
 * mls_oai_render.c.
 */
#include "mls_oai.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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
        {"/ready", "GET", MLS_OAI_EP_READY},
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
