"""Normalisers and aggregators of score columns (plain PyTorch, any device).

``normalize(x, method)`` maps every column of ``x`` ([N] or [N, M]) onto a common
scale, ignoring NaN (which stays NaN):

* ``minmax``   ``(x - min) / (max - min)`` in [0, 1] over the finite values;
  ``+inf`` -> 1, ``-inf`` -> 0; a constant column gives 0.5.
* ``zscore``   ``(x - mean) / std`` over the finite values (population std,
  ddof = 0, from exact sums: :func:`~thresher.ops.exact.exact_mean_std`, the same
  whatever the order of the rows); ``+-inf`` stay ``+-inf``; a constant column gives 0.
* ``rank``     average rank of ties (1-based, ``r``) scaled to [0, 1] as
  ``(r - 1) / (n - 1)``, ``n`` the number of non-NaN values; ``+-inf`` are
  ordinary values; a constant column (or ``n == 1``) gives 0.5.
* ``quantile`` mid-rank empirical CDF ``(#{< x} + #{== x} / 2) / n`` in (0, 1);
  a constant column gives 0.5.

``aggregate(matrix, method, weights=None, maximize=True, k=60)`` folds the
columns of ``matrix[N, M]`` into one score per row, **higher is better**;
``maximize`` (one bool or one per column) says which columns are better high,
``weights`` (default all 1, non-negative, finite) weigh the columns:

* ``weighted_sum``  ``sum_j w_j * s_j * x_j`` with ``s_j = +1`` (maximised) or ``-1``.
* ``product``       ``prod_j x_j ** (s_j * w_j)`` (DEITA-style); values must be >= 0;
  a 0 in a minimised column gives ``inf`` (and ``0 * inf`` = NaN when a row has a 0 in
  both a maximised and a minimised column).
* ``borda``         ``sum_j w_j * points_j``, ``points`` = number of rows a row beats in
  column ``j`` plus half the rows it ties with (0 .. N-1); NaN counts as tied last.
* ``rrf``           reciprocal rank fusion ``sum_j w_j / (k + rank_j)``, ``rank_j``
  = 1 + number of rows strictly better in column ``j`` (tied rows share the best
  rank); a NaN entry contributes 0 (the row is absent from that list).

``weighted_sum`` and ``product`` propagate NaN. Every method is a function of
the values only (ties are shared, never broken by position), so the result does
not depend on the order of the rows. Results are float64 on the input's device.
These are O(N log N) sorts: no native kernel is needed.

Both take ``pool=``: a :class:`PoolView` of a larger pool seen from the rows given (its
statistics, and each entry's counts of smaller and equal values), so a streaming selection
computes a shard's rows of the whole pool's normalisation or fold (``pipeline/streaming_agg.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ._dispatch import Op, device_type
from .exact import exact_mean_std
from .objectives import MaximizeArg, as_objectives, maximize_flags

__all__ = ["normalize", "aggregate", "pool_view", "PoolView", "NORMALIZE_METHODS", "AGGREGATE_METHODS"]

NORMALIZE_METHODS = ("minmax", "zscore", "rank", "quantile")
AGGREGATE_METHODS = ("weighted_sum", "product", "borda", "rrf")

normalize_op = Op("normalize", doc="per-column minmax|zscore|rank|quantile scaling, NaN-aware")
aggregate_op = Op("aggregate", doc="fold [N,M] score columns: weighted_sum|product|borda|rrf")


def _tie_counts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For x [N, M]: (#{non-NaN < x}, #{non-NaN <= x}, #non-NaN per column), per entry.

    Counts are int64 [N, M] (the last [M]); entries where x is NaN get meaningless counts.
    """
    n = x.shape[0]
    nan = torch.isnan(x)
    nvalid = n - nan.sum(0)
    filled = torch.where(nan, torch.full_like(x, float("inf")), x)  # NaN sort last, as +inf
    srt = torch.sort(filled.T.contiguous(), dim=1).values  # [M, N]
    q = filled.T.contiguous()
    lt = torch.searchsorted(srt, q, right=False).T
    le = torch.searchsorted(srt, q, right=True).T
    # NaN became +inf: remove them from the counts of x == +inf
    le = le - torch.where(filled == float("inf"), (n - nvalid).expand_as(le), torch.zeros_like(le))
    return lt, le, nvalid


