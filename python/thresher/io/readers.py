"""Streaming readers: JSONL (optionally gzipped), JSON arrays, Parquet, CSV, saved HF
datasets, ``load_dataset`` ids, fsspec URLs and in-memory tables, read in shards of
``shard_size`` rows so memory is bounded by the shard, not by the pool. The raw
format iterators live in :mod:`.formats`, where data comes from in :mod:`.sources`.

:class:`Source` walks the raw records once per pass: pass 1 (``shards()``) yields
sample tables; writers make a second pass over the raw records to copy the
selected ones verbatim. Row positions (0-based, counting good rows only) are the
join key between passes; skipped rows (``on_bad_row="skip"``) are skipped the same
way in every pass.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..errors import InputError, OptionError
from ..registry import READERS
from .formats import (  # noqa: F401 - re-exported: the writers and older callers import them from here
    FORMATS,
    _check_file,
    _decode_line,
    _iter_csv,
    _iter_json_array,
    _iter_jsonl,
    _open_binary,
    _raw_lines,
    check_one_format,
    data_files,
    detect_format,
    file_checksum,
    open_parquet,
)
from .idset import IdSet, digest
from .schema import (
    DataError,
    Schema,
    check_mapping,
    content_hash,
    detect_schema,
    file_error,
    mapped_columns,
    normalize_record,
)
from .sources import ColumnBatch, Location, arrow_batches, fast_rows, hf_batches, load_saved, locate, memory_checksum


def single_split(path: Path) -> Path:
    """A saved DatasetDict folder with one split: that split's folder (several: name them)."""
    dd = path / "dataset_dict.json"
    if not dd.exists():
        return path
    try:
        names = json.loads(dd.read_text(encoding="utf-8"))["splits"]
    except (ValueError, KeyError) as exc:
        raise InputError(f"unreadable dataset_dict.json ({exc})", file=dd) from None
    if len(names) != 1:
        raise InputError(f"a DatasetDict with splits {names}; pass split=NAME (--split)", file=path)
    return path / names[0]


def _object_rows(loc: Location) -> Optional[int]:
    if loc.kind == "arrow":
        return int(loc.dataset.num_rows)
    if loc.kind == "records":
        return len(loc.records)
    try:
        return len(loc.dataset)
    except TypeError:  # an IterableDataset
        return None


@dataclass
class Shard:
    """One shard of the pool: the sample table plus what the writers need."""

    index: int
    start: int  # global position of the first row
    table: Any  # pandas DataFrame: id, instruction, input, output, [conversation], [group]
    hashes: list[str]  # content hash per row
    lines: np.ndarray  # source line (text formats) or 1-based row (parquet/hf) per row
    files: list[int]  # index into Source.files per row

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> list[str]:
        return self.table["id"].astype(str).tolist()

    @property
    def key(self) -> str:
        return shard_key(self.table["id"], self.hashes)


def shard_key(ids: Any, hashes: Any) -> str:
    """Hash of a shard's content (its rows' ids and content hashes, in order)."""
    h = hashlib.blake2b(digest_size=16)
    for i, c in zip(ids, hashes):
        h.update(i.encode())
        h.update(b"\0")
        h.update(c.encode())
    return h.hexdigest()


_ID_BATCH = 4096  # rows whose ids are assigned at once


