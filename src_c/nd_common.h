/* nd_common.h -- private helpers shared by the kernel sources. */
#ifndef ND_COMMON_H
#define ND_COMMON_H

#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Work below this many values runs on one thread (the result is the same:
 * only the partition into units fixes it, never the thread count). */
#define ND_PARALLEL_MIN 32768

#define ND_CAT2(a, b) a##_##b
#define ND_CAT(a, b) ND_CAT2(a, b)

#if defined(_OPENMP)
#define ND_PRAGMA(x) _Pragma(#x)
#define ND_OMP_FOR(cond) ND_PRAGMA(omp parallel for schedule(static) if (cond))
#else
#define ND_OMP_FOR(cond)
#endif

/* Runtime choice of the widest vector unit for the integer-heavy Philox loop
 * (GCC/Clang function multi-versioning on x86-64).  Floating-point kernels are
 * not cloned, so their results do not depend on the processor. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(ND_NO_CLONES) && \
    (defined(__clang__) || __GNUC__ >= 6) && defined(__linux__)
#define ND_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define ND_CLONES
#endif

/* Hand-written x86-64 vector variants selected at run time (the dropout
 * loops): GCC or Clang on x86-64, unless ND_NO_CLONES is defined. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ND_NO_CLONES) && \
    (defined(__clang__) || __GNUC__ >= 7)
#define ND_X86_SIMD 1
#else
#define ND_X86_SIMD 0
#endif

static inline int64_t nd_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t nd_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

#endif
