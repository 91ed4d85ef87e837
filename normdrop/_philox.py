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


def dropout_words(xp, n: int, seed: int, device=None):
    """The Philox word of each of the first n values (flat C order), as int64
    in [0, 2**32): value i takes lane i % 4 of block i // 4, whose counter is
    (block mod 2**32, block // 2**32, 0, 0)."""
    nblocks = (n + 3) // 4
    b = xp.arange(nblocks, dtype=xp.int64, device=device)
    zero = xp.zeros_like(b)
    w = philox4x32_10(xp, b & _LO32, b >> 32, zero, zero, seed & _LO32, seed >> 32)
    return xp.reshape(xp.stack(w, axis=1), (-1,))[:n]


def keep_flags(xp, n, p, seed, device=None):
    """The keep flag (bool) of each of the first n values."""
    return dropout_words(xp, n, seed, device) < keep_threshold(p)


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
