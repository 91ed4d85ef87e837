"""GPU benchmark: normdrop's CUDA backend against PyTorch on CUDA and against
a device-to-device copy, measured side by side in one process.

Rows (float32 and float16 each):

==============================  =========================================  ===============
op                              normdrop                                   PyTorch
==============================  =========================================  ===============
spatial bn fwd (256,64,56,56)   spatial_batchnorm_forward, train           F.batch_norm
spatial bn bwd                  spatial_batchnorm_backward                 autograd of it
(the same, channels-last)       NHWC memory viewed as NCHW                 channels_last
bn fwd (8192, 4096)             batchnorm_forward, train                   F.batch_norm
bn bwd                          batchnorm_backward                         autograd of it
dropout fwd (8192, 4096)        dropout_forward, keep 0.5                  native_dropout
dropout bwd                     dropout_backward                           native_dropout_backward
==============================  =========================================  ===============

Each op is timed with CUDA events around a single call (warm-up calls
first, compilation included there), normdrop and PyTorch alternating, and
the median of the repetitions is reported.  The copy bandwidth is
``2 * nbytes / t`` of a ``cudaMemcpyAsync`` device-to-device copy of 1 GiB
(bytes read plus bytes written), measured before and after the rows; the
"bound" of an op is the minimum bytes it must move at that bandwidth:

    bn fwd      3 n s         (x read for the statistics, read again, out written)
    bn bwd      5 n s         (dout, x read for the sums, read again, dx written)
    dropout     2 n s + n/8   (x read, out written, packed mask written / read)

(n values of s bytes).  ``bound %`` = bound time / normdrop time;
``vs torch`` = torch time / normdrop time (> 1: normdrop faster).

Usage::

    python tools/gpu_bench.py --json OUT.json [--reps 30] [--quick]
    python tools/gpu_bench.py --sanity      # every op once, small shapes (for compute-sanitizer)
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys

import numpy as np

TORCH_DEVICE = "cuda"
SPATIAL = (256, 64, 56, 56)
FLAT = (8192, 4096)


def _events(cp):
    return cp.cuda.Event(), cp.cuda.Event()


def time_once(cp, fn):
    """GPU milliseconds of fn() on the current stream (the legacy default
    stream, which CuPy and PyTorch share)."""
    start, stop = _events(cp)
    start.record()
    fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop)


def copy_bandwidth(cp, nbytes=1 << 30, reps=20):
    """Bytes per second of a device-to-device memcpy (read + write)."""
    src = cp.ones(nbytes // 4, cp.float32)
    dst = cp.empty_like(src)
    ts = []
    for _ in range(reps + 3):
        ts.append(time_once(cp, lambda: dst.data.copy_from_device_async(src.data, src.nbytes)))
    del src, dst
    return 2 * nbytes / (statistics.median(ts[3:]) * 1e-3)


def bench_pair(cp, fns, reps, warmup=3):
    """Median milliseconds of each callable in fns (dict), alternating the
    order every round."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    cp.cuda.runtime.deviceSynchronize()
    times = {n: [] for n in names}
    for r in range(reps):
        for n in (names if r % 2 == 0 else names[::-1]):
            times[n].append(time_once(cp, fns[n]))
    return {n: statistics.median(t) for n, t in times.items()}


