"""The pool's files cut into splits that workers read in parallel (the Ray engine reads the input
on its workers; the driver never parses the pool).

* :func:`plan_splits` cuts without parsing, into splits of about a shard's rows: an uncompressed
  JSON Lines file into byte ranges that start at line starts (one seek per cut), a gzipped one into
  line ranges (its lines counted in one scan) or, when the engine has an object store (``put``),
  into blocks of lines decompressed once here and parsed by the workers, a CSV/TSV file between
  records (byte ranges, or blocks of a gzipped one; a quoted field may hold line breaks, so the cuts
  come from Python's csv reader run over the lines, nothing else is parsed), a JSON array between its
  top-level elements (byte ranges, or blocks of a gzipped one's stream; the cuts come from one
  vectorised scan of the bytes, :func:`~thresher.io.formats.json_array_cuts`, which follows strings
  and bracket depth and leaves to the driver any file where it could disagree with the local reader:
  not UTF-8, a backslash outside a string, anything but whitespace and commas between top-level
  values, unterminated...), and a Parquet file into runs of row groups. A gzipped JSON array or CSV
  file with no ``put`` is one split when small, else read by the driver.
* :func:`read_split` runs on a worker: it parses one split with the pool's schema (fixed by the
  driver from the first good record, :meth:`~thresher.io.readers.Source.first_schema`) and returns
  what the driver needs to assign ids and plan shards (:class:`SplitRows`: own ids, content hashes,
  lines, groups, bad rows; no texts) and, separately, the split's sample table (which stays on the
  cluster, in the object store).
* Line numbers of a byte-range split (``bytes``) count from 1 at its first line; the driver adds the
  lines of the file's earlier splits (``SplitRows.lines_read``). Other splits number the file's lines
  (a JSON array's ``elements`` split knows the newlines before it). Bad rows keep the same numbering,
  so every message names the file's real line.
* :func:`assemble` builds a shard's table on the worker that scores it, from pieces of split tables.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from ..errors import InputError, ThresherError
from .formats import (
    _is_gz,
    _iter_csv,
    _iter_json_array,
    _iter_json_elements,
    _iter_jsonl,
    _range_lines,
    byte_range,
    byte_ranges,
    count_lines,
    csv_blocks,
    csv_header,
    json_array_cuts,
    line_blocks,
    line_boundaries,
    line_range,
    open_parquet,
)
from .schema import Schema, content_hash, normalize_record
from .sources import ColumnBatch, fast_rows

WHOLE_FILE_BYTES = 64 << 20  # a gzipped CSV or JSON array with no ``put``: one split up to this size, else driver
SAMPLE_COLUMNS = ("id", "instruction", "input", "output", "conversation", "group")


@dataclass(frozen=True)
class Split:
    """One part of one input file: ``bytes`` (a line-aligned byte range [start, end) of an uncompressed
    JSON Lines file), ``lines`` (lines start+1 .. end of a gzipped JSON Lines file), ``blob`` (the
    same lines, their decompressed bytes carried in ``blob``: the bytes, or the engine's handle to
    them, which the engine resolves before :func:`read_split`), ``elements`` (the top-level elements
    of a JSON array in the byte range [start, end) of the file, or of its decompressed stream, whose
    bytes are then in ``blob``; ``row0`` newlines come before ``start``), ``rows`` (row groups
    [start, end) of a Parquet file whose first row is ``row0``, 0-based) or ``file`` (the whole file)."""

    index: int
    file_index: int
    path: str
    kind: str
    start: int = 0
    end: int = 0
    row0: int = 0
    chunks: int = 1  # sample tables the split is returned in (a long line range: tables of chunk_rows rows)
    chunk_rows: int = 0
    blob: Any = field(default=None, repr=False, compare=False)
    header: Optional[tuple] = None  # a CSV split that does not start the file: the file's field names


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
    group; the bad rows (skipped: ``(line, field, reason, good rows before it)``: the last puts it among
    the good rows where lines cannot, several elements of a JSON array on one line), or the error that
    stopped the split."""

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


def _avg_line_bytes(f: Path, sample: int = 1 << 20) -> float:
    with open(f, "rb") as fh:
        head = fh.read(sample)
    return len(head) / max(1, head.count(b"\n"))


