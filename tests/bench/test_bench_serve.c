/*
 * test_bench_serve.c - `mlaserve bench serve`, the serving benchmark.
 *
 *  - statistics: percentiles equal numpy's linear interpolation, empty
 *    distributions are all 0 (never NaN), population std;
 *  - arrivals: gamma gaps have mean 1/rate and squared coefficient of
 *    variation 1/burstiness; rate inf sends everything at t = 0; seeded;
 *  - datasets: random token-id prompts within the length range and the vocab,
 *    chat prompts as messages, every body asks for streaming, usage and
 *    ignore_eos; jsonl lines with prompt / ids / messages, and bad lines named
 *    by file:line;
 *  - against a real local cluster (`mlaserve cluster up --port 0` on a demo
 *    model generated here): a two-rate sweep on /v1/completions and a chat run
 *    produce complete JSON (every vLLM field, numbers where numbers belong, no
 *    NaN), per-request token counts equal each request's max_tokens
 *    (ignore_eos; usage), input counts equal the token ids sent, and a PNG;
 *  - against failing endpoints (a closed port, a server answering 500, a
 *    server cutting the stream before [DONE]): every request is counted as
 *    failed with its error, none is dropped.
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_serve.h"
#include "mls_test.h"

static char tmp_dir[128];

/* ---- helpers ---------------------------------------------------------------------- */

static char *read_file(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n + 1);
    if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return NULL;
    }
    buf[n] = '\0';
    fclose(f);
    if (len_p != NULL) {
        *len_p = (size_t)n;
    }
    return buf;
}

/* Run a shell command; its exit status (or -1). */
static int run(const char *cmd)
{
    int st = system(cmd);
    return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

static cJSON *load_json(const char *path)
{
    char *text = read_file(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    return j;
}

/* ---- statistics -------------------------------------------------------------------- */

static void test_percentiles(void)
{
    double v[4] = {4, 1, 3, 2}, one = 7;
    bs_metric_cfg mc = {{90, 99}, 2, -1, -1, -1};
    bs_dist d;

    bs_dist_compute(v, 4, &mc, &d); /* seconds in, ms out */
    /* numpy: median 2.5, percentile 90 -> 3.7, 99 -> 3.97, std (ddof 0) sqrt(1.25) */
    CHECK_LE_DBL(fabs(d.median - 2500), 1e-9);
    CHECK_LE_DBL(fabs(d.p[0] - 3700), 1e-9);
    CHECK_LE_DBL(fabs(d.p[1] - 3970), 1e-9);
    CHECK_LE_DBL(fabs(d.mean - 2500), 1e-9);
    CHECK_LE_DBL(fabs(d.std - sqrt(1.25) * 1e3), 1e-9);
    CHECK_EQ_INT(d.n, 4);
    bs_dist_compute(&one, 1, &mc, &d);
    CHECK_LE_DBL(fabs(d.p[1] - 7000), 1e-9);
    CHECK_LE_DBL(fabs(d.std), 0);
    bs_dist_compute(NULL, 0, &mc, &d);
    CHECK(d.mean == 0 && d.median == 0 && d.std == 0 && d.p[0] == 0 && d.p[1] == 0);
    CHECK(bs_percentile(NULL, 0, 50) == 0);
}

/* A run with no completed request: every metric defined, goodput null only without SLOs. */
static void test_metrics_all_failed(void)
{
    bs_outcome out[3] = {{0}};
    bs_run run = {out, 3, 0.5, 3};
    bs_metric_cfg mc = {{99}, 1, 1000, -1, -1};
    bs_metrics m;
    bs_run_info info = {"openai", "/v1/completions", "http://x", "m", "random", 3, INFINITY, 1, 0, 8, 4, 0, 0, NULL};
    cJSON *j;
    char *text;

    for (int i = 0; i < 3; i++) {
        snprintf(out[i].error, sizeof(out[i].error), "HTTP 500: boom");
        out[i].prompt_tokens = out[i].output_tokens = -1;
        out[i].prompt_len = 8;
    }
    CHECK_OK(bs_metrics_compute(&run, &mc, &m));
    CHECK_EQ_INT(m.completed, 0);
    CHECK_EQ_INT(m.failed, 3);
    CHECK(m.has_goodput && m.request_goodput == 0 && m.ttft.mean == 0 && m.tpot.p[0] == 0);
    j = bs_result_json(&info, &run, &m, &mc);
    CHECK(j != NULL);
    text = cJSON_PrintUnformatted(j);
    CHECK(strstr(text, "nan") == NULL && strstr(text, "null,\"model_id\"") != NULL); /* label null */
    CHECK(cJSON_IsString(cJSON_GetObjectItem(j, "request_rate")));
    CHECK_STR_EQ(cJSON_GetObjectItem(j, "request_rate")->valuestring, "inf");
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "max_concurrency")));
    CHECK_EQ_INT(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "input_lens"), 0)->valueint, 8);
    CHECK_EQ_INT(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "output_lens"), 0)->valueint, 0);
    free(text);
    cJSON_Delete(j);
    mc.slo_ttft_ms = -1;
    CHECK_OK(bs_metrics_compute(&run, &mc, &m));
    j = bs_result_json(&info, &run, &m, &mc);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "request_goodput")));
    cJSON_Delete(j);
}

