"""A selector that reads embeddings (kcenter, repr_filter, ...) gets them from the run's row store: each
shard's vectors are appended to a file as the shard is read and handed to the selector as one read-only
memory map (not a list of arrays concatenated on the heap, then copied for the eligible rows). The
selection is the selector's own call on the same vectors held in memory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import thresher.pipeline.run as run_mod
from conftest import write_bigbench_head
from thresher.embed import embed_table
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.registry import SELECTORS


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 70)


@pytest.fixture(scope="module")
def vectors(pool, tmp_path_factory):
    """The pool's vectors computed apart from any run (its own cache folder)."""
    rows = pd.DataFrame([json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines()])
    return rows, np.asarray(embed_table(rows, "default", cache_dir=tmp_path_factory.mktemp("emb")))


def _run(pool, tmp_path, monkeypatch, selector, filters=()):
    seen: dict = {}
    real = run_mod.select

    def select(st, selection):
        seen["embeddings"] = st.embeddings
        real(st, selection)

    monkeypatch.setattr(run_mod, "select", select)
    cfg = PipelineConfig(data=str(pool), out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                         criteria=["length"], selector=selector, filters=list(filters), k=9, shard_size=16,
                         quiet=True, report=False)  # fmt: skip
    return run_pipeline(cfg), seen["embeddings"]


@pytest.mark.parametrize("normalize", [True, False])
def test_kcenter_selects_from_the_memory_mapped_embeddings(pool, vectors, tmp_path, monkeypatch, normalize):
    _, emb = vectors
    sel = {"name": "kcenter", "options": {"criterion": "length", "normalize": normalize}}
    res, held = _run(pool, tmp_path, monkeypatch, sel)
    assert isinstance(held, np.memmap) and held.shape == emb.shape and not held.flags.writeable
    np.testing.assert_allclose(held, emb, rtol=0, atol=5e-5)  # (the embedder batches shards differently: float noise)
    scores = pd.read_parquet(res.scores_path)
    frame = pd.DataFrame({"length": scores["length"].to_numpy(np.float64)})
    want = SELECTORS.get("kcenter").obj(frame, 9, embeddings=np.array(held), **sel["options"])
    assert res.selected.tolist() == np.asarray(want).tolist()


def test_a_filtered_selection_gets_the_eligible_rows_vectors(pool, vectors, tmp_path, monkeypatch):
    _, emb = vectors
    sel = {"name": "kcenter", "options": {"criterion": "length"}}
    res, held = _run(pool, tmp_path, monkeypatch, sel, filters=["length>=200"])
    scores = pd.read_parquet(res.scores_path)
    elig = np.flatnonzero(scores["length"].to_numpy() >= 200)
    assert 9 < len(elig) < len(scores)
    frame = pd.DataFrame({"length": scores["length"].to_numpy(np.float64)[elig]})
    want = SELECTORS.get("kcenter").obj(frame, 9, embeddings=np.array(held)[elig], criterion="length")
    assert res.selected.tolist() == elig[np.asarray(want)].tolist()
    assert set(res.selected.tolist()) <= set(elig.tolist())


@pytest.mark.parametrize("name", ["car", "cluster_balanced", "facility_location", "kcenter", "repr_filter"])
def test_every_embedding_selector_reads_the_map_without_writing_it(pool, tmp_path, monkeypatch, name):
    """Each selector that needs embeddings runs on the read-only map (a write would raise) and selects
    as on a writable copy of it (``necessity`` reads the MoDS criterion's columns: tests/pipeline/test_mods.py)."""
    sel = {"name": name, "options": {"criterion": "length"}}
    res, held = _run(pool, tmp_path, monkeypatch, sel)
    assert isinstance(held, np.memmap) and not held.flags.writeable
    frame = pd.DataFrame({"length": pd.read_parquet(res.scores_path)["length"].to_numpy(np.float64)})
    want = SELECTORS.get(name).obj(frame, 9, embeddings=np.array(held), criterion="length")
    assert res.selected.tolist() == np.asarray(want).tolist() and len(res.selected) == 9
