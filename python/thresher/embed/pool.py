"""A pool as the criteria that score from embeddings alone see it (``Criterion.SCORES_FROM_EMBEDDINGS``:
``knn_distance``, ``local_density``, ``semdedup``): per row its id, embeddings-cache key and whether its
text is empty; the vectors stay in the embeddings cache.

Pieces of the pool are added in pool order (:meth:`PoolVectors.add`: their rows go into the cache, only
the rows it lacks encoded); the criterion then scores the vectors read back by key
(``score_embeddings``), the same vectors its own call over the pool table reads through the cache, so
the same scores, without the pool's texts: N x d vectors and 24 bytes of key a row. The local engine
adds each shard as it is read (``thresher.pipeline.pool_vectors``); under Ray the whole-pool task adds
the pieces of the split tables the workers read, instead of assembling the pool's table.

With a ``spill`` folder (the local engine's), :meth:`~PoolVectors.add` encodes nothing: the rows the
cache lacks are written to a file there (id and text) and encoded by :meth:`~PoolVectors.fill` only when
a criterion is actually scored from the vectors. A rerun whose scores are cached but whose embeddings
cache was pruned then loads no embedder (the pool's key, which says whether the scores are cached, is
known only once every shard was read).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from ..progress import task
from . import embeddings_of_keys, fill_embeddings, missing_rows, sample_texts
from .store import sample_key

KEY_BYTES = 24  # sample_key: 12 bytes as hex


class PoolVectors:
    """``specs``: column -> (embedder, device, cache folder, batch size) of each criterion scored from it."""

    def __init__(self, specs: dict, spill: Optional[Path] = None) -> None:
        self.specs = specs
        self.ids: list = []
        self.keys: list = []
        self.empty: list = []
        self.spill = spill
        self.spilled: dict = {}  # spec -> [file of the rows the cache lacked, their count]

    def add(self, table: pd.DataFrame, ids: Sequence[str]) -> None:
        """Rows of the pool (the next ones in pool order) with their ids: into the cache for every
        embedder (with ``spill``: the rows it lacks into the spill file, for :meth:`fill`), their keys kept."""
        texts = sample_texts(table)
        for spec in dict.fromkeys(self.specs.values()):
            embedder, device, folder, batch = spec
            if self.spill is None:
                fill_embeddings(texts, embedder, cache_dir=folder, ids=ids, device=device, batch_size=batch)
            else:
                self._spill(spec, texts, ids)
        self.ids.append(np.asarray(ids, dtype=object))
        self.keys.append(np.asarray([sample_key(i, t) for i, t in zip(ids, texts)], dtype=f"S{KEY_BYTES}"))
        self.empty.append(np.fromiter((not t.strip() for t in texts), bool, len(texts)))

    def _spill(self, spec: tuple, texts: list, ids: Sequence[str]) -> None:
        miss = np.flatnonzero(missing_rows(texts, spec[0], cache_dir=spec[2], ids=ids))
        if not len(miss):
            return
        if spec not in self.spilled:
            assert self.spill is not None
            self.spill.mkdir(parents=True, exist_ok=True)
            self.spilled[spec] = [self.spill / f"rows-{len(self.spilled)}.jsonl", 0]
        entry = self.spilled[spec]
        with open(entry[0], "a", encoding="utf-8") as f:
            f.writelines(json.dumps([str(ids[i]), texts[i]]) + "\n" for i in miss)
        entry[1] += len(miss)

    def fill(self, col: str, chunk: int = 4096) -> int:
        """Encode into the cache the rows it lacked when they were added, for the embedder ``col`` scores
        from (before :meth:`score`); returns how many rows were read back from the spill file."""
        spec = self.specs[col]
        entry = self.spilled.pop(spec, None)
        if entry is None:
            return 0
        embedder, device, folder, batch = spec
        with task(f"embedding {entry[1]} rows for {col}", total=entry[1]) as bar, bar.share(entry[1]):
            for ids, texts in _read_spill(entry[0], chunk):
                fill_embeddings(texts, embedder, cache_dir=folder, ids=ids, device=device, batch_size=batch)
        entry[0].unlink()
        return int(entry[1])

    def pool_ids(self) -> list:
        return np.concatenate(self.ids).tolist() if self.ids else []

    def score(self, scorer: Any, col: str) -> pd.DataFrame:
        """``scorer``'s scores of the pool from its vectors (``score_embeddings``)."""
        embedder, _, folder, _ = self.specs[col]
        # the keys stay fixed-width bytes (24 a row) through the scoring; as str only for the cache lookup
        # (1,000,000 of them as str objects, with a list of the bytes, were 150 MB held through the search)
        keys = np.concatenate(self.keys) if self.keys else np.zeros(0, f"S{KEY_BYTES}")
        vecs = embeddings_of_keys([k.decode("ascii") for k in keys.tolist()], embedder, cache_dir=folder)
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, object)
        empty = np.concatenate(self.empty) if self.empty else np.zeros(0, bool)
        return scorer.score_embeddings(ids, vecs, keys, empty)


def _read_spill(path: Path, chunk: int) -> Iterator[tuple[list, list]]:
    """(ids, texts) of a spill file, ``chunk`` rows at a time."""
    ids: list = []
    texts: list = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            i, t = json.loads(line)
            ids.append(i)
            texts.append(t)
            if len(ids) == chunk:
                yield ids, texts
                ids, texts = [], []
    if ids:
        yield ids, texts


def vector_spec(cls: Any, options: dict) -> Any:
    """(embedder, device, cache folder, batch size) when the criterion class ``cls`` with these runtime
    options scores a pool from vectors read through the embeddings cache; else None."""
    reads = getattr(cls, "pool_embedder", None)
    if reads is None or not getattr(cls, "SCORES_FROM_EMBEDDINGS", False):
        return None
    got = reads(options)
    if got is None:
        return None
    return got[0], got[1], str(options["cache_dir"]), encoder_batch(options)


def encoder_batch(options: dict) -> int:
    """Texts per encoder call of an embedding criterion: 1 with ``batching="row"``, else ``batch_size``."""
    return 1 if options.get("batching") == "row" else int(options.get("batch_size") or 64)
