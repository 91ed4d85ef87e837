/*
 * nd_batchnorm.c -- batchnorm kernels, float32 and float64.
 *
 * The statistics use a fixed partition of each channel into units:
 *   ND_ROWS:   a unit is a block of ND_RB(c) rows x a tile of at most ND_CT
 *              channels; the tile (at most 256 KiB) is read twice while it is
 *              in cache (mean, then sum of squared deviations), so x is read
 *              from memory once.
 *   ND_PLANES: a unit is a segment of at most ND_SEG values of one plane,
 *              likewise two passes in cache.
 * Each unit yields (count, mean, M2) in double; units of a channel are merged in
 * index order with Chan et al.'s pairwise update.  The partition depends only
 * on the shape, so the result is the same for every thread count.
 * Sums inside a segment use eight fixed accumulators (lane k takes values
 * k, k+8, ...), which vectorizes without reassociating anything.
 */
#include <math.h>

#include "normdrop.h"
#include "nd_common.h"

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
static int64_t nd_planes_nseg(const nd_geom *g) { return g->s > 0 ? nd_cdiv(g->s, ND_SEG) : 1; }

int64_t nd_bn_work_size(const nd_geom *g)
{
    if (g->kind == ND_ROWS)
        return 2 * nd_cdiv(g->n > 0 ? g->n : 1, nd_rows_rb(g)) * (g->c > 0 ? g->c : 1);
    return 2 * (g->c > 0 ? g->c : 1) * (g->n > 0 ? g->n : 1) * nd_planes_nseg(g);
}

int nd_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
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

/* Chan et al.: merge (nb, mb, m2b) into (*na, *ma, *m2a). */
static inline void nd_chan_merge(double *na, double *ma, double *m2a,
                                 double nb, double mb, double m2b)
{
    if (nb <= 0.0) return;
    if (*na == 0.0) {   /* the first unit: its values, exactly (d * d could overflow) */
        *na = nb;
        *ma = mb;
        *m2a = m2b;
        return;
    }
    double n = *na + nb;
    double d = mb - *ma;
    *ma += d * (nb / n);
    *m2a += m2b + d * d * (*na * nb / n);
    *na = n;
}

/* Streaming stores for this batchnorm output: large enough (nd_stream_ok),
 * 64-byte aligned, and written in contiguous runs (a row of an ND_ROWS
 * output, a plane of an ND_PLANES one) of whole cache lines, at least 1 KiB
 * long.  Shorter or ragged runs would share cache lines between streamed and
 * cached stores, which is slower than not streaming at all. */
static int nd_bn_stream(const void *out, const nd_geom *g, int64_t elsize)
{
    const int64_t run = (g->kind == ND_ROWS ? g->c : g->s) * elsize;
    return ((uintptr_t)out & 63) == 0 && run % 64 == 0 && run >= 1024 &&
           nd_stream_ok(g->n * g->c * g->s * elsize);
}

#define T float
#define SUF f32
#define ND_AFFINE_FLOAT 1
#include "nd_batchnorm_impl.h"
#undef T
#undef SUF
#undef ND_AFFINE_FLOAT

#define T double
#define SUF f64
#define ND_AFFINE_FLOAT 0
#include "nd_batchnorm_impl.h"
#undef T
#undef SUF
#undef ND_AFFINE_FLOAT
