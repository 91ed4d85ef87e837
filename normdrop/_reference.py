"""The reference implementation: every op written with array-API standard
operations only, for readability rather than speed.

It serves arrays of any array-API library that has no compiled backend, and it
is the specification the C and CUDA kernels are tested against.  Statistics
and all arithmetic are carried out in float64 and rounded to the input's dtype
once, at the end.

Backend interface (shared by ``normdrop._cpu`` and ``normdrop._cuda``):
``x`` is ``(N, D)`` or ``(N, C, H, W)`` with channels on axis 1; ``gamma``,
``beta``, running statistics are ``(C,)`` arrays already of x's dtype; the
per-channel ``mean``/``var``/``invstd`` the backends return are ``(C,)`` arrays
of :func:`stats_dtype`; dropout ``bits`` are the packed keep mask (uint8,
``ceil(size / 8)`` bytes, value ``i`` in bit ``i % 8`` of byte ``i // 8``).
"""
from __future__ import annotations

import math

NAME = "reference"

# Philox4x32-10 constants (Salmon et al. 2011), as in nd_philox.h.
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
_LO32 = 0xFFFFFFFF


def supported_dtypes(xp) -> tuple:
    half = getattr(xp, "float16", None)
    return (xp.float32, xp.float64) + ((half,) if half is not None else ())


def stats_dtype(xp, dtype):
    return xp.float64


def _axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _per_channel(xp, v, x):
    """v of shape (C,) broadcast against x along axis 1."""
    return xp.reshape(v, (1, -1) if x.ndim == 2 else (1, -1, 1, 1))


# ----------------------------------------------------------------- batchnorm
def bn_train(xp, x, gamma, beta, eps):
    """Training forward: out = gamma * (x - mean) / sqrt(var + eps) + beta with
    the batch mean and biased variance per channel.  Returns (out, mean, var,
    invstd), the last three float64 (C,)."""
    x64 = xp.astype(x, xp.float64)
    axes = _axes(x)
    mean = xp.mean(x64, axis=axes)
    centered = x64 - _per_channel(xp, mean, x)
    var = xp.mean(centered * centered, axis=axes)
    invstd = 1.0 / xp.sqrt(var + eps)
    x_hat = centered * _per_channel(xp, invstd, x)
    out = _per_channel(xp, xp.astype(gamma, xp.float64), x) * x_hat \
        + _per_channel(xp, xp.astype(beta, xp.float64), x)
    return xp.astype(out, x.dtype), mean, var, invstd


def bn_test(xp, x, gamma, beta, running_mean, running_var, eps):
    """Test-mode forward with the running statistics.  Returns (out, mean,
    invstd), the last two float64 (C,)."""
    mean = xp.astype(running_mean, xp.float64)
    invstd = 1.0 / xp.sqrt(xp.astype(running_var, xp.float64) + eps)
    x_hat = (xp.astype(x, xp.float64) - _per_channel(xp, mean, x)) * _per_channel(xp, invstd, x)
    out = _per_channel(xp, xp.astype(gamma, xp.float64), x) * x_hat \
        + _per_channel(xp, xp.astype(beta, xp.float64), x)
    return xp.astype(out, x.dtype), mean, invstd


def running_update(xp, old, batch, momentum, dtype):
    """momentum * old + (1 - momentum) * batch, in batch's dtype, rounded to
    dtype (old None counts as zeros)."""
    new = (1.0 - momentum) * batch
    if old is not None:
        new = new + momentum * xp.astype(old, batch.dtype)
    return xp.astype(new, dtype)


def bn_backward(xp, dout, x, gamma, mean, invstd, train):
    """Gradients of the forward that produced (mean, invstd).

    With M values per channel and x_hat = (x - mean) * invstd:
    dbeta = sum(dout), dgamma = sum(dout * x_hat);
    train: dx = gamma * invstd / M * (M * dout - dbeta - x_hat * dgamma);
    test:  dx = gamma * invstd * dout.
    """
    axes = _axes(x)
    d64 = xp.astype(dout, xp.float64)
    x_hat = (xp.astype(x, xp.float64) - _per_channel(xp, mean, x)) * _per_channel(xp, invstd, x)
    dbeta = xp.sum(d64, axis=axes)
    dgamma = xp.sum(d64 * x_hat, axis=axes)
    g = _per_channel(xp, xp.astype(gamma, xp.float64) * invstd, x)
    if train:
        m = math.prod(x.shape) // x.shape[1]
        dx = g / m * (m * d64 - _per_channel(xp, dbeta, x) - x_hat * _per_channel(xp, dgamma, x))
    else:
        dx = g * d64
    return xp.astype(dx, x.dtype), xp.astype(dgamma, x.dtype), xp.astype(dbeta, x.dtype)


# ------------------------------------------------------------------- Philox
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


def keep_threshold(p: float) -> int:
    """T = floor(p * 2**32): a value is kept iff its word is < T."""
    return math.floor(p * 4294967296.0)


def _keep_flat(xp, n, p, seed, device=None):
    return dropout_words(xp, n, seed, device) < keep_threshold(p)


def pack_bits(xp, keep):
    """Pack a flat bool array: value i -> bit i % 8 of byte i // 8."""
    n = keep.shape[0]
    pad = (-n) % 8
    k = xp.astype(keep, xp.uint8)
    if pad:
        k = xp.concat([k, xp.zeros(pad, dtype=xp.uint8, device=_device(xp, keep))])
    k = xp.reshape(k, (-1, 8))
    weights = xp.asarray([1, 2, 4, 8, 16, 32, 64, 128], dtype=xp.uint8, device=_device(xp, keep))
    return xp.sum(k * weights, axis=1, dtype=xp.uint8)


def unpack_bits(xp, bits, n):
    """Inverse of pack_bits: the first n flags as bool."""
    shifts = xp.asarray([0, 1, 2, 3, 4, 5, 6, 7], dtype=xp.uint8, device=_device(xp, bits))
    flags = (xp.reshape(bits, (-1, 1)) >> shifts) & 1
    return xp.reshape(flags, (-1,))[:n] == 1


def _device(xp, a):
    import array_api_compat as aac
    return aac.device(a)


# ------------------------------------------------------------------ dropout
def dropout_train(xp, x, p, seed):
    """Inverted dropout: out = x * s where kept else 0, s = 1/p rounded to x's
    dtype.  Returns (out, bits)."""
    n = math.prod(x.shape)
    keep = _keep_flat(xp, n, p, seed, _device(xp, x))
    scale = xp.asarray(1.0 / p, dtype=x.dtype, device=_device(xp, x))
    flat = xp.reshape(x, (-1,))
    out = xp.where(keep, flat * scale, xp.zeros_like(flat))
    return xp.reshape(out, x.shape), pack_bits(xp, keep)


def dropout_backward(xp, dout, bits, p):
    """dx = dout * s where kept else 0 (s as in dropout_train)."""
    n = math.prod(dout.shape)
    keep = unpack_bits(xp, bits, n)
    scale = xp.asarray(1.0 / p, dtype=dout.dtype, device=_device(xp, dout))
    flat = xp.reshape(dout, (-1,))
    return xp.reshape(xp.where(keep, flat * scale, xp.zeros_like(flat)), dout.shape)


def dropout_mask(xp, shape, p, seed, device=None):
    """Boolean keep mask of the given shape."""
    n = math.prod(shape)
    return xp.reshape(_keep_flat(xp, n, p, seed, device), tuple(shape))
