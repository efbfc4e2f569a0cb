"""Plots and the HTML report of ``thresher compare``.

* Efficiency plot: PIR against SDF, the baseline line l_base, the region above
  it (more efficient than the baseline) and below it shaded, published methods
  and the user's runs labelled.
* Feasibility plot: simplicity rank against flexibility rank with the diagonal
  (lower-left is more feasible); methods sharing a point share one label.
* ``write_report``: both PNGs and a self-contained HTML page (images embedded
  as base64, no external resources) with the two rank tables.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..fs import atomic_save, atomic_write_text
from .comparison import L_BASE, BaselineLine

PUBLISHED_COLOR = "#1f5fa8"
USER_COLOR = "#d62728"


def _figure(figsize):
    """A matplotlib Figure without pyplot (no global backend or state is touched)."""
    try:  # matplotlib is an optional extra (thresher[report]): imported where it is needed
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover
        raise ValueError("plots need matplotlib (pip install 'thresher[report]')") from exc
    fig = Figure(figsize=figsize, dpi=110)
    return fig, fig.subplots()


def _save(fig, path: Path) -> Path:
    """``fig`` written atomically to ``path`` (format from the suffix, PNG by default)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_save(path, lambda tmp: fig.savefig(tmp, format=fmt))
    return Path(path)


def _label_slot(fx: float, fy: float, w: float, boxes: list) -> tuple[int, int]:
    """Where a label goes: (side, line offset). Right of its point; a label that would overlap an
    earlier one (boxes in axes fractions: ~0.65% of the width per character, ~2.4% of the height
    per line) goes left of it, or a line lower or higher. The chosen box is appended to ``boxes``."""
    h = 0.024
    for dy in (0, -1, 1, -2, 2, -3, 3):
        for side in (1, -1):
            x0 = fx if side > 0 else fx - 0.012 - w
            y0 = fy + (4 + 11 * dy) / 500.0
            b = (x0, y0, x0 + w, y0 + h)
            if (
                b[0] >= 0.0
                and b[2] <= 1.0
                and not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in boxes)
            ):
                boxes.append(b)
                return side, dy
    boxes.append(b)
    return side, dy


