"""report.html: a self-contained, offline page about one selection run.

Reads ``scores.parquet`` and ``manifest.json`` from the run folder and embeds
PNG plots (matplotlib, Agg backend) as data URIs: each criterion's distribution
with the selection threshold, score vs length, the Pareto front or trade-off
between the first two criteria, selected vs rejected per task/source, and the
top and bottom examples with their scores. No scripts, no external resources.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .. import ops
from ..errors import MissingExtraError
from ..fs import atomic_write_bytes

SEL_COLOR = "#d62728"
REJ_COLOR = "#9aa5b1"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _criteria_columns(scores, manifest) -> list[tuple[str, str]]:
    out = []
    for c in manifest.get("criteria") or []:
        col = c.get("as") or c["name"]
        if col in scores.columns:
            out.append((col, c.get("direction") or "max"))
    return out


def _threshold(values: np.ndarray, selected: np.ndarray, direction: str) -> Optional[float]:
    v = values[selected & np.isfinite(values)]
    if v.size == 0:
        return None
    return float(v.min() if direction == "max" else v.max())


def plot_distribution(scores, col: str, direction: str, single: bool = True) -> str:
    import matplotlib.pyplot as plt

    v = scores[col].to_numpy(np.float64, na_value=np.nan)
    sel = scores["selected"].to_numpy(bool)
    fin = np.isfinite(v)
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    if fin.any():
        lo, hi = np.nanpercentile(v[fin], [0.5, 99.5]) if fin.sum() > 20 else (v[fin].min(), v[fin].max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 41)
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
    ax.legend(fontsize=8)
    return _png(fig)


def plot_vs_length(scores, col: str) -> str:
    import matplotlib.pyplot as plt

    v = scores[col].to_numpy(np.float64, na_value=np.nan)
    L = scores["tokens"].to_numpy(np.float64)
    sel = scores["selected"].to_numpy(bool)
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    m = np.isfinite(v)
    idx = np.flatnonzero(m & ~sel)
    if idx.size > 20000:
        idx = np.random.default_rng(0).choice(idx, 20000, replace=False)
    ax.scatter(L[idx], v[idx], s=4, c=REJ_COLOR, alpha=0.5, label="rejected", rasterized=True)
    ax.scatter(L[m & sel], v[m & sel], s=6, c=SEL_COLOR, alpha=0.9, label="selected", rasterized=True)
    if (L[m] > 0).any():
        ax.set_xscale("log")
    ax.set_xlabel("length (approx. tokens)")
    ax.set_ylabel(col)
    ax.set_title(f"{col} vs length")
    ax.legend(fontsize=8, markerscale=3)
    return _png(fig)


def plot_tradeoff(scores, a: tuple[str, str], b: tuple[str, str]) -> str:
    import matplotlib.pyplot as plt

    x = scores[a[0]].to_numpy(np.float64, na_value=np.nan)
    y = scores[b[0]].to_numpy(np.float64, na_value=np.nan)
    sel = scores["selected"].to_numpy(bool)
    m = np.isfinite(x) & np.isfinite(y)
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    ax.scatter(x[m & ~sel], y[m & ~sel], s=4, c=REJ_COLOR, alpha=0.5, label="rejected", rasterized=True)
    ax.scatter(x[m & sel], y[m & sel], s=8, c=SEL_COLOR, alpha=0.9, label="selected", rasterized=True)
    me = m & scores["eligible"].to_numpy(bool) if "eligible" in scores.columns else m
    if me.any():
        try:
            obj = torch.from_numpy(np.stack([x[me], y[me]], 1))
            r = ops.pareto_ranks(obj, maximize=[a[1] == "max", b[1] == "max"])
            r = np.asarray(r.cpu().numpy() if hasattr(r, "cpu") else r)
            front = np.flatnonzero(me)[r == 0]
            front = front[np.argsort(x[front])]
            ax.plot(
                x[front],
                y[front],
                "-o",
                color="black",
                ms=3,
                lw=1,
                label="Pareto front of eligible rows" if me.sum() < m.sum() else "Pareto front (rank 0)",
            )
        except (ImportError, AttributeError, RuntimeError, ValueError):
            pass
    ax.set_xlabel(f"{a[0]} ({a[1]})")
    ax.set_ylabel(f"{b[0]} ({b[1]})")
    ax.set_title(f"trade-off: {a[0]} vs {b[0]}")
    ax.legend(fontsize=8, markerscale=2)
    return _png(fig)


def plot_groups(scores, top: int = 25) -> Optional[str]:
    import matplotlib.pyplot as plt

    if "group" not in scores.columns:
        return None
    g = scores["group"].astype(str).str.split("/").str[0]
    t = scores.assign(g=g).groupby("g")["selected"].agg(["sum", "count"])
    t = t.sort_values(["sum", "count"], ascending=False).head(top)[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.22 * len(t) + 1.2))
    ax.barh(t.index, t["count"] - t["sum"], color=REJ_COLOR, label="rejected")
    ax.barh(t.index, t["sum"], left=t["count"] - t["sum"], color=SEL_COLOR, label="selected")
    ax.set_xlabel("samples")
    ax.set_title(f"selected vs rejected per task/source (top {len(t)} by selected)")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _examples(source, lines, files, positions: list[int]) -> dict:
    """Texts of a few pool positions (one pass over the source)."""
    want = set(int(p) for p in positions)
    out: dict = {}
    if source is None or not want:
        return out
    for sh in source.shards():
        lo, hi = sh.start, sh.start + len(sh)
        for p in [p for p in want if lo <= p < hi]:
            r = sh.table.iloc[p - lo]
            out[p] = {"instruction": r["instruction"], "input": r["input"], "output": r["output"]}
        if len(out) == len(want):
            break
    return out


def _clip(s: str, n: int = 500) -> str:
    s = str(s)
    return html.escape(s if len(s) <= n else s[:n] + " …")


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1f2933;
max-width:1200px}h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #e4e7eb}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d9dee4;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f5f7fa}.grid{display:flex;flex-wrap:wrap;gap:12px}.grid img{border:1px solid
#e4e7eb}.ex td{max-width:520px;white-space:pre-wrap;word-break:break-word}.muted{color:#616e7c;font-size:12px}
.kv td:first-child{font-weight:600;white-space:nowrap}"""


