/*
 * test_v4_forward.c - DeepSeek-V4's forward pass against the reference's
 * goldens (tests/fixtures/models/tiny-v4{,-fp8}/golden.safetensors), with
 * README-v4 section 7's tolerances:
 *
 *   - layer-local: block L fed the golden residual.layer{L-1} (the embedding
 *     repeated hc_mult times for L = 0) from an empty state; its output per
 *     position (rel L2 <= 1e-4 at >= 90% of positions, <= 5e-2 at all),
 *     attn_out (seq0, rel L2 <= 1e-4 per position), and its decode-time
 *     state: window ring, compressed entries, indexer keys, the valid
 *     compressor rows (within 1e-5 relative, except isolated elements one
 *     FP8/FP4 quantum off), and the last position's indexer top-k (a set);
 *   - end to end: prefill logits (seq0 rel L2 <= 5e-3 per sequence, <= 2e-2
 *     per position, top-1 all equal; seq1 <= 5e-2, >= 95% of positions
 *     <= 1e-2, top-1 >= 0.98), free-running greedy ids exact and their
 *     logits (rel L2 <= 5e-2 per sequence);
 *   - decode: the indexer's selection of every decode call (decode_topk, as
 *     sets); the prefill-to-decode handoff (the golden state after the
 *     prompt, then the golden greedy ids: greedy_logits[1..15] within 1e-3 per
 *     step, argmax exact, one isolated flip step allowed - see check_handoff);
 *   - chunked prefill (chunks of 1, 3, 5, 16 tokens) gives one prefill call's
 *     last logits and state, with an f32 and with an fp8 state;
 *   - the fp8 state (FlashMLA's V4 rows): every stored entry's nope dims and
 *     every indexer key come back bit for bit, the rope dims as bf16; its end
 *     to end figures are reported (see check_end_to_end);
 *   - the engine API (eng_model_load .. eng_decode_step) and `mlaserve
 *     generate --kv-dtype f32` reproduce the greedy ids.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "eng_safetensors.h"
#include "eng_v4.h"
#include "eng_v4_forward.h"
#include "engine.h"
#include "mls_alloc.h"
#include "mls_num.h"
#include "mls_test.h"

typedef struct {
    eng_v4_model *model;
    st_archive *golden;
    eng_v4_ctx *ctx;
} v4_fixture;

static v4_fixture fx_bf16, fx_fp8;

/* Load models/<name> and its golden.safetensors into f (once). */
static bool fixture_open(const char *name, v4_fixture *f)
{
    char rel[128], dir[600], path[600];
    mls_err err = {{0}};

    if (f->ctx != NULL) {
        return true;
    }
    snprintf(rel, sizeof(rel), "models/%s/golden.safetensors", name);
    if (mls_test_fixture_path(rel, path, sizeof(path)) == NULL) {
        return false;
    }
    snprintf(dir, sizeof(dir), "%s/models/%s", MLS_FIXTURES_DIR, name);
    if (eng_v4_model_load(dir, &f->model, &err) != MLS_OK ||
        st_open_file(path, &f->golden, &err) != MLS_OK ||
        eng_v4_ctx_create(f->model, 2, &f->ctx, &err) != MLS_OK) {
        fprintf(stderr, "  %s: %s\n", name, err.msg);
        return false;
    }
    return true;
}

static void fixture_close(v4_fixture *f)
{
    eng_v4_ctx_destroy(f->ctx);
    st_close(f->golden);
    eng_v4_model_destroy(f->model);
    memset(f, 0, sizeof(*f));
}

/* Golden tensor `seq<k>.<what>` (any dtype) with its element count, or NULL. */
static const void *golden(const v4_fixture *f, int seq, const char *what, int64_t *numel_p)
{
    char name[128];
    const st_tensor *t;

    snprintf(name, sizeof(name), "seq%d.%s", seq, what);
    if ((t = st_find(f->golden, name)) == NULL) {
        return NULL;
    }
    if (numel_p != NULL) {
        *numel_p = (int64_t)(t->nbytes / 4);
    }
    return t->data;
}

/* ---- state comparison ------------------------------------------------------------- */

typedef struct {
    int64_t n;    /* elements compared */
    int64_t off;  /* beyond 1e-5 relative */
    int64_t far;  /* beyond one FP8 quantum (1/8 relative) */
    double worst; /* largest error relative to its row's largest magnitude */
} v4_cmp;

/* Compare rows [r0, r1) of got/want (width w, row strides gs/ws). */
static void cmp_rows(v4_cmp *c, const float *got, int64_t gs, const float *want, int64_t ws,
                     int64_t r0, int64_t r1, int64_t w)
{
    for (int64_t r = r0; r < r1; r++) {
        double scale = 0;
        for (int64_t i = 0; i < w; i++) {
            if (isfinite(want[r * ws + i])) {
                scale = fmax(scale, fabs(want[r * ws + i]));
            }
        }
        for (int64_t i = 0; i < w; i++) {
            double g = got[r * gs + i], x = want[r * ws + i];
            double e = fabs(g - x), tol = 1e-5 * scale;
            c->n++;
            if (isinf(x) && g == x) {
                continue;
            }
            if (!(e <= tol)) {
                c->off++;
                if (!(e <= 0.13 * fabs(x) + tol)) {
                    c->far++;
                }
            }
            if (scale > 0) {
                c->worst = fmax(c->worst, e / scale);
            }
        }
    }
}

