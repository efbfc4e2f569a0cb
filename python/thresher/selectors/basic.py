"""Basic selectors: topk, threshold (quantile / absolute / knee), pareto,
weighted / rrf / aggregate, random and cascade.

Every selector follows the signature and budget policy of :mod:`thresher.selectors.base`
(``fn(scores, k, *, embeddings=None, groups=None, seed=0, **options) -> np.ndarray[int64]``,
options validated, ``k`` clamped to the rows given with a notice). Rows whose score is NaN
are never selected (a criterion marks unscorable samples with NaN and a reason).

Objectives are written ``"name:max"`` / ``"name:min"`` (or ``"name"``, which takes
the direction the criterion registered, else max). Hot paths go through
:mod:`thresher.ops` (``topk``, ``pareto_ranks``, ``crowding_distance``,
``normalize``, ``aggregate``).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from .. import ops
from ..cluster import repr_filter_order
from ..errors import OptionError
from ..registry import SELECTORS, Option
from .base import (
    CRITERION,
    DIRECTION,
    check_k,
    column,
    columns_read,
    criterion_direction,
    default_criterion,
    order_by,
    parse_objectives,
    reads_objectives,
    score_values,
    selector,
    token_budget_refusal,
)

__all__ = [
    "aggregate",
    "aggregate_scores",
    "cascade",
    "column",
    "criterion_direction",
    "default_criterion",
    "diverse_greedy",
    "knee_index",
    "objective_matrix",
    "ops_topk",
    "order_by",
    "pareto",
    "pareto_order",
    "parse_objectives",
    "random",
    "rrf",
    "threshold",
    "threshold_mask",
    "topk",
    "weighted",
]


def _numpy(t: Any, dtype: Any) -> np.ndarray:
    return np.asarray(t.cpu().numpy() if hasattr(t, "cpu") else t, dtype=dtype)


def ops_topk(values: np.ndarray, k: int, maximize: bool) -> np.ndarray:
    """Top-k positions via thresher.ops.topk (NaN last, ties by lower index), NaN removed."""
    if k == 0 or values.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, idx = ops.topk(torch.from_numpy(np.array(values, dtype=np.float64)), k, largest=maximize)
    idx = _numpy(idx, np.int64)
    return idx[~np.isnan(values[idx])]


def diverse_greedy(
    order: np.ndarray, embeddings: Optional[np.ndarray], tau: Optional[float], k: int, block: int = 1024
) -> np.ndarray:
    """Walk ``order``; keep a row if its max cosine similarity to the kept rows is <= tau.

    Exact sequential semantics (DEITA's repr filter): :func:`thresher.cluster.repr_filter_order`
    (blocked, similarities within 1e-5 of tau re-checked in float64, so the result does not
    depend on ``block``). ``embeddings`` must be L2-normalised.
    """
    if tau is None:
        return order[:k]
    if embeddings is None:
        raise ValueError("diversity_tau: needs embeddings (the pipeline computes them when a recipe asks)")
    if not -1.0 <= float(tau) <= 1.0:
        raise ValueError(f"diversity_tau: expected a cosine similarity in [-1, 1], got {tau!r}")
    if k <= 0 or len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    emb = np.asarray(embeddings, dtype=np.float32)
    return np.asarray(
        repr_filter_order(emb, np.asarray(order, dtype=np.int64), int(k), float(tau), block=block),
        dtype=np.int64,
    )


KNEE_CHUNK = 1 << 16  # points of the curve held at once (about 2 MB of work arrays)


def knee_index(sorted_desc: Any, chunk: int = KNEE_CHUNK) -> int:
    """Kneedle on a descending curve: the number of points before the knee (>= 1).

    x = rank / (n - 1), y = min-max normalised score, chord y = 1 - x from the first
    to the last point; the knee is the point farthest from the chord (below it for a
    convex decreasing curve, above it for a concave one; the first of equally far points). The
    selection keeps the points up to and including the knee. ``sorted_desc`` may be a memory map
    (a streaming selection's sorted values on disk): it is read ``chunk`` points at a time, x as
    ``np.linspace(0, 1, n)`` computes it, so the result is the same as on the whole array.
    """
    n = len(sorted_desc)
    if n <= 2:
        return n
    lo, hi = float(sorted_desc[n - 1]), float(sorted_desc[0])
    if hi == lo:
        return n
    step, best, best_j = 1.0 / (n - 1), -1.0, 0
    for a in range(0, n, chunk):
        with np.errstate(invalid="ignore"):  # inf - inf: NaN (see below)
            y = (np.asarray(sorted_desc[a : a + chunk], dtype=np.float64) - lo) / (hi - lo)
        x = np.arange(a, a + len(y), dtype=np.float64) * step
        if a + len(y) == n:
            x[-1] = 1.0
        d = np.abs(y - (1.0 - x))  # distance (up to a constant) from the chord
        j = int(np.argmax(d))
        if np.isnan(d[j]):  # argmax stops at the first NaN (an infinite score): as on the whole array
            return a + j + 1
        if d[j] > best:
            best, best_j = float(d[j]), a + j
    return best_j + 1


# --------------------------------------------------------------- selectors
_TAU = Option(
    "diversity_tau",
    None,
    "optional diversity constraint: skip a row whose max cosine similarity "
    "to the already selected rows exceeds tau (needs embeddings)",
    type=float,
    min=-1.0,
    max=1.0,
)


@selector(
    "topk",
    doc="the k best rows by one criterion (ties by lower position, NaN never)",
    options=[CRITERION, DIRECTION, _TAU],
)
def topk(
    scores, k, *, embeddings=None, groups=None, seed=0, criterion=None, direction=None, diversity_tau=None
) -> np.ndarray:
    v, maximize = score_values(scores, criterion, direction)
    if diversity_tau is None:
        return ops_topk(v, k, maximize)
    return diverse_greedy(order_by(v, maximize), embeddings, diversity_tau, k)


def _threshold_value(v: np.ndarray, finite: np.ndarray, maximize: bool, mode: str, value: Any) -> float:
    if mode == "absolute":
        if value is None:
            raise ValueError("value: threshold mode 'absolute' needs value=<score>")
        return float(value)
    s = np.sort(v[finite])[::-1] if maximize else np.sort(v[finite])
    if mode == "quantile":
        q = 0.5 if value is None else float(value)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"value: quantile must be in [0, 1], got {value!r}")
        # keep the best ceil((1 - q) * n) rows (ties at the threshold included)
        m = int(np.ceil((1.0 - q) * len(s) - 1e-9))
        if m <= 0:
            return float("inf") if maximize else float("-inf")
        return float(s[m - 1])
    if mode == "knee":
        return float(s[knee_index(s if maximize else -s) - 1])
    raise ValueError(f"mode: expected quantile, absolute or knee, got {mode!r}")


def threshold_mask(
    v: np.ndarray, maximize: bool, mode: str, value: Any, strict: bool = False
) -> tuple[np.ndarray, float]:
    """Boolean mask of rows passing the threshold (``strict``: beyond it, not at it), and the threshold."""
    finite = ~np.isnan(v)
    if not finite.any():
        return finite, float("nan")
    t = _threshold_value(v, finite, maximize, mode, value)
    with np.errstate(invalid="ignore"):
        if strict:
            mask = (v > t) if maximize else (v < t)
        else:
            mask = (v >= t) if maximize else (v <= t)
    return mask & finite, t


def _threshold_check(o: dict) -> None:
    """``value`` as ``mode`` needs it: a score (absolute), a fraction in [0, 1] or none (quantile), none (knee)."""
    mode, value = o["mode"], o.get("value")
    if mode == "absolute" and value is None:
        raise OptionError("value: threshold mode 'absolute' needs value=<score>")
    if mode == "quantile" and value is not None and not 0.0 <= float(value) <= 1.0:
        raise OptionError(f"value: quantile must be in [0, 1], got {value!r}")
    if mode == "knee" and value is not None:
        raise OptionError(f"value: threshold mode 'knee' takes no value (the knee of the sorted scores sets the "
                          f"threshold), got {value!r}: drop it, or use mode quantile or absolute")  # fmt: skip


@selector(
    "threshold",
    doc="rows past a dynamic threshold (quantile, absolute, or the knee of the "
    "sorted score curve), best first, at most k",
    options=[
        CRITERION,
        DIRECTION,
        Option("mode", "quantile", "how the threshold is set", ("quantile", "absolute", "knee"), type=str),
        Option("value", None, "quantile q in [0,1] (keep the best 1-q) or the absolute score", type=float),
        Option("strict", False, "keep rows strictly beyond the threshold (> for max, < for min), not at it"),
        _TAU,
    ],
    sizes_itself=True,
    check=_threshold_check,
)
def threshold(
    scores,
    k,
    *,
    embeddings=None,
    groups=None,
    seed=0,
    criterion=None,
    direction=None,
    mode="quantile",
    value=None,
    strict=False,
    diversity_tau=None,
) -> np.ndarray:
    v, maximize = score_values(scores, criterion, direction)
    mask, _ = threshold_mask(v, maximize, mode, value, strict)
    w = np.where(mask, v, np.nan)
    return diverse_greedy(order_by(w, maximize), embeddings, diversity_tau, k)


def objective_matrix(scores, objectives) -> tuple[np.ndarray, list[bool], list[str]]:
    objs = parse_objectives(objectives)
    mat = np.stack([column(scores, n) for n, _ in objs], axis=1) if len(scores) else np.zeros((0, len(objs)))
    return mat, [m for _, m in objs], [n for n, _ in objs]


def pareto_order(mat: np.ndarray, maximize: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, ranks, crowding) over rows with all objectives finite; order = rank asc, crowding desc, position."""
    ok = np.flatnonzero(np.isfinite(mat).all(axis=1))
    ranks = np.full(len(mat), -1, dtype=np.int64)
    crowd = np.full(len(mat), np.nan)
    if len(ok) == 0:
        return ok, ranks, crowd
    sub = torch.from_numpy(np.ascontiguousarray(mat[ok], dtype=np.float64))
    r = ops.pareto_ranks(sub, maximize=list(maximize))
    r_np = _numpy(r, np.int64)
    c_np = _numpy(ops.crowding_distance(sub, r if hasattr(r, "cpu") else torch.from_numpy(r_np)), np.float64)
    ranks[ok] = r_np
    crowd[ok] = c_np
    cc = np.where(np.isnan(c_np), -np.inf, c_np)
    order = ok[np.lexsort((ok, -cc, r_np))]
    return order, ranks, crowd


_OBJ = Option(
    "objectives",
    None,
    "list of 'name:max|min' score columns (or one 'a:max,b:min' string; in a run, default: every criterion of "
    "the run in its registered direction)",
    type=(list, str),
)
_WEIGHTS = Option("weights", None, "one weight per objective (default equal)", type=list)
_NORMALIZE = Option(
    "normalize",
    "rank",
    "per-objective normaliser before a weighted sum",
    ("rank", "minmax", "zscore", "quantile", "none"),
    type=str,
)


@selector(
    "pareto",
    doc="multi-objective: non-dominated fronts first (thresher.ops.pareto_ranks), "
    "within a front by crowding distance (spread along the front), then position",
    options=[_OBJ, _TAU],
    reads=reads_objectives,
)
def pareto(scores, k, *, embeddings=None, groups=None, seed=0, objectives=None, diversity_tau=None) -> np.ndarray:
    mat, maxi, _ = objective_matrix(scores, objectives)
    order, _, _ = pareto_order(mat, maxi)
    return diverse_greedy(order, embeddings, diversity_tau, k)


def _weights(weights: Any, m: int) -> Optional[list[float]]:
    if weights is None:
        return None
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise ValueError(f"weights: expected numbers, got {weights!r}") from None
    if len(w) != m:
        raise ValueError(f"weights: expected {m} weights (one per objective), got {len(w)}")
    return w


def _weights_check(o: dict) -> None:
    """``weights``: one finite, non-negative number per objective, not all 0 (checked when the plan is made)."""
    if o.get("weights") is None or o.get("objectives") is None:
        return
    try:
        w = _weights(o["weights"], len(parse_objectives(o["objectives"])))
    except ValueError as exc:
        if not str(exc).startswith("weights"):
            return  # the objectives' own error, reported where they are read
        raise OptionError(str(exc)) from None
    if w is not None and (not all(math.isfinite(x) and x >= 0 for x in w) or not any(w)):
        raise OptionError(f"weights: each must be finite and >= 0, and not all 0; got {list(o['weights'])}")


def aggregate_scores(
    mat: np.ndarray, maximize: list[bool], method: str, weights=None, normalize: str = "rank", view=None
) -> np.ndarray:
    """One combined score per row (higher is better); NaN where any objective is not finite.

    ``view``: for rows of a larger pool (a streaming selection's shard), ``view(g, what)`` gives the
    pool's :class:`~thresher.ops.ranking.PoolView` seen from ``g`` (these rows' finite objectives, each
    negated when minimised) for ``what`` (the normaliser, or the ``borda``/``rrf`` fold); default: the
    rows are the pool."""
    weights = _weights(weights, mat.shape[1])
    ok = np.isfinite(mat).all(axis=1)
    out = np.full(len(mat), np.nan)
    if not ok.any():
        return out
    t = torch.from_numpy(np.ascontiguousarray(mat[ok], dtype=np.float64))
    sign = torch.tensor([1.0 if m else -1.0 for m in maximize], dtype=t.dtype)
    maxi, pool = list(maximize), None
    if method in ("weighted_sum", "product") and normalize != "none":
        # orient so that higher is better before normalising, then aggregate as maximise
        g = t * sign
        t = ops.normalize(g, normalize, pool=None if view is None else view(g, normalize))
        maxi = [True] * t.shape[1]
    elif method in ("borda", "rrf") and view is not None:
        pool = view(t * sign, method)
    out[ok] = _numpy(ops.aggregate(t, method, weights=weights, maximize=maxi, pool=pool), np.float64)
    return out


def _agg_select(scores, k, embeddings, objectives, method, weights, normalize, diversity_tau):
    mat, maxi, _ = objective_matrix(scores, objectives)
    combined = aggregate_scores(mat, maxi, method, weights, normalize)
    return diverse_greedy(order_by(combined, True), embeddings, diversity_tau, k)


@selector(
    "weighted",
    doc="weighted sum of normalised objectives (thresher.ops.normalize + aggregate)",
    options=[_OBJ, _WEIGHTS, _NORMALIZE, _TAU],
    reads=reads_objectives,
    check=_weights_check,
)
def weighted(
    scores,
    k,
    *,
    embeddings=None,
    groups=None,
    seed=0,
    objectives=None,
    weights=None,
    normalize="rank",
    diversity_tau=None,
) -> np.ndarray:
    return _agg_select(scores, k, embeddings, objectives, "weighted_sum", weights, normalize, diversity_tau)


@selector(
    "rrf",
    doc="reciprocal rank fusion of the objectives' rankings (thresher.ops.aggregate)",
    options=[_OBJ, _WEIGHTS, _TAU],
    reads=reads_objectives,
    check=_weights_check,
)
def rrf(
    scores, k, *, embeddings=None, groups=None, seed=0, objectives=None, weights=None, diversity_tau=None
) -> np.ndarray:
    return _agg_select(scores, k, embeddings, objectives, "rrf", weights, "none", diversity_tau)


@selector(
    "aggregate",
    doc="any thresher.ops.aggregate method over the objectives",
    options=[
        _OBJ,
        Option("method", "weighted_sum", "aggregator", ("weighted_sum", "product", "borda", "rrf"), type=str),
        _WEIGHTS,
        _NORMALIZE,
        _TAU,
    ],
    reads=reads_objectives,
    check=_weights_check,
)
def aggregate(
    scores,
    k,
    *,
    embeddings=None,
    groups=None,
    seed=0,
    objectives=None,
    method="weighted_sum",
    weights=None,
    normalize="rank",
    diversity_tau=None,
) -> np.ndarray:
    return _agg_select(scores, k, embeddings, objectives, method, weights, normalize, diversity_tau)


@selector("random", doc="a uniform random subset (numpy PCG64 with the given seed)", reads=lambda o: [])
def random(scores, k, *, embeddings=None, groups=None, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(len(scores))[:k].astype(np.int64)


def cascade_stage(spec: Any, what: str) -> tuple[str, dict, Optional[float], Optional[int]]:
    """``(name, options, ratio, k)`` of a cascade stage (``what``: ``first`` or ``then``)."""
    if isinstance(spec, str):
        return spec, {}, None, None
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"{what}: expected {{name: SELECTOR, options: {{...}}, ratio: R | k: N}}, got {spec!r}")
    extra = set(spec) - {"name", "options", "ratio", "k"}
    if extra:
        raise ValueError(f"{what}: unknown key(s) {sorted(extra)}")
    return spec["name"], dict(spec.get("options") or {}), spec.get("ratio"), spec.get("k")


def _cascade_check(o: dict) -> None:
    """Known stages; the first's ``ratio`` in (0, 1] or ``k`` (not both); the second stage takes the run's
    budget, so no ``ratio`` or ``k`` of its own (it would be ignored)."""
    try:
        stages = {w: cascade_stage(o[w], w) for w in ("first", "then")}
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    for what, (name, _, _, _) in stages.items():
        if name not in SELECTORS:
            raise OptionError(f"{what}: unknown selector {name!r}; one of {sorted(SELECTORS.names())}")
    _, _, ratio, k1 = stages["first"]
    if ratio is not None and k1 is not None:
        raise OptionError(f"first: give ratio or k, not both (ratio {ratio!r}, k {k1!r})")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not 0.0 < float(ratio) <= 1.0):  # fmt: skip
        raise OptionError(f"first: ratio must be in (0, 1], got {ratio!r}")
    if k1 is not None and (isinstance(k1, bool) or not isinstance(k1, int) or k1 < 0):
        raise OptionError(f"first: k must be a non-negative integer, got {k1!r}")
    _, _, ratio2, k2 = stages["then"]
    if ratio2 is not None or k2 is not None:
        raise OptionError("then: the second stage selects the run's budget (--k, --ratio, --tokens); drop its "
                          f"{'ratio' if ratio2 is not None else 'k'}")  # fmt: skip


def first_stage_budget(ratio: Any, k1: Any, n: int, name: str) -> int:
    """The first stage's budget among ``n`` rows: ``ceil(ratio * n)``, or ``k1``, or all ``n``."""
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"first: ratio must be in (0, 1], got {ratio!r}")
        k1 = int(np.ceil(float(ratio) * n))
    return n if k1 is None else check_k(k1, n, f"cascade (first stage {name})")


