"""A token budget counted with the scoring model's tokenizer (thresher.pipeline.lm_tokens): the counts
are made where each shard is read, while it is scored (this process, or the Ray worker that reads
it), so the input is read once and a Ray driver reads no row for them; every engine selects the same
rows, whose counts equal the tokenizer's own on the rendered rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import save_tiny_lm, write_bigbench_head
from thresher.io.readers import Source
from thresher.models.loader import load_tokenizer
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.pipeline.lm_tokens import TOKENS_LM, ModelTokenCounter
from thresher.render import render_sample

N = 60


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory) -> Path:
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", N)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(save_tiny_lm(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture
def reads(monkeypatch) -> list:
    """Each pass this process makes over an input (``Source.shards``), recorded."""
    seen: list = []
    shards = Source.shards

    def counted(self):
        seen.append(str(self.path))
        yield from shards(self)

    monkeypatch.setattr(Source, "shards", counted)
    return seen


def run(pool, out, model, cache, **kw):
    crit = [{"name": "perplexity", "options": {"model": model, "max_length": 256, "device": "cpu"}}]
    cfg = PipelineConfig(data=str(pool), out=str(out), cache_dir=str(cache), criteria=crit, tokens=4000,
                         shard_size=16, quiet=True, report=False, **kw)  # fmt: skip
    res = run_pipeline(cfg)
    return res, pd.read_parquet(res.scores_path)


def oracle_counts(pool: Path, model: str) -> np.ndarray:
    """The tokenizer on each row's rendered text (alpaca template), as a user would count."""
    tok = load_tokenizer(model)
    rows = pd.read_json(pool, lines=True, dtype=False)
    out = []
    for row in rows.to_dict("records"):
        r = render_sample(row, "alpaca", tok, sid=str(row["id"]))
        out.append(len(tok(r.text, add_special_tokens=not r.special_in_text)["input_ids"]))
    return np.asarray(out, dtype=np.float64)


def test_counted_while_scoring_the_input_read_once(pool, model, tmp_path, reads):
    res, s = run(pool, tmp_path / "o", model, tmp_path / "c")
    assert len(reads) == 1  # the scoring pass; no second pass for the counts
    np.testing.assert_array_equal(s["tokens"].to_numpy(), oracle_counts(pool, model))
    sel = s[s["selected"]].sort_values("rank")
    assert 0 < len(sel) < N and sel["tokens"].sum() <= 4000
    assert res.manifest["budget"]["selected_tokens"] == int(sel["tokens"].sum())  # the budget's use, in the manifest
    assert len(list((tmp_path / "c" / TOKENS_LM).glob("*.parquet"))) == 4  # one entry per shard of 16
    reads.clear()
    again, s2 = run(pool, tmp_path / "o2", model, tmp_path / "c")
    assert again.selected.tolist() == res.selected.tolist() and s2["tokens"].tolist() == s["tokens"].tolist()


def test_a_lost_entry_is_counted_again_while_scoring(pool, model, tmp_path, reads):
    res, s = run(pool, tmp_path / "o", model, tmp_path / "c")
    lost = sorted((tmp_path / "c" / TOKENS_LM).glob("*.parquet"))[1]
    lost.unlink()
    reads.clear()
    again, s2 = run(pool, tmp_path / "o2", model, tmp_path / "c")
    assert again.selected.tolist() == res.selected.tolist() and s2["tokens"].tolist() == s["tokens"].tolist()
    assert lost.exists() and len(reads) == 1


def test_the_counter_a_worker_runs(model, pool):
    table = pd.read_json(pool, lines=True, dtype=False).head(5)
    got = ModelTokenCounter(model)(table)
    assert got["id"].tolist() == table["id"].astype(str).tolist()
    np.testing.assert_array_equal(got["tokens"].to_numpy(), oracle_counts(pool, model)[:5])
    assert ModelTokenCounter(model)(table.head(0)).shape == (0, 2)


def test_ray_workers_count_and_the_driver_reads_no_row(pool, model, tmp_path, reads, ray_cluster):
    local, s = run(pool, tmp_path / "local", model, tmp_path / "c1")
    reads.clear()
    res, s2 = run(pool, tmp_path / "ray", model, tmp_path / "c2", engine="ray", engine_options={"workers": 2})
    assert res.manifest["engine_run"]["read_on_workers"] and reads == []
    assert res.selected.tolist() == local.selected.tolist() and s2["tokens"].tolist() == s["tokens"].tolist()
    assert len(list((tmp_path / "c2" / TOKENS_LM).glob("*.parquet"))) == 4


def test_counts_the_workers_cannot_make_take_one_pass_here(pool, model, tmp_path, reads, ray_cluster, monkeypatch):
    """A model the workers cannot rebuild (a loaded object; here: no worker counter): after scoring,
    this process reads the input once more and counts the shards."""
    import thresher.pipeline.scoring as scoring

    local, s = run(pool, tmp_path / "local", model, tmp_path / "c1")
    monkeypatch.setattr(scoring, "worker_spec", lambda cfg, plan: None)
    reads.clear()
    res, s2 = run(pool, tmp_path / "ray", model, tmp_path / "c2", engine="ray", engine_options={"workers": 1})
    assert res.manifest["engine_run"]["read_on_workers"] and len(reads) == 1
    assert res.selected.tolist() == local.selected.tolist() and s2["tokens"].tolist() == s["tokens"].tolist()
