"""Run under mpiexec by tests/test_distributed.py: synchronized batchnorm and
sharded dropout on uneven shards against one process on the whole batch,
every check on every rank; prints "rank R ok" at the end.

usage: mpiexec -n K python sync_worker.py SHARDS...   (SHARDS: row counts, one per rank,
       comma-separated, e.g. 7,0,13; several lists run one after another)
"""
from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

import normdrop as nd

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def _abort(kind, value, tb):
    """A failed check on one rank ends every rank (instead of leaving the
    others waiting in a collective)."""
    sys.__excepthook__(kind, value, tb)
    sys.stderr.flush()
    comm.Abort(1)


sys.excepthook = _abort
TOL = {"float64": dict(rtol=1e-11, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-6)}


def close(a, b, dtype, what):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               err_msg=f"rank {rank}: {what}", **TOL[dtype])


def same_on_every_rank(a, what):
    every = comm.allgather(np.ascontiguousarray(a).tobytes())
    assert all(e == every[0] for e in every), f"rank {rank}: {what} differs between ranks"


def check_shards(shards, spatial, dtype):
    assert len(shards) == size
    N = sum(shards)
    a = sum(shards[:rank])
    b = a + shards[rank]
    rng = np.random.default_rng(N + 100 * spatial)
    C = 5
    shape = (N, C, 3, 4) if spatial else (N, C)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    rm0, rv0 = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    fwd = nd.spatial_batchnorm_forward if spatial else nd.batchnorm_forward
    bwd = nd.spatial_batchnorm_backward if spatial else nd.batchnorm_backward
    # one process, the whole batch (every rank computes it, without comm)
    ref_param = {"mode": "train", "running_mean": rm0, "running_var": rv0, "momentum": 0.7}
    ref_out, ref_cache = fwd(x, gamma, beta, ref_param)
    ref_dx, ref_dg, ref_db = bwd(dout, ref_cache)
    # this rank's rows, synchronized
    param = {"mode": "train", "running_mean": rm0, "running_var": rv0, "momentum": 0.7,
             "comm": comm}
    out, cache = fwd(x[a:b], gamma, beta, param)
    dx, dg, db = bwd(dout[a:b], cache)
    what = f"{'spatial' if spatial else 'bn'} {dtype} shards {shards}"
    close(out, ref_out[a:b], dtype, f"{what}: out")
    close(dx, ref_dx[a:b], dtype, f"{what}: dx")
    tot_dg = comm.allgather(np.asarray(dg, np.float64))
    tot_db = comm.allgather(np.asarray(db, np.float64))
    close(sum(tot_dg), ref_dg, dtype, f"{what}: sum of dgamma")
    close(sum(tot_db), ref_db, dtype, f"{what}: sum of dbeta")
    for k in ("running_mean", "running_var"):
        close(param[k], ref_param[k], dtype, f"{what}: {k}")
        assert param[k].dtype == np.dtype(dtype)
        same_on_every_rank(param[k], f"{what}: {k}")
    assert param["comm"] is comm


def check_sharded_dropout(shards):
    N, D = sum(shards), 37
    a = sum(shards[:rank])
    x = np.random.default_rng(3).standard_normal((N, D))
    full, _ = nd.dropout_forward(x, {"p": 0.6, "mode": "train", "seed": 2**64 - 3})
    out, _ = nd.dropout_forward(x[a:a + shards[rank]],
                                {"p": 0.6, "mode": "train", "seed": 2**64 - 3, "offset": a * D})
    np.testing.assert_array_equal(out, full[a:a + shards[rank]])


