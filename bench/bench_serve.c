/*
 * bench_serve.c - `mlaserve bench serve`: load an OpenAI-compatible server the
 * way `vllm bench serve` does and report TTFT, TPOT, ITL, end-to-end latency,
 * throughput and goodput, with vLLM's result JSON field names.
 *
 *   mlaserve bench serve --url http://127.0.0.1:8000 --num-prompts 200 \
 *       --request-rate 4 --input-len 256 --output-len 64 \
 *       --goodput ttft:2000 tpot:100 --result-json r.json --plot r.png
 *
 * --sweep-rates 1,2,4 runs the same prompts at each rate in turn (the JSON is
 * then a list of results, one per rate); --compare A=a.json --compare
 * B=b.json puts saved sweeps side by side (markdown table + plot), which is
 * what bench/serve_compare.sh uses for disaggregated vs colocated.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_serve.h"
#include "mls_cli.h"

#define BS_MAX_RATES 32
#define BS_MAX_SETUPS 8

typedef struct {
    const char *url;
    const char *endpoint;
    const char *model;
    const char *api_key;
    const char *result_json;
    const char *plot;
    const char *label;
    const char *table_md;
    bs_data_cfg data;
    bs_run_cfg run;
    bs_metric_cfg mc;
    double rates[BS_MAX_RATES];
    int n_rates;
    bool sweep;
    const char *cmp_labels[BS_MAX_SETUPS];
    const char *cmp_files[BS_MAX_SETUPS];
    char cmp_buf[BS_MAX_SETUPS][256];
    int n_cmp;
} bs_opts;

static void bs_usage(FILE *out)
{
    fprintf(out,
            "usage: mlaserve bench serve --url URL [options]\n"
            "       mlaserve bench serve --compare LABEL=RESULT.json ... [--table FILE.md] [--plot FILE.png]\n"
            "\n"
            "Load an OpenAI-compatible server with streaming requests and report TTFT, TPOT,\n"
            "ITL, end-to-end latency, throughput and goodput (vLLM `bench serve` JSON fields).\n"
            "\n"
            "  --url URL                 server base, http://host:port[/prefix]\n"
            "  --endpoint PATH           /v1/completions (default) | /v1/chat/completions\n"
            "  --model NAME              model field (default: the first of GET /v1/models)\n"
            "  --api-key KEY             bearer token (default: $OPENAI_API_KEY)\n"
            "  --num-prompts N           requests per run (default 100)\n"
            "  --request-rate R|inf      mean arrivals per second (default inf: all at once)\n"
            "  --burstiness B            gamma shape of the gaps: 1 Poisson (default), <1 burstier\n"
            "  --max-concurrency C       at most C requests in flight (default: no limit)\n"
            "  --dataset random|jsonl FILE   random token ids / words (default), or JSON lines\n"
            "                            {\"prompt\": text|[ids]} / {\"messages\": [...]}, optional\n"
            "                            \"output_len\"\n"
            "  --input-len L             random prompt length in tokens (default 256)\n"
            "  --output-len L            max_tokens, pinned with ignore_eos (default 64)\n"
            "  --range-ratio X           lengths uniform in [L*(1-X), L*(1+X)] (default 0)\n"
            "  --vocab-size V            random token ids are < V (default 1000)\n"
            "  --seed S                  dataset and arrival seed (default 0)\n"
            "  --temperature T           sampling temperature (default 0)\n"
            "  --no-ignore-eos           let requests stop at EOS\n"
            "  --timeout S               per request (default 600)\n"
            "  --goodput ttft:MS tpot:MS e2el:MS   SLOs for goodput (any subset)\n"
            "  --metric-percentiles P,.. percentiles reported (default 90,99)\n"
            "  --sweep-rates R1,R2,...   one run per rate, same prompts; JSON is a list\n"
            "  --result-json FILE        write the result(s)\n"
            "  --plot FILE.png           latency CDFs, TTFT/TPOT and throughput vs rate (gnuplot)\n"
            "  --label TEXT              name of this setup in the JSON and plot\n"
            "  --no-progress             no progress bar (it is drawn only on a terminal)\n"
            "  --compare LABEL=FILE      (repeat) side-by-side table and plot of saved results\n"
            "  --table FILE.md           with --compare: also write the markdown table here\n"
            "\n"
            "Token counts are the server's usage; times are this client's clock. Failed requests\n"
            "are counted with their error. Never NaN: a distribution without samples is 0,\n"
            "request_goodput is null without --goodput, request_rate \"inf\" when unbounded.\n");
}

static bool bs_parse_double(const char *s, double lo, double hi, double *v_p)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi)) {
        return false;
    }
    *v_p = v;
    return true;
}

static bool bs_parse_int(const char *s, int lo, int hi, int *v_p)
{
    double v;

    if (!bs_parse_double(s, lo, hi, &v) || v != floor(v)) {
        return false;
    }
    *v_p = (int)v;
    return true;
}

static bool bs_parse_rate(const char *s, double *v_p)
{
    if (strcmp(s, "inf") == 0 || strcmp(s, "INF") == 0) {
        *v_p = INFINITY;
        return true;
    }
    return bs_parse_double(s, 1e-6, 1e9, v_p);
}

/* "1,2,4" -> values via parse; false on a bad entry or too many */
static bool bs_parse_list(const char *s, double *v, int max, int *n_p, bool rates)
{
    char buf[1024], *save = NULL, *tok;
    int n = 0;

    snprintf(buf, sizeof(buf), "%s", s);
    for (tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        if (n == max || !(rates ? bs_parse_rate(tok, &v[n]) : bs_parse_double(tok, 0, 100, &v[n]))) {
            return false;
        }
        n++;
    }
    *n_p = n;
    return n > 0;
}

