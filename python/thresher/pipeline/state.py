"""The run-state object the pipeline's stages share, and the run's log and progress bar."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from ..cache import IdsDigest, ScoreCache
from ..criteria.search_checkpoint import SEARCH_DIR
from ..io import Source
from ..plan import PipelineConfig, Plan, Step
from ..progress import Bar, activity
from ..registry import CRITERIA
from .checkpoint import Speeds

log = logging.getLogger("thresher.pipeline")


@dataclass
class ShardRef:
    """What the output stage needs to find a shard's cached scores again."""

    key: str  # the shard's content key
    n: int  # rows
    ids: str  # digest of its ids (checked against each cache entry)
    tokens_key: str  # cache key of its token counts (under "length")
    keys: dict  # criterion column -> cache key


@dataclass
class RunState:
    """Everything the stages (score shards, score pool-scoped criteria, select, write) share."""

    cfg: PipelineConfig
    plan: Plan
    source: Source
    checksum: str
    out: Optional[Path]
    cache: ScoreCache
    engine: Any
    mode: str = "fresh"
    on_shard: Optional[Callable[[int], None]] = None
    t0: float = field(default_factory=time.perf_counter)
    timings: dict = field(default_factory=dict)
    scorers: dict = field(default_factory=dict)  # column -> loaded scorer
    keys: dict = field(default_factory=dict)  # column -> scorer cache key
    shards: list = field(default_factory=list)  # ShardRef per shard
    pool_frames: dict = field(default_factory=dict)  # column -> pool-scoped criterion's table (or PoolEntry)
    pool_keys: dict = field(default_factory=dict)  # column -> pool-scoped cache key
    run_info: dict = field(default_factory=dict)  # column -> what a pool-scoped scorer reports (index, recall...)
    workers: dict = field(default_factory=dict)  # node -> pids of the engine's workers that scored shards
    worker_peak_rss_mb: float = 0.0  # the largest peak memory a worker reported
    pool_task_peak_rss_mb: float = 0.0  # the largest peak memory a whole-pool task reported (Ray)
    worker_peak_private_mb: float = 0.0  # the same, private memory only (sampled; thresher.memory)
    pool_task_peak_private_mb: float = 0.0
    read_on_workers: bool = False  # the engine's workers parsed the input (the driver read no row's text)
    remote_embed: Any = None  # positions -> (embeddings, rows held), on the engine's workers (when they read)
    deferred_fill: dict = field(default_factory=dict)  # column -> (embedder, device, folder) filled on a miss only
    row_indexes: dict = field(default_factory=dict)  # column -> RowIndex (rows scored under other shard layouts)
    reused_rows: int = 0  # rows whose scores came from entries of another shard layout
    speeds: Speeds = field(default_factory=Speeds)  # rows/s per criterion in this process (checkpoint chunks)
    worker_restored: dict = field(default_factory=dict)  # (node, pid) -> rows a worker restored from checkpoints
    n: int = 0
    lines: Any = None  # int64 source line per row (a read-only memory map)
    files: Any = None  # int32 file index per row (a read-only memory map)
    tokens: Any = None  # float64 approximate tokens per row (a read-only memory map)
    groups: Any = None  # group label per row (a GroupColumn: codes on disk), or None
    rowstore: Any = None  # RowStore: where lines, files, tokens and group codes are kept (on disk)
    embeddings: Any = None  # float32 [n, d] when the selector needs them
    pool_tables: list = field(default_factory=list)  # shard tables (PoolPieces), only for pool-scoped criteria
    pool_vectors: Any = None  # keys of the pool's rows for the criteria that score from embeddings (.pool_vectors)
    pool_put: Optional[Callable[[Any], Any]] = None  # where a PoolPiece's ids go (the engine's object store)
    pool_digest: IdsDigest = field(default_factory=IdsDigest)  # of the remote shards' ids, as they arrive
    cache_hits: int = 0
    cache_misses: int = 0
    k: int = 0
    order: Any = None  # selected pool positions, best first
    token_stop: Optional[int] = None  # a token budget: the position of the first row of the order left out
    eligible: Any = None  # bool per row: passed the filters
    selection_kind: str = ""  # streaming-topk|streaming-threshold|streaming-pareto|in-memory|score-only
    outputs: dict = field(default_factory=dict)  # kind -> path written
    manifest: dict = field(default_factory=dict)

    # ------------------------------------------------------------ criteria
    def shard_criteria(self) -> list:
        return [c for c in self.plan.criteria if not is_pool_scoped(c.name)]

    def pool_criteria(self) -> list:
        return [c for c in self.plan.criteria if is_pool_scoped(c.name)]

    def scorer_for(self, step: Step) -> Any:
        """The loaded scorer of a criterion (loaded once, when a cache miss needs it)."""
        if step.col not in self.scorers:
            t = time.perf_counter()
            with activity(f"loading {step.col}", quiet=self.cfg.quiet):  # a model load or conversion
                entry = CRITERIA.get(step.name)
                self.scorers[step.col] = self.engine.make_scorer(entry.obj, self.runtime_options(step))
            self.timings[f"load {step.col}"] = round(time.perf_counter() - t, 3)
            if step.col not in self.keys:  # (a key from cache_key_for needs no scorer instance)
                self.keys[step.col] = scorer_key(self.scorers[step.col], step)
        return self.scorers[step.col]

    def runtime_options(self, step: Step) -> dict:
        """The criterion's options plus the run's shared embeddings cache for a criterion that embeds
        (``cache_dir`` changes no score and is not part of any cache key), so runs that share
        ``--cache-dir`` embed a pool once; and, for a criterion whose neighbour search can resume, the
        folder of its checkpoints in the score cache and the run's ``checkpoint_s``."""
        options = dict(step.options)
        known = CRITERIA.get(step.name).options
        if "cache_dir" in known and options.get("cache_dir") is None:
            options["cache_dir"] = str(self.cache.root / "embeddings")
        if "checkpoint_dir" in known and options.get("checkpoint_dir") is None:  # a pool search's checkpoints
            options["checkpoint_dir"] = str(self.cache.root / step.col / SEARCH_DIR)
        if "checkpoint_s" in known and options.get("checkpoint_s") is None:
            options["checkpoint_s"] = self.cfg.checkpoint_s
        return options

    def key_for(self, step: Step) -> str:
        """The criterion's cache key, from its class (``cache_key_for``) without loading a model when it can."""
        if step.col not in self.keys:
            cls = CRITERIA.get(step.name).obj
            if hasattr(cls, "cache_key_for"):
                self.keys[step.col] = str(cls.cache_key_for(**step.options))
            else:
                self.scorer_for(step)
        return self.keys[step.col]

    def fingerprint(self, step: Step) -> Optional[str]:
        """The loaded scorer's model fingerprint, if it has one."""
        sc = self.scorers.get(step.col)
        fp = getattr(sc, "fingerprint", None)
        if fp is None and getattr(sc, "lm", None) is not None:
            fp = getattr(sc.lm, "fingerprint", None)
        return None if fp is None else str(fp)

    def lap(self, name: str, t: float) -> None:
        self.timings[name] = round(time.perf_counter() - t, 3)

    def say(self, msg: str) -> None:
        say(msg, self.cfg.quiet)


