/*
 * nd_common.cu -- types and helpers shared by the CUDA kernels of normdrop.
 *
 * This file holds no kernels.  The loader (normdrop/_cuda/_loader.py) builds
 * the source of each module as
 *     nd_philox.h + nd_common.cu + <module>.cu
 * so the #include lines below are skipped there (their guards are already
 * defined); they let a module also be compiled on its own with
 * -I normdrop/include -I normdrop/_cuda.
 *
 * No CUDA header is included: the kernels compile under NVRTC with no
 * toolkit include path (the nvidia-cuda-nvrtc wheels ship none).  float16 is
 * therefore carried as its 16 bits (nd_half) and converted with PTX cvt
 * instructions, which is what cuda_fp16.h does too.
 *
 * Conversions and the dropout multiply are written as inline PTX without
 * .ftz: CuPy compiles every RawModule with -ftz=true, which would flush
 * float32 subnormals in compiler-generated float32 instructions, and the
 * results must equal NumPy's (IEEE, subnormals kept) bit for bit.
 */
#ifndef ND_COMMON_CU
#define ND_COMMON_CU

#ifndef ND_PHILOX_H
#include "nd_philox.h"
#endif

typedef long long nd_i64;

/* Threads per block of every kernel (the launch geometry of
 * normdrop/_cuda/__init__.py relies on it). */
#define ND_THREADS 256

/* Operand geometry, as in src_c/normdrop.h:
 *   ND_ROWS:   value (m, c) at m * sn + c            (s == 1, sc == 1)
 *   ND_PLANES: value (n, c, j) at n * sn + c * sc + j  (j < s)
 *   ND_CLAST:  value (n, c, j) at n * sn + j * ss + c  (groups > 0 only) */
#define ND_ROWS 0
#define ND_PLANES 1
#define ND_CLAST 2

/* float16 storage: the bits of an IEEE binary16 value. */
struct nd_half {
    unsigned short bits;
};

/* 16-byte vector carriers for the dropout kernels' aligned accesses. */
struct alignas(16) nd_vec_f32x4 { float v[4]; };
struct alignas(16) nd_vec_f64x2 { double v[2]; };
struct alignas(8) nd_vec_u16x4 { unsigned short v[4]; };

#if defined(__CUDACC_RTC__) || defined(__CUDACC__)
#define ND_DEV static __device__ __forceinline__
#define ND_DEVM __device__ __forceinline__

