/*
 * test_cluster.c - the whole product on loopback: mlaserve cluster up (router
 * + 2 prefill + 2 decode nodes, then 2 colocated nodes) driven through the
 * OpenAI HTTP API with real sockets.
 *
 *  - greedy completions (token-id, text and chat prompts) are token-identical
 *    to `mlaserve generate` on the same model and prompt;
 *  - 32 concurrent streaming requests all complete with the right text, every
 *    SSE chunk valid UTF-8, usage counts right;
 *  - a client that disconnects mid-stream gets its KV pages freed (metrics);
 *  - SIGKILL of a decode node during 8 streams, then of a prefill node during
 *    8 more: every request completes with the right tokens; pages all free;
 *  - malformed HTTP / JSON / parameters, an oversized prompt and garbage
 *    protobuf frames on the node port get clear errors; everything keeps
 *    serving;
 *  - colocated mode gives the same tokens;
 *  - capacity gone (a router and nodes started one by one, --capacity-wait-ms
 *    2000): with no prefill node a request gets 503 after the wait, with the
 *    only decode node killed mid-stream the stream ends with an SSE error
 *    event after the wait - never at the 600 s deadline; /ready is 503 with
 *    the reason until a prefill and a decode node are there, /health 200;
 *  - API keys from a file: /metrics behind the key on the API port, or with
 *    --metrics-listen on its own address; router flags parsed.
 * The model is the project's demo model (`mlaserve genmodel --preset demo`),
 * generated into a temp dir, or MLS_TEST_CLUSTER_MODEL.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

#include "cl_http.h"
#include "mls_buf.h"
#include "mls_num.h"
#include "mls_test.h"
#include "tok.h"

#define N_PROMPTS 4      /* short prompts, GEN_TOKENS each: identity and load */
#define P_LONG_GEN 4     /* a short prompt decoding LONG_GEN tokens: streams to kill a decode node under */
#define P_LONG_PROMPT 5  /* a ~1500-token prompt: prefills to kill a prefill node under */
#define N_ALL 6
#define GEN_TOKENS 24
#define LONG_GEN 400

static char model_dir[512];
static tok_tokenizer *tok;
static char *prompt_ids[N_ALL];     /* "5,17,42" */
static char *expect_text[N_ALL];    /* decoded greedy continuation */
static char *expect_ids[N_ALL];     /* "1,2,3" */
static int gen_tokens[N_ALL];

typedef struct {
    pid_t pid;
    int port;
    int node_port;
    pid_t nodes[8];
    char roles[8][16];
    int n_nodes;
    char state[128];
    char log[128];
} cluster;

static char *run_capture(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    char *out = calloc(1, 1 << 16);
    size_t n;

    if (p == NULL) {
        free(out);
        return NULL;
    }
    n = fread(out, 1, (1 << 16) - 1, p);
    out[n] = '\0';
    if (pclose(p) != 0) {
        free(out);
        return NULL;
    }
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r')) {
        out[--n] = '\0';
    }
    return out;
}

static char *decode_ids(const char *csv)
{
    int32_t ids[4096];
    size_t n = 0;
    char *text = NULL;
    size_t len = 0;
    const char *p = csv;

    while (*p && n < 4096) {
        ids[n++] = (int32_t)strtol(p, (char **)&p, 10);
        if (*p == ',') {
            p++;
        }
    }
    if (tok_decode(tok, ids, n, true, &text, &len, NULL) != MLS_OK) {
        return NULL;
    }
    return text;
}

/* The reference: `mlaserve generate` greedy on the same model and KV dtype. */
static char *generate_ids(const char *ids_csv, int max_tokens, const char *kv)
{
    char cmd[16384];
    snprintf(cmd, sizeof(cmd), "%s/mlaserve generate --model %s --prompt-ids %s --max-tokens %d "
             "--kv-dtype %s --ignore-eos --threads 1 2>/dev/null", MLS_BIN_DIR, model_dir, ids_csv, max_tokens, kv);
    return run_capture(cmd);
}

