/* Prints one FNV-1a digest of the group kernels' outputs (layernorm and
 * groupnorm geometries: rows, planes, channels-last; float32 and float64;
 * every step and composite; streaming on and off; a dout whose dx cancels)
 * over odd shapes and group means far from 0.  tests/test_group_isa_variants.py builds it with the AVX2
 * loops (where the processor has them), with the portable loops only
 * (-DND_GR_PORTABLE) and without multiversioning (-DND_NO_CLONES), and
 * checks that every build prints the same digest. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "normdrop.h"

static uint64_t h = 1469598103934665603ull, st = 1234567;

static void feed(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; ++i) { h ^= b[i]; h *= 1099511628211ull; }
}

static double rnd(void)
{
    st ^= st << 13;
    st ^= st >> 7;
    st ^= st << 17;
    return (double)(st >> 11) * 0x1p-53;
}

int main(void)
{
    if (!nd_isa_runnable()) return 77;   /* a build pinned to a variant this processor lacks */
    /* n, c, s, G, kind */
    static const int64_t shapes[][5] = {
        {7, 5, 1, 1, ND_ROWS},     {33, 300, 1, 1, ND_ROWS},  {301, 37, 1, 1, ND_ROWS},
        {5, 5000, 1, 1, ND_ROWS},  {9, 1030, 1, 1, ND_ROWS},  {30, 12, 1, 4, ND_ROWS},
        {13, 600, 1, 1, ND_ROWS},  /* rows the backward prefetches, float32 and float64 */
        {2, 6, 35, 3, ND_PLANES},  {3, 16, 131, 8, ND_PLANES}, {2, 4, 2500, 2, ND_PLANES},
        {2, 6, 35, 3, ND_CLAST},   {3, 64, 10, 8, ND_CLAST},  {2, 160, 15, 80, ND_CLAST},
        /* channels-last runs of 64 and 32 channels (the row loops' lanes of a group),
         * in several float32 statistics units */
        {2, 128, 70, 2, ND_CLAST}, {2, 96, 30, 3, ND_CLAST}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; ++si) {
        const int64_t n = shapes[si][0], c = shapes[si][1], s = shapes[si][2], G = shapes[si][3];
        nd_geom g = {shapes[si][4], n, c, s, 0, 0, 0, G};
        if (g.kind == ND_ROWS) { g.sn = c; g.sc = 1; g.ss = 1; }
        else if (g.kind == ND_PLANES) { g.sn = c * s; g.sc = s; g.ss = 1; }
        else { g.sn = c * s; g.sc = 1; g.ss = c; }
        const int64_t tot = n * c * s, ng = nd_ngroups(&g);
        double *gm = malloc(8 * c), *bt = malloc(8 * c), *mean = malloc(8 * ng),
               *m2 = malloc(8 * ng), *var = malloc(8 * ng), *inv = malloc(8 * ng),
               *s1 = malloc(8 * ng), *s2 = malloc(8 * ng), *dg = malloc(8 * c),
               *db = malloc(8 * c), *work = malloc(8 * nd_work_size(&g, 1));
        float *xf = malloc(4 * tot), *df = malloc(4 * tot), *of = malloc(4 * tot);
        double *xd = malloc(8 * tot), *dd = malloc(8 * tot), *od = malloc(8 * tot);
        if (!gm || !bt || !mean || !m2 || !var || !inv || !s1 || !s2 || !dg || !db || !work ||
            !xf || !df || !of || !xd || !dd || !od)
            return 2;
        for (int64_t k = 0; k < c; ++k) { gm[k] = 0.5 + rnd(); bt[k] = rnd() - 0.5; }
        for (int64_t i = 0; i < tot; ++i) {
            const double ctr = i % 3 == 0 ? 1e4 : i % 3 == 1 ? -3e2 : 0.0;
            xd[i] = ctr + 3 * (rnd() - 0.5);
            dd[i] = rnd() - 0.5;
            xf[i] = (float)xd[i];
            df[i] = (float)dd[i];
        }
        for (int pass = 0; pass < 3; ++pass) {
            /* pass 2: dout = 1 / gamma, so that gamma dout - s1 / M cancels to
             * the last bits and dx shows any change in the order of its terms */
            if (pass == 2)
                for (int64_t i = 0; i < tot; ++i) {
                    const int64_t ch = g.kind == ND_PLANES ? (i / s) % c : i % c;
                    dd[i] = 1.0 / gm[ch];
                    df[i] = (float)dd[i];
                }
            nd_set_stream_bytes(pass == 1 ? 0 : (int64_t)1 << 62);
            nd_norm_train_fwd_f32(xf, of, &g, gm, bt, 1e-5, work, mean, var, inv);
            feed(of, 4 * tot); feed(mean, 8 * ng); feed(inv, 8 * ng);
            nd_moments_f32(xf, &g, work, mean, m2);
            feed(m2, 8 * ng);
            nd_normalize_f32(xf, of, &g, mean, inv, gm, bt, work);
            feed(of, 4 * tot);
            nd_norm_bwd_f32(df, xf, of, &g, mean, inv, gm, 1, work, dg, db);
            feed(of, 4 * tot); feed(dg, 8 * c); feed(db, 8 * c);
            nd_grad_reduce_f32(df, xf, &g, mean, inv, gm, work, s1, s2, dg, db);
            feed(s1, 8 * ng); feed(s2, 8 * ng);
            nd_grad_input_f32(df, xf, of, &g, mean, inv, gm, s1, s2, 1, (double)(c / G * s),
                              work);
            feed(of, 4 * tot);
            nd_norm_train_fwd_f64(xd, od, &g, gm, bt, 1e-5, work, mean, var, inv);
            feed(od, 8 * tot); feed(mean, 8 * ng); feed(inv, 8 * ng);
            nd_norm_bwd_f64(dd, xd, od, &g, mean, inv, gm, 1, work, dg, db);
            feed(od, 8 * tot); feed(dg, 8 * c); feed(db, 8 * c);
            nd_grad_reduce_f64(dd, xd, &g, mean, inv, gm, work, s1, s2, dg, db);
            feed(s1, 8 * ng); feed(s2, 8 * ng);
        }
        free(gm); free(bt); free(mean); free(m2); free(var); free(inv); free(s1); free(s2);
        free(dg); free(db); free(work); free(xf); free(df); free(of); free(xd); free(dd); free(od);
    }
    printf("%016llx\n", (unsigned long long)h);
    return 0;
}
