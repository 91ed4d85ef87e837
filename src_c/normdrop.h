/*
 * normdrop.h -- the C kernels behind normdrop's CPU backend.
 *
 * The kernels implement the backend contract (normdrop/_contract.py): the
 * four steps every normalization op is made of -- nd_moments, nd_normalize,
 * nd_grad_reduce, nd_grad_input -- and two composites that fuse them
 * (nd_norm_train_fwd, nd_norm_bwd), over a geometry that says how an
 * element maps to its statistics group and to its affine channel; plus the
 * dropout kernels and the running-statistics update.  The same names are
 * used by the Cython bindings and the CUDA kernels (the .cu files of normdrop/_cuda).
 *
 * Conventions (every kernel):
 *   - kernels only compute: the caller allocates every output and the
 *     scratch (nd_work_size doubles);
 *   - sizes, strides and indices are int64_t (element counts, not bytes);
 *   - per-group statistics, per-channel parameters and coefficients are
 *     double, whatever the data type;
 *   - results do not depend on the OpenMP thread count: work is cut into units
 *     whose boundaries depend only on the shape, and partial results are merged
 *     in a fixed order;
 *   - no Python.h: the Cython layer releases the GIL around each call.
 *
 * Geometry (nd_geom): the operand seen as (n, c, s) -- n samples, c channels
 * (the index of gamma and beta), s values per channel and sample -- in one
 * of three memory layouts:
 *   ND_ROWS:   value (i, j) at  i * sn + j                 (s == 1).
 *              A C-contiguous (N, D) matrix; for batchnorm also an NHWC
 *              array seen as (N*H*W, C) rows.
 *   ND_PLANES: value (i, j, k) at  i * sn + j * sc + k.
 *              A C-contiguous NCHW array (s = H * W); for batchnorm also a
 *              Fortran-ordered (N, D) matrix (n = 1, s = rows).
 *   ND_CLAST:  value (i, j, k) at  i * sn + k * ss + j     (groups > 0 only).
 *              A channels-last (NHWC) array seen as NCHW.
 * Statistics groups: groups == 0, one per channel, over samples and
 * positions (batchnorm); groups == G > 0, one per sample and group of c / G
 * consecutive channels (groupnorm; layernorm is G = 1 on rows), group index
 * i * G + j / (c / G).
 */
#ifndef NORMDROP_H
#define NORMDROP_H

#include <stddef.h>
#include <stdint.h>

#define ND_ROWS 0
#define ND_PLANES 1
#define ND_CLAST 2

typedef struct {
    int64_t kind;    /* ND_ROWS, ND_PLANES or ND_CLAST */
    int64_t n;       /* samples (rows, planes per channel) */
    int64_t c;       /* channels */
    int64_t s;       /* values per channel and sample (1 for ND_ROWS) */
    int64_t sn;      /* stride between samples */
    int64_t sc;      /* stride between channels (1 for ND_ROWS, ND_CLAST) */
    int64_t ss;      /* stride between positions (1 for ND_PLANES) */
    int64_t groups;  /* 0: per channel; G > 0: G groups per sample */
} nd_geom;

/* Statistics groups of g: c (groups == 0) or n * groups. */
int64_t nd_ngroups(const nd_geom *g);
/* Doubles of scratch the kernels below need for g (at least 1): the forward
 * ones (nd_moments, nd_normalize, nd_norm_train_fwd) with backward == 0, the
 * backward ones (nd_grad_reduce, nd_grad_input, nd_norm_bwd) with
 * backward == 1. */
int64_t nd_work_size(const nd_geom *g, int backward);

/* Number of OpenMP threads a kernel would use (1 without OpenMP, and 1 in a
 * process that nd_forked_serial names). */
int nd_max_threads(void);
/* Once per process, before the first kernel: registers the fork handler that
 * keeps a forked child from waiting on its parent's OpenMP threads.  0, or
 * pthread_atfork's error number. */
int nd_init(void);
/* 1 in a process forked from a thread that had run a parallel region whose
 * OpenMP thread pool could not be released before fork() (a fork from inside
 * a parallel region, or a runtime without omp_pause_resource_all): GNU
 * libgomp's threads do not survive fork(), so the kernels run on one thread
 * there (with the same results).  Elsewhere 0 (nd_common.c). */
int nd_forked_serial(void);
/* 1 when compiled with OpenMP. */
int nd_have_openmp(void);

/* The instruction-set variant each kernel family runs on this processor:
 * the normalization kernels' ND_CLONES clone ("x86-64-v4", "avx2",
 * "default") and the dropout loops' ("avx512", "avx2", "generic"). */
const char *nd_norm_isa(void);
const char *nd_dropout_isa(void);
/* 0 when the build is pinned to a variant (ND_FORCE_ISA_LEVEL: NORMDROP_ISA
 * in setup.py) that this processor cannot run, else 1. */
int nd_isa_runnable(void);

/* The dropout keep threshold floor(p * 2**32) (nd_philox.h), for tests. */
uint64_t nd_keep_threshold(double p);
/* The moments merge of nd_moments.h, for tests and the synchronized
 * batchnorm: per group k < ngroups, the nsets sets of set-major arrays
 * count[s * ngroups + k], mean[...], m2[...] merged in set order into
 * out_count[k], out_mean[k], out_m2[k]. */
