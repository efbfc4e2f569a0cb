"""Streaming selection (thresher.pipeline.streaming): top-k with filters and ratio budgets, exact
quantile thresholds, Pareto fronts merged across shards and Gumbel-top-k (DSIR: the oracle draws the
documented noise, one uniform of ``default_rng(seed)`` per eligible row in pool order), each equal to the
in-memory selection on the same scores and to an independent oracle; and the memory it holds."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_with_selection, write_bigbench_head
from thresher.errors import OptionError
from thresher.pipeline.rowstore import GroupColumn
from thresher.pipeline.selection import _pass_factory
from thresher.pipeline.streaming import GumbelPass, ParetoPass, ThresholdPass, TopKPass, dominators
from thresher.pipeline.streaming_groups import GroupKeepPass, GroupStatsPass, proportional_quotas, round_robin_quotas
from thresher.selectors.basic import knee_index, pareto, threshold, topk
from thresher.selectors.diversity import group_topk
from thresher.selectors.gumbel import gumbel_draws, gumbel_topk

N = 120


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory) -> Path:
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", N)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def run(pool, out, cache, *, in_memory=False, **kw):
    """(result, scores table, the selection object, its kind); ``in_memory`` forces InMemorySelection."""
    kw.setdefault("shard_size", 7)
    res, scores, sel, got = run_with_selection(pool, out, cache, in_memory=in_memory, **kw)
    return res, scores, sel, got["kind"]


def both(pool, tmp_path, cache, kind, **kw):
    """The streaming run (of ``kind``) and the in-memory run agree; returns the streaming run."""
    res, s, sel, got = run(pool, tmp_path / "stream", cache, **kw)
    ref, s2, _, _ = run(pool, tmp_path / "mem", cache, in_memory=True, **kw)
    assert got == kind
    assert res.selected.tolist() == ref.selected.tolist() and res.k == ref.k
    assert s["eligible"].tolist() == s2["eligible"].tolist()
    return res, s, sel


# ------------------------------------------------------------------ independent oracles
def col(s: pd.DataFrame, name: str) -> np.ndarray:
    return s[name].to_numpy(np.float64, na_value=np.nan)


def oracle_topk(v: np.ndarray, eligible: np.ndarray, k: int, maximize: bool = True) -> list:
    rows = [i for i in range(len(v)) if eligible[i] and not math.isnan(v[i])]
    return sorted(rows, key=lambda i: (-v[i] if maximize else v[i], i))[:k]


def naive_fronts(mat: np.ndarray) -> np.ndarray:
    """Front of every row (maximised objectives) by peeling: O(n^2) pairwise comparisons."""
    n = len(mat)
    dom = np.array([[bool((mat[a] >= mat[b]).all() and (mat[a] > mat[b]).any()) for b in range(n)] for a in range(n)])
    rank, left, r = np.full(n, -1), np.ones(n, bool), 0
    while left.any():
        front = left & ~(dom[left].any(0))
        rank[front], left, r = r, left & ~front, r + 1
    return rank


def check_fronts(selected: list, mat: np.ndarray, k: int) -> None:
    """The selection is k rows of the first fronts: whole fronts, then part of the last one."""
    finite = np.flatnonzero(np.isfinite(mat).all(1))
    rank = np.full(len(mat), -1)
    rank[finite] = naive_fronts(mat[finite])
    assert len(selected) == min(k, len(finite)) and (rank[selected] >= 0).all()
    if selected:
        last = rank[selected].max()
        assert set(np.flatnonzero((rank >= 0) & (rank < last))) <= set(selected)
        assert list(rank[selected]) == sorted(rank[selected])


# ------------------------------------------------------------------ top-k
@pytest.mark.parametrize("shard", [1, 7, 1000])
def test_topk_k_budget_every_layout(pool, tmp_path, cache, shard):
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk", criteria=["fake_len"], k=15, shard_size=shard)
    assert res.selected.tolist() == oracle_topk(col(s, "fake_len"), np.ones(N, bool), 15)
    assert sel.replays == 0  # one pass while the shards are scored


def test_topk_filter_ratio_ties_and_min(pool, tmp_path, cache):
    """A filter applied per shard; a ratio budget: counted, then a second scan of the cache; the
    integer-valued ``length`` has many ties (lower position first); direction min."""
    sel_opts = {"name": "topk", "options": {"criterion": "length", "direction": "min"}}
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk", criteria=["length", "fake_len"], selector=sel_opts,
                       filters=["fake_len >= 3"], ratio=0.2)  # fmt: skip
    elig = col(s, "fake_len") >= 3
    assert s["eligible"].tolist() == elig.tolist() and res.k == round(0.2 * N)
    assert res.selected.tolist() == oracle_topk(col(s, "length"), elig, res.k, maximize=False)
    assert len(set(col(s, "length")[res.selected])) < len(res.selected)  # ties were broken
    assert sel.replays == 1


def test_topk_tokens_filter_and_nan(pool, tmp_path, cache):
    """A filter on ``tokens`` (not among the shards' score columns): counted and selected from the
    cache after scoring; ``mtld`` is NaN for short outputs, and NaN is never selected."""
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk", criteria=["mtld"], filters=["tokens <= 200"], k=N)
    elig = col(s, "tokens") <= 200
    mtld = col(s, "mtld")
    assert np.isnan(mtld).sum() > 10 and not np.isnan(mtld[res.selected]).any()
    assert res.selected.tolist() == oracle_topk(mtld, elig, N)
    assert sel.replays == 2


def test_filters_removing_everything_and_k_above_eligible(pool, tmp_path, cache, caplog):
    with caplog.at_level(logging.WARNING, logger="thresher.selectors"):
        res, s, _ = both(pool, tmp_path / "a", cache, "streaming-topk", criteria=["fake_len"], filters=["fake_len < 0"],
                         k=10)  # fmt: skip
    assert res.selected.tolist() == [] and not s["eligible"].any()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="thresher.selectors"):
        top = {"name": "topk", "options": {"criterion": "fake_len"}}
        res, s, _ = both(pool, tmp_path / "b", cache, "streaming-topk", criteria=["fake_len", "length"],
                         selector=top, filters=["length <= 30"], k=500)  # fmt: skip
    n_elig = int(s["eligible"].sum())
    assert 0 < n_elig < N and len(res.selected) == int((s["eligible"] & s["fake_len"].notna()).sum())
    warned = [r.getMessage() for r in caplog.records if "larger than" in r.getMessage()]
    assert len(warned) == 2 and all(f"the {n_elig} eligible rows" in w for w in warned)  # streaming, in memory


# ------------------------------------------------------------------ thresholds
@pytest.mark.parametrize(
    "opts,k",
    [
        ({"mode": "quantile", "value": 0.8}, 60),  # m <= k: the threshold is in the top k
        ({"mode": "quantile", "value": 0.3}, 10),  # m > k: every row of the top k passes
        ({"mode": "quantile", "value": 0.3, "strict": True}, 10),  # m > k, strict: one count of the cache
        ({"mode": "quantile", "value": 0.8, "strict": True}, 60),
        ({"mode": "quantile", "value": 1.0}, 30),  # nothing above the best: only +inf would pass
        ({"mode": "absolute", "value": 40, "direction": "min"}, 25),
    ],
)
def test_threshold_quantile_exact(pool, tmp_path, cache, opts, k):
    sel_opts = {"name": "threshold", "options": {"criterion": "length", **opts}}
    res, s, _ = both(pool, tmp_path, cache, "streaming-threshold", criteria=["length"], selector=sel_opts, k=k,
                     filters=["length.output >= 2"])  # fmt: skip
    v, elig = col(s, "length"), s["eligible"].to_numpy()
    maximize = opts.get("direction") != "min"
    best = sorted(v[elig & ~np.isnan(v)], reverse=maximize)
    if opts["mode"] == "absolute":
        t = opts["value"]
    else:
        m = math.ceil((1 - opts["value"]) * len(best) - 1e-9)
        t = best[m - 1] if m > 0 else math.inf
    key = v if maximize else -v
    tt = t if maximize else -t
    passing = (key > tt) if opts.get("strict") else (key >= tt)
    assert res.selected.tolist() == oracle_topk(v, elig & passing, k, maximize)


def oracle_knee(curve: np.ndarray) -> int:
    """Kneedle on a descending curve, written out on the whole array (np.linspace, np.argmax)."""
    n = len(curve)
    if n <= 2 or curve[0] == curve[-1]:
        return n
    with np.errstate(invalid="ignore"):
        y = (curve - curve[-1]) / (curve[0] - curve[-1])
    return int(np.argmax(np.abs(y - (1.0 - np.linspace(0.0, 1.0, n))))) + 1


@pytest.mark.parametrize("direction,strict,shard", [("max", False, 7), ("min", True, 1), ("max", True, 1000)])
def test_threshold_knee_streams_over_the_sorted_curve(pool, tmp_path, cache, direction, strict, shard):
    opts = {"criterion": "length", "mode": "knee", "direction": direction, "strict": strict}
    res, s, _ = both(pool, tmp_path, cache, "streaming-threshold", criteria=["length"],
                     selector={"name": "threshold", "options": opts}, filters=["length.output >= 2"],
                     shard_size=shard)  # fmt: skip
    v, elig = col(s, "length"), s["eligible"].to_numpy()
    maximize = direction == "max"
    key = v if maximize else -v
    curve = np.sort(key[elig & ~np.isnan(v)])[::-1]
    t = curve[oracle_knee(curve) - 1]
    passing = (key > t) if strict else (key >= t)
    assert 0 < len(res.selected) < elig.sum()
    assert res.selected.tolist() == oracle_topk(v, elig & passing, int(passing.sum()), maximize)


@pytest.mark.parametrize("seed", range(5))
def test_knee_in_chunks_is_the_knee_of_the_whole_curve(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 400))
    curve = np.sort(rng.integers(0, 9, n).astype(float) ** rng.uniform(0.3, 3))[::-1]  # ties, either bend
    if seed == 3:
        curve[:2] = np.inf  # an infinite score: NaN distances, argmax stops at the first
    for chunk in (1, 2, 7, n, 1 << 20):
        assert knee_index(curve, chunk) == oracle_knee(curve), chunk
    assert knee_index(np.full(5, 2.0)) == 5 and knee_index(np.array([3.0, 1.0])) == 2


# ------------------------------------------------------------------ Pareto
@pytest.mark.parametrize("shard", [1, 7, 1000])
@pytest.mark.parametrize("k", [1, 12, 200])
def test_pareto_fronts_merged(pool, tmp_path, cache, shard, k):
    objectives = ["length:max", "mtld:max"]
    sel_opts = {"name": "pareto", "options": {"objectives": objectives}}
    res, s, sel = both(pool, tmp_path, cache, "streaming-pareto", criteria=["length", "mtld"], selector=sel_opts,
                       k=k, shard_size=shard)  # fmt: skip
    check_fronts(res.selected.tolist(), np.stack([col(s, "length"), col(s, "mtld")], 1), k)


def test_pareto_with_filter_min_objective_and_ratio(pool, tmp_path, cache):
    sel_opts = {"name": "pareto", "options": {"objectives": ["fake_len:max", "fake_len.instruction:min"]}}
    res, s, sel = both(pool, tmp_path, cache, "streaming-pareto", criteria=["fake_len", "length"], selector=sel_opts,
                       filters=["length <= 150"], ratio=0.1)  # fmt: skip
    mat = np.stack([col(s, "fake_len"), -col(s, "fake_len.instruction")], 1)
    mat[~s["eligible"].to_numpy()] = np.nan
    check_fronts(res.selected.tolist(), mat, res.k)
    assert sel.replays == 1


# ------------------------------------------------------------------ passes against the selectors, many shapes
def feed(p, cols: dict, shard: int):
    n = len(next(iter(cols.values())))
    for a in range(0, n, shard):
        part = {c: v[a : a + shard] for c, v in cols.items()}
        p.scan(part, a, len(next(iter(part.values()))))
    return p


@pytest.mark.parametrize("seed", range(6))
def test_pareto_pass_equals_selector_on_ties_nan_inf(seed):
    rng = np.random.default_rng(seed)
    n, m = 150, 2 + seed % 2
    mat = rng.integers(0, 6, size=(n, m)).astype(np.float64)  # many ties and duplicates
    mat[rng.random((n, m)) < 0.05] = np.nan
    mat[rng.random((n, m)) < 0.02] = np.inf
    if seed % 3 == 0:
        mat[:, 1] = -mat[:, 0] + rng.integers(0, 2, n)  # anti-correlated: large first fronts
    names = [f"c{j}" for j in range(m)]
    objs = [(c, bool(j % 2 == 0)) for j, c in enumerate(names)]
    frame = pd.DataFrame(dict(zip(names, mat.T)))
    for k in (0, 1, 7, 40, n):
        want = pareto(frame, k, objectives=[f"{c}:{'max' if mx else 'min'}" for c, mx in objs]).tolist()
        for shard in (1, 13, n + 5):
            p = feed(ParetoPass([], objs, k), dict(zip(names, mat.T)), shard)
            assert p.order(k, None).tolist() == want, (k, shard)


@pytest.mark.parametrize("seed", range(4))
def test_threshold_pass_equals_selector(seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 8, 90).astype(np.float64)
    v[rng.random(90) < 0.1] = np.nan
    v[:3] = [np.inf, -np.inf, np.inf]
    frame = pd.DataFrame({"x": v})
    for mode, value in [("quantile", q) for q in (0.0, 0.25, 0.5, 0.9, 1.0)] + [("absolute", 3.0)]:
        for strict in (False, True):
            for maximize in (True, False):
                for k in (0, 1, 5, 30, 90):
                    d = "max" if maximize else "min"
                    want = threshold(frame, k, criterion="x", direction=d, mode=mode, value=value, strict=strict)
                    p = feed(ThresholdPass([], "x", maximize, k, mode, value, strict), {"x": v}, 11)
                    key, sign = (v, 1.0) if maximize else (-v, -1.0)
                    count = lambda t, key=key, sign=sign: int((key >= sign * t).sum())  # noqa: E731
                    assert p.order(k, count).tolist() == want.tolist(), (mode, value, strict, maximize, k)


def test_topk_pass_memory_is_k_plus_shard():
    """Not timed: the values a top-k pass holds stay O(k + shard) over a long stream."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=20_000)
    for k, shard in [(5, 100), (50, 1000), (1, 1)]:
        p = feed(TopKPass([], "x", True, k), {"x": v}, shard)
        assert p.peak <= 4 * (k + shard)
        assert p.order(k, None).tolist() == topk(pd.DataFrame({"x": v}), k, criterion="x").tolist()


def test_pareto_pass_memory_on_agreeing_objectives():
    """Correlated objectives: the survivors stay far below the pool (memory O(k + shard) rows there)."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=5000)
    cols = {"a": a, "b": a + 0.1 * rng.normal(size=5000)}
    p = feed(ParetoPass([], [("a", True), ("b", True)], 20), cols, 250)
    assert p.peak <= 2 * (20 * 10 + 250) and len(p.pos) < 200
    want = pareto(pd.DataFrame(cols), 20, objectives=["a:max", "b:max"]).tolist()
    assert p.order(20, None).tolist() == want


def test_dominators_counts():
    a = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    # (minimisation) [1,1] is dominated by [0,0] and [0,1], not by its equals; [2,0] by [0,0]
    assert dominators(a, b).tolist() == [2, 0, 1]
    assert dominators(a[:0], b).tolist() == [0, 0, 0] and dominators(a, b[:0]).tolist() == []


def test_selection_kind_recorded(pool, tmp_path, cache):
    assert run(pool, tmp_path / "a", cache, criteria=["fake_len"], k=5)[3] == "streaming-topk"
    assert run(pool, tmp_path / "b", cache, criteria=["fake_len"], score_only=True)[3] == "score-only"
    # a diversity constraint walks the best-first order with the embeddings: in memory
    assert _pass_factory("topk", {"criterion": "x", "diversity_tau": 0.9}, []) is None
    assert _pass_factory("pareto", {"objectives": ["x"], "diversity_tau": 0.5}, []) is None


def test_missing_column_names_it():
    with pytest.raises(ValueError, match="no column 'y' in the scores"):
        TopKPass([], "y", True, 3).scan({"x": np.ones(4)}, 0, 4)
    with pytest.raises(ValueError, match="no column 'y' in the scores"):
        ParetoPass([], [("x", True), ("y", False)], 3).scan({"x": np.ones(4)}, 0, 4)


# ------------------------------------------------------------------ gumbel_topk (DSIR)
def oracle_gumbel(
    v: np.ndarray, eligible: np.ndarray, seed: int, temperature: float = 1.0, maximize: bool = True
) -> list:
    """Every eligible row with a score, by descending key (ties by lower position): a plain loop."""
    rows = [i for i in range(len(v)) if eligible[i]]
    u = np.random.default_rng(seed).random(len(rows))
    keys = {}
    for r, x in zip(rows, u):
        if not math.isnan(v[r]):
            keys[r] = (v[r] if maximize else -v[r]) / temperature - math.log(-math.log(x))
    return sorted(keys, key=lambda i: (-keys[i], i))


def gumbel(**opts) -> dict:
    return {"name": "gumbel_topk", "options": {"criterion": "fake_len", **opts}}


@pytest.mark.parametrize("shard", [1, 7, 1000])
def test_gumbel_every_layout_gives_the_oracles_rows(pool, tmp_path, cache, shard):
    res, s, sel = both(pool, tmp_path, cache, "streaming-gumbel_topk", criteria=["fake_len"], selector=gumbel(),
                       k=12, shard_size=shard, seed=5)  # fmt: skip
    assert res.selected.tolist() == oracle_gumbel(col(s, "fake_len"), np.ones(N, bool), 5)[:12]
    assert sel.peak <= 4 * 12 + 2 * min(shard, N) < 2 * N or shard == 1000  # kept, waiting, the shard


def test_gumbel_filters_ratio_direction_and_temperature(pool, tmp_path, cache):
    """The noise is drawn for the eligible rows only (as the selector sees them), NaN scores included."""
    res, s, _ = both(pool, tmp_path, cache, "streaming-gumbel_topk", criteria=["fake_len", "length"],
                     selector=gumbel(direction="min", temperature=0.25), filters=["length >= 20"], ratio=0.2,
                     seed=11)  # fmt: skip
    elig = col(s, "length") >= 20
    assert 0 < elig.sum() < N and s["eligible"].tolist() == elig.tolist()
    want = oracle_gumbel(col(s, "fake_len"), elig, 11, 0.25, maximize=False)
    assert res.selected.tolist() == want[: res.k] and res.k == round(0.2 * N)


def test_gumbel_token_budget_and_a_pool_scoped_criterion(pool, tmp_path, cache):
    res, s, _ = both(pool, tmp_path / "t", cache, "streaming-gumbel_topk-tokens", criteria=["fake_len"],
                     selector=gumbel(), tokens=1500, seed=3)  # fmt: skip
    tok, order, total, want = col(s, "tokens"), oracle_gumbel(col(s, "fake_len"), np.ones(N, bool), 3), 0.0, []
    for i in order:
        total += tok[i]
        if total > 1500:
            break
        want.append(i)
    assert res.selected.tolist() == want and len(want) > 0
    res, s, _ = both(pool, tmp_path / "p", cache, "streaming-gumbel_topk", criteria=["fake_pool"],
                     selector=gumbel(criterion="fake_pool"), k=9, seed=3)  # fmt: skip
    assert res.selected.tolist() == oracle_gumbel(col(s, "fake_pool"), np.ones(N, bool), 3)[:9]


@pytest.mark.parametrize("sizes", [[0, 3, 1, 50, 0, 9], [63], [1] * 20])
def test_gumbel_pass_over_shards_is_the_selector_on_the_whole(sizes):
    """Ties (integer values), NaN and -inf scores, empty shards: one pass in pieces, the selector on the whole."""
    rng = np.random.default_rng(0)
    n = sum(sizes)
    v = rng.integers(0, 4, n).astype(np.float64)
    v[rng.random(n) < 0.1], v[rng.random(n) < 0.05] = np.nan, -np.inf
    mask = rng.random(n) < 0.8
    for maximize, k in ((True, 7), (False, n + 5)):
        p = GumbelPass([], "x", maximize, k, 4, 0.5)
        off = 0
        for m in sizes:
            p.take({"x": v[off : off + m]}, off, mask[off : off + m])
            off += m
        elig = np.flatnonzero(mask)
        want = elig[gumbel_topk(pd.DataFrame({"x": v[elig]}), k, seed=4, criterion="x",
                                direction="max" if maximize else "min", temperature=0.5)]  # fmt: skip
        assert p.order(k, lambda t: 0).tolist() == want.tolist()


def test_gumbel_draws_in_pieces_are_one_draw():
    one = gumbel_draws(np.random.default_rng(9), 1000)
    rng = np.random.default_rng(9)
    pieces = np.concatenate([gumbel_draws(rng, m) for m in (0, 1, 7, 500, 0, 492)])
    np.testing.assert_array_equal(pieces, one)


# ------------------------------------------------------------------ group_topk
@pytest.fixture(scope="module")
def grouped_pool(pool, tmp_path_factory) -> Path:
    """The pool with a ``bucket`` field of uneven groups (sizes 35, 35, 17, 17, 16 of 120 rows)."""
    dst = tmp_path_factory.mktemp("grouped") / "pool.jsonl"
    with open(pool, encoding="utf-8") as src, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(src):
            row = json.loads(line)
            row["bucket"] = f"b{(i * i) % 7 % 5}"
            out.write(json.dumps(row) + "\n")
    return dst


def oracle_group_topk(v, groups, eligible, k, equal=True, maximize=True) -> list:
    """Plain loops: rows best first, groups by their best row; round robin, or largest-remainder quotas."""
    rows = sorted((i for i in range(len(v)) if eligible[i] and not math.isnan(v[i])),
                  key=lambda i: (-v[i] if maximize else v[i], i))  # fmt: skip
    per: dict = {}
    for i in rows:
        per.setdefault(groups[i], []).append(i)
    lists = list(per.values())  # insertion order: by each group's best row
    if equal:
        out, depth = [], 0
        while len(out) < k and any(depth < len(x) for x in lists):
            out += [x[depth] for x in lists if depth < len(x)][: k - len(out)]
            depth += 1
        return out
    kk = min(k, len(rows))
    exact = [len(x) / len(rows) * kk for x in lists]
    q = [math.floor(e) for e in exact]
    for j in sorted(range(len(lists)), key=lambda j: (-round(exact[j] - q[j], 9), j))[: kk - sum(q)]:
        q[j] += 1
    chosen = {i for x, qq in zip(lists, q) for i in x[: min(qq, len(x))]}
    return [i for i in rows if i in chosen]


def group_sel(quota="equal", **opts) -> dict:
    return {"name": "group_topk", "options": {"criterion": "fake_len", "quota": quota, **opts}}


@pytest.mark.parametrize("quota", ["equal", "proportional"])
@pytest.mark.parametrize("shard", [1, 7, 1000])
def test_group_topk_every_layout_gives_the_oracles_rows(grouped_pool, tmp_path, cache, quota, shard):
    res, s, sel = both(grouped_pool, tmp_path, cache, "streaming-group_topk", criteria=["fake_len"],
                       selector=group_sel(quota), k=23, shard_size=shard, group_field="bucket")  # fmt: skip
    g = s["group"].astype(str).tolist()
    assert res.selected.tolist() == oracle_group_topk(col(s, "fake_len"), g, np.ones(N, bool), 23, quota == "equal")
    # the kept rows, those waiting (at most as many plus a shard), the shard: O(k + groups + shard)
    assert sel.replays == 2 and (sel.peak <= 3 * 2 * (23 + 5) + 6 * min(shard, N) < 3 * N or shard == 1000)


@pytest.mark.parametrize("quota", ["equal", "proportional"])
def test_group_topk_filters_ratio_direction_and_a_budget_above_the_pool(grouped_pool, tmp_path, cache, quota):
    res, s, _ = both(grouped_pool, tmp_path / "a", cache, "streaming-group_topk", criteria=["fake_len", "length"],
                     selector=group_sel(quota, direction="min"), filters=["length >= 20"], ratio=0.3,
                     group_field="bucket")  # fmt: skip
    elig, g = col(s, "length") >= 20, s["group"].astype(str).tolist()
    assert 0 < elig.sum() < N and res.k == round(0.3 * N)
    want = oracle_group_topk(col(s, "fake_len"), g, elig, res.k, quota == "equal", maximize=False)
    assert res.selected.tolist() == want
    res, s, _ = both(grouped_pool, tmp_path / "b", cache, "streaming-group_topk", criteria=["fake_len"],
                     selector=group_sel(quota), k=N, group_field="bucket")  # fmt: skip
    assert sorted(res.selected.tolist()) == np.flatnonzero(~np.isnan(col(s, "fake_len"))).tolist()


def test_group_topk_default_groups_no_groups_and_a_token_budget(grouped_pool, tmp_path, cache):
    """Without --group-field the groups are the ``task`` field (106 groups of 120 rows); a pool with no
    group field gets the selector's error; a token budget (quota equal) streams too."""
    res, s, _ = both(grouped_pool, tmp_path / "task", cache, "streaming-group_topk", criteria=["fake_len"],
                     selector=group_sel(), k=30)  # fmt: skip
    g = s["group"].astype(str).tolist()
    assert len(set(g)) == 106 and res.selected.tolist() == oracle_group_topk(
        col(s, "fake_len"), g, np.ones(N, bool), 30
    )
    plain = tmp_path / "plain.jsonl"
    with open(grouped_pool, encoding="utf-8") as src, open(plain, "w", encoding="utf-8") as out:
        for line in src:
            row = json.loads(line)
            out.write(json.dumps({k: v for k, v in row.items() if k not in ("task", "bucket")}) + "\n")
    with pytest.raises(ValueError, match="group_topk needs groups, and the input has no field task, source"):
        run(plain, tmp_path / "none", cache, criteria=["fake_len"], selector=group_sel(), k=5)
    for shard in (7, 1000):  # the round robin's longest prefix within the token budget, as in memory
        res, s, sel = both(grouped_pool, tmp_path / f"tok{shard}", cache, "streaming-group_topk-tokens",
                           criteria=["fake_len"], selector=group_sel(), tokens=900, group_field="bucket",
                           shard_size=shard)  # fmt: skip
        rr = oracle_group_topk(col(s, "fake_len"), s["group"].astype(str).tolist(), np.ones(N, bool), N)
        tok = s["tokens"].to_numpy(np.int64)[rr]
        assert res.selected.tolist() == rr[: int(np.searchsorted(np.cumsum(tok), 900, side="right"))]
        assert 0 < len(res.selected) < N
    with pytest.raises(OptionError, match="group_topk: no token budget .*quota=proportional shares a sample budget"):
        run(grouped_pool, tmp_path / "prop", cache, criteria=["fake_len"], selector=group_sel("proportional"),
            tokens=900, group_field="bucket")  # fmt: skip
    assert not (tmp_path / "prop").exists()  # refused before any data is read
    stages = {"first": {"name": "topk", "options": {"criterion": "fake_len"}, "ratio": 0.5},
              "then": group_sel("proportional")}  # fmt: skip
    with pytest.raises(OptionError, match="cascade: no token budget .*its second stage group_topk: quota=prop"):
        cas = {"name": "cascade", "options": stages}
        run(
            grouped_pool, tmp_path / "cas", cache, criteria=["fake_len"], selector=cas, tokens=900, group_field="bucket"
        )


@pytest.mark.parametrize("quota", ["equal", "proportional"])
@pytest.mark.parametrize("label", ["fake_bucket", "fake_bucket.name", "fake_pool"])
@pytest.mark.parametrize("shard", [7, 1000])
def test_group_topk_on_a_score_columns_labels_streams(pool, tmp_path, cache, quota, label, shard):
    """``group_column``: the groups are a score column's labels compared as strings (a number with NaN rows,
    a string with None rows, a pool-scoped criterion's values: one group per row), coded by the counting
    pass into the row store; the rows of the oracle and of the in-memory selection."""
    res, s, sel = both(pool, tmp_path, cache, "streaming-group_topk", criteria=["fake_len", "fake_bucket", "fake_pool"],
                       selector=group_sel(quota, group_column=label), k=23, shard_size=shard)  # fmt: skip
    g = s[label].to_numpy().astype(str).tolist()  # numbers as numpy writes them; a missing text as "nan"
    assert len(set(g)) == {"fake_bucket": 5, "fake_bucket.name": 4, "fake_pool": N}[label]
    assert res.selected.tolist() == oracle_group_topk(col(s, "fake_len"), g, np.ones(N, bool), 23, quota == "equal")
    assert sel.replays == (3 if label == "fake_pool" else 2)  # the count replays the cache after a pool criterion


def test_group_topk_on_a_score_column_with_a_filter_and_a_token_budget(pool, tmp_path, cache):
    kw = {"criteria": ["fake_len", "fake_bucket", "length"], "filters": ["length >= 20"], "shard_size": 9}
    by_name = group_sel(group_column="fake_bucket.name", direction="min")
    res, s, _ = both(pool, tmp_path / "k", cache, "streaming-group_topk", selector=by_name, ratio=0.25, **kw)
    elig, g = col(s, "length") >= 20, s["fake_bucket.name"].to_numpy().astype(str).tolist()
    assert 0 < elig.sum() < N
    assert res.selected.tolist() == oracle_group_topk(col(s, "fake_len"), g, elig, res.k, maximize=False)
    res, s, _ = both(pool, tmp_path / "t", cache, "streaming-group_topk-tokens",
                     selector=group_sel(group_column="fake_bucket"), tokens=700, **kw)  # fmt: skip
    rr = oracle_group_topk(col(s, "fake_len"), s["fake_bucket"].to_numpy().astype(str).tolist(), elig, N)
    tok = s["tokens"].to_numpy(np.int64)[rr]
    assert res.selected.tolist() == rr[: int(np.searchsorted(np.cumsum(tok), 700, side="right"))]
    assert 0 < len(res.selected) < elig.sum()
    with pytest.raises(ValueError, match="no column 'fake_bucket.nope' in the scores"):
        run(pool, tmp_path / "bad", cache, criteria=["fake_len", "fake_bucket"],
            selector=group_sel(group_column="fake_bucket.nope"), k=5)  # fmt: skip


# ------------------------------------------------------------------ cascade
def cascade_sel(first: dict, then: dict) -> dict:
    return {"name": "cascade", "options": {"first": first, "then": then}}


@pytest.mark.parametrize("shard", [7, 1000])
def test_cascade_streams_its_first_stage_and_gives_the_oracles_rows(pool, tmp_path, cache, shard):
    """topk (ratio 0.4 of the eligible rows, rounded up) then topk on another column: the first stage's rows
    by a scan, their columns read back (O(k1)), the second stage on them; a filter, a ratio budget."""
    sel = cascade_sel({"name": "topk", "options": {"criterion": "fake_len"}, "ratio": 0.4},
                      {"name": "topk", "options": {"criterion": "length", "direction": "min"}})  # fmt: skip
    res, s, got = both(pool, tmp_path, cache, "streaming-cascade", criteria=["fake_len", "length"], selector=sel,
                       filters=["length >= 20"], ratio=0.1, shard_size=shard)  # fmt: skip
    elig = col(s, "length") >= 20
    k1 = math.ceil(0.4 * int(elig.sum()))
    first = oracle_topk(col(s, "fake_len"), elig, k1)
    length = col(s, "length")
    want = sorted(first, key=lambda i: (length[i], first.index(i)))[: res.k]
    assert res.selected.tolist() == want and got.k1 == k1 and 0 < res.k < k1
    assert got.replays == 2  # the first stage's rows, then their columns


@pytest.mark.parametrize(
    "first, then",
    [
        ({"name": "threshold", "options": {"criterion": "fake_len", "mode": "quantile", "value": 0.3}, "k": 60},
         {"name": "kcenter", "options": {"criterion": "length"}}),
        ({"name": "weighted", "options": {"objectives": ["fake_len:max", "length:min"]}, "ratio": 0.5},
         {"name": "group_topk", "options": {"criterion": "fake_len"}}),
        ({"name": "pareto", "options": {"objectives": ["fake_len:max", "length:max"]}, "ratio": 0.3},
         {"name": "random", "options": {}}),
        ({"name": "gumbel_topk", "options": {"criterion": "fake_len"}, "k": 50},
         {"name": "threshold", "options": {"criterion": "length", "mode": "knee"}}),
    ],
)  # fmt: skip
def test_cascade_stages_of_every_kind_match_the_in_memory_selection(pool, tmp_path, cache, first, then):
    """Streaming first stages (threshold, weighted with the rank normaliser: counted first, Pareto, Gumbel
    top-k); second stages that need embeddings (kcenter), groups (group_topk on ``task``), the seed (random)
    or the stage's own rows (knee)."""
    res, s, got = both(pool, tmp_path, cache, "streaming-cascade", criteria=["fake_len", "length"],
                       selector=cascade_sel(first, then), k=12, shard_size=9)  # fmt: skip
    assert 0 < len(res.selected) <= 12 and 12 <= got.k1 <= 60


def test_cascade_in_memory_when_its_first_stage_needs_the_pool_or_a_token_budget(pool, tmp_path, cache):
    by_kcenter = cascade_sel({"name": "kcenter", "options": {"criterion": "fake_len"}, "ratio": 0.5},
                             {"name": "topk", "options": {"criterion": "length"}})  # fmt: skip
    _, _, _, kind = run(pool, tmp_path / "a", cache, criteria=["fake_len", "length"], selector=by_kcenter, k=5)
    assert kind == "in-memory"
    by_topk = cascade_sel({"name": "topk", "options": {"criterion": "fake_len"}, "ratio": 0.5},
                          {"name": "topk", "options": {"criterion": "length"}})  # fmt: skip
    res, _, _, kind = run(pool, tmp_path / "b", cache, criteria=["fake_len", "length"], selector=by_topk, tokens=900)
    assert kind == "in-memory" and len(res.selected) > 0


@pytest.mark.parametrize("sizes", [[0, 5, 1, 40, 0, 14], [60], [1] * 25])
def test_group_passes_over_shards_are_the_selector_on_the_whole(sizes):
    """Ties (integer values), NaN and -inf scores, empty shards, groups of one row: the quotas and
    the layout against the in-memory selector on the whole."""
    rng = np.random.default_rng(1)
    n = sum(sizes)
    v = rng.integers(0, 3, n).astype(np.float64)
    v[rng.random(n) < 0.1], v[rng.random(n) < 0.05] = np.nan, -np.inf
    mask = rng.random(n) < 0.85
    labels = ["g0", "g1", "g2", "g3", "solo"]
    codes = rng.choice(4, n).astype(np.int32)
    codes[n // 2] = 4
    groups = GroupColumn(codes, labels)
    for maximize, k, equal in ((True, 9, True), (False, 9, False), (True, n + 3, True), (True, 0, False)):
        stats = GroupStatsPass([], "x", maximize, groups)
        feed_in_pieces(stats, v, mask, sizes)
        order = stats.group_order()
        q = (round_robin_quotas if equal else proportional_quotas)(stats.sizes[order], k)
        quota, rank = np.zeros(5, np.int64), np.zeros(5, np.int64)
        quota[order], rank[order] = q, np.arange(len(order))
        keep = GroupKeepPass([], "x", maximize, groups, quota, rank, equal)
        feed_in_pieces(keep, v, mask, sizes)
        elig = np.flatnonzero(mask)
        opts = {"direction": "max" if maximize else "min", "quota": "equal" if equal else "proportional"}
        got = group_topk(pd.DataFrame({"x": v[elig]}), k, groups=np.asarray(labels)[codes[elig]], criterion="x", **opts)
        want = elig[got]
        assert keep.order(k).tolist() == want.tolist()


def feed_in_pieces(p, v, mask, sizes) -> None:
    off = 0
    for m in sizes:
        p.take({"x": v[off : off + m]}, off, mask[off : off + m])
        off += m


def test_round_robin_quotas_against_a_loop():
    rng = np.random.default_rng(2)
    for _ in range(200):
        sizes = rng.integers(0, 6, rng.integers(0, 6))
        k = int(rng.integers(0, 25))
        want, left, d = np.zeros(len(sizes), np.int64), k, 0
        while left > 0 and (sizes > d).any():
            for j in np.flatnonzero(sizes > d)[:left]:
                want[j] += 1
            left, d = k - int(want.sum()), d + 1
        assert round_robin_quotas(sizes, k).tolist() == want.tolist()
