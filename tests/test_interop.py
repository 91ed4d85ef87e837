"""The reference backend serves other array-API libraries: PyTorch CPU
tensors through array-api-compat (when torch is installed)."""
from __future__ import annotations

import numpy as np
import pytest

import normdrop as nd
from conftest import assert_close, oracle

torch = pytest.importorskip("torch", reason="torch is not installed (optional)")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spatial", [False, True])
def test_batchnorm_on_torch_tensors(dtype, spatial):
    rng = np.random.default_rng(0)
    shape = (6, 3, 4, 5) if spatial else (20, 7)
    fwd = nd.spatial_batchnorm_forward if spatial else nd.batchnorm_forward
    bwd = nd.spatial_batchnorm_backward if spatial else nd.batchnorm_backward
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    g, b = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    bp = {"mode": "train"}
    out, cache = fwd(torch.from_numpy(x), torch.from_numpy(g), torch.from_numpy(b), bp)
    assert isinstance(out, torch.Tensor) and isinstance(bp["running_mean"], torch.Tensor)
    exp, ecache = oracle(fwd, x, g, b, {"mode": "train"})
    assert_close(out.numpy(), exp, dtype, "out")
    for got, ref in zip(bwd(torch.from_numpy(dout), cache), oracle(bwd, dout, ecache)):
        assert_close(got.numpy(), ref, dtype, "backward")


def test_dropout_mask_on_torch_equals_numpy():
    like = torch.zeros(1)
    for seed in (0, 12345, 2**64 - 1):
        m = nd.dropout_mask((37, 11), 0.4, seed, like=like)
        assert isinstance(m, torch.Tensor)
        np.testing.assert_array_equal(m.numpy(), nd.dropout_mask((37, 11), 0.4, seed))
    x = torch.ones(5, 9, dtype=torch.float64)
    out, cache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 8})
    ref, _ = nd.dropout_forward(np.ones((5, 9)), {"p": 0.5, "mode": "train", "seed": 8})
    np.testing.assert_array_equal(out.numpy(), ref)
    np.testing.assert_array_equal(nd.dropout_backward(x, cache).numpy(), ref)
