/*
 * test_loader.c - safetensors reader/writer and config.json parser, on the
 * fixture checkpoints (tests/fixtures) and on deliberately broken files.
 *
 * Expected fixture values (first elements, fp8 code statistics) were read with
 * an independent Python reader and match tests/fixtures/models/README.md.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "loader_check.h"
#include "mls_alloc.h"
#include "mls_status.h"
#include "mls_test.h"

static const char *fixture(const char *model, char *buf, size_t len)
{
    char rel[256];
    snprintf(rel, sizeof(rel), "models/%s", model);
    return mls_test_fixture_path(rel, buf, len);
}

static char tmp_root[256];

static const char *tmp_dir(void)
{
    if (tmp_root[0] == 0) {
        snprintf(tmp_root, sizeof(tmp_root), "/tmp/mls_loader_XXXXXX");
        if (mkdtemp(tmp_root) == NULL) {
            tmp_root[0] = 0;
            return NULL;
        }
    }
    return tmp_root;
}

/* Write a raw safetensors file: 8-byte length, header text (as given), data bytes. */
static int write_raw(const char *path, uint64_t hlen_field, const char *header, const void *data,
                     size_t data_len)
{
    FILE *fp = fopen(path, "wb");
    if (fp == NULL) {
        return -1;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) {
        len8[i] = (uint8_t)(hlen_field >> (8 * i));
    }
    fwrite(len8, 1, 8, fp);
    fwrite(header, 1, strlen(header), fp);
    if (data_len > 0) {
        fwrite(data, 1, data_len, fp);
    }
    return fclose(fp);
}

static int write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    if (fp == NULL) {
        return -1;
    }
    fputs(text, fp);
    return fclose(fp);
}

static int copy_file(const char *from, const char *to, long truncate_to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[65536];
    size_t n;
    long total = 0;
    if (in == NULL || out == NULL) {
        if (in)
            fclose(in);
        if (out)
            fclose(out);
        return -1;
    }
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0) {
        if (truncate_to >= 0 && total + (long)n > truncate_to) {
            n = (size_t)(truncate_to - total);
        }
        fwrite(buf, 1, n, out);
        total += (long)n;
        if (truncate_to >= 0 && total >= truncate_to) {
            break;
        }
    }
    fclose(in);
    return fclose(out);
}

/* ------------------------------------------------------------ fixtures */

static void test_config_fixtures(void)
{
    char dir[512], path[600];
    eng_config c;
    mls_err err = {{0}};
    CHECK_FIXTURE("models/tiny-v2", dir);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    CHECK_OK(eng_config_load(path, &c, &err));
    CHECK_STR_EQ(c.model_type, "deepseek_v2");
    CHECK_EQ_INT(c.hidden_size, 64);
    CHECK_EQ_INT(c.vocab_size, 1024);
    CHECK_EQ_INT(c.num_hidden_layers, 3);
    CHECK_EQ_INT(c.num_attention_heads, 4);
    CHECK_EQ_INT(c.q_lora_rank, 0);
    CHECK_EQ_INT(c.kv_lora_rank, 32);
    CHECK_EQ_INT(c.qk_nope_head_dim, 16);
    CHECK_EQ_INT(c.qk_rope_head_dim, 8);
    CHECK_EQ_INT(c.v_head_dim, 16);
    CHECK_EQ_INT(c.intermediate_size, 128);
    CHECK_EQ_INT(c.moe_intermediate_size, 32);
    CHECK_EQ_INT(c.n_routed_experts, 8);
    CHECK_EQ_INT(c.num_experts_per_tok, 2);
    CHECK_EQ_INT(c.n_shared_experts, 1);
    CHECK_EQ_INT(c.n_group, 1);
    CHECK_EQ_INT(c.topk_group, 1);
    CHECK_EQ_INT(c.topk_method, ENG_TOPK_GREEDY);
    CHECK_EQ_INT(c.scoring_func, ENG_SCORE_SOFTMAX);
    CHECK(!c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 1.0f);
    CHECK_EQ_INT(c.first_k_dense_replace, 1);
    CHECK_EQ_INT(c.moe_layer_freq, 1);
    CHECK(c.rms_norm_eps == 1e-6f);
    CHECK(c.rope_theta == 10000.0f);
    CHECK(!c.rope_yarn);
    CHECK(!c.fp8);
    CHECK_EQ_INT(c.max_position_embeddings, 4096);
    CHECK_EQ_INT(c.bos_token_id, 0);
    CHECK_EQ_INT(c.eos_token_id, 1);
    CHECK(!c.tie_word_embeddings);
    CHECK(!eng_config_layer_is_moe(&c, 0));
    CHECK(eng_config_layer_is_moe(&c, 1));
    CHECK(eng_config_layer_is_moe(&c, 2));
    CHECK(!eng_config_layer_is_moe(&c, 3));

    CHECK(fixture("tiny-v3", dir, sizeof(dir)) != NULL);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    CHECK_OK(eng_config_load(path, &c, &err));
    CHECK_STR_EQ(c.model_type, "deepseek_v3");
    CHECK_EQ_INT(c.q_lora_rank, 48);
    CHECK_EQ_INT(c.n_routed_experts, 16);
    CHECK_EQ_INT(c.num_experts_per_tok, 4);
    CHECK_EQ_INT(c.n_group, 4);
    CHECK_EQ_INT(c.topk_group, 2);
    CHECK_EQ_INT(c.topk_method, ENG_TOPK_NOAUX_TC);
    CHECK_EQ_INT(c.scoring_func, ENG_SCORE_SIGMOID);
    CHECK(c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 2.5f);
    CHECK(c.rope_yarn);
    CHECK(c.rope_factor == 40.0f);
    CHECK_EQ_INT(c.rope_original_max_position_embeddings, 4096);
    CHECK(c.rope_beta_fast == 32.0f && c.rope_beta_slow == 1.0f);
    CHECK(c.rope_mscale == 1.0f && c.rope_mscale_all_dim == 1.0f);
    CHECK_EQ_INT(c.max_position_embeddings, 163840);
    CHECK(!c.fp8);

    CHECK(fixture("tiny-v3-fp8", dir, sizeof(dir)) != NULL);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    CHECK_OK(eng_config_load(path, &c, &err));
    CHECK(c.fp8);
    CHECK_EQ_INT(c.fp8_block[0], 128);
    CHECK_EQ_INT(c.fp8_block[1], 128);
    CHECK_EQ_INT(c.hidden_size, 256);
    CHECK_EQ_INT(c.q_lora_rank, 200);
    CHECK_EQ_INT(c.kv_lora_rank, 160);
    CHECK_EQ_INT(c.num_attention_heads, 6);
}

