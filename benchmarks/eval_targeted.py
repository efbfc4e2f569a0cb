"""Targeted selection, measured: closed-set accuracy after proxy tuning on each method's top-k
vs a random k and vs the full pool (issue 13, benchmark part 2).

Setting (all seeded; the task choice follows benchmarks/results/targeted-precision.json when it
exists, else the rule below, fixed before any result is seen):
* Target tasks: ``--n-targets`` BIG-bench tasks drawn with ``default_rng(--seed)`` among the tasks
  with 2..``--max-labels`` distinct outputs and enough rows (``--task-choice wellposed``: only tasks
  whose prompts name their labels and fit ``--max-length`` tokens; in this data set many closed-set
  tasks have lost their options, e.g. BBQ's ambiguous questions whose ten "unknown" variants no
  prompt tells apart, or have long texts whose options a short proxy truncates away, and no proxy
  can beat the label prior on those; ``--task-choice learnable``: only the well-posed tasks on which a
  pilot proxy tuned on the task's own rows beats one tuned on other tasks' rows by ``--min-gain``,
  measured on rows the benchmark never evaluates, see ``benchmarks/targeted_pilot.py``). From each
  task: ``--ref`` rows form the reference set the targeted methods see (``ref.jsonl``, group =
  task); ``--eval`` other rows form the held-out evaluation set (never in the pool, never seen by a
  selector); the rest of the task goes into the pool.
* Pool: the target tasks' remaining rows + ``--pool-other`` rows drawn uniformly from the other
  tasks. k = the number of target-task rows in the pool (precision@k's k); SDF = k / pool.
* Methods, each selecting k rows: every targeted recipe in the registry (rds, dsir, a target
  classifier) when present, else the criterion of the same name with its top k
  (``target_similarity`` with MiniLM stands in for rds when rds is not run); ``random``; ``full``;
  with ``--oracle`` also ``oracle``, exactly the target tasks' k pool rows: a reference for what a
  perfect targeted selection gains at this budget, never counted as a method in the verdict.
  RDS (LM hidden states of SmolLM2 over the whole pool) runs only with ``--gpu`` or ``--methods``.
* Each arm: `thresher evaluate`'s proxy LoRA tuning of SmolLM2-135M-Instruct (``--steps`` x
  ``--batch-size``, ``--max-length`` tokens, seeds ``--seeds``), then closed-set accuracy (label
  log-likelihood argmax, summed log-probs with EOS, `thresher.evaluation.closed_set`) on each
  target task's evaluation rows. Reported per seed and as mean / std / min / max; r and PIR
  (same_bench map) of each method vs random and vs the full pool.

CPU (default): a small configuration for a shared 2-core machine (few steps, short sequences,
2 seeds). GPU: ``--gpu`` sets the full configuration (200 steps, 256 tokens, 3 seeds, rds included,
device cuda). Numbers are whatever they are; nothing here is tuned on the evaluation rows.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT))

from benchmarks.targeted_pilot import run_pilot, task_split, untuned  # noqa: E402
from thresher.evaluation.arms import FULL, RANDOM, Arm, evaluate_arms, markdown_table, select_arm  # noqa: E402
from thresher.evaluation.lora import ProxyConfig  # noqa: E402
from thresher.fs import write_json_atomic  # noqa: E402
from thresher.io import read_samples  # noqa: E402
from thresher.registry import CRITERIA, RECIPES  # noqa: E402

POOL_FILE = ROOT.parent / "shared" / "data" / "bigbench" / "bigbench-pool-100k.jsonl.gz"
PRECISION_JSON = ROOT / "benchmarks" / "results" / "targeted-precision.json"
# method -> (recipe name, fallback criterion step)
METHODS = {
    "rds": ("rds", {"name": "target_similarity", "options": {"embedder": "lm:default"}}),
    "dsir": ("dsir", {"name": "dsir", "options": {}}),
    "target_classifier": ("target_classifier", {"name": "target_classifier", "options": {}}),
    "target_similarity": (None, {"name": "target_similarity", "options": {}}),
}
CPU_METHODS = "dsir,target_classifier,target_similarity"
ORACLE = "oracle"
GPU = {"steps": 200, "max_length": 256, "seeds": "0,1,2", "device": "cuda", "eval": 32, "batch_size": 8}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool-file", default=str(POOL_FILE))
    ap.add_argument("--n-targets", type=int, default=8)
    ap.add_argument("--ref", type=int, default=16, help="reference (target) rows per task")
    ap.add_argument("--eval", type=int, default=8, help="held-out evaluation rows per task")
    ap.add_argument("--pool-other", type=int, default=5000, help="pool rows from the other tasks")
    ap.add_argument("--max-labels", type=int, default=20)
    ap.add_argument(
        "--task-choice",
        default="precision",
        choices=["precision", "closed", "wellposed", "learnable"],
        help="precision: the tasks of targeted-precision.json when it exists; closed: the seeded closed-set draw; "
        "wellposed: the seeded draw among closed-set tasks whose prompts name their labels and fit --max-length; "
        "learnable: the seeded draw among the well-posed tasks that a pilot finds the proxy can learn "
        "(benchmarks/targeted_pilot.py)",
    )
    ap.add_argument("--pilot-eval", type=int, default=40, help="learnable: pilot evaluation rows per task")
    ap.add_argument("--min-gain", type=float, default=0.15, help="learnable: in-task minus other-task accuracy")
    ap.add_argument("--oracle", action="store_true", help="add the arm of exactly the target tasks' pool rows")
    ap.add_argument("--base", action="store_true", help="also measure the untuned model on the evaluation rows")
    ap.add_argument(
        "--base-only",
        metavar="RESULT",
        default=None,
        help="measure the untuned model on the split in --work of an earlier run, add it to RESULT (JSON) as `base`",
    )
    ap.add_argument("--min-rows", type=int, default=150, help="a target task needs this many rows")
    ap.add_argument("--seed", type=int, default=0, help="task choice, splits and pool sample")
    ap.add_argument("--methods", default=None, help=f"comma list among {list(METHODS)} (CPU default {CPU_METHODS})")
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--closed-norm", default="none", choices=["none", "tokens", "chars"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu", action="store_true", help="the full configuration: " + json.dumps(GPU))
    ap.add_argument("--work", default="/tmp/thresher-eval-targeted")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "targeted-eval.json"))
    args = ap.parse_args(argv)
    if args.gpu:
        for k, v in GPU.items():
            setattr(args, k, v)
        args.methods = args.methods or ",".join(METHODS)
    args.methods = [m.strip() for m in (args.methods or CPU_METHODS).split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"--methods: unknown {bad}; known {list(METHODS)}")
    return args


def read_rows(path: str) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def choose_tasks(by_task: dict, args, cfg: ProxyConfig) -> tuple[list[str], str]:
    """Tasks from targeted-precision.json when it names them, else a seeded draw among closed-set tasks."""
    if args.task_choice == "precision" and PRECISION_JSON.is_file():
        data = json.loads(PRECISION_JSON.read_text())
        settings = data.get("settings", data)
        tasks = settings.get("targets") or settings.get("tasks") or data.get("targets")
        if isinstance(tasks, list) and tasks and all(isinstance(t, str) and t in by_task for t in tasks):
            for key, src in (("ref", "n_target"), ("ref", "ref"), ("pool_other", "pool_other"), ("seed", "seed")):
                if isinstance(settings.get(src), int):
                    setattr(args, key, settings[src])
            return sorted(tasks), f"from {PRECISION_JSON.name}"
    need = args.ref + args.eval + 1
    cands = sorted(
        t
        for t, rows in by_task.items()
        if len(rows) >= max(need, args.min_rows)
        and 2 <= len({str(r["output"]).strip() for r in rows}) <= args.max_labels
    )
    kind = "closed-set"
    if args.task_choice in ("wellposed", "learnable"):
        cands = [t for t in cands if well_posed(by_task[t], args.max_length)]
        kind = (
            f"well-posed closed-set (labels named in >= 90% of prompts, >= 90% of rows within {args.max_length} tokens)"
        )
    if args.task_choice == "learnable":
        args.pilot = run_pilot(by_task, cands, args, cfg)
        cands = args.pilot["learnable"]
        kind = f"learnable (pilot: {args.pilot['rule']}) {kind}"
    rng = np.random.default_rng(args.seed)
    pick = sorted(rng.choice(cands, size=min(args.n_targets, len(cands)), replace=False).tolist())
    return pick, f"seeded draw (seed {args.seed}) among {len(cands)} {kind} tasks with >= {args.min_rows} rows"


def well_posed(rows: list[dict], max_length: int, sample: int = 32) -> bool:
    """A closed-set task the proxy can learn: every label of the task appears in at least 90% of its
    prompts (the prompt names the options to choose from), and at least 90% of a seeded sample of its
    rows fit ``max_length`` tokens (prompt + answer, SmolLM2's tokenizer), so truncation does not cut
    the options away. Decided from the task's rows alone, before any selection or tuning."""
    from thresher.models import load_tokenizer

    labels = {str(r["output"]).strip() for r in rows}
    named = np.mean([all(lab in str(r["instruction"]) for lab in labels) for r in rows])
    if named < 0.9:
        return False
    tok = load_tokenizer("default")
    idx = np.random.default_rng(0).choice(len(rows), size=min(sample, len(rows)), replace=False)
    sizes = [len(tok(str(rows[i]["instruction"]) + "\n" + str(rows[i]["output"]))["input_ids"]) + 4 for i in idx]
    return float(np.mean(np.asarray(sizes) <= max_length)) >= 0.9


def build_split(rows: list[dict], args, work: Path, cfg: ProxyConfig) -> dict:
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    tasks, how = choose_tasks(by_task, args, cfg)
    rng = np.random.default_rng(args.seed + 1)
    ref, ev, pool = [], [], []
    for t in tasks:
        if args.task_choice == "learnable":  # per-task permutation: the pilot never saw these eval rows
            parts = task_split(by_task[t], t, args.seed, args.ref, args.eval)
        else:
            rs = [by_task[t][i] for i in rng.permutation(len(by_task[t]))]
            parts = (rs[: args.ref], rs[args.ref : args.ref + args.eval], rs[args.ref + args.eval :])
        ref, ev, pool = ref + parts[0], ev + parts[1], pool + parts[2]
    k = len(pool)
    others = [r for t, rs in by_task.items() if t not in set(tasks) for r in rs]
    pool += [others[i] for i in sorted(rng.choice(len(others), size=args.pool_other, replace=False))]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    work.mkdir(parents=True, exist_ok=True)
    for name, part in (("pool", pool), ("ref", ref), ("eval", ev)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return {"tasks": tasks, "task_choice": how, "k": k, "pool": len(pool), "ref": len(ref), "eval": len(ev)}


def select_methods(args, work: Path, pool: pd.DataFrame, k: int, tasks: list[str]) -> tuple[list[Arm], dict]:
    arms, info = [], {}
    target_rows = pool["group"].isin(tasks).to_numpy() if "group" in pool else pool["task"].isin(tasks).to_numpy()
    for m in args.methods:
        recipe, crit = METHODS[m]
        use_recipe = recipe is not None and recipe in RECIPES.names()
        if not use_recipe and crit["name"] not in CRITERIA.names():
            info[m] = {"skipped": f"neither recipe {recipe!r} nor criterion {crit['name']!r} is registered"}
            continue
        t0 = time.perf_counter()
        opts = {"target": str(work / "ref.jsonl")}
        step = {"name": crit["name"], "options": {**crit["options"], **opts}}
        arm = select_arm(
            str(work / "pool.jsonl"), pool, m, k, work / "sel" / m, recipe=recipe if use_recipe else None,
            options=opts if use_recipe else None, criteria=None if use_recipe else [step],
            cache_dir=work / "cache",
        )  # fmt: skip
        pos = pool.index.get_indexer(arm.rows.index)
        info[m] = {
            "via": f"recipe {recipe}" if use_recipe else f"criterion {crit['name']} {crit['options']} + topk",
            "precision_at_k": float(target_rows[pos].mean()),
            "select_s": time.perf_counter() - t0,
        }
        print(f"[select] {m}: precision@k {info[m]['precision_at_k']:.3f} ({info[m]['select_s']:.0f}s)", flush=True)
        arms.append(arm)
    info[RANDOM] = {"precision_at_k_expected": float(target_rows.mean())}
    if args.oracle:  # a reference, not a method: exactly the target tasks' rows of the pool
        arms.append(Arm(ORACLE, rows=pool[target_rows], source="the target tasks' pool rows (upper reference)"))
        info[ORACLE] = {"precision_at_k": 1.0, "via": "reference arm"}
    return arms + [Arm(RANDOM), Arm(FULL)], info


def compact_runs(result) -> dict:
    keep = ("seed", "accuracy", "exact", "loss", "likelihood", "closed_accuracy", "train_loss_first", "train_loss_last")
    return {
        arm: [{kk: r[kk] for kk in keep if kk in r} | {"sets": r["sets"]} for r in runs]
        for arm, runs in result.runs.items()
    }


def verdict(result) -> dict:
    rows = [r for r in result.table if r["kind"] == "selection" and r["arm"] != ORACLE]
    if not rows:
        return {"best": None}
    best = max(rows, key=lambda r: r["score"]["mean"])
    vr = best.get("vs_random", {})
    pooled = vr.get("pooled", {})
    return {
        "best": best["arm"],
        "best_score_mean": best["score"]["mean"],
        "random_score_mean": result.summary[RANDOM]["score"]["mean"],
        "full_score_mean": result.summary[FULL]["score"]["mean"],
        "r_vs_random_pooled": pooled.get("r"),
        "pir_vs_random_pooled": pooled.get("pir"),
        "r_vs_random_per_seed": [p["r"] for p in vr.get("per_seed", [])],
        "target_pir_gt_1": None if pooled.get("pir") is None else bool(pooled["pir"] > 1),
        "beats_random_r_gt_1": None if pooled.get("r") is None else bool(pooled["r"] > 1),
        "note": "PIR is the survey's same_bench map of r (PIR = 1.444 at r = 1): PIR > 1 holds for r > 0.858; "
        "r > 1 is the stricter reading (the method's tuned model beats random's)",
    }


def add_base(args, cfg: ProxyConfig) -> int:
    """``--base-only``: the untuned model on an earlier run's evaluation rows (its --work split), into its JSON."""
    work, out = Path(args.work), Path(args.base_only)
    result = json.loads(out.read_text())
    cfg = replace(cfg, max_length=result["proxy"]["max_length"], max_labels=result["proxy"]["max_labels"])
    pool, target = read_samples(work / "pool.jsonl"), read_samples(work / "eval.jsonl")
    group = "group" if "group" in target else "task"
    if sorted(set(target[group])) != sorted(result["split"]["tasks"]) or len(target) != result["split"]["eval"]:
        raise SystemExit(f"{work}: its evaluation rows are not those of {out}")
    t0 = time.perf_counter()
    base = untuned(pool, target, cfg, group)
    result["base"] = {**base, "seconds": time.perf_counter() - t0, "added_by": "--base-only"}
    write_json_atomic(result, out)
    print(json.dumps(result["base"], indent=2))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    work = Path(args.work)
    cfg = ProxyConfig(
        model=args.model, steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
        max_labels=args.max_labels, closed_norm=args.closed_norm, device=args.device, threads=args.threads,
    )  # fmt: skip
    if args.base_only:
        return add_base(args, cfg)
    split = build_split(read_rows(args.pool_file), args, work, cfg)
    pool = read_samples(work / "pool.jsonl")
    target = read_samples(work / "eval.jsonl")
    print(f"tasks {split['tasks']}; pool {len(pool)}, k {split['k']}, eval {len(target)}", flush=True)
    arms, sel_info = select_methods(args, work, pool, split["k"], split["tasks"])
    t_sel = time.perf_counter() - t0
    seeds = [int(s) for s in args.seeds.split(",")]
    group = "group" if "group" in target else "task"
    result = evaluate_arms(pool, arms, target, cfg, seeds, k=split["k"], group=group, log=print)
    print(markdown_table(result))
    out = {
        "benchmark": "targeted-eval",
        "settings": {kk: (str(v) if isinstance(v, Path) else v) for kk, v in vars(args).items() if kk != "pilot"},
        "split": split,
        "pilot": getattr(args, "pilot", None),
        "base": untuned(pool, target, cfg, group) if args.base else None,
        "selection": sel_info,
        "proxy": result.config,
        "sdf": result.sdf,
        "closed_sets": result.closed_sets,
        "per_seed": compact_runs(result),
        "summary": {a: {kk: v for kk, v in s.items()} for a, s in result.summary.items()},
        "table": result.table,
        "table_markdown": markdown_table(result),
        "verdict": verdict(result),
        "timings": {"select_s": t_sel, "total_s": time.perf_counter() - t0, **result.timings},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "loadavg_start": load0,
            "loadavg_end": os.getloadavg(),
            "device": args.device,
        },  # fmt: skip
    }
    write_json_atomic(out, args.out)
    print(json.dumps(out["verdict"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
