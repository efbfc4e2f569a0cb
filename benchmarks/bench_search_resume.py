"""A pool-scoped kNN search killed part-way resumes from its checkpoint (issue 10, resume and faults).

Workload: ``--rows`` rows (default 400,000) replicated from ../shared/data/bigbench, ``length`` and
``knn_distance`` (exact kNN-6 over the whole pool) on PRECOMPUTED embeddings of ``--dim`` dimensions
(as ``bench_scale.py --knn-large``: a tiny random ``lm:`` embedder whose cache is filled with seeded
random unit vectors, so nothing is encoded), top ``--k`` by knn_distance. Each run is a separate
process (``run_pipeline``), the score cache emptied before it (the embeddings kept), the same
threads for every contender (``OMP_NUM_THREADS`` etc. = ``--threads``). Contenders, interleaved per
repetition:

* ``no-checkpoints``: ``checkpoint_s=0``, unbroken;
* ``checkpoints``: ``checkpoint_s=--every`` (default 60 s, the pipeline's), unbroken;
* ``killed+resumed``: ``checkpoint_s=--every``; SIGKILL ``--after`` seconds after the search's first
  checkpoint part appears, then the same run again, which resumes.

Every run's selection and scores must equal ``no-checkpoints``'s of the same repetition (else the
script exits 1). Reports per contender the seconds (min, median), the ``score_pool`` lap, the
checkpoint ratio ``checkpoints / no-checkpoints``, and for the killed runs: seconds until the kill,
parts saved by then, the resumed run's seconds and queries restored (from its run info), and the
resumed run's time as a fraction of an unbroken one.

    python benchmarks/bench_search_resume.py [--rows 400000] [--dim 32] [--reps 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_pipeline import make_pool  # noqa: E402
from benchmarks.bench_scale import fill_embeddings, tiny_embedder  # noqa: E402

CHILD = r"""
import json, sys, time
sys.path.insert(0, {py!r})
import pandas as pd
from thresher.pipeline import PipelineConfig, run_pipeline
t = time.perf_counter()
res = run_pipeline(PipelineConfig(data={data!r}, out={out!r}, cache_dir={cache!r}, criteria={criteria!r},
                                  selector={{"name": "topk", "options": {{"criterion": "knn_distance"}}}}, k={k},
                                  shard_size={shard}, checkpoint_s={every!r}, report=False, quiet=True))
dt = time.perf_counter() - t
s = pd.read_parquet(res.scores_path)
print(json.dumps({{"seconds": dt, "timings": res.timings, "selected": [int(x) for x in res.selected],
                  "run_info": [c.get("run_info") for c in res.manifest["criteria"] if c["name"] == "knn_distance"][0],
                  "scores_sum": float(s["knn_distance"].sum()), "scores": s["knn_distance"].tolist()}}))
"""


def env(threads: int) -> dict:
    t = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t}


def clear_scores(cache: Path) -> None:
    for sub in cache.glob("*"):
        if sub.name != "embeddings":
            shutil.rmtree(sub, ignore_errors=True)


def code_for(args: argparse.Namespace, data: Path, work: Path, every: float, crit: list) -> str:
    return CHILD.format(py=str(ROOT / "python"), data=str(data), out=str(work / "out"), cache=str(cache_of(work, args)),
                        criteria=crit, k=args.k, shard=args.shard_size, every=every)  # fmt: skip


def cache_of(work: Path, args: argparse.Namespace) -> Path:
    return work / f"cache-{args.rows}-{args.dim}"


def fresh(work: Path, cache: Path) -> None:
    """No earlier run's outputs or scores (the precomputed embeddings stay)."""
    shutil.rmtree(work / "out", ignore_errors=True)
    clear_scores(cache)


