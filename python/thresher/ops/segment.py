"""``segment_reduce``: ragged per-segment reduction of per-token values.

``segment_reduce(values, offsets, op)`` reduces the rows ``values[offsets[s]:offsets[s+1]]``
of every segment ``s`` (e.g. the tokens of one sample) with ``op``:

* ``sum``        sum of the rows (0 for an empty segment)
* ``mean``       sum / length (NaN for an empty segment)
* ``max``/``min`` elementwise extreme (NaN for an empty segment)
* ``count``      the segment length (int64; 0 for an empty segment)
* ``logmeanexp`` ``log(mean(exp(x)))`` computed stably as ``m + log(sum(exp(x - m))) - log(n)``
  with ``m`` the maximum (NaN for an empty segment; ``+inf`` if any value is ``+inf``;
  ``-inf`` if all values are ``-inf``)

Any NaN in a segment makes its result NaN (except ``count``). Values of
dtype float16/bfloat16/float32 are accumulated in float32 and the result is
float32; float64 is accumulated and returned in float64. ``values`` is ``[N]``
(result ``[S]``) or ``[N, D]`` (result ``[S, D]``); ``offsets`` is ``[S+1]``
integers, non-decreasing, ``offsets[0] == 0`` and ``offsets[-1] == N``.

Backends: ``reference`` (plain PyTorch, any device, the test oracle), ``cpu``
(``thresher._C``, OpenMP over segments), ``triton`` (one program per
segment x column block) and ``cuda`` (``thresher._cuda``, one warp per
segment for ``[N]``, one block per segment x 32 columns for ``[N, D]``).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from .. import _native
from ._dispatch import Op, cpu_has, cuda_has, device_type, triton_has
from .abi import SegmentOp, dtype_code

__all__ = ["segment_reduce", "SEGMENT_OPS", "TOLERANCES"]

SEGMENT_OPS = tuple(op.name.lower() for op in SegmentOp)  # sum mean max min count logmeanexp
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Accuracy of every backend against the exact (float64) per-segment value, per value dtype:
# (rtol, atol) in units of the accumulation epsilon, scaled by the segment's abs-sum and
# log2(length) in tests/test_ops_segment.py (max/min/count are exact).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (2.0**-52, 0.0),
    torch.float32: (2.0**-23, 0.0),
    torch.float16: (2.0**-23, 0.0),
    torch.bfloat16: (2.0**-23, 0.0),
}

segment_reduce_op = Op(
    "segment_reduce",
    doc="ragged per-segment sum|mean|max|min|count|logmeanexp of [N] or [N,D] values",
)


def _as2d(values: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1] view; [N, D] unchanged."""
    return values.reshape(values.shape[0], 1) if values.dim() == 1 else values


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _out_dtype(dtype: torch.dtype, op: str) -> torch.dtype:
    return torch.int64 if op == "count" else _acc_dtype(dtype)


