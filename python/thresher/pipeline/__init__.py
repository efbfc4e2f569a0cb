"""The selection pipeline: rows -> criteria -> selector -> outputs.

One pipeline behind the Python API, the config file (``thresher run``) and the CLI
(``thresher select`` / ``score`` / ``demo``)::

    from thresher.pipeline import PipelineConfig, run_pipeline
    res = run_pipeline(PipelineConfig(data="pool.jsonl", recipe="ifd", ratio=0.05, out="sel/"))

Data flow and memory. The pool is streamed in shards of ``shard_size`` rows
(:class:`thresher.io.Source`). For each shard and each criterion the score table is
looked up in the score cache (:class:`thresher.cache.ScoreCache`, keyed by the shard's
content, the scorer's cache key and the thresher version) or computed by the engine
(a registered :class:`thresher.engines.Engine`: local or Ray) and written atomically.
Texts never outlive their shard: the pipeline keeps only the numeric columns the
selector reads (float64 per column), the row -> source-line map (int64) and, for
diversity constraints, the embeddings. A plain ``topk`` selection is fully
out-of-core (``thresher.ops.TopKAccumulator``: O(k) memory). Outputs are written by
streaming over the cached shards again.

Outputs in ``out``: ``selected.<input's extension>`` (the input's own format and
field order, rows in input order), ``scores.parquet`` (id, group, tokens, one
column per criterion and its components, ``eligible``, ``selected``, ``rank``),
``manifest.json`` (inputs with checksums, criteria with options and model
fingerprints, selector, budget, seed, version; no timestamps, so a resumed run is
byte-identical), ``report.html``, ``run.log``; the cache under ``out/cache`` unless
``cache_dir`` says otherwise.

Resume. ``out/run.json`` records the run's identity (config hash) and the files it
writes. A folder holding the same run resumes it (only unfinished shards are
computed); a folder holding a different run is refused unless ``overwrite=True``
(which deletes exactly the files that run listed and keeps the content-keyed
cache); a non-empty folder that holds no thresher run is never written into.

Layout. :mod:`thresher.plan` resolves and validates the config before any data is
read; :mod:`.run` opens the output folder and runs the stages over one
:class:`~.state.RunState`: :func:`~.scoring.score_shards`,
:func:`~.scoring.score_pool_scoped`, :func:`~.selection.select` (the selection object,
streaming or in memory, is chosen once by :func:`~.selection.make_selection`) and
:func:`~.outputs.write_outputs`.
"""

from __future__ import annotations

from ..cache import ScoreCache, cache_key
from ..engines import Engine, get_engine
from ..plan import (
    TOKENS,
    PipelineConfig,
    Plan,
    Step,
    apply_filters,
    budget_k,
    check_alias,
    check_budget,
    make_plan,
    parse_filter,
    validate,
)
from .outdir import config_identity, prepare_out, remove_outputs
from .run import PipelineResult, load_plugins, run_pipeline, score_pool
from .scoring import check_scores, score_pool_scoped, score_shards
from .selection import InMemorySelection, ScoreOnly, Selection, StreamingTopK, make_selection, select
from .state import RunState, is_pool_scoped, scorer_key

__all__ = [
    "TOKENS",
    "Engine",
    "InMemorySelection",
    "PipelineConfig",
    "PipelineResult",
    "Plan",
    "RunState",
    "ScoreCache",
    "ScoreOnly",
    "Selection",
    "Step",
    "StreamingTopK",
    "apply_filters",
    "budget_k",
    "cache_key",
    "check_alias",
    "check_budget",
    "check_scores",
    "config_identity",
    "get_engine",
    "is_pool_scoped",
    "load_plugins",
    "make_plan",
    "make_selection",
    "parse_filter",
    "prepare_out",
    "remove_outputs",
    "run_pipeline",
    "score_pool",
    "score_pool_scoped",
    "score_shards",
    "scorer_key",
    "select",
    "validate",
]
