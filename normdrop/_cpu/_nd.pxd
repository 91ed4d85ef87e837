# The C kernels of src_c/normdrop.h, declared once for the Cython modules of
# normdrop._cpu (_kernels.pyx, _pool.pyx).  See normdrop.h for each kernel's
# formula, arguments and memory layout.
from libc.stdint cimport int64_t, uint64_t, uint8_t


cdef extern from "normdrop.h" nogil:
    ctypedef struct nd_geom:
        int64_t kind
        int64_t n
        int64_t c
        int64_t s
        int64_t sn
        int64_t sc
        int64_t ss
        int64_t groups

    int64_t nd_ngroups(const nd_geom *g)
    int64_t nd_work_size(const nd_geom *g, int backward)
    int nd_max_threads()
    int nd_init()
    int nd_forked_serial()
    int nd_have_openmp()
    uint64_t nd_keep_threshold(double p)
    const char *nd_norm_isa()
    const char *nd_dropout_isa()
    int nd_isa_runnable()
    void nd_merge_moments(int64_t nsets, int64_t ngroups, const double *count,
                          const double *mean, const double *m2, double *out_count,
                          double *out_mean, double *out_m2)

    void nd_moments_f32(const float *x, const nd_geom *g, double *work, double *mean,
                        double *m2)
    void nd_moments_f64(const double *x, const nd_geom *g, double *work, double *mean,
                        double *m2)
    void nd_normalize_f32(const float *x, float *out, const nd_geom *g, const double *mean,
                          const double *invstd, const double *gamma, const double *beta,
                          double *work)
    void nd_normalize_f64(const double *x, double *out, const nd_geom *g, const double *mean,
                          const double *invstd, const double *gamma, const double *beta,
                          double *work)
    void nd_grad_reduce_f32(const float *dout, const float *x, const nd_geom *g,
                            const double *mean, const double *invstd, const double *gamma,
                            double *work, double *s1, double *s2, double *dgamma,
                            double *dbeta)
    void nd_grad_reduce_f64(const double *dout, const double *x, const nd_geom *g,
                            const double *mean, const double *invstd, const double *gamma,
                            double *work, double *s1, double *s2, double *dgamma,
                            double *dbeta)
    void nd_grad_input_f32(const float *dout, const float *x, float *dx, const nd_geom *g,
                           const double *mean, const double *invstd, const double *gamma,
                           const double *s1, const double *s2, int train, double count,
                           double *work)
    void nd_grad_input_f64(const double *dout, const double *x, double *dx, const nd_geom *g,
                           const double *mean, const double *invstd, const double *gamma,
                           const double *s1, const double *s2, int train, double count,
                           double *work)
    void nd_norm_train_fwd_f32(const float *x, float *out, const nd_geom *g,
                               const double *gamma, const double *beta, double eps,
                               double *work, double *mean, double *var, double *invstd)
    void nd_norm_train_fwd_f64(const double *x, double *out, const nd_geom *g,
                               const double *gamma, const double *beta, double eps,
                               double *work, double *mean, double *var, double *invstd)
    void nd_norm_bwd_f32(const float *dout, const float *x, float *dx, const nd_geom *g,
                         const double *mean, const double *invstd, const double *gamma,
                         int train, double *work, double *dgamma, double *dbeta)
    void nd_norm_bwd_f64(const double *dout, const double *x, double *dx, const nd_geom *g,
                         const double *mean, const double *invstd, const double *gamma,
                         int train, double *work, double *dgamma, double *dbeta)
    void nd_running_update_f32(const float *old32, const double *old64, const double *batch,
                               double momentum, float *out, int64_t c)
    void nd_running_update_f64(const float *old32, const double *old64, const double *batch,
                               double momentum, double *out, int64_t c)

    void nd_dropout_fwd_f32(const float *x, float *out, uint8_t *bits, int64_t n,
                            uint64_t seed, uint64_t offset, double p)
    void nd_dropout_fwd_f64(const double *x, double *out, uint8_t *bits, int64_t n,
                            uint64_t seed, uint64_t offset, double p)
    void nd_dropout_bwd_f32(const float *dout, const uint8_t *bits, float *dx, int64_t n,
                            double p)
    void nd_dropout_bwd_f64(const double *dout, const uint8_t *bits, double *dx, int64_t n,
                            double p)
    void nd_dropout_mask(uint8_t *mask, int64_t n, uint64_t seed, uint64_t offset, double p)

    void nd_set_stream_bytes(int64_t nbytes)
    int64_t nd_get_stream_bytes()
    void nd_set_scratch_refusal(int mode)

    void *nd_pool_malloc(void *ctx, size_t size)
    void *nd_pool_calloc(void *ctx, size_t nelem, size_t elsize)
    void *nd_pool_realloc(void *ctx, void *ptr, size_t new_size)
    void nd_pool_free(void *ctx, void *ptr, size_t size)
    size_t nd_pool_set_limit(size_t limit)
    void nd_pool_trim()
    void nd_pool_info(uint64_t *info)
    int nd_pool_set_hugepage(int on)
    int nd_pool_init()
    void nd_pool_hold(double seconds)


cdef extern from "nd_philox.h" nogil:
    void nd_philox4x32_10(const unsigned int *ctr, unsigned int k0, unsigned int k1,
                          unsigned int *out)
