"""A set of strings held as 128-bit digests: the pool-wide id check in 16 bytes a row, not a str in a set.

Reading a pool assigns every row an id that no earlier row holds, so the reader must remember every
id it gave. A Python ``set`` of ``str`` costs about 80 to 130 bytes a member (the string object and
the hash table); at ten million rows that alone is a gigabyte on the driver. :class:`IdSet` keeps
each member's BLAKE2b-128 digest instead: the digests merged so far in two sorted ``uint64`` arrays
(high and low halves, 16 bytes a member) and the most recent ones in a small Python set that is
merged in when it reaches an eighth of the arrays (so merging costs O(1) amortised per member).

Two different ids are taken for one only if their 128-bit digests collide: with n ids the chance is
about n^2 / 2^129 (below 1e-24 for ten million).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

_MIN_PENDING = 1 << 16


def digest(s: str) -> bytes:
    """The 16-byte BLAKE2b digest of a string (UTF-8; lone surrogates kept)."""
    return hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _halves(ds: list) -> tuple[np.ndarray, np.ndarray]:
    """The digests' high and low 8 bytes as big-endian unsigned integers."""
    a = np.frombuffer(b"".join(ds), dtype=">u8").reshape(-1, 2) if ds else np.zeros((0, 2), ">u8")
    return a[:, 0].astype(np.uint64), a[:, 1].astype(np.uint64)


class IdSet:
    """Membership and insertion of strings by digest; ``contains_many`` checks a batch at once."""

    def __init__(self) -> None:
        self.hi = np.zeros(0, dtype=np.uint64)  # merged digests, sorted by the high half
        self.lo = np.zeros(0, dtype=np.uint64)
        self.pending: set = set()  # digests not merged yet

    def __len__(self) -> int:
        return len(self.hi) + len(self.pending)

    def nbytes(self) -> int:
        """Bytes held by the merged arrays (the pending set holds at most an eighth as many members)."""
        return int(self.hi.nbytes + self.lo.nbytes)

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
        if len(self.pending) >= max(_MIN_PENDING, len(self.hi) // 8):
            self.merge()

    def merge(self) -> None:
        """Move the pending digests into the sorted arrays: sorted among themselves, then inserted at their
        places (the new arrays are the only copies of the merged ones: 32 bytes a member at the peak)."""
        if not self.pending:
            return
        hi, lo = _halves(list(self.pending))
        self.pending = set()
        new = np.argsort(hi)
        hi, lo = hi[new], lo[new]
        at = np.searchsorted(self.hi, hi)
        self.hi = np.insert(self.hi, at, hi)
        self.lo = np.insert(self.lo, at, lo)

    def _merged(self, ds: list) -> np.ndarray:
        """Whether each digest is in the sorted arrays (one search for the batch)."""
        q_hi, q_lo = _halves(ds)
        n = len(self.hi)
        if n == 0:
            return np.zeros(len(ds), dtype=bool)
        at = np.searchsorted(self.hi, q_hi)
        i = np.minimum(at, n - 1)
        found = (at < n) & (self.hi[i] == q_hi) & (self.lo[i] == q_lo)
        for j in np.flatnonzero(~found & (at < n) & (self.hi[i] == q_hi)):  # equal high halves: scan them
            k = int(at[j])
            while k < n and self.hi[k] == q_hi[j]:
                if self.lo[k] == q_lo[j]:
                    found[j] = True
                    break
                k += 1
        return found

    def contains_many(self, strings: Iterable[str]) -> tuple[list, np.ndarray]:
        """``(digests, member)``: each string's digest and whether it is in the set now."""
        ds = [digest(s) for s in strings]
        member = self._merged(ds)
        if self.pending:
            member |= np.fromiter((d in self.pending for d in ds), dtype=bool, count=len(ds))
        return ds, member


__all__ = ["IdSet", "digest"]
