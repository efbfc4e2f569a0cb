"""`thresher select DATA --recipe NAME (--ratio R | --k N | --tokens T) --out DIR`."""

from __future__ import annotations

from typing import Any

from ..pipeline import PipelineConfig, run_pipeline
from ._common import (
    add_budget_args,
    add_data_args,
    add_run_args,
    common_config,
    criteria_steps,
    parse_kv,
    print_summary,
)


def run(args: Any) -> int:

    if not args.recipe and not args.criteria:
        raise ValueError("give --recipe NAME (see `thresher recipes`) or --criteria C1,C2 with --selector")
    sel = None
    if args.selector:
        sel = {"name": args.selector, "options": parse_kv(args.selector_option, "--selector-option")}
    elif args.selector_option:
        raise ValueError("--selector-option needs --selector")
    cfg = PipelineConfig(
        data=args.data,
        out=args.out,
        recipe=args.recipe,
        recipe_options=parse_kv(args.option, "--option"),
        criteria=criteria_steps(args.criteria, args.criterion_option),
        selector=sel,
        filters=args.filter or [],
        k=args.k,
        ratio=args.ratio,
        tokens=args.tokens,
        model=args.model,
        embedder=args.embedder,
        report=not args.no_report,
        **common_config(args),
    )
    if cfg.k is None and cfg.ratio is None and cfg.tokens is None and not args.recipe:
        raise ValueError("budget: give --ratio R, --k N or --tokens T")
    res = run_pipeline(cfg)
    print_summary(res, args.quiet)
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
    p.add_argument("--recipe", default=None, help="recipe name (see `thresher recipes`)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="recipe option (repeatable)")
    p.add_argument("--criteria", default=None, help="comma-separated criteria (instead of or overriding a recipe)")
    p.add_argument("--criterion-option", action="append", metavar="CRIT.KEY=VALUE")
    p.add_argument("--selector", default=None, help="selector name (topk, threshold, pareto, weighted, rrf, ...)")
    p.add_argument("--selector-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--filter", action="append", metavar="EXPR", help="eligibility filter, e.g. 'ifd <= 1'")
    p.add_argument("--model", default=None, help="causal LM for model-based criteria (default, folder or HF id)")
    p.add_argument("--embedder", default=None, help="sentence embedder for embedding criteria")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    add_budget_args(p)
    add_data_args(p)
    add_run_args(p)
    p.set_defaults(func=run)
