"""Layer objects over normdrop's functional API.

Each layer holds its parameters (``gamma``, ``beta``), their gradients
(``dgamma``, ``dbeta``, set by :meth:`backward`), its running statistics where
the op has them, and its mode (``training``, switched by :meth:`train` and
:meth:`eval`).  ``forward(x)`` and ``backward(dout)`` call the functional ops
(``normdrop.batchnorm_forward`` and so on), so a layer computes exactly what the
function computes, on the backend of the array it is given: NumPy arrays, and
arrays of other libraries that export DLPack on the CPU (PyTorch, JAX, ...), on
the C kernels; CuPy arrays, and DLPack arrays on a CUDA device, on the CUDA
kernels; other array-API arrays on the reference implementation.  Results come
back as arrays of the input's library.

The layers are thin: no autograd, no optimizer.  A training step calls
``forward`` on each layer in order, ``backward`` in reverse order, and then
updates each parameter named in ``param_names`` from the gradient ``'d' + name``.

Parameters are made in the array library, on the device and in the dtype of
the first input given to ``forward`` (``gamma`` ones, ``beta`` zeros, running
statistics zeros as the functional ops' defaults), or at construction in those
of ``like=``; nothing is moved to NumPy.

Examples
--------
>>> import numpy as np
>>> from normdrop.layers import BatchNorm, Dropout
>>> bn, drop = BatchNorm(64), Dropout(p=0.8, seed=0)
>>> x = np.random.randn(128, 64).astype(np.float32)
>>> h = drop.forward(bn.forward(x))             # training mode by default
>>> dx = bn.backward(drop.backward(np.ones_like(h)))
>>> bn.dgamma.shape, bn.running_mean.dtype
((64,), dtype('float32'))
>>> out = drop.forward(bn.eval().forward(x))    # eval: running statistics, no dropout
"""
from __future__ import annotations

import operator

import numpy as np

import normdrop as _nd
from normdrop._validate import eps_value, momentum_value, p_value

__all__ = ["Layer", "BatchNorm", "SpatialBatchNorm", "LayerNorm", "SpatialGroupNorm", "Dropout"]


def _namespace(a):
    import array_api_compat as aac
    return aac.array_namespace(a)


def _device(a):
    import array_api_compat as aac
    return aac.device(a)


def _copy(a):
    """A copy of array a in its own library and on its own device."""
    return _namespace(a).asarray(a, copy=True)


def _op(layer, name):
    """The functional op ``name`` of normdrop (looked up at call time)."""
    return getattr(_nd, name)


def _positive_int(value, what):
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None
    if n < 1:
        raise ValueError(f"{what} must be at least 1, got {n}")
    return n


class Layer:
    """Base class: the mode (``training``) and the calls every layer has.

    Attributes
    ----------
    training : bool
        True (the default) in training mode, False in evaluation mode.
    param_names : tuple of str
        Names of the trainable parameters; the gradient of each is the
        attribute ``'d' + name``, set by :meth:`backward`.
    """

    param_names: tuple = ()

    def __init__(self):
        self.training = True
        self._cache = None

    def train(self, mode: bool = True):
        """Set training mode (``mode=True``) or evaluation mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Set evaluation mode; returns self.  Same as ``train(False)``."""
        return self.train(False)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - every layer defines it
        raise NotImplementedError

    def backward(self, dout):  # pragma: no cover - every layer defines it
        raise NotImplementedError

    def _need_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._cache

    @property
    def _mode(self) -> str:
        return "train" if self.training else "test"


