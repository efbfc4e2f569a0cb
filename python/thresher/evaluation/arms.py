"""Several arms at the same SDF, several seeds: ``thresher evaluate --arm ... --seeds 0,1,2``.

An *arm* is a training subset of the pool: a selection (a `thresher select` folder, or a recipe
run here at k rows), ``random`` (k rows drawn uniformly, seeded per seed) or ``full`` (the whole
pool, the survey's BLM counterpart). Every arm shares the proxy budget (:class:`ProxyConfig`:
steps, batch, LoRA, learning rate); for seed s each arm's fine-tuning uses seed s (LoRA init
and data order) and the random arm draws its rows with ``default_rng(s + 1)``, so a run is
deterministic per seed.

Each tuned model is measured on the target set, split into evaluation sets by its group
column: the benchmark score of a set is closed-set accuracy where the set's outputs come from a
small label set (:mod:`.closed_set`), exact match elsewhere (``metric="accuracy"``), or
``exact`` / ``likelihood``. Per arm the table reports the score's mean, standard deviation
(population, ddof=0) and min/max over seeds, and per counterpart (``full``, ``random``):
r = mean_i SEM_i / BLM_i over the evaluation sets and PIR = the survey's ``same_bench`` map of r
(``docs/comparison.md``), per seed (mean, std, min, max over the seeds where the ratio is
defined) and ``pooled`` (from the per-set scores averaged over seeds first). Note the map:
PIR = 1.444 at r = 1 (a tie), so "PIR > 1" alone is a weak bar; r > 1 means the arm beats its
counterpart.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
import yaml

from ..fs import atomic_write_text, write_json_atomic
from ..pipeline import PipelineConfig, run_pipeline
from .closed_set import ClosedSet, add_closed_accuracy
from .comparison import Method, check_sdf
from .leaderboard import leaderboard
from .lora import ProxyConfig, encode, finetune, measure
from .plots import efficiency_plot
from .proxy import RANDOM_FEASIBILITY, _default_loader, _groups, benchmark_ratio, closed_set_for
from .runs import feasibility_from_recipe, run_entry

RANDOM, FULL = "random", "full"
COUNTERPARTS = (FULL, RANDOM)
STAT_KEYS = ("accuracy", "exact", "likelihood", "loss")


@dataclass
class Arm:
    """One training subset: ``rows`` for a selection; None for ``random`` and ``full``."""

    name: str
    rows: Optional[pd.DataFrame] = None
    recipe: Optional[str] = None
    feasibility: Optional[dict] = None
    source: str = ""

    @property
    def kind(self) -> str:
        return self.name if self.rows is None else "selection"


@dataclass
class ArmsResult:
    config: dict[str, Any]
    pool_size: int
    k: int
    sdf: float
    seeds: list[int]
    metric: str
    arms: list[dict[str, Any]]  # name, kind, recipe, source, size
    closed_sets: dict[str, list[str]]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # arm -> per-seed measurement
    summary: dict[str, Any] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; ``"0-4"`` -> [0..4]; distinct non-negative integers."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--seeds: expected integers like 0,1,2 or 0-2, got {text!r}") from None
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise ValueError(f"--seeds: expected distinct non-negative integers, got {text!r}")
    return out


def check_arms(arms: Sequence[Arm], pool: pd.DataFrame, k: Optional[int]) -> int:
    """The common subset size k; every selection arm must have k rows, all in the pool."""
    names = [a.name for a in arms]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"arms: duplicate arm name(s) {dup}")
    if not arms:
        raise ValueError("arms: no arms to evaluate")
    sizes = {a.name: len(a.rows) for a in arms if a.rows is not None}
    if k is None:
        if not sizes:
            raise ValueError("k: give --k or --ratio (no selection arm fixes the subset size)")
        k = next(iter(sizes.values()))
    bad = {n: s for n, s in sizes.items() if s != k}
    if bad:
        raise ValueError(f"arms: every arm must have the same size k={k} (same SDF); got {bad}")
    if not 0 < k <= len(pool):
        raise ValueError(f"k: expected 1..{len(pool)} (the pool size), got {k}")
    ids = set(pool["id"]) if "id" in pool else None
    for a in arms:
        if a.rows is not None and ids is not None and "id" in a.rows:
            unknown = set(a.rows["id"]) - ids
            if unknown:
                raise ValueError(f"arm {a.name}: {len(unknown)} row id(s) not in the pool (e.g. {sorted(unknown)[:3]})")
    return int(k)


def select_recipe_arm(
    data: Any, pool: pd.DataFrame, recipe: str, options: dict, k: int, out: Path, *, cache_dir=None, seed: int = 0
) -> Arm:
    """Run ``recipe`` on ``data`` at k rows (output folder ``out``); the arm of its selection."""
    return select_arm(data, pool, recipe, k, out, recipe=recipe, options=options, cache_dir=cache_dir, seed=seed)


def select_arm(
    data: Any,
    pool: pd.DataFrame,
    name: str,
    k: int,
    out: Path,
    *,
    recipe: Optional[str] = None,
    options: Optional[dict] = None,
    criteria: Optional[list] = None,
    cache_dir=None,
    seed: int = 0,
) -> Arm:
    """Select k rows of ``data`` (read as ``pool``) with a recipe or with criteria (one criterion:
    its top k); the arm of that selection. ``pool`` must be ``data`` read in order."""
    cfg = PipelineConfig(
        data=data,
        out=out,
        recipe=recipe,
        recipe_options=dict(options or {}),
        criteria=list(criteria or []),
        k=k,
        cache_dir=cache_dir,
        seed=seed,
        overwrite=True,
        report=False,
        quiet=True,
    )
    res = run_pipeline(cfg)
    rows = pool.iloc[np.asarray(res.selected, dtype=np.int64)]
    what = f"recipe {recipe}" if recipe else f"criteria {[c['name'] for c in criteria or []]}"
    return Arm(name, rows=rows, recipe=recipe, source=f"{what} -> {out}")


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _subset(arm: Arm, pool: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    if arm.rows is not None:
        return arm.rows
    if arm.name == FULL:
        return pool
    idx = np.sort(np.random.default_rng(seed + 1).choice(len(pool), size=k, replace=False))
    return pool.iloc[idx]


def _train_and_measure(subset, load, tok, target_enc, answers, groups, cfg, closed, log) -> dict[str, Any]:
    enc = encode(subset, tok, max_length=cfg.max_length, template=cfg.template)
    lm, losses = finetune(load, enc, cfg)
    m = measure(lm, target_enc, answers, groups, cfg)
    add_closed_accuracy(m, lm, target_enc, answers, groups, closed)
    m["train_loss_first"] = float(np.mean(losses[: max(1, len(losses) // 10)]))
    m["train_loss_last"] = float(np.mean(losses[-max(1, len(losses) // 10) :]))
    m["truncated"] = enc.truncated
    m.pop("examples", None)
    return m


def evaluate_arms(
    pool: pd.DataFrame,
    arms: Sequence[Arm],
    target: pd.DataFrame,
    cfg: ProxyConfig,
    seeds: Sequence[int],
    *,
    k: Optional[int] = None,
    group: Optional[str] = None,
    loader: Optional[Callable[[], Any]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> ArmsResult:
    """Fine-tune every arm once per seed and measure it on ``target``; the summary and PIR table."""
    cfg.validate()
    log = log or (lambda s: None)
    if len(pool) == 0 or len(target) == 0:
        raise ValueError("data: the pool is empty" if len(pool) == 0 else "target: the target set is empty")
    k = check_arms(arms, pool, k)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("--seeds: no seeds")
    if loader is None:
        loader, tok = _default_loader(cfg)
    else:
        tok = loader().tokenizer
    groups = _groups(target, group)
    target_enc = encode(target, tok, max_length=cfg.max_length, template=cfg.template)
    answers = [str(o).strip() for o in target["output"]]
    closed = closed_set_for(pool, target, groups, tok, cfg, group)
    result = ArmsResult(
        config={kk: (list(v) if isinstance(v, tuple) else v) for kk, v in asdict(cfg).items() if kk != "seed"},
        pool_size=len(pool),
        k=k,
        sdf=check_sdf(k / len(pool), "sdf"),
        seeds=seeds,
        metric=cfg.metric,
        arms=[_arm_info(a, k, len(pool)) for a in arms],
        closed_sets={g: closed.labels[g] for g in sorted(closed.labels)},
    )
    _run_all(result, arms, pool, k, seeds, loader, tok, target_enc, answers, groups, cfg, closed, log)
    summarise(result)
    return result


def _arm_info(a: Arm, k: int, n_pool: int) -> dict[str, Any]:
    size = n_pool if a.kind == FULL else k
    return {
        "name": a.name,
        "kind": a.kind,
        "recipe": a.recipe,
        "feasibility": a.feasibility,
        "source": a.source,
        "size": size,
    }


def _run_all(result, arms, pool, k, seeds, loader, tok, target_enc, answers, groups, cfg, closed: ClosedSet, log):
    for seed in seeds:
        cs = replace(cfg, seed=seed)
        for a in arms:
            t0 = time.perf_counter()
            m = _train_and_measure(_subset(a, pool, k, seed), loader, tok, target_enc, answers, groups, cs, closed, log)
            m["seed"] = seed
            result.runs.setdefault(a.name, []).append(m)
            result.timings[f"{a.name}/seed{seed}_s"] = time.perf_counter() - t0
            log(
                f"[seed {seed}] {a.name}: {cfg.metric} {_set_mean(m, cfg.metric):.4f}  accuracy {m['accuracy']:.4f}  "
                f"loss {m['loss']:.4f}  ({time.perf_counter() - t0:.0f}s)"
            )


def _set_mean(m: dict[str, Any], metric: str) -> float:
    """The arm's benchmark score: the mean of the metric over evaluation sets (each set weighs the same)."""
    return float(np.mean([s[metric] for s in m["sets"].values()]))


