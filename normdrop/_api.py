"""The public ops: validate, dispatch, compose the backend contract's steps
(:mod:`normdrop._contract`), build the cache and store running statistics.
Backends only compute.

Every normalization op is described by one :class:`_NormOp` (how its
arguments are checked and which :class:`~normdrop._contract.Geometry` its
input has) and runs through :func:`_norm_forward` / :func:`_norm_backward`.
"""
from __future__ import annotations

import contextlib
import math
import operator

import numpy as np

from . import _contract as K
from . import _reference
from . import _validate as V
from . import _dispatch
from ._dispatch import Route, _numpy_route, backend_by_name, backend_for, reference_forced
from ._interop import _NO_STREAM, _detached


class _Cache:
    """Base of the caches: read-only once made (a backward is always either
    the right answer for the forward that made the cache or a clear error),
    picklable and deep-copyable (the backend, namespace and array adapter are
    kept by name)."""

    __slots__ = ()
    _fields: tuple = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"a {type(self).__name__} is read-only (it belongs to the forward "
                             "that made it)")

    def __delattr__(self, name):
        raise AttributeError(f"a {type(self).__name__} is read-only")

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        # the slots' setters, in _fields order (bypassing the read-only __setattr__)
        cls._setters = tuple(cls.__dict__[f].__set__ for f in cls._fields)

    def _set(self, *values):
        """Fill the fields, in _fields order (once, when the cache is made)."""
        for put, v in zip(self._setters, values):
            put(self, v)

    @property
    def backend(self):
        return backend_by_name(self.backend_name)

    @property
    def xp(self):
        return _namespace_by_name(self.xp_name)

    def _check_kept(self, what):
        """Raise where the cache's views of the caller's memory lost it (see
        NormCache)."""

    def __reduce__(self):
        if getattr(self, "comm", None) is not None:
            raise TypeError(f"a {type(self).__name__} of a synchronized batchnorm holds an MPI "
                            "communicator and cannot be pickled or copied")
        self._check_kept(f"pickling or copying a {type(self).__name__}")
        return (_restore_cache, (type(self), tuple(getattr(self, f) for f in self._fields)))


def _restore_cache(cls, values):
    c = object.__new__(cls)
    c._set(*values)
    return c


def _namespace_by_name(name: str):
    import sys
    mod = sys.modules.get(name)
    if mod is None:
        import importlib
        mod = importlib.import_module(name)
    return mod


def _own_view(a):
    """a NumPy or CuPy array as a view the caller cannot reshape under the
    cache (``a.shape = ...`` on the caller's array leaves it as it was)."""
    if type(a) is np.ndarray or type(a).__module__.startswith("cupy"):
        return a.view()
    return a


class NormCache(_Cache):
    """Opaque cache of a normalization forward, for the matching backward.

    Holds references, not copies: ``x`` as given to the forward (a view of
    it, in the backend's arrays), ``gamma`` as a (C,) array in x's dtype, and
    the per-group ``mean`` and ``invstd`` (float64) -- O(C + groups) memory
    beyond ``x``, never an ``x_hat``.  Read-only; picklable unless it belongs
    to a synchronized batchnorm (``comm``).
    """

    _fields = ("op", "mode", "backend_name", "xp_name", "adapter", "_x", "_gamma", "gamma_shape",
               "mean", "invstd", "out_shape", "geom", "comm", "count")
    __slots__ = _fields

    # x and gamma, views of the caller's tensors where the forward had them
    # (PyTorch's, through DLPack's C exchange), are asked whether their memory
    # is still there when read from outside (and when pickled): a storage
    # reallocated in place since (resize_) would leave them reading freed
    # memory.  The kernels' callers read the slots after one such check.
    @property
    def x(self):
        """The forward's x, in the backend's arrays (a view of its memory)."""
        self._check_kept("reading the cache's x")
        return self._x

    @property
    def gamma(self):
        """gamma as a (C,) array of x's dtype, in the backend's arrays."""
        self._check_kept("reading the cache's gamma")
        return self._gamma

    def _check_kept(self, what):
        ad = self.adapter
        if ad is None or ad.kind != "cpu":
            return
        for name, a in (("x", self._x), ("gamma", self._gamma)):
            if not ad.kept_intact((a,)):
                raise ValueError(f"{what}: the memory of the forward's {name} (a {ad.library} "
                                 "tensor) was reallocated after the forward (a resize_ to a "
                                 "larger size, say), so the cache no longer holds its values; "
                                 "run the forward again")

    def __init__(self, op, mode, route, x, gamma, gamma_shape, mean, invstd, geom, comm=None,
                 count=None):
        # in _fields order
        self._set(op, mode, route.backend.NAME, route.xp.__name__, route.adapter, _own_view(x),
                  gamma, tuple(gamma_shape), mean, invstd, tuple(x.shape), geom, comm,
                  geom.count if count is None else count)

    def __repr__(self):
        return (f"<{self.op} cache: mode={self.mode!r}, backend={self.backend_name!r}, "
                f"shape={self.out_shape}>")