static void check_first_bf16(const st_archive *ar, const char *name, const uint16_t *want, int n)
{
    const st_tensor *t = st_find(ar, name);
    CHECK_MSG(t != NULL, "missing %s", name);
    CHECK_EQ_INT(t->dtype, ST_DTYPE_BF16);
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
        CHECK_MSG(h == want[i], "%s[%d] = 0x%04x, want 0x%04x", name, i, h, want[i]);
    }
}

static void test_safetensors_fixtures(void)
{
    static const char *models[] = {"tiny-v2", "tiny-v3", "tiny-v3-fp8"};
    static const size_t counts[] = {83, 139, 259};
    char dir[512], path[600];
    mls_err err = {{0}};
    CHECK_FIXTURE("models/tiny-v2", dir);
    int64_t weights_before = mls_alloc_bytes(MLS_ALLOC_TAG_WEIGHTS);
    for (int m = 0; m < 3; m++) {
        eng_config c;
        st_archive *ar = NULL;
        CHECK(fixture(models[m], dir, sizeof(dir)) != NULL);
        snprintf(path, sizeof(path), "%s/config.json", dir);
        CHECK_OK(eng_config_load(path, &c, &err));
        mls_status st = st_open_dir(dir, &ar, &err);
        CHECK_MSG(st == MLS_OK, "%s: %s", models[m], err.msg);
        CHECK_EQ_INT(st_count(ar), counts[m]);
        st = lc_check_model(ar, &c, &err);
        if (st != MLS_OK) {
            st_close(ar);
            CHECK_MSG(false, "%s", err.msg);
        }
        /* st_at walks names in sorted order. */
        for (size_t i = 1; i < st_count(ar); i++) {
            if (strcmp(st_at(ar, i - 1)->name, st_at(ar, i)->name) >= 0) {
                st_close(ar);
                CHECK_MSG(false, "st_at not sorted at %zu", i);
            }
        }
        CHECK(st_at(ar, st_count(ar)) == NULL);
        CHECK(st_find(ar, "__metadata__") == NULL);
        CHECK(st_find(ar, "model.layers.0.self_attn.q_proj") == NULL);
        const st_tensor *t = st_find(ar, "model.embed_tokens.weight");
        CHECK(t != NULL && strstr(t->file, "model.safetensors") != NULL);
        CHECK_EQ_INT(t->nbytes, (uint64_t)c.vocab_size * c.hidden_size * 2);
        if (m == 0) {
            static const uint16_t emb[] = {0x3ddb, 0xbfd1, 0x3fa9, 0x3da9};
            static const uint16_t kva[] = {0x3de4, 0xbdc0, 0x3e31, 0x3d83};
            check_first_bf16(ar, "model.embed_tokens.weight", emb, 4);
            check_first_bf16(ar, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", kva, 4);
        } else if (m == 1) {
            static const uint16_t emb[] = {0x3e01, 0xbfa3, 0x3dfc, 0xbe91};
            check_first_bf16(ar, "model.embed_tokens.weight", emb, 4);
            t = st_find(ar, "model.layers.1.mlp.gate.e_score_correction_bias");
            CHECK(t != NULL && t->dtype == ST_DTYPE_F32);
            CHECK(lc_f32(t, 0) == 0.06777580082416534f);
            CHECK(lc_f32(t, 3) == -0.0821293443441391f);
        } else {
            static const uint16_t emb[] = {0xbf77, 0x400a, 0xbfa9, 0xbf3d};
            static const uint8_t kva[] = {0xe1, 0x62, 0x57, 0x67, 0x67, 0xef, 0xe1, 0xe5};
            check_first_bf16(ar, "model.embed_tokens.weight", emb, 4);
            t = st_find(ar, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight");
            CHECK(t != NULL && t->dtype == ST_DTYPE_F8_E4M3);
            CHECK(memcmp(t->data, kva, sizeof(kva)) == 0);
            t = st_find(ar, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv");
            CHECK(t != NULL && t->n_dims == 2 && t->shape[0] == 2 && t->shape[1] == 2);
            CHECK(lc_f32(t, 0) == 0.0008937457459978759f);
            /* README: 254 distinct codes, 356 subnormals, 476 codes of +-448, ten -0, no NaN. */
            bool seen[256] = {false};
            size_t n_fp8 = 0, sub = 0, max448 = 0, negz = 0, nan = 0, distinct = 0;
            for (size_t i = 0; i < st_count(ar); i++) {
                const st_tensor *w = st_at(ar, i);
                if (w->dtype != ST_DTYPE_F8_E4M3) {
                    continue;
                }
                n_fp8++;
                const uint8_t *p = w->data;
                for (uint64_t k = 0; k < w->nbytes; k++) {
                    uint8_t code = p[k];
                    seen[code] = true;
                    sub += (code & 0x78) == 0 && (code & 7) != 0;
                    max448 += (code & 0x7f) == 0x7e;
                    negz += code == 0x80;
                    nan += (code & 0x7f) == 0x7f;
                }
            }
            for (int k = 0; k < 256; k++) {
                distinct += seen[k];
            }
            CHECK_EQ_INT(n_fp8, 120);
            CHECK_EQ_INT(distinct, 254);
            CHECK_EQ_INT(sub, 356);
            CHECK_EQ_INT(max448, 476);
            CHECK_EQ_INT(negz, 10);
            CHECK_EQ_INT(nan, 0);
        }
        /* st_expect accepts any of several dtypes and -1 wildcards. */
        st_dtype two[2] = {ST_DTYPE_F32, ST_DTYPE_BF16};
        int64_t wild[2] = {-1, c.hidden_size};
        const st_tensor *got = NULL;
        CHECK_OK(st_expect(ar, "lm_head.weight", two, 2, 2, wild, &got, &err));
        CHECK(got == st_find(ar, "lm_head.weight"));
        CHECK(mls_alloc_bytes(MLS_ALLOC_TAG_WEIGHTS) > weights_before);
        st_close(ar);
    }
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_WEIGHTS), weights_before);
}

/* ------------------------------------------------------------- writer */

static void test_writer_roundtrip(void)
{
    char path[512];
    mls_err err = {{0}};
    const char *dir = tmp_dir();
    CHECK(dir != NULL);
    snprintf(path, sizeof(path), "%s/rt.safetensors", dir);

    float a[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    uint16_t b[3 * 2 * 5];
    for (int i = 0; i < 30; i++) {
        b[i] = mls_f32_to_bf16((float)i * 0.5f - 3.0f);
    }
    int32_t scalar = -7;
    uint8_t codes[9] = {0, 1, 0x7e, 0xfe, 0x80, 8, 0x38, 0x40, 0x77};
    int64_t sa[2] = {2, 3}, sb[3] = {3, 2, 5}, sz[2] = {0, 4}, sc[1] = {9};

    st_writer *w = NULL;
    CHECK_OK(st_writer_create(path, &w, &err));
    CHECK_OK(st_writer_declare(w, "z.f32", ST_DTYPE_F32, 2, sa, &err));
    CHECK_OK(st_writer_declare(w, "a \"quoted\\name\"", ST_DTYPE_BF16, 3, sb, &err));
    CHECK_OK(st_writer_declare(w, "empty", ST_DTYPE_F16, 2, sz, &err));
    CHECK_OK(st_writer_declare(w, "scalar", ST_DTYPE_I32, 0, NULL, &err));
    CHECK_OK(st_writer_declare(w, "codes", ST_DTYPE_F8_E4M3, 1, sc, &err));
    /* Stream in odd chunks that straddle tensor boundaries. */
    uint8_t all[24 + 60 + 4 + 9];
    memcpy(all, a, 24);
    memcpy(all + 24, b, 60);
    memcpy(all + 84, &scalar, 4);
    memcpy(all + 88, codes, 9);
    for (size_t off = 0; off < sizeof(all); off += 7) {
        size_t n = sizeof(all) - off < 7 ? sizeof(all) - off : 7;
        CHECK_OK(st_writer_write(w, all + off, n, &err));
    }
    CHECK_OK(st_writer_finish(w, &err));

    /* The raw header: 8-aligned, space padded, __metadata__, sorted names. */
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    uint8_t len8[8];
    CHECK(fread(len8, 1, 8, fp) == 8);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) {
        hlen |= (uint64_t)len8[i] << (8 * i);
    }
    CHECK_EQ_INT(hlen % 8, 0);
    char *hdr = calloc(1, hlen + 1);
    CHECK(fread(hdr, 1, hlen, fp) == hlen);
    fclose(fp);
    cJSON *root = cJSON_Parse(hdr);
    bool ok = root != NULL;
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    ok = ok && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(meta, "format")) &&
         strcmp(cJSON_GetObjectItemCaseSensitive(meta, "format")->valuestring, "pt") == 0;
    ok = ok && strstr(hdr, "\"a \\\"quoted\\\\name\\\"\"") < strstr(hdr, "\"codes\"") &&
         strstr(hdr, "\"codes\"") < strstr(hdr, "\"z.f32\"");
    cJSON_Delete(root);
    free(hdr);
    CHECK_MSG(ok, "header layout");

    st_archive *ar = NULL;
    CHECK_OK(st_open_file(path, &ar, &err));
    CHECK_EQ_INT(st_count(ar), 5);
    const st_tensor *t = st_find(ar, "z.f32");
    CHECK(t != NULL && t->dtype == ST_DTYPE_F32 && t->n_dims == 2 && t->shape[1] == 3);
    CHECK(memcmp(t->data, a, sizeof(a)) == 0);
    t = st_find(ar, "a \"quoted\\name\"");
    CHECK(t != NULL && t->n_dims == 3 && t->shape[0] == 3 && t->shape[2] == 5);
    CHECK(memcmp(t->data, b, sizeof(b)) == 0);
    t = st_find(ar, "empty");
    CHECK(t != NULL && t->nbytes == 0 && t->shape[0] == 0);
    t = st_find(ar, "scalar");
    CHECK(t != NULL && t->n_dims == 0 && t->nbytes == 4);
    CHECK(memcmp(t->data, &scalar, 4) == 0);
    t = st_find(ar, "codes");
    CHECK(t != NULL && memcmp(t->data, codes, 9) == 0);
    st_close(ar);

    /* Misuse: over-writing, declaring late, duplicates, finishing short. */
    CHECK_OK(st_writer_create(path, &w, &err));
    CHECK_OK(st_writer_declare(w, "x", ST_DTYPE_F32, 1, sc, &err));
    CHECK_STATUS(st_writer_write(w, all, 37, &err), MLS_ERR_INVALID_ARG);
    fprintf(stderr, "  overwrite: %s\n", err.msg);
    CHECK_STATUS(st_writer_finish(w, &err), MLS_ERR_INVALID_ARG);

    CHECK_OK(st_writer_create(path, &w, &err));
    CHECK_OK(st_writer_declare(w, "x", ST_DTYPE_F32, 1, sc, &err));
    CHECK_OK(st_writer_write(w, all, 4, &err));
    CHECK_STATUS(st_writer_declare(w, "y", ST_DTYPE_F32, 1, sc, &err), MLS_ERR_INVALID_ARG);
    fprintf(stderr, "  late declare: %s\n", err.msg);
    CHECK_STATUS(st_writer_finish(w, &err), MLS_ERR_INVALID_ARG);
    fprintf(stderr, "  short finish: %s\n", err.msg);
    CHECK(strstr(err.msg, "4 of 36") != NULL);

    CHECK_OK(st_writer_create(path, &w, &err));
    CHECK_OK(st_writer_declare(w, "x", ST_DTYPE_F32, 1, sc, &err));
    CHECK_OK(st_writer_declare(w, "x", ST_DTYPE_F32, 1, sc, &err));
    CHECK_STATUS(st_writer_write(w, all, 4, &err), MLS_ERR_INVALID_ARG);
    fprintf(stderr, "  duplicate: %s\n", err.msg);
    st_writer_abort(w);

    /* The earlier good file survives failed rewrites (tmp + rename), and no tmp is left. */
    CHECK_OK(st_open_file(path, &ar, &err));
    CHECK_EQ_INT(st_count(ar), 5);
    st_close(ar);
    DIR *d = opendir(dir);
    struct dirent *de;
    int tmps = 0;
    while (d != NULL && (de = readdir(d)) != NULL) {
        tmps += strstr(de->d_name, ".tmp.") != NULL;
    }
    if (d != NULL) {
        closedir(d);
    }
    CHECK_EQ_INT(tmps, 0);
    CHECK_STATUS(st_writer_create("/nonexistent-dir/x.safetensors", &w, &err), MLS_ERR_NOT_FOUND);
}

