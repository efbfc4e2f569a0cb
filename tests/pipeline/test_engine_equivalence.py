"""Engine batching never splits a pool-scoped criterion (issue 10): a criterion registered with
``scope="pool"`` scores a row against the whole pool, so ``LocalEngine(batch_size=...)`` (and the Ray
engine's ``map_batches``) must hand it the whole pool in one call. Checked on real BIG-bench rows
against the unbatched run and against an independent brute-force kNN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.embed import embed_texts, sample_texts
from thresher.engines import Engine, LocalEngine, get_engine
from thresher.io import Source
from thresher.pipeline import PipelineConfig, run_pipeline

N = 240
COLUMNS = ["knn_distance", "knn_distance.nearest", "semdedup", "semdedup.keep", "semdedup.cluster"]


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", N)


def _scores(pool, out, emb_cache, **engine_options) -> pd.DataFrame:
    # one embeddings cache for both criteria and both runs: the rows are embedded once (a slow CPU step)
    crit = [{"name": c, "options": {"cache_dir": str(emb_cache)}} for c in ("knn_distance", "semdedup")]
    res = run_pipeline(
        PipelineConfig(
            data=str(pool),
            out=str(out),
            criteria=crit,
            score_only=True,
            shard_size=100,  # the pool arrives in 3 shards; pool-scoped criteria still see all of it
            engine="local",
            engine_options=engine_options,
            quiet=True,
            report=False,
        )
    )
    return pd.read_parquet(res.scores_path).sort_values("id").reset_index(drop=True)


def test_local_batch_size_gives_the_unbatched_pool_scores(pool, tmp_path):
    whole = _scores(pool, tmp_path / "whole", tmp_path / "emb")
    batched = _scores(pool, tmp_path / "b64", tmp_path / "emb", batch_size=64)
    assert len(whole) == N and whole["knn_distance"].notna().all()
    for c in COLUMNS:
        np.testing.assert_array_equal(batched[c].to_numpy(), whole[c].to_numpy(), err_msg=c)
    assert (whole["semdedup.keep"] == 0).any() or whole["semdedup.cluster"].nunique() > 1

    # the unbatched scores are the pool's: brute-force kNN-6 over all the embeddings (float64 numpy;
    # the vectors the criteria read, from the embeddings cache)
    rows = Source(str(pool)).read_all()
    ids = rows["id"].astype(str).tolist()
    emb = embed_texts(sample_texts(rows), "default", cache_dir=tmp_path / "emb", ids=ids).astype(np.float64)
    d2 = np.maximum((emb**2).sum(1)[:, None] + (emb**2).sum(1)[None] - 2 * emb @ emb.T, 0)
    np.fill_diagonal(d2, np.inf)
    want = np.sqrt(np.sort(d2, 1)[:, :6]).mean(1)
    got = whole.set_index("id").loc[rows["id"].astype(str), "knn_distance"].to_numpy()
    # float32 distances of duplicate rows (true distance 0) carry sqrt(float32 cancellation) ~ 5e-4 of noise
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    assert np.abs(got - want).max() < 2e-4


class _CountingScorer:
    """A pool-scoped scorer handle that records the table sizes it was called with."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, table):
        self.calls.append(len(table))
        return pd.DataFrame({"id": table["id"].astype(str), "x": np.full(len(table), float(len(table)))})


def test_engine_score_pool_never_splits():
    table = pd.DataFrame({"id": [str(i) for i in range(200)]})
    eng = get_engine("local", batch_size=64)
    assert isinstance(eng, Engine) and isinstance(eng, LocalEngine)
    sc = _CountingScorer()
    assert eng.score(sc, table, "x")["x"].tolist() == [64.0] * 192 + [8.0] * 8 and sc.calls == [64, 64, 64, 8]
    sc = _CountingScorer()
    assert eng.score_pool(sc, table, "x")["x"].tolist() == [200.0] * 200 and sc.calls == [200]
