"""`thresher select DATA --recipe NAME (--ratio R | --k N | --tokens T) --out DIR`."""

from __future__ import annotations

from typing import Any

from ..errors import OptionError
from ..pipeline import PipelineConfig, run_pipeline
from ._common import (
    add_budget_args,
    add_criteria_args,
    add_data_args,
    add_output_args,
    add_run_args,
    add_selection_args,
    check_positive,
    common_config,
    criteria_steps,
    plan_preview,
    print_plan,
    print_summary,
    selector_step,
    split_options,
)


def config(args: Any) -> PipelineConfig:
    if not args.recipe and not args.criteria:
        raise OptionError("give --recipe NAME (see `thresher recipes`) or --criteria C1,C2 with --selector")
    check_positive(args)
    recipe_opts, crit_opts = split_options(args)
    return PipelineConfig(
        data=args.data,
        out=args.out,
        recipe=args.recipe,
        recipe_options=recipe_opts,
        criteria=criteria_steps(args.criteria, crit_opts),
        selector=selector_step(args),
        filters=args.filter or [],
        k=args.k,
        ratio=args.ratio,
        tokens=args.tokens,
        report=not args.no_report,
        id_column=args.id_column,
        with_scores=args.with_scores,
        write_rejected=args.write_rejected,
        **common_config(args),
    )


def run(args: Any) -> int:
    cfg = config(args)
    if args.dry_run:
        print_plan(plan_preview(cfg), args.json)
        return 0
    res = run_pipeline(cfg)
    print_summary(res, args.quiet, args.json)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "select",
        help="score a pool and select a subset with a recipe or criteria + selector",
        description="Score DATA with a recipe's criteria and select a subset; writes "
        "DIR/selected.<ext> (the input's format), scores.parquet, manifest.json, "
        "report.html and run.log.",
    )
    p.add_argument("data", help="pool: .jsonl(.gz), .json, .parquet, .csv or a saved HF dataset folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument(
        "--id-column",
        default="id",
        metavar="NAME",
        help="field holding each written row's id (scores.parquet's id; default: id)",
    )
    p.add_argument("--with-scores", action="store_true", help="add the score columns to the written rows")
    p.add_argument(
        "--write-rejected",
        action="store_true",
        help="also write the rows not selected to DIR/rejected.<ext> (same format)",
    )
    add_selection_args(p)
    add_criteria_args(p)
    add_budget_args(p)
    add_data_args(p)
    add_run_args(p)
    add_output_args(p)
    p.set_defaults(func=run)
