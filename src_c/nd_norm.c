/*
 * nd_norm.c -- the normalization kernels of the backend contract (normdrop.h),
 * float32 and float64: nd_moments, nd_normalize, nd_grad_reduce,
 * nd_grad_input and the composites nd_norm_train_fwd, nd_norm_bwd, for both
 * kinds of statistics groups -- per channel (nd_norm_channel.h: batchnorm)
 * and per sample and group of channels (nd_norm_group.h: groupnorm,
 * layernorm) -- plus nd_running_update and the moments merge of nd_moments.h.
 *
 * This file holds the partitions (which depend only on the shape) and the
 * type-independent helpers; nd_norm_impl.h is included once per data type.
 */
#include <math.h>
#include <stdlib.h>

#include "normdrop.h"
#include "nd_common.h"
#include "nd_moments.h"
#include "nd_philox.h"

/* Whether this processor has the x86-64-v4 level the AVX-512 variants are
 * built for (AVX-512 F, BW, CD, DQ and VL, with AVX2, FMA and BMI2): the test
 * of the target_clones resolver, nd_ch_level, gr_simd and nd_norm_isa. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static inline int nd_cpu_v4(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
}
#endif

/* The group kernels' float32 AVX2 loops (nd_norm_group.h): x86-64 with GCC or
 * Clang, unless ND_NO_CLONES or ND_GR_PORTABLE (testing: the portable loops
 * only) is defined. */
#if ND_X86_SIMD && !defined(ND_GR_PORTABLE)
#include <immintrin.h>
#define ND_GR_SIMD 1
/* Which of the float32 group loops this processor runs: 2 the AVX-512 ones
 * where they exist (the x86-64-v4 level, as nd_ch_level), else the AVX2 ones;
 * 1 the AVX2 ones; 0 the portable ones.  Found once (asked per run of a
 * group; a race between threads stores the same value). */
static inline int gr_simd(void)
{
#if defined(ND_FORCE_ISA_LEVEL)
    return ND_FORCE_ISA_LEVEL >= 2 ? 2 : ND_FORCE_ISA_LEVEL;
#else
    static int simd = -1;
    int v = __atomic_load_n(&simd, __ATOMIC_RELAXED);
    if (v < 0) {
        v = nd_cpu_v4() ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
        __atomic_store_n(&simd, v, __ATOMIC_RELAXED);
    }
    return v;
#endif
}
#else
#define ND_GR_SIMD 0
#endif

/* Request [p, p + bytes) for writing (PREFETCHW, a hint that changes no
 * result): a row's output lines are fetched while its statistics are formed,
 * rather than when its elementwise pass stores to them: for outputs of at
 * least ND_GR_PFW_BYTES, which do not stay in the L2 caches (measured 3 to 6 %
 * faster for layernorm's forward there, and as much slower on data in L2;
 * for the backward's float32 dx, slower; for its float64 dx, faster: see
 * gr_backward). */
#define ND_GR_PFW_BYTES ((int64_t)4 << 20)
static inline void gr_prefetchw(const void *p, int64_t bytes)
{
#if ND_X86_SIMD && !defined(ND_GR_NO_PREFETCHW)
    for (int64_t o = 0; o < bytes; o += 64) __asm__ volatile("prefetchw (%0)" ::"r"((const char *)p + o));
#else
    (void)p;
    (void)bytes;
#endif
}

/* ------------------------------------------- per channel (groups == 0) */
#define ND_CT 256          /* channels per ND_ROWS tile */
#define ND_TILE_VALUES 32768
#define ND_SEG 16384       /* values per ND_PLANES segment */
#define ND_LANES 32        /* fixed accumulators of a segment sum */
#define ND_AFFINE_ROWS 16  /* rows per work item of the elementwise ND_ROWS passes */
/* An ND_PLANES channel whose operands take at most this many bytes is finished
 * (statistics, then the elementwise pass) by one thread while it is in cache. */
