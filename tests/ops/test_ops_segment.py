"""segment_reduce: every backend that can run here against the reference, and the
reference against a float64 per-segment loop (the oracle of the oracle)."""

from __future__ import annotations

import math

import pytest
import torch

from thresher.ops import segment_reduce
from thresher.ops.segment import SEGMENT_OPS, TOLERANCES, segment_reduce_reference

OPS = list(SEGMENT_OPS)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# The Triton interpreter evaluates NaN/inf lanes with numpy, which warns; the results are checked.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]
OP = "segment_reduce"


def test_cpu_and_triton_backends_present(backend_available):
    assert backend_available.reasons(OP, "reference") == []
    assert backend_available.reasons(OP, "cpu") == []  # the C++ extension is built in dev and CI
    assert backend_available.reasons(OP, "triton") == []  # GPU, or TRITON_INTERPRET=1 set by conftest


def ragged_offsets(n: int, s: int, gen: torch.Generator, empty_frac: float = 0.2) -> torch.Tensor:
    """[s+1] offsets from 0 to n with some empty segments (s >= 1)."""
    cuts = torch.sort(torch.randint(0, n + 1, (s - 1,), generator=gen))[0]
    off = torch.cat([torch.tensor([0]), cuts, torch.tensor([n])])
    # force a few empty segments by duplicating cut points
    for i in range(1, s):
        if torch.rand(1, generator=gen).item() < empty_frac:
            off[i] = off[i - 1]
    return off.to(torch.int64)


def naive(values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
    """float64 loop over segments: the definition of the op."""
    x = values.to(torch.float64).reshape(values.shape[0], -1 if values.dim() == 2 else 1)
    rows = []
    for s in range(offsets.numel() - 1):
        seg = x[int(offsets[s]) : int(offsets[s + 1])]
        n = seg.shape[0]
        if op == "count":
            rows.append(torch.full((x.shape[1],), float(n), dtype=torch.float64))
            continue
        if n == 0:
            rows.append(torch.full((x.shape[1],), 0.0 if op == "sum" else math.nan, dtype=torch.float64))
            continue
        if op == "sum":
            r = seg.sum(0)
        elif op == "mean":
            r = seg.sum(0) / n
        elif op == "max":
            r = seg.max(0).values
        elif op == "min":
            r = seg.min(0).values
        else:  # logmeanexp = m + log(sum(exp(x - m))) - log(n); +inf / all -inf stay as the max
            m = seg.max(0).values
            fin = torch.isfinite(m)
            ms = torch.where(fin, m, torch.zeros_like(m))
            r = torch.where(fin, ms + torch.log(torch.exp(seg - ms).sum(0)) - math.log(n), m)
        r = torch.where(torch.isnan(seg).any(0), torch.full_like(r, math.nan), r)
        rows.append(r)
    out = torch.stack(rows) if rows else torch.zeros((0, x.shape[1]), dtype=torch.float64)
    return out.reshape(-1) if values.dim() == 1 else out


def assert_matches(
    got: torch.Tensor, exact: torch.Tensor, ref: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, op: str
) -> None:
    """got within a bound tied to the reference's own error against the float64 value."""
    assert got.shape == exact.shape
    g, e, r = got.to(torch.float64), exact, ref.to(torch.float64)
    nan_g, nan_e = torch.isnan(g), torch.isnan(e)
    assert torch.equal(nan_g, nan_e), f"NaN pattern differs for {op}"
    fin = ~nan_e
    inf_e = torch.isinf(e)
    assert torch.equal(g[inf_e & fin], e[inf_e & fin]), f"inf results differ for {op}"
    m = fin & ~inf_e
    if op in ("count", "max", "min"):
        assert torch.equal(g[m], e[m]), f"{op} must be exact"
        return
    acc_eps = TOLERANCES[values.dtype][0]
    x = values.to(torch.float64).reshape(values.shape[0], -1 if values.dim() == 2 else 1).abs()
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x))
    lengths = (offsets[1:] - offsets[:-1]).to(torch.float64).reshape(-1, 1)
    seg = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets[1:] - offsets[:-1])
    absum = torch.zeros((offsets.numel() - 1, x.shape[1]), dtype=torch.float64).index_add_(0, seg, x)
    if op == "mean":
        scale = absum / lengths.clamp(min=1)
    elif op == "sum":
        scale = absum
    else:  # logmeanexp: relative to 1 + |result|
        scale = 1.0 + e.abs().reshape(absum.shape)
    scale = scale.reshape(e.shape)
    # error of the reference (float32 accumulation) plus a few ulps of the input scale per element
    nmax = float(lengths.max()) if lengths.numel() else 1.0
    tol = 2.0 * (r - e).abs() + 4.0 * acc_eps * scale * max(1.0, math.log2(max(nmax, 1.0)) + 1) + 1e-300
    err = (g - e).abs()
    bad = m & (err > tol)
    assert not bad.any(), f"{op}: max err {err[bad].max().item()} > tol {tol[bad].min().item()}"


