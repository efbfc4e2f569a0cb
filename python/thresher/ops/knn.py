"""Exact k-nearest-neighbour search: ``knn(queries, base, k, metric)``.

Semantics (every backend): for each query row, the ``k`` base rows with the
largest inner product (``metric="ip"``) or the smallest squared Euclidean
distance (``metric="l2"``), sorted nearest first; ties go to the lower base
index. ``exclude_self=True`` treats query ``i`` as base row
``query_offset + i`` and never returns it. Returns ``(values [Q, k] float32,
indices [Q, k] int64)``: inner products for ``ip``, squared distances for
``l2``.

Backends: ``cpu`` (thresher._C: blocked GEMM tiles fused with a running top-k,
OpenMP), ``triton`` (GPU: tiled matmul + a running top-k in registers, exact fp32 re-rank),
``reference`` (plain PyTorch: chunked matmul + stable sort; the oracle).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from .. import _native
from ..extras import require
from ._dispatch import Op, cpu_has, device_type, triton_has
from .abi import KnnMetric
from .rows import nonfinite_rows

knn_op = Op("knn", doc="exact k nearest neighbours (ip or squared l2), ties by lower index")

TRITON_MAX_K = 1024
# Column indices are packed into 32 bits of the Triton kernel's sort keys.
TRITON_MAX_ROWS = 2**31 - 1
_METRICS = tuple(m.name.lower() for m in KnnMetric)  # ip l2
# Accuracy of the returned values of every backend against a float64 oracle, per input dtype:
# (rtol, atol), rtol relative to the largest |value| of the result (tests/test_ops_knn.py; the
# float32 reference's own rounding error is also allowed). Integer-valued data is exact.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 0.0),
    torch.float64: (1e-5, 0.0),
}
# Two neighbours whose exact values differ by less than this (relative) may come in either order.
NEAR_TIE_RTOL = 1e-4


# ----------------------------------------------------------------- validation
def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-d [rows, dim] array, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    return x


def check_finite_rows(x: Any, name: str) -> None:
    """ValueError naming ``name`` and the first row holding NaN or inf (``x``: a 2-d tensor or numpy array)."""
    bad = nonfinite_rows(x)  # a block of rows at a time: no [rows, dim] mask
    if bad.any():
        raise ValueError(f"{name}: {int(bad.sum())} row(s) contain NaN or inf (first: row {int(np.argmax(bad))})")


def _validate(
    queries: Any, base: Any, k: Any, metric: Any, exclude_self: bool, query_offset: Any, check_finite: bool = True
) -> tuple[torch.Tensor, torch.Tensor, int]:
    q = _as_tensor(queries, "queries")
    b = _as_tensor(base, "base")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"base: dimension {b.shape[1]} does not match queries dimension {q.shape[1]}")
    if metric not in _METRICS:
        raise ValueError(f"metric: expected one of {_METRICS}, got {metric!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k: expected an integer >= 0, got {k!r}")
    k = int(k)
    if not isinstance(query_offset, (int, np.integer)) or query_offset < 0:
        raise ValueError(f"query_offset: expected an integer >= 0, got {query_offset!r}")
    n_cand = b.shape[0] - (1 if exclude_self and q.shape[0] > 0 else 0)
    if k > max(n_cand, 0) and q.shape[0] > 0:
        raise ValueError(
            f"k: {k} is larger than the number of candidates ({max(n_cand, 0)} base rows"
            f"{', self excluded' if exclude_self else ''})"
        )
    if exclude_self and query_offset + q.shape[0] > b.shape[0]:
        raise ValueError(
            f"query_offset: exclude_self needs query rows {query_offset}..{query_offset + q.shape[0] - 1}"
            f" to be base rows, but base has {b.shape[0]} rows"
        )
    if check_finite:
        check_finite_rows(q, "queries")
        if b is not q:
            check_finite_rows(b, "base")
    return q, b, k


def knn(
    queries: Any,
    base: Any,
    k: int,
    metric: str = "ip",
    *,
    exclude_self: bool = False,
    query_offset: int = 0,
    backend: Optional[str] = None,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest base rows of every query row (see the module docstring).

    queries: [Q, d] float; base: [N, d] float (torch or numpy, same device).
    Returns (values [Q, k] float32, indices [Q, k] int64) on the inputs' device.
    ``k`` larger than the number of candidates raises ``ValueError``; so does a row holding NaN or inf,
    unless ``check_finite=False`` (the caller has checked the rows: :func:`~.knn_shard.sharded_knn` checks
    the whole input once, not every task's blocks again).
    """
    q, b, k = _validate(queries, base, k, metric, exclude_self, query_offset, check_finite)
    dev = device_type(q, b)
    if q.shape[0] == 0 or k == 0:
        return (
            torch.empty((q.shape[0], k), dtype=torch.float32, device=q.device),
            torch.empty((q.shape[0], k), dtype=torch.int64, device=q.device),
        )
    return knn_op.dispatch(
        dev,
        q,
        b,
        k,
        metric,
        bool(exclude_self),
        int(query_offset),
        backend=backend,
        ctx={"k": k, "n": b.shape[0], "dtype": q.dtype},
    )


