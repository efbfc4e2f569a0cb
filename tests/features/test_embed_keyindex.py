"""thresher.embed.keyindex.KeyIndex against a plain dict (the index it replaces): parts added one by
one with merges in between, keys repeated across and within parts (the first part added wins),
lookups of absent keys, empty parts and empty queries."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.embed import keyindex
from thresher.embed.keyindex import KeyIndex
from thresher.embed.store import sample_key


def _oracle_find(oracle: dict, keys: list) -> tuple:
    part = np.array([oracle.get(k, (-1, -1))[0] for k in keys], np.int32)
    row = np.array([oracle.get(k, (-1, -1))[1] for k in keys], np.int32)
    return part >= 0, part, row


@pytest.mark.parametrize("merge_min", [1, 7, 1 << 16])
def test_key_index_matches_a_dict(monkeypatch, merge_min):
    monkeypatch.setattr(keyindex, "MERGE_MIN", merge_min)  # merge after every part, now and then, never
    rng = np.random.default_rng(merge_min)
    universe = [sample_key(i, "t") for i in range(400)]
    idx, oracle = KeyIndex(), {}
    for part in range(30):
        n = int(rng.integers(0, 40))  # empty parts too
        keys = [universe[j] for j in rng.integers(0, len(universe), n)]  # repeats within and across parts
        idx.add(keys, part)
        for r, k in enumerate(keys):
            oracle.setdefault(k, (part, r))
        query = [universe[j] for j in rng.integers(0, len(universe), 50)] + ["absent", universe[0] + "x"]
        got = idx.find(query)
        want = _oracle_find(oracle, query)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert len(idx) == len(oracle)
    found, part, row = idx.find([])
    assert found.shape == part.shape == row.shape == (0,)


def test_empty_index_and_prefix_keys():
    idx = KeyIndex()
    assert len(idx) == 0 and not idx.find(["abc"])[0].any()
    idx.add(["abc", "ab", "abcd"], 0)
    idx.merge()
    found, part, row = idx.find(["ab", "abc", "abcd", "a", "abcde", ""])
    assert found.tolist() == [True, True, True, False, False, False]
    assert row[:3].tolist() == [1, 0, 2] and len(idx) == 3


def test_a_key_costs_a_few_dozen_bytes():
    idx = KeyIndex()
    n = 200_000
    idx.add([sample_key(i, "t") for i in range(n)], 0)
    idx.merge()
    held = idx.keys.nbytes + idx.part.nbytes + idx.row.nbytes
    assert held / n <= 32 and not idx.chunks
