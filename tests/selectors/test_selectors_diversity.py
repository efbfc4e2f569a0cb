"""Diversity selectors against their plain references.

repr_filter is compared with a faithful re-implementation of DEITA's sequential
loop (benchmarks/baselines/deita_repr_filter.py); facility_location's lazy greedy
on a full kNN graph with the dense greedy; kcenter with a dense numpy greedy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from benchmarks.baselines import deita_repr_filter as deita

from thresher.embed.transform import EmbeddingTransform
from thresher.registry import SELECTORS
from thresher.selectors.diversity import (
    dense_similarity,
    facility_location_dense,
    facility_location_greedy,
    facility_location_objective,
    kmeans,
    repr_filter_order,
)


def clustered(n, d, centers, noise, seed):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def distinct(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def frame(scores):
    return pd.DataFrame({"id": [str(i) for i in range(len(scores))], "q": scores})


def sel(name, scores, k, **kw):
    return SELECTORS.get(name).obj(frame(scores) if not isinstance(scores, pd.DataFrame) else scores, k, **kw)


# ------------------------------------------------------------- repr_filter
@pytest.mark.parametrize("tau", [0.9, 0.7, 0.3, -0.2])
@pytest.mark.parametrize("block", [1, 7, 64, None])
def test_repr_filter_identical_to_deita_loop(tau, block):
    x = clustered(600, 24, 30, 0.35, seed=0)
    s = np.random.default_rng(1).random(600)
    s[::17] = 0.5  # score ties: lower position first
    want = deita.deita_repr_filter(x, s, 120, tau)
    got = sel("repr_filter", s, 120, embeddings=x, tau=tau, block=block, device="cpu")
    np.testing.assert_array_equal(got, want)


def test_repr_filter_stops_at_budget_and_keeps_order():
    x = distinct(300, 16, 2)  # 300 distinct directions
    s = np.linspace(1, 0, 300)
    got = sel("repr_filter", s, 25, embeddings=x, tau=0.99)
    assert len(got) == 25
    want = deita.deita_repr_filter(x, s, 25, 0.99)
    np.testing.assert_array_equal(got, want)


def test_repr_filter_exact_duplicates_removed():
    base = distinct(10, 64, 3)
    x = np.concatenate([base, base, base])  # every row three times
    s = np.ones(30)  # all tied: walk in position order
    got = sel("repr_filter", s, 30, embeddings=x, tau=0.9)
    np.testing.assert_array_equal(np.sort(got), np.arange(10))


def test_repr_filter_nan_scores_never_selected_and_min_direction():
    x = distinct(50, 8, 4)
    s = np.arange(50, dtype=float)
    s[[0, 5]] = np.nan
    got = sel("repr_filter", s, 10, embeddings=x, tau=1.0, direction="min")
    assert 0 not in got and 5 not in got
    assert list(got[:3]) == [1, 2, 3]


def test_repr_filter_borderline_independent_of_block():
    # similarities within float32 rounding of tau are decided in float64: blocks agree
    x = clustered(400, 12, 20, 0.3, seed=5)
    s = np.random.default_rng(6).random(400)
    sims = (x @ x.T)[np.triu_indices(400, 1)]
    tau = float(np.sort(sims)[len(sims) // 2])  # tau equal to an actual pair similarity
    a = repr_filter_order(x, np.argsort(-s, kind="stable"), 100, tau, block=1)
    b = repr_filter_order(x, np.argsort(-s, kind="stable"), 100, tau, block=1000)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tau", [1.5, -1.01, "0.9", True])
def test_repr_filter_bad_tau(tau):
    x = distinct(10, 4, 0)
    with pytest.raises(ValueError, match="tau"):
        sel("repr_filter", np.ones(10), 3, embeddings=x, tau=tau)


@pytest.mark.parametrize("name", ["repr_filter", "kcenter", "facility_location", "car", "cluster_balanced"])
def test_bad_inputs(name, caplog):
    x = distinct(20, 4, 0)
    s = np.random.default_rng(0).random(20)
    # issue 15: one budget policy for every selector, k > rows is clamped with a notice (it used to raise here)
    with caplog.at_level("WARNING", logger="thresher.selectors"):
        got = sel(name, s, 21, embeddings=x)
    assert len(got) <= 20 and len(set(got.tolist())) == len(got)
    assert f"selector {name}: budget k=21 is larger than the 20 eligible rows; selecting 20" in caplog.text
    with pytest.raises(ValueError, match="embeddings: 19 rows for 20 score rows"):
        sel(name, s, 5, embeddings=x[:19])
    y = x.copy()
    y[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"embeddings: 1 row\(s\) contain NaN.*row 7"):
        sel(name, s, 5, embeddings=y)
    with pytest.raises(ValueError, match="embeddings: selector"):
        sel(name, s, 5)
    with pytest.raises(ValueError, match="k: expected"):
        sel(name, s, -1, embeddings=x)
    assert len(sel(name, s, 0, embeddings=x)) == 0


# ---------------------------------------------------------------- kcenter
def dense_kcenter(x, k, first):
    d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
    out = [first]
    mind = d[first].copy()
    for _ in range(k - 1):
        mind[out] = -1
        j = int(np.argmax(mind))
        out.append(j)
        mind = np.minimum(mind, d[j])
    return np.array(out)


def test_kcenter_matches_dense_greedy():
    x = distinct(200, 10, 7)
    s = np.random.default_rng(8).random(200)
    got = sel("kcenter", s, 15, embeddings=x)
    assert got[0] == int(np.argmax(s))
    np.testing.assert_array_equal(got, dense_kcenter(x.astype(np.float64), 15, int(np.argmax(s))))


def test_kcenter_random_start_is_seeded_and_nan_rows_excluded():
    x = distinct(100, 6, 9)
    s = np.random.default_rng(10).random(100)
    s[:50] = np.nan
    a = sel("kcenter", s, 10, embeddings=x, start="random", seed=3)
    b = sel("kcenter", s, 10, embeddings=x, start="random", seed=3)
    np.testing.assert_array_equal(a, b)
    assert (a >= 50).all() and len(set(a.tolist())) == 10


def scaled(x, seed):
    """``x``'s rows times magnitudes from 1e-3 to 1e3: the same directions, other norms."""
    return (x * np.exp(np.random.default_rng(seed).uniform(-7, 7, (len(x), 1)))).astype(np.float32)


