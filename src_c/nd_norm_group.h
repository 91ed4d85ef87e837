/* nd_norm_group.h -- the contract's steps for statistics per sample and group
 * of channels (groups > 0: spatial groupnorm, and layernorm as one group of
 * every feature of a row), for one data type.  Included by nd_norm_impl.h
 * with T, SUF and FN defined; everything here is static and named gr_*.
 *
 * A group (i, q) -- sample i, channels [q cg, (q + 1) cg), cg = c / G -- is a
 * set of runs of contiguous values (nd_grp):
 *   plane runs (ND_PLANES): run r is channel q cg + r, its S values at
 *              i sn + (q cg + r) sc;
 *   channel runs (ND_ROWS: one run; ND_CLAST: S runs at stride ss): position
 *              t of a run is channel q cg + t.
 * Statistics, in double: a group of at most ND_GU values (ND_GR_UNIT32 for
 * float32, ND_GR_UNIT for float64) is one unit, read twice in cache (mean,
 * then sum of squared deviations; float32 keeps the first pass's conversions
 * to double in an L1 buffer for the second, except a one-run unit on the
 * AVX2 loops, which converts twice: gr_sum_run_avx2); a larger group is cut into units
 * of whole runs or run segments of at most ND_GU values, merged in order
 * (nd_chan_merge).  Sums use fixed accumulators: lane k takes the positions
 * t = k mod ND_LANES of every run, in run order (the backward's row sums
 * ND_GR_BL lanes).
 * Elementwise passes: float64 in double, rounded once; the float32 forward in
 * float with the mean split in two floats (gr_group_normalize), the float32
 * dx in double, rounded once.
 * Work is split over groups (forward, grad_input) or over blocks of whole
 * samples (grad_reduce and the fused backward, whose per-channel dgamma and
 * dbeta are summed per block and the blocks then added in order), with
 * boundaries that depend only on the shape: the results do not depend on the
 * thread count, nor on which loops (AVX-512, AVX2 or portable: GR_CALL) run.
 */

/* Values per chunk of a streamed output (see nd_stream_copy). */
#define ND_GSCH ((int64_t)(ND_STREAM_CHUNK / sizeof(T)))

/* ------------------------------------------------ float32 AVX2 variants
 * The float32 loops that convert to double, written with AVX2 intrinsics:
 * GCC vectorizes their portable C (below) with a 256-bit load and
 * vextractf128 for the upper four floats, and vinsertf128 to store the
 * rounded results, where vcvtps2pd from memory and 128-bit stores do without
 * (about a third of the conversions' cost, measured).  Each computes the
 * same IEEE operations in the same order, lane for lane, as its portable
 * version, so either gives the same bits.  Each also comes with 512-bit
 * vectors (below); GR_CALL picks one of the three at run time (gr_simd). */
#if ND_GR_SIMD && ND_AFFINE_FLOAT
#define ND_GR_AVX2 __attribute__((target("avx2")))

ND_GR_AVX2 static inline __m256d gr_ld4(const float *p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }

/* gr_sum_cvt: 32 lanes (8 vectors), the tail of each run added lane by lane. */
ND_GR_AVX2 static double gr_sum_cvt_avx2(const float *p, int64_t nrun, int64_t len,
                                         int64_t stride, double *buf)
{
    __m256d a[8];
    double t[ND_LANES];
    for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_pd();
    for (int64_t r = 0; r < nrun; ++r) {
        const float *q = p + r * stride;
        double *b = buf + r * len;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES)
            for (int k = 0; k < 8; ++k) {
                const __m256d v = gr_ld4(q + i + 4 * k);
                _mm256_storeu_pd(b + i + 4 * k, v);
                a[k] = _mm256_add_pd(a[k], v);
            }
        int k = 0;   /* the tail: whole vectors of lanes 4 j .. 4 j + 3, then lane by lane */
        for (; i + 4 * k + 4 <= len; ++k) {
            const __m256d v = gr_ld4(q + i + 4 * k);
            _mm256_storeu_pd(b + i + 4 * k, v);
            a[k] = _mm256_add_pd(a[k], v);
        }
        if (i + 4 * k < len) {   /* the last 1-3 values, masked: lanes past them add +0.0,
                                   * which leaves a lane as it is (a lane that starts at
                                   * +0.0 is never -0.0) -- no store and reload of a[k] */
            const __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32((int)(len - i - 4 * k)),
                                              _mm_setr_epi32(0, 1, 2, 3));
            const __m256d v = _mm256_cvtps_pd(_mm_maskload_ps(q + i + 4 * k, m));
            _mm256_maskstore_pd(b + i + 4 * k, _mm256_cvtepi32_epi64(m), v);
            a[k] = _mm256_add_pd(a[k], v);
        }
    }
    for (int k = 0; k < 8; ++k) _mm256_storeu_pd(t + 4 * k, a[k]);
    return nd_lanes_sum(t);
}

/* The two passes of gr_unit over one run of len floats without gr_sum_cvt's
 * buffer: gr_sum_run_avx2 is gr_sum_cvt's sum, gr_sqdev_run_avx2 converts
 * the (L1-resident) floats again where gr_sqdev_buf reads back their doubles
 * (the same lanes, the same operations: the same bits).  Used by gr_unit on
 * processors that run the AVX2 loops: on a Zen 3 core the buffer's stores
 * cost more than the second conversions once the data come from memory
 * (float32 layernorm forward, 2 threads, (4096, 1024) and (8, 512, 768):
 * 0.89-0.91 of the buffered time; groupnorm forward 0.83-0.90; rows in L2
 * or of 64 to 256 values 0.96-1.01, though the statistics alone, without
 * the normalize pass, took 1.3 times as long in L2); the AVX-512 loops keep
 * the buffer (not measured without it). */
ND_GR_AVX2 static double gr_sum_run_avx2(const float *q, int64_t len)
{
    __m256d a[8];
    double t[ND_LANES];
    for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + ND_LANES <= len; i += ND_LANES)
        for (int k = 0; k < 8; ++k) a[k] = _mm256_add_pd(a[k], gr_ld4(q + i + 4 * k));
    for (int k = 0; k < 8; ++k) _mm256_storeu_pd(t + 4 * k, a[k]);
    for (int k = 0; i + k < len; ++k) t[k] += (double)q[i + k];
    return nd_lanes_sum(t);
}

/* sum of ((double)q[i] - m)^2, i < n, lanes by i mod ND_LANES; prefetches
 * pf[0, pfn) as gr_sqdev_buf does. */
ND_GR_AVX2 static double gr_sqdev_run_avx2(const float *q, int64_t n, double m, const float *pf,
                                          int64_t pfn)
{
    const __m256d M = _mm256_set1_pd(m);
    __m256d a[8];
    double t[ND_LANES];
    for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + ND_LANES <= n; i += ND_LANES) {
        if (i < pfn) ND_PREFETCH_L2(pf + i);
        if (i + ND_LANES / 2 < pfn) ND_PREFETCH_L2(pf + i + ND_LANES / 2);
        for (int k = 0; k < 8; ++k) {
            const __m256d d = _mm256_sub_pd(gr_ld4(q + i + 4 * k), M);
            a[k] = _mm256_add_pd(a[k], _mm256_mul_pd(d, d));
        }
    }
    for (int k = 0; k < 8; ++k) _mm256_storeu_pd(t + 4 * k, a[k]);
    for (int k = 0; i + k < n; ++k) {
        const double d = (double)q[i + k] - m;
        t[k] += d * d;
    }
    return nd_lanes_sum(t);
}

/* gr_plane_sums: ND_LANES = 32 lanes, 8 vectors per sum. */
ND_GR_AVX2 static void gr_plane_sums_avx2(const float *dp, const float *xp, int64_t len,
                                          double m, double *v1, double *v2)
{
    const __m256d M = _mm256_set1_pd(m);
    __m256d u1[8], u2[8];
    for (int k = 0; k < 8; ++k) {
        u1[k] = _mm256_setzero_pd();
        u2[k] = _mm256_setzero_pd();
    }
    int64_t i = 0;
    for (; i + ND_LANES <= len; i += ND_LANES)
        for (int k = 0; k < 8; ++k) {
            const __m256d d = gr_ld4(dp + i + 4 * k);
            const __m256d y = _mm256_sub_pd(gr_ld4(xp + i + 4 * k), M);
            u1[k] = _mm256_add_pd(u1[k], d);
            u2[k] = _mm256_add_pd(u2[k], _mm256_mul_pd(d, y));
        }
    double a1[ND_LANES], a2[ND_LANES];
    for (int k = 0; k < 8; ++k) {
        _mm256_storeu_pd(a1 + 4 * k, u1[k]);
        _mm256_storeu_pd(a2 + 4 * k, u2[k]);
    }
    for (int k = 0; i + k < len; ++k) {
        const double d = (double)dp[i + k];
        a1[k] += d;
        a2[k] += d * ((double)xp[i + k] - m);
    }
    *v1 = nd_lanes_sum(a1);
    *v2 = nd_lanes_sum(a2);
}

/* The tail of gr_rows_sums' vector loops (positions i <= t < len, as the
 * portable loop, into the lanes' sums a0, b0, a1, b1) and its results s. */
static inline void gr_rows_tail(const float *d0, const float *x0, const float *d1,
                                const float *x1, int nr, int64_t i, int64_t len, double m0,
                                double r0, double m1, double r1, const double *gm, double *db,
                                double *dg, double *a0, double *b0, double *a1, double *b1,
                                double *s)
{
    for (int k = 0; i + k < len; ++k) {
        const int64_t t = i + k;
        const double g = gm[t];
        const double e0 = (double)d0[t], y0 = (double)x0[t] - m0;
        const double w0 = g * e0;
        a0[k] += w0;
        b0[k] += w0 * y0;
        if (nr == 2) {
            const double e1 = (double)d1[t], y1 = (double)x1[t] - m1;
            const double w1 = g * e1;
            a1[k] += w1;
            b1[k] += w1 * y1;
            db[t] = (db[t] + e0) + e1;
            dg[t] = (dg[t] + r0 * (e0 * y0)) + r1 * (e1 * y1);
        } else {
            db[t] += e0;
            dg[t] += r0 * (e0 * y0);
        }
    }
    s[0] = gr_bl_sum(a0);
    s[1] = gr_bl_sum(b0);
    if (nr == 2) {
        s[2] = gr_bl_sum(a1);
        s[3] = gr_bl_sum(b1);
    }
}

/* gr_rows_sums: one or two rows, 8 lanes per sum; each iteration prefetches
 * the lines pf values on in every row it reads. */
