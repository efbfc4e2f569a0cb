"""``topk``: the k best scores, deterministic and NaN-aware, plus an out-of-core accumulator.

``topk(scores, k, largest=True)`` returns ``(values[k'], indices[k'] int64)`` ordered best
first, where ``k' = min(k, N)``:

* **Order**: descending values for ``largest=True`` (ascending for ``False``); equal values
  (``-0.0 == +0.0`` included) are ordered by **lower index first**, so results are
  deterministic and identical across backends.
* **NaN last**: NaN is worse than every other value (``-inf`` included for ``largest=True``,
  ``+inf`` for ``largest=False``); NaNs are only selected when fewer than ``k`` non-NaN
  values exist, and then by lower index.
* **k > N clamps** to N (documented choice: an out-of-core shard may hold fewer than k
  rows); ``k = 0`` or ``N = 0`` give empty results; negative or non-integer ``k`` raises
  ``ValueError``.
* ``values`` keeps the dtype of ``scores`` (exact input values, gathered by index).

Backends: ``reference`` (plain PyTorch: stable sort, any device, the test oracle), ``cpu``
(``thresher._C``: parallel MSD radix select + sort of the winners), ``triton`` (radix-select
threshold with histogram kernels, then an order-preserving compaction kernel), ``cuda``
(``thresher._cuda``, the same scheme in CUDA). The native backends find the k winners; the
final ordering of those k (by key desc, index asc) is part of each backend.

:class:`TopKAccumulator` merges per-shard results: feeding shards of a long score stream
with their global ``offset`` gives exactly ``topk`` of the concatenation.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import torch

from .. import _native
from ._dispatch import Op, cpu_has, cuda_has, device_type, triton_has
from .abi import CONSTANTS, dtype_code

__all__ = ["topk", "TopKAccumulator"]

SCORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BITS_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}

topk_op = Op("topk", doc="k best scores, ties by lower index, NaN last")


# ----------------------------------------------------------------- validation
def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        if isinstance(k, torch.Tensor) and k.numel() == 1 and not k.dtype.is_floating_point:
            k = int(k)
        else:
            raise ValueError(f"k: expected a non-negative integer, got {k!r}")
    k = int(k)
    if k < 0:
        raise ValueError(f"k: must be >= 0, got {k}")
    return k


def _check_scores(scores: Any) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        try:
            scores = torch.as_tensor(scores)
        except Exception as exc:
            raise ValueError(f"scores: expected a tensor or array, got {type(scores).__name__} ({exc})") from None
    if scores.dim() != 1:
        raise ValueError(f"scores: expected a 1-d tensor [N], got shape {tuple(scores.shape)}")
    if scores.dtype not in SCORE_DTYPES:
        raise ValueError(f"scores: expected dtype float16, bfloat16, float32 or float64, got {scores.dtype}")
    return scores.contiguous()


def topk(
    scores: Any, k: int, largest: bool = True, *, backend: Optional[str] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``min(k, N)`` best ``scores``: ``(values, indices int64)``, best first.

    Ties by lower index, NaN last, ``k > N`` clamps to N, negative ``k`` raises ValueError.
    ``backend`` forces ``reference``/``cpu``/``triton``/``cuda`` (else
    ``THRESHER_BACKEND_TOPK`` or the device's default order).
    """
    scores = _check_scores(scores)
    k = min(_check_k(k), scores.numel())
    if not isinstance(largest, (bool, numbers.Integral)) and type(largest).__name__ != "bool_":
        raise ValueError(f"largest: expected a bool, got {largest!r}")
    dev = device_type(scores)
    ctx = {"dtype": scores.dtype, "n": scores.numel()}
    return topk_op.dispatch(dev, scores, k, bool(largest), backend=backend, ctx=ctx)


