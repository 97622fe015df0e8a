/*
 * test_auth.c - node authentication against the real mlaserve-router: the
 * cluster key file's checks, a node with no key or the wrong key refused
 * (never registered, "cluster key refused" on both sides, once per
 * connection), the real mlaserve-decode refused with the wrong key and
 * registered with the right one, a replayed or altered frame after the
 * handshake closing the connection, duplicate node ids refused, the cap on
 * node connections and the registration deadline.
 */
#include "auth_peer.h"
#include "mls_test.h"

#define DECODE_NODES "mlaserve:nodes{role=\"decode\"} "

static char key_path[256], other_key_path[256];
static mls_auth_key key, other_key;

static void test_key_file_checks(void)
{
    char path[256];
    mls_auth_key k;
    mls_err err = {{0}};

    ap_key_write("open", "0123456789abcdef0123456789abcdef\n", 0644, path, sizeof(path));
    CHECK_STATUS(mls_auth_key_load(path, &k, &err), MLS_ERR_INVALID_ARG);
    CHECK_MSG(strstr(err.msg, "chmod 600") != NULL, "%s", err.msg);
    unlink(path);
    ap_key_write("short", "0123456789abcdef\n", 0600, path, sizeof(path));
    CHECK_STATUS(mls_auth_key_load(path, &k, &err), MLS_ERR_INVALID_ARG);
    CHECK_MSG(strstr(err.msg, "at least 32") != NULL, "%s", err.msg);
    unlink(path);
    CHECK_STATUS(mls_auth_key_load("/nonexistent/key", &k, &err), MLS_ERR_IO);
    /* key_file_create: 0600, loads, and refuses to overwrite */
    snprintf(path, sizeof(path), "/tmp/mls-auth-test-%d-made", (int)getpid());
    unlink(path);
    CHECK_OK(mls_auth_key_file_create(path, &err));
    {
        struct stat sb;
        CHECK(stat(path, &sb) == 0);
        CHECK_EQ_INT(sb.st_mode & 0777, 0600);
    }
    CHECK_OK(mls_auth_key_load(path, &k, &err));
    CHECK_STATUS(mls_auth_key_file_create(path, &err), MLS_ERR_IO);
    unlink(path);
}

static void test_router_needs_a_key(void)
{
    ap_router r;
    const char *none[] = {NULL};
    char open_path[256];

    CHECK_EQ_INT(ap_router_start(&r, none), 2);
    CHECK_MSG(ap_log_count(r.log, "no cluster key") == 1, "router log %s", r.log);
    ap_key_write("open2", "0123456789abcdef0123456789abcdef\n", 0640, open_path, sizeof(open_path));
    {
        const char *extra[] = {"--cluster-key-file", open_path, NULL};
        CHECK_EQ_INT(ap_router_start(&r, extra), 2);
        CHECK_MSG(ap_log_count(r.log, "chmod 600") == 1, "router log %s", r.log);
    }
    unlink(open_path);
    {
        const char *extra[] = {"--insecure-no-cluster-key", NULL};
        CHECK_EQ_INT(ap_router_start(&r, extra), 0);
        ap_router_stop(&r);
    }
}

static void test_no_key_and_wrong_key_refused(void)
{
    const char *extra[] = {"--cluster-key-file", key_path, NULL};
    ap_router r;
    ap_peer p;
    Mlaserve__Envelope *in;

    CHECK_EQ_INT(ap_router_start(&r, extra), 0);
    /* no key: Register straight away */
    CHECK_EQ_INT(ap_peer_open(&p, r.node_port), 0);
    CHECK(ap_peer_register(&p, "rogue-nokey"));
    in = ap_peer_recv(&p, 5);
    CHECK(in != NULL && in->msg_case == MLASERVE__ENVELOPE__MSG_AUTH_HELLO);
    in = ap_peer_recv(&p, 5);
    CHECK_MSG(in != NULL && in->msg_case == MLASERVE__ENVELOPE__MSG_ERROR &&
                  strstr(in->error->message, "cluster key refused") != NULL,
              "want an Error 'cluster key refused', got %s",
              in ? mls_proto_msg_name(in->msg_case) : "nothing");
    CHECK(ap_wait_closed(p.fd, 3));
    ap_peer_close(&p);
    /* the wrong key: the router's proof does not check, ours is refused */
    CHECK_EQ_INT(ap_peer_open(&p, r.node_port), 0);
    CHECK_EQ_INT(ap_peer_handshake(&p, &other_key), 0);
    in = ap_peer_recv(&p, 5);
    CHECK_MSG(in != NULL && in->msg_case == MLASERVE__ENVELOPE__MSG_ERROR &&
                  strstr(in->error->message, "cluster key refused") != NULL,
              "want an Error 'cluster key refused', got %s",
              in ? mls_proto_msg_name(in->msg_case) : "nothing");
    CHECK(ap_wait_closed(p.fd, 3));
    ap_peer_close(&p);
    usleep(200000);
    /* one log line per refused connection, nothing registered */
    CHECK_EQ_INT(ap_log_count(r.log, "cluster key refused"), 2);
    CHECK_MSG(ap_metric(r.http_port, DECODE_NODES) == 0, "decode nodes: %g",
              ap_metric(r.http_port, DECODE_NODES));
    ap_router_stop(&r);
}

