/*
 * mls_prom.c - Prometheus text exposition registry (see mls_prom.h).
 */
#include "mls_prom.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mls_buf.h"

const double mls_prom_buckets_ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                        0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                        20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const size_t mls_prom_buckets_ttft_n = sizeof(mls_prom_buckets_ttft) / sizeof(double);
const double mls_prom_buckets_tpot[] = {0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,  0.4,
                                        0.5,  0.75,  1.0,  2.5,   5.0,  7.5,  10.0, 20.0, 40.0,
                                        80.0};
const size_t mls_prom_buckets_tpot_n = sizeof(mls_prom_buckets_tpot) / sizeof(double);
const double mls_prom_buckets_e2e[] = {0.3,  0.5,   1.0,   2.5,   5.0,   10.0,  15.0,
                                       20.0, 30.0,  40.0,  50.0,  60.0,  120.0, 240.0,
                                       480.0, 960.0, 1920.0, 7680.0};
const size_t mls_prom_buckets_e2e_n = sizeof(mls_prom_buckets_e2e) / sizeof(double);

typedef enum {
    MLS_PROM_TYPE_COUNTER,
    MLS_PROM_TYPE_GAUGE,
    MLS_PROM_TYPE_HISTOGRAM,
} mls_prom_type;

static const char *const mls_prom_type_names[] = {"counter", "gauge", "histogram"};

struct mls_prom_metric {
    mls_prom_registry *reg;
    struct mls_prom_family *fam;
    mls_prom_metric *next;      /* next series of the family */
    char *labels;               /* 'a="x",b="y"' (escaped) or "" */
    double value;               /* counter/gauge */
    double *bounds;             /* histogram (n_bounds) */
    uint64_t *buckets;          /* histogram (n_bounds + 1), not cumulative */
    size_t n_bounds;
    double sum;
    uint64_t count;
};

typedef struct mls_prom_family {
    char *name;
    char *help;
    mls_prom_type type;
    mls_prom_metric *series, *last;
    struct mls_prom_family *next;
} mls_prom_family;

struct mls_prom_registry {
    pthread_mutex_t mu;
    mls_prom_family *fams, *last;
};

/* Text being rendered; the first append that fails makes the rest no-ops
 * (oom), checked once at the end. */
typedef struct {
    mls_buf buf;
    bool oom;
} mls_prom_buf;

#define MLS_PROM_BUF_INIT {.buf = MLS_BUF_INIT(MLS_ALLOC_TAG_NET), .oom = false}

static void mls_prom_put(mls_prom_buf *b, const char *s, size_t n)
{
    if (!b->oom && mls_buf_append(&b->buf, s, n) != MLS_OK) {
        b->oom = true;
    }
}

static void mls_prom_puts(mls_prom_buf *b, const char *s)
{
    mls_prom_put(b, s, strlen(s));
}

static void mls_prom_printf(mls_prom_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void mls_prom_printf(mls_prom_buf *b, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (!b->oom && mls_buf_append_vfmt(&b->buf, fmt, ap) != MLS_OK) {
        b->oom = true;
    }
    va_end(ap);
}

static void mls_prom_put_double(mls_prom_buf *b, double v)
{
    if (isnan(v)) {
        mls_prom_puts(b, "NaN");
    } else if (isinf(v)) {
        mls_prom_puts(b, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 1e15) {
        mls_prom_printf(b, "%.0f", v);
    } else {
        char tmp[40];
        snprintf(tmp, sizeof(tmp), "%.15g", v); /* shortest form that reads back exactly */
        if (strtod(tmp, NULL) != v) {
            snprintf(tmp, sizeof(tmp), "%.17g", v);
        }
        mls_prom_puts(b, tmp);
    }
}

/* Escape for a label value (\\, \", \n) or HELP text (\\, \n). */
static void mls_prom_put_escaped(mls_prom_buf *b, const char *s, bool quote)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\') {
            mls_prom_puts(b, "\\\\");
        } else if (*s == '\n') {
            mls_prom_puts(b, "\\n");
        } else if (*s == '"' && quote) {
            mls_prom_puts(b, "\\\"");
        } else {
            mls_prom_put(b, s, 1);
        }
    }
}

static bool mls_prom_name_ok(const char *s, bool allow_colon)
{
    size_t i;

    if (s == NULL || s[0] == '\0') {
        return false;
    }
    for (i = 0; s[i] != '\0'; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok) {
            return false;
        }
    }
    return true;
}

