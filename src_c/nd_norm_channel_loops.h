/* nd_norm_channel_loops.h -- the inner loops of the per-channel steps
 * (nd_norm_channel.h) for one data type and one instruction-set variant.
 * Included by nd_norm_channel.h with T, SUF, FN and ND_AFFINE_FLOAT defined
 * (nd_norm_impl.h), and ND_V (the variant's suffix), ND_V_ATTR (its target
 * attribute), ND_V_AVX2 (1 in the avx2 variant) and ND_V_AVX512 (1 in the
 * avx512 variant); every function is static
 * and named FV(name), e.g. nd_rows_stats_unit_f32_avx2.
 *
 * These portable loops are what the compiler vectorizes for each target; the
 * avx2 variant's float32 statistics, sums and dx loops are written by hand
 * instead (nd_norm_channel_avx2.h, the same operations in the same order), and
 * so is the avx512 variant's float32 ND_ROWS statistics loop
 * (nd_norm_channel_avx512.h).
 * Every variant computes the same IEEE operations in the same order; the
 * one freedom taken: in the avx2 variant the last addition of the float32
 * affine is issued as fmaf(v, 1, b), the same addition (v * 1 is exact, the
 * sum is rounded once) on the FMA pipes, which on AMD's Zen cores leaves the
 * adding pipes to the two subtractions.
 *
 * Rows of ND_ROWS operands are processed several at a time (four or two
 * rows per pass over the channels) so that the per-channel operands (means,
 * coefficients) are loaded once per group of rows; each value's result, and
 * the order of every channel's sum (rows in order), are unchanged. */

#define FV(name) ND_CAT(FN(name), ND_V)

#if ND_V_AVX2
#define ND_FADDF(a, b) __builtin_fmaf((a), 1.0f, (b))   /* a + b, on the FMA pipes */
#else
#define ND_FADDF(a, b) ((a) + (b))
#endif

#if ND_V_AVX2 && ND_AFFINE_FLOAT
#define ND_V_HAND 1   /* the hand-written loops below replace the portable ones */
#include "nd_norm_channel_avx2.h"
#else
#define ND_V_HAND 0
#endif

#if ND_V_AVX512 && ND_AFFINE_FLOAT
#define ND_V_HAND_STATS 1   /* the avx512 variant's own float32 ND_ROWS statistics */
#include "nd_norm_channel_avx512.h"
#else
#define ND_V_HAND_STATS ND_V_HAND
#endif


#if !ND_V_HAND_STATS
/* (mean, M2) of the units of one ND_ROWS work item: rows [r0, r1) of
 * channels [c0, c0 + w), w <= ND_SWEEP; into wk[2 j] (mean) and
 * wk[2 j + 1] (M2).  Each channel's sums run over the rows in order; four
 * rows are added per load of the accumulator.  The M2 pass, which reads the
 * item again from the cache, prefetches the next item (its values are `next`
 * values on from this one's; 0: none), so that the next item's first pass
 * does not wait on memory. */
ND_V_ATTR
static void FV(nd_rows_stats_unit)(const T *x, int64_t sn, int64_t r0, int64_t r1,
                                   int64_t c0, int64_t w, double *wk, int64_t next)
{
    double acc[ND_SWEEP], m[ND_SWEEP];
    const T *base = x + c0;
    for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const T *p0 = base + r * sn, *p1 = p0 + sn, *p2 = p1 + sn, *p3 = p2 + sn;
        FN(nd_sum_rows4)(acc, p0, p1, p2, p3, 0, w);
    }
    for (; r < r1; ++r) FN(nd_sum_row)(acc, base + r * sn, 0, w);
    const double cnt = (double)(r1 - r0);
    for (int64_t j = 0; j < w; ++j) { m[j] = acc[j] / cnt; acc[j] = 0.0; }
    r = r0;
    for (; r + 4 <= r1; r += 4) {
        const T *p0 = base + r * sn, *p1 = p0 + sn, *p2 = p1 + sn, *p3 = p2 + sn;
        if (next) {
            for (int64_t j = 0; j < w; j += 64 / (int64_t)sizeof(T)) {
                ND_PREFETCH_L2(p0 + j + next);
                ND_PREFETCH_L2(p1 + j + next);
                ND_PREFETCH_L2(p2 + j + next);
                ND_PREFETCH_L2(p3 + j + next);
            }
        }
        FN(nd_sqdev_rows4)(acc, m, p0, p1, p2, p3, 0, w);
    }
    for (; r < r1; ++r) FN(nd_sqdev_row)(acc, m, base + r * sn, 0, w);
    for (int64_t j = 0; j < w; ++j) { wk[2 * j] = m[j]; wk[2 * j + 1] = acc[j]; }
}
#endif

