"""``python -m normdrop bench``: normdrop side by side with its reference
backend, the cs231n NumPy code, PyTorch and the memory-bandwidth bound.

One row per op x shape x dtype (x memory layout with ``--layout``: the 4-D
rows of ops that read channels-last input in place can run on channels-last
memory, viewed as NCHW, for every contender, PyTorch's tensors in
``torch.channels_last``), each row measured in a fresh worker process
(so that no row inherits another's memory-allocator state), everyone with the
same thread count.  normdrop and PyTorch alternate in one loop (the order
reversed every round); then the slow contenders (reference backend, seed
code) run on their own until a time budget is spent, at least once.  The
table shows medians.

The bound is the time an op would take if it moved only the bytes it must
move at the bandwidth of a streaming copy (``np.copyto`` of a 1 GiB array
split over as many threads as the ops use, sampled before, between and after
the rows; bytes read and written both count):

==================  ================================================================
op                  bytes that must move (n values of ``s`` bytes)
==================  ================================================================
(spatial) bn fwd    ``3 n s``: x read for the statistics, then x read and out written
(spatial) bn bwd    ``5 n s``: dout and x read for the sums, then read again, dx written
dropout forward     ``2 n s + n / 8``: x read, out written, the packed mask written
dropout backward    ``2 n s + n / 8``: dout and the packed mask read, dx written
bn small fwd+bwd    ``8 n s``; the data sit in cache, so this bound is only indicative
==================  ================================================================
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np

import normdrop as nd

from . import _bench_seed
from ._optable import bench_rows
from ._validate import output_path_problem

COLUMNS = ("normdrop", "reference", "seed", "torch", "nd_torch")
#: Alternated every round (ABBA): normdrop, PyTorch and (--array torch)
#: normdrop called with torch tensors.
FAST = ("normdrop", "torch", "nd_torch")
#: Columns measured only when asked for.
OPTIONAL = ("nd_torch",)
#: Memory layouts of a row's x and dout: ``contiguous`` (as the shape says)
#: or ``channels_last`` (a 4-D NCHW view of NHWC memory).
LAYOUTS = ("contiguous", "channels_last")
KEEP = 0.5                              # dropout keep probability (PyTorch: drop 0.5)
EPS, MOMENTUM = 1e-5, 0.9


def _then(fn: Callable, sync) -> Callable:
    """fn followed by sync() (the device wait), or fn itself when sync is None."""
    if sync is None:
        return fn

    def call():
        fn()
        sync()
    return call


# ------------------------------------------------------------------ settings
@dataclasses.dataclass(frozen=True)
class Settings:
    """How long each row may measure."""
    reps: int            # at most this many samples per contender
    min_reps: int        # at least this many samples of normdrop and torch
    fast_budget: float   # seconds normdrop + torch may spend per row past min_reps
    slow_budget: float   # seconds each slow contender may spend per row (at least 1 sample)
    min_sample: float    # a sample lasts at least this long (small ops loop inside)
    copy_bytes: int      # size of the streaming copy that measures the bandwidth
    copy_reps: int       # copy samples before and after the rows (a third of it between rows)
    first_counts: float  # quick mode: a warm-up call slower than this is kept as a sample


DEFAULT = Settings(reps=21, min_reps=7, fast_budget=3.0, slow_budget=1.5, min_sample=2e-3,
                   copy_bytes=1 << 30, copy_reps=7, first_counts=math.inf)
QUICK = Settings(reps=5, min_reps=3, fast_budget=0.3, slow_budget=0.0, min_sample=1e-3,
                 copy_bytes=1 << 30, copy_reps=3, first_counts=0.5)


# ------------------------------------------------------------------ environment
class Env:
    """The arrays' library, the backend under test, synchronisation and the
    optional PyTorch, for one run."""

    def __init__(self, backend: str, torch_mod):
        self.backend = backend
        self.torch = torch_mod
        self.torch_note = None if torch_mod is not None else "torch is not importable"
        if backend == "cupy":
            import cupy
            self.xp = cupy
            self.sync = cupy.cuda.get_current_stream().synchronize
            self.seed = _bench_seed.on(cupy)
            if torch_mod is not None and not torch_mod.cuda.is_available():
                self.torch, self.torch_note = None, "torch has no CUDA device here"
            self.torch_device = "cuda"
        else:
            self.xp = np
            self.sync = None
            self.seed = _bench_seed.on(np)
            self.torch_device = "cpu"

    def asarray(self, a):
        return a if self.xp is np else self.xp.asarray(a)

    def to_torch(self, a):
        if self.torch_device == "cpu":
            return self.torch.from_numpy(a)
        return self.torch.from_dlpack(self.xp.asarray(a))

    def torch_sync(self):
        if self.torch_device != "cpu":
            self.torch.cuda.synchronize()

    def normdrop_call(self, fn: Callable, forced: bool) -> Callable:
        """fn run on the backend under test (forced: on the reference backend),
        waiting for the device where there is one."""
        sync = self.sync
        if forced:
            def call():
                with nd.force_reference():
                    fn()
                if sync is not None:
                    sync()
            return call
        return _then(fn, sync)

    def seed_call(self, fn: Callable) -> Callable:
        return _then(fn, self.sync)

    def torch_call(self, fn: Callable) -> Callable:
        return fn if self.torch_device == "cpu" else _then(fn, self.torch_sync)


# ------------------------------------------------------------------ the ops
def has_layout(op, row, layout: str) -> bool:
    """Whether the row can run in `layout` (channels-last: 4-D rows of ops
    whose test matrix gives them channels-last input)."""
    return layout == "contiguous" or (len(row.shape) == 4 and layout in op.layouts)


def _data(shape, dtype, channels, seed=0, layout="contiguous"):
    """x, dout, gamma, beta on the host; x and dout in `layout` (channels-last:
    the values made in NHWC order, returned as NCHW views of that memory)."""
    rng = np.random.default_rng(seed)
    made = shape if layout == "contiguous" else (shape[0], shape[2], shape[3], shape[1])
    x = rng.standard_normal(made, dtype=np.dtype(dtype))
    dout = rng.standard_normal(made, dtype=np.dtype(dtype))
    gamma = 1.0 + 0.1 * rng.standard_normal(channels, dtype=np.dtype(dtype))
    beta = 0.1 * rng.standard_normal(channels, dtype=np.dtype(dtype))
    return x, dout, gamma, beta


def _as_layout(a, layout):
    """The NCHW view of an array made in `layout`'s order (NHWC for channels-last)."""
    return a if layout == "contiguous" else a.transpose(0, 3, 1, 2)


