/*
 * cmd_genmodel.c - `mlaserve genmodel`: write a random-weight DeepSeek-V2/V3
 * checkpoint in Hugging Face layout (config.json + safetensors, sharded with an
 * index when large), in real shapes, for tests and benchmarks without the real
 * weights. The presets' shapes are constants in gm_presets.c.
 *
 * Weights follow the recipe of tests/fixtures/models/README.md: normal with std
 * gain/sqrt(fan_in) (gain 1.5 for q, kv_a, kv_b and the router, 2.5 for lm_head,
 * else 1.0), embedding std 1, norms 1 + 0.1 N, router bias 0.05 N. Linear
 * weights are BF16, or block-fp8 (F8_E4M3 codes + F32 weight_scale_inv per
 * 128x128 block, scale_inv = amax/448, round to nearest even) for --dtype fp8.
 *
 * Every tensor draws from its own xoshiro256** stream seeded by (seed, name), so
 * the bytes of a tensor do not depend on sharding or on the other tensors.
 * Tensors are generated and streamed one at a time through bounded buffers.
 *
 * With --tokenizer-corpus (and by default for --preset demo) a byte-level BPE
 * tokenizer in the DeepSeek chat format is trained on the given text
 * (tools/bpe_train.h) and written beside the weights; the model's vocab_size
 * becomes the tokenizer's, bos 0 and eos 1.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bpe_train.h"
#include "eng_config.h"
#include "eng_safetensors.h"
#include "gm_presets.h"
#include "mls_buf.h"
#include "mls_cli.h"
#include "mls_num.h"
#include "mls_rng.h"

#define GM_CHUNK ((size_t)1 << 20) /* elements generated per step */

/* ------------------------------------------------------------ random numbers */

typedef mls_rng gm_rng;

/* One stream per tensor: seeded by (seed, FNV-1a of the tensor's name). */
static void gm_rng_seed(gm_rng *r, uint64_t seed, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h = (h ^ *p) * 0x100000001b3ull;
    }
    mls_rng_seed(r, seed ^ h);
}

/*
 * out[i] = mean + std * z, z ~ N(0,1) approximated by the sum of four 16-bit
 * uniforms (Irwin-Hall, exact mean 0 and variance 1, |z| <= 3.46): one PRNG
 * call per value and no transcendental functions.
 */
static void gm_fill_normal(gm_rng *r, float *out, size_t n, float mean, float std)
{
    const double half = 2.0 * 65535.0;
    const double inv_sd = 1.0 / sqrt(4.0 * (65536.0 * 65536.0 - 1.0) / 12.0);
    const float a = (float)(std * inv_sd), b = (float)(mean - std * half * inv_sd);
    for (size_t i = 0; i < n; i++) {
        uint64_t x = mls_rng_next(r);
        uint32_t s = (uint32_t)(x & 0xffff) + (uint32_t)((x >> 16) & 0xffff) +
                     (uint32_t)((x >> 32) & 0xffff) + (uint32_t)(x >> 48);
        out[i] = (float)s * a + b;
    }
}

/* ----------------------------------------------------------- fp8 quantizer */

/*
 * mls_f32_to_fp8_e4m3 through two tables indexed by the top 16 bits of the
 * f32 (sign, exponent, 7 mantissa bits). Every e4m3 rounding midpoint has at
 * most 5 significant bits, so it is one of the "low 16 bits zero" points: a
 * value whose low 16 bits are non-zero rounds like any other value strictly
 * between its two neighbouring points, e.g. hi<<16 | 1. The tables are filled
 * with the reference function itself, so the result is identical to calling
 * it per value (round to nearest even, saturating), only ~10x faster.
 */
static uint8_t gm_fp8_exact[65536]; /* low 16 bits zero */
static uint8_t gm_fp8_above[65536]; /* low 16 bits non-zero */
static bool gm_fp8_ready;

static void gm_fp8_tables_init(void)
{
    if (gm_fp8_ready) {
        return;
    }
    for (uint32_t hi = 0; hi < 65536; hi++) {
        uint32_t u0 = hi << 16, u1 = u0 | 1u;
        float f0, f1;
        memcpy(&f0, &u0, 4);
        memcpy(&f1, &u1, 4);
        gm_fp8_exact[hi] = mls_f32_to_fp8_e4m3(f0);
        gm_fp8_above[hi] = mls_f32_to_fp8_e4m3(f1);
    }
    gm_fp8_ready = true;
}

static inline uint8_t gm_fp8_quantize(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (u & 0xffffu) ? gm_fp8_above[u >> 16] : gm_fp8_exact[u >> 16];
}

/* ---------------------------------------------------------------- the model */

typedef enum {
    GM_INIT_LINEAR, /* gain / sqrt(fan_in) */
    GM_INIT_EMBED,  /* std 1 */
    GM_INIT_NORM,   /* 1 + 0.1 N */
    GM_INIT_BIAS,   /* 0.05 N */
    GM_INIT_SCALE,  /* the weight_scale_inv of the tensor before it */
} gm_init;

typedef struct {
    char name[128];
    st_dtype dtype;
    int n_dims;
    int64_t shape[2];
    gm_init init;
    float gain;
    int shard;
} gm_tensor;

typedef struct {
    gm_tensor *t; /* (cap) n in data order; a scale_inv directly follows its weight;
                     counted under MISC */
    size_t n, cap;
} gm_list;

typedef struct {
    const char *out;
    const char *preset;
    eng_config cfg;
    bool fp8;
    uint64_t seed;
    uint64_t max_shard_bytes;
    bool force;
    bool tokenizer;         /* train and write a tokenizer */
    const char *tok_corpus; /* comma-separated files; NULL: bpe_demo_corpus */
    int tok_vocab;          /* 0: the model's vocab_size */
} gm_opts;

static int gm_list_add(gm_list *l, const char *name, st_dtype dtype, int n_dims, int64_t d0,
                       int64_t d1, gm_init init, float gain)
{
    if (l->n == l->cap && mls_array_reserve(&l->t, &l->cap, l->cap ? l->n + 1 : 256, sizeof(*l->t),
                                            MLS_ALLOC_TAG_MISC) != MLS_OK) {
        return -1;
    }
    gm_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->dtype = dtype;
    t->n_dims = n_dims;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->init = init;
    t->gain = gain;
    return 0;
}

