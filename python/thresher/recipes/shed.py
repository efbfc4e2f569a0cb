"""SHED: Shapley values of cluster proxies, then quality-ordered or quality-weighted cluster sampling."""

from __future__ import annotations

from ..registry import Option
from . import _EMB, _MODEL, Recipe, _reg, feasibility

_reg(
    "shed",
    Recipe(
        criteria=[
            {
                "name": "shed",
                "options": {
                    "model": "$model",
                    "embedder": "$embedder",
                    "n_clusters": "$n_clusters",
                    "permutations": "$permutations",
                    "group_size": "$group_size",
                    "validation": "$validation",
                },
            }
        ],
        selector={"name": "$sampler", "options": {"criterion": "shed"}},
        budget={"ratio": 0.10},
        variants={
            "sampler": {"qwcs": {"selector": {"temperature": "$temperature"}}},
            "semantics": {"reference": {"criteria": {"shed": {"group_size": 60, "aggregate": "sum"}}}},
        },
        notes="Embed, k-means (reference: 3000 clusters), the proxy closest to each centroid; Monte-Carlo "
        "permutation Shapley value of each proxy with a proxy model's value function, propagated to its cluster; "
        "then QOCS (whole clusters by descending value) or QWCS (seeded draws, cluster probability ~ "
        "exp(value / temperature), a uniform row of it, without replacement). Differs from the paper: the "
        "value of a set of proxies is the drop of the proxy LM's validation loss after LoRA on it (the paper: "
        "dev-set accuracy of a fine-tuned LLaMA-7B); without a validation file, 32 random pool rows validate. "
        "semantics=reference: proxies removed 60 at a time, each getting the group's marginal contribution, "
        "summed over permutations (calculate_s.py). Cost: permutations x ceil(n_clusters / group_size) LoRA "
        "fine-tunes of the proxy model.",
    ),
    doc="SHED: Shapley values of cluster proxies from a proxy model, QOCS or QWCS cluster sampling",
    options=[
        _MODEL,
        _EMB,
        Option("sampler", "qocs", "qocs (quality-ordered) or qwcs (quality-weighted)", ("qocs", "qwcs")),
        Option("temperature", 1.0, "qwcs: cluster weight exp(value / temperature)", min=0, min_exclusive=True),
        Option("n_clusters", None, "k-means clusters (criterion default 3000)", type=int, min=1),
        Option("permutations", None, "Monte-Carlo permutations (criterion default 10)", type=int, min=1),
        Option("group_size", None, "proxies per Monte-Carlo step (criterion default 1)", type=int, min=1),
        Option("validation", None, "validation samples (file)", type=str),
        Option("semantics", "paper", "paper or the reference code's estimator", ("paper", "reference")),
    ],
    feas=feasibility(1, 4, False, False, False, small_proxy=True),
    sources=[
        "Lucidreamer9/SHED-Shapley-Based-Automated-Dataset-Refinement: src/calculate_s.py, sample_QOCS.py, "
        "sample_QWCS.py"
    ],
    paper="He et al., SHED: Shapley-Based Automated Dataset Refinement for Instruction Fine-Tuning, NeurIPS 2024",
)
