/*
 * cuda_shim.h -- just enough of CUDA C++ for g++ to compile the bodies of
 * normdrop's .cu kernels for the CPU, and a deterministic scheduler that runs
 * them there.
 *
 * The launcher (launcher.py in this folder) compiles one translation unit
 *
 *     this header + _loader.source(module) + a table of its name expressions
 *
 * into a shared library.  It is a test harness, not a backend: it proves what
 * the kernels compute (indexing, reductions, merge order, template
 * instantiation, the launch geometry the Python backend chooses), not how
 * fast, nor anything that depends on the GPU's memory model or warps.
 *
 * What the header provides
 *   - the CUDA keywords (__global__, __device__, __host__, __forceinline__,
 *     __noinline__, __launch_bounds__(...), __constant__, __shared__),
 *   - uint3 / dim3 and the built-in variables threadIdx, blockIdx, blockDim,
 *     gridDim, warpSize,
 *   - __syncthreads() as a real phase barrier of the threads of a block,
 *   - a few device functions whose results are exact and so equal on both
 *     sides (__ldg, integer and floating min / max, bit casts),
 *   - nd_h2f, nd_f2h, nd_d2h, nd_f2d, nd_d2f, nd_fmul, nd_dmul: the
 *     conversions and products that nd_common.cu asks "any other C++
 *     compiler" to declare (IEEE binary16/32/64, round to nearest even,
 *     subnormals kept; nd_d2h and nd_f2h round once),
 *   - the extern "C" entry points the launcher calls through ctypes.
 * Anything else a kernel uses (warp shuffles and votes, atomics, fast-math
 * intrinsics such as rsqrt or __fdividef, inline PTX) is deliberately not
 * defined: such a kernel fails to compile here instead of being emulated
 * with results the GPU would not give.
 *
 * __CUDACC__ and __CUDACC_RTC__ stay undefined, so nd_philox.h and
 * nd_common.cu take their portable (non-PTX) branches.
 */
#ifndef ND_CUDA_SHIM_H
#define ND_CUDA_SHIM_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "cuda_shim.h is for host compilers; it replaces CUDA, it does not complement it"
#endif
#if defined(__FAST_MATH__)
#error "the CUDA host harness needs IEEE arithmetic: do not compile it with -ffast-math"
#endif

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <math.h>           /* C++ <math.h>: the float and double overloads of sqrt etc. */

#include <limits>
#include <string>
#include <type_traits>
#include <utility>

#include <sys/mman.h>
#include <unistd.h>

static_assert(std::numeric_limits<float>::is_iec559 && std::numeric_limits<double>::is_iec559,
              "IEEE binary32 and binary64 are required");

#define ND_SHIM_EXPORT extern "C" __attribute__((visibility("default")))

/* ------------------------------------------------------------ keywords */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__
/* Blocks run one at a time (see the scheduler below), so shared memory is a
 * function-local static: one copy, shared by the block's threads, reused by
 * the next block (which, as on the GPU, finds the previous block's values
 * and must not rely on any). */
#define __shared__ static

/* ------------------------------------------------ built-in variables */
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};

/* Set by the scheduler before it resumes a thread.  They have external
 * linkage, so the compiler reloads them after every call it cannot see
 * through (a __syncthreads() is one). */
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

/* ------------------------------------------------ exact device functions */
template <typename T>
static inline T __ldg(const T *p) { return *p; }

static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
static inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }

namespace nd_shim {
template <typename To, typename From>
static inline To bit_cast(From v)
{
    static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
    To r;
    memcpy(&r, &v, sizeof r);
    return r;
}
}  // namespace nd_shim

static inline float __int_as_float(int v) { return nd_shim::bit_cast<float>(v); }
static inline int __float_as_int(float v) { return nd_shim::bit_cast<int>(v); }
static inline float __uint_as_float(unsigned int v) { return nd_shim::bit_cast<float>(v); }
static inline unsigned int __float_as_uint(float v) { return nd_shim::bit_cast<unsigned int>(v); }
static inline double __longlong_as_double(long long v) { return nd_shim::bit_cast<double>(v); }
static inline long long __double_as_longlong(double v) { return nd_shim::bit_cast<long long>(v); }