/* A linear weight [out, in]: BF16, or F8_E4M3 + its F32 scale grid when quantized. */
static int gm_linear(gm_list *l, bool fp8, const char *name, int64_t out, int64_t in, float gain)
{
    if (!fp8) {
        return gm_list_add(l, name, ST_DTYPE_BF16, 2, out, in, GM_INIT_LINEAR, gain);
    }
    char scale[128];
    snprintf(scale, sizeof(scale), "%s_scale_inv", name);
    if (gm_list_add(l, name, ST_DTYPE_F8_E4M3, 2, out, in, GM_INIT_LINEAR, gain) != 0) {
        return -1;
    }
    return gm_list_add(l, scale, ST_DTYPE_F32, 2, (out + GM_BLOCK - 1) / GM_BLOCK,
                       (in + GM_BLOCK - 1) / GM_BLOCK, GM_INIT_SCALE, 0);
}

static int gm_mlp(gm_list *l, bool fp8, const char *prefix, int64_t hidden, int64_t inter)
{
    char n[96];
    int rc = 0;
    snprintf(n, sizeof(n), "%s.gate_proj.weight", prefix);
    rc |= gm_linear(l, fp8, n, inter, hidden, 1.0f);
    snprintf(n, sizeof(n), "%s.up_proj.weight", prefix);
    rc |= gm_linear(l, fp8, n, inter, hidden, 1.0f);
    snprintf(n, sizeof(n), "%s.down_proj.weight", prefix);
    rc |= gm_linear(l, fp8, n, hidden, inter, 1.0f);
    return rc;
}

/* Every tensor of the model, in HF order, the fixture README's names and shapes. */
static int gm_build_list(const eng_config *c, bool fp8, gm_list *l)
{
    const int64_t H = c->hidden_size, heads = c->num_attention_heads;
    const int64_t qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    char n[96], p[32];
    int rc = 0;

    rc |= gm_list_add(l, "model.embed_tokens.weight", ST_DTYPE_BF16, 2, c->vocab_size, H,
                      GM_INIT_EMBED, 1.0f);
    for (int L = 0; L < c->num_hidden_layers && rc == 0; L++) {
        snprintf(p, sizeof(p), "model.layers.%d", L);
        snprintf(n, sizeof(n), "%s.input_layernorm.weight", p);
        rc |= gm_list_add(l, n, ST_DTYPE_BF16, 1, H, 0, GM_INIT_NORM, 0);
        if (c->q_lora_rank > 0) {
            snprintf(n, sizeof(n), "%s.self_attn.q_a_proj.weight", p);
            rc |= gm_linear(l, fp8, n, c->q_lora_rank, H, 1.5f);
            snprintf(n, sizeof(n), "%s.self_attn.q_a_layernorm.weight", p);
            rc |= gm_list_add(l, n, ST_DTYPE_BF16, 1, c->q_lora_rank, 0, GM_INIT_NORM, 0);
            snprintf(n, sizeof(n), "%s.self_attn.q_b_proj.weight", p);
            rc |= gm_linear(l, fp8, n, heads * qk, c->q_lora_rank, 1.5f);
        } else {
            snprintf(n, sizeof(n), "%s.self_attn.q_proj.weight", p);
            rc |= gm_linear(l, fp8, n, heads * qk, H, 1.5f);
        }
        snprintf(n, sizeof(n), "%s.self_attn.kv_a_proj_with_mqa.weight", p);
        rc |= gm_linear(l, fp8, n, c->kv_lora_rank + c->qk_rope_head_dim, H, 1.5f);
        snprintf(n, sizeof(n), "%s.self_attn.kv_a_layernorm.weight", p);
        rc |= gm_list_add(l, n, ST_DTYPE_BF16, 1, c->kv_lora_rank, 0, GM_INIT_NORM, 0);
        snprintf(n, sizeof(n), "%s.self_attn.kv_b_proj.weight", p);
        rc |= gm_linear(l, fp8, n, heads * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
                        1.5f);
        snprintf(n, sizeof(n), "%s.self_attn.o_proj.weight", p);
        rc |= gm_linear(l, fp8, n, H, heads * c->v_head_dim, 1.0f);
        snprintf(n, sizeof(n), "%s.post_attention_layernorm.weight", p);
        rc |= gm_list_add(l, n, ST_DTYPE_BF16, 1, H, 0, GM_INIT_NORM, 0);
        if (!eng_config_layer_is_moe(c, L)) {
            snprintf(n, sizeof(n), "%s.mlp", p);
            rc |= gm_mlp(l, fp8, n, H, c->intermediate_size);
            continue;
        }
        snprintf(n, sizeof(n), "%s.mlp.gate.weight", p);
        rc |= gm_list_add(l, n, ST_DTYPE_BF16, 2, c->n_routed_experts, H, GM_INIT_LINEAR, 1.5f);
        if (c->topk_method == ENG_TOPK_NOAUX_TC) {
            snprintf(n, sizeof(n), "%s.mlp.gate.e_score_correction_bias", p);
            rc |= gm_list_add(l, n, ST_DTYPE_F32, 1, c->n_routed_experts, 0, GM_INIT_BIAS, 0);
        }
        for (int e = 0; e < c->n_routed_experts; e++) {
            snprintf(n, sizeof(n), "%s.mlp.experts.%d", p, e);
            rc |= gm_mlp(l, fp8, n, H, c->moe_intermediate_size);
        }
        if (c->n_shared_experts > 0) {
            snprintf(n, sizeof(n), "%s.mlp.shared_experts", p);
            rc |= gm_mlp(l, fp8, n, H, (int64_t)c->moe_intermediate_size * c->n_shared_experts);
        }
    }
    rc |= gm_list_add(l, "model.norm.weight", ST_DTYPE_BF16, 1, H, 0, GM_INIT_NORM, 0);
    rc |=
        gm_list_add(l, "lm_head.weight", ST_DTYPE_BF16, 2, c->vocab_size, H, GM_INIT_LINEAR, 2.5f);
    return rc;
}

