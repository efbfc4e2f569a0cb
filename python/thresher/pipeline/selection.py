"""The select stage, chosen once per run as an object fed shard by shard.

* :class:`StreamingSelection`: ``topk``, ``gumbel_topk`` (DSIR), ``threshold`` (quantile or absolute),
  ``pareto`` and ``aggregate`` / ``weighted`` / ``rrf`` (every fold and normaliser; one that reads the
  pool counts its statistics first: :mod:`.streaming_agg`) on a sample budget (``k`` or ``ratio``), with
  per-row filters, run as scans of the shards (:mod:`.streaming`; a pool-scoped criterion's columns read
  back from its whole-pool entry a shard's rows at a time): O(k + shard) score values (the Pareto
  survivors for ``pareto``), the same selection as in memory.
* :class:`ReprSelection`: the same selectors with ``diversity_tau`` (DEITA's repr filter): the
  greedy walks the first rows of the best-first order in rounds and embeds only those rows
  (:mod:`.streaming_repr`), O(k + m + shard) rows for ``m`` candidates; the same selection as in
  memory (same embeddings cache).
* ``group_topk`` on the run's groups (``--group-field``): a :class:`StreamingSelection` (or
  :class:`TokenBudgetSelection`) whose scans find each group's size and best row, then keep each group's
  quota (:mod:`.streaming_groups`).
* :class:`CascadeSelection`: ``cascade`` whose first stage is one of those (no repr filter), on a sample
  budget: its ``k1`` rows by scans, then the second stage in memory on those rows alone, O(k1 + shard).
* :class:`TokenBudgetSelection`: either of those on a token budget (``--tokens``): passes of a
  doubling number of rows until the order's prefix passes the budget, O(m + shard) for ``m`` a small
  multiple of the rows selected.
* :class:`InMemorySelection`: any other selector keeps the columns it reads (one
  float64 per row each), applies the filters and calls the selector once.
* :class:`ScoreOnly`: no selection (``thresher score``); filters still mark ``eligible``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from ..plan import TOKENS, Plan, apply_filters, budget_k, parse_filter
from ..registry import SELECTORS
from ..selectors.base import check_k, columns_read, maximizing, parse_objectives
from ..selectors.basic import cascade_stage, first_stage_budget
from .lm_tokens import counting_step, model_token_counts
from .state import RunState
from .streaming import (
    AggregatePass,
    CountPass,
    GumbelPass,
    ParetoPass,
    ThresholdPass,
    TopKPass,
    count_at_least,
    pool_owned,
    ratio_bound,
    replay,
    replayable,
    rows_at,
)
from .streaming_agg import KneeThreshold, PooledAggregate
from .streaming_groups import GroupTopK
from .streaming_repr import ReprWalk


class Selection:
    """Fed each shard's score columns (those in ``needed``) in order; ``result`` sets the decisions on the state."""

    needed: set
    wants_pool = True  # fed the whole columns of pool-scoped criteria (``feed_pool``); a streaming one reads them back

    def feed(self, cols: dict, offset: int, n: int) -> None:
        """Columns of the shard of ``n`` rows whose first row has pool position ``offset``."""

    def feed_pool(self, cols: dict) -> None:
        """Columns of pool-scoped criteria (whole pool)."""

    def result(self, st: RunState) -> None:
        """Set ``st.k``, ``st.order`` (pool positions, best first) and ``st.eligible``."""
        raise NotImplementedError


