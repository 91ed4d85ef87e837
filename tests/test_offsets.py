"""Sharded dropout: value i of a call with dropout_param['offset'] (or
dropout_mask(..., offset=...)) uses the generator's word for index
offset + i, on every backend, so a shard of rows gets exactly those rows of
the whole batch's mask -- for offsets that are not multiples of 4 or 64, up
to 2**64 - size; and every bad offset is refused."""
from __future__ import annotations

import numpy as np
import pytest

import normdrop as nd
from conftest import oracle
from test_dropout import _words_python

OFFSETS = [0, 1, 2, 3, 4, 5, 63, 64, 65, 127, 1000003]


@pytest.mark.parametrize("offset", OFFSETS)
def test_mask_from_an_offset_is_the_tail_of_the_longer_mask(backend, offset):
    be = backend
    like = be.asarray(np.zeros(1))
    for n, p, seed in ((1, 0.5, 7), (77, 0.3, 2**64 - 1), (4099, 0.61, 12345)):
        full = nd.dropout_mask((offset + n,), p, seed)
        part = be.to_numpy(nd.dropout_mask((n,), p, seed, like=like, offset=offset))
        np.testing.assert_array_equal(part, full[offset:], err_msg=f"n={n}")


def test_huge_offsets_follow_the_contract_spelled_out():
    """Offsets near 2**64 (counters with a full high word): the words of the
    contract in scalar Python, on the C kernels and the reference."""
    n = 37
    for offset in (2**32 + 1, 2**40 + 3, 2**62 + 5, 2**64 - n):
        for seed in (0, 2**64 - 1):
            expected = np.array(_words_python(n, seed, offset)) < 2**31
            np.testing.assert_array_equal(nd.dropout_mask((n,), 0.5, seed, offset=offset),
                                          expected, err_msg=f"{offset}")
            np.testing.assert_array_equal(oracle(nd.dropout_mask, (n,), 0.5, seed, offset=offset),
                                          expected)


def test_offset_zero_is_the_contract():
    np.testing.assert_array_equal(nd.dropout_mask((37,), 0.5, 9, offset=0),
                                  np.array(_words_python(37, 9)) < 2**31)


@pytest.mark.parametrize("rows", [[(0, 7), (7, 7), (7, 20)], [(0, 1), (1, 2), (2, 3)],
                                  [(0, 13), (13, 13), (13, 29), (29, 30)]])
def test_shards_of_rows_get_their_rows_of_the_whole_mask(backend, dtype, rows):
    """Rank r holding rows [a, b) of an (N, D) batch, called with
    offset = a * D, gets exactly those rows of the single-process output,
    mask and backward (uneven shards, empty ones, one row each)."""
    be = backend
    D = 37
    N = rows[-1][1]
    rng = np.random.default_rng(N)
    x = rng.standard_normal((N, D)).astype(dtype)
    dout = rng.standard_normal((N, D)).astype(dtype)
    param = {"p": 0.55, "mode": "train", "seed": 2**63 + 11}
    full, fcache = nd.dropout_forward(x, dict(param))
    fdx = nd.dropout_backward(dout, fcache)
    for a, b in rows:
        out, cache = nd.dropout_forward(be.asarray(x[a:b]), dict(param, offset=a * D))
        np.testing.assert_array_equal(be.to_numpy(out), full[a:b])
        np.testing.assert_array_equal(be.to_numpy(nd.dropout_backward(be.asarray(dout[a:b]),
                                                                      cache)), fdx[a:b])


@pytest.mark.parametrize("offset,exc,match", [
    (-1, ValueError, r"offset must be in \[0, 2\*\*64 - size\]"),
    (2**64, ValueError, "offset must be in"), (2**64 - 9, ValueError, r"size 10"),
    (1.0, TypeError, "offset must be an int"), (True, TypeError, "offset must be an int"),
    ("3", TypeError, "offset must be an int"), (None, TypeError, "offset must be an int")])
def test_bad_offsets(backend, offset, exc, match):
    be = backend
    x = be.asarray(np.ones(10))
    param = {"p": 0.5, "mode": "train", "seed": 1, "offset": offset}
    snap = dict(param)
    with pytest.raises(exc, match=match):
        nd.dropout_forward(x, param)
    assert param == snap
    with pytest.raises(exc, match=match):
        nd.dropout_mask((10,), 0.5, 1, offset=offset)


def test_the_largest_offset_is_accepted():
    m = nd.dropout_mask((10,), 0.5, 1, offset=2**64 - 10)
    np.testing.assert_array_equal(m, oracle(nd.dropout_mask, (10,), 0.5, 1, offset=2**64 - 10))
    out, _ = nd.dropout_forward(np.ones(10), {"p": 0.5, "mode": "train", "seed": 1,
                                              "offset": 2**64 - 10})
    np.testing.assert_array_equal(out != 0, m)
