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

import csv
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from ..registry import READERS
from .schema import DataError, Schema, content_hash, detect_schema, normalize_record

FORMATS = ("jsonl", "json", "parquet", "csv", "hf")
_EXT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
        ".csv": "csv", ".tsv": "csv"}


def detect_format(path: Path) -> str:
    """Format from the extension (``.gz`` stripped) or, for folders, the HF dataset markers."""
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists() \
                or (path / "dataset_dict.json").exists():
            return "hf"
        files = data_files(path)
        if not files:
            raise ValueError(f"data: folder {path} holds no .jsonl/.json/.parquet/.csv files and is not "
                             "a saved HF dataset")
        return detect_format(files[0])
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    ext = os.path.splitext(name)[1]
    if ext not in _EXT:
        raise ValueError(f"data: cannot tell the format of {path} from its extension; "
                         f"pass format= one of {list(FORMATS)}")
    return _EXT[ext]


def data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    out = []
    for p in sorted(path.rglob("*")):
        n = p.name.lower().removesuffix(".gz")
        if p.is_file() and os.path.splitext(n)[1] in _EXT and not p.name.startswith("."):
            out.append(p)
    return out


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
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
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as exc:
                yield path, lineno, None, text, DataError(f"malformed JSON ({exc.msg} at column {exc.colno})",
                                                          file=path, line=lineno)
                continue
            yield path, lineno, rec, text, None


def _iter_json_array(path: Path, chunk: int = 1 << 20):
    """Stream the objects of a top-level JSON array without loading the whole file."""
    dec = json.JSONDecoder()
    with _open_text(path) as fh:
        buf, pos, line, eof = "", 0, 1, False
        started = False

        def fill() -> bool:
            nonlocal buf, pos, eof
            more = fh.read(chunk)
            if not more:
                eof = True
                return False
            buf = buf[pos:] + more
            pos = 0
            return True

        fill()
        while True:
            # skip whitespace and separators
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    if buf[pos] == "\n":
                        line += 1
                    if buf[pos] == "," and not started:
                        raise DataError("malformed JSON array (',' before '[')", file=path, line=line)
                    pos += 1
                if pos < len(buf) or not fill():
                    break
            if pos >= len(buf):
                if not started:
                    raise DataError("empty file: no JSON array", file=path, line=line)
                raise DataError("unterminated JSON array (missing ']')", file=path, line=line)
            c = buf[pos]
            if not started:
                if c != "[":
                    raise DataError("expected a JSON array of objects ('[' ...), or use a .jsonl file",
                                    file=path, line=line)
                started = True
                pos += 1
                continue
            if c == "]":
                return
            while True:
                try:
                    rec, end = dec.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if not eof and fill():
                        continue
                    at = line + buf.count("\n", pos, exc.pos)
                    raise DataError(f"malformed JSON in the record starting here ({exc.msg} at line {at})",
                                    file=path, line=line) from None
            start_line = line
            line += buf.count("\n", pos, end)
            pos = end
            yield path, start_line, rec, rec, None


def _iter_csv(path: Path):
    with _open_text(path) as fh:
        delim = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
        reader = csv.DictReader(fh, delimiter=delim)
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
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    row = 0
    for b in pf.iter_batches(batch_size=batch):
        for rec in b.to_pylist():
            row += 1
            yield path, row, rec, row - 1, None


def _iter_hf(path: Path, batch: int):
    try:
        from datasets import load_from_disk
    except ImportError as exc:  # pragma: no cover
        raise ValueError(f"data: {path} is a saved HF dataset; reading it needs `pip install datasets` ({exc})")
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # DatasetDict
        splits = list(ds.keys())
        if len(splits) != 1:
            raise ValueError(f"data: {path} is a DatasetDict with splits {splits}; point at one split's folder")
        ds = ds[splits[0]]
    n = len(ds)
    for s in range(0, n, batch):
        part = ds[s:min(n, s + batch)]
        cols = list(part)
        for i in range(len(part[cols[0]]) if cols else 0):
            yield path, s + i + 1, {c: part[c][i] for c in cols}, s + i, None


