"""Triton segment_reduce: ragged per-segment reduction of [N, D] values.

Algorithm: one program per (segment, block of BLOCK_D columns). The program
reads ``offsets[s]`` and ``offsets[s+1]`` and walks the segment's rows in
tiles of [BLOCK_N, BLOCK_D], keeping a tile-shaped float32 accumulator (sum,
or running max/min) and a NaN counter, then reduces the tile over its rows.
``logmeanexp`` makes a second pass summing ``exp(x - max)``. Empty segments
give 0 (sum) or NaN (mean/max/min/logmeanexp); NaN inputs propagate through
the explicit counter. Work O(N * D), one read of the data (two for
logmeanexp), no atomics, deterministic. ``count`` needs no data and is
computed by the caller from the offsets. Inputs float32/float16/bfloat16,
accumulation and output float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from thresher.ops.abi import SegmentOp

# The reduction codes of thresher/abi.h as Triton constexprs (jit code may read only constexpr globals).
OP_SUM = tl.constexpr(int(SegmentOp.SUM))
OP_MEAN = tl.constexpr(int(SegmentOp.MEAN))
OP_MIN = tl.constexpr(int(SegmentOp.MIN))
OP_LME = tl.constexpr(int(SegmentOp.LOGMEANEXP))
# (`OP == A or OP == B` below, not `OP in (A, B)`: the jit compiler does not lower `in`; hence noqa SIM109.)


@triton.jit
def _segment_reduce_kernel(
    x_ptr,  # [N, D] values, row-major
    off_ptr,  # [S+1] int64 offsets
    out_ptr,  # [S, D] float32
    D,
    OP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    cblk = tl.program_id(1)
    start = tl.load(off_ptr + s)
    end = tl.load(off_ptr + s + 1)
    cols = cblk * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    rows = tl.arange(0, BLOCK_N)
    if OP == OP_MIN:
        fill = float("inf")
    elif OP == OP_SUM or OP == OP_MEAN:  # noqa: SIM109
        fill = 0.0
    else:  # max / logmeanexp
        fill = float("-inf")
    acc = tl.full([BLOCK_N, BLOCK_D], fill, tl.float32)
    nans = tl.zeros([BLOCK_N, BLOCK_D], tl.int32)
    for i in range(start, end, BLOCK_N):
        r = i + rows
        m = (r < end)[:, None] & cmask[None, :]
        v = tl.load(x_ptr + r[:, None] * D + cols[None, :], mask=m, other=fill).to(tl.float32)
        nans += (v != v).to(tl.int32)
        if OP == OP_SUM or OP == OP_MEAN:  # noqa: SIM109
            acc += v
        elif OP == OP_MIN:
            acc = tl.where(v < acc, v, acc)
        else:
            acc = tl.where(v > acc, v, acc)
    n = (end - start).to(tl.float32)
    has_nan = tl.sum(nans, axis=0) > 0
    if OP == OP_SUM or OP == OP_MEAN:  # noqa: SIM109
        res = tl.sum(acc, axis=0)
        if OP == OP_MEAN:
            res = res / n  # 0 / 0 -> NaN for an empty segment
    elif OP == OP_MIN:
        res = tl.min(acc, axis=0)
    else:
        res = tl.max(acc, axis=0)
    if OP == OP_LME:
        mx = res
        finite = tl.abs(mx) < float("inf")
        msafe = tl.where(finite, mx, 0.0)
        ssum = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for i in range(start, end, BLOCK_N):
            r = i + rows
            m = (r < end)[:, None] & cmask[None, :]
            v = tl.load(x_ptr + r[:, None] * D + cols[None, :], mask=m, other=float("-inf")).to(tl.float32)
            ssum += tl.where(m, tl.exp(v - msafe[None, :]), 0.0)
        lme = msafe + tl.log(tl.sum(ssum, axis=0)) - tl.log(n)
        res = tl.where(finite, lme, mx)
    if OP != OP_SUM:
        res = tl.where(n > 0, res, float("nan"))
    res = tl.where(has_nan, float("nan"), res)
    tl.store(out_ptr + s * D + cols, res, mask=cmask)


def segment_reduce(x: torch.Tensor, offsets: torch.Tensor, op: SegmentOp, out: torch.Tensor) -> torch.Tensor:
    """x [N, D] contiguous (float32/float16/bfloat16), offsets [S+1] int64, out [S, D] float32.

    ``op`` is any SegmentOp but COUNT. Arguments are validated by thresher.ops.segment.
    """
    if op == SegmentOp.COUNT:
        raise ValueError("op: count is computed from the offsets, not by the kernel")
    s = offsets.numel() - 1
    d = x.shape[1]
    n = x.shape[0]
    block_d = min(triton.next_power_of_2(max(d, 1)), 64)
    # Tile rows: about the mean segment length (short segments waste fewer lanes), at most 1024 elements.
    mean_len = max(1, n // max(s, 1))
    block_n = max(16, min(1024 // block_d, triton.next_power_of_2(mean_len)))
    grid = (s, triton.cdiv(d, block_d))
    _segment_reduce_kernel[grid](x, offsets, out, d, OP=int(op), BLOCK_N=block_n, BLOCK_D=block_d)
    return out
