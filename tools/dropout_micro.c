/* Single-thread micro-benchmark of the dropout loops of each instruction-set
 * variant, on data that stay in L2 (so it measures the core, not memory).
 * Built by tools/dropout_perf.sh against a source tree (this file includes
 * src_c/nd_dropout.c to reach the per-variant loops).
 *
 *   dropout_micro time [GROUPS [SAMPLES [LOOP [VARIANT]]]]
 *       ns per 64 values for each loop and variant this processor runs (or
 *       only LOOP, VARIANT); the variants and loops are interleaved sample by
 *       sample and the median and the quartiles printed.
 *   dropout_micro once LOOP VARIANT GROUPS
 *       one pass of LOOP (fwd_f32, fwd_nt_f32, fwd_f64, fwd_nt_f64, bits,
 *       bwd_f32) of VARIANT (generic, avx2, avx512) over GROUPS groups: for
 *       valgrind --tool=callgrind --toggle-collect=<function>.
 */
#define _POSIX_C_SOURCE 200809L   /* clock_gettime under -std=c11 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nd_dropout.c"
#include "micro_timing.h"

typedef struct {
    const char *name;
    void *fn[3];   /* generic, avx2, avx512 */
} loop_t;

#if ND_X86_SIMD
#define V3(f) {(void *)ND_CAT(f, generic), (void *)ND_CAT(f, avx2), (void *)ND_CAT(f, avx512)}
#else
#define V3(f) {(void *)ND_CAT(f, generic), 0, 0}
#endif

static const loop_t loops[] = {
    {"fwd_f32", V3(nd_fwd_range_f32)},      {"fwd_nt_f32", V3(nd_fwd_range_nt_f32)},
    {"fwd_f64", V3(nd_fwd_range_f64)},      {"fwd_nt_f64", V3(nd_fwd_range_nt_f64)},
    {"bits", V3(nd_bits_range)},            {"bwd_f32", V3(nd_bwd_range_f32)},
};
static const char *vnames[3] = {"generic", "avx2", "avx512"};
#define NLOOPS ((int)(sizeof loops / sizeof *loops))

typedef void (*fwd32_t)(const float *, float *, uint8_t *, int64_t, int64_t, const nd_keep_rule *, float);
typedef void (*fwd64_t)(const double *, double *, uint8_t *, int64_t, int64_t, const nd_keep_rule *, double);
typedef void (*bits_t)(uint8_t *, uint8_t *, int64_t, int64_t, const nd_keep_rule *);
typedef void (*bwd32_t)(const float *, const uint8_t *, float *, int64_t, int64_t, float);

static float *xf, *of;
static double *xd, *od;
static uint8_t *bits;

static int runs(int v)
{
#if ND_X86_SIMD
    __builtin_cpu_init();
    if (v >= 1 && !__builtin_cpu_supports("avx2")) return 0;
    if (v >= 2 && !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                     __builtin_cpu_supports("bmi2")))
        return 0;
    return 1;
#else
    return v == 0;
#endif
}

/* One pass of loop l, variant v, over groups [0, ng), in a window that moves
 * by one group per call (so consecutive passes use different counters). */
static void pass(int l, int v, int64_t ng, int64_t g0, const nd_keep_rule *r)
{
    void *f = loops[l].fn[v];
    const int64_t o = g0 * ND_GROUP;
    switch (l) {
    case 0: case 1: ((fwd32_t)f)(xf - o, of - o, bits - 8 * g0, g0, g0 + ng, r, 2.0f); break;
    case 2: case 3: ((fwd64_t)f)(xd - o, od - o, bits - 8 * g0, g0, g0 + ng, r, 2.0); break;
    case 4: ((bits_t)f)(bits - 8 * g0, 0, g0, g0 + ng, r); break;
    case 5: ((bwd32_t)f)(xf - o, bits - 8 * g0, of - o, g0, g0 + ng, 2.0f); break;
    }
}

