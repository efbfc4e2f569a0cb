"""`thresher score DATA --criteria ifd,perplexity --out scores.parquet`.

A thin verb over the pipeline (score only, no selection): rows are read by the
same readers as every other verb (any format, schema detection, ids), scored by
each criterion (or a recipe's criteria) through the content-keyed score cache,
and written as one table keyed by ``id`` (Parquet, or CSV/JSONL by extension),
atomically. A bad row stops the run naming file, line and field, unless
``--on-bad-row skip``; rows a criterion cannot score (an empty answer, ...) get
NaN and a ``<criterion>.reason``. Without ``--cache-dir`` the cache is a temporary folder named
after the input and the output (:func:`resume_cache`): the same command run again after a kill, a
crash or Ctrl-C resumes where the last one stopped; it is removed once the table is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import OptionError, ResourceError, ThresherError
from ..io.writers import check_table_out, write_table
from ..pipeline import PipelineConfig, run_pipeline
from ._common import (
    add_checkpoint_arg,
    add_criteria_args,
    add_data_args,
    add_engine_args,
    add_output_args,
    add_overwrite_arg,
    add_plugin_args,
    add_selection_args,
    check_positive,
    common_config,
    criteria_steps,
    emit_json,
    plan_preview,
    print_plan,
    split_options,
)

_LIST_LIMIT = 20


def _say(msg: str) -> None:
    print(f"thresher score: {msg}", file=sys.stderr)


def _report_rows(res: Any, table: Any, cols: list, verbose: bool) -> None:
    """Skipped input rows and rows a criterion could not score, on stderr."""
    for s in res.skipped[: None if verbose else _LIST_LIMIT]:
        where = f"{s['file']}, line {s['line']}" + (f", field {s['field']!r}" if s.get("field") else "")
        _say(f"skipped bad row: {where}: {s['reason']}")
    if len(res.skipped) > _LIST_LIMIT and not verbose:
        _say(f"skipped {len(res.skipped)} bad rows in all (-v lists them)")
    for name in cols:
        rcol = f"{name}.reason"
        if rcol not in table.columns:
            continue
        bad = table[table[rcol].fillna("").astype(str) != ""]
        if verbose or len(bad) <= _LIST_LIMIT:
            for sid, why in zip(bad["id"], bad[rcol]):
                _say(f"not scored: {sid}: {name}: {why}")
        else:
            _say(f"{name}: {len(bad)} rows not scored (see column {rcol!r}; -v lists them)")


def config(args: argparse.Namespace, cache_dir: Any) -> PipelineConfig:
    if not args.criteria and not args.recipe:
        raise OptionError("--criteria: give at least one criterion (see `thresher criteria`), or --recipe NAME")
    check_positive(args)
    recipe_opts, crit_opts = split_options(args)
    kw = common_config(args)
    kw["cache_dir"] = args.cache_dir or cache_dir
    return PipelineConfig(
        data=args.data,
        out=None,
        recipe=args.recipe,
        recipe_options=recipe_opts,
        criteria=criteria_steps(args.criteria, crit_opts),
        score_only=True,
        report=False,
        **kw,
    )


def resume_cache(data: Any, out: Any) -> Path:
    """The score cache of a run without ``--cache-dir``: a folder in the temporary folder named after
    the input and the output, so the same command run again after a kill, a crash or Ctrl-C resumes
    from the shards (and checkpoints) already scored; removed once the table is written."""
    ident = json.dumps([os.path.abspath(str(data)), os.path.abspath(str(out))])
    return Path(tempfile.gettempdir()) / f"thresher-score-{hashlib.blake2b(ident.encode(), digest_size=8).hexdigest()}"


def _has_scores(cache: Path) -> bool:
    return cache.is_dir() and any(cache.rglob("*.parquet"))


def _score_table(args: argparse.Namespace, cfg: PipelineConfig, own: Any) -> tuple:
    """Run the pipeline; a run that stops leaves its own cache (``own``) in place and says where."""
    if own is not None and _has_scores(own) and not args.quiet:
        _say(f"resuming from the scores an earlier run of this command left in {own}")
    try:
        res = run_pipeline(cfg)
        return res, res.scores()
    except BaseException:
        if own is not None and _has_scores(own):
            _say(f"the scores computed so far are kept in {own}: the same command resumes from them")
        raise


def run_score(args: argparse.Namespace) -> int:
    out = Path(args.out)
    t0 = time.time()
    own = None if args.cache_dir else resume_cache(args.data, out)
    cfg = config(args, str(own) if own is not None else None)
    if args.dry_run:
        print_plan(plan_preview(cfg), args.json)
        return 0
    check_table_out(out, args.data, args.overwrite)  # before any scoring: a late refusal wastes the run
    res, table = _score_table(args, cfg, own)
    crits = [c.get("as") or c["name"] for c in res.manifest.get("criteria", [])]
    cols = [c for c in crits if c in table.columns]  # the criteria only (not tokens, source_file, ...)
    if args.verbose or not args.quiet:  # --quiet: the counts are in the one result line
        _report_rows(res, table, cols, args.verbose)
    _write_or_keep(table, out)
    if own is not None:  # the table is written: the run's own cache has served
        shutil.rmtree(own, ignore_errors=True)
    counts = {c: int(table[c].notna().sum()) for c in cols}
    if args.json:
        cache = {"hits": res.cache_hits, "misses": res.cache_misses}
        secs = round(time.time() - t0, 3)
        emit_json({"out": str(out), "rows": len(table), "scored": counts, "skipped": len(res.skipped), "cache": cache,
                   "seconds": secs})  # fmt: skip
    else:  # the one result line, also with --quiet (which silences bars and pipeline messages)
        summary = ", ".join(f"{c}: {n}/{len(table)} scored" for c, n in counts.items())
        if res.skipped:
            summary += f"; {len(res.skipped)} bad rows skipped"
        _say(f"wrote {out} ({len(table)} rows; {summary}; {time.time() - t0:.1f} s)")
    return 0


def _write_or_keep(table: Any, out: Path) -> None:
    """Write the table; if that fails now (the disk filled, the folder went away), keep it in a
    temporary Parquet file named in the error, so the scores are not lost with the run's cache."""
    try:
        write_table(table, out)
    except (OSError, ThresherError) as exc:
        fd, keep = tempfile.mkstemp(prefix="thresher-scores-", suffix=".parquet")
        os.close(fd)
        try:
            table.to_parquet(keep, index=False)
        except Exception:  # nowhere to keep them either: the first error is the one to report
            os.unlink(keep)
            raise exc from None
        raise ResourceError(f"{exc}; the scores are kept in {keep}") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score",
        help="score rows with criteria (ifd, perplexity, ...) into a table keyed by id",
        description="Score instruction data with registered criteria (no selection). Reads every format the "
        "other verbs read. Output: one row per input row, columns id, <criterion>, "
        "<criterion>.<component>, <criterion>.reason.",
    )
    p.add_argument("data", help="pool: .jsonl(.gz), .json, .parquet, .csv or a saved HF dataset folder")
    p.add_argument(
        "--out",
        required=True,
        help="output table (.parquet; .csv or .jsonl by extension; written atomically; an existing scores "
        "table is replaced, any other file only with --overwrite)",
    )
    add_criteria_args(p)
    add_selection_args(p, recipe_only=True)
    add_data_args(p)
    g = p.add_argument_group("run")
    g.add_argument(
        "--cache-dir",
        default=None,
        help="keep the per-shard score cache here (resumable, shareable; default: a temporary folder named after "
        "the input and --out, which the same command resumes from after a kill, and which is removed once the "
        "table is written)",
    )
    add_checkpoint_arg(g)
    add_overwrite_arg(g, "replace an existing --out file that is not a scores table (never the input itself)")
    add_engine_args(g)
    add_plugin_args(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars or pipeline messages")
    g.add_argument("-v", "--verbose", action="store_true", help="list every skipped or unscored row")
    add_output_args(p)
    p.set_defaults(func=run_score)