#if !ND_V_HAND
/* (sum dout, sum dout * (x - mean)) of one ND_ROWS unit, into wk pairs; four
 * rows per load of the accumulators. */
ND_V_ATTR
static void FV(nd_rows_reduce_unit)(const T *dout, const T *x, int64_t sn, int64_t r0,
                                    int64_t r1, int64_t c0, int64_t w, const double *mean,
                                    double *wk)
{
    double a[ND_SWEEP], b[ND_SWEEP];
    const double *m = mean + c0;
    for (int64_t j = 0; j < w; ++j) { a[j] = 0.0; b[j] = 0.0; }
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const T *d0 = dout + r * sn + c0, *d1 = d0 + sn, *d2 = d1 + sn, *d3 = d2 + sn;
        const T *x0 = x + r * sn + c0, *x1 = x0 + sn, *x2 = x1 + sn, *x3 = x2 + sn;
        for (int64_t j = 0; j < w; ++j) {
            const double mj = m[j];
            double sa = a[j], sb = b[j], g;
            g = (double)d0[j]; sa += g; sb += g * ((double)x0[j] - mj);
            g = (double)d1[j]; sa += g; sb += g * ((double)x1[j] - mj);
            g = (double)d2[j]; sa += g; sb += g * ((double)x2[j] - mj);
            g = (double)d3[j]; sa += g; sb += g * ((double)x3[j] - mj);
            a[j] = sa; b[j] = sb;
        }
    }
    for (; r < r1; ++r) {
        const T *dr = dout + r * sn + c0, *xr = x + r * sn + c0;
        for (int64_t j = 0; j < w; ++j) {
            double g = (double)dr[j];
            a[j] += g;
            b[j] += g * ((double)xr[j] - m[j]);
        }
    }
    for (int64_t j = 0; j < w; ++j) { wk[2 * j] = a[j]; wk[2 * j + 1] = b[j]; }
}

#endif

/* Two rows of nd_rows_affine_d: o_k[j] = (x_k[j] - m[j]) * a[j] + b[j], j < w. */
ND_V_ATTR
static inline void FV(nd_affd_2)(const T *restrict x0, const T *restrict x1, T *restrict o0,
                                 T *restrict o1, int64_t w, const double *restrict m,
                                 const double *restrict a, const double *restrict b)
{
    for (int64_t j = 0; j < w; ++j) {
        const double mj = m[j], aj = a[j], bj = b[j];
        o0[j] = (T)(((double)x0[j] - mj) * aj + bj);
        o1[j] = (T)(((double)x1[j] - mj) * aj + bj);
    }
}

/* out = (x - mean) * scale + shift in double, rounded once, on rows [r0, r1),
 * channels [c0, c0 + w): float64, and float32 channels outside the float
 * formula's range.  st: stream the rows out (the same values, through an L1
 * buffer). */
ND_V_ATTR
static void FV(nd_rows_affine_d)(const T *x, T *out, int64_t sn, int64_t r0, int64_t r1,
                                 int64_t c0, int64_t w, const double *mean, const double *scale,
                                 const double *shift, int st)
{
    const double *m = mean + c0, *a = scale + c0, *b = shift + c0;
    if (!st) {
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) {
            const T *xr = x + r * sn + c0;
            T *o = out + r * sn + c0;
            FV(nd_affd_2)(xr, xr + sn, o, o + sn, w, m, a, b);
        }
        for (; r < r1; ++r) {
            const T *xr = x + r * sn + c0;
            T *o = out + r * sn + c0;
            for (int64_t j = 0; j < w; ++j) o[j] = (T)(((double)xr[j] - m[j]) * a[j] + b[j]);
        }
        return;
    }
    T buf[ND_SCH];
    for (int64_t r = r0; r < r1; ++r) {
        const T *xr = x + r * sn + c0;
        T *o = out + r * sn + c0;
        for (int64_t j0 = 0; j0 < w; j0 += ND_SCH) {
            const int64_t len = nd_min64(ND_SCH, w - j0);
            for (int64_t j = 0; j < len; ++j)
                buf[j] = (T)(((double)xr[j0 + j] - m[j0 + j]) * a[j0 + j] + b[j0 + j]);
            nd_stream_copy(o + j0, buf, (size_t)len * sizeof(T));
        }
    }
    nd_stream_fence();
}