static int cluster_start(cluster *c, const char *extra)
{
    char cmd[1024];
    FILE *f;
    char *state = NULL;

    static int started;

    memset(c, 0, sizeof(*c));
    started++;
    snprintf(c->state, sizeof(c->state), "/tmp/mls-cluster-test-%d-%d.json", (int)getpid(), started);
    snprintf(c->log, sizeof(c->log), "/tmp/mls-cluster-test-%d-%d.log", (int)getpid(), started);
    unlink(c->state);
    c->pid = fork();
    if (c->pid == 0) {
        snprintf(cmd, sizeof(cmd), "exec %s/mlaserve cluster up --model %s --port 0 --threads 1 "
                 "--kv-pages 256 --state-file %s %s >%s 2>&1", MLS_BIN_DIR, model_dir, c->state, extra, c->log);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 300; i++) {
        if ((f = fopen(c->state, "r")) != NULL) {
            char buf[4096];
            size_t n = fread(buf, 1, sizeof(buf) - 1, f);
            fclose(f);
            buf[n] = '\0';
            if (n > 0 && buf[n - 1] == '\n') {
                state = strdup(buf);
                break;
            }
        }
        if (waitpid(c->pid, NULL, WNOHANG) == c->pid) {
            break;
        }
        usleep(100000);
    }
    if (state == NULL) {
        char tail[600];
        snprintf(tail, sizeof(tail), "tail -20 %s >&2", c->log);
        if (system(tail) != 0) {
            fprintf(stderr, "  (no cluster log)\n");
        }
        return -1;
    }
    {
        cJSON *j = cJSON_Parse(state), *nodes;
        c->port = cJSON_GetObjectItem(j, "http_port")->valueint;
        c->node_port = cJSON_GetObjectItem(j, "node_port")->valueint;
        nodes = cJSON_GetObjectItem(j, "nodes");
        for (int i = 0; i < cJSON_GetArraySize(nodes) && c->n_nodes < 8; i++) {
            cJSON *n = cJSON_GetArrayItem(nodes, i);
            c->nodes[c->n_nodes] = cJSON_GetObjectItem(n, "pid")->valueint;
            snprintf(c->roles[c->n_nodes], 16, "%s", cJSON_GetObjectItem(n, "role")->valuestring);
            c->n_nodes++;
        }
        cJSON_Delete(j);
    }
    free(state);
    return 0;
}

static void cluster_stop(cluster *c)
{
    int status;
    if (c->pid <= 0) {
        return;
    }
    kill(c->pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
            c->pid = 0;
            break;
        }
        usleep(100000);
    }
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        for (int i = 0; i < c->n_nodes; i++) {
            kill(c->nodes[i], SIGKILL);
        }
    }
    unlink(c->state);
    if (mls_test_failed_count > 0) {
        fprintf(stderr, "  cluster log kept: %s\n", c->log);
    } else {
        unlink(c->log);
    }
}

static pid_t cluster_node(const cluster *c, const char *role, int which)
{
    for (int i = 0; i < c->n_nodes; i++) {
        if (strcmp(c->roles[i], role) == 0 && which-- == 0) {
            return c->nodes[i];
        }
    }
    return -1;
}

/* ---- one request ---------------------------------------------------------------- */

typedef struct {
    int port;
    int prompt;              /* index into prompt_ids */
    bool stream;
    int max_tokens;
    /* results */
    int status;
    char *text;
    int completion_tokens;
    int chunks;
    bool utf8_ok;
    bool done_seen;
} call;

static void call_run(call *k)
{
    size_t cap = strlen(prompt_ids[k->prompt]) + 512;
    char *body = malloc(cap);
    cl_response r;

    snprintf(body, cap,
             "{\"prompt\":[%s],\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,\"stream\":%s%s}",
             prompt_ids[k->prompt], k->max_tokens, k->stream ? "true" : "false",
             k->stream ? ",\"stream_options\":{\"include_usage\":true}" : "");
    k->utf8_ok = true;
    /* generous: under TSan, with other tests running beside it, one
     * surviving prefill node takes ~2 minutes for the failover test's prompts */
    if (cl_post(k->port, "/v1/completions", body, 400, &r) != 0) {
        k->status = -1;
        free(body);
        return;
    }
    free(body);
    k->status = r.status;
    if (!k->stream) {
        cJSON *j = cJSON_Parse(r.body);
        cJSON *ch = j ? cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0) : NULL;
        if (ch != NULL) {
            k->text = strdup(cJSON_GetObjectItem(ch, "text")->valuestring);
            k->completion_tokens = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens")->valueint;
        }
        cJSON_Delete(j);
    } else {
        mls_buf text = MLS_BUF_INIT(MLS_ALLOC_TAG_MISC); /* the chunks' text joined */
        char *ev;
        for (size_t i = 0; (ev = cl_sse_event(r.body, i)) != NULL; i++) {
            cJSON *j, *choices, *ch;
            if (strcmp(ev, "[DONE]") == 0) {
                k->done_seen = true;
                free(ev);
                continue;
            }
            j = cJSON_Parse(ev);
            free(ev);
            if (j == NULL) {
                k->utf8_ok = false;
                continue;
            }
            choices = cJSON_GetObjectItem(j, "choices");
            ch = cJSON_GetArrayItem(choices, 0);
            if (ch != NULL) {
                const char *t = cJSON_GetObjectItem(ch, "text")->valuestring;
                size_t n = strlen(t);
                if (!cl_utf8_valid(t, n)) {
                    k->utf8_ok = false;
                }
                if (mls_buf_append(&text, t, n) != MLS_OK) {
                    k->status = -1; /* out of memory: the call counts as failed */
                }
                k->chunks++;
            } else if (cJSON_GetObjectItem(j, "usage") != NULL) {
                k->completion_tokens =
                    cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "completion_tokens")->valueint;
            }
            cJSON_Delete(j);
        }
        k->text = mls_buf_detach(&text, NULL);
    }
    cl_response_free(&r);
}

