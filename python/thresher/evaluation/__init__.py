"""Evaluation of selectors: the survey's unified comparison and proxy fine-tuning.

* :mod:`.comparison`: SDF, PIR per setting, efficiency against l_base,
  simplicity / flexibility penalties, dense ranks, feasibility rank.
* :mod:`.leaderboard`: the twelve published methods with provenance (+ MoDS, excluded).
* :mod:`.runs`: RUNS.yaml for ``thresher compare`` and recipe feasibility inputs.
* :mod:`.plots`: efficiency / feasibility plots and the HTML report.
* :mod:`.proxy`: ``thresher evaluate`` (LoRA proxy fine-tuning of a selection); :mod:`.lora`: the
  fine-tuning and measurement of one model.
* :mod:`.closed_set`: closed-set accuracy (label log-likelihood argmax on tasks with a small label set).
* :mod:`.arms`: several arms (selections, recipes, random, full) at one SDF over several seeds; the PIR table.
"""

from .comparison import (  # noqa: F401
    FEASIBILITY_FIELDS,
    L_BASE,
    OTHER_BENCH_MAP,
    SAME_BENCH_MAP,
    SETTINGS,
    SUPPORTED_SETTINGS,
    BaselineLine,
    Feasibility,
    FlexibilityWeights,
    LinearMap,
    Method,
    SimplicityWeights,
    check_sdf,
    compare_methods,
    dense_rank,
    efficiency_ranks,
    feasibility_ranks,
    flexibility_penalty,
    mean_ratio,
    perpendicular_distance,
    pir,
    pir_from_wtl,
    residual,
    sdf,
    simplicity_penalty,
)
from .leaderboard import PUBLISHED, PublishedMethod, leaderboard, published, published_methods  # noqa: F401
from .runs import feasibility_from_recipe, load_runs, parse_runs, run_entry, run_to_method  # noqa: F401

__all__ = [
    "FEASIBILITY_FIELDS",
    "L_BASE",
    "OTHER_BENCH_MAP",
    "SAME_BENCH_MAP",
    "SETTINGS",
    "SUPPORTED_SETTINGS",
    "BaselineLine",
    "Feasibility",
    "FlexibilityWeights",
    "LinearMap",
    "Method",
    "SimplicityWeights",
    "check_sdf",
    "compare_methods",
    "dense_rank",
    "efficiency_ranks",
    "feasibility_ranks",
    "flexibility_penalty",
    "mean_ratio",
    "perpendicular_distance",
    "pir",
    "pir_from_wtl",
    "residual",
    "sdf",
    "simplicity_penalty",
    "PUBLISHED",
    "PublishedMethod",
    "leaderboard",
    "published",
    "published_methods",
    "feasibility_from_recipe",
    "load_runs",
    "parse_runs",
    "run_entry",
    "run_to_method",
]