static uint64_t gm_numel(const gm_tensor *t)
{
    uint64_t n = 1;
    for (int i = 0; i < t->n_dims; i++) {
        n *= (uint64_t)t->shape[i];
    }
    return n;
}

static uint64_t gm_nbytes(const gm_tensor *t)
{
    return gm_numel(t) * st_dtype_size(t->dtype);
}

/* --experts: keep top-k, groups and group top-k consistent with fewer experts. */
static void gm_set_experts(eng_config *c, int n)
{
    int g = c->n_group < n ? c->n_group : n;
    while (n % g != 0) {
        g--;
    }
    c->n_routed_experts = n;
    c->n_group = g;
    if (c->num_experts_per_tok > n) {
        c->num_experts_per_tok = n;
    }
    if (c->topk_group > g) {
        c->topk_group = g;
    }
    int per_group = n / g;
    if (c->topk_method != ENG_TOPK_GREEDY && c->num_experts_per_tok > c->topk_group * per_group) {
        c->topk_group = (c->num_experts_per_tok + per_group - 1) / per_group;
    }
}

/* ------------------------------------------------------------- config.json */

/* Shortest decimal that reads back as the same float, always with a '.' or 'e'. */
static void gm_json_float(FILE *fp, float v)
{
    char buf[40];
    if (v == truncf(v) && fabsf(v) < 1e15f) {
        fprintf(fp, "%.1f", (double)v); /* 10000.0, 40.0 */
        return;
    }
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) {
            break;
        }
    }
    fputs(buf, fp);
    if (strpbrk(buf, ".en") == NULL) {
        fputs(".0", fp);
    }
}

static void gm_json_key_float(FILE *fp, const char *indent, const char *key, float v,
                              const char *sep)
{
    fprintf(fp, "%s\"%s\": ", indent, key);
    gm_json_float(fp, v);
    fputs(sep, fp);
}

static const char *gm_topk_name(eng_topk_method m)
{
    return m == ENG_TOPK_NOAUX_TC               ? "noaux_tc"
           : m == ENG_TOPK_GROUP_LIMITED_GREEDY ? "group_limited_greedy"
                                                : "greedy";
}