int main(int argc, char **argv)
{
    const int timing = argc >= 2 && !strcmp(argv[1], "time");
    const int once = argc >= 5 && !strcmp(argv[1], "once");
    if (!timing && !once) {
        fprintf(stderr, "usage: %s time [GROUPS [SAMPLES]] | once LOOP VARIANT GROUPS\n", argv[0]);
        return 2;
    }
    const int64_t ng = once ? atoll(argv[4]) : (argc >= 3 ? atoll(argv[2]) : 256);
    const int samples = timing && argc >= 4 ? atoi(argv[3]) : 31;
    const char *only_loop = timing && argc >= 5 ? argv[4] : 0;
    const char *only_var = timing && argc >= 6 ? argv[5] : 0;
    const size_t n = (size_t)ng * ND_GROUP;
    xf = aligned_alloc(64, 4 * n); of = aligned_alloc(64, 4 * n);
    xd = aligned_alloc(64, 8 * n); od = aligned_alloc(64, 8 * n);
    bits = aligned_alloc(64, n / 8 + 64);
    if (!xf || !of || !xd || !od || !bits) return 2;
    for (size_t i = 0; i < n; ++i) { xf[i] = (float)(i % 977) - 400.5f; xd[i] = (double)xf[i]; }
    memset(bits, 0x5a, n / 8);
    const nd_keep_rule r = nd_rule(1234, 2147483648ull);   /* p = 0.5, as the bench */

    if (once) {
        int l = -1, v = -1;
        for (int i = 0; i < NLOOPS; ++i) if (!strcmp(argv[2], loops[i].name)) l = i;
        for (int i = 0; i < 3; ++i) if (!strcmp(argv[3], vnames[i])) v = i;
        if (l < 0 || v < 0 || !loops[l].fn[v] || !runs(v)) {
            fprintf(stderr, "no such loop/variant here\n");
            return 2;
        }
        pass(l, v, ng, 0, &r);
        printf("%s %s %lld groups\n", loops[l].name, vnames[v], (long long)ng);
        return 0;
    }

    /* reps per sample: about 2 ms of work at ~100 ns per group */
    const int reps = (int)(20000 / ng) + 1;
    double *t = malloc(sizeof(double) * (size_t)samples * NLOOPS * 3);
    double *c = malloc(sizeof(double) * (size_t)samples * NLOOPS * 3);
    int64_t g0 = 0;
    for (int s = -2; s < samples; ++s)          /* two warm-up rounds */
        for (int l = 0; l < NLOOPS; ++l)
            for (int v = 0; v < 3; ++v) {
                if (!loops[l].fn[v] || !runs(v)) continue;
                if (only_loop && strcmp(only_loop, loops[l].name)) continue;
                if (only_var && strcmp(only_var, vnames[v])) continue;
                const double f0 = ghz();
                const double a = now();
                for (int k = 0; k < reps; ++k) pass(l, v, ng, g0++, &r);
                const double e = (now() - a) / ((double)reps * (double)ng) * 1e9;
                const double f = 0.5 * (f0 + ghz());
                if (s >= 0) {
                    t[((size_t)l * 3 + (size_t)v) * (size_t)samples + (size_t)s] = e;
                    c[((size_t)l * 3 + (size_t)v) * (size_t)samples + (size_t)s] = e * f;
                }
            }
    printf("ns per 64 values, single thread, %lld groups in L2, %d samples (median [q1, q3]);\n"
           "cycles: each sample times the effective clock of a chain of adds next to it\n",
           (long long)ng, samples);
    for (int l = 0; l < NLOOPS; ++l)
        for (int v = 0; v < 3; ++v) {
            if (!loops[l].fn[v] || !runs(v)) continue;
            if (only_loop && strcmp(only_loop, loops[l].name)) continue;
            if (only_var && strcmp(only_var, vnames[v])) continue;
            double *u = t + ((size_t)l * 3 + (size_t)v) * (size_t)samples;
            double *w = c + ((size_t)l * 3 + (size_t)v) * (size_t)samples;
            qsort(u, (size_t)samples, sizeof(double), cmpd);
            qsort(w, (size_t)samples, sizeof(double), cmpd);
            printf("  %-11s %-8s %8.2f  [%.2f, %.2f] ns  %7.1f  [%.1f, %.1f] cycles\n",
                   loops[l].name, vnames[v], u[samples / 2], u[samples / 4],
                   u[(3 * samples) / 4], w[samples / 2], w[samples / 4], w[(3 * samples) / 4]);
        }
    return 0;
}
