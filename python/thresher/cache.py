"""Score cache: one Parquet file per (shard content, criterion key).

Key = blake2b(thresher version, criterion name, scorer cache key (model
fingerprint + resolved options + criterion version), shard key (the shard's ids
and sample content hashes in order)). Changing a criterion's option changes only
that criterion's keys; changing a sample changes only its shard's key. Files are
written atomically (temporary name in the same folder, fsync, rename), so a run
killed at any moment leaves either a complete entry or none; stray temporary
files are ignored and cleaned. Only Parquet is stored: nothing that executes code
on load.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional

import thresher

from .io.writers import write_parquet_atomic


def cache_key(criterion: str, scorer_key: str, shard_key: str, *, version: Optional[str] = None) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (version or thresher.__version__, criterion, scorer_key, shard_key):
        h.update(str(part).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


class ScoreCache:
    """Per-shard score tables under ``root/<criterion>/<key>.parquet``."""

    def __init__(self, root: Any) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path(self, criterion: str, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in criterion)
        return self.root / safe / f"{key}.parquet"

    def get(self, criterion: str, key: str):
        """The cached table, or None (a missing or unreadable entry counts as a miss)."""
        import pyarrow.parquet as pq

        p = self.path(criterion, key)
        if not p.exists():
            self.misses += 1
            return None
        try:
            df = pq.read_table(p).to_pandas()
        except Exception:  # truncated by a crash outside the atomic protocol: recompute
            self.misses += 1
            try:
                p.unlink()
            except OSError:
                pass
            return None
        self.hits += 1
        return df

    def put(self, criterion: str, key: str, table: Any):
        """Write atomically; return the table as read back (so fresh and cached runs agree bit for bit)."""
        import pyarrow.parquet as pq

        p = self.path(criterion, key)
        write_parquet_atomic(table, p)
        return pq.read_table(p).to_pandas()

    def has(self, criterion: str, key: str) -> bool:
        return self.path(criterion, key).exists()

    def clean_temp(self) -> int:
        n = 0
        if self.root.exists():
            for p in self.root.rglob(".*.tmp*"):
                try:
                    p.unlink()
                    n += 1
                except OSError:
                    pass
        return n

    def entries(self, criterion: Optional[str] = None) -> list[Path]:
        base = self.root / criterion if criterion else self.root
        return sorted(base.rglob("*.parquet")) if base.exists() else []

    def size_bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.entries())
