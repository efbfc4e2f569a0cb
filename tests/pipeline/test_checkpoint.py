"""Checkpoints inside a shard (thresher.pipeline.checkpoint): a run that stops mid-shard (an error,
Ctrl-C, SIGKILL) resumes at its last checkpoint; the rows it restores are not scored again, and the
scores are those of a run that never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.cache import ScoreCache, cache_entries, ids_digest, row_keys
from thresher.errors import OptionError
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.pipeline import checkpoint as ck
from thresher.pipeline.workers import CriterionSpec, ShardWorker

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")


def _table(n: int) -> pd.DataFrame:
    ids, outs = [f"r{i}" for i in range(n)], ["x" * (i % 7) for i in range(n)]
    return pd.DataFrame({"id": pd.Series(ids, dtype=object), "output": pd.Series(outs, dtype=object)})


class Scorer:
    """Scores a table (output length), recording the ids of every call; raises on the call holding ``fail``."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list = []
        self.fail = fail

    def __call__(self, t: pd.DataFrame) -> pd.DataFrame:
        if self.fail is not None and (t["id"] == self.fail).any():
            raise KeyboardInterrupt  # as Ctrl-C would
        self.calls.append(t["id"].tolist())
        return pd.DataFrame({"id": t["id"], "len": t["output"].str.len().astype(np.float64)})


UNIT = 64  # rows a call may be cut at (the scorer's declared unit)


def _run(cache, table, scorer, every_s=1e-9, speeds=None, unit=UNIT):
    rk = row_keys(table["id"].tolist(), table["output"].tolist())
    return ck.score_checkpointed(
        cache, "len", "k1", table, rk, scorer, every_s=every_s, speeds=speeds or ck.Speeds(), unit=unit
    )


def test_a_stop_mid_shard_keeps_the_chunks_done_and_the_rerun_scores_only_the_rest(tmp_path):
    cache, table = ScoreCache(tmp_path), _table(300)
    first = Scorer(fail="r200")  # chunks of one unit: 0-63, 64-127, 128-191 done, 192-255 stops
    with pytest.raises(KeyboardInterrupt):
        _run(cache, table, first)
    assert [len(c) for c in first.calls] == [UNIT] * 3
    assert cache.path("len", "k1.partial").is_file() and not cache.path("len", "k1").exists()

    speeds = ck.Speeds()
    second = Scorer()
    got = _run(cache, table, second, speeds=speeds)
    scored = [i for c in second.calls for i in c]
    assert scored == [f"r{i}" for i in range(192, 300)]  # nothing restored is scored again
    assert speeds.restored == 192
    want = Scorer()(table)
    pd.testing.assert_frame_equal(got[["id", "len"]], want, check_dtype=False)


def test_rows_whose_content_changed_are_scored_again(tmp_path):
    cache, table = ScoreCache(tmp_path), _table(150)
    with pytest.raises(KeyboardInterrupt):
        _run(cache, table, Scorer(fail="r140"))  # rows 0-127 saved
    changed = table.copy()
    changed.loc[5, "output"] = "a different output"
    second = Scorer()
    got = _run(cache, changed, second)
    scored = sorted({i for c in second.calls for i in c}, key=lambda s: int(s[1:]))
    assert scored == ["r5"] + [f"r{i}" for i in range(128, 150)]
    assert got.loc[5, "len"] == len("a different output")
    assert got["id"].tolist() == changed["id"].tolist()


def test_an_unreadable_checkpoint_is_ignored(tmp_path):
    cache, table = ScoreCache(tmp_path), _table(100)
    with pytest.raises(KeyboardInterrupt):
        _run(cache, table, Scorer(fail="r90"))
    cache.path("len", "k1.partial").write_bytes(b"not parquet")
    second = Scorer()
    got = _run(cache, table, second)
    assert sum(len(c) for c in second.calls) == 100
    assert got["id"].tolist() == table["id"].tolist()


@pytest.mark.parametrize("how", [{"every_s": 0}, {"unit": None}])
def test_one_call_and_no_checkpoint_when_disabled_or_the_scorer_cannot_be_cut(tmp_path, how):
    cache, table = ScoreCache(tmp_path), _table(300)
    one = Scorer()
    _run(cache, table, one, **how)
    assert [len(c) for c in one.calls] == [300]  # one call, as before checkpoints
    with pytest.raises(KeyboardInterrupt):
        _run(cache, table, Scorer(fail="r7"), **how)
    assert not cache.path("len", "k1.partial").exists()


