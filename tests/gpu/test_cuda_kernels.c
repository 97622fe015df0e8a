/*
 * test_cuda_kernels.c - every kernels/cuda op against the CPU reference on
 * random inputs: paged MLA decode (bf16/fp8 KV, 4/16/64/128 heads, odd and
 * uneven lengths, split contexts, n_q > 1), GEMMs over bf16/f32/fp8 weights,
 * RMSNorm, rotary, SiLU-mul, the MoE router, argmax/top-k, KV row stores.
 *
 * Without a usable CUDA device every device test reports SKIP (with the CUDA
 * error) and the executable exits 77; only the host-side validation ladder
 * test runs everywhere. Inputs come from MLS_TEST_SEED (default fixed, so
 * ctest is deterministic; tests/gpu/run.sh passes a fresh seed).
 */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_route.h"
#include "kc.h"
#include "kcu.h"
#include "mls_num.h"
#include "mls_test.h"

static kcu_ctx *g_ctx;
static char g_skip[600];
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

#define NEED_DEVICE()                                                                  \
    do {                                                                               \
        if (g_ctx == NULL) {                                                           \
            MLS_TEST_SKIP("no CUDA device: %s", g_skip);                               \
        }                                                                              \
    } while (0)

static uint64_t rng_next(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

/* uniform in [-1, 1) */
static float rng_f(void)
{
    return (float)((double)(rng_next() >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = rng_f() * scale;
    }
}

/* Device copy of host data; NULL (and a message) on failure. */
static void *dev_dup(const void *src, size_t bytes)
{
    void *p = NULL;
    mls_err err = {{0}};
    if (kcu_malloc(bytes, &p, &err) != MLS_OK) {
        fprintf(stderr, "  kcu_malloc: %s\n", err.msg);
        return NULL;
    }
    if (src != NULL && kcu_memcpy_h2d(g_ctx, p, src, bytes, &err) != MLS_OK) {
        fprintf(stderr, "  h2d: %s\n", err.msg);
        kcu_free(p);
        return NULL;
    }
    return p;
}

static bool dev_get(void *dst, const void *src, size_t bytes)
{
    mls_err err = {{0}};
    if (kcu_ctx_sync(g_ctx, &err) != MLS_OK || kcu_memcpy_d2h(g_ctx, dst, src, bytes, &err) != MLS_OK) {
        fprintf(stderr, "  d2h: %s\n", err.msg);
        return false;
    }
    return true;
}

/* ---- MLA decode ------------------------------------------------------------------- */

typedef struct {
    kvl_dtype dtype;
    uint32_t R, D;
    int32_t n_heads, n_q, n_seqs;
    const int32_t *lens;       /* [n_seqs] */
} mla_case;

/* Runs one case on the device and against kc_mla_attention_ref; returns the
 * worst per-sequence relative L2 error, or -1 on a device error. */
static double mla_run_case(const mla_case *c, double *max_abs_p)
{
    kvl_layout l;
    mls_err err = {{0}};
    double worst = -1.0;
    int32_t max_len = 0, total_pages = 0;
    const int32_t rows = c->n_q * c->n_heads;

    if (kvl_layout_init(c->dtype, c->R, c->D, 1, &l) != MLS_OK) {
        return -1.0;
    }
    for (int s = 0; s < c->n_seqs; s++) {
        max_len = c->lens[s] > max_len ? c->lens[s] : max_len;
        total_pages += (c->lens[s] + KVL_PAGE_TOKENS - 1) / KVL_PAGE_TOKENS;
    }
    const int32_t stride = max_len > 0 ? (max_len + KVL_PAGE_TOKENS - 1) / KVL_PAGE_TOKENS : 1;
    const uint32_t n_pages = (uint32_t)total_pages + 3;
    uint8_t *pool = malloc(n_pages * l.page_bytes);
    uint32_t *table = calloc((size_t)c->n_seqs * stride, sizeof(uint32_t));
    uint32_t *perm = malloc(n_pages * sizeof(uint32_t));
    float *lat = malloc(c->R * sizeof(float)), *rope = malloc((c->D + 1) * sizeof(float));
    size_t qn = (size_t)c->n_seqs * rows;
    float *ql = malloc(qn * c->R * sizeof(float)), *qr = malloc(qn * (c->D + 1) * sizeof(float));
    float *out = malloc(qn * c->R * sizeof(float)), *ref = malloc(qn * c->R * sizeof(float));
    kc_mla_seq *seqs = calloc((size_t)c->n_seqs, sizeof(kc_mla_seq));
    void *d_pool = NULL, *d_table = NULL, *d_lens = NULL, *d_ql = NULL, *d_qr = NULL;
    void *d_out = NULL, *d_ws = NULL;

    if (!pool || !table || !perm || !lat || !rope || !ql || !qr || !out || !ref || !seqs) {
        goto out_free_bufs;
    }
    /* garbage everywhere first: rows past a sequence's end must not leak in */
    for (size_t i = 0; i < n_pages * l.page_bytes; i++) {
        pool[i] = (uint8_t)rng_next();
    }
    for (uint32_t i = 0; i < n_pages; i++) {
        perm[i] = i;
    }
    for (uint32_t i = n_pages - 1; i > 0; i--) { /* shuffled page ids */
        uint32_t j = (uint32_t)(rng_next() % (i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t next = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        for (int32_t t = 0; t < c->lens[s]; t++) {
            if (t % KVL_PAGE_TOKENS == 0) {
                table[(size_t)s * stride + t / KVL_PAGE_TOKENS] = perm[next++];
            }
            fill(lat, c->R, 1.0f);
            fill(rope, c->D, 1.0f);
            kvl_row_store(&l, kvl_row_ptr(&l, pool, table + (size_t)s * stride, (uint64_t)t), lat,
                          rope);
        }
        seqs[s].page_table = table + (size_t)s * stride;
        seqs[s].kv_len = c->lens[s];
        seqs[s].n_q = c->n_q;
        seqs[s].q_index = (int64_t)s * c->n_q;
    }
    fill(ql, qn * c->R, 1.0f);
    fill(qr, qn * c->D, 1.0f);
    const float scale = 1.0f / sqrtf((float)(128 + c->D)); /* a V3-like qk head dim */

    d_pool = dev_dup(pool, n_pages * l.page_bytes);
    d_table = dev_dup(table, (size_t)c->n_seqs * stride * sizeof(uint32_t));
    d_lens = dev_dup(c->lens, (size_t)c->n_seqs * sizeof(int32_t));
    d_ql = dev_dup(ql, qn * c->R * sizeof(float));
    d_qr = dev_dup(qr, qn * (c->D + 1) * sizeof(float));
    d_out = dev_dup(NULL, qn * c->R * sizeof(float));
    if (!d_pool || !d_table || !d_lens || !d_ql || !d_qr || !d_out) {
        goto out_free_bufs;
    }
    kcu_mla_params p = {
        .layout = &l, .kv_base = d_pool, .n_seqs = c->n_seqs, .n_q = c->n_q,
        .n_heads = c->n_heads, .softmax_scale = scale, .seq_lens = d_lens, .max_kv_len = max_len,
        .page_table = d_table, .page_table_stride = stride, .q_latent = d_ql, .q_rope = d_qr,
        .out = d_out,
    };
    kcu_mla_plan plan;
    if (kcu_mla_plan_make(g_ctx, &p, &plan, &err) != MLS_OK) {
        fprintf(stderr, "  plan: %s\n", err.msg);
        goto out_free_bufs;
    }
    d_ws = dev_dup(NULL, plan.workspace_bytes);
    /* poison the output: every element must be written */
    if (!d_ws || kcu_memset(g_ctx, d_out, 0xff, qn * c->R * sizeof(float), &err) != MLS_OK) {
        goto out_free_bufs;
    }
    if (kcu_mla_decode(g_ctx, &p, &plan, d_ws, plan.workspace_bytes, &err) != MLS_OK) {
        fprintf(stderr, "  decode: %s\n", err.msg);
        goto out_free_bufs;
    }
    if (!dev_get(out, d_out, qn * c->R * sizeof(float))) {
        goto out_free_bufs;
    }
    kc_mla_params rp = {
        .layout = &l, .kv_base = pool, .n_heads = c->n_heads, .softmax_scale = scale,
        .q_latent = ql, .q_rope = qr, .out = ref, .seqs = seqs, .n_seqs = c->n_seqs,
    };
    memset(ref, 0, qn * c->R * sizeof(float)); /* an empty sequence's output is zeros */
    kc_mla_attention_ref(&rp);
    worst = 0.0;
    *max_abs_p = 0.0;
    for (int s = 0; s < c->n_seqs; s++) {
        size_t off = (size_t)s * rows * c->R, n = (size_t)rows * c->R;
        double e = mls_test_rel_l2(out + off, ref + off, n);
        for (size_t i = 0; i < n; i++) {
            double d = fabs((double)out[off + i] - ref[off + i]);
            if (!(d <= *max_abs_p)) {
                *max_abs_p = isnan(d) ? INFINITY : d;
            }
        }
        if (!(e <= worst)) {
            worst = isnan(e) ? INFINITY : e;
        }
    }
    fprintf(stderr, "  %s R=%u D=%u heads=%d n_q=%d seqs=%d max_len=%d: block_rows %d, %d parts"
                    " x %d head blocks, rel_l2 %.2e, max_abs %.2e\n",
            kvl_dtype_name(c->dtype), c->R, c->D, c->n_heads, c->n_q, c->n_seqs, max_len,
            plan.block_rows, plan.n_parts, plan.n_head_blocks, worst, *max_abs_p);
out_free_bufs:
    kcu_free(d_ws);
    kcu_free(d_out);
    kcu_free(d_qr);
    kcu_free(d_ql);
    kcu_free(d_lens);
    kcu_free(d_table);
    kcu_free(d_pool);
    free(seqs);
    free(ref);
    free(out);
    free(qr);
    free(ql);
    free(rope);
    free(lat);
    free(perm);
    free(table);
    free(pool);
    return worst;
}

/* bf16 q and P and (fp8) bf16-rounded dequantized latents: ~1e-3 relative */
#define MLA_TOL 1e-2

static void test_mla_decode_heads_dtypes(void)
{
    static const int32_t lens[] = {1, 37, 64, 65, 130, 611, 1023};
    static const int32_t heads[] = {16, 64, 128};
    NEED_DEVICE();
    for (int d = 0; d < 2; d++) {
        for (int h = 0; h < 3; h++) {
            mla_case c = {d ? KVL_DTYPE_FP8 : KVL_DTYPE_BF16, 512, 64, heads[h], 1, 7, lens};
            double max_abs = 0, e = mla_run_case(&c, &max_abs);
            CHECK_MSG(e >= 0, "device error");
            CHECK_LE_DBL(e, MLA_TOL);
        }
    }
}

static void test_mla_decode_long_split(void)
{
    /* batch 1 at a long context: split over every SM, then combined */
    static const int32_t one[] = {9001};
    /* one long among short ones: the scheduler must balance */
    static const int32_t mix[] = {3, 5000, 17, 64, 1, 250};
    NEED_DEVICE();
    for (int d = 0; d < 2; d++) {
        mla_case a = {d ? KVL_DTYPE_FP8 : KVL_DTYPE_BF16, 512, 64, 16, 1, 1, one};
        mla_case b = {d ? KVL_DTYPE_FP8 : KVL_DTYPE_BF16, 512, 64, 128, 1, 6, mix};
        double m = 0, e = mla_run_case(&a, &m);
        CHECK_MSG(e >= 0, "device error");
        CHECK_LE_DBL(e, MLA_TOL);
        e = mla_run_case(&b, &m);
        CHECK_MSG(e >= 0, "device error");
        CHECK_LE_DBL(e, MLA_TOL);
    }
}

static void test_mla_decode_uneven_batch(void)
{
    int32_t lens[97];
    NEED_DEVICE();
    for (int i = 0; i < 97; i++) {
        lens[i] = 1 + (int32_t)(rng_next() % 1500);
    }
    lens[13] = 0; /* an empty sequence yields zeros */
    mla_case c = {KVL_DTYPE_BF16, 512, 64, 16, 1, 97, lens};
    double m = 0, e = mla_run_case(&c, &m);
    CHECK_MSG(e >= 0, "device error");
    CHECK_LE_DBL(e, MLA_TOL);
}

static void test_mla_decode_mtp_and_small(void)
{
    static const int32_t lens[] = {2, 77, 300};
    NEED_DEVICE();
    for (int d = 0; d < 2; d++) {
        kvl_dtype dt = d ? KVL_DTYPE_FP8 : KVL_DTYPE_BF16;
        /* two queries per sequence, causal between them: 32 rows */
        mla_case a = {dt, 512, 64, 16, 2, 3, lens};
        /* the tiny test model: R=32, D=8, 4 heads (fp8 rows are 52 B: 4-byte copies) */
        mla_case b = {dt, 32, 8, 4, 1, 3, lens};
        /* 20 heads: a partial head block */
        mla_case cc = {dt, 256, 32, 20, 1, 3, lens};
        double m = 0, e = mla_run_case(&a, &m);
        CHECK_MSG(e >= 0, "device error");
        CHECK_LE_DBL(e, MLA_TOL);
        e = mla_run_case(&b, &m);
        CHECK_MSG(e >= 0, "device error");
        CHECK_LE_DBL(e, MLA_TOL);
        e = mla_run_case(&cc, &m);
        CHECK_MSG(e >= 0, "device error");
        CHECK_LE_DBL(e, MLA_TOL);
    }
}

/* Host-side validation ladder: runs without a device (ctx is checked last). */
static void test_mla_validation_ladder(void)
{
    kvl_layout bf, f32, odd;
    float dummy[16] __attribute__((aligned(16)));
    int32_t lens[1] = {1};
    uint32_t table[1] = {0};
    mls_err err = {{0}};
    kcu_mla_plan plan;

    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, 512, 64, 0, &bf));
    CHECK_OK(kvl_layout_init(KVL_DTYPE_F32, 512, 64, 0, &f32));
    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, 516, 64, 0, &odd));
    kcu_mla_params good = {
        .layout = &bf, .kv_base = (const uint8_t *)dummy, .n_seqs = 1, .n_q = 1, .n_heads = 16,
        .softmax_scale = 0.1f, .seq_lens = lens, .max_kv_len = 64, .page_table = table,
        .page_table_stride = 1, .q_latent = dummy, .q_rope = dummy, .out = dummy,
    };
    kcu_mla_params p = good;
    CHECK_STATUS(kcu_mla_plan_make(NULL, NULL, &plan, &err), MLS_ERR_INVALID_ARG);
    p.layout = &f32;
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "f32") != NULL);
    p = good;
    p.layout = &odd;
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_UNSUPPORTED);
    CHECK(strstr(err.msg, "kv_lora_rank") != NULL);
    p = good;
    p.n_heads = 0;
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_INVALID_ARG);
    p = good;
    p.n_heads = 4097;
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "n_heads") != NULL, "%s", err.msg);
    p = good;
    p.max_kv_len = 65; /* needs 2 pages, stride is 1 */
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "page_table_stride") != NULL);
    p = good;
    p.q_latent = NULL;
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "q_latent") != NULL);
    p = good;
    p.out = (float *)((char *)dummy + 4);
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "aligned") != NULL);
    p = good;
    p.softmax_scale = NAN;
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_INVALID_ARG);
    kvl_layout fp8;
    CHECK_OK(kvl_layout_init(KVL_DTYPE_FP8, 512, 64, 0, &fp8));
    p = good;
    p.layout = &fp8; /* the 656-byte rows pass the layout steps */
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_INVALID_ARG);
    CHECK_MSG(strstr(err.msg, "ctx") != NULL, "%s", err.msg);
    p = good; /* everything right but the context */
    CHECK_STATUS(kcu_mla_plan_make(NULL, &p, &plan, &err), MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "ctx") != NULL);
    CHECK_STATUS(kcu_mla_decode(NULL, &p, &plan, dummy, 0, &err), MLS_ERR_INVALID_ARG);
}

