"""Proxy fine-tuning: measure a selection by what it teaches a small model.

``evaluate_selection`` fine-tunes the same small causal LM (LoRA via peft, a
fixed budget of optimizer steps, a fixed seed) three times: on the selected
subset (SEM), on a random subset of the same size (the random baseline at the
same SDF) and on the full pool (BLM, the paper's baseline counterpart). Each
tuned model is measured on the target set: the mean answer-token loss, the
exact-match accuracy of a greedy decode and, on evaluation sets whose outputs come
from a small label set, closed-set accuracy (:mod:`.closed_set`; ``metric="accuracy"``
uses it there and exact match elsewhere, ``metric="exact"`` exact match everywhere).
``decode="teacher"`` (default) gets the exact match
from the same single forward pass as the loss: greedy decoding reproduces the
answer's tokens followed by EOS exactly iff each of those tokens is the argmax
given the answer's own prefix, so no generation is needed (token-exact match).
``decode="generate"`` runs ``model.generate`` (``max_new_tokens``, stopped at
EOS) and compares strings after whitespace normalisation and case folding. The target set
is split into evaluation sets by a group column (e.g. BIG-bench ``task``) when
present. The benchmark ratio r = mean_i SEM_i / BLM_i over evaluation sets and
PIR = the ``same_bench`` linear map of r follow the survey's definitions.

The fine-tuning and measurement of one model: :mod:`thresher.evaluation.lora`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import yaml

from ..fs import atomic_write_text
from ..models import load_causal_lm, load_tokenizer
from .closed_set import ClosedSet, add_closed_accuracy, build_closed_set, label_sets
from .comparison import SAME_BENCH_MAP, check_sdf, mean_ratio, pir
from .lora import ARMS, METRICS, Encoded, ProxyConfig, encode, finetune, measure, resolve_device
from .runs import run_entry


# --------------------------------------------------------------------------- driver
@dataclass
class ProxyResult:
    config: dict[str, Any]
    pool_size: int
    selected_size: int
    sdf: float
    arms: dict[str, Any]
    ratio: dict[str, Any] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _group_column(table, group: Optional[str]) -> Optional[str]:
    if group is not None:
        return group
    return next((c for c in ("group", "task") if c in table), None)


def closed_set_for(pool, target, groups: np.ndarray, tok, cfg: ProxyConfig, group: Optional[str] = None) -> ClosedSet:
    """Label sets of the target's evaluation sets (target rows + the pool's rows of the same group)."""
    col = _group_column(target, group)
    pool_col = col if col is not None and col in pool else next((c for c in ("group", "task") if c in pool), None)
    pg = pool[pool_col].astype(str).tolist() if pool_col is not None else None
    po = pool["output"].tolist() if pool_col is not None else None
    sets = label_sets(groups.tolist(), target["output"].tolist(), pg, po, max_labels=cfg.max_labels)
    return build_closed_set(sets, tok, template=cfg.template, norm=cfg.closed_norm, eos=cfg.closed_eos)


def _groups(table, group: Optional[str]) -> np.ndarray:
    if group is not None:
        if group not in table:
            raise ValueError(f"group: target data has no column {group!r} (columns: {list(table.columns)})")
        return table[group].astype(str).to_numpy()
    for c in ("group", "task"):
        if c in table:
            return table[c].astype(str).to_numpy()
    return np.array(["all"] * len(table))


def benchmark_ratio(sem: dict[str, Any], blm: dict[str, Any], metric: str) -> dict[str, Any]:
    """r and PIR (same_bench) of one arm against another, over the common evaluation sets."""
    names = sorted(sem["sets"])
    s = [sem["sets"][k][metric] for k in names]
    b = [blm["sets"][k][metric] for k in names]
    zero = [k for k, v in zip(names, b) if v == 0]
    if zero:
        return {
            "metric": metric,
            "sets": names,
            "sem": s,
            "blm": b,
            "r": None,
            "pir": None,
            "error": f"blm: the counterpart scores 0 ({metric}) on evaluation set(s) {zero}; "
            f"the ratio is undefined (try --metric likelihood or more steps)",
        }
    r = mean_ratio(s, b, setting="same_bench")
    return {"metric": metric, "sets": names, "sem": s, "blm": b, "r": r, "pir": pir("same_bench", s, b)}


def evaluate_selection(
    pool,
    selected,
    target,
    cfg: ProxyConfig,
    *,
    group: Optional[str] = None,
    loader: Optional[Callable[[], Any]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> ProxyResult:
    """Fine-tune on the selected subset, a same-size random subset and the full pool; measure on target.

    ``pool``, ``selected``, ``target``: sample tables (``instruction``, ``input``,
    ``output``; ``id`` for pool and selected; a group column splits the target
    into evaluation sets). ``loader()`` returns a fresh :class:`LoadedLM` (default:
    ``load_causal_lm(cfg.model)``) and is called once per arm.
    """
    cfg.validate()
    if cfg.threads is None:
        return _evaluate(pool, selected, target, cfg, group=group, loader=loader, log=log)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _evaluate(pool, selected, target, cfg, group=group, loader=loader, log=log)
    finally:
        torch.set_num_threads(before)


def _check_inputs(pool, selected, target) -> None:
    if len(pool) == 0:
        raise ValueError("data: the pool is empty")
    if len(selected) == 0:
        raise ValueError("selected: the selection is empty")
    if len(target) == 0:
        raise ValueError("target: the target set is empty")
    if "id" in pool and "id" in selected:
        unknown = set(selected["id"]) - set(pool["id"])
        if unknown:
            ex = sorted(unknown)[:3]
            raise ValueError(
                f"selected: {len(unknown)} selected id(s) are not in the pool (e.g. {ex}); "
                "was the selection made from this DATA?"
            )


def _default_loader(cfg: ProxyConfig) -> tuple[Callable[[], Any], Any]:
    device = resolve_device(cfg.device)

    def loader():
        return load_causal_lm(cfg.model, device=device)

    return loader, load_tokenizer(cfg.model)


def _run_arm(
    arm: str,
    subset,
    loader,
    tok,
    enc_target: Encoded,
    answers,
    groups,
    cfg: ProxyConfig,
    result: ProxyResult,
    log: Callable[[str], None],
    closed: Optional[ClosedSet] = None,
) -> None:
    t0 = time.perf_counter()
    enc = encode(subset, tok, max_length=cfg.max_length, template=cfg.template)
    result.truncated[arm] = enc.truncated
    log(f"[{arm}] fine-tuning on {len(enc.prompt)} examples, {cfg.steps} steps x {cfg.batch_size}")
    lm, losses = finetune(loader, enc, cfg, log=log)
    t1 = time.perf_counter()
    m = add_closed_accuracy(measure(lm, enc_target, answers, groups, cfg), lm, enc_target, answers, groups, closed)
    t2 = time.perf_counter()
    m["train_loss_first"] = float(np.mean(losses[: max(1, len(losses) // 10)]))
    m["train_loss_last"] = float(np.mean(losses[-max(1, len(losses) // 10) :]))
    result.arms[arm] = m
    result.timings[f"{arm}_train_s"] = t1 - t0
    result.timings[f"{arm}_eval_s"] = t2 - t1
    log(
        f"[{arm}] target loss {m['loss']:.4f}  accuracy {m['accuracy']:.4f}  "
        f"({t1 - t0:.0f}s train, {t2 - t1:.0f}s eval)"
    )


def _ratios(result: ProxyResult, metric: str) -> None:
    arms = result.arms
    if "full" in arms:
        for arm in ("selected", "random"):
            if arm in arms:
                result.ratio[f"{arm}_vs_full"] = benchmark_ratio(arms[arm], arms["full"], metric)
    if "selected" in arms and "random" in arms:
        result.ratio["selected_vs_random"] = benchmark_ratio(arms["selected"], arms["random"], metric)


def _evaluate(pool, selected, target, cfg: ProxyConfig, *, group, loader, log) -> ProxyResult:
    log = log or (lambda s: None)
    if loader is None:
        loader, tok = _default_loader(cfg)
    else:
        tok = loader().tokenizer
    _check_inputs(pool, selected, target)
    n_pool, n_sel = len(pool), len(selected)
    s = check_sdf(n_sel / n_pool, "sdf")
    groups = _groups(target, group)
    enc_target = encode(target, tok, max_length=cfg.max_length, template=cfg.template)
    answers = [str(o).strip() for o in target["output"]]
    rng = np.random.default_rng(cfg.seed + 1)
    rand_idx = np.sort(rng.choice(n_pool, size=n_sel, replace=False))
    subsets = {"selected": selected, "random": pool.iloc[rand_idx], "full": pool}
    result = ProxyResult(
        config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        pool_size=n_pool,
        selected_size=n_sel,
        sdf=s,
        arms={},
    )
    result.truncated["target"] = enc_target.truncated
    closed = closed_set_for(pool, target, groups, tok, cfg, group)
    result.config["closed_sets"] = {g: closed.labels[g] for g in sorted(closed.labels)}
    for arm in cfg.arms:
        _run_arm(arm, subsets[arm], loader, tok, enc_target, answers, groups, cfg, result, log, closed)
    _ratios(result, cfg.metric)
    return result


RANDOM_FEASIBILITY = {
    "trained_llms": 0,
    "steps": 1,
    "model_free": True,
    "dataset_free": True,
    "proprietary_judge": False,
    "public_code": True,
}


def run_entries(
    result: ProxyResult, name: str, *, recipe: Optional[str] = None, feasibility: Optional[dict] = None
) -> list[dict[str, Any]]:
    """Run entries (for RUNS.yaml) of the selected arm and of the random arm, PIR vs the full pool."""
    out = []
    for arm, nm, rec, feas in (
        ("selected", name, recipe, feasibility),
        ("random", f"{name}-random", None, RANDOM_FEASIBILITY),
    ):
        rt = result.ratio.get(f"{arm}_vs_full")
        if rt is None or rt.get("pir") is None:
            continue
        metrics = {
            "metric": rt["metric"],
            "r": rt["r"],
            "target_loss": result.arms[arm]["loss"],
            "target_accuracy": result.arms[arm]["accuracy"],
            "full_target_loss": result.arms["full"]["loss"],
            "full_target_accuracy": result.arms["full"]["accuracy"],
        }
        out.append(
            run_entry(
                nm,
                sdf_value=result.sdf,
                setting="same_bench",
                sem=rt["sem"],
                blm=rt["blm"],
                recipe=rec,
                feasibility=feas,
                metrics=metrics,
                notes=f"thresher evaluate: proxy LoRA fine-tuning of {result.config['model']}, "
                f"{result.config['steps']} steps, seed {result.config['seed']}",
            )
        )
    return out


def write_outputs(result: ProxyResult, out_dir: Union[str, Path], entries: list[dict[str, Any]]) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {"json": out_dir / "evaluation.json", "runs": out_dir / "run.yaml"}
    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2, default=float))
    atomic_write_text(paths["runs"], yaml.safe_dump({"runs": entries}, sort_keys=False))
    return paths


__all__ = [
    "ARMS",
    "METRICS",
    "Encoded",
    "resolve_device",
    "ProxyConfig",
    "ProxyResult",
    "encode",
    "finetune",
    "measure",
    "evaluate_selection",
    "benchmark_ratio",
    "run_entries",
    "write_outputs",
    "SAME_BENCH_MAP",
    "RANDOM_FEASIBILITY",
]
