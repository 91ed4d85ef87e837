/*
 * nd_philox.h -- Philox4x32-10 counter-based generator and the dropout keep rule.
 *
 * This header is the single definition of normdrop's dropout random numbers.
 * It compiles as C11 (into the CPU extension) and as CUDA C++ under NVRTC
 * (shipped as package data for the CUDA backend), so it uses no host-only
 * headers when compiled for the GPU.
 *
 * Contract (DESIGN section 3):
 *   key      = (seed & 0xffffffff, seed >> 32)
 *   element i (flat C-order index) -> block b = i >> 2, lane i & 3,
 *   counter  = (b & 0xffffffff, b >> 32, 0, 0),
 *   word r   = lane (i & 3) of Philox4x32-10(counter, key),
 *   kept iff r < T with T = floor(p * 2**32), compared as 64-bit integers.
 */
#ifndef ND_PHILOX_H
#define ND_PHILOX_H

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
typedef unsigned int nd_u32;
typedef unsigned long long nd_u64;
#define ND_FN static __host__ __device__ __forceinline__
#else
#include <stdint.h>
typedef uint32_t nd_u32;
typedef uint64_t nd_u64;
#define ND_FN static inline
#endif

#define ND_PHILOX_M0 0xD2511F53u
#define ND_PHILOX_M1 0xCD9E8D57u
#define ND_PHILOX_W0 0x9E3779B9u
#define ND_PHILOX_W1 0xBB67AE85u
#define ND_PHILOX_ROUNDS 10

/* One Philox S-P round on a counter held in four scalars (so that a loop of
 * rounds over many counters vectorizes).  (hi, lo) = M * c is the full 64-bit
 * product:  c <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0). */
ND_FN void nd_philox_round(nd_u32 *c0, nd_u32 *c1, nd_u32 *c2, nd_u32 *c3,
                           nd_u32 k0, nd_u32 k1)
{
    nd_u64 p0 = (nd_u64)ND_PHILOX_M0 * (nd_u64)(*c0);
    nd_u64 p1 = (nd_u64)ND_PHILOX_M1 * (nd_u64)(*c2);
    nd_u32 hi0 = (nd_u32)(p0 >> 32), lo0 = (nd_u32)p0;
    nd_u32 hi1 = (nd_u32)(p1 >> 32), lo1 = (nd_u32)p1;
    *c0 = hi1 ^ *c1 ^ k0;
    *c1 = lo1;
    *c2 = hi0 ^ *c3 ^ k1;
    *c3 = lo0;
}

/* Key of round r (0-based): the key is bumped by the Weyl constants before
 * every round after the first. */
ND_FN nd_u32 nd_philox_key0(nd_u32 k0, int r) { return k0 + (nd_u32)r * ND_PHILOX_W0; }
ND_FN nd_u32 nd_philox_key1(nd_u32 k1, int r) { return k1 + (nd_u32)r * ND_PHILOX_W1; }

/* Philox4x32-10 of counter ctr[0..3] under key (k0, k1) into out[0..3]. */
ND_FN void nd_philox4x32_10(const nd_u32 ctr[4], nd_u32 k0, nd_u32 k1, nd_u32 out[4])
{
    nd_u32 c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    for (int r = 0; r < ND_PHILOX_ROUNDS; ++r)
        nd_philox_round(&c0, &c1, &c2, &c3, nd_philox_key0(k0, r), nd_philox_key1(k1, r));
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* The four words of dropout block b (elements 4b .. 4b+3) for seed (k0, k1). */
ND_FN void nd_dropout_block(nd_u64 b, nd_u32 k0, nd_u32 k1, nd_u32 out[4])
{
    nd_u32 ctr[4];
    ctr[0] = (nd_u32)b; ctr[1] = (nd_u32)(b >> 32); ctr[2] = 0u; ctr[3] = 0u;
    nd_philox4x32_10(ctr, k0, k1, out);
}

/* Keep threshold T = floor(p * 2**32) for a keep probability p in (0, 1]:
 * p * 2**32 is exact in double, and the conversion truncates, which is the
 * floor of a positive value.  T = 2**32 (p = 1) keeps everything. */
ND_FN nd_u64 nd_dropout_threshold(double p) { return (nd_u64)(p * 4294967296.0); }

/* Keep rule: T = floor(p * 2**32) in [0, 2**32]; kept iff r < T. */
ND_FN int nd_dropout_keep(nd_u32 r, nd_u64 threshold) { return (nd_u64)r < threshold; }

#endif /* ND_PHILOX_H */
