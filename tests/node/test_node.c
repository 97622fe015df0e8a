/*
 * test_node.c - the node runtime (node/) against a router played by the test.
 *
 * The test listens like mlaserve-router does (proto/mls_conn.h, the real
 * protocol), starts the real mlaserve-decode binary on a generated tiny model
 * and checks what the runtime owns: registration (what the node says about
 * itself), load reports, reconnect after the router connection drops, the
 * compute thread's event queue (tokens arrive in order, then Finish, and
 * pages return), Cancel, drain on SIGTERM, refusal of another role's message,
 * /metrics in the router's vocabulary, and --device cuda refused clearly where
 * the model cannot run on CUDA.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "../cluster/cl_http.h"
#include "mls_conn.h"
#include "mls_num.h"
#include "mls_test.h"

#define TN_PAGES      64u
#define TN_MAX_EVENTS 8192

typedef struct {
    Mlaserve__Envelope__MsgCase kind;
    uint64_t rid;
    uint32_t index;             /* first token: 0; TokenChunk: first_index */
    uint32_t n;                 /* TokenChunk: tokens */
    int32_t reason;             /* Finish */
    uint32_t completion_tokens; /* Finish */
    uint32_t pages_free;        /* LoadReport */
    uint64_t seq;               /* LoadReport */
    int32_t status;             /* Reserved */
} tn_event;

typedef struct {
    uv_loop_t loop;
    uv_tcp_t server;
    int port;
    mls_conn *conn; /* the node's connection, NULL while none */
    int n_registers;
    Mlaserve__Role role;
    char node_id[96];
    uint64_t fingerprint;
    uint32_t pages_total;
    uint32_t metrics_port;
    bool has_layout;
    size_t xfer_addr_len;
    tn_event ev[TN_MAX_EVENTS];
    int n_ev;
    pid_t pid;
    char model[256];
} tn_router;

static tn_router tn;

static void tn_on_msg(mls_conn *conn, Mlaserve__Envelope *env, void *user)
{
    tn_event e = {.kind = env->msg_case};

    switch (env->msg_case) {
    case MLASERVE__ENVELOPE__MSG_REGISTER_NODE: {
        Mlaserve__Envelope out = MLASERVE__ENVELOPE__INIT;
        Mlaserve__RegisterAck ack = MLASERVE__REGISTER_ACK__INIT;
        const Mlaserve__Register *r = env->register_node;
        tn.n_registers++;
        tn.role = r->role;
        snprintf(tn.node_id, sizeof(tn.node_id), "%s", r->node_id);
        tn.fingerprint = r->model_fingerprint;
        tn.pages_total = r->capacity ? r->capacity->kv_pages_total : 0;
        tn.metrics_port = r->metrics_port;
        tn.has_layout = r->kv_layout != NULL;
        tn.xfer_addr_len = r->ucx_worker_address.len;
        ack.accepted = true;
        ack.protocol_version = MLS_PROTO_VERSION;
        ack.heartbeat_interval_ms = 100;
        out.msg_case = MLASERVE__ENVELOPE__MSG_REGISTER_ACK;
        out.register_ack = &ack;
        mls_conn_send(conn, &out);
        break;
    }
    case MLASERVE__ENVELOPE__MSG_LOAD_REPORT:
        e.seq = env->load_report->seq;
        e.pages_free = env->load_report->kv_pages_free;
        break;
    case MLASERVE__ENVELOPE__MSG_FIRST_TOKEN:
        e.rid = env->first_token->request_id;
        e.n = 1;
        break;
    case MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK:
        e.rid = env->token_chunk->request_id;
        e.index = env->token_chunk->first_index;
        e.n = (uint32_t)env->token_chunk->n_token_ids;
        break;
    case MLASERVE__ENVELOPE__MSG_FINISH:
        e.rid = env->finish->request_id;
        e.reason = env->finish->reason;
        e.completion_tokens = env->finish->completion_tokens;
        break;
    case MLASERVE__ENVELOPE__MSG_RESERVED:
        e.rid = env->reserved->request_id;
        e.status = env->reserved->status;
        break;
    case MLASERVE__ENVELOPE__MSG_ERROR:
        e.rid = env->error->request_id;
        e.status = env->error->status;
        break;
    default:
        break;
    }
    if (tn.n_ev < TN_MAX_EVENTS) {
        tn.ev[tn.n_ev++] = e;
    }
}

static void tn_on_close(mls_conn *conn, mls_status st, void *user)
{
    if (tn.conn == conn) {
        tn.conn = NULL;
    }
}

