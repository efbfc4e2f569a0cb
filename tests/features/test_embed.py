"""thresher.embed: the bundled MiniLM encoder, LM hidden-state pooling, the
embedding store (reuse, atomicity, keys) and centring/whitening/PCA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.embed import (
    EmbeddingStore,
    EmbeddingTransform,
    embed_table,
    embed_texts,
    get_embedder,
    sample_key,
    sample_texts,
)
from thresher.embed.encoders import LMEncoder, default_model_dir

TEXTS = [
    "a cat sat on the mat",
    "a kitten was sitting on a rug",
    "the stock market crashed today",
    "",
    "Translate to French: good morning",
    "x " * 60,
]


@pytest.fixture(scope="module")
def minilm():
    return get_embedder("default")


def test_default_embedder_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    e = embed_texts(TEXTS, "default", batch_size=4)
    assert e.shape == (6, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    ref = SentenceTransformer(str(default_model_dir()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(e, ref, atol=2e-5)  # batching / length sorting changes nothing
    s = e @ e.T
    assert s[0, 1] > s[0, 2] + 0.2  # paraphrase closer than unrelated text


def test_store_reuse_float16_and_keys(tmp_path, minilm, monkeypatch):
    ids = [f"id{i}" for i in range(6)]
    a = embed_texts(TEXTS, minilm, cache_dir=tmp_path, ids=ids)
    calls = []
    orig = minilm.encode
    monkeypatch.setattr(minilm, "encode", lambda t, batch_size=64: calls.append(list(t)) or orig(t, batch_size))
    b = embed_texts(TEXTS, minilm, cache_dir=tmp_path, ids=ids)
    assert calls == []  # all read back from the store
    np.testing.assert_array_equal(a, b)
    fresh = embed_texts(TEXTS, minilm)
    assert np.abs(a - fresh).max() < 2e-3  # float16 storage rounding only
    calls.clear()
    changed = list(TEXTS)
    changed[2] = "bond yields rose sharply"
    c = embed_texts(changed, minilm, cache_dir=tmp_path, ids=ids)
    assert calls == [["bond yields rose sharply"]]  # only the changed sample recomputed
    np.testing.assert_array_equal(c[[0, 1, 3, 4, 5]], a[[0, 1, 3, 4, 5]])
    c32 = embed_texts(TEXTS[:2], minilm, cache_dir=tmp_path / "f32", store_dtype="float32")
    np.testing.assert_allclose(c32, fresh[:2], atol=1e-6)


def test_store_ignores_uncommitted_shards(tmp_path):
    st = EmbeddingStore(tmp_path, "fp-test", dtype="float32")
    keys = [sample_key(i, "t") for i in range(3)]
    vf = st.put(keys, np.arange(6, dtype=np.float32).reshape(3, 2))
    (vf.parent / ".part-x.npy.tmp123").write_bytes(b"garbage")  # a killed writer's leftover
    np.save(vf.parent / "part-orphan.npy", np.ones((1, 2), np.float32))  # vectors without keys file
    again = EmbeddingStore(tmp_path, "fp-test")
    found, v = again.lookup(keys + [sample_key(9, "t")], 2)
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(v[:3], np.arange(6).reshape(3, 2))
    assert len(again) == 3
    with pytest.raises(ValueError, match="keys: 2 keys for 3 vectors"):
        st.put(keys[:2], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingStore(tmp_path, "x", dtype="int8")


def test_duplicate_texts_computed_once(tmp_path, minilm, monkeypatch):
    calls = []
    orig = minilm.encode
    monkeypatch.setattr(minilm, "encode", lambda t, batch_size=64: calls.append(len(t)) or orig(t, batch_size))
    e = embed_texts(["same", "same", "other"], minilm, cache_dir=tmp_path)
    assert calls == [2]
    np.testing.assert_array_equal(e[0], e[1])


def test_embed_inputs_errors(minilm):
    assert embed_texts([], minilm).shape == (0, 384)
    with pytest.raises(ValueError, match="texts: expected a sequence"):
        embed_texts("one string", minilm)
    with pytest.raises(ValueError, match="texts: item 1 is int"):
        embed_texts(["a", 3], minilm)
    with pytest.raises(ValueError, match="ids: 1 ids for 2 texts"):
        embed_texts(["a", "b"], minilm, ids=["x"])
    with pytest.raises(ValueError, match="batch_size"):
        embed_texts(["a"], minilm, batch_size=0)
    with pytest.raises(ValueError, match="embedder: cannot load"):
        get_embedder("/nonexistent/model/folder")
    with pytest.raises(ValueError, match="embedder: expected"):
        get_embedder(3)


def test_sample_texts_and_table(minilm):
    df = pd.DataFrame(
        {"id": ["a", "b"], "instruction": ["Add 2+2", "Say hi"], "input": ["", "politely"], "output": ["4", "Hello!"]}
    )
    assert sample_texts(df) == ["Add 2+2\n4", "Say hi\npolitely\nHello!"]
    conv = pd.DataFrame(
        {
            "id": ["c"],
            "instruction": [""],
            "input": [""],
            "output": [""],
            "conversation": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]],
        }
    )
    assert sample_texts(conv) == ["hi\nhello"]
    e = embed_table(df, minilm)
    np.testing.assert_allclose(e, embed_texts(sample_texts(df), minilm), atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_lm_encoder_pooling_is_batch_invariant(pooling):
    from thresher.models import tiny_causal_lm

    lm = tiny_causal_lm(seed=0, tokenizer="bytes")
    enc = LMEncoder(lm=lm, pooling=pooling)
    texts = ["hello", "a much longer sentence here", "mid size"]
    batched = enc.encode(texts, batch_size=3)
    single = np.stack([enc.encode([t], batch_size=1)[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    # oracle: hidden states of one unpadded sequence
    tok = lm.tokenizer
    ids = tok(texts[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        h = lm.trunk()(input_ids=ids).last_hidden_state[0].float()
    want = h.mean(0) if pooling == "mean" else h[-1]
    np.testing.assert_allclose(batched[1], want.numpy(), atol=1e-4)
    assert enc.fingerprint.startswith("lm:") and pooling in enc.fingerprint
    with pytest.raises(ValueError, match="pooling"):
        LMEncoder(lm=lm, pooling="max")


def test_transform_center_whiten_pca():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 6)) @ np.diag([5, 3, 1, 0.1, 0.05, 0.01]) + 2.0
    c = EmbeddingTransform(center=True).fit_apply(x)
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-5)
    w = EmbeddingTransform(whiten=True).fit_apply(x)
    np.testing.assert_allclose(np.cov(w.T), np.eye(6), atol=1e-3)
    p = EmbeddingTransform(pca=0.95)
    z = p.fit_apply(x)
    assert z.shape[1] == 2 and p.explained.sum() >= 0.95  # 25+9 of 35.0 variance
    assert EmbeddingTransform(pca=3).fit_apply(x).shape[1] == 3
    n = EmbeddingTransform(pca=3, normalize=True).fit_apply(x)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1, atol=1e-5)
    for bad in (0, 1.5, -0.1, "half", True):
        with pytest.raises(ValueError, match="pca"):
            EmbeddingTransform(pca=bad)
    with pytest.raises(ValueError, match="embeddings: contain NaN"):
        EmbeddingTransform().fit(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"embeddings: expected \[N, 6\]"):
        p.apply(np.zeros((2, 5)))


def test_pool_vectors_spill_defers_encoding_to_fill(tmp_path, minilm, monkeypatch):
    """With a spill folder, PoolVectors.add encodes nothing and writes only the rows the cache lacks;
    fill encodes those (the cache then has every row) and the vectors read back are embed_table's."""
    import thresher.embed as embed_mod
    from thresher.embed import fill_table, missing_rows
    from thresher.embed.pool import PoolVectors

    table = pd.DataFrame({"id": [f"r{i}" for i in range(6)], "instruction": TEXTS, "output": ""})
    ids = table["id"].tolist()
    cache = tmp_path / "emb"
    texts = sample_texts(table)
    real = embed_mod._cached_embedder
    monkeypatch.setattr(embed_mod, "_cached_embedder", lambda *a: pytest.fail("encoder loaded"))
    assert missing_rows(texts, "default", cache_dir=cache, ids=ids).all()  # no store yet: no model either
    monkeypatch.setattr(embed_mod, "_cached_embedder", real)
    fill_table(table.iloc[:2], "default", cache_dir=cache)
    np.testing.assert_array_equal(missing_rows(texts, "default", cache_dir=cache, ids=ids), [0, 0, 1, 1, 1, 1])
    spec = ("default", "cpu", str(cache), 4)
    vec = PoolVectors({"a": spec, "b": spec}, spill=tmp_path / "spill")
    monkeypatch.setattr(embed_mod, "_cached_embedder", lambda *a: pytest.fail("encoder loaded in add"))
    vec.add(table.iloc[:3], ids[:3])
    vec.add(table.iloc[3:], ids[3:])
    monkeypatch.setattr(embed_mod, "_cached_embedder", real)
    assert len((tmp_path / "spill" / "rows-0.jsonl").read_text().splitlines()) == 4
    assert vec.fill("a") == 4 and vec.fill("b") == 0  # one embedder: its rows encoded once
    assert not (tmp_path / "spill" / "rows-0.jsonl").exists()
    assert not missing_rows(texts, "default", cache_dir=cache, ids=ids).any()
    keys = [sample_key(i, t) for i, t in zip(ids, texts)]
    got = embed_mod.embeddings_of_keys(keys, "default", cache_dir=cache)
    np.testing.assert_array_equal(got, embed_table(table, "default", cache_dir=cache))
