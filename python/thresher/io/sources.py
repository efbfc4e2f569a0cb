"""Where a pool comes from, and columnar reads of its record batches.

:func:`locate` turns what a user passes as ``data`` into something the readers walk:

* a local file or folder (as before);
* an fsspec URL (``file://``, ``memory://``, ``hf://``, ``s3://``, ...): ``file://`` is read in
  place, anything else is fetched once into a private temporary folder (removed with the
  :class:`Location`), so every reader and writer sees local files;
* a saved HF ``DatasetDict`` folder with ``split=``;
* a ``datasets.load_dataset`` id (``"owner/name"``), or a local data folder with ``split=``
  (``train.jsonl``/``test.jsonl``, ``train/``, ...: read by ``load_dataset``), with ``split=``
  and ``streaming=True``;
* an in-memory object: an HF ``Dataset``/``IterableDataset``/``DatasetDict`` (with ``split``), a
  ``pyarrow.Table``/``RecordBatch``, a ``pandas.DataFrame``, or an iterable of dicts.

:class:`ColumnBatch` and :func:`fast_rows` read Parquet/Arrow/HF record batches column by
column: the columns a schema needs are converted once per batch (Arrow -> Python lists),
never the whole row; rows the fast path cannot vouch for (a null, a non-string cell) fall
back to the per-row normaliser, so errors and per-row schema detection stay the same.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from ..errors import InputError, MissingExtraError, OptionError
from ..progress import library_bars
from .schema import Schema, own_id

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# a load_dataset id: a builder name ("json") or owner/name; never something with a file extension
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DATA_EXT = re.compile(r"\.(jsonl|ndjson|json|parquet|pq|csv|tsv|gz|arrow)$", re.IGNORECASE)


def is_url(x: Any) -> bool:
    return isinstance(x, str) and bool(_URL.match(x))


@dataclass
class Location:
    """Resolved ``data``: local ``path`` (files or a saved HF folder), or an HF/Arrow ``dataset``
    object, or an iterable of ``records``; ``label`` names it in messages and manifests."""

    label: str
    path: Optional[Path] = None
    dataset: Any = None  # HF Dataset / IterableDataset, or a pyarrow Table
    records: Any = None  # a list of dicts (a generator is listed once)
    kind: str = "files"  # files | hf | arrow | records
    fingerprint: Optional[str] = None
    _tmp: Any = field(default=None, repr=False)  # a fetched copy's folder (or its Location)


def locate(data: Any, *, split: Optional[str] = None, streaming: bool = False) -> Location:
    """Resolve ``data`` (see the module docstring); ``split``/``streaming`` apply to HF data only."""
    if isinstance(data, (str, Path)) and not is_url(str(data)):
        p = Path(data)
        if p.exists():
            if split is None:  # files are always streamed: streaming=True changes nothing here
                return Location(str(p), path=p)
            if p.is_file():  # (load_dataset would look it up on the hub, retrying for half a minute)
                raise OptionError(f"split: {p} is one file, not a dataset with splits; drop split={split!r} (--split)")
            if any((p / m).exists() for m in ("dataset_dict.json", "state.json", "dataset_info.json")):
                return _saved_split(p, split)
            return _hub(str(p), split, streaming)  # a data folder laid out in splits: load_dataset reads it
        if isinstance(data, str) and _HUB_ID.match(data) and not _DATA_EXT.search(data):
            return _hub(data, split, streaming)
        raise FileNotFoundError(f"data: {p} does not exist")
    if is_url(str(data)):
        loc = _fetch(str(data))
        assert loc.path is not None
        return _saved_split(loc.path, split, loc) if split is not None else loc
    if streaming:
        raise OptionError(f"streaming: only for a path, URL or load_dataset id, not a {type(data).__name__}")
    return _memory(data, split)


# ------------------------------------------------------------------ URLs
def _fetch(url: str) -> Location:
    """``file://`` in place; any other fsspec URL copied into a temporary folder."""
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec comes with datasets
        raise MissingExtraError(f"reading {url}", "hf", exc) from None
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise InputError(f"cannot open this URL ({exc})", file=url) from None
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        p = Path(root)
        if not p.exists():
            raise FileNotFoundError(f"data: {url} does not exist")
        return Location(url, path=p)
    if not fs.exists(root):
        raise FileNotFoundError(f"data: {url} does not exist")
    tmp = tempfile.mkdtemp(prefix="thresher-fetch-")
    loc = Location(url, path=Path(tmp) / (root.rstrip("/").rsplit("/", 1)[-1] or "data"), _tmp=tmp)
    weakref.finalize(loc, shutil.rmtree, tmp, True)  # the copy lives as long as the Location
    try:
        if fs.isdir(root):
            fs.get(root.rstrip("/") + "/", str(loc.path) + "/", recursive=True)
        else:
            fs.get(root, str(loc.path))
    except OSError as exc:
        raise InputError(f"cannot fetch ({exc})", file=url) from None
    return loc


