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