#define ND_FUSE_BYTES (1 << 20)
/* Channels needed to split the work by channel rather than by unit. */
#define ND_FUSE_MIN_C 8

static int64_t nd_rows_ct(const nd_geom *g) { return g->c < ND_CT ? (g->c > 0 ? g->c : 1) : ND_CT; }
static int64_t nd_rows_rb(const nd_geom *g)
{
    int64_t rb = ND_TILE_VALUES / nd_rows_ct(g);
    return rb > 0 ? rb : 1;
}

/* Channels per work item of an ND_ROWS reduction pass: a work item is a
 * block of nd_rows_rb rows by a sweep of channels, each channel summed over
 * the block's rows in order, so the sweep's width changes no result (only rb
 * does); wider sweeps read longer runs of each row.  A whole number of
 * tiles of nd_rows_ct channels, at most ND_SWEEP (the size of the unit
 * loops' stack arrays), halved while a parallel pass would have fewer than
 * four work items per thread. */
#define ND_SWEEP 1024
#if ND_SWEEP < ND_CT
#error "ND_SWEEP must be at least ND_CT"
#endif
static int64_t nd_rows_sweep(const nd_geom *g)
{
    const int64_t ct = nd_rows_ct(g), C = g->c > 0 ? g->c : 1;
    const int64_t nrb = nd_cdiv(g->n > 0 ? g->n : 1, nd_rows_rb(g));
    const int64_t threads = g->n * g->c >= ND_PARALLEL_MIN ? nd_max_threads() : 1;
    const int64_t want = threads > 1 ? 4 * threads : 1;
    const int64_t tiles = nd_cdiv(C, ct);
    int64_t k = nd_min64(ND_SWEEP / ct, tiles);   /* >= 1: ct <= ND_CT <= ND_SWEEP */
    while (k > 1 && nrb * nd_cdiv(tiles, k) < want) k = (k + 1) / 2;
    return k * ct;
}
/* The ND_PLANES units of a channel, about ND_SEG values each: a plane of at
 * least ND_SEG values is cut into segments of ND_SEG values (the last one
 * shorter); smaller planes are taken ND_SEG / S whole planes at a time (the
 * last unit holding the rest), so a channel has about N * S / ND_SEG units,
 * whatever N.  Units are numbered in memory order: plane block, then
 * segment. */
static int64_t nd_planes_nseg(const nd_geom *g) { return g->s > 0 ? nd_cdiv(g->s, ND_SEG) : 1; }
/* Planes per unit: 1 for planes of ND_SEG values or more, all of them for
 * empty planes. */
static int64_t nd_planes_per_unit(const nd_geom *g)
{
    if (g->s >= ND_SEG) return 1;
    if (g->s <= 0) return g->n > 0 ? g->n : 1;
    return ND_SEG / g->s;
}
/* Units per channel. */
static int64_t nd_planes_units(const nd_geom *g)
{
    return nd_cdiv(g->n > 0 ? g->n : 1, nd_planes_per_unit(g)) * nd_planes_nseg(g);
}

/* Unit k of a channel: planes [*p0, *p0 + *np), values [*s0, *s0 + *len) of
 * each (*np or *len 0 when the channel is empty). */
typedef struct {
    int64_t p0, np, s0, len;
} nd_punit;

static inline nd_punit nd_planes_unit(const nd_geom *g, int64_t k)
{
    const int64_t nseg = nd_planes_nseg(g), per = nd_planes_per_unit(g);
    nd_punit u;
    u.p0 = (k / nseg) * per;
    u.np = nd_min64(per, g->n - u.p0);
    if (u.np < 0) u.np = 0;
    u.s0 = (k % nseg) * ND_SEG;
    u.len = nd_min64(ND_SEG, g->s - u.s0);
    if (u.len < 0) u.len = 0;
    return u;
}