def arrays(env: Env, op, row, dtype, layout="contiguous"):
    """x, dout, gamma, beta on the backend's device, x and dout as NCHW views
    of `layout`'s memory (a device copy is made in that order and viewed
    there, not re-laid out by the transfer)."""
    made = _data(row.shape, dtype, op.channels(row.shape), layout=layout)
    return tuple(_as_layout(env.asarray(a), layout) if i < 2 else env.asarray(a)
                 for i, a in enumerate(made))


def _normdrop_part(op, row, x, dout, gamma, beta, forced):
    """The call that row times on normdrop (built under force_reference when
    forced, so that a backward's cache comes from the same backend)."""
    ctx = nd.force_reference if forced else contextlib.nullcontext
    if op.kind == "dropout":
        param = op.params("train")
        if row.part == "fwd":
            return lambda: op.forward(x, param)
        with ctx():
            _, cache = op.forward(x, dict(param))
        return lambda: op.backward(dout, cache)
    param = op.params("train", eps=EPS, momentum=MOMENTUM) if op.running else op.params()
    if row.part == "fwd":
        return lambda: op.call_forward(x, gamma, beta, param, row.extra)
    if row.part == "bwd":
        with ctx():
            _, cache = op.call_forward(x, gamma, beta, dict(param), row.extra)
        return lambda: op.backward(dout, cache)

    def both():
        _, cache = op.call_forward(x, gamma, beta, param, row.extra)
        op.backward(dout, cache)
    return both


def _seed_part(seed_mod, op, row, x, dout, gamma, beta):
    """The same call on the cs231n NumPy code (normdrop._bench_seed)."""
    fwd = getattr(seed_mod, f"{op.seed}_forward")
    bwd = getattr(seed_mod, f"{op.seed}_backward")
    if op.kind == "dropout":
        param = {"p": KEEP, "mode": "train", "seed": 1234}
        if row.part == "fwd":
            return lambda: fwd(x, param)
        _, cache = fwd(x, param)
        return lambda: bwd(dout, cache)
    param = {"mode": "train", "eps": EPS, "momentum": MOMENTUM}
    args = (x, gamma, beta) + (() if row.extra is None else (row.extra,)) + (param,)
    if row.part == "fwd":
        return lambda: fwd(*args)
    if row.part == "bwd":
        _, cache = fwd(*args)
        return lambda: bwd(dout, cache)

    def both():
        _, c = fwd(*args)
        bwd(dout, c)
    return both


