/*
 * bench_kernels.c - `mlaserve bench kernels`: CPU kernel throughput against
 * this machine's own roofline, measured in the same run.
 *
 *   memory read bandwidth (streaming read, all threads) and peak f32 FMA
 *   FLOP/s: the two roofs; their ratio is the machine balance (FLOP/byte).
 *   MLA decode attention over paged bf16 / fp8 latent KV, 1, 4, 16 and 128 heads,
 *   contexts 4k..128k, batch 1..32: achieved bandwidth (KV + query bytes per
 *   second) as a fraction of the measured bandwidth, GFLOP/s, arithmetic
 *   intensity, and whether the case is memory- or compute-bound here
 *   (intensity below or above the machine balance).
 *   GEMV (decode projections, weights larger than LLC): bandwidth fraction.
 *   GEMM (prefill, 512 tokens): GFLOP/s and fraction of the FMA peak.
 *   DeepSeek-V4 decode at V4-Flash's dimensions, 128k and 1M context (16k with
 *   --quick): indexer scores + top-512 over context/4 FP4 keys, sparse
 *   attention over window 128 + 512 entries, HCA over window 128 +
 *   context/128 entries; each against the bound that applies (all three are
 *   compute-bound on a CPU: FMA peak), with a paired FMA-peak probe per rep.
 *
 * Every figure is min / median / max over --reps runs. Each rep of a case is
 * paired with a read-bandwidth probe taken just before it (one pass over as
 * many bytes as the rep streams), and the bandwidth ratios are the per-rep
 * ratios, so that a shared, noisy machine whose load changes during the run
 * still compares like with like; the run-wide figures head the report. Cases
 * whose data is smaller than 256 MiB (64 MiB with --quick) cycle through
 * copies of it, so that nothing is timed out of the last-level cache. The MLA
 * cases are also divided by a plain read of the same shuffled 64-token pages
 * (taken in the same rep): the ceiling the paged layout itself leaves a
 * kernel, apart from the contiguous-buffer probe.
 * --json prints one JSON object with the same content.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_stat.h"
#include "kc.h"
#include "mls_cli.h"
#include "mls_kv_layout.h"
#include "mls_num.h"

#define BK_MAX_REPS 64

typedef struct {
    int json;
    int quick;
    int threads;
    int reps;
} bk_opts;

typedef struct {
    kc_pool *pool;
    bk_opts o;
    double bw;     /* median measured read bandwidth, bytes/s */
    double peak;   /* median measured FMA peak, FLOP/s */
    FILE *out;
    int first_item;
} bk_ctx;

/* Every timed case streams at least this much memory per round: a case
 * smaller than that (or than a few times the last-level cache) cycles
 * through copies of its data, so that no case is timed out of cache.
 * --quick (a smoke run) streams a quarter of it. */
static size_t bk_stream_bytes(const bk_ctx *c)
{
    return (size_t)(c->o.quick ? 64 : 256) << 20;
}

/* Copies of `bytes` of data that make up bk_stream_bytes. */
static int bk_copies(const bk_ctx *c, size_t bytes)
{
    size_t n = (bk_stream_bytes(c) + bytes - 1) / (bytes ? bytes : 1);
    return n < 1 ? 1 : (int)n;
}

/* KV pools and weights are 64-byte aligned in the engine (mls_alloc): so here. */
static void *bk_alloc64(size_t bytes)
{
    void *p = NULL;
    return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
}

static uint64_t bk_rng = 0x2545f4914f6cdd1dull;

