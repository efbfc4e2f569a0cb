"""Resume by id, whatever the shard layout (issue 10): a run whose shards differ from an earlier run's
(another --shard-size, another engine) reuses every row the earlier run scored, matched by id AND
content, and scores only the rest; the results equal a fresh run's."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.pipeline import PipelineConfig, run_pipeline

PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")
N = 120


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", N)


def _run(pool, out, cache, log, **kw):
    crit = [{"name": "fake_len", "options": {"log": str(log)}}, "mtld"]
    cfg = dict(data=str(pool), out=str(out), cache_dir=str(cache), criteria=crit, plugins=[PLUGIN], k=10,
               selector={"name": "topk", "options": {"criterion": "fake_len"}}, quiet=True, report=False)  # fmt: skip
    return run_pipeline(PipelineConfig(**{**cfg, **kw}))


def _rows_scored(log: Path) -> int:
    """Rows the fake_len scorer was called on (one log line per call: ``fake_len <rows> <first id>``)."""
    return sum(int(line.split()[1]) for line in log.read_text().splitlines()) if log.exists() else 0


def test_another_shard_size_reuses_every_row(pool, tmp_path):
    log = tmp_path / "calls.log"
    first = _run(pool, tmp_path / "a", tmp_path / "cache", log, shard_size=30)
    assert _rows_scored(log) == N
    again = _run(pool, tmp_path / "b", tmp_path / "cache", log, shard_size=50)  # shards 0-49, 50-99, 100-119
    assert _rows_scored(log) == N  # nothing scored again
    assert again.selected.tolist() == first.selected.tolist()
    pd.testing.assert_frame_equal(pd.read_parquet(again.scores_path), pd.read_parquet(first.scores_path))
    fresh = _run(pool, tmp_path / "c", tmp_path / "fresh-cache", tmp_path / "fresh.log", shard_size=50)
    pd.testing.assert_frame_equal(pd.read_parquet(again.scores_path), pd.read_parquet(fresh.scores_path))


def test_a_partial_run_is_resumed_under_another_layout(pool, tmp_path):
    """The first run stopped after 60 rows (``limit``); the second, in shards of 20, reuses rows 0-59 and
    scores rows 60-119 only."""
    log = tmp_path / "calls.log"
    _run(pool, tmp_path / "a", tmp_path / "cache", log, shard_size=25, limit=60)
    assert _rows_scored(log) == 60
    res = _run(pool, tmp_path / "b", tmp_path / "cache", log, shard_size=20)
    assert _rows_scored(log) == 60 + 60
    fresh = _run(pool, tmp_path / "c", tmp_path / "fresh-cache", tmp_path / "fresh.log", shard_size=20)
    pd.testing.assert_frame_equal(pd.read_parquet(res.scores_path), pd.read_parquet(fresh.scores_path))


def test_same_id_with_other_content_is_scored_again(pool, tmp_path):
    log = tmp_path / "calls.log"
    _run(pool, tmp_path / "a", tmp_path / "cache", log, shard_size=30)
    rows = [json.loads(line) for line in Path(pool).read_text().splitlines()]
    rows[7]["output"] += " (edited)"  # row 7 keeps its id, its content changes
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _run(edited, tmp_path / "b", tmp_path / "cache", log, shard_size=40)
    assert _rows_scored(log) == N + 40  # the shard holding row 7 (rows 0-39) only
    scores = pd.read_parquet(res.scores_path).set_index("id")
    assert scores.loc[rows[7]["id"], "fake_len"] == len(rows[7]["output"])


@pytest.mark.ray
def test_ray_reuses_the_local_engines_rows(pool, tmp_path, ray_cluster):
    log = tmp_path / "calls.log"
    local = _run(pool, tmp_path / "a", tmp_path / "cache", log, shard_size=30)
    res = _run(pool, tmp_path / "b", tmp_path / "cache", log, shard_size=45, engine="ray",
               engine_options={"workers": 2})  # fmt: skip
    assert _rows_scored(log) == N and res.selected.tolist() == local.selected.tolist()
    # the workers read the input and counted the new shards' tokens; no criterion scored a row again
    assert res.manifest["engine_run"]["read_on_workers"] is True
