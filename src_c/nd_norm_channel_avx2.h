/* nd_norm_channel_avx2.h -- the avx2 variant's float32 inner loops of the
 * per-channel steps, written with AVX2/FMA intrinsics.  Included by
 * nd_norm_channel_loops.h (ND_V avx2, T float) in place of its portable loops
 * of the same names; each computes, value for value, the operations of the
 * portable loop in the same order.
 *
 * Why by hand: these loops convert every float to double.  GCC vectorizes
 * them by loading 8 floats and converting the two halves from registers
 * (vextractf128 + vcvtps2pd ymm, xmm), which on AMD's Zen cores takes issue
 * slots of the FMA pipes too; here each group of 4 floats is converted
 * straight from memory (vcvtps2pd ymm, m128), and the additions of the sums
 * are issued as fma(v, 1, acc) (ND_ADD4, the same rounding as v + acc) to the
 * FMA pipes, while the conversions and subtractions use the adding pipes.
 * Accumulators of several channels are updated row by row in one iteration
 * (rows interleaved), so that independent sums are in flight together. */

#define ND_CVT4(p) _mm256_cvtps_pd(_mm_loadu_ps(p))    /* 4 floats at p, as doubles (exact) */
#define ND_ADD4(v, acc) _mm256_fmadd_pd((v), one, (acc))   /* v + acc, rounded once */
#define ND_LD4(p) _mm256_loadu_pd(p)
#define ND_ST4(p, v) _mm256_storeu_pd((p), (v))

/* (mean, M2) of one ND_ROWS unit (see the portable nd_rows_stats_unit):
 * 16 channels x 4 rows per iteration, then 4 channels, then one; the mean
 * pass prefetches each line's ND_PF_ROWS rows on (the 4096 x 1024 forward
 * took 0.92-0.95x the time, AMD Zen 3, 2 threads), the M2 pass the line
 * `next` values on of each line it reads. */