class DropoutCache(_Cache):
    """Opaque cache of a dropout forward: the keep mask packed to one bit per
    value (``bits``, uint8) in training, nothing in test mode, and ``p``.
    Read-only and picklable."""

    _fields = ("op", "mode", "backend_name", "xp_name", "adapter", "p", "seed", "offset",
               "bits", "shape", "dtype")
    __slots__ = _fields

    def __init__(self, mode, route, p, seed, offset, bits, shape, dtype):
        # in _fields order
        self._set("dropout_forward", mode, route.backend.NAME, route.xp.__name__, route.adapter,
                  p, seed, offset, bits, tuple(shape), dtype)

    def __repr__(self):
        return (f"<dropout cache: mode={self.mode!r}, p={self.p}, seed={self.seed}, "
                f"shape={self.shape}>")


def _cache_route(cache, what, arrays):
    """The route a backward takes: the forward's backend, and the caller's
    library (the arrays in ``arrays`` must be of it)."""
    if cache.adapter is None and cache.backend_name == "cpu" and cache.xp_name == "numpy":
        route = backend_for(arrays)    # same library and device as the cached arrays
        if route is _numpy_route():
            return route
        for n, a in arrays:            # (a test-mode dropout cache holds no array to compare)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{what}: {n} ({type(a).__module__.split('.')[0]}."
                                f"{type(a).__name__}) is not an array of the library of the "
                                "forward's input (numpy)")
        return Route(cache.backend, cache.xp, None)   # NumPy arrays, the reference forced
    route = Route(cache.backend, cache.xp, cache.adapter)
    if cache.adapter is None or cache.adapter.kind == "reference":
        backend_for(arrays)            # same library and device as the cached arrays
    else:
        for n, a in arrays:
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                raise TypeError(f"{n} must be an array (NumPy, CuPy or another array-API "
                                f"library), got {V._type_name(a)}")
            if not cache.adapter.owns(a):
                raise TypeError(f"{what}: {n} ({type(a).__module__.split('.')[0]}."
                                f"{type(a).__name__}) is not an array of the library and device "
                                f"of the forward's input ({cache.adapter.library}, "
                                f"{cache.adapter.kind})")
    return route


def _converted(cache) -> bool:
    """Whether the cache holds the backend's arrays converted from another
    library's (so the caller's arrays cannot be compared with them)."""
    return cache.adapter is not None and cache.adapter.kind != "reference"


# ------------------------------------------------------------------ dropout
def dropout_forward(x, dropout_param):
    """Inverted dropout (cs231n API).

    Parameters
    ----------
    x : array of any shape, float32 or float64 (float16 too on CuPy)
        NumPy, CuPy, PyTorch, JAX or other array-API array.
    dropout_param : dict
        ``p``: keep probability in (0, 1]; ``mode``: ``'train'`` or ``'test'``;
        ``seed`` (optional): int in [0, 2**64).  Without a seed, one is drawn from
        NumPy's global legacy generator (so ``np.random.seed`` keeps runs
        reproducible).  ``offset`` (optional, default 0): value ``i`` uses the
        generator's word for index ``offset + i``, so a shard holding rows
        ``[a, b)`` of an ``(N, D)`` batch, called with ``offset = a * D``, gets
        those rows of the whole batch's mask; ``offset + x.size <= 2**64``.
        ``dropout_param`` is not modified.

    Returns
    -------
    out : array, x's shape and dtype, C order, of x's library
        Training: ``x * s`` where the value is kept and 0 elsewhere, ``s = 1/p``
        rounded to x's dtype.  Test mode: ``x`` itself (a PyTorch tensor that
        requires grad: ``x.detach()``, the same data without the graph).
    cache : DropoutCache
        For :func:`dropout_backward`; holds the mask as one bit per value.

    Notes
    -----
    Value ``i`` (flat C-order index) is kept iff the Philox4x32-10 word for
    ``offset + i`` under the seed is below ``floor(p * 2**32)``: the same seed,
    shape, offset and ``p`` give the same mask on every backend and thread
    count.
    """
    route = backend_for((("x", x),))
    backend, xp = route.backend, route.xp
    V.param_dict(dropout_param, "dropout_param")
    mode = V.mode(dropout_param, "dropout_param")
    p = V.keep_probability(dropout_param)
    seed = V.optional_seed(dropout_param)
    xn = route.native(x, "x", floating=True)
    V.floating_x(xn, "x", backend.supported_dtypes(xp), xp)
    offset = V.offset_value(dropout_param.get("offset", 0), math.prod(xn.shape))
    if mode == "test":
        out = x if route.adapter is None else _detached(x)
        return out, DropoutCache(mode, route, p, None, offset, None, xn.shape, xn.dtype)
    if seed is V._NO_SEED:
        seed = int(np.random.randint(0, 2**64, dtype=np.uint64))
    with _stream(route, x):
        out, bits = backend.dropout_fwd(xp, xn, p, seed, offset)
    return route.wrap(out), DropoutCache(mode, route, p, seed, offset, bits, xn.shape, xn.dtype)