def _text_splits(fi: int, f: Path, fmt: str, rows: int, split_bytes: Optional[int], first: int, parallel: int,
                 put: Optional[Callable[[bytes], Any]], cuts: Optional[list]) -> Iterator[Split]:  # fmt: skip
    """Splits of one text file that :func:`_driver_reads` let through: byte ranges (plain JSON Lines),
    line ranges (gzipped JSON Lines: the lines are counted here, nothing is parsed), blocks of lines
    handed to ``put`` as they are decompressed (gzipped JSON Lines when the engine has an object
    store: the stream is decompressed once, here), CSV splits cut between records (:func:`_csv_splits`),
    a JSON array's ``cuts`` (:func:`_json_splits`) or the whole file (a small gzipped JSON array or CSV
    file with no ``put``)."""
    if cuts is not None:
        yield from _json_splits(fi, f, cuts, first, put)
    elif fmt == "csv" and (put is not None or not _is_gz(f)):
        yield from _csv_splits(fi, f, rows, first, put)
    elif fmt == "jsonl" and not _is_gz(f):
        step = split_bytes or max(1, int(rows * _avg_line_bytes(f)))
        cuts = line_boundaries(f, step)
        yield from (Split(first + i, fi, str(f), "bytes", a, b) for i, (a, b) in enumerate(zip(cuts, cuts[1:])))
    elif fmt == "jsonl" and put is not None:  # decompressed once, here; the workers parse the blocks
        for i, (a, b, data) in enumerate(line_blocks(f, rows)):
            yield Split(first + i, fi, str(f), "blob", a, b, blob=put(data))
    elif fmt == "jsonl":  # a gzip stream is read from its start: a few long ranges, each returned in chunks
        n = count_lines(f)
        size = max(rows, -(-n // (4 * max(1, parallel))))
        for i, a in enumerate(range(0, n, size)):
            b = min(a + size, n)
            yield Split(first + i, fi, str(f), "lines", a, b, chunks=-(-(b - a) // rows), chunk_rows=rows)
    else:
        yield Split(first, fi, str(f), "file")


def _csv_splits(fi: int, f: Path, rows: int, first: int, put: Optional[Callable[[bytes], Any]]) -> Iterator[Split]:
    """A CSV/TSV file cut between records (:func:`~thresher.io.formats.csv_blocks`): byte ranges of a
    plain file, or blocks of the decompressed text handed to ``put`` (a gzipped one); every split but
    the first carries the header."""
    header = None
    for i, (a, b, start, end, data) in enumerate(csv_blocks(f, rows, keep=put is not None and _is_gz(f))):
        if i == 1:
            header = csv_header(f)
        if put is not None and _is_gz(f):
            yield Split(first + i, fi, str(f), "blob", a, b, blob=put(data), header=header)
        else:
            yield Split(first + i, fi, str(f), "bytes", start, end, header=header)


def _json_splits(fi: int, f: Path, cuts: list, first: int, put: Optional[Callable[[bytes], Any]]) -> Iterator[Split]:
    """A JSON array cut between its top-level elements (``cuts``: :func:`~thresher.io.formats.json_array_cuts`):
    byte ranges of a plain file, or the ranges of a gzipped one's stream, decompressed a second time
    (the first pass only cut it) and handed to ``put`` range by range as they are asked for."""
    if not _is_gz(f):
        yield from (Split(first + i, fi, str(f), "elements", a, b, nl) for i, (a, b, nl) in enumerate(cuts))
        return
    assert put is not None
    blocks = byte_ranges(f, [a for a, _, _ in cuts] + [cuts[-1][1]])
    for i, ((a, b, nl), data) in enumerate(zip(cuts, blocks)):
        yield Split(first + i, fi, str(f), "elements", a, b, nl, blob=put(data))


def _json_cuts(source: Any, rows: int, split_bytes: Optional[int], put: Optional[Callable[[bytes], Any]]) -> dict:
    """``{file index: cuts or None}`` of the JSON array files that may be cut (a gzipped one only when
    there is ``put``): each scanned once, here (:func:`~thresher.io.formats.json_array_cuts`)."""
    if source.format != "json":
        return {}
    return {
        fi: json_array_cuts(Path(f), rows, split_bytes)
        for fi, f in enumerate(source.files)
        if put is not None or not _is_gz(Path(f))
    }


def _driver_reads(f: Path, fmt: str, split_bytes: Optional[int], put: Optional[Callable[[bytes], Any]],
                  cuts: dict, fi: int) -> bool:  # fmt: skip
    """A JSON array whose scan gave up (``cuts[fi]`` None: an error, or something the workers could
    read otherwise than the local reader), or a file too large to be one split that cannot be cut: a
    gzipped JSON array or CSV file with no object store to put its blocks in."""
    if fi in cuts:
        return cuts[fi] is None
    cut = fmt == "csv" and (put is not None or not _is_gz(f))
    return fmt in ("json", "csv") and not cut and f.stat().st_size > (split_bytes or WHOLE_FILE_BYTES)


def _all_splits(source: Any, rows: int, split_bytes: Optional[int], parallel: int,
                put: Optional[Callable[[bytes], Any]], cuts: dict) -> Iterator[Split]:  # fmt: skip
    n = 0
    for fi, f in enumerate(source.files):
        f = Path(f)
        if source.format == "parquet":
            got: Iterable[Split] = _parquet_splits(fi, f, rows, n)
        else:
            got = _text_splits(fi, f, source.format, rows, split_bytes, n, parallel, put, cuts.get(fi))
        for sp in got:
            n += 1
            yield sp


def plan_splits(source: Any, split_bytes: Optional[int] = None, split_rows: Optional[int] = None, parallel: int = 1,
                put: Optional[Callable[[bytes], Any]] = None) -> Optional[Iterable[Split]]:  # fmt: skip
    """The splits of a pool of local files in pool order (about ``split_rows`` rows each, default the
    pool's shard size, so that a shard reads one or two splits; ``split_bytes`` sets a plain JSON Lines
    split's bytes instead, and a JSON array split's; a gzipped file is cut into about ``4 * parallel``
    line ranges, since each is read from the stream's start, returned in tables of ``split_rows``
    rows), or None when the driver must read the pool: data a worker cannot open by path (an
    in-memory table, an HF dataset, a hub id), a JSON array the scan gives up on (whatever its size),
    or a large gzipped JSON array or CSV file when there is no ``put``.

    With ``put`` (the engine's way to store bytes where its workers read them, e.g. Ray's object
    store) a gzipped file is decompressed here once instead, into ``blob`` splits of ``split_rows``
    lines, and the splits come as an iterator: each block is decompressed and stored when the caller
    asks for it, so the blocks not yet parsed are bounded by what the caller keeps in flight."""
    if source.location.kind != "files" or source.format not in ("jsonl", "json", "csv", "parquet"):
        return None
    rows = max(1, int(split_rows or source.shard_size))
    cuts = _json_cuts(source, rows, split_bytes, put)
    if any(_driver_reads(Path(f), source.format, split_bytes, put, cuts, fi) for fi, f in enumerate(source.files)):
        return None
    splits = _all_splits(source, rows, split_bytes, parallel, put, cuts)
    return splits if put is not None else list(splits)


def _blob(sp: Split) -> Any:
    if not isinstance(sp.blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"split {sp.index}: its bytes were not resolved (got {type(sp.blob).__name__})")
    return sp.blob


def _split_lines(sp: Split) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a ``bytes``, ``lines`` or ``blob`` split."""
    path = Path(sp.path)
    if sp.kind == "bytes":
        return _range_lines(path, sp.start, sp.end)
    if sp.kind == "lines":
        return line_range(path, sp.start, sp.end)
    return enumerate(io.BytesIO(_blob(sp)), start=sp.start + 1)


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
    if sp.kind == "elements":  # a JSON array's elements, numbered by the file's lines
        raw = bytes(_blob(sp)) if sp.blob is not None or _is_gz(path) else byte_range(path, sp.start, sp.end)
        it = _iter_json_elements(path, raw, sp.row0)
    elif sp.kind in ("bytes", "lines", "blob"):
        lines = _split_lines(sp)

        def counted() -> Iterator[tuple[int, bytes]]:
            for lineno, raw in lines:
                res.lines_read = lineno
                yield lineno, raw

        if spec.format == "csv":
            line0 = sp.start if sp.kind == "blob" else 0  # a byte range numbers its lines from 1
            it = _iter_csv(path, counted(), header=sp.header, bom=sp.start == 0, line0=line0)
        else:
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


def read_split(spec: ReadSpec, sp: Split) -> tuple:
    """Parse one split (on a worker): its :class:`SplitRows` and its sample tables (``sp.chunks`` of
    them, ``sp.chunk_rows`` good rows each, the last ones possibly empty; no id column: the driver
    assigns ids pool-wide and :func:`assemble` adds them). A bad row is skipped and
    listed (``skip``) or stops the split as ``res.error`` (``error``); so does a file that cannot
    be read, which the driver raises in pool order."""
    res, rows, path = SplitRows(replace(sp, blob=None)), [], Path(sp.path)  # the driver gets no bytes back
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
                res.bad.append((line, exc.field, exc.reason, len(res.own)))
                continue
            res.hashes.append(content_hash(row))
            res.own.append(row.pop("_own_id"))
            res.lines.append(line)
            if res.groups is not None:
                res.groups.append(str(row.get("group", "")))
            rows.append(row)
    except ThresherError as exc:  # unreadable, truncated, not UTF-8...: raised by the driver in pool order
        res.error = exc
    c = sp.chunk_rows or max(1, len(rows))
    return (res, *(_table(rows[k * c : (k + 1) * c], spec.schema) for k in range(sp.chunks)))


def assemble(ids: list, idxs: list, tables: tuple) -> Any:
    """A shard's sample table from pieces of split tables (``tables[j].iloc[idxs[j]]``), with ``ids``."""
    import pandas as pd

    parts = [t.iloc[np.asarray(ix, dtype=np.int64)] for t, ix in zip(tables, idxs) if len(ix)]  # dtypes as read
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SAMPLE_COLUMNS[1:4]))
    df.insert(0, "id", list(ids))
    return df[[c for c in SAMPLE_COLUMNS if c in df.columns]]


__all__ = ["Split", "ReadSpec", "SplitRows", "plan_splits", "read_split", "assemble", "WHOLE_FILE_BYTES"]
