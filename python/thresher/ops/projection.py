"""Random projection op: ``random_project(x[B, D], dim, seed) = x @ P`` with P never stored.

P is a [D_total, dim] matrix scaled by ``1/sqrt(dim)`` whose entries are a pure
function of (seed, global row, column) through the Philox4x32-10 counter-based
generator (layout in ``csrc/include/thresher/philox.h``): Rademacher signs
(one Philox call per 128 entries of a row) or Gaussians (Box-Muller, one call
per 4 entries). So P is bit-identical on the CPU, every GPU, and for every
tiling, batch size and chunking, and a caller streams a huge gradient as
blocks ``x[:, a:b]`` with ``row_offset=a`` (see :class:`Projector`) and never
concatenates it. Rademacher signs are bitwise identical across backends;
Gaussian values agree to libm precision.

Backends:

* ``triton``    - tiles of P generated in registers, ``tl.dot`` on tensor cores, deterministic split-K.
* ``cuda``      - ``thresher._cuda.projection`` (tiled CUDA-core kernel, deterministic split-K).
* ``cpu``       - ``thresher._C.projection_tile`` generates each [K, dim] tile of P once (OpenMP,
  vectorised sign expansion) and the whole batch is multiplied with it by a BLAS GEMM
  (``torch.addmm``), so generation is amortised over the batch.
* ``reference`` - the same generator in plain PyTorch (uint32 arithmetic emulated in int64),
  P materialised in row blocks: the fallback of last resort and the test oracle.

Also here: :func:`projection_matrix` (materialise rows of P, for tests and
Kronecker checks), :class:`Projector` (streaming accumulation over parameter
blocks) and :func:`structured_project` (LoGra-style projection of linear-layer
gradients from activations and output gradients without forming the gradient).
"""

from __future__ import annotations

import math
import operator
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Union

import numpy as np
import torch

from .. import _native
from ._dispatch import Op, cpu_has, cuda_has, device_type, triton_has
from .abi import CONSTANTS, ProjectionKind, dtype_code
from .threads import one_thread

KINDS = tuple(k.name.lower() for k in ProjectionKind)  # rademacher gaussian
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = CONSTANTS["PHILOX_ROUND_A"], CONSTANTS["PHILOX_ROUND_B"]
_KEY_A, _KEY_B = CONSTANTS["PHILOX_KEY_A"], CONSTANTS["PHILOX_KEY_B"]
STREAM_RADEMACHER = CONSTANTS["PHILOX_STREAM_RADEMACHER"]
STREAM_GAUSSIAN = CONSTANTS["PHILOX_STREAM_GAUSSIAN"]
RADEMACHER_BLOCK = CONSTANTS["PHILOX_RADEMACHER_BLOCK"]
GAUSSIAN_BLOCK = CONSTANTS["PHILOX_GAUSSIAN_BLOCK"]
# Accuracy of every backend of random_project against a float64 ``x @ P``, per input dtype, as
# (rtol, atol): the only error is fp32 accumulation (half inputs are exact in fp32), so atol is a
# floor added to accumulation_atol(x, dim, kind), the bound for sums of D terms (tests/test_ops_projection.py).
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (0.0, 1e-6),
    torch.float16: (0.0, 1e-6),
    torch.bfloat16: (0.0, 1e-6),
}
# The Gaussian matrix of every backend against the reference generator: libm precision.
GAUSSIAN_MATRIX_TOL = (1e-5, 1e-6)
# structured_project against the dense Kronecker projection of the weight gradient (float32 einsums).
STRUCTURED_TOL = (1e-4, 1e-4)
_MAX_ROW = 1 << 63
_GOLDEN64 = 0x9E3779B97F4A7C15

random_project_op = Op(
    "random_project",
    doc="x[B, D] @ P[row_offset:row_offset+D, :dim] with P (Rademacher or Gaussian, / sqrt(dim)) "
    "generated from Philox4x32-10 counters, never stored",
)


# ----------------------------------------------------------------- validation
def _as_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer, got {type(value).__name__}") from None
    if not lo <= v < hi:
        raise ValueError(f"{name}: {v} out of range [{lo}, {hi})")
    return v


def check_dim(dim: Any, name: str = "dim") -> int:
    d = _as_int(dim, name, 1, 1 << 40)
    if d % 8:
        raise ValueError(f"{name}: {d} is not a multiple of 8 (supported: any positive multiple of 8)")
    return d


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r}; expected one of {KINDS}")
    return kind


