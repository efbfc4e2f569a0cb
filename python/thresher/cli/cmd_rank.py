"""`thresher rank SCORES --objective ifd:max --objective knn_distance:max --method pareto --k N`.

Ranks an existing scores table (Parquet, CSV or JSONL with an ``id`` column) by
several objectives without rescoring; prints the top rows, and with ``--out``
writes the table with ``rank`` (selection order, -1 when not in the top k),
``selected`` and, for Pareto, ``pareto_rank`` and ``crowding``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.writers import write_parquet_atomic
from ..registry import SELECTORS
from ..selectors.basic import objective_matrix, pareto_order


def read_scores(path: Path):
    import pandas as pd

    if not path.exists():
        raise FileNotFoundError(f"scores: {path} does not exist")
    name = path.name.lower()
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    if name.endswith(".csv"):
        return pd.read_csv(path)
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        return pd.read_json(path, lines=True)
    raise ValueError(f"scores: expected .parquet, .csv or .jsonl, got {path}")


def run(args: Any) -> int:

    df = read_scores(Path(args.scores))
    if "id" not in df.columns:
        raise ValueError(f"scores: {args.scores} has no 'id' column")
    objectives = args.objective or []
    if not objectives:
        raise ValueError("--objective: give at least one, e.g. --objective ifd:max")
    n = len(df)
    k = n if args.k is None else args.k
    if args.ratio is not None:
        if not 0 < args.ratio <= 1:
            raise ValueError(f"--ratio: expected a fraction in (0, 1], got {args.ratio}")
        k = max(1, int(np.floor(args.ratio * n + 0.5)))
    opts: dict = {"objectives": objectives}
    if args.weights:
        if args.method == "pareto":
            raise ValueError("--weights: only for --method weighted or rrf")
        opts["weights"] = [float(w) for w in args.weights.split(",")]
    if args.diversity_tau is not None:
        raise ValueError("--diversity-tau needs embeddings; use `thresher select` with the multi-objective recipe")
    order = np.asarray(SELECTORS.get(args.method).obj(df, k, seed=args.seed, **opts), dtype=np.int64)
    rank = np.full(n, -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    out = df.copy()
    if args.method == "pareto":
        mat, maxi, _ = objective_matrix(df, objectives)
        _, pr, cd = pareto_order(mat, maxi)
        out["pareto_rank"] = pr
        out["crowding"] = cd
    out["rank"] = rank
    out["selected"] = rank >= 0
    if args.out:
        p = Path(args.out)
        if p.exists() and not args.overwrite:
            raise FileExistsError(f"--out: {p} exists; pass --overwrite to replace it")
        write_parquet_atomic(out, p)
    if not args.quiet:
        cols = ["id"] + [o.split(":")[0] for o in objectives] + (["pareto_rank"] if args.method == "pareto" else [])
        top = out.iloc[order[: args.show]][cols]
        print(f"{len(order)} of {n} rows selected by {args.method} over {', '.join(objectives)}")
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
    p.add_argument("--method", choices=["pareto", "weighted", "rrf"], default="pareto")
    p.add_argument("--weights", default=None, help="comma-separated weights (weighted, rrf)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--k", type=int, default=None, help="keep the top N (default: rank all)")
    g.add_argument("--ratio", type=float, default=None)
    p.add_argument("--diversity-tau", type=float, default=None, help=argparse_suppress())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=10, help="rows to print")
    p.add_argument("--out", default=None, help="write the ranked table (.parquet)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
