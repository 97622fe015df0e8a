/*
 * eng_v4_ops.h - DeepSeek-V4's numeric building blocks (CPU reference ops).
 *
 * The pieces of V4's forward pass that the reference (DeepSeek's
 * inference/model.py + kernel.py, README-v4 sections 4-5) defines exactly:
 *
 *   - minifloat codecs: e4m3 (float8_e4m3fn), e2m1 (FP4), UE8M0 scales;
 *   - the activation quantizers, bit for bit as the reference rounds: FP8 e4m3
 *     in blocks of 64 or 128 and FP4 e2m1 in blocks of 32, each with one
 *     power-of-two (UE8M0) scale per block;
 *   - weight decoding: FP8 with 128x128 UE8M0 block scales, FP4 packed two
 *     per byte with per-32 UE8M0 scales;
 *   - the Sylvester Hadamard transform, the mHC split (pre/post/Sinkhorn
 *     comb), the rotary frequencies (YaRN with compress_rope_theta on
 *     compressed layers) and sparse attention with an attention sink.
 *
 * All in fp32, single-threaded, no allocation: they are the oracle the fast
 * kernels will be checked against, and tests/engine/test_v4_ops.c checks them
 * against tests/fixtures/models/tiny-v4/ops.safetensors.
 */
#ifndef ENG_V4_OPS_H
#define ENG_V4_OPS_H

#include <stdbool.h>
#include <stdint.h>

#define ENG_V4_FP8_MAX       448.0f /* largest e4m3 magnitude */
#define ENG_V4_FP4_MAX       6.0f   /* largest e2m1 magnitude */
#define ENG_V4_FP4_BLOCK     32     /* FP4 values per UE8M0 scale (activations and weights) */
#define ENG_V4_KV_FP8_BLOCK  64     /* KV nope dims: FP8 values per scale */
#define ENG_V4_ACT_FP8_BLOCK 128    /* GEMM inputs of the FP8 model: FP8 values per scale */
#define ENG_V4_W_BLOCK       128    /* FP8 weights: 128x128 values per scale */
#define ENG_V4_UE8M0_BIAS    127

/* ---- codecs ------------------------------------------------------------- */

/* Value of an e4m3fn code (0x7F/0xFF: NaN). */
float eng_v4_e4m3_decode(uint8_t code);
/* Value of an e2m1 nibble (bits 0-3; bit 3 is the sign). */
float eng_v4_e2m1_decode(uint8_t nibble);
/* 2^(code-127); NaN for 0xFF. */
float eng_v4_ue8m0_decode(uint8_t code);

/* The e4m3 code nearest to v (|v| <= 448, not NaN), ties to the even
 * mantissa; subnormal quantum 2^-9. */
uint8_t eng_v4_e4m3_encode(float v);
/* The e2m1 nibble nearest to v (|v| <= 6), ties to the even code. */
uint8_t eng_v4_e2m1_encode(float v);

/* ---- activation quantizers (README-v4 section 4, bit-exact) -------------
 *
 * Per block of n values: amax = max(max|x|, floor); t = fp32(amax * fp32(1/max));
 * scale = 2^e with e = ceil(log2 t) taken from t's bits; code = RNE(clamp(x/scale)).
 * floor: FP8 1e-4, FP4 6*2^-126. */

/* One FP8 block: codes[n] and the scale's exponent e (scale 2^e, UE8M0 code
 * e + 127). */
void eng_v4_fp8_block_encode(const float *x /* (n) */, int32_t n, uint8_t *codes /* (n) */,
                             int32_t *exp_p);
/* One FP4 block: nibbles[n] (one per byte, unpacked) and the scale exponent. */
void eng_v4_fp4_block_encode(const float *x /* (n) */, int32_t n, uint8_t *nibbles /* (n) */,
                             int32_t *exp_p);

/* Quantize-dequantize x (n values, n a multiple of block) in place of y:
 * y = code * scale per block. scale_p (n/block), if not NULL, receives the
 * scales. x and y may be the same array. */
void eng_v4_fp8_qdq(const float *x /* (n) */, int32_t n, int32_t block, float *y /* (n) */,
                    float *scale_p /* (n/block) or NULL */);
