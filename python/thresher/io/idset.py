"""A set of strings held as 128-bit digests: the pool-wide id check in 16 bytes a row, not a str in a set,
and with a spill folder in no heap memory at all.

Reading a pool assigns every row an id that no earlier row holds, so the reader must remember every
id it gave. A Python ``set`` of ``str`` costs about 80 to 130 bytes a member (the string object and
the hash table); at ten million rows that alone is a gigabyte on the driver. :class:`IdSet` keeps
each member's BLAKE2b-128 digest instead, as a log-structured set:

* the most recent digests sit in a small Python set (``pending``, at most ``_MIN_PENDING``);
* the older ones in a few sorted *runs*, each two ``uint64`` arrays (high and low halves, sorted by
  the high half, 16 bytes a member). A full ``pending`` becomes a new run, and the newest runs are
  merged while the one before is at most twice the newest (so there are O(log n) runs and each
  digest is rewritten O(log n) times);
* two runs are merged block by block (:func:`_merge_runs`: memory O(block)).

Given a ``spill`` folder (a callable that returns it, asked once, when the first run is written), the
runs are files there, read as memory maps: the pages are the operating system's file cache, not the
process's heap, so the driver's own memory does not grow with the pool. Without one, the runs are
arrays in memory.

Two different ids are taken for one only if their 128-bit digests collide: with n ids the chance is
about n^2 / 2^129 (below 1e-24 for ten million).
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

_MIN_PENDING = 1 << 16  # digests held in the Python set before they become a run
_MERGE_BLOCK = 1 << 16  # members per block when two runs are merged


def digest(s: str) -> bytes:
    """The 16-byte BLAKE2b digest of a string (UTF-8; lone surrogates kept)."""
    return hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _halves(ds: list) -> tuple[np.ndarray, np.ndarray]:
    """The digests' high and low 8 bytes as big-endian unsigned integers."""
    a = np.frombuffer(b"".join(ds), dtype=">u8").reshape(-1, 2) if ds else np.zeros((0, 2), ">u8")
    return a[:, 0].astype(np.uint64), a[:, 1].astype(np.uint64)


