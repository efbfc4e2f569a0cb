"""topk and TopKAccumulator: every backend that can run here against the reference,
and the reference against a plain-Python sort (the oracle of the oracle)."""

from __future__ import annotations

import math

import pytest
import torch

from thresher.ops import TopKAccumulator, topk
from thresher.ops.topk import order_indices, topk_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# The Triton interpreter evaluates NaN/inf lanes with numpy, which warns; the results are checked.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]


OP = "topk"


def python_topk(values: list[float], k: int, largest: bool) -> list[int]:
    """Definition: sort by (NaN last, value best first, index asc)."""

    def key(i):
        v = values[i]
        if math.isnan(v):
            return (1, 0.0, i)
        return (0, -v if largest else v, i)

    return sorted(range(len(values)), key=key)[:k]


def tricky(n: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Many ties (small integer range), NaNs, +-inf, -0.0 next to +0.0."""
    x = torch.randint(-4, 5, (n,), generator=gen).to(torch.float64)
    if n >= 8:
        pos = torch.randperm(n, generator=gen)
        x[pos[0]] = math.nan
        x[pos[1]] = math.inf
        x[pos[2]] = -math.inf
        x[pos[3]] = -0.0
        x[pos[4]] = 0.0
        x[pos[5]] = math.nan
    return x.to(dtype)


SIZES = [0, 1, 2, 7, 64, 1023, 4097]


def ks(n):
    return sorted({0, 1, 3, n // 2, max(n - 1, 0), n, n + 5})


@pytest.mark.parametrize("n", SIZES)
def test_reference_matches_python_sort(n):
    gen = torch.Generator().manual_seed(n)
    x = tricky(n, torch.float64, gen)
    for largest in (True, False):
        for k in ks(n):
            v, i = topk_reference(x, min(k, n), largest)
            expect = python_topk(x.tolist(), k, largest)
            assert i.tolist() == expect
            assert i.dtype == torch.int64
            torch.testing.assert_close(v, x[i], equal_nan=True)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("n", SIZES)
def test_backend_matches_reference(backend, n, backend_available):
    dev = backend_available(OP, backend, dtype=torch.float32, n=n)
    gen = torch.Generator().manual_seed(100 + n)
    x = tricky(n, torch.float32, gen)
    for largest in (True, False):
        for k in ks(n):
            v, i = topk(x.to(dev), k, largest, backend=backend)
            rv, ri = topk(x, k, largest, backend="reference")
            assert i.cpu().tolist() == ri.tolist(), (backend, n, k, largest)
            assert torch.equal(v.cpu().view(torch.int32), rv.view(torch.int32))  # bitwise (-0.0 kept)
            assert v.dtype == x.dtype and i.dtype == torch.int64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_dtypes(backend, dtype, backend_available):
    if backend == "triton" and dtype == torch.float64 and not backend_available.reasons(OP, backend):
        assert any("float64" in r for r in backend_available.reasons(OP, backend, dtype=dtype))
        with pytest.raises(RuntimeError, match="float64"):
            topk(torch.zeros(4, dtype=dtype, device=backend_available(OP, backend)), 2, backend="triton")
        return
    dev = backend_available(OP, backend, dtype=dtype, n=10)
    gen = torch.Generator().manual_seed(7)
    for x in (tricky(1500, dtype, gen), (torch.randn(777, generator=gen) * 1e3).to(dtype)):
        for largest in (True, False):
            for k in (1, 10, 700, 2000):
                v, i = topk(x.to(dev), k, largest, backend=backend)
                assert i.cpu().tolist() == python_topk(x.double().tolist(), k, largest)
                assert v.dtype == dtype


def test_cpu_large_parallel_and_refinement(backend_available):
    """Big enough for the multi-threaded passes; ties deep in the lower radix digits."""
    backend_available(OP, "cpu")
    gen = torch.Generator().manual_seed(11)
    n = 1_200_000  # the C++ kernel goes multi-threaded from 2**20 scores
    base = torch.randn(n // 3, generator=gen)
    x = torch.cat([base, base + 2.0**-20, base])[torch.randperm(n, generator=gen)]  # exact duplicates
    x[::1000] = float("nan")
    for largest in (True, False):
        order = order_indices(x, largest)
        for k in (1, 3000, 600_000, n):
            v, i = topk(x, k, largest, backend="cpu")
            assert torch.equal(i, order[:k])
    # all equal: the candidate list survives every digit; lowest indices win
    same = torch.full((1_100_000,), 1.5)
    assert torch.equal(topk(same, 1000, backend="cpu")[1], torch.arange(1000))
    # float64 and the 16-bit dtypes on the parallel path
    for dt in (torch.float64, torch.float16, torch.bfloat16):
        y = x.to(dt)
        assert torch.equal(topk(y, 2000, backend="cpu")[1], topk_reference(y, 2000, True)[1])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_matches_torch_topk_without_ties(backend, backend_available):
    backend_available(OP, backend)
    gen = torch.Generator().manual_seed(3)
    x = torch.randperm(50_000, generator=gen).float() / 7.0  # distinct values
    for largest in (True, False):
        v, i = topk(x, 500, largest, backend=backend)
        tv, ti = torch.topk(x, 500, largest=largest)
        assert torch.equal(v, tv) and torch.equal(i, ti)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_nan_never_before_finite(backend, backend_available):
    dev = backend_available(OP, backend)
    x = torch.tensor([math.nan, -math.inf, math.nan, 1.0, math.inf], device=dev)
    v, i = topk(x, 5, True, backend=backend)
    assert i.tolist() == [4, 3, 1, 0, 2]
    v, i = topk(x, 5, False, backend=backend)
    assert i.tolist() == [1, 3, 4, 0, 2]
    v, i = topk(x, 3, False, backend=backend)
    assert not torch.isnan(v).any()


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_k_clamps_and_empty(backend, backend_available):
    dev = backend_available(OP, backend)
    x = torch.tensor([3.0, 1.0, 2.0], device=dev)
    v, i = topk(x, 10, backend=backend)
    assert i.tolist() == [0, 2, 1]
    v, i = topk(x, 0, backend=backend)
    assert v.shape == (0,) and i.shape == (0,) and i.dtype == torch.int64
    v, i = topk(torch.zeros(0, device=dev), 5, backend=backend)
    assert v.shape == (0,) and i.shape == (0,)


# ------------------------------------------------------------- accumulator
@pytest.mark.parametrize("largest", [True, False])
def test_accumulator_equals_topk_of_concatenation(largest):
    gen = torch.Generator().manual_seed(21)
    shards = [tricky(n, torch.float32, gen) for n in (0, 5, 300, 1, 1024, 77, 2000)]
    full = torch.cat(shards)
    for k in (1, 10, 500, 10_000):
        acc = TopKAccumulator(k, largest)
        for s in shards:
            acc.update(s)
        v, i = acc.result()
        rv, ri = topk(full, k, largest, backend="reference")
        assert i.tolist() == ri.tolist()
        assert torch.equal(v.view(torch.int32), rv.view(torch.int32))


@pytest.mark.parametrize("k", [0, 1, 7, 64, 700, 5000])
def test_accumulator_holds_at_most_2k_plus_a_shard_and_merges_in_bulk(k, monkeypatch):
    """Shards' best rows wait until they hold more than k values, then one sort keeps k: at most 2k plus a
    shard held, and far fewer sorts than shards when k is a large part of the stream (k >= the stream: one,
    in result()); the result is the concatenation's top-k (ties, NaN) and a result mid-stream changes nothing."""
    merges = []
    real = TopKAccumulator._merge
    monkeypatch.setattr(TopKAccumulator, "_merge", lambda self: merges.append(self._n_waiting) or real(self))
    gen = torch.Generator().manual_seed(23)
    shards = [tricky(n, torch.float32, gen) for n in [37] * 60 + [0, 1, 250]]
    acc = TopKAccumulator(k, True, backend="reference")
    for j, sh in enumerate(shards):
        acc.update(sh)
        assert acc.held <= 2 * k + sh.numel()
        if j == 30:
            mid, _ = acc.result()
            assert mid.numel() == min(k, sum(x.numel() for x in shards[:31]))
    v, i = acc.result()
    rv, ri = topk(torch.cat(shards), k, True, backend="reference")
    assert i.tolist() == ri.tolist() and torch.equal(v.view(torch.int32), rv.view(torch.int32))
    # 63 shards: a merge per k waiting values (2,471 rows), plus the two results
    assert len(merges) <= {0: 63, 1: 63, 7: 63, 64: 40, 700: 5, 5000: 2}[k]


def test_accumulator_out_of_order_shards_with_offsets(backend_available):
    backend_available(OP, "cpu")
    gen = torch.Generator().manual_seed(22)
    full = tricky(3000, torch.float32, gen)
    bounds = [0, 700, 701, 1900, 3000]
    pieces = [(bounds[j], full[bounds[j] : bounds[j + 1]]) for j in range(len(bounds) - 1)]
    acc = TopKAccumulator(250, True, backend="cpu")
    for off, s in reversed(pieces):
        acc.update(s, offset=off)
    assert acc.result()[1].tolist() == topk_reference(full, 250, True)[1].tolist()


def test_accumulator_empty_and_bad():
    v, i = TopKAccumulator(3).result()
    assert v.numel() == 0 and i.numel() == 0
    with pytest.raises(ValueError, match="k"):
        TopKAccumulator(-1)
    with pytest.raises(ValueError, match="offset"):
        TopKAccumulator(3).update(torch.zeros(3), offset=-2)
    with pytest.raises(ValueError, match="scores"):
        TopKAccumulator(3).update(torch.zeros(3, 2))


# ------------------------------------------------------------------ bad input
def test_negative_k():
    with pytest.raises(ValueError, match="k"):
        topk(torch.zeros(3), -1)


def test_non_integer_k():
    with pytest.raises(ValueError, match="k"):
        topk(torch.zeros(3), 1.5)
    with pytest.raises(ValueError, match="k"):
        topk(torch.zeros(3), True)


def test_2d_scores():
    with pytest.raises(ValueError, match="scores"):
        topk(torch.zeros(3, 2), 1)


def test_wrong_dtype():
    with pytest.raises(ValueError, match="scores"):
        topk(torch.arange(5), 2)


def test_native_rechecks_k():
    from thresher._native import cpu_ext

    c = cpu_ext()
    if c is None:
        pytest.skip("thresher._C not built")
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="k"):
        c.topk(x.view(torch.int32).numpy(), 0, 9, True, torch.empty(9, dtype=torch.int64).numpy())
    with pytest.raises(ValueError, match="scores"):
        c.topk(x.view(torch.int32).numpy(), 1, 2, True, torch.empty(2, dtype=torch.int64).numpy())


def test_bad_largest():
    with pytest.raises(ValueError, match="largest"):
        topk(torch.zeros(3), 1, largest="yes")
