"""spatial_batchnorm_forward / spatial_batchnorm_backward on (32, 64, 56, 56),
in NCHW memory and in channels-last memory viewed as NCHW."""
import normdrop as nd

from .common import BACKENDS, DTYPES, HOST_BACKENDS, Backend, arrays, memo, slow_reference

SHAPE = (32, 64, 56, 56)
LAYOUTS = ["nchw", "nhwc"]


def _case(backend, dtype, layout):
    b = Backend(backend)
    x, dout, gamma, beta = arrays(b, dtype, SHAPE, layout)
    train = {"mode": "train"}
    fwd = b.call(lambda: nd.spatial_batchnorm_forward(x, gamma, beta, train))
    _, cache = fwd()
    test = {"mode": "test", "running_mean": train["running_mean"],
            "running_var": train["running_var"]}
    case = {
        "forward_train": fwd,
        "forward_test": b.call(lambda: nd.spatial_batchnorm_forward(x, gamma, beta, test)),
        "backward": b.call(lambda: nd.spatial_batchnorm_backward(dout, cache)),
    }
    for fn in case.values():  # warm-up: first-call costs stay out of the timings
        fn()
    return case


class SpatialBatchnorm:
    """Spatial batch normalization of (32, 64, 56, 56), per backend, dtype and
    memory layout."""
    params = [BACKENDS, DTYPES, LAYOUTS]
    param_names = ["backend", "dtype", "layout"]
    timeout = 180

    def setup(self, backend, dtype, layout):
        self.case = memo(("spatial", backend, dtype, layout),
                         lambda: _case(backend, dtype, layout))
        slow_reference(self, backend, 32 * 64 * 56 * 56)

    def time_forward_train(self, backend, dtype, layout):
        self.case["forward_train"]()

    def time_forward_test(self, backend, dtype, layout):
        self.case["forward_test"]()

    def time_backward(self, backend, dtype, layout):
        self.case["backward"]()


class SpatialBatchnormMemory:
    """Peak memory of the process around one spatial batchnorm call (host
    backends).

    The peak includes the inputs made in setup; for the backward, setup runs
    the forward for the cache (and drops its output).
    """
    params = [HOST_BACKENDS, DTYPES, LAYOUTS, ["forward_train", "backward"]]
    param_names = ["backend", "dtype", "layout", "op"]
    timeout = 180

    def setup(self, backend, dtype, layout, op):
        b = Backend(backend)
        if op == "forward_train":
            x, _, gamma, beta = arrays(b, dtype, SHAPE, layout, with_dout=False)
            self.call = b.call(
                lambda: nd.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"}))
        else:
            x, dout, gamma, beta = arrays(b, dtype, SHAPE, layout)
            _, cache = b.call(
                lambda: nd.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"}))()
            self.call = b.call(lambda: nd.spatial_batchnorm_backward(dout, cache))

    def peakmem_spatial_batchnorm(self, backend, dtype, layout, op):
        self.call()
