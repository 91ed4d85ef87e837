"""``python -m normdrop demo``: the job learns (values, not times), runs the
same training on the cs231n layers, and reports what it cannot do in one line."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from normdrop import _demo

SMALL = dict(epochs=6, points_per_class=1000, hidden=256, batch_size=100, out=None)


def test_the_loss_falls_and_the_network_learns_the_spiral():
    r = _demo.run(compare=False, **SMALL)
    losses = [h["loss"] for h in r["history"]]
    assert len(losses) == 6
    assert losses[-1] < 0.5 * losses[0], losses
    assert r["final_loss"] == losses[-1]
    assert r["final_val_accuracy"] > 0.9, r["final_val_accuracy"]
    assert r["final_train_accuracy"] > 0.9
    assert r["cs231n"] is None


@pytest.mark.parametrize("kind", ["normdrop", "cs231n"])
def test_the_network_gradients_match_finite_differences(kind):
    """Backpropagation through the demo's network (both builds), checked by
    central differences in float64; dropout keeps everything (p = 1) so the
    function is deterministic.  Random first-layer features alone fit the
    spiral, so the accuracy tests would not notice a broken dx."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 2)), rng.integers(0, 3, 20)
    init = (rng.standard_normal((2, 8)), rng.standard_normal(8) * 0.1,
            rng.standard_normal((8, 3)), rng.standard_normal(3) * 0.1)
    cfg = dict(_demo.DEFAULTS, dtype="float64", keep=1.0)
    net = _demo._build(kind, np, init, cfg)
    net.scores(X)                                   # normdrop's layers make gamma here
    bn = net.layers[1]
    bn.gamma = bn.gamma + rng.standard_normal(8) * 0.3

    def loss():
        return float(_demo.softmax_loss(np, net.scores(X), y)[0])

    _, dscores = _demo.softmax_loss(np, net.scores(X), y)
    net.backward(dscores)
    checked = 0
    for layer, name in net.params():
        p, g = getattr(layer, name), getattr(layer, "d" + name)
        for i in range(min(p.size, 5)):
            idx = np.unravel_index(i, p.shape)
            old = p[idx]
            p[idx] = old + 1e-5
            up = loss()
            p[idx] = old - 1e-5
            down = loss()
            p[idx] = old
            num = (up - down) / 2e-5
            assert abs(num - g[idx]) <= 1e-6 * max(1.0, abs(num)), (name, idx, num, g[idx])
            checked += 1
    assert checked == 5 * 5 + 3                    # W1, b1, gamma, beta, W2; b2 has 3


def test_a_run_repeats_exactly_with_the_same_seed():
    a = _demo.run(compare=False, seed=3, **dict(SMALL, epochs=2))
    b = _demo.run(compare=False, seed=3, **dict(SMALL, epochs=2))
    c = _demo.run(compare=False, seed=4, **dict(SMALL, epochs=2))
    key = lambda r: [(h["loss"], h["train_acc"], h["val_acc"]) for h in r["history"]]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)


def test_the_default_job_and_its_cs231n_twin_both_learn(capsys):
    """The defaults (two epochs here): both trainings reach a good accuracy
    from the same start, and the output ends with the line CI reads."""
    state = np.random.get_state()
    r = _demo.run(epochs=2, out=sys.stdout)
    out = capsys.readouterr().out.splitlines()
    assert r["final_val_accuracy"] > 0.9
    seed = r["cs231n"]
    assert seed is not None and len(seed["history"]) == 2
    assert seed["final_val_accuracy"] > 0.9
    assert seed["history"][-1]["loss"] < 0.5 * seed["history"][0]["loss"]
    # the cs231n dropout seeds np.random; the demo restores it afterwards
    assert all(np.array_equal(u, v) for u, v in zip(state, np.random.get_state()))
    assert out[-1].startswith(f"{_demo.LAST_LINE} {r['final_val_accuracy']:.4f} ")
    assert sum(line.startswith("  epoch ") for line in out) == 4
    assert any(line.startswith("side by side") for line in out)
    assert any("seconds per epoch" in line for line in out)


