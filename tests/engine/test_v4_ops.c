/*
 * test_v4_ops.c - DeepSeek-V4's numeric building blocks against the
 * reference's op-level goldens (tests/fixtures/models/tiny-v4/ops.safetensors,
 * README-v4 sections 5 and 7).
 *
 * Tolerances as README-v4 section 7 states them: the FP8/FP4 quantizers and
 * the weight decoders bit for bit; Hadamard, mHC Sinkhorn and sparse
 * attention within 1e-6 relative (L2 per row); rotary tables within 1e-5
 * absolute. The codecs are also checked exhaustively (every e4m3 code and
 * e2m1 nibble round-trips) and the weight decoders against the formula of
 * README-v4 section 2 on tiny-v4-fp8's real FP8 and FP4 tensors.
 */
#include <math.h>
#include <string.h>

#include "eng_safetensors.h"
#include "eng_v4_ops.h"
#include "mls_test.h"

/* The F32 tensor `name` of ar with `numel` elements, or NULL with the reason
 * printed (the caller fails). */
static const float *ops_tensor(const st_archive *ar, const char *name, int64_t numel)
{
    const st_tensor *t = st_find(ar, name);
    if (t == NULL) {
        fprintf(stderr, "  ops.safetensors has no '%s'\n", name);
        return NULL;
    }
    if (t->dtype != ST_DTYPE_F32 || t->nbytes != (uint64_t)numel * 4) {
        fprintf(stderr, "  '%s': %s, %llu bytes; want F32 x %lld\n", name, st_dtype_name(t->dtype),
                (unsigned long long)t->nbytes, (long long)numel);
        return NULL;
    }
    return t->data;
}

/* tiny-v4/ops.safetensors into *ar_p (NULL and the test fails when it cannot be read). */
static void ops_open(st_archive **ar_p)
{
    char path[600];
    mls_err err = {{0}};

    *ar_p = NULL;
    CHECK_FIXTURE("models/tiny-v4/ops.safetensors", path);
    CHECK_MSG(st_open_file(path, ar_p, &err) == MLS_OK, "%s", err.msg);
}

/* Fail the current test for a tensor ops_tensor could not hand out (it said why). */
static void ops_missing(void)
{
    CHECK_MSG(0, "ops.safetensors lacks a tensor this test needs (see above)");
}

/* Count elements whose bits differ; print the first. */
static int64_t bits_differ(const char *what, int64_t row, const float *got, const float *want,
                           int64_t n)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], 4) != 0) {
            if (bad == 0) {
                fprintf(stderr, "  %s row %lld [%lld]: got %.9g want %.9g\n", what, (long long)row,
                        (long long)i, got[i], want[i]);
            }
            bad++;
        }
    }
    return bad;
}

/* ---- codecs -------------------------------------------------------------- */

static void test_e4m3_codes_round_trip(void)
{
    int distinct_nan = 0;
    for (int c = 0; c < 256; c++) {
        float v = eng_v4_e4m3_decode((uint8_t)c);
        if (isnan(v)) {
            distinct_nan++;
            continue;
        }
        /* the formula of README-v4 section 2, independently */
        int e = (c >> 3) & 15, m = c & 7;
        double want = e == 0 ? m / 8.0 * pow(2, -6) : (1 + m / 8.0) * pow(2, e - 7);
        want = (c & 0x80) ? -want : want;
        CHECK_MSG((double)v == want, "code 0x%02x decodes to %g, want %g", c, v, want);
        CHECK_MSG(eng_v4_e4m3_encode(v) == c, "code 0x%02x re-encodes to 0x%02x", c,
                  eng_v4_e4m3_encode(v));
    }
    CHECK_EQ_INT(distinct_nan, 2);
    CHECK(eng_v4_e4m3_decode(0x7e) == 448.0f && eng_v4_e4m3_decode(0x01) == 0x1p-9f);
    /* ties: halfway between 1 and 1.125 goes to 1 (even), between 1.125 and 1.25 to 1.25 */
    CHECK_EQ_INT(eng_v4_e4m3_encode(1.0625f), 0x38);
    CHECK_EQ_INT(eng_v4_e4m3_encode(1.1875f), 0x3a);
    CHECK_EQ_INT(eng_v4_e4m3_encode(0x1p-10f), 0x00); /* half the subnormal quantum */
    CHECK_EQ_INT(eng_v4_e4m3_encode(3 * 0x1p-10f), 0x02);
}

