"""Geometry on embeddings shared by criteria and selectors: k-means, DEITA's repr
filter walk and greedy k-center. Array in, array out; no registry, no data frames.

Every function is deterministic for a given seed; ``device`` ``auto`` runs on a
GPU when one is visible.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import numpy as np
import torch

from .index import faiss_module, faiss_threads


def shared_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor on ``a``'s memory, read-only arrays too (a memory map of the run's embeddings): the
    functions here only read their inputs, so no copy is made to silence torch's warning."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def torch_device(device: Optional[str]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def repr_filter_order(
    embeddings: np.ndarray,
    order: np.ndarray,
    budget: int,
    tau: float,
    *,
    block: Optional[int] = None,
    device: Optional[str] = None,
    borderline: float = 1e-5,
    norms: Optional[np.ndarray] = None,
) -> np.ndarray:
    """DEITA's repr filter: walk ``order``; keep x if max cos(x, kept) <= tau; stop at ``budget``.

    embeddings: [N, d] L2-normalised float32, or raw rows with their ``norms`` ([N, 1], as
    ``selectors.base.unit_norms``): each block's rows are divided as they are read, the same bits as
    dividing first, with no normalised [N, d] copy. Blocked: a block of candidates is
    compared with the kept set in one GEMM (a candidate above tau there is
    rejected for good: the kept set only grows), then the survivors are resolved
    in order against the block's own accepted rows with a B x B similarity
    matrix. Similarities within ``borderline`` of tau are recomputed in float64,
    so the result does not depend on the block size. Returns kept positions in
    order. O(N_walked * budget * d) multiply-adds, O(budget * d) memory.
    """
    tau = float(tau)
    if not -1.0 <= tau <= 1.0:
        raise ValueError(f"tau: expected a cosine similarity in [-1, 1], got {tau!r}")
    dev = torch_device(device)
    B = int(block or (4096 if dev.type == "cuda" else 1024))
    if B < 1:
        raise ValueError(f"block: expected an integer >= 1, got {block!r}")
    emb = shared_tensor(np.ascontiguousarray(embeddings, dtype=np.float32)).to(dev)
    nrm = None if norms is None else torch.from_numpy(np.asarray(norms, dtype=np.float32).reshape(-1, 1)).to(dev)
    kept = torch.empty((max(budget, 1), emb.shape[1]), dtype=torch.float32, device=dev)
    kept_pos: list[int] = []
    nk = 0
    order = np.asarray(order, dtype=np.int64)
    for pos in range(0, len(order), B):
        if nk >= budget:
            break
        cand = order[pos : pos + B]
        at = torch.from_numpy(cand).to(dev)
        X = emb[at] if nrm is None else emb[at] / nrm[at]
        surv = _survivors(X, kept[:nk], tau, borderline)
        if surv.numel() == 0:
            continue
        Xs = X[surv]
        acc = _accept_in_block(Xs, tau, borderline, budget - nk)
        if acc:
            kept[nk : nk + len(acc)] = Xs[torch.from_numpy(np.asarray(acc, dtype=np.int64)).to(dev)]
            nk += len(acc)
            s_np = surv.cpu().numpy()
            kept_pos.extend(int(cand[s_np[i]]) for i in acc)
    return np.asarray(kept_pos, dtype=np.int64)


def _survivors(X: torch.Tensor, kept: torch.Tensor, tau: float, borderline: float) -> torch.Tensor:
    """Positions in ``X`` whose max similarity to ``kept`` is <= tau (borderline cases in float64)."""
    if kept.shape[0] == 0:
        return torch.arange(X.shape[0], device=X.device)
    m1 = (X @ kept.T).max(1).values
    near = (m1 - tau).abs() <= borderline
    if bool(near.any()):
        r = torch.nonzero(near).flatten()
        above = (X[r].double() @ kept.double().T).max(1).values > tau
        m1[r] = torch.where(above, float("inf"), float("-inf")).to(m1.dtype)
    return torch.nonzero(m1 <= tau).flatten()


def _accept_in_block(Xs: torch.Tensor, tau: float, borderline: float, room: int) -> list[int]:
    """The sequential walk within one block: row i is kept unless an earlier kept row is above tau."""
    G = (Xs @ Xs.T).cpu().numpy()
    near = np.abs(G - tau) <= borderline
    if near.any():
        Gd = (Xs.double() @ Xs.double().T).cpu().numpy()
        G = np.where(near, np.where(Gd > tau, np.inf, -np.inf), G)
    blocked = np.zeros(G.shape[0], dtype=bool)
    acc: list[int] = []
    for i in range(G.shape[0]):
        if blocked[i]:
            continue
        acc.append(i)
        if len(acc) >= room:
            break
        blocked[i + 1 :] |= G[i, i + 1 :] > tau
    return acc


def kcenter_greedy(
    embeddings: np.ndarray,
    k: int,
    *,
    first: int = 0,
    pool: Optional[np.ndarray] = None,
    device: Optional[str] = None,
    norms: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Greedy k-center (Gonzalez): repeatedly add the pool row farthest (Euclidean) from the chosen set.

    O(k N d); ties by lower position. Returns positions in pick order, ``first`` first. ``norms``
    ([N, 1]): the distances are those of the rows divided by their norms (cosine geometry), with
    each dot product scaled instead of a normalised [N, d] copy (memory O(N), not O(N d)).
    """
    dev = torch_device(device)
    x = shared_tensor(np.ascontiguousarray(embeddings, dtype=np.float32)).to(dev)
    n = x.shape[0]
    nrm = None if norms is None else torch.from_numpy(np.asarray(norms, dtype=np.float32).reshape(-1)).to(dev)
    allowed = torch.ones(n, dtype=torch.bool, device=dev)
    if pool is not None:
        allowed[:] = False
        allowed[torch.from_numpy(np.asarray(pool, dtype=np.int64)).to(dev)] = True
    sq = _row_squares(x, nrm)
    mind = torch.full((n,), float("inf"), device=dev)
    mind[~allowed] = -1.0
    out = []
    c = int(first)
    for _ in range(min(k, int(allowed.sum()))):
        out.append(c)
        dot = x @ x[c] if nrm is None else (x @ (x[c] / nrm[c])) / nrm
        d2 = (sq + sq[c] - 2.0 * dot).clamp_min(0.0)
        mind = torch.minimum(mind, d2)
        mind[c] = -1.0
        mind[~allowed] = -1.0
        c = int(torch.argmax(mind))
    return np.asarray(out, dtype=np.int64)


