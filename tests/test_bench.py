"""`python -m normdrop bench` and its seed baseline.

The bench is run for real on a tiny selection in quick mode: the test checks
that the table and the JSON report carry every column with positive times.
It never compares timings.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

import normdrop as nd
from normdrop import _bench, _bench_seed



def _importable(name):
    try:
        __import__(name)
    except Exception:  # noqa: BLE001 - the bench treats any failure as "not installed"
        return False
    return True


HAVE_TORCH = _importable("torch")
HAVE_THREADPOOLCTL = importlib.util.find_spec("threadpoolctl") is not None


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "normdrop", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "report.json"
    args = ["bench", "--quick", "--ops", "bn-small,dropout-bwd", "--dtype", "float32",
            "--json", str(path)]
    if HAVE_THREADPOOLCTL:
        args += ["--threads", "1"]
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(path.read_text())


def test_bench_json_has_every_column(quick_report):
    _, report = quick_report
    rows = report["rows"]
    assert [(r["op"], r["dtype"]) for r in rows] == [("bn-small", "float32"),
                                                     ("dropout-bwd", "float32")]
    assert {"normdrop_s", "reference_s", "seed_s", "torch_s", "bound_s", "normdrop_over_torch",
            "fraction_of_bound"} <= set(report["columns"])
    for r in rows:
        for col in report["columns"]:
            assert col in r, (r["op"], col)
        for col in ("normdrop_s", "reference_s", "seed_s", "bound_s", "fraction_of_bound",
                    "seed_over_normdrop", "reference_over_normdrop"):
            assert isinstance(r[col], float) and r[col] > 0, (r["op"], col, r[col])
        if HAVE_TORCH:
            assert r["torch_s"] > 0 and r["normdrop_over_torch"] > 0, r
        else:
            assert r["torch_s"] is None and "torch" in r["notes"], r
        assert r["bytes"] > 0 and r["samples"]["normdrop"] >= _bench.QUICK.min_reps


def test_bench_report_describes_the_run(quick_report):
    _, report = quick_report
    if HAVE_THREADPOOLCTL:
        assert report["threads"] == 1
        assert report["runtime"]["normdrop_threads"] == 1
        if HAVE_TORCH:
            assert report["runtime"]["torch_threads"] == 1
    assert report["machine"]["cpu"] and report["date"]
    assert report["runtime"]["versions"]["normdrop"] == nd.__version__
    assert report["copy_bandwidth"]["bytes_per_s"] > 0


def test_bench_prints_the_table(quick_report):
    out, _ = quick_report
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and " used" in lines[0]
    header = next(line for line in lines if line.startswith("op "))
    for name in ("normdrop", "reference", "seed", "torch", "bound", "nd/torch", "of bound"):
        assert name in header
    assert any(line.startswith("bn-small ") for line in lines)
    assert any(line.startswith("dropout-bwd ") for line in lines)


def test_short_calls_loop_inside_a_sample_even_after_a_slow_first_call():
    """A contender whose first call pays for imports (here 30 ms once) but
    whose warm calls take microseconds is sized on a warm call: its samples
    loop many calls, as the others' do, instead of timing one call each."""
    import time
    first = [True]

    def cold_then_fast():
        if first[0]:
            first[0] = False
            time.sleep(0.03)

    def fast():
        pass

    res, errors = _bench.interleave({"a": fast, "b": cold_then_fast}, 3, 3, 0.0, _bench.QUICK)
    assert not errors
    assert res["a"]["number"] > 100
    assert res["b"]["number"] > 100


def test_bench_rejects_unknown_ops():
    proc = _cli("bench", "--ops", "no-such-op")
    assert proc.returncode == 2 and "no-such-op" in proc.stderr


def test_bench_rejects_a_json_path_it_cannot_write_and_an_empty_op_list(tmp_path):
    """Said before the run (the report used to be lost to a traceback after
    the whole bench), and --ops ',' is no op rather than every op."""
    for path, why in ((tmp_path / "no" / "r.json", "does not exist"), (tmp_path, "is a folder")):
        proc = _cli("bench", "--quick", "--ops", "bn-small-fwd", "--json", str(path))
        assert proc.returncode == 2 and why in proc.stderr, proc.stderr
        assert "streaming copy" not in proc.stdout + proc.stderr      # nothing was timed
    for empty in (",", ""):
        proc = _cli("bench", "--ops", empty)
        assert proc.returncode == 2 and "names no op" in proc.stderr, proc.stderr


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_bench_torch_array_column_without_the_torch_column(tmp_path):
    """--array torch with --skip torch still times normdrop on torch tensors
    (it said "torch is not importable"), and the header says torch was
    skipped, not missing; with --backend reference both normdrop columns run
    on the reference (nd(torch) ran the C kernels)."""
    path = tmp_path / "r.json"
    base = ["bench", "--quick", "--ops", "bn-small-fwd", "--dtype", "float32", "--array", "torch",
            "--json", str(path)] + (["--threads", "1"] if HAVE_THREADPOOLCTL else [])
    proc = _cli(*base, "--skip", "reference,seed,torch")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(path.read_text())["rows"][0]
    assert row["nd_torch_s"] is not None and row["torch_s"] is None, row
    assert "torch not installed" not in proc.stdout and "torch skipped" not in proc.stdout
    proc = _cli("bench", "--quick", "--ops", "bn-small-fwd", "--dtype", "float32",
                "--skip", "reference,seed,torch", *(["--threads", "1"] if HAVE_THREADPOOLCTL
                                                    else []))
    assert proc.returncode == 0 and "torch skipped (--skip)" in proc.stdout, proc.stdout
    # --backend reference: the nd(torch) call runs with the reference forced,
    # as the normdrop column's does
    import torch
    from normdrop import _bench
    entered = []
    real = nd.force_reference

    def counting(*a, **k):
        entered.append(1)
        return real(*a, **k)

    op, row = next((o, r) for o, r in _bench.ROWS if r.key == "bn-small-fwd")
    calls, _ = _bench.build(_bench.Env("reference", torch), op, row, "float32",
                            ("normdrop", "nd_torch"))
    for col in ("normdrop", "nd_torch"):
        entered.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(nd, "force_reference", counting)
            calls[col]()
        assert entered, f"the {col} column did not run on the reference"


