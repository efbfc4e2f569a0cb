"""Local engine: scorers run in this process, one shard (optionally split into
batches of ``batch_size`` rows) at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import pandas as pd
import pyarrow as pa

from ..frames import as_pandas
from ..io import Source
from ..registry import CRITERIA, ENGINES, Option


@ENGINES.register(
    "local",
    doc="score in this process, one shard (or batch_size rows) at a time",
    options=[Option("batch_size", None, "rows per scorer call (default: the whole shard)", type=int, min=1)],
)
class LocalEngine:
    def __init__(self, batch_size: Optional[int] = None) -> None:
        self.batch_size = batch_size

    def make_scorer(self, cls: Any, options: dict) -> Any:
        return cls(**options)

    def score_pool(self, scorer: Any, table: Any, name: str) -> Any:
        """A pool-scoped criterion (``scope="pool"``): the whole pool in one call, whatever ``batch_size``."""
        return scorer(table)

    def score(self, scorer: Any, table: Any, name: str) -> Any:
        if self.batch_size is None or len(table) <= self.batch_size:
            return scorer(table)
        parts = [
            scorer(table.iloc[s : s + self.batch_size].reset_index(drop=True))
            for s in range(0, len(table), self.batch_size)
        ]
        return pd.concat(parts, ignore_index=True)


class ScoreColumns:
    """A criterion as a batch -> batch transform that keeps the input columns.

    ``ScoreColumns("ifd", model="default")(batch)`` returns the batch (pandas or
    Arrow) with the criterion's columns appended. Rows are read by the same reader as
    every verb (:class:`thresher.io.Source`), row by row: Alpaca
    (``instruction``/``input``/``output``), prompt/response, OpenAI ``messages`` (all
    roles, ``tool``/``function`` and system prompts included) and ShareGPT
    ``conversations``, mixed freely; an ``id`` column is kept, rows without one get
    their content hash. Constructing it loads the model once, so it drops into Ray
    Data ``map_batches`` (as the class, with ``fn_constructor_args``), a NeMo Curator
    or Data-Juicer stage, or any map over pandas batches.
    """

    def __init__(self, criterion: str, **options: Any) -> None:
        entry = CRITERIA.get(criterion)
        self.name = criterion
        self.scorer = entry.obj(**entry.resolve_options(options))

    def __call__(self, batch: Any) -> Any:
        """The batch with the criterion's columns added, in the batch's own kind: a DataFrame, a
        pyarrow Table, or a dict of column lists (a dict or HF ``Dataset.map(batched=True)``'s batch)."""
        df = as_pandas(batch).reset_index(drop=True)
        if len(df):
            work = Source(df, shard_size=len(df)).read_all()
            res = self.scorer(work)
            res = res.set_index(res["id"].astype(str)).reindex(work["id"]).reset_index(drop=True)
            for c in res.columns:
                if c != "id":
                    df[c] = res[c].to_numpy()
        if isinstance(batch, (pa.Table, pa.RecordBatch)):
            return pa.Table.from_pandas(df, preserve_index=False)
        if isinstance(batch, Mapping):
            return {c: df[c].tolist() for c in df.columns}
        return df
