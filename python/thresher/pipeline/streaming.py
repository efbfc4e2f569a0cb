"""Scans of the pool's score shards that select without holding the pool: O(k + shard) values.

A *pass* is fed each shard's score columns in pool order (``scan(cols, offset, n)``) and keeps
only what its selection can still need:

* :class:`CountPass`: the filters' verdict per row (one bool per row, for ``eligible``) and counts.
* :class:`TopKPass`: a :class:`~thresher.ops.TopKAccumulator` of the ``k`` best eligible rows
  (ineligible rows enter as NaN, which is never selected); ties by lower pool position.
* :class:`ThresholdPass`: the ``threshold`` selector (``absolute`` as a per-row test, ``quantile``
  exact from the top ``k`` and the count of scored rows; see :meth:`ThresholdPass.order`).
* :class:`AggregatePass`: ``aggregate`` / ``weighted`` / ``rrf`` as a top-k of the combined score (a fold that
  reads the pool gets its statistics from :mod:`.streaming_agg`).
* :class:`GumbelPass`: ``gumbel_topk`` (DSIR), a top-k of the noisy keys, the noise drawn in pool order.
* :class:`ParetoPass`: the ``pareto`` selector; keeps the rows that can still be in the fronts that
  fill ``k`` (the pruning rule and its proof are in the class docstring).

:func:`replay` reads the shards back from the score cache (``st.shards``; a pool-scoped criterion's
columns a shard's rows at a time from its whole-pool entry), so a pass whose size is known only after
the whole pool was seen (a ``ratio`` or token budget, a filter on ``tokens``, a pool-scoped column)
runs as a later scan. Every pass records ``peak``: the most score values it held at once (its buffers plus
the shard being scanned), the memory bound the tests check.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import numpy as np
import pandas as pd
import torch

from ..ops import TopKAccumulator
from ..plan import TOKENS, apply_filters
from ..selectors.basic import aggregate_scores, pareto_order
from ..selectors.gumbel import gumbel_draws
from .state import RunState, concat

_CMP_ELEMS = 1 << 22  # elements of one [rows, rows, objectives] dominance comparison block


class CountPass:
    """The filters' verdict per row and the number of rows and of eligible rows."""

    def __init__(self, filters: list) -> None:
        self.filters = list(filters)
        self.masks: list = []
        self.store: Any = None  # a RowStore that keeps the masks on disk (see keep_masks_in)
        self.mask_column = ""
        self.n = 0
        self.n_eligible = 0
        self.peak = 0

    def keep_masks_in(self, store: Any) -> "CountPass":
        """Append each shard's verdict to a column of ``store`` (a :class:`~.rowstore.RowStore`) instead of
        holding it: :meth:`eligible` is then a read-only memory map (before any scan)."""
        if store is not None:
            self.store, self.mask_column = store, store.unique("eligible")
        return self

    def scan(self, cols: dict, offset: int, n: int) -> None:
        mask = apply_filters(cols, self.filters, n) if self.filters else np.ones(n, dtype=bool)
        if self.store is not None:
            self.store.append(self.mask_column, mask, bool)
        else:
            self.masks.append(mask)
        self.n += n
        self.n_eligible += int(mask.sum())
        self.take(cols, offset, mask)

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        """What a selecting pass keeps of the shard's eligible rows."""

    def eligible(self) -> np.ndarray:
        if self.store is not None:
            return self.store.column(self.mask_column, bool)
        return concat(self.masks, bool)


def score_column(s: Any) -> np.ndarray:
    """A score column (a pandas Series) as a selection reads it: float64 (NaN for missing) when numeric,
    else its values as objects (a tag list, a label)."""
    if pd.api.types.is_numeric_dtype(s.dtype):
        return s.to_numpy(np.float64, na_value=np.nan)
    return s.astype(object).to_numpy()


def column_of(cols: dict, name: str) -> np.ndarray:
    """Column ``name`` of a shard as float64 (the selectors' error when the scores lack it)."""
    if name not in cols:
        raise ValueError(f"criterion: no column {name!r} in the scores; columns: {sorted(cols)}")
    return np.asarray(cols[name], dtype=np.float64)


