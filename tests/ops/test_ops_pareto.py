"""pareto_ranks and crowding_distance: backends against each other, against
moocore and pymoo, ties, NaN policy, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thresher import _native
from thresher.ops import crowding_distance, last_backend, pareto_ranks

OP = "pareto_ranks"
BACKENDS = ["reference", "cpu"]
needs_cpu = pytest.mark.usefixtures("cpu_backend")


@pytest.fixture
def cpu_backend(backend_available):
    backend_available(OP, "cpu", device="cpu")


@pytest.fixture(params=BACKENDS)
def b(request, backend_available):
    """Each backend that can run on CPU tensors here."""
    backend_available(OP, request.param, device="cpu")
    return request.param


def _data(kind: str, n: int, m: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n, m))
    if kind == "ties":  # integer-valued: many ties and duplicates
        return rng.integers(0, 4, size=(n, m)).astype(np.float64)
    if kind == "dups":  # exact duplicated rows, shuffled
        base = rng.random((max(1, n // 3), m))
        return base[rng.integers(0, len(base), size=n)]
    if kind == "corr":  # correlated objectives: hundreds of fronts
        z = rng.random(n)
        return np.stack([z + 0.02 * rng.random(n) for _ in range(m)], 1)
    if kind == "simplex":  # one front with large staircases
        return rng.dirichlet(np.ones(m), size=n)
    if kind == "simplex_round":  # nearly one front, with ties: a few fronts
        return np.round(rng.dirichlet(np.ones(m), size=n), 2)
    if kind == "antichain":  # (i, -i, i, ...) shuffled: one front, worst insertion order
        i = np.arange(n, dtype=np.float64)
        return np.stack([i * (-1) ** j for j in range(m)], 1)[rng.permutation(n)]
    if kind == "stairs":  # long staircases, then points cutting them (chunk splits and spills)
        h = n // 2
        i = np.arange(h, dtype=np.float64)
        first = np.stack([i, -i, i], 1)
        second = np.stack([h + rng.random(n - h) * h, -rng.random(n - h) * h, rng.random(n - h) * h], 1)
        a = np.concatenate([first, second])[rng.permutation(n)]
        return a[:, :m] if m <= 3 else np.concatenate([a, rng.random((n, m - 3))], 1)
    raise AssertionError(kind)


def _moocore(a: np.ndarray, maximize) -> np.ndarray:
    """moocore's ranks: only the cases that compare with moocore need it (skipped without it)."""
    moocore = pytest.importorskip("moocore")
    if len(a) == 0:
        return np.zeros(0, dtype=np.int64)
    # negate maximised columns ourselves: moocore 0.3.2 reads maximise=[False]
    # with one column as maximise
    flags = np.broadcast_to(np.asarray(maximize, dtype=bool), (a.shape[1],))
    a = np.where(flags, -a, a)
    return np.asarray(moocore.pareto_rank(a), dtype=np.int64)


def _pymoo_ens(a: np.ndarray) -> np.ndarray:
    """pymoo's own compiled efficient non-dominated sort (minimisation)."""
    from pymoo.functions import load_function

    fronts = load_function("efficient_non_dominated_sort")(np.ascontiguousarray(a, dtype=np.float64))
    r = np.full(len(a), -1, dtype=np.int64)
    for i, f in enumerate(fronts):
        r[np.asarray(f, dtype=np.int64)] = i
    return r


def NonDominatedSorting():  # noqa: N802 - pymoo's class (in pymoo 0.6.2 it runs moocore.pareto_rank)
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting as NDS

    return NDS()


def _brute(a: np.ndarray) -> np.ndarray:
    """Definition, minimisation: rank = longest chain of dominators."""
    n = len(a)
    dom = [[bool(np.all(a[i] <= a[j]) and np.any(a[i] < a[j])) for j in range(n)] for i in range(n)]
    rank = [-1] * n
    remaining = set(range(n))
    r = 0
    while remaining:
        front = [j for j in remaining if not any(dom[i][j] for i in remaining)]
        for j in front:
            rank[j] = r
        remaining -= set(front)
        r += 1
    return np.array(rank, dtype=np.int64)


# ------------------------------------------------------------ correctness
@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("kind", ["ties", "uniform", "dups"])
def test_backends_match_moocore(n, m, kind, b):
    a = _data(kind, n, m, seed=n * 31 + m)
    maximize = [bool(j % 2) for j in range(m)]  # a mix
    want = _moocore(a, maximize)
    got = pareto_ranks(torch.from_numpy(a), maximize=maximize, backend=b)
    assert last_backend() == ("pareto_ranks", b)
    assert got.dtype == torch.int64 and got.shape == (n,)
    np.testing.assert_array_equal(got.numpy(), want, err_msg=f"backend={b}")


