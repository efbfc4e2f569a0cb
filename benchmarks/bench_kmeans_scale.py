"""The pool-wide k-means steps at scale (issue 10): what they cost and hold on 384-dimensional unit vectors.

* ``nuggets-anchors``: :func:`thresher.criteria.nuggets.kmeans_anchor_rows` (100 anchors, 10 seeded
  restarts) against the previous implementation (``before``, kept below verbatim as the baseline): it
  copied the pool's vectors to float64 and summed each restart's inertia over whole-pool temporaries;
  now the k-means runs on the float32 vectors and the inertia is summed a block at a time
  (:func:`thresher.cluster.kmeans_inertia`). Per contender: seconds and the Python heap peak above the
  input (``tracemalloc``; numpy's buffers are traced), min and median over ``--reps``, contenders
  interleaved; the anchors must be the same.
* ``semdedup-kmeans``: semdedup's spherical k-means (round(sqrt(n)) clusters), the step a stopped
  semdedup call now keeps in its checkpoint instead of running again: seconds per size.

Seeded random unit vectors (the cost depends on the shapes, not on the data); ``OMP_NUM_THREADS`` and
the BLAS threads pinned to ``--threads`` for every contender.

    python benchmarks/bench_kmeans_scale.py [--rows 200000] [--semdedup-rows 200000 1000000] [--reps 2]

Writes benchmarks/results/kmeans-scale-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def before(emb, m: int, seed: int, n_init: int = 10):
    """kmeans_anchor_rows as it was (the baseline)."""
    import numpy as np

    from thresher.cluster import kmeans

    x = np.asarray(emb, dtype=np.float64)
    best = None
    for t in range(n_init):
        c, lb = kmeans(x, m, seed=seed * n_init + t)
        inertia = float(((x - np.asarray(c, dtype=np.float64)[lb]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, np.asarray(c, dtype=np.float64), lb)
    _, cent, lab = best
    pick = []
    for g in range(len(cent)):
        members = np.flatnonzero(lab == g)
        if members.size:
            d = ((x[members] - cent[g]) ** 2).sum(1)
            pick.append(int(members[np.lexsort((members, d))[0]]))
    return np.asarray(sorted(set(pick)), dtype=np.int64)


def unit_vectors(n: int, d: int = 384):
    import numpy as np

    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def traced(fn, *args) -> tuple:
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak / 2**20


def anchors(rows: int, reps: int) -> dict:
    from thresher.criteria.nuggets import kmeans_anchor_rows

    x = unit_vectors(rows)
    runs: dict = {"before": [], "after": []}
    picks: dict = {}
    for _ in range(reps):
        for name, fn in (("before", before), ("after", kmeans_anchor_rows)):
            pick, dt, peak = traced(fn, x, 100, 0)
            picks[name] = pick.tolist()
            runs[name].append({"seconds": dt, "heap_peak_mb_above_input": peak})
            print(f"anchors {rows} {name}: {dt:.1f} s, {peak:.0f} MB", flush=True)
    out: dict = {"rows": rows, "dim": 384, "n_anchors": 100, "n_init": 10, "runs": runs,
                 "same_anchors": picks["before"] == picks["after"]}  # fmt: skip
    for key in ("seconds", "heap_peak_mb_above_input"):
        b = [r[key] for r in runs["before"]]
        a = [r[key] for r in runs["after"]]
        med = statistics.median(a) / statistics.median(b)
        out[f"{key}_after_over_before"] = {"min": min(a) / min(b), "median": med}
    return out


def semdedup_kmeans(sizes: list) -> dict:
    from thresher.cluster import kmeans
    from thresher.criteria.diversity import n_clusters_for

    out = {}
    for n in sizes:
        x = unit_vectors(n)
        t = time.perf_counter()
        kmeans(x, n_clusters_for(n, None), seed=0, spherical=True)
        out[str(n)] = {"clusters": n_clusters_for(n, None), "seconds": time.perf_counter() - t}
        print(f"semdedup k-means {n}: {out[str(n)]['seconds']:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--semdedup-rows", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kmeans-scale-cpu.json"))
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, str(ROOT / "python"))
    import torch

    torch.set_num_threads(args.threads)
    result = {
        "benchmark": "kmeans-scale",
        "settings": vars(args) | {"out": None},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "nuggets-anchors": anchors(args.rows, args.reps),
        "semdedup-kmeans": semdedup_kmeans(args.semdedup_rows),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result["nuggets-anchors"][k] for k in result["nuggets-anchors"] if "_over_" in k}, indent=1))


if __name__ == "__main__":
    main()