/* The compressor state's valid rows after T tokens (README-v4 section 3). */
static void cmp_cmp_state(v4_cmp *c, const eng_v4_cmp_state *cs, const float *want_kv,
                          const float *want_score, int32_t T)
{
    int32_t m = cs->ratio, rem = T % m, cw = (m == 4 ? 2 : 1) * cs->width;

    if (m == 4) {
        /* rows 0..3: the last complete block, first d' channels read */
        cmp_rows(c, cs->kv, cw, want_kv, cw, 0, 4, cs->width);
        cmp_rows(c, cs->score, cw, want_score, cw, 0, 4, cs->width);
        cmp_rows(c, cs->kv, cw, want_kv, cw, 4, 4 + rem, cw);
        cmp_rows(c, cs->score, cw, want_score, cw, 4, 4 + rem, cw);
    } else {
        cmp_rows(c, cs->kv, cw, want_kv, cw, 0, rem, cw);
        cmp_rows(c, cs->score, cw, want_score, cw, 0, rem, cw);
    }
}

/* ---- layer-local -------------------------------------------------------------------- */

static int cmp_int(const void *a, const void *b)
{
    return *(const int32_t *)a - *(const int32_t *)b;
}

/* Block `layer` of f on seq's golden input; checks as the file header says. */
static void check_layer_local(v4_fixture *f, const char *name, int seq, int32_t layer)
{
    const eng_config *c = &f->model->cfg;
    int32_t h = c->v4.hc_mult, D = c->hidden_size, W = c->v4.sliding_window;
    int32_t d = c->v4.head_dim, m = f->model->layers[layer].ratio;
    int64_t T = 0;
    const int32_t *ids = golden(f, seq, "prompt_ids", &T);
    char what[96];
    eng_v4_state *state = NULL;
    float *resid = NULL, *attn = NULL;
    mls_err err = {{0}};
    int n_above = 0;
    double worst = 0, worst_attn = 0;
    v4_cmp sc = {0};

    CHECK_MSG(ids != NULL, "%s: no seq%d.prompt_ids", name, seq);
    resid = malloc(sizeof(float) * (size_t)T * h * D);
    attn = malloc(sizeof(float) * (size_t)T * D);
    CHECK(resid != NULL && attn != NULL);
    if (layer == 0) {
        for (int64_t t = 0; t < T; t++) {
            for (int32_t i = 0; i < h; i++) {
                for (int32_t k = 0; k < D; k++) {
                    uint16_t b;
                    memcpy(&b, f->model->embed + (int64_t)ids[t] * D + k, 2);
                    resid[(t * h + i) * D + k] = mls_bf16_to_f32(b);
                }
            }
        }
    } else {
        snprintf(what, sizeof(what), "residual.layer%d", layer - 1);
        const float *in = golden(f, seq, what, NULL);
        CHECK_MSG(in != NULL, "%s: no seq%d.%s", name, seq, what);
        memcpy(resid, in, sizeof(float) * (size_t)T * h * D);
    }
    CHECK_OK(eng_v4_state_create(f->model, KVL_DTYPE_F32, &state));
    CHECK_OK(eng_v4_state_reserve(state, f->model, (int32_t)T));
    eng_v4_layer_state *ls = &state->layers[layer];
    int32_t last_topk[64];
    ls->last_topk = m == 4 ? last_topk : NULL;
    CHECK_MSG(eng_v4_block_forward(f->ctx, layer, ls, ids, (int32_t)T, 0, resid, attn, &err) ==
                  MLS_OK,
              "%s", err.msg);

    /* the output, per position */
    snprintf(what, sizeof(what), "residual.layer%d", layer);
    const float *want = golden(f, seq, what, NULL);
    CHECK_MSG(want != NULL, "%s: no seq%d.%s", name, seq, what);
    for (int64_t t = 0; t < T; t++) {
        double e = mls_test_rel_l2(resid + t * h * D, want + t * h * D, (size_t)h * D);
        worst = fmax(worst, e);
        n_above += e > 1e-4;
    }
    snprintf(what, sizeof(what), "attn_out.layer%d", layer);
    const float *want_attn = golden(f, seq, what, NULL);
    for (int64_t t = 0; want_attn != NULL && t < T; t++) {
        worst_attn = fmax(worst_attn, mls_test_rel_l2(attn + t * D, want_attn + t * D, (size_t)D));
    }

    /* the state */
    snprintf(what, sizeof(what), "kv_window.layer%d", layer);
    const float *win = golden(f, seq, what, NULL);
    CHECK_MSG(win != NULL, "%s: no seq%d.%s", name, seq, what);
    for (int64_t p = T > W ? T - W : 0; p < T; p++) {
        cmp_rows(&sc, (float *)ls->window, d, win, d, p % W, p % W + 1, d);
    }
    int topk_missing = 0;
    if (m > 0) {
        snprintf(what, sizeof(what), "kv_compressed.layer%d", layer);
        const float *comp = golden(f, seq, what, NULL);
        CHECK_EQ_INT(ls->n_entries, T / m);
        if (comp != NULL) {
            cmp_rows(&sc, (float *)ls->comp, d, comp, d, 0, T / m, d);
        }
        snprintf(what, sizeof(what), "compressor.kv_state.layer%d", layer);
        const float *kvs = golden(f, seq, what, NULL);
        snprintf(what, sizeof(what), "compressor.score_state.layer%d", layer);
        const float *scs = golden(f, seq, what, NULL);
        CHECK_MSG(kvs != NULL && scs != NULL, "%s: no compressor state for layer %d", name, layer);
        cmp_cmp_state(&sc, &ls->cmp, kvs, scs, (int32_t)T);
    }
    if (m == 4) {
        int32_t Id = c->v4.index_head_dim, K = c->v4.index_topk;
        snprintf(what, sizeof(what), "index_keys.layer%d", layer);
        const float *keys = golden(f, seq, what, NULL);
        if (keys != NULL) {
            cmp_rows(&sc, (float *)ls->idx_keys, Id, keys, Id, 0, T / 4, Id);
        }
        snprintf(what, sizeof(what), "index_compressor.kv_state.layer%d", layer);
        const float *kvs = golden(f, seq, what, NULL);
        snprintf(what, sizeof(what), "index_compressor.score_state.layer%d", layer);
        const float *scs = golden(f, seq, what, NULL);
        CHECK(kvs != NULL && scs != NULL);
        cmp_cmp_state(&sc, &ls->icmp, kvs, scs, (int32_t)T);
        /* the last position's top-k, as a set */
        snprintf(what, sizeof(what), "topk.layer%d", layer);
        const int32_t *want_sel = golden(f, seq, what, NULL);
        CHECK(want_sel != NULL && K <= 64);
        int32_t n = T / 4 < K ? (int32_t)(T / 4) : K, a[64], b[64];
        memcpy(a, last_topk, sizeof(int32_t) * (size_t)n);
        memcpy(b, want_sel, sizeof(int32_t) * (size_t)n);
        qsort(a, (size_t)n, sizeof(int32_t), cmp_int);
        qsort(b, (size_t)n, sizeof(int32_t), cmp_int);
        topk_missing = memcmp(a, b, sizeof(int32_t) * (size_t)n) != 0;
    }

    fprintf(stderr,
            "  %s seq%d layer %d (ratio %d): out worst %.3g, %d/%lld positions > 1e-4; attn_out "
            "%.3g; state %lld elems, %lld off 1e-5 (%lld beyond a quantum), worst %.3g%s\n",
            name, seq, layer, m, worst, n_above, (long long)T, worst_attn, (long long)sc.n,
            (long long)sc.off, (long long)sc.far, sc.worst, topk_missing ? "; TOP-K DIFFERS" : "");
    CHECK_MSG(worst <= 5e-2, "layer %d: a position is off by %.3g > 5e-2", layer, worst);
    CHECK_MSG(n_above * 10 <= T, "layer %d: %d of %lld positions above 1e-4", layer, n_above,
              (long long)T);
    CHECK_MSG(want_attn == NULL || worst_attn <= 1e-4, "layer %d: attn_out off by %.3g", layer,
              worst_attn);
    CHECK_MSG(sc.far == 0 && sc.off <= 4,
              "layer %d: %lld state elements off (%lld beyond one quantum)", layer,
              (long long)sc.off, (long long)sc.far);
    CHECK_MSG(!topk_missing, "layer %d: the last position's top-k set differs", layer);
    eng_v4_state_destroy(state);
    free(resid);
    free(attn);
}