/* config.json text for c (the keys and order of the fixtures); malloc'ed. */
static char *gm_config_json(const eng_config *c, bool fp8, size_t *len_p)
{
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    if (fp == NULL) {
        return NULL;
    }
    bool v3 = strcmp(c->model_type, "deepseek_v3") == 0;
    fprintf(fp, "{\n  \"architectures\": [\n    \"%s\"\n  ],\n",
            v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM");
    fprintf(fp, "  \"model_type\": \"%s\",\n", c->model_type);
    fprintf(fp, "  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n"
                "  \"aux_loss_alpha\": 0.001,\n");
    fprintf(fp, "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n", c->bos_token_id,
            c->eos_token_id);
    fprintf(fp, "  \"hidden_act\": \"silu\",\n  \"initializer_range\": 0.02,\n");
    fprintf(fp, "  \"moe_layer_freq\": %d,\n  \"pretraining_tp\": 1,\n", c->moe_layer_freq);
    gm_json_key_float(fp, "  ", "rms_norm_eps", c->rms_norm_eps, ",\n");
    gm_json_key_float(fp, "  ", "rope_theta", c->rope_theta, ",\n");
    fprintf(fp, "  \"seq_aux\": true,\n  \"tie_word_embeddings\": %s,\n",
            c->tie_word_embeddings ? "true" : "false");
    fprintf(fp, "  \"torch_dtype\": \"bfloat16\",\n  \"transformers_version\": \"4.46.3\",\n"
                "  \"use_cache\": true,\n");
    if (v3) {
        fprintf(fp, "  \"ep_size\": 1,\n  \"num_nextn_predict_layers\": 0,\n");
    }
    fprintf(fp, "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n", c->hidden_size,
            c->intermediate_size);
    fprintf(fp, "  \"moe_intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n",
            c->moe_intermediate_size, c->num_hidden_layers);
    fprintf(fp, "  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n",
            c->num_attention_heads, c->num_attention_heads);
    fprintf(fp, "  \"n_routed_experts\": %d,\n  \"n_shared_experts\": %d,\n", c->n_routed_experts,
            c->n_shared_experts);
    fprintf(fp, "  \"num_experts_per_tok\": %d,\n  \"n_group\": %d,\n  \"topk_group\": %d,\n",
            c->num_experts_per_tok, c->n_group, c->topk_group);
    fprintf(fp, "  \"topk_method\": \"%s\",\n  \"scoring_func\": \"%s\",\n",
            gm_topk_name(c->topk_method),
            c->scoring_func == ENG_SCORE_SIGMOID ? "sigmoid" : "softmax");
    fprintf(fp, "  \"norm_topk_prob\": %s,\n", c->norm_topk_prob ? "true" : "false");
    gm_json_key_float(fp, "  ", "routed_scaling_factor", c->routed_scaling_factor, ",\n");
    fprintf(fp, "  \"first_k_dense_replace\": %d,\n", c->first_k_dense_replace);
    if (c->q_lora_rank > 0) {
        fprintf(fp, "  \"q_lora_rank\": %d,\n", c->q_lora_rank);
    } else {
        fprintf(fp, "  \"q_lora_rank\": null,\n");
    }
    fprintf(fp, "  \"kv_lora_rank\": %d,\n  \"qk_nope_head_dim\": %d,\n", c->kv_lora_rank,
            c->qk_nope_head_dim);
    fprintf(fp, "  \"qk_rope_head_dim\": %d,\n  \"v_head_dim\": %d,\n", c->qk_rope_head_dim,
            c->v_head_dim);
    if (c->rope_yarn) {
        fprintf(fp, "  \"rope_scaling\": {\n    \"type\": \"yarn\",\n");
        gm_json_key_float(fp, "    ", "factor", c->rope_factor, ",\n");
        fprintf(fp, "    \"original_max_position_embeddings\": %" PRId64 ",\n",
                c->rope_original_max_position_embeddings);
        gm_json_key_float(fp, "    ", "beta_fast", c->rope_beta_fast, ",\n");
        gm_json_key_float(fp, "    ", "beta_slow", c->rope_beta_slow, ",\n");
        gm_json_key_float(fp, "    ", "mscale", c->rope_mscale, ",\n");
        gm_json_key_float(fp, "    ", "mscale_all_dim", c->rope_mscale_all_dim, "\n");
        fprintf(fp, "  },\n");
    } else {
        fprintf(fp, "  \"rope_scaling\": null,\n");
    }
    fprintf(fp, "  \"max_position_embeddings\": %" PRId64 ",\n", c->max_position_embeddings);
    fprintf(fp, "  \"vocab_size\": %d%s\n", c->vocab_size, fp8 ? "," : "");
    if (fp8) {
        fprintf(fp,
                "  \"quantization_config\": {\n    \"activation_scheme\": \"dynamic\",\n"
                "    \"fmt\": \"e4m3\",\n    \"quant_method\": \"fp8\",\n"
                "    \"weight_block_size\": [\n      %d,\n      %d\n    ]\n  }\n",
                GM_BLOCK, GM_BLOCK);
    }
    fprintf(fp, "}\n");
    if (fclose(fp) != 0) {
        free(text);
        return NULL;
    }
    *len_p = len;
    return text;
}

/* Write `len` bytes to path atomically (tmp + rename). */
static int gm_write_text(const char *path, const char *text, size_t len)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    FILE *fp = fopen(tmp, "wb");
    if (fp == NULL) {
        fprintf(stderr, "genmodel: cannot create %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    bool ok = fwrite(text, 1, len, fp) == len;
    ok &= fclose(fp) == 0;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "genmodel: cannot write %s: %s\n", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ writing */

/* The buffers grow through gm_reserve (caps in bytes, counted under SCRATCH)
 * and are given back by gm_state_free. */
typedef struct {
    float *f; /* (GM_CHUNK or GM_BLOCK*in) generated values */
    size_t f_cap;
    uint8_t *bytes; /* converted output */
    size_t bytes_cap;
    float *scales; /* (scales_n) the last fp8 weight's scale grid */
    size_t scales_n, scales_cap;
    uint64_t done, total; /* bytes, for progress */
    double t_start, t_last;
    bool tty;
} gm_state;

/* Room for need bytes in *buf_p (*cap_p bytes now); 0, or -1 out of memory. */
static int gm_reserve(void *buf_p, size_t *cap_p, size_t need)
{
    return mls_array_reserve(buf_p, cap_p, need, 1, MLS_ALLOC_TAG_SCRATCH) == MLS_OK ? 0 : -1;
}

static void gm_state_free(gm_state *s)
{
    mls_array_free(&s->f, &s->f_cap, 1, MLS_ALLOC_TAG_SCRATCH);
    mls_array_free(&s->bytes, &s->bytes_cap, 1, MLS_ALLOC_TAG_SCRATCH);
    mls_array_free(&s->scales, &s->scales_cap, 1, MLS_ALLOC_TAG_SCRATCH);
}

static void gm_progress(gm_state *s, bool final)
{
    if (!s->tty) {
        return;
    }
    double now = mls_now_s();
    if (!final && now - s->t_last < 0.2) {
        return;
    }
    s->t_last = now;
    double el = now - s->t_start;
    fprintf(stderr, "\rgenmodel: %.2f / %.2f GB (%3.0f%%) %.0f MB/s   ", (double)s->done / 1e9,
            (double)s->total / 1e9, s->total ? 100.0 * (double)s->done / (double)s->total : 100.0,
            el > 0 ? (double)s->done / el / 1e6 : 0.0);
    if (final) {
        fputc('\n', stderr);
    }
}

static mls_status gm_emit(gm_state *s, st_writer *w, const void *data, size_t n, mls_err *err)
{
    mls_status st = st_writer_write(w, data, n, err);
    s->done += n;
    gm_progress(s, false);
    return st;
}

static void gm_init_params(const gm_tensor *t, float *mean_p, float *std_p)
{
    switch (t->init) {
    case GM_INIT_EMBED:
        *mean_p = 0.0f, *std_p = 1.0f;
        break;
    case GM_INIT_NORM:
        *mean_p = 1.0f, *std_p = 0.1f;
        break;
    case GM_INIT_BIAS:
        *mean_p = 0.0f, *std_p = 0.05f;
        break;
    default:
        *mean_p = 0.0f, *std_p = t->gain / sqrtf((float)t->shape[t->n_dims - 1]);
        break;
    }
}

/* BF16 / F32 tensors: generate and convert GM_CHUNK values at a time. */
static mls_status gm_write_plain(gm_state *s, st_writer *w, const gm_tensor *t, gm_rng *r,
                                 mls_err *err)
{
    float mean, std;
    gm_init_params(t, &mean, &std);
    uint64_t left = gm_numel(t);
    while (left > 0) {
        size_t n = left < GM_CHUNK ? (size_t)left : GM_CHUNK;
        gm_fill_normal(r, s->f, n, mean, std);
        mls_status st;
        if (t->dtype == ST_DTYPE_F32) {
            st = gm_emit(s, w, s->f, n * 4, err);
        } else {
            uint16_t *h = (uint16_t *)s->bytes;
            for (size_t i = 0; i < n; i++) {
                h[i] = mls_f32_to_bf16(s->f[i]);
            }
            st = gm_emit(s, w, h, n * 2, err);
        }
        if (st != MLS_OK) {
            return st;
        }
        left -= n;
    }
    return MLS_OK;
}

/* F8_E4M3 weight [out, in]: one band of GM_BLOCK rows at a time; scales kept for the next tensor.
 */
static mls_status gm_write_fp8(gm_state *s, st_writer *w, const gm_tensor *t, gm_rng *r,
                               mls_err *err)
{
    float mean, std;
    gm_init_params(t, &mean, &std);
    const size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    const size_t cb = (cols + GM_BLOCK - 1) / GM_BLOCK, rb = (rows + GM_BLOCK - 1) / GM_BLOCK;
    if (gm_reserve(&s->f, &s->f_cap, GM_BLOCK * cols * sizeof(float)) != 0 ||
        gm_reserve(&s->bytes, &s->bytes_cap, GM_BLOCK * cols) != 0 ||
        gm_reserve(&s->scales, &s->scales_cap, rb * cb * sizeof(float)) != 0) {
        mls_err_set(err, "genmodel: out of memory for tensor '%s'", t->name);
        return MLS_ERR_NO_MEMORY;
    }
    s->scales_n = rb * cb;
    for (size_t b = 0; b < rb; b++) {
        size_t r0 = b * GM_BLOCK, nr = rows - r0 < GM_BLOCK ? rows - r0 : GM_BLOCK;
        gm_fill_normal(r, s->f, nr * cols, mean, std);
        for (size_t c = 0; c < cb; c++) {
            size_t c0 = c * GM_BLOCK, nc = cols - c0 < GM_BLOCK ? cols - c0 : GM_BLOCK;
            float amax = 0.0f;
            for (size_t i = 0; i < nr; i++) {
                const float *row = s->f + i * cols + c0;
                for (size_t j = 0; j < nc; j++) {
                    amax = fmaxf(amax, fabsf(row[j]));
                }
            }
            float scale_inv = amax > 0.0f ? amax / MLS_FP8_E4M3_MAX : 1.0f;
            s->scales[b * cb + c] = scale_inv;
            for (size_t i = 0; i < nr; i++) {
                const float *row = s->f + i * cols + c0;
                uint8_t *out = s->bytes + i * cols + c0;
                for (size_t j = 0; j < nc; j++) {
                    out[j] = gm_fp8_quantize(row[j] / scale_inv);
                }
            }
        }
        mls_status st = gm_emit(s, w, s->bytes, nr * cols, err);
        if (st != MLS_OK) {
            return st;
        }
    }
    return MLS_OK;
}

static mls_status gm_write_tensor(gm_state *s, st_writer *w, const gm_tensor *t, uint64_t seed,
                                  mls_err *err)
{
    if (t->init == GM_INIT_SCALE) {
        if (s->scales_n != gm_numel(t)) {
            mls_err_set(err, "genmodel: tensor '%s' does not follow its weight", t->name);
            return MLS_ERR_INTERNAL;
        }
        s->scales_n = 0;
        return gm_emit(s, w, s->scales, gm_numel(t) * sizeof(float), err);
    }
    gm_rng r;
    gm_rng_seed(&r, seed, t->name);
    return t->dtype == ST_DTYPE_F8_E4M3 ? gm_write_fp8(s, w, t, &r, err)
                                        : gm_write_plain(s, w, t, &r, err);
}

/* Write shard `shard` (tensors with t->shard == shard) to path. */
static mls_status gm_write_shard(gm_state *s, const gm_list *l, int shard, const char *path,
                                 uint64_t seed, mls_err *err)
{
    st_writer *w = NULL;
    mls_status st = st_writer_create(path, &w, err);
    if (st != MLS_OK) {
        return st;
    }
    for (size_t i = 0; i < l->n && st == MLS_OK; i++) {
        const gm_tensor *t = &l->t[i];
        if (t->shard == shard) {
            st = st_writer_declare(w, t->name, t->dtype, t->n_dims, t->shape, err);
        }
    }
    for (size_t i = 0; i < l->n && st == MLS_OK; i++) {
        if (l->t[i].shard == shard) {
            st = gm_write_tensor(s, w, &l->t[i], seed, err);
        }
    }
    if (st != MLS_OK) {
        st_writer_abort(w);
        return st;
    }
    return st_writer_finish(w, err);
}

/* Assign shards: greedy in data order, a weight and its scale_inv together. */
static int gm_assign_shards(gm_list *l, uint64_t max_bytes)
{
    int shard = 0;
    uint64_t cur = 0;
    for (size_t i = 0; i < l->n; i++) {
        uint64_t unit = gm_nbytes(&l->t[i]);
        bool with_scale = i + 1 < l->n && l->t[i + 1].init == GM_INIT_SCALE;
        if (with_scale) {
            unit += gm_nbytes(&l->t[i + 1]);
        }
        if (cur > 0 && cur + unit > max_bytes) {
            shard++;
            cur = 0;
        }
        cur += unit;
        l->t[i].shard = shard;
        if (with_scale) {
            l->t[++i].shard = shard;
        }
    }
    return shard + 1;
}

static void gm_shard_name(char *buf, size_t len, int shard, int n_shards)
{
    if (n_shards == 1) {
        snprintf(buf, len, "model.safetensors");
    } else {
        snprintf(buf, len, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
    }
}

static int gm_tensor_name_cmp(const void *a, const void *b)
{
    return strcmp((*(const gm_tensor *const *)a)->name, (*(const gm_tensor *const *)b)->name);
}

static int gm_write_index(const char *dir, const gm_list *l, int n_shards, uint64_t total)
{
    const gm_tensor **sorted = malloc(l->n * sizeof(*sorted));
    char *text = NULL;
    size_t len = 0;
    FILE *fp = sorted != NULL ? open_memstream(&text, &len) : NULL;
    if (fp == NULL) {
        free(sorted);
        fprintf(stderr, "genmodel: out of memory for the index\n");
        return -1;
    }
    for (size_t i = 0; i < l->n; i++) {
        sorted[i] = &l->t[i];
    }
    qsort(sorted, l->n, sizeof(*sorted), gm_tensor_name_cmp);
    fprintf(fp,
            "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {\n",
            total);
    for (size_t i = 0; i < l->n; i++) {
        char shard[64];
        gm_shard_name(shard, sizeof(shard), sorted[i]->shard, n_shards);
        fprintf(fp, "    \"%s\": \"%s\"%s\n", sorted[i]->name, shard, i + 1 < l->n ? "," : "");
    }
    fprintf(fp, "  }\n}\n");
    free(sorted);
    if (fclose(fp) != 0) {
        free(text);
        fprintf(stderr, "genmodel: out of memory for the index\n");
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    int rc = gm_write_text(path, text, len);
    free(text);
    return rc;
}

/* ------------------------------------------------------------ the directory */

static bool gm_is_output_file(const char *name, bool tokenizer)
{
    int a, b, n = 0;
    if (strcmp(name, "config.json") == 0 || strcmp(name, "model.safetensors") == 0 ||
        strcmp(name, "model.safetensors.index.json") == 0) {
        return true;
    }
    if (tokenizer &&
        (strcmp(name, "tokenizer.json") == 0 || strcmp(name, "tokenizer_config.json") == 0)) {
        return true;
    }
    return sscanf(name, "model-%5d-of-%5d.safetensors%n", &a, &b, &n) == 2 && name[n] == '\0';
}

/* mkdir -p dir; refuse (or with force, remove) an earlier checkpoint there (and an
 * earlier tokenizer when one is to be written). */
static int gm_prepare_dir(const char *dir, bool force, bool tokenizer)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(path, 0777) != 0 && errno != EEXIST) {
                fprintf(stderr, "genmodel: cannot create %s: %s\n", path, strerror(errno));
                return -1;
            }
            *p = '/';
        }
    }
    if (mkdir(path, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "genmodel: cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "genmodel: cannot open %s: %s\n", dir, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!gm_is_output_file(de->d_name, tokenizer)) {
            continue;
        }
        if (!force) {
            fprintf(stderr, "genmodel: %s/%s exists (use --force to replace the checkpoint)\n", dir,
                    de->d_name);
            rc = -1;
            break;
        }
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (unlink(path) != 0) {
            fprintf(stderr, "genmodel: cannot remove %s: %s\n", path, strerror(errno));
            rc = -1;
            break;
        }
    }
    closedir(d);
    return rc;
}

/* ------------------------------------------------------------------ the CLI */

static void gm_usage(FILE *out)
{
    fprintf(out,
            "usage: mlaserve genmodel --out DIR [options]\n"
            "Write a random-weight DeepSeek-V2/V3 checkpoint (config.json + safetensors).\n\n"
            "  --out DIR              output directory (created if missing)\n"
            "  --preset NAME          tiny (default) | demo | deepseek-v2-lite | deepseek-v3\n"
            "                         (demo: a small V2-shaped MoE that also trains its\n"
            "                         tokenizer on /usr/share/common-licenses texts)\n"
            "  --layers N             num_hidden_layers (first_k_dense_replace kept < N)\n"
            "  --experts N            n_routed_experts (top-k and groups clamped to fit)\n"
            "  --vocab N              vocab_size\n"
            "  --dtype bf16|fp8       linear weights BF16, or block-fp8 e4m3 + scale_inv\n"
            "                         (default: fp8 for deepseek-v3, else bf16)\n"
            "  --seed S               PRNG seed (default 1)\n"
            "  --max-shard-bytes B    shard above this many bytes (K/M/G suffixes; default 4G)\n"
            "  --force                replace an existing checkpoint in DIR\n"
            "  --tokenizer-corpus F[,F...]  train a byte-level BPE tokenizer (DeepSeek chat\n"
            "                         format) on these UTF-8 files; writes tokenizer.json and\n"
            "                         tokenizer_config.json and sets vocab_size to its size\n"
            "  --tokenizer-vocab N    tokenizer ids incl. 13 added tokens (default: --vocab)\n"
            "  --no-tokenizer         do not train one (for --preset demo)\n");
}

static bool gm_parse_u64(const char *s, uint64_t *v_p, bool suffixes)
{
    char *end;
    errno = 0;
    if (s[0] == '-' || s[0] == '\0') {
        return false;
    }
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || end == s) {
        return false;
    }
    uint64_t mul = 1;
    if (suffixes && *end) {
        switch (*end++) {
        case 'k':
        case 'K':
            mul = 1ull << 10;
            break;
        case 'm':
        case 'M':
            mul = 1ull << 20;
            break;
        case 'g':
        case 'G':
            mul = 1ull << 30;
            break;
        case 't':
        case 'T':
            mul = 1ull << 40;
            break;
        default:
            return false;
        }
        if (*end == 'i') {
            end++;
        }
        if (*end == 'B' || *end == 'b') {
            end++;
        }
    }
    if (*end != '\0' || (mul > 1 && v > UINT64_MAX / mul)) {
        return false;
    }
    *v_p = (uint64_t)v * mul;
    return true;
}