def _pooled(runs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """A measurement whose per-set scores are the means over seeds."""
    names = sorted(runs[0]["sets"])
    return {"sets": {g: {metric: float(np.mean([r["sets"][g][metric] for r in runs]))} for g in names}}


def _ratio_row(runs: list, other: list, metric: str) -> dict[str, Any]:
    per_seed = [benchmark_ratio(a, b, metric) for a, b in zip(runs, other)]
    pooled = benchmark_ratio(_pooled(runs, metric), _pooled(other, metric), metric)
    return {
        "r": _stats([p["r"] for p in per_seed]),
        "pir": _stats([p["pir"] for p in per_seed]),
        "per_seed": [
            {"r": p["r"], "pir": p["pir"], **({"error": p["error"]} if "error" in p else {})} for p in per_seed
        ],
        "pooled": {kk: pooled[kk] for kk in ("r", "pir", "sem", "blm", "error") if kk in pooled},
    }


def summarise(result: ArmsResult) -> None:
    """Per arm: score statistics over seeds; per (arm, counterpart): r and PIR (per seed and pooled)."""
    metric = result.metric
    result.summary, result.table = {}, []
    for info in result.arms:
        name = info["name"]
        runs = result.runs[name]
        s = {kk: _stats([r[kk] for r in runs]) for kk in STAT_KEYS}
        s["score"] = _stats([_set_mean(r, metric) for r in runs])
        s["sets"] = {g: _stats([r["sets"][g][metric] for r in runs]) for g in sorted(runs[0]["sets"])}
        result.summary[name] = s
        row: dict[str, Any] = {"arm": name, "kind": info["kind"], "sdf": info["size"] / result.pool_size}
        row["score"] = s["score"]
        for cp in COUNTERPARTS:
            if cp in result.runs and cp != name and not (cp == RANDOM and info["kind"] == FULL):
                row[f"vs_{cp}"] = _ratio_row(runs, result.runs[cp], metric)
        result.table.append(row)


def _fmt(st: Optional[dict], digits: int = 3) -> str:
    if not st or st.get("mean") is None:
        return "n/a"
    if st["n"] == 1:
        return f"{st['mean']:.{digits}f}"
    return f"{st['mean']:.{digits}f} ± {st['std']:.{digits}f} [{st['min']:.{digits}f}, {st['max']:.{digits}f}]"


def _fmt_pooled(p: Optional[dict], key: str) -> str:
    if not p or p["pooled"].get(key) is None:
        return "n/a"
    return f"{p['pooled'][key]:.3f}"


def markdown_table(result: ArmsResult) -> str:
    """The PIR table: score, r and PIR against the full pool and against random (mean ± std [min, max])."""
    head = (
        f"SDF {result.sdf:.4g} (k = {result.k} of {result.pool_size}); seeds {result.seeds}; metric "
        f"`{result.metric}` (closed-set accuracy on {len(result.closed_sets)} closed set(s), exact match elsewhere"
        f"{'' if result.metric == 'accuracy' else '; not used: metric is ' + result.metric}); PIR = same_bench map "
        "of r (PIR 1.444 at r = 1); `pooled` = from per-set scores averaged over seeds.\n\n"
    )
    cols = [
        "arm",
        "SDF",
        "score",
        "r vs full",
        "PIR vs full",
        "r vs random",
        "PIR vs random",
        "pooled r / PIR vs random",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in result.table:
        vf, vr = row.get("vs_full"), row.get("vs_random")
        cells = [
            row["arm"],
            f"{row['sdf']:.4g}",
            _fmt(row["score"]),
            _fmt(vf["r"]) if vf else "—",
            _fmt(vf["pir"]) if vf else "—",
            _fmt(vr["r"]) if vr else "—",
            _fmt(vr["pir"]) if vr else "—",
            f"{_fmt_pooled(vr, 'r')} / {_fmt_pooled(vr, 'pir')}" if vr else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def arm_methods(result: ArmsResult) -> list[Method]:
    """The arms (except full) as user methods at (SDF, pooled PIR vs full), for the efficiency plot."""
    out = []
    info = {a["name"]: a for a in result.arms}
    for row in result.table:
        vf = row.get("vs_full")
        if vf is None or vf["pooled"].get("pir") is None:
            continue
        feas = _arm_feasibility(info[row["arm"]])
        out.append(Method(row["arm"], row["sdf"], vf["pooled"]["pir"], feas, source="thresher evaluate", user=True))
    return out


def _arm_feasibility(info: dict[str, Any]) -> Optional[Any]:
    if info["kind"] == RANDOM:
        return dict(RANDOM_FEASIBILITY)
    if info.get("feasibility"):
        return info["feasibility"]
    if info.get("recipe"):
        try:
            return feasibility_from_recipe(info["recipe"])
        except ValueError:
            return None
    return None


def run_entries(result: ArmsResult) -> list[dict[str, Any]]:
    """RUNS.yaml entries (``thresher compare``) of the arms with feasibility inputs: pooled PIR vs full."""
    out = []
    for m in arm_methods(result):
        if m.feasibility is None:
            continue
        vf = next(r for r in result.table if r["arm"] == m.name)["vs_full"]["pooled"]
        out.append(
            run_entry(
                m.name,
                sdf_value=m.sdf,
                setting="same_bench",
                sem=vf["sem"],
                blm=vf["blm"],
                feasibility=m.feasibility,
                notes=f"thresher evaluate: proxy LoRA of {result.config['model']}, {result.config['steps']} steps, "
                f"seeds {result.seeds}, metric {result.metric} (seed-mean per-set scores)",
            )
        )
    return out


def write_outputs(result: ArmsResult, out_dir: Any, *, plot: bool = True) -> dict[str, Path]:
    """pir.json (everything, per seed), pir.md (the table), run.yaml (for `thresher compare`) and
    efficiency.png (the arms placed among the published methods, PIR vs full pool)."""
    out = Path(out_dir)
    paths = {"json": out / "pir.json", "md": out / "pir.md", "runs": out / "run.yaml"}
    write_json_atomic(result.to_dict(), paths["json"])
    atomic_write_text(paths["md"], markdown_table(result))
    atomic_write_text(paths["runs"], yaml.safe_dump({"runs": run_entries(result)}, sort_keys=False))
    methods = arm_methods(result)
    if plot and methods:
        paths["plot"] = efficiency_plot(
            leaderboard(extra=methods),
            out / "efficiency.png",
            title=f"thresher evaluate: arms at SDF {result.sdf:.3g} among the published methods",
        )
    return paths
