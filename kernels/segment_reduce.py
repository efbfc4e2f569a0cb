"""Triton segment_reduce: ragged per-segment reduction of [N, D] values.

Algorithm: one program per (segment, block of BLOCK_D columns, part). With
SPLIT parts per segment (chosen from N and S only, so no host sync: few long
segments get many parts), part j reduces its BLOCK_N-aligned share of the rows
into a partial (sum / min / max, NaN count, and for logmeanexp the partial max
with sum exp(x - max)), and :func:`combine_partials` folds the SPLIT partials
on the device. A program reads ``offsets[s]`` and ``offsets[s+1]`` and walks its rows in
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
def _fill(OP: tl.constexpr):
    if OP == OP_MIN:
        fill = float("inf")
    elif OP == OP_SUM or OP == OP_MEAN:  # noqa: SIM109
        fill = 0.0
    else:  # max / logmeanexp
        fill = float("-inf")
    return fill


@triton.jit
def _reduce_rows(x_ptr, r0, r1, cols, cmask, D, OP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows r0..r1-1 of columns ``cols``: (sum | min | max, number of NaNs, sum exp(x - max) for LME)."""
    fill = _fill(OP)
    rows = tl.arange(0, BLOCK_N).to(tl.int64)
    acc = tl.full([BLOCK_N, BLOCK_D], fill, tl.float32)
    nans = tl.zeros([BLOCK_N, BLOCK_D], tl.int32)
    for i in range(r0, r1, BLOCK_N):
        r = i + rows
        m = (r < r1)[:, None] & cmask[None, :]
        v = tl.load(x_ptr + r[:, None] * D + cols[None, :], mask=m, other=fill).to(tl.float32)
        nans += (v != v).to(tl.int32)
        if OP == OP_SUM or OP == OP_MEAN:  # noqa: SIM109
            acc += v
        elif OP == OP_MIN:
            acc = tl.where(v < acc, v, acc)
        else:
            acc = tl.where(v > acc, v, acc)
    if OP == OP_SUM or OP == OP_MEAN:  # noqa: SIM109
        res = tl.sum(acc, axis=0)
    elif OP == OP_MIN:
        res = tl.min(acc, axis=0)
    else:
        res = tl.max(acc, axis=0)
    ssum = tl.zeros([BLOCK_D], tl.float32)
    if OP == OP_LME:
        msafe = tl.where(tl.abs(res) < float("inf"), res, 0.0)
        part = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for i in range(r0, r1, BLOCK_N):
            r = i + rows
            m = (r < r1)[:, None] & cmask[None, :]
            v = tl.load(x_ptr + r[:, None] * D + cols[None, :], mask=m, other=float("-inf")).to(tl.float32)
            part += tl.where(m, tl.exp(v - msafe[None, :]), 0.0)
        ssum = tl.sum(part, axis=0)
    return res, tl.sum(nans, axis=0), ssum


