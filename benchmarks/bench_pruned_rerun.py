"""A rerun whose scores are cached but whose embeddings cache was pruned (issue 10, resume).

``thresher cache prune --criterion embeddings`` (or ``--older-than``: a rerun whose scores are cached never
reads the embeddings, so they age) removes the vectors and keeps the scores. The rerun (another ``--k``)
then needs no vector: the kNN scores are cached. Before, the shard pass put every row in the embeddings
cache before the pool's key (known once every shard was read) said so, so the rerun encoded the whole pool
again.

Workload: the first ``--rows`` rows of ../shared/data/bigbench, ``thresher select --criteria
knn_distance`` with the default embedder (all-MiniLM-L6-v2), each run a separate ``thresher`` process with
``OMP_NUM_THREADS`` etc. = ``--threads``. Contenders, per engine (local on ``--rows``; Ray with one worker
on ``--ray-rows``, a local Ray started by the run):

* ``cold``: empty cache, ``--k 100``;
* ``warm``: the same cache, ``--k 50``;
* ``pruned``: the ``embeddings`` folder removed, ``--k 50``.

Records each run's seconds, whether the embeddings folder exists after it, and whether the pruned run's
``knn_distance`` column equals the cold run's (else the script exits 1).

    python benchmarks/bench_pruned_rerun.py [--rows 3000] [--ray-rows 600] [--no-ray] [--out FILE]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"
THRESHER = [sys.executable, "-m", "thresher"]


def head(n: int, dst: Path) -> Path:
    with gzip.open(POOL, "rt", encoding="utf-8") as src, open(dst, "w", encoding="utf-8") as out:
        out.writelines(itertools.islice(src, n))
    return dst


def run(data: Path, out: Path, cache: Path, k: int, env: dict, engine: list) -> float:
    cmd = [*THRESHER, "select", str(data), "--criteria", "knn_distance", "--k", str(k), "--out", str(out),
           "--cache-dir", str(cache), "--quiet", *engine]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def contender(name: str, data: Path, work: Path, env: dict, engine: list) -> dict:
    cache = work / f"cache-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    res: dict = {"engine": name, "rows": len(data.read_text(encoding="utf-8").splitlines())}
    for label, k in (("cold", 100), ("warm", 50), ("pruned", 50)):
        if label == "pruned":
            shutil.rmtree(cache / "embeddings")
        out = work / f"out-{name}-{label}"
        res[f"{label}_s"] = run(data, out, cache, k, env, engine)
        res[f"{label}_embeddings_after"] = (cache / "embeddings").is_dir()
        print(f"[{name}] {label}: {res[f'{label}_s']:.1f} s", flush=True)
    cold = pd.read_parquet(work / f"out-{name}-cold" / "scores.parquet")["knn_distance"]
    pruned = pd.read_parquet(work / f"out-{name}-pruned" / "scores.parquet")["knn_distance"]
    res["pruned_scores_equal_cold"] = bool(cold.equals(pruned))
    res["pruned_over_warm"] = res["pruned_s"] / res["warm_s"]
    res["pruned_over_cold"] = res["pruned_s"] / res["cold_s"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--ray-rows", type=int, default=600)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/thresher-bench-pruned")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pruned-rerun-cpu.json"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t}
    runs = [contender("local", head(args.rows, work / "pool.jsonl"), work, env, [])]
    if not args.no_ray:
        ray = ["--engine", "ray", "--workers", "1"]
        runs.append(contender("ray-1-worker", head(args.ray_rows, work / "pool-ray.jsonl"), work, env, ray))
    result = {
        "benchmark": "pruned-rerun",
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": args.threads},
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "one repetition per run (a cold run encodes the pool: minutes); compare within this file",
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(runs, indent=1))
    return 0 if all(r["pruned_scores_equal_cold"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
