/*
 * normdrop.h -- the C kernels behind normdrop's CPU backend.
 *
 * Conventions (every kernel):
 *   - kernels only compute: the caller allocates every output and workspace;
 *   - sizes, strides and indices are int64_t (element counts, not bytes);
 *   - per-channel statistics and coefficients are double, whatever the data type;
 *   - results do not depend on the OpenMP thread count: work is cut into units
 *     whose boundaries depend only on the shape, and partial results are merged
 *     in a fixed order;
 *   - no Python.h: the Cython layer releases the GIL around each call.
 *
 * Geometry of a batchnorm operand (nd_geom): the data are C channels, each
 * holding N * S values, in one of two memory layouts.
 *   ND_ROWS:   value (m, c), m < N, at  m * sn + c          (S == 1).
 *              A C-contiguous (N, D) matrix, or an NHWC array seen as
 *              (N*H*W, C) rows.
 *   ND_PLANES: value (n, c, s) at  n * sn + c * sc + s.
 *              A C-contiguous NCHW array (S = H * W), or a Fortran-ordered
 *              (N, D) matrix (N = 1, S = rows).
 */
#ifndef NORMDROP_H
#define NORMDROP_H

#include <stddef.h>
#include <stdint.h>

#define ND_ROWS 0
#define ND_PLANES 1

typedef struct {
    int64_t kind;  /* ND_ROWS or ND_PLANES */
    int64_t n;     /* rows (ND_ROWS) or planes per channel (ND_PLANES) */
    int64_t c;     /* channels */
    int64_t s;     /* values per plane (1 for ND_ROWS) */
    int64_t sn;    /* stride between rows / planes of one channel */
    int64_t sc;    /* stride between channels (1 for ND_ROWS) */
} nd_geom;

/* Doubles of workspace nd_bn_stats_* and nd_bn_bwd_reduce_* need for g. */
int64_t nd_bn_work_size(const nd_geom *g);

/* Number of OpenMP threads a kernel would use (1 without OpenMP). */
int nd_max_threads(void);
/* 1 when compiled with OpenMP. */
int nd_have_openmp(void);

#define ND_DECLARE(T, SUF)                                                          \
    /* mean[c], var[c] <- per-channel mean and biased variance of x. */            \
    void nd_bn_stats_##SUF(const T *x, const nd_geom *g, double *work,              \
                           double *mean, double *var);                              \
    /* out <- (x - mean[c]) * scale[c] + shift[c]  (out has x's geometry). */       \
    void nd_bn_affine_##SUF(const T *x, T *out, const nd_geom *g,                   \
                            const double *mean, const double *scale,                \
                            const double *shift);                                   \
    /* Training forward in one call: stats, invstd = 1/sqrt(var + eps),         \
     * scale = gamma * invstd, out = (x - mean) * scale + beta. */                  \
    void nd_bn_train_fwd_##SUF(const T *x, T *out, const nd_geom *g,                \
                               const double *gamma, const double *beta, double eps, \
                               double *work, double *mean, double *var,             \
                               double *invstd, double *scale);                      \
    /* Backward in one call: dx, dgamma = sum(dout*(x-mean))*invstd,                \
     * dbeta = sum(dout); coef is scratch of 3 c doubles. */                        \
    void nd_bn_backward_##SUF(const T *dout, const T *x, T *dx, const nd_geom *g,   \
                              const double *gamma, const double *mean,              \
                              const double *invstd, int train, double *work,        \
                              double *coef, double *dgamma, double *dbeta);         \
    /* sum_dy[c] <- sum(dout), sum_dyxm[c] <- sum(dout * (x - mean[c])). */         \
    void nd_bn_bwd_reduce_##SUF(const T *dout, const T *x, const nd_geom *g,        \
                                const double *mean, double *work,                   \
                                double *sum_dy, double *sum_dyxm);                  \
    /* dx <- a[c] * dout + b[c] * (x - mean[c]) + e[c]. */                          \
    void nd_bn_bwd_dx_##SUF(const T *dout, const T *x, T *dx, const nd_geom *g,     \
                            const double *mean, const double *a, const double *b,   \
                            const double *e);                                       \
    /* out[i] <- keep(i) ? x[i] * scale : 0 and the packed keep bits, n values. */  \
    void nd_dropout_fwd_##SUF(const T *x, T *out, uint8_t *bits, int64_t n,         \
                              uint64_t seed, uint64_t threshold, T scale);          \
    /* dx[i] <- bit(i) ? dout[i] * scale : 0. */                                    \
    void nd_dropout_bwd_##SUF(const T *dout, const uint8_t *bits, T *dx,            \
                              int64_t n, T scale);

ND_DECLARE(float, f32)
ND_DECLARE(double, f64)

/* bits <- packed keep bits of n values (ceil(n / 8) bytes). */
void nd_dropout_bits(uint8_t *bits, int64_t n, uint64_t seed, uint64_t threshold);
/* mask[i] <- keep(i) as 0/1 bytes, n values. */
void nd_dropout_mask(uint8_t *mask, int64_t n, uint64_t seed, uint64_t threshold);

/* Outputs of at least this many bytes are written with non-temporal
 * (streaming) stores where the processor has them: they bypass the caches, so
 * an output larger than the caches costs one write instead of a read for
 * ownership plus a write.  The values written are the same either way. */
void nd_set_stream_bytes(int64_t bytes);
int64_t nd_get_stream_bytes(void);

/* The output-buffer cache (nd_pool.c): NumPy PyDataMemAllocator functions
 * (64-byte aligned data) and its controls.  info <- blocks cached, bytes
 * cached, limit, hits, misses. */
void *nd_pool_malloc(void *ctx, size_t size);
void *nd_pool_calloc(void *ctx, size_t nelem, size_t elsize);
void *nd_pool_realloc(void *ctx, void *ptr, size_t new_size);
void nd_pool_free(void *ctx, void *ptr, size_t size);
size_t nd_pool_set_limit(size_t limit);
void nd_pool_trim(void);
void nd_pool_info(uint64_t info[5]);

#endif /* NORMDROP_H */
