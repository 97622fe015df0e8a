/*
 * test_v4_load.c - DeepSeek-V4 checkpoints load by the release's names and
 * formats (README-v4 sections 1-2), hostile ones are refused with the key or
 * the file and tensor named, and eng_model_load takes a V4 model (its forward
 * pass is checked by test_v4_forward.c).
 */
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "eng_safetensors.h"
#include "eng_v4.h"
#include "engine.h"
#include "mls_test.h"

static void test_config_keys(void)
{
    char path[600];
    eng_config c;
    mls_err err = {{0}};

    CHECK_FIXTURE("models/tiny-v4/config.json", path);
    CHECK_MSG(eng_config_load(path, &c, &err) == MLS_OK, "%s", err.msg);
    CHECK(c.is_v4);
    CHECK_STR_EQ(c.model_type, "deepseek_v4");
    CHECK_EQ_INT(c.v4.head_dim, 144);
    CHECK_EQ_INT(c.qk_rope_head_dim, 16);
    CHECK_EQ_INT(c.v4.o_groups, 2);
    CHECK_EQ_INT(c.v4.o_lora_rank, 32);
    CHECK_EQ_INT(c.v4.sliding_window, 16);
    CHECK_EQ_INT(c.v4.index_n_heads, 8);
    CHECK_EQ_INT(c.v4.index_head_dim, 64);
    CHECK_EQ_INT(c.v4.index_topk, 4);
    CHECK_EQ_INT(c.v4.num_hash_layers, 2);
    CHECK_EQ_INT(c.v4.hc_mult, 4);
    CHECK_EQ_INT(c.v4.hc_sinkhorn_iters, 20);
    CHECK(c.v4.hc_eps == 1e-6f && c.v4.swiglu_limit == 3.0f);
    CHECK(c.v4.compress_rope_theta == 160000.0f && c.rope_theta == 10000.0f);
    CHECK(c.rope_yarn && c.rope_factor == 16.0f &&
          c.rope_original_max_position_embeddings == 65536);
    CHECK_EQ_INT(c.scoring_func, ENG_SCORE_SQRTSOFTPLUS);
    CHECK(c.norm_topk_prob && c.routed_scaling_factor == 1.5f);
    CHECK_EQ_INT(c.v4.n_compress_ratios, 6);
    static const int want[6] = {0, 4, 8, 4, 8, 0};
    for (int i = 0; i < 6; i++) {
        CHECK_EQ_INT(c.v4.compress_ratios[i], want[i]);
    }
    CHECK(!c.fp8 && !c.v4.expert_fp4);

    CHECK_FIXTURE("models/tiny-v4-fp8/config.json", path);
    CHECK_MSG(eng_config_load(path, &c, &err) == MLS_OK, "%s", err.msg);
    CHECK(c.is_v4 && c.fp8 && c.v4.expert_fp4);
    CHECK_EQ_INT(c.v4.num_hash_layers, 1);
    CHECK_EQ_INT(c.v4.head_dim, 192);
}

/* tiny-v4's config.json with `from` replaced by `to` parses to `want`, and
 * the message names `key`. */
static void check_config_edit(const char *from, const char *to, mls_status want, const char *key)
{
    char path[600], *text, *at, buf[8192];
    FILE *fp;
    size_t n;
    eng_config c;
    mls_err err = {{0}};

    CHECK_FIXTURE("models/tiny-v4/config.json", path);
    fp = fopen(path, "rb");
    CHECK(fp != NULL);
    n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = 0;
    at = strstr(buf, from);
    CHECK_MSG(at != NULL, "config.json has no '%s'", from);
    text = malloc(n + strlen(to) + 1);
    CHECK(text != NULL);
    snprintf(text, n + strlen(to) + 1, "%.*s%s%s", (int)(at - buf), buf, to, at + strlen(from));
    mls_status st = eng_config_parse(text, strlen(text), "cfg", &c, &err);
    free(text);
    CHECK_MSG(st == want, "edit '%s' -> '%s': status %s, want %s (%s)", from, to,
              mls_status_name(st), mls_status_name(want), err.msg);
    CHECK_MSG(strstr(err.msg, key) != NULL, "edit '%s': message '%s' does not name %s", from,
              err.msg, key);
}

