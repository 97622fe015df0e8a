/*
 * test_genmodel.c - `mlaserve genmodel` (run in-process): the generated
 * checkpoints load through the engine's reader and config parser, have the
 * fixture README's names, dtypes and shapes (compared against the fixture
 * checkpoints themselves), follow its weight recipe statistically, quantize
 * fp8 per 128x128 block with amax mapped to 448, shard with a correct index,
 * and are deterministic in the seed.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <sys/stat.h>

#include "loader_check.h"
#include "mls_cli.h"
#include "mls_status.h"
#include "mls_test.h"

static char tmp_root[256];

static const char *tmp_path(const char *name, char *buf, size_t len)
{
    if (tmp_root[0] == 0) {
        snprintf(tmp_root, sizeof(tmp_root), "/tmp/mls_genmodel_XXXXXX");
        if (mkdtemp(tmp_root) == NULL) {
            tmp_root[0] = 0;
        }
    }
    snprintf(buf, len, "%s/%s", tmp_root, name);
    return buf;
}

/* Run `genmodel` with a NULL-terminated argument list. */
static int genmodel(const char *first, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    argv[argc++] = (char *)"genmodel";
    va_start(ap, first);
    for (const char *a = first; a != NULL && argc < 31; a = va_arg(ap, const char *)) {
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;
    return mls_cmd_genmodel(argc, argv);
}

typedef struct {
    eng_config cfg;
    st_archive *ar;
} model;

static mls_status model_open(const char *dir, model *m, mls_err *err)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    mls_status st = eng_config_load(path, &m->cfg, err);
    m->ar = NULL;
    if (st == MLS_OK) {
        st = st_open_dir(dir, &m->ar, err);
    }
    if (st == MLS_OK) {
        st = lc_check_model(m->ar, &m->cfg, err);
        if (st != MLS_OK) {
            st_close(m->ar);
            m->ar = NULL;
        }
    }
    return st;
}

/* Mean and std of a BF16, F32 or fp8 (dequantized with its scale grid) tensor. */
static void tensor_stats(const st_archive *ar, const st_tensor *t, double *mean_p, double *std_p)
{
    const st_tensor *sc = NULL;
    if (t->dtype == ST_DTYPE_F8_E4M3) {
        char name[300];
        snprintf(name, sizeof(name), "%s_scale_inv", t->name);
        sc = st_find(ar, name);
    }
    const float *lut = mls_fp8_e4m3_table();
    size_t n = lc_numel(t), cols = t->n_dims == 2 ? (size_t)t->shape[1] : n;
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        double v;
        if (t->dtype == ST_DTYPE_BF16) {
            v = lc_bf16(t, i);
        } else if (t->dtype == ST_DTYPE_F32) {
            v = lc_f32(t, i);
        } else {
            size_t r = i / cols, c = i % cols;
            v = lut[((const uint8_t *)t->data)[i]] *
                lc_f32(sc, (r / 128) * (size_t)sc->shape[1] + c / 128);
        }
        s += v;
        s2 += v * v;
    }
    *mean_p = s / (double)n;
    *std_p = sqrt(s2 / (double)n - *mean_p * *mean_p);
}

#define CHECK_STATS(ar, name, want_mean, want_std, tol)                                            \
    do {                                                                                           \
        const st_tensor *t_ = st_find((ar), (name));                                               \
        double m_, s_;                                                                             \
        CHECK_MSG(t_ != NULL, "missing %s", (name));                                               \
        tensor_stats((ar), t_, &m_, &s_);                                                          \
        CHECK_MSG(fabs(m_ - (want_mean)) <= (tol) * (want_std) &&                                  \
                      fabs(s_ / (want_std)-1.0) <= (tol),                                          \
                  "%s: mean %.5f std %.5f, want %.5f / %.5f", (name), m_, s_, (double)(want_mean), \
                  (double)(want_std));                                                             \
    } while (0)