class StreamingSelection(Selection):
    """A selection by scans of the shards (:mod:`.streaming`), O(k + shard) score values.

    ``make_pass(k)`` builds the selecting pass for a budget ``k``. When an upper bound of the budget
    is known before the pool is read (``k``, or a ratio of a recipe's ``ratio_base``) and no filter
    reads ``tokens`` (which the shards' columns do not carry), that pass runs as the shards are
    scored; otherwise a counting pass runs then (filters, eligible rows) and the selecting pass
    replays the shards from the score cache once the budget is known. A pool-scoped criterion's
    columns are read back the same way, a shard's rows at a time, once the whole pool is scored."""

    wants_pool = False

    def __init__(self, st: RunState, kind: str, columns: set, make_pass: Callable, bound: Optional[int]) -> None:
        self.st, self.kind, self.needed, self.make_pass = st, kind, set(columns), make_pass
        self.filters = list(st.plan.filters)
        fcols = {parse_filter(f)[0] for f in self.filters}
        pooled = hasattr(make_pass, "counting")  # its passes read pool-wide statistics: select after a count
        # the count runs as the shards are scored unless it reads columns they lack (tokens, pool-scoped ones)
        live = TOKENS not in fcols and not pool_owned(st, fcols | (self.needed if pooled else set()))
        self.selecting = live and bound is not None and not pooled and not pool_owned(st, self.needed)
        first = (make_pass(self.size(bound)) if self.selecting else self._counting()) if live else None
        self.live = self._own(first) if first is not None else None
        self.replays = 0  # scans of the cache after the scoring pass
        self.peak = 0  # the most score values a pass held at once

    def feed(self, cols: dict, offset: int, n: int) -> None:
        if self.live is not None:
            self.live.scan(cols, offset, n)
            self.peak = max(self.peak, self.live.peak)

    def _counting(self) -> CountPass:
        """The counting pass: the selector's own when its passes need pool-wide statistics
        (:class:`~.streaming_agg.PooledAggregate`), else the filters' :class:`CountPass`."""
        make = getattr(self.make_pass, "counting", None)
        return make(self.st.rowstore) if make is not None else CountPass(self.filters)

    def _counted(self) -> Any:
        """The counting pass, run (live, or now by a scan of the cache), its statistics completed."""
        count = self.live if self.live is not None else self._scan(self._counting())
        if count.n != self.st.n:
            raise RuntimeError(f"selection: fed {count.n} rows of a pool of {self.st.n}")
        complete = getattr(self.make_pass, "complete", None)
        if complete is not None and not self.selecting:
            complete(count, self._scan)
        return count

    def _own(self, p: Any) -> Any:
        """A new pass, its verdicts per row kept in the run's row store (on disk), when there is one."""
        return p.keep_masks_in(self.st.rowstore)

    def _scan(self, p: Any) -> Any:
        self._own(p)
        self.replays += 1
        for cols, offset, n in replay(self.st, self.needed):
            p.scan(cols, offset, n)
            self.peak = max(self.peak, p.peak)
        return p

    def size(self, k: Optional[int]) -> Optional[int]:
        """The budget of the selecting pass for a selection of ``k`` rows."""
        return k

    def prepare(self, st: RunState) -> tuple[Any, int]:
        """Set ``st.k`` and ``st.eligible``; the selecting pass (its budget ``size(st.k)`` or more)
        and the number of rows to select."""
        plan = st.plan
        count = self._counted()
        st.k = budget_k(st.cfg, st.n, plan.ratio_base, eligible=count.n_eligible, base=plan.budget_base)
        p = self.live if self.selecting else self._scan(self.make_pass(self.size(st.k)))
        self.live = None
        st.eligible = p.eligible()
        return p, check_k(st.k, p.n_eligible, plan.selector.name)

    def at_least(self, p: Any) -> Callable[[float], int]:
        return lambda v: self._count_at_least(p, v)

    def result(self, st: RunState) -> None:
        p, kk = self.prepare(st)
        st.order = np.asarray(p.order(kk, self.at_least(p)), dtype=np.int64)

    def _count_at_least(self, p: Any, value: float) -> int:
        self.replays += 1
        return count_at_least(self.st, p.column, self.st.eligible, value, p.maximize)


StreamingTopK = StreamingSelection  # the name before the selection had other streaming kinds


class ReprSelection(StreamingSelection):
    """A streaming selection followed by the repr filter (``diversity_tau``) on its best-first order,
    walked in rounds over the rows that can still be chosen (:mod:`.streaming_repr`): the selecting
    pass keeps the first ``m = CANDIDATES_PER_K * k`` rows of the order; when the walk keeps fewer than
    ``k`` of them and the order has more, a pass of twice the budget replays the cache for the next
    rows. Scoring embeds nothing (``wants_embeddings``): only the candidates are embedded. Memory:
    the passes' O(m + shard) score values, O(k + m + shard) rows for the walk."""

    wants_embeddings = False
    CANDIDATES_PER_K = 2

    def __init__(self, st: RunState, kind: str, columns: set, make_pass: Callable, bound: Optional[int], tau: float):
        super().__init__(st, kind, columns, make_pass, bound)
        self.tau = float(tau)
        self.walk: Optional[ReprWalk] = None
        self.candidates = 0  # the largest budget of a selecting pass

    def size(self, k: Optional[int]) -> Optional[int]:
        return None if k is None else max(1, self.CANDIDATES_PER_K * int(k))

    def result(self, st: RunState) -> None:
        p, kk = self.prepare(st)
        walk = self.walk = ReprWalk(st, self.tau, kk)
        m = int(p.k)
        while kk > 0:
            self.candidates = max(self.candidates, m)
            prefix = np.asarray(p.order(m, self.at_least(p)), dtype=np.int64)  # the first m rows of the order
            walk.walk(prefix[walk.walked :])
            if walk.done or len(prefix) < m:
                break
            m *= 2
            p = self._scan(self.make_pass(m))
        st.order = walk.kept

    @property
    def peak_rows(self) -> int:
        """The most rows the walk held at once (kept embeddings, candidates, the shard being read)."""
        return 0 if self.walk is None else self.walk.peak_rows


