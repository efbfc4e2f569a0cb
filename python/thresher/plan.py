"""A run's configuration and its plan: what to score, how to select, how much.

:class:`PipelineConfig` is everything a run needs (the Python API, a config file or
the CLI fill it in). :func:`make_plan` resolves it to concrete steps (a recipe is
expanded, explicit ``criteria``/``selector``/``filters`` override it) and validates
every name, option and budget against the registries *before* any data is read or
scored: a mistake raises :class:`~thresher.errors.OptionError` naming the option.

The recipe is looked up in the ``RECIPES`` registry (its :class:`~thresher.recipes.Recipe`
expands itself), so this module does not import :mod:`thresher.recipes`: recipes build
their steps from :class:`Step`, defined here.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from .device import DTYPE_CHOICES, check_device
from .errors import OptionError
from .registry import CRITERIA, ENGINES, RECIPES, SELECTORS, Entry, _load_builtins
from .selectors.base import check_options, columns_read, default_budget, token_budget_refusal

TOKENS = "tokens"
# Columns a filter or a selector may name besides the criteria's own.
BUILTIN_COLUMNS = frozenset({TOKENS, "group", "id"})

_FILTER = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|!=|<|>)\s*(-?[\d.eE+-]+|nan)\s*$")
# A column name written by users (``as:``): it names files in the cache, so no path
# separators, no dots (they separate a criterion from its components), no '..'.
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def check_alias(alias: Any, what: str = "criteria") -> Optional[str]:
    """``alias`` if it is a valid column name (letters, digits, ``_``, ``-``); OptionError otherwise."""
    if alias is None:
        return None
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise OptionError(
            f"{what}: 'as: {alias}' is not a valid column name; use letters, digits, '_' or '-' "
            "(starting with a letter, no dots or path separators)"
        )
    return alias


# ------------------------------------------------------------------ config
@dataclass
class Step:
    """A criterion or selector with options; ``alias`` (``as:`` in configs) names the
    column when one criterion is used twice (DEITA's complexity and quality ratings)."""

    name: str
    options: dict = field(default_factory=dict)
    alias: Optional[str] = None

    def __post_init__(self) -> None:
        check_alias(self.alias)

    @property
    def col(self) -> str:
        return self.alias or self.name

    @classmethod
    def of(cls, x: Any, what: str) -> "Step":
        if isinstance(x, Step):
            return Step(x.name, dict(x.options), x.alias)
        if isinstance(x, str):
            return Step(x, {})
        if isinstance(x, dict) and "name" in x:
            extra = set(x) - {"name", "options", "as"}
            if extra:
                raise OptionError(f"{what}: unknown key(s) {sorted(extra)}; write {{name: ..., options: {{...}}}}")
            opts = x.get("options") or {}
            if not isinstance(opts, dict):
                raise OptionError(f"{what} {x['name']}: options must be a mapping, got {opts!r}")
            return Step(str(x["name"]), dict(opts), check_alias(x.get("as"), what))
        raise OptionError(f"{what}: expected a name or {{name: ..., options: {{...}}}}, got {x!r}")


def _config_plugins(names: Any, base: Optional[Path]) -> list:
    """A config file's ``plugins:`` list (files relative to the config file)."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise OptionError(f"config: plugins: expected a list of module names or .py files, got {names!r}")
    is_file = [n.endswith(".py") or "/" in n or os.sep in n for n in names]
    return [str(base / n) if f and base is not None and not os.path.isabs(n) else n for n, f in zip(names, is_file)]


#: Seconds between checkpoints inside a shard (``PipelineConfig.checkpoint_s``; thresher.pipeline.checkpoint).
CHECKPOINT_S = 60.0


@dataclass
class PipelineConfig:
    """Everything a run needs. ``recipe`` expands into criteria/selector/filters;
    explicit ``criteria``/``selector`` override it. One budget: ``k``, ``ratio``
    (of the pool) or ``tokens`` (sum of approximate tokens of the selected rows)."""

    data: Any
    out: Optional[Any] = None
    recipe: Optional[str] = None
    recipe_options: dict = field(default_factory=dict)
    criteria: list = field(default_factory=list)
    selector: Optional[Any] = None
    filters: list = field(default_factory=list)
    k: Optional[int] = None
    ratio: Optional[float] = None
    tokens: Optional[int] = None
    model: Optional[str] = None
    embedder: Optional[str] = None
    # Run-wide device/dtype (thresher.device: auto, cpu, cuda, cuda:N / auto, float32, bfloat16, float16):
    # given to every criterion that takes a ``device``/``dtype`` option and was not given one.
    device: Optional[str] = None
    dtype: Optional[str] = None
    format: Optional[str] = None
    split: Optional[str] = None  # one split of a DatasetDict / load_dataset id
    streaming: bool = False  # load_dataset(..., streaming=True) for a dataset id
    fields: Optional[dict] = None
    group_field: Optional[str] = None
    on_bad_row: str = "error"
    shard_size: int = 4096
    # Seconds between checkpoints inside a shard (the rows scored so far are saved; 0: none).
    checkpoint_s: float = CHECKPOINT_S
    limit: Optional[int] = None
    seed: int = 0
    cache_dir: Optional[Any] = None
    overwrite: bool = False
    report: bool = True
    engine: str = "local"
    engine_options: dict = field(default_factory=dict)
    quiet: bool = False
    # Code to import (modules or .py files registering criteria/selectors/recipes). ``plugins``:
    # named by the caller (CLI --plugin, or Python code), loaded. ``config_plugins``: named by a
    # config file (its ``plugins:`` key), loaded only with ``allow_plugins=True`` (--allow-plugins),
    # which a config file cannot set itself.
    plugins: list = field(default_factory=list)
    score_only: bool = False
    # Outputs: the id field of the written rows, their score columns (with_scores), rejected.<ext>.
    id_column: str = "id"
    with_scores: bool = False
    write_rejected: bool = False
    allow_plugins: bool = False
    config_plugins: list = field(default_factory=list)
    # Options handed to the recipe and to every criterion that declares them (CLI --max-length,
    # --device, ...); an explicit criterion/recipe option wins; one that nothing takes is an error.
    criterion_defaults: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict, *, base: Optional[Path] = None) -> "PipelineConfig":
        if "allow_plugins" in d:
            raise OptionError(
                "config: allow_plugins cannot be set in a config file (loading code must be allowed where the "
                "command is run): pass --allow-plugins on the command line, or allow_plugins=True in Python"
            )
        known = set(cls.__dataclass_fields__) - {"allow_plugins", "config_plugins"}
        unknown = set(d) - known
        if unknown:
            raise OptionError(f"config: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "data" not in d:
            raise OptionError("config: missing key 'data' (the pool to select from)")
        if base is not None:
            for key in ("data", "out", "cache_dir"):
                if d.get(key) is not None and not os.path.isabs(str(d[key])):
                    d[key] = str(base / str(d[key]))
        d["config_plugins"] = _config_plugins(d.pop("plugins", None), base)
        return cls(**d)

    @classmethod
    def from_file(cls, path: Any) -> "PipelineConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config: {path} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            d = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise OptionError(f"config: {path}: cannot parse ({exc})") from None
        if not isinstance(d, dict):
            raise OptionError(f"config: {path}: expected a mapping at the top level")
        return cls.from_dict(d, base=path.parent)

    def budget(self) -> dict:
        """The budget keys that are set (``k``, ``ratio``, ``tokens``)."""
        return {x: getattr(self, x) for x in ("k", "ratio", "tokens") if getattr(self, x) is not None}


@dataclass
class Plan:
    """A recipe or config resolved to concrete steps."""

    criteria: list
    selector: Step
    filters: list
    needs_embeddings: bool
    recipe: Optional[str] = None
    recipe_options: dict = field(default_factory=dict)
    ratio_base: Optional[int] = None  # recipe's reference semantics: k = int(ratio_base * ratio)
    budget: dict = field(default_factory=dict)  # the recipe's default budget
    budget_base: str = "pool"  # what a ratio is a fraction of: "pool" (every row) or "eligible" (after filters)

    def describe(self) -> dict:
        return {
            "recipe": self.recipe,
            "recipe_options": self.recipe_options,
            "criteria": [asdict(c) for c in self.criteria],
            "selector": asdict(self.selector),
            "filters": list(self.filters),
            "ratio_base": self.ratio_base,
            "budget_base": self.budget_base,
        }


# ------------------------------------------------------------------ planning
def recipe_options(
    entry: Entry, options: Optional[dict], *, model: Optional[str] = None, embedder: Optional[str] = None
) -> dict:
    """A recipe's options resolved, with the run-wide ``model``/``embedder`` where the recipe takes them."""
    given = dict(options or {})
    if model is not None and "model" in entry.options and "model" not in given:
        given["model"] = model
    if embedder is not None and "embedder" in entry.options and "embedder" not in given:
        given["embedder"] = embedder
    return entry.resolve_options(given)


def _from_recipe(cfg: PipelineConfig, plan: Plan) -> None:
    if not cfg.recipe:
        return
    entry = RECIPES.get(cfg.recipe)
    shared = {k: v for k, v in (cfg.criterion_defaults or {}).items() if k in entry.options}
    opts = recipe_options(entry, {**shared, **(cfg.recipe_options or {})}, model=cfg.model, embedder=cfg.embedder)
    r = entry.obj.expand(opts)
    plan.criteria, plan.selector, plan.filters = list(r.criteria), r.selector, list(r.filters)
    plan.needs_embeddings, plan.recipe_options = bool(r.needs_embeddings), opts
    plan.ratio_base = r.budget.get("ratio_base")
    plan.budget_base = check_budget_base(r.budget.get("base", "pool"), cfg.recipe)
    plan.budget = {k: v for k, v in r.budget.items() if k in ("k", "ratio", "tokens")}


def _default_selector(cfg: PipelineConfig, criteria: list, selector: Optional[Step]) -> Step:
    if not criteria and (cfg.score_only or selector is None or selector.name != "random"):
        raise OptionError("criteria: give a recipe (--recipe NAME) or at least one criterion")
    if selector is not None:
        return selector
    if cfg.score_only:
        return Step("random", {})  # not run: score-only
    if len(criteria) == 1:
        return Step("topk", {"criterion": criteria[0].col})
    raise OptionError("selector: several criteria need a selector (e.g. pareto, weighted, rrf)")


def _resolve_criteria(cfg: PipelineConfig, criteria: list) -> None:
    seen: set = set()
    for c in criteria:
        entry = CRITERIA.get(c.name)
        if cfg.model and "model" in entry.options and "model" not in c.options:
            c.options["model"] = cfg.model
        if cfg.embedder and "embedder" in entry.options and "embedder" not in c.options:
            c.options["embedder"] = cfg.embedder
        for k in ("device", "dtype"):
            if getattr(cfg, k) is not None and k in entry.options and k not in c.options:
                c.options[k] = getattr(cfg, k)
        for k, v in (cfg.criterion_defaults or {}).items():
            if k in entry.options and k not in c.options:
                c.options[k] = v
        c.options = entry.resolve_options(c.options)
        if c.col in seen:
            raise OptionError(f"criteria: {c.col!r} given twice (use 'as: NAME' to score one criterion twice)")
        seen.add(c.col)


def _check_defaults_used(cfg: PipelineConfig, plan: Plan) -> None:
    """No option accepted and ignored: each of ``criterion_defaults`` must reach the recipe or a criterion."""
    taken = set(plan.recipe_options) | {k for c in plan.criteria for k in CRITERIA.get(c.name).options}
    unused = sorted(set(cfg.criterion_defaults or {}) - taken)
    if unused:
        raise OptionError(
            f"option(s) {unused}: no criterion or recipe of this run takes them "
            f"(criteria: {[c.name for c in plan.criteria]})"
        )


def _resolve_selector(selector: Step, criteria: list) -> bool:
    """Fill the selector's criterion (the run's one criterion) or objectives (every criterion of the run, each
    in its registered direction), validate its options; True when it needs embeddings."""
    sel = SELECTORS.get(selector.name)
    selector.options = dict(selector.options)
    if "objectives" in sel.options and selector.options.get("objectives") is None and criteria:
        selector.options["objectives"] = [c.col for c in criteria]
    if "criterion" in sel.options and not selector.options.get("criterion"):
        if len(criteria) != 1:
            raise OptionError(
                f"selector {selector.name}: name the criterion to select on (one of {[c.col for c in criteria]})"
            )
        selector.options["criterion"] = criteria[0].col
    resolved = sel.resolve_options(selector.options)
    check_options(sel, resolved)
    needs = _needs_embeddings(sel, resolved)
    for value in resolved.values():  # nested stages (cascade's first/then): checked, and their needs too
        if isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"] in SELECTORS:
            stage = SELECTORS.get(value["name"])
            opts = stage.resolve_options(dict(value.get("options") or {}))
            check_options(stage, opts)
            needs = needs or _needs_embeddings(stage, opts)
    return needs


def _needs_embeddings(sel: Any, resolved: dict) -> bool:
    return "embeddings" in tuple(sel.meta.get("needs", ())) or resolved.get("diversity_tau") is not None


def make_plan(cfg: PipelineConfig) -> Plan:
    """The run's concrete steps, validated against the registries (see :func:`validate`)."""
    _load_builtins()
    plan = Plan(criteria=[], selector=Step("random"), filters=[], needs_embeddings=False, recipe=cfg.recipe)
    _from_recipe(cfg, plan)
    criteria = [Step.of(c, "criteria") for c in cfg.criteria] if cfg.criteria else plan.criteria
    given = Step.of(cfg.selector, "selector") if cfg.selector is not None else (plan.selector if cfg.recipe else None)
    plan.criteria, plan.selector = criteria, _default_selector(cfg, criteria, given)
    if not cfg.budget() and not plan.budget:  # a threshold alone sizes its selection
        plan.budget = default_budget(SELECTORS.get(plan.selector.name))
    if cfg.filters:
        plan.filters = list(cfg.filters)
    _resolve_criteria(cfg, plan.criteria)
    _check_defaults_used(cfg, plan)
    plan.needs_embeddings = _resolve_selector(plan.selector, plan.criteria) or plan.needs_embeddings
    validate(cfg, plan)
    return plan


# ------------------------------------------------------------------ validation
def validate(cfg: PipelineConfig, plan: Plan) -> None:
    """Every check that needs no data: budget, filters, the selector's columns, engine, shards."""
    if not cfg.score_only:
        check_budget(cfg.budget() or plan.budget)
        if "tokens" in (cfg.budget() or plan.budget):
            why = token_budget_refusal(SELECTORS.get(plan.selector.name), plan.selector.options)
            if why:
                raise OptionError(f"selector {plan.selector.name}: no token budget (--tokens): {why}")
    cols = {c.col for c in plan.criteria} | BUILTIN_COLUMNS
    for f in plan.filters:
        name = parse_filter(f)[0]
        if name.split(".")[0] not in cols:
            raise OptionError(f"filters: {f!r} names column {name!r}, not among the criteria {sorted(cols)}")
    if plan.criteria:
        for name in columns_read(SELECTORS.get(plan.selector.name), plan.selector.options):
            if name.split(".")[0] not in cols:
                raise OptionError(
                    f"selector {plan.selector.name}: reads column {name!r}, not among the criteria {sorted(cols)}"
                )
    ENGINES.get(cfg.engine).resolve_options(dict(cfg.engine_options or {}))
    check_devices(cfg, plan)
    if isinstance(cfg.shard_size, bool) or not isinstance(cfg.shard_size, int) or cfg.shard_size < 1:
        raise OptionError(f"shard_size: expected a positive integer, got {cfg.shard_size!r}")
    cs = cfg.checkpoint_s
    if isinstance(cs, bool) or not isinstance(cs, (int, float)) or not cs >= 0 or cs == float("inf"):
        raise OptionError(f"checkpoint_s: expected a number of seconds >= 0 (0: no checkpoints), got {cs!r}")
    if cfg.limit is not None and (isinstance(cfg.limit, bool) or not isinstance(cfg.limit, int) or cfg.limit < 1):
        raise OptionError(f"limit: expected a positive integer, got {cfg.limit!r}")
    if not isinstance(cfg.id_column, str) or not _ALIAS.match(cfg.id_column):
        raise OptionError(f"id_column: expected a field name (letters, digits, '_', '-'), got {cfg.id_column!r}")
    if cfg.on_bad_row not in ("error", "skip"):
        raise OptionError(f"on_bad_row: expected 'error' or 'skip', got {cfg.on_bad_row!r}")


def check_devices(cfg: PipelineConfig, plan: Plan) -> None:
    """The form of the run's and each criterion's ``device``/``dtype`` (whether the device exists is
    checked where a model is loaded: a plan may be made on a machine without the GPU)."""
    if cfg.dtype is not None and str(cfg.dtype).lower() not in DTYPE_CHOICES:
        raise OptionError(f"dtype: expected one of {list(DTYPE_CHOICES)}, got {cfg.dtype!r}")
    check_device(cfg.device)
    for c in plan.criteria:
        if c.options.get("device") is not None:
            try:
                check_device(c.options["device"])
            except OptionError as exc:
                raise OptionError(f"criterion {c.col}: {exc}") from None


def check_budget(budget: dict) -> None:
    """One of ``k`` (integer >= 0), ``ratio`` (in (0, 1]) or ``tokens`` (integer > 0)."""
    if len(budget) > 1:
        raise OptionError(f"budget: give one of k, ratio, tokens (got {sorted(budget)})")
    if not budget:
        raise OptionError("budget: give one of k, ratio or tokens (--k N | --ratio R | --tokens T)")
    k, ratio, tokens = budget.get("k"), budget.get("ratio"), budget.get("tokens")
    if "k" in budget and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise OptionError(f"k: expected a non-negative integer, got {k!r}")
    if "ratio" in budget and not _fraction(ratio):
        raise OptionError(f"ratio: expected a fraction in (0, 1], got {ratio!r}")
    if "tokens" in budget and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0):
        raise OptionError(f"tokens: expected a positive integer, got {tokens!r}")


