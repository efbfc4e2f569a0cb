"""One nearest-neighbour index layer: exact and approximate search over FAISS.

``KNNIndex(dim, metric="ip"|"l2", kind="auto")`` then ``.build(embeddings, ids)``
and ``.search(queries, k)``. Kinds:

* ``exact``: exact search. On the CPU it runs thresher's tiled kernel
  (:func:`thresher.ops.knn`, blocked GEMM + running top-k; measured faster than
  FAISS ``IndexFlatIP`` on the development CPU, see benchmarks/bench_knn.py);
  on a GPU with a FAISS GPU build it uses ``GpuIndexFlat`` unless ``k`` exceeds
  FAISS's GPU limit (2048), where the tiled kernel takes over.
* ``flat``: FAISS ``IndexFlatIP`` / ``IndexFlatL2`` (exact, FAISS's own code).
* ``ivf_flat``, ``ivf_pq``, ``hnsw``: FAISS approximate indexes
  (``nlist`` / ``nprobe``, ``pq_m`` / ``pq_bits``, ``hnsw_m`` / ``ef_search``).
* ``auto``: the same as ``exact`` at every size (kept as a name so configs that say
  ``auto`` keep working). An approximate kind is used ONLY when named: it can miss
  neighbours, so it is never chosen behind the user's back. Measured IVF-Flat setting
  for large pools: ``nlist = 2 sqrt(N)`` (the default of ``ivf_flat`` / ``ivf_pq``)
  with ``nprobe`` = nlist/16 gave recall@10 0.97 on 1M x 384 clustered data
  (benchmarks/results/knn-cpu.json).

After an approximate search, :meth:`KNNIndex.measure_recall` measures recall@k on a
seeded sample of queries against an exact search of the same sample.

GPU (FAISS GPU build, ``use_gpu``): ``exact`` / ``flat`` run as ``GpuIndexFlat``; a
``k`` above FAISS's GPU limit (2048, counting the extra neighbour ``exclude_self``
asks for) falls back to the tiled exact kernel. ``ivf_flat`` / ``ivf_pq`` run on the
GPU and a ``k`` or ``nprobe`` above the limit raises :class:`thresher.errors.OptionError`
before FAISS is called. FAISS has no GPU HNSW: ``hnsw`` stays on the CPU (a logged
notice). The base stays resident on the device between searches.

``search`` returns ``(values [Q, k] float32, ids [Q, k])``: inner products
(``ip``, descending) or squared L2 distances (``l2``, ascending); ``ids`` are
the ids given to ``build`` (row positions when none were given). Missing
neighbours of an approximate search (fewer than ``k`` found) are id -1 /
position -1 and value NaN.

Errors: a query dimension or metric that differs from the index's, NaN rows,
``ids`` that do not match the embeddings in length or are not unique, ``k`` larger
than the index: ``ValueError`` naming the argument.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .errors import OptionError
from .extras import require
from .fs import atomic_file, atomic_save, atomic_write_text
from .ops.knn import check_finite_rows, knn
from .progress import advance

KINDS = ("auto", "exact", "flat", "ivf_flat", "ivf_pq", "hnsw")
EXACT_KINDS = ("auto", "exact", "flat")
APPROXIMATE_KINDS = ("ivf_flat", "ivf_pq", "hnsw")
log = logging.getLogger("thresher.index")
FAISS_GPU_MAX_K = 2048
QUERY_BLOCK = 8192  # queries per search call: the unit the progress bar moves by


def faiss_module():
    """faiss or None (callers with a fallback, such as exact search and k-means, use this)."""
    try:
        return require("faiss", "faiss")
    except Exception:  # MissingExtraError, or a broken install  # pragma: no cover - faiss is an optional extra
        return None


def require_faiss(what: str):
    """faiss, or MissingExtraError naming ``pip install 'thresher[faiss]'`` (callers without a fallback)."""
    return require("faiss", "faiss", what=what)


def faiss_has_gpu() -> bool:
    f = faiss_module()
    if f is None or not hasattr(f, "StandardGpuResources"):
        return False
    try:
        return f.get_num_gpus() > 0
    except Exception:  # pragma: no cover
        return False


@contextlib.contextmanager
def faiss_threads(n_rows: int, small: int = 50_000):
    """Run FAISS single-threaded on small inputs: its OpenMP start-up and spinning
    cost far more than the work there (measured 13x slower IVF-PQ training on 4,000
    rows with 2 threads on a shared 2-core machine)."""
    f = faiss_module()
    if f is None or n_rows >= small:
        yield
        return
    before = f.omp_get_max_threads()
    f.omp_set_num_threads(1)
    try:
        yield
    finally:
        f.omp_set_num_threads(before)


def _as_f32(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    try:
        a = np.asarray(x)
    except Exception:
        raise ValueError(f"{name}: cannot read as an array ({type(x).__name__})") from None
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d [rows, dim] array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected floating point values, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    check_finite_rows(torch.from_numpy(a), name)
    return a


class KNNIndex:
    """Nearest-neighbour index over a fixed set of embeddings (see module doc)."""

    def __init__(
        self,
        dim: int,
        metric: str = "ip",
        kind: str = "auto",
        *,
        nlist: Optional[int] = None,
        nprobe: Optional[int] = None,
        pq_m: Optional[int] = None,
        pq_bits: int = 8,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 80,
        train_size: Optional[int] = None,
        use_gpu: Any = "auto",
        seed: int = 0,
    ) -> None:
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        if metric not in ("ip", "l2"):
            raise ValueError(f"metric: expected 'ip' or 'l2', got {metric!r}")
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        self.dim = int(dim)
        self.metric = metric
        self.requested_kind = kind
        self.kind: Optional[str] = None
        self.params = dict(
            nlist=nlist,
            nprobe=nprobe,
            pq_m=pq_m,
            pq_bits=pq_bits,
            hnsw_m=hnsw_m,
            ef_search=ef_search,
            ef_construction=ef_construction,
            train_size=train_size,
            seed=seed,
        )
        if use_gpu == "auto":
            use_gpu = faiss_has_gpu()
        elif use_gpu and not faiss_has_gpu():
            raise ValueError("use_gpu: FAISS has no GPU build or no GPU is visible")
        self.use_gpu = bool(use_gpu)
        self.on_gpu = False  # whether the FAISS index lives on the GPU (hnsw never does)
        self._faiss_index = None
        self._base: Optional[np.ndarray] = None
        self._base_dev: Optional[torch.Tensor] = None  # the base on the GPU for the tiled kernel, copied once
        self.ids: Optional[np.ndarray] = None
        self.ntotal = 0
        self.last_recall: Optional[dict] = None

    @property
    def exact(self) -> bool:
        """Whether searches return the exact neighbours (``auto``, ``exact``, ``flat``)."""
        return (self.kind or self.requested_kind) in EXACT_KINDS

    # ------------------------------------------------------------------ build
    def _resolve_kind(self, n: int) -> str:
        """``auto`` is exact at every size: approximate kinds only when named."""
        return "exact" if self.requested_kind == "auto" else self.requested_kind

    def _nlist(self, n: int) -> int:
        if self.params["nlist"]:
            return int(self.params["nlist"])
        return max(1, min(1 << int(round(math.log2(max(2 * math.sqrt(n), 1)))), n // 39 or 1))

    def build(self, embeddings: Any, ids: Optional[Sequence] = None) -> "KNNIndex":
        """Index ``embeddings`` [N, dim] (float); ``ids`` (length N, unique) name its rows."""
        x = _as_f32(embeddings, "embeddings")
        if x.shape[1] != self.dim:
            raise ValueError(f"embeddings: dimension {x.shape[1]} does not match the index dimension {self.dim}")
        n = x.shape[0]
        if ids is not None:
            ids = np.asarray(ids)
            if ids.ndim != 1 or ids.shape[0] != n:
                raise ValueError(f"ids: {ids.shape[0] if ids.ndim else 1} ids for {n} embeddings")
            if len(np.unique(ids)) != n:
                raise ValueError("ids: duplicate ids")
        self.ids = ids
        self.ntotal = n
        self.kind = self._resolve_kind(n)
        # kept (a reference, no copy for float32 input): the k > 2048 fallback and measure_recall's exact oracle
        self._base = x
        if self.kind == "exact" and not (self.use_gpu and faiss_module() is not None):
            return self
        index = self._to_device(self._new_faiss_index(x))
        with faiss_threads(n):
            index.add(x)
        self._faiss_index = index
        return self

    def _new_faiss_index(self, x: np.ndarray) -> Any:
        """An empty (trained) FAISS index of :attr:`kind` for ``x`` (on the CPU)."""
        f = require_faiss(f"kNN index kind {self.kind!r}")
        mt = f.METRIC_INNER_PRODUCT if self.metric == "ip" else f.METRIC_L2
        d, n = self.dim, x.shape[0]
        if self.kind in ("exact", "flat"):
            return f.IndexFlatIP(d) if self.metric == "ip" else f.IndexFlatL2(d)
        if self.kind == "hnsw":
            index = f.IndexHNSWFlat(d, int(self.params["hnsw_m"]), mt)
            index.hnsw.efConstruction = int(self.params["ef_construction"])
            index.hnsw.efSearch = int(self.params["ef_search"])
            return index
        nlist = self._nlist(n)
        quant = f.IndexFlatIP(d) if self.metric == "ip" else f.IndexFlatL2(d)
        if self.kind == "ivf_flat":
            index = f.IndexIVFFlat(quant, d, nlist, mt)
        else:
            m = self.params["pq_m"] or next(c for c in (64, 48, 32, 16, 8, 4, 2, 1) if d % c == 0)
            if d % m:
                raise ValueError(f"pq_m: {m} does not divide the dimension {d}")
            index = f.IndexIVFPQ(quant, d, nlist, int(m), int(self.params["pq_bits"]), mt)
        ts = self.params["train_size"] or min(n, max(nlist * 40, 20_000))
        if n < nlist:
            raise ValueError(f"nlist: {nlist} lists need at least {nlist} embeddings, got {n}")
        rng = np.random.default_rng(self.params["seed"])
        tr = x if ts >= n else x[np.sort(rng.choice(n, ts, replace=False))]
        with faiss_threads(len(tr)):
            index.train(tr)
        index.nprobe = int(self.params["nprobe"] or max(16, nlist // 16))
        return index

    def _to_device(self, index: Any) -> Any:
        """``index`` moved to the GPU when ``use_gpu`` (HNSW stays on the CPU: FAISS has no GPU HNSW)."""
        self.on_gpu = False
        if not self.use_gpu:
            return index
        if self.kind == "hnsw":
            log.warning("index: FAISS has no GPU version of HNSW; the hnsw index runs on the CPU")
            return index
        f = faiss_module()
        self._gpu_res = f.StandardGpuResources()
        self.on_gpu = True
        return f.index_cpu_to_gpu(self._gpu_res, 0, index)

    # ----------------------------------------------------------------- search
    def search(
        self, queries: Any, k: int, *, exclude_self: bool = False, query_offset: int = 0, nprobe: Optional[int] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(values [Q, k] float32, ids [Q, k]) of the k nearest indexed rows.

        ``exclude_self``: query ``i`` is indexed row ``query_offset + i`` and is
        never returned (approximate kinds search ``k + 1`` and drop it).
        """
        q = self._check_queries(queries)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k: expected an integer >= 0, got {k!r}")
        cap = self.ntotal - (1 if exclude_self else 0)
        if k > cap:
            raise ValueError(f"k: {k} is larger than the {cap} indexed rows available")
        if exclude_self and query_offset + q.shape[0] > self.ntotal:
            raise ValueError(
                f"query_offset: rows {query_offset}..{query_offset + q.shape[0] - 1} "
                f"are not all in the index ({self.ntotal} rows)"
            )
        vals, pos = self._search_blocks(q, k, exclude_self, query_offset, nprobe)
        return vals, self._ids_of(pos)

    def _check_queries(self, queries: Any) -> np.ndarray:
        if self.kind is None:
            raise ValueError("index: call build() before search()")
        q = _as_f32(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries: dimension {q.shape[1]} does not match the index dimension {self.dim}")
        return q

    def _ids_of(self, pos: np.ndarray) -> np.ndarray:
        if self.ids is None:
            return pos
        if self.ids.dtype.kind in "iu":
            return np.where(pos >= 0, self.ids[np.clip(pos, 0, None)], -1)
        return np.where(pos >= 0, self.ids[np.clip(pos, 0, None)], None)

    def _use_kernel(self, k: int, exclude_self: bool) -> bool:
        """Whether the tiled exact kernel answers: no FAISS index, or an exact FAISS GPU index asked
        for more than FAISS's GPU limit (``exclude_self`` asks FAISS for one more)."""
        if self._faiss_index is None:
            return True
        kk = k + 1 if exclude_self else k
        return self.kind in ("exact", "flat") and self.on_gpu and kk > FAISS_GPU_MAX_K and self._base is not None

    def _check_gpu_limits(self, k: int, exclude_self: bool, nprobe: Optional[int]) -> None:
        """OptionError before FAISS's GPU limits are hit inside FAISS (its own error is an assert)."""
        if not self.on_gpu:
            return
        kk = k + 1 if exclude_self else k
        if kk > FAISS_GPU_MAX_K:
            extra = " (k + 1: exclude_self asks for one more)" if exclude_self else ""
            raise OptionError(
                f"k: {kk}{extra} is above FAISS's GPU limit of {FAISS_GPU_MAX_K} for index kind {self.kind!r}; "
                "use index kind 'exact' (any k) or a CPU index (use_gpu=False)"
            )
        np_ = nprobe if nprobe is not None else getattr(self._faiss_index, "nprobe", None)
        if np_ is not None and int(np_) > FAISS_GPU_MAX_K:
            raise OptionError(f"nprobe: {np_} is above FAISS's GPU limit of {FAISS_GPU_MAX_K}")

    def _kernel_search(self) -> Any:
        """The tiled exact kernel over the base, which is copied to the GPU once and kept there."""
        gpu = bool(self.use_gpu) and torch.cuda.is_available()
        if gpu and self._base_dev is None:
            self._base_dev = torch.from_numpy(self._base).cuda()
        base = self._base_dev if gpu else self._base

        def run(qb: np.ndarray, k: int, exclude_self: bool, offset: int) -> tuple[np.ndarray, np.ndarray]:
            qt = torch.from_numpy(qb).cuda() if gpu else qb
            v, i = knn(qt, base, k, self.metric, exclude_self=exclude_self, query_offset=offset)
            return v.cpu().numpy(), i.cpu().numpy()

        return run

    def _search_blocks(
        self, q: np.ndarray, k: int, exclude_self: bool, query_offset: int, nprobe: Optional[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row positions of the neighbours, :data:`QUERY_BLOCK` queries at a time (each query's result
        is independent of the others); every block reports its rows to :func:`thresher.progress.advance`."""
        if self._use_kernel(k, exclude_self):
            run = self._kernel_search()
        else:
            self._check_gpu_limits(k, exclude_self, nprobe)
            if nprobe is not None and hasattr(self._faiss_index, "nprobe"):
                self._faiss_index.nprobe = int(nprobe)
            run = self._search_faiss
        nq = q.shape[0]
        if nq == 0:
            return run(q, k, exclude_self, query_offset)
        vals, pos = [], []
        for s in range(0, nq, QUERY_BLOCK):
            v, p = run(q[s : s + QUERY_BLOCK], k, exclude_self, query_offset + s)
            vals.append(v)
            pos.append(p)
            advance(v.shape[0])
        return np.concatenate(vals), np.concatenate(pos)

    def _search_faiss(self, q: np.ndarray, k: int, exclude_self: bool, offset: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._faiss_index
        kk = min(k + 1 if exclude_self else k, self.ntotal)
        if q.shape[0] == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        with faiss_threads(q.shape[0] * max(self.ntotal // 64, 1), small=1 << 22):
            vals, pos = index.search(q, kk)
        vals = vals.astype(np.float32, copy=False)
        pos = pos.astype(np.int64, copy=False)
        if exclude_self:
            vals, pos = _drop_self(vals, pos, np.arange(q.shape[0]) + offset, k)
        else:
            vals, pos = vals[:, :k], pos[:, :k]
        return np.where(pos < 0, np.nan, vals).astype(np.float32), pos

    # ----------------------------------------------------------------- recall
    def measure_recall(
        self,
        queries: Any,
        k: int,
        *,
        sample: int = 1000,
        seed: int = 0,
        nprobe: Optional[int] = None,
        base: Any = None,
    ) -> float:
        """recall@k of this index on a seeded sample of ``min(sample, Q)`` queries: the fraction of
        the exact k nearest neighbours that the index returns (an exact search of the same sample
        over the indexed rows is the oracle). Ties count as found: a returned row whose exact score
        equals the k-th exact score (within float32 rounding) is a true neighbour too. Exact kinds
        give 1.0 without searching; no query gives NaN. ``base``: the indexed rows, needed only for
        an approximate index read back by :meth:`load` (which keeps no copy of them). The result
        is also kept in :attr:`last_recall` (``{"recall", "sample", "k", "seed"}``)."""
        q = self._check_queries(queries)
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
            raise ValueError(f"sample: expected an integer >= 1, got {sample!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.ntotal:
            raise ValueError(f"k: expected an integer in 1..{self.ntotal}, got {k!r}")
        n = min(int(sample), q.shape[0])
        rows = np.sort(np.random.default_rng(seed).choice(q.shape[0], n, replace=False)) if n else np.zeros(0, int)
        if n == 0:
            recall = float("nan")
        elif self.exact:
            recall = 1.0
        else:
            ref = _as_f32(base, "base") if base is not None else self._base
            if ref is None or ref.shape != (self.ntotal, self.dim):
                raise ValueError("base: this index keeps no copy of its rows (read by load); pass base=")
            got = self._search_blocks(q[rows], int(k), False, 0, nprobe)[1]
            recall = _recall_at_k(q[rows], ref, got, int(k), self.metric)
        self.last_recall = dict(recall=None if n == 0 else recall, sample=int(n), k=int(k), seed=int(seed))
        return recall

    # ------------------------------------------------------------ persistence
    def save(self, path: Any) -> Path:
        """Write the index to a folder (FAISS index file or the exact base as .npy + meta.json)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        meta = dict(dim=self.dim, metric=self.metric, kind=self.kind, ntotal=self.ntotal, params=self.params, format=1)
        if self._faiss_index is not None and self.kind != "exact":
            f = faiss_module()
            idx = self._faiss_index
            if self.on_gpu:
                idx = f.index_gpu_to_cpu(idx)
            atomic_save(p / "index.faiss", lambda tmp: f.write_index(idx, str(tmp)))
        else:
            _save_npy(p / "base.npy", self._base)
        if self.ids is not None:
            if self.ids.dtype.kind in "iu":
                _save_npy(p / "ids.npy", self.ids.astype(np.int64))
            else:
                meta["ids"] = [str(i) for i in self.ids]
        atomic_write_text(p / "meta.json", json.dumps(meta))  # last: the index's commit marker
        return p

    @classmethod
    def load(
        cls, path: Any, *, dim: Optional[int] = None, metric: Optional[str] = None, use_gpu: Any = False
    ) -> "KNNIndex":
        """Read a saved index. ``dim`` / ``metric``: expected values; a mismatch raises ValueError."""
        p = Path(path)
        mp = p / "meta.json"
        if not mp.is_file():
            raise ValueError(f"path: {p} holds no saved index (meta.json missing)")
        meta = json.loads(mp.read_text())
        if dim is not None and int(dim) != meta["dim"]:
            raise ValueError(f"dim: index at {p} was built for dimension {meta['dim']}, not {dim}")
        if metric is not None and metric != meta["metric"]:
            raise ValueError(f"metric: index at {p} was built for metric {meta['metric']!r}, not {metric!r}")
        params = {k: v for k, v in meta["params"].items() if k != "exact_max"}  # exact_max: format 1, gone
        self = cls(meta["dim"], meta["metric"], meta["kind"], use_gpu=use_gpu, **params)
        ids = None
        if (p / "ids.npy").is_file():
            ids = np.load(p / "ids.npy", allow_pickle=False)
        elif "ids" in meta:
            ids = np.asarray(meta["ids"], dtype=object)
        if not (p / "index.faiss").is_file():  # exact: the base itself, indexed again (on the GPU when asked)
            return self.build(np.load(p / "base.npy", allow_pickle=False), ids)
        f = require_faiss(f"the FAISS index at {p}")
        self.kind = meta["kind"]
        self.ntotal = meta["ntotal"]
        self.ids = ids
        self._faiss_index = self._to_device(f.read_index(str(p / "index.faiss")))
        return self


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_file(path) as fh:
        np.save(fh, arr, allow_pickle=False)


def _pair_scores(q: np.ndarray, base: np.ndarray, pos: np.ndarray, metric: str) -> np.ndarray:
    """float64 score (larger = nearer) of every query row with the base rows ``pos`` [n, m]; chunked."""
    out = np.empty(pos.shape, np.float64)
    step = max(1, (1 << 22) // max(1, pos.shape[1] * q.shape[1]))
    for s in range(0, q.shape[0], step):
        q64 = q[s : s + step].astype(np.float64)
        b = base[np.clip(pos[s : s + step], 0, None)].astype(np.float64)  # [c, m, d]
        out[s : s + step] = np.einsum("nd,nkd->nk", q64, b) if metric == "ip" else -((q64[:, None] - b) ** 2).sum(2)
    return out


def _recall_at_k(q: np.ndarray, base: np.ndarray, got: np.ndarray, k: int, metric: str) -> float:
    """Fraction of the exact k nearest rows found in ``got`` (positions, -1 = missing); a returned
    row whose float64 score is within float32 rounding of the k-th exact score counts (ties)."""
    exact = knn(q, base, k, metric)[1].numpy()
    kth = _pair_scores(q, base, exact[:, -1:], metric)
    tol = 1e-5 * np.maximum(1.0, np.abs(kth))
    hit = (got >= 0) & (_pair_scores(q, base, got, metric) >= kth - tol)
    return float(hit.sum()) / float(q.shape[0] * k)


def _drop_self(vals: np.ndarray, pos: np.ndarray, self_pos: np.ndarray, k: int):
    """Remove each row's own position (or its last entry when absent) -> [Q, k]."""
    Q, kk = pos.shape
    is_self = pos == self_pos[:, None]
    has = is_self.any(1)
    # drop the self entry where present, otherwise the last column
    drop = np.where(has, is_self.argmax(1), kk - 1)
    keep = np.ones_like(pos, dtype=bool)
    keep[np.arange(Q), drop] = False
    v = vals[keep].reshape(Q, kk - 1)[:, :k]
    p = pos[keep].reshape(Q, kk - 1)[:, :k]
    return v, p


def build_index(
    embeddings: Any, metric: str = "ip", kind: str = "auto", ids: Optional[Sequence] = None, **params: Any
) -> KNNIndex:
    """Shorthand: ``KNNIndex(dim, metric, kind, **params).build(embeddings, ids)``."""
    x = _as_f32(embeddings, "embeddings")
    return KNNIndex(x.shape[1], metric, kind, **params).build(x, ids)


def knn_graph(
    embeddings: Any, k: int, *, metric: str = "ip", kind: str = "auto", **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Every row's k nearest other rows: (values [N, k], positions [N, k])."""
    idx = build_index(embeddings, metric, kind, **params)
    return idx.search(embeddings, k, exclude_self=True)
