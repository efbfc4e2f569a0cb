"""What the driver spends on a CSV pool under Ray (cutting it between records) against reading it
itself (the local engine, or Ray before CSV files were cut), issue 10.

A CSV file of ``--rows`` BIG-bench rows (``id``, ``instruction``, ``output``; many texts hold line
breaks, quotes and commas, so records span lines) is

* ``cut``: planned into splits as the Ray engine does (:func:`thresher.io.splits.plan_splits`: Python's
  csv reader run over the lines to find record starts, nothing else parsed), and
* ``read``: read into shards by the local reader (:meth:`thresher.io.Source.shards`: parse, normalise,
  hash and assign ids), what the driver did for a CSV file over 64 MiB before,

each ``--reps`` times in this process, one thread. Reported: seconds (min and median), MB/s of the
file, and the ratio cut/read. Also checked: the splits read on their own give the local reader's
rows and lines (one pass of :func:`thresher.io.splits.read_split` over every split).

    python benchmarks/bench_csv_cut.py [--rows 200000] [--reps 3] [--out FILE]

Writes benchmarks/results/csv-cut-cpu.json.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
SRC = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"


def make_csv(path: Path, rows: int) -> None:
    with gzip.open(SRC, "rt", encoding="utf-8") as fh:
        base = [json.loads(ln) for ln in fh if ln.strip()]
    with open(path, "w", encoding="utf-8", newline="") as out:
        w = csv.writer(out)  # the csv module's defaults: \r\n line ends, fields with \r or \n quoted
        w.writerow(["id", "instruction", "output"])
        for i in range(rows):
            r = base[i % len(base)]
            w.writerow([f"{r['id']}~{i // len(base)}", r["instruction"], r["output"]])


def timed(fn, reps: int) -> dict:
    secs = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - t)
    return {"min_s": min(secs), "median_s": statistics.median(secs), "runs_s": secs}


def check(path: Path, split_rows: int, fmt: str = "csv", put: Any = None) -> dict:
    """The splits, read one by one, against the local reader: rows, lines and texts (a ``bytes`` split
    numbers its lines from 1, offset here by the earlier splits' lines; other kinds number the file's)."""
    from thresher.io import Source
    from thresher.io.splits import ReadSpec, plan_splits, read_split

    src = Source(path, shard_size=10**7)
    want = [(int(ln), t) for sh in src.shards() for ln, t in zip(sh.lines, sh.table["instruction"])]
    spec = ReadSpec(fmt, Source(path).first_schema(), "error")
    got, off, splits = [], 0, list(plan_splits(Source(path), split_rows=split_rows, put=put))
    for sp in splits:
        res, table = read_split(spec, sp)
        assert res.error is None, res.error
        shift = off if sp.kind == "bytes" else 0
        got += [(ln + shift, t) for ln, t in zip(res.lines, table["instruction"])]
        off += res.lines_read
    return {"splits": len(splits), "kinds": sorted({s.kind for s in splits}), "rows": len(want),
            "same_rows_and_lines": got == want}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--split-rows", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/thresher-bench-csv")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "csv-cut-cpu.json"))
    args = ap.parse_args()
    from thresher.io import Source
    from thresher.io.splits import plan_splits

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"pool-{args.rows}.csv"
    if not path.exists():
        make_csv(path, args.rows)
    mb = path.stat().st_size / 2**20
    cut = timed(lambda: list(plan_splits(Source(path), split_rows=args.split_rows)), args.reps)
    read = timed(lambda: sum(len(s) for s in Source(path, shard_size=args.split_rows).shards()), args.reps)
    for r in (cut, read):
        r["mb_per_s"] = mb / r["min_s"]
    result = {
        "benchmark": "csv-cut",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "file_mb": mb,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": 1},
        "cut (driver under Ray)": cut,
        "read (driver reads the file)": read,
        "ratio_cut_over_read": {"min": cut["min_s"] / read["min_s"], "median": cut["median_s"] / read["median_s"]},
        "check": check(path, args.split_rows),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("file_mb", "ratio_cut_over_read", "check")}, indent=1))


if __name__ == "__main__":
    main()
