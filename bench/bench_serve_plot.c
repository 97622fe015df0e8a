/*
 * bench_serve_plot.c - pictures and side-by-side tables for `mlaserve bench
 * serve`, drawn by gnuplot (Debian gnuplot-nox; pngcairo when built in, else
 * the libgd png terminal).
 *
 *   bs_plot_sweep: one PNG for one run or a sweep - the CDFs of TTFT, TPOT and
 *     E2EL (one curve per rate), TTFT and TPOT (mean and the top percentile)
 *     vs rate, and request throughput / goodput and output tokens/s vs rate:
 *     where goodput stops following the rate is the knee.
 *   bs_compare: several sweeps (one per setup, e.g. disaggregated and
 *     colocated), read back from their result JSON: one markdown table (rate x
 *     setup) and one PNG with goodput, output throughput, p99 TTFT and p99
 *     TPOT vs rate, and the TTFT / TPOT CDFs at the highest rate all setups ran.
 *
 * Data goes to files in a private temp directory with the script; gnuplot
 * runs as a child process; the directory is removed afterwards.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_serve.h"

#define BS_CMP_MAX_RATES 64

/* ---- gnuplot ------------------------------------------------------------------------ */

const char *bs_gnuplot_terminal(void)
{
    static int probed;
    static const char *term;

    if (!probed) {
        probed = 1;
        if (system("gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1") == 0) {
            term = "pngcairo size %d,%d font 'Sans,10'";
        } else if (system("gnuplot -e 'set terminal png' >/dev/null 2>&1") == 0) {
            term = "png size %d,%d";
        }
    }
    return term;
}

mls_status bs_gnuplot_run(const char *script, const char *png, mls_err *err)
{
    pid_t pid;
    int status;

    pid = fork();
    if (pid < 0) {
        mls_err_set(err, "fork: %s", strerror(errno));
        return MLS_ERR_IO;
    }
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        mls_err_set(err, "gnuplot failed on %s (exit %d) drawing %s", script,
                    WIFEXITED(status) ? WEXITSTATUS(status) : -1, png);
        return MLS_ERR_IO;
    }
    if (access(png, R_OK) != 0) {
        mls_err_set(err, "gnuplot wrote no %s", png);
        return MLS_ERR_IO;
    }
    return MLS_OK;
}

/* A temp dir for data files; paths made with bs_tmp_path. */
typedef struct {
    char dir[64];
    char files[128][32]; /* created, removed at the end */
    int n;
} bs_tmp;

static mls_status bs_tmp_create(bs_tmp *t, mls_err *err)
{
    snprintf(t->dir, sizeof(t->dir), "/tmp/mls-bench-plot-XXXXXX");
    t->n = 0;
    if (mkdtemp(t->dir) == NULL) {
        mls_err_set(err, "mkdtemp: %s", strerror(errno));
        return MLS_ERR_IO;
    }
    return MLS_OK;
}

/* Open dir/name for writing; the name is remembered for removal. */
static FILE *bs_tmp_open(bs_tmp *t, const char *name, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", t->dir, name);
    if (t->n < (int)(sizeof(t->files) / sizeof(t->files[0]))) {
        snprintf(t->files[t->n++], sizeof(t->files[0]), "%s", name);
    }
    return fopen(path, "w");
}

static void bs_tmp_remove(bs_tmp *t)
{
    char path[128];

    for (int i = 0; i < t->n; i++) {
        snprintf(path, sizeof(path), "%s/%s", t->dir, t->files[i]);
        unlink(path);
    }
    rmdir(t->dir);
}

/* Gnuplot string literal content: no quotes or backslashes from labels. */
static void bs_gp_clean(const char *in, char *out, size_t len)
{
    size_t n = 0;

    for (; *in && n + 1 < len; in++) {
        out[n++] = (*in == '\'' || *in == '"' || *in == '\\') ? '_' : *in;
    }
    out[n] = '\0';
}

static void bs_rate_label(double rate, char *buf, size_t len)
{
    if (isfinite(rate)) {
        snprintf(buf, len, "%g", rate);
    } else {
        snprintf(buf, len, "inf");
    }
}

