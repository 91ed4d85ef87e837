/* nd_norm_impl.h -- the exported normalization kernels for one data type.
 * Included by nd_norm.c with T (the C type), SUF (its suffix) and
 * ND_AFFINE_FLOAT defined.  Each contract step dispatches on the geometry's
 * statistics groups: per channel (ch_*, nd_norm_channel.h) or per sample and
 * channel group (gr_*, nd_norm_group.h).
 *
 * The inner loops are separate functions compiled for several instruction
 * sets (ND_CLONES); each computes the same IEEE operations in the same order
 * in every variant (no contraction, fixed accumulator lanes), so the variant
 * that runs does not change any bit. */

#define FN(name) ND_CAT(name, SUF)

#include "nd_norm_channel.h"
#include "nd_norm_group.h"

/*
 * nd_moments: mean[k] and m2[k] = sum (x - mean[k])^2 of each statistics
 * group k.  IN x, g; SCRATCH work (nd_work_size(g, 0) doubles); OUT mean, m2
 * (nd_ngroups(g) doubles each).
 */
void FN(nd_moments)(const T *x, const nd_geom *g, double *work, double *mean, double *m2)
{
    if (g->groups == 0)
        FN(ch_moments)(x, g, work, mean, m2);
    else
        FN(gr_moments)(x, g, mean, m2);
}

/*
 * nd_normalize: out = (x - mean[grp]) * (invstd[grp] * gamma[ch]) + beta[ch];
 * in double for float64, in float with a split mean for float32 (per
 * channel: ch_affine; per group: gr_group_normalize).  Training forward (batch
 * statistics) and test mode (running statistics).
 * IN x, g, mean, invstd (nd_ngroups doubles), gamma, beta (c doubles);
 * SCRATCH work; OUT out (x's geometry).
 */
void FN(nd_normalize)(const T *x, T *out, const nd_geom *g, const double *mean,
                      const double *invstd, const double *gamma, const double *beta,
                      double *work)
{
    if (g->groups == 0)
        FN(ch_normalize)(x, out, g, mean, invstd, gamma, beta, work);
    else
        FN(gr_normalize)(x, out, g, mean, invstd, gamma, beta);
}

/*
 * nd_grad_reduce: per group s1 = sum dout * w, s2 = sum dout * w * (x - mean),
 * w = gamma[ch] (groups > 0) or 1 (per channel, where gamma is constant over
 * the group); per channel dgamma = sum dout * (x - mean) * invstd and
 * dbeta = sum dout.
 * IN dout, x, g, mean, invstd, gamma; SCRATCH work; OUT s1, s2 (nd_ngroups
 * doubles), dgamma, dbeta (c doubles).
 */
void FN(nd_grad_reduce)(const T *dout, const T *x, const nd_geom *g, const double *mean,
                        const double *invstd, const double *gamma, double *work, double *s1,
                        double *s2, double *dgamma, double *dbeta)
{
    if (g->groups == 0)
        FN(ch_grad_reduce)(dout, x, g, mean, invstd, work, s1, s2, dgamma, dbeta);
    else
        FN(gr_backward)(dout, x, NULL, g, mean, invstd, gamma, 1, work, s1, s2, dgamma, dbeta);
}

/*
 * nd_grad_input: dx = a * dout + b[grp] * (x - mean[grp]) + e[grp] with
 * a = gamma[ch] * invstd[grp] and b, e from the group's sums over `count`
 * values (ch_coef, gr_coef; count is the geometry's own group size, or a
 * synchronized batchnorm's total over every rank); train == 0: b = e = 0
 * (test-mode batchnorm).  In double, rounded once.
 * IN dout, x, g, mean, invstd, gamma, s1, s2, train, count; SCRATCH work;
 * OUT dx.
 */
void FN(nd_grad_input)(const T *dout, const T *x, T *dx, const nd_geom *g, const double *mean,
                       const double *invstd, const double *gamma, const double *s1,
                       const double *s2, int train, double count, double *work)
{
    if (g->groups == 0)
        FN(ch_grad_input)(dout, x, dx, g, mean, invstd, gamma, s1, s2, train, count, work);
    else
        FN(gr_grad_input)(dout, x, dx, g, mean, invstd, gamma, s1, s2, train, count);
}

/*
 * nd_norm_train_fwd: nd_moments; var = m2 / count; invstd = 1 / sqrt(var +
 * eps); nd_normalize -- the same operations in one call, a group (or an
 * ND_PLANES channel) normalized right after its statistics where it fits in
 * cache.  IN x, g, gamma, beta, eps; SCRATCH work; OUT out, mean, var, invstd.
 */
void FN(nd_norm_train_fwd)(const T *x, T *out, const nd_geom *g, const double *gamma,
                           const double *beta, double eps, double *work, double *mean,
                           double *var, double *invstd)
{
    if (g->groups == 0)
        FN(ch_train_fwd)(x, out, g, gamma, beta, eps, work, mean, var, invstd);
    else
        FN(gr_train_fwd)(x, out, g, gamma, beta, eps, mean, var, invstd);
}

/*
 * nd_norm_bwd: nd_grad_reduce then nd_grad_input in one call, a group's (or
 * an ND_PLANES channel's) dx right after its sums where it fits in cache.
 * IN dout, x, g, mean, invstd, gamma, train; SCRATCH work; OUT dx, dgamma,
 * dbeta (c doubles).
 */
void FN(nd_norm_bwd)(const T *dout, const T *x, T *dx, const nd_geom *g, const double *mean,
                     const double *invstd, const double *gamma, int train, double *work,
                     double *dgamma, double *dbeta)
{
    if (g->groups == 0) {
        FN(ch_bwd)(dout, x, dx, g, mean, invstd, gamma, train, work, dgamma, dbeta);
    } else {
        const int64_t ng = nd_ngroups(g);
        const int64_t part = 3 * (g->c > 0 ? g->c : 1) * nd_cdiv(g->n > 0 ? g->n : 1,
                                                                   nd_group_block(g));
        FN(gr_backward)(dout, x, dx, g, mean, invstd, gamma, train, work, work + part,
                        work + part + ng, dgamma, dbeta);
    }
}

/*
 * nd_running_update: out[k] = (1 - momentum) * batch[k] + momentum * old[k],
 * in double, rounded once to T; old is old32 (float32), old64 (float64), or
 * zeros when both are NULL.  IN old32/old64, batch, momentum, c; OUT out.
 */
void FN(nd_running_update)(const float *old32, const double *old64, const double *batch,
                           double momentum, T *out, int64_t c)
{
    const double om = 1.0 - momentum;
    for (int64_t k = 0; k < c; ++k) {
        double v = batch[k] * om;
        if (old32)
            v = v + (double)old32[k] * momentum;
        else if (old64)
            v = v + old64[k] * momentum;
        out[k] = (T)v;
    }
}

#undef FN
