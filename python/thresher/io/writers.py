"""Writers: the selected subset in the input's own format and field order,
``scores.parquet`` and ``manifest.json``. Every file is written atomically
(temporary name in the same folder, fsync, rename) and deterministically (no
timestamps inside), so a resumed run writes byte-identical outputs.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional

import numpy as np

from ..errors import OptionError, OutputExistsError, ResourceError
from ..fs import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text
from ..progress import library_bars
from .readers import Source, _decode_line, _raw_lines

# Re-exported for older callers (``thresher.io.atomic_write_bytes``; pipeline.py imports AtomicFile):
# new code uses thresher.fs directly.
AtomicFile = atomic_file
__all__ = [
    "AtomicFile",
    "atomic_write_bytes",
    "AtPositions",
    "ExtraColumns",
    "selected_name",
    "write_selected",
    "write_parquet_atomic",
    "write_json_atomic",
    "write_scores",
    "write_manifest",
    "write_table",
    "read_json",
]


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """A permission or disk error while writing ``path``: one line naming it (ResourceError)."""
    try:
        yield
    except PermissionError:
        raise ResourceError(f"{path}: permission denied (cannot write it)") from None
    except IsADirectoryError:
        raise ResourceError(f"{path}: is a folder, expected a file name") from None
    except OSError as exc:
        if isinstance(exc, FileExistsError):
            raise
        raise ResourceError(f"{path}: cannot write ({exc.strerror or exc})") from None


def selected_name(source: Source, base: str = "selected") -> str:
    """``selected.<ext>`` (or ``<base>.<ext>``): the input's format, gzipped when the input was."""
    fmt = source.format
    first = source.files[0].name.lower()
    gz = first.endswith(".gz") and fmt in ("jsonl", "json", "csv")
    if fmt == "hf":
        return base
    # an in-memory pool: an Arrow table (or DataFrame) as Parquet, an iterable of dicts as JSON Lines
    ext = {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet", "csv": ".csv", "arrow": ".parquet",
           "records": ".jsonl"}[fmt]  # fmt: skip
    if fmt == "csv" and first.removesuffix(".gz").endswith(".tsv"):
        ext = ".tsv"
    return base + ext + (".gz" if gz else "")


@dataclass
class ExtraColumns:
    """Columns appended to every written row: ``columns`` maps a name to its values per pool position.

    A row that already holds one of these fields is refused (OptionError naming the file, line
    and field), except the ``id_column`` when the row's value is the same id (kept as it is) or
    null (filled in)."""

    columns: dict = field(default_factory=dict)
    id_column: Optional[str] = None

    def __bool__(self) -> bool:
        return bool(self.columns)

    def values(self, pos: int) -> list[tuple[str, Any]]:
        return [(c, _plain(v[pos])) for c, v in self.columns.items()]

    def merge(self, rec: dict, pos: int, file: Any, line: Any) -> tuple[list[tuple[str, Any]], bool]:
        """The (name, value) pairs to append to ``rec``, and whether ``rec`` holds a null id to replace."""
        add, replace = [], False
        for name, value in self.values(pos):
            if name not in rec:
                add.append((name, value))
            elif name == self.id_column and rec[name] is None:
                add.append((name, value))
                replace = True
            elif name == self.id_column and str(rec[name]) == str(value):
                continue
            else:
                raise clash(name, self.id_column, file, line)
        return add, replace


class AtPositions:
    """A column's values at some pool positions only: ``col[p]`` for a position ``p`` among them (as an
    array over the whole pool would give), ``dtype`` that of the values; memory O(positions)."""

    def __init__(self, positions: np.ndarray, values: np.ndarray) -> None:
        self.positions = np.asarray(positions, dtype=np.int64)  # sorted, unique
        self.values = np.asarray(values)
        if len(self.positions) != len(self.values):
            raise ValueError(f"{len(self.positions)} positions but {len(self.values)} values")
        self.dtype = self.values.dtype

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, p: Any) -> Any:
        i = int(np.searchsorted(self.positions, p))
        if i == len(self.positions) or self.positions[i] != p:
            raise KeyError(f"pool position {p} is not among this column's rows")
        return self.values[i]