#define ND_PF_ROWS 8
ND_V_ATTR
static void FV(nd_rows_stats_unit)(const float *x, int64_t sn, int64_t r0, int64_t r1,
                                   int64_t c0, int64_t w, double *wk, int64_t next)
{
    double acc[ND_SWEEP], m[ND_SWEEP];
    const __m256d one = _mm256_set1_pd(1.0);
    const float *base = x + c0;
    const int64_t w16 = w & ~(int64_t)15, w4 = w & ~(int64_t)3;
    for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *p0 = base + r * sn, *p1 = p0 + sn, *p2 = p1 + sn, *p3 = p2 + sn;
        /* the same lines ND_PF_ROWS rows on, while they are the unit's */
        const int64_t ah = r + 4 + ND_PF_ROWS <= r1 ? ND_PF_ROWS * sn : 0;
        int64_t j = 0;
        for (; j < w16; j += 16) {
            if (ah) {
                ND_PREFETCH_L2(p0 + j + ah);
                ND_PREFETCH_L2(p1 + j + ah);
                ND_PREFETCH_L2(p2 + j + ah);
                ND_PREFETCH_L2(p3 + j + ah);
            }
            __m256d a0 = ND_LD4(acc + j), a1 = ND_LD4(acc + j + 4);
            __m256d a2 = ND_LD4(acc + j + 8), a3 = ND_LD4(acc + j + 12);
            a0 = ND_ADD4(ND_CVT4(p0 + j), a0);      a1 = ND_ADD4(ND_CVT4(p0 + j + 4), a1);
            a2 = ND_ADD4(ND_CVT4(p0 + j + 8), a2);  a3 = ND_ADD4(ND_CVT4(p0 + j + 12), a3);
            a0 = ND_ADD4(ND_CVT4(p1 + j), a0);      a1 = ND_ADD4(ND_CVT4(p1 + j + 4), a1);
            a2 = ND_ADD4(ND_CVT4(p1 + j + 8), a2);  a3 = ND_ADD4(ND_CVT4(p1 + j + 12), a3);
            a0 = ND_ADD4(ND_CVT4(p2 + j), a0);      a1 = ND_ADD4(ND_CVT4(p2 + j + 4), a1);
            a2 = ND_ADD4(ND_CVT4(p2 + j + 8), a2);  a3 = ND_ADD4(ND_CVT4(p2 + j + 12), a3);
            a0 = ND_ADD4(ND_CVT4(p3 + j), a0);      a1 = ND_ADD4(ND_CVT4(p3 + j + 4), a1);
            a2 = ND_ADD4(ND_CVT4(p3 + j + 8), a2);  a3 = ND_ADD4(ND_CVT4(p3 + j + 12), a3);
            ND_ST4(acc + j, a0); ND_ST4(acc + j + 4, a1);
            ND_ST4(acc + j + 8, a2); ND_ST4(acc + j + 12, a3);
        }
        for (; j < w4; j += 4) {
            __m256d a = ND_LD4(acc + j);
            a = ND_ADD4(ND_CVT4(p0 + j), a);
            a = ND_ADD4(ND_CVT4(p1 + j), a);
            a = ND_ADD4(ND_CVT4(p2 + j), a);
            a = ND_ADD4(ND_CVT4(p3 + j), a);
            ND_ST4(acc + j, a);
        }
        FN(nd_sum_rows4)(acc, p0, p1, p2, p3, j, w);
    }
    for (; r < r1; ++r) {
        const float *p = base + r * sn;
        int64_t j = 0;
        for (; j < w4; j += 4) ND_ST4(acc + j, ND_ADD4(ND_CVT4(p + j), ND_LD4(acc + j)));
        FN(nd_sum_row)(acc, p, j, w);
    }
    const double cnt = (double)(r1 - r0);
    for (int64_t j = 0; j < w; ++j) { m[j] = acc[j] / cnt; acc[j] = 0.0; }
    r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *p0 = base + r * sn, *p1 = p0 + sn, *p2 = p1 + sn, *p3 = p2 + sn;
        int64_t j = 0;
        for (; j < w16; j += 16) {
            const __m256d m0 = ND_LD4(m + j), m1 = ND_LD4(m + j + 4);
            const __m256d m2 = ND_LD4(m + j + 8), m3 = ND_LD4(m + j + 12);
            __m256d a0 = ND_LD4(acc + j), a1 = ND_LD4(acc + j + 4);
            __m256d a2 = ND_LD4(acc + j + 8), a3 = ND_LD4(acc + j + 12);
            __m256d d0, d1, d2, d3;
            if (next) {
                ND_PREFETCH_L2(p0 + j + next);
                ND_PREFETCH_L2(p1 + j + next);
                ND_PREFETCH_L2(p2 + j + next);
                ND_PREFETCH_L2(p3 + j + next);
            }
#define ND_ROW4(p)                                                                          \
    d0 = _mm256_sub_pd(ND_CVT4((p) + j), m0);      d1 = _mm256_sub_pd(ND_CVT4((p) + j + 4), m1);  \
    d2 = _mm256_sub_pd(ND_CVT4((p) + j + 8), m2);  d3 = _mm256_sub_pd(ND_CVT4((p) + j + 12), m3); \
    a0 = ND_ADD4(_mm256_mul_pd(d0, d0), a0);       a1 = ND_ADD4(_mm256_mul_pd(d1, d1), a1);       \
    a2 = ND_ADD4(_mm256_mul_pd(d2, d2), a2);       a3 = ND_ADD4(_mm256_mul_pd(d3, d3), a3);
            ND_ROW4(p0)
            ND_ROW4(p1)
            ND_ROW4(p2)
            ND_ROW4(p3)
#undef ND_ROW4
            ND_ST4(acc + j, a0); ND_ST4(acc + j + 4, a1);
            ND_ST4(acc + j + 8, a2); ND_ST4(acc + j + 12, a3);
        }
        for (; j < w4; j += 4) {
            const __m256d mv = ND_LD4(m + j);
            __m256d a = ND_LD4(acc + j), d;
            d = _mm256_sub_pd(ND_CVT4(p0 + j), mv); a = ND_ADD4(_mm256_mul_pd(d, d), a);
            d = _mm256_sub_pd(ND_CVT4(p1 + j), mv); a = ND_ADD4(_mm256_mul_pd(d, d), a);
            d = _mm256_sub_pd(ND_CVT4(p2 + j), mv); a = ND_ADD4(_mm256_mul_pd(d, d), a);
            d = _mm256_sub_pd(ND_CVT4(p3 + j), mv); a = ND_ADD4(_mm256_mul_pd(d, d), a);
            ND_ST4(acc + j, a);
        }
        FN(nd_sqdev_rows4)(acc, m, p0, p1, p2, p3, j, w);
    }
    for (; r < r1; ++r) {
        const float *p = base + r * sn;
        int64_t j = 0;
        for (; j < w4; j += 4) {
            const __m256d d = _mm256_sub_pd(ND_CVT4(p + j), ND_LD4(m + j));
            ND_ST4(acc + j, ND_ADD4(_mm256_mul_pd(d, d), ND_LD4(acc + j)));
        }
        FN(nd_sqdev_row)(acc, m, p, j, w);
    }
    for (int64_t j = 0; j < w; ++j) { wk[2 * j] = m[j]; wk[2 * j + 1] = acc[j]; }
}

