/*
 * kc_mla.c - absorbed MLA attention over the paged latent cache: the driver.
 *
 * Work is cut into units = (sequence, block of its queries, chunk of its
 * context). A unit reads each of its cache rows once (KC_MLA_BLOCK rows at a
 * time, decoded to f32) and uses it for every head and query of the block:
 * scores S = Q . K^T, an online-softmax update, then O += P . V, where K is
 * the row [latent | rope] and V its latent part. Long contexts are split into
 * chunks so one sequence still spreads over every thread; chunks write
 * unnormalised partials (o, running max m, sum l) that a second pass combines
 * with log-sum-exp weights. Causality: query i of a sequence with n_q queries
 * and kv_len rows sees rows [0, kv_len - n_q + i].
 *
 * A sequence with few query vectors (n_q x heads up to KC_MLA_FEW_AUTO_*:
 * decode with few heads, memory-bound) takes the fused path instead (ops->mla_few:
 * rows decoded in registers straight from the pages, no tile), one unit per
 * context chunk holding all of its queries; more query vectors per row make
 * the work compute-bound, where decoding a tile once and reusing it for up to
 * KC_MLA_QVEC vectors pays.
 *
 * The workspace holds the unit list, per-thread scratch and the partials;
 * kc_mla_workspace_size runs the same planning without writing.
 */
#include <math.h>
#include <string.h>

#include "kc_internal.h"

#define KC_MLA_QVEC            128 /* query vectors (queries x heads) per unit, at least one query */
#define KC_MLA_MIN_CHUNK_PAGES 4   /* don't split contexts finer than 256 rows */
#define KC_MLA_LD_ALIGN        16  /* floats: tile/query rows padded for the widest vector */
#define KC_MLA_PREFETCH_BLOCKS 2   /* how many blocks ahead rows are prefetched */

typedef struct {
    int32_t seq;
    int32_t qa, qb;      /* queries [qa, qb) of the sequence */
    int32_t r0, r1;      /* cache rows [r0, r1) */
    int32_t chunk;       /* index of this chunk within its (seq, query block) */
    int32_t n_chunks;    /* chunks of its (seq, query block); > 1 means partials */
    int32_t few;         /* 1: the fused few-query-vector path */
    int64_t part;        /* partial slot, or -1 when the unit writes out directly */
} kc_mla_unit;

typedef struct {
    int64_t n_units, n_parts;
    int64_t qmax;        /* query vectors in the largest unit */
    int64_t ldk;         /* padded R + D */
    size_t units_off, thread_off, thread_bytes, parts_off, part_floats, total;
} kc_mla_plan;

static size_t kc_align64(size_t x)
{
    return (x + 63) & ~(size_t)63;
}

int kc_mla_few_force = -1;

/* Whether sequence sq takes the fused few-query-vector path. */
static int kc_mla_seq_few(const kc_mla_params *p, const kc_mla_seq *sq)
{
    int64_t lim = p->layout->dtype == KVL_DTYPE_FP8 ? kc_ops_active()->mla_few_auto_fp8
                                                    : KC_MLA_FEW_AUTO_BF16;
    if (kc_mla_few_force >= 0) {
        lim = kc_mla_few_force < KC_MLA_FEW_QV ? kc_mla_few_force : KC_MLA_FEW_QV;
    }
    return (int64_t)sq->n_q * p->n_heads <= lim;
}

/* Queries per unit of sequence sq. */
static int64_t kc_mla_qblock(const kc_mla_params *p, const kc_mla_seq *sq)
{
    int64_t q = KC_MLA_QVEC / p->n_heads;
    if (kc_mla_seq_few(p, sq)) {
        return sq->n_q < 1 ? 1 : sq->n_q;
    }
    return q < 1 ? 1 : q;
}