#if ND_AFFINE_FLOAT
/* Four rows of nd_rows_affine: o_k[j] = ((x_k[j] - mh[j]) - ml[j]) * a[j] + b[j]. */
ND_V_ATTR
static inline void FV(nd_aff_4)(const float *restrict x0, const float *restrict x1,
                                const float *restrict x2, const float *restrict x3,
                                float *restrict o0, float *restrict o1, float *restrict o2,
                                float *restrict o3, int64_t w, const float *restrict mh,
                                const float *restrict ml, const float *restrict a,
                                const float *restrict b)
{
    for (int64_t j = 0; j < w; ++j) {
        const float h = mh[j], l = ml[j], s = a[j], t = b[j];
        o0[j] = ND_FADDF(((x0[j] - h) - l) * s, t);
        o1[j] = ND_FADDF(((x1[j] - h) - l) * s, t);
        o2[j] = ND_FADDF(((x2[j] - h) - l) * s, t);
        o3[j] = ND_FADDF(((x3[j] - h) - l) * s, t);
    }
}

/* out = ((x - mh) - ml) * a + b on rows [r0, r1), channels [c0, c0 + w)
 * (nd_aff32); four rows per load of the tile's parameters.  st: stream the
 * rows out (the same values, through an L1 buffer). */
ND_V_ATTR
static void FV(nd_rows_affine)(const T *x, T *out, int64_t sn, int64_t r0, int64_t r1,
                               int64_t c0, int64_t w, const double *mean, const double *scale,
                               const double *shift, int st)
{
    float mh[ND_AFF_TILE], ml[ND_AFF_TILE], a[ND_AFF_TILE], b[ND_AFF_TILE];
    T buf[ND_SCH];
    for (int64_t t0 = 0; t0 < w; t0 += ND_AFF_TILE) {
        const int64_t tw = nd_min64(ND_AFF_TILE, w - t0), ct = c0 + t0;
        int ok = 1;   /* every channel of the tile in the float formula's range */
        for (int64_t j = 0; j < tw; ++j) {
            const nd_aff32 p = nd_aff32_of(mean[ct + j], scale[ct + j], shift[ct + j]);
            mh[j] = p.mh; ml[j] = p.ml; a[j] = p.a; b[j] = p.b;
            ok &= nd_aff32_ok(mean[ct + j], scale[ct + j], shift[ct + j]);
        }
        if (!ok) {
            FV(nd_rows_affine_d)(x, out, sn, r0, r1, ct, tw, mean, scale, shift, st);
            continue;
        }
        if (!st) {
            int64_t r = r0;
            for (; r + 4 <= r1; r += 4) {
                const T *xr = x + r * sn + ct;
                T *o = out + r * sn + ct;
                FV(nd_aff_4)(xr, xr + sn, xr + 2 * sn, xr + 3 * sn, o, o + sn, o + 2 * sn,
                             o + 3 * sn, tw, mh, ml, a, b);
            }
            for (; r < r1; ++r) {
                const T *xr = x + r * sn + ct;
                T *o = out + r * sn + ct;
                for (int64_t j = 0; j < tw; ++j)
                    o[j] = ND_FADDF(((xr[j] - mh[j]) - ml[j]) * a[j], b[j]);
            }
            continue;
        }
        for (int64_t r = r0; r < r1; ++r) {
            const T *xr = x + r * sn + ct;
            T *o = out + r * sn + ct;
            for (int64_t j0 = 0; j0 < tw; j0 += ND_SCH) {
                const int64_t len = nd_min64(ND_SCH, tw - j0);
                for (int64_t j = 0; j < len; ++j) {
                    const int64_t k = j0 + j;
                    buf[j] = ND_FADDF(((xr[k] - mh[k]) - ml[k]) * a[k], b[k]);
                }
                nd_stream_copy(o + j0, buf, (size_t)len * sizeof(T));
            }
        }
    }
    if (st) nd_stream_fence();
}
#else
/* float64: the formula in double. */
static inline void FV(nd_rows_affine)(const T *x, T *out, int64_t sn, int64_t r0, int64_t r1,
                                      int64_t c0, int64_t w, const double *mean,
                                      const double *scale, const double *shift, int st)
{
    FV(nd_rows_affine_d)(x, out, sn, r0, r1, c0, w, mean, scale, shift, st);
}
#endif