/* TPOT = (E2EL - TTFT) / (out - 1); goodput counts the requests inside every SLO. */
static void test_metrics_goodput(void)
{
    bs_outcome out[3] = {{0}};
    bs_run run = {out, 3, 2.0, 3};
    bs_metric_cfg mc = {{50}, 1, 100, 20, -1};
    bs_metrics m;
    double itl0[2] = {0.01, 0.03};

    /* ttft 50 ms, 5 tokens in 130 ms: tpot 20 ms -> good */
    out[0] = (bs_outcome){.success = true, .ttft = 0.05, .latency = 0.13, .prompt_tokens = 10, .output_tokens = 5,
                          .itl = itl0, .n_itl = 2};
    /* ttft 150 ms -> misses the TTFT SLO */
    out[1] = (bs_outcome){.success = true, .ttft = 0.15, .latency = 0.2, .prompt_tokens = 10, .output_tokens = 1};
    /* one token: tpot 0 for goodput, ttft fine -> good */
    out[2] = (bs_outcome){.success = true, .ttft = 0.02, .latency = 0.02, .prompt_tokens = 6, .output_tokens = 1};
    CHECK_OK(bs_metrics_compute(&run, &mc, &m));
    CHECK_EQ_INT(m.good, 2);
    CHECK_EQ_INT(m.total_input, 26);
    CHECK_EQ_INT(m.total_output, 7);
    CHECK_LE_DBL(fabs(m.request_goodput - 1.0), 1e-12);
    CHECK_LE_DBL(fabs(m.output_throughput - 3.5), 1e-12);
    CHECK_EQ_INT(m.tpot.n, 1); /* only requests with > 1 token have a TPOT */
    CHECK_LE_DBL(fabs(m.tpot.mean - 20), 1e-9);
    CHECK_EQ_INT(m.itl.n, 2);
    CHECK_LE_DBL(fabs(m.itl.mean - 20), 1e-9);
}

/* ---- arrivals and datasets ---------------------------------------------------------- */

static void test_arrivals(void)
{
    enum { N = 40000 };
    double *t = malloc(N * sizeof(double)), *t2 = malloc(N * sizeof(double));
    const double bursts[3] = {1.0, 0.25, 4.0};

    for (int b = 0; b < 3; b++) {
        double mean = 0, var = 0, rate = 8;
        bs_arrivals(rate, bursts[b], 42, N, t);
        CHECK(t[0] == 0);
        for (int i = 1; i < N; i++) {
            mean += t[i] - t[i - 1];
        }
        mean /= N - 1;
        for (int i = 1; i < N; i++) {
            double g = t[i] - t[i - 1] - mean;
            var += g * g;
        }
        var /= N - 2;
        /* mean 1/rate; CV^2 = 1/shape */
        CHECK_LE_DBL(fabs(mean * rate - 1), 0.03);
        CHECK_LE_DBL(fabs(var / (mean * mean) * bursts[b] - 1), 0.06);
    }
    bs_arrivals(8, 1, 42, N, t2);
    bs_arrivals(8, 1, 42, N, t);
    CHECK(memcmp(t, t2, N * sizeof(double)) == 0); /* seeded */
    bs_arrivals(INFINITY, 1, 1, 16, t);
    for (int i = 0; i < 16; i++) {
        CHECK(t[i] == 0);
    }
    free(t);
    free(t2);
}

