/*
 * test_kvsize.c - `mlaserve kv-size`: issue 13's acceptance figures (V4-Flash
 * about 3,517 B/token at 1M with fp8, 7% of V3.2's 48,068), the V3 rows
 * (656 B fp8, 1152 B bf16), V4 in f32 (what the engine stores), bf16 refused
 * for V4 with the reason, the JSON shape, and the tiny-v4 fixture via --model.
 */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mls_test.h"

#define KS_BIN MLS_BIN_DIR "/mlaserve"
#define KS_1M  1048576ull

/* Run `mlaserve kv-size args` (stderr joined when join_err); its output in out,
 * its exit status returned (-1 when it did not exit). */
static int ks_run(const char *args, bool join_err, char *out, size_t cap)
{
    char cmd[1024];
    size_t n = 0;
    snprintf(cmd, sizeof(cmd), "%s kv-size %s %s", KS_BIN, args, join_err ? "2>&1" : "2>/dev/null");
    FILE *f = popen(cmd, "r");
    if (f == NULL) {
        return -1;
    }
    n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    int rc = pclose(f);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* kv-size --json for args, parsed; NULL (the cause printed) otherwise. */
static cJSON *ks_json(const char *args)
{
    char out[8192], full[900];
    snprintf(full, sizeof(full), "%s --json", args);
    int rc = ks_run(full, false, out, sizeof(out));
    cJSON *j = rc == 0 ? cJSON_Parse(out) : NULL;
    if (j == NULL) {
        fprintf(stderr, "  kv-size %s exited %d, printed: %s\n", full, rc, out);
    }
    return j;
}

static double ks_num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1.0;
}

/* The layer group of `kind` in j's layers, or NULL. */
static const cJSON *ks_layer(const cJSON *j, const char *kind)
{
    const cJSON *l, *layers = cJSON_GetObjectItemCaseSensitive(j, "layers");
    cJSON_ArrayForEach(l, layers)
    {
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(l, "kind");
        if (cJSON_IsString(k) && strcmp(k->valuestring, kind) == 0) {
            return l;
        }
    }
    return NULL;
}

/* Every layer group has kind, count, bytes; their bytes add up to total_bytes,
 * and bytes_per_token is total_bytes / context. */
static void ks_check_shape(const cJSON *j, const char *what)
{
    const cJSON *l, *layers = cJSON_GetObjectItemCaseSensitive(j, "layers");
    double sum = 0;
    CHECK_MSG(cJSON_IsArray(layers) && cJSON_GetArraySize(layers) > 0, "%s: no layers", what);
    cJSON_ArrayForEach(l, layers)
    {
        CHECK_MSG(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(l, "kind")), "%s: kind", what);
        CHECK_MSG(ks_num(l, "count") > 0, "%s: count", what);
        CHECK_MSG(ks_num(l, "bytes") >= 0, "%s: bytes", what);
        sum += ks_num(l, "bytes");
    }
    double total = ks_num(j, "total_bytes"), ctx = ks_num(j, "context");
    CHECK_MSG(sum == total, "%s: layers add to %.0f, total_bytes %.0f", what, sum, total);
    double bpt = ks_num(j, "bytes_per_token");
    CHECK_MSG(bpt >= total / ctx - 0.006 && bpt <= total / ctx + 0.006,
              "%s: bytes_per_token %.3f, total/context %.3f", what, bpt, total / ctx);
}

static void test_v4_flash_vs_v32(void)
{
    CHECK_MSG(access(KS_BIN, X_OK) == 0, "%s is not built", KS_BIN);
    cJSON *v4 = ks_json("--preset deepseek-v4-flash --context 1048576 --kv-dtype fp8");
    cJSON *v32 = ks_json("--preset deepseek-v3.2 --context 1048576 --kv-dtype fp8");
    CHECK(v4 != NULL && v32 != NULL); /* (a failed check returns: a test process leaks) */
    ks_check_shape(v4, "v4-flash");
    ks_check_shape(v32, "v3.2");
    /* 21 x (584+68)/4 + 20 x 584/128 per token, 43 windows of 128 x 584 B. */
    double want = 21.0 * (584 + 68) * (KS_1M / 4) + 20.0 * 584 * (KS_1M / 128) + 43.0 * 128 * 584;
    CHECK_MSG(ks_num(v4, "total_bytes") == want, "v4-flash total %.0f, want %.0f",
              ks_num(v4, "total_bytes"), want);
    double bpt = ks_num(v4, "bytes_per_token");
    CHECK_MSG(bpt > 3517.0 && bpt < 3518.0, "v4-flash %.2f B/token, want about 3,517", bpt);
    const cJSON *csa = ks_layer(v4, "csa"), *hca = ks_layer(v4, "hca"),
                *swa = ks_layer(v4, "window");
    CHECK(csa != NULL && hca != NULL && swa != NULL);
    CHECK_EQ_INT((int)ks_num(csa, "count"), 21);
    CHECK_EQ_INT((int)ks_num(hca, "count"), 20);
    CHECK_EQ_INT((int)ks_num(swa, "count"), 2);
    CHECK_EQ_INT((int)ks_num(csa, "entry_bytes"), 584);
    CHECK_EQ_INT((int)ks_num(csa, "indexer_bytes"), 68);
    CHECK_EQ_INT((int)ks_num(hca, "ratio"), 128);
    CHECK_MSG(ks_num(v32, "bytes_per_token") == 48068.0, "v3.2 %.2f B/token, want 61 x 788",
              ks_num(v32, "bytes_per_token"));
    double ratio = bpt / ks_num(v32, "bytes_per_token");
    fprintf(stderr, "  v4-flash %.2f B/token, v3.2 %.0f: %.2f%%\n", bpt,
            ks_num(v32, "bytes_per_token"), 100.0 * ratio);
    CHECK_MSG(ratio > 0.07 && ratio < 0.075, "v4-flash / v3.2 = %.4f, want about 7%%", ratio);
    cJSON_Delete(v4);
    cJSON_Delete(v32);
}

