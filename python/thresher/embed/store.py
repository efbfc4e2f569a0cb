"""Embedding store: float16/float32 shards keyed by sample, reused across runs.

Layout: ``root/<embedder fingerprint digest>/part-<digest>.npy`` (vectors,
``[n, d]``) and ``part-<digest>.keys.json`` (the n keys, written last: it is the
commit marker, so a shard without it is ignored). A key is
``blake2b(sample id, text)``: an id whose text changed is recomputed. Files are
written atomically through :mod:`thresher.fs` (temporary name, fsync, rename, folder fsync); only ``.npy`` (loaded with
``allow_pickle=False``) and JSON are stored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..fs import atomic_file


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
        self._index: Optional[dict[str, tuple[Path, int]]] = None
        self._arrays: dict[Path, np.ndarray] = {}

    def _load_index(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            self._index = {}
            if self.dir.is_dir():
                for kf in sorted(self.dir.glob("part-*.keys.json")):
                    vf = kf.with_name(kf.name[: -len(".keys.json")] + ".npy")
                    if not vf.is_file():
                        continue
                    try:
                        keys = json.loads(kf.read_text())
                    except (OSError, ValueError):
                        continue
                    for r, k in enumerate(keys):
                        self._index.setdefault(k, (vf, r))
        return self._index

    def lookup(self, keys: Sequence[str], dim: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """(found mask [n], vectors [n, d] float32; rows not found are zeros)."""
        idx = self._load_index()
        found = np.array([k in idx for k in keys], dtype=bool)
        if not found.any():
            return found, np.zeros((len(keys), dim or 0), np.float32)
        groups: dict[Path, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            if found[i]:
                p, r = idx[k]
                groups.setdefault(p, []).append((i, r))
        out = None
        for p, pairs in groups.items():
            arr = self._arrays.get(p)
            if arr is None:
                arr = np.load(p, mmap_mode="r", allow_pickle=False)
                self._arrays[p] = arr
            if out is None:
                out = np.zeros((len(keys), arr.shape[1]), np.float32)
            ii = np.fromiter((a for a, _ in pairs), np.int64)
            rr = np.fromiter((b for _, b in pairs), np.int64)
            out[ii] = arr[rr]
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
        if self._index is not None:
            for r, k in enumerate(keys):
                self._index.setdefault(k, (vf, r))
        return vf

    def __len__(self) -> int:
        return len(self._load_index())
