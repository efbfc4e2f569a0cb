"""The pool's files cut into splits that workers read in parallel (the Ray engine reads the input
on its workers; the driver never parses the pool).

* :func:`plan_splits` cuts without parsing: an uncompressed JSON Lines file into byte ranges that
  start at line starts (one seek per cut), a Parquet file into runs of row groups, and any other
  file (gzip, a JSON array, CSV) into one split of its own.
* :func:`read_split` runs on a worker: it parses one split with the pool's schema (fixed by the
  driver from the first good record, :meth:`~thresher.io.readers.Source.first_schema`) and returns
  what the driver needs to assign ids and plan shards (:class:`SplitRows`: own ids, content hashes,
  lines, groups, bad rows; no texts) and, separately, the split's sample table (which stays on the
  cluster, in the object store).
* Line numbers of a byte-range split count from 1 at its first line; the driver adds the lines of
  the file's earlier splits (``SplitRows.lines_read``). Bad rows keep the same numbering, so every
  message names the file's real line.
* :func:`assemble` builds a shard's table on the worker that scores it, from pieces of split tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..errors import InputError, ThresherError
from .formats import _is_gz, _iter_csv, _iter_json_array, _iter_jsonl, _range_lines, line_boundaries, open_parquet
from .schema import Schema, content_hash, normalize_record
from .sources import ColumnBatch, fast_rows

SPLIT_BYTES = 64 << 20  # default bytes of a JSON Lines split
SPLIT_ROWS = 65536  # default rows of a Parquet split (whole row groups)
SAMPLE_COLUMNS = ("id", "instruction", "input", "output", "conversation", "group")


@dataclass(frozen=True)
class Split:
    """One part of one input file: ``bytes`` (a line-aligned byte range [start, end) of an uncompressed
    JSON Lines file), ``rows`` (row groups [start, end) of a Parquet file whose first row is ``row0``,
    0-based) or ``file`` (the whole file)."""

    index: int
    file_index: int
    path: str
    kind: str
    start: int = 0
    end: int = 0
    row0: int = 0


@dataclass(frozen=True)
class ReadSpec:
    """How a worker reads a split: the input format, the pool's schema and the bad-row policy."""

    format: str
    schema: Schema
    on_bad_row: str = "error"
    batch_rows: int = 10000


@dataclass
class SplitRows:
    """What the driver gets back of a split: per good row its own id (or None), content hash, line and
    group; the bad rows (skipped: ``(line, field, reason)``), or the error that stopped the split."""

    split: Split
    records: int = 0
    lines_read: int = 0
    own: list = field(default_factory=list)
    hashes: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    groups: Optional[list] = None
    bad: list = field(default_factory=list)
    error: Optional[BaseException] = None


def _parquet_splits(fi: int, f: Path, rows: int, first: int) -> list[Split]:
    meta = open_parquet(f).metadata
    out, g0, row0, acc = [], 0, 0, 0
    for g in range(meta.num_row_groups):
        acc += meta.row_group(g).num_rows
        if acc >= rows or g == meta.num_row_groups - 1:
            out.append(Split(first + len(out), fi, str(f), "rows", g0, g + 1, row0))
            g0, row0, acc = g + 1, row0 + acc, 0
    return out