static void test_layer_local_bf16(void)
{
    CHECK_MSG(fixture_open("tiny-v4", &fx_bf16), "tiny-v4 did not load");
    for (int seq = 0; seq < 2; seq++) {
        for (int32_t l = 0; l < fx_bf16.model->cfg.num_hidden_layers; l++) {
            check_layer_local(&fx_bf16, "tiny-v4", seq, l);
        }
    }
}

static void test_layer_local_fp8(void)
{
    CHECK_MSG(fixture_open("tiny-v4-fp8", &fx_fp8), "tiny-v4-fp8 did not load");
    for (int seq = 0; seq < 2; seq++) {
        for (int32_t l = 0; l < fx_fp8.model->cfg.num_hidden_layers; l++) {
            check_layer_local(&fx_fp8, "tiny-v4-fp8", seq, l);
        }
    }
}

/* ---- end to end ------------------------------------------------------------------------ */

static int32_t argmax(const float *v, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        best = v[i] > v[best] ? i : best;
    }
    return best;
}

/* Sorted copies of a[n] and b[n] equal? */
static bool same_set(const int32_t *a, const int32_t *b, int32_t n)
{
    int32_t x[64], y[64];
    if (n > 64) {
        return false;
    }
    memcpy(x, a, sizeof(int32_t) * (size_t)n);
    memcpy(y, b, sizeof(int32_t) * (size_t)n);
    qsort(x, (size_t)n, sizeof(int32_t), cmp_int);
    qsort(y, (size_t)n, sizeof(int32_t), cmp_int);
    return memcmp(x, y, sizeof(int32_t) * (size_t)n) == 0;
}

