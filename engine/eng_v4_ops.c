/*
 * eng_v4_ops.c - DeepSeek-V4's numeric building blocks (see eng_v4_ops.h).
 *
 * The quantizers follow the reference's act_quant / fp4_act_quant (kernel.py
 * at 553034d, README-v4 section 4) operation for operation: the scale comes
 * from the bits of fp32(amax * fp32(1/max)), division by a power of two is
 * exact, and rounding to the minifloat grid is round-to-nearest-even on the
 * grid's integer multiples (rintf under the default rounding mode), which is
 * what a ties-to-even cast to float8_e4m3fn / e2m1 does.
 */
#include "eng_v4_ops.h"

#include <assert.h>
#include <math.h>
#include <string.h>

/* ---- codecs ------------------------------------------------------------- */

float eng_v4_e4m3_decode(uint8_t code)
{
    int exp = (code >> 3) & 0xf, mant = code & 7;
    float v;

    if (exp == 0xf && mant == 7) {
        return NAN;
    }
    v = exp == 0 ? ldexpf((float)mant, -9) : ldexpf((float)(8 + mant), exp - 10);
    return (code & 0x80) ? -v : v;
}

float eng_v4_e2m1_decode(uint8_t nibble)
{
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = mag[nibble & 7];
    return (nibble & 8) ? -v : v;
}

float eng_v4_ue8m0_decode(uint8_t code)
{
    return code == 0xff ? NAN : ldexpf(1.0f, (int)code - ENG_V4_UE8M0_BIAS);
}

/*
 * |v| rounded to nearest-even on a minifloat grid with `mant_bits` mantissa
 * bits whose smallest normal is 2^min_exp (subnormal quantum
 * 2^(min_exp - mant_bits)). Returns the integer multiple m of the quantum
 * 2^*qexp_p (m even on a tie).
 */
static int32_t v4_grid_round(float a, int mant_bits, int min_exp, int *qexp_p)
{
    int e;
    (void)frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1): a's binade is 2^(e-1) */
    int qexp = (a == 0.0f || e - 1 < min_exp) ? min_exp - mant_bits : e - 1 - mant_bits;
    *qexp_p = qexp;
    return (int32_t)rintf(ldexpf(a, -qexp)); /* exact scaling, then ties to even */
}

uint8_t eng_v4_e4m3_encode(float v)
{
    uint8_t sign = signbit(v) ? 0x80 : 0;
    int qexp;
    int32_t m = v4_grid_round(fabsf(v), 3, -6, &qexp);

    assert(fabsf(v) <= ENG_V4_FP8_MAX);
    if (qexp == -9) {
        /* subnormal quantum: m in 0..8; m == 8 is the smallest normal, code 0x08 */
        return (uint8_t)(sign | m);
    }
    if (m == 16) { /* rounded up into the next binade */
        m = 8;
        qexp++;
    }
    /* value m * 2^qexp, m in 8..15: exponent field qexp + 3 + 7 */
    return (uint8_t)(sign | ((qexp + 10) << 3) | (m - 8));
}

uint8_t eng_v4_e2m1_encode(float v)
{
    uint8_t sign = signbit(v) ? 8 : 0;
    int qexp;
    int32_t m = v4_grid_round(fabsf(v), 1, 0, &qexp);

    assert(fabsf(v) <= ENG_V4_FP4_MAX);
    if (qexp == -1) {
        return (uint8_t)(sign | m); /* 0, 0.5, and 1.0 (m == 2, code 2) */
    }
    if (m == 4) {
        m = 2;
        qexp++;
    }
    /* value m * 2^qexp, m in 2..3: exponent field qexp + 1 + 1 */
    return (uint8_t)(sign | ((qexp + 2) << 1) | (m - 2));
}

/* ---- activation quantizers ---------------------------------------------- */

/* ceil(log2 t) from t's fp32 bits, as the reference: exponent - 127 + (mantissa != 0). */
static int32_t v4_ceil_log2_bits(float t)
{
    uint32_t bits;
    memcpy(&bits, &t, sizeof(bits));
    return (int32_t)((bits >> 23) & 0xff) - 127 + ((bits & 0x7fffffu) != 0);
}

/* Scale exponent of a block: amax floored, times fp32(1/max), ceil log2. */
static int32_t v4_block_exp(const float *x, int32_t n, float floor_amax, float inv_max)
{
    float amax = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        amax = fmaxf(amax, fabsf(x[i]));
    }
    amax = fmaxf(amax, floor_amax);
    return v4_ceil_log2_bits(amax * inv_max);
}

static float v4_clamp(float v, float lim)
{
    return fminf(fmaxf(v, -lim), lim);
}

void eng_v4_fp8_block_encode(const float *x, int32_t n, uint8_t *codes, int32_t *exp_p)
{
    int32_t e = v4_block_exp(x, n, 1e-4f, 1.0f / ENG_V4_FP8_MAX);

    for (int32_t i = 0; i < n; i++) {
        codes[i] = eng_v4_e4m3_encode(v4_clamp(ldexpf(x[i], -e), ENG_V4_FP8_MAX));
    }
    *exp_p = e;
}

