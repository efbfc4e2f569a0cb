"""nuggets scores the pool window by window: a call holds a few windows' tokens, not the pool's, and its
scores equal the whole-call loop's."""

from __future__ import annotations

import pandas as pd
import pytest

import thresher.criteria.nuggets as nug_mod
from thresher.criteria.base import Batch
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)


def pool(n):
    return pd.DataFrame([{"id": f"s{i}", "instruction": f"Say {i}.", "input": "", "output": f"{i}"}
                         for i in range(n)])  # fmt: skip


ANCHORS = [{"id": f"a{j}", "instruction": f"Count to {j}.", "output": " ".join(map(str, range(j + 1)))}
           for j in range(3)]  # fmt: skip


def nuggets(lm, **kw):
    return CRITERIA.get("nuggets").obj(model=lm, anchors=ANCHORS, batch_tokens=256, **kw)


def test_the_windows_give_the_whole_call_loops_scores_and_hold_a_few_windows_of_tokens(lm, monkeypatch):
    monkeypatch.setattr(nug_mod, "ITEM_BLOCK", 5)
    sc = nuggets(lm)
    whole = sc.finish(sc.prepare(Batch.of(pool(41))))  # every candidate tokenised first, then run
    seen = {"items": 0, "ahead": 0}
    items, one_shot = nug_mod.Nuggets.items, nug_mod.Nuggets._one_shot

    def counted_items(self, *a):
        seen["items"] += 1
        return items(self, *a)

    def counted_one_shot(self, *a):
        seen["ahead"] = max(seen["ahead"], seen["items"] - seen.setdefault("run", 0))
        seen["run"] += 1
        return one_shot(self, *a)

    monkeypatch.setattr(nug_mod.Nuggets, "items", counted_items)
    monkeypatch.setattr(nug_mod.Nuggets, "_one_shot", counted_one_shot)
    got = sc(pool(41))
    pd.testing.assert_frame_equal(got, whole)
    assert seen["run"] == 41 and got["nuggets"].notna().all()
    # candidates tokenised but not yet run: the window being run, the queued ones and one being prepared;
    # never the pool (41)
    assert 5 <= seen["ahead"] <= 5 * (sc.prefetch + 2)


def test_a_later_part_replaces_an_earlier_block_of_the_same_start(tmp_path):
    import numpy as np

    from thresher.criteria.search_checkpoint import SearchCheckpoint

    a = SearchCheckpoint(tmp_path, "x", every_s=3600)
    a.put(0, np.array([1.0]))
    a.flush()
    b = SearchCheckpoint(tmp_path, "x", every_s=3600)
    b.put(0, np.array([2.0]))
    b.flush()
    assert SearchCheckpoint(tmp_path, "x").get(0)[0].tolist() == [2.0]
