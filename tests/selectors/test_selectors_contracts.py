"""Contracts every selector keeps (thresher.selectors.base): one budget policy, typed options
refused before any work, and the score columns each selector declares it reads."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from thresher.errors import OptionError
from thresher.registry import SELECTORS
from thresher.selectors import base, basic, diversity
from thresher.selectors.base import check_k, columns_read

N = 24


def pool():
    rng = np.random.default_rng(0)
    tags = [sorted({f"t{j}" for j in rng.integers(0, 8, 1 + i % 4)}) for i in range(N)]
    df = pd.DataFrame(
        {
            "id": [str(i) for i in range(N)],
            "q": rng.random(N),
            "r": rng.random(N),
            "task": np.array(["a", "b", "c"])[np.arange(N) % 3],
            # the columns of the InsTag, SHED and MoDS-necessity criteria their selectors read
            "tags": [float(len(t)) for t in tags],
            "tags.tags": tags,
            "shed.cluster": (np.arange(N) % 5).astype(float),
            "necessity": np.where(np.arange(N) < 6, np.nan, rng.random(N)),  # NaN for seed rows, as the criterion
            "necessity.seed": np.where(np.arange(N) < 6, np.arange(N, dtype=float), np.nan),
            "necessity.threshold": np.full(N, 0.5),
        }
    )
    df["shed"] = np.array([0.3, -0.1, 0.7, 0.2, 0.0])[np.arange(N) % 5]  # one value per cluster
    emb = rng.standard_normal((N, 6)).astype(np.float32)
    return df, emb


# A valid call of every built-in selector: options, and the columns it reads with them.
CASES = {
    "topk": ({"criterion": "q"}, ["q"]),
    "threshold": ({"criterion": "q", "mode": "quantile", "value": 0.0}, ["q"]),
    "pareto": ({"objectives": ["q:max", "r:min"]}, ["q", "r"]),
    "weighted": ({"objectives": "q:max,r:max", "weights": [1, 2]}, ["q", "r"]),
    "rrf": ({"objectives": [("q", "max")]}, ["q"]),
    "aggregate": ({"objectives": [{"name": "r", "direction": "min"}], "method": "borda"}, ["r"]),
    "random": ({}, []),
    "cascade": (
        {
            "first": {"name": "topk", "ratio": 1.0, "options": {"criterion": "q"}},
            "then": {"name": "group_topk", "options": {"criterion": "r", "group_column": "task"}},
        },
        ["q", "r", "task"],
    ),
    "repr_filter": ({"criterion": "q", "tau": 1.0, "device": "cpu"}, ["q"]),
    "kcenter": ({"criterion": "q", "device": "cpu"}, ["q"]),
    "facility_location": ({"criterion": "q", "n_neighbors": 5}, ["q"]),
    "car": ({"criterion": "q", "n2": 1}, ["q"]),
    "cluster_balanced": ({"criterion": "q", "n_clusters": 3}, ["q"]),
    "group_topk": ({"criterion": "q", "group_column": "task", "quota": "proportional"}, ["q", "task"]),
    "tag_coverage": ({"criterion": "tags"}, ["tags", "tags.tags"]),
    "qocs": ({}, ["shed", "shed.cluster"]),
    "qwcs": ({"temperature": 0.5}, ["shed", "shed.cluster"]),
    "necessity": ({"device": "cpu"}, ["necessity", "necessity.seed", "necessity.threshold"]),
    "gumbel_topk": ({"criterion": "q", "temperature": 0.5}, ["q"]),
}


def builtin_selectors():
    return [e for e in SELECTORS if e.obj.__module__.startswith("thresher.selectors.")]


def call(name, k, **extra):
    df, emb = pool()
    opts, _ = CASES[name]
    return np.asarray(SELECTORS.get(name).obj(df, k, embeddings=emb, seed=0, **{**opts, **extra}))


def test_every_builtin_selector_has_a_case():
    assert sorted(e.name for e in builtin_selectors()) == sorted(CASES)


def test_check_k_clamps_with_a_notice_and_refuses_bad_values(caplog):
    with caplog.at_level(logging.WARNING, logger="thresher.selectors"):
        assert check_k(5, 3, "x") == 3
    assert "selector x: budget k=5 is larger than the 3 eligible rows; selecting 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="thresher.selectors"):
        assert check_k(3, 3, "x") == 3 and check_k(0, 0, "x") == 0 and check_k(np.int64(2), 9, "x") == 2
        assert check_k(6.0, 9, "x") == 6
    assert caplog.text == ""
    for bad in (-1, 1.5, "3", True, None):
        with pytest.raises(OptionError, match="selector x: k: expected a non-negative integer"):
            check_k(bad, 9, "x")


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_selector_clamps_k_the_same_way(name, caplog):
    with caplog.at_level(logging.WARNING, logger="thresher.selectors"):
        got = call(name, N + 5)
    assert 0 < len(got) <= N and len(set(got.tolist())) == len(got)
    assert got.min() >= 0 and got.max() < N
    assert f"selector {name}: budget k={N + 5} is larger than the {N} eligible rows; selecting {N}" in caplog.text
    assert len(call(name, 0)) == 0
    with pytest.raises(OptionError, match=f"selector {name}: k: expected"):
        call(name, -1)


# options whose rows for k follow another rule than the case's (n1 fixed, the other quota, a random start)
VARIANTS = {"car": {"n1": 3}, "group_topk": {"quota": "equal"}, "kcenter": {"start": "random"}}


@pytest.mark.parametrize(
    "name,extra",
    [pytest.param(n, {}, id=n) for n in sorted(CASES)]
    + [pytest.param(n, v, id=f"{n}-{next(iter(v))}") for n, v in sorted(VARIANTS.items())],
)
def test_a_selection_is_the_first_k_of_one_order_or_refuses_a_token_budget(name, extra):
    """A token budget keeps the longest prefix of the selector's order of every eligible row that fits
    (thresher.pipeline.selection.within_tokens), so it means the selector's own rule only when every
    budget k selects the first k of that order; a selector for which it does not refuses --tokens
    (base.token_budget_refusal). CaR with n1 unset (the union filled to k) once put the k global top
    rows first and the cluster tops last: under a token budget its order of every row was the plain
    score order, the clusters ignored."""
    opts = {**CASES[name][0], **extra}
    if base.token_budget_refusal(SELECTORS.get(name), opts) is not None:
        return
    whole = call(name, N, **extra)
    for k in range(N + 1):
        np.testing.assert_array_equal(call(name, k, **extra), whole[:k], err_msg=f"{name} {extra} k={k}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_columns_read(name):
    opts, want = CASES[name]
    assert columns_read(SELECTORS.get(name), opts) == want


def test_columns_read_defaults_and_unknown_options():
    assert columns_read(SELECTORS.get("topk"), {}) == []
    assert columns_read(SELECTORS.get("group_topk"), {"group_column": "task"}) == ["task"]
    assert columns_read(SELECTORS.get("facility_location"), {}) == []
    with pytest.raises(OptionError, match="unknown option"):
        columns_read(SELECTORS.get("topk"), {"colum": "q"})


def test_every_option_is_typed():
    for e in builtin_selectors():
        for o in e.options.values():
            assert o.kind() is not None or o.choices is not None, f"{e.name}.{o.name} has no type"


@pytest.mark.parametrize(
    "name,opts,what",
    [
        ("repr_filter", {"block": -1}, "block"),
        ("repr_filter", {"block": 0}, "block"),
        ("repr_filter", {"tau": 2}, "tau"),
        ("repr_filter", {"device": "gpu"}, "device"),
        ("car", {"n2": -1}, "n2"),
        ("car", {"n1": -3}, "n1"),
        ("car", {"variance": 0.0}, "variance"),
        ("car", {"n_clusters": 0}, "n_clusters"),
        ("kcenter", {"start": "middle"}, "start"),
        ("facility_location", {"n_neighbors": 0}, "n_neighbors"),
        ("facility_location", {"index_kind": "annoy"}, "index_kind"),
        ("cluster_balanced", {"spherical": "yes"}, "spherical"),
        ("topk", {"diversity_tau": 2.0}, "diversity_tau"),
        ("topk", {"direction": "up"}, "direction"),
        ("threshold", {"value": "high"}, "value"),
        ("aggregate", {"normalize": "l2"}, "normalize"),
        ("cascade", {"first": 3}, "first"),
        ("tag_coverage", {"tags_column": 3}, "tags_column"),
        ("qwcs", {"temperature": 0.0}, "temperature"),
        ("qocs", {"criterion": 1}, "criterion"),
        ("necessity", {"device": "gpu"}, "device"),
        ("gumbel_topk", {"temperature": -1.0}, "temperature"),
    ],
)
def test_invalid_options_refused_before_any_work(name, opts, what, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before the options were checked")

    for mod in (base, basic, diversity):
        for fn in ("as_embeddings", "score_values", "column", "order_by", "objective_matrix", "cascade_stage"):
            if hasattr(mod, fn):
                monkeypatch.setattr(mod, fn, boom)
    df, _ = pool()
    with pytest.raises(OptionError, match=f"option {what}"):
        SELECTORS.get(name).resolve_options(opts)
    with pytest.raises(OptionError, match=f"{name}: option {what}"):
        SELECTORS.get(name).obj(df, 3, embeddings=None, **opts)  # embeddings=None would fail later if reached
