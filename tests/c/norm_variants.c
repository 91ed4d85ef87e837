/* Prints one FNV-1a digest of the per-channel normalization kernels' outputs
 * (batchnorm and spatial batchnorm: moments, normalize, the training
 * forward, grad_reduce, grad_input in training and test mode, the backward)
 * for float32 and float64, over shapes that exercise every loop and its tails
 * (row units and blocks, channel tiles, planes shorter and longer than a
 * segment, the fused and unfused spatial paths), data far from and near 0,
 * non-finite values, and streaming stores on and off.
 * tests/test_norm_variants.py builds it once per variant of the per-channel
 * loops (-DND_FORCE_ISA_LEVEL=0 generic, 1 avx2, 2 avx512) and checks that
 * every variant the processor can run prints the same digest.  NaNs are
 * hashed as one value: which NaN an operation returns when two NaN operands
 * meet follows the operand order the compiler picks, in any variant.
 * Exit status 77: this processor cannot run the forced variant. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "normdrop.h"

static uint64_t h = 1469598103934665603ull;

static void feed(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; ++i) { h ^= b[i]; h *= 1099511628211ull; }
}

static void feed_f32(const float *p, int64_t n)
{
    for (int64_t i = 0; i < n; ++i) {
        const float v = p[i] != p[i] ? NAN : p[i];
        feed(&v, sizeof v);
    }
}

static void feed_f64(const double *p, int64_t n)
{
    for (int64_t i = 0; i < n; ++i) {
        const double v = p[i] != p[i] ? NAN : p[i];
        feed(&v, sizeof v);
    }
}

static uint64_t lcg = 88172645463325252ull;

static double rnd(void)   /* in [0, 1) */
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg >> 11) * 0x1p-53;
}

/* Every per-channel kernel of one dtype (SFX: f32 or f64) on x, dout d and
 * output o, in run()'s scope; each result fed to the digest. */
#define RUN_KERNELS(SFX, x, d, o)                                                          \
    do {                                                                                   \
        nd_moments_##SFX(x, &g, work, mean, var);                                          \
        feed_f64(mean, C); feed_f64(var, C);                                               \
        nd_norm_train_fwd_##SFX(x, o, &g, gam, bet, 1e-5, work, mean, var, inv);           \
        feed_##SFX(o, nv); feed_f64(mean, 3 * C);                                          \
        nd_normalize_##SFX(x, o, &g, mean, inv, gam, bet, work);                           \
        feed_##SFX(o, nv);                                                                 \
        nd_grad_reduce_##SFX(d, x, &g, mean, inv, gam, work, s1, s2, dg, db);              \
        feed_f64(s1, C); feed_f64(s2, C); feed_f64(dg, C); feed_f64(db, C);                \
        for (int train = 0; train < 2; ++train) {                                          \
            nd_grad_input_##SFX(d, x, o, &g, mean, inv, gam, s1, s2, train,                \
                                (double)(g.n * g.s), work);                                \
            feed_##SFX(o, nv);                                                             \
            nd_norm_bwd_##SFX(d, x, o, &g, mean, inv, gam, train, work, dg, db);           \
            feed_##SFX(o, nv); feed_f64(dg, C); feed_f64(db, C);                           \
        }                                                                                  \
    } while (0)

/* One shape: rows (n, c) when s == 0, else NCHW planes (n, c, s). */
static void run(int64_t n, int64_t c, int64_t s, double loc, int special)
{
    nd_geom g;
    memset(&g, 0, sizeof g);
    if (s == 0) {
        g.kind = ND_ROWS; g.n = n; g.c = c; g.s = 1; g.sn = c; g.sc = 1; g.ss = 1;
    } else {
        g.kind = ND_PLANES; g.n = n; g.c = c; g.s = s; g.sn = c * s; g.sc = s; g.ss = 1;
    }
    const int64_t nv = g.n * g.c * g.s, C = g.c;
    float *xf = malloc(sizeof(float) * nv + 64), *df = malloc(sizeof(float) * nv + 64);
    double *xd = malloc(sizeof(double) * nv + 64), *dd = malloc(sizeof(double) * nv + 64);
    void *ob = aligned_alloc(64, sizeof(double) * nv + 64);
    double *work = malloc(sizeof(double) * (size_t)(nd_work_size(&g, 1) + 2 * C + 8));
    double *st = malloc(sizeof(double) * (size_t)(12 * C + 8));
    if (!xf || !df || !xd || !dd || !ob || !work || !st) exit(2);
    double *mean = st, *var = st + C, *inv = st + 2 * C, *gam = st + 3 * C, *bet = st + 4 * C;
    double *s1 = st + 5 * C, *s2 = st + 6 * C, *dg = st + 7 * C, *db = st + 8 * C;
    for (int64_t i = 0; i < nv; ++i) {
        xd[i] = loc + (rnd() - 0.5) * 4.0;
        dd[i] = (rnd() - 0.5) * 2.0;
        xf[i] = (float)xd[i];
        df[i] = (float)dd[i];
    }
    if (special && nv > 8) {   /* non-finite values in a few channels */
        xf[1] = xd[1] = INFINITY;
        xf[nv - 1] = xd[nv - 1] = NAN;
        xf[nv / 2] = xd[nv / 2] = -INFINITY;
        df[3] = dd[3] = NAN;
    }
    for (int64_t k = 0; k < C; ++k) { gam[k] = 1.0 + 0.01 * (double)k; bet[k] = 0.1 * (double)(k % 5); }
    float *of = ob;
    double *od = ob;

    RUN_KERNELS(f32, xf, df, of);
    RUN_KERNELS(f64, xd, dd, od);
    free(xf); free(df); free(xd); free(dd); free(ob); free(work); free(st);
}

int main(void)
{
#if defined(ND_FORCE_ISA_LEVEL) && (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    __builtin_cpu_init();
    if (ND_FORCE_ISA_LEVEL >= 1 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 77;
    if (ND_FORCE_ISA_LEVEL >= 2 &&
        !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("bmi2")))
        return 77;
#endif
    /* rows (s == 0) and planes: tails of every loop (channels mod 16, 8, 4;
     * rows mod 4, 2; lanes mod 32), several row blocks and channel tiles,
     * segments (planes of 16384 values or more), few and many channels */
    static const int64_t shapes[][3] = {
        {2, 1, 0},    {7, 5, 0},     {33, 300, 0},  {130, 257, 0}, {3001, 13, 0},
        {5, 1030, 0}, {129, 19, 0},  {64, 256, 0},  {2, 3, 35},    {3, 9, 1},
        {2, 2, 1640}, {9, 16, 1640}, {1, 3, 16900}, {40, 4, 2},    {3, 1, 35},
        {5, 12, 97},
    };
    for (int stream = 0; stream < 2; ++stream) {
        nd_set_stream_bytes(stream ? 0 : ((int64_t)1 << 62));
        for (size_t k = 0; k < sizeof shapes / sizeof *shapes; ++k) {
            run(shapes[k][0], shapes[k][1], shapes[k][2], 0.25, 0);
            run(shapes[k][0], shapes[k][1], shapes[k][2], 3000.0, 0);
            run(shapes[k][0], shapes[k][1], shapes[k][2], 0.0, 1);
        }
    }
    printf("%016llx\n", (unsigned long long)h);
    return 0;
}