static void test_config_errors(void)
{
    check_config_edit("\"sliding_window\": 16,", "", MLS_ERR_BAD_MODEL, "\"sliding_window\"");
    check_config_edit("\"head_dim\": 144", "\"head_dim\": 150", MLS_ERR_BAD_MODEL, "\"head_dim\"");
    check_config_edit("\"index_head_dim\": 64", "\"index_head_dim\": 48", MLS_ERR_BAD_MODEL,
                      "\"index_head_dim\"");
    check_config_edit("\"o_groups\": 2", "\"o_groups\": 3", MLS_ERR_BAD_MODEL, "\"o_groups\"");
    check_config_edit("\"num_key_value_heads\": 1", "\"num_key_value_heads\": 4", MLS_ERR_BAD_MODEL,
                      "\"num_key_value_heads\"");
    check_config_edit("\"sqrtsoftplus\"", "\"tanh\"", MLS_ERR_UNSUPPORTED, "\"scoring_func\"");
    check_config_edit("\"num_hash_layers\": 2", "\"num_hash_layers\": 7", MLS_ERR_BAD_MODEL,
                      "\"num_hash_layers\"");
    check_config_edit("    0,\n    4,", "    1,\n    4,", MLS_ERR_BAD_MODEL, "\"compress_ratios\"");
    check_config_edit("    8,\n    0\n", "    8\n", MLS_ERR_BAD_MODEL, "\"compress_ratios\"");
    check_config_edit("\"hc_mult\": 4", "\"hc_mult\": 0", MLS_ERR_BAD_MODEL, "\"hc_mult\"");
    check_config_edit("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", MLS_ERR_UNSUPPORTED,
                      "\"hidden_act\"");
}

static void test_load_tiny_v4(void)
{
    char dir[600];
    eng_v4_model *m = NULL;
    mls_err err = {{0}};

    CHECK_FIXTURE("models/tiny-v4", dir);
    CHECK_MSG(eng_v4_model_load(dir, &m, &err) == MLS_OK, "%s", err.msg);
    CHECK_EQ_INT(m->head.fmt, ENG_V4_WFMT_BF16);
    CHECK_EQ_INT(m->layers[1].ratio, 4);
    CHECK_EQ_INT(m->layers[2].ratio, 8);
    CHECK(m->layers[0].tid2eid != NULL && m->layers[0].gate_bias == NULL);
    CHECK(m->layers[2].tid2eid == NULL && m->layers[2].gate_bias != NULL);
    CHECK(m->layers[1].idx_compressor.ape != NULL && m->layers[2].idx_compressor.ape == NULL);
    CHECK(m->layers[0].compressor.ape == NULL);
    CHECK_EQ_INT(m->layers[1].compressor.wkv.rows, 288);
    CHECK_EQ_INT(m->layers[3].experts[7].w2.rows, 64);
    eng_v4_model_destroy(m);
}

static void test_load_tiny_v4_fp8(void)
{
    char dir[600];
    eng_v4_model *m = NULL;
    mls_err err = {{0}};
    float row[128];

    CHECK_FIXTURE("models/tiny-v4-fp8", dir);
    CHECK_MSG(eng_v4_model_load(dir, &m, &err) == MLS_OK, "%s", err.msg);
    const eng_v4_layer *l0 = &m->layers[0];
    CHECK_EQ_INT(l0->wq_a.fmt, ENG_V4_WFMT_FP8);
    CHECK_EQ_INT(l0->wo_a.fmt, ENG_V4_WFMT_FP8);
    CHECK_EQ_INT(l0->experts[0].w1.fmt, ENG_V4_WFMT_FP4);
    CHECK_EQ_INT(l0->experts[0].w1.cols, 128);
    CHECK_EQ_INT(l0->shared.w2.fmt, ENG_V4_WFMT_FP8);
    CHECK_EQ_INT(l0->compressor.wkv.fmt, ENG_V4_WFMT_BF16);
    /* decoded weights are finite and on the README's scale grid */
    eng_v4_weight_row(&l0->experts[3].w2, 5, row);
    for (int i = 0; i < 128; i++) {
        CHECK(isfinite(row[i]) && fabsf(row[i]) <= 6.0f * 0.125f);
    }
    eng_v4_model_destroy(m);
}

