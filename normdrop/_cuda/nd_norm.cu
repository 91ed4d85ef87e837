/*
 * nd_norm.cu -- the normalization kernels of the CUDA backend (CuPy arrays):
 * the backend contract's steps (normdrop/_contract.py) under the names of
 * the C kernels (src_c/normdrop.h): nd_moments, nd_normalize, nd_grad_reduce,
 * nd_grad_input, each reduction as a `_part` kernel and a `_merge` kernel;
 * T is nd_half, float or double.  Every kernel runs ND_THREADS threads per
 * block.
 *
 * Geometry of an operand (see nd_common.cu): (kind, N, C, S, sn, sc, ss,
 * groups), C channels of N * S values,
 *   ND_ROWS   value (m, c) at m * sn + c  (S == 1): a C-contiguous (N, D)
 *             matrix, an NCHW array with H * W == 1, or an NHWC array seen
 *             as (N*H*W, C) rows;
 *   ND_PLANES value (n, c, j) at n * sn + c * sc + j: a C-contiguous NCHW
 *             array (S = H * W), or a Fortran-ordered (N, D) matrix (one
 *             plane of S = N values per channel).
 * Statistics per channel (groups == 0).
 * ND_ROWS thread mapping: a block covers a tile of ct = min(C, 32)
 *   consecutive channels and rt = ND_THREADS / ct rows at a time; thread tid
 *   has channel tile_start + tid % ct and row slot tid / ct, so a warp reads
 *   consecutive addresses.
 * ND_PLANES thread mapping: a block covers npb = ND_THREADS / st planes of
 *   one channel at a time, st = min(S, ND_THREADS) threads per plane reading
 *   consecutive values.
 *
 * Reductions are deterministic and use no atomics: the values of each
 * channel are cut into G parts that depend on the shape only (the launch
 * geometry computed in normdrop/_cuda/_backend.py); one block reduces one
 * part of one channel (ND_PLANES) or of a tile of channels (ND_ROWS) with a
 * fixed pairwise tree in shared memory and writes the part's result to
 * `part`; a second kernel merges the G parts of each channel in a fixed
 * order (each thread a fixed strided subset in index order, then the same
 * fixed tree).  Results are identical from run to run; the partition does
 * not depend on the GPU either (only the compiled code of each architecture,
 * e.g. its use of fused multiply-adds, may differ in the last bit).
 * Moments are merged with nd_chan_merge from normdrop/include/nd_moments.h,
 * the function the C kernels use.
 *
 * Precision (DESIGN section 4): float32 and float64 data are accumulated
 * and computed in double; float16 data per thread in float, merged in
 * double.  Per-channel statistics and coefficients are double.
 *
 * `part` layout: width arrays of C * G doubles, value k of part g of
 * channel c at part[k * C * G + c * G + g].
 */
#ifndef ND_COMMON_CU
#include "nd_common.cu"
#endif

#ifndef ND_MOMENTS_H
#include "nd_moments.h"
#endif

/* Combiners of the block trees: slot dst <- slot dst (+) slot src. */
struct nd_chan_comb {           /* (count, mean, M2) by nd_chan_merge */
    enum { width = 3 };
    ND_DEVM static void combine(double (*sh)[ND_THREADS], int dst, int src)
    {
        double n = sh[0][dst], m = sh[1][dst], q = sh[2][dst];
        nd_chan_merge(&n, &m, &q, sh[0][src], sh[1][src], sh[2][src]);
        sh[0][dst] = n;
        sh[1][dst] = m;
        sh[2][dst] = q;
    }
};

struct nd_sum2_comb {           /* two plain sums */
    enum { width = 2 };
    ND_DEVM static void combine(double (*sh)[ND_THREADS], int dst, int src)
    {
        sh[0][dst] += sh[0][src];
        sh[1][dst] += sh[1][src];
    }
};

/* Fixed pairwise tree over the slots of one group of a block: slot
 * tid = ty * ct + lane holds the group member ty (0 <= ty < rt); after the
 * call, slot lane (ty == 0) holds the combination of the group's rt slots.
 * Must be called by every thread of the block. */
template <typename Comb>
ND_DEV void nd_block_tree(double (*sh)[ND_THREADS], int tid, int ty, int ct, int rt)
{
    for (int step = 1; step < rt; step *= 2) {
        __syncthreads();
        if (ty < rt && ty % (2 * step) == 0 && ty + step < rt)
            Comb::combine(sh, tid, tid + step * ct);
    }
    __syncthreads();
}

/* Per-thread statistics of x over the values a thread visits in one
 * channel: shifted sums s1 = sum(v - k0), s2 = sum((v - k0)^2) with k0 the
 * thread's first value, turned into (count, mean, M2) at the end:
 * mean = k0 + s1 / n, M2 = s2 - s1^2 / n.  Since k0 is one of the values,
 * (mean - k0)^2 <= M2, so the cancellation costs at most a factor n (the
 * thread's count, ~64) of the accumulation precision.  A first value that is
 * inf or NaN is no shift (v - k0 would be inf - inf = NaN for the value
 * itself): k0 = 0 then, and the thread's mean is the inf or NaN of its sum,
 * its M2 NaN. */