void eng_v4_fp4_block_encode(const float *x, int32_t n, uint8_t *nibbles, int32_t *exp_p)
{
    int32_t e = v4_block_exp(x, n, ENG_V4_FP4_MAX * 0x1p-126f, 1.0f / ENG_V4_FP4_MAX);

    for (int32_t i = 0; i < n; i++) {
        nibbles[i] = eng_v4_e2m1_encode(v4_clamp(ldexpf(x[i], -e), ENG_V4_FP4_MAX));
    }
    *exp_p = e;
}

void eng_v4_fp8_qdq(const float *x, int32_t n, int32_t block, float *y, float *scale_p)
{
    uint8_t codes[ENG_V4_ACT_FP8_BLOCK];

    assert(block > 0 && block <= ENG_V4_ACT_FP8_BLOCK && n % block == 0);
    for (int32_t b = 0; b < n / block; b++) {
        int32_t e;
        eng_v4_fp8_block_encode(x + b * block, block, codes, &e);
        for (int32_t i = 0; i < block; i++) {
            y[b * block + i] = ldexpf(eng_v4_e4m3_decode(codes[i]), e);
        }
        if (scale_p != NULL) {
            scale_p[b] = ldexpf(1.0f, e);
        }
    }
}

void eng_v4_fp4_qdq(const float *x, int32_t n, float *y, float *scale_p)
{
    uint8_t nib[ENG_V4_FP4_BLOCK];

    assert(n % ENG_V4_FP4_BLOCK == 0);
    for (int32_t b = 0; b < n / ENG_V4_FP4_BLOCK; b++) {
        int32_t e;
        eng_v4_fp4_block_encode(x + b * ENG_V4_FP4_BLOCK, ENG_V4_FP4_BLOCK, nib, &e);
        for (int32_t i = 0; i < ENG_V4_FP4_BLOCK; i++) {
            y[b * ENG_V4_FP4_BLOCK + i] = ldexpf(eng_v4_e2m1_decode(nib[i]), e);
        }
        if (scale_p != NULL) {
            scale_p[b] = ldexpf(1.0f, e);
        }
    }
}

/* ---- weight decoding ----------------------------------------------------- */

void eng_v4_fp8_weight_row(const uint8_t *codes, const uint8_t *scales, int64_t cols, int64_t r,
                           float *out)
{
    int64_t scale_cols = (cols + ENG_V4_W_BLOCK - 1) / ENG_V4_W_BLOCK;
    const uint8_t *row = codes + r * cols;
    const uint8_t *srow = scales + (r / ENG_V4_W_BLOCK) * scale_cols;

    for (int64_t c = 0; c < cols; c++) {
        out[c] = eng_v4_e4m3_decode(row[c]) * eng_v4_ue8m0_decode(srow[c / ENG_V4_W_BLOCK]);
    }
}

void eng_v4_fp4_weight_row(const uint8_t *packed, const uint8_t *scales, int64_t cols, int64_t r,
                           float *out)
{
    const uint8_t *row = packed + r * (cols / 2);
    const uint8_t *srow = scales + r * (cols / ENG_V4_FP4_BLOCK);

    for (int64_t c = 0; c < cols; c++) {
        uint8_t nib = (c & 1) ? (uint8_t)(row[c / 2] >> 4) : (uint8_t)(row[c / 2] & 0xf);
        out[c] = eng_v4_e2m1_decode(nib) * eng_v4_ue8m0_decode(srow[c / ENG_V4_FP4_BLOCK]);
    }
}

/* ---- transforms ---------------------------------------------------------- */

