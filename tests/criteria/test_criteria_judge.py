"""selectit, rating and nuggets against direct re-computation with full logits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.criteria.base import Batch
from thresher.criteria.judge import selectit_sentence_scores, selectit_token_scores
from thresher.features.tokens import Unit, full_logits_losses, last_position_hidden, prefix_reuse_losses
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA
from thresher.render import render_sample, tokenize_rendered


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)


@pytest.fixture(scope="module")
def lm2():
    return tiny_causal_lm(1, tokenizer="bytes", init_std=0.3, hidden=32, layers=1)


@pytest.fixture(scope="module")
def rows():
    r = [
        {
            "id": f"s{i}",
            "instruction": f"Describe the number {i}." + " Please." * (i % 3),
            "input": "",
            "output": f"{i} is a number" + ", a nice one" * (i % 2),
        }
        for i in range(5)
    ]
    r.append({"id": "inp", "instruction": "Translate.", "input": "chat", "output": "cat"})
    return r


def _last_logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double()


# ------------------------------------------------------------------ SelectIT formulas
def test_selectit_token_formula_by_hand():
    p = np.array([[0.1, 0.2, 0.4, 0.2, 0.1], [0.3, 0.3, 0.2, 0.1, 0.1], [0.2] * 5])
    np.testing.assert_allclose(selectit_token_scores(p), [3 * 1.0 / 4, 1 * 0.5 / 4, 0.0])
    s = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(selectit_sentence_scores(s, 0.5), [2.0 / (1 + 0.5 * np.std([1, 2, 3])), 2.0])
    assert np.isnan(selectit_token_scores(np.full((1, 5), np.nan))).all()


def test_selectit_matches_direct_recomputation(lm, lm2, rows):
    sc = CRITERIA.get("selectit").obj(models=[lm, lm2], alpha=0.3, batch_tokens=300)
    got = sc(pd.DataFrame(rows))
    params = np.array([sum(p.numel() for p in m.model.parameters()) for m in (lm, lm2)], dtype=float)
    w = params / params.sum()
    for i, row in enumerate(rows):
        sent = []
        for m in (lm, lm2):
            digit_ids = [m.tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(1, 6)]
            stoks = []
            for text in sc.prompt_texts(row["instruction"], row["input"], row["output"]):
                z = _last_logits(m, m.tokenizer(text).input_ids)
                p = torch.softmax(z[digit_ids], -1).numpy()
                a = int(np.argmax(p))
                stoks.append((a + 1) * (p[a] - p).sum() / 4)
            stoks = np.array(stoks)
            sent.append(stoks.mean() / (1 + 0.3 * stoks.std()))
            if m is lm:
                assert got["selectit.token"][i] == pytest.approx(stoks[0], rel=1e-5, abs=1e-7)
        assert got["selectit.sentence"][i] == pytest.approx(sent[0], rel=1e-5)
        assert got["selectit.sentence_m1"][i] == pytest.approx(sent[1], rel=1e-5)
        assert got["selectit"][i] == pytest.approx(w @ np.array(sent), rel=1e-5)


def test_selectit_options_and_bad_rows(lm, tmp_path):
    f = tmp_path / "rp.txt"
    f.write_text("Rate it 1-5.\n\nScore 1 to 5 please.\n")
    sc = CRITERIA.get("selectit").obj(models=[lm], prompts=str(f), model_weights="1")
    assert sc.prompts == ["Rate it 1-5.", "Score 1 to 5 please."]
    out = sc(
        pd.DataFrame(
            [
                {"id": "a", "instruction": "x", "output": "y"},
                {"id": "b", "instruction": "x", "output": ""},
                {"id": "c", "instruction": None, "output": "y"},
            ]
        )
    )
    assert out["selectit"].notna().tolist() == [True, False, False]
    assert out["selectit.reason"][1] == "empty answer" and "sample 'c'" in out["selectit.reason"][2]
    for bad, msg in [
        ({"k": 9}, "option k"),
        ({"prompts": str(tmp_path / "none.txt")}, "does not exist"),
        ({"model_weights": "1,2"}, "model_weights"),
        ({"alpha": -1}, "alpha"),
        ({"score_tokens": "1,10"}, "score token '10'"),
    ]:
        with pytest.raises(ValueError, match=msg):
            CRITERIA.get("selectit").obj(models=[lm], **bad)
    k1 = CRITERIA.get("selectit").obj(models=[lm]).cache_key()
    assert k1 != CRITERIA.get("selectit").obj(models=[lm], k=2).cache_key()


# ------------------------------------------------------------------ rating
@pytest.mark.parametrize("chat", ["no", "yes"])
def test_rating_matches_direct_recomputation(lm, rows, chat):
    sc = CRITERIA.get("rating").obj(model=lm, chat=chat, score_tokens="1,2,3,4,5,6")
    got = sc(pd.DataFrame(rows))
    ids = [lm.tokenizer.encode(str(d), add_special_tokens=False)[0] for d in range(1, 7)]
    for i, row in enumerate(rows):
        text = sc.prompt_text(row["instruction"], row["input"], row["output"])
        if chat == "yes":
            assert text.startswith("<|im_start|>user") and text.endswith("<|im_start|>assistant\n")
        z = _last_logits(lm, lm.tokenizer(text, add_special_tokens=chat == "no").input_ids)
        p = torch.softmax(z[ids], -1).numpy()
        assert got["rating"][i] == pytest.approx(float(p @ np.arange(1, 7)), rel=1e-5)
        assert got["rating.argmax"][i] == np.argmax(p) + 1


def test_judges_row_batching_bits_do_not_depend_on_companions(lm, lm2, rows):
    """batching="row": each judge prompt in its own forward, so a row's rating and SelectIT scores are the
    same bits whichever rows share the call (with buckets they follow the bucket's padded length)."""
    df = pd.DataFrame(rows)
    for name, kw, col in (("rating", {"model": lm}, "rating"), ("selectit", {"models": [lm, lm2]}, "selectit")):
        whole = CRITERIA.get(name).obj(batching="row", **kw)(df)
        for pick in ([3], [4, 0, 3], [5, 1]):
            part = CRITERIA.get(name).obj(batching="row", **kw)(df.iloc[pick].reset_index(drop=True))
            assert np.array_equal(part[col].to_numpy(), whole[col].to_numpy()[pick]), (name, pick)
    with pytest.raises(ValueError, match="batching"):
        CRITERIA.get("rating").obj(model=lm, batching="pack")  # no packed judge prompts: an error, not ignored


def test_rating_custom_values_and_errors(lm):
    sc = CRITERIA.get("rating").obj(
        model=lm,
        score_tokens="a,b",
        values="0,10",
        chat="no",
        prompt="Q: {instruction}\nA: {output}\nGood (b) or bad (a)? ",
    )
    out = sc(
        pd.DataFrame(
            [
                {"id": "x", "instruction": "hi", "output": "hello"},
                {"id": "y", "conversation": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            ]
        )
    )
    assert 0 <= out["rating"][0] <= 10 and np.isnan(out["rating"][1])
    assert "multi-turn" in out["rating.reason"][1]
    with pytest.raises(ValueError, match="values"):
        CRITERIA.get("rating").obj(model=lm, values="1,2")
    with pytest.raises(ValueError, match="prompt"):
        CRITERIA.get("rating").obj(model=lm, prompt="no output field")
    with pytest.raises(ValueError, match="score token"):
        CRITERIA.get("rating").obj(model=lm, score_tokens="10,20")


# ------------------------------------------------------------------ engine helpers
def test_last_position_hidden_matches_single(lm):
    seqs = [[1, 5, 9, 200], [3], [7, 8, 9, 10, 11, 12, 13], [4, 4]]
    with torch.no_grad():
        ref = torch.stack([lm.trunk()(input_ids=torch.tensor([s])).last_hidden_state[0, -1] for s in seqs])
    for bt in (1, 8, 1000):
        torch.testing.assert_close(last_position_hidden(lm, seqs, batch_tokens=bt), ref, rtol=1e-5, atol=1e-5)
    one = last_position_hidden(lm, seqs, one_per_call=True)
    torch.testing.assert_close(one, ref, rtol=1e-5, atol=1e-5)
    for pick in ([2], [2, 0], [3, 2, 1]):  # each alone: the same bits whichever sequences come with it
        assert torch.equal(last_position_hidden(lm, [seqs[i] for i in pick], one_per_call=True), one[pick]), pick
    with pytest.raises(ValueError, match=r"seqs\[1\]"):
        last_position_hidden(lm, [[1], []])


def test_prefix_reuse_equals_full_recomputation(lm):
    prefix = list(range(5, 25))
    conts = [
        Unit([30, 31, 32, 33], [True, False, True, True]),
        Unit([40], [True]),
        Unit([50, 51, 52, 53, 54, 55, 56], [False] * 3 + [True] * 4),
        Unit([60, 61], [False, False]),
    ]
    full = full_logits_losses(lm, [Unit(prefix + u.ids, [False] * len(prefix) + list(u.score)) for u in conts])
    for bt in (1, 30, 4096):
        got = prefix_reuse_losses(lm, prefix, conts, batch_tokens=bt)
        for a, b in zip(got, full):
            np.testing.assert_allclose(a.nll, b.nll, rtol=1e-5, atol=1e-6)
    assert got[3].nll.size == 0
    # one continuation per forward (batching="row"): the same bits whichever continuations share the call
    one = prefix_reuse_losses(lm, prefix, conts, one_per_call=True)
    for a, b in zip(one, full):
        np.testing.assert_allclose(a.nll, b.nll, rtol=1e-5, atol=1e-6)
    for pick in ([2], [2, 0], [0, 2, 1]):
        part = prefix_reuse_losses(lm, prefix, [conts[i] for i in pick], one_per_call=True)
        assert all(np.array_equal(part[j].nll, one[i].nll) for j, i in enumerate(pick)), pick
    with pytest.raises(ValueError, match="prefix"):
        prefix_reuse_losses(lm, [], conts)


# ------------------------------------------------------------------ nuggets
def _logp_answer(lm, ids, score):
    return -full_logits_losses(lm, [Unit(ids, score)])[0].nll.sum()


def test_nuggets_matches_direct_recomputation(lm, rows, tmp_path):
    anchors = [
        {"id": f"a{j}", "instruction": f"Spell {w}.", "output": " ".join(w)}
        for j, w in enumerate(["cat", "house", "tree", "sun"])
    ]
    f = tmp_path / "anchors.jsonl"
    f.write_text("\n".join(json.dumps(a) for a in anchors))
    sc = CRITERIA.get("nuggets").obj(model=lm, anchors=str(f), batch_tokens=256)
    got = sc(pd.DataFrame(rows))
    tok = lm.tokenizer
    atk = [tokenize_rendered(render_sample(a, "alpaca"), tok, add_special_tokens=False) for a in anchors]
    zero = [_logp_answer(lm, t.ids, t.score) for t in atk]
    for i, row in enumerate(rows):
        prefix = tok(render_sample(row, "alpaca").text + "\n\n").input_ids
        one = [_logp_answer(lm, prefix + t.ids, [False] * len(prefix) + t.score) for t in atk]
        wins = np.array(one) > np.array(zero)
        assert got["nuggets"][i] == pytest.approx(wins.mean())
        assert got["nuggets.mean_gain"][i] == pytest.approx(np.mean(np.array(one) - np.array(zero)), rel=1e-4)
        assert got["nuggets.n_anchors"][i] == 4


def test_nuggets_batch_anchors_exclude_self(lm, rows):
    sc = CRITERIA.get("nuggets").obj(model=lm, n_anchors=3, seed=1, anchor_select="random")
    out = sc(pd.DataFrame(rows + [{"id": "bad", "instruction": "q", "output": ""}]))
    assert set(out["nuggets.n_anchors"][:-1]) <= {2, 3} and 2 in set(out["nuggets.n_anchors"])
    assert out["nuggets"][:-1].between(0, 1).all() and np.isnan(out["nuggets"].iloc[-1])
    with pytest.raises(ValueError, match="anchors file"):
        CRITERIA.get("nuggets").obj(model=lm, anchors="/no/such/anchors.jsonl")
    with pytest.raises(ValueError, match="n_anchors"):
        CRITERIA.get("nuggets").obj(model=lm, n_anchors=0)


class _BlobEmbedder:
    """A stand-in sentence embedder: fixed 2-d points per text (three well-separated blobs)."""

    fingerprint = "blob-embedder"
    dim = 2

    def __init__(self, points: dict) -> None:
        self.points = points

    def encode(self, texts, batch_size=64):
        return np.array([self.points[t] for t in texts], dtype=np.float32)


def test_nuggets_kmeans_anchors_are_the_rows_nearest_the_cluster_means(lm):
    from thresher.embed import sample_texts

    rng = np.random.default_rng(0)
    ang = np.deg2rad([0.0, 120.0, 240.0])  # three well-separated directions (embeddings are unit vectors)
    centres = np.stack([np.cos(ang), np.sin(ang)], 1)
    pts = np.concatenate([c + rng.normal(scale=0.05, size=(4, 2)) for c in centres])
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    rows = [{"id": f"r{i}", "instruction": f"Say {i}.", "output": f"{i} is {i}"} for i in range(12)]
    df = pd.DataFrame(rows)
    texts = sample_texts(df)
    emb = _BlobEmbedder({t: p for t, p in zip(texts, pts)})
    sc = CRITERIA.get("nuggets").obj(model=lm, n_anchors=3, embedder=emb, batch_tokens=512)
    ids, _ = sc._anchor_sample(Batch.of(df))
    # oracle: the blobs are the clusters; per blob the row nearest the blob's mean
    want = [
        f"r{4 * g + int(np.argmin(((pts[4 * g : 4 * g + 4] - pts[4 * g : 4 * g + 4].mean(0)) ** 2).sum(1)))}"
        for g in range(3)
    ]
    assert sorted(ids) == sorted(want)
    out = sc(df)
    assert (out["nuggets.n_anchors"] >= 2).all() and out["nuggets"].between(0, 1).all()
    assert CRITERIA.get("nuggets").meta["scope"] == "pool"


def test_nuggets_recipe_threshold_is_strict():
    from thresher.recipes import expand_recipe
    from thresher.selectors.basic import threshold

    r = expand_recipe("nuggets")
    assert r.selector.options["strict"] is True and r.selector.options["value"] == 0.85
    df = pd.DataFrame({"nuggets": [0.85, 0.9, 0.5, np.nan, 0.86]})
    got = threshold(df, 5, criterion="nuggets", direction="max", mode="absolute", value=0.85, strict=True)
    assert sorted(got.tolist()) == [1, 4]  # GS > 0.85, never = 0.85 (the paper: "above")


def test_selectit_token_sum_over_prompts_is_the_reference_loop():
    # self_reflection/*.py: sum_{i<K} (p[argmax] - p[i]) / (K - 1) * (argmax + 1), K = number of prompts
    p = np.array([[0.1, 0.5, 0.2, 0.15, 0.05], [0.3, 0.1, 0.1, 0.1, 0.4]])
    for K in (2, 3, 5):
        want = [(int(np.argmax(r)) + 1) * sum(r.max() - r[i] for i in range(K)) / (K - 1) for r in p]
        np.testing.assert_allclose(selectit_token_scores(p, K), want, rtol=1e-12)
    np.testing.assert_allclose(selectit_token_scores(p), selectit_token_scores(p, 5), rtol=1e-12)  # K = L
    with pytest.raises(ValueError, match="token_sum=prompts"):
        selectit_token_scores(p, 6)


def test_budget_base_pool_and_eligible():
    from thresher.plan import PipelineConfig, budget_k

    cfg = PipelineConfig(data="x", ratio=0.29)
    assert budget_k(cfg, 100) == 29  # pool: half up
    assert budget_k(cfg, 100, eligible=50, base="eligible") == 14  # floor(0.29 * 50) = 14
    assert budget_k(cfg, 100, eligible=3, base="eligible") == 0  # int() as Cherry: may be 0
    assert budget_k(PipelineConfig(data="x", k=7), 100, eligible=3, base="eligible") == 7