/* "ttft:2000" (or several, comma-separated) into the SLOs */
static bool bs_parse_goodput(const char *s, bs_metric_cfg *mc)
{
    char buf[256], *save = NULL, *tok;

    snprintf(buf, sizeof(buf), "%s", s);
    for (tok = strtok_r(buf, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        double v;
        if (colon == NULL || !bs_parse_double(colon + 1, 0, 1e9, &v)) {
            return false;
        }
        *colon = '\0';
        if (strcmp(tok, "ttft") == 0) {
            mc->slo_ttft_ms = v;
        } else if (strcmp(tok, "tpot") == 0) {
            mc->slo_tpot_ms = v;
        } else if (strcmp(tok, "e2el") == 0) {
            mc->slo_e2el_ms = v;
        } else {
            return false;
        }
    }
    return true;
}

static bool bs_is_goodput_arg(const char *s)
{
    return strncmp(s, "ttft:", 5) == 0 || strncmp(s, "tpot:", 5) == 0 || strncmp(s, "e2el:", 5) == 0;
}

enum {
    BS_OPT_URL = 256, BS_OPT_ENDPOINT, BS_OPT_MODEL, BS_OPT_API_KEY, BS_OPT_NUM_PROMPTS, BS_OPT_RATE,
    BS_OPT_BURST, BS_OPT_MAX_CONC, BS_OPT_DATASET, BS_OPT_DATASET_PATH, BS_OPT_IN_LEN, BS_OPT_OUT_LEN,
    BS_OPT_RANGE, BS_OPT_VOCAB, BS_OPT_SEED, BS_OPT_TEMP, BS_OPT_NO_EOS, BS_OPT_TIMEOUT, BS_OPT_GOODPUT,
    BS_OPT_PCT, BS_OPT_SWEEP, BS_OPT_RESULT, BS_OPT_PLOT, BS_OPT_LABEL, BS_OPT_NO_PROGRESS, BS_OPT_COMPARE,
    BS_OPT_TABLE,
};

/* -1: go on; else the exit status */
static int bs_parse(int argc, char **argv, bs_opts *o)
{
    static const struct option opts[] = {
        {"url", required_argument, NULL, BS_OPT_URL},
        {"base-url", required_argument, NULL, BS_OPT_URL},
        {"endpoint", required_argument, NULL, BS_OPT_ENDPOINT},
        {"model", required_argument, NULL, BS_OPT_MODEL},
        {"api-key", required_argument, NULL, BS_OPT_API_KEY},
        {"num-prompts", required_argument, NULL, BS_OPT_NUM_PROMPTS},
        {"request-rate", required_argument, NULL, BS_OPT_RATE},
        {"burstiness", required_argument, NULL, BS_OPT_BURST},
        {"max-concurrency", required_argument, NULL, BS_OPT_MAX_CONC},
        {"dataset", required_argument, NULL, BS_OPT_DATASET},
        {"dataset-name", required_argument, NULL, BS_OPT_DATASET},
        {"dataset-path", required_argument, NULL, BS_OPT_DATASET_PATH},
        {"input-len", required_argument, NULL, BS_OPT_IN_LEN},
        {"random-input-len", required_argument, NULL, BS_OPT_IN_LEN},
        {"output-len", required_argument, NULL, BS_OPT_OUT_LEN},
        {"random-output-len", required_argument, NULL, BS_OPT_OUT_LEN},
        {"range-ratio", required_argument, NULL, BS_OPT_RANGE},
        {"random-range-ratio", required_argument, NULL, BS_OPT_RANGE},
        {"vocab-size", required_argument, NULL, BS_OPT_VOCAB},
        {"seed", required_argument, NULL, BS_OPT_SEED},
        {"temperature", required_argument, NULL, BS_OPT_TEMP},
        {"no-ignore-eos", no_argument, NULL, BS_OPT_NO_EOS},
        {"timeout", required_argument, NULL, BS_OPT_TIMEOUT},
        {"goodput", required_argument, NULL, BS_OPT_GOODPUT},
        {"metric-percentiles", required_argument, NULL, BS_OPT_PCT},
        {"sweep-rates", required_argument, NULL, BS_OPT_SWEEP},
        {"result-json", required_argument, NULL, BS_OPT_RESULT},
        {"plot", required_argument, NULL, BS_OPT_PLOT},
        {"label", required_argument, NULL, BS_OPT_LABEL},
        {"no-progress", no_argument, NULL, BS_OPT_NO_PROGRESS},
        {"compare", required_argument, NULL, BS_OPT_COMPARE},
        {"table", required_argument, NULL, BS_OPT_TABLE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *bad = NULL;
    double seed;
    int c;

    optind = 1;
    /* '+': stop at the first non-option, so values after --dataset jsonl / --goodput can be taken */
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1 && bad == NULL) {
        switch (c) {
        case BS_OPT_URL: o->url = optarg; break;
        case BS_OPT_ENDPOINT: o->endpoint = optarg; break;
        case BS_OPT_MODEL: o->model = optarg; break;
        case BS_OPT_API_KEY: o->api_key = optarg; break;
        case BS_OPT_NUM_PROMPTS:
            bad = bs_parse_int(optarg, 1, 10000000, &o->data.num_prompts) ? NULL : "--num-prompts";
            break;
        case BS_OPT_RATE:
            bad = bs_parse_rate(optarg, &o->rates[0]) ? NULL : "--request-rate";
            o->n_rates = 1;
            break;
        case BS_OPT_BURST:
            bad = bs_parse_double(optarg, 1e-3, 1e3, &o->run.burstiness) ? NULL : "--burstiness";
            break;
        case BS_OPT_MAX_CONC:
            bad = bs_parse_int(optarg, 1, 1000000, &o->run.max_concurrency) ? NULL : "--max-concurrency";
            break;
        case BS_OPT_DATASET:
            if (strcmp(optarg, "random") == 0) {
                o->data.jsonl = NULL;
            } else if (strcmp(optarg, "jsonl") == 0 || strcmp(optarg, "custom") == 0) {
                if (optind < argc && argv[optind][0] != '-') {
                    o->data.jsonl = argv[optind++];
                } else if (o->data.jsonl == NULL) {
                    bad = "--dataset jsonl (needs FILE)";
                }
            } else if (strncmp(optarg, "jsonl:", 6) == 0) {
                o->data.jsonl = optarg + 6;
            } else {
                bad = "--dataset (random | jsonl FILE)";
            }
            break;
        case BS_OPT_DATASET_PATH: o->data.jsonl = optarg; break;
        case BS_OPT_IN_LEN: bad = bs_parse_int(optarg, 1, 10000000, &o->data.input_len) ? NULL : "--input-len"; break;
        case BS_OPT_OUT_LEN:
            bad = bs_parse_int(optarg, 1, 10000000, &o->data.output_len) ? NULL : "--output-len";
            break;
        case BS_OPT_RANGE:
            bad = bs_parse_double(optarg, 0, 0.999999, &o->data.range_ratio) ? NULL : "--range-ratio (0 <= X < 1)";
            break;
        case BS_OPT_VOCAB:
            bad = bs_parse_int(optarg, 1, 100000000, &o->data.vocab_size) ? NULL : "--vocab-size";
            break;
        case BS_OPT_SEED:
            bad = bs_parse_double(optarg, 0, 9007199254740992.0, &seed) ? NULL : "--seed";
            o->data.seed = (uint64_t)seed;
            o->run.seed = (uint64_t)seed;
            break;
        case BS_OPT_TEMP:
            bad = bs_parse_double(optarg, 0, 100, &o->data.temperature) ? NULL : "--temperature";
            break;
        case BS_OPT_NO_EOS: o->data.ignore_eos = false; break;
        case BS_OPT_TIMEOUT: bad = bs_parse_double(optarg, 0.001, 1e6, &o->run.timeout_s) ? NULL : "--timeout"; break;
        case BS_OPT_GOODPUT:
            bad = bs_parse_goodput(optarg, &o->mc) ? NULL : "--goodput (ttft:MS tpot:MS e2el:MS)";
            while (bad == NULL && optind < argc && bs_is_goodput_arg(argv[optind])) {
                bad = bs_parse_goodput(argv[optind++], &o->mc) ? NULL : "--goodput (ttft:MS tpot:MS e2el:MS)";
            }
            break;
        case BS_OPT_PCT:
            bad = bs_parse_list(optarg, o->mc.pct, BS_MAX_PCT, &o->mc.n_pct, false) ? NULL
                                                                                     : "--metric-percentiles";
            break;
        case BS_OPT_SWEEP:
            bad = bs_parse_list(optarg, o->rates, BS_MAX_RATES, &o->n_rates, true) ? NULL : "--sweep-rates";
            o->sweep = true;
            break;
        case BS_OPT_RESULT: o->result_json = optarg; break;
        case BS_OPT_PLOT: o->plot = optarg; break;
        case BS_OPT_LABEL: o->label = optarg; break;
        case BS_OPT_NO_PROGRESS: o->run.progress = false; break;
        case BS_OPT_COMPARE: {
            char *eq;
            if (o->n_cmp == BS_MAX_SETUPS) {
                bad = "--compare (at most 8)";
                break;
            }
            snprintf(o->cmp_buf[o->n_cmp], sizeof(o->cmp_buf[0]), "%s", optarg);
            eq = strchr(o->cmp_buf[o->n_cmp], '=');
            if (eq == NULL || eq == o->cmp_buf[o->n_cmp] || eq[1] == '\0') {
                bad = "--compare (LABEL=FILE)";
                break;
            }
            *eq = '\0';
            o->cmp_labels[o->n_cmp] = o->cmp_buf[o->n_cmp];
            o->cmp_files[o->n_cmp] = eq + 1;
            o->n_cmp++;
            break;
        }
        case BS_OPT_TABLE: o->table_md = optarg; break;
        case 'h': bs_usage(stdout); return 0;
        default: bs_usage(stderr); return 2;
        }
    }
    if (bad != NULL) {
        fprintf(stderr, "bench serve: bad value for %s\n", bad);
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "bench serve: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (o->n_cmp == 0 && o->url == NULL) {
        fprintf(stderr, "bench serve: --url is required (or --compare)\n");
        bs_usage(stderr);
        return 2;
    }
    return -1;
}

/* The first model of GET /v1/models, into buf; false when the server does not say. */
static bool bs_model_discover(const bs_target *t, char *buf, size_t len)
{
    char *body = NULL;
    mls_err err = {{0}};
    cJSON *root, *first, *id;
    bool ok = false;

    if (bs_http_get(t, "/v1/models", 30, &body, &err) != MLS_OK) {
        fprintf(stderr, "bench serve: cannot list models (%s); sending requests without \"model\"\n", err.msg);
        return false;
    }
    root = cJSON_Parse(body);
    first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "data"), 0);
    id = cJSON_GetObjectItemCaseSensitive(first, "id");
    if (cJSON_IsString(id)) {
        snprintf(buf, len, "%s", id->valuestring);
        ok = true;
    } else {
        fprintf(stderr, "bench serve: GET /v1/models lists no model; sending requests without \"model\"\n");
    }
    cJSON_Delete(root);
    free(body);
    return ok;
}

