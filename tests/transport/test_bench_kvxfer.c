/*
 * test_bench_kvxfer.c - runs `mlaserve bench kvxfer --quick --json` (two
 * processes on loopback plus ucx_perftest) and checks that its JSON carries
 * every field, finite, for both transport settings. No speed is asserted:
 * this machine's numbers are whatever they are; the benchmark reports them.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "mls_test.h"

static cJSON *t_json;

static int t_finite(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) && isfinite(v->valuedouble);
}

static int t_stat_ok(const cJSON *o, const char *name)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsObject(s) && t_finite(s, "min") && t_finite(s, "median") && t_finite(s, "max") &&
           cJSON_GetObjectItem(s, "min")->valuedouble <= cJSON_GetObjectItem(s, "max")->valuedouble;
}

static void test_bench_runs(void)
{
    if (system("command -v ucx_perftest >/dev/null 2>&1") != 0) {
        MLS_TEST_SKIP("ucx_perftest is not installed (ucx-utils)");
    }
    FILE *p = popen(MLS_BIN_DIR "/mlaserve bench kvxfer --quick --json", "r");
    CHECK(p != NULL);
    static char out[1 << 16];
    size_t len = fread(out, 1, sizeof(out) - 1, p);
    out[len] = '\0';
    int rc = pclose(p);
    CHECK_MSG(rc == 0, "mlaserve bench kvxfer exited with %d; output:\n%s", rc, out);
    /* UCX may log lines of its own on stdout: the JSON object is the line that starts with '{' */
    char *start = strstr(out, "{\"bench\"");
    CHECK_MSG(start != NULL, "no JSON in:\n%s", out);
    t_json = cJSON_Parse(start);
    CHECK_MSG(t_json != NULL, "unparsable JSON:\n%s", start);
}

static void test_bench_fields(void)
{
    if (t_json == NULL) {
        MLS_TEST_SKIP("no benchmark output");
    }
    const cJSON *configs = cJSON_GetObjectItemCaseSensitive(t_json, "configs");
    CHECK(cJSON_IsArray(configs) && cJSON_GetArraySize(configs) == 2);
    const cJSON *c;
    cJSON_ArrayForEach(c, configs)
    {
        const cJSON *tls = cJSON_GetObjectItemCaseSensitive(c, "tls");
        const cJSON *path = cJSON_GetObjectItemCaseSensitive(c, "path");
        CHECK(cJSON_IsString(tls) && cJSON_IsString(path));
        CHECK_MSG(strcmp(path->valuestring, "rma") == 0 || strcmp(path->valuestring, "am") == 0,
                  "path '%s'", path->valuestring);
        CHECK_MSG(t_stat_ok(c, "setup_us"), "%s: setup_us", tls->valuestring);
        const char *lists[] = {"plain", "requests"};
        for (int k = 0; k < 2; k++) {
            const cJSON *items = cJSON_GetObjectItemCaseSensitive(c, lists[k]);
            CHECK(cJSON_IsArray(items) && cJSON_GetArraySize(items) >= 2);
            const cJSON *it;
            cJSON_ArrayForEach(it, items)
            {
                const char *name = cJSON_GetObjectItem(it, "name")->valuestring;
                CHECK_MSG(cJSON_IsTrue(cJSON_GetObjectItem(it, "ok")), "%s %s failed",
                          tls->valuestring, name);
                CHECK_MSG(t_stat_ok(it, "gbps") && t_stat_ok(it, "ratio") &&
                              t_finite(it, "perftest_gbps") && t_finite(it, "bytes"),
                          "%s %s: missing or non-finite numbers", tls->valuestring, name);
                if (k == 1) {
                    CHECK_MSG(t_stat_ok(it, "last_layer_to_ready_us"), "%s %s: latency",
                              tls->valuestring, name);
                }
            }
        }
    }
}

int main(void)
{
    MLS_TEST_RUN(test_bench_runs);
    MLS_TEST_RUN(test_bench_fields);
    cJSON_Delete(t_json);
    return MLS_TEST_DONE();
}
