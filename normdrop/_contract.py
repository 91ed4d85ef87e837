"""The backend contract: what every backend (``normdrop._cpu``,
``normdrop._cuda._backend``, ``normdrop._reference``) implements, written down
once.

Every normalization op is the same four steps over a different grouping of
the axes (DESIGN section 1).  An input ``x`` is seen, in C order of its
logical shape, as ``(n, c, s)``: ``n`` samples (or rows), ``c`` channels (the
index of ``gamma``/``beta``), ``s`` values per channel and sample (spatial
positions).  The :class:`Geometry` says how an element ``(i, j, k)`` maps to

- its **statistics group**: the channel ``j`` when ``groups == 0``
  (batchnorm: statistics over samples and positions), else
  ``i * groups + j // (c // groups)`` (groupnorm: per sample and per group of
  ``c // groups`` consecutive channels; layernorm is ``groups == 1`` on
  ``(rows, features, 1)``);
- its **affine index**: always the channel ``j``.

The steps (``xp`` is the array namespace; arrays are the backend's own; the
per-group arrays are float64, ``(ngroups,)``):

1. :meth:`Backend.moments` -- per group ``(count, mean, m2)``: one read of ``x``.
2. :meth:`Backend.normalize` --
   ``out = (x - mean[grp]) * invstd[grp] * gamma[ch] + beta[ch]``, one pass.
3. :meth:`Backend.grad_reduce` -- per group ``s1 = sum(dout * w)`` and
   ``s2 = sum(dout * w * (x - mean[grp]))``, where ``w = gamma[ch]`` when the
   affine index varies inside a group (groupnorm, layernorm) and ``w = 1``
   when it is constant over the group (batchnorm: the group's one gamma is
   applied by step 4); per affine index ``dgamma = sum(dout * x_hat)`` and
   ``dbeta = sum(dout)``: one read of ``x`` and ``dout``.
4. :meth:`Backend.grad_input` -- ``dx`` from those sums, one pass.  Training:
   ``dx = invstd * (gamma * dout - S1 / M - x_hat * S2 * invstd / M)`` with
   ``S1, S2`` the group's sums with gamma applied and ``M`` its count (passed
   in: a synchronized batchnorm's groups span every rank); test
   mode (batchnorm's running statistics): ``dx = gamma * invstd * dout``.

Composites, one call for a whole forward or backward where a backend fuses
the steps into one kernel (the tests check them equal, bit for bit, to the
composition of the steps on the same backend):

- :meth:`Backend.norm_train_fwd` = ``moments``, then ``var = m2 / count``,
  ``invstd = 1 / sqrt(var + eps)``, then ``normalize``;
- :meth:`Backend.norm_bwd` = ``grad_reduce`` then ``grad_input``.

Dropout (DESIGN section 3): :meth:`Backend.dropout_fwd`,
:meth:`Backend.dropout_bwd`, :meth:`Backend.dropout_mask`; and
:meth:`Backend.running_update` for batchnorm's running statistics.

A synchronized (distributed) batchnorm is the composition of the steps with
an exchange of the per-group results between steps 1 and 2 and between 3
and 4 (``normdrop._distributed``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Protocol, runtime_checkable

#: The public names every backend module defines, and no others: the steps,
#: the composites and two descriptors (``NAME``, ``supported_dtypes``).
STEPS = ("moments", "normalize", "grad_reduce", "grad_input")
COMPOSITES = ("norm_train_fwd", "norm_bwd")
DROPOUT = ("dropout_fwd", "dropout_bwd", "dropout_mask")
OTHER = ("running_update",)
DESCRIPTORS = ("NAME", "supported_dtypes")
PUBLIC = STEPS + COMPOSITES + DROPOUT + OTHER + DESCRIPTORS


class Geometry(NamedTuple):
    """How the elements of an operand map to statistics groups and affine
    channels (see the module docstring).

    Attributes
    ----------
    n, c, s : int
        The operand seen as ``(n, c, s)`` in C order of its logical shape.
    groups : int
        0: one statistics group per channel (batchnorm); ``G >= 1``: ``G``
        groups per sample, each of ``c // G`` consecutive channels
        (groupnorm; layernorm is ``G = 1``).  ``c % G == 0``.
    """
    n: int
    c: int
    s: int
    groups: int

    @property
    def ngroups(self) -> int:
        """Number of statistics groups."""
        return self.c if self.groups == 0 else self.n * self.groups

    @property
    def count(self) -> int:
        """Values per statistics group."""
        if self.groups == 0:
            return self.n * self.s
        return (self.c // self.groups) * self.s if self.groups else 0

    @property
    def size(self) -> int:
        return self.n * self.c * self.s

    @property
    def gamma_in_group(self) -> bool:
        """Whether the affine index varies inside a group (then grad_reduce's
        per-group sums carry gamma)."""
        return self.groups != 0


# Geometry(n, c, s, groups) without the generated __new__'s Python frame
# (what it does, for a fraction of its cost: made on every call, and checked
# again on every backward)
_geometry = tuple.__new__


def channels_geometry(shape) -> Geometry:
    """Batchnorm: ``(N, D)`` or ``(N, C, H, W)``, statistics per channel."""
    return _geometry(Geometry, (shape[0], shape[1], math.prod(shape[2:]), 0))


def groups_geometry(shape, groups: int) -> Geometry:
    """Spatial groupnorm: ``(N, C, H, W)`` with ``groups`` groups per sample."""
    return _geometry(Geometry, (shape[0], shape[1], math.prod(shape[2:]), groups))


def rows_geometry(shape) -> Geometry:
    """Layernorm: ``(..., D)``, statistics per row over the last axis."""
    return _geometry(Geometry, (math.prod(shape[:-1]), shape[-1], 1, 1))


@runtime_checkable
class Backend(Protocol):
    """What a backend module provides (checked by ``tests/test_contract.py``).

    Shapes: ``x``, ``dout``, ``out``, ``dx`` have the operand's logical shape;
    ``gamma``, ``beta`` are ``(c,)`` arrays of x's dtype; ``mean``, ``m2``,
    ``var``, ``invstd``, ``s1``, ``s2`` are ``(geom.ngroups,)`` float64 arrays;
    ``dgamma``, ``dbeta`` are ``(c,)`` arrays of x's dtype.  Outputs keep the
    memory layout of ``x`` where the backend honours layouts.
    """

    NAME: str

    def supported_dtypes(self, xp) -> tuple:
        """The floating dtypes the backend computes in."""

    def moments(self, xp, x, geom: Geometry):
        """``(count, mean, m2)``: ``count`` (int) values per group, their
        mean and sum of squared deviations from it."""

    def normalize(self, xp, x, geom: Geometry, mean, invstd, gamma, beta):
        """``out = (x - mean[grp]) * invstd[grp] * gamma[ch] + beta[ch]``."""

    def grad_reduce(self, xp, dout, x, geom: Geometry, mean, invstd, gamma):
        """``(s1, s2, dgamma, dbeta)`` (see the module docstring)."""

    def grad_input(self, xp, dout, x, geom: Geometry, mean, invstd, gamma, s1, s2,
                   train: bool, count: int):
        """``dx`` from grad_reduce's sums over ``count`` values per group
        (``geom.count``, or a synchronized batchnorm's total over every
        rank); ``train`` False: test-mode batchnorm."""

    def norm_train_fwd(self, xp, x, geom: Geometry, gamma, beta, eps: float):
        """``(out, mean, var, invstd)``: moments, then normalize."""

    def norm_bwd(self, xp, dout, x, geom: Geometry, mean, invstd, gamma, train: bool):
        """``(dx, dgamma, dbeta)``: grad_reduce, then grad_input."""

    def running_update(self, xp, old, batch, momentum: float, dtype):
        """``momentum * old + (1 - momentum) * batch`` in float64, rounded to
        dtype (``old`` None counts as zeros)."""

    def dropout_fwd(self, xp, x, p: float, seed: int, offset: int):
        """``(out, bits)``: inverted dropout and the packed keep mask; value
        ``i`` uses the generator's word for index ``offset + i``."""

    def dropout_bwd(self, xp, dout, bits, p: float):
        """``dx = dout * (1/p)`` where the packed mask keeps, else 0."""

    def dropout_mask(self, xp, shape, p: float, seed: int, offset: int, device):
        """The boolean keep mask of ``shape`` (words from index ``offset``)."""


def finish_moments(xp, count: int, mean, m2, eps: float):
    """``(var, invstd)`` from moments: ``var = m2 / count`` (biased; 0 where
    the group is empty) and ``invstd = 1 / sqrt(var + eps)``, in float64 --
    the operations every backend's fused ``norm_train_fwd`` performs."""
    var = m2 / count if count > 0 else m2 * 0.0
    return var, 1.0 / xp.sqrt(var + eps)