/* Write every tensor of `ar` into n_shards files under dir + an index; maps[i] shard of tensor i.
 */
static int write_sharded(const st_archive *ar, const char *dir, int n_shards, bool dup_last)
{
    cJSON *index = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(index, "weight_map");
    cJSON_AddObjectToObject(index, "metadata");
    mls_err err = {{0}};
    size_t n = st_count(ar);
    for (int s = 0; s < n_shards; s++) {
        char name[64], path[600];
        snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        st_writer *w = NULL;
        if (st_writer_create(path, &w, &err) != MLS_OK) {
            return -1;
        }
        for (size_t i = (size_t)s; i < n; i += (size_t)n_shards) {
            const st_tensor *t = st_at(ar, i);
            st_writer_declare(w, t->name, t->dtype, t->n_dims, t->shape, &err);
            cJSON_AddStringToObject(wm, t->name, name);
        }
        if (dup_last && s == n_shards - 1) { /* also holds tensor 0 of shard 1 */
            const st_tensor *t = st_at(ar, 0);
            st_writer_declare(w, t->name, t->dtype, t->n_dims, t->shape, &err);
        }
        for (size_t i = (size_t)s; i < n; i += (size_t)n_shards) {
            st_writer_write(w, st_at(ar, i)->data, st_at(ar, i)->nbytes, &err);
        }
        if (dup_last && s == n_shards - 1) {
            st_writer_write(w, st_at(ar, 0)->data, st_at(ar, 0)->nbytes, &err);
        }
        if (st_writer_finish(w, &err) != MLS_OK) {
            fprintf(stderr, "%s\n", err.msg);
            return -1;
        }
    }
    char *text = cJSON_Print(index);
    char path[600];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    int rc = write_text(path, text);
    free(text);
    cJSON_Delete(index);
    return rc;
}

