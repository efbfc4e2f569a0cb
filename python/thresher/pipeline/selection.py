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
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from ..cache import cache_key
from ..criteria.base import model_fingerprint
from ..models.loader import LoadedLM, load_tokenizer
from ..ops import TopKAccumulator
from ..plan import TOKENS, Plan, Step, apply_filters, budget_k, parse_filter
from ..registry import SELECTORS
from ..render import render_sample
from ..selectors.base import columns_read, criterion_direction
from .state import RunState, concat


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
        step = token_model(st.plan) if st.cfg.tokens is not None and not st.cfg.score_only else None
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


# ------------------------------------------------------------------ token counts for a token budget
TOKENS_LM = "tokens-lm"  # cache folder of the model-tokenizer counts


def token_model(plan: Plan) -> Optional[Step]:
    """The first model-based criterion (one with a ``model`` option): its tokenizer counts a token budget."""
    for step in plan.criteria:
        m = step.options.get("model")
        if isinstance(m, (str, LoadedLM)):
            return step
    return None


def token_count_kind(cfg: Any, plan: Plan) -> str:
    """What ``tokens`` counts: ``tokenizer of <criterion> (<model>)`` under a token budget with a
    model-based criterion, else ``approximate`` (the ``length`` criterion's estimate)."""
    step = token_model(plan) if cfg.tokens is not None and not cfg.score_only else None
    if step is None:
        return "approximate"
    return f"tokenizer of {step.col} ({model_fingerprint(step.options['model'])}), whole conversation"


def _tokenizer(st: RunState, step: Step) -> Any:
    sc = st.scorers.get(step.col)
    if getattr(sc, "tokenizer", None) is not None:
        return sc.tokenizer
    m = step.options["model"]
    return m.tokenizer if isinstance(m, LoadedLM) else load_tokenizer(m)


def count_tokens(table: pd.DataFrame, tokenizer: Any, template: str) -> pd.DataFrame:
    """Tokens of each row's whole rendered conversation (prompt template or chat template, every turn)."""
    counts = np.zeros(len(table), dtype=np.float64)
    for i, row in enumerate(table.to_dict("records")):
        r = render_sample(row, template, tokenizer, sid=str(row["id"]))
        counts[i] = len(tokenizer(r.text, add_special_tokens=not r.special_in_text)["input_ids"])
    return pd.DataFrame({"id": table["id"].astype(str), TOKENS: counts})


def model_token_counts(st: RunState, step: Step) -> np.ndarray:
    """Per pool row, its token count with ``step``'s tokenizer (cached per shard; one more pass over
    the input only for the shards the cache lacks)."""
    template = step.options.get("template") or "alpaca"
    mkey = f"{model_fingerprint(step.options['model'])}/template={template}/v1"
    keys = [cache_key(TOKENS_LM, mkey, ref.key) for ref in st.shards]
    parts = [st.cache.get(TOKENS_LM, k, ref.ids) for k, ref in zip(keys, st.shards)]
    if any(p is None for p in parts):
        tok = _tokenizer(st, step)
        for i, shard in enumerate(st.source.shards()):
            if parts[i] is None:
                table = count_tokens(shard.table, tok, template)
                parts[i] = st.cache.put(TOKENS_LM, keys[i], table, ids=st.shards[i].ids)
    return concat([p[TOKENS].to_numpy(np.float64) for p in parts], np.float64)


__all__ = [
    "Selection",
    "StreamingTopK",
    "InMemorySelection",
    "ScoreOnly",
    "make_selection",
    "select",
    "needed_columns",
    "token_model",
    "token_count_kind",
    "model_token_counts",
    "count_tokens",
]
