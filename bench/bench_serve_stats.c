/*
 * bench_serve_stats.c - from a run's outcomes to vLLM-compatible numbers: the
 * metrics, the result JSON (`vllm bench serve` field names) and the report.
 *
 * Definitions (as vLLM's calculate_metrics, times on the client's clock):
 *   TTFT  send -> first chunk with content, per completed request
 *   TPOT  (E2EL - TTFT) / (output_tokens - 1), completed requests with > 1 token
 *   ITL   gaps between consecutive content chunks, all completed requests
 *   E2EL  send -> end of stream, per completed request
 *   throughputs: completed requests, and their usage tokens, over the duration
 *   goodput: completed requests meeting every SLO given (a request with <= 1
 *            output token has TPOT 0 for this test), over the duration
 * Never NaN - the rules where a value is undefined:
 *   a distribution without samples reports 0 for mean/median/std/percentiles
 *   (vLLM: np.mean(x or 0)); a zero duration gives 0 rates; request_goodput is
 *   null without --goodput, max_concurrency null without a limit, request_rate
 *   "inf" when unbounded (all three as vLLM); per request, ttfts[i] is 0 when
 *   no content came, output_lens[i] is 0 for a failed request, input_lens[i] is
 *   usage.prompt_tokens, else the token ids sent, else 0 (a text prompt the
 *   server never counted).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_serve.h"
#include "bench_stat.h"

double bs_percentile(const double *sorted, int n, double p)
{
    double rank, frac;
    int lo;

    if (n <= 0) {
        return 0;
    }
    p = p < 0 ? 0 : p > 100 ? 100 : p;
    rank = p / 100.0 * (n - 1);
    lo = (int)floor(rank);
    if (lo >= n - 1) {
        return sorted[n - 1];
    }
    frac = rank - lo;
    return sorted[lo] + (sorted[lo + 1] - sorted[lo]) * frac;
}

void bs_dist_compute(double *v, int n, const bs_metric_cfg *mc, bs_dist *d_p)
{
    bs_dist d = {0};
    double sum = 0, var = 0;

    d.n = n;
    if (n > 0) {
        qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
        for (int i = 0; i < n; i++) {
            sum += v[i];
        }
        d.mean = sum / n;
        for (int i = 0; i < n; i++) {
            var += (v[i] - d.mean) * (v[i] - d.mean);
        }
        d.std = sqrt(var / n); /* population std, as numpy */
        d.median = bs_percentile(v, n, 50);
        for (int k = 0; k < mc->n_pct; k++) {
            d.p[k] = bs_percentile(v, n, mc->pct[k]);
        }
    }
    d.mean *= 1e3;
    d.std *= 1e3;
    d.median *= 1e3;
    for (int k = 0; k < mc->n_pct; k++) {
        d.p[k] *= 1e3;
    }
    *d_p = d;
}

static double bs_tpot(const bs_outcome *o)
{
    return o->output_tokens > 1 ? (o->latency - o->ttft) / (o->output_tokens - 1) : 0;
}

mls_status bs_samples_collect(const bs_run *run, bs_samples *s_p)
{
    bs_samples s = {0};
    int n_itl = 0;
    size_t n = (size_t)(run->n > 0 ? run->n : 1);

    for (int i = 0; i < run->n; i++) {
        n_itl += run->out[i].success ? run->out[i].n_itl : 0;
    }
    s.ttft = malloc(n * sizeof(double));
    s.tpot = malloc(n * sizeof(double));
    s.e2el = malloc(n * sizeof(double));
    s.itl = malloc((size_t)(n_itl > 0 ? n_itl : 1) * sizeof(double));
    if (s.ttft == NULL || s.tpot == NULL || s.e2el == NULL || s.itl == NULL) {
        bs_samples_free(&s);
        return MLS_ERR_NO_MEMORY;
    }
    for (int i = 0; i < run->n; i++) {
        const bs_outcome *o = &run->out[i];
        if (!o->success) {
            continue;
        }
        s.ttft[s.n_ttft++] = o->ttft;
        s.e2el[s.n_e2el++] = o->latency;
        if (o->output_tokens > 1) {
            s.tpot[s.n_tpot++] = bs_tpot(o);
        }
        for (int k = 0; k < o->n_itl; k++) {
            s.itl[s.n_itl++] = o->itl[k];
        }
    }
    *s_p = s;
    return MLS_OK;
}