/* sorted v[n] (seconds) -> "ms fraction" rows; 0 rows when n == 0 */
static void bs_write_cdf(FILE *f, double *v, int n)
{
    int cmp_sorted = 1;

    for (int i = 1; i < n; i++) {
        cmp_sorted &= v[i - 1] <= v[i];
    }
    if (!cmp_sorted) {
        for (int i = 1; i < n; i++) { /* insertion sort: the samples arrive almost sorted */
            double x = v[i];
            int j = i - 1;
            while (j >= 0 && v[j] > x) {
                v[j + 1] = v[j];
                j--;
            }
            v[j + 1] = x;
        }
    }
    for (int i = 0; i < n; i++) {
        fprintf(f, "%.6f %.6f\n", v[i] * 1e3, (double)(i + 1) / n);
    }
}

/* One CDF panel: files cdf_<key>_<k>.dat for k in [0, n), labels[k]; empty ones skipped. */
static void bs_gp_cdf_panel(FILE *gp, const bs_tmp *t, const char *key, const char *title, char labels[][48],
                            const int *counts, int n)
{
    int any = 0;

    fprintf(gp, "set title '%s'\nset xlabel 'ms'\nset ylabel 'fraction of requests'\nset yrange [0:1]\n"
                "set xrange [0:*]\nset key bottom right\n", title);
    for (int k = 0; k < n; k++) {
        any |= counts[k] > 0;
    }
    if (!any) {
        fprintf(gp, "set label 1 'no samples' at graph 0.5,0.5 center\nplot [0:1] -1 notitle\nunset label 1\n");
        return;
    }
    fprintf(gp, "plot ");
    for (int k = 0, first = 1; k < n; k++) {
        if (counts[k] == 0) {
            continue;
        }
        fprintf(gp, "%s'%s/cdf_%s_%d.dat' using 1:2 with lines lw 2 title '%s'", first ? "" : ", ", t->dir, key,
                k, labels[k]);
        first = 0;
    }
    fprintf(gp, "\n");
}

/* ---- one run or a sweep ---------------------------------------------------------------- */

