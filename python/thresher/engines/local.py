"""Local engine: scorers run in this process, one shard (optionally split into
batches of ``batch_size`` rows) at a time."""

from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from ..frames import as_pandas
from ..io.schema import content_hash
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
    Arrow; rows with ``instruction``/``input``/``output``, optional ``id``) with the
    criterion's columns appended. Constructing it loads the model once, so it drops
    into Ray Data ``map_batches`` (as the class, with ``fn_constructor_args``), a NeMo
    Curator or Data-Juicer stage, or any map over pandas batches. Rows without an
    ``id`` get their content hash.
    """

    def __init__(self, criterion: str, **options: Any) -> None:
        entry = CRITERIA.get(criterion)
        self.name = criterion
        self.scorer = entry.obj(**entry.resolve_options(options))

    def __call__(self, batch: Any) -> Any:
        df = as_pandas(batch).reset_index(drop=True)
        work = df.copy()
        for c in ("instruction", "output"):
            if c not in work.columns:
                raise ValueError(f"batch: missing column {c!r} (rows need instruction, optional input, output)")
        if "input" not in work.columns:
            work["input"] = ""
        if "id" not in work.columns:
            work["id"] = [content_hash(r)[:16] for r in work[["instruction", "input", "output"]].to_dict("records")]
        work["id"] = work["id"].astype(str)
        res = self.scorer(work)
        res = res.set_index(res["id"].astype(str)).reindex(work["id"]).reset_index(drop=True)
        for c in res.columns:
            if c != "id":
                df[c] = res[c].to_numpy()
        return df