static void tn_on_connection(uv_stream_t *server, int status)
{
    static const mls_conn_callbacks cb = {.on_msg = tn_on_msg, .on_close = tn_on_close};
    mls_conn *c = NULL;

    if (status == 0 && mls_conn_accept(server, NULL, &cb, NULL, &c) == MLS_OK) {
        tn.conn = c;
    }
}

static void tn_on_timer(uv_timer_t *t)
{
    (void)t;
}

/* Run the loop until pred() holds or timeout_ms passes; true when it held. */
static bool tn_wait(bool (*pred)(void *), void *arg, int timeout_ms)
{
    uv_timer_t tick;
    uint64_t deadline = mls_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    bool ok;

    uv_timer_init(&tn.loop, &tick);
    uv_timer_start(&tick, tn_on_timer, 10, 10);
    while (!(ok = pred(arg)) && mls_now_ns() < deadline) {
        uv_run(&tn.loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&tn.loop, UV_RUN_NOWAIT);
    return ok;
}

static int tn_count(Mlaserve__Envelope__MsgCase kind, uint64_t rid)
{
    int c = 0;
    for (int i = 0; i < tn.n_ev; i++) {
        c += tn.ev[i].kind == kind && (rid == 0 || tn.ev[i].rid == rid);
    }
    return c;
}

static const tn_event *tn_last(Mlaserve__Envelope__MsgCase kind)
{
    for (int i = tn.n_ev - 1; i >= 0; i--) {
        if (tn.ev[i].kind == kind) {
            return &tn.ev[i];
        }
    }
    return NULL;
}

static bool tn_pred_registers(void *arg)
{
    return tn.n_registers >= *(int *)arg;
}

static bool tn_pred_count(void *arg)
{
    const int *want = arg; /* {kind, rid, count} */
    return tn_count((Mlaserve__Envelope__MsgCase)want[0], (uint64_t)want[1]) >= want[2];
}

static bool tn_wait_count(Mlaserve__Envelope__MsgCase kind, int rid, int count, int timeout_ms)
{
    int want[3] = {(int)kind, rid, count};
    return tn_wait(tn_pred_count, want, timeout_ms);
}

/* The latest load report says every page is free again. */
static bool tn_pred_pages_back(void *arg)
{
    const tn_event *r = tn_last(MLASERVE__ENVELOPE__MSG_LOAD_REPORT);
    return r != NULL && r->seq > *(uint64_t *)arg && r->pages_free == TN_PAGES;
}

static bool tn_pred_exited(void *arg)
{
    int *status = arg;
    return waitpid(tn.pid, status, WNOHANG) == tn.pid;
}

/* Start mlaserve-decode with role `role` against our port. */
static void tn_start_node(const char *role)
{
    char port[16], pages[16];
    pid_t pid;

    snprintf(port, sizeof(port), "127.0.0.1:%d", tn.port);
    snprintf(pages, sizeof(pages), "%u", TN_PAGES);
    tn.n_registers = 0;
    tn.n_ev = 0;
    pid = fork();
    if (pid == 0) {
        execl(MLS_BIN_DIR "/mlaserve-decode", "mlaserve-decode", "--model", tn.model, "--router",
              port, "--role", role, "--node-id", "tn-node", "--kv-pages", pages, "--threads", "1",
              "--max-batch", "8", (char *)NULL);
        _exit(127);
    }
    tn.pid = pid;
}

static void tn_stop_node(void)
{
    int status;

    if (tn.pid > 0) {
        kill(tn.pid, SIGKILL);
        waitpid(tn.pid, &status, 0);
        tn.pid = 0;
    }
    if (tn.conn != NULL) {
        mls_conn_close(tn.conn);
        uv_run(&tn.loop, UV_RUN_NOWAIT);
    }
}

static void tn_send_prefill(uint64_t rid, uint32_t max_tokens)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__PrefillRequest m = MLASERVE__PREFILL_REQUEST__INIT;
    Mlaserve__SamplingParams sp = MLASERVE__SAMPLING_PARAMS__INIT;
    int32_t prompt[8] = {5, 17, 42, 7, 99, 3, 11, 64};

    sp.max_tokens = max_tokens;
    sp.ignore_eos = true;
    sp.has_seed = true;
    sp.seed = 1;
    m.request_id = rid;
    m.n_prompt_token_ids = 8;
    m.prompt_token_ids = prompt;
    m.sampling = &sp;
    env.msg_case = MLASERVE__ENVELOPE__MSG_PREFILL_REQUEST;
    env.prefill_request = &m;
    mls_conn_send(tn.conn, &env);
}

static bool tn_register(const char *role)
{
    int one = 1;
    tn_start_node(role);
    return tn_wait(tn_pred_registers, &one, 60000);
}

/* ---- tests ------------------------------------------------------------------------ */