/* -------------------------------------- conversions asked by nd_common.cu */
namespace nd_shim {
/* v >> s rounded to nearest, ties to even (v < 2**53, s >= 1). */
static inline uint64_t shift_rne(uint64_t v, int s)
{
    if (s >= 54) return 0;          /* v / 2**s < 1/2 */
    const uint64_t q = v >> s, r = v & ((UINT64_C(1) << s) - 1), half = UINT64_C(1) << (s - 1);
    return q + (r > half || (r == half && (q & 1)));
}
}  // namespace nd_shim

/* binary16 -> binary32, exact (NaN payloads kept, as NumPy does). */
static inline float nd_h2f(unsigned short h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint32_t bits;
    if (e == 0) {
        /* zero or subnormal: m * 2**-24, exact in binary32 */
        bits = sign | nd_shim::bit_cast<uint32_t>((float)m * 0x1p-24f);
    } else if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e + 112u) << 23) | (m << 13);
    }
    return nd_shim::bit_cast<float>(bits);
}

/* binary64 -> binary16, rounded once, to nearest even; overflow gives +-inf,
 * subnormals are kept, NaN stays NaN (quiet, top payload bits kept). */
static inline unsigned short nd_d2h(double d)
{
    const uint64_t b = nd_shim::bit_cast<uint64_t>(d);
    const unsigned short sign = (unsigned short)((b >> 48) & 0x8000u);
    const uint64_t a = b & UINT64_C(0x7fffffffffffffff);
    if (a >= UINT64_C(0x7ff0000000000000)) {                       /* inf, NaN */
        if (a == UINT64_C(0x7ff0000000000000)) return sign | 0x7c00u;
        return sign | 0x7e00u | (unsigned short)((a >> 42) & 0x3ffu);
    }
    if (a >= UINT64_C(0x40effe0000000000)) return sign | 0x7c00u;  /* >= 65520: the tie above 65504 */
    const int E = (int)(a >> 52);
    const uint64_t sig = (a & ((UINT64_C(1) << 52) - 1)) | (E ? UINT64_C(1) << 52 : 0);
    const int e = E ? E - 1023 : -1022;                  /* |d| = sig * 2**(e - 52) */
    if (e >= -14) {                                      /* normal: quantum 2**(e - 10) */
        const uint64_t q = nd_shim::shift_rne(sig, 42);  /* in [1024, 2048]; 2048 carries */
        return sign | (unsigned short)(((unsigned)(e + 15) << 10) + (unsigned)(q - 1024));
    }
    /* subnormal range: quantum 2**-24; q == 1024 is the smallest normal */
    return sign | (unsigned short)nd_shim::shift_rne(sig, 28 - e);
}

/* binary32 -> binary16: the float is exact in double, so this rounds once. */
static inline unsigned short nd_f2h(float f) { return nd_d2h((double)f); }

/* binary32 <-> binary64 and products: plain IEEE operations.  The launcher
 * compiles with -ffp-contract=off (no FMA contraction) and without
 * -ffast-math; SSE2 / AArch64 arithmetic keeps subnormals unless the process
 * sets flush-to-zero, which the harness's self-test would catch. */
static inline double nd_f2d(float f) { return (double)f; }
static inline float nd_d2f(double d) { return (float)d; }
static inline float nd_fmul(float a, float b) { return a * b; }
static inline double nd_dmul(double a, double b) { return a * b; }

/* Self-test entry points (tests/test_cuda_host.py compares them with NumPy):
 * op 0 h2f (uint16 -> float32), 1 f2h (float32 -> uint16), 2 d2h (float64
 * -> uint16), 3 f2d (float32 -> float64), 4 d2f (float64 -> float32),
 * 5 fmul (float32 x float32), 6 dmul (float64 x float64).  Returns 0, or -1
 * for an unknown op. */
