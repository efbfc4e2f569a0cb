"""SHED: Monte-Carlo Shapley against exact values, cluster proxies, the value function, QOCS/QWCS samplers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from thresher.cluster import kmeans
from thresher.criteria.shapley import (
    Shed,
    exact_shapley,
    finetune_value,
    monte_carlo_shapley,
    validation_loss,
)
from thresher.errors import OptionError
from thresher.features.gradients import encode_rows
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA, SELECTORS


def shapley_by_permutations(n, v):
    """Definition: mean over all n! orders of each player's marginal contribution."""
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        s = ()
        for p in order:
            t = tuple(sorted(s + (p,)))
            phi[p] += v(t) - v(s)
            s = t
    return phi / math.factorial(n)


def random_game(n, seed):
    rng = np.random.default_rng(seed)
    table = {tuple(c): float(rng.uniform(0, 1)) for r in range(n + 1) for c in itertools.combinations(range(n), r)}
    table[()] = 0.0
    return lambda s: table[tuple(s)]


@pytest.mark.parametrize("seed", range(3))
def test_exact_and_monte_carlo_converge_to_the_definition(seed):
    v = random_game(4, seed)
    truth = shapley_by_permutations(4, v)
    np.testing.assert_allclose(exact_shapley(4, v), truth, atol=1e-12)
    est = monte_carlo_shapley(4, v, permutations=6000, seed=seed)
    np.testing.assert_allclose(est, truth, atol=0.03)
    # efficiency holds for every permutation: the estimates always sum to v(N) - v(empty)
    few = monte_carlo_shapley(4, v, permutations=3, seed=seed)
    assert few.sum() == pytest.approx(v((0, 1, 2, 3)))


def test_additive_and_symmetric_games():
    w = np.array([0.5, -1.0, 2.0, 0.0, 3.5])
    add = monte_carlo_shapley(5, lambda s: float(w[list(s)].sum()), permutations=1, seed=7)
    np.testing.assert_allclose(add, w, atol=1e-12)  # one permutation is exact for an additive game
    # v(S) = |S|^2: symmetric players share v(N) = 25 equally
    np.testing.assert_allclose(exact_shapley(5, lambda s: len(s) ** 2), 5.0)
    sym = monte_carlo_shapley(5, lambda s: len(s) ** 2, permutations=4000, seed=1)
    np.testing.assert_allclose(sym, 5.0, atol=0.25)


def test_groups_and_sum_follow_the_reference_rule():
    v = random_game(4, 11)
    order = np.random.default_rng(3).permutation(4).tolist()  # the permutation the estimator draws
    g1, g2 = tuple(sorted(order[:2])), (0, 1, 2, 3)
    want = np.zeros(4)
    want[order[:2]] = v(g1) - v(())
    want[order[2:]] = v(g2) - v(g1)
    np.testing.assert_allclose(monte_carlo_shapley(4, v, permutations=1, group_size=2, seed=3), want)
    m = monte_carlo_shapley(4, v, permutations=5, seed=2)
    np.testing.assert_allclose(monte_carlo_shapley(4, v, permutations=5, seed=2, aggregate="sum"), 5 * m)
    with pytest.raises(ValueError):
        monte_carlo_shapley(4, v, permutations=0)


# ------------------------------------------------------------------ criterion with a known game
class Lookup:
    def __init__(self, table):
        self.table, self.dim, self.fingerprint = table, 2, "lookup"

    def encode(self, texts, batch_size=64):
        return np.asarray([self.table[t] for t in texts], np.float32)


def blobs():
    centers = {"a": (1.0, 0.0), "b": (0.0, 1.0), "c": (-1.0, -1.0)}
    offs = [(0.05, 0.0), (-0.02, 0.01), (0.0, -0.04)]
    rows, table = [], {}
    for c, (x, y) in centers.items():
        for j, (dx, dy) in enumerate(offs):
            text = f"{c}{j}"
            table[text] = (x + dx, y + dy)
            rows.append(text)
    df = pd.DataFrame({"id": rows, "instruction": rows, "input": "", "output": "o"})
    return df, {k: (np.array(v) / np.linalg.norm(v)).tolist() for k, v in table.items()}


def test_shed_propagates_proxy_values_to_clusters(monkeypatch):
    df, table = blobs()
    weights = {"a": 3.0, "b": -1.0, "c": 0.5}

    def additive(self, proxy_rows, val_rows):
        w = [weights[t[0]] for t in proxy_rows["instruction"]]
        return lambda s: float(sum(w[i] for i in s))

    monkeypatch.setattr(Shed, "value_function", additive)
    lm = tiny_causal_lm(0, tokenizer="bytes")
    # texts embedded: instruction + output joined by a newline
    enc = Lookup({f"{t}\no": v for t, v in table.items()})
    out = CRITERIA.get("shed").obj(model=lm, embedder=enc, n_clusters=3, permutations=2)(df)
    # oracle: the clustering primitive's partition and centroids; each cluster's proxy is its member closest
    # to the centroid (ties by position) and every member gets the additive game's value of that proxy
    emb = np.asarray([enc.table[f"{t}\no"] for t in df["instruction"]], np.float32)
    cent, lab = kmeans(emb, 3, seed=0)
    proxy = out["shed.proxy"].to_numpy()
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        d = ((emb[idx].astype(np.float64) - cent[c]) ** 2).sum(1)
        assert proxy[idx].sum() == 1.0  # one proxy per cluster, at the minimum distance (exact ties: rounding)
        p = idx[np.argmax(proxy[idx])]
        assert d[idx.tolist().index(p)] <= d.min() + 1e-6
        np.testing.assert_allclose(out["shed"].to_numpy()[idx], weights[df["instruction"][p][0]])
    assert proxy.sum() == len(np.unique(lab))
    same = out["shed.cluster"].to_numpy()[:, None] == out["shed.cluster"].to_numpy()[None]
    np.testing.assert_array_equal(same, lab[:, None] == lab[None])