def clash(name: str, id_column: Optional[str], file: Any, line: Any) -> OptionError:
    """The one-line error for an output column that would overwrite a user field."""
    where = f"{file}, line {line}: " if line is not None else f"{file}: "
    if name == id_column:
        return OptionError(
            f"id_column: {where}the input already has a field {name!r} that is not the row's id; "
            "choose another id column name (--id-column NAME)"
        )
    return OptionError(
        f"with_scores: {where}the input already has a field {name!r}, the name of a score column; "
        "rename that field or drop --with-scores"
    )


def _plain(v: Any) -> Any:
    """A numpy scalar as a JSON-able Python value (NaN and None -> None)."""
    if v is None:
        return None
    if isinstance(v, (np.floating, float)):
        return None if np.isnan(v) else float(v)
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    return str(v)


def write_selected(
    source: Source,
    lines: np.ndarray,
    files: np.ndarray,
    positions: Iterable[int],
    out_dir: Path,
    *,
    base: str = "selected",
    extra: Optional[ExtraColumns] = None,
) -> Path:
    """Copy the rows at the given pool positions from the input, in input order, into ``<base>.<ext>``.

    ``lines``/``files``: per pool position, its source line (or row) and file index,
    as collected by :meth:`Source.shards`. JSONL rows are copied verbatim (``extra``
    columns are appended to the line's object); JSON and CSV rows keep their field
    order; Parquet keeps its schema; HF datasets are saved with ``save_to_disk``.
    """
    pos = np.unique(np.asarray(list(positions), dtype=np.int64))
    files, lines = np.asarray(files), np.asarray(lines)
    keys: list = list(zip(files[pos].tolist(), lines[pos].tolist()))
    if source.format == "json":  # several records may start on one line: (file, line, k-th record of the line)
        keys = [(f, ln, j) for (f, ln), j in zip(keys, _ordinal_in_line(files, lines)[pos].tolist())]
    want = dict(zip(keys, pos.tolist()))
    extra = extra or ExtraColumns()
    path = Path(out_dir) / selected_name(source, base)
    with _write_errors(path):
        if source.format == "hf":
            _write_hf(source, want, path, extra)
        elif source.format == "parquet":
            _write_parquet_rows(source, want, path, extra)
        elif source.format == "arrow":
            _write_arrow_rows(source, want, path, extra)
        elif source.format == "records":
            _write_records(source, want, path, extra)
        else:
            _write_text_rows(source, want, path, extra)
    return path