ND_SHIM_EXPORT int nd_shim_apply(int op, const void *a, const void *b, void *out, long n)
{
    for (long i = 0; i < n; ++i) {
        switch (op) {
        case 0: ((float *)out)[i] = nd_h2f(((const unsigned short *)a)[i]); break;
        case 1: ((unsigned short *)out)[i] = nd_f2h(((const float *)a)[i]); break;
        case 2: ((unsigned short *)out)[i] = nd_d2h(((const double *)a)[i]); break;
        case 3: ((double *)out)[i] = nd_f2d(((const float *)a)[i]); break;
        case 4: ((float *)out)[i] = nd_d2f(((const double *)a)[i]); break;
        case 5: ((float *)out)[i] = nd_fmul(((const float *)a)[i], ((const float *)b)[i]); break;
        case 6: ((double *)out)[i] = nd_dmul(((const double *)a)[i], ((const double *)b)[i]); break;
        default: return -1;
        }
    }
    return 0;
}

/* ======================================================= context switch
 *
 * A fiber is a stack and a saved context.  On x86-64 and AArch64 the switch
 * is a few instructions of assembly that save the callee-saved registers on
 * the current stack, store its stack pointer, load the other one and restore
 * its registers (the floating-point control state is never changed by the
 * kernels, so it is not switched); elsewhere, with -DND_SHIM_UCONTEXT, or
 * when compiled for x86 shadow stacks (-fcf-protection=return or full, which
 * the assembly switch does not maintain), POSIX ucontext is used: the same
 * semantics, one system call per switch.
 */
#if !defined(ND_SHIM_UCONTEXT) && (defined(__x86_64__) || defined(__aarch64__)) \
    && !(defined(__CET__) && (__CET__ & 2))
#define ND_SHIM_ASM_SWITCH 1
#else
#define ND_SHIM_ASM_SWITCH 0
#include <ucontext.h>
#endif

namespace nd_shim {

#if ND_SHIM_ASM_SWITCH
/* nd_shim_switch(&from, to): save the current context in *from, resume to. */
extern "C" void nd_shim_switch(void **from, void *to) asm("nd_shim_switch_impl");

#if defined(__x86_64__)
asm(".text\n"
    ".p2align 4\n"
    "nd_shim_switch_impl:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n");
constexpr int FRAME_WORDS = 8;      /* r15 r14 r13 r12 rbx rbp, return address, pad */
constexpr int ENTRY_WORD = 6;
#else  /* __aarch64__ */
asm(".text\n"
    ".p2align 4\n"
    "nd_shim_switch_impl:\n"
    "    sub sp, sp, #160\n"
    "    stp x19, x20, [sp, #0]\n"
    "    stp x21, x22, [sp, #16]\n"
    "    stp x23, x24, [sp, #32]\n"
    "    stp x25, x26, [sp, #48]\n"
    "    stp x27, x28, [sp, #64]\n"
    "    stp x29, x30, [sp, #80]\n"
    "    stp d8, d9, [sp, #96]\n"
    "    stp d10, d11, [sp, #112]\n"
    "    stp d12, d13, [sp, #128]\n"
    "    stp d14, d15, [sp, #144]\n"
    "    mov x9, sp\n"
    "    str x9, [x0]\n"
    "    mov sp, x1\n"
    "    ldp x19, x20, [sp, #0]\n"
    "    ldp x21, x22, [sp, #16]\n"
    "    ldp x23, x24, [sp, #32]\n"
    "    ldp x25, x26, [sp, #48]\n"
    "    ldp x27, x28, [sp, #64]\n"
    "    ldp x29, x30, [sp, #80]\n"
    "    ldp d8, d9, [sp, #96]\n"
    "    ldp d10, d11, [sp, #112]\n"
    "    ldp d12, d13, [sp, #128]\n"
    "    ldp d14, d15, [sp, #144]\n"
    "    add sp, sp, #160\n"
    "    ret\n");
constexpr int FRAME_WORDS = 20;     /* x19..x30, d8..d15; x30 (the return address) is word 11 */
constexpr int ENTRY_WORD = 11;
#endif

struct context {
    void *sp;
};

/* Make ctx start entry() (which must never return) on the stack [lo, lo + size). */
static inline void context_init(context *ctx, char *lo, size_t size, void (*entry)())
{
    uintptr_t top = ((uintptr_t)(lo + size)) & ~(uintptr_t)15;
    void **frame = (void **)(top - FRAME_WORDS * sizeof(void *));
    for (int i = 0; i < FRAME_WORDS; ++i) frame[i] = nullptr;
    frame[ENTRY_WORD] = (void *)entry;
    ctx->sp = frame;
}

static inline void context_switch(context *from, context *to) { nd_shim_switch(&from->sp, to->sp); }

#else  /* ucontext */

struct context {
    ucontext_t uc;
};

static inline void context_init(context *ctx, char *lo, size_t size, void (*entry)())
{
    getcontext(&ctx->uc);
    ctx->uc.uc_stack.ss_sp = lo;
    ctx->uc.uc_stack.ss_size = size;
    ctx->uc.uc_link = nullptr;      /* entry never returns */
    makecontext(&ctx->uc, entry, 0);
}

static inline void context_switch(context *from, context *to) { swapcontext(&from->uc, &to->uc); }

#endif

}  // namespace nd_shim

