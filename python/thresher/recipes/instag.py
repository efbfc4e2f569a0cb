"""InsTag: intention tags from a tagger LM, complexity-first diverse sampling."""

from __future__ import annotations

from ..registry import Option
from . import Recipe, _reg, feasibility

_reg(
    "instag",
    Recipe(
        criteria=[
            {
                "name": "tags",
                "options": {
                    "model": "$model",
                    "min_frequency": "$min_frequency",
                    "merge_similarity": "$merge_similarity",
                    "embedder": "$embedder",
                    "max_new_tokens": "$max_new_tokens",
                },
            }
        ],
        selector={"name": "tag_coverage", "options": {"criterion": "tags"}},
        budget={"ratio": 0.0196},
        notes="A tagger LM names the open-set intention tags of each query as a JSON list of {tag, explanation} "
        "(the paper's prompt, greedy decoding); tags are lower-cased, cleaned, dropped when fewer than "
        "min_frequency rows carry them (the paper: 20), and merged by stem (and, with merge_similarity, by "
        "embedding similarity); complexity = number of tags. Complexity-first diverse sampling walks rows by "
        "complexity and takes a row only if it adds an uncovered tag, in rounds until the budget (the paper: 6k "
        "of 306k, ~1.96%). Differs from the paper: the tagger is any causal LM (the paper: InsTagger, a "
        "fine-tuned LLaMA; pass it with model=...), a reply that is not a JSON list is NaN (parse=lenient in the "
        'criterion reads \'"tag": "..."\' pairs), the stemmer is a small suffix stemmer (the paper: NLTK), '
        "similarity merging joins a tag to the first more frequent tag above the threshold (the paper: DBSCAN "
        "on PhraseBERT embeddings) and the paper's association (FP-growth) aggregation is not implemented.",
    ),
    doc="InsTag: open-set intention tags, complexity-first greedy that adds a row only for new tags",
    options=[
        Option("model", None, "tagger LM (default: the default LM; the paper: OFA-Sys/InsTagger)"),
        Option("min_frequency", None, "drop tags carried by fewer rows (criterion default 20)", type=int, min=1),
        Option(
            "merge_similarity",
            None,
            "merge tags with embedding cosine >= this (default off)",
            type=float,
            min=-1,
            max=1,
        ),
        Option("embedder", None, "embedder for merge_similarity"),
        Option("max_new_tokens", None, "tagger reply budget (criterion default 256)", type=int, min=1),
    ],
    feas=feasibility(1, 3, False, True, False),
    sources=["OFA-Sys/InsTag"],
    paper="Lu et al., #InsTag: Instruction Tagging for Analyzing Supervised Fine-tuning of Large Language Models, "
    "ICLR 2024",
)
