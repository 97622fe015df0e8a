/*
 * test_engine_errors.c - bad checkpoints give one clear error, never a crash.
 *
 * Each case builds a broken copy of the tiny-v3-fp8 fixture in a temp dir
 * (dropped tensor, wrong shape, wrong dtype, truncated file, corrupt header,
 * bad config) and checks eng_model_load's status and that the message names
 * the file and, where there is one, the tensor.
 */
#include <stdlib.h>
#include <sys/stat.h>

#include "eng_safetensors.h"
#include "engine.h"
#include "mls_test.h"

static char fixture_dir[512];

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    int rc = in && out ? 0 : -1;

    while (rc == 0 && (n = fread(buf, 1, sizeof(buf), in)) > 0) {
        rc = fwrite(buf, 1, n, out) == n ? 0 : -1;
    }
    if (in) {
        fclose(in);
    }
    if (out) {
        fclose(out);
    }
    return rc;
}

/* Write <dir>/model.safetensors from the fixture, leaving out `drop` and
 * replacing the dtype of `retype` by BF16 with the matching byte count. */
static int write_variant(const char *dir, const char *drop, const char *retype)
{
    char path[600];
    st_archive *ar;
    st_writer *w;
    mls_err err = {{0}};
    int rc = -1;

    snprintf(path, sizeof(path), "%s/model.safetensors", fixture_dir);
    if (st_open_file(path, &ar, &err) != MLS_OK) {
        return -1;
    }
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if (st_writer_create(path, &w, &err) != MLS_OK) {
        goto out;
    }
    for (size_t i = 0; i < st_count(ar); i++) {
        const st_tensor *t = st_at(ar, i);
        if (drop && strcmp(t->name, drop) == 0) {
            continue;
        }
        if (retype && strcmp(t->name, retype) == 0) {
            /* F8 [r, c] -> BF16 [r, c/2]: same bytes, wrong dtype and shape */
            int64_t shape[2] = {t->shape[0], t->shape[1] / 2};
            st_writer_declare(w, t->name, ST_DTYPE_BF16, 2, shape, &err);
        } else {
            st_writer_declare(w, t->name, t->dtype, t->n_dims, t->shape, &err);
        }
    }
    for (size_t i = 0; i < st_count(ar); i++) {
        const st_tensor *t = st_at(ar, i);
        uint64_t n = t->nbytes;
        if (drop && strcmp(t->name, drop) == 0) {
            continue;
        }
        if (retype && strcmp(t->name, retype) == 0) {
            n = (uint64_t)t->shape[0] * (uint64_t)(t->shape[1] / 2) * 2;
        }
        if (st_writer_write(w, t->data, n, &err) != MLS_OK) {
            st_writer_finish(w, NULL);
            goto out;
        }
    }
    rc = st_writer_finish(w, &err) == MLS_OK ? 0 : -1;
out:
    if (rc != 0) {
        fprintf(stderr, "  variant: %s\n", err.msg);
    }
    st_close(ar);
    return rc;
}

static int make_dir(char *dir, size_t len)
{
    char cfg_from[600], cfg_to[600];
    snprintf(dir, len, "/tmp/mls-engerr-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        return -1;
    }
    snprintf(cfg_from, sizeof(cfg_from), "%s/config.json", fixture_dir);
    snprintf(cfg_to, sizeof(cfg_to), "%s/config.json", dir);
    return copy_file(cfg_from, cfg_to);
}

static void remove_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "  could not remove %s\n", dir);
    }
}

static void expect_load_error(const char *dir, mls_status want, const char *must1, const char *must2)
{
    eng_model *model = NULL;
    mls_err err = {{0}};
    mls_status st = eng_model_load(dir, NULL, &model, &err);

    fprintf(stderr, "  -> %s: %s\n", mls_status_name(st), err.msg);
    CHECK_STATUS(st, want);
    CHECK(model == NULL);
    CHECK_MSG(strstr(err.msg, must1) != NULL, "message lacks '%s'", must1);
    CHECK_MSG(must2 == NULL || strstr(err.msg, must2) != NULL, "message lacks '%s'", must2);
}

#define NEED_FIXTURE() CHECK_FIXTURE("models/tiny-v3-fp8", fixture_dir)