@dataclass
class PoolView:
    """What :func:`normalize` and :func:`aggregate` need of a whole pool's columns beyond a row's own
    values, seen from the rows of ``x`` [N, M] (the pool itself, or one shard of it: a streaming
    selection builds it from pool-wide statistics and sorted runs of the pool's values).

    ``rows``: the pool's rows; ``n`` [M]: non-NaN values per column in the pool; ``lo``/``hi`` [M]: the
    finite minimum and maximum;
    ``mean``/``std`` [M]: of the finite values (:func:`~thresher.ops.exact.exact_mean_std`, so the same
    whatever the order of the rows); ``lt``/``le`` [N, M]: for each entry of ``x``, the pool's non-NaN
    values ``<`` and ``<=`` it. A method reads only its own fields (:data:`VIEW_FIELDS`); the others may be None."""

    rows: int
    n: torch.Tensor
    lo: Optional[torch.Tensor] = None
    hi: Optional[torch.Tensor] = None
    mean: Optional[torch.Tensor] = None
    std: Optional[torch.Tensor] = None
    lt: Optional[torch.Tensor] = None
    le: Optional[torch.Tensor] = None

    def get(self, *names: str) -> list:
        """The fields ``names`` (tensors); a view built for another method lacks some: ValueError."""
        missing = [f for f in names if getattr(self, f) is None]
        if missing:
            raise ValueError(f"pool: the PoolView lacks {', '.join(missing)} (built for another method?)")
        return [getattr(self, f) for f in names]


VIEW_FIELDS = {"minmax": ("lo", "hi"), "zscore": ("mean", "std"), "rank": ("lt", "le"), "quantile": ("lt", "le"),
               "borda": ("lt", "le"), "rrf": ("lt", "le"), "weighted_sum": (), "product": ()}  # fmt: skip


def pool_view(x: torch.Tensor, method: str) -> PoolView:
    """The :class:`PoolView` of ``x`` [N, M] float64 as the whole pool, for ``method`` (a normaliser or
    an aggregator)."""
    fields = VIEW_FIELDS[method]
    nan = torch.isnan(x)
    view = PoolView(rows=int(x.shape[0]), n=x.shape[0] - nan.sum(0))
    fin = torch.isfinite(x)
    if "lo" in fields:
        view.lo = torch.where(fin, x, torch.full_like(x, float("inf"))).amin(0) if x.shape[0] else x.sum(0)
        view.hi = torch.where(fin, x, torch.full_like(x, -float("inf"))).amax(0) if x.shape[0] else x.sum(0)
    if "mean" in fields:
        xs = x.detach().cpu().numpy()
        stats = [exact_mean_std(xs[fin[:, j].cpu().numpy(), j]) for j in range(x.shape[1])]
        view.mean = torch.tensor([m for m, _ in stats], dtype=torch.float64, device=x.device).reshape(-1)
        view.std = torch.tensor([s for _, s in stats], dtype=torch.float64, device=x.device).reshape(-1)
    if "lt" in fields:
        view.lt, view.le, view.n = _tie_counts(x)
    return view


@normalize_op.register("reference", devices=("cpu", "cuda"), note="PyTorch, O(N log N) per column")
def _normalize_reference(x: torch.Tensor, method: str, pool: Optional[PoolView] = None) -> torch.Tensor:
    """x float64 [N, M] -> float64 [N, M]; ``pool``: the whole pool's view (default: ``x`` is the pool)."""
    view = pool_view(x, method) if pool is None else pool
    nan = torch.isnan(x)
    if method == "minmax":
        fin = torch.isfinite(x)
        lo, hi = view.get("lo", "hi")
        span = hi - lo
        out = (x - lo) / torch.where(span > 0, span, torch.ones_like(span))
        out = torch.where((span > 0) | ~fin, out, torch.full_like(x, 0.5))
        out = torch.where(x == float("inf"), torch.ones_like(x), out)
        out = torch.where(x == -float("inf"), torch.zeros_like(x), out)
    elif method == "zscore":
        mean, std = view.get("mean", "std")
        out = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))
        out = torch.where(torch.isfinite(x) & (std == 0), torch.zeros_like(x), out)
        out = torch.where(torch.isinf(x), x, out)
    else:
        lt, le = view.get("lt", "le")
        nv = view.n.to(x.dtype)
        if method == "rank":
            r = (lt + le + 1).to(x.dtype) / 2  # average 1-based rank of the tie group
            out = (r - 1) / torch.where(nv > 1, nv - 1, torch.ones_like(nv))
            const = (lt == 0) & (le == view.n)  # the whole column is one tie group
            out = torch.where(const, torch.full_like(x, 0.5), out)
        else:  # quantile
            out = (lt.to(x.dtype) + (le - lt).to(x.dtype) / 2) / nv.clamp(min=1)
    return torch.where(nan, x, out)


