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

/* ------------------------------------------------------------ moments */

/* (mean, M2) of group grp.  Its values as runs (planes of one group that
 * follow each other in memory count as one run). */
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
    if (total <= ND_GR_UNIT) {
        const double mu = FN(gr_sum)(p, nrun, len, stride) / (double)total;
        *mean = mu;
        *m2 = FN(gr_sqdev)(p, nrun, len, stride, mu);
        return;
    }
    double n = 0.0, mu = 0.0, q = 0.0;
    if (len >= ND_GR_UNIT) {                /* units: segments of one run */
        for (int64_t r = 0; r < nrun; ++r)
            for (int64_t s0 = 0; s0 < len; s0 += ND_GR_UNIT) {
                const int64_t l = nd_min64(ND_GR_UNIT, len - s0);
                const T *u = p + r * stride + s0;
                const double um = FN(gr_sum)(u, 1, l, 0) / (double)l;
                nd_chan_merge(&n, &mu, &q, (double)l, um, FN(gr_sqdev)(u, 1, l, 0, um));
            }
    } else {                                /* units: whole runs, k at a time */
        const int64_t k = ND_GR_UNIT / len;
        for (int64_t r0 = 0; r0 < nrun; r0 += k) {
            const int64_t kr = nd_min64(k, nrun - r0);
            const T *u = p + r0 * stride;
            const double um = FN(gr_sum)(u, kr, len, stride) / (double)(kr * len);
            nd_chan_merge(&n, &mu, &q, (double)(kr * len), um,
                          FN(gr_sqdev)(u, kr, len, stride, um));
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

/* out = (x - m) * (r * gamma[ch]) + beta[ch] over group grp, in double,
 * rounded once. */
ND_CLONES
static void FN(gr_group_normalize)(const T *x, T *out, const nd_grp *grp, double m, double r,
                                   const double *gamma, const double *beta)
{
    for (int64_t run = 0; run < grp->nrun; ++run) {
        const int64_t off = grp->base + run * grp->stride;
        const T *xp = x + off;
        T *op = out + off;
        if (grp->per_run) {
            const int64_t ch = grp->c0 + run;
            const double a = r * gamma[ch], b = beta[ch];
            for (int64_t t = 0; t < grp->len; ++t) op[t] = (T)(((double)xp[t] - m) * a + b);
        } else {
            const double *gm = gamma + grp->c0, *bt = beta + grp->c0;
            for (int64_t t = 0; t < grp->len; ++t)
                op[t] = (T)(((double)xp[t] - m) * (r * gm[t]) + bt[t]);
        }
    }
}

static void FN(gr_normalize)(const T *x, T *out, const nd_geom *g, const double *mean,
                             const double *invstd, const double *gamma, const double *beta)
{
    const int64_t ng = nd_ngroups(g);
    ND_OMP_FOR(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    for (int64_t k = 0; k < ng; ++k) {
        const nd_grp grp = nd_group(g, k);
        FN(gr_group_normalize)(x, out, &grp, mean[k], invstd[k], gamma, beta);
    }
}

/* The fused training forward: each group's moments, then its values
 * normalized while they are in cache. */
static void FN(gr_train_fwd)(const T *x, T *out, const nd_geom *g, const double *gamma,
                             const double *beta, double eps, double *mean, double *var,
                             double *invstd)
{
    const int64_t ng = nd_ngroups(g), cnt = nd_group_count(g);
    ND_OMP_FOR(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    for (int64_t k = 0; k < ng; ++k) {
        const nd_grp grp = nd_group(g, k);
        double m2;
        FN(gr_group_moments)(x, &grp, &mean[k], &m2);
        var[k] = cnt > 0 ? m2 / (double)cnt : 0.0;
        invstd[k] = 1.0 / sqrt(var[k] + eps);
        FN(gr_group_normalize)(x, out, &grp, mean[k], invstd[k], gamma, beta);
    }
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
                              const double *s1, const double *s2, int train, double M)
{
    const int64_t ng = nd_ngroups(g);
    ND_OMP_FOR(g->n * g->c * g->s >= ND_PARALLEL_MIN)
    for (int64_t k = 0; k < ng; ++k) {
        const nd_grp grp = nd_group(g, k);
        double b, e;
        gr_coef(invstd[k], s1[k], s2[k], M, train, &b, &e);
        FN(gr_group_dx)(dout, x, dx, &grp, mean[k], invstd[k], b, e, gamma);
    }
}
