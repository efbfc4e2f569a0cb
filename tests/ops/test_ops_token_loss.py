"""thresher.ops.token_loss / score_at_position: every backend against an fp64 oracle.

The oracle is the package's reference (full logits, F.cross_entropy, softmax)
run in float64 on the same inputs. Low-precision inputs are judged relative to
the error of the naive low-precision reference (logits formed in the input
dtype, as a plain ``hidden @ W.T`` in a bf16/fp16 model does).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from thresher import _native
from thresher.ops import OPS, expected_score, last_backend, score_at_position
from thresher.ops import token_loss as _token_loss
from thresher.ops.token_loss import EXTREME_LOGITS_TOL, TOLERANCES, cpu_plan, reference_token_loss

TL = sys.modules["thresher.ops.token_loss"]
# "cpu-torch": the cpu backend with its torch tile ops instead of the C++ tile kernel
BACKENDS = ["reference", "cpu", "cpu-torch", "triton"]
FIELDS = ("nll", "entropy", "el2n")


def token_loss(*args, backend=None, **kw):
    """thresher.ops.token_loss, with the "cpu-torch" alias (C++ tile kernel off)."""
    if backend != "cpu-torch":
        return _token_loss(*args, backend=backend, **kw)
    old = TL.USE_NATIVE_TILE
    TL.USE_NATIVE_TILE = False
    try:
        return _token_loss(*args, backend="cpu", **kw)
    finally:
        TL.USE_NATIVE_TILE = old


OP = "token_loss"
RTOL, ATOL = TOLERANCES[torch.float32]  # fp32 inputs against the fp64 oracle


def _skip_if_unavailable(probe, backend: str, dtype=torch.float32) -> None:
    """Skip unless ``backend`` (the "cpu-torch" alias included) runs on CPU tensors here."""
    probe(OP, "cpu" if backend == "cpu-torch" else backend, device="cpu", dtype=dtype)


def _data(n, h, v, seed=0, dtype=torch.float32, scale=2.0, p_mask=0.6):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * scale / math.sqrt(h) * 3).to(dtype)
    weight = torch.randn(v, h, generator=g).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    mask = torch.rand(n, generator=g) < p_mask
    return hidden, weight, targets, mask


def _oracle(hidden, weight, targets, mask):
    sel = mask if mask is not None else torch.ones(hidden.shape[0], dtype=torch.bool)
    return reference_token_loss(hidden.double()[sel], weight.double(), targets[sel]), sel


def _check_rank(rank, hidden, weight, targets, sel, rel=1e-4):
    """rank must be a count valid for some threshold within rounding of z_y."""
    z = hidden[sel].double() @ weight.double().T
    zy = z.gather(1, targets[sel][:, None])
    eps = rel * (1 + zy.abs())
    lo = (z > zy + eps).sum(1)
    hi = (z > zy - eps).sum(1) - 1  # minus the target itself
    r = rank[sel]
    assert bool(((r >= lo) & (r <= hi.clamp(min=lo))).all()), (r, lo, hi)


# ------------------------------------------------------------------ fp32 shapes
SHAPES = [  # (N, H, V, chunk_size)
    (0, 5, 7, None),
    (1, 3, 1, None),
    (1, 9, 7, 3),
    (13, 9, 7, None),
    (13, 33, 1037, 100),
    (257, 17, 1037, 256),
    (257, 31, 1000, 7),
]
TRITON_SHAPES = {(0, 5, 7, None), (1, 3, 1, None), (1, 9, 7, 3), (13, 9, 7, None), (13, 33, 1037, 100)}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-H%d-V%d-c%s" % s)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_fp64_oracle(backend, shape, backend_available):
    n, h, v, cs = shape
    if backend == "triton" and shape not in TRITON_SHAPES:
        pytest.skip("interpreter: large shapes only on cpu/reference")
    _skip_if_unavailable(backend_available, backend)
    hidden, weight, targets, mask = _data(n, h, v, seed=n + v)
    res = token_loss(hidden, weight, targets, mask, entropy=True, el2n=True, rank=True, chunk_size=cs, backend=backend)
    assert last_backend() == ("token_loss", "cpu" if backend == "cpu-torch" else backend)
    ref, sel = _oracle(hidden, weight, targets, mask)
    for f in FIELDS:
        x = getattr(res, f)
        assert x.shape == (n,) and x.dtype == torch.float32
        assert torch.isnan(x[~sel]).all()
        torch.testing.assert_close(x[sel].double(), ref[f], rtol=RTOL, atol=ATOL)
    assert res.rank.dtype == torch.int64 and (res.rank[~sel] == -1).all()
    _check_rank(res.rank, hidden, weight, targets, sel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_none_all_true_all_false(backend, backend_available):
    _skip_if_unavailable(backend_available, backend)
    hidden, weight, targets, _ = _data(13, 9, 37, seed=3)
    a = token_loss(hidden, weight, targets, None, entropy=True, el2n=True, rank=True, backend=backend)
    b = token_loss(
        hidden, weight, targets, torch.ones(13, dtype=torch.bool), entropy=True, el2n=True, rank=True, backend=backend
    )
    for f in a._fields:
        torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=0, atol=0)
    ref, _ = _oracle(hidden, weight, targets, None)
    torch.testing.assert_close(a.nll.double(), ref["nll"], rtol=RTOL, atol=ATOL)
    c = token_loss(hidden, weight, targets, torch.zeros(13, dtype=torch.bool), entropy=True, rank=True, backend=backend)
    assert torch.isnan(c.nll).all() and torch.isnan(c.entropy).all() and (c.rank == -1).all()
    assert c.el2n is None


def test_only_requested_fields():
    hidden, weight, targets, mask = _data(5, 4, 11)
    r = token_loss(hidden, weight, targets, mask)
    assert r.entropy is None and r.el2n is None and r.rank is None
    r = token_loss(hidden, weight, targets, mask, el2n=True)
    assert r.entropy is None and r.el2n is not None and r.rank is None


def test_unscored_targets_are_ignored():
    hidden, weight, targets, mask = _data(13, 9, 37, seed=4)
    mask[0] = False
    t2 = targets.clone()
    t2[~mask] = -100  # ignore_index-style filler at prompt positions
    a = token_loss(hidden, weight, targets, mask)
    b = token_loss(hidden, weight, t2, mask)
    torch.testing.assert_close(a.nll, b.nll, equal_nan=True)


# ------------------------------------------------------------- ties and edges
@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_ties_exact(backend, backend_available):
    """Integer-valued inputs: logits are exact in fp32, so ties are real ties."""
    _skip_if_unavailable(backend_available, backend)
    g = torch.Generator().manual_seed(7)
    n, h, v = 29, 5, 67
    hidden = torch.randint(-2, 3, (n, h), generator=g).float()
    weight = torch.randint(-1, 2, (v, h), generator=g).float()
    weight[10:20] = weight[0]  # duplicated rows -> exactly tied logits
    targets = torch.randint(0, v, (n,), generator=g)
    targets[:5] = torch.tensor([0, 10, 19, v - 1, 0])
    hidden[3] = 0.0  # all logits tie: rank 0, uniform distribution
    res = token_loss(hidden, weight, targets, entropy=True, el2n=True, rank=True, chunk_size=8, backend=backend)
    z = hidden.double() @ weight.double().T
    zy = z.gather(1, targets[:, None])
    expect = (z > zy).sum(1)
    assert torch.equal(res.rank, expect)
    assert res.rank[3] == 0
    assert abs(res.nll[3].item() - math.log(v)) < 1e-5
    assert abs(res.entropy[3].item() - math.log(v)) < 1e-5
    assert abs(res.el2n[3].item() - math.sqrt(1 - 1 / v)) < 1e-5
    # tied targets in the duplicated block all get the same rank and loss
    same = (targets >= 10) & (targets < 20) | (targets == 0)
    rows = same.nonzero().squeeze(1)
    if rows.numel() > 1:
        r0 = rows[0]
        h2 = hidden[r0].expand(rows.numel(), h).contiguous()
        t2 = targets[rows]
        r2 = token_loss(h2, weight, t2, rank=True, backend=backend)
        assert (r2.rank == r2.rank[0]).all()
        torch.testing.assert_close(r2.nll, r2.nll[:1].expand_as(r2.nll), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [1, 7, 16, 50])
def test_targets_at_vocab_edges(backend, chunk, backend_available):
    _skip_if_unavailable(backend_available, backend)
    n, h, v = 8, 7, 50
    hidden, weight, _, _ = _data(n, h, v, seed=chunk)
    targets = torch.tensor([0, v - 1, 0, v - 1, chunk % v, (chunk - 1) % v, v // 2, 1])
    res = token_loss(hidden, weight, targets, entropy=True, el2n=True, rank=True, chunk_size=chunk, backend=backend)
    ref, sel = _oracle(hidden, weight, targets, None)
    for f in FIELDS:
        torch.testing.assert_close(getattr(res, f).double(), ref[f], rtol=RTOL, atol=ATOL)
    _check_rank(res.rank, hidden, weight, targets, sel)


@pytest.mark.parametrize("backend", ["cpu", "cpu-torch"])
def test_chunk_size_and_thread_invariance_cpu(backend):
    hidden, weight, targets, mask = _data(40, 13, 301, seed=11)
    threads = torch.get_num_threads()
    outs = [
        token_loss(hidden, weight, targets, mask, entropy=True, el2n=True, rank=True, chunk_size=c, backend=backend)
        for c in (1, 7, 300, 301, 5000, None)
    ]
    assert torch.get_num_threads() == threads  # the worker pool restores torch's setting
    try:  # one worker vs several over the same chunks
        torch.set_num_threads(1)
        outs.append(
            token_loss(hidden, weight, targets, mask, entropy=True, el2n=True, rank=True, chunk_size=7, backend=backend)
        )
    finally:
        torch.set_num_threads(threads)
    assert cpu_plan(40, 301, 7, threads=3)[2] == 3
    for o in outs[1:]:
        for f in FIELDS:
            torch.testing.assert_close(getattr(o, f), getattr(outs[0], f), rtol=RTOL, atol=ATOL, equal_nan=True)
        assert torch.equal(o.rank, outs[0].rank)


@pytest.mark.parametrize("backend", ["cpu", "cpu-torch"])
def test_cpu_results_are_the_same_bits_for_any_threads_and_call(backend):
    """A token's results do not depend on the thread count (a Ray worker runs one thread, a laptop
    several) nor on the other tokens of its call (a shard, a batch): bit for bit, on a SmolLM2-wide
    head (hidden 576; the vocabulary ends in a partial chunk). Before: workers split the vocabulary
    and merged their states in another order (1e-7 relative between 1 and 2 threads), and a block of
    1-3 rows took another BLAS path."""
    hidden, weight, targets, mask = _data(301, 576, 5003, seed=4)
    kw = dict(entropy=True, el2n=True, rank=True, backend=backend)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3, 5):
            torch.set_num_threads(threads)
            runs.append(token_loss(hidden, weight, targets, mask, **kw))
    finally:
        torch.set_num_threads(before)
    full = runs[0]
    for r in runs[1:]:
        for f in FIELDS + ("rank",):
            assert torch.equal(getattr(r, f).nan_to_num(-1.0), getattr(full, f).nan_to_num(-1.0)), f
    g = torch.Generator().manual_seed(1)
    for rows in (torch.arange(1), torch.arange(150, 151), torch.arange(3, 10), torch.randperm(301, generator=g)[:77]):
        part = token_loss(hidden[rows], weight, targets[rows], mask[rows], **kw)
        for f in FIELDS + ("rank",):
            assert torch.equal(getattr(part, f).nan_to_num(-1.0), getattr(full, f)[rows].nan_to_num(-1.0)), f


def test_native_tile_kernel_is_used_when_built():
    """A stale or missing build silently falls back to torch tile ops: flag it."""
    if _native.cpu_ext() is None:
        pytest.skip(f"thresher._C not built: {_native.why_unavailable('cpu')}")
    assert TL._native_tile() is not None, "thresher._C lacks token_loss_tile_reduce (stale build?)"


def test_native_tile_kernel_bad_args():
    f = TL._native_tile()
    if f is None:
        pytest.skip("thresher._C.token_loss_tile_reduce not built")
    import numpy as np

    z = np.zeros((3, 4), np.float32)
    v3 = np.zeros(3, np.float32)
    r3 = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="tcol"):
        f(z, v3, np.array([0, 4, 1]), v3.copy(), v3.copy(), v3.copy(), v3.copy(), r3, True, True, True, True)
    with pytest.raises(ValueError, match="zy"):
        f(z, np.zeros(2, np.float32), r3, v3.copy(), v3.copy(), v3.copy(), v3.copy(), r3, True, False, False, False)
    with pytest.raises(ValueError, match="z"):
        f(z.astype(np.float64), v3, r3, v3.copy(), v3.copy(), v3.copy(), v3.copy(), r3, True, False, False, False)
    with pytest.raises(ValueError, match="m"):
        f(z, v3, r3, np.zeros(2, np.float32), v3.copy(), v3.copy(), v3.copy(), r3, True, False, False, False)


def test_inputs_requiring_grad():
    hidden, weight, targets, mask = _data(7, 5, 40, seed=1)
    ref = token_loss(hidden, weight, targets, mask, entropy=True, backend="reference")
    hidden.requires_grad_()
    weight.requires_grad_()
    r = token_loss(hidden, weight, targets, mask, entropy=True, backend="cpu")
    assert not r.nll.requires_grad
    torch.testing.assert_close(r.nll, ref.nll, rtol=RTOL, atol=ATOL, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits_stable(backend, backend_available):
    """Large logits (|z| ~ 1e3) must not overflow; a very peaked distribution keeps
    entropy and EL2N accurate in relative terms (no cancellation near p_y = 1)."""
    _skip_if_unavailable(backend_available, backend)
    n, h, v = 6, 8, 40
    hidden, weight, targets, _ = _data(n, h, v, seed=5)
    big = hidden * 300
    res = token_loss(big, weight, targets, entropy=True, el2n=True, backend=backend)
    ref, _ = _oracle(big, weight, targets, None)
    for f in FIELDS:
        x = getattr(res, f)
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x.double(), ref[f], rtol=EXTREME_LOGITS_TOL[0], atol=EXTREME_LOGITS_TOL[1])
    # peaked: the target logit is ~25 above every other one
    weight2 = weight.clone() * 0.1
    weight2[3] = 0.0
    hid2 = torch.zeros(n, h)
    hid2[:, 0] = 1.0
    weight2[3, 0] = 25.0
    t2 = torch.full((n,), 3)
    res = token_loss(hid2, weight2, t2, entropy=True, el2n=True, backend=backend)
    ref, _ = _oracle(hid2, weight2, t2, None)
    if backend != "reference":  # the fp32 reference itself loses these in cancellation
        for f in FIELDS:
            torch.testing.assert_close(getattr(res, f).double(), ref[f], rtol=1e-3, atol=1e-12)
    assert (ref["nll"] > 0).all() and (ref["nll"] < 1e-8).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_row_is_isolated(backend, backend_available):
    _skip_if_unavailable(backend_available, backend)
    hidden, weight, targets, _ = _data(9, 6, 30, seed=9)
    hidden[4, 2] = float("nan")
    res = token_loss(hidden, weight, targets, entropy=True, el2n=True, rank=True, chunk_size=7, backend=backend)
    for f in FIELDS:
        x = getattr(res, f)
        assert torch.isnan(x[4]), f
        ok = torch.ones(9, dtype=torch.bool)
        ok[4] = False
        assert torch.isfinite(x[ok]).all(), f
    assert res.rank[4] == 0  # NaN logits compare false: documented
    ref, _ = _oracle(hidden, weight, targets, None)
    torch.testing.assert_close(res.nll[:4].double(), ref["nll"][:4], rtol=RTOL, atol=ATOL)


# -------------------------------------------------------------- low precision
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_error_bounded_by_reference_error(backend, dtype, backend_available):
    _skip_if_unavailable(backend_available, backend, dtype)
    n, h, v = (24, 33, 203) if backend == "triton" else (97, 65, 1531)
    hidden, weight, targets, mask = _data(n, h, v, seed=21, dtype=dtype)
    res = token_loss(hidden, weight, targets, mask, entropy=True, el2n=True, rank=True, chunk_size=100, backend=backend)
    ref64, sel = _oracle(hidden, weight, targets, mask)
    # the naive low-precision path: logits formed in the input dtype, loss in fp32
    logits_lp = (hidden[sel] @ weight.T).float()
    naive = {
        "nll": torch.nn.functional.cross_entropy(logits_lp, targets[sel], reduction="none"),
    }
    logp = torch.log_softmax(logits_lp, -1)
    p = logp.exp()
    naive["entropy"] = -(p * logp).sum(-1)
    p[torch.arange(p.shape[0]), targets[sel]] -= 1
    naive["el2n"] = p.norm(dim=-1)
    for f in FIELDS:
        err_naive = (naive[f].double() - ref64[f]).abs().max().item()
        err = (getattr(res, f)[sel].double() - ref64[f]).abs().max().item()
        assert err_naive > 0
        assert err <= 2 * err_naive + 1e-5, (f, err, err_naive)
        # fp32 accumulation: much better than the naive path in fact
        assert err <= 1e-4 * (1 + ref64[f].abs().max().item()), (f, err)
    _check_rank(res.rank, hidden, weight, targets, sel)


# ---------------------------------------------------------------- bad input
def _bad(match, **kw):
    hidden, weight, targets, mask = _data(6, 4, 10)
    args = dict(hidden=hidden, weight=weight, targets=targets, mask=mask)
    args.update(kw)
    opts = {k: args.pop(k) for k in ("chunk_size", "entropy") if k in args}
    with pytest.raises(ValueError, match=match):
        token_loss(args["hidden"], args["weight"], args["targets"], args["mask"], **opts)


def test_bad_input_raises_value_error():
    hidden, weight, targets, mask = _data(6, 4, 10)
    _bad("targets", targets=torch.tensor([0, 1, 2, 10, 3, 4]), mask=None)
    _bad("targets", targets=torch.tensor([0, 1, -1, 2, 3, 4]), mask=None)
    _bad("targets", targets=targets[:5])
    _bad("targets", targets=targets.float())
    _bad("weight", weight=weight[:, :3])
    _bad("weight", weight=weight.double())
    _bad("weight", weight=weight[:0])
    _bad("hidden", hidden=hidden.to(torch.int32), weight=weight.to(torch.int32))
    _bad("hidden", hidden=hidden[None])
    _bad("hidden", hidden=[[0.0]])
    _bad("mask", mask=mask.to(torch.int64))
    _bad("mask", mask=mask[:4])
    for cs in (0, -3, 1.5, True, "8"):
        _bad("chunk_size", chunk_size=cs)
    # the error names the offending position
    t = torch.tensor([0, 1, 2, 3, 4, 99])
    with pytest.raises(ValueError, match="position 5"):
        token_loss(hidden, weight, t, torch.ones(6, dtype=torch.bool))


def test_forced_unknown_backend():
    hidden, weight, targets, mask = _data(3, 4, 10)
    with pytest.raises(ValueError, match="backend"):
        token_loss(hidden, weight, targets, mask, backend="nope")


def test_default_backend_on_cpu_is_chunked():
    hidden, weight, targets, mask = _data(3, 4, 10)
    token_loss(hidden, weight, targets, mask)
    assert last_backend() == ("token_loss", "cpu")


def test_cpu_plan_memory_bound_smollm2():
    """Workspace of the cpu backend for 4096 scored tokens on SmolLM2's head,
    for any worker count: the [block x chunk] tiles (z, exp, compare) of all
    workers plus the fp32 hidden copy, target-row gather and per-token states
    stay under 5% of the fp32 logits tensor (measured: benchmarks/bench_token_loss.py)."""
    m, h, v = 4096, 576, 49152
    for threads in (1, 2, 8, 64):
        c, b, t = cpu_plan(m, v, threads=threads)
        assert c <= v and b <= m and 1 <= t <= threads
        tiles = t * b * c * (4 + 4 + 1)
        extra = m * h * 4 + (t + 1) * 5 * m * 8 + b * h * 4 * 2
        assert tiles + extra <= 0.05 * m * v * 4, threads
    assert cpu_plan(13, 7)[:2] == (7, 13) and cpu_plan(13, 7, threads=4)[2] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend, backend_available):
    _skip_if_unavailable(backend_available, backend)
    hidden, weight, targets, mask = _data(20, 6, 30, seed=2)
    big = torch.zeros(20, 12)
    big[:, ::2] = hidden
    hid_nc = big[:, ::2]  # stride (12, 2)
    assert not hid_nc.is_contiguous() and torch.equal(hid_nc, hidden)
    w_nc = weight.t().contiguous().t()  # stride (1, 30)
    ref = token_loss(hidden, weight, targets, mask, entropy=True, backend="reference")
    r = token_loss(hid_nc, w_nc, targets, mask, entropy=True, backend=backend)
    torch.testing.assert_close(r.nll, ref.nll, rtol=RTOL, atol=ATOL, equal_nan=True)
    torch.testing.assert_close(r.entropy, ref.entropy, rtol=RTOL, atol=ATOL, equal_nan=True)


# ---------------------------------------------------------- score_at_position
def test_score_at_position_matches_full_softmax():
    g = torch.Generator().manual_seed(1)
    b, h, v = 5, 11, 97
    hid = torch.randn(b, h, generator=g)
    w = torch.randn(v, h, generator=g)
    ids = torch.tensor([96, 3, 0, 41])
    probs = score_at_position(hid, w, ids)
    full = torch.softmax(hid.double() @ w.double().T, -1)[:, ids]
    full = full / full.sum(-1, keepdim=True)
    assert probs.shape == (b, 4) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.double(), full, rtol=1e-5, atol=1e-6)
    vals = [5.0, 1.0, 0.0, 2.5]
    es = expected_score(probs, vals)
    torch.testing.assert_close(
        es.double(), (full * torch.tensor(vals, dtype=torch.float64)).sum(-1), rtol=RTOL, atol=ATOL
    )
    # a list of ids and bf16 inputs work too
    p2 = score_at_position(hid.bfloat16(), w.bfloat16(), [96, 3])
    assert p2.dtype == torch.float32 and torch.allclose(p2.sum(-1), torch.ones(b))


def test_score_at_position_bad_input():
    hid = torch.randn(2, 4)
    w = torch.randn(10, 4)
    with pytest.raises(ValueError, match="token_ids"):
        score_at_position(hid, w, [1, 10])
    with pytest.raises(ValueError, match="token_ids"):
        score_at_position(hid, w, [1, 1])
    with pytest.raises(ValueError, match="token_ids"):
        score_at_position(hid, w, [])
    with pytest.raises(ValueError, match="token_ids"):
        score_at_position(hid, w, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="weight"):
        score_at_position(hid, torch.randn(10, 5), [1])
    with pytest.raises(ValueError, match="hidden_last"):
        score_at_position(hid[0], w, [1])
    with pytest.raises(ValueError, match="values"):
        expected_score(torch.rand(2, 3), [1.0, 2.0])
    with pytest.raises(ValueError, match="probs"):
        expected_score(torch.rand(3), [1.0, 2.0, 3.0])


# ------------------------------------------- triton: odd shapes, half inputs, TF32, memory
# These run on CUDA tensors where a GPU is visible, else on CPU tensors in Triton's interpreter
# (TRITON_INTERPRET=1, set by conftest), which uses the kernel's one interpreter config.
ODD_SHAPES = [(n, h, v) for n in (1, 7, 33) for h in (16, 40) for v in (50, 130)]


def _triton_dev(probe, dtype=torch.float32) -> str:
    return probe(OP, "triton", dtype=dtype)


def _to(dev, *xs):
    return tuple(None if x is None else x.to(dev) for x in xs)


def _ignore_some(n, mask, targets):
    """At least one scored token; unscored positions hold -100 (ignore_index filler)."""
    mask = mask.clone()
    mask[-1] = True
    if n > 2:
        mask[0] = False
    return mask, torch.where(mask, targets, torch.full_like(targets, -100))


@pytest.mark.parametrize("chunk", [None, 17])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "N%d-H%d-V%d" % s)
def test_triton_odd_shapes_with_ignored_tokens(shape, chunk, backend_available):
    n, h, v = shape
    dev = _triton_dev(backend_available)
    hidden, weight, targets, mask = _data(n, h, v, seed=n * h + v)
    mask, targets = _ignore_some(n, mask, targets)
    res = token_loss(
        *_to(dev, hidden, weight, targets, mask), entropy=True, el2n=True, rank=True, chunk_size=chunk, backend="triton"
    )
    assert last_backend() == ("token_loss", "triton")
    ref, sel = _oracle(hidden, weight, targets, mask)
    for f in FIELDS:
        x = getattr(res, f).cpu()
        assert x.shape == (n,) and x.dtype == torch.float32
        assert torch.isnan(x[~sel]).all()
        torch.testing.assert_close(x[sel].double(), ref[f], rtol=RTOL, atol=ATOL)
    rank = res.rank.cpu()
    assert (rank[~sel] == -1).all()
    _check_rank(rank, hidden, weight, targets, sel)


def test_triton_empty_and_all_ignored(backend_available):
    dev = _triton_dev(backend_available)
    hidden, weight, targets, _ = _data(0, 16, 50)
    r = token_loss(*_to(dev, hidden, weight, targets), entropy=True, el2n=True, rank=True, backend="triton")
    assert r.nll.shape == r.entropy.shape == r.el2n.shape == r.rank.shape == (0,)
    assert r.nll.dtype == torch.float32 and r.rank.dtype == torch.int64
    hidden, weight, targets, _ = _data(7, 16, 50)
    none = torch.zeros(7, dtype=torch.bool)
    targets = torch.full((7,), -100)  # never read: nothing is scored
    r = token_loss(*_to(dev, hidden, weight, targets, none), entropy=True, rank=True, backend="triton")
    assert torch.isnan(r.nll).all() and torch.isnan(r.entropy).all() and (r.rank == -1).all()


@pytest.mark.parametrize("chunk", [None, 17])
@pytest.mark.parametrize("shape", [(7, 16, 50), (33, 40, 130)], ids=lambda s: "N%d-H%d-V%d" % s)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_triton_half_inputs_error_bounded_by_half_reference(dtype, shape, chunk, backend_available):
    """|triton - ref64| <= |ref_half - ref64| + eps per token, where ref_half is the reference
    computed in the input dtype (the naive half-precision path): fp32 accumulation must do at
    least as well everywhere, and far better overall."""
    n, h, v = shape
    dev = _triton_dev(backend_available, dtype)
    hidden, weight, targets, mask = _data(n, h, v, seed=v + n, dtype=dtype)
    mask, targets = _ignore_some(n, mask, targets)
    res = token_loss(
        *_to(dev, hidden, weight, targets, mask), entropy=True, el2n=True, rank=True, chunk_size=chunk, backend="triton"
    )
    ref64, sel = _oracle(hidden, weight, targets, mask)
    ref_half = reference_token_loss(hidden[sel], weight, targets[sel], compute_dtype=dtype)
    for f in FIELDS:
        got = getattr(res, f).cpu()[sel].double()
        err_half = (ref_half[f].double() - ref64[f]).abs()
        err = (got - ref64[f]).abs()
        assert bool((err <= err_half + 1e-4 * (1 + ref64[f].abs())).all()), (f, err, err_half)
        assert err.max() <= 0.1 * err_half.max(), (f, err.max(), err_half.max())
    _check_rank(res.rank.cpu(), hidden, weight, targets, sel)


def test_triton_tf32_option_accepted_and_close(backend_available):
    """allow_tf32=True on fp32 inputs: within the error of TF32 operands (10-bit mantissa:
    each product off by at most 2^-10 relative, so |dz| <= 2^-10 sum_i |h_i w_i|)."""
    dev = _triton_dev(backend_available)
    hidden, weight, targets, mask = _data(33, 40, 130, seed=5)
    res = token_loss(
        *_to(dev, hidden, weight, targets, mask), entropy=True, el2n=True, rank=True, backend="triton", allow_tf32=True
    )
    ref, sel = _oracle(hidden, weight, targets, mask)
    h64, w64 = hidden[sel].double(), weight.double()
    dz = 2.0**-10 * (h64.abs() @ w64.abs().T).amax(1)
    z = h64 @ w64.T
    spread = z.amax(1) - z.amin(1)
    # d nll <= 2 max|dz|; d entropy <= 2 max|dz| (1 + spread); d el2n <= 2 max|dz|
    bound = {"nll": 2 * dz, "entropy": 2 * dz * (1 + spread), "el2n": 2 * dz}
    for f in FIELDS:
        err = (getattr(res, f).cpu()[sel].double() - ref[f]).abs()
        assert bool((err <= bound[f] + 1e-5).all()), (f, err, bound[f])
    assert res.rank.shape == (33,)


def test_allow_tf32_refused_where_meaningless():
    hidden, weight, targets, mask = _data(6, 4, 10)
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="allow_tf32: expected True or False"):
            token_loss(hidden, weight, targets, mask, allow_tf32=bad)
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        with pytest.raises(ValueError, match="allow_tf32=True applies to float32 inputs only"):
            token_loss(hidden.to(dt), weight.to(dt), targets, mask, allow_tf32=True, backend="triton")
    for b in ("cpu", "reference"):
        with pytest.raises(ValueError, match=f"backend '{b}' computes in IEEE fp32"):
            token_loss(hidden, weight, targets, mask, allow_tf32=True, backend=b)
    with pytest.raises(ValueError, match="TF32 is an NVIDIA GPU mode, the tensors are on cpu"):
        token_loss(hidden, weight, targets, mask, allow_tf32=True)
    # the backends' reasons say so too (thresher doctor, automatic choice on CUDA tensors)
    backends = OPS["token_loss"].backends
    for b in ("cpu", "reference"):
        why = backends[b].supports(device="cpu", dtype=torch.float32, allow_tf32=True)
        assert why and "IEEE" in why[0]
        assert backends[b].supports(device="cpu", dtype=torch.float32, allow_tf32=False) == []
    assert "float32" in backends["triton"].supports(device="cuda", dtype=torch.bfloat16, allow_tf32=True)[0]
    assert "float64" in backends["triton"].supports(device="cuda", dtype=torch.float64)[0]
    assert backends["triton"].supports(device="cuda", dtype=torch.bfloat16) == []


class _Allocations(TorchDispatchMode):
    """Records the shape and byte size of every tensor an aten op returns (the interpreter's
    copies of the arguments included: it moves whole storages as uint8)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []
        self.nbytes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self.shapes.append(tuple(x.shape))
                self.nbytes.append(x.numel() * x.element_size())
        return out