static mls_status bs_write_json(const char *file, cJSON *doc, mls_err *err)
{
    char *text = cJSON_PrintUnformatted(doc);
    FILE *f;
    size_t len;

    if (text == NULL) {
        mls_err_set(err, "out of memory rendering %s", file);
        return MLS_ERR_NO_MEMORY;
    }
    len = strlen(text);
    f = fopen(file, "w");
    if (f == NULL || fwrite(text, 1, len, f) != len || fputc('\n', f) == EOF || fclose(f) != 0) {
        mls_err_set(err, "%s: %s", file, strerror(errno));
        if (f != NULL) {
            fclose(f);
        }
        free(text);
        return MLS_ERR_IO;
    }
    free(text);
    return MLS_OK;
}

/* ignore_eos pins the length: say so when the server stopped early */
static void bs_check_lengths(const bs_opts *o, const bs_dataset *ds, const bs_run *run)
{
    int short_n = 0;

    if (!o->data.ignore_eos) {
        return;
    }
    for (int i = 0; i < run->n; i++) {
        short_n += run->out[i].success && run->out[i].output_tokens != ds->v[i].output_len;
    }
    if (short_n > 0) {
        fprintf(stderr, "bench serve: warning: %d completed requests did not get max_tokens tokens although "
                        "ignore_eos was sent (the server does not honour ignore_eos?)\n", short_n);
    }
}

