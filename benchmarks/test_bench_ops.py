"""pytest-benchmark view of benchmarks/bench_ops.py (smaller sizes, CPU tensors).

Run: ``PYTHONPATH=python python -m pytest benchmarks/test_bench_ops.py --benchmark-group-by=group``.
Each group holds thresher and its torch baseline on the same data; compare within a
group (the machine is shared and noisy). Not part of the test suite (no timed asserts).
"""

from __future__ import annotations

import pytest
import torch

from thresher.ops import segment_reduce, topk

N = 2_000_000
S = 20_000


@pytest.fixture(scope="module")
def ragged():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, generator=g)
    cuts = torch.sort(torch.randint(0, N + 1, (S - 1,), generator=g))[0]
    off = torch.cat([torch.tensor([0]), cuts, torch.tensor([N])]).to(torch.int64)
    seg = torch.repeat_interleave(torch.arange(S), off[1:] - off[:-1])
    return x, off, seg


@pytest.mark.benchmark(group="segment_reduce-mean")
def test_segment_reduce_thresher(benchmark, ragged):
    x, off, seg = ragged
    out = benchmark(segment_reduce, x, off, "mean")
    base = torch.zeros(S).index_add_(0, seg, x) / torch.bincount(seg, minlength=S)
    torch.testing.assert_close(out, base, rtol=1e-4, atol=1e-5, equal_nan=True)


@pytest.mark.benchmark(group="segment_reduce-mean")
def test_segment_reduce_torch_index_add(benchmark, ragged):
    x, off, seg = ragged
    benchmark(lambda: torch.zeros(S).index_add_(0, seg, x) / torch.bincount(seg, minlength=S))


@pytest.mark.benchmark(group="topk-1pct")
def test_topk_thresher(benchmark, ragged):
    x = ragged[0]
    v, i = benchmark(topk, x, N // 100)
    assert torch.equal(v, torch.topk(x, N // 100).values)


@pytest.mark.benchmark(group="topk-1pct")
def test_topk_torch(benchmark, ragged):
    x = ragged[0]
    benchmark(torch.topk, x, N // 100)