/* ================================================================ scheduler
 *
 * A launch runs the grid's blocks one after another, in a fixed order (x
 * fastest, then y, then z; reversed when the launcher asks for the reverse
 * order).  The threads of a block are cooperative fibers on the calling OS
 * thread: each has its own stack (mmap'ed once, with a guard page below it,
 * and reused by every block) and its own saved context.
 *
 * A block runs in phases.  In a phase the scheduler resumes every thread
 * that has not returned, one at a time, in thread-index order (or reversed),
 * and each runs until it either calls __syncthreads() -- which records the
 * barrier's source location and swaps back to the scheduler -- or returns
 * from the kernel, which drops it from the block (later barriers no longer
 * wait for it).  When every remaining thread has stopped at a barrier, the
 * phase is over; all of them must stand at the same __syncthreads() (file
 * and line), otherwise the launch fails with "divergent __syncthreads()",
 * which CUDA leaves undefined.  The next phase resumes them all.  So:
 *   - everything a thread writes before a barrier is visible to every
 *     thread after it (one address space, and the switch is a full compiler
 *     memory barrier);
 *   - between two barriers the threads do not interleave: a kernel that
 *     reads another thread's shared-memory write without a barrier in
 *     between gets the value of whichever ran first, which differs between
 *     the forward and the reverse order -- that is how the tests find
 *     missing barriers; the same holds for blocks that depend on each other;
 *   - the whole schedule is a function of the launch, so results are
 *     reproducible bit for bit.
 * There is one scheduler per process; launches must not overlap (a kernel
 * cannot launch another, and the launcher holds a lock).
 */
namespace nd_shim {

typedef void (*thunk_fn)(void **args);

struct kernel_entry {
    const char *name;               /* the name expression, e.g. "nd_bn_stats<float>" */
    thunk_fn thunk;                 /* unpacks the arguments and calls the kernel */
    const char *(*signature)();     /* its parameter codes, see param_code */
};

enum fiber_state { READY, AT_BARRIER, DONE };

struct fiber {
    context ctx;
    fiber_state state;
    const char *file;               /* the barrier it waits at (AT_BARRIER) */
    int line;
};

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr unsigned MAX_THREADS = 1024;

struct scheduler {
    context main;                   /* the launching context */
    fiber fibers[MAX_THREADS];
    char *stacks = nullptr;         /* MAX_THREADS x (guard page + stack) */
    size_t page = 0;
    int current = -1;               /* the running fiber, -1 outside a block */
    thunk_fn thunk = nullptr;       /* the kernel of the running launch */
    void **args = nullptr;
    int reverse = 0;                /* run threads and blocks in reverse order */
    char error[1024] = "";
};

inline scheduler sched;

__attribute__((format(printf, 1, 2))) static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sched.error, sizeof sched.error, fmt, ap);
    va_end(ap);
}