void eng_v4_hadamard(float *x, int32_t n)
{
    assert(n > 0 && (n & (n - 1)) == 0);
    for (int32_t h = 1; h < n; h *= 2) {
        for (int32_t i = 0; i < n; i += 2 * h) {
            for (int32_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
    float s = 1.0f / sqrtf((float)n);
    for (int32_t i = 0; i < n; i++) {
        x[i] *= s;
    }
}

static float v4_sigmoid(float v)
{
    return 1.0f / (1.0f + expf(-v));
}

void eng_v4_hc_split(const float *mix, const float *scale, const float *base, int32_t h,
                     int32_t iters, float eps, float *pre, float *post, float *comb)
{
    for (int32_t i = 0; i < h; i++) {
        pre[i] = v4_sigmoid(mix[i] * scale[0] + base[i]) + eps;
        post[i] = 2.0f * v4_sigmoid(mix[h + i] * scale[1] + base[h + i]);
    }
    /* comb[j][k] = softmax over k, + eps */
    for (int32_t j = 0; j < h; j++) {
        float *row = comb + j * h, mx = -INFINITY, sum = 0.0f;
        for (int32_t k = 0; k < h; k++) {
            row[k] = mix[2 * h + j * h + k] * scale[2] + base[2 * h + j * h + k];
            mx = fmaxf(mx, row[k]);
        }
        for (int32_t k = 0; k < h; k++) {
            row[k] = expf(row[k] - mx);
            sum += row[k];
        }
        for (int32_t k = 0; k < h; k++) {
            row[k] = row[k] / sum + eps;
        }
    }
    /* first a column normalisation, then iters-1 rounds of (row, column) */
    for (int32_t it = 0; it < iters; it++) {
        if (it > 0) {
            for (int32_t j = 0; j < h; j++) {
                float sum = 0.0f;
                for (int32_t k = 0; k < h; k++) {
                    sum += comb[j * h + k];
                }
                for (int32_t k = 0; k < h; k++) {
                    comb[j * h + k] /= sum + eps;
                }
            }
        }
        for (int32_t k = 0; k < h; k++) {
            float sum = 0.0f;
            for (int32_t j = 0; j < h; j++) {
                sum += comb[j * h + k];
            }
            for (int32_t j = 0; j < h; j++) {
                comb[j * h + k] /= sum + eps;
            }
        }
    }
}

void eng_v4_rope_freqs(const eng_v4_rope_params *p, float *freqs)
{
    int32_t r = p->rope_dim;

    for (int32_t i = 0; i < r / 2; i++) {
        freqs[i] = 1.0f / powf(p->theta, (float)(2 * i) / (float)r);
    }
    if (!p->yarn || p->original_len <= 0) {
        return;
    }
    /* cd(n) = r ln(orig / (2 pi n)) / (2 ln theta) */
    double lt = 2.0 * log((double)p->theta), orig = (double)p->original_len;
    double low = floor(r * log(orig / (2.0 * M_PI * p->beta_fast)) / lt);
    double high = ceil(r * log(orig / (2.0 * M_PI * p->beta_slow)) / lt);
    low = fmax(low, 0.0);
    high = fmin(high, (double)(r - 1));
    if (low == high) {
        high += 0.001;
    }
    for (int32_t i = 0; i < r / 2; i++) {
        float ramp = (float)(((double)i - low) / (high - low));
        ramp = fminf(fmaxf(ramp, 0.0f), 1.0f);
        freqs[i] = freqs[i] / p->factor * ramp + freqs[i] * (1.0f - ramp);
    }
}

void eng_v4_rope_cos_sin(const float *freqs, int32_t rope_dim, int64_t t, float *cos_out,
                         float *sin_out)
{
    for (int32_t i = 0; i < rope_dim / 2; i++) {
        float angle = (float)t * freqs[i]; /* the fp32 product, as the reference */
        cos_out[i] = cosf(angle);
        sin_out[i] = sinf(angle);
    }
}

void eng_v4_rope_apply(const float *freqs, int32_t rope_dim, int64_t t, bool inverse, float *x)
{
    for (int32_t i = 0; i < rope_dim / 2; i++) {
        float angle = (float)t * freqs[i];
        float c = cosf(angle), s = inverse ? -sinf(angle) : sinf(angle);
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * c - x1 * s;
        x[2 * i + 1] = x0 * s + x1 * c;
    }
}

/* ---- attention ----------------------------------------------------------- */

void eng_v4_sparse_attn(const float *q, const float *kv, const int32_t *idx, const float *sink,
                        int32_t T, int32_t H, int32_t d, int32_t n_kv, int32_t k, float scale,
                        float *out)
{
    for (int32_t t = 0; t < T; t++) {
        const int32_t *sel = idx + (int64_t)t * k;
        for (int32_t h = 0; h < H; h++) {
            const float *qh = q + ((int64_t)t * H + h) * d;
            float *oh = out + ((int64_t)t * H + h) * d;
            float mx = -INFINITY, denom;
            int32_t n_valid = 0;

            memset(oh, 0, sizeof(float) * (size_t)d);
            /* pass 1: the largest score */
            for (int32_t j = 0; j < k; j++) {
                if (sel[j] < 0) {
                    continue;
                }
                assert(sel[j] < n_kv);
                const float *v = kv + (int64_t)sel[j] * d;
                float s = 0.0f;
                for (int32_t c = 0; c < d; c++) {
                    s += qh[c] * v[c];
                }
                mx = fmaxf(mx, s * scale);
                n_valid++;
            }
            if (n_valid == 0) {
                continue;
            }
            /* pass 2: exp-weighted sum; the sink joins the denominator only */
            denom = expf(sink[h] - mx);
            for (int32_t j = 0; j < k; j++) {
                if (sel[j] < 0) {
                    continue;
                }
                const float *v = kv + (int64_t)sel[j] * d;
                float s = 0.0f, p;
                for (int32_t c = 0; c < d; c++) {
                    s += qh[c] * v[c];
                }
                p = expf(s * scale - mx);
                denom += p;
                for (int32_t c = 0; c < d; c++) {
                    oh[c] += p * v[c];
                }
            }
            for (int32_t c = 0; c < d; c++) {
                oh[c] /= denom;
            }
        }
    }
}