/* binary16 -> binary32 (exact). */
ND_DEV float nd_h2f(unsigned short h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
/* binary32 -> binary16, round to nearest even (overflow gives +-inf). */
ND_DEV unsigned short nd_f2h(float f)
{
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
/* binary64 -> binary16, rounded once (round to nearest even). */
ND_DEV unsigned short nd_d2h(double d)
{
    unsigned short h;
    asm("cvt.rn.f16.f64 %0, %1;" : "=h"(h) : "d"(d));
    return h;
}
/* binary32 -> binary64 (exact, subnormals kept). */
ND_DEV double nd_f2d(float f)
{
    double d;
    asm("cvt.f64.f32 %0, %1;" : "=d"(d) : "f"(f));
    return d;
}
/* binary64 -> binary32, round to nearest even, subnormals kept. */
ND_DEV float nd_d2f(double d)
{
    float f;
    asm("cvt.rn.f32.f64 %0, %1;" : "=f"(f) : "d"(d));
    return f;
}
/* IEEE products, rounded once, never contracted into an FMA, no flush. */
ND_DEV float nd_fmul(float a, float b)
{
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
ND_DEV double nd_dmul(double a, double b)
{
    double r;
    asm("mul.rn.f64 %0, %1, %2;" : "=d"(r) : "d"(a), "d"(b));
    return r;
}
#else
/* Any other C++ compiler: nd_h2f, nd_f2h, nd_d2h, nd_f2d, nd_d2f, nd_fmul
 * and nd_dmul must be declared before this file, with the semantics above. */
#define ND_DEV static inline
#define ND_DEVM inline
#endif

/*
 * nd_type<T>: the arithmetic of data type T.
 *   acc          type of per-thread sums and elementwise arithmetic:
 *                float for float16, double for float32 and float64;
 *   to_acc(v)    v converted exactly to acc;
 *   to_f64(v)    v converted exactly to double;
 *   from_acc(a)  a rounded once to T;
 *   from_f64(d)  d rounded once to T;
 *   zero()       +0 in T;
 *   scale(x, s)  x * s as NumPy computes it in T: one IEEE multiply rounded
 *                to T.  For float16 the product of two binary16 values has at
 *                most 22 significant bits, so the float32 product is exact
 *                and rounding it to binary16 once is the correctly rounded
 *                float16 product (NumPy's float16 multiply also converts to
 *                float32, multiplies and rounds once to float16).
 *   load4/store4 four consecutive values through one aligned vector access
 *                (p must be aligned to 4 * sizeof(T), at most 16 bytes).
 */
template <typename T> struct nd_type;

template <> struct nd_type<nd_half> {
    typedef float acc;
    ND_DEV float to_acc(nd_half v) { return nd_h2f(v.bits); }
    ND_DEV double to_f64(nd_half v) { return nd_f2d(nd_h2f(v.bits)); }
    ND_DEV nd_half from_acc(float a) { nd_half h; h.bits = nd_f2h(a); return h; }
    ND_DEV nd_half from_f64(double d) { nd_half h; h.bits = nd_d2h(d); return h; }
    ND_DEV nd_half zero() { nd_half h; h.bits = 0; return h; }
    ND_DEV nd_half scale(nd_half x, nd_half s)
    {
        nd_half h;
        h.bits = nd_f2h(nd_fmul(nd_h2f(x.bits), nd_h2f(s.bits)));
        return h;
    }
    ND_DEV void load4(const nd_half *p, nd_half v[4])
    {
        const nd_vec_u16x4 q = *reinterpret_cast<const nd_vec_u16x4 *>(p);
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k].bits = q.v[k];
    }
    ND_DEV void store4(nd_half *p, const nd_half v[4])
    {
        nd_vec_u16x4 q;
#pragma unroll
        for (int k = 0; k < 4; ++k) q.v[k] = v[k].bits;
        *reinterpret_cast<nd_vec_u16x4 *>(p) = q;
    }
};

template <> struct nd_type<float> {
    typedef double acc;
    ND_DEV double to_acc(float v) { return nd_f2d(v); }
    ND_DEV double to_f64(float v) { return nd_f2d(v); }
    ND_DEV float from_acc(double a) { return nd_d2f(a); }
    ND_DEV float from_f64(double d) { return nd_d2f(d); }
    ND_DEV float zero() { return 0.0f; }
    ND_DEV float scale(float x, float s) { return nd_fmul(x, s); }
    ND_DEV void load4(const float *p, float v[4])
    {
        const nd_vec_f32x4 q = *reinterpret_cast<const nd_vec_f32x4 *>(p);
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = q.v[k];
    }
    ND_DEV void store4(float *p, const float v[4])
    {
        nd_vec_f32x4 q;
#pragma unroll
        for (int k = 0; k < 4; ++k) q.v[k] = v[k];
        *reinterpret_cast<nd_vec_f32x4 *>(p) = q;
    }
};

template <> struct nd_type<double> {
    typedef double acc;
    ND_DEV double to_acc(double v) { return v; }
    ND_DEV double to_f64(double v) { return v; }
    ND_DEV double from_acc(double a) { return a; }
    ND_DEV double from_f64(double d) { return d; }
    ND_DEV double zero() { return 0.0; }
    ND_DEV double scale(double x, double s) { return nd_dmul(x, s); }
    ND_DEV void load4(const double *p, double v[4])
    {
        const nd_vec_f64x2 a = reinterpret_cast<const nd_vec_f64x2 *>(p)[0];
        const nd_vec_f64x2 b = reinterpret_cast<const nd_vec_f64x2 *>(p)[1];
        v[0] = a.v[0]; v[1] = a.v[1]; v[2] = b.v[0]; v[3] = b.v[1];
    }
    ND_DEV void store4(double *p, const double v[4])
    {
        nd_vec_f64x2 a, b;
        a.v[0] = v[0]; a.v[1] = v[1]; b.v[0] = v[2]; b.v[1] = v[3];
        reinterpret_cast<nd_vec_f64x2 *>(p)[0] = a;
        reinterpret_cast<nd_vec_f64x2 *>(p)[1] = b;
    }
};

/* Between an accumulation type (float or double) and double. */
ND_DEV double nd_acc_f64(float a) { return nd_f2d(a); }
ND_DEV double nd_acc_f64(double a) { return a; }
ND_DEV void nd_set_acc(float *a, double d) { *a = nd_d2f(d); }
ND_DEV void nd_set_acc(double *a, double d) { *a = d; }

ND_DEV nd_i64 nd_min_i64(nd_i64 a, nd_i64 b) { return a < b ? a : b; }

#endif /* ND_COMMON_CU */
