/*
 * rt_api.h - the router's HTTP handler (rt_api.c): authentication, the
 * OpenAI endpoints, admission control and tokenization, handing admitted
 * requests to the request layer (rt_requests.h).
 */
#ifndef MLS_RT_API_H
#define MLS_RT_API_H

#include "rt_requests.h"

/* mls_http_handler_fn for the router's server; user is the rt_router. */
void rt_api_handle(mls_http_req *req, void *user);
/* The handler of the --metrics-listen server: /metrics, /health, /ready, no key. */
void rt_api_metrics_handle(mls_http_req *req, void *user);

#endif
