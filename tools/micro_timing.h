/* micro_timing.h -- the timing helpers of the single-thread micro-benchmarks
 * (tools/bn_micro.c, tools/dropout_micro.c): a monotonic clock, this core's
 * effective clock rate, and a comparison for qsort of doubles. */
#ifndef ND_MICRO_TIMING_H
#define ND_MICRO_TIMING_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* Seconds on a monotonic clock. */
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Effective clock (GHz) of this core over a short dependent chain of adds
 * (one cycle each): converts a neighbouring sample to cycles, whatever the
 * frequency or the share of the core this process got meanwhile.  0 where
 * the chain cannot be written (not x86-64 with GCC or Clang). */
static double ghz(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    uint64_t v = 0;
    const long n = 200000;
    const double a = now();
    for (long i = 0; i < n; ++i)
        __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                         "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                         "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                         "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                         : "+r"(v));
    return 16.0 * (double)n / (now() - a) * 1e-9;
#else
    return 0.0;
#endif
}

/* qsort comparison of doubles, ascending. */
static int cmpd(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#endif