mls_status mls_prom_registry_create(mls_prom_registry **reg_p)
{
    mls_prom_registry *reg = calloc(1, sizeof(*reg));

    if (reg == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    pthread_mutex_init(&reg->mu, NULL);
    *reg_p = reg;
    return MLS_OK;
}

static void mls_prom_metric_free(mls_prom_metric *m)
{
    free(m->labels);
    free(m->bounds);
    free(m->buckets);
    free(m);
}

void mls_prom_registry_destroy(mls_prom_registry *reg)
{
    mls_prom_family *f, *fnext;
    mls_prom_metric *m, *mnext;

    if (reg == NULL) {
        return;
    }
    for (f = reg->fams; f != NULL; f = fnext) {
        fnext = f->next;
        for (m = f->series; m != NULL; m = mnext) {
            mnext = m->next;
            mls_prom_metric_free(m);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    pthread_mutex_destroy(&reg->mu);
    free(reg);
}

/* 'a="x",b="y"' from a NULL-terminated pair list; NULL on a bad label name. */
static char *mls_prom_labels_build(const char *const *labels, mls_err *err)
{
    mls_prom_buf b = MLS_PROM_BUF_INIT;
    size_t i;

    mls_prom_put(&b, "", 0);
    for (i = 0; labels != NULL && labels[i] != NULL; i += 2) {
        if (!mls_prom_name_ok(labels[i], false) || labels[i + 1] == NULL ||
            strncmp(labels[i], "__", 2) == 0 || strcmp(labels[i], "le") == 0) {
            mls_err_set(err, "prometheus: invalid label '%s'", labels[i]);
            mls_buf_free(&b.buf);
            return NULL;
        }
        if (i > 0) {
            mls_prom_puts(&b, ",");
        }
        mls_prom_puts(&b, labels[i]);
        mls_prom_puts(&b, "=\"");
        mls_prom_put_escaped(&b, labels[i + 1], true);
        mls_prom_puts(&b, "\"");
    }
    if (b.oom) {
        mls_err_set(err, "prometheus: out of memory");
        mls_buf_free(&b.buf);
        return NULL;
    }
    return mls_buf_detach(&b.buf, NULL);
}

static mls_prom_metric *mls_prom_register(mls_prom_registry *reg, mls_prom_type type,
                                          const char *name, const char *help,
                                          const char *const *labels, const double *bounds,
                                          size_t n_bounds, mls_err *err)
{
    mls_prom_family *f;
    mls_prom_metric *m = NULL;
    char *lab;
    size_t i;

    if (!mls_prom_name_ok(name, true)) {
        mls_err_set(err, "prometheus: invalid metric name '%s'", name != NULL ? name : "(null)");
        return NULL;
    }
    if (type == MLS_PROM_TYPE_HISTOGRAM) {
        if (bounds == NULL || n_bounds == 0) {
            mls_err_set(err, "prometheus: histogram '%s' needs bucket bounds", name);
            return NULL;
        }
        for (i = 0; i < n_bounds; i++) {
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
                mls_err_set(err, "prometheus: histogram '%s': bounds must increase", name);
                return NULL;
            }
        }
    }
    lab = mls_prom_labels_build(labels, err);
    if (lab == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&reg->mu);
    for (f = reg->fams; f != NULL && strcmp(f->name, name) != 0; f = f->next) {
    }
    if (f != NULL && f->type != type) {
        mls_err_set(err, "prometheus: '%s' is a %s, not a %s", name, mls_prom_type_names[f->type],
                    mls_prom_type_names[type]);
        goto out_unlock;
    }
    if (f != NULL) {
        for (m = f->series; m != NULL; m = m->next) {
            if (strcmp(m->labels, lab) == 0) {
                goto out_unlock; /* existing series */
            }
        }
    } else {
        f = calloc(1, sizeof(*f));
        if (f == NULL || (f->name = strdup(name)) == NULL ||
            (f->help = strdup(help != NULL ? help : "")) == NULL) {
            if (f != NULL) {
                free(f->name);
                free(f);
            }
            mls_err_set(err, "prometheus: out of memory");
            goto out_unlock;
        }
        f->type = type;
        if (reg->last != NULL) {
            reg->last->next = f;
        } else {
            reg->fams = f;
        }
        reg->last = f;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        mls_err_set(err, "prometheus: out of memory");
        goto out_unlock;
    }
    m->reg = reg;
    m->fam = f;
    m->labels = lab;
    lab = NULL;
    if (type == MLS_PROM_TYPE_HISTOGRAM) {
        m->bounds = malloc(n_bounds * sizeof(*m->bounds));
        m->buckets = calloc(n_bounds + 1, sizeof(*m->buckets));
        if (m->bounds == NULL || m->buckets == NULL) {
            mls_prom_metric_free(m);
            m = NULL;
            mls_err_set(err, "prometheus: out of memory");
            goto out_unlock;
        }
        memcpy(m->bounds, bounds, n_bounds * sizeof(*m->bounds));
        m->n_bounds = n_bounds;
    }
    if (f->last != NULL) {
        f->last->next = m;
    } else {
        f->series = m;
    }
    f->last = m;
out_unlock:
    pthread_mutex_unlock(&reg->mu);
    free(lab);
    return m;
}

mls_prom_metric *mls_prom_counter(mls_prom_registry *reg, const char *name, const char *help,
                                  const char *const *labels, mls_err *err)
{
    return mls_prom_register(reg, MLS_PROM_TYPE_COUNTER, name, help, labels, NULL, 0, err);
}

mls_prom_metric *mls_prom_gauge(mls_prom_registry *reg, const char *name, const char *help,
                                const char *const *labels, mls_err *err)
{
    return mls_prom_register(reg, MLS_PROM_TYPE_GAUGE, name, help, labels, NULL, 0, err);
}

mls_prom_metric *mls_prom_histogram(mls_prom_registry *reg, const char *name, const char *help,
                                    const char *const *labels, const double *bounds, size_t n,
                                    mls_err *err)
{
    return mls_prom_register(reg, MLS_PROM_TYPE_HISTOGRAM, name, help, labels, bounds, n, err);
}

void mls_prom_add(mls_prom_metric *m, double v)
{
    if (m == NULL || (m->fam->type == MLS_PROM_TYPE_COUNTER && !(v >= 0))) {
        return;
    }
    pthread_mutex_lock(&m->reg->mu);
    m->value += v;
    pthread_mutex_unlock(&m->reg->mu);
}

void mls_prom_set(mls_prom_metric *m, double v)
{
    if (m == NULL || m->fam->type != MLS_PROM_TYPE_GAUGE) {
        return;
    }
    pthread_mutex_lock(&m->reg->mu);
    m->value = v;
    pthread_mutex_unlock(&m->reg->mu);
}

void mls_prom_observe(mls_prom_metric *m, double v)
{
    size_t i;

    if (m == NULL || m->fam->type != MLS_PROM_TYPE_HISTOGRAM || isnan(v)) {
        return;
    }
    for (i = 0; i < m->n_bounds && v > m->bounds[i]; i++) {
    }
    pthread_mutex_lock(&m->reg->mu);
    m->buckets[i]++;
    m->sum += v;
    m->count++;
    pthread_mutex_unlock(&m->reg->mu);
}

double mls_prom_value(mls_prom_metric *m)
{
    double v;

    pthread_mutex_lock(&m->reg->mu);
    v = m->fam->type == MLS_PROM_TYPE_HISTOGRAM ? (double)m->count : m->value;
    pthread_mutex_unlock(&m->reg->mu);
    return v;
}

/* name + suffix + "{" labels [, extra] "}" */
static void mls_prom_put_series(mls_prom_buf *b, const mls_prom_family *f, const char *suffix,
                                const mls_prom_metric *m, const char *extra)
{
    mls_prom_puts(b, f->name);
    mls_prom_puts(b, suffix);
    if (m->labels[0] != '\0' || extra != NULL) {
        mls_prom_puts(b, "{");
        mls_prom_puts(b, m->labels);
        if (extra != NULL) {
            if (m->labels[0] != '\0') {
                mls_prom_puts(b, ",");
            }
            mls_prom_puts(b, extra);
        }
        mls_prom_puts(b, "}");
    }
    mls_prom_puts(b, " ");
}

mls_status mls_prom_render(mls_prom_registry *reg, char **text_p, size_t *len_p)
{
    mls_prom_buf b = MLS_PROM_BUF_INIT;
    const mls_prom_family *f;
    const mls_prom_metric *m;
    size_t i;

    mls_prom_put(&b, "", 0);
    pthread_mutex_lock(&reg->mu);
    for (f = reg->fams; f != NULL; f = f->next) {
        mls_prom_printf(&b, "# HELP %s ", f->name);
        mls_prom_put_escaped(&b, f->help, false);
        mls_prom_printf(&b, "\n# TYPE %s %s\n", f->name, mls_prom_type_names[f->type]);
        for (m = f->series; m != NULL; m = m->next) {
            if (f->type != MLS_PROM_TYPE_HISTOGRAM) {
                mls_prom_put_series(&b, f, "", m, NULL);
                mls_prom_put_double(&b, m->value);
                mls_prom_puts(&b, "\n");
                continue;
            }
            {
                uint64_t cum = 0;
                char le[64];
                for (i = 0; i <= m->n_bounds; i++) {
                    cum += m->buckets[i];
                    if (i < m->n_bounds) {
                        mls_prom_buf lb = MLS_PROM_BUF_INIT;
                        mls_prom_puts(&lb, "le=\"");
                        mls_prom_put_double(&lb, m->bounds[i]);
                        mls_prom_puts(&lb, "\"");
                        snprintf(le, sizeof(le), "%s", !lb.oom ? lb.buf.data : "le=\"0\"");
                        mls_buf_free(&lb.buf);
                    } else {
                        snprintf(le, sizeof(le), "le=\"+Inf\"");
                    }
                    mls_prom_put_series(&b, f, "_bucket", m, le);
                    mls_prom_printf(&b, "%llu\n", (unsigned long long)cum);
                }
                mls_prom_put_series(&b, f, "_sum", m, NULL);
                mls_prom_put_double(&b, m->sum);
                mls_prom_puts(&b, "\n");
                mls_prom_put_series(&b, f, "_count", m, NULL);
                mls_prom_printf(&b, "%llu\n", (unsigned long long)m->count);
            }
        }
    }
    pthread_mutex_unlock(&reg->mu);
    if (b.oom) {
        mls_buf_free(&b.buf);
        return MLS_ERR_NO_MEMORY;
    }
    *text_p = mls_buf_detach(&b.buf, len_p);
    return *text_p != NULL ? MLS_OK : MLS_ERR_NO_MEMORY;
}
