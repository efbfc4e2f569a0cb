"""``group_topk`` as scans of the score shards: O(k + groups + shard) values, the in-memory selection's rows.

The in-memory selector (:func:`thresher.selectors.diversity.group_topk`) orders the eligible rows with a
score best first (ties by lower position), groups them by label (labels compared as strings), orders
the groups by their best row, and then takes, with ``quota="equal"``, rank 0 of every group, then rank
1, ... (round robin) up to ``k`` rows; with ``quota="proportional"``, ``q_g`` rows of each group by
largest remainder of ``size_g / total * k`` (ties by group order), capped at the group's size, in
overall score order.

Both depend on the pool only through each group's number of scored rows and its best row, so the
selection is two scans after the filters' count (:class:`GroupTopK`): :class:`GroupStatsPass` (per
group: rows with a score, the best value and its position) gives the quotas (:func:`round_robin_quotas`,
:func:`proportional_quotas`), then :class:`GroupKeepPass` keeps each group's ``q_g`` best rows (a sort of
the kept rows plus a shard's, per shard) and :meth:`GroupKeepPass.order` lays them out as the selector
does. A token budget (``quota="equal"``) is passes of a doubling number of rows of the round robin. Groups come from the
run's ``--group-field`` column (:class:`~.rowstore.GroupColumn` codes on disk), read a shard's rows at
a time.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from ..io.schema import GROUP_FIELDS
from ..selectors.diversity import label_strings
from .rowstore import GroupColumn
from .state import concat
from .streaming import CountPass, values_of


def canonical_codes(groups: Any) -> np.ndarray:
    """Per code of a :class:`~.rowstore.GroupColumn`, the code of its label compared as a string (as
    the selector compares labels): labels whose strings are equal share one code."""
    labels = [str(x) for x in np.asarray(groups.labels, dtype=object)]
    return np.unique(np.asarray(labels, dtype=str), return_inverse=True)[1].astype(np.int64).reshape(-1)


class _GroupPass(CountPass):
    """A pass that reads each row's group (canonical code) and its score (``maximize`` or not)."""

    def __init__(self, filters: list, column: str, maximize: bool, groups: Any) -> None:
        super().__init__(filters)
        self.column, self.maximize = column, bool(maximize)
        self.groups, self.canon = groups, canonical_codes(groups)
        self.n_groups = int(self.canon.max()) + 1 if len(self.canon) else 0

    def rows(self, cols: dict, offset: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sort key: lower is better, pool positions, group codes) of the shard's eligible rows with a score."""
        v = values_of(cols, self.column, mask)
        ok = np.flatnonzero(~np.isnan(v))
        codes = np.asarray(self.groups.codes[offset + ok], dtype=np.int64)
        key = -v[ok] if self.maximize else v[ok]
        return key, (offset + ok).astype(np.int64), self.canon[codes]


class GroupStatsPass(_GroupPass):
    """Per group: the number of eligible rows with a score, and its best row (key and position)."""

    def __init__(self, filters: list, column: str, maximize: bool, groups: Any) -> None:
        super().__init__(filters, column, maximize, groups)
        g = self.n_groups
        self.sizes = np.zeros(g, np.int64)
        self.best_key = np.full(g, np.inf)
        self.best_pos = np.full(g, np.iinfo(np.int64).max, np.int64)

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        key, pos, grp = self.rows(cols, offset, mask)
        self.peak = max(self.peak, 3 * len(mask) + 3 * self.n_groups)
        if not len(key):
            return
        np.add.at(self.sizes, grp, 1)
        first = np.lexsort((pos, key, grp))  # per group, its best row of the shard first
        starts = first[np.r_[True, grp[first][1:] != grp[first][:-1]]]
        g, k, p = grp[starts], key[starts], pos[starts]
        better = (k < self.best_key[g]) | ((k == self.best_key[g]) & (p < self.best_pos[g]))
        self.best_key[g[better]], self.best_pos[g[better]] = k[better], p[better]

    def group_order(self) -> np.ndarray:
        """The groups with a scored row, ordered by their best row (key, then position)."""
        present = np.flatnonzero(self.sizes > 0)
        return present[np.lexsort((self.best_pos[present], self.best_key[present]))]


