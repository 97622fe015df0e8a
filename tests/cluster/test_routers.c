/*
 * test_routers.c - no single point of failure, with the real binaries on
 * loopback:
 *
 *  - `mlaserve cluster up` keeps its ports and supervises its children: after
 *    a SIGKILL of the router, serving resumes on the same URL within 15 s
 *    (a new router pid, the nodes registered again);
 *  - two routers front the same nodes (each node is given both): either
 *    serves, one dies and the other keeps serving, and the dead one restarted
 *    on its fixed ports has the nodes back within 5 s;
 *  - the context the router promises counts the prefill nodes too: a prompt
 *    that fits the decode node but not the prefill node is a 400
 *    context_length_exceeded at once, and /v1/models says the same limit;
 *    --max-model-len caps it below what the nodes hold.
 * The model is the project's demo model, generated into a temp dir.
 */
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cl_http.h"
#include "mls_num.h"
#include "mls_test.h"

static char tmp_dir[256];
static char model_dir[320];
static char key_file[320];

static const char *const completion =
    "{\"prompt\":\"Either router\",\"max_tokens\":8,\"temperature\":0}";

static double now_s(void)
{
    return (double)mls_now_ns() * 1e-9;
}

static pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();

    if (pid == 0) {
        FILE *f = freopen(log, "a", stderr);
        (void)f;
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void stop(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* The text of a completion from the router at port, or NULL. */
static char *complete(int port)
{
    cl_response r = {0};
    char *text = NULL;

    if (cl_post(port, "/v1/completions", completion, 30, &r) == 0 && r.status == 200) {
        cJSON *j = cJSON_Parse(r.body);
        cJSON *ch = j ? cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0) : NULL;
        cJSON *t = ch ? cJSON_GetObjectItem(ch, "text") : NULL;
        if (cJSON_IsString(t)) {
            text = strdup(t->valuestring);
        }
        cJSON_Delete(j);
    }
    cl_response_free(&r);
    return text;
}

static bool ready(int port)
{
    cl_response r = {0};
    bool ok = cl_get(port, "/ready", 2, &r) == 0 && r.status == 200;

    cl_response_free(&r);
    return ok;
}

/* Seconds until /ready answers 200 on port, or -1 after limit_s. */
static double wait_ready(int port, double limit_s)
{
    double t0 = now_s();

    while (now_s() - t0 < limit_s) {
        if (ready(port)) {
            return now_s() - t0;
        }
        usleep(100000);
    }
    return -1;
}

/* ---- cluster up: router SIGKILLed, the same URL serves again ---------------------- */

typedef struct {
    int http_port;
    pid_t router_pid;
} cl_state;

static int read_state(const char *file, cl_state *s)
{
    FILE *f = fopen(file, "r");
    char buf[8192];
    size_t n;
    cJSON *j, *nodes, *it;

    if (f == NULL) {
        return -1;
    }
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    if ((j = cJSON_Parse(buf)) == NULL) {
        return -1;
    }
    s->http_port = cJSON_GetObjectItem(j, "http_port") ? cJSON_GetObjectItem(j, "http_port")->valueint : 0;
    s->router_pid = 0;
    nodes = cJSON_GetObjectItem(j, "nodes");
    cJSON_ArrayForEach(it, nodes)
    {
        if (strcmp(cJSON_GetObjectItem(it, "role")->valuestring, "router") == 0) {
            s->router_pid = (pid_t)cJSON_GetObjectItem(it, "pid")->valueint;
        }
    }
    cJSON_Delete(j);
    return s->http_port > 0 && s->router_pid > 0 ? 0 : -1;
}

static void test_cluster_up_router_restart(void)
{
    char state[400], log[400];
    char *argv[] = {MLS_BIN_DIR "/mlaserve", "cluster", "up", "--model", model_dir, "--port", "0",
                    "--state-file", state, "--kv-pages", "128", "--threads", "1", NULL};
    cl_state s0 = {0}, s1 = {0};
    char *before, *after = NULL;
    pid_t pid;
    double t0, waited = -1;

    snprintf(state, sizeof(state), "%s/cluster.json", tmp_dir);
    snprintf(log, sizeof(log), "%s/cluster.log", tmp_dir);
    pid = spawn(argv, log);
    for (int i = 0; i < 1200 && read_state(state, &s0) != 0; i++) {
        usleep(100000);
    }
    CHECK_MSG(read_state(state, &s0) == 0, "cluster up wrote no state (see %s)", log);
    if (s0.router_pid <= 0) {
        stop(pid);
        return;
    }
    before = complete(s0.http_port);
    CHECK(before != NULL);
    kill(s0.router_pid, SIGKILL);
    t0 = now_s();
    while (now_s() - t0 < 30) {
        if ((after = complete(s0.http_port)) != NULL) {
            waited = now_s() - t0;
            break;
        }
        usleep(200000);
    }
    fprintf(stderr, "  router SIGKILLed: serving again on the same URL after %.2f s\n", waited);
    CHECK_MSG(after != NULL && waited < 15.0, "the same URL served again after %.2f s", waited);
    CHECK(before != NULL && after != NULL && strcmp(before, after) == 0);
    CHECK(read_state(state, &s1) == 0 && s1.router_pid != s0.router_pid && s1.http_port == s0.http_port);
    kill(pid, SIGTERM);
    for (int i = 0; i < 200 && waitpid(pid, NULL, WNOHANG) != pid; i++) {
        usleep(100000);
    }
    stop(pid);
    free(before);
    free(after);
}

/* ---- two routers, the same nodes -------------------------------------------------- */

typedef struct {
    char port[16], node_port[16], ports_file[400], log[400];
    int http, node;
    pid_t pid;
    const char *max_model_len; /* --max-model-len, or NULL */
} router;

static pid_t router_start(router *r)
{
    char *argv[] = {MLS_BIN_DIR "/mlaserve-router", "--tokenizer", model_dir, "--port", r->port,
                    "--node-port", r->node_port, "--port-file", r->ports_file,
                    "--cluster-key-file", key_file, r->max_model_len ? "--max-model-len" : NULL,
                    (char *)r->max_model_len, NULL};
    FILE *f;

    unlink(r->ports_file);
    r->pid = spawn(argv, r->log);
    for (int i = 0; i < 100; i++) {
        if ((f = fopen(r->ports_file, "r")) != NULL) {
            int ok = fscanf(f, "%d %d", &r->http, &r->node) == 2;
            fclose(f);
            if (ok) {
                /* the ports, from now on fixed: a restart binds the same */
                snprintf(r->port, sizeof(r->port), "%d", r->http);
                snprintf(r->node_port, sizeof(r->node_port), "%d", r->node);
                return r->pid;
            }
        }
        usleep(100000);
    }
    return -1;
}

static void test_two_routers_share_nodes(void)
{
    router a = {.port = "0", .node_port = "0"}, b = {.port = "0", .node_port = "0"};
    char routers[64], log_p[400], log_d[400];
    pid_t pre = -1, dec = -1;
    char *ta = NULL, *tb = NULL, *tb2 = NULL, *ta2 = NULL;
    double back;

    snprintf(a.ports_file, sizeof(a.ports_file), "%s/a.ports", tmp_dir);
    snprintf(b.ports_file, sizeof(b.ports_file), "%s/b.ports", tmp_dir);
    snprintf(a.log, sizeof(a.log), "%s/router-a.log", tmp_dir);
    snprintf(b.log, sizeof(b.log), "%s/router-b.log", tmp_dir);
    snprintf(log_p, sizeof(log_p), "%s/prefill.log", tmp_dir);
    snprintf(log_d, sizeof(log_d), "%s/decode.log", tmp_dir);
    CHECK(router_start(&a) > 0 && router_start(&b) > 0);
    snprintf(routers, sizeof(routers), "127.0.0.1:%d,127.0.0.1:%d", a.node, b.node);
    {
        char *pa[] = {MLS_BIN_DIR "/mlaserve-prefill", "--model", model_dir, "--router", routers,
                      "--threads", "1", "--kv-pages", "128", "--cluster-key-file", key_file, NULL};
        char *da[] = {MLS_BIN_DIR "/mlaserve-decode", "--model", model_dir, "--router", routers,
                      "--threads", "1", "--kv-pages", "128", "--cluster-key-file", key_file, NULL};
        pre = spawn(pa, log_p);
        dec = spawn(da, log_d);
    }
    CHECK(wait_ready(a.http, 60) >= 0 && wait_ready(b.http, 60) >= 0);
    ta = complete(a.http);
    tb = complete(b.http);
    CHECK(ta != NULL && tb != NULL && strcmp(ta, tb) == 0);
    /* A dies: B goes on serving the same nodes */
    stop(a.pid);
    tb2 = complete(b.http);
    CHECK(tb2 != NULL && tb != NULL && strcmp(tb, tb2) == 0);
    /* A back on its fixed ports: the nodes find it within 5 s */
    CHECK(router_start(&a) > 0);
    back = wait_ready(a.http, 15);
    fprintf(stderr, "  router restarted on its ports: nodes back after %.2f s\n", back);
    CHECK_MSG(back >= 0 && back < 5.0, "nodes back after %.2f s", back);
    ta2 = complete(a.http);
    CHECK(ta2 != NULL && ta != NULL && strcmp(ta, ta2) == 0);
    /* and B can die too */
    stop(b.pid);
    free(ta2);
    ta2 = complete(a.http);
    CHECK(ta2 != NULL && ta != NULL && strcmp(ta, ta2) == 0);
    stop(pre);
    stop(dec);
    stop(a.pid);
    free(ta);
    free(tb);
    free(tb2);
    free(ta2);
}

/* A prefill node holding 2 pages (128 tokens) in front of a decode node of 64
 * pages: a 300-token prompt is refused up front with the 128 the router
 * reports as max_model_len. */
static void test_context_counts_prefill(void)
{
    router a = {.port = "0", .node_port = "0"};
    char rt[32], log_p[400], log_d[400], body[4096];
    pid_t pre, dec;
    cl_response r = {0};
    size_t off;
    double t0;

    snprintf(a.ports_file, sizeof(a.ports_file), "%s/c.ports", tmp_dir);
    snprintf(a.log, sizeof(a.log), "%s/router-c.log", tmp_dir);
    snprintf(log_p, sizeof(log_p), "%s/prefill-c.log", tmp_dir);
    snprintf(log_d, sizeof(log_d), "%s/decode-c.log", tmp_dir);
    CHECK(router_start(&a) > 0);
    snprintf(rt, sizeof(rt), "127.0.0.1:%d", a.node);
    {
        char *pa[] = {MLS_BIN_DIR "/mlaserve-prefill", "--model", model_dir, "--router", rt, "--threads",
                      "1", "--kv-pages", "2", "--cluster-key-file", key_file, NULL};
        char *da[] = {MLS_BIN_DIR "/mlaserve-decode", "--model", model_dir, "--router", rt, "--threads",
                      "1", "--kv-pages", "64", "--cluster-key-file", key_file, NULL};
        pre = spawn(pa, log_p);
        dec = spawn(da, log_d);
    }
    CHECK(wait_ready(a.http, 60) >= 0);
    CHECK_EQ_INT(cl_get(a.http, "/v1/models", 10, &r), 0);
    CHECK_MSG(r.body != NULL && strstr(r.body, "\"max_model_len\":128") != NULL, "/v1/models: %s",
              r.body ? r.body : "");
    cl_response_free(&r);
    off = (size_t)snprintf(body, sizeof(body), "{\"max_tokens\":4,\"prompt\":[");
    for (int i = 0; i < 300; i++) {
        off += (size_t)snprintf(body + off, sizeof(body) - off, "%s%d", i ? "," : "", 10 + i % 90);
    }
    snprintf(body + off, sizeof(body) - off, "]}");
    t0 = now_s();
    CHECK_EQ_INT(cl_post(a.http, "/v1/completions", body, 30, &r), 0);
    CHECK_EQ_INT(r.status, 400);
    CHECK_MSG(r.body != NULL && strstr(r.body, "context_length_exceeded") != NULL &&
                  strstr(r.body, "128") != NULL,
              "body: %s", r.body ? r.body : "");
    CHECK_MSG(now_s() - t0 < 2.0, "the refusal took %.2f s (retried?)", now_s() - t0);
    cl_response_free(&r);
    stop(a.pid);
    /* the same nodes behind a router capped at 96 tokens */
    a.max_model_len = "96";
    CHECK(router_start(&a) > 0);
    CHECK(wait_ready(a.http, 15) >= 0);
    CHECK_EQ_INT(cl_get(a.http, "/v1/models", 10, &r), 0);
    CHECK_MSG(r.body != NULL && strstr(r.body, "\"max_model_len\":96") != NULL, "/v1/models: %s",
              r.body ? r.body : "");
    cl_response_free(&r);
    CHECK_EQ_INT(cl_post(a.http, "/v1/completions",
                         "{\"max_tokens\":90,\"prompt\":[10,11,12,13,14,15,16,17,18,19]}", 30, &r),
                 0);
    CHECK_EQ_INT(r.status, 400);
    CHECK(r.body != NULL && strstr(r.body, "context_length_exceeded") != NULL);
    cl_response_free(&r);
    stop(pre);
    stop(dec);
    stop(a.pid);
}

int main(void)
{
    char cmd[1200];

    signal(SIGPIPE, SIG_IGN);
    snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/mls-test-routers-%d", (int)getpid());
    snprintf(model_dir, sizeof(model_dir), "%s/model", tmp_dir);
    snprintf(key_file, sizeof(key_file), "%s/cluster.key", tmp_dir);
    mkdir(tmp_dir, 0700);
    snprintf(cmd, sizeof(cmd), "%s/mlaserve genmodel --preset demo --out %s --force >/dev/null 2>&1",
             MLS_BIN_DIR, model_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot generate the demo model: %s\n", cmd);
        return 1;
    }
    snprintf(cmd, sizeof(cmd), "head -c 48 /dev/urandom | base64 > %s && chmod 600 %s", key_file, key_file);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot write a cluster key\n");
        return 1;
    }
    MLS_TEST_RUN(test_cluster_up_router_restart);
    MLS_TEST_RUN(test_two_routers_share_nodes);
    MLS_TEST_RUN(test_context_counts_prefill);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp_dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot remove %s\n", tmp_dir);
    }
    return MLS_TEST_DONE();
}
