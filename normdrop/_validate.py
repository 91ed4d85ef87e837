"""Every check of normdrop's public arguments, in one place (DESIGN section 5).

The checks run before anything is computed or stored, so that a call that
raises leaves ``bn_param`` exactly as it was.  Each function returns the
normalized values the ops need.
"""
from __future__ import annotations

import math
import os
import numbers
from collections.abc import MutableMapping

import numpy as np

MODES = ("train", "test")
_NO_SEED = object()


def _type_name(obj) -> str:
    t = type(obj)
    mod = t.__module__.split(".")[0]
    return t.__name__ if mod == "builtins" else f"{mod}.{t.__name__}"


_DTYPE_NAMES: dict = {}


def _dtype_name(dt) -> str:
    """'float32' for numpy.float32, array_api_strict.float32, torch.float32, ...
    (remembered per dtype object: str() of a NumPy dtype costs microseconds,
    and the backward checks two on every call)."""
    key = (type(dt), dt)   # the type first: no comparison across libraries
    try:
        return _DTYPE_NAMES[key]
    except (KeyError, TypeError):   # new, or unhashable
        pass
    # a scalar type (numpy.float32, which a namespace may give for its
    # dtypes) by its name, not its "<class 'numpy.float32'>"
    name = dt.__name__ if isinstance(dt, type) else str(dt).rsplit(".", 1)[-1]
    if len(_DTYPE_NAMES) < 256:
        try:
            _DTYPE_NAMES[key] = name
        except TypeError:
            pass
    return name


def _is_number(v) -> bool:
    t = type(v)
    return t is float or t is int or (isinstance(v, numbers.Real) and t is not bool)


def _real(v) -> float:
    """float(v) of a real number, with +-inf for an integer beyond the float
    range (where float() raises OverflowError): range checks then give
    their ValueError."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _shown(v) -> str:
    """repr(v) for an error message, an int too long to read as its size."""
    r = repr(v)
    if len(r) > 40 and isinstance(v, numbers.Integral):
        return f"an integer of {len(str(abs(int(v))))} digits"
    return r


def param_dict(param, name: str) -> MutableMapping:
    if type(param) is not dict and not isinstance(param, MutableMapping):
        raise TypeError(f"{name} must be a dict, got {_type_name(param)}")
    return param


def mode(param, name: str) -> str:
    if "mode" not in param:
        raise KeyError(f"{name}['mode'] is required: one of {MODES!r}")
    m = param["mode"]
    if not isinstance(m, str) or m not in MODES:
        raise ValueError(f"{name}['mode'] must be one of {MODES!r}, got {m!r}")
    return m


def keep_probability(param) -> float:
    if "p" not in param:
        raise ValueError("dropout_param['p'] is required: the keep probability, in (0, 1]")
    return p_value(param["p"])


def p_value(p) -> float:
    if not _is_number(p):
        raise ValueError(f"p must be a real number in (0, 1] (the keep probability), got {p!r}")
    v = _real(p)
    if not (0.0 < v <= 1.0):
        raise ValueError(f"p must be in (0, 1] (the keep probability), got {_shown(p)}")
    return v


def seed_value(seed) -> int:
    """A seed as a Python int in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer in [0, 2**64), got {_type_name(seed)} {seed!r}")
    s = int(seed)
    if not (0 <= s < 2**64):
        raise ValueError(f"seed must be in [0, 2**64), got {s}")
    return s


def optional_seed(param):
    """The seed in param as an int, or _NO_SEED when absent (or None)."""
    seed = param.get("seed")
    return _NO_SEED if seed is None else seed_value(seed)


def offset_value(offset, size: int) -> int:
    """A dropout offset: an int >= 0 with offset + size <= 2**64."""
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise TypeError(f"offset must be an int in [0, 2**64 - size], got {_type_name(offset)} "
                        f"{offset!r}")
    o = int(offset)
    if o < 0 or o + size > 2**64:
        raise ValueError(f"offset must be in [0, 2**64 - size] (size {size}), got {o}")
    # offset 2**64 is valid only for an empty array (the empty last shard),
    # which draws no words: 0 then, which the kernels' 64-bit counter holds
    return o if o < 2**64 else 0


def eps_value(param, name: str | None = "bn_param") -> float:
    """param['eps'] (1e-5 when absent), a finite number > 0; errors name it
    name['eps'], or eps where name is None (a layer's argument)."""
    eps = param.get("eps", 1e-5)
    label = "eps" if name is None else f"{name}['eps']"
    if not _is_number(eps):
        raise TypeError(f"{label} must be a real number > 0, got {_type_name(eps)}")
    v = _real(eps)
    if not (v > 0.0 and math.isfinite(v)):
        raise ValueError(f"{label} must be a finite number > 0, got {_shown(eps)}")
    return v


def momentum_value(param, name: str | None = "bn_param") -> float:
    """param['momentum'] (0.9 when absent), in [0, 1]; labelled as eps_value."""
    m = param.get("momentum", 0.9)
    label = "momentum" if name is None else f"{name}['momentum']"
    if not _is_number(m):
        raise TypeError(f"{label} must be a real number in [0, 1], got {_type_name(m)}")
    v = _real(m)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{label} must be in [0, 1], got {_shown(m)}")
    return v


def floating_x(x, name: str, supported: tuple, xp) -> None:
    """TypeError unless x's dtype is one of the backend's floating dtypes."""
    dt = x.dtype
    if getattr(dt, "isnative", True) is False:     # NumPy big-endian data: same type
        dt = dt.newbyteorder("=")
    if dt in supported:                            # (identity, then ==, per entry)
        return
    names = ", ".join(_dtype_name(d) for d in supported)
    raise TypeError(f"{name} has dtype {_dtype_name(x.dtype)}; supported floating dtypes "
                    f"here: {names}")


