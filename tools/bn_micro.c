/* Single-thread (or OMP_NUM_THREADS) micro-benchmark of the per-channel
 * normalization kernels through their exported entry points (normdrop.h), so
 * the variant this processor selects is the one timed (or the one
 * -DND_FORCE_ISA_LEVEL=0|1|2 pins).  Build it against a source tree with the
 * flags of setup.py:
 *   gcc -O3 -std=c11 -ffp-contract=off -fno-math-errno -fopenmp -Isrc_c
 *       -Inormdrop/include tools/bn_micro.c src_c/nd_norm.c src_c/nd_common.c -lm
 *
 *   bn_micro time OP DTYPE SHAPE [SAMPLES]
 *       minimum and median time of one call of OP over SAMPLES samples (each
 *       the mean of back-to-back calls lasting about 2 ms, after two warm-up
 *       samples), in ms, and the minimum in ns and in cycles per 64 values (at
 *       the fastest of five clocks of a chain of adds);
 *   bn_micro once OP DTYPE SHAPE
 *       one call (for valgrind --tool=callgrind).
 *
 * OP: fwd (nd_norm_train_fwd), moments, normalize, bwd (nd_norm_bwd), reduce
 * (nd_grad_reduce), dx (nd_grad_input, training).  DTYPE: f32 or f64.  SHAPE:
 * NxD (a C-ordered matrix: ND_ROWS) or NxCxHxW (C-ordered NCHW: ND_PLANES).
 * Data: a fixed LCG, values in [-2, 2) * 1.5 + 0.25 (x) and [-2, 2) (dout).
 * Prints a checksum of the outputs so that two builds can be compared.
 */
#define _POSIX_C_SOURCE 200809L   /* clock_gettime under -std=c11 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "normdrop.h"
#include "micro_timing.h"

static double rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t k = *s ^ (*s >> 29);
    k *= 0xBF58476D1CE4E5B9ull;
    return (double)(k >> 11) * 0x1p-53;
}

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* One call of op k (see ops[] in main) on the arrays of main. */
static void call(int k, int f32, const void *x, const void *dy, void *out, const nd_geom *g,
                 double *work, double *st)
{
    const int64_t C = g->c;
    double *mean = st, *var = st + C, *invstd = st + 2 * C, *gamma = st + 3 * C,
           *beta = st + 4 * C, *s1 = st + 5 * C, *s2 = st + 6 * C, *dg = st + 7 * C,
           *db = st + 8 * C;
    const double cnt = (double)(g->n * g->s);
    switch (k) {
    case 0:
        if (f32) nd_norm_train_fwd_f32(x, out, g, gamma, beta, 1e-5, work, mean, var, invstd);
        else nd_norm_train_fwd_f64(x, out, g, gamma, beta, 1e-5, work, mean, var, invstd);
        break;
    case 1:
        if (f32) nd_moments_f32(x, g, work, mean, var);
        else nd_moments_f64(x, g, work, mean, var);
        break;
    case 2:
        if (f32) nd_normalize_f32(x, out, g, mean, invstd, gamma, beta, work);
        else nd_normalize_f64(x, out, g, mean, invstd, gamma, beta, work);
        break;
    case 3:
        if (f32) nd_norm_bwd_f32(dy, x, out, g, mean, invstd, gamma, 1, work, dg, db);
        else nd_norm_bwd_f64(dy, x, out, g, mean, invstd, gamma, 1, work, dg, db);
        break;
    case 4:
        if (f32) nd_grad_reduce_f32(dy, x, g, mean, invstd, gamma, work, s1, s2, dg, db);
        else nd_grad_reduce_f64(dy, x, g, mean, invstd, gamma, work, s1, s2, dg, db);
        break;
    default:
        if (f32) nd_grad_input_f32(dy, x, out, g, mean, invstd, gamma, s1, s2, 1, cnt, work);
        else nd_grad_input_f64(dy, x, out, g, mean, invstd, gamma, s1, s2, 1, cnt, work);
        break;
    }
}

