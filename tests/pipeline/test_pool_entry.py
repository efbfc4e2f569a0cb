"""A pool-scoped criterion under an engine whose workers read the pool: the whole-pool task writes
the cache entry (PoolSink) and the driver reads it back in parts (PoolEntry), so it never holds the
pool's ids or the scorer's table. Checked piece by piece against plain pandas, then end to end: the
entry is the local engine's, and a cached re-run on either engine scores nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import write_bigbench_head
from thresher import memory
from thresher.cache import IdsDigest, ScoreCache, ids_digest
from thresher.engines.local import LocalEngine
from thresher.engines.ray_engine import RayEngine
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.pipeline.pool_entry import PoolEntry, PoolSink


def _scores(n: int, name: str = "knn_distance") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    v = rng.standard_normal(n)
    v[::4] = np.nan
    reason = np.where(np.isnan(v), "pool has fewer than 6 other samples", "")
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], name: v, f"{name}.reason": reason})


def test_an_ids_digest_fed_in_pieces_is_the_whole_ones():
    ids = [f"id-{i}" for i in range(1000)] + [7, "é"]
    h = IdsDigest()
    for a in range(0, len(ids), 97):
        h.update(ids[a : a + 97])
    assert h.hexdigest() == ids_digest(ids)
    assert IdsDigest().hexdigest() == ids_digest([]) and ids_digest(["ab"]) != ids_digest(["a", "b"])


def test_write_sets_row_groups_and_covers_reads_only_the_metadata(tmp_path):
    cache = ScoreCache(tmp_path)
    df = _scores(10)
    p = cache.write("c", "k", df, ids=ids_digest(df["id"]), row_group_rows=3)
    assert pq.ParquetFile(p).metadata.num_row_groups == 4
    assert cache.covers("c", "k", ids_digest(df["id"])) and cache.hits == 1
    assert not cache.covers("c", "k", ids_digest(df["id"][::-1])) and cache.misses == 1
    assert not cache.covers("c", "other", ids_digest(df["id"])) and cache.misses == 2
    pd.testing.assert_frame_equal(cache.get("c", "k", df["id"].tolist()), df)  # put's reader agrees


@pytest.mark.parametrize("rows,group", [(10, 3), (10, 10), (10, 1), (1, 5), (0, 4)])
def test_pool_entry_rows_are_iloc_for_every_slice(tmp_path, rows, group):
    df = _scores(rows)
    p = ScoreCache(tmp_path).write("c", "k", df, ids=ids_digest(df["id"]), row_group_rows=group)
    entry = PoolEntry(p)
    assert len(entry) == rows
    for lo in range(rows + 1):
        for hi in range(lo, rows + 2):
            want = df.iloc[lo:hi].reset_index(drop=True)
            pd.testing.assert_frame_equal(entry.rows(slice(lo, hi)), want, check_index_type=False)
            some = entry.rows(slice(lo, hi), ["knn_distance.reason", "absent", "id"])  # entry's column order
            pd.testing.assert_frame_equal(some, want[["id", "knn_distance.reason"]], check_index_type=False)
    got = entry.frame({"knn_distance", "absent"})
    assert list(got.columns) == ["knn_distance"]
    np.testing.assert_array_equal(got["knn_distance"].to_numpy(), df["knn_distance"].to_numpy())


def test_the_sink_checks_the_result_and_writes_the_entry(tmp_path):
    df = _scores(12)
    table = df[["id"]].assign(instruction="x")
    sink = PoolSink(str(tmp_path), "knn_distance", "key1", ids_digest(df["id"]), "knn_distance", None, 5)
    shuffled = df.iloc[::-1].reset_index(drop=True)  # a scorer may return rows in any order: keyed by id
    memory.watch()  # (the whole-pool task starts it)
    got = sink(shuffled, table, "fp-1", {"exact": True})
    rss = got.pop("peak_rss_mb")  # the task process's own peak memory, for the manifest's engine_run
    assert 0 < got.pop("peak_private_mb") <= rss  # and its private part
    assert got == {"run_info": {"exact": True}, "fingerprint": "fp-1", "rows": 12}
    cache = ScoreCache(tmp_path)
    assert cache.info("knn_distance", "key1")["run_info"] == {"exact": True}
    assert cache.info("knn_distance", "key1")["fingerprint"] == "fp-1"
    pd.testing.assert_frame_equal(PoolEntry(cache.path("knn_distance", "key1")).rows(slice(0, 12)), df)
    wrong = PoolSink(str(tmp_path), "knn_distance", "key2", ids_digest(["other"]), "knn_distance", None, 5)
    with pytest.raises(RuntimeError, match="is not the run's"):
        wrong(df, table, None, None)
    assert not cache.has("knn_distance", "key2")


# ------------------------------------------------------------------ end to end, with Ray
@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 90)


def _run(pool, out, cache, engine, **kw):
    cfg = PipelineConfig(data=str(pool), out=str(out), cache_dir=str(cache), criteria=["length", "knn_distance"],
                         selector={"name": "topk", "options": {"criterion": "knn_distance"}}, k=10, shard_size=25,
                         engine=engine, quiet=True, report=False, **kw)  # fmt: skip
    res = run_pipeline(cfg)
    return res, pd.read_parquet(res.scores_path)


def _refuse(*a, **k):
    raise AssertionError("a cached pool-scoped criterion was scored again")


@pytest.mark.ray
def test_the_ray_entry_is_the_local_ones_and_cached_reruns_score_nothing(pool, tmp_path, ray_cluster, monkeypatch):
    local = _run(pool, tmp_path / "local", tmp_path / "cache-local", "local")
    ray = _run(pool, tmp_path / "ray", tmp_path / "cache", "ray", engine_options={"workers": 2})
    assert ray[0].manifest["engine_run"]["read_on_workers"] is True
    pd.testing.assert_frame_equal(ray[1], local[1])
    assert ray[0].selected.tolist() == local[0].selected.tolist()
    entry = ScoreCache(tmp_path / "cache").entries("knn_distance")
    assert len(entry) == 1 and pq.ParquetFile(entry[0]).metadata.num_row_groups == 4  # 90 rows, groups of 25
    info = {c["name"]: c.get("run_info") for c in ray[0].manifest["criteria"]}["knn_distance"]
    assert info["exact"] is True and info["pool_rows"] == 90
    monkeypatch.setattr(RayEngine, "score_pool", _refuse)
    monkeypatch.setattr(LocalEngine, "score_pool", _refuse)
    again = _run(pool, tmp_path / "ray-again", tmp_path / "cache", "ray", engine_options={"workers": 1})
    pd.testing.assert_frame_equal(again[1], local[1])
    assert {c["name"]: c.get("run_info") for c in again[0].manifest["criteria"]}["knn_distance"] == info
    on_local = _run(pool, tmp_path / "local-again", tmp_path / "cache", "local")  # the task's entry, read locally
    pd.testing.assert_frame_equal(on_local[1], local[1])
