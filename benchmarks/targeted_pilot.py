"""The ``learnable`` task choice of ``eval_targeted.py``: which candidate target tasks can the proxy
learn from their own rows at all?

A selection method can only show a gain in closed-set accuracy on a task where rows of that task
teach the proxy more than other rows do. Many BIG-bench tasks are out of reach of a 135M model in a
few hundred LoRA steps: every arm stays at the label prior there, and the benchmark's accuracy
cannot tell methods apart (``targeted-eval-wellposed-cpu.json``). The pilot measures it before
any selection runs:

* Every candidate task is split by its own seeded permutation (``task_split``): ``ref`` rows, the
  benchmark's ``eval`` rows, and the rest. The pilot uses only the rest: ``pilot_eval`` rows per
  task to measure on, the others to train on. The benchmark's evaluation rows are never seen here.
* Three proxies with the benchmark's own budget (steps, batch, length, lr; seed ``seed + 1000``):
  the untuned model (``base``), LoRA on the candidates' training rows (``in_task``), and LoRA on
  as many rows of the other tasks (``other``).
* A task is learnable when ``in_task`` beats ``other`` by at least ``min_gain`` accuracy on its
  pilot rows. The selection methods never see the pilot; it decides which tasks the benchmark
  draws its targets from, as ``wellposed`` does from the prompts.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from typing import Callable

import numpy as np
import pandas as pd

from thresher.evaluation.closed_set import add_closed_accuracy
from thresher.evaluation.lora import ProxyConfig, encode, finetune, measure
from thresher.evaluation.proxy import _default_loader, closed_set_for


def task_split(rows: list[dict], task: str, seed: int, n_ref: int, n_eval: int) -> tuple[list, list, list]:
    """(ref, eval, rest) of one task's rows, by a permutation seeded with (seed + 1, crc32(task)):
    the same whichever other tasks are drawn."""
    rng = np.random.default_rng([seed + 1, zlib.crc32(task.encode("utf-8"))])
    rs = [rows[i] for i in rng.permutation(len(rows))]
    return rs[:n_ref], rs[n_ref : n_ref + n_eval], rs[n_ref + n_eval :]


def pilot_sets(by_task: dict, cands: list[str], args) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(in-task training rows, rows of the other tasks, pilot evaluation rows)."""
    train, ev = [], []
    for t in cands:
        rest = task_split(by_task[t], t, args.seed, args.ref, args.eval)[2]
        ev += rest[: args.pilot_eval]
        train += rest[args.pilot_eval :]
    chosen = set(cands)
    others = [r for t in sorted(by_task) if t not in chosen for r in by_task[t]]
    rng = np.random.default_rng(args.seed + 1000)
    idx = np.sort(rng.choice(len(others), size=min(len(train), len(others)), replace=False))
    return pd.DataFrame(train), pd.DataFrame([others[i] for i in idx]), pd.DataFrame(ev)


def _measure(lm, target_enc, answers, groups, cfg, closed) -> dict[str, float]:
    m = measure(lm, target_enc, answers, groups, cfg)
    add_closed_accuracy(m, lm, target_enc, answers, groups, closed)
    return {g: float(v["accuracy"]) for g, v in m["sets"].items()}


def untuned(pool: pd.DataFrame, target: pd.DataFrame, cfg: ProxyConfig, group: str = "task") -> dict:
    """Closed-set accuracy of the untuned model on the evaluation rows (per set and the mean over
    sets): the line every arm's tuning moves up or down from."""
    loader, tok = _default_loader(cfg)
    groups = target[group].astype(str).to_numpy()
    enc = encode(target, tok, max_length=cfg.max_length, template=cfg.template)
    answers = [str(o).strip() for o in target["output"]]
    closed = closed_set_for(pool, target, groups, tok, cfg, group)
    sets = _measure(loader(), enc, answers, groups, cfg, closed)
    return {"sets": sets, "mean_over_sets": float(np.mean(list(sets.values()))), "rows": len(target)}


def run_pilot(by_task: dict, cands: list[str], args, cfg: ProxyConfig, log: Callable[[str], None] = print) -> dict:
    """Accuracy per candidate task of the base, in-task and other-task proxies; the learnable tasks."""
    t0 = time.perf_counter()
    train, other, ev = pilot_sets(by_task, cands, args)
    cfg = replace(cfg, seed=args.seed + 1000)
    loader, tok = _default_loader(cfg)
    groups = ev["task"].astype(str).to_numpy()
    target_enc = encode(ev, tok, max_length=cfg.max_length, template=cfg.template)
    answers = [str(o).strip() for o in ev["output"]]
    closed = closed_set_for(pd.concat([train, ev]), ev, groups, tok, cfg, "task")
    acc = {"base": _measure(loader(), target_enc, answers, groups, cfg, closed)}
    log(f"[pilot] base measured ({time.perf_counter() - t0:.0f}s)")
    for name, rows in (("in_task", train), ("other", other)):
        lm, _ = finetune(loader, encode(rows, tok, max_length=cfg.max_length, template=cfg.template), cfg)
        acc[name] = _measure(lm, target_enc, answers, groups, cfg, closed)
        log(f"[pilot] {name} measured ({time.perf_counter() - t0:.0f}s)")
    gain = {t: acc["in_task"][t] - acc["other"][t] for t in cands}
    learnable = sorted(t for t in cands if gain[t] >= args.min_gain - 1e-12)
    return {
        "rule": f"in_task accuracy - other accuracy >= {args.min_gain} on {args.pilot_eval} pilot rows per task",
        "candidates": len(cands),
        "train_rows": len(train),
        "other_rows": len(other),
        "eval_rows": len(ev),
        "seed": cfg.seed,
        "accuracy": {t: {k: acc[k][t] for k in acc} for t in cands},
        "mean": {k: float(np.mean([acc[k][t] for t in cands])) for k in acc},
        "learnable": learnable,
        "seconds": time.perf_counter() - t0,
    }