static void test_registration_and_reports(void)
{
    cl_response resp = {0};
    char want[160];

    CHECK(tn_register("decode"));
    CHECK_EQ_INT(tn.role, MLASERVE__ROLE__ROLE_DECODE);
    CHECK_STR_EQ(tn.node_id, "tn-node");
    CHECK(tn.fingerprint != 0);
    CHECK(tn.has_layout);
    CHECK_EQ_INT(tn.pages_total, TN_PAGES);
    CHECK(tn.xfer_addr_len > 0); /* a decode node names its KV listener */
    CHECK(tn.metrics_port > 0);
    /* reports every heartbeat (100 ms here), numbered */
    CHECK(tn_wait_count(MLASERVE__ENVELOPE__MSG_LOAD_REPORT, 0, 3, 5000));
    CHECK(tn_last(MLASERVE__ENVELOPE__MSG_LOAD_REPORT)->seq >= 3);
    CHECK_EQ_INT(tn_last(MLASERVE__ENVELOPE__MSG_LOAD_REPORT)->pages_free, TN_PAGES);
    /* /health and /metrics: the router's vocabulary, labelled by role and node */
    CHECK_EQ_INT(cl_get((int)tn.metrics_port, "/health", 10, &resp), 0);
    CHECK_EQ_INT(resp.status, 200);
    cl_response_free(&resp);
    CHECK_EQ_INT(cl_get((int)tn.metrics_port, "/metrics", 10, &resp), 0);
    CHECK_EQ_INT(resp.status, 200);
    snprintf(want, sizeof(want), "mlaserve:kv_pages_free{role=\"decode\",node=\"tn-node\"} %u",
             TN_PAGES);
    CHECK_MSG(resp.body != NULL && strstr(resp.body, want) != NULL, "no '%s' in /metrics", want);
    CHECK(resp.body != NULL && strstr(resp.body, "mlaserve_node_") == NULL);
    CHECK(resp.body != NULL &&
          strstr(resp.body, "# TYPE mlaserve:generation_tokens_total counter") != NULL);
    cl_response_free(&resp);
    /* a prefill request to a decode node is refused, the node goes on */
    tn_send_prefill(7, 4);
    CHECK(tn_wait_count(MLASERVE__ENVELOPE__MSG_ERROR, 7, 1, 5000));
    CHECK_EQ_INT(tn_last(MLASERVE__ENVELOPE__MSG_ERROR)->status, MLS_ERR_INVALID_ARG);
    tn_stop_node();
}

static void test_reconnect(void)
{
    int two = 2;

    CHECK(tn_register("prefill"));
    CHECK_EQ_INT(tn.role, MLASERVE__ROLE__ROLE_PREFILL);
    CHECK(tn.xfer_addr_len == 0); /* a prefill node listens for no KV */
    /* the router drops the connection: the node dials again and registers anew */
    mls_conn_close(tn.conn);
    CHECK(tn_wait(tn_pred_registers, &two, 10000));
    CHECK(tn.conn != NULL);
    CHECK(tn_wait_count(MLASERVE__ENVELOPE__MSG_LOAD_REPORT, 0, 2, 5000));
    tn_stop_node();
}

static void test_event_queue_order(void)
{
    uint64_t seq0;
    uint32_t next = 1;
    int i;

    CHECK(tn_register("colocated"));
    tn_send_prefill(11, 24);
    CHECK(tn_wait_count(MLASERVE__ENVELOPE__MSG_FINISH, 11, 1, 30000));
    /* FirstToken, then TokenChunks with consecutive indices, then Finish */
    for (i = 0; i < tn.n_ev && tn.ev[i].kind != MLASERVE__ENVELOPE__MSG_FIRST_TOKEN; i++) {
    }
    CHECK(i < tn.n_ev);
    for (i++; i < tn.n_ev; i++) {
        const tn_event *e = &tn.ev[i];
        if (e->kind == MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK) {
            CHECK_EQ_INT(e->index, next);
            next += e->n;
        } else if (e->kind == MLASERVE__ENVELOPE__MSG_FINISH) {
            break;
        }
    }
    CHECK_EQ_INT(next, 24);
    CHECK_EQ_INT(tn_last(MLASERVE__ENVELOPE__MSG_FINISH)->completion_tokens, 24);
    CHECK_EQ_INT(tn_last(MLASERVE__ENVELOPE__MSG_FINISH)->reason,
                 MLASERVE__FINISH_REASON__FINISH_REASON_LENGTH);
    /* and the pages came back */
    seq0 = tn_last(MLASERVE__ENVELOPE__MSG_LOAD_REPORT)
               ? tn_last(MLASERVE__ENVELOPE__MSG_LOAD_REPORT)->seq
               : 0;
    CHECK(tn_wait(tn_pred_pages_back, &seq0, 5000));
    tn_stop_node();
}

