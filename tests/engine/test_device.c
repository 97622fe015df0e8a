/*
 * test_device.c - device selection and the backend table.
 *
 * Where this build has no CUDA backend, or the machine no CUDA device,
 * choosing ENG_DEVICE_CUDA (the API, and `mlaserve generate --device cuda`)
 * fails at once with one clear error: "built without CUDA" / "no CUDA
 * device: ..." and exit code 2. The CPU table's ops are checked against the
 * kc_* kernels they wrap (the CPU is the oracle), element for element.
 */
#include <sys/wait.h>

#include "eng_internal.h"
#include "mls_test.h"

/* The error a CUDA request gets on this build and machine: UNSUPPORTED
 * "built without CUDA", NO_DEVICE "no CUDA device: ...", or OK with a GPU. */
static mls_status want_cuda(const char **prefix_p)
{
#ifdef MLS_TEST_HAVE_CUDA
    mls_err err = {{0}};
    mls_status st = eng_device_check(ENG_DEVICE_CUDA, 0, &err);
    *prefix_p = st == MLS_OK ? NULL : "no CUDA device: ";
    return st == MLS_OK ? MLS_OK : MLS_ERR_NO_DEVICE;
#else
    *prefix_p = "built without CUDA";
    return MLS_ERR_UNSUPPORTED;
#endif
}

static void test_device_names(void)
{
    eng_device d = ENG_DEVICE_COUNT;

    CHECK_OK(eng_device_parse("cpu", &d));
    CHECK_EQ_INT(d, ENG_DEVICE_CPU);
    CHECK_OK(eng_device_parse("cuda", &d));
    CHECK_EQ_INT(d, ENG_DEVICE_CUDA);
    CHECK_STATUS(eng_device_parse("gpu", &d), MLS_ERR_INVALID_ARG);
    CHECK_STR_EQ(eng_device_name(ENG_DEVICE_CPU), "cpu");
    CHECK_STR_EQ(eng_device_name(ENG_DEVICE_CUDA), "cuda");
}

static void test_cuda_refused(void)
{
    const char *prefix;
    mls_status want = want_cuda(&prefix);
    mls_err err = {{0}};
    kvl_layout layout;
    eng_kv_pool_opts opts = {ENG_DEVICE_CUDA, 0, NULL};
    eng_kv_pool *pool = NULL;

    CHECK_OK(eng_device_check(ENG_DEVICE_CPU, 0, NULL));
    if (want == MLS_OK) {
        MLS_TEST_SKIP("a CUDA device is present: nothing to refuse");
    }
    CHECK_STATUS(eng_device_check(ENG_DEVICE_CUDA, 0, &err), want);
    CHECK_MSG(strncmp(err.msg, prefix, strlen(prefix)) == 0, "error '%s' does not start '%s'",
              err.msg, prefix);
    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, 64, 16, 1, &layout));
    memset(&err, 0, sizeof(err));
    CHECK_STATUS(eng_kv_pool_create_opts(&layout, 2, 4, &opts, &pool, &err), want);
    CHECK(pool == NULL);
    CHECK_MSG(strncmp(err.msg, prefix, strlen(prefix)) == 0, "error '%s' does not start '%s'",
              err.msg, prefix);
    /* the host pool says where it lives */
    CHECK_OK(eng_kv_pool_create_opts(&layout, 2, 4, NULL, &pool, &err));
    CHECK_EQ_INT(eng_kv_pool_device(pool), ENG_DEVICE_CPU);
    eng_kv_pool_destroy(pool);
}

/* `mlaserve generate --device cuda` before any model is read: exit 2, one
 * line on stderr naming the cause, nothing on stdout. */