# ----------------------------------------------------------------- validation
def _as_tensor(x: Any, arg: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except Exception as exc:
        raise ValueError(f"{arg}: expected a tensor or array, got {type(x).__name__} ({exc})") from None


def _validate(values: Any, offsets: Any, op: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    if not isinstance(op, str) or op not in SEGMENT_OPS:
        raise ValueError(f"op: expected one of {list(SEGMENT_OPS)}, got {op!r}")
    values = _as_tensor(values, "values")
    offsets = _as_tensor(offsets, "offsets")
    if values.dtype not in VALUE_DTYPES:
        raise ValueError(f"values: expected dtype float16, bfloat16, float32 or float64, got {values.dtype}")
    if values.dim() not in (1, 2):
        raise ValueError(f"values: expected a [N] or [N, D] tensor, got shape {tuple(values.shape)}")
    if offsets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"offsets: expected an int64 (or int32) tensor, got {offsets.dtype}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets: expected a 1-d tensor [S+1] with S >= 0, got shape {tuple(offsets.shape)}")
    if offsets.device != values.device:
        raise ValueError(f"offsets: on {offsets.device} but values on {values.device}")
    offsets = offsets.to(torch.int64).contiguous()
    n = values.shape[0]
    # One host sync for the three checks.
    bad_steps = (offsets[1:] < offsets[:-1]).sum() if offsets.numel() > 1 else offsets.new_zeros(())
    first, last, nbad = torch.stack([offsets[0], offsets[-1], bad_steps]).tolist()
    mono = nbad == 0
    if first != 0:
        raise ValueError(f"offsets: must start at 0, got offsets[0] = {first}")
    if last != n:
        raise ValueError(
            f"offsets: must end at N = values.shape[0] = {n}, got offsets[-1] = {last} (mismatched lengths)"
        )
    if not mono:
        bad = int(torch.nonzero(offsets[1:] < offsets[:-1])[0, 0])
        raise ValueError(
            f"offsets: must be non-decreasing, but offsets[{bad}] = {int(offsets[bad])} > "
            f"offsets[{bad + 1}] = {int(offsets[bad + 1])}"
        )
    return values.contiguous(), offsets, op


def segment_reduce(values: Any, offsets: Any, op: str, *, backend: Optional[str] = None) -> torch.Tensor:
    """Reduce ``values[offsets[s]:offsets[s+1]]`` for every segment ``s`` with ``op``.

    Args:
        values: ``[N]`` or ``[N, D]`` float16/bfloat16/float32/float64 tensor.
        offsets: ``[S+1]`` int64 (or int32) tensor, non-decreasing, from 0 to N.
        op: ``sum``, ``mean``, ``max``, ``min``, ``count`` or ``logmeanexp``.
        backend: force ``reference``/``cpu``/``triton``/``cuda`` (else
            ``THRESHER_BACKEND_SEGMENT_REDUCE`` or the device's default order).

    Returns:
        ``[S]`` (or ``[S, D]``) float32 (float64 for float64 values); int64 for ``count``.
        Empty segments give 0 for sum/count and NaN otherwise; NaN inputs propagate.
    """
    values, offsets, op = _validate(values, offsets, op)
    dev = device_type(values, offsets)
    ctx = {"dtype": values.dtype, "op": op, "ndim": values.dim()}
    return segment_reduce_op.dispatch(dev, values, offsets, op, backend=backend, ctx=ctx)


# ------------------------------------------------------------------ reference
@segment_reduce_op.register("reference", devices=("cpu", "cuda"), note="plain PyTorch (index_add_/scatter_reduce)")
def segment_reduce_reference(values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
    """Plain-PyTorch oracle. values [N] or [N,D], offsets [S+1] int64 (validated)."""
    squeeze = values.dim() == 1
    x = _as2d(values).to(_acc_dtype(values.dtype))  # [N, D]
    n, d = x.shape
    s = offsets.numel() - 1
    lengths = offsets[1:] - offsets[:-1]  # [S]
    dev = x.device
    if op == "count":
        out = lengths.reshape(s, 1).expand(s, d).contiguous()
        return out.reshape(s) if squeeze else out
    seg = torch.repeat_interleave(torch.arange(s, device=dev), lengths, output_size=n)  # [N]
    idx = seg.reshape(n, 1).expand(n, d)
    nan = torch.zeros((s, d), dtype=torch.int64, device=dev).index_add_(0, seg, torch.isnan(x).to(torch.int64))
    empty = (lengths == 0).reshape(s, 1).expand(s, d)
    cnt = lengths.reshape(s, 1).to(x.dtype)
    if op in ("sum", "mean"):
        out = torch.zeros((s, d), dtype=x.dtype, device=dev).index_add_(0, seg, x)
        if op == "mean":
            out = out / cnt  # 0/0 -> NaN for empty segments
    elif op in ("max", "min", "logmeanexp"):
        red = "amin" if op == "min" else "amax"
        fill = float("inf") if op == "min" else float("-inf")
        out = torch.full((s, d), fill, dtype=x.dtype, device=dev).scatter_reduce_(0, idx, x, red, include_self=True)
        if op == "logmeanexp":
            m = out
            finite_m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            e = torch.exp(x - finite_m[seg])
            ssum = torch.zeros((s, d), dtype=x.dtype, device=dev).index_add_(0, seg, e)
            lme = finite_m + torch.log(ssum) - torch.log(cnt)
            out = torch.where(torch.isfinite(m), lme, m)  # +inf stays +inf, all -inf stays -inf
        out = torch.where(empty, torch.full_like(out, float("nan")), out)
    else:  # pragma: no cover - validated
        raise ValueError(f"op: {op!r}")
    out = torch.where(nan > 0, torch.full_like(out, float("nan")), out)
    return out.reshape(s) if squeeze else out


# ---------------------------------------------------------------- cpu (_C)
def _np_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor; half types are viewed as int16 bit patterns."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy()
    return t.numpy()


@segment_reduce_op.register(
    "cpu", devices=("cpu",), available=cpu_has("segment_reduce"), note="C++ OpenMP over segments"
)
def segment_reduce_cpu(values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
    squeeze = values.dim() == 1
    x = _as2d(values)
    s, d = offsets.numel() - 1, x.shape[1]
    out = torch.empty((s, d), dtype=_out_dtype(values.dtype, op))
    _native.require_cpu().segment_reduce(
        _np_view(x), dtype_code(values.dtype), offsets.numpy(), SegmentOp.parse(op), out.numpy()
    )
    return out.reshape(s) if squeeze else out


# ------------------------------------------------------------------ triton
def _triton_supports(device: Optional[str] = None, dtype: Optional[torch.dtype] = None, **_: Any) -> list[str]:
    if dtype == torch.float64:
        return ["float64 is not supported by the Triton kernel (use cuda/cpu/reference)"]
    return []


@segment_reduce_op.register(
    "triton",
    devices=("cuda",),
    available=triton_has("segment_reduce"),
    supports=_triton_supports,
    note="program per segment part x column block (long segments split, no host sync)",
)
def segment_reduce_triton(values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
    squeeze = values.dim() == 1
    x = _as2d(values)
    s, d = offsets.numel() - 1, x.shape[1]
    if op == "count" or s == 0 or d == 0:
        return segment_reduce_reference(values, offsets, op)  # no data to read: lengths only
    out = torch.empty((s, d), dtype=torch.float32, device=x.device)
    _native.require_kernel("segment_reduce").segment_reduce(x, offsets, SegmentOp.parse(op), out)
    return out.reshape(s) if squeeze else out


# -------------------------------------------------------------------- cuda
@segment_reduce_op.register(
    "cuda",
    devices=("cuda",),
    available=cuda_has("segment_reduce"),
    note="warp per segment ([N]) / block per segment x 32 columns ([N,D])",
)
def segment_reduce_cuda(values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
    squeeze = values.dim() == 1
    x = _as2d(values)
    n, d = x.shape
    s = offsets.numel() - 1
    out = torch.empty((s, d), dtype=_out_dtype(values.dtype, op), device=x.device)
    if s > 0 and d > 0:
        with torch.cuda.device(x.device):
            stream = torch.cuda.current_stream(x.device).cuda_stream
            _native.require_cuda().segment_reduce(
                x.data_ptr(),
                dtype_code(values.dtype),
                offsets.data_ptr(),
                n,
                d,
                s,
                SegmentOp.parse(op),
                out.data_ptr(),
                stream,
            )
    return out.reshape(s) if squeeze else out
