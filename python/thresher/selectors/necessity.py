"""MoDS selection over the ``necessity`` criterion: the seed set, then a k-center set of the rows
the seed-tuned model answers badly.

Rows with a ``<criterion>.seed`` rank come first, in that order (the stage-2 k-center seed).
Then the **necessary** rows, those whose answer quality (the main column) is strictly below the
stage-1 bar ``<criterion>.threshold``, are covered by greedy k-center
(:func:`thresher.cluster.kcenter_greedy` on the run's embeddings), starting from the worst-answered
row (ties by position), until the budget. Rows answered well enough are never taken.
"""

from __future__ import annotations

import numpy as np

from ..cluster import kcenter_greedy
from ..registry import Option
from .base import DEVICE, as_embeddings, column, selector

_CRIT = Option("criterion", "necessity", "the necessity criterion's column", type=str)


def _reads(o: dict) -> list:
    c = o["criterion"]
    return [c, f"{c}.seed", f"{c}.threshold"]


def necessity_order(
    answer: np.ndarray, seed: np.ndarray, thr: np.ndarray, emb: np.ndarray, k: int, device: str = "auto"
) -> np.ndarray:
    """Seed rows by rank, then k-center over the necessary rows (see the module doc)."""
    has_seed = np.flatnonzero(~np.isnan(seed))
    seeds = has_seed[np.lexsort((has_seed, seed[has_seed]))][:k]
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isnan(answer) & ~np.isnan(thr) & (answer < thr))
    room = k - len(seeds)
    if room <= 0 or not len(bad):
        return seeds.astype(np.int64)
    first = int(np.lexsort((bad, answer[bad]))[0])
    picked = kcenter_greedy(emb[bad], room, first=first, device=device)
    return np.concatenate([seeds, bad[picked]]).astype(np.int64)


@selector(
    "necessity",
    doc="MoDS: the k-center seed set, then a k-center set of the rows the seed-tuned model answers below the "
    "quality bar (needs the necessity criterion and embeddings)",
    options=[_CRIT, DEVICE],
    needs=("embeddings",),
    reads=_reads,
)
def necessity(scores, k, *, embeddings=None, groups=None, seed=0, criterion="necessity", device="auto"):
    emb = as_embeddings(embeddings, len(scores), "necessity")
    return necessity_order(
        column(scores, criterion),
        column(scores, f"{criterion}.seed"),
        column(scores, f"{criterion}.threshold"),
        emb,
        k,
        device,
    )
