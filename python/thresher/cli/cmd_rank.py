"""`thresher rank SCORES --objective ifd:max --objective knn_distance:max --selector pareto --k N`.

Ranks an existing scores table (Parquet, CSV or JSONL with an ``id`` column) by
several objectives without rescoring; prints the top rows, and with ``--out``
writes the table with ``rank`` (selection order, -1 when not in the top k),
``selected`` and, for Pareto, ``pareto_rank`` and ``crowding``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError, OutputExistsError
from ..io.writers import read_table, table_format, write_table
from ..registry import SELECTORS
from ..selectors.basic import objective_matrix, pareto_order, parse_objectives
from ._common import add_output_args, add_overwrite_arg, deprecated, emit_json

SELECTOR_CHOICES = ("pareto", "weighted", "rrf")
NORMALIZERS = ("rank", "minmax", "zscore", "quantile", "none")


def _plan(args: Any, df: Any) -> dict:
    """The checked ranking: selector, objectives, options and k (no ranking done yet)."""
    if "id" not in df.columns:
        raise OptionError(f"scores: {args.scores} has no 'id' column")
    objectives = args.objective or []
    if not objectives:
        raise OptionError("--objective: give at least one, e.g. --objective ifd:max")
    missing = [n for n, _ in parse_objectives(objectives) if n not in df.columns]
    if missing:
        raise OptionError(f"--objective: {missing} not among the columns of {args.scores}: {list(df.columns)}")
    n = len(df)
    k = n if args.k is None else args.k
    if args.ratio is not None:
        if not 0 < args.ratio <= 1:
            raise OptionError(f"--ratio: expected a fraction in (0, 1], got {args.ratio}")
        k = max(1, int(np.floor(args.ratio * n + 0.5)))
    opts: dict = {"objectives": objectives}
    if args.weights:
        if args.selector == "pareto":
            raise OptionError("--weights: only for --selector weighted or rrf")
        opts["weights"] = [float(w) for w in args.weights.split(",")]
    if args.normalize is not None:
        if args.selector != "weighted":
            why = "ranks each objective" if args.selector == "rrf" else "compares the raw values"
            raise OptionError(f"--normalize: only for --selector weighted ({args.selector} {why})")
        opts["normalize"] = args.normalize
    if args.diversity_tau is not None:
        raise OptionError("--diversity-tau needs embeddings; use `thresher select` with the multi-objective recipe")
    return {"scores": str(args.scores), "rows": n, "k": k, "selector": args.selector, "options": opts}


def _rank(df: Any, plan: dict, seed: int) -> tuple[Any, np.ndarray]:
    order = np.asarray(SELECTORS.get(plan["selector"]).obj(df, plan["k"], seed=seed, **plan["options"]), dtype=np.int64)
    rank = np.full(len(df), -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    out = df.copy()
    if plan["selector"] == "pareto":
        mat, maxi, _ = objective_matrix(df, plan["options"]["objectives"])
        _, pr, cd = pareto_order(mat, maxi)
        out["pareto_rank"] = pr
        out["crowding"] = cd
    out["rank"] = rank
    out["selected"] = rank >= 0
    return out, order


def run(args: Any) -> int:
    df = read_table(args.scores)
    plan = _plan(args, df)
    if args.dry_run:
        if args.json:
            emit_json({"dry_run": True, **plan, "out": args.out})
        else:
            print(f"plan (dry run): rank {plan['rows']} rows of {plan['scores']} by {plan['selector']} "
                  f"{json.dumps(plan['options'])}, keep {plan['k']} -> {args.out or '(print only)'}")  # fmt: skip
        return 0
    if args.out:
        table_format(Path(args.out))  # a known table format, before any work
    if args.out and Path(args.out).exists() and not args.overwrite:
        raise OutputExistsError(f"--out: {args.out} exists; pass --overwrite to replace it")
    out, order = _rank(df, plan, args.seed)
    if args.out:
        write_table(out, Path(args.out))
    objectives = plan["options"]["objectives"]
    cols = ["id"] + [o.split(":")[0] for o in objectives] + (["pareto_rank"] if plan["selector"] == "pareto" else [])
    top = out.iloc[order[: args.show]][cols]
    if args.json:
        rows = json.loads(top.to_json(orient="records"))
        emit_json({**plan, "selected": int(len(order)), "out": args.out, "top": rows})
    elif not args.quiet:
        print(f"{len(order)} of {plan['rows']} rows selected by {plan['selector']} over {', '.join(objectives)}")
        print(top.to_string(index=False))
        if args.out:
            print(f"wrote {args.out}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rank",
        help="rank a scores table by several objectives (pareto, weighted, rrf)",
        description=__doc__.split("\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("scores", help="scores table (.parquet, .csv, .jsonl) with an id column")
    p.add_argument("--objective", action="append", metavar="NAME:max|min", help="repeatable")
    p.add_argument("--selector", choices=SELECTOR_CHOICES, default="pareto", help="pareto (default), weighted, rrf")
    p.add_argument("--weights", default=None, help="comma-separated weights (weighted, rrf)")
    p.add_argument("--normalize", choices=NORMALIZERS, default=None,
                   help="per-objective normaliser of --selector weighted (default rank)")  # fmt: skip
    g = p.add_mutually_exclusive_group()
    g.add_argument("--k", type=int, default=None, help="keep the top N (default: rank all)")
    g.add_argument("--ratio", type=float, default=None, help="keep this fraction of the rows")
    p.add_argument("--diversity-tau", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=10, help="rows to print")
    p.add_argument("--out", default=None, help="write the ranked table (.parquet; .csv or .jsonl by extension)")
    add_overwrite_arg(p, "replace an existing --out table")
    p.add_argument("--quiet", action="store_true")
    add_output_args(p)
    deprecated(p, "--method", "selector", "--selector", choices=SELECTOR_CHOICES)
    p.set_defaults(func=run)