template <typename T>
struct nd_stats_acc {
    typedef typename nd_type<T>::acc A;
    typedef nd_chan_comb comb;
    const T *x;
    nd_i64 cnt;
    A k0, s1, s2;
    ND_DEVM void channel(nd_i64)
    {
        cnt = 0;
        k0 = s1 = s2 = (A)0;
    }
    ND_DEVM void add(nd_i64 off, nd_i64, nd_i64)
    {
        const A v = nd_type<T>::to_acc(x[off]);
        if (cnt == 0) k0 = (v - v == (A)0) ? v : (A)0;   /* (v - v is 0 iff v is finite) */
        const A d = v - k0;
        s1 += d;
        s2 += d * d;
        ++cnt;
    }
    ND_DEVM void result(double (*sh)[ND_THREADS], int tid) const
    {
        double n = 0.0, m = 0.0, q = 0.0;
        if (cnt > 0) {
            const double a = nd_acc_f64(s1), b = nd_acc_f64(s2);
            n = (double)cnt;
            m = nd_acc_f64(k0) + a / n;
            q = b - a * (a / n);
            if (q < 0.0) q = 0.0;          /* (NaN stays NaN) */
        }
        sh[0][tid] = n;
        sh[1][tid] = m;
        sh[2][tid] = q;
    }
};

/* Per-thread sums of g and g * (x - mean[k]) over one statistics group k:
 * g = dout per channel (Gamma false: gamma is not read), g = dout * gamma[ch]
 * per group (Gamma true: the affine channel varies inside a group). */
template <typename T, bool Gamma>
struct nd_bwd_acc {
    typedef typename nd_type<T>::acc A;
    typedef nd_sum2_comb comb;
    const T *dout;
    const T *x;
    const double *mean;
    const T *gamma;
    A m, sdy, sdyxm;
    ND_DEVM void channel(nd_i64 k)
    {
        nd_set_acc(&m, mean[k]);
        sdy = sdyxm = (A)0;
    }
    ND_DEVM void add(nd_i64 off, nd_i64 ch, nd_i64)
    {
        A g = nd_type<T>::to_acc(dout[off]);
        if (Gamma) g = g * nd_type<T>::to_acc(gamma[ch]);
        sdy += g;
        sdyxm += g * (nd_type<T>::to_acc(x[off]) - m);
    }
    ND_DEVM void result(double (*sh)[ND_THREADS], int tid) const
    {
        sh[0][tid] = nd_acc_f64(sdy);
        sh[1][tid] = nd_acc_f64(sdyxm);
    }
};

/*
 * One block's part of a per-channel reduction, written to `part`.
 * ND_ROWS:   grid (ceil(C / ct), G); part g = blockIdx.y is rows
 *            [g * pn, min(N, (g + 1) * pn)) of the channel tile blockIdx.x.
 * ND_PLANES: grid (G, <= 65535); part g = blockIdx.x is planes
 *            [gp * pn, ...) x values [gs * ps, ...) of a plane, with
 *            g = gp * nseg + gs, nseg = ceil(S / ps); channels blockIdx.y,
 *            blockIdx.y + gridDim.y, ... (grid-stride).
 */
template <typename Acc>
ND_DEV void nd_channel_reduce_part(Acc &acc, int kind, nd_i64 N, nd_i64 C, nd_i64 S, nd_i64 sn,
                              nd_i64 sc, nd_i64 pn, nd_i64 ps, nd_i64 G, double *part,
                              double (*sh)[ND_THREADS])
{
    typedef typename Acc::comb Comb;
    const int tid = (int)threadIdx.x;
    const nd_i64 CG = C * G;
    if (kind == ND_ROWS) {
        const int ct = C < 32 ? (int)C : 32;
        const int rt = ND_THREADS / ct;
        const int ty = tid / ct;
        const nd_i64 col = (nd_i64)blockIdx.x * ct + (tid - ty * ct);
        const bool active = ty < rt && col < C;
        const nd_i64 g = blockIdx.y;
        const nd_i64 r0 = g * pn, r1 = nd_min_i64(N, r0 + pn);
        acc.channel(active ? col : 0);
        if (active) {
            const nd_i64 step = rt;
#pragma unroll 4
            for (nd_i64 r = r0 + ty; r < r1; r += step) acc.add(r * sn + col, col, r);
        }
        acc.result(sh, tid);
        nd_block_tree<Comb>(sh, tid, ty, ct, rt);
        if (active && ty == 0)
            for (int k = 0; k < (int)Comb::width; ++k) part[k * CG + col * G + g] = sh[k][tid];
    } else {
        const int st = S < ND_THREADS ? (int)S : ND_THREADS;
        const int npb = ND_THREADS / st;
        const int py = tid / st, sx = tid - py * st;
        const nd_i64 nseg = (S + ps - 1) / ps;
        const nd_i64 g = blockIdx.x, gp = g / nseg, gs = g - gp * nseg;
        const nd_i64 p0 = gp * pn, p1 = nd_min_i64(N, p0 + pn);
        const nd_i64 s0 = gs * ps, s1 = nd_min_i64(S, s0 + ps);
        for (nd_i64 ch = blockIdx.y; ch < C; ch += gridDim.y) {
            acc.channel(ch);
            if (py < npb) {
                for (nd_i64 p = p0 + py; p < p1; p += npb) {
                    const nd_i64 base = p * sn + ch * sc;
#pragma unroll 4
                    for (nd_i64 j = s0 + sx; j < s1; j += st) acc.add(base + j, ch, p);
                }
            }
            acc.result(sh, tid);
            nd_block_tree<Comb>(sh, tid, tid, 1, ND_THREADS);
            if (tid == 0)
                for (int k = 0; k < (int)Comb::width; ++k) part[k * CG + ch * G + g] = sh[k][0];
            __syncthreads();
        }
    }
}