static void test_v3_rows(void)
{
    cJSON *fp8 = ks_json("--preset deepseek-v3 --context 1000 --kv-dtype fp8");
    cJSON *bf16 = ks_json("--preset deepseek-v3 --context 1000 --kv-dtype bf16");
    CHECK(fp8 != NULL && bf16 != NULL);
    ks_check_shape(fp8, "v3 fp8");
    CHECK_MSG(ks_num(fp8, "total_bytes") == 61.0 * 656 * 1000, "v3 fp8 %.0f",
              ks_num(fp8, "total_bytes"));
    CHECK_MSG(ks_num(bf16, "total_bytes") == 61.0 * 1152 * 1000, "v3 bf16 %.0f",
              ks_num(bf16, "total_bytes"));
    cJSON_Delete(fp8);
    cJSON_Delete(bf16);
}

/* f32 is what eng_v4_kvrow.c stores: 4 B a value; bf16 is refused with the reason. */
static void test_v4_dtypes(void)
{
    char out[4096];
    cJSON *f32 = ks_json("--preset deepseek-v4-flash --context 1048576 --kv-dtype f32");
    CHECK(f32 != NULL);
    ks_check_shape(f32, "v4-flash f32");
    double want =
        21.0 * (2048 + 512) * (KS_1M / 4) + 20.0 * 2048 * (KS_1M / 128) + 43.0 * 128 * 2048;
    CHECK_MSG(ks_num(f32, "total_bytes") == want, "v4-flash f32 total %.0f, want %.0f",
              ks_num(f32, "total_bytes"), want);
    cJSON_Delete(f32);
    int rc = ks_run("--preset deepseek-v4-flash --kv-dtype bf16", true, out, sizeof(out));
    CHECK_MSG(rc == 1, "bf16 for V4 exited %d", rc);
    CHECK_MSG(strstr(out, "f32 or fp8") != NULL && strstr(out, "bf16") != NULL, "message: %s", out);
    rc = ks_run("--preset deepseek-v4-pro", true, out, sizeof(out));
    CHECK_MSG(rc == 2 && strstr(out, "unknown preset") != NULL, "v4-pro: exit %d: %s", rc, out);
    rc = ks_run("--context 5", true, out, sizeof(out));
    CHECK_MSG(rc == 2, "no model: exit %d", rc);
}

/* tiny-v4 (ratios [0, 4, 8, 4, 8, 0], window 16, head_dim 144 = 128 nope + 16 rope,
 * index_head_dim 64) at 100 tokens: window 16 rows everywhere, CSA 25 entries + keys,
 * HCA 12 entries; fp8 entry 128 + 8 + 32 = 168 B, key 32 + 2 = 34 B. */
static void test_tiny_v4_model(void)
{
    char dir[600], args[800];
    CHECK_FIXTURE("models/tiny-v4", dir);
    snprintf(args, sizeof(args), "--model %s --context 100", dir);
    cJSON *j = ks_json(args);
    CHECK(j != NULL);
    ks_check_shape(j, "tiny-v4");
    double want = 6.0 * 16 * 168 + 2.0 * 25 * (168 + 34) + 2.0 * 12 * 168;
    CHECK_MSG(ks_num(j, "total_bytes") == want, "tiny-v4 total %.0f, want %.0f",
              ks_num(j, "total_bytes"), want);
    const cJSON *hca = ks_layer(j, "hca");
    CHECK(hca != NULL && ks_num(hca, "ratio") == 8 && ks_num(hca, "entries") == 12);
    cJSON_Delete(j);
}

int main(void)
{
    MLS_TEST_RUN(test_v4_flash_vs_v32);
    MLS_TEST_RUN(test_v3_rows);
    MLS_TEST_RUN(test_v4_dtypes);
    MLS_TEST_RUN(test_tiny_v4_model);
    return MLS_TEST_DONE();
}
