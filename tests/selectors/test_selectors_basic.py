"""Basic selectors against plain-numpy oracles (thresher.selectors.basic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thresher.registry import SELECTORS
from thresher.selectors import basic as B


def sel(name, scores, k, **kw):
    return np.asarray(SELECTORS.get(name).obj(scores, k, **kw))


def oracle_order(v, maximize):
    idx = [i for i in range(len(v)) if not np.isnan(v[i])]
    return sorted(idx, key=lambda i: ((-v[i] if maximize else v[i]), i))


@pytest.mark.parametrize("n,k", [(0, 0), (1, 1), (7, 3), (1001, 50), (513, 600)])
@pytest.mark.parametrize("maximize", [True, False])
def test_topk_matches_oracle_with_ties_and_nan(n, k, maximize):
    rng = np.random.default_rng(n + k)
    v = rng.integers(0, 5, size=n).astype(np.float64)  # many ties
    v[rng.random(n) < 0.1] = np.nan
    df = pd.DataFrame({"s": v})
    got = sel("topk", df, k, criterion="s", direction="max" if maximize else "min")
    assert got.tolist() == oracle_order(v, maximize)[:k]


def test_topk_needs_a_named_column_and_valid_k():
    df = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    with pytest.raises(ValueError, match="criterion: name the score column"):
        sel("topk", df, 1)
    with pytest.raises(ValueError, match="no column 'c'"):
        sel("topk", df, 1, criterion="c")
    with pytest.raises(ValueError, match="k: expected"):
        sel("topk", df, -1, criterion="a")


def test_threshold_quantile_absolute_and_knee():
    v = np.arange(100, dtype=np.float64)
    df = pd.DataFrame({"s": v})
    assert sorted(sel("threshold", df, 100, criterion="s", mode="quantile", value=0.9).tolist()) == list(range(90, 100))
    low = sel("threshold", df, 100, criterion="s", direction="min", mode="quantile", value=0.9)
    assert low.tolist() == list(range(10))
    got = sel("threshold", df, 100, criterion="s", mode="absolute", value=95.5)
    assert got.tolist() == [99, 98, 97, 96]
    assert len(sel("threshold", df, 2, criterion="s", mode="absolute", value=95.5)) == 2  # budget caps
    # knee: 10 high scores, then a flat tail -> the knee is at the drop
    w = np.concatenate([np.linspace(100, 90, 10), np.linspace(5, 0, 190)])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(w))
    d2 = pd.DataFrame({"s": w[perm]})
    got = sel("threshold", d2, 200, criterion="s", mode="knee")
    assert sorted(w[perm][got].tolist(), reverse=True) == sorted(w, reverse=True)[: len(got)]
    assert 10 <= len(got) <= 12
    with pytest.raises(ValueError, match="mode"):
        sel("threshold", df, 3, criterion="s", mode="median")
    with pytest.raises(ValueError, match="value: quantile"):
        sel("threshold", df, 3, criterion="s", mode="quantile", value=1.5)


@pytest.mark.parametrize(
    "opts,msg",
    [
        ({"mode": "knee", "value": 0.3}, "value: threshold mode 'knee' takes no value"),
        ({"mode": "absolute"}, "value: threshold mode 'absolute' needs value=<score>"),
        ({"mode": "quantile", "value": 1.5}, r"value: quantile must be in \[0, 1\], got 1.5"),
    ],
)
def test_threshold_options_that_do_not_fit_the_mode_are_refused_by_the_plan(opts, msg, tmp_path):
    """Before any data is read (the pipeline may stream the threshold without calling the selector)."""
    from thresher.errors import OptionError
    from thresher.pipeline import PipelineConfig, make_plan

    selector = {"name": "threshold", "options": {"criterion": "length", **opts}}
    with pytest.raises(OptionError, match=msg):
        make_plan(PipelineConfig(data=str(tmp_path / "nothing.jsonl"), criteria=["length"], selector=selector))
    first = {"name": "threshold", "options": {"criterion": "length", **opts}}
    then = {"name": "topk", "options": {"criterion": "length"}}
    cascade = {"name": "cascade", "options": {"first": first, "then": then}}
    with pytest.raises(OptionError, match=msg):
        make_plan(PipelineConfig(data=str(tmp_path / "nothing.jsonl"), criteria=["length"], selector=cascade, k=3))
    with pytest.raises(OptionError, match=msg):
        sel("threshold", pd.DataFrame({"s": [1.0, 2.0]}), 1, criterion="s", **opts)


def test_knee_index_on_concave_and_flat_curves():
    assert B.knee_index(np.array([5.0, 5.0, 5.0])) == 3
    c = 1.0 - np.linspace(0, 1, 101) ** 4  # flat then a sharp fall: knee near the end
    assert B.knee_index(c) > 60


def dominates(a, b):
    return np.all(a >= b) and np.any(a > b)


def brute_ranks(m):
    n = len(m)
    ranks = np.full(n, -1)
    left = set(range(n))
    r = 0
    while left:
        front = [i for i in left if not any(dominates(m[j], m[i]) for j in left if j != i)]
        for i in front:
            ranks[i] = r
        left -= set(front)
        r += 1
    return ranks


def test_pareto_selects_fronts_in_order():
    rng = np.random.default_rng(3)
    m = rng.integers(0, 6, size=(150, 2)).astype(np.float64)
    df = pd.DataFrame({"a": m[:, 0], "b": -m[:, 1]})  # b is minimised
    df.loc[5, "a"] = np.nan
    got = sel("pareto", df, 150, objectives=["a:max", "b:min"])
    ok = np.flatnonzero(~np.isnan(df["a"].to_numpy()))
    ranks = np.full(150, -1)
    ranks[ok] = brute_ranks(m[ok])
    assert 5 not in got.tolist() and len(got) == 149
    assert np.all(np.diff(ranks[got]) >= 0)  # fronts in order
    k = int((ranks == 0).sum()) + 3
    first = sel("pareto", df, k, objectives=["a:max", "b:min"])
    assert set(np.flatnonzero(ranks == 0)) <= set(first.tolist())


def test_weighted_and_rrf_against_numpy():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    got = sel("weighted", df, 20, objectives=["a:max", "b:min"], weights=[1.0, 0.0], normalize="minmax")
    assert got.tolist() == oracle_order(df["a"].to_numpy(), True)[:20]
    # rrf with one objective is that objective's order
    got = sel("rrf", df, 20, objectives=["b:min"])
    assert got.tolist() == oracle_order(df["b"].to_numpy(), False)[:20]
    with pytest.raises(ValueError, match="weights: expected 2"):
        sel("weighted", df, 5, objectives=["a", "b"], weights=[1.0])
    with pytest.raises(ValueError, match="direction of 'a'"):
        sel("weighted", df, 5, objectives=["a:up"])


def test_random_is_seeded_and_without_repeats():
    df = pd.DataFrame({"s": np.zeros(1000)})
    a, b = sel("random", df, 100, seed=7), sel("random", df, 100, seed=7)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 100
    assert a.tolist() != sel("random", df, 100, seed=8).tolist()


def naive_diverse(order, emb, tau, k):
    kept = []
    for i in order:
        if len(kept) == k:
            break
        if not kept or max(float(emb[j] @ emb[i]) for j in kept) <= tau:
            kept.append(int(i))
    return kept


@pytest.mark.parametrize("block", [1, 3, 64])
def test_diversity_constraint_is_the_sequential_loop(block):
    rng = np.random.default_rng(block)
    base = rng.normal(size=(20, 8))
    emb = np.repeat(base, 5, axis=0) + 0.05 * rng.normal(size=(100, 8))  # near-duplicate clusters
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    order = rng.permutation(100)
    got = B.diverse_greedy(order, emb.astype(np.float32), 0.9, 30, block=block)
    assert got.tolist() == naive_diverse(order, emb.astype(np.float32), 0.9, 30)
    with pytest.raises(ValueError, match="diversity_tau"):
        B.diverse_greedy(order, None, 0.9, 3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        B.diverse_greedy(order, emb, 1.5, 3)


def test_cascade_two_stages():
    v = np.arange(50, dtype=np.float64)
    df = pd.DataFrame({"s": v, "t": -v})
    got = sel(
        "cascade",
        df,
        5,
        first={"name": "topk", "ratio": 0.2, "options": {"criterion": "s"}},
        then={"name": "topk", "options": {"criterion": "t"}},
    )
    assert got.tolist() == [40, 41, 42, 43, 44]  # best 20% by s, then the 5 best of those by t
    with pytest.raises(ValueError, match="first: ratio"):
        sel("cascade", df, 5, first={"name": "topk", "ratio": 2.0}, then="random")


@pytest.mark.parametrize(
    "first, then, msg",
    [
        ({"name": "topk", "ratio": 1.3}, "random", r"first: ratio must be in \(0, 1\], got 1.3"),
        ({"name": "topk", "ratio": 0.5, "k": 4}, "random", "first: give ratio or k, not both"),
        ({"name": "topk", "k": -2}, "random", "first: k must be a non-negative integer, got -2"),
        ({"name": "topk", "k": 4}, {"name": "random", "ratio": 0.5}, "then: the second stage selects the run's budget"),
        ({"name": "topp", "k": 4}, "random", "first: unknown selector 'topp'"),
        ({"name": "topk", "k": 4}, {"name": "random", "size": 3}, r"then: unknown key\(s\) \['size'\]"),
    ],
)
def test_cascade_stages_that_cannot_run_are_refused_by_the_plan(first, then, msg, tmp_path):
    """Before any data is read (a bad ratio was refused only after scoring), and by the selector itself."""
    from thresher.errors import OptionError
    from thresher.pipeline import PipelineConfig, make_plan

    cascade = {"name": "cascade", "options": {"first": first, "then": then}}
    with pytest.raises(OptionError, match="^selector cascade: " + msg):
        make_plan(PipelineConfig(data=str(tmp_path / "nothing.jsonl"), criteria=["length"], selector=cascade, k=3))
    with pytest.raises(OptionError, match="^selector cascade: " + msg):
        sel("cascade", pd.DataFrame({"length": [1.0, 2.0, 3.0]}), 1, first=first, then=then)


def test_parse_objectives_forms():
    assert B.parse_objectives("a:max,b:min") == [("a", True), ("b", False)]
    assert B.parse_objectives([("a", "min"), {"name": "b", "direction": "max"}]) == [("a", False), ("b", True)]
    with pytest.raises(ValueError, match="at least one"):
        B.parse_objectives([])


@pytest.mark.parametrize("name", ["weighted", "rrf", "aggregate"])
@pytest.mark.parametrize(
    "weights,msg",
    [([1.0], r"weights: expected 2 weights \(one per objective\), got 1"), ([1.0, -1.0], "finite and >= 0"),
     ([0.0, 0.0], "not all 0")],
)  # fmt: skip
def test_weights_that_do_not_fit_the_objectives_are_refused_by_the_plan(name, weights, msg, tmp_path):
    from thresher.errors import OptionError
    from thresher.pipeline import PipelineConfig, make_plan

    selector = {"name": name, "options": {"objectives": ["length:max", "mtld:min"], "weights": weights}}
    with pytest.raises(OptionError, match=msg):
        make_plan(PipelineConfig(data=str(tmp_path / "nothing.jsonl"), criteria=["length", "mtld"], selector=selector))
    ok = {"name": name, "options": {"objectives": ["length:max", "mtld:min"], "weights": [2.0, 0.0]}}
    make_plan(PipelineConfig(data=str(tmp_path / "nothing.jsonl"), criteria=["length", "mtld"], selector=ok, k=2))


@pytest.mark.parametrize("n", [0, 1, 5, 6, 13])
def test_embeddings_are_checked_and_normalised_a_block_of_rows_at_a_time(n, monkeypatch):
    """as_embeddings works on blocks of rows (no [rows, dim] temporary): the norms are numpy's over the whole
    array, bit for bit; a NaN row or an all-zero row in any block is found and named."""
    from thresher.ops import rows
    from thresher.selectors import base

    monkeypatch.setattr(rows, "ROW_ELEMS", 35)  # blocks of 5 rows of 7
    rng = np.random.default_rng(n)
    e = (rng.standard_normal((n, 7)) * rng.uniform(0.01, 100, (n, 1))).astype(np.float32)
    np.testing.assert_array_equal(rows.row_norms(e), np.linalg.norm(e, axis=1, keepdims=True))
    np.testing.assert_array_equal(base.as_embeddings(e, n, "t"), e / np.linalg.norm(e, axis=1, keepdims=True))
    if n > 5:
        bad = e.copy()
        bad[n - 1, 3] = np.nan
        with pytest.raises(ValueError, match=f"1 row\\(s\\) contain NaN or inf \\(first: row {n - 1}\\)"):
            base.as_embeddings(bad, n, "t")
        bad[n - 1] = 0.0
        with pytest.raises(ValueError, match=f"row {n - 1} is all zeros"):
            base.as_embeddings(bad, n, "t")
