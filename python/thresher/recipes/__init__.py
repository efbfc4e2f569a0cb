"""Recipes: the published selection methods as data (features -> criteria -> selector).

A recipe is a :class:`Recipe` registered in ``RECIPES`` with documented options.
Its steps are plain data; an option's value is substituted wherever the steps say
``"$option"`` (a ``None`` value drops that criterion option, so the criterion's
own default applies), and ``variants`` patch the steps for an option's value
(e.g. ``semantics: reference`` switches to the reference code's behaviour where it
departs from the paper). A recipe whose steps depend on its options in a way data
cannot say (multi-objective: the criteria are the objectives) gives a ``derive``
function. Every recipe declares ``meta["feasibility"]`` (the inputs of the survey's
simplicity and flexibility penalties, read by ``thresher compare``) and its sources.
Definitions: docs/methods.md; feasibility: docs/comparison.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from ..plan import Step, recipe_options
from ..registry import CRITERIA, RECIPES, Option
from ..selectors.base import criterion_direction, parse_objectives


@dataclass
class ExpandedRecipe:
    criteria: list
    selector: Any
    filters: list
    needs_embeddings: bool
    budget: dict
    recipe_options: dict


@dataclass
class Recipe:
    criteria: list  # [{"name", "options", optional "as"}]
    selector: dict  # {"name", "options"}
    filters: list = field(default_factory=list)
    budget: dict = field(default_factory=lambda: {"ratio": 0.05})
    embeddings: bool = False  # the selector needs sentence embeddings
    variants: dict = field(default_factory=dict)  # option -> value -> {"criteria": {name: {opts}}, ...}
    notes: str = ""
    # options -> {"criteria": [...], "filters": [...], "selector": {...}} (each key optional): steps from the options
    derive: Optional[Callable[[dict], dict]] = None

    def _apply_variants(self, opts: dict) -> None:
        for opt, by_value in self.variants.items():
            patch = by_value.get(opts.get(opt))
            if not patch:
                continue
            for cname, copts in patch.get("criteria", {}).items():
                for c in self.criteria:
                    if c.get("as", c["name"]) == cname:
                        cur = c.setdefault("options", {})
                        cur.update({k: v for k, v in copts.items() if not _user_set(cur.get(k), opts)})
            if "selector" in patch:
                self.selector.setdefault("options", {}).update(patch["selector"])
            if "filters" in patch:
                self.filters = list(patch["filters"])
            if "budget" in patch:
                self.budget = dict(patch["budget"])

    def expand(self, opts: dict) -> ExpandedRecipe:
        """The concrete steps for resolved options ``opts`` (the recipe itself is not changed)."""
        r = copy.deepcopy(self)
        r._apply_variants(opts)
        crit_specs, filters = _subst(r.criteria, opts), _subst(r.filters, opts)
        if r.derive is not None:
            derived = r.derive(opts)
            crit_specs = derived.get("criteria", crit_specs)
            filters = derived.get("filters", filters)
            if "selector" in derived:  # a recipe whose selector depends on its options (mods' stages)
                r.selector = derived["selector"]
        criteria = [
            Step(c["name"], {k: v for k, v in (c.get("options") or {}).items() if v is not None}, c.get("as"))
            for c in crit_specs
        ]
        sel = _subst(r.selector, opts)
        sel_opts = {k: v for k, v in (sel.get("options") or {}).items() if v is not None}
        needs = bool(r.embeddings) or sel_opts.get("diversity_tau") is not None
        return ExpandedRecipe(
            criteria, Step(sel["name"], sel_opts), [f for f in filters if f], needs, dict(r.budget), opts
        )


def _user_set(value: Any, opts: dict) -> bool:
    """Whether ``value`` is a ``"$option"`` placeholder the user gave a value for (a variant keeps it)."""
    return isinstance(value, str) and value.startswith("$") and opts.get(value[1:]) is not None


def _subst(x: Any, opts: dict) -> Any:
    if isinstance(x, str) and x.startswith("$") and x[1:] in opts:
        return opts[x[1:]]
    if isinstance(x, dict):
        return {k: _subst(v, opts) for k, v in x.items()}
    if isinstance(x, list):
        return [_subst(v, opts) for v in x]
    return x


def expand_recipe(
    name: str, options: Optional[dict] = None, *, model: Optional[str] = None, embedder: Optional[str] = None
) -> ExpandedRecipe:
    """Resolve a recipe's options and return its concrete steps."""
    entry = RECIPES.get(name)
    return entry.obj.expand(recipe_options(entry, options, model=model, embedder=embedder))