def build(env: Env, op, row, dtype, columns, layout="contiguous"):
    """({column: call}, {column: note}) for one row: normdrop (on the backend
    under test), its reference backend, the seed code and PyTorch, every one
    on x and dout in `layout`."""
    x, dout, gamma, beta = arrays(env, op, row, dtype, layout)
    calls, notes = {}, {}
    for col, forced in (("normdrop", env.backend == "reference"), ("reference", True)):
        if col in columns:
            calls[col] = env.normdrop_call(
                _normdrop_part(op, row, x, dout, gamma, beta, forced), forced)
    if "seed" in columns:
        if op.seed is None:
            notes["seed"] = "no cs231n code for this op"
        else:
            calls["seed"] = env.seed_call(_seed_part(env.seed, op, row, x, dout, gamma, beta))
    if "torch" in columns and env.torch is not None:
        # the backend's arrays (on the CPU the host ones): a CUDA tensor then
        # shares their memory and strides, channels-last included
        tx, tdout, tw, tb = (env.to_torch(a) for a in (x, dout, gamma, beta))
        fn, notes["torch"] = op.torch(env.torch, row.part, tx, tdout, tw, tb, row.extra)
        calls["torch"] = env.torch_call(fn)
    if "nd_torch" in columns:
        if env.torch is None:
            notes["nd_torch"] = env.torch_note
        else:     # the same data as torch tensors (zero-copy views of the NumPy arrays)
            tx, tdout, tw, tb = (env.to_torch(a) for a in (x, dout, gamma, beta))
            forced = env.backend == "reference"      # the backend of the normdrop column
            calls["nd_torch"] = env.normdrop_call(
                _normdrop_part(op, row, tx, tdout, tw, tb, forced), forced)
            notes["nd_torch"] = "normdrop called with torch tensors of the same data"
    return calls, notes


#: Every bench row, (op, row), from the op table; ``--ops`` picks rows by key.
ROWS = bench_rows()
KEYS = tuple(dict.fromkeys(row.key for _, row in ROWS))


def _row(key: str, label: str):
    for op, row in ROWS:
        if row.key == key and row.label == label:
            return op, row
    raise KeyError((key, label))


# ------------------------------------------------------------------ timing
def _timed(fn, number: int) -> float:
    """Seconds per call of fn over `number` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


#: A first call shorter than this is followed by a second, warm one, which
#: decides whether the samples loop inside (a first call of a few ms that
#: pays for imports must not make a 40 us call run once per sample).
_WARM_AGAIN = 0.25


def interleave(calls: dict, reps: int, min_reps: int, budget: float, st: Settings):
    """Interleaved repetitions of the contenders in `calls`.

    Each contender is called once to warm up, and once more when that call
    was short, to size the inner loop of very short calls on a warm call; a
    contender whose warm-up raises is left out and its
    error returned.  Then every round runs each contender once more, in the
    order of `calls` on even rounds and reversed on odd ones (ABBA), until it
    has `reps` samples or, past `min_reps`, the contenders together have spent
    `budget` seconds.

    Returns ``({column: {"median": s, "samples": [...], "number": k}}, {column: error})``.
    """
    number, samples, spent, errors = {}, {}, {}, {}
    for key, fn in calls.items():
        try:
            t = _timed(fn, 1)
        except Exception as exc:  # noqa: BLE001 - reported in the table's notes
            errors[key] = f"failed: {type(exc).__name__}: {exc}"
            continue
        samples[key] = [t] if t > st.first_counts else []
        spent[key] = t
        number[key] = 1
        if t < _WARM_AGAIN:  # a first call pays for imports and caches: size on a warm one
            t = _timed(fn, 1)
            spent[key] += t
        if t < st.min_sample:  # short call: size the inner loop on warm calls
            n = 1
            while True:
                t = _timed(fn, n)
                spent[key] += t * n
                if t * n >= st.min_sample / 4 or n >= 100_000:
                    break
                n *= 4
            number[key] = max(1, min(100_000, math.ceil(st.min_sample / max(t, 1e-9))))
    order = list(samples)
    rnd = 0
    while True:
        ran = False
        group_spent = sum(spent.values())
        for key in (order if rnd % 2 == 0 else order[::-1]):
            n = len(samples[key])
            if n >= reps or (n >= min_reps and group_spent > budget):
                continue
            t = _timed(calls[key], number[key])
            samples[key].append(t)
            spent[key] += t * number[key]
            ran = True
        rnd += 1
        if not ran:
            break
    return ({k: {"median": statistics.median(v), "quartiles": _quartiles(v), "samples": v,
                 "number": number[k]} for k, v in samples.items()}, errors)


def _quartiles(v):
    if len(v) < 2:
        return [v[0], v[0]]
    q = statistics.quantiles(v, n=4)
    return [q[0], q[2]]


def measure(calls: dict, st: Settings):
    """normdrop and torch interleaved in one loop (the A/B pair), then each
    slow contender (reference backend, seed code) on its own, so that their
    large temporaries do not disturb the pair's memory allocator."""
    fast = {k: f for k, f in calls.items() if k in FAST}
    res, errors = interleave(fast, st.reps, st.min_reps, st.fast_budget, st)
    for key, fn in calls.items():
        if key not in FAST:
            r, e = interleave({key: fn}, st.reps, 1, st.slow_budget, st)
            res.update(r)
            errors.update(e)
    return res, errors