static void test_e2m1_codes_round_trip(void)
{
    static const float ties[][2] = {{0.25f, 0}, {0.75f, 1}, {1.25f, 1}, {1.75f, 2},
                                    {2.5f, 2},  {3.5f, 4},  {5.0f, 4}};
    for (int c = 0; c < 16; c++) {
        float v = eng_v4_e2m1_decode((uint8_t)c);
        CHECK_MSG(eng_v4_e2m1_encode(v) == c, "nibble %d (%g) re-encodes to %d", c, v,
                  eng_v4_e2m1_encode(v));
    }
    for (size_t i = 0; i < sizeof(ties) / sizeof(ties[0]); i++) {
        float got = eng_v4_e2m1_decode(eng_v4_e2m1_encode(ties[i][0]));
        CHECK_MSG(got == ties[i][1], "e2m1(%g) = %g, want %g", ties[i][0], got, ties[i][1]);
        got = eng_v4_e2m1_decode(eng_v4_e2m1_encode(-ties[i][0]));
        CHECK_MSG(got == -ties[i][1], "e2m1(-%g) = %g, want -%g", ties[i][0], got, ties[i][1]);
    }
    CHECK(eng_v4_ue8m0_decode(127) == 1.0f && eng_v4_ue8m0_decode(116) == 0x1p-11f &&
          isnan(eng_v4_ue8m0_decode(255)));
}

/* ---- quantizers (bit-exact) ------------------------------------------------ */

static void check_quantizer(const st_archive *ar, const char *prefix, int32_t cols, int32_t block,
                            bool fp4)
{
    char nx[64], ny[64], ns[64];
    int32_t rows = 22, nblk = cols / block;
    snprintf(nx, sizeof(nx), "%s.x", prefix);
    snprintf(ny, sizeof(ny), "%s.y", prefix);
    snprintf(ns, sizeof(ns), "%s.scale", prefix);
    const float *x = ops_tensor(ar, nx, (int64_t)rows * cols);
    const float *y = ops_tensor(ar, ny, (int64_t)rows * cols);
    const float *s = ops_tensor(ar, ns, (int64_t)rows * nblk);
    float got[256], got_s[8];
    int64_t bad_y = 0, bad_s = 0;

    CHECK_MSG(x != NULL && y != NULL && s != NULL, "%s: tensors missing (see above)", prefix);
    for (int32_t r = 0; r < rows; r++) {
        if (fp4) {
            eng_v4_fp4_qdq(x + (int64_t)r * cols, cols, got, got_s);
        } else {
            eng_v4_fp8_qdq(x + (int64_t)r * cols, cols, block, got, got_s);
        }
        bad_y += bits_differ(ny, r, got, y + (int64_t)r * cols, cols);
        bad_s += bits_differ(ns, r, got_s, s + (int64_t)r * nblk, nblk);
    }
    CHECK_MSG(bad_y == 0 && bad_s == 0, "%s: %lld values and %lld scales differ in their bits",
              prefix, (long long)bad_y, (long long)bad_s);
}

static void test_fp8_quant_bit_exact(void)
{
    st_archive *ar;
    ops_open(&ar);
    if (ar != NULL) {
        check_quantizer(ar, "fp8_block64", 128, 64, false);
        check_quantizer(ar, "fp8_block128", 256, 128, false);
    }
    st_close(ar);
}