def _multi_objective(opts: dict) -> dict:
    """One criterion per objective (the recipe's model/embedder options passed to those that take them);
    the IFD filter only when IFD is an objective and ``filters_ifd`` is on."""
    criteria: list = []
    for col, _ in parse_objectives(opts["objectives"]):
        base = col.split(".")[0]
        if base in [c["name"] for c in criteria]:
            continue
        takes = CRITERIA.get(base).options
        shared = {k: opts.get(k) for k in ("model", "max_length", "embedder") if k in takes}
        criteria.append({"name": base, "options": shared})
    has_ifd = any(c["name"] == "ifd" for c in criteria)
    return {"criteria": criteria, "filters": ["ifd <= 1"] if has_ifd and opts.get("filters_ifd", True) else []}


def feasibility(
    trained_llms: int,
    steps: int,
    model_free: bool,
    dataset_free: bool,
    proprietary_judge: bool,
    public_code: bool = True,
    small_proxy: bool = False,
) -> dict:
    return {
        "trained_llms": trained_llms,
        "steps": steps,
        "model_free": model_free,
        "dataset_free": dataset_free,
        "proprietary_judge": proprietary_judge,
        "public_code": public_code,
        "small_proxy": small_proxy,
    }


# DEITA's released scorer prompts, verbatim (hkust-nlp/deita, src/deita/selection/scorer/llama_scorer.py; the
# scorers were fine-tuned on them): {instruction} is the query, DEITA appends the input after a newline.
DEITA_COMPLEXITY_PROMPT = (
    "You are a helpful assistant. Please identify the complexity score of the following user query. \n"
    "##Query: {instruction}{input_block}  \n##Complexity: "
)
DEITA_QUALITY_PROMPT = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
    "Question. \n #Question#:\n{instruction}{input_block}\n#Response#:\n{output} \n##Quality: "
)
# AlpaGasus' judge prompt is thresher's own wording of the published rubric ({input_block}: the input, if any).
ALPAGASUS_PROMPT = (
    "You are a strict grader. Read the instruction, its input (if any) and the response, then rate how "
    "accurate the response is on a scale from 0 (wrong or unhelpful) to 5 (fully accurate). Reply with the "
    "score only.\n#Instruction#:\n{instruction}{input_block}\n#Response#:\n{output}\n#Accuracy score#: "
)
# SelectIT's reference code weights its three rating models 7/20, 13/20 and 70/90 (not summing to 1).
SELECTIT_REFERENCE_WEIGHTS = "0.35,0.65,0.7777777777777778"

_DEITA_RATING = {"score_tokens": "1,2,3,4,5,6", "chat": "no", "turns": "sum"}

_MODEL = Option("model", None, "causal LM for the loss criteria: default (SmolLM2-135M-Instruct), a folder or an HF id")
_MAXLEN = Option(
    "max_length",
    None,
    "max tokens per sample, truncation aligned across the two IFD passes (criterion default when unset)",
)
_EMB = Option("embedder", None, "sentence embedder (default all-MiniLM-L6-v2)")
_SEM = Option(
    "semantics", "paper", "paper (default) or the reference code's behaviour where they differ", ("paper", "reference")
)


def _reg(
    name: str, recipe: Recipe, *, doc: str, options: list, feas: dict, sources: list, paper: str, **meta: Any
) -> None:
    RECIPES.register(name, doc=doc, options=options, feasibility=feas, sources=sources, paper=paper, **meta)(recipe)