static void test_missing_tensor(void)
{
    char dir[64];
    NEED_FIXTURE();
    CHECK(make_dir(dir, sizeof(dir)) == 0);
    CHECK(write_variant(dir, "model.layers.1.mlp.experts.7.up_proj.weight_scale_inv", NULL) == 0);
    expect_load_error(dir, MLS_ERR_BAD_MODEL, "model.safetensors",
                      "model.layers.1.mlp.experts.7.up_proj.weight_scale_inv");
    remove_dir(dir);
}

static void test_wrong_dtype(void)
{
    char dir[64];
    NEED_FIXTURE();
    CHECK(make_dir(dir, sizeof(dir)) == 0);
    CHECK(write_variant(dir, NULL, "model.layers.0.self_attn.o_proj.weight") == 0);
    expect_load_error(dir, MLS_ERR_BAD_MODEL, "model.safetensors",
                      "model.layers.0.self_attn.o_proj.weight");
    remove_dir(dir);
}

static void test_wrong_shape(void)
{
    char dir[64], path[128];
    FILE *fp;
    NEED_FIXTURE();
    CHECK(make_dir(dir, sizeof(dir)) == 0);
    CHECK(write_variant(dir, NULL, NULL) == 0);
    /* a config that disagrees with the tensors: kv_lora_rank 160 -> 164 */
    snprintf(path, sizeof(path), "%s/config.json", dir);
    {
        char buf[8192];
        size_t n;
        char *at;
        fp = fopen(path, "rb");
        n = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
        buf[n] = '\0';
        at = strstr(buf, "\"kv_lora_rank\": 160");
        CHECK(at != NULL);
        memcpy(at, "\"kv_lora_rank\": 164", 19);
        fp = fopen(path, "wb");
        fwrite(buf, 1, n, fp);
        fclose(fp);
    }
    expect_load_error(dir, MLS_ERR_BAD_MODEL, "model.safetensors", "kv_a_proj_with_mqa");
    remove_dir(dir);
}

static void test_truncated(void)
{
    char dir[64], path[128];
    struct stat sb;
    NEED_FIXTURE();
    CHECK(make_dir(dir, sizeof(dir)) == 0);
    CHECK(write_variant(dir, NULL, NULL) == 0);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    CHECK(stat(path, &sb) == 0);
    CHECK(truncate(path, sb.st_size - 1000) == 0);
    expect_load_error(dir, MLS_ERR_BAD_MODEL, "model.safetensors", NULL);
    remove_dir(dir);
}

static void test_corrupt_header(void)
{
    char dir[64], path[128];
    FILE *fp;
    NEED_FIXTURE();
    CHECK(make_dir(dir, sizeof(dir)) == 0);
    CHECK(write_variant(dir, NULL, NULL) == 0);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    fp = fopen(path, "r+b");
    CHECK(fp != NULL);
    fseek(fp, 8 + 5, SEEK_SET); /* inside the JSON header */
    fwrite("}}}{{{", 1, 6, fp);
    fclose(fp);
    expect_load_error(dir, MLS_ERR_BAD_MODEL, "model.safetensors", NULL);
    remove_dir(dir);
}

static void test_bad_config(void)
{
    char dir[64], path[128];
    FILE *fp;
    NEED_FIXTURE();
    CHECK(make_dir(dir, sizeof(dir)) == 0);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    fp = fopen(path, "wb");
    fputs("{\"model_type\": \"deepseek_v3\", \"hidden_size\": ", fp);
    fclose(fp);
    expect_load_error(dir, MLS_ERR_BAD_MODEL, "config.json", NULL);
    remove_dir(dir);
}

static void test_missing_dir(void)
{
    eng_model *model = NULL;
    mls_err err = {{0}};
    mls_status st = eng_model_load("/nonexistent/model", NULL, &model, &err);
    fprintf(stderr, "  -> %s: %s\n", mls_status_name(st), err.msg);
    CHECK(st != MLS_OK);
    CHECK(strstr(err.msg, "/nonexistent/model") != NULL);
}

int main(void)
{
    MLS_TEST_RUN(test_missing_tensor);
    MLS_TEST_RUN(test_wrong_dtype);
    MLS_TEST_RUN(test_wrong_shape);
    MLS_TEST_RUN(test_truncated);
    MLS_TEST_RUN(test_corrupt_header);
    MLS_TEST_RUN(test_bad_config);
    MLS_TEST_RUN(test_missing_dir);
    return MLS_TEST_DONE();
}