@triton.jit
def _segment_reduce_kernel(
    x_ptr,  # [N, D] values, row-major
    off_ptr,  # [S+1] int64 offsets
    out_ptr,  # [S, D] float32 (SPLIT == 1) or [S, SPLIT, D] partial results
    nan_ptr,  # [S, SPLIT, D] int32 NaN counts (SPLIT > 1)
    sum_ptr,  # [S, SPLIT, D] float32 sum exp(x - partial max) (SPLIT > 1, logmeanexp)
    D,
    OP: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    cblk = tl.program_id(1)
    part = tl.program_id(2).to(tl.int64)
    start = tl.load(off_ptr + s)
    end = tl.load(off_ptr + s + 1)
    cols = cblk * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    # part j of SPLIT takes a BLOCK_N-aligned share of the segment's rows
    share = tl.cdiv(tl.cdiv(end - start, SPLIT), BLOCK_N) * BLOCK_N
    r0 = tl.minimum(start + part * share, end)
    r1 = tl.minimum(r0 + share, end)
    res, nans, ssum = _reduce_rows(x_ptr, r0, r1, cols, cmask, D, OP, BLOCK_N, BLOCK_D)
    if SPLIT > 1:  # the caller combines the partials (combine_partials)
        o = (s * SPLIT + part) * D + cols
        tl.store(out_ptr + o, res, mask=cmask)
        tl.store(nan_ptr + o, nans, mask=cmask)
        if OP == OP_LME:
            tl.store(sum_ptr + o, ssum, mask=cmask)
    else:
        n = (end - start).to(tl.float32)
        if OP == OP_MEAN:
            res = res / n  # 0 / 0 -> NaN for an empty segment
        if OP == OP_LME:
            finite = tl.abs(res) < float("inf")
            res = tl.where(finite, tl.where(finite, res, 0.0) + tl.log(ssum) - tl.log(n), res)
        if OP != OP_SUM:
            res = tl.where(n > 0, res, float("nan"))
        res = tl.where(nans > 0, float("nan"), res)
        tl.store(out_ptr + s * D + cols, res, mask=cmask)


def combine_partials(
    part: torch.Tensor, nans: torch.Tensor, ssum: torch.Tensor, offsets: torch.Tensor, op: SegmentOp
) -> torch.Tensor:
    """[S, SPLIT, D] partials of the split kernel -> [S, D] (on the device, no host sync)."""
    n = (offsets[1:] - offsets[:-1]).to(torch.float32)[:, None]
    if op in (SegmentOp.SUM, SegmentOp.MEAN):
        res = part.sum(1)
        res = res / n if op == SegmentOp.MEAN else res
    elif op == SegmentOp.MIN:
        res = part.amin(1)
    else:
        res = part.amax(1)
    if op == SegmentOp.LOGMEANEXP:
        finite = torch.isfinite(res)
        m = torch.where(finite, res, torch.zeros_like(res))
        scale = torch.where(torch.isfinite(part), torch.exp(part - m[:, None, :]), torch.zeros_like(part))
        total = (ssum * scale).sum(1)
        res = torch.where(finite, m + torch.log(total) - torch.log(n), res)
    if op != SegmentOp.SUM:
        res = torch.where(n > 0, res, torch.full_like(res, float("nan")))
    return torch.where(nans.sum(1) > 0, torch.full_like(res, float("nan")), res)


def choose_split(n: int, s: int, block_n: int, target_programs: int = 2048) -> int:
    """Parts per segment: enough programs to fill the GPU when segments are few and long.

    Uses only N and S (known on the host without reading the offsets: no sync).
    """
    if s <= 0 or s >= target_programs:
        return 1
    per_seg_tiles = triton.cdiv(max(n, 1), s * block_n)  # mean segment length in row tiles
    return int(max(1, min(triton.next_power_of_2(triton.cdiv(target_programs, s)), per_seg_tiles, 1024)))


def segment_reduce(
    x: torch.Tensor, offsets: torch.Tensor, op: SegmentOp, out: torch.Tensor, split: int | None = None
) -> torch.Tensor:
    """x [N, D] contiguous (float32/float16/bfloat16), offsets [S+1] int64, out [S, D] float32.

    ``op`` is any SegmentOp but COUNT. Arguments are validated by thresher.ops.segment.
    ``split`` (default: :func:`choose_split`) cuts every segment into that many parts run
    by separate programs, combined afterwards: long segments no longer get one program.
    """
    if op == SegmentOp.COUNT:
        raise ValueError("op: count is computed from the offsets, not by the kernel")
    s = offsets.numel() - 1
    d = x.shape[1]
    n = x.shape[0]
    # small D: a tile packs many rows ([BLOCK_N, BLOCK_D] is contiguous memory when BLOCK_D >= D)
    block_d = min(triton.next_power_of_2(max(d, 1)), 64)
    # Tile rows: about the mean segment length (short segments waste fewer lanes), at most 1024 elements.
    mean_len = max(1, n // max(s, 1))
    block_n = max(16, min(1024 // block_d, triton.next_power_of_2(mean_len)))
    split = choose_split(n, s, block_n) if split is None else int(split)
    grid = (s, triton.cdiv(d, block_d), split)
    if split == 1:
        _segment_reduce_kernel[grid](
            x, offsets, out, out, out, d, OP=int(op), SPLIT=1, BLOCK_N=block_n, BLOCK_D=block_d
        )
        return out
    part = torch.empty((s, split, d), dtype=torch.float32, device=x.device)
    nans = torch.empty((s, split, d), dtype=torch.int32, device=x.device)
    ssum = torch.zeros((s, split, d), dtype=torch.float32, device=x.device)
    _segment_reduce_kernel[grid](
        x, offsets, part, nans, ssum, d, OP=int(op), SPLIT=split, BLOCK_N=block_n, BLOCK_D=block_d
    )
    out.copy_(combine_partials(part, nans, ssum, offsets, op))
    return out
