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
import shutil
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional

import numpy as np

from ..errors import OptionError, ResourceError
from ..fs import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text
from .readers import Source, _decode_line, _raw_lines

# Re-exported for older callers (``thresher.io.atomic_write_bytes``; pipeline.py imports AtomicFile):
# new code uses thresher.fs directly.
AtomicFile = atomic_file
__all__ = [
    "AtomicFile",
    "atomic_write_bytes",
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


def selected_name(source: Source) -> str:
    fmt = source.format
    first = source.files[0].name.lower()
    gz = first.endswith(".gz") and fmt in ("jsonl", "json", "csv")
    if fmt == "hf":
        return "selected"
    ext = {"jsonl": ".jsonl", "json": ".json", "parquet": ".parquet", "csv": ".csv"}[fmt]
    if fmt == "csv" and first.removesuffix(".gz").endswith(".tsv"):
        ext = ".tsv"
    return "selected" + ext + (".gz" if gz else "")


def write_selected(
    source: Source, lines: np.ndarray, files: np.ndarray, positions: Iterable[int], out_dir: Path
) -> Path:
    """Copy the selected rows (by pool position) from the input, in input order.

    ``lines``/``files``: per pool position, its source line (or row) and file index,
    as collected by :meth:`Source.shards`. JSONL rows are copied verbatim; JSON and CSV
    rows keep their field order; Parquet keeps its schema; HF datasets are saved with
    ``save_to_disk``.
    """
    pos = np.unique(np.asarray(list(positions), dtype=np.int64))
    want = set(zip(np.asarray(files)[pos].tolist(), np.asarray(lines)[pos].tolist()))
    path = Path(out_dir) / selected_name(source)
    with _write_errors(path):
        if source.format == "hf":
            _write_hf(source, want, path)
        elif source.format == "parquet":
            _write_parquet_rows(source, want, path)
        else:
            _write_text_rows(source, want, path)
    return path


def _write_hf(source: Source, want: set, path: Path) -> None:
    from datasets import load_from_disk  # optional dependency (the hf extra)

    ds = load_from_disk(str(source.path))
    rows = sorted(ln - 1 for _, ln in want)
    if path.exists():  # a folder cannot be renamed over a non-empty one
        shutil.rmtree(path)
    atomic_dir(path, lambda tmp: ds.select(rows).save_to_disk(str(tmp)))


def _write_parquet_rows(source: Source, want: set, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_file(path) as fh:
        writer = None
        for fi, f in enumerate(source.files):
            row = 0
            for b in pq.ParquetFile(f).iter_batches(batch_size=source.shard_size):
                idx = [i for i in range(b.num_rows) if (fi, row + i + 1) in want]
                row += b.num_rows
                if writer is None:
                    writer = pq.ParquetWriter(fh, b.schema)
                if idx:
                    writer.write_table(pa.Table.from_batches([b.take(pa.array(idx, pa.int64()))]))
        if writer is None:
            writer = pq.ParquetWriter(fh, pq.ParquetFile(source.files[0]).schema_arrow)
        writer.close()


def _write_text_rows(source: Source, want: set, path: Path) -> None:
    """JSONL (verbatim lines), JSON (an array) or CSV/TSV, gzipped when the input was."""
    gz = path.name.endswith(".gz")
    with atomic_file(path) as raw:
        fh = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        if source.format == "jsonl":
            _copy_jsonl(source, want, text)
        elif source.format == "json":
            _copy_json(source, want, text)
        else:
            _copy_csv(source, want, text, "\t" if path.name.removesuffix(".gz").endswith(".tsv") else ",")
        text.flush()
        text.detach()
        if gz:
            fh.close()


def _copy_jsonl(source: Source, want: set, text: IO[str]) -> None:
    # verbatim copy; no parsing needed (bad rows are never in `want`); same line splitter as the reader
    for fi, f in enumerate(source.files):
        for lineno, raw in _raw_lines(f):
            if (fi, lineno) in want:
                text.write(_decode_line(raw, f, lineno).rstrip("\r\n") + "\n")


def _copy_json(source: Source, want: set, text: IO[str]) -> None:
    text.write("[")
    first = True
    for fi, line, rec, _raw, err in source.raw_records():
        if err is None and (fi, line) in want:
            text.write(("\n" if first else ",\n") + json.dumps(rec, ensure_ascii=False))
            first = False
    text.write("\n]\n")


def _copy_csv(source: Source, want: set, text: IO[str], delim: str) -> None:
    w = None
    for fi, line, rec, raw, err in source.raw_records():
        if w is None:
            w = csv.DictWriter(text, fieldnames=list(raw), delimiter=delim, lineterminator="\n")
            w.writeheader()
        if err is None and (fi, line) in want:
            w.writerow(rec)


def write_parquet_atomic(table: Any, path: Path) -> None:
    """pandas DataFrame or pyarrow Table -> Parquet, atomically and deterministically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with _write_errors(Path(path)), atomic_file(path) as fh:
        pq.write_table(table, fh, compression="zstd")


def write_table(df: Any, path: Any) -> Path:
    """One scores table, by extension: ``.csv``, ``.jsonl`` or Parquet (anything else), atomically."""
    path = Path(path)
    low = path.name.lower()
    if low.endswith((".json", ".tsv", ".gz")):
        raise OptionError(f"--out {path}: write .parquet, .csv or .jsonl")
    if low.endswith(".csv"):
        with _write_errors(path), atomic_file(path, "w", encoding="utf-8") as fh:
            df.to_csv(fh, index=False)
    elif low.endswith(".jsonl"):
        with _write_errors(path), atomic_file(path, "w", encoding="utf-8") as fh:
            df.to_json(fh, orient="records", lines=True, force_ascii=False)
    else:
        write_parquet_atomic(df, path)
    return path


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