/* Prefill seq's prompt, then 15 greedy decode steps; the checks of the header. */
static void check_end_to_end(v4_fixture *f, const char *name, int seq, kvl_dtype dtype)
{
    const eng_config *c = &f->model->cfg;
    int32_t V = c->vocab_size, K = c->v4.index_topk, L = c->num_hidden_layers;
    int64_t T = 0;
    const int32_t *ids = golden(f, seq, "prompt_ids", &T);
    const float *want = golden(f, seq, "prefill_logits", NULL);
    const int32_t *want_ids = golden(f, seq, "greedy_ids", NULL);
    const float *want_greedy = golden(f, seq, "greedy_logits", NULL);
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    float *greedy = malloc(sizeof(float) * 16 * (size_t)V);
    int32_t got_ids[16], sel[ENG_V4_MAX_LAYERS][64];
    eng_v4_state *state = NULL;
    mls_err err = {{0}};
    int n_pos_above = 0, top1 = 0, topk_diff = 0;
    double worst_pos = 0;

    CHECK(ids != NULL && want != NULL && want_ids != NULL && want_greedy != NULL);
    CHECK(logits != NULL && greedy != NULL && K <= 64);
    CHECK_OK(eng_v4_state_create(f->model, dtype, &state));
    CHECK_MSG(eng_v4_forward(f->ctx, state, ids, (int32_t)T, true, logits, &err) == MLS_OK, "%s",
              err.msg);
    double seq_err = mls_test_rel_l2(logits, want, (size_t)T * V);
    for (int64_t t = 0; t < T; t++) {
        double e = mls_test_rel_l2(logits + t * V, want + t * V, (size_t)V);
        worst_pos = fmax(worst_pos, e);
        n_pos_above += e > 1e-2;
        top1 += argmax(logits + t * V, V) == argmax(want + t * V, V);
    }
    /* free-running greedy: row 0 the prompt's last logits, then 15 decode calls */
    memcpy(greedy, logits + (T - 1) * V, sizeof(float) * (size_t)V);
    got_ids[0] = argmax(greedy, V);
    for (int32_t l = 0; l < L; l++) {
        state->layers[l].last_topk = f->model->layers[l].ratio == 4 ? sel[l] : NULL;
    }
    for (int i = 1; i < 16; i++) {
        CHECK_MSG(eng_v4_forward(f->ctx, state, &got_ids[i - 1], 1, false, greedy + i * V, &err) ==
                      MLS_OK,
                  "%s", err.msg);
        got_ids[i] = argmax(greedy + i * V, V);
        for (int32_t l = 0; l < L; l++) {
            char what[64];
            const int32_t *want_sel;
            if (f->model->layers[l].ratio != 4) {
                continue;
            }
            snprintf(what, sizeof(what), "decode_topk.layer%d", l);
            want_sel = golden(f, seq, what, NULL);
            CHECK(want_sel != NULL);
            int32_t n = 0;
            while (n < K && want_sel[(i - 1) * K + n] >= 0) {
                n++;
            }
            topk_diff += !same_set(sel[l], want_sel + (i - 1) * K, n);
        }
    }
    int ids_equal = memcmp(got_ids, want_ids, sizeof(got_ids)) == 0, first_diff = 0;
    while (first_diff < 16 && got_ids[first_diff] == want_ids[first_diff]) {
        first_diff++;
    }
    char ids_msg[48];
    snprintf(ids_msg, sizeof(ids_msg), ids_equal ? "equal" : "DIFFER from step %d", first_diff);
    double greedy_err = mls_test_rel_l2(greedy, want_greedy, 16 * (size_t)V);
    fprintf(stderr,
            "  %s%s seq%d (%lld tokens): prefill rel L2 %.3g, worst position %.3g, %d positions > "
            "1e-2, top-1 %d/%lld; greedy ids %s, greedy logits %.3g; decode top-k sets differing "
            "%d\n",
            name, dtype == KVL_DTYPE_F32 ? "" : " (fp8 state)", seq, (long long)T, seq_err,
            worst_pos, n_pos_above, top1, (long long)T, ids_msg, greedy_err, topk_diff);
    if (dtype != KVL_DTYPE_F32) {
        /* The fp8 state rounds the stored rope dims to bf16 (FlashMLA's V4 row); the
         * figures are reported, with a loose bound against gross errors. tiny-v4
         * seq0's greedy ids stay exact; tiny-v4-fp8's diverge: these random-weight
         * models amplify a 2^-9 change of the rope dims through FP8 flips (an f32
         * state with only its stored rope dims rounded to bf16 moves tiny-v4-fp8
         * seq0's prefill logits by 7.9e-2 and changes its greedy ids too). */
        CHECK_MSG(f != &fx_bf16 || seq != 0 || ids_equal, "fp8 state: seq0's greedy ids differ");
        CHECK_MSG(seq_err <= 0.2 && top1 >= 0.9 * T,
                  "fp8 state: prefill rel L2 %.3g (0.2), top-1 %d/%lld (0.9)", seq_err, top1,
                  (long long)T);
    } else if (seq == 0) {
        CHECK_MSG(seq_err <= 5e-3 && worst_pos <= 2e-2 && top1 == T,
                  "seq0 prefill: %.3g (5e-3), worst position %.3g (2e-2), top-1 %d/%lld", seq_err,
                  worst_pos, top1, (long long)T);
    } else {
        CHECK_MSG(seq_err <= 5e-2 && n_pos_above * 20 <= T && top1 >= 0.98 * T,
                  "seq%d prefill: %.3g (5e-2), %d positions > 1e-2, top-1 %d/%lld", seq, seq_err,
                  n_pos_above, top1, (long long)T);
    }
    if (dtype == KVL_DTYPE_F32) {
        CHECK_MSG(ids_equal, "greedy ids differ");
        CHECK_MSG(greedy_err <= 5e-2, "greedy logits rel L2 %.3g > 5e-2", greedy_err);
        CHECK_MSG(topk_diff <= 1, "%d decode top-k sets differ", topk_diff);
    }
    eng_v4_state_destroy(state);
    free(logits);
    free(greedy);
}

