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
 * Statistics: a group of at most ND_GR_UNIT values is one unit, read twice in
 * cache (mean, then sum of squared deviations); a larger group is cut into
 * units of whole runs or run segments of at most ND_GR_UNIT values, merged in
 * order (nd_chan_merge).  Sums use ND_LANES fixed accumulators: lane k takes
 * the positions t = k mod ND_LANES of every run, in run order.
 * Work is split over groups (forward, grad_input) or over blocks of whole
 * samples (grad_reduce and the fused backward, whose per-channel dgamma and
 * dbeta are summed per block and the blocks then added in order), with
 * boundaries that depend only on the shape: the results do not depend on the
 * thread count.  Every quantity is computed in double and rounded once.
 */

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

/* sum of (b[i] - m)^2, i < n: lanes by i mod ND_LANES. */
ND_CLONES
static double FN(gr_sqdev_buf)(const double *b, int64_t n, double m)
{
    double a[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) a[k] = 0.0;
    int64_t i = 0;
    for (; i + ND_LANES <= n; i += ND_LANES)
        for (int k = 0; k < ND_LANES; ++k) {
            const double d = b[i + k] - m;
            a[k] += d * d;
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
 * (two passes: the mean, then the squared deviations from it). */
static inline void FN(gr_unit)(const T *p, int64_t nrun, int64_t len, int64_t stride,
                               double *mean, double *m2)
{
    const double cnt = (double)(nrun * len);
#if ND_AFFINE_FLOAT
    double buf[ND_GU];
    const double mu = FN(gr_sum_cvt)(p, nrun, len, stride, buf) / cnt;
    *mean = mu;
    *m2 = FN(gr_sqdev_buf)(buf, nrun * len, mu);
#else
    const double mu = FN(gr_sum)(p, nrun, len, stride) / cnt;
    *mean = mu;
    *m2 = FN(gr_sqdev)(p, nrun, len, stride, mu);
#endif
}

/* ------------------------------------------------------------ moments */

/* (mean, M2) of group grp.  Its values as runs (planes of one group that
 * follow each other in memory count as one run), cut into units of at most
 * ND_GU values (ND_GR_UNIT32 for float32, whose units are converted to double
 * once into an L1 buffer; ND_GR_UNIT for float64): one unit when the group
 * fits, else segments of a run or groups of whole runs, merged in order
 * (nd_chan_merge). */
static void FN(gr_group_moments)(const T *x, const nd_grp *grp, double *mean, double *m2)
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
        FN(gr_unit)(p, nrun, len, stride, mean, m2);
        return;
    }
    double n = 0.0, mu = 0.0, q = 0.0, um, uq;
    if (len >= ND_GU) {                     /* units: segments of one run */
        for (int64_t r = 0; r < nrun; ++r)
            for (int64_t s0 = 0; s0 < len; s0 += ND_GU) {
                const int64_t l = nd_min64(ND_GU, len - s0);
                FN(gr_unit)(p + r * stride + s0, 1, l, 0, &um, &uq);
                nd_chan_merge(&n, &mu, &q, (double)l, um, uq);
            }
    } else {                                /* units: whole runs, k at a time */
        const int64_t k = ND_GU / len;
        for (int64_t r0 = 0; r0 < nrun; r0 += k) {
            const int64_t kr = nd_min64(k, nrun - r0);
            FN(gr_unit)(p + r0 * stride, kr, len, stride, &um, &uq);
            nd_chan_merge(&n, &mu, &q, (double)(kr * len), um, uq);
        }
    }
    *mean = mu;
    *m2 = q;
}