/* Per-thread sums, over one channel, of dout and dout * (x - mean[k]) *
 * invstd[k] with k the element's statistics group (groups > 0): the
 * channel's dbeta and dgamma.  idx, the row or plane index of the channel
 * view, gives the sample: idx / rows (rows = positions per sample of an
 * NHWC operand seen as rows, else 1). */
template <typename T>
struct nd_group_affine_acc {
    typedef typename nd_type<T>::acc A;
    typedef nd_sum2_comb comb;
    const T *dout;
    const T *x;
    const double *mean, *invstd;
    nd_i64 groups, cg, rows;
    A sdy, sdyxm;
    nd_i64 q;
    ND_DEVM void channel(nd_i64 c)
    {
        q = c / cg;
        sdy = sdyxm = (A)0;
    }
    ND_DEVM void add(nd_i64 off, nd_i64, nd_i64 idx)
    {
        const nd_i64 k = (rows == 1 ? idx : idx / rows) * groups + q;
        const A g = nd_type<T>::to_acc(dout[off]);
        A m, r;
        nd_set_acc(&m, mean[k]);
        nd_set_acc(&r, invstd[k]);
        sdy += g;
        sdyxm += g * (nd_type<T>::to_acc(x[off]) - m) * r;
    }
    ND_DEVM void result(double (*sh)[ND_THREADS], int tid) const
    {
        sh[0][tid] = nd_acc_f64(sdy);
        sh[1][tid] = nd_acc_f64(sdyxm);
    }
};

/* The runs of statistics group k (groups > 0): nrun runs of len contiguous
 * values, rstride apart, from base; per_run: run r is channel c0 + r (planes),
 * else position j of a run is channel c0 + j.
 *   ND_PLANES: cg planes of S values;  ND_CLAST: S runs of cg channels;
 *   ND_ROWS:   one run of cg channels.  */
struct nd_group_runs {
    nd_i64 base, nrun, len, rstride, c0;
    bool per_run;
    ND_DEVM nd_group_runs(int kind, nd_i64 k, nd_i64 C, nd_i64 S, nd_i64 sn, nd_i64 sc,
                          nd_i64 ss, nd_i64 groups)
    {
        const nd_i64 cg = C / groups, i = k / groups, q = k - i * groups;
        c0 = q * cg;
        per_run = kind == ND_PLANES;
        if (kind == ND_PLANES) {
            base = i * sn + c0 * sc; nrun = cg; len = S; rstride = sc;
        } else if (kind == ND_CLAST) {
            base = i * sn + c0; nrun = S; len = cg; rstride = ss;
        } else {
            base = i * sn + c0; nrun = 1; len = cg; rstride = 0;
        }
    }
};

/* Run length of every group of the geometry (the same for all groups). */
ND_DEV nd_i64 nd_group_len(int kind, nd_i64 C, nd_i64 S, nd_i64 groups)
{
    return kind == ND_PLANES ? S : C / groups;
}

/*
 * One block's part of a per-group reduction (groups > 0), written to
 * `part`: grid (G, <= 65535); part g = blockIdx.x is runs [gp * pn, ...) x
 * values [gs * ps, ...) of a run, g = gp * nseg + gs, nseg = ceil(len / ps);
 * groups blockIdx.y, blockIdx.y + gridDim.y, ... (grid-stride); st threads
 * along a run, npb runs at a time (as the ND_PLANES channel reduction).
 */
