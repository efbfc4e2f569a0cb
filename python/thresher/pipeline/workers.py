"""Shard scoring on an engine's worker pool (the Ray engine; any engine with ``start_workers``).

The driver streams the pool shard by shard and sends each shard to the pool with the list of
(criterion column, cache key) entries the score cache lacks. A :class:`ShardWorker` is one
long-lived worker process: it builds each criterion's scorer ONCE for the whole job (the model
is loaded on the first shard that needs it), scores the shards it is sent and writes their
score-cache entries itself (an atomic write per entry, keyed by content, so a task that is
retried after its worker died rewrites the same bytes: no lost and no duplicated rows). The
driver gets back only small receipts and reads each entry from the cache, in shard order.

A worker also fills the shared embeddings cache for the run's embedding steps (pool-scoped
criteria and selectors that need embeddings): the pool is embedded in parallel, and the
whole-pool step that follows reads every vector from the cache.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from .. import memory
from ..cache import ScoreCache
from ..embed import embed_table, fill_table
from ..io.splits import ReadSpec, Split, assemble, read_split
from .checkpoint import DEFAULT_EVERY_S, Speeds, chunk_unit, drop_partial, score_checkpointed
from .scoring_checks import check_scores

TOKENS_SPEC = "__tokens__"  # the spec of the token counts a worker computes when it also reads the shard


@dataclass(frozen=True)
class CriterionSpec:
    """What a worker needs to build one criterion's scorer: the class itself (shipped by value
    for a plugin), its resolved options, and the output column names."""

    col: str
    name: str
    alias: Optional[str]
    cls: Any
    options: dict


class ShardWorker:
    """One worker of the pool (a Ray actor, or an object in this process)."""

    def __init__(self, specs: dict, cache_root: str, batch_size: Optional[int] = None,
                 checkpoint_s: float = DEFAULT_EVERY_S) -> None:  # fmt: skip
        self.specs = dict(specs)
        self.cache = ScoreCache(Path(cache_root))
        self.batch_size = batch_size
        self.checkpoint_s = checkpoint_s  # seconds between checkpoints inside a shard (thresher.pipeline.checkpoint)
        self.speeds = Speeds()
        self.scorers: dict = {}
        memory.watch()  # this worker's private memory, sampled (see info)

    def _scorer(self, col: str) -> Any:
        if col not in self.scorers:
            spec = self.specs[col]
            self.scorers[col] = spec.cls(**spec.options)
        return self.scorers[col]

    def _fingerprint(self, col: str) -> Optional[str]:
        sc = self.scorers.get(col)
        fp = getattr(sc, "fingerprint", None)
        if fp is None and getattr(sc, "lm", None) is not None:
            fp = getattr(sc.lm, "fingerprint", None)
        return None if fp is None else str(fp)

    def _score(self, col: str, table: pd.DataFrame) -> pd.DataFrame:
        scorer = self._scorer(col)
        b = self.batch_size
        if b is None or len(table) <= b:
            return scorer(table)
        parts = [scorer(table.iloc[s : s + b].reset_index(drop=True)) for s in range(0, len(table), b)]
        return pd.concat(parts, ignore_index=True)

    def score(self, table: pd.DataFrame, todo: list, digest: str, rowkeys: Any = None) -> dict:
        """Score ``table`` with each (column, cache key, criterion key) of ``todo`` whose entry is missing,
        and write the entries (with the rows' keys, for runs with other shard layouts). Returns a receipt:
        this worker's pid and node, and the columns it computed."""
        done = []
        for col, key, crit, *spec_key in todo:
            if self.cache.get(col, key, digest) is not None:  # a retried task: already written
                continue
            sk = spec_key[0] if spec_key else col  # the token counts: spec TOKENS_SPEC, no criterion key
            spec = self.specs[sk]

            def call(t: pd.DataFrame, sk: str = sk, spec: CriterionSpec = spec) -> pd.DataFrame:
                return check_scores(self._score(sk, t), t, spec.name, spec.alias)

            if crit is None or rowkeys is None:  # token counts: fast, never checkpointed
                df = call(table)
            else:
                unit = chunk_unit(self._scorer(sk), self.batch_size)
                df = score_checkpointed(self.cache, col, key, table, rowkeys, call, every_s=self.checkpoint_s,
                                        speeds=self.speeds, unit=unit)  # fmt: skip
            extra, rk = ({"criterion": crit}, rowkeys) if crit is not None else (None, None)
            self.cache.put(col, key, df, ids=digest, fingerprint=self._fingerprint(sk), extra=extra, rowkeys=rk)
            drop_partial(self.cache, col, key)
            done.append(col)
        return {**self.info(), "computed": done, "restored": self.speeds.restored}

    def embed(self, table: pd.DataFrame, embedders: list, vectors: bool = False) -> dict:
        """Fill the embeddings cache with ``table``'s rows for each (embedder, device, cache folder);
        ``vectors``: also return the first embedder's vectors (``"vectors"``)."""
        out = self.info()
        for i, (name, device, emb_dir) in enumerate(embedders):
            if vectors and i == 0:
                out["vectors"] = embed_table(table, name, cache_dir=emb_dir, device=device)
            else:  # fill only: cached rows are not read, and the model is loaded only for missing rows
                fill_table(table, name, cache_dir=emb_dir, device=device)
        return out

    def read(self, spec: ReadSpec, split: Split, blob: Any = None) -> tuple:
        """Parse one split of the input: (its :class:`~thresher.io.splits.SplitRows`, its tables...);
        ``blob``: the bytes of a ``blob`` split, passed apart from it (the engine resolves them)."""
        return read_split(spec, split if blob is None else replace(split, blob=blob))

    def score_rows(self, todo: list, digest: str, rowkeys: Any, ids: list, idxs: list, *tables: Any) -> dict:
        """:meth:`score` of a shard given as pieces of split tables (assembled here, on the worker)."""
        return self.score(assemble(ids, idxs, tables), todo, digest, rowkeys)

    def embed_rows(self, embedders: list, vectors: bool, ids: list, idxs: list, *tables: Any) -> dict:
        """:meth:`embed` of a shard given as pieces of split tables."""
        return self.embed(assemble(ids, idxs, tables), embedders, vectors)

    def criterion_keys(self) -> dict:
        """Each criterion's cache key as resolved in THIS process (``device``/``dtype`` ``auto`` resolve
        against the worker's device: a GPU worker keys bf16 where a CPU driver would key fp32)."""
        out = {}
        for col, spec in self.specs.items():
            if col == TOKENS_SPEC:
                continue
            key_for = getattr(spec.cls, "cache_key_for", None)
            if key_for is not None:
                out[col] = str(key_for(**spec.options))
        return out

    def info(self) -> dict:
        """This worker: pid, node and peak memory so far (MB): resident (shared object-store and mapped file
        pages included) and private (sampled; :mod:`thresher.memory`)."""
        return {
            "pid": os.getpid(),
            "node": node_id(),
            "peak_rss_mb": memory.peak_rss_mb(),
            "peak_private_mb": memory.peak_private_mb(),
        }


def node_id() -> str:
    """The Ray node this process runs on (its hostname outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.get_runtime_context().get_node_id())
    except Exception:  # pragma: no cover - ray is optional
        pass
    return socket.gethostname()


class LocalPool:
    """A pool of one in-process worker: ``submit`` runs at once (the local engine's semantics)."""

    max_in_flight = 1

    def __init__(self, worker: ShardWorker) -> None:
        self.worker = worker

    def submit(self, method: str, *args: Any) -> Any:
        return getattr(self.worker, method)(*args)

    def result(self, handle: Any) -> Any:
        return handle

    def close(self) -> None:
        pass