# ------------------------------------------------------------------ HF datasets
def _datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise MissingExtraError(what, "hf", exc) from None
    return datasets


def _pick_split(ds: Any, split: Optional[str], label: str) -> Any:
    """One split of a DatasetDict (``split`` names it; the only one when not given)."""
    if not hasattr(ds, "keys"):
        if split is not None:
            raise OptionError(f"split: {label} is a single dataset, not a DatasetDict; drop split={split!r}")
        return ds
    names = list(ds.keys())
    if split is None:
        if len(names) != 1:
            raise InputError(f"a DatasetDict with splits {names}; pass split=NAME (--split)", file=label)
        split = names[0]
    if split not in names:
        raise OptionError(f"split: {split!r} is not a split of {label}; it has {names}")
    return ds[split]


def _saved_split(path: Path, split: Optional[str], loc: Optional[Location] = None) -> Location:
    """A saved DatasetDict folder: the split's own folder (a saved Dataset)."""
    dd = path / "dataset_dict.json"
    if not dd.exists():
        raise OptionError(f"split: {path} is not a saved DatasetDict (no dataset_dict.json); drop split={split!r}")
    try:
        names = json.loads(dd.read_text(encoding="utf-8"))["splits"]
    except (ValueError, KeyError) as exc:
        raise InputError(f"unreadable dataset_dict.json ({exc})", file=dd) from None
    if split not in names:
        raise OptionError(f"split: {split!r} is not a split of {path}; it has {names}")
    label = f"{loc.label if loc else path}[{split}]"
    return Location(label, path=path / str(split), _tmp=loc)  # keeps a fetched copy alive


def load_saved(path: Path, split: Optional[str] = None) -> Any:
    """``datasets.load_from_disk`` of a saved Dataset (or one split of a DatasetDict)."""
    datasets = _datasets(f"reading the saved HF dataset {path}")
    with library_bars():
        return _pick_split(datasets.load_from_disk(str(path)), split, str(path))


def _hub(name: str, split: Optional[str], streaming: bool) -> Location:
    datasets = _datasets(f"load_dataset({name!r})")
    try:
        with library_bars():  # "Generating train split" and the like follow --quiet
            ds = datasets.load_dataset(name, split=split, streaming=streaming)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = "" if Path(name).exists() else "not a local path, and "
        raise InputError(f"{where}load_dataset({name!r}) failed: {msg}", file=name) from None
    label = f"{name}[{split}]" if split else name
    ds = _pick_split(ds, None, label) if split is None else ds
    fp = getattr(ds, "_fingerprint", None)
    fp = fp or _digest(f"{name}\0{split}\0{streaming}\0{datasets.__version__}")
    return Location(label, dataset=ds, kind="hf", fingerprint=fp)


