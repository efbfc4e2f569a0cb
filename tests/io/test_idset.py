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


@pytest.mark.parametrize("seed", range(4))
def test_membership_matches_a_python_set(seed, tiny_merges):
    rng = random.Random(seed)
    s, ref = IdSet(), set()
    for _ in range(3000):
        x = f"id-{rng.randrange(800)}" if rng.random() < 0.9 else rng.choice(["", "é", "\ud800", "a" * 300])
        assert (x in s) == (x in ref)
        if rng.random() < 0.7:
            s.add(x)
            ref.add(x)
    assert len(s.hi) > 0 and np.all(np.diff(s.hi.astype(np.float64)) >= 0)  # merged, sorted by high half
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
    assert s.pending == set() and len(s.hi) == 10
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
