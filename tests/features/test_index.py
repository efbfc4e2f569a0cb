"""thresher.index: exact and FAISS approximate kinds, ids, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import thresher.index as index_mod
from thresher.errors import OptionError
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


def test_auto_is_exact_at_every_size():
    # well above the former 200,000-row switch to IVF: still the exact kernel, no threshold option
    rng = np.random.default_rng(3)
    x = rng.standard_normal((250_001, 4)).astype(np.float32)
    idx = KNNIndex(4, "ip", "auto").build(x)
    assert idx.kind == "exact" and idx.exact and idx._faiss_index is None
    v, p = idx.search(x[:3], 4)
    rv, rp = knn_reference(torch.from_numpy(x[:3]), torch.from_numpy(x), 4, "ip")
    np.testing.assert_array_equal(p, rp.numpy())
    with pytest.raises(TypeError):
        KNNIndex(4, "ip", "auto", exact_max=1000)
    assert idx.measure_recall(x[:10], 4) == 1.0


def brute_recall(x, q_rows, got, k):
    """Oracle: recall@k from a float64 brute-force search (data without ties)."""
    s = x[q_rows].astype(np.float64) @ x.astype(np.float64).T
    true = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.mean([len(set(g) & set(t)) / k for g, t in zip(got, true)])


@needs_faiss
def test_measure_recall_of_an_approximate_index():
    x = clustered(3000, 16, 30, 0.6, seed=11)
    idx = KNNIndex(16, "ip", "ivf_flat", nlist=32, nprobe=1).build(x)
    assert not idx.exact
    r = idx.measure_recall(x[:500], 10, sample=200, seed=4)
    rows = np.sort(np.random.default_rng(4).choice(500, 200, replace=False))
    want = brute_recall(x, rows, idx.search(x[rows], 10)[1], 10)
    assert r == pytest.approx(want, abs=1e-9) and 0.2 < r < 0.99  # nprobe=1 misses neighbours
    assert idx.last_recall == {"recall": r, "sample": 200, "k": 10, "seed": 4}
    assert idx.measure_recall(x[:50], 10, sample=1000)  # sample = min(sample, Q)
    assert idx.last_recall["sample"] == 50
    assert idx.measure_recall(x[:500], 10, sample=200, seed=4, nprobe=32) == 1.0  # every list probed
    assert np.isnan(idx.measure_recall(x[:0], 10)) and idx.last_recall["recall"] is None
    with pytest.raises(ValueError, match="sample"):
        idx.measure_recall(x, 10, sample=0)


@needs_faiss
def test_measure_recall_counts_ties_as_found(tmp_path):
    x = np.repeat(clustered(200, 8, 200, 0.0, seed=12), 5, axis=0)  # every row 5 times
    idx = KNNIndex(8, "ip", "hnsw").build(x)
    assert idx.measure_recall(x, 3, sample=100) == 1.0  # any 3 of the 5 copies are true neighbours
    idx.save(tmp_path / "ix")
    back = KNNIndex.load(tmp_path / "ix")
    with pytest.raises(ValueError, match="pass base="):
        back.measure_recall(x, 3)
    assert back.measure_recall(x, 3, sample=100, base=x) == 1.0


@needs_faiss
def test_gpu_hnsw_stays_on_cpu_with_a_notice(monkeypatch, caplog):
    monkeypatch.setattr(index_mod, "faiss_has_gpu", lambda: True)
    x = clustered(300, 8, 10, 0.3, seed=13)
    with caplog.at_level("WARNING", logger="thresher.index"):
        idx = KNNIndex(8, "ip", "hnsw", use_gpu=True).build(x)
    assert idx.use_gpu and not idx.on_gpu
    assert "no GPU version of HNSW" in caplog.text
    assert idx.search(x[:5], 3)[1].shape == (5, 3)


def fake_gpu(monkeypatch):
    """FAISS 'GPU' calls that keep the index on the CPU but record the move."""
    f = faiss_module()
    moved = []
    monkeypatch.setattr(index_mod, "faiss_has_gpu", lambda: True)
    monkeypatch.setattr(f, "StandardGpuResources", lambda: "res", raising=False)
    monkeypatch.setattr(f, "index_cpu_to_gpu", lambda res, dev, ix: moved.append(ix) or ix, raising=False)
    monkeypatch.setattr(f, "index_gpu_to_cpu", lambda ix: ix, raising=False)
    return moved


class NoSearch:
    """Stands in for a FAISS index that must not be searched."""

    nprobe = 4

    def search(self, *a):
        raise AssertionError("FAISS was called")


@needs_faiss
def test_gpu_k_limit_checked_before_faiss(monkeypatch):
    fake_gpu(monkeypatch)
    x = clustered(2100, 4, 40, 0.3, seed=14)
    ivf = KNNIndex(4, "ip", "ivf_flat", nlist=8, use_gpu=True).build(x)
    assert ivf.on_gpu
    ivf._faiss_index = NoSearch()
    with pytest.raises(OptionError, match=r"k: 2049 \(k \+ 1: exclude_self.*GPU limit of 2048.*'exact'"):
        ivf.search(x[:2], 2048, exclude_self=True)
    with pytest.raises(OptionError, match="k: 2049 is above FAISS's GPU limit"):
        ivf.search(x[:2], 2049)
    with pytest.raises(OptionError, match="nprobe: 4096"):
        ivf.search(x[:2], 5, nprobe=4096)
    # exact kinds fall back to the tiled kernel instead
    for kind in ("exact", "flat"):
        ex = KNNIndex(4, "ip", kind, use_gpu=True).build(x)
        assert ex.on_gpu
        ex._faiss_index = NoSearch()
        v, p = ex.search(x[:2], 2048, exclude_self=True)
        rv, rp = knn_reference(torch.from_numpy(x[:2]), torch.from_numpy(x), 2048, "ip", True, 0)
        np.testing.assert_array_equal(p, rp.numpy())


@needs_faiss
def test_load_honours_use_gpu(monkeypatch, tmp_path):
    x = clustered(300, 8, 10, 0.3, seed=15)
    KNNIndex(8, "l2", "ivf_flat", nlist=4, use_gpu=False).build(x).save(tmp_path / "ivf")
    KNNIndex(8, "l2", "exact", use_gpu=False).build(x).save(tmp_path / "ex")
    moved = fake_gpu(monkeypatch)
    ivf = KNNIndex.load(tmp_path / "ivf", use_gpu=True)
    assert ivf.on_gpu and len(moved) == 1
    ex = KNNIndex.load(tmp_path / "ex", use_gpu=True)
    assert ex.on_gpu and len(moved) == 2 and ex.kind == "exact"
    assert not KNNIndex.load(tmp_path / "ivf").on_gpu  # default: CPU
    np.testing.assert_array_equal(ivf.search(x[:4], 3)[1], KNNIndex.load(tmp_path / "ivf").search(x[:4], 3)[1])


def test_gpu_kernel_base_copied_once(monkeypatch):
    copies = []

    def fake_cuda(self, *a, **kw):
        copies.append(tuple(self.shape))
        return self

    monkeypatch.setattr(index_mod, "faiss_has_gpu", lambda: True)
    monkeypatch.setattr(index_mod, "faiss_module", lambda: None)  # no FAISS: the tiled kernel
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.Tensor, "cuda", fake_cuda)
    x = clustered(100, 4, 10, 0.3, seed=16)
    idx = KNNIndex(4, "ip", "exact", use_gpu=True).build(x)
    for _ in range(3):
        idx.search(x[:7], 2)
    assert copies.count((100, 4)) == 1 and copies.count((7, 4)) == 3


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