static void *call_thread(void *arg)
{
    call_run(arg);
    return NULL;
}

static int check_call(const call *k, const char *what)
{
    if (k->status != 200 || k->text == NULL || strcmp(k->text, expect_text[k->prompt]) != 0 ||
        k->completion_tokens != k->max_tokens || !k->utf8_ok || (k->stream && !k->done_seen)) {
        fprintf(stderr, "  %s: prompt %d: status %d, tokens %d/%d, utf8 %d, done %d\n    got  \"%s\"\n    want \"%s\"\n",
                what, k->prompt, k->status, k->completion_tokens, k->max_tokens, k->utf8_ok, k->done_seen,
                k->text ? k->text : "(null)", expect_text[k->prompt]);
        return 0;
    }
    return 1;
}

static int run_parallel(int port, int n, int prompt, bool stream, void (*during)(void *), void *arg,
                        const char *what)
{
    pthread_t th[64];
    call calls[64];
    int ok = 0;

    for (int i = 0; i < n; i++) {
        memset(&calls[i], 0, sizeof(calls[i]));
        calls[i].port = port;
        calls[i].prompt = prompt >= 0 ? prompt : i % N_PROMPTS;
        calls[i].stream = stream;
        calls[i].max_tokens = gen_tokens[calls[i].prompt];
        pthread_create(&th[i], NULL, call_thread, &calls[i]);
    }
    if (during != NULL) {
        during(arg);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        ok += check_call(&calls[i], what);
        free(calls[i].text);
    }
    fprintf(stderr, "  %s: %d/%d requests complete and correct\n", what, ok, n);
    return ok;
}

static double router_metric(int port, const char *name)
{
    cl_response r;
    double v = -1;
    if (cl_get(port, "/metrics", 10, &r) == 0) {
        v = cl_prom_sum(r.body, name);
        cl_response_free(&r);
    }
    return v;
}

/* Pages return to fully free once the load is gone (reports every second). */
static int wait_pages_free(int port)
{
    for (int i = 0; i < 60; i++) {
        if (router_metric(port, "mlaserve:kv_pages_used") == 0) {
            return 1;
        }
        usleep(200000);
    }
    fprintf(stderr, "  kv pages used stays at %.0f\n", router_metric(port, "mlaserve:kv_pages_used"));
    return 0;
}

/* ---- setup ------------------------------------------------------------------------- */

static int setup_model(void)
{
    const char *env = getenv("MLS_TEST_CLUSTER_MODEL");
    char cmd[1024];
    mls_err err = {{0}};

    if (env != NULL) {
        snprintf(model_dir, sizeof(model_dir), "%s", env);
    } else {
        snprintf(model_dir, sizeof(model_dir), "/tmp/mls-cluster-model-%d", (int)getpid());
        snprintf(cmd, sizeof(cmd), "%s/mlaserve genmodel --preset demo --out %s --force >/dev/null 2>&1",
                 MLS_BIN_DIR, model_dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "  cannot generate the demo model: %s\n", cmd);
            return -1;
        }
    }
    if (tok_tokenizer_load(model_dir, &tok, &err) != MLS_OK) {
        fprintf(stderr, "  tokenizer: %s\n", err.msg);
        return -1;
    }
    /* prompts: token ids of a few texts, of growing length */
    {
        static const char *texts[N_ALL] = {
            "Hello",
            "The quick brown fox jumps over the lazy dog.",
            "This program is free software: you can redistribute it and/or modify it under the terms",
            "Licensed under the Apache License, Version 2.0 (the \"License\"); you may not use this file "
            "except in compliance with the License. You may obtain a copy of the License at",
            "Once upon a time",
            NULL};
        for (int i = 0; i < N_ALL; i++) {
            tok_ids ids = {0};
            size_t cap = 65536, len = 0;
            if (tok_add_bos(tok) && tok_bos_id(tok) >= 0) {
                tok_ids_push(&ids, tok_bos_id(tok));
            }
            if (texts[i] != NULL) {
                tok_encode(tok, texts[i], strlen(texts[i]), &ids, NULL);
            } else { /* the long prompt: the other texts over and over */
                for (int rep = 0; ids.n < 1500; rep++) {
                    tok_encode(tok, texts[rep % 4], strlen(texts[rep % 4]), &ids, NULL);
                }
            }
            gen_tokens[i] = i == P_LONG_GEN ? LONG_GEN : GEN_TOKENS;
            prompt_ids[i] = calloc(1, cap);
            for (size_t k = 0; k < ids.n; k++) {
                len += (size_t)snprintf(prompt_ids[i] + len, cap - len, "%s%d", k ? "," : "", ids.ids[k]);
            }
            tok_ids_free(&ids);
            expect_ids[i] = generate_ids(prompt_ids[i], gen_tokens[i], "bf16");
            if (expect_ids[i] == NULL || (expect_text[i] = decode_ids(expect_ids[i])) == NULL) {
                fprintf(stderr, "  mlaserve generate failed for prompt %d\n", i);
                return -1;
            }
        }
    }
    return 0;
}