def _row_squares(x: torch.Tensor, norms: Optional[torch.Tensor], step: int = 1 << 16) -> torch.Tensor:
    """[N] squared L2 norms of ``x``'s rows (divided by ``norms`` first when given), a block of rows
    at a time: no [N, d] temporary."""
    if x.shape[0] == 0:
        return x.new_zeros(0)
    parts = []
    for a in range(0, x.shape[0], step):
        b = x[a : a + step] if norms is None else x[a : a + step] / norms[a : a + step, None]
        parts.append((b * b).sum(1))
    return torch.cat(parts)


KMEANS_INITS = ("random", "k-means++")


def kmeans(
    x: np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    spherical: bool = False,
    niter: int = 20,
    max_points_per_centroid: int = 256,
    n_init: int = 1,
    init: str = "random",
) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [c, d], labels [N]) by Lloyd's k-means (FAISS when installed, else torch).

    ``spherical``: centroids re-normalised each iteration, assignment by inner
    product (SemDeDup). ``init``: ``random`` (c distinct rows) or ``k-means++``
    (greedy D^2 sampling with 2 + ln c local trials, as scikit-learn does).
    ``n_init`` restarts (seeds ``seed``, ``seed + 1``, ...) keep the run with the
    lowest inertia (sum of squared distances to the centroid; for ``spherical``,
    the lowest sum of ``1 - cos``), ties to the earlier run. Deterministic for a
    given seed.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters: expected 1..{n}, got {n_clusters}")
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init: expected an integer >= 1, got {n_init!r}")
    if init not in KMEANS_INITS:
        raise ValueError(f"init: expected one of {KMEANS_INITS}, got {init!r}")
    faiss = faiss_module()
    best: Optional[tuple[float, np.ndarray, np.ndarray]] = None
    for t in range(int(n_init)):
        s = int(seed) + t
        if faiss is not None:
            cent, lab = _kmeans_faiss(faiss, x, int(n_clusters), s, spherical, niter, max_points_per_centroid, init)
        else:
            cent, lab = _kmeans_torch(x, int(n_clusters), s, spherical, niter, init=init)
        if n_init == 1:
            return cent, lab
        cost = kmeans_inertia(x, cent, lab, spherical)
        if best is None or cost < best[0]:
            best = (cost, cent, lab)
    assert best is not None
    return best[1], best[2]


INERTIA_BLOCK = 1 << 20  # values (rows x dimensions) converted to float64 at a time: 8 MB


