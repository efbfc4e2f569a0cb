"""What the driver spends on a JSON array pool under Ray (cutting it between its top-level elements)
against reading it itself (the local engine, or Ray before JSON arrays were cut).

A JSON array of ``--rows`` BIG-bench rows (``[``, one element a line, ``]``; texts with quotes,
backslashes, brackets and non-ASCII characters) is

* ``cut``: planned into splits as the Ray engine does (:func:`thresher.io.splits.plan_splits`: one
  vectorised scan of the bytes, :func:`thresher.io.formats.json_array_cuts`, nothing parsed), and
* ``read``: read into shards by the local reader (:meth:`thresher.io.Source.shards`: parse, normalise,
  hash and assign ids), what the driver did for a JSON array over 64 MiB before,

and the same for the file gzipped (``cut``: the scan, then the stream decompressed a second time
into blocks handed to a ``put`` that keeps nothing), each ``--reps`` times in this process, one
thread. Reported: seconds (min and median), MB/s of the (decompressed) file, the ratio cut/read,
and the load average before and after (another job on the machine slows both). Also checked: the
splits read on their own give the local reader's rows, lines and texts (one pass of
:func:`thresher.io.splits.read_split` over every split).

    python benchmarks/bench_json_cut.py [--rows 200000] [--reps 3] [--out FILE]

Writes benchmarks/results/json-cut-cpu.json.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT))
from benchmarks.bench_csv_cut import check, timed  # noqa: E402

SRC = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"


def make_array(path: Path, rows: int) -> None:
    with gzip.open(SRC, "rt", encoding="utf-8") as fh:
        base = [json.loads(ln) for ln in fh if ln.strip()]
    with open(path, "w", encoding="utf-8") as out:
        out.write("[\n")
        for i in range(rows):
            r = {**base[i % len(base)], "id": f"{base[i % len(base)]['id']}~{i // len(base)}"}
            out.write(("" if i == 0 else ",\n") + json.dumps(r, ensure_ascii=False))
        out.write("\n]\n")


def measure(path: Path, args: argparse.Namespace) -> dict:
    from thresher.io import Source
    from thresher.io.splits import plan_splits

    mb = (path.stat().st_size if not path.name.endswith(".gz") else len(gzip.decompress(path.read_bytes()))) / 2**20
    cut = timed(lambda: list(plan_splits(Source(path), split_rows=args.split_rows, put=len)), args.reps)
    read = timed(lambda: sum(len(s) for s in Source(path, shard_size=args.split_rows).shards()), args.reps)
    for r in (cut, read):
        r["mb_per_s"] = mb / r["min_s"]
    return {
        "file_mb": mb,
        "cut (driver under Ray)": cut,
        "read (driver reads the file)": read,
        "ratio_cut_over_read": {"min": cut["min_s"] / read["min_s"], "median": cut["median_s"] / read["median_s"]},
        "check": check(path, args.split_rows, "json", bytes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--split-rows", type=int, default=4096)
    ap.add_argument("--work", default="/tmp/thresher-bench-json")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "json-cut-cpu.json"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"pool-{args.rows}.json"
    if not path.exists():
        make_array(path, args.rows)
    gz = work / f"pool-{args.rows}.json.gz"
    if not gz.exists():
        gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=6))
    load_before = os.getloadavg()
    result = {
        "benchmark": "json-cut",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": 1},
        "plain": measure(path, args),
        "gzip": measure(gz, args),
    }
    result["loadavg_1_5_15"] = {"before": load_before, "after": os.getloadavg()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: {m: result[k][m] for m in ("file_mb", "ratio_cut_over_read", "check")} for k in ("plain", "gzip")}
    print(json.dumps({**summary, "loadavg_1_5_15": result["loadavg_1_5_15"]}, indent=1))


if __name__ == "__main__":
    main()