static void test_dataset_random(void)
{
    bs_data_cfg cfg = {BS_EP_COMPLETIONS, NULL, "m", 50, 100, 20, 0.5, 300, 7, 0, true};
    bs_dataset ds;
    mls_err err = {{0}};

    CHECK_OK(bs_dataset_build(&cfg, &ds, &err));
    CHECK_EQ_INT(ds.n, 50);
    for (int i = 0; i < ds.n; i++) {
        cJSON *j = cJSON_Parse(ds.v[i].body), *p = cJSON_GetObjectItem(j, "prompt"), *id;
        CHECK(j != NULL && cJSON_IsArray(p));
        CHECK_EQ_INT(cJSON_GetArraySize(p), ds.v[i].prompt_len);
        CHECK(ds.v[i].prompt_len >= 50 && ds.v[i].prompt_len <= 150);
        CHECK(ds.v[i].output_len >= 10 && ds.v[i].output_len <= 30);
        cJSON_ArrayForEach(id, p) {
            CHECK(id->valueint >= 0 && id->valueint < 300);
        }
        CHECK_EQ_INT(cJSON_GetObjectItem(j, "max_tokens")->valueint, ds.v[i].output_len);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "stream")));
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "stream_options"), "include_usage")));
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(j, "ignore_eos")));
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "model")->valuestring, "m");
        cJSON_Delete(j);
    }
    bs_dataset_free(&ds);

    cfg.kind = BS_EP_CHAT;
    cfg.range_ratio = 0;
    CHECK_OK(bs_dataset_build(&cfg, &ds, &err));
    {
        cJSON *j = cJSON_Parse(ds.v[3].body), *m = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "messages"), 0);
        const char *text = cJSON_GetObjectItem(m, "content")->valuestring;
        int words = 1;
        for (const char *s = text; *s; s++) {
            words += *s == ' ';
        }
        CHECK_STR_EQ(cJSON_GetObjectItem(m, "role")->valuestring, "user");
        CHECK_EQ_INT(words, 100);
        CHECK_EQ_INT(ds.v[3].prompt_len, -1);
        CHECK_EQ_INT(ds.v[3].output_len, 20);
        cJSON_Delete(j);
    }
    bs_dataset_free(&ds);
    cfg.range_ratio = 1.0;
    CHECK_STATUS(bs_dataset_build(&cfg, &ds, &err), MLS_ERR_INVALID_ARG);
}