CASES = [  # (N, S, D)
    (0, 1, None),
    (0, 3, None),
    (1, 1, None),
    (7, 3, None),
    (1023, 17, None),
    (4097, 40, None),
    (7, 4, 1),
    (33, 5, 3),
    (257, 9, 33),
    (300, 4, 70),
]


@pytest.mark.parametrize("n,s,d", CASES)
def test_reference_matches_naive(n, s, d):
    gen = torch.Generator().manual_seed(n * 31 + s)
    shape = (n,) if d is None else (n, d)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    off = ragged_offsets(n, s, gen)
    for op in OPS:
        got = segment_reduce_reference(x, off, op)
        exact = naive(x, off, op)
        assert_matches(got, exact, exact, x, off, op)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
@pytest.mark.parametrize("n,s,d", CASES)
def test_backend_matches_reference(backend, n, s, d, backend_available):
    dev = backend_available(OP, backend)
    gen = torch.Generator().manual_seed(n * 7 + s)
    shape = (n,) if d is None else (n, d)
    x = torch.randn(shape, generator=gen) * 2
    if n > 5:  # sprinkle specials into one segment-sized region
        x.view(-1)[n // 2] = float("nan")
        x.view(-1)[1] = float("inf")
        x.view(-1)[2] = float("-inf")
    off = ragged_offsets(n, s, gen)
    for op in OPS:
        got = segment_reduce(x.to(dev), off.to(dev), op, backend=backend).cpu()
        ref = segment_reduce(x, off, op, backend="reference")
        assert got.dtype == ref.dtype
        assert_matches(got, naive(x, off, op), ref, x, off, op)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_dtypes(dtype, backend, backend_available):
    if backend == "triton" and dtype == torch.float64 and not backend_available.reasons(OP, backend):
        reasons = backend_available.reasons(OP, backend, dtype=dtype)
        assert any("float64" in r for r in reasons)
        dev = backend_available(OP, backend)
        with pytest.raises(RuntimeError, match="float64"):
            segment_reduce(
                torch.zeros(3, dtype=dtype, device=dev), torch.tensor([0, 3], device=dev), "sum", backend="triton"
            )
        return
    dev = backend_available(OP, backend, dtype=dtype)
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(301, 2, generator=gen) * 4).to(dtype)
    off = ragged_offsets(301, 11, gen)
    for op in OPS:
        got = segment_reduce(x.to(dev), off.to(dev), op, backend=backend).cpu()
        expect_dtype = torch.int64 if op == "count" else (torch.float64 if dtype == torch.float64 else torch.float32)
        assert got.dtype == expect_dtype
        # the oracle sees the same (rounded) low-precision inputs
        assert_matches(got, naive(x, off, op), segment_reduce_reference(x, off, op), x, off, op)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_special_values(backend, backend_available):
    inf, nan = float("inf"), float("nan")
    segs = [
        [],  # empty
        [1.0, nan, 2.0],  # NaN propagates
        [inf, 1.0],  # +inf
        [-inf, -inf],  # all -inf
        [inf, -inf],  # sum NaN, max inf, min -inf, lme inf
        [-inf, 0.0],  # lme finite: log(0.5)
        [5.0],
        [],  # empty at the end
    ]
    x = torch.tensor([v for s in segs for v in s], dtype=torch.float32)
    off = torch.tensor([0] + list(torch.cumsum(torch.tensor([len(s) for s in segs]), 0)), dtype=torch.int64)
    dev = backend_available(OP, backend)
    res = {op: segment_reduce(x.to(dev), off.to(dev), op, backend=backend).cpu() for op in OPS}
    t = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    torch.testing.assert_close(res["sum"], t(0, nan, inf, -inf, nan, -inf, 5, 0), equal_nan=True)
    torch.testing.assert_close(res["mean"], t(nan, nan, inf, -inf, nan, -inf, 5, nan), equal_nan=True)
    torch.testing.assert_close(res["max"], t(nan, nan, inf, -inf, inf, 0, 5, nan), equal_nan=True)
    torch.testing.assert_close(res["min"], t(nan, nan, 1, -inf, -inf, -inf, 5, nan), equal_nan=True)
    torch.testing.assert_close(res["logmeanexp"], t(nan, nan, inf, -inf, inf, math.log(0.5), 5, nan), equal_nan=True)
    assert res["count"].tolist() == [0, 3, 2, 2, 2, 2, 1, 0]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_no_segments_and_empty_values(backend, backend_available):
    dev = backend_available(OP, backend)
    z = lambda *shape, dtype=torch.float32: torch.zeros(shape, dtype=dtype, device=dev)  # noqa: E731
    out = segment_reduce(z(0), z(1, dtype=torch.int64), "mean", backend=backend)
    assert out.shape == (0,)
    out = segment_reduce(z(0, 4), z(3, dtype=torch.int64), "max", backend=backend).cpu()
    assert out.shape == (2, 4) and torch.isnan(out).all()
    out = segment_reduce(z(0, 4), z(3, dtype=torch.int64), "sum", backend=backend).cpu()
    assert torch.equal(out, torch.zeros(2, 4))


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_logmeanexp_is_stable(backend, backend_available):
    x = torch.tensor([1000.0, 1000.0, -1000.0, 80.0, 90.0])
    off = torch.tensor([0, 2, 3, 5])
    dev = backend_available(OP, backend)
    got = segment_reduce(x.to(dev), off.to(dev), "logmeanexp", backend=backend).cpu()
    exp = torch.tensor([1000.0, -1000.0, 90.0 + math.log((1 + math.exp(-10)) / 2)])
    torch.testing.assert_close(got, exp)


