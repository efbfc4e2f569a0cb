"""The pipeline end to end on real rows with light criteria (thresher.pipeline)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.pipeline import PipelineConfig, run_pipeline

PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory) -> Path:
    """1,200 real BIG-bench rows as a plain JSONL file."""
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 1200)


def run(pool, out, **kw):
    kw.setdefault("quiet", True)
    kw.setdefault("report", False)
    kw.setdefault("shard_size", 250)
    return run_pipeline(PipelineConfig(data=str(pool), out=str(out), plugins=[PLUGIN], **kw))


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def scored(log: Path) -> int:
    """Rows fake_len scored (its log: ``fake_len ROWS FIRST_ID`` per call; a shard may take several calls)."""
    return sum(int(line.split()[1]) for line in calls(log))


def test_topk_outputs_scores_manifest(pool, tmp_path):
    res = run(pool, tmp_path / "o", criteria=["fake_len"], k=40)
    s = pd.read_parquet(tmp_path / "o" / "scores.parquet")
    assert len(s) == 1200 and s["id"].is_unique
    assert list(s.columns[:3]) == ["id", "group", "tokens"]
    assert {"fake_len", "fake_len.instruction", "fake_len.reason", "eligible", "selected", "rank"} <= set(s.columns)
    # oracle: the 40 longest outputs, ties by position, from the raw file
    rows = [json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines()]
    L = np.array([len(r["output"]) for r in rows], dtype=np.float64)
    L[L == 0] = np.nan
    order = sorted([i for i in range(len(L)) if not np.isnan(L[i])], key=lambda i: (-L[i], i))[:40]
    assert res.selected.tolist() == order
    assert s.loc[s["selected"], "rank"].sort_values().tolist() == list(range(40))
    assert s["rank"].to_numpy()[order].tolist() == list(range(40))
    # the subset: the input's lines verbatim, in input order
    lines = pool.read_text(encoding="utf-8").rstrip("\n").split("\n")
    assert (tmp_path / "o" / "selected.jsonl").read_text(encoding="utf-8").rstrip("\n").split("\n") == [
        lines[i] for i in sorted(order)
    ]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["inputs"][0]["sha256"] == hashlib.sha256(pool.read_bytes()).hexdigest()
    assert m["inputs"][0]["rows"] == 1200 and m["selected"] == 40 and m["budget"]["resolved_k"] == 40
    assert m["criteria"][0]["name"] == "fake_len" and m["criteria"][0]["cache_key"] == "fake_len/v1/scale=1.0"
    assert (
        m["outputs"]["selected.jsonl"] == hashlib.sha256((tmp_path / "o" / "selected.jsonl").read_bytes()).hexdigest()
    )
    assert (tmp_path / "o" / "run.log").read_text().count("selected 40 of 1200") == 1


def test_streaming_topk_equals_in_memory_path(pool, tmp_path):
    a = run(pool, tmp_path / "a", criteria=["fake_len"], k=60)  # out-of-core TopKAccumulator
    b = run(pool, tmp_path / "b", criteria=["fake_len"], ratio=0.05)  # in-memory selector (k = 60)
    assert b.k == 60 and a.selected.tolist() == b.selected.tolist()


def test_token_budget_filters_and_min_direction(pool, tmp_path):
    run(pool, tmp_path / "t", criteria=["fake_len"], tokens=3000, filters=["fake_len >= 5"])
    s = pd.read_parquet(tmp_path / "t" / "scores.parquet")
    sel = s[s["selected"]].sort_values("rank")
    assert sel["tokens"].sum() <= 3000
    nxt = s[~s["selected"] & s["eligible"]].sort_values(["fake_len", "rank"], ascending=[False, True])
    assert sel["tokens"].sum() + nxt["tokens"].iloc[0] > 3000  # the next one in order would not fit
    assert (s.loc[~s["eligible"], "fake_len"].fillna(-1) < 5).all() and (sel["fake_len"] >= 5).all()
    run(
        pool,
        tmp_path / "m",
        criteria=["fake_len"],
        k=10,
        selector={"name": "topk", "options": {"criterion": "fake_len", "direction": "min"}},
    )
    s2 = pd.read_parquet(tmp_path / "m" / "scores.parquet")
    assert s2.loc[s2["selected"], "fake_len"].max() == np.sort(s2["fake_len"].dropna().to_numpy())[9]


def test_existing_output_refused_option_change_invalidates_only_its_cache(pool, tmp_path):
    log = tmp_path / "calls.log"
    out = tmp_path / "o"
    crit = [{"name": "fake_len", "options": {"scale": 1.0, "log": str(log)}}, "length"]
    sel = {"name": "weighted", "options": {"objectives": ["fake_len:max", "length:max"], "normalize": "rank"}}
    try:
        from thresher import ops

        ok = hasattr(ops, "aggregate") and hasattr(ops, "normalize")
    except ImportError:
        ok = False
    if not ok:
        sel = {"name": "topk", "options": {"criterion": "fake_len"}}
    r1 = run(pool, out, criteria=crit, selector=sel, k=20)
    assert scored(log) == 1200 and r1.cache_misses > 0
    # the same run again resumes from the cache: nothing recomputed, same bytes
    before = (out / "scores.parquet").read_bytes()
    r2 = run(pool, out, criteria=crit, selector=sel, k=20)
    assert scored(log) == 1200 and r2.cache_misses == 0 and (out / "scores.parquet").read_bytes() == before
    # another run's options: refused, nothing touched
    crit2 = [{"name": "fake_len", "options": {"scale": 2.0, "log": str(log)}}, "length"]
    with pytest.raises(FileExistsError, match="already holds another run's results"):
        run(pool, out, criteria=crit2, selector=sel, k=20)
    assert (out / "scores.parquet").read_bytes() == before
    # --overwrite: fake_len recomputed (5 shards), length reused from the cache
    r3 = run(pool, out, criteria=crit2, selector=sel, k=20, overwrite=True)
    assert scored(log) == 2400
    assert r3.cache_misses == 5 and r3.cache_hits == 10  # 5 tokens + 5 length entries reused
    s = pd.read_parquet(out / "scores.parquet")
    rows = [json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines()]
    L = np.array([len(r["output"]) for r in rows], dtype=np.float64)
    L[L == 0] = np.nan
    np.testing.assert_array_equal(s["fake_len"].to_numpy(), 2.0 * L)


def test_refuses_foreign_folder_and_bad_budget(pool, tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no thresher run"):
        run(pool, d, criteria=["fake_len"], k=5)
    with pytest.raises(ValueError, match="budget: give one of"):
        run(pool, tmp_path / "x", criteria=["fake_len"], k=5, ratio=0.1)
    with pytest.raises(ValueError, match="ratio: expected"):
        run(pool, tmp_path / "y", criteria=["fake_len"], ratio=1.5)
    with pytest.raises(ValueError, match="unknown criterion 'nope'"):
        run(pool, tmp_path / "z", criteria=["nope"], k=5)
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        run(pool, tmp_path / "z", recipe="nope", k=5)
    with pytest.raises(ValueError, match="unknown option"):
        run(pool, tmp_path / "z", criteria=[{"name": "fake_len", "options": {"scael": 2}}], k=5)


def test_a_threshold_needs_no_budget_and_other_selectors_do(pool, tmp_path):
    """A threshold decides alone how many rows pass: given no --k/--ratio/--tokens, a run keeps every row
    it passes (before, the CLI asked for a budget a threshold has no use for); a top-k still asks."""
    with pytest.raises(ValueError, match=r"budget: give one of k, ratio or tokens \(--k N"):
        run(pool, tmp_path / "t", criteria=["fake_len"])
    sel = {"name": "threshold", "options": {"criterion": "fake_len", "mode": "absolute", "value": 300.0}}
    res = run(pool, tmp_path / "o", criteria=["fake_len"], selector=sel)
    rows = [json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines()]
    passing = [i for i, r in enumerate(rows) if len(r["output"]) >= 300]
    assert 0 < len(passing) < len(rows)
    assert sorted(res.selected.tolist()) == passing
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["budget"]["ratio"] == 1.0 and m["budget"]["resolved_k"] == len(rows)


@pytest.mark.parametrize("name", ["pareto", "weighted", "rrf", "aggregate"])
def test_objectives_default_to_the_runs_criteria(pool, tmp_path, name):
    """A multi-objective selector given no objectives ranks by every criterion of the run, each in its
    registered direction (before: 'give at least one objective' though the run named its criteria)."""
    crit = ["fake_len", "length"]
    auto = run(pool, tmp_path / "a", criteria=crit, selector=name, k=25)
    sel = {"name": name, "options": {"objectives": ["fake_len:max", "length:max"]}}
    given = run(pool, tmp_path / "g", criteria=crit, selector=sel, k=25)
    assert auto.selected.tolist() == given.selected.tolist() and len(auto.selected) == 25
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["selector"]["options"]["objectives"] == crit


def test_alias_pool_scope_and_skipped_rows(pool, tmp_path):
    log = tmp_path / "calls.log"
    bad = tmp_path / "bad.jsonl"
    lines = pool.read_text(encoding="utf-8").split("\n")[:300]
    lines.insert(10, '{"instruction": "broken", "output": ')
    lines.insert(20, '{"instruction": 3.5e400}')
    bad.write_text("\n".join(lines) + "\n")
    res = run(
        bad,
        tmp_path / "o",
        on_bad_row="skip",
        k=15,
        shard_size=100,
        criteria=[
            {"name": "fake_len", "as": "short", "options": {"scale": -1.0}},
            {"name": "fake_len", "as": "long", "options": {"scale": 1.0}},
            {"name": "fake_pool", "options": {"log": str(log)}},
        ],
        selector={"name": "topk", "options": {"criterion": "long"}},
    )
    assert res.n_rows == 300 and len(res.skipped) == 2
    assert [s["line"] for s in res.skipped] == [11, 21]
    s = pd.read_parquet(tmp_path / "o" / "scores.parquet")
    np.testing.assert_array_equal(s["short"].to_numpy(), -s["long"].to_numpy())
    assert {"short.instruction", "long.reason", "fake_pool"} <= set(s.columns)
    assert calls(log) == ["fake_pool 300"]  # one call over the whole pool, not per shard
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["inputs"][0]["skipped"] == 2 and m["inputs"][0]["skipped_rows"][0]["line"] == 11


def test_config_file_and_random_recipe(pool, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {pool}\nout: out\nrecipe: random\nk: 25\nseed: 3\nreport: false\nquiet: true\n")
    c = PipelineConfig.from_file(cfg)
    assert c.out == str(tmp_path / "out")
    res = run_pipeline(c)
    assert len(res.selected) == 25 and res.selected.tolist() == np.random.default_rng(3).permutation(1200)[:25].tolist()
    # no budget given: the recipe's default (random: 5%)
    r2 = run(pool, tmp_path / "default-budget", recipe="random")
    assert r2.k == 60 and len(r2.selected) == 60
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nselectr: topk\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['selectr'\]"):
        PipelineConfig.from_file(bad)


def test_overwrite_deletes_only_the_previous_runs_files(pool, tmp_path):
    out = tmp_path / "o"
    run(pool, out, criteria=["fake_len"], k=5)
    listed = json.loads((out / "run.json").read_text())["outputs"]
    assert set(listed) == {"run.log", "scores.parquet", "manifest.json", "selected.jsonl"}
    (out / "selected_photos").mkdir()
    (out / "selected_photos" / "cat.jpg").write_bytes(b"meow")
    (out / "selected.txt").write_text("my notes")
    (out / "notes.txt").write_text("mine")
    res = run(pool, out, criteria=["fake_len"], k=7, overwrite=True)
    assert len(res.selected) == 7 and len((out / "selected.jsonl").read_text().splitlines()) == 7
    assert (out / "selected_photos" / "cat.jpg").read_bytes() == b"meow"
    assert (out / "selected.txt").read_text() == "my notes" and (out / "notes.txt").read_text() == "mine"
    # a folder that holds no thresher run is never written into, even with overwrite
    d = tmp_path / "foreign"
    (d / "selected_photos").mkdir(parents=True)
    (d / "selected_photos" / "dog.jpg").write_bytes(b"woof")
    from thresher.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="holds no thresher run"):
        run(pool, d, criteria=["fake_len"], k=5, overwrite=True)
    assert sorted(p.name for p in d.rglob("*")) == ["dog.jpg", "selected_photos"]


def test_options_and_budgets_are_checked_before_any_scoring(pool, tmp_path):
    from thresher.errors import OptionError

    log = tmp_path / "calls.log"
    crit = [{"name": "fake_len", "options": {"log": str(log)}}]
    bad = [
        dict(ratio=1.5),
        dict(tokens=0),
        dict(k=-1),
        dict(k=5, ratio=0.1),
        dict(k=5, selector={"name": "topk", "options": {"criterion": "fake_len", "direction": "up"}}),
        dict(k=5, selector={"name": "topk", "options": {"criterion": "nope"}}),
        dict(k=5, filters=["nope < 3"]),
        dict(k=5, engine="spark"),
        dict(k=5, engine_options={"batch_size": 0}),
        dict(k=5, shard_size=0),
    ]
    for i, kw in enumerate(bad):
        out = tmp_path / f"o{i}"
        with pytest.raises(ValueError):  # OptionError; an unknown registry name is a ValueError
            run(pool, out, criteria=crit, **kw)
        assert not out.exists(), kw  # no run.json left to block the corrected command
    assert calls(log) == []
    with pytest.raises(OptionError, match="ratio"):
        run(pool, tmp_path / "r", criteria=crit, ratio=1.5)
    with pytest.raises(OptionError, match="batch_size"):
        run(pool, tmp_path / "r", criteria=crit, k=5, engine_options={"batch_size": 0})


def test_alias_names_are_validated_and_work_for_one_criterion(pool, tmp_path):
    from thresher.errors import OptionError

    for alias in ("..", "a/b", "x.y", "", "../../etc"):
        with pytest.raises(OptionError, match="not a valid column name"):
            run(pool, tmp_path / "bad", criteria=[{"name": "fake_len", "as": alias}], k=5)
    assert not (tmp_path / "bad").exists()
    res = run(pool, tmp_path / "o", criteria=[{"name": "fake_len", "as": "chars"}], k=9)
    s = pd.read_parquet(tmp_path / "o" / "scores.parquet")
    assert {"chars", "chars.instruction", "chars.reason"} <= set(s.columns) and "fake_len" not in s.columns
    assert len(res.selected) == 9 and s.loc[s["selected"], "chars"].min() >= s["chars"].dropna().nlargest(9).min()
    assert (tmp_path / "o" / "cache" / "chars").is_dir()


def test_a_cache_entry_with_another_shards_scores_is_recomputed(pool, tmp_path):
    log = tmp_path / "calls.log"
    crit = [{"name": "fake_len", "options": {"log": str(log)}}]
    first = run(pool, tmp_path / "a", criteria=crit, ratio=0.1)
    before = (tmp_path / "a" / "scores.parquet").read_bytes()
    entries = sorted((tmp_path / "a" / "cache" / "fake_len").glob("*.parquet"))
    assert len(entries) == 5 and scored(log) == 1200
    entries[0].write_bytes(entries[1].read_bytes())  # a valid file, the wrong shard
    again = run(pool, tmp_path / "a", criteria=crit, ratio=0.1)
    assert scored(log) - 1200 in (250, 200)  # that one shard recomputed (250 rows, or the last 200), the others reused
    assert again.selected.tolist() == first.selected.tolist()
    assert (tmp_path / "a" / "scores.parquet").read_bytes() == before


def test_engines_come_from_the_registry():
    from thresher.engines import Engine, LocalEngine, get_engine
    from thresher.registry import ENGINES

    assert {"local", "ray"} <= set(ENGINES.names())
    e = get_engine("local", batch_size=3)
    assert isinstance(e, LocalEngine) and isinstance(e, Engine) and e.batch_size == 3 and e.NAME == "local"
    with pytest.raises(ValueError, match="unknown engine 'spark'"):
        get_engine("spark")
