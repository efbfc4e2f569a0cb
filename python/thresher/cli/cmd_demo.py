"""`thresher demo`: the main job on bundled defaults.

Scores the bundled BIG-bench sample pool (python/thresher/data, Apache-2.0, see
ATTRIBUTION.md) with IFD (default LM: SmolLM2-135M-Instruct) and kNN diversity
(default embedder: all-MiniLM-L6-v2), selects 5% with the multi-objective recipe
(Pareto rank over ifd:max and knn_distance:max, IFD > 1 dropped, diversity
constraint tau = 0.9; change them with --option method=rrf, --option
diversity_tau=0.8, ...), and writes the subset, scores, manifest and report.html.
Runs offline; sized to finish within 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..device import DTYPE_CHOICES
from ..errors import ResourceError
from ..pipeline import PipelineConfig, run_pipeline
from ._common import (
    add_budget_args,
    add_output_args,
    add_overwrite_arg,
    check_positive,
    deprecated_kv,
    parse_kv,
    plan_preview,
    print_plan,
    print_summary,
)

DEMO_POOL = Path(__file__).resolve().parents[1] / "data" / "bigbench-sample.jsonl.gz"
DEMO_RECIPE = "multi-objective"
DEMO_LIMIT = 1500
DEMO_MAX_LENGTH = 256
DEMO_RATIO = 0.05


def config(args: Any) -> PipelineConfig:
    data = Path(args.data) if args.data else DEMO_POOL
    if not data.exists():
        raise ResourceError(f"demo pool {data} is missing (regenerate it with benchmarks/make_sample_pool.py)")
    check_positive(args)
    budget = {"k": args.k, "ratio": args.ratio, "tokens": args.tokens}
    if all(v is None for v in budget.values()):
        budget["ratio"] = DEMO_RATIO
    return PipelineConfig(
        data=str(data),
        out=args.out,
        recipe=DEMO_RECIPE,
        recipe_options={"max_length": args.max_length, **parse_kv(args.option, "--option")},
        model=args.model,
        embedder=args.embedder,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        overwrite=args.overwrite,
        quiet=args.quiet or args.json,
        shard_size=args.shard_size,
        cache_dir=args.cache_dir,
        seed=args.seed,
        **budget,
    )


def run(args: Any) -> int:
    cfg = config(args)
    if args.dry_run:
        print_plan(plan_preview(cfg), args.json)
        return 0
    if not cfg.quiet:
        budget = f"{cfg.ratio:.0%}" if cfg.ratio is not None else str(cfg.budget())
        print(
            f"thresher demo: {Path(cfg.data).name} (first {args.limit} rows), IFD ({args.model}) + kNN diversity "
            f"({args.embedder}), {DEMO_RECIPE} selection of {budget} -> {args.out}"
        )
    res = run_pipeline(cfg)
    print_summary(res, cfg.quiet, args.json)
    if not cfg.quiet and res.report_path:
        print(f"open {res.report_path} in a browser")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="score and select the bundled sample pool with the default models",
        description=__doc__.split("\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("--out", default="thresher-demo", help="output folder (default ./thresher-demo)")
    p.add_argument("--data", default=None, help="another pool instead of the bundled one")
    p.add_argument("--limit", type=int, default=DEMO_LIMIT, help=f"rows of the pool to use (default {DEMO_LIMIT})")
    p.add_argument(
        "--max-length", type=int, default=DEMO_MAX_LENGTH, help=f"max tokens per sample (default {DEMO_MAX_LENGTH})"
    )
    p.add_argument(
        "--option", action="append", default=None, metavar="KEY=VALUE", help=f"option of the {DEMO_RECIPE} recipe"
    )
    add_budget_args(p)
    p.add_argument("--model", default="default", help="causal LM for IFD (default SmolLM2-135M-Instruct)")
    p.add_argument("--embedder", default="default", help="sentence embedder (default all-MiniLM-L6-v2)")
    p.add_argument("--device", default=None, help="torch device: auto (default: cuda when visible), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="model dtype (auto: bf16 on a bf16 GPU)")
    p.add_argument("--shard-size", type=int, default=200, help="rows per shard (cache and progress unit; 200)")
    p.add_argument("--cache-dir", default=None, help="score cache folder (default OUT/cache)")
    p.add_argument("--seed", type=int, default=0)
    add_overwrite_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    add_output_args(p)
    deprecated_kv(p, "--method", "option", "--option", "method")
    deprecated_kv(p, "--diversity-tau", "option", "--option", "diversity_tau")
    p.set_defaults(func=run)
