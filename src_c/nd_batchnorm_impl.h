/* nd_batchnorm_impl.h -- body of the batchnorm kernels for one data type.
 * Included by nd_batchnorm.c with T (the C type) and SUF (its suffix) defined. */

#define FN(name) ND_CAT(name, SUF)

/* Sum of p[0..len) with eight fixed accumulators. */
static inline double FN(nd_seg_sum)(const T *p, int64_t len)
{
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int k = 0; k < 8; ++k) a[k] += (double)p[i + k];
    for (int k = 0; i + k < len; ++k) a[k] += (double)p[i + k];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* Sum of (p - m)^2 over p[0..len) with eight fixed accumulators. */
static inline double FN(nd_seg_ssd)(const T *p, int64_t len, double m)
{
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int k = 0; k < 8; ++k) { double d = (double)p[i + k] - m; a[k] += d * d; }
    for (int k = 0; i + k < len; ++k) { double d = (double)p[i + k] - m; a[k] += d * d; }
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* Sums of dy and dy * (x - m) over a segment, eight fixed accumulators each. */
static inline void FN(nd_seg_dsum)(const T *dy, const T *x, int64_t len, double m,
                                   double *sdy, double *sdyxm)
{
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    double b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int k = 0; k < 8; ++k) {
            double g = (double)dy[i + k];
            a[k] += g;
            b[k] += g * ((double)x[i + k] - m);
        }
    for (int k = 0; i + k < len; ++k) {
        double g = (double)dy[i + k];
        a[k] += g;
        b[k] += g * ((double)x[i + k] - m);
    }
    *sdy = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    *sdyxm = ((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]));
}

/*
 * nd_bn_stats: mean[c] = sum x / (N S);  var[c] = sum (x - mean)^2 / (N S).
 * IN x, g; SCRATCH work (nd_bn_work_size(g) doubles); OUT mean, var (c doubles).
 */
void FN(nd_bn_stats)(const T *x, const nd_geom *g, double *work, double *mean, double *var)
{
    const int64_t C = g->c, N = g->n;
    if (C <= 0) return;
    if (g->kind == ND_ROWS) {
        const int64_t ct = nd_rows_ct(g), rb = nd_rows_rb(g);
        const int64_t nrb = nd_cdiv(N, rb), ntile = nd_cdiv(C, ct);
        const int64_t units = nrb * ntile;
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t r0 = (u / ntile) * rb, r1 = nd_min64(r0 + rb, N);
            const int64_t c0 = (u % ntile) * ct, w = nd_min64(ct, C - c0);
            double acc[ND_CT], m[ND_CT];
            for (int64_t j = 0; j < w; ++j) acc[j] = 0.0;
            for (int64_t r = r0; r < r1; ++r) {
                const T *row = x + r * g->sn + c0;
                for (int64_t j = 0; j < w; ++j) acc[j] += (double)row[j];
            }
            const double cnt = (double)(r1 - r0);
            for (int64_t j = 0; j < w; ++j) { m[j] = acc[j] / cnt; acc[j] = 0.0; }
            for (int64_t r = r0; r < r1; ++r) {
                const T *row = x + r * g->sn + c0;
                for (int64_t j = 0; j < w; ++j) { double d = (double)row[j] - m[j]; acc[j] += d * d; }
            }
            double *wk = work + 2 * ((u / ntile) * C + c0);
            for (int64_t j = 0; j < w; ++j) { wk[2 * j] = m[j]; wk[2 * j + 1] = acc[j]; }
        }
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c) {
            double n = 0.0, mu = 0.0, m2 = 0.0;
            for (int64_t b = 0; b < nrb; ++b) {
                const double cnt = (double)(nd_min64((b + 1) * rb, N) - b * rb);
                nd_chan_merge(&n, &mu, &m2, cnt, work[2 * (b * C + c)], work[2 * (b * C + c) + 1]);
            }
            mean[c] = mu;
            var[c] = n > 0.0 ? m2 / n : 0.0;
        }
    } else {
        const int64_t S = g->s, nseg = nd_planes_nseg(g);
        const int64_t units = C * N * nseg;
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t seg = u % nseg, n = (u / nseg) % N, c = u / (nseg * N);
            const int64_t s0 = seg * ND_SEG, len = nd_min64(ND_SEG, S - s0);
            const T *p = x + n * g->sn + c * g->sc + s0;
            double m = 0.0, m2 = 0.0;
            if (len > 0) {
                m = FN(nd_seg_sum)(p, len) / (double)len;
                m2 = FN(nd_seg_ssd)(p, len, m);
            }
            work[2 * u] = m;
            work[2 * u + 1] = m2;
        }
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c) {
            double n = 0.0, mu = 0.0, m2 = 0.0;
            for (int64_t k = 0; k < N * nseg; ++k) {
                const int64_t seg = k % nseg, u = c * N * nseg + k;
                const double cnt = (double)nd_min64(ND_SEG, S - seg * ND_SEG);
                nd_chan_merge(&n, &mu, &m2, cnt, work[2 * u], work[2 * u + 1]);
            }
            mean[c] = mu;
            var[c] = n > 0.0 ? m2 / n : 0.0;
        }
    }
}

/*
 * nd_bn_affine: out = (x - mean[c]) * scale[c] + shift[c], in double, rounded once.
 * Forward in training (scale = gamma * invstd, shift = beta) and in test mode.
 * IN x, g, mean, scale, shift; OUT out (same geometry as x).
 */