_reg(
    "ifd",
    Recipe(
        criteria=[{"name": "ifd", "options": {"model": "$model", "max_length": "$max_length"}}],
        selector={"name": "topk", "options": {"criterion": "ifd", "direction": "max"}},
        filters=["ifd <= 1"],
        budget={"ratio": 0.05, "base": "eligible"},
        notes="IFD = s(A|Q)/s(A); samples with IFD > 1, empty or truncated-away answers (NaN) are dropped; "
        "the top fraction by IFD is kept (5/10/15% released). Budget base: the ratio is a fraction of the "
        "rows left after the filter, rounded down (data_by_IFD.py: int(r * #survivors)). Differs from the "
        "reference: batched scoring (same values); ties go to the lower row.",
    ),
    doc="Cherry LLM: Instruction-Following Difficulty, keep the top fraction by IFD",
    options=[_MODEL, _MAXLEN],
    feas=feasibility(1, 3, False, False, False),
    sources=["tianyi-lab/Cherry_LLM: cherry_seletion/data_analysis.py, data_by_IFD.py"],
    paper="Li et al., From Quantity to Quality: Boosting LLM Performance with Self-Guided Data Selection, NAACL 2024",
)

# Superfiltering's IFD from a small proxy LM (shared by superfiltering and superfiltering-d).
_SUPERFILTERING_IFD = {
    "name": "ifd",
    "options": {"model": "$model", "max_length": "$max_length", "ratio": "ppl", "template": "plain", "context": "bos"},
}

_reg(
    "superfiltering",
    Recipe(
        criteria=[_SUPERFILTERING_IFD],
        selector={"name": "topk", "options": {"criterion": "ifd", "direction": "max"}},
        filters=["ifd < 1"],
        budget={"ratio": 0.05},
        variants={
            "semantics": {
                "reference": {
                    "criteria": {"ifd": {"context": "none", "first_token": "direct", "max_length": 1024}},
                    "budget": {"ratio": 0.05, "ratio_base": 52002},
                }
            }
        },
        notes="IFD as a perplexity ratio exp(s(A|Q) - s(A)) from a small proxy LM, template "
        "'{instruction}\\n{input}\\n' (plain), direct pass after BOS; drop IFD >= 1, keep the top fraction "
        "of the pool. semantics=reference (the reference code): the direct pass has no BOS and drops the first "
        "answer token (the conditional pass keeps it), max_length 1024 (unless max_length is given), and the "
        "keep count is int(52002 * ratio) as hard-coded in select_data.py (Alpaca's size). The reference's bare "
        "`except` that turns failures into IFD = 0 is never reproduced: failures are NaN with a reason.",
    ),
    doc="Superfiltering: IFD from a small proxy LM (GPT-2 in the paper) as a perplexity ratio",
    options=[
        Option("model", "gpt2", "proxy LM (the paper: GPT-2 124M; any causal LM works, e.g. default)"),
        _MAXLEN,
        _SEM,
    ],
    feas=feasibility(1, 3, False, False, False, small_proxy=True),
    sources=["tianyi-lab/Superfiltering: code_ifd/data_analysis.py, code_ifd/select_data.py"],
    paper="Li et al., Superfiltering: Weak-to-Strong Data Filtering for Fast Instruction-Tuning, ACL 2024",
)

_reg(
    "superfiltering-d",
    Recipe(
        criteria=[_SUPERFILTERING_IFD],
        selector={
            "name": "cascade",
            "options": {
                "first": {"name": "topk", "ratio": "$first_ratio", "options": {"criterion": "ifd", "direction": "max"}},
                "then": {"name": "facility_location", "options": {"criterion": "ifd"}},
            },
        },
        filters=["ifd < 1"],
        budget={"ratio": 0.02},
        embeddings=True,
        variants={
            "semantics": {
                "reference": {
                    "selector": {
                        "then": {
                            "name": "facility_location",
                            "options": {
                                "criterion": "ifd",
                                "metric": "euclidean",
                                "n_neighbors": 1_000_000_000,
                                "index_kind": "exact",
                            },
                        }
                    }
                }
            }
        },
        notes="Superfiltering.D: top 20% by IFD, embed with all-MiniLM-L6-v2, facility-location greedy to 2% "
        "of the pool. Differs from the reference (do_fla.py, submodlib): the default kernel is max(cos, 0) on a "
        "64-neighbour graph; semantics=reference uses submodlib's dense euclidean kernel exp(-dist/dim) (every "
        "pair, exact search). The reference's stage sizes are absolute counts (ifd_num, fla_num): pass --k.",
    ),
    doc="Superfiltering.D: IFD prefilter (top 20%), then facility location on sentence embeddings",
    options=[
        Option("model", "gpt2", "proxy LM"),
        _MAXLEN,
        _EMB,
        Option("first_ratio", 0.2, "fraction kept by the IFD stage", min=0, min_exclusive=True, max=1),
        _SEM,
    ],
    feas=feasibility(1, 4, False, False, False, small_proxy=True),
    sources=["tianyi-lab/Superfiltering: code_diversity_fla/do_fla.py"],
    paper="Li et al., Superfiltering, ACL 2024",
)

