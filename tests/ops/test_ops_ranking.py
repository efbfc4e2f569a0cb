"""normalize and aggregate: against direct numpy/scipy formulations, ties, NaN,
constant columns, permutation invariance, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from thresher.ops import aggregate, normalize

NAN, INF = float("nan"), float("inf")


def _columns(seed: int, n: int = 301, m: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m))
    x[:, 1] = rng.integers(0, 5, size=n)  # heavy ties
    x[:, 2] = 7.0  # constant column
    x[rng.random((n, m)) < 0.05] = np.nan
    return x


def _normalize_np(x: np.ndarray, method: str) -> np.ndarray:
    out = np.full_like(x, np.nan)
    for j in range(x.shape[1]):
        c = x[:, j]
        ok = ~np.isnan(c)
        v = c[ok]
        if method == "minmax":
            lo, hi = v.min(), v.max()
            out[ok, j] = 0.5 if hi == lo else (v - lo) / (hi - lo)
        elif method == "zscore":
            s = v.std()
            out[ok, j] = 0.0 if s == 0 else (v - v.mean()) / s
        elif method == "rank":
            r = rankdata(v, method="average")
            out[ok, j] = 0.5 if len(v) == 1 or v.min() == v.max() else (r - 1) / (len(v) - 1)
        else:
            lt = np.array([(v < t).sum() for t in v])
            eq = np.array([(v == t).sum() for t in v])
            out[ok, j] = (lt + eq / 2) / len(v)
    return out


@pytest.mark.parametrize("method", ["minmax", "zscore", "rank", "quantile"])
def test_normalize_matches_numpy(method):
    x = _columns(0)
    got = normalize(torch.from_numpy(x), method)
    assert got.dtype == torch.float64 and got.shape == x.shape
    np.testing.assert_allclose(got.numpy(), _normalize_np(x, method), rtol=1e-12, atol=1e-12)
    # 1-D input, numpy input, float32 input
    np.testing.assert_allclose(normalize(x[:, 0], method).numpy(), got[:, 0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        normalize(torch.from_numpy(x[:, 1]).float(), method).numpy(), got[:, 1].numpy(), rtol=1e-12
    )
    # permutation equivariance, ties never broken by position
    perm = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_allclose(normalize(x[perm], method).numpy(), got.numpy()[perm], rtol=1e-12, atol=1e-12)


def test_normalize_edge_cases():
    c = torch.tensor([2.0, 2.0, NAN])
    assert normalize(c, "minmax").tolist()[:2] == [0.5, 0.5]
    assert normalize(c, "zscore").tolist()[:2] == [0.0, 0.0]
    assert normalize(c, "rank").tolist()[:2] == [0.5, 0.5]
    assert normalize(c, "quantile").tolist()[:2] == [0.5, 0.5]
    assert all(torch.isnan(normalize(c, m)[2]) for m in ("minmax", "zscore", "rank", "quantile"))
    inf = torch.tensor([-INF, 0.0, 1.0, INF, NAN])
    assert normalize(inf, "minmax").tolist()[:4] == [0.0, 0.0, 1.0, 1.0]
    z = normalize(inf, "zscore").tolist()
    assert z[0] == -INF and z[3] == INF and z[1] == -1.0 and z[2] == 1.0
    assert normalize(inf, "rank").tolist()[:4] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert normalize(inf, "quantile").tolist()[:4] == [0.125, 0.375, 0.625, 0.875]
    assert normalize(torch.tensor([NAN, NAN]), "rank").isnan().all()
    assert normalize(torch.zeros(0), "quantile").shape == (0,)
    assert normalize(torch.zeros(0, 3), "minmax").shape == (0, 3)


def _aggregate_np(x, method, w, maximize, k=60.0):
    n, m = x.shape
    s = np.where(maximize, 1.0, -1.0)
    if method == "weighted_sum":
        return (x * w * s).sum(1)
    if method == "product":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.prod(x ** (w * s), axis=1)
    out = np.zeros(n)
    for j in range(m):
        g = x[:, j] * s[j]
        for i in range(n):
            if method == "borda":
                if np.isnan(g[i]):
                    pts = (np.isnan(g).sum() - 1) / 2
                else:
                    valid = g[~np.isnan(g)]
                    pts = (valid < g[i]).sum() + np.isnan(g).sum() + ((valid == g[i]).sum() - 1) / 2
                out[i] += w[j] * pts
            else:
                if not np.isnan(g[i]):
                    out[i] += w[j] / (k + 1 + (g[~np.isnan(g)] > g[i]).sum())
    return out


@pytest.mark.parametrize("method", ["weighted_sum", "product", "borda", "rrf"])
def test_aggregate_matches_numpy(method):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 6, size=(97, 3)).astype(np.float64)  # ties
    x[:, 0] += rng.random(97)
    if method in ("borda", "rrf"):
        x[rng.random(x.shape) < 0.1] = np.nan
    w = np.array([0.5, 2.0, 1.0])
    mx = [True, False, True]
    got = aggregate(torch.from_numpy(x), method, weights=w, maximize=mx)
    assert got.dtype == torch.float64 and got.shape == (97,)
    np.testing.assert_allclose(got.numpy(), _aggregate_np(x, method, w, np.array(mx)), rtol=1e-12)
    perm = rng.permutation(97)
    np.testing.assert_allclose(
        aggregate(x[perm], method, weights=w, maximize=mx).numpy(), got.numpy()[perm], rtol=1e-12
    )
    # default weights are all 1
    np.testing.assert_allclose(
        aggregate(x, method, maximize=mx).numpy(), _aggregate_np(x, method, np.ones(3), np.array(mx)), rtol=1e-12
    )


def test_aggregate_semantics():
    x = torch.tensor([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0], [3.0, 1.0]])
    # rrf: tied rows share the best rank, k shifts it
    r = aggregate(x, "rrf", k=0)
    assert r[0] == r[3] and r[0].item() == pytest.approx(1 / 1 + 1 / 3)
    # borda: points = rows beaten + half the ties
    assert aggregate(x[:, :1], "borda").tolist() == [2.5, 1.0, 0.0, 2.5]
    # minimise flips the order
    assert aggregate(x[:, :1], "borda", maximize=False).tolist() == [0.5, 2.0, 3.0, 0.5]
    # NaN: propagates in weighted_sum/product, absent in rrf, tied last in borda
    y = torch.tensor([[1.0, NAN], [2.0, 1.0], [0.0, 0.0]])
    assert torch.isnan(aggregate(y, "weighted_sum")[0]) and torch.isnan(aggregate(y.abs(), "product")[0])
    assert aggregate(y, "rrf", k=0).tolist() == [1 / 2, 1 / 1 + 1 / 1, 1 / 3 + 1 / 2]
    assert aggregate(y, "borda").tolist() == [1.0 + 0.0, 2.0 + 2.0, 0.0 + 1.0]
    assert aggregate(torch.zeros(0, 2), "borda").shape == (0,)


def test_aggregate_bad_input():
    x = torch.rand(5, 2)
    with pytest.raises(ValueError, match="method"):
        aggregate(x, "mean")
    with pytest.raises(ValueError, match="matrix"):
        aggregate(torch.rand(5), "borda")
    with pytest.raises(ValueError, match="matrix"):
        aggregate(np.array([["a", "b"]]), "borda")
    with pytest.raises(ValueError, match="matrix"):
        aggregate(-x, "product")
    with pytest.raises(ValueError, match="weights"):
        aggregate(x, "weighted_sum", weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        aggregate(x, "weighted_sum", weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        aggregate(x, "weighted_sum", weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="maximize"):
        aggregate(x, "borda", maximize=[True])
    with pytest.raises(ValueError, match="k"):
        aggregate(x, "rrf", k=-1)
    with pytest.raises(ValueError, match="method"):
        normalize(x, "l2")
    with pytest.raises(ValueError, match="x"):
        normalize(torch.rand(2, 2, 2), "rank")
    with pytest.raises(ValueError, match="x"):
        normalize(torch.rand(3, dtype=torch.complex64), "rank")
    with pytest.raises(ValueError, match="x"):
        normalize([[1.0, 2.0], [3.0]], "rank")