def kmeans_inertia(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray, spherical: bool = False) -> float:
    """The k-means objective in float64: sum of squared distances to the assigned centroid
    (``spherical``: sum of ``1 - x . c``), summed per block of rows: memory O(block), not a float64
    copy of ``x`` (3 GB at a million 384-dimensional rows)."""
    cent = np.asarray(centroids, dtype=np.float64)
    lab = np.asarray(labels, dtype=np.int64)
    step = max(1, INERTIA_BLOCK // max(1, int(cent.shape[1]) if cent.ndim == 2 else 1))
    total = 0.0
    for a in range(0, len(lab), step):
        xd = np.asarray(x[a : a + step], dtype=np.float64)
        c = cent[lab[a : a + step]]
        total += float((1.0 - (xd * c).sum(1)).sum()) if spherical else float(((xd - c) ** 2).sum())
    return total


def kmeans_pp_rows(x: np.ndarray, c: int, seed: int) -> np.ndarray:
    """Row positions of ``c`` k-means++ seeds: the first uniformly, each next one the best (lowest
    potential) of ``2 + ln c`` candidates drawn with probability proportional to D^2 (seeded).
    D^2 below float64 rounding (relative 1e-12) counts as 0, so a row equal to a chosen seed is
    never drawn; when every row sits on a seed, unused rows follow in a seeded order (the seeds
    are always distinct rows)."""
    g = torch.Generator().manual_seed(int(seed))
    xt = shared_tensor(np.ascontiguousarray(x, dtype=np.float64))
    n = xt.shape[0]
    sq = (xt * xt).sum(1)

    def dist2(cols: list) -> torch.Tensor:
        """[n, len(cols)] squared distances to the rows ``cols``."""
        d = sq[:, None] + sq[cols][None] - 2.0 * (xt @ xt[cols].T)
        return torch.where(d <= 1e-12 * (sq[:, None] + sq[cols][None]), torch.zeros_like(d), d)

    trials = 2 + int(np.log(c))
    rows = [int(torch.randint(n, (1,), generator=g))]
    d2 = dist2(rows)[:, 0]
    for _ in range(1, c):
        cum = torch.cumsum(d2, 0)
        if float(cum[-1]) <= 0.0:
            used = set(rows)
            rest = [i for i in torch.randperm(n, generator=g).tolist() if i not in used]
            rows.extend(rest[: c - len(rows)])
            break
        r = torch.rand(trials, generator=g, dtype=torch.float64) * cum[-1]
        cand = torch.searchsorted(cum, r, right=True).clamp(max=n - 1).tolist()
        newd = torch.minimum(d2[:, None], dist2(cand))
        best = int(np.argmin(newd.sum(0).numpy()))  # the lowest potential left (first on ties)
        rows.append(cand[best])
        d2 = newd[:, best]
    return np.asarray(rows, dtype=np.int64)


def _init_rows(x: np.ndarray, c: int, seed: int, init: str) -> np.ndarray:
    if init == "k-means++":
        return kmeans_pp_rows(x, c, seed)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(x.shape[0], generator=g)[:c].numpy()


def _kmeans_faiss(
    faiss: Any,
    x: np.ndarray,
    c: int,
    seed: int,
    spherical: bool,
    niter: int,
    max_points_per_centroid: int,
    init: str = "random",
) -> tuple[np.ndarray, np.ndarray]:
    km = faiss.Kmeans(
        x.shape[1],
        c,
        niter=niter,
        seed=int(seed) + 1,
        spherical=spherical,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,
        verbose=False,
    )
    start = None
    if init != "random":  # faiss's own init is random rows; k-means++ seeds are given
        start = np.ascontiguousarray(x[_init_rows(x, c, seed, init)])
    with faiss_threads(x.shape[0] * c, small=1 << 24):
        km.train(x, init_centroids=start)
    _, lab = km.index.search(x, 1)
    return km.centroids.copy(), lab[:, 0].astype(np.int64)


def _kmeans_torch(
    x: np.ndarray, c: int, seed: int, spherical: bool, niter: int, init: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    xt = shared_tensor(x)
    cent = xt[torch.from_numpy(_init_rows(x, c, seed, init))].clone()
    lab = torch.zeros(n, dtype=torch.int64)
    for _ in range(niter):
        if spherical:
            lab = torch.argmax(xt @ cent.T, 1)
        else:
            lab = torch.argmin((cent * cent).sum(1)[None] - 2 * xt @ cent.T, 1)
        sums = torch.zeros_like(cent).index_add_(0, lab, xt)
        cnt = torch.bincount(lab, minlength=c).float()
        nz = cnt > 0
        cent[nz] = sums[nz] / cnt[nz, None]
        if spherical:
            cent = cent / cent.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return cent.numpy(), lab.numpy()
