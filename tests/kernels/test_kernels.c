/*
 * test_kernels.c - every CPU kernel at every ISA level this machine has,
 * against the scalar references, on random inputs with awkward shapes.
 *
 * Measured errors are printed (relative L2 against the reference). Matmul:
 * the f32-FMA paths reach ~1e-7; the vdpbf16ps path (hi+lo bf16 split of
 * the activations) ~2e-6 (bound 2e-5). MLA: every level decodes rows to f32
 * and accumulates in f32, ~1e-7 for all page dtypes (bound 1e-5); each case
 * runs on the tile path, on the fused few-heads path (forced wherever the
 * case has at most KC_MLA_FEW_QV query vectors per sequence) and as the
 * dispatch rule chooses, single-threaded and split over a 3-thread pool
 * (long contexts: chunks combined by log-sum-exp).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kc.h"
#include "kc_internal.h" /* kc_mla_few_force */
#include "mls_num.h"
#include "mls_test.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Uniform in [-1, 1). */
static float rng_f(void)
{
    return (float)((double)(rng_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void fill_rand(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = rng_f() * scale;
    }
}

static double max_d(double a, double b)
{
    return a > b ? a : b;
}

/* ---- pool ----------------------------------------------------------------------- */

typedef struct {
    atomic_int hits[257];
    atomic_int bad_index;
    int n_threads;
} pool_ctx;

static void pool_task(void *ctx, int task, int n_tasks)
{
    pool_ctx *c = ctx;
    (void)n_tasks;
    atomic_fetch_add(&c->hits[task], 1);
}

static void test_pool(void)
{
    kc_pool *pool = NULL;
    pool_ctx *c = calloc(1, sizeof(*c));
    CHECK(c != NULL);
    CHECK_OK(kc_pool_create(3, &pool));
    CHECK_EQ_INT(kc_pool_size(pool), 3);
    CHECK_EQ_INT(kc_pool_size(NULL), 1);
    /* many back-to-back jobs of varying size: each task runs exactly once */
    for (int rep = 0; rep < 3000; rep++) {
        int n = 1 + (int)(rng_next() % 257);
        for (int i = 0; i < n; i++) {
            atomic_store(&c->hits[i], 0);
        }
        kc_pool_run(rep % 7 == 0 ? NULL : pool, pool_task, c, n);
        for (int i = 0; i < n; i++) {
            int hits = atomic_load(&c->hits[i]);
            if (hits != 1) {
                kc_pool_destroy(pool);
                free(c);
                CHECK_MSG(0, "job %d task %d ran %d times", rep, i, hits);
            }
        }
        if (rep % 1000 == 999) {
            usleep(300000); /* let the workers fall asleep on the futex */
        }
    }
    kc_pool_destroy(pool);
    kc_pool_destroy(NULL);
    free(c);
}

/* ---- ISA dispatch ------------------------------------------------------------------ */

static void test_isa(void)
{
    kc_isa best = kc_isa_detect();
    fprintf(stderr, "  detected ISA: %s\n", kc_isa_name(best));
    for (int i = 0; i < KC_ISA_COUNT; i++) {
        kc_isa_force((kc_isa)i);
        CHECK_EQ_INT(kc_isa_active(), i <= (int)best ? i : (int)best);
    }
    CHECK_STR_EQ(kc_isa_name(KC_ISA_AVX512_BF16), "avx512_bf16");
    CHECK_STR_EQ(kc_isa_name(KC_ISA_SCALAR), "scalar");
    kc_isa_force(best);
}

/* ---- matmul ----------------------------------------------------------------------- */

typedef struct {
    kc_matrix m;       /* the view */
    void *data;
    float *scales;
    int64_t parent_rows;
} test_weight;

static const char *dtype_name(kc_dtype t)
{
    static const char *const n[] = {"f32", "bf16", "f16", "fp8"};
    return n[t];
}

static int make_weight(kc_dtype dt, int64_t parent_rows, int64_t cols, int64_t row0, int64_t rows,
                       test_weight *w)
{
    size_t n = (size_t)(parent_rows * cols);
    int64_t srows = (parent_rows + 127) / 128, scols = (cols + 127) / 128;
    memset(w, 0, sizeof(*w));
    w->parent_rows = parent_rows;
    w->data = malloc(n * 4);
    if (w->data == NULL) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        float f = rng_f();
        switch (dt) {
        case KC_DTYPE_F32: ((float *)w->data)[i] = f; break;
        case KC_DTYPE_BF16: ((uint16_t *)w->data)[i] = mls_f32_to_bf16(f); break;
        case KC_DTYPE_F16: ((uint16_t *)w->data)[i] = mls_f32_to_f16(f * 2.0f); break;
        case KC_DTYPE_FP8_E4M3: {
            uint8_t b;
            do {
                b = (uint8_t)rng_next();
            } while ((b & 0x7f) == 0x7f); /* no NaN codes */
            ((uint8_t *)w->data)[i] = b;
            break;
        }
        }
    }
    if (dt == KC_DTYPE_FP8_E4M3) {
        w->scales = malloc((size_t)(srows * scols) * 4);
        if (w->scales == NULL) {
            return -1;
        }
        for (int64_t i = 0; i < srows * scols; i++) {
            w->scales[i] = (1.5f + rng_f()) * 1e-2f;
        }
    }
    w->m.dtype = dt;
    w->m.rows = rows;
    w->m.cols = cols;
    w->m.row0 = row0;
    w->m.data = w->data;
    w->m.scale_inv = w->scales;
    return 0;
}

static void free_weight(test_weight *w)
{
    free(w->data);
    free(w->scales);
}

/* rows, cols, row0, parent_rows, n */
static const int64_t mm_shapes[][5] = {
    {37, 200, 0, 37, 1},      {130, 300, 100, 300, 3},  {64, 129, 17, 200, 9},
    {260, 1000, 5, 300, 1},   {96, 515, 128, 260, 33},  {40, 3000, 200, 300, 40},
    {5, 16, 0, 5, 2},         {1, 7, 3, 4, 5},          {128, 256, 128, 384, 64},
};

static void test_matrix_to_f32(void)
{
    test_weight w;
    float *out;
    CHECK(make_weight(KC_DTYPE_FP8_E4M3, 300, 260, 100, 150, &w) == 0);
    out = malloc((size_t)(150 * 260) * 4);
    CHECK(out != NULL);
    kc_matrix_to_f32(&w.m, out);
    for (int64_t r = 0; r < 150; r++) {
        for (int64_t c = 0; c < 260; c++) {
            float want = mls_fp8_e4m3_to_f32(((uint8_t *)w.data)[(100 + r) * 260 + c]) *
                         w.scales[((100 + r) / 128) * 3 + c / 128];
            float got = out[r * 260 + c];
            if (got != want) {
                free(out);
                free_weight(&w);
                CHECK_MSG(0, "fp8 (%lld,%lld): %g != %g", (long long)r, (long long)c, got, want);
            }
        }
    }
    free(out);
    free_weight(&w);
}

static void test_matmul(void)
{
    kc_pool *pool = NULL;
    kc_isa best = kc_isa_detect();
    double worst[KC_ISA_COUNT][4][2] = {{{0}}};

    CHECK_OK(kc_pool_create(2, &pool));
    for (size_t s = 0; s < sizeof(mm_shapes) / sizeof(mm_shapes[0]); s++) {
        int64_t rows = mm_shapes[s][0], cols = mm_shapes[s][1], row0 = mm_shapes[s][2];
        int64_t prow = mm_shapes[s][3], n = mm_shapes[s][4];
        for (int dt = 0; dt < 4; dt++) {
            test_weight w;
            float *x = malloc((size_t)(n * cols) * 4), *xt = malloc((size_t)(n * rows) * 4);
            float *yref = malloc((size_t)(n * rows) * 4), *y = malloc((size_t)(n * rows) * 4);
            float *ytref = malloc((size_t)(n * cols) * 4), *yt = malloc((size_t)(n * cols) * 4);
            int ok = x && xt && yref && y && ytref && yt &&
                     make_weight((kc_dtype)dt, prow, cols, row0, rows, &w) == 0;
            double e = 0, et = 0;
            if (ok) {
                /* every third shape: activations large enough that fp8 GEMV
                 * cannot fold 2^112 into them and keeps the float decode */
                fill_rand(x, (size_t)(n * cols), s % 3 == 1 ? 1e5f : 1.0f);
                fill_rand(xt, (size_t)(n * rows), 1.0f);
                kc_matmul_ref(&w.m, x, n, yref);
                kc_matmul_t_ref(&w.m, xt, n, ytref);
                for (int isa = 0; isa <= (int)best; isa++) {
                    kc_isa_force((kc_isa)isa);
                    for (int pi = 0; pi < 2; pi++) {
                        memset(y, 0xff, (size_t)(n * rows) * 4); /* NaN: catches unwritten outputs */
                        memset(yt, 0xff, (size_t)(n * cols) * 4);
                        kc_matmul(pi ? pool : NULL, &w.m, x, n, y);
                        kc_matmul_t(pi ? pool : NULL, &w.m, xt, n, yt);
                        e = mls_test_rel_l2(y, yref, (size_t)(n * rows));
                        et = mls_test_rel_l2(yt, ytref, (size_t)(n * cols));
                        worst[isa][dt][0] = max_d(worst[isa][dt][0], e);
                        worst[isa][dt][1] = max_d(worst[isa][dt][1], et);
                        if (!(e <= 2e-5) || !(et <= 1e-5)) {
                            fprintf(stderr, "  isa %s dtype %s shape #%zu pool %d: err %g / %g\n",
                                    kc_isa_name((kc_isa)isa), dtype_name((kc_dtype)dt), s, pi, e, et);
                            ok = 0;
                        }
                    }
                }
                free_weight(&w);
            }
            free(x);
            free(xt);
            free(yref);
            free(y);
            free(ytref);
            free(yt);
            if (!ok) {
                kc_isa_force(best);
                kc_pool_destroy(pool);
                CHECK_MSG(0, "matmul mismatch (or out of memory) at shape #%zu dtype %s", s,
                          dtype_name((kc_dtype)dt));
            }
        }
    }
    for (int isa = 0; isa <= (int)best; isa++) {
        fprintf(stderr, "  %-12s max rel L2 err  matmul f32 %.2e bf16 %.2e f16 %.2e fp8 %.2e | "
                "matmul_t f32 %.2e bf16 %.2e f16 %.2e fp8 %.2e\n",
                kc_isa_name((kc_isa)isa), worst[isa][0][0], worst[isa][1][0], worst[isa][2][0],
                worst[isa][3][0], worst[isa][0][1], worst[isa][1][1], worst[isa][2][1],
                worst[isa][3][1]);
    }
    kc_isa_force(best);
    kc_pool_destroy(pool);
}

/* ---- elementwise -------------------------------------------------------------------- */

static void test_elementwise(void)
{
    kc_isa best = kc_isa_detect();
    enum { N = 3, DIM = 1037 };
    static float x[N * DIM], w[DIM], ref[N * DIM], out[N * DIM], g[N * DIM], up[N * DIM];
    double e_rms = 0, e_silu = 0, e_rope = 0;

    fill_rand(x, N * DIM, 3.0f);
    fill_rand(w, DIM, 1.0f);
    fill_rand(up, N * DIM, 1.0f);
    kc_rmsnorm_ref(x, w, N, DIM, 1e-6f, ref);
    for (int isa = 0; isa <= (int)best; isa++) {
        kc_isa_force((kc_isa)isa);
        kc_rmsnorm(x, w, N, DIM, 1e-6f, out);
        e_rms = max_d(e_rms, mls_test_rel_l2(out, ref, N * DIM));
        memcpy(out, x, sizeof(x));
        kc_rmsnorm(out, w, N, DIM, 1e-6f, out); /* in place */
        e_rms = max_d(e_rms, mls_test_rel_l2(out, ref, N * DIM));

        fill_rand(g, N * DIM, 30.0f);
        for (int i = 0; i < N * DIM; i++) {
            ref[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * up[i]);
        }
        kc_silu_mul(g, up, N * DIM);
        e_silu = max_d(e_silu, mls_test_rel_l2(g, ref, N * DIM));
        kc_rmsnorm_ref(x, w, N, DIM, 1e-6f, ref);
    }
    kc_isa_force(best);

    /* rotary: rope dims 8, 16, 64 at positions up to 128k */
    for (int di = 0; di < 3; di++) {
        int dim = di == 0 ? 8 : (di == 1 ? 16 : 64), nv = 5, stride = dim + 3;
        float inv[32], v[5 * 67], v0[5 * 67];
        int64_t pos = di == 2 ? 131071 : 17 + di;
        for (int i = 0; i < dim / 2; i++) {
            inv[i] = (float)pow(10000.0, -2.0 * i / dim);
        }
        fill_rand(v, (size_t)(nv * stride), 1.0f);
        memcpy(v0, v, sizeof(v));
        kc_rope_interleaved(v, nv, dim, stride, pos, inv);
        for (int k = 0; k < nv; k++) {
            for (int i = 0; i < dim / 2; i++) {
                float a = (float)pos * inv[i];
                double c = cos((double)a), s = sin((double)a);
                double x0 = v0[k * stride + 2 * i], x1 = v0[k * stride + 2 * i + 1];
                e_rope = max_d(e_rope, fabs(v[k * stride + 2 * i] - (x0 * c - x1 * s)));
                e_rope = max_d(e_rope, fabs(v[k * stride + 2 * i + 1] - (x0 * s + x1 * c)));
            }
            for (int i = dim; i < stride; i++) {
                CHECK(v[k * stride + i] == v0[k * stride + i]); /* padding untouched */
            }
        }
    }
    fprintf(stderr, "  max err: rmsnorm %.2e (rel L2) silu_mul %.2e (rel L2) rope %.2e (abs)\n",
            e_rms, e_silu, e_rope);
    CHECK_LE_DBL(e_rms, 1e-6);
    CHECK_LE_DBL(e_silu, 1e-6);
    CHECK_LE_DBL(e_rope, 1e-5);
}

/* ---- MLA attention -------------------------------------------------------------------- */

typedef struct {
    kvl_dtype dtype;
    uint32_t R, D;
    int32_t H;
    int n_seqs;
    int32_t kv_len[4], n_q[4];
    float amp; /* latent magnitude (0: 1) */
} mla_case;

static const mla_case mla_cases[] = {
    {KVL_DTYPE_F32, 512, 64, 16, 3, {1000, 77, 130}, {1, 1, 5}, 0},
    {KVL_DTYPE_BF16, 160, 16, 128, 2, {300, 65}, {1, 3}, 0},
    {KVL_DTYPE_FP8, 32, 8, 1, 3, {4000, 63, 200}, {1, 1, 7}, 0},
    {KVL_DTYPE_FP8, 512, 64, 3, 2, {2500, 1}, {1, 1}, 0},
    {KVL_DTYPE_BF16, 512, 64, 128, 1, {400}, {2}, 0},
    {KVL_DTYPE_F32, 36, 8, 5, 4, {129, 64, 1, 333}, {1, 64, 1, 40}, 0},
    {KVL_DTYPE_FP8, 160, 16, 2, 2, {3000, 150}, {3, 150}, 0},
    /* few heads (the fused path): long contexts split and combined, many
     * pages, ragged last pages, 1..8 heads */
    {KVL_DTYPE_BF16, 512, 64, 1, 3, {5000, 64, 1}, {1, 1, 1}, 0},
    {KVL_DTYPE_FP8, 512, 64, 1, 2, {4500, 700}, {1, 1}, 0},
    {KVL_DTYPE_F32, 512, 64, 2, 2, {3000, 65}, {1, 1}, 0},
    {KVL_DTYPE_BF16, 512, 64, 4, 2, {2000, 129}, {1, 1}, 0},
    {KVL_DTYPE_FP8, 512, 64, 2, 3, {2100, 17, 640}, {1, 1, 1}, 0},
    {KVL_DTYPE_BF16, 512, 64, 8, 2, {1500, 300}, {1, 1}, 0},
    {KVL_DTYPE_FP8, 160, 16, 6, 1, {1000}, {1}, 0},
    /* tails: R, D not multiples of any vector width; partial fp8 scale block */
    {KVL_DTYPE_BF16, 100, 6, 3, 2, {1500, 130}, {1, 1}, 0},
    {KVL_DTYPE_FP8, 200, 10, 4, 2, {2100, 17}, {1, 1}, 0},
    {KVL_DTYPE_F32, 20, 2, 1, 1, {700}, {1}, 0},
    /* few query vectors over several queries (causal), 3 and 4 vectors */
    {KVL_DTYPE_BF16, 64, 16, 1, 2, {900, 40}, {4, 3}, 0},
    {KVL_DTYPE_FP8, 128, 16, 2, 2, {700, 100}, {2, 1}, 0},
    /* fp8 scales of 2^7 and more (the fused path's f16 fallback), tiny scales */
    {KVL_DTYPE_FP8, 512, 64, 1, 2, {1000, 90}, {1, 1}, 1e5f},
    {KVL_DTYPE_FP8, 256, 32, 2, 1, {800}, {1}, 1e-3f},
};

/* Relative L2 error allowed against the f32 reference: f32 arithmetic
 * throughout, except the AVX512-BF16 fused fp8 path, which (as FlashMLA)
 * rounds the query and the softmax weights to bf16 (2^-9 relative each) and
 * accumulates in f32. */
static double mla_tolerance(const mla_case *c, int isa)
{
    return c->dtype == KVL_DTYPE_FP8 && isa == KC_ISA_AVX512_BF16 ? 4e-3 : 1e-5;
}

/* The largest error over every ISA and path, as a fraction of its tolerance. */
static double run_mla_case(const mla_case *c, kc_pool *pool, int verbose, double *worst_p)
{
    kvl_layout l;
    kc_mla_seq seqs[4];
    kc_mla_params p;
    int64_t total_q = 0, n_pages = 0, R = c->R, D = c->D, H = c->H;
    uint32_t *perm, *tables;
    uint8_t *kv;
    float *ql, *qr, *ref, *out, *lat, *rope;
    double err = -1;
    void *ws = NULL;

    if (kvl_layout_init(c->dtype, c->R, c->D, 7, &l) != MLS_OK) {
        return -1;
    }
    for (int s = 0; s < c->n_seqs; s++) {
        total_q += c->n_q[s];
        n_pages += (c->kv_len[s] + 63) / 64;
    }
    n_pages += 3; /* unused pages in the pool */
    perm = malloc((size_t)n_pages * 4);
    tables = malloc((size_t)n_pages * 4);
    kv = malloc((size_t)n_pages * l.page_bytes);
    ql = malloc((size_t)(total_q * H * R) * 4);
    qr = malloc((size_t)(total_q * H * D) * 4);
    ref = malloc((size_t)(total_q * H * R) * 4);
    out = malloc((size_t)(total_q * H * R) * 4);
    lat = malloc((size_t)R * 4);
    rope = malloc((size_t)D * 4 + 4);
    if (!perm || !tables || !kv || !ql || !qr || !ref || !out || !lat || !rope) {
        goto out_free;
    }
    /* shuffled, non-contiguous pages */
    for (int64_t i = 0; i < n_pages; i++) {
        perm[i] = (uint32_t)i;
    }
    for (int64_t i = n_pages - 1; i > 0; i--) {
        int64_t j = (int64_t)(rng_next() % (uint64_t)(i + 1));
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    memset(kv, 0xff, (size_t)n_pages * l.page_bytes); /* NaN garbage in unused rows */
    {
        int64_t pi = 0, qi = 0;
        for (int s = 0; s < c->n_seqs; s++) {
            seqs[s].page_table = tables + pi;
            seqs[s].kv_len = c->kv_len[s];
            seqs[s].n_q = c->n_q[s];
            seqs[s].q_index = qi;
            qi += c->n_q[s];
            for (int32_t t = 0; t < c->kv_len[s]; t++) {
                if (t % 64 == 0) {
                    tables[pi] = perm[n_pages - 1 - pi];
                    pi++;
                }
                fill_rand(lat, (size_t)R, c->amp > 0 ? c->amp : 1.0f);
                fill_rand(rope, (size_t)D, 1.0f);
                kvl_row_store(&l, kvl_row_ptr(&l, kv, seqs[s].page_table, (uint64_t)t), lat, rope);
            }
        }
    }
    fill_rand(ql, (size_t)(total_q * H * R), 2.0f);
    fill_rand(qr, (size_t)(total_q * H * D), 2.0f);
    p.layout = &l;
    p.kv_base = kv;
    p.n_heads = c->H;
    p.softmax_scale = 1.0f / sqrtf((float)(R + D)) * 2.0f;
    p.q_latent = ql;
    p.q_rope = qr;
    p.out = ref;
    p.seqs = seqs;
    p.n_seqs = c->n_seqs;
    kc_mla_attention_ref(&p);
    p.out = out;
    err = 0;
    for (int run = 0; run < 3 * ((int)kc_isa_detect() + 1); run++) {
        int isa = run / 3;
        kc_isa_force((kc_isa)isa);
        kc_mla_few_force = run % 3 == 0 ? -1 : (run % 3 == 1 ? 0 : KC_MLA_FEW_QV);
        for (int pi = 0; pi < 2; pi++) {
            kc_pool *pl = pi ? pool : NULL;
            size_t wsz = kc_mla_workspace_size(pl, &p);
            double e;
            ws = malloc(wsz);
            if (ws == NULL) {
                err = -1;
                goto out_free;
            }
            memset(out, 0xff, (size_t)(total_q * H * R) * 4);
            kc_mla_attention(pl, &p, ws);
            free(ws);
            ws = NULL;
            e = mls_test_rel_l2(out, ref, (size_t)(total_q * H * R)) / mla_tolerance(c, isa);
            if (!(e <= err)) {
                err = isnan(e) ? INFINITY : e;
            }
            if (worst_p != NULL && !(e * mla_tolerance(c, isa) <= worst_p[isa])) {
                worst_p[isa] = isnan(e) ? INFINITY : e * mla_tolerance(c, isa);
            }
            if (verbose) {
                fprintf(stderr, "    %s pool %d few %d: rel L2 %.2e\n", kc_isa_name((kc_isa)isa), pi,
                        kc_mla_few_force, e * mla_tolerance(c, isa));
            }
        }
    }
    kc_isa_force(kc_isa_detect());
    kc_mla_few_force = -1;
out_free:
    free(perm);
    free(tables);
    free(kv);
    free(ql);
    free(qr);
    free(ref);
    free(out);
    free(lat);
    free(rope);
    free(ws);
    return err;
}

static void test_mla(void)
{
    kc_pool *pool = NULL;
    double worst[KC_ISA_COUNT] = {0};
    CHECK_OK(kc_pool_create(3, &pool));
    for (size_t i = 0; i < sizeof(mla_cases) / sizeof(mla_cases[0]); i++) {
        const mla_case *c = &mla_cases[i];
        double e = run_mla_case(c, pool, 0, worst);
        fprintf(stderr, "  case %zu: %s R=%u D=%u H=%d seqs=%d: max rel L2 / tolerance %.2f\n",
                i, kvl_dtype_name(c->dtype), c->R, c->D, c->H, c->n_seqs, e);
        if (!(e >= 0 && e <= 1.0)) {
            kc_pool_destroy(pool);
            CHECK_MSG(0, "mla case %zu: error %g (or out of memory)", i, e);
        }
    }
    for (int isa = 0; isa <= (int)kc_isa_detect(); isa++) {
        fprintf(stderr, "  %-12s mla max rel L2 err %.2e\n", kc_isa_name((kc_isa)isa), worst[isa]);
    }
    kc_pool_destroy(pool);
}

static void test_bandwidth(void)
{
    kc_pool *pool = NULL;
    double bw;
    CHECK_OK(kc_pool_create(2, &pool));
    bw = kc_measure_read_bandwidth(pool, 16u << 20, 2);
    kc_pool_destroy(pool);
    fprintf(stderr, "  read bandwidth (16 MiB, 2 threads): %.1f GB/s\n", bw / 1e9);
    CHECK(isfinite(bw) && bw > 1e8);
    CHECK(kc_measure_read_bandwidth(NULL, 0, 1) == 0.0);
}

/* ---- DeepSeek-V4: indexer scores, top-k, attention with sink ------------------------ */

/* A random FP4 key row (Id values; UE8M0 scales 120..130). */
static void v4_rand_key(uint8_t *row, int32_t Id)
{
    for (int32_t i = 0; i < Id / 2; i++) {
        row[i] = (uint8_t)rng_next();
    }
    for (int32_t b = 0; b < Id / 32; b++) {
        row[Id / 2 + b] = (uint8_t)(120 + rng_next() % 11);
    }
}

/* A random FP8 V4 entry (no NaN codes; scales 115..135, the two-step decode included). */
static void v4_rand_entry(uint8_t *row, int32_t nope, int32_t rope)
{
    uint8_t *sc = row + nope, *rp = sc + KVL_V4_SCALE_BYTES((uint32_t)nope);
    for (int32_t i = 0; i < nope; i++) {
        uint8_t b = (uint8_t)rng_next();
        row[i] = (b & 0x7f) == 0x7f ? (uint8_t)(b - 1) : b;
    }
    memset(sc, 0, KVL_V4_SCALE_BYTES((uint32_t)nope));
    for (int32_t b = 0; b < nope / 64; b++) {
        sc[b] = (uint8_t)(115 + rng_next() % 21);
    }
    for (int32_t i = 0; i < rope; i++) {
        uint16_t h = mls_f32_to_bf16(rng_f());
        memcpy(rp + 2 * i, &h, sizeof(h));
    }
}

/* A query on the FP4 grid (e2m1 codes times 2^e per 32), as the indexer quantizes it. */
static void v4_rand_fp4_query(float *q, int64_t n)
{
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    for (int64_t b = 0; b < n; b += 32) {
        int e = -4 + (int)(rng_next() % 6);
        for (int64_t i = b; i < b + 32 && i < n; i++) {
            uint64_t r = rng_next();
            q[i] = ldexpf((r & 8) ? -mag[r & 7] : mag[r & 7], e);
        }
    }
}

static void test_v4_index(void)
{
    static const struct {
        int32_t IH, Id;
        int64_t n;
    } cases[] = {{8, 64, 1}, {5, 64, 37}, {64, 128, 1000}, {3, 256, 95}};
    kc_pool *pool = NULL;
    CHECK_OK(kc_pool_create(3, &pool));
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        int32_t IH = cases[ci].IH, Id = cases[ci].Id;
        int64_t n = cases[ci].n, rb = KVL_ROW_BYTES_V4_INDEXER((uint32_t)Id);
        uint8_t *keys = malloc((size_t)(n * rb));
        float *q = malloc(sizeof(float) * (size_t)IH * Id), *w = malloc(sizeof(float) * IH);
        float *ref = malloc(sizeof(float) * (size_t)n), *got = malloc(sizeof(float) * (size_t)n);
        float *kf = malloc(sizeof(float) * (size_t)Id);
        CHECK(keys && q && w && ref && got && kf);
        for (int64_t j = 0; j < n; j++) {
            v4_rand_key(keys + j * rb, Id);
        }
        v4_rand_fp4_query(q, (int64_t)IH * Id);
        fill_rand(w, (size_t)IH, 1.0f);
        kc_v4_index_params p = {keys, n, rb, IH, Id, q, w, ref};
        kc_v4_index_scores_ref(&p);
        /* the reference is the engine's f32 sum over the decoded keys, bit for bit */
        for (int64_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (int32_t i = 0; i < Id; i++) {
                uint8_t b = keys[j * rb + i / 2];
                uint8_t nib = (i & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0xf);
                static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
                kf[i] = ldexpf((nib & 8) ? -mag[nib & 7] : mag[nib & 7],
                               (int)keys[j * rb + Id / 2 + i / 32] - 127);
            }
            for (int32_t h = 0; h < IH; h++) {
                volatile float dot = 0.0f;
                for (int32_t i = 0; i < Id; i++) {
                    volatile float prod = q[h * Id + i] * kf[i];
                    dot = dot + prod;
                }
                volatile float term = w[h] * fmaxf(dot, 0.0f);
                s = s + term;
            }
            CHECK_MSG(memcmp(&s, &ref[j], sizeof(s)) == 0, "v4 index ref key %lld: %.9g vs f32 %.9g",
                      (long long)j, ref[j], s);
        }
        for (int isa = 0; isa <= (int)kc_isa_detect(); isa++) {
            kc_isa_force((kc_isa)isa);
            for (int pi = 0; pi < 2; pi++) {
                memset(got, 0xff, sizeof(float) * (size_t)n);
                p.score = got;
                kc_v4_index_scores(pi ? pool : NULL, &p);
                CHECK_MSG(memcmp(got, ref, sizeof(float) * (size_t)n) == 0,
                          "v4 index IH=%d Id=%d n=%lld %s pool=%d: scores differ from the reference",
                          IH, Id, (long long)n, kc_isa_name((kc_isa)isa), pi);
            }
        }
        kc_isa_force(kc_isa_detect());
        fprintf(stderr, "  v4 index IH=%d Id=%d keys=%lld: every level bit-exact\n", IH, Id,
                (long long)n);
        free(keys);
        free(q);
        free(w);
        free(ref);
        free(got);
        free(kf);
    }
    kc_pool_destroy(pool);
}

static void test_v4_topk(void)
{
    enum { N = 700 };
    float score[N];
    int32_t sel[N], want[N];
    for (int rep = 0; rep < 20; rep++) {
        int64_t n = 1 + (int64_t)(rng_next() % N), k = 1 + (int64_t)(rng_next() % 80), m = 0;
        for (int64_t j = 0; j < n; j++) {
            score[j] = (float)(rng_next() % 50); /* many ties */
        }
        /* want: selection by repeated scans (higher score, then lower index) */
        uint8_t taken[N] = {0};
        for (; m < k && m < n; m++) {
            int64_t best = -1;
            for (int64_t j = 0; j < n; j++) {
                if (!taken[j] && (best < 0 || score[j] > score[best])) {
                    best = j;
                }
            }
            taken[best] = 1;
            want[m] = (int32_t)best;
        }
        CHECK_EQ_INT(kc_v4_topk(score, n, k, sel), m);
        for (int64_t i = 0; i < m; i++) {
            CHECK_MSG(sel[i] == want[i], "topk n=%lld k=%lld: sel[%lld] %d, want %d", (long long)n,
                      (long long)k, (long long)i, sel[i], want[i]);
        }
    }
}

static void test_v4_attn(void)
{
    static const struct {
        int32_t H, nope, rope, n_q, k, n_rows;
    } cases[] = {{4, 128, 16, 3, 20, 24}, {5, 128, 64, 2, 150, 90}, {64, 448, 64, 1, 200, 260},
                 {1, 64, 8, 1, 5, 3}};
    kc_pool *pool = NULL;
    double worst = 0.0;
    CHECK_OK(kc_pool_create(3, &pool));
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        int32_t H = cases[ci].H, nope = cases[ci].nope, rope = cases[ci].rope, d = nope + rope;
        int32_t n_q = cases[ci].n_q, k = cases[ci].k, n_rows = cases[ci].n_rows;
        int64_t rb = KVL_ROW_BYTES_V4_ENTRY((uint32_t)nope, (uint32_t)rope);
        uint8_t *store = malloc((size_t)(rb * n_rows));
        const uint8_t **rows = malloc(sizeof(*rows) * (size_t)n_q * k);
        float *q = malloc(sizeof(float) * (size_t)n_q * H * d), *sink = malloc(sizeof(float) * H);
        float *ref = malloc(sizeof(float) * (size_t)n_q * H * d);
        float *got = malloc(sizeof(float) * (size_t)n_q * H * d);
        CHECK(store && rows && q && sink && ref && got);
        for (int32_t j = 0; j < n_rows; j++) {
            v4_rand_entry(store + j * rb, nope, rope);
        }
        /* each query lists rows at random (repeats allowed), some NULL; the last
         * query of the first case lists none */
        for (int64_t i = 0; i < (int64_t)n_q * k; i++) {
            uint64_t r = rng_next();
            rows[i] = (r % 7 == 0) ? NULL : store + (int64_t)((r >> 8) % (uint64_t)n_rows) * rb;
        }
        if (ci == 0) {
            for (int32_t j = 0; j < k; j++) {
                rows[(int64_t)(n_q - 1) * k + j] = NULL;
            }
        }
        fill_rand(q, (size_t)n_q * H * d, 0.5f);
        fill_rand(sink, (size_t)H, 2.0f);
        kc_v4_attn_params p = {H, nope, rope, 1.0f / sqrtf((float)d), sink, q, rows, n_q, k, ref};
        kc_v4_attn_ref(&p);
        for (int isa = 0; isa <= (int)kc_isa_detect(); isa++) {
            kc_isa_force((kc_isa)isa);
            for (int pi = 0; pi < 2; pi++) {
                p.out = got;
                kc_v4_attn(pi ? pool : NULL, &p);
                for (int64_t u = 0; u < (int64_t)n_q * H; u++) {
                    double e = mls_test_rel_l2(got + u * d, ref + u * d, (size_t)d);
                    int zero = 1;
                    for (int32_t c = 0; c < d; c++) {
                        zero &= ref[u * d + c] == 0.0f && got[u * d + c] == 0.0f;
                    }
                    e = zero ? 0.0 : e;
                    worst = max_d(worst, e);
                    CHECK_MSG(e <= 1e-5, "v4 attn case %zu %s pool=%d vector %lld: rel L2 %.3g",
                              ci, kc_isa_name((kc_isa)isa), pi, (long long)u, e);
                }
            }
        }
        kc_isa_force(kc_isa_detect());
        free(store);
        free(rows);
        free(q);
        free(sink);
        free(ref);
        free(got);
    }
    fprintf(stderr, "  v4 attention: max rel L2 err %.2e over every level (bound 1e-5)\n", worst);
    kc_pool_destroy(pool);
}

int main(void)
{
    MLS_TEST_RUN(test_isa);
    MLS_TEST_RUN(test_pool);
    MLS_TEST_RUN(test_matrix_to_f32);
    MLS_TEST_RUN(test_matmul);
    MLS_TEST_RUN(test_elementwise);
    MLS_TEST_RUN(test_mla);
    MLS_TEST_RUN(test_v4_index);
    MLS_TEST_RUN(test_v4_topk);
    MLS_TEST_RUN(test_v4_attn);
    MLS_TEST_RUN(test_bandwidth);
    return MLS_TEST_DONE();
}