def check_errors():
    x = np.ones((4, 3))
    g, b = np.ones(3), np.zeros(3)
    # a bad dout shape on rank 0 only: every rank raises, none hangs
    _, cache = nd.batchnorm_forward(x + np.arange(4.0)[:, None], g, b,
                                    {"mode": "train", "comm": comm})
    dout = np.ones((4, 4)) if rank == 0 else np.ones((4, 3))
    try:
        nd.batchnorm_backward(dout, cache)
    except nd.RankError as exc:
        assert rank != 0 and "rank 0" in str(exc), (rank, exc)
    except ValueError as exc:
        assert rank == 0 and "dout has shape" in str(exc), (rank, exc)
    else:
        raise AssertionError(f"rank {rank}: no error")
    # channel counts that differ: a ValueError on every rank; bn_param as it was
    C = 3 if rank != size - 1 or size == 1 else 4
    bp = {"mode": "train", "comm": comm}
    try:
        nd.batchnorm_forward(np.ones((4, C)) + np.arange(4.0)[:, None], np.ones(C),
                             np.zeros(C), bp)
    except ValueError as exc:
        assert size > 1 and "channel counts differ" in str(exc), (rank, exc)
        assert set(bp) == {"mode", "comm"}
    else:
        assert size == 1
    # a bad gamma on the last rank: its own error there, a RankError elsewhere
    bp = {"mode": "train", "comm": comm}
    gam = np.ones(5) if rank == size - 1 else g
    try:
        nd.batchnorm_forward(x, gam, b, bp)
    except nd.RankError as exc:
        assert rank != size - 1 and f"rank {size - 1}" in str(exc)
    except ValueError as exc:
        assert rank == size - 1 and "gamma must have shape" in str(exc)
    assert set(bp) == {"mode", "comm"}
    # one value per channel over every rank
    try:
        nd.batchnorm_forward(np.ones((1 if rank == 0 else 0, 3)), g, b,
                             {"mode": "train", "comm": comm})
    except ValueError as exc:
        assert "more than 1 value per channel" in str(exc)
    else:
        raise AssertionError("one value per channel was accepted")
    # not a communicator, in either mode (test mode never communicates, but
    # took any object for one)
    for mode in ("train", "test"):
        try:
            nd.batchnorm_forward(x, g, b, {"mode": mode, "comm": "world"})
        except TypeError as exc:
            assert "mpi4py communicator" in str(exc)
        else:
            raise AssertionError(f"a string was taken for a communicator ({mode})")
    # an eps or momentum beyond the float range on the last rank (float()
    # raised OverflowError there, which the others never heard of: they hung)
    for key in ("eps", "momentum"):
        bp = {"mode": "train", "comm": comm}
        if rank == size - 1:
            bp[key] = 10**400
        try:
            nd.batchnorm_forward(x, g, b, bp)
        except nd.RankError as exc:
            assert rank != size - 1 and f"rank {size - 1}" in str(exc), (rank, exc)
        except ValueError as exc:
            assert rank == size - 1 and f"bn_param['{key}']" in str(exc), (rank, exc)
        else:
            raise AssertionError(f"rank {rank}: {key} 10**400 was accepted")
    # eps, momentum or dtype that differ between ranks: each rank would
    # normalize with its own, and the running statistics would differ
    if size >= 2:
        for key, mine, match in (("eps", 1e-3, "eps differ"), ("momentum", 0.5, "momentum differ"),
                                 ("dtype", None, "dtypes differ")):
            bp = {"mode": "train", "comm": comm}
            xr = x
            if rank == size - 1:
                if key == "dtype":
                    xr = x.astype(np.float32)
                else:
                    bp[key] = mine
            try:
                nd.batchnorm_forward(xr, g, b, bp)
            except ValueError as exc:
                assert match in str(exc), (rank, exc)
                assert set(bp) == {"mode", "comm"} | ({key} if rank == size - 1 and
                                                       key != "dtype" else set())
            else:
                raise AssertionError(f"rank {rank}: {key} differing between ranks was accepted")
    # an intercommunicator: its allgather gives the remote group's data only
    if size >= 2:
        local = comm.Split(rank % 2, rank)
        inter = local.Create_intercomm(0, comm, 1 - rank % 2, tag=7)
        try:
            nd.batchnorm_forward(x, g, b, {"mode": "train", "comm": inter})
        except TypeError as exc:
            assert "intracommunicator" in str(exc), exc
        else:
            raise AssertionError("an intercommunicator was accepted")
        inter.Free()
        local.Free()


def check_test_mode_does_not_communicate():
    """Only rank 0 calls test-mode forwards with the communicator: had they
    communicated, rank 0 would wait forever for the others."""
    if rank == 0:
        for _ in range(3):
            nd.spatial_batchnorm_forward(np.ones((2, 3, 2, 2)), np.ones(3), np.zeros(3),
                                         {"mode": "test", "comm": comm})
    comm.Barrier()


for arg in sys.argv[1:]:
    shards = [int(s) for s in arg.split(",")]
    for spatial in (False, True):
        for dtype in ("float64", "float32"):
            check_shards(shards, spatial, dtype)
    check_sharded_dropout(shards)
check_errors()
check_test_mode_does_not_communicate()
print(f"rank {rank} ok", flush=True)
