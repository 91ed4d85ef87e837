/* nd_dropout_isa.h -- the dropout loops for one instruction-set variant.
 * Included by nd_dropout.c with ND_ISA (the suffix), ND_ISA_ATTR (a target
 * attribute or nothing) and one of ND_ISA_GENERIC / ND_ISA_AVX2 / ND_ISA_AVX512.
 *
 * nd_group_bits_<isa>(g, rule) is the only place the variants differ in what
 * they compute (the Philox words of the 16 blocks of group g and their keep
 * bits); the loops around it apply the bits with one multiply per kept value,
 * written with the variant's vectors. */

#define ISA(name) ND_CAT(name, ND_ISA)

#if defined(ND_ISA_GENERIC)
/* Keep bits of group g: bit 4j + w is word w of block 16 g + j. */
static inline uint64_t ISA(nd_group_bits)(uint64_t g, const nd_keep_rule *r)
{
    if (r->all) return ~(uint64_t)0;
    nd_u32 c0[ND_GROUP_BLOCKS], c1[ND_GROUP_BLOCKS], c2[ND_GROUP_BLOCKS], c3[ND_GROUP_BLOCKS];
    const nd_u64 b0 = g * ND_GROUP_BLOCKS;
    for (int j = 0; j < ND_GROUP_BLOCKS; ++j) {
        nd_u64 b = b0 + (nd_u64)j;
        c0[j] = (nd_u32)b; c1[j] = (nd_u32)(b >> 32); c2[j] = 0u; c3[j] = 0u;
    }
    for (int rr = 0; rr < ND_PHILOX_ROUNDS; ++rr) {
        const nd_u32 rk0 = nd_philox_key0(r->k0, rr), rk1 = nd_philox_key1(r->k1, rr);
        for (int j = 0; j < ND_GROUP_BLOCKS; ++j)
            nd_philox_round(&c0[j], &c1[j], &c2[j], &c3[j], rk0, rk1);
    }
    uint64_t m = 0;
    for (int j = 0; j < ND_GROUP_BLOCKS; ++j) {
        m |= (uint64_t)(c0[j] < r->t) << (4 * j);
        m |= (uint64_t)(c1[j] < r->t) << (4 * j + 1);
        m |= (uint64_t)(c2[j] < r->t) << (4 * j + 2);
        m |= (uint64_t)(c3[j] < r->t) << (4 * j + 3);
    }
    return m;
}

#define ND_APPLY_BODY(T)                                                    \
    for (int k = 0; k < ND_GROUP; ++k) out[k] = ((m >> k) & 1) ? x[k] * s : (T)0;

static inline void ISA(nd_apply_f32)(const float *x, float *out, uint64_t m, float s)
{
    ND_APPLY_BODY(float)
}
static inline void ISA(nd_apply_f64)(const double *x, double *out, uint64_t m, double s)
{
    ND_APPLY_BODY(double)
}
#undef ND_APPLY_BODY
/* no streaming stores in portable C */
#define nd_apply_nt_f32_generic nd_apply_f32_generic
#define nd_apply_nt_f64_generic nd_apply_f64_generic

static inline void ISA(nd_mask_bytes)(uint8_t *mask, uint64_t m)
{
    for (int k = 0; k < ND_GROUP; ++k) mask[k] = (uint8_t)((m >> k) & 1);
}

#elif defined(ND_ISA_AVX2)
/* 8 counters per vector; (hi, lo) of the 32x32 products from two vpmuludq. */
ND_ISA_ATTR static inline void ISA(nd_mulhilo)(__m256i a, __m256i mul, __m256i *hi, __m256i *lo)
{
    const __m256i ev = _mm256_mul_epu32(a, mul);
    const __m256i od = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), mul);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(ev, 32), od, 0xAA);
    *lo = _mm256_blend_epi32(ev, _mm256_slli_epi64(od, 32), 0xAA);
}

/* Bits 0..7 of b spread to bits 0, 4, ..., 28. */
static const uint32_t nd_spread4[16] = {
    0x0000, 0x0001, 0x0010, 0x0011, 0x0100, 0x0101, 0x0110, 0x0111,
    0x1000, 0x1001, 0x1010, 0x1011, 0x1100, 0x1101, 0x1110, 0x1111};
static inline uint32_t nd_spread8(uint32_t b)
{
    return nd_spread4[b & 15] | (nd_spread4[b >> 4] << 16);
}

