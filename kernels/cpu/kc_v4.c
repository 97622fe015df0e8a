/*
 * kc_v4.c - DeepSeek-V4's decode kernels (kc.h): the lightning indexer's
 * scores over FP4 keys, top-k, and attention with sink over FP8 V4 rows;
 * the scalar references, the split over the pool and the ISA dispatch.
 *
 * Indexer: the keys are split over the pool in ranges of whole blocks; the
 * score of a key does not depend on the split. Attention: a task is one
 * query and a group of its heads; it walks the query's rows KC_V4_ROWS at a
 * time (NULL rows dropped), decodes them to an f32 tile once for the group,
 * and runs the MLA tile kernels (kc_ops.mla_scores, mla_pv) with an online
 * softmax; the sink joins the denominator at the end.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "kc_internal.h"
#include "mls_num.h"

#define KC_V4_ROWS 64 /* rows decoded per attention block */

static const kc_v4_ops *kc_v4_ops_active(void)
{
    switch (kc_isa_active()) {
    case KC_ISA_AVX512_BF16:
    case KC_ISA_AVX512:
        return &kc_v4_ops_avx512;
    case KC_ISA_AVX2:
        return &kc_v4_ops_avx2;
    default:
        return &kc_v4_ops_scalar;
    }
}

/* ---- references ------------------------------------------------------------ */

static float kc_v4_e2m1_ref(uint8_t nib)
{
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    return (nib & 8) ? -mag[nib & 7] : mag[nib & 7];
}

/* x[Id] = the FP4 key at row. */
static void kc_v4_key_decode_ref(const uint8_t *row, int32_t Id, float *x)
{
    for (int32_t i = 0; i < Id; i++) {
        uint8_t nib = (i & 1) ? (uint8_t)(row[i / 2] >> 4) : (uint8_t)(row[i / 2] & 0xf);
        x[i] = ldexpf(kc_v4_e2m1_ref(nib), (int)row[Id / 2 + i / 32] - 127);
    }
}

/* x[nope + rope] = the FP8 V4 entry at row. */
static void kc_v4_row_decode_ref(const uint8_t *row, int32_t nope, int32_t rope, float *x)
{
    const uint8_t *sc = row + nope, *rp = sc + KVL_V4_SCALE_BYTES((uint32_t)nope);
    for (int32_t i = 0; i < nope; i++) {
        x[i] = ldexpf(mls_fp8_e4m3_table()[row[i]], (int)sc[i / 64] - 127);
    }
    for (int32_t i = 0; i < rope; i++) {
        uint16_t h;
        memcpy(&h, rp + 2 * i, sizeof(h));
        x[nope + i] = mls_bf16_to_f32(h);
    }
}

void kc_v4_index_scores_ref(const kc_v4_index_params *p)
{
    float k[KC_V4_INDEX_MAX_DIM];
    assert(p->head_dim % 32 == 0 && p->head_dim <= KC_V4_INDEX_MAX_DIM);
    for (int64_t j = 0; j < p->n_keys; j++) {
        float s = 0.0f;
        kc_v4_key_decode_ref(p->keys + j * p->row_bytes, p->head_dim, k);
        for (int32_t h = 0; h < p->n_heads; h++) {
            const float *qh = p->q + (int64_t)h * p->head_dim;
            float dot = 0.0f;
            for (int32_t i = 0; i < p->head_dim; i++) {
                dot = fmaf(qh[i], k[i], dot);
            }
            s += p->w[h] * fmaxf(dot, 0.0f);
        }
        p->score[j] = s;
    }
}

void kc_v4_attn_ref(const kc_v4_attn_params *p)
{
    int32_t d = p->nope + p->rope;
    float v[1024];
    assert(d <= 1024);
    for (int32_t t = 0; t < p->n_q; t++) {
        const uint8_t *const *rows = p->rows + (int64_t)t * p->k;
        for (int32_t h = 0; h < p->n_heads; h++) {
            const float *qh = p->q + ((int64_t)t * p->n_heads + h) * d;
            float *oh = p->out + ((int64_t)t * p->n_heads + h) * d, mx = -INFINITY, denom;
            int32_t n_valid = 0;
            memset(oh, 0, sizeof(float) * (size_t)d);
            for (int32_t j = 0; j < p->k; j++) {
                if (rows[j] == NULL) {
                    continue;
                }
                float s = 0.0f;
                kc_v4_row_decode_ref(rows[j], p->nope, p->rope, v);
                for (int32_t c = 0; c < d; c++) {
                    s += qh[c] * v[c];
                }
                mx = fmaxf(mx, s * p->softmax_scale);
                n_valid++;
            }
            if (n_valid == 0) {
                continue;
            }
            denom = expf(p->sink[h] - mx);
            for (int32_t j = 0; j < p->k; j++) {
                if (rows[j] == NULL) {
                    continue;
                }
                float s = 0.0f, e;
                kc_v4_row_decode_ref(rows[j], p->nope, p->rope, v);
                for (int32_t c = 0; c < d; c++) {
                    s += qh[c] * v[c];
                }
                e = expf(s * p->softmax_scale - mx);
                denom += e;
                for (int32_t c = 0; c < d; c++) {
                    oh[c] += e * v[c];
                }
            }
            for (int32_t c = 0; c < d; c++) {
                oh[c] /= denom;
            }
        }
    }
}