def test_kcenter_and_repr_filter_normalise_raw_rows_as_their_references():
    """Rows of any norm: kcenter (normalize) picks the dense greedy's centres on the unit rows, the repr
    filter keeps DEITA's rows of the unit rows, bit for bit the same as when handed the unit rows."""
    x = distinct(300, 12, 21)
    raw = scaled(x, 22)
    s = np.random.default_rng(23).random(300)
    got = sel("kcenter", s, 20, embeddings=raw)
    unit = raw / np.linalg.norm(raw.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_array_equal(got, dense_kcenter(unit, 20, int(np.argmax(s))))
    c = clustered(400, 16, 25, 0.4, seed=24)
    rawc = scaled(c, 25)
    s = np.random.default_rng(26).random(400)
    unitc = rawc / np.linalg.norm(rawc, axis=1, keepdims=True)
    for block in (7, None):
        got = sel("repr_filter", s, 90, embeddings=rawc, tau=0.6, block=block, device="cpu")
        np.testing.assert_array_equal(got, deita.deita_repr_filter(unitc, s, 90, 0.6))
    assert not np.array_equal(
        sel("kcenter", s, 20, embeddings=rawc, normalize=False), sel("kcenter", s, 20, embeddings=rawc)
    )


@pytest.mark.parametrize("name", ["kcenter", "repr_filter"])
def test_kcenter_and_repr_filter_hold_no_normalised_copy(name, tmp_path, monkeypatch):
    """Issue 10 (selection at scale): on the run's memory map of its embeddings (float32, read only)
    neither selector allocates a [rows, dim] normalised copy: the heap grows by a few bytes a row
    (constant temporaries made small here: the checks' blocks of ``ROW_ELEMS`` values, the repr
    filter's [block, block] similarities)."""
    import tracemalloc

    from thresher.ops import rows as row_blocks

    monkeypatch.setattr(row_blocks, "ROW_ELEMS", 1 << 14)
    rows, dim = 40_000, 128
    path = tmp_path / "emb.f32"
    scaled(distinct(rows, dim, 27), 28).tofile(path)
    emb = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))
    scores = frame(np.random.default_rng(29).random(rows))
    opts = {"block": 256} if name == "repr_filter" else {}
    sel(name, scores[:300], 8, embeddings=emb[:300], device="cpu", **opts)  # first-call imports and caches
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        got = sel(name, scores, 8, embeddings=emb, device="cpu", **opts)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(got) == 8
    assert peak < rows * 64, f"{name}: heap peak {peak / rows:.0f} bytes a row (a copy: {dim * 4} bytes a row)"


