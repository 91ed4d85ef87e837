/* nd_norm_channel.h -- the contract's steps for statistics per channel
 * (groups == 0: batchnorm and spatial batchnorm), for one data type.
 * Included by nd_norm_impl.h with T (the C type), SUF (its suffix) and FN
 * defined; every function here is static and named ch_* or nd_* (inner
 * loops); nd_norm_impl.h exports the contract's names.
 *
 * The statistics use a fixed partition of each channel into units:
 *   ND_ROWS:   a unit is a block of nd_rows_rb rows x one channel; a work
 *              item takes the block's rows for a sweep of up to ND_SWEEP
 *              channels (nd_rows_sweep: long runs of each row; the width
 *              changes no result), read twice while it is in cache (mean,
 *              then sum of squared deviations: at 128 rows x 1024 channels
 *              512 KiB of float32, 1 MiB of float64, the second read partly
 *              from L3), so x is read from memory once.
 *   ND_PLANES: a unit holds about ND_SEG values of one channel: a segment of
 *              at most ND_SEG values of one plane where planes have ND_SEG
 *              values or more, else ND_SEG / S whole planes (nd_planes_unit),
 *              likewise two passes in cache.  So a channel has about
 *              N S / ND_SEG units, and the unit results kept at once (few
 *              channels: those of all channels) stay small whatever N is.
 * Each unit yields (count, mean, M2) in double; units of a channel are merged in
 * index order with Chan et al.'s pairwise update (nd_moments.h).  The
 * partition depends only on the shape, so the result is the same for every
 * thread count.  Sums inside a segment use ND_LANES fixed accumulators (lane k
 * takes values k, k+ND_LANES, ...), which vectorizes without reassociating
 * anything.
 *
 * The inner loops (nd_norm_channel_loops.h) are compiled once per
 * instruction-set variant -- generic, avx2 (with FMA), avx512 -- and called
 * through the variant's table (FN(nd_ch_pick), nd_ch_level in nd_norm.c);
 * each computes the same IEEE operations in the same order in every variant
 * (no contraction, fixed accumulator lanes; an addition issued as an FMA by 1
 * is the same addition), so the variant that runs does not change any bit. */

/* ------------------------------------------------------------ inner loops */

/* Values per chunk of a streamed output (see nd_stream_copy). */
#define ND_SCH ((int64_t)(ND_STREAM_CHUNK / sizeof(T)))

#if ND_AFFINE_FLOAT
/* float32 affine in float: mean = mh + ml split into two floats (mh its
 * rounding, ml the rest), so (x - mh) - ml keeps the difference exact to a
 * float rounding even for a mean far from 0 (x - mh is exact when x is within
 * a factor 2 of mh); then * scale + shift, scale and shift rounded to float.
 * Four float operations per value instead of the conversions to and from
 * double that otherwise bound this loop. */
typedef struct { float mh, ml, a, b; } nd_aff32;

static inline nd_aff32 nd_aff32_of(double mean, double scale, double shift)
{
    nd_aff32 p;
    p.mh = (float)mean;
    p.ml = (float)(mean - (double)p.mh);
    p.a = (float)scale;
    p.b = (float)shift;
    return p;
}

/* Whether the float formula keeps its error bound for this channel: mean 0 or
 * in [2^-100, 2^100] (so ml is no subnormal and x - mh cannot overflow), and
 * |scale|, |shift| <= 2^100 (finite in float).  Other channels (eps near 0,
 * infinite or NaN statistics, data at the ends of the float range) use the
 * float64 formula; NaN fails every comparison and lands there too. */
static inline int nd_aff32_ok(double mean, double scale, double shift)
{
    const double big = 0x1p100, small = 0x1p-100, am = fabs(mean);
    /* no short-circuits: the tile set-up loop stays a vector loop */
    return ((mean == 0.0) | ((am >= small) & (am <= big))) & (fabs(scale) <= big) &
           (fabs(shift) <= big);
}

/* Channels whose float parameters are on the stack at once (16 KiB): a row of
 * up to this many channels is read and written in one run.  With 256 (1 KiB
 * runs of float32 rows, four rows in turn) the 4096 x 1024 float32 pass took
 * 1.2 x as long (AMD Zen 3, 2 threads): the hardware prefetchers follow long
 * runs better than short ones. */
