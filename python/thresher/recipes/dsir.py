"""Recipe ``dsir``: importance resampling with hashed n-gram models (Xie et al., 2023)."""

from __future__ import annotations

from ..registry import RECIPES, Option
from . import Recipe, feasibility

RECIPES.register(
    "dsir",
    doc="DSIR: hashed unigram+bigram importance weights log p_target(x) - log p_pool(x), Gumbel-top-k resampling",
    options=[
        Option("target", None, "target set file (any reader format)"),
        Option("buckets", None, "hash buckets (criterion default 10000)", type=int, min=1),
        Option("selection", "gumbel_topk", "gumbel_topk (DSIR's resampling) or topk", ("gumbel_topk", "topk")),
        Option(
            "normalize",
            None,
            "none (the paper's weight) or length (per n-gram; criterion default none)",
            ("none", "length"),
        ),  # fmt: skip
    ],
    feasibility=feasibility(0, 2, True, False, False),
    sources=["p-lambda/dsir: data_selection/hashed_ngram_dsir.py"],
    paper="Xie et al., Data Selection for Language Models via Importance Resampling, NeurIPS 2023",
)(
    Recipe(
        criteria=[{"name": "dsir", "options": {"target": "$target", "buckets": "$buckets", "normalize": "$normalize"}}],
        selector={"name": "$selection", "options": {"criterion": "dsir", "direction": "max"}},
        budget={"ratio": 0.05},
        notes="Word-punct tokens, unigrams and bigrams hashed (blake2b) into 10,000 buckets; add-one smoothed "
        "bag-of-n-grams models of the target set and of the whole pool; importance weight = sum of count x log "
        "ratio; k rows resampled without replacement with probability proportional to the weights "
        "(Gumbel-top-k, seeded by --seed); selection=topk keeps the k largest weights.",
    )
)
