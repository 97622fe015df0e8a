/*
 * bench_serve.h - `mlaserve bench serve`: the serving load generator, shared by
 * its four files (internal to the command; the CLI entry is in mls_cli.h).
 *
 *   bench_serve.c         options, the run/sweep driver, --compare
 *   bench_serve_data.c    seeded RNG, gamma arrivals, random and jsonl datasets
 *   bench_serve_client.c  the libuv + llhttp streaming HTTP client (one loop,
 *                         one connection per request, hundreds in flight)
 *   bench_serve_stats.c   metrics, the vLLM-compatible result JSON, the report
 *   bench_serve_plot.c    gnuplot PNGs (one run or a sweep) and the side-by-side
 *                         comparison of several sweeps (table + plot)
 *
 * Time is the client's monotonic clock (mls_now_ns); token counts are the
 * server's `usage` (the final stream chunk, asked for with
 * stream_options.include_usage). Every request ends as completed or failed
 * with its error; none is dropped.
 */
#ifndef BENCH_SERVE_H
#define BENCH_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "mls_buf.h"
#include "mls_rng.h"
#include "mls_status.h"

#define BS_MAX_PCT 8        /* --metric-percentiles entries */
#define BS_ERROR_MAX 400    /* bytes of one request's error text */

/* ---- random numbers (bench_serve_data.c) -------------------------------------------- */

typedef mls_rng bs_rng; /* common/mls_rng.h */

void bs_rng_seed(bs_rng *r, uint64_t seed);
uint64_t bs_rng_next(bs_rng *r);
double bs_rng_uniform(bs_rng *r);                        /* [0, 1) */
int64_t bs_rng_int(bs_rng *r, int64_t lo, int64_t hi);   /* [lo, hi], lo <= hi */
double bs_rng_gamma(bs_rng *r, double shape, double scale);

/*
 * Arrival offsets in seconds from the start, as vLLM: the first request at 0,
 * then gaps drawn from Gamma(shape = burstiness, scale = 1 / (rate *
 * burstiness)) - mean 1/rate; burstiness 1 is a Poisson process, < 1 burstier,
 * > 1 more regular. rate = INFINITY (or <= 0): all at 0. t_p has n entries.
 */
void bs_arrivals(double rate, double burstiness, uint64_t seed, int n, double *t_p);

/* ---- datasets (bench_serve_data.c) --------------------------------------------------- */

typedef enum {
    BS_EP_COMPLETIONS, /* /v1/completions: token-id or text prompts */
    BS_EP_CHAT,        /* /v1/chat/completions: messages */
} bs_endpoint_kind;

typedef struct {
    char *body;     /* the request's JSON body (owned) */
    int prompt_len; /* token ids sent; -1 when the prompt is text (the server's tokenizer counts) */
    int output_len; /* max_tokens asked for */
} bs_prompt;

typedef struct {
    bs_prompt *v; /* n */
    int n;
} bs_dataset;

typedef struct {
    bs_endpoint_kind kind;
    const char *jsonl;   /* NULL: the random dataset */
    const char *model;   /* "model" field; NULL or "": left out */
    int num_prompts;
    int input_len;       /* random: prompt tokens (chat: words) */
    int output_len;      /* max_tokens (jsonl: unless the line says) */
    double range_ratio;  /* random: lengths uniform in [L*(1-r), L*(1+r)], 0 <= r < 1 */
    int vocab_size;      /* random completions: ids in [0, vocab_size) */
    uint64_t seed;
    double temperature;
    bool ignore_eos;     /* send "ignore_eos": true, pinning the output length */
} bs_data_cfg;

/* Build the num_prompts request bodies. MLS_ERR_PARSE / ERR_IO name the file and line. */
mls_status bs_dataset_build(const bs_data_cfg *cfg, bs_dataset *ds_p, mls_err *err);
void bs_dataset_free(bs_dataset *ds);

/* ---- the load run (bench_serve_client.c) --------------------------------------------- */

/* What one request measured. Times in seconds on the client's clock. */
typedef struct {
    bool success;
    char error[BS_ERROR_MAX]; /* why it failed; "" on success */
    int prompt_len;           /* token ids sent (from the dataset); -1 for a text prompt */
    double t_send;            /* from the run's start to the request being sent */
    double ttft;              /* send -> first chunk with content; 0 when none came */
    double latency;           /* send -> end of the stream (data: [DONE]) */
    double *itl;              /* (cap_itl) gaps between consecutive content chunks, n_itl
                                 of them (owned, mls_array_reserve under MISC) */
    int n_itl;
    size_t cap_itl;
    int prompt_tokens;        /* usage.prompt_tokens; -1 when not reported */
    int output_tokens;        /* usage.completion_tokens; -1 when not reported */
    mls_buf text;             /* the generated text (owned); text.data NULL when none */
} bs_outcome;

typedef struct {
    char host[256];   /* for the Host header */
    char port[8];
    char prefix[256]; /* the URL's path, without a trailing '/' ("" for none) */
    char path[512];   /* request path: prefix + endpoint */
    char base[512];   /* scheme://host:port + prefix, without the endpoint */
    const char *api_key; /* "Authorization: Bearer" when non-NULL */
} bs_target;

typedef struct {
    double rate;         /* requests/s; INFINITY: all at once */
    double burstiness;   /* gamma shape of the inter-arrival gaps */
    int max_concurrency; /* requests in flight at most; 0: no limit */
    uint64_t seed;       /* arrivals */
    double timeout_s;    /* per request, send to end of stream */
    bool progress;       /* draw a progress bar on stderr */
    const char *label;   /* progress bar prefix */
} bs_run_cfg;