#define ND_AFF_TILE 1024
#endif

/* The scalar steps of the ND_ROWS statistics loops, shared by every
 * variant (the portable loop, and the tails of the hand-written vector
 * loops): channels [j, w) of four rows, or of one row, added in row order to
 * acc (the sums), or their squared deviations from m (the M2 pass). */
static inline __attribute__((always_inline)) void
FN(nd_sum_rows4)(double *acc, const T *p0, const T *p1, const T *p2, const T *p3, int64_t j,
                 int64_t w)
{
    for (; j < w; ++j) {
        double a = acc[j];
        a += (double)p0[j];
        a += (double)p1[j];
        a += (double)p2[j];
        a += (double)p3[j];
        acc[j] = a;
    }
}

static inline __attribute__((always_inline)) void
FN(nd_sqdev_rows4)(double *acc, const double *m, const T *p0, const T *p1, const T *p2,
                   const T *p3, int64_t j, int64_t w)
{
    for (; j < w; ++j) {
        const double mj = m[j];
        double a = acc[j], d;
        d = (double)p0[j] - mj; a += d * d;
        d = (double)p1[j] - mj; a += d * d;
        d = (double)p2[j] - mj; a += d * d;
        d = (double)p3[j] - mj; a += d * d;
        acc[j] = a;
    }
}

static inline __attribute__((always_inline)) void
FN(nd_sum_row)(double *acc, const T *p, int64_t j, int64_t w)
{
    for (; j < w; ++j) acc[j] += (double)p[j];
}

static inline __attribute__((always_inline)) void
FN(nd_sqdev_row)(double *acc, const double *m, const T *p, int64_t j, int64_t w)
{
    for (; j < w; ++j) { const double d = (double)p[j] - m[j]; acc[j] += d * d; }
}

/* The inner loops of one instruction-set variant (nd_norm_channel_loops.h),
 * called through this table; FN(nd_ch_pick) gives the variant this processor
 * runs (nd_ch_level, nd_norm.c). */
typedef struct {
    void (*rows_stats_unit)(const T *x, int64_t sn, int64_t r0, int64_t r1, int64_t c0,
                            int64_t w, double *wk, int64_t next);
    void (*rows_reduce_unit)(const T *dout, const T *x, int64_t sn, int64_t r0, int64_t r1,
                             int64_t c0, int64_t w, const double *mean, double *wk);
    void (*rows_affine)(const T *x, T *out, int64_t sn, int64_t r0, int64_t r1, int64_t c0,
                        int64_t w, const double *mean, const double *scale,
                        const double *shift, int st);
    void (*rows_dx)(const T *dout, const T *x, T *dx, int64_t sn, int64_t r0, int64_t r1,
                    int64_t c0, int64_t w, const double *mean, const double *a,
                    const double *b, const double *e, int st);
    void (*unit_stats)(const T *p, int64_t sn, int64_t np, int64_t len, double *mean,
                       double *m2);
    void (*unit_dsum)(const T *dy, const T *x, int64_t sn, int64_t np, int64_t len, double m,
                      double *sdy, double *sdyxm);
    void (*plane_affine)(const T *xp, T *op, int64_t S, double m, double a, double b, int st);
    void (*plane_affine_d)(const T *xp, T *op, int64_t S, double m, double a, double b, int st);
    void (*plane_dx)(const T *dp, const T *xp, T *o, int64_t S, double m, double ac,
                     double bc, double ec, int st);
} FN(nd_ch_loops);

#define ND_V generic
#define ND_V_ATTR
#define ND_V_AVX2 0
#define ND_V_AVX512 0
#include "nd_norm_channel_loops.h"
#undef ND_V
#undef ND_V_ATTR
#undef ND_V_AVX2
#undef ND_V_AVX512

#if ND_CH_VARIANTS
#define ND_V avx2
#define ND_V_ATTR __attribute__((target(ND_CH_TARGET_AVX2)))
#define ND_V_AVX2 1
#define ND_V_AVX512 0
#include "nd_norm_channel_loops.h"
#undef ND_V
#undef ND_V_ATTR
#undef ND_V_AVX2
#undef ND_V_AVX512

