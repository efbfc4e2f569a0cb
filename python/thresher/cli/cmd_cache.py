"""`thresher cache ls|prune`: what the score cache holds, and removing what is no longer needed.

The score cache (``--cache-dir`` of the pipeline verbs; ``OUT/cache`` by default) holds
one Parquet table per (shard, criterion key) under ``<criterion>/``, and the
embeddings store under ``embeddings/``. A run that stopped also leaves its
checkpoints there, counted as entries of their criterion: ``<key>.partial.parquet``
(the rows of a shard done so far) and ``<criterion>/search-checkpoints/`` (the
blocks of a pool-wide call: a kNN search, semdedup, nuggets, shed, necessity). Entries are keyed by each criterion's own
version, options and model, never by the thresher version: an upgrade keeps the
scores of the criteria it did not change. ``--cache-dir`` also takes a run's output
folder (its ``cache/`` is used).

  thresher cache ls --cache-dir D [--json]
  thresher cache prune --cache-dir D (--older-than DAYS | --criterion NAME | --all) [--dry-run]

``--older-than`` counts days since an entry was last written or read.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from ..cache import cache_summary, prune, prune_candidates
from ..errors import OptionError, ResourceError
from ._common import emit_json


def cache_dir(args: Any) -> Path:
    given = args.cache_dir or os.environ.get("THRESHER_CACHE_DIR")
    if not given:
        raise OptionError("cache: give --cache-dir D (a run's cache is OUT/cache; or set THRESHER_CACHE_DIR)")
    d = Path(given)
    if not d.is_dir():
        raise ResourceError(f"--cache-dir: {d} is not a folder")
    if (d / "cache").is_dir() and ((d / "manifest.json").is_file() or (d / "run.json").is_file()):
        return d / "cache"  # a run's output folder
    return d


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _day(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def run_ls(args: Any) -> int:
    root = cache_dir(args)
    groups = cache_summary(root)
    if args.json:
        emit_json({"cache_dir": str(root), "groups": groups,
                   "entries": sum(g["entries"] for g in groups), "bytes": sum(g["bytes"] for g in groups)})  # fmt: skip
        return 0
    if not groups:
        print(f"{root}: empty")
        return 0
    w = max([len(g["name"]) for g in groups] + [9])
    print(f"{'criterion':{w}s}  {'kind':10s} {'entries':>8s} {'size':>10s}  last used")
    for g in groups:
        print(f"{g['name']:{w}s}  {g['kind']:10s} {g['entries']:8d} {_size(g['bytes']):>10s}  {_day(g['newest'])}")
    total = sum(g["bytes"] for g in groups)
    print(f"{'total':{w}s}  {'':10s} {sum(g['entries'] for g in groups):8d} {_size(total):>10s}  ({root})")
    return 0


def run_prune(args: Any) -> int:
    root = cache_dir(args)
    try:
        entries = prune_candidates(root, older_than_days=args.older_than, criterion=args.criterion, everything=args.all)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    total = sum(e.bytes for e in entries)
    by_group: dict[str, list] = {}
    for e in entries:
        by_group.setdefault(e.group, []).append(e)
    if args.dry_run:
        if args.json:
            emit_json({"dry_run": True, "cache_dir": str(root), "entries": len(entries), "bytes": total,
                       "files": [str(f) for e in entries for f in e.files]})  # fmt: skip
            return 0
        for g, es in by_group.items():
            print(
                f"would remove {g}: {len(es)} entr{'y' if len(es) == 1 else 'ies'}, {_size(sum(e.bytes for e in es))}"
            )
            for e in es:
                print(f"  {e.files[0]}  ({_day(e.mtime)})")
        print(f"would remove {len(entries)} entries, {_size(total)} (dry run: nothing removed)")
        return 0
    n, freed = prune(root, entries)
    if args.json:
        emit_json({"cache_dir": str(root), "removed": n, "bytes": freed})
    else:
        print(f"removed {n} entries, {_size(freed)} from {root}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="list or prune the score cache (ls, prune)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    verbs = p.add_subparsers(dest="cache_command", metavar="ls|prune")
    ls = verbs.add_parser("ls", help="criteria, entries and bytes in a cache folder")
    pr = verbs.add_parser("prune", help="remove old entries, one criterion's, or all (--dry-run lists them)")
    for q in (ls, pr):
        q.add_argument("--cache-dir", default=None, help="the cache folder, or a run's output folder")
        q.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    pr.add_argument("--older-than", type=float, default=None, metavar="DAYS", help="entries not used for DAYS days")
    pr.add_argument("--criterion", default=None, metavar="NAME", help="entries of this criterion (or 'embeddings')")
    pr.add_argument("--all", action="store_true", help="every entry")
    pr.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")

    def dispatch(args: Any) -> int:
        if args.cache_command == "ls":
            return run_ls(args)
        if args.cache_command == "prune":
            return run_prune(args)
        p.print_help()
        return 2

    p.set_defaults(func=dispatch)
