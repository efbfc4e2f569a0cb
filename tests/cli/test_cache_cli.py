"""Score-cache keys (criterion versions, not the package version) and `thresher cache ls|prune`, on real files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

import thresher
from thresher.cache import ScoreCache
from thresher.cli.main import main
from thresher.registry import CRITERIA

ROWS = [{"id": f"r{i}", "instruction": f"task {i}", "output": "alpha beta gamma " * (i + 1)} for i in range(10)]
DAY = 86400.0


@pytest.fixture()
def pool(tmp_path) -> Path:
    p = tmp_path / "pool.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def score(pool: Path, cache: Path, capsys, crit: str = "mtld") -> dict:
    out = pool.parent / "s.parquet"
    argv = ["score", str(pool), "--criteria", crit, "--shard-size", "4", "--cache-dir", str(cache), "--out", str(out)]
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def files(root: Path) -> dict:
    """relative path -> size of every file under root (walked independently of thresher.cache)."""
    out = {}
    for dp, _, fs in os.walk(root):
        for f in fs:
            p = Path(dp) / f
            out[str(p.relative_to(root))] = p.stat().st_size
    return out


def ls(cache: Path, capsys) -> dict:
    assert main(["cache", "ls", "--cache-dir", str(cache), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_package_upgrade_keeps_scores_a_criterion_version_does_not(pool, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    first = score(pool, cache, capsys)
    assert first["cache"]["hits"] == 0 and first["cache"]["misses"] == 6  # 3 shards x (mtld + token counts)
    before = files(cache)
    monkeypatch.setattr(thresher, "__version__", "99.0.0")  # an upgrade that changes no criterion
    again = score(pool, cache, capsys)
    assert again["cache"] == {"hits": 6, "misses": 0} and set(files(cache)) == set(before)
    monkeypatch.setattr(CRITERIA.get("mtld").obj, "VERSION", "2")  # the criterion itself changed
    bumped = score(pool, cache, capsys)
    assert bumped["cache"] == {"hits": 3, "misses": 3}  # token counts reused, mtld recomputed
    new = set(files(cache)) - set(before)
    entries = {p for p in new if p.endswith(".parquet")}
    assert len(entries) == 3 and all(p.startswith("mtld" + os.sep) for p in new)
    assert new == entries | {p[: -len(".parquet")] + ".rows.npy" for p in entries}  # each with its row keys


def test_ls_counts_entries_and_bytes(pool, tmp_path, capsys):
    cache = tmp_path / "cache"
    score(pool, cache, capsys)
    emb = cache / "embeddings" / "abc"
    emb.mkdir(parents=True)
    (emb / "part-1.npy").write_bytes(b"x" * 100)
    (emb / "part-1.keys.json").write_text("[]")
    (emb / "part-2.npy").write_bytes(b"y" * 10)  # no keys file: not committed, not an entry
    info = ls(cache, capsys)
    walked = files(cache)
    groups = {g["name"]: g for g in info["groups"]}
    assert set(groups) == {"embeddings", "length", "mtld"}
    for name in ("length", "mtld"):
        mine = {p: s for p, s in walked.items() if p.startswith(name + os.sep)}  # entries and their row keys
        n = sum(p.endswith(".parquet") for p in mine)
        assert groups[name]["entries"] == n == 3 and groups[name]["bytes"] == sum(mine.values())
        assert groups[name]["kind"] == "scores"
    assert groups["embeddings"] == {**groups["embeddings"], "kind": "embeddings", "entries": 1, "bytes": 102}
    assert info["entries"] == 7
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "mtld" in text and "total" in text


def test_prune_older_than_with_dry_run(pool, tmp_path, capsys):
    cache = tmp_path / "cache"
    score(pool, cache, capsys)
    old = sorted((cache / "mtld").glob("*.parquet"))[:2]
    stamp = time.time() - 10 * DAY
    for p in old:
        os.utime(p, (stamp, stamp))
    before = files(cache)
    assert main(["cache", "prune", "--cache-dir", str(cache), "--older-than", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(str(p) in out for p in old) and "would remove 2 entries" in out
    assert files(cache) == before  # nothing removed
    assert main(["cache", "prune", "--cache-dir", str(cache), "--older-than", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    gone = {str(q.relative_to(cache)) for p in old for q in (p, p.with_suffix(".rows.npy"))}  # entry + row keys
    assert res["removed"] == 2 and res["bytes"] == sum(before[g] for g in gone)
    assert set(files(cache)) == set(before) - gone


def test_prune_one_criterion_all_and_errors(pool, tmp_path, capsys):
    cache = tmp_path / "cache"
    score(pool, cache, capsys)
    assert main(["cache", "prune", "--cache-dir", str(cache), "--criterion", "mtld"]) == 0
    capsys.readouterr()
    assert not (cache / "mtld").exists() and len(list((cache / "length").iterdir())) == 3
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 2
    assert "give --older-than DAYS, --criterion NAME or --all" in capsys.readouterr().err
    assert main(["cache", "prune", "--cache-dir", str(cache), "--older-than", "-1"]) == 2
    capsys.readouterr()
    assert main(["cache", "prune", "--cache-dir", str(cache), "--all"]) == 0
    capsys.readouterr()
    assert files(cache) == {}
    assert ls(cache, capsys)["entries"] == 0
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_run_folder_and_reads_refresh_last_use(pool, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["select", str(pool), "--criteria", "length", "--k", "2", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert ls(out, capsys)["cache_dir"] == str(out / "cache")  # a run's output folder names its cache
    c = ScoreCache(tmp_path / "c")
    c.put("x", "k", pd.DataFrame({"id": ["a"], "x": [1.0]}))
    p = c.path("x", "k")
    os.utime(p, (time.time() - 10 * DAY,) * 2)
    assert c.get("x", "k") is not None
    assert time.time() - p.stat().st_mtime < DAY  # a hit counts as a use for --older-than


def test_prune_all_removes_embedder_aliases_with_the_last_part(tmp_path, capsys):
    from thresher.embed import embed_texts

    cache = tmp_path / "cache"
    embed_texts(["one", "two"], "default", cache_dir=cache / "embeddings", ids=["a", "b"])
    assert any((cache / "embeddings" / "aliases").glob("*.json"))
    assert main(["cache", "prune", "--cache-dir", str(cache), "--older-than", "5"]) == 0  # the part stays
    capsys.readouterr()
    assert any((cache / "embeddings" / "aliases").glob("*.json"))
    assert main(["cache", "prune", "--cache-dir", str(cache), "--all"]) == 0
    capsys.readouterr()
    assert files(cache) == {} and not (cache / "embeddings").exists()


def test_prune_all_never_touches_another_programs_files(pool, tmp_path, capsys):
    """--cache-dir pointed at a folder that also holds the user's data: only the cache's own entries
    (Parquet files carrying its metadata) are listed and removed."""
    cache = tmp_path / "cache"
    score(pool, cache, capsys)
    (cache / "train").mkdir()
    pd.DataFrame(ROWS).to_parquet(cache / "train" / "part-0.parquet")
    pd.DataFrame(ROWS).to_parquet(cache / "mtld" / "mine.parquet")  # even inside a criterion's folder
    (cache / "length" / "broken.parquet").write_bytes(b"not parquet")
    theirs = {
        k: v for k, v in files(cache).items() if k.startswith("train") or k.endswith(("mine.parquet", "broken.parquet"))
    }
    assert len(theirs) == 3
    assert ls(cache, capsys)["entries"] == 6  # mtld and length: three shards each
    assert main(["cache", "prune", "--cache-dir", str(cache), "--all"]) == 0
    capsys.readouterr()
    assert files(cache) == theirs