mls_status bs_plot_sweep(const char *png, const char *title, const bs_plot_point *pts, int n,
                         const bs_metric_cfg *mc, mls_err *err)
{
    const char *term = bs_gnuplot_terminal();
    static const char *const keys[3] = {"ttft", "tpot", "e2el"};
    char path[256], script[256], labels[BS_CMP_MAX_RATES][48], ttl[256], pw[16] = "median";
    int counts[3][BS_CMP_MAX_RATES] = {{0}};
    int top = mc->n_pct - 1; /* the highest percentile asked for, e.g. p99 */
    bs_tmp t;
    FILE *f, *gp;
    mls_status st;

    if (term == NULL) {
        mls_err_set(err, "gnuplot with a png terminal is not installed (deploy/install-deps.sh: gnuplot-nox)");
        return MLS_ERR_UNSUPPORTED;
    }
    if (n < 1 || n > BS_CMP_MAX_RATES) {
        mls_err_set(err, "plot: 1..%d runs, not %d", BS_CMP_MAX_RATES, n);
        return MLS_ERR_INVALID_ARG;
    }
    if ((st = bs_tmp_create(&t, err)) != MLS_OK) {
        return st;
    }
    for (int k = 0; k < mc->n_pct; k++) {
        top = mc->pct[k] > mc->pct[top] ? k : top;
    }
    if (top >= 0) {
        bs_pct_word(mc->pct[top], pw, sizeof(pw));
    }
    for (int k = 0; k < n; k++) {
        bs_samples s;
        char rl[32];
        bs_rate_label(pts[k].rate, rl, sizeof(rl));
        snprintf(labels[k], sizeof(labels[k]), "%s req/s", rl);
        if (bs_samples_collect(pts[k].run, &s) != MLS_OK) {
            mls_err_set(err, "out of memory for the plot data");
            st = MLS_ERR_NO_MEMORY;
            goto out_tmp;
        }
        for (int m = 0; m < 3; m++) {
            char name[32];
            double *v = m == 0 ? s.ttft : m == 1 ? s.tpot : s.e2el;
            counts[m][k] = m == 0 ? s.n_ttft : m == 1 ? s.n_tpot : s.n_e2el;
            snprintf(name, sizeof(name), "cdf_%s_%d.dat", keys[m], k);
            if ((f = bs_tmp_open(&t, name, path, sizeof(path))) == NULL) {
                break;
            }
            bs_write_cdf(f, v, counts[m][k]);
            fclose(f);
        }
        bs_samples_free(&s);
    }
    if ((f = bs_tmp_open(&t, "rate.dat", path, sizeof(path))) == NULL) {
        mls_err_set(err, "%s: %s", path, strerror(errno));
        st = MLS_ERR_IO;
        goto out_tmp;
    }
    for (int k = 0; k < n; k++) {
        const bs_metrics *m = pts[k].m;
        char rl[32];
        bs_rate_label(pts[k].rate, rl, sizeof(rl));
        fprintf(f, "%d %s %.6f %.6f %.6f %.6f %.6f %.6f %.6f\n", k, rl, m->ttft.mean,
                top >= 0 ? m->ttft.p[top] : m->ttft.median, m->tpot.mean, top >= 0 ? m->tpot.p[top] : m->tpot.median,
                m->request_throughput, m->has_goodput ? m->request_goodput : m->request_throughput,
                m->output_throughput);
    }
    fclose(f);

    if ((gp = bs_tmp_open(&t, "plot.gp", script, sizeof(script))) == NULL) {
        mls_err_set(err, "%s: %s", script, strerror(errno));
        st = MLS_ERR_IO;
        goto out_tmp;
    }
    bs_gp_clean(title, ttl, sizeof(ttl));
    fprintf(gp, "set terminal ");
    fprintf(gp, term, 1500, 900);
    fprintf(gp, "\nset output '%s'\nset grid\nset multiplot layout 2,3 title '%s'\n", png, ttl);
    bs_gp_cdf_panel(gp, &t, "ttft", "TTFT CDF", labels, counts[0], n);
    bs_gp_cdf_panel(gp, &t, "tpot", "TPOT CDF", labels, counts[1], n);
    bs_gp_cdf_panel(gp, &t, "e2el", "end-to-end latency CDF", labels, counts[2], n);
    fprintf(gp, "unset yrange\nset xrange [-0.5:%d.5]\nset xlabel 'request rate (req/s)'\nset key top left\n"
                "set yrange [0:*]\n", n - 1);
    fprintf(gp, "set title 'TTFT vs rate'\nset ylabel 'ms'\n"
                "plot '%s/rate.dat' using 1:3:xtic(2) with linespoints lw 2 pt 7 title 'mean', "
                "'' using 1:4 with linespoints lw 2 pt 5 title '%s'\n", t.dir, pw);
    fprintf(gp, "set title 'TPOT vs rate'\n"
                "plot '%s/rate.dat' using 1:5:xtic(2) with linespoints lw 2 pt 7 title 'mean', "
                "'' using 1:6 with linespoints lw 2 pt 5 title '%s'\n", t.dir, pw);
    fprintf(gp, "set title 'throughput vs rate'\nset ylabel 'req/s'\nset y2label 'output tok/s'\n"
                "set y2tics\nset y2range [0:*]\n"
                "plot '%s/rate.dat' using 1:7:xtic(2) with linespoints lw 2 pt 7 title 'requests/s', "
                "'' using 1:8 with linespoints lw 2 pt 5 title '%s', "
                "'' using 1:9 axes x1y2 with linespoints lw 2 pt 9 title 'output tok/s'\n",
            t.dir, pts[0].m->has_goodput ? "goodput (req/s)" : "goodput (no SLO: = requests/s)");
    fprintf(gp, "unset multiplot\n");
    fclose(gp);
    st = bs_gnuplot_run(script, png, err);
out_tmp:
    bs_tmp_remove(&t);
    return st;
}

