"""Fused per-token loss over an LM head, without materialising [tokens x vocab] logits.

Algorithm. For each scored token i (``mask[i]`` True; the others are dropped
before any work, so prompt tokens cost nothing) with hidden state h_i and
target y_i, the logits are z_iv = <h_i, W_v>. The vocabulary is processed in
chunks of ``chunk_size`` rows of W; for each chunk a [tokens-block x chunk]
tile of logits is formed (BLAS / ``tl.dot``, fp32 accumulation) and folded into
a per-token running state over the *non-target* entries:
``m`` (running max, the target's own logit included for stability),
``s = sum e^(z-m)``, ``t = sum e^(z-m) (z-m)``, ``q = sum e^(2(z-m))`` and
``r = #{v : z_v > z_y}``; two states merge with the usual online-softmax
rescaling. The target logit z_y is a separate row-wise dot product. At the end
(with S = s + e^(z_y-m)):

* NLL      = log S - (z_y - m)          (log1p(s) when z_y is the max)
* entropy  = log S - (t + e^(z_y-m)(z_y-m)) / S          = LSE(z) - sum p z
* EL2N     = sqrt(s^2 + q) / S                           = ||softmax(z) - onehot(y)||_2
  (since ||p - e_y||^2 = (1-p_y)^2 + sum_{v!=y} p_v^2 and 1-p_y = s/S; this is
  the same quantity as sqrt(sum p^2 - 2 p_y + 1) with sum p^2 = exp(LSE(2z) -
  2 LSE(z)), written without the cancellation near p_y = 1)
* rank     = r: the number of vocabulary entries whose logit is strictly larger
  than the target's (0 = the target is the arg-max; entries tied with the
  target do not count, so a tie for the top gives rank 0 to every tied target;
  NaN logits compare false; a token whose logits contain NaN gets NaN NLL,
  entropy and EL2N). Ties are exact ties of the computed fp32 logits:
  backends that round the logits differently can resolve near-ties (within a
  few ulps) differently.

Cost: O(M V H) multiply-adds for M scored tokens (the same as the logits
matmul) plus O(M V) exp; extra memory O(block x chunk + M H) instead of the
O(M V) logits (plus O(M V) again for ``log_softmax``) of the naive path.

Backends (see :mod:`thresher.ops._dispatch`):

* ``reference`` - full fp32 logits per block of tokens + ``F.cross_entropy``
  (reduction="none"), ``softmax`` etc.: the oracle, any device.
* ``cpu``       - the chunked online algorithm above: the tokens are split
  into contiguous runs of whole token blocks, one per worker thread (torch's
  thread count; torch is set to one intra-op thread meanwhile, so no per-op
  thread synchronisation); each worker forms cache-sized [token-block x chunk]
  fp32 tiles with ``torch.mm`` (BLAS) and folds each tile, chunk after chunk
  in vocabulary order, with the C++ kernel
  ``thresher._C.token_loss_tile_reduce`` (one fused pass: max, rank count,
  exp and the three sums; torch tile ops when ``_C`` is not built or for
  fp64). A token's results are therefore the same bits whatever the thread
  count and whichever tokens share its call (a product of fewer than 16 rows
  is padded: BLAS rounds 1-3 rows differently). Low-precision inputs are
  upcast to fp32 one weight chunk at a time (fp32 accumulation; the logits
  are never rounded to bf16/fp16).
* ``triton``    - ``thresher.kernels.token_loss``: one program per (token
  block, vocabulary split), tiles via ``tl.dot`` with the online state in
  registers; the per-split states are merged here. Autotuned on the GPU
  (block sizes, vocabulary split, warps, stages); fp16/bf16 inputs use tensor
  cores with fp32 accumulation; fp32 inputs use IEEE fp32 dots, or TF32 tensor
  cores with ``allow_tf32=True``. Extra memory: the [S, M] split states, at
  most 1% of the bf16 logits by default (plus, when ``mask`` is given, the
  gathered [M, H] hidden rows of the scored tokens, H/V of the logits).
  Not supported: fp64 inputs.

Inputs are fp32, fp16 or bf16 (fp64 too on reference/cpu); results are fp32
(rank int64). No gradient is computed. ``allow_tf32=True`` (fp32 inputs only)
lets the triton backend round the dot operands to TF32 (10-bit mantissa; about
1e-3 relative error on the logits); the reference and cpu backends compute in
IEEE fp32 and refuse it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .. import _native
from ._dispatch import Op, device_type, triton_has
from .blas import tile_matmul
from .threads import one_thread

__all__ = ["TokenLoss", "token_loss", "score_at_position", "expected_score", "token_loss_op", "reference_token_loss"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INTS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

# Elements of one [tokens x vocab-chunk] fp32 tile per cpu worker: 2**18
# floats = 1 MiB, about an L2 cache, so the exp/max/sum passes stay in cache.
_CPU_TILE_ELEMS = 1 << 18
_CPU_DEFAULT_CHUNK = 2048
# ... and at most this many tile elements over all workers (memory bound).
_CPU_TOTAL_TILE_ELEMS = 1 << 21
# Rows of every [block x chunk] product at least (a shorter block is padded with zero rows): BLAS takes
# another path for a product of a few rows (MKL: 1-3 rows on one thread), which rounds differently, so a
# token's logits would depend on how many other tokens shared its block.
_CPU_MIN_ROWS = 16
# Reference: at most this many logits per block of tokens (full vocabulary rows).
_REF_BLOCK_ELEMS = 1 << 25


class TokenLoss(NamedTuple):
    """Per-token results, each [N] on the input's device.

    ``nll``, ``entropy``, ``el2n`` are float32 (NaN where ``mask`` is False);
    ``rank`` is int64 (-1 where ``mask`` is False). Fields not requested are None.
    """

    nll: torch.Tensor
    entropy: Optional[torch.Tensor]
    el2n: Optional[torch.Tensor]
    rank: Optional[torch.Tensor]


# Accuracy of every backend against a float64 oracle of the same (rounded) inputs, per input
# dtype, as (rtol, atol) on nll / entropy / el2n (tests/test_ops_token_loss.py). Half inputs on
# the GPU: atol per unit of sqrt(H) (tensor-core products of H terms).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-5, 2e-5),
    torch.float32: (1e-5, 2e-5),
    torch.float16: (1e-4, 1e-4),
    torch.bfloat16: (1e-4, 1e-4),
}
# Logits of magnitude ~1e3 (no overflow; relative accuracy of the fp32 logits).
EXTREME_LOGITS_TOL = (1e-4, 1e-3)

# Results of a backend: nll, entropy, el2n (float32) and rank (int64) of the scored tokens,
# None for the fields not requested.
Result = dict[str, Optional[torch.Tensor]]

token_loss_op = Op(
    "token_loss",
    doc="per-token NLL / entropy / EL2N / target rank over an LM head, chunked over the vocabulary",
)


# ------------------------------------------------------------------ validation
def _check_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")


def _check_int(x, name: str, *, allow_none: bool = True) -> None:
    if x is None and allow_none:
        return
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"{name}: expected a positive int or None, got {x!r}")
    if x <= 0:
        raise ValueError(f"{name}: must be > 0, got {x}")


def _validate(hidden, weight, targets, mask, chunk_size, allow_tf32: bool = False) -> None:
    _check_tensor(hidden, "hidden")
    _check_tensor(weight, "weight")
    _check_tensor(targets, "targets")
    if hidden.dim() != 2:
        raise ValueError(f"hidden: expected a 2-d tensor [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-d tensor [V, H], got shape {tuple(weight.shape)}")
    if hidden.dtype not in _FLOATS:
        raise ValueError(f"hidden: dtype {hidden.dtype} not supported (float32, float16, bfloat16, float64)")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight: dtype {weight.dtype} differs from hidden's {hidden.dtype}")
    n, h = hidden.shape
    v, hw = weight.shape
    if hw != h:
        raise ValueError(
            f"weight: hidden size {hw} (shape {tuple(weight.shape)}) does not match "
            f"hidden's {h} (shape {tuple(hidden.shape)})"
        )
    if h == 0:
        raise ValueError("hidden: hidden size must be >= 1")
    if v == 0:
        raise ValueError("weight: the vocabulary is empty (V = 0)")
    if targets.dim() != 1 or targets.shape[0] != n:
        raise ValueError(f"targets: expected shape ({n},), got {tuple(targets.shape)}")
    if targets.dtype not in _INTS:
        raise ValueError(f"targets: expected an integer tensor, got dtype {targets.dtype}")
    if mask is not None:
        _check_tensor(mask, "mask")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a bool tensor, got dtype {mask.dtype}")
        if mask.dim() != 1 or mask.shape[0] != n:
            raise ValueError(f"mask: expected shape ({n},), got {tuple(mask.shape)}")
    _check_int(chunk_size, "chunk_size")
    if not isinstance(allow_tf32, bool):
        raise ValueError(f"allow_tf32: expected True or False, got {allow_tf32!r}")
    if allow_tf32 and hidden.dtype != torch.float32:
        raise ValueError(
            f"allow_tf32=True applies to float32 inputs only, got {hidden.dtype} "
            "(fp16/bf16 inputs already use tensor cores with fp32 accumulation)"
        )


def _check_tf32_backend(allow_tf32: bool, dev: str, backend: Optional[str]) -> None:
    """allow_tf32=True needs a backend that uses TF32: triton (CUDA tensors, or CPU tensors
    under TRITON_INTERPRET=1 when forced)."""
    if not allow_tf32:
        return
    if backend not in (None, "triton"):
        raise ValueError(f"allow_tf32=True: backend {backend!r} computes in IEEE fp32; only 'triton' uses TF32")
    if dev != "cuda" and backend != "triton":
        raise ValueError(f"allow_tf32=True: TF32 is an NVIDIA GPU mode, the tensors are on {dev}")


# --------------------------------------------------------------------- public
def token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    entropy: bool = False,
    el2n: bool = False,
    rank: bool = False,
    chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
    allow_tf32: bool = False,
) -> TokenLoss:
    """Per-token losses of ``targets`` under ``softmax(hidden @ weight.T)``.

    Args:
        hidden: [N, H] final hidden states (fp32/fp16/bf16; fp64 on cpu/reference).
        weight: [V, H] LM-head weight, same dtype and device as ``hidden``.
        targets: [N] integer token ids; only positions with ``mask`` True are
            read (others may hold anything, e.g. -100) and must lie in [0, V).
        mask: [N] bool, the positions to score; None scores all of them. The
            others are skipped entirely and hold NaN (rank -1).
        entropy / el2n / rank: also return these (see the module docstring).
        chunk_size: vocabulary rows per chunk (cpu), at most per vocabulary
            split (triton); None picks a default. Must be > 0.
        backend: force a backend ("reference", "cpu", "triton").
        allow_tf32: let the triton backend use TF32 tensor cores for fp32
            inputs (faster, about 1e-3 relative error on the logits). Off by
            default; a ValueError for non-fp32 inputs or a backend without TF32.

    Returns:
        :class:`TokenLoss` (nll, entropy, el2n, rank), each [N].
    """
    _validate(hidden, weight, targets, mask, chunk_size, allow_tf32)
    dev = device_type(hidden, weight, targets, mask)
    _check_tf32_backend(allow_tf32, dev, backend)
    v = weight.shape[0]
    with torch.no_grad():
        idx, h, t = _scored_tokens(hidden, targets, mask, v)
        ctx = {"dtype": hidden.dtype, "n": h.shape[0], "vocab": v, "hidden": hidden.shape[1], "allow_tf32": allow_tf32}
        kw = {"entropy": entropy, "el2n": el2n, "rank": rank, "chunk_size": chunk_size, "allow_tf32": allow_tf32}
        res = token_loss_op.dispatch(dev, h, weight, t, backend=backend, ctx=ctx, **kw)
        n = hidden.shape[0]
        return TokenLoss(
            _place(res["nll"], idx, n, math.nan),
            _place_opt(res["entropy"] if entropy else None, idx, n, math.nan),
            _place_opt(res["el2n"] if el2n else None, idx, n, math.nan),
            _place_opt(res["rank"] if rank else None, idx, n, -1),
        )


def _scored_tokens(
    hidden: torch.Tensor, targets: torch.Tensor, mask: Optional[torch.Tensor], v: int
) -> tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(positions or None for all, hidden [M, H], int64 targets [M]) of the scored tokens;
    ValueError naming the first target outside [0, v)."""
    idx = None if mask is None else mask.nonzero().squeeze(1)
    h = hidden if idx is None else hidden.index_select(0, idx)
    t = (targets if idx is None else targets.index_select(0, idx)).to(torch.int64)
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= v:
            bad = int(((t < 0) | (t >= v)).nonzero()[0, 0])
            pos = bad if idx is None else int(idx[bad])
            raise ValueError(
                f"targets: value {int(t[bad])} at position {pos} is outside [0, {v}) (vocabulary size of weight)"
            )
    return idx, h, t