def test_empty_shard_is_one_call_of_no_rows(tmp_path):
    s = Scorer()
    got = _run(ScoreCache(tmp_path), _table(0), s)
    assert len(got) == 0 and s.calls == [[]]


def test_chunks_are_whole_units_sized_by_the_measured_speed():
    sp = ck.Speeds()
    assert sp.chunk("c", 60.0, 10_000, 64) == 64  # speed unknown: one unit
    assert sp.chunk("c", 60.0, 10, 64) == 10
    sp.record("c", 64, 10.0)  # 6.4 rows/s: about half a minute of whole units (192 rows = 30 s)
    assert sp.chunk("c", 60.0, 10_000, 64) == 192 == (int(6.4 * 60 * ck.CHUNK_SHARE) // 64) * 64
    assert sp.seconds("c", 64) == pytest.approx(10.0)
    sp.record("c", 64, 0.001)  # fast: the rest of the shard in one call
    assert sp.chunk("c", 60.0, 4096, 64) == 4096
    sp.record("c", 1, 100.0)  # very slow: never less than one unit
    assert sp.chunk("c", 60.0, 4096, 256) == 256


def test_the_unit_is_the_engine_batch_or_what_the_scorer_declares():
    class Cut:
        chunk_rows = 32

    assert ck.chunk_unit(Cut()) == 32
    assert ck.chunk_unit(Cut(), 100) == 100  # the engine's batches are separate calls anyway
    assert ck.chunk_unit(object()) is None and ck.chunk_unit(object(), 50) == 50
    for bad in (0, -3, True, 2.5, "64"):
        Cut.chunk_rows = bad
        assert ck.chunk_unit(Cut()) is None


def test_an_lm_criterion_cut_at_its_windows_gives_the_bytes_of_one_call(tmp_path):
    from conftest import save_tiny_lm
    from thresher.registry import CRITERIA

    lm = save_tiny_lm(tmp_path / "lm")
    entry = CRITERIA.get("perplexity")
    scorer = entry.obj(**entry.resolve_options({"model": str(lm), "device": "cpu"}))
    assert scorer.chunk_rows == scorer.window_rows <= scorer.cpu_window_rows  # a CPU scorer's windows are small
    scorer.window_rows = 8  # a shard of 61 rows in windows of 8
    table = _table(61)
    table["instruction"] = [f"Question {i}: say {'why ' * (i % 5)}" for i in range(61)]
    table["output"] = [f"Because {'so ' * (i % 9)}." for i in range(61)]
    one = scorer(table)
    with pytest.raises(KeyboardInterrupt):
        _run(ScoreCache(tmp_path / "c"), table, _failing(scorer, "r30"), unit=scorer.chunk_rows)
    got = _run(ScoreCache(tmp_path / "c"), table, scorer, unit=scorer.chunk_rows)  # 24 rows restored
    pd.testing.assert_frame_equal(got, one)  # bit for bit, NaN reasons included


def _failing(scorer, at):
    def call(t):
        if (t["id"] == at).any():
            raise KeyboardInterrupt
        return scorer(t)

    return call


def test_the_worker_pool_path_resumes_from_its_checkpoint(tmp_path):
    table = _table(200)
    table["instruction"] = "i"
    spec = {
        "fake_len": CriterionSpec("fake_len", "fake_len", None, _fake_len_cls(), {"fail_on": "r150", "chunk_rows": 64})
    }
    digest, rk = ids_digest(table["id"].tolist()), row_keys(table["id"].tolist(), table["output"].tolist())
    todo = [("fake_len", "key1", "crit-key")]
    with pytest.raises(RuntimeError, match="failing on r150"):
        ShardWorker(spec, str(tmp_path), None, 1e-9).score(table, todo, digest, rk)
    log = tmp_path / "calls.log"
    spec = {
        "fake_len": CriterionSpec("fake_len", "fake_len", None, _fake_len_cls(), {"log": str(log), "chunk_rows": 64})
    }
    receipt = ShardWorker(spec, str(tmp_path), None, 1e-9).score(table, todo, digest, rk)
    assert receipt["computed"] == ["fake_len"] and receipt["restored"] == 128
    assert sum(int(line.split()[1]) for line in log.read_text().splitlines()) == 200 - 128
    cache = ScoreCache(tmp_path)
    assert cache.get("fake_len", "key1", digest) is not None
    assert not cache.path("fake_len", "key1.partial").exists()  # replaced by the complete entry


def _fake_len_cls():
    from thresher.pipeline.plugins import load_plugins
    from thresher.registry import CRITERIA

    load_plugins([PLUGIN])
    return CRITERIA.get("fake_len").obj


# ------------------------------------------------------------------ through the pipeline
@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 300)


