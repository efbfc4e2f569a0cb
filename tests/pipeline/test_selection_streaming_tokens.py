"""Streaming selection on a token budget and over pool-scoped criteria (thresher.pipeline.selection):
each case equals the in-memory selection on the same scores and an oracle written here (the best-first
order by the scores table, cut where the tokens pass the budget); the rows and values it holds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_with_selection, write_bigbench_head
from thresher.pipeline.selection import TokenBudgetSelection, within_tokens

N = 120


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory) -> Path:
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", N)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def both(pool, tmp_path, cache, kind, **kw):
    """The streaming run (of ``kind``) and the in-memory run agree; returns (result, scores, selection)."""
    kw.setdefault("shard_size", 7)
    res, s, sel, got = run_with_selection(pool, tmp_path / "stream", cache, **kw)
    ref, s2, _, _ = run_with_selection(pool, tmp_path / "mem", cache, in_memory=True, **kw)
    assert got["kind"] == kind
    assert res.selected.tolist() == ref.selected.tolist() and res.k == ref.k
    assert s["eligible"].tolist() == s2["eligible"].tolist() and s["tokens"].tolist() == s2["tokens"].tolist()
    assert res.manifest["budget"] == ref.manifest["budget"]  # selected_tokens and stopped_before too
    return res, s, sel


def stopped_before(s: pd.DataFrame, order: list, budget: int) -> dict | None:
    """The manifest's record of the first row of ``order`` the budget leaves out (a plain loop), or None."""
    tok, total = col(s, "tokens"), 0.0
    for i in order:
        total += float(tok[i])
        if total > budget:
            used = int(sum(float(tok[j]) for j in cut(order, tok, budget)))
            row = s.iloc[i]
            return {"source_file": row["source_file"], "source_line": int(row["source_line"]),
                    "tokens": int(tok[i]), "tokens_left": budget - used}  # fmt: skip
    return None


def col(s: pd.DataFrame, name: str) -> np.ndarray:
    return s[name].to_numpy(np.float64, na_value=np.nan)


def best_first(v: np.ndarray, eligible: np.ndarray, maximize: bool = True) -> list:
    rows = [i for i in range(len(v)) if eligible[i] and not math.isnan(v[i])]
    return sorted(rows, key=lambda i: (-v[i] if maximize else v[i], i))


def cut(order: list, tokens: np.ndarray, budget: int) -> list:
    """The longest prefix of ``order`` whose tokens sum to at most ``budget`` (a plain loop)."""
    out, total = [], 0.0
    for i in order:
        total += float(tokens[i])
        if total > budget:
            break
        out.append(i)
    return out


# ------------------------------------------------------------------ token budgets
@pytest.mark.parametrize("shard", [1, 7, 1000])
@pytest.mark.parametrize("budget", [1, 700, 10**9])
def test_topk_token_budget_every_layout(pool, tmp_path, cache, shard, budget):
    """A budget below the best row's tokens selects nothing; one above the pool's selects every scored row."""
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk-tokens", criteria=["fake_len"], tokens=budget,
                       shard_size=shard)  # fmt: skip
    v, tok = col(s, "fake_len"), col(s, "tokens")
    want = cut(best_first(v, np.ones(N, bool)), tok, budget)
    assert res.selected.tolist() == want and isinstance(sel, TokenBudgetSelection)
    stop = stopped_before(s, best_first(v, np.ones(N, bool)), budget)
    assert res.manifest["budget"]["stopped_before"] == stop and (stop is None) == (budget == 10**9)
    log = (tmp_path / "stream" / "run.log").read_text()
    said = "nothing selected: the first row of the order (pool.jsonl:" if budget == 1 else "stops before pool.jsonl:"
    assert (said in log) == (stop is not None)
    assert tok[res.selected].sum() <= budget
    if budget == 1:
        assert want == []
    if budget == 10**9:
        assert len(want) == int((~np.isnan(v)).sum())


def test_the_passes_double_when_the_best_rows_are_short(pool, tmp_path, cache):
    """Shortest first: the selected rows hold far fewer tokens than the mean, so the first pass (twice
    the budget at the mean) is too small and the cache is replayed for a pass twice as large."""
    sel_opts = {"name": "topk", "options": {"criterion": "length", "direction": "min"}}
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk-tokens", criteria=["length"], selector=sel_opts,
                       tokens=600)  # fmt: skip
    tok = col(s, "tokens")
    first = math.ceil(TokenBudgetSelection.FIRST * 600 / tok.mean())
    assert len(res.selected) > first and sel.candidates >= 2 * first and sel.replays >= 3
    assert res.selected.tolist() == cut(best_first(col(s, "length"), np.ones(N, bool), False), tok, 600)
    assert sel.peak <= 4 * (sel.candidates + 7)  # values held: the pass and a shard, not the pool