static void test_dataset_jsonl(void)
{
    char path[256];
    FILE *f;
    bs_data_cfg cfg = {BS_EP_COMPLETIONS, path, NULL, 5, 0, 16, 0, 1000, 0, 0, true};
    bs_dataset ds;
    mls_err err = {{0}};
    cJSON *j;

    snprintf(path, sizeof(path), "%s/d.jsonl", tmp_dir);
    f = fopen(path, "w");
    fprintf(f, "{\"prompt\": \"hello world\"}\n\n{\"prompt\": [1, 2, 3], \"output_len\": 4}\n");
    fclose(f);
    CHECK_OK(bs_dataset_build(&cfg, &ds, &err));
    CHECK_EQ_INT(ds.n, 5);
    CHECK_EQ_INT(ds.v[0].prompt_len, -1);
    CHECK_EQ_INT(ds.v[0].output_len, 16);
    CHECK_EQ_INT(ds.v[1].prompt_len, 3);
    CHECK_EQ_INT(ds.v[1].output_len, 4);
    CHECK_STR_EQ(ds.v[2].body, ds.v[0].body); /* reused from the top */
    j = cJSON_Parse(ds.v[0].body);
    CHECK(j != NULL && cJSON_GetObjectItem(j, "model") == NULL); /* no model known: left out */
    CHECK_STR_EQ(cJSON_GetObjectItem(j, "prompt")->valuestring, "hello world");
    cJSON_Delete(j);
    bs_dataset_free(&ds);

    /* chat: a prompt becomes a user message; messages are used verbatim */
    f = fopen(path, "w");
    fprintf(f, "{\"prompt\": \"hi\"}\n{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, "
               "{\"role\": \"user\", \"content\": \"u\"}]}\n");
    fclose(f);
    cfg.kind = BS_EP_CHAT;
    CHECK_OK(bs_dataset_build(&cfg, &ds, &err));
    j = cJSON_Parse(ds.v[1].body);
    CHECK_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(j, "messages")), 2);
    cJSON_Delete(j);
    j = cJSON_Parse(ds.v[0].body);
    CHECK_STR_EQ(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "messages"), 0), "content")->valuestring,
                 "hi");
    cJSON_Delete(j);
    bs_dataset_free(&ds);

    /* messages on /v1/completions, and a broken line: named by file:line */
    cfg.kind = BS_EP_COMPLETIONS;
    CHECK_STATUS(bs_dataset_build(&cfg, &ds, &err), MLS_ERR_PARSE);
    CHECK(strstr(err.msg, "d.jsonl:2") != NULL);
    f = fopen(path, "w");
    fprintf(f, "{\"prompt\": \"ok\"}\n{\"prompt\": oops}\n");
    fclose(f);
    CHECK_STATUS(bs_dataset_build(&cfg, &ds, &err), MLS_ERR_PARSE);
    CHECK_MSG(strstr(err.msg, "d.jsonl:2: not a JSON object") != NULL, "err: %s", err.msg);
}

/* ---- against a real cluster --------------------------------------------------------- */

/* Every field a vLLM result has (plus ours), the right type, no NaN / inf anywhere. */
static const char *const num_fields[] = {
    "num_prompts", "burstiness", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "output_throughput", "total_token_throughput", "max_concurrent_requests",
    "mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p90_ttft_ms", "p99_ttft_ms",
    "mean_tpot_ms", "median_tpot_ms", "std_tpot_ms", "p90_tpot_ms", "p99_tpot_ms",
    "mean_itl_ms", "median_itl_ms", "std_itl_ms", "p90_itl_ms", "p99_itl_ms",
    "mean_e2el_ms", "median_e2el_ms", "std_e2el_ms", "p90_e2el_ms", "p99_e2el_ms"};
static const char *const str_fields[] = {"date", "backend", "endpoint", "model_id", "tokenizer_id", "dataset_name"};
static const char *const arr_fields[] = {"input_lens", "output_lens", "ttfts", "itls", "e2els",
                                         "generated_texts", "errors"};