/* Doubles of unit results the per-channel reductions keep: ND_ROWS, 2 per
 * channel and row block; ND_PLANES with few channels (the units of all
 * channels at once), 2 per unit; ND_PLANES with ND_FUSE_MIN_C channels or
 * more merges each channel's units as it goes, and keeps none. */
static int64_t ch_reduce_work(const nd_geom *g)
{
    if (g->kind == ND_ROWS)
        return 2 * nd_cdiv(g->n > 0 ? g->n : 1, nd_rows_rb(g)) * (g->c > 0 ? g->c : 1);
    if (g->c >= ND_FUSE_MIN_C) return 0;
    return 2 * (g->c > 0 ? g->c : 1) * nd_planes_units(g);
}

/* The coefficients of dx = a * dout + b * (x - mean) + e for channel c, from
 * its sums: a = gamma * invstd; training: dgamma = sum_dyxm * invstd,
 * b = -a * invstd * dgamma / M, e = -a * sum_dy / M (M values per channel);
 * test mode: b = e = 0.  Where b is not finite it is computed again with the
 * sum first, -a * (invstd * (dgamma / M)): a constant channel with a tiny eps
 * has a * invstd = gamma / eps beyond the double range (inf for eps below
 * ~5e-309, or 2e-307 with gamma = 10) times dgamma = 0, which is 0, not
 * NaN.  Finite coefficients keep their bits. */
static inline void ch_coef(int64_t c, double M, int train, const double *gamma,
                           const double *invstd, double sum_dy, double sum_dyxm, double *a,
                           double *b, double *e)
{
    const double dg = sum_dyxm * invstd[c];
    a[c] = gamma[c] * invstd[c];
    if (train) {
        e[c] = -a[c] * sum_dy / M;
        b[c] = -a[c] * invstd[c] * dg / M;
        if (b[c] - b[c] != 0.0) b[c] = -a[c] * (invstd[c] * (dg / M));
    } else {
        b[c] = 0.0;
        e[c] = 0.0;
    }
}


/* ---------------------------------- per sample and channel group (groups > 0) */
/* A group of at most this many values is one statistics unit (two passes in
 * cache); larger groups are cut into units of about this size. */
#define ND_GR_UNIT 32768
/* float32: units of at most this many values, whose conversions to double
 * (16 KiB; or the 8 KiB of floats, converted again: gr_unit) stay in L1 for
 * the second pass. */
#define ND_GR_UNIT32 2048
/* Values per block of whole samples in the backward (its per-channel partial
 * sums are one row of the scratch) ... */
#define ND_GR_BLOCK 32768
/* ... and at most this many doubles of such partial sums in all. */
#define ND_GR_SCRATCH ((int64_t)1 << 20)
/* Channels of a channel-run group whose coefficients are formed at once. */
#define ND_GR_TILE 256
/* Groups per sample up to which the forward forms the coefficient ranges
 * (gr_range) once per call rather than once per group. */
#define ND_GR_RANGES 64
/* Channels up to which each thread of a float32 forward over channel runs
 * keeps gamma and beta in float for the whole call (2 ND_GR_CF floats). */
#define ND_GR_CF 4096


/* One statistics group: nrun runs of len contiguous values, stride apart,
 * from base; per_run: run r is channel c0 + r, else position t of every run is
 * channel c0 + t. */
typedef struct {
    int64_t base, nrun, len, stride, c0;
    int per_run;
} nd_grp;

static inline nd_grp nd_group(const nd_geom *g, int64_t k)
{
    const int64_t G = g->groups, cg = g->c / G, i = k / G, q = k % G;
    nd_grp r;
    r.c0 = q * cg;
    if (g->kind == ND_PLANES) {
        r.base = i * g->sn + q * cg * g->sc;
        r.nrun = cg;
        r.len = g->s;
        r.stride = g->sc;
        r.per_run = 1;
    } else if (g->kind == ND_CLAST) {
        r.base = i * g->sn + q * cg;
        r.nrun = g->s;
        r.len = cg;
        r.stride = g->ss;
        r.per_run = 0;
    } else {
        r.base = i * g->sn + q * cg;
        r.nrun = 1;
        r.len = cg;
        r.stride = 0;
        r.per_run = 0;
    }
    return r;
}

