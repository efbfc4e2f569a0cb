"""The Python mirror of ``csrc/include/thresher/abi.h``: every code that crosses the
Python/native boundary.

The op modules pass these (``IntEnum`` values are ints) to ``thresher._C`` and
``thresher._cuda``, and the Triton kernels read them as constexprs, so no
dtype, reduction, generator or metric code is written anywhere else. Both
extensions export the same enums with ``py::enum_`` (and ``ABI_CONSTANTS``);
``tests/test_ops_abi.py`` checks that they agree with this module value by value.
This module imports nothing from thresher.
"""

from __future__ import annotations

from enum import IntEnum

import torch

__all__ = [
    "DType",
    "SegmentOp",
    "ProjectionKind",
    "KnnMetric",
    "CONSTANTS",
    "dtype_code",
]


class DType(IntEnum):
    """Element type of a buffer (half types travel as 16-bit patterns)."""

    FLOAT32 = 0
    FLOAT64 = 1
    FLOAT16 = 2
    BFLOAT16 = 3


class SegmentOp(IntEnum):
    """``segment_reduce`` reductions; ``SegmentOp.parse("logmeanexp")`` maps the public names."""

    SUM = 0
    MEAN = 1
    MAX = 2
    MIN = 3
    COUNT = 4
    LOGMEANEXP = 5

    @classmethod
    def parse(cls, name: str) -> SegmentOp:
        return cls[name.upper()]


class ProjectionKind(IntEnum):
    """Entries of the implicit random projection matrix."""

    RADEMACHER = 0
    GAUSSIAN = 1

    @classmethod
    def parse(cls, name: str) -> ProjectionKind:
        return cls[name.upper()]


class KnnMetric(IntEnum):
    """knn similarity: inner product (larger is nearer) or squared Euclidean distance."""

    IP = 0
    L2 = 1

    @classmethod
    def parse(cls, name: str) -> KnnMetric:
        return cls[name.upper()]


# Shared constants (abi.h and philox.h), exported by the extensions as ABI_CONSTANTS.
CONSTANTS: dict[str, int] = {
    # CUDA topk: scores per block of the count/compaction kernels, histogram bins, select-state words.
    "TOPK_COMPACT_BLOCK": 1024,
    "TOPK_RADIX_BINS": 256,
    "TOPK_STATE_WORDS": 4,
    # Philox4x32-10 (philox.h): round multipliers, Weyl key increments, stream tags, columns per call.
    "PHILOX_ROUND_A": 0xD2511F53,
    "PHILOX_ROUND_B": 0xCD9E8D57,
    "PHILOX_KEY_A": 0x9E3779B9,
    "PHILOX_KEY_B": 0xBB67AE85,
    "PHILOX_STREAM_RADEMACHER": 0x52414430,  # "RAD0"
    "PHILOX_STREAM_GAUSSIAN": 0x47415530,  # "GAU0"
    "PHILOX_RADEMACHER_BLOCK": 128,
    "PHILOX_GAUSSIAN_BLOCK": 4,
}

_DTYPES: dict[torch.dtype, DType] = {
    torch.float32: DType.FLOAT32,
    torch.float64: DType.FLOAT64,
    torch.float16: DType.FLOAT16,
    torch.bfloat16: DType.BFLOAT16,
}


def dtype_code(dtype: torch.dtype) -> DType:
    """The ABI code of a floating torch dtype (ValueError for any other)."""
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no native code (float32, float64, float16, bfloat16)") from None