static int bs_run_all(bs_opts *o)
{
    bs_target t;
    bs_dataset ds = {0};
    bs_run runs[BS_MAX_RATES] = {{0}};
    bs_metrics ms[BS_MAX_RATES];
    bs_plot_point pts[BS_MAX_RATES];
    char model[256] = "";
    cJSON *doc = NULL;
    mls_err err = {{0}};
    mls_status st;
    int rc = 1, done = 0;

    if ((st = bs_target_parse(o->url, o->endpoint, &t, &err)) != MLS_OK) {
        fprintf(stderr, "bench serve: %s\n", err.msg);
        return 2;
    }
    t.api_key = o->api_key;
    o->data.kind = strstr(t.path, "/chat/completions") != NULL ? BS_EP_CHAT : BS_EP_COMPLETIONS;
    if (o->model != NULL) {
        snprintf(model, sizeof(model), "%s", o->model);
    } else {
        bs_model_discover(&t, model, sizeof(model));
    }
    o->data.model = model;
    if ((st = bs_dataset_build(&o->data, &ds, &err)) != MLS_OK) {
        fprintf(stderr, "bench serve: %s\n", err.msg);
        return st == MLS_ERR_INVALID_ARG ? 2 : 1;
    }
    doc = o->sweep ? cJSON_CreateArray() : NULL;
    for (int k = 0; k < o->n_rates; k++) {
        bs_run_info info = {0};
        char label[64];
        cJSON *res;

        o->run.rate = o->rates[k];
        if (isfinite(o->rates[k])) {
            snprintf(label, sizeof(label), "rate %g", o->rates[k]);
        } else {
            snprintf(label, sizeof(label), "rate inf");
        }
        o->run.label = label;
        fprintf(stderr, "bench serve: %s%s%d requests to %s%s at %s req/s (burstiness %g%s)\n",
                o->label ? o->label : "", o->label ? ": " : "", ds.n, t.base, t.path + strlen(t.prefix),
                label + 5, o->run.burstiness, o->run.max_concurrency > 0 ? ", concurrency capped" : "");
        if ((st = bs_run_load(&t, &ds, &o->run, &runs[k], &err)) != MLS_OK) {
            fprintf(stderr, "bench serve: %s\n", err.msg);
            goto out_free;
        }
        done = k + 1;
        if (bs_metrics_compute(&runs[k], &o->mc, &ms[k]) != MLS_OK) {
            fprintf(stderr, "bench serve: out of memory computing metrics\n");
            goto out_free;
        }
        bs_check_lengths(o, &ds, &runs[k]);
        info.backend = o->data.kind == BS_EP_CHAT ? "openai-chat" : "openai";
        info.endpoint = t.path + strlen(t.prefix);
        info.base_url = t.base;
        info.model_id = model;
        info.dataset = o->data.jsonl ? o->data.jsonl : "random";
        info.num_prompts = ds.n;
        info.request_rate = o->rates[k];
        info.burstiness = o->run.burstiness;
        info.max_concurrency = o->run.max_concurrency;
        info.input_len = o->data.input_len;
        info.output_len = o->data.output_len;
        info.range_ratio = o->data.range_ratio;
        info.seed = o->data.seed;
        info.label = o->label;
        bs_report_print(stdout, &info, &runs[k], &ms[k], &o->mc);
        fflush(stdout);
        if (o->result_json != NULL) {
            res = bs_result_json(&info, &runs[k], &ms[k], &o->mc);
            if (res == NULL) {
                fprintf(stderr, "bench serve: out of memory building the result JSON\n");
                goto out_free;
            }
            if (doc != NULL) {
                cJSON_AddItemToArray(doc, res);
            } else {
                doc = res;
            }
        }
        pts[k].rate = o->rates[k];
        pts[k].run = &runs[k];
        pts[k].m = &ms[k];
    }
    if (o->result_json != NULL) {
        if ((st = bs_write_json(o->result_json, doc, &err)) != MLS_OK) {
            fprintf(stderr, "bench serve: %s\n", err.msg);
            goto out_free;
        }
        fprintf(stderr, "bench serve: wrote %s\n", o->result_json);
    }
    if (o->plot != NULL) {
        char title[300];
        snprintf(title, sizeof(title), "%s%s%s  in %d / out %d tokens, %d prompts per rate", o->label ? o->label : "",
                 o->label ? ": " : "", model[0] ? model : "(model)", o->data.input_len, o->data.output_len, ds.n);
        if ((st = bs_plot_sweep(o->plot, title, pts, done, &o->mc, &err)) != MLS_OK) {
            fprintf(stderr, "bench serve: plot: %s\n", err.msg);
            goto out_free;
        }
        fprintf(stderr, "bench serve: wrote %s\n", o->plot);
    }
    rc = 0;
out_free:
    cJSON_Delete(doc);
    for (int k = 0; k < done; k++) {
        bs_run_free(&runs[k]);
    }
    bs_dataset_free(&ds);
    return rc;
}