/* (sum dout, sum dout * (x - mean)) of one ND_ROWS unit (see the portable
 * nd_rows_reduce_unit): 8 channels x 4 rows per iteration, then 4, then one. */
ND_V_ATTR
static void FV(nd_rows_reduce_unit)(const float *dout, const float *x, int64_t sn, int64_t r0,
                                    int64_t r1, int64_t c0, int64_t w, const double *mean,
                                    double *wk)
{
    double a[ND_SWEEP], b[ND_SWEEP];
    const __m256d one = _mm256_set1_pd(1.0);
    const double *m = mean + c0;
    const int64_t w8 = w & ~(int64_t)7, w4 = w & ~(int64_t)3;
    for (int64_t j = 0; j < w; ++j) { a[j] = 0.0; b[j] = 0.0; }
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *d0 = dout + r * sn + c0, *x0 = x + r * sn + c0;
        int64_t j = 0;
        for (; j < w8; j += 8) {
            const __m256d m0 = ND_LD4(m + j), m1 = ND_LD4(m + j + 4);
            __m256d sa0 = ND_LD4(a + j), sa1 = ND_LD4(a + j + 4);
            __m256d sb0 = ND_LD4(b + j), sb1 = ND_LD4(b + j + 4);
            for (int k = 0; k < 4; ++k) {
                const float *dk = d0 + k * sn, *xk = x0 + k * sn;
                const __m256d g0 = ND_CVT4(dk + j), g1 = ND_CVT4(dk + j + 4);
                sa0 = ND_ADD4(g0, sa0);
                sa1 = ND_ADD4(g1, sa1);
                sb0 = ND_ADD4(_mm256_mul_pd(g0, _mm256_sub_pd(ND_CVT4(xk + j), m0)), sb0);
                sb1 = ND_ADD4(_mm256_mul_pd(g1, _mm256_sub_pd(ND_CVT4(xk + j + 4), m1)), sb1);
            }
            ND_ST4(a + j, sa0); ND_ST4(a + j + 4, sa1);
            ND_ST4(b + j, sb0); ND_ST4(b + j + 4, sb1);
        }
        for (; j < w4; j += 4) {
            const __m256d mv = ND_LD4(m + j);
            __m256d sa = ND_LD4(a + j), sb = ND_LD4(b + j);
            for (int k = 0; k < 4; ++k) {
                const __m256d g = ND_CVT4(d0 + k * sn + j);
                sa = ND_ADD4(g, sa);
                sb = ND_ADD4(_mm256_mul_pd(g, _mm256_sub_pd(ND_CVT4(x0 + k * sn + j), mv)), sb);
            }
            ND_ST4(a + j, sa); ND_ST4(b + j, sb);
        }
        for (; j < w; ++j) {
            const double mj = m[j];
            double sa = a[j], sb = b[j];
            for (int k = 0; k < 4; ++k) {
                const double g = (double)d0[k * sn + j];
                sa += g;
                sb += g * ((double)x0[k * sn + j] - mj);
            }
            a[j] = sa; b[j] = sb;
        }
    }
    for (; r < r1; ++r) {
        const float *dr = dout + r * sn + c0, *xr = x + r * sn + c0;
        int64_t j = 0;
        for (; j < w4; j += 4) {
            const __m256d g = ND_CVT4(dr + j);
            ND_ST4(a + j, ND_ADD4(g, ND_LD4(a + j)));
            ND_ST4(b + j, ND_ADD4(_mm256_mul_pd(g, _mm256_sub_pd(ND_CVT4(xr + j), ND_LD4(m + j))),
                                  ND_LD4(b + j)));
        }
        for (; j < w; ++j) {
            const double g = (double)dr[j];
            a[j] += g;
            b[j] += g * ((double)xr[j] - m[j]);
        }
    }
    for (int64_t j = 0; j < w; ++j) { wk[2 * j] = a[j]; wk[2 * j + 1] = b[j]; }
}