def efficiency_plot(table, path: Path, *, line: BaselineLine = L_BASE, title: Optional[str] = None) -> Path:
    """PIR vs SDF with l_base; above shaded green, below shaded red."""
    x = table["sdf"].to_numpy(float)
    y = table["pir"].to_numpy(float)
    xmin, xmax = 0.0, max(0.25, float(x.max()) * 1.1)
    lo = min(float(y.min()), line(xmin), line(xmax))
    hi = max(float(y.max()), line(xmin), line(xmax))
    pad = 0.08 * (hi - lo if hi > lo else 1.0)
    ylo, yhi = lo - pad, hi + pad
    fig, ax = _figure((9, 6))
    xs = np.linspace(xmin, xmax, 200)
    ls = np.array([line(v) for v in xs])
    ax.fill_between(xs, ls, yhi, color="#2ca02c", alpha=0.10, label="above l_base (more efficient)")
    ax.fill_between(xs, ylo, ls, color="#d62728", alpha=0.08, label="below l_base")
    ax.plot(xs, ls, color="black", lw=1.3, label=f"l_base: PIR = {line.intercept:.4f} + {line.slope:.4f} SDF")
    user = table["user"].to_numpy(bool)
    ax.scatter(x[~user], y[~user], s=40, color=PUBLISHED_COLOR, zorder=3, label="published methods")
    if user.any():
        ax.scatter(x[user], y[user], s=110, marker="*", color=USER_COLOR, zorder=4, label="your runs")
    boxes: list[tuple[float, float, float, float]] = []
    for i in np.lexsort((x, -y)):
        u = bool(user[i])
        text = f"{table['name'].iloc[i]} (#{table['efficiency_rank'].iloc[i]})"
        fx = (x[i] - xmin) / (xmax - xmin) + 0.006
        fy = (y[i] - ylo) / (yhi - ylo)
        side, dy = _label_slot(fx, fy, 0.0065 * len(text) * (1.1 if u else 1.0), boxes)
        ax.annotate(
            text,
            (x[i], y[i]),
            xytext=(5 * side, 4 + 11 * dy),
            textcoords="offset points",
            fontsize=8,
            ha="left" if side > 0 else "right",
            color=USER_COLOR if u else "#222222",
            weight="bold" if u else "normal",
        )
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ylo, yhi)
    ax.set_xlabel("SDF (selected dataset fraction)")
    ax.set_ylabel("PIR (performance improvement ratio)")
    ax.set_title(title or "Efficiency: PIR vs SDF (rank = dense rank of distance to l_base)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def feasibility_plot(table, path: Path, *, title: Optional[str] = None) -> Path:
    """Simplicity rank (x) vs flexibility rank (y) with the diagonal."""
    t = table[table["simplicity_rank"].notna()]
    sr = t["simplicity_rank"].to_numpy(int)
    fr = t["flexibility_rank"].to_numpy(int)
    fig, ax = _figure((9, 7))
    m = int(max(sr.max(initial=1), fr.max(initial=1))) + 1
    ax.plot([0, m], [0, m], color="grey", ls="--", lw=1, label="simplicity rank = flexibility rank")
    groups: dict[tuple[int, int], list[tuple[str, bool, int]]] = defaultdict(list)
    for s, f, name, u, r in zip(sr, fr, t["name"], t["user"], t["feasibility_rank"]):
        groups[(int(s), int(f))].append((str(name), bool(u), int(r)))
    for (s, f), items in groups.items():
        anyu = any(u for _, u, _ in items)
        ax.scatter(
            [s],
            [f],
            s=60 + 30 * len(items),
            marker="*" if anyu else "o",
            color=USER_COLOR if anyu else PUBLISHED_COLOR,
            zorder=3,
        )
        label = "\n".join(f"{n} (#{r})" for n, _, r in items)
        ax.annotate(
            label,
            (s, f),
            xytext=(6, 5),
            textcoords="offset points",
            fontsize=7.5,
            rotation=30,
            rotation_mode="anchor",
            color=USER_COLOR if anyu else "#222222",
        )
    ax.set_xlim(0, m + 0.5)
    ax.set_ylim(0, m + 0.5)
    ax.set_xlabel("simplicity rank (1 = simplest)")
    ax.set_ylabel("flexibility rank (1 = most flexible)")
    ax.set_title(title or "Feasibility: simplicity vs flexibility rank (# = feasibility rank)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


EFFICIENCY_COLUMNS = ["efficiency_rank", "name", "sdf", "pir", "residual", "distance"]
FEASIBILITY_COLUMNS = [
    "feasibility_rank",
    "name",
    "trained_llms",
    "steps",
    "public_code",
    "simplicity_penalty",
    "simplicity_rank",
    "model_free",
    "dataset_free",
    "proprietary_judge",
    "flexibility_penalty",
    "flexibility_rank",
]


def _fmt(v: Any, col: str) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if v is pd.NA:
        return "-"
    if col in ("residual", "distance"):
        return f"{v:+.4f}"
    if col == "sdf":
        return f"{v:.4g}"
    if col == "pir":
        return f"{v:.4f}"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def efficiency_table(table):
    return table.sort_values(["efficiency_rank", "name"], kind="stable")[EFFICIENCY_COLUMNS + ["user"]]


def feasibility_table(table):
    t = table[table["simplicity_rank"].notna()]
    return t.sort_values(["feasibility_rank", "name"], kind="stable")[FEASIBILITY_COLUMNS + ["user"]]


def text_table(table, columns: list[str]) -> str:
    """Fixed-width text, one method a line; user runs marked with '*'."""
    cells = [[_fmt(r[c], c) for c in columns] for _, r in table.iterrows()]
    marks = ["*" if u else " " for u in table["user"]]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    for m, row in zip(marks, cells):
        out.append(m + " " + "  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(out)


def _html_table(table, columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for _, r in table.iterrows():
        cls = ' class="user"' if r["user"] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(r[c], c))}</td>" for c in columns) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_report(
    table, out_dir: Path, *, line: BaselineLine = L_BASE, notes: Optional[list[str]] = None
) -> dict[str, Path]:
    """Write efficiency.png, feasibility.png and report.html (self-contained) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    eff = efficiency_plot(table, out_dir / "efficiency.png", line=line)
    feas = feasibility_plot(table, out_dir / "feasibility.png")

    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'<img alt="{p.stem}" src="data:image/png;base64,{data}">'

    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in (notes or []))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>thresher compare</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f0f0; }}
td:nth-child(2) {{ text-align: left; }}
tr.user td {{ background: #fde8e8; font-weight: bold; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>Selector comparison</h1>
<p>The unified comparison of Liu et al. (arXiv 2406.14115, NAACL 2025): efficiency is the signed
distance of (SDF, PIR) to l_base (PIR = {line.intercept:.6f} + {line.slope:.6f} SDF, through
Instruction-Mining and InstructionGPT-4), ranked densely, descending; feasibility ranks are dense
ranks of the simplicity and flexibility penalties and of their sum. Highlighted rows are your runs.</p>
<ul>{note_html}</ul>
<h2>Efficiency</h2>
{img(eff)}
{_html_table(efficiency_table(table), EFFICIENCY_COLUMNS)}
<h2>Feasibility</h2>
{img(feas)}
{_html_table(feasibility_table(table), FEASIBILITY_COLUMNS)}
</body></html>
"""
    report = out_dir / "report.html"
    atomic_write_text(report, page)
    return {"efficiency": eff, "feasibility": feas, "report": report}