void bs_samples_free(bs_samples *s)
{
    free(s->ttft);
    free(s->tpot);
    free(s->itl);
    free(s->e2el);
    memset(s, 0, sizeof(*s));
}

mls_status bs_metrics_compute(const bs_run *run, const bs_metric_cfg *mc, bs_metrics *m_p)
{
    bs_metrics m = {0};
    bs_samples s;
    double dur = run->duration;

    if (bs_samples_collect(run, &s) != MLS_OK) {
        return MLS_ERR_NO_MEMORY;
    }
    m.has_goodput = mc->slo_ttft_ms >= 0 || mc->slo_tpot_ms >= 0 || mc->slo_e2el_ms >= 0;
    for (int i = 0; i < run->n; i++) {
        const bs_outcome *o = &run->out[i];
        if (!o->success) {
            m.failed++;
            continue;
        }
        m.completed++;
        m.total_input += o->prompt_tokens;
        m.total_output += o->output_tokens;
        if (m.has_goodput && (mc->slo_ttft_ms < 0 || o->ttft * 1e3 <= mc->slo_ttft_ms) &&
            (mc->slo_tpot_ms < 0 || bs_tpot(o) * 1e3 <= mc->slo_tpot_ms) &&
            (mc->slo_e2el_ms < 0 || o->latency * 1e3 <= mc->slo_e2el_ms)) {
            m.good++;
        }
    }
    m.duration = dur;
    if (dur > 0) {
        m.request_throughput = m.completed / dur;
        m.request_goodput = m.good / dur;
        m.output_throughput = (double)m.total_output / dur;
        m.total_token_throughput = (double)(m.total_input + m.total_output) / dur;
    }
    bs_dist_compute(s.ttft, s.n_ttft, mc, &m.ttft);
    bs_dist_compute(s.tpot, s.n_tpot, mc, &m.tpot);
    bs_dist_compute(s.itl, s.n_itl, mc, &m.itl);
    bs_dist_compute(s.e2el, s.n_e2el, mc, &m.e2el);
    bs_samples_free(&s);
    *m_p = m;
    return MLS_OK;
}

void bs_pct_word(double p, char *buf, size_t len)
{
    if (p == floor(p)) {
        snprintf(buf, len, "p%d", (int)p);
    } else {
        snprintf(buf, len, "p%g", p);
    }
}

static void bs_json_dist(cJSON *root, const char *name, const bs_dist *d, const bs_metric_cfg *mc)
{
    char key[64], w[16];

    snprintf(key, sizeof(key), "mean_%s_ms", name);
    cJSON_AddNumberToObject(root, key, d->mean);
    snprintf(key, sizeof(key), "median_%s_ms", name);
    cJSON_AddNumberToObject(root, key, d->median);
    snprintf(key, sizeof(key), "std_%s_ms", name);
    cJSON_AddNumberToObject(root, key, d->std);
    for (int k = 0; k < mc->n_pct; k++) {
        bs_pct_word(mc->pct[k], w, sizeof(w));
        snprintf(key, sizeof(key), "%s_%s_ms", w, name);
        cJSON_AddNumberToObject(root, key, d->p[k]);
    }
}