ND_GR_AVX2 static inline __attribute__((always_inline)) void
gr_rows_sums_body_avx2(const float *const *dp, const float *const *xp, int nr, int64_t len,
                       const double *m, const double *r, const double *gm, double *db,
                       double *dg, double *s, int64_t pf, const int dopf)
{
    const float *d0 = dp[0], *x0 = xp[0];
    const float *d1 = nr == 2 ? dp[1] : dp[0], *x1 = nr == 2 ? xp[1] : xp[0];
    const double m0 = m[0], r0 = r[0], m1 = nr == 2 ? m[1] : 0.0, r1 = nr == 2 ? r[1] : 0.0;
    const __m256d M0 = _mm256_set1_pd(m0), R0 = _mm256_set1_pd(r0);
    const __m256d M1 = _mm256_set1_pd(m1), R1 = _mm256_set1_pd(r1);
    __m256d a0a = _mm256_setzero_pd(), a0b = a0a, b0a = a0a, b0b = a0a;
    __m256d a1a = a0a, a1b = a0a, b1a = a0a, b1b = a0a;
    int64_t i = 0;
    if (nr == 2) {
        for (; i + 8 <= len; i += 8) {
            if (dopf) {
                _mm_prefetch((const char *)(d0 + i + pf), _MM_HINT_T0);
                _mm_prefetch((const char *)(x0 + i + pf), _MM_HINT_T0);
                _mm_prefetch((const char *)(d1 + i + pf), _MM_HINT_T0);
                _mm_prefetch((const char *)(x1 + i + pf), _MM_HINT_T0);
            }
            const __m256d ga = _mm256_loadu_pd(gm + i), gb = _mm256_loadu_pd(gm + i + 4);
            const __m256d e0a = gr_ld4(d0 + i), e0b = gr_ld4(d0 + i + 4);
            const __m256d y0a = _mm256_sub_pd(gr_ld4(x0 + i), M0);
            const __m256d y0b = _mm256_sub_pd(gr_ld4(x0 + i + 4), M0);
            const __m256d e1a = gr_ld4(d1 + i), e1b = gr_ld4(d1 + i + 4);
            const __m256d y1a = _mm256_sub_pd(gr_ld4(x1 + i), M1);
            const __m256d y1b = _mm256_sub_pd(gr_ld4(x1 + i + 4), M1);
            const __m256d w0a = _mm256_mul_pd(ga, e0a), w0b = _mm256_mul_pd(gb, e0b);
            const __m256d w1a = _mm256_mul_pd(ga, e1a), w1b = _mm256_mul_pd(gb, e1b);
            a0a = _mm256_add_pd(a0a, w0a);
            a0b = _mm256_add_pd(a0b, w0b);
            b0a = _mm256_add_pd(b0a, _mm256_mul_pd(w0a, y0a));
            b0b = _mm256_add_pd(b0b, _mm256_mul_pd(w0b, y0b));
            a1a = _mm256_add_pd(a1a, w1a);
            a1b = _mm256_add_pd(a1b, w1b);
            b1a = _mm256_add_pd(b1a, _mm256_mul_pd(w1a, y1a));
            b1b = _mm256_add_pd(b1b, _mm256_mul_pd(w1b, y1b));
            _mm256_storeu_pd(db + i,
                             _mm256_add_pd(_mm256_add_pd(_mm256_loadu_pd(db + i), e0a), e1a));
            _mm256_storeu_pd(db + i + 4,
                             _mm256_add_pd(_mm256_add_pd(_mm256_loadu_pd(db + i + 4), e0b), e1b));
            const __m256d p0a = _mm256_mul_pd(R0, _mm256_mul_pd(e0a, y0a));
            const __m256d p0b = _mm256_mul_pd(R0, _mm256_mul_pd(e0b, y0b));
            const __m256d p1a = _mm256_mul_pd(R1, _mm256_mul_pd(e1a, y1a));
            const __m256d p1b = _mm256_mul_pd(R1, _mm256_mul_pd(e1b, y1b));
            _mm256_storeu_pd(dg + i,
                             _mm256_add_pd(_mm256_add_pd(_mm256_loadu_pd(dg + i), p0a), p1a));
            _mm256_storeu_pd(dg + i + 4,
                             _mm256_add_pd(_mm256_add_pd(_mm256_loadu_pd(dg + i + 4), p0b), p1b));
        }
    } else {
        for (; i + 8 <= len; i += 8) {
            if (dopf) {
                _mm_prefetch((const char *)(d0 + i + pf), _MM_HINT_T0);
                _mm_prefetch((const char *)(x0 + i + pf), _MM_HINT_T0);
            }
            const __m256d ga = _mm256_loadu_pd(gm + i), gb = _mm256_loadu_pd(gm + i + 4);
            const __m256d e0a = gr_ld4(d0 + i), e0b = gr_ld4(d0 + i + 4);
            const __m256d y0a = _mm256_sub_pd(gr_ld4(x0 + i), M0);
            const __m256d y0b = _mm256_sub_pd(gr_ld4(x0 + i + 4), M0);
            const __m256d w0a = _mm256_mul_pd(ga, e0a), w0b = _mm256_mul_pd(gb, e0b);
            a0a = _mm256_add_pd(a0a, w0a);
            a0b = _mm256_add_pd(a0b, w0b);
            b0a = _mm256_add_pd(b0a, _mm256_mul_pd(w0a, y0a));
            b0b = _mm256_add_pd(b0b, _mm256_mul_pd(w0b, y0b));
            _mm256_storeu_pd(db + i, _mm256_add_pd(_mm256_loadu_pd(db + i), e0a));
            _mm256_storeu_pd(db + i + 4, _mm256_add_pd(_mm256_loadu_pd(db + i + 4), e0b));
            _mm256_storeu_pd(dg + i, _mm256_add_pd(_mm256_loadu_pd(dg + i),
                                                   _mm256_mul_pd(R0, _mm256_mul_pd(e0a, y0a))));
            _mm256_storeu_pd(dg + i + 4,
                             _mm256_add_pd(_mm256_loadu_pd(dg + i + 4),
                                           _mm256_mul_pd(R0, _mm256_mul_pd(e0b, y0b))));
        }
    }
    double a0[ND_GR_BL], b0[ND_GR_BL], a1[ND_GR_BL], b1[ND_GR_BL];
    _mm256_storeu_pd(a0, a0a);
    _mm256_storeu_pd(a0 + 4, a0b);
    _mm256_storeu_pd(b0, b0a);
    _mm256_storeu_pd(b0 + 4, b0b);
    _mm256_storeu_pd(a1, a1a);
    _mm256_storeu_pd(a1 + 4, a1b);
    _mm256_storeu_pd(b1, b1a);
    _mm256_storeu_pd(b1 + 4, b1b);
    gr_rows_tail(d0, x0, d1, x1, nr, i, len, m0, r0, m1, r1, gm, db, dg, a0, b0, a1, b1, s);
}

/* (the loops without the prefetches where pf is 0: their cost showed on short
 * rows) */
ND_GR_AVX2 static void gr_rows_sums_avx2(const float *const *dp, const float *const *xp, int nr,
                                         int64_t len, const double *m, const double *r,
                                         const double *gm, double *db, double *dg, double *s,
                                         int64_t pf)
{
    if (pf)
        gr_rows_sums_body_avx2(dp, xp, nr, len, m, r, gm, db, dg, s, pf, 1);
    else
        gr_rows_sums_body_avx2(dp, xp, nr, len, m, r, gm, db, dg, s, 0, 0);
}

/* o[t] = (float)((r * gm[t]) * d[t] + b * (x[t] - m) + e), t < len (gm NULL:
 * ac in place of r * gm[t]), 8 values at a time. */
ND_GR_AVX2 static inline void gr_dx8_avx2(const float *dp, const float *xp, float *o,
                                          int64_t len, double m, double r, double ac, double b,
                                          double e, const double *gm)
{
    const __m256d M = _mm256_set1_pd(m), R = _mm256_set1_pd(r), A = _mm256_set1_pd(ac);
    const __m256d B = _mm256_set1_pd(b), E = _mm256_set1_pd(e);
    int64_t t = 0;
    for (; t + 8 <= len; t += 8) {
        const __m256d aa = gm ? _mm256_mul_pd(R, _mm256_loadu_pd(gm + t)) : A;
        const __m256d ab = gm ? _mm256_mul_pd(R, _mm256_loadu_pd(gm + t + 4)) : A;
        const __m256d sa = _mm256_add_pd(
            _mm256_add_pd(_mm256_mul_pd(aa, gr_ld4(dp + t)),
                          _mm256_mul_pd(B, _mm256_sub_pd(gr_ld4(xp + t), M))), E);
        const __m256d sb = _mm256_add_pd(
            _mm256_add_pd(_mm256_mul_pd(ab, gr_ld4(dp + t + 4)),
                          _mm256_mul_pd(B, _mm256_sub_pd(gr_ld4(xp + t + 4), M))), E);
        _mm_storeu_ps(o + t, _mm256_cvtpd_ps(sa));
        _mm_storeu_ps(o + t + 4, _mm256_cvtpd_ps(sb));
    }
    for (; t < len; ++t) {
        const double a = gm ? r * gm[t] : ac;
        o[t] = (float)(a * (double)dp[t] + b * ((double)xp[t] - m) + e);
    }
}

/* gr_dx_V (streamed through an L1 buffer when st), gr_run_dx_V and the plane
 * runs' gr_plane_dx_V (nd_plane_dx) around gr_dx8_V, for V avx2 and avx512. */
#define GR_DX_WRAPPERS(V, ATTR)                                                               \
    ATTR static void gr_dx_##V(const float *dp, const float *xp, float *op, int64_t len,       \
                               double m, double r, double ac, double b, double e,             \
                               const double *gm, int st)                                      \
    {                                                                                         \
        if (!st) {                                                                            \
            gr_dx8_##V(dp, xp, op, len, m, r, ac, b, e, gm);                                  \
            return;                                                                           \
        }                                                                                     \
        float buf[ND_GSCH];                                                                   \
        for (int64_t t0 = 0; t0 < len; t0 += ND_GSCH) {                                       \
            const int64_t l = nd_min64(ND_GSCH, len - t0);                                    \
            gr_dx8_##V(dp + t0, xp + t0, buf, l, m, r, ac, b, e, gm ? gm + t0 : NULL);        \
            nd_stream_copy(op + t0, buf, (size_t)l * sizeof(float));                          \
        }                                                                                     \
    }                                                                                         \
    ATTR static void gr_run_dx_##V(const float *dp, const float *xp, float *op, int64_t len,   \
                                   double m, double r, double b, double e, const double *gm,  \
                                   int st)                                                    \
    {                                                                                         \
        gr_dx_##V(dp, xp, op, len, m, r, 0.0, b, e, gm, st);                                  \
    }                                                                                         \
    ATTR static void gr_plane_dx_##V(const float *dp, const float *xp, float *o, int64_t S,    \
                                     double m, double ac, double bc, double ec, int st)       \
    {                                                                                         \
        gr_dx_##V(dp, xp, o, S, m, 0.0, ac, bc, ec, NULL, st);                                \
        if (st) nd_stream_fence();                                                            \
    }

GR_DX_WRAPPERS(avx2, ND_GR_AVX2)

/* ------------------------------------------------ float32 AVX-512 variants
 * The backward's row sums and dx loops with 512-bit vectors, for processors
 * of the x86-64-v4 level (gr_simd() == 2): one vector of 8 doubles is the
 * AVX2 loops' pair of 4-double vectors, lane for lane, so each computes the
 * same IEEE operations in the same order as its AVX2 and portable versions
 * (the tails are the portable code), and gives the same bits with half the
 * instructions. */
#define ND_GR_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2")))

ND_GR_AVX512 static inline __m512d gr_ld8(const float *p)
{
    return _mm512_cvtps_pd(_mm256_loadu_ps(p));
}

/* A vector to and from a local array of 8 doubles, 32 bytes at a time: GCC
 * aligns a local array that takes a 64-byte store to 64 bytes and stores it
 * with vmovapd, which faults under AddressSanitizer, whose relocated frames
 * (detect_stack_use_after_return) do not keep that alignment. */
ND_GR_AVX512 static inline void gr_sta8(double *p, __m512d v)
{
    _mm256_storeu_pd(p, _mm512_castpd512_pd256(v));
    _mm256_storeu_pd(p + 4, _mm512_extractf64x4_pd(v, 1));
}

ND_GR_AVX512 static inline __m512d gr_lda8(const double *p)
{
    return _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_loadu_pd(p)), _mm256_loadu_pd(p + 4),
                              1);
}

/* gr_sum_cvt: 32 lanes (4 vectors, lane 8 k + j in a_k), the tail of each run
 * added lane by lane.  (The accumulators are named, not an array: an array of
 * 64-byte vectors lives in memory, see gr_sta8.) */
ND_GR_AVX512 static double gr_sum_cvt_avx512(const float *p, int64_t nrun, int64_t len,
                                             int64_t stride, double *buf)
{
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    double t[ND_LANES];
    for (int64_t r = 0; r < nrun; ++r) {
        const float *q = p + r * stride;
        double *b = buf + r * len;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES) {
            const __m512d v0 = gr_ld8(q + i), v1 = gr_ld8(q + i + 8);
            const __m512d v2 = gr_ld8(q + i + 16), v3 = gr_ld8(q + i + 24);
            _mm512_storeu_pd(b + i, v0);
            _mm512_storeu_pd(b + i + 8, v1);
            _mm512_storeu_pd(b + i + 16, v2);
            _mm512_storeu_pd(b + i + 24, v3);
            a0 = _mm512_add_pd(a0, v0);
            a1 = _mm512_add_pd(a1, v1);
            a2 = _mm512_add_pd(a2, v2);
            a3 = _mm512_add_pd(a3, v3);
        }
        if (i < len) {   /* lane j of the tail is lane j of the sums */
            gr_sta8(t, a0);
            gr_sta8(t + 8, a1);
            gr_sta8(t + 16, a2);
            gr_sta8(t + 24, a3);
            for (int j = 0; i + j < len; ++j) {
                const double v = (double)q[i + j];
                b[i + j] = v;
                t[j] += v;
            }
            a0 = gr_lda8(t);
            a1 = gr_lda8(t + 8);
            a2 = gr_lda8(t + 16);
            a3 = gr_lda8(t + 24);
        }
    }
    gr_sta8(t, a0);
    gr_sta8(t + 8, a1);
    gr_sta8(t + 16, a2);
    gr_sta8(t + 24, a3);
    return nd_lanes_sum(t);
}

