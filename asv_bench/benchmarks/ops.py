"""Every op of normdrop's op table (``normdrop._optable``): the shapes the
bench measures plus the test matrix's small shape, per backend and dtype, in
NCHW and (for 4-D inputs) channels-last memory.  A new op of the table joins
these benchmarks without a change here."""
import math

import normdrop as nd
from normdrop._optable import NORM_OPS, OPS

from .common import BACKENDS, DTYPES, HOST_BACKENDS, Backend, arrays, memo, shape_of, slow_reference


def _cases(ops):
    """'op:shape:layout' for each op, its bench shapes and its small test shape."""
    out = []
    for op in ops.values():
        shapes = dict.fromkeys([(r.label, r.extra) for r in op.bench]
                               + [("x".join(map(str, op.test_shape)), op.test_extra)])
        for label, _ in shapes:
            layouts = ["nchw", "nhwc"] if label.count("x") == 3 and "channels_last" in op.layouts \
                else ["nchw"]
            out += [f"{op.name}:{label}:{lay}" for lay in layouts]
    return out


def _parse(case):
    name, label, layout = case.split(":")
    op = OPS[name]
    extra = next((r.extra for r in op.bench if r.label == label), op.test_extra)
    return op, shape_of(label), extra, layout


NORM_CASES = _cases(NORM_OPS)
RUNNING_CASES = [c for c in NORM_CASES if NORM_OPS[c.split(":")[0]].running]
DROPOUT_CASES = _cases({"dropout": OPS["dropout"]})


def _norm_case(backend, dtype, case):
    b = Backend(backend)
    op, shape, extra, layout = _parse(case)
    x, dout, gamma, beta = arrays(b, dtype, shape, layout, channels=op.channels(shape))
    train = op.params("train")
    fwd = b.call(lambda: op.call_forward(x, gamma, beta, train, extra))
    _, cache = fwd()
    calls = {"forward_train": fwd, "backward": b.call(lambda: op.backward(dout, cache))}
    if op.running:
        test = op.params("test", running_mean=train["running_mean"],
                         running_var=train["running_var"])
        calls["forward_test"] = b.call(lambda: op.call_forward(x, gamma, beta, test, extra))
    for fn in calls.values():  # warm-up: first-call costs stay out of the timings
        fn()
    return calls


class _NormCalls:
    """Setup shared by the timing classes of the normalization ops: the
    calls of one case, built once per process (memo)."""
    param_names = ["backend", "dtype", "case"]
    timeout = 240

    def setup(self, backend, dtype, case):
        self.calls = memo(("norm", backend, dtype, case), lambda: _norm_case(backend, dtype, case))
        _, shape, _, _ = _parse(case)
        slow_reference(self, backend, math.prod(shape))


class Norm(_NormCalls):
    """Training forward and backward of every normalization op."""
    params = [BACKENDS, DTYPES, NORM_CASES]

    def time_forward_train(self, backend, dtype, case):
        self.calls["forward_train"]()

    def time_backward(self, backend, dtype, case):
        self.calls["backward"]()


class NormTestMode(_NormCalls):
    """Test-mode forward (running statistics) of the ops that keep them."""
    params = [BACKENDS, DTYPES, RUNNING_CASES]

    def time_forward_test(self, backend, dtype, case):
        self.calls["forward_test"]()


class NormMemory:
    """Peak memory of the process around one call (host backends).

    The peak includes the inputs made in setup; for the backward, setup runs
    the forward for the cache (and drops its output).
    """
    params = [HOST_BACKENDS, DTYPES, NORM_CASES, ["forward_train", "backward"]]
    param_names = ["backend", "dtype", "case", "part"]
    timeout = 240

    def setup(self, backend, dtype, case, part):
        b = Backend(backend)
        op, shape, extra, layout = _parse(case)
        x, dout, gamma, beta = arrays(b, dtype, shape, layout, with_dout=part == "backward",
                                      channels=op.channels(shape))
        if part == "forward_train":
            self.call = b.call(lambda: op.call_forward(x, gamma, beta, op.params(), extra))
        else:
            _, cache = b.call(lambda: op.call_forward(x, gamma, beta, op.params(), extra))()
            self.call = b.call(lambda: op.backward(dout, cache))

    def peakmem_norm(self, backend, dtype, case, part):
        self.call()


def _dropout_case(backend, dtype, case):
    b = Backend(backend)
    op, shape, _, layout = _parse(case)
    x, dout, _, _ = arrays(b, dtype, shape, layout)
    param = op.params("train")
    fwd = b.call(lambda: nd.dropout_forward(x, param))
    _, cache = fwd()
    calls = {
        "forward_train": fwd,
        "backward": b.call(lambda: nd.dropout_backward(dout, cache)),
        "mask": b.call(lambda: nd.dropout_mask(x.shape, param["p"], param["seed"], like=x)),
    }
    for fn in calls.values():
        fn()
    return calls


class Dropout:
    """Inverted dropout (keep probability 0.5) and dropout_mask."""
    params = [BACKENDS, DTYPES, DROPOUT_CASES]
    param_names = ["backend", "dtype", "case"]
    timeout = 240

    def setup(self, backend, dtype, case):
        self.calls = memo(("dropout", backend, dtype, case),
                          lambda: _dropout_case(backend, dtype, case))
        _, shape, _, _ = _parse(case)
        slow_reference(self, backend, math.prod(shape))

    def time_forward_train(self, backend, dtype, case):
        self.calls["forward_train"]()

    def time_backward(self, backend, dtype, case):
        self.calls["backward"]()

    def time_mask(self, backend, dtype, case):
        self.calls["mask"]()


class DropoutMemory:
    """Peak memory of the process around one dropout call (host backends)."""
    params = [HOST_BACKENDS, DTYPES, DROPOUT_CASES, ["forward_train", "backward"]]
    param_names = ["backend", "dtype", "case", "part"]
    timeout = 240

    def setup(self, backend, dtype, case, part):
        b = Backend(backend)
        op, shape, _, layout = _parse(case)
        param = op.params("train")
        x, dout, _, _ = arrays(b, dtype, shape, layout, with_dout=part == "backward")
        if part == "forward_train":
            self.call = b.call(lambda: nd.dropout_forward(x, param))
        else:
            _, cache = b.call(lambda: nd.dropout_forward(x, param))()
            del x
            self.call = b.call(lambda: nd.dropout_backward(dout, cache))

    def peakmem_dropout(self, backend, dtype, case, part):
        self.call()
