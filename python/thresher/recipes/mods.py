"""MoDS: quality threshold, k-center seed set, then the necessary rows (``stages`` 1..3).

The steps depend on ``stages``, so the recipe gives a ``derive`` that returns the criteria and
the selector:

* ``stages=1``: the ``rating`` criterion as ``quality``, the ``threshold`` selector;
* ``stages=2``: the same, then ``kcenter`` over the rows past the threshold (``cascade``);
* ``stages=3`` (default): the pool-scoped ``necessity`` criterion runs the three stages
  (quality, k-center seed of ``seed_k`` rows, LoRA on the seed, the seed model's answers rated
  by the same quality scorer) and the ``necessity`` selector keeps the seed plus a k-center set
  of the rows answered below the quality bar.
"""

from __future__ import annotations

from ..registry import Option
from . import _EMB, _MODEL, Recipe, _reg, feasibility


def _threshold(opts: dict) -> dict:
    return {
        "name": "threshold",
        "options": {
            "criterion": "quality",
            "direction": "max",
            "mode": opts["quality_mode"],
            "value": opts["quality_value"],
        },
    }


def _mods(opts: dict) -> dict:
    quality = {"name": "rating", "as": "quality", "options": {"model": opts["model"]}}
    if opts["stages"] == 1:
        return {"criteria": [quality], "selector": _threshold(opts)}
    if opts["stages"] == 2:
        then = {"name": "kcenter", "options": {"criterion": "quality", "direction": "max"}}
        return {
            "criteria": [quality],
            "selector": {"name": "cascade", "options": {"first": _threshold(opts), "then": then}},
        }
    crit = {
        "name": "necessity",
        "options": {
            "model": opts["seed_model"],
            "quality_model": opts["model"],
            "embedder": opts["embedder"],
            "quality_mode": opts["quality_mode"],
            "quality_value": opts["quality_value"],
            "seed_k": opts["seed_k"],
            "epochs": opts["epochs"],
            "max_new_tokens": opts["max_new_tokens"],
        },
    }
    return {"criteria": [crit], "selector": {"name": "necessity", "options": {}}}


_reg(
    "mods",
    Recipe(
        criteria=[],
        selector={"name": "necessity", "options": {}},
        budget={"ratio": 0.0192},
        embeddings=True,
        derive=_mods,
        notes="Stage 1: a quality scorer rates every (instruction, input, output) and rows at or above the "
        "threshold are kept; stage 2: greedy k-center on sentence embeddings picks the seed set (seed_k rows, "
        "from the best-rated row); stage 3: LoRA on the seed, the seed-tuned model answers every other "
        "high-quality instruction, the same scorer rates those answers, and a k-center set of the rows answered "
        "below the stage-1 bar is added until the budget. Differs from the paper: the quality scorer is a local "
        "causal LM's expected rating (the paper: a DeBERTa reward model), the fine-tune is LoRA (the paper: full "
        "fine-tuning), and the augmentation k-center starts from the worst-answered row. stages=2 is the previous "
        "two-stage recipe (the budget all goes to k-center); stages=1 the threshold alone. Cost of stage 3: one "
        "LoRA fine-tune on seed_k rows, generation (max_new_tokens) for every other high-quality row and a second "
        "quality pass over them.",
    ),
    doc="MoDS: quality threshold, k-center seed set, then the rows the seed-tuned model answers badly",
    options=[
        _MODEL,
        _EMB,
        Option("quality_mode", "quantile", "quality threshold mode", ("quantile", "absolute", "knee")),
        Option("quality_value", 0.5, "quantile or absolute quality threshold"),
        Option(
            "stages", 3, "1: quality threshold, 2: + k-center seed, 3: + necessity (fine-tunes)", (1, 2, 3), type=int
        ),
        Option("seed_model", None, "stage 3: the LM fine-tuned on the seed (default: the default LM)"),
        Option("seed_k", None, "stage 3: seed-set size (criterion default 1000, the paper's)", type=int, min=1),
        Option("epochs", None, "stage 3: LoRA epochs on the seed (criterion default 3)", type=int, min=1),
        Option("max_new_tokens", None, "stage 3: answer length (criterion default 256)", type=int, min=1),
    ],
    feas=feasibility(1, 5, False, True, False),
    sources=["CASIA-LM/MoDS"],
    paper="Du et al., MoDS: Model-oriented Data Selection for Instruction Tuning, 2023",
)