class CopyMeter:
    """A streaming copy whose bandwidth is sampled through the run.

    NumPy: ``np.copyto`` of an nbytes array split into `threads` chunks
    copied by as many threads (NumPy releases the GIL); CuPy: a
    device-to-device ``cupy.copyto``.  Bytes read and written both count.
    """

    def __init__(self, env: Env, threads: int, nbytes: int):
        xp = env.xp
        n = nbytes // 8
        self.nbytes = n * 8
        self.times = []
        self.pool = None
        src = xp.ones(n, dtype=xp.float64)
        dst = xp.empty_like(src)
        if xp is not np:
            def run():
                xp.copyto(dst, src)
                env.sync()
            self.method = f"cupy.copyto of {nbytes >> 20} MiB"
        elif threads <= 1:
            def run():
                np.copyto(dst, src)
            self.method = f"np.copyto of {nbytes >> 20} MiB in 1 thread"
        else:
            from concurrent.futures import ThreadPoolExecutor
            edges = [n * i // threads // 512 * 512 for i in range(threads)] + [n]
            parts = [(dst[a:b], src[a:b]) for a, b in zip(edges[:-1], edges[1:])]
            self.pool = ThreadPoolExecutor(threads)

            def one(i):
                np.copyto(*parts[i])

            def run():
                list(self.pool.map(one, range(threads)))
            self.method = f"np.copyto of {nbytes >> 20} MiB in {threads} threads"
        self.run = run
        run()
        run()

    def sample(self, reps: int) -> float:
        """Take `reps` samples; return their bandwidth (bytes/s, median)."""
        t = [_timed(self.run, 1) for _ in range(reps)]
        self.times += t
        return 2 * self.nbytes / statistics.median(t)

    def bandwidth(self) -> float:
        return 2 * self.nbytes / statistics.median(self.times)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()
        self.run = None


# ------------------------------------------------------------------ machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _wants_torch(columns) -> bool:
    """Whether a run of these columns needs torch (its own column, or
    normdrop on torch tensors)."""
    return "torch" in columns or "nd_torch" in columns


def _import_torch():
    try:
        import torch
    except Exception:  # noqa: BLE001 - any failure means no torch column
        return None
    return torch


def set_threads(threads: int, torch_mod):
    """Limit every OpenMP/BLAS pool loaded (normdrop's, NumPy's, PyTorch's)
    and PyTorch's intra-op pool to `threads`; returns the threadpoolctl
    limiter (None without threadpoolctl, where nothing can be limited and
    the count must already be right)."""
    from . import _cpu  # loads normdrop's OpenMP runtime before limiting it
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if _cpu.have_openmp() and _cpu.max_threads() != threads:
            raise SystemExit(f"bench: {threads} threads need threadpoolctl (pip install "
                             f"'normdrop[bench]'), or OMP_NUM_THREADS={threads}") from None
        limiter = None
    else:
        limiter = threadpool_limits(limits=threads)
    if torch_mod is not None:
        torch_mod.set_num_threads(threads)
    return limiter


def machine_info(threads: int) -> dict:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cpus_available": _available_cpus(),
        "threads": threads,
        "platform": platform.platform(),
    }


