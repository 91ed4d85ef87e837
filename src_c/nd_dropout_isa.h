/* nd_dropout_isa.h -- the dropout loops for one instruction-set variant.
 * Included by nd_dropout.c with ND_ISA (the suffix), ND_ISA_ATTR (a target
 * attribute or nothing) and one of ND_ISA_GENERIC / ND_ISA_AVX2 / ND_ISA_AVX512.
 *
 * nd_group_bits_<isa>(g, rule) is the only place the variants differ in what
 * they compute (the Philox words of the 16 blocks of group g and their keep
 * bits); the loops around it apply the bits with one multiply per kept value,
 * written with the variant's vectors. */

#define ISA(name) ND_CAT(name, ND_ISA)

#if defined(ND_ISA_AVX2) || defined(ND_ISA_AVX512)
/* The bits of m applied (backward, and forward when every value is kept),
 * 256-bit AVX2: each bit's lane selected by a compare.  ST is the store:
 * _mm256_storeu_* or, for 32-byte aligned out, _mm256_stream_*.  (The
 * AVX-512 variant's backward uses these too, see there.) */
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
#endif

#if defined(ND_ISA_GENERIC)
/* Portable C, shaped for the auto-vectorizer: the 16 blocks of a group in
 * arrays, one loop over them per round (SSE2 pmuludq on x86-64, NEON umull
 * on AArch64; kept from full unrolling, which would leave only straight-line
 * code to the far weaker basic-block vectorizer), rounds 1-2 where the lanes
 * agree as in the vector variants, and no data-dependent branch anywhere. */
#if defined(__clang__)
#define ND_LOOP_KEEP _Pragma("clang loop unroll(disable)")
#elif defined(__GNUC__)
#define ND_LOOP_KEEP _Pragma("GCC unroll 1")
#else
#define ND_LOOP_KEEP
#endif

/* Keep bits of group g: bit 4j + w is word w of block 16 g + j. */
static inline uint64_t ISA(nd_group_bits)(uint64_t g, const nd_keep_rule *r)
{
    if (r->all) return ~(uint64_t)0;
    nd_u32 c0[ND_GROUP_BLOCKS], c1[ND_GROUP_BLOCKS], c2[ND_GROUP_BLOCKS], c3[ND_GROUP_BLOCKS];
    const nd_u64 b0 = g * ND_GROUP_BLOCKS;   /* multiple of 16: no carry into the high word */
    /* Round 1 from (lo + j, hi, 0, 0): the second product is 0, so c0 = u0 =
     * hi ^ k0 in every block and c1 = 0; round 2's first product p = M0 u0. */
    const nd_u32 u0 = (nd_u32)(b0 >> 32) ^ r->rk0[0];
    const nd_u64 p = (nd_u64)ND_PHILOX_M0 * u0;
    const nd_u32 c2r2 = (nd_u32)(p >> 32) ^ r->rk1[1], c3r2 = (nd_u32)p;
    for (int j = 0; j < ND_GROUP_BLOCKS; ++j) {
        const nd_u64 p0 = (nd_u64)ND_PHILOX_M0 * ((nd_u32)b0 + (nd_u32)j);
        const nd_u64 p1 = (nd_u64)ND_PHILOX_M1 * ((nd_u32)(p0 >> 32) ^ r->rk1[0]);
        c0[j] = (nd_u32)(p1 >> 32) ^ r->rk0[1];
        c1[j] = (nd_u32)p1;
        c2[j] = (nd_u32)p0 ^ c2r2;
        c3[j] = c3r2;
    }
    for (int rr = 2; rr < ND_PHILOX_ROUNDS; ++rr) {
        const nd_u32 k0 = r->rk0[rr], k1 = r->rk1[rr];
        ND_LOOP_KEEP
        for (int j = 0; j < ND_GROUP_BLOCKS; ++j) {
            const nd_u64 p0 = (nd_u64)ND_PHILOX_M0 * c0[j], p1 = (nd_u64)ND_PHILOX_M1 * c2[j];
            const nd_u32 n0 = (nd_u32)(p1 >> 32) ^ c1[j] ^ k0, n2 = (nd_u32)(p0 >> 32) ^ c3[j] ^ k1;
            c0[j] = n0;
            c1[j] = (nd_u32)p1;
            c2[j] = n2;
            c3[j] = (nd_u32)p0;
        }
    }
    uint64_t m = 0;
    for (int j = 0; j < ND_GROUP_BLOCKS; ++j) {
        const uint64_t q = (uint64_t)(c0[j] < r->t) | (uint64_t)(c1[j] < r->t) << 1 |
                           (uint64_t)(c2[j] < r->t) << 2 | (uint64_t)(c3[j] < r->t) << 3;
        m |= q << (4 * j);
    }
    return m;
}