/* want_out: each request's output length (the dataset's max_tokens); NULL: output_len each */
static int check_result(const cJSON *r, int num_prompts, int output_len, const int *want_out, bool want_goodput)
{
    int want_total = 0;

    int n = (int)(sizeof(num_fields) / sizeof(num_fields[0]));

    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetObjectItem(r, num_fields[i]);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0) {
            fprintf(stderr, "  field %s: missing, not a number or negative\n", num_fields[i]);
            return -1;
        }
    }
    for (size_t i = 0; i < sizeof(str_fields) / sizeof(str_fields[0]); i++) {
        if (!cJSON_IsString(cJSON_GetObjectItem(r, str_fields[i]))) {
            fprintf(stderr, "  field %s: missing or not a string\n", str_fields[i]);
            return -1;
        }
    }
    for (size_t i = 0; i < sizeof(arr_fields) / sizeof(arr_fields[0]); i++) {
        const cJSON *a = cJSON_GetObjectItem(r, arr_fields[i]);
        if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != num_prompts) {
            fprintf(stderr, "  field %s: missing or not %d long\n", arr_fields[i], num_prompts);
            return -1;
        }
    }
    if (want_goodput != cJSON_IsNumber(cJSON_GetObjectItem(r, "request_goodput"))) {
        fprintf(stderr, "  request_goodput: %s\n", want_goodput ? "not a number" : "not null");
        return -1;
    }
    if (cJSON_GetObjectItem(r, "request_rate") == NULL || cJSON_GetObjectItem(r, "max_concurrency") == NULL) {
        fprintf(stderr, "  request_rate / max_concurrency missing\n");
        return -1;
    }
    if (cJSON_GetObjectItem(r, "completed")->valueint != num_prompts ||
        cJSON_GetObjectItem(r, "failed")->valueint != 0) {
        fprintf(stderr, "  completed %d failed %d, want %d / 0; first error: %s\n",
                cJSON_GetObjectItem(r, "completed")->valueint, cJSON_GetObjectItem(r, "failed")->valueint,
                num_prompts, cJSON_GetArrayItem(cJSON_GetObjectItem(r, "errors"), 0)->valuestring);
        return -1;
    }
    /* ignore_eos pins the length; counts come from the server's usage */
    for (int i = 0; i < num_prompts; i++) {
        want_total += want_out ? want_out[i] : output_len;
    }
    if (cJSON_GetObjectItem(r, "total_output_tokens")->valueint != want_total) {
        fprintf(stderr, "  total_output_tokens %d, want %d\n", cJSON_GetObjectItem(r, "total_output_tokens")->valueint,
                want_total);
        return -1;
    }
    for (int i = 0; i < num_prompts; i++) {
        const cJSON *ol = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "output_lens"), i);
        const cJSON *tt = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "ttfts"), i);
        const cJSON *e2 = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "e2els"), i);
        if (ol->valueint != (want_out ? want_out[i] : output_len) || !(tt->valuedouble > 0) || !(e2->valuedouble >= tt->valuedouble)) {
            fprintf(stderr, "  request %d: output_len %d ttft %g e2el %g\n", i, ol->valueint, tt->valuedouble,
                    e2->valuedouble);
            return -1;
        }
    }
    if (!(cJSON_GetObjectItem(r, "mean_ttft_ms")->valuedouble > 0) ||
        !(cJSON_GetObjectItem(r, "mean_e2el_ms")->valuedouble >= cJSON_GetObjectItem(r, "mean_ttft_ms")->valuedouble) ||
        !(cJSON_GetObjectItem(r, "request_throughput")->valuedouble > 0)) {
        fprintf(stderr, "  latencies / throughput not positive\n");
        return -1;
    }
    return 0;
}

static int check_png(const char *path)
{
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    size_t len = 0;
    char *data = read_file(path, &len);
    int ok = data != NULL && len > 20000 && memcmp(data, sig, 8) == 0;

    if (!ok) {
        fprintf(stderr, "  %s: %s (%zu bytes)\n", path, data ? "not a PNG or too small" : "missing", len);
    }
    free(data);
    return ok ? 0 : -1;
}

typedef struct {
    pid_t pid;
    int port;
    char state[256];
    char log[256];
} cluster;

static int cluster_start(cluster *c, const char *model)
{
    char cmd[1024];

    snprintf(c->state, sizeof(c->state), "%s/state.json", tmp_dir);
    snprintf(c->log, sizeof(c->log), "%s/cluster.log", tmp_dir);
    c->pid = fork();
    if (c->pid == 0) {
        snprintf(cmd, sizeof(cmd), "exec %s/mlaserve cluster up --model %s --port 0 --threads 1 --kv-pages 256 "
                 "--state-file %s >%s 2>&1", MLS_BIN_DIR, model, c->state, c->log);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 300; i++) { /* 30 s */
        char *s = read_file(c->state, NULL);
        if (s != NULL && strlen(s) > 0 && s[strlen(s) - 1] == '\n') {
            cJSON *j = cJSON_Parse(s);
            c->port = j ? cJSON_GetObjectItem(j, "http_port")->valueint : 0;
            cJSON_Delete(j);
            free(s);
            return c->port > 0 ? 0 : -1;
        }
        free(s);
        if (waitpid(c->pid, NULL, WNOHANG) == c->pid) {
            c->pid = 0;
            break;
        }
        usleep(100000);
    }
    snprintf(cmd, sizeof(cmd), "tail -20 %s >&2", c->log);
    (void)run(cmd);
    return -1;
}

static void cluster_stop(cluster *c)
{
    if (c->pid <= 0) {
        return;
    }
    kill(c->pid, SIGTERM);
    for (int i = 0; i < 100 && waitpid(c->pid, NULL, WNOHANG) != c->pid; i++) {
        usleep(100000);
    }
    c->pid = 0;
}