int mls_cmd_bench_serve(int argc, char **argv)
{
    bs_opts o;
    int rc;

    memset(&o, 0, sizeof(o));
    o.endpoint = "/v1/completions";
    o.api_key = getenv("OPENAI_API_KEY");
    o.data.num_prompts = 100;
    o.data.input_len = 256;
    o.data.output_len = 64;
    o.data.vocab_size = 1000;
    o.data.ignore_eos = true;
    o.run.burstiness = 1.0;
    o.run.timeout_s = 600;
    o.run.progress = isatty(STDERR_FILENO);
    o.mc.pct[0] = 90;
    o.mc.pct[1] = 99;
    o.mc.n_pct = 2;
    o.mc.slo_ttft_ms = o.mc.slo_tpot_ms = o.mc.slo_e2el_ms = -1;
    o.rates[0] = INFINITY;
    o.n_rates = 1;
    if ((rc = bs_parse(argc, argv, &o)) >= 0) {
        return rc;
    }
    if (o.n_cmp > 0) {
        mls_err err = {{0}};
        if (bs_compare(o.cmp_labels, o.cmp_files, o.n_cmp, o.table_md, o.plot, stdout, &err) != MLS_OK) {
            fprintf(stderr, "bench serve: compare: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    return bs_run_all(&o);
}
