"""Pool-scoped criteria that score from embeddings alone (``knn_distance``, ``local_density``,
``semdedup``: ``Criterion.SCORES_FROM_EMBEDDINGS``) in a run on this process's engine.

Each shard's rows go into the run's embeddings cache as the shard is read (:func:`fill_embeddings`:
only the rows the cache lacks are encoded); the run keeps each row's id, cache key and whether its
text is empty, not its text. The criterion then scores the pool's vectors read back by key
(``score_embeddings``): the same vectors its own call over the pool table reads through the cache,
so the same scores, while the driver holds N x d vectors and a key per row instead of the pool's
texts and columns (3.6 GB at 1,000,000 BIG-bench rows before).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from ..criteria.base import sample_ids
from ..embed import embeddings_of_keys, fill_embeddings, sample_texts
from ..embed.store import sample_key
from ..engines.local import LocalEngine
from ..registry import CRITERIA
from .state import RunState

KEY_BYTES = 24  # sample_key: 12 bytes as hex


class PoolVectors:
    """The run's pool as its criteria's embeddings see it: ids, cache keys and empty-text flags per row,
    the vectors in the embeddings cache. ``specs``: column -> (embedder, device, cache folder, batch size)."""

    def __init__(self, specs: dict) -> None:
        self.specs = specs
        self.ids: list = []
        self.keys: list = []
        self.empty: list = []

    def add(self, table: pd.DataFrame) -> None:
        """One shard's rows (in pool order): into the cache for every embedder, their keys kept."""
        texts, ids = sample_texts(table), sample_ids(table)
        for embedder, device, folder, batch in dict.fromkeys(self.specs.values()):
            fill_embeddings(texts, embedder, cache_dir=folder, ids=ids, device=device, batch_size=batch)
        self.ids.append(np.asarray(ids, dtype=object))
        self.keys.append(np.asarray([sample_key(i, t) for i, t in zip(ids, texts)], dtype=f"S{KEY_BYTES}"))
        self.empty.append(np.fromiter((not t.strip() for t in texts), bool, len(texts)))

    def pool_ids(self) -> list:
        return np.concatenate(self.ids).tolist() if self.ids else []

    def score(self, scorer: Any, col: str) -> pd.DataFrame:
        """``scorer``'s scores of the pool from its vectors (``score_embeddings``)."""
        embedder, _, folder, _ = self.specs[col]
        keys = np.concatenate(self.keys).astype(str).astype(object) if self.keys else np.zeros(0, object)
        vecs = embeddings_of_keys(keys.tolist(), embedder, cache_dir=folder)
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, object)
        empty = np.concatenate(self.empty) if self.empty else np.zeros(0, bool)
        return scorer.score_embeddings(ids, vecs, keys, empty)


def pool_vectors(st: RunState) -> Optional[PoolVectors]:
    """The run's :class:`PoolVectors` for its pool-scoped criteria that score from embeddings read
    through the cache, on the local engine (a worker pool reads and embeds the input itself; another engine
    gets the pool through its own ``score_pool``); None when there is none."""
    if not isinstance(st.engine, LocalEngine):  # Ray's workers read and embed the input; a plugin engine: its own
        return None
    specs = {}
    for step in st.pool_criteria():
        cls = CRITERIA.get(step.name).obj
        opts = st.runtime_options(step)
        reads = getattr(cls, "pool_embedder", None)
        got = reads(opts) if reads is not None and getattr(cls, "SCORES_FROM_EMBEDDINGS", False) else None
        if got is not None:
            specs[step.col] = (got[0], got[1], str(opts["cache_dir"]), int(opts.get("batch_size") or 64))
    return PoolVectors(specs) if specs else None