def rows(cp, torch, nd, dtype_name, reps, spatial, flat):
    F = torch.nn.functional
    tdt = {"float32": torch.float32, "float16": torch.float16}[dtype_name]
    rng = cp.random.default_rng(0)
    out = []

    def add(op, shape, n, nbytes_must, times):
        out.append({"op": op, "shape": list(shape), "dtype": dtype_name, "n": n,
                    "bytes": nbytes_must, "normdrop_ms": times["normdrop"],
                    "torch_ms": times["torch"]})

    s = np.dtype(dtype_name).itemsize

    # ---- batchnorm: spatial NCHW, spatial channels-last, 2-D
    for op, shape, cl in (("spatial bn", spatial, False), ("spatial bn NHWC", spatial, True),
                          ("bn", flat, False)):
        n = int(np.prod(shape))
        C = shape[1]
        if cl:
            N, _, H, W = shape
            x = rng.standard_normal((N, H, W, C), dtype=cp.float32).astype(dtype_name)
            x = x.transpose(0, 3, 1, 2)
            dout = rng.standard_normal((N, H, W, C), dtype=cp.float32).astype(dtype_name)
            dout = dout.transpose(0, 3, 1, 2)
        else:
            x = rng.standard_normal(shape, dtype=cp.float32).astype(dtype_name)
            dout = rng.standard_normal(shape, dtype=cp.float32).astype(dtype_name)
        gamma = cp.ones(C, dtype_name)
        beta = cp.zeros(C, dtype_name)
        fwd = nd.spatial_batchnorm_forward if len(shape) == 4 else nd.batchnorm_forward
        bwd = nd.spatial_batchnorm_backward if len(shape) == 4 else nd.batchnorm_backward
        bp = {"mode": "train"}
        xt = torch.from_dlpack(x)                # same memory (and strides)
        dt = torch.from_dlpack(dout)
        w = torch.ones(C, device=TORCH_DEVICE, dtype=torch.float32)
        b = torch.zeros(C, device=TORCH_DEVICE, dtype=torch.float32)
        rm = torch.zeros(C, device=TORCH_DEVICE, dtype=torch.float32)
        rv = torch.ones(C, device=TORCH_DEVICE, dtype=torch.float32)
        assert xt.dtype == tdt
        times = bench_pair(cp, {
            "normdrop": lambda: fwd(x, gamma, beta, bp),
            "torch": lambda: F.batch_norm(xt, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5),
        }, reps)
        add(op + " fwd", shape, n, 3 * n * s, times)
        _, cache = fwd(x, gamma, beta, bp)
        xg = xt.detach().requires_grad_(True)
        wg = w.clone().requires_grad_(True)
        bg = b.clone().requires_grad_(True)
        yt = F.batch_norm(xg, rm, rv, wg, bg, training=True, momentum=0.1, eps=1e-5)
        times = bench_pair(cp, {
            "normdrop": lambda: bwd(dout, cache),
            "torch": lambda: torch.autograd.grad(yt, (xg, wg, bg), dt, retain_graph=True),
        }, reps)
        add(op + " bwd", shape, n, 5 * n * s, times)
        del x, dout, xt, dt, cache, xg, yt
    # ---- dropout
    shape = flat
    n = int(np.prod(shape))
    x = rng.standard_normal(shape, dtype=cp.float32).astype(dtype_name)
    dout = rng.standard_normal(shape, dtype=cp.float32).astype(dtype_name)
    xt = torch.from_dlpack(x)
    dt = torch.from_dlpack(dout)
    param = {"p": 0.5, "mode": "train", "seed": 1234}
    times = bench_pair(cp, {
        "normdrop": lambda: nd.dropout_forward(x, param),
        "torch": lambda: torch.native_dropout(xt, 0.5, True),
    }, reps)
    add("dropout fwd", shape, n, 2 * n * s + n // 8, times)
    _, cache = nd.dropout_forward(x, param)
    _, mask = torch.native_dropout(xt, 0.5, True)
    times = bench_pair(cp, {
        "normdrop": lambda: nd.dropout_backward(dout, cache),
        "torch": lambda: torch.ops.aten.native_dropout_backward(dt, mask, 2.0),
    }, reps)
    add("dropout bwd", shape, n, 2 * n * s + n // 8, times)
    return out


def sanity(cp, nd):
    """Every kernel once on small shapes, every dtype and layout, results
    checked against the CPU backend; meant to run under compute-sanitizer
    (memcheck, racecheck, synccheck)."""
    rng = np.random.default_rng(0)
    bad = 0
    for dtype in ("float16", "float32", "float64"):
        tol = 5e-3 if dtype == "float16" else 1e-5
        for shape, layout in (((37, 5), "C"), ((37, 40), "F"), ((600, 3), "C"),
                              ((3, 4, 5, 7), "C"), ((3, 4, 5, 7), "NHWC"), ((2, 3, 1, 1), "C"),
                              ((130, 2, 3, 3), "C")):
            x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
            dout = rng.standard_normal(shape).astype(dtype)
            C = shape[1]
            if layout == "F":
                xg, dg = cp.asfortranarray(cp.asarray(x)), cp.asfortranarray(cp.asarray(dout))
            elif layout == "NHWC":
                xg = cp.ascontiguousarray(cp.asarray(x).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
                dg = cp.ascontiguousarray(cp.asarray(dout).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            else:
                xg, dg = cp.asarray(x), cp.asarray(dout)
            fwd = nd.batchnorm_forward if len(shape) == 2 else nd.spatial_batchnorm_forward
            bwd = nd.batchnorm_backward if len(shape) == 2 else nd.spatial_batchnorm_backward
            xr = x.astype(np.float64)
            for mode in ("train", "test"):
                bp = {"mode": mode, "running_mean": cp.full(C, 0.5, dtype), "running_var": cp.full(C, 2.0, dtype)}
                bpr = {"mode": mode, "running_mean": np.full(C, 0.5), "running_var": np.full(C, 2.0)}
                out, cache = fwd(xg, cp.ones(C, dtype), cp.zeros(C, dtype), bp)
                eout, ecache = fwd(xr, np.ones(C), np.zeros(C), bpr)
                got = [out] + list(bwd(dg, cache))
                exp = [eout] + list(bwd(dout.astype(np.float64), ecache))
                for g, e in zip(got, exp):
                    g = cp.asnumpy(g).astype(np.float64)
                    if not np.allclose(g, e, rtol=tol, atol=tol * max(1.0, np.abs(e).max())):
                        bad += 1
                        print(f"MISMATCH bn {shape} {layout} {dtype} {mode}")
        for n in (1, 5, 1023, 4099):
            x = rng.standard_normal(n).astype(dtype)
            out, cache = nd.dropout_forward(cp.asarray(x), {"p": 0.4, "mode": "train", "seed": 2**64 - 1})
            dx = nd.dropout_backward(cp.asarray(x), cache)
            keep = nd.dropout_mask((n,), 0.4, 2**64 - 1)
            m = nd.dropout_mask((n,), 0.4, 2**64 - 1, like=cp.zeros(1))
            s = np.asarray(1 / 0.4, dtype)
            ok = (np.array_equal(cp.asnumpy(m), keep)
                  and np.array_equal(cp.asnumpy(out), np.where(keep, x * s, 0).astype(dtype))
                  and np.array_equal(cp.asnumpy(dx), np.where(keep, x * s, 0).astype(dtype)))
            if not ok:
                bad += 1
                print(f"MISMATCH dropout n={n} {dtype}")
    cp.cuda.runtime.deviceSynchronize()
    print(f"sanity: {bad} mismatches")
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="normdrop CUDA benchmark (see module docstring)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="smaller shapes (a smoke run)")
    parser.add_argument("--spatial", type=int, nargs=4, metavar=("N", "C", "H", "W"),
                        help=f"spatial batchnorm shape (default {SPATIAL})")
    parser.add_argument("--flat", type=int, nargs=2, metavar=("N", "D"),
                        help=f"batchnorm and dropout shape (default {FLAT})")
    parser.add_argument("--sanity", action="store_true",
                        help="run every op once on small shapes and check it (no timing)")
    args = parser.parse_args(argv)

    import cupy as cp

    import normdrop as nd

    if args.sanity:
        return sanity(cp, nd)
    import torch

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    spatial = tuple(args.spatial or ((64, 64, 56, 56) if args.quick else SPATIAL))
    flat = tuple(args.flat or ((2048, 4096) if args.quick else FLAT))
    bw0 = copy_bandwidth(cp)
    results = []
    for dtype_name in ("float32", "float16"):
        results += rows(cp, torch, nd, dtype_name, args.reps, spatial, flat)
        cp.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
    bw1 = copy_bandwidth(cp)
    bw = max(bw0, bw1)
    for r in results:
        r["bound_ms"] = r["bytes"] / bw * 1e3
        r["bound_pct"] = 100.0 * r["bound_ms"] / r["normdrop_ms"]
        r["vs_torch"] = r["torch_ms"] / r["normdrop_ms"]
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": name, "compute_capability": dev.compute_capability,
        "cupy": cp.__version__, "torch": torch.__version__, "normdrop": nd.__version__,
        "python": platform.python_version(), "driver": cp.cuda.runtime.driverGetVersion(),
        "copy_bandwidth_GBps": [bw0 / 1e9, bw1 / 1e9], "reps": args.reps, "quick": args.quick,
    }
    print(f"# {meta['device']} (sm_{meta['compute_capability']}), {meta['date']}, "
          f"cupy {meta['cupy']}, torch {meta['torch']}")
    print(f"# D2D copy: {bw0 / 1e9:.0f} / {bw1 / 1e9:.0f} GB/s (before / after); medians of "
          f"{args.reps} CUDA-event timings")
    hdr = f"{'op':<22}{'shape':<18}{'dtype':<9}{'normdrop ms':>12}{'torch ms':>10}" \
          f"{'vs torch':>10}{'bound ms':>10}{'bound %':>9}"
    print(hdr)
    for r in results:
        print(f"{r['op']:<22}{'x'.join(map(str, r['shape'])):<18}{r['dtype']:<9}"
              f"{r['normdrop_ms']:>12.4f}{r['torch_ms']:>10.4f}{r['vs_torch']:>9.2f}x"
              f"{r['bound_ms']:>10.4f}{r['bound_pct']:>8.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
