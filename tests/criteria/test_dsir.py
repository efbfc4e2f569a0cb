"""dsir and the gumbel_topk selector against hand computations and independent re-implementations."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from thresher.criteria.dsir import NgramCounts, ngram_hash, ngrams_of
from thresher.errors import OptionError
from thresher.registry import CRITERIA, SELECTORS


def frame(texts, prefix="p"):
    return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(texts))], "instruction": texts, "output": ""})


def test_ngrams_of_word_punct_unigrams_and_bigrams():
    assert ngrams_of("Hello, World!!", 2) == ["hello", ",", "world", "!!", "hello ,", ", world", "world !!"]
    assert ngrams_of("a b c", 3) == ["a", "b", "c", "a b", "b c", "a b c"]
    assert ngrams_of("   ", 2) == []


def test_hash_is_blake2b_and_stable_across_processes():
    grams = ["hello", "hello world", "ünïcode", "!!"]
    want = [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") for g in grams]
    assert [ngram_hash(g) for g in grams] == want
    code = "from thresher.criteria.dsir import ngram_hash; print([ngram_hash(g) for g in %r])" % (grams,)
    for seed in ("0", "12345"):  # a different PYTHONHASHSEED must not change the buckets
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        )
        assert eval(out.stdout) == want


def _counts(text, buckets):
    c = Counter()
    for g in ngrams_of(text, 2):
        h = int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little")
        c[h % buckets] += 1
    return c


def _dsir_oracle(targets, pool, buckets, s):
    """Plain-Python DSIR: add-s smoothed bucket models of target and pool, sum of count * log ratio."""
    ct, cp = Counter(), Counter()
    for t in targets:
        ct.update(_counts(t, buckets))
    for t in pool:
        cp.update(_counts(t, buckets))
    nt, npool = sum(ct.values()), sum(cp.values())
    out = []
    for t in pool:
        w = 0.0
        for b, c in _counts(t, buckets).items():
            w += c * (math.log((ct[b] + s) / (nt + s * buckets)) - math.log((cp[b] + s) / (npool + s * buckets)))
        out.append(w)
    return np.array(out)


@pytest.mark.parametrize("buckets,s", [(16, 1.0), (10000, 1.0), (7, 0.5)])
def test_dsir_matches_plain_python_oracle(buckets, s):
    targets = ["the quick brown fox", "a quick brown dog jumps"]
    pool = ["the lazy dog", "quick brown things", "nothing alike here", "fox fox fox", "the the the the"]
    sc = CRITERIA.get("dsir").obj(target=frame(targets, "t"), buckets=buckets, smoothing=s)
    got = sc(frame(pool))
    np.testing.assert_allclose(got["dsir"].to_numpy(), _dsir_oracle(targets, pool, buckets, s), rtol=1e-10, atol=1e-10)
    assert got["dsir.ngrams"].tolist() == [len(ngrams_of(t, 2)) for t in pool]
    # fit(pool) then score a part of it: the same values as scoring the pool at once
    part = sc.fit(frame(pool))(frame(pool).iloc[[1, 3]])
    np.testing.assert_allclose(part["dsir"].to_numpy(), got["dsir"].to_numpy()[[1, 3]], rtol=1e-12)


def test_rare_target_ngrams_rank_first_and_empty_rows_get_a_reason():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(50)]
    generic = [" ".join(rng.choice(words, 8)) for _ in range(40)]
    targets = ["zyxx quvv " + g for g in generic[:4]]
    pool = generic[4:] + ["zyxx quvv alpha", "quvv zyxx beta gamma", ""]
    got = CRITERIA.get("dsir").obj(target=frame(targets, "t"))(frame(pool))
    order = np.argsort(-got["dsir"].fillna(-np.inf).to_numpy(), kind="stable")
    assert set(order[:2].tolist()) == {len(pool) - 3, len(pool) - 2}
    assert math.isnan(got["dsir"].iloc[-1]) and got["dsir.reason"].iloc[-1] == "empty text"


def test_groups_max_and_columns():
    targets = frame(["red apple", "green apple", "blue sky", "grey sky"], "t")
    targets["group"] = ["fruit", "fruit", "sky", "sky"]
    pool = ["apple pie", "sky high", "apple sky"]
    sc = CRITERIA.get("dsir").obj(target=targets, buckets=64)
    got = sc(frame(pool))
    for g, rows in (("fruit", [0, 1]), ("sky", [2, 3])):
        want = _dsir_oracle([targets["instruction"][r] for r in rows], pool, 64, 1.0)
        np.testing.assert_allclose(got[f"dsir.sim_{g}"].to_numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(got["dsir"], np.maximum(got["dsir.sim_fruit"], got["dsir.sim_sky"]))
    assert got["dsir.best"].tolist()[:2] == ["fruit", "sky"]


def test_options_and_cache_key(tmp_path):
    entry = CRITERIA.get("dsir")
    assert entry.meta["scope"] == "pool"
    with pytest.raises(OptionError, match="target"):
        entry.obj()
    with pytest.raises(OptionError, match="does not exist"):
        entry.obj(target=str(tmp_path / "missing.jsonl"))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"instruction": "x y", "output": "z"}\n')
    b.write_text('{"instruction": "x y", "output": "w"}\n')
    ka, kb = entry.obj.cache_key_for(target=str(a)), entry.obj.cache_key_for(target=str(b))
    assert ka != kb and ka == entry.obj.cache_key_for(target=str(a))
    assert ka != entry.obj.cache_key_for(target=str(a), buckets=5000)


def test_sparse_counts_helpers():
    c = NgramCounts.of(["a b a", "", "c"], buckets=5, n=1)
    dense = np.zeros((3, 5))
    for r, t in enumerate(["a b a", "", "c"]):
        for b, k in _counts_n1(t, 5).items():
            dense[r, b] = k
    np.testing.assert_array_equal(c.totals(), dense.sum(0))
    vec = np.arange(5.0)
    np.testing.assert_allclose(c.dot(vec), dense @ vec)
    tf = np.log1p(dense)
    tf = tf / np.maximum(np.linalg.norm(tf, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(c.dense_tf(np.array([2, 0])), tf[[2, 0]], rtol=1e-6)


def _counts_n1(text, buckets):
    c = Counter()
    for g in ngrams_of(text, 1):
        c[int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") % buckets] += 1
    return c


# ------------------------------------------------------------------ gumbel_topk
def _gumbel_oracle(values, k, seed, temperature=1.0):
    u = np.random.default_rng(seed).random(len(values))
    keys = []
    for i, v in enumerate(values):
        if v != v:
            continue
        keys.append((-(v / temperature - math.log(-math.log(u[i]))), i))
    return [i for _, i in sorted(keys)[:k]]


def test_gumbel_topk_equals_reimplementation_and_is_reproducible():
    sel = SELECTORS.get("gumbel_topk").obj
    v = np.random.default_rng(1).standard_normal(200)
    v[[3, 50]] = np.nan
    scores = pd.DataFrame({"dsir": v})
    for seed in (0, 7):
        got = sel(scores, 30, seed=seed, criterion="dsir", direction="max").tolist()
        assert got == _gumbel_oracle(v, 30, seed)
        assert got == sel(scores, 30, seed=seed, criterion="dsir", direction="max").tolist()
        assert 3 not in got and 50 not in got
    assert sel(scores, 30, seed=0, criterion="dsir").tolist() != sel(scores, 30, seed=1, criterion="dsir").tolist()
    low = sel(scores, 10, seed=2, criterion="dsir", direction="min", temperature=0.5).tolist()
    assert low == _gumbel_oracle(-v, 10, 2, 0.5)
    assert len(sel(scores, 500, seed=0, criterion="dsir")) == 198  # k clamped, NaN never


def test_gumbel_top1_frequencies_follow_softmax():
    sel = SELECTORS.get("gumbel_topk").obj
    v = np.array([0.0, 1.0, 2.0])
    scores = pd.DataFrame({"s": v})
    firsts = Counter(int(sel(scores, 1, seed=s, criterion="s", direction="max")[0]) for s in range(3000))
    p = np.exp(v) / np.exp(v).sum()
    freq = np.array([firsts[i] for i in range(3)]) / 3000
    np.testing.assert_allclose(freq, p, atol=0.03)


def test_gumbel_rejects_bad_temperature():
    with pytest.raises(OptionError, match="temperature"):
        SELECTORS.get("gumbel_topk").obj(pd.DataFrame({"s": [1.0]}), 1, criterion="s", temperature=0)


def test_dsir_and_rds_recipes_expand():
    from thresher.recipes import expand_recipe

    r = expand_recipe("dsir", {"target": "t.jsonl"})
    assert r.criteria[0].name == "dsir" and r.selector.name == "gumbel_topk"
    assert expand_recipe("dsir", {"target": "t.jsonl", "selection": "topk"}).selector.name == "topk"
    rds = expand_recipe("rds", {"target": "t.jsonl"})
    assert rds.criteria[0].options == {"target": "t.jsonl", "embedder": "lm:default", "aggregate": "max"}
    tc = expand_recipe("target_classifier", {"target": "t.jsonl"}, embedder="default")
    assert "embedder" not in tc.criteria[0].options  # n-gram features: a run-wide embedder does not reach it
    tc = expand_recipe("target_classifier", {"target": "t.jsonl", "features": "both"}, embedder="default")
    assert tc.criteria[0].options["embedder"] == "default"


def test_length_normalised_weight_is_the_mean_per_ngram_and_stops_favouring_long_rows():
    targets = ["good movie", "great film", "good film", "great movie"]
    pool = [f"w{i} w{i + 1} w{i + 2}" for i in range(30)] + ["good great movie", ""]
    per = CRITERIA.get("dsir").obj(target=frame(targets, "t"), buckets=4096, normalize="length")
    got = per(frame(pool))
    want = _dsir_oracle(targets, pool[:-1], 4096, 1.0) / np.array([len(ngrams_of(t, 2)) for t in pool[:-1]])
    np.testing.assert_allclose(got["dsir"].to_numpy()[:-1], want, rtol=1e-10)
    assert math.isnan(got["dsir"].iloc[-1]) and got["dsir.reason"].iloc[-1] == "empty text"
    # a row repeated four times: the paper's sum grows with it, the mean per n-gram does not (the
    # repeat adds the bigram "movie good", which no target has)
    rows = frame(["good movie", " ".join(["good movie"] * 4)])
    w = {
        n: CRITERIA.get("dsir").obj(target=frame(targets, "t"), buckets=512, normalize=n).fit(frame(pool[:30]))(rows)
        for n in ("none", "length")
    }
    assert 0 < w["none"]["dsir"][0] < w["none"]["dsir"][1] / 3
    assert w["length"]["dsir"][0] > w["length"]["dsir"][1] > 0
    k0 = CRITERIA.get("dsir").obj.cache_key_for(target=frame(targets, "t"))
    assert k0 == CRITERIA.get("dsir").obj.cache_key_for(target=frame(targets, "t"), normalize="none")
    assert k0 != CRITERIA.get("dsir").obj.cache_key_for(target=frame(targets, "t"), normalize="length")


def test_dsir_recipe_passes_normalize_through():
    from thresher.recipes import expand_recipe

    assert "normalize" not in expand_recipe("dsir", {"target": "t.jsonl"}).criteria[0].options
    opts = expand_recipe("dsir", {"target": "t.jsonl", "normalize": "length"}).criteria[0].options
    assert opts["normalize"] == "length"
    with pytest.raises(OptionError, match="normalize"):
        expand_recipe("dsir", {"target": "t.jsonl", "normalize": "tokens"})