/* ---- scenarios ---------------------------------------------------------------------- */

static cluster C;

static void test_identical_to_generate(void)
{
    int ok = 0;
    for (int i = 0; i < N_PROMPTS; i++) {
        call k = {.port = C.port, .prompt = i, .stream = i % 2 == 1, .max_tokens = GEN_TOKENS};
        call_run(&k);
        ok += check_call(&k, "identity");
        free(k.text);
    }
    CHECK_EQ_INT(ok, N_PROMPTS);
}

static void test_text_and_chat_prompts(void)
{
    /* a text prompt goes through the router's tokenizer; the reference uses
     * the same ids through `mlaserve generate` */
    static const char *text = "The quick brown fox jumps over the lazy dog.";
    cl_response r;
    cJSON *j;
    char body[1024];
    const char *got;

    snprintf(body, sizeof(body), "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true}", text,
             GEN_TOKENS);
    CHECK(cl_post(C.port, "/v1/completions", body, 60, &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    j = cJSON_Parse(r.body);
    got = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "text")->valuestring;
    CHECK_STR_EQ(got, expect_text[1]);
    cJSON_Delete(j);
    cl_response_free(&r);

    /* chat: the template rendered and tokenized exactly as tok_chat_encode does */
    {
        tok_chat_msg msg = {.role = "user", .content = "Hello!"};
        tok_ids ids = {0};
        size_t len = 0;
        char csv[8192], *ref_ids, *ref_text;
        CHECK_OK(tok_chat_encode(tok, &msg, 1, true, &ids, NULL));
        for (size_t k = 0; k < ids.n; k++) {
            len += (size_t)snprintf(csv + len, sizeof(csv) - len, "%s%d", k ? "," : "", ids.ids[k]);
        }
        tok_ids_free(&ids);
        ref_ids = generate_ids(csv, 16, "bf16");
        CHECK(ref_ids != NULL);
        ref_text = decode_ids(ref_ids);
        CHECK(cl_post(C.port, "/v1/chat/completions",
                      "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}],\"max_tokens\":16,"
                      "\"temperature\":0,\"ignore_eos\":true}", 60, &r) == 0);
        CHECK_EQ_INT(r.status, 200);
        j = cJSON_Parse(r.body);
        got = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
                                                      "message"), "content")->valuestring;
        CHECK_STR_EQ(got, ref_text);
        cJSON_Delete(j);
        cl_response_free(&r);
        free(ref_ids);
        free(ref_text);
    }
}

/* logprobs: the sampled token's logprob is the best of its alternatives under greedy */
static void test_logprobs(void)
{
    cl_response r;
    cJSON *j, *lp, *toks, *lps, *tops;

    CHECK(cl_post(C.port, "/v1/completions",
                  "{\"prompt\":\"Hello\",\"max_tokens\":4,\"temperature\":0,\"ignore_eos\":true,\"logprobs\":3}",
                  30, &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    j = cJSON_Parse(r.body);
    lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0), "logprobs");
    toks = cJSON_GetObjectItem(lp, "tokens");
    lps = cJSON_GetObjectItem(lp, "token_logprobs");
    tops = cJSON_GetObjectItem(lp, "top_logprobs");
    CHECK_EQ_INT(cJSON_GetArraySize(toks), 4);
    CHECK_EQ_INT(cJSON_GetArraySize(tops), 4);
    for (int i = 0; i < 4; i++) {
        cJSON *alt = cJSON_GetArrayItem(tops, i), *e;
        double chosen = cJSON_GetArrayItem(lps, i)->valuedouble, best = -1e30;
        CHECK(cJSON_GetArraySize(alt) >= 1 && cJSON_GetArraySize(alt) <= 3);
        cJSON_ArrayForEach(e, alt)
        {
            best = e->valuedouble > best ? e->valuedouble : best;
        }
        CHECK_MSG(chosen <= 0 && fabs(chosen - best) < 1e-5, "token %d: logprob %g, best alternative %g", i,
                  chosen, best);
    }
    cJSON_Delete(j);
    cl_response_free(&r);
}

static void test_32_concurrent_streams(void)
{
    CHECK_EQ_INT(run_parallel(C.port, 32, -1, true, NULL, NULL, "32 concurrent streams"), 32);
    CHECK(wait_pages_free(C.port));
}

