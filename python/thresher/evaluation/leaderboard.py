"""The twelve published methods of the survey's comparison, with provenance.

Values are the inputs of the survey's two tables (Liu et al., arXiv 2406.14115,
NAACL 2025; the authors' ranking tool TEDD-Ranker and its data file), as
transcribed in ``docs/comparison.md``. Residuals and every rank are
*computed* from these inputs by :func:`thresher.evaluation.compare_methods`,
never stored.

Disputed or special values are recorded, not silently resolved:

* LESS: PIR 1.491 is the value used by the tables; the paper's plot shows
  about 1.57. The table value is used (``disputed`` holds the other).
* IFD (Cherry LLM): PIR 1.747 as published; recomputing it from the GPT-4
  judge win/tie/loss counts (kept in ``pir_inputs``) gives 1.7479.
* MoDS (SDF 0.0192, PIR 3.337) is in the authors' data file but excluded from
  the comparison as an outlier. It is kept here with ``excluded=True`` and only
  enters a comparison when asked (``include_excluded=True`` /
  ``thresher compare --include-mods``). Its feasibility inputs are not
  published, so it never enters the feasibility ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .comparison import Feasibility, Method, compare_methods

REFERENCE = (
    "Liu, Ke, Jiang, Li. Take the Essence and Discard the Dross: A Rethinking on Data Selection "
    "for Fine-Tuning Large Language Models. arXiv 2406.14115; NAACL 2025, pp. 6595-6611"
)


@dataclass(frozen=True)
class PublishedMethod:
    name: str
    sdf: float
    pir: float
    feasibility: Optional[Feasibility]
    paper: str
    provenance: str = "survey efficiency and feasibility tables (docs/comparison.md)"
    disputed: dict[str, Any] = field(default_factory=dict)
    pir_inputs: dict[str, Any] = field(default_factory=dict)
    excluded: bool = False
    exclusion_reason: str = ""

    def method(self) -> Method:
        notes = []
        for k, v in self.disputed.items():
            notes.append(f"disputed {k}: {v}")
        if self.excluded:
            notes.append(f"excluded by default: {self.exclusion_reason}")
        return Method(self.name, self.sdf, self.pir, self.feasibility, source=self.paper, notes="; ".join(notes))


def _f(llms, steps, public_code, model_free, dataset_free, proprietary_judge, small_proxy=False) -> Feasibility:
    return Feasibility(
        trained_llms=llms,
        steps=steps,
        public_code=public_code,
        model_free=model_free,
        dataset_free=dataset_free,
        proprietary_judge=proprietary_judge,
        small_proxy=small_proxy,
    )


PUBLISHED: tuple[PublishedMethod, ...] = (
    PublishedMethod(
        "IFD",
        0.05,
        1.747,
        _f(1, 3, True, False, False, False),
        "Li et al. 2024, From Quantity to Quality (Cherry LLM), NAACL",
        pir_inputs={
            "setting": "same_win",
            "judge": "GPT-4",
            "wtl": {
                "Vicuna": (44, 15, 21),
                "Koala": (85, 36, 59),
                "WizardLM": (102, 54, 62),
                "Self-Instruct": (111, 61, 80),
                "LIMA": (165, 59, 76),
            },
        },
    ),
    PublishedMethod(
        "LESS",
        0.05,
        1.491,
        _f(1, 4, True, False, False, False),
        "Xia et al. 2024, LESS: Selecting Influential Data for Targeted Instruction Tuning, ICML",
        disputed={"pir": "the paper's plot shows about 1.57; the table value 1.491 is used"},
    ),
    PublishedMethod(
        "Superfiltering",
        0.05,
        1.475,
        _f(1, 3, True, False, False, False, small_proxy=True),
        "Li et al. 2024, Superfiltering: Weak-to-Strong Data Filtering, ACL",
    ),
    PublishedMethod(
        "SelectIT",
        0.20,
        1.653,
        _f(0, 4, True, True, True, False),
        "Liu et al. 2024, SelectIT: Selective Instruction Tuning via Uncertainty-Aware Self-Reflection",
    ),
    PublishedMethod(
        "InstructionGPT-4",
        0.058,
        1.443,
        _f(30, 4, True, False, True, True),
        "Wei et al. 2023, InstructionGPT-4: A 200-Instruction Paradigm for Fine-Tuning MiniGPT-4",
    ),
    PublishedMethod(
        "Instruction-Mining",
        0.025,
        1.400,
        _f(129, 4, False, False, True, True),
        "Cao et al. 2023, Instruction Mining: Instruction Data Selection for Tuning LLMs",
    ),
    PublishedMethod(
        "SHED",
        0.09,
        1.460,
        _f(500, 3, True, False, False, False),
        "He et al. 2024, SHED: Shapley-Based Automated Dataset Refinement",
    ),
    PublishedMethod(
        "Nuggets",
        0.145,
        1.519,
        _f(0, 4, True, True, True, False),
        "Li et al. 2023, One Shot Learning as Instruction Data Prospector (Nuggets)",
    ),
    PublishedMethod(
        "InsTag",
        0.02,
        1.344,
        _f(0, 3, False, True, True, True),
        "Lu et al. 2023, #InsTag: Instruction Tagging for Analyzing Supervised Fine-tuning",
    ),
    PublishedMethod(
        "CaR",
        0.0196,
        1.343,
        _f(0, 4, True, True, True, False),
        "Ge et al. 2024, Clustering and Ranking: Diversity-preserved Instruction Selection",
    ),
    PublishedMethod(
        "DEITA",
        0.10,
        1.426,
        _f(2, 5, True, False, False, True),
        "Liu et al. 2024, What Makes Good Data for Alignment? (DEITA), ICLR",
    ),
    PublishedMethod(
        "AlpaGasus",
        0.173,
        1.284,
        _f(0, 2, False, True, True, True),
        "Chen et al. 2024, AlpaGasus: Training a Better Alpaca with Fewer Data, ICLR",
    ),
    PublishedMethod(
        "MoDS",
        0.0192,
        3.337,
        None,
        "Du et al. 2023, MoDS: Model-oriented Data Selection for Instruction Tuning",
        provenance="authors' ranking tool data file only (not in the survey's tables)",
        excluded=True,
        exclusion_reason="outlier (PIR 3.337), excluded from the survey's comparison",
    ),
)

BASELINE_NAMES = ("Instruction-Mining", "InstructionGPT-4")


def published(*, include_excluded: bool = False) -> list[PublishedMethod]:
    """The published methods; MoDS (excluded by the survey) only when asked."""
    return [p for p in PUBLISHED if include_excluded or not p.excluded]


def published_methods(*, include_excluded: bool = False) -> list[Method]:
    return [p.method() for p in published(include_excluded=include_excluded)]


def leaderboard(*, include_excluded: bool = False, extra: Optional[list[Method]] = None, **weights: Any):
    """The comparison table of the published methods (plus ``extra`` user methods)."""
    methods = published_methods(include_excluded=include_excluded) + list(extra or [])
    return compare_methods(methods, **weights)
