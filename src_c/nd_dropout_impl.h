/* nd_dropout_impl.h -- dropout forward/backward for one data type (T, SUF). */

#define FN(name) ND_CAT(name, SUF)

/* Forward over whole groups [g0, g1): out and packed bits. */
ND_CLONES
static void FN(nd_dropout_fwd_range)(const T *x, T *out, uint8_t *bits, int64_t g0, int64_t g1,
                                     uint32_t k0, uint32_t k1, uint64_t thr, T scale)
{
    uint8_t keep[ND_GROUP];
    for (int64_t gi = g0; gi < g1; ++gi) {
        nd_group_keep((uint64_t)gi, k0, k1, thr, keep);
        const T *xp = x + gi * ND_GROUP;
        T *op = out + gi * ND_GROUP;
        for (int k = 0; k < ND_GROUP; ++k) op[k] = keep[k] ? xp[k] * scale : (T)0;
        for (int k = 0; k < 8; ++k) bits[gi * 8 + k] = nd_pack8(keep + 8 * k);
    }
}

void FN(nd_dropout_fwd)(const T *x, T *out, uint8_t *bits, int64_t n, uint64_t seed,
                        uint64_t threshold, T scale)
{
    const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    const int64_t ng = n / ND_GROUP, ntask = nd_cdiv(ng, ND_GROUPS_PER_TASK);
    ND_OMP_FOR(n >= ND_PARALLEL_MIN)
    for (int64_t t = 0; t < ntask; ++t)
        FN(nd_dropout_fwd_range)(x, out, bits, t * ND_GROUPS_PER_TASK,
                                 nd_min64((t + 1) * ND_GROUPS_PER_TASK, ng), k0, k1,
                                 threshold, scale);
    const int64_t i0 = ng * ND_GROUP;
    if (i0 < n) {
        uint8_t keep[ND_GROUP] = {0};
        nd_tail_keep(i0, n, k0, k1, threshold, keep);
        for (int64_t i = i0; i < n; ++i) out[i] = keep[i - i0] ? x[i] * scale : (T)0;
        for (int64_t k = 0; 8 * k < n - i0; ++k) bits[i0 / 8 + k] = nd_pack8(keep + 8 * k);
    }
}

/* Backward: dx[i] = bit(i) ? dout[i] * scale : 0. */
void FN(nd_dropout_bwd)(const T *dout, const uint8_t *bits, T *dx, int64_t n, T scale)
{
    const int64_t nb = n / 8;
    ND_OMP_FOR(n >= ND_PARALLEL_MIN)
    for (int64_t k = 0; k < nb; ++k) {
        const uint8_t byte = bits[k];
        for (int e = 0; e < 8; ++e)
            dx[8 * k + e] = ((byte >> e) & 1) ? dout[8 * k + e] * scale : (T)0;
    }
    for (int64_t i = nb * 8; i < n; ++i)
        dx[i] = ((bits[i >> 3] >> (i & 7)) & 1) ? dout[i] * scale : (T)0;
}

#undef FN