/* Plans the units; writes them to `units` when it is not NULL. */
static void kc_mla_make_plan(int n_threads, const kc_mla_params *p, kc_mla_unit *units,
                             kc_mla_plan *pl)
{
    const kvl_layout *l = p->layout;
    int64_t R = l->kv_lora_rank, D = l->rope_dim, H = p->n_heads;
    int64_t qblk, work = 0, chunk_pages;
    int64_t nu = 0, np = 0, qmax = 1;

    for (int32_t s = 0; s < p->n_seqs; s++) {
        const kc_mla_seq *sq = &p->seqs[s];
        qblk = kc_mla_qblock(p, sq);
        for (int64_t qa = 0; qa < sq->n_q; qa += qblk) {
            int64_t qb = qa + qblk < sq->n_q ? qa + qblk : sq->n_q;
            int64_t vis = sq->kv_len - sq->n_q + qb;
            work += (vis + KVL_PAGE_TOKENS - 1) / KVL_PAGE_TOKENS;
        }
    }
    chunk_pages = (work + 4 * n_threads - 1) / (4 * n_threads);
    if (chunk_pages < KC_MLA_MIN_CHUNK_PAGES) {
        chunk_pages = KC_MLA_MIN_CHUNK_PAGES;
    }
    if (n_threads == 1) {
        chunk_pages = INT32_MAX / KVL_PAGE_TOKENS;
    }
    for (int32_t s = 0; s < p->n_seqs; s++) {
        const kc_mla_seq *sq = &p->seqs[s];
        int few = kc_mla_seq_few(p, sq);
        qblk = kc_mla_qblock(p, sq);
        for (int64_t qa = 0; qa < sq->n_q; qa += qblk) {
            int64_t qb = qa + qblk < sq->n_q ? qa + qblk : sq->n_q;
            int64_t vis = sq->kv_len - sq->n_q + qb;
            int64_t rows = chunk_pages * KVL_PAGE_TOKENS;
            int64_t nch = (vis + rows - 1) / rows;
            if ((qb - qa) * H > qmax) {
                qmax = (qb - qa) * H;
            }
            for (int64_t c = 0; c < nch; c++) {
                if (units != NULL) {
                    kc_mla_unit *u = &units[nu];
                    u->seq = s;
                    u->qa = (int32_t)qa;
                    u->qb = (int32_t)qb;
                    u->r0 = (int32_t)(c * rows);
                    u->r1 = (int32_t)((c + 1) * rows < vis ? (c + 1) * rows : vis);
                    u->chunk = (int32_t)c;
                    u->n_chunks = (int32_t)nch;
                    u->part = nch > 1 ? np : -1;
                    u->few = few;
                }
                nu++;
                np += nch > 1;
            }
        }
    }
    pl->n_units = nu;
    pl->n_parts = np;
    pl->qmax = qmax;
    pl->ldk = (R + D + KC_MLA_LD_ALIGN - 1) / KC_MLA_LD_ALIGN * KC_MLA_LD_ALIGN;
    pl->units_off = 0;
    pl->thread_off = kc_align64((size_t)nu * sizeof(kc_mla_unit));
    pl->thread_bytes = kc_align64((size_t)(qmax * pl->ldk) * 4) +          /* queries */
                       kc_align64((size_t)(KC_MLA_BLOCK * pl->ldk) * 4) +  /* tile */
                       kc_align64((size_t)(qmax * KC_MLA_BLOCK) * 4) +     /* scores */
                       kc_align64((size_t)qmax * 2 * 4) +                  /* m, l */
                       kc_align64(KC_MLA_BLOCK * sizeof(void *));          /* row pointers */
    if (pl->thread_bytes < kc_align64(KC_MLA_FEW_SCRATCH(KC_MLA_FEW_QV, R, D) * 4)) {
        pl->thread_bytes = kc_align64(KC_MLA_FEW_SCRATCH(KC_MLA_FEW_QV, R, D) * 4);
    }
    pl->parts_off = pl->thread_off + pl->thread_bytes * (size_t)n_threads;
    pl->part_floats = (size_t)(qmax * R + 2 * qmax);
    pl->total = pl->parts_off + (size_t)np * pl->part_floats * 4 + 64;
}

size_t kc_mla_workspace_size(const kc_pool *pool, const kc_mla_params *p)
{
    kc_mla_plan pl;
    kc_mla_make_plan(kc_pool_size(pool), p, NULL, &pl);
    return pl.total;
}

/* Rows are consumed in bursts (decode, then compute on the tile), which
 * leaves the hardware prefetcher idle half the time; ask for the rows of a
 * later block ahead of time instead. Always inlined: GCC takes a static
 * function whose only effect is __builtin_prefetch for pure and deletes the
 * calls (as a plain static function this compiled to no prefetch at all;
 * inlined, 16 heads x 32k context, 2 threads: +2%, 151-153 -> 153-155 GFLOP/s). */
static inline __attribute__((always_inline)) void kc_mla_prefetch(const kc_mla_params *p,
                                                                  const kc_mla_seq *sq, int64_t t0,
                                                                  int64_t end)
{
    const kvl_layout *l = p->layout;
    int64_t t1 = t0 + KC_MLA_BLOCK < end ? t0 + KC_MLA_BLOCK : end;
    /* a block never straddles a page: its rows are one contiguous run */
    if (t0 >= t1) {
        return;
    }
    const uint8_t *a = kvl_row_cptr(l, p->kv_base, sq->page_table, t0);
    size_t bytes = (size_t)(t1 - t0) * l->row_bytes;
    for (size_t off = 0; off < bytes; off += 64) {
        __builtin_prefetch(a + off, 0, 3);
    }
}

