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
