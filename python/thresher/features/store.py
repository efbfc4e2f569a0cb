"""A sharded, memory-mapped store of gradient (or any) feature vectors.

Layout of a store folder::

    manifest.json                  what the features are: dim, seed, kind, model fingerprint,
                                   transform, ... plus the storage dtype; written once
    shard-00000.data.npy           [n, dim] float16 | int8 | [n, dim/8] uint8 (1-bit, packed signs)
    shard-00000.scale.npy          int8 only: float32 [n] per-row scale
    shard-00000.ids.json           the n sample ids; written last = the shard's commit marker

Rows are L2-normalised at write time (a zero row stays zero), so a dot product
of two stored rows is their cosine. Every file is written to a temporary name,
fsynced and renamed, the ids file last: a killed writer leaves either a whole
shard or none, and a re-run skips the ids already stored (resumable by sample
id). Opening an existing folder with different metadata (another seed, model,
dim, transform, ...) raises ValueError: features are never silently mixed.
Nothing here unpickles: ``np.load(..., allow_pickle=False, mmap_mode="r")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from ..fs import atomic_file, atomic_write_bytes

DTYPES = ("float16", "int8", "bit")
FORMAT = "thresher-features"
VERSION = 1


class FeatureStore:
    """Open (or create) a feature store at ``path`` for features described by ``meta``.

    ``meta`` must hold at least ``dim``; every key (seed, model, transform, ...) is
    compared with the stored manifest when the folder exists. ``dtype``:
    float16 (default), int8 (per-row scale) or bit (signs only, read back as
    +-1/sqrt(dim)).
    """

    def __init__(
        self, path, meta: Optional[dict] = None, *, dtype: str = "float16", shard_rows: int = 4096, create: bool = True
    ) -> None:
        self.path = Path(path)
        if dtype not in DTYPES:
            raise ValueError(f"dtype: {dtype!r} not one of {DTYPES}")
        if not isinstance(shard_rows, int) or shard_rows < 1:
            raise ValueError(f"shard_rows: expected a positive int, got {shard_rows!r}")
        self.shard_rows = shard_rows
        man = self.path / "manifest.json"
        if man.is_file():
            try:
                stored = json.loads(man.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{man}: not valid JSON ({exc})") from None
            if stored.get("format") != FORMAT:
                raise ValueError(f"{man}: not a thresher feature store (format={stored.get('format')!r})")
            self.meta = stored["meta"]
            self.dtype = stored["dtype"]
            if meta is not None:
                want = json.loads(json.dumps(meta))  # normalise tuples etc.
                for k in sorted(set(want) | set(self.meta)):
                    if want.get(k) != self.meta.get(k):
                        raise ValueError(
                            f"feature store {self.path}: written with {k}={self.meta.get(k)!r}, this run has "
                            f"{k}={want.get(k)!r}; refusing to mix incompatible features (use another folder)"
                        )
                if dtype != self.dtype and dtype != "float16":
                    raise ValueError(f"feature store {self.path}: stored as {self.dtype}, asked for {dtype}")
        else:
            if meta is None or not create:
                raise ValueError(f"feature store {self.path}: no manifest.json (not created yet)")
            if "dim" not in meta:
                raise ValueError("meta: must hold 'dim'")
            self.meta = json.loads(json.dumps(meta))
            self.dtype = dtype
            self.path.mkdir(parents=True, exist_ok=True)
            body = json.dumps(
                {"format": FORMAT, "version": VERSION, "dtype": dtype, "meta": self.meta}, indent=2, sort_keys=True
            ).encode()
            atomic_write_bytes(man, body)
        self.dim = int(self.meta["dim"])
        if self.dtype == "bit" and self.dim % 8:
            raise ValueError(f"dtype='bit' needs dim % 8 == 0, got dim={self.dim}")
        self._scan()

    # ---------------------------------------------------------------- reading
    def _scan(self) -> None:
        self.shards: list[tuple[int, list[str]]] = []
        for p in sorted(self.path.glob("shard-*.ids.json")):
            k = int(p.name.split("-")[1].split(".")[0])
            data = self.path / f"shard-{k:05d}.data.npy"
            if not data.is_file():
                continue
            ids = json.loads(p.read_text())
            self.shards.append((k, ids))
        self._ids = {}
        for si, (_, ids) in enumerate(self.shards):
            for j, i in enumerate(ids):
                self._ids.setdefault(i, (si, j))

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return [i for _, ids in self.shards for i in ids]

    def __contains__(self, sid: str) -> bool:
        return sid in self._ids

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids not stored yet (what a resumed run still has to compute)."""
        return [i for i in ids if i not in self._ids]

    def _decode(self, k: int) -> np.ndarray:
        data = np.load(self.path / f"shard-{k:05d}.data.npy", mmap_mode="r", allow_pickle=False)
        if self.dtype == "float16":
            return np.asarray(data, dtype=np.float32)
        if self.dtype == "int8":
            scale = np.load(self.path / f"shard-{k:05d}.scale.npy", allow_pickle=False)
            return np.asarray(data, dtype=np.float32) * scale[:, None]
        bits = np.unpackbits(np.asarray(data), axis=1)[:, : self.dim]
        return (1.0 - 2.0 * bits.astype(np.float32)) / np.sqrt(self.dim, dtype=np.float32)

    def iter_shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(ids, float32 [n, dim]) per shard, in write order."""
        for k, ids in self.shards:
            yield ids, self._decode(k)

    def raw(self, k: int) -> np.ndarray:
        """The memory-mapped stored array of shard number k (no decoding)."""
        return np.load(self.path / f"shard-{k:05d}.data.npy", mmap_mode="r", allow_pickle=False)

    def load(self, ids: Optional[Sequence[str]] = None) -> tuple[list[str], np.ndarray]:
        """All rows (write order), or the rows of ``ids`` in that order (ValueError for unknown ids)."""
        if ids is None:
            parts = [a for _, a in self.iter_shards()]
            arr = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
            return self.ids(), arr
        missing = self.missing(ids)
        if missing:
            raise ValueError(f"feature store {self.path}: {len(missing)} id(s) not stored, e.g. {missing[:3]}")
        out = np.empty((len(ids), self.dim), np.float32)
        cache: dict[int, np.ndarray] = {}
        for r, sid in enumerate(ids):
            si, j = self._ids[sid]
            if si not in cache:
                cache[si] = self._decode(self.shards[si][0])
            out[r] = cache[si][j]
        return list(ids), out

    # ---------------------------------------------------------------- writing
    def write(self, ids: Sequence[str], feats) -> int:
        """Normalise and append the rows whose id is not stored yet; returns how many were written.

        Rows with NaN/inf raise ValueError naming the id (store only scorable samples).
        """
        feats = np.asarray(feats, dtype=np.float32)
        ids = [str(i) for i in ids]
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"feats: expected [n, {self.dim}], got {feats.shape}")
        if len(ids) != feats.shape[0]:
            raise ValueError(f"ids: {len(ids)} ids for {feats.shape[0]} rows")
        if len(set(ids)) != len(ids):
            raise ValueError("ids: duplicate ids in one write")
        bad = ~np.isfinite(feats).all(1)
        if bad.any():
            raise ValueError(f"feats: non-finite row(s) for id(s) {[ids[i] for i in np.nonzero(bad)[0][:5]]}")
        keep = [i for i, s in enumerate(ids) if s not in self._ids]
        if not keep:
            return 0
        ids = [ids[i] for i in keep]
        x = feats[keep]
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norm > 0, norm, 1.0)
        for a in range(0, len(ids), self.shard_rows):
            self._write_shard(ids[a : a + self.shard_rows], x[a : a + self.shard_rows])
        return len(ids)

    def _write_shard(self, ids: list[str], x: np.ndarray) -> None:
        k = (max(s[0] for s in self.shards) + 1) if self.shards else 0
        # an orphan data file from a killed writer (no ids file) is simply overwritten
        base = self.path / f"shard-{k:05d}"
        if self.dtype == "float16":
            data = x.astype(np.float16)
        elif self.dtype == "int8":
            amax = np.abs(x).max(1)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            data = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
            with atomic_file(Path(f"{base}.scale.npy")) as f:
                np.save(f, scale, allow_pickle=False)
        else:
            data = np.packbits((x < 0).astype(np.uint8), axis=1)
        with atomic_file(Path(f"{base}.data.npy")) as f:
            np.save(f, data, allow_pickle=False)
        atomic_write_bytes(Path(f"{base}.ids.json"), json.dumps(ids).encode())  # last: the shard's commit marker
        self.shards.append((k, ids))
        si = len(self.shards) - 1
        for j, i in enumerate(ids):
            self._ids.setdefault(i, (si, j))