static void test_engine_loads_v4(void)
{
    char dir[600];
    eng_model *model = NULL, *again = NULL;
    mls_err err = {{0}};

    CHECK_FIXTURE("models/tiny-v4", dir);
    CHECK_MSG(eng_model_load(dir, NULL, &model, &err) == MLS_OK, "%s", err.msg);
    CHECK(eng_model_config(model)->is_v4);
    CHECK_EQ_INT(eng_model_config(model)->num_hidden_layers, 6);
    CHECK(eng_model_weight_bytes(model) > 2000000);
    CHECK_MSG(eng_model_load(dir, NULL, &again, &err) == MLS_OK, "%s", err.msg);
    CHECK(eng_model_fingerprint(model) == eng_model_fingerprint(again));
    eng_model_destroy(again);
    eng_model_destroy(model);
}

/* A copy of tiny-v4-fp8 in a temp dir with `drop` left out, or `poison`'s
 * bytes overwritten with 0xFF; load it and check the message names the tensor. */
static void check_hostile(const char *drop, const char *poison, const char *want_in_msg)
{
    char src[600], tmpl[] = "/tmp/mls_v4_XXXXXX", path[700];
    st_archive *ar = NULL;
    st_writer *w = NULL;
    eng_v4_model *m = NULL;
    mls_err err = {{0}};

    CHECK_FIXTURE("models/tiny-v4-fp8/model.safetensors", src);
    CHECK(mkdtemp(tmpl) != NULL);
    CHECK_OK(st_open_file(src, &ar, &err));
    snprintf(path, sizeof(path), "%s/model.safetensors", tmpl);
    CHECK_OK(st_writer_create(path, &w, &err));
    for (size_t i = 0; i < st_count(ar); i++) {
        const st_tensor *t = st_at(ar, i);
        if (drop == NULL || strcmp(t->name, drop) != 0) {
            CHECK_OK(st_writer_declare(w, t->name, t->dtype, t->n_dims, t->shape, &err));
        }
    }
    for (size_t i = 0; i < st_count(ar); i++) {
        const st_tensor *t = st_at(ar, i);
        if (drop != NULL && strcmp(t->name, drop) == 0) {
            continue;
        }
        if (poison != NULL && strcmp(t->name, poison) == 0) {
            uint8_t *bytes = malloc(t->nbytes);
            memcpy(bytes, t->data, t->nbytes);
            memset(bytes, 0xff, 8 < t->nbytes ? 8 : t->nbytes);
            CHECK_OK(st_writer_write(w, bytes, t->nbytes, &err));
            free(bytes);
        } else {
            CHECK_OK(st_writer_write(w, t->data, t->nbytes, &err));
        }
    }
    CHECK_OK(st_writer_finish(w, &err));
    st_close(ar);
    *strrchr(src, '/') = '\0'; /* the fixture's folder: its config.json goes along */
    snprintf(path, sizeof(path), "cp '%s/config.json' '%s/'", src, tmpl);
    CHECK(system(path) == 0);
    mls_status st = eng_v4_model_load(tmpl, &m, &err);
    CHECK_MSG(st == MLS_ERR_BAD_MODEL, "status %s (%s)", mls_status_name(st), err.msg);
    CHECK_MSG(strstr(err.msg, want_in_msg) != NULL && strstr(err.msg, "model.safetensors") != NULL,
              "message '%s' does not name the file and %s", err.msg, want_in_msg);
    snprintf(path, sizeof(path), "rm -rf '%s'", tmpl);
    CHECK(system(path) == 0);
}

static void test_hostile_checkpoints(void)
{
    check_hostile("layers.0.attn.indexer.compressor.ape", NULL,
                  "'layers.0.attn.indexer.compressor.ape'");
    check_hostile("layers.1.ffn.experts.5.w2.scale", NULL, "'layers.1.ffn.experts.5.w2.scale'");
    check_hostile("layers.1.ffn.gate.bias", NULL, "'layers.1.ffn.gate.bias'");
    check_hostile(NULL, "layers.0.attn.wq_b.scale", "NaN");
    check_hostile(NULL, "layers.0.ffn.gate.tid2eid", "'layers.0.ffn.gate.tid2eid'");
}

int main(void)
{
    MLS_TEST_RUN(test_config_keys);
    MLS_TEST_RUN(test_config_errors);
    MLS_TEST_RUN(test_load_tiny_v4);
    MLS_TEST_RUN(test_load_tiny_v4_fp8);
    MLS_TEST_RUN(test_engine_loads_v4);
    MLS_TEST_RUN(test_hostile_checkpoints);
    return MLS_TEST_DONE();
}