@pytest.mark.parametrize("m", [2, 3, 4])
def test_matches_pymoo_and_definition(m, b):
    for seed in range(4):
        a = _data("ties" if seed % 2 else "uniform", 40, m, seed)
        want = _brute(a)
        np.testing.assert_array_equal(_pymoo_ens(a), want)  # the baselines agree with the definition
        np.testing.assert_array_equal(NonDominatedSorting().do(a, return_rank=True)[1], want)
        np.testing.assert_array_equal(pareto_ranks(a, maximize=False, backend=b).numpy(), want)


def test_tie_semantics(b):
    # duplicates share a rank; equal in one objective and better in the other dominates
    a = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0], [0.0, 3.0]])
    want = torch.tensor([0, 0, 1, 1, 2, 0])
    assert torch.equal(pareto_ranks(a, maximize=False, backend=b), want)
    # maximise the negated data: the same ranks
    assert torch.equal(pareto_ranks(-a, maximize=True, backend=b), want)
    # -0.0 == 0.0, +-inf are ordinary values
    z = torch.tensor([[0.0, float("inf")], [-0.0, float("inf")], [-float("inf"), 5.0], [1.0, 1.0]])
    assert pareto_ranks(z, maximize=False, backend=b).tolist() == [1, 1, 0, 0]


@needs_cpu
@pytest.mark.parametrize("m", [2, 3, 4, 5])
@pytest.mark.parametrize("kind", ["ties", "corr", "uniform", "dups", "simplex", "simplex_round", "antichain", "stairs"])
def test_cpu_algorithms_large(m, kind):
    """Every C++ path (sweep, staircase, divide and conquer, staircase fallback) on
    enough points to reach the recursive cases; correlated data has hundreds of fronts."""
    n = {2: 20000, 3: 6000, 4: 3000, 5: 2000}[m]
    a = np.ascontiguousarray(_data(kind, n, m, seed=m))
    want = _moocore(a, False)
    if kind == "corr":
        assert want.max() >= 100
    C = _native.cpu_ext()
    algos = ["auto", "dc"] + (["staircase", "fallback"] if m == 3 else [])
    for alg in algos:
        got = C.pareto_ranks(a, "auto", 0) if alg == "fallback" else C.pareto_ranks(a, alg)
        np.testing.assert_array_equal(got, want, err_msg=alg)


@needs_cpu
def test_cpu_matches_reference_permutation_and_dtypes():
    rng = np.random.default_rng(7)
    a = rng.integers(-3, 3, size=(500, 3))
    ref = pareto_ranks(torch.from_numpy(a), backend="reference")
    got = pareto_ranks(torch.from_numpy(a), backend="cpu")
    assert torch.equal(ref, got)
    # integer, float32, float64 and numpy / list input agree
    assert torch.equal(pareto_ranks(a.astype(np.float32), backend="cpu"), got)
    assert torch.equal(pareto_ranks(a.tolist(), backend="cpu"), got)
    # permuting the rows permutes the ranks
    perm = rng.permutation(len(a))
    assert torch.equal(pareto_ranks(a[perm], backend="cpu"), got[perm])
    # bool objectives
    b = rng.random((50, 2)) > 0.5
    assert torch.equal(pareto_ranks(b, backend="cpu"), pareto_ranks(b.astype(float), backend="reference"))


def test_default_backend_and_env(monkeypatch, backend_available):
    a = torch.rand(20, 2, dtype=torch.float64)
    pareto_ranks(a)
    has_cpu = not backend_available.reasons(OP, "cpu", device="cpu")
    assert last_backend() == ("pareto_ranks", "cpu" if has_cpu else "reference")
    monkeypatch.setenv("THRESHER_BACKEND_PARETO_RANKS", "reference")
    pareto_ranks(a)
    assert last_backend() == ("pareto_ranks", "reference")


# ------------------------------------------------------------------- NaN
def test_nan_rows_ranked_last(b):
    a = torch.tensor([[1.0, 1.0], [float("nan"), 0.0], [2.0, 2.0], [0.0, float("nan")], [3.0, 0.0]])
    # maximise: [2,2] and [3,0] on front 0, [1,1] dominated by [2,2]; NaN rows after
    assert pareto_ranks(a, backend=b).tolist() == [1, 2, 0, 2, 0]
    assert pareto_ranks(torch.full((3, 2), float("nan")), backend=b).tolist() == [0, 0, 0]


@needs_cpu
def test_cpu_kernel_refuses_bad_buffers():
    C = _native.cpu_ext()
    with pytest.raises(ValueError, match="objectives"):
        C.pareto_ranks(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="objectives"):
        C.pareto_ranks(np.zeros(4))
    with pytest.raises(ValueError, match="objectives"):
        C.pareto_ranks(np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="objectives"):
        C.pareto_ranks(np.zeros((4, 4))[:, ::2])
    with pytest.raises(ValueError, match="algorithm"):
        C.pareto_ranks(np.zeros((4, 2)), "nope")