class _IdAssigner:
    """Sample ids: the row's own id, else the first 16 hex of its content hash (``-2``, ``-3`` on repeats).

    The ids given so far are held by digest (:class:`~thresher.io.idset.IdSet`, 16 bytes each) and a
    batch of rows is checked against them at once (:meth:`assign_many`)."""

    def __init__(self, spill: Optional[Callable[[], Any]] = None) -> None:
        self.seen = IdSet(spill)

    def close(self) -> None:
        self.seen.close()

    def assign_many(self, owns: list, hashes: list) -> list:
        """Each row's id in order, None for a row whose own id was already used (by an earlier batch
        or an earlier row of this one)."""
        sids = [own if own is not None else h[:16] for own, h in zip(owns, hashes)]
        ds, member = self.seen.contains_many(sids)
        fresh: set = set()  # digests of the ids given in this batch
        out: list = []
        for sid, own, d, m in zip(sids, owns, ds, member.tolist()):
            if not m and d not in fresh:
                self.seen.add_digest(d)
                fresh.add(d)
                out.append(sid)
                continue
            if own is not None:
                out.append(None)
                continue
            k = 2
            while (d := digest(f"{sid}-{k}")) in fresh or self.seen.has(d):
                k += 1
            self.seen.add_digest(d)
            fresh.add(d)
            out.append(f"{sid}-{k}")
        return out


