"""Triton kernels of ``thresher.ops.token_loss``: fused LM head + online log-sum-exp.

Algorithm. ``partial_states`` launches one program per (block of BLOCK_N
tokens, split of the vocabulary). The S splits are contiguous, balanced ranges
of vocabulary rows (split s covers rows [s V / S, (s+1) V / S), never empty).
A program walks its range in tiles of BLOCK_V rows; each [BLOCK_N x BLOCK_V]
tile of logits is built in fp32 registers by ``tl.dot`` over the hidden size in
BLOCK_H slices and folded at once into the per-token online state over the
non-target entries: ``m`` = running max (the target's entry enters as the
row-wise z_y, so m >= z_y within the target's split), ``s = sum e^(z-m)``,
``t = sum e^(z-m)(z-m)``, ``q = sum e^(2(z-m))`` and ``r = #{z > z_y}``. The
states of the splits ([S, M] each) are merged and finalised in torch by
:mod:`thresher.ops.token_loss` (the combine step). ``target_logits`` computes
z_y = <h, W[y]> row-wise with fp32 accumulation. Logits never reach global
memory: O(M V H) FLOPs, O(M V) exp, O(S M) extra memory with S capped so that
the states stay under 1% of the bf16 logits (:func:`max_splits`).

Precision. fp16/bf16 inputs: tensor-core dots with fp32 accumulation (the
products of two half values are exact in fp32). fp32 inputs: IEEE fp32 dots by
default; TF32 tensor cores only when the caller passes ``allow_tf32=True``.
(The interpreter computes every dot in fp32 or better, TF32 included.)

Tuning. On a GPU, ``triton.autotune`` picks the block sizes (BLOCK_N tokens,
BLOCK_V vocabulary tile, BLOCK_H hidden slice), the warps, the pipeline stages
and the vocabulary split (WAVES: target programs per SM, which sets S) per
(H, V, fields requested, dtypes), from a short list per precision
(:data:`GPU_CONFIGS`). Problems too small to repay tuning (:data:`TUNE_MIN_WORK`)
use the first config of the list. Under ``TRITON_INTERPRET=1`` (CPU tensors,
tests) there is no tuning: the single small :data:`INTERPRET_CONFIG` is used,
since timing the interpreter is slow and says nothing about a GPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl


class KernelConfig(NamedTuple):
    """One launch configuration of ``_partial_kernel``."""

    block_n: int  # tokens per program
    block_v: int  # vocabulary rows per tile
    block_h: int  # hidden slice per tl.dot
    num_warps: int
    num_stages: int
    waves: int  # vocabulary split: aim for waves x SMs programs (0 = no split)

    def meta(self) -> dict:
        return {"BLOCK_N": self.block_n, "BLOCK_V": self.block_v, "BLOCK_H": self.block_h, "WAVES": self.waves}


# The one configuration used under the interpreter (CPU tensors, tests): no autotuning there.
INTERPRET_CONFIG = KernelConfig(16, 32, 16, 1, 1, 0)

# GPU candidates per precision; the first of each list is the untuned default (small problems).
# Shared memory per stage: (BLOCK_N + BLOCK_V) x BLOCK_H x itemsize (at most 48 KiB here, so
# 4 stages fit Hopper's 227 KiB); configs that do not fit a smaller GPU are dropped by the
# autotuner (OutOfResources).
GPU_CONFIGS: dict[str, list[KernelConfig]] = {
    "half": [
        KernelConfig(128, 128, 64, 8, 3, 1),
        KernelConfig(128, 256, 64, 8, 3, 1),
        KernelConfig(128, 128, 64, 8, 4, 2),
        KernelConfig(64, 128, 64, 4, 4, 2),
    ],
    "tf32": [
        KernelConfig(128, 128, 32, 8, 3, 1),
        KernelConfig(128, 64, 32, 4, 4, 2),
        KernelConfig(64, 128, 32, 4, 4, 2),
    ],
    "ieee": [
        KernelConfig(64, 64, 32, 4, 3, 2),
        KernelConfig(128, 64, 32, 8, 3, 1),
        KernelConfig(64, 128, 32, 8, 3, 2),
    ],
}
# Below this many multiply-adds (M x V x H) a call uses the default config without tuning.
TUNE_MIN_WORK = 1 << 32
# Vocabulary rows per split at least (bounds the [S, M] states: 5 fp32 states per token and
# split against 2 bytes per logit = 20 S / (2 V) <= 1% when V / S >= 1000).
MIN_ROWS_PER_SPLIT = 1024


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
def _logit_tile(
    h_rows,
    w_cols,
    rmask,
    cmask,
    hid,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    EVEN_H: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """[BLOCK_N, BLOCK_V] fp32 logits h_rows . w_cols^T over the whole hidden size."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for k0 in range(0, hid, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        if EVEN_H:
            a = tl.load(h_rows + ks[None, :], mask=rmask[:, None], other=0.0)
            b = tl.load(w_cols + ks[:, None], mask=cmask[None, :], other=0.0)
        else:
            kmask = ks < hid
            a = tl.load(h_rows + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(w_cols + ks[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        if UPCAST:  # interpreter only: its tl.dot mishandles bf16 (exact: half products fit fp32)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if PRECISION == "ieee":
            acc = tl.dot(a, b, acc, input_precision="ieee")
        elif PRECISION == "tf32":
            acc = tl.dot(a, b, acc, input_precision="tf32")
        else:  # fp16/bf16 operands, fp32 accumulator
            acc = tl.dot(a, b, acc, out_dtype=tl.float32)
    return acc


@triton.jit
def _fold_tile(
    acc, cols, cmask, rmask, tgt, zy, m, s, t, q, r, NEED_T: tl.constexpr, NEED_Q: tl.constexpr, NEED_R: tl.constexpr
):
    """Fold one tile of logits into the online state (m, s, t, q, r) over the non-target entries."""
    is_t = cols[None, :] == tgt[:, None]
    valid = cmask[None, :] & rmask[:, None]
    z = tl.where(is_t, zy[:, None], acc)
    z = tl.where(valid, z, float("-inf"))
    if NEED_R:
        r += tl.sum((z > zy[:, None]).to(tl.int32), axis=1)
    m_new = tl.maximum(m, tl.max(z, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    zc = z - m_safe[:, None]
    keep = valid & (cols[None, :] != tgt[:, None])
    e = tl.where(keep, tl.exp(zc), 0.0)
    if NEED_T:
        d = tl.where(m == float("-inf"), 0.0, m - m_safe)
        t = alpha * (t + d * s) + tl.sum(e * tl.where(keep, zc, 0.0), axis=1)
    if NEED_Q:
        q = q * alpha * alpha + tl.sum(e * e, axis=1)
    s = s * alpha + tl.sum(e, axis=1)
    return m_new, s, t, q, r


@triton.heuristics({"EVEN_H": lambda a: a["hid"] % a["BLOCK_H"] == 0})
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
    stride_h,
    stride_w,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    WAVES: tl.constexpr,  # read by the grid only (it sets the number of splits)
    EVEN_H: tl.constexpr,
    NEED_T: tl.constexpr,
    NEED_Q: tl.constexpr,
    NEED_R: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # H: [n_tok, hid]; W: [vocab, hid]; T: [n_tok] int64; ZY: [n_tok] fp32
    # PM/PS/PT/PQ: [n_split, n_tok] fp32; PR: [n_split, n_tok] int32; n_split = grid dim 1
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1).to(tl.int64)
    n_split = tl.num_programs(1)
    rows = pid_m * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < n_tok
    tgt = tl.load(T + rows, mask=rmask, other=-1)
    zy = tl.load(ZY + rows, mask=rmask, other=0.0)
    h_rows = H + rows[:, None].to(tl.int64) * stride_h
    v_lo = (pid_s * vocab // n_split).to(tl.int32)
    v_hi = ((pid_s + 1) * vocab // n_split).to(tl.int32)
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    t = tl.zeros([BLOCK_N], dtype=tl.float32)
    q = tl.zeros([BLOCK_N], dtype=tl.float32)
    r = tl.zeros([BLOCK_N], dtype=tl.int32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        cmask = cols < v_hi
        w_cols = W + cols[None, :].to(tl.int64) * stride_w
        acc = _logit_tile(h_rows, w_cols, rmask, cmask, hid, BLOCK_N, BLOCK_V, BLOCK_H, EVEN_H, PRECISION, UPCAST)
        m, s, t, q, r = _fold_tile(acc, cols, cmask, rmask, tgt, zy, m, s, t, q, r, NEED_T, NEED_Q, NEED_R)
    off = pid_s * n_tok + rows
    tl.store(PM + off, m, mask=rmask)
    tl.store(PS + off, s, mask=rmask)
    if NEED_T:
        tl.store(PT + off, t, mask=rmask)
    if NEED_Q:
        tl.store(PQ + off, q, mask=rmask)
    if NEED_R:
        tl.store(PR + off, r, mask=rmask)


def _triton_config(c: KernelConfig) -> triton.Config:
    return triton.Config(c.meta(), num_warps=c.num_warps, num_stages=c.num_stages)


# One autotuner per precision family, keyed on (H, V, fields requested); triton adds the
# dtypes of the tensor arguments to the key itself.
_TUNED = {
    name: triton.autotune([_triton_config(c) for c in cfgs], key=["hid", "vocab", "NEED_T", "NEED_Q", "NEED_R"])(
        _partial_kernel
    )
    for name, cfgs in GPU_CONFIGS.items()
}


def interpreting(x: torch.Tensor) -> bool:
    """True for CPU tensors: the kernels then run in Triton's interpreter (TRITON_INTERPRET=1)."""
    return x.device.type != "cuda"


def precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """The tl.dot mode: "ieee" / "tf32" for fp32 inputs, "half" for fp16/bf16 (fp32 accumulation)."""
    if dtype == torch.float32:
        return "tf32" if allow_tf32 else "ieee"
    if dtype in (torch.float16, torch.bfloat16):
        return "half"
    raise ValueError(f"dtype {dtype} not supported by the Triton kernel (float32, float16, bfloat16)")


def max_splits(vocab: int) -> int:
    """Most vocabulary splits chosen automatically (states <= 1% of the bf16 logits)."""
    return max(1, vocab // MIN_ROWS_PER_SPLIT)


def n_splits(m_tok: int, vocab: int, cfg: KernelConfig, sms: int, split_size: Optional[int] = None) -> int:
    """Vocabulary splits S for M tokens under ``cfg``: ``split_size`` rows at most per split when
    given, else enough programs for ``cfg.waves`` x ``sms`` (1 when waves is 0), within
    :func:`max_splits`; never more than V (no split is empty)."""
    if split_size is not None:
        return max(1, min(vocab, triton.cdiv(vocab, split_size)))
    if cfg.waves == 0 or sms <= 0:
        return 1
    want = math.ceil(cfg.waves * sms / triton.cdiv(max(m_tok, 1), cfg.block_n))
    return max(1, min(want, max_splits(vocab), vocab))


def target_logits(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """zy[i] = <h[i], w[targets[i]]> in fp32. h: [M,H] contiguous, w: [V,H] with stride(1) == 1."""
    m_tok, hid = h.shape
    zy = torch.empty(m_tok, dtype=torch.float32, device=h.device)
    interp = interpreting(h)
    bm = 16 if interp else 32
    bk = 16 if interp else min(256, triton.next_power_of_2(hid))
    _target_logit_kernel[(triton.cdiv(m_tok, bm),)](
        h, w, targets, zy, m_tok, hid, h.stride(0), w.stride(0), BLOCK_M=bm, BLOCK_K=bk
    )
    return zy


class _Launch(NamedTuple):
    kernel: object  # the autotuner, or the (heuristics-wrapped) kernel with one fixed config
    fixed: Optional[KernelConfig]  # the config of an untuned launch
    candidates: list[KernelConfig]  # every config this launch may use (sizes the state buffers)
    sms: int


def _launch_plan(h: torch.Tensor, vocab: int, prec: str) -> _Launch:
    """Interpreter: the one small config. GPU: the autotuner of ``prec``, or its default config
    for problems under :data:`TUNE_MIN_WORK`."""
    if interpreting(h):
        return _Launch(_partial_kernel, INTERPRET_CONFIG, [INTERPRET_CONFIG], 0)
    sms = torch.cuda.get_device_properties(h.device).multi_processor_count
    cfgs = GPU_CONFIGS[prec]
    if h.shape[0] * vocab * h.shape[1] < TUNE_MIN_WORK:
        return _Launch(_partial_kernel, cfgs[0], [cfgs[0]], sms)
    return _Launch(_TUNED[prec], None, cfgs, sms)


def partial_states(h, w, targets, zy, *, entropy: bool, el2n: bool, rank: bool, split_size=None, allow_tf32=False):
    """Per-split online states, each [S, M]: (m, s, t|None, q|None, r|None).

    h: [M,H] contiguous; w: [V,H] with stride(1) == 1; targets: [M] int64; zy: [M] fp32.
    split_size: vocabulary rows per split at most (None: the config's WAVES decide, see
    :func:`n_splits`). allow_tf32: TF32 dots for fp32 inputs (a ValueError for other dtypes).
    """
    if allow_tf32 and h.dtype != torch.float32:
        raise ValueError(f"allow_tf32=True applies to float32 inputs only, got {h.dtype}")
    m_tok, hid = h.shape
    vocab = w.shape[0]
    prec = precision(h.dtype, allow_tf32)
    plan = _launch_plan(h, vocab, prec)
    s_max = max(n_splits(m_tok, vocab, c, plan.sms, split_size) for c in plan.candidates)
    dev = h.device
    pm = torch.empty((s_max, m_tok), dtype=torch.float32, device=dev)
    ps = torch.empty_like(pm)
    pt = torch.empty_like(pm) if entropy else pm
    pq = torch.empty_like(pm) if el2n else pm
    pr = torch.empty((s_max, m_tok), dtype=torch.int32, device=dev) if rank else pm
    used: list[int] = []

    def grid(meta):  # called at every launch; the last call is the launch whose states we read
        cfg = KernelConfig(meta["BLOCK_N"], meta["BLOCK_V"], meta["BLOCK_H"], 0, 0, meta["WAVES"])
        used.append(n_splits(m_tok, vocab, cfg, plan.sms, split_size))
        return (triton.cdiv(m_tok, meta["BLOCK_N"]), used[-1])

    kw = {"NEED_T": entropy, "NEED_Q": el2n, "NEED_R": rank, "PRECISION": prec}
    kw["UPCAST"] = interpreting(h) and prec == "half"
    if plan.fixed is not None:
        kw.update(plan.fixed.meta())
        if not interpreting(h):
            kw.update(num_warps=plan.fixed.num_warps, num_stages=plan.fixed.num_stages)
    plan.kernel[grid](h, w, targets, zy, pm, ps, pt, pq, pr, m_tok, vocab, hid, h.stride(0), w.stride(0), **kw)
    n = used[-1]
    if not 1 <= n <= s_max:  # pragma: no cover - the grid and the buffers disagree
        raise RuntimeError(f"token_loss kernel: {n} splits launched for {s_max} allocated")
    return pm[:n], ps[:n], (pt[:n] if entropy else None), (pq[:n] if el2n else None), (pr[:n] if rank else None)