def dropout_backward(dout, cache):
    """Gradient of :func:`dropout_forward`.

    Parameters
    ----------
    dout : array, the forward output's shape, floating, of the forward's library
        Upstream gradient (cast to the forward's dtype if it differs).
    cache : DropoutCache
        From :func:`dropout_forward`.

    Returns
    -------
    dx : array, dout's shape, the forward's dtype
        Training: ``dout * s`` where kept, 0 elsewhere; test mode: ``dout``
        itself (detached, as the forward's ``x``), or cast to the forward's
        dtype where it differs.
    """
    V.cache_kind(cache, DropoutCache, "dropout_backward", "dropout_forward")
    named = (("dout", dout),) if cache.bits is None or _converted(cache) \
        else (("dout", dout), ("the cached mask", cache.bits))
    route = _cache_route(cache, "dropout_backward", named)
    backend, xp = route.backend, route.xp
    dn = route.native(dout, "dout", floating=True)
    V.dout_shape(dn, cache.shape, "dropout_backward")
    V.floating_x(dn, "dout", backend.supported_dtypes(xp), xp)
    if cache.mode == "test":
        if dn.dtype != cache.dtype:
            return route.wrap(xp.astype(dn, cache.dtype))
        return dout if route.adapter is None else _detached(dout)
    V.cached_bits(cache.bits, math.prod(cache.shape))
    if dn.dtype != cache.dtype:
        dn = xp.astype(dn, cache.dtype)
    with _stream(route, dout):
        return route.wrap(backend.dropout_bwd(xp, dn, cache.bits, cache.p))


def dropout_mask(shape, p, seed, like=None, offset=0):
    """The boolean keep mask that :func:`dropout_forward` uses.

    Parameters
    ----------
    shape : tuple of int
    p : float in (0, 1]
        Keep probability.
    seed : int in [0, 2**64)
    like : array, optional
        The mask is made by this array's backend, on its device and in its
        library (NumPy when None).
    offset : int, optional
        The generator index of the first value (see :func:`dropout_forward`).

    Returns
    -------
    mask : bool array of ``shape``
    """
    p = V.p_value(p)
    seed = V.seed_value(seed)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not have negative sizes, got {shape}")
    offset = V.offset_value(offset, math.prod(shape))
    if like is None:
        route = backend_for(())
        device = None
    else:
        route = backend_for((("like", like),))
        device = None if route.adapter is not None and route.adapter.kind == "cpu" \
            else _device(route.native(like, "like"))
    with _stream(route, like):
        mask = route.backend.dropout_mask(route.xp, shape, p, seed, offset, device)
    return route.wrap(mask)


def _device(x):
    import array_api_compat as aac
    return aac.device(x)


def _stream(route, a):
    """The producer's stream for a call on the CUDA kernels (DLPack arrays)."""
    ad = route.adapter
    if ad is None or a is None or ad.kind != "cuda":
        return _NO_STREAM
    return ad.stream(a)


# ------------------------------------------------------------ normalization
class _NormOp:
    """What distinguishes one normalization op: its name, the geometry of
    its input, the shapes its gamma/beta may take, and whether it keeps
    running statistics (batchnorm) or is the same in training and test
    (layernorm, groupnorm)."""

    def __init__(self, name, backward, param_name, check_x, geometry, spatial_params,
                 running, channel_axis=1):
        self.name = name                    # "batchnorm_forward", ...
        self.backward = backward            # "batchnorm_backward", ...
        self.param_name = param_name        # "bn_param", ...
        self.check_x = check_x              # (x, op) -> None, raises on a bad shape
        self.geometry = geometry            # (shape, extra) -> Geometry (raises on a bad extra)
        self.spatial_params = spatial_params  # gamma may be (1, C, 1, 1)
        self.running = running              # keeps running statistics, has modes
        self.channel_axis = channel_axis    # the axis gamma and beta run along
        self.rm_name = f"{param_name}['running_mean']"   # (for the messages)
        self.rv_name = f"{param_name}['running_var']"


def _check_2d(x, op):
    V.ndim(x, 2, "x", op)


def _check_4d(x, op):
    V.ndim(x, 4, "x", op)


_BATCHNORM = _NormOp("batchnorm_forward", "batchnorm_backward", "bn_param", _check_2d,
                     lambda shape, _: K.channels_geometry(shape), False, True)
_SPATIAL_BATCHNORM = _NormOp("spatial_batchnorm_forward", "spatial_batchnorm_backward",
                             "bn_param", _check_4d,
                             lambda shape, _: K.channels_geometry(shape), True, True)


def _check_rows(x, op):
    V.rows_ndim(x, "x", op)


_LAYERNORM = _NormOp("layernorm_forward", "layernorm_backward", "ln_param", _check_rows,
                     lambda shape, _: K.rows_geometry(shape), False, False, channel_axis=-1)