static void test_sharded(void)
{
    char src[512], dir[600], path[700];
    mls_err err = {{0}};
    CHECK_FIXTURE("models/tiny-v3-fp8", src);
    CHECK(tmp_dir() != NULL);
    snprintf(dir, sizeof(dir), "%s/sharded", tmp_dir());
    CHECK(mkdir(dir, 0700) == 0);
    st_archive *one = NULL, *many = NULL;
    CHECK_OK(st_open_dir(src, &one, &err));
    CHECK(write_sharded(one, dir, 3, false) == 0);
    mls_status st = st_open_dir(dir, &many, &err);
    if (st != MLS_OK) {
        st_close(one);
        CHECK_MSG(false, "%s", err.msg);
    }
    bool same = st_count(one) == st_count(many);
    int files_seen = 0;
    for (size_t i = 0; same && i < st_count(one); i++) {
        const st_tensor *a = st_at(one, i), *b = st_find(many, a->name);
        same = b != NULL && a->dtype == b->dtype && a->n_dims == b->n_dims &&
               a->nbytes == b->nbytes && memcmp(a->data, b->data, a->nbytes) == 0 &&
               memcmp(a->shape, b->shape, sizeof(a->shape[0]) * (size_t)a->n_dims) == 0;
        files_seen |= b != NULL && strstr(b->file, "model-00001-of-00003") ? 1 : 0;
        files_seen |= b != NULL && strstr(b->file, "model-00002-of-00003") ? 2 : 0;
        files_seen |= b != NULL && strstr(b->file, "model-00003-of-00003") ? 4 : 0;
    }
    eng_config c;
    snprintf(path, sizeof(path), "%s/config.json", src);
    CHECK_OK(eng_config_load(path, &c, &err));
    st = lc_check_model(many, &c, &err);
    mls_err miss = {{0}};
    st_dtype f32 = ST_DTYPE_F32;
    CHECK_STATUS(st_expect(many, "no.such.weight", &f32, 1, 0, NULL, NULL, &miss),
                 MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  missing in shards: %s\n", miss.msg);
    st_close(many);
    CHECK(strstr(miss.msg, "model.safetensors.index.json: tensor 'no.such.weight': missing"));
    CHECK_MSG(st == MLS_OK, "%s", err.msg);
    CHECK_MSG(same, "sharded copy differs");
    CHECK_EQ_INT(files_seen, 7);

    /* A shard named by weight_map is missing. */
    snprintf(path, sizeof(path), "%s/model-00002-of-00003.safetensors", dir);
    CHECK(unlink(path) == 0);
    CHECK_STATUS(st_open_dir(dir, &many, &err), MLS_ERR_NOT_FOUND);
    fprintf(stderr, "  missing shard: %s\n", err.msg);
    CHECK(strstr(err.msg, "model.safetensors.index.json") &&
          strstr(err.msg, "model-00002-of-00003"));

    /* A tensor in two shards. */
    lc_rmdir(dir);
    CHECK(mkdir(dir, 0700) == 0);
    CHECK(write_sharded(one, dir, 2, true) == 0);
    CHECK_STATUS(st_open_dir(dir, &many, &err), MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  duplicate across shards: %s\n", err.msg);
    CHECK(strstr(err.msg, st_at(one, 0)->name) && strstr(err.msg, "model-00001-of-00002") &&
          strstr(err.msg, "model-00002-of-00002"));

    /* weight_map points a tensor at the wrong shard. */
    lc_rmdir(dir);
    CHECK(mkdir(dir, 0700) == 0);
    CHECK(write_sharded(one, dir, 2, false) == 0);
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    {
        char *text = NULL;
        FILE *fp = fopen(path, "rb");
        CHECK(fp != NULL);
        text = calloc(1, 1 << 20);
        size_t len = fread(text, 1, (1 << 20) - 1, fp);
        fclose(fp);
        cJSON *root = cJSON_ParseWithLength(text, len);
        free(text);
        cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        cJSON_ReplaceItemInObjectCaseSensitive(
            wm, st_at(one, 0)->name, cJSON_CreateString("model-00002-of-00002.safetensors"));
        text = cJSON_Print(root);
        CHECK(write_text(path, text) == 0);
        free(text);
        cJSON_Delete(root);
    }
    CHECK_STATUS(st_open_dir(dir, &many, &err), MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  wrong shard in weight_map: %s\n", err.msg);
    CHECK(strstr(err.msg, st_at(one, 0)->name) != NULL);

    /* A weight_map entry escaping the directory. */
    CHECK(write_text(path, "{\"weight_map\": {\"x\": \"../model.safetensors\"}}") == 0);
    CHECK_STATUS(st_open_dir(dir, &many, &err), MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  bad shard name: %s\n", err.msg);
    CHECK(write_text(path, "{\"weight_map\": [1, 2]}") == 0);
    CHECK_STATUS(st_open_dir(dir, &many, &err), MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  bad weight_map: %s\n", err.msg);
    CHECK(write_text(path, "{\"weight_map\": {\"x\": ") == 0);
    CHECK_STATUS(st_open_dir(dir, &many, &err), MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  corrupt index: %s\n", err.msg);
    lc_rmdir(dir);
    st_close(one);

    /* A directory with no checkpoint at all. */
    CHECK(mkdir(dir, 0700) == 0);
    CHECK_STATUS(st_open_dir(dir, &many, &err), MLS_ERR_NOT_FOUND);
    fprintf(stderr, "  empty dir: %s\n", err.msg);
    rmdir(dir);
}

/* --------------------------------------------------------- bad files */

/* Open `path`, expect `want`, print the message, check it names the file and `needle`. */
#define EXPECT_BAD(path, want, needle)                                                             \
    do {                                                                                           \
        st_archive *ar_ = NULL;                                                                    \
        mls_err e_ = {{0}};                                                                        \
        CHECK_STATUS(st_open_file((path), &ar_, &e_), (want));                                     \
        fprintf(stderr, "  %-28s %s\n", needle ":", e_.msg);                                       \
        CHECK_MSG(strstr(e_.msg, (path)) != NULL, "message does not name the file");               \
        CHECK_MSG(strstr(e_.msg, (needle)) != NULL, "message lacks '%s'", (needle));               \
    } while (0)

static void test_bad_files(void)
{
    char model[600], path[600];
    const char *dir = tmp_dir();
    CHECK(dir != NULL);
    snprintf(path, sizeof(path), "%s/bad.safetensors", dir);
    uint8_t data[64] = {0};

    CHECK_FIXTURE("models/tiny-v2/model.safetensors", model);
    /* Truncated mid-data: the last tensors run past the end. */
    CHECK(copy_file(model, path, 300000) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "outside the data region");
    CHECK(copy_file(model, path, 5000) == 0); /* mid-header */
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "runs past the end");
    CHECK(copy_file(model, path, 5) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "truncated");
    CHECK(write_raw(path, 1000, "{}", NULL, 0) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "header length 1000");
    CHECK(write_raw(path, UINT64_MAX, "{}      ", NULL, 0) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "runs past the end");
    const char *h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "not valid JSON");
    h = "[1, 2, 3]";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "not a JSON object");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}} xx";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "trailing bytes");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': data_offsets [0, 16] outside");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': data_offsets [8, 4] end before");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': 8 data bytes, but F32 [3] needs 12");
    h = "{\"w\": {\"dtype\": \"BF16\", \"shape\": [4294967296, 4294967296, 4], "
        "\"data_offsets\": [0, 8]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'w': shape size overflows");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
        " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}";
    CHECK(write_raw(path, strlen(h), h, data, 16) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "overlaps tensor");
    h = "{\"a\": {\"dtype\": \"F8_E5M2\", \"shape\": [2], \"data_offsets\": [0, 2]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': unsupported dtype \"F8_E5M2\"");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2.5], \"data_offsets\": [0, 8]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': shape[0]");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': shape[0]");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': 9 dims");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': \"data_offsets\"");
    h = "{\"a\": {\"shape\": [2], \"data_offsets\": [0, 8]}}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': missing or non-string \"dtype\"");
    h = "{\"a\": 5}";
    CHECK(write_raw(path, strlen(h), h, data, 8) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a': header entry");
    h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
        " \"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}";
    CHECK(write_raw(path, strlen(h), h, data, 16) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "tensor 'a' appears twice");
    h = "{\"__metadata__\": 3}";
    CHECK(write_raw(path, strlen(h), h, data, 0) == 0);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "__metadata__");
    snprintf(path, sizeof(path), "%s/no-such.safetensors", dir);
    EXPECT_BAD(path, MLS_ERR_NOT_FOUND, "cannot open");
    snprintf(path, sizeof(path), "%s", dir);
    EXPECT_BAD(path, MLS_ERR_BAD_MODEL, "not a regular file");

    /* A good tiny file, then st_expect failures. */
    snprintf(path, sizeof(path), "%s/good.safetensors", dir);
    h = "{\"__metadata__\": {\"format\": \"pt\"}, "
        "\"w\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [0, 12]}, "
        "\"z\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [12, 12]}}";
    CHECK(write_raw(path, strlen(h), h, data, 12) == 0);
    st_archive *ar = NULL;
    mls_err err = {{0}};
    CHECK_OK(st_open_file(path, &ar, &err));
    st_dtype bf16 = ST_DTYPE_BF16, f8 = ST_DTYPE_F8_E4M3;
    int64_t good[2] = {2, 3}, bad[2] = {3, 2};
    CHECK_OK(st_expect(ar, "w", &bf16, 1, 2, good, NULL, &err));
    CHECK_STATUS(st_expect(ar, "q", &bf16, 1, 2, good, NULL, &err), MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  %-28s %s\n", "missing:", err.msg);
    CHECK(strstr(err.msg, path) && strstr(err.msg, "tensor 'q': missing"));
    CHECK_STATUS(st_expect(ar, "w", &bf16, 1, 2, bad, NULL, &err), MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  %-28s %s\n", "wrong shape:", err.msg);
    CHECK(strstr(err.msg, path) && strstr(err.msg, "tensor 'w': shape [2,3], want [3,2]"));
    CHECK_STATUS(st_expect(ar, "w", &bf16, 1, 1, good, NULL, &err), MLS_ERR_BAD_MODEL);
    CHECK(strstr(err.msg, "shape [2,3], want [2]"));
    CHECK_STATUS(st_expect(ar, "w", &f8, 1, 2, good, NULL, &err), MLS_ERR_BAD_MODEL);
    fprintf(stderr, "  %-28s %s\n", "wrong dtype:", err.msg);
    CHECK(strstr(err.msg, path) && strstr(err.msg, "tensor 'w': dtype BF16, want F8_E4M3"));
    st_close(ar);
}

/* --------------------------------------------------------------- config */

/* tiny-v3's config with one change applied by `edit`, parsed. */
static mls_status parse_edited(const char *text, void (*edit)(cJSON *), eng_config *c, mls_err *err)
{
    cJSON *root = cJSON_Parse(text);
    if (root == NULL) {
        return MLS_ERR_INTERNAL;
    }
    edit(root);
    char *out = cJSON_PrintUnformatted(root);
    mls_status st = eng_config_parse(out, strlen(out), "cfg.json", c, err);
    free(out);
    cJSON_Delete(root);
    return st;
}

static void edit_none(cJSON *r)
{
    (void)r;
}
static void edit_no_hidden(cJSON *r)
{
    cJSON_DeleteItemFromObject(r, "hidden_size");
}
static void edit_no_qlora(cJSON *r)
{
    cJSON_DeleteItemFromObject(r, "q_lora_rank");
}
static void edit_hidden_str(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "hidden_size", cJSON_CreateString("64"));
}
static void edit_hidden_frac(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "hidden_size", cJSON_CreateNumber(64.5));
}
static void edit_quant_gptq(cJSON *r)
{
    cJSON *q = cJSON_AddObjectToObject(r, "quantization_config");
    cJSON_AddStringToObject(q, "quant_method", "gptq");
}
static void edit_quant_block(cJSON *r)
{
    cJSON *q = cJSON_AddObjectToObject(r, "quantization_config");
    cJSON_AddStringToObject(q, "quant_method", "fp8");
    cJSON_AddStringToObject(q, "fmt", "e4m3");
    int bs[2] = {64, 64};
    cJSON_AddItemToObject(q, "weight_block_size", cJSON_CreateIntArray(bs, 2));
}
static void edit_quant_fmt(cJSON *r)
{
    cJSON *q = cJSON_AddObjectToObject(r, "quantization_config");
    cJSON_AddStringToObject(q, "quant_method", "fp8");
    cJSON_AddStringToObject(q, "fmt", "e5m2");
    int bs[2] = {128, 128};
    cJSON_AddItemToObject(q, "weight_block_size", cJSON_CreateIntArray(bs, 2));
}
static void edit_topk_too_big(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "num_experts_per_tok", cJSON_CreateNumber(17));
}
static void edit_topk_groups(cJSON *r) /* 4 groups of 4, 1 kept: at most 4 experts */
{
    cJSON_ReplaceItemInObject(r, "topk_group", cJSON_CreateNumber(1));
    cJSON_ReplaceItemInObject(r, "num_experts_per_tok", cJSON_CreateNumber(5));
}
static void edit_group_div(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "n_group", cJSON_CreateNumber(3));
}
static void edit_topk_group(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "topk_group", cJSON_CreateNumber(5));
}
static void edit_kv_rank(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "kv_lora_rank", cJSON_CreateNumber(30));
}
static void edit_rope_odd(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "qk_rope_head_dim", cJSON_CreateNumber(7));
}
static void edit_neg_heads(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "num_attention_heads", cJSON_CreateNumber(-4));
}
static void edit_model_llama(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "model_type", cJSON_CreateString("llama"));
}
static void edit_rope_linear(cJSON *r)
{
    cJSON *rs = cJSON_GetObjectItem(r, "rope_scaling");
    cJSON_DeleteItemFromObject(rs, "type");
    cJSON_AddStringToObject(rs, "rope_type", "linear");
}
static void edit_rope_rope_type(cJSON *r) /* rope_type instead of type; HF defaults */
{
    cJSON *rs = cJSON_GetObjectItem(r, "rope_scaling");
    cJSON_DeleteItemFromObject(rs, "type");
    cJSON_DeleteItemFromObject(rs, "beta_fast");
    cJSON_DeleteItemFromObject(rs, "beta_slow");
    cJSON_DeleteItemFromObject(rs, "mscale");
    cJSON_DeleteItemFromObject(rs, "mscale_all_dim");
    cJSON_AddStringToObject(rs, "rope_type", "yarn");
}
static void edit_rope_no_orig(cJSON *r)
{
    cJSON_DeleteItemFromObject(cJSON_GetObjectItem(r, "rope_scaling"),
                               "original_max_position_embeddings");
}
static void edit_eos_list(cJSON *r)
{
    int ids[3] = {7, 8, 9};
    cJSON_ReplaceItemInObject(r, "eos_token_id", cJSON_CreateIntArray(ids, 3));
}
static void edit_eos_empty(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "eos_token_id", cJSON_CreateArray());
}
static void edit_eos_big(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "eos_token_id", cJSON_CreateNumber(5000));
}
static void edit_defaults(cJSON *r) /* drop every optional key */
{
    static const char *keys[] = {"moe_layer_freq",
                                 "n_group",
                                 "topk_group",
                                 "norm_topk_prob",
                                 "routed_scaling_factor",
                                 "n_shared_experts",
                                 "first_k_dense_replace",
                                 "rms_norm_eps",
                                 "rope_theta",
                                 "tie_word_embeddings",
                                 "topk_method",
                                 "scoring_func",
                                 "bos_token_id",
                                 "eos_token_id",
                                 "rope_scaling",
                                 "num_key_value_heads",
                                 "hidden_act",
                                 "attention_bias"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        cJSON_DeleteItemFromObject(r, keys[i]);
    }
    cJSON_ReplaceItemInObject(r, "num_experts_per_tok", cJSON_CreateNumber(2));
}
static void edit_dense(cJSON *r) /* no routed experts: every layer dense */
{
    cJSON_ReplaceItemInObject(r, "n_routed_experts", cJSON_CreateNull());
    cJSON_DeleteItemFromObject(r, "num_experts_per_tok");
    cJSON_DeleteItemFromObject(r, "moe_intermediate_size");
}
static void edit_freq2(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "moe_layer_freq", cJSON_CreateNumber(2));
}
static void edit_kvheads(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "num_key_value_heads", cJSON_CreateNumber(1));
}
static void edit_bias(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "attention_bias", cJSON_CreateTrue());
}
static void edit_scoring(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "scoring_func", cJSON_CreateString("sqrtsoftplus"));
}
static void edit_norm_str(cJSON *r)
{
    cJSON_ReplaceItemInObject(r, "norm_topk_prob", cJSON_CreateString("true"));
}

