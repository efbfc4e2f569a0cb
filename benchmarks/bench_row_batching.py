"""What layout-independent model scores cost: IFD with ``batching="row"`` (one row per forward) against the
default length buckets (with and without the shared-prefix pass), and all-MiniLM-L6-v2 embeddings one text
per call against batches of 64 (what ``batching="row"`` does to the kNN and target criteria), on the CPU,
side by side in one process.

Every contender scores the same BIG-bench rows with SmolLM2-135M-Instruct (the default model), fp32,
``torch.set_num_threads(--threads)``; the contenders' repetitions are interleaved (A B C A B C ...) so that
a noisy neighbour slows them alike; each records min and median seconds, and the ratios use the minima
and medians. The layout check scores the rows once whole and once as ``--pieces`` consecutive pieces (what
shards of that size see) and counts the rows whose IFD, conditional or direct loss differ by even one
bit between the two: 0 for ``row`` by construction; the buckets' differences are float32 rounding, and
their largest relative size is recorded.

The embeddings part does the same with the texts (instruction + output) of ``--embed-n`` rows.

    PYTHONPATH=python python benchmarks/bench_row_batching.py --n 160 --reps 3 --embed-n 1000
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


def embed_part(texts: list, reps: int, pieces: int) -> dict:
    """Seconds (min, median) of embedding ``texts`` in batches of 64 and one per call, interleaved, and the
    rows whose vector differs between one call over all texts and ``pieces`` calls over parts."""
    from thresher.embed import embed_texts

    embed_texts(texts[:8])  # load the model
    secs: dict = {"batch-64": [], "row": []}
    for _ in range(reps):
        for k, bs in (("batch-64", 64), ("row", 1)):
            t = time.perf_counter()
            embed_texts(texts, batch_size=bs)
            secs[k].append(time.perf_counter() - t)
    cuts = np.linspace(0, len(texts), pieces + 1).astype(int)
    out: dict = {"texts": len(texts)}
    for k, bs in (("batch-64", 64), ("row", 1)):
        whole = embed_texts(texts, batch_size=bs)
        parts = np.concatenate([embed_texts(texts[a:b], batch_size=bs) for a, b in zip(cuts[:-1], cuts[1:])])
        out[k] = {"min_s": min(secs[k]), "median_s": statistics.median(secs[k]), "runs_s": secs[k],
                  "rows_differ": int((whole != parts).any(axis=1).sum())}  # fmt: skip
    out["ratio_row_to_batch"] = {q: out["row"][q] / out["batch-64"][q] for q in ("min_s", "median_s")}
    return out


def ifd_part(a: argparse.Namespace) -> dict:
    """IFD's seconds per contender (interleaved), ratios to the buckets, and the layout check."""
    from thresher.models.loader import load_causal_lm

    lm = load_causal_lm("default", device="cpu")
    df = load_rows(Path(a.data), a.n, a.every, a.max_chars)
    score(lm, df.head(8), CONTENDERS["bucket"])  # warm-up
    times = timed(lm, df, list(CONTENDERS), a.reps)
    base = times["bucket"]
    ratios = {k: {q: v[q] / base[q] for q in ("min_s", "median_s")} for k, v in times.items()}
    layouts = {k: layout_check(lm, df, CONTENDERS[k], a.pieces) for k in CONTENDERS}
    return {"rows": len(df), "seconds": times, "ratio_to_bucket": ratios, "layout_check": layouts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--every", type=int, default=97, help="take every N-th pool row")
    ap.add_argument("--max-chars", type=int, default=1200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pieces", type=int, default=6, help="layout check: the rows scored in this many calls")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--embed-n", type=int, default=1000, help="rows whose texts are embedded")
    ap.add_argument("--parts", default="ifd,embeddings", help="parts run; the others' results in --out are kept")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "row-batching-cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    parts = set(a.parts.split(","))
    out = Path(a.out)
    result = json.loads(out.read_text()) if out.is_file() else {"benchmark": "row-batching"}
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": a.threads}
    if "ifd" in parts:
        s = {k: v for k, v in vars(a).items() if k not in ("out", "parts", "embed_n")}
        result.update(ifd_part(a), settings={**s, "model": "SmolLM2-135M-Instruct fp32"})
    if "embeddings" in parts:
        rows = load_rows(Path(a.data), a.embed_n, 1, a.max_chars)
        texts = [f"{r.instruction}\n{r.output}" for r in rows.itertuples()]
        result["embeddings"] = {**embed_part(texts, a.reps, a.pieces), "model": "all-MiniLM-L6-v2", "reps": a.reps}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result.get(k) for k in ("ratio_to_bucket",)}, indent=1))
    if "embeddings" in result:
        e = result["embeddings"]
        print(
            json.dumps(
                {
                    "embeddings": e["ratio_row_to_batch"],
                    "rows_differ": {k: e[k]["rows_differ"] for k in ("batch-64", "row")},
                }
            )
        )


if __name__ == "__main__":
    main()
