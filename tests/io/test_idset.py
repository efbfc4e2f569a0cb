"""IdSet (ids held as 128-bit digests) and the id assigner against plain Python sets."""

from __future__ import annotations

import random

import numpy as np
import pytest

from thresher.io import idset
from thresher.io.idset import IdSet, digest
from thresher.io.readers import _IdAssigner


def _reference_ids(owns: list, hashes: list) -> list:
    """The assigner's rule with a Python set of strings (the oracle)."""
    seen: set = set()
    out = []
    for own, h in zip(owns, hashes):
        sid = own if own is not None else h[:16]
        if sid in seen:
            if own is not None:
                out.append(None)
                continue
            k = 2
            while f"{sid}-{k}" in seen:
                k += 1
            sid = f"{sid}-{k}"
        seen.add(sid)
        out.append(sid)
    return out


@pytest.fixture
def tiny_merges(monkeypatch):
    monkeypatch.setattr(idset, "_MIN_PENDING", 3)  # merge into the sorted arrays every few members


@pytest.mark.parametrize("spilled", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_membership_matches_a_python_set(seed, spilled, tiny_merges, tmp_path):
    rng = random.Random(seed)
    s, ref = IdSet((lambda: tmp_path / "runs") if spilled else None), set()
    for _ in range(3000):
        x = f"id-{rng.randrange(800)}" if rng.random() < 0.9 else rng.choice(["", "é", "\ud800", "a" * 300])
        assert (x in s) == (x in ref)
        if rng.random() < 0.7:
            s.add(x)
            ref.add(x)
    assert len(s.runs) > 1  # several runs, each sorted by its high half
    assert all(np.all(r[0][1:] >= r[0][:-1]) for r in s.runs)
    probe = [f"id-{i}" for i in range(900)] + ["", "é", "\ud800", "a" * 300, "b"]
    ds, member = s.contains_many(probe)
    assert member.tolist() == [p in ref for p in probe]
    assert ds == [digest(p) for p in probe]


def test_equal_high_halves_are_told_apart_by_the_low_half(tiny_merges):
    s = IdSet()
    hi = (7).to_bytes(8, "big")
    members = [hi + (j * 2).to_bytes(8, "big") for j in range(10)]  # ten digests with one high half
    for d in members:
        s.add_digest(d)
    s.merge()
    assert s.pending == set() and sum(len(r[0]) for r in s.runs) == 10
    for j in range(20):
        assert s.has(hi + j.to_bytes(8, "big")) == (j % 2 == 0 and j < 20)
    assert not s.has((8).to_bytes(8, "big") + (0).to_bytes(8, "big"))


def test_empty_set_and_empty_batch():
    s = IdSet()
    assert "x" not in s and len(s) == 0
    ds, member = s.contains_many([])
    assert ds == [] and member.shape == (0,)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_assign_many_matches_the_row_by_row_rule(seed, batch, tiny_merges):
    """Own ids, repeated own ids, content-hash ids with repeats, and own ids that equal a suffixed
    hash id given earlier (``abc-2``), cut into batches of every size."""
    rng = random.Random(seed)
    hashes = [f"{rng.randrange(12):016x}{'f' * 48}" for _ in range(600)]
    owns: list = []
    for _ in range(600):
        r = rng.random()
        if r < 0.4:
            owns.append(None)
        elif r < 0.5:
            owns.append(f"{rng.randrange(12):016x}-{rng.randrange(2, 4)}")  # may equal a suffixed hash id
        else:
            owns.append(f"own-{rng.randrange(300)}")
    ids = _IdAssigner()
    got: list = []
    for a in range(0, len(owns), batch):
        got += ids.assign_many(owns[a : a + batch], hashes[a : a + batch])
    assert got == _reference_ids(owns, hashes)
    assert any(g is None for g in got) and any(g and g.endswith("-3") for g in got)


@pytest.mark.parametrize("block", [1, 2, 3, 5, 1000])
@pytest.mark.parametrize("seed", range(3))
def test_merge_runs_block_by_block_gives_the_sorted_union(block, seed):
    """Two sorted runs with many equal high halves (within and across the runs) merged in tiny blocks:
    the high halves come out sorted and the (high, low) pairs are the multiset union."""
    rng = np.random.default_rng(seed)
    runs = []
    for n in (rng.integers(0, 40), rng.integers(0, 40)):
        hi = np.sort(rng.integers(0, 6, n).astype(np.uint64))
        runs.append((hi, rng.integers(0, 2**63, n).astype(np.uint64)))
    a, b = runs
    n = len(a[0]) + len(b[0])
    out = (np.zeros(n, np.uint64), np.zeros(n, np.uint64))
    idset._merge_runs(a, b, out, block=block)
    assert np.all(out[0][1:] >= out[0][:-1])
    got = sorted(zip(out[0].tolist(), out[1].tolist()))
    assert got == sorted(zip(a[0].tolist() + b[0].tolist(), a[1].tolist() + b[1].tolist()))


def test_runs_stay_few_and_spilled_runs_are_files_removed_when_merged_and_closed(tiny_merges, tmp_path):
    s = IdSet(lambda: tmp_path / "runs")
    ids = [f"x{i}" for i in range(3000)]
    for x in ids:
        s.add(x)
    files = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(files) == 2 * len(s.runs)  # merged runs' files are gone
    assert len(s.runs) <= 2 * np.log2(len(ids)) and len(s) == len(ids)
    assert all(isinstance(r[0], np.memmap) or isinstance(r[0].base, np.memmap) for r in s.runs)
    _, member = s.contains_many(ids + ["y"])
    assert member.tolist() == [True] * len(ids) + [False]
    s.close()
    assert list((tmp_path / "runs").iterdir()) == [] and len(s) == 0


def test_a_spilled_set_holds_its_runs_off_the_heap(monkeypatch, tmp_path):
    """200,000 members: in memory the runs take 3.2 MB of traced (numpy) memory; spilled, the heap
    holds only the pending set and the arrays of one merge block, at every moment."""
    import tracemalloc

    monkeypatch.setattr(idset, "_MIN_PENDING", 1024)
    monkeypatch.setattr(idset, "_MERGE_BLOCK", 1024)
    held = {}
    for name, spill in (("memory", None), ("spilled", lambda: tmp_path / "runs")):
        tracemalloc.start()
        s = IdSet(spill)
        for i in range(200_000):
            s.add_digest(i.to_bytes(16, "little"))
        held[name] = tracemalloc.get_traced_memory()  # (now, peak)
        tracemalloc.stop()
        assert len(s) == 200_000 and s.has((199_999).to_bytes(16, "little"))
        s.close()
    assert held["memory"][0] >= 3_200_000
    assert held["spilled"][1] < 600_000, held  # at any time, merges included