/* Group k cut to its runs [r0, r0 + nr) (channels-last: rows r0.. of the
 * sample). */
static inline nd_grp nd_group_rows(const nd_geom *g, int64_t k, int64_t r0, int64_t nr)
{
    nd_grp r = nd_group(g, k);
    r.base += r0 * r.stride;
    r.nrun = nr;
    return r;
}

/* Values per group. */
static int64_t nd_group_count(const nd_geom *g) { return (g->c / g->groups) * g->s; }

/* Samples per block of the backward: about ND_GR_BLOCK values, and few
 * enough blocks that their partial sums (3 c doubles each) stay within
 * ND_GR_SCRATCH (or one block where c alone exceeds it). */
static int64_t nd_group_block(const nd_geom *g)
{
    const int64_t N = g->n > 0 ? g->n : 1, C = g->c > 0 ? g->c : 1;
    const int64_t per = C * (g->s > 0 ? g->s : 1);
    int64_t nb = ND_GR_BLOCK / per;
    if (nb < 1) nb = 1;
    int64_t maxb = ND_GR_SCRATCH / (3 * C);
    if (maxb < 1) maxb = 1;
    if (nd_cdiv(N, nb) > maxb) nb = nd_cdiv(N, maxb);
    return nb;
}

/* rng[0], rng[1] <- the largest |gamma| and |beta| of channels [c0, c0 + len),
 * or +inf where one of them is NaN: what the float32 forward checks its
 * float formula's range with (nd_aff32_ok). */
static void gr_range(const double *gamma, const double *beta, int64_t c0, int64_t len,
                     double *rng)
{
    double a = 0.0, b = 0.0;
    int nan = 0;
    for (int64_t j = 0; j < len; ++j) {
        const double u = fabs(gamma[c0 + j]), v = fabs(beta[c0 + j]);
        a = u > a ? u : a;
        b = v > b ? v : b;
        nan |= (u != u) | (v != v);
    }
    rng[0] = nan ? INFINITY : a;
    rng[1] = nan ? INFINITY : b;
}

/* Whether a float32 group with mean m, invstd r and coefficient range rng
 * (gr_range) is normalized with the float formula: nd_aff32_ok for the mean
 * and for r times the largest |gamma| -- then for every channel's
 * r * gamma, rounding being monotonic -- and |r|, |gamma| <= 2^100, which
 * the channel-run formula uses as floats. */
static inline int gr_aff32_ok(double m, double r, const double *rng)
{
    const double big = 0x1p100, ar = fabs(r);
    return ((m == 0.0) | ((fabs(m) >= 0x1p-100) & (fabs(m) <= big))) & (ar * rng[0] <= big) &
           (rng[1] <= big) & (ar <= big) & (rng[0] <= big);
}

/* The coefficients of group k's dx = (rd gamma[ch]) dout + b (x - mean) + e
 * from its sums (M values): training dx = r (gamma dout - s1 / M -
 * x_hat r s2 / M), i.e. rd = r, b = -r^3 s2 / M, e = -r s1 / M; test mode
 * rd = r, b = e = 0.  As in ch_coef, a b that is not finite is computed again
 * with the sum first (r^3 overflows for eps below ~3e-206; a constant group
 * has s2 = 0).  A group of one value in training has dx exactly 0 (its
 * output is beta whatever x is): rd = b = e = 0, so dx = 0 * dout + 0 * (x -
 * mean) + 0 is 0, and NaN where dout, gamma or x is not finite, as the
 * reference's dxhat - dxhat; with rd = r it would be r gamma dout -
 * r (gamma dout), a rounding error times r, which a tiny eps makes as large
 * as 1e136.  Returns rd. */