def _place(x: Optional[torch.Tensor], idx: Optional[torch.Tensor], n: int, fill: float) -> torch.Tensor:
    """Scored-token results [M] back at their positions of [N] (``fill`` elsewhere)."""
    if x is None:
        raise RuntimeError("token_loss: a backend returned no nll")
    if idx is None:
        return x
    out = torch.full((n,), fill, dtype=x.dtype, device=x.device)
    out[idx] = x
    return out


def _place_opt(x: Optional[torch.Tensor], idx: Optional[torch.Tensor], n: int, fill: float) -> Optional[torch.Tensor]:
    return None if x is None else _place(x, idx, n, fill)


# ------------------------------------------------------------------ reference
def reference_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    entropy: bool = True,
    el2n: bool = True,
    rank: bool = True,
    compute_dtype: Optional[torch.dtype] = None,
) -> Result:
    """Full-logits oracle on already-gathered tokens: hidden [M,H], targets [M] int64.

    Logits are formed in ``compute_dtype`` (default: fp32, or fp64 for fp64
    inputs) for blocks of tokens over the whole vocabulary; results are in
    ``compute_dtype`` (rank int64).
    """
    cd = compute_dtype or (torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    m, v = hidden.shape[0], weight.shape[0]
    w = weight.to(cd)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("nll", "entropy", "el2n", "rank")}
    step = max(1, _REF_BLOCK_ELEMS // max(v, 1))
    for b0 in range(0, m, step):
        hb = hidden[b0 : b0 + step].to(cd)
        tb = targets[b0 : b0 + step]
        logits = hb @ w.T  # [B, V]
        out["nll"].append(F.cross_entropy(logits, tb, reduction="none"))
        if entropy or el2n:
            logp = torch.log_softmax(logits, dim=-1)
            p = logp.exp()
            if entropy:
                out["entropy"].append(-(p * logp).sum(-1))
            if el2n:
                p[torch.arange(p.shape[0], device=p.device), tb] -= 1.0
                out["el2n"].append(torch.linalg.vector_norm(p, dim=-1))
        if rank:
            zy = logits.gather(1, tb[:, None])
            out["rank"].append((logits > zy).sum(-1))
    res: Result = {}
    for k, want in (("nll", True), ("entropy", entropy), ("el2n", el2n), ("rank", rank)):
        if not want:
            res[k] = None
        elif out[k]:
            res[k] = torch.cat(out[k])
        else:
            res[k] = torch.empty(0, dtype=torch.int64 if k == "rank" else cd, device=hidden.device)
    return res


def _as_result(d: dict) -> dict:
    return {k: (None if x is None else (x if k == "rank" else x.to(torch.float32))) for k, x in d.items()}


def _ieee_only(allow_tf32: bool = False, **_) -> list[str]:
    """Per-call reasons of the backends that compute in IEEE fp32 (reference, cpu)."""
    return ["computes in IEEE fp32 (allow_tf32=True needs the triton backend)"] if allow_tf32 else []


def _refuse_tf32(allow_tf32: bool, name: str) -> None:
    if allow_tf32:  # dispatch never gets here (_ieee_only); a direct call must not ignore it
        raise ValueError(f"allow_tf32=True: backend {name!r} computes in IEEE fp32")


@token_loss_op.register(
    "reference",
    devices=("cpu", "cuda"),
    supports=_ieee_only,
    note="full fp32 logits per token block + F.cross_entropy (oracle)",
)
def _reference_backend(
    hidden, weight, targets, *, entropy=False, el2n=False, rank=False, chunk_size=None, allow_tf32=False
):
    _refuse_tf32(allow_tf32, "reference")
    return _as_result(reference_token_loss(hidden, weight, targets, entropy=entropy, el2n=el2n, rank=rank))


# ------------------------------------------------------ online-softmax algebra
# Online-softmax state (m, s, t, q) of a set of tokens; t / q are None when not tracked.
_State = tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]
# ... and with the rank count r (None when not requested).
_RankedState = tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]


