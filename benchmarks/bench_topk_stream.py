"""The running top-k of a streaming selection (``ops.TopKAccumulator``) when k is a large part of the pool.

A streaming ``topk`` / ``threshold`` / aggregate pass feeds the accumulator one shard at a time. A threshold
with no budget (every row that passes), or a cascade's first stage (MoDS: every row above the quality
threshold), asks for k as large as the pool. Contenders on the same scores (``--rows`` standard normal
float64 values, NaN every 97th, ``--shard``-row shards, one thread for all):

* ``bulk``: the accumulator as it is: each shard's best rows wait until more than k of them wait, then one
  sort keeps the best k;
* ``per-shard``: the accumulator before (reproduced here): each shard's best rows merged into the kept ones
  with a sort of k + shard, every shard;
* ``one-sort``: the in-memory floor, one stable sort of the whole column.

Every contender's selection is checked equal to ``one-sort``'s. Reports min and median over ``--reps``,
and the ratios to ``one-sort``.

    python benchmarks/bench_topk_stream.py [--rows 1000000] [--shard 4096] [--reps 3]

Writes benchmarks/results/topk-stream-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from thresher.ops import TopKAccumulator, topk  # noqa: E402
from thresher.ops.topk import order_indices  # noqa: E402


def bulk(v: np.ndarray, k: int, shard: int) -> np.ndarray:
    acc = TopKAccumulator(k, True, backend="cpu")
    for off in range(0, len(v), shard):
        acc.update(torch.from_numpy(v[off : off + shard]), off)
    return acc.result()[1].numpy()


def per_shard(v: np.ndarray, k: int, shard: int) -> np.ndarray:
    """The accumulator before: every shard's best rows merged into the kept ones by a sort of k + shard."""
    best_v = best_i = None
    for off in range(0, len(v), shard):
        sv, si = topk(torch.from_numpy(v[off : off + shard]), k, True, backend="cpu")
        si = si + off
        if best_v is None:
            best_v, best_i = sv, si
            continue
        vals, index = torch.cat([best_v, sv]), torch.cat([best_i, si])
        order = order_indices(vals, True, index)[:k]
        best_v, best_i = vals[order], index[order]
    return best_i.numpy()


def one_sort(v: np.ndarray, k: int, shard: int) -> np.ndarray:
    ok = np.flatnonzero(~np.isnan(v))
    order = ok[np.lexsort((ok, -v[ok]))]
    nan = np.flatnonzero(np.isnan(v))
    return np.concatenate([order, nan])[:k]


CONTENDERS = {"bulk": bulk, "per-shard": per_shard, "one-sort": one_sort}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shard", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ks", default="1000,50000,250000,1000000")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "topk-stream-cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    v = np.random.default_rng(0).standard_normal(args.rows)
    v[::97] = np.nan
    result: dict = {"benchmark": "topk-stream", "settings": vars(args) | {"threads": 1},
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "k": {}}  # fmt: skip
    for k in [int(x) for x in args.ks.split(",")]:
        want = one_sort(v, k, args.shard)
        row: dict = {}
        for name, fn in CONTENDERS.items():
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                got = fn(v, k, args.shard)
                times.append(time.perf_counter() - t)
                if not np.array_equal(got, want):
                    raise AssertionError(f"{name} k={k}: not the one sort's selection")
            row[name] = {"min_s": min(times), "median_s": statistics.median(times)}
        for name in ("bulk", "per-shard"):
            row[f"{name}_over_one_sort_median"] = row[name]["median_s"] / row["one-sort"]["median_s"]
        row["per_shard_over_bulk_median"] = row["per-shard"]["median_s"] / row["bulk"]["median_s"]
        result["k"][str(k)] = row
        print(k, {n: round(row[n]["median_s"], 3) for n in CONTENDERS}, flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
