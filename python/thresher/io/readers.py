"""Streaming readers: JSONL (optionally gzipped), JSON arrays, Parquet, CSV and saved
HF datasets, read in shards of ``shard_size`` rows so memory is bounded by the shard,
not by the pool.

:class:`Source` walks the raw records once per pass: pass 1 (``shards()``) yields
sample tables; writers make a second pass over the raw records to copy the
selected ones verbatim. Row positions (0-based, counting good rows only) are the
join key between passes; skipped rows (``on_bad_row="skip"``) are skipped the same
way in every pass.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional

import numpy as np

from ..errors import InputError, MissingExtraError, OptionError, ResourceError, ThresherError
from ..registry import READERS
from .schema import DataError, Schema, content_hash, detect_schema, normalize_record

FORMATS = ("jsonl", "json", "parquet", "csv", "hf")
_EXT = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff"


def _ext_format(path: Path) -> Optional[str]:
    """Format of one file from its extension (``.gz`` stripped), or None."""
    name = path.name.lower().removesuffix(".gz")
    return _EXT.get(os.path.splitext(name)[1])


def detect_format(path: Path) -> str:
    """Format from the extension (``.gz`` stripped) or, for folders, the HF dataset markers.

    A folder whose files have different formats is refused (naming two of them)."""
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "state.json").exists()
            or (path / "dataset_dict.json").exists()
        ):
            return "hf"
        files = data_files(path)
        if not files:
            raise InputError(
                "folder holds no .jsonl/.json/.parquet/.csv files and is not a saved HF dataset", file=path
            )
        check_one_format(path, files)
        return detect_format(files[0])
    fmt = _ext_format(path)
    if fmt is None:
        raise InputError(
            f"cannot tell the format from the extension; pass format= one of {list(FORMATS)} (--format)", file=path
        )
    return fmt


def check_one_format(folder: Path, files: list[Path]) -> None:
    """Refuse a folder that mixes formats (``a.jsonl`` beside ``b.csv``): name one file of each."""
    first: dict[str, Path] = {}
    for f in files:
        first.setdefault(_ext_format(f) or "?", f)
    if len(first) > 1:
        (fa, pa), (fb, pb) = list(first.items())[:2]
        raise InputError(
            f"folder mixes data formats: {pa.relative_to(folder)} is {fa}, {pb.relative_to(folder)} "
            f"is {fb}; put one format in a folder",
            file=folder,
        )


def data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and _ext_format(p) is not None and not p.name.startswith("."):
            out.append(p)
    return out


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


@contextlib.contextmanager
def _read_errors(path: Path, where: Callable[[], Optional[int]] = lambda: None) -> Iterator[None]:
    """Turn the OS and codec errors of reading ``path`` into one-line Input/ResourceErrors.

    ``where()``: the last line read so far (for a gzip stream that ends early)."""
    try:
        yield
    except ThresherError:
        raise
    except PermissionError:
        raise ResourceError(f"{path}: permission denied (cannot read it)") from None
    except gzip.BadGzipFile as exc:
        raise InputError(f"not a gzip file ({exc}); rename it without .gz if it is plain text", file=path) from None
    except (EOFError, zlib.error) as exc:
        last = where()
        after = f" after line {last}" if last else ""
        raise InputError(f"truncated or corrupt gzip data{after} ({exc})", file=path) from None
    except IsADirectoryError:
        raise InputError("is a folder, expected a file", file=path) from None
    except OSError as exc:
        raise ResourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if _is_gz(path) else open(path, "rb")


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"not valid UTF-8 text (byte {exc.start + 1} of the line: {exc.reason}); re-encode the file as UTF-8",
            file=path,
            line=lineno,
        ) from None
    return text[1:] if lineno == 1 and text.startswith(_BOM) else text


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of a text file, optionally gzipped; lines end at ``\\n``.

    The one line splitter of the readers and the writers (so their line numbers agree)."""
    lineno = 0
    with _read_errors(path, lambda: lineno), _open_binary(path) as fh:
        for raw in fh:
            lineno += 1
            yield lineno, raw


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded text with its line ending); a UTF-8 BOM on line 1 is dropped."""
    for lineno, raw in _raw_lines(path):
        yield lineno, _decode_line(raw, path, lineno)


def _text_chunks(path: Path, size: int) -> Iterator[str]:
    """The decoded text in chunks of about ``size`` bytes; invalid UTF-8 names its line."""
    dec = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    first = True
    with _read_errors(path, lambda: newlines), _open_binary(path) as fh:
        while True:
            block = fh.read(size)
            try:
                text = dec.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                line = newlines + exc.object[: exc.start].count(b"\n") + 1
                raise InputError(
                    f"not valid UTF-8 text ({exc.reason}); re-encode the file as UTF-8", file=path, line=line
                ) from None
            newlines += block.count(b"\n")
            if first and text:
                text, first = text.removeprefix(_BOM), False
            if text:
                yield text
            if not block:
                return


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with _read_errors(f), open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_checksum(path: Path) -> str:
    """sha256 of a file; for a folder, sha256 over (relative path, file sha256) of every file in it."""
    path = Path(path)
    if path.is_file():
        return _sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{_sha256(f)}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ raw records
# Each raw iterator yields (file, line_or_row, record_or_None, raw_handle, error_or_None).


def _iter_jsonl(path: Path):
    for lineno, raw in _raw_lines(path):
        try:
            text = _decode_line(raw, path, lineno).rstrip("\r\n")
        except InputError as exc:
            yield path, lineno, None, None, exc
            continue
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            yield (
                path,
                lineno,
                None,
                text,
                DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", file=path, line=lineno),
            )
            continue
        yield path, lineno, rec, text, None


def _value_end(buf: str, pos: int) -> Optional[int]:
    """Index of the ``,`` or ``]`` that ends the (malformed) array element starting at ``pos``."""
    depth, in_str, esc = 0, False, False
    for i in range(pos, len(buf)):
        ch = buf[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            if depth == 0:
                return i if ch == "]" else None
            depth -= 1
        elif ch == "," and depth == 0:
            return i
    return None


class _ArrayScanner:
    """Walks the elements of a top-level JSON array over a stream of text chunks."""

    def __init__(self, path: Path, chunks: Iterator[str]) -> None:
        self.path, self.chunks = path, chunks
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.dec = json.JSONDecoder()

    def fill(self) -> bool:
        more = next(self.chunks, "")
        if not more:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + more
        self.pos = 0
        return True

    def next_char(self, seps: str) -> Optional[str]:
        """Skip whitespace (and ``seps``); the next character, or None at the end of the file."""
        while True:
            buf = self.buf
            while self.pos < len(buf) and buf[self.pos] in " \t\r\n" + seps:
                if buf[self.pos] == "\n":
                    self.line += 1
                self.pos += 1
            if self.pos < len(buf):
                return buf[self.pos]
            if not self.fill():
                return None

    def element(self) -> tuple[Any, Optional[DataError]]:
        """Decode the element at ``pos``: (record, None), or (None, error) after skipping a bad one."""
        rec, err = None, None
        while True:
            try:
                rec, end = self.dec.raw_decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as exc:
                if not self.eof and self.fill():
                    continue
                at = self.line + self.buf.count("\n", self.pos, exc.pos)
                err = DataError(
                    f"malformed JSON in the record starting here ({exc.msg} at line {at})",
                    file=self.path,
                    line=self.line,
                )
                end = _value_end(self.buf, self.pos)
                if end is None:  # cannot find where the bad record ends: nothing after it can be read
                    raise err from None
                break
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end
        return rec, err


def _iter_json_array(path: Path, chunk: int = 1 << 20):
    """Stream the objects of a top-level JSON array without loading the whole file."""
    sc = _ArrayScanner(path, _text_chunks(path, chunk))
    c = sc.next_char("")
    if c is None:
        raise DataError("empty file: no JSON array", file=path, line=sc.line)
    if c != "[":
        raise DataError("expected a JSON array of objects ('[' ...), or use a .jsonl file", file=path, line=sc.line)
    sc.pos += 1
    while True:
        c = sc.next_char(",")
        if c is None:
            raise DataError("unterminated JSON array (missing ']')", file=path, line=sc.line)
        if c == "]":
            return
        start = sc.line
        rec, err = sc.element()
        yield path, start, rec, rec, err


def _iter_csv(path: Path):
    delim = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    reader = csv.DictReader((text for _, text in _text_lines(path)), delimiter=delim)
    if reader.fieldnames is None:
        return
    start = 2
    for rec in reader:
        if None in rec:  # more cells than header fields
            yield path, start, None, rec, DataError("row has more cells than the header", file=path, line=start)
        else:
            yield path, start, rec, rec, None
        start = reader.line_num + 1


def _iter_parquet(path: Path, batch: int):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _read_errors(path):
        try:
            pf = pq.ParquetFile(path)
        except pa.ArrowException as exc:
            raise InputError(f"not a readable Parquet file ({exc})", file=path) from None
    row = 0
    for b in pf.iter_batches(batch_size=batch):
        for rec in b.to_pylist():
            row += 1
            yield path, row, rec, row - 1, None


def _iter_hf(path: Path, batch: int):
    try:
        from datasets import load_from_disk
    except ImportError as exc:  # pragma: no cover
        raise MissingExtraError(f"reading the saved HF dataset {path}", "hf", exc) from None
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # DatasetDict
        splits = list(ds.keys())
        if len(splits) != 1:
            raise InputError(f"a DatasetDict with splits {splits}; point at one split's folder", file=path)
        ds = ds[splits[0]]
    n = len(ds)
    for s in range(0, n, batch):
        part = ds[s : min(n, s + batch)]
        cols = list(part)
        for i in range(len(part[cols[0]]) if cols else 0):
            yield path, s + i + 1, {c: part[c][i] for c in cols}, s + i, None


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
    def key(self) -> str:
        """Hash of the shard's content (its rows' content hashes and ids, in order)."""
        h = hashlib.blake2b(digest_size=16)
        for i, c in zip(self.table["id"], self.hashes):
            h.update(i.encode())
            h.update(b"\0")
            h.update(c.encode())
        return h.hexdigest()


def _check_file(f: Path) -> None:
    """Readable, not empty, and a real gzip stream when named ``.gz`` (checked before any scoring)."""
    with _read_errors(f), open(f, "rb") as fh:
        head = fh.read(2)
    if not head:
        raise DataError("empty file", file=f)
    if _is_gz(f) and head != _GZIP_MAGIC:
        raise InputError("not a gzip file (no gzip header); rename it without .gz if it is plain text", file=f)


class _IdAssigner:
    """Sample ids: the row's own id, else the first 16 hex of its content hash (``-2``, ``-3`` on repeats)."""

    def __init__(self) -> None:
        self.seen: set = set()

    def assign(self, own: Optional[str], h: str) -> Optional[str]:
        """The id, or None when the row's own id was already used."""
        sid = own if own is not None else h[:16]
        if sid in self.seen:
            if own is not None:
                return None
            k = 2
            while f"{sid}-{k}" in self.seen:
                k += 1
            sid = f"{sid}-{k}"
        self.seen.add(sid)
        return sid


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

    def flush(self, schema: Schema) -> Shard:
        import pandas as pd

        cols = ["id", "instruction", "input", "output"]
        if schema.conversation is not None or any("conversation" in r for r in self.rows):
            cols.append("conversation")
        if schema.group is not None:
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
    """A pool of samples on disk, read in shards.

    ``fields``: explicit mapping ``{"instruction": COL, "input": COL, "output": COL,
    "id": COL, "group": COL}`` or ``{"conversation": COL}``; ``on_bad_row``: ``error``
    (default, raise :class:`DataError` naming file, line and field) or ``skip`` (count
    and report them in :attr:`skipped`).
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

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.exists():
            raise FileNotFoundError(f"data: {self.path} does not exist")
        if self.on_bad_row not in ("error", "skip"):
            raise OptionError(f"on_bad_row: expected 'error' or 'skip', got {self.on_bad_row!r}")
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise OptionError(f"shard_size: expected a positive integer, got {self.shard_size!r}")
        self.format = self.format or detect_format(self.path)
        if self.format not in FORMATS:
            raise OptionError(f"format: expected one of {list(FORMATS)}, got {self.format!r}")
        self.files = [self.path] if self.format == "hf" else data_files(self.path)
        if not self.files:
            raise InputError("no data files in this folder", file=self.path)
        if self.format != "hf":
            if self.path.is_dir():
                check_one_format(self.path, self.files)
            for f in self.files:
                _check_file(f)

    # -------------------------------------------------------------- raw pass
    def raw_records(self):
        """Yield (file_index, line, record, raw, error) over all files."""
        for fi, f in enumerate(self.files):
            if self.format == "jsonl":
                it = _iter_jsonl(f)
            elif self.format == "json":
                it = _iter_json_array(f)
            elif self.format == "csv":
                it = _iter_csv(f)
            elif self.format == "parquet":
                it = _iter_parquet(f, self.shard_size)
            else:
                it = _iter_hf(f, self.shard_size)
            for _, line, rec, raw, err in it:
                yield fi, line, rec, raw, err

    def _bad(self, err: DataError) -> None:
        if self.on_bad_row == "error":
            raise err
        self.skipped.append({"file": str(err.file), "line": err.line, "field": err.field, "reason": err.reason})

    def _normalize(self, rec: Any, f: Path, line: int) -> Optional[dict]:
        """One raw record -> a sample row; the first good record fixes the schema. None: skipped."""
        try:
            if self.schema is None:
                schema = detect_schema(rec, self.fields, file=f, line=line, group_field=self.group_field)
                row = normalize_record(rec, schema, file=f, line=line)
                self.schema = schema  # only once a record passed (a bad first row can be skipped)
                self.columns = list(rec)
                return row
            return normalize_record(rec, self.schema, file=f, line=line)
        except DataError as e:
            self._bad(e)
            return None

    def shards(self) -> Iterator[Shard]:
        """Pass 1: yield sample-table shards; ids are own ids or content hashes, deduplicated."""
        self.skipped = []
        ids = _IdAssigner()
        build = _ShardBuilder()
        any_record = False
        for fi, line, rec, _raw, err in self.raw_records():
            if self.limit is not None and build.n >= self.limit:
                break
            any_record = True
            if err is not None:
                self._bad(err)
                continue
            f = self.files[fi]
            row = self._normalize(rec, f, line)
            if row is None:
                continue
            h, own = content_hash(row), row.pop("_own_id")
            sid = ids.assign(own, h)
            if sid is None:
                self._bad(DataError(f"duplicate id {own!r}", file=f, line=line, field=self.schema.id))
                continue
            row["id"] = sid
            build.add(row, h, line, fi)
            if len(build.rows) >= self.shard_size:
                yield build.flush(self.schema)
        if not any_record:
            raise DataError("empty file: no records", file=self.files[0])
        if build.n == 0:
            raise DataError(
                f"no usable rows ({len(self.skipped)} skipped; first: {self.skipped[0] if self.skipped else None})",
                file=self.files[0],
            )
        if build.rows:
            yield build.flush(self.schema)
        self.n_rows = build.n

    def read_all(self):
        """The whole pool as one sample table (small pools, tests)."""
        import pandas as pd

        parts = [s.table for s in self.shards()]
        return pd.concat(parts, ignore_index=True)

    def checksum(self) -> str:
        return file_checksum(self.path)

    def estimate_rows(self, max_bytes: int = 2 << 30) -> Optional[int]:
        """Row count for progress bars (ETA): Parquet metadata, HF length, or a fast newline
        count of text files up to ``max_bytes`` in all; None when unknown. Never parses."""
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                n = sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)
            elif self.format == "hf":
                return None
            else:
                if sum(f.stat().st_size for f in self.files) > max_bytes:
                    return None
                n = 0
                for f in self.files:
                    with _open_binary(f) as fh:
                        for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
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
