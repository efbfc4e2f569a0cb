"""Writers: the selected subset in the input's own format and field order,
``scores.parquet`` and ``manifest.json``. Every file is written atomically
(temporary name in the same folder, fsync, rename) and deterministically (no
timestamps inside), so a resumed run writes byte-identical outputs.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from .readers import Source


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """Context manager: a binary file handle on a temp name, renamed on success only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.tmp, "wb")
        return self.fh

    def __exit__(self, et, ev, tb):
        if et is None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.path)
            _fsync_dir(self.path.parent)
        else:
            self.fh.close()
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
        return False


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


def write_selected(source: Source, lines: np.ndarray, files: np.ndarray, positions: Iterable[int],
                   out_dir: Path) -> Path:
    """Copy the selected rows (by pool position) from the input, in input order.

    ``lines``/``files``: per pool position, its source line (or row) and file index,
    as collected by :meth:`Source.shards`. JSONL rows are copied verbatim; JSON and CSV
    rows keep their field order; Parquet keeps its schema; HF datasets are saved with
    ``save_to_disk``.
    """
    out_dir = Path(out_dir)
    pos = np.unique(np.asarray(list(positions), dtype=np.int64))
    want = set(zip(np.asarray(files)[pos].tolist(), np.asarray(lines)[pos].tolist()))
    name = selected_name(source)
    path = out_dir / name
    fmt = source.format
    if fmt == "hf":
        from datasets import load_from_disk

        ds = load_from_disk(str(source.path))
        rows = sorted(ln - 1 for _, ln in want)
        import shutil

        tmp = out_dir / ".selected.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        ds.select(rows).save_to_disk(str(tmp))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with AtomicFile(path) as fh:
            writer = None
            for fi, f in enumerate(source.files):
                pf = pq.ParquetFile(f)
                row = 0
                for b in pf.iter_batches(batch_size=source.shard_size):
                    idx = [i for i in range(b.num_rows) if (fi, row + i + 1) in want]
                    row += b.num_rows
                    if writer is None:
                        writer = pq.ParquetWriter(fh, b.schema)
                    if idx:
                        writer.write_table(pa.Table.from_batches([b.take(pa.array(idx, pa.int64()))]))
            if writer is None:
                writer = pq.ParquetWriter(fh, pq.ParquetFile(source.files[0]).schema_arrow)
            writer.close()
        return path
    gz = name.endswith(".gz")
    with AtomicFile(path) as raw:
        fh = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        if fmt == "jsonl":  # verbatim copy; no parsing needed (bad rows are never in `want`)
            from .readers import _open_text

            for fi, f in enumerate(source.files):
                with _open_text(f) as src:
                    for lineno, ln in enumerate(src, 1):
                        if (fi, lineno) in want:
                            text.write(ln.rstrip("\r\n") + "\n")
        elif fmt == "json":
            text.write("[")
            first = True
            for fi, line, rec, r, err in source.raw_records():
                if err is None and (fi, line) in want:
                    text.write(("\n" if first else ",\n") + json.dumps(rec, ensure_ascii=False))
                    first = False
            text.write("\n]\n")
        else:  # csv
            delim = "\t" if name.removesuffix(".gz").endswith(".tsv") else ","
            w = None
            for fi, line, rec, r, err in source.raw_records():
                if w is None:
                    w = csv.DictWriter(text, fieldnames=list(r), delimiter=delim, lineterminator="\n")
                    w.writeheader()
                if err is None and (fi, line) in want:
                    w.writerow(rec)
        text.flush()
        text.detach()
        if gz:
            fh.close()
    return path


def write_parquet_atomic(table: Any, path: Path) -> None:
    """pandas DataFrame or pyarrow Table -> Parquet, atomically and deterministically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with AtomicFile(path) as fh:
        pq.write_table(table, fh, compression="zstd")


def write_json_atomic(obj: Any, path: Path) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False,
                                               default=str) + "\n").encode("utf-8"))


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