/* out[k] = bit k of m ? x[k] * s : +0, without a branch: the product's bits
 * and-ed with the bit spread to a mask (a select on the bit would become a
 * branch on random data). */
static const uint32_t nd_bit8[8] = {1, 2, 4, 8, 16, 32, 64, 128};
#define ND_APPLY_BODY(T, U)                                                   \
    for (int q = 0; q < 8; ++q) {                                             \
        const uint32_t b = (uint32_t)(m >> (8 * q)) & 0xff;                   \
        for (int i = 0; i < 8; ++i) {                                         \
            const T v = x[8 * q + i] * s;                                     \
            U u;                                                              \
            memcpy(&u, &v, sizeof u);                                         \
            u &= (U)0 - (U)((b & nd_bit8[i]) != 0);                           \
            memcpy(out + 8 * q + i, &u, sizeof u);                            \
        }                                                                     \
    }

static inline void ISA(nd_apply_f32)(const float *x, float *out, uint64_t m, float s)
{
    ND_APPLY_BODY(float, uint32_t)
}
static inline void ISA(nd_apply_f64)(const double *x, double *out, uint64_t m, double s)
{
    ND_APPLY_BODY(double, uint64_t)
}
#undef ND_APPLY_BODY
/* no streaming stores in portable C */
#define nd_apply_nt_f32_generic nd_apply_f32_generic
#define nd_apply_nt_f64_generic nd_apply_f64_generic
#define ND_BWD_nd_apply nd_apply
#define ND_BWD_nd_apply_nt nd_apply_nt

static inline void ISA(nd_mask_bytes)(uint8_t *mask, uint64_t m)
{
    for (int q = 0; q < 8; ++q) {
        const uint32_t b = (uint32_t)(m >> (8 * q)) & 0xff;
        for (int i = 0; i < 8; ++i) mask[8 * q + i] = (uint8_t)((b & nd_bit8[i]) != 0);
    }
}
#undef ND_LOOP_KEEP

#elif defined(ND_ISA_AVX2)
/* One block per dword: a vector holds one Philox word of 8 blocks, half a
 * group.  The 32x32 -> 64 products are vpmuludq of the even dwords and of
 * the odd ones; a shufps per 128-bit lane then takes the high (or low) halves
 * of the even products first, so dword order (0, 1, 2, 3) comes out as
 * (0, 2, 1, 3).  Words c0 and c1 are kept in one order, c2 and c3 in the
 * other: c0's products (making c2, c3) come out in c2's order and c2's
 * (making c0, c1) in c0's, so no round spends an instruction on reordering
 * (5 per 8 products, against 7 with shifts and blends back to one order).
 * The two halves of a group run their rounds interleaved (four independent
 * chains over the multiply latency; more halves at once spill registers and
 * measured slower); the keep masks are then transposed to value order and
 * drive the stores and the packed bits directly. */

#define ND_AVX2_INLINE ND_ISA_ATTR static inline __attribute__((always_inline))

/* Per range: the broadcast constants, read as memory operands. */
typedef struct {
    __m256i k0[ND_PHILOX_ROUNDS], k1[ND_PHILOX_ROUNDS];   /* round keys */
    __m256i m0, m1;          /* multipliers */
    __m256i t, sign;         /* threshold ^ 2^31, 2^31: unsigned compare as signed */
    __m256i c2r2, c2r3;      /* rounds 2 and 3, folded (below), for counter high word hi */
    uint32_t hi;
} ISA(nd_ctx);

