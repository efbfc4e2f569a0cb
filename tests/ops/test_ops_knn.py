"""thresher.ops.knn: every backend against the brute-force oracle.

Integer-valued data makes every inner product exact in float32, so ties are
real ties and indices must match exactly (lower index first). Random float data
checks values within the float32 reference's own rounding error. Tiny tiles
force the tiled paths (several base tiles, partial panels, partial strips).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher import _native
from thresher.ops import knn, knn_merge_tile, last_backend
from thresher.ops.knn import NEAR_TIE_RTOL, TOLERANCES, knn_cpu, knn_reference, knn_triton

OP = "knn"
BACKENDS = ["reference", "cpu", "triton"]


def oracle(q: np.ndarray, b: np.ndarray, k: int, metric: str, exclude_self: bool = False, offset: int = 0):
    """float64 numpy brute force; order = (nearer first, lower index on ties)."""
    q = q.astype(np.float64)
    b = b.astype(np.float64)
    if metric == "ip":
        s = q @ b.T
        key = -s
    else:
        s = np.maximum((q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * q @ b.T, 0.0)
        if np.allclose(q, np.round(q)) and np.allclose(b, np.round(b)):
            s = np.round(s)  # integer data: exact
        key = s
    vals, idx = [], []
    for i in range(q.shape[0]):
        cols = np.arange(b.shape[0])
        kk = key[i].copy()
        if exclude_self:
            kk[offset + i] = np.inf
        o = np.lexsort((cols, kk))[:k]
        idx.append(o)
        vals.append(s[i, o])
    return np.array(vals).reshape(q.shape[0], k), np.array(idx, dtype=np.int64).reshape(q.shape[0], k)


def _run(backend, q, b, k, metric, exclude_self=False, offset=0, tiny=False):
    qt, bt = torch.from_numpy(q), torch.from_numpy(b)
    if backend == "cpu" and tiny:
        return knn_cpu(qt, bt, k, metric, exclude_self, offset, tile_n=32, block_q=8)
    if backend == "triton":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        qt, bt = qt.to(dev), bt.to(dev)
        if tiny:
            v, i = knn_triton(qt, bt, k, metric, exclude_self, offset, block_m=16, block_n=16, block_k=16)
            return v.cpu(), i.cpu()
    if backend == "reference" and tiny:
        return knn_reference(qt, bt, k, metric, exclude_self, offset, chunk=5)
    v, i = knn(qt, bt, k, metric, exclude_self=exclude_self, query_offset=offset, backend=backend)
    return v.cpu(), i.cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("shape", [(37, 53, 19), (1, 70, 3), (9, 9, 1), (40, 33, 64)])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_integer_data_exact_with_ties(backend, metric, shape, exclude_self, backend_available):
    backend_available(OP, backend)
    Q, N, d = shape
    rng = np.random.default_rng(Q * 1000 + N + d)
    b = rng.integers(-2, 3, size=(N, d)).astype(np.float32)  # many exact ties
    if exclude_self:
        Q = min(Q, N)
        q = b[:Q].copy()
    else:
        q = rng.integers(-2, 3, size=(Q, d)).astype(np.float32)
    k = min(7, N - (1 if exclude_self else 0))
    ov, oi = oracle(q, b, k, metric, exclude_self)
    interp = backend == "triton" and not torch.cuda.is_available()
    for tiny in (True,) if interp else (False, True):  # interpreter: default blocks are the tiny ones
        v, i = _run(backend, q, b, k, metric, exclude_self, tiny=tiny)
        assert v.dtype == torch.float32 and i.dtype == torch.int64
        np.testing.assert_array_equal(i.numpy(), oi, err_msg=f"{backend} tiny={tiny}")
        np.testing.assert_array_equal(v.numpy(), ov.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_random_float_within_reference_error(backend, metric, backend_available):
    backend_available(OP, backend)
    rtol, _ = TOLERANCES[torch.float32]
    rng = np.random.default_rng(1)
    Q, N, d = (45, 301, 48) if backend != "triton" else (20, 90, 32)
    q = rng.standard_normal((Q, d)).astype(np.float32)
    b = rng.standard_normal((N, d)).astype(np.float32)
    k = 10
    ov, oi = oracle(q, b, k, metric)
    rv, ri = knn_reference(torch.from_numpy(q), torch.from_numpy(b), k, metric)
    ref_err = np.abs(rv.numpy() - ov).max()
    v, i = _run(backend, q, b, k, metric, tiny=True)
    err = np.abs(v.numpy() - ov).max()
    scale = np.abs(ov).max()
    assert err <= max(4 * ref_err, rtol * scale), (err, ref_err)
    # indices agree except where the float64 values are within rounding of each other
    diff = i.numpy() != oi
    if diff.any():
        tol = NEAR_TIE_RTOL * scale
        for r, c in zip(*np.nonzero(diff)):
            got = float(
                (q[r].astype(np.float64) @ b[i[r, c]].astype(np.float64))
                if metric == "ip"
                else ((q[r].astype(np.float64) - b[i[r, c]]) ** 2).sum()
            )
            assert abs(got - ov[r, c]) <= tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_offset_chunks_match_full(backend, backend_available):
    backend_available(OP, backend)
    rng = np.random.default_rng(2)
    x = rng.integers(-3, 4, size=(50, 11)).astype(np.float32)
    fv, fi = _run(backend, x, x, 4, "l2", exclude_self=True)
    parts = [_run(backend, x[s : s + 17], x, 4, "l2", exclude_self=True, offset=s) for s in range(0, 50, 17)]
    np.testing.assert_array_equal(torch.cat([p[1] for p in parts]).numpy(), fi.numpy())
    assert not (fi.numpy() == np.arange(50)[:, None]).any()


def test_dispatch_picks_native_on_cpu(backend_available):
    x = torch.randn(20, 8)
    knn(x, x, 3)
    assert last_backend() == ("knn", "reference" if backend_available.reasons(OP, "cpu") else "cpu")


def test_low_precision_inputs():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.integers(-2, 3, size=(30, 16)).astype(np.float32))
    v32, i32 = knn(x, x, 5, exclude_self=True)
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        v, i = knn(x.to(dt), x.to(dt), 5, exclude_self=True)
        np.testing.assert_array_equal(i.numpy(), i32.numpy())


def test_numpy_inputs_and_empty():
    b = np.eye(4, dtype=np.float32)
    v, i = knn(b[:2], b, 1)
    assert i.tolist() == [[0], [1]]
    v, i = knn(np.zeros((0, 4), np.float32), b, 3)
    assert tuple(v.shape) == (0, 3) and tuple(i.shape) == (0, 3)
    v, i = knn(b, b, 0)
    assert tuple(i.shape) == (4, 0)
    v, i = knn(np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), 0)
    assert i.shape[0] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_equal_rows_tie_to_lower_index(backend, backend_available):
    backend_available(OP, backend)
    b = np.ones((12, 5), np.float32)
    _, i = _run(backend, b[:3], b, 4, "ip", exclude_self=True)
    assert i.tolist() == [[1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 3, 4]]


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(k=6), "k: 6 is larger"),
        (dict(k=5, exclude_self=True), "k: 5 is larger"),
        (dict(k=-1), "k: expected"),
        (dict(k=2.0), "k: expected"),
        (dict(k=2, metric="cos"), "metric"),
    ],
)
def test_bad_arguments(bad, match):
    x = torch.randn(5, 3)
    kw = dict(bad)
    k = kw.pop("k")
    with pytest.raises(ValueError, match=match):
        knn(x, x, k, **kw)


def test_bad_inputs_named():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="base: dimension 4"):
        knn(x, torch.randn(5, 4), 2)
    y = x.clone()
    y[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"queries: 1 row\(s\) contain NaN or inf \(first: row 3\)"):
        knn(y, x, 2)
    with pytest.raises(ValueError, match="base: .*row 3"):
        knn(x, y, 2)
    with pytest.raises(ValueError, match="queries: expected a 2-d"):
        knn(torch.randn(5), x, 2)
    with pytest.raises(ValueError, match="queries: expected a floating"):
        knn(torch.ones(5, 3, dtype=torch.int64), x, 2)
    with pytest.raises(ValueError, match="query_offset"):
        knn(x, x, 2, exclude_self=True, query_offset=3)
    with pytest.raises(ValueError, match="backend"):
        knn(x, x, 2, backend="nope")


def test_native_raises_value_error_not_crash(backend_available):
    backend_available(OP, "cpu")
    ext = _native.cpu_ext()
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="base: dimension"):
        ext.knn_exact(a, np.zeros((3, 5), np.float32), 1, 0, False, 0)
    with pytest.raises(ValueError, match="k:"):
        ext.knn_exact(a, a, 4, 0, False, 0)
    with pytest.raises(ValueError, match="tile_n"):
        ext.knn_exact(a, a, 1, 0, False, 0, 33, 8)
    with pytest.raises(ValueError, match="queries: wrong dtype"):
        ext.knn_exact(a.astype(np.float64), a, 1, 0, False, 0)


@pytest.mark.parametrize("native", [True, False])
def test_merge_tile_matches_reference(native, monkeypatch, backend_available):
    if not native:
        monkeypatch.setattr(_native, "cpu_ext", lambda: None)
    else:
        backend_available(OP, "cpu")
    rng = np.random.default_rng(4)
    b = rng.integers(-2, 3, size=(41, 6)).astype(np.float32)
    q = b[:9]
    k = 5
    vals = np.full((9, k), -np.inf, np.float32)
    idx = np.full((9, k), -1, np.int64)
    for c0 in range(0, 41, 10):
        knn_merge_tile(q @ b[c0 : c0 + 10].T, c0, 0, True, vals, idx)
    ov, oi = oracle(q, b, k, "ip", exclude_self=True)
    np.testing.assert_array_equal(idx, oi)
    np.testing.assert_array_equal(vals, ov.astype(np.float32))


def test_triton_query_chunks_with_offset(backend_available):
    dev = backend_available(OP, "triton")
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.integers(-2, 3, size=(40, 8)).astype(np.float32))
    v, i = knn_triton(
        x.to(dev), x.to(dev), 3, "ip", True, 0, block_m=16, block_n=16, block_k=16, max_candidate_bytes=1
    )  # forces one BM-row chunk per launch
    ov, oi = oracle(x.numpy(), x.numpy(), 3, "ip", exclude_self=True)
    np.testing.assert_array_equal(i.cpu().numpy(), oi)


# ------------------------------------------------- Triton running top-k kernel
def _triton_dev(backend_available):
    return backend_available(OP, "triton")


@pytest.mark.parametrize("k", [1, 2, 17, 33])
@pytest.mark.parametrize("order", ["random", "ascending", "descending"])
def test_triton_running_topk_k_and_tile_order(k, order, backend_available):
    """k=1, k between powers of two, k > block_n (the tile widens to the pool); base rows
    ordered so every tile beats the running buffer (ascending) or none after the first."""
    dev = _triton_dev(backend_available)
    rng = np.random.default_rng(k)
    N, d = 70, 5
    b = rng.integers(-3, 4, size=(N, d)).astype(np.float32)
    q = rng.integers(-3, 4, size=(19, d)).astype(np.float32)
    if order != "random":
        b = np.repeat(np.arange(N, dtype=np.float32)[:, None], d, 1) / 8
        b = b if order == "ascending" else b[::-1].copy()
        q = np.abs(q) + 1
    for metric in ("ip", "l2"):
        ov, oi = oracle(q, b, k, metric)
        v, i = knn_triton(torch.from_numpy(q).to(dev), torch.from_numpy(b).to(dev), k, metric, block_n=16)
        np.testing.assert_array_equal(i.cpu().numpy(), oi, err_msg=f"{metric} {order}")
        np.testing.assert_allclose(v.cpu().numpy(), ov, rtol=1e-6, atol=1e-5)


def test_triton_k_equals_all_candidates(backend_available):
    dev = _triton_dev(backend_available)
    rng = np.random.default_rng(9)
    x = rng.integers(-1, 2, size=(23, 3)).astype(np.float32)  # heavy ties
    for excl, k in ((False, 23), (True, 22)):
        ov, oi = oracle(x, x, k, "ip", exclude_self=excl)
        v, i = knn_triton(torch.from_numpy(x).to(dev), torch.from_numpy(x).to(dev), k, "ip", excl, 0)
        np.testing.assert_array_equal(i.cpu().numpy(), oi)
        np.testing.assert_array_equal(v.cpu().numpy(), ov.astype(np.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "tf32"])
def test_triton_low_precision_dots_reranked_exactly(dtype, backend_available):
    """bf16/fp16 inputs and tf32 dots choose candidates; the fp32 re-rank makes values and
    order those of the fp32 oracle on the (exactly representable) upcast inputs."""
    dev = _triton_dev(backend_available)
    rng = np.random.default_rng(11)
    q = rng.integers(-4, 5, size=(21, 24)).astype(np.float32)
    b = rng.integers(-4, 5, size=(45, 24)).astype(np.float32)
    ov, oi = oracle(q, b, 6, "l2")
    qt, bt = torch.from_numpy(q).to(dev), torch.from_numpy(b).to(dev)
    if dtype == "tf32":
        v, i = knn_triton(qt, bt, 6, "l2", precision="tf32")
    else:
        v, i = knn_triton(qt.to(dtype), bt.to(dtype), 6, "l2")
    np.testing.assert_array_equal(i.cpu().numpy(), oi)
    np.testing.assert_array_equal(v.cpu().numpy(), ov.astype(np.float32))


def test_triton_pool_size_and_limits():
    from thresher.ops.knn import TRITON_MAX_K, TRITON_MAX_ROWS, _triton_supports, triton_pool_size

    assert [triton_pool_size(k, True) for k in (1, 2, 3, 16, 17, 1024)] == [1, 2, 4, 16, 32, 1024]
    assert [triton_pool_size(k, False) for k in (1, 3, 600, 1024)] == [2, 8, 1024, 1024]
    assert _triton_supports(k=TRITON_MAX_K, n=TRITON_MAX_ROWS) == []
    assert "k=1025" in _triton_supports(k=1025)[0]
    assert "32 bits" in _triton_supports(k=1, n=2**31)[0]
    with pytest.raises(ValueError, match="precision"):
        knn_triton(torch.zeros(2, 2), torch.zeros(3, 2), 1, precision="fp8")


def test_triton_row_offsets_are_int64(backend_available):
    """rows * D past 2^31 (5.6M rows x 384) must not wrap: the kernel's offset helper in int64."""
    dev = _triton_dev(backend_available)
    from thresher import _native

    mod = _native.require_kernel("knn")
    start, d = 5_600_000, 384
    out = torch.empty(16, dtype=torch.int64, device=dev)
    mod.row_offsets_kernel[(1,)](out, start, d, N=16)
    want = (np.arange(start, start + 16, dtype=np.int64) * d).tolist()
    assert want[0] > 2**31
    assert out.cpu().tolist() == want