static bool gm_parse_int(const char *s, int min, int max, int *v_p)
{
    uint64_t v;
    if (!gm_parse_u64(s, &v, false) || v < (uint64_t)min || v > (uint64_t)max) {
        return false;
    }
    *v_p = (int)v;
    return true;
}

/* Returns 0 ok, 1 --help printed, 2 usage error. */
static int gm_parse_args(int argc, char **argv, gm_opts *o)
{
    const char *preset = "tiny", *dtype = NULL;
    int layers = 0, experts = 0, vocab = 0;
    bool no_tokenizer = false;
    memset(o, 0, sizeof(*o));
    o->seed = 1;
    o->max_shard_bytes = 4ull << 30;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char key[64];
        const char *eq = strchr(a, '=');
        if (eq != NULL && (size_t)(eq - a) < sizeof(key)) {
            memcpy(key, a, (size_t)(eq - a));
            key[eq - a] = 0;
            val = eq + 1;
        } else {
            snprintf(key, sizeof(key), "%s", a);
        }
        if (strcmp(key, "--help") == 0 || strcmp(key, "-h") == 0) {
            gm_usage(stdout);
            return 1;
        }
        if (strcmp(key, "--force") == 0 && val == NULL) {
            o->force = true;
            continue;
        }
        if (strcmp(key, "--no-tokenizer") == 0 && val == NULL) {
            no_tokenizer = true;
            continue;
        }
        bool known = strcmp(key, "--out") == 0 || strcmp(key, "--preset") == 0 ||
                     strcmp(key, "--layers") == 0 || strcmp(key, "--experts") == 0 ||
                     strcmp(key, "--vocab") == 0 || strcmp(key, "--dtype") == 0 ||
                     strcmp(key, "--seed") == 0 || strcmp(key, "--max-shard-bytes") == 0 ||
                     strcmp(key, "--tokenizer-corpus") == 0 ||
                     strcmp(key, "--tokenizer-vocab") == 0;
        if (!known) {
            fprintf(stderr, "genmodel: unknown option '%s'\n", a);
            return 2;
        }
        if (val == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "genmodel: %s needs a value\n", key);
                return 2;
            }
            val = argv[++i];
        }
        bool ok = true;
        if (strcmp(key, "--out") == 0) {
            o->out = val;
            ok = val[0] != '\0';
        } else if (strcmp(key, "--preset") == 0) {
            preset = val;
        } else if (strcmp(key, "--layers") == 0) {
            ok = gm_parse_int(val, 1, 100000, &layers);
        } else if (strcmp(key, "--experts") == 0) {
            ok = gm_parse_int(val, 1, 1 << 20, &experts);
        } else if (strcmp(key, "--vocab") == 0) {
            ok = gm_parse_int(val, 2, INT32_MAX, &vocab);
        } else if (strcmp(key, "--dtype") == 0) {
            dtype = val;
            ok = strcmp(val, "bf16") == 0 || strcmp(val, "fp8") == 0;
        } else if (strcmp(key, "--seed") == 0) {
            ok = gm_parse_u64(val, &o->seed, false);
        } else if (strcmp(key, "--tokenizer-corpus") == 0) {
            o->tok_corpus = val;
            ok = val[0] != '\0';
        } else if (strcmp(key, "--tokenizer-vocab") == 0) {
            ok = gm_parse_int(val, 1, INT32_MAX, &o->tok_vocab);
        } else {
            ok = gm_parse_u64(val, &o->max_shard_bytes, true) && o->max_shard_bytes > 0;
        }
        if (!ok) {
            fprintf(stderr, "genmodel: bad value '%s' for %s\n", val, key);
            return 2;
        }
    }
    if (o->out == NULL) {
        fprintf(stderr, "genmodel: --out DIR is required\n");
        gm_usage(stderr);
        return 2;
    }
    const gm_preset *p = gm_preset_find(preset);
    if (p == NULL) {
        fprintf(stderr,
                "genmodel: unknown preset '%s' (tiny, demo, deepseek-v2-lite, deepseek-v3)\n",
                preset);
        return 2;
    }
    if (p->cfg.is_v4) {
        fprintf(stderr,
                "genmodel: preset '%s' is a DeepSeek-V4 shape; this genmodel writes only "
                "DeepSeek-V2/V3 checkpoints (kv-size reads the preset)\n",
                preset);
        return 2;
    }
    o->cfg = p->cfg;
    o->fp8 = p->fp8;
    o->preset = preset;
    if (dtype != NULL) {
        o->fp8 = strcmp(dtype, "fp8") == 0;
    }
    eng_config *c = &o->cfg;
    if (layers > 0) {
        c->num_hidden_layers = layers;
        if (c->first_k_dense_replace >= layers) {
            c->first_k_dense_replace = layers - 1;
        }
    }
    if (experts > 0) {
        gm_set_experts(c, experts);
    }
    if (vocab > 0) {
        c->vocab_size = vocab;
        if (c->bos_token_id >= vocab || c->eos_token_id >= vocab) {
            c->bos_token_id = 0;
            c->eos_token_id = 1;
        }
    }
    c->fp8 = o->fp8;
    o->tokenizer = !no_tokenizer && (o->tok_corpus != NULL || strcmp(preset, "demo") == 0);
    if (no_tokenizer && (o->tok_corpus != NULL || o->tok_vocab > 0)) {
        fprintf(stderr, "genmodel: --no-tokenizer conflicts with --tokenizer-corpus/-vocab\n");
        return 2;
    }
    if (!o->tokenizer && o->tok_vocab > 0) {
        fprintf(stderr, "genmodel: --tokenizer-vocab needs --tokenizer-corpus\n");
        return 2;
    }
    if (o->tokenizer && o->tok_vocab == 0) {
        o->tok_vocab = c->vocab_size;
    }
    return 0;
}

