"""Exact k-nearest-neighbour search split into independent tasks: ``sharded_knn``.

The base is cut into shards of ``shard_rows`` rows and the queries into blocks of
``query_rows`` rows; every (query block, base shard) pair is one task that runs
:func:`thresher.ops.knn` on plain numpy arrays and returns its top-k with GLOBAL
base indices (:func:`knn_shard_task`, module level and picklable). The per-shard
lists of a query block are then merged exactly (:func:`merge_topk`). ``mapper`` is
any map-like callable (``mapper(fn, iterable)``): the builtin ``map`` runs the
tasks here; an engine (Ray) passes one that runs them on its workers.

Exactness. ``ops.knn`` computes the score of a (query, base row) pair the same way
wherever the row sits (its tiles are computed lane by lane), so every candidate
carries the same value in a shard as in one unsharded call, and the merge applies
the same order (nearest first, ties to the LOWER global index). Hence:

* ``metric="ip"``: values and indices are identical to one ``ops.knn`` call for any
  shard and block sizes, ties (duplicate rows) and ``exclude_self`` included.
* ``metric="l2"``: values are identical. ``ops.knn`` ranks by the internal score
  ``2 q.b - |b|^2`` and returns ``|q|^2 -`` that score; two DIFFERENT internal
  scores can round to the same squared distance (far rows, or near-duplicates
  clamped at 0), and the merge only sees the distances, so among such equal
  returned values the order may differ from an unsharded call (lower index here).
  Exact duplicates of a base row always tie exactly and keep the unsharded order.

A query block whose candidates are fewer than ``k`` raises ``ValueError`` as
``ops.knn`` does (``k`` larger than the base, self excluded).

Resume. ``blocks`` (optional) keeps merged query blocks: ``blocks.get(start)`` returns the
``(values, indices)`` of the block of queries that starts at ``start``, or None; ``blocks.put(start,
values, indices)`` is called as each block is merged. The tasks of a block it already has are not
run, so a search stopped part-way resumes at the blocks it had finished (a checkpoint store:
:mod:`thresher.criteria.search_checkpoint`). Results are merged block by block in query order as the
mapper yields them, so a lazy mapper lets ``put`` see each block as soon as it is done.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from .knn import check_finite_rows, knn

METRICS = ("ip", "l2")

DEFAULT_SHARD_ROWS = 1 << 18  # base rows per task
DEFAULT_QUERY_ROWS = 1 << 14  # query rows per task


def merge_topk(
    values_list: Sequence[np.ndarray], index_list: Sequence[np.ndarray], k: int, largest: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists ``[Q, k_i]`` (global indices) into ``(values [Q, k] float32, indices [Q, k])``.

    Order: ``largest`` values first (smallest for ``largest=False``), equal values by the
    lower index; missing entries (index -1) and NaN values last. Rows with fewer than ``k``
    candidates in all lists are padded with NaN / -1.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected an integer >= 0, got {k!r}")
    if len(values_list) != len(index_list):
        raise ValueError(f"index_list: {len(index_list)} index arrays for {len(values_list)} value arrays")
    vals = [np.asarray(v, dtype=np.float32) for v in values_list]
    idx = [np.asarray(i, dtype=np.int64) for i in index_list]
    nq = vals[0].shape[0] if vals else 0
    for n, (v, i) in enumerate(zip(vals, idx)):
        if v.ndim != 2 or v.shape != i.shape or v.shape[0] != nq:
            raise ValueError(f"values_list[{n}]: shape {v.shape} does not match its indices {i.shape} or {nq} rows")
    out_v = np.full((nq, k), np.nan, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    if not vals or nq == 0 or k == 0:
        return out_v, out_i
    v = np.concatenate(vals, axis=1)
    i = np.concatenate(idx, axis=1)
    missing = (i < 0) | np.isnan(v)
    key = np.where(missing, 0.0, -v if largest else v)  # -0.0 == +0.0: the index decides
    # lexsort: last key is primary -> (missing last, value, lower index)
    order = np.lexsort((i, key, missing), axis=1)[:, :k]
    m = order.shape[1]
    out_v[:, :m] = np.take_along_axis(v, order, 1)
    out_i[:, :m] = np.take_along_axis(i, order, 1)
    gone = np.take_along_axis(missing, order, 1)
    out_v[:, :m][gone] = np.nan
    out_i[:, :m][gone] = -1
    return out_v, out_i


def knn_shard_task(task: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One task: ``(queries [q, d], base shard [s, d], shard start, global index of the first
    query, k, metric, exclude_self, device)`` -> ``(values [q, k], global indices [q, k])``.

    With ``exclude_self`` query ``j`` is base row ``q0 + j``: the queries whose own row lies in
    the shard are searched with ``ops.knn``'s exclusion, the others without. Fewer than ``k``
    candidates are padded with NaN / -1. ``device`` (None: the CPU) is where ``ops.knn`` runs.
    Plain arrays in and out (picklable for remote mappers). The rows are not checked for NaN or inf
    here: :func:`sharded_knn` checks its whole input once (a task would check its base shard again
    for every query block).
    """
    q, b, b0, q0, k, metric, exclude_self, device = task
    if device == "auto":  # decided where the task runs (a remote worker may have no GPU)
        device = "cuda" if torch.cuda.is_available() else None
    nq, ns = q.shape[0], b.shape[0]
    vals = np.full((nq, k), np.nan, np.float32)
    idx = np.full((nq, k), -1, np.int64)
    if nq == 0 or k == 0:
        return vals, idx
    # queries whose own row is in this shard: [lo, hi) (empty without exclude_self)
    if device not in (None, "cpu"):
        q, b = torch.from_numpy(q).to(device), torch.from_numpy(b).to(device)
    lo = min(max(b0 - q0, 0), nq) if exclude_self else nq
    hi = max(min(b0 + ns - q0, nq), lo) if exclude_self else nq
    for a, e, excl in ((0, lo, False), (lo, hi, True), (hi, nq, False)):
        kk = min(k, ns - (1 if excl else 0))
        if e <= a or kk <= 0:
            continue
        v, i = knn(
            q[a:e], b, kk, metric, exclude_self=excl, query_offset=(q0 + a - b0) if excl else 0, check_finite=False
        )  # (sharded_knn checked the whole input)
        vals[a:e, :kk] = v.cpu().numpy()
        idx[a:e, :kk] = i.cpu().numpy() + b0
    return vals, idx


