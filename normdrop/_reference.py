"""The reference backend: the contract of :mod:`normdrop._contract` written
with array-API standard operations only, for readability rather than speed.

It serves arrays of any array-API library that has no compiled backend, and it
is the specification the C and CUDA kernels are tested against.  Statistics
and all arithmetic are carried out in float64 and rounded to the input's dtype
once, at the end.

Every operand is seen as ``(n, c, s)`` (C order of its logical shape); a
statistics group is a channel (``groups == 0``) or a sample and a run of
``c // groups`` channels, so the per-group arrays are ``x`` reshaped to
``(n, groups, c // groups, s)`` and reduced over the last two axes.
Dropout ``bits`` are the packed keep mask (uint8, ``ceil(size / 8)`` bytes,
value ``i`` in bit ``i % 8`` of byte ``i // 8``).
"""
from __future__ import annotations

import math
import warnings

from . import _philox
from ._interop import AccumulationWarning as _AccumulationWarning
from ._interop import float64_available as _float64_available

NAME = "reference"


def supported_dtypes(xp) -> tuple:
    """float32 and float64, and float16 where the library has it."""
    half = getattr(xp, "float16", None)
    return (xp.float32, xp.float64) + ((half,) if half is not None else ())


# --------------------------------------------------------------- grouping
def _acc_dtype(xp):
    if _float64_available(xp):
        return xp.float64
    warnings.warn(f"{xp.__name__} has no float64 here (for JAX: jax.config.update("
                  "'jax_enable_x64', True)); normdrop's reference computes in float32, without "
                  "the float64 accumulation of its other backends", _AccumulationWarning,
                  stacklevel=4)
    return xp.float32


