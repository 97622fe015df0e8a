/*
 * loader_check.h - test helpers shared by test_loader and test_genmodel:
 * the expected tensor set of a DeepSeek-V2/V3 checkpoint, written down from
 * tests/fixtures/models/README.md section 2 (independently of the generator),
 * and small file utilities.
 */
#ifndef LOADER_CHECK_H
#define LOADER_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "eng_config.h"
#include "eng_safetensors.h"
#include "mls_num.h"

/* Expect `name` with shape [d0(, d1)], dtype `dt` (or F8_E4M3 + scale grid when fp8). */
static mls_status lc_expect(const st_archive *ar, st_dtype dt, bool fp8, int n_dims, int64_t d0,
                            int64_t d1, size_t *count, mls_err *err, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));

static mls_status lc_expect(const st_archive *ar, st_dtype dt, bool fp8, int n_dims, int64_t d0,
                            int64_t d1, size_t *count, mls_err *err, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    int64_t shape[2] = {d0, d1};
    st_dtype want = fp8 ? ST_DTYPE_F8_E4M3 : dt;
    mls_status st = st_expect(ar, name, &want, 1, n_dims, shape, NULL, err);
    if (st != MLS_OK) {
        return st;
    }
    (*count)++;
    if (fp8) {
        char sname[300];
        int64_t sshape[2] = {(d0 + 127) / 128, (d1 + 127) / 128};
        st_dtype f32 = ST_DTYPE_F32;
        snprintf(sname, sizeof(sname), "%s_scale_inv", name);
        st = st_expect(ar, sname, &f32, 1, 2, sshape, NULL, err);
        (*count)++;
    }
    return st;
}

#define LC_TRY(expr)                                                                               \
    do {                                                                                           \
        mls_status st_ = (expr);                                                                   \
        if (st_ != MLS_OK) {                                                                       \
            return st_;                                                                            \
        }                                                                                          \
    } while (0)