static bool ensure_stacks()
{
    if (sched.stacks) return true;
    sched.page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t slot = sched.page + STACK_BYTES;
    void *p = mmap(nullptr, slot * MAX_THREADS, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return false;
    for (unsigned t = 0; t < MAX_THREADS; ++t)   /* a guard page below each stack */
        mprotect((char *)p + t * slot, sched.page, PROT_NONE);
    sched.stacks = (char *)p;
    return true;
}

/* The body of every fiber: the kernel, then back to the scheduler for good. */
[[noreturn]] static void fiber_main()
{
    sched.thunk(sched.args);
    fiber &f = sched.fibers[sched.current];
    f.state = DONE;
    context_switch(&f.ctx, &sched.main);
    abort();                        /* a finished fiber is never resumed */
}

/* __syncthreads(): stop at this barrier until the next phase. */
__attribute__((noinline, unused)) static void syncthreads_at(const char *file, int line)
{
    asm volatile("" ::: "memory");
    if (sched.current < 0) {
        fprintf(stderr, "cuda_shim: __syncthreads() outside a kernel (%s:%d)\n", file, line);
        abort();
    }
    fiber &f = sched.fibers[sched.current];
    f.state = AT_BARRIER;
    f.file = file;
    f.line = line;
    context_switch(&f.ctx, &sched.main);
    asm volatile("" ::: "memory");
}

static inline uint3 thread_index(unsigned t)
{
    uint3 i;
    i.x = t % blockDim.x;
    i.y = (t / blockDim.x) % blockDim.y;
    i.z = t / (blockDim.x * blockDim.y);
    return i;
}

/* Runs one block (blockIdx is set); false, with sched.error, on failure. */
static bool run_block(unsigned nthreads)
{
    const size_t slot = sched.page + STACK_BYTES;
    for (unsigned t = 0; t < nthreads; ++t) {
        fiber &f = sched.fibers[t];
        context_init(&f.ctx, sched.stacks + t * slot + sched.page, STACK_BYTES, fiber_main);
        f.state = READY;
    }
    for (;;) {                      /* one phase */
        const fiber *first = nullptr;
        unsigned first_t = 0;
        for (unsigned k = 0; k < nthreads; ++k) {
            const unsigned t = sched.reverse ? nthreads - 1 - k : k;
            fiber &f = sched.fibers[t];
            if (f.state == DONE) continue;
            threadIdx = thread_index(t);
            sched.current = (int)t;
            context_switch(&sched.main, &f.ctx);
            sched.current = -1;
            if (f.state == DONE) continue;
            if (!first) {
                first = &f;
                first_t = t;
            } else if (f.line != first->line || strcmp(f.file, first->file) != 0) {
                fail("divergent __syncthreads() in block (%u, %u, %u): thread %u waits at "
                     "%s:%d, thread %u at %s:%d", blockIdx.x, blockIdx.y, blockIdx.z, first_t,
                     first->file, first->line, t, f.file, f.line);
                return false;       /* the suspended fibers are abandoned */
            }
        }
        if (!first) return true;    /* every thread has returned */
        for (unsigned t = 0; t < nthreads; ++t)
            if (sched.fibers[t].state == AT_BARRIER) sched.fibers[t].state = READY;
    }
}

/* Runs kernel k on the grid; 0, or nonzero with sched.error. */
static int launch(const kernel_entry &k, const unsigned grid[3], const unsigned block[3],
                  void **args)
{
    if (sched.thunk) {
        fail("a launch is already running (kernels cannot launch kernels here)");
        return 2;
    }
    const unsigned long long nthreads = (unsigned long long)block[0] * block[1] * block[2];
    if (nthreads == 0 || nthreads > MAX_THREADS || grid[0] == 0 || grid[1] == 0 || grid[2] == 0) {
        fail("invalid launch configuration: grid (%u, %u, %u), block (%u, %u, %u)",
             grid[0], grid[1], grid[2], block[0], block[1], block[2]);
        return 3;
    }
    if (!ensure_stacks()) {
        fail("cannot map the fiber stacks");
        return 4;
    }
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    sched.thunk = k.thunk;
    sched.args = args;
    sched.error[0] = '\0';
    bool ok = true;
    const unsigned long long nblocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    for (unsigned long long i = 0; ok && i < nblocks; ++i) {
        const unsigned long long b = sched.reverse ? nblocks - 1 - i : i;
        blockIdx.x = (unsigned)(b % grid[0]);
        blockIdx.y = (unsigned)((b / grid[0]) % grid[1]);
        blockIdx.z = (unsigned)(b / ((unsigned long long)grid[0] * grid[1]));
        ok = run_block((unsigned)nthreads);
    }
    sched.thunk = nullptr;
    sched.args = nullptr;
    return ok ? 0 : 1;
}

/* ------------------------------------------- kernel argument unpacking */
/* Like cudaLaunchKernel, a launch passes one pointer per kernel parameter,
 * pointing at the parameter's value; it is copied into the parameter's own
 * type (memcpy: nothing is assumed of the caller's alignment). */
template <typename P>
static inline P arg(void *p)
{
    P v;
    memcpy(&v, p, sizeof v);
    return v;
}

template <typename F> struct arity;
template <typename... P> struct arity<void (*)(P...)> {
    static constexpr size_t value = sizeof...(P);
};

template <typename... P, size_t... I>
static inline void apply(void (*f)(P...), void **args, std::index_sequence<I...>)
{
    f(arg<P>(args[I])...);
}

template <auto F>
static void thunk(void **args)
{
    apply(F, args, std::make_index_sequence<arity<decltype(F)>::value>{});
}

/* Parameter codes, checked by the launcher against what it is given:
 *   f<n> floating, i<n> signed / u<n> unsigned integer, b<n> bool,
 *   r<n> any other type (its bytes), all of n bytes;
 *   p<code> a pointer to <code>, pc<code> to const <code>, pv / pcv void. */
template <typename T>
static std::string type_code()
{
    typedef std::remove_cv_t<T> U;
    if constexpr (std::is_void_v<U>) return "v";
    else if constexpr (std::is_same_v<U, bool>) return "b" + std::to_string(sizeof(U));
    else if constexpr (std::is_floating_point_v<U>) return "f" + std::to_string(sizeof(U));
    else if constexpr (std::is_integral_v<U>)
        return (std::is_signed_v<U> ? "i" : "u") + std::to_string(sizeof(U));
    else return "r" + std::to_string(sizeof(U));
}

template <typename P>
static std::string param_code()
{
    if constexpr (std::is_pointer_v<P>) {
        typedef std::remove_pointer_t<P> T;
        return std::string("p") + (std::is_const_v<T> ? "c" : "") + type_code<T>();
    } else {
        return type_code<P>();
    }
}

template <typename... P>
static std::string signature_of(void (*)(P...))
{
    std::string s;
    ((s += (s.empty() ? "" : ","), s += param_code<P>()), ...);
    return s;
}

template <auto F>
static const char *signature()
{
    static const std::string s = signature_of(F);
    return s.c_str();
}

}  // namespace nd_shim