/* ---- GEMM --------------------------------------------------------------------------- */

static void gemm_case(kc_dtype dtype, int64_t prows, int64_t cols, int64_t row0, int64_t rows,
                      int64_t n, kcu_gemm_precision prec, double tol)
{
    mls_err err = {{0}};
    size_t esize = dtype == KC_DTYPE_F32 ? 4 : (dtype == KC_DTYPE_FP8_E4M3 ? 1 : 2);
    int64_t scols = (cols + KC_FP8_BLOCK - 1) / KC_FP8_BLOCK;
    int64_t srows = (prows + KC_FP8_BLOCK - 1) / KC_FP8_BLOCK;
    uint8_t *wd = malloc((size_t)(prows * cols) * esize);
    float *sc = malloc((size_t)(srows * scols) * sizeof(float));
    int64_t xn = n * (rows > cols ? rows : cols);
    float *x = malloc((size_t)xn * sizeof(float));
    float *y = malloc((size_t)xn * sizeof(float)), *yr = malloc((size_t)xn * sizeof(float));
    void *dx = NULL, *dy = NULL;
    kcu_matrix m = {0, 0, NULL, false};

    for (int64_t i = 0; i < prows * cols; i++) {
        float v = rng_f() * 0.5f;
        switch (dtype) {
        case KC_DTYPE_F32:
            memcpy(wd + 4 * i, &v, 4);
            break;
        case KC_DTYPE_BF16: {
            uint16_t h = mls_f32_to_bf16(v);
            memcpy(wd + 2 * i, &h, 2);
            break;
        }
        case KC_DTYPE_F16: {
            uint16_t h = mls_f32_to_f16(v);
            memcpy(wd + 2 * i, &h, 2);
            break;
        }
        case KC_DTYPE_FP8_E4M3:
            wd[i] = mls_f32_to_fp8_e4m3(v * 448.0f);
            break;
        }
    }
    for (int64_t i = 0; i < srows * scols; i++) {
        sc[i] = (0.5f + 0.5f * fabsf(rng_f())) / 448.0f;
    }
    kc_matrix w = {dtype, rows, cols, row0, wd, dtype == KC_DTYPE_FP8_E4M3 ? sc : NULL};
    CHECK_OK(kcu_matrix_upload(g_ctx, &w, NULL, &m, &err));
    kcu_ctx_set_gemm_precision(g_ctx, prec);
    for (int t = 0; t < 2; t++) { /* matmul, then matmul_t */
        int64_t in = t ? rows : cols, out_dim = t ? cols : rows;
        fill(x, (size_t)(n * in), 1.0f);
        dx = dev_dup(x, (size_t)(n * in) * sizeof(float));
        dy = dev_dup(NULL, (size_t)(n * out_dim) * sizeof(float));
        CHECK(dx != NULL && dy != NULL);
        if (t == 0) {
            CHECK_OK(kcu_matmul(g_ctx, &m, dx, n, dy, &err));
            kc_matmul_ref(&w, x, n, yr);
        } else {
            CHECK_OK(kcu_matmul_t(g_ctx, &m, dx, n, dy, &err));
            kc_matmul_t_ref(&w, x, n, yr);
        }
        CHECK(dev_get(y, dy, (size_t)(n * out_dim) * sizeof(float)));
        double e = mls_test_rel_l2(y, yr, (size_t)(n * out_dim));
        fprintf(stderr, "  %s dtype %d view %lldx%lld@%lld n=%lld prec %d: rel_l2 %.2e\n",
                t ? "matmul_t" : "matmul", (int)dtype, (long long)rows, (long long)cols,
                (long long)row0, (long long)n, (int)prec, e);
        CHECK_LE_DBL(e, tol);
        kcu_free(dx);
        kcu_free(dy);
        dx = dy = NULL;
    }
    kcu_ctx_set_gemm_precision(g_ctx, KCU_GEMM_SPLIT);
    kcu_matrix_free(&m);
    free(yr);
    free(y);
    free(x);
    free(sc);
    free(wd);
}