#define ND_V avx512
#define ND_V_ATTR __attribute__((target(ND_CH_TARGET_AVX512)))
#define ND_V_AVX2 0
#define ND_V_AVX512 1
#include "nd_norm_channel_loops.h"
#undef ND_V
#undef ND_V_ATTR
#undef ND_V_AVX2
#undef ND_V_AVX512
#endif

static const FN(nd_ch_loops) *FN(nd_ch_pick)(void)
{
#if ND_CH_VARIANTS
    const int lvl = nd_ch_level();
    if (lvl == 2) return &ND_CAT(FN(nd_ch_loops), avx512);
    if (lvl == 1) return &ND_CAT(FN(nd_ch_loops), avx2);
#endif
    return &ND_CAT(FN(nd_ch_loops), generic);
}

/* ------------------------------------------------------ per-channel pieces */

/* (mean, M2) of unit k of ND_PLANES channel c (0, 0 for an empty unit); its
 * count is the return value. */
static inline double FN(nd_planes_unit_stats)(const FN(nd_ch_loops) *L, const T *x,
                                              const nd_geom *g, int64_t c, int64_t k,
                                              double *mean, double *m2)
{
    const nd_punit u = nd_planes_unit(g, k);
    *mean = 0.0;
    *m2 = 0.0;
    if (u.np * u.len <= 0) return 0.0;
    L->unit_stats(x + u.p0 * g->sn + c * g->sc + u.s0, g->sn, u.np, u.len, mean, m2);
    return (double)(u.np * u.len);
}

/* (sum dout, sum dout * (x - m)) of unit k of ND_PLANES channel c. */
static inline void FN(nd_planes_unit_dsum)(const FN(nd_ch_loops) *L, const T *dout,
                                           const T *x, const nd_geom *g, int64_t c, int64_t k,
                                           double m, double *a, double *b)
{
    const nd_punit u = nd_planes_unit(g, k);
    const int64_t off = u.p0 * g->sn + c * g->sc + u.s0;
    *a = 0.0;
    *b = 0.0;
    if (u.np * u.len > 0) L->unit_dsum(dout + off, x + off, g->sn, u.np, u.len, m, a, b);
}

/* (mean, M2) of every unit of ND_PLANES channel c, merged in index order. */
static void FN(nd_planes_channel_stats)(const FN(nd_ch_loops) *L, const T *x,
                                        const nd_geom *g, int64_t c, double *mean,
                                        double *m2out)
{
    const int64_t units = nd_planes_units(g);
    double n = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t k = 0; k < units; ++k) {
        double um, um2;
        const double cnt = FN(nd_planes_unit_stats)(L, x, g, c, k, &um, &um2);
        nd_chan_merge(&n, &mu, &m2, cnt, um, um2);
    }
    *mean = mu;
    *m2out = m2;
}

/* sum dout and sum dout * (x - m) of ND_PLANES channel c, units in index order. */
static void FN(nd_planes_channel_reduce)(const FN(nd_ch_loops) *L, const T *dout, const T *x,
                                         const nd_geom *g, int64_t c, double m, double *sum_dy,
                                         double *sum_dyxm)
{
    const int64_t units = nd_planes_units(g);
    double a = 0.0, b = 0.0;
    for (int64_t k = 0; k < units; ++k) {
        double ua, ub;
        FN(nd_planes_unit_dsum)(L, dout, x, g, c, k, m, &ua, &ub);
        a += ua;
        b += ub;
    }
    *sum_dy = a;
    *sum_dyxm = b;
}

/* ------------------------------------------------------------- the steps */

/*
 * ch_moments: mean[c] = sum x / (N S);  m2[c] = sum (x - mean)^2.
 * IN x, g; SCRATCH work (ch_work_size(g) doubles); OUT mean, m2 (c doubles).
 */
