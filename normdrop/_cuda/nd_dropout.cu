/*
 * nd_dropout.cu -- dropout kernels of the CUDA backend (CuPy arrays).
 *
 * The same generator and keep rule as the C kernels (src_c/nd_dropout.c),
 * from the one header nd_philox.h: value i (flat C-order index) takes lane
 * i & 3 of Philox4x32-10 block i >> 2 under the key (seed & 0xffffffff,
 * seed >> 32), and is kept iff that word is < threshold = floor(p * 2**32).
 * Packed bits: value i is bit i % 8 of byte i / 8; bits past n are 0.
 *
 * Each thread takes four consecutive values, so a warp reads and writes
 * 32 * 4 contiguous values (one aligned vector access per thread where the
 * pointers allow, scalar accesses otherwise).  Value i uses the word of
 * generator index offset + i: one Philox block per thread when offset is a
 * multiple of 4, else the two blocks its four indices straddle
 * (nd_dropout_words4).
 *
 * Kernels (T = nd_half, float, double), launched with ND_THREADS threads:
 *   nd_dropout_fwd<T>   out and packed bits
 *   nd_dropout_bwd<T>   dx from dout and packed bits
 *   nd_dropout_mask     0/1 bytes (a bool array)
 */
#ifndef ND_COMMON_CU
#include "nd_common.cu"
#endif

/* Values per block and loop step of nd_dropout_fwd (4 per thread). */
#define ND_DROP_TILE (4 * ND_THREADS)

/* The words of generator indices j0 .. j0 + 3 (Philox blocks j0 / 4 and, when
 * j0 is not a multiple of 4, the next one). */
ND_DEV void nd_dropout_words4(nd_u64 j0, nd_u32 k0, nd_u32 k1, nd_u32 w[4])
{
    nd_u32 a[4], b[4];
    nd_dropout_block(j0 >> 2, k0, k1, a);
    const int sh = (int)(j0 & 3u);
    if (sh == 0) {
#pragma unroll
        for (int e = 0; e < 4; ++e) w[e] = a[e];
        return;
    }
    nd_dropout_block((j0 >> 2) + 1u, k0, k1, b);
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = sh + e < 4 ? a[sh + e] : b[sh + e - 4];
}

/* Whether p and q allow the aligned vector accesses of load4/store4. */
template <typename T>
ND_DEV int nd_vec_ok(const T *p, const T *q)
{
    const nd_u64 a = (nd_u64)(const void *)p | (nd_u64)(const void *)q;
    return (a & (4 * sizeof(T) - 1)) == 0;
}

/*
 * nd_dropout_fwd: out[i] = keep(i) ? x[i] * s : 0,  s = 1/p rounded once to
 * T; keep(i): the word of index offset + i < nd_dropout_threshold(p)
 * (nd_philox.h);
 * bits[i / 8] bit i % 8 = keep(i).
 * Layout: x, out C-contiguous, n values; bits ceil(n / 8) bytes, 4-byte
 * aligned.  Grid: any number of blocks (grid-stride over tiles of
 * ND_DROP_TILE values); block: ND_THREADS.  Each tile's 128 bit bytes are
 * assembled in shared memory and written as 32 words by 32 threads.
 * Where x and out are aligned for it, one vector access per thread.
 * IN x, n, seed, offset, p; OUT out, bits.
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_dropout_fwd(const T *__restrict__ x, T *__restrict__ out, unsigned char *__restrict__ bits,
               nd_i64 n, nd_u64 seed, nd_u64 offset, double p)
{
    __shared__ unsigned char nib[ND_THREADS];
    const nd_u32 k0 = (nd_u32)seed, k1 = (nd_u32)(seed >> 32);
    const nd_u64 threshold = nd_dropout_threshold(p);
    const T s = nd_type<T>::from_f64(1.0 / p);
    const int vec = nd_vec_ok(x, out);
    const nd_i64 ntiles = (n + ND_DROP_TILE - 1) / ND_DROP_TILE;
    const nd_i64 nbytes = (n + 7) >> 3;
    const int tid = (int)threadIdx.x;
    for (nd_i64 t = blockIdx.x; t < ntiles; t += gridDim.x) {
        const nd_i64 i0 = t * ND_DROP_TILE + 4 * (nd_i64)tid;
        unsigned int keep4 = 0u;
        if (i0 < n) {
            nd_u32 w[4];
            nd_dropout_words4(offset + (nd_u64)i0, k0, k1, w);
            const int m = n - i0 >= 4 ? 4 : (int)(n - i0);
            T v[4], o[4];
            if (vec && m == 4) {
                nd_type<T>::load4(x + i0, v);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) v[e] = e < m ? x[i0 + e] : nd_type<T>::zero();
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int keep = e < m && nd_dropout_keep(w[e], threshold);
                keep4 |= (unsigned int)keep << e;
                o[e] = keep ? nd_type<T>::scale(v[e], s) : nd_type<T>::zero();
            }
            if (vec && m == 4) {
                nd_type<T>::store4(out + i0, o);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (e < m) out[i0 + e] = o[e];
            }
        }
        nib[tid] = (unsigned char)keep4;
        __syncthreads();
        if (tid < ND_DROP_TILE / 32) {
            /* word tid of the tile: bytes 4 tid .. 4 tid + 3, byte k made of
             * the nibbles of threads 2k (low) and 2k + 1 (high). */
            const nd_i64 b0 = t * (ND_DROP_TILE / 8) + 4 * (nd_i64)tid;
            if (b0 < nbytes) {
                unsigned int word = 0u;
                for (int k = 0; k < 4; ++k) {
                    const unsigned int byte = (unsigned int)nib[8 * tid + 2 * k]
                                              | ((unsigned int)nib[8 * tid + 2 * k + 1] << 4);
                    word |= byte << (8 * k);
                }
                if (b0 + 4 <= nbytes) {
                    *reinterpret_cast<unsigned int *>(bits + b0) = word;
                } else {
                    for (int k = 0; b0 + k < nbytes; ++k)
                        bits[b0 + k] = (unsigned char)(word >> (8 * k));
                }
            }
        }
        __syncthreads();
    }
}