template <typename Acc>
ND_DEV void nd_group_reduce_part(Acc &acc, int kind, nd_i64 N, nd_i64 C, nd_i64 S, nd_i64 sn,
                                 nd_i64 sc, nd_i64 ss, nd_i64 groups, nd_i64 pn, nd_i64 ps,
                                 nd_i64 G, double *part, double (*sh)[ND_THREADS])
{
    typedef typename Acc::comb Comb;
    const int tid = (int)threadIdx.x;
    const nd_i64 ngr = N * groups, KG = ngr * G;
    const nd_i64 L = nd_group_len(kind, C, S, groups);
    const int st = L < ND_THREADS ? (int)(L > 0 ? L : 1) : ND_THREADS;
    const int npb = ND_THREADS / st;
    const int py = tid / st, sx = tid - py * st;
    const nd_i64 nseg = (L + ps - 1) / ps > 0 ? (L + ps - 1) / ps : 1;
    const nd_i64 g = blockIdx.x, gp = g / nseg, gs = g - gp * nseg;
    const nd_i64 s0 = gs * ps, s1 = nd_min_i64(L, s0 + ps);
    for (nd_i64 k = blockIdx.y; k < ngr; k += gridDim.y) {
        const nd_group_runs R(kind, k, C, S, sn, sc, ss, groups);
        const nd_i64 p0 = gp * pn, p1 = nd_min_i64(R.nrun, p0 + pn);
        acc.channel(k);
        if (py < npb) {
            for (nd_i64 r = p0 + py; r < p1; r += npb) {
                const nd_i64 base = R.base + r * R.rstride;
#pragma unroll 4
                for (nd_i64 j = s0 + sx; j < s1; j += st)
                    acc.add(base + j, R.c0 + (R.per_run ? r : j), r);
            }
        }
        acc.result(sh, tid);
        nd_block_tree<Comb>(sh, tid, tid, 1, ND_THREADS);
        if (tid == 0)
            for (int w = 0; w < (int)Comb::width; ++w) part[w * KG + k * G + g] = sh[w][0];
        __syncthreads();
    }
}

/*
 * nd_moments_part: partial (count, mean, M2) of x per statistics group
 * (channel, or sample and channel group) and part:
 *   count = #values, mean = sum x / count, M2 = sum (x - mean)^2
 * over the values of part g (see nd_channel_reduce_part, nd_group_reduce_part;
 * per-thread shifted sums, then a fixed Chan-merge tree).  Layout: x in geometry (kind, N, C, S, sn,
 * sc, ss, groups); part as in the file comment, width 3.
 * IN x, geometry, pn, ps, G; OUT part (3 * C * G doubles).
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_moments_part(const T *__restrict__ x, int kind, nd_i64 N, nd_i64 C, nd_i64 S, nd_i64 sn,
                nd_i64 sc, nd_i64 ss, int groups, nd_i64 pn, nd_i64 ps, nd_i64 G,
                double *__restrict__ part)
{
    __shared__ double sh[3][ND_THREADS];
    nd_stats_acc<T> acc;
    acc.x = x;
    if (groups == 0)
        nd_channel_reduce_part(acc, kind, N, C, S, sn, sc, pn, ps, G, part, sh);
    else
        nd_group_reduce_part(acc, kind, N, C, S, sn, sc, ss, groups, pn, ps, G, part, sh);
}

/*
 * nd_moments_merge: per statistics group c < C, the G partials of
 * nd_moments_part merged in a fixed order (Chan et al., nd_moments.h):
 *   mean[c] = mean, m2[c] = M2, var[c] = M2 / count (biased),
 *   invstd[c] = 1 / sqrt(var[c] + eps)   (the composite's finish).
 * Grid: any (grid-stride over groups), one block per group at a time.
 * IN part, C, G, eps; OUT mean, m2, var, invstd (C doubles each).
 */
__global__ void __launch_bounds__(ND_THREADS)
nd_moments_merge(const double *__restrict__ part, nd_i64 C, nd_i64 G, double eps,
                 double *__restrict__ mean, double *__restrict__ m2, double *__restrict__ var,
                 double *__restrict__ invstd)
{
    __shared__ double sh[3][ND_THREADS];
    const int tid = (int)threadIdx.x;
    const nd_i64 CG = C * G;
    for (nd_i64 ch = blockIdx.x; ch < C; ch += gridDim.x) {
        double n = 0.0, m = 0.0, q = 0.0;
        for (nd_i64 g = tid; g < G; g += ND_THREADS) {
            const nd_i64 u = ch * G + g;
            nd_chan_merge(&n, &m, &q, part[u], part[CG + u], part[2 * CG + u]);
        }
        sh[0][tid] = n;
        sh[1][tid] = m;
        sh[2][tid] = q;
        nd_block_tree<nd_chan_comb>(sh, tid, tid, 1, ND_THREADS);
        if (tid == 0) {
            const double cnt = sh[0][0];
            const double v = cnt > 0.0 ? sh[2][0] / cnt : 0.0;
            mean[ch] = sh[1][0];
            m2[ch] = sh[2][0];
            var[ch] = v;
            invstd[ch] = 1.0 / sqrt(v + eps);
        }
        __syncthreads();
    }
}