static void test_fp4_quant_bit_exact(void)
{
    st_archive *ar;
    ops_open(&ar);
    if (ar != NULL) {
        check_quantizer(ar, "fp4_block32", 64, 32, true);
    }
    st_close(ar);
}

/* ---- transforms (1e-6 relative) ------------------------------------------- */

static void check_rows_rel(const char *what, const float *got, const float *want, int32_t rows,
                           int32_t cols, double tol)
{
    double worst = 0;
    for (int32_t r = 0; r < rows; r++) {
        double e = mls_test_rel_l2(got + (int64_t)r * cols, want + (int64_t)r * cols, cols);
        worst = fmax(worst, e);
    }
    CHECK_MSG(worst <= tol, "%s: worst row rel L2 %.3g > %.3g", what, worst, tol);
}

static void test_hadamard(void)
{
    st_archive *ar;
    ops_open(&ar);
    static const int32_t orders[] = {32, 64};

    for (int i = 0; ar != NULL && i < 2; i++) {
        char nx[32], ny[32];
        int32_t n = orders[i];
        float got[8 * 64];
        snprintf(nx, sizeof(nx), "hadamard%d.x", n);
        snprintf(ny, sizeof(ny), "hadamard%d.y", n);
        const float *x = ops_tensor(ar, nx, 8 * n), *y = ops_tensor(ar, ny, 8 * n);
        if (x == NULL || y == NULL) {
            ops_missing();
            break;
        }
        memcpy(got, x, sizeof(float) * 8 * (size_t)n);
        for (int r = 0; r < 8; r++) {
            eng_v4_hadamard(got + r * n, n);
        }
        check_rows_rel(nx, got, y, 8, n, 1e-6);
    }
    st_close(ar);
}

static void test_hc_sinkhorn(void)
{
    enum { N = 16, H = 4, M = (2 + H) * H };
    st_archive *ar;
    ops_open(&ar);
    const float *mix, *scale, *base, *pre, *post, *comb;
    float g_pre[N * H], g_post[N * H], g_comb[N * H * H];

    if (ar == NULL) {
        return;
    }
    mix = ops_tensor(ar, "hc.mixes", N * M);
    scale = ops_tensor(ar, "hc.scale", 3);
    base = ops_tensor(ar, "hc.base", M);
    pre = ops_tensor(ar, "hc.pre", N * H);
    post = ops_tensor(ar, "hc.post", N * H);
    comb = ops_tensor(ar, "hc.comb", N * H * H);
    if (mix && scale && base && pre && post && comb) {
        for (int t = 0; t < N; t++) {
            /* tiny-v4's hc_sinkhorn_iters 20, hc_eps 1e-6 */
            eng_v4_hc_split(mix + t * M, scale, base, H, 20, 1e-6f, g_pre + t * H, g_post + t * H,
                            g_comb + t * H * H);
        }
        check_rows_rel("hc.pre", g_pre, pre, N, H, 1e-6);
        check_rows_rel("hc.post", g_post, post, N, H, 1e-6);
        check_rows_rel("hc.comb", g_comb, comb, N, H * H, 1e-6);
    } else {
        ops_missing();
    }
    st_close(ar);
}

static void test_sparse_attn_sink(void)
{
    enum { T = 6, H = 4, D = 144, NKV = 40, K = 12 };
    st_archive *ar;
    ops_open(&ar);
    static float got[T * H * D];
    int32_t idx[T * K];

    if (ar == NULL) {
        return;
    }
    const float *q = ops_tensor(ar, "attn.q", T * H * D), *kv = ops_tensor(ar, "attn.kv", NKV * D);
    const float *sink = ops_tensor(ar, "attn.sink", H),
                *out = ops_tensor(ar, "attn.out", T * H * D);
    const float *scale = ops_tensor(ar, "attn.softmax_scale", 1);
    const st_tensor *ti = st_find(ar, "attn.idx");
    CHECK(ti != NULL && ti->dtype == ST_DTYPE_I32 && ti->nbytes == sizeof(idx));
    if (q && kv && sink && out && scale && ti != NULL && ti->nbytes == sizeof(idx)) {
        memcpy(idx, ti->data, sizeof(idx));
        int bad_idx = 0;
        for (int i = 0; i < T * K; i++) {
            bad_idx += idx[i] < -1 || idx[i] >= NKV;
        }
        if (bad_idx > 0) {
            fprintf(stderr, "  attn.idx: %d entries out of [-1, %d)\n", bad_idx, NKV);
            ops_missing();
            memset(idx, 0xff, sizeof(idx));
        }
        eng_v4_sparse_attn(q, kv, idx, sink, T, H, D, NKV, K, scale[0], got);
        check_rows_rel("attn.out", got, out, T * H, D, 1e-6);
    } else {
        ops_missing();
    }
    st_close(ar);
}

