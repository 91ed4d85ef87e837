/* nd_norm_channel_avx512.h -- the avx512 variant's float32 statistics loop
 * of ND_ROWS operands (batchnorm), written with AVX-512 intrinsics.  Included
 * by nd_norm_channel_loops.h (ND_V avx512, T float) in place of its portable
 * nd_rows_stats_unit; it computes, value for value, the operations of that
 * loop in the same order (each vector lane is one channel, summed over the
 * rows in order), so its results are the other variants' bits.
 *
 * Why by hand: GCC vectorizes the portable loop with 512-bit loads of 16
 * floats, whose upper halves it extracts (vextractf32x8) before converting
 * them, and without the prefetches the mean pass needs; here every 8 floats
 * are converted straight from memory
 * (vcvtps2pd zmm, m256), 32 channels x 4 rows per iteration, and the mean
 * pass prefetches each line ND_PF512_ROWS rows on, as the avx2 loop does.
 * The 4096 x 1024 statistics took 0.72x the time of the portable loop
 * (0.49 against 0.68 ms; Intel Xeon, AVX-512, 2 threads).  The other
 * per-channel loops of this variant stay the portable ones: the avx2
 * variant's hand-written backward loops ran slower here. */

#define ND_CVT8(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))   /* 8 floats at p, as doubles (exact) */
#define ND_LD8(p) _mm512_loadu_pd(p)
#define ND_ST8(p, v) _mm512_storeu_pd((p), (v))

#define ND_PF512_ROWS 8
/* the two lines of 32 floats at j, off values on, in each of the four rows */
#define ND_PF8(off)                                                                       \
    do {                                                                                  \
        ND_PREFETCH_L2(p0 + j + (off)); ND_PREFETCH_L2(p0 + j + 16 + (off));              \
        ND_PREFETCH_L2(p1 + j + (off)); ND_PREFETCH_L2(p1 + j + 16 + (off));              \
        ND_PREFETCH_L2(p2 + j + (off)); ND_PREFETCH_L2(p2 + j + 16 + (off));              \
        ND_PREFETCH_L2(p3 + j + (off)); ND_PREFETCH_L2(p3 + j + 16 + (off));              \
    } while (0)