static void test_config_errors(void)
{
    char dir[512], path[600];
    CHECK_FIXTURE("models/tiny-v3", dir);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    char text[8192];
    size_t len = fread(text, 1, sizeof(text) - 1, fp);
    fclose(fp);
    text[len] = 0;
    eng_config c;
    mls_err err = {{0}};

    CHECK_OK(parse_edited(text, edit_none, &c, &err));
    static const struct {
        const char *what;
        void (*edit)(cJSON *);
        mls_status want;
        const char *needle;
    } cases[] = {
        {"missing key", edit_no_hidden, MLS_ERR_BAD_MODEL, "missing required key \"hidden_size\""},
        {"missing q_lora_rank", edit_no_qlora, MLS_ERR_BAD_MODEL, "\"q_lora_rank\""},
        {"string for int", edit_hidden_str, MLS_ERR_BAD_MODEL,
         "\"hidden_size\" must be an integer"},
        {"fraction for int", edit_hidden_frac, MLS_ERR_BAD_MODEL,
         "\"hidden_size\" must be an integer"},
        {"gptq", edit_quant_gptq, MLS_ERR_UNSUPPORTED, "quantization_config.quant_method"},
        {"block 64", edit_quant_block, MLS_ERR_UNSUPPORTED, "weight_block_size"},
        {"e5m2", edit_quant_fmt, MLS_ERR_UNSUPPORTED, "quantization_config.fmt"},
        {"topk > experts", edit_topk_too_big, MLS_ERR_BAD_MODEL, "\"num_experts_per_tok\""},
        {"topk > group limit", edit_topk_groups, MLS_ERR_BAD_MODEL, "\"num_experts_per_tok\""},
        {"n_group", edit_group_div, MLS_ERR_BAD_MODEL, "\"n_group\" must divide"},
        {"topk_group", edit_topk_group, MLS_ERR_BAD_MODEL, "\"topk_group\" exceeds"},
        {"kv_lora_rank", edit_kv_rank, MLS_ERR_BAD_MODEL,
         "\"kv_lora_rank\" must be a multiple of 4"},
        {"rope odd", edit_rope_odd, MLS_ERR_BAD_MODEL, "\"qk_rope_head_dim\" must be even"},
        {"negative", edit_neg_heads, MLS_ERR_BAD_MODEL, "\"num_attention_heads\" must be positive"},
        {"model_type", edit_model_llama, MLS_ERR_UNSUPPORTED, "\"model_type\" is \"llama\""},
        {"rope linear", edit_rope_linear, MLS_ERR_UNSUPPORTED, "only \"yarn\""},
        {"yarn no orig", edit_rope_no_orig, MLS_ERR_BAD_MODEL,
         "\"rope_scaling.original_max_position_embeddings\""},
        {"eos []", edit_eos_empty, MLS_ERR_BAD_MODEL, "\"eos_token_id\" is an empty list"},
        {"eos >= vocab", edit_eos_big, MLS_ERR_BAD_MODEL, "\"eos_token_id\" is outside"},
        {"kv heads", edit_kvheads, MLS_ERR_BAD_MODEL, "\"num_key_value_heads\""},
        {"attention_bias", edit_bias, MLS_ERR_UNSUPPORTED, "\"attention_bias\""},
        {"scoring", edit_scoring, MLS_ERR_UNSUPPORTED, "\"scoring_func\""},
        {"bool as string", edit_norm_str, MLS_ERR_BAD_MODEL,
         "\"norm_topk_prob\" must be true or false"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mls_status st = parse_edited(text, cases[i].edit, &c, &err);
        fprintf(stderr, "  %-20s %s\n", cases[i].what, err.msg);
        CHECK_MSG(st == cases[i].want, "%s: got %s, want %s", cases[i].what, mls_status_name(st),
                  mls_status_name(cases[i].want));
        CHECK_MSG(strstr(err.msg, "cfg.json: ") == err.msg, "%s: no source", cases[i].what);
        CHECK_MSG(strstr(err.msg, cases[i].needle) != NULL, "%s: lacks '%s'", cases[i].what,
                  cases[i].needle);
    }

    /* Accepted variants. */
    CHECK_OK(parse_edited(text, edit_eos_list, &c, &err));
    CHECK_EQ_INT(c.eos_token_id, 7);
    CHECK_OK(parse_edited(text, edit_rope_rope_type, &c, &err));
    CHECK(c.rope_yarn && c.rope_factor == 40.0f && c.rope_beta_fast == 32.0f &&
          c.rope_beta_slow == 1.0f && c.rope_mscale == 1.0f && c.rope_mscale_all_dim == 0.0f);
    mls_status st = parse_edited(text, edit_defaults, &c, &err);
    CHECK_MSG(st == MLS_OK, "defaults: %s", err.msg);
    CHECK_EQ_INT(c.moe_layer_freq, 1);
    CHECK_EQ_INT(c.n_group, 1);
    CHECK_EQ_INT(c.topk_group, 1);
    CHECK(!c.norm_topk_prob);
    CHECK(c.routed_scaling_factor == 1.0f);
    CHECK_EQ_INT(c.n_shared_experts, 0);
    CHECK_EQ_INT(c.first_k_dense_replace, 0);
    CHECK(c.rms_norm_eps == 1e-6f && c.rope_theta == 10000.0f);
    CHECK(!c.tie_word_embeddings && !c.rope_yarn && !c.fp8);
    CHECK_EQ_INT(c.topk_method, ENG_TOPK_GREEDY);
    CHECK_EQ_INT(c.scoring_func, ENG_SCORE_SOFTMAX);
    CHECK_EQ_INT(c.bos_token_id, -1);
    CHECK_EQ_INT(c.eos_token_id, -1);
    CHECK(eng_config_layer_is_moe(&c, 0));
    CHECK_OK(parse_edited(text, edit_dense, &c, &err));
    CHECK_EQ_INT(c.n_routed_experts, 0);
    CHECK(!eng_config_layer_is_moe(&c, 1));
    CHECK_OK(parse_edited(text, edit_freq2, &c, &err));
    CHECK(!eng_config_layer_is_moe(&c, 0) && !eng_config_layer_is_moe(&c, 1));
    CHECK(eng_config_layer_is_moe(&c, 2));

    /* Not JSON at all, not an object, truncated, and a missing file. */
    static const char *junk[] = {"{\"hidden_size\": 64,", "[1,2]", "", "nul\x01l"};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        CHECK_STATUS(eng_config_parse(junk[i], strlen(junk[i]), "junk.json", &c, &err),
                     MLS_ERR_BAD_MODEL);
        fprintf(stderr, "  %-20s %s\n", "bad json:", err.msg);
        CHECK(strstr(err.msg, "junk.json: ") == err.msg);
    }
    CHECK_STATUS(eng_config_load("/nonexistent/config.json", &c, &err), MLS_ERR_NOT_FOUND);
    fprintf(stderr, "  %-20s %s\n", "no file:", err.msg);
    CHECK(strstr(err.msg, "/nonexistent/config.json") != NULL);
}