static void test_end_to_end_bf16(void)
{
    CHECK_MSG(fixture_open("tiny-v4", &fx_bf16), "tiny-v4 did not load");
    check_end_to_end(&fx_bf16, "tiny-v4", 0, KVL_DTYPE_F32);
    check_end_to_end(&fx_bf16, "tiny-v4", 1, KVL_DTYPE_F32);
}

static void test_end_to_end_fp8(void)
{
    CHECK_MSG(fixture_open("tiny-v4-fp8", &fx_fp8), "tiny-v4-fp8 did not load");
    check_end_to_end(&fx_fp8, "tiny-v4-fp8", 0, KVL_DTYPE_F32);
    check_end_to_end(&fx_fp8, "tiny-v4-fp8", 1, KVL_DTYPE_F32);
}

/* ---- handoff ------------------------------------------------------------------------------ */

/* Copy golden `seq<k>.<what>.layer<l>` (n floats at least) into dst; false if absent. */
static bool load_state_part(const v4_fixture *f, int seq, const char *what, int32_t l, float *dst,
                            int64_t n)
{
    char name[96];
    int64_t have;
    const float *src;

    snprintf(name, sizeof(name), "%s.layer%d", what, l);
    if ((src = golden(f, seq, name, &have)) == NULL || have < n) {
        return false;
    }
    memcpy(dst, src, sizeof(float) * (size_t)n);
    return true;
}

/* The golden state after the prompt into a fresh state; then the golden greedy ids in
 * turn reproduce greedy_logits[1..15] (rel L2 <= 1e-3 per step, argmax exact). One
 * isolated step may be off by up to 1e-2: tiny-v4-fp8 seq0's step 4 is 2.9e-3 off
 * while the steps after it are back at 2.5e-7, an FP8 GEMM-input tie rounded the
 * other way (README-v4's independent fp64 implementation shows the same flip:
 * greedy logits 7.5e-4 over 16 rows, which is this step). */
static void check_handoff(v4_fixture *f, const char *name, int seq)
{
    const eng_config *c = &f->model->cfg;
    int32_t V = c->vocab_size, W = c->v4.sliding_window, d = c->v4.head_dim;
    int64_t T = 0;
    const int32_t *ids = golden(f, seq, "prompt_ids", &T);
    const int32_t *want_ids = golden(f, seq, "greedy_ids", NULL);
    const float *want = golden(f, seq, "greedy_logits", NULL);
    float *logits = malloc(sizeof(float) * (size_t)V);
    eng_v4_state *state = NULL;
    mls_err err = {{0}};
    double worst = 0;
    int argmax_ok = 1, n_flip = 0;

    CHECK(ids != NULL && want_ids != NULL && want != NULL && logits != NULL);
    CHECK_OK(eng_v4_state_create(f->model, KVL_DTYPE_F32, &state));
    CHECK_OK(eng_v4_state_reserve(state, f->model, (int32_t)T + 16));
    for (int32_t l = 0; l < state->n_layers; l++) {
        eng_v4_layer_state *ls = &state->layers[l];
        int32_t m = ls->ratio;
        CHECK(load_state_part(f, seq, "kv_window", l, (float *)ls->window, (int64_t)W * d));
        if (m > 0) {
            int32_t cw = (m == 4 ? 2 : 1) * d, rows = (m == 4 ? 2 : 1) * m;
            ls->n_entries = (int32_t)(T / m);
            CHECK(ls->n_entries == 0 ||
                  load_state_part(f, seq, "kv_compressed", l, (float *)ls->comp,
                                  (int64_t)ls->n_entries * d));
            CHECK(
                load_state_part(f, seq, "compressor.kv_state", l, ls->cmp.kv, (int64_t)rows * cw));
            CHECK(load_state_part(f, seq, "compressor.score_state", l, ls->cmp.score,
                                  (int64_t)rows * cw));
        }
        if (m == 4) {
            int32_t Id = ls->Id;
            CHECK(ls->n_entries == 0 ||
                  load_state_part(f, seq, "index_keys", l, (float *)ls->idx_keys,
                                  (int64_t)ls->n_entries * Id));
            CHECK(load_state_part(f, seq, "index_compressor.kv_state", l, ls->icmp.kv,
                                  (int64_t)8 * 2 * Id));
            CHECK(load_state_part(f, seq, "index_compressor.score_state", l, ls->icmp.score,
                                  (int64_t)8 * 2 * Id));
        }
    }
    state->n_tokens = (int32_t)T;
    for (int i = 1; i < 16; i++) {
        CHECK_MSG(eng_v4_forward(f->ctx, state, &want_ids[i - 1], 1, false, logits, &err) == MLS_OK,
                  "%s", err.msg);
        double e = mls_test_rel_l2(logits, want + (size_t)i * V, (size_t)V);
        if (getenv("V4_TRACE") != NULL) {
            fprintf(stderr, "    step %d: %.3g\n", i, e);
        }
        n_flip += e > 1e-3;
        worst = fmax(worst, e);
        argmax_ok &= argmax(logits, V) == want_ids[i];
    }
    fprintf(stderr, "  %s seq%d handoff: worst step rel L2 %.3g, %d step(s) > 1e-3, argmax %s\n",
            name, seq, worst, n_flip, argmax_ok ? "equal" : "DIFFERS");
    CHECK_MSG(argmax_ok, "handoff: a greedy id differs");
    CHECK_MSG(n_flip <= 1 && worst <= 1e-2,
              "handoff: %d steps > 1e-3, worst %.3g (one isolated flip step allowed)", n_flip,
              worst);
    eng_v4_state_destroy(state);
    free(logits);
}