# ------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="objectives"):
        pareto_ranks(torch.rand(5))  # 1-D
    with pytest.raises(ValueError, match="objectives"):
        pareto_ranks(torch.rand(5, 0))
    with pytest.raises(ValueError, match="objectives"):
        pareto_ranks(torch.rand(3, 2, 2))
    with pytest.raises(ValueError, match="objectives"):
        pareto_ranks(torch.rand(4, 2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="objectives"):
        pareto_ranks(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match="objectives"):
        pareto_ranks([[1.0, 2.0], [3.0]])  # ragged
    with pytest.raises(ValueError, match="maximize"):
        pareto_ranks(torch.rand(4, 3), maximize=[True, False])
    with pytest.raises(ValueError, match="maximize"):
        pareto_ranks(torch.rand(4, 2), maximize="max")
    with pytest.raises(ValueError, match="maximize"):
        pareto_ranks(torch.rand(4, 2), maximize=[True, 2])
    with pytest.raises(ValueError, match="backend"):
        pareto_ranks(torch.rand(4, 2), backend="nope")
    with pytest.raises(ValueError, match="ranks"):
        crowding_distance(torch.rand(4, 2), torch.zeros(3, dtype=torch.int64))  # N mismatch
    with pytest.raises(ValueError, match="ranks"):
        crowding_distance(torch.rand(4, 2), torch.zeros(4))  # float ranks
    with pytest.raises(ValueError, match="ranks"):
        crowding_distance(torch.rand(4, 2), torch.tensor([0, -1, 0, 0]))
    with pytest.raises(ValueError, match="objectives"):
        crowding_distance(torch.rand(4), torch.zeros(4, dtype=torch.int64))


# ----------------------------------------------------------- crowding
def _crowding_loop(a: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Direct per-front, per-objective loop with the documented tie rules."""
    n, m = a.shape
    out = np.zeros(n)
    for f in np.unique(ranks):
        rows = np.flatnonzero(ranks == f)
        nconst = np.zeros(len(rows), dtype=int)
        for j in range(m):
            v = a[rows, j]
            vals = np.unique(v)
            lo, hi = vals[0], vals[-1]
            if lo == hi:
                nconst += 1
                continue
            for t, x in enumerate(v):
                i = int(np.searchsorted(vals, x))
                if i == 0 or i == len(vals) - 1:
                    out[rows[t]] += np.inf
                else:
                    c = (vals[i + 1] - vals[i - 1]) / (hi - lo)
                    out[rows[t]] += 0.0 if np.isnan(c) else c
        out[rows[nconst == m]] = np.inf
    return out


@pytest.mark.parametrize("kind", ["ties", "uniform", "dups"])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_crowding_matches_loop(kind, m):
    a = _data(kind, 200, m, seed=3)
    r = pareto_ranks(a).numpy()
    got = crowding_distance(a, r).numpy()
    np.testing.assert_allclose(got, _crowding_loop(a, r), rtol=1e-12, atol=0)
    # permutation invariance (ties never broken by position)
    perm = np.random.default_rng(0).permutation(len(a))
    np.testing.assert_allclose(crowding_distance(a[perm], r[perm]).numpy(), got[perm], rtol=1e-12)


def test_crowding_against_pymoo_without_ties():
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

    a = np.random.default_rng(5).random((40, 3))
    r = np.zeros(40, dtype=np.int64)  # one front
    # pymoo divides by the number of objectives and gives boundaries inf the same way
    np.testing.assert_allclose(crowding_distance(a, r).numpy() / 3, calc_crowding_distance(a), rtol=1e-12)


def test_crowding_rules():
    inf = float("inf")
    # one front, objective 1 constant (contributes 0), objective 0 spaced 0, 1, 3
    a = torch.tensor([[0.0, 5.0], [1.0, 5.0], [3.0, 5.0], [1.0, 5.0]])
    r = torch.zeros(4, dtype=torch.int64)
    assert crowding_distance(a, r).tolist() == [inf, 1.0, inf, 1.0]
    # single-row front and a front of identical rows: inf; NaN row: NaN
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [2.0, 2.0], [float("nan"), 0.0]])
    d = crowding_distance(b, torch.tensor([0, 1, 1, 2]))
    assert d[:3].tolist() == [inf, inf, inf] and torch.isnan(d[3])
    # infinite values: only boundaries
    c = torch.tensor([[-inf], [0.0], [1.0], [inf]])
    assert crowding_distance(c, torch.zeros(4, dtype=torch.int64)).tolist() == [inf, 0.0, 0.0, inf]
    assert crowding_distance(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64)).shape == (0,)


# ---------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_reference_and_routing():
    a = torch.from_numpy(_data("ties", 3000, 3, 1))
    want = pareto_ranks(a, backend="reference")
    g = a.cuda()
    got = pareto_ranks(g, backend="reference")
    assert got.is_cuda and torch.equal(got.cpu(), want)
    got = pareto_ranks(g)  # small: reference on the GPU
    assert got.is_cuda and torch.equal(got.cpu(), want)
    big = torch.from_numpy(_data("corr", 20000, 2, 2)).cuda()
    out = pareto_ranks(big)
    assert out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), _moocore(big.cpu().numpy(), True))
    d = crowding_distance(g, got)
    assert d.is_cuda
    torch.testing.assert_close(d.cpu(), crowding_distance(a, want))
