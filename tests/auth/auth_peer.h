/*
 * auth_peer.h - what the node-authentication tests share: a real
 * mlaserve-router started with a key file, and a "node" played with blocking
 * sockets that speaks the handshake and the sealed frames by hand (so it can
 * also lie, replay and tamper). Header-only: each test executable includes it
 * once.
 */
#ifndef MLS_AUTH_PEER_H
#define MLS_AUTH_PEER_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mls_auth.h"
#include "mls_frame.h"
#include "mls_proto.h"

typedef struct {
    pid_t pid;
    int node_port;
    int http_port;
    char log[128];
} ap_router;

static inline double ap_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Write a key file with the given content and mode; path_p gets its name. */
static inline void ap_key_write(const char *name, const char *content, mode_t mode, char *path_p,
                         size_t cap)
{
    FILE *f;

    snprintf(path_p, cap, "/tmp/mls-auth-test-%d-%s", (int)getpid(), name);
    unlink(path_p);
    f = fopen(path_p, "w");
    if (f != NULL) {
        fputs(content, f);
        fclose(f);
    }
    chmod(path_p, mode);
}

/* Start mlaserve-router with extra args (NULL-terminated, at most 8); 0 on success. */
static inline int ap_router_start(ap_router *r, const char *const *extra)
{
    char port_file[128];
    const char *argv[24];
    int n = 0;

    memset(r, 0, sizeof(*r));
    snprintf(port_file, sizeof(port_file), "/tmp/mls-auth-test-%d.ports", (int)getpid());
    snprintf(r->log, sizeof(r->log), "/tmp/mls-auth-test-%d-router.log", (int)getpid());
    unlink(port_file);
    argv[n++] = MLS_BIN_DIR "/mlaserve-router";
    argv[n++] = "--tokenizer";
    argv[n++] = MLS_FIXTURES_DIR "/tokenizers/gpt2";
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--node-port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = port_file;
    for (int i = 0; extra[i] != NULL && i < 8; i++) {
        argv[n++] = extra[i];
    }
    argv[n] = NULL;
    r->pid = fork();
    if (r->pid == 0) {
        int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 2);
        dup2(fd, 1);
        unsetenv("MLASERVE_CLUSTER_KEY_FILE");
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) {
        FILE *f = fopen(port_file, "r");
        int status;
        if (f != NULL) {
            int ok = fscanf(f, "%d %d", &r->http_port, &r->node_port) == 2;
            fclose(f);
            if (ok) {
                unlink(port_file);
                return 0;
            }
        }
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            r->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
        }
        usleep(50000);
    }
    return -1;
}

static inline void ap_router_stop(ap_router *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGTERM);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
}

