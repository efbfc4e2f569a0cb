"""knn_distance, local_density and semdedup against brute-force numpy.

A table-lookup encoder (text "t<i>" -> row i of a fixed matrix) makes the
embeddings known exactly; one test runs the real default embedder on real rows.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.criteria.diversity import max_sim_to_earlier, semdedup_scores
from thresher.index import faiss_module
from thresher.registry import CRITERIA


class TableEncoder:
    def __init__(self, table):
        self.table = np.asarray(table, np.float32)
        self.dim = self.table.shape[1]
        self.fingerprint = "table:" + str(hash(self.table.tobytes()))

    def encode(self, texts, batch_size=64):
        return np.stack([self.table[int(t[1:])] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


def table(n, d, seed, dup=()):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    for a, b in dup:
        x[b] = x[a]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def frame(rows):
    return pd.DataFrame(
        {"id": [f"s{i}" for i in rows], "instruction": [f"t{i}" for i in rows], "input": "", "output": ""}
    )


def make(name, x, **kw):
    return CRITERIA.get(name).obj(embedder=TableEncoder(x), **kw)


def brute_knn(x, q_rows, k, metric):
    xd = x.astype(np.float64)
    out = []
    for r in q_rows:
        if metric == "l2":
            d = np.sqrt(np.maximum(((xd - xd[r]) ** 2).sum(1), 0))
        else:
            d = 1 - xd @ xd[r]
        d[r] = np.inf
        out.append(np.sort(d)[:k])
    return np.array(out)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_knn_distance_matches_brute_force(metric):
    x = table(80, 12, 0)
    out = make("knn_distance", x, metric=metric)(frame(range(80)))
    want = brute_knn(x, range(80), 6, metric)
    assert list(out.columns) == ["id", "knn_distance", "knn_distance.nearest", "knn_distance.reason"]
    np.testing.assert_allclose(out["knn_distance"], want.mean(1), atol=1e-5)
    np.testing.assert_allclose(out["knn_distance.nearest"], want[:, 0], atol=1e-5)
    assert (out["knn_distance.reason"] == "").all()
    assert out["id"].tolist() == [f"s{i}" for i in range(80)]


def test_fit_pool_then_score_batches():
    x = table(60, 8, 1)
    pool = frame(range(50))
    whole = make("knn_distance", x, k=3)(pool)
    sc = make("knn_distance", x, k=3).fit(pool)
    parts = pd.concat([sc(frame(range(s, min(50, s + 7)))) for s in range(0, 50, 7)], ignore_index=True)
    np.testing.assert_allclose(parts["knn_distance"], whole["knn_distance"], atol=1e-6)
    # rows outside the pool: neighbours among all 50 pool rows, none excluded
    out = sc(frame([55]))
    d = np.sqrt(np.maximum(((x[:50].astype(np.float64) - x[55]) ** 2).sum(1), 0))
    np.testing.assert_allclose(out["knn_distance"], np.sort(d)[:3].mean(), atol=1e-5)


def test_score_embeddings_takes_keys_as_fixed_width_bytes():
    from thresher.embed import sample_key

    x = table(40, 8, 4)
    sc = make("knn_distance", x, k=3).fit(frame(range(30)))
    rows = [2, 35, 29]  # two pool rows (their own row excluded) and one outside
    keys = np.asarray([sample_key(f"s{i}", f"t{i}") for i in rows], dtype=object)
    as_str = sc.score_embeddings(np.asarray([f"s{i}" for i in rows]), x[rows], keys)
    as_bytes = sc.score_embeddings(np.asarray([f"s{i}" for i in rows]), x[rows], keys.astype("S24"))
    pd.testing.assert_frame_equal(as_bytes, as_str)
    want = brute_knn(x[:30], [2, 29], 3, "l2").mean(1)  # the fitted pool's own rows: self excluded
    np.testing.assert_allclose(as_bytes["knn_distance"].to_numpy()[[0, 2]], want, atol=1e-5)
    d = np.sqrt(np.maximum(((x[:30].astype(np.float64) - x[35]) ** 2).sum(1), 0))
    assert as_bytes["knn_distance"].iloc[1] == pytest.approx(np.sort(d)[:3].mean(), abs=1e-5)


def test_fitted_pool_of_exactly_k_rows():
    x = table(6, 4, 21)
    sc = make("knn_distance", x, k=3).fit(frame(range(3)))
    out = sc(frame([0, 4]))  # s0 has only 2 others in the pool; s4 is outside it: all 3 pool rows
    assert np.isnan(out.loc[0, "knn_distance"]) and "fewer than 3" in out.loc[0, "knn_distance.reason"]
    d = np.sqrt(((x[:3].astype(np.float64) - x[4]) ** 2).sum(1))
    assert out.loc[1, "knn_distance"] == pytest.approx(d.mean(), abs=1e-5)
    assert out.loc[1, "knn_distance.reason"] == ""


def test_small_pool_and_empty_text_give_nan_with_reason():
    x = table(5, 4, 2)
    out = make("knn_distance", x)(frame(range(5)))  # k=6 > 4 others
    assert out["knn_distance"].isna().all()
    assert out["knn_distance.reason"].str.contains("fewer than 6").all()
    x = table(20, 4, 3)
    df = frame(range(20))
    df.loc[3, "instruction"] = "t3"
    sc = make("knn_distance", x, k=2)
    sc.encoder.encode = lambda texts, batch_size=64: np.stack(
        [x[int(t[1:])] if t else np.ones(4, np.float32) / 2 for t in texts]
    )
    df.loc[4, "instruction"] = ""
    out = sc(df)
    assert np.isnan(out.loc[4, "knn_distance"]) and out.loc[4, "knn_distance.reason"] == "empty text"
    assert out["knn_distance"].drop(index=4).notna().all()


def test_local_density_is_mean_similarity():
    x = table(70, 10, 4)
    out = make("local_density", x, k=5)(frame(range(70)))
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    top = -np.sort(-s, 1)[:, :5]
    np.testing.assert_allclose(out["local_density"], top.mean(1), atol=1e-5)
    np.testing.assert_allclose(out["local_density.radius"], 1 - top[:, -1], atol=1e-5)


@pytest.mark.parametrize("block", [1, 3, 1000])
def test_max_sim_to_earlier_blocked_equals_dense(block):
    x = table(40, 6, 5)
    got = max_sim_to_earlier(torch.from_numpy(x), block=block).numpy()
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    want = np.array([-1.0] + [s[i, :i].max() for i in range(1, 40)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_semdedup_earlier_vs_kept_chain():
    # a ~ b (0.96), b ~ c (0.96), a vs c below 1 - eps: "earlier" drops b and c, "kept" keeps c
    t = np.deg2rad([0.0, 16.0, 32.0])
    x = np.stack([np.cos(t), np.sin(t), np.zeros(3)], 1).astype(np.float32)
    e = semdedup_scores(x, eps=0.05, n_clusters=1, order="index", against="earlier")
    assert e["keep"].tolist() == [1, 0, 0]
    k = semdedup_scores(x, eps=0.05, n_clusters=1, order="index", against="kept")
    assert k["keep"].tolist() == [1, 0, 1]


def test_semdedup_duplicates_and_clusters_match_brute_force():
    dups = [(0, 10), (0, 11), (5, 30), (7, 8)]
    x = table(60, 16, 7, dup=dups)
    out = make("semdedup", x, eps=0.01, n_clusters=4, order="index", against="earlier")(frame(range(60)))
    keep = out["semdedup.keep"].to_numpy()
    assert keep[[10, 11, 30, 8]].tolist() == [0, 0, 0, 0] and keep[[0, 5, 7]].tolist() == [1, 1, 1]
    lab = out["semdedup.cluster"].to_numpy()
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    for i in range(60):
        earlier = [j for j in range(i) if lab[j] == lab[i]]
        want = s[i, earlier].max() if earlier else -1.0
        assert abs(out.loc[i, "semdedup"] - want) < 1e-5
    hard = make("semdedup", x, eps=0.01, n_clusters=4)(frame(range(60)))
    assert hard["semdedup.keep"].sum() == keep.sum()  # one copy of each duplicate group kept


def test_semdedup_default_compares_with_the_kept_set():
    # default against=kept: a greedy pass per cluster, checked against a plain loop in float64
    rng = np.random.default_rng(3)
    base = rng.normal(size=(6, 8))
    x = np.repeat(base, 5, axis=0) + 0.12 * rng.normal(size=(30, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    got = semdedup_scores(x, eps=0.05, n_clusters=1, order="index")
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    kept: list = []
    want_sim, want_keep = [], []
    for i in range(30):
        m = max((s[i, j] for j in kept), default=-1.0)
        want_sim.append(m)
        want_keep.append(1.0 if m <= 0.95 else 0.0)
        if m <= 0.95:
            kept.append(i)
    assert got["keep"].tolist() == want_keep and 0 < sum(want_keep) < 30
    np.testing.assert_allclose(got[""], want_sim, atol=1e-5)


def test_real_embedder_on_bigbench_rows(bigbench_path, tmp_path):
    import gzip
    import json

    with gzip.open(bigbench_path, "rt") as fh:
        rows = [json.loads(next(fh)) for _ in range(12)]
    df = pd.DataFrame(rows)
    df["input"] = ""
    df["instruction"] = df["instruction"].str.slice(0, 200)
    df.loc[11] = df.loc[3]  # an exact duplicate sample...
    df.loc[11, "id"] = "dup"  # ...under another id
    out = CRITERIA.get("knn_distance").obj(k=2, cache_dir=tmp_path)(df)
    assert out["knn_distance.nearest"].iloc[11] < 1e-3 and out["knn_distance.nearest"].iloc[3] < 1e-3
    assert out["knn_distance"].notna().all()
    sd = CRITERIA.get("semdedup").obj(n_clusters=2, cache_dir=tmp_path)(df)
    assert sd["semdedup.keep"].iloc[[3, 11]].sum() == 1


class BatchRecorder(TableEncoder):
    def __init__(self, table):
        super().__init__(table)
        self.batches: list = []

    def encode(self, texts, batch_size=64):
        self.batches.append(batch_size)
        return super().encode(texts, batch_size)


@pytest.mark.parametrize("cache", [False, True])
def test_row_batching_encodes_one_text_per_call(cache, tmp_path):
    """batching="row" reaches the encoder (batch_size 1) on the direct path, through the cache, and in the
    pipeline's pool vectors (vector_spec), and keeps out of the cache key (it changes no score beyond
    float rounding)."""
    from thresher.embed.pool import vector_spec

    x = table(12, 4, 3)
    for name in ("knn_distance", "local_density", "semdedup"):
        enc = BatchRecorder(x)
        kw = {"cache_dir": str(tmp_path / name)} if cache else {}
        out = CRITERIA.get(name).obj(embedder=enc, batching="row", batch_size=5, **kw)(frame(range(12)))
        assert len(out) == 12 and set(enc.batches) == {1}, (name, enc.batches)
        cls = CRITERIA.get(name).obj(embedder="default", cache_dir=str(tmp_path), batching="row")
        assert vector_spec(type(cls), cls.options)[3] == 1
        assert cls.cache_key() == CRITERIA.get(name).obj(embedder="default", cache_dir=str(tmp_path)).cache_key()


def test_real_embedder_row_batching_bits_do_not_depend_on_companions(bigbench_path):
    """The premise of batching="row" for embeddings: all-MiniLM-L6-v2 run one text per call gives each
    text the same bits whichever texts are embedded with it (batched, they follow the batch's padding)."""
    import gzip
    import json

    from thresher.embed import embed_texts

    with gzip.open(bigbench_path, "rt") as fh:
        texts = [(lambda r: r["instruction"][:300] + "\n" + r["output"])(json.loads(next(fh))) for _ in range(24)]
    whole = embed_texts(texts, batch_size=1)
    for a, b in ((0, 5), (5, 24), (11, 12)):
        assert np.array_equal(embed_texts(texts[a:b], batch_size=1), whole[a:b]), (a, b)


def test_options_registry_and_cache_key():
    e = CRITERIA.get("knn_distance")
    assert e.meta["scope"] == "pool" and e.meta["direction"] == "max" and e.options["k"].default == 6
    assert CRITERIA.get("local_density").meta["direction"] == "min"
    x = table(10, 4, 8)
    assert make("knn_distance", x, k=3).cache_key() != make("knn_distance", x, k=4).cache_key()
    with pytest.raises(ValueError, match="k: expected"):
        make("knn_distance", x, k=0)
    with pytest.raises(ValueError, match="metric"):
        make("knn_distance", x, metric="manhattan")
    with pytest.raises(ValueError, match="eps"):
        make("semdedup", x, eps=-1)
    with pytest.raises(ValueError, match="against"):
        make("semdedup", x, against="all")


# ------------------------------------------------- sharded exact search, run_info
def pickling_mapper(calls):
    """A map that pickles the task function and every task, as a remote engine does."""
    import pickle

    def run(fn, tasks):
        fn = pickle.loads(pickle.dumps(fn))
        for t in tasks:
            calls.append(1)
            yield pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(t)))))

    return run