_SPATIAL_GROUPNORM = _NormOp(
    "spatial_groupnorm_forward", "spatial_groupnorm_backward", "gn_param", _check_4d,
    lambda shape, G: K.groups_geometry(shape, V.group_count(G, shape[1],
                                                            "spatial_groupnorm_forward")),
    True, False)

_SPEC_OF_FORWARD = {s.name: s for s in (_BATCHNORM, _SPATIAL_BATCHNORM, _LAYERNORM,
                                        _SPATIAL_GROUPNORM)}


def _cached_geometry_ok(cache) -> bool:
    """Whether a normalization cache's geometry is the one its op gives x's
    shape (a hand-edited cache could name groups that do not divide c, or
    another split of the same values: the kernels would leave part of dx
    unwritten, or read x in another order)."""
    spec = _SPEC_OF_FORWARD.get(cache.op)
    geom = cache.geom
    if spec is None or type(geom) is not K.Geometry:
        return False
    G = geom.groups
    if spec is _SPATIAL_GROUPNORM and (type(G) is not int or G <= 0 or type(geom.c) is not int
                                       or geom.c % G):
        return False
    try:
        shape = tuple(cache._x.shape)
        if len(shape) < (1 if spec is _LAYERNORM else 2):
            return False
        return spec.geometry(shape, G) == geom
    except Exception:  # noqa: BLE001 - an edited cache's odd values: not the geometry
        return False


class _Prepared:
    """A normalization call's arguments, validated and converted to the
    backend's arrays (what _norm_forward computes from)."""
    __slots__ = ("route", "xn", "g", "b", "rm", "rv", "geom", "mode", "eps", "momentum",
                 "gamma_shape", "C")


def _named_arrays(spec: _NormOp, x, gamma, beta, rm, rv) -> list:
    """The (name, array) pairs of a forward's arrays, for backend_for (the
    running statistics where given)."""
    named = [("x", x), ("gamma", gamma), ("beta", beta)]
    if rm is not None:
        named.append((spec.rm_name, rm))
    if rv is not None:
        named.append((spec.rv_name, rv))
    return named


def _prepare(spec: _NormOp, x, gamma, beta, param, extra, check_count: bool) -> _Prepared:
    """Every check of a normalization forward (DESIGN section 5), before
    anything is computed or stored."""
    rm = rv = None
    if spec.running:
        rm = param.get("running_mean")
        rv = param.get("running_var")
    named = _named_arrays(spec, x, gamma, beta, rm, rv)
    p = _Prepared()
    route = backend_for(named)     # one check: same library and device for all
    backend, xp = route.backend, route.xp
    p.route = route
    p.mode = V.mode(param, spec.param_name) if spec.running else "train"
    p.eps = V.eps_value(param, spec.param_name)
    p.momentum = V.momentum_value(param) if spec.running else None
    xn = route.native(x, "x", floating=True)
    V.floating_x(xn, "x", backend.supported_dtypes(xp), xp)
    spec.check_x(xn, spec.name)
    p.geom = spec.geometry(tuple(xn.shape), extra)
    C = p.C = xn.shape[spec.channel_axis]
    p.gamma_shape = tuple(gamma.shape)
    g = V.channel_param(route.native(gamma, "gamma"), "gamma", C, spec.spatial_params, xp)
    b = V.channel_param(route.native(beta, "beta"), "beta", C, spec.spatial_params, xp)
    if rm is not None:
        rm = V.channel_param(route.native(rm, "running_mean"), spec.rm_name, C,
                             spec.spatial_params, xp)
    if rv is not None:
        rv = V.channel_param(route.native(rv, "running_var"), spec.rv_name, C,
                             spec.spatial_params, xp)
    if check_count and p.mode == "train" and spec.running:
        V.train_count(p.geom.count, tuple(xn.shape))
    dt = xn.dtype
    p.g = g if g.dtype == dt else xp.astype(g, dt)
    p.b = b if b.dtype == dt else xp.astype(b, dt)
    p.xn, p.rm, p.rv = xn, rm, rv
    return p


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
# equal to them but other objects: an unpickled array's dtype, one with metadata
_FLOATS = (_F32, _F64)


def _prepare_common(spec: _NormOp, x, gamma, beta, param, extra):
    """What :func:`_prepare` returns for the common call on the C kernels --
    NumPy arrays, or another library's CPU arrays once converted as _prepare
    converts them (PyTorch tensors, JAX arrays) -- with a dict ``param``;
    ``x`` native float32 or float64 of the op's ndim;
    ``gamma`` and ``beta`` (C,) of x's dtype; running statistics absent or
    (C,) of a real dtype; ``mode``, ``eps`` and ``momentum`` absent or a
    str and floats in range -- found in a few comparisons, or None where
    the call is anything else, which :func:`_prepare` then checks (and
    reports) in full.  Never raises: every error is _prepare's."""
    try:
        if type(param) is not dict:
            return None
        rm = rv = None
        if spec.running:
            rm = param.get("running_mean")
            rv = param.get("running_var")
        if type(x) is np.ndarray:
            if reference_forced():
                return None
            return _quick_prepare(spec, x, gamma, beta, param, extra, rm, rv, _numpy_route())
        return _quick_prepare_adapted(spec, x, gamma, beta, param, extra, rm, rv)
    except Exception:  # noqa: BLE001 - an odd object (a dict key's __eq__, ...): _prepare's to report
        return None


