"""Embedding-space criteria: knn_distance (InstructionMining kNN-6), local_density, semdedup.

All three compare a sample with the rest of the **pool**, so they are
registered with ``scope="pool"``: call the scorer on the whole pool in one
batch, or ``fit(pool_table)`` first and then score batches against the fitted
pool (the sample itself, matched by id and text, is excluded). Called on a
batch without ``fit``, the batch is the pool.

Text = instruction + input + output (see :func:`thresher.embed.sample_texts`);
embeddings come from :func:`thresher.embed.embed_texts` (``embedder="default"``:
all-MiniLM-L6-v2), L2-normalised, cached by sample when ``cache_dir`` is set.

Neighbour search (knn_distance, local_density) is EXACT at every pool size unless an
approximate ``index_kind`` is named: ``auto`` / ``exact`` run
:func:`thresher.ops.knn_shard.sharded_knn`, (query block x pool shard) tasks handed
to the scorer's ``mapper`` (builtin ``map`` here; an engine may set one that runs
them on its workers; ``shard_rows`` / ``query_rows`` size the tasks), on the
encoder's device. The scores do not depend on the mapper or the task sizes.
``flat`` is FAISS's exact index; ``ivf_flat`` / ``ivf_pq`` / ``hnsw`` are FAISS
approximate indexes, whose recall@(k+1) is measured on a seeded sample of up to
:data:`RECALL_SAMPLE` queries and reported by ``run_info()``. A row that gets
fewer than k neighbours is NaN with a reason naming the cause. semdedup's
per-cluster scans are tasks for the same ``mapper``.

A stopped call resumes: with ``checkpoint_dir`` set (a pipeline run sets it inside its score
cache), the exact search's finished query blocks (semdedup: its scanned clusters, once k-means is
done) are saved about every ``checkpoint_s`` seconds and when it raises, and the next call on the
same vectors (and clusters) computes only the rest (:mod:`thresher.criteria.search_checkpoint`),
with the results of an unbroken call.

``scorer.run_info()`` (after scoring) describes the last call: the index kind used,
exact or approximate, the measured recall, the task layout (JSON-serialisable).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import pandas as pd
import torch

from ..cluster import kmeans, repr_filter_order
from ..device import resolve_device
from ..embed import embed_texts, get_embedder, sample_key, sample_texts
from ..embed.pool import encoder_batch
from ..frames import as_pandas
from ..index import KINDS, KNNIndex
from ..ops import rows as row_blocks
from ..ops.knn_shard import DEFAULT_QUERY_ROWS, DEFAULT_SHARD_ROWS, sharded_knn
from ..registry import CRITERIA, Option
from .base import Criterion, digest, embedder_fingerprint, row_batching, sample_ids
from .search_checkpoint import DEFAULT_EVERY_S, SEARCH_DIR, SearchCheckpoint, kept_or_computed, search_identity

_EMB_OPTS = [
    # type left open: besides a name, an encoder object (duck-typed: .encode, .dim, .fingerprint) is accepted
    Option("embedder", "default", "sentence-transformers name/path, 'default' (all-MiniLM-L6-v2) or lm:<spec>"),
    Option("batch_size", 64, "texts per encoder batch", min=1),
    row_batching("batch_size texts per encoder call, length-sorted"),
    Option("cache_dir", None, "embedding cache folder (float16 shards keyed by sample id + text)", type=(str, Path)),
    Option("device", "auto", "encoder device: auto (cuda when visible), cpu, cuda, cuda:N", type=str),
]
_INDEX_KIND = Option(
    "index_kind",
    "auto",
    "kNN search: auto or exact (exact at every size, sharded), flat (FAISS exact), ivf_flat / ivf_pq / hnsw "
    "(FAISS approximate: only when named; recall measured on a sample, see run_info)",
    choices=KINDS,
)
_CHECKPOINT_OPTS = [
    Option(
        "checkpoint_dir",
        None,
        "folder where a call keeps its finished blocks (the exact search's query blocks; semdedup's clusters), so "
        "a stopped call resumes from them (a pipeline run: <cache>/<criterion>/" + SEARCH_DIR + "; None: not kept)",
        type=(str, Path),
    ),  # fmt: skip
    Option(
        "checkpoint_s",
        None,
        "seconds between saves of the call's finished blocks "
        f"(None: the run's --checkpoint-every, else {DEFAULT_EVERY_S:g}; 0: never saved)",
        type=(int, float),
        min=0,
    ),  # fmt: skip
]
RECALL_SAMPLE = 1000  # queries of the recall measurement of an approximate search
RECALL_SEED = 0


def _str_ids(ids: Any) -> np.ndarray:
    """The ids as an object array of ``str`` (the strings themselves when they are ``str`` already: a
    fixed-width ``astype(str)`` copy holds 4 bytes per character of the longest id for every row)."""
    arr = np.asarray(ids, dtype=object).reshape(-1)
    if all(type(x) is str for x in arr):
        return arr
    return np.array([str(x) for x in arr], dtype=object)


class _PoolCriterion(Criterion):
    """Embeds batches (through the embeddings cache when ``cache_dir`` is set) and scores them
    against the fitted pool, or against the batch itself."""

    SCORES_FROM_EMBEDDINGS = True  # __call__ is _embed then score_embeddings

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._encoder: Any = None  # loaded on first use: cached embeddings need no model
        self._pool: Optional[tuple[np.ndarray, np.ndarray]] = None  # (keys, embeddings)
        # how the exact search is split and run: results do not depend on them (not in the cache key)
        self.mapper: Callable[[Callable, Iterable], Iterable] = map
        self.shard_rows = DEFAULT_SHARD_ROWS
        self.query_rows = DEFAULT_QUERY_ROWS
        self._info: dict = {}

    @property
    def encoder(self) -> Any:
        """The embedder (loaded on first use)."""
        if self._encoder is None:
            self._encoder = get_embedder(self.options["embedder"], device=self.options["device"])
        return self._encoder

    def run_info(self) -> dict:
        """How the last call searched (JSON-serialisable): ``{"criterion", "scored": False}`` before any."""
        return {"criterion": self.NAME, "scored": bool(self._info), **self._info}

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out["embedder"] = embedder_fingerprint(options["embedder"])
        return out

    def cache_key(self) -> str:
        """:meth:`cache_key_for` of the options; a fitted scorer appends its pool's digest."""
        key = super().cache_key()
        if self._pool is not None:
            key += "-pool" + digest([str(k) for k in self._pool[0]], 16)
        return key

    # -------------------------------------------------------------- embedding
    def _embed(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
        texts = sample_texts(df)
        ids = sample_ids(df)
        o = self.options
        if o["cache_dir"] is not None and self._encoder is None and isinstance(o["embedder"], str):
            # through the cache by name: the model is loaded only for rows the cache lacks
            emb = embed_texts(texts, o["embedder"], batch_size=encoder_batch(o), cache_dir=o["cache_dir"],
                              ids=ids, device=o["device"])  # fmt: skip
        else:
            emb = embed_texts(texts, self.encoder, batch_size=encoder_batch(o), cache_dir=o["cache_dir"], ids=ids)
        keys = np.asarray([sample_key(i, t) for i, t in zip(ids, texts)], dtype=object)
        return emb, keys, texts

    def fit(self, pool: Any) -> "_PoolCriterion":
        """Use ``pool`` (a sample table) as the reference set for later batches."""
        df = as_pandas(pool)
        emb, keys, _ = self._embed(df)
        self._pool = (keys, emb)
        return self

    def fit_embeddings(self, embeddings: np.ndarray, keys: Optional[np.ndarray] = None) -> "_PoolCriterion":
        e = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._pool = (np.asarray(keys if keys is not None else [None] * len(e), dtype=object), e)
        return self

    def __call__(self, batch: Any) -> pd.DataFrame:
        df = as_pandas(batch)
        emb, keys, texts = self._embed(df)
        empty = np.array([not t.strip() for t in texts], dtype=bool)
        return self.score_embeddings(np.asarray(sample_ids(df)), emb, keys, empty)

    def score_embeddings(
        self, ids: np.ndarray, emb: np.ndarray, keys: Optional[np.ndarray] = None, empty: Optional[np.ndarray] = None
    ) -> pd.DataFrame:
        """Score rows given their embeddings ([n, d], L2-normalised). ``keys``: the rows' embeddings-cache keys
        (str, or ASCII bytes: a fixed-width ``S`` array), read only against a pool given to :meth:`fit`."""
        n = len(ids)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise ValueError(f"embeddings: {emb.shape[0] if emb.ndim else 0} rows for {n} ids")
        reasons = np.array([""] * n, dtype=object)
        if empty is not None:
            reasons[empty] = "empty text"
        cols = self._score(emb, keys, reasons)
        out = {"id": _str_ids(ids)}
        for c, v in cols.items():
            out[self.NAME if c == "" else f"{self.NAME}.{c}"] = v
        main = out[self.NAME]
        bad = reasons != ""
        main[bad] = np.nan
        out[f"{self.NAME}.reason"] = reasons
        return pd.DataFrame(out)

    def _reference(self, emb: np.ndarray, keys: Optional[np.ndarray]):
        """(base embeddings, self position of each query in base or -1)."""
        if self._pool is None:
            return emb, np.arange(len(emb))
        pkeys, pemb = self._pool
        if keys is not None and np.asarray(keys).dtype.kind == "S":  # (PoolVectors keeps them as bytes)
            keys = np.char.decode(np.asarray(keys), "ascii").astype(object)
        pos = {k: i for i, k in enumerate(pkeys) if k is not None}
        selfpos = np.array([pos.get(k, -1) for k in (keys if keys is not None else [None] * len(emb))])
        return pemb, selfpos

    def _neighbors(
        self, emb: np.ndarray, keys: Optional[np.ndarray], k: int, metric: str, reasons: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values [n, k], positions [n, k], ok mask) of each row's k nearest pool rows, self excluded."""
        base, selfpos = self._reference(emb, keys)
        n = len(emb)
        nb = base.shape[0]
        vals = np.full((n, k), np.nan, np.float32)
        pos = np.full((n, k), -1, np.int64)
        ok = np.ones(n, bool)
        avail = nb - (selfpos >= 0).astype(int)
        short = avail < k
        if short.any():
            reasons[short] = f"pool has fewer than {k} other samples"
            ok &= ~short
        kk = min(k + 1, nb)
        self._info = dict(index_kind=self.options["index_kind"], k=int(k), searched_k=int(kk), pool_rows=int(nb))
        self._info.update(queries=int(ok.sum()), rows_without_k_neighbours=int(short.sum()))
        if not ok.any():
            self._info.update(index_kind_used=None, exact=True)
            return vals, pos, ok
        # search k+1 and drop self (by position) so queries in and out of the pool share one path
        every = bool(ok.all())
        v, p = self._search(emb if every else emb[ok], base, kk, metric)  # no copy of the pool's vectors
        _drop_self(v, p, selfpos if every else selfpos[ok], k, vals, pos, None if every else np.flatnonzero(ok))
        del v, p
        found = (pos >= 0).sum(1)
        missing = ok & (found < k)  # only an approximate index misses neighbours
        for i in np.flatnonzero(missing):
            reasons[i] = f"approximate index {self._info['index_kind_used']} found {found[i]} of {k} neighbours"
        self._info["rows_without_k_neighbours"] += int(missing.sum())
        return vals, pos, ok

    def _search(self, q: np.ndarray, base: np.ndarray, kk: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, positions) of the kk nearest base rows: the sharded exact search for auto / exact,
        else a :class:`thresher.index.KNNIndex` of the named kind (approximate: recall measured)."""
        kind = self.options["index_kind"]
        if kind in ("auto", "exact"):
            # here: the encoder's device; tasks run elsewhere: the mapper's device when it says (so a search
            # on CPUs has one checkpoint identity on every engine), else each task picks its own ("auto")
            dev = (
                resolve_device(self.options["device"]) if self.mapper is map else getattr(self.mapper, "device", "auto")
            )
            v, p = self._exact(q, base, kk, metric, dev)
            n_tasks = -(-len(q) // self.query_rows) * max(1, -(-len(base) // self.shard_rows))
            self._info.update(index_kind_used="exact", exact=True, search="sharded exact kNN (thresher.ops.knn)")
            self._info.update(shard_rows=int(self.shard_rows), query_rows=int(self.query_rows), tasks=int(n_tasks))
            self._info.update(device=dev, mapper=getattr(self.mapper, "__name__", type(self.mapper).__name__))
            return v, p
        idx = KNNIndex(q.shape[1], metric, kind).build(base)
        v, p = idx.search(q, kk)
        self._info.update(index_kind_used=idx.kind, exact=idx.exact, on_gpu=bool(idx.on_gpu))
        if not idx.exact:
            idx.measure_recall(q, kk, sample=RECALL_SAMPLE, seed=RECALL_SEED)
            rec = idx.last_recall
            self._info.update(recall=rec["recall"], recall_k=rec["k"], recall_sample=rec["sample"])
            self._info.update(recall_seed=rec["seed"], index_params=_json_params(idx.params))
        return v, p

    def _store(self, *arrays: np.ndarray, **params: Any) -> Optional[SearchCheckpoint]:
        """A checkpoint store of a call on ``arrays`` with ``params`` (its identity), when
        ``checkpoint_dir`` is set and ``checkpoint_s`` is not 0."""
        folder, every = self.options.get("checkpoint_dir"), self.options.get("checkpoint_s")
        every = DEFAULT_EVERY_S if every is None else float(every)
        if folder is None or every <= 0:
            return None
        return SearchCheckpoint(folder, search_identity(*arrays, **params), every)

    def _checkpoint(
        self, q: np.ndarray, base: np.ndarray, kk: int, metric: str, dev: Any
    ) -> Optional[SearchCheckpoint]:
        """The search's checkpoint store (see :meth:`_store`)."""
        return self._store(q, base, k=kk, metric=metric, shard_rows=self.shard_rows, query_rows=self.query_rows,
                           device=str(dev))  # fmt: skip

    def _exact(self, q: np.ndarray, base: np.ndarray, kk: int, metric: str, dev: Any) -> tuple:
        """The sharded exact search, resumed from and saved to its checkpoint (when there is one)."""
        store = self._checkpoint(q, base, kk, metric, dev)
        try:
            v, p = sharded_knn(q, base, kk, metric, self.shard_rows, self.query_rows, mapper=self.mapper, device=dev,
                               blocks=store)  # fmt: skip
        except BaseException:
            if store is not None:
                store.keep()  # the blocks finished so far are kept for the next try
            raise
        if store is not None:
            self._info.update(checkpoint_saves=store.saved, resumed_queries=int(store.restored))
            store.clear()
        return v, p

    def _score(self, emb, keys, reasons) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


def _drop_self(
    v: np.ndarray, p: np.ndarray, selfpos: np.ndarray, k: int, vals: np.ndarray, pos: np.ndarray, rows: Any
) -> None:
    """The ``k`` nearest of each searched row's ``kk`` (``v``, ``p``) without the row itself (at base position
    ``selfpos``; the farthest dropped when it is not among them) into ``vals``/``pos`` at ``rows`` (None: all),
    a block of rows at a time (no temporary as large as the results). ``kk == k``: a pool of exactly k rows,
    where only queries from outside it have k neighbours."""
    kk, B = p.shape[1], row_blocks.ROW_BLOCK
    for s in range(0, len(p), B):
        vb, pb = v[s : s + B], p[s : s + B]
        if kk > k:
            is_self = pb == selfpos[s : s + B, None]
            drop = np.where(is_self.any(1), is_self.argmax(1), kk - 1)
            keep = np.ones_like(pb, bool)
            keep[np.arange(len(pb)), drop] = False
            vb, pb = vb[keep].reshape(len(pb), kk - 1), pb[keep].reshape(len(pb), kk - 1)
        dst = slice(s, s + len(pb)) if rows is None else rows[s : s + len(pb)]
        vals[dst] = vb[:, :k]
        pos[dst] = pb[:, :k]


def _per_row(vals: np.ndarray, fn: Callable[[np.ndarray], dict]) -> dict:
    """``fn`` of the float64 rows of ``vals`` (a dict of per-row columns), a block of rows at a time."""
    out: dict = {}
    B = row_blocks.ROW_BLOCK
    for s in range(0, len(vals), B):
        for c, col in fn(vals[s : s + B].astype(np.float64)).items():
            out.setdefault(c, np.empty(len(vals), np.float64))[s : s + B] = col
    return out or {c: np.zeros(0) for c in fn(np.zeros((0, vals.shape[1])))}


def _json_params(params: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in params.items()}


@CRITERIA.register(
    "knn_distance",
    doc="InstructionMining kNN-k: mean distance from a sample's embedding to its k nearest other samples "
    "of the pool (default k=6, Euclidean on L2-normalised all-MiniLM-L6-v2 embeddings of "
    "instruction + input + output). Higher = more isolated / diverse.",
    options=_EMB_OPTS
    + [
        Option("k", 6, "number of neighbours", min=1),
        Option("metric", "l2", "l2 (Euclidean distance) or cosine (1 - cosine similarity)", ("l2", "cosine")),
        _INDEX_KIND,
    ]
    + _CHECKPOINT_OPTS,
    direction="max",
    needs=("embedder",),
    scope="pool",
    components=("nearest",),
)
class KNNDistance(_PoolCriterion):
    def _score(self, emb, keys, reasons):
        k = self.options["k"]
        l2 = self.options["metric"] == "l2"
        vals, _, ok = self._neighbors(emb, keys, k, "l2" if l2 else "ip", reasons)

        def cols(v: np.ndarray) -> dict:
            dist = np.sqrt(np.maximum(v, 0.0)) if l2 else 1.0 - v
            return {"": dist.mean(1), "nearest": dist[:, 0] if k else np.full(len(v), np.nan)}

        return _per_row(vals, cols)


@CRITERIA.register(
    "local_density",
    doc="Local density: mean cosine similarity of a sample to its k nearest other samples of the pool "
    "(default k=10). Higher = a crowded region (redundant); lower = rare.",
    options=_EMB_OPTS + [Option("k", 10, "number of neighbours", min=1), _INDEX_KIND] + _CHECKPOINT_OPTS,
    direction="min",
    needs=("embedder",),
    scope="pool",
    components=("radius",),
)
class LocalDensity(_PoolCriterion):
    def _score(self, emb, keys, reasons):
        vals, _, ok = self._neighbors(emb, keys, self.options["k"], "ip", reasons)
        return _per_row(vals, lambda v: {"": v.mean(1), "radius": 1.0 - v[:, -1]})


# ---------------------------------------------------------------- semdedup
def max_sim_to_earlier(
    x: torch.Tensor, block: int = 2048, kept_only: bool = False, threshold: float = 1.0
) -> torch.Tensor:
    """For rows in order, max cosine similarity to an earlier row (-1 for the first).

    ``kept_only``: only earlier rows that were themselves kept (max sim <= threshold)
    count, i.e. a greedy pass (computed exactly via the repr filter). Memory
    O(block * n), never n x n.
    """
    n = x.shape[0]
    out = torch.full((n,), -1.0, dtype=torch.float32)
    if n <= 1:
        return out
    if not kept_only:
        for a in range(0, n, block):
            b = min(n, a + block)
            s = x[a:b] @ x[:b].T  # [b-a, b]
            r = torch.arange(a, b)[:, None]
            c = torch.arange(b)[None, :]
            s = torch.where(c < r, s, torch.full_like(s, -2.0))
            m = s.max(1).values
            out[a:b] = torch.where(m < -1.5, torch.full_like(m, -1.0), m).cpu()
        return out
    kept = repr_filter_order(x.cpu().numpy(), np.arange(n), n, threshold)
    kmask = torch.zeros(n, dtype=torch.bool)
    kmask[torch.from_numpy(kept)] = True
    kx = x[torch.from_numpy(kept)]
    kpos = torch.from_numpy(kept)
    for a in range(0, n, block):
        b = min(n, a + block)
        s = x[a:b] @ kx.T
        r = torch.arange(a, b)[:, None]
        s = torch.where(kpos[None, :] < r, s, torch.full_like(s, -2.0))
        m = s.max(1).values if s.shape[1] else torch.full((b - a,), -2.0)
        out[a:b] = torch.where(m < -1.5, torch.full_like(m, -1.0), m)
    return out


@CRITERIA.register(
    "semdedup",
    doc="SemDeDup: spherical k-means on the embeddings, then within each cluster (ordered by distance to "
    "the centroid, farthest first as SemDeDup's keep-hard) the max cosine similarity to an earlier "
    "kept sample (against=earlier: any earlier sample, as the reference code); semdedup.keep = 1 when it "
    "is <= 1 - eps. Main column: that similarity (lower = less "
    "duplicated). No N x N matrix: clusters are scanned in row blocks.",
    options=_EMB_OPTS
    + [
        Option("eps", 0.05, "duplicates have cosine similarity > 1 - eps", min=0, max=2),
        Option("n_clusters", None, "k-means clusters (default round(sqrt(N)))", type=int, min=1),
        Option(
            "order",
            "hard",
            "order within a cluster: hard (farthest from centroid first), easy (closest first), index (input order)",
            ("hard", "easy", "index"),
        ),
        Option(
            "against",
            "kept",
            "kept: only earlier samples that were kept (greedy; the method's definition, default); earlier: any "
            "earlier sample (SemDeDup's reference code)",
            ("earlier", "kept"),
        ),
        Option("seed", 0, "k-means seed"),
    ]
    + _CHECKPOINT_OPTS,
    direction="min",
    needs=("embedder",),
    scope="pool",
    components=("keep", "cluster"),
)
class SemDeDup(_PoolCriterion):
    def fit(self, pool: Any):
        raise ValueError("semdedup: score the whole pool in one call (clusters are computed over it)")

    def _score(self, emb, keys, reasons):
        opts = {k: self.options[k] for k in ("eps", "n_clusters", "order", "against", "seed")}
        c = n_clusters_for(len(emb), opts["n_clusters"])
        self._info = dict(index_kind_used=None, exact=True, search="per-cluster exact scans (no index)")
        self._info.update(pool_rows=int(len(emb)), n_clusters=int(c), **{k: opts[k] for k in ("order", "against")})
        self._info.update(seed=opts["seed"], mapper=getattr(self.mapper, "__name__", type(self.mapper).__name__))
        stores: list = []

        def store_for(labels: np.ndarray) -> Optional[SearchCheckpoint]:
            stores.append(self._store(emb, labels, call="semdedup", **opts))
            return stores[-1]

        km = self._store(emb, call="semdedup-kmeans", n_clusters=int(c), seed=opts["seed"])
        out = semdedup_scores(emb, **opts, mapper=self.mapper, store_for=store_for, kmeans_store=km)
        if stores and stores[0] is not None:
            self._info.update(checkpoint_saves=stores[0].saved, resumed_rows=int(stores[0].restored))
            self._info["scored_rows"] = int(len(emb))
            self._info["resumed_kmeans"] = bool(km is not None and km.restored)
            stores[0].clear()
        if km is not None:
            km.clear()
        return out


def n_clusters_for(n: int, n_clusters: Optional[int]) -> int:
    """k-means clusters of semdedup over ``n`` rows: ``n_clusters`` or round(sqrt(n)), at most n."""
    return min(int(n_clusters or max(1, round(math.sqrt(n)))), n) if n else 0


def semdedup_cluster_task(task: tuple) -> np.ndarray:
    """One cluster: ``(member embeddings in scan order [m, d] float32, kept_only, threshold)`` ->
    max similarity of each member to an earlier (kept) member. Module level: picklable."""
    x, kept_only, threshold = task
    return max_sim_to_earlier(torch.from_numpy(x), kept_only=kept_only, threshold=threshold).numpy()


def semdedup_scores(
    emb: np.ndarray,
    eps: float = 0.05,
    n_clusters: Optional[int] = None,
    order: str = "hard",
    against: str = "kept",
    seed: int = 0,
    mapper: Callable[[Callable, Iterable], Iterable] = map,
    store_for: Optional[Callable[[np.ndarray], Any]] = None,
    kmeans_store: Optional[Any] = None,
) -> dict:
    """{"": max sim to an earlier sample of the cluster, "keep": 0/1, "cluster": id} per row.
    The clusters are scanned as independent tasks run by ``mapper`` (builtin ``map``: here).
    ``store_for(labels)``: a checkpoint store of the scans (blocks: cluster number -> similarities,
    :class:`~thresher.criteria.search_checkpoint.SearchCheckpoint`) or None, asked once k-means is done;
    ``kmeans_store``: one for the k-means result (centroids, labels), saved once it is done."""
    n = emb.shape[0]
    sim = np.full(n, -1.0)
    lab = np.zeros(n, np.int64)
    if n == 0:
        return {"": sim, "keep": np.zeros(0), "cluster": lab}
    c = n_clusters_for(n, n_clusters)
    (cent, lab), _ = kept_or_computed(kmeans_store, lambda: kmeans(emb, c, seed=seed, spherical=True))
    lab = np.asarray(lab, dtype=np.int64)
    x = np.ascontiguousarray(emb, dtype=np.float32)
    xt = torch.from_numpy(x)
    centt = torch.from_numpy(cent)
    centt = centt / centt.norm(dim=1, keepdim=True).clamp_min(1e-12)
    groups = []
    for g in np.unique(lab):
        members = np.flatnonzero(lab == g)
        if order != "index":
            dc = 1.0 - (xt[members] @ centt[g]).numpy()
            o = np.lexsort((members, -dc if order == "hard" else dc))
            members = members[o]
        groups.append(members)
    store = None if store_for is None else store_for(lab)
    _scan_clusters(x, groups, (against == "kept", 1.0 - eps), sim, mapper, store)
    keep = (sim <= 1.0 - eps).astype(np.float64)
    return {"": sim, "keep": keep, "cluster": lab}


def _scan_clusters(x: np.ndarray, groups: list, scan: tuple, sim: np.ndarray, mapper: Any, store: Any) -> None:
    """Each cluster's scan (``semdedup_cluster_task`` with ``scan`` = (kept_only, threshold)) into
    ``sim``; with a ``store``, the clusters it has are reused and each scanned one is recorded (flushed
    when a scan raises)."""
    todo = []
    for g, members in enumerate(groups):
        got = None if store is None else store.get(g)
        if got is not None and len(got) == 1 and len(got[0]) == len(members):
            sim[members] = got[0]
        else:
            todo.append(g)
    tasks = ((x[groups[g]], *scan) for g in todo)
    try:
        for g, s in zip(todo, mapper(semdedup_cluster_task, tasks)):
            sim[groups[g]] = s
            if store is not None:
                store.put(g, np.asarray(s, dtype=np.float64))
    except BaseException:
        if store is not None:
            store.keep()  # the clusters scanned so far are kept for the next call
        raise
