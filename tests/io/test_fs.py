"""thresher.fs: the one way files are written (atomic, unique temporary names, safe clean-up)."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from thresher.fs import (
    TMP_SUFFIX,
    atomic_dir,
    atomic_file,
    atomic_save,
    atomic_write_bytes,
    clean_stale_temp,
    temp_name,
    write_json_atomic,
)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(TMP_SUFFIX))


def test_atomic_file_leaves_target_untouched_on_exception(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write(b"new, half written")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        atomic_save(target, lambda p: (p.write_bytes(b"x"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_atomic_writes_replace_and_create_folders(tmp_path):
    p = tmp_path / "a" / "b" / "x.json"
    write_json_atomic({"b": 1, "a": [1, 2]}, p)
    assert p.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    atomic_write_bytes(p, b"second")
    assert p.read_bytes() == b"second"
    assert _leftovers(p.parent) == []


def test_temp_names_are_unique_per_call(tmp_path):
    names = {temp_name(tmp_path / "x") for _ in range(200)}
    assert len(names) == 200
    assert all(n.name.startswith(".x.") and n.name.endswith(TMP_SUFFIX) for n in names)


def _write_many(path: str, tag: int, n: int) -> None:
    for i in range(n):
        atomic_write_bytes(path, (f"{tag}:{i}:" + "x" * 4096).encode())


def test_concurrent_writers_of_one_path_do_not_collide(tmp_path):
    target = tmp_path / "shared.bin"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(target), t, 40)) for t in range(4)]
    threads = [threading.Thread(target=_write_many, args=(str(target), 10 + t, 40)) for t in range(3)]
    for w in procs + threads:
        w.start()
    for w in procs + threads:
        w.join()
    assert all(p.exitcode == 0 for p in procs)
    data = target.read_bytes().decode()
    tag, i, body = data.split(":")
    assert body == "x" * 4096  # one writer's whole content, never a mix
    assert _leftovers(tmp_path) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_clean_stale_temp_removes_only_dead_writers_files(tmp_path):
    dead = _dead_pid()
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f".scores.parquet.{dead}.abcd1234{TMP_SUFFIX}"
    stale.write_bytes(b"partial")
    stale_dir = tmp_path / f".model.{dead}.k3j4h5{TMP_SUFFIX}"
    stale_dir.mkdir()
    (stale_dir / "w.bin").write_bytes(b"x")
    live = tmp_path / f".scores.parquet.{os.getpid()}.beef0000{TMP_SUFFIX}"
    live.write_bytes(b"in flight")
    keep = [
        tmp_path / ".gitignore",
        tmp_path / ".hidden.tmp",
        tmp_path / f".nopid{TMP_SUFFIX}",
        tmp_path / "sub" / "data.jsonl",
        tmp_path / f".x.{dead}.tmp",
    ]
    for k in keep:
        k.write_text("mine")
    assert clean_stale_temp(tmp_path) == 2
    assert not stale.exists() and not stale_dir.exists()
    assert live.exists() and all(k.exists() for k in keep)
    assert clean_stale_temp(tmp_path / "missing") == 0


def test_atomic_dir_builds_in_place_and_keeps_a_finished_copy(tmp_path):
    final = tmp_path / "cache" / "model"

    def build(tag):
        def b(tmp: Path) -> None:
            (tmp / "weights.bin").write_text(tag)

        return b

    assert atomic_dir(final, build("first")) == final
    assert (final / "weights.bin").read_text() == "first"
    atomic_dir(final, build("second"))  # another process finished first: its copy is kept
    assert (final / "weights.bin").read_text() == "first"
    with pytest.raises(RuntimeError):
        atomic_dir(tmp_path / "cache" / "other", lambda tmp: (_ for _ in ()).throw(RuntimeError("x")))
    assert not (tmp_path / "cache" / "other").exists()
    assert _leftovers(tmp_path / "cache") == []