def _reads_cascade(options: dict) -> list:
    out: list = []
    for what in ("first", "then"):
        if options.get(what) is not None:
            name, opts, _, _ = cascade_stage(options[what], what)
            out += columns_read(SELECTORS.get(name), opts)
    return out


_STAGE_TYPES = (dict, str)


def _then_refuses_tokens(then: Any) -> Optional[str]:
    """The second stage's reason to take no token budget (it orders the budget's rows), or None."""
    name, opts, _, _ = cascade_stage(then, "then")
    why = token_budget_refusal(SELECTORS.get(name), opts)
    return f"its second stage {name}: {why}" if why else None


@selector(
    "cascade",
    doc="two stages: a first selector keeps a ratio (or k) of the pool, a second "
    "selects the budget from those (Superfiltering.D: top 20% by IFD, then facility location; "
    "MoDS: quality threshold, then k-center)",
    options=[
        Option("first", None, "{name, options, ratio | k}: the first stage", type=_STAGE_TYPES, nullable=False),
        Option(
            "then", None, "{name, options}: the second stage, given the budget k", type=_STAGE_TYPES, nullable=False
        ),
    ],
    reads=_reads_cascade,
    no_tokens=lambda o: _then_refuses_tokens(o.get("then")),
    check=_cascade_check,
)
def cascade(scores, k, *, embeddings=None, groups=None, seed=0, first=None, then=None) -> np.ndarray:
    n = len(scores)
    n1, o1, r1, k1 = cascade_stage(first, "first")
    n2, o2, _, _ = cascade_stage(then, "then")
    k1 = first_stage_budget(r1, k1, n, n1)
    pos1 = np.asarray(
        SELECTORS.get(n1).obj(scores, k1, embeddings=embeddings, groups=groups, seed=seed, **o1), dtype=np.int64
    )
    sub = scores.iloc[pos1].reset_index(drop=True)
    pos2 = np.asarray(
        SELECTORS.get(n2).obj(
            sub,
            k,
            embeddings=None if embeddings is None else np.asarray(embeddings)[pos1],
            groups=None if groups is None else (groups if hasattr(groups, "codes") else np.asarray(groups))[pos1],
            seed=seed,
            **o2,
        ),
        dtype=np.int64,
    )
    return pos1[pos2]
