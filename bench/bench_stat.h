/*
 * bench_stat.h - min / median / max of a benchmark's repetitions, the form in
 * which every `mlaserve bench` figure is reported.
 *
 * bench/ owns the benchmarks behind `mlaserve bench` (compiled into the CLI,
 * tools/): each measures a component against a reference measured in the same
 * run. It may include any component and tools/'s CLI header; no component
 * includes bench/.
 */
#ifndef BENCH_STAT_H
#define BENCH_STAT_H

#include <math.h>
#include <stdlib.h>

typedef struct {
    double min, med, max;
} bench_stat;

/* qsort order for doubles. */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Sorts v[0:n] in place; NaNs when n <= 0. */
static inline bench_stat bench_stat_of(double *v, int n)
{
    bench_stat s = {NAN, NAN, NAN};
    if (n <= 0) {
        return s;
    }
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    s.min = v[0];
    s.max = v[n - 1];
    s.med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    return s;
}

/* Every figure of s times k. */
static inline bench_stat bench_stat_scale(bench_stat s, double k)
{
    bench_stat r = {s.min * k, s.med * k, s.max * k};
    return r;
}

#endif