/* The corpus files: --tokenizer-corpus split at commas, or those of bpe_demo_corpus
 * that exist. *list_p (malloc'ed, strings point into *buf_p) and *buf_p are the
 * caller's to free; -1 with a message when there is none. */
static int gm_corpus_list(const gm_opts *o, const char ***list_p, size_t *n_p, char **buf_p)
{
    size_t n = 0, cap = bpe_demo_corpus_n + 1;
    char *buf = NULL;
    if (o->tok_corpus != NULL) {
        buf = strdup(o->tok_corpus);
        if (buf == NULL) {
            fprintf(stderr, "genmodel: out of memory\n");
            return -1;
        }
        for (const char *p = buf; *p; p++) {
            cap += *p == ',';
        }
    }
    const char **list = malloc(cap * sizeof(*list));
    if (list == NULL) {
        free(buf);
        fprintf(stderr, "genmodel: out of memory\n");
        return -1;
    }
    if (buf != NULL) {
        for (char *save = NULL, *f = strtok_r(buf, ",", &save); f != NULL;
             f = strtok_r(NULL, ",", &save)) {
            list[n++] = f;
        }
    } else {
        for (size_t i = 0; i < bpe_demo_corpus_n; i++) {
            if (access(bpe_demo_corpus[i], R_OK) == 0) {
                list[n++] = bpe_demo_corpus[i];
            }
        }
    }
    if (n == 0) {
        if (buf != NULL) {
            fprintf(stderr, "genmodel: --tokenizer-corpus names no file\n");
        } else {
            fprintf(stderr,
                    "genmodel: no default tokenizer corpus: none of /usr/share/common-licenses/"
                    "{GPL-3,Apache-2.0,Artistic,GPL-2,LGPL-2.1,MPL-2.0} is readable (Debian's "
                    "base-files); give --tokenizer-corpus FILE[,FILE...] or --no-tokenizer\n");
        }
        free(list);
        free(buf);
        return -1;
    }
    *list_p = list;
    *n_p = n;
    *buf_p = buf;
    return 0;
}

