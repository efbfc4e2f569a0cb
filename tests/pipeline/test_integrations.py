"""thresher's scorers inside other frameworks, as the README shows them: Ray Data ``map_batches``,
Hugging Face ``Dataset.map(batched=True)``, a Data-Juicer filter and a NeMo Curator stage.

The criterion is ``length`` with ``unit="chars"`` (model-free, so fast): the oracle is
``len(instruction) + len(output)`` of each row. Data-Juicer and NeMo Curator are not thresher
dependencies: their tests run where the packages are installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.engines import ScoreColumns


@pytest.fixture(scope="module")
def rows(bigbench_path, tmp_path_factory) -> list[dict]:
    p = write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("int") / "pool.jsonl", 60)
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]


def oracle(rows: list[dict]) -> dict:
    return {r["id"]: float(len(r["instruction"]) + len(r["output"])) for r in rows}


def check(df: pd.DataFrame, rows: list[dict]) -> None:
    want = oracle(rows)
    assert sorted(df["id"]) == sorted(want)
    assert {c for c in df.columns} >= {"id", "task", "instruction", "output", "length", "length.output"}
    got = dict(zip(df["id"], df["length"].astype(float)))
    assert got == want


@pytest.fixture
def ray_local(ray_cluster):
    return ray_cluster


@pytest.mark.ray
def test_ray_data_map_batches_with_constructor_kwargs(ray_local, rows):
    ds = ray_local.data.from_pandas(pd.DataFrame(rows))
    out = ds.map_batches(
        ScoreColumns,
        fn_constructor_args=("length",),
        fn_constructor_kwargs={"unit": "chars"},  # the default unit is tokens: the kwargs must arrive
        batch_format="pandas",
        batch_size=16,
        concurrency=1,
    ).to_pandas()
    check(out, rows)
    kept = ray_local.data.from_pandas(out).filter(lambda r: r["length"] <= 60).to_pandas()
    assert sorted(kept["id"]) == sorted(i for i, v in oracle(rows).items() if v <= 60)


def test_hf_dataset_map_batched(rows):
    datasets = pytest.importorskip("datasets", reason="needs `pip install 'thresher[hf]'`")
    ds = datasets.Dataset.from_list(rows)
    score = ScoreColumns("length", unit="chars")
    check(ds.map(score, batched=True, batch_size=16).to_pandas(), rows)
    check(ds.with_format("pandas").map(score, batched=True, batch_size=16).with_format(None).to_pandas(), rows)
    streamed = datasets.Dataset.from_list(rows).to_iterable_dataset(num_shards=2)
    check(pd.DataFrame(list(streamed.map(score, batched=True, batch_size=16))), rows)


def test_hf_dataset_map_scores_chat_rows():
    datasets = pytest.importorskip("datasets", reason="needs `pip install 'thresher[hf]'`")
    msgs = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    ds = datasets.Dataset.from_list([{"messages": msgs}, {"messages": msgs[1:]}])
    out = ds.map(ScoreColumns("length", unit="chars"), batched=True).to_pandas()
    assert out["length.output"].tolist() == [6.0, 6.0] and (out["length"] >= 6 + len("Capital of France?")).all()


def test_data_juicer_filter(rows):
    pytest.importorskip("data_juicer", reason="Data-Juicer is not installed (pip install py-data-juicer)")
    from data_juicer.core.data import NestedDataset
    from data_juicer.ops.base_op import OPERATORS, Filter
    from data_juicer.utils.constant import Fields
    from datasets import Dataset

    @OPERATORS.register_module("thresher_length_filter_test")
    class ThresherLengthFilter(Filter):
        _batched_op = True  # Data-Juicer calls the *_batched methods only with this set

        def __init__(self, max_length: float = 60.0, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.score = ScoreColumns("length", unit="chars")
            self.max_length = max_length

        def compute_stats_batched(self, samples):
            df = pd.DataFrame({"instruction": samples["instruction"], "output": samples["output"]})
            for stats, v in zip(samples[Fields.stats], self.score(df)["length"].tolist()):
                stats["thresher_length"] = v
            return samples

        def process_batched(self, samples):
            return [s["thresher_length"] <= self.max_length for s in samples[Fields.stats]]

    out = ThresherLengthFilter(max_length=60.0, batch_size=16, num_proc=1).run(NestedDataset(Dataset.from_list(rows)))
    assert out["id"] == [r["id"] for r in rows if oracle([r])[r["id"]] <= 60]


def test_nemo_curator_stage(rows):
    pytest.importorskip("nemo_curator", reason="NeMo Curator is not installed (pip install nemo-curator)")
    from nemo_curator.stages.base import ProcessingStage
    from nemo_curator.tasks import DocumentBatch

    @dataclass
    class ThresherScore(ProcessingStage[DocumentBatch, DocumentBatch]):
        criterion: str = "length"
        options: dict = field(default_factory=dict)
        name: str = "thresher_score"

        def inputs(self):
            return ["data"], ["instruction", "output"]

        def outputs(self):
            return ["data"], [self.criterion]

        def setup(self, _worker_metadata=None):
            self._score = ScoreColumns(self.criterion, **self.options)

        def process(self, batch):
            df = self._score(batch.to_pandas())
            return DocumentBatch(dataset_name=batch.dataset_name, data=df, _metadata=batch._metadata,
                                 _stage_perf=batch._stage_perf)  # fmt: skip

    stage = ThresherScore(options={"unit": "chars"})
    stage.setup()
    out = stage.process(DocumentBatch(dataset_name="pool", data=pd.DataFrame(rows)))
    check(out.to_pandas(), rows)
    assert np.isfinite(out.to_pandas()["length"]).all()


def test_readme_integration_snippets_match_the_tests():
    """The README shows the adapters these tests run (Data-Juicer with _batched_op, no Dask API)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert "fn_constructor_kwargs" in readme and "map_batches(ScoreColumns" in readme
    assert "batched=True" in readme
    assert "map_partitions" not in readme and "dask" not in readme.lower()
    if "data_juicer" in readme:
        assert "_batched_op = True" in readme
    if "nemo_curator" in readme:
        assert "ProcessingStage" in readme and 'pd.DataFrame({"instruction": [""]' not in readme