class TokenBudgetSelection(StreamingSelection):
    """A token budget (``--tokens T``) on a streaming selector: the longest prefix of its best-first
    order (of the rows the repr filter keeps, with ``diversity_tau``) whose tokens sum to at most ``T``,
    as in memory. After a counting pass, a pass of ``m`` rows replays the cache: the first ``m`` holds
    ``FIRST`` times the budget at the pool's mean tokens per row; while those rows (the rows the walk
    kept) hold at most ``T`` tokens and the order has more, ``m`` doubles. Memory O(m + shard), ``m``
    a small multiple of the rows selected. A budget counted with a model's tokenizer
    (:mod:`.lm_tokens`) reads the counts into the run's row store first (a memory map, as ``tokens``)."""

    wants_embeddings = False
    FIRST = 2.0

    def __init__(self, st: RunState, kind: str, columns: set, make_pass: Callable, tau: Optional[float]) -> None:
        super().__init__(st, kind, columns, make_pass, None)
        self.tau = None if tau is None else float(tau)
        self.walk: Optional[ReprWalk] = None
        self.candidates = 0  # the largest budget of a selecting pass

    def result(self, st: RunState) -> None:
        step = counting_step(st.cfg, st.plan)
        if step is not None:  # counted with the scoring model's tokenizer
            st.tokens = model_token_counts(st, step)
        count = self._counted()
        self.live = None
        st.k = budget_k(st.cfg, st.n, st.plan.ratio_base, eligible=count.n_eligible, base=st.plan.budget_base)
        st.eligible = count.eligible()
        budget = int(st.cfg.tokens)
        if self.tau is not None:
            self.walk = ReprWalk(st, self.tau, count.n_eligible, tokens=budget)
        n_elig = count.n_eligible
        m, kept = self._first(n_elig, budget), np.zeros(0, np.int64)
        while m > 0:
            self.candidates = max(self.candidates, m)
            p = self._scan(self.make_pass(m))
            order = np.asarray(p.order(m, self.at_least(p)), dtype=np.int64)  # the first m rows of the order
            kept, done = self._keep(st, order, budget)
            if done or len(order) < m or m >= n_elig:
                break
            m = min(2 * m, n_elig)
        st.order, st.token_stop = within_tokens(kept, st.tokens, budget), None
        if len(st.order) < len(kept):
            st.token_stop = int(kept[len(st.order)])

    def _first(self, n_eligible: int, budget: int) -> int:
        mean = float(np.mean(self.st.tokens)) if self.st.n else 1.0
        return int(min(n_eligible, max(1, math.ceil(self.FIRST * budget / max(mean, 1.0)))))

    def _keep(self, st: RunState, order: np.ndarray, budget: int) -> tuple[np.ndarray, bool]:
        """The rows kept of the order so far, and whether they hold more than ``budget`` tokens."""
        if self.walk is None:
            return order, float(np.sum(np.asarray(st.tokens[order], dtype=np.float64))) > budget
        self.walk.walk(order[self.walk.walked :])
        return self.walk.kept, self.walk.done

    @property
    def peak_rows(self) -> int:
        """The most rows the repr walk held at once (0 without ``diversity_tau``)."""
        return 0 if self.walk is None else self.walk.peak_rows


