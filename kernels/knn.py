"""Tiled exact kNN on the GPU (Triton): matmul tiles fused with a per-tile top-k.

Algorithm. Stage 1 (this kernel): the grid is (ceil(Q/BM), ceil(N/BN)); each
program computes a BM x BN tile of scores S = Q_blk @ B_blk^T with ``tl.dot``
over d in BK chunks (ip: q.b; l2: 2 q.b - |b|^2, larger is nearer), masks
padding columns and self matches to -inf, then extracts the tile's KP best
columns per row by KP rounds of (row max, lowest column index holding it, mask
it out), so ties go to the lower index. It writes candidates [Q, T, KP] (T =
number of base tiles). Stage 2 (in :mod:`thresher.ops.knn`) is a stable
descending sort of the T*KP candidates per query, laid out in increasing tile
order, which keeps the lower-index-first tie rule across tiles.
Complexity: O(Q N d) multiply-adds + O(Q N KP) comparisons for the
extraction; memory O(Q (N/BN) KP) candidates, never Q x N.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def knn_tile_kernel(
    q_ptr,  # [Q, D] float (row-major)
    b_ptr,  # [N, D] float (row-major)
    bn_ptr,  # [N] float32 squared norms of base rows (read when L2)
    out_v_ptr,  # [Q, T, KP] float32 candidate scores (larger is nearer)
    out_i_ptr,  # [Q, T, KP] int64 candidate base indices (-1 when none)
    Q,
    N,
    D,
    T,
    query_offset,
    L2: tl.constexpr,
    EXCLUDE_SELF: tl.constexpr,
    KP: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    rmask = rows < Q
    cmask = cols < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < D
        a = tl.load(q_ptr + rows[:, None] * D + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptr + cols[None, :] * D + ks[:, None], mask=cmask[None, :] & kmask[:, None], other=0.0)
        if IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
    if L2:
        bn = tl.load(bn_ptr + cols, mask=cmask, other=0.0)
        acc = 2.0 * acc - bn[None, :]
    neg = float("-inf")
    valid = cmask[None, :] & rmask[:, None]
    if EXCLUDE_SELF:
        valid = valid & (cols[None, :] != (rows[:, None] + query_offset))
    s = tl.where(valid, acc, neg)
    big = 2147483647
    colb = tl.broadcast_to(cols[None, :], (BM, BN))
    base_out = rows * (T * KP) + pid_n * KP
    for r in tl.static_range(KP):
        m = tl.max(s, axis=1)
        j = tl.min(tl.where(s == m[:, None], colb, big), axis=1)
        has = m > neg
        tl.store(out_v_ptr + base_out + r, m, mask=rmask)
        tl.store(out_i_ptr + base_out + r, tl.where(has, j, -1).to(tl.int64), mask=rmask)
        s = tl.where(colb == j[:, None], neg, s)
