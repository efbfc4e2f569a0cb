"""What layout-independent LM scores cost: IFD with ``batching="row"`` (one row per forward) against the
default length buckets (with and without the shared-prefix pass), on the CPU, side by side in one process.

Every contender scores the same BIG-bench rows with SmolLM2-135M-Instruct (the default model), fp32,
``torch.set_num_threads(--threads)``; the contenders' repetitions are interleaved (A B C A B C ...) so that
a noisy neighbour slows them alike; each records min and median seconds, and the ratios use the minima
and medians. The layout check scores the rows once whole and once as ``--pieces`` consecutive pieces (what
shards of that size see) and counts the rows whose IFD, conditional or direct loss differ by even one
bit between the two: 0 for ``row`` by construction; the buckets' differences are float32 rounding, and
their largest relative size is recorded.

    PYTHONPATH=python python benchmarks/bench_row_batching.py --n 240 --reps 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
DATA = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"
CONTENDERS = {
    "bucket": {"batching": "bucket", "share_prefix": True},  # the default
    "bucket-no-shared-prefix": {"batching": "bucket", "share_prefix": False},
    "row": {"batching": "row"},
}
COLUMNS = ("ifd", "ifd.loss_cond", "ifd.loss_direct")


def load_rows(path: Path, n: int, every: int, max_chars: int) -> pd.DataFrame:
    """Every ``every``-th row of the pool (a spread of tasks) whose instruction + output fit in ``max_chars``."""
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i % every:
                continue
            r = json.loads(line)
            if len(r["instruction"]) + len(r["output"]) <= max_chars:
                rows.append({"id": r["id"], "instruction": r["instruction"], "input": "", "output": r["output"]})
                if len(rows) == n:
                    break
    return pd.DataFrame(rows)


def score(lm, df: pd.DataFrame, opts: dict) -> pd.DataFrame:
    from thresher.registry import CRITERIA

    return CRITERIA.get("ifd").obj(model=lm, max_length=512, **opts)(df)


def timed(lm, df: pd.DataFrame, names: list, reps: int) -> dict:
    secs: dict = {k: [] for k in names}
    for _ in range(reps):
        for k in names:
            t = time.perf_counter()
            score(lm, df, CONTENDERS[k])
            secs[k].append(time.perf_counter() - t)
    return {k: {"min_s": min(v), "median_s": statistics.median(v), "runs_s": v} for k, v in secs.items()}


def layout_check(lm, df: pd.DataFrame, opts: dict, pieces: int) -> dict:
    """Rows whose scores differ (bitwise) between one call over all rows and ``pieces`` calls over parts."""
    whole = score(lm, df, opts)
    cuts = np.linspace(0, len(df), pieces + 1).astype(int)
    parts = pd.concat([score(lm, df.iloc[a:b], opts) for a, b in zip(cuts[:-1], cuts[1:])], ignore_index=True)
    out: dict = {}
    for c in COLUMNS:
        a, b = whole[c].to_numpy(), parts[c].to_numpy()
        both = ~(np.isnan(a) | np.isnan(b))
        diff = both & (a != b)
        out[c] = {
            "rows_differ": int(diff.sum()) + int((np.isnan(a) != np.isnan(b)).sum()),
            "max_rel_diff": float(np.max(np.abs(a[diff] - b[diff]) / np.abs(b[diff]))) if diff.any() else 0.0,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--every", type=int, default=97, help="take every N-th pool row")
    ap.add_argument("--max-chars", type=int, default=1200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pieces", type=int, default=6, help="layout check: the rows scored in this many calls")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "row-batching-cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from thresher.models.loader import load_causal_lm

    lm = load_causal_lm("default", device="cpu")
    df = load_rows(Path(a.data), a.n, a.every, a.max_chars)
    score(lm, df.head(8), CONTENDERS["bucket"])  # warm-up
    times = timed(lm, df, list(CONTENDERS), a.reps)
    base = times["bucket"]
    ratios = {k: {q: v[q] / base[q] for q in ("min_s", "median_s")} for k, v in times.items()}
    layouts = {k: layout_check(lm, df, CONTENDERS[k], a.pieces) for k in CONTENDERS}
    result = {
        "benchmark": "row-batching",
        "settings": {**{k: v for k, v in vars(a).items() if k != "out"}, "model": "SmolLM2-135M-Instruct fp32"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "rows": len(df),
        "seconds": times,
        "ratio_to_bucket": ratios,
        "layout_check": layouts,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"ratio_to_bucket": ratios, "layout_rows_differ": {
        k: {c: v[c]["rows_differ"] for c in COLUMNS} for k, v in layouts.items()}}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
