"""target_classifier: the logistic regression against its optimality conditions, and toy pools."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.criteria.target_classifier import fit_logistic
from thresher.errors import OptionError
from thresher.registry import CRITERIA


def frame(texts, prefix="p"):
    return pd.DataFrame({"id": [f"{prefix}{i}" for i in range(len(texts))], "instruction": texts, "output": ""})


def _objective_grad(x, y, w, b, l2):
    """Gradient of the class-balanced logistic loss + l2/2 |w|^2, in float64 numpy."""
    sw = np.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum())
    p = 1 / (1 + np.exp(-(x @ w + b)))
    r = sw * (p - y)
    return x.T @ r + l2 * w, r.sum()


def test_separates_a_linearly_separable_set_and_is_a_stationary_point():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 5))
    true_w = np.array([2.0, -1.0, 0.5, 0.0, 1.0])
    margin = x @ true_w
    keep = np.abs(margin) > 0.5
    x, y = x[keep], (margin[keep] > 0).astype(np.float32)
    w, b = fit_logistic(x, y, l2=1e-3, steps=500)
    z = x @ w + b
    assert z[y == 1].min() > z[y == 0].max()  # every positive above every negative
    gw, gb = _objective_grad(x.astype(np.float64), y.astype(np.float64), w, b, 1e-3)
    assert np.abs(gw).max() < 1e-4 and abs(gb) < 1e-4


def test_fit_does_not_depend_on_the_thread_count():
    """A Ray worker fits with one thread, a laptop with several: the weights must be the same bits (a
    multi-threaded fit differed by 2e-7 here, and by 1.6% of a log-odds on BIG-bench n-gram features)."""
    rng = np.random.default_rng(0)
    x = rng.random((1100, 10000)).astype(np.float32) * (rng.random((1100, 10000)) < 0.01)
    y = (rng.random(1100) < 0.1).astype(np.float32)
    before = torch.get_num_threads()
    fits = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fits.append(fit_logistic(x, y, l2=1e-3, steps=50))
            assert torch.get_num_threads() == threads  # the fit restores the caller's setting
    finally:
        torch.set_num_threads(before)
    for w, b in fits[1:]:
        assert np.array_equal(w, fits[0][0]) and b == fits[0][1]


def test_class_balance_weights_the_classes_equally():
    # 2 positives at +1, 20 negatives at -1 on one feature: with balanced weights and no penalty
    # the optimum is symmetric, so the bias is ~0
    x = np.array([[1.0]] * 2 + [[-1.0]] * 20) + np.random.default_rng(1).normal(0, 0.5, (22, 1))
    y = np.array([1.0] * 2 + [0.0] * 20, np.float32)
    w, b = fit_logistic(x, y, l2=0.1, steps=300)
    gw, gb = _objective_grad(x, y.astype(np.float64), w, b, 0.1)
    assert np.abs(gw).max() < 1e-5 and abs(gb) < 1e-5
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.ones(22), l2=0.1, steps=10)


def _toy(seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(60)]

    def text(marker=""):
        return " ".join(rng.choice(words, 10)) + (" " + marker if marker else "")

    targets = [text("please reverse it") for _ in range(8)]
    pool = (
        [text() for _ in range(150)]
        + [text("please reverse it") for _ in range(10)]
        + [text("please sort it") for _ in range(10)]
    )
    truth = np.array([0] * 150 + [1] * 10 + [0] * 10, bool)
    return targets, pool, truth


def test_ngram_classifier_finds_the_target_phrase_not_its_sibling():
    targets, pool, truth = _toy()
    sc = CRITERIA.get("target_classifier").obj(target=frame(targets, "t"), negatives=100, seed=3)
    got = sc(frame(pool))
    top = np.argsort(-got["target_classifier"].to_numpy(), kind="stable")[: truth.sum()]
    assert truth[top].all()
    again = CRITERIA.get("target_classifier").obj(target=frame(targets, "t"), negatives=100, seed=3)(frame(pool))
    np.testing.assert_array_equal(got["target_classifier"].to_numpy(), again["target_classifier"].to_numpy())
    # fit on the pool, then score a part: the same values
    part = sc.fit(frame(pool))(frame(pool).iloc[[0, 155, 165]])
    np.testing.assert_allclose(part["target_classifier"], got["target_classifier"].to_numpy()[[0, 155, 165]])


def test_negative_sample_is_seeded_and_skips_targets_and_empty_rows():
    targets, pool, _ = _toy()
    sc = CRITERIA.get("target_classifier").obj(target=frame(targets, "t"), negatives=5, seed=4)
    texts = pool[:20] + [targets[0], ""]
    rows = sc.negative_rows(texts)
    cand = np.arange(20)  # the target text (20) and the empty row (21) are never drawn
    want = np.sort(cand[np.random.default_rng(4).choice(20, size=5, replace=False)])
    np.testing.assert_array_equal(rows, want)


def test_groups_each_get_a_classifier_and_options_are_checked():
    targets, pool, _ = _toy()
    t = frame(targets + ["w1 w2 please sort it", "w3 please sort it w4"], "t")
    t["group"] = ["rev"] * 8 + ["sort"] * 2
    got = CRITERIA.get("target_classifier").obj(target=t, negatives=50)(frame(pool))
    assert {"target_classifier.sim_rev", "target_classifier.sim_sort", "target_classifier.best"} <= set(got.columns)
    np.testing.assert_allclose(
        got["target_classifier"], np.maximum(got["target_classifier.sim_rev"], got["target_classifier.sim_sort"])
    )
    assert got["target_classifier.best"].iloc[165] == "sort" and got["target_classifier.best"].iloc[155] == "rev"
    cls = CRITERIA.get("target_classifier").obj
    with pytest.raises(OptionError, match="embedder"):
        cls(target=t, embedder="lm:default")  # features=ngrams takes no embedder
    with pytest.raises(OptionError, match="buckets"):
        cls(target=t, features="embedding", buckets=100)
    assert CRITERIA.get("target_classifier").meta["scope"] == "pool"


def test_embedding_features_with_a_table_encoder():
    class TableEncoder:
        def __init__(self, table):
            self.table, self.dim, self.fingerprint = table, table.shape[1], "tbl"

        def encode(self, texts, batch_size=64):
            return np.stack([self.table[int(t[1:])] for t in texts])

    rng = np.random.default_rng(5)
    x = rng.standard_normal((130, 8)).astype(np.float32)
    x[100:] += 8.0 * np.eye(8, dtype=np.float32)[0]  # rows 100.. (targets and 10 pool rows) lean on axis 0
    tgt = frame([f"t{i}" for i in range(110, 130)], "t")
    pool = frame([f"t{i}" for i in range(110)])
    got = CRITERIA.get("target_classifier").obj(
        target=tgt, features="embedding", embedder=TableEncoder(x), negatives=60
    )(pool)
    top = np.argsort(-got["target_classifier"].to_numpy(), kind="stable")[:10]
    assert (top >= 100).all()
