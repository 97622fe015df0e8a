/*
 * test_conn.c - a framed connection's outgoing queue is capped: a peer that
 * stops reading is disconnected once max_send_queue_bytes wait for it (the
 * router's defence against a node that cannot keep up), while a peer that
 * reads takes the same traffic without being dropped.
 *
 * The peer is a plain socket accepted by the test: it either never reads or
 * drains everything between sends.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mls_conn.h"
#include "mls_test.h"

#define TC_CAP (256u << 10)  /* the queue cap under test */
#define TC_MSG_BYTES 4000    /* one Error envelope's message */
#define TC_TOTAL (32u << 20) /* what the test tries to send: far above cap + socket buffers */

typedef struct {
    bool connected, closed;
    mls_status close_st;
} tc_state;

static void tc_on_connect(mls_conn *c, mls_status st, void *user)
{
    tc_state *s = user;
    s->connected = st == MLS_OK;
}

static void tc_on_close(mls_conn *c, mls_status st, void *user)
{
    tc_state *s = user;
    s->closed = true;
    s->close_st = st;
}

static void tc_on_msg(mls_conn *c, Mlaserve__Envelope *env, void *user)
{
}

/* A listening socket on 127.0.0.1 with a small receive buffer; its port. */
static int tc_listen(int *port_p)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), small = 4096;

    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        close(fd);
        return -1;
    }
    *port_p = ntohs(sa.sin_port);
    return fd;
}

/* Send TC_TOTAL bytes of envelopes, running the loop between sends; the peer
 * reads (drains) or not. *sent_p: the bytes mls_conn_send accepted. */
static void tc_run(bool peer_reads, tc_state *s, size_t *sent_p)
{
    static const mls_conn_callbacks cb = {
        .on_msg = tc_on_msg, .on_close = tc_on_close, .on_connect = tc_on_connect};
    uv_loop_t loop;
    mls_conn_opts opts;
    mls_conn *c = NULL;
    int lfd, pfd = -1, port = 0;
    size_t sent = 0;
    char *text = malloc(TC_MSG_BYTES + 1), drain[65536];

    memset(text, 'x', TC_MSG_BYTES);
    text[TC_MSG_BYTES] = '\0';
    memset(s, 0, sizeof(*s));
    uv_loop_init(&loop);
    lfd = tc_listen(&port);
    CHECK(lfd >= 0);
    mls_conn_opts_default(&opts);
    opts.max_send_queue_bytes = TC_CAP;
    CHECK_OK(mls_conn_dial(&loop, "127.0.0.1", port, &opts, &cb, s, &c));
    for (int i = 0; i < 1000 && !s->connected && !s->closed; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    CHECK(s->connected);
    pfd = accept(lfd, NULL, NULL);
    CHECK(pfd >= 0);
    fcntl(pfd, F_SETFL, O_NONBLOCK);
    while (s->connected && !s->closed && sent < TC_TOTAL) {
        Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
        Mlaserve__Error e = MLASERVE__ERROR__INIT;
        mls_proto_error_init(&env, &e, 1, MLS_ERR_BUSY, text);
        if (mls_conn_send(c, &env) != MLS_OK) {
            break;
        }
        sent += TC_MSG_BYTES;
        uv_run(&loop, UV_RUN_NOWAIT);
        while (peer_reads && read(pfd, drain, sizeof(drain)) > 0) {
        }
    }
    if (!s->closed) {
        mls_conn_close(c);
    }
    for (int i = 0; i < 100 && !s->closed; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        while (peer_reads && read(pfd, drain, sizeof(drain)) > 0) {
        }
        usleep(1000);
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    close(pfd);
    close(lfd);
    uv_loop_close(&loop);
    free(text);
    *sent_p = sent;
}

static void test_peer_that_does_not_read_is_dropped(void)
{
    tc_state s;
    size_t sent = 0;

    tc_run(false, &s, &sent);
    CHECK(s.closed);
    CHECK_EQ_INT(s.close_st, MLS_ERR_BUSY);
    /* dropped long before the whole burst: at the cap plus what the kernel's
     * socket buffers took */
    CHECK_MSG(sent < TC_TOTAL / 2, "%zu bytes accepted before the drop", sent);
    fprintf(stderr, "  a peer that does not read: dropped after %zu bytes (cap %u)\n", sent, TC_CAP);
}

static void test_peer_that_reads_is_kept(void)
{
    tc_state s;
    size_t sent = 0;

    tc_run(true, &s, &sent);
    CHECK_EQ_INT(sent >= TC_TOTAL, 1);
    CHECK(s.close_st != MLS_ERR_BUSY);
}

int main(void)
{
    MLS_TEST_RUN(test_peer_that_does_not_read_is_dropped);
    MLS_TEST_RUN(test_peer_that_reads_is_kept);
    return MLS_TEST_DONE();
}
