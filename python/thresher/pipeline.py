"""The selection pipeline: rows -> criteria -> selector -> outputs.

One pipeline behind the Python API, the config file (``thresher run``) and the CLI
(``thresher select`` / ``score`` / ``demo``)::

    from thresher.pipeline import PipelineConfig, run_pipeline
    res = run_pipeline(PipelineConfig(data="pool.jsonl", recipe="ifd", ratio=0.05, out="sel/"))

Data flow and memory. The pool is streamed in shards of ``shard_size`` rows
(:class:`thresher.io.Source`). For each shard and each criterion the score table is
looked up in the score cache (:class:`thresher.cache.ScoreCache`, keyed by the shard's
content, the scorer's cache key and the thresher version) or computed by the engine
(local or Ray) and written atomically. Texts never outlive their shard: the pipeline
keeps only the numeric columns the selector needs (float64 per objective), the
row -> source-line map (int64) and, for diversity constraints, the embeddings. A
plain ``topk`` selection is fully out-of-core (``thresher.ops.TopKAccumulator``:
O(k) memory). Outputs are written by streaming over the cached shards again.

Outputs in ``out``: ``selected.<input's extension>`` (the input's own format and
field order, rows in input order), ``scores.parquet`` (id, group, tokens, one
column per criterion and its components, ``eligible``, ``selected``, ``rank``),
``manifest.json`` (inputs with checksums, criteria with options and model
fingerprints, selector, budget, seed, version; no timestamps, so a resumed run is
byte-identical), ``report.html``, ``run.log``; the cache under ``out/cache`` unless
``cache_dir`` says otherwise.

Resume. ``out/run.json`` records the run's identity (config hash). A folder holding
the same run resumes it (only unfinished shards are computed); a folder holding a
different run, or files that are not a thresher run, is refused unless
``overwrite=True`` (which replaces the outputs and keeps the content-keyed cache).
"""
from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

import thresher

from .cache import ScoreCache, cache_key
from .io import DataError, Source
from .io.writers import AtomicFile, write_json_atomic, write_selected
from .registry import CRITERIA, SELECTORS, _load_builtins

log = logging.getLogger("thresher.pipeline")

# Criteria that must see the whole pool at once (their score of a row depends on
# the other rows). A criterion can also declare it: CRITERIA.register(..., scope="pool").
POOL_SCOPED = {"knn_distance", "local_density", "semdedup"}
TOKENS = "tokens"

_FILTER = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|!=|<|>)\s*(-?[\d.eE+-]+|nan)\s*$")