#if !ND_V_HAND
/* dx of one value: a * dout + b * (x - m) + e, in double, rounded once. */
#define ND_DX1(a, d, b, x, m, e) ((T)((a) * (double)(d) + (b) * ((double)(x) - (m)) + (e)))

/* Two rows of nd_rows_dx. */
ND_V_ATTR
static inline void FV(nd_dx_2)(const T *restrict d0, const T *restrict d1,
                               const T *restrict x0, const T *restrict x1, T *restrict o0,
                               T *restrict o1, int64_t w, const double *restrict m,
                               const double *restrict a, const double *restrict b,
                               const double *restrict e)
{
    for (int64_t j = 0; j < w; ++j) {
        const double mj = m[j], aj = a[j], bj = b[j], ej = e[j];
        o0[j] = ND_DX1(aj, d0[j], bj, x0[j], mj, ej);
        o1[j] = ND_DX1(aj, d1[j], bj, x1[j], mj, ej);
    }
}

/* dx = a * dout + b * (x - mean) + e on rows [r0, r1), channels [c0, c0 + w);
 * two rows per load of the coefficients. */
ND_V_ATTR
static void FV(nd_rows_dx)(const T *dout, const T *x, T *dx, int64_t sn, int64_t r0, int64_t r1,
                           int64_t c0, int64_t w, const double *mean, const double *a,
                           const double *b, const double *e, int st)
{
    const double *m = mean + c0, *ac = a + c0, *bc = b + c0, *ec = e + c0;
    if (!st) {
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) {
            const int64_t off = r * sn + c0;
            FV(nd_dx_2)(dout + off, dout + off + sn, x + off, x + off + sn, dx + off,
                        dx + off + sn, w, m, ac, bc, ec);
        }
        for (; r < r1; ++r) {
            const int64_t off = r * sn + c0;
            const T *dr = dout + off, *xr = x + off;
            T *o = dx + off;
            for (int64_t j = 0; j < w; ++j) o[j] = ND_DX1(ac[j], dr[j], bc[j], xr[j], m[j], ec[j]);
        }
        return;
    }
    T buf[ND_SCH];
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t off = r * sn + c0;
        const T *dr = dout + off, *xr = x + off;
        T *o = dx + off;
        for (int64_t j0 = 0; j0 < w; j0 += ND_SCH) {
            const int64_t len = nd_min64(ND_SCH, w - j0);
            for (int64_t j = 0; j < len; ++j) {
                const int64_t k = j0 + j;
                buf[j] = ND_DX1(ac[k], dr[k], bc[k], xr[k], m[k], ec[k]);
            }
            nd_stream_copy(o + j0, buf, (size_t)len * sizeof(T));
        }
    }
    nd_stream_fence();
}

#endif

#if !ND_V_HAND
/* (mean, M2) of one ND_PLANES unit: values [0, len) of np planes, sn apart,
 * from p (np * len > 0).  Sums with ND_LANES fixed accumulators: lane k takes
 * values k, k + ND_LANES, ... of each plane, the planes in order, and the
 * lanes are combined pairwise.  (A unit of one plane is one segment.) */
ND_V_ATTR
static void FV(nd_unit_stats)(const T *p, int64_t sn, int64_t np, int64_t len, double *mean,
                              double *m2)
{
    double a[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    for (int64_t j = 0; j < np; ++j) {
        const T *q = p + j * sn;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES)
            for (int k = 0; k < ND_LANES; ++k) a[k] += (double)q[i + k];
        for (int k = 0; i + k < len; ++k) a[k] += (double)q[i + k];
    }
    const double m = nd_lanes_sum(a) / (double)(np * len);
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    for (int64_t j = 0; j < np; ++j) {
        const T *q = p + j * sn;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES)
            for (int k = 0; k < ND_LANES; ++k) { double d = (double)q[i + k] - m; a[k] += d * d; }
        for (int k = 0; i + k < len; ++k) { double d = (double)q[i + k] - m; a[k] += d * d; }
    }
    *mean = m;
    *m2 = nd_lanes_sum(a);
}

/* Sums of dy and dy * (x - m) over one ND_PLANES unit (as nd_unit_stats),
 * ND_LANES fixed accumulators each. */