/* Every fp8 weight: codes finite, each block's amax at +-448, scale_inv positive. */
static void check_fp8_blocks(const st_archive *ar, int *n_fp8_p)
{
    int n_fp8 = 0;
    for (size_t i = 0; i < st_count(ar); i++) {
        const st_tensor *t = st_at(ar, i);
        if (t->dtype != ST_DTYPE_F8_E4M3) {
            continue;
        }
        char name[300];
        snprintf(name, sizeof(name), "%s_scale_inv", t->name);
        const st_tensor *sc = st_find(ar, name);
        CHECK_MSG(sc != NULL && sc->dtype == ST_DTYPE_F32, "%s: no scale grid", t->name);
        size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
        size_t rb = (size_t)sc->shape[0], cb = (size_t)sc->shape[1];
        CHECK_MSG(rb == (rows + 127) / 128 && cb == (cols + 127) / 128, "%s: grid", t->name);
        const uint8_t *codes = t->data;
        for (size_t b = 0; b < rb; b++) {
            for (size_t c = 0; c < cb; c++) {
                uint8_t amax = 0;
                for (size_t r = b * 128; r < rows && r < b * 128 + 128; r++) {
                    for (size_t k = c * 128; k < cols && k < c * 128 + 128; k++) {
                        uint8_t a = codes[r * cols + k] & 0x7f;
                        CHECK_MSG(a != 0x7f, "%s: NaN code", t->name);
                        amax = a > amax ? a : amax;
                    }
                }
                CHECK_MSG(amax == 0x7e, "%s block (%zu,%zu): max |code| 0x%02x, want 0x7e", t->name,
                          b, c, amax);
                CHECK_MSG(lc_f32(sc, b * cb + c) > 0, "%s: scale_inv <= 0", t->name);
            }
        }
        n_fp8++;
    }
    *n_fp8_p = n_fp8;
}

/* ------------------------------------------------------------------ tests */