class CascadeSelection(StreamingSelection):
    """``cascade`` whose first stage streams (``make_pass``: ``m -> pass`` of that selector): after the
    count, a pass keeps the first stage's ``k1`` rows (``first_stage_budget``: a ratio of the eligible rows or
    a ``k``, as the selector computes it); their score columns (those an in-memory selection holds: the
    criteria's, the selectors' and filters', ``tokens``) are read back from the cache (:func:`rows_at`)
    and the second stage ``then`` (``(name, options)``) runs on them in memory with their embeddings and
    groups, as the selector calls it. O(k1 + shard) values, not O(N)."""

    def __init__(self, st: RunState, columns: set, make_pass: Callable, first: tuple, then: tuple) -> None:
        super().__init__(st, "streaming-cascade", columns, make_pass, None)
        self.first, self.then = first, then  # (name, ratio, k), (name, options)
        self.k1 = 0

    def result(self, st: RunState) -> None:
        count = self._counted()
        self.live = None
        st.k = budget_k(st.cfg, st.n, st.plan.ratio_base, eligible=count.n_eligible, base=st.plan.budget_base)
        st.eligible = count.eligible()
        kk = check_k(st.k, count.n_eligible, "cascade")
        name1, ratio1, k1 = self.first
        self.k1 = first_stage_budget(ratio1, k1, count.n_eligible, name1)
        p = self._scan(self.make_pass(self.k1))
        pos1 = np.asarray(p.order(self.k1, self.at_least(p)), dtype=np.int64)
        self.replays += 1
        sub = rows_at(st, needed_columns(st.plan) | self.needed | {TOKENS}, pos1)
        name2, opts2 = self.then
        emb = None if st.embeddings is None else st.embeddings[pos1]
        grp = None if st.groups is None else st.groups[pos1]
        pos2 = SELECTORS.get(name2).obj(sub, kk, embeddings=emb, groups=grp, seed=st.cfg.seed, **opts2)
        st.order = pos1[checked_positions(pos2, len(pos1), name2)]


def checked_positions(rel: Any, n: int, name: str) -> np.ndarray:
    """A selector's answer: distinct row positions in ``[0, n)`` (int64), else an error naming it."""
    rel = np.asarray(rel, dtype=np.int64)
    if len(rel) and (rel.min() < 0 or rel.max() >= n or len(np.unique(rel)) != len(rel)):
        raise ValueError(f"selector {name!r} returned invalid row positions")
    return rel


def within_tokens(order: np.ndarray, tokens: Any, budget: int) -> np.ndarray:
    """The longest prefix of ``order`` whose ``tokens`` sum to at most ``budget``."""
    csum = np.cumsum(np.asarray(tokens[order], dtype=np.float64))
    return order[: int(np.searchsorted(csum, budget, side="right"))]


class InMemorySelection(Selection):
    def __init__(self, needed: set) -> None:
        self.needed = set(needed)
        self.cols: dict = {}

    def feed(self, cols: dict, offset: int, n: int) -> None:
        for c, v in cols.items():
            self.cols.setdefault(c, []).append(v)

    def feed_pool(self, cols: dict) -> None:
        for c, v in cols.items():
            self.cols[c] = [v]

    def result(self, st: RunState) -> None:
        colv = {c: np.concatenate(v) for c, v in self.cols.items()}
        step = counting_step(st.cfg, st.plan)
        if step is not None:  # a token budget counts with the scoring model's tokenizer
            st.tokens = model_token_counts(st, step)
        colv[TOKENS] = st.tokens
        self.cols = {}
        st.eligible = apply_filters(colv, st.plan.filters, st.n)
        st.k = self._budget(st)
        st.order = self._choose(st, colv)

    def _budget(self, st: RunState) -> int:
        elig = int(st.eligible.sum())
        return budget_k(st.cfg, st.n, st.plan.ratio_base, eligible=elig, base=st.plan.budget_base)

    def _choose(self, st: RunState, colv: dict) -> np.ndarray:
        cfg, sel = st.cfg, st.plan.selector
        elig = np.flatnonzero(st.eligible)
        frame = pd.DataFrame({c: v[elig] for c, v in colv.items()})
        emb = eligible_rows(st.embeddings, elig, st.n)
        grp = st.groups[elig] if st.groups is not None else None
        kk = len(elig) if cfg.tokens is not None else check_k(st.k, len(elig), sel.name)
        rel = SELECTORS.get(sel.name).obj(frame, kk, embeddings=emb, groups=grp, seed=cfg.seed, **sel.options)
        order = elig[checked_positions(rel, len(elig), sel.name)]
        if cfg.tokens is None:
            return order
        head = within_tokens(order, st.tokens, cfg.tokens)
        st.token_stop = int(order[len(head)]) if len(head) < len(order) else None
        return head


def eligible_rows(values: Any, elig: np.ndarray, n: int) -> Any:
    """The rows ``elig`` of a per-row array (the run's embeddings: a read-only memory map of the row store):
    the array itself when every row is eligible (no copy on the heap), else a copy of those rows."""
    if values is None:
        return None
    return values if len(elig) == n else values[elig]


