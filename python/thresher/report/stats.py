"""The report's numbers: per-criterion summaries (count, NaN with reasons, quantiles), the
Spearman correlation between criteria, and a 2-D PCA projection of the embeddings."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
QUANTILE_NAMES = ("min", "p5", "p25", "median", "p75", "p95", "max")


def summarize(scores: pd.DataFrame, col: str) -> dict:
    """One criterion's column: rows, finite count, NaN count, NaN reasons (most frequent first),
    mean and quantiles (linear interpolation, over the finite values)."""
    v = scores[col].to_numpy(np.float64, na_value=np.nan)
    fin = np.isfinite(v)
    out: dict[str, Any] = {"criterion": col, "rows": int(len(v)), "count": int(fin.sum()), "nan": int((~fin).sum())}
    out["reasons"] = nan_reasons(scores, col, ~fin)
    if fin.any():
        q = np.quantile(v[fin], QUANTILES)
        out["mean"] = float(v[fin].mean())
        out.update({n: float(x) for n, x in zip(QUANTILE_NAMES, q)})
    else:
        out["mean"] = None
        out.update({n: None for n in QUANTILE_NAMES})
    return out


def nan_reasons(scores: pd.DataFrame, col: str, missing: np.ndarray) -> list[tuple[str, int]]:
    """(reason, count) of the rows without a score, most frequent first (ties by reason)."""
    if not missing.any():
        return []
    rc = col + ".reason"
    if rc in scores.columns:
        r = scores[rc].to_numpy(object)[missing]
        r = np.array(["(no reason given)" if (x is None or str(x) == "") else str(x) for x in r], dtype=object)
    else:
        r = np.full(int(missing.sum()), "(no reason given)", dtype=object)
    names, counts = np.unique(r.astype(str), return_counts=True)
    pairs = sorted(zip(names.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0]))
    return [(str(a), int(b)) for a, b in pairs]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    for end in np.append(np.flatnonzero(np.diff(xs) != 0) + 1, len(xs)):
        ranks[order[start:end]] = (start + end + 1) / 2.0
        start = end
    return ranks


def spearman(scores: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Spearman's rho between each pair of columns over the rows where both are finite (NaN when
    fewer than 3 such rows or a column is constant there)."""
    m = len(cols)
    out = np.full((m, m), np.nan)
    vals = [scores[c].to_numpy(np.float64, na_value=np.nan) for c in cols]
    for i in range(m):
        for j in range(i, m):
            ok = np.isfinite(vals[i]) & np.isfinite(vals[j])
            if ok.sum() < 3:
                continue
            a, b = average_ranks(vals[i][ok]), average_ranks(vals[j][ok])
            if a.std() == 0 or b.std() == 0:
                continue
            out[i, j] = out[j, i] = float(np.corrcoef(a, b)[0, 1])
    return pd.DataFrame(out, index=cols, columns=cols)


def pca_2d(emb: Any, max_rows: Optional[int] = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rows' first two principal components (float64, signs fixed so each component's largest
    absolute loading is positive) and the row positions used (a seeded sample of ``max_rows``)."""
    arr = emb if isinstance(emb, np.ndarray) else np.asarray(emb)  # (a memory map stays one: rows read on demand)
    if arr.ndim != 2 or len(arr) == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    idx = np.arange(len(arr))
    if max_rows is not None and len(arr) > max_rows:
        idx = np.sort(np.random.default_rng(seed).choice(len(arr), max_rows, replace=False))
    # the sampled rows only, as float64 (not the whole [rows, dim] array first: 8 bytes a value)
    t = torch.from_numpy(np.array(arr[idx] if len(idx) < len(arr) else arr, dtype=np.float64))
    t = t - t.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(t, full_matrices=False)
    comps = vh[:2]
    if comps.shape[0] < 2:
        comps = torch.cat([comps, torch.zeros(2 - comps.shape[0], t.shape[1], dtype=t.dtype)])
    sign = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    sign[sign == 0] = 1
    return (t @ (comps * sign).T).numpy(), idx