/* ---- top-k ------------------------------------------------------------------- */

/* Is (sa, ja) ranked below (sb, jb)? Higher score first, then lower index. */
static inline int kc_v4_below(float sa, int32_t ja, float sb, int32_t jb)
{
    return sa < sb || (sa == sb && ja > jb);
}

/* Sift heap[i] down in a min-heap (the worst kept entry on top) of n. */
static void kc_v4_heap_down(int32_t *heap, int64_t n, int64_t i, const float *score)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && kc_v4_below(score[heap[l]], heap[l], score[heap[w]], heap[w])) {
            w = l;
        }
        if (r < n && kc_v4_below(score[heap[r]], heap[r], score[heap[w]], heap[w])) {
            w = r;
        }
        if (w == i) {
            return;
        }
        int32_t tmp = heap[i];
        heap[i] = heap[w];
        heap[w] = tmp;
        i = w;
    }
}

int64_t kc_v4_topk(const float *score, int64_t n, int64_t k, int32_t *sel)
{
    int64_t m = 0;
    for (int64_t j = 0; j < n; j++) {
        if (m < k) {
            int64_t i = m++;
            sel[i] = (int32_t)j;
            while (i > 0) {
                int64_t par = (i - 1) / 2;
                if (!kc_v4_below(score[sel[i]], sel[i], score[sel[par]], sel[par])) {
                    break;
                }
                int32_t tmp = sel[i];
                sel[i] = sel[par];
                sel[par] = tmp;
                i = par;
            }
        } else if (kc_v4_below(score[sel[0]], sel[0], score[j], (int32_t)j)) {
            sel[0] = (int32_t)j;
            kc_v4_heap_down(sel, m, 0, score);
        }
    }
    /* heap sort: pop the worst to the back */
    for (int64_t end = m - 1; end > 0; end--) {
        int32_t tmp = sel[0];
        sel[0] = sel[end];
        sel[end] = tmp;
        kc_v4_heap_down(sel, end, 0, score);
    }
    return m;
}

/* ---- indexer scores ------------------------------------------------------------- */

typedef struct {
    const kc_v4_index_params *p;
    const kc_v4_ops *ops;
    int64_t per_task; /* keys per task, a multiple of 32 */
} kc_v4_index_job;

static void kc_v4_index_task(void *arg, int task, int n_tasks)
{
    const kc_v4_index_job *j = arg;
    int64_t j0 = (int64_t)task * j->per_task, j1 = j0 + j->per_task;
    (void)n_tasks;
    if (j1 > j->p->n_keys) {
        j1 = j->p->n_keys;
    }
    if (j0 < j1) {
        j->ops->index_scores(j->p, j0, j1);
    }
}

void kc_v4_index_scores(kc_pool *pool, const kc_v4_index_params *p)
{
    int64_t n_tasks = kc_pool_size(pool), per;
    assert(p->head_dim % 32 == 0 && p->head_dim <= KC_V4_INDEX_MAX_DIM);
    if (p->n_keys <= 0) {
        return;
    }
    per = (p->n_keys + n_tasks - 1) / n_tasks;
    per = (per + 31) / 32 * 32;
    n_tasks = (p->n_keys + per - 1) / per;
    kc_v4_index_job job = {p, kc_v4_ops_active(), per};
    kc_pool_run(pool, kc_v4_index_task, &job, (int)n_tasks);
}

/* ---- attention with sink ---------------------------------------------------------- */

typedef struct {
    const kc_v4_attn_params *p;
    const kc_ops *ops;
    const kc_v4_ops *v4;
    int32_t n_groups, heads_per_group;
    int64_t ld; /* floats per decoded row (d rounded up to 16) */
} kc_v4_attn_job;

