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

from ..errors import OptionError, OutputExistsError
from ..evaluation import leaderboard, load_runs
from ..evaluation.plots import (
    EFFICIENCY_COLUMNS,
    FEASIBILITY_COLUMNS,
    efficiency_table,
    feasibility_table,
    text_table,
    write_report,
)
from ._common import add_output_args, add_overwrite_arg, emit_json

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


def _user_runs(paths: list) -> list:
    user = []
    for p in paths:
        user.extend(load_runs(p))
    published_names = {m for m in leaderboard(include_excluded=True)["name"]}
    clash = sorted({m.name for m in user} & published_names)
    if clash:
        raise OptionError(f"runs: run name(s) {clash} clash with published methods; rename them")
    names = [m.name for m in user]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise OptionError(f"runs: duplicate run name(s) {dup} across the RUNS files")
    return user


def run(args: Any) -> int:
    user = _user_runs(args.runs)
    out = args.out if args.out is not None or not user else "compare-report"
    if out is not None and (Path(out) / "report.html").exists() and not args.overwrite:
        raise OutputExistsError(f"{out}: already holds a report.html; pass --overwrite to replace it")
    if args.dry_run:
        plan = {"runs": [str(p) for p in args.runs], "user_runs": [m.name for m in user],
                "include_mods": args.include_mods, "out": out}  # fmt: skip
        if args.json:
            emit_json({"dry_run": True, **plan})
        else:
            print(f"plan (dry run): place {plan['user_runs'] or 'no runs'} among the published methods; "
                  f"report -> {out or '(none)'}")  # fmt: skip
        return 0
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

    if out is not None:
        out = Path(out)
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
    add_overwrite_arg(p, "replace an existing report in --out")
    add_output_args(p)
    p.set_defaults(func=run)
