"""A re-run whose embeddings are all cached loads no embedder: not the pool-scoped criterion's
(knn_distance with another k: its scores are recomputed from the cached vectors), not the
selector's (kcenter), not the workers' cache fill. The scores equal the first run's computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import thresher.embed as embed_mod
from conftest import write_bigbench_head
from thresher.pipeline import PipelineConfig, run_pipeline


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 60)


def _run(pool, out, cache, k_nn: int):
    cfg = PipelineConfig(data=str(pool), out=str(out), cache_dir=str(cache),
                         criteria=["length", {"name": "knn_distance", "options": {"k": k_nn}}],
                         selector={"name": "kcenter", "options": {"criterion": "length"}}, k=8, shard_size=25,
                         quiet=True, report=False)  # fmt: skip
    res = run_pipeline(cfg)
    return res, pd.read_parquet(res.scores_path)


def _refuse(*a, **k):
    raise AssertionError("an embedder was loaded though every embedding is cached")


def test_a_rerun_on_cached_embeddings_loads_no_embedder(pool, tmp_path, monkeypatch):
    first, scores3 = _run(pool, tmp_path / "a", tmp_path / "cache", 3)
    monkeypatch.setattr(embed_mod, "_cached_embedder", _refuse)
    again, scores4 = _run(pool, tmp_path / "b", tmp_path / "cache", 4)  # a new score entry, cached vectors
    assert again.cache_misses >= 1  # knn_distance k=4 was scored, not read from the score cache
    assert again.selected.tolist() == first.selected.tolist()  # the same cached vectors under kcenter
    # k=4's nearest neighbour is k=3's: the same vectors and the same search
    np.testing.assert_array_equal(scores4["knn_distance.nearest"], scores3["knn_distance.nearest"])
    assert not np.array_equal(scores4["knn_distance"], scores3["knn_distance"])
    monkeypatch.undo()
    fresh, scores_fresh = _run(pool, tmp_path / "c", tmp_path / "cache-fresh", 4)
    pd.testing.assert_frame_equal(scores4, scores_fresh)  # cached vectors = freshly computed ones


def test_the_local_engine_scores_knn_criteria_from_vectors_not_the_pools_texts(pool, tmp_path, monkeypatch):
    """On this process's engine a pool criterion that scores from embeddings gets the pool's vectors read back
    from the embeddings cache by key (the shards' rows put there as they are read), not the pool's table:
    the run keeps no shard table, and its scores are the criterion's own call over the whole pool
    (read independently, with its own cache)."""
    import json

    from thresher.criteria.diversity import _PoolCriterion
    from thresher.pipeline import scoring
    from thresher.registry import CRITERIA

    rows = pd.DataFrame([json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines()])
    want = CRITERIA.get("semdedup").obj(cache_dir=str(tmp_path / "own"), eps=0.2)(rows[["id", "instruction",
                                                                                          "output"]])  # fmt: skip
    kept: list = []
    real_add = scoring._Rows.add

    def add(self, shard, tabs):
        real_add(self, shard, tabs)
        kept.append(len(self.st.pool_tables))

    monkeypatch.setattr(scoring._Rows, "add", add)
    monkeypatch.setattr(_PoolCriterion, "__call__", lambda *a, **k: _refuse())  # not over a pool table
    cfg = PipelineConfig(data=str(pool), out=str(tmp_path / "o"), criteria=[{"name": "semdedup",
                         "options": {"eps": 0.2}}], k=8, shard_size=25, quiet=True, report=False)  # fmt: skip
    got = pd.read_parquet(run_pipeline(cfg).scores_path)
    assert kept == [0, 0, 0]  # three shards read, no table kept
    for col in ("semdedup", "semdedup.keep", "semdedup.cluster", "semdedup.reason"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=col)


def test_the_ray_whole_pool_task_scores_from_vectors_without_building_the_pool(pool, tmp_path, monkeypatch):
    """Under Ray the whole-pool task gets the pieces of the split tables the workers read: a criterion that
    scores from embeddings reads the pieces a piece at a time into keys and vectors, never assembling the
    pool's table, and scores as its own call over that table does (the pieces' rows are in the cache already,
    as the workers put them there)."""
    import json

    from thresher.engines import ray_engine
    from thresher.registry import CRITERIA

    rows = pd.DataFrame([json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines()])
    halves = [rows.iloc[:35].reset_index(drop=True), rows.iloc[35:].reset_index(drop=True)]
    # three split tables; the pieces (rows of each, in pool order) out of order within a table, as shards give
    tables = (halves[0], halves[0].drop(index=[0, 1, 3, 7]).reset_index(drop=True), halves[1])
    idxs = [np.array([3, 0, 7, 1]), np.arange(31)[::-1], np.arange(25)]
    pieces = [t.iloc[ix] for t, ix in zip(tables, idxs)]
    ids = [str(i) for p in pieces for i in p["id"].tolist()]
    whole = pd.concat(pieces, ignore_index=True)[["id", "instruction", "output"]]
    cls = CRITERIA.get("knn_distance").obj
    opts = cls(cache_dir=str(tmp_path / "emb"), k=4).options
    want = cls(cache_dir=str(tmp_path / "emb"), k=4)(whole)  # (the same cache: the same vectors, not re-encoded)
    monkeypatch.setattr(ray_engine, "assemble", lambda *a: _refuse())
    got = ray_engine._score_whole(cls, opts, None, None, None, [ids[:10], ids[10:]], idxs, *tables)
    assert got["id"].tolist() == ids
    for col in ("knn_distance", "knn_distance.nearest", "knn_distance.reason"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy(), err_msg=col)


def test_a_rerun_with_cached_scores_and_a_pruned_embeddings_cache_loads_no_embedder(pool, tmp_path, monkeypatch):
    """The embeddings cache pruned (`thresher cache prune --criterion embeddings`, or by age: a rerun whose
    scores are cached never reads it), the score cache kept: the rerun reads the cached knn_distance scores
    and encodes nothing (it encoded the whole pool again, 130.6 s against 5.0 s on 3,000 rows, because the
    shard pass filled the embeddings cache before the pool's key said the scores were cached). With the
    score entry gone too, the rows are encoded once and the scores are the first run's."""
    import shutil

    def run(out, k):
        cfg = PipelineConfig(data=str(pool), out=str(out), cache_dir=str(tmp_path / "cache"),
                             criteria=[{"name": "knn_distance", "options": {"k": 3}}], k=k, shard_size=25,
                             quiet=True, report=False)  # fmt: skip
        res = run_pipeline(cfg)
        return res, pd.read_parquet(res.scores_path).set_index("id")["knn_distance"]

    first, want = run(tmp_path / "a", 8)
    shutil.rmtree(tmp_path / "cache" / "embeddings")
    monkeypatch.setattr(embed_mod, "_cached_embedder", lambda *a: pytest.fail("an embedder was loaded: scores cached"))
    again, got = run(tmp_path / "b", 5)
    assert again.cache_misses == 0
    pd.testing.assert_series_equal(got, want)
    assert again.selected.tolist() == first.selected.tolist()[:5]
    assert not list((tmp_path / "cache").glob(".rows*"))  # the run's spill went with its row store
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "cache" / "knn_distance")
    third, got3 = run(tmp_path / "c", 8)
    assert third.cache_misses == 1
    pd.testing.assert_series_equal(got3, want)
    assert (tmp_path / "cache" / "embeddings").is_dir()


