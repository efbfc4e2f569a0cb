"""report.html: a self-contained, offline page about one run (a selection or a score-only run).

Reads ``scores.parquet`` and ``manifest.json`` from the run folder and embeds PNG
plots as data URIs (matplotlib's ``Figure`` API; no pyplot, no backend switch):
a summary table per criterion (count, NaN count with the reasons, quantiles), the
Spearman correlation between criteria, each criterion's distribution with the
selection threshold, score vs length, the Pareto front between criteria, a 2-D
PCA map of the embeddings (kept vs dropped) when the run embedded the rows, the
rows per task/source, and the top and bottom examples. No scripts, no external resources.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import MissingExtraError
from ..fs import atomic_write_bytes
from . import plots
from .stats import QUANTILE_NAMES, spearman, summarize

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1f2933;
max-width:1200px}h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #e4e7eb}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d9dee4;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f5f7fa}.grid{display:flex;flex-wrap:wrap;gap:12px}.grid img{border:1px solid
#e4e7eb}.ex td{max-width:520px;white-space:pre-wrap;word-break:break-word}.muted{color:#616e7c;font-size:12px}
.kv td:first-child{font-weight:600;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}"""


def _criteria_columns(scores: Any, manifest: dict) -> list[tuple[str, str]]:
    out = []
    for c in manifest.get("criteria") or []:
        col = c.get("as") or c["name"]
        if col in scores.columns:
            out.append((col, c.get("direction") or "max"))
    return out


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def _selected(scores: Any) -> Optional[np.ndarray]:
    return scores["selected"].to_numpy(bool) if "selected" in scores.columns else None


def _head(scores: Any, manifest: dict) -> str:
    sel = _selected(scores)
    n = len(scores)
    recipe = (manifest.get("recipe") or {}).get("name")
    kind = "selection" if sel is not None else "scoring"
    title = f"thresher {kind} report" + (f": {recipe}" if recipe else "")
    inp = (manifest.get("inputs") or [{}])[0]
    budget = manifest.get("budget") or {}
    env = manifest.get("environment") or {}
    rows = [
        ("input", f"{inp.get('path')} ({inp.get('format')}, {inp.get('rows')} rows, {inp.get('skipped', 0)} skipped)"),
        ("sha256", inp.get("sha256")),
        ("selected", f"{int(sel.sum())} of {n} ({100.0 * sel.sum() / max(n, 1):.2f}%)" if sel is not None else "-"),
        (
            "criteria",
            "; ".join(
                f"{c.get('as') or c['name']} = {c['name']} {json.dumps(c.get('options'), default=str)}"
                for c in manifest.get("criteria") or []
            ),
        ),  # fmt: skip
        ("models", "; ".join(f"{a}: {b}" for a, b in (manifest.get("models") or {}).items()) or "-"),
        (
            "selector",
            f"{manifest['selector']['name']} {json.dumps(manifest['selector']['options'])}"
            if sel is not None and manifest.get("selector")
            else "-",
        ),  # fmt: skip
        ("filters", ", ".join(manifest.get("filters") or []) or "none"),
        ("budget", json.dumps({k: v for k, v in budget.items() if v is not None})),
        ("token count", budget.get("token_count", "approximate")),
        ("device", env.get("device", "-")),
        ("seed / version", f"{manifest.get('seed')} / thresher {manifest.get('thresher')}"),
    ]
    kv = "".join(f"<tr><td>{_esc(a)}</td><td>{_esc(b)}</td></tr>" for a, b in rows)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1><table class='kv'>{kv}</table>"
    )


