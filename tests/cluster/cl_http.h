/*
 * cl_http.h - a small blocking HTTP/1.1 client for the cluster tests: one
 * request per connection (Connection: close), chunked bodies decoded, SSE
 * events split out. Real sockets against the real router on 127.0.0.1.
 */
#ifndef CL_HTTP_H
#define CL_HTTP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    int status;
    char *headers;      /* raw header block */
    char *body;         /* decoded body, NUL-terminated */
    size_t body_len;
} cl_response;

/* Connect to 127.0.0.1:port; -1 on failure. */
int cl_connect(int port);
/* Send raw bytes and read the whole response (until close); 0 on success. */
int cl_raw(int port, const char *raw, size_t len, double timeout_s, cl_response *resp);
/* POST a JSON body to path; 0 on success (any HTTP status). */
int cl_post(int port, const char *path, const char *json, double timeout_s, cl_response *resp);
int cl_get(int port, const char *path, double timeout_s, cl_response *resp);
void cl_response_free(cl_response *resp);

/* SSE: the i-th "data: " payload of a body, or NULL past the end. Returned
 * pointer is malloc'd. */
char *cl_sse_event(const char *body, size_t i);

/* True if s[0..len) is valid UTF-8. */
bool cl_utf8_valid(const char *s, size_t len);

/* Value of a Prometheus sample "name{...} value" or "name value" summed over
 * every series of that name; -1 when absent. */
double cl_prom_sum(const char *text, const char *name);

#endif