/* 4 values of dx: a * dout + b * (x - m) + e, rounded to float. */
#define ND_DX4(dp, xp, mv, av, bv, ev)                                                      \
    _mm256_cvtpd_ps(ND_ADD4(ND_ADD4(_mm256_mul_pd((av), ND_CVT4(dp)),                       \
                                    _mm256_mul_pd((bv), _mm256_sub_pd(ND_CVT4(xp), (mv)))), \
                            (ev)))

/* dx = a * dout + b * (x - mean) + e on rows [r0, r1), channels [c0, c0 + w)
 * (see the portable nd_rows_dx): two rows per load of the coefficients. */
ND_V_ATTR
static void FV(nd_rows_dx)(const float *dout, const float *x, float *dx, int64_t sn, int64_t r0,
                           int64_t r1, int64_t c0, int64_t w, const double *mean, const double *a,
                           const double *b, const double *e, int st)
{
    const __m256d one = _mm256_set1_pd(1.0);
    const double *m = mean + c0, *ac = a + c0, *bc = b + c0, *ec = e + c0;
    const int64_t w4 = w & ~(int64_t)3;
    if (!st) {
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) {
            const int64_t off = r * sn + c0;
            const float *d0 = dout + off, *d1 = d0 + sn, *x0 = x + off, *x1 = x0 + sn;
            float *o0 = dx + off, *o1 = o0 + sn;
            int64_t j = 0;
            for (; j < w4; j += 4) {
                const __m256d mv = ND_LD4(m + j), av = ND_LD4(ac + j);
                const __m256d bv = ND_LD4(bc + j), ev = ND_LD4(ec + j);
                _mm_storeu_ps(o0 + j, ND_DX4(d0 + j, x0 + j, mv, av, bv, ev));
                _mm_storeu_ps(o1 + j, ND_DX4(d1 + j, x1 + j, mv, av, bv, ev));
            }
            for (; j < w; ++j) {
                o0[j] = (float)(ac[j] * (double)d0[j] + bc[j] * ((double)x0[j] - m[j]) + ec[j]);
                o1[j] = (float)(ac[j] * (double)d1[j] + bc[j] * ((double)x1[j] - m[j]) + ec[j]);
            }
        }
        for (; r < r1; ++r) {
            const int64_t off = r * sn + c0;
            const float *dr = dout + off, *xr = x + off;
            float *o = dx + off;
            int64_t j = 0;
            for (; j < w4; j += 4)
                _mm_storeu_ps(o + j, ND_DX4(dr + j, xr + j, ND_LD4(m + j), ND_LD4(ac + j),
                                            ND_LD4(bc + j), ND_LD4(ec + j)));
            for (; j < w; ++j)
                o[j] = (float)(ac[j] * (double)dr[j] + bc[j] * ((double)xr[j] - m[j]) + ec[j]);
        }
        return;
    }
    float buf[ND_SCH];
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = r * sn + c0;
        const float *dr = dout + off, *xr = x + off;
        float *o = dx + off;
        for (int64_t j0 = 0; j0 < w; j0 += ND_SCH) {
            const int64_t len = nd_min64(ND_SCH, w - j0), len4 = len & ~(int64_t)3;
            int64_t j = 0;
            for (; j < len4; j += 4) {
                const int64_t k = j0 + j;
                _mm_storeu_ps(buf + j, ND_DX4(dr + k, xr + k, ND_LD4(m + k), ND_LD4(ac + k),
                                              ND_LD4(bc + k), ND_LD4(ec + k)));
            }
            for (; j < len; ++j) {
                const int64_t k = j0 + j;
                buf[j] = (float)(ac[k] * (double)dr[k] + bc[k] * ((double)xr[k] - m[k]) + ec[k]);
            }
            nd_stream_copy(o + j0, buf, (size_t)len * sizeof(float));
        }
    }
    nd_stream_fence();
}

/* (mean, M2) of one ND_PLANES unit (see the portable nd_unit_stats): the
 * ND_LANES = 32 lanes in 8 vectors while a plane lasts, in a[] between
 * planes (and for a plane's last values). */