typedef struct {
    bs_outcome *out;   /* one per prompt, in dataset order (owned) */
    int n;
    double duration;   /* s from the run's start to the last request's end */
    int max_in_flight; /* the most requests open at once */
} bs_run;

/* "http://host:port[/prefix]" + endpoint -> t_p. Only http:// (no TLS). */
mls_status bs_target_parse(const char *url, const char *endpoint, bs_target *t_p, mls_err *err);

/*
 * Send every prompt of ds to t with cfg's arrival process and wait for all of
 * them. Failures of single requests are outcomes, not errors: the call fails
 * only when the run itself cannot happen (name resolution, out of memory).
 */
mls_status bs_run_load(const bs_target *t, const bs_dataset *ds, const bs_run_cfg *cfg, bs_run *run_p,
                       mls_err *err);
void bs_run_free(bs_run *run);

/*
 * A plain GET of base + path (e.g. "/v1/models"): the body (malloc'd, owned by
 * the caller) when the status is 200, else an error naming the status.
 */
mls_status bs_http_get(const bs_target *t, const char *path, double timeout_s, char **body_p, mls_err *err);

/* ---- metrics and results (bench_serve_stats.c) ---------------------------------------- */

typedef struct {
    double pct[BS_MAX_PCT]; /* percentiles reported, e.g. 90, 99 */
    int n_pct;
    double slo_ttft_ms;     /* goodput SLOs; < 0: not part of the SLO */
    double slo_tpot_ms;
    double slo_e2el_ms;
} bs_metric_cfg;

/* One latency distribution in ms. Empty (n == 0): everything 0 (vLLM's rule). */
typedef struct {
    int n;
    double mean, median, std;
    double p[BS_MAX_PCT]; /* at bs_metric_cfg.pct */
} bs_dist;

typedef struct {
    int completed;
    int failed;
    long long total_input;   /* usage.prompt_tokens over completed requests */
    long long total_output;  /* usage.completion_tokens over completed requests */
    int good;                /* completed requests meeting every SLO given */
    bool has_goodput;        /* any SLO given; else request_goodput is null */
    double duration;
    double request_throughput, request_goodput, output_throughput, total_token_throughput;
    bs_dist ttft, tpot, itl, e2el;
} bs_metrics;

/* Linear-interpolated percentile (numpy's default) of sorted[n]; 0 when n == 0. */
double bs_percentile(const double *sorted, int n, double p);
/* The distribution of v[n] (seconds) in ms; sorts v. */
void bs_dist_compute(double *v, int n, const bs_metric_cfg *mc, bs_dist *d_p);

/*
 * The per-request samples of a run, in seconds: TTFT, TPOT and E2EL of the
 * completed requests (TPOT only where output_tokens > 1), and every ITL gap.
 * Arrays malloc'd, owned by the caller (free each; NULL when the count is 0).
 */
typedef struct {
    double *ttft, *tpot, *itl, *e2el;
    int n_ttft, n_tpot, n_itl, n_e2el;
} bs_samples;

mls_status bs_samples_collect(const bs_run *run, bs_samples *s_p);
void bs_samples_free(bs_samples *s);

mls_status bs_metrics_compute(const bs_run *run, const bs_metric_cfg *mc, bs_metrics *m_p);

/* The run's description for the result JSON. */
typedef struct {
    const char *backend;     /* "openai" | "openai-chat" */
    const char *endpoint;
    const char *base_url;
    const char *model_id;
    const char *dataset;     /* "random" | the jsonl path */
    int num_prompts;
    double request_rate;     /* INFINITY -> "inf" */
    double burstiness;
    int max_concurrency;     /* 0 -> null */
    int input_len, output_len;
    double range_ratio;
    uint64_t seed;
    const char *label;       /* NULL: none */
} bs_run_info;

/*
 * The result object with vLLM `bench serve` field names (see the file's
 * comment for the rules where a value is undefined). NULL when out of memory.
 */
cJSON *bs_result_json(const bs_run_info *info, const bs_run *run, const bs_metrics *m, const bs_metric_cfg *mc);

/* The human report (vLLM's layout) and a digest of the errors. */
void bs_report_print(FILE *out, const bs_run_info *info, const bs_run *run, const bs_metrics *m,
                     const bs_metric_cfg *mc);

/* "p99" / "p99.9": vLLM's percentile word. */
void bs_pct_word(double p, char *buf, size_t len);

/* ---- plots and comparison (bench_serve_plot.c) --------------------------------------- */

/* One run of a sweep, for plotting. */
typedef struct {
    double rate;
    const bs_run *run;
    const bs_metrics *m;
} bs_plot_point;

/* One PNG: CDFs of TTFT, TPOT, E2EL per rate; TTFT, TPOT and throughput/goodput vs rate. */
mls_status bs_plot_sweep(const char *png, const char *title, const bs_plot_point *pts, int n,
                         const bs_metric_cfg *mc, mls_err *err);

/*
 * Side by side: sweeps read from result JSON files (one object or a list),
 * one per setup. Writes the markdown table to table_md (when non-NULL) and
 * to out, and the plot to png (when non-NULL).
 */
mls_status bs_compare(const char *const *labels, const char *const *files, int n, const char *table_md,
                      const char *png, FILE *out, mls_err *err);

/* The gnuplot terminal line for PNGs ("pngcairo ..." or "png ..."); NULL when gnuplot is missing. */
const char *bs_gnuplot_terminal(void);
/* Run gnuplot on a script file. */
mls_status bs_gnuplot_run(const char *script, const char *png, mls_err *err);

#endif