# ------------------------------------------------------- facility location
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_facility_location_full_graph_equals_dense_greedy(metric):
    x = clustered(150, 12, 15, 0.5, seed=11)
    got, gains = facility_location_greedy(x, 20, n_neighbors=149, metric=metric)
    want = facility_location_dense(x, 20, metric)
    np.testing.assert_array_equal(got, want)
    assert (np.diff(gains) <= 1e-9).all()  # greedy gains of a submodular function never increase
    np.testing.assert_allclose(gains.sum(), facility_location_objective(x, got, metric), rtol=1e-6)


def test_facility_location_sparse_graph_close_to_dense():
    x = clustered(800, 16, 40, 0.6, seed=12)
    dense = facility_location_objective(x, facility_location_dense(x, 80), "cosine")
    got = sel("facility_location", np.zeros(800), 80, embeddings=x, n_neighbors=32)
    assert len(set(got.tolist())) == 80
    assert facility_location_objective(x, got, "cosine") >= 0.99 * dense


def test_dense_similarity_kernels():
    x = distinct(5, 3, 0)
    S = dense_similarity(x, "euclidean")
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    np.testing.assert_allclose(S, np.exp(-d / 3), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dense_similarity(x, "cosine"), np.maximum(x @ x.T, 0), atol=1e-6)


# -------------------------------------------------- car / clusters / groups
def test_car_union_of_global_top_and_cluster_tops():
    x = clustered(200, 8, 10, 0.4, seed=13)
    s = np.random.default_rng(14).random(200)
    got = sel("car", s, 40, embeddings=x, n1=12, n2=1, seed=0)
    order = np.argsort(-s, kind="stable")
    assert list(got[:12]) == list(order[:12])
    c = int(np.floor(np.sqrt(200 / 2)))
    z = EmbeddingTransform(center=True, pca=0.95).fit_apply(x[order])
    _, lab = kmeans(z, c, seed=0, n_init=10, init="k-means++")  # CaR's clustering (its rule is checked here)
    labels = np.empty(200, np.int64)
    labels[order] = lab
    best = {g: order[lab == g][0] for g in np.unique(lab)}
    assert set(best.values()) <= set(got.tolist())
    assert set(got.tolist()) == set(order[:12].tolist()) | set(best.values())
    assert len(got) == len(set(got.tolist()))
    full = sel("car", s, 40, embeddings=x, seed=0)  # default n1 fills the budget
    assert len(full) == 40 and set(best.values()) <= set(full.tolist())


