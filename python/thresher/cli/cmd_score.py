"""`thresher score DATA.jsonl --criteria ifd,perplexity --out scores.parquet`.

Reads rows (``instruction``, optional ``input``, ``output``, optional ``id``;
or a ``conversation``/``messages`` list), runs each criterion from the registry
over chunks of rows and writes one table keyed by ``id`` (Parquet, or CSV/JSONL
by extension), atomically. Bad rows are reported on stderr with file, line and
field; they get NaN scores and a reason, and never stop the run unless
``--fail-fast``. The reader here is deliberately minimal (JSONL, optionally
gzipped, or a JSON array); :mod:`thresher.io` provides the general ones.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional


# ------------------------------------------------------------------ reading
class BadRow(ValueError):
    pass


def _check_row(obj: Any, where: str) -> Optional[str]:
    """The first problem of a parsed row (naming the field), or None."""
    if not isinstance(obj, dict):
        return f"{where}: expected a JSON object, got {type(obj).__name__}"
    conv = next((obj[k] for k in ("conversation", "messages", "conversations") if obj.get(k) is not None), None)
    if conv is not None:
        if not isinstance(conv, list) or not conv:
            return f"{where}: field 'conversation' must be a non-empty list of messages"
        return None
    for name, required in (("instruction", True), ("input", False), ("output", True)):
        v = obj.get(name)
        if v is None:
            if required:
                return f"{where}: missing field {name!r}"
            continue
        if not isinstance(v, str):
            return f"{where}: field {name!r} must be a string, got {type(v).__name__}"
    if "id" in obj and not isinstance(obj["id"], (str, int)) and obj["id"] is not None:
        return f"{where}: field 'id' must be a string or an integer, got {type(obj['id']).__name__}"
    return None


def read_rows(path: str, *, limit: Optional[int] = None, fail_fast: bool = False):
    """-> (rows: list[dict] with id, problems: list[str], line_of: {id: "file:line"}).

    Rows that are not JSON objects are dropped (reported); rows with a bad field
    are kept (the criteria return NaN + reason for them) and reported."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {path!r} does not exist")
    opener = gzip.open if p.name.endswith(".gz") else open
    rows: list[dict] = []
    problems: list[str] = []
    line_of: dict[str, str] = {}
    seen: set[str] = set()
    name = p.name[:-3] if p.name.endswith(".gz") else p.name

    def add(obj: Any, where: str, default_id: str) -> None:
        msg = _check_row(obj, where)
        if msg and fail_fast:
            raise BadRow(msg)
        if not isinstance(obj, dict):
            problems.append(msg)
            return
        sid = obj.get("id")
        sid = default_id if sid is None or isinstance(sid, (dict, list, float)) else str(sid)
        if sid in seen:
            m = f"{where}: duplicate id {sid!r}"
            if fail_fast:
                raise BadRow(m)
            problems.append(m)
            sid = f"{sid}@{default_id}"
        seen.add(sid)
        if msg:
            problems.append(msg)
        row = dict(obj)
        row["id"] = sid
        rows.append(row)
        line_of[sid] = where

    try:
        with opener(p, "rt", encoding="utf-8") as f:
            if name.endswith(".json"):
                try:
                    data = json.load(f)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(data, list):
                    raise ValueError(f"{path}: expected a JSON array of rows")
                for i, obj in enumerate(data):
                    add(obj, f"{path}[{i}]", str(i))
                    if limit is not None and len(rows) >= limit:
                        break
            else:
                n = 0
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{lineno}"
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        m = f"{where}: invalid JSON ({exc.msg})"
                        if fail_fast:
                            raise BadRow(m) from None
                        problems.append(m)
                        continue
                    add(obj, where, str(n))
                    n += 1
                    if limit is not None and len(rows) >= limit:
                        break
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    except (OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read ({exc})") from None
    return rows, problems, line_of


# ------------------------------------------------------------------ writing
def write_table_atomic(df: Any, out: str) -> None:
    """Parquet (default), .csv or .jsonl, written to a temporary sibling, fsynced, renamed."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        low = p.name.lower()
        if low.endswith(".csv"):
            df.to_csv(tmp, index=False)
        elif low.endswith(".jsonl"):
            df.to_json(tmp, orient="records", lines=True, force_ascii=False)
        else:
            df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------------ command
def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def criterion_options(entry: Any, args: argparse.Namespace, extra: dict) -> dict:
    """Options for one criterion: the common flags it knows, then NAME.KEY=VALUE overrides."""
    opts: dict = {}
    flags = {"model": args.model, "batch_tokens": args.batch_tokens, "max_length": args.max_length,
             "template": args.template, "dtype": args.dtype, "device": args.device}
    for k, v in flags.items():
        if v is not None and k in entry.options:
            opts[k] = v
    for key, v in extra.items():
        crit, _, opt = key.partition(".")
        if crit == entry.name:
            opts[opt] = v
    return opts


def _needs_pipeline(args: argparse.Namespace, entries: list) -> bool:
    """Formats other than JSONL/JSON, field mappings, embedders, caches and pool-scoped
    criteria (kNN distance, ...) go through thresher.pipeline (streamed shards, score cache)."""
    from ..pipeline import is_pool_scoped

    low = str(args.data).lower().removesuffix(".gz")
    simple = Path(args.data).is_file() and (low.endswith(".jsonl") or low.endswith(".json"))
    return (not simple or bool(getattr(args, "format", None) or getattr(args, "field", None)
                              or getattr(args, "embedder", None) or getattr(args, "cache_dir", None))
            or any(is_pool_scoped(e.name) for e in entries))


def run_score_pipeline(args: argparse.Namespace, entries: list, extra: dict) -> int:
    """`thresher score` over thresher.io readers and the pipeline's score cache."""
    import tempfile as _tf

    from ..pipeline import PipelineConfig, score_pool
    from ._common import parse_kv

    steps = []
    for e in entries:
        o = criterion_options(e, args, extra)
        if getattr(args, "embedder", None) and "embedder" in e.options:
            o.setdefault("embedder", args.embedder)
        steps.append({"name": e.name, "options": o})
    fields = parse_kv(args.field, "--field") if getattr(args, "field", None) else None
    t0 = time.time()
    with _tf.TemporaryDirectory(prefix="thresher-score-") as tmp:
        cfg = PipelineConfig(data=args.data, criteria=steps, format=getattr(args, "format", None), fields=fields,
                             on_bad_row="error" if args.fail_fast else "skip", limit=args.limit,
                             shard_size=args.chunk, cache_dir=getattr(args, "cache_dir", None) or tmp,
                             quiet=getattr(args, "quiet", False), report=False)
        out = score_pool(cfg)
    write_table_atomic(out, args.out)
    summary = ", ".join(f"{e.name}: {int(out[e.name].notna().sum())}/{len(out)} scored" for e in entries)
    print(f"thresher score: wrote {args.out} ({len(out)} rows; {summary}; {time.time() - t0:.1f} s)",
          file=sys.stderr)
    return 0


def run_score(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..registry import CRITERIA

    names = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if not names:
        raise ValueError("--criteria: give at least one criterion name")
    entries = [CRITERIA.get(n) for n in names]  # unknown names raise ValueError listing the known ones
    extra: dict = {}
    for item in args.option or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--option: expected CRITERION.KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k.split(".", 1)[0] not in names:
            raise ValueError(f"--option {item!r}: criterion {k.split('.', 1)[0]!r} is not in --criteria")
        extra[k] = _parse_value(v)
    if args.batch_tokens is not None and args.batch_tokens <= 0:
        raise ValueError(f"--batch-tokens: must be > 0, got {args.batch_tokens}")
    if args.max_length is not None and args.max_length < 2:
        raise ValueError(f"--max-length: must be >= 2, got {args.max_length}")
    if args.chunk <= 0:
        raise ValueError(f"--chunk: must be > 0, got {args.chunk}")
    if _needs_pipeline(args, entries):
        return run_score_pipeline(args, entries, extra)

    try:
        rows, problems, line_of = read_rows(args.data, limit=args.limit, fail_fast=args.fail_fast)
    except BadRow as exc:
        raise ValueError(f"{exc} (--fail-fast)") from None
    for m in problems:
        print(f"thresher score: bad row: {m}", file=sys.stderr)
    if not rows:
        raise ValueError(f"{args.data}: no rows to score")
    t0 = time.time()
    scorers = [(e, e.obj(**criterion_options(e, args, extra))) for e in entries]
    out = pd.DataFrame({"id": [r["id"] for r in rows]})
    for e, sc in scorers:
        parts = []
        for s in range(0, len(rows), args.chunk):
            chunk = pd.DataFrame(rows[s:s + args.chunk])
            parts.append(sc(chunk))
        res = pd.concat(parts, ignore_index=True)
        rcol = f"{e.name}.reason"
        if rcol in res.columns:
            bad = res[res[rcol].astype(str) != ""]
            for sid, why in zip(bad["id"], bad[rcol]):
                msg = f"{line_of.get(str(sid), '?')}: {e.name}: {why}"
                if args.fail_fast:
                    raise ValueError(f"{msg} (--fail-fast)")
                if args.verbose or len(bad) <= 20:
                    print(f"thresher score: not scored: {msg}", file=sys.stderr)
            if len(bad) > 20 and not args.verbose:
                print(f"thresher score: {e.name}: {len(bad)} rows not scored (see column {rcol!r}; -v lists them)",
                      file=sys.stderr)
        res = res.drop(columns=["id"])
        out = pd.concat([out, res.reset_index(drop=True)], axis=1)
    write_table_atomic(out, args.out)
    dt = time.time() - t0
    summary = ", ".join(f"{e.name}: {int(out[e.name].notna().sum())}/{len(out)} scored" for e, _ in scorers)
    print(f"thresher score: wrote {args.out} ({len(out)} rows; {summary}; {dt:.1f} s)", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score", help="score rows with criteria (ifd, perplexity, ...) into a table keyed by id",
        description="Score instruction data with registered criteria. Rows: instruction, optional input, "
                    "output, optional id (or a conversation/messages list). Output: one row per input row, "
                    "columns <criterion>, <criterion>.<component>, <criterion>.reason.")
    p.add_argument("data", help="JSONL file (optionally .gz) or a JSON array")
    p.add_argument("--criteria", required=True, help="comma-separated criterion names, e.g. ifd,perplexity")
    p.add_argument("--out", required=True, help="output table (.parquet; .csv or .jsonl by extension)")
    p.add_argument("--model", default=None, help="default | PATH | HF_ID (criteria that use a causal LM)")
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget per batch (default 4096)")
    p.add_argument("--max-length", type=int, default=None, help="max tokens per sample (default per criterion)")
    p.add_argument("--template", default=None, help="prompt template: alpaca | chat | plain | wiz")
    p.add_argument("--dtype", default=None, help="model dtype: float32 | bfloat16 | float16")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--option", action="append", metavar="CRITERION.KEY=VALUE",
                   help="criterion option, e.g. --option ifd.ratio=ppl (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    p.add_argument("--chunk", type=int, default=2048, help="rows per scoring call")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first bad row")
    p.add_argument("-v", "--verbose", action="store_true", help="list every row that was not scored")
    g = p.add_argument_group("pipeline (any reader format, pool-scoped criteria, score cache)")
    g.add_argument("--embedder", default=None, help="sentence embedder for embedding criteria (knn_distance, ...)")
    g.add_argument("--format", choices=["jsonl", "json", "parquet", "csv", "hf"], default=None,
                   help="input format (default: from the extension; a folder: HF dataset or its files)")
    g.add_argument("--field", action="append", metavar="TARGET=COLUMN", default=None,
                   help="explicit field mapping, e.g. --field instruction=question --field output=answer")
    g.add_argument("--cache-dir", default=None, help="keep the per-shard score cache here (resumable)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_score)
