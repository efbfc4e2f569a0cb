"""The Ray engine (Ray Data map_batches over the scorer classes) gives the local engine's results."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from thresher.pipeline import PipelineConfig, run_pipeline

ray = pytest.importorskip("ray", reason="the Ray engine needs `pip install 'ray[data]'`")
PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")


@pytest.mark.ray
def test_ray_engine_matches_local(bigbench_path, tmp_path):
    p = tmp_path / "pool.jsonl"
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as src, open(p, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i == 120:
                break
            dst.write(line)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        common = dict(
            data=str(p),
            criteria=["fake_len"],
            selector={"name": "topk", "options": {"criterion": "fake_len"}},
            k=10,
            plugins=[PLUGIN],
            quiet=True,
            report=False,
            shard_size=120,
        )
        a = run_pipeline(
            PipelineConfig(out=str(tmp_path / "ray"), engine="ray", engine_options={"batch_size": 16}, **common)
        )
        b = run_pipeline(PipelineConfig(out=str(tmp_path / "local"), **common))
        # the README pattern: a scorer dropped into the user's own Ray Data pipeline
        from thresher.engines import ScoreColumns

        df = pd.read_json(p, lines=True).head(40)
        got = (
            ray.data.from_pandas(df)
            .map_batches(
                ScoreColumns, fn_constructor_args=("length",), batch_format="pandas", batch_size=16, concurrency=1
            )
            .to_pandas()
        )
    finally:
        ray.shutdown()
    assert a.selected.tolist() == b.selected.tolist()
    sa, sb = pd.read_parquet(a.scores_path), pd.read_parquet(b.scores_path)
    pd.testing.assert_frame_equal(sa, sb)
    want = ScoreColumns("length")(df)
    got = got.set_index("id").loc[want["id"]].reset_index()
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)  # Ray returns Arrow strings
