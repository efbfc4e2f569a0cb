"""Every op's CUDA and Triton backends against the reference, on a CUDA device (``pytest -m gpu``).

Skipped, with the reason, where no CUDA device is visible; on a GPU any mismatch fails, and a
backend that cannot run there (extension not built, Triton missing) fails too: benchmarks/gpu/run.sh
builds everything first. Odd shapes, ties, NaN, empty inputs, bf16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher.ops import knn, random_project, segment_reduce, token_loss, topk
from thresher.ops._dispatch import OPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch"),
]
DEV = "cuda"


def _must_run(op: str, backend: str, **ctx) -> None:
    reasons = OPS[op].backends[backend].not_supported_reasons(device="cuda", **ctx)
    assert not reasons, f"{op}/{backend} cannot run on this GPU: {reasons}"


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("n, k", [(1, 1), (1000, 7), (4099, 4099), (100_003, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk(backend, n, k, dtype):
    _must_run("topk", backend, dtype=dtype, n=n)
    g = torch.Generator().manual_seed(n)
    x = torch.randint(-5, 6, (n,), generator=g).to(dtype)  # ties
    if n > 10:
        x[3] = float("nan")
    for largest in (True, False):
        rv, ri = topk(x, k, largest=largest, backend="reference")
        v, i = topk(x.to(DEV), k, largest=largest, backend=backend)
        assert torch.equal(i.cpu(), ri), (backend, n, k, largest)
        assert torch.equal(v.cpu().isnan(), rv.isnan())


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("d", [None, 1, 2, 3, 37])
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "logmeanexp"])
def test_segment_reduce(backend, d, op):
    _must_run("segment_reduce", backend, dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    n = 200_011
    x = torch.randn((n,) if d is None else (n, d), generator=g)
    x[17] = float("nan")
    off = torch.tensor([0, 0, 1, 5, 5, 150_000, n])  # empty, one long segment
    ref = segment_reduce(x.double(), off, op, backend="reference")
    got = segment_reduce(x.to(DEV), off.to(DEV), op, backend=backend).cpu().double()
    assert torch.equal(got.isnan(), ref.isnan())
    torch.testing.assert_close(got.nan_to_num(), ref.nan_to_num(), rtol=1e-4, atol=1e-3)
    empty = segment_reduce(x[:0].to(DEV), torch.zeros(1, dtype=torch.int64, device=DEV), op, backend=backend)
    assert empty.shape[0] == 0


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("shape, k", [((37, 1001, 19), 1), ((129, 3000, 64), 10), ((64, 2000, 384), 1024)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_knn_triton(metric, shape, k, dtype):
    _must_run("knn", "triton", k=k, n=shape[1], dtype=dtype)
    Q, N, d = shape
    rng = np.random.default_rng(Q)
    b = torch.from_numpy(rng.integers(-2, 3, size=(N, d)).astype(np.float32)).to(dtype)  # exact, with ties
    q = b[:Q].clone()
    for excl in (False, True):
        rv, ri = knn(q.float(), b.float(), k, metric, exclude_self=excl, backend="reference")
        v, i = knn(q.to(DEV), b.to(DEV), k, metric, exclude_self=excl, backend="triton")
        assert torch.equal(i.cpu(), ri), (metric, shape, k, dtype, excl)
        assert torch.equal(v.cpu(), rv)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("shape", [(1, 3), (33, 70), (1000, 384)])
def test_random_project(backend, shape):
    _must_run("random_project", backend, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g)
    ref = random_project(x, 64, 5, backend="reference")
    got = random_project(x.to(DEV), 64, 5, backend=backend).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(x.abs().max()) * shape[1] ** 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, h, v", [(1, 8, 17), (257, 64, 5003)])
def test_token_loss_triton(dtype, n, h, v):
    _must_run("token_loss", "triton", dtype=dtype)
    g = torch.Generator().manual_seed(n)
    hid = torch.randn(n, h, generator=g).to(dtype)
    w = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    mask = torch.ones(n, dtype=torch.bool)
    mask[0] = n == 1  # an unscored position when there are several
    kw = dict(mask=mask, entropy=True, el2n=True, rank=True)
    ref = token_loss(hid.float(), w.float(), t, backend="reference", **kw)
    kw["mask"] = mask.to(DEV)
    got = token_loss(hid.to(DEV), w.to(DEV), t.to(DEV), backend="triton", **kw)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4  # bf16: the upcast inputs are exact, tensor-core sums differ
    for name in ("nll", "entropy", "el2n"):
        a, b = getattr(got, name).cpu().float(), getattr(ref, name).float()
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True, msg=name)


@pytest.mark.parametrize(
    "dtype, n, h, v, tf32",
    [
        (torch.bfloat16, 2053, 576, 4099, False),  # over kernels/token_loss.TUNE_MIN_WORK: the autotuned launch
        (torch.float16, 33, 40, 130, False),
        (torch.float32, 257, 64, 5003, True),  # allow_tf32: TF32 tensor cores
    ],
)
def test_token_loss_triton_tuned_half_tf32(dtype, n, h, v, tf32):
    _must_run("token_loss", "triton", dtype=dtype, allow_tf32=tf32)
    g = torch.Generator().manual_seed(v)
    hid = (torch.randn(n, h, generator=g) * 2).to(dtype)
    w = (torch.randn(v, h, generator=g) / h**0.5).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    kw = dict(entropy=True, el2n=True)
    ref = token_loss(hid.double(), w.double(), t, backend="reference", **kw)
    got = token_loss(hid.to(DEV), w.to(DEV), t.to(DEV), backend="triton", allow_tf32=tf32, **kw)
    z = hid.double() @ w.double().T
    # half inputs: exact products, fp32 sums; TF32: |dz| <= 2^-10 sum |h w| (10-bit operands)
    dz = 2.0**-10 * float((hid.double().abs() @ w.double().abs().T).max()) if tf32 else 1e-4
    spread = float((z.amax(1) - z.amin(1)).max())
    for name, scale in (("nll", 2), ("entropy", 2 * (1 + spread)), ("el2n", 2)):
        err = (getattr(got, name).cpu().double() - getattr(ref, name).double()).abs().max().item()
        assert err <= scale * dz + 1e-4, (name, err, scale * dz)