static void test_gemm(void)
{
    NEED_DEVICE();
    /* bf16 weights are exact on the device: split activations keep ~f32 accuracy */
    gemm_case(KC_DTYPE_BF16, 300, 264, 0, 300, 1, KCU_GEMM_SPLIT, 5e-5);
    gemm_case(KC_DTYPE_BF16, 520, 1024, 0, 520, 37, KCU_GEMM_SPLIT, 5e-5);
    gemm_case(KC_DTYPE_BF16, 520, 1024, 0, 520, 37, KCU_GEMM_BF16, 8e-3);
    /* f32/f16/fp8 weights are rounded to bf16 once on upload */
    gemm_case(KC_DTYPE_F32, 200, 136, 0, 200, 3, KCU_GEMM_SPLIT, 8e-3);
    gemm_case(KC_DTYPE_F16, 200, 136, 0, 200, 3, KCU_GEMM_SPLIT, 8e-3);
    /* a row view of a block-fp8 parent with partial 128-blocks */
    gemm_case(KC_DTYPE_FP8_E4M3, 400, 300, 100, 250, 5, KCU_GEMM_SPLIT, 8e-3);
}

/* ---- elementwise ----------------------------------------------------------------------- */

static void test_rmsnorm_silu_rope(void)
{
    enum { N = 7, DIM = 7168, NV = 16, RD = 64, STR = 192 };
    mls_err err = {{0}};
    float *x, *w, *y, *yr;
    float inv_freq[RD / 2];
    int32_t pos[N] = {0, 1, 5, 63, 4095, 65000, 163839};
    void *dx, *dw, *dy, *dpos, *dfreq;

    NEED_DEVICE();
    x = malloc(N * DIM * sizeof(float));
    w = malloc(DIM * sizeof(float));
    y = malloc(N * DIM * sizeof(float));
    yr = malloc(N * DIM * sizeof(float));
    CHECK(x && w && y && yr);
    fill(x, N * DIM, 3.0f);
    fill(w, DIM, 1.0f);
    dx = dev_dup(x, N * DIM * sizeof(float));
    dw = dev_dup(w, DIM * sizeof(float));
    dy = dev_dup(NULL, N * DIM * sizeof(float));
    CHECK(dx && dw && dy);
    CHECK_OK(kcu_rmsnorm(g_ctx, dx, dw, N, DIM, 1e-6f, dy, &err));
    CHECK(dev_get(y, dy, N * DIM * sizeof(float)));
    kc_rmsnorm_ref(x, w, N, DIM, 1e-6f, yr);
    CHECK_LE_DBL(mls_test_rel_l2(y, yr, N * DIM), 2e-6);
    /* in place (out aliases x) */
    CHECK_OK(kcu_rmsnorm(g_ctx, dx, dw, N, DIM, 1e-6f, dx, &err));
    CHECK(dev_get(y, dx, N * DIM * sizeof(float)));
    CHECK_LE_DBL(mls_test_rel_l2(y, yr, N * DIM), 2e-6);

    /* silu-mul: dy holds the up operand */
    fill(x, N * DIM, 6.0f);
    fill(yr, N * DIM, 2.0f);
    CHECK(kcu_memcpy_h2d(g_ctx, dx, x, N * DIM * sizeof(float), &err) == MLS_OK);
    CHECK(kcu_memcpy_h2d(g_ctx, dy, yr, N * DIM * sizeof(float), &err) == MLS_OK);
    CHECK_OK(kcu_silu_mul(g_ctx, dx, dy, N * DIM, &err));
    CHECK(dev_get(y, dx, N * DIM * sizeof(float)));
    kc_silu_mul(x, yr, N * DIM);
    CHECK_LE_DBL(mls_test_rel_l2(y, x, N * DIM), 2e-6);

    /* rotary: N tokens at different positions, NV vectors of RD in rows of STR */
    for (int i = 0; i < RD / 2; i++) {
        inv_freq[i] = powf(10000.0f, -2.0f * (float)i / RD);
    }
    fill(x, N * NV * STR, 1.0f);
    memcpy(yr, x, N * NV * STR * sizeof(float));
    dpos = dev_dup(pos, sizeof(pos));
    dfreq = dev_dup(inv_freq, sizeof(inv_freq));
    CHECK(dpos && dfreq);
    CHECK(kcu_memcpy_h2d(g_ctx, dx, x, N * NV * STR * sizeof(float), &err) == MLS_OK);
    CHECK_OK(kcu_rope_interleaved(g_ctx, (float *)dx + 128, N, NV * STR, NV, STR, RD, dpos,
                                  dfreq, 1.0f, &err));
    CHECK(dev_get(y, dx, N * NV * STR * sizeof(float)));
    for (int t = 0; t < N; t++) {
        kc_rope_interleaved(yr + t * NV * STR + 128, NV, RD, STR, pos[t], inv_freq);
    }
    double worst = 0;
    for (int i = 0; i < N * NV * STR; i++) {
        double d = fabs((double)y[i] - yr[i]);
        worst = d > worst ? d : worst;
    }
    CHECK_LE_DBL(worst, 2e-6);
    kcu_free(dfreq);
    kcu_free(dpos);
    kcu_free(dy);
    kcu_free(dw);
    kcu_free(dx);
    free(yr);
    free(y);
    free(w);
    free(x);
}