ND_ISA_ATTR static inline uint32_t ISA(nd_half_bits)(__m256i c0, __m256i c1, const nd_keep_rule *r)
{
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    const __m256i m0 = _mm256_set1_epi32((int)ND_PHILOX_M0), m1 = _mm256_set1_epi32((int)ND_PHILOX_M1);
    for (int rr = 0; rr < ND_PHILOX_ROUNDS; ++rr) {
        const __m256i k0 = _mm256_set1_epi32((int)r->rk0[rr]);
        const __m256i k1 = _mm256_set1_epi32((int)r->rk1[rr]);
        __m256i hi0, lo0, hi1, lo1;
        ISA(nd_mulhilo)(c0, m0, &hi0, &lo0);
        ISA(nd_mulhilo)(c2, m1, &hi1, &lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), k0);
        c1 = lo1;
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), k1);
        c3 = lo0;
    }
    /* r < t unsigned  <=>  (t ^ 2^31) > (r ^ 2^31) signed */
    const __m256i sg = _mm256_set1_epi32((int)0x80000000u);
    const __m256i t = _mm256_set1_epi32((int)(r->t ^ 0x80000000u));
#define ND_K(c) ((uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps( \
        _mm256_cmpgt_epi32(t, _mm256_xor_si256((c), sg)))))
    const uint32_t q0 = ND_K(c0), q1 = ND_K(c1), q2 = ND_K(c2), q3 = ND_K(c3);
#undef ND_K
    return nd_spread8(q0) | (nd_spread8(q1) << 1) | (nd_spread8(q2) << 2) | (nd_spread8(q3) << 3);
}

ND_ISA_ATTR static inline uint64_t ISA(nd_group_bits)(uint64_t g, const nd_keep_rule *r)
{
    if (r->all) return ~(uint64_t)0;
    const uint64_t b0 = g * ND_GROUP_BLOCKS;   /* multiple of 16: no carry into the high word */
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i lo = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)b0), iota);
    const __m256i hi = _mm256_set1_epi32((int)(uint32_t)(b0 >> 32));
    const uint32_t a = ISA(nd_half_bits)(lo, hi, r);
    const uint32_t b = ISA(nd_half_bits)(_mm256_add_epi32(lo, _mm256_set1_epi32(8)), hi, r);
    return (uint64_t)a | ((uint64_t)b << 32);
}

/* ST is the store: _mm256_storeu_* or, for 32-byte aligned out, _mm256_stream_*. */
#define ND_AVX2_APPLY(NAME, STPS, STPD)                                                      \
    ND_ISA_ATTR static inline void ISA(ND_CAT(NAME, f32))(const float *x, float *out,       \
                                                         uint64_t m, float s)               \
    {                                                                                        \
        const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);                  \
        const __m256 sv = _mm256_set1_ps(s);                                                 \
        for (int q = 0; q < 8; ++q) {                                                        \
            const __m256i b =                                                                \
                _mm256_and_si256(_mm256_set1_epi32((int)((m >> (8 * q)) & 0xff)), sel);      \
            const __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, sel));             \
            const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * q), sv);                  \
            STPS(out + 8 * q, _mm256_and_ps(v, keep));                                       \
        }                                                                                    \
    }                                                                                        \
    ND_ISA_ATTR static inline void ISA(ND_CAT(NAME, f64))(const double *x, double *out,     \
                                                         uint64_t m, double s)              \
    {                                                                                        \
        const __m256i sel = _mm256_setr_epi64x(1, 2, 4, 8);                                  \
        const __m256d sv = _mm256_set1_pd(s);                                                \
        for (int q = 0; q < 16; ++q) {                                                       \
            const __m256i b = _mm256_and_si256(                                              \
                _mm256_set1_epi64x((long long)((m >> (4 * q)) & 0xf)), sel);                 \
            const __m256d keep = _mm256_castsi256_pd(_mm256_cmpeq_epi64(b, sel));            \
            const __m256d v = _mm256_mul_pd(_mm256_loadu_pd(x + 4 * q), sv);                 \
            STPD(out + 4 * q, _mm256_and_pd(v, keep));                                       \
        }                                                                                    \
    }
ND_AVX2_APPLY(nd_apply, _mm256_storeu_ps, _mm256_storeu_pd)
ND_AVX2_APPLY(nd_apply_nt, _mm256_stream_ps, _mm256_stream_pd)
#undef ND_AVX2_APPLY