ND_V_ATTR
static void FV(nd_rows_stats_unit)(const float *x, int64_t sn, int64_t r0, int64_t r1,
                                   int64_t c0, int64_t w, double *wk, int64_t next)
{
    double acc[ND_SWEEP], m[ND_SWEEP];
    const float *base = x + c0;
    const int64_t w32 = w & ~(int64_t)31, w8 = w & ~(int64_t)7;
    for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *p0 = base + r * sn, *p1 = p0 + sn, *p2 = p1 + sn, *p3 = p2 + sn;
        /* the same lines ND_PF512_ROWS rows on, while they are the unit's */
        const int64_t ah = r + 4 + ND_PF512_ROWS <= r1 ? ND_PF512_ROWS * sn : 0;
        int64_t j = 0;
        for (; j < w32; j += 32) {
            if (ah) ND_PF8(ah);
            __m512d a0 = ND_LD8(acc + j), a1 = ND_LD8(acc + j + 8);
            __m512d a2 = ND_LD8(acc + j + 16), a3 = ND_LD8(acc + j + 24);
#define ND_ROW8(p)                                                                             \
    a0 = _mm512_add_pd(a0, ND_CVT8((p) + j));       a1 = _mm512_add_pd(a1, ND_CVT8((p) + j + 8));  \
    a2 = _mm512_add_pd(a2, ND_CVT8((p) + j + 16));  a3 = _mm512_add_pd(a3, ND_CVT8((p) + j + 24));
            ND_ROW8(p0)
            ND_ROW8(p1)
            ND_ROW8(p2)
            ND_ROW8(p3)
#undef ND_ROW8
            ND_ST8(acc + j, a0); ND_ST8(acc + j + 8, a1);
            ND_ST8(acc + j + 16, a2); ND_ST8(acc + j + 24, a3);
        }
        for (; j < w8; j += 8) {
            __m512d a = ND_LD8(acc + j);
            a = _mm512_add_pd(a, ND_CVT8(p0 + j));
            a = _mm512_add_pd(a, ND_CVT8(p1 + j));
            a = _mm512_add_pd(a, ND_CVT8(p2 + j));
            a = _mm512_add_pd(a, ND_CVT8(p3 + j));
            ND_ST8(acc + j, a);
        }
        FN(nd_sum_rows4)(acc, p0, p1, p2, p3, j, w);
    }
    for (; r < r1; ++r) {
        const float *p = base + r * sn;
        int64_t j = 0;
        for (; j < w8; j += 8) ND_ST8(acc + j, _mm512_add_pd(ND_LD8(acc + j), ND_CVT8(p + j)));
        FN(nd_sum_row)(acc, p, j, w);
    }
    const double cnt = (double)(r1 - r0);
    for (int64_t j = 0; j < w; ++j) { m[j] = acc[j] / cnt; acc[j] = 0.0; }
    r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float *p0 = base + r * sn, *p1 = p0 + sn, *p2 = p1 + sn, *p3 = p2 + sn;
        int64_t j = 0;
        for (; j < w32; j += 32) {
            const __m512d m0 = ND_LD8(m + j), m1 = ND_LD8(m + j + 8);
            const __m512d m2 = ND_LD8(m + j + 16), m3 = ND_LD8(m + j + 24);
            __m512d a0 = ND_LD8(acc + j), a1 = ND_LD8(acc + j + 8);
            __m512d a2 = ND_LD8(acc + j + 16), a3 = ND_LD8(acc + j + 24);
            __m512d d0, d1, d2, d3;
            if (next) ND_PF8(next);
#define ND_ROW8(p)                                                                            \
    d0 = _mm512_sub_pd(ND_CVT8((p) + j), m0);       d1 = _mm512_sub_pd(ND_CVT8((p) + j + 8), m1);  \
    d2 = _mm512_sub_pd(ND_CVT8((p) + j + 16), m2);  d3 = _mm512_sub_pd(ND_CVT8((p) + j + 24), m3); \
    a0 = _mm512_add_pd(a0, _mm512_mul_pd(d0, d0));  a1 = _mm512_add_pd(a1, _mm512_mul_pd(d1, d1)); \
    a2 = _mm512_add_pd(a2, _mm512_mul_pd(d2, d2));  a3 = _mm512_add_pd(a3, _mm512_mul_pd(d3, d3));
            ND_ROW8(p0)
            ND_ROW8(p1)
            ND_ROW8(p2)
            ND_ROW8(p3)
#undef ND_ROW8
            ND_ST8(acc + j, a0); ND_ST8(acc + j + 8, a1);
            ND_ST8(acc + j + 16, a2); ND_ST8(acc + j + 24, a3);
        }
        for (; j < w8; j += 8) {
            const __m512d mv = ND_LD8(m + j);
            __m512d a = ND_LD8(acc + j), d;
            d = _mm512_sub_pd(ND_CVT8(p0 + j), mv); a = _mm512_add_pd(a, _mm512_mul_pd(d, d));
            d = _mm512_sub_pd(ND_CVT8(p1 + j), mv); a = _mm512_add_pd(a, _mm512_mul_pd(d, d));
            d = _mm512_sub_pd(ND_CVT8(p2 + j), mv); a = _mm512_add_pd(a, _mm512_mul_pd(d, d));
            d = _mm512_sub_pd(ND_CVT8(p3 + j), mv); a = _mm512_add_pd(a, _mm512_mul_pd(d, d));
            ND_ST8(acc + j, a);
        }
        FN(nd_sqdev_rows4)(acc, m, p0, p1, p2, p3, j, w);
    }
    for (; r < r1; ++r) {
        const float *p = base + r * sn;
        int64_t j = 0;
        for (; j < w8; j += 8) {
            const __m512d d = _mm512_sub_pd(ND_CVT8(p + j), ND_LD8(m + j));
            ND_ST8(acc + j, _mm512_add_pd(ND_LD8(acc + j), _mm512_mul_pd(d, d)));
        }
        FN(nd_sqdev_row)(acc, m, p, j, w);
    }
    for (int64_t j = 0; j < w; ++j) { wk[2 * j] = m[j]; wk[2 * j + 1] = acc[j]; }
}

#undef ND_CVT8
#undef ND_LD8
#undef ND_ST8
#undef ND_PF512_ROWS
#undef ND_PF8
