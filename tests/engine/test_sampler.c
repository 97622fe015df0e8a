/*
 * test_sampler.c - sampling: greedy, seeded reproducibility, top-k/top-p
 * truncation, the drawn frequencies against softmax, logprobs; and the KV
 * pool's page accounting.
 */
#include <stdlib.h>

#include "engine.h"
#include "mls_test.h"

#define V 1000

static void make_logits(float *logits, unsigned seed)
{
    srand(seed);
    for (int i = 0; i < V; i++) {
        logits[i] = (float)(rand() % 10000) / 1000.0f - 5.0f;
    }
}

static void test_greedy_and_logprob(void)
{
    float logits[V], scratch[2 * V], lp;
    eng_sampling greedy = {.temperature = 0, .top_p = 1, .top_k = 0};
    eng_rng rng;
    int32_t best = 0, id;
    double z = 0;

    make_logits(logits, 1);
    for (int i = 0; i < V; i++) {
        best = logits[i] > logits[best] ? i : best;
        z += exp((double)logits[i]);
    }
    eng_rng_seed(&rng, 0);
    id = eng_sample(logits, V, &greedy, &rng, scratch, &lp);
    CHECK_EQ_INT(id, best);
    CHECK_LE_DBL(fabs(lp - (logits[best] - log(z))), 1e-5);
}

static void test_seeded_reproducible(void)
{
    float logits[V], scratch[2 * V];
    eng_sampling p = {.temperature = 0.8f, .top_p = 0.95f, .top_k = 50};
    eng_rng a, b, c;
    int same = 0, differ = 0;

    make_logits(logits, 2);
    eng_rng_seed(&a, 42);
    eng_rng_seed(&b, 42);
    eng_rng_seed(&c, 43);
    for (int i = 0; i < 200; i++) {
        int32_t x = eng_sample(logits, V, &p, &a, scratch, NULL);
        int32_t y = eng_sample(logits, V, &p, &b, scratch, NULL);
        int32_t z = eng_sample(logits, V, &p, &c, scratch, NULL);
        same += x == y;
        differ += x != z;
    }
    CHECK_EQ_INT(same, 200);
    CHECK(differ > 50); /* another seed draws another sequence */
}

static void test_top_k_top_p_truncate(void)
{
    float logits[V], scratch[2 * V];
    eng_rng rng;
    int rank_of[V];
    int32_t order[V];

    make_logits(logits, 3);
    for (int i = 0; i < V; i++) {
        order[i] = i;
    }
    for (int i = 0; i < V; i++) { /* selection sort of the top 20 is enough */
        for (int j = i + 1; j < V && i < 20; j++) {
            if (logits[order[j]] > logits[order[i]]) {
                int32_t t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
        }
        rank_of[order[i]] = i;
    }
    eng_rng_seed(&rng, 7);
    {
        eng_sampling k5 = {.temperature = 1.0f, .top_p = 1.0f, .top_k = 5};
        for (int i = 0; i < 500; i++) {
            int32_t id = eng_sample(logits, V, &k5, &rng, scratch, NULL);
            CHECK_MSG(rank_of[id] < 5, "top-k 5 drew rank %d", rank_of[id]);
        }
    }
    {
        /* top_p tiny: only the best token survives */
        eng_sampling p = {.temperature = 1.0f, .top_p = 1e-6f, .top_k = 0};
        for (int i = 0; i < 100; i++) {
            CHECK_EQ_INT(eng_sample(logits, V, &p, &rng, scratch, NULL), order[0]);
        }
    }
}

static void test_frequencies_match_softmax(void)
{
    /* 4 tokens with known probabilities; 40000 draws; each within 4 sigma */
    float logits[4] = {0.0f, 1.0f, 2.0f, -1.0f}, scratch[8];
    eng_sampling p = {.temperature = 1.0f, .top_p = 1.0f, .top_k = 0};
    eng_rng rng;
    int counts[4] = {0};
    double z = 0;
    const int n = 40000;

    eng_rng_seed(&rng, 123);
    for (int i = 0; i < n; i++) {
        counts[eng_sample(logits, 4, &p, &rng, scratch, NULL)]++;
    }
    for (int i = 0; i < 4; i++) {
        z += exp(logits[i]);
    }
    for (int i = 0; i < 4; i++) {
        double pr = exp(logits[i]) / z, sigma = sqrt(n * pr * (1 - pr));
        fprintf(stderr, "  token %d: %d draws, expected %.0f\n", i, counts[i], n * pr);
        CHECK_LE_DBL(fabs(counts[i] - n * pr), 4 * sigma);
    }
}

static void test_kv_pool_pages(void)
{
    kvl_layout layout;
    eng_kv_pool *pool;
    eng_seq a, b;
    uint32_t pages[4];

    CHECK_OK(kvl_layout_init(KVL_DTYPE_FP8, 512, 64, 1, &layout));
    CHECK_EQ_INT(layout.row_bytes, 656);
    CHECK_OK(eng_kv_pool_create(&layout, 3, 10, &pool));
    CHECK_EQ_INT(eng_kv_pool_bytes_per_token(pool), 3 * 656);
    eng_seq_init(&a);
    eng_seq_init(&b);
    CHECK_OK(eng_seq_reserve(&a, pool, 65)); /* 2 pages */
    CHECK_EQ_INT(a.n_pages, 2);
    CHECK_OK(eng_seq_reserve(&a, pool, 128)); /* still 2 */
    CHECK_EQ_INT(eng_kv_pool_pages_free(pool), 8);
    CHECK_STATUS(eng_seq_reserve(&b, pool, 9 * 64), MLS_ERR_BUSY); /* all or nothing */
    CHECK_EQ_INT(eng_kv_pool_pages_free(pool), 8);
    CHECK_OK(eng_kv_pool_alloc(pool, 4, pages));
    CHECK(pages[0] != a.pages[0] && pages[0] != a.pages[1]);
    eng_kv_pool_free(pool, pages, 4);
    eng_seq_release(&a, pool);
    eng_seq_release(&b, pool);
    CHECK_EQ_INT(eng_kv_pool_pages_free(pool), 10);
    /* pages of different layers are distinct memory */
    CHECK(eng_kv_pool_page(pool, 1, 0) != eng_kv_pool_page(pool, 0, 0));
    eng_kv_pool_destroy(pool);
}

int main(void)
{
    MLS_TEST_RUN(test_greedy_and_logprob);
    MLS_TEST_RUN(test_seeded_reproducible);
    MLS_TEST_RUN(test_top_k_top_p_truncate);
    MLS_TEST_RUN(test_frequencies_match_softmax);
    MLS_TEST_RUN(test_kv_pool_pages);
    return MLS_TEST_DONE();
}
