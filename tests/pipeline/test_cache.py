"""Score cache: keys, atomic writes, crash leftovers (thresher.cache)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from thresher.cache import ScoreCache, cache_key, ids_digest


def table(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"id": [f"r{i}" for i in range(n)], "x": rng.normal(size=n), "x.reason": [""] * (n - 1) + ["empty answer"]}
    )


def test_key_depends_on_every_part():
    base = cache_key("ifd", "model=a/max_length=512", "shard1", version="0.1.0")
    assert base == cache_key("ifd", "model=a/max_length=512", "shard1", version="0.1.0")
    others = {
        cache_key("ppl", "model=a/max_length=512", "shard1", version="0.1.0"),
        cache_key("ifd", "model=b/max_length=512", "shard1", version="0.1.0"),
        cache_key("ifd", "model=a/max_length=256", "shard1", version="0.1.0"),
        cache_key("ifd", "model=a/max_length=512", "shard2", version="0.1.0"),
        cache_key("ifd", "model=a/max_length=512", "shard1", version="0.2.0"),
    }
    assert base not in others and len(others) == 5
    # no ambiguity from concatenation
    assert cache_key("a", "bc", "d", version="v") != cache_key("ab", "c", "d", version="v")


def test_key_ignores_the_package_version(monkeypatch):
    """An upgrade of thresher that changes no criterion keeps the keys (a criterion's own VERSION is
    part of its scorer key; see tests/cli/test_cache_cli.py for a whole run)."""
    import thresher

    base = cache_key("ifd", "ifd-v1-abc", "shard1")
    monkeypatch.setattr(thresher, "__version__", "99.0.0")
    assert cache_key("ifd", "ifd-v1-abc", "shard1") == base
    assert cache_key("ifd", "ifd-v2-abc", "shard1") != base


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


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_crash_leftovers_are_ignored_and_cleaned(tmp_path):
    c = ScoreCache(tmp_path)
    d = tmp_path / "x"
    d.mkdir()
    dead = d / f".k2.parquet.{_dead_pid()}.abcd1234.thresher-tmp"  # a writer killed before rename
    dead.write_bytes(b"half a file")
    live = d / f".k4.parquet.{os.getpid()}.abcd1234.thresher-tmp"  # a live writer (this process) mid-write
    live.write_bytes(b"being written")
    mine = d / ".notes.tmp1"  # not a thresher file at all
    mine.write_bytes(b"user file")
    assert c.get("x", "k2") is None
    assert c.clean_temp() == 1
    assert not dead.exists() and live.exists() and mine.exists()
    # a truncated entry (written outside the atomic protocol) counts as a miss and is removed
    (d / "k3.parquet").write_bytes(b"PAR1garbage")
    assert c.get("x", "k3") is None and not (d / "k3.parquet").exists()


def test_entry_records_and_checks_the_ids_it_covers(tmp_path):
    c = ScoreCache(tmp_path)
    t = table()
    c.put("x", "k1", t, fingerprint="model@abc")
    assert c.info("x", "k1") == {"ids": ids_digest(t["id"]), "fingerprint": "model@abc"}
    assert c.get("x", "k1", ids=t["id"].tolist()) is not None
    assert c.get("x", "k1", ids=ids_digest(t["id"])) is not None
    # another shard's ids: a miss, never its scores
    other = [f"s{i}" for i in range(5)]
    hits = c.hits
    assert c.get("x", "k1", ids=other) is None and c.hits == hits
    # a valid file holding another shard's scores, copied over an entry: a miss
    u = table(seed=1).assign(id=other)
    c.put("x", "k2", u)
    (tmp_path / "x" / "k1.parquet").write_bytes((tmp_path / "x" / "k2.parquet").read_bytes())
    assert c.get("x", "k1", ids=t["id"].tolist()) is None
    # an entry without the metadata (written by an older thresher) is a miss when ids are checked
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(t, preserve_index=False), tmp_path / "x" / "k5.parquet")
    assert c.get("x", "k5", ids=t["id"].tolist()) is None and c.get("x", "k5") is not None


def test_criterion_names_are_sanitised(tmp_path):
    c = ScoreCache(tmp_path)
    p = c.path("../evil/name", "k")
    assert p.parent.parent == tmp_path and ".." not in p.parent.name.split(os.sep)
    for name in ("..", ".", "../.."):
        assert c.path(name, "k").parent.parent == tmp_path
    c.put("../evil/name", "k", table(2))
    assert c.entries() == [p]


def test_read_columns_checks_the_metadata_digest_and_reads_only_what_is_asked(tmp_path):
    """A selection's later scans: the columns asked for (in the entry's order; unknown names ignored),
    None for an entry of other ids, a missing or a truncated file; no hit or miss counted."""
    c = ScoreCache(tmp_path)
    t = table(6)
    d = ids_digest(t["id"].tolist())
    c.put("crit", "k", t, ids=d)
    hits, misses = c.hits, c.misses
    got = c.read_columns("crit", "k", d, ["x", "absent", "id"])
    pd.testing.assert_frame_equal(got, t[["id", "x"]])
    assert c.read_columns("crit", "k", ids_digest(["other"]), ["x"]) is None
    assert c.read_columns("crit", "gone", d, ["x"]) is None
    p = c.path("crit", "k")
    p.write_bytes(p.read_bytes()[:40])  # truncated (outside the atomic writes)
    assert c.read_columns("crit", "k", d, ["x"]) is None
    assert (c.hits, c.misses) == (hits, misses)
