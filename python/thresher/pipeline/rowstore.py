"""The pool's per-row bookkeeping (source line, file, token count, group) kept on disk, not on the heap.

The write stage needs, for every row, where it came from (``source_file``, ``source_line``), its
token count and its group, and the selection needs the token counts and groups. Held as arrays
these grow with the pool (about 30 bytes a row, far more for string groups). :class:`RowStore`
appends each shard's values to one file per column in a run-private temporary folder under the
score cache (``.rows.<pid>.<random>.thresher-tmp``: removed when the run ends, or by the next run
once this process is gone) and hands them back as read-only memory maps, which index and slice
as arrays do while the operating system pages them in and out: the driver's own memory stays
O(shard) for these columns whatever the pool's size.

Groups are stored as int32 codes into the list of distinct labels (:class:`GroupColumn`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..fs import temp_name


class RowStore:
    """Columns of fixed-width values appended shard by shard, read back as memory maps."""

    def __init__(self, root: Any) -> None:
        self.root = Path(root)
        self.dir: Optional[Path] = None
        self._files: dict = {}  # name -> (open file, dtype)
        self.n: dict = {}  # name -> values (rows) written
        self.tail: dict = {}  # name -> the shape of one row (() for a column of scalars)
        self._scratch = 0

    def _folder(self) -> Path:
        if self.dir is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.dir = temp_name(self.root / "rows")
            self.dir.mkdir()
        return self.dir

    def scratch(self, prefix: str = "tmp") -> Path:
        """A new folder inside the store's (removed with it), e.g. for an :class:`~thresher.io.idset.IdSet`'s runs."""
        self._scratch += 1
        return self._folder() / f"{prefix}-{self._scratch}"

    def unique(self, prefix: str) -> str:
        """A column name not used yet in this store."""
        self._scratch += 1
        return f"{prefix}-{self._scratch}"

    def _open(self, name: str, dtype: Any) -> Any:
        if name not in self._files:
            self._files[name] = (open(self._folder() / f"{name}.bin", "wb"), np.dtype(dtype))  # noqa: SIM115
            self.n[name] = 0
        fh, dt = self._files[name]
        if dt != np.dtype(dtype):
            raise TypeError(f"row store: column {name!r} holds {dt}, not {np.dtype(dtype)}")
        return fh

    def append(self, name: str, values: Any, dtype: Any) -> None:
        """Append ``values`` (converted to ``dtype``) to column ``name``: scalars, or rows of one fixed shape
        (e.g. ``[n, d]`` embeddings: every append to a column has the same trailing shape)."""
        fh = self._open(name, dtype)
        arr = np.ascontiguousarray(np.asarray(values, dtype=dtype))
        tail = self.tail.setdefault(name, arr.shape[1:])
        if arr.shape[1:] != tail:
            raise ValueError(f"row store: column {name!r} holds rows of shape {tail}, not {arr.shape[1:]}")
        fh.write(arr.tobytes())
        self.n[name] += len(arr)

    def column(self, name: str, dtype: Any) -> np.ndarray:
        """The whole column as a read-only array (a memory map, ``[rows, *row shape]``; an empty array when
        nothing was written)."""
        tail = self.tail.get(name, ())
        if name not in self._files or self.n[name] == 0:
            return np.zeros((0, *tail), dtype=dtype)
        fh, dt = self._files[name]
        fh.flush()
        return np.memmap(fh.name, dtype=dt, mode="r", shape=(self.n[name], *tail))

    def sort(self, name: str) -> np.ndarray:
        """Sort column ``name`` in place, on disk (through a writable memory map: the pages are the file's,
        which the operating system can write back and drop, not the heap); returns it read-only."""
        if name not in self._files or self.n[name] == 0:
            return self.column(name, np.float64)
        fh, dt = self._files[name]
        fh.flush()
        rw = np.memmap(fh.name, dtype=dt, mode="r+", shape=(self.n[name],))
        rw.sort()
        rw.flush()
        del rw
        return self.column(name, dt)

    def close(self) -> None:
        """Close and remove the files (memory maps already handed out stay readable on POSIX)."""
        for fh, _ in self._files.values():
            fh.close()
        self._files = {}
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class GroupColumn:
    """Group labels per row as int32 codes into the distinct labels; ``col[idx]`` gives the labels
    (an object array) for a slice, a mask or an array of positions, as a label array would."""

    def __init__(self, codes: np.ndarray, labels: list) -> None:
        self.codes = codes
        self.labels = np.asarray(labels, dtype=object)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.labels[np.asarray(self.codes[idx], dtype=np.int64)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype)


class GroupCoder:
    """Codes for group labels, in order of first appearance."""

    def __init__(self) -> None:
        self.code: dict = {}
        self.labels: list = []

    def encode(self, groups: Any) -> np.ndarray:
        code, labels = self.code, self.labels
        out = np.empty(len(groups), dtype=np.int32)
        for i, g in enumerate(groups):  # labels as they are (None stays None)
            c = code.get(g)
            if c is None:
                c = code[g] = len(labels)
                labels.append(g)
            out[i] = c
        return out


__all__ = ["RowStore", "GroupColumn", "GroupCoder"]