def test_long_segment_cpu_parallel_path(backend_available):
    backend_available(OP, "cpu")
    # Enough work for the OpenMP path; one long segment and many short ones.
    gen = torch.Generator().manual_seed(3)
    n = 300_000  # OpenMP from 2**18 values
    x = torch.rand(n, generator=gen)
    off = torch.cat([torch.tensor([0, 250_000]), torch.arange(250_000, n + 1, 37)[1:], torch.tensor([n])]).unique()
    for op in OPS:
        assert_matches(
            segment_reduce(x, off, op, backend="cpu"),
            naive_fast(x, off, op),
            segment_reduce_reference(x, off, op),
            x,
            off,
            op,
        )


def naive_fast(x, off, op):
    """float64 reference (vectorised) for the large test."""
    return segment_reduce_reference(x.to(torch.float64), off, op).to(torch.float64)


def test_accepts_int32_offsets_and_numpy():
    x = torch.arange(6, dtype=torch.float32)
    off = torch.tensor([0, 2, 6], dtype=torch.int32)
    assert segment_reduce(x, off, "sum").tolist() == [1.0, 14.0]
    assert segment_reduce(x.numpy(), off.numpy(), "sum").tolist() == [1.0, 14.0]


# ------------------------------------------------------------------ bad input
def test_bad_op():
    with pytest.raises(ValueError, match="op"):
        segment_reduce(torch.zeros(3), torch.tensor([0, 3]), "median")


def test_bad_values_dtype():
    with pytest.raises(ValueError, match="values"):
        segment_reduce(torch.zeros(3, dtype=torch.int64), torch.tensor([0, 3]), "sum")


