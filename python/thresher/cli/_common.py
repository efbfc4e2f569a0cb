"""Arguments shared by the pipeline verbs (select, score, run, demo)."""

from __future__ import annotations

import argparse
from typing import Any, Optional


def parse_kv(items: Optional[list], what: str) -> dict:
    """``["a=1", "b=[x, y]"]`` -> ``{"a": 1, "b": ["x", "y"]}`` (values read as YAML scalars/lists)."""
    import yaml

    out: dict = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"{what}: expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        k = k.strip()
        if not k:
            raise ValueError(f"{what}: empty key in {it!r}")
        try:
            out[k] = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError:
            out[k] = v
    return out


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument(
        "--format",
        choices=["jsonl", "json", "parquet", "csv", "hf"],
        default=None,
        help="input format (default: from the extension; folders: HF dataset or the files inside)",
    )
    g.add_argument(
        "--field",
        action="append",
        metavar="TARGET=COLUMN",
        default=None,
        help="explicit field mapping, e.g. --field instruction=question --field output=answer "
        "(targets: instruction, input, output, conversation, id, group)",
    )
    g.add_argument("--group-field", default=None, help="column holding the task/source (default: task, source, ...)")
    g.add_argument(
        "--on-bad-row",
        choices=["error", "skip"],
        default="error",
        help="error (default): stop at the first bad row naming file, line and field; skip: count and "
        "report skipped rows",
    )
    g.add_argument("--shard-size", type=int, default=4096, help="rows per shard (memory and cache granularity)")
    g.add_argument("--limit", type=int, default=None, help="read only the first N good rows")


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace another run's results in --out (the content-keyed score cache is kept)",
    )
    g.add_argument("--cache-dir", default=None, help="score cache folder (default OUT/cache; share it across runs)")
    g.add_argument("--engine", choices=["local", "ray"], default="local", help="local (default) or Ray Data")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--plugin",
        action="append",
        default=None,
        metavar="MODULE_OR_FILE",
        help="import a module or .py file that registers extra criteria/selectors/recipes (also THRESHER_PLUGINS)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars or messages (the log file still is written)")


def add_budget_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--ratio", type=float, default=None, help="select this fraction of the pool")
    g.add_argument("--k", type=int, default=None, help="select N samples")
    g.add_argument("--tokens", type=int, default=None, help="select up to T tokens (approximate count)")


def common_config(args: Any) -> dict:
    fields = parse_kv(args.field, "--field") if getattr(args, "field", None) else None
    if fields:
        fields = {k: (None if v in (None, "") else str(v)) for k, v in fields.items()}
    return dict(
        format=args.format,
        fields=fields,
        group_field=args.group_field,
        on_bad_row=args.on_bad_row,
        shard_size=args.shard_size,
        limit=args.limit,
        overwrite=getattr(args, "overwrite", False),
        cache_dir=getattr(args, "cache_dir", None),
        engine=getattr(args, "engine", "local"),
        seed=getattr(args, "seed", 0),
        plugins=getattr(args, "plugin", None) or [],
        quiet=getattr(args, "quiet", False),
    )


def criteria_steps(spec: Optional[str], options: Optional[list]) -> list:
    """``--criteria ifd,knn_distance`` plus ``--criterion-option ifd.max_length=256``."""
    if not spec:
        return []
    names = [c.strip() for c in spec.split(",") if c.strip()]
    opts = parse_kv(options, "--criterion-option")
    steps = []
    for n in names:
        o = {}
        for k, v in opts.items():
            if "." not in k:
                raise ValueError(f"--criterion-option: write CRITERION.OPTION=VALUE, got {k!r}")
            c, _, name = k.partition(".")
            if c == n:
                o[name] = v
        steps.append({"name": n, "options": o})
    unknown = {k.partition(".")[0] for k in opts} - set(names)
    if unknown:
        raise ValueError(f"--criterion-option: {sorted(unknown)} not among --criteria {names}")
    return steps


def print_summary(res: Any, quiet: bool) -> None:
    if quiet:
        return
    print(f"selected {len(res.selected)} of {res.n_rows} rows -> {res.out}")
    for p in (res.selected_path, res.scores_path, res.report_path):
        if p is not None:
            print(f"  {p}")
    if res.skipped:
        print(f"  skipped {len(res.skipped)} bad row(s); see manifest.json")
