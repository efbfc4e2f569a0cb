"""No criterion's score depends on sharding, batching or engine (issue 10): 1,000 real BIG-bench rows
scored with knn_distance, local_density, semdedup (pool-scoped, embeddings), nuggets (pool-scoped, a
tiny LM), perplexity (per row, the same LM, length-bucketed batches), ifd (per row, one row per forward:
``batching="row"``), dsir and target_classifier (pool-scoped, n-grams of a target set; the classifier's
fit once depended on the thread count, and a Ray worker runs one thread), then the top 100 by
knn_distance selected, under five layouts: local in one shard, local in shards of 100, local with
batch_size=64, Ray with 1 worker and Ray with 2 workers. Every layout must give the same scores (bit for
bit; perplexity's bucketed batches to float32 rounding) and the same selection."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from conftest import save_tiny_lm
from thresher.pipeline import PipelineConfig, run_pipeline

N = 1000
BUCKETED_LM = ("perplexity",)  # equal to float32 rounding; every other column bit for bit
LAYOUTS = {
    "local-one-shard": dict(shard_size=10_000),
    "local-shards-100": dict(shard_size=100),
    "local-batch-64": dict(shard_size=10_000, engine_options={"batch_size": 64}),
    "ray-1-worker": dict(shard_size=250, engine="ray", engine_options={"workers": 1}),
    "ray-2-workers": dict(shard_size=250, engine="ray", engine_options={"workers": 2, "batch_size": 64}),
}


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    """The first N rows of the real pool whose instruction + output fit in 400 characters (the tiny LM
    reads bytes: nuggets' prefix + anchors must fit its context)."""
    dst = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    n = 0
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as src, open(dst, "w", encoding="utf-8") as out:
        for line in src:
            row = json.loads(line)
            if len(row["instruction"]) + len(row["output"]) <= 400:
                out.write(line)
                n += 1
                if n == N:
                    break
    return dst


@pytest.fixture(scope="module")
def target(bigbench_path, tmp_path_factory):
    """80 real rows from further down the file (none of them in the pool), in their tasks' groups."""
    dst = tmp_path_factory.mktemp("target") / "target.jsonl"
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as src:
        rows = [json.loads(line) for _, line in zip(range(30_000), src)][-80:]
    with open(dst, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps({**row, "group": row["task"]}) + "\n")
    return dst


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(save_tiny_lm(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def emb_cache(tmp_path_factory):
    # one embeddings cache for every layout: the rows are embedded once (a slow CPU step); each layout
    # still computes every score itself (each has its own score cache)
    return str(tmp_path_factory.mktemp("emb"))


def _criteria(model: str, emb: str, target: str) -> list:
    lm = {"model": model, "max_length": 512, "device": "cpu"}
    return [
        {"name": "dsir", "options": {"target": target}},
        {"name": "target_classifier", "options": {"target": target, "negatives": 300}},
        {"name": "knn_distance", "options": {"cache_dir": emb}},
        {"name": "local_density", "options": {"cache_dir": emb}},
        {"name": "semdedup", "options": {"cache_dir": emb}},
        # anchors drawn once from the whole pool (seeded; random rather than k-means to embed the pool once)
        {
            "name": "nuggets",
            "options": {**lm, "max_length": 1024, "n_anchors": 3, "seed": 3, "anchor_select": "random"},
        },
        {"name": "perplexity", "options": {**lm, "truncation": "left"}},  # keep the answer of long prompts
        {"name": "ifd", "options": {**lm, "batching": "row"}},
    ]


def _run(pool, out, model, emb, layout: dict, target):
    kw = dict(layout)
    res = run_pipeline(
        PipelineConfig(
            data=str(pool),
            out=str(out),
            criteria=_criteria(model, emb, str(target)),
            selector={"name": "topk", "options": {"criterion": "knn_distance"}},
            k=100,
            quiet=True,
            report=False,
            **kw,
        )
    )
    scores = pd.read_parquet(res.scores_path).set_index("id").sort_index()
    return res, scores


@pytest.fixture(scope="module")
def baseline(pool, tiny_model, emb_cache, target, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "out"
    return _run(pool, out, tiny_model, emb_cache, LAYOUTS["local-one-shard"], target)


def _assert_same(got, want) -> None:
    res, scores = got
    res0, scores0 = want
    assert list(scores.columns) == list(scores0.columns)
    for c in scores0.columns:
        a, b = scores[c].to_numpy(), scores0[c].to_numpy()
        if c.split(".")[0] in BUCKETED_LM and pd.api.types.is_float_dtype(scores0[c].dtype):
            # a row's float32 forward in a length bucket rounds with the bucket's padded length and shared
            # prefix, which follow the layout: equal to float32 rounding of losses ~5 (eps 6e-8 x 5 x the
            # reduction depth), NaN in the same rows (batching="row" makes them bit for bit: ifd here)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=c)
        elif pd.api.types.is_float_dtype(scores0[c].dtype):
            np.testing.assert_array_equal(a, b, err_msg=c)  # NaN == NaN here, bit for bit otherwise
        else:
            assert a.tolist() == b.tolist(), c
    assert res.selected.tolist() == res0.selected.tolist()


def test_baseline_scores_are_complete_and_meaningful(baseline):
    res, scores = baseline
    assert len(scores) == N and len(res.selected) == 100
    for c in ("knn_distance", "local_density", "semdedup", "nuggets", "perplexity", "ifd", "dsir", "target_classifier"):
        assert c in scores.columns
    assert scores["knn_distance"].notna().all() and scores["perplexity"].notna().sum() > 0.9 * N
    assert scores["ifd"].notna().sum() > 0.9 * N
    assert scores["dsir"].notna().all() and scores["target_classifier"].notna().all()
    assert scores["target_classifier"].std() > 0.1  # a fitted classifier, not a constant
    assert scores["nuggets"].notna().sum() >= N - 3  # the anchors themselves may be unscored
    # NaN scores carry their reason
    for c in ("nuggets", "perplexity", "ifd"):
        bad = scores[c].isna()
        assert (scores.loc[bad, f"{c}.reason"] != "").all(), c
    # the manifest records how the pool-scoped criteria ran: an exact search, and nuggets' anchors
    info = {c["name"]: c.get("run_info") or {} for c in res.manifest["criteria"]}
    assert info["knn_distance"]["exact"] is True and info["local_density"]["exact"] is True
    anchors = info["nuggets"]["anchor_ids"]
    assert info["nuggets"]["anchor_select"] == "random" and len(anchors) == 3 and set(anchors) <= set(scores.index)
    # the selection is the top 100 by knn_distance, ties by lower position
    knn = scores["knn_distance"]
    assert knn.iloc[0] is not None and (knn.rank(ascending=False, method="min") <= 100).sum() >= 100


@pytest.mark.parametrize("name", ["local-shards-100", "local-batch-64"])
def test_local_layouts_match(name, pool, tiny_model, emb_cache, target, baseline, tmp_path):
    _assert_same(_run(pool, tmp_path / name, tiny_model, emb_cache, LAYOUTS[name], target), baseline)


@pytest.mark.ray
@pytest.mark.parametrize("name", ["ray-1-worker", "ray-2-workers"])
def test_ray_layouts_match(name, pool, tiny_model, emb_cache, target, baseline, tmp_path, ray_cluster):
    got = _run(pool, tmp_path / name, tiny_model, emb_cache, LAYOUTS[name], target)
    _assert_same(got, baseline)
    anchors = {c["name"]: c.get("run_info") for c in got[0].manifest["criteria"]}["nuggets"]["anchor_ids"]
    assert anchors == {c["name"]: c.get("run_info") for c in baseline[0].manifest["criteria"]}["nuggets"]["anchor_ids"]
    run = got[0].manifest["engine_run"]
    assert run["worker_processes"] == LAYOUTS[name]["engine_options"]["workers"]
    assert run["pool_task_peak_rss_mb"] > 50  # the whole-pool tasks' own peak (a process with torch loaded)
    # and their private part alone (sampled), which the resident figures include
    assert 50 < run["pool_task_peak_private_mb"] <= run["pool_task_peak_rss_mb"]
    assert 50 < run["worker_peak_private_mb"] <= run["worker_peak_rss_mb"]
