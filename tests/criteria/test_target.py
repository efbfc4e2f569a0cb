"""target_similarity against brute-force numpy, the embedding cache, and the RDS+ hidden-state pooling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.embed.hidden import HiddenStateEncoder, pool_hidden
from thresher.errors import OptionError
from thresher.registry import CRITERIA


class TableEncoder:
    """text "t<i>" -> row i of a fixed matrix; counts the texts it encodes."""

    def __init__(self, table, name="table"):
        self.table = np.asarray(table, np.float32)
        self.dim = self.table.shape[1]
        self.fingerprint = f"{name}:{self.table.shape}"
        self.encoded: list[str] = []

    def encode(self, texts, batch_size=64):
        self.encoded += list(texts)
        return np.stack([self.table[int(t[1:])] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def rows(idx, prefix="s"):
    return pd.DataFrame({"id": [f"{prefix}{i}" for i in idx], "instruction": [f"t{i}" for i in idx], "output": ""})


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(x, tgt, how, topk=3):
    s = unit(x) @ unit(tgt).T
    if how == "mean":
        c = unit(tgt).mean(0)
        return unit(x) @ (c / np.linalg.norm(c))
    if how == "max":
        return s.max(1)
    return np.sort(s, axis=1)[:, ::-1][:, :topk].mean(1)


@pytest.mark.parametrize("how", ["mean", "max", "topk_mean"])
def test_one_group_matches_brute_force(how):
    x = np.random.default_rng(0).standard_normal((40, 9)).astype(np.float32)
    enc = TableEncoder(x)
    opts = {"topk": 3} if how == "topk_mean" else {}
    sc = CRITERIA.get("target_similarity").obj(target=rows(range(30, 36), "t"), embedder=enc, aggregate=how, **opts)
    got = sc(rows(range(30)))
    np.testing.assert_allclose(got["target_similarity"], brute(x[:30], x[30:36], how), rtol=1e-5, atol=1e-6)
    assert list(got["id"]) == [f"s{i}" for i in range(30)]
    assert "target_similarity.best" not in got.columns  # one group: no per-group columns


def test_groups_score_is_max_and_columns_kept():
    x = np.random.default_rng(1).standard_normal((30, 5)).astype(np.float32)
    tgt = rows(range(20, 30), "t")
    tgt["group"] = ["b/x"] * 4 + ["a.1"] * 6
    sc = CRITERIA.get("target_similarity").obj(target=tgt, embedder=TableEncoder(x), aggregate="max")
    got = sc(rows(range(20)))
    a, b = brute(x[:20], x[24:30], "max"), brute(x[:20], x[20:24], "max")
    np.testing.assert_allclose(got["target_similarity.sim_a_1"], a, rtol=1e-5)
    np.testing.assert_allclose(got["target_similarity.sim_b/x"], b, rtol=1e-5)
    np.testing.assert_allclose(got["target_similarity"], np.maximum(a, b), rtol=1e-5)
    assert got["target_similarity.best"].tolist() == ["a.1" if p >= q else "b/x" for p, q in zip(a, b)]


def test_empty_rows_nan_with_reason_and_empty_batch():
    class WithBlank(TableEncoder):
        def encode(self, texts, batch_size=64):
            return np.stack([self.table[int(t[1:])] if t else np.ones(self.dim, np.float32) for t in texts])

    x = np.eye(4, dtype=np.float32)
    sc = CRITERIA.get("target_similarity").obj(target=rows([0], "t"), embedder=WithBlank(x))
    df = rows([0, 1])
    df.loc[1, "instruction"] = ""
    got = sc(df)
    assert got["target_similarity"].iloc[0] == pytest.approx(1.0)
    assert np.isnan(got["target_similarity"].iloc[1]) and got["target_similarity.reason"].tolist() == ["", "empty text"]
    empty = sc(rows([]))
    assert len(empty) == 0 and "target_similarity" in empty.columns


def test_option_errors(tmp_path):
    cls = CRITERIA.get("target_similarity").obj
    enc = TableEncoder(np.eye(3))
    with pytest.raises(OptionError, match="target"):
        cls(embedder=enc)
    with pytest.raises(OptionError, match="does not exist"):
        cls(target=str(tmp_path / "nope.jsonl"), embedder=enc)
    with pytest.raises(OptionError, match="layer"):
        cls(target=rows([0], "t"), embedder=enc, layer=3)
    with pytest.raises(OptionError, match="pooling"):
        cls.cache_key_for(target=rows([0], "t"), embedder="default", pooling="mean")
    with pytest.raises(OptionError, match="topk"):
        cls(target=rows([0], "t"), embedder=enc, aggregate="mean", topk=2)
    with pytest.raises(OptionError, match="aggregate"):
        cls(target=rows([0], "t"), embedder=enc, aggregate="median")


def test_cache_key_names_target_content_and_lm_settings(tmp_path):
    cls = CRITERIA.get("target_similarity").obj
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"instruction": "x", "output": "1"}\n')
    b.write_text('{"instruction": "x", "output": "2"}\n')
    enc = TableEncoder(np.eye(3))
    ka = cls.cache_key_for(target=str(a), embedder=enc)
    assert ka == cls.cache_key_for(target=str(a), embedder=enc, cache_dir=str(tmp_path), batch_size=3)
    assert ka != cls.cache_key_for(target=str(b), embedder=enc)
    assert ka != cls.cache_key_for(target=str(a), embedder=enc, aggregate="max")


def test_second_target_does_not_re_embed_the_pool(tmp_path):
    x = np.random.default_rng(2).standard_normal((50, 6)).astype(np.float32)
    enc = TableEncoder(x)
    cls = CRITERIA.get("target_similarity").obj
    pool = rows(range(40))
    first = cls(target=rows(range(40, 45), "t"), embedder=enc, cache_dir=str(tmp_path))(pool)
    n1 = len(enc.encoded)
    assert n1 == 45  # 5 target texts + 40 pool texts
    second = cls(target=rows(range(45, 50), "t"), embedder=enc, cache_dir=str(tmp_path), aggregate="max")(pool)
    assert enc.encoded[n1:] == [f"t{i}" for i in range(45, 50)]  # only the new target's texts
    np.testing.assert_allclose(second["target_similarity"], brute(x[:40], x[45:50], "max"), atol=2e-3)  # float16 store
    np.testing.assert_allclose(first["target_similarity"], brute(x[:40], x[40:45], "mean"), atol=2e-3)


# ------------------------------------------------------------------ RDS+ pooling
def test_pool_hidden_weighted_mean_by_hand_left_and_right_padding():
    h = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    # row 0, right padding: tokens 0..2 weighted 1, 2, 3 (/6)
    want0 = (1 * h[0, 0] + 2 * h[0, 1] + 3 * h[0, 2]) / 6
    want1 = (1 * h[1, 0] + 2 * h[1, 1] + 3 * h[1, 2] + 4 * h[1, 3]) / 10
    got = pool_hidden(h, right, "weighted_mean")
    torch.testing.assert_close(got[0], want0)
    torch.testing.assert_close(got[1], want1)
    gl = pool_hidden(h, left, "weighted_mean")
    torch.testing.assert_close(gl[0], (1 * h[0, 1] + 2 * h[0, 2] + 3 * h[0, 3]) / 6)
    torch.testing.assert_close(pool_hidden(h, right, "mean")[0], h[0, :3].mean(0))
    torch.testing.assert_close(pool_hidden(h, left, "last")[0], h[0, 3])
    torch.testing.assert_close(pool_hidden(h, right, "last")[0], h[0, 2])


def test_hidden_state_encoder_matches_a_manual_forward():
    from thresher.models import tiny_causal_lm

    lm = tiny_causal_lm(seed=0)
    texts = ["a short one", "a somewhat longer text with more tokens in it", "x"]
    for layer in (-1, 1):
        enc = HiddenStateEncoder(lm=lm, layer=layer, pooling="weighted_mean")
        got = enc.encode(texts, batch_size=2)
        assert f"layer{layer}" in enc.fingerprint
        for i, t in enumerate(texts):  # one text at a time: no padding at all
            ids = lm.tokenizer(t, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                hs = lm.trunk()(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
            w = torch.arange(1, hs.shape[0] + 1, dtype=torch.float32)
            want = (hs * (w / w.sum())[:, None]).sum(0).numpy()
            np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer"):
        HiddenStateEncoder(lm=lm, layer=99)