/* ---- comparison of setups --------------------------------------------------------------- */

typedef struct {
    double rate;
    int completed, failed;
    double req_tput, goodput, out_tput;
    bool has_goodput;
    double ttft_mean, ttft_p99, tpot_mean, tpot_p99, itl_p99, e2el_mean;
    cJSON *obj; /* borrowed from the setup's document */
} bs_cmp_row;

typedef struct {
    const char *label;
    cJSON *doc;
    bs_cmp_row rows[BS_CMP_MAX_RATES];
    int n;
    char slo[160]; /* "TTFT <= 2000 ms, TPOT <= 100 ms" or "" */
} bs_cmp_setup;

static double bs_jnum(const cJSON *o, const char *key, double dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* p99 when the file has it, else the median (a run made with other --metric-percentiles) */
static double bs_jpct(const cJSON *o, const char *metric)
{
    char key[64];
    snprintf(key, sizeof(key), "p99_%s_ms", metric);
    if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, key))) {
        return bs_jnum(o, key, 0);
    }
    snprintf(key, sizeof(key), "median_%s_ms", metric);
    return bs_jnum(o, key, 0);
}

static mls_status bs_cmp_load(bs_cmp_setup *s, const char *file, mls_err *err)
{
    FILE *f = fopen(file, "r");
    char *text = NULL;
    long len;
    cJSON *list;

    if (f == NULL) {
        mls_err_set(err, "%s: %s", file, strerror(errno));
        return MLS_ERR_IO;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        (text = malloc((size_t)len + 1)) == NULL || fread(text, 1, (size_t)len, f) != (size_t)len) {
        mls_err_set(err, "%s: cannot read", file);
        free(text);
        fclose(f);
        return MLS_ERR_IO;
    }
    fclose(f);
    text[len] = '\0';
    s->doc = cJSON_Parse(text);
    free(text);
    if (s->doc == NULL || (!cJSON_IsArray(s->doc) && !cJSON_IsObject(s->doc))) {
        mls_err_set(err, "%s: not a bench serve result (JSON object or list)", file);
        return MLS_ERR_PARSE;
    }
    list = s->doc;
    if (cJSON_IsObject(s->doc)) {
        list = NULL;
    }
    for (int i = 0; i < (list ? cJSON_GetArraySize(list) : 1) && s->n < BS_CMP_MAX_RATES; i++) {
        cJSON *o = list ? cJSON_GetArrayItem(list, i) : s->doc, *rate, *slo;
        bs_cmp_row *r = &s->rows[s->n];
        rate = cJSON_GetObjectItemCaseSensitive(o, "request_rate");
        if (!cJSON_IsObject(o) || !(cJSON_IsNumber(rate) || cJSON_IsString(rate)) ||
            !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "completed"))) {
            mls_err_set(err, "%s: entry %d has no request_rate/completed", file, i);
            return MLS_ERR_PARSE;
        }
        r->obj = o;
        r->rate = cJSON_IsNumber(rate) ? rate->valuedouble : INFINITY;
        r->completed = (int)bs_jnum(o, "completed", 0);
        r->failed = (int)bs_jnum(o, "failed", 0);
        r->req_tput = bs_jnum(o, "request_throughput", 0);
        r->has_goodput = cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "request_goodput"));
        r->goodput = bs_jnum(o, "request_goodput", 0);
        r->out_tput = bs_jnum(o, "output_throughput", 0);
        r->ttft_mean = bs_jnum(o, "mean_ttft_ms", 0);
        r->ttft_p99 = bs_jpct(o, "ttft");
        r->tpot_mean = bs_jnum(o, "mean_tpot_ms", 0);
        r->tpot_p99 = bs_jpct(o, "tpot");
        r->itl_p99 = bs_jpct(o, "itl");
        r->e2el_mean = bs_jnum(o, "mean_e2el_ms", 0);
        slo = cJSON_GetObjectItemCaseSensitive(o, "goodput_slo_ms");
        if (s->slo[0] == '\0' && cJSON_IsObject(slo)) {
            const char *names[3] = {"ttft", "tpot", "e2el"}, *shown[3] = {"TTFT", "TPOT", "E2EL"};
            size_t len2 = 0;
            for (int k = 0; k < 3; k++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(slo, names[k]);
                if (cJSON_IsNumber(v)) {
                    len2 += (size_t)snprintf(s->slo + len2, sizeof(s->slo) - len2, "%s%s <= %g ms",
                                             len2 ? ", " : "", shown[k], v->valuedouble);
                }
            }
        }
        s->n++;
    }
    if (s->n == 0) {
        mls_err_set(err, "%s: no results", file);
        return MLS_ERR_PARSE;
    }
    return MLS_OK;
}