/* Trains the tokenizer of o; on success *tr_p holds it and c's vocab is its size. */
static int gm_train_tokenizer(const gm_opts *o, eng_config *c, bpe_trainer **tr_p)
{
    const char **files = NULL;
    size_t n = 0;
    char *buf = NULL;
    bpe_trainer *tr = NULL;
    mls_err err = {{0}};
    if (gm_corpus_list(o, &files, &n, &buf) != 0) {
        return -1;
    }
    bpe_params p = {
        .vocab_size = o->tok_vocab,
        .added = bpe_deepseek_added,
        .n_added = bpe_deepseek_n_added,
        .min_pair_count = 1,
    };
    mls_status st = bpe_trainer_create(&p, &tr, &err);
    for (size_t i = 0; i < n && st == MLS_OK; i++) {
        st = bpe_trainer_feed_file(tr, files[i], &err);
    }
    if (st == MLS_OK) {
        st = bpe_trainer_run(tr, &err);
    }
    free(files);
    free(buf);
    if (st != MLS_OK) {
        fprintf(stderr, "genmodel: tokenizer: %s\n", err.msg);
        bpe_trainer_destroy(tr);
        return -1;
    }
    c->vocab_size = bpe_trainer_vocab_size(tr);
    c->bos_token_id = BPE_DEEPSEEK_BOS_ID;
    c->eos_token_id = BPE_DEEPSEEK_EOS_ID;
    *tr_p = tr;
    return 0;
}