/* Rounds 1 and 2 where lanes agree.  Round 1 starts from (lo + j, hi, 0, 0):
 * its second product is 0, so it leaves c0 = hi ^ k0 (the same in every
 * lane), c1 = 0; round 2 multiplies that c0 once, as a scalar p, whose high
 * half enters c2 and whose low half is c3, used only in round 3. */
ND_AVX2_INLINE void ISA(nd_ctx_hi)(ISA(nd_ctx) *K, uint32_t hi, const nd_keep_rule *r)
{
    const uint64_t p = (uint64_t)ND_PHILOX_M0 * (hi ^ r->rk0[0]);
    K->c2r2 = _mm256_set1_epi32((int)((uint32_t)(p >> 32) ^ r->rk1[1]));
    K->c2r3 = _mm256_set1_epi32((int)((uint32_t)p ^ r->rk1[2]));
    K->hi = hi;
}

ND_AVX2_INLINE void ISA(nd_ctx_init)(ISA(nd_ctx) *K, const nd_keep_rule *r)
{
    for (int i = 0; i < ND_PHILOX_ROUNDS; ++i) {
        K->k0[i] = _mm256_set1_epi32((int)r->rk0[i]);
        K->k1[i] = _mm256_set1_epi32((int)r->rk1[i]);
    }
    /* the last round's keys also flip the signs of c0 and c2 (for the compare) */
    K->k0[ND_PHILOX_ROUNDS - 1] = _mm256_set1_epi32((int)(r->rk0[ND_PHILOX_ROUNDS - 1] ^ 0x80000000u));
    K->k1[ND_PHILOX_ROUNDS - 1] = _mm256_set1_epi32((int)(r->rk1[ND_PHILOX_ROUNDS - 1] ^ 0x80000000u));
    K->m0 = _mm256_set1_epi32((int)ND_PHILOX_M0);
    K->m1 = _mm256_set1_epi32((int)ND_PHILOX_M1);
    K->t = _mm256_set1_epi32((int)(r->t ^ 0x80000000u));
    K->sign = _mm256_set1_epi32((int)0x80000000u);
    ISA(nd_ctx_hi)(K, 0, r);
}

#define ND_X(a, b) _mm256_xor_si256((a), (b))
#define ND_PS(a) _mm256_castsi256_ps(a)
#define ND_SI(a) _mm256_castps_si256(a)
/* (hi, lo) of the products of the 8 dwords of X by M, in the other order. */
#define ND_MULHL(X, M, HI, LO)                                                     \
    {                                                                              \
        const __m256 e_ = ND_PS(_mm256_mul_epu32((X), (M)));                       \
        const __m256 o_ = ND_PS(_mm256_mul_epu32(_mm256_srli_epi64((X), 32), (M))); \
        HI = ND_SI(_mm256_shuffle_ps(e_, o_, _MM_SHUFFLE(3, 1, 3, 1)));            \
        LO = ND_SI(_mm256_shuffle_ps(e_, o_, _MM_SHUFFLE(2, 0, 2, 0)));            \
    }
/* Half H of a group (its blocks 8 H .. 8 H + 7): lane 0 of each
 * vector holds blocks 8H + 0, 2, 4, 6, lane 1 blocks 8H + 1, 3, 5, 7; c0 (C0)
 * and c1 (C1) in that order, c2 and c3 with dwords 1 and 2 of each lane
 * swapped. */
#define ND_DECL(H) __m256i C0##H, C1##H, C2##H, C3##H;
#define ND_R1(H)                                                                   \
    {                                                                              \
        __m256i h0, l0;                                                            \
        ND_MULHL(_mm256_add_epi32(base, _mm256_setr_epi32(8 * H + 0, 8 * H + 2, 8 * H + 4, \
                                  8 * H + 6, 8 * H + 1, 8 * H + 3, 8 * H + 5, 8 * H + 7)), \
                 m0, h0, l0);                                                      \
        C2##H = ND_X(h0, K->k1[0]);                                                \
        C3##H = l0;                                                                \
    }