static cluster C;

static void test_cluster_sweep_completions(void)
{
    char cmd[2048], json[256], png[256];
    /* the prompts bench serve sends: same generator, same options, same seed */
    bs_data_cfg cfg = {BS_EP_COMPLETIONS, NULL, "x", 16, 48, 8, 0.5, 4000, 3, 0, true};
    int want_in[16], want_out[16];
    bs_dataset ds;
    mls_err err = {{0}};
    cJSON *doc;

    if (C.port <= 0) {
        CHECK_MSG(0, "the cluster did not start");
    }
    CHECK_OK(bs_dataset_build(&cfg, &ds, &err));
    for (int i = 0; i < 16; i++) {
        want_in[i] = ds.v[i].prompt_len;
        want_out[i] = ds.v[i].output_len;
    }
    bs_dataset_free(&ds);
    snprintf(json, sizeof(json), "%s/sweep.json", tmp_dir);
    snprintf(png, sizeof(png), "%s/sweep.png", tmp_dir);
    snprintf(cmd, sizeof(cmd), "%s/mlaserve bench serve --url http://127.0.0.1:%d --num-prompts 16 "
             "--sweep-rates 20,inf --burstiness 0.5 --input-len 48 --range-ratio 0.5 --output-len 8 --vocab-size 4000 "
             "--goodput ttft:60000 tpot:60000 --seed 3 --no-progress --result-json %s --plot %s >%s/sweep.out 2>&1",
             MLS_BIN_DIR, C.port, json, png, tmp_dir);
    CHECK_EQ_INT(run(cmd), 0);
    doc = load_json(json);
    CHECK_MSG(doc != NULL && cJSON_IsArray(doc) && cJSON_GetArraySize(doc) == 2, "%s: not a list of 2", json);
    for (int k = 0; k < 2; k++) {
        const cJSON *r = cJSON_GetArrayItem(doc, k);
        long long in_sum = 0;
        CHECK_EQ_INT(check_result(r, 16, 8, want_out, true), 0);
        /* token-id prompts: the server counted exactly what was sent */
        for (int i = 0; i < 16; i++) {
            int in = cJSON_GetArrayItem(cJSON_GetObjectItem(r, "input_lens"), i)->valueint;
            CHECK_EQ_INT(in, want_in[i]);
            CHECK(want_out[i] >= 4 && want_out[i] <= 12 && in >= 24 && in <= 72);
            in_sum += in;
        }
        CHECK_EQ_INT(in_sum, cJSON_GetObjectItem(r, "total_input_tokens")->valuedouble);
        CHECK_STR_EQ(cJSON_GetObjectItem(r, "backend")->valuestring, "openai");
    }
    CHECK(cJSON_GetObjectItem(cJSON_GetArrayItem(doc, 0), "request_rate")->valuedouble == 20);
    CHECK_STR_EQ(cJSON_GetObjectItem(cJSON_GetArrayItem(doc, 1), "request_rate")->valuestring, "inf");
    /* the same seed gives the same prompts at every rate */
    CHECK(cJSON_Compare(cJSON_GetObjectItem(cJSON_GetArrayItem(doc, 0), "input_lens"),
                        cJSON_GetObjectItem(cJSON_GetArrayItem(doc, 1), "input_lens"), 1));
    cJSON_Delete(doc);
    CHECK_EQ_INT(check_png(png), 0);
}

