"""dropout_forward / dropout_backward (keep probability 0.5) and dropout_mask."""
import normdrop as nd

from .common import BACKENDS, DTYPES, HOST_BACKENDS, Backend, arrays, memo, shape_of, slow_reference

SHAPES = ["64x256", "4096x4096"]
P = 0.5


def _case(backend, dtype, shape):
    b = Backend(backend)
    x, dout, _, _ = arrays(b, dtype, shape_of(shape))
    param = {"p": P, "mode": "train", "seed": 1234}
    fwd = b.call(lambda: nd.dropout_forward(x, param))
    _, cache = fwd()
    case = {
        "forward_train": fwd,
        "backward": b.call(lambda: nd.dropout_backward(dout, cache)),
        "mask": b.call(lambda: nd.dropout_mask(x.shape, P, 1234, like=x)),
    }
    for fn in case.values():  # warm-up: first-call costs stay out of the timings
        fn()
    return case


class Dropout:
    """Inverted dropout, per backend, dtype and shape."""
    params = [BACKENDS, DTYPES, SHAPES]
    param_names = ["backend", "dtype", "shape"]
    timeout = 240

    def setup(self, backend, dtype, shape):
        self.case = memo(("dropout", backend, dtype, shape),
                         lambda: _case(backend, dtype, shape))
        n, d = shape_of(shape)
        slow_reference(self, backend, n * d)

    def time_forward_train(self, backend, dtype, shape):
        self.case["forward_train"]()

    def time_backward(self, backend, dtype, shape):
        self.case["backward"]()

    def time_mask(self, backend, dtype, shape):
        self.case["mask"]()


class DropoutMemory:
    """Peak memory of the process around one dropout call (host backends).

    The peak includes the inputs made in setup; for the backward, setup runs
    the forward for the cache (and drops its output).
    """
    params = [HOST_BACKENDS, DTYPES, SHAPES, ["forward_train", "backward"]]
    param_names = ["backend", "dtype", "shape", "op"]
    timeout = 240

    def setup(self, backend, dtype, shape, op):
        b = Backend(backend)
        param = {"p": P, "mode": "train", "seed": 1234}
        if op == "forward_train":
            x, _, _, _ = arrays(b, dtype, shape_of(shape), with_dout=False)
            self.call = b.call(lambda: nd.dropout_forward(x, param))
        else:
            x, dout, _, _ = arrays(b, dtype, shape_of(shape))
            _, cache = b.call(lambda: nd.dropout_forward(x, param))()
            del x
            self.call = b.call(lambda: nd.dropout_backward(dout, cache))

    def peakmem_dropout(self, backend, dtype, shape, op):
        self.call()
