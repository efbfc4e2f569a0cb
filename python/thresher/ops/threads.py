"""Numerics that do not depend on the thread count.

torch's CPU reductions and MKL's matrix-vector products split their work by the number of intra-op
threads, so the same sum can round differently on a 2-core laptop, a 64-core node and a Ray worker
(which runs one thread per CPU it was given). Code whose result must be the same on every engine and
layout (a criterion's score) runs those steps under :func:`one_thread`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


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