/* The real node binary: the wrong key never registers and says so; the right one does. */
static void test_real_node(void)
{
    const char *extra[] = {"--cluster-key-file", key_path, NULL};
    char node_log[128], router_addr[64];
    const char *keys[2] = {other_key_path, key_path};
    ap_router r;

    CHECK_EQ_INT(ap_router_start(&r, extra), 0);
    snprintf(router_addr, sizeof(router_addr), "127.0.0.1:%d", r.node_port);
    for (int i = 0; i < 2; i++) {
        double end = ap_now() + 60;
        pid_t pid;
        snprintf(node_log, sizeof(node_log), "/tmp/mls-auth-test-%d-node%d.log", (int)getpid(), i);
        pid = fork();
        if (pid == 0) {
            int fd = open(node_log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            dup2(fd, 2);
            dup2(fd, 1);
            execl(MLS_BIN_DIR "/mlaserve-decode", "mlaserve-decode", "--model",
                  MLS_FIXTURES_DIR "/models/tiny-v2", "--router", router_addr, "--node-id",
                  i == 0 ? "node-wrong-key" : "node-right-key", "--threads", "1", "--kv-pages",
                  "16", "--cluster-key-file", keys[i], (char *)NULL);
            _exit(127);
        }
        while (ap_now() < end &&
               (i == 0 ? ap_log_count(node_log, "cluster key refused") == 0
                       : ap_metric(r.http_port, DECODE_NODES) != 1)) {
            usleep(100000);
        }
        if (i == 0) {
            usleep(1000000); /* it keeps trying */
            CHECK_MSG(ap_log_count(node_log, "cluster key refused") >= 1, "node log %s", node_log);
            CHECK_EQ_INT(ap_log_count(node_log, "registered with the router"), 0);
            CHECK_MSG(ap_metric(r.http_port, DECODE_NODES) == 0, "decode nodes: %g",
                      ap_metric(r.http_port, DECODE_NODES));
        } else {
            CHECK_MSG(ap_metric(r.http_port, DECODE_NODES) == 1, "decode nodes: %g; router log %s",
                      ap_metric(r.http_port, DECODE_NODES), r.log);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        unlink(node_log);
    }
    ap_router_stop(&r);
}

/* After the handshake: a replayed frame, an altered one, close the connection. */
static void test_replay_and_tamper_close(void)
{
    const char *extra[] = {"--cluster-key-file", key_path, NULL};
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT, *in;
    Mlaserve__Heartbeat hb = MLASERVE__HEARTBEAT__INIT;
    uint8_t *frame = NULL;
    size_t len = 0;
    ap_router r;
    ap_peer p;

    env.msg_case = MLASERVE__ENVELOPE__MSG_HEARTBEAT;
    env.heartbeat = &hb;
    CHECK_EQ_INT(ap_router_start(&r, extra), 0);
    for (int mode = 0; mode < 2; mode++) {
        CHECK_EQ_INT(ap_peer_open(&p, r.node_port), 0);
        CHECK_EQ_INT(ap_peer_handshake(&p, &key), 1);
        CHECK(ap_peer_register(&p, mode == 0 ? "replay-1" : "tamper-1"));
        in = ap_peer_recv(&p, 5);
        CHECK_MSG(in != NULL && in->msg_case == MLASERVE__ENVELOPE__MSG_REGISTER_ACK &&
                      in->register_ack->accepted,
                  "want an accepted RegisterAck");
        CHECK(ap_peer_pack(&p, &env, &frame, &len));
        CHECK(ap_send_all(p.fd, frame, len)); /* the genuine one */
        CHECK(!ap_wait_closed(p.fd, 0.3));
        if (mode == 0) {
            CHECK(ap_send_all(p.fd, frame, len)); /* again */
        } else {
            free(frame);
            CHECK(ap_peer_pack(&p, &env, &frame, &len));
            frame[len - 1] ^= 0x40;
            CHECK(ap_send_all(p.fd, frame, len));
        }
        CHECK_MSG(ap_wait_closed(p.fd, 3), "the router kept a connection after a %s frame",
                  mode == 0 ? "replayed" : "tampered");
        free(frame);
        frame = NULL;
        ap_peer_close(&p);
    }
    usleep(200000);
    CHECK_EQ_INT(ap_log_count(r.log, "does not open"), 2);
    ap_router_stop(&r);
}

static void test_duplicate_node_id(void)
{
    const char *extra[] = {"--cluster-key-file", key_path, NULL};
    Mlaserve__Envelope *in;
    ap_router r;
    ap_peer a, b;

    CHECK_EQ_INT(ap_router_start(&r, extra), 0);
    CHECK_EQ_INT(ap_peer_open(&a, r.node_port), 0);
    CHECK_EQ_INT(ap_peer_handshake(&a, &key), 1);
    CHECK(ap_peer_register(&a, "twin"));
    in = ap_peer_recv(&a, 5);
    CHECK(in != NULL && in->msg_case == MLASERVE__ENVELOPE__MSG_REGISTER_ACK &&
          in->register_ack->accepted);
    CHECK_EQ_INT(ap_peer_open(&b, r.node_port), 0);
    CHECK_EQ_INT(ap_peer_handshake(&b, &key), 1);
    CHECK(ap_peer_register(&b, "twin"));
    in = ap_peer_recv(&b, 5);
    CHECK_MSG(in != NULL && in->msg_case == MLASERVE__ENVELOPE__MSG_REGISTER_ACK &&
                  !in->register_ack->accepted &&
                  strstr(in->register_ack->message, "already registered") != NULL,
              "want a refused RegisterAck naming the duplicate id");
    ap_peer_close(&b);
    ap_peer_close(&a);
    ap_router_stop(&r);
}

/* --max-node-conns: the one over the cap is closed at once; the others by the
 * 5 s registration deadline. */
static void test_conn_cap_and_deadline(void)
{
    const char *extra[] = {"--cluster-key-file", key_path, "--max-node-conns", "3", NULL};
    int fds[3], over;
    double t0;
    ap_router r;

    CHECK_EQ_INT(ap_router_start(&r, extra), 0);
    t0 = ap_now();
    for (int i = 0; i < 3; i++) {
        fds[i] = ap_connect(r.node_port);
        CHECK(fds[i] >= 0);
    }
    usleep(200000);
    over = ap_connect(r.node_port);
    CHECK(over >= 0);
    CHECK_MSG(ap_wait_closed(over, 2), "a 4th connection stayed open over --max-node-conns 3");
    close(over);
    CHECK_EQ_INT(ap_log_count(r.log, "--max-node-conns"), 1);
    for (int i = 0; i < 3; i++) {
        CHECK_MSG(ap_wait_closed(fds[i], 8), "an idle connection outlived the deadline");
        close(fds[i]);
    }
    CHECK_MSG(ap_now() - t0 >= 4.5 && ap_now() - t0 < 8, "closed after %.1f s, want ~5",
              ap_now() - t0);
    CHECK_EQ_INT(ap_log_count(r.log, "no authentication within"), 3);
    ap_router_stop(&r);
}

int main(void)
{
    mls_err err = {{0}};

    signal(SIGPIPE, SIG_IGN);
    ap_key_write("key", "auth-test-cluster-key-0123456789abcdef\n", 0600, key_path,
                 sizeof(key_path));
    ap_key_write("other", "auth-test-cluster-key-0123456789abcdeX\n", 0600, other_key_path,
                 sizeof(other_key_path));
    if (mls_auth_key_load(key_path, &key, &err) != MLS_OK ||
        mls_auth_key_load(other_key_path, &other_key, &err) != MLS_OK) {
        fprintf(stderr, "key files: %s\n", err.msg);
        return 1;
    }
    MLS_TEST_RUN(test_key_file_checks);
    MLS_TEST_RUN(test_router_needs_a_key);
    MLS_TEST_RUN(test_no_key_and_wrong_key_refused);
    MLS_TEST_RUN(test_replay_and_tamper_close);
    MLS_TEST_RUN(test_duplicate_node_id);
    MLS_TEST_RUN(test_conn_cap_and_deadline);
    MLS_TEST_RUN(test_real_node);
    unlink(key_path);
    unlink(other_key_path);
    return MLS_TEST_DONE();
}
