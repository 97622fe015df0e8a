/*
 * mls_prom.h - Prometheus text exposition (format 0.0.4) for the router's
 * and the nodes' /metrics: counters, gauges and histograms in a registry.
 *
 * Names follow the vLLM conventions operators already chart, with the
 * "mlaserve:" prefix instead of "vllm:" (MLS_PROM_* below). Colons are legal
 * in Prometheus metric names and mark them as "recorded" families, as vLLM
 * does.
 *
 * A metric is one series: a name plus a fixed set of label pairs given at
 * registration (e.g. errors by status: name "mlaserve:request_errors_total",
 * label status="ERR_BUSY"). Series sharing a name form one family: they share
 * HELP/TYPE and must have the same type. Updates are thread-safe (one mutex
 * per registry) so compute threads may observe too; rendering takes a
 * consistent snapshot.
 *
 * Ownership: metrics belong to their registry and die with it.
 */
#ifndef MLS_PROM_H
#define MLS_PROM_H

#include <stddef.h>

#include "mls_status.h"

/* vLLM-style names, mlaserve-prefixed. */
#define MLS_PROM_TTFT            "mlaserve:time_to_first_token_seconds"       /* histogram */
#define MLS_PROM_TPOT            "mlaserve:time_per_output_token_seconds"     /* histogram */
#define MLS_PROM_E2E             "mlaserve:e2e_request_latency_seconds"       /* histogram */
#define MLS_PROM_QUEUE_TIME      "mlaserve:request_queue_time_seconds"        /* histogram */
#define MLS_PROM_RUNNING         "mlaserve:num_requests_running"              /* gauge */
#define MLS_PROM_WAITING         "mlaserve:num_requests_waiting"              /* gauge */
#define MLS_PROM_KV_PAGES_USED   "mlaserve:kv_pages_used"                     /* gauge */
#define MLS_PROM_KV_PAGES_FREE   "mlaserve:kv_pages_free"                     /* gauge */
#define MLS_PROM_KV_USAGE        "mlaserve:kv_cache_usage_perc"               /* gauge 0..1 */
#define MLS_PROM_PROMPT_TOKENS   "mlaserve:prompt_tokens_total"               /* counter */
#define MLS_PROM_GEN_TOKENS      "mlaserve:generation_tokens_total"           /* counter */
#define MLS_PROM_REQUESTS        "mlaserve:request_success_total"             /* counter, finished_reason */
#define MLS_PROM_ERRORS          "mlaserve:request_errors_total"              /* counter, status */
#define MLS_PROM_KV_XFER_BYTES   "mlaserve:kv_transfer_bytes_total"           /* counter */
#define MLS_PROM_KV_XFER_SECONDS "mlaserve:kv_transfer_seconds"               /* histogram */

/* Bucket upper bounds used by vLLM for the latency histograms. */
extern const double mls_prom_buckets_ttft[];        /* 0.001 .. 2560 s */
extern const size_t mls_prom_buckets_ttft_n;
extern const double mls_prom_buckets_tpot[];        /* 0.01 .. 80 s */
extern const size_t mls_prom_buckets_tpot_n;
extern const double mls_prom_buckets_e2e[];         /* 0.3 .. 7680 s */
extern const size_t mls_prom_buckets_e2e_n;

typedef struct mls_prom_registry mls_prom_registry;
typedef struct mls_prom_metric mls_prom_metric;

mls_status mls_prom_registry_create(mls_prom_registry **reg_p);
void mls_prom_registry_destroy(mls_prom_registry *reg);

/*
 * Register a series. labels: NULL-terminated list of name, value pairs
 * ("status", "ERR_BUSY", NULL) or NULL for none; values are escaped, names
 * must match [a-zA-Z_][a-zA-Z0-9_]*. Registering the same name + labels again
 * returns the existing series. NULL on an invalid name, a type clash with the
 * family, or out of memory (err says which).
 */
mls_prom_metric *mls_prom_counter(mls_prom_registry *reg, const char *name, const char *help,
                                  const char *const *labels, mls_err *err);
mls_prom_metric *mls_prom_gauge(mls_prom_registry *reg, const char *name, const char *help,
                                const char *const *labels, mls_err *err);
/* bounds: strictly increasing finite upper bounds (n >= 1); +Inf is implied. */
mls_prom_metric *mls_prom_histogram(mls_prom_registry *reg, const char *name, const char *help,
                                    const char *const *labels, const double *bounds, size_t n,
                                    mls_err *err);

/* Counters: add v >= 0 (negative is ignored). Gauges: add any v, or set. */
void mls_prom_add(mls_prom_metric *m, double v);
void mls_prom_set(mls_prom_metric *m, double v);
/* Histograms: record one observation. */
void mls_prom_observe(mls_prom_metric *m, double v);
/* Current value (counter/gauge) or observation count (histogram). */
double mls_prom_value(mls_prom_metric *m);

/* Render every family; *text_p is malloc'd (free()), *len_p its length. */
mls_status mls_prom_render(mls_prom_registry *reg, char **text_p, size_t *len_p);

/* The Content-Type of the rendering. */
#define MLS_PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