class ScoreOnly(InMemorySelection):
    def _budget(self, st: RunState) -> int:
        return 0

    def _choose(self, st: RunState, colv: dict) -> np.ndarray:
        return np.zeros(0, np.int64)


def needed_columns(plan: Plan) -> set:
    """Columns the selector and the filters read, plus each criterion's main column (one float per row)."""
    need = set(columns_read(SELECTORS.get(plan.selector.name), plan.selector.options))
    need.update(parse_filter(f)[0] for f in plan.filters)
    need.update(c.col for c in plan.criteria)
    return need


def make_selection(st: RunState) -> Selection:
    """The selection object for this run (decided once, before any shard is read); its kind goes to
    ``st.selection_kind``: ``streaming-<selector>`` (:class:`StreamingSelection`),
    ``streaming-<selector>-repr`` (:class:`ReprSelection`), ``in-memory`` or ``score-only``."""
    if st.cfg.score_only:
        sel: Selection = ScoreOnly(needed_columns(st.plan))
        st.selection_kind = "score-only"
        return sel
    sel = streaming_selection(st) or InMemorySelection(needed_columns(st.plan))
    st.selection_kind = getattr(sel, "kind", "in-memory")
    return sel


STREAMING_THRESHOLD_MODES = ("quantile", "absolute", "knee")  # knee: the curve sorted on disk first


def _threshold_ok(opts: dict) -> bool:
    """A threshold the streaming pass computes exactly (other option values go to the selector itself,
    which reports them)."""
    mode, value = opts.get("mode"), opts.get("value")
    if mode == "knee":
        return True
    if mode == "absolute":
        return value is not None
    return mode == "quantile" and (value is None or 0.0 <= float(value) <= 1.0)


AGGREGATE_PER_ROW = ("weighted_sum", "product")  # folds of one row's values (with normalize="none")


def _pass_factory(name: str, opts: dict, filters: list, seed: int = 0) -> Optional[Callable]:
    """``k -> pass`` of a selector that streams with these options (None: it needs the whole pool,
    or a repr filter: see :func:`_order_factory`)."""
    if opts.get("diversity_tau") is not None:
        return None  # the repr filter walks the best-first order with the embeddings
    return _order_factory(name, opts, filters, seed)


def _order_factory(name: str, opts: dict, filters: list, seed: int = 0) -> Optional[Callable]:
    """``m -> pass`` whose ``order(kk)`` is the first ``kk <= m`` rows of the selector's best-first
    order (``diversity_tau`` aside), or None when that order needs the whole pool. ``seed``: the run's
    (a seeded selector's draws)."""
    if name in ("aggregate", "weighted", "rrf"):
        method = {"aggregate": opts.get("method", "weighted_sum"), "weighted": "weighted_sum", "rrf": "rrf"}[name]
        normalize = "none" if name == "rrf" else opts.get("normalize", "rank")
        objectives, weights = parse_objectives(opts["objectives"]), opts.get("weights")
        if method in AGGREGATE_PER_ROW and normalize == "none":
            return lambda k: AggregatePass(filters, objectives, method, weights, k)
        return PooledAggregate(filters, objectives, method, weights, normalize)
    if name == "topk":
        col, maxi = opts["criterion"], maximizing(opts["criterion"], opts.get("direction"))
        return lambda k: TopKPass(filters, col, maxi, k)
    if name == "threshold" and _threshold_ok(opts):
        col, maxi = opts["criterion"], maximizing(opts["criterion"], opts.get("direction"))
        if opts["mode"] == "knee":
            return KneeThreshold(filters, col, maxi, opts["strict"])
        return lambda k: ThresholdPass(filters, col, maxi, k, opts["mode"], opts.get("value"), opts["strict"])
    if name == "pareto":
        objectives = parse_objectives(opts["objectives"])
        return lambda k: ParetoPass(filters, objectives, k)
    if name == "gumbel_topk":
        col, maxi, temp = opts["criterion"], maximizing(opts["criterion"], opts.get("direction")), opts["temperature"]
        return lambda k: GumbelPass(filters, col, maxi, k, seed, temp)
    return None