def render_report(scores, manifest: dict, examples: Optional[dict] = None) -> str:
    crits = _criteria_columns(scores, manifest)
    sel = scores["selected"].to_numpy(bool)
    n, k = len(scores), int(sel.sum())
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>thresher report</title>"
        f"<style>{CSS}</style></head><body>"
    ]
    recipe = (manifest.get("recipe") or {}).get("name")
    parts.append(f"<h1>thresher selection report{(': ' + html.escape(recipe)) if recipe else ''}</h1>")
    inp = (manifest.get("inputs") or [{}])[0]
    rows = [
        ("input", f"{inp.get('path')} ({inp.get('format')}, {inp.get('rows')} rows, {inp.get('skipped', 0)} skipped)"),
        ("sha256", inp.get("sha256")),
        ("selected", f"{k} of {n} ({100.0 * k / max(n, 1):.2f}%)"),
        (
            "criteria",
            "; ".join(
                f"{c.get('as') or c['name']} = {c['name']} {json.dumps(c.get('options'))}"
                for c in manifest.get("criteria") or []
            ),
        ),
        ("models", "; ".join(f"{a}: {b}" for a, b in (manifest.get("models") or {}).items()) or "-"),
        ("selector", f"{manifest['selector']['name']} {json.dumps(manifest['selector']['options'])}"),
        ("filters", ", ".join(manifest.get("filters") or []) or "none"),
        ("budget", json.dumps(manifest.get("budget"))),
        ("seed / version", f"{manifest.get('seed')} / thresher {manifest.get('thresher')}"),
    ]
    parts.append(
        "<table class='kv'>"
        + "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(str(b))}</td></tr>" for a, b in rows)
        + "</table>"
    )
    parts.append("<h2>Criteria: distribution and threshold</h2><div class='grid'>")
    sel_opts = (manifest.get("selector") or {}).get("options") or {}
    single_col = sel_opts.get("criterion") if manifest["selector"]["name"] in ("topk", "threshold") else None
    for col, d in crits:
        parts.append(
            f"<img alt='distribution of {html.escape(col)}' "
            f"src='{plot_distribution(scores, col, d, single=(col == single_col))}'>"
        )
    parts.append("</div><h2>Score vs length</h2><div class='grid'>")
    for col, _ in crits:
        parts.append(f"<img alt='{html.escape(col)} vs length' src='{plot_vs_length(scores, col)}'>")
    parts.append("</div>")
    if len(crits) >= 2:
        parts.append("<h2>Trade-off between criteria (Pareto front)</h2><div class='grid'>")
        for i in range(len(crits)):
            for j in range(i + 1, len(crits)):
                parts.append(f"<img alt='trade-off' src='{plot_tradeoff(scores, crits[i], crits[j])}'>")
        parts.append("</div>")
    g = plot_groups(scores)
    if g:
        parts.append(f"<h2>Selected vs rejected per task/source</h2><img alt='per group' src='{g}'>")
    if examples is not None:
        parts.append(_examples_html(scores, crits, examples))
    parts.append(
        "<p class='muted'>Generated by thresher; self-contained (no scripts, no external resources). "
        "Scores: scores.parquet; provenance: manifest.json.</p></body></html>"
    )
    return "".join(parts)