# ------------------------------------------------------------------ config
@dataclass
class Step:
    """A criterion or selector with options; ``alias`` (``as:`` in configs) names the
    column when one criterion is used twice (DEITA's complexity and quality ratings)."""

    name: str
    options: dict = field(default_factory=dict)
    alias: Optional[str] = None

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
                raise ValueError(f"{what}: unknown key(s) {sorted(extra)}; write {{name: ..., options: {{...}}}}")
            return Step(str(x["name"]), dict(x.get("options") or {}), x.get("as"))
        raise ValueError(f"{what}: expected a name or {{name: ..., options: {{...}}}}, got {x!r}")


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
    format: Optional[str] = None
    fields: Optional[dict] = None
    group_field: Optional[str] = None
    on_bad_row: str = "error"
    shard_size: int = 4096
    limit: Optional[int] = None
    seed: int = 0
    cache_dir: Optional[Any] = None
    overwrite: bool = False
    report: bool = True
    engine: str = "local"
    engine_options: dict = field(default_factory=dict)
    quiet: bool = False
    plugins: list = field(default_factory=list)
    score_only: bool = False

    @classmethod
    def from_dict(cls, d: dict, *, base: Optional[Path] = None) -> "PipelineConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "data" not in d:
            raise ValueError("config: missing key 'data' (the pool to select from)")
        if base is not None:
            for key in ("data", "out", "cache_dir"):
                if d.get(key) is not None and not os.path.isabs(str(d[key])):
                    d[key] = str(base / str(d[key]))
        return cls(**d)

    @classmethod
    def from_file(cls, path: Any) -> "PipelineConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config: {path} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".json":
                d = json.loads(text)
            else:
                import yaml

                d = yaml.safe_load(text)
        except Exception as exc:
            raise ValueError(f"config: {path}: cannot parse ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError(f"config: {path}: expected a mapping at the top level")
        return cls.from_dict(d, base=path.parent)


@dataclass
class Plan:
    """A recipe or config resolved to concrete steps."""

    criteria: list
    selector: Step
    filters: list
    needs_embeddings: bool
    recipe: Optional[str] = None
    recipe_options: dict = field(default_factory=dict)
    ratio_base: Optional[int] = None   # recipe's reference semantics: k = int(ratio_base * ratio)
    budget: dict = field(default_factory=dict)  # the recipe's default budget

    def describe(self) -> dict:
        return {"recipe": self.recipe, "recipe_options": self.recipe_options,
                "criteria": [asdict(c) for c in self.criteria], "selector": asdict(self.selector),
                "filters": list(self.filters), "ratio_base": self.ratio_base}


def load_plugins(names: list) -> None:
    """Import user modules (or .py files) that register criteria/selectors/recipes."""
    env = [p for p in os.environ.get("THRESHER_PLUGINS", "").split(os.pathsep) if p]
    for name in list(names or []) + env:
        if name.endswith(".py") or os.sep in name:
            p = Path(name)
            if not p.is_file():
                raise FileNotFoundError(f"plugin: {p} does not exist")
            spec = importlib.util.spec_from_file_location(f"thresher_plugin_{p.stem}", p)
            if f"thresher_plugin_{p.stem}" in sys.modules:
                continue
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
        else:
            importlib.import_module(name)


def make_plan(cfg: PipelineConfig) -> Plan:
    _load_builtins()
    criteria, selector, filters, needs_emb = [], None, [], False
    recipe_opts: dict = {}
    if cfg.recipe:
        from .recipes import expand_recipe

        r = expand_recipe(cfg.recipe, cfg.recipe_options, model=cfg.model, embedder=cfg.embedder)
        criteria, selector, filters, needs_emb = r.criteria, r.selector, r.filters, r.needs_embeddings
        recipe_opts = r.recipe_options
        ratio_base = r.budget.get("ratio_base")
        budget = {k: v for k, v in r.budget.items() if k in ("k", "ratio", "tokens")}
    else:
        ratio_base, budget = None, {}
    if cfg.criteria:
        criteria = [Step.of(c, "criteria") for c in cfg.criteria]
    if cfg.selector is not None:
        selector = Step.of(cfg.selector, "selector")
    if cfg.filters:
        filters = list(cfg.filters)
    if not criteria and not cfg.score_only and selector is not None and selector.name == "random":
        pass
    elif not criteria:
        raise ValueError("criteria: give a recipe (--recipe NAME) or at least one criterion")
    if selector is None:
        if cfg.score_only:
            selector = Step("random", {})  # not run: score-only
        elif len(criteria) == 1:
            selector = Step("topk", {"criterion": criteria[0].name})
        else:
            raise ValueError("selector: several criteria need a selector (e.g. pareto, weighted, rrf)")
    # validate names and options against the registries
    seen = set()
    for c in criteria:
        entry = CRITERIA.get(c.name)
        if cfg.model and "model" in entry.options and "model" not in c.options:
            c.options["model"] = cfg.model
        if cfg.embedder and "embedder" in entry.options and "embedder" not in c.options:
            c.options["embedder"] = cfg.embedder
        c.options = entry.resolve_options(c.options)
        if c.col in seen:
            raise ValueError(f"criteria: {c.col!r} given twice (use 'as: NAME' to score one criterion twice)")
        seen.add(c.col)
    sel = SELECTORS.get(selector.name)
    selector.options = dict(selector.options)
    if "criterion" in sel.options and not selector.options.get("criterion"):
        if len(criteria) != 1:
            raise ValueError(f"selector {selector.name}: name the criterion to select on "
                             f"(one of {[c.col for c in criteria]})")
        selector.options["criterion"] = criteria[0].col
    sel.resolve_options(selector.options)
    needs_emb = needs_emb or "embeddings" in tuple(sel.meta.get("needs", ())) \
        or selector.options.get("diversity_tau") is not None
    for f in filters:
        parse_filter(f)
    return Plan(criteria, selector, filters, needs_emb, cfg.recipe, recipe_opts, ratio_base, budget)


def parse_filter(expr: str) -> tuple[str, str, float]:
    m = _FILTER.match(str(expr))
    if not m:
        raise ValueError(f"filters: cannot read {expr!r}; write e.g. 'ifd < 1' or 'length.output >= 1'")
    return m.group(1), m.group(2), float(m.group(3))


def apply_filters(cols: dict, filters: list, n: int) -> np.ndarray:
    ok = np.ones(n, dtype=bool)
    for f in filters:
        name, op, v = parse_filter(f)
        if name not in cols:
            raise ValueError(f"filters: {f!r} names column {name!r}, not among the scores {sorted(cols)}")
        x = cols[name]
        with np.errstate(invalid="ignore"):
            ok &= {"<": x < v, "<=": x <= v, ">": x > v, ">=": x >= v, "==": x == v, "!=": x != v}[op]
    return ok


def budget_k(cfg: PipelineConfig, n: int, ratio_base: Optional[int] = None) -> int:
    given = [x for x in ("k", "ratio", "tokens") if getattr(cfg, x) is not None]
    if len(given) > 1:
        raise ValueError(f"budget: give one of k, ratio, tokens (got {given})")
    if cfg.k is not None:
        if isinstance(cfg.k, bool) or not isinstance(cfg.k, int) or cfg.k < 0:
            raise ValueError(f"k: expected a non-negative integer, got {cfg.k!r}")
        return min(cfg.k, n)
    if cfg.ratio is not None:
        r = float(cfg.ratio)
        if not 0.0 < r <= 1.0:
            raise ValueError(f"ratio: expected a fraction in (0, 1], got {cfg.ratio!r}")
        if ratio_base is not None:  # reference-code semantics (e.g. Superfiltering's int(52002 * rate))
            return min(n, int(ratio_base * r))
        return max(1, int(math.floor(r * n + 0.5))) if n else 0
    if cfg.tokens is not None:
        if isinstance(cfg.tokens, bool) or not isinstance(cfg.tokens, int) or cfg.tokens <= 0:
            raise ValueError(f"tokens: expected a positive integer, got {cfg.tokens!r}")
        return n
    raise ValueError("budget: give one of k, ratio or tokens (--k N | --ratio R | --tokens T)")


# ------------------------------------------------------------------ engines
def get_engine(name: str, **options: Any):
    if name == "local":
        from .engines.local import LocalEngine

        return LocalEngine(**options)
    if name == "ray":
        from .engines.ray_engine import RayEngine

        return RayEngine(**options)
    raise ValueError(f"engine: expected 'local' or 'ray', got {name!r}")


def is_pool_scoped(name: str) -> bool:
    entry = CRITERIA.get(name)
    scope = entry.meta.get("scope") or getattr(entry.obj, "scope", None)
    return scope == "pool" or (scope is None and name in POOL_SCOPED)


def scorer_key(scorer: Any, step: Step) -> str:
    if hasattr(scorer, "cache_key"):
        return str(scorer.cache_key())
    return json.dumps({"name": step.name, "options": step.options}, sort_keys=True, default=str)


def check_scores(df: Any, table: Any, name: str, alias: Optional[str] = None):
    """A scorer's output: one row per input row, keyed by id, main column present."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        from .frames import as_pandas

        df = as_pandas(df)
    if "id" not in df.columns or name not in df.columns:
        raise ValueError(f"criterion {name!r}: scorer returned columns {list(df.columns)}; "
                         f"expected 'id' and {name!r}")
    if len(df) != len(table):
        raise ValueError(f"criterion {name!r}: scorer returned {len(df)} rows for {len(table)} samples")
    ids = table["id"].astype(str).to_numpy()
    got = df["id"].astype(str).to_numpy()
    if not np.array_equal(ids, got):
        df = df.set_index(df["id"].astype(str)).reindex(ids).reset_index(drop=True)
        if df[name].isna().all() and len(ids):
            raise ValueError(f"criterion {name!r}: scorer returned ids that do not match the batch")
        df["id"] = ids
    keep = ["id"] + [c for c in df.columns if c == name or c.startswith(name + ".")]
    df = df[keep].copy()
    if alias and alias != name:
        df.columns = ["id"] + [alias + c[len(name):] for c in df.columns[1:]]
    for c in df.columns:
        if c.endswith(".reason"):
            df[c] = df[c].fillna("").astype(str)
        elif c != "id" and df[c].dtype == object:
            try:
                df[c] = df[c].astype(np.float64)
            except (TypeError, ValueError):
                df[c] = df[c].astype(str)
    return df


# ------------------------------------------------------------------ output folder
def _config_identity(cfg: PipelineConfig, plan: Plan, checksum: str) -> dict:
    return {
        "thresher": thresher.__version__,
        "data": {"path": str(Path(cfg.data).resolve()), "sha256": checksum, "format": cfg.format,
                 "fields": cfg.fields, "group_field": cfg.group_field, "on_bad_row": cfg.on_bad_row,
                 "limit": cfg.limit},
        "plan": plan.describe(),
        "budget": {"k": cfg.k, "ratio": cfg.ratio, "tokens": cfg.tokens},
        "seed": cfg.seed,
        "shard_size": cfg.shard_size,
        "score_only": cfg.score_only,
    }


OUTPUT_NAMES = ("scores.parquet", "manifest.json", "report.html", "run.log", "run.json", "report")


def prepare_out(out: Path, identity: dict, overwrite: bool) -> str:
    """Check the output folder; return 'fresh', 'resume' or 'overwrite'."""
    run_file = out / "run.json"
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out: {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        mode = "fresh"
    else:
        prev = None
        if run_file.exists():
            try:
                prev = json.loads(run_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                prev = None
        if prev == identity:
            mode = "resume"
        elif not overwrite:
            if prev is None:
                raise FileExistsError(
                    f"out: {out} is not empty and holds no thresher run (no run.json); "
                    "choose an empty or new folder, or pass --overwrite to write into it")
            diff = [k for k in identity if identity.get(k) != prev.get(k)]
            raise FileExistsError(
                f"out: {out} already holds another run's results (differs in: {', '.join(diff) or 'version'}); "
                "pass --overwrite to replace them (the score cache is kept and reused), or choose another --out")
        else:
            mode = "overwrite"
            for name in OUTPUT_NAMES:
                p = out / name
                if p.is_file():
                    p.unlink()
            for p in out.glob("selected*"):
                if p.is_dir():
                    import shutil

                    shutil.rmtree(p)
                else:
                    p.unlink()
    write_json_atomic(identity, run_file)
    return mode


# ------------------------------------------------------------------ progress / logging
class _Progress:
    def __init__(self, quiet: bool, desc: str, total: Optional[int] = None, unit: str = "rows"):
        self.bar = None
        if not quiet:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True,
                                file=sys.stderr)
            except ImportError:  # pragma: no cover
                self.bar = None

    def update(self, n: int, **post: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if post:
                self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _setup_log(out: Optional[Path], quiet: bool) -> logging.Handler | None:
    log.setLevel(logging.INFO)
    handler = None
    if out is not None:
        handler = logging.FileHandler(out / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    return handler


def _say(msg: str, quiet: bool) -> None:
    log.info(msg)
    if not quiet:
        try:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        except ImportError:  # pragma: no cover
            print(msg, file=sys.stderr)


# ------------------------------------------------------------------ result
@dataclass
class PipelineResult:
    out: Optional[Path]
    n_rows: int
    k: int
    selected: np.ndarray              # pool positions in selection order
    scores_path: Optional[Path]
    selected_path: Optional[Path]
    manifest: dict
    report_path: Optional[Path] = None
    skipped: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    table: Any = None                 # the scores table, when no output folder was given

    def scores(self):
        import pandas as pd

        return self.table if self.table is not None else pd.read_parquet(self.scores_path)


def score_pool(cfg: PipelineConfig):
    """Score a pool with ``cfg.criteria`` (no selection): one table keyed by ``id``.

    Streams the pool in shards through the score cache (``cfg.cache_dir``, required
    when ``cfg.out`` is None); pool-scoped criteria (kNN distance, ...) see the whole
    pool at once."""
    cfg = copy.copy(cfg)
    cfg.score_only = True
    return run_pipeline(cfg).scores()


# ------------------------------------------------------------------ the run
def run_pipeline(cfg: PipelineConfig, *, on_shard: Optional[Callable[[int], None]] = None) -> PipelineResult:
    """Run the whole pipeline; see the module docstring."""
    t0 = time.perf_counter()
    load_plugins(cfg.plugins)
    plan = make_plan(cfg)
    if cfg.k is None and cfg.ratio is None and cfg.tokens is None and plan.budget and not cfg.score_only:
        cfg = copy.copy(cfg)  # the recipe's default budget (e.g. ifd: ratio 0.05)
        cfg.k, cfg.ratio, cfg.tokens = plan.budget.get("k"), plan.budget.get("ratio"), plan.budget.get("tokens")
    source = Source(cfg.data, format=cfg.format, fields=cfg.fields, group_field=cfg.group_field,
                    on_bad_row=cfg.on_bad_row, shard_size=cfg.shard_size, limit=cfg.limit)
    checksum = source.checksum()
    out = Path(cfg.out) if cfg.out is not None else None
    if out is None and not cfg.score_only:
        raise ValueError("out: a selection run needs an output folder (--out DIR)")
    identity = _config_identity(cfg, plan, checksum)
    handler = None
    try:
        mode = prepare_out(out, identity, cfg.overwrite) if out is not None else "fresh"
        handler = _setup_log(out, cfg.quiet)
        cache_root = Path(cfg.cache_dir) if cfg.cache_dir is not None else (out / "cache" if out else None)
        if cache_root is None:
            raise ValueError("cache_dir: needed when no output folder is given")
        cache = ScoreCache(cache_root)
        cache.clean_temp()
        _say(f"thresher {thresher.__version__}: {mode} run on {source.path} ({source.format}); "
             f"criteria: {', '.join(c.name for c in plan.criteria) or 'none'}; selector: {plan.selector.name}"
             + (f"; recipe: {plan.recipe}" if plan.recipe else ""), cfg.quiet)
        try:
            return _run(cfg, plan, source, checksum, out, cache, mode, t0, on_shard)
        except DataError as exc:
            log.error("%s", exc)
            raise DataError(f"{exc.reason}; the scores computed so far are kept in {cache.root} "
                            "(fix the row and rerun with --overwrite to reuse them, or pass --on-bad-row skip)",
                            file=exc.file, line=exc.line, field=exc.field) from None
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _run(cfg, plan, source, checksum, out, cache, mode, t0, on_shard) -> PipelineResult:
    import pandas as pd

    engine = get_engine(cfg.engine, **cfg.engine_options)
    timings: dict = {}
    shard_crits = [c for c in plan.criteria if not is_pool_scoped(c.name)]
    pool_crits = [c for c in plan.criteria if is_pool_scoped(c.name)]
    scorers: dict = {}
    keys: dict = {}

    def scorer_for(step: Step):
        if step.col not in scorers:
            entry = CRITERIA.get(step.name)
            t = time.perf_counter()
            scorers[step.col] = engine.make_scorer(entry.obj, step.options)
            timings[f"load {step.col}"] = round(time.perf_counter() - t, 3)
            keys[step.col] = scorer_key(scorers[step.col], step)
        return scorers[step.col]

    # Criterion keys are needed before scoring to look the cache up without loading
    # models: a scorer class may expose a static `cache_key_for(options)`; else load it.
    def key_for(step: Step) -> str:
        if step.col in keys:
            return keys[step.col]
        cls = CRITERIA.get(step.name).obj
        if hasattr(cls, "cache_key_for"):
            keys[step.col] = str(cls.cache_key_for(**step.options))
            return keys[step.col]
        scorer_for(step)
        return keys[step.col]

    from .io.textstats import Length

    length = Length("tokens")
    selector = plan.selector
    sel_entry = SELECTORS.get(selector.name)
    objective_cols = _objective_columns(plan)
    streaming_topk = (selector.name == "topk" and selector.options.get("diversity_tau") is None
                      and cfg.tokens is None and not plan.filters and not pool_crits and not cfg.score_only)
    acc = None
    crit_col = None
    if streaming_topk:
        from .selectors.basic import criterion_direction

        crit_col = selector.options.get("criterion") or (plan.criteria[0].col if len(plan.criteria) == 1 else None)
        if crit_col is None:
            raise ValueError("selector topk: name the criterion (several criteria are scored)")
        try:
            from .ops import TopKAccumulator
        except ImportError:
            TopKAccumulator = None
        if cfg.k is None or TopKAccumulator is None:
            streaming_topk = False  # ratio needs the pool size first: accumulate k-free columns below
    shard_refs: list = []      # per shard: (shard.key, n, {criterion: cache key})
    cols: dict = {}            # column -> list of arrays (objective columns only)
    lines_l, files_l, tokens_l, groups_l = [], [], [], []
    pool_tables = [] if pool_crits else None
    emb_parts = [] if plan.needs_embeddings else None
    t_score = time.perf_counter()
    prog = _Progress(cfg.quiet, "scoring", None if cfg.quiet else source.estimate_rows(), "rows")
    n_done = 0
    if streaming_topk:
        from .ops import TopKAccumulator

        maximize = (selector.options.get("direction") or criterion_direction(crit_col)) == "max"
        acc = TopKAccumulator(cfg.k, largest=maximize)
    for shard in source.shards():
        skey = shard.key
        ckeys = {}
        tabs = []
        lt = cache.get("length", cache_key("length", length.cache_key(), skey))
        if lt is None:
            lt = cache.put("length", cache_key("length", length.cache_key(), skey), length(shard.table))
        tokens_l.append(lt["length"].to_numpy(np.float64))
        for step in shard_crits:
            key = cache_key(step.col, key_for(step), skey)
            ckeys[step.col] = key
            df = cache.get(step.col, key)
            if df is None:
                sc = scorer_for(step)
                df = check_scores(engine.score(sc, shard.table, step.name), shard.table, step.name, step.alias)
                df = cache.put(step.col, key, df)
            tabs.append(df)
        for df in tabs:
            for c in df.columns:
                if c in objective_cols:
                    cols.setdefault(c, []).append(df[c].to_numpy(np.float64, na_value=np.nan))
        if acc is not None:
            v = next(df[crit_col] for df in tabs if crit_col in df.columns)
            import torch

            acc.update(torch.from_numpy(np.array(v.to_numpy(np.float64, na_value=np.nan))), shard.start)
        if pool_tables is not None:  # pool-scoped criteria see the texts of the whole pool
            pool_tables.append(shard.table)
        if emb_parts is not None:
            emb_parts.append(_embeddings(shard, cfg, cache))
        lines_l.append(shard.lines)
        files_l.append(np.asarray(shard.files, dtype=np.int32))
        if "group" in shard.table.columns:
            groups_l.append(shard.table["group"].astype(str).to_numpy())
        shard_refs.append((skey, len(shard), ckeys))
        n_done += len(shard)
        prog.update(len(shard), cached=cache.hits, computed=cache.misses)
        if on_shard is not None:
            on_shard(shard.index)
    prog.close()
    n = n_done
    timings["score_shards"] = round(time.perf_counter() - t_score, 3)
    if source.skipped:
        _say(f"skipped {len(source.skipped)} bad row(s) (--on-bad-row skip); first: "
             f"{source.skipped[0]['file']} line {source.skipped[0]['line']}: {source.skipped[0]['reason']}"
             + (f" (field {source.skipped[0]['field']!r})" if source.skipped[0]['field'] else ""), cfg.quiet)

    # pool-scoped criteria: one call over the whole pool
    pool_keys: dict = {}
    pool_frames: dict = {}
    if pool_crits:
        t = time.perf_counter()
        pool = pd.concat(pool_tables, ignore_index=True)
        pool_tables = None
        pkey = hashlib.blake2b("".join(r[0] for r in shard_refs).encode(), digest_size=16).hexdigest()
        for step in pool_crits:
            key = cache_key(step.col, key_for(step), pkey)
            pool_keys[step.col] = key
            df = cache.get(step.col, key)
            if df is None:
                sc = scorer_for(step)
                _say(f"scoring {step.col} over the whole pool ({n} rows)", cfg.quiet)
                df = cache.put(step.col, key, check_scores(engine.score(sc, pool, step.name), pool, step.name,
                                                           step.alias))
            pool_frames[step.col] = df
            for c in df.columns:
                if c in objective_cols:
                    cols[c] = [df[c].to_numpy(np.float64, na_value=np.nan)]
        del pool
        timings["score_pool"] = round(time.perf_counter() - t, 3)

    n_hits, n_miss = cache.hits, cache.misses
    lines = np.concatenate(lines_l) if lines_l else np.zeros(0, np.int64)
    files = np.concatenate(files_l) if files_l else np.zeros(0, np.int32)
    tokens = np.concatenate(tokens_l) if tokens_l else np.zeros(0)
    groups = np.concatenate(groups_l) if groups_l and len(groups_l) == len(shard_refs) else None
    colv = {c: np.concatenate(v) for c, v in cols.items()}
    colv[TOKENS] = tokens

    # ---------------------------------------------------------------- selection
    t = time.perf_counter()
    eligible = apply_filters(colv, plan.filters, n)
    k = budget_k(cfg, n, plan.ratio_base) if not cfg.score_only else 0
    if cfg.score_only:
        order = np.zeros(0, np.int64)
    elif acc is not None:
        _, idx = acc.result()
        idx = idx.numpy().astype(np.int64)
        vals = np.concatenate(cols[crit_col]) if crit_col in cols else None
        order = idx[~np.isnan(vals[idx])] if vals is not None else idx
    else:
        elig = np.flatnonzero(eligible)
        frame = pd.DataFrame({c: v[elig] for c, v in colv.items()})
        emb = np.concatenate(emb_parts)[elig] if emb_parts else None
        grp = groups[elig] if groups is not None else None
        kk = len(elig) if cfg.tokens is not None else min(k, len(elig))
        rel = np.asarray(sel_entry.obj(frame, kk, embeddings=emb, groups=grp, seed=cfg.seed,
                                       **selector.options), dtype=np.int64)
        if len(rel) and (rel.min() < 0 or rel.max() >= len(elig) or len(np.unique(rel)) != len(rel)):
            raise ValueError(f"selector {selector.name!r} returned invalid row positions")
        order = elig[rel]
        if cfg.tokens is not None:
            csum = np.cumsum(tokens[order])
            order = order[: int(np.searchsorted(csum, cfg.tokens, side="right"))]
    timings["select"] = round(time.perf_counter() - t, 3)
    rank = np.full(n, -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    _say(f"selected {len(order)} of {n} rows ({100.0 * len(order) / max(n, 1):.2f}%), "
         f"{int(eligible.sum())} eligible after filters {plan.filters or '[]'}", cfg.quiet)

    # ---------------------------------------------------------------- outputs
    t = time.perf_counter()
    scores_path = out / "scores.parquet" if out is not None else None
    selected_path = None
    if out is not None:
        _write_scores(scores_path, cache, shard_refs, plan, pool_frames, tokens, groups, eligible, rank,
                      source, lines)
        if not cfg.score_only:
            selected_path = write_selected(source, lines, files, order, out)
    table = None
    if out is None:
        table = pd.concat([pd.DataFrame(d) for d in _shard_score_tables(
            cache, shard_refs, plan, pool_frames, tokens, groups, eligible, None if cfg.score_only else rank)],
            ignore_index=True)
    timings["write"] = round(time.perf_counter() - t, 3)
    manifest = _manifest(cfg, plan, source, checksum, scorers, keys, n, k, order, out, selected_path,
                         scores_path, cache)
    report_path = None
    if out is not None:
        write_json_atomic(manifest, out / "manifest.json")
        if cfg.report and not cfg.score_only:
            t = time.perf_counter()
            try:
                from .report import write_report

                report_path = write_report(out, source=source, lines=lines, files=files, quiet=cfg.quiet)
            except ImportError as exc:
                _say(f"report skipped: {exc}", cfg.quiet)
            timings["report"] = round(time.perf_counter() - t, 3)
    timings["total"] = round(time.perf_counter() - t0, 3)
    log.info("timings (s): %s; cache entries reused %d, computed %d", json.dumps(timings), n_hits, n_miss)
    if out is not None:
        _say(f"wrote {out}/ ({', '.join(p.name for p in [selected_path, scores_path, report_path] if p)}, "
             f"manifest.json) in {timings['total']:.1f} s", cfg.quiet)
    return PipelineResult(out, n, k, order, scores_path, selected_path, manifest, report_path,
                          list(source.skipped), timings, n_hits, n_miss, table)


def _objective_columns(plan: Plan) -> set:
    """Columns the selector and filters need in memory."""
    need = set()
    o = plan.selector.options
    if o.get("criterion"):
        need.add(o["criterion"])
    if o.get("objectives"):
        from .selectors.basic import parse_objectives

        need.update(n for n, _ in parse_objectives(o["objectives"]))
    for f in plan.filters:
        need.add(parse_filter(f)[0])
    for c in plan.criteria:
        need.add(c.col)  # main columns are cheap (one float per row) and feed the report
    for key in ("score", "score_column", "column"):
        if isinstance(o.get(key), str):
            need.add(o[key])
    return need


def _embeddings(shard, cfg, cache: ScoreCache) -> np.ndarray:
    """Per-shard embeddings (text = instruction, input, output), cached as .npy."""
    from .embed import embed_table

    embedder = cfg.embedder or "default"
    key = cache_key("_embeddings", f"embedder={embedder}", shard.key)
    p = cache.root / "_embeddings" / f"{key}.npy"
    if p.exists():
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            pass
    e = np.asarray(embed_table(shard.table, embedder), dtype=np.float32)
    p.parent.mkdir(parents=True, exist_ok=True)
    with AtomicFile(p) as fh:
        np.save(fh, e, allow_pickle=False)
    return e


def _write_scores(path, cache, shard_refs, plan, pool_frames, tokens, groups, eligible, rank, source, lines):
    """Stream the cached shard tables into one scores.parquet with the decisions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    schema = None
    with AtomicFile(path) as fh:
        for data in _shard_score_tables(cache, shard_refs, plan, pool_frames, tokens, groups, eligible, rank):
            table = pa.table(data)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(fh, schema, compression="zstd")
            else:
                try:
                    table = table.cast(schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                    table = pa.table({f.name: pa.array(data[f.name], type=f.type, from_pandas=True)
                                      for f in schema})
            writer.write_table(table)
        if writer is not None:
            writer.close()


def _shard_score_tables(cache, shard_refs, plan, pool_frames, tokens, groups, eligible, rank):
    """Per shard: {column: array} with id, group, tokens, criteria columns and the decisions."""
    shard_crits = [c for c in plan.criteria if c.col not in pool_frames]
    start = 0
    if True:
        for skey, n_rows, ckeys in shard_refs:
            sl = slice(start, start + n_rows)
            base = None
            parts = {}
            for step in shard_crits:
                df = cache.get(step.col, ckeys[step.col])
                if df is None:
                    raise RuntimeError(f"cache entry for {step.col} vanished during the run ({cache.root})")
                parts[step.col] = df
                if base is None:
                    base = df["id"].to_numpy()
            for name, df in pool_frames.items():
                parts[name] = df.iloc[sl].reset_index(drop=True)
                if base is None:
                    base = parts[name]["id"].to_numpy()
            data = {}
            if base is None:  # no criteria (random selector): ids from the token cache
                from .io.textstats import Length

                lt = cache.get("length", cache_key("length", Length("tokens").cache_key(), skey))
                base = lt["id"].to_numpy()
            data["id"] = base
            if groups is not None:
                data["group"] = groups[sl]
            data[TOKENS] = tokens[sl]
            for name, df in parts.items():
                for c in df.columns:
                    if c != "id":
                        data[c] = df[c].to_numpy()
            if rank is not None:
                data["eligible"] = eligible[sl]
                data["selected"] = rank[sl] >= 0
                data["rank"] = rank[sl]
            yield data
            start += n_rows


def _file_sha(p: Optional[Path]) -> Optional[str]:
    if p is None or not Path(p).exists():
        return None
    if Path(p).is_dir():
        from .io import file_checksum

        return file_checksum(Path(p))
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _manifest(cfg, plan, source, checksum, scorers, keys, n, k, order, out, selected_path, scores_path, cache):
    models = {}
    for name, sc in scorers.items():
        fp = getattr(sc, "fingerprint", None)
        if fp is None and getattr(sc, "lm", None) is not None:
            fp = getattr(sc.lm, "fingerprint", None)
        if fp is not None:
            models[name] = str(fp)
    crit = []
    for c in plan.criteria:
        entry = CRITERIA.get(c.name)
        crit.append({"name": c.name, "as": c.alias, "options": c.options,
                     "direction": entry.meta.get("direction"), "cache_key": keys.get(c.col)})
    return {
        "thresher": thresher.__version__,
        "inputs": [{"path": str(Path(cfg.data).resolve()), "format": source.format, "sha256": checksum,
                    "files": [str(f) for f in source.files], "rows": n, "skipped": len(source.skipped),
                    "skipped_rows": source.skipped[:100], "schema": source.schema.describe() if source.schema else None,
                    "columns": source.columns}],
        "recipe": {"name": plan.recipe, "options": plan.recipe_options} if plan.recipe else None,
        "criteria": crit,
        "models": models,
        "selector": {"name": plan.selector.name, "options": plan.selector.options},
        "filters": plan.filters,
        "budget": {"k": cfg.k, "ratio": cfg.ratio, "tokens": cfg.tokens, "resolved_k": k},
        "selected": int(len(order)),
        "seed": cfg.seed,
        "shard_size": cfg.shard_size,
        "engine": cfg.engine,
        "outputs": {p.name: _file_sha(p) for p in (selected_path, scores_path) if p is not None},
    }