cJSON *bs_result_json(const bs_run_info *info, const bs_run *run, const bs_metrics *m, const bs_metric_cfg *mc)
{
    cJSON *root = cJSON_CreateObject(), *a_in, *a_out, *a_ttft, *a_itl, *a_e2el, *a_start, *a_text, *a_err;
    char date[32];
    time_t now = time(NULL);
    struct tm tm;

    if (root == NULL) {
        return NULL;
    }
    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%Y%m%d-%H%M%S", &tm);
    cJSON_AddStringToObject(root, "date", date);
    cJSON_AddStringToObject(root, "backend", info->backend);
    cJSON_AddStringToObject(root, "endpoint", info->endpoint);
    cJSON_AddStringToObject(root, "base_url", info->base_url);
    if (info->label != NULL) {
        cJSON_AddStringToObject(root, "label", info->label);
    } else {
        cJSON_AddNullToObject(root, "label");
    }
    cJSON_AddStringToObject(root, "model_id", info->model_id);
    cJSON_AddStringToObject(root, "tokenizer_id", info->model_id);
    cJSON_AddStringToObject(root, "dataset_name", info->dataset);
    cJSON_AddNumberToObject(root, "num_prompts", info->num_prompts);
    if (isfinite(info->request_rate)) {
        cJSON_AddNumberToObject(root, "request_rate", info->request_rate);
    } else {
        cJSON_AddStringToObject(root, "request_rate", "inf");
    }
    cJSON_AddNumberToObject(root, "burstiness", info->burstiness);
    if (info->max_concurrency > 0) {
        cJSON_AddNumberToObject(root, "max_concurrency", info->max_concurrency);
    } else {
        cJSON_AddNullToObject(root, "max_concurrency");
    }
    cJSON_AddNumberToObject(root, "random_input_len", info->input_len);
    cJSON_AddNumberToObject(root, "random_output_len", info->output_len);
    cJSON_AddNumberToObject(root, "random_range_ratio", info->range_ratio);
    cJSON_AddNumberToObject(root, "seed", (double)info->seed);
    if (m->has_goodput) {
        cJSON *slo = cJSON_AddObjectToObject(root, "goodput_slo_ms");
        if (slo != NULL && mc->slo_ttft_ms >= 0) {
            cJSON_AddNumberToObject(slo, "ttft", mc->slo_ttft_ms);
        }
        if (slo != NULL && mc->slo_tpot_ms >= 0) {
            cJSON_AddNumberToObject(slo, "tpot", mc->slo_tpot_ms);
        }
        if (slo != NULL && mc->slo_e2el_ms >= 0) {
            cJSON_AddNumberToObject(slo, "e2el", mc->slo_e2el_ms);
        }
    } else {
        cJSON_AddNullToObject(root, "goodput_slo_ms");
    }
    cJSON_AddNumberToObject(root, "duration", m->duration);
    cJSON_AddNumberToObject(root, "completed", m->completed);
    cJSON_AddNumberToObject(root, "failed", m->failed);
    cJSON_AddNumberToObject(root, "total_input_tokens", (double)m->total_input);
    cJSON_AddNumberToObject(root, "total_output_tokens", (double)m->total_output);
    cJSON_AddNumberToObject(root, "request_throughput", m->request_throughput);
    if (m->has_goodput) {
        cJSON_AddNumberToObject(root, "request_goodput", m->request_goodput);
    } else {
        cJSON_AddNullToObject(root, "request_goodput");
    }
    cJSON_AddNumberToObject(root, "output_throughput", m->output_throughput);
    cJSON_AddNumberToObject(root, "total_token_throughput", m->total_token_throughput);
    cJSON_AddNumberToObject(root, "max_concurrent_requests", run->max_in_flight);
    bs_json_dist(root, "ttft", &m->ttft, mc);
    bs_json_dist(root, "tpot", &m->tpot, mc);
    bs_json_dist(root, "itl", &m->itl, mc);
    bs_json_dist(root, "e2el", &m->e2el, mc);

    a_in = cJSON_AddArrayToObject(root, "input_lens");
    a_out = cJSON_AddArrayToObject(root, "output_lens");
    a_ttft = cJSON_AddArrayToObject(root, "ttfts");
    a_itl = cJSON_AddArrayToObject(root, "itls");
    a_e2el = cJSON_AddArrayToObject(root, "e2els");
    a_start = cJSON_AddArrayToObject(root, "start_times");
    a_text = cJSON_AddArrayToObject(root, "generated_texts");
    a_err = cJSON_AddArrayToObject(root, "errors");
    if (!a_in || !a_out || !a_ttft || !a_itl || !a_e2el || !a_start || !a_text || !a_err) {
        cJSON_Delete(root);
        return NULL;
    }
    for (int i = 0; i < run->n; i++) {
        const bs_outcome *o = &run->out[i];
        int in = o->prompt_tokens >= 0 ? o->prompt_tokens : o->prompt_len >= 0 ? o->prompt_len : 0;
        cJSON *itl = cJSON_CreateDoubleArray(o->itl ? o->itl : (const double[]){0}, o->success ? o->n_itl : 0);
        cJSON_AddItemToArray(a_in, cJSON_CreateNumber(in));
        cJSON_AddItemToArray(a_out, cJSON_CreateNumber(o->success ? o->output_tokens : 0));
        cJSON_AddItemToArray(a_ttft, cJSON_CreateNumber(o->ttft));
        cJSON_AddItemToArray(a_itl, itl);
        cJSON_AddItemToArray(a_e2el, cJSON_CreateNumber(o->success ? o->latency : 0));
        cJSON_AddItemToArray(a_start, cJSON_CreateNumber(o->t_send));
        cJSON_AddItemToArray(a_text, cJSON_CreateString(o->text.data ? o->text.data : ""));
        cJSON_AddItemToArray(a_err, cJSON_CreateString(o->error));
    }
    return root;
}

