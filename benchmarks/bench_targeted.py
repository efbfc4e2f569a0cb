"""Targeted selection on BIG-bench: precision@k of target_similarity, dsir and target_classifier.

Targets: ``--family`` sibling subtasks (default three of ``elementary_math_qa/*``, which share
their questions and differ in the hint given) plus ``--others`` tasks drawn with ``--seed``
among tasks of other families with enough short rows. For each target task, ``--n-target``
(16) rows form its target group; the pool holds the task's other rows (up to ``--per-task``),
every other subtask of the sibling family (distractors that share the inputs) and random
rows of other tasks up to ``--pool`` rows. Rows longer than ``--max-chars`` are left out
(CPU time). Every method scores the pool once against the grouped target file (one column
per group); for task T the top k rows (k = T's count in the pool) are compared with the
truth: precision@k per task and the mean, against random (k / pool).

Methods: ``target_similarity`` (aggregate mean / max) with all-MiniLM-L6-v2 and, when the
estimated time fits ``--lm-cap-s``, with SmolLM2-135M hidden states (``lm:default``,
position-weighted mean pooling, RDS+); ``dsir`` (ranked by weight; and DSIR's Gumbel-top-k
resampling, mean over 5 seeds); ``target_classifier`` on n-grams, embeddings, both and hidden
states, with the other targets as extra negatives (``contrast_groups``, the default) and
without. Embeddings are cached in one folder, so each embedder embeds the pool once.
Writes benchmarks/results/targeted-precision.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

FAMILY = ",".join(
    f"elementary_math_qa/{t}" for t in ("question_only", "question_with_mathematical_hint", "language_hint_only")
)


def build(args: argparse.Namespace) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    from thresher.io import read_samples

    df = read_samples(args.data)
    text_len = df["instruction"].str.len() + df["input"].fillna("").str.len() + df["output"].str.len()
    df = df[(text_len <= args.max_chars) & (df["output"].str.len() > 0)]
    family = [t for t in args.family.split(",") if t]
    prefix = {t.split("/")[0] for t in family}
    counts = df["group"].value_counts()
    fams = df["group"].str.split("/").str[0]
    eligible = sorted(
        t for t in counts[counts >= args.n_target + args.min_in_pool].index if t.split("/")[0] not in prefix
    )
    rng = np.random.default_rng(args.seed)
    others: list[str] = []
    for t in rng.permutation(eligible):  # at most one task per family among the others
        if t.split("/")[0] not in {o.split("/")[0] for o in others}:
            others.append(str(t))
        if len(others) == args.others:
            break
    tasks = family + sorted(others)
    targets, inpool = [], []
    for t in tasks:
        rows = df[df["group"] == t].sample(frac=1.0, random_state=args.seed)
        targets.append(rows.iloc[: args.n_target])
        inpool.append(rows.iloc[args.n_target : args.n_target + args.per_task])
    siblings = df[fams.isin(prefix) & ~df["group"].isin(tasks)]
    sib = siblings.groupby("group", group_keys=False).apply(lambda g: g.head(args.per_task))
    used = sum(len(p) for p in inpool) + len(sib)
    rest = df[~fams.isin(prefix) & ~df["group"].isin(tasks)].sample(n=args.pool - used, random_state=args.seed)
    pool = pd.concat(inpool + [sib, rest]).sample(frac=1.0, random_state=args.seed + 1).reset_index(drop=True)
    return tasks, pool, pd.concat(targets).reset_index(drop=True)


def precision_at_k(scores: np.ndarray, truth: np.ndarray) -> float:
    k = int(truth.sum())
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))
    return float(truth[order[:k]].mean())


def per_task(out: pd.DataFrame, name: str, tasks: list[str], truth: dict) -> dict:
    from thresher.criteria.target import group_columns

    names = sorted(tasks)
    cols = dict(zip(names, group_columns(names)))
    return {t: precision_at_k(out[f"{name}.{cols[t]}"].to_numpy(np.float64), truth[t]) for t in tasks}


def gumbel_per_task(out: pd.DataFrame, tasks: list[str], truth: dict, seeds: int) -> dict:
    from thresher.criteria.target import group_columns
    from thresher.registry import SELECTORS

    sel = SELECTORS.get("gumbel_topk").obj
    cols = dict(zip(sorted(tasks), group_columns(sorted(tasks))))
    res = {}
    for t in tasks:
        k = int(truth[t].sum())
        col = f"dsir.{cols[t]}"
        vals = [truth[t][sel(out[[col]], k, seed=s, criterion=col, direction="max")].mean() for s in range(seeds)]
        res[t] = float(np.mean(vals))
    return res


def run_method(name: str, opts: dict, target: Path, pool: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    from thresher.registry import CRITERIA

    t0 = time.perf_counter()
    out = CRITERIA.get(name).obj(target=str(target), **opts)(pool)
    return out, time.perf_counter() - t0


def lm_estimate(pool: pd.DataFrame, n: int, cache: str) -> float:
    """Seconds to embed the pool and targets with lm:default, from a timed sample of ``n`` rows."""
    from thresher.embed import embed_texts, sample_texts
    from thresher.embed.hidden import hidden_encoder

    enc = hidden_encoder("default")
    texts = sample_texts(pool.sample(n=n, random_state=0))
    t0 = time.perf_counter()
    embed_texts(texts, enc, batch_size=16, cache_dir=cache)
    return (time.perf_counter() - t0) / n


def methods(args: argparse.Namespace, cache: str, with_lm: bool) -> list[tuple[str, str, dict]]:
    st = {"embedder": "default", "cache_dir": cache}
    lm = {"embedder": "lm:default", "cache_dir": cache, "batch_size": 16}
    out = [
        ("dsir", "dsir", {}),
        ("dsir/length", "dsir", {"normalize": "length"}),
        ("target_classifier/ngrams", "target_classifier", {"features": "ngrams"}),
        ("target_classifier/ngrams/no_contrast", "target_classifier", {"features": "ngrams", "contrast_groups": False}),
        ("target_similarity/minilm/mean", "target_similarity", {**st, "aggregate": "mean"}),
        ("target_similarity/minilm/max", "target_similarity", {**st, "aggregate": "max"}),
        ("target_classifier/minilm", "target_classifier", {**st, "features": "embedding"}),
        ("target_classifier/minilm+ngrams", "target_classifier", {**st, "features": "both"}),
    ]
    if with_lm:
        out += [
            ("target_similarity/lm/mean", "target_similarity", {**lm, "aggregate": "mean"}),
            ("target_similarity/lm/max", "target_similarity", {**lm, "aggregate": "max"}),
            ("target_classifier/lm", "target_classifier", {**lm, "features": "embedding"}),
        ]
    return out


def settings(args: argparse.Namespace, tasks: list[str], pool: pd.DataFrame, truth: dict) -> dict:
    import sentence_transformers
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "data": str(args.data),
        "seed": args.seed,
        "tasks": tasks,
        "sibling_family": args.family.split(","),
        "k_per_task": {t: int(truth[t].sum()) for t in tasks},
        "pool_rows": len(pool),
        "n_target": args.n_target,
        "per_task_in_pool_max": args.per_task,
        "max_chars": args.max_chars,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_avg_before": os.getloadavg(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "git_commit": commit,
        },
        "criterion_defaults": "dsir: 10,000 buckets, add-one; target_classifier: 1,000 negatives (seed 0), l2=1e-3",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/bigbench/bigbench-pool-100k.jsonl.gz")
    ap.add_argument("--family", default=FAMILY, help="comma-separated sibling subtasks used as targets")
    ap.add_argument("--others", type=int, default=7, help="target tasks from other families")
    ap.add_argument("--n-target", type=int, default=16)
    ap.add_argument("--per-task", type=int, default=200, help="rows of each target task (and sibling) in the pool")
    ap.add_argument("--min-in-pool", type=int, default=100)
    ap.add_argument("--pool", type=int, default=6000)
    ap.add_argument("--max-chars", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gumbel-seeds", type=int, default=5)
    ap.add_argument("--lm-cap-s", type=float, default=900.0, help="skip lm:default if its estimated time exceeds this")
    ap.add_argument("--lm-sample", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/targeted-precision.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    tasks, pool, target_df = build(args)
    truth = {t: (pool["group"] == t).to_numpy() for t in tasks}
    res: dict = {"settings": settings(args, tasks, pool, truth), "methods": {}, "seconds": {}}
    print(f"{len(tasks)} tasks, pool {len(pool)} rows, targets {len(target_df)}", flush=True)
    cache = tempfile.mkdtemp(prefix="bench-targeted-emb-")
    target = Path(cache) / "targets.jsonl"
    target_df[["id", "instruction", "input", "output", "group"]].to_json(target, orient="records", lines=True)
    per_row = lm_estimate(pool, args.lm_sample, cache)
    est = per_row * (len(pool) + len(target_df))
    res["settings"]["lm_default_estimated_s"] = round(est, 1)
    with_lm = est <= args.lm_cap_s
    if not with_lm:
        res["settings"]["lm_default_skipped"] = f"estimated {est:.0f}s > cap {args.lm_cap_s:.0f}s"
    print(f"lm:default estimate {est:.0f}s ({'run' if with_lm else 'skipped'})", flush=True)
    res["methods"]["random"] = {t: float(truth[t].mean()) for t in tasks}
    for label, name, opts in methods(args, cache, with_lm):
        out, secs = run_method(name, opts, target, pool)
        res["methods"][label] = per_task(out, name, tasks, truth)
        res["seconds"][label] = round(secs, 1)
        if label == "dsir":
            res["methods"]["dsir/gumbel"] = gumbel_per_task(out, tasks, truth, args.gumbel_seeds)
        print(f"{label}: mean {np.mean(list(res['methods'][label].values())):.3f} ({secs:.0f}s)", flush=True)
    res["mean_precision_at_k"] = {m: round(float(np.mean(list(v.values()))), 4) for m, v in res["methods"].items()}
    fam = args.family.split(",")
    res["sibling_family_mean"] = {m: round(float(np.mean([v[t] for t in fam])), 4) for m, v in res["methods"].items()}
    res["settings"]["load_avg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    for m, v in res["mean_precision_at_k"].items():
        print(f"{m:40s} mean {v:.3f}  siblings {res['sibling_family_mean'][m]:.3f}")


if __name__ == "__main__":
    main()
