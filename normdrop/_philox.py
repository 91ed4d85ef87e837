"""The dropout generator in array-API operations: Philox4x32-10 (Salmon et
al. 2011) and the keep rule of DESIGN section 3, for the reference backend.
The C and CUDA kernels compute the same words from ``nd_philox.h``.
"""
from __future__ import annotations

import math

# Philox4x32-10 constants (Salmon et al. 2011), as in nd_philox.h.
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
_LO32 = 0xFFFFFFFF


def keep_threshold(p: float) -> int:
    """T = floor(p * 2**32): a value is kept iff its word is < T."""
    return math.floor(p * 4294967296.0)


def _mulhilo32(xp, c, m: int):
    """(hi, lo) 32-bit halves of the 64-bit product of the 32-bit words c
    (held in int64) and the 32-bit constant m.

    The words are held in int64, not uint32/uint64: every array-API library has
    full int64 arithmetic, while some (PyTorch) lack shifts on unsigned 64-bit
    integers.  m is split into 16-bit halves so no partial product exceeds
    2**48:  c * m = (c * m_hi) * 2**16 + c * m_lo.
    """
    t_lo = c * (m & 0xFFFF)                      # < 2**48
    t_hi = c * (m >> 16)                         # < 2**48
    s = t_lo + ((t_hi & 0xFFFF) << 16)           # < 2**49
    return (t_hi >> 16) + (s >> 32), s & _LO32


def philox4x32_10(xp, c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 of the counters (c0, c1, c2, c3) under the key (k0, k1).

    The counter words are integer arrays of one shape with values in
    [0, 2**32) (any integer dtype that holds them; computed in int64).
    Returns the four output words as int64 arrays with values in [0, 2**32).
    """
    c0, c1, c2, c3 = (xp.astype(c, xp.int64) for c in (c0, c1, c2, c3))
    for r in range(10):
        rk0 = (k0 + r * PHILOX_W0) & _LO32
        rk1 = (k1 + r * PHILOX_W1) & _LO32
        hi0, lo0 = _mulhilo32(xp, c0, PHILOX_M0)
        hi1, lo1 = _mulhilo32(xp, c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ rk0, lo1, hi0 ^ c3 ^ rk1, lo0
    return c0, c1, c2, c3


def _mulhilo32_u32(xp, c, m: int):
    """(hi, lo) of the 32-bit words c (uint32) times the constant m, in uint32
    arithmetic only (for libraries without int64, e.g. JAX without x64): 16-bit
    limbs, so no product or partial sum exceeds 2**32 - 1."""
    u16 = 0xFFFF
    c_lo, c_hi = c & u16, c >> 16
    m_lo, m_hi = m & u16, m >> 16
    p0, p1, p2, p3 = c_lo * m_lo, c_lo * m_hi, c_hi * m_lo, c_hi * m_hi   # each < 2**32
    mid = (p0 >> 16) + (p1 & u16) + (p2 & u16)                           # < 3 * 2**16
    lo = (p0 & u16) | ((mid & u16) << 16)
    hi = p3 + (p1 >> 16) + (p2 >> 16) + (mid >> 16)                      # the exact high word
    return hi, lo


def _philox_u32(xp, c0, c1, k0: int, k1: int):
    """Philox4x32-10 of counters (c0, c1, 0, 0), uint32 words (as
    philox4x32_10, without int64)."""
    u32 = xp.uint32
    c2 = xp.zeros_like(c0)
    c3 = xp.zeros_like(c0)
    for r in range(10):
        rk0 = xp.asarray((k0 + r * PHILOX_W0) & _LO32, dtype=u32)
        rk1 = xp.asarray((k1 + r * PHILOX_W1) & _LO32, dtype=u32)
        hi0, lo0 = _mulhilo32_u32(xp, c0, PHILOX_M0)
        hi1, lo1 = _mulhilo32_u32(xp, c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ rk0, lo1, hi0 ^ c3 ^ rk1, lo0
    return c0, c1, c2, c3


def dropout_words(xp, n: int, seed: int, device=None, offset: int = 0):
    """The Philox word of each of the n values from generator index
    ``offset`` (flat C order): value i takes lane (offset + i) % 4 of block
    (offset + i) // 4, whose counter is (block mod 2**32, block // 2**32, 0, 0).
    int64 in [0, 2**32), or uint32 where the library has no int64."""
    if n == 0:
        return xp.zeros((0,), dtype=xp.int64 if int64_ok(xp) else xp.uint32, device=device)
    b0, lane0 = offset >> 2, offset & 3
    nblocks = ((offset + n - 1) >> 2) - b0 + 1
    k0, k1 = seed & _LO32, seed >> 32
    if int64_ok(xp):
        b = xp.arange(nblocks, dtype=xp.int64, device=device) + b0     # b0 < 2**62
        zero = xp.zeros_like(b)
        w = philox4x32_10(xp, b & _LO32, b >> 32, zero, zero, k0, k1)
    else:
        k = xp.arange(nblocks, dtype=xp.uint32, device=device)
        lo0, hi0 = b0 & _LO32, b0 >> 32
        room = _LO32 - lo0                        # blocks before the low word wraps
        lo = k + xp.asarray(lo0, dtype=xp.uint32)                         # wraps mod 2**32
        hi = xp.where(k > xp.asarray(room, dtype=xp.uint32),
                      xp.asarray((hi0 + 1) & _LO32, dtype=xp.uint32),
                      xp.asarray(hi0, dtype=xp.uint32))
        w = _philox_u32(xp, lo, hi, k0, k1)
    words = xp.reshape(xp.stack(w, axis=1), (-1,))
    return words[lane0:lane0 + n]


def int64_ok(xp) -> bool:
    """Whether xp has real int64 arrays (not JAX without x64)."""
    from ._interop import int64_available
    return int64_available(xp)


def keep_flags(xp, n, p, seed, device=None, offset: int = 0):
    """The keep flag (bool) of each of the n values from index offset."""
    words = dropout_words(xp, n, seed, device, offset)
    t = keep_threshold(p)
    if t >= 2**32:                                # p = 1: every word is below 2**32
        return xp.ones(words.shape, dtype=xp.bool, device=device)
    return words < xp.asarray(t, dtype=words.dtype, device=device)


def _device(a):
    import array_api_compat as aac
    return aac.device(a)


def pack_bits(xp, keep):
    """Pack a flat bool array: value i -> bit i % 8 of byte i // 8."""
    n = keep.shape[0]
    pad = (-n) % 8
    k = xp.astype(keep, xp.uint8)
    if pad:
        k = xp.concat([k, xp.zeros(pad, dtype=xp.uint8, device=_device(keep))])
    k = xp.reshape(k, (-1, 8))
    weights = xp.asarray([1, 2, 4, 8, 16, 32, 64, 128], dtype=xp.uint8, device=_device(keep))
    return xp.sum(k * weights, axis=1, dtype=xp.uint8)


def unpack_bits(xp, bits, n):
    """Inverse of pack_bits: the first n flags as bool."""
    shifts = xp.asarray([0, 1, 2, 3, 4, 5, 6, 7], dtype=xp.uint8, device=_device(bits))
    flags = (xp.reshape(bits, (-1, 1)) >> shifts) & 1
    return xp.reshape(flags, (-1,))[:n] == 1