def old_exact_path(x, k, metric):
    """The search before sharding (one exact ops.knn call over the pool, k+1, self dropped): the oracle
    for bit-identical scores."""
    from thresher.ops import knn

    v, p = knn(x, x, k + 1, metric)
    v, p = v.numpy(), p.numpy()
    out = np.empty((len(x), k), np.float32)
    for r in range(len(x)):
        keep = np.flatnonzero(p[r] != r)[:k] if (p[r] == r).any() else np.arange(k)
        out[r] = v[r, keep]
    return out


@pytest.mark.parametrize("shard_rows, query_rows", [(1, 1), (7, 5), (64, 1000)])
def test_sharded_search_scores_bit_identical(shard_rows, query_rows):
    x = table(50, 8, 9, dup=[(0, 20), (0, 21), (4, 40)])
    calls = []
    sc = make("knn_distance", x)
    e = sc._embed(frame(range(50)))[0]  # the embeddings it scores (normalised again by embed_texts)
    want = np.sqrt(np.maximum(old_exact_path(e, 6, "l2").astype(np.float64), 0.0))
    sims = old_exact_path(e, 5, "ip").astype(np.float64)
    sc.shard_rows, sc.query_rows, sc.mapper = shard_rows, query_rows, pickling_mapper(calls)
    out = sc(frame(range(50)))
    np.testing.assert_array_equal(out["knn_distance"].to_numpy(), want.mean(1))
    np.testing.assert_array_equal(out["knn_distance.nearest"].to_numpy(), want[:, 0])
    assert len(calls) == -(-50 // query_rows) * -(-50 // shard_rows)
    info = sc.run_info()
    assert info["index_kind_used"] == "exact" and info["exact"] is True and info["tasks"] == len(calls)
    assert info["shard_rows"] == shard_rows and info["pool_rows"] == 50 and info["scored"] is True
    json.dumps(info)
    ld = make("local_density", x, k=5)
    ld.shard_rows, ld.query_rows = shard_rows, query_rows
    np.testing.assert_array_equal(ld(frame(range(50)))["local_density"].to_numpy(), sims.mean(1))


def test_run_info_before_scoring_and_for_a_too_small_pool():
    x = table(5, 4, 2)
    sc = make("knn_distance", x)
    assert sc.run_info() == {"criterion": "knn_distance", "scored": False}
    sc(frame(range(5)))
    info = sc.run_info()
    assert info["rows_without_k_neighbours"] == 5 and info["queries"] == 0


@pytest.mark.skipif(faiss_module() is None, reason="faiss not installed")
def test_approximate_index_missing_neighbours_get_a_reason(monkeypatch):
    import functools

    import thresher.criteria.diversity as div
    from thresher.index import KNNIndex

    monkeypatch.setattr(div, "KNNIndex", functools.partial(KNNIndex, nlist=32, nprobe=1))
    x = table(300, 8, 10)
    sc = make("knn_distance", x, index_kind="ivf_flat")
    out = sc(frame(range(300)))
    r = out["knn_distance.reason"]
    short = r.str.match(r"approximate index ivf_flat found [0-5] of 6 neighbours$")
    assert short.any() and (short == out["knn_distance"].isna()).all() and (r[~short] == "").all()
    info = sc.run_info()
    assert info["index_kind_used"] == "ivf_flat" and info["exact"] is False
    assert info["recall_sample"] == 300 and info["recall_k"] == 7 and 0 < info["recall"] < 1
    assert info["rows_without_k_neighbours"] == int(short.sum())
    json.dumps(info)
    # the default is exact at any size: no recall, no missing neighbour
    ex = make("knn_distance", x)
    assert ex(frame(range(300)))["knn_distance"].notna().all() and "recall" not in ex.run_info()


def test_semdedup_cluster_tasks_through_a_mapper_and_run_info():
    x = table(60, 16, 7, dup=[(0, 10), (0, 11), (5, 30)])
    want = make("semdedup", x, eps=0.01, n_clusters=4)(frame(range(60)))
    calls = []
    sc = make("semdedup", x, eps=0.01, n_clusters=4)
    sc.mapper = pickling_mapper(calls)
    got = sc(frame(range(60)))
    pd.testing.assert_frame_equal(got, want)
    assert 1 <= len(calls) <= 4
    info = sc.run_info()
    assert info["n_clusters"] == 4 and info["exact"] is True and info["against"] == "kept"
    json.dumps(info)


@pytest.mark.parametrize("row_block", [1, 7])
def test_neighbours_dropped_and_scored_in_row_blocks_bit_identical(row_block, monkeypatch):
    """Dropping each row itself from its k+1 neighbours and the per-row scores run a block of rows at a time:
    the same values, bit for bit, as the one-call oracle; the rows of a fitted pool of exactly k rows (some
    short of neighbours, some outside the pool) land at their own positions."""
    from thresher.ops import rows

    monkeypatch.setattr(rows, "ROW_BLOCK", row_block)
    x = table(30, 6, 11, dup=[(0, 9), (3, 17)])
    sc = make("knn_distance", x, k=4)
    e = sc._embed(frame(range(30)))[0]
    want = np.sqrt(np.maximum(old_exact_path(e, 4, "l2").astype(np.float64), 0.0))
    out = sc(frame(range(30)))
    np.testing.assert_array_equal(out["knn_distance"].to_numpy(), want.mean(1))
    np.testing.assert_array_equal(out["knn_distance.nearest"].to_numpy(), want[:, 0])
    sims = old_exact_path(e, 3, "ip").astype(np.float64)
    ld = make("local_density", x, k=3)(frame(range(30)))
    np.testing.assert_array_equal(ld["local_density"].to_numpy(), sims.mean(1))
    np.testing.assert_array_equal(ld["local_density.radius"].to_numpy(), 1.0 - sims[:, -1])
    fitted = make("knn_distance", x, k=3).fit(frame(range(3)))
    got = fitted(frame([0, 20, 1, 25, 26]))
    assert got["knn_distance"].isna().tolist() == [True, False, True, False, False]
    for i, r in ((1, 20), (3, 25), (4, 26)):
        d = np.sqrt(((x[:3].astype(np.float64) - x[r]) ** 2).sum(1))
        assert got.loc[i, "knn_distance"] == pytest.approx(d.mean(), abs=1e-5)