def _validate(
    x: Any, dim: Any, seed: Any, kind: Any, row_offset: Any, check_finite: bool
) -> tuple[torch.Tensor, int, int, str, int]:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x: expected a 2-d [B, D] tensor, got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"x: dtype {x.dtype} not supported (float32, float16 or bfloat16)")
    dim = check_dim(dim)
    seed = _as_int(seed, "seed", 0, 1 << 64)
    kind = check_kind(kind)
    row_offset = _as_int(row_offset, "row_offset", 0, _MAX_ROW)
    if row_offset + x.shape[1] >= _MAX_ROW:
        raise ValueError(f"row_offset: row_offset + D = {row_offset + x.shape[1]} exceeds 2**63")
    if check_finite and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("x: contains non-finite values (NaN or inf)")
    return x, dim, seed, kind, row_offset


def accumulation_atol(x: torch.Tensor, dim: int, kind: str = "rademacher") -> float:
    """Bound on the fp32 accumulation error of ``x @ P`` (|P| = 1/sqrt(dim); Gaussian entries 4x that)."""
    d = max(x.shape[1], 1)
    amax = float(x.abs().max()) if x.numel() else 1.0
    tol = 4 * d * 2.0**-23 * amax / math.sqrt(dim) + TOLERANCES.get(x.dtype, (0.0, 1e-6))[1]
    return 4 * tol if kind == "gaussian" else tol


# ------------------------------------------------- the generator in torch
def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = b * a  # int64 wraps mod 2**64: the low 64 bits of the exact product
    return (p >> 32) & _M32, p & _M32


_Counter = Union[torch.Tensor, int]