def values_of(cols: dict, name: str, mask: np.ndarray) -> np.ndarray:
    """Column ``name`` as float64, NaN where ``mask`` is False (a fresh array)."""
    v = np.array(column_of(cols, name), dtype=np.float64)
    v[~mask] = np.nan
    return v


class TopKPass(CountPass):
    """The ``k`` best eligible rows by one column (``maximize`` or not), NaN never."""

    def __init__(self, filters: list, column: str, maximize: bool, k: int) -> None:
        super().__init__(filters)
        self.column, self.maximize, self.k = column, bool(maximize), int(k)
        self.acc = TopKAccumulator(self.k, largest=self.maximize)
        self.n_scored = 0  # eligible rows with a non-NaN value

    def held(self) -> int:
        return 2 * self.acc.held  # a value and an index each

    def values(self, cols: dict, mask: np.ndarray) -> np.ndarray:
        """The shard's values of the pass (a fresh float64 array), NaN where ``mask`` is False."""
        return values_of(cols, self.column, mask)

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        v = self.keep(self.values(cols, mask))
        self.n_scored += int((~np.isnan(v)).sum())
        self.peak = max(self.peak, self.held() + 2 * len(v))
        self.acc.update(torch.from_numpy(v), offset)
        self.peak = max(self.peak, self.held())

    def keep(self, v: np.ndarray) -> np.ndarray:
        """The values that may be selected (others set to NaN)."""
        return v

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, pool positions) of the best non-NaN rows, best first (at most ``k``)."""
        values, idx = self.acc.result()
        v, i = values.numpy().astype(np.float64), idx.numpy().astype(np.int64)
        ok = ~np.isnan(v)
        return v[ok], i[ok]

    def order(self, kk: int, count: Callable[[float], int]) -> np.ndarray:
        """The selection: at most ``kk`` pool positions, best first."""
        return self.best()[1][:kk]


class ThresholdPass(TopKPass):
    """The ``threshold`` selector in modes ``absolute`` and ``quantile`` (``knee`` needs every value).

    ``quantile q``: with ``n_f`` the eligible rows whose value is not NaN and ``m =
    ceil((1 - q) n_f)``, the threshold ``t`` is the m-th best value and the selection is the best
    ``kk`` rows with a value at least as good as ``t`` (strictly better with ``strict``). Those rows are
    a prefix of the best-first order, so they are the first rows of the top ``k`` that pass ``t``:
    when ``m <= k``, ``t`` is the m-th value of the top ``k``; when ``m > k``, ``t`` is no better
    than the k-th value ``v_k``, so every row of the top ``k`` passes, except (``strict``) rows equal
    to ``t``. Then ``t == v_k`` exactly when at least ``m`` eligible rows are as good as ``v_k``: one
    counting scan (``count``) settles it.
    """

    def __init__(self, filters: list, column: str, maximize: bool, k: int, mode: str, value: Any, strict: bool) -> None:
        super().__init__(filters, column, maximize, k)
        self.mode, self.value, self.strict = mode, value, bool(strict)

    def passes(self, v: np.ndarray, t: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            if self.strict:
                return (v > t) if self.maximize else (v < t)
            return (v >= t) if self.maximize else (v <= t)

    def keep(self, v: np.ndarray) -> np.ndarray:
        if self.mode == "absolute":
            v[~self.passes(v, float(self.value))] = np.nan
        return v

    def order(self, kk: int, count: Callable[[float], int]) -> np.ndarray:
        v, idx = self.best()
        if self.mode == "absolute" or len(v) == 0:
            return idx[:kk]
        q = 0.5 if self.value is None else float(self.value)
        m = int(np.ceil((1.0 - q) * self.n_scored - 1e-9))  # as selectors.basic._threshold_value
        if m <= 0:
            t = float("inf") if self.maximize else float("-inf")
        elif m <= len(v):
            t = float(v[m - 1])
        elif not self.strict or count(float(v[-1])) < m:  # t is worse than the k-th value: all pass
            return idx[:kk]
        else:
            t = float(v[-1])
        return idx[self.passes(v, t)][:kk]


class AggregatePass(TopKPass):
    """``aggregate`` / ``weighted`` / ``rrf``: the top ``k`` of the combined score (higher is better) of
    :func:`~thresher.selectors.basic.aggregate_scores`. A per-row fold (``weighted_sum`` or ``product``
    with ``normalize="none"``) needs nothing else; any other fold is given ``view``, the pool's
    statistics seen from a shard (:mod:`.streaming_agg`), so the values of a shard are those of the
    whole pool (rows with a non-finite objective are NaN, never selected)."""

    def __init__(self, filters: list, objectives: list, method: str, weights: Any, k: int,
                 normalize: str = "none", view: Optional[Callable] = None) -> None:  # fmt: skip
        super().__init__(filters, ",".join(n for n, _ in objectives), True, k)
        self.names = [n for n, _ in objectives]
        self.maxi = [bool(m) for _, m in objectives]
        self.method, self.weights, self.normalize, self.view = method, weights, normalize, view

    def values(self, cols: dict, mask: np.ndarray) -> np.ndarray:
        n = len(mask)
        mat = np.stack([column_of(cols, c) for c in self.names], axis=1).reshape(n, len(self.names))
        out = np.full(n, np.nan)
        rows = np.flatnonzero(mask)  # as in memory: only the eligible rows are folded (product checks signs)
        if len(rows):
            out[rows] = aggregate_scores(mat[rows], self.maxi, self.method, self.weights, self.normalize, self.view)
        return out


class GumbelPass(TopKPass):
    """``gumbel_topk`` (DSIR's resampling): the top ``k`` of ``value / temperature`` plus Gumbel noise
    (value negated for a minimised criterion). The noise is drawn per eligible row in pool order from
    one generator seeded as in memory (:func:`~thresher.selectors.gumbel.gumbel_draws`), so the keys are
    those the selector computes on the eligible rows; a fresh pass draws the same noise again."""

    def __init__(self, filters: list, column: str, maximize: bool, k: int, seed: int, temperature: float) -> None:
        super().__init__(filters, column, True, k)
        self.sign, self.temperature = (1.0 if maximize else -1.0), float(temperature)
        self.rng = np.random.default_rng(int(seed))

    def values(self, cols: dict, mask: np.ndarray) -> np.ndarray:
        v = values_of(cols, self.column, mask)
        rows = np.flatnonzero(mask)  # one draw per eligible row, a NaN score's too (as in memory)
        out = np.full(len(mask), np.nan)
        out[rows] = self.sign * v[rows] / self.temperature + gumbel_draws(self.rng, len(rows))
        return out


def dominators(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of ``b`` [nb, M], how many rows of ``a`` [na, M] dominate it (minimisation:
    no worse in every objective, better in one)."""
    out = np.zeros(len(b), dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return out
    step = max(1, _CMP_ELEMS // max(1, len(a) * a.shape[1]))
    for s in range(0, len(b), step):
        q = b[s : s + step, None, :]
        out[s : s + step] = ((a[None] <= q).all(-1) & (a[None] < q).any(-1)).sum(1)
    return out


class ParetoPass(CountPass):
    """The ``pareto`` selector (fronts, then crowding distance, then position) on a budget ``k``.

    Rows with a non-finite objective are never selected (as ``selectors.basic.pareto_order``). Let
    ``r(x)`` be the front of row ``x`` among the eligible finite rows and ``R`` the first front such
    that fronts ``0..R`` hold at least ``kk <= k`` rows; the selection is the first ``kk`` rows of
    fronts ``0..R`` ordered by (front, crowding desc, position), and the crowding distance of a row
    depends only on the members of its own front.

    Pruning rule: a row is dropped once ``k`` rows of the pool are known to dominate it. Proof that
    it keeps every row of fronts ``0..R``: each row dominating ``x`` lies in a front before ``r(x)``,
    so fronts ``0..r(x)-1`` hold at least ``k >= kk`` rows, hence ``R <= r(x) - 1`` and ``x`` is not
    needed. The count kept per row is a lower bound (rows seen, including dropped ones, that
    dominate it when it arrived or later), so the rule only fires when it is true.

    Exactness on the survivors ``S``: every dominator of a row of front ``f <= R`` lies in a front
    ``< f`` and so is in ``S``; hence the row's front computed within ``S`` is ``f`` (a front is the
    length of the longest chain of dominators, and every such chain lies in ``S``). A row of front ``> R`` has a
    dominating chain through fronts ``0..R`` (one row per front, all in ``S``), so its front within
    ``S`` is ``> R`` too. So fronts ``0..R`` within ``S`` are the pool's fronts ``0..R``, with the
    same members and hence the same crowding distances, and the first ``kk`` rows of ``S``'s order
    are the pool's. Memory: the survivors, which is O(k) rows for objectives that agree and up to
    every row when the first fronts are large (a front's crowding needs all its members).
    """

    def __init__(self, filters: list, objectives: list, k: int) -> None:
        super().__init__(filters)
        self.names = [n for n, _ in objectives]
        self.maxi = [bool(m) for _, m in objectives]
        self.sign = np.array([-1.0 if m else 1.0 for m in self.maxi])
        self.k = int(k)
        m = len(self.names)
        self.vals = np.zeros((0, m))  # survivors' objectives (as given)
        self.pos = np.zeros(0, dtype=np.int64)  # their pool positions, ascending
        self.doms = np.zeros(0, dtype=np.int64)  # lower bound of the rows known to dominate each

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        mat = np.stack([column_of(cols, c) for c in self.names], axis=1).reshape(len(mask), len(self.names))
        rows = np.flatnonzero(mask & np.isfinite(mat).all(axis=1))
        new, pos = mat[rows], rows.astype(np.int64) + int(offset)
        self.peak = max(self.peak, (len(self.pos) + len(mask)) * len(self.names))
        if self.k == 0:
            return
        old_min, new_min = self.vals * self.sign, new * self.sign
        d_new = dominators(new_min, new_min) + dominators(old_min, new_min)
        d_old = self.doms + dominators(new_min, old_min)
        keep_old, keep_new = d_old < self.k, d_new < self.k
        self.vals = np.concatenate([self.vals[keep_old], new[keep_new]])
        self.pos = np.concatenate([self.pos[keep_old], pos[keep_new]])
        self.doms = np.concatenate([d_old[keep_old], d_new[keep_new]])

    def order(self, kk: int, count: Callable[[float], int]) -> np.ndarray:
        srt = np.argsort(self.pos, kind="stable")  # ties by pool position
        order, _, _ = pareto_order(self.vals[srt], self.maxi)
        return self.pos[srt][order][:kk]


# ------------------------------------------------------------------ reading the shards back
def _owner(column: str, crits: list) -> Optional[str]:
    """The shard criterion whose cached table holds ``column`` (``name`` or ``name.part``)."""
    hits = [c for c in crits if column == c or column.startswith(c + ".")]
    return max(hits, key=len) if hits else None


def pool_owned(st: RunState, columns: set) -> bool:
    """Whether one of ``columns`` belongs to a pool-scoped criterion (scored after the last shard)."""
    crits = [s.col for s in st.pool_criteria()]
    return any(c != TOKENS and _owner(c, crits) is not None for c in columns)


def replayable(st: RunState, columns: set) -> bool:
    """Whether every column can be read back shard by shard: from the shards' cache entries, from a
    pool-scoped criterion's entry (a range of its rows), or ``st.tokens``."""
    crits = [s.col for s in st.shard_criteria()] + [s.col for s in st.pool_criteria()]
    return all(c == TOKENS or _owner(c, crits) is not None for c in columns)


def _pool_rows(frame: Any, columns: list, offset: int, n: int) -> Any:
    """Rows ``offset .. offset + n`` of a pool-scoped criterion's scores: a :class:`~.pool_entry.PoolEntry`
    reads just the row groups they span; an in-memory table is sliced."""
    if hasattr(frame, "rows"):
        return frame.rows(slice(offset, offset + n), columns)
    return frame.iloc[offset : offset + n]


def _shard_table(st: RunState, crit: str, ref: Any, offset: int, columns: list) -> Any:
    """The score table of ``crit`` for one shard: its cache entry, or its rows of a pool-scoped entry."""
    if crit in st.pool_frames:
        df = _pool_rows(st.pool_frames[crit], columns, offset, ref.n)
        if len(df) != ref.n:
            raise RuntimeError(f"selection: the scores of {crit!r} end at row {offset + len(df)} of {st.n}")
        return df
    df = st.cache.read_columns(crit, ref.keys[crit], ref.ids, columns)
    if df is None:
        where = st.cache.path(crit, ref.keys[crit])
        raise RuntimeError(f"selection: the cache entry {where} of a scored shard is missing or changed")
    return df


def replay(st: RunState, columns: set) -> Iterator[tuple[dict, int, int]]:
    """``(cols, offset, n)`` of each shard in pool order, read back from the score cache (a pool-scoped
    criterion's columns: the same rows of its whole-pool entry)."""
    crits = [s.col for s in st.shard_criteria()] + [s.col for s in st.pool_criteria()]
    owners = {c: _owner(c, crits) for c in columns if c != TOKENS}
    offset = 0
    for ref in st.shards:
        cols: dict = {}
        for crit in sorted(set(owners.values())):
            mine = [c for c, o in owners.items() if o == crit]
            df = _shard_table(st, crit, ref, offset, mine)
            for c in mine:
                if c in df.columns:
                    cols[c] = score_column(df[c])
        if TOKENS in columns:
            cols[TOKENS] = np.asarray(st.tokens[offset : offset + ref.n], dtype=np.float64)
        yield cols, offset, ref.n
        offset += ref.n


def rows_at(st: RunState, columns: set, positions: np.ndarray) -> pd.DataFrame:
    """The score ``columns`` of the rows at pool ``positions`` (a frame in that order), read back from the
    cache a shard at a time: O(len(positions) + shard) values."""
    positions = np.asarray(positions, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    srt = positions[order]
    parts: dict = {c: [] for c in sorted(columns)}
    for cols, offset, n in replay(st, set(columns)):
        a, b = np.searchsorted(srt, [offset, offset + n])
        for c, got in parts.items():
            if c not in cols:
                raise ValueError(f"criterion: no column {c!r} in the scores; columns: {sorted(cols)}")
            got.append(np.asarray(cols[c])[srt[a:b] - offset])
    back = np.empty(len(positions), dtype=np.int64)
    back[order] = np.arange(len(positions))
    return pd.DataFrame({c: concat(v, np.float64)[back] for c, v in parts.items()})


def count_at_least(st: RunState, column: str, eligible: np.ndarray, value: float, maximize: bool) -> int:
    """Eligible rows whose ``column`` is at least as good as ``value`` (one more scan of the cache)."""
    total = 0
    for cols, offset, n in replay(st, {column}):
        v = values_of(cols, column, eligible[offset : offset + n])
        with np.errstate(invalid="ignore"):
            total += int(((v >= value) if maximize else (v <= value)).sum())
    return total


def ratio_bound(cfg: Any, ratio_base: Optional[int]) -> Optional[int]:
    """An upper bound of the budget known before the pool is read (None: known only after)."""
    if cfg.k is not None:
        return int(cfg.k)
    if cfg.ratio is not None and ratio_base is not None:
        return int(ratio_base * float(cfg.ratio))
    return None


__all__ = [
    "CountPass",
    "TopKPass",
    "ThresholdPass",
    "ParetoPass",
    "AggregatePass",
    "dominators",
    "replay",
    "replayable",
    "count_at_least",
    "rows_at",
    "ratio_bound",
    "values_of",
    "column_of",
    "score_column",
]