ND_V_ATTR
static void FV(nd_unit_dsum)(const T *dy, const T *x, int64_t sn, int64_t np, int64_t len,
                             double m, double *sdy, double *sdyxm)
{
    double a[ND_LANES], b[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) { a[k] = 0.0; b[k] = 0.0; }
    for (int64_t j = 0; j < np; ++j) {
        const T *dq = dy + j * sn, *xq = x + j * sn;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES)
            for (int k = 0; k < ND_LANES; ++k) {
                double g = (double)dq[i + k];
                a[k] += g;
                b[k] += g * ((double)xq[i + k] - m);
            }
        for (int k = 0; i + k < len; ++k) {
            double g = (double)dq[i + k];
            a[k] += g;
            b[k] += g * ((double)xq[i + k] - m);
        }
    }
    *sdy = nd_lanes_sum(a);
    *sdyxm = nd_lanes_sum(b);
}

#endif

/* op[s] = (xp[s] - m) * a + b in double, rounded once, s < S (float64, and
 * float32 channels outside the float formula's range). */
ND_V_ATTR
static void FV(nd_plane_affine_d)(const T *xp, T *op, int64_t S, double m, double a, double b,
                                  int st)
{
    if (!st) {
        for (int64_t s = 0; s < S; ++s) op[s] = (T)(((double)xp[s] - m) * a + b);
        return;
    }
    T buf[ND_SCH];
    for (int64_t s0 = 0; s0 < S; s0 += ND_SCH) {
        const int64_t len = nd_min64(ND_SCH, S - s0);
        for (int64_t k = 0; k < len; ++k) buf[k] = (T)(((double)xp[s0 + k] - m) * a + b);
        nd_stream_copy(op + s0, buf, (size_t)len * sizeof(T));
    }
    nd_stream_fence();
}

#if ND_AFFINE_FLOAT
/* op[s] = ((xp[s] - mh) - ml) * a + b in float (see nd_aff32), s < S. */
ND_V_ATTR
static void FV(nd_plane_affine)(const T *xp, T *op, int64_t S, double m, double a, double b,
                                int st)
{
    if (!nd_aff32_ok(m, a, b)) {
        FV(nd_plane_affine_d)(xp, op, S, m, a, b, st);
        return;
    }
    const nd_aff32 p = nd_aff32_of(m, a, b);
    const float mh = p.mh, ml = p.ml, pa = p.a, pb = p.b;
    if (!st) {
        for (int64_t s = 0; s < S; ++s) op[s] = ND_FADDF(((xp[s] - mh) - ml) * pa, pb);
        return;
    }
    T buf[ND_SCH];
    for (int64_t s0 = 0; s0 < S; s0 += ND_SCH) {
        const int64_t len = nd_min64(ND_SCH, S - s0);
        for (int64_t k = 0; k < len; ++k) buf[k] = ND_FADDF(((xp[s0 + k] - mh) - ml) * pa, pb);
        nd_stream_copy(op + s0, buf, (size_t)len * sizeof(T));
    }
    nd_stream_fence();
}
#else
/* float64: the formula in double. */
static inline void FV(nd_plane_affine)(const T *xp, T *op, int64_t S, double m, double a,
                                       double b, int st)
{
    FV(nd_plane_affine_d)(xp, op, S, m, a, b, st);
}
#endif

#if !ND_V_HAND
/* o[s] = ac * dp[s] + bc * (xp[s] - m) + ec, s < S. */
ND_V_ATTR
static void FV(nd_plane_dx)(const T *dp, const T *xp, T *o, int64_t S, double m, double ac,
                            double bc, double ec, int st)
{
    if (!st) {
        for (int64_t s = 0; s < S; ++s) o[s] = ND_DX1(ac, dp[s], bc, xp[s], m, ec);
        return;
    }
    T buf[ND_SCH];
    for (int64_t s0 = 0; s0 < S; s0 += ND_SCH) {
        const int64_t len = nd_min64(ND_SCH, S - s0);
        for (int64_t k = 0; k < len; ++k) buf[k] = ND_DX1(ac, dp[s0 + k], bc, xp[s0 + k], m, ec);
        nd_stream_copy(o + s0, buf, (size_t)len * sizeof(T));
    }
    nd_stream_fence();
}

#endif

/* The variant's table (nd_norm_channel.h). */
static const FN(nd_ch_loops) FV(nd_ch_loops) = {
    FV(nd_rows_stats_unit), FV(nd_rows_reduce_unit), FV(nd_rows_affine), FV(nd_rows_dx),
    FV(nd_unit_stats),      FV(nd_unit_dsum),        FV(nd_plane_affine), FV(nd_plane_affine_d),
    FV(nd_plane_dx),
};

#undef ND_DX1
#undef ND_FADDF
#undef ND_V_HAND
#undef ND_V_HAND_STATS
#undef FV