static inline double gr_coef(double r, double s1, double s2, double M, int train, double *b,
                             double *e)
{
    *b = 0.0;
    *e = 0.0;
    if (!train || M <= 0.0) return r;
    if (M == 1.0) return 0.0;
    *b = -(r * r * r) * s2 / M;
    if (*b - *b != 0.0) *b = -(r * (r * (r * (s2 / M))));
    *e = -r * s1 / M;
    return r;
}


/* Doubles of scratch per thread of the sample-at-a-time channels-last passes
 * (gr_cl_*, nd_norm_group.h), and the most they take (1 MiB: up to about
 * 18000 channels in groups of 32 or more, 12000 in groups of 8, 3000 in
 * groups of 1; more channels run group by group). */
#define ND_GR_CL_WORK ((int64_t)1 << 17)
static int64_t gr_cl_work(const nd_geom *g)
{
    const int64_t C = g->c, G = g->groups, cg = C / G;
    return 6 * C + (cg < ND_LANES ? ND_LANES / cg : 1) * C + 4 * G;
}

/* Into how many ranges of groups a pass over nu units (samples, or the
 * backward's sample blocks) cuts each unit: one where there are units for
 * every thread of a parallel pass, else enough for every thread (at most G).
 * The backward cuts its blocks so for planes (NCHW) and for channels-last
 * groups the per-group loops take, not for the sample-at-a-time
 * channels-last sums: there, two threads summing halves of every row (each
 * into its own scratch) and writing halves of dx took 0.78-0.93x the time of
 * one thread at 1x256x28x28 (G = 32) but 1.1-1.55x at 1x256x56x56 (G = 32),
 * 1x64x70x70 (G = 2) and 1x64x56x56 float64 (G = 8) (Zen 3, 2 threads). */
static inline int64_t gr_split_chunks(const nd_geom *g, int64_t nu)
{
    const int64_t th = g->n * g->c * g->s >= ND_PARALLEL_MIN ? (int64_t)nd_max_threads() : 1;
    if (nu >= th || nu <= 0) return 1;
    return nd_min64(g->groups, nd_cdiv(th, nu));
}

/* The same for the sample-at-a-time channels-last passes other than the
 * backward's sums (nd_norm_group.h). */
static inline int64_t gr_cl_chunks(const nd_geom *g) { return gr_split_chunks(g, g->n); }

/* The channels-last passes for groups of other run lengths (nd_norm_group.h,
 * gr_clt_*): groups in batches of this many, the tiled normalize's tiles of
 * rows about this many bytes of the batch's channels. */
#define ND_GR_CLT_BATCH 32
#define ND_GR_CLT_TILE 65536

/* Work unit u of those passes (nch per sample or block, gr_split_chunks):
 * sample (block) *i, its groups [*q0, *q0 + *nq). */
static inline void gr_cl_unit(const nd_geom *g, int64_t u, int64_t nch, int64_t *i, int64_t *q0,
                              int64_t *nq)
{
    const int64_t gpc = nd_cdiv(g->groups, nch), c = u % nch;
    *i = u / nch;
    *q0 = c * gpc;
    *nq = *q0 < g->groups ? nd_min64(gpc, g->groups - *q0) : 0;
}

/* Work unit u of the elementwise passes that follow such ranges (nch per
 * sample): sample *i, its rows [*r0, *r0 + *nr), every group.  (Fewer
 * samples than threads: the statistics go by ranges of a sample's groups,
 * the output by ranges of its rows.  When the output too went by ranges of
 * groups, two threads wrote halves of every row and runs of 128 bytes and
 * more took 0.92-1.30x the time of the group-by-group loops; by rows, in one
 * process against those loops, 2 threads, Zen 3, one sample: 1x64x70x70 G=2
 * float32 0.60-0.69x, 1x512x14x14 G=32 float64 0.81-0.83x, 1x512x28x28 G=16
 * 0.89x, 1x256x56x56 G=8 float64 0.82x, 1x128x28x28 G=4 0.95-0.97x;
 * 1x512x14x14 G=8 float32 (runs of 256 bytes, 100 000 values) 1.10-1.15x.) */