static void test_cluster_chat(void)
{
    char cmd[2048], json[256];
    cJSON *r;

    if (C.port <= 0) {
        CHECK_MSG(0, "the cluster did not start");
    }
    snprintf(json, sizeof(json), "%s/chat.json", tmp_dir);
    snprintf(cmd, sizeof(cmd), "%s/mlaserve bench serve --url http://127.0.0.1:%d/ --endpoint /v1/chat/completions "
             "--num-prompts 6 --request-rate 50 --max-concurrency 2 --input-len 20 --output-len 5 --no-progress "
             "--result-json %s >%s/chat.out 2>&1", MLS_BIN_DIR, C.port, json, tmp_dir);
    CHECK_EQ_INT(run(cmd), 0);
    r = load_json(json);
    CHECK_MSG(r != NULL && cJSON_IsObject(r), "%s: not an object", json);
    CHECK_EQ_INT(check_result(r, 6, 5, NULL, false), 0);
    CHECK_STR_EQ(cJSON_GetObjectItem(r, "backend")->valuestring, "openai-chat");
    CHECK_EQ_INT(cJSON_GetObjectItem(r, "max_concurrency")->valueint, 2);
    CHECK_LE_DBL(cJSON_GetObjectItem(r, "max_concurrent_requests")->valuedouble, 2);
    /* the chat template's tokens are counted by the server: more than the 20 words */
    CHECK(cJSON_GetObjectItem(r, "total_input_tokens")->valuedouble >= 6 * 20);
    cJSON_Delete(r);
}

/* ---- failing endpoints ------------------------------------------------------------- */

typedef enum {
    SRV_500,       /* an OpenAI-style error */
    SRV_TRUNCATED, /* 200, one chunk of content, then the connection closes */
} srv_mode;

typedef struct {
    int fd;
    int port;
    srv_mode mode;
    atomic_int stop;
    int served;
} test_server;

static void *test_server_main(void *arg)
{
    test_server *s = arg;

    while (!atomic_load(&s->stop)) {
        struct pollfd p = {s->fd, POLLIN, 0};
        char buf[65536];
        size_t got = 0;
        int c;

        if (poll(&p, 1, 100) <= 0) {
            continue;
        }
        c = accept(s->fd, NULL, NULL);
        if (c < 0) {
            continue;
        }
        /* read the head and the body it announces */
        for (;;) {
            ssize_t n = read(c, buf + got, sizeof(buf) - 1 - got);
            char *end, *cl;
            if (n <= 0) {
                break;
            }
            got += (size_t)n;
            buf[got] = '\0';
            end = strstr(buf, "\r\n\r\n");
            cl = strcasestr(buf, "Content-Length:");
            if (end != NULL && (cl == NULL || got >= (size_t)(end + 4 - buf) + (size_t)atoi(cl + 15))) {
                break;
            }
        }
        if (s->mode == SRV_500) {
            const char *body = "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}";
            char resp[512];
            int n = snprintf(resp, sizeof(resp), "HTTP/1.1 500 Internal Server Error\r\nContent-Type: "
                             "application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                             strlen(body), body);
            if (write(c, resp, (size_t)n) != n) {
                fprintf(stderr, "  test server: short write\n");
            }
        } else {
            const char *resp = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                               "data: {\"choices\":[{\"index\":0,\"text\":\"hi\"}]}\n\n";
            if (write(c, resp, strlen(resp)) != (ssize_t)strlen(resp)) {
                fprintf(stderr, "  test server: short write\n");
            }
        }
        s->served++;
        close(c);
    }
    return NULL;
}

static int test_server_start(test_server *s, pthread_t *th)
{
    struct sockaddr_in sa = {0};
    socklen_t len = sizeof(sa);

    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(s->fd, 64) != 0 ||
        getsockname(s->fd, (struct sockaddr *)&sa, &len) != 0) {
        return -1;
    }
    s->port = ntohs(sa.sin_port);
    return pthread_create(th, NULL, test_server_main, s);
}

/* Run bench serve at port; the parsed result. */
static cJSON *bench_at(int port, const char *name, int n)
{
    char cmd[1024], json[256];

    snprintf(json, sizeof(json), "%s/%s.json", tmp_dir, name);
    snprintf(cmd, sizeof(cmd), "%s/mlaserve bench serve --url http://127.0.0.1:%d --model x --num-prompts %d "
             "--input-len 4 --output-len 4 --timeout 20 --goodput ttft:100 --no-progress --result-json %s "
             ">%s/%s.out 2>&1", MLS_BIN_DIR, port, n, json, tmp_dir, name);
    if (run(cmd) != 0) {
        fprintf(stderr, "  bench serve failed: see %s/%s.out\n", tmp_dir, name);
        return NULL;
    }
    return load_json(json);
}

