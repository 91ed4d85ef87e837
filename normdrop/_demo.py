"""``python -m normdrop demo``: a small network trained with normdrop's layers.

The network is affine -> batchnorm -> ReLU -> dropout -> affine -> softmax,
trained with SGD and momentum on cs231n's spiral data set (generated here,
nothing is downloaded), built from :class:`normdrop.layers.BatchNorm` and
:class:`normdrop.layers.Dropout`.  The same training then runs on the cs231n
NumPy layers (``normdrop._bench_seed``) from the same initial weights, data and
batch order, for a side by side of the time per epoch and the accuracy (the
dropout masks differ by design: normdrop's come from Philox, cs231n's from
``np.random``).

:func:`run` does the job and returns its numbers; :func:`main` is the command.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import sys
import time

import numpy as np

LAST_LINE = "demo: final validation accuracy"

DEFAULTS = {
    "epochs": 20,
    "batch_size": 128,
    "dtype": "float32",
    "seed": 0,
    "device": "cpu",
    "hidden": 1024,
    "points_per_class": 5000,
    "classes": 3,
    "keep": 0.8,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "val_fraction": 0.2,
}


class DemoError(Exception):
    """The demo cannot run as asked; the message says why, in one line."""


# ---------------------------------------------------------------- the data
def spiral(points_per_class, classes=3, seed=0, noise=0.2):
    """cs231n's spiral: ``classes`` arms of ``points_per_class`` points in 2-D.

    Returns
    -------
    X : float64 array (points_per_class * classes, 2)
    y : int64 array (points_per_class * classes,), the arm of each point
    """
    rng = np.random.default_rng(seed)
    n = points_per_class
    X = np.empty((n * classes, 2))
    y = np.empty(n * classes, dtype=np.int64)
    r = np.linspace(0.0, 1.0, n)
    for j in range(classes):
        t = np.linspace(j * 4.0, (j + 1) * 4.0, n) + rng.standard_normal(n) * noise
        X[j * n:(j + 1) * n] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[j * n:(j + 1) * n] = j
    return X, y


# ----------------------------------------------------------------- layers
class Affine:
    """``x @ W + b`` with its gradients (the demo's own, for both networks)."""

    param_names = ("W", "b")

    def __init__(self, W, b):
        self.W, self.b = W, b
        self.dW = self.db = None
        self._x = None

    def forward(self, x):
        self._x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW = self._x.T @ dout
        self.db = dout.sum(axis=0)
        return dout @ self.W.T


class ReLU:
    param_names = ()

    def forward(self, x):
        self._pos = x > 0
        return x * self._pos

    def backward(self, dout):
        return dout * self._pos


class _SeedBatchNorm:
    """The cs231n batchnorm functions behind the layer interface."""

    param_names = ("gamma", "beta")

    def __init__(self, ops, xp, D, dtype):
        self.ops = ops
        self.gamma = xp.ones(D, dtype=dtype)
        self.beta = xp.zeros(D, dtype=dtype)
        self.bn_param = {"mode": "train"}
        self.training = True

    def forward(self, x):
        self.bn_param["mode"] = "train" if self.training else "test"
        out, self._cache = self.ops.batchnorm_forward(x, self.gamma, self.beta, self.bn_param)
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = self.ops.batchnorm_backward(dout, self._cache)
        self.dgamma = dgamma.reshape(self.gamma.shape)     # cs231n's come back (1, D)
        self.dbeta = dbeta.reshape(self.beta.shape)
        return dx


class _SeedDropout:
    """The cs231n dropout functions behind the layer interface (masks from the
    global ``np.random``, seeded once per run)."""

    param_names = ()

    def __init__(self, ops, p):
        self.ops, self.p = ops, p
        self.training = True

    def forward(self, x):
        out, self._cache = self.ops.dropout_forward(
            x, {"p": self.p, "mode": "train" if self.training else "test"})
        return out

    def backward(self, dout):
        return self.ops.dropout_backward(dout, self._cache)


class Network:
    """affine -> batchnorm -> ReLU -> dropout -> affine, and a softmax loss."""

    def __init__(self, layers):
        self.layers = layers

    def train(self, mode=True):
        for layer in self.layers:
            if hasattr(layer, "training"):
                if hasattr(layer, "train"):
                    layer.train(mode)
                else:
                    layer.training = mode
        return self

    def scores(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dscores):
        for layer in reversed(self.layers):
            dscores = layer.backward(dscores)

    def params(self):
        """(layer, name) for every trainable parameter."""
        return [(layer, name) for layer in self.layers for name in layer.param_names]


def softmax_loss(xp, scores, y):
    """(mean cross-entropy as a 0-d array, dscores) for integer labels y."""
    shifted = scores - xp.max(scores, axis=1, keepdims=True)
    e = xp.exp(shifted)
    z = xp.sum(e, axis=1, keepdims=True)
    n = scores.shape[0]
    rows = xp.arange(n)
    loss = xp.mean(xp.log(z[:, 0]) - shifted[rows, y])
    dscores = e / z
    dscores[rows, y] -= 1
    return loss, dscores / n


# ---------------------------------------------------------------- helpers
def _namespace(device):
    if device == "cpu":
        return np
    if device != "cuda":
        raise DemoError(f"--device must be cpu or cuda, got {device!r}")
    from ._info import _cuda_status
    status = _cuda_status()
    if not status["usable"]:
        raise DemoError(f"--device cuda is not available here: {status['detail']}")
    import cupy
    return cupy


def _check_cpu_backend():
    """Import the C kernels now: a build problem is reported before any work."""
    from . import _cpu
    return _cpu


def _backend_line(device, xp):
    if device == "cuda":
        dev = xp.cuda.Device()
        name = xp.cuda.runtime.getDeviceProperties(dev.id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return f"cupy on normdrop's CUDA kernels (device {dev.id}: {name})"
    from . import _cpu
    if _cpu.have_openmp():
        return f"numpy on normdrop's C kernels (OpenMP, {_cpu.max_threads()} thread(s))"
    return "numpy on normdrop's C kernels (serial build)"


def _threads(threads):
    """(context, description): a context that runs normdrop's OpenMP kernels on
    ``threads`` threads (None: as configured) and NumPy's BLAS on one thread,
    and a line saying what it did.

    NumPy's BLAS (OpenBLAS) and normdrop's OpenMP runtime each keep a thread
    per core, which keep spinning for a while after each call, so alternating
    between the two with both pools on all cores makes each wait for the
    other's spinning threads (the demo's epochs took 4-13x longer that way on
    2 cores).  The demo's matrix products are small, so BLAS gets one thread,
    with threadpoolctl where it is installed.
    """
    if threads is not None and threads < 1:
        raise DemoError(f"--threads must be at least 1, got {threads}")
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        if threads is not None and os.environ.get("OMP_NUM_THREADS", "").strip() != str(threads):
            raise DemoError(f"--threads needs threadpoolctl (pip install threadpoolctl); "
                            f"without it, set the count when Python starts: "
                            f"OMP_NUM_THREADS={threads} python -m normdrop demo") from None
        blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        note = ("NumPy's BLAS as configured" + (f" ({blas} thread(s))" if blas else "")
                + ("" if blas == "1" else
                   "; threadpoolctl is not installed, so it cannot be set to one thread here, and "
                   "its threads and normdrop's compete for the cores (pip install threadpoolctl, "
                   "or start with OPENBLAS_NUM_THREADS=1)"))
        return contextlib.nullcontext(), note
    stack = contextlib.ExitStack()
    controller = ThreadpoolController()
    stack.enter_context(controller.limit(limits=1, user_api="blas"))
    if threads is not None:
        stack.enter_context(controller.limit(limits=threads, user_api="openmp"))
    return stack, "NumPy's BLAS on 1 thread (threadpoolctl), so that its threads and normdrop's " \
                  "do not compete for the cores"


def _check_plot(plot):
    if plot is None:
        return
    if importlib.util.find_spec("matplotlib") is None:
        raise DemoError(f"--plot {plot}: matplotlib is not installed (pip install matplotlib, "
                        "or pip install -e '.[demo]' in a clone); nothing was trained")
    from ._validate import output_path_problem
    problem = output_path_problem(plot)
    if problem:
        raise DemoError(f"--plot {plot}: {problem}")
    # matplotlib picks the format from the extension (and appends .png to a
    # name without one): an extension it does not write fails after training
    from matplotlib.figure import Figure
    formats = Figure().canvas.get_supported_filetypes()
    ext = os.path.splitext(plot)[1].lstrip(".").lower()
    if ext not in formats:
        raise DemoError(f"--plot {plot}: the file name needs an extension matplotlib writes: "
                        f"{', '.join(sorted(formats))}")


def _sync(xp):
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def _accuracy(xp, net, X, y, chunk=8192):
    net.train(False)
    correct = 0
    for i in range(0, X.shape[0], chunk):
        pred = xp.argmax(net.scores(X[i:i + chunk]), axis=1)
        correct += int(xp.sum(pred == y[i:i + chunk]))
    net.train(True)
    return correct / X.shape[0]


def _build(kind, xp, init, cfg):
    """The network from the initial weights ``init`` (NumPy arrays)."""
    dt = np.dtype(cfg["dtype"])
    W1, b1, W2, b2 = (xp.asarray(a.astype(dt)) for a in init)
    H = W1.shape[1]
    if kind == "normdrop":
        from .layers import BatchNorm, Dropout
        bn, drop = BatchNorm(H), Dropout(cfg["keep"], seed=cfg["seed"] % 2**32)
    else:
        from . import _bench_seed
        ops = _bench_seed.on(xp)
        bn, drop = _SeedBatchNorm(ops, xp, H, dt), _SeedDropout(ops, cfg["keep"])
    return Network([Affine(W1, b1), bn, ReLU(), drop, Affine(W2, b2)])


def _train(kind, xp, data, init, cfg, say):
    """Train one network; returns (network, per-epoch history)."""
    net = _build(kind, xp, init, cfg)
    if kind != "normdrop":                  # cs231n's dropout draws from the global RNG:
        saved = _global_rng(xp)             # seeded here, restored afterwards
        xp.random.seed(cfg["seed"] % 2**32)
        try:
            return _loop(xp, net, data, cfg, say)
        finally:
            _global_rng(xp, saved)
    return _loop(xp, net, data, cfg, say)


def _global_rng(xp, state=None):
    """The global legacy generator's state of NumPy or CuPy (get, or set)."""
    if xp is np:
        return np.random.get_state() if state is None else np.random.set_state(state)
    return xp.random.get_random_state() if state is None else xp.random.set_random_state(state)


def _loop(xp, net, data, cfg, say):
    Xtr, ytr, Xva, yva = data
    order_rng = np.random.default_rng(cfg["seed"] + 1)   # the same batch order for both
    velocity = {}
    n, B, E = Xtr.shape[0], cfg["batch_size"], cfg["epochs"]
    steps = max(1, n // B)                  # full batches only: batchnorm needs N > 1
    total = E * steps
    history = []
    step = 0
    for epoch in range(1, E + 1):
        perm = xp.asarray(order_rng.permutation(n))
        _sync(xp)
        t0 = time.perf_counter()
        loss_sum = 0.0
        for s in range(steps):
            idx = perm[s * B:(s + 1) * B]
            xb, yb = Xtr[idx], ytr[idx]
            loss, dscores = softmax_loss(xp, net.scores(xb), yb)
            net.backward(dscores)
            lr = cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * step / total))   # cosine decay
            for layer, name in net.params():
                p = getattr(layer, name)
                g = getattr(layer, "d" + name)
                if g.dtype != p.dtype:
                    g = g.astype(p.dtype)
                if name == "W":
                    g = g + cfg["weight_decay"] * p
                key = (id(layer), name)
                v = cfg["momentum"] * velocity.get(key, 0) - lr * g
                velocity[key] = v
                setattr(layer, name, p + v)
            loss_sum = loss_sum + loss
            step += 1
        loss_mean = float(loss_sum) / steps
        _sync(xp)
        seconds = time.perf_counter() - t0
        train_acc = _accuracy(xp, net, Xtr, ytr)
        val_acc = _accuracy(xp, net, Xva, yva)
        history.append({"epoch": epoch, "loss": loss_mean, "train_acc": train_acc,
                        "val_acc": val_acc, "seconds": seconds})
        say(f"  epoch {epoch:>{len(str(E))}}/{E}  loss {loss_mean:.4f}  train acc {train_acc:.4f}"
            f"  val acc {val_acc:.4f}  {seconds:.2f} s")
    return net, history


# ------------------------------------------------------------------ the job
def run(epochs=DEFAULTS["epochs"], batch_size=DEFAULTS["batch_size"], dtype=DEFAULTS["dtype"],
        seed=DEFAULTS["seed"], device=DEFAULTS["device"], threads=None, plot=None,
        compare=True, hidden=DEFAULTS["hidden"], points_per_class=DEFAULTS["points_per_class"],
        keep=DEFAULTS["keep"], lr=DEFAULTS["lr"], out=sys.stdout) -> dict:
    """Train the demo network; print progress to ``out`` (None: silent).

    Parameters
    ----------
    epochs, batch_size : int
    dtype : 'float32' or 'float64'
    seed : int >= 0
        Data, initial weights, batch order and dropout masks.
    device : 'cpu' or 'cuda'
        NumPy arrays on the C kernels, or CuPy arrays on the CUDA kernels.
    threads : int, optional
        Thread count (threadpoolctl, or OMP_NUM_THREADS set to it).
    plot : str, optional
        PNG file for the loss and accuracy curves and the decision regions
        (needs matplotlib).
    compare : bool
        Also train on the cs231n NumPy layers.
    hidden, points_per_class, keep, lr
        Hidden width, data size, dropout keep probability, initial learning
        rate.

    Returns
    -------
    dict
        ``history`` (per epoch: ``loss``, ``train_acc``, ``val_acc``,
        ``seconds``), ``final_val_accuracy``, ``final_train_accuracy``,
        ``final_loss``, ``cs231n`` (the same for the cs231n layers, or None),
        ``backend``, ``config``, ``plot`` and ``seconds`` (wall time).

    Raises
    ------
    DemoError
        When the job cannot run as asked (bad option, no GPU, no matplotlib
        for ``plot``, ...).
    normdrop._build_check.ExtensionImportError
        When the C extension is not importable (device cpu).
    """
    start = time.perf_counter()
    say = (lambda line: print(line, file=out, flush=True)) if out is not None else (lambda line: None)
    cfg = dict(DEFAULTS, epochs=int(epochs), batch_size=int(batch_size), dtype=str(dtype),
               seed=int(seed), device=device, hidden=int(hidden),
               points_per_class=int(points_per_class), keep=float(keep), lr=float(lr))
    if cfg["dtype"] not in ("float32", "float64"):
        raise DemoError(f"--dtype must be float32 or float64, got {dtype!r}")
    for flag, key, least in (("--epochs", "epochs", 1), ("--batch-size", "batch_size", 2),
                             ("--seed", "seed", 0)):
        if cfg[key] < least:
            raise DemoError(f"{flag} must be >= {least}, got {cfg[key]}")
    _check_plot(plot)
    xp = _namespace(device)
    if device == "cpu":
        _check_cpu_backend()
    threads_context, blas_note = _threads(threads)
    with threads_context:
        X, y = spiral(cfg["points_per_class"], cfg["classes"], seed=cfg["seed"])
        rng = np.random.default_rng(cfg["seed"])
        perm = rng.permutation(X.shape[0])
        n_val = int(round(cfg["val_fraction"] * X.shape[0]))
        va, tr = perm[:n_val], perm[n_val:]
        if cfg["batch_size"] > tr.size:
            raise DemoError(f"--batch-size {batch_size} is larger than the training set ({tr.size})")
        dt = np.dtype(cfg["dtype"])
        data = (xp.asarray(X[tr].astype(dt)), xp.asarray(y[tr]),
                xp.asarray(X[va].astype(dt)), xp.asarray(y[va]))
        H, K = cfg["hidden"], cfg["classes"]
        init = (rng.standard_normal((2, H)) * math.sqrt(2.0 / 2), np.zeros(H),
                rng.standard_normal((H, K)) * math.sqrt(2.0 / H), np.zeros(K))
        backend = _backend_line(device, xp)

        say(f"normdrop demo: a two-layer network with batchnorm and dropout on cs231n's spiral "
            f"({K} classes)")
        say(f"  data      {tr.size} training and {va.size} validation points in 2-D, generated "
            f"(seed {cfg['seed']})")
        say(f"  network   affine(2->{H}) -> batchnorm -> relu -> dropout(keep {cfg['keep']:g}) "
            f"-> affine({H}->{K}) -> softmax")
        say(f"  training  {cfg['epochs']} epochs of {tr.size // cfg['batch_size']} batches of "
            f"{cfg['batch_size']}, SGD with momentum {cfg['momentum']:g}, lr {cfg['lr']:g} with "
            f"cosine decay, weight decay {cfg['weight_decay']:g}, {cfg['dtype']}")
        say(f"  backend   {backend}")
        say(f"  threads   {blas_note}")
        say("normdrop layers (normdrop.layers.BatchNorm, Dropout); seconds are the training "
            "steps of each epoch")
        net, history = _train("normdrop", xp, data, init, cfg, say)
        seed_history = None
        if compare:
            say("cs231n NumPy layers (normdrop/_bench_seed.py), same data, initial weights and "
                "batch order; their own dropout masks")
            _, seed_history = _train("cs231n", xp, data, init, cfg, say)

    result = {
        "config": cfg,
        "backend": backend,
        "history": history,
        "final_loss": history[-1]["loss"],
        "final_train_accuracy": history[-1]["train_acc"],
        "final_val_accuracy": history[-1]["val_acc"],
        "cs231n": None,
        "plot": None,
    }
    if seed_history is not None:
        result["cs231n"] = {
            "history": seed_history,
            "final_loss": seed_history[-1]["loss"],
            "final_train_accuracy": seed_history[-1]["train_acc"],
            "final_val_accuracy": seed_history[-1]["val_acc"],
        }
        _side_by_side(history, seed_history, say)
    if plot is not None:
        _plot(plot, xp, net, data, history, seed_history, cfg, backend)
        result["plot"] = plot
        say(f"plot written to {plot}")
    result["seconds"] = time.perf_counter() - start
    say(f"{LAST_LINE} {result['final_val_accuracy']:.4f} (normdrop layers, {device}, "
        f"{cfg['dtype']}, {cfg['epochs']} epochs; {result['seconds']:.1f} s in all)")
    return result


def _per_epoch(history):
    times = sorted(h["seconds"] for h in history)
    return times[len(times) // 2]


def _side_by_side(history, seed_history, say):
    nd_t, s_t = _per_epoch(history), _per_epoch(seed_history)
    say("side by side                     normdrop   cs231n layers")
    say(f"  seconds per epoch (median)  {nd_t:>10.3f}  {s_t:>10.3f}   "
        f"(normdrop {s_t / nd_t:.1f}x as fast)")
    for label, key in (("final loss", "loss"), ("final train accuracy", "train_acc"),
                       ("final validation accuracy", "val_acc")):
        say(f"  {label:<26}  {history[-1][key]:>10.4f}  {seed_history[-1][key]:>10.4f}")


# ------------------------------------------------------------------- plot
def _plot(path, xp, net, data, history, seed_history, cfg, backend):
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_loss, ax_acc, ax_map = fig.subplots(1, 3)
    ep = [h["epoch"] for h in history]
    runs = [("normdrop", history, "-", "o")]
    if seed_history is not None:
        runs.append(("cs231n", seed_history, "--", "x"))
    accs = []
    for label, hist, style, marker in runs:
        ax_loss.plot(ep, [h["loss"] for h in hist], style, marker=marker, color="C0" if
                     label == "normdrop" else "C1", label=f"{label} layers")
        for key, name, color in (("train_acc", "train", "C0"), ("val_acc", "validation", "C2")):
            if label != "normdrop":
                color = "C1" if key == "train_acc" else "C3"
            values = [h[key] for h in hist]
            accs += values
            ax_acc.plot(ep, values, style, marker=marker, color=color, label=f"{label}, {name}")
    ax_loss.set(title="training loss (mean over each epoch)", xlabel="epoch",
                ylabel="softmax cross-entropy")
    low = max(0.0, math.floor((min(accs) - 0.01) * 50) / 50)
    ax_acc.set(title="accuracy (evaluation mode)", xlabel="epoch", ylabel="accuracy",
               ylim=(low, 1.002))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    # decision regions of the trained normdrop network, validation points on top
    _, _, Xva, yva = data
    g = np.linspace(-1.1, 1.1, 241)
    gx, gy = np.meshgrid(g, g)
    grid = np.c_[gx.ravel(), gy.ravel()].astype(np.dtype(cfg["dtype"]))
    net.train(False)
    pred = []
    for i in range(0, grid.shape[0], 8192):
        pred.append(_to_numpy(xp, xp.argmax(net.scores(xp.asarray(grid[i:i + 8192])), axis=1)))
    net.train(True)
    regions = np.concatenate(pred).reshape(gx.shape)
    K = cfg["classes"]
    colors = [f"C{k}" for k in range(K)]
    ax_map.contourf(gx, gy, regions, levels=np.arange(K + 1) - 0.5,
                    cmap=ListedColormap(colors), alpha=0.25)
    Xv, yv = _to_numpy(xp, Xva), _to_numpy(xp, yva)
    ax_map.scatter(Xv[:, 0], Xv[:, 1], c=yv, s=4, cmap=ListedColormap(colors), vmin=-0.5,
                   vmax=K - 0.5)
    ax_map.set(title=f"decision regions, validation points (accuracy "
                     f"{history[-1]['val_acc']:.3f})",
               xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), aspect="equal")
    fig.suptitle(f"normdrop demo: {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
                 f"{cfg['dtype']}, {backend}")
    fig.savefig(path, dpi=100)


def _to_numpy(xp, a):
    return a if xp is np else xp.asnumpy(a)


# ----------------------------------------------------------------- command
def add_arguments(parser):
    d = DEFAULTS
    parser.add_argument("--epochs", type=int, default=d["epochs"],
                        help=f"passes over the training set (default {d['epochs']})")
    parser.add_argument("--batch-size", type=int, default=d["batch_size"],
                        help=f"examples per SGD step (default {d['batch_size']})")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=d["dtype"],
                        help=f"dtype of the data and weights (default {d['dtype']})")
    parser.add_argument("--threads", type=int, default=None,
                        help="thread count for the kernels (threadpoolctl; without it, set "
                             "OMP_NUM_THREADS when Python starts)")
    parser.add_argument("--seed", type=int, default=d["seed"],
                        help="seed of the data, initial weights, batch order and dropout "
                             f"masks (default {d['seed']})")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="write loss/accuracy curves and the decision regions (matplotlib)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=d["device"],
                        help="cpu: NumPy arrays on the C kernels (default); cuda: CuPy arrays "
                             "on the CUDA kernels")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the side by side with the cs231n NumPy layers")


def main(args) -> int:
    from ._build_check import ExtensionImportError
    try:
        run(epochs=args.epochs, batch_size=args.batch_size, dtype=args.dtype, seed=args.seed,
            device=args.device, threads=args.threads, plot=args.plot, compare=args.compare)
    except (DemoError, ExtensionImportError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser():  # for `python -m normdrop._demo`
    p = argparse.ArgumentParser(prog="python -m normdrop demo")
    add_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(main(_parser().parse_args()))