def _empty(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return scores[:0].clone(), torch.empty(0, dtype=torch.int64, device=scores.device)


# ------------------------------------------------------------------ reference
def order_indices(values: torch.Tensor, largest: bool, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Positions of ``values`` sorted best first: (NaN last, value, ``index`` asc).

    ``index`` (default: the positions) breaks ties; plain PyTorch stable sorts.
    """
    if index is None:
        order = torch.arange(values.numel(), device=values.device)
    else:
        order = torch.argsort(index, stable=True)
    v = values[order]
    key = -v if largest else v  # NaN stays NaN; torch sorts NaN after +inf
    key = torch.where(key == 0, torch.zeros_like(key), key)  # -0.0 ties with +0.0
    perm = torch.argsort(key, stable=True)
    return order[perm]


@topk_op.register("reference", devices=("cpu", "cuda"), note="plain PyTorch stable sort")
def topk_reference(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: stable sort of the order key (NaN last), first k. scores [N], 0 <= k <= N."""
    if k == 0:
        return _empty(scores)
    idx = order_indices(scores, largest)[:k].to(torch.int64)
    return scores[idx], idx


# ---------------------------------------------------------------- cpu (_C)
@topk_op.register("cpu", devices=("cpu",), available=cpu_has("topk"), note="C++ parallel radix select")
def topk_cpu(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if k == 0:
        return _empty(scores)
    idx = torch.empty(k, dtype=torch.int64)
    bits = scores.view(_BITS_VIEW[scores.dtype]).numpy()
    _native.require_cpu().topk(bits, dtype_code(scores.dtype), k, largest, idx.numpy())
    return scores[idx], idx


# ------------------------------------------------------------------ triton
def _triton_supports(
    device: Optional[str] = None, dtype: Optional[torch.dtype] = None, n: Optional[int] = None, **_: Any
) -> list[str]:
    if dtype == torch.float64:
        return ["float64 is not supported by the Triton kernel (use cuda/cpu/reference)"]
    if n is not None and n >= 2**31:
        return ["N >= 2**31 is not supported by the Triton kernel (int32 offsets)"]
    return []


@topk_op.register(
    "triton",
    devices=("cuda",),
    available=triton_has("topk"),
    supports=_triton_supports,
    note="radix-select threshold + compaction",
)
def topk_triton(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if k == 0:
        return _empty(scores)
    idx = _native.require_kernel("topk").topk(scores, k, largest)
    return scores[idx], idx


# -------------------------------------------------------------------- cuda
@topk_op.register("cuda", devices=("cuda",), available=cuda_has("topk"), note="radix select + compaction (CUDA)")
def topk_cuda(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Device radix select writes the k winners (unordered keys, index order within equal
    keys); a stable torch sort of their keys gives the final order."""
    if k == 0:
        return _empty(scores)
    n = scores.numel()
    dev = scores.device
    wide = scores.dtype == torch.float64
    key_dtype = torch.int64 if wide else torch.int32
    block = CONSTANTS["TOPK_COMPACT_BLOCK"]
    nblocks = (n + block - 1) // block
    keys = torch.empty(k, dtype=key_dtype, device=dev)
    idx = torch.empty(k, dtype=torch.int64, device=dev)
    hist = torch.empty(CONSTANTS["TOPK_RADIX_BINS"], dtype=torch.int64, device=dev)
    state = torch.zeros(CONSTANTS["TOPK_STATE_WORDS"], dtype=torch.int64, device=dev)
    counts = torch.empty(2 * nblocks + 2, dtype=torch.int64, device=dev)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        ptrs = (keys.data_ptr(), idx.data_ptr(), hist.data_ptr(), state.data_ptr(), counts.data_ptr())
        _native.require_cuda().topk(scores.data_ptr(), dtype_code(scores.dtype), n, k, largest, *ptrs, nblocks, stream)
    # keys are unsigned order keys stored in signed ints: flip the sign bit to sort them signed.
    skey = keys ^ torch.iinfo(key_dtype).min
    perm = torch.argsort(skey, descending=True, stable=True)
    idx = idx[perm]
    return scores[idx], idx


# ---------------------------------------------------------- out-of-core merge
class TopKAccumulator:
    """Running top-k over shards of one long score stream.

    ``update(scores, offset=None)`` takes a shard ``scores[n_i]`` whose first row has
    global index ``offset`` (default: the number of rows seen so far, for shards fed in
    order). ``result()`` returns ``(values, global_indices int64)`` identical to
    ``topk(concatenation, k, largest)`` (ties by lower global index, NaN last), provided the
    shards do not overlap. Each update takes one ``topk`` of the shard; the shards' best rows
    wait until they hold more than ``k`` values besides the ``k`` kept, then one sort keeps the
    best ``k`` of all (a total order: values, then index), so memory stays O(k + shard) and the
    sorting O(N log k) over the stream (merging every shard into the kept rows cost a sort of
    k + shard each time: quadratic when ``k`` is a large part of the stream).
    """

    def __init__(self, k: int, largest: bool = True, *, backend: Optional[str] = None):
        self.k = _check_k(k)
        self.largest = bool(largest)
        self.backend = backend
        self.seen = 0
        self._best: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (values, global indices), sorted
        self._waiting: list = []  # shards' (values, global indices) not merged yet
        self._n_waiting = 0

    @property
    def held(self) -> int:
        """Values held now (kept and waiting)."""
        kept = 0 if self._best is None else int(self._best[0].numel())
        return kept + self._n_waiting

    def update(self, scores: Any, offset: Optional[int] = None) -> "TopKAccumulator":
        scores = _check_scores(scores)
        if offset is None:
            offset = self.seen
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise ValueError(f"offset: expected a non-negative integer, got {offset!r}")
        self.seen = max(self.seen, int(offset) + scores.numel())
        v, i = topk(scores, self.k, self.largest, backend=self.backend)
        first = self._best[0] if self._best is not None else (self._waiting[0][0] if self._waiting else None)
        if first is not None and v.device != first.device:
            raise ValueError(f"scores: on {v.device} but earlier shards on {first.device}")
        self._waiting.append((v, i + int(offset)))
        self._n_waiting += int(v.numel())
        if self._n_waiting > self.k:
            self._merge()
        return self

    def _merge(self) -> None:
        """Keep the best ``k`` of the kept and the waiting rows."""
        parts = ([self._best] if self._best is not None else []) + self._waiting
        self._waiting, self._n_waiting = [], 0
        if not parts:
            return
        dt = parts[0][0].dtype
        for v, _ in parts[1:]:
            dt = torch.promote_types(dt, v.dtype)
        vals = torch.cat([v.to(dt) for v, _ in parts])
        index = torch.cat([i for _, i in parts])
        order = order_indices(vals, self.largest, index)[: self.k]
        self._best = (vals[order], index[order])

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._merge()
        if self._best is None:
            return torch.empty(0), torch.empty(0, dtype=torch.int64)
        return self._best[0].clone(), self._best[1].clone()
