"""thresher.index: exact and FAISS approximate kinds, ids, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher.index import KNNIndex, build_index, faiss_module, knn_graph
from thresher.ops.knn import knn_reference

needs_faiss = pytest.mark.skipif(faiss_module() is None, reason="faiss not installed")


def clustered(n, d, centers, noise, seed):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(got, want):
    return np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)])


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_matches_reference(metric):
    x = clustered(500, 16, 20, 0.3, seed=0)
    idx = KNNIndex(16, metric, "exact").build(x)
    v, p = idx.search(x[:50], 8, exclude_self=True)
    rv, rp = knn_reference(torch.from_numpy(x[:50]), torch.from_numpy(x), 8, metric, True, 0)
    np.testing.assert_array_equal(p, rp.numpy())
    np.testing.assert_allclose(v, rv.numpy(), atol=1e-5)


@needs_faiss
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_faiss_flat_agrees_with_exact(metric):
    x = clustered(400, 12, 15, 0.4, seed=1)
    a = KNNIndex(12, metric, "flat").build(x).search(x[:40], 5)
    b = KNNIndex(12, metric, "exact").build(x).search(x[:40], 5)
    assert recall(a[1], b[1]) > 0.99
    np.testing.assert_allclose(a[0], b[0], atol=1e-4)


@needs_faiss
@pytest.mark.parametrize("kind, min_recall", [("ivf_flat", 0.95), ("hnsw", 0.95), ("ivf_pq", 0.4)])
def test_approximate_kinds_recall(kind, min_recall):
    x = clustered(4000, 32, 40, 0.5, seed=2)
    q = x[:100]
    exact = KNNIndex(32, "ip", "exact").build(x).search(q, 10, exclude_self=True)[1]
    idx = KNNIndex(32, "ip", kind, nlist=16, nprobe=8, pq_m=16, pq_bits=6).build(x)
    v, p = idx.search(q, 10, exclude_self=True)
    assert p.shape == (100, 10) and v.dtype == np.float32
    assert not (p == np.arange(100)[:, None]).any()
    assert recall(p, exact) >= min_recall


@needs_faiss
def test_auto_kind_by_pool_size():
    x = clustered(3000, 8, 10, 0.3, seed=3)
    assert KNNIndex(8, "ip", "auto").build(x).kind == "exact"
    big = KNNIndex(8, "ip", "auto", exact_max=1000).build(x)
    assert big.kind == "ivf_flat"
    v, p = big.search(x[:5], 3)
    assert (p >= 0).all()


def test_ids_are_returned():
    x = clustered(30, 4, 30, 0.0, seed=4)
    ids = np.array([f"s{i}" for i in range(30)], dtype=object)
    idx = KNNIndex(4, "ip", "exact").build(x, ids=ids)
    _, got = idx.search(x[:3], 1)
    assert got[:, 0].tolist() == ["s0", "s1", "s2"]
    idx = KNNIndex(4, "ip", "exact").build(x, ids=np.arange(100, 130))
    assert idx.search(x[:2], 1)[1][:, 0].tolist() == [100, 101]


@pytest.mark.parametrize("kind", ["exact", pytest.param("ivf_flat", marks=needs_faiss)])
def test_save_load_roundtrip_and_mismatch(tmp_path, kind):
    x = clustered(300, 8, 10, 0.3, seed=5)
    idx = KNNIndex(8, "l2", kind, nlist=4).build(x, ids=np.arange(300) * 2)
    idx.save(tmp_path / "ix")
    back = KNNIndex.load(tmp_path / "ix", dim=8, metric="l2")
    a, b = idx.search(x[:10], 4), back.search(x[:10], 4)
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="dim: index .* built for dimension 8, not 16"):
        KNNIndex.load(tmp_path / "ix", dim=16)
    with pytest.raises(ValueError, match="metric: index .* built for metric 'l2', not 'ip'"):
        KNNIndex.load(tmp_path / "ix", metric="ip")
    with pytest.raises(ValueError, match="no saved index"):
        KNNIndex.load(tmp_path / "missing")


def test_errors_name_the_argument():
    x = clustered(20, 4, 20, 0.0, seed=6)
    with pytest.raises(ValueError, match="queries: dimension 5 does not match the index dimension 4"):
        KNNIndex(4).build(x).search(np.ones((2, 5), np.float32), 1)
    with pytest.raises(ValueError, match="embeddings: dimension 4 does not match the index dimension 3"):
        KNNIndex(3).build(x)
    y = x.copy()
    y[4] = np.nan
    with pytest.raises(ValueError, match=r"embeddings: 1 row\(s\).*row 4"):
        KNNIndex(4).build(y)
    with pytest.raises(ValueError, match=r"queries: 1 row\(s\).*row 4"):
        KNNIndex(4).build(x).search(y, 1)
    with pytest.raises(ValueError, match="ids: 19 ids for 20 embeddings"):
        KNNIndex(4).build(x, ids=np.arange(19))
    with pytest.raises(ValueError, match="ids: duplicate"):
        KNNIndex(4).build(x, ids=np.zeros(20))
    with pytest.raises(ValueError, match="k: 20 is larger than the 19"):
        KNNIndex(4).build(x).search(x, 20, exclude_self=True)
    with pytest.raises(ValueError, match="call build"):
        KNNIndex(4).search(x, 1)
    with pytest.raises(ValueError, match="kind"):
        KNNIndex(4, kind="lsh")
    with pytest.raises(ValueError, match="metric"):
        KNNIndex(4, metric="cosine")


def test_knn_graph_excludes_self():
    x = clustered(60, 6, 6, 0.2, seed=7)
    v, p = knn_graph(x, 5)
    assert p.shape == (60, 5)
    assert not (p == np.arange(60)[:, None]).any()
    assert (np.diff(v, axis=1) <= 1e-6).all()
    v2, p2 = build_index(x).search(x, 5, exclude_self=True)
    np.testing.assert_array_equal(p, p2)
