"""The pipeline's worker-pool path (``start_workers``), in process: the same scores and selection as the
local engine, cache entries written by the workers, and cache keys as the WORKERS resolve them (a GPU
worker resolves ``dtype="auto"`` to bf16 where a CPU driver would say fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import write_bigbench_head
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.pipeline.workers import LocalPool, ShardWorker
from thresher.registry import CRITERIA, ENGINES

PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")


class PooledInProcess:
    """An engine whose worker pool is one in-process ShardWorker (the Ray engine's contract, no Ray)."""

    salt = ""  # appended to every criterion key by the "worker", as a worker with another device would

    def make_scorer(self, cls, options):
        return cls(**options)

    def score(self, scorer, table, name):
        return scorer(table)

    def score_pool(self, scorer, table, name):
        return scorer(table)

    def start_workers(self, worker_cls, specs, cache_root, *worker_args):
        worker = worker_cls(specs, cache_root, None, *worker_args)
        PooledInProcess.worker = worker
        keys = worker.criterion_keys
        worker.criterion_keys = lambda: {c: k + self.salt for c, k in keys().items()}
        return LocalPool(worker)


@pytest.fixture
def pooled():
    ENGINES.register("test_pooled", doc="in-process worker pool (tests)")(PooledInProcess)
    yield PooledInProcess
    ENGINES.unregister("test_pooled")
    PooledInProcess.salt = ""


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 90)


def _cfg(pool, out, engine) -> PipelineConfig:
    return PipelineConfig(data=str(pool), out=str(out), criteria=["fake_len", "mtld"], plugins=[PLUGIN],
                          selector={"name": "topk", "options": {"criterion": "fake_len"}}, k=9, engine=engine,
                          shard_size=25, quiet=True, report=False)  # fmt: skip


def test_worker_pool_path_matches_local_and_uses_the_workers_keys(pool, tmp_path, pooled):
    local = run_pipeline(_cfg(pool, tmp_path / "local", "local"))
    pooled.salt = "-on-the-worker"
    res = run_pipeline(_cfg(pool, tmp_path / "pooled", "test_pooled"))
    pd.testing.assert_frame_equal(pd.read_parquet(res.scores_path), pd.read_parquet(local.scores_path))
    assert res.selected.tolist() == local.selected.tolist()
    keys = {c["name"]: c["cache_key"] for c in res.manifest["criteria"]}
    want = CRITERIA.get("mtld").obj.cache_key_for() + "-on-the-worker"
    assert keys["mtld"] == want and keys["fake_len"].endswith("-on-the-worker")
    assert res.manifest["engine_run"]["worker_processes"] == 1


def test_the_workers_get_the_runs_checkpoint_interval(pool, tmp_path, pooled):
    cfg = _cfg(pool, tmp_path / "pooled", "test_pooled")
    cfg.checkpoint_s = 7.5
    run_pipeline(cfg)
    assert pooled.worker.checkpoint_s == 7.5


def test_a_worker_resumes_mid_shard_from_its_checkpoint(pool, tmp_path, pooled):
    ids = [json.loads(line)["id"] for line in Path(pool).read_text().splitlines()]

    def cfg(**fake):
        crit = [{"name": "fake_len", "options": {"chunk_rows": 10, "log": str(tmp_path / "calls.log"), **fake}}]
        return PipelineConfig(data=str(pool), out=str(tmp_path / "o"), criteria=crit, plugins=[PLUGIN], k=5,
                              engine="test_pooled", shard_size=90, checkpoint_s=1e-9, quiet=True, report=False,
                              overwrite=True)  # fmt: skip

    with pytest.raises(RuntimeError, match="failing on"):
        run_pipeline(cfg(fail_on=ids[45]))  # chunks of 10 rows: 40 scored and saved
    res = run_pipeline(cfg())
    rows = sum(int(line.split()[1]) for line in (tmp_path / "calls.log").read_text().splitlines())
    assert rows == 90  # 40, then the 50 the checkpoint lacked
    assert "resumed 40 row-criterion pairs from checkpoints" in (tmp_path / "o" / "run.log").read_text()
    assert len(res.selected) == 5


def test_worker_keys_resolve_auto_dtype_where_the_worker_runs(monkeypatch, tiny_lm_dir):
    cls = CRITERIA.get("ifd").obj
    spec = {"ifd": _spec(cls, {"model": str(tiny_lm_dir)})}
    on_cpu = ShardWorker(spec, "/nonexistent").criterion_keys()["ifd"]
    assert on_cpu == cls.cache_key_for(model=str(tiny_lm_dir))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # this process now "has" a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    on_gpu = ShardWorker(spec, "/nonexistent").criterion_keys()["ifd"]
    assert on_gpu != on_cpu and on_gpu == cls.cache_key_for(model=str(tiny_lm_dir), dtype="bfloat16")
    assert on_cpu == cls.cache_key_for(model=str(tiny_lm_dir), dtype="float32")


def _spec(cls, options):
    from thresher.pipeline.workers import CriterionSpec

    return CriterionSpec(cls.NAME, cls.NAME, None, cls, options)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    from conftest import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("tiny") / "model")