static void bs_cmp_table(FILE *out, const bs_cmp_setup *s, int n, const double *rates, int n_rates)
{
    char rl[32];

    fprintf(out, "Goodput SLO: %s\n\n", s[0].slo[0] ? s[0].slo : "none given (goodput column = request throughput)");
    fprintf(out, "| rate (req/s) | setup | ok / failed | req/s | goodput (req/s) | output tok/s | "
                 "TTFT mean / p99 (ms) | TPOT mean / p99 (ms) | ITL p99 (ms) | E2EL mean (ms) |\n");
    fprintf(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int r = 0; r < n_rates; r++) {
        bs_rate_label(rates[r], rl, sizeof(rl));
        for (int k = 0; k < n; k++) {
            for (int i = 0; i < s[k].n; i++) {
                const bs_cmp_row *w = &s[k].rows[i];
                if (w->rate != rates[r]) {
                    continue;
                }
                fprintf(out, "| %s | %s | %d / %d | %.3f | %.3f | %.1f | %.0f / %.0f | %.1f / %.1f | %.1f | %.0f |\n",
                        rl, s[k].label, w->completed, w->failed, w->req_tput,
                        w->has_goodput ? w->goodput : w->req_tput, w->out_tput, w->ttft_mean, w->ttft_p99,
                        w->tpot_mean, w->tpot_p99, w->itl_p99, w->e2el_mean);
            }
        }
    }
    fprintf(out, "\nBest goodput:");
    for (int k = 0; k < n; k++) {
        int best = 0;
        for (int i = 1; i < s[k].n; i++) {
            double g = s[k].rows[i].has_goodput ? s[k].rows[i].goodput : s[k].rows[i].req_tput;
            double gb = s[k].rows[best].has_goodput ? s[k].rows[best].goodput : s[k].rows[best].req_tput;
            best = g > gb ? i : best;
        }
        bs_rate_label(s[k].rows[best].rate, rl, sizeof(rl));
        fprintf(out, "%s %s %.3f req/s (at rate %s)", k ? ";" : "", s[k].label,
                s[k].rows[best].has_goodput ? s[k].rows[best].goodput : s[k].rows[best].req_tput, rl);
    }
    fprintf(out, "\n");
}

/* The per-request TTFT and TPOT samples of one result object, seconds, into v (cap entries). */
static int bs_cmp_samples(const cJSON *o, bool tpot, double *v, int cap)
{
    const cJSON *ttfts = cJSON_GetObjectItemCaseSensitive(o, "ttfts");
    const cJSON *e2els = cJSON_GetObjectItemCaseSensitive(o, "e2els");
    const cJSON *outs = cJSON_GetObjectItemCaseSensitive(o, "output_lens");
    const cJSON *errs = cJSON_GetObjectItemCaseSensitive(o, "errors");
    int n = 0, total = cJSON_GetArraySize(ttfts);

    for (int i = 0; i < total && n < cap; i++) {
        const cJSON *e = cJSON_GetArrayItem(errs, i);
        double ttft = cJSON_GetArrayItem(ttfts, i) ? cJSON_GetArrayItem(ttfts, i)->valuedouble : 0;
        double e2el = cJSON_GetArrayItem(e2els, i) ? cJSON_GetArrayItem(e2els, i)->valuedouble : 0;
        int out_len = cJSON_GetArrayItem(outs, i) ? cJSON_GetArrayItem(outs, i)->valueint : 0;
        if (cJSON_IsString(e) && e->valuestring[0] != '\0') {
            continue; /* failed */
        }
        if (!tpot) {
            v[n++] = ttft;
        } else if (out_len > 1 && e2els != NULL) {
            v[n++] = (e2el - ttft) / (out_len - 1);
        }
    }
    return n;
}