typedef struct {
    const kc_ops *ops;
    const kc_mla_params *p;
    const kc_mla_plan *pl;
    const kc_mla_unit *units;
    uint8_t *ws;
} kc_mla_job;

/* A unit of the fused path: o is its output (out, or the partial `part`). */
static void kc_mla_unit_few(const kc_mla_job *j, const kc_mla_unit *u, float *o, float *part)
{
    const kc_mla_params *p = j->p;
    const kc_mla_seq *sq = &p->seqs[u->seq];
    int64_t R = p->layout->kv_lora_rank, D = p->layout->rope_dim, H = p->n_heads;
    int64_t Q = (int64_t)(u->qb - u->qa) * H, q0 = (sq->q_index + u->qa) * H;
    int64_t last[KC_MLA_FEW_QV];
    float m[KC_MLA_FEW_QV], lsum[KC_MLA_FEW_QV];
    kc_mla_few_args a;

    for (int64_t i = 0; i < Q; i++) {
        last[i] = (int64_t)sq->kv_len - sq->n_q + u->qa + i / H;
    }
    a.layout = p->layout;
    a.kv_base = p->kv_base;
    a.page_table = sq->page_table;
    a.r0 = u->r0;
    a.r1 = u->r1;
    a.n_qv = (int)Q;
    a.q_latent = p->q_latent + q0 * R;
    a.q_rope = p->q_rope + q0 * D;
    a.softmax_scale = p->softmax_scale;
    a.last = last;
    a.scratch = (float *)(j->ws + j->pl->thread_off +
                          j->pl->thread_bytes * (size_t)kc_pool_thread_index());
    a.o = o;
    a.m = part != NULL ? part + j->pl->qmax * R : m;
    a.l = part != NULL ? part + j->pl->qmax * R + j->pl->qmax : lsum;
    j->ops->mla_few(&a);
    if (part == NULL) {
        for (int64_t i = 0; i < Q; i++) {
            j->ops->scale(o + i * R, R, 1.0f / lsum[i]);
        }
    }
}

static void kc_mla_unit_run(void *ctx, int task, int n_tasks)
{
    const kc_mla_job *j = ctx;
    const kc_mla_params *p = j->p;
    const kc_ops *ops = j->ops;
    const kvl_layout *l = p->layout;
    const kc_mla_unit *u = &j->units[task];
    const kc_mla_seq *sq = &p->seqs[u->seq];
    int64_t R = l->kv_lora_rank, D = l->rope_dim, H = p->n_heads, ldk = j->pl->ldk;
    int64_t Q = (int64_t)(u->qb - u->qa) * H, qmax = j->pl->qmax;
    int64_t q0 = (sq->q_index + u->qa) * H; /* first query vector of the unit */
    uint8_t *th = j->ws + j->pl->thread_off + j->pl->thread_bytes * (size_t)kc_pool_thread_index();
    float *qcat = (float *)th;
    float *tile = (float *)(th + kc_align64((size_t)(qmax * ldk) * 4));
    float *S = (float *)((uint8_t *)tile + kc_align64((size_t)(KC_MLA_BLOCK * ldk) * 4));
    float *m = (float *)((uint8_t *)S + kc_align64((size_t)(qmax * KC_MLA_BLOCK) * 4));
    float *lsum = m + qmax;
    const uint8_t **rows = (const uint8_t **)((uint8_t *)m + kc_align64((size_t)qmax * 2 * 4));
    float *o, *part = NULL;
    (void)n_tasks;

    if (u->part >= 0) {
        part = (float *)(j->ws + j->pl->parts_off) + (size_t)u->part * j->pl->part_floats;
        o = part;
    } else {
        o = p->out + q0 * R;
    }
    if (u->few) {
        kc_mla_unit_few(j, u, o, part);
        return;
    }
    for (int64_t i = 0; i < Q; i++) {
        float *qr = qcat + i * ldk;
        memcpy(qr, p->q_latent + (q0 + i) * R, (size_t)R * 4);
        memcpy(qr + R, p->q_rope + (q0 + i) * D, (size_t)D * 4);
        memset(qr + R + D, 0, (size_t)(ldk - R - D) * 4);
        m[i] = -INFINITY;
        lsum[i] = 0.0f;
    }
    memset(o, 0, (size_t)(Q * R) * 4);

    for (int64_t t0 = u->r0; t0 < u->r1; t0 += KC_MLA_BLOCK) {
        int64_t T = u->r1 - t0 < KC_MLA_BLOCK ? u->r1 - t0 : KC_MLA_BLOCK;
        for (int64_t t = 0; t < T; t++) {
            rows[t] = kvl_row_cptr(l, p->kv_base, sq->page_table, t0 + t);
        }
        kc_mla_prefetch(p, sq, t0 + KC_MLA_PREFETCH_BLOCKS * KC_MLA_BLOCK, u->r1);
        ops->mla_decode(l, rows, (int)T, tile, ldk);
        ops->mla_scores(qcat, ldk, Q, tile, ldk, T, ldk, S, KC_MLA_BLOCK);
        for (int64_t i = 0; i < Q; i++) {
            int64_t lim = (int64_t)sq->kv_len - sq->n_q + u->qa + i / H; /* last visible row */
            int64_t nv = lim - t0 + 1 < T ? lim - t0 + 1 : T;
            float *srow = S + i * KC_MLA_BLOCK, mx = -INFINITY, mnew, alpha, sum;
            if (nv <= 0) {
                memset(srow, 0, (size_t)T * 4);
                continue;
            }
            ops->scale(srow, nv, p->softmax_scale);
            for (int64_t t = 0; t < nv; t++) {
                mx = srow[t] > mx ? srow[t] : mx;
            }
            mnew = mx > m[i] ? mx : m[i];
            alpha = m[i] == -INFINITY ? 0.0f : expf(m[i] - mnew);
            sum = ops->exp_sum(srow, nv, mnew);
            if (nv < T) {
                memset(srow + nv, 0, (size_t)(T - nv) * 4);
            }
            if (alpha != 1.0f && m[i] != -INFINITY) {
                ops->scale(o + i * R, R, alpha);
            }
            lsum[i] = lsum[i] * alpha + sum;
            m[i] = mnew;
        }
        ops->mla_pv(S, KC_MLA_BLOCK, Q, tile, ldk, T, R, o, R);
    }

    if (part == NULL) {
        for (int64_t i = 0; i < Q; i++) {
            ops->scale(o + i * R, R, 1.0f / lsum[i]);
        }
    } else {
        float *pm = part + qmax * R;
        memcpy(pm, m, (size_t)Q * 4);
        memcpy(pm + qmax, lsum, (size_t)Q * 4);
    }
}

