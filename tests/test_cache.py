"""Score cache: keys, atomic writes, crash leftovers (thresher.cache)."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from thresher.cache import ScoreCache, cache_key


def table(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "x": rng.normal(size=n),
                         "x.reason": [""] * (n - 1) + ["empty answer"]})


def test_key_depends_on_every_part():
    base = cache_key("ifd", "model=a/max_length=512", "shard1", version="0.1.0")
    assert base == cache_key("ifd", "model=a/max_length=512", "shard1", version="0.1.0")
    others = {cache_key("ppl", "model=a/max_length=512", "shard1", version="0.1.0"),
              cache_key("ifd", "model=b/max_length=512", "shard1", version="0.1.0"),
              cache_key("ifd", "model=a/max_length=256", "shard1", version="0.1.0"),
              cache_key("ifd", "model=a/max_length=512", "shard2", version="0.1.0"),
              cache_key("ifd", "model=a/max_length=512", "shard1", version="0.2.0")}
    assert base not in others and len(others) == 5
    # no ambiguity from concatenation
    assert cache_key("a", "bc", "d", version="v") != cache_key("ab", "c", "d", version="v")


def test_put_get_roundtrip_and_atomicity(tmp_path):
    c = ScoreCache(tmp_path)
    assert c.get("x", "k1") is None and c.misses == 1
    t = table()
    back = c.put("x", "k1", t)
    pd.testing.assert_frame_equal(back, t)
    got = c.get("x", "k1")
    pd.testing.assert_frame_equal(got, t)
    assert c.hits == 1
    # no temporary files are left behind
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["k1.parquet"]


def test_crash_leftovers_are_ignored_and_cleaned(tmp_path):
    c = ScoreCache(tmp_path)
    d = tmp_path / "x"
    d.mkdir()
    (d / ".k2.parquet.tmp12345").write_bytes(b"half a file")  # a writer killed before rename
    assert c.get("x", "k2") is None
    assert c.clean_temp() == 1 and not any(d.iterdir())
    # a truncated entry (written outside the atomic protocol) counts as a miss and is removed
    (d / "k3.parquet").write_bytes(b"PAR1garbage")
    assert c.get("x", "k3") is None and not (d / "k3.parquet").exists()


def test_criterion_names_are_sanitised(tmp_path):
    c = ScoreCache(tmp_path)
    p = c.path("../evil/name", "k")
    assert p.parent.parent == tmp_path and ".." not in p.parent.name.split(os.sep)
    c.put("../evil/name", "k", table(2))
    assert c.entries() == [p]