def _merge(a: _State, b: _State) -> _State:
    """Merge two states (m, s, t, q) over disjoint vocabulary sets (t/q may be None).

    m must be finite or NaN on both sides (every state covers >= 1 entry).
    """
    m1, s1, t1, q1 = a
    m2, s2, t2, q2 = b
    m = torch.maximum(m1, m2)
    d1, d2 = m1 - m, m2 - m
    a1, a2 = torch.exp(d1), torch.exp(d2)
    s = s1 * a1 + s2 * a2
    t = None if t1 is None or t2 is None else a1 * (t1 + d1 * s1) + a2 * (t2 + d2 * s2)
    q = None if q1 is None or q2 is None else q1 * (a1 * a1) + q2 * (a2 * a2)
    return m, s, t, q


def _opt(x: torch.Tensor, want: bool) -> Optional[torch.Tensor]:
    return x if want else None


def _finalize(m, s, t, q, zy, r, *, entropy, el2n, rank) -> dict:
    """Results from the non-target state (m, s, t, q, r) and the target logit zy."""
    mm = torch.maximum(m, zy)
    a = torch.exp(m - mm)
    s_ex = s * a
    dy = zy - mm  # <= 0
    ey = torch.exp(dy)
    big = s_ex + ey
    top = dy >= 0
    log_s = torch.where(top, torch.log1p(s_ex), torch.log(big))
    res = {"nll": (log_s - dy).float(), "entropy": None, "el2n": None, "rank": None}
    if entropy:
        t_all = a * (t + (m - mm) * s) + ey * dy
        res["entropy"] = (log_s - t_all / big).float()
    if el2n:
        res["el2n"] = (torch.sqrt(s_ex * s_ex + q * (a * a)) / big).float()
    if rank:
        res["rank"] = r.to(torch.int64)
    return res