ND_ISA_ATTR static inline void ISA(nd_mask_bytes)(uint8_t *mask, uint64_t m)
{
    for (int k = 0; k < ND_GROUP; ++k) mask[k] = (uint8_t)((m >> k) & 1);
}

#elif defined(ND_ISA_AVX512)
/* 16 counters per vector.  (hi, lo) of the 32x32 products: vpmuludq of the
 * even and of the odd lanes, recombined with two masked dword shuffles. */
ND_ISA_ATTR static inline void ISA(nd_mulhilo)(__m512i a, __m512i mul, __m512i *hi, __m512i *lo)
{
    const __m512i ev = _mm512_mul_epu32(a, mul);
    const __m512i od = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), mul);
    *hi = _mm512_mask_shuffle_epi32(od, (__mmask16)0x5555, ev, _MM_PERM_CDAB);
    *lo = _mm512_mask_shuffle_epi32(ev, (__mmask16)0xAAAA, od, _MM_PERM_CDAB);
}

ND_ISA_ATTR static inline uint64_t ISA(nd_group_bits)(uint64_t g, const nd_keep_rule *r)
{
    if (r->all) return ~(uint64_t)0;
    const uint64_t b0 = g * ND_GROUP_BLOCKS;   /* multiple of 16: no carry into the high word */
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i m0 = _mm512_set1_epi32((int)ND_PHILOX_M0), m1 = _mm512_set1_epi32((int)ND_PHILOX_M1);
    /* Rounds 1 and 2 where lanes agree.  Round 1 starts from (lo + lane, hi,
     * 0, 0): its second product is 0, so c0 = hi ^ k0 and c1 = 0 are the same
     * in every lane; round 2 multiplies that c0 once, as a scalar. */
    __m512i c0, c1, c2, c3;
    {
        __m512i h0, l0;
        ISA(nd_mulhilo)(_mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)b0), iota), m0, &h0, &l0);
        const uint32_t u0 = (uint32_t)(b0 >> 32) ^ r->rk0[0];          /* c0 after round 1 */
        const __m512i c2r1 = _mm512_xor_si512(h0, _mm512_set1_epi32((int)r->rk1[0]));
        const uint64_t p = (uint64_t)ND_PHILOX_M0 * u0;                  /* round 2, first product */
        __m512i h1, l1;
        ISA(nd_mulhilo)(c2r1, m1, &h1, &l1);
        c0 = _mm512_xor_si512(h1, _mm512_set1_epi32((int)r->rk0[1]));  /* hi1 ^ 0 ^ k0 */
        c1 = l1;
        c2 = _mm512_xor_si512(l0, _mm512_set1_epi32((int)((uint32_t)(p >> 32) ^ r->rk1[1])));
        c3 = _mm512_set1_epi32((int)(uint32_t)p);
    }
    for (int rr = 2; rr < ND_PHILOX_ROUNDS; ++rr) {
        const __m512i k0 = _mm512_set1_epi32((int)r->rk0[rr]);
        const __m512i k1 = _mm512_set1_epi32((int)r->rk1[rr]);
        __m512i hi0, lo0, hi1, lo1;
        ISA(nd_mulhilo)(c0, m0, &hi0, &lo0);
        ISA(nd_mulhilo)(c2, m1, &hi1, &lo1);
        c0 = _mm512_ternarylogic_epi32(hi1, c1, k0, 0x96);   /* a ^ b ^ c */
        c1 = lo1;
        c2 = _mm512_ternarylogic_epi32(hi0, c3, k1, 0x96);
        c3 = lo0;
    }
    const __m512i t = _mm512_set1_epi32((int)r->t);
    const uint64_t q0 = _mm512_cmplt_epu32_mask(c0, t), q1 = _mm512_cmplt_epu32_mask(c1, t);
    const uint64_t q2 = _mm512_cmplt_epu32_mask(c2, t), q3 = _mm512_cmplt_epu32_mask(c3, t);
    return _pdep_u64(q0, 0x1111111111111111ull) | _pdep_u64(q1, 0x2222222222222222ull) |
           _pdep_u64(q2, 0x4444444444444444ull) | _pdep_u64(q3, 0x8888888888888888ull);
}

