"""Numerics that do not depend on the thread count.

torch's CPU reductions and MKL's matrix-vector products split their work by the number of intra-op
threads, so the same sum can round differently on a 2-core laptop, a 64-core node and a Ray worker
(which runs one thread per CPU it was given). Code whose result must be the same on every engine and
layout (a criterion's score) runs those steps under :func:`one_thread`.

Matrix products: MKL's GEMM rounds a product of 5-11 rows (a forward of a short row, an answer-only
pass, a LoRA step on a short batch) with the thread count unless its strict conditional numerical
reproducibility is on (``MKL_CBWR=AUTO,STRICT``), which ``import thresher`` sets when the user has not
(MKL reads it at the process's first BLAS call). :func:`blas_mode` says what this process got.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

log = logging.getLogger("thresher.ops")

STRICT_CBWR = "AUTO,STRICT"  # what ``import thresher`` sets (thresher/__init__.py)
_CBWR_ALL, _CBWR_STRICT = -1, 0x10000  # MKL_CBWR_ALL (~0), MKL_CBWR_STRICT


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread (the previous count restored after it)."""
    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@functools.lru_cache(maxsize=1)
def _mkl_cbwr_get() -> Optional[Callable[[int], int]]:
    """MKL's settings query, from the library torch links MKL into (None: not an MKL build, or not found)."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        fn = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
    return fn


def blas_mode() -> dict:
    """How this process's CPU matrix products round: ``{"blas", "MKL_CBWR", "strict"}``. ``strict``: MKL's
    own answer (its settings query) to whether a product's bits are independent of the thread count; None
    when it cannot be asked (not an MKL build)."""
    get = _mkl_cbwr_get()
    strict = None if get is None else bool(get(_CBWR_ALL) & _CBWR_STRICT)
    blas = "mkl" if torch.backends.mkl.is_available() else "other"
    return {"blas": blas, "MKL_CBWR": os.environ.get("MKL_CBWR"), "strict": strict}


def warn_unless_strict() -> dict:
    """:func:`blas_mode`, with one warning when MKL runs without strict reproducibility although thresher
    asked for it (the process made its first BLAS call before ``import thresher``)."""
    mode = blas_mode()
    if mode["strict"] is False and mode["MKL_CBWR"] == STRICT_CBWR:
        _warn_once()
    return mode


@functools.lru_cache(maxsize=1)
def _warn_once() -> None:
    log.warning(
        "MKL_CBWR=%s came after this process's first matrix product, so MKL ignored it: model scores may "
        "differ in their last bits with the thread count (import thresher before using torch, or set "
        "MKL_CBWR before starting Python)",
        STRICT_CBWR,
    )