static void kc_v4_attn_task(void *arg, int task, int n_tasks)
{
    const kc_v4_attn_job *j = arg;
    const kc_v4_attn_params *p = j->p;
    const kc_ops *ops = j->ops;
    int32_t t = task / j->n_groups, h0 = (task % j->n_groups) * j->heads_per_group;
    int32_t hg = p->n_heads - h0 < j->heads_per_group ? p->n_heads - h0 : j->heads_per_group;
    int32_t d = p->nope + p->rope;
    int64_t ld = j->ld, row_bytes = KVL_ROW_BYTES_V4_ENTRY((uint32_t)p->nope, (uint32_t)p->rope);
    const uint8_t *const *rows = p->rows + (int64_t)t * p->k;
    const uint8_t *blk[KC_V4_ROWS];
    size_t floats =
        (size_t)KC_V4_ROWS * ld + 2 * (size_t)hg * ld + (size_t)hg * KC_V4_ROWS + 2 * (size_t)hg;
    float *tile = kc_scratch_get(2, floats * sizeof(float)), *qs, *o, *s, *m, *l;
    int64_t n_valid = 0;
    (void)n_tasks;

    if (tile == NULL) {
        return; /* out of memory: nothing sane left to do */
    }
    qs = tile + (size_t)KC_V4_ROWS * ld; /* [hg, ld] zero-padded queries */
    o = qs + (size_t)hg * ld;            /* [hg, ld] */
    s = o + (size_t)hg * ld;             /* [hg, KC_V4_ROWS] */
    m = s + (size_t)hg * KC_V4_ROWS;     /* [hg] */
    l = m + hg;                          /* [hg] */
    memset(qs, 0, sizeof(float) * 2 * (size_t)hg * ld);
    for (int32_t i = 0; i < hg; i++) {
        memcpy(qs + (size_t)i * ld, p->q + ((int64_t)t * p->n_heads + h0 + i) * d,
               sizeof(float) * (size_t)d);
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    for (int32_t r = 0; r < p->k;) {
        int nt = 0;
        while (r < p->k && nt < KC_V4_ROWS) {
            if (rows[r] != NULL) {
                blk[nt++] = rows[r];
            }
            r++;
        }
        if (nt == 0) {
            continue;
        }
        /* chosen entries lie anywhere in the state: ask for the next block's
         * rows while this one is computed */
        for (int32_t r2 = r, n2 = 0; r2 < p->k && n2 < KC_V4_ROWS; r2++) {
            if (rows[r2] != NULL) {
                for (int64_t b = 0; b < row_bytes; b += 64) {
                    __builtin_prefetch(rows[r2] + b, 0, 2);
                }
                __builtin_prefetch(rows[r2] + row_bytes - 1, 0, 2);
                n2++;
            }
        }
        n_valid += nt;
        j->v4->row_decode(blk, nt, p->nope, p->rope, tile, ld);
        ops->mla_scores(qs, ld, hg, tile, ld, nt, ld, s, KC_V4_ROWS);
        for (int32_t i = 0; i < hg; i++) {
            float *si = s + (size_t)i * KC_V4_ROWS, bm = -INFINITY;
            ops->scale(si, nt, p->softmax_scale);
            for (int c = 0; c < nt; c++) {
                bm = fmaxf(bm, si[c]);
            }
            if (bm > m[i]) {
                if (l[i] > 0.0f) {
                    float f = expf(m[i] - bm);
                    ops->scale(o + (size_t)i * ld, ld, f);
                    l[i] *= f;
                }
                m[i] = bm;
            }
            l[i] += ops->exp_sum(si, nt, m[i]);
        }
        ops->mla_pv(s, KC_V4_ROWS, hg, tile, ld, nt, ld, o, ld);
    }
    for (int32_t i = 0; i < hg; i++) {
        float *out = p->out + ((int64_t)t * p->n_heads + h0 + i) * d;
        if (n_valid == 0) {
            memset(out, 0, sizeof(float) * (size_t)d);
            continue;
        }
        float denom = expf(p->sink[h0 + i] - m[i]) + l[i];
        for (int32_t c = 0; c < d; c++) {
            out[c] = o[(size_t)i * ld + c] / denom;
        }
    }
}

void kc_v4_attn(kc_pool *pool, const kc_v4_attn_params *p)
{
    int32_t n_threads = kc_pool_size(pool), groups;
    assert(p->nope % 64 == 0);
    if (p->n_q <= 0 || p->n_heads <= 0) {
        return;
    }
    /* enough (query, head group) tasks for every thread, at least 4 heads a group */
    groups = (n_threads + p->n_q - 1) / p->n_q;
    if (groups > (p->n_heads + 3) / 4) {
        groups = (p->n_heads + 3) / 4;
    }
    if (groups < 1) {
        groups = 1;
    }
    int32_t per = (p->n_heads + groups - 1) / groups;
    groups = (p->n_heads + per - 1) / per;
    kc_v4_attn_job job = {p,
                          kc_ops_active(),
                          kc_v4_ops_active(),
                          groups,
                          per,
                          ((int64_t)(p->nope + p->rope) + 15) / 16 * 16};
    kc_pool_run(pool, kc_v4_attn_task, &job, p->n_q * groups);
}
