"""The repr filter (``diversity_tau``) on the rows that can still be chosen: O(k + m + shard) memory.

The in-memory selectors walk their best-first order and keep a row when its max cosine similarity to
the kept rows is at most ``tau`` (:func:`thresher.selectors.basic.diverse_greedy`, DEITA's repr
filter), stopping at ``k`` kept rows. Only a prefix of that order is ever walked, so the streaming
selection walks it in rounds (:class:`ReprWalk`): the first ``m`` rows of the order (a streaming pass
of budget ``m``), their embeddings only (:func:`embed_rows`: one pass over the input for the rows at
those positions, through the run's embeddings cache, so the vectors are those the in-memory path
reads), the greedy continued on them; when fewer than ``k`` rows are kept and the order has more
rows, ``m`` doubles and the next rows of the order are walked. Rows already walked keep their
decisions: continuing the walk is the same as walking the kept rows again (they do not block each
other) and then the new candidates, which is how :meth:`ReprWalk.walk` calls the greedy.

Only the kept rows' embeddings stay between rounds.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from ..embed import embed_table
from ..selectors.basic import diverse_greedy
from .state import RunState


def embed_rows(st: RunState, positions: np.ndarray) -> tuple[np.ndarray, int]:
    """Embeddings of the pool rows at ``positions`` (in that order), with the run's embedder and
    embeddings cache, and the most rows held at once (collected rows plus the shard being read).

    One more pass over the input (``st.source.shards()``, the scoring order, each shard checked
    against the one scored), stopping after the last position's shard; on the engine's workers when
    they read the input for scoring (``st.remote_embed``: the driver parses no row)."""
    if st.remote_embed is not None:
        return st.remote_embed(positions)
    want = np.unique(np.asarray(positions, dtype=np.int64))
    parts: list = []
    got = held = 0
    skipped = list(st.source.skipped)  # a partial pass must not change what the run reports as skipped
    try:
        for i, shard in enumerate(st.source.shards()):
            if i >= len(st.shards) or shard.key != st.shards[i].key:
                raise RuntimeError(f"selection: shard {i} of the input changed since it was scored")
            a, b = np.searchsorted(want, [shard.start, shard.start + len(shard)])
            held = max(held, got + len(shard))
            if b > a:
                parts.append(shard.table.iloc[want[a:b] - shard.start])
                got += int(b - a)
            if b == len(want):
                break
    finally:
        st.source.skipped = skipped
    if got != len(want):
        raise RuntimeError(f"selection: {len(want) - got} candidate row(s) are not in the input any more")
    if not parts:
        return np.zeros((0, 0), np.float32), held
    table = pd.concat(parts, ignore_index=True)
    emb = embed_table(table, st.cfg.embedder or "default", cache_dir=st.cache.root / "embeddings")
    return emb[np.searchsorted(want, positions)], held


class ReprWalk:
    """The repr filter walked over successive slices of the best-first order, ``budget`` rows at most
    (with ``tokens``, a token budget: done once the rows kept hold more tokens than that).

    ``walk(candidates)``: the next rows of the order (pool positions); ``kept``: the positions kept,
    in order. ``peak_rows``: the most rows (kept embeddings, candidates, the shard being read) held."""

    def __init__(self, st: RunState, tau: float, budget: int, tokens: Optional[int] = None) -> None:
        self.st, self.tau, self.budget = st, float(tau), int(budget)
        self.tokens = tokens  # a token budget: done once the kept rows' tokens (``st.tokens``) pass it
        self.kept_tokens = 0.0
        self.kept = np.zeros(0, dtype=np.int64)
        self.kept_emb: Any = None
        self.walked = 0  # rows of the order walked so far
        self.embedded = 0  # rows embedded (candidates), all rounds
        self.rounds = 0
        self.peak_rows = 0

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.budget or (self.tokens is not None and self.kept_tokens > self.tokens)

    def walk(self, candidates: np.ndarray) -> None:
        cand = np.asarray(candidates, dtype=np.int64)
        if self.done or len(cand) == 0:
            self.walked += len(cand)
            return
        emb, held = embed_rows(self.st, cand)
        self.rounds += 1
        self.embedded += len(cand)
        nk = len(self.kept)
        self.peak_rows = max(self.peak_rows, nk + held, nk + 2 * len(cand))
        base = self.kept_emb if self.kept_emb is not None else np.zeros((0, emb.shape[1]), np.float32)
        both = np.concatenate([base, emb])
        rel = np.asarray(diverse_greedy(np.arange(len(both)), both, self.tau, self.budget), dtype=np.int64)
        if len(rel) < nk or not np.array_equal(rel[:nk], np.arange(nk)):
            raise RuntimeError("selection: the repr filter rejected a row it had kept (similarity exactly at tau?)")
        new = rel[nk:] - nk
        self.kept = np.concatenate([self.kept, cand[new]])
        if self.tokens is not None:
            self.kept_tokens += float(np.sum(np.asarray(self.st.tokens[cand[new]], dtype=np.float64)))
        self.kept_emb = np.concatenate([base, emb[new]])
        self.walked += len(cand)


__all__ = ["ReprWalk", "embed_rows"]
