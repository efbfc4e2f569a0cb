"""Checkpoints inside a shard: a run killed mid-shard resumes at its last checkpoint, not at the
shard's first row.

A shard criterion on a CPU can spend many minutes on one shard (IFD with SmolLM2 on two cores: about
five rows a second, so over ten minutes for 4,096 rows). :func:`score_checkpointed` scores the rows of
a shard that no checkpoint holds in chunks, and when the next chunk would end more than ``every_s``
seconds after the last checkpoint (and when scoring stops with an error or Ctrl-C) saves the rows
done so far beside the shard's cache entry, as ``<criterion>/<key>.partial.parquet``: the rows'
scores and their row keys (a digest of id and content, :func:`thresher.cache.row_keys`). The next
run of the shard reads the checkpoint, takes the rows whose keys are still in the shard, and scores
only the rest; the complete entry then replaces the checkpoint.

Chunks are whole multiples of the call's **unit**: the rows a call may be cut at and still give the
scores of one call, bit for bit (:func:`chunk_unit`: the engine's ``batch_size``, whose pieces are
separate calls anyway, else the scorer's ``chunk_rows``, e.g. an LM criterion's window). So a shard
scored in chunks, or resumed from a checkpoint, has the same bytes as one call. A scorer that
declares no unit is called once per shard (checkpointed as a whole shard, by the cache). How many
units a chunk holds comes from the speed this process measured, so that a chunk takes about half
the interval; a fast criterion takes the rest of the shard in one call after its first chunk.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..cache import ScoreCache
from ..plan import CHECKPOINT_S
from ..progress import advance

PARTIAL = ".partial"  # a checkpoint's key: the entry's key + PARTIAL (file <key>.partial.parquet)
ROWKEY = "__thresher_rowkey"  # the checkpoint's column of row keys
CHUNK_SHARE = 0.5  # a chunk is sized to take this share of the interval at the measured speed
DEFAULT_EVERY_S = CHECKPOINT_S  # seconds between checkpoints unless the run says otherwise


def chunk_unit(scorer: Any, batch_size: Optional[int] = None) -> Optional[int]:
    """Rows a call of ``scorer`` may be cut at (or at any multiple) without changing a score: the
    engine's ``batch_size`` when set (each piece is its own call), else the scorer's ``chunk_rows``
    (:attr:`thresher.criteria.base.BatchCriterion.chunk_rows`); None: whole calls only."""
    unit = batch_size or getattr(scorer, "chunk_rows", None)
    return int(unit) if isinstance(unit, int) and not isinstance(unit, bool) and unit > 0 else None


class Speeds:
    """Rows per second each criterion column was measured at in this process (sizes the chunks), and
    the rows restored from checkpoints so far."""

    def __init__(self) -> None:
        self.rate: dict = {}
        self.restored = 0

    def chunk(self, col: str, every_s: float, left: int, unit: int) -> int:
        """Rows of the next chunk: whole units (one while the speed is unknown), at most ``left``."""
        rate = self.rate.get(col)
        units = 1 if rate is None else max(1, int(rate * every_s * CHUNK_SHARE) // unit)
        return min(left, units * unit)

    def seconds(self, col: str, rows: int) -> float:
        """The time ``rows`` rows should take (0 while the speed is unknown)."""
        rate = self.rate.get(col)
        return 0.0 if not rate else rows / rate

    def record(self, col: str, rows: int, seconds: float) -> None:
        if rows:
            self.rate[col] = rows / max(seconds, 1e-9)


def partial_key(key: str) -> str:
    return key + PARTIAL


def load_partial(cache: ScoreCache, col: str, key: str, rowkeys: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """The shard positions and rows of the checkpoint of entry ``key`` that are rows of this shard
    (matched by row key); nothing when there is none or it cannot be read."""
    path = cache.path(col, partial_key(key))
    empty = (np.zeros(0, np.int64), pd.DataFrame())
    if not path.is_file():
        return empty
    try:
        table = pq.read_table(path).to_pandas()
    except (OSError, ValueError, pa.ArrowException):
        return empty
    if ROWKEY not in table.columns:
        return empty
    where = {k: i for i, k in enumerate(np.asarray(rowkeys).tolist())}
    pos = np.array([where.get(bytes(k), -1) for k in table[ROWKEY].tolist()], np.int64)
    keep = pos >= 0
    keep[keep] = ~pd.Series(pos[keep]).duplicated().to_numpy()  # a row saved twice counts once
    rows = table.loc[keep].drop(columns=[ROWKEY]).reset_index(drop=True)
    return pos[keep], rows


def save_partial(cache: ScoreCache, col: str, key: str, parts: list, rowkeys: np.ndarray) -> None:
    """Write the checkpoint of entry ``key``: the rows of ``parts`` ((positions, table) pairs)."""
    pos = np.concatenate([p for p, _ in parts])
    table = pd.concat([t for _, t in parts], ignore_index=True)
    table[ROWKEY] = np.asarray(rowkeys)[pos].tolist()
    cache.write(col, partial_key(key), table, extra={"partial": True})


def drop_partial(cache: ScoreCache, col: str, key: str) -> None:
    """Remove the checkpoint of entry ``key`` (once the complete entry is written)."""
    with contextlib.suppress(OSError):
        cache.path(col, partial_key(key)).unlink(missing_ok=True)


def _assemble(parts: list, table: pd.DataFrame, col: str) -> pd.DataFrame:
    pos = np.concatenate([p for p, _ in parts])
    out = pd.concat([t for _, t in parts], ignore_index=True).iloc[np.argsort(pos, kind="stable")]
    out = out.reset_index(drop=True)
    if len(out) != len(table) or not np.array_equal(out["id"].astype(str), table["id"].astype(str)):
        raise RuntimeError(f"criterion {col!r}: the checkpointed rows do not assemble into the shard")
    return out


def score_checkpointed(
    cache: ScoreCache,
    col: str,
    key: str,
    table: pd.DataFrame,
    rowkeys: np.ndarray,
    score: Callable[[pd.DataFrame], pd.DataFrame],
    *,
    every_s: float,
    speeds: Speeds,
    unit: Optional[int],
) -> pd.DataFrame:
    """The shard's scores for cache entry ``col``/``key``: the rows a checkpoint holds, and ``score``
    of the others in chunks of whole ``unit`` rows (:func:`chunk_unit`; None, or ``every_s`` <= 0:
    one call), checkpointed as the module says and when ``score`` raises. The caller writes the
    entry, then :func:`drop_partial`."""
    pos, rows = load_partial(cache, col, key, rowkeys)
    parts: list = [(pos, rows)] if len(pos) else []
    advance(len(pos))  # restored rows move the shard's bar as scored ones do
    speeds.restored += len(pos)
    todo = np.setdiff1d(np.arange(len(table), dtype=np.int64), pos)
    chunked = every_s > 0 and unit is not None
    saved, last, i = len(parts), time.monotonic(), 0
    try:
        while i < len(todo) or not parts:
            size = speeds.chunk(col, every_s, len(todo) - i, unit) if chunked and unit else len(todo) - i
            idx = todo[i : i + size]
            t = time.monotonic()
            parts.append((idx, score(table.iloc[idx].reset_index(drop=True))))
            speeds.record(col, len(idx), time.monotonic() - t)
            i += size
            left = len(todo) - i
            if chunked and unit and left:
                due = time.monotonic() - last + speeds.seconds(col, speeds.chunk(col, every_s, left, unit))
                if due >= every_s:  # the next chunk would end past the interval: save now
                    save_partial(cache, col, key, parts, rowkeys)
                    saved, last = len(parts), time.monotonic()
    except BaseException:
        if chunked and len(parts) > saved:  # keep what was scored, then stop as asked
            with contextlib.suppress(Exception):
                save_partial(cache, col, key, parts, rowkeys)
        raise
    return _assemble(parts, table, col)