def _quick_prepare_adapted(spec, x, gamma, beta, param, extra, rm, rv):
    """_prepare_common for arrays of another library on the C kernels (PyTorch
    or JAX CPU arrays): converted as _prepare converts them (a pure step,
    done again there when this declines), then the same checks."""
    torch_cpu = _dispatch._torch_cpu
    if torch_cpu is not None and not reference_forced():
        # PyTorch CPU tensors (the route is known once one has been seen):
        # the route's test and the conversions in one loop
        # (x and gamma go into the cache: their views hold their storage)
        nat = torch_cpu.adapter.natives((x, gamma, beta, rm, rv), _dispatch._plain_tensor_type, 2)
        if nat is not None:
            return _quick_prepare(spec, *nat[:3], param, extra, nat[3], nat[4], torch_cpu)
    route = backend_for(_named_arrays(spec, x, gamma, beta, rm, rv))
    if route.adapter is None or route.adapter.kind != "cpu":
        return None
    nat = route.native
    return _quick_prepare(spec, nat(x, "x", floating=True), nat(gamma, "gamma"), nat(beta, "beta"),
                          param, extra, nat(rm, "running_mean"), nat(rv, "running_var"), route)


def _quick_prepare(spec, x, gamma, beta, param, extra, rm, rv, route):
    if type(x) is not np.ndarray or type(gamma) is not np.ndarray or type(beta) is not np.ndarray:
        return None
    dt = x.dtype
    if dt is not _F32 and dt is not _F64 and dt not in _FLOATS:   # (big-endian: not equal)
        return None
    shape = x.shape
    nd = len(shape)
    if spec.running or spec is _SPATIAL_GROUPNORM:
        if nd != (2 if spec is _BATCHNORM else 4):
            return None
    elif nd < 1:
        return None
    C = shape[spec.channel_axis]
    if gamma.shape != (C,) or beta.shape != (C,) or (gamma.dtype is not dt and gamma.dtype != dt) \
            or (beta.dtype is not dt and beta.dtype != dt):
        return None
    eps = param.get("eps", 1e-5)
    if type(eps) is not float or not 0.0 < eps < math.inf:
        return None
    p = _Prepared()
    p.rm = p.rv = p.momentum = None
    if spec.running:
        mode = param.get("mode")
        if type(mode) is not str or (mode != "train" and mode != "test"):
            return None
        m = param.get("momentum", 0.9)
        if type(m) is not float or not 0.0 <= m <= 1.0:
            return None
        for r in (rm, rv):
            if r is not None and (type(r) is not np.ndarray or r.shape != (C,) or
                                  r.dtype.kind not in "iuf"):
                return None
        p.mode, p.momentum, p.rm, p.rv = mode, m, rm, rv
    else:
        p.mode = "train"
    if spec is _SPATIAL_GROUPNORM:
        if type(extra) is not int or extra <= 0 or C % extra:
            return None
    geom = spec.geometry(shape, extra)
    if spec.running and p.mode == "train" and geom.count <= 1:
        return None
    p.route = route
    p.xn, p.g, p.b, p.geom, p.eps, p.C, p.gamma_shape = x, gamma, beta, geom, eps, C, (C,)
    return p


def _norm_forward(spec: _NormOp, x, gamma, beta, param, extra=None):
    """The forward of a normalization op: validation (nothing changes when it
    raises), then the contract's composite ``norm_train_fwd`` in training, or
    ``normalize`` with the running statistics in test mode; with
    ``param['comm']`` in training, the synchronized composition (moments,
    the exchange, normalize)."""
    V.param_dict(param, spec.param_name)
    comm = param.get("comm") if spec.running else None
    if comm is not None:
        if param.get("mode") != "test":
            return _sync_forward(spec, x, gamma, beta, param, extra, comm)
        # test mode never communicates, but what is no communicator is an error
        from . import _distributed as D
        D.check_comm(comm, f"{spec.param_name}['comm']")
    p = _prepare_common(spec, x, gamma, beta, param, extra)
    if p is None:
        p = _prepare(spec, x, gamma, beta, param, extra, check_count=True)
    # -- validated: from here on nothing raises on user input
    route, xn, geom = p.route, p.xn, p.geom
    backend, xp = route.backend, route.xp
    dt = xn.dtype
    with _stream(route, x):
        if p.mode == "train":
            out, mean, var, invstd = backend.norm_train_fwd(xp, xn, geom, p.g, p.b, p.eps)
            if spec.running:
                new_rm = backend.running_update(xp, p.rm, mean, p.momentum, dt)
                new_rv = backend.running_update(xp, p.rv, var, p.momentum, dt)
                param["running_mean"] = route.wrap(new_rm)
                param["running_var"] = route.wrap(new_rv)
        else:
            f64 = xp.float64
            if p.rm is None or p.rv is None:
                zeros = xp.zeros((p.C,), dtype=f64, device=_device(xn))
            mean = zeros if p.rm is None else xp.astype(xp.astype(p.rm, dt), f64)
            var = zeros if p.rv is None else xp.astype(xp.astype(p.rv, dt), f64)
            invstd = 1.0 / xp.sqrt(var + p.eps)
            out = backend.normalize(xp, xn, geom, mean, invstd, p.g, p.b)
    cache = NormCache(spec.name, p.mode, route, xn, p.g, p.gamma_shape, mean, invstd, geom)
    return route.wrap(out), cache