#define ND_R2(H)                                                                   \
    {                                                                              \
        __m256i h1, l1;                                                            \
        ND_MULHL(C2##H, m1, h1, l1);                                               \
        C0##H = ND_X(h1, K->k0[1]);                                                \
        C1##H = l1;                                                                \
        C2##H = ND_X(C3##H, K->c2r2);                                              \
    }
#define ND_R3(H)                                                                   \
    {                                                                              \
        __m256i h0, l0, h1, l1;                                                    \
        ND_MULHL(C0##H, m0, h0, l0);                                               \
        ND_MULHL(C2##H, m1, h1, l1);                                               \
        C0##H = ND_X(h1, ND_X(C1##H, K->k0[2]));                                   \
        C1##H = l1;                                                                \
        C2##H = ND_X(h0, K->c2r3);                                                 \
        C3##H = l0;                                                                \
    }
#define ND_RN(H, RR)                                                               \
    {                                                                              \
        __m256i h0, l0, h1, l1;                                                    \
        ND_MULHL(C0##H, m0, h0, l0);                                               \
        ND_MULHL(C2##H, m1, h1, l1);                                               \
        C0##H = ND_X(h1, ND_X(C1##H, K->k0[RR]));                                  \
        C1##H = l1;                                                                \
        C2##H = ND_X(h0, ND_X(C3##H, K->k1[RR]));                                  \
        C3##H = l0;                                                                \
    }
/* Last round, then the keep masks: w < t  <=>  (w ^ 2^31) < (t ^ 2^31) signed
 * (c0 and c2 flipped through the last keys). */
#define ND_RLAST(H)                                                                \
    {                                                                              \
        __m256i h0, l0, h1, l1;                                                    \
        ND_MULHL(C0##H, m0, h0, l0);                                               \
        ND_MULHL(C2##H, m1, h1, l1);                                               \
        C0##H = _mm256_cmpgt_epi32(K->t, ND_X(h1, ND_X(C1##H, K->k0[ND_PHILOX_ROUNDS - 1]))); \
        C1##H = _mm256_cmpgt_epi32(K->t, ND_X(l1, K->sign));                       \
        C2##H = _mm256_cmpgt_epi32(K->t, ND_X(h0, ND_X(C3##H, K->k1[ND_PHILOX_ROUNDS - 1]))); \
        C3##H = _mm256_cmpgt_epi32(K->t, ND_X(l0, K->sign));                       \
    }
/* The keep masks of half H in value order: mk[4H + i] holds, in lane 0, the
 * four words of block 8H + 2i and, in lane 1, those of block 8H + 2i + 1,
 * i.e. values 8 i .. 8 i + 7 of the half. */
#define ND_TRANSPOSE(H)                                                            \
    {                                                                              \
        /* per lane, the words of the blocks at lane positions ...: */              \
        const __m256i t0 = _mm256_unpacklo_epi32(C0##H, C1##H);  /* c0 c1 of 0, 1 */ \
        const __m256i t1 = _mm256_unpackhi_epi32(C0##H, C1##H);  /* c0 c1 of 2, 3 */ \
        const __m256i t2 = _mm256_unpacklo_epi32(C2##H, C3##H);  /* c2 c3 of 0, 2 */ \
        const __m256i t3 = _mm256_unpackhi_epi32(C2##H, C3##H);  /* c2 c3 of 1, 3 */ \
        mk[4 * H + 0] = ND_PS(_mm256_unpacklo_epi64(t0, t2));                      \
        mk[4 * H + 1] = _mm256_shuffle_ps(ND_PS(t0), ND_PS(t3), _MM_SHUFFLE(1, 0, 3, 2)); \
        mk[4 * H + 2] = _mm256_shuffle_ps(ND_PS(t1), ND_PS(t2), _MM_SHUFFLE(3, 2, 1, 0)); \
        mk[4 * H + 3] = ND_PS(_mm256_unpackhi_epi64(t1, t3));                      \
    }
#define ND_HALVES(M) M(0) M(1)
#define ND_HALVES_RN(RR) ND_RN(0, RR) ND_RN(1, RR)

/* Keep masks of group g: mk[q] is all ones in lane k iff value 64 g + 8 q + k
 * is kept (half H: mk[4H .. 4H + 3]). */
ND_AVX2_INLINE void ISA(nd_group_masks)(uint64_t g, ISA(nd_ctx) *K, const nd_keep_rule *r,
                                        __m256 mk[8])
{
    const uint64_t b0 = g * ND_GROUP_BLOCKS;   /* multiple of 16: no carry into the high word */
    if (__builtin_expect((uint32_t)(b0 >> 32) != K->hi, 0)) ISA(nd_ctx_hi)(K, (uint32_t)(b0 >> 32), r);
    const __m256i base = _mm256_set1_epi32((int)(uint32_t)b0);
    const __m256i m0 = K->m0, m1 = K->m1;
    ND_HALVES(ND_DECL)
    ND_HALVES(ND_R1)
    ND_HALVES(ND_R2)
    ND_HALVES(ND_R3)
    ND_HALVES_RN(3)
    ND_HALVES_RN(4)
    ND_HALVES_RN(5)
    ND_HALVES_RN(6)
    ND_HALVES_RN(7)
    ND_HALVES_RN(8)
    ND_HALVES(ND_RLAST)
    ND_HALVES(ND_TRANSPOSE)
}
#undef ND_DECL
#undef ND_R1
#undef ND_R2
#undef ND_R3
#undef ND_RN
#undef ND_RLAST
#undef ND_TRANSPOSE
#undef ND_HALVES
#undef ND_HALVES_RN
#undef ND_MULHL
#undef ND_X
#undef ND_PS
#undef ND_SI

/* The 64 keep bits of a group from its masks. */
ND_AVX2_INLINE uint64_t ISA(nd_masks_bits)(const __m256 mk[8])
{
    uint64_t m = 0;
    for (int q = 0; q < 8; ++q) m |= (uint64_t)(uint32_t)_mm256_movemask_ps(mk[q]) << (8 * q);
    return m;
}

ND_AVX2_INLINE uint64_t ISA(nd_group_bits_k)(uint64_t g, ISA(nd_ctx) *K, const nd_keep_rule *r)
{
    __m256 mk[8];
    ISA(nd_group_masks)(g, K, r, mk);
    return ISA(nd_masks_bits)(mk);
}

/* Keep bits of group g: bit 4j + w is word w of block 16 g + j. */
ND_ISA_ATTR static inline uint64_t ISA(nd_group_bits)(uint64_t g, const nd_keep_rule *r)
{
    if (r->all) return ~(uint64_t)0;
    ISA(nd_ctx) K;
    ISA(nd_ctx_init)(&K, r);
    return ISA(nd_group_bits_k)(g, &K, r);
}

ND_AVX2_APPLY(nd_apply, _mm256_storeu_ps, _mm256_storeu_pd)
ND_AVX2_APPLY(nd_apply_nt, _mm256_stream_ps, _mm256_stream_pd)
#define ND_BWD_nd_apply nd_apply          /* the backward's apply: the same */
#define ND_BWD_nd_apply_nt nd_apply_nt

/* Forward of group g from its masks (x, out, bits at the group's first
 * value and byte): out = x * s where kept, else +0. */
#define ND_AVX2_FWD(NAME, STPS, STPD)                                                        \
    ND_AVX2_INLINE void ISA(ND_CAT(NAME, f32))(const float *x, float *out, uint8_t *bits,   \
                                               uint64_t g, ISA(nd_ctx) *K,                   \
                                               const nd_keep_rule *r, float s)               \
    {                                                                                        \
        __m256 mk[8];                                                                        \
        ISA(nd_group_masks)(g, K, r, mk);                                                    \
        const __m256 sv = _mm256_set1_ps(s);                                                 \
        for (int q = 0; q < 8; ++q)                                                          \
            STPS(out + 8 * q, _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * q), sv),   \
                                            mk[q]));                                         \
        nd_store_bits64(bits, ISA(nd_masks_bits)(mk));                                       \
    }                                                                                        \
    ND_AVX2_INLINE void ISA(ND_CAT(NAME, f64))(const double *x, double *out, uint8_t *bits, \
                                               uint64_t g, ISA(nd_ctx) *K,                   \
                                               const nd_keep_rule *r, double s)              \
    {                                                                                        \
        __m256 mk[8];                                                                        \
        ISA(nd_group_masks)(g, K, r, mk);                                                    \
        const __m256d sv = _mm256_set1_pd(s);                                                \
        /* each dword of a mask twice: the masks of values 8 q .. 8 q + 3, 8 q + 4 .. 7 */   \
        const __m256i lo_ = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);                       \
        const __m256i hi_ = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);                       \
        for (int q = 0; q < 8; ++q) {                                                        \
            const __m256i w = _mm256_castps_si256(mk[q]);                                    \
            const __m256d lo = _mm256_castsi256_pd(_mm256_permutevar8x32_epi32(w, lo_));     \
            const __m256d hi = _mm256_castsi256_pd(_mm256_permutevar8x32_epi32(w, hi_));     \
            STPD(out + 8 * q, _mm256_and_pd(_mm256_mul_pd(_mm256_loadu_pd(x + 8 * q), sv), lo)); \
            STPD(out + 8 * q + 4,                                                            \
                 _mm256_and_pd(_mm256_mul_pd(_mm256_loadu_pd(x + 8 * q + 4), sv), hi));      \
        }                                                                                    \
        nd_store_bits64(bits, ISA(nd_masks_bits)(mk));                                       \
    }
ND_AVX2_FWD(nd_fwd_group, _mm256_storeu_ps, _mm256_storeu_pd)
ND_AVX2_FWD(nd_fwd_group_nt, _mm256_stream_ps, _mm256_stream_pd)
#undef ND_AVX2_FWD

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
/* The backward applies the stored bits with the AVX2 loops: there, bits
 * loaded from memory and streamed through mask registers (kmov, a zero-masked
 * multiply) took 2-2.5x the time of the compare-selected lanes (4096 x 4096
 * float32 and float64, AMD Zen 5, 2 threads), where the forward, whose bits
 * come out of the Philox vectors, is faster with the masks.  The same values
 * either way (+0 where dropped, x * s where kept). */
ND_AVX2_APPLY(nd_bapply, _mm256_storeu_ps, _mm256_storeu_pd)
ND_AVX2_APPLY(nd_bapply_nt, _mm256_stream_ps, _mm256_stream_pd)
#define ND_BWD_nd_apply nd_bapply
#define ND_BWD_nd_apply_nt nd_bapply_nt

ND_ISA_ATTR static inline void ISA(nd_mask_bytes)(uint8_t *mask, uint64_t m)
{
    _mm512_storeu_si512((void *)mask, _mm512_maskz_mov_epi8((__mmask64)m, _mm512_set1_epi8(1)));
}
#endif

/* ------------------------------------------------ loops over whole groups */

/* What a range of groups shares when not every value is kept:
 * ND_RANGE_SETUP declares it (the AVX2 constants), ND_GROUP_BITS(g) is group
 * g's keep bits. */
#if defined(ND_ISA_AVX2)
#define ND_RANGE_SETUP ISA(nd_ctx) K_; ISA(nd_ctx_init)(&K_, r)
#define ND_GROUP_BITS(g) ISA(nd_group_bits_k)((uint64_t)(g), &K_, r)
#else
#define ND_RANGE_SETUP ((void)0)
#define ND_GROUP_BITS(g) ISA(nd_group_bits)((uint64_t)(g), r)
#endif

/* Packed bits and/or 0/1 bytes of groups [g0, g1). */
ND_ISA_ATTR static void ISA(nd_bits_range)(uint8_t *bits, uint8_t *mask, int64_t g0, int64_t g1,
                                           const nd_keep_rule *r)
{
    if (r->all) {
        for (int64_t g = g0; g < g1; ++g) {
            if (bits) nd_store_bits64(bits + 8 * g, ~(uint64_t)0);
            if (mask) ISA(nd_mask_bytes)(mask + ND_GROUP * g, ~(uint64_t)0);
        }
        return;
    }
    ND_RANGE_SETUP;
    for (int64_t g = g0; g < g1; ++g) {
        const uint64_t m = ND_GROUP_BITS(g);
        if (bits) nd_store_bits64(bits + 8 * g, m);
        if (mask) ISA(nd_mask_bytes)(mask + ND_GROUP * g, m);
    }
}

/* The forward loop over groups [g0, g1) when not every value is kept; x well
 * ahead of use (64 groups) is prefetched, so the loads overlap the Philox
 * arithmetic. */
#if defined(ND_ISA_AVX2)
#define ND_GROUP_FN_nd_apply nd_fwd_group
#define ND_GROUP_FN_nd_apply_nt nd_fwd_group_nt
#define ND_FWD_PHILOX(T, SUF, APPLY)                                                         \
    ISA(nd_ctx) K_;                                                                          \
    ISA(nd_ctx_init)(&K_, r);                                                                \
    for (int64_t g = g0; g < g1; ++g) {                                                      \
        ND_PREFETCH(x + ND_GROUP * (g + 64), ND_GROUP * sizeof(T));                          \
        ISA(ND_CAT(ND_GROUP_FN_##APPLY, SUF))(x + ND_GROUP * g, out + ND_GROUP * g,          \
                                             bits + 8 * g, (uint64_t)g, &K_, r, scale);      \
    }
#else
#define ND_FWD_PHILOX(T, SUF, APPLY)                                                         \
    for (int64_t g = g0; g < g1; ++g) {                                                      \
        ND_PREFETCH(x + ND_GROUP * (g + 64), ND_GROUP * sizeof(T));                          \
        const uint64_t m_ = ISA(nd_group_bits)((uint64_t)g, r);                              \
        ISA(ND_CAT(APPLY, SUF))(x + ND_GROUP * g, out + ND_GROUP * g, m_, scale);            \
        nd_store_bits64(bits + 8 * g, m_);                                                   \
    }
#endif

/* Forward and backward over groups [g0, g1); APPLY is nd_apply (stores
 * through the caches) or nd_apply_nt (streaming stores, out 64-byte aligned;
 * fenced at the end of the range).  The keep-everything case (p = 1) is its
 * own loop, so the Philox loop tests nothing per group. */
#define ND_FWD_RANGE(T, SUF, APPLY, NAME)                                                    \
    ND_ISA_ATTR static void ISA(ND_CAT(ND_CAT(nd_fwd, NAME), SUF))(                          \
        const T *x, T *out, uint8_t *bits, int64_t g0, int64_t g1, const nd_keep_rule *r,    \
        T scale)                                                                             \
    {                                                                                        \
        if (r->all) {                                                                        \
            for (int64_t g = g0; g < g1; ++g) {                                              \
                ISA(ND_CAT(APPLY, SUF))(x + ND_GROUP * g, out + ND_GROUP * g, ~(uint64_t)0,  \
                                        scale);                                              \
                nd_store_bits64(bits + 8 * g, ~(uint64_t)0);                                 \
            }                                                                                \
        } else {                                                                             \
            ND_FWD_PHILOX(T, SUF, APPLY);                                                    \
        }                                                                                    \
        nd_stream_fence();                                                                   \
    }                                                                                        \
    ND_ISA_ATTR static void ISA(ND_CAT(ND_CAT(nd_bwd, NAME), SUF))(                          \
        const T *dout, const uint8_t *bits, T *dx, int64_t g0, int64_t g1, T scale)          \
    {                                                                                        \
        for (int64_t g = g0; g < g1; ++g)                                                    \
            ISA(ND_CAT(ND_BWD_##APPLY, SUF))(dout + ND_GROUP * g, dx + ND_GROUP * g,         \
                                             nd_load_bits64(bits + 8 * g), scale);           \
        nd_stream_fence();                                                                   \
    }

ND_FWD_RANGE(float, f32, nd_apply, range)
ND_FWD_RANGE(double, f64, nd_apply, range)
ND_FWD_RANGE(float, f32, nd_apply_nt, range_nt)
ND_FWD_RANGE(double, f64, nd_apply_nt, range_nt)
#undef ND_FWD_RANGE
#undef ND_RANGE_SETUP
#undef ND_GROUP_BITS
#undef ND_FWD_PHILOX
#undef ND_GROUP_FN_nd_apply
#undef ND_GROUP_FN_nd_apply_nt
#undef ND_BWD_nd_apply
#undef ND_BWD_nd_apply_nt
#ifdef ND_AVX2_APPLY
#undef ND_AVX2_APPLY
#endif
#undef ISA
