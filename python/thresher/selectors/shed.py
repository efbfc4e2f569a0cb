"""SHED's samplers over clusters scored by their proxy's Shapley value (criterion ``shed``).

* ``qocs`` (quality-ordered cluster sampling): clusters by value descending (ties by cluster
  id); each cluster's rows in pool order; stop at the budget (the last cluster is cut), as the
  reference ``sample_QOCS.py`` does.
* ``qwcs`` (quality-weighted cluster sampling, seeded): ``k`` draws; each draw picks a cluster
  with probability proportional to exp(value / temperature) among the clusters that still
  have rows, then one of its remaining rows uniformly; rows are drawn without replacement
  (``sample_QWCS.py``: exp(score), retrying an empty cluster, which is the same distribution).

Both read the value column (``criterion``, default ``shed``) and ``<criterion>.cluster``;
rows with a NaN value or cluster are never taken.
"""

from __future__ import annotations

import numpy as np

from ..registry import Option
from .base import column, selector

_CRIT = Option("criterion", "shed", "cluster value column (the shed criterion)", type=str)


def _reads(o: dict) -> list:
    return [o["criterion"], f"{o['criterion']}.cluster"]


def clusters_of(scores, criterion: str) -> tuple[np.ndarray, dict]:
    """(value per cluster id, {cluster id: row positions in order}) over rows with finite value and cluster."""
    val, lab = column(scores, criterion), column(scores, f"{criterion}.cluster")
    ok = np.flatnonzero(~np.isnan(val) & ~np.isnan(lab))
    members: dict = {}
    value: dict = {}
    for p in ok:
        c = int(lab[p])
        members.setdefault(c, []).append(int(p))
        value.setdefault(c, float(val[p]))
    return value, members


def qocs_order(value: dict, members: dict, k: int) -> np.ndarray:
    out: list[int] = []
    for c in sorted(members, key=lambda c: (-value[c], c)):
        out.extend(members[c][: k - len(out)])
        if len(out) >= k:
            break
    return np.asarray(out, dtype=np.int64)


def qwcs_order(value: dict, members: dict, k: int, temperature: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = sorted(members)
    left = {c: list(members[c]) for c in ids}
    logits = np.asarray([value[c] / temperature for c in ids], dtype=np.float64)
    out: list[int] = []
    while len(out) < k:
        live = [j for j, c in enumerate(ids) if left[ids[j]]]
        if not live:
            break
        z = logits[live] - logits[live].max()
        p = np.exp(z) / np.exp(z).sum()
        c = ids[live[int(rng.choice(len(live), p=p))]]
        out.append(left[c].pop(int(rng.integers(len(left[c])))))
    return np.asarray(out, dtype=np.int64)


@selector(
    "qocs",
    doc="SHED quality-ordered cluster sampling: whole clusters by descending proxy Shapley value until the budget",
    options=[_CRIT],
    reads=_reads,
)
def qocs(scores, k, *, embeddings=None, groups=None, seed=0, criterion="shed"):
    value, members = clusters_of(scores, criterion)
    return qocs_order(value, members, k)


@selector(
    "qwcs",
    doc="SHED quality-weighted cluster sampling: draw clusters with probability ~ exp(value / temperature), "
    "a uniform remaining row of each (seeded, without replacement)",
    options=[
        _CRIT,
        Option("temperature", 1.0, "softmax temperature of the cluster weights", min=0, min_exclusive=True),
    ],
    reads=_reads,
)
def qwcs(scores, k, *, embeddings=None, groups=None, seed=0, criterion="shed", temperature=1.0):
    value, members = clusters_of(scores, criterion)
    return qwcs_order(value, members, k, float(temperature), int(seed))