/* Combines the chunks of one (sequence, query block) whose first unit is `task`. */
static void kc_mla_combine(void *ctx, int task, int n_tasks)
{
    const kc_mla_job *j = ctx;
    const kc_mla_params *p = j->p;
    const kc_mla_unit *u = &j->units[task];
    int64_t R = p->layout->kv_lora_rank, H = p->n_heads, qmax = j->pl->qmax;
    int64_t Q = (int64_t)(u->qb - u->qa) * H;
    const float *parts = (const float *)(j->ws + j->pl->parts_off);
    float *out;
    (void)n_tasks;

    if (u->chunk != 0 || u->n_chunks <= 1) {
        return;
    }
    out = p->out + (p->seqs[u->seq].q_index + u->qa) * H * R;
    for (int64_t i = 0; i < Q; i++) {
        float mx = -INFINITY, L = 0.0f;
        float *oi = out + i * R;
        for (int32_t c = 0; c < u->n_chunks; c++) {
            const float *pc = parts + (size_t)(u->part + c) * j->pl->part_floats;
            mx = pc[qmax * R + i] > mx ? pc[qmax * R + i] : mx;
        }
        for (int32_t c = 0; c < u->n_chunks; c++) {
            const float *pc = parts + (size_t)(u->part + c) * j->pl->part_floats;
            L += expf(pc[qmax * R + i] - mx) * pc[qmax * R + qmax + i];
        }
        memset(oi, 0, (size_t)R * 4);
        for (int32_t c = 0; c < u->n_chunks; c++) {
            const float *pc = parts + (size_t)(u->part + c) * j->pl->part_floats;
            float wgt = expf(pc[qmax * R + i] - mx) / L;
            const float *po = pc + i * R;
            if (wgt == 0.0f) {
                continue;
            }
            for (int64_t r = 0; r < R; r++) {
                oi[r] += wgt * po[r];
            }
        }
    }
}

void kc_mla_attention(kc_pool *pool, const kc_mla_params *p, void *workspace)
{
    kc_mla_plan pl;
    kc_mla_job j;
    uint8_t *ws = (uint8_t *)(((uintptr_t)workspace + 63) & ~(uintptr_t)63);

    if (p->n_seqs <= 0 || p->n_heads <= 0) {
        return;
    }
    kc_mla_make_plan(kc_pool_size(pool), p, NULL, &pl);
    kc_mla_make_plan(kc_pool_size(pool), p, (kc_mla_unit *)(ws + pl.units_off), &pl);
    j.ops = kc_ops_active();
    j.p = p;
    j.pl = &pl;
    j.units = (const kc_mla_unit *)(ws + pl.units_off);
    j.ws = ws;
    kc_pool_run(pool, kc_mla_unit_run, &j, (int)pl.n_units);
    if (pl.n_parts > 0) {
        kc_pool_run(pool, kc_mla_combine, &j, (int)pl.n_units);
    }
}