static void test_client_disconnect_frees_pages(void)
{
    char body[8192], buf[4096];
    int fd = cl_connect(C.port);
    int n, len;
    double used = -1;

    snprintf(body, sizeof(body), "{\"prompt\":[%s],\"max_tokens\":3000,\"temperature\":0,\"ignore_eos\":true,"
             "\"stream\":true}", prompt_ids[3]);
    len = snprintf(buf, sizeof(buf), "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    CHECK(fd >= 0);
    CHECK(write(fd, buf, (size_t)len) == len);
    n = (int)read(fd, buf, sizeof(buf)); /* the stream has started */
    CHECK(n > 0);
    for (int i = 0; i < 30 && used <= 0; i++) { /* pages are in use while it runs */
        usleep(100000);
        used = router_metric(C.port, "mlaserve:kv_pages_used");
    }
    CHECK_MSG(used > 0, "pages in use while streaming: %.0f", used);
    close(fd);
    CHECK(wait_pages_free(C.port));
}

static void kill_after(void *arg)
{
    pid_t pid = *(pid_t *)arg;
    usleep(150000);
    kill(pid, SIGKILL);
}

static void test_kill_decode_node(void)
{
    pid_t victim = cluster_node(&C, "decode", 0);
    double retries = router_metric(C.port, "mlaserve:request_retries_total");
    CHECK(victim > 0);
    CHECK_EQ_INT(run_parallel(C.port, 8, P_LONG_GEN, true, kill_after, &victim, "SIGKILL decode"), 8);
    /* the kill landed mid-stream: requests were re-prefilled elsewhere */
    fprintf(stderr, "  retries: %.0f\n", router_metric(C.port, "mlaserve:request_retries_total") - retries);
    CHECK(router_metric(C.port, "mlaserve:request_retries_total") > retries);
    CHECK(wait_pages_free(C.port));
}

static void test_kill_prefill_node(void)
{
    pid_t victim = cluster_node(&C, "prefill", 0);
    double retries = router_metric(C.port, "mlaserve:request_retries_total");
    CHECK(victim > 0);
    CHECK_EQ_INT(run_parallel(C.port, 8, P_LONG_PROMPT, true, kill_after, &victim, "SIGKILL prefill"), 8);
    fprintf(stderr, "  retries: %.0f\n", router_metric(C.port, "mlaserve:request_retries_total") - retries);
    CHECK(router_metric(C.port, "mlaserve:request_retries_total") > retries);
    CHECK(wait_pages_free(C.port));
}

static int error_status(const char *raw, char **body_p)
{
    cl_response r;
    int st;
    if (cl_raw(C.port, raw, strlen(raw), 10, &r) != 0) {
        return -1;
    }
    st = r.status;
    if (body_p != NULL) {
        *body_p = strdup(r.body);
    }
    cl_response_free(&r);
    return st;
}

static void test_bad_input(void)
{
    char *body = NULL, big[300000];
    cl_response r;

    CHECK_EQ_INT(error_status("GARBAGE / HTTP/9\r\n\r\n", NULL), 400);
    CHECK_EQ_INT(error_status("POST /v1/completions HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"prompt\"", &body), 400);
    CHECK(body != NULL && strstr(body, "\"error\"") != NULL);
    free(body);
    CHECK(cl_post(C.port, "/v1/completions", "{\"prompt\":\"hi\",\"temperature\":-3}", 10, &r) == 0);
    CHECK_EQ_INT(r.status, 400);
    CHECK(strstr(r.body, "temperature") != NULL);
    cl_response_free(&r);
    /* a prompt longer than the context */
    {
        size_t n = (size_t)snprintf(big, sizeof(big), "{\"prompt\":[");
        for (int i = 0; i < 20000; i++) {
            n += (size_t)snprintf(big + n, sizeof(big) - n, "%s5", i ? "," : "");
        }
        snprintf(big + n, sizeof(big) - n, "],\"max_tokens\":4}");
        CHECK(cl_post(C.port, "/v1/completions", big, 20, &r) == 0);
        fprintf(stderr, "  oversized prompt -> %d %s\n", r.status, r.body);
        CHECK_EQ_INT(r.status, 400);
        CHECK(strstr(r.body, "context") != NULL);
        /* /v1/models advertises the same context the error names */
        {
            cl_response m;
            char want[96];
            cJSON *j = NULL, *card;
            CHECK(cl_get(C.port, "/v1/models", 10, &m) == 0);
            CHECK_EQ_INT(m.status, 200);
            j = cJSON_Parse(m.body);
            card = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "data"), 0);
            CHECK(cJSON_IsNumber(cJSON_GetObjectItem(card, "max_model_len")));
            snprintf(want, sizeof(want), "this cluster's context is %d tokens",
                     cJSON_GetObjectItem(card, "max_model_len")->valueint);
            CHECK_MSG(strstr(r.body, want) != NULL, "/v1/models: %s", m.body);
            cJSON_Delete(j);
            cl_response_free(&m);
        }
        cl_response_free(&r);
    }
    /* garbage and an oversized frame on the node port: an Error comes back, nothing dies */
    {
        int fd = cl_connect(C.node_port);
        unsigned char junk[] = {0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff};
        char reply[512];
        ssize_t got;
        CHECK(fd >= 0);
        CHECK(write(fd, junk, sizeof(junk)) == (ssize_t)sizeof(junk));
        got = read(fd, reply, sizeof(reply));
        CHECK_MSG(got > 4, "no error frame came back (%zd)", got);
        close(fd);
    }
    /* still serving */
    {
        call k = {.port = C.port, .prompt = 0, .stream = false, .max_tokens = GEN_TOKENS};
        call_run(&k);
        CHECK(check_call(&k, "after bad input"));
        free(k.text);
    }
}