class _Affine(Layer):
    """A normalization layer with a per-channel scale ``gamma`` and shift
    ``beta`` (and, in subclasses, running statistics)."""

    param_names = ("gamma", "beta")
    _state_names = ("gamma", "beta")
    _feature_axis = 1        # the axis of x that num_features counts
    _forward_op = _backward_op = ""

    def __init__(self, num_features, eps=1e-5, like=None):
        super().__init__()
        self.num_features = _positive_int(num_features, "num_features")
        self.eps = eps_value({"eps": eps}, None)     # the op's check, at construction
        self.gamma = self.beta = None
        self.dgamma = self.dbeta = None
        if like is not None:
            self._create(like)

    # parameters -----------------------------------------------------------
    def _param_shape(self) -> tuple:
        return (self.num_features,)

    def _create(self, like):
        """gamma = 1, beta = 0 (and the running statistics) in like's array
        library, device and dtype."""
        xp, dev, dt = _namespace(like), _device(like), like.dtype
        shape = self._param_shape()
        self.gamma = xp.ones(shape, dtype=dt, device=dev)
        self.beta = xp.zeros(shape, dtype=dt, device=dev)
        self._create_stats(xp, dev, dt)

    def _create_stats(self, xp, dev, dt):
        pass

    def _ready(self, x) -> bool:
        """Check x's width against num_features and make the parameters from x
        if there are none yet; returns whether it made them (see _run)."""
        shape = getattr(x, "shape", None)
        axis = self._feature_axis
        if shape is not None and len(shape) > max(axis, -axis - 1) and \
                shape[axis] != self.num_features:
            raise ValueError(f"x has shape {tuple(shape)}: {shape[axis]} features on axis {axis}, "
                             f"but this {type(self).__name__} has num_features="
                             f"{self.num_features}")
        if self.gamma is not None:
            return False
        self._create(x)
        return True

    def _run(self, made, x, *args):
        """The op on x with this layer's gamma and beta, then args.  If it
        raises, parameters that _ready just made (made) are dropped again,
        so that a bad first input (bool, int, float16 on the CPU) leaves the
        layer as it was."""
        try:
            return _op(self, self._forward_op)(x, self.gamma, self.beta, *args)
        except BaseException:
            if made:
                for name in self._state_names:
                    setattr(self, name, None)
            raise

    # state ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Copies of the parameters (and running statistics) as plain arrays of
        the layer's array library, keyed by attribute name.

        Raises
        ------
        RuntimeError
            Before the parameters exist (no forward yet and no ``like=``).
        """
        if self.gamma is None:
            raise RuntimeError(f"{type(self).__name__} has no parameters yet: they are made at "
                               "the first forward (or pass like= to the constructor)")
        return {name: _copy(getattr(self, name)) for name in self._state_names}

    def load_state_dict(self, state: dict) -> None:
        """Replace the parameters (and running statistics) with copies of the
        arrays in ``state`` (as returned by :meth:`state_dict`; any array
        library, which the layer then computes on).

        Raises
        ------
        KeyError
            When a name is missing or unexpected.
        TypeError
            When a value is not an array.
        ValueError
            When an array has the wrong shape.
        """
        names = set(self._state_names)
        given = set(state)
        if given != names:
            missing, extra = sorted(names - given), sorted(given - names)
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing {missing}, "
                           f"unexpected {extra}")
        shape = self._param_shape()
        for name in self._state_names:
            if not hasattr(state[name], "shape"):
                raise TypeError(f"{type(self).__name__}.load_state_dict: {name} must be an array, "
                                f"got {type(state[name]).__name__}")
            if tuple(state[name].shape) != shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name} has shape "
                                 f"{tuple(state[name].shape)}, expected {shape}")
        for name in self._state_names:
            setattr(self, name, _copy(state[name]))

    def __repr__(self):
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}"
                f"{self._repr_extra()}, training={self.training})")

    def _repr_extra(self) -> str:
        return ""

    # compute --------------------------------------------------------------
    def backward(self, dout):
        """Gradient of the last :meth:`forward`.

        Parameters
        ----------
        dout : array, the shape of the last output, floating
            Upstream gradient.

        Returns
        -------
        dx : array, x's shape and dtype
            Also sets ``dgamma`` and ``dbeta`` (gamma's shape, x's dtype).
        """
        dx, self.dgamma, self.dbeta = _op(self, self._backward_op)(dout, self._need_cache())
        return dx


class _BatchNormBase(_Affine):
    _state_names = ("gamma", "beta", "running_mean", "running_var")

    def __init__(self, num_features, eps=1e-5, momentum=0.9, like=None):
        self.momentum = momentum_value({"momentum": momentum}, None)
        self.running_mean = self.running_var = None
        super().__init__(num_features, eps=eps, like=like)

    def _create_stats(self, xp, dev, dt):
        self.running_mean = xp.zeros(self._param_shape(), dtype=dt, device=dev)
        self.running_var = xp.zeros(self._param_shape(), dtype=dt, device=dev)

    def _repr_extra(self):
        return f", momentum={self.momentum}"

    def forward(self, x):
        """Normalize x: batch statistics in training (which also update the
        running statistics), the running statistics in evaluation mode.

        Parameters
        ----------
        x : array, float32 or float64 (float16 too on CuPy)
            See the class for the shape.

        Returns
        -------
        out : array, x's shape, dtype and memory layout
        """
        made = self._ready(x)
        bn_param = {"mode": self._mode, "eps": self.eps, "momentum": self.momentum,
                    "running_mean": self.running_mean, "running_var": self.running_var}
        out, self._cache = self._run(made, x, bn_param)
        self.running_mean = bn_param["running_mean"]
        self.running_var = bn_param["running_var"]
        return out


class BatchNorm(_BatchNormBase):
    """Batch normalization of (N, D) inputs, over :func:`normdrop.batchnorm_forward`.

    Parameters
    ----------
    num_features : int
        D, the number of features (columns of x).
    eps : float, default 1e-5
        Added to the variance.
    momentum : float, default 0.9
        Weight of the old running value (cs231n's convention):
        ``running = momentum * running + (1 - momentum) * batch``.
    like : array, optional
        Make the parameters now, in this array's library, device and dtype;
        without it they are made from the first input to :meth:`forward`.

    Attributes
    ----------
    gamma, beta : arrays (D,)
        Scale (ones at first) and shift (zeros at first), in the dtype of the
        input they were made from.
    dgamma, dbeta : arrays (D,) or None
        Gradients from the last :meth:`backward`, in x's dtype.
    running_mean, running_var : arrays (D,)
        Running statistics (zeros at first, as the functional op's defaults),
        replaced by new arrays of x's dtype at each training forward and used
        in evaluation mode.
    training : bool
        Training mode (batch statistics) or evaluation mode (running ones).

    Notes
    -----
    ``forward(x)`` takes x (N, D), float32 or float64 (float16 too on CuPy), and
    returns ``gamma * (x - mean) / sqrt(var + eps) + beta`` in x's dtype and
    memory order; ``backward(dout)`` returns dx (N, D).
    """

    _forward_op, _backward_op = "batchnorm_forward", "batchnorm_backward"


class SpatialBatchNorm(_BatchNormBase):
    """Batch normalization of (N, C, H, W) inputs, per channel over N, H and W,
    over :func:`normdrop.spatial_batchnorm_forward`.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps, momentum, like
        As for :class:`BatchNorm`.

    Attributes
    ----------
    gamma, beta, dgamma, dbeta, running_mean, running_var : arrays (C,)
        As for :class:`BatchNorm`, one value per channel.
    training : bool

    Notes
    -----
    ``forward(x)`` takes x (N, C, H, W), NCHW or channels-last memory (read in
    place and answered in the same layout), float32 or float64 (float16 too
    on CuPy); ``backward(dout)`` returns dx in x's layout.
    """

    _forward_op, _backward_op = "spatial_batchnorm_forward", "spatial_batchnorm_backward"


class LayerNorm(_Affine):
    """Layer normalization of (N, D) inputs: statistics per row, over
    ``normdrop.layernorm_forward`` and ``normdrop.layernorm_backward``.

    Parameters
    ----------
    num_features : int
        D, the number of features normalized together.
    eps : float, default 1e-5
    like : array, optional
        As for :class:`BatchNorm`.

    Attributes
    ----------
    gamma, beta : arrays (D,)
        Scale (ones) and shift (zeros) at first.
    dgamma, dbeta : arrays (D,) or None
        Gradients from the last :meth:`backward`.
    training : bool
        Kept for a uniform interface: layer normalization computes the same in
        both modes and has no running statistics.

    Notes
    -----
    ``forward(x)`` takes x (N, D), floating, and returns (N, D) in x's dtype.
    """

    _forward_op, _backward_op = "layernorm_forward", "layernorm_backward"
    _feature_axis = -1

    def forward(self, x):
        """Normalize each row of x (N, D); returns (N, D) in x's dtype."""
        made = self._ready(x)
        out, self._cache = self._run(made, x, {"mode": self._mode, "eps": self.eps})
        return out


class SpatialGroupNorm(_Affine):
    """Group normalization of (N, C, H, W) inputs: statistics per sample over
    each group of C/G channels and H, W, over ``normdrop.spatial_groupnorm_forward``
    and ``normdrop.spatial_groupnorm_backward``.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    num_groups : int
        G, which must divide C.
    eps : float, default 1e-5
    like : array, optional
        As for :class:`BatchNorm`.

    Attributes
    ----------
    gamma, beta : arrays (1, C, 1, 1)
        Per-channel scale (ones) and shift (zeros) at first, in cs231n's shape.
    dgamma, dbeta : arrays (1, C, 1, 1) or None
        Gradients from the last :meth:`backward`.
    training : bool
        Kept for a uniform interface: group normalization computes the same in
        both modes and has no running statistics.

    Notes
    -----
    ``forward(x)`` takes x (N, C, H, W), floating, and returns the same shape in
    x's dtype.
    """

    _forward_op, _backward_op = "spatial_groupnorm_forward", "spatial_groupnorm_backward"

    def __init__(self, num_features, num_groups, eps=1e-5, like=None):
        C = _positive_int(num_features, "num_features")
        G = _positive_int(num_groups, "num_groups")
        if C % G:
            raise ValueError(f"num_groups ({G}) must divide num_features ({C})")
        self.num_groups = G
        super().__init__(C, eps=eps, like=like)

    def _param_shape(self):
        return (1, self.num_features, 1, 1)

    def _repr_extra(self):
        return f", num_groups={self.num_groups}"

    def forward(self, x):
        """Normalize x (N, C, H, W) per sample and group; returns x's shape and dtype."""
        made = self._ready(x)
        gn_param = {"mode": self._mode, "eps": self.eps}
        out, self._cache = self._run(made, x, self.num_groups, gn_param)
        return out


class Dropout(Layer):
    """Inverted dropout, over :func:`normdrop.dropout_forward`.

    Parameters
    ----------
    p : float in (0, 1], default 0.5
        **Keep** probability (cs231n's convention): in training, a value is
        kept with probability p and scaled by 1/p, else set to 0.
    seed : int in [0, 2**32), optional
        Without a seed, every training forward draws a fresh mask (its seed
        comes from NumPy's global legacy generator, so ``np.random.seed``
        makes a run repeat).  With a seed, the k-th training forward
        (k = ``step``: 0, 1, 2, ...) uses ``dropout_forward`` with seed
        ``seed + k * 2**32``, i.e. the Philox key ``(seed, k)``: each step gets a
        different mask, layers with different seeds never share one, no global
        state is touched, and the same seed gives the same masks in every run,
        on every backend.

    Attributes
    ----------
    p : float
    seed : int or None
    step : int
        Number of training forwards so far (evaluation forwards do not count);
        saved by :meth:`state_dict`, so a resumed run draws the masks it would
        have drawn.
    training : bool
        In evaluation mode, ``forward(x)`` returns x itself and ``backward(dout)``
        returns dout, as ``dropout_forward``/``dropout_backward`` in test mode do
        (a torch tensor that requires grad comes back detached; a dout of the
        other float dtype, cast to x's).

    Notes
    -----
    ``forward(x)`` takes any shape, float32 or float64 (float16 too on CuPy),
    and returns x's shape and dtype; the mask is kept as one bit per value for
    :meth:`backward`.
    """

    param_names = ()

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = p_value(p)       # the functional API's check (a bool p is refused there too)
        if seed is not None:
            try:
                if isinstance(seed, bool):        # as dropout_forward: True is no seed
                    raise TypeError
                seed = operator.index(seed)
            except TypeError:
                raise TypeError(f"seed must be an int, got {type(seed).__name__}") from None
            if not 0 <= seed < 2**32:
                raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self.seed = seed
        self.step = 0

    def step_seed(self, step=None):
        """The ``dropout_forward`` seed of training forward number ``step``
        (default: the next one), or None without a layer seed."""
        if self.seed is None:
            return None
        k = self.step if step is None else operator.index(step)
        if not 0 <= k < 2**32:
            raise OverflowError(f"Dropout step {k} is outside [0, 2**32)")
        return self.seed + (k << 32)

    def forward(self, x):
        """Dropout of x in training; x itself in evaluation mode.

        Parameters
        ----------
        x : array of any shape, float32 or float64 (float16 too on CuPy)

        Returns
        -------
        out : array, x's shape and dtype
        """
        param = {"p": self.p, "mode": self._mode}
        if self.training:
            seed = self.step_seed()
            if seed is not None:
                param["seed"] = seed
        out, self._cache = _nd.dropout_forward(x, param)
        if self.training:
            self.step += 1
        return out

    def backward(self, dout):
        """Gradient of the last :meth:`forward`: ``dout / p`` where kept, 0
        elsewhere (``dout`` in evaluation mode)."""
        return _nd.dropout_backward(dout, self._need_cache())

    def state_dict(self) -> dict:
        """``{'step': 0-d int64 NumPy array}`` (``p`` and ``seed`` are
        constructor arguments)."""
        return {"step": np.asarray(self.step, dtype=np.int64)}

    def load_state_dict(self, state: dict) -> None:
        """Set ``step`` from a :meth:`state_dict`."""
        if set(state) != {"step"}:
            raise KeyError(f"Dropout.load_state_dict: expected the key 'step', got {sorted(state)}")
        a = np.asarray(state["step"])
        if a.shape != () or a.dtype.kind not in "iu":
            raise TypeError(f"Dropout.load_state_dict: step must be an integer (a 0-d int array "
                            f"or an int), got {a.dtype} of shape {a.shape}")
        step = int(a)
        if not 0 <= step <= 2**32:   # 2**32: every step used (the next forward raises)
            raise ValueError(f"Dropout.load_state_dict: step must be in [0, 2**32], got {step}")
        self.step = step

    def __repr__(self):
        return f"Dropout(p={self.p}, seed={self.seed}, training={self.training})"
