"""ops.rows: per-row norms, non-finite rows and unit rows a block of rows at a time, against numpy's
whole-array forms (bit for bit), at block sizes that split the rows unevenly, on empty inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher.ops import rows


def _rows(n: int, d: int, seed: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * rng.uniform(1e-3, 1e3, (n, 1))).astype(dtype)


@pytest.mark.parametrize("elems", [3, 7, 28, 35, 7 << 16])  # blocks of 1 (elems < dim), 1, 4, 5, 65,536 rows
@pytest.mark.parametrize("n", [0, 1, 5, 13])
def test_norms_and_unit_rows_equal_numpy_bit_for_bit(elems, n, monkeypatch):
    monkeypatch.setattr(rows, "ROW_ELEMS", elems)
    assert rows.block_rows(7) == max(1, elems // 7)
    x = _rows(n, 7, n)
    x[:1] = 0.0  # a zero row: divided by the floor, as the whole-array form
    want_norm = np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(rows.row_norms(x), want_norm)
    want = x / np.maximum(want_norm, 1e-12)
    got = rows.unit_rows(x)
    assert got.dtype == np.float32 and got.shape == x.shape and got is not x
    np.testing.assert_array_equal(got, want)
    inplace = x.copy()
    assert rows.unit_rows(inplace, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, want)


def test_unit_rows_of_float16_and_float64_rows_are_float32():
    for dtype in (np.float16, np.float64):
        x = _rows(9, 5, 3, dtype)
        x32 = x.astype(np.float32)
        np.testing.assert_array_equal(rows.unit_rows(x), x32 / np.linalg.norm(x32, axis=1, keepdims=True))


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("block", [1, 3, 1 << 16])
def test_nonfinite_rows_found_in_every_block(as_torch, block, monkeypatch):
    monkeypatch.setattr(rows, "ROW_ELEMS", block * 4)
    x = _rows(11, 4, 0)
    x[2, 3], x[7, 0], x[10, 1] = np.nan, np.inf, -np.inf
    want = np.zeros(11, bool)
    want[[2, 7, 10]] = True
    got = rows.nonfinite_rows(torch.from_numpy(x) if as_torch else x)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, want)
    empty = np.zeros((0, 4), np.float32)
    assert rows.nonfinite_rows(torch.from_numpy(empty) if as_torch else empty).shape == (0,)
    assert not rows.nonfinite_rows(np.zeros((3, 0), np.float32)).any()  # no values: nothing non-finite