def is_pool_scoped(name: str) -> bool:
    """Whether a criterion scores a row against the whole pool (registered with ``scope="pool"``)."""
    entry = CRITERIA.get(name)
    return (entry.meta.get("scope") or getattr(entry.obj, "scope", None)) == "pool"


def scorer_key(scorer: Any, step: Step) -> str:
    """A loaded scorer's cache key (its ``cache_key()``; else its name and options)."""
    if hasattr(scorer, "cache_key"):
        return str(scorer.cache_key())
    version = getattr(type(scorer), "VERSION", None)
    return json.dumps({"name": step.name, "version": version, "options": step.options}, sort_keys=True, default=str)


def concat(parts: list, dtype: Any) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


# ------------------------------------------------------------------ progress / logging
class Progress(Bar):
    """The run's bar (:class:`thresher.progress.Bar`: rate and ETA; rows within a shard through ``share``)."""

    def __init__(self, quiet: bool, desc: str, total: Optional[int] = None, unit: str = "rows") -> None:
        super().__init__(desc, total, unit, quiet=quiet)


def setup_log(out: Optional[Path]) -> Optional[logging.Handler]:
    log.setLevel(logging.INFO)
    if out is None:
        return None
    handler = logging.FileHandler(out / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return handler


def say(msg: str, quiet: bool) -> None:
    log.info(msg)
    if not quiet:
        tqdm.write(msg, file=sys.stderr)
