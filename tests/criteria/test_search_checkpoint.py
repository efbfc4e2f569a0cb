"""A stopped exact neighbour search resumes from its finished query blocks (SearchCheckpoint), with
the neighbours of an unbroken search: in ``ops.sharded_knn``, in knn_distance / local_density, and
in a pipeline run, whose cache lists and prunes the checkpoints."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pandas as pd
import pytest

import thresher.criteria.diversity as diversity
import thresher.ops.knn_shard as knn_shard
from conftest import write_bigbench_head
from thresher.cache import cache_entries, prune, prune_candidates
from thresher.criteria.search_checkpoint import SEARCH_DIR, SearchCheckpoint, search_identity
from thresher.ops.knn_shard import sharded_knn
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.registry import CRITERIA


class Stop(Exception):
    pass


def counting(calls: list, stop_at: int = 0):
    """A lazy map that counts its tasks and raises ``Stop`` on task ``stop_at`` (0: never)."""

    def run(fn, tasks):
        for t in tasks:
            calls.append(t[2:4])  # (shard start, first query)
            if len(calls) == stop_at:
                raise Stop
            yield fn(t)

    return run


class DictBlocks:
    def __init__(self, done=None):
        self.done, self.puts = dict(done or {}), []

    def get(self, start):
        return self.done.get(start)

    def put(self, start, v, i):
        self.puts.append(start)
        self.done[start] = (v, i)


def vectors(n=300, d=6, seed=0, dup=((0, 7), (3, 250))):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    for a, b in dup:
        if b < n:
            x[b] = x[a]  # exact ties
    return x


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_sharded_knn_reuses_the_blocks_it_is_given_and_records_the_rest(metric):
    x = vectors()
    want_v, want_i = sharded_knn(x, x, 7, metric, shard_rows=64, query_rows=50, exclude_self=True)
    given = {s: (want_v[s : s + 50], want_i[s : s + 50]) for s in (0, 100, 250)}
    store, calls = DictBlocks(given), []
    v, i = sharded_knn(x, x, 7, metric, shard_rows=64, query_rows=50, exclude_self=True,
                       mapper=counting(calls), blocks=store)  # fmt: skip
    np.testing.assert_array_equal(v, want_v)
    np.testing.assert_array_equal(i, want_i)
    assert store.puts == [50, 150, 200]  # the missing blocks, in query order
    assert sorted({q for _, q in calls}) == [50, 150, 200] and len(calls) == 3 * 5  # 5 base shards each


def test_a_stored_block_of_the_wrong_shape_is_searched_again():
    x = vectors()
    want_v, want_i = sharded_knn(x, x, 4, "l2", shard_rows=100, query_rows=100)
    bad = {0: (want_v[:100, :3], want_i[:100, :3]), 200: (want_v[200:], want_i[200:])}  # last block: 100 rows
    store, calls = DictBlocks(bad), []
    v, i = sharded_knn(x, x, 4, "l2", shard_rows=100, query_rows=100, mapper=counting(calls), blocks=store)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(v, want_v)
    assert store.puts == [0, 100]


def test_an_empty_search_touches_no_store():
    store = DictBlocks()
    v, i = sharded_knn(np.zeros((0, 3), np.float32), vectors(10, 3), 2, "l2", blocks=store)
    assert v.shape == (0, 2) and store.puts == []


def test_the_identity_covers_vectors_shapes_and_parameters():
    x = vectors(20, 4)
    base = search_identity(x, x, k=3, metric="l2")
    y = x.copy()
    y[5, 2] = np.nextafter(y[5, 2], np.inf)
    assert search_identity(y, x, k=3, metric="l2") != base
    assert search_identity(x, y, k=3, metric="l2") != base
    assert search_identity(x.reshape(40, 2), x, k=3, metric="l2") != base
    assert search_identity(x, x, k=4, metric="l2") != base
    assert search_identity(x, x, k=3, metric="ip") != base
    assert search_identity(x.astype(np.float64), x, k=3, metric="l2") != base  # the dtype too
    assert search_identity(x.copy(), np.asfortranarray(x), k=3, metric="l2") == base  # not the memory layout


def test_saves_every_interval_and_on_flush_and_reloads(tmp_path, monkeypatch):
    now = [0.0]
    monkeypatch.setattr("thresher.criteria.search_checkpoint.time.monotonic", lambda: now[0])
    st = SearchCheckpoint(tmp_path, "abc", every_s=10)
    blk = lambda r: (np.full((r, 2), r, np.float32), np.full((r, 2), r, np.int64))  # noqa: E731
    st.put(0, *blk(4))
    now[0] = 9.9
    st.put(4, *blk(4))
    assert not (tmp_path / "abc").exists()  # under 10 s since the start
    now[0] = 10.0
    st.put(8, *blk(2))  # 10 s: the three blocks are saved as one part
    assert sorted(p.name for p in (tmp_path / "abc").iterdir()) == ["part-00000.npz"]
    st.put(10, *blk(3))
    st.flush()
    st.flush()  # nothing new: no empty part
    assert st.saved == 2 and len(list((tmp_path / "abc").iterdir())) == 2
    again = SearchCheckpoint(tmp_path, "abc")
    assert sorted(again.done) == [0, 4, 8, 10]
    np.testing.assert_array_equal(again.get(10)[1], blk(3)[1])
    assert again.get(99) is None and again.restored == 3
    assert SearchCheckpoint(tmp_path, "other").done == {}  # another search's folder


def test_saved_blocks_are_not_held_and_a_restored_block_is_handed_over_once(tmp_path):
    st = SearchCheckpoint(tmp_path, "m", every_s=0)
    for s in (0, 4):
        st.put(s, np.full((4, 2), s, np.float32), np.full((4, 2), s, np.int64))
    assert st.written == {0, 4} and st.pending == {} and st.done == {}  # on disk, not in memory
    again = SearchCheckpoint(tmp_path, "m")
    np.testing.assert_array_equal(again.get(4)[1], np.full((4, 2), 4, np.int64))
    assert again.get(4) is None and sorted(again.done) == [0] and again.restored == 4


def test_an_unreadable_part_is_searched_again_and_new_parts_do_not_overwrite_it(tmp_path):
    st = SearchCheckpoint(tmp_path, "s", every_s=0)
    st.put(0, np.zeros((2, 1), np.float32), np.zeros((2, 1), np.int64))
    (tmp_path / "s" / "part-00001.npz").write_bytes(b"not a zip")
    again = SearchCheckpoint(tmp_path, "s", every_s=0)
    assert sorted(again.done) == [0]
    again.put(2, np.ones((2, 1), np.float32), np.ones((2, 1), np.int64))
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["part-00000.npz", "part-00001.npz",
                                                                  "part-00002.npz"]  # fmt: skip
    assert sorted(SearchCheckpoint(tmp_path, "s").done) == [0, 2]
    again.clear()
    assert not tmp_path.joinpath("s").exists()


def test_clear_leaves_other_searches_and_removes_an_empty_parent(tmp_path):
    folder = tmp_path / "search-checkpoints"
    a, b = SearchCheckpoint(folder, "a", 0), SearchCheckpoint(folder, "b", 0)
    for st in (a, b):
        st.put(0, np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64))
    a.clear()
    assert [p.name for p in folder.iterdir()] == ["b"]
    b.clear()
    assert not folder.exists() and tmp_path.exists()
    own = SearchCheckpoint(tmp_path / "mine", "c", 0)  # a folder the caller named stays
    own.put(0, np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64))
    own.clear()
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


class TableEncoder:
    def __init__(self, x):
        self.table, self.dim, self.fingerprint = x, x.shape[1], "table"

    def encode(self, texts, batch_size=64):
        return self.table[[int(t[1:]) for t in texts]]


def pool_frame(n):
    return pd.DataFrame({"id": [f"s{i}" for i in range(n)], "instruction": [f"t{i}" for i in range(n)],
                         "input": "", "output": ""})  # fmt: skip


def scorer(name, x, **kw):
    sc = CRITERIA.get(name).obj(embedder=TableEncoder(x), **kw)
    sc.shard_rows, sc.query_rows = 70, 40
    return sc


@pytest.mark.parametrize("name", ["knn_distance", "local_density"])
def test_a_stopped_search_resumes_with_the_scores_of_an_unbroken_one(name, tmp_path):
    x = vectors(300, 8, seed=3)
    want = scorer(name, x)(pool_frame(300))
    calls: list = []
    first = scorer(name, x, checkpoint_dir=str(tmp_path / "ck"), checkpoint_s=0)  # 0: never saved
    first.mapper = counting(calls, stop_at=12)
    with pytest.raises(Stop):
        first(pool_frame(300))
    assert not (tmp_path / "ck").exists()
    calls.clear()
    second = scorer(name, x, checkpoint_dir=str(tmp_path / "ck"), checkpoint_s=1e-9)  # every block saved
    second.mapper = counting(calls, stop_at=22)  # 5 shards a block: blocks 0-3 done, stopped in block 4
    with pytest.raises(Stop):
        second(pool_frame(300))
    parts = list((tmp_path / "ck").glob("*/part-*.npz"))
    assert len(parts) == 4  # one per block (1e-9 s) ...; the stop's flush has nothing new
    calls.clear()
    third = scorer(name, x, checkpoint_dir=str(tmp_path / "ck"), checkpoint_s=3600)
    third.mapper = counting(calls)
    got = third(pool_frame(300))
    pd.testing.assert_frame_equal(got, want)
    assert sorted({q for _, q in calls}) == [160, 200, 240, 280] and len(calls) == 4 * 5
    info = third.run_info()
    assert info["resumed_queries"] == 160 and info["checkpoint_saves"] == 0
    assert not any((tmp_path / "ck").iterdir())  # complete: its checkpoint is gone


def test_the_checkpoint_options_do_not_change_the_cache_key(tmp_path):
    cls = CRITERIA.get("knn_distance").obj
    assert cls.cache_key_for(checkpoint_dir=str(tmp_path), checkpoint_s=5) == cls.cache_key_for()
    with pytest.raises(Exception, match="checkpoint_s"):
        cls.cache_key_for(checkpoint_s=-1)


def test_a_pipeline_run_stopped_in_the_search_resumes_and_its_cache_lists_the_checkpoint(
    bigbench_path, tmp_path, monkeypatch
):
    pool = write_bigbench_head(bigbench_path, tmp_path / "pool.jsonl", 90)
    monkeypatch.setattr(diversity, "DEFAULT_QUERY_ROWS", 16)  # 6 query blocks

    def cfg(out, cache):
        return PipelineConfig(data=str(pool), out=str(tmp_path / out), cache_dir=str(tmp_path / cache),
                              criteria=["knn_distance"], k=10, quiet=True, report=False,
                              checkpoint_s=1e-9)  # fmt: skip

    fresh = pd.read_parquet(run_pipeline(cfg("fresh", "cache-fresh")).scores_path)
    real, n = knn_shard.knn_shard_task, [0]

    def stop_in_block_4(task):
        n[0] += 1
        if n[0] == 4:
            raise Stop
        return real(task)

    monkeypatch.setattr(knn_shard, "knn_shard_task", stop_in_block_4)
    with pytest.raises(Stop):
        run_pipeline(cfg("a", "cache"))
    listed = [e for e in cache_entries(tmp_path / "cache", "knn_distance") if "search-checkpoints" in str(e.files[0])]
    assert len(listed) == 1 and len(listed[0].files) == 3  # blocks 0-2, one part each
    monkeypatch.setattr(knn_shard, "knn_shard_task", real)
    logs: list = []
    monkeypatch.setattr("thresher.pipeline.state.RunState.say", lambda self, msg: logs.append(msg))
    res = run_pipeline(cfg("b", "cache"))
    pd.testing.assert_frame_equal(pd.read_parquet(res.scores_path), fresh)
    assert any("resumed 48 of 90 queries" in m for m in logs), logs
    assert not (tmp_path / "cache" / "knn_distance" / "search-checkpoints").exists()


def test_prune_removes_a_stopped_searchs_checkpoint(tmp_path):
    st = SearchCheckpoint(tmp_path / "knn_distance" / SEARCH_DIR, "x", 0)  # the pipeline's folder
    st.put(0, np.zeros((1, 1), np.float32), np.zeros((1, 1), np.int64))
    entries = prune_candidates(tmp_path, criterion="knn_distance")
    assert len(entries) == 1 and entries[0].group == "knn_distance"
    assert prune(tmp_path, entries)[0] == 1
    assert not (tmp_path / "knn_distance").exists()


def test_the_whole_pool_task_under_ray_resumes_a_search_the_local_engine_stopped(ray_cluster, tmp_path, monkeypatch):
    from thresher.engines.ray_engine import _score_whole

    x = vectors(300, 8, seed=5)
    want = scorer("knn_distance", x)(pool_frame(300))
    real, n = knn_shard.knn_shard_task, [0]

    def stop_at_12(task):
        n[0] += 1
        if n[0] == 12:
            raise Stop
        return real(task)

    monkeypatch.setattr(knn_shard, "knn_shard_task", stop_at_12)
    first = scorer("knn_distance", x, device="cpu", checkpoint_dir=str(tmp_path), checkpoint_s=1e-9)
    with pytest.raises(Stop):  # the local engine's search (builtin map, on the CPU): blocks 0-1 saved
        first(pool_frame(300))
    monkeypatch.setattr(knn_shard, "knn_shard_task", real)

    class Small(CRITERIA.get("knn_distance").obj):  # the task builds the scorer from its class and options
        def __init__(self, **options):
            super().__init__(**options)
            self.shard_rows, self.query_rows = 70, 40

    got = _score_whole(Small, {"embedder": TableEncoder(x), "checkpoint_dir": str(tmp_path), "checkpoint_s": 3600},
                       {"num_cpus": 1, "max_in_flight": 2}, None, pool_frame(300))  # fmt: skip
    assert got.attrs["run_info"]["resumed_queries"] == 80  # Ray's CPU tasks: the same search
    assert got.attrs["run_info"]["mapper"].startswith("ray_mapper") and got.attrs["run_info"]["device"] == "cpu"
    pd.testing.assert_frame_equal(got, want)
    assert not any(tmp_path.iterdir())


class KillsItsWorkerOnce(CRITERIA.get("knn_distance").obj):
    """knn_distance whose search kills its own process (SIGKILL) after three saved blocks, once
    (``marker``: a file created just before; set per test, shipped by value to the Ray worker)."""

    marker = ""

    def __init__(self, **options):
        super().__init__(**options)
        self.shard_rows, self.query_rows = 70, 40

    def _checkpoint(self, *args):
        store = super()._checkpoint(*args)
        put = store.put

        def put_then_die(start, v, i):
            put(start, v, i)
            if len(store.written) == 3 and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)

        store.put = put_then_die
        return store


def test_a_whole_pool_task_whose_worker_is_killed_is_retried_and_resumes_the_search(ray_cluster, tmp_path):
    from thresher.engines.ray_engine import RayEngine, _RayScorer

    x = vectors(300, 8, seed=7)
    want = scorer("knn_distance", x)(pool_frame(300))
    KillsItsWorkerOnce.marker = str(tmp_path / "killed")
    module = sys.modules[KillsItsWorkerOnce.__module__]
    ray_cluster.cloudpickle.register_pickle_by_value(module)  # the test module is not importable on workers
    try:
        opts = {"embedder": TableEncoder(x), "checkpoint_dir": str(tmp_path / "ck"), "checkpoint_s": 1e-9}
        got = RayEngine(workers=1).score_pool(_RayScorer(KillsItsWorkerOnce, opts), pool_frame(300), "knn_distance")
    finally:
        ray_cluster.cloudpickle.unregister_pickle_by_value(module)
    assert os.path.exists(KillsItsWorkerOnce.marker)  # the first attempt died
    assert got.attrs["run_info"]["resumed_queries"] == 120  # the retry resumed at block 3
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)


def test_a_stopped_semdedup_resumes_at_the_clusters_it_had_scanned(tmp_path):
    x = vectors(200, 8, seed=11, dup=((0, 5), (1, 150), (2, 199)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = scorer("semdedup", x, n_clusters=6)(pool_frame(200))
    calls: list = []

    def cluster_map(stop_at):
        def run(fn, tasks):
            for t in tasks:
                calls.append(len(t[0]))
                if len(calls) == stop_at:
                    raise Stop
                yield fn(t)

        return run

    first = scorer("semdedup", x, n_clusters=6, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9)
    first.mapper = cluster_map(4)  # clusters 0-2 scanned and saved
    with pytest.raises(Stop):
        first(pool_frame(200))
    scanned = sum(calls[:3])
    calls.clear()
    second = scorer("semdedup", x, n_clusters=6, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    second.mapper = cluster_map(0)
    got = second(pool_frame(200))
    pd.testing.assert_frame_equal(got, want)
    assert len(calls) == 3 and sum(calls) == 200 - scanned  # only the clusters not saved
    info = second.run_info()
    assert info["resumed_rows"] == scanned and info["scored_rows"] == 200
    assert not any(tmp_path.iterdir())
    calls.clear()
    other = scorer("semdedup", x, n_clusters=6, seed=1, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9)
    other.mapper = cluster_map(0)
    other(pool_frame(200))  # other k-means: its own call
    assert len(calls) == 6 and other.run_info()["resumed_rows"] == 0


def test_a_save_that_fails_on_the_way_out_leaves_the_calls_own_error(tmp_path, monkeypatch):
    x = vectors(120, 8, seed=2)
    sc = scorer("knn_distance", x, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    sc.mapper = counting([], stop_at=5)  # 2 blocks of 2 tasks done, stopped in the third

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("thresher.criteria.search_checkpoint.atomic_file", full_disk)
    with pytest.raises(Stop):  # not the OSError of the save
        sc(pool_frame(120))
    assert not any(tmp_path.iterdir())


def test_a_semdedup_stopped_after_its_k_means_does_not_run_it_again(tmp_path, monkeypatch):
    """k-means (minutes at a million rows) is saved once it is done: a call stopped in the scans takes
    the centroids and labels back, and the scores equal an unbroken call's."""
    x = vectors(200, 8, seed=12, dup=((0, 5), (1, 150)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    want = scorer("semdedup", x, n_clusters=5)(pool_frame(200))
    runs: list = []
    real = diversity.kmeans
    monkeypatch.setattr(diversity, "kmeans", lambda *a, **k: runs.append(1) or real(*a, **k))

    def stop_at_first_cluster(fn, tasks):
        raise Stop
        yield  # a generator

    first = scorer("semdedup", x, n_clusters=5, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    first.mapper = stop_at_first_cluster
    with pytest.raises(Stop):
        first(pool_frame(200))
    assert len(runs) == 1 and len(list(tmp_path.glob("*/part-*.npz"))) == 1  # the k-means, no cluster yet
    second = scorer("semdedup", x, n_clusters=5, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    got = second(pool_frame(200))
    pd.testing.assert_frame_equal(got, want)
    assert len(runs) == 1 and second.run_info()["resumed_kmeans"] is True
    assert not any(tmp_path.iterdir())  # complete: both stores are gone
    third = scorer("semdedup", x, n_clusters=5, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    third(pool_frame(200))
    assert len(runs) == 2 and third.run_info()["resumed_kmeans"] is False
    never = scorer("semdedup", x, n_clusters=5, checkpoint_dir=str(tmp_path), checkpoint_s=0)  # 0: nothing saved
    pd.testing.assert_frame_equal(never(pool_frame(200)), want)
    assert len(runs) == 3 and not any(tmp_path.iterdir())