_reg(
    "deita",
    Recipe(
        criteria=[
            {
                "name": "rating",
                "as": "complexity",
                "options": {"model": "$complexity_model", "prompt": DEITA_COMPLEXITY_PROMPT, **_DEITA_RATING},
            },
            {
                "name": "rating",
                "as": "quality",
                "options": {"model": "$quality_model", "prompt": DEITA_QUALITY_PROMPT, **_DEITA_RATING},
            },
        ],
        selector={
            "name": "aggregate",
            "options": {
                "objectives": ["complexity:max", "quality:max"],
                "method": "product",
                "normalize": "none",
                "diversity_tau": "$tau",
            },
        },
        budget={"ratio": 0.10},
        embeddings=True,
        notes="Evol score = complexity x quality (expected score over the digit tokens 1..6 at the first generated "
        "position, DEITA's released scorer prompts verbatim, no chat template); repr filter: walk by descending "
        "score, keep x if its max cosine similarity to the kept set is <= tau (exact sequential semantics, "
        "float64 re-check near tau). Multi-turn rows: each turn rated and the ratings summed (turns=sum), so the "
        "evol score is (sum_t c_t)(sum_t q_t) where DEITA sums the per-turn products sum_t c_t q_t (equal for "
        "single-turn rows; no option reproduces the per-turn product). The paper embeds with the 7B scorer's last "
        "hidden state; any embedder can be plugged in (--embedder, e.g. lm:<scorer>). A missing digit never "
        "defaults to 3.0 (reference-code behaviour): the probabilities are read for all six digit tokens. Give "
        "the released scorers with complexity_model=hkust-nlp/deita-complexity-scorer, "
        "quality_model=hkust-nlp/deita-quality-scorer.",
    ),
    doc="DEITA: complexity x quality ratings from LM scorers, then the score-first repr filter (tau 0.9)",
    options=[
        Option("complexity_model", None, "DEITA complexity scorer (causal LM); default: the default LM"),
        Option("quality_model", None, "DEITA quality scorer (causal LM); default: the default LM"),
        Option("tau", 0.9, "repr filter cosine-similarity threshold", min=-1, max=1),
        _EMB,
    ],
    # the scorers run locally (DEITA released them): no proprietary judge at selection time; the paper's
    # scorers were trained on ChatGPT ratings, kept as the published inputs
    feas=feasibility(2, 5, False, False, False),
    feasibility_published=feasibility(2, 5, False, False, True),
    sources=["hkust-nlp/deita: src/deita/selection/scorer, src/deita/selection/filter/base.py"],
    paper="Liu et al., What Makes Good Data for Alignment? (DEITA), ICLR 2024",
)

_reg(
    "car",
    Recipe(
        criteria=[{"name": "rating", "as": "quality", "options": {"model": "$model"}}],
        selector={"name": "car", "options": {"criterion": "quality", "n1": "$n1", "n2": "$n2"}},
        budget={"ratio": 0.0196},
        embeddings=True,
        notes="Quality from a small expert scorer; Sentence-BERT embeddings, PCA to 95% variance, k-means with "
        "k = floor(sqrt(N/2)); top n1 by score plus the top n2 of every cluster. Differs from the reference: the "
        "budget caps the union and n1 defaults to the count that fills it (give n1, n2 and --ratio 1 for the "
        "reference's fixed n1/n2 union); the expert scorer is any local LM judge (rating), not CaR's fine-tuned "
        "reward model (give it with model=).",
    ),
    doc="CaR (Clustering and Ranking): quality ranking plus per-cluster top picks",
    options=[
        _MODEL,
        _EMB,
        Option("n1", None, "top-n1 by quality (selector default)", type=int, min=0),
        Option("n2", None, "top-n2 per cluster (selector default)", type=int, min=0),
    ],
    feas=feasibility(0, 4, True, True, False),
    sources=["IronBeliever/CaR"],
    paper="Ge et al., Clustering and Ranking: Diversity-preserved Instruction Selection through Expert-aligned "
    "Quality Estimation, EMNLP 2024",
)

