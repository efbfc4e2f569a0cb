"""Triton topk: radix-select threshold, then an order-preserving compaction.

Algorithm: each score (float32; float16/bfloat16 are widened exactly) maps to
a signed int32 order key (IEEE bits with the magnitude bits of negatives
flipped; -0 -> +0; bitwise-not for largest=False; NaN -> INT32_MIN, the worst),
so "better" is "larger key". Four 8-bit MSD radix passes find the exact key T
of the k-th best score: each pass runs a histogram kernel (per-program
``tl.histogram`` of the digit of the keys matching the prefix found so far,
then 256 atomic adds into a global histogram) and the host picks the digit by
a suffix scan of 256 counts. A count kernel then gives, per program, the
number of keys > T and == T; exclusive prefix sums of those give every
program its output offsets, and the compaction kernel writes, in index order,
all indices with key > T followed by the first ``need`` indices with key == T
(``tl.cumsum`` ranks inside a program), so ties go to the lower index. The k
winners are ordered by a stable sort of their keys (descending). Work O(N)
per pass (6 reads of the input) + O(k log k); no data-dependent output size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
INT32_MIN = -(2**31)


def _i32(v: int) -> int:
    """An unsigned 32-bit value as the signed int32 with the same bits."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


@triton.jit
def _order_key(x, LARGEST: tl.constexpr):
    """Signed int32 order key of float32 scores (larger = better, NaN = INT32_MIN)."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    key = b ^ ((b >> 31) & 0x7FFFFFFF)
    if not LARGEST:
        key = ~key
    return tl.where(x != x, -2147483648, key)


@triton.jit
def _hist_kernel(x_ptr, n, hist_ptr, prefix, pmask, SHIFT: tl.constexpr, LARGEST: tl.constexpr, BLOCK: tl.constexpr):
    # x [n] scores; hist [256] int32 (accumulated); prefix/pmask: bits of the unsigned key fixed so far.
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    key = _order_key(x, LARGEST)
    ukey = key ^ -2147483648  # unsigned order (as bits)
    match = m & ((ukey & pmask) == prefix)
    dig = (ukey >> SHIFT) & 255
    dig = tl.where(match, dig, 256)  # unmatched lanes go to an ignored bin
    h = tl.histogram(dig, 512)
    bins = tl.arange(0, 512)
    tl.atomic_add(hist_ptr + bins, h, mask=bins < 256)


@triton.jit
def _count_kernel(x_ptr, n, thr, cnt_ptr, nprog, LARGEST: tl.constexpr, BLOCK: tl.constexpr):
    # cnt [2 * nprog] int32: keys > thr, then keys == thr, per program.
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    key = _order_key(x, LARGEST)
    gt = (m & (key > thr)).to(tl.int32)
    eq = (m & (key == thr)).to(tl.int32)
    tl.store(cnt_ptr + pid, tl.sum(gt, axis=0))
    tl.store(cnt_ptr + nprog + pid, tl.sum(eq, axis=0))


@triton.jit
def _compact_kernel(
    x_ptr, n, thr, base_ptr, nprog, n_gt, need, out_idx_ptr, out_key_ptr, LARGEST: tl.constexpr, BLOCK: tl.constexpr
):
    # base [2 * nprog] exclusive prefix sums of cnt; out_idx [k] int64, out_key [k] int32.
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    key = _order_key(x, LARGEST)
    gt = (m & (key > thr)).to(tl.int32)
    eq = (m & (key == thr)).to(tl.int32)
    pos_gt = tl.load(base_ptr + pid) + tl.cumsum(gt, axis=0) - gt
    tl.store(out_idx_ptr + pos_gt, offs.to(tl.int64), mask=gt > 0)
    tl.store(out_key_ptr + pos_gt, key, mask=gt > 0)
    rank_eq = tl.load(base_ptr + nprog + pid) + tl.cumsum(eq, axis=0) - eq
    take = (eq > 0) & (rank_eq < need)
    tl.store(out_idx_ptr + n_gt + rank_eq, offs.to(tl.int64), mask=take)
    tl.store(out_key_ptr + n_gt + rank_eq, key, mask=take)


def topk(scores: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Indices [k] int64 of the k best ``scores`` [N] (float32/float16/bfloat16, N < 2**31),
    best first, ties by lower index, NaN last. 1 <= k <= N (validated by thresher.ops.topk)."""
    n = scores.numel()
    dev = scores.device
    nprog = triton.cdiv(n, BLOCK)
    grid = (nprog,)
    hist = torch.empty(256, dtype=torch.int32, device=dev)
    prefix = 0  # unsigned key bits fixed so far
    pmask = 0
    need = k
    for shift in (24, 16, 8, 0):
        hist.zero_()
        _hist_kernel[grid](scores, n, hist, _i32(prefix), _i32(pmask), SHIFT=shift, LARGEST=largest, BLOCK=BLOCK)
        h = hist.cpu().tolist()
        cum = 0
        digit = 0
        for dgt in range(255, -1, -1):
            if cum + h[dgt] >= need:
                digit = dgt
                break
            cum += h[dgt]
        need -= cum
        prefix |= digit << shift
        pmask |= 0xFF << shift
    thr = _i32(prefix ^ 0x80000000)  # signed key of the k-th best
    cnt = torch.empty(2 * nprog, dtype=torch.int32, device=dev)
    _count_kernel[grid](scores, n, thr, cnt, nprog, LARGEST=largest, BLOCK=BLOCK)
    cnt64 = cnt.to(torch.int64)
    base = torch.empty_like(cnt64)
    base[:nprog] = torch.cumsum(cnt64[:nprog], 0) - cnt64[:nprog]
    base[nprog:] = torch.cumsum(cnt64[nprog:], 0) - cnt64[nprog:]
    n_gt = k - need
    out_idx = torch.empty(k, dtype=torch.int64, device=dev)
    out_key = torch.empty(k, dtype=torch.int32, device=dev)
    _compact_kernel[grid](scores, n, thr, base, nprog, n_gt, need, out_idx, out_key, LARGEST=largest, BLOCK=BLOCK)
    perm = torch.argsort(out_key, descending=True, stable=True)
    return out_idx[perm]
