"""nuggets: the anchors are chosen once per pool call and recorded in run_info()."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import thresher.criteria.nuggets as nug_mod
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)


def pool(n):
    return pd.DataFrame(
        [{"id": f"s{i}", "instruction": f"Name the number {i}.", "input": "", "output": f"{i}"} for i in range(n)]
    )


class PointEmbedder:
    """Fixed 2-d unit vectors per text: row i at angle 10 i degrees."""

    fingerprint = "points"
    dim = 2

    def encode(self, texts, batch_size=64):
        ang = np.deg2rad([10.0 * int(t.split()[3].rstrip(".")) for t in texts])
        return np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)


def test_kmeans_anchors_chosen_once_per_pool_and_recorded(lm, monkeypatch):
    calls = []
    real = nug_mod.kmeans_anchor_rows

    def counting(emb, m, seed, n_init=10):
        calls.append(len(emb))
        return real(emb, m, seed, n_init)

    monkeypatch.setattr(nug_mod, "kmeans_anchor_rows", counting)
    sc = CRITERIA.get("nuggets").obj(model=lm, n_anchors=3, seed=2, embedder=PointEmbedder(), batch_tokens=64)
    assert sc.run_info() == {"criterion": "nuggets", "scored": False}
    out = sc(pool(9))  # small batch_tokens: the model runs in many batches, the anchors are chosen once
    assert calls == [9]
    info = sc.run_info()
    want = [f"s{i}" for i in real(PointEmbedder().encode(list(pool(9)["instruction"])), 3, 2)]
    assert info["anchor_ids"] == want and info["n_anchors"] == 3 and info["anchor_select"] == "kmeans"
    assert info["seed"] == 2 and info["embedder"] == "points" and info["pool_rows"] == 9 and info["scored"]
    assert info["n_usable_anchors"] == 3 and info["unusable_anchor_ids"] == []
    assert out["nuggets.n_anchors"].max() == 3
    json.dumps(info)


def test_random_and_file_anchors_and_digest_above_the_listing_limit(lm, tmp_path, monkeypatch):
    sc = CRITERIA.get("nuggets").obj(model=lm, n_anchors=4, seed=5, anchor_select="random")
    sc(pool(7))
    want = np.sort(np.random.default_rng(5).choice(7, size=4, replace=False))
    assert sc.run_info()["anchor_ids"] == [f"s{i}" for i in want] and sc.run_info()["anchor_select"] == "random"
    f = tmp_path / "a.jsonl"
    f.write_text(
        "\n".join(json.dumps({"id": f"a{j}", "instruction": f"Spell {w}.", "output": w}) for j, w in enumerate("xyz"))
        + "\n"
        + json.dumps({"id": "empty", "instruction": "Nothing.", "output": ""})
    )
    sc = CRITERIA.get("nuggets").obj(model=lm, anchors=str(f))
    sc(pool(3))
    info = sc.run_info()
    assert info["anchor_select"] == "file" and info["anchors_file"] == str(f) and "seed" not in info
    assert info["anchor_ids"] == ["a0", "a1", "a2", "empty"] and info["n_usable_anchors"] == 3
    assert info["unusable_anchor_ids"] == ["empty"]
    monkeypatch.setattr(nug_mod, "LISTED_ANCHOR_IDS", 2)
    sc(pool(3))
    info = sc.run_info()
    assert "anchor_ids" not in info and len(info["anchor_ids_digest"]) == 32 and info["n_anchors"] == 4


def test_an_anchor_over_half_of_max_length_is_unusable_and_the_others_still_score(lm):
    anchors = [{"id": "a0", "instruction": "Spell x.", "output": "x"},
               {"id": "long", "instruction": "Repeat: " + "la " * 60, "output": "la " * 60},
               {"id": "a1", "instruction": "Spell y.", "output": "y"}]  # fmt: skip
    opts = {"model": lm, "max_length": 200, "template": "plain"}  # the long anchor: over 100 byte tokens
    sc = CRITERIA.get("nuggets").obj(anchors=anchors, **opts)
    out = sc(pool(5))
    info = sc.run_info()
    assert info["unusable_anchor_ids"] == ["long"] and info["n_usable_anchors"] == 2
    assert info["anchor_max_tokens"] == 100
    assert out["nuggets.reason"].tolist() == [""] * 5 and out["nuggets.n_anchors"].tolist() == [2] * 5
    short = CRITERIA.get("nuggets").obj(anchors=[anchors[0], anchors[2]], **opts)
    pd.testing.assert_frame_equal(short(pool(5)), out)  # as if the long anchor had not been given
    assert CRITERIA.get("nuggets").obj.VERSION >= "2"  # (v3: anchors from the embeddings cache)