/* ---- report ---------------------------------------------------------------------- */

void bs_report_print(FILE *out, const bs_run_info *info, const bs_run *run, const bs_metrics *m,
                     const bs_metric_cfg *mc)
{
    char rate[32];

    if (isfinite(info->request_rate)) {
        snprintf(rate, sizeof(rate), "%g", info->request_rate);
    } else {
        snprintf(rate, sizeof(rate), "inf");
    }
    fprintf(out, "============ Serving Benchmark Result ============\n");
    fprintf(out, "%-40s %s\n", "Request rate (req/s):", rate);
    fprintf(out, "%-40s %d\n", "Successful requests:", m->completed);
    fprintf(out, "%-40s %d\n", "Failed requests:", m->failed);
    if (info->max_concurrency > 0) {
        fprintf(out, "%-40s %d\n", "Maximum request concurrency:", info->max_concurrency);
    }
    fprintf(out, "%-40s %-10.2f\n", "Benchmark duration (s):", m->duration);
    fprintf(out, "%-40s %lld\n", "Total input tokens:", m->total_input);
    fprintf(out, "%-40s %lld\n", "Total generated tokens:", m->total_output);
    fprintf(out, "%-40s %-10.2f\n", "Request throughput (req/s):", m->request_throughput);
    if (m->has_goodput) {
        fprintf(out, "%-40s %-10.2f\n", "Request goodput (req/s):", m->request_goodput);
    }
    fprintf(out, "%-40s %-10.2f\n", "Output token throughput (tok/s):", m->output_throughput);
    fprintf(out, "%-40s %-10.2f\n", "Total Token throughput (tok/s):", m->total_token_throughput);
    fprintf(out, "%-40s %d\n", "Peak concurrent requests:", run->max_in_flight);
    {
        const struct {
            const char *title, *abbr;
            const bs_dist *d;
        } sec[] = {{"Time to First Token", "TTFT", &m->ttft},
                   {"Time per Output Token (excl. 1st token)", "TPOT", &m->tpot},
                   {"Inter-token Latency", "ITL", &m->itl},
                   {"End-to-end Latency", "E2EL", &m->e2el}};
        for (size_t i = 0; i < sizeof(sec) / sizeof(sec[0]); i++) {
            char w[16];
            int pad = (50 - (int)strlen(sec[i].title)) / 2;
            fprintf(out, "%.*s%s%.*s\n", pad, "--------------------------------------------------",
                    sec[i].title, 50 - pad - (int)strlen(sec[i].title),
                    "--------------------------------------------------");
            char label[64];
            snprintf(label, sizeof(label), "Mean %s (ms):", sec[i].abbr);
            fprintf(out, "%-40s %-10.2f\n", label, sec[i].d->mean);
            snprintf(label, sizeof(label), "Median %s (ms):", sec[i].abbr);
            fprintf(out, "%-40s %-10.2f\n", label, sec[i].d->median);
            for (int k = 0; k < mc->n_pct; k++) {
                bs_pct_word(mc->pct[k], w, sizeof(w));
                w[0] = 'P';
                snprintf(label, sizeof(label), "%s %s (ms):", w, sec[i].abbr);
                fprintf(out, "%-40s %-10.2f\n", label, sec[i].d->p[k]);
            }
        }
    }
    fprintf(out, "==================================================\n");
    /* every distinct error once, with its count: failures are never silent */
    if (m->failed > 0) {
        int shown = 0;
        fprintf(out, "Errors (%d failed requests):\n", m->failed);
        for (int i = 0; i < run->n && shown < 8; i++) {
            int count = 0, seen = 0;
            if (run->out[i].success) {
                continue;
            }
            for (int j = 0; j < i && !seen; j++) {
                seen = !run->out[j].success && strcmp(run->out[j].error, run->out[i].error) == 0;
            }
            if (seen) {
                continue;
            }
            for (int j = i; j < run->n; j++) {
                count += !run->out[j].success && strcmp(run->out[j].error, run->out[i].error) == 0;
            }
            fprintf(out, "  %5d x %s\n", count, run->out[i].error);
            shown++;
        }
    }
}