static void test_tiny_matches_fixture(void)
{
    char fix[512], out[512];
    mls_err err = {{0}};
    CHECK_FIXTURE("models/tiny-v3", fix);
    tmp_path("tiny", out, sizeof(out));
    CHECK_EQ_INT(genmodel("--out", out, "--preset", "tiny", "--seed", "5", NULL), 0);
    model g, f;
    mls_status st = model_open(out, &g, &err);
    CHECK_MSG(st == MLS_OK, "%s", err.msg);
    st = model_open(fix, &f, &err);
    if (st != MLS_OK) {
        st_close(g.ar);
        CHECK_MSG(false, "%s", err.msg);
    }
    /* Same config (every field the engine reads) and the same tensor set. */
    const eng_config *a = &g.cfg, *b = &f.cfg;
    bool same_cfg =
        strcmp(a->model_type, b->model_type) == 0 && a->vocab_size == b->vocab_size &&
        a->hidden_size == b->hidden_size && a->intermediate_size == b->intermediate_size &&
        a->moe_intermediate_size == b->moe_intermediate_size &&
        a->num_hidden_layers == b->num_hidden_layers &&
        a->num_attention_heads == b->num_attention_heads && a->q_lora_rank == b->q_lora_rank &&
        a->kv_lora_rank == b->kv_lora_rank && a->qk_nope_head_dim == b->qk_nope_head_dim &&
        a->qk_rope_head_dim == b->qk_rope_head_dim && a->v_head_dim == b->v_head_dim &&
        a->n_routed_experts == b->n_routed_experts &&
        a->num_experts_per_tok == b->num_experts_per_tok &&
        a->n_shared_experts == b->n_shared_experts && a->n_group == b->n_group &&
        a->topk_group == b->topk_group && a->first_k_dense_replace == b->first_k_dense_replace &&
        a->moe_layer_freq == b->moe_layer_freq && a->topk_method == b->topk_method &&
        a->scoring_func == b->scoring_func && a->norm_topk_prob == b->norm_topk_prob &&
        a->routed_scaling_factor == b->routed_scaling_factor &&
        a->rms_norm_eps == b->rms_norm_eps && a->rope_theta == b->rope_theta &&
        a->max_position_embeddings == b->max_position_embeddings &&
        a->bos_token_id == b->bos_token_id && a->eos_token_id == b->eos_token_id &&
        a->tie_word_embeddings == b->tie_word_embeddings && a->rope_yarn == b->rope_yarn &&
        a->rope_factor == b->rope_factor &&
        a->rope_original_max_position_embeddings == b->rope_original_max_position_embeddings &&
        a->rope_beta_fast == b->rope_beta_fast && a->rope_beta_slow == b->rope_beta_slow &&
        a->rope_mscale == b->rope_mscale && a->rope_mscale_all_dim == b->rope_mscale_all_dim &&
        a->fp8 == b->fp8;
    bool same_set = st_count(g.ar) == st_count(f.ar);
    for (size_t i = 0; same_set && i < st_count(f.ar); i++) {
        const st_tensor *x = st_at(f.ar, i), *y = st_at(g.ar, i);
        same_set = strcmp(x->name, y->name) == 0 && x->dtype == y->dtype &&
                   x->n_dims == y->n_dims && x->nbytes == y->nbytes;
    }
    /* The weight recipe, on the generated model and on the fixture alike. */
    for (int k = 0; k < 2; k++) {
        const st_archive *ar = k == 0 ? g.ar : f.ar;
        double tol = 0.05;
        CHECK_STATS(ar, "model.embed_tokens.weight", 0.0, 1.0, tol);
        CHECK_STATS(ar, "lm_head.weight", 0.0, 2.5 / 8.0, tol);
        CHECK_STATS(ar, "model.layers.1.mlp.experts.3.down_proj.weight", 0.0, 1.0 / sqrt(32), 0.1);
        CHECK_STATS(ar, "model.layers.0.mlp.gate_proj.weight", 0.0, 1.0 / 8.0, 0.1);
        CHECK_STATS(ar, "model.layers.2.self_attn.kv_b_proj.weight", 0.0, 1.5 / sqrt(32), 0.1);
        CHECK_STATS(ar, "model.layers.2.mlp.gate.weight", 0.0, 1.5 / 8.0, 0.1);
        CHECK_STATS(ar, "model.layers.0.input_layernorm.weight", 1.0, 0.1, 0.35);
    }
    /* Different seeds, different weights. */
    bool differ = memcmp(st_find(g.ar, "lm_head.weight")->data,
                         st_find(f.ar, "lm_head.weight")->data, 64) != 0;
    st_close(g.ar);
    st_close(f.ar);
    CHECK_MSG(same_cfg, "generated tiny config differs from the tiny-v3 fixture");
    CHECK_MSG(same_set, "generated tiny tensors differ from the tiny-v3 fixture");
    CHECK(differ);
}

static void test_tiny_fp8(void)
{
    char fix[512], out[512];
    mls_err err = {{0}};
    tmp_path("tiny8", out, sizeof(out));
    CHECK_EQ_INT(genmodel("--out", out, "--preset", "tiny", "--dtype", "fp8", NULL), 0);
    model g;
    mls_status st = model_open(out, &g, &err);
    CHECK_MSG(st == MLS_OK, "%s", err.msg);
    CHECK(g.cfg.fp8 && g.cfg.fp8_block[0] == 128 && g.cfg.fp8_block[1] == 128);
    int n_fp8 = 0;
    check_fp8_blocks(g.ar, &n_fp8);
    CHECK_EQ_INT(n_fp8, 120);
    CHECK_STATS(g.ar, "model.layers.0.mlp.gate_proj.weight", 0.0, 1.0 / 8.0, 0.1);
    CHECK_STATS(g.ar, "model.layers.1.self_attn.q_b_proj.weight", 0.0, 1.5 / sqrt(48), 0.1);
    /* Names and dtypes as in the tiny-v3-fp8 fixture (whose dims differ). */
    if (mls_test_fixture_path("models/tiny-v3-fp8", fix, sizeof(fix)) == NULL) {
        st_close(g.ar);
        CHECK_MSG(false, "fixture %s/models/tiny-v3-fp8 is missing", MLS_FIXTURES_DIR);
    }
    model f;
    st = model_open(fix, &f, &err);
    if (st != MLS_OK) {
        st_close(g.ar);
        CHECK_MSG(false, "%s", err.msg);
    }
    bool same = st_count(g.ar) == st_count(f.ar);
    for (size_t i = 0; same && i < st_count(f.ar); i++) {
        same = strcmp(st_at(f.ar, i)->name, st_at(g.ar, i)->name) == 0 &&
               st_at(f.ar, i)->dtype == st_at(g.ar, i)->dtype;
    }
    int fix_fp8 = 0;
    check_fp8_blocks(f.ar, &fix_fp8); /* the fixture's quantizer obeys the same rule */
    st_close(f.ar);
    CHECK_MSG(same, "tiny fp8 names/dtypes differ from tiny-v3-fp8");
    CHECK_EQ_INT(fix_fp8, 120);
    st_close(g.ar);
}

