"""The report's plots, drawn with matplotlib's object API (``matplotlib.figure.Figure``):
no pyplot, no global backend switch, so embedding thresher in a notebook or a GUI
application leaves its matplotlib state alone. Each plot returns a PNG data URI.

``sel`` is the per-row selected mask, or None for a score-only run (every row drawn alike).
"""

from __future__ import annotations

import base64
import io
from typing import Any, Optional

import numpy as np
import torch

from .. import ops
from .stats import pca_2d

SEL_COLOR = "#d62728"
REJ_COLOR = "#9aa5b1"
ALL_COLOR = "#3e7cb1"
MAX_POINTS = 20000


def new_figure(w: float, h: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    return fig, fig.subplots()


def png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _sample(idx: np.ndarray, n: int = MAX_POINTS) -> np.ndarray:
    if idx.size > n:
        idx = np.sort(np.random.default_rng(0).choice(idx, n, replace=False))
    return idx


def _threshold(values: np.ndarray, selected: np.ndarray, direction: str) -> Optional[float]:
    v = values[selected & np.isfinite(values)]
    if v.size == 0:
        return None
    return float(v.min() if direction == "max" else v.max())


def plot_distribution(v: np.ndarray, sel: Optional[np.ndarray], col: str, direction: str, single: bool) -> str:
    fig, ax = new_figure(5.6, 3.2)
    fin = np.isfinite(v)
    if fin.any():
        lo, hi = np.nanpercentile(v[fin], [0.5, 99.5]) if fin.sum() > 20 else (v[fin].min(), v[fin].max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 41)
        if sel is None:
            ax.hist(np.clip(v[fin], lo, hi), bins=bins, color=ALL_COLOR, label="all rows")
        else:
            ax.hist(np.clip(v[fin & ~sel], lo, hi), bins=bins, color=REJ_COLOR, label="rejected")
            ax.hist(np.clip(v[fin & sel], lo, hi), bins=bins, color=SEL_COLOR, alpha=0.85, label="selected")
            t = _threshold(v, sel, direction)
            if t is not None:
                what = "threshold" if single else ("lowest selected" if direction == "max" else "highest selected")
                ax.axvline(t, color="black", ls="--", lw=1.2, label=f"{what} {t:.4g}")
    ax.set_xlabel(f"{col} ({direction})")
    ax.set_ylabel("samples")
    nan = int((~fin).sum())
    ax.set_title(f"{col}: distribution" + (f" ({nan} not scorable)" if nan else ""))
    if fin.any():
        ax.legend(fontsize=8)
    return png(fig)


def _scatter(ax: Any, x: np.ndarray, y: np.ndarray, m: np.ndarray, sel: Optional[np.ndarray]) -> None:
    """Rows in ``m``: grey rejected under red selected, or one colour for a score-only run."""
    if sel is None:
        i = _sample(np.flatnonzero(m))
        ax.scatter(x[i], y[i], s=4, c=ALL_COLOR, alpha=0.5, label="all rows", rasterized=True)
        return
    i = _sample(np.flatnonzero(m & ~sel))
    ax.scatter(x[i], y[i], s=4, c=REJ_COLOR, alpha=0.5, label="rejected", rasterized=True)
    i = _sample(np.flatnonzero(m & sel))
    ax.scatter(x[i], y[i], s=7, c=SEL_COLOR, alpha=0.9, label="selected", rasterized=True)


def plot_vs_length(v: np.ndarray, length: np.ndarray, sel: Optional[np.ndarray], col: str, unit: str) -> str:
    fig, ax = new_figure(5.6, 3.2)
    m = np.isfinite(v)
    _scatter(ax, length, v, m, sel)
    if (length[m] > 0).any():
        ax.set_xscale("log")
    ax.set_xlabel(f"length ({unit})")
    ax.set_ylabel(col)
    ax.set_title(f"{col} vs length")
    ax.legend(fontsize=8, markerscale=3)
    return png(fig)


def _pareto_front(x: np.ndarray, y: np.ndarray, me: np.ndarray, a: tuple, b: tuple) -> Optional[np.ndarray]:
    try:
        obj = torch.from_numpy(np.stack([x[me], y[me]], 1))
        r = ops.pareto_ranks(obj, maximize=[a[1] == "max", b[1] == "max"])
        r = np.asarray(r.cpu().numpy() if hasattr(r, "cpu") else r)
    except (ImportError, AttributeError, RuntimeError, ValueError):
        return None
    front = np.flatnonzero(me)[r == 0]
    return front[np.argsort(x[front], kind="stable")]


def plot_tradeoff(x: np.ndarray, y: np.ndarray, sel: Optional[np.ndarray], elig: Optional[np.ndarray],
                  a: tuple, b: tuple) -> str:  # fmt: skip
    """Two criteria against each other, with the Pareto front of the (eligible) rows."""
    m = np.isfinite(x) & np.isfinite(y)
    fig, ax = new_figure(5.6, 4.0)
    _scatter(ax, x, y, m, sel)
    me = m & elig if elig is not None else m
    front = _pareto_front(x, y, me, a, b) if me.any() else None
    if front is not None and len(front):
        label = "Pareto front of eligible rows" if me.sum() < m.sum() else "Pareto front (rank 0)"
        ax.plot(x[front], y[front], "-o", color="black", ms=3, lw=1, label=label)
    ax.set_xlabel(f"{a[0]} ({a[1]})")
    ax.set_ylabel(f"{b[0]} ({b[1]})")
    ax.set_title(f"trade-off: {a[0]} vs {b[0]}")
    ax.legend(fontsize=8, markerscale=2)
    return png(fig)


def plot_groups(groups: np.ndarray, sel: Optional[np.ndarray], top: int = 25) -> str:
    import pandas as pd

    g = pd.Series(groups).astype(str).str.split("/").str[0]
    s = np.zeros(len(g), bool) if sel is None else sel
    t = pd.DataFrame({"g": g, "selected": s}).groupby("g")["selected"].agg(["sum", "count"])
    t = t.sort_values(["sum", "count"], ascending=False).head(top)[::-1]
    fig, ax = new_figure(6.4, 0.22 * len(t) + 1.2)
    if sel is None:
        ax.barh(t.index, t["count"], color=ALL_COLOR, label="rows")
        ax.set_title(f"rows per task/source (top {len(t)})")
    else:
        ax.barh(t.index, t["count"] - t["sum"], color=REJ_COLOR, label="rejected")
        ax.barh(t.index, t["sum"], left=t["count"] - t["sum"], color=SEL_COLOR, label="selected")
        ax.set_title(f"selected vs rejected per task/source (top {len(t)} by selected)")
    ax.set_xlabel("samples")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8, loc="lower right")
    return png(fig)


def plot_embedding_map(emb: np.ndarray, sel: Optional[np.ndarray]) -> str:
    """The embeddings' first two principal components, kept vs dropped."""
    xy, idx = pca_2d(emb, max_rows=MAX_POINTS)
    fig, ax = new_figure(5.6, 4.6)
    s = None if sel is None else np.asarray(sel, bool)[idx]
    _scatter(ax, xy[:, 0], xy[:, 1], np.ones(len(idx), bool), s)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("embeddings (PCA): " + ("kept vs dropped" if s is not None else "all rows"))
    ax.legend(fontsize=8, markerscale=3)
    return png(fig)


def heatmap(corr: Any, title: str) -> str:
    """A correlation matrix (values in [-1, 1]) as an annotated heat map."""
    m = corr.to_numpy(np.float64)
    n = len(m)
    fig, ax = new_figure(1.1 * n + 2.4, 0.9 * n + 1.6)
    im = ax.imshow(np.nan_to_num(m, nan=0.0), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), labels=list(corr.columns), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=list(corr.index), fontsize=8)
    for i in range(n):
        for j in range(n):
            v = m[i, j]
            color = "white" if np.isfinite(v) and abs(v) > 0.6 else "black"
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    return png(fig)