/* gr_plane_sums: ND_LANES = 32 lanes, 4 vectors per sum (named, as above). */
ND_GR_AVX512 static void gr_plane_sums_avx512(const float *dp, const float *xp, int64_t len,
                                              double m, double *v1, double *v2)
{
    const __m512d M = _mm512_set1_pd(m);
    __m512d s0 = _mm512_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    __m512d q0 = s0, q1 = s0, q2 = s0, q3 = s0;
    int64_t i = 0;
    for (; i + ND_LANES <= len; i += ND_LANES) {
        const __m512d d0 = gr_ld8(dp + i), d1 = gr_ld8(dp + i + 8);
        const __m512d d2 = gr_ld8(dp + i + 16), d3 = gr_ld8(dp + i + 24);
        s0 = _mm512_add_pd(s0, d0);
        s1 = _mm512_add_pd(s1, d1);
        s2 = _mm512_add_pd(s2, d2);
        s3 = _mm512_add_pd(s3, d3);
        q0 = _mm512_add_pd(q0, _mm512_mul_pd(d0, _mm512_sub_pd(gr_ld8(xp + i), M)));
        q1 = _mm512_add_pd(q1, _mm512_mul_pd(d1, _mm512_sub_pd(gr_ld8(xp + i + 8), M)));
        q2 = _mm512_add_pd(q2, _mm512_mul_pd(d2, _mm512_sub_pd(gr_ld8(xp + i + 16), M)));
        q3 = _mm512_add_pd(q3, _mm512_mul_pd(d3, _mm512_sub_pd(gr_ld8(xp + i + 24), M)));
    }
    double a1[ND_LANES], a2[ND_LANES];
    gr_sta8(a1, s0);
    gr_sta8(a1 + 8, s1);
    gr_sta8(a1 + 16, s2);
    gr_sta8(a1 + 24, s3);
    gr_sta8(a2, q0);
    gr_sta8(a2 + 8, q1);
    gr_sta8(a2 + 16, q2);
    gr_sta8(a2 + 24, q3);
    for (int k = 0; i + k < len; ++k) {
        const double d = (double)dp[i + k];
        a1[k] += d;
        a2[k] += d * ((double)xp[i + k] - m);
    }
    *v1 = nd_lanes_sum(a1);
    *v2 = nd_lanes_sum(a2);
}

ND_GR_AVX512 static inline __attribute__((always_inline)) void
gr_rows_sums_body_avx512(const float *const *dp, const float *const *xp, int nr, int64_t len,
                         const double *m, const double *r, const double *gm, double *db,
                         double *dg, double *s, int64_t pf, const int dopf)
{
    const float *d0 = dp[0], *x0 = xp[0];
    const float *d1 = nr == 2 ? dp[1] : dp[0], *x1 = nr == 2 ? xp[1] : xp[0];
    const double m0 = m[0], r0 = r[0], m1 = nr == 2 ? m[1] : 0.0, r1 = nr == 2 ? r[1] : 0.0;
    const __m512d M0 = _mm512_set1_pd(m0), R0 = _mm512_set1_pd(r0);
    const __m512d M1 = _mm512_set1_pd(m1), R1 = _mm512_set1_pd(r1);
    __m512d a0 = _mm512_setzero_pd(), b0 = a0, a1 = a0, b1 = a0;
    int64_t i = 0;
    if (nr == 2) {
        for (; i + 8 <= len; i += 8) {
            if (dopf) {
                _mm_prefetch((const char *)(d0 + i + pf), _MM_HINT_T0);
                _mm_prefetch((const char *)(x0 + i + pf), _MM_HINT_T0);
                _mm_prefetch((const char *)(d1 + i + pf), _MM_HINT_T0);
                _mm_prefetch((const char *)(x1 + i + pf), _MM_HINT_T0);
            }
            const __m512d g = _mm512_loadu_pd(gm + i);
            const __m512d e0 = gr_ld8(d0 + i), y0 = _mm512_sub_pd(gr_ld8(x0 + i), M0);
            const __m512d e1 = gr_ld8(d1 + i), y1 = _mm512_sub_pd(gr_ld8(x1 + i), M1);
            const __m512d w0 = _mm512_mul_pd(g, e0), w1 = _mm512_mul_pd(g, e1);
            a0 = _mm512_add_pd(a0, w0);
            b0 = _mm512_add_pd(b0, _mm512_mul_pd(w0, y0));
            a1 = _mm512_add_pd(a1, w1);
            b1 = _mm512_add_pd(b1, _mm512_mul_pd(w1, y1));
            _mm512_storeu_pd(db + i, _mm512_add_pd(_mm512_add_pd(_mm512_loadu_pd(db + i), e0), e1));
            const __m512d p0 = _mm512_mul_pd(R0, _mm512_mul_pd(e0, y0));
            const __m512d p1 = _mm512_mul_pd(R1, _mm512_mul_pd(e1, y1));
            _mm512_storeu_pd(dg + i, _mm512_add_pd(_mm512_add_pd(_mm512_loadu_pd(dg + i), p0), p1));
        }
    } else {
        for (; i + 8 <= len; i += 8) {
            if (dopf) {
                _mm_prefetch((const char *)(d0 + i + pf), _MM_HINT_T0);
                _mm_prefetch((const char *)(x0 + i + pf), _MM_HINT_T0);
            }
            const __m512d g = _mm512_loadu_pd(gm + i);
            const __m512d e0 = gr_ld8(d0 + i), y0 = _mm512_sub_pd(gr_ld8(x0 + i), M0);
            const __m512d w0 = _mm512_mul_pd(g, e0);
            a0 = _mm512_add_pd(a0, w0);
            b0 = _mm512_add_pd(b0, _mm512_mul_pd(w0, y0));
            _mm512_storeu_pd(db + i, _mm512_add_pd(_mm512_loadu_pd(db + i), e0));
            _mm512_storeu_pd(dg + i, _mm512_add_pd(_mm512_loadu_pd(dg + i),
                                                   _mm512_mul_pd(R0, _mm512_mul_pd(e0, y0))));
        }
    }
    double ta0[ND_GR_BL], tb0[ND_GR_BL], ta1[ND_GR_BL], tb1[ND_GR_BL];
    gr_sta8(ta0, a0);
    gr_sta8(tb0, b0);
    gr_sta8(ta1, a1);
    gr_sta8(tb1, b1);
    gr_rows_tail(d0, x0, d1, x1, nr, i, len, m0, r0, m1, r1, gm, db, dg, ta0, tb0, ta1, tb1, s);
}

ND_GR_AVX512 static void gr_rows_sums_avx512(const float *const *dp, const float *const *xp,
                                             int nr, int64_t len, const double *m,
                                             const double *r, const double *gm, double *db,
                                             double *dg, double *s, int64_t pf)
{
    if (pf)
        gr_rows_sums_body_avx512(dp, xp, nr, len, m, r, gm, db, dg, s, pf, 1);
    else
        gr_rows_sums_body_avx512(dp, xp, nr, len, m, r, gm, db, dg, s, 0, 0);
}

/* gr_dx8_avx2 with one 8-double vector for its two. */
ND_GR_AVX512 static inline void gr_dx8_avx512(const float *dp, const float *xp, float *o,
                                              int64_t len, double m, double r, double ac,
                                              double b, double e, const double *gm)
{
    const __m512d M = _mm512_set1_pd(m), R = _mm512_set1_pd(r), A = _mm512_set1_pd(ac);
    const __m512d B = _mm512_set1_pd(b), E = _mm512_set1_pd(e);
    int64_t t = 0;
    for (; t + 8 <= len; t += 8) {
        const __m512d a = gm ? _mm512_mul_pd(R, _mm512_loadu_pd(gm + t)) : A;
        const __m512d v = _mm512_add_pd(
            _mm512_add_pd(_mm512_mul_pd(a, gr_ld8(dp + t)),
                          _mm512_mul_pd(B, _mm512_sub_pd(gr_ld8(xp + t), M))), E);
        _mm256_storeu_ps(o + t, _mm512_cvtpd_ps(v));
    }
    for (; t < len; ++t) {
        const double a = gm ? r * gm[t] : ac;
        o[t] = (float)(a * (double)dp[t] + b * ((double)xp[t] - m) + e);
    }
}

GR_DX_WRAPPERS(avx512, ND_GR_AVX512)
#undef GR_DX_WRAPPERS