static void test_cli_cuda_refused(void)
{
    const char *bin = MLS_BIN_DIR "/mlaserve", *prefix;
    char cmd[1024], out_path[64], err_path[64], line[1024], extra[1024];
    mls_status want = want_cuda(&prefix);
    FILE *f;
    int rc;

    CHECK_MSG(access(bin, X_OK) == 0, "%s is not built", bin);
    if (want == MLS_OK) {
        MLS_TEST_SKIP("a CUDA device is present: nothing to refuse");
    }
    snprintf(out_path, sizeof(out_path), "/tmp/test_device_%d.out", (int)getpid());
    snprintf(err_path, sizeof(err_path), "/tmp/test_device_%d.err", (int)getpid());
    snprintf(cmd, sizeof(cmd),
             "%s generate --device cuda --model /nonexistent --prompt-ids 1 >%s 2>%s", bin,
             out_path, err_path);
    rc = system(cmd);
    CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 2, "'%s' exited %d, want 2", cmd,
              WIFEXITED(rc) ? WEXITSTATUS(rc) : -1);
    f = fopen(err_path, "r");
    CHECK(f != NULL);
    line[0] = '\0';
    CHECK(fgets(line, sizeof(line), f) != NULL);
    CHECK_MSG(fgets(extra, sizeof(extra), f) == NULL, "a second stderr line: %s", extra);
    fclose(f);
    CHECK_MSG(strstr(line, prefix) != NULL, "stderr '%s' does not say '%s'", line, prefix);
    f = fopen(out_path, "r");
    CHECK(f != NULL);
    CHECK_MSG(fgetc(f) == EOF, "generate wrote to stdout");
    fclose(f);
    unlink(out_path);
    unlink(err_path);
}

static void fill(float *x, int64_t n, uint32_t seed)
{
    for (int64_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        x[i] = (float)((int32_t)(seed >> 8) % 2001 - 1000) / 500.0f;
    }
}

