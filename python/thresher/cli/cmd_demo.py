"""`thresher demo`: the main job on bundled defaults.

Scores the bundled BIG-bench sample pool (python/thresher/data, Apache-2.0, see
ATTRIBUTION.md) with IFD (default LM: SmolLM2-135M-Instruct) and kNN diversity
(default embedder: all-MiniLM-L6-v2), selects 5% with the multi-objective recipe
(Pareto rank over ifd:max and knn_distance:max, IFD > 1 dropped, diversity
constraint tau = 0.9), and writes the subset, scores, manifest and report.html.
Runs offline; sized to finish within 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..pipeline import PipelineConfig, run_pipeline
from ._common import print_summary

DEMO_POOL = Path(__file__).resolve().parents[1] / "data" / "bigbench-sample.jsonl.gz"
DEMO_LIMIT = 1500
DEMO_MAX_LENGTH = 256


def run(args: Any) -> int:

    data = Path(args.data) if args.data else DEMO_POOL
    if not data.exists():
        raise FileNotFoundError(f"demo pool {data} is missing (regenerate it with benchmarks/make_sample_pool.py)")
    opts = {"method": args.method, "max_length": args.max_length, "diversity_tau": args.diversity_tau}
    cfg = PipelineConfig(
        data=str(data),
        out=args.out,
        recipe="multi-objective",
        recipe_options=opts,
        ratio=args.ratio,
        model=args.model,
        embedder=args.embedder,
        limit=args.limit,
        overwrite=args.overwrite,
        quiet=args.quiet,
        shard_size=args.shard_size,
    )
    if not args.quiet:
        print(
            f"thresher demo: {data.name} (first {args.limit} rows), IFD ({args.model}) + kNN diversity "
            f"({args.embedder}), {args.method} selection of {args.ratio:.0%} -> {args.out}"
        )
    res = run_pipeline(cfg)
    print_summary(res, args.quiet)
    if not args.quiet and res.report_path:
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
        "--max-length",
        type=int,
        default=DEMO_MAX_LENGTH,
        help=f"max tokens per sample for IFD (default {DEMO_MAX_LENGTH})",
    )
    p.add_argument("--ratio", type=float, default=0.05, help="fraction to select (default 0.05)")
    p.add_argument("--method", choices=["pareto", "weighted", "rrf"], default="pareto")
    p.add_argument("--diversity-tau", type=float, default=0.9)
    p.add_argument("--model", default="default", help="causal LM for IFD (default SmolLM2-135M-Instruct)")
    p.add_argument("--embedder", default="default", help="sentence embedder (default all-MiniLM-L6-v2)")
    p.add_argument("--shard-size", type=int, default=200, help="rows per shard (cache and progress granularity)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