static void test_handoff(void)
{
    CHECK_MSG(fixture_open("tiny-v4", &fx_bf16), "tiny-v4 did not load");
    CHECK_MSG(fixture_open("tiny-v4-fp8", &fx_fp8), "tiny-v4-fp8 did not load");
    for (int seq = 0; seq < 2; seq++) {
        check_handoff(&fx_bf16, "tiny-v4", seq);
        check_handoff(&fx_fp8, "tiny-v4-fp8", seq);
    }
}

/* ---- chunked prefill ------------------------------------------------------------------------ */

/* seq1's prompt in chunks of `chunk` gives one prefill call's last logits and the
 * same state (up to isolated FP8 flips, README-v4 section 6). */

/* n bytes at a and b differ (n == 0: a window-only layer has no entries, and
 * its NULL arrays must not reach memcmp). */
static int bytes_differ(const void *a, const void *b, size_t n)
{
    return n > 0 && memcmp(a, b, n) != 0;
}

static void check_chunks(v4_fixture *f, const char *name, int32_t chunk, kvl_dtype dtype)
{
    const eng_config *c = &f->model->cfg;
    int32_t V = c->vocab_size;
    int64_t T = 0;
    const int32_t *ids = golden(f, 1, "prompt_ids", &T);
    float *one = malloc(sizeof(float) * (size_t)V), *chunked = malloc(sizeof(float) * (size_t)V);
    eng_v4_state *a = NULL, *b = NULL;
    mls_err err = {{0}};
    v4_cmp sc = {0};

    CHECK(ids != NULL && one != NULL && chunked != NULL);
    CHECK_OK(eng_v4_state_create(f->model, dtype, &a));
    CHECK_OK(eng_v4_state_create(f->model, dtype, &b));
    CHECK_MSG(eng_v4_forward(f->ctx, a, ids, (int32_t)T, false, one, &err) == MLS_OK, "%s",
              err.msg);
    for (int32_t p = 0; p < T; p += chunk) {
        int32_t n = (int32_t)(T - p < chunk ? T - p : chunk);
        CHECK_MSG(eng_v4_forward(f->ctx, b, ids + p, n, false, chunked, &err) == MLS_OK, "%s",
                  err.msg);
    }
    for (int32_t l = 0; dtype != KVL_DTYPE_F32 && l < a->n_layers; l++) {
        /* stored rows: byte for byte (up to isolated FP8 flips, counted as "off") */
        eng_v4_layer_state *x = &a->layers[l], *y = &b->layers[l];
        CHECK_EQ_INT(x->n_entries, y->n_entries);
        sc.off += bytes_differ(x->window, y->window, (size_t)x->W * x->kv_row);
        sc.off += bytes_differ(x->comp, y->comp, (size_t)x->n_entries * x->kv_row);
        sc.off += bytes_differ(x->idx_keys, y->idx_keys, (size_t)x->n_entries * x->idx_row);
    }
    for (int32_t l = 0; dtype == KVL_DTYPE_F32 && l < a->n_layers; l++) {
        eng_v4_layer_state *x = &a->layers[l], *y = &b->layers[l];
        cmp_rows(&sc, (float *)y->window, x->d, (float *)x->window, x->d, 0, x->W, x->d);
        CHECK_EQ_INT(x->n_entries, y->n_entries);
        if (x->ratio > 0) {
            cmp_rows(&sc, (float *)y->comp, x->d, (float *)x->comp, x->d, 0, x->n_entries, x->d);
        }
        if (x->ratio == 4) {
            cmp_rows(&sc, (float *)y->idx_keys, x->Id, (float *)x->idx_keys, x->Id, 0, x->n_entries,
                     x->Id);
        }
    }
    double e = mls_test_rel_l2(chunked, one, (size_t)V);
    fprintf(stderr, "  %s%s chunks of %d: last logits rel L2 %.3g; state %lld off (%lld far)\n",
            name, dtype == KVL_DTYPE_F32 ? "" : " (fp8 state)", chunk, e, (long long)sc.off,
            (long long)sc.far);
    CHECK_MSG(e <= 1e-3 && argmax(one, V) == argmax(chunked, V), "chunks of %d: %.3g", chunk, e);
    CHECK_MSG(sc.far == 0 && sc.off <= 4, "chunks of %d: %lld state elements off", chunk,
              (long long)sc.off);
    eng_v4_state_destroy(a);
    eng_v4_state_destroy(b);
    free(one);
    free(chunked);
}

static void test_chunked_prefill(void)
{
    static const int32_t chunks[] = {1, 3, 5, 16};
    CHECK_MSG(fixture_open("tiny-v4", &fx_bf16), "tiny-v4 did not load");
    CHECK_MSG(fixture_open("tiny-v4-fp8", &fx_fp8), "tiny-v4-fp8 did not load");
    for (size_t i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        check_chunks(&fx_bf16, "tiny-v4", chunks[i], KVL_DTYPE_F32);
        check_chunks(&fx_fp8, "tiny-v4-fp8", chunks[i], KVL_DTYPE_F32);
        check_chunks(&fx_bf16, "tiny-v4", chunks[i], KVL_DTYPE_FP8);
        check_chunks(&fx_fp8, "tiny-v4-fp8", chunks[i], KVL_DTYPE_FP8);
    }
}

/* ---- the fp8 state ----------------------------------------------------------------------------
 */

/* Every row of an f32 state after seq1's prompt, stored as an FP8 row and read back:
 * the nope dims and the indexer keys bit for bit, the rope dims rounded to bf16, the
 * row sizes those of mls_kv_layout.h. */