static int check_failed(const cJSON *r, int n, const char *want_error)
{
    const cJSON *errs = cJSON_GetObjectItem(r, "errors"), *e;
    char *text = cJSON_PrintUnformatted(r);
    int bad = text == NULL || strstr(text, "nan") != NULL;

    free(text);
    if (bad || cJSON_GetObjectItem(r, "completed")->valueint != 0 || cJSON_GetObjectItem(r, "failed")->valueint != n ||
        cJSON_GetArraySize(errs) != n || cJSON_GetObjectItem(r, "request_goodput")->valuedouble != 0 ||
        cJSON_GetObjectItem(r, "mean_ttft_ms")->valuedouble != 0 ||
        cJSON_GetObjectItem(r, "total_output_tokens")->valuedouble != 0) {
        fprintf(stderr, "  completed %d failed %d errors %d\n", cJSON_GetObjectItem(r, "completed")->valueint,
                cJSON_GetObjectItem(r, "failed")->valueint, cJSON_GetArraySize(errs));
        return -1;
    }
    cJSON_ArrayForEach(e, errs) {
        if (!cJSON_IsString(e) || strstr(e->valuestring, want_error) == NULL) {
            fprintf(stderr, "  error '%s', want '%s'\n", cJSON_IsString(e) ? e->valuestring : "?", want_error);
            return -1;
        }
    }
    return 0;
}

static void test_closed_port(void)
{
    struct sockaddr_in sa = {0};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    cJSON *r;

    /* a port that was free a moment ago and has no listener */
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
          getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    port = ntohs(sa.sin_port);
    close(fd);
    r = bench_at(port, "closed", 7);
    CHECK(r != NULL);
    CHECK_EQ_INT(check_failed(r, 7, "connection refused"), 0);
    cJSON_Delete(r);
}

static void test_server_errors(void)
{
    const srv_mode modes[2] = {SRV_500, SRV_TRUNCATED};
    const char *want[2] = {"HTTP 500: boom", "the stream ended without \"data: [DONE]\""};

    for (int m = 0; m < 2; m++) {
        test_server s = {0};
        pthread_t th;
        cJSON *r;
        s.mode = modes[m];
        CHECK(test_server_start(&s, &th) == 0);
        r = bench_at(s.port, m ? "truncated" : "http500", 9);
        atomic_store(&s.stop, 1);
        pthread_join(th, NULL);
        close(s.fd);
        CHECK(r != NULL);
        CHECK_EQ_INT(s.served, 9);
        CHECK_EQ_INT(check_failed(r, 9, want[m]), 0);
        cJSON_Delete(r);
    }
}

int main(void)
{
    char model[256], cmd[1024];
    const char *env = getenv("MLS_TEST_CLUSTER_MODEL");

    signal(SIGPIPE, SIG_IGN);
    snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/mls-bench-serve-test-XXXXXX");
    if (mkdtemp(tmp_dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    MLS_TEST_RUN(test_percentiles);
    MLS_TEST_RUN(test_metrics_all_failed);
    MLS_TEST_RUN(test_metrics_goodput);
    MLS_TEST_RUN(test_arrivals);
    MLS_TEST_RUN(test_dataset_random);
    MLS_TEST_RUN(test_dataset_jsonl);
    MLS_TEST_RUN(test_closed_port);
    MLS_TEST_RUN(test_server_errors);

    if (env != NULL) {
        snprintf(model, sizeof(model), "%s", env);
    } else {
        snprintf(model, sizeof(model), "%s/model", tmp_dir);
        snprintf(cmd, sizeof(cmd), "%s/mlaserve genmodel --preset demo --out %s --force >/dev/null 2>&1",
                 MLS_BIN_DIR, model);
        if (run(cmd) != 0) {
            fprintf(stderr, "genmodel failed\n");
            return 1;
        }
    }
    if (cluster_start(&C, model) != 0) {
        fprintf(stderr, "the cluster did not start\n");
    }
    MLS_TEST_RUN(test_cluster_sweep_completions);
    MLS_TEST_RUN(test_cluster_chat);
    cluster_stop(&C);

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_dir);
    if (mls_test_failed_count == 0 && run(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmp_dir);
    }
    return MLS_TEST_DONE();
}