_reg(
    "less",
    Recipe(
        criteria=[
            {
                "name": "less",
                "options": {
                    "target": "$target",
                    "model": "$model",
                    "warmup": "$warmup",
                    "adam": "$adam",
                    "dim": "$dim",
                },
            }
        ],
        selector={"name": "topk", "options": {"criterion": "less", "direction": "max"}},
        budget={"ratio": 0.05},
        notes="Warm-up LoRA on a random 5% (`thresher warmup`: r 128, alpha 512, q/k/v/o, 4 epochs, lr 2e-5 with "
        "3% linear warm-up then linear decay, as LESS), per-sample LoRA gradients transformed by the Adam "
        "state, projected to 8192 dims (Rademacher), cosine against the target set's gradients, "
        "checkpoint-weighted, max over target subtasks; keep the top 5%. adam=less is the published transform "
        "as the reference code computes it (no bias correction, eps inside the root); adam=bias_corrected "
        "is textbook Adam. Differs from the reference: thresher's own projection matrix (same distribution as "
        "fast_jl's, not the same bits), and batched exact per-sample gradients.",
    ),
    doc="LESS: gradient-feature similarity to a target set (needs `thresher warmup` checkpoints)",
    options=[
        _MODEL,
        Option("target", None, "target set (file) whose gradients define the task"),
        Option("warmup", None, "folder written by `thresher warmup` (checkpoints + optimizer states)"),
        Option("adam", "less", "training-gradient transform", ("less", "bias_corrected", "none")),
        Option("dim", None, "projection dimension (criterion default 8192)", type=int, min=1),
    ],
    feas=feasibility(1, 4, False, False, False),
    sources=["princeton-nlp/LESS"],
    paper="Xia et al., LESS: Selecting Influential Data for Targeted Instruction Tuning, ICML 2024",
)

_reg(
    "selectit",
    Recipe(
        criteria=[
            {"name": "selectit", "options": {"models": "$models", "alpha": "$alpha", "model_weights": "$model_weights"}}
        ],
        selector={"name": "topk", "options": {"criterion": "selectit", "direction": "max"}},
        budget={"ratio": 0.20},
        variants={
            "semantics": {
                "reference": {
                    "criteria": {
                        "selectit": {
                            "model_weights": SELECTIT_REFERENCE_WEIGHTS,
                            "normalize_weights": False,
                            "token_sum": "prompts",
                        }
                    }
                }
            }
        },
        notes="K rating prompts; token-, sentence- (mean / (1 + alpha std)) and model-level (weights proportional "
        "to parameter count) uncertainty; keep the top 20%. semantics=reference (self_reflection/*.py): the token "
        "level sums over the first K levels and divides by K - 1 (K prompts; the paper: all L levels / (L - 1)), "
        "and the three models' raw weights 7/20, 13/20, 70/90 (not summing to 1; give three models with "
        "models=[...]). Differs from the reference: the built-in rating prompts are thresher's own wording (give "
        "the release's data/rating_prompt.txt with prompts=); ties go to the lower row (the reference: higher); "
        "multi-turn rows are NaN (the paper defines single turns).",
    ),
    doc="SelectIT: self-reflection rating uncertainty at token, sentence and model level",
    options=[
        Option("models", None, "rating LMs (criterion default: the default LM)"),
        Option("alpha", None, "sentence-level std penalty (criterion default)"),
        Option("model_weights", None, "model-level weights (criterion default: by parameter count)"),
        _SEM,
    ],
    feas=feasibility(0, 4, True, True, False),
    sources=["Blue-Raincoat/SelectIT: self_reflection/*.py"],
    paper="Liu et al., SelectIT: Selective Instruction Tuning for LLMs via Uncertainty-Aware Self-Reflection, "
    "NeurIPS 2024",
)

