"""Diversity-aware selectors: repr_filter (DEITA), kcenter (MoDS), facility_location
(Superfiltering.D), car (CaR), cluster_balanced and group_topk.

Each registered selector follows the agreed signature
``fn(scores: DataFrame, k: int, *, embeddings=None, groups=None, seed=0, **options)
-> np.ndarray[int64]`` (row positions into ``scores`` in selection order, at most
``k``). Rows whose score is NaN are never selected. ``k`` larger than the number
of rows raises ``ValueError`` (no silent truncation); a selector may return fewer
than ``k`` rows when its rule says so (repr_filter's tau).

The array-level cores (``repr_filter_order``, ``kcenter_greedy``,
``facility_location_greedy``, ``facility_location_dense``, ``kmeans``) are public
for callers that hold plain arrays.
"""
from __future__ import annotations

import heapq
import math
from typing import Any, Optional

import numpy as np
import torch

from ..registry import SELECTORS, Option
from ..cluster import kcenter_greedy, kmeans, repr_filter_order, torch_device
from .basic import column, criterion_direction, default_criterion

# ------------------------------------------------------------------ helpers
_CRIT = Option("criterion", None, "score column to rank by (default: the only criterion column)")
_DIR = Option("direction", None, "max or min (default: the criterion's registered direction)",
              (None, "max", "min"))


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected a non-negative integer, got {k!r}")
    if k > n:
        raise ValueError(f"k: budget {k} is larger than the pool ({n} rows)")
    return int(k)


def _embeddings(embeddings: Any, n: int, who: str, *, normalize: bool = True) -> np.ndarray:
    if embeddings is None:
        raise ValueError(f"embeddings: selector {who!r} needs embeddings (one row per score row)")
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    e = np.asarray(embeddings)
    if e.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-d [rows, dim] array, got shape {e.shape}")
    if e.shape[0] != n:
        raise ValueError(f"embeddings: {e.shape[0]} rows for {n} score rows (mismatched ids and embeddings?)")
    if not np.issubdtype(e.dtype, np.floating):
        raise ValueError(f"embeddings: expected floating point values, got dtype {e.dtype}")
    e = np.ascontiguousarray(e, dtype=np.float32)
    bad = ~np.isfinite(e).all(1)
    if bad.any():
        raise ValueError(f"embeddings: {int(bad.sum())} row(s) contain NaN or inf (first: row {int(np.argmax(bad))})")
    if normalize:
        nrm = np.linalg.norm(e, axis=1, keepdims=True)
        if (nrm == 0).any():
            raise ValueError(f"embeddings: row {int(np.argmax(nrm[:, 0] == 0))} is all zeros (no direction)")
        e = e / nrm
    return e


def _scores(scores: Any, criterion: Optional[str], direction: Optional[str],
            required: bool = True) -> tuple[Optional[np.ndarray], bool]:
    """(values, maximize) of the ranking column; (None, True) when optional and absent."""
    if criterion is None:
        try:
            criterion = default_criterion(scores)
        except ValueError:
            if required:
                raise
            return None, True
    v = column(scores, criterion)
    d = direction or criterion_direction(criterion)
    if d not in ("max", "min"):
        raise ValueError(f"direction: expected 'max' or 'min', got {d!r}")
    return v, d == "max"


def _order(v: np.ndarray, maximize: bool) -> np.ndarray:
    """Positions of non-NaN values best first, ties by lower position."""
    fin = np.flatnonzero(~np.isnan(v))
    key = -v[fin] if maximize else v[fin]
    return fin[np.lexsort((fin, key))]




# ------------------------------------------------------------ repr_filter


@SELECTORS.register(
    "repr_filter",
    doc="DEITA repr filter: walk rows by descending score, keep a row if its max cosine similarity to "
        "the kept rows is <= tau, stop at k (exact sequential semantics, computed in blocks)",
    options=[_CRIT, _DIR, Option("tau", 0.9, "cosine similarity threshold in [-1, 1]"),
             Option("block", None, "candidates per block (default 1024 on CPU, 4096 on GPU)"),
             Option("device", "auto", "auto, cpu or cuda")],
    needs=("embeddings",))
def repr_filter(scores, k, *, embeddings=None, groups=None, seed=0, criterion=None, direction=None,
                tau=0.9, block=None, device="auto") -> np.ndarray:
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.floating)) or not -1.0 <= float(tau) <= 1.0:
        raise ValueError(f"tau: expected a cosine similarity in [-1, 1], got {tau!r}")
    n = len(scores)
    k = _check_k(k, n)
    emb = _embeddings(embeddings, n, "repr_filter")
    v, maximize = _scores(scores, criterion, direction)
    return repr_filter_order(emb, _order(v, maximize), k, float(tau), block=block, device=device)


# ---------------------------------------------------------------- kcenter