@pytest.mark.parametrize(
    "selector,kind",
    [
        ({"name": "threshold", "options": {"criterion": "fake_len", "mode": "quantile", "value": 0.4}}, "threshold"),
        ({"name": "threshold", "options": {"criterion": "fake_len", "mode": "absolute", "value": 60}}, "threshold"),
        ({"name": "pareto", "options": {"objectives": ["fake_len:max", "length:min"]}}, "pareto"),
        (
            {
                "name": "weighted",
                "options": {"objectives": ["fake_len:max", "length:min"], "weights": [1, 0.5], "normalize": "none"},
            },
            "weighted",
        ),  # fmt: skip
    ],
)
def test_other_streaming_selectors_with_a_token_filter(pool, tmp_path, cache, selector, kind):
    """A filter on ``tokens`` too (counted after scoring, then replayed)."""
    res, s, sel = both(pool, tmp_path, cache, f"streaming-{kind}-tokens", criteria=["fake_len", "length"],
                       selector=selector, filters=["tokens <= 150"], tokens=900)  # fmt: skip
    tok = col(s, "tokens")
    assert len(res.selected) > 0 and tok[res.selected].sum() <= 900 and (tok[res.selected] <= 150).all()
    assert s["eligible"].tolist() == (tok <= 150).tolist()


def test_threshold_quantile_oracle(pool, tmp_path, cache):
    opts = {"criterion": "fake_len", "mode": "quantile", "value": 0.5}
    res, s, _ = both(pool, tmp_path, cache, "streaming-threshold-tokens", criteria=["fake_len"],
                     selector={"name": "threshold", "options": opts}, tokens=5000)  # fmt: skip
    v, tok = col(s, "fake_len"), col(s, "tokens")
    finite = np.sort(v[~np.isnan(v)])[::-1]
    t = finite[math.ceil(0.5 * len(finite)) - 1]  # the m-th best value, m = ceil((1 - q) n)
    assert res.selected.tolist() == cut(best_first(np.where(v >= t, v, np.nan), np.ones(N, bool)), tok, 5000)


def test_within_tokens_ties_zero_and_empty():
    tok = np.array([3.0, 0.0, 2.0, 5.0])
    assert within_tokens(np.array([0, 1, 2, 3]), tok, 5).tolist() == [0, 1, 2]  # 3 + 0 + 2 == 5 is kept
    assert within_tokens(np.array([3, 1]), tok, 4).tolist() == []
    assert within_tokens(np.array([1, 0]), tok, 2).tolist() == [1]  # a row of no tokens always fits
    assert within_tokens(np.zeros(0, np.int64), tok, 9).tolist() == []


# ------------------------------------------------------------------ pool-scoped criteria
def test_topk_on_a_pool_scoped_criterion_streams(pool, tmp_path, cache):
    """Its columns are read back from the whole-pool result a shard's rows at a time, never whole."""
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk", criteria=["fake_pool", "fake_len"],
                       selector={"name": "topk", "options": {"criterion": "fake_pool"}}, k=9)  # fmt: skip
    assert res.selected.tolist() == best_first(col(s, "fake_pool"), np.ones(N, bool))[:9]
    assert sel.replays == 1 and sel.peak <= 4 * (9 + 7) < N


def test_filter_ratio_and_pareto_on_a_pool_scoped_criterion(pool, tmp_path, cache):
    res, s, sel = both(pool, tmp_path / "a", cache, "streaming-topk", criteria=["fake_pool", "fake_len"],
                       selector={"name": "topk", "options": {"criterion": "fake_len", "direction": "min"}},
                       filters=["fake_pool >= 0.5"], ratio=0.1)  # fmt: skip
    elig = col(s, "fake_pool") >= 0.5
    assert s["eligible"].tolist() == elig.tolist() and sel.replays == 2  # counted, then selected
    assert res.selected.tolist() == best_first(col(s, "fake_len"), elig, False)[: res.k]
    pareto = {"name": "pareto", "options": {"objectives": ["fake_pool:max", "length:min"]}}
    both(pool, tmp_path / "b", cache, "streaming-pareto", criteria=["fake_pool", "length"], selector=pareto, k=15)


def test_token_budget_on_a_pool_scoped_criterion(pool, tmp_path, cache):
    res, s, _ = both(pool, tmp_path, cache, "streaming-topk-tokens", criteria=["fake_pool"], tokens=2000,
                     shard_size=50)  # fmt: skip
    assert res.selected.tolist() == cut(best_first(col(s, "fake_pool"), np.ones(N, bool)), col(s, "tokens"), 2000)


def test_a_budget_above_the_pool_stops_at_the_eligible_rows(pool, tmp_path, cache):
    """No NaN (``length``): the passes grow to the eligible rows and stop there, every eligible row selected."""
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk-tokens", criteria=["length"], tokens=10**9,
                       filters=["length >= 20"])  # fmt: skip
    elig = col(s, "length") >= 20
    assert sorted(res.selected.tolist()) == np.flatnonzero(elig).tolist() and sel.candidates == int(elig.sum())