static void FN(ch_moments)(const T *x, const nd_geom *g, double *work, double *mean, double *m2)
{
    const int64_t C = g->c, N = g->n;
    if (C <= 0) return;
    const FN(nd_ch_loops) *L = FN(nd_ch_pick)();
    if (g->kind == ND_ROWS) {
        const int64_t rb = nd_rows_rb(g), sw = nd_rows_sweep(g);
        const int64_t nrb = nd_cdiv(N, rb), nsw = nd_cdiv(C, sw);
        const int64_t units = nrb * nsw;
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t r0 = (u / nsw) * rb, r1 = nd_min64(r0 + rb, N);
            const int64_t c0 = (u % nsw) * sw, w = nd_min64(sw, C - c0);
            /* a static schedule gives each thread consecutive work items:
             * the next one, from this one's values, is the next sweep of
             * these rows or the first sweep of the next row block --
             * prefetched when it has this item's rows and width (so that
             * every line asked for is the array's).  float32 only: with
             * float64 work items of 256 KiB (before the sweeps) it measured
             * slower (AMD Zen 3, 512 KiB L2), and float64 sweeps are now up
             * to 1 MiB. */
            int64_t next = 0;
            if (sizeof(T) == 4 && u + 1 < units) {
                if ((u + 1) % nsw) {
                    if (nd_min64(sw, C - c0 - sw) == w) next = sw;
                } else if (nd_min64(rb, N - r1) == r1 - r0 && nd_min64(sw, C) == w) {
                    next = rb * g->sn - c0;
                }
            }
            L->rows_stats_unit(x, g->sn, r0, r1, c0, w, work + 2 * ((u / nsw) * C + c0), next);
        }
        if (nrb == 1) {   /* one row block: the merge below would return its unit's values */
            for (int64_t c = 0; c < C; ++c) {
                mean[c] = work[2 * c];
                m2[c] = N > 0 ? work[2 * c + 1] : 0.0;
            }
            return;
        }
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c) {
            double n = 0.0, mu = 0.0, q = 0.0;
            for (int64_t b = 0; b < nrb; ++b) {
                const double cnt = (double)(nd_min64((b + 1) * rb, N) - b * rb);
                nd_chan_merge(&n, &mu, &q, cnt, work[2 * (b * C + c)], work[2 * (b * C + c) + 1]);
            }
            mean[c] = mu;
            m2[c] = q;
        }
    } else if (C >= ND_FUSE_MIN_C) {
        ND_OMP_FOR(N * C * g->s >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c)
            FN(nd_planes_channel_stats)(L, x, g, c, &mean[c], &m2[c]);
    } else {
        /* few channels: the units of all channels in parallel (their counts
         * in work too), then the merge */
        const int64_t per = nd_planes_units(g), units = C * per;
        ND_OMP_FOR(N * C * g->s >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < units; ++u) {
            double m, q;
            FN(nd_planes_unit_stats)(L, x, g, u / per, u % per, &m, &q);
            work[2 * u] = m;
            work[2 * u + 1] = q;
        }
        for (int64_t c = 0; c < C; ++c) {
            double n = 0.0, mu = 0.0, q = 0.0;
            for (int64_t k = 0; k < per; ++k) {
                const int64_t u = c * per + k;
                const nd_punit pu = nd_planes_unit(g, k);
                nd_chan_merge(&n, &mu, &q, (double)(pu.np * pu.len), work[2 * u], work[2 * u + 1]);
            }
            mean[c] = mu;
            m2[c] = q;
        }
    }
}

/*
 * ch_affine: out = (x - mean[c]) * scale[c] + shift[c]: for float64 in double;
 * for float32 in float with the mean split in two floats (see nd_aff32).
 * IN x, g, mean, scale, shift; OUT out (same geometry as x).
 */
static void FN(ch_affine)(const T *x, T *out, const nd_geom *g, const double *mean,
                          const double *scale, const double *shift)
{
    const int64_t C = g->c, N = g->n;
    const int st = nd_norm_stream(out, g, (int64_t)sizeof(T));
    const FN(nd_ch_loops) *L = FN(nd_ch_pick)();
    if (g->kind == ND_ROWS) {
        const int64_t rb = ND_AFFINE_ROWS;
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t b = 0; b < nd_cdiv(N, rb); ++b)
            L->rows_affine(x, out, g->sn, b * rb, nd_min64(b * rb + rb, N), 0, C,
                           mean, scale, shift, st);
    } else {
        const int64_t S = g->s;
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < N * C; ++u) {
            const int64_t n = u / C, c = u % C, off = n * g->sn + c * g->sc;
            L->plane_affine(x + off, out + off, S, mean[c], scale[c], shift[c], st);
        }
    }
}