def round_robin_quotas(sizes: np.ndarray, k: int) -> np.ndarray:
    """Rows per group (``sizes`` in group order) that a round robin over the groups takes for ``k``
    rows: every group up to a depth ``d``, then one more row from the first groups that have one."""
    sizes = np.asarray(sizes, dtype=np.int64)
    kk = min(int(k), int(sizes.sum()))
    if kk <= 0:
        return np.zeros(len(sizes), np.int64)
    lo, hi = 0, int(sizes.max())  # the largest depth d whose full rounds fit: sum(min(size, d)) <= kk
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if int(np.minimum(sizes, mid).sum()) <= kk else (lo, mid - 1)
    q = np.minimum(sizes, lo)
    more = np.flatnonzero(sizes > lo)[: kk - int(q.sum())]
    q[more] += 1
    return q


def proportional_quotas(sizes: np.ndarray, k: int) -> np.ndarray:
    """Rows per group (``sizes`` in group order) proportional to its size, by largest remainder (ties
    by group order), capped at the size: the selector's ``quota="proportional"``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if not len(sizes):
        return sizes
    kk = min(int(k), int(sizes.sum()))
    exact = sizes.astype(np.float64) / float(sizes.sum()) * kk
    q = np.floor(exact).astype(np.int64)
    frac_order = np.lexsort((np.arange(len(sizes)), -np.round(exact - q, 9)))
    q[frac_order[: kk - int(q.sum())]] += 1
    return np.minimum(q, sizes)


class GroupKeepPass(_GroupPass):
    """Each group's ``quota`` best rows (``quota`` per canonical code), then laid out as the selector does."""

    def __init__(self, filters: list, column: str, maximize: bool, groups: Any, quota: np.ndarray,
                 rank_of_group: np.ndarray, equal: bool) -> None:  # fmt: skip
        super().__init__(filters, column, maximize, groups)
        self.quota, self.rank_of_group, self.equal = quota, rank_of_group, bool(equal)
        self.key = np.zeros(0, np.float64)
        self.pos = np.zeros(0, np.int64)
        self.grp = np.zeros(0, np.int64)
        self.waiting: list = []  # shards' rows not merged yet (key, position, group)
        self.n_waiting = 0
        self.limit = int(np.sum(quota))  # rows kept at most

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        """The shard's rows wait until more than the rows kept at most do; then one sort keeps each group's
        quota of all (a sort of kept + shard every shard is quadratic when k is a large part of the pool)."""
        key, pos, grp = self.rows(cols, offset, mask)
        self.waiting.append((key, pos, grp))
        self.n_waiting += len(key)
        self.peak = max(self.peak, 3 * (len(self.key) + self.n_waiting) + 3 * len(mask))
        if self.n_waiting > self.limit:
            self._merge()

    def _merge(self) -> None:
        if not self.waiting:
            return
        parts = [(self.key, self.pos, self.grp), *self.waiting]
        self.waiting, self.n_waiting = [], 0
        key, pos, grp = (np.concatenate([p[j] for p in parts]) for j in range(3))
        o = np.lexsort((pos, key, grp))
        key, pos, grp = key[o], pos[o], grp[o]
        keep = _rank_within(grp) < self.quota[grp]
        self.key, self.pos, self.grp = key[keep], pos[keep], grp[keep]

    def order(self, kk: int, count: Any = None) -> np.ndarray:
        """The selection, at most ``kk`` positions: round robin (rank within group, then group order), or
        the kept rows in overall score order."""
        self._merge()
        if self.equal:
            o = np.lexsort((self.rank_of_group[self.grp], _rank_within(self.grp)))
        else:
            o = np.lexsort((self.pos, self.key))
        return self.pos[o][:kk]