/* How often needle occurs in the router's log so far. */
static inline int ap_log_count(const char *path, const char *needle)
{
    static char buf[1 << 20];
    FILE *f = fopen(path, "r");
    size_t n;
    int count = 0;

    if (f == NULL) {
        return 0;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (const char *p = buf; (p = strstr(p, needle)) != NULL; p += strlen(needle)) {
        count++;
    }
    return count;
}

static inline int ap_connect(int port)
{
    struct sockaddr_in a = {0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

static inline bool ap_send_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t k = send(fd, p, len, MSG_NOSIGNAL);
        if (k <= 0) {
            return false;
        }
        p += k;
        len -= (size_t)k;
    }
    return true;
}

/* Wait up to timeout_s for the peer to close; true when it did (EOF or reset). */
static inline bool ap_wait_closed(int fd, double timeout_s)
{
    double end = ap_now() + timeout_s;
    uint8_t buf[4096];

    while (ap_now() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ms = (int)((end - ap_now()) * 1000) + 1;
        if (poll(&p, 1, ms) <= 0) {
            continue;
        }
        ssize_t k = recv(fd, buf, sizeof(buf), 0);
        if (k <= 0) {
            return true;
        }
    }
    return false;
}

/* One node connection played by hand. */
typedef struct {
    int fd;
    mls_proto_reader *reader;
    mls_auth_session session;
    bool sealed;
    uint8_t buf[65536];
    size_t have, off;
} ap_peer;

static inline int ap_peer_open(ap_peer *p, int port)
{
    memset(p, 0, sizeof(*p));
    p->fd = ap_connect(port);
    if (p->fd < 0 || mls_proto_reader_create(NULL, &p->reader, NULL) != MLS_OK) {
        return -1;
    }
    return 0;
}

static inline void ap_peer_close(ap_peer *p)
{
    if (p->fd >= 0) {
        close(p->fd);
    }
    mls_proto_reader_destroy(p->reader);
    p->fd = -1;
    p->reader = NULL;
}

/* Next envelope within timeout_s, or NULL (closed, timed out, bad frame). */
static inline Mlaserve__Envelope *ap_peer_recv(ap_peer *p, double timeout_s)
{
    double end = ap_now() + timeout_s;

    for (;;) {
        Mlaserve__Envelope *env = NULL;
        const uint8_t *d = p->buf + p->off;
        size_t n = p->have - p->off;
        if (n > 0) {
            mls_status st = mls_proto_reader_next(p->reader, &d, &n, &env, NULL);
            p->off = p->have - n;
            if (st != MLS_OK) {
                return NULL;
            }
            if (env != NULL) {
                return env;
            }
        }
        struct pollfd pf = {.fd = p->fd, .events = POLLIN};
        int ms = (int)((end - ap_now()) * 1000);
        if (ms <= 0 || poll(&pf, 1, ms) <= 0) {
            return NULL;
        }
        ssize_t k = recv(p->fd, p->buf, sizeof(p->buf), 0);
        if (k <= 0) {
            return NULL;
        }
        p->have = (size_t)k;
        p->off = 0;
    }
}

/* Pack (sealed once the handshake is done); *frame_p is malloc'd. */
static inline bool ap_peer_pack(ap_peer *p, const Mlaserve__Envelope *env, uint8_t **frame_p,
                         size_t *len_p)
{
    if (p->sealed) {
        return mls_proto_frame_pack_sealed(env, 1u << 20, &p->session, frame_p, len_p, NULL) ==
               MLS_OK;
    }
    return mls_proto_frame_pack(env, 1u << 20, frame_p, len_p, NULL) == MLS_OK;
}

static inline bool ap_peer_send(ap_peer *p, const Mlaserve__Envelope *env)
{
    uint8_t *f = NULL;
    size_t len = 0;
    bool ok = ap_peer_pack(p, env, &f, &len) && ap_send_all(p->fd, f, len);
    free(f);
    return ok;
}

/*
 * The node's half of the handshake with key (NULL: a node without a key
 * sends nothing). Returns 1 when the router proved the key and our proof went
 * out (then frames are sealed), 0 when the router's proof did not check
 * (our proof goes out anyway, so the router sees a wrong key), -1 on I/O.
 */
static inline int ap_peer_handshake(ap_peer *p, const mls_auth_key *key)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT, *in;
    Mlaserve__AuthHello h = MLASERVE__AUTH_HELLO__INIT;
    Mlaserve__AuthProof pr = MLASERVE__AUTH_PROOF__INIT;
    uint8_t dn[MLS_AUTH_NONCE_BYTES], an[MLS_AUTH_NONCE_BYTES], proof[MLS_AUTH_PROOF_BYTES];
    bool router_ok;

    mls_auth_nonce(dn);
    h.protocol_version = MLS_PROTO_VERSION;
    h.role = MLASERVE__AUTH_ROLE__AUTH_ROLE_DIALER;
    h.nonce.data = dn;
    h.nonce.len = sizeof(dn);
    env.msg_case = MLASERVE__ENVELOPE__MSG_AUTH_HELLO;
    env.auth_hello = &h;
    if (!ap_peer_send(p, &env)) {
        return -1;
    }
    in = ap_peer_recv(p, 5);
    if (in == NULL || in->msg_case != MLASERVE__ENVELOPE__MSG_AUTH_HELLO ||
        in->auth_hello->nonce.len != sizeof(an)) {
        return -1;
    }
    memcpy(an, in->auth_hello->nonce.data, sizeof(an));
    in = ap_peer_recv(p, 5);
    if (in == NULL || in->msg_case != MLASERVE__ENVELOPE__MSG_AUTH_PROOF) {
        return -1;
    }
    router_ok = mls_auth_proof_check(key, MLS_AUTH_ROLE_ACCEPTOR, dn, an, MLS_PROTO_VERSION,
                                     in->auth_proof->proof.data, in->auth_proof->proof.len);
    mls_auth_proof(key, MLS_AUTH_ROLE_DIALER, dn, an, MLS_PROTO_VERSION, proof);
    pr.proof.data = proof;
    pr.proof.len = sizeof(proof);
    env.msg_case = MLASERVE__ENVELOPE__MSG_AUTH_PROOF;
    env.auth_proof = &pr;
    if (!ap_peer_send(p, &env)) {
        return -1;
    }
    if (!router_ok) {
        return 0;
    }
    mls_auth_session_init(key, MLS_AUTH_ROLE_DIALER, dn, an, &p->session);
    mls_proto_reader_set_session(p->reader, &p->session);
    p->sealed = true;
    return 1;
}

/* A Register of a decode node named id (what mlaserve-decode sends). */
static inline bool ap_peer_register(ap_peer *p, const char *id)
{
    static uint8_t wire[KVL_WIRE_BYTES];
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Register r = MLASERVE__REGISTER__INIT;
    Mlaserve__KvLayout kl = MLASERVE__KV_LAYOUT__INIT;
    Mlaserve__Capacity cap = MLASERVE__CAPACITY__INIT;
    kvl_layout layout;

    if (kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 0x1234, &layout) != MLS_OK) {
        return false;
    }
    mls_proto_kv_layout_to_wire(&layout, 2, wire, &kl);
    r.role = MLASERVE__ROLE__ROLE_DECODE;
    r.node_id = (char *)id;
    r.protocol_version = MLS_PROTO_VERSION;
    r.model_fingerprint = 0x1234;
    r.model_name = "auth-test";
    r.kv_layout = &kl;
    cap.kv_pages_total = 1000000000u;
    cap.kv_pages_free = 1000000000u;
    cap.max_batch = 8;
    r.capacity = &cap;
    r.host = "127.0.0.1";
    env.msg_case = MLASERVE__ENVELOPE__MSG_REGISTER_NODE;
    env.register_node = &r;
    return ap_peer_send(p, &env);
}

/* The router's /metrics value of the line starting with prefix, or -1. */
static inline double ap_metric(int http_port, const char *prefix)
{
    static char buf[1 << 16];
    const char *req = "GET /metrics HTTP/1.0\r\n\r\n";
    size_t have = 0;
    double v = -1;
    int fd = ap_connect(http_port);

    if (fd < 0) {
        return -1;
    }
    ap_send_all(fd, req, strlen(req));
    for (;;) {
        ssize_t k = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        if (k <= 0) {
            break;
        }
        have += (size_t)k;
    }
    close(fd);
    buf[have] = '\0';
    for (char *line = buf; line != NULL && *line != '\0'; line = strchr(line, '\n')) {
        line += *line == '\n';
        if (strncmp(line, prefix, strlen(prefix)) == 0) {
            v = strtod(line + strlen(prefix), NULL);
            break;
        }
    }
    return v;
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define AP_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define AP_SANITIZED 1
#endif

#endif
