"""Per-row computations over ``[rows, dim]`` arrays a block of rows at a time.

numpy's and torch's whole-array forms make a temporary as large as their input (``np.linalg.norm``
squares it, ``isfinite`` makes a ``[rows, dim]`` mask): 1.5 GB for 1,000,000 x 384 float32 rows,
on top of the rows themselves. These give the same values (each row's own computation, whatever
the block) with temporaries of ``block_rows(dim)`` rows: ``ROW_ELEMS`` values (4 MB of float32).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

ROW_BLOCK = 1 << 16  # rows per block of narrow per-row columns (kNN lists: [ROW_BLOCK, k])
ROW_ELEMS = 1 << 20  # values per block of [rows, dim] rows: 2,730 rows of 384 dimensions


def block_rows(dim: int) -> int:
    """Rows per block of ``dim``-wide rows: ``ROW_ELEMS`` values, at least one row."""
    return max(1, ROW_ELEMS // max(1, int(dim)))


def row_norms(e: np.ndarray) -> np.ndarray:
    """``np.linalg.norm(e, axis=1, keepdims=True)``: the same values, bit for bit, in ``e``'s dtype."""
    out = np.empty((len(e), 1), dtype=e.dtype)
    B = block_rows(e.shape[1] if e.ndim == 2 else 1)
    for s in range(0, len(e), B):
        out[s : s + B] = np.linalg.norm(e[s : s + B], axis=1, keepdims=True)
    return out


def nonfinite_rows(x: Any) -> np.ndarray:
    """bool ``[rows]``: the rows of ``x`` (a 2-d numpy array or torch tensor) holding NaN or inf."""
    B = block_rows(x.shape[1] if x.ndim == 2 else 1)
    if isinstance(x, torch.Tensor):
        parts = [(~torch.isfinite(x[s : s + B]).all(dim=1)).cpu().numpy() for s in range(0, len(x), B)]
    else:
        parts = [~np.isfinite(x[s : s + B]).all(axis=1) for s in range(0, len(x), B)]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def unit_rows(x: np.ndarray, out: Optional[np.ndarray] = None, floor: float = 1e-12) -> np.ndarray:
    """float32 rows of ``x`` divided by their L2 norms (at least ``floor``), written into ``out``
    (``out=x``: in place; None: a new array), a block at a time; the same values as
    ``x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), floor)``."""
    if out is None:
        out = np.empty(x.shape, np.float32)
    B = block_rows(x.shape[1] if x.ndim == 2 else 1)
    for s in range(0, len(x), B):
        blk = np.asarray(x[s : s + B], dtype=np.float32)
        n = np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), floor)
        np.divide(blk, n, out=out[s : s + B])
    return out
