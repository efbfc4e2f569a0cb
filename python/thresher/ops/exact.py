"""Exact sums of float64 values: the same result whatever the order or grouping of the values.

A float sum depends on the order of its terms, so a mean computed over a pool in one piece and
the same mean accumulated shard by shard differ in their last bits, and a selection that ranks on
it can differ too. Every finite float64 is an integer multiple of ``2**-1074``; :class:`ExactSum`
adds values as such integers (a Python ``int`` scaled by ``2**SHIFT``), so partial sums of any
split of the values add up to the same number, and :meth:`ExactSum.mean` is the correctly rounded
mean. The work is vectorised: each value's 53-bit integer significand is split into two 27-bit
halves whose sums per binary exponent ``np.bincount`` computes exactly in float64 (every partial
sum is an integer below ``2**53`` for chunks of at most ``CHUNK`` values).

:func:`exact_mean_std` is the two-pass mean and population standard deviation that
``thresher.ops.normalize(..., "zscore")`` uses: the exact mean, then the exact sum of the rounded
squared deviations, divided and rounded once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ExactSum", "exact_mean_std"]

SHIFT = 1127  # 1074 (the smallest subnormal's exponent) + 53 (the significand's bits): exponents >= 0
CHUNK = 1 << 24  # values per bincount: a sum of CHUNK halves (< 2**27 each) stays below 2**53
_HALF = 1 << 27


class ExactSum:
    """The exact sum of the float64 values added (finite ones; an infinite or NaN value makes the
    sum that value, as float addition would)."""

    def __init__(self) -> None:
        self.total = 0  # the sum times 2**SHIFT
        self.n = 0
        self.special = 0.0  # the float sum of the non-finite values (0.0: none)

    def add(self, values: Any) -> "ExactSum":
        v = np.ascontiguousarray(np.asarray(values, dtype=np.float64).ravel())
        self.n += len(v)
        fin = np.isfinite(v)
        if not fin.all():
            with np.errstate(invalid="ignore"):  # inf + -inf: NaN, as float addition gives
                self.special = float(self.special + np.sum(v[~fin]))
            v = v[fin]
        for i in range(0, len(v), CHUNK):
            self.total += _chunk_sum(v[i : i + CHUNK])
        return self

    def value(self) -> float:
        """The sum, correctly rounded (inf when it overflows)."""
        return self._ratio(1)

    def mean(self) -> float:
        """The mean of the values added, correctly rounded (NaN when none were added)."""
        return self._ratio(self.n) if self.n else float("nan")

    def _ratio(self, den: int) -> float:
        if self.special != 0.0 or math.isnan(self.special):
            return self.special
        try:
            return self.total / (den << SHIFT)  # int / int: correctly rounded
        except OverflowError:
            return float("inf") if self.total > 0 else float("-inf")


def _chunk_sum(v: np.ndarray) -> int:
    """The sum of at most ``CHUNK`` finite values, times ``2**SHIFT``, as an exact integer."""
    v = v[v != 0]
    if not len(v):
        return 0
    mant, exp = np.frexp(v)  # v = mant * 2**exp, 0.5 <= |mant| < 1
    sig = (mant * float(1 << 53)).astype(np.int64)  # exact: 53-bit integers
    shift = exp.astype(np.int64) + (SHIFT - 53)  # v = sig * 2**(shift - SHIFT), shift >= 0
    lo = (sig & (_HALF - 1)).astype(np.float64)  # 0 <= lo < 2**27
    hi = (sig >> 27).astype(np.float64)  # |hi| < 2**26 (arithmetic shift: sig = hi * 2**27 + lo)
    base = int(shift.min())
    idx = shift - base
    s_lo = np.bincount(idx, weights=lo)
    s_hi = np.bincount(idx, weights=hi)
    total = 0
    for j in np.flatnonzero((s_lo != 0) | (s_hi != 0)):
        total += ((int(s_hi[j]) << 27) + int(s_lo[j])) << (base + int(j))
    return total


def exact_mean_std(values: Any) -> tuple[float, float]:
    """Mean and population standard deviation (ddof 0) of finite ``values``, independent of their
    order: the exact mean, correctly rounded; then the exact sum of ``(x - mean) ** 2`` (each term
    rounded to float64), divided by the count and rounded once, and its square root. (NaN, NaN) for
    no values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if not len(v):
        return float("nan"), float("nan")
    mean = ExactSum().add(v).mean()
    d = v - mean
    return mean, math.sqrt(ExactSum().add(d * d).mean())