/* ---- rotary tables (1e-5 absolute) ----------------------------------------- */

static void check_rope(const st_archive *ar, const char *prefix, const eng_v4_rope_params *p)
{
    enum { T = 320, HALF = 8 };
    char nc[48], ns[48];
    float freqs[HALF], c[HALF], s[HALF];
    double worst = 0;

    snprintf(nc, sizeof(nc), "%s.cos", prefix);
    snprintf(ns, sizeof(ns), "%s.sin", prefix);
    const float *wc = ops_tensor(ar, nc, T * HALF), *ws = ops_tensor(ar, ns, T * HALF);
    CHECK_MSG(wc != NULL && ws != NULL, "%s: tensors missing (see above)", prefix);
    eng_v4_rope_freqs(p, freqs);
    for (int t = 0; t < T; t++) {
        eng_v4_rope_cos_sin(freqs, 2 * HALF, t, c, s);
        for (int i = 0; i < HALF; i++) {
            worst = fmax(worst, fabs((double)c[i] - wc[t * HALF + i]));
            worst = fmax(worst, fabs((double)s[i] - ws[t * HALF + i]));
        }
    }
    CHECK_MSG(worst <= 1e-5, "%s: worst abs error %.3g > 1e-5", prefix, worst);
}

static void test_rope_tables(void)
{
    st_archive *ar;
    ops_open(&ar);
    /* tiny-v4: r 16, rope_theta 1e4 (SWA layers, no YaRN); compressed layers
     * compress_rope_theta 160000 with YaRN factor 16, original 65536, beta 32 / 1 */
    eng_v4_rope_params swa = {16, 10000.0f, false, 16.0f, 65536, 32.0f, 1.0f};
    eng_v4_rope_params cmp = {16, 160000.0f, true, 16.0f, 65536, 32.0f, 1.0f};
    static const float want_cmp[8] = {1.0f,        0.223607f,    0.05f,        0.0111803f,
                                      0.00191406f, 0.000296978f, 3.71094e-05f, 1.74693e-06f};
    float f[8];

    eng_v4_rope_freqs(&cmp, f);
    for (int i = 0; i < 8; i++) {
        CHECK_MSG(fabsf(f[i] - want_cmp[i]) <= 1e-5f * want_cmp[i],
                  "compressed f[%d] = %g, want %g", i, f[i], want_cmp[i]);
    }
    if (ar != NULL) {
        check_rope(ar, "rope.swa", &swa);
        check_rope(ar, "rope.compressed", &cmp);
    }
    st_close(ar);
}

/* ---- weight decoding (bit-exact) on tiny-v4-fp8 ---------------------------- */

/* The formula of README-v4 section 2, written out independently of the codecs. */
static double e4m3_formula(uint8_t c)
{
    int e = (c >> 3) & 15, m = c & 7;
    double v = e == 0 ? m * pow(2, -9) : (8 + m) * pow(2, e - 10);
    return (c & 0x80) ? -v : v;
}

static double e2m1_formula(uint8_t nib)
{
    int e = (nib >> 1) & 3, m = nib & 1;
    double v = e == 0 ? m * 0.5 : (2 + m) * pow(2, e - 2);
    return (nib & 8) ? -v : v;
}

