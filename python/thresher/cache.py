"""Score cache: one Parquet file per (shard content, criterion key).

Key = blake2b(thresher version, criterion name, scorer cache key (model
fingerprint + resolved options + criterion version), shard key (the shard's ids
and sample content hashes in order)). Changing a criterion's option changes only
that criterion's keys; changing a sample changes only its shard's key.

Each entry records, in its Parquet metadata, a digest of the ids it covers (and the
scorer's model fingerprint when known); a lookup that names the ids it expects gets
a miss, never another shard's scores, when they differ. Files are written through
:mod:`thresher.fs` (a temporary name unique to the writing process, fsync, rename),
so a run killed at any moment leaves either a complete entry or none, and runs that
share a cache never touch each other's temporary files: :meth:`ScoreCache.clean_temp`
removes only temporary files whose writer is gone. Only Parquet is stored: nothing
that executes code on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import thresher

from .fs import atomic_save, clean_stale_temp

META_KEY = b"thresher.cache"


def cache_key(criterion: str, scorer_key: str, shard_key: str, *, version: Optional[str] = None) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (version or thresher.__version__, criterion, scorer_key, shard_key):
        h.update(str(part).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def ids_digest(ids: Sequence[Any]) -> str:
    """A digest of row ids, in order (what a cache entry covers)."""
    h = hashlib.blake2b(digest_size=16)
    for i in ids:
        h.update(str(i).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def _digest_of(ids: Any) -> Optional[str]:
    if ids is None or isinstance(ids, str):
        return ids
    return ids_digest(ids)


class ScoreCache:
    """Per-shard score tables under ``root/<criterion>/<key>.parquet``."""

    def __init__(self, root: Any) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, criterion: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in criterion).strip(".") or "_"
        return self.root / safe / f"{key}.parquet"

    def info(self, criterion: str, key: str) -> dict:
        """The entry's metadata (``ids``: digest of the ids it covers, ``fingerprint``); {} if none."""
        try:
            meta = pq.read_schema(self.path(criterion, key)).metadata or {}
            return dict(json.loads(meta.get(META_KEY, b"{}")))
        except (OSError, ValueError, pa.ArrowException):
            return {}

    def get(self, criterion: str, key: str, ids: Any = None) -> Optional[pd.DataFrame]:
        """The cached table, or None (a missing, unreadable or mismatched entry counts as a miss).

        ``ids``: the row ids (or their :func:`ids_digest`) the entry must cover, in order."""
        p = self.path(criterion, key)
        if not p.exists():
            self.misses += 1
            return None
        try:
            table = pq.read_table(p)
        except (OSError, ValueError, pa.ArrowException):  # truncated outside the atomic protocol: recompute
            self.misses += 1
            with contextlib.suppress(OSError):
                p.unlink()
            return None
        want = _digest_of(ids)
        if want is not None and not self._covers(table, want):
            self.misses += 1
            return None
        self.hits += 1
        return table.to_pandas()

    @staticmethod
    def _covers(table: pa.Table, want: str) -> bool:
        try:
            meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        except ValueError:
            return False
        if meta.get("ids") != want:
            return False
        return "id" not in table.column_names or ids_digest(table.column("id").to_pylist()) == want

    def put(
        self, criterion: str, key: str, table: Any, *, ids: Any = None, fingerprint: Optional[str] = None
    ) -> pd.DataFrame:
        """Write atomically; return the table as read back (so fresh and cached runs agree bit for bit).

        ``ids`` (or their digest; default: the table's ``id`` column) is recorded as what the entry covers."""
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        if ids is None and "id" in table.column_names:
            ids = table.column("id").to_pylist()
        meta = {"ids": _digest_of(ids), "fingerprint": fingerprint}
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), META_KEY: json.dumps(meta, sort_keys=True).encode()}
        )
        p = self.path(criterion, key)
        atomic_save(p, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        return pq.read_table(p).to_pandas()

    def has(self, criterion: str, key: str) -> bool:
        return self.path(criterion, key).exists()

    def clean_temp(self) -> int:
        """Remove temporary files left by writers that are gone (never a live writer's, never other files)."""
        return clean_stale_temp(self.root)

    def entries(self, criterion: Optional[str] = None) -> list[Path]:
        base = self.root / criterion if criterion else self.root
        return sorted(base.rglob("*.parquet")) if base.exists() else []

    def size_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.entries())
