"""`thresher score DATA --criteria ifd,perplexity --out scores.parquet`.

A thin verb over the pipeline (score only, no selection): rows are read by the
same readers as every other verb (any format, schema detection, ids), scored by
each criterion through the content-keyed score cache, and written as one table
keyed by ``id`` (Parquet, or CSV/JSONL by extension), atomically. A bad row stops
the run naming file, line and field, unless ``--on-bad-row skip``; rows a
criterion cannot score (an empty answer, ...) get NaN and a ``<criterion>.reason``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

from ..errors import OptionError
from ..io.writers import write_table
from ..pipeline import PipelineConfig, run_pipeline
from ..registry import CRITERIA
from ._common import add_data_args, parse_kv

# common flags handed to every criterion that declares an option of that name
_SHARED_FLAGS = ("model", "batch_tokens", "max_length", "template", "dtype", "device", "embedder")
_LIST_LIMIT = 20


def _criteria(args: argparse.Namespace) -> list:
    names = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if not names:
        raise OptionError("--criteria: give at least one criterion name")
    return [CRITERIA.get(n) for n in names]  # unknown names raise, listing the known ones


def _extra_options(args: argparse.Namespace, names: list) -> dict:
    """``--option CRITERION.KEY=VALUE`` -> {(criterion, key): value}."""
    out = {}
    for item in args.option or []:
        key = item.split("=", 1)[0]
        if "=" not in item or "." not in key:
            raise OptionError(f"--option: expected CRITERION.KEY=VALUE, got {item!r}")
        crit, _, opt = key.partition(".")
        if crit not in names:
            raise OptionError(f"--option {item!r}: criterion {crit!r} is not in --criteria")
        out[(crit, opt)] = parse_kv([f"{opt}={item.split('=', 1)[1]}"], "--option")[opt]
    return out


def _check_flags(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--batch-tokens", args.batch_tokens, 1),
        ("--max-length", args.max_length, 2),
        ("--shard-size", args.shard_size, 1),
        ("--limit", args.limit, 1),
    ):
        if value is not None and value < low:
            raise OptionError(f"{flag}: must be >= {low}, got {value}")


def criterion_steps(args: argparse.Namespace) -> list:
    """One pipeline step per criterion: the shared flags it declares, then its ``--option`` values."""
    entries = _criteria(args)
    extra = _extra_options(args, [e.name for e in entries])
    steps = []
    for e in entries:
        opts = {k: getattr(args, k) for k in _SHARED_FLAGS if getattr(args, k, None) is not None and k in e.options}
        opts.update({opt: v for (crit, opt), v in extra.items() if crit == e.name})
        steps.append({"name": e.name, "options": opts})
    return steps


def _say(msg: str) -> None:
    print(f"thresher score: {msg}", file=sys.stderr)


def _report_rows(res: Any, table: Any, steps: list, verbose: bool) -> None:
    """Skipped input rows and rows a criterion could not score, on stderr."""
    for s in res.skipped[: None if verbose else _LIST_LIMIT]:
        where = f"{s['file']}, line {s['line']}" + (f", field {s['field']!r}" if s.get("field") else "")
        _say(f"skipped bad row: {where}: {s['reason']}")
    if len(res.skipped) > _LIST_LIMIT and not verbose:
        _say(f"skipped {len(res.skipped)} bad rows in all (-v lists them)")
    for st in steps:
        rcol = f"{st['name']}.reason"
        if rcol not in table.columns:
            continue
        bad = table[table[rcol].fillna("").astype(str) != ""]
        if verbose or len(bad) <= _LIST_LIMIT:
            for sid, why in zip(bad["id"], bad[rcol]):
                _say(f"not scored: {sid}: {st['name']}: {why}")
        else:
            _say(f"{st['name']}: {len(bad)} rows not scored (see column {rcol!r}; -v lists them)")


def run_score(args: argparse.Namespace) -> int:
    _check_flags(args)
    steps = criterion_steps(args)
    fields = parse_kv(args.field, "--field") if args.field else None
    on_bad_row = "error" if args.fail_fast else args.on_bad_row
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="thresher-score-") as tmp:
        cfg = PipelineConfig(
            data=args.data,
            out=None,
            criteria=steps,
            score_only=True,
            report=False,
            format=args.format,
            fields=fields,
            group_field=args.group_field,
            on_bad_row=on_bad_row,
            shard_size=args.shard_size,
            limit=args.limit,
            cache_dir=args.cache_dir or tmp,
            quiet=args.quiet,
        )
        res = run_pipeline(cfg)
        table = res.scores()
    _report_rows(res, table, steps, args.verbose)
    write_table(table, args.out)
    summary = ", ".join(
        f"{s['name']}: {int(table[s['name']].notna().sum())}/{len(table)} scored"
        for s in steps
        if s["name"] in table.columns
    )
    _say(f"wrote {args.out} ({len(table)} rows; {summary}; {time.time() - t0:.1f} s)")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score",
        help="score rows with criteria (ifd, perplexity, ...) into a table keyed by id",
        description="Score instruction data with registered criteria (no selection). Reads every format the "
        "other verbs read. Output: one row per input row, columns id, <criterion>, "
        "<criterion>.<component>, <criterion>.reason.",
    )
    p.add_argument("data", help="pool: .jsonl(.gz), .json, .parquet, .csv or a saved HF dataset folder")
    p.add_argument("--criteria", required=True, help="comma-separated criterion names, e.g. ifd,perplexity")
    p.add_argument("--out", required=True, help="output table (.parquet; .csv or .jsonl by extension)")
    p.add_argument("--model", default=None, help="default | PATH | HF_ID (criteria that use a causal LM)")
    p.add_argument("--embedder", default=None, help="sentence embedder for embedding criteria (knn_distance, ...)")
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget per batch (default 4096)")
    p.add_argument("--max-length", type=int, default=None, help="max tokens per sample (default per criterion)")
    p.add_argument("--template", default=None, help="prompt template: alpaca | chat | plain | wiz")
    p.add_argument("--dtype", default=None, help="model dtype: float32 | bfloat16 | float16")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument(
        "--option",
        action="append",
        metavar="CRITERION.KEY=VALUE",
        help="criterion option, e.g. --option ifd.ratio=ppl (repeatable)",
    )
    p.add_argument("--cache-dir", default=None, help="keep the per-shard score cache here (resumable, shareable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or pipeline messages")
    p.add_argument("-v", "--verbose", action="store_true", help="list every skipped or unscored row")
    p.add_argument("--fail-fast", action="store_true", help=argparse.SUPPRESS)  # the default now: --on-bad-row error
    add_data_args(p)
    p.add_argument(
        "--chunk", type=int, dest="shard_size", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )  # older name of --shard-size
    p.set_defaults(func=run_score)
