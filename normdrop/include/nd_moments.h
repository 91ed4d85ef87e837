/*
 * nd_moments.h -- merging the moments (count, mean, M2) of disjoint sets of
 * values: the one definition used by the C kernels (compiled as C11), the
 * CUDA kernels (compiled under NVRTC, shipped as package data) and the
 * synchronized batchnorm (through the C extension), so that no two copies
 * can drift.  No host-only headers when compiled for the GPU.
 *
 * Chan, Golub & LeVeque (1979), pairwise update: with d = mean_b - mean_a,
 *   n = n_a + n_b,  mean = mean_a + d * n_b / n,
 *   M2 = M2_a + M2_b + d^2 * n_a * n_b / n.
 * A first set (n_a == 0) is taken as it is: the formula would multiply
 * d * d, which overflows to inf for |mean| beyond ~1e154, by n_a = 0.
 *
 * A d that is not finite: when a mean is inf or NaN (inf in the data), the
 * merged mean is mean_a + mean_b -- +inf with +inf or a finite mean stays
 * +inf, +inf with -inf is NaN, NaN stays NaN: the mean of the whole -- and
 * M2 is NaN, as the two-pass variance of such data is (the formula would
 * compute inf - inf for a finite set after an infinite one).  When both means
 * are finite and only their difference overflows (float64 data near its
 * largest values), the mean is their weighted mean, which cannot overflow,
 * and M2 is +inf, the size of d * d.  "d - d != 0.0" is true exactly for inf
 * and NaN (nothing here is compiled with fast-math), and needs no math.h.
 */
#ifndef ND_MOMENTS_H
#define ND_MOMENTS_H

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define ND_MOMENTS_FN static __host__ __device__ __forceinline__
#else
#define ND_MOMENTS_FN static inline
#endif

/* Merge (nb, mb, m2b) into (*na, *ma, *m2a).  nb <= 0 leaves it unchanged. */
ND_MOMENTS_FN void nd_chan_merge(double *na, double *ma, double *m2a, double nb, double mb,
                                 double m2b)
{
    if (nb <= 0.0) return;
    if (*na == 0.0) {
        *na = nb;
        *ma = mb;
        *m2a = m2b;
        return;
    }
    const double n = *na + nb;
    const double d = mb - *ma;
    if (d - d != 0.0) {
        if (*ma - *ma == 0.0 && mb - mb == 0.0) {   /* finite means, d overflowed */
            *ma = *ma * (*na / n) + mb * (nb / n);
            *m2a = d * d;                            /* +inf */
        } else {
            *ma = *ma + mb;
            *m2a = d - d;                            /* NaN */
        }
        *na = n;
        return;
    }
    *ma += d * (nb / n);
    *m2a += m2b + d * d * (*na * nb / n);
    *na = n;
}

#endif /* ND_MOMENTS_H */