# ------------------------------------------------------------------ in memory
def _memory(obj: Any, split: Optional[str]) -> Location:
    name = type(obj).__name__
    mod = type(obj).__module__.split(".")[0]
    if mod == "datasets":
        ds = _pick_split(obj, split, f"<{name}>")
        return Location(f"<{type(ds).__name__}>", dataset=ds, kind="hf", fingerprint=getattr(ds, "_fingerprint", None))
    if split is not None:
        raise OptionError(f"split: only for HF datasets, not a {name}")
    if mod == "pandas" and hasattr(obj, "columns"):
        import pyarrow as pa

        try:
            table = pa.Table.from_pandas(obj, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed cells: walk the rows instead
            return Location(f"<{name}>", records=obj.to_dict("records"), kind="records")
        return Location(f"<{name}>", dataset=table, kind="arrow")
    if mod == "pyarrow" and hasattr(obj, "schema") and hasattr(obj, "num_rows"):
        import pyarrow as pa

        table = pa.Table.from_batches([obj]) if isinstance(obj, pa.RecordBatch) else obj
        return Location(f"<{name}>", dataset=table, kind="arrow")
    if isinstance(obj, (dict, str, bytes)) or not isinstance(obj, Iterable):
        raise OptionError(
            f"data: expected a path, URL, load_dataset id, pandas DataFrame, pyarrow Table, HF Dataset "
            f"or an iterable of dicts; got {name}"
        )
    return Location(f"<{name}>", records=obj, kind="records")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------ columnar batches
class ColumnBatch:
    """A record batch read column by column: an Arrow ``RecordBatch``/``Table`` or a dict of lists."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.arrow = not isinstance(batch, dict)
        self.names = list(batch.schema.names) if self.arrow else list(batch)
        if self.arrow:
            self.n = batch.num_rows
        else:
            self.n = len(next(iter(batch.values()))) if batch else 0
        self._cols: dict = {}

    def __len__(self) -> int:
        return self.n

    def column(self, name: str) -> list:
        """One column as a Python list (converted once)."""
        if name not in self._cols:
            col = self.batch.column(name) if self.arrow else self.batch[name]
            self._cols[name] = col.to_pylist() if self.arrow else list(col)
        return self._cols[name]

    def record(self, i: int) -> dict:
        """Row ``i`` as a dict (the per-row fallback and the first row's schema detection)."""
        if self.arrow:
            return self.batch.slice(i, 1).to_pylist()[0]
        return {c: self.batch[c][i] for c in self.names}


def arrow_batches(table: Any, size: int) -> Iterator[ColumnBatch]:
    for b in table.to_batches(max_chunksize=size):
        if b.num_rows:
            yield ColumnBatch(b)


def hf_batches(ds: Any, size: int) -> Iterator[ColumnBatch]:
    """An HF Dataset as Arrow tables, an IterableDataset as dicts of lists, ``size`` rows each."""
    if hasattr(ds, "with_format") and hasattr(ds, "__len__") and hasattr(ds, "data"):
        for t in ds.with_format("arrow").iter(batch_size=size):
            if t.num_rows:
                yield ColumnBatch(t)
        return
    it = ds.iter(batch_size=size)
    while True:
        try:
            b = next(it, None)
        except (ValueError, TypeError, OSError) as exc:  # datasets' cast and read errors
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"the streamed dataset could not be read: {msg}", file=f"<{type(ds).__name__}>") from None
        if b is None:
            return
        cb = ColumnBatch(b)
        if len(cb):
            yield cb


def fast_rows(cb: ColumnBatch, s: Schema) -> list[Optional[dict]]:
    """Sample rows (with ``_own_id``) of a batch, column by column, for a flat schema whose
    cells are plain strings; None for each row the per-row normaliser must read instead."""
    n = len(cb)
    names = set(cb.names)
    if s.conversation or s.instruction not in names or s.output not in names:
        return [None] * n
    assert s.instruction is not None and s.output is not None
    ins, out = cb.column(s.instruction), cb.column(s.output)
    inp = cb.column(s.input) if s.input is not None and s.input in names else None
    ids = cb.column(s.id) if s.id is not None and s.id in names else None
    grp = cb.column(s.group) if s.group is not None and s.group in names else None
    rows: list[Optional[dict]] = []
    for i in range(n):
        a, b = ins[i], out[i]
        c = inp[i] if inp is not None else None
        if type(a) is not str or type(b) is not str or (c is not None and type(c) is not str):
            rows.append(None)
            continue
        own = ids[i] if ids is not None else None
        if own is not None and (type(own) is not str and type(own) is not int):
            rows.append(None)
            continue
        row: dict[str, Any] = {"instruction": a, "input": c or "", "output": b}
        if s.group is not None:
            g = grp[i] if grp is not None else None
            row["group"] = "" if g is None else str(g)
        row["_own_id"] = own_id(own)
        rows.append(row)
    return rows


def memory_checksum(loc: Location, size: int = 65536) -> str:
    """A content checksum of an in-memory pool (Arrow IPC bytes, or JSON of the records)."""
    if loc.fingerprint:
        return loc.fingerprint
    h = hashlib.sha256()
    if loc.kind == "arrow":
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, loc.dataset.schema) as w:
            w.write_table(loc.dataset)
        h.update(sink.getvalue().to_pybytes())
    elif loc.kind == "records" and isinstance(loc.records, (list, tuple)):
        for r in loc.records:
            h.update(json.dumps(r, sort_keys=True, default=str).encode("utf-8"))
    else:
        h.update(f"{loc.label}\0{id(loc.records)}".encode())
    return h.hexdigest()
