"""batchnorm_forward / batchnorm_backward / batchnorm_backward_alt on (N, D)."""
import normdrop as nd

from .common import BACKENDS, DTYPES, HOST_BACKENDS, Backend, arrays, memo, shape_of, slow_reference

SHAPES = ["64x256", "4096x1024"]


def _case(backend, dtype, shape):
    b = Backend(backend)
    x, dout, gamma, beta = arrays(b, dtype, shape_of(shape))
    train = {"mode": "train"}
    fwd = b.call(lambda: nd.batchnorm_forward(x, gamma, beta, train))
    _, cache = fwd()
    test = {"mode": "test", "running_mean": train["running_mean"],
            "running_var": train["running_var"]}
    case = {
        "forward_train": fwd,
        "forward_test": b.call(lambda: nd.batchnorm_forward(x, gamma, beta, test)),
        "backward": b.call(lambda: nd.batchnorm_backward(dout, cache)),
        "backward_alt": b.call(lambda: nd.batchnorm_backward_alt(dout, cache)),
    }
    for fn in case.values():  # warm-up: first-call costs stay out of the timings
        fn()
    return case


class Batchnorm:
    """Batch normalization of (N, D) arrays, per backend, dtype and shape."""
    params = [BACKENDS, DTYPES, SHAPES]
    param_names = ["backend", "dtype", "shape"]
    timeout = 180

    def setup(self, backend, dtype, shape):
        self.case = memo(("bn", backend, dtype, shape), lambda: _case(backend, dtype, shape))
        n, d = shape_of(shape)
        slow_reference(self, backend, n * d)

    def time_forward_train(self, backend, dtype, shape):
        self.case["forward_train"]()

    def time_forward_test(self, backend, dtype, shape):
        self.case["forward_test"]()

    def time_backward(self, backend, dtype, shape):
        self.case["backward"]()

    def time_backward_alt(self, backend, dtype, shape):
        self.case["backward_alt"]()


class BatchnormMemory:
    """Peak memory of the process around one batchnorm call (host backends).

    The peak includes the inputs made in setup; for the backward, setup runs
    the forward for the cache (and drops its output).
    """
    params = [HOST_BACKENDS, DTYPES, SHAPES, ["forward_train", "backward"]]
    param_names = ["backend", "dtype", "shape", "op"]
    timeout = 180

    def setup(self, backend, dtype, shape, op):
        b = Backend(backend)
        if op == "forward_train":
            x, _, gamma, beta = arrays(b, dtype, shape_of(shape), with_dout=False)
            self.call = b.call(lambda: nd.batchnorm_forward(x, gamma, beta, {"mode": "train"}))
        else:
            x, dout, gamma, beta = arrays(b, dtype, shape_of(shape))
            _, cache = b.call(lambda: nd.batchnorm_forward(x, gamma, beta, {"mode": "train"}))()
            self.call = b.call(lambda: nd.batchnorm_backward(dout, cache))

    def peakmem_batchnorm(self, backend, dtype, shape, op):
        self.call()


class BatchnormChain:
    """A forward whose output the backward reads at once (as dout), on the C
    kernels: what streaming stores (``NORMDROP_STREAM_BYTES``, default 48 MiB)
    trade against, since a streamed output is no longer in cache for the next
    op.  Float32, outputs of 16, 32 and 64 MiB."""
    params = [["cpu"], ["float32"], ["4096x1024", "8192x1024", "16384x1024"]]
    param_names = ["backend", "dtype", "shape"]
    timeout = 180

    def setup(self, backend, dtype, shape):
        def build():
            b = Backend(backend)
            x, _, gamma, beta = arrays(b, dtype, shape_of(shape), with_dout=False)

            def step():
                out, cache = nd.batchnorm_forward(x, gamma, beta, {"mode": "train"})
                return nd.batchnorm_backward(out, cache)
            step()
            return step
        self.step = memo(("bn-chain", backend, dtype, shape), build)

    def time_forward_then_backward(self, backend, dtype, shape):
        self.step()
