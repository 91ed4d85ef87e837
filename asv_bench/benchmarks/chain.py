"""A batchnorm forward whose output the backward reads at once."""
import normdrop as nd

from .common import Backend, arrays, memo, shape_of


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