def test_cluster_balanced_round_robin():
    x = clustered(120, 6, 4, 0.05, seed=15)  # 4 tight clusters
    s = np.random.default_rng(16).random(120)
    got = sel("cluster_balanced", s, 12, embeddings=x, n_clusters=4)
    lab = np.argmax(x @ x[got[:4]].T, 1)
    assert len(set(lab[got[:4]].tolist())) == 4  # first round: one per cluster
    assert len(set(lab[got[4:8]].tolist())) == 4


def test_group_topk_equal_and_proportional():
    s = np.arange(30, dtype=float)[::-1].copy()  # row 0 best
    g = np.array(["a"] * 20 + ["b"] * 8 + ["c"] * 2)
    eq = sel("group_topk", s, 9, groups=g)
    assert list(eq) == [0, 20, 28, 1, 21, 29, 2, 22, 3]
    pr = sel("group_topk", s, 10, groups=g, quota="proportional")
    cnt = pd.Series(g[pr]).value_counts().to_dict()
    assert cnt == {"a": 7, "b": 3} or cnt == {"a": 7, "b": 2, "c": 1}
    assert (np.diff(pr) > 0).all()  # overall score order
    df = frame(s)
    df["task"] = g
    np.testing.assert_array_equal(sel("group_topk", df, 9, criterion="q", group_column="task"), eq)
    with pytest.raises(ValueError, match="groups"):
        sel("group_topk", s, 3)
    with pytest.raises(ValueError, match="groups: 5 labels"):
        sel("group_topk", s, 3, groups=g[:5])


def test_group_labels_are_compared_as_strings_without_a_string_per_row():
    """group_topk's label codes equal numpy's unique of the labels as strings (the rule), also where
    numbers that compare equal print apart (-0.0 and 0.0) and values of other types print alike (1 and
    "1"); numbers are coded by their bits first, with no string per row."""
    from thresher.selectors.diversity import label_codes

    rng = np.random.default_rng(3)
    other_nan = np.array([np.nan]).view(np.int64) ^ 1
    cases = [
        rng.integers(0, 40, 500).astype(float),  # a cluster column
        np.array([0.0, -0.0, np.nan, 1.0, 1e300, -1e-300, np.inf, -np.inf, 3.0, 0.0]),
        np.concatenate([np.array([np.nan]), other_nan.view(np.float64)]),  # two NaN payloads: one "nan"
        np.array([0.0, -0.0, 2.5], np.float32),
        rng.integers(-3, 3, 50),
        np.array([True, False, True]),
        np.zeros(0),
        np.array(["b", "a", "b"]),
        np.array([1, 1.0, "1", None, np.nan, "a"], dtype=object),
    ]
    for g in cases:
        np.testing.assert_array_equal(label_codes(g), np.unique(g.astype(str), return_inverse=True)[1].reshape(-1))
    s = np.arange(6, dtype=float)[::-1].copy()
    df = frame(s)
    df["c"] = [0.0, -0.0, 0.0, 1.0, -0.0, 1.0]  # three groups as strings: "0.0", "-0.0", "1.0"
    assert list(sel("group_topk", df, 3, criterion="q", group_column="c")) == [0, 1, 3]


