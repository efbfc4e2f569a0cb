"""The select stage, chosen once per run as an object fed shard by shard.

* :class:`StreamingTopK`: a plain ``topk`` on a sample budget (no filters, no
  diversity, no pool-scoped criteria) runs out of core: a
  :class:`~thresher.ops.TopKAccumulator` keeps O(k) candidates.
* :class:`InMemorySelection`: any other selector keeps the columns it reads (one
  float64 per row each), applies the filters and calls the selector once.
* :class:`ScoreOnly`: no selection (``thresher score``); filters still mark ``eligible``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ..ops import TopKAccumulator
from ..plan import TOKENS, Plan, apply_filters, budget_k, parse_filter
from ..registry import SELECTORS
from ..selectors.base import columns_read, criterion_direction
from .state import RunState


class Selection:
    """Fed each shard's score columns (those in ``needed``) in order; ``result`` sets the decisions on the state."""

    needed: set

    def feed(self, cols: dict, offset: int) -> None:
        """Columns of the shard whose first row has pool position ``offset``."""

    def feed_pool(self, cols: dict) -> None:
        """Columns of pool-scoped criteria (whole pool)."""

    def result(self, st: RunState) -> None:
        """Set ``st.k``, ``st.order`` (pool positions, best first) and ``st.eligible``."""
        raise NotImplementedError


class StreamingTopK(Selection):
    def __init__(self, column: str, k: int, maximize: bool) -> None:
        self.column, self.needed = column, {column}
        self.acc = TopKAccumulator(k, largest=maximize)

    def feed(self, cols: dict, offset: int) -> None:
        self.acc.update(torch.from_numpy(np.array(cols[self.column], dtype=np.float64)), offset)

    def result(self, st: RunState) -> None:
        values, idx = self.acc.result()
        idx = idx.numpy().astype(np.int64)
        st.order = idx[~np.isnan(values.numpy())]
        st.k = budget_k(st.cfg, st.n, st.plan.ratio_base)
        st.eligible = np.ones(st.n, dtype=bool)


class InMemorySelection(Selection):
    def __init__(self, needed: set) -> None:
        self.needed = set(needed)
        self.cols: dict = {}

    def feed(self, cols: dict, offset: int) -> None:
        for c, v in cols.items():
            self.cols.setdefault(c, []).append(v)

    def feed_pool(self, cols: dict) -> None:
        for c, v in cols.items():
            self.cols[c] = [v]

    def result(self, st: RunState) -> None:
        colv = {c: np.concatenate(v) for c, v in self.cols.items()}
        colv[TOKENS] = st.tokens
        self.cols = {}
        st.eligible = apply_filters(colv, st.plan.filters, st.n)
        st.k = self._budget(st)
        st.order = self._choose(st, colv)

    def _budget(self, st: RunState) -> int:
        return budget_k(st.cfg, st.n, st.plan.ratio_base)

    def _choose(self, st: RunState, colv: dict) -> np.ndarray:
        cfg, sel = st.cfg, st.plan.selector
        elig = np.flatnonzero(st.eligible)
        frame = pd.DataFrame({c: v[elig] for c, v in colv.items()})
        emb = st.embeddings[elig] if st.embeddings is not None else None
        grp = st.groups[elig] if st.groups is not None else None
        kk = len(elig) if cfg.tokens is not None else min(st.k, len(elig))
        rel = np.asarray(
            SELECTORS.get(sel.name).obj(frame, kk, embeddings=emb, groups=grp, seed=cfg.seed, **sel.options),
            dtype=np.int64,
        )
        if len(rel) and (rel.min() < 0 or rel.max() >= len(elig) or len(np.unique(rel)) != len(rel)):
            raise ValueError(f"selector {sel.name!r} returned invalid row positions")
        order = elig[rel]
        if cfg.tokens is not None:
            csum = np.cumsum(st.tokens[order])
            order = order[: int(np.searchsorted(csum, cfg.tokens, side="right"))]
        return order


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
    """The selection object for this run (decided once, before any shard is read)."""
    cfg, plan, sel = st.cfg, st.plan, st.plan.selector
    if cfg.score_only:
        return ScoreOnly(needed_columns(plan))
    streaming = (
        sel.name == "topk"
        and sel.options.get("diversity_tau") is None
        and cfg.k is not None
        and cfg.tokens is None
        and not plan.filters
        and not st.pool_criteria()
    )
    if streaming:
        col = sel.options["criterion"]
        return StreamingTopK(col, cfg.k, (sel.options.get("direction") or criterion_direction(col)) == "max")
    return InMemorySelection(needed_columns(plan))


def select(st: RunState, selection: Selection) -> None:
    t = time.perf_counter()
    selection.result(st)
    st.lap("select", t)
    st.say(
        f"selected {len(st.order)} of {st.n} rows ({100.0 * len(st.order) / max(st.n, 1):.2f}%), "
        f"{int(st.eligible.sum())} eligible after filters {st.plan.filters or '[]'}"
    )


__all__ = ["Selection", "StreamingTopK", "InMemorySelection", "ScoreOnly", "make_selection", "select", "needed_columns"]