def run(code: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(threads), check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_killed(code: str, threads: int, parts_dir: Path, after: float) -> dict:
    """Start the run; SIGKILL it ``after`` seconds after the first checkpoint part appears."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env(threads))  # fmt: skip
    first = None
    while proc.poll() is None:
        parts = list(parts_dir.glob("*/part-*.npz"))
        if parts and first is None:
            first = time.perf_counter()
        if first is not None and time.perf_counter() - first >= after:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            parts = list(parts_dir.glob("*/part-*.npz"))
            return {"killed_after_s": time.perf_counter() - t, "parts_at_kill": len(parts)}
        time.sleep(0.2)
    raise RuntimeError(f"the run ended before the kill (rc {proc.returncode}): {proc.stderr.read()[-2000:]!r}")


def same(a: dict, b: dict) -> bool:
    return a["selected"] == b["selected"] and a["scores"] == b["scores"]


def one_rep(args: argparse.Namespace, data: Path, work: Path, crit: list) -> dict:
    cache = cache_of(work, args)
    fresh(work, cache)
    base = run(code_for(args, data, work, 0.0, crit), args.threads)
    fresh(work, cache)
    ck = run(code_for(args, data, work, args.every, crit), args.threads)
    fresh(work, cache)
    code = code_for(args, data, work, args.every, crit)
    kill = run_killed(code, args.threads, cache / "knn_distance" / "search-checkpoints", args.after)
    resumed = run(code, args.threads)
    ok = same(base, ck) and same(base, resumed)
    info = resumed.get("run_info") or {}
    out = {"no-checkpoints": base, "checkpoints": ck, "killed": kill, "resumed": resumed, "identical": ok,
           "resumed_queries": info.get("resumed_queries"), "queries": info.get("queries")}  # fmt: skip
    for r in (base, ck, resumed):
        r.pop("scores")
        r["selected"] = len(r["selected"])
    print(f"no-checkpoints {base['seconds']:.1f} s, checkpoints {ck['seconds']:.1f} s, killed at "
          f"{kill['killed_after_s']:.1f} s ({kill['parts_at_kill']} parts), resumed {resumed['seconds']:.1f} s "
          f"({out['resumed_queries']} of {out['queries']} queries restored), identical {ok}", flush=True)  # fmt: skip
    return out


def stats(xs: list) -> dict:
    return {"min": round(min(xs), 3), "median": round(statistics.median(xs), 3)}


def summarize(reps: list) -> dict:
    t = {c: [r[c]["seconds"] for r in reps] for c in ("no-checkpoints", "checkpoints", "resumed")}
    pool = {c: [r[c]["timings"].get("score_pool", float("nan")) for r in reps] for c in t}
    return {
        "seconds": {c: stats(v) for c, v in t.items()},
        "score_pool_s": {c: stats(v) for c, v in pool.items()},
        "killed_after_s": stats([r["killed"]["killed_after_s"] for r in reps]),
        "checkpoints_over_none": stats([a / b for a, b in zip(t["checkpoints"], t["no-checkpoints"])]),
        "resumed_over_unbroken": stats([a / b for a, b in zip(t["resumed"], t["no-checkpoints"])]),
        "killed_plus_resumed_over_unbroken": stats(
            [(r["killed"]["killed_after_s"] + r["resumed"]["seconds"]) / r["no-checkpoints"]["seconds"] for r in reps]
        ),
        "restored_fraction": stats([r["resumed_queries"] / r["queries"] for r in reps]),
        "all_identical": all(r["identical"] for r in reps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--k", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=50_000)
    ap.add_argument("--every", type=float, default=60.0, help="checkpoint_s of the checkpointed contenders")
    ap.add_argument("--after", type=float, default=30.0, help="seconds after the first part to kill at")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/thresher-bench-search-resume")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search-resume-cpu.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"pool-{args.rows}.jsonl.gz"
    make_pool(data, args.rows)
    embedder = tiny_embedder(work, args.dim)
    cache = cache_of(work, args)
    if not (cache / "embeddings").exists():
        fill_embeddings(work, "x", data, embedder)
        cache.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work / "cache-x" / "embeddings"), str(cache / "embeddings"))
    crit = ["length", {"name": "knn_distance", "options": {"embedder": embedder, "k": 6}}]
    reps = [one_rep(args, data, work, crit) for _ in range(args.reps)]
    settings = {k: v for k, v in vars(args).items() if k not in ("work", "out")}
    result = {"benchmark": "search_resume", "settings": settings,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "note": "shared 2-core machine: read the ratios, not the absolute times"},
              "summary": summarize(reps), "reps": reps}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    sys.exit(0 if result["summary"]["all_identical"] else 1)


if __name__ == "__main__":
    main()