def _target_logits(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cd, block: int) -> torch.Tensor:
    """zy[i] = <h[i], weight[targets[i]]> in ``cd``, in blocks of tokens (padded to ``_CPU_MIN_ROWS``
    rows: a batch of one product takes another BLAS path). h is already in cd."""
    m = h.shape[0]
    out = torch.empty(m, dtype=cd, device=h.device)
    for b0 in range(0, m, block):
        b1 = min(b0 + block, m)
        hb = _block(h, b0, b1)
        wb = _block(weight.index_select(0, targets[b0:b1]).to(cd), 0, b1 - b0)
        out[b0:b1] = torch.bmm(hb.unsqueeze(1), wb.unsqueeze(2)).view(-1)[: b1 - b0]
    return out


# ------------------------------------------------------------------- cpu path
def cpu_plan(m: int, v: int, chunk_size: Optional[int] = None, threads: Optional[int] = None) -> tuple[int, int, int]:
    """(vocabulary chunk, token block, worker threads) of the cpu backend for M tokens, V entries.

    Each worker owns a contiguous run of whole token blocks and folds every vocabulary chunk into
    their states in vocabulary order, with a tile of block x chunk fp32 logits (about
    ``_CPU_TILE_ELEMS``, cache-sized). The chunk never depends on the thread count, so neither does
    a token's fold: a token's results are the same bits whatever the worker count and whichever
    other tokens share the call (blocks are at least ``_CPU_MIN_ROWS`` rows, padded).
    """
    t = threads if threads is not None else torch.get_num_threads()
    c = min(v, chunk_size or _CPU_DEFAULT_CHUNK)
    tile = max(1 << 14, min(_CPU_TILE_ELEMS, _CPU_TOTAL_TILE_ELEMS // max(t, 1)))
    b = max(1, min(m, tile // max(c, 1)))
    if -(-m // b) < t:  # fewer blocks than workers: smaller blocks (of _CPU_MIN_ROWS rows at least)
        b = max(1, min(m, max(_CPU_MIN_ROWS, -(-m // t))))
    t = max(1, min(t, -(-m // b)))
    return c, b, t


def _block(h: torch.Tensor, b0: int, b1: int) -> torch.Tensor:
    """Rows [b0, b1) of h, padded with zero rows to ``_CPU_MIN_ROWS`` rows when fewer."""
    if b1 - b0 >= _CPU_MIN_ROWS:
        return h[b0:b1]
    return F.pad(h[b0:b1], (0, 0, 0, _CPU_MIN_ROWS - (b1 - b0)))


def _block_logits(h: torch.Tensor, wct: torch.Tensor, b0: int, b1: int, buf: torch.Tensor) -> torch.Tensor:
    """[b1 - b0, chunk] logits of the tokens [b0, b1) against a chunk's transposed rows ``wct``, in ``buf``
    (which holds ``max(block, _CPU_MIN_ROWS) x chunk`` values)."""
    hb = _block(h, b0, b1)
    nc = wct.shape[1]
    return torch.mm(hb, wct, out=buf[: hb.shape[0] * nc].view(hb.shape[0], nc))[: b1 - b0]


# Use thresher._C.token_loss_tile_reduce (fused exp/max/sums in one pass) when
# built; the torch tile ops below are the fallback (tests toggle this).
USE_NATIVE_TILE = True


def _native_tile() -> Optional[Callable[..., None]]:
    if not USE_NATIVE_TILE:
        return None
    ext = _native.cpu_ext()
    return getattr(ext, "token_loss_tile_reduce", None) if ext is not None else None


def _cpu_range(h, weight, targets, zy, v_lo, v_hi, c, blk, entropy, el2n, rank):
    """Online state (m, s, t, q, r) of all tokens over vocabulary rows [v_lo, v_hi)."""
    m_tok = h.shape[0]
    cd = h.dtype
    native = _native_tile() if cd == torch.float32 else None
    if native is not None:
        return _cpu_range_native(native, h, weight, targets, zy, v_lo, v_hi, c, blk, entropy, el2n, rank)
    need_e = entropy  # exp() into a second buffer: entropy needs z - m too
    buf = torch.empty(max(blk, _CPU_MIN_ROWS) * c, dtype=cd)
    # buffers of the fields not requested are empty and never touched
    ebuf = torch.empty(blk * c if need_e else 0, dtype=cd)
    gtbuf = torch.empty(blk * c if rank else 0, dtype=torch.bool)
    st_m = torch.empty(m_tok, dtype=cd)
    st_s = torch.empty(m_tok, dtype=cd)
    st_t = torch.empty(m_tok if entropy else 0, dtype=cd)
    st_q = torch.empty(m_tok if el2n else 0, dtype=cd)
    st_r = torch.zeros(m_tok if rank else 0, dtype=torch.int64)
    for c0 in range(v_lo, v_hi, c):
        c1 = min(c0 + c, v_hi)
        nc = c1 - c0
        wc = weight[c0:c1]
        if wc.dtype != cd:
            wc = wc.to(cd)
        wct = wc.t()
        # tokens whose target lies in this chunk (sorted row ids) and its column
        rows_c = ((targets >= c0) & (targets < c1)).nonzero().squeeze(1)
        cols_c = targets.index_select(0, rows_c) - c0
        for b0 in range(0, m_tok, blk):
            b1 = min(b0 + blk, m_tok)
            nb = b1 - b0
            z = _block_logits(h, wct, b0, b1, buf)
            zyb = zy[b0:b1]
            ri: Optional[torch.Tensor] = None
            ci: Optional[torch.Tensor] = None
            if rows_c.numel():
                lo, hi = torch.searchsorted(rows_c, torch.tensor([b0, b1])).tolist()
                if hi > lo:
                    ri = rows_c[lo:hi] - b0
                    ci = cols_c[lo:hi]
                    # the target's own entry takes the row-wise z_y: it never
                    # counts in the rank, and the max then bounds z_y exactly
                    z[ri, ci] = zyb.index_select(0, ri)
            if rank:
                g = torch.gt(z, zyb[:, None], out=gtbuf[: nb * nc].view(nb, nc))
                st_r[b0:b1] += g.sum(1, dtype=torch.int32)
            mc = z.amax(1)
            z.sub_(mc[:, None])
            e = torch.exp(z, out=ebuf[: nb * nc].view(nb, nc)) if need_e else z.exp_()
            if ri is not None and ci is not None:
                e[ri, ci] = 0.0
            sc = e.sum(1)
            qc = torch.linalg.vector_norm(e, dim=1).square_() if el2n else None
            tc = e.mul_(z).sum(1) if entropy else None  # e is not needed after this
            sl = slice(b0, b1)
            if c0 != v_lo:
                old = (st_m[sl], st_s[sl], _opt(st_t[sl], entropy), _opt(st_q[sl], el2n))
                mc, sc, tc, qc = _merge(old, (mc, sc, tc, qc))
            st_m[sl], st_s[sl] = mc, sc
            if tc is not None:
                st_t[sl] = tc
            if qc is not None:
                st_q[sl] = qc
    return st_m, st_s, _opt(st_t, entropy), _opt(st_q, el2n), _opt(st_r, rank)


def _cpu_range_native(native, h, weight, targets, zy, v_lo, v_hi, c, blk, entropy, el2n, rank):
    """As :func:`_cpu_range`, with each tile folded by the C++ kernel (fp32 only)."""
    m_tok = h.shape[0]
    buf = torch.empty(max(blk, _CPU_MIN_ROWS) * c, dtype=torch.float32)
    st_m = torch.empty(m_tok, dtype=torch.float32)
    st_s = torch.empty(m_tok, dtype=torch.float32)
    # the kernel reads/writes t, q, r only when requested: unrequested ones are placeholders
    st_t = torch.empty(m_tok, dtype=torch.float32) if entropy else st_m
    st_q = torch.empty(m_tok, dtype=torch.float32) if el2n else st_m
    st_r = torch.zeros(m_tok, dtype=torch.int64)
    np_m, np_s, np_zy = st_m.numpy(), st_s.numpy(), zy.numpy()
    np_t, np_q, np_r = st_t.numpy(), st_q.numpy(), st_r.numpy()
    for c0 in range(v_lo, v_hi, c):
        c1 = min(c0 + c, v_hi)
        wc = weight[c0:c1]
        if wc.dtype != torch.float32:
            wc = wc.float()
        wct = wc.t()
        tcol = torch.where((targets >= c0) & (targets < c1), targets - c0, -1).numpy()
        for b0 in range(0, m_tok, blk):
            b1 = min(b0 + blk, m_tok)
            z = _block_logits(h, wct, b0, b1, buf)
            native(
                z.numpy(),
                np_zy[b0:b1],
                tcol[b0:b1],
                np_m[b0:b1],
                np_s[b0:b1],
                np_t[b0:b1],
                np_q[b0:b1],
                np_r[b0:b1],
                c0 == v_lo,
                entropy,
                el2n,
                rank,
            )
    return st_m, st_s, _opt(st_t, entropy), _opt(st_q, el2n), _opt(st_r, rank)


@token_loss_op.register(
    "cpu",
    devices=("cpu",),
    supports=_ieee_only,
    note="chunked torch matmul (BLAS) + online log-sum-exp, bounded memory, threads",
)
def _cpu_backend(hidden, weight, targets, *, entropy=False, el2n=False, rank=False, chunk_size=None, allow_tf32=False):
    _refuse_tf32(allow_tf32, "cpu")
    m_tok, v = hidden.shape[0], weight.shape[0]
    cd = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    if m_tok == 0:
        return _as_result(reference_token_loss(hidden, weight, targets, entropy=entropy, el2n=el2n, rank=rank))
    c, blk, n_thr = cpu_plan(m_tok, v, chunk_size)
    h = hidden.to(cd).contiguous()
    n_blocks = -(-m_tok // blk)
    cuts = [min(m_tok, blk * ((n_blocks * i) // n_thr)) for i in range(n_thr + 1)]
    args = (entropy, el2n, rank)
    # Every product on one torch thread (one per worker): a multi-threaded BLAS call rounds a short
    # block's sums differently with the thread count. No per-op thread synchronisation either.
    with one_thread():
        zy = _target_logits(h, weight, targets, cd, blk)

        def rows(i: int) -> tuple:
            a, b = cuts[i], cuts[i + 1]
            return _cpu_range(h[a:b], weight, targets[a:b], zy[a:b], 0, v, c, blk, *args)

        if n_thr == 1:
            states = [rows(0)]
        else:
            with ThreadPoolExecutor(max_workers=n_thr) as ex:
                states = list(ex.map(rows, range(n_thr)))
    m, s, t, q, r = (None if states[0][j] is None else torch.cat([st[j] for st in states]) for j in range(5))
    return _finalize(m, s, t, q, zy, r, entropy=entropy, el2n=el2n, rank=rank)


# ---------------------------------------------------------------- triton path
def _triton_supports(device=None, dtype=None, allow_tf32=False, **_):
    """fp32 (IEEE, or TF32 with allow_tf32), fp16 and bf16 (fp32 accumulation); not fp64."""
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return [f"dtype {dtype} not supported by the Triton kernel (float32, float16, bfloat16; no float64)"]
    if allow_tf32 and dtype is not None and dtype != torch.float32:
        return [f"allow_tf32=True applies to float32 inputs only, got {dtype}"]
    return []


@token_loss_op.register(
    "triton",
    devices=("cuda",),
    available=triton_has("token_loss"),
    supports=_triton_supports,
    note="autotuned tl.dot tiles x vocabulary splits, online LSE in registers; fp32/TF32/fp16/bf16, not fp64",
)
def _triton_backend(
    hidden, weight, targets, *, entropy=False, el2n=False, rank=False, chunk_size=None, allow_tf32=False
):
    k = _native.require_kernel("token_loss")
    m_tok = hidden.shape[0]
    if m_tok == 0:
        return _as_result(reference_token_loss(hidden, weight, targets, entropy=entropy, el2n=el2n, rank=rank))
    h = hidden.contiguous()
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    zy = k.target_logits(h, w, targets)
    pm, ps, pt, pq, pr = k.partial_states(
        h, w, targets, zy, entropy=entropy, el2n=el2n, rank=rank, split_size=chunk_size, allow_tf32=allow_tf32
    )
    # merge the vocabulary splits: [S, M] -> [M]
    mm = pm.max(0).values
    d = pm - mm
    a = torch.exp(d)
    s = (ps * a).sum(0)
    t = (a * (pt + d * ps)).sum(0) if entropy else None
    q = (pq * a * a).sum(0) if el2n else None
    r = pr.sum(0) if rank else None
    return _finalize(mm, s, t, q, zy, r, entropy=entropy, el2n=el2n, rank=rank)


# ------------------------------------------------------------ score readout
def score_at_position(hidden_last: torch.Tensor, weight: torch.Tensor, token_ids) -> torch.Tensor:
    """Softmax over a few candidate tokens at one position: probs [B, K] float32.

    Args:
        hidden_last: [B, H] hidden state at the position whose next token is read.
        weight: [V, H] LM-head weight (only the K rows of ``token_ids`` are read).
        token_ids: [K] distinct token ids (tensor or sequence of int) in [0, V).

    The logits of the K tokens are computed in fp32 from the gathered rows
    (O(B K H), no full head, no ``generate()``); the softmax runs over those K
    logits only, i.e. the distribution renormalised to the candidates.
    """
    _check_tensor(hidden_last, "hidden_last")
    _check_tensor(weight, "weight")
    if hidden_last.dim() != 2:
        raise ValueError(f"hidden_last: expected a 2-d tensor [B, H], got shape {tuple(hidden_last.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden_last.shape[1]:
        raise ValueError(f"weight: expected shape [V, {hidden_last.shape[1]}], got {tuple(weight.shape)}")
    if hidden_last.dtype not in _FLOATS or weight.dtype not in _FLOATS:
        raise ValueError(f"hidden_last/weight: floating dtypes required, got {hidden_last.dtype}/{weight.dtype}")
    if not isinstance(token_ids, torch.Tensor):
        try:
            token_ids = torch.as_tensor(list(token_ids), dtype=torch.int64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"token_ids: expected a sequence of ints ({exc})") from None
    if token_ids.dim() != 1 or token_ids.numel() == 0:
        raise ValueError(f"token_ids: expected a non-empty 1-d tensor, got shape {tuple(token_ids.shape)}")
    if token_ids.dtype not in _INTS:
        raise ValueError(f"token_ids: expected integer ids, got dtype {token_ids.dtype}")
    v = weight.shape[0]
    ids = token_ids.to(device=weight.device, dtype=torch.int64)
    if int(ids.min()) < 0 or int(ids.max()) >= v:
        raise ValueError(f"token_ids: ids must lie in [0, {v}), got {ids.tolist()}")
    if torch.unique(ids).numel() != ids.numel():
        raise ValueError(f"token_ids: ids must be distinct, got {ids.tolist()}")
    device_type(hidden_last, weight)
    with torch.no_grad():
        rows = weight.index_select(0, ids).float()  # [K, H]
        logits = tile_matmul(hidden_last.float(), rows.T)  # [B, K]: each row's bits its own (ops.blas)
        return torch.softmax(logits, dim=-1)


def expected_score(probs: torch.Tensor, values) -> torch.Tensor:
    """Expected score sum_k probs[:, k] * values[k]: [B] float32 (probs [B,K] from
    :func:`score_at_position`; rows are renormalised to sum 1, NaN rows stay NaN)."""
    _check_tensor(probs, "probs")
    if probs.dim() != 2:
        raise ValueError(f"probs: expected a 2-d tensor [B, K], got shape {tuple(probs.shape)}")
    vals = torch.as_tensor(values, dtype=torch.float32, device=probs.device)
    if vals.dim() != 1 or vals.shape[0] != probs.shape[1]:
        raise ValueError(f"values: expected {probs.shape[1]} values, got shape {tuple(vals.shape)}")
    p = probs.float()
    return (p * vals).sum(-1) / p.sum(-1)
