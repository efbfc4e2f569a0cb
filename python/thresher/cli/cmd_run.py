"""`thresher run CONFIG.yaml`: a whole pipeline from a config file.

Keys (see thresher.pipeline.PipelineConfig): data, out, recipe, recipe_options,
criteria (names or {name, options, as}), selector ({name, options}), filters,
k | ratio | tokens, model, embedder, device, dtype, format, fields, group_field, on_bad_row,
shard_size, checkpoint_s, limit, seed, cache_dir, overwrite, report, engine, engine_options,
plugins. Relative paths are relative to the config file. The plugins a config
names are imported only with --allow-plugins (a config file cannot allow itself).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ..pipeline import PipelineConfig, run_pipeline
from ._common import (
    add_engine_args,
    add_output_args,
    add_overwrite_arg,
    add_plugin_args,
    engine_options,
    plan_preview,
    print_plan,
    print_summary,
)


def run(args: Any) -> int:

    cfg = PipelineConfig.from_file(args.config)
    if args.overwrite:
        cfg.overwrite = True
    if args.quiet or args.json:
        cfg.quiet = True
    if args.out:
        cfg.out = args.out
    cfg.plugins = list(cfg.plugins) + list(args.plugin or [])
    cfg.allow_plugins = bool(args.allow_plugins)
    flags = engine_options(SimpleNamespace(**{**vars(args), "engine": args.engine or cfg.engine}))
    if args.engine is not None and args.engine != cfg.engine:  # --engine overrides the config's engine
        cfg.engine, cfg.engine_options = args.engine, {}
    cfg.engine_options = {**(cfg.engine_options or {}), **flags}
    if args.dry_run:
        print_plan(plan_preview(cfg), args.json)
        return 0
    res = run_pipeline(cfg)
    print_summary(res, cfg.quiet, args.json)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a whole pipeline from a YAML/JSON config file",
        description=__doc__.split("\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("config", help="CONFIG.yaml or .json")
    p.add_argument("--out", default=None, help="override the config's output folder")
    add_overwrite_arg(p, "replace another run's results in the output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    add_output_args(p)
    add_plugin_args(p, config=True)
    add_engine_args(p.add_argument_group("engine (override the config)"), default=None)
    p.set_defaults(func=run)