/*
 * ch_normalize: out = (x - mean[c]) * (gamma[c] * invstd[c]) + beta[c] (the
 * per-channel scale formed in work, then ch_affine).
 * IN x, g, mean, invstd, gamma, beta; SCRATCH work (c doubles); OUT out.
 */
static void FN(ch_normalize)(const T *x, T *out, const nd_geom *g, const double *mean,
                             const double *invstd, const double *gamma, const double *beta,
                             double *work)
{
    for (int64_t c = 0; c < g->c; ++c) work[c] = gamma[c] * invstd[c];
    FN(ch_affine)(x, out, g, mean, work, beta);
}

/*
 * ch_train_fwd: the training forward in one call.  mean, m2 as ch_moments;
 * var = m2 / (N S); invstd = 1 / sqrt(var + eps); out = (x - mean) * (gamma *
 * invstd) + beta.  An ND_PLANES channel whose values fit in ND_FUSE_BYTES is
 * normalized right after its statistics, while it is still in cache.
 * IN x, g, gamma, beta (c doubles), eps; SCRATCH work; OUT out, mean, var,
 * invstd (c doubles each).
 */
static void FN(ch_train_fwd)(const T *x, T *out, const nd_geom *g, const double *gamma,
                             const double *beta, double eps, double *work, double *mean,
                             double *var, double *invstd)
{
    const int64_t C = g->c, N = g->n, S = g->s;
    if (C <= 0) return;
    const double cnt = (double)(N * S);
    double *scale = work + ch_reduce_work(g);
    if (g->kind == ND_PLANES && C >= ND_FUSE_MIN_C && N * S * (int64_t)sizeof(T) <= ND_FUSE_BYTES) {
        const int st = nd_norm_stream(out, g, (int64_t)sizeof(T));
        const FN(nd_ch_loops) *L = FN(nd_ch_pick)();
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c) {
            double m2;
            FN(nd_planes_channel_stats)(L, x, g, c, &mean[c], &m2);
            var[c] = cnt > 0.0 ? m2 / cnt : 0.0;
            invstd[c] = 1.0 / sqrt(var[c] + eps);
            scale[c] = gamma[c] * invstd[c];
            for (int64_t n = 0; n < N; ++n) {
                const int64_t off = n * g->sn + c * g->sc;
                L->plane_affine(x + off, out + off, S, mean[c], scale[c], beta[c], st);
            }
        }
        return;
    }
    FN(ch_moments)(x, g, work, mean, var);
    for (int64_t c = 0; c < C; ++c) {
        var[c] = cnt > 0.0 ? var[c] / cnt : 0.0;
        invstd[c] = 1.0 / sqrt(var[c] + eps);
        scale[c] = gamma[c] * invstd[c];
    }
    FN(ch_affine)(x, out, g, mean, scale, beta);
}

/*
 * ch_grad_sums: sum_dy[c] = sum dout;  sum_dyxm[c] = sum dout * (x - mean[c]).
 * IN dout, x, g, mean; SCRATCH work; OUT sum_dy, sum_dyxm (c doubles).
 */
