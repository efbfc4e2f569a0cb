"""Triton kernels of ``thresher.ops.token_loss``: fused LM head + online log-sum-exp.

Algorithm. ``partial_states`` launches one program per (block of BLOCK_M
tokens, split of the vocabulary). A program walks its split in tiles of
BLOCK_V vocabulary rows; each [BLOCK_M x BLOCK_V] tile of logits is built in
fp32 registers by ``tl.dot`` over the hidden size in BLOCK_K slices and folded
at once into the per-token online state over the non-target entries:
``m`` = running max (the target's entry enters as the row-wise z_y, so m >= z_y
within the target's split), ``s = sum e^(z-m)``, ``t = sum e^(z-m)(z-m)``,
``q = sum e^(2(z-m))`` and ``r = #{z > z_y}``. The states of the splits ([S, M]
each) are merged and finalised in torch by :mod:`thresher.ops.token_loss`.
``target_logits`` computes z_y = <h, W[y]> row-wise with fp32 accumulation.
Logits never reach global memory: O(M V H) FLOPs, O(M V) exp, O(S M) extra
memory. fp32 inputs use IEEE fp32 dot products (no TF32); fp16/bf16 inputs use
tensor-core dots with fp32 accumulation.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _target_logit_kernel(H, W, T, ZY, n_tok, hid, stride_h, stride_w, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    # H: [n_tok, hid], W: [V, hid], T: [n_tok] int64 -> ZY: [n_tok] fp32
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < n_tok
    tgt = tl.load(T + rows, mask=rmask, other=0)
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, hid, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        km = rmask[:, None] & (ks[None, :] < hid)
        a = tl.load(H + rows[:, None].to(tl.int64) * stride_h + ks[None, :], mask=km, other=0.0)
        b = tl.load(W + tgt[:, None] * stride_w + ks[None, :], mask=km, other=0.0)
        acc += tl.sum(a.to(tl.float32) * b.to(tl.float32), axis=1)
    tl.store(ZY + rows, acc, mask=rmask)


@triton.jit
def _partial_kernel(
    H,
    W,
    T,
    ZY,
    PM,
    PS,
    PT,
    PQ,
    PR,
    n_tok,
    vocab,
    hid,
    split,
    stride_h,
    stride_w,
    BLOCK_M: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NEED_T: tl.constexpr,
    NEED_Q: tl.constexpr,
    NEED_R: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # H: [n_tok, hid]; W: [vocab, hid]; T: [n_tok] int64; ZY: [n_tok] fp32
    # PM/PS/PT/PQ: [n_split, n_tok] fp32; PR: [n_split, n_tok] int32
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < n_tok
    tgt = tl.load(T + rows, mask=rmask, other=-1)
    zy = tl.load(ZY + rows, mask=rmask, other=0.0)
    h_rows = H + rows[:, None].to(tl.int64) * stride_h
    v_lo = pid_s * split
    v_hi = tl.minimum(v_lo + split, vocab)
    m = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_M], dtype=tl.float32)
    t = tl.zeros([BLOCK_M], dtype=tl.float32)
    q = tl.zeros([BLOCK_M], dtype=tl.float32)
    r = tl.zeros([BLOCK_M], dtype=tl.int32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        cmask = cols < v_hi
        w_cols = W + cols[None, :].to(tl.int64) * stride_w
        acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
        for k0 in range(0, hid, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < hid
            a = tl.load(h_rows + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(w_cols + ks[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
            if UPCAST:  # interpreter only: its tl.dot mishandles bf16 (exact: bf16 products fit fp32)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        is_t = cols[None, :] == tgt[:, None]
        valid = cmask[None, :] & rmask[:, None]
        z = tl.where(is_t, zy[:, None], acc)
        z = tl.where(valid, z, float("-inf"))
        if NEED_R:
            r += tl.sum((z > zy[:, None]).to(tl.int32), axis=1)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        d = tl.where(m == float("-inf"), 0.0, m - m_safe)
        zc = z - m_safe[:, None]
        keep = valid & (cols[None, :] != tgt[:, None])
        e = tl.where(keep, tl.exp(zc), 0.0)
        if NEED_T:
            t = alpha * (t + d * s) + tl.sum(e * tl.where(keep, zc, 0.0), axis=1)
        if NEED_Q:
            q = q * alpha * alpha + tl.sum(e * e, axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        m = m_new
    off = pid_s * n_tok + rows
    tl.store(PM + off, m, mask=rmask)
    tl.store(PS + off, s, mask=rmask)
    if NEED_T:
        tl.store(PT + off, t, mask=rmask)
    if NEED_Q:
        tl.store(PQ + off, q, mask=rmask)
    if NEED_R:
        tl.store(PR + off, r, mask=rmask)


def _interpret(x: torch.Tensor) -> bool:
    return x.device.type != "cuda"


def _config(dtype: torch.dtype, hid: int, interpret: bool):
    """(BLOCK_M, BLOCK_V, BLOCK_K, num_warps, num_stages). Untuned on GPU (no GPU was available)."""
    if interpret:
        return 16, 32, 16, 1, 1
    if dtype == torch.float32:
        return 64, 64, 32, 4, 3
    return 128, 128, 64, 8, 3


def target_logits(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """zy[i] = <h[i], w[targets[i]]> in fp32. h: [M,H] contiguous, w: [V,H] with stride(1) == 1."""
    m_tok, hid = h.shape
    zy = torch.empty(m_tok, dtype=torch.float32, device=h.device)
    bm = 16 if _interpret(h) else 32
    bk = 16 if _interpret(h) else min(256, triton.next_power_of_2(hid))
    _target_logit_kernel[(triton.cdiv(m_tok, bm),)](
        h, w, targets, zy, m_tok, hid, h.stride(0), w.stride(0), BLOCK_M=bm, BLOCK_K=bk
    )
    return zy


def partial_states(h, w, targets, zy, *, entropy: bool, el2n: bool, rank: bool, split_size=None):
    """Per-split online states, each [S, M]: (m, s, t|None, q|None, r|None).

    h: [M,H] contiguous; w: [V,H] with stride(1) == 1; targets: [M] int64; zy: [M] fp32.
    split_size: vocabulary rows per split (None: enough splits to fill the GPU).
    """
    m_tok, hid = h.shape
    vocab = w.shape[0]
    interp = _interpret(h)
    bm, bv, bk, warps, stages = _config(h.dtype, hid, interp)
    grid_m = triton.cdiv(m_tok, bm)
    if split_size is None:
        if interp:
            split_size = vocab
        else:
            sms = torch.cuda.get_device_properties(h.device).multi_processor_count
            want = max(1, math.ceil(2 * sms / grid_m))
            split_size = max(bv * 4, triton.cdiv(vocab, want))
            split_size = triton.cdiv(split_size, bv) * bv
    n_split = triton.cdiv(vocab, split_size)
    dev = h.device
    pm = torch.empty((n_split, m_tok), dtype=torch.float32, device=dev)
    ps = torch.empty_like(pm)
    pt = torch.empty_like(pm) if entropy else pm
    pq = torch.empty_like(pm) if el2n else pm
    pr = torch.empty((n_split, m_tok), dtype=torch.int32, device=dev) if rank else pm
    kw = {} if interp else {"num_warps": warps, "num_stages": stages}
    _partial_kernel[(grid_m, n_split)](
        h,
        w,
        targets,
        zy,
        pm,
        ps,
        pt,
        pq,
        pr,
        m_tok,
        vocab,
        hid,
        split_size,
        h.stride(0),
        w.stride(0),
        BLOCK_M=bm,
        BLOCK_V=bv,
        BLOCK_K=bk,
        NEED_T=entropy,
        NEED_Q=el2n,
        NEED_R=rank,
        IEEE=(h.dtype == torch.float32 or interp),
        UPCAST=(interp and h.dtype == torch.bfloat16),
        **kw,
    )
    return pm, ps, (pt if entropy else None), (pq if el2n else None), (pr if rank else None)