def _sync_forward(spec, x, gamma, beta, param, extra, comm):
    """Synchronized batchnorm forward (normdrop._distributed): every rank's
    checks agreed on first, then moments, the exchange, normalize."""
    from . import _distributed as D
    D.check_comm(comm, f"{spec.param_name}['comm']")
    error = None
    try:
        p = _prepare(spec, x, gamma, beta, param, extra, check_count=False)
    except Exception as exc:     # whatever it is, the other ranks hear of it (no hang)
        error = exc
    D.agree(comm, error, spec.name)
    route, xn, geom = p.route, p.xn, p.geom
    backend, xp = route.backend, route.xp
    count, mean_l, m2_l = backend.moments(xp, xn, geom)
    settings = (("eps", p.eps), ("momentum", p.momentum), ("dtypes", str(xn.dtype)))
    total, mean, m2 = D.gather_moments(comm, count, mean_l, m2_l, geom.c, spec.name, settings)
    if total <= 1:
        raise ValueError("expected more than 1 value per channel when training, got "
                         f"{total} over the {comm.Get_size()} ranks of {spec.param_name}['comm']")
    # -- agreed on every rank: from here on nothing raises on user input
    var, invstd = K.finish_moments(xp, total, mean, m2, p.eps)
    dt = xn.dtype
    with _stream(route, x):
        out = backend.normalize(xp, xn, geom, mean, invstd, p.g, p.b)
        param["running_mean"] = route.wrap(backend.running_update(xp, p.rm, mean, p.momentum, dt))
        param["running_var"] = route.wrap(backend.running_update(xp, p.rv, var, p.momentum, dt))
    cache = NormCache(spec.name, "train", route, xn, p.g, p.gamma_shape, mean, invstd, geom,
                      comm=comm, count=total)
    return route.wrap(out), cache


def _norm_backward(spec: _NormOp, op, dout, cache):
    """The backward of a normalization op: the contract's composite
    ``norm_bwd`` (``grad_reduce`` then ``grad_input``); for a synchronized
    batchnorm's cache, grad_reduce, the exchange, grad_input."""
    V.cache_kind(cache, NormCache, op, spec.name)
    if cache.comm is not None:
        return _sync_backward(op, dout, cache)
    route, dn = _backward_args(op, dout, cache)
    backend, xp = route.backend, route.xp
    train = cache.mode == "train"
    with _stream(route, dout):
        dx, dgamma, dbeta = backend.norm_bwd(xp, dn, cache._x, cache.geom, cache.mean,
                                             cache.invstd, cache._gamma, train)
        if not train and backend is not _reference:
            # test mode with running_var + eps == 0: invstd is inf, and the
            # kernels' dgamma = (sum dout (x - mean)) * inf is +-inf where the
            # reference sums +-inf terms (NaN when they differ in sign or one
            # is 0 * inf); those channels take the reference's value
            inf = xp.isinf(cache.invstd)
            if bool(xp.any(inf)):
                with np.errstate(invalid="ignore"):     # inf - inf: the NaN is the answer
                    ref = _reference.norm_bwd(xp, dn, cache._x, cache.geom, cache.mean,
                                              cache.invstd, cache._gamma, False)[1]
                dgamma = xp.where(inf, xp.astype(ref, dgamma.dtype), dgamma)
    return _backward_results(route, cache, dx, dgamma, dbeta)


def _backward_args_common(dout, cache):
    """What :func:`_backward_args` returns for the common backward on the C
    kernels -- a cache whose arrays are the ones its forward made, a dout of
    the forward's library (NumPy, or PyTorch/JAX converted as _backward_args
    converts it) of x's shape and (native float) dtype -- found in a few
    comparisons, or None where the call is anything else (then
    _backward_args checks and reports in full).  Never raises."""
    try:
        return _quick_backward_args(dout, cache)
    except Exception:  # noqa: BLE001 - as in _prepare_common
        return None