static int gm_write_tokenizer(const gm_opts *o, const bpe_trainer *tr, const eng_config *c)
{
    char path[4096];
    mls_err err = {{0}};
    snprintf(path, sizeof(path), "%s/tokenizer.json", o->out);
    mls_status st = bpe_trainer_write_json(tr, path, &err);
    if (st == MLS_OK) {
        snprintf(path, sizeof(path), "%s/tokenizer_config.json", o->out);
        st = bpe_write_deepseek_config(path, c->max_position_embeddings, &err);
    }
    if (st != MLS_OK) {
        fprintf(stderr, "genmodel: %s\n", err.msg);
        return -1;
    }
    return 0;
}

int mls_cmd_genmodel(int argc, char **argv)
{
    gm_opts o;
    gm_list list = {0};
    gm_state s = {0};
    bpe_trainer *tok = NULL;
    char *cfg_text = NULL;
    size_t cfg_len = 0;
    int rc = 1;
    mls_err err = {{0}};
    eng_config check;

    int prc = gm_parse_args(argc, argv, &o);
    if (prc != 0) {
        return prc == 1 ? 0 : 2;
    }
    if (o.tokenizer && gm_train_tokenizer(&o, &o.cfg, &tok) != 0) {
        goto out_free_all;
    }
    /* The config must read back through the engine's own parser. */
    cfg_text = gm_config_json(&o.cfg, o.fp8, &cfg_len);
    if (cfg_text == NULL) {
        fprintf(stderr, "genmodel: out of memory\n");
        goto out_free_all;
    }
    if (eng_config_parse(cfg_text, cfg_len, "generated config.json", &check, &err) != MLS_OK) {
        fprintf(stderr, "genmodel: %s\n", err.msg);
        goto out_free_all;
    }
    if (gm_build_list(&check, o.fp8, &list) != 0) {
        fprintf(stderr, "genmodel: out of memory for the tensor list\n");
        goto out_free_all;
    }
    if (gm_prepare_dir(o.out, o.force, o.tokenizer) != 0) {
        goto out_free_all;
    }
    if (tok != NULL && gm_write_tokenizer(&o, tok, &check) != 0) {
        goto out_free_all;
    }
    int n_shards = gm_assign_shards(&list, o.max_shard_bytes);
    uint64_t params = 0;
    for (size_t i = 0; i < list.n; i++) {
        s.total += gm_nbytes(&list.t[i]);
        params += list.t[i].init == GM_INIT_SCALE ? 0 : gm_numel(&list.t[i]);
    }
    if (gm_reserve(&s.f, &s.f_cap, GM_CHUNK * sizeof(float)) != 0 ||
        gm_reserve(&s.bytes, &s.bytes_cap, GM_CHUNK * sizeof(uint16_t)) != 0) {
        fprintf(stderr, "genmodel: out of memory\n");
        goto out_free_all;
    }
    gm_fp8_tables_init();
    s.tty = isatty(STDERR_FILENO);
    s.t_start = s.t_last = mls_now_s();
    for (int k = 0; k < n_shards; k++) {
        char name[64], path[4096];
        gm_shard_name(name, sizeof(name), k, n_shards);
        snprintf(path, sizeof(path), "%s/%s", o.out, name);
        if (gm_write_shard(&s, &list, k, path, o.seed, &err) != MLS_OK) {
            if (s.tty) {
                fputc('\n', stderr);
            }
            fprintf(stderr, "genmodel: %s\n", err.msg);
            goto out_free_all;
        }
    }
    gm_progress(&s, true);
    if (n_shards > 1 && gm_write_index(o.out, &list, n_shards, s.total) != 0) {
        goto out_free_all;
    }
    char cfg_path[4096];
    snprintf(cfg_path, sizeof(cfg_path), "%s/config.json", o.out);
    if (gm_write_text(cfg_path, cfg_text, cfg_len) != 0) {
        goto out_free_all;
    }
    double secs = mls_now_s() - s.t_start;
    char tok_note[160] = "";
    if (tok != NULL) {
        bpe_stats bs;
        bpe_trainer_stats(tok, &bs);
        snprintf(tok_note, sizeof(tok_note),
                 "; tokenizer %d ids trained on %" PRIu64 " bytes in %.2f s (%.2f bytes/token)",
                 (int)bs.vocab_size, bs.bytes, bs.seconds,
                 bs.tokens ? (double)bs.bytes / (double)bs.tokens : 0.0);
    }
    printf("genmodel: %s (%s, %d layers, %d experts, %s, vocab %d): %" PRIu64 " params, %" PRIu64
           " bytes in %d file%s, %.2f s (%.0f MB/s)%s\n",
           o.out, o.preset, check.num_hidden_layers, check.n_routed_experts, o.fp8 ? "fp8" : "bf16",
           check.vocab_size, params, s.total, n_shards, n_shards == 1 ? "" : "s", secs,
           secs > 0 ? (double)s.total / secs / 1e6 : 0.0, tok_note);
    fflush(stdout);
    rc = 0;

out_free_all:
    bpe_trainer_destroy(tok);
    gm_state_free(&s);
    mls_array_free(&list.t, &list.cap, sizeof(*list.t), MLS_ALLOC_TAG_MISC);
    free(cfg_text);
    return rc;
}