def real_dtype(a, name: str, xp) -> None:
    """TypeError unless a has a real (integer or floating, not bool) dtype."""
    dt = a.dtype
    if type(a) is np.ndarray:               # NumPy arrays: the fast path
        real = dt.kind in "iuf"
    elif (kind := getattr(dt, "kind", None)) is not None and \
            type(dt).__module__.startswith("numpy"):
        real = kind in "iuf"
    else:
        real = not xp.isdtype(dt, "bool") and xp.isdtype(dt, ("integral", "real floating"))
    if not real:
        raise TypeError(f"{name} has dtype {_dtype_name(dt)}; it must be a real (integer or "
                        "floating) dtype")


def ndim(x, expected: int, name: str, what: str) -> None:
    if x.ndim != expected:
        dims = "(N, D)" if expected == 2 else "(N, C, H, W)"
        raise ValueError(f"{what} expects {name} of shape {dims}, got shape {tuple(x.shape)}")


def rows_ndim(x, name: str, what: str) -> None:
    """At least one axis: (N, D) or (..., D), normalized over the last."""
    if x.ndim < 1:
        raise ValueError(f"{what} expects {name} of shape (N, D) or (..., D), got shape "
                         f"{tuple(x.shape)}")


def group_count(G, C: int, what: str) -> int:
    """G, the number of groups: an int (not a bool) with G > 0 and C % G == 0."""
    if isinstance(G, bool) or not isinstance(G, numbers.Integral):
        raise TypeError(f"{what}: G must be an int (the number of groups), got "
                        f"{_type_name(G)} {G!r}")
    G = int(G)
    if G <= 0 or C % G != 0:
        raise ValueError(f"{what}: G must be a positive divisor of the channel count; got "
                         f"C = {C} and G = {G}")
    return G


def channel_param(a, name: str, C: int, spatial: bool, xp):
    """gamma/beta/running statistics: shape (C,), (1, C) or, for spatial ops,
    (1, C, 1, 1); any real dtype.  Returns a (C,) view."""
    real_dtype(a, name, xp)
    shape = tuple(a.shape)
    ok = shape == (C,) or shape == (1, C) or (spatial and shape == (1, C, 1, 1))
    if not ok:
        allowed = f"({C},) or (1, {C})" + (f" or (1, {C}, 1, 1)" if spatial else "")
        raise ValueError(f"{name} must have shape {allowed}, got shape {shape}")
    return a if a.ndim == 1 else xp.reshape(a, (C,))


def train_count(count: int, shape: tuple) -> None:
    """ValueError unless a training batch has more than one value per channel."""
    if count <= 1:
        raise ValueError(
            "expected more than 1 value per channel when training, got input of shape "
            f"{shape}")


def dout_shape(dout, expected: tuple, op: str) -> None:
    if tuple(dout.shape) != tuple(expected):
        raise ValueError(f"{op}: dout has shape {tuple(dout.shape)}, but the forward "
                         f"output had shape {tuple(expected)}")


def cache_kind(cache, cls, op: str, forward: str) -> None:
    if not isinstance(cache, cls) or getattr(cache, "op", None) != forward:
        got = getattr(cache, "op", None) or _type_name(cache)
        raise TypeError(f"{op} needs the cache returned by {forward}, got a cache of {got}")


def cached_bits(bits, n: int) -> None:
    """The packed mask of a dropout cache holds the bits of n values."""
    need = (n + 7) // 8
    size = int(math.prod(bits.shape))
    if _dtype_name(bits.dtype) != "uint8" or bits.ndim != 1 or size < need:
        raise ValueError(f"dropout_backward: the cache's mask (dtype {_dtype_name(bits.dtype)}, "
                         f"shape {tuple(bits.shape)}) does not hold the {need} bytes of a mask "
                         f"of {n} values; was the cache changed?")


def _accumulation_dtype(name: str, xp) -> bool:
    """Whether name is the dtype of the statistics a forward on xp made:
    float64, or float32 where the library has no float64 (JAX without x64,
    on the reference implementation)."""
    if name == "float64":
        return True
    from ._interop import float64_available
    return name == "float32" and not float64_available(xp)


def cached_norm(cache, xp) -> None:
    """The arrays of a normalization cache are the ones its forward made."""
    geom = cache.geom
    x = cache.x
    problems = []
    if tuple(x.shape) != cache.out_shape:
        problems.append(f"x has shape {tuple(x.shape)}, the forward's was {cache.out_shape}")
    for name in ("mean", "invstd"):
        a = getattr(cache, name)
        if tuple(a.shape) != (geom.ngroups,) or not _accumulation_dtype(_dtype_name(a.dtype), xp):
            problems.append(f"{name} has shape {tuple(a.shape)} and dtype "
                            f"{_dtype_name(a.dtype)}, expected ({geom.ngroups},) float64")
    g = cache.gamma
    if tuple(g.shape) != (geom.c,) or g.dtype != x.dtype:
        problems.append(f"gamma has shape {tuple(g.shape)}, expected ({geom.c},)")
    if problems:
        raise ValueError(f"{cache.op} cache was changed: " + "; ".join(problems))


def output_path_problem(path) -> str | None:
    """Why a file cannot be written at path (for a command's --json or
    --plot, asked before the work that fills it), or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{path} is a folder"
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    target = path if os.path.exists(path) else folder
    if not os.access(target, os.W_OK):
        return f"{target} is not writable"
    return None