def streaming_selection(st: RunState) -> Optional[StreamingSelection]:
    """The streaming selection of this run (:class:`ReprSelection` with ``diversity_tau``,
    :class:`TokenBudgetSelection` with a token budget), or None when its selector needs the whole pool
    in memory (other selectors and options)."""
    cfg, plan = st.cfg, st.plan
    entry = SELECTORS.get(plan.selector.name)
    opts = entry.resolve_options(dict(plan.selector.options))
    reads = set(columns_read(entry, opts))
    if not reads or TOKENS in reads:
        return None
    columns = reads | {parse_filter(f)[0] for f in plan.filters}
    if plan.selector.name == "group_topk":
        return _group_selection(st, opts, columns)
    if plan.selector.name == "cascade":
        return _cascade_selection(st, opts, columns)
    make = _order_factory(plan.selector.name, opts, list(plan.filters), cfg.seed)
    if make is None or not replayable(st, columns):
        return None
    bound, kind = ratio_bound(cfg, plan.ratio_base), f"streaming-{plan.selector.name}"
    tau = opts.get("diversity_tau")
    if cfg.tokens is not None:
        return TokenBudgetSelection(st, f"{kind}{'-repr' if tau is not None else ''}-tokens", columns, make, tau)
    if tau is not None:
        return ReprSelection(st, f"{kind}-repr", columns, make, bound, opts["diversity_tau"])
    return StreamingSelection(st, kind, columns, make, bound)


def _group_selection(st: RunState, opts: dict, columns: set) -> Optional[StreamingSelection]:
    """``group_topk`` on the run's ``--group-field`` groups or on a score column's labels (``group_column``,
    coded by the counting pass) (:class:`~.streaming_groups.GroupTopK`), on a sample or (``quota="equal"``)
    a token budget."""
    if not replayable(st, columns):
        return None
    col = opts["criterion"]
    make = GroupTopK(list(st.plan.filters), col, maximizing(col, opts.get("direction")), opts["quota"] == "equal",
                     lambda: st.groups, opts.get("group_column"))  # fmt: skip
    if st.cfg.tokens is not None:
        return TokenBudgetSelection(st, "streaming-group_topk-tokens", columns, make, None)
    return StreamingSelection(st, "streaming-group_topk", columns, make, None)


def _cascade_selection(st: RunState, opts: dict, columns: set) -> Optional[StreamingSelection]:
    """``cascade`` whose first stage streams (:class:`CascadeSelection`), on a sample budget; None (in
    memory) when the first stage needs the whole pool (or a repr filter), or with a token budget."""
    name1, opts1, ratio1, k1 = cascade_stage(opts["first"], "first")
    name2, opts2, _, _ = cascade_stage(opts["then"], "then")
    if st.cfg.tokens is not None or not replayable(st, needed_columns(st.plan) | columns):
        return None
    make = _pass_factory(name1, SELECTORS.get(name1).resolve_options(opts1), list(st.plan.filters), st.cfg.seed)
    return None if make is None else CascadeSelection(st, columns, make, (name1, ratio1, k1), (name2, opts2))


def select(st: RunState, selection: Selection) -> None:
    t = time.perf_counter()
    selection.result(st)
    st.lap("select", t)
    if st.cfg.score_only:  # no selection was asked for: nothing to report
        return
    st.say(
        f"selected {len(st.order)} of {st.n} rows ({100.0 * len(st.order) / max(st.n, 1):.2f}%), "
        f"{int(st.eligible.sum())} eligible after filters {st.plan.filters or '[]'}"
    )
    if st.token_stop is not None:
        st.say(token_stop_message(st))


def token_stop_message(st: RunState) -> str:
    """Why a token budget's selection ends where it does: the first row of the order left out does not
    fit in the tokens left (the budget keeps a prefix of the order, :func:`within_tokens`)."""
    pos, budget = int(st.token_stop), int(st.cfg.tokens)
    used = float(np.sum(np.asarray(st.tokens[np.asarray(st.order, dtype=np.int64)], dtype=np.float64)))
    where = f"{Path(st.source.files[int(st.files[pos])]).name}:{int(st.lines[pos])}"
    need = int(st.tokens[pos])
    if not len(st.order):
        return (f"token budget: nothing selected: the first row of the order ({where}) alone holds {need} tokens, "
                f"over --tokens {budget}")  # fmt: skip
    return (f"token budget: the selection stops before {where} of the order, whose {need} tokens do not fit in "
            f"the {budget - int(used)} left of {budget}")  # fmt: skip


__all__ = [
    "Selection",
    "StreamingSelection",
    "StreamingTopK",
    "ReprSelection",
    "TokenBudgetSelection",
    "CascadeSelection",
    "within_tokens",
    "streaming_selection",
    "InMemorySelection",
    "ScoreOnly",
    "make_selection",
    "select",
    "needed_columns",
]