def plan_splits(source: Any, split_bytes: int = SPLIT_BYTES, split_rows: int = SPLIT_ROWS) -> Optional[list[Split]]:
    """The splits of a pool of local files in pool order, or None when the pool is not files a worker
    can open by path (an in-memory table, an HF dataset, a hub id): then the driver reads it."""
    if source.location.kind != "files" or source.format not in ("jsonl", "json", "csv", "parquet"):
        return None
    out: list[Split] = []
    for fi, f in enumerate(source.files):
        f = Path(f)
        if source.format == "parquet":
            out += _parquet_splits(fi, f, split_rows, len(out))
        elif source.format == "jsonl" and not _is_gz(f):
            cuts = line_boundaries(f, max(1, int(split_bytes)))
            out += [Split(len(out) + i, fi, str(f), "bytes", a, b) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
        else:
            out.append(Split(len(out), fi, str(f), "file"))
    return out


def _records(spec: ReadSpec, sp: Split, res: SplitRows) -> Iterator[tuple[int, Optional[dict], Any, Any]]:
    """(line, fast-path row or None, raw record, error) of a split; counts ``res.lines_read``."""
    path = Path(sp.path)
    if spec.format == "parquet":
        pf = open_parquet(path)
        line = sp.row0
        for b in pf.iter_batches(batch_size=spec.batch_rows, row_groups=list(range(sp.start, sp.end))):
            cb = ColumnBatch(b)
            fast = fast_rows(cb, spec.schema)
            for i in range(len(cb)):
                line += 1
                yield line, fast[i], (cb, i), None
        return
    if sp.kind == "bytes":

        def counted() -> Iterator[tuple[int, bytes]]:
            for lineno, raw in _range_lines(path, sp.start, sp.end):
                res.lines_read = lineno
                yield lineno, raw

        it = _iter_jsonl(path, counted(), bom=sp.start == 0)
    else:
        it = {"jsonl": _iter_jsonl, "json": _iter_json_array, "csv": _iter_csv}[spec.format](path)
    for _f, line, rec, _raw, err in it:
        yield line, None, rec, err


def _normalized(spec: ReadSpec, path: Path, line: int, fast: Optional[dict], rec: Any) -> dict:
    if fast is not None:
        return fast
    if isinstance(rec, tuple):  # a Parquet row the fast path left to the per-row normaliser
        rec = rec[0].record(rec[1])
    return normalize_record(rec, spec.schema, file=path, line=line)


def _table(rows: list, schema: Schema) -> Any:
    import pandas as pd

    cols = ["instruction", "input", "output"]
    if schema.conversation is not None or any("conversation" in r for r in rows):
        cols.append("conversation")
    if schema.group is not None:
        cols.append("group")
    return pd.DataFrame(rows, columns=cols)


def read_split(spec: ReadSpec, sp: Split) -> tuple[SplitRows, Any]:
    """Parse one split (on a worker): its :class:`SplitRows` and its sample table (no id column;
    the driver assigns ids pool-wide and :func:`assemble` adds them). A bad row is skipped and
    listed (``skip``) or stops the split as ``res.error`` (``error``); so does a file that cannot
    be read, which the driver raises in pool order."""
    res, rows, path = SplitRows(sp), [], Path(sp.path)
    res.groups = [] if spec.schema.group is not None else None
    try:
        for line, fast, rec, err in _records(spec, sp, res):
            res.records += 1
            try:
                if err is not None:
                    raise err
                row = _normalized(spec, path, line, fast, rec)
            except InputError as exc:  # a bad row (malformed JSON, not UTF-8, a bad field)
                if spec.on_bad_row == "error":
                    res.error = exc
                    break
                res.bad.append((line, exc.field, exc.reason))
                continue
            res.hashes.append(content_hash(row))
            res.own.append(row.pop("_own_id"))
            res.lines.append(line)
            if res.groups is not None:
                res.groups.append(str(row.get("group", "")))
            rows.append(row)
    except ThresherError as exc:  # unreadable, truncated, not UTF-8...: raised by the driver in pool order
        res.error = exc
    return res, _table(rows, spec.schema)


def assemble(ids: list, idxs: list, tables: tuple) -> Any:
    """A shard's sample table from pieces of split tables (``tables[j].iloc[idxs[j]]``), with ``ids``."""
    import pandas as pd

    parts = [t.iloc[np.asarray(ix, dtype=np.int64)] for t, ix in zip(tables, idxs) if len(ix)]  # dtypes as read
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SAMPLE_COLUMNS[1:4]))
    df.insert(0, "id", list(ids))
    return df[[c for c in SAMPLE_COLUMNS if c in df.columns]]


__all__ = ["Split", "ReadSpec", "SplitRows", "plan_splits", "read_split", "assemble", "SPLIT_BYTES", "SPLIT_ROWS"]
