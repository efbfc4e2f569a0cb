"""`thresher compare [RUNS.yaml ...]`: the survey's unified comparison of selectors.

Without RUNS files: print the leaderboard of the twelve published methods (SDF,
PIR, efficiency and its rank, both penalties and ranks, feasibility rank), one
method a line. With RUNS files (written by `thresher evaluate` or by hand; see
thresher.evaluation.runs): place the runs among the twelve, print the
efficiency and feasibility rank tables, and write efficiency.png,
feasibility.png and report.html into --out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..evaluation import leaderboard, load_runs
from ..evaluation.plots import (
    EFFICIENCY_COLUMNS,
    FEASIBILITY_COLUMNS,
    efficiency_table,
    feasibility_table,
    text_table,
    write_report,
)

LEADERBOARD_COLUMNS = [
    "name",
    "sdf",
    "pir",
    "residual",
    "efficiency_rank",
    "simplicity_penalty",
    "simplicity_rank",
    "flexibility_penalty",
    "flexibility_rank",
    "feasibility_rank",
]


def run(args: Any) -> int:

    user = []
    for p in args.runs:
        user.extend(load_runs(p))
    published_names = {m for m in leaderboard(include_excluded=True)["name"]}
    clash = sorted({m.name for m in user} & published_names)
    if clash:
        raise ValueError(f"runs: run name(s) {clash} clash with published methods; rename them")
    names = [m.name for m in user]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"runs: duplicate run name(s) {dup} across the RUNS files")
    table = leaderboard(include_excluded=args.include_mods, extra=user)

    if args.json:
        print(json.dumps(json.loads(table.to_json(orient="records")), indent=2))
    elif not user:
        t = table.sort_values(["efficiency_rank", "name"], kind="stable")
        print(text_table(t, LEADERBOARD_COLUMNS))
    else:
        print("Efficiency (dense rank of the signed distance to l_base, descending; * = your runs)")
        print(text_table(efficiency_table(table), EFFICIENCY_COLUMNS))
        print()
        print("Feasibility (dense ranks of the penalties, ascending; * = your runs)")
        print(text_table(feasibility_table(table), FEASIBILITY_COLUMNS))
    if not args.include_mods and not args.json:
        print("\n(MoDS, SDF 0.0192 / PIR 3.337, is excluded as an outlier as in the survey; --include-mods adds it)")

    out = args.out
    if out is None and user:
        out = "compare-report"
    if out is not None:
        out = Path(out)
        if (out / "report.html").exists() and not args.force:
            raise FileExistsError(f"{out}: already holds a report.html; pass --force to overwrite it")
        notes = [f"runs from: {', '.join(str(p) for p in args.runs)}"] if args.runs else []
        if not args.include_mods:
            notes.append("MoDS (SDF 0.0192, PIR 3.337) is excluded as an outlier, as in the survey.")
        notes.append("LESS: PIR 1.491 from the survey's table; the paper's plot shows about 1.57 (disputed).")
        paths = write_report(table, out, notes=notes)
        if not args.json:
            print(f"\nwrote {paths['efficiency']}, {paths['feasibility']}, {paths['report']}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="rank selectors by efficiency and feasibility (the survey's comparison)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("runs", nargs="*", metavar="RUNS.yaml", help="your runs to place among the published methods")
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="write efficiency.png, feasibility.png and report.html here (default with runs: compare-report)",
    )
    p.add_argument(
        "--include-mods", action="store_true", help="include MoDS, excluded by default as an outlier (PIR 3.337)"
    )
    p.add_argument("--json", action="store_true", help="print the full table as JSON")
    p.add_argument("--force", action="store_true", help="overwrite an existing report in --out")
    p.set_defaults(func=run)