/* ---- daemons started one by one ---------------------------------------------------- */

static pid_t spawn_logged(char *const argv[], const char *log)
{
    pid_t pid = fork();

    if (pid == 0) {
        FILE *f = freopen(log, "a", stdout);
        if (f == NULL || dup2(fileno(stdout), 2) < 0) {
            _exit(126);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* A router on free ports with extra flags; its ports from --port-file (metrics_p may be NULL). */
static pid_t router_start(const char *const *extra, const char *log, int *http_p, int *node_p, int *metrics_p)
{
    char bin[600], tokdir[600], pf[128];
    char *argv[32];
    int n = 0;
    pid_t pid;

    snprintf(bin, sizeof(bin), "%s/mlaserve-router", MLS_BIN_DIR);
    snprintf(tokdir, sizeof(tokdir), "%s", model_dir);
    snprintf(pf, sizeof(pf), "/tmp/mls-cluster-test-%d-router.ports", (int)getpid());
    unlink(pf);
    argv[n++] = bin;
    argv[n++] = "--tokenizer";
    argv[n++] = tokdir;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--node-port";
    argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = pf;
    argv[n++] = "--insecure-no-cluster-key"; /* these tests are about the HTTP side */
    for (size_t i = 0; extra[i] != NULL && n < 31; i++) {
        argv[n++] = (char *)extra[i];
    }
    argv[n] = NULL;
    pid = spawn_logged(argv, log);
    for (int i = 0; i < 300 && pid > 0; i++) {
        FILE *f = fopen(pf, "r");
        int m = 0;
        if (f != NULL) {
            m = fscanf(f, "%d %d %d", http_p, node_p, metrics_p != NULL ? metrics_p : &m);
            fclose(f);
        }
        if (m >= 2) {
            unlink(pf);
            return pid;
        }
        usleep(100000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static pid_t node_start(const char *role, int node_port, const char *log)
{
    char bin[600], router[64], name[32];
    char *argv[] = {bin, "--model", model_dir, "--router", router, "--role", (char *)role, "--node-id", name,
                    "--listen", "127.0.0.1", "--kv-pages", "256", "--threads", "1", NULL};

    snprintf(bin, sizeof(bin), "%s/mlaserve-%s", MLS_BIN_DIR, strcmp(role, "prefill") == 0 ? "prefill" : "decode");
    snprintf(router, sizeof(router), "127.0.0.1:%d", node_port);
    snprintf(name, sizeof(name), "solo-%s", role);
    return spawn_logged(argv, log);
}

static void daemon_stop(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* GET path: the status, and whether the body holds want (NULL: anything). */
static int get_status(int port, const char *path, const char *want, bool *has_p)
{
    cl_response r;
    int st;

    if (cl_get(port, path, 10, &r) != 0) {
        return -1;
    }
    st = r.status;
    if (has_p != NULL) {
        *has_p = want == NULL || strstr(r.body, want) != NULL;
    }
    cl_response_free(&r);
    return st;
}

/* Poll /ready until its status is want_status and its body holds want (60 s at most). */
static int wait_ready(int port, int want_status, const char *want)
{
    for (int i = 0; i < 600; i++) {
        bool has = false;
        if (get_status(port, "/ready", want, &has) == want_status && has) {
            return 1;
        }
        usleep(100000);
    }
    return 0;
}

static void test_capacity_gone_fails_fast_and_ready(void)
{
    static const char *const extra[] = {"--capacity-wait-ms", "2000", NULL};
    char log[128], body[8192], raw[9000], buf[65536];
    int http = 0, node = 0, fd, len;
    pid_t router, dec, pre;
    size_t got = 0;
    double t0, waited;
    cl_response r;
    bool has = false;

    snprintf(log, sizeof(log), "/tmp/mls-cluster-test-%d-solo.log", (int)getpid());
    unlink(log);
    router = router_start(extra, log, &http, &node, NULL);
    CHECK(router > 0);
    /* no node: not ready, but alive */
    CHECK_EQ_INT(get_status(http, "/health", NULL, NULL), 200);
    CHECK_EQ_INT(get_status(http, "/ready", "no prefill and no decode node", &has), 503);
    CHECK(has);
    /* a decode node alone: still not ready; a request fails after the wait, not at the deadline */
    dec = node_start("decode", node, log);
    CHECK(wait_ready(http, 503, "\"no prefill node\""));
    CHECK_EQ_INT(get_status(http, "/health", NULL, NULL), 200);
    t0 = (double)mls_now_ns() * 1e-9;
    CHECK(cl_post(http, "/v1/completions", "{\"prompt\":\"Hello\",\"max_tokens\":4}", 60, &r) == 0);
    waited = (double)mls_now_ns() * 1e-9 - t0;
    fprintf(stderr, "  no prefill node: %d after %.2f s: %s\n", r.status, waited, r.body);
    CHECK_EQ_INT(r.status, 503);
    CHECK(strstr(r.body, "no prefill node") != NULL);
    CHECK(waited >= 1.9 && waited < 15.0);
    cl_response_free(&r);
    /* both: ready; the only decode node killed mid-stream -> an SSE error event after the wait */
    pre = node_start("prefill", node, log);
    CHECK(wait_ready(http, 200, NULL));
    snprintf(body, sizeof(body), "{\"prompt\":[%s],\"max_tokens\":3000,\"temperature\":0,\"ignore_eos\":true,"
             "\"stream\":true}", prompt_ids[3]);
    len = snprintf(raw, sizeof(raw), "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    fd = cl_connect(http);
    CHECK(fd >= 0);
    {
        struct timeval tv = {.tv_sec = 60};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    CHECK(write(fd, raw, (size_t)len) == len);
    while (got < sizeof(buf) - 1 && strstr(buf, "data: ") == NULL) { /* the stream has started */
        ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
        buf[got] = '\0';
    }
    CHECK(strstr(buf, "data: ") != NULL);
    kill(dec, SIGKILL);
    waitpid(dec, NULL, 0);
    t0 = (double)mls_now_ns() * 1e-9;
    got = 0; /* keep the tail: the error event is last */
    for (;;) {
        ssize_t n;
        if (got > sizeof(buf) / 2) {
            memmove(buf, buf + got - 4096, 4096);
            got = 4096;
        }
        n = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "0\r\n\r\n") != NULL && strstr(buf, "[DONE]") != NULL) {
            break;
        }
    }
    waited = (double)mls_now_ns() * 1e-9 - t0;
    close(fd);
    fprintf(stderr, "  decode node killed mid-stream: the stream ended %.2f s later\n", waited);
    CHECK_MSG(strstr(buf, "no capacity to serve the request: no decode node") != NULL, "stream tail: %s",
              got > 600 ? buf + got - 600 : buf);
    CHECK(waited >= 1.5 && waited < 20.0);
    CHECK(wait_ready(http, 503, "\"no decode node\""));
    CHECK_EQ_INT(get_status(http, "/health", NULL, NULL), 200);
    daemon_stop(pre);
    daemon_stop(router);
    if (mls_test_failed_count > 0) {
        fprintf(stderr, "  log kept: %s\n", log);
    } else {
        unlink(log);
    }
}

static void test_api_key_file_and_metrics_listen(void)
{
    char keyfile[128], log[128], cmd[1024], req[512];
    const char *extra[] = {"--api-key-file", keyfile, "--metrics-listen", "127.0.0.1:0", "--http-max-per-addr", "16",
                           "--http-first-byte-ms", "2000", NULL};
    const char *key_only[] = {"--api-key-file", keyfile, NULL};
    int http = 0, node = 0, metrics = 0;
    pid_t router;
    cl_response r;
    FILE *f;
    bool has = false;

    snprintf(keyfile, sizeof(keyfile), "/tmp/mls-cluster-test-%d.keys", (int)getpid());
    snprintf(log, sizeof(log), "/tmp/mls-cluster-test-%d-keys.log", (int)getpid());
    f = fopen(keyfile, "w");
    CHECK(f != NULL);
    fprintf(f, "# keys\n\n  sk-from-file  \n");
    fclose(f);
    router = router_start(extra, log, &http, &node, &metrics);
    CHECK(router > 0 && metrics > 0);
    /* the key file's key, not visible in ps */
    CHECK_EQ_INT(get_status(http, "/v1/models", NULL, NULL), 401);
    CHECK_EQ_INT(get_status(http, "/metrics", NULL, NULL), 401);
    snprintf(req, sizeof(req), "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-from-file\r\n"
             "Connection: close\r\n\r\n");
    CHECK(cl_raw(http, req, strlen(req), 10, &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    cl_response_free(&r);
    /* /metrics lives on its own address: there without a key, not on the API port even with it */
    snprintf(req, sizeof(req), "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-from-file\r\n"
             "Connection: close\r\n\r\n");
    CHECK(cl_raw(http, req, strlen(req), 10, &r) == 0);
    CHECK_EQ_INT(r.status, 404);
    cl_response_free(&r);
    CHECK_EQ_INT(get_status(metrics, "/metrics", "mlaserve:nodes", &has), 200);
    CHECK(has);
    CHECK_EQ_INT(get_status(metrics, "/v1/models", NULL, NULL), 404);
    CHECK_EQ_INT(get_status(metrics, "/health", NULL, NULL), 200);
    daemon_stop(router);
    /* without --metrics-listen: /metrics on the API port, behind the key */
    router = router_start(key_only, log, &http, &node, NULL);
    CHECK(router > 0);
    CHECK_EQ_INT(get_status(http, "/metrics", NULL, NULL), 401);
    snprintf(req, sizeof(req), "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-from-file\r\n"
             "Connection: close\r\n\r\n");
    CHECK(cl_raw(http, req, strlen(req), 10, &r) == 0);
    CHECK_EQ_INT(r.status, 200);
    CHECK(strstr(r.body, "mlaserve:nodes") != NULL);
    cl_response_free(&r);
    daemon_stop(router);
    /* flags: --help names them, a bad value exits 2 with the flag named */
    snprintf(cmd, sizeof(cmd), "%s/mlaserve-router --help | grep -c -e --http-max-per-addr -e --http-first-byte-ms "
             "-e --api-key-file -e --metrics-listen -e --capacity-wait-ms -e 'visible to'", MLS_BIN_DIR);
    {
        char *out = run_capture(cmd);
        CHECK(out != NULL && atoi(out) >= 6);
        free(out);
    }
    snprintf(cmd, sizeof(cmd), "%s/mlaserve-router --tokenizer %s --http-max-per-addr lots 2>&1", MLS_BIN_DIR,
             model_dir);
    {
        FILE *p = popen(cmd, "r");
        char out[512] = "";
        size_t n = p != NULL ? fread(out, 1, sizeof(out) - 1, p) : 0;
        int st = p != NULL ? pclose(p) : -1;
        out[n] = '\0';
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 2 && strstr(out, "--http-max-per-addr") != NULL,
                  "exit %d: %s", st, out);
    }
    unlink(keyfile);
    if (mls_test_failed_count > 0) {
        fprintf(stderr, "  log kept: %s\n", log);
    } else {
        unlink(log);
    }
}

static void term_after(void *arg)
{
    pid_t pid = *(pid_t *)arg;
    usleep(150000);
    kill(pid, SIGTERM);
}

/* Colocated nodes give the same tokens; a node told to stop (SIGTERM) drains:
 * its running streams finish there - none is failed over - and it exits. */
static void test_colocated_same_tokens_and_drain(void)
{
    cluster co;
    pid_t victim;
    double retries;

    CHECK(cluster_start(&co, "--colocated --decode 2") == 0);
    CHECK_EQ_INT(run_parallel(co.port, 8, -1, true, NULL, NULL, "colocated"), 8);
    CHECK(wait_pages_free(co.port));
    victim = cluster_node(&co, "colocated", 0);
    retries = router_metric(co.port, "mlaserve:request_retries_total");
    CHECK_EQ_INT(run_parallel(co.port, 8, P_LONG_GEN, true, term_after, &victim, "SIGTERM (drain)"), 8);
    CHECK_LE_DBL(router_metric(co.port, "mlaserve:request_retries_total"), retries);
    for (int i = 0; i < 100 && kill(victim, 0) == 0; i++) {
        usleep(100000); /* the drained node exits on its own */
    }
    CHECK_MSG(kill(victim, 0) != 0, "the drained node is still running");
    cluster_stop(&co);
}

int main(void)
{
    char cmd[600];

    signal(SIGPIPE, SIG_IGN);
    if (setup_model() != 0) {
        fprintf(stderr, "setup failed\n");
        return 1;
    }
    if (cluster_start(&C, "--prefill 2 --decode 2") != 0) {
        fprintf(stderr, "cluster did not start\n");
        return 1;
    }
    MLS_TEST_RUN(test_identical_to_generate);
    MLS_TEST_RUN(test_text_and_chat_prompts);
    MLS_TEST_RUN(test_logprobs);
    MLS_TEST_RUN(test_32_concurrent_streams);
    MLS_TEST_RUN(test_client_disconnect_frees_pages);
    MLS_TEST_RUN(test_bad_input);
    MLS_TEST_RUN(test_kill_decode_node);
    MLS_TEST_RUN(test_kill_prefill_node);
    cluster_stop(&C);
    MLS_TEST_RUN(test_capacity_gone_fails_fast_and_ready);
    MLS_TEST_RUN(test_api_key_file_and_metrics_listen);
    MLS_TEST_RUN(test_colocated_same_tokens_and_drain);
    if (getenv("MLS_TEST_CLUSTER_MODEL") == NULL) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", model_dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "could not remove %s\n", model_dir);
        }
    }
    tok_tokenizer_destroy(tok);
    return MLS_TEST_DONE();
}