def test_bad_values_ndim():
    with pytest.raises(ValueError, match="values"):
        segment_reduce(torch.zeros(3, 2, 2), torch.tensor([0, 3]), "sum")


def test_bad_offsets_dtype():
    with pytest.raises(ValueError, match="offsets"):
        segment_reduce(torch.zeros(3), torch.tensor([0.0, 3.0]), "sum")


def test_offsets_mismatched_length():
    with pytest.raises(ValueError, match="offsets.*end at N"):
        segment_reduce(torch.zeros(3), torch.tensor([0, 2]), "sum")


def test_offsets_not_starting_at_zero():
    with pytest.raises(ValueError, match="offsets.*start at 0"):
        segment_reduce(torch.zeros(3), torch.tensor([1, 3]), "sum")


def test_offsets_not_monotone():
    with pytest.raises(ValueError, match=r"offsets.*non-decreasing.*offsets\[1\]"):
        segment_reduce(torch.zeros(3), torch.tensor([0, 2, 1, 3]), "sum")


def test_offsets_empty_or_2d():
    with pytest.raises(ValueError, match="offsets"):
        segment_reduce(torch.zeros(0), torch.zeros(0, dtype=torch.int64), "sum")
    with pytest.raises(ValueError, match="offsets"):
        segment_reduce(torch.zeros(3), torch.tensor([[0, 3]]), "sum")


def test_native_rechecks_offsets():
    # The C++ kernel never trusts its caller: bad offsets raise ValueError, not a crash.
    from thresher._native import cpu_ext

    c = cpu_ext()
    if c is None:
        pytest.skip("thresher._C not built")
    x = torch.zeros(4, 1)
    out = torch.empty(2, 1)
    with pytest.raises(ValueError, match="offsets"):
        c.segment_reduce(x.numpy(), 0, torch.tensor([0, 9, 4]).numpy(), 0, out.numpy())
    with pytest.raises(ValueError, match="offsets"):
        c.segment_reduce(x.numpy(), 0, torch.tensor([0, 3, 2]).numpy(), 0, out.numpy())
    with pytest.raises(ValueError, match="values"):
        c.segment_reduce(x.double().numpy(), 0, torch.tensor([0, 2, 4]).numpy(), 0, out.numpy())


# --------------------------------------------- Triton: segments split across programs
@pytest.mark.parametrize("split", [1, 2, 3, 8])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_triton_split_segments_match_naive(split, d, backend_available):
    """Every segment cut into `split` parts (one long segment, empty ones, NaN, +-inf),
    small D packed into row tiles; combined partials must equal the float64 definition."""
    dev = backend_available(OP, "triton")
    from thresher import _native
    from thresher.ops.abi import SegmentOp

    gen = torch.Generator().manual_seed(split * 10 + d)
    x = torch.randn((301, d), generator=gen)
    x[5, 0] = math.nan
    x[200:203, -1] = float("-inf")
    x[250, 0] = float("inf")
    off = torch.tensor([0, 0, 3, 4, 4, 290, 301], dtype=torch.int64)  # empty, short, one long
    mod = _native.require_kernel("segment_reduce")
    for op in ("sum", "mean", "max", "min", "logmeanexp"):
        out = torch.empty((6, d), dtype=torch.float32, device=dev)
        mod.segment_reduce(x.to(dev), off.to(dev), SegmentOp.parse(op), out, split=split)
        exact = naive(x, off, op)
        ref = segment_reduce_reference(x, off, op)
        assert_matches(out.cpu(), exact, ref, x, off, op)


def test_triton_choose_split_uses_sizes_only():
    pytest.importorskip("triton")
    from thresher import _native

    mod = _native.require_kernel("segment_reduce")
    assert mod.choose_split(10_000_000, 1, 64) == 1024  # one huge segment: many parts
    assert mod.choose_split(10_000_000, 4096, 64) == 1  # enough segments already
    assert mod.choose_split(100, 2, 64) == 1  # short segments: one part
    assert mod.choose_split(0, 0, 16) == 1
