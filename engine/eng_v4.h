/*
 * eng_v4.h - a DeepSeek-V4 checkpoint bound to its tensors (engine internal).
 *
 * eng_v4_model_load reads config.json (model_type deepseek_v4) and binds
 * every tensor the config implies by the public checkpoint's names
 * (README-v4 section 2: embed.weight, layers.L.attn.wq_a.weight,
 * layers.L.ffn.experts.E.w1.weight, layers.L.ffn.gate.tid2eid, hc_head_fn,
 * ...), checking each one's dtype and shape, the scales' dtype, shape and
 * values, and the hash-routing table, before anything runs: a malformed
 * checkpoint fails with the file and tensor named.
 *
 * Weights stay in the read-only mapping in their stored format
 * (eng_v4_weight; their GEMM views may be decoded copies); the small vectors (norms, sinks, router bias) are copied
 * to f32. The forward pass is eng_v4_forward.h's.
 */
#ifndef ENG_V4_H
#define ENG_V4_H

#include <stdint.h>

#include "eng_backend.h"
#include "eng_config.h"
#include "eng_safetensors.h"
#include "mls_status.h"

/* How a weight matrix is stored. */
typedef enum {
    ENG_V4_WFMT_BF16, /* data: bf16 (rows, cols) */
    ENG_V4_WFMT_F32,  /* data: f32 (rows, cols) */
    ENG_V4_WFMT_FP8,  /* data: e4m3 (rows, cols); scale: UE8M0 (ceil(rows/128), ceil(cols/128)) */
    ENG_V4_WFMT_FP4, /* data: e2m1 x2 (rows, cols/2), low nibble first; scale: UE8M0 (rows, cols/32)
                      */
} eng_v4_wfmt;

/* A weight [rows = out_features, cols = in_features], row-major, in place in
 * the checkpoint's mapping. eng_v4_weight_row (eng_v4_model.c) decodes a row.
 * lin is the same matrix as the backend table's GEMMs take it: F32 and FP8
 * in place (FP8 with its UE8M0 scales as f32 powers of two), BF16 (and an
 * FP8 wo_a) widened to f32 and FP4 decoded to BF16, in memory the model owns
 * (why: v4_weight_linear in eng_v4_model.c). */
typedef struct {
    eng_v4_wfmt fmt;
    int64_t rows, cols;
    const void *data;     /* into the mapping */
    const uint8_t *scale; /* FP8/FP4 only, into the mapping; else NULL */
    eng_linear lin;       /* (rows, cols) for eng_backend_ops.matmul */
} eng_v4_weight;

/* Row r of w as f32 (bit-exact decoding). */
void eng_v4_weight_row(const eng_v4_weight *w, int64_t r, float *out /* (w->cols) */);

/* A compressor (m the layer's ratio, c = 2 if m == 4 else 1, width d' = d or Id). */
typedef struct {
    const float *ape;    /* (m, c*d') f32, in the mapping */
    eng_v4_weight wkv;   /* (c*d', D) */
    eng_v4_weight wgate; /* (c*d', D) */
    float *norm;         /* (d') */
} eng_v4_compressor;

/* One expert's SwiGLU: w2(silu(w1 x) * w3 x). */
typedef struct {
    eng_v4_weight w1; /* (F, D) */
    eng_v4_weight w3; /* (F, D) */
    eng_v4_weight w2; /* (D, F) */
} eng_v4_expert;

/* The mHC mixing of one half-block (attention or FFN); M = (2+h)*h. */
typedef struct {
    const float *fn; /* (M, h*D) f32, in the mapping */
    float *base;     /* (M) */
    float *scale;    /* (3) pre, post, comb */
} eng_v4_hc;

typedef struct {
    int32_t ratio; /* m: 0 window only, 4 CSA, else HCA */
    eng_v4_hc hc_attn, hc_ffn;
    float *attn_norm; /* (D) */
    float *ffn_norm;  /* (D) */
    /* attention */
    float *attn_sink;             /* (H) */
    eng_v4_weight wq_a;           /* (Q, D) */
    float *q_norm;                /* (Q) */
    eng_v4_weight wq_b;           /* (H*d, Q) head-major, last r of each head rope */
    eng_v4_weight wkv;            /* (d, D) the shared K=V vector, last r rope */
    float *kv_norm;               /* (d) */
    eng_v4_weight wo_a;           /* (G*R, H*d/G) used as (G, R, H*d/G) */
    eng_v4_weight wo_b;           /* (D, G*R) */
    eng_v4_compressor compressor; /* ratio > 0 */
    /* the lightning indexer (ratio == 4) */
    eng_v4_weight idx_wq_b;           /* (IH*Id, Q) */
    eng_v4_weight idx_weights_proj;   /* (IH, D) */
    eng_v4_compressor idx_compressor; /* width Id, c = 2 */
    /* MoE */
    eng_v4_weight gate;     /* (E, D) */
    int32_t *tid2eid;       /* (V, k) hash layers (layer < num_hash_layers); else NULL */
    float *gate_bias;       /* (E) the other layers; else NULL */
    eng_v4_expert *experts; /* [E] */
    eng_v4_expert shared;   /* n_shared_experts == 1 */
} eng_v4_layer;

typedef struct eng_v4_model eng_v4_model;

struct eng_v4_model {
    eng_config cfg;        /* cfg.is_v4 */
    st_archive *archive;   /* owns the mapping the weights point into */
    const uint16_t *embed; /* (V, D) bf16 */
    eng_v4_weight head;    /* (V, D) */
    float *norm;           /* (D) */
    eng_v4_hc hc_head;     /* fn (h, h*D), base (h), scale (1) */
    eng_v4_layer *layers;  /* [num_hidden_layers] */
    uint64_t weight_bytes; /* bytes of the bound tensors */
    /* f32 copies this model owns (norms, sinks, bias, tid2eid), freed at destroy */
    void **owned;        /* [n_owned] */
    size_t *owned_bytes; /* [n_owned] */
    size_t n_owned, cap_owned;
};

/* Load and check <dir> (config.json + model.safetensors or a sharded index).
 * MLS_ERR_BAD_MODEL / MLS_ERR_UNSUPPORTED with "<file>: tensor '<name>': ..."
 * in *err; *model_p written only on success. */
mls_status eng_v4_model_load(const char *dir, eng_v4_model **model_p, mls_err *err);
void eng_v4_model_destroy(eng_v4_model *model); /* accepts NULL */

#endif
