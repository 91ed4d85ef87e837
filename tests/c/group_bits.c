/* The keep bits of single 64-value groups, straight from each variant's
 * nd_group_bits (this file includes nd_dropout.c to reach them), against
 * Philox4x32-10 block by block from nd_philox.h.  Covers group indices whose
 * counters have a nonzero high word (flat indices of 2**34 and more), which no
 * array that fits in memory reaches.  Prints "ok <cases>" or the first
 * mismatch; exit 1 on a mismatch.  Variants the processor lacks are skipped. */
#include <stdio.h>

#include "nd_dropout.c"

static uint64_t expected(uint64_t g, uint64_t seed, uint64_t thr)
{
    if (thr >= ((uint64_t)1 << 32)) return ~(uint64_t)0;
    uint64_t m = 0;
    for (int j = 0; j < 16; ++j) {
        const uint64_t b = 16 * g + (uint64_t)j;
        const nd_u32 ctr[4] = {(nd_u32)b, (nd_u32)(b >> 32), 0u, 0u};
        nd_u32 w[4];
        nd_philox4x32_10(ctr, (nd_u32)seed, (nd_u32)(seed >> 32), w);
        for (int k = 0; k < 4; ++k) m |= (uint64_t)((uint64_t)w[k] < thr) << (4 * j + k);
    }
    return m;
}

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint64_t next(void)   /* splitmix64 */
{
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int main(void)
{
    typedef uint64_t (*fn)(uint64_t, const nd_keep_rule *);
    fn fns[3] = {nd_group_bits_generic, 0, 0};
    const char *names[3] = {"generic", "avx2", "avx512"};
#if ND_X86_SIMD
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) fns[1] = nd_group_bits_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("bmi2"))
        fns[2] = nd_group_bits_avx512;
#endif
    const uint64_t seeds[] = {0, 1, 0xffffffffffffffffull, 0x0123456789abcdefull};
    const uint64_t thr[] = {1, 2147483648ull, 3000000000ull, 4294967295ull, 4294967296ull};
    uint64_t gs[64 + 400];
    int ng = 0;
    const uint64_t edges[] = {0, 1, ((uint64_t)1 << 28) - 1, (uint64_t)1 << 28,
                              ((uint64_t)1 << 28) + 1, (uint64_t)1 << 32, ((uint64_t)1 << 36) + 7,
                              ((uint64_t)1 << 60) - 2, ((uint64_t)1 << 60) - 1};
    for (size_t i = 0; i < sizeof edges / sizeof *edges; ++i) gs[ng++] = edges[i];
    while (ng < 400) gs[ng++] = next() >> 6;   /* any group: 16 g + 15 < 2**64 */
    long cases = 0;
    for (int v = 0; v < 3; ++v) {
        if (!fns[v]) continue;
        for (size_t s = 0; s < sizeof seeds / sizeof *seeds; ++s)
            for (size_t t = 0; t < sizeof thr / sizeof *thr; ++t) {
                const nd_keep_rule r = nd_rule(seeds[s], thr[t]);
                for (int i = 0; i < ng; ++i) {
                    const uint64_t want = expected(gs[i], seeds[s], thr[t]);
                    const uint64_t got = fns[v](gs[i], &r);
                    ++cases;
                    if (got != want) {
                        printf("mismatch %s g=%llu seed=%llu T=%llu: %016llx != %016llx\n", names[v],
                               (unsigned long long)gs[i], (unsigned long long)seeds[s],
                               (unsigned long long)thr[t], (unsigned long long)got,
                               (unsigned long long)want);
                        return 1;
                    }
                }
            }
    }
    printf("ok %ld\n", cases);
    return 0;
}