static inline void gr_row_unit(const nd_geom *g, int64_t u, int64_t nch, int64_t *i, int64_t *r0,
                               int64_t *nr)
{
    const int64_t rpc = nd_cdiv(g->s, nch), c = u % nch;
    *i = u / nch;
    *r0 = c * rpc;
    *nr = *r0 < g->s ? nd_min64(rpc, g->s - *r0) : 0;
}

/* t <- the ND_LANES lanes of group q from A: channels q cg + j (cg <=
 * ND_LANES; the lanes past cg are 0), or A[q ND_LANES + k] (cg a multiple of
 * ND_LANES). */
static inline void gr_cl_lanes(const double *A, int64_t q, int64_t cg, double *t)
{
    if (cg >= ND_LANES) {
        for (int k = 0; k < ND_LANES; ++k) t[k] = A[q * ND_LANES + k];
        return;
    }
    for (int k = 0; k < ND_LANES; ++k) t[k] = k < cg ? A[q * cg + k] : 0.0;
}

/* t <- the ND_LANES lanes of group q from ND_LANES / cg arrays of C (cg
 * divides ND_LANES): lane p cg + j is channel q cg + j of array p. */
static inline void gr_cl_flat_lanes(const double *B, int64_t q, int64_t cg, int64_t C, double *t)
{
    const int64_t P = ND_LANES / cg;
    for (int64_t p = 0; p < P; ++p)
        for (int64_t j = 0; j < cg; ++j) t[p * cg + j] = B[p * C + q * cg + j];
}

/* dgamma[ch], dbeta[ch]: the blocks' partials (P, 3 c doubles each: dg, db,
 * scratch) added in block order. */
static void gr_finish_channels(const nd_geom *g, int64_t nblk, const double *P, double *dgamma,
                               double *dbeta)
{
    const int64_t C = g->c;
    ND_OMP_FOR(nblk * C >= ND_PARALLEL_MIN)
    for (int64_t c = 0; c < C; ++c) {
        double a = 0.0, b = 0.0;
        for (int64_t k = 0; k < nblk; ++k) {
            a += P[3 * C * k + c];
            b += P[3 * C * k + C + c];
        }
        dgamma[c] = a;
        dbeta[c] = b;
    }
}

/* ----------------------------------------------------------- shared */

/* The per-channel inner loops (nd_norm_channel_loops.h) come in variants:
 * avx512 (the features of x86-64-v4, as the ND_CLONES clone), avx2 (AVX2 and
 * FMA) and generic, chosen at run time by nd_ch_level: on x86-64 with GCC or
 * Clang unless ND_NO_CLONES is defined; elsewhere the generic loops only.
 * ND_FORCE_ISA_LEVEL (testing) pins one. */
#if ND_X86_SIMD
#define ND_CH_VARIANTS 1
#define ND_CH_TARGET_AVX2 "avx2,fma"
#define ND_CH_TARGET_AVX512 "avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,bmi2"
#else
#define ND_CH_VARIANTS 0
#endif

#if ND_CH_VARIANTS
#include <immintrin.h>

/* The variant of the per-channel loops this processor runs: 2 avx512, 1 avx2,
 * 0 generic. */
static int nd_ch_level(void)
{
#if defined(ND_FORCE_ISA_LEVEL)
    return ND_FORCE_ISA_LEVEL;
#else
    /* found once (the group kernels ask per plane run): a race between
     * threads stores the same value */
    static int level = -1;
    int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
    if (l >= 0) return l;
    l = nd_cpu_v4() ? 2 : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
    __atomic_store_n(&level, l, __ATOMIC_RELAXED);
    return l;
#endif
}
#endif