def test_triton_never_materialises_logits(backend_available):
    """No tensor of the triton path holds a [tokens x vocab] block (the reference's do: the
    recorder sees them), whatever the vocabulary split."""
    dev = _triton_dev(backend_available)
    n, h, v = 64, 8, 257
    hidden, weight, targets, _ = _data(n, h, v, seed=3)
    args = _to(dev, hidden, weight, targets)
    with _Allocations() as ref_rec:
        token_loss(*args, entropy=True, el2n=True, rank=True, backend="reference")
    logits_bytes = n * v * 4
    assert max(ref_rec.nbytes) >= logits_bytes
    for chunk in (None, 64):
        with _Allocations() as rec:
            token_loss(*args, entropy=True, el2n=True, rank=True, chunk_size=chunk, backend="triton")
        # nothing larger than the weight itself (which the interpreter copies), all far below the logits
        assert max(rec.nbytes) <= max(v * h * 4, 5 * 4 * n), (chunk, max(rec.nbytes), sorted(set(rec.shapes)))
        assert max(rec.nbytes) <= logits_bytes // 8
        assert not any(len(s) == 2 and s[1] == v for s in rec.shapes), rec.shapes


def _kernel_module():
    k = _native.kernel("token_loss")
    if k is None:
        pytest.skip(f"thresher.kernels.token_loss unavailable: {_native.why_unavailable('kernels.token_loss')}")
    return k