def test_float64_runs_in_float64():
    r = _demo.run(compare=False, dtype="float64", **SMALL)
    assert r["config"]["dtype"] == "float64" and r["final_val_accuracy"] > 0.9


def test_the_command_prints_the_last_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "normdrop", "demo", "--epochs", "1",
                          "--no-compare", "--batch-size", "256"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(_demo.LAST_LINE + " 0."), last
    assert "  epoch 1/1  loss " in res.stdout


def _main(capsys, *argv):
    from normdrop.__main__ import main
    rc = main(["demo", *argv])
    return rc, capsys.readouterr()


def test_plot_without_matplotlib_is_one_line(capsys, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    rc, cap = _main(capsys, "--plot", str(tmp_path / "c.png"))
    assert rc == 2
    assert cap.err.count("\n") == 1 and "matplotlib is not installed" in cap.err, cap.err
    assert "pip install matplotlib" in cap.err
    assert cap.out == ""                                # failed before training
    assert not (tmp_path / "c.png").exists()


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    r = _demo.run(plot=str(path), **dict(SMALL, epochs=2))
    assert r["plot"] == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_cuda_where_there_is_none(capsys):
    from normdrop._info import _cuda_status
    if _cuda_status()["usable"]:
        pytest.skip("a GPU is usable here")
    rc, cap = _main(capsys, "--device", "cuda")
    assert rc == 2
    assert cap.err.startswith("demo: error: --device cuda is not available here: ")
    assert cap.err.count("\n") == 1


def test_threads_without_threadpoolctl_gives_the_environment_variable(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)     # import fails
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rc, cap = _main(capsys, "--threads", "1")
    assert rc == 2
    assert "OMP_NUM_THREADS=1 python -m normdrop demo" in cap.err and "threadpoolctl" in cap.err


def test_threads_with_threadpoolctl():
    pytest.importorskip("threadpoolctl")
    from normdrop import _cpu
    r = _demo.run(threads=1, compare=False, **dict(SMALL, epochs=1))
    if _cpu.have_openmp():
        assert "OpenMP, 1 thread(s)" in r["backend"], r["backend"]


def test_plot_paths_it_cannot_write_are_refused_before_training(tmp_path):
    """An extension matplotlib does not write, or none (it would append
    .png, and the demo named the wrong file), and a folder: errors before
    any training, as for a folder that does not exist."""
    pytest.importorskip("matplotlib")
    (tmp_path / "out").mkdir()
    for name, message in (("c.txt", "needs an extension matplotlib writes"),
                          ("c", "needs an extension matplotlib writes"),
                          ("out", "is a folder"),
                          ("no/c.png", "does not exist")):
        with pytest.raises(_demo.DemoError, match=message):
            _demo.run(plot=str(tmp_path / name), **SMALL)
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="float16"), "--dtype must be float32 or float64"),
    (dict(epochs=0), "--epochs must be >= 1, got 0$"),
    (dict(batch_size=1), "--batch-size must be >= 2, got 1$"),    # each names only its flag
    (dict(seed=-3), "--seed must be >= 0, got -3$"),
    (dict(batch_size=10**6), "larger than the training set"),
    (dict(device="tpu"), "--device must be cpu or cuda"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(_demo.DemoError, match=message):
        _demo.run(**dict(SMALL, **kwargs))


def test_the_demo_in_an_unbuilt_source_tree_says_what_to_run(tmp_path):
    from test_build_check import _source_tree
    root = _source_tree(tmp_path)
    env = dict(os.environ)
    env.pop("NORMDROP_BACKEND", None)
    res = subprocess.run([sys.executable, "-m", "normdrop", "demo", "--epochs", "1"], cwd=root,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1, res.stderr          # one line, no traceback
    assert res.stderr.startswith("demo: error: normdrop is imported from the source tree")
    assert f"pip install -e {root}" in res.stderr
    assert res.stdout == ""