#define GR_CALL(name) \
    (gr_simd() == 2 ? name##_avx512 : gr_simd() ? name##_avx2 : FN(name))
#else
#define GR_CALL(name) FN(name)
#endif

/* ---------------------------------------------------------------- sums */

#if !ND_AFFINE_FLOAT
/* sum of x over the runs of a block: lanes by position mod ND_LANES. */
ND_CLONES
static double FN(gr_sum)(const T *p, int64_t nrun, int64_t len, int64_t stride)
{
    double a[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    for (int64_t r = 0; r < nrun; ++r) {
        const T *q = p + r * stride;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES)
            for (int k = 0; k < ND_LANES; ++k) a[k] += (double)q[i + k];
        for (int k = 0; i + k < len; ++k) a[k] += (double)q[i + k];
    }
    return nd_lanes_sum(a);
}

/* sum of (x - m)^2 over the runs of a block, lanes as gr_sum. */
ND_CLONES
static double FN(gr_sqdev)(const T *p, int64_t nrun, int64_t len, int64_t stride, double m)
{
    double a[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    for (int64_t r = 0; r < nrun; ++r) {
        const T *q = p + r * stride;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES)
            for (int k = 0; k < ND_LANES; ++k) {
                const double d = (double)q[i + k] - m;
                a[k] += d * d;
            }
        for (int k = 0; i + k < len; ++k) {
            const double d = (double)q[i + k] - m;
            a[k] += d * d;
        }
    }
    return nd_lanes_sum(a);
}
#endif

#if ND_AFFINE_FLOAT
/* gr_sum for float32 that also leaves the values, converted to double, in
 * buf (run r at buf + r len): the second pass reads them from there, in L1,
 * instead of converting every value again. */
ND_CLONES
static double FN(gr_sum_cvt)(const T *p, int64_t nrun, int64_t len, int64_t stride, double *buf)
{
    double a[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    for (int64_t r = 0; r < nrun; ++r) {
        const T *q = p + r * stride;
        double *b = buf + r * len;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES)
            for (int k = 0; k < ND_LANES; ++k) {
                const double v = (double)q[i + k];
                b[i + k] = v;
                a[k] += v;
            }
        for (int k = 0; i + k < len; ++k) {
            const double v = (double)q[i + k];
            b[i + k] = v;
            a[k] += v;
        }
    }
    return nd_lanes_sum(a);
}

/* sum of (b[i] - m)^2, i < n: lanes by i mod ND_LANES.  The loop prefetches
 * pf[0, pfn) (the next unit's values, a hint; pfn <= n), so that the next
 * gr_sum_cvt reads them from L2 rather than from memory. */
ND_CLONES
static double FN(gr_sqdev_buf)(const double *b, int64_t n, double m, const T *pf, int64_t pfn)
{
    double a[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    int64_t i = 0;
    for (; i + ND_LANES <= n; i += ND_LANES) {
        if (i < pfn) ND_PREFETCH_L2(pf + i);   /* ND_LANES floats: two cache lines */
        if (i + ND_LANES / 2 < pfn) ND_PREFETCH_L2(pf + i + ND_LANES / 2);
        for (int k = 0; k < ND_LANES; ++k) {
            const double d = b[i + k] - m;
            a[k] += d * d;
        }
    }
    for (int k = 0; i + k < n; ++k) {
        const double d = b[i + k] - m;
        a[k] += d * d;
    }
    return nd_lanes_sum(a);
}

#define ND_GU ND_GR_UNIT32
#else
#define ND_GU ND_GR_UNIT
#endif

/* (mean, M2) of one statistics unit: nrun runs of len values, stride apart
 * (two passes: the mean, then the squared deviations from it).  float32:
 * the second pass prefetches pf[0, pfn), the next unit's values (pfn 0:
 * none). */
static inline void FN(gr_unit)(const T *p, int64_t nrun, int64_t len, int64_t stride,
                               double *mean, double *m2, const T *pf, int64_t pfn)
{
    const double cnt = (double)(nrun * len);
#if ND_AFFINE_FLOAT
#if ND_GR_SIMD
    if (nrun == 1 && gr_simd() == 1) {   /* one run, the AVX2 loops: no buffer */
        const double mu = gr_sum_run_avx2(p, len) / cnt;
        *mean = mu;
        *m2 = gr_sqdev_run_avx2(p, len, mu, pf, nd_min64(pfn, len));
        return;
    }
#endif
    double buf[ND_GU];
    const double mu = GR_CALL(gr_sum_cvt)(p, nrun, len, stride, buf) / cnt;
    *mean = mu;
    *m2 = FN(gr_sqdev_buf)(buf, nrun * len, mu, pf, nd_min64(pfn, nrun * len));
#else
    (void)pf;
    (void)pfn;
    const double mu = FN(gr_sum)(p, nrun, len, stride) / cnt;
    *mean = mu;
    *m2 = FN(gr_sqdev)(p, nrun, len, stride, mu);
#endif
}

/* ------------------------------------------------------------ moments */

/* (mean, M2) of group grp.  Its values as runs (planes of one group that
 * follow each other in memory count as one run), cut into units of at most
 * ND_GU values (ND_GR_UNIT32 for float32, whose units stay in L1 for the
 * second pass (see gr_unit); ND_GR_UNIT for float64): one unit when the group
 * fits, else segments of a run or groups of whole runs, merged in order
 * (nd_chan_merge).  A group of one unit prefetches group `next` of g where
 * that is one run (a row: layernorm), unless next < 0. */
static void FN(gr_group_moments)(const T *x, const nd_grp *grp, double *mean, double *m2,
                                 const nd_geom *g, int64_t next)
{
    int64_t nrun = grp->nrun, len = grp->len, stride = grp->stride;
    if (grp->per_run && stride == len) {   /* consecutive planes: one run */
        len *= nrun;
        nrun = 1;
    }
    const T *p = x + grp->base;
    const int64_t total = nrun * len;
    if (total <= 0) {
        *mean = 0.0;
        *m2 = 0.0;
        return;
    }
    if (total <= ND_GU) {
        const T *pf = NULL;
        int64_t pfn = 0;
        if (ND_AFFINE_FLOAT && next >= 0) {
            const nd_grp nx = nd_group(g, next);
            if (nx.nrun == 1) {
                pf = x + nx.base;
                pfn = nx.len;
            }
        }
        FN(gr_unit)(p, nrun, len, stride, mean, m2, pf, pfn);
        return;
    }
    double n = 0.0, mu = 0.0, q = 0.0, um, uq;
    if (len >= ND_GU) {                     /* units: segments of one run */
        for (int64_t r = 0; r < nrun; ++r)
            for (int64_t s0 = 0; s0 < len; s0 += ND_GU) {
                const int64_t l = nd_min64(ND_GU, len - s0);
                /* the next segment: of this run, else the next run's first */
                const T *pf = s0 + l < len   ? p + r * stride + s0 + l
                              : r + 1 < nrun ? p + (r + 1) * stride
                                             : NULL;
                const int64_t pfn = s0 + l < len ? len - s0 - l : r + 1 < nrun ? len : 0;
                FN(gr_unit)(p + r * stride + s0, 1, l, 0, &um, &uq, pf, pfn);
                nd_chan_merge(&n, &mu, &q, (double)l, um, uq);
            }
    } else {                                /* units: whole runs, k at a time */
        const int64_t k = ND_GU / len;
        for (int64_t r0 = 0; r0 < nrun; r0 += k) {
            const int64_t kr = nd_min64(k, nrun - r0);
            FN(gr_unit)(p + r0 * stride, kr, len, stride, &um, &uq, NULL, 0);
            nd_chan_merge(&n, &mu, &q, (double)(kr * len), um, uq);
        }
    }
    *mean = mu;
    *m2 = q;
}

/* ------------------------------------- channels-last, a sample at a time
 * An ND_CLAST group is S runs of cg values (one per spatial position, ss
 * apart), and the G groups of a sample share its rows.  Taken group by group
 * (gr_group_moments, gr_group_normalize, gr_clast_sums) every group walks
 * the whole sample for cg values a row -- a loop of cg values per run, and
 * cache lines shared with the next group read again.  The gr_cl_* passes take
 * the G groups of sample i together, row by row, with loops along the whole
 * row; each group keeps its accumulators (lanes) and their order of
 * operations, so that they give the per-group loops' bits: statistics units
 * of the same rows (ND_GU / cg at a time, or the whole group: gr_group_moments),
 * position t of a run summed into lane t mod ND_LANES (float32's second pass:
 * lane (r cg + t) mod ND_LANES for row r of the unit, as gr_sqdev_buf), the
 * same formula per value.  For groups of S >= 2 runs of cg < ND_GU values, cg
 * dividing ND_LANES or a multiple of it, or (float64) any cg < ND_LANES
 * (FN(gr_cl_ok)); with cg <= ND_LANES a
 * group's lanes are its channels, so the lanes of a row are one array of c
 * (the backward's sums, whose lanes are positions in the run, for any
 * cg <= ND_LANES: FN(gr_cl_bwd_ok)).
 * Scratch: gr_cl_work doubles per thread, at most ND_GR_CL_WORK (malloc'd;
 * where that fails, the per-group loops run instead).  With fewer samples
 * than threads the passes take ranges of a sample's groups (gr_cl_chunks,
 * gr_cl_unit in nd_norm.c) and write their output by ranges of its rows
 * (gr_row_unit); each group's values come out the same whatever the cut. */
/* cg of a channels-last geometry of S >= 2 runs a group, else 0 (what every
 * sample-at-a-time pass asks first). */
static inline int64_t FN(gr_cl_cg)(const nd_geom *g)
{
    if (g->kind != ND_CLAST || g->s < 2 || g->groups <= 0 || g->c <= 0) return 0;
    return g->c / g->groups;
}

static inline int FN(gr_cl_ok)(const nd_geom *g)
{
    const int64_t cg = FN(gr_cl_cg)(g);
    /* float64's two passes both take lanes by position in the run, so any
     * cg < ND_LANES maps them onto channels; float32's second pass (flat
     * index) only a cg that divides ND_LANES */
    return cg > 0 && cg < ND_GU &&
           (ND_LANES % cg == 0 || cg % ND_LANES == 0 || (!ND_AFFINE_FLOAT && cg < ND_LANES)) &&
           gr_cl_work(g) <= ND_GR_CL_WORK;
}

/* One run of w channels of a row into lanes a[0, w) (inlined where w is
 * ND_LANES, a constant, or c): the gr_cl_rows_* loops. */
static inline __attribute__((always_inline)) void FN(gr_cl_run_sum)(const T *restrict xr,
                                                                   double *restrict a, int64_t w)
{
    for (int64_t k = 0; k < w; ++k) a[k] += (double)xr[k];
}

static inline __attribute__((always_inline)) void
FN(gr_cl_run_sqdev)(const T *restrict xr, const double *restrict mu, double *restrict a, int64_t w)
{
    for (int64_t k = 0; k < w; ++k) {
        const double d = (double)xr[k] - mu[k];
        a[k] += d * d;
    }
}

static inline __attribute__((always_inline)) void
FN(gr_cl_run_grad)(const T *restrict dr, const T *restrict xr, const double *restrict mm,
                   const double *restrict gm, double *restrict a1, double *restrict a2,
                   double *restrict db, double *restrict tc, int64_t w)
{
    for (int64_t k = 0; k < w; ++k) {
        const double d = (double)dr[k], xm = (double)xr[k] - mm[k];
        const double v = gm[k] * d;
        a1[k] += v;
        a2[k] += v * xm;
        db[k] += d;
        tc[k] += d * xm;
    }
}

/* lanes of a sample: per channel (cg <= ND_LANES) or ND_LANES per group */
ND_CLONES
static void FN(gr_cl_rows_sum)(const T *p, int64_t nr, int64_t ss, int64_t C, int64_t cg,
                               double *restrict A)
{
    for (int64_t r = 0; r < nr; ++r) {
        const T *restrict xr = p + r * ss;
        if (cg <= ND_LANES)
            FN(gr_cl_run_sum)(xr, A, C);
        else
            for (int64_t c0 = 0; c0 < C; c0 += ND_LANES)
                FN(gr_cl_run_sum)(xr + c0, A + c0 / cg * ND_LANES, ND_LANES);
    }
}

/* B += (x - MU[ch])^2 over nr rows, lanes as gr_cl_rows_sum; flat (float32,
 * cg < ND_LANES): ND_LANES / cg such arrays of c, row r in array r mod that. */
ND_CLONES
static void FN(gr_cl_rows_sqdev)(const T *p, int64_t nr, int64_t ss, int64_t C, int64_t cg,
                                 const double *restrict MU, double *restrict B, int flat)
{
    const int64_t P = flat ? ND_LANES / cg : 1;
    for (int64_t r = 0; r < nr; ++r) {
        const T *restrict xr = p + r * ss;
        if (cg <= ND_LANES)
            FN(gr_cl_run_sqdev)(xr, MU, B + (r % P) * C, C);
        else
            for (int64_t c0 = 0; c0 < C; c0 += ND_LANES)
                FN(gr_cl_run_sqdev)(xr + c0, MU + c0, B + c0 / cg * ND_LANES, ND_LANES);
    }
}

/* (mean[q], m2[q]) of groups q0 + q, q < G, of sample i (a range of its
 * groups, their channels C = G cg of each row): gr_group_moments' values. */
static void FN(gr_cl_moments)(const T *x, const nd_geom *g, int64_t i, int64_t q0, int64_t G,
                              double *mean, double *m2, double *w)
{
    const int64_t cg = g->c / g->groups, C = G * cg, S = g->s, ss = g->ss;
    const T *p = x + i * g->sn + q0 * cg;
    const int64_t total = S * cg, k = total <= ND_GU ? S : ND_GU / cg;
    const int flat = ND_AFFINE_FLOAT && cg < ND_LANES;
    const int64_t nb = flat ? ND_LANES / cg * C : C;
    double *A = w, *B = A + C, *MU = B + nb, *um = MU + C, *cn = um + G, *cm = cn + G,
           *cq = cm + G;
    double t[ND_LANES];
    for (int64_t q = 0; q < G; ++q) { cn[q] = 0.0; cm[q] = 0.0; cq[q] = 0.0; }
    for (int64_t r0 = 0; r0 < S; r0 += k) {
        const int64_t kr = nd_min64(k, S - r0);
        const double cnt = (double)(kr * cg);
        const T *pu = p + r0 * ss;
        for (int64_t c = 0; c < C; ++c) A[c] = 0.0;
        for (int64_t j = 0; j < nb; ++j) B[j] = 0.0;
        FN(gr_cl_rows_sum)(pu, kr, ss, C, cg, A);
        for (int64_t q = 0; q < G; ++q) {
            gr_cl_lanes(A, q, cg, t);
            um[q] = nd_lanes_sum(t) / cnt;
            for (int64_t j = 0; j < cg; ++j) MU[q * cg + j] = um[q];
        }
        FN(gr_cl_rows_sqdev)(pu, kr, ss, C, cg, MU, B, flat);
        for (int64_t q = 0; q < G; ++q) {
            if (flat)
                gr_cl_flat_lanes(B, q, cg, C, t);
            else
                gr_cl_lanes(B, q, cg, t);
            const double uq = nd_lanes_sum(t);
            if (total <= ND_GU) {
                mean[q] = um[q];
                m2[q] = uq;
            } else {
                nd_chan_merge(&cn[q], &cm[q], &cq[q], cnt, um[q], uq);
            }
        }
    }
    if (total > ND_GU)
        for (int64_t q = 0; q < G; ++q) {
            mean[q] = cm[q];
            m2[q] = cq[q];
        }
}

/* Whether the backward's sums take the sample-at-a-time pass
 * (gr_cl_backward): FN(gr_cl_ok)'s groups, and any other channels-last
 * groups of S >= 2 runs of cg <= ND_LANES values.  The backward's lanes are
 * positions in the run (gr_clast_sums), so for cg <= ND_LANES they are the
 * group's channels whatever cg is; the statistics' lanes are not (their
 * float32 second pass takes flat indices), so gr_cl_ok asks more. */
static inline int FN(gr_cl_bwd_ok)(const nd_geom *g)
{
    const int64_t cg = FN(gr_cl_cg)(g);
    return FN(gr_cl_ok)(g) || (cg > 0 && cg <= ND_LANES && gr_cl_work(g) <= ND_GR_CL_WORK);
}

/* Channels-last groups of short runs that the sample-at-a-time passes do not
 * take (cg that neither divides ND_LANES nor is a multiple of it: 3, 5, 10,
 * 12, 20, 40, ...; or too many channels for their scratch: FN(gr_clt_ok)).
 * Group by group, each of a sample's G groups walks all its rows for cg
 * values a row.  Here the statistics of groups q0 + q, q < G, of sample i go
 * a unit of rows at a time: each group's statistics unit of those rows
 * (ND_GU / cg rows, gr_group_moments) in turn, its merges in order --
 * gr_group_moments' bits, the unit's rows read from memory once for the
 * batch of groups (ND_GR_CLT_BATCH at a time).  Their lanes (position in the run mod ND_LANES, or the float32
 * second pass's flat index) do not map onto channels, so the statistics stay
 * per group; the normalize and dx, whose formula per value needs no lanes,
 * go along whole rows (gr_cl_normalize, gr_cl_dx) where the scratch allows
 * (FN(gr_clt_dx_ok)), else tile by tile (gr_clt_normalize) or group by
 * group.  The backward's sums of runs of at most ND_LANES values go along
 * the rows (gr_cl_backward: their lanes are positions in the run, so its
 * channels, FN(gr_cl_bwd_ok)); those of longer runs stay group by group
 * (gr_group_sums): tiling them took 0.90-1.53x the time. */
static inline int FN(gr_clt_ok)(const nd_geom *g)
{
    if (g->kind != ND_CLAST || g->s < 2 || g->groups < 2 || g->c <= 0) return 0;
    const int64_t cg = g->c / g->groups;
    return cg > 0 && cg < ND_GU && !FN(gr_cl_ok)(g);
}

/* Whether the backward's dx of such groups goes along the whole rows
 * (gr_cl_dx: its formula per value needs no lanes), within the scratch. */
static inline int FN(gr_clt_dx_ok)(const nd_geom *g)
{
    return FN(gr_clt_ok)(g) && gr_cl_work(g) <= ND_GR_CL_WORK;
}

/* (mean[q], m2[q]) of groups q0 + q, q < G, of sample i */
static void FN(gr_clt_moments)(const T *x, const nd_geom *g, int64_t i, int64_t q0, int64_t G,
                               double *mean, double *m2)
{
    const int64_t cg = g->c / g->groups, S = g->s, ss = g->ss;
    const int64_t k = S * cg <= ND_GU ? S : ND_GU / cg;
    const T *p = x + i * g->sn + q0 * cg;
    for (int64_t b0 = 0; b0 < G; b0 += ND_GR_CLT_BATCH) {
        const int64_t nb = nd_min64(ND_GR_CLT_BATCH, G - b0);
        double n = 0.0;   /* the values merged so far: the same for every group */
        for (int64_t r0 = 0; r0 < S; r0 += k) {
            const int64_t kr = nd_min64(k, S - r0);
            for (int64_t q = b0; q < b0 + nb; ++q) {
                double um, uq, nq = n;   /* the first merge (n = 0) copies (um, uq) */
                FN(gr_unit)(p + r0 * ss + q * cg, kr, cg, ss, &um, &uq, NULL, 0);
                nd_chan_merge(&nq, &mean[q], &m2[q], (double)(kr * cg), um, uq);
            }
            n += (double)(kr * cg);
        }
    }
}

/* mean[k], m2[k] for every group k, in parallel over groups (channels-last:
 * over samples, or ranges of a sample's groups, gr_cl_moments or
 * gr_clt_moments). */
static void FN(gr_moments)(const T *x, const nd_geom *g, double *mean, double *m2)
{
    const int64_t ng = nd_ngroups(g), G = g->groups;
    const int cl = FN(gr_cl_ok)(g), clt = !cl && FN(gr_clt_ok)(g);
    const int64_t nch = cl || clt ? gr_cl_chunks(g) : 1;
    ND_OMP_PARALLEL(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    {
        if (cl) {
            double *w = nd_scratch(gr_cl_work(g));
            ND_OMP_SPLIT_NOWAIT
            for (int64_t u = 0; u < g->n * nch; ++u) {
                int64_t i, q0, nq;
                gr_cl_unit(g, u, nch, &i, &q0, &nq);
                const int64_t k0 = i * G + q0;
                if (w) {
                    if (nq > 0) FN(gr_cl_moments)(x, g, i, q0, nq, mean + k0, m2 + k0, w);
                    continue;
                }
                for (int64_t k = k0; k < k0 + nq; ++k) {
                    const nd_grp grp = nd_group(g, k);
                    FN(gr_group_moments)(x, &grp, &mean[k], &m2[k], g, -1);
                }
            }
            free(w);
        } else if (clt) {   /* tiles of rows for a batch of groups */
            ND_OMP_SPLIT_NOWAIT
            for (int64_t u = 0; u < g->n * nch; ++u) {
                int64_t i, q0, nq;
                gr_cl_unit(g, u, nch, &i, &q0, &nq);
                const int64_t k0 = i * G + q0;
                if (nq > 0) FN(gr_clt_moments)(x, g, i, q0, nq, mean + k0, m2 + k0);
            }
        } else {
            ND_OMP_SPLIT_NOWAIT
            for (int64_t k = 0; k < ng; ++k) {
                const nd_grp grp = nd_group(g, k);
                FN(gr_group_moments)(x, &grp, &mean[k], &m2[k], g, -1);
            }
        }
    }
}

/* ---------------------------------------------------------- normalize */

/* out = (x - m) * (r * gamma[ch]) + beta[ch] in double, rounded once, over
 * channel-run group grp: float64, and float32 groups outside the float
 * formula's range.  st: stream the runs out. */
ND_CLONES
static void FN(gr_runs_affine_d)(const T *x, T *out, const nd_grp *grp, double m, double r,
                                 const double *gamma, const double *beta, int st)
{
    double ad[ND_GR_TILE];
    T buf[ND_GSCH];
    if (grp->nrun == 1 && !st) {   /* one run (rows): r * gamma formed in the loop */
        const T *xp = x + grp->base;
        T *op = out + grp->base;
        const double *gm = gamma + grp->c0, *bt = beta + grp->c0;
        for (int64_t j = 0; j < grp->len; ++j)
            op[j] = (T)(((double)xp[j] - m) * (r * gm[j]) + bt[j]);
        return;
    }
    for (int64_t t0 = 0; t0 < grp->len; t0 += ND_GR_TILE) {
        const int64_t tw = nd_min64(ND_GR_TILE, grp->len - t0);
        const double *gm = gamma + grp->c0 + t0, *bt = beta + grp->c0 + t0;
        for (int64_t j = 0; j < tw; ++j) ad[j] = r * gm[j];
        for (int64_t run = 0; run < grp->nrun; ++run) {
            const int64_t off = grp->base + run * grp->stride + t0;
            const T *xp = x + off;
            T *op = out + off;
            if (!st) {
                for (int64_t j = 0; j < tw; ++j) op[j] = (T)(((double)xp[j] - m) * ad[j] + bt[j]);
                continue;
            }
            for (int64_t j0 = 0; j0 < tw; j0 += ND_GSCH) {
                const int64_t len = nd_min64(ND_GSCH, tw - j0);
                for (int64_t j = 0; j < len; ++j)
                    buf[j] = (T)(((double)xp[j0 + j] - m) * ad[j0 + j] + bt[j0 + j]);
                nd_stream_copy(op + j0, buf, (size_t)len * sizeof(T));
            }
        }
    }
}

#if ND_AFFINE_FLOAT
/* float32 over positions [t0, t0 + tw) of every run of channel-run group grp:
 * out = (((x - mh) - ml) * rf) * ga[j] + gb[j] in float, with mean = mh + ml
 * split as in nd_aff32, rf = (float)r, ga[j] = (float)gamma, gb[j] =
 * (float)beta of channel c0 + t0 + j.  The row's r and the channel's gamma
 * are applied one after the other, so that ga and gb, the same for every
 * row, are formed once per thread rather than once per row. */
ND_CLONES
static void FN(gr_runs_affine)(const T *x, T *out, const nd_grp *grp, int64_t t0, int64_t tw,
                               double m, double r, const float *ga, const float *gb, int st)
{
    const nd_aff32 p = nd_aff32_of(m, r, 0.0);
    const float mh = p.mh, ml = p.ml, rf = p.a;
    T buf[ND_GSCH];
    for (int64_t run = 0; run < grp->nrun; ++run) {
        const int64_t off = grp->base + run * grp->stride + t0;
        const T *xp = x + off;
        T *op = out + off;
        if (!st) {
            for (int64_t j = 0; j < tw; ++j) op[j] = (((xp[j] - mh) - ml) * rf) * ga[j] + gb[j];
            continue;
        }
        for (int64_t j0 = 0; j0 < tw; j0 += ND_GSCH) {
            const int64_t len = nd_min64(ND_GSCH, tw - j0);
            for (int64_t j = 0; j < len; ++j) {
                const int64_t k = j0 + j;
                buf[j] = (((xp[k] - mh) - ml) * rf) * ga[k] + gb[k];
            }
            nd_stream_copy(op + j0, buf, (size_t)len * sizeof(T));
        }
    }
}

/* cf[0, n) <- (float)gamma[c0 + j], cf[n, 2 n) <- (float)beta[c0 + j]. */
static inline void gr_coef32(const double *gamma, const double *beta, int64_t c0, int64_t n,
                             float *cf)
{
    for (int64_t j = 0; j < n; ++j) {
        cf[j] = (float)gamma[c0 + j];
        cf[n + j] = (float)beta[c0 + j];
    }
}
#endif

/* out = (x - m) * (r * gamma[ch]) + beta[ch] over group grp.
 * float64: in double, rounded once.
 * float32, when gr_aff32_ok holds for the group (mean, r and the range rng of
 * its gamma and beta): in float with the mean split, per plane as batchnorm's
 * nd_plane_affine (plane runs), or as gr_runs_affine (channel runs; cf: the
 * float gamma and beta of all c channels, or NULL: formed here per tile);
 * otherwise the float64 formula.  st: streaming stores (gr_stream). */
static void FN(gr_group_normalize)(const T *x, T *out, const nd_grp *grp, double m, double r,
                                   const double *gamma, const double *beta, const double *rng,
                                   const float *cf, int64_t c, int st)
{
#if ND_AFFINE_FLOAT
    const int fl = gr_aff32_ok(m, r, rng);
#else
    const int fl = 0;
    (void)rng;
    (void)cf;
    (void)c;
#endif
    if (grp->per_run) {
        const FN(nd_ch_loops) *L = FN(nd_ch_pick)();
        for (int64_t run = 0; run < grp->nrun; ++run) {
            const int64_t off = grp->base + run * grp->stride, ch = grp->c0 + run;
            if (fl)
                L->plane_affine(x + off, out + off, grp->len, m, r * gamma[ch], beta[ch], st);
            else
                L->plane_affine_d(x + off, out + off, grp->len, m, r * gamma[ch], beta[ch], st);
        }
        return;
    }
#if ND_AFFINE_FLOAT
    if (fl) {
        if (cf) {
            FN(gr_runs_affine)(x, out, grp, 0, grp->len, m, r, cf + grp->c0, cf + c + grp->c0, st);
        } else {
            float tile[2 * ND_GR_TILE];
            for (int64_t t0 = 0; t0 < grp->len; t0 += ND_GR_TILE) {
                const int64_t tw = nd_min64(ND_GR_TILE, grp->len - t0);
                gr_coef32(gamma, beta, grp->c0 + t0, tw, tile);
                FN(gr_runs_affine)(x, out, grp, t0, tw, m, r, tile, tile + tw, st);
            }
        }
    } else
#endif
        FN(gr_runs_affine_d)(x, out, grp, m, r, gamma, beta, st);
    if (st) nd_stream_fence();
}

/* The range (gr_range) group pattern q's float32 affine is checked with:
 * formed once per call in rbuf (G <= ND_GR_RANGES), else here in own. */
static inline const double *FN(gr_rng_of)(const double *gamma, const double *beta,
                                          const double *rbuf, int per_group, int64_t q,
                                          int64_t cg, double *own)
{
    if (!ND_AFFINE_FLOAT) return rbuf;
    if (per_group) {
        gr_range(gamma, beta, q * cg, cg, own);
        return own;
    }
    return &rbuf[2 * q];
}

/* One group k of the forward (gr_forward): fused, its moments, var and
 * invstd first (ng groups of cnt values, cg channels each). */
static inline void FN(gr_forward_group)(const T *x, T *out, const nd_geom *g, int64_t k,
                                        const double *gamma, const double *beta, double eps,
                                        int fused, double *mean, double *var, double *invstd,
                                        const double *rbuf, int per_group, const float *cf,
                                        int pw, int st, int64_t ng, int64_t cnt, int64_t cg)
{
    const int64_t G = g->groups;
    const nd_grp grp = nd_group(g, k);
    double own[2];
    const double *rng = FN(gr_rng_of)(gamma, beta, rbuf, per_group, k % G, cg, own);
    if (fused) {
        double m2;
        if (pw && grp.nrun == 1)   /* a row: its output lines, while its moments are formed */
            gr_prefetchw(out + grp.base, grp.len * (int64_t)sizeof(T));
        FN(gr_group_moments)(x, &grp, &mean[k], &m2, g, k + 1 < ng ? k + 1 : -1);
        var[k] = cnt > 0 ? m2 / (double)cnt : 0.0;
        invstd[k] = 1.0 / sqrt(var[k] + eps);
    }
    FN(gr_group_normalize)(x, out, &grp, mean[k], invstd[k], gamma, beta, rng, cf, g->c, st);
}

/* Rows [r0, r0 + nr) of group q of sample i normalized with m, r
 * (gr_group_normalize on those runs: its bits). */
static inline void FN(gr_group_rows_normalize)(const T *x, T *out, const nd_geom *g, int64_t i,
                                               int64_t q, int64_t r0, int64_t nr, double m,
                                               double r, const double *gamma, const double *beta,
                                               const double *rbuf, int per_group, const float *cf,
                                               int st)
{
    const nd_grp grp = nd_group_rows(g, i * g->groups + q, r0, nr);
    double own[2];
    FN(gr_group_normalize)(x, out, &grp, m, r, gamma, beta,
                           FN(gr_rng_of)(gamma, beta, rbuf, per_group, q, g->c / g->groups, own),
                           cf, g->c, st);
}

/* groups q0 + q, q < G, of sample i normalized with mean[q], invstd[q], a
 * tile of about ND_GR_CLT_TILE bytes of rows at a time for a batch of groups:
 * gr_group_normalize's bits */
static void FN(gr_clt_normalize)(const T *x, T *out, const nd_geom *g, int64_t i, int64_t q0,
                                 int64_t G, const double *mean, const double *invstd,
                                 const double *gamma, const double *beta, const double *rbuf,
                                 int per_group, const float *cf, int st)
{
    const int64_t cg = g->c / g->groups, S = g->s;
    for (int64_t b0 = 0; b0 < G; b0 += ND_GR_CLT_BATCH) {
        const int64_t nb = nd_min64(ND_GR_CLT_BATCH, G - b0);
        const int64_t rt0 = ND_GR_CLT_TILE / (nb * cg * (int64_t)sizeof(T)), rt = rt0 > 1 ? rt0 : 1;
        for (int64_t r0 = 0; r0 < S; r0 += rt)
            for (int64_t q = b0; q < b0 + nb; ++q)
                FN(gr_group_rows_normalize)(x, out, g, i, q0 + q, r0, nd_min64(rt, S - r0),
                                            mean[q], invstd[q], gamma, beta, rbuf, per_group, cf,
                                            st);
    }
}

/* The loops of the gr_cl_* elementwise passes over the S rows of a sample, ss
 * apart (ROWS: the row pointers of row r, o the output's): o[c] = VAL for
 * c < C, through the caches, or (st) in chunks of ND_GSCH values streamed out
 * of an L1 buffer. */
#define GR_CL_ROWS(ROWS, VAL)                                                \
    do {                                                                      \
        T buf_[ND_GSCH];                                                      \
        for (int64_t r = 0; r < S; ++r) {                                     \
            ROWS                                                              \
            if (!st) {                                                        \
                for (int64_t c = 0; c < C; ++c) o[c] = (VAL);                 \
                continue;                                                     \
            }                                                                 \
            for (int64_t c0 = 0; c0 < C; c0 += ND_GSCH) {                     \
                const int64_t len_ = nd_min64(ND_GSCH, C - c0);               \
                for (int64_t j_ = 0; j_ < len_; ++j_) {                       \
                    const int64_t c = c0 + j_;                                \
                    buf_[j_] = (VAL);                                         \
                }                                                             \
                nd_stream_copy(o + c0, buf_, (size_t)len_ * sizeof(T));       \
            }                                                                 \
        }                                                                     \
    } while (0)

#if ND_AFFINE_FLOAT
/* float32 rows of a sample: out = (((x - MH) - ML) * RF) * GA + GB per
 * channel, gr_runs_affine's formula with each channel's group values. */
ND_CLONES
static void FN(gr_cl_affine_rows)(const T *x, T *out, int64_t S, int64_t ss, int64_t C,
                                  const float *restrict MH, const float *restrict ML,
                                  const float *restrict RF, const float *restrict GA,
                                  const float *restrict GB, int st)
{
    GR_CL_ROWS(const T *restrict xr = x + r * ss; T *restrict o = out + r * ss;,
               (((xr[c] - MH[c]) - ML[c]) * RF[c]) * GA[c] + GB[c]);
}
#else
/* Rows of a sample in double: out = (x - M) * AD + BT per channel, rounded
 * once (gr_runs_affine_d's formula, AD = r * gamma). */
ND_CLONES
static void FN(gr_cl_affine_rows_d)(const T *x, T *out, int64_t S, int64_t ss, int64_t C,
                                    const double *restrict M, const double *restrict AD,
                                    const double *restrict BT, int st)
{
    GR_CL_ROWS(const T *restrict xr = x + r * ss; T *restrict o = out + r * ss;,
               (T)(((double)xr[c] - M[c]) * AD[c] + BT[c]));
}
#endif

/* Groups q0 + q, q < G, of sample i normalized with mean[q], invstd[q] on
 * its rows [r0, r0 + nr): the bits of gr_group_normalize for each.
 * float32: the float formula where it holds for every one of these groups
 * (gr_aff32_ok), else group by group. */
static void FN(gr_cl_normalize)(const T *x, T *out, const nd_geom *g, int64_t i, int64_t q0,
                                int64_t G, int64_t r0, int64_t nr, const double *mean,
                                const double *invstd, const double *gamma, const double *beta,
                                const double *rbuf, int per_group, const float *cf, int st,
                                double *w)
{
    const int64_t cg = g->c / g->groups, C = G * cg, c0 = q0 * cg;
    const int64_t off = i * g->sn + c0 + r0 * g->ss;
#if ND_AFFINE_FLOAT
    int all = 1;
    for (int64_t q = 0; q < G && all; ++q) {
        double own[2];
        all = gr_aff32_ok(mean[q], invstd[q],
                          FN(gr_rng_of)(gamma, beta, rbuf, per_group, q0 + q, cg, own));
    }
    if (!all) {
        for (int64_t q = 0; q < G; ++q)
            FN(gr_group_rows_normalize)(x, out, g, i, q0 + q, r0, nr, mean[q], invstd[q], gamma,
                                        beta, rbuf, per_group, cf, st);
        return;
    }
    float *MH = (float *)w, *ML = MH + C, *RF = ML + C, *GA = RF + C, *GB = GA + C;
    for (int64_t q = 0; q < G; ++q) {
        const nd_aff32 p = nd_aff32_of(mean[q], invstd[q], 0.0);
        for (int64_t j = 0; j < cg; ++j) {
            MH[q * cg + j] = p.mh;
            ML[q * cg + j] = p.ml;
            RF[q * cg + j] = p.a;
        }
    }
    gr_coef32(gamma, beta, c0, C, GA);   /* GA, then GB = GA + C */
    FN(gr_cl_affine_rows)(x + off, out + off, nr, g->ss, C, MH, ML, RF, GA, GB, st);
#else
    (void)rbuf;
    (void)per_group;
    (void)cf;
    double *M = w, *AD = M + C;
    for (int64_t q = 0; q < G; ++q)
        for (int64_t j = 0; j < cg; ++j) {
            M[q * cg + j] = mean[q];
            AD[q * cg + j] = invstd[q] * gamma[c0 + q * cg + j];
        }
    FN(gr_cl_affine_rows_d)(x + off, out + off, nr, g->ss, C, M, AD, beta + c0, st);
#endif
    if (st) nd_stream_fence();
}

/* Groups q0 + q, q < G, of sample i normalized on its rows [r0, r0 + nr):
 * along the rows (gr_cl_normalize, w its scratch), else group by group (in
 * tiles of rows for a whole sample, gr_clt_normalize); the same bits. */
static void FN(gr_cl_norm_part)(const T *x, T *out, const nd_geom *g, int64_t i, int64_t q0,
                                int64_t G, int64_t r0, int64_t nr, const double *mean,
                                const double *invstd, const double *gamma, const double *beta,
                                const double *rbuf, int per_group, const float *cf, int st,
                                double *w)
{
    if (w) {
        FN(gr_cl_normalize)(x, out, g, i, q0, G, r0, nr, mean, invstd, gamma, beta, rbuf,
                            per_group, cf, st, w);
        return;
    }
    if (r0 == 0 && nr == g->s) {
        FN(gr_clt_normalize)(x, out, g, i, q0, G, mean, invstd, gamma, beta, rbuf, per_group, cf,
                             st);
        return;
    }
    for (int64_t q = 0; q < G; ++q)
        FN(gr_group_rows_normalize)(x, out, g, i, q0 + q, r0, nr, mean[q], invstd[q], gamma, beta,
                                    rbuf, per_group, cf, st);
}

/* The forward over every group: fused (the training forward): each group's
 * moments, var and invstd, then its values normalized while they are in
 * cache; else (nd_normalize) with the given mean and invstd.  Channels-last
 * (FN(gr_cl_ok), FN(gr_clt_ok)): a sample (or a range of its groups) at a
 * time, its moments (gr_cl_moments, gr_clt_moments) then its rows
 * (gr_cl_norm_part). */
static void FN(gr_forward)(const T *x, T *out, const nd_geom *g, const double *gamma,
                           const double *beta, double eps, int fused, double *mean, double *var,
                           double *invstd)
{
    const int64_t ng = nd_ngroups(g), cnt = nd_group_count(g), G = g->groups, cg = g->c / G;
    const int st = gr_stream(out, g, (int64_t)sizeof(T));
    const int pw = !st && g->n * g->c * g->s * (int64_t)sizeof(T) >= ND_GR_PFW_BYTES;
    /* float32: the range of each group pattern's gamma and beta, formed once
     * when G is small (float64 has no use for them) */
    double rbuf[2 * ND_GR_RANGES] = {0.0, 0.0};
    const int per_group = ND_AFFINE_FLOAT && G > ND_GR_RANGES;
    if (ND_AFFINE_FLOAT && !per_group)
        for (int64_t q = 0; q < G; ++q) gr_range(gamma, beta, q * cg, cg, &rbuf[2 * q]);
#if ND_AFFINE_FLOAT
    const int use_cf = g->kind != ND_PLANES && g->c <= ND_GR_CF;
#endif
    const int cl = FN(gr_cl_ok)(g), clt = !cl && FN(gr_clt_ok)(g);
    const int64_t nch = cl || clt ? gr_cl_chunks(g) : 1;
    ND_OMP_PARALLEL(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    {
        const float *cf = NULL;
#if ND_AFFINE_FLOAT
        float cbuf[2 * ND_GR_CF];
        if (use_cf) {
            gr_coef32(gamma, beta, 0, g->c, cbuf);
            cf = cbuf;
        }
#endif
        if (cl || clt) {
            /* units: a sample, or a range of its groups (nch > 1); there the
             * output is written after every range's statistics, by ranges of
             * rows (gr_row_unit), so that no two threads share its lines */
            double *w = gr_cl_work(g) <= ND_GR_CL_WORK   /* (always so where cl) */
                            ? nd_scratch(gr_cl_work(g))
                            : NULL;
            const int by_rows = nch > 1;
            ND_OMP_SPLIT
            for (int64_t u = 0; u < g->n * nch; ++u) {
                int64_t i, q0, nq;
                gr_cl_unit(g, u, nch, &i, &q0, &nq);
                const int64_t k0 = i * G + q0;
                if (nq <= 0) continue;
                if (fused) {
                    double *vr = var + k0, *ir = invstd + k0;   /* m2 in var first */
                    if (clt)
                        FN(gr_clt_moments)(x, g, i, q0, nq, mean + k0, vr);
                    else if (w)
                        FN(gr_cl_moments)(x, g, i, q0, nq, mean + k0, vr, w);
                    else
                        for (int64_t k = k0; k < k0 + nq; ++k) {
                            const nd_grp grp = nd_group(g, k);
                            FN(gr_group_moments)(x, &grp, &mean[k], &vr[k - k0], g, -1);
                        }
                    for (int64_t q = 0; q < nq; ++q) {
                        vr[q] = cnt > 0 ? vr[q] / (double)cnt : 0.0;
                        ir[q] = 1.0 / sqrt(vr[q] + eps);
                    }
                }
                if (!by_rows)
                    FN(gr_cl_norm_part)(x, out, g, i, q0, nq, 0, g->s, mean + k0, invstd + k0,
                                        gamma, beta, rbuf, per_group, cf, st, w);
            }
            if (by_rows) {
                ND_OMP_SPLIT_NOWAIT
                for (int64_t u = 0; u < g->n * nch; ++u) {
                    int64_t i, r0, nr;
                    gr_row_unit(g, u, nch, &i, &r0, &nr);
                    if (nr > 0)
                        FN(gr_cl_norm_part)(x, out, g, i, 0, G, r0, nr, mean + i * G,
                                            invstd + i * G, gamma, beta, rbuf, per_group, cf, st,
                                            w);
                }
            }
            free(w);
        } else {
            ND_OMP_SPLIT_NOWAIT
            for (int64_t k = 0; k < ng; ++k)
                FN(gr_forward_group)(x, out, g, k, gamma, beta, eps, fused, mean, var, invstd,
                                     rbuf, per_group, cf, pw, st, ng, cnt, cg);
        }
    }
}

static void FN(gr_normalize)(const T *x, T *out, const nd_geom *g, const double *mean,
                             const double *invstd, const double *gamma, const double *beta)
{
    FN(gr_forward)(x, out, g, gamma, beta, 0.0, 0, (double *)mean, NULL, (double *)invstd);
}

static void FN(gr_train_fwd)(const T *x, T *out, const nd_geom *g, const double *gamma,
                             const double *beta, double eps, double *mean, double *var,
                             double *invstd)
{
    FN(gr_forward)(x, out, g, gamma, beta, eps, 1, mean, var, invstd);
}

/* ----------------------------------------------------------- backward */

/* Sums of one plane run: *v1 = sum d, *v2 = sum d * (x - m), ND_LANES lanes
 * (lane k takes positions t = k mod ND_LANES). */
ND_CLONES
static void FN(gr_plane_sums)(const T *restrict dp, const T *restrict xp, int64_t len, double m,
                              double *v1, double *v2)
{
    double u1[ND_LANES], u2[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) { u1[k] = 0.0; u2[k] = 0.0; }
    int64_t i = 0;
    for (; i + ND_LANES <= len; i += ND_LANES)
        for (int k = 0; k < ND_LANES; ++k) {
            const double d = (double)dp[i + k];
            u1[k] += d;
            u2[k] += d * ((double)xp[i + k] - m);
        }
    for (int k = 0; i + k < len; ++k) {
        const double d = (double)dp[i + k];
        u1[k] += d;
        u2[k] += d * ((double)xp[i + k] - m);
    }
    *v1 = nd_lanes_sum(u1);
    *v2 = nd_lanes_sum(u2);
}

/* Sums of nr (1 or 2) channel-run groups of one run each, the same channels
 * [c0, c0 + len) of consecutive samples (rows): for row j, values d_j, x_j at
 * dp[j], xp[j], statistics m[j], r[j]: s[2 j] = sum gamma d_j, s[2 j + 1] =
 * sum gamma d_j (x_j - m_j) (ND_GR_BL lanes by position); per channel
 * db[t] += d_0 (+ d_1) and dg[t] += r_0 (d_0 (x_0 - m_0)) (+ the same for row
 * 1) -- row by row, so two rows at once add what one at a time would, but
 * load and store db and dg once.  Each block of ND_GR_BL positions prefetches
 * the line pf values on in every row it reads (gr_backward: the rows to come;
 * 0: none). */
static inline __attribute__((always_inline)) void
FN(gr_rows_sums_body)(const T *const *dp, const T *const *xp, int nr, int64_t len,
                      const double *m, const double *r, const double *restrict gm,
                      double *restrict db, double *restrict dg, double *s, int64_t pf,
                      const int dopf)
{
    double a0[ND_GR_BL], b0[ND_GR_BL], a1[ND_GR_BL], b1[ND_GR_BL];
    for (int k = 0; k < ND_GR_BL; ++k) { a0[k] = 0.0; b0[k] = 0.0; a1[k] = 0.0; b1[k] = 0.0; }
    const T *restrict d0 = dp[0], *restrict x0 = xp[0];
    const double m0 = m[0], r0 = r[0];
    if (nr == 2) {
        const T *restrict d1 = dp[1], *restrict x1 = xp[1];
        const double m1 = m[1], r1 = r[1];
        int64_t i = 0;
        for (; i + ND_GR_BL <= len; i += ND_GR_BL) {
            if (dopf) {
                __builtin_prefetch(d0 + i + pf, 0, 3);
                __builtin_prefetch(x0 + i + pf, 0, 3);
                __builtin_prefetch(d1 + i + pf, 0, 3);
                __builtin_prefetch(x1 + i + pf, 0, 3);
            }
            for (int k = 0; k < ND_GR_BL; ++k) {
                const int64_t t = i + k;
                const double g = gm[t];
                const double e0 = (double)d0[t], y0 = (double)x0[t] - m0;
                const double e1 = (double)d1[t], y1 = (double)x1[t] - m1;
                const double w0 = g * e0, w1 = g * e1;
                a0[k] += w0;
                b0[k] += w0 * y0;
                a1[k] += w1;
                b1[k] += w1 * y1;
                db[t] = (db[t] + e0) + e1;
                dg[t] = (dg[t] + r0 * (e0 * y0)) + r1 * (e1 * y1);
            }
        }
        for (int k = 0; i + k < len; ++k) {
            const int64_t t = i + k;
            const double g = gm[t];
            const double e0 = (double)d0[t], y0 = (double)x0[t] - m0;
            const double e1 = (double)d1[t], y1 = (double)x1[t] - m1;
            const double w0 = g * e0, w1 = g * e1;
            a0[k] += w0;
            b0[k] += w0 * y0;
            a1[k] += w1;
            b1[k] += w1 * y1;
            db[t] = (db[t] + e0) + e1;
            dg[t] = (dg[t] + r0 * (e0 * y0)) + r1 * (e1 * y1);
        }
        s[2] = gr_bl_sum(a1);
        s[3] = gr_bl_sum(b1);
    } else {
        int64_t i = 0;
        for (; i + ND_GR_BL <= len; i += ND_GR_BL) {
            if (dopf) {
                __builtin_prefetch(d0 + i + pf, 0, 3);
                __builtin_prefetch(x0 + i + pf, 0, 3);
            }
            for (int k = 0; k < ND_GR_BL; ++k) {
                const int64_t t = i + k;
                const double e0 = (double)d0[t], y0 = (double)x0[t] - m0;
                const double w0 = gm[t] * e0;
                a0[k] += w0;
                b0[k] += w0 * y0;
                db[t] += e0;
                dg[t] += r0 * (e0 * y0);
            }
        }
        for (int k = 0; i + k < len; ++k) {
            const int64_t t = i + k;
            const double e0 = (double)d0[t], y0 = (double)x0[t] - m0;
            const double w0 = gm[t] * e0;
            a0[k] += w0;
            b0[k] += w0 * y0;
            db[t] += e0;
            dg[t] += r0 * (e0 * y0);
        }
    }
    s[0] = gr_bl_sum(a0);
    s[1] = gr_bl_sum(b0);
}

ND_CLONES_AVX2
static void FN(gr_rows_sums)(const T *const *dp, const T *const *xp, int nr, int64_t len,
                             const double *m, const double *r, const double *restrict gm,
                             double *restrict db, double *restrict dg, double *s, int64_t pf)
{
    if (pf)
        FN(gr_rows_sums_body)(dp, xp, nr, len, m, r, gm, db, dg, s, pf, 1);
    else
        FN(gr_rows_sums_body)(dp, xp, nr, len, m, r, gm, db, dg, s, 0, 0);
}

/* Sums of a channel-run group of several runs (channels-last): *s1 = sum
 * dout * gamma[ch], *s2 = sum dout * gamma[ch] * (x - m) (ND_LANES lanes by
 * position in the run); per channel db[ch] += sum dout and dg[ch] += r * sum
 * dout * (x - m) over the runs (tc: scratch of cg doubles). */
ND_CLONES
static void FN(gr_clast_sums)(const T *dout, const T *x, const nd_grp *grp, double m, double r,
                              const double *gamma, double *s1, double *s2, double *dg,
                              double *db, double *tc)
{
    double a1[ND_LANES], a2[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) { a1[k] = 0.0; a2[k] = 0.0; }
    const int64_t len = grp->len;
    const double *gm = gamma + grp->c0;
    for (int64_t t = 0; t < len; ++t) tc[t] = 0.0;
    for (int64_t run = 0; run < grp->nrun; ++run) {
        const int64_t off = grp->base + run * grp->stride;
        const T *dp = dout + off, *xp = x + off;
        double *dbc = db + grp->c0;
        int64_t i = 0;
        for (; i + ND_LANES <= len; i += ND_LANES)
            for (int k = 0; k < ND_LANES; ++k) {
                const double d = (double)dp[i + k], xm = (double)xp[i + k] - m;
                const double w = gm[i + k] * d;
                a1[k] += w;
                a2[k] += w * xm;
                dbc[i + k] += d;
                tc[i + k] += d * xm;
            }
        for (int k = 0; i + k < len; ++k) {
            const double d = (double)dp[i + k], xm = (double)xp[i + k] - m;
            const double w = gm[i + k] * d;
            a1[k] += w;
            a2[k] += w * xm;
            dbc[i + k] += d;
            tc[i + k] += d * xm;
        }
    }
    double *dgc = dg + grp->c0;
    for (int64_t t = 0; t < len; ++t) dgc[t] += r * tc[t];
    *s1 = nd_lanes_sum(a1);
    *s2 = nd_lanes_sum(a2);
}

/* Sums of group grp (gr_plane_sums per plane, gamma and r applied once per
 * channel; gr_rows_sums; gr_clast_sums). */
static void FN(gr_group_sums)(const T *dout, const T *x, const nd_grp *grp, double m, double r,
                              const double *gamma, double *s1, double *s2, double *dg,
                              double *db, double *tc)
{
    if (grp->per_run) {
        double t1 = 0.0, t2 = 0.0;
        for (int64_t run = 0; run < grp->nrun; ++run) {
            const int64_t off = grp->base + run * grp->stride, ch = grp->c0 + run;
            double v1, v2;
            GR_CALL(gr_plane_sums)(dout + off, x + off, grp->len, m, &v1, &v2);
            t1 += gamma[ch] * v1;
            t2 += gamma[ch] * v2;
            db[ch] += v1;
            dg[ch] += r * v2;
        }
        *s1 = t1;
        *s2 = t2;
    } else if (grp->nrun == 1) {
        const T *dp = dout + grp->base, *xp = x + grp->base;
        double sv[4];
        GR_CALL(gr_rows_sums)(&dp, &xp, 1, grp->len, &m, &r, gamma + grp->c0, db + grp->c0,
                         dg + grp->c0, sv, 0);
        *s1 = sv[0];
        *s2 = sv[1];
    } else {
        FN(gr_clast_sums)(dout, x, grp, m, r, gamma, s1, s2, dg, db, tc);
    }
}

/* dx = (r gamma[ch]) * dout + b * (x - m) + e over the positions [0, len) of
 * one channel run from off (gm: gamma of its channels), in double, rounded
 * once; st: streamed. */
ND_CLONES_AVX2
static void FN(gr_run_dx)(const T *restrict dp, const T *restrict xp, T *restrict op,
                          int64_t len, double m, double r, double b, double e,
                          const double *restrict gm, int st)
{
    if (!st) {
        for (int64_t t = 0; t < len; ++t)
            op[t] = (T)((r * gm[t]) * (double)dp[t] + b * ((double)xp[t] - m) + e);
        return;
    }
    T buf[ND_GSCH];
    for (int64_t t0 = 0; t0 < len; t0 += ND_GSCH) {
        const int64_t l = nd_min64(ND_GSCH, len - t0);
        for (int64_t j = 0; j < l; ++j) {
            const int64_t t = t0 + j;
            buf[j] = (T)((r * gm[t]) * (double)dp[t] + b * ((double)xp[t] - m) + e);
        }
        nd_stream_copy(op + t0, buf, (size_t)l * sizeof(T));
    }
}

/* A plane run's dx: batchnorm's nd_plane_dx. */
static inline void FN(gr_plane_dx)(const T *dp, const T *xp, T *o, int64_t S, double m, double ac,
                                   double bc, double ec, int st)
{
    FN(nd_ch_pick)()->plane_dx(dp, xp, o, S, m, ac, bc, ec, st);
}

/* dx = (r gamma[ch]) * dout + b * (x - m) + e over group grp (double,
 * rounded once; plane runs as batchnorm's nd_plane_dx). */
static void FN(gr_group_dx)(const T *dout, const T *x, T *dx, const nd_grp *grp, double m,
                            double r, double b, double e, const double *gamma, int st)
{
    for (int64_t run = 0; run < grp->nrun; ++run) {
        const int64_t off = grp->base + run * grp->stride;
        if (grp->per_run)
            GR_CALL(gr_plane_dx)(dout + off, x + off, dx + off, grp->len, m,
                                 r * gamma[grp->c0 + run], b, e, st);
        else
            GR_CALL(gr_run_dx)(dout + off, x + off, dx + off, grp->len, m, r, b, e,
                          gamma + grp->c0, st);
    }
    if (st) nd_stream_fence();
}

/* The backward's sums over the rows of a sample (gr_clast_sums' formulas and
 * lanes: A1, A2 as gr_cl_rows_sum's lanes; db, tc per channel). */
ND_CLONES
static void FN(gr_cl_rows_grad)(const T *dp, const T *xp, int64_t S, int64_t ss, int64_t C,
                                int64_t cg, const double *restrict MM,
                                const double *restrict gamma, double *restrict A1,
                                double *restrict A2, double *restrict db, double *restrict tc)
{
    for (int64_t r = 0; r < S; ++r) {
        const T *restrict dr = dp + r * ss, *restrict xr = xp + r * ss;
        if (cg <= ND_LANES) {
            FN(gr_cl_run_grad)(dr, xr, MM, gamma, A1, A2, db, tc, C);
        } else {
            for (int64_t c0 = 0; c0 < C; c0 += ND_LANES) {
                const int64_t lo = c0 / cg * ND_LANES;
                FN(gr_cl_run_grad)(dr + c0, xr + c0, MM + c0, gamma + c0, A1 + lo, A2 + lo,
                                   db + c0, tc + c0, ND_LANES);
            }
        }
    }
}

/* dx = RG * dout + BB * (x - MM) + EE per channel over the rows of a sample,
 * in double, rounded once (gr_run_dx's formula, RG = rd * gamma). */
ND_CLONES
static void FN(gr_cl_dx_rows)(const T *dp, const T *xp, T *op, int64_t S, int64_t ss, int64_t C,
                              const double *restrict RG, const double *restrict BB,
                              const double *restrict MM, const double *restrict EE, int st)
{
    GR_CL_ROWS(const T *restrict dr = dp + r * ss; const T *restrict xr = xp + r * ss;
               T *restrict o = op + r * ss;,
               (T)(RG[c] * (double)dr[c] + BB[c] * ((double)xr[c] - MM[c]) + EE[c]));
}

/* dx of groups q0 + q, q < G, of sample i on its rows [r0, r0 + nr) from
 * their sums s1[q], s2[q] over M values: gr_group_dx's bits (gr_coef's
 * coefficients).  w: 4 c doubles. */
static void FN(gr_cl_dx)(const T *dout, const T *x, T *dx, const nd_geom *g, int64_t i,
                         int64_t q0, int64_t G, int64_t r0, int64_t nr, const double *mean,
                         const double *invstd, const double *gamma, const double *s1,
                         const double *s2, int train, double M, int st, double *w)
{
    const int64_t cg = g->c / g->groups, C = G * cg, c0 = q0 * cg;
    const int64_t off = i * g->sn + c0 + r0 * g->ss;
    double *MM = w, *RG = MM + C, *BB = RG + C, *EE = BB + C;
    for (int64_t q = 0; q < G; ++q) {
        double b, e;
        const double rd = gr_coef(invstd[q], s1[q], s2[q], M, train, &b, &e);
        for (int64_t j = 0; j < cg; ++j) {
            MM[q * cg + j] = mean[q];
            RG[q * cg + j] = rd * gamma[c0 + q * cg + j];
            BB[q * cg + j] = b;
            EE[q * cg + j] = e;
        }
    }
    FN(gr_cl_dx_rows)(dout + off, x + off, dx + off, nr, g->ss, C, RG, BB, MM, EE, st);
    if (st) nd_stream_fence();
}

/* dx of groups q0 + q, q < G, of sample i on its rows [r0, r0 + nr): along
 * the rows (gr_cl_dx, w its scratch), else group by group; the same bits. */
static void FN(gr_cl_dx_part)(const T *dout, const T *x, T *dx, const nd_geom *g, int64_t i,
                              int64_t q0, int64_t G, int64_t r0, int64_t nr, const double *mean,
                              const double *invstd, const double *gamma, const double *s1,
                              const double *s2, int train, double M, int st, double *w)
{
    if (w) {
        FN(gr_cl_dx)(dout, x, dx, g, i, q0, G, r0, nr, mean, invstd, gamma, s1, s2, train, M, st,
                     w);
        return;
    }
    for (int64_t q = 0; q < G; ++q) {
        const nd_grp grp = nd_group_rows(g, i * g->groups + q0 + q, r0, nr);
        double b, e;
        const double rd = gr_coef(invstd[q], s1[q], s2[q], M, train, &b, &e);
        FN(gr_group_dx)(dout, x, dx, &grp, mean[q], rd, b, e, gamma, st);
    }
}

/* The backward of the G groups of sample i (mean[q], invstd[q], s1[q],
 * s2[q] its groups'; dg, db, tc: the block's per-channel sums and scratch):
 * gr_group_sums' bits, then (dx) gr_group_dx's. */
static void FN(gr_cl_backward)(const T *dout, const T *x, T *dx, const nd_geom *g, int64_t i,
                               const double *mean, const double *invstd, const double *gamma,
                               int train, double M, int st, double *s1, double *s2, double *dg,
                               double *db, double *tc, double *w)
{
    const int64_t C = g->c, G = g->groups, cg = C / G, off = i * g->sn;
    double *A1 = w, *A2 = A1 + C, *MM = A2 + C;   /* gr_cl_dx: from MM on */
    double t[ND_LANES];
    for (int64_t c = 0; c < C; ++c) { A1[c] = 0.0; A2[c] = 0.0; tc[c] = 0.0; }
    for (int64_t q = 0; q < G; ++q)
        for (int64_t j = 0; j < cg; ++j) MM[q * cg + j] = mean[q];
    FN(gr_cl_rows_grad)(dout + off, x + off, g->s, g->ss, C, cg, MM, gamma, A1, A2, db, tc);
    for (int64_t q = 0; q < G; ++q) {
        gr_cl_lanes(A1, q, cg, t);
        s1[q] = nd_lanes_sum(t);
        gr_cl_lanes(A2, q, cg, t);
        s2[q] = nd_lanes_sum(t);
        for (int64_t j = 0; j < cg; ++j) dg[q * cg + j] += invstd[q] * tc[q * cg + j];
    }
    if (dx)
        FN(gr_cl_dx)(dout, x, dx, g, i, 0, G, 0, g->s, mean, invstd, gamma, s1, s2, train, M, st,
                     MM);
}

/* dx of row unit u (gr_row_unit, nch per sample) of every group of its
 * sample (mean, invstd, s1, s2: of every group k). */
static void FN(gr_cl_dx_unit)(const T *dout, const T *x, T *dx, const nd_geom *g, int64_t u,
                              int64_t nch, const double *mean, const double *invstd,
                              const double *gamma, const double *s1, const double *s2, int train,
                              double M, int st, double *w)
{
    const int64_t G = g->groups;
    int64_t i, r0, nr;
    gr_row_unit(g, u, nch, &i, &r0, &nr);
    if (nr > 0)
        FN(gr_cl_dx_part)(dout, x, dx, g, i, 0, G, r0, nr, mean + i * G, invstd + i * G, gamma,
                          s1 + i * G, s2 + i * G, train, M, st, w);
}

/* grad_reduce over sample blocks, and (fused: dx != NULL) each group's dx
 * right after its sums.  Groups of one channel run (rows) go two samples at
 * a time (gr_rows_sums).  With fewer blocks than threads the other kinds
 * take ranges of a block's groups (gr_split_chunks), each range the sums of
 * its own channels in sample order: the same bits whatever the cut.  work:
 * 3 c doubles per block. */
static void FN(gr_backward)(const T *dout, const T *x, T *dx, const nd_geom *g,
                            const double *mean, const double *invstd, const double *gamma,
                            int train, double *work, double *s1, double *s2, double *dgamma,
                            double *dbeta)
{
    const int64_t C = g->c, G = g->groups, N = g->n, cg = C / G;
    const int64_t nb = nd_group_block(g), nblk = nd_cdiv(N, nb);
    const double M = (double)nd_group_count(g);
    const int rows = g->kind == ND_ROWS;
    const int st = dx ? gr_stream(dx, g, (int64_t)sizeof(T)) : 0;
    const int64_t pfr = rows ? gr_prefetch_rows(cg * (int64_t)sizeof(T)) : 0;
    /* float64 rows of at most 16 KiB whose dx goes through the caches: the
     * dx lines of each pair of rows are asked for writing before their sums
     * (ln-bwd float64 4096 x 1024 0.86-0.92x the time, (8, 512, 768) 0.89-0.92x,
     * (16384, 256) 0.96x; float32 rows took 1.11-1.15x, 32 KiB rows 1.02x:
     * Intel Xeon, 2 threads) */
    const int pfw = rows && dx && !st && sizeof(T) == 8 && cg * (int64_t)sizeof(T) <= 16384 &&
                    N * g->sn * (int64_t)sizeof(T) >= ND_GR_PFW_BYTES;
    const int cl = FN(gr_cl_bwd_ok)(g), clt = !cl && dx && FN(gr_clt_dx_ok)(g);
    const int64_t nsplit = rows ? 1 : gr_split_chunks(g, nblk);
    /* (the sample-at-a-time channels-last sums stay whole: see gr_split_chunks) */
    const int64_t nch = cl ? 1 : nsplit;
    /* where the blocks do not go round the threads, the dx of the
     * channels-last passes (ranges of groups, or whole samples' sums) is
     * written after every block's sums, by ranges of rows (gr_row_unit):
     * every thread takes part, and no two share a line */
    const int dx_rows = dx && (clt || cl) && nsplit > 1;
    const int64_t nrc = dx_rows ? gr_cl_chunks(g) : 1;
    ND_OMP_PARALLEL(N * C * g->s >= ND_PARALLEL_MIN)
    {
        double *w = cl || clt ? nd_scratch(gr_cl_work(g)) : NULL;
        ND_OMP_SPLIT
        for (int64_t u = 0; u < nblk * nch; ++u) {
            int64_t blk, q0, nq;
            gr_cl_unit(g, u, nch, &blk, &q0, &nq);
            double *P = work + 3 * C * blk, *dg = P, *db = P + C, *tc = P + 2 * C;
            for (int64_t c = q0 * cg; c < (q0 + nq) * cg; ++c) { dg[c] = 0.0; db[c] = 0.0; }
            const int64_t i0 = blk * nb, i1 = nd_min64(N, i0 + nb);
            if (rows) {
                for (int64_t i = i0; i < i1; i += 2) {
                    const int nr = i + 1 < i1 ? 2 : 1;
                    for (int64_t q = 0; q < G; ++q) {
                        const int64_t k0 = i * G + q, c0 = q * cg;
                        const T *dp[2], *xp[2];
                        double m[2], r[2], sv[4];
                        for (int j = 0; j < nr; ++j) {
                            const int64_t off = (i + j) * g->sn + c0;
                            dp[j] = dout + off;
                            xp[j] = x + off;
                            m[j] = mean[k0 + j * G];
                            r[j] = invstd[k0 + j * G];
                        }
                        /* the rows pfr on, while they lie in the operand */
                        const int64_t pf = i + pfr + nr <= N ? pfr * g->sn : 0;
                        if (pfw)
                            for (int j = 0; j < nr; ++j)
                                gr_prefetchw(dx + (i + j) * g->sn + c0, cg * (int64_t)sizeof(T));
                        GR_CALL(gr_rows_sums)(dp, xp, nr, cg, m, r, gamma + c0, db + c0, dg + c0,
                                              sv, pf);
                        for (int j = 0; j < nr; ++j) {
                            const int64_t k = k0 + j * G;
                            s1[k] = sv[2 * j];
                            s2[k] = sv[2 * j + 1];
                            if (dx) {
                                double b, e;
                                const double rd = gr_coef(r[j], s1[k], s2[k], M, train, &b, &e);
                                GR_CALL(gr_run_dx)(dp[j], xp[j], dx + (i + j) * g->sn + c0, cg,
                                                   m[j], rd, b, e, gamma + c0, st);
                            }
                        }
                    }
                }
                if (st) nd_stream_fence();
                continue;
            }
            for (int64_t i = i0; i < i1 && nq > 0; ++i) {
                const int64_t k0 = i * G + q0;
                if (clt && w) {   /* the range's sums group by group, its dx along the rows */
                    for (int64_t k = k0; k < k0 + nq; ++k) {
                        const nd_grp grp = nd_group(g, k);
                        FN(gr_group_sums)(dout, x, &grp, mean[k], invstd[k], gamma, &s1[k], &s2[k],
                                          dg, db, tc + grp.c0);
                    }
                    if (!dx_rows)
                        FN(gr_cl_dx)(dout, x, dx, g, i, q0, nq, 0, g->s, mean + k0, invstd + k0,
                                     gamma, s1 + k0, s2 + k0, train, M, st, w);
                    continue;
                }
                if (w) {   /* channels-last: the sample's groups at once */
                    FN(gr_cl_backward)(dout, x, dx_rows ? NULL : dx, g, i, mean + i * G,
                                       invstd + i * G, gamma, train, M, st, s1 + i * G,
                                       s2 + i * G, dg, db, tc, w);
                    continue;
                }
                for (int64_t k = k0; k < k0 + nq; ++k) {
                    const nd_grp grp = nd_group(g, k);
                    FN(gr_group_sums)(dout, x, &grp, mean[k], invstd[k], gamma, &s1[k], &s2[k], dg,
                                      db, tc + grp.c0);
                    if (dx && !dx_rows) {   /* (else by rows, below) */
                        double b, e;
                        const double rd = gr_coef(invstd[k], s1[k], s2[k], M, train, &b, &e);
                        FN(gr_group_dx)(dout, x, dx, &grp, mean[k], rd, b, e, gamma, st);
                    }
                }
            }
        }
        if (dx_rows) {
            ND_OMP_SPLIT_NOWAIT
            for (int64_t u = 0; u < N * nrc; ++u) {
                FN(gr_cl_dx_unit)(dout, x, dx, g, u, nrc, mean, invstd, gamma, s1, s2, train, M, st,
                                  w);
            }
        }
        free(w);
    }
    gr_finish_channels(g, nblk, work, dgamma, dbeta);
}

static void FN(gr_grad_input)(const T *dout, const T *x, T *dx, const nd_geom *g,
                              const double *mean, const double *invstd, const double *gamma,
                              const double *s1, const double *s2, int train, double M)
{
    const int64_t ng = nd_ngroups(g);
    const int st = gr_stream(dx, g, (int64_t)sizeof(T));
    const int cl = FN(gr_cl_ok)(g) || FN(gr_clt_dx_ok)(g);
    const int64_t nch = cl ? gr_cl_chunks(g) : 1;
    ND_OMP_PARALLEL(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    {
        /* channels-last: a sample, or ranges of its rows, along the rows
         * (gr_cl_dx_part), else group by group */
        double *w = cl ? nd_scratch(gr_cl_work(g)) : NULL;
        const int64_t nu = cl ? g->n * nch : ng;   /* the same on every thread */
        ND_OMP_SPLIT_NOWAIT
        for (int64_t u = 0; u < nu; ++u) {
            if (cl) {
                FN(gr_cl_dx_unit)(dout, x, dx, g, u, nch, mean, invstd, gamma, s1, s2, train, M, st,
                                  w);
                continue;
            }
            const nd_grp grp = nd_group(g, u);
            double b, e;
            const double rd = gr_coef(invstd[u], s1[u], s2[u], M, train, &b, &e);
            FN(gr_group_dx)(dout, x, dx, &grp, mean[u], rd, b, e, gamma, st);
        }
        free(w);
    }
}

#undef ND_GSCH
#undef GR_CL_ROWS
#undef ND_GU
#undef GR_CALL
#ifdef ND_GR_AVX2
#undef ND_GR_AVX2
#endif
#ifdef ND_GR_AVX512
#undef ND_GR_AVX512
#endif