def pick_examples(scores, n: int = 5) -> tuple[list[int], list[int]]:
    rank = scores["rank"].to_numpy()
    top = list(
        np.argsort(np.where(rank >= 0, rank, np.iinfo(np.int64).max), kind="stable")[: min(n, int((rank >= 0).sum()))]
    )
    main = [
        c
        for c in scores.columns
        if c not in ("id", "group", "tokens", "eligible", "selected", "rank")
        and "." not in c
        and np.issubdtype(scores[c].dtype, np.number)
    ]
    rej = np.flatnonzero(rank < 0)
    if main and rej.size:
        v = scores[main[0]].to_numpy(np.float64, na_value=np.nan)[rej]
        bottom = list(rej[np.argsort(np.where(np.isnan(v), np.inf, v), kind="stable")][:n])
    else:
        bottom = list(rej[:n])
    return [int(i) for i in top], [int(i) for i in bottom]


def _examples_html(scores, crits, examples: dict) -> str:
    top, bottom = pick_examples(scores)
    cols = [c for c, _ in crits]

    def table(title, idx):
        h = [
            f"<h3>{title}</h3><table class='ex'><tr><th>id</th><th>scores</th><th>instruction</th><th>output</th></tr>"
        ]
        for i in idx:
            ex = examples.get(i, {})
            sc = "<br>".join(f"{c}={scores[c].iloc[i]:.4g}" for c in cols) + f"<br>rank={scores['rank'].iloc[i]}"
            ins = ex.get("instruction", "") + (("\n" + ex["input"]) if ex.get("input") else "")
            h.append(
                f"<tr><td>{html.escape(str(scores['id'].iloc[i]))}</td><td>{sc}</td>"
                f"<td>{_clip(ins)}</td><td>{_clip(ex.get('output', ''))}</td></tr>"
            )
        h.append("</table>")
        return "".join(h)

    return (
        "<h2>Examples</h2>"
        + table("Top selected (selection order)", top)
        + table(f"Bottom rejected (lowest {cols[0] if cols else 'score'})", bottom)
    )


def write_report(
    out: Any,
    *,
    source: Any = None,
    lines: Any = None,
    files: Any = None,
    quiet: bool = True,
    path: Optional[Path] = None,
) -> Path:
    """Render ``out/report.html`` from ``out/scores.parquet`` and ``out/manifest.json``."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
    except ImportError as exc:
        raise MissingExtraError("the report (matplotlib)", "report", exc) from None
    import pandas as pd

    out = Path(out)
    scores = pd.read_parquet(out / "scores.parquet")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    top, bottom = pick_examples(scores)
    examples = _examples(source, lines, files, top + bottom) if source is not None else {}
    page = render_report(scores, manifest, examples)
    path = path or out / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