/* ---- MoE router ------------------------------------------------------------------------- */

/* The engine's router (engine/eng_route.c), as the reference. */
static void moe_ref(const kcu_moe_gate_params *c, const float *bias, const float *logits,
                    int32_t *ids, float *w)
{
    eng_route_params p = {
        .n_experts = c->n_experts,
        .top_k = c->top_k,
        .n_group = c->n_group,
        .topk_group = c->topk_group,
        .group_limited = c->group_limited,
        .softmax = c->score == KCU_MOE_SCORE_SOFTMAX,
        .norm_topk_prob = c->norm_topk_prob,
        .v2_scaling = c->v2_scaling,
        .routed_scaling_factor = c->routed_scaling_factor,
    };
    float scores[KCU_MOE_MAX_EXPERTS], biased[KCU_MOE_MAX_EXPERTS];

    memcpy(scores, logits, (size_t)c->n_experts * sizeof(float));
    eng_route(&p, bias, scores, biased, ids, w);
}

static void test_moe_gate(void)
{
    enum { T = 67 };
    static const kcu_moe_gate_params cfgs[] = {
        /* DeepSeek-V3: sigmoid, noaux_tc bias, 8 groups keep 4, top-8 */
        {256, 8, 8, 4, true, KCU_MOE_SCORE_SIGMOID, true, false, 2.5f},
        /* DeepSeek-V2: softmax, group-limited without bias, V2 scaling rule */
        {160, 6, 8, 3, true, KCU_MOE_SCORE_SOFTMAX, false, true, 16.0f},
        /* V2-Lite: softmax greedy over 64 */
        {64, 6, 1, 1, false, KCU_MOE_SCORE_SOFTMAX, false, true, 1.0f},
        /* Kimi-K2-like: 384 experts, one group, sigmoid + bias */
        {384, 8, 1, 1, true, KCU_MOE_SCORE_SIGMOID, true, false, 2.827f},
    };
    mls_err err = {{0}};
    NEED_DEVICE();
    for (size_t ci = 0; ci < sizeof(cfgs) / sizeof(cfgs[0]); ci++) {
        const kcu_moe_gate_params *c = &cfgs[ci];
        int E = c->n_experts, K = c->top_k;
        float *lg = malloc((size_t)T * E * sizeof(float)), bias[KCU_MOE_MAX_EXPERTS];
        int32_t *ids = malloc((size_t)T * K * sizeof(int32_t)), rid[KCU_MOE_MAX_TOPK];
        float *w = malloc((size_t)T * K * sizeof(float)), rw[KCU_MOE_MAX_TOPK];
        bool use_bias = c->score == KCU_MOE_SCORE_SIGMOID;
        fill(lg, (size_t)T * E, 4.0f);
        fill(bias, (size_t)E, 0.1f);
        void *dl = dev_dup(lg, (size_t)T * E * sizeof(float));
        void *db = dev_dup(bias, (size_t)E * sizeof(float));
        void *di = dev_dup(NULL, (size_t)T * K * sizeof(int32_t));
        void *dw = dev_dup(NULL, (size_t)T * K * sizeof(float));
        CHECK(dl && db && di && dw);
        CHECK_OK(kcu_moe_gate(g_ctx, c, dl, use_bias ? db : NULL, T, di, dw, &err));
        CHECK(dev_get(ids, di, (size_t)T * K * sizeof(int32_t)));
        CHECK(dev_get(w, dw, (size_t)T * K * sizeof(float)));
        for (int t = 0; t < T; t++) {
            moe_ref(c, use_bias ? bias : NULL, lg + (size_t)t * E, rid, rw);
            for (int k = 0; k < K; k++) {
                CHECK_MSG(ids[t * K + k] == rid[k], "cfg %zu token %d slot %d: id %d, want %d",
                          ci, t, k, ids[t * K + k], rid[k]);
                CHECK_MSG(fabsf(w[t * K + k] - rw[k]) <= 1e-5f * fmaxf(1.0f, fabsf(rw[k])),
                          "cfg %zu token %d slot %d: weight %.8g, want %.8g", ci, t, k,
                          (double)w[t * K + k], (double)rw[k]);
            }
        }
        kcu_free(dw);
        kcu_free(di);
        kcu_free(db);
        kcu_free(dl);
        free(w);
        free(ids);
        free(lg);
    }
}

