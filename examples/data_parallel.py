"""Data-parallel training with synchronized batchnorm and sharded dropout.

Each MPI process (rank) holds a contiguous, uneven shard of every batch:

    affine -> batchnorm (bn_param["comm"]) -> ReLU -> dropout (offset) -> affine -> softmax

The batchnorm statistics are those of the whole batch (every rank's rows),
the dropout mask of a shard is its rows of the whole batch's mask
(``dropout_param["offset"] = first row * width``), and the weight gradients
are summed over the ranks in rank order, so every rank takes the same steps
as one process would on the whole batch.  Rank 0 then trains the same net in
one process, without MPI, and prints both loss curves and their largest
relative difference (float64 rounding).

    mpiexec -n 3 python examples/data_parallel.py
    OMP_NUM_THREADS=1 mpiexec -n 2 python examples/data_parallel.py --bench

``--bench`` times one synchronized batchnorm step (forward and backward) on
each rank's rows against the same step without synchronization, and the time
spent communicating.  Ranks that share a machine's cores should share its
threads too (OMP_NUM_THREADS=1 with as many ranks as cores): two OpenMP
threads per rank on two cores oversubscribe them and the timings mean little.
Needs ``pip install 'normdrop[mpi]'``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import normdrop as nd


def spiral(points_per_class=200, classes=3, seed=0):
    """cs231n's spiral data set."""
    rng = np.random.default_rng(seed)
    n = points_per_class
    X = np.empty((n * classes, 2))
    y = np.empty(n * classes, dtype=np.int64)
    r = np.linspace(0.0, 1.0, n)
    for j in range(classes):
        t = np.linspace(j * 4.0, (j + 1) * 4.0, n) + rng.standard_normal(n) * 0.2
        X[j * n:(j + 1) * n] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[j * n:(j + 1) * n] = j
    return X, y


def shards(n, size):
    """Uneven contiguous row ranges, rank r taking a share growing with r."""
    weights = np.arange(1, size + 1)
    edges = np.concatenate([[0], np.cumsum(weights)]) * n // weights.sum()
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def allsum(comm, a):
    """a summed over the ranks in rank order: the same bits on every rank."""
    if comm is None:
        return a
    parts = comm.allgather(a)
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


def train(X, y, comm=None, epochs=15, batch=150, hidden=64, lr=0.5, keep=0.8):
    """Full-batch-of-`batch` SGD; returns the loss of every step.  With comm,
    this rank computes on its shard of each batch only."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    rng = np.random.default_rng(1)
    W1 = rng.standard_normal((2, hidden)) * 0.5
    b1 = np.zeros(hidden)
    W2 = rng.standard_normal((hidden, 3)) * 0.1
    b2 = np.zeros(3)
    gamma, beta = np.ones(hidden), np.zeros(hidden)
    bn_param = {"mode": "train"}
    if comm is not None:
        bn_param["comm"] = comm
    order = np.random.default_rng(2).permutation(len(X))
    losses = []
    step = 0
    for _ in range(epochs):
        for start in range(0, len(X), batch):
            idx = order[start:start + batch]
            a, b = shards(len(idx), size)[rank]
            xb, yb = X[idx[a:b]], y[idx[a:b]]
            n_total = len(idx)
            h1 = xb @ W1 + b1
            h2, bn_cache = nd.batchnorm_forward(h1, gamma, beta, bn_param)
            h3 = np.maximum(h2, 0)
            h4, d_cache = nd.dropout_forward(h3, {"p": keep, "mode": "train", "seed": 1000 + step,
                                                  "offset": a * hidden})
            scores = h4 @ W2 + b2
            shifted = scores - scores.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss = allsum(comm, np.array([-logp[np.arange(len(yb)), yb].sum()]))[0] / n_total
            losses.append(loss)
            dscores = np.exp(logp)
            dscores[np.arange(len(yb)), yb] -= 1.0
            dscores /= n_total
            dW2, db2 = h4.T @ dscores, dscores.sum(axis=0)
            dh4 = dscores @ W2.T
            dh3 = nd.dropout_backward(dh4, d_cache)
            dh2 = dh3 * (h2 > 0)
            dh1, dgamma, dbeta = nd.batchnorm_backward(dh2, bn_cache)
            dW1, db1 = xb.T @ dh1, dh1.sum(axis=0)
            grads = [allsum(comm, g) for g in (dW1, db1, dgamma, dbeta, dW2, db2)]
            for p, g in zip((W1, b1, gamma, beta, W2, b2), grads):
                p -= lr * g
            step += 1
    return np.array(losses)


def bench(comm, rows=4096, channels=1024, reps=30):
    """Median seconds of one batchnorm forward+backward on this rank's rows,
    synchronized and not, and of the synchronized step's communication."""
    from normdrop import _distributed as D
    rng = np.random.default_rng(comm.Get_rank())
    x = rng.standard_normal((rows, channels)).astype(np.float32)
    dout = rng.standard_normal((rows, channels)).astype(np.float32)
    g, b = np.ones(channels, np.float32), np.zeros(channels, np.float32)

    def step(param):
        _, cache = nd.batchnorm_forward(x, g, b, param)
        nd.batchnorm_backward(dout, cache)

    def comm_only():
        m = np.zeros(channels)
        D.agree(comm, None, "bench")
        D.gather_moments(comm, rows, m, m, channels, "bench")
        D.agree(comm, None, "bench")
        D.gather_sums(comm, m, m, m)

    times = {"local": [], "sync": [], "comm": []}
    for _ in range(reps):
        for key, fn in (("local", lambda: step({"mode": "train"})),
                        ("sync", lambda: step({"mode": "train", "comm": comm})),
                        ("comm", comm_only)):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", action="store_true", help="time the synchronized step")
    args = parser.parse_args(argv)
    try:
        from mpi4py import MPI
    except ImportError:
        sys.exit("this example needs mpi4py: pip install 'normdrop[mpi]'")
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if args.bench:
        t = bench(comm)
        every = comm.gather(t)
        if rank == 0:
            for r, tr in enumerate(every):
                print(f"rank {r}: batchnorm forward+backward on 4096x1024 float32 rows: "
                      f"{tr['sync'] * 1e3:.2f} ms synchronized, {tr['local'] * 1e3:.2f} ms alone "
                      f"({tr['sync'] / tr['local']:.2f}x); communication {tr['comm'] * 1e3:.3f} ms")
        return 0
    X, y = spiral()
    losses = train(X, y, comm)
    if rank == 0:
        alone = train(X, y, None)
        print(f"{size} rank(s), shards of each batch of 150 rows: {shards(150, size)}")
        for i in range(0, len(losses), 10):
            print(f"  step {i:3d}  loss {losses[i]:.12f}  (one process: {alone[i]:.12f})")
        rel = np.max(np.abs(losses - alone) / np.abs(alone))
        print(f"final loss {losses[-1]:.12f}; largest relative difference from one process "
              f"over {len(losses)} steps: {rel:.1e}")
        if not rel < 1e-10:
            print("data_parallel: the losses differ from the single-process run", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
