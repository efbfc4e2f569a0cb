"""thresher.ops.random_project: generator, backends, JL property, streaming, structured mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from thresher import _native
from thresher.ops import Projector, random_project, structured_project
from thresher.ops.projection import (
    GAUSSIAN_MATRIX_TOL,
    STRUCTURED_TOL,
    accumulation_atol,
    derive_seed,
    philox4x32_10,
    projection_matrix,
)

OP = "random_project"
CPU_BACKENDS = ["reference", "cpu"]
ALL_BACKENDS = CPU_BACKENDS + ["triton"]  # triton on CPU tensors: the interpreter (conftest sets it without a GPU)


def _tol(x: torch.Tensor, dim: int, kind: str = "rademacher") -> float:
    return accumulation_atol(x, dim, kind)


@pytest.fixture
def runs_here(backend_available):
    """backend -> skip unless it runs on the CPU tensors these tests use."""
    return lambda backend: backend_available(OP, backend, device="cpu")


# ----------------------------------------------------------------- generator
# Known-answer vectors of Philox4x32-10 (Random123 kat_vectors).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("ctr,key,expect", KAT)
def test_philox_known_answers(ctr, key, expect, backend_available):
    got = philox4x32_10(*[torch.tensor([c]) for c in ctr], *key)
    assert tuple(int(g.item()) for g in got) == expect
    if not backend_available.reasons(OP, "cpu", device="cpu"):
        c = np.array([ctr], dtype=np.uint32)
        assert tuple(int(v) for v in _native.cpu_ext().philox4x32_10(c, *key)[0]) == expect


def test_philox_cpp_matches_torch_on_random_counters(runs_here):
    runs_here("cpu")
    rng = np.random.default_rng(0)
    c = rng.integers(0, 2**32, size=(500, 4), dtype=np.uint32)
    k0, k1 = 0x12345678, 0xFEDCBA98
    ref = torch.stack(philox4x32_10(*[torch.from_numpy(c[:, i].astype(np.int64)) for i in range(4)], k0, k1), 1).numpy()
    np.testing.assert_array_equal(_native.cpu_ext().philox4x32_10(c, k0, k1).astype(np.int64), ref)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("row_offset", [0, 5, (1 << 40) + 3])
def test_rademacher_signs_bitwise_identical(backend, row_offset, runs_here):
    runs_here(backend)
    # Projecting the identity returns the rows of P exactly (one nonzero term per sum).
    D, dim = 37, 264
    P = projection_matrix(D, dim, 99, row_offset=row_offset)
    got = random_project(torch.eye(D), dim, 99, row_offset=row_offset, backend=backend)
    assert torch.equal(torch.signbit(got), torch.signbit(P))
    assert torch.equal(got, P)
    # column slices of the generator agree with the full matrix
    part = projection_matrix(D, dim, 99, row_offset=row_offset, col_offset=100, ncols=50)
    assert torch.equal(part, P[:, 100:150])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gaussian_matrix_identical_to_libm_precision(backend, runs_here):
    runs_here(backend)
    D, dim = 21, 136
    P = projection_matrix(D, dim, 3, "gaussian", row_offset=1 << 33)
    got = random_project(torch.eye(D), dim, 3, "gaussian", row_offset=1 << 33, backend=backend)
    rtol, atol = GAUSSIAN_MATRIX_TOL
    torch.testing.assert_close(got, P, rtol=rtol, atol=atol)


def test_generator_statistics_and_seeds():
    P = projection_matrix(400, 512, 1, scaled=False)
    assert set(P.unique().tolist()) == {-1.0, 1.0}
    assert abs(P.mean().item()) < 0.01
    G = projection_matrix(400, 512, 1, "gaussian", scaled=False)
    assert abs(G.mean().item()) < 0.01 and abs(G.var().item() - 1) < 0.02
    Q = projection_matrix(400, 512, 2, scaled=False)
    assert 0.45 < (P != Q).float().mean().item() < 0.55  # another seed: independent signs
    # 64-bit seeds: the high word matters
    R = projection_matrix(400, 512, 1 + (1 << 32), scaled=False)
    assert 0.45 < (P != R).float().mean().item() < 0.55
    # columns are uncorrelated
    C = (P.T @ P) / P.shape[0]
    off = C - torch.diag(torch.diag(C))
    assert off.abs().max() < 0.25 and torch.allclose(torch.diag(C), torch.ones(512))


# ------------------------------------------------------------------ backends
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("B,D,dim", [(1, 1, 8), (3, 129, 136), (17, 300, 256), (0, 50, 16), (4, 0, 8)])
def test_backends_match_dense_matrix(backend, kind, B, D, dim, runs_here):
    runs_here(backend)
    if backend == "triton" and B * D * dim > 200_000:
        pytest.skip("interpreter")
    g = torch.Generator().manual_seed(B * 1000 + D)
    x = torch.randn(B, D, generator=g)
    P = projection_matrix(D, dim, 11, kind, row_offset=7)
    expect = x.double() @ P.double()
    got = random_project(x, dim, 11, kind, row_offset=7, backend=backend)
    assert got.shape == (B, dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expect, rtol=0, atol=_tol(x, dim, kind))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(backend, dtype, runs_here):
    runs_here(backend)
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("numpy interpreter has no bf16 dot")
    x = torch.randn(5, 200, generator=torch.Generator().manual_seed(1)).to(dtype)
    exact = x.double() @ projection_matrix(200, 128, 5).double()
    got = random_project(x, 128, 5, backend=backend)
    # the only error allowed is fp32 accumulation: the half inputs are exact in fp32
    torch.testing.assert_close(got.double(), exact, rtol=0, atol=_tol(x.float(), 128))


# --------------------------------------------------------------- JL property
def test_inner_products_preserved_within_jl_bound():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2048, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    exact = x @ x.T
    dim, seeds = 512, 12
    est = torch.stack([(lambda p: p @ p.T)(random_project(x, dim, s)) for s in range(seeds)])
    # unbiased: the mean over seeds converges at rate sqrt((1 + <x,y>^2) / (dim * seeds))
    err_mean = (est.mean(0) - exact).abs().max().item()
    assert err_mean < 5 * math.sqrt(2 / (dim * seeds))
    # every single estimate within the JL distortion eps = 6 / sqrt(dim) (a 4-sigma+ bound)
    assert (est - exact).abs().max().item() < 6 / math.sqrt(dim)
    # and the projection is not a trivial scaling: a different seed gives a different sketch
    assert not torch.allclose(random_project(x, dim, 0), random_project(x, dim, 1))


# ------------------------------------------------------------------ streaming
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_chunking_row_offset_and_batch_invariance(backend, runs_here):
    runs_here(backend)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 1000, generator=g)
    full = random_project(x, 64, 42, backend=backend)
    pr = Projector(9, 64, 42, backend=backend)
    for a, b in [(0, 1), (1, 300), (300, 301), (301, 1000)]:
        pr.update(x[:, a:b])
    torch.testing.assert_close(pr.result(), full, rtol=0, atol=_tol(x, 64))
    # out-of-order blocks with explicit offsets give the same
    pr2 = Projector(9, 64, 42, backend=backend)
    pr2.update(x[:, 500:], row_offset=500).update(x[:, :500], row_offset=0)
    torch.testing.assert_close(pr2.result(), full, rtol=0, atol=_tol(x, 64))
    # batch size and row subsets do not change rows
    for rows in (slice(0, 1), slice(2, 7)):
        torch.testing.assert_close(
            random_project(x[rows], 64, 42, backend=backend), full[rows], rtol=0, atol=_tol(x, 64)
        )
    # a non-contiguous view
    xt = torch.randn(1000, 9, generator=g).T
    torch.testing.assert_close(
        random_project(xt, 64, 1, backend=backend),
        random_project(xt.contiguous(), 64, 1, backend="reference"),
        rtol=0,
        atol=_tol(xt, 64),
    )


def test_backends_agree_with_each_other_on_bigger_input(runs_here):
    runs_here("cpu")  # triton is covered on small shapes (interpreter speed)
    x = torch.randn(7, 3000, generator=torch.Generator().manual_seed(9))
    ref = random_project(x, 256, 123, row_offset=77, backend="reference")
    torch.testing.assert_close(
        random_project(x, 256, 123, row_offset=77, backend="cpu"), ref, rtol=0, atol=_tol(x, 256)
    )


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_value_error():
    x = torch.randn(2, 16)
    with pytest.raises(ValueError, match="dim"):
        random_project(x, 12, 0)
    with pytest.raises(ValueError, match="dim"):
        random_project(x, 0, 0)
    with pytest.raises(ValueError, match="dtype"):
        random_project(x.to(torch.int32), 8, 0)
    with pytest.raises(ValueError, match="x"):
        random_project(x[0], 8, 0)
    with pytest.raises(ValueError, match="seed"):
        random_project(x, 8, -1)
    with pytest.raises(ValueError, match="kind"):
        random_project(x, 8, 0, "uniform")
    with pytest.raises(ValueError, match="row_offset"):
        random_project(x, 8, 0, row_offset=-3)
    with pytest.raises(ValueError, match="row_offset"):
        random_project(x, 8, 0, row_offset=(1 << 63) - 4)
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[1, 3] = bad
        with pytest.raises(ValueError, match="non-finite"):
            random_project(y, 8, 0)
    with pytest.raises(ValueError, match="block"):
        Projector(2, 8, 0).update(torch.randn(3, 4))
    with pytest.raises(ValueError, match="dim"):
        Projector(2, 9, 0)


def test_numpy_input_accepted():
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    torch.testing.assert_close(
        random_project(x, 16, 2), random_project(torch.from_numpy(x), 16, 2, backend="reference")
    )


# ------------------------------------------------------------- structured mode
def _kron_dense(G: torch.Tensor, n_in, n_out, k_in, k_out, seed, ro_in=0, ro_out=0):
    """vec(G) @ (P_out kron P_in) with the explicit Kronecker matrix."""
    Pin = torch.eye(n_in) if k_in is None else projection_matrix(n_in, k_in, seed, row_offset=ro_in)
    Pout = (
        torch.eye(n_out) if k_out is None else projection_matrix(n_out, k_out, derive_seed(seed, 1), row_offset=ro_out)
    )
    K = torch.kron(Pout.double(), Pin.double())  # [(i, j), (a, c)]: Pout[i, a] * Pin[j, c]
    return G.reshape(G.shape[0], -1).double() @ K


@pytest.mark.parametrize("k_in,k_out", [(16, 8), (None, 8), (24, None)])
def test_structured_matches_dense_kronecker_projection(k_in, k_out):
    g = torch.Generator().manual_seed(5)
    B, T, n_in, n_out = 3, 6, 20, 12
    x = torch.randn(B, T, n_in, generator=g)
    d = torch.randn(B, T, n_out, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 0] = False
    G = torch.einsum("bti,btj->bij", d * mask[..., None], x)  # per-sample weight grads [B, n_out, n_in]
    expect = _kron_dense(G, n_in, n_out, k_in, k_out, 17, ro_in=3, ro_out=9)
    got = structured_project(x, d, k_in, k_out, 17, mask=mask, row_offset_in=3, row_offset_out=9)
    torch.testing.assert_close(got.double(), expect, rtol=STRUCTURED_TOL[0], atol=STRUCTURED_TOL[1])


def test_structured_on_real_linear_and_lora_grads():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(10, 14, bias=False)

        def forward(self, x):
            return self.q(x)

    net = peft.get_peft_model(
        Net(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q"], lora_dropout=0.0, init_lora_weights=False)
    )
    lin_a = net.base_model.model.q.lora_A["default"]
    lin_b = net.base_model.model.q.lora_B["default"]
    x = torch.randn(1, 5, 10)
    acts, grads = {}, {}
    for name, mod in (("A", lin_a), ("B", lin_b)):
        mod.register_forward_hook(lambda m, i, o, n=name: acts.__setitem__(n, i[0].detach()))
        mod.register_full_backward_hook(lambda m, gi, go, n=name: grads.__setitem__(n, go[0].detach()))
    net(x).pow(2).sum().backward()
    for name, mod, kin, kout in (("A", lin_a, 8, None), ("B", lin_b, None, 8)):
        W = mod.weight.grad[None]  # [1, out, in]
        expect = _kron_dense(W, mod.in_features, mod.out_features, kin, kout, 4)
        got = structured_project(acts[name], grads[name], kin, kout, 4)
        torch.testing.assert_close(got.double(), expect, rtol=1e-4, atol=1e-5)


def test_structured_bad_input():
    with pytest.raises(ValueError, match="d"):
        structured_project(torch.randn(2, 3, 4), torch.randn(2, 4, 4), 8, 8, 0)
    with pytest.raises(ValueError, match="dim_in"):
        structured_project(torch.randn(2, 3, 4), torch.randn(2, 3, 4), 12, 8, 0)
    with pytest.raises(ValueError, match="mask"):
        structured_project(torch.randn(2, 3, 4), torch.randn(2, 3, 4), 8, 8, 0, mask=torch.ones(2, 2, dtype=torch.bool))


@pytest.mark.parametrize("dim", [8, 120, 264])
def test_cpu_thread_partitions_match_reference(dim, monkeypatch, runs_here):
    runs_here("cpu")
    # dim <= 128: row ranges on parallel threads; dim > 128: column ranges; small tiles force many steps
    monkeypatch.setenv("THRESHER_PROJECTION_TILE_KB", "4")
    x = torch.randn(3, 9000, generator=torch.Generator().manual_seed(dim))
    ref = random_project(x, dim, 8, "gaussian", row_offset=11, backend="reference")
    before = torch.get_num_threads()
    got = random_project(x, dim, 8, "gaussian", row_offset=11, backend="cpu")
    assert torch.get_num_threads() == before  # the thread setting is restored
    torch.testing.assert_close(got, ref, rtol=0, atol=_tol(x, dim, "gaussian"))