@pytest.mark.parametrize("m, v", [(4096, 49152), (8192, 128256), (1, 49152), (257, 5003), (100_000, 128256)], ids=str)
def test_triton_split_states_within_one_percent_of_logits(m, v):
    """Every GPU config's automatic vocabulary split keeps the [S, M] states (m, s, t, q, r)
    and z_y under 1% of the bf16 logits tensor, on GPUs of 78 to 144 SMs."""
    k = _kernel_module()
    for sms in (78, 132, 144):
        for cfgs in k.GPU_CONFIGS.values():
            for c in cfgs:
                s = k.n_splits(m, v, c, sms)
                assert 1 <= s <= v
                assert 5 * 4 * s * m + 4 * m <= 0.01 * 2 * m * v, (m, v, c, s)
    c0 = k.GPU_CONFIGS["half"][0]
    assert k.n_splits(7, 50, c0, 132, split_size=3) == 17  # explicit chunk_size: ceil(V / chunk)
    assert k.n_splits(7, 50, c0, 132, split_size=1) == 50


def test_triton_configs_interpreter_uses_one_config():
    k = _kernel_module()
    plan = k._launch_plan(torch.zeros(3, 4), 50, "ieee")  # CPU tensors: the interpreter
    assert plan.fixed == k.INTERPRET_CONFIG and plan.candidates == [k.INTERPRET_CONFIG]
    for prec, cfgs in k.GPU_CONFIGS.items():
        item = 2 if prec == "half" else 4
        assert 1 <= len(cfgs) <= 6, prec
        for c in cfgs:
            for b in (c.block_n, c.block_v, c.block_h):
                assert b >= 16 and b & (b - 1) == 0, c  # tl.dot needs powers of two >= 16
            smem = c.num_stages * (c.block_n + c.block_v) * c.block_h * item
            assert smem <= 227 * 1024, (prec, c, smem)  # fits an H100/H200 SM
    tuner = k._TUNED["half"]
    assert set(tuner.keys) <= set(tuner.arg_names) and {"hid", "vocab"} <= set(tuner.keys)
    assert k.precision(torch.float32, False) == "ieee" and k.precision(torch.float32, True) == "tf32"
    assert k.precision(torch.bfloat16, False) == "half"


