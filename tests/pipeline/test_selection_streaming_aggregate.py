"""Streaming aggregates whose fold reads the whole pool (thresher.pipeline.streaming_agg): ``weighted``
with every normaliser, ``rrf``, ``borda`` and ``product`` of normalised values, as scans of the shards.
Each equals the selector on the whole pool (same rows, same order) for every shard layout, with the
values to rank sorted on disk or in memory, and an independent oracle of its formula; exact sums make
zscore independent of the layout."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_with_selection, write_bigbench_head
from thresher.ops.exact import ExactSum, exact_mean_std
from thresher.pipeline.rowstore import RowStore
from thresher.pipeline.streaming_agg import PooledAggregate, SortedColumn
from thresher.selectors.basic import aggregate, rrf, weighted

N = 120
FOLDS = [("weighted_sum", norm) for norm in ("rank", "minmax", "zscore", "quantile")] + [
    ("borda", "none"),
    ("rrf", "none"),
    ("product", "minmax"),
    ("product", "quantile"),
]


def feed(p, cols: dict, shard: int):
    n = len(next(iter(cols.values())))
    for a in range(0, n, shard):
        p.scan({c: v[a : a + shard] for c, v in cols.items()}, a, min(shard, n - a))
    return p


def streamed(cols, objs, method, norm, weights, k, shard, mask=None, store=None):
    """The selecting pass of a pooled aggregate fed ``shard`` rows at a time (filters: ``mask`` as a
    column; ``store``: a row store for the sorted values)."""
    cols = dict(cols)
    filters = []
    if mask is not None:
        cols["keep"], filters = mask.astype(np.float64), ["keep > 0"]
    make = PooledAggregate(filters, objs, method, weights, norm)
    count = feed(make.counting(store), cols, shard)
    make.complete(count, lambda p: feed(p, cols, shard))
    return feed(make(k), cols, shard)


def whole(cols, objs, method, norm, weights, k, mask=None):
    """The in-memory selector on the eligible rows, as pool positions."""
    elig = np.flatnonzero(np.ones(len(next(iter(cols.values()))), bool) if mask is None else mask)
    frame = pd.DataFrame({c: v[elig] for c, v in cols.items()})
    spec = [f"{c}:{'max' if m else 'min'}" for c, m in objs]
    if method == "rrf":
        rel = rrf(frame, k, objectives=spec, weights=weights)
    else:
        rel = aggregate(frame, k, objectives=spec, method=method, weights=weights, normalize=norm)
    return elig[rel].tolist()


def random_matrix(seed: int, n: int, m: int, positive: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    mat = rng.integers(0, 7, size=(n, m)).astype(np.float64) + (0 if seed % 2 else rng.normal(size=(n, m)))
    if positive:
        mat = np.abs(mat)
    mat[rng.random((n, m)) < 0.05] = np.nan  # never selected
    mat[rng.random((n, m)) < 0.02] = np.inf  # neither: the row is not finite
    if seed % 3 == 0:
        mat[:, 0] = 3.0  # a constant column: ties everywhere
    return {f"c{j}": mat[:, j] for j in range(m)}


@pytest.mark.parametrize("method,norm", FOLDS)
@pytest.mark.parametrize("seed", range(4))
def test_pass_equals_the_selector_on_the_whole_pool(method, norm, seed, tmp_path):
    n, m = 97, 2 + seed % 2
    cols = random_matrix(seed, n, m, positive=method == "product")
    objs = [(c, j % 2 == 0) for j, c in enumerate(cols)]
    weights = None if seed % 2 else [1.0 + j for j in range(m)]
    mask = np.random.default_rng(seed + 10).random(n) < 0.8 if seed >= 2 else None
    store = RowStore(tmp_path) if seed % 2 else None  # sorted on disk, or in memory
    try:
        for k in (0, 1, 9, n):
            want = whole(cols, objs, method, norm, weights, k, mask)
            for shard in (1, 13, n + 5):
                p = streamed(cols, objs, method, norm, weights, k, shard, mask, store)
                assert p.order(k, None).tolist() == want, (k, shard)
    finally:
        if store is not None:
            store.close()


def test_combined_scores_match_an_independent_oracle():
    """Rank-normalised weighted sum and RRF computed by brute force (pairwise comparisons)."""
    rng = np.random.default_rng(7)
    n = 40
    a, b = rng.integers(0, 5, n).astype(float), rng.normal(size=n)
    cols, objs = {"a": a, "b": b}, [("a", True), ("b", False)]
    g = np.stack([a, -b], axis=1)  # oriented: higher is better
    lt = (g[None, :, :] < g[:, None, :]).sum(1)
    le = (g[None, :, :] <= g[:, None, :]).sum(1)
    rank01 = ((lt + le + 1) / 2 - 1) / (n - 1)
    rank01[:, (lt == 0).all(0) & (le == n).all(0)] = 0.5
    w_sum = rank01 @ np.array([1.0, 3.0])
    rrf_score = (1.0 / (60 + 1 + (n - le))).sum(1)
    for method, norm, weights, score in [("weighted_sum", "rank", [1.0, 3.0], w_sum), ("rrf", "none", None, rrf_score)]:
        p = streamed(cols, objs, method, norm, weights, 10, 7)
        key = np.lexsort((np.arange(n), -np.round(score, 12)))
        assert p.order(10, None).tolist() == key[:10].tolist(), method


def test_sorted_values_live_on_disk_and_memory_is_the_shard(tmp_path):
    """Not timed: with a row store the values to rank are appended to files and sorted there; the pass
    holds nothing beyond the shard."""
    rng = np.random.default_rng(3)
    cols = {"a": rng.normal(size=6000), "b": rng.integers(0, 50, 6000).astype(float)}
    store = RowStore(tmp_path)
    try:
        make = PooledAggregate([], [("a", True), ("b", False)], "weighted_sum", None, "rank")
        count = feed(make.counting(store), cols, 250)
        make.complete(count, lambda p: feed(p, cols, 250))
        assert all(isinstance(c.values, np.memmap) and not c.parts for c in count.sorted)
        assert np.array_equal(count.sorted[1].values, np.sort(-cols["b"]))  # oriented: b is minimised
        assert count.peak <= 250 * 3
        files = list(Path(store.dir).glob("sorted-*.bin"))
        assert sorted(f.stat().st_size for f in files) == [6000 * 8, 6000 * 8]
        p = feed(make(20), cols, 250)
        assert p.order(20, None).tolist() == whole(cols, [("a", True), ("b", False)], "weighted_sum", "rank", None, 20)
    finally:
        store.close()


@pytest.mark.parametrize("on_disk", [False, True])
def test_sorted_column_counts_ties_and_signed_zeros(tmp_path, on_disk):
    store = RowStore(tmp_path) if on_disk else None
    c = SortedColumn(store)
    c.add(np.array([2.0, 1.0, 2.0]))
    c.add(np.array([]))
    c.add(np.array([5.0, 2.0, -0.0, 0.0]))
    c.finish()
    lt, le = c.counts(np.array([2.0, 0.0, -1.0, 9.0]))
    assert lt.tolist() == [3, 0, 0, 7] and le.tolist() == [6, 2, 0, 7]
    empty = SortedColumn(store).finish()
    assert [x.tolist() for x in empty.counts(np.array([1.0]))] == [[0], [0]]
    if store is not None:
        store.close()


# ---------------------------------------------------------------- exact sums (zscore's mean and std)
def test_exact_sum_is_the_rational_sum_in_any_order():
    rng = np.random.default_rng(0)
    v = rng.standard_normal(3000) * 10.0 ** rng.integers(-300, 300, 3000)
    v[:6] = [5e-324, -5e-324, 1.7e308, -1.7e308, 0.0, -0.0]
    exact = sum(Fraction(float(x)) for x in v)
    s = ExactSum().add(v)
    assert s.value() == float(exact) and s.mean() == float(exact / len(v))
    perm = rng.permutation(len(v))
    parts = ExactSum()
    for piece in np.array_split(v[perm], 7):
        parts.add(piece)
    assert parts.total == s.total and parts.n == s.n


def test_exact_sum_overflow_and_special_values():
    assert ExactSum().add([1.7e308, 1.7e308]).value() == float("inf")
    assert ExactSum().add([1.0, np.inf]).value() == float("inf")
    assert np.isnan(ExactSum().add([np.inf, -np.inf]).value())
    assert np.isnan(ExactSum().mean())


def test_exact_mean_std_against_fractions_and_layout():
    rng = np.random.default_rng(5)
    v = rng.normal(size=500) * 1e3 + 1e9  # large offset: a float two-pass sum loses digits here
    mean, std = exact_mean_std(v)
    m = sum(Fraction(float(x)) for x in v) / len(v)
    assert mean == float(m)
    d = [Fraction(float(x - mean) * float(x - mean)) for x in v]
    assert std == float(sum(d) / len(v)) ** 0.5
    assert exact_mean_std(v[::-1]) == (mean, std)


# ---------------------------------------------------------------- the pipeline, every layout
@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory) -> Path:
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", N)


OBJS = ["length:max", "fake_len:min"]
SELECTORS = [
    ("streaming-weighted", {"name": "weighted", "options": {"objectives": OBJS}}),
    ("streaming-rrf", {"name": "rrf", "options": {"objectives": OBJS, "weights": [2, 1]}}),
    ("streaming-aggregate", {"name": "aggregate", "options": {"objectives": OBJS, "method": "borda"}}),
    ("streaming-weighted", {"name": "weighted", "options": {"objectives": OBJS, "normalize": "zscore"}}),
]


@pytest.mark.parametrize("kind,sel", SELECTORS)
def test_pipeline_streams_and_equals_in_memory(pool, tmp_path, kind, sel):
    cache = str(tmp_path / "cache")
    kw = dict(criteria=["length", "fake_len"], selector=sel, ratio=0.1, filters=["length >= 8"])
    ref = run_with_selection(pool, tmp_path / "mem", cache, in_memory=True, shard_size=1000, **kw)[0]
    for shard in (1, 7, 1000):
        res, scores, sel_obj, got = run_with_selection(pool, tmp_path / f"s{shard}", cache, shard_size=shard, **kw)
        assert got["kind"] == kind
        assert res.selected.tolist() == ref.selected.tolist() and len(ref.selected) == ref.k > 0
        assert sel_obj.replays >= 1  # the selecting pass reads the cache after the count
    assert ref.selected.tolist() == whole_from_scores(scores, sel)


def whole_from_scores(scores: pd.DataFrame, sel: dict) -> list:
    """The selector called by hand on the eligible rows of the scores table (pool order), as pool positions."""
    pos = np.flatnonzero(scores["eligible"].to_numpy(bool))
    k = int(scores["selected"].sum())
    fn = {"weighted": weighted, "rrf": rrf, "aggregate": aggregate}[sel["name"]]
    return pos[fn(scores.iloc[pos].reset_index(drop=True), k, **sel["options"])].tolist()


def test_pipeline_token_budget_and_repr_filter(pool, tmp_path):
    cache = str(tmp_path / "cache")
    sel = {"name": "weighted", "options": {"objectives": ["length:max", "fake_len:min"], "normalize": "minmax"}}
    for extra, kind in [({"tokens": 3000}, "streaming-weighted-tokens"), ({"k": 12}, "streaming-weighted")]:
        kw = dict(criteria=["length", "fake_len"], selector=sel, **extra)
        ref = run_with_selection(pool, tmp_path / f"m{kind}", cache, in_memory=True, shard_size=9, **kw)[0]
        res, _, _, got = run_with_selection(pool, tmp_path / f"s{kind}", cache, shard_size=9, **kw)
        assert got["kind"] == kind and res.selected.tolist() == ref.selected.tolist() and len(ref.selected)


def test_product_of_zscores_is_refused_the_same_way(pool, tmp_path):
    cache = str(tmp_path / "cache")
    sel = {"name": "aggregate", "options": {"objectives": ["length", "fake_len"], "method": "product",
                                            "normalize": "zscore"}}  # fmt: skip
    for mem in (True, False):
        with pytest.raises(ValueError, match="method='product' needs values >= 0"):
            run_with_selection(pool, tmp_path / f"o{mem}", cache, in_memory=mem, criteria=["length", "fake_len"],
                               selector=sel, k=5, shard_size=7)  # fmt: skip


def test_pipeline_with_a_pool_scoped_objective(pool, tmp_path):
    """An objective only the whole pool gives (``fake_pool``): the count reads it back from the cache."""
    cache = str(tmp_path / "cache")
    sel = {"name": "rrf", "options": {"objectives": ["fake_len:max", "fake_pool:min"]}}
    kw = dict(criteria=["fake_len", "fake_pool"], selector=sel, k=10, filters=["fake_len >= 10"])
    ref = run_with_selection(pool, tmp_path / "mem", cache, in_memory=True, shard_size=11, **kw)[0]
    res, scores, _, got = run_with_selection(pool, tmp_path / "s", cache, shard_size=11, **kw)
    assert got["kind"] == "streaming-rrf" and res.selected.tolist() == ref.selected.tolist() and len(ref.selected)
    assert res.selected.tolist() == whole_from_scores(scores, sel)
