/*
 * nd_dropout.c -- dropout kernels (Philox4x32-10, see nd_philox.h).
 *
 * Values are processed in groups of 64 (16 Philox blocks, 8 mask bytes); a
 * group's keep bits are computed for 16 counters at once in structure-of-arrays
 * form so the rounds vectorize.  Each value's fate depends only on (seed, i, p),
 * so any partition over threads gives the same bits.  Packed bits: value i is
 * bit i % 8 of byte i / 8.
 *   forward:  out[i] = keep(i) ? x[i] * scale : 0      (scale = 1/p in T)
 *   backward: dx[i]  = bit(i)  ? dout[i] * scale : 0
 */
#include "normdrop.h"
#include "nd_common.h"
#include "nd_philox.h"

#define ND_GROUP 64                /* values per group */
#define ND_GROUP_BLOCKS 16         /* Philox blocks per group */
#define ND_GROUPS_PER_TASK 256     /* groups per parallel work item */

/* Keep flags (0/1) of the 64 values of group gi, into keep[64]. */
static inline void nd_group_keep(uint64_t gi, uint32_t k0, uint32_t k1, uint64_t thr,
                                 uint8_t keep[ND_GROUP])
{
    nd_u32 c0[ND_GROUP_BLOCKS], c1[ND_GROUP_BLOCKS], c2[ND_GROUP_BLOCKS], c3[ND_GROUP_BLOCKS];
    const nd_u64 b0 = gi * ND_GROUP_BLOCKS;
    for (int j = 0; j < ND_GROUP_BLOCKS; ++j) {
        nd_u64 b = b0 + (nd_u64)j;
        c0[j] = (nd_u32)b; c1[j] = (nd_u32)(b >> 32); c2[j] = 0u; c3[j] = 0u;
    }
    for (int r = 0; r < ND_PHILOX_ROUNDS; ++r) {
        const nd_u32 rk0 = nd_philox_key0(k0, r), rk1 = nd_philox_key1(k1, r);
        for (int j = 0; j < ND_GROUP_BLOCKS; ++j)
            nd_philox_round(&c0[j], &c1[j], &c2[j], &c3[j], rk0, rk1);
    }
    for (int j = 0; j < ND_GROUP_BLOCKS; ++j) {
        keep[4 * j + 0] = (uint8_t)nd_dropout_keep(c0[j], thr);
        keep[4 * j + 1] = (uint8_t)nd_dropout_keep(c1[j], thr);
        keep[4 * j + 2] = (uint8_t)nd_dropout_keep(c2[j], thr);
        keep[4 * j + 3] = (uint8_t)nd_dropout_keep(c3[j], thr);
    }
}

/* Keep flags of values [i0, i1) (a partial group), one block at a time. */
static void nd_tail_keep(int64_t i0, int64_t i1, uint32_t k0, uint32_t k1, uint64_t thr,
                         uint8_t *keep)
{
    for (int64_t i = i0; i < i1; ++i) {
        nd_u32 w[4];
        nd_dropout_block((nd_u64)i >> 2, k0, k1, w);
        keep[i - i0] = (uint8_t)nd_dropout_keep(w[i & 3], thr);
    }
}

static inline uint8_t nd_pack8(const uint8_t *k)
{
    return (uint8_t)(k[0] | (k[1] << 1) | (k[2] << 2) | (k[3] << 3) |
                     (k[4] << 4) | (k[5] << 5) | (k[6] << 6) | (k[7] << 7));
}

/* Bits (and optionally 0/1 bytes) of whole groups [g0, g1). */
ND_CLONES
static void nd_bits_range(uint8_t *bits, uint8_t *mask, int64_t g0, int64_t g1,
                          uint32_t k0, uint32_t k1, uint64_t thr)
{
    uint8_t keep[ND_GROUP];
    for (int64_t gi = g0; gi < g1; ++gi) {
        nd_group_keep((uint64_t)gi, k0, k1, thr, keep);
        if (bits)
            for (int k = 0; k < 8; ++k) bits[gi * 8 + k] = nd_pack8(keep + 8 * k);
        if (mask)
            for (int k = 0; k < ND_GROUP; ++k) mask[gi * ND_GROUP + k] = keep[k];
    }
}

static void nd_bits_tail(uint8_t *bits, uint8_t *mask, int64_t n, uint32_t k0, uint32_t k1,
                         uint64_t thr)
{
    const int64_t i0 = (n / ND_GROUP) * ND_GROUP;
    uint8_t keep[ND_GROUP] = {0};
    if (i0 == n) return;
    nd_tail_keep(i0, n, k0, k1, thr, keep);
    if (bits)
        for (int64_t k = 0; 8 * k < n - i0; ++k) bits[i0 / 8 + k] = nd_pack8(keep + 8 * k);
    if (mask)
        for (int64_t i = i0; i < n; ++i) mask[i] = keep[i - i0];
}

static void nd_bits_or_mask(uint8_t *bits, uint8_t *mask, int64_t n, uint64_t seed, uint64_t thr)
{
    const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    const int64_t ng = n / ND_GROUP, ntask = nd_cdiv(ng, ND_GROUPS_PER_TASK);
    ND_OMP_FOR(n >= ND_PARALLEL_MIN)
    for (int64_t t = 0; t < ntask; ++t)
        nd_bits_range(bits, mask, t * ND_GROUPS_PER_TASK,
                      nd_min64((t + 1) * ND_GROUPS_PER_TASK, ng), k0, k1, thr);
    nd_bits_tail(bits, mask, n, k0, k1, thr);
}

void nd_dropout_bits(uint8_t *bits, int64_t n, uint64_t seed, uint64_t threshold)
{
    nd_bits_or_mask(bits, 0, n, seed, threshold);
}

void nd_dropout_mask(uint8_t *mask, int64_t n, uint64_t seed, uint64_t threshold)
{
    nd_bits_or_mask(0, mask, n, seed, threshold);
}

#define T float
#define SUF f32
#include "nd_dropout_impl.h"
#undef T
#undef SUF

#define T double
#define SUF f64
#include "nd_dropout_impl.h"
#undef T
#undef SUF