def summary_html(scores: Any, crits: list[tuple[str, str]]) -> str:
    """One row per criterion: count, NaN (with each reason and its count), mean and quantiles."""
    head = "".join(f"<th>{h}</th>" for h in ("criterion", "direction", "count", "NaN", "NaN reasons", "mean"))
    head += "".join(f"<th>{q}</th>" for q in QUANTILE_NAMES)
    body = []
    for col, d in crits:
        s = summarize(scores, col)
        reasons = "<br>".join(f"{_esc(r)}: {c}" for r, c in s["reasons"]) or "-"
        cells = [_esc(col), _esc(d), str(s["count"]), str(s["nan"]), reasons, _num(s["mean"])]
        cells += [_num(s[q]) for q in QUANTILE_NAMES]
        body.append("<tr>" + "".join(f"<td class='num'>{c}</td>" if i in (2, 3) or i >= 5 else f"<td>{c}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")  # fmt: skip
    return f"<h2>Summary per criterion</h2><table class='summary'><tr>{head}</tr>{''.join(body)}</table>"


def correlation_html(scores: Any, crits: list[tuple[str, str]]) -> str:
    if len(crits) < 2:
        return ""
    corr = spearman(scores, [c for c, _ in crits])
    cols = list(corr.columns)
    head = "<tr><th></th>" + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr>"
    body = "".join(
        f"<tr><th>{_esc(a)}</th>"
        + "".join(f"<td class='num'>{_num(None if np.isnan(v) else v)}</td>" for v in corr.loc[a].to_numpy())
        + "</tr>"  # fmt: skip
        for a in cols
    )
    img = plots.heatmap(corr, "Spearman correlation between criteria")
    return (
        "<h2>Correlation between criteria (Spearman)</h2><p class='muted'>Over the rows where both criteria "
        f"have a score.</p><table class='corr'>{head}{body}</table><img alt='correlation' src='{img}'>"
    )


def _plots_html(scores: Any, manifest: dict, crits: list, embeddings: Any) -> list[str]:
    sel = _selected(scores)
    opts = (manifest.get("selector") or {}).get("options") or {}
    single = opts.get("criterion") if (manifest.get("selector") or {}).get("name") in ("topk", "threshold") else None
    vals = {c: scores[c].to_numpy(np.float64, na_value=np.nan) for c, _ in crits}
    unit = (manifest.get("budget") or {}).get("token_count", "approximate")
    unit = "approx. tokens" if unit == "approximate" else "model tokens"
    parts = ["<h2>Criteria: distribution" + (" and threshold" if sel is not None else "") + "</h2><div class='grid'>"]
    for c, d in crits:
        img = plots.plot_distribution(vals[c], sel, c, d, single=(c == single))
        parts.append(f"<img alt='distribution of {_esc(c)}' src='{img}'>")
    parts.append("</div><h2>Score vs length</h2><div class='grid'>")
    length = scores["tokens"].to_numpy(np.float64)
    for c, _ in crits:
        parts.append(f"<img alt='{_esc(c)} vs length' src='{plots.plot_vs_length(vals[c], length, sel, c, unit)}'>")
    parts.append("</div>")
    if len(crits) >= 2:
        elig = scores["eligible"].to_numpy(bool) if "eligible" in scores.columns else None
        parts.append("<h2>Trade-off between criteria (Pareto front)</h2><div class='grid'>")
        for i in range(len(crits)):
            for j in range(i + 1, len(crits)):
                a, b = crits[i], crits[j]
                img = plots.plot_tradeoff(vals[a[0]], vals[b[0]], sel, elig, a, b)
                parts.append(f"<img alt='trade-off' src='{img}'>")
        parts.append("</div>")
    if embeddings is not None and len(embeddings) == len(scores):
        what = "kept vs dropped" if sel is not None else "all rows"
        parts.append(f"<h2>Embedding map (PCA, {what})</h2>"
                     f"<img alt='embedding map' src='{plots.plot_embedding_map(embeddings, sel)}'>")  # fmt: skip
    if "group" in scores.columns:
        title = "Selected vs rejected per task/source" if sel is not None else "Rows per task/source"
        parts.append(f"<h2>{title}</h2><img alt='per group' src='{plots.plot_groups(scores['group'], sel)}'>")
    return parts


def render_report(scores: Any, manifest: dict, examples: Optional[dict] = None, embeddings: Any = None) -> str:
    """The page for a scores table and its manifest (``selected``/``rank`` absent: a score-only run)."""
    crits = _criteria_columns(scores, manifest)
    parts = [_head(scores, manifest), summary_html(scores, crits), correlation_html(scores, crits)]
    parts += _plots_html(scores, manifest, crits, embeddings)
    if examples is not None and "rank" in scores.columns:
        parts.append(_examples_html(scores, crits, examples))
    parts.append(
        "<p class='muted'>Generated by thresher; self-contained (no scripts, no external resources). "
        "Scores: scores.parquet; provenance: manifest.json.</p></body></html>"
    )
    return "".join(parts)


def _examples(source: Any, positions: list[int]) -> dict:
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


def pick_examples(scores: Any, n: int = 5) -> tuple[list[int], list[int]]:
    if "rank" not in scores.columns:
        return [], []
    rank = scores["rank"].to_numpy()
    top = list(
        np.argsort(np.where(rank >= 0, rank, np.iinfo(np.int64).max), kind="stable")[: min(n, int((rank >= 0).sum()))]
    )
    skip = {"id", "group", "tokens", "source_file", "source_line", "eligible", "selected", "rank"}
    main = [c for c in scores.columns if c not in skip and "." not in c and np.issubdtype(scores[c].dtype, np.number)]
    rej = np.flatnonzero(rank < 0)
    if main and rej.size:
        v = scores[main[0]].to_numpy(np.float64, na_value=np.nan)[rej]
        bottom = list(rej[np.argsort(np.where(np.isnan(v), np.inf, v), kind="stable")][:n])
    else:
        bottom = list(rej[:n])
    return [int(i) for i in top], [int(i) for i in bottom]


def _examples_html(scores: Any, crits: list, examples: dict) -> str:
    top, bottom = pick_examples(scores)
    cols = [c for c, _ in crits]

    def table(title: str, idx: list) -> str:
        h = [f"<h3>{title}</h3><table class='ex'><tr><th>id</th><th>scores</th><th>instruction</th>"
             "<th>output</th></tr>"]  # fmt: skip
        for i in idx:
            ex = examples.get(i, {})
            sc = "<br>".join(f"{c}={scores[c].iloc[i]:.4g}" for c in cols) + f"<br>rank={scores['rank'].iloc[i]}"
            ins = ex.get("instruction", "") + (("\n" + ex["input"]) if ex.get("input") else "")
            h.append(
                f"<tr><td>{_esc(scores['id'].iloc[i])}</td><td>{sc}</td>"
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
    path: Optional[Path] = None,
    embeddings: Any = None,
    manifest: Optional[dict] = None,
) -> Path:
    """Render ``out/report.html`` from ``out/scores.parquet`` and the run's manifest.

    ``manifest``: the run's manifest as a dict (the pipeline passes it before it writes
    ``manifest.json``, its commit marker); read from ``out/manifest.json`` when not given. It is
    read as its JSON file would be (sorted keys, values as JSON gives them back), so the page is
    the same either way. ``embeddings``: the rows' vectors (pool order), drawn as a 2-D PCA map."""
    try:
        import matplotlib.figure  # noqa: F401  (the report extra)
    except ImportError as exc:
        raise MissingExtraError("the report (matplotlib)", "report", exc) from None
    import pandas as pd

    out = Path(out)
    scores = pd.read_parquet(out / "scores.parquet")
    if manifest is None:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    else:  # exactly what reading manifest.json back would give (thresher.fs.write_json_atomic's layout)
        manifest = json.loads(json.dumps(manifest, sort_keys=True, default=str))
    top, bottom = pick_examples(scores)
    examples = _examples(source, top + bottom) if source is not None else {}
    page = render_report(scores, manifest, examples, embeddings=embeddings)
    path = path or out / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path


__all__ = ["render_report", "write_report", "pick_examples", "summary_html", "correlation_html"]