# ------------------------------------------------------------- GPU (if any)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "shape", [(1, 64, 7, None), (257, 576, 4099, None), (1000, 128, 32000, 5000)], ids=lambda s: "N%d-H%d-V%d-c%s" % s
)
def test_triton_on_cuda_matches_oracle(dtype, shape):
    n, h, v, cs = shape
    hidden, weight, targets, mask = _data(n, h, v, seed=v, dtype=dtype)
    hidden, weight, targets, mask = (x.cuda() for x in (hidden, weight, targets, mask))
    res = token_loss(hidden, weight, targets, mask, entropy=True, el2n=True, rank=True, chunk_size=cs, backend="triton")
    assert res.nll.device.type == "cuda"
    hidden, weight, targets, mask = (x.cpu() for x in (hidden, weight, targets, mask))
    ref, sel = _oracle(hidden, weight, targets, mask)
    for f in FIELDS:
        x = getattr(res, f).cpu()
        assert torch.isnan(x[~sel]).all()
        rtol, atol = TOLERANCES[dtype]  # half types: atol per unit of sqrt(H)
        torch.testing.assert_close(
            x[sel].double(), ref[f], rtol=rtol, atol=atol * (1 if dtype == torch.float32 else math.sqrt(h))
        )
    _check_rank(res.rank.cpu(), hidden, weight, targets, sel, rel=1e-4)
