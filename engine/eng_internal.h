/*
 * eng_internal.h - engine internals shared by eng_*.c (not part of the API).
 */
#ifndef ENG_INTERNAL_H
#define ENG_INTERNAL_H

#include <pthread.h>

#include "eng_backend.h"
#include "eng_route.h"
#include "eng_safetensors.h"
#include "engine.h"
#include "kc.h"

typedef struct {
    eng_linear gate;           /* (inter, hidden) */
    eng_linear up;             /* (inter, hidden) */
    eng_linear down;           /* (hidden, inter) */
} eng_mlp;

typedef struct {
    float *attn_norm;          /* (hidden) input_layernorm */
    float *ffn_norm;           /* (hidden) post_attention_layernorm */
    /* attention */
    eng_linear q;              /* (heads*(nope+rope), hidden)   q_lora_rank == 0 */
    eng_linear q_a;            /* (q_lora_rank, hidden)         q_lora_rank > 0 */
    float *q_a_norm;           /* (q_lora_rank) */
    eng_linear q_b;            /* (heads*(nope+rope), q_lora_rank) */
    eng_linear kv_a;           /* (kv_lora_rank+rope, hidden) */
    float *kv_a_norm;          /* (kv_lora_rank) */
    eng_linear kv_b;           /* (heads*(nope+v), kv_lora_rank); W_UK/W_UV views per head */
    eng_linear o;              /* (hidden, heads*v) */
    /* feed-forward: dense (mlp) or MoE (router + experts + shared) */
    bool is_moe;
    eng_mlp mlp;               /* dense layers */
    eng_linear router;         /* (n_routed_experts, hidden) */
    float *router_bias;        /* (n_routed_experts) e_score_correction_bias, or NULL */
    eng_mlp *experts;          /* [n_routed_experts] */
    eng_mlp shared;            /* n_shared_experts > 0 */
} eng_layer;

struct eng_model {
    eng_config cfg;
    st_archive *archive;       /* owns the mappings every kc_matrix points into */
    const uint16_t *embed;     /* (vocab, hidden) bf16 */
    st_dtype embed_dtype;
    eng_layer *layers;         /* [num_hidden_layers] */
    float *final_norm;         /* (hidden) */
    eng_linear lm_head;        /* (vocab, hidden) */
    float *inv_freq;           /* (rope/2) YaRN-adjusted rotary frequencies */
    float rope_mscale;         /* cos/sin factor (HF yarn: mscale/mscale_all_dim ratio) */
    float softmax_scale;       /* (nope+rope)^-0.5 * mscale^2 under YaRN */
    eng_route_params route;    /* the MoE router's parameters */
    uint64_t fingerprint;
    uint64_t weight_bytes;
    size_t small_bytes;        /* bytes of f32 norms/bias copies (MLS_ALLOC_TAG_WEIGHTS) */
    /* DeepSeek-V4 (cfg.is_v4): the model eng_v4_model.c bound, which owns the
     * archive; of the fields above only cfg, archive (borrowed), fingerprint
     * and weight_bytes are set. NULL for V2/V3. */
    struct eng_v4_model *v4;
};

struct eng_kv_pool {
    kvl_layout layout;
    int32_t n_layers;
    uint32_t n_pages;
    uint8_t **layer_base;      /* [n_layers] each n_pages * page_bytes */
    bool owns_memory;          /* false: layer memory belongs to the caller */
    const eng_backend_ops *mem; /* allocated layer memory (owns_memory) */
    eng_device device;         /* where layer memory lives */
    uint64_t layer_bytes;
    pthread_mutex_t lock;
    uint32_t *free_list;       /* [n_pages] stack of free page ids */
    uint32_t n_free;
};

/* The router's parameters of a config (derived once, at load). */
void eng_route_params_from_config(const eng_config *c, eng_route_params *p);

/* Rotary frequencies and softmax scale from the config (reference semantics). */
void eng_rope_init(const eng_config *cfg, float *inv_freq /* (rope/2) */, float *mscale_p,
                   float *softmax_scale_p);

/* Float32 copy of a small 1-D tensor (norm weights, bias) of any float dtype. */
void eng_tensor_to_f32(const st_tensor *t, float *out);

#endif