def _quick_backward_args(dout, cache):
    x = cache._x
    if type(x) is not np.ndarray or cache.backend_name != "cpu" or cache.xp_name != "numpy" or \
            reference_forced():
        return None
    ad = cache.adapter
    if ad is None:
        if type(dout) is not np.ndarray:
            return None
        route, dn = _numpy_route(), dout
    else:                 # a PyTorch or JAX CPU cache: dout of that library, converted
        if ad.kind != "cpu" or not ad.owns(dout):
            return None
        dn = ad.native(dout, "dout", floating=True)
        if type(dn) is not np.ndarray:
            return None
        route = Route(backend_by_name("cpu"), np, ad)     # what _cache_route makes
    dt = x.dtype
    if (dt is not _F32 and dt is not _F64 and dt not in _FLOATS) or \
            (dn.dtype is not dt and dn.dtype != dt):
        return None
    shape, geom = cache.out_shape, cache.geom
    if type(shape) is not tuple or dn.shape != shape or x.shape != shape or \
            not _cached_geometry_ok(cache):
        return None
    ng = (geom.ngroups,)
    for a in (cache.mean, cache.invstd):
        if type(a) is not np.ndarray or (a.dtype is not _F64 and a.dtype != _F64) or a.shape != ng:
            return None
    g = cache._gamma
    if type(g) is not np.ndarray or (g.dtype is not dt and g.dtype != dt) or g.shape != (geom.c,):
        return None
    if ad is not None and not ad.kept_intact((x, g)):
        return None
    return route, dn


def _backward_args(op, dout, cache):
    """(route, dout as the backend's array in x's dtype), checked."""
    fast = _backward_args_common(dout, cache)
    if fast is not None:
        return fast
    cache._check_kept(op)
    route = _cache_route(cache, op, (("dout", dout),) if _converted(cache)
                         else (("dout", dout), ("the cached x", cache._x)))
    backend, xp = route.backend, route.xp
    dn = route.native(dout, "dout", floating=True)
    V.dout_shape(dn, cache.out_shape, op)
    V.floating_x(dn, "dout", backend.supported_dtypes(xp), xp)
    if not _cached_geometry_ok(cache):
        raise ValueError(f"{cache.op} cache was changed: its geometry {cache.geom!r} is not the "
                         f"one of x's shape {getattr(cache._x, 'shape', None)!r}")
    V.cached_norm(cache, xp)
    if dn.dtype != cache._x.dtype:
        dn = xp.astype(dn, cache._x.dtype)
    return route, dn


def _backward_results(route, cache, dx, dgamma, dbeta):
    xp = route.xp
    if cache.gamma_shape != tuple(dgamma.shape):
        dgamma = xp.reshape(dgamma, cache.gamma_shape)
        dbeta = xp.reshape(dbeta, cache.gamma_shape)
    return route.wrap(dx), route.wrap(dgamma), route.wrap(dbeta)


def _sync_backward(op, dout, cache):
    """Synchronized batchnorm backward: every rank's checks agreed on, then
    grad_reduce, the sums exchanged, grad_input over the total count;
    dgamma and dbeta are the rank's own share."""
    from . import _distributed as D
    comm = cache.comm
    error = None
    try:
        route, dn = _backward_args(op, dout, cache)
    except Exception as exc:     # as in _sync_forward
        error = exc
    D.agree(comm, error, op)
    backend, xp = route.backend, route.xp
    x, geom = cache._x, cache.geom
    with _stream(route, dout):
        s1, s2, dgamma, dbeta = backend.grad_reduce(xp, dn, x, geom, cache.mean, cache.invstd,
                                                    cache._gamma)
        t1, t2 = D.gather_sums(comm, s1, s2, s1)
        dx = backend.grad_input(xp, dn, x, geom, cache.mean, cache.invstd, cache._gamma, t1, t2,
                                True, cache.count)
    return _backward_results(route, cache, dx, dgamma, dbeta)