@SELECTORS.register(
    "kcenter",
    doc="greedy k-center (MoDS seed set): start from the best-scored row (or a random one), then "
        "repeatedly add the row farthest from the chosen set",
    options=[_CRIT, _DIR, Option("start", "score", "first center: the best-scored row or a random one",
                                 ("score", "random")),
             Option("normalize", True, "L2-normalise embeddings first (cosine geometry)"),
             Option("device", "auto", "auto, cpu or cuda")],
    needs=("embeddings",))
def kcenter(scores, k, *, embeddings=None, groups=None, seed=0, criterion=None, direction=None,
            start="score", normalize=True, device="auto") -> np.ndarray:
    n = len(scores)
    k = _check_k(k, n)
    emb = _embeddings(embeddings, n, "kcenter", normalize=normalize)
    v, maximize = _scores(scores, criterion, direction, required=False)
    pool = _order(v, maximize) if v is not None else np.arange(n)
    if k == 0 or len(pool) == 0:
        return np.zeros(0, np.int64)
    if start == "score" and v is not None:
        first = int(pool[0])
    else:
        first = int(np.random.default_rng(seed).choice(pool))
    return kcenter_greedy(emb, k, first=first, pool=None if v is None else pool, device=device)


# ------------------------------------------------------- facility location
def similarity_kernel(values: np.ndarray, metric: str, dim: int) -> np.ndarray:
    """kNN values -> nonnegative similarities. ``cosine``: max(ip, 0) of normalised rows;
    ``euclidean``: exp(-||a - b|| / dim) (submodlib's dense kernel) from squared distances."""
    if metric == "cosine":
        return np.maximum(values, 0.0)
    if metric == "euclidean":
        return np.exp(-np.sqrt(np.maximum(values, 0.0)) / dim)
    raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")


def dense_similarity(x: np.ndarray, metric: str) -> np.ndarray:
    """[N, N] similarity of the facility-location objective (reference; O(N^2) memory)."""
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    if metric == "cosine":
        return np.maximum((xt @ xt.T).numpy(), 0.0)
    sq = (xt * xt).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * xt @ xt.T).clamp_min(0).numpy()
    return np.exp(-np.sqrt(d2) / x.shape[1])


def facility_location_objective(x: np.ndarray, selected: np.ndarray, metric: str = "cosine",
                                chunk: int = 4096) -> float:
    """f(S) = sum_i max_{j in S} sim(i, j) over all rows i (dense, computed in row chunks)."""
    sel = np.asarray(selected, dtype=np.int64)
    if len(sel) == 0:
        return 0.0
    xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
    s = xt[torch.from_numpy(sel)]
    tot = 0.0
    for a in range(0, xt.shape[0], chunk):
        xa = xt[a:a + chunk]
        if metric == "cosine":
            sim = (xa @ s.T).clamp_min(0)
        else:
            d2 = ((xa * xa).sum(1)[:, None] + (s * s).sum(1)[None, :] - 2 * xa @ s.T).clamp_min(0)
            sim = torch.exp(-d2.sqrt() / x.shape[1])
        tot += float(sim.max(1).values.sum())
    return tot


