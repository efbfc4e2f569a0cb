"""Local engine: scorers run in this process, one shard (optionally split into
batches of ``batch_size`` rows) at a time."""
from __future__ import annotations

from typing import Any, Optional


class LocalEngine:
    name = "local"

    def __init__(self, batch_size: Optional[int] = None) -> None:
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.batch_size = batch_size

    def make_scorer(self, cls: Any, options: dict) -> Any:
        return cls(**options)

    def score(self, scorer: Any, table: Any, name: str):
        import pandas as pd

        if self.batch_size is None or len(table) <= self.batch_size:
            return scorer(table)
        parts = [scorer(table.iloc[s:s + self.batch_size].reset_index(drop=True))
                 for s in range(0, len(table), self.batch_size)]
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

    def __init__(self, criterion: str, **options):
        from ..registry import CRITERIA

        entry = CRITERIA.get(criterion)
        self.name = criterion
        self.scorer = entry.obj(**entry.resolve_options(options))

    def __call__(self, batch):
        from ..io.schema import content_hash
        from ..frames import as_pandas

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