static void check_fp8_rows(v4_fixture *f, const char *name)
{
    const eng_config *c = &f->model->cfg;
    int32_t d = c->v4.head_dim, r = c->qk_rope_head_dim, Id = c->v4.index_head_dim;
    int64_t T = 0;
    const int32_t *ids = golden(f, 1, "prompt_ids", &T);
    eng_v4_state *state = NULL;
    uint8_t row[4096];
    float back[1024];
    int64_t n_rows = 0, n_keys = 0, bad = 0;
    mls_err err = {{0}};

    CHECK(ids != NULL && d <= 1024 && Id <= 1024);
    CHECK_EQ_INT(eng_v4_kv_row_bytes(KVL_DTYPE_FP8, d, r), KVL_ROW_BYTES_V4_ENTRY(d - r, r));
    CHECK_EQ_INT(eng_v4_idx_row_bytes(KVL_DTYPE_FP8, Id), KVL_ROW_BYTES_V4_INDEXER(Id));
    CHECK_EQ_INT(eng_v4_kv_row_bytes(KVL_DTYPE_FP8, 512, 64), 584);
    CHECK_EQ_INT(eng_v4_idx_row_bytes(KVL_DTYPE_FP8, 128), 68);
    CHECK_OK(eng_v4_state_create(f->model, KVL_DTYPE_F32, &state));
    CHECK_MSG(eng_v4_forward(f->ctx, state, ids, (int32_t)T, false, NULL, &err) == MLS_OK, "%s",
              err.msg);
    for (int32_t l = 0; l < state->n_layers; l++) {
        eng_v4_layer_state *ls = &state->layers[l];
        int32_t n_win = T < ls->W ? (int32_t)T : ls->W;
        for (int32_t i = 0; i < n_win + ls->n_entries; i++) {
            const float *x = i < n_win ? (const float *)ls->window + (size_t)i * d
                                       : (const float *)ls->comp + (size_t)(i - n_win) * d;
            eng_v4_kv_row_store(KVL_DTYPE_FP8, d, r, x, row);
            eng_v4_kv_row_load(KVL_DTYPE_FP8, d, r, row, back);
            bad += memcmp(back, x, sizeof(float) * (size_t)(d - r)) != 0;
            for (int32_t k = d - r; k < d; k++) {
                bad += back[k] != mls_bf16_to_f32(mls_f32_to_bf16(x[k]));
            }
            n_rows++;
        }
        for (int32_t j = 0; ls->ratio == 4 && j < ls->n_entries; j++) {
            const float *x = (const float *)ls->idx_keys + (size_t)j * Id;
            eng_v4_idx_row_store(KVL_DTYPE_FP8, Id, x, row);
            eng_v4_idx_row_load(KVL_DTYPE_FP8, Id, row, back);
            bad += memcmp(back, x, sizeof(float) * (size_t)Id) != 0;
            n_keys++;
        }
    }
    fprintf(stderr, "  %s: %lld entries and %lld indexer keys through the fp8 rows, %lld differ\n",
            name, (long long)n_rows, (long long)n_keys, (long long)bad);
    CHECK_MSG(bad == 0, "%lld rows do not survive the fp8 store", (long long)bad);
    eng_v4_state_destroy(state);
}

static void test_fp8_rows_bit_exact(void)
{
    CHECK_MSG(fixture_open("tiny-v4", &fx_bf16), "tiny-v4 did not load");
    CHECK_MSG(fixture_open("tiny-v4-fp8", &fx_fp8), "tiny-v4-fp8 did not load");
    check_fp8_rows(&fx_bf16, "tiny-v4");
    check_fp8_rows(&fx_fp8, "tiny-v4-fp8");
}

/* End to end with the fp8 state: figures reported, seq0's greedy ids exact. */
static void test_fp8_end_to_end(void)
{
    CHECK_MSG(fixture_open("tiny-v4", &fx_bf16), "tiny-v4 did not load");
    CHECK_MSG(fixture_open("tiny-v4-fp8", &fx_fp8), "tiny-v4-fp8 did not load");
    for (int seq = 0; seq < 2; seq++) {
        check_end_to_end(&fx_bf16, "tiny-v4", seq, KVL_DTYPE_FP8);
        check_end_to_end(&fx_fp8, "tiny-v4-fp8", seq, KVL_DTYPE_FP8);
    }
}

/* ---- the engine API ------------------------------------------------------------------------ */

/* eng_model_load / eng_ctx_create_opts / eng_prefill (chunks of 7) / eng_decode_step run
 * tiny-v4 seq0's greedy continuation; a CUDA context or a bf16 state is refused clearly. */