ND_V_ATTR
static void FV(nd_unit_stats)(const float *p, int64_t sn, int64_t np, int64_t len, double *mean,
                              double *m2)
{
    double a[ND_LANES];
    const __m256d one = _mm256_set1_pd(1.0);
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    for (int64_t j = 0; j < np; ++j) {
        const float *q = p + j * sn;
        int64_t i = 0;
        if (len >= ND_LANES) {
            __m256d a0 = ND_LD4(a), a1 = ND_LD4(a + 4), a2 = ND_LD4(a + 8), a3 = ND_LD4(a + 12);
            __m256d a4 = ND_LD4(a + 16), a5 = ND_LD4(a + 20), a6 = ND_LD4(a + 24);
            __m256d a7 = ND_LD4(a + 28);
            for (; i + ND_LANES <= len; i += ND_LANES) {
                a0 = ND_ADD4(ND_CVT4(q + i), a0);       a1 = ND_ADD4(ND_CVT4(q + i + 4), a1);
                a2 = ND_ADD4(ND_CVT4(q + i + 8), a2);   a3 = ND_ADD4(ND_CVT4(q + i + 12), a3);
                a4 = ND_ADD4(ND_CVT4(q + i + 16), a4);  a5 = ND_ADD4(ND_CVT4(q + i + 20), a5);
                a6 = ND_ADD4(ND_CVT4(q + i + 24), a6);  a7 = ND_ADD4(ND_CVT4(q + i + 28), a7);
            }
            ND_ST4(a, a0); ND_ST4(a + 4, a1); ND_ST4(a + 8, a2); ND_ST4(a + 12, a3);
            ND_ST4(a + 16, a4); ND_ST4(a + 20, a5); ND_ST4(a + 24, a6); ND_ST4(a + 28, a7);
        }
        for (int k = 0; i + k < len; ++k) a[k] += (double)q[i + k];
    }
    const double m = nd_lanes_sum(a) / (double)(np * len);
    const __m256d mv = _mm256_set1_pd(m);
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    for (int64_t j = 0; j < np; ++j) {
        const float *q = p + j * sn;
        int64_t i = 0;
        if (len >= ND_LANES) {
            __m256d a0 = ND_LD4(a), a1 = ND_LD4(a + 4), a2 = ND_LD4(a + 8), a3 = ND_LD4(a + 12);
            __m256d a4 = ND_LD4(a + 16), a5 = ND_LD4(a + 20), a6 = ND_LD4(a + 24);
            __m256d a7 = ND_LD4(a + 28);
            __m256d d0, d1, d2, d3;
            for (; i + ND_LANES <= len; i += ND_LANES) {
                d0 = _mm256_sub_pd(ND_CVT4(q + i), mv);      d1 = _mm256_sub_pd(ND_CVT4(q + i + 4), mv);
                d2 = _mm256_sub_pd(ND_CVT4(q + i + 8), mv);  d3 = _mm256_sub_pd(ND_CVT4(q + i + 12), mv);
                a0 = ND_ADD4(_mm256_mul_pd(d0, d0), a0);     a1 = ND_ADD4(_mm256_mul_pd(d1, d1), a1);
                a2 = ND_ADD4(_mm256_mul_pd(d2, d2), a2);     a3 = ND_ADD4(_mm256_mul_pd(d3, d3), a3);
                d0 = _mm256_sub_pd(ND_CVT4(q + i + 16), mv); d1 = _mm256_sub_pd(ND_CVT4(q + i + 20), mv);
                d2 = _mm256_sub_pd(ND_CVT4(q + i + 24), mv); d3 = _mm256_sub_pd(ND_CVT4(q + i + 28), mv);
                a4 = ND_ADD4(_mm256_mul_pd(d0, d0), a4);     a5 = ND_ADD4(_mm256_mul_pd(d1, d1), a5);
                a6 = ND_ADD4(_mm256_mul_pd(d2, d2), a6);     a7 = ND_ADD4(_mm256_mul_pd(d3, d3), a7);
            }
            ND_ST4(a, a0); ND_ST4(a + 4, a1); ND_ST4(a + 8, a2); ND_ST4(a + 12, a3);
            ND_ST4(a + 16, a4); ND_ST4(a + 20, a5); ND_ST4(a + 24, a6); ND_ST4(a + 28, a7);
        }
        for (int k = 0; i + k < len; ++k) {
            const double d = (double)q[i + k] - m;
            a[k] += d * d;
        }
    }
    *mean = m;
    *m2 = nd_lanes_sum(a);
}

/* Sums of dy and dy * (x - m) over one ND_PLANES unit (see the portable
 * nd_unit_dsum): 16 lanes of each sum per half-iteration, in a[] and b[]
 * between halves and planes. */
