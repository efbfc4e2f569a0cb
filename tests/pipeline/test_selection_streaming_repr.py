"""Streaming repr filter (``diversity_tau``, thresher.pipeline.streaming_repr): the greedy walks the
first rows of the best-first order in rounds and embeds only those rows; each case equals the
in-memory selection (all embeddings, selectors.basic.diverse_greedy) on the same scores and
embeddings cache, one case equals a plain sequential walk written here; the rows it holds and embeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_with_selection, write_bigbench_head
from thresher.embed import EmbeddingStore, embed_table, get_embedder
from thresher.io import read_samples
from thresher.pipeline.selection import ReprSelection

N = 240
SHARD = 50


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory) -> Path:
    """N BIG-bench rows, embedded by the first (in-memory) run into the module's cache."""
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", N)


cache = pytest.fixture(scope="module", name="cache")(lambda tmp_path_factory: str(tmp_path_factory.mktemp("cache")))


def run(pool, out, cache, *, in_memory=False, **kw):
    """(result, scores table, the selection object, info: its kind and the run's state)."""
    kw.setdefault("shard_size", SHARD)
    return run_with_selection(pool, out, cache, in_memory=in_memory, **kw)


def both(pool, tmp_path, cache, kind, **kw):
    """The in-memory run (it fills the embeddings cache), then the streaming run of ``kind``: same
    selection, budget and eligibility; returns the streaming run."""
    ref, s2, _, mem = run(pool, tmp_path / "mem", cache, in_memory=True, **kw)
    res, s, sel, got = run(pool, tmp_path / "stream", cache, **kw)
    assert got["kind"] == kind and isinstance(sel, ReprSelection)
    assert mem["st"].embeddings is not None and got["st"].embeddings is None  # scoring embedded nothing
    assert res.selected.tolist() == ref.selected.tolist() and res.k == ref.k
    assert s["eligible"].tolist() == s2["eligible"].tolist()
    manifest = json.loads((tmp_path / "stream" / "manifest.json").read_text())
    assert manifest["selector"]["how"] == kind
    return res, s, sel


def col(s: pd.DataFrame, name: str) -> np.ndarray:
    return s[name].to_numpy(np.float64, na_value=np.nan)


def topk(name, tau, direction=None):
    opts = {"criterion": name, "diversity_tau": tau}
    return {"name": "topk", "options": {**opts, **({"direction": direction} if direction else {})}}


# ------------------------------------------------------------------ against the in-memory selection
def test_topk_rounds_against_in_memory_and_a_plain_walk(pool, tmp_path, cache):
    """tau 0.2 rejects most rows: the first 2k candidates are not enough, the walk takes more rounds;
    the selection equals a plain sequential walk over the pool's embeddings (float64 cosines)."""
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk-repr", criteria=["length"], k=25,
                       selector=topk("length", 0.2))  # fmt: skip
    walk = sel.walk
    assert walk.rounds >= 2 and walk.walked > 2 * 25 and len(res.selected) == 25
    assert walk.embedded == walk.walked < N  # only candidates were embedded
    v = col(s, "length")
    order = sorted(range(N), key=lambda i: (-v[i], i))  # best first, ties by lower position
    emb = embed_table(read_samples(str(pool)), cache_dir=Path(cache) / "embeddings").astype(np.float64)
    kept: list = []
    for i in order:
        if len(kept) == 25:
            break
        if all(float(emb[i] @ emb[j]) <= 0.2 for j in kept):
            kept.append(i)
    assert res.selected.tolist() == kept


