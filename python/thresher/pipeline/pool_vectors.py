"""The local engine's :class:`~thresher.embed.pool.PoolVectors`: the run's pool-scoped criteria that
score from embeddings alone get each shard's rows put in the embeddings cache as the shard is read and
the pool's vectors read back by key, so the run keeps no shard table for them (it kept every shard's
texts and columns: 3.6 GB at 1,000,000 BIG-bench rows)."""

from __future__ import annotations

from typing import Optional

import pandas as pd

from ..criteria.base import sample_ids
from ..embed.pool import PoolVectors, vector_spec
from ..engines.local import LocalEngine
from ..registry import CRITERIA
from .state import RunState


def add_shard(vec: PoolVectors, table: pd.DataFrame) -> None:
    """One local shard's rows, keyed by their ids as the criteria's own call keys them."""
    vec.add(table, sample_ids(table))


def pool_vectors(st: RunState) -> Optional[PoolVectors]:
    """The run's :class:`PoolVectors` for its pool-scoped criteria that score from embeddings read
    through the cache, on the local engine (a worker pool reads and embeds the input itself; another engine
    gets the pool through its own ``score_pool``); None when there is none."""
    if not isinstance(st.engine, LocalEngine):
        return None
    specs = {}
    for step in st.pool_criteria():
        spec = vector_spec(CRITERIA.get(step.name).obj, st.runtime_options(step))
        if spec is not None:
            specs[step.col] = spec
    # the rows the embeddings cache lacks wait on disk until a criterion is scored from the vectors: a
    # rerun whose scores are cached encodes nothing (see thresher.embed.pool)
    return PoolVectors(specs, spill=st.rowstore.scratch("pool-texts")) if specs else None