ND_V_ATTR
static void FV(nd_unit_dsum)(const float *dy, const float *x, int64_t sn, int64_t np, int64_t len,
                             double m, double *sdy, double *sdyxm)
{
    double a[ND_LANES], b[ND_LANES];
    const __m256d one = _mm256_set1_pd(1.0), mv = _mm256_set1_pd(m);
    for (int k = 0; k < ND_LANES; ++k) { a[k] = 0.0; b[k] = 0.0; }
    for (int64_t j = 0; j < np; ++j) {
        const float *dq = dy + j * sn, *xq = x + j * sn;
        const int64_t full = len - len % ND_LANES;
        /* lanes 0-15, then lanes 16-31, over the plane's full blocks of 32 */
        for (int h = 0; h < ND_LANES && full > 0; h += 16) {
            __m256d sa0 = ND_LD4(a + h), sa1 = ND_LD4(a + h + 4), sa2 = ND_LD4(a + h + 8);
            __m256d sa3 = ND_LD4(a + h + 12);
            __m256d sb0 = ND_LD4(b + h), sb1 = ND_LD4(b + h + 4), sb2 = ND_LD4(b + h + 8);
            __m256d sb3 = ND_LD4(b + h + 12);
            for (int64_t i = h; i < full; i += ND_LANES) {
                const __m256d g0 = ND_CVT4(dq + i), g1 = ND_CVT4(dq + i + 4);
                const __m256d g2 = ND_CVT4(dq + i + 8), g3 = ND_CVT4(dq + i + 12);
                sa0 = ND_ADD4(g0, sa0); sa1 = ND_ADD4(g1, sa1);
                sa2 = ND_ADD4(g2, sa2); sa3 = ND_ADD4(g3, sa3);
                sb0 = ND_ADD4(_mm256_mul_pd(g0, _mm256_sub_pd(ND_CVT4(xq + i), mv)), sb0);
                sb1 = ND_ADD4(_mm256_mul_pd(g1, _mm256_sub_pd(ND_CVT4(xq + i + 4), mv)), sb1);
                sb2 = ND_ADD4(_mm256_mul_pd(g2, _mm256_sub_pd(ND_CVT4(xq + i + 8), mv)), sb2);
                sb3 = ND_ADD4(_mm256_mul_pd(g3, _mm256_sub_pd(ND_CVT4(xq + i + 12), mv)), sb3);
            }
            ND_ST4(a + h, sa0); ND_ST4(a + h + 4, sa1); ND_ST4(a + h + 8, sa2);
            ND_ST4(a + h + 12, sa3);
            ND_ST4(b + h, sb0); ND_ST4(b + h + 4, sb1); ND_ST4(b + h + 8, sb2);
            ND_ST4(b + h + 12, sb3);
        }
        for (int k = 0; full + k < len; ++k) {
            const double g = (double)dq[full + k];
            a[k] += g;
            b[k] += g * ((double)xq[full + k] - m);
        }
    }
    *sdy = nd_lanes_sum(a);
    *sdyxm = nd_lanes_sum(b);
}

/* o[s] = ac * dp[s] + bc * (xp[s] - m) + ec, s < S (see the portable
 * nd_plane_dx). */
ND_V_ATTR
static void FV(nd_plane_dx)(const float *dp, const float *xp, float *o, int64_t S, double m,
                            double ac, double bc, double ec, int st)
{
    const __m256d one = _mm256_set1_pd(1.0), mv = _mm256_set1_pd(m), av = _mm256_set1_pd(ac);
    const __m256d bv = _mm256_set1_pd(bc), ev = _mm256_set1_pd(ec);
    if (!st) {
        const int64_t S4 = S & ~(int64_t)3;
        int64_t s = 0;
        for (; s < S4; s += 4) _mm_storeu_ps(o + s, ND_DX4(dp + s, xp + s, mv, av, bv, ev));
        for (; s < S; ++s) o[s] = (float)(ac * (double)dp[s] + bc * ((double)xp[s] - m) + ec);
        return;
    }
    float buf[ND_SCH];
    for (int64_t s0 = 0; s0 < S; s0 += ND_SCH) {
        const int64_t len = nd_min64(ND_SCH, S - s0), len4 = len & ~(int64_t)3;
        int64_t k = 0;
        for (; k < len4; k += 4)
            _mm_storeu_ps(buf + k, ND_DX4(dp + s0 + k, xp + s0 + k, mv, av, bv, ev));
        for (; k < len; ++k)
            buf[k] = (float)(ac * (double)dp[s0 + k] + bc * ((double)xp[s0 + k] - m) + ec);
        nd_stream_copy(o + s0, buf, (size_t)len * sizeof(float));
    }
    nd_stream_fence();
}

#undef ND_DX4
#undef ND_CVT4
#undef ND_ADD4
#undef ND_LD4
#undef ND_ST4
