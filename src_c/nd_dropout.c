/*
 * nd_dropout.c -- dropout kernels (Philox4x32-10, see nd_philox.h).
 *
 * Values are processed in groups of 64 (16 Philox blocks, 8 mask bytes).  A
 * group's 64 keep bits are computed as one uint64_t (bit k = value 64 g + k)
 * from 16 counters held in structure-of-arrays form, and then drive the output
 * directly: no per-value temporary.  Each value's fate depends only on
 * (seed, i, p), so any partition over threads gives the same bits; and the
 * arithmetic on kept values (one IEEE multiply by scale) is the same in every
 * instruction-set variant, so every variant writes the same bits.
 *
 * Variants, chosen at run time on x86-64 with GCC/Clang (nd_dropout_isa.h):
 *   avx512: 16 counters per zmm, vpmuludq for the 32x32->64 products, keep
 *           masks straight from unsigned compares (k-registers, pdep);
 *   avx2:   8 counters per ymm, a group's two halves interleaved; the keep
 *           masks transposed to value order drive the stores directly;
 *   generic: portable C shaped for auto-vectorization (the only variant on
 *           other compilers and targets).
 * Packed bits: value i is bit i % 8 of byte i / 8.
 *   forward:  out[i] = keep(i) ? x[i] * scale : 0      (scale = (T)(1/p))
 *   backward: dx[i]  = bit(i)  ? dout[i] * scale : 0
 */
#include <string.h>

#include "normdrop.h"
#include "nd_common.h"
#include "nd_philox.h"

#define ND_GROUP 64                /* values per group */
#define ND_GROUP_BLOCKS 16         /* Philox blocks per group */
#define ND_GROUPS_PER_TASK 256     /* groups per parallel work item */

/* Keep rule in 32-bit form: with threshold T in [1, 2**32], all values are
 * kept when T == 2**32, else value r is kept iff r < (uint32_t)T. */
typedef struct {
    uint32_t k0, k1;   /* key */
    uint32_t t;        /* threshold when !all */
    int all;           /* T == 2**32: keep everything (no Philox needed) */
    /* the round keys, in memory: the vector loops broadcast them from here
     * as load operands instead of from general registers (port 5 on x86) */
    uint32_t rk0[ND_PHILOX_ROUNDS], rk1[ND_PHILOX_ROUNDS];
} nd_keep_rule;

static nd_keep_rule nd_rule(uint64_t seed, uint64_t thr)
{
    nd_keep_rule r;
    r.k0 = (uint32_t)seed;
    r.k1 = (uint32_t)(seed >> 32);
    for (int i = 0; i < ND_PHILOX_ROUNDS; ++i) {
        r.rk0[i] = nd_philox_key0(r.k0, i);
        r.rk1[i] = nd_philox_key1(r.k1, i);
    }
    r.all = thr >= ((uint64_t)1 << 32);
    r.t = r.all ? 0u : (uint32_t)thr;
    return r;
}

static inline uint64_t nd_load_bits64(const uint8_t *p)
{
    uint64_t m = 0;
    for (int k = 0; k < 8; ++k) m |= (uint64_t)p[k] << (8 * k);
    return m;
}

static inline void nd_store_bits64(uint8_t *p, uint64_t m)
{
    for (int k = 0; k < 8; ++k) p[k] = (uint8_t)(m >> (8 * k));
}

/* ---------------------------------------------------------------- variants */
#define ND_ISA generic
#define ND_ISA_GENERIC 1
#define ND_ISA_ATTR
#include "nd_dropout_isa.h"
#undef ND_ISA
#undef ND_ISA_GENERIC
#undef ND_ISA_ATTR

#if ND_X86_SIMD
#include <immintrin.h>

#define ND_ISA avx2
#define ND_ISA_AVX2 1
#define ND_ISA_ATTR __attribute__((target("avx2")))
#include "nd_dropout_isa.h"
#undef ND_ISA
#undef ND_ISA_AVX2
#undef ND_ISA_ATTR

#define ND_ISA avx512
#define ND_ISA_AVX512 1
#define ND_ISA_ATTR __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,bmi2")))
#include "nd_dropout_isa.h"
#undef ND_ISA
#undef ND_ISA_AVX512
#undef ND_ISA_ATTR
#endif

/* Which variant this processor runs: 2 avx512, 1 avx2, 0 generic. */
static int nd_isa_level(void)
{
#if defined(ND_FORCE_ISA_LEVEL) && ND_X86_SIMD   /* testing: pin one variant */
    return ND_FORCE_ISA_LEVEL >= 2 ? 2 : ND_FORCE_ISA_LEVEL <= 0 ? 0 : 1;
#elif ND_X86_SIMD
    /* a few loads of the CPU model data filled in at startup: no caching, so
     * no shared state between threads */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("bmi2"))
        return 2;
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

const char *nd_dropout_isa(void)
{
    static const char *const names[] = {"generic", "avx2", "avx512"};
    return names[nd_isa_level()];
}

#if ND_X86_SIMD
#define ND_PICK(name) (lvl == 2 ? ND_CAT(name, avx512) : lvl == 1 ? ND_CAT(name, avx2) \
                                                                : ND_CAT(name, generic))