def _fraction(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 < float(x) <= 1.0


def parse_filter(expr: str) -> tuple[str, str, float]:
    m = _FILTER.match(str(expr))
    if not m:
        raise OptionError(
            f"filters: cannot read {expr!r}; write one comparison of a score column with a number, e.g. 'ifd < 1' "
            "or 'length.output >= 1' (several filters: repeat --filter, or a list in a config; all must hold)"
        )
    try:
        value = float(m.group(3))
    except ValueError:
        raise OptionError(f"filters: {expr!r}: {m.group(3)!r} is not a number") from None
    return m.group(1), m.group(2), value


def apply_filters(cols: dict, filters: list, n: int) -> np.ndarray:
    ok = np.ones(n, dtype=bool)
    for f in filters:
        name, op, v = parse_filter(f)
        if name not in cols:
            raise OptionError(f"filters: {f!r} names column {name!r}, not among the scores {sorted(cols)}")
        x = cols[name]
        with np.errstate(invalid="ignore"):
            ok &= {"<": x < v, "<=": x <= v, ">": x > v, ">=": x >= v, "==": x == v, "!=": x != v}[op]
    return ok


BUDGET_BASES = ("pool", "eligible")


def check_budget_base(base: Any, recipe: Any = None) -> str:
    """A recipe's budget base: ``pool`` or ``eligible``; OptionError otherwise."""
    if base not in BUDGET_BASES:
        raise OptionError(f"recipe {recipe}: budget base must be one of {BUDGET_BASES}, got {base!r}")
    return str(base)


def budget_k(
    cfg: PipelineConfig,
    n: int,
    ratio_base: Optional[int] = None,
    *,
    eligible: Optional[int] = None,
    base: str = "pool",
) -> int:
    """The number of rows to select from a pool of ``n`` (``n`` for a token budget).

    ``base="eligible"``: a ratio is a fraction of the ``eligible`` rows left after the
    filters, rounded down (Cherry's ``data_by_IFD.py``: ``int(r * #survivors)``);
    ``base="pool"``: of all ``n`` rows, rounded half up (at least 1)."""
    budget = cfg.budget()
    check_budget(budget)
    check_budget_base(base)
    if cfg.k is not None:
        return min(cfg.k, n)
    if cfg.ratio is not None:
        r = float(cfg.ratio)
        if ratio_base is not None:  # reference-code semantics (e.g. Superfiltering's int(52002 * rate))
            return min(n, int(ratio_base * r))
        if base == "eligible":
            m = n if eligible is None else int(eligible)
            return min(m, int(math.floor(r * m)))
        return max(1, int(math.floor(r * n + 0.5))) if n else 0
    return n
