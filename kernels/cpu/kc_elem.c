/*
 * kc_elem.c - elementwise kernels: rmsnorm, silu*up, interleaved rotary (the
 * bandwidth and FMA probes the benches divide by are kc_probe.c).
 */
#include <math.h>

#include "kc_internal.h"

void kc_rmsnorm(const float *x, const float *w, int64_t n, int64_t dim, float eps, float *out)
{
    kc_ops_active()->rmsnorm(x, w, n, dim, eps, out);
}

void kc_silu_mul(float *gate, const float *up, int64_t n_elems)
{
    kc_ops_active()->silu_mul(gate, up, n_elems);
}

void kc_rope_interleaved(float *x, int64_t n_vec, int64_t dim, int64_t stride, int64_t pos,
                         const float *inv_freq)
{
    float cs[512], sn[512]; /* dim/2 <= 512 covers every rope head dim in use */
    int64_t half = dim / 2;

    for (int64_t b = 0; b < half; b += 512) {
        int64_t e = b + 512 < half ? b + 512 : half;
        for (int64_t i = b; i < e; i++) {
            float a = (float)pos * inv_freq[i]; /* fp32 angle, as torch computes it */
            cs[i - b] = cosf(a);
            sn[i - b] = sinf(a);
        }
        for (int64_t v = 0; v < n_vec; v++) {
            float *xv = x + v * stride;
            for (int64_t i = b; i < e; i++) {
                float x0 = xv[2 * i], x1 = xv[2 * i + 1];
                xv[2 * i] = x0 * cs[i - b] - x1 * sn[i - b];
                xv[2 * i + 1] = x0 * sn[i - b] + x1 * cs[i - b];
            }
        }
    }
}
