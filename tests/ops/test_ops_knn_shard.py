"""ops.knn_shard: exact merge of per-shard top-k lists and the sharded exact kNN.

Oracles: a brute-force numpy search (float64 scores, stable ordering by lower index) on
integer-valued data, where every score is exact in float32, and one unsharded ``ops.knn``
call (results must be identical for every shard / block size).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from thresher.ops import knn, merge_topk, sharded_knn


def int_data(n, d, seed, dups=()):
    x = np.random.default_rng(seed).integers(-3, 4, size=(n, d)).astype(np.float32)
    for a, b in dups:
        x[b] = x[a]
    return x


def brute(q, b, k, metric, exclude_self=False, offset=0):
    """Numpy oracle: (values, indices) nearest first, ties by the lower index."""
    q64, b64 = q.astype(np.float64), b.astype(np.float64)
    if metric == "ip":
        key = -(q64 @ b64.T)
    else:
        key = ((q64[:, None, :] - b64[None, :, :]) ** 2).sum(2)
    vals, idx = [], []
    for r in range(len(q)):
        cols = [j for j in range(len(b)) if not (exclude_self and j == offset + r)]
        order = sorted(cols, key=lambda j: (key[r, j], j))[:k]
        idx.append(order)
        vals.append([-key[r, j] if metric == "ip" else key[r, j] for j in order])
    return np.array(vals, np.float64).reshape(len(q), k), np.array(idx, np.int64).reshape(len(q), k)


def unsharded(q, b, k, metric, exclude_self=False, offset=0):
    v, i = knn(q, b, k, metric, exclude_self=exclude_self, query_offset=offset)
    return v.numpy(), i.numpy()


# ------------------------------------------------------------------ merge_topk
def merge_oracle(vals, idx, k, largest):
    out_v, out_i = [], []
    for r in range(vals[0].shape[0]):
        cand = [(v[r, j], i[r, j]) for v, i in zip(vals, idx) for j in range(v.shape[1])]
        good = [(a, b) for a, b in cand if b >= 0 and not np.isnan(a)]
        good.sort(key=lambda t: ((-t[0] if largest else t[0]), t[1]))
        good = good[:k] + [(np.nan, -1)] * max(0, k - len(good))
        out_v.append([a for a, _ in good])
        out_i.append([b for _, b in good])
    return np.array(out_v, np.float32), np.array(out_i, np.int64)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("k", [0, 1, 3, 9])
def test_merge_topk_matches_oracle_with_ties_nan_and_missing(largest, k):
    rng = np.random.default_rng(k)
    vals, idx = [], []
    for s, width in enumerate([3, 1, 4, 0]):
        v = rng.integers(0, 3, size=(7, width)).astype(np.float32)  # many ties
        i = rng.permutation(100)[: 7 * width].reshape(7, width) + 100 * s
        v[rng.random(v.shape) < 0.15] = np.nan
        i[rng.random(i.shape) < 0.15] = -1
        vals.append(v)
        idx.append(i)
    got_v, got_i = merge_topk(vals, idx, k, largest)
    want_v, want_i = merge_oracle(vals, idx, k, largest)
    assert got_v.shape == (7, k) and got_i.dtype == np.int64
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_v, want_v)  # NaN == NaN position-wise


def test_merge_topk_signed_zero_ties_by_index_and_empty_inputs():
    v, i = merge_topk([np.array([[0.0]], np.float32), np.array([[-0.0]], np.float32)], [[[9]], [[2]]], 2, True)
    assert i.tolist() == [[2, 9]]
    v, i = merge_topk([], [], 3, True)
    assert v.shape == (0, 3)
    v, i = merge_topk([np.zeros((0, 2), np.float32)], [np.zeros((0, 2), np.int64)], 2, False)
    assert v.shape == (0, 2)
    with pytest.raises(ValueError, match="k: expected"):
        merge_topk([np.zeros((1, 1))], [np.zeros((1, 1))], -1, True)
    with pytest.raises(ValueError, match=r"values_list\[0\]"):
        merge_topk([np.zeros((1, 2))], [np.zeros((1, 1))], 1, True)


# ----------------------------------------------------------------- sharded_knn
SIZES = [(1, 1), (1, 5), (3, 2), (7, 64), (16, 3), (1000, 1000)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("shard_rows, query_rows", SIZES)
def test_sharded_equals_unsharded_and_oracle_with_duplicates(metric, exclude_self, shard_rows, query_rows):
    b = int_data(41, 5, seed=1, dups=[(0, 7), (0, 20), (3, 33), (3, 40), (12, 13)])
    q = b[5:30]  # queries are base rows 5..29 (offset 5 for exclude_self)
    off = 5 if exclude_self else 0
    k = 9
    got_v, got_i = sharded_knn(q, b, k, metric, shard_rows, query_rows, exclude_self=exclude_self, query_offset=off)
    ref_v, ref_i = unsharded(q, b, k, metric, exclude_self, off)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_array_equal(got_v, ref_v)
    want_v, want_i = brute(q, b, k, metric, exclude_self, off)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_v, want_v.astype(np.float32))
    if exclude_self:
        assert not (got_i == np.arange(5, 30)[:, None]).any()


@pytest.mark.parametrize("shard_rows, query_rows", [(1, 4), (5, 1), (13, 7), (64, 200)])
def test_float_data_ip_identical_l2_values_identical(shard_rows, query_rows):
    rng = np.random.default_rng(3)
    b = rng.standard_normal((60, 8)).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    b[17] = b[4]  # a duplicate
    for metric in ("ip", "l2"):
        got = sharded_knn(b, b, 6, metric, shard_rows, query_rows, exclude_self=True)
        ref = unsharded(b, b, 6, metric, True)
        np.testing.assert_array_equal(got[0], ref[0])  # values bit-identical for both metrics
        if metric == "ip":
            np.testing.assert_array_equal(got[1], ref[1])
        else:  # indices may only differ among equal returned distances (see the module docstring)
            v = ref[0]
            unique = (v[:, :, None] == v[:, None, :]).sum(2) == 1
            np.testing.assert_array_equal(got[1][unique], ref[1][unique])
            assert unique.mean() > 0.9


def test_odd_shapes():
    b = int_data(10, 3, seed=4, dups=[(1, 2)])
    # k == N - 1 with exclude_self, shard of one row: every other row, in oracle order
    got = sharded_knn(b, b, 9, "l2", shard_rows=1, query_rows=3, exclude_self=True)
    want = brute(b, b, 9, "l2", True)
    np.testing.assert_array_equal(got[1], want[1])
    # k larger than a shard, shard larger than N
    for sr in (2, 50):
        got = sharded_knn(b[:4], b, 7, "ip", shard_rows=sr, query_rows=2)
        np.testing.assert_array_equal(got[1], brute(b[:4], b, 7, "ip")[1])
    # empty queries, k = 0
    v, i = sharded_knn(np.zeros((0, 3), np.float32), b, 4, "ip", 3, 3)
    assert v.shape == (0, 4) and i.shape == (0, 4)
    v, i = sharded_knn(b, b, 0, "ip", 3, 3)
    assert v.shape == (10, 0)
    # one-row base, queries outside it
    v, i = sharded_knn(b[:3], b[:1], 1, "ip", 1, 1)
    assert i.tolist() == [[0], [0], [0]]


def test_mapper_receives_picklable_tasks_and_defaults():
    b = int_data(30, 4, seed=5)
    calls, shard_objects = [], {}

    def remote_like(fn, tasks):  # what a remote engine does: pickle the function and every task
        fn = pickle.loads(pickle.dumps(fn))
        out = []
        for t in tasks:
            calls.append(t[2:4])
            shard_objects.setdefault(t[2], set()).add(id(t[1]))
            out.append(pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(t))))))
        return out

    got = sharded_knn(b, b, 5, "ip", 8, 16, exclude_self=True, mapper=remote_like)
    assert sorted(calls) == sorted((bs, qs) for qs in (0, 16) for bs in (0, 8, 16, 24))
    assert all(len(ids) == 1 for ids in shard_objects.values())  # one object per shard: shippable once
    np.testing.assert_array_equal(got[1], unsharded(b, b, 5, "ip", True)[1])
    np.testing.assert_array_equal(sharded_knn(b, b, 5, "ip")[1], unsharded(b, b, 5, "ip")[1])
    for dev in ("cpu", "auto"):  # auto: the task's own GPU when it sees one, else the CPU
        got = sharded_knn(b, b, 5, "l2", 7, 9, exclude_self=True, device=dev)
        np.testing.assert_array_equal(got[1], brute(b, b, 5, "l2", True)[1])


def test_errors_name_the_argument():
    b = int_data(6, 3, seed=6)
    with pytest.raises(ValueError, match="k: 6 is larger than the number of candidates"):
        sharded_knn(b, b, 6, "ip", 2, 2, exclude_self=True)
    with pytest.raises(ValueError, match="base: dimension"):
        sharded_knn(b[:, :2], b, 1, "ip", 2, 2)
    with pytest.raises(ValueError, match="metric"):
        sharded_knn(b, b, 1, "cosine", 2, 2)
    with pytest.raises(ValueError, match="shard_rows"):
        sharded_knn(b, b, 1, "ip", 0, 2)
    with pytest.raises(ValueError, match="query_rows"):
        sharded_knn(b, b, 1, "ip", 2, 0)
    with pytest.raises(ValueError, match="query_offset"):
        sharded_knn(b, b, 1, "ip", 2, 2, exclude_self=True, query_offset=3)
    y = b.copy()
    y[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"base: 1 row\(s\).*row 4"):
        sharded_knn(b, y, 1, "ip", 2, 2)
    with pytest.raises(ValueError, match="mapper: returned more results"):
        sharded_knn(b, b, 1, "ip", 6, 6, mapper=lambda f, ts: [f(t) for t in ts] * 2)


def test_rows_checked_for_nan_once_not_by_every_task(monkeypatch):
    """sharded_knn checks its whole input for NaN/inf once (the pool searched for itself: once, as queries);
    its tasks do not check their blocks again (12 tasks here)."""
    import importlib

    knn_module = importlib.import_module("thresher.ops.knn")  # (thresher.ops.knn is also the function)
    checked = []
    real = knn_module.nonfinite_rows
    monkeypatch.setattr(knn_module, "nonfinite_rows", lambda x: checked.append(len(x)) or real(x))
    b = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    sharded_knn(b, b, 2, "l2", 4, 3, exclude_self=True)
    assert checked == [12]
    checked.clear()
    sharded_knn(b[:5], b, 2, "l2", 4, 3)
    assert checked == [5, 12]
    y = b.copy()
    y[9, 0] = np.inf
    with pytest.raises(ValueError, match=r"queries: 1 row\(s\).*row 9"):
        sharded_knn(y, y, 2, "l2", 4, 3, exclude_self=True)