static float bk_rand(void)
{
    bk_rng ^= bk_rng << 13;
    bk_rng ^= bk_rng >> 7;
    bk_rng ^= bk_rng << 17;
    return (float)((double)(bk_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void bk_json_stat(FILE *f, const char *name, bench_stat s, int last)
{
    fprintf(f, "\"%s\": {\"min\": %.6g, \"median\": %.6g, \"max\": %.6g}%s", name, s.min, s.med,
            s.max, last ? "" : ", ");
}

static void bk_json_item_begin(bk_ctx *c)
{
    fprintf(c->out, "%s\n    {", c->first_item ? "" : ",");
    c->first_item = 0;
}

/* Read bandwidth right now (bytes/s): one streaming pass over bk_stream_bytes,
 * as much as a timed case streams; falls back to the run-wide figure if it
 * fails. Each rep of a case is paired with a probe taken just before it. */
static double bk_probe_bw(const bk_ctx *c)
{
    double bw = kc_measure_read_bandwidth(c->pool, bk_stream_bytes(c), 1);
    return bw > 0 ? bw : c->bw;
}

/* Per-rep ratio of a case's rate (bytes / t[r]) to its paired probe pr[r]. */
static bench_stat bk_paired_ratio(double bytes, const double *t, const double *pr, int n)
{
    double v[BK_MAX_REPS];
    for (int r = 0; r < n; r++) {
        v[r] = bytes / t[r] / pr[r];
    }
    return bench_stat_of(v, n);
}

/* ---- MLA decode ------------------------------------------------------------------ */

typedef struct {
    kvl_dtype dtype;
    int heads;
    int context;
    int batch;
} bk_mla_case;

static int bk_mla_run(bk_ctx *c, const bk_mla_case *mc)
{
    const int R = 512, D = 64;
    kvl_layout l;
    kc_mla_params p;
    kc_mla_seq *seqs = NULL;
    uint32_t *tables = NULL, *all_pages = NULL;
    uint8_t *kv = NULL;
    float *ql = NULL, *qr = NULL, *out = NULL, *lat = NULL, *rope = NULL;
    void *ws = NULL;
    int64_t pages_per_seq = (mc->context + 63) / 64, n_pages = pages_per_seq * mc->batch;
    int64_t nq = (int64_t)mc->batch * mc->heads;
    double t[BK_MAX_REPS], pr[BK_MAX_REPS], pg[BK_MAX_REPS], kv_bytes, q_bytes, flops;
    double intensity, probe_bw, paged_bw;
    int rc = 1, iters, copies;

    if (kvl_layout_init(mc->dtype, R, D, 0, &l) != MLS_OK) {
        return 1;
    }
    seqs = calloc((size_t)mc->batch, sizeof(*seqs));
    tables = malloc((size_t)n_pages * 4);
    copies = bk_copies(c, (size_t)n_pages * l.page_bytes);
    kv = bk_alloc64((size_t)n_pages * l.page_bytes * (size_t)copies);
    ql = malloc((size_t)(nq * R) * 4);
    qr = malloc((size_t)(nq * D) * 4);
    out = malloc((size_t)(nq * R) * 4);
    lat = malloc((size_t)R * 4);
    rope = malloc((size_t)D * 4);
    if (!seqs || !tables || !kv || !ql || !qr || !out || !lat || !rope) {
        fprintf(stderr, "bench kernels: out of memory for the MLA case\n");
        goto out_free;
    }
    /* one page of real rows, replicated; page order shuffled across sequences */
    for (int t0 = 0; t0 < 64; t0++) {
        for (int i = 0; i < R; i++) {
            lat[i] = bk_rand();
        }
        for (int i = 0; i < D; i++) {
            rope[i] = bk_rand();
        }
        kvl_row_store(&l, kvl_page_row(&l, kv, (uint32_t)t0), lat, rope);
    }
    for (int64_t pi = 1; pi < n_pages * copies; pi++) {
        memcpy(kv + kvl_page_offset(&l, (uint32_t)pi), kv, l.page_bytes);
    }
    for (int64_t i = 0; i < n_pages; i++) {
        tables[i] = (uint32_t)i;
    }
    for (int64_t i = n_pages - 1; i > 0; i--) {
        int64_t j = (int64_t)((bk_rand() * 0.5 + 0.5) * (double)i);
        uint32_t tmp = tables[i];
        tables[i] = tables[j];
        tables[j] = tmp;
    }
    /* the pages of every copy, in the order the kernel reads them: the
     * paged-read reference */
    all_pages = malloc((size_t)(n_pages * copies) * 4);
    if (all_pages == NULL) {
        goto out_free;
    }
    for (int k = 0; k < copies; k++) {
        for (int64_t i = 0; i < n_pages; i++) {
            all_pages[k * n_pages + i] = tables[i] + (uint32_t)(k * n_pages);
        }
    }
    for (int s = 0; s < mc->batch; s++) {
        seqs[s].page_table = tables + (int64_t)s * pages_per_seq;
        seqs[s].kv_len = mc->context;
        seqs[s].n_q = 1;
        seqs[s].q_index = s;
    }
    for (int64_t i = 0; i < nq * R; i++) {
        ql[i] = bk_rand();
    }
    for (int64_t i = 0; i < nq * D; i++) {
        qr[i] = bk_rand();
    }
    p.layout = &l;
    p.kv_base = kv;
    p.n_heads = mc->heads;
    p.softmax_scale = 1.0f / sqrtf(192.0f);
    p.q_latent = ql;
    p.q_rope = qr;
    p.out = out;
    p.seqs = seqs;
    p.n_seqs = mc->batch;
    ws = malloc(kc_mla_workspace_size(c->pool, &p));
    if (ws == NULL) {
        goto out_free;
    }
    kv_bytes = (double)mc->batch * mc->context * l.row_bytes;
    q_bytes = (double)nq * (R + D) * 4;
    flops = (double)nq * mc->context * (2.0 * (R + D) + 2.0 * R);
    intensity = flops / (kv_bytes + q_bytes);
    /* iterations per rep: about 40 ms of work at the roofline */
    {
        double est = fmax((kv_bytes + q_bytes) / c->bw, flops / c->peak);
        iters = (int)ceil((c->o.quick ? 0.01 : 0.04) / est);
        iters = iters < copies ? copies : (iters > 1000 ? 1000 : iters);
    }
    kc_mla_attention(c->pool, &p, ws); /* warm */
    for (int r = 0; r < c->o.reps; r++) {
        double t0;
        pr[r] = bk_probe_bw(c);
        pg[r] = kc_measure_paged_read(c->pool, kv, all_pages, n_pages * copies, l.page_bytes);
        pg[r] = pg[r] > 0 ? pg[r] : pr[r];
        t0 = mls_now_s();
        for (int i = 0; i < iters; i++) {
            p.kv_base = kv + (size_t)(i % copies) * (size_t)n_pages * l.page_bytes;
            kc_mla_attention(c->pool, &p, ws);
        }
        t[r] = (mls_now_s() - t0) / iters;
    }
    {
        bench_stat ratio = bk_paired_ratio(kv_bytes + q_bytes, t, pr, c->o.reps);
        bench_stat pratio = bk_paired_ratio(kv_bytes, t, pg, c->o.reps);
        bench_stat ts = bench_stat_of(t, c->o.reps);
        /* rates: fastest time gives the max rate */
        bench_stat bw = {(kv_bytes + q_bytes) / ts.max, (kv_bytes + q_bytes) / ts.med,
                      (kv_bytes + q_bytes) / ts.min};
        bench_stat gf = {flops / ts.max / 1e9, flops / ts.med / 1e9, flops / ts.min / 1e9};
        bench_stat peak_ratio = bench_stat_scale(gf, 1e9 / c->peak);
        const char *bound = intensity > c->peak / c->bw ? "compute" : "memory";
        probe_bw = bench_stat_of(pr, c->o.reps).med;
        paged_bw = bench_stat_of(pg, c->o.reps).med;
        if (c->o.json) {
            bk_json_item_begin(c);
            fprintf(c->out, "\"kv_dtype\": \"%s\", \"heads\": %d, \"context\": %d, \"batch\": %d, "
                    "\"bytes\": %.6g, \"flops\": %.6g, \"intensity_flop_per_byte\": %.6g, "
                    "\"bound\": \"%s\", ", kvl_dtype_name(mc->dtype), mc->heads, mc->context,
                    mc->batch, kv_bytes + q_bytes, flops, intensity, bound);
            bk_json_stat(c->out, "time_ms", bench_stat_scale(ts, 1e3), 0);
            bk_json_stat(c->out, "bandwidth_gbs", bench_stat_scale(bw, 1e-9), 0);
            bk_json_stat(c->out, "bandwidth_ratio", ratio, 0);
            fprintf(c->out, "\"probe_bandwidth_gbs\": %.6g, \"paged_read_gbs\": %.6g, ",
                    probe_bw * 1e-9, paged_bw * 1e-9);
            bk_json_stat(c->out, "paged_read_ratio", pratio, 0);
            bk_json_stat(c->out, "gflops", gf, 0);
            bk_json_stat(c->out, "peak_flops_ratio", peak_ratio, 1);
            fprintf(c->out, "}");
        } else {
            printf("  %-4s %4d %7d %5d %9.3f  %5.1f %5.1f %5.1f  %4.2f %4.2f %4.2f %5.1f  "
                   "%4.2f %4.2f %4.2f %5.1f  %6.1f %6.1f %6.1f  %4.2f %7.1f  %s\n",
                   kvl_dtype_name(mc->dtype), mc->heads, mc->context, mc->batch, ts.med * 1e3,
                   bw.min / 1e9, bw.med / 1e9, bw.max / 1e9, ratio.min, ratio.med, ratio.max,
                   probe_bw / 1e9, pratio.min, pratio.med, pratio.max, paged_bw / 1e9, gf.min,
                   gf.med, gf.max, peak_ratio.med, intensity, bound);
        }
    }
    rc = 0;
out_free:
    free(ws);
    free(seqs);
    free(tables);
    free(all_pages);
    free(kv);
    free(ql);
    free(qr);
    free(out);
    free(lat);
    free(rope);
    return rc;
}

/* ---- GEMV / GEMM ----------------------------------------------------------------- */

static int bk_matmul_run(bk_ctx *c, kc_dtype dt, int64_t rows, int64_t cols, int64_t n, int gemm)
{
    int64_t elems = rows * cols, srows = (rows + 127) / 128, scols = (cols + 127) / 128;
    size_t wbytes = (size_t)elems * (dt == KC_DTYPE_FP8_E4M3 ? 1 : 2);
    int copies = gemm ? 1 : bk_copies(c, wbytes);
    uint8_t *data = bk_alloc64(wbytes * (size_t)copies);
    float *scales = malloc((size_t)(srows * scols) * 4);
    float *x = malloc((size_t)(n * cols) * 4), *y = malloc((size_t)(n * rows) * 4);
    double t[BK_MAX_REPS], pr[BK_MAX_REPS], bytes, flops, est, probe_bw;
    kc_matrix w;
    int iters, rc = 1;
    const char *dname = dt == KC_DTYPE_FP8_E4M3 ? "fp8" : "bf16";

    if (!data || !scales || !x || !y) {
        fprintf(stderr, "bench kernels: out of memory for the matmul case\n");
        goto out_free;
    }
    for (size_t i = 0; i < wbytes; i += 2) {
        if (dt == KC_DTYPE_FP8_E4M3) {
            data[i] = mls_f32_to_fp8_e4m3(bk_rand() * 400.0f);
            data[i + 1] = (uint8_t)(data[i] ^ 0x81);
        } else {
            uint16_t h = mls_f32_to_bf16(bk_rand());
            memcpy(data + i, &h, 2);
        }
    }
    for (int k = 1; k < copies; k++) {
        memcpy(data + (size_t)k * wbytes, data, wbytes);
    }
    for (int64_t i = 0; i < srows * scols; i++) {
        scales[i] = 1e-3f * (1.5f + bk_rand());
    }
    for (int64_t i = 0; i < n * cols; i++) {
        x[i] = bk_rand();
    }
    w.dtype = dt;
    w.rows = rows;
    w.cols = cols;
    w.row0 = 0;
    w.data = data;
    w.scale_inv = dt == KC_DTYPE_FP8_E4M3 ? scales : NULL;
    bytes = (double)wbytes + (dt == KC_DTYPE_FP8_E4M3 ? srows * scols * 4.0 : 0.0) +
            (double)n * cols * 4 + (double)n * rows * 4;
    flops = 2.0 * (double)n * rows * cols;
    est = fmax(bytes / c->bw, flops / c->peak);
    iters = (int)ceil((c->o.quick ? 0.01 : 0.05) / est);
    iters = iters < copies ? copies : (iters > 10000 ? 10000 : iters);
    kc_matmul(c->pool, &w, x, n, y); /* warm */
    for (int r = 0; r < c->o.reps; r++) {
        double t0;
        pr[r] = gemm ? c->bw : bk_probe_bw(c);
        t0 = mls_now_s();
        for (int i = 0; i < iters; i++) {
            w.data = data + (size_t)(i % copies) * wbytes;
            kc_matmul(c->pool, &w, x, n, y);
        }
        t[r] = (mls_now_s() - t0) / iters;
    }
    {
        bench_stat pratio = bk_paired_ratio(bytes, t, pr, c->o.reps);
        bench_stat ts = bench_stat_of(t, c->o.reps);
        bench_stat bw = {bytes / ts.max, bytes / ts.med, bytes / ts.min};
        bench_stat gf = {flops / ts.max / 1e9, flops / ts.med / 1e9, flops / ts.min / 1e9};
        bench_stat ratio = gemm ? bench_stat_scale(gf, 1e9 / c->peak) : pratio;
        probe_bw = bench_stat_of(pr, c->o.reps).med;
        if (c->o.json) {
            bk_json_item_begin(c);
            fprintf(c->out, "\"dtype\": \"%s\", \"n\": %lld, \"rows\": %lld, \"cols\": %lld, "
                    "\"bytes\": %.6g, \"flops\": %.6g, ", dname, (long long)n, (long long)rows,
                    (long long)cols, bytes, flops);
            bk_json_stat(c->out, "time_ms", bench_stat_scale(ts, 1e3), 0);
            bk_json_stat(c->out, "bandwidth_gbs", bench_stat_scale(bw, 1e-9), 0);
            bk_json_stat(c->out, "gflops", gf, 0);
            if (!gemm) {
                fprintf(c->out, "\"probe_bandwidth_gbs\": %.6g, ", probe_bw * 1e-9);
            }
            bk_json_stat(c->out, gemm ? "peak_flops_ratio" : "bandwidth_ratio", ratio, 1);
            fprintf(c->out, "}");
        } else if (gemm) {
            printf("  %-4s %4lld x %5lld -> %5lld %9.3f  %6.1f %6.1f %6.1f  %4.2f %4.2f %4.2f\n",
                   dname, (long long)n, (long long)cols, (long long)rows, ts.med * 1e3, gf.min,
                   gf.med, gf.max, ratio.min, ratio.med, ratio.max);
        } else {
            printf("  %-4s %5lld x %5lld %7.1f MB %8.3f  %5.1f %5.1f %5.1f  %4.2f %4.2f %4.2f %5.1f\n",
                   dname, (long long)rows, (long long)cols, bytes / 1e6, ts.med * 1e3,
                   bw.min / 1e9, bw.med / 1e9, bw.max / 1e9, ratio.min, ratio.med, ratio.max,
                   probe_bw / 1e9);
        }
    }
    rc = 0;
out_free:
    free(data);
    free(scales);
    free(x);
    free(y);
    return rc;
}

/* ---- DeepSeek-V4 decode ----------------------------------------------------------- */

/* V4-Flash's dimensions (README-v4 section 1): the lightning indexer's 64
 * heads x 128 dims over FP4 keys (68 B), top-512; attention of 64 heads of
 * dim 512 (nope 448 as e4m3 per 64 + UE8M0, rope 64 bf16: 584-B rows) over
 * the window (128 rows) and the chosen or all compressed entries. */
#define BK_V4_IH   64
#define BK_V4_ID   128
#define BK_V4_TOPK 512
#define BK_V4_H    64
#define BK_V4_NOPE 448
#define BK_V4_ROPE 64
#define BK_V4_W    128

typedef enum {
    BK_V4_INDEXER, /* scores over context/4 keys + top-512 */
    BK_V4_SPARSE,  /* attention over window 128 + 512 chosen CSA entries */
    BK_V4_HCA,     /* attention over window 128 + all context/128 HCA entries */
} bk_v4_kind;

static const char *const bk_v4_names[] = {"indexer", "sparse_attention", "hca"};

/* A random FP8 V4 entry (valid codes, scales near 2^-8). */
static void bk_v4_entry(uint8_t *row)
{
    uint8_t *sc = row + BK_V4_NOPE, *rp = sc + KVL_V4_SCALE_BYTES(BK_V4_NOPE);
    for (int i = 0; i < BK_V4_NOPE; i++) {
        row[i] = mls_f32_to_fp8_e4m3(bk_rand() * 400.0f);
    }
    memset(sc, 0, KVL_V4_SCALE_BYTES(BK_V4_NOPE));
    for (int b = 0; b < BK_V4_NOPE / 64; b++) {
        sc[b] = (uint8_t)(119 + (int)(bk_rand() * 2.0f));
    }
    for (int i = 0; i < BK_V4_ROPE; i++) {
        uint16_t h = mls_f32_to_bf16(bk_rand());
        memcpy(rp + 2 * i, &h, 2);
    }
}

/* One V4 decode case: one query at `context` tokens. Per rep, a read-bandwidth
 * probe and an FMA-peak probe are taken just before the timed loop; the ratio
 * to the bound that applies (compute when the case's FLOP per byte is above
 * the machine balance) is the per-rep ratio to its probe. */
static int bk_v4_run(bk_ctx *c, bk_v4_kind kind, int64_t context)
{
    const int64_t kb = KVL_ROW_BYTES_V4_INDEXER(BK_V4_ID);
    const int64_t rb = KVL_ROW_BYTES_V4_ENTRY(BK_V4_NOPE, BK_V4_ROPE);
    const int32_t d = BK_V4_NOPE + BK_V4_ROPE;
    int64_t n_keys = context / 4, n_ent = kind == BK_V4_HCA ? context / 128 : context / 4;
    int64_t n_rows = kind == BK_V4_SPARSE ? BK_V4_W + BK_V4_TOPK : BK_V4_W + n_ent;
    uint8_t *data = NULL;
    const uint8_t **ptrs = NULL;
    float *q = NULL, *w = NULL, *score = NULL, *out = NULL, *sink = NULL;
    int32_t *sel = NULL;
    double t[BK_MAX_REPS], pr[BK_MAX_REPS], pf[BK_MAX_REPS], bytes, flops, est;
    size_t data_bytes;
    int copies, sets = 1, iters, rc = 1;

    if (kind == BK_V4_INDEXER) {
        data_bytes = (size_t)(n_keys * kb);
        copies = bk_copies(c, data_bytes);
        bytes = (double)n_keys * kb + (BK_V4_IH * BK_V4_ID + BK_V4_IH) * 4.0 + n_keys * 4.0;
        flops = 2.0 * BK_V4_IH * BK_V4_ID * (double)n_keys;
    } else {
        /* window rows, then the entries; HCA cycles through copies of both, sparse
         * attention through sets of chosen rows scattered over all the entries */
        data_bytes = (size_t)((BK_V4_W + n_ent) * rb);
        copies = kind == BK_V4_HCA ? bk_copies(c, data_bytes) : 1;
        sets = kind == BK_V4_HCA ? copies : 64;
        bytes = (double)n_rows * rb + 2.0 * BK_V4_H * d * 4.0;
        flops = 4.0 * BK_V4_H * d * (double)n_rows;
    }
    data = bk_alloc64(data_bytes * (size_t)copies);
    q = malloc(sizeof(float) * BK_V4_H * d);
    out = malloc(sizeof(float) * BK_V4_H * d);
    w = malloc(sizeof(float) * BK_V4_IH);
    sink = malloc(sizeof(float) * BK_V4_H);
    score = malloc(sizeof(float) * (size_t)(n_keys > 0 ? n_keys : 1));
    sel = malloc(sizeof(int32_t) * BK_V4_TOPK);
    ptrs = malloc(sizeof(*ptrs) * (size_t)(n_rows * sets));
    if (!data || !q || !out || !w || !sink || !score || !sel || !ptrs) {
        fprintf(stderr, "bench kernels: out of memory for the V4 %s case\n", bk_v4_names[kind]);
        goto out_free;
    }
    if (kind == BK_V4_INDEXER) {
        for (size_t i = 0; i < data_bytes; i++) {
            data[i] = (uint8_t)(bk_rand() * 128.0f + 128.0f);
        }
        for (int64_t j = 0; j < n_keys; j++) {
            for (int b = 0; b < BK_V4_ID / 32; b++) {
                data[j * kb + BK_V4_ID / 2 + b] = (uint8_t)(125 + (int)(bk_rand() * 2.0f));
            }
        }
        /* queries on the FP4 grid, as the indexer quantizes them */
        for (int i = 0; i < BK_V4_IH * BK_V4_ID; i++) {
            static const float grid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
            q[i] = grid[(int)(bk_rand() * 3.999f + 4.0f)] * (bk_rand() < 0 ? -0.125f : 0.125f);
        }
        for (int h = 0; h < BK_V4_IH; h++) {
            w[h] = bk_rand() * 0.01f;
        }
    } else {
        for (int64_t i = 0; i < 64 && i < BK_V4_W + n_ent; i++) {
            bk_v4_entry(data + i * rb);
        }
        for (int64_t i = 64; i < BK_V4_W + n_ent; i++) {
            memcpy(data + i * rb, data + (i % 64) * rb, (size_t)rb);
        }
        for (int i = 0; i < BK_V4_H * d; i++) {
            q[i] = bk_rand();
        }
        for (int h = 0; h < BK_V4_H; h++) {
            sink[h] = bk_rand();
        }
        for (int s = 0; s < sets; s++) {
            const uint8_t *base = data + (size_t)(kind == BK_V4_HCA ? s : 0) * data_bytes;
            const uint8_t **ps = ptrs + (int64_t)s * n_rows;
            for (int64_t i = 0; i < BK_V4_W; i++) {
                ps[i] = base + i * rb;
            }
            for (int64_t i = BK_V4_W; i < n_rows; i++) {
                int64_t e = kind == BK_V4_HCA
                                ? i - BK_V4_W
                                : (int64_t)((bk_rand() * 0.5 + 0.5) * (double)(n_ent - 1));
                ps[i] = base + (BK_V4_W + e) * rb;
            }
        }
    }
    for (int k = 1; k < copies; k++) {
        memcpy(data + (size_t)k * data_bytes, data, data_bytes);
    }
    est = fmax(bytes / c->bw, flops / c->peak);
    iters = (int)ceil((c->o.quick ? 0.01 : 0.04) / est);
    iters = iters < 1 ? 1 : (iters > 1000 ? 1000 : iters);
    for (int r = -1; r < c->o.reps; r++) { /* rep -1 warms */
        double t0;
        if (r >= 0) {
            pr[r] = bk_probe_bw(c);
            pf[r] = kc_measure_peak_flops(c->pool, 1);
            pf[r] = pf[r] > 0 ? pf[r] : c->peak;
        }
        t0 = mls_now_s();
        for (int i = 0; i < (r < 0 ? 1 : iters); i++) {
            if (kind == BK_V4_INDEXER) {
                kc_v4_index_params p = {.keys = data + (size_t)(i % copies) * data_bytes,
                                        .n_keys = n_keys,
                                        .row_bytes = kb,
                                        .n_heads = BK_V4_IH,
                                        .head_dim = BK_V4_ID,
                                        .q = q,
                                        .w = w,
                                        .score = score};
                kc_v4_index_scores(c->pool, &p);
                kc_v4_topk(score, n_keys, BK_V4_TOPK, sel);
            } else {
                kc_v4_attn_params p = {.n_heads = BK_V4_H,
                                       .nope = BK_V4_NOPE,
                                       .rope = BK_V4_ROPE,
                                       .softmax_scale = 1.0f / sqrtf((float)d),
                                       .sink = sink,
                                       .q = q,
                                       .rows = ptrs + (int64_t)(i % sets) * n_rows,
                                       .n_q = 1,
                                       .k = (int32_t)n_rows,
                                       .out = out};
                kc_v4_attn(c->pool, &p);
            }
        }
        if (r >= 0) {
            t[r] = (mls_now_s() - t0) / iters;
        }
    }
    {
        double intensity = flops / bytes;
        int compute = intensity > c->peak / c->bw;
        bench_stat ts = bench_stat_of(t, c->o.reps);
        bench_stat bw = {bytes / ts.max, bytes / ts.med, bytes / ts.min};
        bench_stat gf = {flops / ts.max / 1e9, flops / ts.med / 1e9, flops / ts.min / 1e9};
        bench_stat bw_ratio = bk_paired_ratio(bytes, t, pr, c->o.reps);
        bench_stat pk_ratio = bk_paired_ratio(flops, t, pf, c->o.reps);
        bench_stat bound_ratio = compute ? pk_ratio : bw_ratio;
        double probe_bw = bench_stat_of(pr, c->o.reps).med;
        double probe_pk = bench_stat_of(pf, c->o.reps).med;
        if (c->o.json) {
            bk_json_item_begin(c);
            fprintf(c->out,
                    "\"case\": \"%s\", \"context\": %lld, \"rows\": %lld, \"heads\": %d, "
                    "\"dim\": %d, \"bytes\": %.6g, \"flops\": %.6g, "
                    "\"intensity_flop_per_byte\": %.6g, \"bound\": \"%s\", ",
                    bk_v4_names[kind], (long long)context,
                    (long long)(kind == BK_V4_INDEXER ? n_keys : n_rows),
                    kind == BK_V4_INDEXER ? BK_V4_IH : BK_V4_H,
                    kind == BK_V4_INDEXER ? BK_V4_ID : d, bytes, flops, intensity,
                    compute ? "compute" : "memory");
            bk_json_stat(c->out, "time_ms", bench_stat_scale(ts, 1e3), 0);
            bk_json_stat(c->out, "gflops", gf, 0);
            bk_json_stat(c->out, "peak_flops_ratio", pk_ratio, 0);
            bk_json_stat(c->out, "bandwidth_gbs", bench_stat_scale(bw, 1e-9), 0);
            bk_json_stat(c->out, "bandwidth_ratio", bw_ratio, 0);
            bk_json_stat(c->out, "bound_ratio", bound_ratio, 0);
            fprintf(c->out, "\"probe_bandwidth_gbs\": %.6g, \"probe_gflops\": %.6g}",
                    probe_bw * 1e-9, probe_pk * 1e-9);
        } else {
            printf("  %-16s %8lld %7lld %9.3f  %6.1f %6.1f %6.1f  %4.2f %4.2f %4.2f %6.1f  "
                   "%6.1f %4.2f %6.1f %7.1f  %s\n",
                   bk_v4_names[kind], (long long)context,
                   (long long)(kind == BK_V4_INDEXER ? n_keys : n_rows), ts.med * 1e3, gf.min,
                   gf.med, gf.max, pk_ratio.min, pk_ratio.med, pk_ratio.max, probe_pk / 1e9,
                   bw.med / 1e9, bw_ratio.med, probe_bw / 1e9, intensity,
                   compute ? "compute" : "memory");
        }
    }
    rc = 0;
out_free:
    free(data);
    free(ptrs);
    free(q);
    free(w);
    free(score);
    free(out);
    free(sink);
    free(sel);
    return rc;
}

/* ---- driver -------------------------------------------------------------------------- */

static void bk_usage(FILE *f)
{
    fprintf(f, "usage: mlaserve bench kernels [--json] [--quick] [--threads N] [--reps N]\n"
               "  CPU kernel throughput vs this machine's measured bandwidth and FMA peak:\n"
               "  MLA decode attention (bf16/fp8 KV), GEMV (decode), GEMM (prefill),\n"
               "  DeepSeek-V4 decode (indexer, sparse attention, HCA at 128k and 1M).\n"
               "  --json       one JSON object instead of tables\n"
               "  --quick      small grid, 64 MiB streamed per case: a smoke run (< 10 s);\n"
               "               the figures to quote come from the full run\n"
               "  --threads N  pool threads (default: online cores)\n"
               "  --reps N     runs per figure, reported as min/median/max (default 5)\n");
}

static int bk_parse(int argc, char **argv, bk_opts *o)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},        {"quick", no_argument, NULL, 'q'},
        {"threads", required_argument, NULL, 't'}, {"reps", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    int ch;
    memset(o, 0, sizeof(*o));
    o->reps = 5;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case 'j': o->json = 1; break;
        case 'q': o->quick = 1; break;
        case 't':
            o->threads = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || o->threads < 1 || o->threads > 256) {
                fprintf(stderr, "bench kernels: --threads wants 1..256, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'r':
            o->reps = (int)strtol(optarg, &end, 10);
            if (*end != '\0' || o->reps < 1 || o->reps > BK_MAX_REPS) {
                fprintf(stderr, "bench kernels: --reps wants 1..%d, got '%s'\n", BK_MAX_REPS,
                        optarg);
                return 2;
            }
            break;
        case 'h': bk_usage(stdout); return -1;
        default: bk_usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bench kernels: unexpected argument '%s'\n", argv[optind]);
        bk_usage(stderr);
        return 2;
    }
    return 0;
}

int mls_cmd_bench_kernels(int argc, char **argv)
{
    bk_ctx c;
    double v[BK_MAX_REPS], f[BK_MAX_REPS];
    bench_stat bw, pk;
    int rc;
    static const bk_mla_case full_grid[] = {
        /* dtype filled in below; heads, context, batch */
        {0, 1, 4096, 32},   {0, 1, 131072, 1},  {0, 4, 32768, 4},
        {0, 16, 4096, 1},   {0, 16, 4096, 32},  {0, 16, 32768, 1}, {0, 16, 32768, 8},
        {0, 16, 131072, 1}, {0, 16, 131072, 4}, {0, 128, 4096, 1}, {0, 128, 4096, 32},
        {0, 128, 32768, 1}, {0, 128, 131072, 1},
    };
    static const bk_mla_case quick_grid[] = {
        {0, 1, 16384, 4}, {0, 16, 4096, 1}, {0, 16, 16384, 4}, {0, 128, 4096, 1},
    };
    const bk_mla_case *grid;
    int n_grid;

    rc = bk_parse(argc, argv, &c.o);
    if (rc != 0) {
        return rc < 0 ? 0 : rc;
    }
    if (kc_pool_create(c.o.threads, &c.pool) != MLS_OK) {
        fprintf(stderr, "bench kernels: cannot create a %d-thread pool\n", c.o.threads);
        return 1;
    }
    c.out = stdout;
    c.first_item = 1;
    for (int r = 0; r < c.o.reps; r++) {
        v[r] = kc_measure_read_bandwidth(c.pool, (c.o.quick ? 64u : 256u) << 20, 1);
        f[r] = kc_measure_peak_flops(c.pool, 1);
    }
    bw = bench_stat_of(v, c.o.reps);
    pk = bench_stat_of(f, c.o.reps);
    c.bw = bw.med;
    c.peak = pk.med;
    if (!(c.bw > 0) || !(c.peak > 0)) {
        fprintf(stderr, "bench kernels: bandwidth or FLOP probe failed\n");
        kc_pool_destroy(c.pool);
        return 1;
    }
    grid = c.o.quick ? quick_grid : full_grid;
    n_grid = c.o.quick ? (int)(sizeof(quick_grid) / sizeof(quick_grid[0]))
                       : (int)(sizeof(full_grid) / sizeof(full_grid[0]));

    if (c.o.json) {
        printf("{\"threads\": %d, \"isa\": \"%s\", \"reps\": %d, \"quick\": %s, ",
               kc_pool_size(c.pool), kc_isa_name(kc_isa_active()), c.o.reps,
               c.o.quick ? "true" : "false");
        bk_json_stat(stdout, "memory_bandwidth_gbs", bench_stat_scale(bw, 1e-9), 0);
        bk_json_stat(stdout, "peak_gflops", bench_stat_scale(pk, 1e-9), 0);
        printf("\"balance_flop_per_byte\": %.6g,\n \"mla_decode\": [", c.peak / c.bw);
    } else {
        printf("mlaserve bench kernels: %d threads, ISA %s, %d reps (min/median/max)\n",
               kc_pool_size(c.pool), kc_isa_name(kc_isa_active()), c.o.reps);
        printf("memory read bandwidth  %.1f / %.1f / %.1f GB/s\n", bw.min / 1e9, bw.med / 1e9,
               bw.max / 1e9);
        printf("peak f32 FMA           %.1f / %.1f / %.1f GFLOP/s\n", pk.min / 1e9, pk.med / 1e9,
               pk.max / 1e9);
        printf("machine balance        %.1f FLOP/byte (above: compute-bound)\n\n", c.peak / c.bw);
        printf("bw ratio: per rep, achieved / a read-bandwidth probe taken just before it "
               "(median probe GB/s shown)\n"
               "vs paged read: per rep, KV bytes/s / one pass reading the same 64-token pages "
               "in the same order (median GB/s shown)\n\n");
        printf("MLA decode attention (R=512, D=64, 1 query per sequence)\n");
        printf("  kv   heads context batch   med ms   GB/s min/med/max   bw ratio     probe  "
               "vs paged read  paged  GFLOP/s min/med/max  peak  FLOP/B  bound\n");
    }
    rc = 0;
    for (int d = 0; d < 2 && rc == 0; d++) {
        for (int i = 0; i < n_grid && rc == 0; i++) {
            bk_mla_case mc = grid[i];
            mc.dtype = d == 0 ? KVL_DTYPE_BF16 : KVL_DTYPE_FP8;
            rc = bk_mla_run(&c, &mc);
        }
    }
    if (c.o.json) {
        printf("\n ],\n \"gemv\": [");
    } else {
        printf("\nGEMV (n=1; weights streamed once)\n");
        printf("  w     rows x  cols    bytes     med ms   GB/s min/med/max   bw ratio     probe\n");
    }
    c.first_item = 1;
    if (rc == 0) {
        int64_t rows = c.o.quick ? 4096 : 8192, cols = c.o.quick ? 4096 : 8192;
        rc = bk_matmul_run(&c, KC_DTYPE_BF16, rows, cols, 1, 0);
        if (rc == 0) {
            rc = bk_matmul_run(&c, KC_DTYPE_FP8_E4M3, c.o.quick ? rows : 2 * rows, cols, 1, 0);
        }
    }
    if (c.o.json) {
        printf("\n ],\n \"gemm\": [");
    } else {
        printf("\nGEMM (prefill: tokens x in -> out)\n");
        printf("  w    tokens x    in ->   out   med ms   GFLOP/s min/med/max  peak ratio\n");
    }
    c.first_item = 1;
    if (rc == 0) {
        int64_t n = c.o.quick ? 128 : 512, d = c.o.quick ? 1024 : 2048;
        rc = bk_matmul_run(&c, KC_DTYPE_BF16, d, d, n, 1);
        if (rc == 0) {
            rc = bk_matmul_run(&c, KC_DTYPE_FP8_E4M3, d, d, n, 1);
        }
    }
    if (c.o.json) {
        printf("\n ],\n \"v4_decode\": [");
    } else {
        printf("\nDeepSeek-V4 decode, V4-Flash dimensions, 1 query (indexer: 64 heads x 128 over "
               "68-B FP4 keys, scores + top-512;\n"
               "  attention: 64 heads x 512 over 584-B FP8 rows, window 128 + top-512 / all HCA "
               "entries); bound ratio per rep vs a probe taken just before it\n");
        printf("  case              context    rows    med ms  GFLOP/s min/med/max  peak ratio     "
               "probe    GB/s bw/probe probe  FLOP/B  bound\n");
    }
    c.first_item = 1;
    {
        static const int64_t full_ctx[] = {131072, 1048576}, quick_ctx[] = {16384};
        const int64_t *ctxs = c.o.quick ? quick_ctx : full_ctx;
        int n_ctx = c.o.quick ? 1 : 2;
        for (int i = 0; i < n_ctx && rc == 0; i++) {
            for (int k = 0; k < 3 && rc == 0; k++) {
                rc = bk_v4_run(&c, (bk_v4_kind)k, ctxs[i]);
            }
        }
    }
    if (c.o.json) {
        printf("\n ]}\n");
    }
    kc_pool_destroy(c.pool);
    return rc;
}
