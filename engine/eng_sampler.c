/*
 * eng_sampler.c - token sampling: greedy, temperature, top-k, top-p; seeded.
 *
 * The generator is xoshiro256** seeded through splitmix64, so a (seed,
 * logits) pair always gives the same token on every machine. The logprob
 * reported is log_softmax of the unmodified logits at the chosen id (what
 * OpenAI-style APIs return), independent of temperature and truncation.
 */
#include <math.h>
#include <stdlib.h>

#include "engine.h"

void eng_rng_seed(eng_rng *rng, uint64_t seed)
{
    mls_rng_seed(rng, seed);
}

static int32_t eng_argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        if (x[i] > x[best]) {
            best = i;
        }
    }
    return best;
}

static double eng_log_sum_exp(const float *x, int32_t n, float max)
{
    double sum = 0;
    for (int32_t i = 0; i < n; i++) {
        sum += exp((double)(x[i] - max));
    }
    return (double)max + log(sum);
}

typedef struct {
    float p;
    int32_t id;
} eng_cand;

static int eng_cand_cmp(const void *a, const void *b)
{
    const eng_cand *x = a, *y = b;
    if (x->p != y->p) {
        return x->p > y->p ? -1 : 1;
    }
    return x->id - y->id;
}

int32_t eng_sample(const float *logits, int32_t vocab, const eng_sampling *params, eng_rng *rng,
                   float *scratch, float *logprob_p)
{
    int32_t best = eng_argmax(logits, vocab);
    float max = logits[best];
    int32_t chosen = best;
    eng_cand *cand = (eng_cand *)scratch; /* [vocab] pairs fit in 2*vocab floats */

    if (params->temperature > 0.0f) {
        float inv_t = 1.0f / params->temperature;
        int32_t n = 0, keep;
        double total = 0, acc = 0, r;

        /* tokens below e^-40 of the best can never be drawn in float math */
        for (int32_t i = 0; i < vocab; i++) {
            float z = (logits[i] - max) * inv_t;
            if (z > -40.0f) {
                cand[n].p = expf(z);
                cand[n].id = i;
                total += cand[n].p;
                n++;
            }
        }
        keep = n;
        if ((params->top_k > 0 && params->top_k < n) || params->top_p < 1.0f) {
            qsort(cand, (size_t)n, sizeof(cand[0]), eng_cand_cmp);
            if (params->top_k > 0 && params->top_k < keep) {
                keep = params->top_k;
            }
            total = 0;
            for (int32_t i = 0; i < keep; i++) {
                total += cand[i].p;
            }
            if (params->top_p < 1.0f) {
                double cut = total * (double)params->top_p, run = 0;
                for (int32_t i = 0; i < keep; i++) {
                    run += cand[i].p;
                    if (run >= cut) {
                        keep = i + 1;
                        break;
                    }
                }
                total = run;
            }
        }
        r = mls_rng_uniform(rng) * total;
        chosen = cand[keep - 1].id;
        for (int32_t i = 0; i < keep; i++) {
            acc += cand[i].p;
            if (r < acc) {
                chosen = cand[i].id;
                break;
            }
        }
    }
    if (logprob_p != NULL) {
        *logprob_p = (float)((double)logits[chosen] - eng_log_sum_exp(logits, vocab, max));
    }
    return chosen;
}
