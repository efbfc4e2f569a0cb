"""run_pipeline: plan, open the output folder, then the four stages over one RunState."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

import thresher

from .. import progress
from ..cache import ScoreCache
from ..engines import get_engine
from ..errors import OptionError
from ..io import DataError, Source
from ..plan import PipelineConfig, Plan, make_plan
from .outdir import config_identity, prepare_out
from .outputs import output_names, write_outputs
from .plugins import load_plugins, plugin_names
from .rowstore import RowStore
from .scoring import score_pool_scoped, score_shards
from .selection import make_selection, select
from .state import RunState, log, say, setup_log


@dataclass
class PipelineResult:
    out: Optional[Path]
    n_rows: int
    k: int
    selected: np.ndarray  # pool positions in selection order
    scores_path: Optional[Path]
    selected_path: Optional[Path]
    manifest: dict
    report_path: Optional[Path] = None
    skipped: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    table: Any = None  # the scores table, when no output folder was given

    def scores(self) -> pd.DataFrame:
        return self.table if self.table is not None else pd.read_parquet(self.scores_path)


def score_pool(cfg: PipelineConfig) -> pd.DataFrame:
    """Score a pool with ``cfg.criteria`` (no selection): one table keyed by ``id``.

    Streams the pool in shards through the score cache (``cfg.cache_dir``, required
    when ``cfg.out`` is None); pool-scoped criteria (kNN distance, ...) see the whole
    pool at once."""
    cfg = copy.copy(cfg)
    cfg.score_only = True
    return run_pipeline(cfg).scores()


def _with_budget(cfg: PipelineConfig, plan: Plan) -> PipelineConfig:
    """The recipe's default budget (e.g. ifd: ratio 0.05) when the config gives none."""
    if cfg.budget() or not plan.budget or cfg.score_only:
        return cfg
    cfg = copy.copy(cfg)
    cfg.k, cfg.ratio, cfg.tokens = plan.budget.get("k"), plan.budget.get("ratio"), plan.budget.get("tokens")
    return cfg


def run_pipeline(cfg: PipelineConfig, *, on_shard: Optional[Callable[[int], None]] = None) -> PipelineResult:
    """Run the whole pipeline; see the package docstring. Every option is checked before data is read."""
    t0 = time.perf_counter()
    load_plugins(plugin_names(cfg))
    plan = make_plan(cfg)
    cfg = _with_budget(cfg, plan)
    if cfg.out is None and not cfg.score_only:
        raise OptionError("out: a selection run needs an output folder (--out DIR)")
    if cfg.out is None and cfg.cache_dir is None:
        raise OptionError("cache_dir: needed when no output folder is given")
    source = Source(cfg.data, format=cfg.format, fields=cfg.fields, group_field=cfg.group_field,
                    on_bad_row=cfg.on_bad_row, shard_size=cfg.shard_size, limit=cfg.limit, split=cfg.split,
                    streaming=cfg.streaming)  # fmt: skip
    out = Path(cfg.out) if cfg.out is not None else None
    cache = ScoreCache(Path(cfg.cache_dir) if cfg.cache_dir is not None else Path(str(cfg.out)) / "cache")
    _check_outside_input(source, {"out": out, "cache_dir": cache.root})
    handler = None
    rowstore = RowStore(cache.root)
    source.spill = lambda: rowstore.scratch("ids")  # the pool-wide id set's runs: files, not the driver's heap
    try:
        checksum = source.checksum()
        identity = config_identity(cfg, plan, checksum)
        planned = ["run.log", *output_names(cfg, source)]
        mode = "fresh" if out is None else prepare_out(out, identity, cfg.overwrite, planned)
        handler = setup_log(out)
        cache.clean_temp()
        with progress.quiet(cfg.quiet):  # a quiet run starts its engine quietly too (Ray's start-up lines)
            engine = get_engine(cfg.engine, **cfg.engine_options)
        st = RunState(cfg, plan, source, checksum, out, cache, engine, mode=mode, on_shard=on_shard, t0=t0,
                      rowstore=rowstore)  # fmt: skip
        with progress.quiet(cfg.quiet):  # a quiet run (API or CLI) shows no bar, model conversion included
            return _run(st)
    except DataError as exc:
        if handler is not None:  # into run.log only (never a second line on stderr)
            log.error("%s", exc)
        hint = _bad_row_hint(out, cache, getattr(exc, "skippable", True))
        err = DataError(f"{exc.reason}; {hint}", file=exc.file, line=exc.line, field=exc.field)
        err.row_reason, err.skippable = exc.reason, getattr(exc, "skippable", True)  # the API words its own hint
        raise err from None
    finally:
        rowstore.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _check_outside_input(source: Source, folders: dict) -> None:
    """An input folder is read with its subfolders: the run's output or cache folder inside it would
    be read as part of the pool next time (or make it a folder of mixed formats)."""
    loc = getattr(source, "location", None)
    if loc is None or loc.kind != "files" or not Path(source.path).is_dir():
        return
    top = Path(source.path).resolve()
    for name, folder in folders.items():
        if folder is not None and (
            top == Path(folder).absolute().resolve() or top in Path(folder).absolute().resolve().parents
        ):
            raise OptionError(
                f"{name}: {folder} is inside the input folder {source.path}, whose files (subfolders too) are read "
                "as the pool; choose a folder outside it"
            )


def _bad_row_hint(out: Optional[Path], cache: ScoreCache, skippable: bool = True) -> str:
    """What to do next: fix the row (or the file, for an error no skipping gets past), where the
    scores computed so far are, and ``--on-bad-row skip`` when it would help."""
    what = "row" if skippable else "file"
    skip = ", or pass --on-bad-row skip to skip bad rows" if skippable else ""
    if out is None:
        return f"fix the {what}{skip}"
    return (
        f"the scores computed so far are kept in {cache.root} (fix the {what} and rerun with --overwrite to "
        f"reuse them){skip}"
    )


def _run(st: RunState) -> PipelineResult:
    """The stages: score shards, score pool-scoped criteria, select, write."""
    plan = st.plan
    st.say(
        f"thresher {thresher.__version__}: {st.mode} run on {st.source.path} ({st.source.format}); criteria: "
        f"{', '.join(c.name for c in plan.criteria) or 'none'}"
        + ("; score only" if st.cfg.score_only else f"; selector: {plan.selector.name}")
        + (f"; recipe: {plan.recipe}" if plan.recipe else "")
    )
    selection = make_selection(st)
    score_shards(st, selection)
    score_pool_scoped(st, selection)
    st.cache_hits, st.cache_misses = st.cache.hits, st.cache.misses
    select(st, selection)
    table = write_outputs(st)
    st.lap("total", st.t0)
    log.info(
        "timings (s): %s; cache entries reused %d, computed %d", json.dumps(st.timings), st.cache_hits, st.cache_misses
    )
    if st.out is not None:
        names = ", ".join(st.outputs[k].name for k in ("selected", "scores", "report") if k in st.outputs)
        say(f"wrote {st.out}/ ({names}, manifest.json) in {st.timings['total']:.1f} s", st.cfg.quiet)
    o = st.outputs
    return PipelineResult(st.out, st.n, st.k, st.order, o.get("scores"), o.get("selected"), st.manifest,
                          o.get("report"), list(st.source.skipped), st.timings, st.cache_hits, st.cache_misses,
                          table)  # fmt: skip
