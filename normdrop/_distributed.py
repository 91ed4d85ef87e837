"""Synchronized batchnorm over MPI (``bn_param["comm"]``, an mpi4py
communicator): the contract's steps with an exchange between them
(DESIGN section 2, "Synchronized batchnorm").

Forward (training):  ``moments`` of the rank's rows -> every rank gathers
every rank's ``(count, mean, m2)`` -> each merges them in rank order with the
Chan merge of ``nd_moments.h`` (so the statistics, and the running
statistics, are the same bits on every rank whatever MPI's reduction
algorithm) -> ``normalize``.
Backward:  ``grad_reduce`` -> every rank gathers the per-channel sums and adds
them in rank order -> ``grad_input`` with the total count; ``dgamma`` and
``dbeta`` are the rank's own share.

Each exchange is preceded by the rank's verdict on its own arguments, so a
bad argument on one rank (a wrong shape, a channel count that differs) raises
a clear error on every rank instead of leaving the others waiting; the error
is raised before anything changes.  Test mode never communicates.

Per-channel arrays are O(C): CuPy statistics are staged through the host.
"""
from __future__ import annotations

import numpy as np


class RankError(ValueError):
    """Another rank of a synchronized batchnorm call rejected its arguments
    (this rank raises too, so that no rank waits forever)."""


def check_comm(comm, name: str):
    """TypeError unless comm is an mpi4py intracommunicator."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise TypeError(f"{name} needs mpi4py (pip install 'normdrop[mpi]'), which is not "
                        "importable") from None
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"{name} must be an mpi4py communicator (mpi4py.MPI.Comm), got "
                        f"{type(comm).__module__}.{type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise TypeError(f"{name} is MPI.COMM_NULL")
    if not isinstance(comm, MPI.Intracomm):
        # an intercommunicator's allgather returns the remote group's data
        # only: the statistics would be another group's, silently
        raise TypeError(f"{name} must be an intracommunicator (mpi4py.MPI.Intracomm, such as "
                        f"COMM_WORLD or a Split of it), got {type(comm).__name__}")
    return comm


def agree(comm, error, what: str):
    """Every rank's verdict on its own arguments, exchanged: when any rank
    failed, raise on every rank (this rank's own exception where it failed,
    else a RankError naming the first rank that did)."""
    verdicts = comm.allgather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    bad = [(r, v) for r, v in enumerate(verdicts) if v is not None]
    if bad:
        r, v = bad[0]
        raise RankError(f"{what}: rank {r} of {len(verdicts)} rejected its arguments ({v}); "
                        "no rank computed anything")


def _host(a):
    """A per-channel array on the host, float64, C order."""
    if type(a).__module__.startswith("cupy"):
        a = a.get()
    return np.ascontiguousarray(np.asarray(a), dtype=np.float64)


def _device_like(a, like):
    """Host array a back on like's device (CuPy), or as it is (NumPy)."""
    if type(like).__module__.startswith("cupy"):
        import cupy
        with like.device:
            return cupy.asarray(a)
    return a


def gather_moments(comm, count: int, mean, m2, channels: int, what: str, settings=()):
    """(count, mean, m2) of the union of every rank's values, per channel,
    merged in rank order -- the same bits on every rank.  Raises ValueError on
    every rank when the ranks' channel counts differ, or their settings
    (pairs (name, value): eps, momentum, dtype), which would make the ranks'
    outputs and running statistics differ."""
    from ._cpu import _kernels as k
    every_rank = comm.allgather((channels, tuple(settings)))
    counts = [c for c, _ in every_rank]
    if len(set(counts)) != 1:
        raise ValueError(f"{what}: the ranks' channel counts differ: {counts}")
    for j, (name, _) in enumerate(settings):
        values = [s[j][1] for _, s in every_rank]
        if len(set(values)) != 1:
            raise ValueError(f"{what}: the ranks' {name} differ: {values} (rank order); every "
                             "rank must pass the same")
    local = np.empty((3, channels), np.float64)
    local[0] = float(count)
    local[1] = _host(mean)
    local[2] = _host(m2)
    every = np.empty((comm.Get_size(), 3, channels), np.float64)
    comm.Allgather(local, every)
    n, mu, q = k.merge_moments(every[:, 0, :], every[:, 1, :], every[:, 2, :])
    total = int(sum(comm.allgather(int(count))))
    return total, _device_like(mu, mean), _device_like(q, mean)


def gather_sums(comm, s1, s2, like):
    """s1, s2 summed over the ranks in rank order (the same bits on every
    rank), back on like's device."""
    local = np.stack([_host(s1), _host(s2)])
    every = np.empty((comm.Get_size(),) + local.shape, np.float64)
    comm.Allgather(local, every)
    t1 = every[0, 0].copy()
    t2 = every[0, 1].copy()
    for r in range(1, every.shape[0]):
        t1 += every[r, 0]
        t2 += every[r, 1]
    return _device_like(t1, like), _device_like(t2, like)
