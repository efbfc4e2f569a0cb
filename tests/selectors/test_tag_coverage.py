"""``tag_coverage`` (InsTag complexity-first diverse sampling) against a brute-force re-implementation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from thresher.errors import OptionError
from thresher.registry import SELECTORS


def brute_force(tag_lists, k):
    """The paper's Algorithm 1, literally: sort by tag count (stable), pass over the remaining rows adding a
    row when it grows the round's tag set; repeat rounds until N rows or a round adds nothing."""
    rows = [i for i in range(len(tag_lists)) if tag_lists[i] is not None]
    rows = sorted(rows, key=lambda i: -len(set(tag_lists[i])))
    chosen = []
    while len(chosen) < k:
        covered = set()
        added = False
        for i in list(rows):
            if len(chosen) == k:
                break
            if len(covered | set(tag_lists[i])) > len(covered):
                chosen.append(i)
                covered |= set(tag_lists[i])
                rows.remove(i)
                added = True
        if not added:
            break
    return chosen


def frame(tag_lists):
    return pd.DataFrame(
        {
            "tags": [np.nan if t is None else float(len(set(t))) for t in tag_lists],
            "tags.tags": [json.dumps([] if t is None else t) for t in tag_lists],
        }
    )


def test_hand_case():
    tl = [["a"], ["a", "b", "c"], ["b", "c"], ["d"], ["a", "d"], [], None]
    sel = SELECTORS.get("tag_coverage").obj
    # round 1: row1 {a,b,c}, row2 (b,c) adds nothing, row4 (a,d) adds d, row0, row3 nothing;
    # round 2: row2 {b,c}, row0 {a}? no: a not in round-2 set -> taken; row3 {d} taken; row5 never
    assert sel(frame(tl), 10).tolist() == [1, 4, 2, 0, 3]
    assert sel(frame(tl), 3).tolist() == [1, 4, 2]
    assert sel(frame(tl), 0).tolist() == []


@pytest.mark.parametrize("seed", range(25))
def test_against_brute_force_on_random_tag_sets(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    vocab = [f"t{j}" for j in range(int(rng.integers(1, 12)))]
    tl = []
    for _ in range(n):
        if rng.random() < 0.1:
            tl.append(None)
        else:
            m = int(rng.integers(0, 5))
            tl.append(sorted(set(rng.choice(vocab, size=m).tolist())) if m else [])
    k = int(rng.integers(0, n + 3)) if n else 0
    got = SELECTORS.get("tag_coverage").obj(frame(tl), k)
    assert got.tolist() == brute_force(tl, min(k, n))


def test_tags_column_as_lists_and_errors():
    sc = pd.DataFrame({"c": [2.0, 1.0], "mytags": [["x", "y"], ["x"]]})
    sel = SELECTORS.get("tag_coverage").obj
    assert sel(sc, 2, criterion="c", tags_column="mytags").tolist() == [0, 1]
    with pytest.raises(ValueError, match="no column"):
        sel(sc, 2, criterion="c")
    with pytest.raises(ValueError, match="JSON"):
        sel(pd.DataFrame({"tags": [1.0], "tags.tags": ["[oops"]}), 1)
    with pytest.raises(OptionError):
        sel(sc, 1, criterion="c", bogus=1)
