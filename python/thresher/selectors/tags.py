"""InsTag's complexity-first diverse sampling (``tag_coverage``).

Rows are walked by complexity (number of tags) descending, ties by position. A row is taken
only when its tags add at least one tag to the set covered so far in this round. When the
walk ends before the budget, a new round starts over the rows not taken yet with an empty
covered set (the paper's Algorithm 1 repeats its pass until the budget is reached). A round
that takes nothing ends the selection, so rows with no tags (and NaN rows) are never taken
and the result may be shorter than the budget.

The tags are read from the ``tags`` criterion's component column ``<criterion>.tags`` (a JSON
list of strings per row; Python lists are accepted too).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..registry import Option
from .base import column, selector

_OPTS = [
    Option("criterion", "tags", "complexity column (the tags criterion's main column)", type=str),
    Option("tags_column", None, "column of per-row tag lists (default <criterion>.tags)", type=str),
]


def _reads(o: dict) -> list:
    return [o["criterion"], o["tags_column"] or f"{o['criterion']}.tags"]


def tag_sets(values: Any) -> list[frozenset]:
    """Per-row tag sets from JSON strings or lists (empty for missing values)."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else []
            except ValueError:
                raise ValueError(f"tags: row {i}: not a JSON list of tags: {v[:60]!r}") from None
        if v is None or (isinstance(v, float) and np.isnan(v)):
            v = []
        if not isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
            raise ValueError(f"tags: row {i}: expected a list of tags, got {type(v).__name__}")
        out.append(frozenset(str(t) for t in v))
    return out


def coverage_order(complexity: np.ndarray, tags: list, k: int) -> np.ndarray:
    """The positions taken by complexity-first diverse sampling (see the module doc), in order."""
    finite = np.flatnonzero(~np.isnan(complexity))
    walk = finite[np.lexsort((finite, -complexity[finite]))].tolist()
    out: list[int] = []
    while len(out) < k and walk:
        covered: set = set()
        rest = []
        for p in walk:
            if len(out) < k and not tags[p] <= covered:
                out.append(p)
                covered |= tags[p]
            else:
                rest.append(p)
        if len(rest) == len(walk):
            break
        walk = rest
    return np.asarray(out, dtype=np.int64)


@selector(
    "tag_coverage",
    doc="InsTag complexity-first diverse sampling: by number of tags descending, take a row only if it adds "
    "a tag not yet covered; repeat rounds over the remaining rows until the budget",
    options=_OPTS,
    reads=_reads,
)
def tag_coverage(scores, k, *, embeddings=None, groups=None, seed=0, criterion="tags", tags_column=None):
    comp = column(scores, criterion)
    col = tags_column or f"{criterion}.tags"
    if col not in scores.columns:
        raise ValueError(f"tag_coverage: no column {col!r} in the scores; columns: {list(scores.columns)}")
    return coverage_order(comp, tag_sets(scores[col].tolist()), k)