def facility_location_greedy(embeddings: np.ndarray, k: int, *, n_neighbors: int = 64,
                             metric: str = "cosine", pool: Optional[np.ndarray] = None,
                             index_kind: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy facility location on a kNN graph: f(S) = sum_i max_{j in S, j in kNN(i) + i} sim(i, j).

    The graph holds each row's ``n_neighbors`` nearest rows plus itself (sim 1 for
    cosine, 1 for euclidean), so memory is O(N n_neighbors) instead of N^2.
    Marginal gains are kept in a max-heap and re-evaluated lazily (valid because
    f is submodular); ties go to the lower position. With n_neighbors >= N - 1 it
    is exactly the dense greedy. Returns (positions in pick order, gains).
    """
    from ..index import knn_graph

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if pool is not None:
        pool = np.asarray(pool, dtype=np.int64)
        x = x[pool]
    n = x.shape[0]
    k = min(k, n)
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    kk = min(int(n_neighbors), n - 1)
    if kk > 0:
        vals, nb = knn_graph(x, kk, metric="ip" if metric == "cosine" else "l2", kind=index_kind)
        nb = np.asarray(nb, dtype=np.int64)
        sims = similarity_kernel(vals.astype(np.float64), metric, x.shape[1])
        valid = nb >= 0
    else:
        nb = np.zeros((n, 0), np.int64)
        sims = np.zeros((n, 0))
        valid = np.zeros((n, 0), bool)
    rows = np.concatenate([np.repeat(np.arange(n), kk)[valid.ravel()], np.arange(n)])
    cols = np.concatenate([nb.ravel()[valid.ravel()], np.arange(n)])
    sv = np.concatenate([sims.ravel()[valid.ravel()], np.ones(n)])
    # reverse adjacency: candidate j -> rows i it can serve, with sim(i, j)
    o = np.argsort(cols, kind="stable")
    rr, ss = rows[o], sv[o]
    starts = np.searchsorted(cols[o], np.arange(n + 1))
    cur = np.zeros(n)
    gain0 = np.add.reduceat(ss, starts[:-1]) if len(ss) else np.zeros(n)
    heap = [(-float(g), j) for j, g in enumerate(gain0)]
    heapq.heapify(heap)
    picked, gains = [], []
    fresh = np.zeros(n, dtype=np.int64) - 1  # iteration at which the heap entry was computed
    it = 0
    while heap and len(picked) < k:
        g, j = heapq.heappop(heap)
        if fresh[j] == it:
            a, b = starts[j], starts[j + 1]
            ii = rr[a:b]
            cur[ii] = np.maximum(cur[ii], ss[a:b])
            picked.append(j)
            gains.append(-g)
            it += 1
            continue
        a, b = starts[j], starts[j + 1]
        ng = float(np.maximum(ss[a:b] - cur[rr[a:b]], 0.0).sum())
        fresh[j] = it
        heapq.heappush(heap, (-ng, j))
    picked = np.asarray(picked, dtype=np.int64)
    if pool is not None:
        picked = pool[picked]
    return picked, np.asarray(gains)


def facility_location_dense(embeddings: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    """Plain greedy on the dense N x N similarity (reference / test oracle; O(N^2) memory)."""
    S = dense_similarity(embeddings, metric)
    n = S.shape[0]
    cur = np.zeros(n)
    out = []
    for _ in range(min(k, n)):
        g = np.maximum(S - cur[:, None], 0.0).sum(0)
        g[out] = -1.0
        j = int(np.argmax(g))
        out.append(j)
        cur = np.maximum(cur, S[:, j])
    return np.asarray(out, dtype=np.int64)


@SELECTORS.register(
    "facility_location",
    doc="facility-location greedy (Superfiltering.D): maximise sum_i max_{j in S} sim(i, j), lazy greedy "
        "on a kNN graph (O(N n_neighbors) memory; scales past 1e5 rows)",
    options=[Option("n_neighbors", 64, "neighbours per row in the similarity graph"),
             Option("metric", "cosine", "cosine (max(cos, 0)) or euclidean (exp(-dist/dim), submodlib's kernel)",
                    ("cosine", "euclidean")),
             Option("criterion", None, "optional: restrict the pool to rows with a finite score in this column"),
             Option("index_kind", "auto", "kNN index kind (see thresher.index)")],
    needs=("embeddings",))
def facility_location(scores, k, *, embeddings=None, groups=None, seed=0, n_neighbors=64, metric="cosine",
                      criterion=None, index_kind="auto") -> np.ndarray:
    n = len(scores)
    k = _check_k(k, n)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors: expected an integer >= 1, got {n_neighbors!r}")
    emb = _embeddings(embeddings, n, "facility_location", normalize=(metric == "cosine"))
    pool = None
    if criterion is not None:
        pool = np.flatnonzero(~np.isnan(column(scores, criterion)))
    sel, _ = facility_location_greedy(emb, k, n_neighbors=n_neighbors, metric=metric, pool=pool,
                                      index_kind=index_kind)
    return sel


# ---------------------------------------------------------------- k-means


def _round_robin(order_within: list[np.ndarray], k: int) -> np.ndarray:
    """Interleave per-group orders (rank 0 of every group, then rank 1, ...); groups in given order."""
    out = []
    depth = 0
    while len(out) < k:
        added = False
        for o in order_within:
            if depth < len(o):
                out.append(int(o[depth]))
                added = True
                if len(out) >= k:
                    break
        if not added:
            break
        depth += 1
    return np.asarray(out, dtype=np.int64)


def _grouped_orders(labels: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
    """Per label, the positions of ``order`` in that label, best first; groups ordered by their best row."""
    lab = labels[order]
    uniq, first = np.unique(lab, return_index=True)
    out = []
    for g in uniq[np.argsort(first, kind="stable")]:
        out.append(order[lab == g])
    return out


@SELECTORS.register(
    "car",
    doc="CaR: PCA to 95% variance, k-means with floor(sqrt(N/2)) clusters, keep the top n1 rows "
        "globally plus the top n2 of every cluster (union, no duplicates)",
    options=[_CRIT, _DIR, Option("n1", None, "rows taken globally by score (default: as many as needed for the union to reach k)"),
             Option("n2", 1, "rows taken from every cluster"),
             Option("n_clusters", None, "default floor(sqrt(N/2))"),
             Option("variance", 0.95, "PCA variance fraction kept before clustering")],
    needs=("embeddings",))
def car(scores, k, *, embeddings=None, groups=None, seed=0, criterion=None, direction=None, n1=None, n2=1,
        n_clusters=None, variance=0.95) -> np.ndarray:
    from ..embed.transform import EmbeddingTransform

    n = len(scores)
    k = _check_k(k, n)
    emb = _embeddings(embeddings, n, "car", normalize=False)
    v, maximize = _scores(scores, criterion, direction)
    order = _order(v, maximize)
    if k == 0 or len(order) == 0:
        return np.zeros(0, np.int64)
    c = int(n_clusters or max(1, math.floor(math.sqrt(len(order) / 2))))
    z = EmbeddingTransform(center=True, pca=float(variance)).fit_apply(emb[order])
    _, lab_pool = kmeans(z, min(c, len(order)), seed=seed)
    labels = np.full(n, -1, np.int64)
    labels[order] = lab_pool
    n2 = int(n2)
    per_cluster = [int(i) for grp in _grouped_orders(labels, order) for i in grp[:n2]]
    if n1 is None:
        # as many global top rows as it takes for the union to reach k rows
        pc = set(per_cluster)
        extra, n1 = 0, 0
        while n1 < len(order) and len(pc) + extra < k:
            extra += int(order[n1]) not in pc
            n1 += 1
    picked = [int(i) for i in order[: int(n1)]]
    seen = set(picked)
    for i in per_cluster:
        if i not in seen:
            seen.add(i)
            picked.append(i)
    return np.asarray(picked[:k], dtype=np.int64)


@SELECTORS.register(
    "cluster_balanced",
    doc="k-means clusters of the embeddings, then the best rows of every cluster in turn "
        "(round robin by rank within cluster)",
    options=[_CRIT, _DIR, Option("n_clusters", None, "default floor(sqrt(N/2))"),
             Option("spherical", True, "spherical k-means (cosine)")],
    needs=("embeddings",))
def cluster_balanced(scores, k, *, embeddings=None, groups=None, seed=0, criterion=None, direction=None,
                     n_clusters=None, spherical=True) -> np.ndarray:
    n = len(scores)
    k = _check_k(k, n)
    emb = _embeddings(embeddings, n, "cluster_balanced", normalize=spherical)
    v, maximize = _scores(scores, criterion, direction)
    order = _order(v, maximize)
    if k == 0 or len(order) == 0:
        return np.zeros(0, np.int64)
    c = int(n_clusters or max(1, math.floor(math.sqrt(len(order) / 2))))
    _, lab = kmeans(emb[order], min(c, len(order)), seed=seed, spherical=spherical)
    labels = np.full(n, -1, np.int64)
    labels[order] = lab
    return _round_robin(_grouped_orders(labels, order), k)


@SELECTORS.register(
    "group_topk",
    doc="top-k within every group (task, source, ...): equal quotas by round robin, or quotas "
        "proportional to group size",
    options=[_CRIT, _DIR, Option("group_column", None, "column of scores holding the group (default: groups=)"),
             Option("quota", "equal", "equal (round robin) or proportional (largest remainder)",
                    ("equal", "proportional"))],
    needs=())
def group_topk(scores, k, *, embeddings=None, groups=None, seed=0, criterion=None, direction=None,
               group_column=None, quota="equal") -> np.ndarray:
    n = len(scores)
    k = _check_k(k, n)
    if group_column is not None:
        if group_column not in scores.columns:
            raise ValueError(f"group_column: no column {group_column!r} in the scores")
        g = scores[group_column].to_numpy()
    elif groups is not None:
        g = np.asarray(groups)
        if g.shape[0] != n:
            raise ValueError(f"groups: {g.shape[0]} labels for {n} score rows")
    else:
        raise ValueError("groups: group_topk needs groups= or group_column=")
    v, maximize = _scores(scores, criterion, direction)
    order = _order(v, maximize)
    if k == 0 or len(order) == 0:
        return np.zeros(0, np.int64)
    codes = np.unique(g.astype(str), return_inverse=True)[1].astype(np.int64)
    per = _grouped_orders(codes, order)
    if quota == "equal":
        return _round_robin(per, k)
    sizes = np.array([len(p) for p in per], dtype=np.float64)
    kk = min(k, int(sizes.sum()))
    exact = sizes / sizes.sum() * kk
    q = np.floor(exact).astype(np.int64)
    rem = kk - int(q.sum())
    frac_order = np.lexsort((np.arange(len(per)), -np.round(exact - q, 9)))
    q[frac_order[:rem]] += 1
    q = np.minimum(q, sizes.astype(np.int64))
    chosen = np.concatenate([p[:qq] for p, qq in zip(per, q)]) if per else np.zeros(0, np.int64)
    # selection order: by score rank overall
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(len(order))
    return chosen[np.argsort(rank[chosen], kind="stable")].astype(np.int64)
