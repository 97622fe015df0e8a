/*
 * test_auth_memory.c - nothing is allocated on the say-so of an
 * unauthenticated peer: 20 node connections that each send only a 4-byte
 * header announcing a 16 MiB frame leave the router's RSS within 64 MB of
 * where it started and are all closed (at once: over the 4 KiB frame cap
 * before authentication; at the latest by the 5 s registration deadline).
 * The same against a router without a key (no handshake, the normal 16 MiB
 * cap): each connection also sends 512 KiB of the frame, the buffers grow only
 * with those bytes, and the deadline closes them. RSS is behaviour of the
 * plain build only (ASan's quarantine and TSan's shadow change it): under a
 * sanitizer this test skips, saying so.
 */
#include "auth_peer.h"
#include "mls_test.h"

#define AM_CONNS 20

static long am_rss_kb(pid_t pid)
{
    char path[64], line[256];
    long kb = -1;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb;
}

#ifdef AP_SANITIZED
#define AM_SKIP_UNDER_SANITIZER()                                                                  \
    MLS_TEST_SKIP("RSS bounds are checked in the plain build only (a sanitizer changes RSS)")
#else
#define AM_SKIP_UNDER_SANITIZER() ((void)0)
#endif

static void am_flood(const char *const *extra, size_t body_bytes)
{
    int fds[AM_CONNS];
    uint8_t hdr[MLS_FRAME_HEADER_BYTES];
    uint8_t *body = calloc(1, body_bytes > 0 ? body_bytes : 1);
    long rss0, rss1, peak = 0;
    double t0;
    ap_router r;

    CHECK(body != NULL);
    CHECK_EQ_INT(ap_router_start(&r, extra), 0);
    usleep(300000);
    rss0 = am_rss_kb(r.pid);
    CHECK(rss0 > 0);
    mls_frame_header_write(16u << 20, hdr);
    t0 = ap_now();
    for (int i = 0; i < AM_CONNS; i++) {
        fds[i] = ap_connect(r.node_port);
        CHECK(fds[i] >= 0);
        ap_send_all(fds[i], hdr, sizeof(hdr));
        if (body_bytes > 0) {
            ap_send_all(fds[i], body, body_bytes);
        }
    }
    for (int i = 0; i < 10; i++) {
        long k = am_rss_kb(r.pid);
        peak = k > peak ? k : peak;
        usleep(50000);
    }
    for (int i = 0; i < AM_CONNS; i++) {
        CHECK_MSG(ap_wait_closed(fds[i], 8 - (ap_now() - t0)),
                  "connection %d still open %.1f s after its header", i, ap_now() - t0);
        close(fds[i]);
    }
    rss1 = am_rss_kb(r.pid);
    peak = rss1 > peak ? rss1 : peak;
    fprintf(stderr, "  router RSS: %ld kB at start, %ld kB peak, closed after %.1f s\n", rss0,
            peak, ap_now() - t0);
    CHECK_MSG(peak - rss0 < 64 * 1024, "RSS grew by %ld kB (> 64 MB) for %d headers",
              peak - rss0, AM_CONNS);
    ap_router_stop(&r);
    free(body);
}

static void test_headers_with_key(void)
{
    char key_path[256];
    const char *extra[] = {"--cluster-key-file", key_path, NULL};

    AM_SKIP_UNDER_SANITIZER();
    ap_key_write("memkey", "auth-memory-test-key-0123456789abcdef\n", 0600, key_path,
                 sizeof(key_path));
    am_flood(extra, 0);
    unlink(key_path);
}

static void test_headers_without_key(void)
{
    const char *extra[] = {"--insecure-no-cluster-key", NULL};

    AM_SKIP_UNDER_SANITIZER();
    am_flood(extra, 512u << 10);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    MLS_TEST_RUN(test_headers_with_key);
    MLS_TEST_RUN(test_headers_without_key);
    return MLS_TEST_DONE();
}
