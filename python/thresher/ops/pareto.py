"""Multi-objective ranking: Pareto (non-domination) ranks and crowding distance.

``pareto_ranks(objectives, maximize=True)`` gives every row of ``objectives[N, M]``
its non-domination rank: 0 for the rows no other row dominates (the first
front), 1 for the rows dominated only by rows of rank 0, and so on through all
fronts. Row ``a`` dominates row ``b`` when it is at least as good in every
objective and strictly better in one, so

* duplicated rows never dominate each other and share a rank;
* a row equal in one objective and better in another dominates.

``maximize`` is one bool for all objectives or one per column (default: all
maximised, as thresher's criteria are "higher is better" unless they say
otherwise).

**NaN policy**: a row with a NaN in any objective cannot be compared, so it is
ranked after every NaN-free row: all such rows get rank ``1 + max(rank of the
NaN-free rows)`` (0 when every row has a NaN). ``+inf``/``-inf`` are ordinary
values. Integer, bool and float dtypes are accepted and compared as float64
(integers are exact up to 2**53).

Backends of ``pareto_ranks``:

* ``reference``: plain PyTorch on any device, the test oracle: dominance
  counting in blocks of rows (O(M N^2) work, O(block * N * M) memory; small N
  keeps the [N, N] dominance matrix), then peeling front by front (each front
  subtracts the dominance counts of its rows).
* ``cpu``: ``thresher._C`` (csrc/cpu/pareto.cpp): lexicographic sort, then a
  sort-and-sweep for M <= 2 (O(N log N)), a per-front staircase sweep for M = 3
  and the Jensen / Fortin / Buzdalov divide and conquer for M >= 3
  (O(N log^(M-1) N)). CUDA tensors are copied to the host and back.

A GPU kernel does not pay here: the fast algorithms are sequential sweeps over
a sorted order, and the only data-parallel formulation is the O(M N^2)
dominance count of the reference. So on CUDA tensors the reference runs on the
GPU for small inputs (N <= ``GPU_REFERENCE_MAX_N``) and larger inputs go to the
``cpu`` backend (a host round trip of N*M values), unless a backend is forced.

``crowding_distance(objectives, ranks)`` is the NSGA-II crowding distance
within each front (see its docstring for the tie and NaN rules).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch

from .. import _native
from ._dispatch import Op, cpu_has, device_type
from .objectives import MaximizeArg, as_objectives, maximize_flags

__all__ = ["pareto_ranks", "crowding_distance", "GPU_REFERENCE_MAX_N"]

GPU_REFERENCE_MAX_N = 4096
_BLOCK_ELEMS = {"cpu": 1 << 22, "cuda": 1 << 26}  # elements of one [B, N, M] comparison block

pareto_op = Op("pareto_ranks", doc="non-domination rank (0 = first front) of every row of [N,M] objectives")
crowding_op = Op("crowding_distance", doc="NSGA-II crowding distance per front of [N,M] objectives")


def _to_minimisation(obj: torch.Tensor, flags: list[bool]) -> torch.Tensor:
    if any(flags):
        sign = torch.tensor([-1.0 if f else 1.0 for f in flags], dtype=obj.dtype, device=obj.device)
        obj = obj * sign
    return obj


# ------------------------------------------------------------------ backends
def _dominates_block(a: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """[B, N] bool: row b of ``a`` [B, M] dominates row j of ``obj`` [N, M] (minimisation)."""
    le = (a[:, None, :] <= obj[None, :, :]).all(-1)
    lt = (a[:, None, :] < obj[None, :, :]).any(-1)
    return le & lt


@pareto_op.register(
    "reference", devices=("cpu", "cuda"), note="PyTorch blocked dominance counting + front peeling, O(M N^2)"
)
def _pareto_reference(obj: torch.Tensor) -> torch.Tensor:
    """obj: float64 [N, M], minimised, no NaN -> int64 [N]."""
    n, m = obj.shape
    dev = obj.device
    ranks = torch.full((n,), -1, dtype=torch.int64, device=dev)
    if n == 0:
        return ranks
    block = max(1, _BLOCK_ELEMS.get(dev.type, 1 << 22) // max(1, n * m))
    # Small inputs keep the whole [N, N] dominance matrix; larger ones recompute
    # the rows of each front (same O(M N^2) work, O(block * N * M) memory).
    full = None
    if n * n <= _BLOCK_ELEMS.get(dev.type, 1 << 22) * 4:
        full = torch.cat([_dominates_block(obj[s : s + block], obj) for s in range(0, n, block)])
        count = full.sum(0)
    else:
        count = torch.zeros(n, dtype=torch.int64, device=dev)
        for s in range(0, n, block):
            count += _dominates_block(obj[s : s + block], obj).sum(0)
    remaining = torch.ones(n, dtype=torch.bool, device=dev)
    r = 0
    while True:
        front = torch.nonzero((count == 0) & remaining).flatten()
        if front.numel() == 0:
            break
        ranks[front] = r
        remaining[front] = False
        if full is not None:
            count -= full.index_select(0, front).sum(0)  # (indexing with [] is slow on CPU)
        else:
            for s in range(0, front.numel(), block):
                count -= _dominates_block(obj.index_select(0, front[s : s + block]), obj).sum(0)
        r += 1
    return ranks


@pareto_op.register(
    "cpu",
    devices=("cpu", "cuda"),
    available=cpu_has("pareto_ranks"),
    note="C++ sort-and-sweep (M<=2), staircase (M=3), Jensen-Buzdalov D&C (M>=3); CUDA tensors via host memory",
)
def _pareto_cpu(obj: torch.Tensor) -> torch.Tensor:
    a = np.ascontiguousarray(obj.detach().cpu().numpy(), dtype=np.float64)
    out = torch.from_numpy(_native.require_cpu().pareto_ranks(a))
    return out.to(obj.device) if obj.device.type != "cpu" else out


# --------------------------------------------------------------- public ops
def pareto_ranks(objectives: Any, maximize: MaximizeArg = True, *, backend: Optional[str] = None) -> torch.Tensor:
    """Non-domination rank of every row of ``objectives``.

    Args:
        objectives: ``[N, M]`` tensor/array (float, int or bool), one row per point.
        maximize: ``True``/``False`` for all objectives, or one bool per column.
        backend: force ``reference`` or ``cpu`` (else ``THRESHER_BACKEND_PARETO_RANKS``
            or the device's default order).

    Returns:
        int64 ``[N]`` on the device of ``objectives``: 0 = non-dominated, and so on.
        Duplicated rows share a rank; rows with NaN come after all others (module doc).
    """
    obj = as_objectives(objectives)
    n, m = obj.shape
    flags = maximize_flags(maximize, m)
    dev = device_type(obj)
    forced = backend or os.environ.get("THRESHER_BACKEND_PARETO_RANKS")
    if dev == "cpu":
        return _pareto_ranks_host(obj, flags, backend)
    obj = _to_minimisation(obj, flags)
    nan_rows = torch.isnan(obj).any(1)
    has_nan = bool(nan_rows.any()) if n else False
    keep = torch.nonzero(~nan_rows).flatten()  # every row when there is no NaN
    sub = obj.index_select(0, keep) if has_nan else obj
    route = dev
    cpu_ok = not pareto_op.backends["cpu"].available()  # available() lists reasons; [] = usable
    if dev == "cuda" and not forced and sub.shape[0] > GPU_REFERENCE_MAX_N and cpu_ok:
        route = "cpu"  # see module doc: host sweep beats the O(N^2) GPU reference
    ranks = pareto_op.dispatch(route, sub.contiguous(), backend=backend, ctx={"n": sub.shape[0], "m": m})
    if not has_nan:
        return ranks
    last = int(ranks.max()) + 1 if ranks.numel() else 0
    out = torch.full((n,), last, dtype=torch.int64, device=obj.device)
    return out.index_copy_(0, keep, ranks)


def _pareto_ranks_host(obj: torch.Tensor, flags: list[bool], backend: Optional[str]) -> torch.Tensor:
    """CPU tensors: the same steps in numpy (zero-copy views; torch's small
    elementwise ops cost more than the C++ kernel on a busy machine)."""
    a = obj.numpy()
    if any(flags):
        a = np.where(np.asarray(flags), -a, a)
    nan_rows = np.isnan(a).any(1) if a.size and np.isnan(a).any() else None
    sub = a[~nan_rows] if nan_rows is not None else a
    sub_t = torch.from_numpy(np.ascontiguousarray(sub))
    ranks = pareto_op.dispatch("cpu", sub_t, backend=backend, ctx={"n": sub.shape[0], "m": a.shape[1]})
    if nan_rows is None:
        return ranks
    r = ranks.numpy()
    out = np.full(a.shape[0], int(r.max()) + 1 if r.size else 0, dtype=np.int64)
    out[~nan_rows] = r
    return torch.from_numpy(out)


def _as_ranks(ranks: Any, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(ranks, torch.Tensor):
        r = ranks
    else:
        try:
            r = torch.as_tensor(np.asarray(ranks)).to(device)
        except Exception as exc:
            raise ValueError(f"ranks: expected an integer [N] tensor or array ({exc})") from None
    if r.dtype.is_floating_point or r.dtype.is_complex or r.dtype == torch.bool:
        raise ValueError(f"ranks: expected an integer dtype, got {r.dtype}")
    if r.dim() != 1:
        raise ValueError(f"ranks: expected a 1-d [N] tensor, got shape {tuple(r.shape)}")
    if r.shape[0] != n:
        raise ValueError(f"ranks: has {r.shape[0]} entries but objectives has {n} rows (N mismatch)")
    if r.device != device:
        raise ValueError(f"ranks: on {r.device} but objectives on {device}")
    r = r.to(torch.int64)
    if n and bool((r < 0).any()):
        raise ValueError("ranks: must be >= 0")
    return r


@crowding_op.register(
    "reference", devices=("cpu", "cuda"), note="PyTorch: one lexicographic sort per objective, O(M N log N)"
)
def _crowding_reference(obj: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """obj float64 [N, M] without NaN, ranks int64 [N] -> float64 [N]."""
    n, m = obj.shape
    dev = obj.device
    dist = torch.zeros(n, dtype=torch.float64, device=dev)
    if n == 0:
        return dist
    nconst = torch.zeros(n, dtype=torch.int64, device=dev)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    sel = torch.index_select  # (advanced indexing with [] is much slower on CPU)
    for j in range(m):
        v = obj[:, j].contiguous()
        p1 = torch.argsort(v, stable=True)
        p = sel(p1, 0, torch.argsort(sel(ranks, 0, p1), stable=True))  # by (rank, value)
        rs, vs = sel(ranks, 0, p), sel(v, 0, p)
        new_front = torch.ones(n, dtype=torch.bool, device=dev)
        new_front[1:] = rs[1:] != rs[:-1]
        new_group = new_front.clone()
        new_group[1:] |= vs[1:] != vs[:-1]
        gid = torch.cumsum(new_group.to(torch.int64), 0) - 1  # distinct value within a front
        gidx = torch.nonzero(new_group).flatten()
        gval = sel(vs, 0, gidx)
        gfirst = sel(new_front, 0, gidx)  # group opens its front
        g = gval.numel()
        glast = torch.ones(g, dtype=torch.bool, device=dev)
        glast[:-1] = gfirst[1:]
        fid = torch.cumsum(gfirst.to(torch.int64), 0) - 1
        fmin = sel(gval, 0, torch.nonzero(gfirst).flatten())
        fmax = sel(gval, 0, torch.nonzero(glast).flatten())
        frange = sel(fmax - fmin, 0, fid)
        prev = torch.empty_like(gval)
        nxt = torch.empty_like(gval)
        prev[1:] = gval[:-1]
        prev[:1] = gval[:1]
        nxt[:-1] = gval[1:]
        nxt[-1:] = gval[-1:]
        c = torch.nan_to_num((nxt - prev) / frange, nan=0.0, posinf=float("inf"))
        c = torch.where(gfirst | glast, inf, c)
        const = frange == 0
        c = torch.where(const, torch.zeros_like(c), c)
        dist.index_add_(0, p, sel(c, 0, gid))
        nconst.index_add_(0, p, sel(const.to(torch.int64), 0, gid))
    # a front made of one distinct point: every objective constant -> boundary
    return torch.where(nconst == m, inf, dist)


def crowding_distance(objectives: Any, ranks: Any, *, backend: Optional[str] = None) -> torch.Tensor:
    """NSGA-II crowding distance of every row within its front.

    For each objective and front, the distinct values of the front are sorted;
    a row whose value is the front's smallest or largest gets ``inf``, any
    other row gets ``(next distinct value - previous distinct value) / (max - min)``;
    the distance is the sum over objectives (Deb et al. 2002, not divided by M).
    Rules that make the result deterministic and independent of row order:

    * tied values share their contribution (neighbours are *distinct* values), so
      duplicated rows get the same distance and every row at an extreme gets ``inf``;
    * an objective that is constant within a front contributes 0 to it; a front
      whose rows are all identical (e.g. a single row) gets ``inf``;
    * an infinite range (``+-inf`` values) leaves only the boundary infinities
      (interior contributions 0);
    * rows with a NaN objective get NaN and are left out of the other rows' fronts.

    Direction (maximise or minimise) does not change the distance.

    Args:
        objectives: ``[N, M]`` tensor/array.
        ranks: integer ``[N]`` front of every row (e.g. from :func:`pareto_ranks`).

    Returns:
        float64 ``[N]`` on the device of ``objectives``.
    """
    obj = as_objectives(objectives)
    r = _as_ranks(ranks, obj.shape[0], obj.device)
    dev = device_type(obj, r)
    nan_rows = torch.isnan(obj).any(1)
    if obj.shape[0] and bool(nan_rows.any()):
        out = torch.full((obj.shape[0],), float("nan"), dtype=torch.float64, device=obj.device)
        keep = torch.nonzero(~nan_rows).flatten()
        d = crowding_op.dispatch(dev, obj.index_select(0, keep), r.index_select(0, keep), backend=backend)
        return out.index_copy_(0, keep, d)
    return crowding_op.dispatch(dev, obj, r, backend=backend)