@pytest.mark.ray
def test_under_ray_a_rerun_with_cached_scores_embeds_nothing_and_a_miss_fills_on_the_workers(
    pool, tmp_path, ray_cluster
):
    """Under Ray the workers fill the embeddings cache as they score the shards, the pool embedded in
    parallel; on a rerun (the criterion's score cache holds entries) that fill waits for the pool's key:
    with the scores cached nothing is embedded (the pruned cache stays empty: 43.8 s against 13.8 s on 600
    rows with one worker), and on a miss (another k) the workers embed the pool in a second pass before
    the whole-pool task reads the vectors."""
    import shutil

    def run(out, k_nn, k=8):
        crit = [{"name": "knn_distance", "options": {"k": k_nn}}]
        ray = {"engine": "ray", "engine_options": {"workers": 1}}
        cfg = PipelineConfig(data=str(pool), out=str(out), cache_dir=str(tmp_path / "cache"), criteria=crit, k=k,
                             shard_size=25, quiet=True, report=False, **ray)  # fmt: skip
        res = run_pipeline(cfg)
        return res, pd.read_parquet(res.scores_path).set_index("id")

    emb = tmp_path / "cache" / "embeddings"
    first, want = run(tmp_path / "a", 3)
    assert emb.is_dir()
    shutil.rmtree(emb)
    again, got = run(tmp_path / "b", 3, k=5)
    assert again.cache_misses == 0 and not emb.exists()  # nothing was embedded
    pd.testing.assert_series_equal(got["knn_distance"], want["knn_distance"])
    fourth, got4 = run(tmp_path / "c", 4)  # a miss: the pool is embedded on the workers, then scored
    assert fourth.cache_misses == 1 and emb.is_dir()
    np.testing.assert_array_equal(got4["knn_distance.nearest"], want["knn_distance.nearest"])
    assert got4["knn_distance"].notna().all() and not np.array_equal(got4["knn_distance"], want["knn_distance"])