/* Sum of the ND_LANES accumulators, pairwise in a fixed order (a tree of
 * halves: lane k + h is added to lane k, h = ND_LANES/2, ..., 1). */
static inline double nd_lanes_sum(const double *a)
{
    double t[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) t[k] = a[k];
    for (int h = ND_LANES / 2; h > 0; h /= 2)
        for (int k = 0; k < h; ++k) t[k] += t[k + h];
    return t[0];
}

/* Fixed accumulators of the group backward's sums (lane k takes positions
 * k mod ND_GR_BL), few enough that two rows' sums stay in registers. */
#define ND_GR_BL 8

/* The backward's row sums (gr_rows_sums) prefetch the rows this many rows on:
 * an even number (rows go two at a time) that puts at least ND_GR_PF_BYTES of
 * each row's data ahead.  The hardware prefetchers restart at each 4 KiB page,
 * about one row of layernorm's (N, 1024) float32: 2 rows ahead (the next
 * pair) took 0.82-0.86x the time of no prefetch for a (4096, 1024) or
 * (4096, 768) float32 backward (interleaved in one process, AMD Zen 5, 1 and
 * 2 threads); 3 to 6 rows no better.  Rows shorter than ND_GR_PF_MIN bytes
 * (several to a page: 1.1x the time at (16384, 256), none at (8192, 512)) and
 * rows so long that the rows ahead would lie more than ND_GR_PF_MAX bytes on
 * are not prefetched (0).  Prefetches are hints: no result changes. */
#define ND_GR_PF_BYTES 4096
#define ND_GR_PF_MIN 2048
#define ND_GR_PF_MAX 16384
static inline int64_t gr_prefetch_rows(int64_t row_bytes)
{
    if (row_bytes < ND_GR_PF_MIN) return 0;
    int64_t p = nd_cdiv(ND_GR_PF_BYTES, row_bytes);
    p += p & 1;
    return p * row_bytes <= ND_GR_PF_MAX ? p : 0;
}

/* Sum of the ND_GR_BL accumulators, pairwise in a fixed order. */
static inline double gr_bl_sum(const double *a)
{
    double t[ND_GR_BL];
    for (int k = 0; k < ND_GR_BL; ++k) t[k] = a[k];
    for (int h = ND_GR_BL / 2; h > 0; h /= 2)
        for (int k = 0; k < h; ++k) t[k] += t[k + h];
    return t[0];
}

/* Streaming stores for this output: large enough (nd_stream_ok), 64-byte
 * aligned, and written in contiguous runs (a row of an ND_ROWS output, a plane
 * of an ND_PLANES one) of whole cache lines, at least 1 KiB long.  Shorter or
 * ragged runs would share cache lines between streamed and cached stores,
 * which is slower than not streaming at all. */
static int nd_norm_stream(const void *out, const nd_geom *g, int64_t elsize)
{
    const int64_t run = (g->kind == ND_PLANES ? g->s : g->c) * elsize;
    return ((uintptr_t)out & 63) == 0 && run % 64 == 0 && run >= 1024 &&
           nd_stream_ok(g->n * g->c * g->s * elsize);
}

/* Streaming stores for a group kernel's output: as nd_norm_stream, for the
 * runs of a group (a plane, or the c / G channels of a row or position). */
static int gr_stream(const void *out, const nd_geom *g, int64_t elsize)
{
    const int64_t run = (g->kind == ND_PLANES ? g->s : g->c / g->groups) * elsize;
    return ((uintptr_t)out & 63) == 0 && run % 64 == 0 && run >= 1024 &&
           nd_stream_ok(g->n * g->c * g->s * elsize);
}

int64_t nd_ngroups(const nd_geom *g) { return g->groups == 0 ? g->c : g->n * g->groups; }

