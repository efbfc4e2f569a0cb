"""pytest-benchmark: pareto_ranks (thresher cpu) against moocore.pareto_rank.

Run with ``PYTHONPATH=python python -m pytest benchmarks/test_bench_pareto.py``
(add ``--benchmark-group-by=param`` to put thresher and moocore side by side).
Each case first checks that both give identical ranks. Sizes stay at 10^5 so the
file runs in seconds; ``bench_pareto.py`` covers 10^4..10^6 and writes JSON.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")
moocore = pytest.importorskip("moocore")

from thresher import _native  # noqa: E402
from thresher.ops import pareto_ranks  # noqa: E402

N = 100_000


def _data(kind: str, m: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "uniform":
        return rng.random((N, m))
    if kind == "corr":
        z = rng.random(N)
        return np.ascontiguousarray(np.stack([z + 0.02 * rng.random(N) for _ in range(m)], 1))
    return rng.integers(0, 100, size=(N, m)).astype(np.float64)


CASES = [(m, kind) for m in (2, 3) for kind in ("uniform", "corr", "ties")]


@pytest.mark.skipif(_native.cpu_ext() is None, reason="thresher._C not built")
@pytest.mark.parametrize("impl", ["thresher", "moocore"])
@pytest.mark.parametrize("m,kind", CASES)
def test_pareto_ranks(benchmark, impl, m, kind):
    a = _data(kind, m)
    want = moocore.pareto_rank(a)
    fn = (
        (lambda: pareto_ranks(a, maximize=False, backend="cpu").numpy())
        if impl == "thresher"
        else (lambda: moocore.pareto_rank(a))
    )
    np.testing.assert_array_equal(fn(), want)
    benchmark.group = f"pareto M={m} {kind} N={N}"
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
