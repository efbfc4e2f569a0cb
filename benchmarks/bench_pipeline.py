"""Memory and throughput of the selection pipeline at 1,000,000 rows.

Builds a 1M-row JSONL.gz pool by replicating ../shared/data/bigbench (100k rows,
ids suffixed with the copy number), then, each in its own process so that peak RSS
is measured per run (``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

* ``thresher_topk_k``: the pipeline with the ``length`` criterion and ``--k 10000``
  (out-of-core: shards streamed through the score cache, ops.TopKAccumulator);
* ``thresher_ratio``: the same with ``--ratio 0.01`` (the selector sees the score
  columns in memory, never the texts);
* ``pandas_baseline``: the naive way, ``pandas.read_json(lines=True)`` of the whole
  pool, the same length, ``nlargest``.

Writes benchmarks/results/pipeline-cpu.json. The machine is shared and noisy
(2 cores, other jobs running): read the ratios, not the absolute times.

    python benchmarks/bench_pipeline.py [--rows 1000000] [--shard-size 20000] [--work /tmp/thresher-bench]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"

CHILD_THRESHER = r"""
import json, resource, sys, time, shutil
sys.path.insert(0, {py!r})
from thresher.pipeline import PipelineConfig, run_pipeline
shutil.rmtree({out!r}, ignore_errors=True)
t = time.perf_counter()
res = run_pipeline(PipelineConfig(data={data!r}, out={out!r}, criteria=["length"], {budget}, shard_size={shard},
                                  report=False, quiet=True))
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": res.n_rows, "selected": int(len(res.selected)), "timings": res.timings,
                  "first": [int(x) for x in res.selected[:5]]}}))
"""

CHILD_PANDAS = r"""
import json, resource, sys, time, re
import numpy as np, pandas as pd
t = time.perf_counter()
df = pd.read_json({data!r}, lines=True, compression="gzip")
tok = re.compile(r"\w+|[^\w\s]")
n = np.fromiter((len(tok.findall(a)) + len(tok.findall(b)) for a, b in zip(df["instruction"], df["output"])),
                dtype=np.float64, count=len(df))
top = pd.Series(n).nlargest({k}, keep="first").index.to_numpy()
df.iloc[np.sort(top)].to_json({out!r}, orient="records", lines=True, force_ascii=False)
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": len(df), "selected": len(top)}}))
"""


def make_pool(path: Path, rows: int) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(SRC, "rt", encoding="utf-8", newline="") as fh:
        base = [ln for ln in fh.read().split("\n") if ln]
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as out:
        n = 0
        copy = 0
        while n < rows:
            for line in base:
                if n == rows:
                    break
                rec = json.loads(line)
                rec["id"] = f"{rec['id']}~{copy}"
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
            copy += 1
    os.replace(tmp, path)


def child(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def same_selection(work: Path) -> bool:
    """thresher's subset (input order) and the pandas baseline's hold the same ids in the same order."""
    with gzip.open(work / "out-k" / "selected.jsonl.gz", "rt", encoding="utf-8") as fh:
        a = [json.loads(ln)["id"] for ln in fh]
    with open(work / "pandas-selected.jsonl", encoding="utf-8") as fh:
        b = [json.loads(ln)["id"] for ln in fh]
    return a == b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shard-size", type=int, default=20000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/thresher-bench"))
    ap.add_argument("--skip", default="", help="comma-separated runs to skip")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline-cpu.json")
    a = ap.parse_args()
    pool = a.work / f"pool-{a.rows}.jsonl.gz"
    t = time.perf_counter()
    make_pool(pool, a.rows)
    print(f"pool {pool} ({pool.stat().st_size / 1e6:.0f} MB gz) ready in {time.perf_counter() - t:.0f} s", flush=True)
    k = max(1, a.rows // 100)
    results = {}
    skip = set(a.skip.split(","))
    runs = {
        "thresher_topk_k": CHILD_THRESHER.format(
            py=str(ROOT / "python"), out=str(a.work / "out-k"), data=str(pool), budget=f"k={k}", shard=a.shard_size
        ),
        "thresher_ratio": CHILD_THRESHER.format(
            py=str(ROOT / "python"), out=str(a.work / "out-r"), data=str(pool), budget="ratio=0.01", shard=a.shard_size
        ),
        "pandas_baseline": CHILD_PANDAS.format(data=str(pool), k=k, out=str(a.work / "pandas-selected.jsonl")),
    }
    for name, code in runs.items():
        if name in skip:
            continue
        results[name] = child(code)
        print(name, json.dumps(results[name]), flush=True)
    out = {
        "benchmark": "pipeline",
        "rows": a.rows,
        "k": k,
        "shard_size": a.shard_size,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "note": "shared 2-core machine, other jobs running: noisy",
        },
        "results": results,
    }
    if "thresher_topk_k" in results and "pandas_baseline" in results:
        out["peak_rss_ratio_thresher_over_pandas"] = round(
            results["thresher_topk_k"]["peak_rss_mb"] / results["pandas_baseline"]["peak_rss_mb"], 3
        )
        out["time_ratio_thresher_over_pandas"] = round(
            results["thresher_topk_k"]["seconds"] / results["pandas_baseline"]["seconds"], 3
        )
        out["same_selection_as_pandas"] = same_selection(a.work)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
