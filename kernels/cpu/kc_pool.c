/*
 * kc_pool.c - the persistent thread pool every kernel splits its work over.
 *
 * Decode calls the pool hundreds of times per token, so a dispatch must cost
 * microseconds: workers spin on the job generation for a while after each job
 * and only then sleep on a futex. A job is (fn, ctx, n_tasks); participants
 * (the caller included) claim task indices with a CAS on a 64-bit word that
 * holds (generation << 32 | next index), so a worker that wakes late for an
 * old generation can never claim a task of a newer job. The task count is
 * published with its generation in one word (job), and a worker reads it
 * first: a late worker must never pair an old generation's claim word with a
 * newer job's count (it would claim index n_old of the old generation and run
 * it with the new job's fn/ctx - a task run twice and counted in the new
 * job's done, seen by TSan as a race on the caller's stack). The caller
 * returns once every task of its job has completed, without waiting for
 * sleepers.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kc_internal.h"
#include "mls_log.h"
#include "mls_num.h"

#define KC_POOL_MAX_THREADS 256
#define KC_POOL_SPIN_NS     200000 /* how long an idle worker spins before sleeping */

struct kc_pool {
    int n_threads;
    pthread_t *threads;
    _Atomic(kc_task_fn) fn;
    _Atomic(void *) ctx;
    atomic_uint_fast64_t job;    /* generation << 32 | n_tasks of that job */
    atomic_uint_fast64_t next;   /* generation << 32 | next task index */
    atomic_int done;             /* tasks of the current job completed */
    atomic_uint gen;             /* futex word: bumped once per job */
    atomic_int sleepers;
    atomic_int stop;
};

static __thread int kc_tls_thread_index;

int kc_pool_thread_index(void)
{
    return kc_tls_thread_index;
}

