"""Triton kernel of the random projection op ``out[B, dim] = x[B, D] @ P[row_offset:row_offset+D, :dim]``.

Algorithm: P (scaled by 1/sqrt(dim)) is never stored. Each program owns an
output tile of BLOCK_B rows x 128 columns and a contiguous range of the D
(reduction) axis (split-K); for each BLOCK_K slice it loads the x tile,
regenerates the matching [BLOCK_K, 128] tile of P in registers from the
Philox4x32-10 counters of csrc/include/thresher/philox.h (Rademacher: one
Philox call per row gives the 128 sign bits of the tile, so P is exactly +-1 in
the input dtype and ``tl.dot`` runs on tensor cores with fp32 accumulation;
Gaussian: Box-Muller per entry, dot in fp32) and accumulates
``tl.dot(x_tile, p_tile)``. Split-K partial sums go to a workspace
[S, B, dim] that the caller sums in a fixed order, so the result is
deterministic (no atomics). Work: O(B * D * dim) MACs + O(D * dim / 128)
Philox calls per batch tile (O(D * dim) for Gaussian); memory: x is read
ceil(dim / 128) times (mostly from L2), the output once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from thresher.ops.abi import CONSTANTS

# The Philox layout of philox.h (thresher.ops.abi.CONSTANTS) as Triton constexprs.
BLOCK_N = tl.constexpr(CONSTANTS["PHILOX_RADEMACHER_BLOCK"])  # one Philox call covers a tile row
GAUSSIAN_BLOCK = tl.constexpr(CONSTANTS["PHILOX_GAUSSIAN_BLOCK"])
STREAM_RADEMACHER = tl.constexpr(CONSTANTS["PHILOX_STREAM_RADEMACHER"])
STREAM_GAUSSIAN = tl.constexpr(CONSTANTS["PHILOX_STREAM_GAUSSIAN"])
ROUND_A = tl.constexpr(CONSTANTS["PHILOX_ROUND_A"])
ROUND_B = tl.constexpr(CONSTANTS["PHILOX_ROUND_B"])
KEY_A = tl.constexpr(CONSTANTS["PHILOX_KEY_A"])
KEY_B = tl.constexpr(CONSTANTS["PHILOX_KEY_B"])


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    # Philox4x32-10, identical to thresher::philox::philox4x32_10.
    for _ in tl.static_range(10):
        _c0, _c2 = c0, c2
        c0 = tl.umulhi(ROUND_B, _c2) ^ c1 ^ k0
        c2 = tl.umulhi(ROUND_A, _c0) ^ c3 ^ k1
        c1 = tl.mul(ROUND_B, _c2, sanitize_overflow=False)
        c3 = tl.mul(ROUND_A, _c0, sanitize_overflow=False)
        k0 = tl.add(k0, KEY_A, sanitize_overflow=False)
        k1 = tl.add(k1, KEY_B, sanitize_overflow=False)
    return c0, c1, c2, c3


# seed halves and offsets may equal 1: never let Triton specialise them into constexprs
@triton.jit(do_not_specialize=["B", "D", "seed_lo", "seed_hi", "row_offset", "k_per_split"])
def _projection_kernel(
    x_ptr,  # [B, D] fp32/fp16/bf16, strides (stride_xb, stride_xd)
    ws_ptr,  # [S, B, dim] fp32 workspace (split-K partial sums, unscaled)
    B,
    D,
    dim,
    stride_xb,
    stride_xd,
    seed_lo,
    seed_hi,  # the 64-bit seed as two 32-bit halves
    row_offset,  # global row of x[:, 0]; row_offset + D < 2**63
    k_per_split,  # rows of D per split (multiple of BLOCK_K)
    GAUSSIAN: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    offs_n = pid_n * BLOCK_N + cols
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    k_start = pid_s.to(tl.int64) * k_per_split
    k_end = tl.minimum(k_start + k_per_split, D)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    b_mask = offs_b < B
    row_base = offs_b.to(tl.int64) * stride_xb
    base = row_offset.to(tl.int64)
    for kk in range(k_start, k_end, BLOCK_K):
        offs_k = kk + tl.arange(0, BLOCK_K).to(tl.int64)
        k_mask = offs_k < k_end
        xt = tl.load(
            x_ptr + row_base[:, None] + offs_k[None, :] * stride_xd, mask=b_mask[:, None] & k_mask[None, :], other=0.0
        )
        grow = base + offs_k
        c0 = (grow & 0xFFFFFFFF).to(tl.uint32)
        c1 = ((grow >> 32) & 0xFFFFFFFF).to(tl.uint32)
        if GAUSSIAN:
            # per entry: counter (row, col // 4), words (a, b) for the Box-Muller pair
            cg = offs_n // GAUSSIAN_BLOCK
            c0g = c0[:, None] + tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.uint32)
            c1g = c1[:, None] + tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.uint32)
            c2g = cg.to(tl.uint32)[None, :] + tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.uint32)
            c3g = tl.full((BLOCK_K, BLOCK_N), STREAM_GAUSSIAN, tl.uint32)
            w0, w1, w2, w3 = _philox(c0g, c1g, c2g, c3g, k0, k1)
            idx = (offs_n % GAUSSIAN_BLOCK)[None, :]
            a = tl.where(idx < 2, w0, w2)
            b = tl.where(idx < 2, w1, w3)
            u1 = ((a >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08
            u2 = (b >> 8).to(tl.float32) * 5.9604644775390625e-08
            r = tl.sqrt(-2.0 * tl.log(u1))
            t = 6.283185307179586 * u2
            p = tl.where((idx % 2) == 0, r * tl.cos(t), r * tl.sin(t))
            p = tl.where(k_mask[:, None], p, 0.0)
            acc += tl.dot(xt.to(tl.float32), p, input_precision="ieee")
        else:
            c2 = tl.zeros((BLOCK_K,), dtype=tl.uint32) + pid_n.to(tl.uint32)
            c3 = tl.full((BLOCK_K,), STREAM_RADEMACHER, tl.uint32)
            w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
            q = (cols // 32)[None, :]
            w = tl.where(q == 0, w0[:, None], tl.where(q == 1, w1[:, None], tl.where(q == 2, w2[:, None], w3[:, None])))
            bit = (w >> (cols % 32).to(tl.uint32)[None, :]) & 1
            p = tl.where(bit == 1, -1.0, 1.0)
            if DOT_FP32:
                acc += tl.dot(xt.to(tl.float32), p, input_precision="ieee")
            else:
                acc += tl.dot(xt, p.to(xt.dtype))
    s_off = pid_s.to(tl.int64) * B * dim
    out_ptrs = ws_ptr + s_off + offs_b.to(tl.int64)[:, None] * dim + offs_n[None, :]
    tl.store(out_ptrs, acc, mask=b_mask[:, None] & (offs_n < dim)[None, :])


def random_project(x, dim: int, seed: int, gaussian: bool, row_offset: int, scale: float, *, splits: int | None = None):
    """x: [B, D] (fp32/fp16/bf16, CUDA or CPU under TRITON_INTERPRET=1) -> fp32 [B, dim].

    Arguments are validated by thresher.ops.random_project."""
    B, D = x.shape
    interpret = x.device.type == "cpu"
    BLOCK_B = 16 if interpret else (64 if B <= 64 else 128)
    BLOCK_K = 16 if interpret else (32 if gaussian else 64)
    nb = triton.cdiv(B, BLOCK_B)
    nn = triton.cdiv(dim, BLOCK_N.value)
    if splits is None:
        if interpret:
            splits = 2 if D > 2 * BLOCK_K else 1
        else:
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            splits = max(1, min(triton.cdiv(2 * sms, nb * nn), triton.cdiv(D, BLOCK_K * 4), 64))
    k_per_split = triton.cdiv(triton.cdiv(D, splits), BLOCK_K) * BLOCK_K
    splits = triton.cdiv(D, k_per_split)
    ws = torch.empty((splits, B, dim), device=x.device, dtype=torch.float32)
    grid = (nn, nb, splits)
    _projection_kernel[grid](
        x,
        ws,
        B,
        D,
        dim,
        x.stride(0),
        x.stride(1),
        seed & 0xFFFFFFFF,
        (seed >> 32) & 0xFFFFFFFF,
        row_offset,
        k_per_split,
        GAUSSIAN=bool(gaussian),
        DOT_FP32=(x.dtype == torch.float32),
        BLOCK_B=BLOCK_B,
        BLOCK_K=BLOCK_K,
        num_warps=4 if interpret else 8,
        num_stages=1 if interpret else 3,
    )
    out = ws[0] if splits == 1 else ws.sum(dim=0)
    return out.mul_(scale)
