/*
 * kc_matmul.c - matmul drivers: split the output over the pool and call the
 * active ISA's kernel on each slice.
 *
 * kc_matmul splits W's rows (so each thread streams its own rows of W exactly
 * once: GEMV is memory-bound); kc_matmul_t splits W's columns in multiples of
 * 64. Small problems run on the calling thread (a dispatch costs ~1-2 us).
 */
#include "kc_internal.h"

#define KC_MM_MIN_PARALLEL_MACS (48 * 1024)

typedef struct {
    const kc_ops *ops;
    const kc_matrix *w;
    const float *x;
    int64_t n;
    float *y;
    int64_t split;  /* rows (or columns) per task, a multiple of the alignment */
    int64_t total;  /* rows (or columns) in all */
} kc_mm_job;

static void kc_mm_task(void *ctx, int task, int n_tasks)
{
    kc_mm_job *j = ctx;
    int64_t b = (int64_t)task * j->split, e = b + j->split;
    (void)n_tasks;
    if (e > j->total) {
        e = j->total;
    }
    if (b < e) {
        j->ops->matmul_rows(j->w, j->x, j->n, j->y + b, j->w->rows, b, e);
    }
}

static void kc_mmt_task(void *ctx, int task, int n_tasks)
{
    kc_mm_job *j = ctx;
    int64_t b = (int64_t)task * j->split, e = b + j->split;
    (void)n_tasks;
    if (e > j->total) {
        e = j->total;
    }
    if (b < e) {
        j->ops->matmul_t_cols(j->w, j->x, j->n, j->y, j->w->cols, b, e);
    }
}

/* Tasks of `align`-multiple slices covering total, about one per thread. */
static int kc_mm_plan(kc_pool *pool, int64_t total, int64_t align, double macs, int64_t *split_p)
{
    int nt = kc_pool_size(pool);
    int64_t split;
    if (macs < KC_MM_MIN_PARALLEL_MACS || nt == 1) {
        *split_p = total;
        return 1;
    }
    /* a few tasks per thread: a worker that is descheduled for a moment
     * (shared cores) leaves its slices to the others instead of stalling all */
    split = (total + 4 * nt - 1) / (4 * nt);
    split = (split + align - 1) / align * align;
    if (split <= 0) {
        split = align;
    }
    *split_p = split;
    return (int)((total + split - 1) / split);
}

void kc_matmul(kc_pool *pool, const kc_matrix *w, const float *x, int64_t n, float *y)
{
    kc_mm_job j = {kc_ops_active(), w, x, n, y, 0, w->rows};
    int tasks;
    if (n <= 0 || w->rows <= 0) {
        return;
    }
    tasks = kc_mm_plan(pool, w->rows, 16, (double)n * w->rows * w->cols, &j.split);
    kc_pool_run(tasks > 1 ? pool : NULL, kc_mm_task, &j, tasks);
}

void kc_matmul_t(kc_pool *pool, const kc_matrix *w, const float *x, int64_t n, float *y)
{
    kc_mm_job j = {kc_ops_active(), w, x, n, y, 0, w->cols};
    int tasks;
    if (n <= 0 || w->cols <= 0) {
        return;
    }
    tasks = kc_mm_plan(pool, w->cols, 64, (double)n * w->rows * w->cols, &j.split);
    kc_pool_run(tasks > 1 ? pool : NULL, kc_mmt_task, &j, tasks);
}