int64_t nd_work_size(const nd_geom *g, int backward)
{
    const int64_t C = g->c > 0 ? g->c : 1;
    if (g->groups == 0) return ch_reduce_work(g) + (backward ? 3 : 1) * C;
    if (!backward) return 1;
    const int64_t nblk = nd_cdiv(g->n > 0 ? g->n : 1, nd_group_block(g));
    return 3 * C * nblk + 2 * (nd_ngroups(g) > 0 ? nd_ngroups(g) : 1);
}

int nd_max_threads(void)
{
#ifdef _OPENMP
    return nd_forked_serial() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

int nd_have_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

uint64_t nd_keep_threshold(double p) { return nd_dropout_threshold(p); }

/* The level the processor can run (2 x86-64-v4 and avx512, 1 avx2, 0
 * default), by the tests nd_norm_isa makes. */
#if defined(ND_FORCE_ISA_LEVEL) && defined(__x86_64__) && defined(__GNUC__)
static int nd_cpu_level(void)
{
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
    /* a pinned x86-64-v4 build may use every feature of the level (MOVBE,
     * LZCNT, F16C, ...), which a virtual machine can hide one by one */
    if (nd_cpu_v4() && __builtin_cpu_supports("x86-64-v4")) return 2;
#else
    if (nd_cpu_v4()) return 2;
#endif
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
}
#endif

int nd_isa_runnable(void)
{
#if defined(ND_FORCE_ISA_LEVEL) && defined(__x86_64__) && defined(__GNUC__)
    return ND_FORCE_ISA_LEVEL <= nd_cpu_level();
#else
    return 1;
#endif
}

const char *nd_norm_isa(void)
{
#if defined(ND_FORCE_ISA_LEVEL) && defined(__x86_64__) && defined(__GNUC__) && \
    !defined(ND_NO_CLONES) && (defined(__clang__) || __GNUC__ >= 6) && defined(__linux__)
    /* (where ND_CLONES is pinned with it, nd_common.h) */
    static const char *const pinned[] = {"default (pinned at build)", "avx2 (pinned at build)",
                                         "x86-64-v4 (pinned at build)"};
    return pinned[ND_FORCE_ISA_LEVEL >= 2 ? 2 : ND_FORCE_ISA_LEVEL <= 0 ? 0 : 1];
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(ND_NO_CLONES) && \
    (defined(__clang__) || __GNUC__ >= 6) && defined(__linux__)
    /* the choice the target_clones resolver makes (ND_CLONES, nd_common.h),
     * which nd_ch_level makes too, but for an AVX2 processor without FMA */
    if (nd_cpu_v4()) return "x86-64-v4";
    if (!__builtin_cpu_supports("avx2")) return "default";
    return nd_ch_level() == 1 ? "avx2" : "avx2 (per-channel loops: default)";
#elif ND_CH_VARIANTS
    /* no target_clones here (not ELF): only the per-channel loops vary */
    static const char *const names[] = {"default", "default (per-channel loops: avx2)",
                                        "default (per-channel loops: x86-64-v4)"};
    return names[nd_ch_level()];
#else
    return "default (one variant)";
#endif
}

void nd_merge_moments(int64_t nsets, int64_t ngroups, const double *count, const double *mean,
                      const double *m2, double *out_count, double *out_mean, double *out_m2)
{
    for (int64_t k = 0; k < ngroups; ++k) {
        double n = 0.0, mu = 0.0, q = 0.0;
        for (int64_t s = 0; s < nsets; ++s)
            nd_chan_merge(&n, &mu, &q, count[s * ngroups + k], mean[s * ngroups + k],
                          m2[s * ngroups + k]);
        out_count[k] = n;
        out_mean[k] = mu;
        out_m2[k] = q;
    }
}

#define T float
#define SUF f32
#define ND_AFFINE_FLOAT 1
#include "nd_norm_impl.h"
#undef T
#undef SUF
#undef ND_AFFINE_FLOAT

#define T double
#define SUF f64
#define ND_AFFINE_FLOAT 0
#include "nd_norm_impl.h"
#undef T
#undef SUF
#undef ND_AFFINE_FLOAT
