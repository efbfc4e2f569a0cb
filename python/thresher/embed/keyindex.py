"""A compact index of the embedding store's keys: key -> (part, row), in sorted numpy arrays.

A key (:func:`thresher.embed.store.sample_key`: 24 hex characters) costs 32 bytes here (the key's
bytes, its part and its row), against about 250 in a Python dict, so a process may keep the index
of a store of millions of rows (:func:`thresher.embed.store.open_store`). Parts added since the last
merge wait as sorted chunks (searched after the main arrays); they are merged once they hold a
quarter of the main arrays' keys, so adding parts one by one costs O(N log N) in all, and a store
read at once is sorted once. When a key is in several parts, the part added first wins.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MERGE_MIN = 1 << 16  # keys waiting in chunks before a merge is considered


def as_key_array(keys: Sequence[str]) -> np.ndarray:
    """Keys as a numpy bytes array (ASCII: the store's keys are hex digests)."""
    if len(keys) == 0:
        return np.zeros(0, dtype="S1")
    return np.array(keys, dtype=bytes)


def _search(keys: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hit bool[n], position in ``keys``) of each query in a sorted key array."""
    if len(keys) == 0 or len(q) == 0:
        return np.zeros(len(q), bool), np.zeros(len(q), np.int64)
    pos = np.minimum(np.searchsorted(keys, q, side="left"), len(keys) - 1)
    return keys[pos] == q, pos


class KeyIndex:
    """key -> (part number, row); parts are numbered in the order they are added."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype="S1")  # sorted (stable: the earlier part first among equal keys)
        self.part = np.zeros(0, dtype=np.int32)
        self.row = np.zeros(0, dtype=np.int32)
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # parts added since the last merge
        self.waiting = 0  # keys in ``chunks``

    def add(self, keys: Sequence[str], part: int, *, merge: bool = True) -> None:
        """The keys of part number ``part`` (row r holds ``keys[r]``); ``merge=False`` defers the
        merge (many parts read at once: :meth:`settle` after the last)."""
        k = as_key_array(keys)
        order = np.argsort(k, kind="stable")
        self.chunks.append((k[order], np.full(len(k), part, np.int32), order.astype(np.int32)))
        self.waiting += len(k)
        if merge:
            self.settle()

    def settle(self) -> None:
        """Merge the waiting parts once they hold a quarter of the main arrays' keys."""
        if self.waiting >= max(MERGE_MIN, len(self.keys) // 4):
            self.merge()

    def merge(self) -> None:
        """Move the waiting parts into the sorted arrays."""
        if not self.chunks:
            return
        keys = np.concatenate([self.keys] + [c[0] for c in self.chunks])
        order = np.argsort(keys, kind="stable")  # earlier parts first among equals
        self.keys = keys[order]
        self.part = np.concatenate([self.part] + [c[1] for c in self.chunks])[order]
        self.row = np.concatenate([self.row] + [c[2] for c in self.chunks])[order]
        self.chunks, self.waiting = [], 0

    def find(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found bool[n], part int32[n], row int32[n]); part and row are -1 where not found."""
        q = as_key_array(keys)
        part = np.full(len(q), -1, np.int32)
        row = np.full(len(q), -1, np.int32)
        for k, p, r in [(self.keys, self.part, self.row)] + self.chunks:  # the earliest first
            todo = np.flatnonzero(part < 0)
            if len(todo) == 0:
                break
            hit, pos = _search(k, q[todo])
            part[todo[hit]], row[todo[hit]] = p[pos[hit]], r[pos[hit]]
        return part >= 0, part, row

    def __len__(self) -> int:
        """Distinct keys."""
        self.merge()
        if len(self.keys) == 0:
            return 0
        return int((self.keys[1:] != self.keys[:-1]).sum()) + 1


__all__ = ["KeyIndex", "as_key_array"]