def test_validation_loss_and_value_function_on_a_tiny_model():
    lm = tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)
    rows = pd.DataFrame(
        {
            "id": ["1", "2", "3"],
            "instruction": ["add", "say hi", "count"],
            "input": "",
            "output": ["2 + 2 = 4", "hello there", "one two three"],
        }
    )
    enc = encode_rows(rows, lm.tokenizer, template="plain", max_length=512)
    assert not any(e.reason for e in enc)
    # oracle: each sample alone, unpadded, mean CE over its scored tokens, then the mean over samples
    per = []
    with torch.no_grad():
        for e in enc:
            ids = torch.tensor([e.ids])
            logits = lm.model(input_ids=ids).logits[0, :-1].float()
            ce = F.cross_entropy(logits, ids[0, 1:], reduction="none")
            m = torch.tensor(e.score[1:])
            per.append(float(ce[m].mean()))
    assert validation_loss(lm.model, lm.tokenizer, enc, batch_size=2) == pytest.approx(np.mean(per), rel=1e-5)
    v = finetune_value(
        lm,
        rows.iloc[:2],
        rows.iloc[2:],
        epochs=2,
        lr=1e-2,
        r=4,
        alpha=8.0,
        batch_size=2,
        max_length=512,
        template="plain",
        seed=0,
    )
    assert v(()) == 0.0
    a, b = v((0, 1)), v((0, 1))
    assert np.isfinite(a) and a == pytest.approx(b)  # deterministic for a seed
    assert a != 0.0


def test_samplers_and_options():
    assert CRITERIA.get("shed").meta["scope"] == "pool"
    with pytest.raises(OptionError):
        CRITERIA.get("shed").obj.resolve({"aggregate": "median"})
    with pytest.raises(OptionError):
        SELECTORS.get("qwcs").obj(pd.DataFrame({"shed": [1.0], "shed.cluster": [0.0]}), 1, temperature=0)


# ------------------------------------------------------------------ QOCS / QWCS
def scores_frame(values, labels):
    return pd.DataFrame(
        {
            "shed": [values[c] if c is not None else np.nan for c in labels],
            "shed.cluster": [np.nan if c is None else float(c) for c in labels],
        }
    )


def reference_qocs(values, labels, k):
    """sample_QOCS.py: clusters by score (descending), each cluster's rows in file order, stop at k."""
    clusters = sorted({c for c in labels if c is not None}, key=lambda c: (-values[c], c))
    out = []
    if k == 0:
        return out
    for c in clusters:
        for i, lab in enumerate(labels):
            if lab == c:
                out.append(i)
                if len(out) >= k:
                    return out
    return out


@pytest.mark.parametrize("seed", range(10))
def test_qocs_against_the_reference_rule(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 30)), int(rng.integers(1, 6))
    values = {j: float(rng.choice([0.1, 0.5, 0.9, rng.normal()])) for j in range(c)}  # ties on purpose
    labels = [None if rng.random() < 0.1 else int(rng.integers(c)) for _ in range(n)]
    k = int(rng.integers(0, n + 2))
    got = SELECTORS.get("qocs").obj(scores_frame(values, labels), k)
    assert got.tolist() == reference_qocs(values, labels, min(k, n))


def reference_qwcs(values, labels, k, temperature, seed):
    rng = np.random.default_rng(seed)
    left = {c: [i for i, lab in enumerate(labels) if lab == c] for c in sorted({c for c in labels if c is not None})}
    out = []
    for _ in range(k):
        live = [c for c in left if left[c]]
        if not live:
            break
        w = np.array([math.exp(values[c] / temperature) for c in live])
        c = live[int(rng.choice(len(live), p=w / w.sum()))]
        out.append(left[c].pop(int(rng.integers(len(left[c])))))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_qwcs_against_a_reimplementation(seed):
    rng = np.random.default_rng(100 + seed)
    n, c = int(rng.integers(1, 25)), int(rng.integers(1, 5))
    values = {j: float(rng.normal()) for j in range(c)}
    labels = [int(rng.integers(c)) for _ in range(n)]
    k = int(rng.integers(0, n + 2))
    got = SELECTORS.get("qwcs").obj(scores_frame(values, labels), k, seed=seed, temperature=0.7)
    assert got.tolist() == reference_qwcs(values, labels, min(k, n), 0.7, seed)
    assert len(set(got.tolist())) == len(got)


def test_qwcs_first_draw_follows_the_softmax():
    values = {0: 0.0, 1: 1.0, 2: 2.0}
    labels = [0] * 5 + [1] * 5 + [2] * 5
    sc = scores_frame(values, labels)
    first = [int(SELECTORS.get("qwcs").obj(sc, 1, seed=s)[0]) // 5 for s in range(3000)]
    freq = np.bincount(first, minlength=3) / 3000
    p = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.03)