static void test_cancel(void)
{
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT;
    Mlaserve__Cancel c = MLASERVE__CANCEL__INIT;
    uint64_t seq0;
    int tokens_at_cancel;

    CHECK(tn_register("colocated"));
    tn_send_prefill(21, 3000);
    CHECK(tn_wait_count(MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK, 21, 2, 30000));
    c.request_id = 21;
    env.msg_case = MLASERVE__ENVELOPE__MSG_CANCEL;
    env.cancel = &c;
    mls_conn_send(tn.conn, &env);
    tokens_at_cancel = tn_count(MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK, 21);
    seq0 = tn_last(MLASERVE__ENVELOPE__MSG_LOAD_REPORT)
               ? tn_last(MLASERVE__ENVELOPE__MSG_LOAD_REPORT)->seq
               : 0;
    CHECK(tn_wait(tn_pred_pages_back, &seq0, 10000));
    CHECK_EQ_INT(tn_count(MLASERVE__ENVELOPE__MSG_FINISH, 21), 0);
    CHECK_MSG(tn_count(MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK, 21) < 3000 - 1,
              "the request ran to its end: %d tokens (%d at cancel)",
              tn_count(MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK, 21), tokens_at_cancel);
    tn_stop_node();
}

static void test_drain_on_sigterm(void)
{
    int status = -1;

    CHECK(tn_register("colocated"));
    tn_send_prefill(31, 1500);
    CHECK(tn_wait_count(MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK, 31, 1, 30000));
    kill(tn.pid, SIGTERM);
    /* the node tells the router to send nothing new, finishes what runs, exits 0 */
    CHECK(tn_wait_count(MLASERVE__ENVELOPE__MSG_DRAIN, 0, 1, 10000));
    CHECK(tn_wait_count(MLASERVE__ENVELOPE__MSG_FINISH, 31, 1, 60000));
    CHECK_EQ_INT(tn_last(MLASERVE__ENVELOPE__MSG_FINISH)->completion_tokens, 1500);
    CHECK(tn_wait(tn_pred_exited, &status, 20000));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    tn.pid = 0;
    tn_stop_node();
}

/* --device cuda where the model cannot run on CUDA (no CUDA build, no device,
 * or the forward pass not on CUDA yet): one clear error, a failed exit, and no
 * registration. */
static void test_device_cuda_refused(void)
{
    char cmd[1024], log[300], text[4096] = "";
    size_t len;
    FILE *f;
    int rc;

    snprintf(log, sizeof(log), "%s.device.log", tn.model);
    snprintf(cmd, sizeof(cmd),
             "%s/mlaserve-decode --model %s --router 127.0.0.1:%d --device cuda 2>%s", MLS_BIN_DIR,
             tn.model, tn.port, log);
    tn.n_registers = 0;
    rc = system(cmd);
    CHECK(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) != 0);
    f = fopen(log, "r");
    CHECK(f != NULL);
    if (f != NULL) {
        len = fread(text, 1, sizeof(text) - 1, f);
        text[len] = '\0';
        fclose(f);
    }
    CHECK_MSG(strstr(text, "CUDA") != NULL || strstr(text, "cuda") != NULL, "stderr: %s", text);
    CHECK_EQ_INT(tn.n_registers, 0);
    unlink(log);
}

int main(void)
{
    char cmd[600];
    mls_err err = {{0}};

    signal(SIGPIPE, SIG_IGN);
    snprintf(tn.model, sizeof(tn.model), "/tmp/mls-test-node-%d", (int)getpid());
    snprintf(cmd, sizeof(cmd),
             "%s/mlaserve genmodel --preset tiny --out %s --force >/dev/null 2>&1", MLS_BIN_DIR,
             tn.model);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot generate the test model: %s\n", cmd);
        return 1;
    }
    uv_loop_init(&tn.loop);
    if (mls_conn_listen(&tn.loop, &tn.server, "127.0.0.1", 0, tn_on_connection, &tn.port, &err) !=
        MLS_OK) {
        fprintf(stderr, "listen: %s\n", err.msg);
        return 1;
    }
    MLS_TEST_RUN(test_registration_and_reports);
    MLS_TEST_RUN(test_reconnect);
    MLS_TEST_RUN(test_event_queue_order);
    MLS_TEST_RUN(test_cancel);
    MLS_TEST_RUN(test_drain_on_sigterm);
    MLS_TEST_RUN(test_device_cuda_refused);
    tn_stop_node();
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tn.model);
    if (system(cmd) != 0) {
        fprintf(stderr, "cannot remove %s\n", tn.model);
    }
    return MLS_TEST_DONE();
}
