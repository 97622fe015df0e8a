/*
 * kc_ref.c - scalar references: the oracles the vector kernels are tested
 * against. Straight loops, exact decodes (mls_num.h, kvl_row_load) and double
 * accumulation; no threads, no blocking.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kc_internal.h"
#include "mls_num.h"

static float kc_ref_weight(const kc_matrix *w, int64_t r, int64_t c)
{
    const uint8_t *row = kc_row_ptr(w, r);
    uint16_t h;

    switch (w->dtype) {
    case KC_DTYPE_F32: {
        float f;
        memcpy(&f, row + 4 * c, 4);
        return f;
    }
    case KC_DTYPE_BF16:
        memcpy(&h, row + 2 * c, 2);
        return mls_bf16_to_f32(h);
    case KC_DTYPE_F16:
        memcpy(&h, row + 2 * c, 2);
        return mls_f16_to_f32(h);
    case KC_DTYPE_FP8_E4M3:
        return mls_fp8_e4m3_to_f32(row[c]) * (kc_fp8_scale(w, r, c) / 256.0f);
    }
    return 0.0f;
}

void kc_matrix_to_f32(const kc_matrix *w, float *out)
{
    for (int64_t r = 0; r < w->rows; r++) {
        for (int64_t c = 0; c < w->cols; c++) {
            out[r * w->cols + c] = kc_ref_weight(w, r, c);
        }
    }
}

void kc_matmul_ref(const kc_matrix *w, const float *x, int64_t n, float *y)
{
    int64_t k = w->cols;
    float *row = malloc((size_t)k * sizeof(float));

    if (row == NULL) {
        return;
    }
    for (int64_t r = 0; r < w->rows; r++) {
        for (int64_t c = 0; c < k; c++) {
            row[c] = kc_ref_weight(w, r, c);
        }
        for (int64_t i = 0; i < n; i++) {
            double s = 0.0;
            for (int64_t c = 0; c < k; c++) {
                s += (double)x[i * k + c] * row[c];
            }
            y[i * w->rows + r] = (float)s;
        }
    }
    free(row);
}

void kc_matmul_t_ref(const kc_matrix *w, const float *x, int64_t n, float *y)
{
    int64_t rows = w->rows, cols = w->cols;
    double *acc = calloc((size_t)cols, sizeof(double));

    if (acc == NULL) {
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        memset(acc, 0, (size_t)cols * sizeof(double));
        for (int64_t r = 0; r < rows; r++) {
            double xv = x[i * rows + r];
            for (int64_t c = 0; c < cols; c++) {
                acc[c] += xv * kc_ref_weight(w, r, c);
            }
        }
        for (int64_t c = 0; c < cols; c++) {
            y[i * cols + c] = (float)acc[c];
        }
    }
    free(acc);
}

void kc_rmsnorm_ref(const float *x, const float *w, int64_t n, int64_t dim, float eps, float *out)
{
    for (int64_t r = 0; r < n; r++) {
        double ss = 0.0;
        float inv;
        for (int64_t i = 0; i < dim; i++) {
            ss += (double)x[r * dim + i] * x[r * dim + i];
        }
        inv = (float)(1.0 / sqrt(ss / (double)dim + eps));
        for (int64_t i = 0; i < dim; i++) {
            out[r * dim + i] = x[r * dim + i] * inv * w[i];
        }
    }
}

void kc_mla_attention_ref(const kc_mla_params *p)
{
    const kvl_layout *l = p->layout;
    int64_t R = l->kv_lora_rank, D = l->rope_dim, H = p->n_heads;

    for (int32_t s = 0; s < p->n_seqs; s++) {
        const kc_mla_seq *sq = &p->seqs[s];
        int64_t len = sq->kv_len;
        float *lat = malloc((size_t)(len * R + len * D) * sizeof(float) + 1);
        double *sc = malloc((size_t)len * sizeof(double) + 1);
        double *acc = malloc((size_t)R * sizeof(double) + 1);

        if (lat == NULL || sc == NULL || acc == NULL) {
            free(lat);
            free(sc);
            free(acc);
            return;
        }
        float *rope = lat + len * R;
        for (int64_t t = 0; t < len; t++) {
            kvl_row_load(l, kvl_row_cptr(l, p->kv_base, sq->page_table, t), lat + t * R,
                         rope + t * D);
        }
        for (int32_t qi = 0; qi < sq->n_q; qi++) {
            int64_t vis = len - sq->n_q + qi + 1;
            for (int64_t h = 0; h < H; h++) {
                int64_t qrow = (sq->q_index + qi) * H + h;
                const float *ql = p->q_latent + qrow * R, *qr = p->q_rope + qrow * D;
                double m = -INFINITY, sum = 0.0;
                for (int64_t t = 0; t < vis; t++) {
                    double d = 0.0;
                    for (int64_t i = 0; i < R; i++) {
                        d += (double)ql[i] * lat[t * R + i];
                    }
                    for (int64_t i = 0; i < D; i++) {
                        d += (double)qr[i] * rope[t * D + i];
                    }
                    sc[t] = d * p->softmax_scale;
                    m = sc[t] > m ? sc[t] : m;
                }
                memset(acc, 0, (size_t)R * sizeof(double));
                for (int64_t t = 0; t < vis; t++) {
                    double e = exp(sc[t] - m);
                    sum += e;
                    for (int64_t i = 0; i < R; i++) {
                        acc[i] += e * lat[t * R + i];
                    }
                }
                for (int64_t i = 0; i < R; i++) {
                    p->out[qrow * R + i] = (float)(acc[i] / sum);
                }
            }
        }
        free(lat);
        free(sc);
        free(acc);
    }
}