/* Every tensor the README lists for `c`, with dtypes and shapes, and nothing else. */
static mls_status lc_check_model(const st_archive *ar, const eng_config *c, mls_err *err)
{
    const int64_t H = c->hidden_size, heads = c->num_attention_heads;
    const int64_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    const bool q8 = c->fp8;
    const st_dtype B = ST_DTYPE_BF16;
    size_t n = 0;
    LC_TRY(lc_expect(ar, B, false, 2, c->vocab_size, H, &n, err, "model.embed_tokens.weight"));
    LC_TRY(lc_expect(ar, B, false, 1, H, 0, &n, err, "model.norm.weight"));
    LC_TRY(lc_expect(ar, B, false, 2, c->vocab_size, H, &n, err, "lm_head.weight"));
    for (int L = 0; L < c->num_hidden_layers; L++) {
        const char *p = "model.layers";
        LC_TRY(lc_expect(ar, B, false, 1, H, 0, &n, err, "%s.%d.input_layernorm.weight", p, L));
        LC_TRY(lc_expect(ar, B, false, 1, H, 0, &n, err, "%s.%d.post_attention_layernorm.weight", p,
                         L));
        if (c->q_lora_rank > 0) {
            LC_TRY(lc_expect(ar, B, q8, 2, c->q_lora_rank, H, &n, err,
                             "%s.%d.self_attn.q_a_proj.weight", p, L));
            LC_TRY(lc_expect(ar, B, false, 1, c->q_lora_rank, 0, &n, err,
                             "%s.%d.self_attn.q_a_layernorm.weight", p, L));
            LC_TRY(lc_expect(ar, B, q8, 2, heads * qk, c->q_lora_rank, &n, err,
                             "%s.%d.self_attn.q_b_proj.weight", p, L));
        } else {
            LC_TRY(lc_expect(ar, B, q8, 2, heads * qk, H, &n, err, "%s.%d.self_attn.q_proj.weight",
                             p, L));
        }
        LC_TRY(lc_expect(ar, B, q8, 2, c->kv_lora_rank + c->qk_rope_head_dim, H, &n, err,
                         "%s.%d.self_attn.kv_a_proj_with_mqa.weight", p, L));
        LC_TRY(lc_expect(ar, B, false, 1, c->kv_lora_rank, 0, &n, err,
                         "%s.%d.self_attn.kv_a_layernorm.weight", p, L));
        LC_TRY(lc_expect(ar, B, q8, 2, heads * (c->qk_nope_head_dim + c->v_head_dim),
                         c->kv_lora_rank, &n, err, "%s.%d.self_attn.kv_b_proj.weight", p, L));
        LC_TRY(lc_expect(ar, B, q8, 2, H, heads * c->v_head_dim, &n, err,
                         "%s.%d.self_attn.o_proj.weight", p, L));
        bool moe =
            c->n_routed_experts > 0 && L >= c->first_k_dense_replace && L % c->moe_layer_freq == 0;
        if (!moe) {
            int64_t I = c->intermediate_size;
            LC_TRY(lc_expect(ar, B, q8, 2, I, H, &n, err, "%s.%d.mlp.gate_proj.weight", p, L));
            LC_TRY(lc_expect(ar, B, q8, 2, I, H, &n, err, "%s.%d.mlp.up_proj.weight", p, L));
            LC_TRY(lc_expect(ar, B, q8, 2, H, I, &n, err, "%s.%d.mlp.down_proj.weight", p, L));
            continue;
        }
        int64_t E = c->n_routed_experts, M = c->moe_intermediate_size;
        LC_TRY(lc_expect(ar, B, false, 2, E, H, &n, err, "%s.%d.mlp.gate.weight", p, L));
        if (c->topk_method == ENG_TOPK_NOAUX_TC) {
            LC_TRY(lc_expect(ar, ST_DTYPE_F32, false, 1, E, 0, &n, err,
                             "%s.%d.mlp.gate.e_score_correction_bias", p, L));
        }
        for (int e = 0; e < E; e++) {
            LC_TRY(lc_expect(ar, B, q8, 2, M, H, &n, err, "%s.%d.mlp.experts.%d.gate_proj.weight",
                             p, L, e));
            LC_TRY(lc_expect(ar, B, q8, 2, M, H, &n, err, "%s.%d.mlp.experts.%d.up_proj.weight", p,
                             L, e));
            LC_TRY(lc_expect(ar, B, q8, 2, H, M, &n, err, "%s.%d.mlp.experts.%d.down_proj.weight",
                             p, L, e));
        }
        if (c->n_shared_experts > 0) {
            int64_t S = M * c->n_shared_experts;
            LC_TRY(lc_expect(ar, B, q8, 2, S, H, &n, err,
                             "%s.%d.mlp.shared_experts.gate_proj.weight", p, L));
            LC_TRY(lc_expect(ar, B, q8, 2, S, H, &n, err, "%s.%d.mlp.shared_experts.up_proj.weight",
                             p, L));
            LC_TRY(lc_expect(ar, B, q8, 2, H, S, &n, err,
                             "%s.%d.mlp.shared_experts.down_proj.weight", p, L));
        }
    }
    if (n != st_count(ar)) {
        mls_err_set(err, "checkpoint has %zu tensors, the config implies %zu", st_count(ar), n);
        return MLS_ERR_BAD_MODEL;
    }
    return MLS_OK;
}

static inline float lc_bf16(const st_tensor *t, size_t i)
{
    uint16_t h;
    memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
    return mls_bf16_to_f32(h);
}

static inline float lc_f32(const st_tensor *t, size_t i)
{
    float f;
    memcpy(&f, (const uint8_t *)t->data + 4 * i, 4);
    return f;
}

static inline size_t lc_numel(const st_tensor *t)
{
    size_t n = 1;
    for (int i = 0; i < t->n_dims; i++) {
        n *= (size_t)t->shape[i];
    }
    return n;
}

/* rm -rf for the flat temp dirs the tests make (files only, one level). */
#include <dirent.h>
#include <unistd.h>
static void lc_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *de;
        char path[4096];
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
                unlink(path);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

#endif