static int bs_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static mls_status bs_cmp_plot(const char *png, const bs_cmp_setup *s, int n, const double *rates, int n_rates,
                              mls_err *err)
{
    const char *term = bs_gnuplot_terminal();
    char path[256], script[256], labels[8][48], rl[32], title[200];
    int counts[2][8] = {{0}};
    double cdf_rate = -1;
    bs_tmp t;
    FILE *f, *gp;
    mls_status st;

    if (term == NULL) {
        mls_err_set(err, "gnuplot with a png terminal is not installed (deploy/install-deps.sh: gnuplot-nox)");
        return MLS_ERR_UNSUPPORTED;
    }
    if ((st = bs_tmp_create(&t, err)) != MLS_OK) {
        return st;
    }
    /* the CDFs at the highest rate every setup ran */
    for (int r = n_rates - 1; r >= 0 && cdf_rate < 0; r--) {
        int have = 0;
        for (int k = 0; k < n; k++) {
            for (int i = 0; i < s[k].n; i++) {
                have += s[k].rows[i].rate == rates[r];
            }
        }
        cdf_rate = have >= n ? rates[r] : cdf_rate;
    }
    for (int k = 0; k < n; k++) {
        char name[32];
        bs_gp_clean(s[k].label, labels[k], sizeof(labels[k]));
        snprintf(name, sizeof(name), "s%d.dat", k);
        if ((f = bs_tmp_open(&t, name, path, sizeof(path))) == NULL) {
            mls_err_set(err, "%s: %s", path, strerror(errno));
            st = MLS_ERR_IO;
            goto out_tmp;
        }
        for (int r = 0; r < n_rates; r++) {
            for (int i = 0; i < s[k].n; i++) {
                const bs_cmp_row *w = &s[k].rows[i];
                if (w->rate == rates[r]) {
                    bs_rate_label(rates[r], rl, sizeof(rl));
                    fprintf(f, "%d %s %.6f %.6f %.6f %.6f\n", r, rl, w->has_goodput ? w->goodput : w->req_tput,
                            w->out_tput, w->ttft_p99, w->tpot_p99);
                }
            }
        }
        fclose(f);
        for (int m = 0; m < 2; m++) {
            const cJSON *o = NULL;
            for (int i = 0; i < s[k].n; i++) {
                o = s[k].rows[i].rate == cdf_rate ? s[k].rows[i].obj : o;
            }
            int cap = o ? cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "ttfts")) : 0;
            double *v = malloc((size_t)(cap > 0 ? cap : 1) * sizeof(double));
            if (v == NULL) {
                mls_err_set(err, "out of memory");
                st = MLS_ERR_NO_MEMORY;
                goto out_tmp;
            }
            counts[m][k] = o ? bs_cmp_samples(o, m == 1, v, cap) : 0;
            qsort(v, (size_t)counts[m][k], sizeof(double), bs_cmp_double);
            snprintf(name, sizeof(name), "cdf_%s_%d.dat", m ? "tpot" : "ttft", k);
            if ((f = bs_tmp_open(&t, name, path, sizeof(path))) != NULL) {
                bs_write_cdf(f, v, counts[m][k]);
                fclose(f);
            }
            free(v);
        }
    }
    if ((gp = bs_tmp_open(&t, "cmp.gp", script, sizeof(script))) == NULL) {
        mls_err_set(err, "%s: %s", script, strerror(errno));
        st = MLS_ERR_IO;
        goto out_tmp;
    }
    fprintf(gp, "set terminal ");
    fprintf(gp, term, 1500, 900);
    fprintf(gp, "\nset output '%s'\nset grid\n", png);
    {
        char slo[200];
        bs_gp_clean(s[0].slo[0] ? s[0].slo : "none", slo, sizeof(slo));
        fprintf(gp, "set multiplot layout 2,3 title 'goodput SLO: %s'\n", slo);
    }
    fprintf(gp, "set xrange [-0.5:%d.5]\nset xlabel 'request rate (req/s)'\nset key top left\nset yrange [0:*]\n",
            n_rates - 1);
    {
        const struct {
            const char *title, *ylabel;
            int col;
        } p[] = {{"goodput vs rate", "req/s meeting the SLO", 3}, {"output throughput vs rate", "tok/s", 4},
                 {"p99 TTFT vs rate", "ms", 5}, {"p99 TPOT vs rate", "ms", 6}};
        for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
            if (i == 2) { /* the TTFT CDF goes third, top right */
                bs_rate_label(cdf_rate, rl, sizeof(rl));
                snprintf(title, sizeof(title), "TTFT CDF at %s req/s", rl);
                bs_gp_cdf_panel(gp, &t, "ttft", title, labels, counts[0], n);
                fprintf(gp, "set xrange [-0.5:%d.5]\nset xlabel 'request rate (req/s)'\nset key top left\n"
                            "set yrange [0:*]\n", n_rates - 1);
            }
            fprintf(gp, "set title '%s'\nset ylabel '%s'\nplot ", p[i].title, p[i].ylabel);
            for (int k = 0; k < n; k++) {
                fprintf(gp, "%s'%s/s%d.dat' using 1:%d%s with linespoints lw 2 pt %d title '%s'", k ? ", " : "",
                        t.dir, k, p[i].col, k == 0 ? ":xtic(2)" : "", 7 + 2 * k, labels[k]);
            }
            fprintf(gp, "\n");
        }
    }
    bs_rate_label(cdf_rate, rl, sizeof(rl));
    snprintf(title, sizeof(title), "TPOT CDF at %s req/s", rl);
    bs_gp_cdf_panel(gp, &t, "tpot", title, labels, counts[1], n);
    fprintf(gp, "unset multiplot\n");
    fclose(gp);
    st = bs_gnuplot_run(script, png, err);