static void test_v2lite_fp8(void)
{
    char out[512];
    mls_err err = {{0}};
    tmp_path("v2lite", out, sizeof(out));
    CHECK_EQ_INT(genmodel("--out", out, "--preset", "deepseek-v2-lite", "--layers", "2",
                          "--experts", "4", "--vocab", "512", "--dtype", "fp8", "--seed", "3",
                          NULL),
                 0);
    model g;
    mls_status st = model_open(out, &g, &err);
    CHECK_MSG(st == MLS_OK, "%s", err.msg);
    const eng_config *c = &g.cfg;
    bool cfg_ok = strcmp(c->model_type, "deepseek_v2") == 0 && c->hidden_size == 2048 &&
                  c->vocab_size == 512 && c->num_hidden_layers == 2 &&
                  c->num_attention_heads == 16 && c->q_lora_rank == 0 && c->kv_lora_rank == 512 &&
                  c->qk_nope_head_dim == 128 && c->qk_rope_head_dim == 64 && c->v_head_dim == 128 &&
                  c->intermediate_size == 10944 && c->moe_intermediate_size == 1408 &&
                  c->n_routed_experts == 4 && c->num_experts_per_tok == 4 &&
                  c->n_shared_experts == 2 && c->n_group == 1 && c->topk_group == 1 &&
                  c->topk_method == ENG_TOPK_GREEDY && c->scoring_func == ENG_SCORE_SOFTMAX &&
                  !c->norm_topk_prob && c->routed_scaling_factor == 1.0f &&
                  c->first_k_dense_replace == 1 && c->rope_yarn && c->rope_factor == 40.0f &&
                  c->rope_original_max_position_embeddings == 4096 && c->rope_mscale == 0.707f &&
                  c->rope_mscale_all_dim == 0.707f && c->max_position_embeddings == 163840 &&
                  c->fp8 && c->bos_token_id == 0 && c->eos_token_id == 1;
    /* Scale grids [ceil(out/128), ceil(in/128)], partial blocks included. */
    static const struct {
        const char *name;
        int64_t out, in;
    } grids[] = {
        {"model.layers.0.self_attn.q_proj.weight", 3072, 2048},
        {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight", 576, 2048},
        {"model.layers.1.self_attn.kv_b_proj.weight", 4096, 512},
        {"model.layers.1.self_attn.o_proj.weight", 2048, 2048},
        {"model.layers.0.mlp.gate_proj.weight", 10944, 2048},
        {"model.layers.0.mlp.down_proj.weight", 2048, 10944},
        {"model.layers.1.mlp.experts.3.up_proj.weight", 1408, 2048},
        {"model.layers.1.mlp.experts.0.down_proj.weight", 2048, 1408},
        {"model.layers.1.mlp.shared_experts.gate_proj.weight", 2816, 2048},
    };
    bool grids_ok = true;
    for (size_t i = 0; i < sizeof(grids) / sizeof(grids[0]); i++) {
        char sname[200];
        snprintf(sname, sizeof(sname), "%s_scale_inv", grids[i].name);
        const st_tensor *w = st_find(g.ar, grids[i].name), *s = st_find(g.ar, sname);
        grids_ok &= w != NULL && s != NULL && w->dtype == ST_DTYPE_F8_E4M3 &&
                    w->shape[0] == grids[i].out && w->shape[1] == grids[i].in &&
                    s->dtype == ST_DTYPE_F32 && s->shape[0] == (grids[i].out + 127) / 128 &&
                    s->shape[1] == (grids[i].in + 127) / 128;
    }
    const st_tensor *gate = st_find(g.ar, "model.layers.1.mlp.gate.weight");
    bool gate_ok = gate != NULL && gate->dtype == ST_DTYPE_BF16 && gate->shape[0] == 4 &&
                   st_find(g.ar, "model.layers.1.mlp.gate.e_score_correction_bias") == NULL;
    int n_fp8 = 0;
    check_fp8_blocks(g.ar, &n_fp8);
    CHECK_STATS(g.ar, "model.layers.0.self_attn.q_proj.weight", 0.0, 1.5 / sqrt(2048), 0.05);
    CHECK_STATS(g.ar, "model.layers.0.mlp.down_proj.weight", 0.0, 1.0 / sqrt(10944), 0.05);
    CHECK_STATS(g.ar, "lm_head.weight", 0.0, 2.5 / sqrt(2048), 0.05);
    st_close(g.ar);
    CHECK_MSG(cfg_ok, "deepseek-v2-lite config");
    CHECK_MSG(grids_ok, "fp8 weight / scale grid shapes");
    CHECK_MSG(gate_ok, "router gate");
    CHECK_EQ_INT(n_fp8, 2 * 4 + 3 + 4 * 3 + 3); /* attn x2, dense MLP, 4 experts, shared */
}

static bool same_tensors(const st_archive *x, const st_archive *y)
{
    if (st_count(x) != st_count(y)) {
        return false;
    }
    for (size_t i = 0; i < st_count(x); i++) {
        const st_tensor *a = st_at(x, i), *b = st_at(y, i);
        if (strcmp(a->name, b->name) != 0 || a->nbytes != b->nbytes ||
            memcmp(a->data, b->data, a->nbytes) != 0) {
            return false;
        }
    }
    return true;
}

static void test_shards_and_seeds(void)
{
    char one[512], many[512], other[512], path[600];
    mls_err err = {{0}};
    tmp_path("one", one, sizeof(one));
    tmp_path("many", many, sizeof(many));
    tmp_path("other", other, sizeof(other));
    CHECK_EQ_INT(genmodel("--out", one, "--seed", "7", NULL), 0);
    CHECK_EQ_INT(genmodel("--out", many, "--seed=7", "--max-shard-bytes", "150K", NULL), 0);
    CHECK_EQ_INT(genmodel("--out", other, "--seed", "8", NULL), 0);
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", many);
    CHECK(access(path, R_OK) == 0);
    snprintf(path, sizeof(path), "%s/model.safetensors", many);
    CHECK(access(path, F_OK) != 0);
    snprintf(path, sizeof(path), "%s/model-00001-of-00006.safetensors", many);
    CHECK_MSG(access(path, R_OK) == 0, "860 KB in 150 KiB shards: want 6 shards");
    snprintf(path, sizeof(path), "%s/model-00006-of-00006.safetensors", many);
    CHECK(access(path, R_OK) == 0);
    model a, b, c;
    CHECK_OK(model_open(one, &a, &err));
    CHECK_OK(model_open(many, &b, &err));
    CHECK_OK(model_open(other, &c, &err));
    bool sharded_same = same_tensors(a.ar, b.ar);
    bool seeds_differ = !same_tensors(a.ar, c.ar);
    size_t files = 0;
    for (size_t i = 0; i < st_count(b.ar); i++) {
        const st_tensor *t = st_at(b.ar, i);
        struct stat sb;
        files += stat(t->file, &sb) == 0 && sb.st_size <= 150 * 1024 + 8192 ? 1 : 0;
    }
    bool shard_sizes_ok = files == st_count(b.ar);
    st_close(b.ar);
    st_close(c.ar);

    /* Same seed again (with --force): the same bytes. Without --force: refused. */
    CHECK_EQ_INT(genmodel("--out", many, "--seed", "7", NULL), 1);
    CHECK_EQ_INT(genmodel("--out", many, "--seed", "7", "--force", NULL), 0);
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", many);
    bool index_gone = access(path, F_OK) != 0;
    snprintf(path, sizeof(path), "%s/model-00001-of-00006.safetensors", many);
    bool shards_gone = access(path, F_OK) != 0;
    bool again_same = model_open(many, &b, &err) == MLS_OK && same_tensors(a.ar, b.ar);
    st_close(b.ar);
    st_close(a.ar);
    CHECK_MSG(sharded_same, "sharded and single-file checkpoints differ");
    CHECK_MSG(shard_sizes_ok, "a shard exceeds --max-shard-bytes");
    CHECK_MSG(seeds_differ, "seeds 7 and 8 gave the same weights");
    CHECK_MSG(index_gone && shards_gone, "--force left the old shards");
    CHECK_MSG(again_same, "seed 7 twice gave different weights");
}

static void test_cli_errors(void)
{
    char out[512];
    tmp_path("cli", out, sizeof(out));
    CHECK_EQ_INT(genmodel("--help", NULL), 0);
    CHECK_EQ_INT(genmodel(NULL), 2);
    CHECK_EQ_INT(genmodel("--out", out, "--preset", "llama", NULL), 2);
    CHECK_EQ_INT(genmodel("--out", out, "--dtype", "fp16", NULL), 2);
    CHECK_EQ_INT(genmodel("--out", out, "--layers", "0", NULL), 2);
    CHECK_EQ_INT(genmodel("--out", out, "--layers", "-3", NULL), 2);
    CHECK_EQ_INT(genmodel("--out", out, "--experts", "x", NULL), 2);
    CHECK_EQ_INT(genmodel("--out", out, "--max-shard-bytes", "12X", NULL), 2);
    CHECK_EQ_INT(genmodel("--out", out, "--vocab", NULL), 2);
    CHECK_EQ_INT(genmodel("--out", out, "--bogus", NULL), 2);
    CHECK(access(out, F_OK) != 0);
    CHECK_EQ_INT(genmodel("--out", "/proc/mls-no-such/x", NULL), 1);
    /* Overrides that need clamping still give a valid model: 1 layer, 3 experts. */
    mls_err err = {{0}};
    model m;
    CHECK_EQ_INT(genmodel("--out", out, "--layers", "1", "--experts", "3", "--vocab", "300", NULL),
                 0);
    mls_status st = model_open(out, &m, &err);
    CHECK_MSG(st == MLS_OK, "%s", err.msg);
    st_close(m.ar);
    CHECK_EQ_INT(m.cfg.num_hidden_layers, 1);
    CHECK_EQ_INT(m.cfg.first_k_dense_replace, 0);
    CHECK_EQ_INT(m.cfg.n_routed_experts, 3);
    CHECK_EQ_INT(m.cfg.num_experts_per_tok, 3);
    CHECK_EQ_INT(m.cfg.n_group, 3);
    CHECK_EQ_INT(m.cfg.topk_group, 3);
    CHECK_EQ_INT(m.cfg.vocab_size, 300);
}

int main(void)
{
    MLS_TEST_RUN(test_tiny_matches_fixture);
    MLS_TEST_RUN(test_tiny_fp8);
    MLS_TEST_RUN(test_v2lite_fp8);
    MLS_TEST_RUN(test_shards_and_seeds);
    MLS_TEST_RUN(test_cli_errors);
    if (tmp_root[0] != 0) {
        static const char *subs[] = {"tiny", "tiny8", "v2lite", "one", "many", "other", "cli"};
        char path[600];
        for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++) {
            snprintf(path, sizeof(path), "%s/%s", tmp_root, subs[i]);
            lc_rmdir(path);
        }
        rmdir(tmp_root);
    }
    return MLS_TEST_DONE();
}