/*
 * Elementwise driver: op.channel(c) once per channel a thread meets, then
 * op.apply(offset) for each of the thread's values of that channel.
 * ND_ROWS:   grid (ceil(C / ct), any); rows blockIdx.y * rt + row slot,
 *            grid-stride over rows.
 * ND_PLANES: grid (any); planes u = n * C + c, blockIdx.x * npb + plane
 *            slot, grid-stride over planes; st threads along each plane.
 */
template <typename Op>
ND_DEV void nd_channel_elementwise(Op &op, int kind, nd_i64 N, nd_i64 C, nd_i64 S, nd_i64 sn,
                              nd_i64 sc)
{
    const int tid = (int)threadIdx.x;
    if (kind == ND_ROWS) {
        const int ct = C < 32 ? (int)C : 32;
        const int rt = ND_THREADS / ct;
        const int ty = tid / ct;
        const nd_i64 col = (nd_i64)blockIdx.x * ct + (tid - ty * ct);
        if (ty < rt && col < C) {
            op.channel(col);
            const nd_i64 step = (nd_i64)gridDim.y * rt;
#pragma unroll 4
            for (nd_i64 r = (nd_i64)blockIdx.y * rt + ty; r < N; r += step) op.apply(r * sn + col);
        }
    } else {
        const int st = S < ND_THREADS ? (int)S : ND_THREADS;
        const int npb = ND_THREADS / st;
        const int py = tid / st, sx = tid - py * st;
        if (py < npb) {
            const nd_i64 planes = N * C;
            const nd_i64 step = (nd_i64)gridDim.x * npb;
            for (nd_i64 u = (nd_i64)blockIdx.x * npb + py; u < planes; u += step) {
                const nd_i64 n = u / C, ch = u - n * C;
                const nd_i64 base = n * sn + ch * sc;
                op.channel(ch);
#pragma unroll 4
                for (nd_i64 j = sx; j < S; j += st) op.apply(base + j);
            }
        }
    }
}

/*
 * Group elementwise driver (groups > 0): units u = k * nrun + r (group k,
 * run r; see nd_group_runs), blockIdx.x * npb + slot, grid-stride; st
 * threads along a run; op.unit(k) once per unit, then op.apply(offset, ch)
 * for each of its values (ch: the value's affine channel).
 */
template <typename Op>
ND_DEV void nd_group_elementwise(Op &op, int kind, nd_i64 N, nd_i64 C, nd_i64 S, nd_i64 sn,
                                 nd_i64 sc, nd_i64 ss, nd_i64 groups)
{
    const int tid = (int)threadIdx.x;
    const nd_i64 L = nd_group_len(kind, C, S, groups);
    const int st = L < ND_THREADS ? (int)(L > 0 ? L : 1) : ND_THREADS;
    const int npb = ND_THREADS / st, py = tid / st, sx = tid - py * st;
    if (py >= npb) return;
    const nd_i64 nrun = kind == ND_PLANES ? C / groups : (kind == ND_CLAST ? S : 1);
    const nd_i64 units = N * groups * nrun, step = (nd_i64)gridDim.x * npb;
    for (nd_i64 u = (nd_i64)blockIdx.x * npb + py; u < units; u += step) {
        const nd_i64 k = u / nrun, r = u - k * nrun;
        const nd_group_runs R(kind, k, C, S, sn, sc, ss, groups);
        const nd_i64 base = R.base + r * R.rstride;
        op.unit(k);
        for (nd_i64 j = sx; j < L; j += st) op.apply(base + j, R.c0 + (R.per_run ? r : j));
    }
}

/* Whether the per-channel coefficients c[0..n) can be held in the
 * accumulation type: always for double; for float (float16 data) only where
 * each is finite within float's range -- a constant channel with a tiny eps
 * has invstd ~1e150, which float turns into inf and (x - mean) * inf into NaN,
 * so such a channel is computed in double instead. */
ND_DEV bool nd_acc_holds(const double *, int, double) { return true; }
ND_DEV bool nd_acc_holds(const double *c, int n, float)
{
    bool ok = true;
    for (int k = 0; k < n; ++k) ok = ok && fabs(c[k]) <= 3.0e38;
    return ok;
}

/* out = (x - mean) * scale + shift, in nd_type<T>::acc, or in double where a
 * coefficient does not fit it (nd_acc_holds); rounded once.  Per channel
 * (nd_channel_elementwise: channel(c), apply(off)): mean[c],
 * scale = gamma[c] * invstd[c], shift = beta[c], set once per channel.  Per
 * group k (nd_group_elementwise: unit(k), apply(off, ch)): mean[k],
 * scale = invstd[k] * gamma[ch], shift = beta[ch], set per value. */