/*
 * nd_dropout_bwd: dx[i] = bit(i) ? dout[i] * s : 0,  s = 1/p rounded once to T.
 * Layout: dout, dx C-contiguous, n values; bits as written by nd_dropout_fwd.
 * Grid-stride over groups of four values (one nibble of bits each).
 * Where dout and dx are aligned for it, one vector access per thread.
 * IN dout, bits, n, p; OUT dx.
 */
template <typename T>
__global__ void __launch_bounds__(ND_THREADS)
nd_dropout_bwd(const T *__restrict__ dout, const unsigned char *__restrict__ bits,
               T *__restrict__ dx, nd_i64 n, double p)
{
    const T s = nd_type<T>::from_f64(1.0 / p);
    const int vec = nd_vec_ok(dout, dx);
    const nd_i64 ngroups = (n + 3) >> 2;
    const nd_i64 stride = (nd_i64)gridDim.x * ND_THREADS;
    for (nd_i64 q = (nd_i64)blockIdx.x * ND_THREADS + threadIdx.x; q < ngroups; q += stride) {
        const nd_i64 i0 = 4 * q;
        const unsigned int nibble = ((unsigned int)bits[i0 >> 3] >> (unsigned int)(i0 & 4)) & 15u;
        const int m = n - i0 >= 4 ? 4 : (int)(n - i0);
        T v[4], o[4];
        if (vec && m == 4) {
            nd_type<T>::load4(dout + i0, v);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) v[e] = e < m ? dout[i0 + e] : nd_type<T>::zero();
        }
#pragma unroll
        for (int e = 0; e < 4; ++e)
            o[e] = ((nibble >> e) & 1u) ? nd_type<T>::scale(v[e], s) : nd_type<T>::zero();
        if (vec && m == 4) {
            nd_type<T>::store4(dx + i0, o);
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (e < m) dx[i0 + e] = o[e];
        }
    }
}

/*
 * nd_dropout_mask: mask[i] = keep(i) as a 0/1 byte, n values (a C-contiguous
 * bool array, 4-byte aligned), words from generator index offset.
 * Grid-stride over groups of four values.
 * IN n, seed, offset, p; OUT mask.
 */
__global__ void __launch_bounds__(ND_THREADS)
nd_dropout_mask(unsigned char *__restrict__ mask, nd_i64 n, nd_u64 seed, nd_u64 offset,
                double p)
{
    const nd_u64 threshold = nd_dropout_threshold(p);
    const nd_u32 k0 = (nd_u32)seed, k1 = (nd_u32)(seed >> 32);
    const nd_i64 nblocks = (n + 3) >> 2;
    const nd_i64 stride = (nd_i64)gridDim.x * ND_THREADS;
    for (nd_i64 q = (nd_i64)blockIdx.x * ND_THREADS + threadIdx.x; q < nblocks; q += stride) {
        const nd_i64 i0 = 4 * q;
        nd_u32 w[4];
        nd_dropout_words4(offset + (nd_u64)i0, k0, k1, w);
        if (n - i0 >= 4) {
            unsigned int word = 0u;
            for (int e = 0; e < 4; ++e)
                word |= (unsigned int)nd_dropout_keep(w[e], threshold) << (8 * e);
            *reinterpret_cast<unsigned int *>(mask + i0) = word;
        } else {
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (i0 + e < n) mask[i0 + e] = (unsigned char)nd_dropout_keep(w[e], threshold);
        }
    }
}
