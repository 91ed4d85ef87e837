/* nd_common.h -- private helpers shared by the kernel sources. */
#ifndef ND_COMMON_H
#define ND_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Work below this many values runs on one thread (the result is the same:
 * only the partition into units fixes it, never the thread count). */
#define ND_PARALLEL_MIN 32768

#define ND_CAT2(a, b) a##_##b
#define ND_CAT(a, b) ND_CAT2(a, b)

/* A hint to fetch the cache line at p into the L2 cache for reading (x86's
 * PREFETCHT1); it changes no result and never faults. */
#if defined(__GNUC__) || defined(__clang__)
#define ND_PREFETCH_L2(p) __builtin_prefetch((const void *)(p), 0, 2)
#else
#define ND_PREFETCH_L2(p) ((void)(p))
#endif

/* Every parallel region of the kernels is an ND_OMP_FOR loop, or an
 * ND_OMP_PARALLEL region around ND_OMP_SPLIT loops (per-thread set-up before
 * a worksharing loop): parallel when
 * cond holds and nd_omp_parallel (nd_common.c) allows it -- not in a process
 * forked from a thread that had run a parallel region, where GNU libgomp's
 * thread pool is gone (the copied pool waits for threads that fork did not
 * copy); there the loop runs on the calling thread, with the same results. */
#if defined(_OPENMP)
#define ND_PRAGMA(x) _Pragma(#x)
#define ND_OMP_FOR(cond) ND_PRAGMA(omp parallel for schedule(static) if (nd_omp_parallel(cond)))
#define ND_OMP_PARALLEL(cond) ND_PRAGMA(omp parallel if (nd_omp_parallel(cond)))
#define ND_OMP_SPLIT ND_PRAGMA(omp for schedule(static))
/* ND_OMP_SPLIT without its barrier, for a loop that only the region's end follows */
#define ND_OMP_SPLIT_NOWAIT ND_PRAGMA(omp for schedule(static) nowait)
/* cond, unless this is such a forked process (then 0); notes that the calling
 * thread starts a parallel region when it returns nonzero. */
int nd_omp_parallel(int cond);
#else
#define ND_OMP_FOR(cond)
#define ND_OMP_PARALLEL(cond)
#define ND_OMP_SPLIT
#define ND_OMP_SPLIT_NOWAIT
#endif

/* Runtime choice of the widest vector unit (GCC/Clang function
 * multi-versioning on x86-64) for the normalization kernels' portable loops.
 * Every clone computes the same IEEE operations in the same order (no
 * contraction into FMA: -ffp-contract=off; sums in fixed lanes), so the
 * results do not depend on the processor (tests/test_*variants.py). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(ND_NO_CLONES) && \
    (defined(__clang__) || __GNUC__ >= 6) && defined(__linux__)
#if defined(ND_FORCE_ISA_LEVEL)
/* a build pinned to one variant (NORMDROP_ISA, setup.py; the variant tests):
 * the one clone the resolver would pick on a processor of that level */
#if ND_FORCE_ISA_LEVEL >= 2
#define ND_CLONES __attribute__((target("arch=x86-64-v4")))
#elif ND_FORCE_ISA_LEVEL == 1
#define ND_CLONES __attribute__((target("avx2")))
#else
#define ND_CLONES
#endif
#else
#define ND_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
#else
#define ND_CLONES
#endif

/* ND_CLONES without the x86-64-v4 clone, for loops that read their operands
 * at NumPy's alignment (its large arrays start 16 bytes into a cache line):
 * GCC's 64-byte loads there all span two lines, and layernorm's float64
 * backward row loops took 1.08-1.12x the time of the avx2 clone's (AMD Zen 5,
 * 2 threads).  The same bits either way. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(ND_NO_CLONES) && \
    (defined(__clang__) || __GNUC__ >= 6) && defined(__linux__)
#if defined(ND_FORCE_ISA_LEVEL)
#if ND_FORCE_ISA_LEVEL >= 1
#define ND_CLONES_AVX2 __attribute__((target("avx2")))
#else
#define ND_CLONES_AVX2
#endif
#else
#define ND_CLONES_AVX2 __attribute__((target_clones("avx2", "default")))
#endif
#else
#define ND_CLONES_AVX2
#endif

/* Hand-written x86-64 vector variants selected at run time (the dropout
 * loops): GCC or Clang on x86-64, unless ND_NO_CLONES is defined. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ND_NO_CLONES) && \
    (defined(__clang__) || __GNUC__ >= 7)
#define ND_X86_SIMD 1
#else
#define ND_X86_SIMD 0
#endif

/* ------------------------------------------------------- streaming stores
 * Outputs of at least nd_stream_bytes bytes (nd_common.c, set from Python) are
 * written with non-temporal stores: SSE2's, which every x86-64 has.  Kernels
 * compute a chunk into a small buffer that stays in L1 and stream it out with
 * nd_stream_copy; one nd_stream_fence per work item makes the stores visible
 * in order.  Elsewhere nd_stream_ok is always false. */
extern int64_t nd_stream_bytes;

/* ------------------------------------------------------ passes' scratch
 * A parallel pass's per-thread scratch: malloc'd, NULL where that fails, or
 * where the tests refuse it (nd_set_scratch_refusal: 1 on every thread, 2 on
 * the odd-numbered threads of a team); the pass then takes its fallback. */
extern int nd_scratch_refusal;

static inline double *nd_scratch(int64_t n)
{
    if (nd_scratch_refusal == 1) return NULL;
#ifdef _OPENMP
    if (nd_scratch_refusal == 2 && (omp_get_thread_num() & 1)) return NULL;
#endif
    return (double *)malloc((size_t)n * sizeof(double));
}

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define ND_HAVE_STREAM 1
#else
#define ND_HAVE_STREAM 0
#endif

#define ND_STREAM_CHUNK 1024   /* bytes of a kernel's L1 buffer: 1 KiB per chunk */

static inline int nd_stream_ok(int64_t out_bytes)
{
    return ND_HAVE_STREAM && out_bytes >= nd_stream_bytes;
}

/* dst[0, bytes) <- src[0, bytes); dst and src do not overlap. */
static inline void nd_stream_copy(void *dst, const void *src, size_t bytes)
{
#if ND_HAVE_STREAM
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (size_t)((16 - ((uintptr_t)d & 15)) & 15);
    if (head > bytes) head = bytes;
    memcpy(d, s, head);
    size_t i = head;
    for (; i + 16 <= bytes; i += 16)
        _mm_stream_si128((__m128i *)(d + i), _mm_loadu_si128((const __m128i *)(s + i)));
    memcpy(d + i, s + i, bytes - i);
#else
    memcpy(dst, src, bytes);
#endif
}

/* Software prefetch of [p, p + bytes) into L2 (a hint: never faults).  L2, not
 * L1: with streaming stores in flight, T0 prefetches measured 15% slower. */
#if ND_HAVE_STREAM
#define ND_PREFETCH(p, bytes)                                                        \
    do {                                                                             \
        for (size_t nd_pf_ = 0; nd_pf_ < (size_t)(bytes); nd_pf_ += 64)              \
            _mm_prefetch((const char *)(p) + nd_pf_, _MM_HINT_T1);                   \
    } while (0)
#else
#define ND_PREFETCH(p, bytes) ((void)0)
#endif

static inline void nd_stream_fence(void)
{
#if ND_HAVE_STREAM
    _mm_sfence();
#endif
}

static inline int64_t nd_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t nd_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

#endif
