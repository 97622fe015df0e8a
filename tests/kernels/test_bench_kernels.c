/*
 * test_bench_kernels.c - `mlaserve bench kernels --quick --json` prints one
 * JSON object with every figure present, finite and positive (MLA decode,
 * GEMV, GEMM, DeepSeek-V4 decode). Checks the report's shape only, never the
 * machine's speed.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mls_buf.h"
#include "mls_test.h"

static int stat_ok(const cJSON *obj, const char *name)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(obj, name);
    const char *keys[] = {"min", "median", "max"};
    double prev = 0;
    if (!cJSON_IsObject(s)) {
        fprintf(stderr, "  missing stat '%s'\n", name);
        return 0;
    }
    for (int i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, keys[i]);
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || !(v->valuedouble > 0) ||
            v->valuedouble < prev) {
            fprintf(stderr, "  stat '%s.%s' missing, not finite/positive or out of order\n", name,
                    keys[i]);
            return 0;
        }
        prev = v->valuedouble;
    }
    return 1;
}

static int num_ok(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || !(v->valuedouble > 0)) {
        fprintf(stderr, "  number '%s' missing or not finite/positive\n", name);
        return 0;
    }
    return 1;
}

/* The command's whole stdout (the caller frees it), or NULL when it failed. */
static char *run_bench(const char *bin)
{
    char cmd[1024], chunk[4096];
    mls_buf out = MLS_BUF_INIT(MLS_ALLOC_TAG_MISC);
    size_t got;
    FILE *f;
    snprintf(cmd, sizeof(cmd), "%s bench kernels --quick --json --reps 2", bin);
    f = popen(cmd, "r");
    if (f == NULL) {
        return NULL;
    }
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (mls_buf_append(&out, chunk, got) != MLS_OK) {
            break;
        }
    }
    if (pclose(f) != 0) {
        fprintf(stderr, "  '%s' failed; output:\n%s\n", cmd, out.data != NULL ? out.data : "");
        mls_buf_free(&out);
        return NULL;
    }
    return mls_buf_detach(&out, NULL);
}

static void test_bench_json(void)
{
    const char *bin = MLS_BIN_DIR "/mlaserve";
    char *text;
    cJSON *root, *arr, *item;
    int n;

    CHECK_MSG(access(bin, X_OK) == 0, "%s is not built", bin);
    text = run_bench(bin);
    CHECK(text != NULL);
    root = cJSON_Parse(text);
    free(text);
    CHECK_MSG(root != NULL, "output is not JSON");
    CHECK(num_ok(root, "threads") && num_ok(root, "balance_flop_per_byte"));
    CHECK(stat_ok(root, "memory_bandwidth_gbs") && stat_ok(root, "peak_gflops"));
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "isa")));

    arr = cJSON_GetObjectItemCaseSensitive(root, "mla_decode");
    CHECK(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) >= 4);
    n = 0;
    cJSON_ArrayForEach(item, arr) {
        const cJSON *bound = cJSON_GetObjectItemCaseSensitive(item, "bound");
        const cJSON *kv = cJSON_GetObjectItemCaseSensitive(item, "kv_dtype");
        CHECK(num_ok(item, "heads") && num_ok(item, "context") && num_ok(item, "batch"));
        CHECK(num_ok(item, "bytes") && num_ok(item, "flops"));
        CHECK(num_ok(item, "intensity_flop_per_byte"));
        CHECK(stat_ok(item, "time_ms") && stat_ok(item, "bandwidth_gbs"));
        CHECK(stat_ok(item, "bandwidth_ratio") && stat_ok(item, "gflops"));
        CHECK(stat_ok(item, "peak_flops_ratio") && stat_ok(item, "paged_read_ratio"));
        CHECK(num_ok(item, "probe_bandwidth_gbs") && num_ok(item, "paged_read_gbs"));
        CHECK(cJSON_IsString(kv) && (strcmp(kv->valuestring, "bf16") == 0 ||
                                     strcmp(kv->valuestring, "fp8") == 0));
        CHECK(cJSON_IsString(bound) && (strcmp(bound->valuestring, "memory") == 0 ||
                                        strcmp(bound->valuestring, "compute") == 0));
        n++;
    }
    CHECK(n >= 4);

    arr = cJSON_GetObjectItemCaseSensitive(root, "gemv");
    CHECK(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == 2);
    cJSON_ArrayForEach(item, arr) {
        CHECK(stat_ok(item, "bandwidth_gbs") && stat_ok(item, "bandwidth_ratio"));
        CHECK(stat_ok(item, "time_ms") && num_ok(item, "rows") && num_ok(item, "cols"));
    }
    arr = cJSON_GetObjectItemCaseSensitive(root, "gemm");
    CHECK(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == 2);
    cJSON_ArrayForEach(item, arr) {
        CHECK(stat_ok(item, "gflops") && stat_ok(item, "peak_flops_ratio"));
        CHECK(num_ok(item, "n") && num_ok(item, "rows") && num_ok(item, "cols"));
    }
    /* DeepSeek-V4 decode: indexer, sparse attention, HCA (one context with --quick) */
    arr = cJSON_GetObjectItemCaseSensitive(root, "v4_decode");
    CHECK(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) == 3);
    n = 0;
    cJSON_ArrayForEach(item, arr) {
        static const char *const cases[] = {"indexer", "sparse_attention", "hca"};
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(item, "case");
        const cJSON *bound = cJSON_GetObjectItemCaseSensitive(item, "bound");
        CHECK(cJSON_IsString(name) && strcmp(name->valuestring, cases[n]) == 0);
        CHECK(num_ok(item, "context") && num_ok(item, "rows") && num_ok(item, "heads"));
        CHECK(num_ok(item, "dim") && num_ok(item, "bytes") && num_ok(item, "flops"));
        CHECK(num_ok(item, "intensity_flop_per_byte"));
        CHECK(num_ok(item, "probe_bandwidth_gbs") && num_ok(item, "probe_gflops"));
        CHECK(stat_ok(item, "time_ms") && stat_ok(item, "gflops"));
        CHECK(stat_ok(item, "peak_flops_ratio") && stat_ok(item, "bandwidth_gbs"));
        CHECK(stat_ok(item, "bandwidth_ratio") && stat_ok(item, "bound_ratio"));
        CHECK(cJSON_IsString(bound) && (strcmp(bound->valuestring, "memory") == 0 ||
                                        strcmp(bound->valuestring, "compute") == 0));
        n++;
    }
    cJSON_Delete(root);
}

int main(void)
{
    MLS_TEST_RUN(test_bench_json);
    return MLS_TEST_DONE();
}
