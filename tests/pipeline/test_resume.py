"""A run killed with SIGKILL mid-run resumes: only unfinished shards are recomputed
and the outputs are byte-identical to an uninterrupted run."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")
N_SHARDS = 8


def cli(pool, out, log, *extra):
    return [
        sys.executable,
        "-m",
        "thresher",
        "select",
        str(pool),
        "--criteria",
        "fake_len,length",
        "--criterion-option",
        "fake_len.sleep=0.25",
        "--criterion-option",
        f"fake_len.log={log}",
        "--selector",
        "pareto" if _has_pareto() else "topk",
        *(
            ["--selector-option", "objectives=[fake_len:max, length:min]"]
            if _has_pareto()
            else ["--selector-option", "criterion=fake_len"]
        ),
        "--ratio",
        "0.05",
        "--shard-size",
        "100",
        "--plugin",
        PLUGIN,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _has_pareto() -> bool:
    try:
        from thresher import ops

        return hasattr(ops, "pareto_ranks") and hasattr(ops, "crowding_distance")
    except ImportError:
        return False


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def n_lines(p: Path) -> int:
    return len(p.read_text().splitlines()) if p.exists() else 0


def n_rows(log: Path) -> int:
    """Rows scored, from fake_len's call log (``fake_len ROWS FIRST_ID`` per call)."""
    return sum(int(line.split()[1]) for line in log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    p = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as src, open(p, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i == N_SHARDS * 100:
                break
            dst.write(line)
    return p


def test_sigkill_then_resume_is_byte_identical(pool, tmp_path):
    log = tmp_path / "calls.log"
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli(pool, killed, log), env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while n_rows(log) < 300 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    rows_before = n_rows(log)
    cached = len(list((killed / "cache" / "fake_len").glob("*.parquet")))
    assert 2 <= cached < N_SHARDS
    assert not (killed / "manifest.json").exists()

    # restart: resumes the same run, computes only the shards that were not cached
    r = subprocess.run(cli(pool, killed, log), env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert n_rows(log) - rows_before == (N_SHARDS - cached) * 100  # rows of the shards not cached, no more
    assert "resume run" in (killed / "run.log").read_text()

    # an uninterrupted run elsewhere (same options, same log file) gives the same bytes
    fresh = tmp_path / "fresh"
    r = subprocess.run(cli(pool, fresh, log), env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("selected.jsonl", "scores.parquet", "manifest.json", "report.html"):
        assert (killed / name).read_bytes() == (fresh / name).read_bytes(), name

    # a different option in the same folder is refused, and the outputs stay as they were
    before = (killed / "scores.parquet").read_bytes()
    other = [c if c != "0.05" else "0.06" for c in cli(pool, killed, log)]  # --ratio 0.06
    r = subprocess.run(other, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already holds another run's results" in r.stderr and "budget" in r.stderr
    assert (killed / "scores.parquet").read_bytes() == before
