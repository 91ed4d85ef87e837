/* nd_dropout_impl.h -- dropout forward/backward for one data type (T, SUF).
 * The per-variant loops are in nd_dropout_isa.h; this file cuts the work into
 * tasks and finishes the partial last group. */

#define FN(name) ND_CAT(name, SUF)

typedef void (*FN(nd_fwd_fn))(const T *x, T *out, uint8_t *bits, int64_t g0, int64_t g1,
                              const nd_keep_rule *r, T scale);
typedef void (*FN(nd_bwd_fn))(const T *dout, const uint8_t *bits, T *dx, int64_t g0,
                              int64_t g1, T scale);

/* nd_dropout_fwd: out[i] = keep(i) ? x[i] * scale : 0, scale = 1/p rounded to
 * T; the packed keep bits; value i with the word of generator index
 * offset + i.  With offset 0, one fused pass; else the bits first
 * (nd_offset_bits), then the same multiply as the backward applies.
 * IN x, n, seed, offset, p; OUT out, bits. */
void FN(nd_dropout_bwd)(const T *dout, const uint8_t *bits, T *dx, int64_t n, double p);

void FN(nd_dropout_fwd)(const T *x, T *out, uint8_t *bits, int64_t n, uint64_t seed,
                        uint64_t offset, double p)
{
    const nd_keep_rule r = nd_rule(seed, nd_dropout_threshold(p));
    if (offset != 0) {
        nd_offset_bits(bits, 0, n, offset, &r);
        FN(nd_dropout_bwd)(x, bits, out, n, p);
        return;
    }
    const T scale = (T)(1.0 / p);
    const int64_t ng = n / ND_GROUP, ntask = nd_cdiv(ng, ND_GROUPS_PER_TASK);
    const int lvl = nd_isa_level();
    (void)lvl;
    const FN(nd_fwd_fn) fn = nd_dropout_stream(out, n * (int64_t)sizeof(T))
                                 ? ND_PICK(FN(nd_fwd_range_nt)) : ND_PICK(FN(nd_fwd_range));
    ND_OMP_FOR(n >= ND_PARALLEL_MIN)
    for (int64_t t = 0; t < ntask; ++t)
        fn(x, out, bits, t * ND_GROUPS_PER_TASK, nd_min64((t + 1) * ND_GROUPS_PER_TASK, ng),
           &r, scale);
    const int64_t i0 = ng * ND_GROUP;
    if (i0 < n) {
        const uint64_t m = nd_tail_bits(i0, n, &r);
        for (int64_t i = i0; i < n; ++i) out[i] = ((m >> (i - i0)) & 1) ? x[i] * scale : (T)0;
        for (int64_t k = 0; 8 * k < n - i0; ++k) bits[i0 / 8 + k] = (uint8_t)(m >> (8 * k));
    }
}

/* nd_dropout_bwd: dx[i] = bit(i) ? dout[i] * scale : 0, scale = 1/p rounded
 * to T.  IN dout, bits, n, p; OUT dx. */
void FN(nd_dropout_bwd)(const T *dout, const uint8_t *bits, T *dx, int64_t n, double p)
{
    const T scale = (T)(1.0 / p);
    const int64_t ng = n / ND_GROUP, ntask = nd_cdiv(ng, ND_GROUPS_PER_TASK);
    const int lvl = nd_isa_level();
    (void)lvl;
    const FN(nd_bwd_fn) fn = nd_dropout_stream(dx, n * (int64_t)sizeof(T))
                                 ? ND_PICK(FN(nd_bwd_range_nt)) : ND_PICK(FN(nd_bwd_range));
    ND_OMP_FOR(n >= ND_PARALLEL_MIN)
    for (int64_t t = 0; t < ntask; ++t)
        fn(dout, bits, dx, t * ND_GROUPS_PER_TASK, nd_min64((t + 1) * ND_GROUPS_PER_TASK, ng),
           scale);
    for (int64_t i = ng * ND_GROUP; i < n; ++i)
        dx[i] = ((bits[i >> 3] >> (i & 7)) & 1) ? dout[i] * scale : (T)0;
}

#undef FN
