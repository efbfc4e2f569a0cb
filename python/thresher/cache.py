"""Score cache: one Parquet file per (shard content, criterion key).

Key = blake2b(cache format version, criterion name, scorer cache key (the
criterion's own ``VERSION``, model fingerprint and resolved options), shard key
(the shard's ids and sample content hashes in order)). Changing a criterion's
option or its ``VERSION`` changes only that criterion's keys; changing a sample
changes only its shard's key. The package version is NOT part of the key: an
upgrade of thresher that leaves a criterion unchanged keeps its cached scores (a
criterion whose scores change bumps its ``VERSION``).

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .fs import atomic_save, clean_stale_temp

META_KEY = b"thresher.cache"
#: Layout of a cache entry (file naming, metadata); bumped only when entries become unreadable.
CACHE_FORMAT = "1"


def cache_key(criterion: str, scorer_key: str, shard_key: str, *, version: Optional[str] = None) -> str:
    """The entry key. ``scorer_key`` carries the criterion's own version (``Criterion.cache_key_for``);
    ``version`` is the cache format (default :data:`CACHE_FORMAT`), never the package version."""
    h = hashlib.blake2b(digest_size=16)
    for part in (version or CACHE_FORMAT, criterion, scorer_key, shard_key):
        h.update(str(part).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


class IdsDigest:
    """:func:`ids_digest` fed piece by piece (a pool's ids as its shards arrive, never all held)."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=16)

    def update(self, ids: Sequence[Any]) -> "IdsDigest":
        for i in ids:
            self._h.update(str(i).encode("utf-8"))
            self._h.update(b"\x1f")
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def ids_digest(ids: Sequence[Any]) -> str:
    """A digest of row ids, in order (what a cache entry covers)."""
    return IdsDigest().update(ids).hexdigest()


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

    def covers(self, criterion: str, key: str, digest: str) -> bool:
        """Whether the entry exists and its metadata says it covers the ids of ``digest`` (counted as a
        hit or a miss; the entry is not read: for an entry too large to hold, see :meth:`get`)."""
        ok = self.info(criterion, key).get("ids") == digest
        if ok:
            self.hits += 1
            with contextlib.suppress(OSError):
                os.utime(self.path(criterion, key))
        else:
            self.misses += 1
        return ok

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
        with contextlib.suppress(OSError):  # last use, for `thresher cache prune --older-than` (read-only caches: skip)
            os.utime(p)
        return table.to_pandas()

    def read_columns(self, criterion: str, key: str, digest: str, columns: Any) -> Optional[pd.DataFrame]:
        """Columns ``columns`` (those the entry has) of an entry this run already read or wrote in full
        (:meth:`get` checked its ids then), or None when it is missing, unreadable or its metadata names
        other ids: a later scan of a selection, so only the metadata's digest is checked, and it is not
        counted as a hit or a miss."""
        p = self.path(criterion, key)
        try:
            schema = pq.read_schema(p)
            meta = json.loads((schema.metadata or {}).get(META_KEY, b"{}"))
            if meta.get("ids") != digest:
                return None
            return pq.read_table(p, columns=[c for c in schema.names if c in set(columns)]).to_pandas()
        except (OSError, ValueError, pa.ArrowException):
            return None

    @staticmethod
    def _covers(table: pa.Table, want: str) -> bool:
        try:
            meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        except ValueError:
            return False
        if meta.get("ids") != want:
            return False
        return "id" not in table.column_names or ids_digest(table.column("id").to_pylist()) == want

    def put(self, criterion: str, key: str, table: Any, **options: Any) -> pd.DataFrame:
        """:meth:`write` the entry; return the table as read back (so fresh and cached runs agree bit for bit)."""
        return pq.read_table(self.write(criterion, key, table, **options)).to_pandas()

    def write(
        self,
        criterion: str,
        key: str,
        table: Any,
        *,
        ids: Any = None,
        fingerprint: Optional[str] = None,
        extra: Optional[dict] = None,
        rowkeys: Optional[np.ndarray] = None,
        row_group_rows: Optional[int] = None,
    ) -> Path:
        """Write atomically; return the entry's path.

        ``ids`` (or their digest; default: the table's ``id`` column) is recorded as what the entry covers;
        ``extra``: more JSON metadata returned by :meth:`info` (e.g. a pool-scoped scorer's run info);
        ``rowkeys``: each row's identity (:func:`row_keys`), written beside the entry first, so a later
        run with another shard layout finds these rows (:class:`RowIndex`); ``row_group_rows``: rows per
        Parquet row group (a reader of a few rows at a time then decodes only theirs)."""
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        if ids is None and "id" in table.column_names:
            ids = table.column("id").to_pylist()
        meta = {**(extra or {}), "ids": _digest_of(ids), "fingerprint": fingerprint}
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), META_KEY: json.dumps(meta, sort_keys=True).encode()}
        )
        p = self.path(criterion, key)
        if rowkeys is not None:  # before the entry: an entry is never without its row keys
            atomic_save(rows_path(p), lambda tmp: _save_keys(tmp, rowkeys))
        atomic_save(p, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_rows))
        return p

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