def runtime_info(env: Env) -> dict:
    """What a worker saw: the threads each library runs, the versions, the GPU."""
    from . import _cpu
    info = {"openmp": bool(_cpu.have_openmp()),
            "normdrop_threads": _cpu.max_threads() if _cpu.have_openmp() else 1,
            "isa": _cpu.isa(),
            "versions": {"normdrop": nd.__version__, "numpy": np.__version__,
                         "python": platform.python_version()}}
    if env.torch is not None:
        info["versions"]["torch"] = env.torch.__version__
        if env.torch_device == "cpu":
            info["torch_threads"] = env.torch.get_num_threads()
    if env.backend == "cupy":
        info["versions"]["cupy"] = env.xp.__version__
        dev = env.xp.cuda.Device()
        name = env.xp.cuda.runtime.getDeviceProperties(dev.id)["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else name
    return info


# ------------------------------------------------------------------ the run
def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def _paired(a: list, b: list):
    """Median of the ratios of the i-th samples of a and b (interleaved pairs)."""
    pairs = [x / y for x, y in zip(a, b) if y > 0]
    return statistics.median(pairs) if pairs else None


def run_row(env: Env, op, row, dtype: str, columns, st: Settings,
            layout: str = "contiguous") -> dict:
    """Measure one op x dtype x layout; the bound is filled in by :func:`run`."""
    notes = {c: "skipped (--skip)" for c in COLUMNS if c not in columns and c not in OPTIONAL}
    if "torch" in columns and env.torch is None:
        notes["torch"] = env.torch_note
    calls, built_notes = build(env, op, row, dtype, columns, layout)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        res, errors = measure(calls, st)
    finally:
        if was_enabled:
            gc.enable()
    del calls
    gc.collect()
    notes.update(errors)
    notes.update({k: v for k, v in built_notes.items() if k not in notes})
    med = {c: (res[c]["median"] if c in res else None) for c in COLUMNS}
    return {
        "op": row.key,
        "title": row.title,
        "shape": list(row.shape),
        "layout": layout,
        "dtype": dtype,
        "bytes": row.bytes(np.dtype(dtype).itemsize),
        **{f"{c}_s": med[c] for c in COLUMNS},
        "bound_s": None,
        "normdrop_over_torch": _ratio(med["normdrop"], med["torch"]),
        "normdrop_over_torch_paired": (_paired(res["normdrop"]["samples"], res["torch"]["samples"])
                                       if "normdrop" in res and "torch" in res else None),
        "fraction_of_bound": None,
        "seed_over_normdrop": _ratio(med["seed"], med["normdrop"]),
        "reference_over_normdrop": _ratio(med["reference"], med["normdrop"]),
        "nd_torch_over_normdrop_paired": (
            _paired(res["nd_torch"]["samples"], res["normdrop"]["samples"])
            if "nd_torch" in res and "normdrop" in res else None),
        "bound_in_cache": row.in_cache,
        "samples": {c: len(r["samples"]) for c, r in res.items()},
        "calls_per_sample": {c: r["number"] for c, r in res.items()},
        "quartiles_s": {c: r["quartiles"] for c, r in res.items()},
        "notes": notes,
    }


def _fmt_time(s):
    if s is None:
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt(v, kind):
    if v is None:
        return "n/a"
    if kind == "ratio":
        return f"{v:.2f}"
    if kind == "pct":
        return f"{100 * v:.0f}%"
    return f"{v:.1f}x"


TABLE = (  # (header, row -> text)
    ("op", lambda r: r["op"]),
    ("shape", lambda r: "x".join(map(str, r["shape"]))),
    ("dtype", lambda r: r["dtype"]),
    ("normdrop", lambda r: _fmt_time(r["normdrop_s"])),
    ("reference", lambda r: _fmt_time(r["reference_s"])),
    ("seed", lambda r: _fmt_time(r["seed_s"])),
    ("torch", lambda r: _fmt_time(r["torch_s"])),
    ("bound", lambda r: _fmt_time(r["bound_s"]) + ("*" if r["bound_in_cache"] else "")),
    ("nd/torch", lambda r: _fmt(r["normdrop_over_torch"], "ratio")),
    ("of bound", lambda r: _fmt(r["fraction_of_bound"], "pct")),
    ("seed/nd", lambda r: _fmt(r["seed_over_normdrop"], "x")),
    ("ref/nd", lambda r: _fmt(r["reference_over_normdrop"], "x")),
)
#: With --array torch: normdrop on torch tensors, and its time over the NumPy
#: path's (median of the interleaved pairs).
TORCH_ARRAY_TABLE = (
    ("nd(torch)", lambda r: _fmt_time(r.get("nd_torch_s"))),
    ("nd(torch)/nd", lambda r: _fmt(r.get("nd_torch_over_normdrop_paired"), "ratio")),
)


#: Shown after the shape when some row is not in the contiguous layout.
LAYOUT_COLUMN = ("layout", lambda r: r.get("layout", "contiguous"))


def format_table(rows) -> str:
    table = TABLE
    if any(r.get("layout", "contiguous") != "contiguous" for r in rows):
        table = table[:2] + (LAYOUT_COLUMN,) + table[2:]
    if any(r.get("nd_torch_s") is not None for r in rows):
        table = table + TORCH_ARRAY_TABLE
    cells = [[h for h, _ in table]] + [[f(r) for _, f in table] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(table))]
    left = table.index(TABLE[2]) + 1  # op, shape[, layout], dtype left-aligned; numbers right

    def line(c):
        return "  ".join(s.ljust(w) if i < left else s.rjust(w)
                         for i, (s, w) in enumerate(zip(c, widths))).rstrip()
    out = [line(cells[0]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells[1:]]
    return "\n".join(out)


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def header_lines(report) -> list:
    m, rt = report["machine"], report["runtime"]
    v = rt.get("versions", {})
    bw = report["copy_bandwidth"]
    used = []
    if "normdrop_threads" in rt:
        used.append(f"normdrop OpenMP {'on' if rt['openmp'] else 'off'}, "
                    f"{_count(rt['normdrop_threads'], 'thread')}")
    if "torch_threads" in rt:
        used.append(f"torch {_count(rt['torch_threads'], 'thread')}")
    return [
        f"machine: {m['cpu']}, {_count(m['cores'], 'core')} ({m['cpus_available']} available), "
        f"{_count(m['threads'], 'thread')} used" + (f" ({'; '.join(used)})" if used else "")
        + (f", GPU {rt['gpu']}" if "gpu" in rt else ""),
        f"date: {report['date']}; {m['platform']}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items())
        + ("" if "torch" in v else ", torch not installed" if report.get("torch_wanted", True)
           else ", torch skipped (--skip)")
        + (f"; ISA variants: normalization {rt['isa']['normalization']}, dropout "
           f"{rt['isa']['dropout']}" if rt.get("isa") else ""),
        f"backend: {report['backend']}; streaming copy ({bw['method']}): "
        f"{bw['bytes_per_s'] / 1e9:.1f} GB/s (start {bw['start'] / 1e9:.1f}, "
        f"end {bw['end'] / 1e9:.1f}); times are medians of interleaved repetitions, "
        "each row in a fresh process" + (" (quick)" if report["quick"] else ""),
    ]


def footer_lines(report) -> list:
    lines = ["bound: minimum bytes the op moves / streaming-copy bandwidth "
             "(* data fit in cache: shown for completeness); of bound = bound / normdrop; "
             "seed = the cs231n NumPy code"]
    groups = {}
    for r in report["rows"]:
        for col, note in r["notes"].items():
            ops = groups.setdefault((col, note), [])
            if r["op"] not in ops:
                ops.append(r["op"])
    for (col, note), ops in groups.items():
        every = len(ops) == len({r["op"] for r in report["rows"]})
        lines.append(f"{col}{'' if every else ' (' + ', '.join(ops) + ')'}: {note}")
    return lines


_RESULT = "normdrop-bench-result: "
_WORKER = "import sys; from normdrop._bench import worker; sys.exit(worker(sys.argv[1]))"


def worker(spec: str) -> int:
    """One row in this process (run by :func:`run` in a fresh interpreter, so
    that no row inherits another's memory-allocator state): the result as a
    JSON line on stdout."""
    spec = json.loads(spec)
    columns = tuple(spec["columns"])
    env = Env(spec["backend"], _import_torch() if _wants_torch(columns) else None)
    limiter = set_threads(spec["threads"], env.torch)
    row = run_row(env, *_row(spec["op"], spec["shape"]), spec["dtype"], columns,
                  QUICK if spec["quick"] else DEFAULT, spec.get("layout", "contiguous"))
    result = {"row": row, "runtime": runtime_info(env)}
    if limiter is not None:
        limiter.restore_original_limits()
    sys.stdout.write(_RESULT + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def _run_worker(spec: dict):
    """(result, None) from a worker process, or (None, error text)."""
    import subprocess
    env = dict(os.environ)
    env.pop("NORMDROP_BACKEND", None)  # --backend decides
    proc = subprocess.run([sys.executable, "-c", _WORKER, json.dumps(spec)], env=env,
                          stdout=subprocess.PIPE, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):]), None
    return None, f"failed: the worker process exited with code {proc.returncode}"