def test_info_still_works():
    proc = _cli("info", timeout=60)
    assert proc.returncode == 0 and nd.__version__ in proc.stdout


# -------------------------------------------------- the seed baseline computes the same
def test_seed_batchnorm_matches_normdrop():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 7)) * 3 + 1
    gamma, beta = rng.standard_normal(7), rng.standard_normal(7)
    dout = rng.standard_normal((50, 7))
    out_s, cache_s = _bench_seed.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    out_n, cache_n = nd.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out_s, out_n, rtol=1e-10, atol=1e-12)
    for a, b in zip(_bench_seed.batchnorm_backward(dout, cache_s),
                    nd.batchnorm_backward(dout, cache_n)):
        np.testing.assert_allclose(np.reshape(a, np.shape(b)), b, rtol=1e-9, atol=1e-11)


def test_seed_spatial_batchnorm_matches_normdrop():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5, 6))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    dout = rng.standard_normal(x.shape)
    out_s, cache_s = _bench_seed.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    out_n, cache_n = nd.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out_s, out_n, rtol=1e-10, atol=1e-12)
    for a, b in zip(_bench_seed.spatial_batchnorm_backward(dout, cache_s),
                    nd.spatial_batchnorm_backward(dout, cache_n)):
        np.testing.assert_allclose(np.reshape(a, np.shape(b)), b, rtol=1e-9, atol=1e-11)


def test_seed_dropout_is_inverted_dropout():
    x = np.random.default_rng(5).standard_normal((200, 50)).astype(np.float32)
    out, cache = _bench_seed.dropout_forward(x, {"p": 0.25, "mode": "train", "seed": 1})
    kept = out != 0
    assert out.dtype == np.float32 and 0.15 < kept.mean() < 0.35
    np.testing.assert_allclose(out[kept], x[kept] / 0.25, rtol=1e-6)
    dx = _bench_seed.dropout_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(dx != 0, kept)


def test_bench_channels_last_rows_give_everyone_channels_last_memory():
    """--layout channels_last: normdrop, the seed code and PyTorch all get x
    and dout as NCHW views of NHWC memory (torch: torch.channels_last), for
    the 4-D rows of ops that read that layout; other rows have none."""
    import dataclasses
    op, row = next((o, r) for o, r in _bench.ROWS if r.key == "gn-bwd")
    assert _bench.has_layout(op, row, "channels_last")
    assert not any(_bench.has_layout(o, r, "channels_last") for o, r in _bench.ROWS
                   if r.key in ("bn-fwd", "ln-fwd", "ln-bwd", "dropout-fwd"))
    env = _bench.Env("cpu", None)
    for layout in ("contiguous", "channels_last"):
        x, dout, gamma, beta = _bench.arrays(env, op, row, "float32", layout)
        assert x.shape == dout.shape == row.shape and gamma.shape == (row.shape[1],)
        for a in (x, dout):
            nhwc = a.transpose(0, 2, 3, 1)
            assert (nhwc if layout == "channels_last" else a).flags.c_contiguous, layout
            assert a.flags.c_contiguous == (layout == "contiguous")
    if not HAVE_TORCH:
        return
    import torch
    seen = {}

    def recorder(torch_mod, part, tx, tdout, tw, tb, extra):
        seen["x"], seen["dout"] = tx, tdout
        return (lambda: None), "recorded"

    fake = dataclasses.replace(op, torch=recorder)
    calls, _ = _bench.build(_bench.Env("cpu", torch), fake, row, "float32",
                            ("normdrop", "torch"), "channels_last")
    assert set(calls) == {"normdrop", "torch"}
    for t in (seen["x"], seen["dout"]):
        assert tuple(t.shape) == row.shape
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def test_bench_layout_both_runs_the_channels_last_rows_too(tmp_path):
    path = tmp_path / "r.json"
    proc = _cli("bench", "--quick", "--ops", "gn-fwd", "--dtype", "float32", "--layout", "both",
                "--skip", "reference,seed,torch", "--json", str(path),
                *(["--threads", "1"] if HAVE_THREADPOOLCTL else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(path.read_text())
    assert report["layouts"] == ["contiguous", "channels_last"]
    got = [("x".join(map(str, r["shape"])), r["layout"]) for r in report["rows"]]
    assert got == [(s, lay) for s in ("32x64x56x56", "8x256x28x28")
                   for lay in ("contiguous", "channels_last")], got
    assert all(r["normdrop_s"] > 0 for r in report["rows"])
    header = next(line for line in proc.stdout.splitlines() if line.startswith("op "))
    assert header.split()[:4] == ["op", "shape", "layout", "dtype"], header
    assert any("channels_last" in line and line.startswith("gn-fwd ")
               for line in proc.stdout.splitlines())


def test_bench_layout_channels_last_without_such_a_row_is_refused():
    proc = _cli("bench", "--ops", "bn-fwd,ln-bwd", "--layout", "channels_last")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "channels_last" in proc.stderr and "gn-fwd" in proc.stderr, proc.stderr
    assert "streaming copy" not in proc.stdout + proc.stderr
