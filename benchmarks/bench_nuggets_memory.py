"""nuggets' memory per pool row: the whole pool's candidates tokenised at once against windows (issue 10).

nuggets is pool-scoped: one call scores the whole pool. Its anchors are chosen once; then every
candidate's one-shot prefix runs through the model. Two contenders on the same scorer, the same rows:

* ``whole-call``: every candidate rendered and tokenised first, then run (``finish(prepare(pool))``,
  the loop of :class:`~thresher.criteria.base.BatchCriterion`, which nuggets used until this change);
* ``windows``: the scorer's call, window by window (``ITEM_BLOCK`` rows), each window's tokens
  dropped once scored.

Peak Python heap during the call (``tracemalloc``, one traced call per contender and size: the peak
does not vary; the token lists are Python objects, the model's tensors are not traced) at two pool
sizes (``--rows``, default 500 and 2,000 of the first BIG-bench rows); the growth between them per row
is what a call holds per pool row. The seconds come from ``--reps`` untraced calls per contender,
interleaved (min and median; tracing slows Python code, and a thread that tokenises beside the model
most). The scores of every call must equal (else exit 1). Model: a tiny random Llama with SmolLM2's
tokenizer (the tokens are SmolLM2's), ``--anchors`` random anchors (default 8), ``--threads`` torch
threads (default 2).

    python benchmarks/bench_nuggets_memory.py [--rows 500 2000] [--anchors 8] [--reps 2] [--out FILE]

Writes benchmarks/results/nuggets-memory-cpu.json.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"
OUT = ROOT / "benchmarks" / "results" / "nuggets-memory-cpu.json"


def first_rows(n: int):
    import pandas as pd

    rows = []
    with gzip.open(SRC, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return pd.DataFrame(rows)


def measure(fn) -> tuple[float, int, object]:
    """(seconds, peak traced bytes above the heap at the start, result) of ``fn()``."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return secs, peak, out


def contenders(scorer) -> dict:
    from thresher.criteria.base import Batch

    return {
        "whole-call": lambda df: scorer.finish(scorer.prepare(Batch.of(df))),
        "windows": lambda df: scorer(df),
    }


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench(args) -> dict:
    import pandas as pd

    from thresher.criteria.nuggets import ITEM_BLOCK
    from thresher.models import tiny_causal_lm
    from thresher.registry import CRITERIA

    lm = tiny_causal_lm(0)
    scorer = CRITERIA.get("nuggets").obj(model=lm, n_anchors=args.anchors, anchor_select="random", seed=0)
    runs: dict = {}
    for n in args.rows:
        df = first_rows(n)
        got: dict = {}
        for name, fn in contenders(scorer).items():  # the heap peak, traced once (it does not vary)
            r = runs.setdefault(name, {}).setdefault(str(n), {"seconds": []})
            _, r["peak_heap_bytes"], got[name] = measure(functools.partial(fn, df))
        pd.testing.assert_frame_equal(got["whole-call"], got["windows"])  # raises: exit 1
        for _ in range(args.reps):  # the seconds, untraced (tracing slows Python code, not the model)
            for name, fn in contenders(scorer).items():
                secs, out = timed(functools.partial(fn, df))
                runs[name][str(n)]["seconds"].append(round(secs, 3))
                pd.testing.assert_frame_equal(out, got[name])
    return {"runs": runs, "window_rows": ITEM_BLOCK}


def summarise(runs: dict, sizes: list) -> dict:
    lo, hi = str(min(sizes)), str(max(sizes))
    out: dict = {}
    for name, per in runs.items():
        peaks = {n: r["peak_heap_bytes"] for n, r in per.items()}
        out[name] = {
            "peak_heap_mb": {n: round(p / 2**20, 2) for n, p in peaks.items()},
            "seconds_min": {n: min(r["seconds"]) for n, r in per.items()},
            "seconds_median": {n: statistics.median(r["seconds"]) for n, r in per.items()},
            "heap_growth_bytes_per_row": round((peaks[hi] - peaks[lo]) / (int(hi) - int(lo)), 1),
        }
    w, a = out["windows"], out["whole-call"]
    out["ratios_windows_over_whole_call"] = {
        "heap_growth_per_row": round(w["heap_growth_bytes_per_row"] / a["heap_growth_bytes_per_row"], 4),
        "seconds_median": {n: round(w["seconds_median"][n] / a["seconds_median"][n], 3) for n in w["seconds_median"]},
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs=2, default=[500, 2000])
    ap.add_argument("--anchors", type=int, default=8)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    got = bench(args)
    res = {
        "benchmark": "nuggets-memory",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads},
        "model": "tiny random Llama (hidden 64, 2 layers), SmolLM2 tokenizer",
        "anchors": args.anchors,
        "rows": args.rows,
        "reps": args.reps,
        **got,
        "summary": summarise(got["runs"], args.rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