#else
#define ND_PICK(name) ND_CAT(name, generic)
#endif

/* Keep bits of the group that holds values [i0, n) (i0 a multiple of 64),
 * bits at and above n - i0 cleared. */
static uint64_t nd_tail_bits(int64_t i0, int64_t n, const nd_keep_rule *r)
{
    uint64_t m = nd_group_bits_generic((uint64_t)(i0 / ND_GROUP), r);
    const int64_t len = n - i0;
    return len >= 64 ? m : (m & (((uint64_t)1 << len) - 1));
}

/* Streaming stores for this output: large enough, and aligned for the
 * vector stores of every variant (64 bytes; each group is 256 or 512 bytes, so
 * every group stays aligned). */
static int nd_dropout_stream(const void *out, int64_t bytes)
{
    return ((uintptr_t)out & 63) == 0 && nd_stream_ok(bytes);
}

typedef void (*nd_bits_fn)(uint8_t *bits, uint8_t *mask, int64_t g0, int64_t g1,
                           const nd_keep_rule *r);

static void nd_bits_or_mask(uint8_t *bits, uint8_t *mask, int64_t n, uint64_t seed, double p)
{
    const nd_keep_rule r = nd_rule(seed, nd_dropout_threshold(p));
    const int64_t ng = n / ND_GROUP, ntask = nd_cdiv(ng, ND_GROUPS_PER_TASK);
    const int lvl = nd_isa_level();
    (void)lvl;
    const nd_bits_fn fn = ND_PICK(nd_bits_range);
    ND_OMP_FOR(n >= ND_PARALLEL_MIN)
    for (int64_t t = 0; t < ntask; ++t)
        fn(bits, mask, t * ND_GROUPS_PER_TASK, nd_min64((t + 1) * ND_GROUPS_PER_TASK, ng), &r);
    const int64_t i0 = ng * ND_GROUP;
    if (i0 < n) {
        const uint64_t m = nd_tail_bits(i0, n, &r);
        if (bits)
            for (int64_t k = 0; 8 * k < n - i0; ++k) bits[i0 / 8 + k] = (uint8_t)(m >> (8 * k));
        if (mask)
            for (int64_t i = i0; i < n; ++i) mask[i] = (uint8_t)((m >> (i - i0)) & 1);
    }
}

typedef uint64_t (*nd_group_bits_fn)(uint64_t g, const nd_keep_rule *r);

/* Keep bits (bits, packed) or 0/1 bytes (mask) of n values whose first has
 * generator index offset != 0: local group k (values 64 k .. 64 k + 63) is
 * made of global groups q0 + k and q0 + k + 1, shifted by sh = offset % 64.
 * Tasks of ND_GROUPS_PER_TASK local groups; each value's bit depends only on
 * (seed, offset + i, p), so any partition gives the same bits. */
static void nd_offset_bits(uint8_t *bits, uint8_t *mask, int64_t n, uint64_t offset,
                           const nd_keep_rule *r)
{
    const int lvl = nd_isa_level();
    (void)lvl;
    const nd_group_bits_fn gb = ND_PICK(nd_group_bits);
    const uint64_t q0 = offset >> 6;
    const int sh = (int)(offset & 63);
    const int64_t ng = nd_cdiv(n, ND_GROUP), ntask = nd_cdiv(ng, ND_GROUPS_PER_TASK);
    ND_OMP_FOR(n >= ND_PARALLEL_MIN)
    for (int64_t t = 0; t < ntask; ++t) {
        const int64_t k0 = t * ND_GROUPS_PER_TASK, k1 = nd_min64(k0 + ND_GROUPS_PER_TASK, ng);
        uint64_t lo = gb(q0 + (uint64_t)k0, r);
        for (int64_t k = k0; k < k1; ++k) {
            uint64_t m = lo;
            if (sh) {
                const uint64_t hi = gb(q0 + (uint64_t)k + 1, r);
                m = (lo >> sh) | (hi << (64 - sh));
                lo = hi;
            } else if (k + 1 < k1) {
                lo = gb(q0 + (uint64_t)k + 1, r);
            }
            const int64_t len = nd_min64(ND_GROUP, n - ND_GROUP * k);
            if (len < ND_GROUP) m &= ((uint64_t)1 << len) - 1;
            if (bits)
                for (int64_t b = 0; 8 * b < len; ++b) bits[8 * k + b] = (uint8_t)(m >> (8 * b));
            if (mask)
                for (int64_t i = 0; i < len; ++i) mask[ND_GROUP * k + i] = (uint8_t)((m >> i) & 1);
        }
    }
}

/* nd_dropout_mask: mask[i] = keep(i) as a 0/1 byte, n values, value i with
 * the word of generator index offset + i.  IN n, seed, offset, p; OUT mask. */
void nd_dropout_mask(uint8_t *mask, int64_t n, uint64_t seed, uint64_t offset, double p)
{
    if (offset == 0) {
        nd_bits_or_mask(0, mask, n, seed, p);
        return;
    }
    const nd_keep_rule r = nd_rule(seed, nd_dropout_threshold(p));
    nd_offset_bits(0, mask, n, offset, &r);
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
