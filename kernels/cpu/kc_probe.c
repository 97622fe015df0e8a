/*
 * kc_probe.c - the machine's roofs, measured with the active ISA's kernels on
 * every thread of a pool: memory read bandwidth over one contiguous buffer and
 * over scattered pages, and f32 FMA throughput. The benches report kernel
 * speed as a fraction of these.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kc_internal.h"
#include "mls_num.h"

/* ---- read bandwidth ------------------------------------------------------------ */

typedef struct {
    const kc_ops *ops;
    const uint8_t *buf;
    size_t per_task;
    _Atomic uint64_t sink;
} kc_bw_job;

static void kc_bw_task(void *ctx, int task, int n_tasks)
{
    kc_bw_job *j = ctx;
    (void)n_tasks;
    atomic_fetch_add_explicit(&j->sink, j->ops->read_sum(j->buf + (size_t)task * j->per_task,
                                                         j->per_task, NULL),
                              memory_order_relaxed);
}

/* Keeps the checksum observable so the reads cannot be optimized away. */
static volatile uint64_t kc_bw_sink;

double kc_measure_read_bandwidth(kc_pool *pool, size_t bytes, int reps)
{
    int nt = kc_pool_size(pool) * 8; /* small tasks balance a late-waking worker */
    size_t per = bytes / (size_t)nt / 256 * 256;
    kc_bw_job j;
    uint8_t *buf = NULL;
    double best = 0.0;

    if (per == 0 || reps <= 0 || posix_memalign((void **)&buf, 64, per * (size_t)nt) != 0) {
        return 0.0;
    }
    for (size_t i = 0; i < per * (size_t)nt; i += 4096) {
        memset(buf + i, (int)(i >> 12), per * (size_t)nt - i < 4096 ? per * (size_t)nt - i : 4096);
    }
    j.ops = kc_ops_active();
    j.buf = buf;
    j.per_task = per;
    atomic_init(&j.sink, 0);
    for (int r = 0; r < reps + 1; r++) { /* the first pass warms the pages and the pool */
        double t0 = mls_now_s(), dt;
        kc_pool_run(pool, kc_bw_task, &j, nt);
        dt = mls_now_s() - t0;
        if (r > 0 && dt > 0 && (double)(per * (size_t)nt) / dt > best) {
            best = (double)(per * (size_t)nt) / dt;
        }
    }
    kc_bw_sink = atomic_load(&j.sink);
    free(buf);
    return best;
}

typedef struct {
    const kc_ops *ops;
    const uint8_t *base;
    const uint32_t *pages;
    int64_t n_pages;
    size_t page_bytes;
    _Atomic uint64_t sink;
} kc_paged_job;

static void kc_paged_task(void *ctx, int task, int n_tasks)
{
    kc_paged_job *j = ctx;
    int64_t a = j->n_pages * task / n_tasks, b = j->n_pages * (task + 1) / n_tasks;
    size_t bytes = j->page_bytes / 256 * 256;
    uint64_t sum = 0;
    /* the next page is prefetched while one is read: the hardware
     * prefetcher alone restarts at every page */
    for (int64_t i = a; i < b; i++) {
        const uint8_t *next =
            i + 1 < b ? j->base + (size_t)j->pages[i + 1] * j->page_bytes : NULL;
        sum += j->ops->read_sum(j->base + (size_t)j->pages[i] * j->page_bytes, bytes, next);
    }
    atomic_fetch_add_explicit(&j->sink, sum, memory_order_relaxed);
}

double kc_measure_paged_read(kc_pool *pool, const uint8_t *base, const uint32_t *pages,
                             int64_t n_pages, size_t page_bytes)
{
    kc_paged_job j;
    double t0, dt;
    int nt = kc_pool_size(pool) * 8;

    if (n_pages <= 0 || page_bytes < 256) {
        return 0.0;
    }
    j.ops = kc_ops_active();
    j.base = base;
    j.pages = pages;
    j.n_pages = n_pages;
    j.page_bytes = page_bytes;
    atomic_init(&j.sink, 0);
    t0 = mls_now_s();
    kc_pool_run(pool, kc_paged_task, &j, nt < n_pages ? nt : (int)n_pages);
    dt = mls_now_s() - t0;
    kc_bw_sink = atomic_load(&j.sink);
    return dt > 0 ? (double)n_pages * (double)(page_bytes / 256 * 256) / dt : 0.0;
}

/* ---- peak FMA throughput ------------------------------------------------------------ */

typedef struct {
    const kc_ops *ops;
    int64_t iters;
    _Atomic float sink;
} kc_flops_job;

static void kc_flops_task(void *ctx, int task, int n_tasks)
{
    kc_flops_job *j = ctx;
    (void)task;
    (void)n_tasks;
    atomic_store_explicit(&j->sink, j->ops->fma_loop(j->iters), memory_order_relaxed);
}

static volatile float kc_flops_sink;

double kc_measure_peak_flops(kc_pool *pool, int reps)
{
    kc_flops_job j;
    int nt = kc_pool_size(pool);
    double best = 0.0;

    j.ops = kc_ops_active();
    j.iters = j.ops->lanes == 1 ? 2000000 : 4000000 / j.ops->lanes * 4;
    atomic_init(&j.sink, 0.0f);
    for (int r = 0; r < reps + 1; r++) { /* the first pass wakes the workers */
        double t0 = mls_now_s(), dt;
        kc_pool_run(pool, kc_flops_task, &j, nt);
        dt = mls_now_s() - t0;
        if (r > 0 && dt > 0) {
            double f = (double)nt * (double)j.iters * KC_FMA_CHAINS * j.ops->lanes * 2.0 / dt;
            best = f > best ? f : best;
        }
    }
    kc_flops_sink = atomic_load(&j.sink);
    return best;
}
