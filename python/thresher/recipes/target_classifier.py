"""Recipe ``target_classifier``: a classifier between the target set and the pool picks the rows."""

from __future__ import annotations

from ..registry import RECIPES, Option
from . import Recipe, feasibility


def _steps(opts: dict) -> dict:
    """The criterion's options; embedding options only with embedding features (a run-wide --embedder
    does not reach an n-gram classifier)."""
    keep = {k: opts.get(k) for k in ("target", "features", "negatives", "embedder", "cache_dir")}
    if opts.get("features") == "ngrams":
        keep.pop("embedder")
        keep.pop("cache_dir")
    return {"criteria": [{"name": "target_classifier", "options": keep}]}


RECIPES.register(
    "target_classifier",
    doc="targeted selection by a logistic regression between the target set and a pool sample (log-odds); "
    "tells sibling tasks apart where similarity to the target mean does not",
    options=[
        Option("target", None, "target set file (any reader format); groups from its `group`/`task` column"),
        Option("features", "ngrams", "ngrams (hashed n-grams), embedding or both", ("ngrams", "embedding", "both")),
        Option("embedder", None, "embedding features: sentence-transformers model or lm:MODEL (criterion default)"),
        Option("negatives", None, "pool rows sampled as negatives (criterion default 1000)", type=int, min=1),
        Option("cache_dir", None, "embedding cache folder shared across runs", type=str),
    ],
    feasibility=feasibility(0, 2, True, False, False),
    sources=["thresher (quality-classifier approach, as in GPT-3 / DCLM filtering, applied to a target set)"],
    paper="-",
)(
    Recipe(
        criteria=[{"name": "target_classifier", "options": {"target": "$target"}}],
        derive=_steps,
        selector={"name": "topk", "options": {"criterion": "target_classifier", "direction": "max"}},
        budget={"ratio": 0.05},
        notes="Per target group, an L2-regularised class-balanced logistic regression (L-BFGS) between the group's "
        "target rows (positives) and 1,000 seeded pool rows plus the other groups' target rows (negatives); a "
        "row's score is the max over groups of the log-odds; keep the top 5%.",
    )
)