def _cfg(pool, out, **fake) -> PipelineConfig:
    return PipelineConfig(
        data=str(pool), out=str(out), criteria=[{"name": "fake_len", "options": {"chunk_rows": 64, **fake}}, "length"],
        plugins=[PLUGIN],
        selector={"name": "topk", "options": {"criterion": "fake_len"}}, k=20, shard_size=300, checkpoint_s=1e-9,
        quiet=True, report=False,
    )  # fmt: skip


def _ids(pool: Path) -> list:
    return [json.loads(line)["id"] for line in pool.read_text().splitlines()]


def _rows_logged(log: Path) -> int:
    return sum(int(line.split()[1]) for line in log.read_text().splitlines()) if log.exists() else 0


def test_pipeline_resumes_mid_shard_with_the_scores_of_an_unbroken_run(pool, tmp_path):
    ids = _ids(pool)
    out, log = tmp_path / "run", tmp_path / "calls.log"
    with pytest.raises(RuntimeError, match="failing on"):
        run_pipeline(_cfg(pool, out, fail_on=ids[250], log=str(log)))  # chunks of 64: 0-255 stops at 192
    assert _rows_logged(log) == 192
    kinds = {p.name.split(".", 1)[1] for e in cache_entries(out / "cache", "fake_len") for p in e.files}
    assert kinds == {"partial.parquet"}  # `thresher cache ls` counts a checkpoint; prune removes it

    again = _cfg(pool, out, log=str(log))
    again.overwrite = True  # another plan (no fail_on): its outputs replace the stopped run's; the cache stays
    res = run_pipeline(again)
    assert _rows_logged(log) == 300  # the 108 rows the checkpoint lacked, no more
    assert "resumed 192 row-criterion pairs from checkpoints" in (out / "run.log").read_text()
    assert not list((out / "cache" / "fake_len").glob("*.partial.parquet"))
    fresh = run_pipeline(_cfg(pool, tmp_path / "fresh"))
    pd.testing.assert_frame_equal(pd.read_parquet(res.scores_path), pd.read_parquet(fresh.scores_path))
    assert res.selected.tolist() == fresh.selected.tolist()
    assert res.manifest["checkpoint_s"] == 1e-9


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "60", True])
def test_checkpoint_interval_is_checked(pool, tmp_path, bad):
    cfg = _cfg(pool, tmp_path / "o")
    cfg.checkpoint_s = bad
    with pytest.raises(OptionError, match="checkpoint_s"):
        run_pipeline(cfg)


def test_sigkill_mid_shard_loses_at_most_the_chunk_in_progress(pool, tmp_path):
    out, log = tmp_path / "run", tmp_path / "calls.log"
    cmd = [sys.executable, "-m", "thresher", "score", str(pool), "--criteria", "fake_len", "--plugin", PLUGIN,
           "--criterion-option", "fake_len.sleep=0.4", "--criterion-option", f"fake_len.log={log}",
           "--criterion-option", "fake_len.chunk_rows=64",
           "--shard-size", "300", "--checkpoint-every", "0.01", "--cache-dir", str(out / "cache"),
           "--out", str(out / "scores.parquet"), "--quiet"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _rows_logged(log) < 3 * UNIT and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
    time.sleep(0.1)  # the third chunk's checkpoint is written after its log line
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _rows_logged(log)
    saved = _partial_rows(out / "cache")
    assert saved >= 2 * UNIT and saved <= before
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _rows_logged(log) - before == 300 - saved  # only the rows no checkpoint held
    got = pd.read_parquet(out / "scores.parquet")
    assert got["id"].tolist() == _ids(pool)
    assert got["fake_len"].notna().sum() > 0


def _partial_rows(cache: Path) -> int:
    parts = list((cache / "fake_len").glob("*.partial.parquet"))
    assert len(parts) == 1, parts
    return pd.read_parquet(parts[0]).shape[0]