def _view(xp, a, geom):
    """a (any logical shape) in float64 as ``(n, G, cg, s)``: G groups of cg
    channels (G = 1, cg = c when statistics are per channel)."""
    n, c, s, groups = geom
    g = groups if groups else 1
    return xp.reshape(xp.astype(a, _acc_dtype(xp)), (n, g, c // g if g else 0, s))


def _group_axes(geom):
    """The axes of the (n, G, cg, s) view that a statistics group spans."""
    return (0, 1, 3) if geom.groups == 0 else (2, 3)


def _per_group(xp, v, geom):
    """A per-group array broadcast against the (n, G, cg, s) view."""
    if geom.groups == 0:
        return xp.reshape(v, (1, 1, geom.c, 1))
    return xp.reshape(v, (geom.n, geom.groups, 1, 1))


def _per_channel(xp, v, geom):
    """A (c,) array broadcast against the (n, G, cg, s) view."""
    g = geom.groups if geom.groups else 1
    return xp.reshape(xp.astype(v, _acc_dtype(xp)), (1, g, geom.c // g if g else 0, 1))


def _flat_groups(xp, v, geom):
    """Reduced (over _group_axes) values as the (ngroups,) array."""
    return xp.reshape(v, (geom.ngroups,))


def _channel_sum(xp, v, geom):
    """Sum over samples and positions of a (n, G, cg, s) array: (c,)."""
    return xp.reshape(xp.sum(v, axis=(0, 3)), (geom.c,))


# -------------------------------------------------------------- the steps
def moments(xp, x, geom):
    """(count, mean, m2): per group the count, mean and sum of squared
    deviations, float64 (ngroups,)."""
    v = _view(xp, x, geom)
    axes = _group_axes(geom)
    count = geom.count
    if count == 0:
        z = xp.zeros((geom.ngroups,), dtype=_acc_dtype(xp), device=_device(xp, x))
        return 0, z, z
    mean = xp.sum(v, axis=axes) / count
    centered = v - _per_group(xp, mean, geom)
    m2 = xp.sum(centered * centered, axis=axes)
    return count, _flat_groups(xp, mean, geom), _flat_groups(xp, m2, geom)


def normalize(xp, x, geom, mean, invstd, gamma, beta):
    """out = gamma[ch] * ((x - mean[grp]) * invstd[grp]) + beta[ch]."""
    v = _view(xp, x, geom)
    x_hat = (v - _per_group(xp, mean, geom)) * _per_group(xp, invstd, geom)
    out = _per_channel(xp, gamma, geom) * x_hat + _per_channel(xp, beta, geom)
    return xp.astype(xp.reshape(out, tuple(x.shape)), x.dtype)


def grad_reduce(xp, dout, x, geom, mean, invstd, gamma):
    """(s1, s2, dgamma, dbeta): per group s1 = sum(dout * w),
    s2 = sum(dout * w * (x - mean)) with w = gamma[ch] (groups > 0) or 1
    (per channel); per channel dgamma = sum(dout * x_hat), dbeta = sum(dout)."""
    d = _view(xp, dout, geom)
    centered = _view(xp, x, geom) - _per_group(xp, mean, geom)
    x_hat = centered * _per_group(xp, invstd, geom)
    axes = _group_axes(geom)
    w = d if geom.groups == 0 else d * _per_channel(xp, gamma, geom)
    s1 = _flat_groups(xp, xp.sum(w, axis=axes), geom)
    s2 = _flat_groups(xp, xp.sum(w * centered, axis=axes), geom)
    dgamma = _channel_sum(xp, d * x_hat, geom)
    dbeta = _channel_sum(xp, d, geom)
    return s1, s2, xp.astype(dgamma, x.dtype), xp.astype(dbeta, x.dtype)


def grad_input(xp, dout, x, geom, mean, invstd, gamma, s1, s2, train, count):
    """dx from the group sums.  With M = count values per group, S1 and S2 the sums
    with gamma applied (gamma * s1, gamma * s2 for per-channel groups) and
    x_hat = (x - mean) * invstd:
    train: dx = invstd / M * (M * gamma * dout - S1 - x_hat * S2 * invstd);
    test:  dx = gamma * invstd * dout."""
    d = _view(xp, dout, geom)
    iv = _per_group(xp, invstd, geom)
    g = _per_channel(xp, gamma, geom)
    M = count
    if not train or M == 0:
        dx = g * iv * d
    else:
        x_hat = (_view(xp, x, geom) - _per_group(xp, mean, geom)) * iv
        a1, a2 = _per_group(xp, s1, geom), _per_group(xp, s2, geom)
        if geom.groups == 0:        # gamma constant over the group: factored out
            dx = g * iv / M * (M * d - a1 - x_hat * (a2 * iv))
        else:
            dx = iv / M * (M * g * d - a1 - x_hat * (a2 * iv))
    return xp.astype(xp.reshape(dx, tuple(x.shape)), x.dtype)


def norm_train_fwd(xp, x, geom, gamma, beta, eps):
    """(out, mean, var, invstd): moments, then normalize."""
    from ._contract import finish_moments
    count, mean, m2 = moments(xp, x, geom)
    var, invstd = finish_moments(xp, count, mean, m2, eps)
    return normalize(xp, x, geom, mean, invstd, gamma, beta), mean, var, invstd


def norm_bwd(xp, dout, x, geom, mean, invstd, gamma, train):
    """(dx, dgamma, dbeta): grad_reduce, then grad_input."""
    s1, s2, dgamma, dbeta = grad_reduce(xp, dout, x, geom, mean, invstd, gamma)
    return (grad_input(xp, dout, x, geom, mean, invstd, gamma, s1, s2, train, geom.count),
            dgamma, dbeta)


def running_update(xp, old, batch, momentum, dtype):
    """momentum * old + (1 - momentum) * batch, in batch's dtype, rounded to
    dtype (old None counts as zeros)."""
    new = (1.0 - momentum) * batch
    if old is not None:
        new = new + momentum * xp.astype(old, batch.dtype)
    return xp.astype(new, dtype)


# ---------------------------------------------------------------- dropout
def _device(xp, a):
    import array_api_compat as aac
    return aac.device(a)


def dropout_fwd(xp, x, p, seed, offset):
    """(out, bits): out = x * s where kept else 0, s = 1/p rounded to x's
    dtype; bits the packed keep mask (words from index offset)."""
    n = math.prod(x.shape)
    keep = _philox.keep_flags(xp, n, p, seed, _device(xp, x), offset)
    scale = xp.asarray(1.0 / p, dtype=x.dtype, device=_device(xp, x))
    flat = xp.reshape(x, (-1,))
    out = xp.where(keep, flat * scale, xp.zeros_like(flat))
    return xp.reshape(out, x.shape), _philox.pack_bits(xp, keep)


def dropout_bwd(xp, dout, bits, p):
    """dx = dout * s where the packed mask keeps, else 0 (s as in dropout_fwd)."""
    n = math.prod(dout.shape)
    keep = _philox.unpack_bits(xp, bits, n)
    scale = xp.asarray(1.0 / p, dtype=dout.dtype, device=_device(xp, dout))
    flat = xp.reshape(dout, (-1,))
    return xp.reshape(xp.where(keep, flat * scale, xp.zeros_like(flat)), dout.shape)


def dropout_mask(xp, shape, p, seed, offset, device=None):
    """Boolean keep mask of the given shape (words from index offset)."""
    n = math.prod(shape)
    return xp.reshape(_philox.keep_flags(xp, n, p, seed, device, offset), tuple(shape))