class GroupLabels(CountPass):
    """The filters' count, and each row's label in a score column (the selector's ``group_column``: a
    cluster id, a tag) coded as the selector compares labels, as strings (:func:`label_strings`): one
    code per distinct string, in order of first appearance; the codes go to the run's row store (held
    when there is none), the distinct strings stay here. :meth:`groups` is then a
    :class:`~.rowstore.GroupColumn` as the run's ``--group-field`` groups are."""

    def __init__(self, filters: list, column: str) -> None:
        super().__init__(filters)
        self.column = column
        self.code: dict = {}  # label string -> code
        self.labels: list = []
        self.codes: list = []  # without a row store
        self.codes_column = ""

    def keep_masks_in(self, store: Any) -> "GroupLabels":
        super().keep_masks_in(store)
        if store is not None:
            self.codes_column = store.unique("group-labels")
        return self

    def take(self, cols: dict, offset: int, mask: np.ndarray) -> None:
        if self.column not in cols:
            raise ValueError(f"group_column: no column {self.column!r} in the scores; columns: {sorted(cols)}")
        local, strings = label_strings(np.asarray(cols[self.column]))
        mine = np.empty(len(strings), np.int32)
        for i, text in enumerate(strings.tolist()):
            mine[i] = self.code.setdefault(text, len(self.code))
            if mine[i] == len(self.labels):
                self.labels.append(text)
        codes = mine[local] if len(local) else np.zeros(0, np.int32)
        self.peak = max(self.peak, 2 * len(mask) + len(self.labels))
        if self.store is not None:
            self.store.append(self.codes_column, codes, np.int32)
        else:
            self.codes.append(codes)

    def groups(self) -> GroupColumn:
        if self.store is not None:
            return GroupColumn(self.store.column(self.codes_column, np.int32), self.labels)
        return GroupColumn(concat(self.codes, np.int32), self.labels)


class GroupTopK:
    """``m -> pass`` of ``group_topk`` on the run's groups (``groups()``: the run's
    :class:`~.rowstore.GroupColumn`, known once the shards are read). The selection counts (filters),
    then :meth:`complete` scans for each group's size and best row (the group order); a pass for ``m``
    keeps each group's quota of ``m`` rows (:class:`GroupKeepPass`). With ``quota="equal"`` its
    ``order(kk)`` is the first ``kk`` rows of one round-robin order, so a token budget takes a prefix of
    it as for any order (proportional quotas are refused with a token budget before the run)."""

    def __init__(self, filters: list, column: str, maximize: bool, equal: bool, groups: Callable[[], Any],
                 group_column: Optional[str] = None) -> None:  # fmt: skip
        self.filters, self.column, self.maximize, self.equal = list(filters), column, bool(maximize), bool(equal)
        self.groups, self.group_column = groups, group_column
        self.stats: Any = None
        self.ranked = np.zeros(0, np.int64)  # groups with a scored row, in order

    def counting(self, store: Any) -> CountPass:
        """The filters' count; with a ``group_column``, its labels coded too (:class:`GroupLabels`)."""
        if self.group_column is None:
            return CountPass(self.filters)
        return GroupLabels(self.filters, self.group_column)  # (its codes go where the selection keeps its masks)

    def complete(self, count: CountPass, scan: Callable[[Any], Any]) -> None:
        groups = count.groups() if isinstance(count, GroupLabels) else self.groups()
        if groups is None:
            raise ValueError(f"groups: group_topk needs groups, and the input has no field {', '.join(GROUP_FIELDS)}: "
                             "name one with --group-field, or give the selector's group_column")  # fmt: skip
        self.stats = scan(GroupStatsPass(self.filters, self.column, self.maximize, groups))
        self.ranked = self.stats.group_order()

    def __call__(self, m: int) -> GroupKeepPass:
        if self.stats is None:
            raise RuntimeError("group_topk: the group scan has not run")
        st, groups = self.stats, self.ranked
        quotas = (round_robin_quotas if self.equal else proportional_quotas)(st.sizes[groups], m)
        quota, rank = np.zeros(st.n_groups, np.int64), np.zeros(st.n_groups, np.int64)
        quota[groups], rank[groups] = quotas, np.arange(len(groups))
        return GroupKeepPass(self.filters, self.column, self.maximize, st.groups, quota, rank, self.equal)


def _rank_within(grp: np.ndarray) -> np.ndarray:
    """Each row's rank within its run of equal ``grp`` values (``grp`` sorted by group)."""
    if not len(grp):
        return np.zeros(0, np.int64)
    start = np.r_[True, grp[1:] != grp[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(grp)), 0))
    return np.arange(len(grp)) - first


__all__ = [
    "GroupTopK",
    "GroupLabels",
    "GroupStatsPass",
    "GroupKeepPass",
    "canonical_codes",
    "round_robin_quotas",
    "proportional_quotas",
]