def _merge_step(a: tuple, b: tuple, ia: int, ib: int, block: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The next merged block of runs ``a`` and ``b`` from positions ``ia``, ``ib``: every member up to the
    smaller of the two blocks' last high halves (so one block is used up), and the new positions."""
    ah, al = a[0][ia : ia + block], a[1][ia : ia + block]
    bh, bl = b[0][ib : ib + block], b[1][ib : ib + block]
    if len(ah) and len(bh):
        limit = min(ah[-1], bh[-1])
        na, nb = int(np.searchsorted(ah, limit, "right")), int(np.searchsorted(bh, limit, "right"))
    else:
        na, nb = len(ah), len(bh)
    hi = np.concatenate([ah[:na], bh[:nb]])
    lo = np.concatenate([al[:na], bl[:nb]])
    order = np.argsort(hi, kind="stable")
    return hi[order], lo[order], ia + na, ib + nb


def _merge_runs(a: tuple, b: tuple, out: tuple, block: int = 0) -> None:
    """Merge sorted runs ``a`` and ``b`` (``(hi, lo)`` pairs) into ``out`` (arrays of their total length),
    block by block (``block`` members of each run at a time; 0: ``_MERGE_BLOCK``)."""
    block = block or _MERGE_BLOCK
    ia = ib = o = 0
    while ia < len(a[0]) or ib < len(b[0]):
        hi, lo, ia, ib = _merge_step(a, b, ia, ib, block)
        out[0][o : o + len(hi)] = hi
        out[1][o : o + len(lo)] = lo
        o += len(hi)


def _in_run(run: tuple, q_hi: np.ndarray, q_lo: np.ndarray) -> np.ndarray:
    """Whether each query digest is in a sorted run (one search for the batch)."""
    r_hi, r_lo = run
    n = len(r_hi)
    if n == 0 or len(q_hi) == 0:
        return np.zeros(len(q_hi), dtype=bool)
    at = np.searchsorted(r_hi, q_hi)
    i = np.minimum(at, n - 1)
    same_hi = (at < n) & (r_hi[i] == q_hi)
    found = same_hi & (r_lo[i] == q_lo)
    for j in np.flatnonzero(~found & same_hi):  # equal high halves: scan them
        k = int(at[j])
        while k < n and r_hi[k] == q_hi[j]:
            if r_lo[k] == q_lo[j]:
                found[j] = True
                break
            k += 1
    return found


class IdSet:
    """Membership and insertion of strings by digest; ``contains_many`` checks a batch at once.

    ``spill``: a callable giving a folder for the runs (memory-mapped files, removed by :meth:`close`
    and when merged away); None keeps them in memory."""

    def __init__(self, spill: Optional[Callable[[], Any]] = None) -> None:
        self.spill = spill
        self.folder: Optional[Path] = None
        self.runs: list = []  # (hi, lo) sorted by hi, oldest and largest first
        self.paths: list = []  # per run: its files, or None in memory
        self.pending: set = set()  # digests not in a run yet
        self._names = itertools.count()

    def __len__(self) -> int:
        return sum(len(r[0]) for r in self.runs) + len(self.pending)

    def nbytes(self) -> int:
        """Bytes held by the runs (in memory, or on disk with a spill folder)."""
        return int(sum(r[0].nbytes + r[1].nbytes for r in self.runs))

    def __contains__(self, s: str) -> bool:
        return self.has(digest(s))

    def has(self, d: bytes) -> bool:
        if d in self.pending:
            return True
        return bool(self._merged([d])[0])

    def add(self, s: str) -> None:
        self.add_digest(digest(s))

    def add_digest(self, d: bytes) -> None:
        self.pending.add(d)
        if len(self.pending) >= _MIN_PENDING:
            self.merge()

    def merge(self) -> None:
        """Make the pending digests a run, then merge the newest runs while the one before is at most twice
        the newest."""
        if not self.pending:
            return
        hi, lo = _halves(list(self.pending))
        self.pending = set()
        order = np.argsort(hi, kind="stable")
        run = self._alloc(len(hi))
        run[0][:], run[1][:] = hi[order], lo[order]
        self._push(run)
        while len(self.runs) >= 2 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            b, a = self._pop(), self._pop()
            out = self._alloc(len(a[0]) + len(b[0]))
            _merge_runs(a, b, out)
            self._push(out)

    def _alloc(self, n: int) -> tuple:
        """Two arrays of ``n`` members for a run, and their files (None in memory)."""
        if self.spill is None:
            return np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint64), None
        if self.folder is None:
            self.folder = Path(self.spill())
            self.folder.mkdir(parents=True, exist_ok=True)
        k = next(self._names)
        files = (self.folder / f"ids-{k}.hi", self.folder / f"ids-{k}.lo")
        hi, lo = (np.memmap(f, dtype=np.uint64, mode="w+", shape=(max(1, n),))[:n] for f in files)
        return hi, lo, files

    def _push(self, run: tuple) -> None:
        self.runs.append(run[:2])
        self.paths.append(run[2])

    def _pop(self) -> tuple:
        run, files = self.runs.pop(), self.paths.pop()
        for f in files or ():
            f.unlink(missing_ok=True)  # the open maps stay readable (POSIX) until dropped
        return run

    def close(self) -> None:
        """Drop the runs and remove their files."""
        while self.runs:
            self._pop()
        self.pending = set()

    def _merged(self, ds: list) -> np.ndarray:
        """Whether each digest is in one of the runs."""
        q_hi, q_lo = _halves(ds)
        found = np.zeros(len(ds), dtype=bool)
        for run in self.runs:
            found |= _in_run(run, q_hi, q_lo)
        return found

    def contains_many(self, strings: Iterable[str]) -> tuple[list, np.ndarray]:
        """``(digests, member)``: each string's digest and whether it is in the set now."""
        ds = [digest(s) for s in strings]
        member = self._merged(ds)
        if self.pending:
            member |= np.fromiter((d in self.pending for d in ds), dtype=bool, count=len(ds))
        return ds, member


__all__ = ["IdSet", "digest"]