def _tasks(
    queries: np.ndarray, base: np.ndarray, k: int, metric: str, rows: tuple[int, int], excl: bool, off: int, dev: Any,
    todo: Sequence[int],
) -> Iterator[tuple]:  # fmt: skip
    """The tasks of the query blocks that start at ``todo``, block by block."""
    shard_rows, query_rows = rows
    # one view object per shard, shared by the tasks of every query block (a mapper may ship each once)
    shards = [(bs, base[bs : bs + shard_rows]) for bs in range(0, max(base.shape[0], 1), shard_rows)]
    for qs in todo:
        qb = queries[qs : qs + query_rows]
        for bs, shard in shards:
            yield (qb, shard, bs, off + qs, k, metric, excl, dev)


def _check_rows(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def _as_f32(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d [rows, dim] array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected a floating dtype, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _validate(q: np.ndarray, b: np.ndarray, k: Any, metric: Any, exclude_self: bool, query_offset: Any) -> int:
    """The checks of one ``ops.knn`` call over the whole input (the tasks see only parts of it)."""
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"base: dimension {b.shape[1]} does not match queries dimension {q.shape[1]}")
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected an integer >= 0, got {k!r}")
    if isinstance(query_offset, bool) or not isinstance(query_offset, (int, np.integer)) or query_offset < 0:
        raise ValueError(f"query_offset: expected an integer >= 0, got {query_offset!r}")
    nq, nb = q.shape[0], b.shape[0]
    n_cand = max(nb - (1 if exclude_self and nq > 0 else 0), 0)
    if nq > 0 and k > n_cand:
        raise ValueError(
            f"k: {k} is larger than the number of candidates ({n_cand} base rows"
            f"{', self excluded' if exclude_self else ''})"
        )
    if exclude_self and query_offset + nq > nb:
        raise ValueError(
            f"query_offset: exclude_self needs query rows {query_offset}..{query_offset + nq - 1}"
            f" to be base rows, but base has {nb} rows"
        )
    check_finite_rows(q, "queries")
    if not (b is q or (b.shape == q.shape and b.ctypes.data == q.ctypes.data)):  # the pool searched for itself
        check_finite_rows(b, "base")
    return int(k)


def sharded_knn(
    queries: Any,
    base: Any,
    k: int,
    metric: str = "ip",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    query_rows: int = DEFAULT_QUERY_ROWS,
    exclude_self: bool = False,
    mapper: Callable[[Callable, Iterable], Iterable] = map,
    *,
    query_offset: int = 0,
    device: Optional[str] = None,
    blocks: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN of ``queries`` [Q, d] in ``base`` [N, d] as (query block x base shard) tasks run by
    ``mapper``; returns ``(values [Q, k] float32, indices [Q, k] int64)`` as :func:`thresher.ops.knn`
    (see the module docstring for the exactness guarantee). ``exclude_self``: query ``i`` is base
    row ``query_offset + i`` and is never returned. ``device``: where each task runs ``ops.knn``
    (None: the CPU; ``"cuda"``: every task copies its blocks there; ``"auto"``: the GPU when the
    process running the task sees one, else the CPU). ``blocks``: finished query blocks to reuse
    and to record (module docstring, "Resume")."""
    q = _as_f32(queries, "queries")
    b = _as_f32(base, "base")
    shard_rows = _check_rows(shard_rows, "shard_rows")
    query_rows = _check_rows(query_rows, "query_rows")
    k = _validate(q, b, k, metric, exclude_self, query_offset)
    nq = q.shape[0]
    if nq == 0 or k == 0:
        return np.zeros((nq, k), np.float32), np.zeros((nq, k), np.int64)
    n_shards = max(1, -(-b.shape[0] // shard_rows))
    vals = np.empty((nq, k), np.float32)
    idx = np.empty((nq, k), np.int64)
    todo = []
    for qs in range(0, nq, query_rows):
        got = None if blocks is None else blocks.get(qs)
        shape = (min(query_rows, nq - qs), k)
        if got is None or len(got) != 2 or np.shape(got[0]) != shape or np.shape(got[1]) != shape:
            todo.append(qs)
            continue
        vals[qs : qs + query_rows], idx[qs : qs + query_rows] = got
    tasks = _tasks(q, b, k, metric, (shard_rows, query_rows), exclude_self, query_offset, device, todo)
    results = iter(mapper(knn_shard_task, tasks))
    for qs in todo:  # per query block, n_shards results in order
        parts = [next(results) for _ in range(n_shards)]
        v, i = merge_topk([p[0] for p in parts], [p[1] for p in parts], k, largest=(metric == "ip"))
        vals[qs : qs + query_rows], idx[qs : qs + query_rows] = v, i
        if blocks is not None:
            blocks.put(qs, v, i)
    if next(results, None) is not None:
        raise ValueError("mapper: returned more results than tasks")
    return vals, idx
