"""Embedding store: float16/float32 shards keyed by sample, reused across runs.

Layout: ``root/<embedder fingerprint digest>/part-<digest>.npy`` (vectors,
``[n, d]``) and ``part-<digest>.keys.json`` (the n keys, written last: it is the
commit marker, so a shard without it is ignored). A key is
``blake2b(sample id, text)``: an id whose text changed is recomputed. Files are
written atomically through :mod:`thresher.fs` (temporary name, fsync, rename, folder fsync); only ``.npy`` (loaded with
``allow_pickle=False``) and JSON are stored.

A process keeps one store per folder (:func:`open_store`): its index of keys (a compact
:class:`~thresher.embed.keyindex.KeyIndex`, 32 bytes a key) is read once and then only the parts
it has not seen are read (a part another process wrote since is picked up;
a part deleted since makes it read the index again), so looking up a shard costs the shard,
not the store.

An embedder spec's store is found without loading the embedder (:func:`remember_store`,
:func:`known_store`): ``root/aliases/<digest of the spec's fingerprint>.json`` holds the
fingerprint and dimension of the encoder the spec loaded, written when it was loaded. A fully
cached lookup therefore never loads the model (a large ``lm:`` embedder on every worker).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..fs import atomic_file
from .keyindex import KeyIndex


def sample_key(sample_id: Any, text: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(str(sample_id).encode("utf-8"))
    h.update(b"\x1f")
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


class EmbeddingStore:
    """Shards of one embedder's vectors under ``root``."""

    def __init__(self, root: Any, fingerprint: str, *, dtype: str = "float16") -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype: expected 'float16' or 'float32', got {dtype!r}")
        self.fingerprint = fingerprint
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=10).hexdigest()
        self.dir = Path(root) / digest
        self.dtype = dtype
        self._index: Optional[KeyIndex] = None
        self._parts: list[Path] = []  # vectors file of each part number of the index
        self._seen: set[str] = set()  # the keys files read into the index
        self._arrays: dict[Path, np.ndarray] = {}

    def _load_index(self) -> KeyIndex:
        """The index of keys, brought up to date with the folder: parts not yet read are read; a
        part that is gone makes it read every part again."""
        parts = sorted(self.dir.glob("part-*.keys.json")) if self.dir.is_dir() else []
        names = {kf.name for kf in parts}
        if self._index is None or not self._seen <= names:
            self._index, self._parts, self._seen, self._arrays = KeyIndex(), [], set(), {}
        for kf in parts:
            if kf.name in self._seen:
                continue
            vf = kf.with_name(kf.name[: -len(".keys.json")] + ".npy")
            if not vf.is_file():
                continue
            try:
                keys = json.loads(kf.read_text())
            except (OSError, ValueError):
                continue
            self._add_part(kf.name, vf, keys, merge=False)
        self._index.settle()
        return self._index

    def _add_part(self, name: str, vf: Path, keys: Sequence[str], merge: bool = True) -> None:
        assert self._index is not None
        self._seen.add(name)
        self._parts.append(vf)
        self._index.add(keys, len(self._parts) - 1, merge=merge)

    def has(self, keys: Sequence[str]) -> np.ndarray:
        """Which of ``keys`` are stored (a bool mask), without reading a vector."""
        return self._load_index().find(keys)[0]

    def _array(self, p: Path) -> np.ndarray:
        arr = self._arrays.get(p)
        if arr is None:
            arr = self._arrays[p] = np.load(p, mmap_mode="r", allow_pickle=False)
        return arr

    def lookup(self, keys: Sequence[str], dim: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """(found mask [n], vectors [n, d] float32; rows not found are zeros)."""
        found, part, row = self._load_index().find(keys)
        if not found.any():
            return found, np.zeros((len(keys), dim or 0), np.float32)
        hit = np.flatnonzero(found)
        hit = hit[np.argsort(part[hit], kind="stable")]  # grouped by part
        out = None
        for grp in np.split(hit, np.flatnonzero(np.diff(part[hit])) + 1):
            arr = self._array(self._parts[part[grp[0]]])
            if out is None:
                out = np.zeros((len(keys), arr.shape[1]), np.float32)
            out[grp] = arr[row[grp]]
        assert out is not None
        return found, out

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> Path:
        """Write one shard (atomically); returns its vectors' path."""
        if len(keys) != vectors.shape[0]:
            raise ValueError(f"keys: {len(keys)} keys for {vectors.shape[0]} vectors")
        self.dir.mkdir(parents=True, exist_ok=True)
        h = hashlib.blake2b(digest_size=10)
        for k in keys:
            h.update(k.encode())
        name = f"part-{h.hexdigest()}"
        vf = self.dir / f"{name}.npy"
        arr = np.ascontiguousarray(vectors, dtype=self.dtype)
        with atomic_file(vf, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        with atomic_file(self.dir / f"{name}.keys.json", "wb") as fh:  # last: the shard's commit marker
            fh.write(json.dumps(list(keys)).encode())
        if self._index is not None and f"{name}.keys.json" not in self._seen:
            self._add_part(f"{name}.keys.json", vf, keys)
        return vf

    def __len__(self) -> int:
        return len(self._load_index())


_STORES: dict[tuple[str, str, str], EmbeddingStore] = {}
_STORES_LOCK = threading.Lock()


def open_store(root: Any, fingerprint: str, *, dtype: str = "float16") -> EmbeddingStore:
    """This process's store of ``fingerprint``'s vectors under ``root`` (one per folder and dtype)."""
    key = (str(Path(root).expanduser().resolve()), fingerprint, dtype)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = EmbeddingStore(root, fingerprint, dtype=dtype)
        return store


def _alias_path(root: Any, spec_fingerprint: str) -> Path:
    name = hashlib.blake2b(spec_fingerprint.encode(), digest_size=10).hexdigest()
    return Path(root) / "aliases" / f"{name}.json"


def remember_store(root: Any, spec_fingerprint: str, fingerprint: str, dim: int) -> None:
    """Record that the spec of fingerprint ``spec_fingerprint`` loads an encoder of ``fingerprint``
    and ``dim`` (read back by :func:`known_store`)."""
    rec = {"spec": spec_fingerprint, "fingerprint": fingerprint, "dim": int(dim)}
    path = _alias_path(root, spec_fingerprint)
    try:
        if json.loads(path.read_text()) == rec:
            return
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as fh:
        fh.write(json.dumps(rec).encode())


def known_store(root: Any, spec_fingerprint: str) -> Optional[tuple[str, int]]:
    """(encoder fingerprint, dimension) recorded for the spec, or None."""
    try:
        rec = json.loads(_alias_path(root, spec_fingerprint).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("spec") != spec_fingerprint:
        return None
    fp, dim = rec.get("fingerprint"), rec.get("dim")
    return (fp, dim) if isinstance(fp, str) and isinstance(dim, int) and dim > 0 else None
