"""SIGKILL at each phase of a run (shard scoring, pool-scoped scoring, selection, writing,
just before the manifest), then restart: the outputs are byte-identical to an uninterrupted
run and no temporary file is left in the output folder or the cache. And runs started
together on one shared cache all succeed with identical outputs.

Real BIG-bench rows; model-free criteria: length, mtld and the test plugin's pool-scoped
``fake_pool`` (loaded with --plugin; knn_distance would be the real pool-scoped criterion,
but loading an embedder in each of the eleven runs is too slow for this test).

Each kill happens at a deterministic point: the run is started through a driver that
wraps one internal step so that, at the chosen phase, it writes a marker file and
blocks; the test waits for the marker and kills the process. Where the step writes a
file, the block sits after the temporary file is written and before it is renamed into
place, so the kill leaves a temporary file behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_bigbench_head

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = str(ROOT / "tests" / "fixtures" / "pipeline_plugin.py")
N_ROWS = 300
SHARD = 100
OUTPUTS = ("selected.jsonl", "scores.parquet", "manifest.json", "report.html")

DRIVER = r"""
import contextlib, os, pathlib, sys, time

phase = os.environ.get("CRASH_AT", "")


def pause():
    pathlib.Path(os.environ["CRASH_MARKER"]).write_text(str(os.getpid()))
    time.sleep(600)
    os._exit(99)  # only if nobody killed us


if phase in ("shard", "pool"):
    import thresher.cache as cache_mod

    col, nth = ("mtld", 2) if phase == "shard" else ("fake_pool", 1)
    seen = [0]
    orig_save = cache_mod.atomic_save

    def hooked_save(path, save):
        if pathlib.Path(path).parent.name == col:
            seen[0] += 1
            if seen[0] == nth:  # the temporary file is written, the rename not done
                return orig_save(path, lambda tmp: (save(tmp), pause()))
        return orig_save(path, save)

    cache_mod.atomic_save = hooked_save
elif phase == "select":
    import thresher.pipeline.run as run_mod

    orig_select = run_mod.select

    def hooked_select(st, selection):
        orig_select(st, selection)
        pause()

    run_mod.select = hooked_select
elif phase in ("write", "manifest"):
    import thresher.pipeline.outputs as out_mod

    if phase == "write":  # scores.parquet fully written to its temporary file, not renamed
        orig_af = out_mod.atomic_file

        @contextlib.contextmanager
        def hooked_af(path, *a, **k):
            with orig_af(path, *a, **k) as fh:
                yield fh
                if pathlib.Path(path).name == "scores.parquet":
                    fh.flush()
                    pause()

        out_mod.atomic_file = hooked_af
    else:  # everything written but the manifest
        orig_wj = out_mod.write_json_atomic

        def hooked_wj(obj, path, **k):
            p = pathlib.Path(path)
            if p.name == "manifest.json" and not p.parent.name.startswith("."):
                pause()
            return orig_wj(obj, path, **k)

        out_mod.write_json_atomic = hooked_wj

from thresher.cli.main import main

sys.exit(main(sys.argv[1:]))
"""


def env(**extra: str) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("CRASH_AT", None)
    e.update(extra)
    return e


def argv(pool: Path, out: Path, *extra: str, criteria: str = "length,mtld,fake_pool", objectives: str = "") -> list:
    return [
        "select",
        str(pool),
        "--criteria",
        criteria,
        "--selector",
        "pareto",
        "--selector-option",
        f"objectives=[{objectives or 'mtld:max, fake_pool:max'}]",
        "--k",
        "30",
        "--shard-size",
        str(SHARD),
        "--out",
        str(out),
        "--quiet",
        "--plugin",
        PLUGIN,
        *extra,
    ]


def temp_files(*roots: Path) -> list:
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.name.endswith(".thresher-tmp")]


@pytest.fixture(scope="module")
def setup(bigbench_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    pool = write_bigbench_head(bigbench_path, base / "pool.jsonl", N_ROWS)
    driver = base / "driver.py"
    driver.write_text(DRIVER)
    ref = base / "reference"
    r = subprocess.run(
        [sys.executable, str(driver), *argv(pool, ref)], env=env(), cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert not temp_files(ref)
    return pool, driver, {name: (ref / name).read_bytes() for name in OUTPUTS}


def kill_at(driver: Path, args: list, phase: str, marker: Path) -> None:
    """Start the run, wait until it blocks at ``phase`` (or ends), SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, str(driver), *args],
        env=env(CRASH_AT=phase, CRASH_MARKER=str(marker)),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before reaching {phase}: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["shard", "pool", "select", "write", "manifest"])
def test_sigkill_at_each_phase_then_restart_is_byte_identical(setup, tmp_path, phase):
    pool, driver, ref = setup
    out = tmp_path / "out"
    kill_at(driver, argv(pool, out), phase, tmp_path / "marker")
    assert not (out / "manifest.json").exists()  # no commit marker: the run is unfinished
    if phase in ("shard", "pool", "write"):  # killed between a temporary file's write and its rename
        assert temp_files(out), "the kill was meant to leave a temporary file"
    if phase == "manifest":  # everything else was already in place
        assert (out / "report.html").exists() and (out / "selected.jsonl").exists()

    cmd = [sys.executable, str(driver), *argv(pool, out)]
    r = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resume run" in (out / "run.log").read_text()
    for name in OUTPUTS:
        assert (out / name).read_bytes() == ref[name], name
    assert temp_files(out) == []
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_runs_started_together_on_one_cache(setup, tmp_path):
    """4 runs with one --cache-dir (different output folders) started at once: all succeed, same bytes."""
    pool, driver, _ = setup
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    (cache / ".keep-me").write_text("not thresher's")
    args = [
        argv(pool, tmp_path / f"out{i}", "--cache-dir", str(cache), "--no-report", criteria="length,mtld",
             objectives="mtld:max, length:min")
        for i in range(4)
    ]  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, str(driver), *a], env=env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for a in args
    ]
    errs = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errs
    outs = [tmp_path / f"out{i}" for i in range(4)]
    for name in ("selected.jsonl", "scores.parquet", "manifest.json"):
        first = (outs[0] / name).read_bytes()
        assert all((o / name).read_bytes() == first for o in outs[1:]), name
    assert temp_files(cache, *outs) == []
    assert (cache / ".keep-me").read_text() == "not thresher's"
