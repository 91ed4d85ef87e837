"""A fixed corpus of calls to the compiled CPU kernels and the SHA-256 of
every array they return.

``tests/test_golden.py`` runs this corpus at 1, 2 and 3 OpenMP threads and
compares each digest with ``tests/golden_hashes.py``, so that a refactoring
cannot change a single output bit unnoticed, and results stay independent
of the thread count.  The inputs are made with integer arithmetic and exact
float operations only (no random-number generator whose stream could change
between NumPy versions).

A change that is meant to alter results (a new partition of a reduction, a
different rounding) regenerates the file with

    python tests/golden_corpus.py --write

and says in its commit message which cases changed and why.
"""
from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

import normdrop as nd


def values(shape, dtype, salt, loc=0.0, scale=1.0):
    """Deterministic pseudo-random values of shape: a 64-bit LCG over the
    flat index, its top 53 bits as a double in [0, 1), mapped exactly."""
    n = int(np.prod(shape, dtype=np.int64))
    k = np.arange(n, dtype=np.uint64) + np.uint64(salt * 0x9E3779B97F4A7C15 % 2**64)
    with np.errstate(over="ignore"):
        k = k * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
        k ^= k >> np.uint64(29)
        k = k * np.uint64(0xBF58476D1CE4E5B9)
    u = (k >> np.uint64(11)).astype(np.float64) * 2.0**-53          # exact
    v = (u - 0.5) * 4.0 * scale + loc
    return v.reshape(shape).astype(dtype)


def layout(a, name):
    if name == "C":
        return np.array(a, order="C")
    if name == "F":
        return np.asfortranarray(a)
    if name == "NHWC":
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if name == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), dtype=a.dtype)
        big[..., 1::2] = a
        return big[..., 1::2]
    raise ValueError(name)


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape}{a.strides}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


BN_SHAPES = [(2, 1), (7, 5), (33, 300), (3001, 130), (70000, 3), (5, 1030)]
SPATIAL_SHAPES = [(2, 3, 5, 7), (1, 9, 1, 1), (9, 16, 41, 40), (2, 3, 150, 130), (40, 4, 1, 2),
                  (3, 1, 5, 7)]
DROPOUT_SHAPES = [(1,), (7,), (63,), (64,), (65,), (1000, 3), (300007,)]
LAYERNORM_SHAPES = [(7, 5), (33, 300), (3001, 130), (2, 3, 70), (4, 70000)]
GROUPNORM_SHAPES = [((2, 6, 5, 7), 3), ((9, 16, 41, 40), 4), ((2, 4, 150, 130), 1),
                    ((40, 4, 1, 2), 2), ((3, 8, 1, 1), 4),
                    # channels-last runs of 8, 64, 32, 16, 12 and 1 channels, in one
                    # statistics unit or several (float32 and float64 units differ)
                    ((3, 64, 9, 7), 8), ((2, 64, 40, 30), 8), ((2, 128, 20, 20), 2),
                    ((2, 96, 7, 5), 3), ((2, 32, 64, 40), 2), ((2, 48, 5, 6), 4),
                    ((1, 16, 30, 30), 16), ((1, 64, 70, 70), 2),
                    # one sample's groups cut into ranges for the threads (runs of 8
                    # and 16 channels; 3 groups in 2 ranges at 2 threads)
                    ((1, 24, 40, 40), 3), ((1, 64, 30, 30), 8), ((1, 128, 14, 14), 8),
                    # the backward's sample blocks fewer than the threads: ranges of
                    # a block's groups (planes; channels-last runs of 3 and 5 channels;
                    # blocks of 3 and 2 samples)
                    ((1, 96, 20, 20), 32), ((4, 16, 24, 24), 2), ((5, 40, 16, 16), 8),
                    ((2, 16, 32, 32), 4),
                    # channels-last runs of 10, 20 and 40 channels, several units a
                    # group: tiles of rows for a batch of groups
                    ((1, 320, 24, 24), 32), ((2, 160, 30, 40), 8), ((1, 80, 32, 32), 2),
                    # too many channels for the row-wide scratch: tiles group by group
                    ((1, 18000, 7, 8), 1800)]


