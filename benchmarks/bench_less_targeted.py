"""Targeted-selection quality on BIG-bench: does `less` rank the target task's examples first?

For each of ``--tasks`` target tasks (chosen with a seed among tasks with enough examples),
16 of the task's examples form the target set; the pool holds ``--per-task`` other
examples of each target task plus random rows of other tasks (``--pool`` rows in all).
Every pool row is scored against every target set; for task T the top-k rows (k = T's
count in the pool) are compared with the truth. Reported per task and on average:
precision@k of

* ``less``: the thresher LESS pipeline - warm-up LoRA on a random fraction of the pool
  (``--warmup-fraction``, ``--epochs``), Adam-transformed projected LoRA gradients of the
  pool at every checkpoint, plain gradients of the targets, checkpoint-weighted cosine
  against the target-set mean (:func:`thresher.criteria.less.less_scores`), and the same
  with plain (untransformed) pool gradients (``less_plain``);
* ``embedding``: cosine between all-MiniLM-L6-v2 embeddings of the rendered text and the
  target set's mean embedding;
* ``random``: the expected precision of a random ranking (k/pool per task; also the
  measured mean over 100 random permutations).

Also measured: gradient feature throughput (samples/s) of dense vs structured (LoGra)
mode on the same model at the same output dim (``--throughput``).
Writes benchmarks/results/less-targeted-cpu.json. CPU-sized defaults (2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))


def build_pool(path: Path, n_tasks: int, per_task: int, n_target: int, pool: int, seed: int, max_chars: int):
    from thresher.io import read_samples

    df = read_samples(path)
    df = df[(df["instruction"].str.len() + df["output"].str.len()) <= max_chars]
    df = df[df["output"].str.len() > 0]
    counts = df["group"].value_counts()
    eligible = sorted(counts[counts >= per_task + n_target].index.tolist())
    rng = np.random.default_rng(seed)
    tasks = sorted(rng.choice(eligible, size=n_tasks, replace=False).tolist())
    targets, inpool = [], []
    for t in tasks:
        rows = df[df["group"] == t].sample(frac=1.0, random_state=seed)
        targets.append(rows.iloc[:n_target])
        inpool.append(rows.iloc[n_target : n_target + per_task])
    import pandas as pd

    others = df[~df["group"].isin(tasks)].sample(n=pool - per_task * n_tasks, random_state=seed)
    pool_df = pd.concat(inpool + [others]).sample(frac=1.0, random_state=seed + 1).reset_index(drop=True)
    target_df = pd.concat(targets).reset_index(drop=True)
    return tasks, pool_df, target_df


def precision_at_k(scores: np.ndarray, truth: np.ndarray) -> float:
    k = int(truth.sum())
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))
    return float(truth[order[:k]].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/bigbench/bigbench-pool-100k.jsonl.gz")
    ap.add_argument("--model", default="default", help="default (SmolLM2-135M) | tiny | path/HF id")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--per-task", type=int, default=30)
    ap.add_argument("--n-target", type=int, default=16)
    ap.add_argument("--pool", type=int, default=480)
    ap.add_argument("--max-chars", type=int, default=600, help="skip very long rows (CPU time)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--template", default="plain", help="prompt template (plain keeps CPU sequences short)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--warmup-fraction", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--throughput", type=int, default=32, help="samples for the dense vs structured timing (0: skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/less-targeted-cpu.json")
    args = ap.parse_args()

    from thresher.criteria.less import less_scores, subtask_means
    from thresher.features.gradients import AdamState, GradientFeaturizer, encode_rows, load_lora
    from thresher.models import load_causal_lm
    from thresher.render import render_sample
    from thresher.train.warmup import lora_for_checkpoint, warmup_lora

    t_all = time.time()
    tasks, pool_df, target_df = build_pool(
        args.data, args.tasks, args.per_task, args.n_target, args.pool, args.seed, args.max_chars
    )
    print(f"tasks: {tasks}; pool {len(pool_df)} rows; targets {len(target_df)}", flush=True)
    if args.model.startswith("tiny"):
        # a tiny random Llama-style model with SmolLM2's tokenizer (CPU-time fallback)
        from thresher.models import tiny_causal_lm

        lm = tiny_causal_lm(
            seed=args.seed, tokenizer="smollm2", hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256
        )
    else:
        lm = load_causal_lm(args.model)
    res: dict = {
        "model": lm.spec,
        "model_fingerprint": lm.fingerprint,
        "tasks": tasks,
        "pool": len(pool_df),
        "per_task_in_pool": args.per_task,
        "n_target": args.n_target,
        "dim": args.dim,
        "lora_r": args.r,
        "warmup_fraction": args.warmup_fraction,
        "epochs": args.epochs,
        "lr": args.lr,
        "max_length": args.max_length,
        "template": args.template,
        "cpu_count": os.cpu_count(),
        "load_avg_before": os.getloadavg(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="less-bench-"))
    t0 = time.time()
    w = warmup_lora(
        pool_df,
        lm,
        tmp / "warm",
        fraction=args.warmup_fraction,
        epochs=args.epochs,
        lr=args.lr,
        r=args.r,
        alpha=4 * args.r,
        batch_size=args.batch_size,
        max_length=args.max_length,
        template=args.template,
        seed=args.seed,
    )
    res["warmup_s"] = time.time() - t0
    pm = lora_for_checkpoint(lm, w)
    pool_enc = encode_rows(pool_df, lm.tokenizer, template=args.template, max_length=args.max_length)
    tgt_enc = encode_rows(target_df, lm.tokenizer, template=args.template, max_length=args.max_length)
    feats_adam, feats_plain, means = [], [], []
    t0 = time.time()
    for ck in w.checkpoints:
        load_lora(pm, ck / "adapter.safetensors")
        st = AdamState.load(ck / "optimizer.safetensors")
        kw = dict(
            dim=args.dim,
            seed=args.seed,
            batch_size=args.batch_size,
            template=args.template,
            max_length=args.max_length,
            on_nonfinite="nan",
            fingerprint=lm.fingerprint,
        )
        plain = GradientFeaturizer(pm, lm.tokenizer, **kw)
        adam = GradientFeaturizer(pm, lm.tokenizer, adam="less", adam_state=st, **kw)
        _, ft, rt = plain(target_df, encoded=tgt_enc)
        ok = [i for i, r in enumerate(rt) if not r]
        names, m = subtask_means(ft[ok], target_df["group"].iloc[ok].tolist())
        means.append(m)
        # one backward per pool sample gives both the plain and the Adam features
        ids, fs, ra = adam.multi(pool_df, ["less", "none"], encoded=pool_enc)
        feats_adam.append(fs["less"])
        feats_plain.append(fs["none"])
        print(f"{ck.name}: features done ({time.time() - t0:.0f}s)", flush=True)
    res["gradient_features_s"] = time.time() - t0
    res["samples_featurised"] = len(pool_df) * len(w.checkpoints) + len(target_df) * len(w.checkpoints)
    S_adam = less_scores(feats_adam, means, w.weights)
    S_plain = less_scores(feats_plain, means, w.weights)
    # embeddings
    from thresher.embed import embed_texts

    t0 = time.time()
    ptxt = [render_sample(r, args.template).text for r in pool_df.to_dict("records")]
    ttxt = [render_sample(r, args.template).text for r in target_df.to_dict("records")]
    E = embed_texts(ptxt)
    Et = embed_texts(ttxt)
    res["embedding_s"] = time.time() - t0
    rng = np.random.default_rng(args.seed)
    per = {}
    for j, t in enumerate(names):
        truth = (pool_df["group"] == t).to_numpy()
        tm = Et[(target_df["group"] == t).to_numpy()].mean(0)
        rand = [precision_at_k(rng.random(len(truth)), truth) for _ in range(100)]
        per[t] = {
            "k": int(truth.sum()),
            "less": precision_at_k(S_adam[:, j], truth),
            "less_plain": precision_at_k(S_plain[:, j], truth),
            "embedding": precision_at_k(E @ tm, truth),
            "random_expected": float(truth.mean()),
            "random_measured": float(np.mean(rand)),
        }
        print(t, per[t], flush=True)
    res["per_task"] = per
    res["mean"] = {
        k: float(np.mean([p[k] for p in per.values()]))
        for k in ("less", "less_plain", "embedding", "random_expected", "random_measured")
    }
    res["unscorable_pool_rows"] = int(sum(1 for e in pool_enc if e.reason))
    # throughput: dense vs structured at equal output dim (plain gradients)
    if args.throughput:
        sub = pool_df.iloc[: args.throughput]
        enc = pool_enc[: args.throughput]
        tp = {}
        for mode in ("dense", "structured"):
            fz = GradientFeaturizer(
                pm,
                lm.tokenizer,
                dim=args.dim,
                seed=args.seed,
                mode=mode,
                batch_size=args.batch_size,
                template=args.template,
                max_length=args.max_length,
                on_nonfinite="nan",
            )
            t0 = time.time()
            fz(sub, encoded=enc)
            tp[mode + "_samples_per_s"] = len(sub) / (time.time() - t0)
        tp["samples"] = len(sub)
        tp["note"] = (
            "LoRA r=%d on q/k/v/o; structured projects each LoRA factor's wide side to 16 dims "
            "(rank side kept), then to dim" % args.r
        )
        res["throughput"] = tp
        print(tp, flush=True)
    res["total_s"] = time.time() - t_all
    res["load_avg_after"] = os.getloadavg()
    res["notes"] = (
        "shared 2-core CPU machine under load; a small pool (CPU time), SmolLM2-135M-Instruct "
        "unless --model says otherwise; precision@k with k = the task's count in the pool"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["mean"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