/* ---- sampling ----------------------------------------------------------------------------- */

typedef struct {
    float v;
    int32_t id;
} cand;

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->v != y->v) {
        return x->v > y->v ? -1 : 1;
    }
    return x->id < y->id ? -1 : (x->id > y->id);
}

static void test_argmax_topk(void)
{
    enum { N = 3, V = 129280 };
    static const int32_t ks[] = {1, 5, 50, 1024};
    mls_err err = {{0}};
    float *lg, lse[N];
    cand *c;
    int32_t ids[N], tid[KCU_TOPK_MAX];
    float tv[KCU_TOPK_MAX];

    NEED_DEVICE();
    lg = malloc((size_t)N * V * sizeof(float));
    c = malloc((size_t)V * sizeof(cand));
    CHECK(lg && c);
    fill(lg, (size_t)N * V, 8.0f);
    for (int i = 0; i < V; i++) { /* row 1: heavy ties (few distinct values), row 2: -inf tail */
        lg[V + i] = (float)(rng_next() % 7) - 3.0f;
        if (i >= V - 1000) {
            lg[2 * V + i] = -INFINITY;
        }
    }
    void *dl = dev_dup(lg, (size_t)N * V * sizeof(float));
    void *di = dev_dup(NULL, sizeof(ids)), *dlse = dev_dup(NULL, sizeof(lse));
    void *dti = dev_dup(NULL, (size_t)N * KCU_TOPK_MAX * sizeof(int32_t));
    void *dtv = dev_dup(NULL, (size_t)N * KCU_TOPK_MAX * sizeof(float));
    CHECK(dl && di && dlse && dti && dtv);
    CHECK_OK(kcu_argmax(g_ctx, dl, N, V, di, dlse, &err));
    CHECK(dev_get(ids, di, sizeof(ids)));
    CHECK(dev_get(lse, dlse, sizeof(lse)));
    for (int r = 0; r < N; r++) {
        const float *x = lg + (size_t)r * V;
        int32_t best = 0;
        double s = 0;
        for (int i = 1; i < V; i++) {
            best = x[i] > x[best] ? i : best;
        }
        for (int i = 0; i < V; i++) {
            s += exp((double)x[i] - x[best]);
        }
        CHECK_EQ_INT(ids[r], best);
        CHECK_LE_DBL(fabs(lse[r] - (x[best] + log(s))), 1e-4 * fmax(1.0, fabs(lse[r])));
    }
    for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
        int32_t k = ks[ki];
        CHECK_OK(kcu_topk(g_ctx, dl, N, V, k, dtv, dti, &err));
        for (int r = 0; r < N; r++) {
            CHECK(dev_get(tv, (float *)dtv + (size_t)r * k, (size_t)k * sizeof(float)));
            CHECK(dev_get(tid, (int32_t *)dti + (size_t)r * k, (size_t)k * sizeof(int32_t)));
            for (int i = 0; i < V; i++) {
                c[i].v = lg[(size_t)r * V + i];
                c[i].id = i;
            }
            qsort(c, V, sizeof(cand), cand_cmp);
            for (int i = 0; i < k; i++) {
                CHECK_MSG(tid[i] == c[i].id && tv[i] == c[i].v,
                          "row %d k %d rank %d: (%d, %g), want (%d, %g)", r, k, i, tid[i],
                          (double)tv[i], c[i].id, (double)c[i].v);
            }
        }
    }
    kcu_free(dtv);
    kcu_free(dti);
    kcu_free(dlse);
    kcu_free(di);
    kcu_free(dl);
    free(c);
    free(lg);
}

