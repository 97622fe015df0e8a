/*
 * bench_cuda.c - mlaserve-bench-cuda: device memory bandwidth and the paged
 * MLA decode kernel's achieved bandwidth as a ratio to it.
 *
 * 1. Copy bandwidth: cudaMemcpy device-to-device of a 1 GiB buffer, counted
 *    as bytes read + written per second (min/median/max over reps).
 * 2. MLA decode (kcu_mla_decode) for bf16 and fp8 KV (R=512, D=64, the
 *    DeepSeek-V3 rows), heads 16/64/128, batch 1..128, context 1k..64k: the
 *    unique bytes a step must move (every KV row once, q in, out) per second,
 *    min/median/max over reps, and median / median copy bandwidth. Each rep
 *    runs enough back-to-back steps to last >= 2 ms; steps rotate over copies
 *    of the KV pages so small cases do not run out of L2.
 *
 * Usage: mlaserve-bench-cuda [--json] [--json-out FILE] [--quick] [--reps N] [--device N]
 * (--json: JSON instead of the table on stdout; --json-out: the table on
 * stdout and the JSON into FILE.)
 * Exit 77 when no CUDA device is usable (like a skipped test).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_stat.h"
#include "kcu.h"
#include "mls_num.h"

#define BENCH_MAX_REPS 64
#define BENCH_ROTATE_BYTES (512ull << 20) /* >> the 50-60 MB L2 of H100/H200 */

static bench_stat bench_copy(kcu_ctx *ctx, int reps, mls_err *err, mls_status *st_p)
{
    const size_t bytes = 1ull << 30;
    double bw[BENCH_MAX_REPS];
    bench_stat s = {0, 0, 0};
    void *src = NULL, *dst = NULL;

    *st_p = kcu_malloc(bytes, &src, err);
    if (*st_p != MLS_OK || (*st_p = kcu_malloc(bytes, &dst, err)) != MLS_OK) {
        goto out_free;
    }
    if ((*st_p = kcu_memset(ctx, src, 0x5a, bytes, err)) != MLS_OK ||
        (*st_p = kcu_memcpy_d2d(ctx, dst, src, bytes, err)) != MLS_OK ||
        (*st_p = kcu_ctx_sync(ctx, err)) != MLS_OK) {
        goto out_free;
    }
    for (int r = 0; r < reps; r++) {
        const int iters = 4;
        double t0 = mls_now_s();
        for (int i = 0; i < iters; i++) {
            if ((*st_p = kcu_memcpy_d2d(ctx, dst, src, bytes, err)) != MLS_OK) {
                goto out_free;
            }
        }
        if ((*st_p = kcu_ctx_sync(ctx, err)) != MLS_OK) {
            goto out_free;
        }
        bw[r] = 2.0 * (double)bytes * iters / (mls_now_s() - t0);
    }
    s = bench_stat_of(bw, reps);
out_free:
    kcu_free(dst);
    kcu_free(src);
    return s;
}

typedef struct {
    kvl_dtype dtype;
    int heads, batch, ctx_len;
    bench_stat gbs;
    double us_med, tflops_med, ratio;
    int block_rows, parts;
} mla_result;