def test_ties_min_direction_filter_nan_and_ratio(pool, tmp_path, cache):
    """``fake_len`` is NaN for empty outputs (never selected); a filter; a ratio budget (counted,
    then the cache replayed); ``length`` direction min has many ties (lower position first)."""
    res, s, sel = both(pool, tmp_path / "a", cache, "streaming-topk-repr", criteria=["fake_len", "length"],
                       selector=topk("fake_len", 0.3), filters=["length <= 300"], ratio=0.1)  # fmt: skip
    assert 0 < res.k < int(s["eligible"].sum()) and sel.replays >= 2  # count, then the candidates' pass
    assert not np.isnan(col(s, "fake_len")[res.selected]).any() and s["eligible"].to_numpy()[res.selected].all()
    res, s, sel = both(pool, tmp_path / "b", cache, "streaming-topk-repr", criteria=["length"],
                       selector=topk("length", 0.35, "min"), k=30)  # fmt: skip
    v = col(s, "length")[res.selected]
    assert len(set(v)) < len(v) and sel.walk.rounds >= 2  # ties walked in position order


def test_k_larger_than_eligible_walks_the_whole_order(pool, tmp_path, cache):
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk-repr", criteria=["fake_len", "length"],
                       selector=topk("fake_len", 0.25), filters=["length <= 60"], k=1000)  # fmt: skip
    scored = int((s["eligible"] & s["fake_len"].notna()).sum())
    assert 0 < len(res.selected) < scored and sel.walk.walked == scored  # order exhausted


def test_filters_removing_everything(pool, tmp_path, cache):
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk-repr", criteria=["length"],
                       selector=topk("length", 0.5), filters=["length < 0"], k=10)  # fmt: skip
    assert res.selected.tolist() == [] and sel.walk.rounds == 0


@pytest.mark.parametrize(
    "selector,criteria",
    [
        (
            {
                "name": "threshold",
                "options": {"criterion": "length", "mode": "quantile", "value": 0.6, "diversity_tau": 0.3},
            },
            ["length"],
        ),  # fmt: skip
        (
            {
                "name": "threshold",
                "options": {
                    "criterion": "length",
                    "mode": "absolute",
                    "value": 30,
                    "strict": True,
                    "diversity_tau": 0.25,
                },
            },
            ["length"],
        ),  # fmt: skip
        (
            {
                "name": "pareto",
                "options": {"objectives": ["length:max", "fake_len.instruction:min"], "diversity_tau": 0.3},
            },
            ["length", "fake_len"],
        ),  # fmt: skip
        (
            {
                "name": "aggregate",
                "options": {
                    "objectives": ["length:max", "fake_len:max"],
                    "method": "product",
                    "normalize": "none",
                    "diversity_tau": 0.3,
                },
            },
            ["length", "fake_len"],
        ),
        (
            {
                "name": "weighted",
                "options": {
                    "objectives": ["length:max", "fake_len.instruction:min"],
                    "weights": [1.0, 0.5],
                    "normalize": "none",
                    "diversity_tau": 0.3,
                },
            },
            ["length", "fake_len"],
        ),  # fmt: skip
    ],
)
def test_other_selectors_with_tau(pool, tmp_path, cache, selector, criteria):
    kind = f"streaming-{selector['name']}-repr"
    res, s, sel = both(pool, tmp_path, cache, kind, criteria=criteria, selector=selector, k=20)
    assert len(res.selected) > 0


def test_aggregate_per_row_streams_without_tau(pool, tmp_path, cache):
    """DEITA's fold (product, normalize none) without tau: a top-k of the combined score."""
    sel_opts = {"name": "aggregate", "options": {"objectives": ["length:max", "fake_len:max"], "method": "product",
                                                 "normalize": "none"}}  # fmt: skip
    ref = run(pool, tmp_path / "mem", cache, in_memory=True, criteria=["length", "fake_len"], selector=sel_opts, k=15)
    res, s, sel, got = run(pool, tmp_path / "s", cache, criteria=["length", "fake_len"], selector=sel_opts, k=15)
    assert got["kind"] == "streaming-aggregate" and res.selected.tolist() == ref[0].selected.tolist()
    prod = col(s, "length") * col(s, "fake_len")
    want = sorted(np.flatnonzero(~np.isnan(prod)), key=lambda i: (-prod[i], i))[:15]
    assert res.selected.tolist() == want
    rank = {"name": "aggregate", "options": {"objectives": ["length:max", "fake_len:max"], "diversity_tau": 0.3}}
    res, _, _, got = run(pool, tmp_path / "r", cache, criteria=["length", "fake_len"], selector=rank, k=5)
    ref = run(pool, tmp_path / "rm", cache, in_memory=True, criteria=["length", "fake_len"], selector=rank, k=5)
    # the default normalize (rank) reads the whole pool: counted first, then walked as any order
    assert got["kind"] == "streaming-aggregate-repr" and res.selected.tolist() == ref[0].selected.tolist()


