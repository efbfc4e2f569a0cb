"""A faithful re-implementation of DEITA's repr filter loop (hkust-nlp/deita,
``src/deita/selection/filter/base.py``, ``IterativeFilter.filter``), written from
its description for use as a baseline and test oracle. Not DEITA's code.

What it reproduces, step by step, with ``batch_size=1`` (the sequential
semantics that define the method):

* rows sorted by score, descending (ties: lower position first, made explicit
  here; DEITA uses pandas' default sort);
* the embeddings held on the host as one float64 array (DEITA builds it with
  ``np.array(df[...].values.tolist())``);
* the first row is kept; for every later row, the currently kept rows are
  gathered on the host (``embeddings[filtered_indices]``), converted to float32
  tensors chunk by chunk (``chunk_size`` rows), both sides L2-normalised, a
  similarity matrix computed with ``torch.mm``; the row is kept when no
  similarity exceeds ``threshold``;
* the loop stops once ``data_size`` rows are kept.

Cost: O(walked x kept x d) plus a host gather of the whole kept set per
candidate, which is what makes it slow.
"""

from __future__ import annotations

import numpy as np
import torch


def _normalize(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=1)[:, None]


def deita_repr_filter(
    embeddings: np.ndarray,
    scores: np.ndarray,
    data_size: int,
    threshold: float = 0.9,
    chunk_size: int = 100_000,
    device: str = "cpu",
) -> np.ndarray:
    """Kept row positions (into ``embeddings``), in selection order."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.arange(len(scores))
    order = np.lexsort((pos, -scores))
    emb = np.asarray(embeddings, dtype=np.float64)[order]  # host float64, sorted
    if len(emb) == 0 or data_size == 0:
        return np.zeros(0, np.int64)
    filtered = [0]
    for i in range(1, emb.shape[0]):
        if data_size > -1 and len(filtered) >= data_size:
            break
        cur = torch.tensor(emb[i : i + 1], dtype=torch.float32).to(device)
        existing = emb[filtered]  # host gather of the kept set, every step
        dist = torch.zeros((1, existing.shape[0]), dtype=torch.float32, device=device)
        for c in range(0, existing.shape[0], chunk_size):
            ch = torch.tensor(existing[c : c + chunk_size], dtype=torch.float32).to(device)
            dist[:, c : c + ch.shape[0]] = torch.mm(_normalize(cur), _normalize(ch).t())
        if not bool(torch.any(dist > threshold)):
            filtered.append(i)
    kept = np.asarray(filtered[:data_size] if data_size > -1 else filtered, dtype=np.int64)
    return order[kept]