/* Random byte flips in a valid file's length field and header: every result is
 * either a clean open or BAD_MODEL with a message, never a crash (run under ASan). */
static void test_mutations(void)
{
    char path[512];
    mls_err err = {{0}};
    const char *dir = tmp_dir();
    CHECK(dir != NULL);
    snprintf(path, sizeof(path), "%s/fuzz.safetensors", dir);
    st_writer *w = NULL;
    CHECK_OK(st_writer_create(path, &w, &err));
    uint8_t zeros[256] = {0};
    size_t total = 0;
    for (int i = 0; i < 12; i++) {
        char name[32];
        int64_t shape[2] = {i + 1, 3};
        st_dtype dt = (st_dtype)(i % ST_DTYPE_COUNT);
        snprintf(name, sizeof(name), "layer.%d.w", i);
        CHECK_OK(st_writer_declare(w, name, dt, 2, shape, &err));
        total += (size_t)shape[0] * 3 * st_dtype_size(dt);
    }
    CHECK(total <= sizeof(zeros) * 4);
    for (size_t left = total; left > 0;) {
        size_t n = left < sizeof(zeros) ? left : sizeof(zeros);
        CHECK_OK(st_writer_write(w, zeros, n, &err));
        left -= n;
    }
    CHECK_OK(st_writer_finish(w, &err));
    FILE *fp = fopen(path, "rb");
    CHECK(fp != NULL);
    uint8_t orig[8192];
    size_t len = fread(orig, 1, sizeof(orig), fp);
    fclose(fp);
    size_t hdr_end = 8 + (size_t)orig[0] + ((size_t)orig[1] << 8);
    CHECK(len < sizeof(orig) && hdr_end <= len);

    static const uint8_t interesting[] = {'0', '9', '-', '"', '[', ']', '{',  '}',
                                          ',', ':', ' ', 'e', '.', 0,   0xff, '\\'};
    uint64_t x = 0x2545f4914f6cdd1dull;
    int ok = 0, bad = 0;
    for (int iter = 0; iter < 3000; iter++) {
        uint8_t buf[8192];
        memcpy(buf, orig, len);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            size_t pos = (iter % 50 == 0) ? (size_t)(x % 8) : 8 + (size_t)(x % (hdr_end - 8));
            buf[pos] =
                (x >> 32) & 1 ? interesting[(x >> 40) % sizeof(interesting)] : (uint8_t)(x >> 48);
        }
        size_t flen = (iter % 7 == 0) ? (size_t)((x >> 20) % len) : len; /* sometimes cut */
        fp = fopen(path, "wb");
        CHECK(fp != NULL);
        fwrite(buf, 1, flen, fp);
        fclose(fp);
        st_archive *ar = NULL;
        mls_status st = st_open_file(path, &ar, &err);
        if (st == MLS_OK) {
            for (size_t i = 0; i < st_count(ar); i++) {
                const st_tensor *t = st_at(ar, i);
                volatile uint8_t sink = 0;
                for (uint64_t b = 0; b < t->nbytes; b++) {
                    sink ^= ((const uint8_t *)t->data)[b]; /* inside the mapping (ASan) */
                }
                (void)sink;
            }
            st_close(ar);
            ok++;
        } else {
            CHECK_MSG(st == MLS_ERR_BAD_MODEL, "iteration %d: %s", iter, mls_status_name(st));
            CHECK_MSG(strstr(err.msg, path) == err.msg, "iteration %d: message '%s'", iter,
                      err.msg);
            bad++;
        }
    }
    fprintf(stderr, "  3000 mutations: %d opened, %d rejected\n", ok, bad);
    CHECK(bad > 1000);
}

int main(void)
{
    MLS_TEST_RUN(test_config_fixtures);
    MLS_TEST_RUN(test_safetensors_fixtures);
    MLS_TEST_RUN(test_writer_roundtrip);
    MLS_TEST_RUN(test_sharded);
    MLS_TEST_RUN(test_bad_files);
    MLS_TEST_RUN(test_config_errors);
    MLS_TEST_RUN(test_mutations);
    if (tmp_root[0] != 0) {
        lc_rmdir(tmp_root);
    }
    return MLS_TEST_DONE();
}