# ------------------------------------------------------------------ reference
@knn_op.register("reference", devices=("cpu", "cuda"), note="torch chunked matmul + stable sort")
def knn_reference(
    q: torch.Tensor,
    b: torch.Tensor,
    k: int,
    metric: str = "ip",
    exclude_self: bool = False,
    query_offset: int = 0,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: full score rows per query chunk, stable sort (lower index first on ties)."""
    q = q.float()
    b = b.float()
    Q = q.shape[0]
    vals = torch.empty((Q, k), dtype=torch.float32, device=q.device)
    idx = torch.empty((Q, k), dtype=torch.int64, device=q.device)
    bn = (b * b).sum(1) if metric == "l2" else torch.zeros(b.shape[0], device=b.device)
    for s in range(0, Q, chunk):
        e = min(Q, s + chunk)
        sc = q[s:e] @ b.T
        if metric == "l2":
            sc = 2.0 * sc - bn[None, :]
        if exclude_self:
            r = torch.arange(s, e, device=q.device)
            sc[r - s, r + query_offset] = float("-inf")
        v, i = torch.sort(sc, dim=1, descending=True, stable=True)
        v, i = v[:, :k], i[:, :k]
        if metric == "l2":
            v = ((q[s:e] * q[s:e]).sum(1, keepdim=True) - v).clamp_min(0.0)
        vals[s:e] = v
        idx[s:e] = i
    return vals, idx


# ------------------------------------------------------------------------ cpu
@knn_op.register(
    "cpu", devices=("cpu",), available=cpu_has("knn_exact"), note="blocked GEMM + running top-k (C++/OpenMP)"
)
def knn_cpu(
    q: torch.Tensor,
    b: torch.Tensor,
    k: int,
    metric: str = "ip",
    exclude_self: bool = False,
    query_offset: int = 0,
    tile_n: int = 512,
    block_q: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    qn = np.ascontiguousarray(q.detach().float().numpy())
    bn = qn if b is q else np.ascontiguousarray(b.detach().float().numpy())
    v, i = _native.require_cpu().knn_exact(
        qn, bn, k, KnnMetric.parse(metric), exclude_self, query_offset, tile_n, block_q
    )
    return torch.from_numpy(v), torch.from_numpy(i)


# --------------------------------------------------------------------- triton
def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def triton_pool_size(k: int, exact_dots: bool) -> int:
    """Candidates kept per query by the Triton kernel before the exact fp32 re-rank.

    A power of two >= k; twice that (capped at TRITON_MAX_K) when the kernel's dots are
    bf16/fp16/tf32, so rounding near the k-th neighbour cannot push a true neighbour out.
    """
    kb = _next_pow2(k)
    return kb if exact_dots else max(kb, min(_next_pow2(2 * k), TRITON_MAX_K))


def _triton_supports(device: Optional[str] = None, k: int = 1, n: int = 0, **_: Any) -> list[str]:
    reasons = []
    if k > TRITON_MAX_K:
        reasons.append(f"k={k} > {TRITON_MAX_K} (the running top-k buffer lives in registers)")
    if n > TRITON_MAX_ROWS:
        reasons.append(f"base has {n} rows > {TRITON_MAX_ROWS} (column indices are packed in 32 bits)")
    return reasons


@knn_op.register(
    "triton",
    devices=("cuda",),
    available=triton_has("knn"),
    supports=_triton_supports,
    note="tiled tl.dot + running bitonic top-k in registers, exact fp32 re-rank",
)
def knn_triton(
    q: torch.Tensor,
    b: torch.Tensor,
    k: int,
    metric: str = "ip",
    exclude_self: bool = False,
    query_offset: int = 0,
    block_m: Optional[int] = None,
    block_n: Optional[int] = None,
    block_k: int = 32,
    max_candidate_bytes: int = 1 << 30,
    precision: str = "ieee",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates from the Triton kernel, then :func:`rerank_exact` (values and order in fp32).

    ``precision`` applies to float32 inputs: ``"ieee"`` (default) or ``"tf32"`` (faster tensor-core
    dots; the re-rank keeps results exact). float16/bfloat16 inputs use their own tensor-core dots.
    """
    triton = require("triton", "triton", what="the Triton kNN kernel")  # the dispatcher checked it loads

    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision: expected 'ieee' or 'tf32', got {precision!r}")
    if b.shape[0] > TRITON_MAX_ROWS:
        raise ValueError(f"base: {b.shape[0]} rows > {TRITON_MAX_ROWS}, the Triton kNN limit")
    mod = _native.require_kernel("knn")
    low = q.dtype in (torch.float16, torch.bfloat16) and b.dtype == q.dtype
    qk, bk = (q, b) if low else (q.float(), b.float())
    interp = q.device.type == "cpu"
    # the interpreter cannot map views with a storage offset: give it fresh tensors
    qk = qk.clone() if interp else qk.contiguous()
    bk = bk.clone() if interp else bk.contiguous()
    Q, D = qk.shape
    N = bk.shape[0]
    ieee = not low and precision == "ieee"
    KB = triton_pool_size(k, exact_dots=ieee)
    BM = block_m or (16 if interp or KB >= 256 else 64)
    BN = max(block_n or (16 if interp else 128), KB)
    BK = block_k if not interp else 16
    bf = b.float()
    bn = (bf * bf).sum(1) if metric == "l2" else torch.zeros(1, device=b.device)
    cand = torch.empty((Q, KB), dtype=torch.int64, device=q.device)
    mod.knn_topk_kernel[(triton.cdiv(Q, BM),)](
        qk, bk, bn, cand, Q, N, D, query_offset,
        L2=metric == "l2", EXCLUDE_SELF=exclude_self, KB=KB, BM=BM, BN=BN, BK=BK,
        IEEE=ieee, TF32=not low and precision == "tf32", UPCAST=interp and low,
    )  # fmt: skip
    return rerank_exact(q.float(), bf, cand, k, metric, bn, max_candidate_bytes)


def rerank_exact(
    q: torch.Tensor,
    b: torch.Tensor,
    cand: torch.Tensor,
    k: int,
    metric: str,
    bn: torch.Tensor,
    max_bytes: int = 1 << 30,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of each row's candidate indices (-1 = none), scored in fp32.

    Scores use the reference's formula (ip: q.b; l2: 2 q.b - |b|^2) as elementwise fp32
    products (no TF32), ordered by (score desc, index asc) like every backend.
    """
    Q, KB = cand.shape
    D = q.shape[1]
    vals = torch.empty((Q, k), dtype=torch.float32, device=q.device)
    idx = torch.empty((Q, k), dtype=torch.int64, device=q.device)
    chunk = max(1, min(Q, int(max_bytes) // max(1, KB * D * 4)))
    for s in range(0, Q, chunk):
        e = min(Q, s + chunk)
        c, _ = torch.sort(cand[s:e], dim=1)  # index order: the stable sort below keeps lower first
        ok = c >= 0
        safe = c.clamp_min(0)
        sc = (b[safe] * q[s:e, None, :]).sum(-1)
        if metric == "l2":
            sc = 2.0 * sc - bn[safe]
        sc = torch.where(ok, sc, torch.full_like(sc, float("-inf")))
        v, order = torch.sort(sc, dim=1, descending=True, stable=True)
        vals[s:e] = v[:, :k]
        idx[s:e] = torch.gather(c, 1, order[:, :k])
    if metric == "l2":
        vals = ((q * q).sum(1, keepdim=True) - vals).clamp_min(0.0)
    return vals, idx


def knn_merge_tile(
    scores: np.ndarray, col0: int, row0: int, exclude_self: bool, vals: np.ndarray, idx: np.ndarray
) -> None:
    """Merge a score tile [T, n] (larger = nearer) into running top-k arrays in place.

    For callers that compute score tiles themselves (e.g. with BLAS on a memory
    map); columns must arrive in increasing base order across calls. Uses the C++
    kernel when built, otherwise numpy.
    """
    ext = _native.cpu_ext()
    if ext is not None and hasattr(ext, "knn_merge_tile"):
        ext.knn_merge_tile(
            np.ascontiguousarray(scores, dtype=np.float32), int(col0), int(row0), bool(exclude_self), vals, idx
        )
        return
    s = np.array(scores, dtype=np.float32)
    T, n = s.shape
    if exclude_self:
        r = np.arange(T)
        c = r + row0 - col0
        ok = (c >= 0) & (c < n)
        s[r[ok], c[ok]] = -np.inf
    k = vals.shape[1]
    allv = np.concatenate([vals, s], axis=1)
    alli = np.concatenate([idx, np.broadcast_to(np.arange(col0, col0 + n), (T, n))], axis=1)
    # stable on (-value): the running entries (lower indices) come first on ties
    o = np.argsort(-allv, axis=1, kind="stable")[:, :k]
    vals[:] = np.take_along_axis(allv, o, 1)
    idx[:] = np.take_along_axis(alli, o, 1)
