"""Recipe ``rds``: representation-based data selection with the LM's own hidden states (RDS+)."""

from __future__ import annotations

from ..registry import RECIPES, Option
from . import Recipe, feasibility

TARGET = Option("target", None, "target set file (any reader format); groups from its `group`/`task` column")
CACHE = Option(
    "cache_dir", None, "embedding cache folder shared across runs (the pool is embedded once for many targets)"
)

RECIPES.register(
    "rds",
    doc="RDS+: similarity of the LM's position-weighted mean-pooled hidden states to a target set",
    options=[
        TARGET,
        Option("embedder", "lm:default", "lm:MODEL (hidden states, RDS+) or a sentence-transformers model (RDS)"),
        Option("aggregate", "max", "max (RDS+: best target row), mean or topk_mean", ("max", "mean", "topk_mean")),
        Option("layer", None, "hidden-state layer of lm: embedders (default: the last)", type=int),
        CACHE,
    ],
    feasibility=feasibility(0, 2, False, False, False),
    sources=["hamishivi/automated-instruction-selection: minimal_multitask/compute_influence_cosinesim.py"],
    paper="Ivison et al., Large-Scale Data Selection for Instruction Tuning, 2025",
)(
    Recipe(
        criteria=[
            {
                "name": "target_similarity",
                "options": {
                    "target": "$target",
                    "embedder": "$embedder",
                    "aggregate": "$aggregate",
                    "layer": "$layer",
                    "cache_dir": "$cache_dir",
                },
            }
        ],
        selector={"name": "topk", "options": {"criterion": "target_similarity", "direction": "max"}},
        budget={"ratio": 0.05},
        notes="Hidden states of the final layer of the model being tuned, weighted mean over tokens (token t of L "
        "weighs t / sum(1..L), SGPT's position weighting), L2-normalised; a sample's score is its max cosine "
        "over the target rows (aggregate=max), max over target groups; keep the top 5%. "
        "embedder=default gives RDS with sentence embeddings.",
    )
)