static inline void kc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void kc_futex_wait(atomic_uint *word, unsigned seen)
{
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

static void kc_futex_wake_all(atomic_uint *word)
{
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Claims and runs tasks of generation g until none is left. */
static void kc_pool_work(kc_pool *pool, uint32_t g)
{
    uint64_t job = atomic_load_explicit(&pool->job, memory_order_acquire);
    kc_task_fn fn;
    void *ctx;
    int n;
    uint64_t v;

    if ((uint32_t)(job >> 32) != g) {
        return; /* a newer job replaced generation g: nothing of g is left */
    }
    n = (int)(job & 0xffffffffu);
    fn = atomic_load_explicit(&pool->fn, memory_order_acquire);
    ctx = atomic_load_explicit(&pool->ctx, memory_order_acquire);
    v = atomic_load_explicit(&pool->next, memory_order_acquire);

    for (;;) {
        if ((uint32_t)(v >> 32) != g || (int64_t)(v & 0xffffffffu) >= n) {
            return;
        }
        if (atomic_compare_exchange_weak_explicit(&pool->next, &v, v + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            fn(ctx, (int)(v & 0xffffffffu), n);
            atomic_fetch_add_explicit(&pool->done, 1, memory_order_release);
            v = atomic_load_explicit(&pool->next, memory_order_acquire);
        }
    }
}

typedef struct {
    kc_pool *pool;
    int index;
} kc_worker_arg;

static void *kc_pool_worker(void *arg_)
{
    kc_worker_arg *arg = arg_;
    kc_pool *pool = arg->pool;
    unsigned seen = 0;

    kc_tls_thread_index = arg->index;
    free(arg);
    for (;;) {
        unsigned g = atomic_load_explicit(&pool->gen, memory_order_acquire);
        if (g == seen && !atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            uint64_t t0 = mls_now_ns();
            for (int i = 0; g == seen; i++) {
                kc_cpu_relax();
                g = atomic_load_explicit(&pool->gen, memory_order_acquire);
                if ((i & 255) == 255 && mls_now_ns() - t0 > KC_POOL_SPIN_NS) {
                    break;
                }
            }
            if (g == seen) {
                atomic_fetch_add(&pool->sleepers, 1);
                while ((g = atomic_load(&pool->gen)) == seen && !atomic_load(&pool->stop)) {
                    kc_futex_wait(&pool->gen, seen);
                }
                atomic_fetch_sub(&pool->sleepers, 1);
            }
        }
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            break;
        }
        seen = g;
        kc_pool_work(pool, g);
    }
    kc_scratch_release();
    return NULL;
}

mls_status kc_pool_create(int n_threads, kc_pool **pool_p)
{
    kc_pool *pool;

    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > KC_POOL_MAX_THREADS) {
        n_threads = KC_POOL_MAX_THREADS;
    }
    pool = calloc(1, sizeof(*pool));
    if (pool == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (pool->threads == NULL) {
        goto err_free_pool;
    }
    pool->n_threads = 1;
    for (int i = 1; i < n_threads; i++) {
        kc_worker_arg *arg = malloc(sizeof(*arg));
        int rc;
        if (arg == NULL) {
            goto err_stop_workers;
        }
        arg->pool = pool;
        arg->index = i;
        rc = pthread_create(&pool->threads[i], NULL, kc_pool_worker, arg);
        if (rc != 0) {
            free(arg);
            mls_error("kc_pool_create: pthread_create failed (%d)", rc);
            goto err_stop_workers;
        }
        pool->n_threads = i + 1;
    }
    *pool_p = pool;
    return MLS_OK;

err_stop_workers:
    kc_pool_destroy(pool);
    return MLS_ERR_NO_MEMORY;
err_free_pool:
    free(pool);
    return MLS_ERR_NO_MEMORY;
}

void kc_pool_destroy(kc_pool *pool)
{
    if (pool == NULL) {
        return;
    }
    atomic_store(&pool->stop, 1);
    atomic_fetch_add(&pool->gen, 1);
    kc_futex_wake_all(&pool->gen);
    for (int i = 1; i < pool->n_threads; i++) {
        pthread_join(pool->threads[i], NULL);
    }
    free(pool->threads);
    free(pool);
}

int kc_pool_size(const kc_pool *pool)
{
    return pool ? pool->n_threads : 1;
}

void kc_pool_run(kc_pool *pool, kc_task_fn fn, void *ctx, int n_tasks)
{
    unsigned g;
    int saved_index = kc_tls_thread_index;

    if (n_tasks <= 0) {
        return;
    }
    if (pool == NULL || pool->n_threads == 1 || n_tasks == 1) {
        kc_tls_thread_index = 0;
        for (int i = 0; i < n_tasks; i++) {
            fn(ctx, i, n_tasks);
        }
        kc_tls_thread_index = saved_index;
        return;
    }
    g = atomic_load_explicit(&pool->gen, memory_order_relaxed) + 1;
    atomic_store_explicit(&pool->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool->done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->job, (uint64_t)g << 32 | (uint32_t)n_tasks, memory_order_release);
    atomic_store_explicit(&pool->next, (uint64_t)g << 32, memory_order_release);
    atomic_store(&pool->gen, g); /* seq_cst: pairs with the sleepers check below */
    if (atomic_load(&pool->sleepers) > 0) {
        kc_futex_wake_all(&pool->gen);
    }
    kc_tls_thread_index = 0;
    kc_pool_work(pool, g);
    for (int i = 0; atomic_load_explicit(&pool->done, memory_order_acquire) < n_tasks; i++) {
        kc_cpu_relax();
        if (i > 4096) {
            sched_yield();
        }
    }
    kc_tls_thread_index = saved_index;
}

/* ---- per-thread scratch --------------------------------------------------- */

#define KC_SCRATCH_SLOTS 4

static __thread void *kc_scratch_ptr[KC_SCRATCH_SLOTS];
static __thread size_t kc_scratch_size[KC_SCRATCH_SLOTS];
static pthread_key_t kc_scratch_key;
static pthread_once_t kc_scratch_key_once = PTHREAD_ONCE_INIT;

/* Any thread that took scratch (pool workers and callers alike) gives it
 * back when it exits. */
static void kc_scratch_at_exit(void *unused)
{
    (void)unused;
    kc_scratch_release();
}

static void kc_scratch_key_init(void)
{
    pthread_key_create(&kc_scratch_key, kc_scratch_at_exit);
}

void *kc_scratch_get(int slot, size_t bytes)
{
    if (bytes > kc_scratch_size[slot]) {
        pthread_once(&kc_scratch_key_once, kc_scratch_key_init);
        pthread_setspecific(kc_scratch_key, (void *)1);
        void *p = NULL;
        size_t sz = bytes + bytes / 4 + 4096;
        sz = (sz + 63) & ~(size_t)63;
        if (posix_memalign(&p, 64, sz) != 0) {
            return NULL;
        }
        free(kc_scratch_ptr[slot]);
        kc_scratch_ptr[slot] = p;
        kc_scratch_size[slot] = sz;
    }
    return kc_scratch_ptr[slot];
}

void kc_scratch_release(void)
{
    for (int i = 0; i < KC_SCRATCH_SLOTS; i++) {
        free(kc_scratch_ptr[i]);
        kc_scratch_ptr[i] = NULL;
        kc_scratch_size[i] = 0;
    }
}