static void test_weight_decoding(void)
{
    char path[600];
    st_archive *ar = NULL;
    mls_err err = {{0}};
    bool seen[256] = {false};
    int n_codes = 0, n_fp8 = 0, n_fp4 = 0;
    int64_t bad = 0;
    static float row[4096];

    CHECK_FIXTURE("models/tiny-v4-fp8/model.safetensors", path);
    CHECK_MSG(st_open_file(path, &ar, &err) == MLS_OK, "%s", err.msg);
    if (ar == NULL) {
        return;
    }
    for (size_t i = 0; i < st_count(ar); i++) {
        const st_tensor *w = st_at(ar, i), *s;
        char sname[256];
        size_t len = strlen(w->name);
        if ((w->dtype != ST_DTYPE_F8_E4M3 && w->dtype != ST_DTYPE_I8) || len < 7) {
            continue;
        }
        snprintf(sname, sizeof(sname), "%.*sscale", (int)(len - 6), w->name);
        s = st_find(ar, sname);
        CHECK_MSG(s != NULL && s->dtype == ST_DTYPE_F8_E8M0, "'%s' has no F8_E8M0 '%s'", w->name,
                  sname);
        if (s == NULL || w->n_dims != 2) {
            continue;
        }
        const uint8_t *codes = w->data, *sc = s->data;
        int64_t rows = w->shape[0];
        bool fp4 = w->dtype == ST_DTYPE_I8;
        int64_t cols = fp4 ? 2 * w->shape[1] : w->shape[1];
        int64_t scols = fp4 ? cols / 32 : (cols + 127) / 128;
        CHECK(cols <= 4096);
        for (int64_t r = 0; r < rows && cols <= 4096; r++) {
            if (fp4) {
                eng_v4_fp4_weight_row(codes, sc, cols, r, row);
            } else {
                eng_v4_fp8_weight_row(codes, sc, cols, r, row);
            }
            for (int64_t c = 0; c < cols; c++) {
                double want;
                if (fp4) {
                    uint8_t byte = codes[r * (cols / 2) + c / 2];
                    uint8_t nib = (c % 2) ? byte >> 4 : byte & 15;
                    want = e2m1_formula(nib) * pow(2, sc[r * scols + c / 32] - 127);
                } else {
                    uint8_t code = codes[r * cols + c];
                    want = e4m3_formula(code) * pow(2, sc[(r / 128) * scols + c / 128] - 127);
                    n_codes += !seen[code];
                    seen[code] = true;
                }
                if ((double)row[c] != want || !signbit(row[c]) != !signbit(want)) {
                    if (bad == 0) {
                        fprintf(stderr, "  %s [%lld][%lld]: decoded %.9g, formula %.9g\n", w->name,
                                (long long)r, (long long)c, row[c], want);
                    }
                    bad++;
                }
            }
        }
        n_fp4 += fp4;
        n_fp8 += !fp4;
    }
    CHECK_MSG(bad == 0, "%lld decoded weights differ from the formula", (long long)bad);
    /* README-v4 section 2: 253 of the 256 e4m3 codes occur */
    CHECK_EQ_INT(n_codes, 253);
    CHECK(n_fp8 > 0 && n_fp4 > 0);
    st_close(ar);
}

int main(void)
{
    MLS_TEST_RUN(test_e4m3_codes_round_trip);
    MLS_TEST_RUN(test_e2m1_codes_round_trip);
    MLS_TEST_RUN(test_fp8_quant_bit_exact);
    MLS_TEST_RUN(test_fp4_quant_bit_exact);
    MLS_TEST_RUN(test_hadamard);
    MLS_TEST_RUN(test_hc_sinkhorn);
    MLS_TEST_RUN(test_sparse_attn_sink);
    MLS_TEST_RUN(test_rope_tables);
    MLS_TEST_RUN(test_weight_decoding);
    return MLS_TEST_DONE();
}