void FN(nd_bn_affine)(const T *x, T *out, const nd_geom *g, const double *mean,
                      const double *scale, const double *shift)
{
    const int64_t C = g->c, N = g->n;
    if (g->kind == ND_ROWS) {
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t r = 0; r < N; ++r) {
            const T *xr = x + r * g->sn;
            T *orow = out + r * g->sn;
            for (int64_t j = 0; j < C; ++j)
                orow[j] = (T)(((double)xr[j] - mean[j]) * scale[j] + shift[j]);
        }
    } else {
        const int64_t S = g->s;
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < N * C; ++u) {
            const int64_t n = u / C, c = u % C, off = n * g->sn + c * g->sc;
            const T *xp = x + off;
            T *op = out + off;
            const double m = mean[c], a = scale[c], b = shift[c];
            for (int64_t s = 0; s < S; ++s) op[s] = (T)(((double)xp[s] - m) * a + b);
        }
    }
}

/*
 * nd_bn_bwd_reduce: sum_dy[c] = sum dout;  sum_dyxm[c] = sum dout * (x - mean[c]).
 * IN dout, x, g, mean; SCRATCH work; OUT sum_dy, sum_dyxm (c doubles).
 */
void FN(nd_bn_bwd_reduce)(const T *dout, const T *x, const nd_geom *g, const double *mean,
                          double *work, double *sum_dy, double *sum_dyxm)
{
    const int64_t C = g->c, N = g->n;
    if (C <= 0) return;
    if (g->kind == ND_ROWS) {
        const int64_t ct = nd_rows_ct(g), rb = nd_rows_rb(g);
        const int64_t nrb = nd_cdiv(N, rb), ntile = nd_cdiv(C, ct);
        const int64_t units = nrb * ntile;
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t r0 = (u / ntile) * rb, r1 = nd_min64(r0 + rb, N);
            const int64_t c0 = (u % ntile) * ct, w = nd_min64(ct, C - c0);
            double a[ND_CT], b[ND_CT];
            const double *m = mean + c0;
            for (int64_t j = 0; j < w; ++j) { a[j] = 0.0; b[j] = 0.0; }
            for (int64_t r = r0; r < r1; ++r) {
                const T *dr = dout + r * g->sn + c0;
                const T *xr = x + r * g->sn + c0;
                for (int64_t j = 0; j < w; ++j) {
                    double d = (double)dr[j];
                    a[j] += d;
                    b[j] += d * ((double)xr[j] - m[j]);
                }
            }
            double *wk = work + 2 * ((u / ntile) * C + c0);
            for (int64_t j = 0; j < w; ++j) { wk[2 * j] = a[j]; wk[2 * j + 1] = b[j]; }
        }
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c) {
            double a = 0.0, b = 0.0;
            for (int64_t k = 0; k < nrb; ++k) { a += work[2 * (k * C + c)]; b += work[2 * (k * C + c) + 1]; }
            sum_dy[c] = a;
            sum_dyxm[c] = b;
        }
    } else {
        const int64_t S = g->s, nseg = nd_planes_nseg(g);
        const int64_t units = C * N * nseg;
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < units; ++u) {
            const int64_t seg = u % nseg, n = (u / nseg) % N, c = u / (nseg * N);
            const int64_t s0 = seg * ND_SEG, len = nd_min64(ND_SEG, S - s0);
            const int64_t off = n * g->sn + c * g->sc + s0;
            double a = 0.0, b = 0.0;
            if (len > 0) FN(nd_seg_dsum)(dout + off, x + off, len, mean[c], &a, &b);
            work[2 * u] = a;
            work[2 * u + 1] = b;
        }
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t c = 0; c < C; ++c) {
            double a = 0.0, b = 0.0;
            for (int64_t k = 0; k < N * nseg; ++k) {
                const int64_t u = c * N * nseg + k;
                a += work[2 * u];
                b += work[2 * u + 1];
            }
            sum_dy[c] = a;
            sum_dyxm[c] = b;
        }
    }
}

/*
 * nd_bn_bwd_dx: dx = a[c] * dout + b[c] * (x - mean[c]) + e[c], in double.
 * Training: a = gamma*invstd, b = -a*invstd*sum_dyxm*invstd/M, e = -a*sum_dy/M;
 * test mode: b = e = 0.  IN dout, x, g, mean, a, b, e; OUT dx.
 */
void FN(nd_bn_bwd_dx)(const T *dout, const T *x, T *dx, const nd_geom *g, const double *mean,
                      const double *a, const double *b, const double *e)
{
    const int64_t C = g->c, N = g->n;
    if (g->kind == ND_ROWS) {
        ND_OMP_FOR(N * C >= ND_PARALLEL_MIN)
        for (int64_t r = 0; r < N; ++r) {
            const int64_t off = r * g->sn;
            const T *dr = dout + off, *xr = x + off;
            T *o = dx + off;
            for (int64_t j = 0; j < C; ++j)
                o[j] = (T)(a[j] * (double)dr[j] + b[j] * ((double)xr[j] - mean[j]) + e[j]);
        }
    } else {
        const int64_t S = g->s;
        ND_OMP_FOR(N * C * S >= ND_PARALLEL_MIN)
        for (int64_t u = 0; u < N * C; ++u) {
            const int64_t n = u / C, c = u % C, off = n * g->sn + c * g->sc;
            const T *dp = dout + off, *xp = x + off;
            T *o = dx + off;
            const double ac = a[c], bc = b[c], ec = e[c], m = mean[c];
            for (int64_t s = 0; s < S; ++s)
                o[s] = (T)(ac * (double)dp[s] + bc * ((double)xp[s] - m) + ec);
        }
    }
}

#undef FN
