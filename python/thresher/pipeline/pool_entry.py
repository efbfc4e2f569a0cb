"""A pool-scoped criterion's scores when the engine's workers read the pool: the task that scored the
whole pool checks its result and writes the score-cache entry itself (:class:`PoolSink`); the driver
reads it back a shard's rows at a time (outputs) or a column at a time (the selection) through
:class:`PoolEntry`. So the driver never holds the pool's ids or the scorer's table: O(shard), plus
the score columns an in-memory selection keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .. import memory
from ..cache import ScoreCache, ids_digest
from .scoring_checks import check_scores


class PoolSink:
    """Called in the whole-pool task on the scorer's result (picklable: plain fields): the result
    checked against the pool (one row per row, ids in order), written as the cache entry ``col``/``key``
    covering the ids of ``digest`` (row groups of ``rows_per_group`` rows); returns what the driver
    keeps: the scorer's run info and model fingerprint."""

    def __init__(self, root: str, col: str, key: str, digest: str, name: str, alias: Optional[str],
                 rows_per_group: int) -> None:  # fmt: skip
        self.root, self.col, self.key, self.digest = root, col, key, digest
        self.name, self.alias, self.rows_per_group = name, alias, int(rows_per_group)

    def __call__(self, out: Any, table: Any, fingerprint: Optional[str], info: Any) -> dict:
        got = ids_digest(table["id"].astype(str).tolist())
        if got != self.digest:  # the pool the task assembled is not the one the driver read
            raise RuntimeError(f"criterion {self.name!r}: the pool assembled here (ids digest {got}) is not "
                               f"the run's ({self.digest})")  # fmt: skip
        df = check_scores(out, table, self.name, self.alias)
        ScoreCache(self.root).write(self.col, self.key, df, ids=self.digest, fingerprint=fingerprint,
                                    extra={"run_info": info}, row_group_rows=self.rows_per_group)  # fmt: skip
        return {"run_info": info, "fingerprint": fingerprint, "rows": len(df), "peak_rss_mb": memory.peak_rss_mb(),
                "peak_private_mb": memory.peak_private_mb()}  # fmt: skip


class PoolEntry:
    """A pool-scoped criterion's cache entry, read in parts: ``frame(columns)`` (whole columns) and
    ``rows(slice, columns)`` (the row groups a range of rows spans)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        meta = pq.ParquetFile(self.path).metadata
        self.columns = list(meta.schema.names)
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def frame(self, columns: Any) -> pd.DataFrame:
        """The named columns this entry has, every row."""
        return pq.read_table(self.path, columns=[c for c in self.columns if c in set(columns)]).to_pandas()

    def rows(self, sl: slice, columns: Any = None) -> pd.DataFrame:
        """Rows ``sl.start`` .. ``sl.stop`` (a step-1 slice), index from 0: every column, or those of
        ``columns`` the entry has."""
        lo, hi = int(sl.start or 0), min(int(len(self) if sl.stop is None else sl.stop), len(self))
        pf = pq.ParquetFile(self.path)
        names = None if columns is None else [c for c in self.columns if c in set(columns)]
        if hi <= lo:
            empty = pf.schema_arrow.empty_table()
            return (empty if names is None else empty.select(names)).to_pandas()
        first = int(np.searchsorted(self.starts, lo, side="right")) - 1  # the group holding row lo
        last = int(np.searchsorted(self.starts, hi, side="left"))  # groups that start before hi
        table = pf.read_row_groups(list(range(first, last)), columns=names)
        return table.slice(lo - int(self.starts[first]), hi - lo).to_pandas()


__all__ = ["PoolSink", "PoolEntry"]
