"""What checkpoints inside a shard cost: IFD (SmolLM2-135M-Instruct, CPU, fp32) on one shard of BIG-bench rows.

Contenders, in one process with the model loaded once, interleaved ``--reps`` times, the same torch
thread count (``--threads``) for all:

* ``windows_2048``: before this change: one call, in the windows of 2,048 rows a CPU scorer had then;
* ``windows_512``: one call in windows of 512 rows (a larger CPU window than the one chosen);
* ``one_call``: ``--checkpoint-every 0``: one call in the CPU windows of 256 rows, no checkpoint;
* ``default``: the default interval (60 s): chunks of whole windows (the scorer's ``chunk_rows``: 256
  rows on a CPU) sized from the measured speed, a checkpoint saved whenever the next chunk would end
  past the interval;
* ``every_10s``: a short interval (with windows of a minute: the same cuts as ``default``), if asked.

Each repetition scores the shard into a new empty cache through
:func:`thresher.pipeline.checkpoint.score_checkpointed` (what the pipeline and the Ray workers call),
with a fresh speed estimate, as a new process would. The JSON gives every time, min and median, the
ratio to ``one_call``, the chunks and checkpoints of each contender, and the largest difference of
a score from ``one_call``'s (chunks are cut at the scorer's windows: it must be 0).

    PYTHONPATH=python python benchmarks/bench_checkpoint.py [--rows 768] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT))

from benchmarks.bench_throughput import DATA, load_rows  # noqa: E402

CONTENDERS = {  # name -> (window rows: None for the scorer's own, checkpoint interval)
    "windows_2048": (2048, 0.0),
    "windows_512": (512, 0.0),
    "one_call": (None, 0.0),
    "default": (None, 60.0),
    "every_10s": (None, 10.0),
}


def _scorer():
    from thresher.registry import CRITERIA

    entry = CRITERIA.get("ifd")
    return entry.obj(**entry.resolve_options({"device": "cpu", "dtype": "float32"}))


def _once(scorer, table, rk, every_s: float) -> tuple[float, dict, np.ndarray]:
    from thresher.cache import ScoreCache
    from thresher.pipeline import checkpoint as ck
    from thresher.pipeline.scoring_checks import check_scores

    calls, saves = [], []
    real_save = ck.save_partial

    def call(t):
        calls.append(len(t))
        return check_scores(scorer(t), t, "ifd")

    def save(*a, **k):
        saves.append(time.perf_counter())
        return real_save(*a, **k)

    ck.save_partial = save
    try:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            unit = ck.chunk_unit(scorer)
            out = ck.score_checkpointed(
                ScoreCache(d), "ifd", "k", table, rk, call, every_s=every_s, speeds=ck.Speeds(), unit=unit
            )
            secs = time.perf_counter() - t
    finally:
        ck.save_partial = real_save
    return secs, {"chunks": calls, "checkpoints": len(saves)}, out["ifd"].to_numpy(np.float64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=768)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contenders", default="windows_2048,windows_512,one_call,default", help=",".join(CONTENDERS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "checkpoint-cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import pandas as pd

    from thresher.cache import row_keys
    from thresher.io import Source

    table = Source(pd.DataFrame(load_rows(DATA, args.rows)), shard_size=args.rows).read_all()
    ids = table["id"].astype(str).tolist()
    rk = row_keys(ids, ids)  # the rows' identities within this benchmark (the pipeline adds content hashes)
    scorer = _scorer()
    scorer(table.iloc[:4].reset_index(drop=True))  # load and warm the model before any clock
    shape, scores = {}, {}
    window = scorer.window_rows
    names = args.contenders.split(",")
    times: dict = {c: [] for c in names}
    for _ in range(args.reps):
        for name in names:
            rows, every = CONTENDERS[name]
            scorer.window_rows = rows or window
            secs, info, s = _once(scorer, table, rk, every)
            times[name].append(round(secs, 3))
            shape[name], scores[name] = info, s
            print(name, round(secs, 1), info, flush=True)
    base = statistics.median(times["one_call"])
    res = {
        c: {"seconds": {"all": v, "min": min(v), "median": statistics.median(v)},
            "ratio_to_one_call_median": round(statistics.median(v) / base, 4), **shape[c],
            "max_abs_diff_from_one_call": float(np.nanmax(np.abs(scores[c] - scores["one_call"])))}
        for c, v in times.items()
    }  # fmt: skip
    doc = {
        "benchmark": "checkpoints inside a shard (thresher.pipeline.checkpoint)",
        "criterion": "ifd", "model": "SmolLM2-135M-Instruct (default), cpu, float32",
        "data": f"first {args.rows} rows of {DATA.name}, one shard", "reps": args.reps,
        "window_rows": window,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "results": res,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