def test_kmeans_lloyd_matches_scikit_learn_from_the_same_init():
    """The clustering step of CaR / cluster_balanced against an independent k-means (scikit-learn's
    Lloyd) started from the same centroids: the torch path's seeded init rows."""
    import torch
    from sklearn.cluster import KMeans

    from thresher.cluster import _kmeans_torch

    x = clustered(300, 6, 8, 0.35, seed=21)
    c = 8
    init = x[torch.randperm(300, generator=torch.Generator().manual_seed(5))[:c].numpy()]
    cent, lab = _kmeans_torch(np.ascontiguousarray(x), c, 5, False, 50)
    ref = KMeans(n_clusters=c, init=init.astype(np.float64), n_init=1, max_iter=50, tol=0.0, algorithm="lloyd")
    ref.fit(x.astype(np.float64))
    np.testing.assert_array_equal(lab, ref.labels_)
    np.testing.assert_allclose(cent, ref.cluster_centers_, atol=1e-5)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_car_matches_an_independent_implementation(backend, monkeypatch):
    """CaR's rule re-implemented with scikit-learn (PCA 95%, KMeans) on well-separated clusters:
    top n1 by score plus the best row of every cluster."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    import thresher.cluster as cl

    if backend == "torch":
        monkeypatch.setattr(cl, "faiss_module", lambda: None)  # faiss not installed: the torch Lloyd loop
    elif cl.faiss_module() is None:
        pytest.skip("faiss is not installed (the faiss extra)")
    x = clustered(200, 8, 10, 0.03, seed=31)
    s = np.random.default_rng(32).random(200)
    got = sel("car", s, 200, embeddings=x, n1=15, n2=1, seed=0)
    c = int(np.floor(np.sqrt(200 / 2)))
    z = PCA(n_components=0.95, svd_solver="full").fit_transform(x - x.mean(0))
    lab = KMeans(n_clusters=c, n_init=10, random_state=0).fit(z).labels_
    order = np.argsort(-s, kind="stable")
    want = set(order[:15].tolist()) | {int(order[lab[order] == g][0]) for g in range(c)}
    assert set(got.tolist()) == want and len(got) == len(want)


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("block", [1, 7 * 5, 1 << 20])  # values: rows x 5 dimensions
def test_kmeans_inertia_in_blocks_is_the_whole_sum(monkeypatch, spherical, block):
    """Summed a block of rows at a time (no float64 copy of the pool): the float64 objective written out
    here, to float64 rounding, for blocks of one row, of seven rows and of the whole input; empty input."""
    import thresher.cluster as cl

    monkeypatch.setattr(cl, "INERTIA_BLOCK", block)
    x = clustered(53, 4, 5, 0.3, seed=3)
    cent = x[:4].astype(np.float64) + 0.01
    lab = np.arange(53) % 4
    xd, c = x.astype(np.float64), cent[lab]
    want = float((1.0 - (xd * c).sum(1)).sum()) if spherical else float(((xd - c) ** 2).sum())
    assert cl.kmeans_inertia(x, cent, lab, spherical) == pytest.approx(want, rel=1e-12)
    assert cl.kmeans_inertia(x[:0], cent, lab[:0], spherical) == 0.0


def test_kmeans_restarts_keep_the_lowest_inertia(monkeypatch):
    """n_init runs seeds seed..seed+n_init-1 and keeps the run with the lowest sum of squared
    distances (computed here in numpy); k-means++ seeds lie on distinct rows."""
    import thresher.cluster as cl

    x = clustered(150, 5, 6, 0.4, seed=41)
    for faiss in (None, cl.faiss_module()):
        monkeypatch.setattr(cl, "faiss_module", lambda f=faiss: f)

        def sse(cent, lab):
            return float(((x.astype(np.float64) - cent.astype(np.float64)[lab]) ** 2).sum())

        singles = [sse(*kmeans(x, 6, seed=7 + t, init="k-means++")) for t in range(5)]
        cent, lab = kmeans(x, 6, seed=7, n_init=5, init="k-means++")
        assert sse(cent, lab) == pytest.approx(min(singles), rel=1e-6)
        again = kmeans(x, 6, seed=7, n_init=5, init="k-means++")
        np.testing.assert_array_equal(again[1], lab)  # deterministic
    rows = cl.kmeans_pp_rows(x, 6, 3)
    assert len(set(rows.tolist())) == 6
    same = np.repeat(x[:2], 5, axis=0)  # 10 rows, 2 distinct points, 4 clusters: seeds still distinct rows
    assert len(set(cl.kmeans_pp_rows(same, 4, 0).tolist())) == 4
    with pytest.raises(ValueError, match="n_init"):
        kmeans(x, 3, n_init=0)
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 3, init="kmeans++")