static void test_engine_api(void)
{
    char dir[600];
    eng_model *model = NULL;
    eng_ctx *ctx = NULL;
    eng_seq seq;
    mls_err err = {{0}};
    eng_ctx_opts opts = {.n_threads = 2}, cuda = {.n_threads = 2, .device = ENG_DEVICE_CUDA};
    int32_t V, ids[16];
    float *logits;

    CHECK_MSG(fixture_open("tiny-v4", &fx_bf16), "tiny-v4 did not load");
    CHECK_FIXTURE("models/tiny-v4", dir);
    CHECK_MSG(eng_model_load(dir, NULL, &model, &err) == MLS_OK, "%s", err.msg);
    V = eng_model_config(model)->vocab_size;
    CHECK_STATUS(eng_ctx_create_opts(model, NULL, &cuda, &ctx, &err), MLS_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "CPU only") != NULL, "message: %s", err.msg);
    opts.v4_kv_dtype = KVL_DTYPE_BF16;
    CHECK_STATUS(eng_ctx_create_opts(model, NULL, &opts, &ctx, &err), MLS_ERR_UNSUPPORTED);
    CHECK_MSG(strstr(err.msg, "f32 or fp8") != NULL, "message: %s", err.msg);
    opts.v4_kv_dtype = KVL_DTYPE_F32;
    CHECK_MSG(eng_ctx_create_opts(model, NULL, &opts, &ctx, &err) == MLS_OK, "%s", err.msg);
    eng_ctx_set_chunk(ctx, 7);
    int64_t T = 0;
    const int32_t *prompt = golden(&fx_bf16, 0, "prompt_ids", &T);
    const int32_t *want = golden(&fx_bf16, 0, "greedy_ids", NULL);
    CHECK(prompt != NULL && want != NULL);
    logits = malloc(sizeof(float) * (size_t)V);
    CHECK(logits != NULL);
    eng_seq_init(&seq);
    CHECK_OK(eng_prefill(ctx, &seq, prompt, (int32_t)T, false, logits, NULL, NULL));
    CHECK_EQ_INT(seq.n_tokens, T);
    ids[0] = argmax(logits, V);
    for (int i = 1; i < 16; i++) {
        eng_seq *seqs[1] = {&seq};
        CHECK_OK(eng_decode_step(ctx, seqs, &ids[i - 1], 1, logits));
        ids[i] = argmax(logits, V);
    }
    CHECK_MSG(memcmp(ids, want, sizeof(ids)) == 0, "greedy ids differ from the golden ones");
    CHECK_EQ_INT(seq.n_tokens, T + 15);
    eng_seq_release(&seq, NULL);
    CHECK(seq.v4 == NULL);
    free(logits);
    eng_ctx_destroy(ctx);
    eng_model_destroy(model);
}

/* `mlaserve generate --kv-dtype f32` on tiny-v4 prints seq0's golden greedy ids (and so
 * does the default, fp8); --kv-dtype bf16 is refused with the reason. */
static void test_cli_generate(void)
{
    const char *bin = MLS_BIN_DIR "/mlaserve";
    char cmd[4096], out[1024], want[1024], dir[600];
    size_t len = 0;
    int64_t T = 0;
    FILE *f;
    int rc;

    CHECK_MSG(access(bin, X_OK) == 0, "%s is not built", bin);
    CHECK_MSG(fixture_open("tiny-v4", &fx_bf16), "tiny-v4 did not load");
    CHECK_FIXTURE("models/tiny-v4", dir);
    const int32_t *prompt = golden(&fx_bf16, 0, "prompt_ids", &T);
    const int32_t *greedy = golden(&fx_bf16, 0, "greedy_ids", NULL);
    CHECK(prompt != NULL && greedy != NULL);
    for (int i = 0, n = 0; i < 16; i++) {
        n += snprintf(want + n, sizeof(want) - (size_t)n, "%s%d", i ? "," : "", greedy[i]);
    }
    for (int run = 0; run < 2; run++) {
        len = (size_t)snprintf(cmd, sizeof(cmd),
                               "%s generate --model %s %s --threads 2 --max-tokens 16 "
                               "--ignore-eos --prompt-ids ",
                               bin, dir, run == 0 ? "--kv-dtype f32" : "");
        for (int64_t t = 0; t < T; t++) {
            len += (size_t)snprintf(cmd + len, sizeof(cmd) - len, "%s%d", t ? "," : "", prompt[t]);
        }
        snprintf(cmd + len, sizeof(cmd) - len, " 2>/dev/null");
        f = popen(cmd, "r");
        CHECK(f != NULL);
        out[0] = '\0';
        CHECK(fgets(out, sizeof(out), f) != NULL);
        rc = pclose(f);
        out[strcspn(out, "\n")] = '\0';
        CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "generate exited %d", rc);
        CHECK_MSG(strcmp(out, want) == 0, "generate (%s) printed %s, want %s",
                  run == 0 ? "f32" : "fp8", out, want);
    }

    snprintf(cmd, sizeof(cmd), "%s generate --model %s --kv-dtype bf16 --prompt-ids 5,6 2>&1", bin,
             dir);
    f = popen(cmd, "r");
    CHECK(f != NULL);
    out[0] = '\0';
    CHECK(fgets(out, sizeof(out), f) != NULL);
    rc = pclose(f);
    CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) != 0, "generate --kv-dtype bf16 exited 0");
    CHECK_MSG(strstr(out, "f32 or fp8") != NULL, "message: %s", out);
}

int main(void)
{
    MLS_TEST_RUN(test_layer_local_bf16);
    MLS_TEST_RUN(test_layer_local_fp8);
    MLS_TEST_RUN(test_end_to_end_bf16);
    MLS_TEST_RUN(test_end_to_end_fp8);
    MLS_TEST_RUN(test_handoff);
    MLS_TEST_RUN(test_chunked_prefill);
    MLS_TEST_RUN(test_fp8_rows_bit_exact);
    MLS_TEST_RUN(test_fp8_end_to_end);
    MLS_TEST_RUN(test_engine_api);
    MLS_TEST_RUN(test_cli_generate);
    fixture_close(&fx_bf16);
    fixture_close(&fx_fp8);
    return MLS_TEST_DONE();
}