_reg(
    "nuggets",
    Recipe(
        criteria=[{"name": "nuggets", "options": {"model": "$model", "anchors": "$anchors", "embedder": "$embedder"}}],
        selector={
            "name": "threshold",
            "options": {
                "criterion": "nuggets",
                "direction": "max",
                "mode": "absolute",
                "value": "$threshold",
                "strict": True,
            },
        },
        budget={"ratio": 1.0},
        notes="Golden score GS(z): fraction of anchor tasks whose answer log-probability rises with z as a one-shot "
        "demonstration; keep GS strictly above the threshold (budget caps the count; --ratio 0.01 for the top "
        "1%). Without anchors=, 100 anchors are chosen once per pool as the release does: the row nearest each "
        "k-means centroid of the pool's sentence embeddings (seeded). Differs from the release: its k-means "
        "runs on its own embeddings (give anchors= to use the release's anchor file).",
    ),
    doc="Nuggets: one-shot learning gain over an anchor set (golden score)",
    options=[
        _MODEL,
        Option("anchors", None, "anchor set (file or rows; default: k-means anchors chosen from the pool)"),
        Option("threshold", 0.85, "golden-score threshold (kept: GS > threshold)", min=0, max=1),
        _EMB,
    ],
    feas=feasibility(0, 4, True, True, False),
    sources=["pldlgb/nuggets"],
    paper="Li et al., One-Shot Learning as Instruction Data Prospector for LLMs, ACL 2024",
)

_reg(
    "alpagasus",
    Recipe(
        criteria=[
            {
                "name": "rating",
                "as": "judge",
                "options": {"model": "$model", "prompt": ALPAGASUS_PROMPT, "score_tokens": "0,1,2,3,4,5"},
            }
        ],
        selector={
            "name": "threshold",
            "options": {"criterion": "judge", "direction": "max", "mode": "absolute", "value": "$threshold"},
        },
        budget={"ratio": 1.0},
        notes="A judge grades each (instruction, input, response) for accuracy 0-5; keep score >= 4.5. Differs from "
        "the paper: its judge is ChatGPT generating a score with its own prompt; thresher uses a local causal "
        "LM's expected score over the score tokens with thresher's wording of the rubric (no option reproduces "
        "a proprietary judge).",
    ),
    doc="AlpaGasus with a local judge model: keep samples graded >= 4.5 of 5",
    options=[_MODEL, Option("threshold", 4.5, "keep judge score >= threshold")],
    feas=feasibility(0, 2, True, True, False),
    feasibility_published=feasibility(0, 2, True, True, True, public_code=False),
    sources=["AlpaGasus (paper; no reference selection code)"],
    paper="Chen et al., AlpaGasus: Training a Better Alpaca with Fewer Data, ICLR 2024",
)

_reg(
    "instruction-mining",
    Recipe(
        criteria=[
            {"name": "length"},
            {"name": "mtld", "options": {"field": "output"}},
            {"name": "perplexity", "options": {"model": "$model"}},
            {"name": "knn_distance", "options": {"k": 6, "embedder": "$embedder"}},
        ],
        selector={
            "name": "weighted",
            "options": {
                "objectives": ["length:max", "mtld:max", "perplexity:min", "knn_distance:max"],
                "weights": "$weights",
                "normalize": "zscore",
            },
        },
        budget={"ratio": 0.025},
        notes="Indicators (length, MTLD, perplexity, kNN-6 distance) combined by a linear rule: give the rule's "
        "coefficients with weights=[...] (one per objective, on z-scored indicators oriented so that higher is "
        "better), or fit them with thresher.recipes.fit_linear_rule(indicators, eval_loss) (its weights are "
        "oriented the same way, minimised indicators such as perplexity included). The default equal weights "
        "are thresher's own: the paper's fitted rule is over its reward-model score, length and kNN-6 on raw "
        "values, and the reward-model and UniEval indicators are not built in, so it cannot be shipped as is. "
        "The paper finds the subset size by search: pass --k/--ratio.",
    ),
    doc="Instruction-Mining: natural-language indicators combined by a linear rule",
    options=[_MODEL, _EMB, Option("weights", None, "linear-rule coefficients, one per indicator (default equal)")],
    feas=feasibility(129, 4, False, True, False, public_code=False),
    sources=["Instruction Mining (paper)"],
    paper="Cao et al., Instruction Mining: Instruction Data Selection for Tuning Large Language Models, COLM 2024",
)

