"""The on-disk per-row columns (RowStore, GroupColumn) and the outputs' O(k) extra columns."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from thresher.fs import clean_stale_temp
from thresher.io.writers import AtPositions
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.pipeline.rowstore import GroupCoder, GroupColumn, RowStore


def test_rowstore_columns_read_back_what_was_appended(tmp_path):
    rng = np.random.default_rng(0)
    store = RowStore(tmp_path / "cache")
    parts = [rng.integers(-5, 10**12, size=n) for n in (3, 0, 1, 17)]
    for p in parts:
        store.append("lines", p, np.int64)
        store.append("tokens", p / 7, np.float64)
    lines, tokens = store.column("lines", np.int64), store.column("tokens", np.float64)
    want = np.concatenate(parts)
    assert lines.dtype == np.int64 and np.array_equal(lines, want)
    assert np.array_equal(tokens, want / 7)
    assert np.array_equal(lines[[20, 0, 5]], want[[20, 0, 5]]) and np.array_equal(lines[2:9], want[2:9])
    with pytest.raises(ValueError):
        lines[0] = 1  # read-only
    assert store.dir is not None and store.dir.name.endswith(".thresher-tmp")
    where = store.dir
    store.close()
    assert not where.exists()
    assert np.array_equal(lines, want)  # a map handed out stays readable after the files are removed


def test_rowstore_empty_and_wrong_dtype(tmp_path):
    store = RowStore(tmp_path)
    assert store.column("files", np.int32).shape == (0,) and store.dir is None  # nothing written: no folder
    store.append("files", np.zeros(0), np.int32)
    assert store.column("files", np.int32).shape == (0,)
    with pytest.raises(TypeError, match="holds int32"):
        store.append("files", [1.5], np.float64)
    store.close()


def test_rowstore_rows_of_a_fixed_shape_read_back_as_a_matrix(tmp_path):
    """Embeddings go to the store shard by shard ([n, d] rows): read back as one [rows, d] memory map."""
    rng = np.random.default_rng(1)
    store = RowStore(tmp_path)
    assert store.column("embeddings", np.float32).shape == (0,)  # nothing written yet
    parts = [rng.standard_normal((n, 5)) for n in (4, 0, 1, 9)]
    for p in parts:
        store.append("embeddings", p, np.float32)
    got = store.column("embeddings", np.float32)
    want = np.concatenate(parts).astype(np.float32)
    assert isinstance(got, np.memmap) and got.shape == (14, 5) and np.array_equal(got, want)
    assert np.array_equal(got[[13, 0, 4]], want[[13, 0, 4]])
    with pytest.raises(ValueError):
        got[0, 0] = 1.0  # read-only
    with pytest.raises(ValueError, match=r"rows of shape \(5,\), not \(4,\)"):
        store.append("embeddings", np.zeros((2, 4)), np.float32)
    store.append("empty", np.zeros((0, 3)), np.float32)
    assert store.column("empty", np.float32).shape == (0, 3)
    store.close()


def test_rowstore_of_a_dead_process_is_cleaned_by_the_next_run(tmp_path):
    store = RowStore(tmp_path)
    store.append("lines", [1, 2], np.int64)
    fake = store.dir.with_name(store.dir.name.replace(f".{__import__('os').getpid()}.", ".999999999."))
    store.dir.rename(fake)  # as if its process had died without closing it
    assert clean_stale_temp(tmp_path) == 1 and not fake.exists()


def test_group_column_indexes_like_a_label_array():
    coder = GroupCoder()
    shards = [["b", "a", "b"], [], ["c", None, "a"], ["b"]]
    codes = np.concatenate([coder.encode(np.asarray(s, dtype=object)) for s in shards])
    col = GroupColumn(codes, coder.labels)
    want = np.asarray([g for s in shards for g in s], dtype=object)
    assert len(col) == len(want) and list(col[:]) == list(want)
    assert list(col[2:5]) == list(want[2:5])
    mask = np.array([True, False, True, True, False, True, False])
    assert list(col[mask]) == list(want[mask]) and list(col[np.array([6, 0])]) == list(want[[6, 0]])
    assert list(np.asarray(col)) == list(want) and coder.labels == ["b", "a", "c", None]


def test_at_positions_answers_only_its_rows():
    col = AtPositions(np.array([2, 5, 9]), np.array([0.5, np.nan, 3.0]))
    assert col[2] == 0.5 and np.isnan(col[5]) and col[9] == 3.0 and col.dtype.kind == "f" and len(col) == 3
    for p in (0, 3, 10):
        with pytest.raises(KeyError, match=f"position {p}"):
            col[p]
    with pytest.raises(ValueError):
        AtPositions(np.array([1, 2]), np.array([1.0]))


def _pool(path, n):
    with gzip.open(path, "wt") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "instruction": f"q {i} " * (i % 5 + 1), "output": "a " * (i % 7 + 1),
                                 "task": f"t{i % 3}"}) + "\n")  # fmt: skip


def _records(path):
    with gzip.open(path, "rt") as fh:
        return [json.loads(ln) for ln in fh]


def test_a_run_leaves_no_row_files_and_writes_rows_from_the_store(tmp_path):
    data = tmp_path / "pool.jsonl.gz"
    _pool(data, 250)
    cfg = PipelineConfig(data=str(data), out=str(tmp_path / "out"), criteria=["length"], group_field="task",
                         selector={"name": "topk", "options": {"criterion": "length"}}, k=40, shard_size=64,
                         with_scores=True, write_rejected=True, report=False, quiet=True)  # fmt: skip
    res = run_pipeline(cfg)
    cache = tmp_path / "out" / "cache"
    assert not list(cache.rglob("*.thresher-tmp"))  # the run's row files are gone
    scores = res.scores().set_index("id")
    src, sel, rej = (_records(p) for p in (data, res.selected_path, tmp_path / "out" / "rejected.jsonl.gz"))
    assert len(sel) == 40 and len(rej) == 210
    for rec in sel + rej:
        i = int(rec["id"][1:])
        assert {k: rec[k] for k in src[i]} == src[i]
        assert rec["length"] == scores.loc[rec["id"], "length"]
        assert scores.loc[rec["id"], "source_line"] == i + 1 and scores.loc[rec["id"], "group"] == f"t{i % 3}"
    assert scores["selected"].sum() == 40 and set(r["id"] for r in sel) == set(scores.index[scores["selected"]])


def _messy_pool(path, n):
    """Own ids (some repeated: bad rows), rows without an id (content-hash ids, some repeated content)."""
    with open(path, "w") as fh:
        for i in range(n):
            rec = {"instruction": f"q {i % 170} " * (i % 5 + 1), "output": "a " * (i % 7 + 1)}
            if i % 4 != 1:  # the first row has an id: the schema is fixed from it
                rec["id"] = f"r{i if i % 29 else i - 4}"
            fh.write(json.dumps(rec) + "\n")


def test_a_run_keeps_its_id_set_and_verdicts_on_disk_and_selects_as_in_memory(tmp_path, monkeypatch):
    """With tiny id-set runs, the run's id set is written to files in the row store and the filters'
    verdict per row is a memory map; scores, skipped rows and selection equal a run whose id set is in
    memory (``spill`` ignored) and whose verdicts are arrays."""
    import thresher.io.readers as readers
    from thresher.io import idset
    from thresher.pipeline import streaming

    data = tmp_path / "pool.jsonl"
    _messy_pool(data, 600)
    monkeypatch.setattr(idset, "_MIN_PENDING", 8)
    spilled, verdicts = [], []
    alloc, eligible = idset.IdSet._alloc, streaming.CountPass.eligible
    monkeypatch.setattr(idset.IdSet, "_alloc", lambda s, n: spilled.append(s.spill is not None) or alloc(s, n))
    monkeypatch.setattr(streaming.CountPass, "eligible", lambda s: verdicts.append(eligible(s)) or verdicts[-1])

    def run(name):
        cfg = PipelineConfig(data=str(data), out=str(tmp_path / name), criteria=["length"], on_bad_row="skip",
                             selector={"name": "topk", "options": {"criterion": "length"}}, k=50, shard_size=64,
                             filters=["length >= 12"], with_scores=True, report=False, quiet=True)  # fmt: skip
        res = run_pipeline(cfg)
        with open(res.selected_path) as fh:
            return res.scores(), fh.read(), sorted(map(str, res.skipped))

    disk = run("disk")
    assert spilled and all(spilled) and all(isinstance(v, np.memmap) for v in verdicts)
    spilled.clear()
    verdicts.clear()
    real = readers.IdSet
    monkeypatch.setattr(readers, "IdSet", lambda spill=None: real(None))
    monkeypatch.setattr(streaming.CountPass, "keep_masks_in", lambda s, store: s)
    memory = run("memory")
    assert spilled and not any(spilled) and not any(isinstance(v, np.memmap) for v in verdicts)
    assert disk[0].equals(memory[0]) and disk[1] == memory[1] and disk[2] == memory[2]
    assert len(disk[2]) > 0 and 0 < int(disk[0]["eligible"].sum()) < len(disk[0])
    assert not list((tmp_path / "disk").rglob("*.thresher-tmp"))


@pytest.mark.parametrize("k", [0, 1, 7, 50])
def test_ranks_of_a_slice_equal_the_pool_length_array(k):
    from thresher.pipeline.outputs import Ranks

    rng = np.random.default_rng(k)
    n = 50
    order = rng.permutation(n)[:k]
    full = np.full(n, -1, dtype=np.int64)  # the oracle: the array of the pool's length
    full[order] = np.arange(k)
    ranks = Ranks(order)
    for a, b in [(0, n), (0, 0), (0, 1), (3, 17), (17, 50), (49, 50), (10, 10)]:
        got = ranks[slice(a, b)]
        assert got.dtype == np.int64 and got.tolist() == full[a:b].tolist()