def philox4x32_10(
    c0: _Counter, c1: _Counter, c2: _Counter, c3: _Counter, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 values (broadcasting); keys are ints."""
    t0, t1, t2, t3 = torch.broadcast_tensors(*(torch.as_tensor(c, dtype=torch.int64) for c in (c0, c1, c2, c3)))
    return _philox_rounds(t0, t1, t2, t3, k0, k1)


def _philox_rounds(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    for _ in range(10):
        hi0, lo0 = _mulhilo(_ROUND_A, c0)
        hi1, lo1 = _mulhilo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def projection_matrix(
    rows: int,
    dim: int,
    seed: int,
    kind: str = "rademacher",
    *,
    row_offset: int = 0,
    col_offset: int = 0,
    ncols: Optional[int] = None,
    scaled: bool = True,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Rows ``row_offset .. row_offset+rows`` (columns ``col_offset .. +ncols``) of P as fp32.

    ``scaled=False`` gives the raw +-1 (or N(0,1)) entries. Plain PyTorch: the reference generator.
    """
    dim = check_dim(dim)
    kind = check_kind(kind)
    ncols = dim - col_offset if ncols is None else ncols
    rows_t = torch.arange(rows, dtype=torch.int64, device=device) + row_offset
    cols = torch.arange(col_offset, col_offset + ncols, dtype=torch.int64, device=device)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    r0 = (rows_t & _M32)[:, None]
    r1 = (rows_t >> 32)[:, None]
    if kind == "rademacher":
        blocks = torch.unique(cols // RADEMACHER_BLOCK)
        w = philox4x32_10(r0, r1, blocks[None, :], STREAM_RADEMACHER, k0, k1)
        words = torch.stack(w, dim=-1)  # [rows, nblocks, 4]
        bi = torch.searchsorted(blocks, cols // RADEMACHER_BLOCK)
        q = (cols % RADEMACHER_BLOCK) // 32
        word = words[:, bi, q]  # [rows, ncols]
        bit = (word >> (cols % 32)[None, :]) & 1
        p = 1.0 - 2.0 * bit.to(torch.float32)
    else:
        groups = torch.unique(cols // GAUSSIAN_BLOCK)
        w0, w1, w2, w3 = philox4x32_10(r0, r1, groups[None, :], STREAM_GAUSSIAN, k0, k1)
        gi = torch.searchsorted(groups, cols // GAUSSIAN_BLOCK)
        idx = (cols % GAUSSIAN_BLOCK)[None, :]
        a = torch.where(idx < 2, w0[:, gi], w2[:, gi])
        b = torch.where(idx < 2, w1[:, gi], w3[:, gi])
        u1 = ((a >> 8) + 1).to(torch.float32) * 5.9604644775390625e-08
        u2 = (b >> 8).to(torch.float32) * 5.9604644775390625e-08
        r = torch.sqrt(-2.0 * torch.log(u1))
        t = 6.283185307179586 * u2
        p = torch.where(idx % 2 == 0, r * torch.cos(t), r * torch.sin(t))
    if scaled:
        p = p * (1.0 / math.sqrt(dim))
    return p


# ------------------------------------------------------------------ backends
def _rows_per_block(dim: int, budget: int) -> int:
    return max(8, min(1 << 20, budget // max(dim, 1)))


@random_project_op.register(
    "reference", devices=("cpu", "cuda"), note="P materialised in row blocks by the torch generator"
)
def _reference(x: torch.Tensor, dim: int, seed: int, kind: str, row_offset: int) -> torch.Tensor:
    B, D = x.shape
    out = torch.zeros((B, dim), dtype=torch.float32, device=x.device)
    step = _rows_per_block(dim, 1 << 21)
    for a in range(0, D, step):
        b = min(D, a + step)
        p = projection_matrix(b - a, dim, seed, kind, row_offset=row_offset + a, device=x.device)
        out.addmm_(x[:, a:b].to(torch.float32), p)
    return out


def _gen_threads() -> int:
    return int(os.environ.get("THRESHER_PROJECTION_THREADS", "1"))


def _cpu_tile_rows(ncols: int) -> int:
    # ~512 KB fp32 tiles: the generated tile stays in L2 while the GEMM reuses it for the whole batch.
    budget = int(os.environ.get("THRESHER_PROJECTION_TILE_KB", "512")) * 256
    return max(16, min(1 << 16, budget // max(ncols, 1)))


def _cpu_worker(
    ext: Any, x: torch.Tensor, seed: int, kid: int, scale: float, row_offset: int, c0: int, c1: int
) -> torch.Tensor:
    """out[:, c0:c1] of the projection: one generated [kc, c1-c0] tile at a time, GEMM with all rows."""
    B, D = x.shape
    acc = torch.zeros((B, c1 - c0), dtype=torch.float32)
    kc = min(_cpu_tile_rows(c1 - c0), D)
    tile = np.empty((kc, c1 - c0), dtype=np.float32)
    tile_t = torch.from_numpy(tile)
    for a in range(0, D, kc):
        b = min(D, a + kc)
        ext.projection_tile(tile[: b - a], seed, row_offset + a, c0, kid, scale, _gen_threads())
        acc.addmm_(x[:, a:b].to(torch.float32), tile_t[: b - a])
    return acc


@random_project_op.register(
    "cpu",
    devices=("cpu",),
    available=cpu_has("projection_tile"),
    note="C++ Philox tile generation + single-threaded BLAS GEMM per tile, column ranges on parallel threads",
)
def _cpu(x: torch.Tensor, dim: int, seed: int, kind: str, row_offset: int) -> torch.Tensor:
    """Each of T threads owns a range of output columns (multiples of 128, so no Philox call is
    shared), generates its L2-sized tiles of P once and multiplies the whole batch with them
    through a single-threaded BLAS call. No barrier per tile: a thread pool wake-up per tile costs
    milliseconds on a loaded machine, which is why the GEMM is not left to torch's pool."""
    ext = _native.require_cpu()
    B, D = x.shape
    if B == 0 or D == 0:
        return torch.zeros((B, dim), dtype=torch.float32)
    kid = int(ProjectionKind.parse(kind))
    scale = 1.0 / math.sqrt(dim)
    threads = torch.get_num_threads()
    nblk = -(-dim // RADEMACHER_BLOCK)
    T = max(1, min(threads, nblk))
    if T == 1 and threads > 1:
        # one column block: row ranges in parallel instead, summed in a fixed order
        T = min(threads, max(1, D // 4096))
        if T == 1:
            return _cpu_worker(ext, x, seed, kid, scale, row_offset, 0, dim)
        bounds = [D * i // T for i in range(T + 1)]
        jobs = [(x[:, bounds[i] : bounds[i + 1]], row_offset + bounds[i], 0, dim) for i in range(T)]
        parts = _run_threads(ext, jobs, seed, kid, scale)
        out = parts[0]
        for p in parts[1:]:
            out += p
        return out
    if T == 1:
        return _cpu_worker(ext, x, seed, kid, scale, row_offset, 0, dim)
    cuts = [min(dim, (nblk * i // T) * RADEMACHER_BLOCK) for i in range(T + 1)]
    jobs = [(x, row_offset, cuts[i], cuts[i + 1]) for i in range(T)]
    return torch.cat(_run_threads(ext, jobs, seed, kid, scale), dim=1)


_Job = tuple[torch.Tensor, int, int, int]  # (x block, row offset, first column, end column)


def _run_threads(ext: Any, jobs: list[_Job], seed: int, kid: int, scale: float) -> list[torch.Tensor]:
    with one_thread(), ThreadPoolExecutor(len(jobs)) as pool:
        futs = [pool.submit(_cpu_worker, ext, xx, seed, kid, scale, ro, c0, c1) for xx, ro, c0, c1 in jobs]
        return [f.result() for f in futs]


def _triton_supports(device: Optional[str] = None, **ctx: Any) -> list[str]:
    return []


@random_project_op.register(
    "triton",
    devices=("cuda",),
    available=triton_has("projection"),
    supports=_triton_supports,
    note="P tiles generated in registers, tl.dot, deterministic split-K",
)
def _triton(x: torch.Tensor, dim: int, seed: int, kind: str, row_offset: int) -> torch.Tensor:
    B, D = x.shape
    if B == 0 or D == 0:
        return torch.zeros((B, dim), dtype=torch.float32, device=x.device)
    gaussian = ProjectionKind.parse(kind) == ProjectionKind.GAUSSIAN
    return _native.require_kernel("projection").random_project(x, dim, seed, gaussian, row_offset, 1.0 / math.sqrt(dim))


@random_project_op.register(
    "cuda", devices=("cuda",), available=cuda_has("projection"), note="tiled CUDA-core kernel, deterministic split-K"
)
def _cuda(x: torch.Tensor, dim: int, seed: int, kind: str, row_offset: int) -> torch.Tensor:
    B, D = x.shape
    out = torch.zeros((B, dim), dtype=torch.float32, device=x.device)
    if B == 0 or D == 0:
        return out
    ext = _native.require_cuda()
    splits = max(1, min(64, D // 4096))
    ws = torch.empty((splits, B, dim), dtype=torch.float32, device=x.device)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    ext.projection(
        x.data_ptr(),
        dtype_code(x.dtype),
        B,
        D,
        x.stride(0),
        x.stride(1),
        ws.data_ptr(),
        out.data_ptr(),
        dim,
        seed,
        row_offset,
        ProjectionKind.parse(kind),
        1.0 / math.sqrt(dim),
        splits,
        stream,
    )
    return out


# ------------------------------------------------------------------ public API
def random_project(
    x: Any,
    dim: int,
    seed: int,
    kind: str = "rademacher",
    *,
    row_offset: int = 0,
    backend: Optional[str] = None,
    check_finite: bool = True,
) -> torch.Tensor:
    """Project rows of ``x[B, D]`` to ``dim`` dimensions: ``x @ P[row_offset:row_offset+D]``.

    ``P[i, j] = s(seed, i, j) / sqrt(dim)`` with s a Rademacher sign or a standard
    Gaussian from the Philox4x32-10 counters (see module doc): E<xP, yP> = <x, y>.
    ``x`` may be float32, float16 or bfloat16 (fp32 accumulation); ``dim`` any
    positive multiple of 8; any batch size (B = 0 gives an empty [0, dim]).
    Returns float32 [B, dim] on x's device. ``check_finite=False`` skips the
    NaN/inf scan (the caller guarantees finite input).
    """
    x, dim, seed, kind, row_offset = _validate(x, dim, seed, kind, row_offset, check_finite)
    dev = device_type(x)
    return random_project_op.dispatch(dev, x, dim, seed, kind, row_offset, backend=backend, ctx={"dtype": x.dtype})


class Projector:
    """Streaming ``random_project`` over the parameter blocks of one long vector per sample.

    >>> pr = Projector(batch=4, dim=1024, seed=0)
    >>> for g in per_parameter_grads:   # each [4, n_i]
    ...     pr.update(g)                # rows continue where the last block ended
    >>> feats = pr.result()             # [4, 1024], equal to random_project(cat(grads, 1), ...)
    """

    def __init__(
        self,
        batch: int,
        dim: int,
        seed: int,
        kind: str = "rademacher",
        *,
        device: Optional[Union[str, torch.device]] = None,
        backend: Optional[str] = None,
        row_offset: int = 0,
    ) -> None:
        self.batch = _as_int(batch, "batch", 0, 1 << 40)
        self.dim = check_dim(dim)
        self.seed = _as_int(seed, "seed", 0, 1 << 64)
        self.kind = check_kind(kind)
        self.backend = backend
        self.rows = _as_int(row_offset, "row_offset", 0, _MAX_ROW)
        self.acc = torch.zeros((self.batch, self.dim), dtype=torch.float32, device=device)

    def update(self, block: Any, *, row_offset: Optional[int] = None) -> Projector:
        """Add ``block[batch, n] @ P[row_offset : row_offset + n]`` (default: the next rows)."""
        if isinstance(block, torch.Tensor) and block.dim() == 1 and self.batch == 1:
            block = block[None]
        if isinstance(block, torch.Tensor) and block.dim() > 2:
            block = block.reshape(block.shape[0], -1)
        if not isinstance(block, torch.Tensor) or block.dim() != 2 or block.shape[0] != self.batch:
            shape = tuple(block.shape) if isinstance(block, torch.Tensor) else type(block).__name__
            raise ValueError(f"block: expected a [{self.batch}, n] tensor, got {shape}")
        ro = self.rows if row_offset is None else row_offset
        self.acc += random_project(block, self.dim, self.seed, self.kind, row_offset=ro, backend=self.backend).to(
            self.acc.device
        )
        self.rows = max(self.rows, ro + block.shape[1])
        return self

    def result(self) -> torch.Tensor:
        return self.acc


def derive_seed(seed: int, stream: int) -> int:
    """An independent 64-bit seed for sub-stream ``stream`` (splitmix64 finaliser)."""
    z = (seed + (stream + 1) * _GOLDEN64) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return z ^ (z >> 31)


def structured_project(
    x: torch.Tensor,
    d: torch.Tensor,
    dim_in: Optional[int],
    dim_out: Optional[int],
    seed: int,
    kind: str = "rademacher",
    *,
    mask: Optional[torch.Tensor] = None,
    row_offset_in: int = 0,
    row_offset_out: int = 0,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """LoGra-style projection of per-sample linear-layer gradients.

    ``x[B, T, n_in]`` are a linear layer's input activations and ``d[B, T, n_out]``
    the gradients of the loss with respect to its outputs (weight gradient of
    sample b: ``G_b = sum_t d[b,t]^T x[b,t]``, shape [n_out, n_in] like
    ``nn.Linear.weight``). Returns ``sum_t (d[b,t] P_out)^T (x[b,t] P_in)``
    flattened to [B, k_out * k_in], which equals ``vec(G_b) @ (P_out kron P_in)``
    without forming G_b: O(B T (n_in k_in + n_out k_out + k_in k_out)) instead of
    O(B T n_in n_out). ``P_in`` uses ``seed`` and ``P_out`` uses
    ``derive_seed(seed, 1)``; ``dim_in``/``dim_out`` = None keeps that side
    unprojected (identity: use it for the small rank side of a LoRA A or B).
    ``mask[B, T]`` (bool) drops padded positions.
    """
    for name, t in (("x", x), ("d", d)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name}: expected a 3-d [B, T, n] tensor")
    if x.shape[:2] != d.shape[:2]:
        raise ValueError(f"d: batch/time shape {tuple(d.shape[:2])} != x's {tuple(x.shape[:2])}")
    B, T = x.shape[:2]
    if mask is not None:
        if mask.shape != (B, T):
            raise ValueError(f"mask: expected shape {(B, T)}, got {tuple(mask.shape)}")
        m = mask.to(x.device, torch.float32)[..., None]
        x = x.to(torch.float32) * m
        d = d.to(torch.float32) * m

    def side(t: torch.Tensor, dim: Optional[int], sd: int, ro: int, name: str) -> torch.Tensor:
        n = t.shape[2]
        if dim is None:
            return t.to(torch.float32)
        check_dim(dim, name)
        flat = t.reshape(B * T, n)
        return random_project(flat, dim, sd, kind, row_offset=ro, backend=backend).reshape(B, T, dim)

    xp = side(x, dim_in, seed, row_offset_in, "dim_in")
    dp = side(d, dim_out, derive_seed(seed, 1), row_offset_out, "dim_out")
    return torch.einsum("bta,btc->bac", dp, xp).reshape(B, -1)


__all__ = [
    "random_project",
    "Projector",
    "projection_matrix",
    "structured_project",
    "philox4x32_10",
    "derive_seed",
    "KINDS",
    "TOLERANCES",
    "accumulation_atol",
]