/* ---- KV row store ------------------------------------------------------------------------ */

static void test_kv_store(void)
{
    enum { T = 100, NP = 4 };
    mls_err err = {{0}};
    NEED_DEVICE();
    for (int d = 0; d < 2; d++) {
        for (int shape = 0; shape < 2; shape++) {
            kvl_layout l;
            uint32_t R = shape ? 32 : 512, D = shape ? 8 : 64;
            CHECK_OK(kvl_layout_init(d ? KVL_DTYPE_FP8 : KVL_DTYPE_BF16, R, D, 0, &l));
            size_t bytes = NP * l.page_bytes;
            uint8_t *want = calloc(1, bytes), *got = malloc(bytes);
            float *lat = malloc((size_t)T * (R + D) * sizeof(float));
            uint32_t page[T], slot[T];
            fill(lat, (size_t)T * (R + D), 5.0f);
            for (int t = 0; t < T; t++) {
                lat[(size_t)t * (R + D) + 3] = t == 7 ? 0.0f : lat[(size_t)t * (R + D) + 3];
                page[t] = (uint32_t)((t * 3) % NP);
                slot[t] = (uint32_t)(t / NP);
                kvl_row_store(&l, kvl_page_row(&l, want + kvl_page_offset(&l, page[t]), slot[t]),
                              lat + (size_t)t * (R + D), lat + (size_t)t * (R + D) + R);
            }
            void *dkv = dev_dup(want, bytes); /* same background bytes */
            void *dl = dev_dup(lat, (size_t)T * (R + D) * sizeof(float));
            void *dp = dev_dup(page, sizeof(page)), *ds = dev_dup(slot, sizeof(slot));
            CHECK(dkv && dl && dp && ds);
            CHECK_OK(kcu_memset(g_ctx, dkv, 0, bytes, &err));
            CHECK_OK(kcu_kv_store(g_ctx, &l, dkv, dl, R + D, (const float *)dl + R, R + D, dp, ds,
                                  T, &err));
            CHECK(dev_get(got, dkv, bytes));
            CHECK_MSG(memcmp(got, want, bytes) == 0, "%s R=%u: device rows differ from kvl_row_store",
                      kvl_dtype_name(l.dtype), R);
            kcu_free(ds);
            kcu_free(dp);
            kcu_free(dl);
            kcu_free(dkv);
            free(lat);
            free(got);
            free(want);
        }
    }
}