@dataclass
class Shard:
    """One shard of the pool: the sample table plus what the writers need."""

    index: int
    start: int                 # global position of the first row
    table: Any                 # pandas DataFrame: id, instruction, input, output, [conversation], [group]
    hashes: list[str]          # content hash per row
    lines: np.ndarray          # source line (text formats) or 1-based row (parquet/hf) per row
    files: list[int]           # index into Source.files per row

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
            raise ValueError(f"on_bad_row: expected 'error' or 'skip', got {self.on_bad_row!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size: expected a positive integer, got {self.shard_size!r}")
        self.format = self.format or detect_format(self.path)
        if self.format not in FORMATS:
            raise ValueError(f"format: expected one of {list(FORMATS)}, got {self.format!r}")
        self.files = [self.path] if self.format == "hf" else data_files(self.path)
        if not self.files:
            raise ValueError(f"data: no data files under {self.path}")
        for f in self.files:
            if self.format != "hf" and f.stat().st_size == 0:
                raise DataError("empty file", file=f)

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

    def shards(self) -> Iterator[Shard]:
        """Pass 1: yield sample-table shards; ids are own ids or content hashes, deduplicated."""
        import pandas as pd

        self.skipped = []
        seen: set = set()
        rows: list[dict] = []
        hashes: list[str] = []
        lines: list[int] = []
        files: list[int] = []
        index, start, n = 0, 0, 0
        any_record = False
        conversational = None

        def flush():
            nonlocal rows, hashes, lines, files, index, start
            cols = ["id", "instruction", "input", "output"]
            if conversational:
                cols.append("conversation")
            if self.schema is not None and self.schema.group is not None:
                cols.append("group")
            df = pd.DataFrame(rows, columns=cols)
            sh = Shard(index, start, df, hashes, np.asarray(lines, dtype=np.int64), files)
            index += 1
            start += len(rows)
            rows, hashes, lines, files = [], [], [], []
            return sh

        for fi, line, rec, raw, err in self.raw_records():
            if self.limit is not None and n >= self.limit:
                break
            any_record = True
            if err is not None:
                self._bad(err)
                continue
            f = self.files[fi]
            try:
                if self.schema is None:
                    self.schema = detect_schema(rec, self.fields, file=f, line=line, group_field=self.group_field)
                    conversational = self.schema.conversation is not None
                    if isinstance(rec, dict):
                        self.columns = list(rec)
                row = normalize_record(rec, self.schema, file=f, line=line)
            except DataError as e:
                if self.schema is None or self.on_bad_row == "error":
                    raise
                self._bad(e)
                continue
            h = content_hash(row)
            own = row.pop("_own_id")
            sid = own if own is not None else h[:16]
            if sid in seen:
                if own is not None:
                    self._bad(DataError(f"duplicate id {own!r}", file=f, line=line, field=self.schema.id))
                    continue
                k = 2
                while f"{sid}-{k}" in seen:
                    k += 1
                sid = f"{sid}-{k}"
            seen.add(sid)
            row["id"] = sid
            rows.append(row)
            hashes.append(h)
            lines.append(line)
            files.append(fi)
            n += 1
            if len(rows) >= self.shard_size:
                yield flush()
        if not any_record:
            raise DataError("empty file: no records", file=self.files[0])
        if n == 0:
            raise DataError(f"no usable rows ({len(self.skipped)} skipped; first: "
                            f"{self.skipped[0] if self.skipped else None})", file=self.files[0])
        if rows:
            yield flush()
        self.n_rows = n

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
                    opener = gzip.open if f.name.lower().endswith(".gz") else open
                    with opener(f, "rb") as fh:
                        for block in iter(lambda: fh.read(1 << 22), b""):
                            n += block.count(b"\n")
                if self.format == "csv":
                    n -= len(self.files)
        except OSError:
            return None
        return min(n, self.limit) if self.limit is not None else n


def open_dataset(path: Any, **kw: Any) -> Source:
    """Open a pool (file or folder) for streaming; see :class:`Source` for options."""
    return Source(path, **kw)


def read_samples(path: Any, **kw: Any):
    """Read a whole pool into one sample table (``pandas.DataFrame``)."""
    return Source(path, **kw).read_all()


for _fmt, _doc in [("jsonl", "JSON Lines, one object a line (.jsonl, .jsonl.gz)"),
                   ("json", "a JSON array of objects (.json), streamed"),
                   ("parquet", "Apache Parquet (.parquet), read in row batches"),
                   ("csv", "CSV/TSV with a header row (.csv, .tsv)"),
                   ("hf", "a saved Hugging Face dataset folder (datasets.load_from_disk)")]:
    READERS.register(_fmt, doc=_doc)(_fmt)
