"""Finished blocks of a long pool-wide call, kept on disk so a stopped call resumes: SearchCheckpoint.

A pool-scoped criterion is one long call over the whole pool: an exact kNN search (about 15 minutes for
1,000,000 rows on two CPU cores, after the embeddings, which are cached row by row), nuggets' one-shot
passes (every candidate against every anchor), SHED's LoRA fine-tunes (one per coalition), or
necessity's ratings and generation. :class:`SearchCheckpoint` keeps the results of such a call block
by block: a block is named by its first position (a query, an item) and holds a tuple of arrays (of
the same count in every block of a store). The blocks finished since the last save are written as one
more part file about every ``every_s`` seconds, and when the call raises (an error, Ctrl-C). A call
with the same inputs finds them and computes only the remaining blocks (a later part's block replaces
an earlier one of the same start); the complete call removes its folder. It is the
``blocks`` store of :func:`thresher.ops.knn_shard.sharded_knn` (blocks ``(values, indices)``).

The folder of one call is ``<folder>/<identity>/``. The identity (:func:`search_identity`) digests
the arrays the call reads (their dtypes, shapes and bytes) and every parameter that shapes a block's
result (k, metric, task sizes, device, model), so blocks of another call are never reused, and an
unreadable part is computed again. Files: ``part-NNNNN.npz`` with ``starts`` (each block's first
position) and, per array ``j`` of the blocks' tuples, ``a<j>`` (the blocks' rows, block after block)
and ``n<j>`` (each block's rows), written through :func:`thresher.fs.atomic_file`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..fs import atomic_file

FORMAT = "1"
#: The pipeline's folder of them, inside a criterion's score-cache folder (thresher.cache lists and prunes it).
SEARCH_DIR = "search-checkpoints"
DEFAULT_EVERY_S = 60.0


def search_identity(*arrays: np.ndarray, **params: Any) -> str:
    """A digest of a call: ``params`` and each array's dtype, shape and bytes (C order)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"format": FORMAT, **params}, sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.hexdigest()


def kept_or_computed(store: Optional["SearchCheckpoint"], compute: Callable[[], tuple]) -> tuple[tuple, bool]:
    """The arrays of a step done once per call (e.g. k-means: centroids and labels) from ``store``'s
    block 0 when an earlier call finished it, else ``compute()``, saved at once (it is all or nothing);
    and whether they were kept. A failing save is dropped: the step's result is still returned."""
    got = None if store is None else store.get(0)
    if got is not None:
        return tuple(got), True
    out = tuple(compute())
    if store is not None:
        store.put(0, *out)
        store.keep()
    return out, False


class SearchCheckpoint:
    """The blocks of one call (see the module docstring). ``restored``: rows of the first array of the
    blocks that came from earlier parts (for a search: queries); ``saved``: parts this object wrote;
    ``written``: the starts of the blocks they hold. Memory: the blocks of earlier parts until each is
    got (the caller takes it once), and this call's blocks until they are saved, never all of them (a
    search's blocks are as large as its result: 84 MB for 1,000,000 queries and k = 7)."""

    def __init__(self, folder: Any, identity: str, every_s: float = DEFAULT_EVERY_S) -> None:
        self.dir = Path(folder) / identity
        self.every_s = float(every_s)
        self.done: dict[int, tuple] = {}
        self.pending: dict[int, tuple] = {}
        self.restored = 0
        self.saved = 0
        self.written: set[int] = set()
        self._last = time.monotonic()
        self._parts = 0
        self._load()

    def _load(self) -> None:
        for f in sorted(self.dir.glob("part-*.npz")) if self.dir.is_dir() else []:
            self._parts += 1
            try:
                with np.load(f) as z:
                    starts = z["starts"]
                    cols = [(z[f"a{j}"], z[f"n{j}"]) for j in range(sum(k.startswith("a") for k in z.files))]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                continue  # unreadable: its blocks are computed again
            if not cols or any(len(n) != len(starts) or int(n.sum()) != len(a) for a, n in cols):
                continue
            ends = [np.cumsum(n) for _, n in cols]
            for b, s in enumerate(starts.tolist()):
                got = tuple(a[e[b] - n[b] : e[b]] for (a, n), e in zip(cols, ends))
                self.done[int(s)] = got  # a later part wins (a call of changed candidates re-did a block)

    def get(self, start: int) -> Optional[tuple]:
        """The block that starts at ``start``, if an earlier call finished it (its tuple of arrays), handed
        over once: a second ``get`` of it returns None."""
        got = self.done.pop(int(start), None)
        if got is not None:
            self.restored += len(got[0])
        return got

    def put(self, start: int, *arrays: np.ndarray) -> None:
        """Record a finished block; save the blocks not yet saved once ``every_s`` has passed."""
        self.pending[int(start)] = tuple(np.asarray(a) for a in arrays)
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the blocks finished since the last save as one more part (nothing when there are none)."""
        self._last = time.monotonic()
        if not self.pending:
            return
        starts = sorted(self.pending)
        blocks = [self.pending[s] for s in starts]
        cols: dict = {"starts": np.asarray(starts, np.int64)}
        for j in range(len(blocks[0])):
            cols[f"a{j}"] = np.concatenate([b[j] for b in blocks])
            cols[f"n{j}"] = np.asarray([len(b[j]) for b in blocks], np.int64)
        with atomic_file(self.dir / f"part-{self._parts:05d}.npz") as fh:
            np.savez(fh, **cols)
        self._parts += 1
        self.saved += 1
        self.written.update(starts)
        self.pending = {}

    def keep(self) -> None:
        """:meth:`flush` on the way out of a call that raised: a failing save (a full disk) is
        dropped, so the call's own error is the one that reaches the caller."""
        with contextlib.suppress(Exception):
            self.flush()

    def clear(self) -> None:
        """Remove this search's folder (the search is complete), and the pipeline's folder of them
        (:data:`SEARCH_DIR`) once empty; a folder a caller named is left."""
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.parent.name != SEARCH_DIR:
            return
        with contextlib.suppress(OSError):  # other searches' checkpoints, or gone
            self.dir.parent.rmdir()


__all__ = ["DEFAULT_EVERY_S", "SEARCH_DIR", "SearchCheckpoint", "search_identity"]