/* STPS/STPD: _mm512_storeu_* or, for 64-byte aligned out, _mm512_stream_*. */
#define ND_AVX512_APPLY(NAME, STPS, STPD)                                                    \
    ND_ISA_ATTR static inline void ISA(ND_CAT(NAME, f32))(const float *x, float *out,       \
                                                         uint64_t m, float s)               \
    {                                                                                        \
        const __m512 sv = _mm512_set1_ps(s);                                                 \
        for (int q = 0; q < 4; ++q)                                                          \
            STPS(out + 16 * q, _mm512_maskz_mul_ps((__mmask16)(m >> (16 * q)),               \
                                                   _mm512_loadu_ps(x + 16 * q), sv));        \
    }                                                                                        \
    ND_ISA_ATTR static inline void ISA(ND_CAT(NAME, f64))(const double *x, double *out,     \
                                                         uint64_t m, double s)              \
    {                                                                                        \
        const __m512d sv = _mm512_set1_pd(s);                                                \
        for (int q = 0; q < 8; ++q)                                                          \
            STPD(out + 8 * q, _mm512_maskz_mul_pd((__mmask8)(m >> (8 * q)),                  \
                                                  _mm512_loadu_pd(x + 8 * q), sv));          \
    }
ND_AVX512_APPLY(nd_apply, _mm512_storeu_ps, _mm512_storeu_pd)
ND_AVX512_APPLY(nd_apply_nt, _mm512_stream_ps, _mm512_stream_pd)
#undef ND_AVX512_APPLY

ND_ISA_ATTR static inline void ISA(nd_mask_bytes)(uint8_t *mask, uint64_t m)
{
    _mm512_storeu_si512((void *)mask, _mm512_maskz_mov_epi8((__mmask64)m, _mm512_set1_epi8(1)));
}
#endif

/* ------------------------------------------------ loops over whole groups */

/* Packed bits and/or 0/1 bytes of groups [g0, g1). */
ND_ISA_ATTR static void ISA(nd_bits_range)(uint8_t *bits, uint8_t *mask, int64_t g0, int64_t g1,
                                           const nd_keep_rule *r)
{
    for (int64_t g = g0; g < g1; ++g) {
        const uint64_t m = ISA(nd_group_bits)((uint64_t)g, r);
        if (bits) nd_store_bits64(bits + 8 * g, m);
        if (mask) ISA(nd_mask_bytes)(mask + ND_GROUP * g, m);
    }
}

/* Forward and backward over groups [g0, g1); APPLY is nd_apply (stores
 * through the caches) or nd_apply_nt (streaming stores, out 64-byte aligned;
 * fenced at the end of the range). */
#define ND_FWD_RANGE(T, SUF, APPLY, NAME)                                                    \
    ND_ISA_ATTR static void ISA(ND_CAT(ND_CAT(nd_fwd, NAME), SUF))(                          \
        const T *x, T *out, uint8_t *bits, int64_t g0, int64_t g1, const nd_keep_rule *r,    \
        T scale)                                                                             \
    {                                                                                        \
        for (int64_t g = g0; g < g1; ++g) {                                                  \
            /* x well ahead of use: the loads overlap the Philox arithmetic */               \
            ND_PREFETCH(x + ND_GROUP * (g + 64), ND_GROUP * sizeof(T));                      \
            const uint64_t m = ISA(nd_group_bits)((uint64_t)g, r);                           \
            ISA(ND_CAT(APPLY, SUF))(x + ND_GROUP * g, out + ND_GROUP * g, m, scale);         \
            nd_store_bits64(bits + 8 * g, m);                                                \
        }                                                                                    \
        nd_stream_fence();                                                                   \
    }                                                                                        \
    ND_ISA_ATTR static void ISA(ND_CAT(ND_CAT(nd_bwd, NAME), SUF))(                          \
        const T *dout, const uint8_t *bits, T *dx, int64_t g0, int64_t g1, T scale)          \
    {                                                                                        \
        for (int64_t g = g0; g < g1; ++g)                                                    \
            ISA(ND_CAT(APPLY, SUF))(dout + ND_GROUP * g, dx + ND_GROUP * g,                  \
                                    nd_load_bits64(bits + 8 * g), scale);                    \
        nd_stream_fence();                                                                   \
    }

ND_FWD_RANGE(float, f32, nd_apply, range)
ND_FWD_RANGE(double, f64, nd_apply, range)
ND_FWD_RANGE(float, f32, nd_apply_nt, range_nt)
ND_FWD_RANGE(double, f64, nd_apply_nt, range_nt)
#undef ND_FWD_RANGE
#undef ISA