class _ShardBuilder:
    """Collects normalized rows until a shard is full."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.hashes: list[str] = []
        self.lines: list[int] = []
        self.files: list[int] = []
        self.index = self.start = self.n = 0

    def add(self, row: dict, h: str, line: int, fi: int) -> None:
        self.rows.append(row)
        self.hashes.append(h)
        self.lines.append(line)
        self.files.append(fi)
        self.n += 1

    def flush(self, schema: Optional[Schema]) -> Shard:
        import pandas as pd

        cols = ["id", "instruction", "input", "output"]
        if (schema is not None and schema.conversation is not None) or any("conversation" in r for r in self.rows):
            cols.append("conversation")
        if schema is not None and schema.group is not None:
            cols.append("group")
        sh = Shard(
            self.index,
            self.start,
            pd.DataFrame(self.rows, columns=cols),
            self.hashes,
            np.asarray(self.lines, dtype=np.int64),
            self.files,
        )
        self.index += 1
        self.start += len(self.rows)
        self.rows, self.hashes, self.lines, self.files = [], [], [], []
        return sh


@dataclass
class Source:
    """A pool of samples, read in shards: a local file or folder, an fsspec URL, a saved HF
    dataset (``split`` picks one split of a DatasetDict), a ``load_dataset`` id (``split``,
    ``streaming``), or an in-memory HF Dataset, Arrow table, pandas DataFrame or iterable of
    dicts (see :func:`thresher.io.sources.locate`).

    ``fields``: explicit mapping ``{"instruction": COL, "input": COL, "output": COL,
    "id": COL, "group": COL}`` or ``{"conversation": COL}``; ``on_bad_row``: ``error``
    (default, raise :class:`DataError` naming file, line and field) or ``skip`` (count
    and report them in :attr:`skipped`). Parquet, Arrow and HF data are read in record
    batches, column by column.
    """

    path: Any
    format: Optional[str] = None
    fields: Optional[dict] = None
    group_field: Optional[str] = None
    on_bad_row: str = "error"
    shard_size: int = 10000
    limit: Optional[int] = None
    schema: Optional[Schema] = None
    skipped: list = field(default_factory=list)
    n_rows: Optional[int] = None
    columns: Optional[list] = None  # field order of the input (for writers)
    split: Optional[str] = None
    streaming: bool = False
    spill: Optional[Callable[[], Any]] = field(default=None, repr=False, compare=False)  # a folder for the id set
    first_good: Optional[tuple] = None  # (file index, line) of the record that fixed the schema
    pre_schema: list = field(default_factory=list)  # first_schema(): the bad records before first_good

    def __post_init__(self) -> None:
        if self.on_bad_row not in ("error", "skip"):
            raise OptionError(f"on_bad_row: expected 'error' or 'skip', got {self.on_bad_row!r}")
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise OptionError(f"shard_size: expected a positive integer, got {self.shard_size!r}")
        self.location = locate(self.path, split=self.split, streaming=self.streaming)
        if self.fields:
            check_mapping(self.fields, self.location.label)
        if self.location.kind != "files":
            self._open_object()
            return
        self.path = self.location.path
        self.format = self.format or detect_format(self.path)
        if self.format not in FORMATS:
            raise OptionError(f"format: expected one of {list(FORMATS)}, got {self.format!r}")
        if self.format == "hf":
            self.path = single_split(self.path)
        self.files = [self.path] if self.format == "hf" else data_files(self.path)
        if not self.files:
            raise InputError("no data files in this folder", file=self.path)
        if self.format != "hf":
            if self.path.is_dir():
                check_one_format(self.path, self.files)
            for f in self.files:
                _check_file(f)

    def _open_object(self) -> None:
        """An HF dataset object, an Arrow table or records: format ``hf``, ``arrow`` or ``records``."""
        loc = self.location
        if self.format is not None and self.format != loc.kind:
            raise OptionError(f"format: {self.format!r} does not apply to {loc.label}")
        if loc.kind == "records" and not isinstance(loc.records, (list, tuple)):
            loc.records = list(loc.records)  # a generator: kept so that every pass sees the same rows
        self.format = loc.kind
        self.path = Path(loc.label)
        self.files = [self.path]

    @property
    def columnar(self) -> bool:
        return self.format in ("parquet", "hf", "arrow")

    # -------------------------------------------------------------- raw pass
    def raw_records(self):
        """Yield (file_index, line, record, raw, error) over all files (one dict per record)."""
        if self.columnar:
            for fi, start, cb in self.batches():
                for i in range(len(cb)):
                    yield fi, start + i + 1, cb.record(i), start + i, None
            return
        if self.format == "records":
            for i, rec in enumerate(self.location.records):
                yield 0, i + 1, rec, rec, None
            return
        for fi, f in enumerate(self.files):
            if self.format == "jsonl":
                it = _iter_jsonl(f)
            elif self.format == "json":
                it = _iter_json_array(f)
            else:
                it = _iter_csv(f)
            for _, line, rec, raw, err in it:
                yield fi, line, rec, raw, err

    def batches(self) -> Iterator[tuple[int, int, ColumnBatch]]:
        """(file index, 0-based row of the first row, batch) over a columnar pool."""
        if self.format == "parquet":
            for fi, f in enumerate(self.files):
                start = 0
                for b in open_parquet(f).iter_batches(batch_size=self.shard_size):
                    yield fi, start, ColumnBatch(b)
                    start += b.num_rows
            return
        if self.format == "arrow":
            it = arrow_batches(self.location.dataset, self.shard_size)
        elif self.location.kind == "hf":
            it = hf_batches(self.location.dataset, self.shard_size)
        else:
            it = hf_batches(load_saved(self.path), self.shard_size)
        start = 0
        for cb in it:
            yield 0, start, cb
            start += len(cb)

    def _items(self) -> Iterator[tuple[int, int, Optional[dict], Any, Optional[DataError]]]:
        """(file index, line, fast-path row or None, record or a callable giving it, error)."""
        if not self.columnar:
            for fi, line, rec, _raw, err in self.raw_records():
                yield fi, line, None, rec, err
            return
        for fi, start, cb in self.batches():
            rows = None
            for i in range(len(cb)):
                if rows is None and self.schema is not None:
                    rows = fast_rows(cb, self.schema)
                yield fi, start + i + 1, rows[i] if rows is not None else None, partial(cb.record, i), None

    def _bad(self, err: DataError) -> None:
        if self.on_bad_row == "error":
            raise err
        self.skipped.append({"file": str(err.file), "line": err.line, "field": err.field, "reason": err.reason})

    def _normalize(self, rec: Any, fi: int, line: int) -> Optional[dict]:
        """One raw record -> a sample row; the first good record fixes the schema. None: skipped."""
        row, err = self._try_normalize(rec, fi, line)
        if err is not None:
            self._bad(err)
        return row

    def before_schema(self, fi: int, line: int) -> bool:
        """True for a record read while no schema is fixed: before the first good record (on every pass)."""
        return self.schema is None or (self.first_good is not None and (fi, line) < self.first_good)

    def _try_normalize(self, rec: Any, fi: int, line: int) -> tuple[Optional[dict], Optional[DataError]]:
        """``(row, None)``, or ``(None, error)`` for a bad record (left to the caller to report). A record
        before the first good one is checked by schema detection, on every pass and engine (the Ray
        workers too: :func:`thresher.io.splits.read_split`), so its error is detection's."""
        f = self.files[fi]
        try:
            if self.before_schema(fi, line):
                self._check_mapped_columns(rec, f)
                schema = detect_schema(rec, self.fields, file=f, line=line, group_field=self.group_field)
                row = normalize_record(rec, schema, file=f, line=line)
                if self.schema is None:  # only once a record passed (a bad first row can be skipped)
                    self.schema, self.columns, self.first_good = schema, list(rec), (fi, line)
                return row, None
            return normalize_record(rec, self.schema, file=f, line=line), None
        except DataError as e:
            return None, e

    def _check_mapped_columns(self, rec: Any, f: Path, scan: int = 1000) -> None:
        """A column the field mapping or ``--group-field`` names that the whole file lacks (its header, or
        none of its first ``scan`` records has it): one InputError naming the file and the column, not a
        bad row (a group field that no row has would give every row the empty group)."""
        cols = mapped_columns(self.fields)
        if self.group_field:
            cols.setdefault(self.group_field, "group")
        if not isinstance(rec, dict) or all(c in rec for c in cols):
            return
        known = set(rec)
        if not (self.columnar or self.format == "csv"):  # records may differ in their keys: look further
            for i, (_fi, _line, other, _raw, err) in enumerate(self.raw_records()):
                if i >= scan:
                    break
                if err is None and isinstance(other, dict):
                    known.update(other)
        gone = [c for c in cols if c not in known]
        if gone:
            what = ", ".join(f"--group-field {c}" if c == self.group_field else f"--field {cols[c]}={c}" for c in gone)
            err = InputError(
                f"{'no column' if len(gone) == 1 else 'no columns'} {', '.join(map(repr, gone))} in this data "
                f"({what}); its columns: {', '.join(sorted(map(str, known))) or 'none'}",
                file=f,
            )
            err.skippable = False  # the data, not a row: skipping rows cannot get past it
            raise err

    def first_schema(self) -> Optional[Schema]:
        """Fix the schema from the first good record (as the first pass would), reading no further;
        None when no record is good. Bad records before it raise (``on_bad_row="error"``) or are left
        for the pass that reads them to report; their errors, as a first pass gives them (schema
        detection's), are kept in :attr:`pre_schema` for a reader that checks them against the schema."""
        if self.schema is not None:
            return self.schema
        saved, self.skipped = self.skipped, []
        try:
            for fi, line, row, rec, err in self._items():
                if err is not None:
                    self._bad(err)
                    continue
                if row is None and self._normalize(rec() if callable(rec) else rec, fi, line) is None:
                    continue
                self.pre_schema = list(self.skipped)
                return self.schema
            return None
        finally:
            self.skipped = saved

    def shards(self) -> Iterator[Shard]:
        """Pass 1: yield sample-table shards; ids are own ids or content hashes, deduplicated.

        Rows are read into a batch of events (a good row, or a bad row's error) and the batch's ids are
        assigned at once (:meth:`_IdAssigner.assign_many`); the events are then replayed in reading
        order, so bad rows are reported, and shards filled, exactly as row by row."""
        self.skipped = []
        ids = _IdAssigner(self.spill)
        try:
            yield from self._read_shards(ids)
        finally:
            ids.close()

    def _read_shards(self, ids: _IdAssigner) -> Iterator[Shard]:
        build = _ShardBuilder()
        events: list = []
        n_good = 0
        any_record = False
        for fi, line, row, rec, err in self._items():
            if self.limit is not None and build.n >= self.limit:
                break
            any_record = True
            if err is None and row is None:
                row, err = self._try_normalize(rec() if callable(rec) else rec, fi, line)
            if err is not None:
                events.append(err)
            else:
                events.append((row, content_hash(row), row.pop("_own_id"), line, fi))
                n_good += 1
            room = _ID_BATCH if self.limit is None else min(_ID_BATCH, self.limit - build.n)
            if n_good >= room or len(events) >= _ID_BATCH:
                yield from self._replay(events, ids, build)
                events, n_good = [], 0
        yield from self._replay(events, ids, build)
        if not any_record:
            raise file_error("empty file: no records", file=self.files[0])
        if build.n == 0:
            raise file_error(
                f"no usable rows ({len(self.skipped)} skipped; first: {self.skipped[0] if self.skipped else None})",
                file=self.files[0],
            )
        if build.rows:
            yield build.flush(self.schema)
        self.n_rows = build.n

    def _replay(self, events: list, ids: _IdAssigner, build: _ShardBuilder) -> Iterator[Shard]:
        """Report a batch's bad rows and add its good rows (with their ids) in reading order."""
        good = [e for e in events if isinstance(e, tuple)]  # the others are bad rows' errors
        sids = iter(ids.assign_many([g[2] for g in good], [g[1] for g in good]))
        for e in events:
            if not isinstance(e, tuple):
                self._bad(e)
                continue
            row, h, own, line, fi = e
            sid = next(sids)
            if sid is None:
                field_ = self.schema.id if self.schema is not None else None
                self._bad(DataError(f"duplicate id {own!r}", file=self.files[fi], line=line, field=field_))
                continue
            row["id"] = sid
            build.add(row, h, line, fi)
            if len(build.rows) >= self.shard_size:
                yield build.flush(self.schema)

    def read_all(self):
        """The whole pool as one sample table (small pools, tests)."""
        import pandas as pd

        parts = [s.table for s in self.shards()]
        return pd.concat(parts, ignore_index=True)

    def checksum(self) -> str:
        """sha256 of the files, or a content checksum (HF fingerprint) of an in-memory pool."""
        if self.location.kind != "files":
            return memory_checksum(self.location)
        return file_checksum(self.path)

    def estimate_rows(self, max_bytes: int = 2 << 30) -> Optional[int]:
        """Row count for progress bars (ETA): Parquet metadata, HF length, or a fast newline
        count of text files up to ``max_bytes`` in all; None when unknown. Never parses."""
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                n = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
            elif self.location.kind != "files":
                n = _object_rows(self.location)
                if n is None:
                    return None
            elif self.format == "hf":
                n = load_saved(self.path).num_rows
            else:
                if sum(f.stat().st_size for f in self.files) > max_bytes:
                    return None
                n = 0
                for f in self.files:
                    with _open_binary(f) as fh:
                        for block in iter(partial(fh.read, 1 << 22), b""):
                            n += block.count(b"\n")
                if self.format == "csv":
                    n -= len(self.files)
        except (OSError, EOFError, zlib.error):  # unreadable files are reported by the reading pass
            return None
        return min(n, self.limit) if self.limit is not None else n


def open_dataset(path: Any, **kw: Any) -> Source:
    """Open a pool (file or folder) for streaming; see :class:`Source` for options."""
    return Source(path, **kw)


def read_samples(path: Any, **kw: Any):
    """Read a whole pool into one sample table (``pandas.DataFrame``)."""
    return Source(path, **kw).read_all()


for _fmt, _doc in [
    ("jsonl", "JSON Lines, one object a line (.jsonl, .jsonl.gz)"),
    ("json", "a JSON array of objects (.json), streamed"),
    ("parquet", "Apache Parquet (.parquet), read in row batches"),
    ("csv", "CSV/TSV with a header row (.csv, .tsv)"),
    ("hf", "a saved Hugging Face dataset folder (datasets.load_from_disk)"),
]:
    READERS.register(_fmt, doc=_doc)(_fmt)