/* The CPU table against the kernels it wraps: bit-identical results. */
static void test_cpu_ops_match_kernels(void)
{
    enum { R = 64, D = 16, T = 3, HEADS = 4 };
    const eng_backend_ops *be = NULL;
    void *bctx = NULL;
    float kv[T * (R + D)], want[T * (R + D)], w[R], inv_freq[D / 2];
    float q[T * HEADS * D], q_want[T * HEADS * D];
    int32_t pos[T] = {0, 5, 130}, ids[2];
    uint32_t page[T] = {1, 0, 1}, slot[T] = {3, 63, 0};
    kvl_layout layout;
    static uint8_t pages[2 * 16384], pages_want[2 * 16384];
    mls_err err = {{0}};

    CHECK_OK(eng_backend_get(ENG_DEVICE_CPU, &be, &err));
    CHECK_OK(be->ctx_create(1, 0, &bctx, &err));
    fill(kv, T * (R + D), 1);
    fill(w, R, 2);
    fill(q, T * HEADS * D, 3);
    for (int i = 0; i < D / 2; i++) {
        inv_freq[i] = powf(10000.0f, -2.0f * (float)i / D);
    }
    memcpy(want, kv, sizeof(kv));
    memcpy(q_want, q, sizeof(q));

    /* rmsnorm over strided rows (the latent part of each kv row) */
    {
        eng_tensor x = eng_tensor_2d_strided(ENG_LOC_HOST, ENG_DTYPE_F32, kv, T, R, R + D);
        eng_tensor tw = eng_tensor_1d(ENG_LOC_HOST, ENG_DTYPE_F32, w, R);
        CHECK_OK(be->rmsnorm(bctx, &x, &tw, 1e-6f, &x, &err));
        for (int t = 0; t < T; t++) {
            kc_rmsnorm(want + t * (R + D), w, 1, R, 1e-6f, want + t * (R + D));
        }
        CHECK(memcmp(kv, want, sizeof(kv)) == 0);
    }
    /* rope + mscale on (T, HEADS, D) query rope parts */
    {
        eng_tensor x = {q, ENG_DTYPE_F32, ENG_LOC_HOST, 3, {T, HEADS, D, 0}, {HEADS * D, D, 1, 0}};
        eng_tensor tp = eng_tensor_1d(ENG_LOC_HOST, ENG_DTYPE_I32, pos, T);
        eng_tensor tf = eng_tensor_1d(ENG_LOC_HOST, ENG_DTYPE_F32, inv_freq, D / 2);
        CHECK_OK(be->rope(bctx, &x, &tp, &tf, 1.25f, &err));
        for (int t = 0; t < T; t++) {
            kc_rope_interleaved(q_want + t * HEADS * D, HEADS, D, D, pos[t], inv_freq);
            for (int i = 0; i < HEADS * D; i++) {
                q_want[t * HEADS * D + i] *= 1.25f;
            }
        }
        CHECK(memcmp(q, q_want, sizeof(q)) == 0);
    }
    /* kv_store: kvl_row_store's bytes at page[t], slot[t] */
    CHECK_OK(kvl_layout_init(KVL_DTYPE_BF16, R, D, 1, &layout));
    CHECK(2 * layout.page_bytes <= sizeof(pages));
    memset(pages, 0, sizeof(pages));
    memset(pages_want, 0, sizeof(pages_want));
    {
        eng_tensor tkv = eng_tensor_2d(ENG_LOC_HOST, ENG_DTYPE_U8, pages, 2, layout.page_bytes);
        eng_tensor lat = eng_tensor_2d_strided(ENG_LOC_HOST, ENG_DTYPE_F32, kv, T, R, R + D);
        eng_tensor rope = eng_tensor_2d_strided(ENG_LOC_HOST, ENG_DTYPE_F32, kv + R, T, D, R + D);
        eng_tensor tpage = eng_tensor_1d(ENG_LOC_HOST, ENG_DTYPE_U32, page, T);
        eng_tensor tslot = eng_tensor_1d(ENG_LOC_HOST, ENG_DTYPE_U32, slot, T);
        CHECK_OK(be->kv_store(bctx, &layout, &tkv, &lat, &rope, &tpage, &tslot, &err));
        for (int t = 0; t < T; t++) {
            uint32_t table[1] = {page[t]}; /* slot < 64: the token sits in page[t] */
            kvl_row_store(&layout,
                          kvl_row_ptr(&layout, pages_want, table, slot[t]),
                          kv + t * (R + D), kv + t * (R + D) + R);
        }
        CHECK(memcmp(pages, pages_want, sizeof(pages)) == 0);
    }
    /* argmax: ties go to the lower id */
    {
        float logits[2 * 5] = {1, 3, 3, 0, -1, -2, -2, -3, -1, -1};
        eng_tensor tl = eng_tensor_2d(ENG_LOC_HOST, ENG_DTYPE_F32, logits, 2, 5);
        eng_tensor ti = eng_tensor_1d(ENG_LOC_HOST, ENG_DTYPE_I32, ids, 2);
        CHECK_OK(be->argmax(bctx, &tl, &ti, &err));
        CHECK_EQ_INT(ids[0], 1);
        CHECK_EQ_INT(ids[1], 3);
    }
    /* a tensor somewhere else is refused, named */
    {
        eng_tensor x = eng_tensor_1d(ENG_LOC_CUDA, ENG_DTYPE_F32, kv, 4);
        eng_tensor up = eng_tensor_1d(ENG_LOC_HOST, ENG_DTYPE_F32, w, 4);
        CHECK_STATUS(be->silu_mul(bctx, &x, &up, &err), MLS_ERR_INVALID_ARG);
        CHECK_MSG(strstr(err.msg, "'gate'") != NULL, "error '%s' does not name the tensor",
                  err.msg);
    }
    be->ctx_destroy(bctx);
}

int main(void)
{
    MLS_TEST_RUN(test_device_names);
    MLS_TEST_RUN(test_cuda_refused);
    MLS_TEST_RUN(test_cli_cuda_refused);
    MLS_TEST_RUN(test_cpu_ops_match_kernels);
    return MLS_TEST_DONE();
}