void eng_v4_fp4_qdq(const float *x /* (n) */, int32_t n, float *y /* (n) */,
                    float *scale_p /* (n/32) or NULL */);

/* ---- weight decoding (bit-exact) ---------------------------------------- */

/* Row r of an FP8 weight [rows, cols] (e4m3 codes, row-major) with UE8M0
 * block scales [ceil(rows/128), ceil(cols/128)]: out[c] = e4m3(code[r][c]) *
 * scale[r/128][c/128]. */
void eng_v4_fp8_weight_row(const uint8_t *codes /* (rows, cols) */,
                           const uint8_t *scales /* (ceil(rows/128), ceil(cols/128)) */,
                           int64_t cols, int64_t r, float *out /* (cols) */);
/* Row r of an FP4 weight [rows, cols] packed two per byte [rows, cols/2]
 * (element 2i in the low nibble of byte i) with UE8M0 scales [rows, cols/32]. */
void eng_v4_fp4_weight_row(const uint8_t *packed /* (rows, cols/2) */,
                           const uint8_t *scales /* (rows, cols/32) */, int64_t cols, int64_t r,
                           float *out /* (cols) */);

/* ---- transforms ---------------------------------------------------------- */

/* x = H x * n^-0.5 in place, H the Sylvester (natural-order) Hadamard matrix
 * of order n (a power of two). */
void eng_v4_hadamard(float *x /* (n) */, int32_t n);

/* The mHC split of one token (h = hc_mult copies, M = (2+h)*h mixes):
 * pre = sigmoid(mix[0:h]*scale[0] + base[0:h]) + eps;
 * post = 2*sigmoid(mix[h:2h]*scale[1] + base[h:2h]);
 * comb = softmax over k of (mix[2h:]*scale[2] + base[2h:]) as [j][k], + eps,
 * then column, then iters-1 times (row, column) Sinkhorn normalisation. */
void eng_v4_hc_split(const float *mix /* (M) */, const float *scale /* (3) */,
                     const float *base /* (M) */, int32_t h, int32_t iters, float eps,
                     float *pre /* (h) */, float *post /* (h) */, float *comb /* (h, h) */);

/* Rotary frequencies f[r/2] (README-v4 section 4): theta^(-2i/r), with YaRN
 * (factor, original_len, beta_fast, beta_slow) when yarn is true. */
typedef struct {
    int32_t rope_dim; /* r (even) */
    float theta;      /* rope_theta, or compress_rope_theta on compressed layers */
    bool yarn;        /* compressed layers with original_len > 0 */
    float factor;
    int64_t original_len;
    float beta_fast;
    float beta_slow;
} eng_v4_rope_params;

void eng_v4_rope_freqs(const eng_v4_rope_params *p, float *freqs /* (r/2) */);
/* cos and sin of the fp32 angle t*f_i. */
void eng_v4_rope_cos_sin(const float *freqs /* (r/2) */, int32_t rope_dim, int64_t t,
                         float *cos_out /* (r/2) */, float *sin_out /* (r/2) */);
/* Rotate the interleaved pairs of x (r values) by angle t*f (inverse: -t*f). */
void eng_v4_rope_apply(const float *freqs /* (r/2) */, int32_t rope_dim, int64_t t, bool inverse,
                       float *x /* (r) */);

/* ---- attention ----------------------------------------------------------- */

/* Sparse attention with a sink for T queries of H heads over the shared K=V
 * rows kv[n_kv, d]: query t attends to the rows idx[t*k .. t*k+k) (-1 = skip);
 * s_j = q.kv_j * scale; out = sum_j exp(s_j - M) kv_j / (sum_j exp(s_j - M) +
 * exp(sink_h - M)), M the largest score. A query with no row gives 0. */
void eng_v4_sparse_attn(const float *q /* (T, H, d) */, const float *kv /* (n_kv, d) */,
                        const int32_t *idx /* (T, k) */, const float *sink /* (H) */, int32_t T,
                        int32_t H, int32_t d, int32_t n_kv, int32_t k, float scale,
                        float *out /* (T, H, d) */);

#endif