def normalize(x: Any, method: str = "minmax", *, pool: Optional[PoolView] = None,
              backend: Optional[str] = None) -> torch.Tensor:  # fmt: skip
    """Normalise every column of ``x`` ([N] or [N, M]) with ``method`` (module doc).

    ``pool``: when ``x`` holds some rows of a larger pool, the pool's :class:`PoolView` seen from
    them (the result is then those rows of the whole pool's normalisation); default: ``x`` is the pool.
    Returns float64 of the same shape and device; NaN stays NaN.
    """
    if not isinstance(method, str) or method not in NORMALIZE_METHODS:
        raise ValueError(f"method: expected one of {list(NORMALIZE_METHODS)}, got {method!r}")
    obj = as_objectives(x, "x", allow_1d=True)
    one_d = (x.dim() if isinstance(x, torch.Tensor) else np.asarray(x).ndim) == 1
    out = normalize_op.dispatch(device_type(obj), obj, method, pool, backend=backend)
    return out[:, 0] if one_d else out


def _weights(weights: Any, m: int, device: torch.device) -> torch.Tensor:
    if weights is None:
        return torch.ones(m, dtype=torch.float64, device=device)
    try:
        w = torch.as_tensor(
            np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
        )
    except Exception as exc:
        raise ValueError(f"weights: expected {m} non-negative numbers ({exc})") from None
    if w.dim() != 1 or w.shape[0] != m:
        raise ValueError(f"weights: expected {m} values (one per column), got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"weights: must be finite and >= 0, got {w.tolist()}")
    if m and float(w.sum()) == 0.0:
        raise ValueError("weights: must not all be 0")
    return w.to(device)


@aggregate_op.register("reference", devices=("cpu", "cuda"), note="PyTorch, O(N log N) per column")
def _aggregate_reference(
    x: torch.Tensor, method: str, w: torch.Tensor, s: torch.Tensor, k: float, pool: Optional[PoolView] = None
) -> torch.Tensor:
    """x float64 [N, M], weights w [M], signs s [M] (+1 maximise, -1 minimise) -> float64 [N];
    ``pool``: the view of the whole pool's oriented columns ``x * s`` (default: ``x`` is the pool)."""
    if method == "weighted_sum":
        return (x * (w * s)).sum(1)
    if method == "product":
        out = torch.pow(x, w * s).prod(1)
        return torch.where(torch.isnan(x).any(1), torch.full_like(out, float("nan")), out)
    g = x * s  # goodness: higher is better; NaN stays NaN
    nan = torch.isnan(g)
    view = pool_view(g, method) if pool is None else pool
    lt, le = view.get("lt", "le")
    nvalid = view.n
    if method == "borda":
        nn = (view.rows - nvalid).to(x.dtype)  # NaN rows: beaten by every valid row
        pts = lt.to(x.dtype) + nn + (le - lt - 1).to(x.dtype) / 2
        pts_nan = ((nn - 1) / 2).expand_as(pts)
        pts = torch.where(nan, pts_nan, pts)
        return (pts * w).sum(1)
    # rrf
    better = (nvalid - le).to(x.dtype)  # valid rows strictly better
    contrib = w / (k + 1 + better)
    return torch.where(nan, torch.zeros_like(contrib), contrib).sum(1)


def aggregate(
    matrix: Any,
    method: str = "weighted_sum",
    weights: Any = None,
    maximize: MaximizeArg = True,
    *,
    k: float = 60.0,
    pool: Optional[PoolView] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Fold the columns of ``matrix[N, M]`` into one score per row (higher is better).

    Args:
        matrix: ``[N, M]`` tensor/array of scores.
        method: ``weighted_sum``, ``product``, ``borda`` or ``rrf`` (module doc).
        weights: ``M`` non-negative weights (default all 1).
        maximize: bool or one bool per column: is a high value good?
        k: the RRF constant (default 60), >= 0.
        pool: when ``matrix`` holds some rows of a larger pool, the :class:`PoolView` of the pool's
            oriented columns (``+-x`` as ``maximize`` says) seen from them, for ``borda`` and ``rrf``
            (whose points count the whole pool's rows); default: ``matrix`` is the pool.

    Returns:
        float64 ``[N]`` on the device of ``matrix``.
    """
    if not isinstance(method, str) or method not in AGGREGATE_METHODS:
        raise ValueError(f"method: expected one of {list(AGGREGATE_METHODS)}, got {method!r}")
    x = as_objectives(matrix, "matrix")
    n, m = x.shape
    flags = maximize_flags(maximize, m)
    w = _weights(weights, m, x.device)
    if (
        isinstance(k, bool)
        or not isinstance(k, (int, float, np.integer, np.floating))
        or not math.isfinite(float(k))
        or float(k) < 0
    ):
        raise ValueError(f"k: expected a finite number >= 0, got {k!r}")
    if method == "product" and n and bool((x < 0).any()):
        raise ValueError("matrix: method='product' needs values >= 0 (normalise first, e.g. minmax)")
    s = torch.tensor([1.0 if f else -1.0 for f in flags], dtype=torch.float64, device=x.device)
    return aggregate_op.dispatch(device_type(x), x, method, w, s, float(k), pool, backend=backend)
