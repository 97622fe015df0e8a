/* cl_http.c - blocking HTTP client for the cluster tests (see cl_http.h). */
#define _GNU_SOURCE
#include "cl_http.h"

#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mls_buf.h"

int cl_connect(int port)
{
    struct sockaddr_in sa = {0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0) {
        return -1;
    }
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static double cl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Decode a chunked body in place; returns the decoded length. */
static size_t cl_dechunk(char *b, size_t len)
{
    size_t in = 0, out = 0;
    while (in < len) {
        char *end;
        unsigned long n = strtoul(b + in, &end, 16);
        char *crlf = strstr(b + in, "\r\n");
        if (crlf == NULL || end == b + in) {
            break;
        }
        in = (size_t)(crlf - b) + 2;
        if (n == 0 || in + n > len) {
            break;
        }
        memmove(b + out, b + in, n);
        out += n;
        in += n + 2;
    }
    b[out] = '\0';
    return out;
}

int cl_raw(int port, const char *raw, size_t len, double timeout_s, cl_response *resp)
{
    int fd = cl_connect(port);
    mls_buf buf = MLS_BUF_INIT(MLS_ALLOC_TAG_MISC); /* the whole response */
    char chunk[16384];
    double deadline = cl_now() + timeout_s;
    char *sep;

    memset(resp, 0, sizeof(*resp));
    if (fd < 0) {
        return -1;
    }
    if (write(fd, raw, len) != (ssize_t)len) {
        close(fd);
        return -1;
    }
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        ssize_t r;
        int left = (int)((deadline - cl_now()) * 1000);
        if (left <= 0 || poll(&pfd, 1, left) <= 0) {
            break;
        }
        r = read(fd, chunk, sizeof(chunk));
        if (r <= 0 || mls_buf_append(&buf, chunk, (size_t)r) != MLS_OK) {
            break;
        }
    }
    close(fd);
    if (buf.data == NULL || strncmp(buf.data, "HTTP/1.", 7) != 0 ||
        (sep = strstr(buf.data, "\r\n\r\n")) == NULL) {
        mls_buf_free(&buf);
        return -1;
    }
    resp->status = atoi(buf.data + 9);
    *sep = '\0';
    resp->headers = strdup(buf.data);
    resp->body_len = buf.len - (size_t)(sep + 4 - buf.data);
    resp->body = malloc(resp->body_len + 1);
    memcpy(resp->body, sep + 4, resp->body_len);
    resp->body[resp->body_len] = '\0';
    if (strcasestr(resp->headers, "transfer-encoding: chunked") != NULL) {
        resp->body_len = cl_dechunk(resp->body, resp->body_len);
    }
    mls_buf_free(&buf);
    return 0;
}

int cl_post(int port, const char *path, const char *json, double timeout_s, cl_response *resp)
{
    size_t len = strlen(json) + strlen(path) + 256;
    char *req = malloc(len);
    int n = snprintf(req, len,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     path, strlen(json), json);
    int rc = cl_raw(port, req, (size_t)n, timeout_s, resp);
    free(req);
    return rc;
}

int cl_get(int port, const char *path, double timeout_s, cl_response *resp)
{
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    return cl_raw(port, req, (size_t)n, timeout_s, resp);
}

void cl_response_free(cl_response *resp)
{
    free(resp->headers);
    free(resp->body);
    memset(resp, 0, sizeof(*resp));
}

char *cl_sse_event(const char *body, size_t i)
{
    const char *p = body;
    size_t k = 0;

    while ((p = strstr(p, "data: ")) != NULL) {
        const char *end = strstr(p, "\n\n");
        if (end == NULL) {
            return NULL;
        }
        if (k++ == i) {
            size_t n = (size_t)(end - (p + 6));
            char *s = malloc(n + 1);
            memcpy(s, p + 6, n);
            s[n] = '\0';
            return s;
        }
        p = end + 2;
    }
    return NULL;
}

bool cl_utf8_valid(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        unsigned c = u[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > len) {
            return false;
        }
        for (size_t k = 1; k < n; k++) {
            if ((u[i + k] & 0xC0) != 0x80) {
                return false;
            }
        }
        i += n;
    }
    return true;
}

double cl_prom_sum(const char *text, const char *name)
{
    const char *p = text;
    size_t nl = strlen(name);
    double sum = 0;
    bool found = false;

    while ((p = strstr(p, name)) != NULL) {
        bool line_start = p == text || p[-1] == '\n';
        const char *q = p + nl;
        if (line_start && (*q == ' ' || *q == '{')) {
            const char *v = strchr(q, ' ');
            if (*q == '{') {
                v = strchr(strchr(q, '}'), ' ');
            }
            if (v != NULL) {
                sum += strtod(v + 1, NULL);
                found = true;
            }
        }
        p = q;
    }
    return found ? sum : -1;
}