out_tmp:
    bs_tmp_remove(&t);
    return st;
}

mls_status bs_compare(const char *const *labels, const char *const *files, int n, const char *table_md,
                      const char *png, FILE *out, mls_err *err)
{
    bs_cmp_setup *s = calloc((size_t)(n > 0 ? n : 1), sizeof(*s));
    double rates[BS_CMP_MAX_RATES];
    int n_rates = 0;
    mls_status st = MLS_OK;

    if (s == NULL) {
        mls_err_set(err, "out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    if (n < 1 || n > 8) {
        mls_err_set(err, "--compare: 1..8 setups, not %d", n);
        st = MLS_ERR_INVALID_ARG;
        goto out_free;
    }
    for (int k = 0; k < n; k++) {
        s[k].label = labels[k];
        if ((st = bs_cmp_load(&s[k], files[k], err)) != MLS_OK) {
            goto out_free;
        }
        for (int i = 0; i < s[k].n; i++) {
            int seen = 0;
            for (int r = 0; r < n_rates; r++) {
                seen |= rates[r] == s[k].rows[i].rate;
            }
            if (!seen && n_rates < BS_CMP_MAX_RATES) {
                rates[n_rates++] = s[k].rows[i].rate;
            }
        }
    }
    qsort(rates, (size_t)n_rates, sizeof(double), bs_cmp_double);
    bs_cmp_table(out, s, n, rates, n_rates);
    if (table_md != NULL) {
        FILE *f = fopen(table_md, "w");
        if (f == NULL) {
            mls_err_set(err, "%s: %s", table_md, strerror(errno));
            st = MLS_ERR_IO;
            goto out_free;
        }
        bs_cmp_table(f, s, n, rates, n_rates);
        fclose(f);
    }
    if (png != NULL) {
        st = bs_cmp_plot(png, s, n, rates, n_rates, err);
    }
out_free:
    for (int k = 0; k < n; k++) {
        cJSON_Delete(s[k].doc);
    }
    free(s);
    return st;
}
