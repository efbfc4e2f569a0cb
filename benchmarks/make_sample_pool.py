"""Regenerate thresher's bundled sample pool (python/thresher/data/bigbench-sample.jsonl.gz).

Draws N examples (default 3000) with a fixed seed from the BIG-bench pool
(../shared/data/bigbench/bigbench-pool-100k.jsonl.gz), among the rows whose
instruction is at most MAX_CHARS characters (so that the demo runs on a laptop
CPU), and writes them in the pool's order, gzipped with mtime 0 so that the file
is byte-identical for the same inputs. BIG-bench: Apache-2.0, the BIG-bench
authors (Srivastava et al., TMLR 2023); see python/thresher/data/ATTRIBUTION.md.

    python benchmarks/make_sample_pool.py [--n 3000] [--seed 20231126] [--max-chars 1200]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"
DEFAULT_OUT = ROOT / "python" / "thresher" / "data" / "bigbench-sample.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=20231126)
    ap.add_argument("--max-chars", type=int, default=1200)
    a = ap.parse_args()
    lines = []
    with gzip.open(a.src, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if len(rec["instruction"]) <= a.max_chars and rec["output"].strip():
                lines.append(line.rstrip("\n"))
    rng = np.random.default_rng(a.seed)
    idx = np.sort(rng.choice(len(lines), size=min(a.n, len(lines)), replace=False))
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for i in idx:
            gz.write((lines[i] + "\n").encode("utf-8"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_bytes(buf.getvalue())
    tasks = {json.loads(lines[i])["task"].split("/")[0] for i in idx}
    print(f"wrote {a.out}: {len(idx)} rows of {len(lines)} eligible, {len(tasks)} tasks, {len(buf.getvalue())} bytes")


if __name__ == "__main__":
    main()