static void FN(ch_grad_sums)(const T *dout, const T *x, const nd_geom *g, const double *mean,
                             double *work, double *sum_dy, double *sum_dyxm)
{
    const int64_t C = g->c, N = g->n;
    if (C <= 0) return;
    const FN(nd_ch_loops) *L = FN(nd_ch_pick)();
    if (g->kind == ND_ROWS) {
        const int64_t rb = nd_rows_rb(g), sw = nd_rows_sweep(g);
        const int64_t nrb = nd_cdiv(N, rb), nsw = nd_cdiv(C, sw);
        const int64_t units = nrb * nsw;
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t r0 = (u / nsw) * rb, r1 = nd_min64(r0 + rb, N);
            const int64_t c0 = (u % nsw) * sw, w = nd_min64(sw, C - c0);
            L->rows_reduce_unit(dout, x, g->sn, r0, r1, c0, w, mean,
                                work + 2 * ((u / nsw) * C + c0));
        }
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c) {
            double a = 0.0, b = 0.0;
            for (int64_t k = 0; k < nrb; ++k) { a += work[2 * (k * C + c)]; b += work[2 * (k * C + c) + 1]; }
            sum_dy[c] = a;
            sum_dyxm[c] = b;
        }
    } else if (C >= ND_FUSE_MIN_C) {
        ND_OMP_FOR(N * C * g->s >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c)
            FN(nd_planes_channel_reduce)(L, dout, x, g, c, mean[c], &sum_dy[c], &sum_dyxm[c]);
    } else {
        const int64_t per = nd_planes_units(g), units = C * per;
        ND_OMP_FOR(N * C * g->s >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < units; ++u) {
            double a, b;
            FN(nd_planes_unit_dsum)(L, dout, x, g, u / per, u % per, mean[u / per], &a, &b);
            work[2 * u] = a;
            work[2 * u + 1] = b;
        }
        for (int64_t c = 0; c < C; ++c) {
            double a = 0.0, b = 0.0;
            for (int64_t k = 0; k < per; ++k) {
                const int64_t u = c * per + k;
                a += work[2 * u];
                b += work[2 * u + 1];
            }
            sum_dy[c] = a;
            sum_dyxm[c] = b;
        }
    }
}

/*
 * ch_grad_reduce: s1 = sum dout, s2 = sum dout * (x - mean) per channel (the
 * channel's one gamma is applied by ch_grad_input); dbeta = s1,
 * dgamma = s2 * invstd.  IN dout, x, g, mean, invstd; SCRATCH work;
 * OUT s1, s2, dgamma, dbeta (c doubles).
 */
static void FN(ch_grad_reduce)(const T *dout, const T *x, const nd_geom *g, const double *mean,
                               const double *invstd, double *work, double *s1, double *s2,
                               double *dgamma, double *dbeta)
{
    FN(ch_grad_sums)(dout, x, g, mean, work, s1, s2);
    for (int64_t c = 0; c < g->c; ++c) {
        dbeta[c] = s1[c];
        dgamma[c] = s2[c] * invstd[c];
    }
}

/*
 * ch_dx: dx = a[c] * dout + b[c] * (x - mean[c]) + e[c], in double, rounded
 * once.  Not in float for float32: in training a * dout and e cancel (dx sums
 * to 0), so float arithmetic would leave errors of the size of the terms.
 * IN dout, x, g, mean, a, b, e; OUT dx.
 */
static void FN(ch_dx)(const T *dout, const T *x, T *dx, const nd_geom *g, const double *mean,
                      const double *a, const double *b, const double *e)
{
    const int64_t C = g->c, N = g->n;
    const int st = nd_norm_stream(dx, g, (int64_t)sizeof(T));
    const FN(nd_ch_loops) *L = FN(nd_ch_pick)();
    if (g->kind == ND_ROWS) {
        const int64_t rb = ND_AFFINE_ROWS;
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t k = 0; k < nd_cdiv(N, rb); ++k)
            L->rows_dx(dout, x, dx, g->sn, k * rb, nd_min64(k * rb + rb, N), 0, C, mean, a, b,
                       e, st);
    } else {
        const int64_t S = g->s;
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < N * C; ++u) {
            const int64_t n = u / C, c = u % C, off = n * g->sn + c * g->sc;
            L->plane_dx(dout + off, x + off, dx + off, S, mean[c], a[c], b[c], e[c], st);
        }
    }
}

/* Test mode's dx = a[c] * dout (ch_coef's b and e are 0 there): neither x nor
 * the mean enters, so a non-finite x or running mean leaves dx finite, as in
 * the reference, instead of 0 * inf = NaN; (T)(a d + 0.0) is ND_DX1's value
 * with b = e = 0 for every finite x, signed zeros included. */
static inline void FN(ch_plane_dx_test)(const T *restrict dp, T *restrict o, int64_t S, double ac)
{
    for (int64_t s = 0; s < S; ++s) o[s] = (T)(ac * (double)dp[s] + 0.0);
}

