"""Matrix products whose rows' bits do not follow the thread count.

A product whose row count is not a multiple of ``BLAS_ROW_TILE`` rounds its rows with the thread
count under MKL's default dispatch (measured with MKL 2024.2 on its AVX2, AVX and SSE4.2 paths alike,
``tests/ops/test_blas_rows.py``: at 2 threads products of 5-7 and 9-11 rows differ from 1 thread, at 16
threads also 17-19 and 25-27, at 64 threads 45 row counts up to 171; a multiple of 4 rows never did,
at 2, 3, 8, 16, 32 or 64 threads). A model's forward on
``B x L`` tokens multiplies ``B * L`` rows in every linear layer, so the model paths pad their
batches (right padding, which causal attention never lets a real token see; masked padding for the
encoders) until ``B * L`` is a multiple of the tile: :func:`tiled_width`.
``benchmarks/bench_blas_strict.py`` measures what is left.
"""

from __future__ import annotations

import os

import torch


def _tile_from_env() -> int:
    raw = os.environ.get("THRESHER_BLAS_ROW_TILE", "4")
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"THRESHER_BLAS_ROW_TILE: expected a positive integer, got {raw!r}")
    return int(raw)


#: Rows per tile (``THRESHER_BLAS_ROW_TILE``, read at import; 1 turns the padding off, and the bits of short
#: products then follow the thread count: ``benchmarks/bench_blas_tile.py`` measures both).
BLAS_ROW_TILE = _tile_from_env()


def tiled_width(rows: int, width: int, tile: int = BLAS_ROW_TILE) -> int:
    """The smallest ``w >= width`` with ``rows * w`` a multiple of ``tile`` (at most ``width + tile - 1``):
    the padded length of a batch of ``rows`` sequences whose longest holds ``width`` tokens."""
    if rows < 0 or width < 0:
        raise ValueError(f"tiled_width: rows and width must be >= 0, got {rows} and {width}")
    w = width
    while (rows * w) % tile:
        w += 1
    return w


def tile_matmul(x: torch.Tensor, w_t: torch.Tensor, tile: int = BLAS_ROW_TILE) -> torch.Tensor:
    """``x @ w_t`` ([B, H] x [H, K] -> [B, K]) as products of exactly ``tile`` rows (the last one padded with
    zeros): each row's bits depend on neither the rows computed with it nor the thread count. A narrow
    product's rows otherwise round with the row count (a 6-column readout of 1 row and of 6 rows differ),
    so a judge's score would follow its companions. One small product per ``tile`` rows."""
    n = x.shape[0]
    out = x.new_empty((n, w_t.shape[1]))
    full = n - n % tile
    for s in range(0, full, tile):
        torch.mm(x[s : s + tile], w_t, out=out[s : s + tile])
    if full < n:
        last = x.new_zeros((tile, x.shape[1]))
        last[: n - full] = x[full:]
        out[full:] = (last @ w_t)[: n - full]
    return out


def tile_rows(x: torch.Tensor, tile: int = BLAS_ROW_TILE) -> torch.Tensor:
    """``x`` ([n, ...]) with zero rows appended up to a multiple of ``tile`` (differentiable): gathered hidden
    states padded before a head's product, whose rows then do not follow the thread count; slice the first
    ``n`` rows of the result."""
    extra = (-x.shape[0]) % tile
    return torch.cat([x, x.new_zeros((extra,) + tuple(x.shape[1:]))]) if extra else x


#: Values per block of an elementwise activation on the CPU: torch's grain size, so one block is one task.
ACT_BLOCK = 1 << 15
_ACTIVATIONS = (torch.nn.SiLU, torch.nn.GELU, torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.Mish)


class BlockwiseActivation(torch.nn.Module):
    """An activation computed on a CPU tensor in blocks of :data:`ACT_BLOCK` values (one task each).

    torch splits an elementwise op over more than 32,768 values into ``min(threads, ceil(n / 32,768))``
    chunks and computes each chunk's last values (its length modulo the vector width) with its scalar
    kernel, whose ``exp`` rounds differently from the vector one: SiLU on 88 x 1,536 values differs
    between 1 thread and 5-64. In blocks, every boundary falls on a multiple of the vector width whatever
    the thread count. Tensors on other devices, and small ones, go straight to the activation."""

    def __init__(self, act: torch.nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        if x.device.type != "cpu" or n <= ACT_BLOCK:
            return self.act(x)
        flat = x.reshape(-1)
        return torch.cat([self.act(flat[s : s + ACT_BLOCK]) for s in range(0, n, ACT_BLOCK)]).view(x.shape)


def _is_activation(m: torch.nn.Module) -> bool:
    if isinstance(m, BlockwiseActivation) or any(True for _ in m.parameters(recurse=False)):
        return False
    return isinstance(m, _ACTIVATIONS) or (type(m).__module__.startswith("transformers.activations"))


def blockwise_activations(model: torch.nn.Module) -> int:
    """Wrap every parameter-free activation module of ``model`` (torch's and transformers' own) in a
    :class:`BlockwiseActivation`, in place; the number wrapped (0 when done before). No parameter, buffer
    or state-dict key changes."""
    done = 0
    for parent in list(model.modules()):
        if isinstance(parent, BlockwiseActivation):
            continue
        for name, child in list(parent.named_children()):
            if _is_activation(child):
                setattr(parent, name, BlockwiseActivation(child))
                done += 1
    return done