int main(int argc, char **argv)
{
    const int timing = argc >= 5 && !strcmp(argv[1], "time");
    const int once = argc >= 5 && !strcmp(argv[1], "once");
    if (!timing && !once) {
        fprintf(stderr, "usage: %s time|once OP f32|f64 NxD|NxCxHxW [SAMPLES]\n", argv[0]);
        return 2;
    }
    const char *op = argv[2];
    const int f32 = !strcmp(argv[3], "f32");
    long long d[4] = {0, 0, 0, 0};
    const int nd = sscanf(argv[4], "%lldx%lldx%lldx%lld", &d[0], &d[1], &d[2], &d[3]);
    nd_geom g;
    memset(&g, 0, sizeof g);
    if (nd == 2) {
        g.kind = ND_ROWS; g.n = d[0]; g.c = d[1]; g.s = 1; g.sn = d[1]; g.sc = 1; g.ss = 1;
    } else if (nd == 4) {
        g.kind = ND_PLANES; g.n = d[0]; g.c = d[1]; g.s = d[2] * d[3];
        g.sn = g.c * g.s; g.sc = g.s; g.ss = 1;
    } else {
        fprintf(stderr, "bad shape %s\n", argv[4]);
        return 2;
    }
    const int samples = timing && argc >= 6 ? atoi(argv[5]) : 1;
    const size_t n = (size_t)(g.n * g.c * g.s), es = f32 ? 4 : 8;
    const int64_t C = g.c;
    void *x = aligned_alloc(64, n * es + 64), *dy = aligned_alloc(64, n * es + 64);
    void *out = aligned_alloc(64, n * es + 64);
    double *work = malloc(sizeof(double) * (size_t)(2 * C + nd_work_size(&g, 1) + 8));
    double *st = malloc(sizeof(double) * (size_t)(12 * C + 8));
    double *mean = st, *var = st + C, *invstd = st + 2 * C, *gamma = st + 3 * C,
           *beta = st + 4 * C, *s1 = st + 5 * C, *s2 = st + 6 * C, *dg = st + 7 * C,
           *db = st + 8 * C;
    uint64_t seed = 12345;
    for (size_t i = 0; i < n; ++i) {
        const double v = (rnd(&seed) - 0.5) * 4.0 * 1.5 + 0.25, w = (rnd(&seed) - 0.5) * 4.0;
        if (f32) { ((float *)x)[i] = (float)v; ((float *)dy)[i] = (float)w; }
        else { ((double *)x)[i] = v; ((double *)dy)[i] = w; }
    }
    memset(out, 0, n * es);
    for (int64_t c = 0; c < C; ++c) { gamma[c] = 1.0 + 0.01 * (double)c; beta[c] = 0.1 * (double)(c % 7); }
    /* statistics for the ops that take them */
    if (f32) nd_norm_train_fwd_f32(x, out, &g, gamma, beta, 1e-5, work, mean, var, invstd);
    else nd_norm_train_fwd_f64(x, out, &g, gamma, beta, 1e-5, work, mean, var, invstd);
    if (f32) nd_grad_reduce_f32(dy, x, &g, mean, invstd, gamma, work, s1, s2, dg, db);
    else nd_grad_reduce_f64(dy, x, &g, mean, invstd, gamma, work, s1, s2, dg, db);

    int k = -1;
    static const char *ops[] = {"fwd", "moments", "normalize", "bwd", "reduce", "dx"};
    for (int i = 0; i < 6; ++i) if (!strcmp(op, ops[i])) k = i;
    if (k < 0) { fprintf(stderr, "bad op %s\n", op); return 2; }
    /* a sample is `reps` back-to-back calls (about 2 ms of work) and its time
     * their mean, so that no single call's start-up is in it */
    int reps = 1;
    if (!once) {
        const double a0 = now();
        call(k, f32, x, dy, out, &g, work, st);
        const double one = now() - a0;
        reps = one > 0.0 ? (int)(2e-3 / one) : 1000;
        reps = reps < 1 ? 1 : reps > 100000 ? 100000 : reps;
    }
    const int nsamp = once ? 1 : samples + 2;
    double *t = malloc(sizeof(double) * (size_t)nsamp);
    for (int r = 0; r < nsamp; ++r) {
        const double a = now();
        for (int q = 0; q < reps; ++q) call(k, f32, x, dy, out, &g, work, st);
        t[r] = (now() - a) / reps;
    }
    uint64_t h = fnv(out, n * es, 14695981039346656037ull);
    h = fnv(st, sizeof(double) * (size_t)(9 * C), h);
    if (once) {
        printf("%s %s %s once, checksum %016llx\n", op, argv[3], argv[4], (unsigned long long)h);
        return 0;
    }
    qsort(t + 2, (size_t)samples, sizeof(double), cmpd);
    double f[5];
    for (int i = 0; i < 5; ++i) f[i] = ghz();
    qsort(f, 5, sizeof(double), cmpd);
    printf("%-9s %s %-14s min %8.4f ms  median %8.4f ms  %6.2f ns/64 values (%5.1f cycles at"
           " %.2f GHz)  checksum %016llx\n",
           op, argv[3], argv[4], t[2] * 1e3, t[2 + samples / 2] * 1e3,
           t[2] * 1e9 * 64.0 / (double)n, t[2] * f[4] * 1e9 * 64.0 / (double)n, f[4],
           (unsigned long long)h);
    return 0;
}