static void FN(ch_dx_test)(const T *dout, T *dx, const nd_geom *g, const double *a)
{
    const int64_t C = g->c, N = g->n, S = g->s;
    if (g->kind == ND_ROWS) {
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t n = 0; n < N; ++n) {
            const T *restrict dr = dout + n * g->sn;
            T *restrict o = dx + n * g->sn;
            for (int64_t c = 0; c < C; ++c) o[c] = (T)(a[c] * (double)dr[c] + 0.0);
        }
    } else {
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < N * C; ++u) {
            const int64_t n = u / C, c = u % C, off = n * g->sn + c * g->sc;
            FN(ch_plane_dx_test)(dout + off, dx + off, S, a[c]);
        }
    }
}

/*
 * ch_grad_input: dx from ch_grad_reduce's s1 (sum dout) and s2 (sum dout *
 * (x - mean)) over M values per channel, through ch_coef.  IN dout, x, g,
 * mean, invstd, gamma, s1, s2, train, M; SCRATCH work (3 c doubles); OUT dx.
 */
static void FN(ch_grad_input)(const T *dout, const T *x, T *dx, const nd_geom *g,
                              const double *mean, const double *invstd, const double *gamma,
                              const double *s1, const double *s2, int train, double M,
                              double *work)
{
    const int64_t C = g->c;
    if (C <= 0) return;
    double *a = work, *b = work + C, *e = work + 2 * C;
    for (int64_t c = 0; c < C; ++c) ch_coef(c, M, train, gamma, invstd, s1[c], s2[c], a, b, e);
    if (train)
        FN(ch_dx)(dout, x, dx, g, mean, a, b, e);
    else
        FN(ch_dx_test)(dout, dx, g, a);
}

/*
 * ch_bwd: the whole backward in one call: ch_grad_reduce, ch_grad_input.
 * An ND_PLANES channel whose dout and x fit in ND_FUSE_BYTES gets its dx right
 * after its sums, while both are in cache.
 * IN dout, x, g, gamma, mean, invstd, train; SCRATCH work;
 * OUT dx, dgamma, dbeta (c doubles).
 */
static void FN(ch_bwd)(const T *dout, const T *x, T *dx, const nd_geom *g, const double *mean,
                       const double *invstd, const double *gamma, int train, double *work,
                       double *dgamma, double *dbeta)
{
    const int64_t C = g->c, N = g->n, S = g->s;
    if (C <= 0) return;
    const double M = (double)(N * S);
    double *a = work + ch_reduce_work(g), *b = a + C, *e = b + C;
    if (g->kind == ND_PLANES && C >= ND_FUSE_MIN_C &&
        2 * N * S * (int64_t)sizeof(T) <= ND_FUSE_BYTES) {
        const int st = nd_norm_stream(dx, g, (int64_t)sizeof(T));
        const FN(nd_ch_loops) *L = FN(nd_ch_pick)();
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c) {
            double sdyxm;
            FN(nd_planes_channel_reduce)(L, dout, x, g, c, mean[c], &dbeta[c], &sdyxm);
            dgamma[c] = sdyxm * invstd[c];
            ch_coef(c, M, train, gamma, invstd, dbeta[c], sdyxm, a, b, e);
            for (int64_t n = 0; n < N; ++n) {
                const int64_t off = n * g->sn + c * g->sc;
                if (train)
                    L->plane_dx(dout + off, x + off, dx + off, S, mean[c], a[c], b[c], e[c], st);
                else
                    FN(ch_plane_dx_test)(dout + off, dx + off, S, a[c]);
            }
        }
        return;
    }
    /* dgamma holds sum_dyxm until it is turned into the gradient */
    FN(ch_grad_sums)(dout, x, g, mean, work, dbeta, dgamma);
    for (int64_t c = 0; c < C; ++c) {
        ch_coef(c, M, train, gamma, invstd, dbeta[c], dgamma[c], a, b, e);
        dgamma[c] = dgamma[c] * invstd[c];
    }
    if (train)
        FN(ch_dx)(dout, x, dx, g, mean, a, b, e);
    else
        FN(ch_dx_test)(dout, dx, g, a);
}

#undef ND_SCH
