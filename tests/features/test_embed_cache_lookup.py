"""thresher.embed: cached rows are read without loading the embedder (the spec's alias names
its store), the per-process store reads only the parts it has not seen, and fill_* writes the
rows the cache lacks without reading the ones it holds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import thresher.embed as embed_mod
from thresher.criteria.base import embedder_fingerprint
from thresher.criteria.diversity import KNNDistance
from thresher.embed import embed_table, embed_texts, fill_embeddings, fill_table, get_embedder, sample_key
from thresher.embed.store import EmbeddingStore, known_store, open_store

TEXTS = ["a cat sat on the mat", "the stock market crashed", "good morning", "", "x " * 30, "a cat sat on the mat"]
IDS = [f"r{i}" for i in range(len(TEXTS))]


@pytest.fixture
def loads(monkeypatch):
    """Every encoder load of this test (the process's loaded encoders are forgotten first)."""
    seen: list[tuple] = []
    orig = embed_mod._cached_embedder.__wrapped__

    def counting(spec, device):
        seen.append((spec, device))
        return orig(spec, device)

    monkeypatch.setattr(embed_mod, "_cached_embedder", counting)
    return seen


def test_cached_rows_are_read_without_loading_the_embedder(tmp_path, loads):
    first = embed_texts(TEXTS, "default", cache_dir=tmp_path, ids=IDS)
    assert len(loads) == 1
    again = embed_texts(TEXTS, "default", cache_dir=tmp_path, ids=IDS)
    assert len(loads) == 1  # every row cached: the alias named the store, no model was loaded
    np.testing.assert_array_equal(first, again)
    sub = embed_texts(TEXTS[1:3], "default", cache_dir=tmp_path, ids=IDS[1:3])
    np.testing.assert_array_equal(sub, first[1:3])
    assert len(loads) == 1
    more = embed_texts(TEXTS + ["a new row"], "default", cache_dir=tmp_path, ids=IDS + ["new"])
    assert len(loads) == 2  # one row missing: now the model is needed
    np.testing.assert_array_equal(more[:-1], first)
    empty = embed_texts([], "default", cache_dir=tmp_path)
    assert empty.shape == (0, 384) and len(loads) == 2
    direct = embed_texts(["a new row"], "default")  # no cache: loads
    assert np.abs(more[-1] - direct[0]).max() < 2e-3  # float16 storage only


def test_alias_records_the_loaded_encoder(tmp_path):
    embed_texts(TEXTS[:2], "default", cache_dir=tmp_path, ids=IDS[:2])
    enc = get_embedder("default")
    assert known_store(tmp_path, embedder_fingerprint("default")) == (enc.fingerprint, enc.dim)
    assert known_store(tmp_path, "st:unknown:v1") is None
    (alias,) = (tmp_path / "aliases").glob("*.json")
    alias.write_text("{not json")
    assert known_store(tmp_path, embedder_fingerprint("default")) is None  # unreadable: load the model


def test_stale_alias_is_replaced_when_a_row_is_missing(tmp_path, loads):
    spec = embedder_fingerprint("default")
    embed_texts(TEXTS, "default", cache_dir=tmp_path, ids=IDS)
    (alias,) = (tmp_path / "aliases").glob("*.json")
    alias.write_text(json.dumps({"spec": spec, "fingerprint": "st:some-other-encoder", "dim": 7}))
    got = embed_texts(TEXTS, "default", cache_dir=tmp_path, ids=IDS)
    # the named store was empty: the encoder was loaded, its own store read (every row cached there)
    assert got.shape == (6, 384) and len(loads) == 2
    np.testing.assert_array_equal(got, embed_texts(TEXTS, "default", cache_dir=tmp_path, ids=IDS))
    assert known_store(tmp_path, spec)[0] == get_embedder("default").fingerprint


def test_fill_reads_nothing_cached_and_encodes_only_missing_rows(tmp_path, loads):
    df = pd.DataFrame({"id": IDS, "instruction": TEXTS, "output": ["o"] * len(TEXTS)})
    assert fill_table(df, "default", cache_dir=tmp_path) == 6
    assert fill_table(df, "default", cache_dir=tmp_path) == 0
    assert len(loads) == 1  # the second fill found every row: no model
    assert fill_embeddings(["one", "two", "one"], "default", cache_dir=tmp_path) == 2  # duplicates once
    np.testing.assert_array_equal(
        embed_table(df, "default", cache_dir=tmp_path), embed_table(df, "default", cache_dir=tmp_path)
    )
    ref = embed_table(df, "default")
    assert np.abs(embed_table(df, "default", cache_dir=tmp_path) - ref).max() < 2e-3


def test_process_store_reads_new_parts_and_rereads_after_a_deletion(tmp_path):
    a = open_store(tmp_path, "fp")
    assert open_store(tmp_path, "fp") is a and open_store(tmp_path, "fp", dtype="float32") is not a
    k1 = [sample_key(i, "t") for i in range(3)]
    a.put(k1, np.ones((3, 4), np.float32))
    other = EmbeddingStore(tmp_path, "fp")  # another process writing the same folder
    k2 = [sample_key(i, "u") for i in range(2)]
    p2 = other.put(k2, np.full((2, 4), 2.0, np.float32))
    found, vecs = a.lookup(k1 + k2, 4)
    assert found.all() and vecs[3:].tolist() == [[2.0] * 4] * 2  # the part written since is read
    assert a.has(k1 + ["nope"]).tolist() == [True, True, True, False]
    p2.with_name(p2.name[: -len(".npy")] + ".keys.json").unlink()
    p2.unlink()
    assert a.has(k2).tolist() == [False, False]  # a part is gone: the index is read again
    assert a.has(k1).all() and len(a) == 3


def test_has_reads_no_vectors(tmp_path):
    s = EmbeddingStore(tmp_path, "fp")
    keys = [sample_key(i, "t") for i in range(4)]
    path = s.put(keys, np.ones((4, 3), np.float32))
    path.write_bytes(b"not an array")  # has() never opens the vectors
    fresh = EmbeddingStore(tmp_path, "fp")
    assert fresh.has(keys[:2] + ["x"]).tolist() == [True, True, False]
    with pytest.raises(ValueError):
        fresh.lookup(keys[:1], 3)


def test_knn_distance_on_a_full_cache_loads_no_model(tmp_path, loads):
    df = pd.DataFrame({"id": IDS[:5], "instruction": TEXTS[:5], "output": ["a", "b", "c", "d", "e"]})
    first = KNNDistance(cache_dir=str(tmp_path), k=2)(df)
    n = len(loads)
    again = KNNDistance(cache_dir=str(tmp_path), k=2)(df)
    assert len(loads) == n
    pd.testing.assert_frame_equal(first, again)
    uncached = KNNDistance(k=2)(df)
    np.testing.assert_allclose(first["knn_distance"], uncached["knn_distance"], atol=5e-3)