template <typename T>
struct nd_normalize_op {
    typedef typename nd_type<T>::acc A;
    const T *x;
    T *out;
    const double *mean, *invstd;
    const T *gamma, *beta;
    A m, a, b;
    double md[3];     /* mean, scale, shift in double; used when !narrow */
    bool narrow;      /* the coefficients fit A */
    double mk, rk;    /* the group's mean and invstd */
    ND_DEVM void set(double mean_, double scale, double shift)
    {
        md[0] = mean_;
        md[1] = scale;
        md[2] = shift;
        narrow = nd_acc_holds(md, 3, A());
        nd_set_acc(&m, md[0]);
        nd_set_acc(&a, md[1]);
        nd_set_acc(&b, md[2]);
    }
    ND_DEVM void channel(nd_i64 c)
    {
        set(mean[c], nd_type<T>::to_f64(gamma[c]) * invstd[c], nd_type<T>::to_f64(beta[c]));
    }
    ND_DEVM void apply(nd_i64 off)
    {
        if (narrow)
            out[off] = nd_type<T>::from_acc((nd_type<T>::to_acc(x[off]) - m) * a + b);
        else
            out[off] = nd_type<T>::from_f64((nd_type<T>::to_f64(x[off]) - md[0]) * md[1] + md[2]);
    }
    ND_DEVM void unit(nd_i64 k)
    {
        mk = mean[k];
        rk = invstd[k];
    }
    ND_DEVM void apply(nd_i64 off, nd_i64 ch)
    {
        set(mk, rk * nd_type<T>::to_f64(gamma[ch]), nd_type<T>::to_f64(beta[ch]));
        apply(off);
    }
};