/* mean[k], m2[k] for every group k, in parallel over groups. */
static void FN(gr_moments)(const T *x, const nd_geom *g, double *mean, double *m2)
{
    const int64_t ng = nd_ngroups(g);
    ND_OMP_FOR(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    for (int64_t k = 0; k < ng; ++k) {
        const nd_grp grp = nd_group(g, k);
        FN(gr_group_moments)(x, &grp, &mean[k], &m2[k]);
    }
}

/* ---------------------------------------------------------- normalize */

/* Values per chunk of a streamed output (see nd_stream_copy). */
#define ND_GSCH ((int64_t)(ND_STREAM_CHUNK / sizeof(T)))

/* out = (x - m) * (r * gamma[ch]) + beta[ch] in double, rounded once, over
 * channel-run group grp: float64, and float32 groups outside the float
 * formula's range.  st: stream the runs out. */
ND_CLONES
static void FN(gr_runs_affine_d)(const T *x, T *out, const nd_grp *grp, double m, double r,
                                 const double *gamma, const double *beta, int st)
{
    double ad[ND_GR_TILE];
    T buf[ND_GSCH];
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
        for (int64_t run = 0; run < grp->nrun; ++run) {
            const int64_t off = grp->base + run * grp->stride, ch = grp->c0 + run;
            if (fl)
                FN(nd_plane_affine)(x + off, out + off, grp->len, m, r * gamma[ch], beta[ch], st);
            else
                FN(nd_plane_affine_d)(x + off, out + off, grp->len, m, r * gamma[ch], beta[ch],
                                      st);
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

/* The forward over every group: fused (the training forward): each group's
 * moments, var and invstd, then its values normalized while they are in
 * cache; else (nd_normalize) with the given mean and invstd. */
static void FN(gr_forward)(const T *x, T *out, const nd_geom *g, const double *gamma,
                           const double *beta, double eps, int fused, double *mean, double *var,
                           double *invstd)
{
    const int64_t ng = nd_ngroups(g), cnt = nd_group_count(g), G = g->groups, cg = g->c / G;
    const int st = gr_stream(out, g, (int64_t)sizeof(T));
    /* the range of each group pattern's gamma and beta, formed once when G is small */
    double rbuf[2 * ND_GR_RANGES];
    if (G <= ND_GR_RANGES)
        for (int64_t q = 0; q < G; ++q) gr_range(gamma, beta, q * cg, cg, &rbuf[2 * q]);
#if ND_AFFINE_FLOAT
    const int use_cf = g->kind != ND_PLANES && g->c <= ND_GR_CF;
#endif
    ND_GR_PARALLEL(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    {
        const float *cf = NULL;
#if ND_AFFINE_FLOAT
        float cbuf[2 * ND_GR_CF];
        if (use_cf) {
            gr_coef32(gamma, beta, 0, g->c, cbuf);
            cf = cbuf;
        }
#endif
        ND_GR_FOR
        for (int64_t k = 0; k < ng; ++k) {
            const nd_grp grp = nd_group(g, k);
            double own[2];
            const double *rng = &rbuf[2 * (k % G)];
            if (G > ND_GR_RANGES) {
                gr_range(gamma, beta, (k % G) * cg, cg, own);
                rng = own;
            }
            if (fused) {
                double m2;
                FN(gr_group_moments)(x, &grp, &mean[k], &m2);
                var[k] = cnt > 0 ? m2 / (double)cnt : 0.0;
                invstd[k] = 1.0 / sqrt(var[k] + eps);
            }
            FN(gr_group_normalize)(x, out, &grp, mean[k], invstd[k], gamma, beta, rng, cf, g->c,
                                   st);
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

/* Sums of group grp: *s1 = sum dout * gamma[ch], *s2 = sum dout * gamma[ch] *
 * (x - m); and per channel of the group, db[ch] += sum dout and
 * dg[ch] += r * sum dout * (x - m) (tc: scratch of cg doubles). */
ND_CLONES
static void FN(gr_group_sums)(const T *dout, const T *x, const nd_grp *grp, double m, double r,
                              const double *gamma, double *s1, double *s2, double *dg,
                              double *db, double *tc)
{
    double a1[ND_LANES], a2[ND_LANES];
    for (int k = 0; k < ND_LANES; ++k) { a1[k] = 0.0; a2[k] = 0.0; }
    const int64_t len = grp->len;
    if (grp->per_run) {
        /* one channel per run: its plain sums, then gamma and r applied once */
        double t1 = 0.0, t2 = 0.0;
        for (int64_t run = 0; run < grp->nrun; ++run) {
            const int64_t off = grp->base + run * grp->stride, ch = grp->c0 + run;
            const T *dp = dout + off, *xp = x + off;
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
            const double v1 = nd_lanes_sum(u1), v2 = nd_lanes_sum(u2);
            t1 += gamma[ch] * v1;
            t2 += gamma[ch] * v2;
            db[ch] += v1;
            dg[ch] += r * v2;
        }
        *s1 = t1;
        *s2 = t2;
        return;
    }
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

/* dx = (r gamma[ch]) * dout + b * (x - m) + e over group grp (double,
 * rounded once). */
ND_CLONES
static void FN(gr_group_dx)(const T *dout, const T *x, T *dx, const nd_grp *grp, double m,
                            double r, double b, double e, const double *gamma)
{
    for (int64_t run = 0; run < grp->nrun; ++run) {
        const int64_t off = grp->base + run * grp->stride;
        const T *dp = dout + off, *xp = x + off;
        T *op = dx + off;
        if (grp->per_run) {
            const double a = r * gamma[grp->c0 + run];
            for (int64_t t = 0; t < grp->len; ++t)
                op[t] = (T)(a * (double)dp[t] + b * ((double)xp[t] - m) + e);
        } else {
            const double *gm = gamma + grp->c0;
            for (int64_t t = 0; t < grp->len; ++t)
                op[t] = (T)((r * gm[t]) * (double)dp[t] + b * ((double)xp[t] - m) + e);
        }
    }
}

/* grad_reduce over sample blocks, and (fused: dx != NULL) each group's dx
 * right after its sums.  work: 3 c doubles per block. */
static void FN(gr_backward)(const T *dout, const T *x, T *dx, const nd_geom *g,
                            const double *mean, const double *invstd, const double *gamma,
                            int train, double *work, double *s1, double *s2, double *dgamma,
                            double *dbeta)
{
    const int64_t C = g->c, G = g->groups, N = g->n;
    const int64_t nb = nd_group_block(g), nblk = nd_cdiv(N, nb);
    const double M = (double)nd_group_count(g);
    ND_OMP_FOR(N * C * g->s >= ND_PARALLEL_MIN)
    for (int64_t blk = 0; blk < nblk; ++blk) {
        double *P = work + 3 * C * blk, *dg = P, *db = P + C, *tc = P + 2 * C;
        for (int64_t c = 0; c < 2 * C; ++c) P[c] = 0.0;
        const int64_t i1 = nd_min64(N, (blk + 1) * nb);
        for (int64_t k = blk * nb * G; k < i1 * G; ++k) {
            const nd_grp grp = nd_group(g, k);
            FN(gr_group_sums)(dout, x, &grp, mean[k], invstd[k], gamma, &s1[k], &s2[k], dg, db,
                              tc);
            if (dx) {
                double b, e;
                gr_coef(invstd[k], s1[k], s2[k], M, train, &b, &e);
                FN(gr_group_dx)(dout, x, dx, &grp, mean[k], invstd[k], b, e, gamma);
            }
        }
    }
    gr_finish_channels(g, nblk, work, dgamma, dbeta);
}

static void FN(gr_grad_input)(const T *dout, const T *x, T *dx, const nd_geom *g,
                              const double *mean, const double *invstd, const double *gamma,
                              const double *s1, const double *s2, int train)
{
    const int64_t ng = nd_ngroups(g);
    const double M = (double)nd_group_count(g);
    ND_OMP_FOR(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    for (int64_t k = 0; k < ng; ++k) {
        const nd_grp grp = nd_group(g, k);
        double b, e;
        gr_coef(invstd[k], s1[k], s2[k], M, train, &b, &e);
        FN(gr_group_dx)(dout, x, dx, &grp, mean[k], invstd[k], b, e, gamma);
    }
}

#undef ND_GSCH
#undef ND_GU