def _ordinal_in_line(files: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Per pool row, how many earlier rows start on the same line of the same file."""
    n = len(lines)
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.r_[True, (files[1:] != files[:-1]) | (lines[1:] != lines[:-1])]
    start = np.maximum.accumulate(np.where(change, np.arange(n), 0))
    return np.arange(n) - start


def _hf_rows(source: Source, rows: list[int]) -> Any:
    """The input rows at 0-based positions ``rows`` (sorted) as an HF ``Dataset`` with the input's features.

    A saved dataset is read with ``load_from_disk``; a ``load_dataset`` id or an in-memory dataset is
    used as it is (``select``); a streamed ``IterableDataset`` is walked once, keeping the wanted rows."""
    import datasets  # optional dependency (the hf extra)

    loc = getattr(source, "location", None)
    if loc is not None and loc.kind == "hf":
        ds = loc.dataset
    else:
        with library_bars():
            ds = datasets.load_from_disk(str(source.path))
        if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a one-split DatasetDict (the reader checked)
            ds = ds[list(ds.keys())[0]]
    if isinstance(ds, datasets.Dataset):
        return ds.select(rows)
    want, kept = set(rows), []
    for i, rec in enumerate(ds):  # an IterableDataset: in input order, so kept rows stay sorted
        if i in want:
            kept.append(rec)
        if len(kept) == len(want):
            break
    features = getattr(ds, "features", None)
    if kept or features is not None:
        return datasets.Dataset.from_list(kept, features=features)
    return datasets.Dataset.from_dict({})


def _write_hf(source: Source, want: dict, path: Path, extra: ExtraColumns) -> None:
    items = sorted((ln - 1, p) for (_, ln), p in want.items())
    sub = _hf_rows(source, [r for r, _ in items])
    for name, values in extra.columns.items():
        col = [_plain(values[p]) for _, p in items]
        if name in sub.column_names:
            have = sub[name]
            for (r, _), a, b in zip(items, have, col):
                if not (name == extra.id_column and (a is None or str(a) == str(b))):
                    raise clash(name, extra.id_column, source.path, r + 1)
            if all(a is not None for a in have):
                continue
            sub = sub.remove_columns(name)
        sub = sub.add_column(name, col)
    if path.exists():  # a folder cannot be renamed over a non-empty one
        shutil.rmtree(path)
    with library_bars():  # datasets' "Saving the dataset" bar follows --quiet
        atomic_dir(path, lambda tmp: sub.save_to_disk(str(tmp)))


def _arrow_extra(b: Any, idx: list, rows: list, pos: list, extra: ExtraColumns, file: Any) -> Any:
    """The batch rows ``idx`` with the extra columns (checked against the batch's own fields)."""
    import pyarrow as pa

    t = b.take(pa.array(idx, pa.int64()))
    t = pa.Table.from_batches([t]) if isinstance(t, pa.RecordBatch) else t
    for name, values in extra.columns.items():
        col = pa.array([_plain(values[p]) for p in pos], type=_arrow_type(values))
        if name in t.column_names:
            have = t.column(name).to_pylist()
            for r, a, v in zip(rows, have, col.to_pylist()):
                if not (name == extra.id_column and (a is None or str(a) == str(v))):
                    raise clash(name, extra.id_column, file, r)
            if None not in have:
                continue
            filled = [v if a is None else a for a, v in zip(have, col.to_pylist())]
            t = t.set_column(t.column_names.index(name), name, pa.array(filled, t.schema.field(name).type))
            continue
        t = t.append_column(name, col)
    return t


def _arrow_type(values: np.ndarray) -> Any:
    import pyarrow as pa

    if values.dtype.kind == "f":
        return pa.float64()
    if values.dtype.kind == "b":
        return pa.bool_()
    if values.dtype.kind in "iu":
        return pa.int64()
    return pa.string()


def _write_parquet_rows(source: Source, want: dict, path: Path, extra: ExtraColumns) -> None:
    import pyarrow.parquet as pq

    with atomic_file(path) as fh:
        writer = None
        for fi, f in enumerate(source.files):
            row = 0
            for b in pq.ParquetFile(f).iter_batches(batch_size=source.shard_size):
                hits = [(i, want[(fi, row + i + 1)]) for i in range(b.num_rows) if (fi, row + i + 1) in want]
                t = _arrow_extra(b, [i for i, _ in hits], [row + i + 1 for i, _ in hits], [p for _, p in hits],
                                 extra, f)  # fmt: skip
                row += b.num_rows
                if writer is None:
                    writer = pq.ParquetWriter(fh, t.schema)
                if hits:
                    writer.write_table(t.cast(writer.schema))
        if writer is None:
            writer = pq.ParquetWriter(fh, pq.ParquetFile(source.files[0]).schema_arrow)
        writer.close()


def _write_arrow_rows(source: Source, want: dict, path: Path, extra: ExtraColumns) -> None:
    """An in-memory Arrow table (a DataFrame read as one): the wanted rows as Parquet, its schema kept."""
    import pyarrow.parquet as pq

    items = sorted((ln - 1, p) for (_, ln), p in want.items())
    t = _arrow_extra(source.location.dataset, [r for r, _ in items], [r + 1 for r, _ in items],
                     [p for _, p in items], extra, source.path)  # fmt: skip
    with atomic_file(path) as fh:
        pq.write_table(t, fh)


def _write_records(source: Source, want: dict, path: Path, extra: ExtraColumns) -> None:
    """An in-memory iterable of dicts: the wanted records as JSON Lines, their field order kept."""
    with atomic_file(path, "w", encoding="utf-8") as fh:
        for i, rec in enumerate(source.location.records):
            p = want.get((0, i + 1))
            if p is None:
                continue
            add, _ = extra.merge(rec, p, source.path, i + 1)
            fh.write(json.dumps({**rec, **dict(add)}, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(v: Any) -> Any:
    if hasattr(v, "tolist"):  # numpy values and arrays
        return v.tolist()
    if hasattr(v, "isoformat"):  # dates and times
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} cannot be written as JSON")


def _write_text_rows(source: Source, want: dict, path: Path, extra: ExtraColumns) -> None:
    """JSONL (verbatim lines), JSON (an array) or CSV/TSV, gzipped when the input was."""
    gz = path.name.endswith(".gz")
    with atomic_file(path) as raw:
        fh = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        if source.format == "jsonl":
            _copy_jsonl(source, want, text, extra)
        elif source.format == "json":
            _copy_json(source, want, text, extra)
        else:
            _copy_csv(source, want, text, "\t" if path.name.removesuffix(".gz").endswith(".tsv") else ",", extra)
        text.flush()
        text.detach()
        if gz:
            fh.close()


def _json_value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


def _append_fields(line: str, rec: dict, pos: int, extra: ExtraColumns, file: Any, lineno: int) -> str:
    """The JSONL line with the extra fields appended inside its object (the original bytes kept)."""
    add, replace = extra.merge(rec, pos, file, lineno)
    if not add:
        return line
    if replace:  # a null id to fill in: re-serialise the record, keeping its field order
        return json.dumps({**rec, **dict(add)}, ensure_ascii=False, allow_nan=False)
    body = line.rstrip()
    body = body[:-1].rstrip()  # drop the closing brace
    sep = "" if body.endswith("{") else ", "
    return body + sep + ", ".join(f"{_json_value(k)}: {_json_value(v)}" for k, v in add) + "}"


def _copy_jsonl(source: Source, want: dict, text: IO[str], extra: ExtraColumns) -> None:
    # verbatim copy (bad rows are never in `want`); same line splitter as the reader
    for fi, f in enumerate(source.files):
        for lineno, raw in _raw_lines(f):
            p = want.get((fi, lineno))
            if p is None:
                continue
            line = _decode_line(raw, f, lineno).rstrip("\r\n")
            if extra:
                line = _append_fields(line, json.loads(line), p, extra, f, lineno)
            text.write(line + "\n")


def _copy_json(source: Source, want: dict, text: IO[str], extra: ExtraColumns) -> None:
    text.write("[")
    first = True
    seen: dict = {}
    for fi, line, rec, _raw, err in source.raw_records():
        if err is not None:
            continue
        j = seen[(fi, line)] = seen.get((fi, line), -1) + 1
        p = want.get((fi, line, j))
        if p is None:
            continue
        add, _ = extra.merge(rec, p, source.files[fi], line)
        rec = {**rec, **dict(add)}
        text.write(("\n" if first else ",\n") + json.dumps(rec, ensure_ascii=False))
        first = False
    text.write("\n]\n")


def _copy_csv(source: Source, want: dict, text: IO[str], delim: str, extra: ExtraColumns) -> None:
    w = None
    for fi, line, rec, raw, err in source.raw_records():
        if w is None:
            names = list(raw) + [c for c in extra.columns if c not in raw]
            w = csv.DictWriter(text, fieldnames=names, delimiter=delim, lineterminator="\n")
            w.writeheader()
        p = want.get((fi, line)) if err is None else None
        if p is None:
            continue
        have = {k: (None if v == "" else v) for k, v in rec.items()}  # an empty CSV cell is a missing value
        add, _ = extra.merge(have, p, source.files[fi], line)
        w.writerow({**rec, **{k: ("" if v is None else v) for k, v in add}})


def write_parquet_atomic(table: Any, path: Path) -> None:
    """pandas DataFrame or pyarrow Table -> Parquet, atomically and deterministically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with _write_errors(Path(path)), atomic_file(path) as fh:
        pq.write_table(table, fh, compression="zstd")


TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet", "": "parquet"}


def table_format(path: Path) -> str:
    """A scores table's format from its name: ``.csv``, ``.jsonl``, ``.parquet`` (or ``.pq``, or no extension:
    Parquet); any other extension is refused (Parquet bytes in ``scores.txt`` would be a trap)."""
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OptionError(f"--out {path}: write .parquet, .csv or .jsonl (not {path.suffix}; a name without an "
                          "extension is written as Parquet)")  # fmt: skip
    return fmt


def _writable_folder(path: Path) -> None:
    """The nearest existing folder above ``path`` must be one this process can write into (the
    folders below it are created)."""
    up = path.parent.absolute()
    while not up.exists() and up != up.parent:
        up = up.parent
    if not up.is_dir():
        raise ResourceError(f"{path}: cannot write ({up} is not a folder)")
    if not os.access(up, os.W_OK | os.X_OK):
        raise ResourceError(f"{path}: permission denied (cannot write into {up})")


def check_table_out(path: Any, data: Any, overwrite: bool = False) -> Path:
    """Check a scores table's ``--out`` before anything is scored (a late refusal would waste the run):
    a known table format, not a folder, writable; never the input file itself nor inside the input
    folder (the scores would replace the pool, or be read as part of it next time); an existing file
    only when it is a scores table (a rerun) or with ``overwrite``."""
    path = Path(path)
    table_format(path)
    if path.is_dir():
        raise OptionError(f"--out {path}: is a folder, expected a file name")
    src = Path(str(data)).expanduser() if data is not None and "://" not in str(data) else None
    if src is not None and src.is_file() and path.exists() and path.samefile(src):
        raise OptionError(f"--out {path}: is the input file; write the scores to another file")
    if src is not None and src.is_dir() and src.resolve() in path.absolute().resolve().parents:
        raise OptionError(f"--out {path}: is inside the input folder {src}, whose files are read as the pool")
    if path.exists() and not overwrite and not _is_scores_table(path):
        raise OutputExistsError(
            f"--out {path}: exists and is not a thresher scores table (no id, source_file and source_line "
            "columns); pass --overwrite to replace it"
        )
    _writable_folder(path)
    return path


SCORES_TABLE_COLUMNS = ("id", "source_file", "source_line")


def _is_scores_table(path: Path) -> bool:
    """Whether ``path`` holds a table ``thresher score`` wrote (its header has the scores table's own
    columns), which a rerun may replace; read the header only, and any doubt is a no."""
    try:
        fmt = table_format(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(path).names
        else:
            with open(path, encoding="utf-8", newline="") as fh:
                first = fh.readline()
            names = next(csv.reader([first])) if fmt == "csv" else list(json.loads(first))
    except Exception:  # unreadable, not UTF-8, not a table, not JSON: not ours
        return False
    return all(c in names for c in SCORES_TABLE_COLUMNS)


def write_table(df: Any, path: Any) -> Path:
    """One scores table, by extension (:func:`table_format`): ``.csv``, ``.jsonl`` or Parquet, atomically."""
    path = Path(path)
    fmt = table_format(path)
    if fmt == "csv":
        with _write_errors(path), atomic_file(path, "w", encoding="utf-8") as fh:
            df.to_csv(fh, index=False)
    elif fmt == "jsonl":
        with _write_errors(path), atomic_file(path, "w", encoding="utf-8") as fh:
            df.to_json(fh, orient="records", lines=True, force_ascii=False)
    else:
        write_parquet_atomic(df, path)
    return path


def read_table(path: Any, what: str = "scores") -> Any:
    """A scores table as :func:`write_table` writes it (``.csv``, ``.jsonl``/``.jsonl.gz``, else Parquet,
    as ``thresher score --out`` writes ``.parquet``, ``.pq`` or no extension), or the ``scores.parquet`` of a
    run's folder (``thresher select --out DIR``), as a pandas DataFrame; one-line errors name the path."""
    import pandas as pd

    path = Path(path)
    if path.is_dir() and (path / "scores.parquet").is_file():
        path = path / "scores.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    if path.is_dir():
        raise OptionError(f"{what}: {path} is a folder with no scores.parquet (give a scores table or a run's --out)")
    low = path.name.lower()
    if low.endswith(".csv"):
        return pd.read_csv(path)
    if low.endswith((".jsonl", ".jsonl.gz")):
        return pd.read_json(path, lines=True)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PAR1":
        raise OptionError(f"{what}: {path} is not a scores table (.parquet, .csv or .jsonl)")
    return pd.read_parquet(path)


def write_json_atomic(obj: Any, path: Path) -> None:
    """JSON in the manifest's layout (keys in insertion order, UTF-8, a final newline), atomically."""
    with _write_errors(Path(path)):
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n")


def write_scores(scores: Any, path: Path) -> None:
    write_parquet_atomic(scores, path)


def write_manifest(manifest: dict, path: Path) -> None:
    write_json_atomic(manifest, path)


def read_json(path: Path) -> Optional[dict]:
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