/* One configuration; the KV pool (device, pool_bytes) is shared by all. */
static mls_status bench_mla_one(kcu_ctx *ctx, uint8_t *pool, size_t pool_bytes, int reps,
                                double copy_med, mla_result *res, mls_err *err)
{
    const uint32_t R = 512, D = 64;
    kvl_layout l;
    mls_status st = kvl_layout_init(res->dtype, R, D, 0, &l);
    const int B = res->batch, H = res->heads, len = res->ctx_len;
    const int pages_per_seq = (len + (int)KVL_PAGE_TOKENS - 1) / (int)KVL_PAGE_TOKENS;
    const uint64_t kv_bytes = (uint64_t)B * len * l.row_bytes;
    const uint64_t pages_per_copy = (uint64_t)B * pages_per_seq;
    uint64_t copies = (BENCH_ROTATE_BYTES + kv_bytes - 1) / kv_bytes;
    uint32_t *table = NULL;
    int32_t *lens = NULL;
    void *d_table = NULL, *d_lens = NULL, *d_q = NULL, *d_qr = NULL, *d_out = NULL, *d_ws = NULL;
    double bw[BENCH_MAX_REPS], us[BENCH_MAX_REPS];
    kcu_mla_plan plan;

    if (st != MLS_OK) {
        return st;
    }
    if (copies * pages_per_copy * l.page_bytes > pool_bytes) {
        copies = pool_bytes / (pages_per_copy * l.page_bytes);
    }
    if (copies < 1) {
        mls_err_set(err, "KV of %llu bytes does not fit the %zu-byte pool",
                    (unsigned long long)kv_bytes, pool_bytes);
        return MLS_ERR_NO_MEMORY;
    }
    table = malloc(copies * pages_per_copy * sizeof(uint32_t));
    lens = malloc((size_t)B * sizeof(int32_t));
    if (table == NULL || lens == NULL) {
        st = MLS_ERR_NO_MEMORY;
        goto out_free;
    }
    for (uint64_t i = 0; i < copies * pages_per_copy; i++) {
        table[i] = (uint32_t)i;
    }
    for (int b = 0; b < B; b++) {
        lens[b] = len;
    }
    const size_t rows = (size_t)B * H;
    if ((st = kcu_malloc(copies * pages_per_copy * sizeof(uint32_t), &d_table, err)) != MLS_OK ||
        (st = kcu_malloc((size_t)B * sizeof(int32_t), &d_lens, err)) != MLS_OK ||
        (st = kcu_malloc(rows * R * sizeof(float), &d_q, err)) != MLS_OK ||
        (st = kcu_malloc(rows * D * sizeof(float), &d_qr, err)) != MLS_OK ||
        (st = kcu_malloc(rows * R * sizeof(float), &d_out, err)) != MLS_OK ||
        (st = kcu_memcpy_h2d(ctx, d_table, table, copies * pages_per_copy * sizeof(uint32_t),
                             err)) != MLS_OK ||
        (st = kcu_memcpy_h2d(ctx, d_lens, lens, (size_t)B * sizeof(int32_t), err)) != MLS_OK ||
        (st = kcu_memset(ctx, d_q, 0x3c, rows * R * sizeof(float), err)) != MLS_OK ||
        (st = kcu_memset(ctx, d_qr, 0x3c, rows * D * sizeof(float), err)) != MLS_OK) {
        goto out_free;
    }
    kcu_mla_params p = {
        .layout = &l, .kv_base = pool, .n_seqs = B, .n_q = 1, .n_heads = H,
        .softmax_scale = 0.0723f, .seq_lens = d_lens, .max_kv_len = len,
        .page_table = d_table, .page_table_stride = pages_per_seq, .q_latent = d_q,
        .q_rope = d_qr, .out = d_out,
    };
    if ((st = kcu_mla_plan_make(ctx, &p, &plan, err)) != MLS_OK ||
        (st = kcu_malloc(plan.workspace_bytes, &d_ws, err)) != MLS_OK) {
        goto out_free;
    }
    /* warm up, and size a rep to >= 2 ms */
    double t0 = mls_now_s();
    if ((st = kcu_mla_decode(ctx, &p, &plan, d_ws, plan.workspace_bytes, err)) != MLS_OK ||
        (st = kcu_ctx_sync(ctx, err)) != MLS_OK) {
        goto out_free;
    }
    double one = mls_now_s() - t0;
    int iters = one > 0 ? (int)(2e-3 / one) + 1 : 1;
    iters = iters < 2 ? 2 : (iters > 2000 ? 2000 : iters);
    for (int r = 0; r < reps; r++) {
        t0 = mls_now_s();
        for (int i = 0; i < iters; i++) {
            p.page_table = (const uint32_t *)d_table + ((uint64_t)(r * iters + i) % copies) * pages_per_copy;
            if ((st = kcu_mla_decode(ctx, &p, &plan, d_ws, plan.workspace_bytes, err)) != MLS_OK) {
                goto out_free;
            }
        }
        if ((st = kcu_ctx_sync(ctx, err)) != MLS_OK) {
            goto out_free;
        }
        double dt = (mls_now_s() - t0) / iters;
        double bytes = (double)kv_bytes + (double)rows * (R + D) * 4 + (double)rows * R * 4;
        bw[r] = bytes / dt;
        us[r] = dt * 1e6;
    }
    res->gbs = bench_stat_of(bw, reps);
    {
        bench_stat u = bench_stat_of(us, reps);
        res->us_med = u.med;
    }
    res->tflops_med = (double)B * len * H * (2.0 * (R + D) + 2.0 * R) / (res->us_med * 1e-6) / 1e12;
    res->ratio = copy_med > 0 ? res->gbs.med / copy_med : 0;
    res->block_rows = plan.block_rows;
    res->parts = plan.n_parts;
out_free:
    kcu_free(d_ws);
    kcu_free(d_out);
    kcu_free(d_qr);
    kcu_free(d_q);
    kcu_free(d_lens);
    kcu_free(d_table);
    free(lens);
    free(table);
    return st;
}