#define __syncthreads() ::nd_shim::syncthreads_at(__FILE__, __LINE__)

/* The table of the module's kernels, which the launcher generates after the
 * kernel source, one entry per name expression:
 *     const nd_shim::kernel_entry nd_shim_kernels[] = {
 *         {"k<float>", &nd_shim::thunk<&k<float>>, &nd_shim::signature<&k<float>>}, ...};
 *     const int nd_shim_nkernels = ...;                                       */
extern const nd_shim::kernel_entry nd_shim_kernels[];
extern const int nd_shim_nkernels;

/* ------------------------------------------------------ ctypes entry points */
ND_SHIM_EXPORT int nd_shim_kernel_count() { return nd_shim_nkernels; }
ND_SHIM_EXPORT const char *nd_shim_kernel_name(int i) { return nd_shim_kernels[i].name; }
ND_SHIM_EXPORT const char *nd_shim_kernel_signature(int i)
{
    return nd_shim_kernels[i].signature();
}
ND_SHIM_EXPORT const char *nd_shim_error() { return nd_shim::sched.error; }
ND_SHIM_EXPORT void nd_shim_set_reverse(int reverse) { nd_shim::sched.reverse = reverse; }
ND_SHIM_EXPORT const char *nd_shim_context_switch() { return ND_SHIM_ASM_SWITCH ? "asm" : "ucontext"; }

/* Launches the kernel of name expression `name` on grid x block (three
 * values each) with args, one pointer per kernel parameter pointing at its
 * value (cudaLaunchKernel's convention).  Returns 0, or nonzero with the
 * reason in nd_shim_error(). */
ND_SHIM_EXPORT int nd_shim_launch(const char *name, const unsigned *grid, const unsigned *block,
                                  void **args)
{
    for (int i = 0; i < nd_shim_nkernels; ++i)
        if (strcmp(nd_shim_kernels[i].name, name) == 0)
            return nd_shim::launch(nd_shim_kernels[i], grid, block, args);
    nd_shim::fail("no kernel named %s in this module", name);
    return 5;
}

#endif /* ND_CUDA_SHIM_H */