def _bn_cases():
    for spatial, shapes, layouts, fwd, bwd in (
            (False, BN_SHAPES, ("C", "F", "strided"), nd.batchnorm_forward,
             nd.batchnorm_backward),
            (True, SPATIAL_SHAPES, ("C", "NHWC", "strided"), nd.spatial_batchnorm_forward,
             nd.spatial_batchnorm_backward)):
        for shape in shapes:
            for dtype in ("float32", "float64"):
                for lay in layouts:
                    for mode in ("train", "test"):
                        count = shape[0] * (shape[2] * shape[3] if spatial else 1)
                        if mode == "train" and count <= 1:
                            continue
                        name = ("spatial" if spatial else "bn") + \
                            f"-{'x'.join(map(str, shape))}-{dtype}-{lay}-{mode}"
                        yield name, spatial, shape, dtype, lay, mode, fwd, bwd


def run_batchnorm():
    out = {}
    for name, spatial, shape, dtype, lay, mode, fwd, bwd in _bn_cases():
        C = shape[1]
        salt = sum(shape) + len(name)
        x = layout(values(shape, dtype, salt, loc=3.0, scale=2.0), lay)
        dout = layout(values(shape, dtype, salt + 1), lay)
        gamma = values((C,), "float64", salt + 2, loc=1.0, scale=0.25)
        beta = values((C,), "float64", salt + 3)
        bp = {"mode": mode, "momentum": 0.8, "eps": 1e-5}
        if mode == "test":
            bp["running_mean"] = values((C,), dtype, salt + 4)
            bp["running_var"] = values((C,), dtype, salt + 5, loc=2.0, scale=0.25)
        else:
            bp["running_mean"] = values((C,), dtype, salt + 6)
        y, cache = fwd(x, gamma, beta, bp)
        dx, dgamma, dbeta = bwd(dout, cache)
        arrays = [y, dx, dgamma, dbeta]
        if mode == "train":
            arrays += [bp["running_mean"], bp["running_var"]]
        out[name] = digest(*arrays)
    return out


def run_groups():
    """layernorm and spatial groupnorm (statistics per sample and group)."""
    out = {}
    cases = [("ln", s, None, ("C", "F", "strided")) for s in LAYERNORM_SHAPES] + \
            [("gn", s, G, ("C", "NHWC", "strided")) for s, G in GROUPNORM_SHAPES]
    for kind, shape, G, layouts in cases:
        C = shape[-1] if kind == "ln" else shape[1]
        for dtype in ("float32", "float64"):
            for lay in layouts:
                if lay == "F" and len(shape) != 2:
                    continue
                name = f"{kind}-{'x'.join(map(str, shape))}-{dtype}-{lay}" + (f"-g{G}" if G else "")
                salt = sum(shape) + len(name)
                x = layout(values(shape, dtype, salt, loc=3.0, scale=2.0), lay)
                dout = layout(values(shape, dtype, salt + 1), lay)
                gamma = values((C,), "float64", salt + 2, loc=1.0, scale=0.25)
                beta = values((C,), "float64", salt + 3)
                if kind == "ln":
                    y, cache = nd.layernorm_forward(x, gamma, beta, {"eps": 1e-5})
                    dx, dgamma, dbeta = nd.layernorm_backward(dout, cache)
                else:
                    y, cache = nd.spatial_groupnorm_forward(x, gamma, beta, G, {"eps": 1e-5})
                    dx, dgamma, dbeta = nd.spatial_groupnorm_backward(dout, cache)
                out[name] = digest(y, dx, dgamma, dbeta, cache.mean, cache.invstd)
    return out


def run_dropout():
    out = {}
    for shape in DROPOUT_SHAPES:
        for dtype in ("float32", "float64"):
            for p in (0.3, 0.5, 1.0):
                for seed in (0, 12345, 2**64 - 1):
                    name = f"dropout-{'x'.join(map(str, shape))}-{dtype}-p{p}-s{seed}"
                    x = values(shape, dtype, len(name))
                    y, cache = nd.dropout_forward(x, {"p": p, "mode": "train", "seed": seed})
                    dx = nd.dropout_backward(values(shape, dtype, len(name) + 1), cache)
                    mask = nd.dropout_mask(shape, p, seed)
                    out[name] = digest(y, cache.bits, dx, mask)
    return out


def run() -> dict:
    return {**run_batchnorm(), **run_groups(), **run_dropout()}


def main(argv) -> int:
    result = run()
    if "--write" in argv:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_hashes.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write('"""SHA-256 of every output of tests/golden_corpus.py (written by\n'
                    '``python tests/golden_corpus.py --write``)."""\n\nHASHES = {\n')
            for k in sorted(result):
                f.write(f"    {k!r}: {result[k]!r},\n")
            f.write("}\n")
        print(f"wrote {len(result)} digests to {path}")
        return 0
    for k in sorted(result):
        print(k, result[k])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