/*
 * nd_normalize: out = (x - mean[grp]) * (gamma[c] * invstd[grp]) + beta[c],
 * computed in nd_type<T>::acc and rounded once (src_c: nd_normalize); grp
 * the channel c (groups == 0: nd_normalize_op over nd_channel_elementwise)
 * or the sample's channel group (nd_normalize_op over
 * nd_group_elementwise).  Forward in training (batch statistics) and in
 * test mode (running statistics).
 * Layout: x and out share the geometry (kind, N, C, S, sn, sc, ss, groups);
 * mean, invstd one double per group; gamma, beta C values of T, contiguous.
 * IN x, geometry, mean, invstd, gamma, beta; OUT out.
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_normalize(const T *__restrict__ x, T *__restrict__ out, int kind, nd_i64 N, nd_i64 C,
             nd_i64 S, nd_i64 sn, nd_i64 sc, nd_i64 ss, int groups,
             const double *__restrict__ mean, const double *__restrict__ invstd,
             const T *__restrict__ gamma, const T *__restrict__ beta)
{
    nd_normalize_op<T> op = {x, out, mean, invstd, gamma, beta};
    if (groups != 0)
        nd_group_elementwise(op, kind, N, C, S, sn, sc, ss, groups);
    else
        nd_channel_elementwise(op, kind, N, C, S, sn, sc);
}

/*
 * nd_grad_reduce_part: partial sums per statistics group and part:
 *   groups == 0 (per channel):  sum dout  and  sum dout * (x - mean[c])
 *                               (nd_channel_reduce_part);
 *   groups > 0:  sum dout * gamma[ch]  and  sum dout * gamma[ch] * (x - mean[k])
 *                (nd_group_reduce_part).
 * Layout: dout and x share the geometry; gamma C values of T; part width 2.
 * IN dout, x, geometry, pn, ps, G, mean, gamma; OUT part (2 * groups * G).
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_grad_reduce_part(const T *__restrict__ dout, const T *__restrict__ x, int kind, nd_i64 N,
                    nd_i64 C, nd_i64 S, nd_i64 sn, nd_i64 sc, nd_i64 ss, int groups, nd_i64 pn,
                    nd_i64 ps, nd_i64 G, const double *__restrict__ mean,
                    const T *__restrict__ gamma, double *__restrict__ part)
{
    __shared__ double sh[3][ND_THREADS];
    if (groups == 0) {
        nd_bwd_acc<T, false> acc = {dout, x, mean, gamma};
        nd_channel_reduce_part(acc, kind, N, C, S, sn, sc, pn, ps, G, part, sh);
    } else {
        nd_bwd_acc<T, true> acc = {dout, x, mean, gamma};
        nd_group_reduce_part(acc, kind, N, C, S, sn, sc, ss, groups, pn, ps, G, part, sh);
    }
}

/*
 * nd_grad_reduce_affine_part: for groups > 0, partial per-channel sums of
 *   dout  and  dout * (x - mean[k]) * invstd[k]   (k: the element's group)
 * -- dbeta and dgamma -- per channel and part of the channel view of the
 * operand (kind, N, C, S, sn, sc: ND_ROWS or ND_PLANES, as for batchnorm;
 * `rows` positions of a sample per row of an NHWC operand seen as rows, 1
 * otherwise).  IN dout, x, channel geometry, groups, rows, pn, ps, G, mean,
 * invstd (per group); OUT part (2 * C * G).
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_grad_reduce_affine_part(const T *__restrict__ dout, const T *__restrict__ x, int kind,
                           nd_i64 N, nd_i64 C, nd_i64 S, nd_i64 sn, nd_i64 sc, nd_i64 groups,
                           nd_i64 rows, nd_i64 pn, nd_i64 ps, nd_i64 G,
                           const double *__restrict__ mean, const double *__restrict__ invstd,
                           double *__restrict__ part)
{
    __shared__ double sh[3][ND_THREADS];
    nd_group_affine_acc<T> acc;
    acc.dout = dout;
    acc.x = x;
    acc.mean = mean;
    acc.invstd = invstd;
    acc.groups = groups;
    acc.cg = C / groups;
    acc.rows = rows;
    nd_channel_reduce_part(acc, kind, N, C, S, sn, sc, pn, ps, G, part, sh);
}

/*
 * nd_grad_reduce_merge: per index c < C (a channel, or a group), the G
 * partials of nd_grad_reduce_part / nd_grad_reduce_affine_part summed in a
 * fixed order into s1[c], s2[c] (doubles); then, by mode,
 *   1 (per-channel sums of batchnorm): dbeta[c] = s1[c],
 *     dgamma[c] = s2[c] * invstd[c]  (rounded to T);
 *   2 (nd_grad_reduce_affine_part): dbeta[c] = s1[c], dgamma[c] = s2[c];
 *   0: the sums only (dgamma, dbeta not written).
 * Grid: any (grid-stride).
 * IN part, C, G, invstd, mode; OUT s1, s2 (C doubles), dgamma, dbeta (C of T).
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_grad_reduce_merge(const double *__restrict__ part, nd_i64 C, nd_i64 G,
                     const double *__restrict__ invstd, int mode, double *__restrict__ sum_dy,
                     double *__restrict__ sum_dyxm, T *__restrict__ dgamma,
                     T *__restrict__ dbeta)
{
    __shared__ double sh[3][ND_THREADS];
    const int tid = (int)threadIdx.x;
    const nd_i64 CG = C * G;
    for (nd_i64 ch = blockIdx.x; ch < C; ch += gridDim.x) {
        double a = 0.0, b = 0.0;
        for (nd_i64 g = tid; g < G; g += ND_THREADS) {
            a += part[ch * G + g];
            b += part[CG + ch * G + g];
        }
        sh[0][tid] = a;
        sh[1][tid] = b;
        nd_block_tree<nd_sum2_comb>(sh, tid, tid, 1, ND_THREADS);
        if (tid == 0) {
            sum_dy[ch] = sh[0][0];
            sum_dyxm[ch] = sh[1][0];
            if (mode != 0) {
                dbeta[ch] = nd_type<T>::from_f64(sh[0][0]);
                dgamma[ch] = nd_type<T>::from_f64(mode == 1 ? sh[1][0] * invstd[ch] : sh[1][0]);
            }
        }
        __syncthreads();
    }
}

/* dx = a * dout + b * (x - mean) + e (test mode: a * dout, x not read), in
 * nd_type<T>::acc, or in double where a coefficient does not fit it
 * (nd_acc_holds); rounded once.
 * Per channel c (channel(c), apply(off)): a = gamma[c] invstd[c],
 * b = -a invstd[c] dgamma / M (sum first where that is not finite, as
 * src_c's ch_coef), e = -a s1[c] / M, dgamma = s2[c] invstd[c]; set once per
 * channel.
 * Per group k (unit(k), apply(off, ch); groups are always training):
 * r = invstd[k], a = r gamma[ch], b = -r^3 s2[k] / M, e = -r s1[k] / M
 * (src_c: gr_coef, with its recomputation of a b that is not finite, sum
 * first: a constant group with a tiny eps has r^3 = inf and s2 = 0), r
 * itself required to fit as well; set per value. */