void nd_merge_moments(int64_t nsets, int64_t ngroups, const double *count, const double *mean,
                      const double *m2, double *out_count, double *out_mean, double *out_m2);

#define ND_DECLARE(T, SUF)                                                          \
    /* mean[k], m2[k] <- mean and sum of squared deviations of group k. */        \
    void nd_moments_##SUF(const T *x, const nd_geom *g, double *work,               \
                          double *mean, double *m2);                                \
    /* out <- (x - mean[grp]) * (invstd[grp] * gamma[ch]) + beta[ch]. */           \
    void nd_normalize_##SUF(const T *x, T *out, const nd_geom *g,                   \
                            const double *mean, const double *invstd,               \
                            const double *gamma, const double *beta, double *work); \
    /* s1[k], s2[k] <- sum(dout * w), sum(dout * w * (x - mean[k])) over group  \
     * k, w = gamma[ch] for groups > 0 and 1 for groups == 0;                      \
     * dgamma[ch] <- sum(dout * (x - mean) * invstd), dbeta[ch] <- sum(dout). */   \
    void nd_grad_reduce_##SUF(const T *dout, const T *x, const nd_geom *g,          \
                              const double *mean, const double *invstd,             \
                              const double *gamma, double *work, double *s1,        \
                              double *s2, double *dgamma, double *dbeta);           \
    /* dx <- the input gradient from grad_reduce's s1, s2 over count values per \
     * group (train == 0: test-mode batchnorm, dx = gamma * invstd * dout). */     \
    void nd_grad_input_##SUF(const T *dout, const T *x, T *dx, const nd_geom *g,    \
                             const double *mean, const double *invstd,              \
                             const double *gamma, const double *s1,                 \
                             const double *s2, int train, double count,             \
                             double *work);                                         \
    /* Composite: nd_moments, var = m2 / count, invstd = 1 / sqrt(var + eps),    \
     * nd_normalize -- in one call, fused where a group fits in cache. */          \
    void nd_norm_train_fwd_##SUF(const T *x, T *out, const nd_geom *g,              \
                                 const double *gamma, const double *beta,           \
                                 double eps, double *work, double *mean,            \
                                 double *var, double *invstd);                      \
    /* Composite: nd_grad_reduce then nd_grad_input, fused where possible. */      \
    void nd_norm_bwd_##SUF(const T *dout, const T *x, T *dx, const nd_geom *g,      \
                           const double *mean, const double *invstd,                \
                           const double *gamma, int train, double *work,            \
                           double *dgamma, double *dbeta);                          \
    /* out[k] <- (1 - momentum) * batch[k] + momentum * old[k] in double, rounded \
     * once; old is old32 or old64 (float32 or float64), or zeros when both are  \
     * NULL. */                                                                    \
    void nd_running_update_##SUF(const float *old32, const double *old64,           \
                                 const double *batch, double momentum, T *out,      \
                                 int64_t c);                                        \
    /* out[i] <- keep(i) ? x[i] * (T)(1/p) : 0 and the packed keep bits, value i \
     * with the generator word of index offset + i. */                             \
    void nd_dropout_fwd_##SUF(const T *x, T *out, uint8_t *bits, int64_t n,         \
                              uint64_t seed, uint64_t offset, double p);            \
    /* dx[i] <- bit(i) ? dout[i] * (T)(1/p) : 0. */                                 \
    void nd_dropout_bwd_##SUF(const T *dout, const uint8_t *bits, T *dx,            \
                              int64_t n, double p);

ND_DECLARE(float, f32)
ND_DECLARE(double, f64)

/* mask[i] <- keep(i) as 0/1 bytes, n values from generator index offset. */
void nd_dropout_mask(uint8_t *mask, int64_t n, uint64_t seed, uint64_t offset, double p);

/* Outputs of at least this many bytes are written with non-temporal
 * (streaming) stores where the processor has them: they bypass the caches, so
 * an output larger than the caches costs one write instead of a read for
 * ownership plus a write.  The values written are the same either way. */
void nd_set_stream_bytes(int64_t bytes);
int64_t nd_get_stream_bytes(void);

/* For the tests: refuse the channels-last groupnorm passes' scratch (0 never,
 * 1 on every thread, 2 on the odd-numbered threads of a team), as a failed
 * allocation would; the per-group loops then give the same bits. */
void nd_set_scratch_refusal(int mode);

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
/* Whether new blocks of 4 MiB or more ask for transparent huge pages (1 by
 * default); returns the previous setting, or -1 where this build cannot ask
 * (not Linux, or no MADV_HUGEPAGE). */
int nd_pool_set_hugepage(int on);
/* Once per process, before the first use: registers the fork handlers that
 * keep a forked child from inheriting the cache's lock held.  0, or
 * pthread_atfork's error number. */
int nd_pool_init(void);
/* For tests: holds the cache's lock for `seconds` (as a trim in another
 * thread would, briefly). */
void nd_pool_hold(double seconds);

#endif /* NORMDROP_H */