def _failed_row(row, dtype: str, error: str, layout: str = "contiguous") -> dict:
    return {"op": row.key, "title": row.title, "shape": list(row.shape), "layout": layout,
            "dtype": dtype,
            "bytes": row.bytes(np.dtype(dtype).itemsize), **{f"{c}_s": None for c in COLUMNS},
            "bound_s": None, "normdrop_over_torch": None, "normdrop_over_torch_paired": None,
            "fraction_of_bound": None, "seed_over_normdrop": None,
            "reference_over_normdrop": None, "bound_in_cache": row.in_cache, "samples": {},
            "calls_per_sample": {}, "quartiles_s": {}, "notes": {"normdrop": error}}


def run(backend="cpu", dtypes=("float32", "float64"), threads=None, quick=False, ops=None,
        skip=(), out=None, progress=None, array="numpy", layouts=("contiguous",)) -> dict:
    """Run the benchmark, print the table to `out` (progress to `progress`)
    and return the report (what ``--json`` writes).  `layouts`: the memory
    layouts each row runs in, where it has them (:func:`has_layout`).

    Each row runs in a fresh worker process; this process samples the
    streaming copy before, between and after them, so that the bound sees
    the same machine as the ops.
    """
    out = sys.stdout if out is None else out
    progress = sys.stderr if progress is None else progress
    st = QUICK if quick else DEFAULT
    columns = tuple(c for c in COLUMNS if c not in skip and
                    (c not in OPTIONAL or (c == "nd_torch" and array == "torch")))
    if backend == "cupy":
        try:
            import cupy
            if not cupy.cuda.is_available():
                raise RuntimeError("no GPU available")
        except Exception as exc:  # noqa: BLE001
            raise SystemExit(f"bench: --backend cupy needs CuPy and a GPU ({exc})") from None
    if threads is None:
        threads = _available_cpus()
    limiter = set_threads(threads, None)  # fails early where threads cannot be set
    if limiter is not None:
        limiter.restore_original_limits()
    report = {
        "machine": machine_info(threads),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "backend": backend,
        "quick": quick,
        "threads": threads,
        "layouts": list(layouts),
        "columns": [f"{c}_s" for c in COLUMNS] + [
            "bound_s", "normdrop_over_torch", "fraction_of_bound", "seed_over_normdrop",
            "reference_over_normdrop"],
        "runtime": {},
        "torch_wanted": _wants_torch(columns),
    }
    meter = CopyMeter(Env(backend, None), threads, st.copy_bytes)
    try:
        first = meter.sample(st.copy_reps)
        print(f"bench: streaming copy {first / 1e9:.1f} GB/s", file=progress, flush=True)
        rows = []
        wanted = set(ops or KEYS)
        for op, brow in ROWS:
            if brow.key not in wanted:
                continue
            key = brow.key
            for layout in (lay for lay in layouts if has_layout(op, brow, lay)):
                for dtype in dtypes:
                    spec = {"backend": backend, "op": key, "shape": brow.label,
                            "dtype": dtype, "columns": columns, "quick": quick,
                            "threads": threads, "layout": layout}
                    result, error = _run_worker(spec)
                    if result is None:
                        rows.append(_failed_row(brow, dtype, error, layout))
                    else:
                        rows.append(result["row"])
                        report["runtime"] = report["runtime"] or result["runtime"]
                    meter.sample(max(1, st.copy_reps // 3))
                    lay = "" if layout == "contiguous" else f" {layout}"
                    print(f"bench: {key} {brow.label}{lay} {dtype}: normdrop "
                          f"{_fmt_time(rows[-1]['normdrop_s'])}",
                          file=progress, flush=True)
        last = meter.sample(st.copy_reps)
    finally:
        meter.close()
    bw = meter.bandwidth()
    for r in rows:
        r["bound_s"] = r["bytes"] / bw
        r["fraction_of_bound"] = _ratio(r["bound_s"], r["normdrop_s"])
    report["copy_bandwidth"] = {"method": meter.method, "bytes": meter.nbytes,
                                "bytes_per_s": bw, "start": first, "end": last,
                                "samples": len(meter.times)}
    report["rows"] = rows
    print("\n".join(header_lines(report)), file=out)
    print(format_table(rows), file=out)
    print("\n".join(footer_lines(report)), file=out, flush=True)
    return report


# ------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("cpu", "reference", "cupy"), default="cpu",
                   help="what the normdrop column runs: the C kernels on NumPy arrays (cpu), "
                        "the reference backend on NumPy arrays, or the CUDA kernels on CuPy "
                        "arrays (default: cpu)")
    p.add_argument("--dtype", choices=("float32", "float64", "all"), default="all",
                   help="dtype of the rows (default: all)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for everyone: OpenMP/BLAS via threadpoolctl and "
                        "torch.set_num_threads (default: the CPUs available)")
    p.add_argument("--quick", action="store_true",
                   help="few repetitions, for a smoke test; the numbers are rough")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON to PATH")
    p.add_argument("--ops", default="all", metavar="LIST",
                   help="comma-separated ops (default all): " + ", ".join(KEYS))
    p.add_argument("--skip", default="", metavar="LIST",
                   help="comma-separated columns not to measure: reference, seed, torch")
    p.add_argument("--array", choices=("numpy", "torch"), default="numpy",
                   help="torch: also time normdrop called with torch tensors of the same data "
                        "(the nd(torch) column, interleaved with the NumPy path; its ratio to "
                        "it in nd(torch)/nd)")
    p.add_argument("--layout", choices=LAYOUTS + ("both",), default="contiguous",
                   help="memory layout of x and dout: contiguous (default), channels_last "
                        "(NHWC memory viewed as NCHW, for everyone, torch.channels_last for "
                        "PyTorch; only the 4-D rows of ops that take it: spatial batchnorm and "
                        "groupnorm), or both (every row contiguous, those rows channels-last too)")


def _split(text: str) -> list:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(args) -> int:
    ops = list(KEYS) if args.ops.strip() == "all" else _split(args.ops)
    if not ops:
        print(f"bench: --ops {args.ops!r} names no op; known: {', '.join(KEYS)}", file=sys.stderr)
        return 2
    bad = [o for o in ops if o not in KEYS]
    if bad:
        print(f"bench: unknown op(s) {', '.join(bad)}; known: {', '.join(KEYS)}", file=sys.stderr)
        return 2
    skip = _split(args.skip)
    bad = [c for c in skip if c not in ("reference", "seed", "torch")]
    if bad:
        print(f"bench: --skip takes reference, seed, torch; got {', '.join(bad)}",
              file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("bench: --threads must be at least 1", file=sys.stderr)
        return 2
    problem = args.json and output_path_problem(args.json)
    if problem:                              # said now, not after the whole run
        print(f"bench: --json {args.json}: {problem}", file=sys.stderr)
        return 2
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    if not any(has_layout(op, row, lay) for op, row in ROWS if row.key in ops
               for lay in layouts):
        have = sorted({row.key for op, row in ROWS if has_layout(op, row, "channels_last")})
        print(f"bench: no row of --ops {','.join(ops)} has a {args.layout} layout; "
              f"channels-last rows: {', '.join(have)}", file=sys.stderr)
        return 2
    dtypes = ("float32", "float64") if args.dtype == "all" else (args.dtype,)
    report = run(backend=args.backend, dtypes=dtypes, threads=args.threads, quick=args.quick,
                 ops=ops, skip=skip, array=args.array, layouts=layouts)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    failed = [f"{r['op']} {r['dtype']}" + ("" if r["layout"] == "contiguous" else f" {r['layout']}")
              for r in report["rows"] if r["normdrop_s"] is None]
    if failed:
        print(f"bench: normdrop failed on {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