template <typename T>
struct nd_dx_op {
    typedef typename nd_type<T>::acc A;
    const T *dout, *x;
    T *dx;
    const double *mean, *invstd, *s1, *s2;
    const T *gamma;
    double M;
    int train;
    A m, a, b, e;
    double cd[5];     /* m, a, b, e (and the group's r) in double; used when !narrow */
    bool narrow;      /* the coefficients fit A (nd_acc_holds) */
    double gk[4];     /* the group's mean, r, b, e */
    ND_DEVM void set(int n)
    {
        narrow = nd_acc_holds(cd, n, A());
        nd_set_acc(&m, cd[0]);
        nd_set_acc(&a, cd[1]);
        nd_set_acc(&b, cd[2]);
        nd_set_acc(&e, cd[3]);
    }
    ND_DEVM void channel(nd_i64 c)
    {
        const double iv = invstd[c];
        const double ad = nd_type<T>::to_f64(gamma[c]) * iv;
        cd[0] = cd[2] = cd[3] = 0.0;
        cd[1] = ad;
        if (train) {
            const double dg = s2[c] * iv;
            cd[0] = mean[c];
            cd[2] = -ad * iv * dg / M;
            if (cd[2] - cd[2] != 0.0) cd[2] = -ad * (iv * (dg / M));  /* (ch_coef) */
            cd[3] = -ad * s1[c] / M;
        }
        set(4);
    }
    ND_DEVM void apply(nd_i64 off)
    {
        if (!narrow) {
            const double g = nd_type<T>::to_f64(dout[off]);
            dx[off] = nd_type<T>::from_f64(
                train ? cd[1] * g + cd[2] * (nd_type<T>::to_f64(x[off]) - cd[0]) + cd[3]
                      : cd[1] * g);
            return;
        }
        const A g = nd_type<T>::to_acc(dout[off]);
        if (train)
            dx[off] = nd_type<T>::from_acc(a * g + b * (nd_type<T>::to_acc(x[off]) - m) + e);
        else
            dx[off] = nd_type<T>::from_acc(a * g);
    }
    ND_DEVM void unit(nd_i64 k)
    {
        const double r = invstd[k];
        gk[0] = mean[k];
        gk[1] = train && M == 1.0 ? 0.0 : r;   /* one value: dx = 0 (src_c: gr_coef) */
        gk[2] = gk[3] = 0.0;
        if (train && M > 1.0) {   /* one value: b = e = 0 too */
            gk[2] = -(r * r * r) * s2[k] / M;
            if (gk[2] - gk[2] != 0.0) gk[2] = -(r * (r * (r * (s2[k] / M))));  /* (gr_coef) */
            gk[3] = -r * s1[k] / M;
        }
    }
    ND_DEVM void apply(nd_i64 off, nd_i64 ch)
    {
        cd[0] = gk[0];
        cd[1] = gk[1] * nd_type<T>::to_f64(gamma[ch]);
        cd[2] = gk[2];
        cd[3] = gk[3];
        cd[4] = gk[1];
        set(5);
        apply(off);
    }
};

/*
 * nd_grad_input, per channel (groups == 0): with a = gamma[c] * invstd[c]
 * and M values per channel,
 *   training:  dx = a * dout + b * (x - mean[c]) + e,
 *              b = -a * invstd[c] * dgamma / M (again sum first where that
 *              is not finite, as src_c's ch_coef),  e = -a * s1[c] / M,
 *              dgamma = s2[c] * invstd[c];
 *   test mode: dx = a * dout  (x is not read);
 * computed in nd_type<T>::acc, rounded once (src_c: nd_grad_input).  This is
 * gamma * invstd / M * (M * dout - dbeta - x_hat * dgamma).  Per group
 * (groups > 0): nd_dx_op's group path, from the group sums s1, s2 (which
 * carry gamma).
 * Layout: dout, x, dx share the geometry; per-channel arrays contiguous.
 * IN dout, x, geometry, mean, invstd, gamma, s1, s2 (from nd_grad_reduce_merge),
 * M, train; OUT dx.
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_grad_input(const T *__restrict__ dout, const T *__restrict__ x, T *__restrict__ dx, int kind,
              nd_i64 N, nd_i64 C, nd_i64 S, nd_i64 sn, nd_i64 sc, nd_i64 ss, int groups,
              const double *__restrict__ mean, const double *__restrict__ invstd,
              const T *__restrict__ gamma, const double *__restrict__ sum_dy,
              const double *__restrict__ sum_dyxm, double M, int train)
{
    nd_dx_op<T> op = {dout, x, dx, mean, invstd, sum_dy, sum_dyxm, gamma, M, train};
    if (groups != 0)
        nd_group_elementwise(op, kind, N, C, S, sn, sc, ss, groups);
    else
        nd_channel_elementwise(op, kind, N, C, S, sn, sc);
}

/*
 * nd_running_update: out[c] = (1 - momentum) * batch[c] + momentum * old[c]
 * in double, rounded once to T (has_old == 0: old counts as zeros and is not
 * read; src_c: nd_running_update).  Grid: any (grid-stride).
 * IN old (C doubles), has_old, batch (C doubles), momentum, C; OUT out (C of T).
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_running_update(const double *__restrict__ old, int has_old,
                  const double *__restrict__ batch, double momentum, T *__restrict__ out,
                  nd_i64 C)
{
    const double om = 1.0 - momentum;
    const nd_i64 stride = (nd_i64)gridDim.x * ND_THREADS;
    for (nd_i64 c = (nd_i64)blockIdx.x * ND_THREADS + threadIdx.x; c < C; c += stride) {
        double v = nd_dmul(batch[c], om);
        if (has_old) v = v + nd_dmul(old[c], momentum);
        out[c] = nd_type<T>::from_f64(v);
    }
}