def test_rerank_exact_orders_ties_and_missing():
    from thresher.ops.knn import rerank_exact

    b = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[1.0, 0.0]])
    cand = torch.tensor([[2, -1, 1, 0]])  # scrambled, one missing
    bn = (b * b).sum(1)
    v, i = rerank_exact(q, b, cand, 3, "ip", bn)
    assert i.tolist() == [[1, 0, 2]] and v.tolist() == [[2.0, 1.0, 1.0]]
    v, i = rerank_exact(q, b, cand, 3, "l2", bn, max_bytes=1)
    assert i.tolist() == [[0, 2, 1]] and v.tolist() == [[0.0, 0.0, 1.0]]


def test_finite_check_in_row_blocks_and_skipped_only_when_asked(monkeypatch):
    """The NaN/inf check finds a bad row in any block of rows; ``check_finite=False`` (a caller that checked
    the whole input, as sharded_knn) skips it and nothing else; numpy rows are checked as tensors are."""
    from thresher.ops import rows
    from thresher.ops.knn import check_finite_rows

    monkeypatch.setattr(rows, "ROW_ELEMS", 6)  # blocks of 2 rows
    x = torch.randn(9, 3)
    y = x.clone()
    y[7, 2] = float("inf")
    with pytest.raises(ValueError, match=r"base: 1 row\(s\) contain NaN or inf \(first: row 7\)"):
        knn(x, y, 2)
    with pytest.raises(ValueError, match=r"rows: 1 row\(s\).*row 7"):
        check_finite_rows(y.numpy(), "rows")
    v, i = knn(x, y, 2, check_finite=False)  # not checked: the search itself runs
    assert v.shape == (9, 2) and i.shape == (9, 2)
    with pytest.raises(ValueError, match="k: 10 is larger"):
        knn(x, y, 10, check_finite=False)  # the other checks stay