_reg(
    "random",
    Recipe(
        criteria=[],
        selector={"name": "random", "options": {}},
        budget={"ratio": 0.05},
        notes="A uniform random subset: the baseline every method is compared with.",
    ),
    doc="uniform random subset (the baseline)",
    options=[],
    feas=feasibility(0, 1, True, True, False),
    sources=["thresher"],
    paper="-",
)

_reg(
    "multi-objective",
    Recipe(
        criteria=[],
        selector={"name": "$method", "options": {"objectives": "$objectives", "diversity_tau": "$diversity_tau"}},
        filters=["ifd <= 1"],
        budget={"ratio": 0.05},
        derive=_multi_objective,
        notes="Any set of criteria combined by Pareto rank (non-dominated fronts, crowding distance within a "
        "front), weighted sum of normalised scores, or reciprocal rank fusion; optional diversity constraint "
        "(max cosine similarity to the kept set <= diversity_tau); sample (--k/--ratio) or token (--tokens) "
        "budget. Default: IFD (SmolLM2) and kNN distance (all-MiniLM-L6-v2), both maximised.",
    ),
    doc="thresher's own: criteria combined by Pareto rank / weighted sum / rank fusion with a diversity constraint",
    options=[
        Option("objectives", ["ifd:max", "knn_distance:max"], "criteria with directions"),
        Option("method", "pareto", "how the objectives are combined", ("pareto", "weighted", "rrf")),
        Option(
            "diversity_tau",
            0.9,
            "max cosine similarity to the kept set (None: no constraint)",
            nullable=True,
            min=-1,
            max=1,
        ),
        Option("filters_ifd", True, "drop IFD > 1 when IFD is an objective"),
        _MODEL,
        _MAXLEN,
        _EMB,
    ],
    feas=feasibility(0, 3, False, True, False),
    sources=["thresher"],
    paper="-",
)


def fit_linear_rule(indicators: Any, target: Any, *, ridge: float = 0.0, directions: Any = None) -> dict:
    """Least-squares linear rule target ~ b0 + sum_j b_j z_j on z-scored (raw, un-oriented) indicators.

    ``indicators``: DataFrame (one column per indicator); ``target``: eval loss per
    row (lower is better). ``directions``: ``"max"``/``"min"`` per indicator, how the
    instruction-mining recipe orients it (default: each column's registered criterion
    direction, e.g. perplexity ``min``; ``max`` for other columns). Returns
    ``{"intercept", "coef": {name: b}, "weights": [...]}``; ``weights`` are ready for the
    recipe: the recipe z-scores ``sigma_j x_j`` (sigma = -1 for a minimised indicator) and
    zscore(-x) = -zscore(x), so weight_j = -b_j * sigma_j makes a higher combined score a
    lower predicted loss.
    """
    X = np.asarray(indicators, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"indicators: expected [N, M] matching target [N], got {X.shape} and {y.shape}")
    if len(y) <= X.shape[1]:
        raise ValueError(f"target: need more rows ({len(y)}) than indicators ({X.shape[1]})")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("indicators: NaN or inf values; drop or impute them first")
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1.0
    Z = np.concatenate([np.ones((len(X), 1)), (X - mu) / sd], axis=1)
    A = Z.T @ Z + ridge * np.diag([0.0] + [1.0] * X.shape[1])
    beta = np.linalg.solve(A, Z.T @ y)
    names = list(getattr(indicators, "columns", range(X.shape[1])))
    dirs = [criterion_direction(str(n)) for n in names] if directions is None else list(directions)
    if len(dirs) != len(names) or any(d not in ("max", "min") for d in dirs):
        raise ValueError(f"directions: expected 'max' or 'min' for each of {len(names)} indicators, got {directions!r}")
    sigma = [1.0 if d == "max" else -1.0 for d in dirs]
    return {
        "intercept": float(beta[0]),
        "coef": {str(n): float(b) for n, b in zip(names, beta[1:])},
        "weights": [float(-b * sg) for b, sg in zip(beta[1:], sigma)],
    }
