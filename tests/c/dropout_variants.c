/* Prints one FNV-1a digest of the dropout kernels' outputs (forward values and
 * bits, backward, mask) over sizes, seeds, keep probabilities, alignments and
 * streaming on/off.  tests/test_isa_variants.py builds it once per
 * instruction-set variant (-DND_FORCE_ISA_LEVEL=0 generic, 1 avx2, 2 avx512)
 * and checks that every variant the processor can run prints the same digest.
 * Exit status 77: this processor cannot run the forced variant. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "normdrop.h"

static uint64_t h = 1469598103934665603ull;

static void feed(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; ++i) { h ^= b[i]; h *= 1099511628211ull; }
}

int main(void)
{
#if defined(ND_FORCE_ISA_LEVEL) && (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    __builtin_cpu_init();
    if (ND_FORCE_ISA_LEVEL >= 1 && !__builtin_cpu_supports("avx2")) return 77;
    if (ND_FORCE_ISA_LEVEL >= 2 && !(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                                     __builtin_cpu_supports("bmi2")))
        return 77;
#endif
    const int64_t sizes[] = {1, 63, 64, 65, 1000, 16384, 100003};
    const uint64_t seeds[] = {0, 1, 0xffffffffffffffffull, 0x123456789abcdefull};
    const uint64_t thr[] = {1, 2147483648ull, 3000000000ull, 4294967296ull};   /* T */
    const int64_t nmax = 100003 + 64;
    float *xf = malloc(sizeof(float) * nmax + 128), *of = malloc(sizeof(float) * nmax + 128);
    double *xd = malloc(sizeof(double) * nmax + 128), *od = malloc(sizeof(double) * nmax + 128);
    uint8_t *bits = malloc(nmax / 8 + 16), *mask = malloc(nmax + 16);
    if (!xf || !of || !xd || !od || !bits || !mask) return 2;
    for (int64_t i = 0; i < nmax; ++i) { xf[i] = (float)(i % 977) - 400.5f; xd[i] = (double)(i % 1013) * 0.37 - 100.0; }
    for (int stream = 0; stream < 2; ++stream) {
        nd_set_stream_bytes(stream ? 0 : ((int64_t)1 << 62));
        for (int shift = 0; shift < 2; ++shift) {   /* out 64-byte aligned, then 4 bytes off */
            float *fo = (float *)(((uintptr_t)of + 63) & ~(uintptr_t)63) + shift;
            double *dd = (double *)(((uintptr_t)od + 63) & ~(uintptr_t)63) + shift;
            for (size_t a = 0; a < sizeof sizes / sizeof *sizes; ++a)
                for (size_t b = 0; b < sizeof seeds / sizeof *seeds; ++b)
                    for (size_t c = 0; c < sizeof thr / sizeof *thr; ++c) {
                        const int64_t n = sizes[a];
                        const double p = (double)thr[c] / 4294967296.0;
                        nd_dropout_fwd_f32(xf, fo, bits, n, seeds[b], 0, p);
                        feed(fo, sizeof(float) * n);
                        feed(bits, (size_t)(n + 7) / 8);
                        nd_dropout_bwd_f32(xf, bits, fo, n, p);
                        feed(fo, sizeof(float) * n);
                        nd_dropout_fwd_f64(xd, dd, bits, n, seeds[b], 0, p);
                        feed(dd, sizeof(double) * n);
                        nd_dropout_bwd_f64(xd, bits, dd, n, p);
                        feed(dd, sizeof(double) * n);
                        nd_dropout_mask(mask, n, seeds[b], 0, p);
                        feed(mask, (size_t)n);
                        /* generator offsets: not a multiple of 4 or 64, and huge */
                        const uint64_t offs[] = {1, 3, 64, 1000003, 0xfffffffffff00001ull};
                        for (size_t o = 0; o < sizeof offs / sizeof *offs; ++o) {
                            nd_dropout_fwd_f32(xf, fo, bits, n, seeds[b], offs[o], p);
                            feed(fo, sizeof(float) * n);
                            feed(bits, (size_t)(n + 7) / 8);
                            nd_dropout_mask(mask, n, seeds[b], offs[o], p);
                            feed(mask, (size_t)n);
                        }
                    }
        }
    }
    printf("%016llx\n", (unsigned long long)h);
    return 0;
}
