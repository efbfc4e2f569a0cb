"""Selections whose values depend on the whole pool, as scans: ``aggregate`` / ``weighted`` / ``rrf``
folds that read the pool, and ``threshold`` at the knee of the sorted score curve.

A per-row fold (``weighted_sum`` or ``product`` with ``normalize="none"``) is a plain top-k
(:class:`~.streaming.AggregatePass`). Every other combination reads pool-wide quantities: the
``minmax`` normaliser the pool's minimum and maximum, ``zscore`` its mean and standard deviation,
``rank`` and ``quantile`` (and the ``borda`` and ``rrf`` folds) each value's rank among the pool's.
They are computed over the rows the selector folds in memory: the eligible rows whose objectives are
all finite (the others are never selected), each objective oriented (negated when minimised).

* :class:`PoolStatsPass` is the counting pass: the filters' verdict, and per objective the count,
  the minimum and maximum, the exact sum (:class:`~thresher.ops.exact.ExactSum`: the mean is the same
  whatever the shard layout) and, for the rank-based methods, the values themselves as a
  :class:`SortedColumn`: appended to the run's row store on disk shard by shard, then sorted there in
  place through a writable memory map (the file's pages, not the heap).
* :class:`SquaresPass` (``zscore`` only) sums the squared deviations from the mean exactly: the
  standard deviation of :func:`~thresher.ops.exact.exact_mean_std`, as in memory.
* :class:`PooledAggregate` builds the selecting pass: an :class:`~.streaming.AggregatePass` whose
  shard values are folded with the pool's :class:`~thresher.ops.ranking.PoolView` (a value's counts of
  smaller and equal values: two binary searches in the sorted column), so each row's combined score is
  the one the selector computes on the whole pool, bit for bit, and the selection is the same.

The knee threshold (:class:`KneeThreshold`) sorts the eligible values of its criterion the same way
(:class:`SortedValuesPass`), finds the knee of the descending curve reading the sorted file in chunks
(:func:`~thresher.selectors.basic.knee_index`), then selects as the ``absolute`` threshold at the knee's
value (:class:`~.streaming.ThresholdPass`).

Memory: O(k + shard) score values on the heap; the sorted columns are files of 8 bytes a row per
objective, read through memory maps.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..ops.exact import ExactSum
from ..ops.ranking import VIEW_FIELDS, PoolView
from ..selectors.basic import knee_index
from .streaming import AggregatePass, CountPass, ThresholdPass, column_of, values_of


class SortedColumn:
    """One column's values, appended shard by shard, then sorted once (:meth:`finish`) to count, for any
    value, the values below it. ``store``: a :class:`~.rowstore.RowStore` that keeps them on disk and
    sorts them there in place (None: in memory)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.name = store.unique("sorted") if store is not None else ""
        self.parts: list = []  # in memory (no store)
        self.values: np.ndarray = np.zeros(0)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        if self.store is None:
            self.parts.append(v.copy())
        else:
            self.store.append(self.name, v, np.float64)

    def finish(self) -> "SortedColumn":
        if self.store is None:
            self.values = np.sort(np.concatenate(self.parts)) if self.parts else np.zeros(0)
            self.parts = []
        else:
            self.values = self.store.sort(self.name)
        return self

    def counts(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each value of ``q``: the column's values ``<`` it and ``<=`` it."""
        lt = np.searchsorted(self.values, q, side="left").astype(np.int64)
        return lt, np.searchsorted(self.values, q, side="right").astype(np.int64)


def oriented_rows(cols: dict, names: list, maxi: list, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eligible rows whose objectives are all finite (positions in the shard) and their objectives,
    each negated when minimised [rows, M] (the orientation in which the selector normalises)."""
    n = len(mask)
    mat = np.stack([column_of(cols, c) for c in names], axis=1).reshape(n, len(names))
    rows = np.flatnonzero(mask & np.isfinite(mat).all(axis=1))
    sign = np.array([1.0 if m else -1.0 for m in maxi])
    return rows, mat[rows] * sign


class PoolStatsPass(CountPass):
    """The counting pass of a pooled aggregate: filters, and the pool-wide quantities ``what`` (a
    normaliser or the ``borda``/``rrf`` fold) needs of each oriented objective."""

    def __init__(self, filters: list, objectives: list, what: str, store: Any = None) -> None:
        super().__init__(filters)
        self.names = [n for n, _ in objectives]
        self.maxi = [bool(m) for _, m in objectives]
        self.fields = VIEW_FIELDS[what]
        m = len(self.names)
        self.n_valid = 0
        self.lo, self.hi = np.full(m, np.inf), np.full(m, -np.inf)
        self.sums = [ExactSum() for _ in range(m)]
        self.squares: Optional[list] = None  # set by SquaresPass (zscore)
        self.sorted = [SortedColumn(store) for _ in range(m)] if "lt" in self.fields else []

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        rows, g = oriented_rows(cols, self.names, self.maxi, mask)
        self.n_valid += len(rows)
        if len(rows):
            self.lo, self.hi = np.minimum(self.lo, g.min(0)), np.maximum(self.hi, g.max(0))
        for j in range(g.shape[1]):
            if "mean" in self.fields:
                self.sums[j].add(g[:, j])
            if self.sorted:
                self.sorted[j].add(g[:, j])
        held = sum(len(p) for r in self.sorted for p in r.parts)  # values kept in memory (no store)
        self.peak = max(self.peak, held + len(mask) * (len(self.names) + 1))

    def finish(self) -> "PoolStatsPass":
        for r in self.sorted:
            r.finish()
        return self

    def means(self) -> np.ndarray:
        return np.array([s.mean() for s in self.sums])

    def view(self, g: torch.Tensor, what: str) -> PoolView:
        """The pool's :class:`PoolView` seen from ``g`` [rows, M]: some of its oriented valid rows."""
        m = g.shape[1]
        view = PoolView(rows=self.n_valid, n=torch.full((m,), self.n_valid, dtype=torch.int64))
        if "lo" in VIEW_FIELDS[what]:
            view.lo, view.hi = torch.from_numpy(self.lo.copy()), torch.from_numpy(self.hi.copy())
        if "mean" in VIEW_FIELDS[what]:
            if self.squares is None:
                raise RuntimeError("zscore: the squares pass has not run")
            std = [math.sqrt(s.mean()) if self.n_valid else float("nan") for s in self.squares]
            view.mean, view.std = torch.from_numpy(self.means()), torch.tensor(std, dtype=torch.float64)
        if "lt" in VIEW_FIELDS[what]:
            gn = g.numpy()
            pairs = [self.sorted[j].counts(gn[:, j]) for j in range(m)]
            view.lt = torch.from_numpy(np.stack([p[0] for p in pairs], axis=1).reshape(len(gn), m))
            view.le = torch.from_numpy(np.stack([p[1] for p in pairs], axis=1).reshape(len(gn), m))
        return view


class SquaresPass(CountPass):
    """``zscore``'s second pass: the exact sum of ``(x - mean) ** 2`` per oriented objective over the
    rows the stats pass counted (as :func:`~thresher.ops.exact.exact_mean_std`), into ``stats.squares``."""

    def __init__(self, filters: list, stats: PoolStatsPass) -> None:
        super().__init__(filters)
        self.stats, self.mean = stats, stats.means()
        stats.squares = [ExactSum() for _ in stats.names]

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        _, g = oriented_rows(cols, self.stats.names, self.stats.maxi, mask)
        d = g - self.mean
        for j, s in enumerate(self.stats.squares):
            s.add(d[:, j] * d[:, j])
        self.peak = max(self.peak, 2 * len(mask) * (len(self.stats.names) + 1))


class PooledAggregate:
    """``k -> pass`` of an aggregate whose fold reads the pool (see the module doc). The selection
    runs :meth:`counting` as its counting pass, then :meth:`complete` (``scan`` replays the cache
    through a pass) before it builds a selecting pass."""

    def __init__(self, filters: list, objectives: list, method: str, weights: Any, normalize: str) -> None:
        self.filters, self.objectives = list(filters), list(objectives)
        self.method, self.weights, self.normalize = method, weights, normalize
        self.what = normalize if method in ("weighted_sum", "product") else method
        self.stats: Optional[PoolStatsPass] = None

    def counting(self, store: Any) -> PoolStatsPass:
        self.stats = PoolStatsPass(self.filters, self.objectives, self.what, store)
        return self.stats

    def complete(self, count: PoolStatsPass, scan: Callable[[Any], Any]) -> None:
        self.stats = count.finish()
        if "mean" in count.fields:
            scan(SquaresPass(self.filters, count))

    def __call__(self, k: int) -> AggregatePass:
        if self.stats is None:
            raise RuntimeError("pooled aggregate: the counting pass has not run")
        return AggregatePass(self.filters, self.objectives, self.method, self.weights, k,
                             normalize=self.normalize, view=self.stats.view)  # fmt: skip


class SortedValuesPass(CountPass):
    """The counting pass of a knee threshold: the filters' verdict and the eligible rows' non-NaN values
    of ``column``, oriented (negated when minimised), in a :class:`SortedColumn`."""

    def __init__(self, filters: list, column: str, maximize: bool, store: Any = None) -> None:
        super().__init__(filters)
        self.column, self.sign = column, (1.0 if maximize else -1.0)
        self.sorted = SortedColumn(store)

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        v = values_of(cols, self.column, mask)
        self.sorted.add(self.sign * v[~np.isnan(v)])
        held = sum(len(p) for p in self.sorted.parts)  # values kept in memory (no store)
        self.peak = max(self.peak, held + 2 * len(mask))


class KneeThreshold:
    """``k -> pass`` of ``threshold`` in mode ``knee``: the counting pass sorts the eligible values (on
    disk), :meth:`complete` finds the knee of the descending curve (:func:`~thresher.selectors.basic.knee_index`,
    read in chunks) and its value ``t``, and the selecting pass is the ``absolute`` threshold at ``t``."""

    def __init__(self, filters: list, column: str, maximize: bool, strict: bool) -> None:
        self.filters, self.column, self.maximize, self.strict = list(filters), column, bool(maximize), bool(strict)
        self.value: Optional[float] = None

    def counting(self, store: Any) -> SortedValuesPass:
        return SortedValuesPass(self.filters, self.column, self.maximize, store)

    def complete(self, count: SortedValuesPass, scan: Callable[[Any], Any]) -> None:
        asc = count.sorted.finish().values
        desc = asc[::-1]  # the curve, best first (a view)
        sign = 1.0 if self.maximize else -1.0
        self.value = sign * float(desc[knee_index(desc) - 1]) if len(desc) else float("nan")

    def __call__(self, k: int) -> ThresholdPass:
        if self.value is None:
            raise RuntimeError("knee threshold: the counting pass has not run")
        return ThresholdPass(self.filters, self.column, self.maximize, k, "absolute", self.value, self.strict)


__all__ = [
    "SortedColumn",
    "SortedValuesPass",
    "KneeThreshold",
    "PoolStatsPass",
    "SquaresPass",
    "PooledAggregate",
    "oriented_rows",
]