int main(void)
{
    mls_err err = {{0}};
    int n = 0;
    const char *seed = getenv("MLS_TEST_SEED");

    if (seed != NULL && *seed != '\0') {
        g_rng = strtoull(seed, NULL, 0) * 0x9e3779b97f4a7c15ull + 1;
    }
    fprintf(stderr, "seed: %s\n", seed != NULL ? seed : "(default)");
    if (kcu_device_count(&n, &err) != MLS_OK) {
        snprintf(g_skip, sizeof(g_skip), "%s", err.msg);
    } else if (kcu_ctx_create(0, &g_ctx, &err) != MLS_OK) {
        snprintf(g_skip, sizeof(g_skip), "kcu_ctx_create: %s", err.msg);
        g_ctx = NULL;
    } else {
        fprintf(stderr, "device: %s\n", kcu_ctx_device_name(g_ctx));
    }
    MLS_TEST_RUN(test_mla_validation_ladder);
    MLS_TEST_RUN(test_mla_decode_heads_dtypes);
    MLS_TEST_RUN(test_mla_decode_long_split);
    MLS_TEST_RUN(test_mla_decode_uneven_batch);
    MLS_TEST_RUN(test_mla_decode_mtp_and_small);
    MLS_TEST_RUN(test_gemm);
    MLS_TEST_RUN(test_rmsnorm_silu_rope);
    MLS_TEST_RUN(test_moe_gate);
    MLS_TEST_RUN(test_argmax_topk);
    MLS_TEST_RUN(test_kv_store);
    kcu_ctx_destroy(g_ctx);
    /* a device-less run must not look like a pass: the validation test alone
     * passing would otherwise hide nine skipped device tests */
    if (g_ctx == NULL && mls_test_failed_count == 0) {
        printf("%d passed, %d failed, %d skipped (no CUDA device: %s)\n", mls_test_passed_count,
               mls_test_failed_count, mls_test_skipped_count, g_skip);
        return 77;
    }
    return MLS_TEST_DONE();
}