# ---------------------------------------------------------------- batchnorm
def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization forward (cs231n API).

    Parameters
    ----------
    x : array (N, D), float32 or float64 (float16 too on CuPy)
    gamma, beta : arrays (D,) or (1, D), any real dtype
        Scale and shift; cast to x's dtype.
    bn_param : dict
        ``mode`` (required): ``'train'`` or ``'test'``; ``eps`` (1e-5);
        ``momentum`` (0.9, the weight of the old running value);
        ``running_mean``, ``running_var`` ((D,), default zeros).

    Returns
    -------
    out : array (N, D), x's dtype and memory order
        ``gamma * (x - mean) / sqrt(var + eps) + beta``: batch mean and biased
        batch variance in training, the running statistics in test mode.
    cache : NormCache
        For :func:`batchnorm_backward`.

    Notes
    -----
    In training, ``bn_param['running_mean']`` and ``bn_param['running_var']``
    are replaced by new (D,) arrays of x's dtype on x's device:
    ``running = momentum * running + (1 - momentum) * batch``.  When the call
    raises, ``bn_param`` is left exactly as it was.
    """
    return _norm_forward(_BATCHNORM, x, gamma, beta, bn_param)


def batchnorm_backward(dout, cache):
    """Gradients of :func:`batchnorm_forward` for the mode it ran in.

    Parameters
    ----------
    dout : array (N, D), floating
        Upstream gradient (cast to x's dtype if it differs).
    cache : NormCache
        From :func:`batchnorm_forward`.

    Returns
    -------
    dx : array (N, D), x's dtype
    dgamma, dbeta : arrays in gamma's shape, x's dtype
    """
    return _norm_backward(_BATCHNORM, "batchnorm_backward", dout, cache)


def batchnorm_backward_alt(dout, cache):
    """The same function as :func:`batchnorm_backward` (cs231n's name for the
    simplified formula, which normdrop always uses)."""
    return _norm_backward(_BATCHNORM, "batchnorm_backward_alt", dout, cache)


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Spatial batch normalization forward: statistics per channel over N, H, W.

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64 (float16 too on CuPy)
        NCHW memory is read in place, and so is channels-last memory (an NHWC
        array viewed as NCHW, ``x_nhwc.transpose(0, 3, 1, 2)``); other strides
        are copied once.
    gamma, beta : arrays (C,), (1, C) or (1, C, 1, 1), any real dtype
    bn_param : dict
        As for :func:`batchnorm_forward`; running statistics are (C,).

    Returns
    -------
    out : array (N, C, H, W), x's dtype, x's memory layout
    cache : NormCache
        For :func:`spatial_batchnorm_backward`.
    """
    return _norm_forward(_SPATIAL_BATCHNORM, x, gamma, beta, bn_param)


def spatial_batchnorm_backward(dout, cache):
    """Gradients of :func:`spatial_batchnorm_forward`.

    Parameters
    ----------
    dout : array (N, C, H, W), floating
    cache : NormCache
        From :func:`spatial_batchnorm_forward`.

    Returns
    -------
    dx : array (N, C, H, W), x's dtype and memory layout
    dgamma, dbeta : arrays in gamma's shape, x's dtype
    """
    return _norm_backward(_SPATIAL_BATCHNORM, "spatial_batchnorm_backward", dout, cache)


# ---------------------------------------------------------------- layernorm
def layernorm_forward(x, gamma, beta, ln_param):
    """Layer normalization forward (cs231n API): each row normalized by its
    own mean and biased variance.

    Parameters
    ----------
    x : array (N, D), or (..., D) normalized over the last axis (e.g. a
        transformer's (B, T, D)); float32 or float64 (float16 too on CuPy)
    gamma, beta : arrays (D,) or (1, D), any real dtype
        Scale and shift per feature; cast to x's dtype.
    ln_param : dict
        ``eps`` (1e-5); ``mode`` is optional and ignored (training and test
        are the same).  Not modified.

    Returns
    -------
    out : array, x's shape and dtype (C order; other strides are copied once)
        ``gamma * (x - mean) / sqrt(var + eps) + beta`` with per-row mean and
        variance.
    cache : NormCache
        For :func:`layernorm_backward`: x, gamma and the per-row mean and
        1/std (no (N, D) temporary).
    """
    return _norm_forward(_LAYERNORM, x, gamma, beta, ln_param)


def layernorm_backward(dout, cache):
    """Gradients of :func:`layernorm_forward`.

    Parameters
    ----------
    dout : array, the forward output's shape, floating
    cache : NormCache
        From :func:`layernorm_forward`.

    Returns
    -------
    dx : array, x's shape and dtype
    dgamma, dbeta : arrays in gamma's shape, x's dtype
    """
    return _norm_backward(_LAYERNORM, "layernorm_backward", dout, cache)


# ------------------------------------------------------------ groupnorm
def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Spatial group normalization forward (cs231n API): statistics per
    sample and per group of C/G consecutive channels, over (C/G, H, W).

    Parameters
    ----------
    x : array (N, C, H, W), float32 or float64 (float16 too on CuPy)
        NCHW memory is read in place, and so is channels-last memory (an NHWC
        array viewed as NCHW); other strides are copied once.
    gamma, beta : arrays (1, C, 1, 1) (as in cs231n), (C,) or (1, C), any real
        dtype; per channel.
    G : int
        The number of groups; a positive divisor of C.
    gn_param : dict
        ``eps`` (1e-5); ``mode`` is optional and ignored.  Not modified.

    Returns
    -------
    out : array (N, C, H, W), x's dtype and memory layout
    cache : NormCache
        For :func:`spatial_groupnorm_backward`: x, gamma and the per-group
        mean and 1/std.
    """
    return _norm_forward(_SPATIAL_GROUPNORM, x, gamma, beta, gn_param, G)


def spatial_groupnorm_backward(dout, cache):
    """Gradients of :func:`spatial_groupnorm_forward`.

    Parameters
    ----------
    dout : array (N, C, H, W), floating
    cache : NormCache
        From :func:`spatial_groupnorm_forward`.

    Returns
    -------
    dx : array (N, C, H, W), x's dtype and memory layout
    dgamma, dbeta : arrays in gamma's shape, x's dtype
    """
    return _norm_backward(_SPATIAL_GROUPNORM, "spatial_groupnorm_backward", dout, cache)