int main(int argc, char **argv)
{
    bool json = false, quick = false;
    const char *json_path = NULL;
    FILE *jf = NULL;
    int reps = 9, device = 0, n_dev = 0;
    mls_err err = {{0}};
    mls_status st;
    kcu_ctx *ctx = NULL;
    static const int heads[] = {16, 64, 128};
    static const int batches_full[] = {1, 8, 32, 64, 128}, batches_quick[] = {1, 32, 128};
    static const int ctxs_full[] = {1024, 4096, 16384, 65536}, ctxs_quick[] = {1024, 16384, 65536};

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--json-out") == 0 && i + 1 < argc) {
            json_path = argv[++i];
        } else if (strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            device = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--json] [--json-out FILE] [--quick] [--reps N] [--device N]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1 || reps > BENCH_MAX_REPS) {
        fprintf(stderr, "--reps must be 1..%d\n", BENCH_MAX_REPS);
        return 2;
    }
    if (kcu_device_count(&n_dev, &err) != MLS_OK) {
        fprintf(stderr, "SKIP: no CUDA device: %s\n", err.msg);
        return 77;
    }
    if ((st = kcu_ctx_create(device, &ctx, &err)) != MLS_OK) {
        fprintf(stderr, "SKIP: %s: %s\n", mls_status_name(st), err.msg);
        return 77;
    }
    bench_stat copy = bench_copy(ctx, reps, &err, &st);
    if (st != MLS_OK) {
        fprintf(stderr, "copy bandwidth: %s: %s\n", mls_status_name(st), err.msg);
        kcu_ctx_destroy(ctx);
        return 1;
    }
    const int *batches = quick ? batches_quick : batches_full;
    const int *ctxs = quick ? ctxs_quick : ctxs_full;
    const int nb = quick ? 3 : 5, nc = quick ? 3 : 4;
    /* one pool for every case: the largest bf16 KV (128 x 64k x 1152 B) */
    kvl_layout big;
    kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 0, &big);
    size_t pool_bytes = (size_t)batches[nb - 1] * (size_t)(ctxs[nc - 1] / KVL_PAGE_TOKENS) *
                        big.page_bytes;
    if (pool_bytes < 2 * BENCH_ROTATE_BYTES) {
        pool_bytes = 2 * BENCH_ROTATE_BYTES;
    }
    void *pool = NULL;
    if ((st = kcu_malloc(pool_bytes, &pool, &err)) != MLS_OK ||
        (st = kcu_memset(ctx, pool, 0x3c, pool_bytes, &err)) != MLS_OK) {
        fprintf(stderr, "KV pool of %zu bytes: %s: %s\n", pool_bytes, mls_status_name(st), err.msg);
        kcu_ctx_destroy(ctx);
        return 1;
    }
    jf = json ? stdout : NULL;
    if (json_path != NULL && (jf = fopen(json_path, "w")) == NULL) {
        fprintf(stderr, "%s: cannot open for writing\n", json_path);
        kcu_free(pool);
        kcu_ctx_destroy(ctx);
        return 1;
    }
    if (jf != NULL) {
        fprintf(jf, "{\n  \"device\": \"%s\",\n  \"reps\": %d,\n", kcu_ctx_device_name(ctx), reps);
        fprintf(jf, "  \"copy_gbs\": {\"min\": %.1f, \"median\": %.1f, \"max\": %.1f},\n  \"mla\": [",
                copy.min / 1e9, copy.med / 1e9, copy.max / 1e9);
    }
    if (!json) {
        printf("device: %s\n", kcu_ctx_device_name(ctx));
        printf("D2D copy bandwidth (read+write): min %.1f  median %.1f  max %.1f GB/s\n",
               copy.min / 1e9, copy.med / 1e9, copy.max / 1e9);
        printf("MLA decode, R=512 D=64, n_q=1, mma.sync bf16, ratio = median / median copy\n");
        printf("%-5s %5s %5s %6s %4s %5s %10s %8s %8s %8s %7s %7s\n", "kv", "heads", "batch",
               "ctx", "rows", "parts", "us(med)", "GB/s min", "med", "max", "TFLOPS", "ratio");
    }
    int first = 1, failures = 0;
    for (int d = 0; d < 2; d++) {
        for (int h = 0; h < 3; h++) {
            for (int b = 0; b < nb; b++) {
                for (int c = 0; c < nc; c++) {
                    mla_result r;
                    memset(&r, 0, sizeof(r));
                    r.dtype = d ? KVL_DTYPE_FP8 : KVL_DTYPE_BF16;
                    r.heads = heads[h];
                    r.batch = batches[b];
                    r.ctx_len = ctxs[c];
                    st = bench_mla_one(ctx, pool, pool_bytes, reps, copy.med, &r, &err);
                    if (st != MLS_OK) {
                        fprintf(stderr, "%s h%d b%d ctx%d: %s: %s\n", kvl_dtype_name(r.dtype),
                                r.heads, r.batch, r.ctx_len, mls_status_name(st), err.msg);
                        failures++;
                        if (mls_status_group_of(st) == MLS_STATUS_GROUP_FATAL) {
                            goto out;
                        }
                        continue;
                    }
                    if (jf != NULL) {
                        fprintf(jf, "%s\n    {\"kv\": \"%s\", \"heads\": %d, \"batch\": %d, \"ctx\": %d, "
                               "\"block_rows\": %d, \"parts\": %d, \"us_median\": %.2f, "
                               "\"gbs_min\": %.1f, \"gbs_median\": %.1f, \"gbs_max\": %.1f, "
                               "\"tflops_median\": %.1f, \"ratio\": %.3f}",
                               first ? "" : ",", kvl_dtype_name(r.dtype), r.heads, r.batch,
                               r.ctx_len, r.block_rows, r.parts, r.us_med, r.gbs.min / 1e9,
                               r.gbs.med / 1e9, r.gbs.max / 1e9, r.tflops_med, r.ratio);
                    }
                    if (!json) {
                        printf("%-5s %5d %5d %6d %4d %5d %10.1f %8.1f %8.1f %8.1f %7.1f %7.3f\n",
                               kvl_dtype_name(r.dtype), r.heads, r.batch, r.ctx_len, r.block_rows,
                               r.parts, r.us_med, r.gbs.min / 1e9, r.gbs.med / 1e9,
                               r.gbs.max / 1e9, r.tflops_med, r.ratio);
                    }
                    fflush(stdout);
                    first = 0;
                }
            }
        }
    }
out:
    if (jf != NULL) {
        fprintf(jf, "\n  ],\n  \"failures\": %d\n}\n", failures);
        if (jf != stdout) {
            fclose(jf);
        }
    }
    kcu_free(pool);
    kcu_ctx_destroy(ctx);
    return failures ? 1 : 0;
}