# ------------------------------------------------------------------ rows across shard layouts (resume by id)
ROWS_SUFFIX = ".rows.npy"


def rows_path(entry: Path) -> Path:
    """The row-keys file beside a score entry (``<key>.rows.npy``)."""
    return entry.with_suffix(ROWS_SUFFIX)


def _save_keys(tmp: Any, keys: np.ndarray) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(keys, dtype="S16"), allow_pickle=False)


def row_keys(ids: Sequence[str], hashes: Sequence[str]) -> np.ndarray:
    """Each row's identity: a 16-byte digest of its id and content hash (``S16``)."""
    out = np.empty(len(ids), dtype="S16")
    for i, (sid, h) in enumerate(zip(ids, hashes)):
        out[i] = hashlib.blake2b(f"{sid}\0{h}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return out


class RowIndex:
    """The rows already scored for one criterion column under one criterion key, in entries of ANY shard
    layout: a run whose shards differ from an earlier run's (another ``--shard-size``, another engine's
    blocks) assembles a shard's entry from the earlier entries when every row of it is there, by id and
    content. Loaded on first use; O(rows) keys in memory."""

    def __init__(self, cache: ScoreCache, criterion: str, scorer_key: str) -> None:
        self.cache, self.criterion, self.scorer_key = cache, criterion, scorer_key
        self._map: Optional[dict] = None

    def _load(self) -> dict:
        m: dict = {}
        folder = self.cache.path(self.criterion, "x").parent
        for p in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            rp = rows_path(p)
            if not rp.is_file() or self.cache.info(self.criterion, p.stem).get("criterion") != self.scorer_key:
                continue
            with contextlib.suppress(OSError, ValueError):
                for i, k in enumerate(np.load(rp, allow_pickle=False).tolist()):
                    m.setdefault(k, (p, i))
        return m

    def assemble(self, keys: np.ndarray) -> Optional[tuple[pd.DataFrame, Optional[str]]]:
        """The rows ``keys`` in this order from earlier entries, and the first entry's model fingerprint;
        None unless every row is found (and every entry read)."""
        if self._map is None:
            self._map = self._load()
        hits = [self._map.get(k) for k in np.asarray(keys).tolist()]
        if not hits or any(h is None for h in hits):
            return None
        rows: dict = {}  # entry -> (positions in the result, rows in the entry)
        for pos, (p, i) in enumerate(hits):
            got = rows.setdefault(p, ([], []))
            got[0].append(pos)
            got[1].append(i)
        try:
            parts = [pq.read_table(p).to_pandas().iloc[r] for p, (_, r) in rows.items()]
        except (OSError, ValueError, IndexError, pa.ArrowException):
            return None
        where = np.concatenate([np.asarray(q, np.int64) for q, _ in rows.values()])
        table = pd.concat(parts, ignore_index=True).iloc[np.argsort(where, kind="stable")].reset_index(drop=True)
        return table, self.cache.info(self.criterion, hits[0][0].stem).get("fingerprint")


# ------------------------------------------------------------------ maintenance (`thresher cache ls|prune`)
EMBEDDINGS = "embeddings"  # the embeddings store shares the cache folder (thresher.embed.store)
#: A criterion's stopped pool-wide calls (thresher.criteria.search_checkpoint.SEARCH_DIR; cache sits above criteria)
SEARCH_DIR = "search-checkpoints"


@dataclass
class CacheEntry:
    """One entry: a score table (``<criterion>/<key>.parquet``) or an embeddings part (``.npy`` + ``.keys.json``)."""

    group: str  # criterion (column) name, or "embeddings"
    files: list = field(default_factory=list)
    bytes: int = 0
    mtime: float = 0.0  # last write or use


def _entry(group: str, files: list, used: Optional[Path] = None) -> CacheEntry:
    """``used``: the file whose time is the entry's last write or use (default: the newest of ``files``)."""
    stats = [f.stat() for f in files]
    mtime = used.stat().st_mtime if used is not None else max(s.st_mtime for s in stats)
    return CacheEntry(group, files, sum(s.st_size for s in stats), mtime)


def _embedding_entries(folder: Path) -> list[CacheEntry]:
    out = []
    for keys in sorted(folder.rglob("part-*.keys.json")):
        vec = keys.with_name(keys.name[: -len(".keys.json")] + ".npy")
        with contextlib.suppress(OSError):
            out.append(_entry(EMBEDDINGS, [keys] + ([vec] if vec.is_file() else [])))
    return out


def _drop_orphan_aliases(folder: Path) -> set:
    """Remove the embedder aliases (``aliases/*.json``: spec -> store, :mod:`thresher.embed.store`)
    once no embeddings part is left; returns the folder they were in."""
    aliases = folder / "aliases"
    if not aliases.is_dir() or any(folder.rglob("part-*.keys.json")):
        return set()
    for f in aliases.glob("*.json"):
        f.unlink(missing_ok=True)
    return {aliases}


def _is_entry(f: Path) -> bool:
    """A score-cache entry carries :data:`META_KEY` in its Parquet metadata (read from the footer)."""
    try:
        return META_KEY in (pq.read_schema(f).metadata or {})
    except (OSError, ValueError, pa.ArrowException):
        return False


def cache_entries(root: Any, criterion: Optional[str] = None) -> list[CacheEntry]:
    """Every entry under ``root`` (optionally of one criterion, or ``"embeddings"``), by group then path."""
    root = Path(root)
    if not root.is_dir():
        return []
    out: list[CacheEntry] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if criterion is not None and folder.name != criterion:
            continue
        if folder.name == EMBEDDINGS:
            out.extend(_embedding_entries(folder))
            continue
        for f in sorted(folder.glob("*.parquet")):
            if not _is_entry(f):  # another program's file in a folder given as the cache: never listed or pruned
                continue
            rows = rows_path(f)
            with contextlib.suppress(OSError):  # removed by another process meanwhile
                out.append(_entry(folder.name, [f] + ([rows] if rows.is_file() else []), used=f))
        out.extend(_search_entries(folder))
    return out


def _search_entries(folder: Path) -> list[CacheEntry]:
    """The checkpoints of stopped pool-wide calls (``<criterion>/search-checkpoints/<call>/``: the
    ``part-*.npz`` files of :mod:`thresher.criteria.search_checkpoint`, or what a call keeps beside them,
    e.g. necessity's LoRA folder): one entry per folder, with every file under it."""
    out = []
    for d in sorted(folder.glob(f"{SEARCH_DIR}/*/")):
        files = sorted(p for p in d.rglob("*") if p.is_file())
        if files:
            with contextlib.suppress(OSError):
                out.append(_entry(folder.name, files))
    return out


def cache_summary(root: Any) -> list[dict]:
    """Per group: ``name``, ``kind`` (scores | embeddings), ``entries``, ``bytes``, ``oldest``/``newest``
    (epoch seconds of the last write or use)."""
    groups: dict[str, dict] = {}
    for e in cache_entries(root):
        g = groups.setdefault(
            e.group,
            {"name": e.group, "kind": "embeddings" if e.group == EMBEDDINGS else "scores", "entries": 0, "bytes": 0,
             "oldest": e.mtime, "newest": e.mtime},
        )  # fmt: skip
        g["entries"] += 1
        g["bytes"] += e.bytes
        g["oldest"], g["newest"] = min(g["oldest"], e.mtime), max(g["newest"], e.mtime)
    return list(groups.values())


def prune_candidates(
    root: Any,
    *,
    older_than_days: Optional[float] = None,
    criterion: Optional[str] = None,
    everything: bool = False,
    now: Optional[float] = None,
) -> list[CacheEntry]:
    """The entries a prune removes: all (``everything``), or those of ``criterion`` and/or not written
    or used for ``older_than_days`` days. Nothing is selected without one of the three."""
    if older_than_days is None and criterion is None and not everything:
        raise ValueError("cache prune: give --older-than DAYS, --criterion NAME or --all")
    if older_than_days is not None and (older_than_days != older_than_days or older_than_days < 0):
        raise ValueError(f"cache prune: --older-than: expected a number of days >= 0, got {older_than_days}")
    entries = cache_entries(root, None if everything else criterion)
    if everything or older_than_days is None:
        return entries
    cutoff = (time.time() if now is None else now) - older_than_days * 86400.0
    return [e for e in entries if e.mtime < cutoff]


def prune(root: Any, entries: list[CacheEntry]) -> tuple[int, int]:
    """Remove ``entries`` (the commit-marker file first), empty group folders and stale temporary
    files; returns (entries removed, bytes freed)."""
    n = freed = 0
    folders = set()
    for e in entries:
        try:
            for f in e.files:  # keys.json (the commit marker) comes first: a half-removed part is ignored
                f.unlink(missing_ok=True)
        except OSError:
            continue
        n, freed = n + 1, freed + e.bytes
        folders.update(f.parent for f in e.files)
    root = Path(root)
    if root.is_dir():
        clean_stale_temp(root)
        folders.update(_drop_orphan_aliases(root / EMBEDDINGS))
    for folder in sorted(folders, key=lambda p: -len(p.parts)):
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
    return n, freed