# ------------------------------------------------------------------ cold cache, memory
def test_cold_cache_embeds_only_candidates(pool, tmp_path, cache):
    """A fresh cache: the streaming run embeds (and stores) only the rows it walked, and selects what
    the in-memory run selects from embeddings of whole shards (its own cache)."""
    kw = dict(criteria=["length"], selector=topk("length", 0.2), k=12)
    res, s, sel, got = run(pool, tmp_path / "s", str(tmp_path / "c1"), **kw)
    ref = run(pool, tmp_path / "m", cache, in_memory=True, **kw)[0]  # (whole shards embedded there)
    assert got["kind"] == "streaming-topk-repr" and res.selected.tolist() == ref.selected.tolist()
    store = EmbeddingStore(tmp_path / "c1" / "embeddings", get_embedder("default").fingerprint)
    assert len(store) == sel.walk.walked < N


def test_rows_and_values_held_are_bounded(pool, tmp_path, cache):
    """Not timed: what the walk holds is O(k + m + shard) rows and the passes O(m + shard) values."""
    res, s, sel = both(pool, tmp_path, cache, "streaming-topk-repr", criteria=["length"], k=8,
                       selector=topk("length", 0.15))  # fmt: skip
    m = sel.candidates
    assert sel.walk.rounds >= 2 and m >= 2 * 2 * 8  # the candidate budget doubled at least once
    assert 0 < sel.peak_rows <= 8 + 2 * m + SHARD
    assert 0 < sel.peak <= 4 * (m + SHARD)
    assert math.isfinite(sel.peak_rows) and sel.peak_rows < N


# ------------------------------------------------------------------ a token budget
@pytest.mark.parametrize("budget", [1, 2500, 10**9])
def test_token_budget_walks_until_the_kept_rows_pass_it(pool, tmp_path, cache, budget):
    """The repr filter keeps rows in order until their tokens pass the budget; the selection is the
    prefix of those rows within the budget, as in memory (the walk over every row, then the cut) and
    as a plain walk written here; only walked rows are embedded."""
    from thresher.pipeline.selection import TokenBudgetSelection

    kw = dict(criteria=["length"], selector=topk("length", 0.3), tokens=budget)
    ref, s2, _, mem = run(pool, tmp_path / "mem", cache, in_memory=True, **kw)
    res, s, sel, got = run(pool, tmp_path / "stream", cache, **kw)
    assert got["kind"] == "streaming-topk-repr-tokens" and isinstance(sel, TokenBudgetSelection)
    assert got["st"].embeddings is None and res.selected.tolist() == ref.selected.tolist()
    v, tok = col(s, "length"), col(s, "tokens")
    emb = embed_table(read_samples(str(pool)), cache_dir=Path(cache) / "embeddings").astype(np.float64)
    kept: list = []
    total = 0.0
    for i in sorted(range(N), key=lambda i: (-v[i], i)):
        if all(float(emb[i] @ emb[j]) <= 0.3 for j in kept):
            total += tok[i]
            if total > budget:
                break
            kept.append(i)
    assert res.selected.tolist() == kept and tok[res.selected].sum() <= budget
    assert sel.walk.embedded == sel.walk.walked and (budget == 10**9 or sel.walk.walked < N)
