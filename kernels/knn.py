"""Tiled exact kNN on the GPU (Triton): matmul tiles fused with a running top-k.

Algorithm. The grid is ceil(Q/BM) programs; each owns BM query rows and walks
the base in BN-column tiles. Per tile it computes S = Q_blk @ B_blk^T with
``tl.dot`` over d in BK chunks (ip: q.b; l2: 2 q.b - |b|^2, larger is nearer)
and packs every score with its column into one int64 key: the high 32 bits are
the float's bits mapped to a signed order, the low 32 bits are
``2^32 - 1 - column``, so a larger key means a larger score, then a lower
index (the tie rule). Padding and self matches get the smallest key. The
program keeps a sorted running buffer of the KB best keys per row in registers
(KB = a power of two >= k, KB <= BN). A tile is merged only when some row's
best tile key beats that row's current KB-th key (after the first tiles most
are skipped): ``tl.topk`` takes the tile's KB best keys per row (bitonic
top-k), the elementwise max of the running buffer (descending) and the flipped
tile top-k (ascending) holds the KB best of both (bitonic split), and a bitonic
merge sorts it again. Only the KB candidate indices per row go to global
memory; :mod:`thresher.ops.knn` re-ranks them with exact fp32 dot products.
All addresses are int64 (``rows * D`` overflows int32 at 2^31 elements).
Complexity: O(Q N d) multiply-adds + O(Q N log^2 KB) comparisons in the worst
case (far less once the threshold skips tiles); memory O(Q KB), never Q x N.
"""

from __future__ import annotations

import triton
import triton.language as tl

MIN_KEY = -9223372036854775808  # below every packed key: padding / excluded


@triton.jit
def row_offsets(start, n: tl.constexpr, stride):
    """int64 element offsets of rows start..start+n-1 of a row-major matrix (never int32 math)."""
    rows = start.to(tl.int64) + tl.arange(0, n).to(tl.int64)
    return rows * stride.to(tl.int64)


@triton.jit
def row_offsets_kernel(out_ptr, start, stride, N: tl.constexpr):
    """Test hook: writes row_offsets(start, N, stride) into an int64 buffer."""
    tl.store(out_ptr + tl.arange(0, N), row_offsets(start, N, stride))


@triton.jit
def pack_keys(s, cols, valid):
    """int64 keys ordered by (score desc, column asc); invalid entries get MIN_KEY."""
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 == +0.0
    fb = s.to(tl.int32, bitcast=True)
    hi = tl.where(fb < 0, fb ^ 0x7FFFFFFF, fb).to(tl.int64)
    low = (tl.full((), 1, tl.int64) << 32) - 1
    key = (hi << 32) | (low - cols.to(tl.int64))
    return tl.where(valid, key, MIN_KEY)


@triton.jit
def unpack_index(key):
    """Column of a packed key, -1 for MIN_KEY."""
    low = (tl.full((), 1, tl.int64) << 32) - 1
    return tl.where(key == MIN_KEY, -1, low - (key & low))


@triton.jit
def _score_tile(
    q_ptr,
    b_ptr,
    rows,
    cols,
    rmask,
    cmask,
    D,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    IEEE: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
):
    qoff = rows.to(tl.int64) * D
    boff = cols.to(tl.int64) * D
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, D, BK):
        ks = k0 + tl.arange(0, BK)
        kmask = ks < D
        a = tl.load(q_ptr + qoff[:, None] + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptr + boff[None, :] + ks[:, None], mask=cmask[None, :] & kmask[:, None], other=0.0)
        if UPCAST:  # the CPU interpreter's bf16 tl.dot is wrong (Triton 3.x): dot in fp32 there
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        elif IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        elif TF32:
            acc += tl.dot(a, b, input_precision="tf32")
        else:
            acc += tl.dot(a, b)
    return acc


@triton.jit
def knn_topk_kernel(
    q_ptr,  # [Q, D] float (row-major, contiguous)
    b_ptr,  # [N, D] float (row-major, contiguous)
    bn_ptr,  # [N] float32 squared norms of base rows (read when L2)
    out_i_ptr,  # [Q, KB] int64 candidate base indices, best first (-1 when none)
    Q,
    N,
    D,
    query_offset,
    L2: tl.constexpr,
    EXCLUDE_SELF: tl.constexpr,
    KB: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    IEEE: tl.constexpr,
    TF32: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM).to(tl.int64)
    rmask = rows < Q
    best = tl.full((BM, KB), MIN_KEY, tl.int64)  # descending
    for n0 in range(0, N, BN):
        cols = n0 + tl.arange(0, BN).to(tl.int64)
        cmask = cols < N
        s = _score_tile(q_ptr, b_ptr, rows, cols, rmask, cmask, D, BM, BN, BK, IEEE, TF32, UPCAST)
        if L2:
            bn = tl.load(bn_ptr + cols, mask=cmask, other=0.0)
            s = 2.0 * s - bn[None, :]
        valid = cmask[None, :] & rmask[:, None]
        if EXCLUDE_SELF:
            valid = valid & (cols[None, :] != (rows[:, None] + query_offset))
        keys = pack_keys(s, cols[None, :], valid)
        thr = tl.min(best, axis=1)
        need = tl.max((tl.max(keys, axis=1) > thr).to(tl.int32), axis=0)
        if need > 0:
            top = tl.topk(keys, KB)  # [BM, KB] descending
            best = tl.maximum(best, tl.flip(top, 1))  # bitonic: holds the KB best of both
            best = tl.bitonic_merge(best, descending=True)
    out = out_i_ptr + rows[:, None] * KB + tl.arange(0, KB).to(tl.int64)[None, :]
    tl.store(out, unpack_index(best), mask=rmask[:, None])
