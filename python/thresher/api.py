"""The Python API: :func:`score`, :func:`select` and :func:`rank`, for notebooks and scripts.

``data`` may be a path (file or folder, any format the readers know), an fsspec URL
(``file://``, ``memory://``, ``hf://``, ``s3://``), a ``load_dataset`` id or a local data
folder with ``split=``/``streaming=``, a pandas ``DataFrame``, a pyarrow ``Table``, an HF
``Dataset``/``IterableDataset`` (or a ``DatasetDict`` with ``split=``), or an iterable of
dicts. Every kind goes through the one pipeline (:func:`thresher.pipeline.run_pipeline`):
same reader, same criteria, same score cache, same selectors.

What comes back is the kind that went in:

=====================  =====================================================================
input                  result
=====================  =====================================================================
``DataFrame``          a ``DataFrame`` (the input's index kept, so rows join back by index)
``pyarrow.Table``      a ``pyarrow.Table``
HF ``Dataset``         a ``datasets.Dataset``
HF ``IterableDataset`` a ``datasets.Dataset`` (in memory)
iterable of dicts      a ``list`` of dicts (copies; the inputs are not modified)
path, URL, id          a :class:`Result`: the scores table, and the output paths when ``out``
=====================  =====================================================================

:func:`score` adds the criteria's columns (``<criterion>``, its components
``<criterion>.<part>`` and ``<criterion>.reason`` where a row could not be scored) to every
row. :func:`select` adds them too, plus ``rank`` (0 = chosen first); with ``keep="selected"``
(the default) only the selected rows come back, in input order; with ``keep="all"`` every row
comes back with a boolean ``selected`` column and ``rank`` -1 for the rows left out. Rows the
reader skipped (``on_bad_row="skip"``) get NaN scores with the reason in ``<criterion>.reason``.

Nothing is written that was not asked for: in-memory data is staged in a temporary folder
(removed afterwards), scores go to a temporary cache unless ``cache_dir`` is given (give one
to reuse scores across calls), and an output folder is written only when ``out`` is given. A call
that stops (an error, Ctrl-C) keeps its temporary cache and warns where: the same call again, in
the same process, resumes from the rows already scored.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from .errors import InputError, OptionError
from .fs import atomic_file
from .io import file_checksum
from .io.sources import is_url, locate
from .io.writers import read_table
from .pipeline import PipelineConfig, PipelineResult, run_pipeline
from .registry import SELECTORS, _load_builtins
from .selectors.basic import objective_matrix, pareto_order

__all__ = ["Result", "rank", "score", "select"]

CriteriaArg = Union[str, Sequence[Any]]
# PipelineConfig fields the API sets itself (the rest may be passed as keywords)
_OWN = {"data", "out", "recipe", "recipe_options", "criteria", "selector", "k", "ratio", "tokens", "model"}
_OWN |= {"embedder", "cache_dir", "score_only", "quiet", "split", "streaming"}


# ------------------------------------------------------------------ the result of a path input
@dataclass
class Result:
    """What :func:`score`/:func:`select` return for a path, URL or dataset id.

    ``table``: one row per pool row, keyed by ``id`` (the row's own id, else its content
    hash), with the criteria's columns and, for a selection, ``eligible``, ``selected`` and
    ``rank``. ``paths``: the files written into ``out`` (empty when no ``out`` was given)."""

    table: pd.DataFrame
    n_rows: int
    k: Optional[int] = None
    out: Optional[Path] = None
    paths: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    @property
    def selected(self) -> pd.DataFrame:
        """The selected rows of :attr:`table`, best first (a score-only result: empty)."""
        if "rank" not in self.table.columns:
            return self.table.iloc[0:0]
        sel = self.table[self.table["rank"] >= 0]
        return sel.sort_values("rank", kind="stable")

    def _summary(self) -> list[tuple[str, str]]:
        items = [("rows", str(self.n_rows))]
        if self.k is not None:
            items.append(("selected", f"{self.k} ({self.k / max(self.n_rows, 1):.1%})"))
        crit = [c.get("as") or c.get("name") for c in self.manifest.get("criteria", [])]
        items.append(("criteria", ", ".join(map(str, crit)) or "none"))
        if self.skipped:
            items.append(("skipped rows", str(len(self.skipped))))
        if self.out is not None:
            items.append(("out", str(self.out)))
        return items

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._summary())
        return f"Result({inner})"

    def _repr_html_(self) -> str:
        head = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self._summary()
        )
        shown = self.selected if self.k is not None else self.table
        return f"<div><b>thresher result</b><table>{head}</table>{shown.head(10).to_html(index=False)}</div>"


# ------------------------------------------------------------------ inputs
@dataclass
class _Input:
    kind: str  # pandas | arrow | hf | hf-iterable | records | path
    obj: Any
    n: int = 0
    as_result: bool = False  # a path/id input read through an HF object: return a Result
    staged: Optional[Path] = None


def _classify(data: Any, split: Optional[str], streaming: bool) -> _Input:
    if isinstance(data, (str, os.PathLike)):
        if split is None and (Path(data).exists() or is_url(str(data))):
            return _Input("path", str(data), as_result=True)  # files are streamed: streaming= changes nothing
        loc = locate(str(data), split=split, streaming=streaming)
        if loc.kind == "files":
            return _Input("path", str(loc.path), as_result=True)
        return _hf_input(loc.dataset, as_result=True)
    mod = type(data).__module__.split(".")[0]
    if mod == "datasets":
        return _hf_input(locate(data, split=split).dataset)
    if split is not None or streaming:
        raise OptionError(f"split/streaming: only for paths, dataset ids and HF datasets, not a {type(data).__name__}")
    if mod == "pandas" and isinstance(data, pd.DataFrame):
        return _Input("pandas", data, len(data))
    if mod == "pyarrow" and hasattr(data, "num_rows"):
        import pyarrow as pa

        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        return _Input("arrow", table, table.num_rows)
    if isinstance(data, (dict, str, bytes)) or not isinstance(data, Iterable):
        raise OptionError(
            "data: expected a path, URL, dataset id, pandas DataFrame, pyarrow Table, HF Dataset or an "
            f"iterable of dicts; got {type(data).__name__}"
        )
    rows = list(data)
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise OptionError(f"data: item {bad} is a {type(rows[bad]).__name__}, expected a dict")
    return _Input("records", rows, len(rows))


def _hf_input(ds: Any, as_result: bool = False) -> _Input:
    try:
        return _Input("hf", ds, len(ds), as_result=as_result)
    except TypeError:  # an IterableDataset has no length
        return _Input("hf-iterable", ds, 0, as_result=as_result)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} cannot be written as JSON")


def _write_jsonl(rows: Iterable[Mapping], path: Path) -> int:
    n = 0
    with atomic_file(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(dict(r), ensure_ascii=False, default=_jsonable) + "\n")
            n += 1
    return n


def _write_parquet(tables: Iterable[Any], path: Path) -> None:
    import pyarrow.parquet as pq

    writer = None
    with atomic_file(path, "wb") as fh:
        for t in tables:
            if writer is None:
                writer = pq.ParquetWriter(fh, t.schema)
            writer.write_table(t)
        if writer is not None:
            writer.close()


def _unstageable(df: pd.DataFrame) -> OptionError:
    """The first column whose values neither Arrow nor JSON can store, named."""
    for c in df.columns:
        for v in df[c]:
            try:
                json.dumps(v, default=_jsonable)
            except (TypeError, ValueError):
                return OptionError(
                    f"data: column {c!r} holds {type(v).__name__} values, which can be written neither as Arrow nor "
                    "as JSON; drop the column or convert it (e.g. to str)"
                )
    return OptionError("data: a column holds values that can be written neither as Arrow nor as JSON")


def _stage_file(inp: _Input, tmp: Path) -> Path:
    """Write an in-memory input as Parquet (Arrow-able tables) or JSON Lines into ``tmp``."""
    import pyarrow as pa

    if inp.kind == "pandas":
        try:
            inp_table = pa.Table.from_pandas(inp.obj, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            try:
                _write_jsonl(inp.obj.to_dict("records"), tmp / "data.jsonl")
            except TypeError:
                raise _unstageable(inp.obj) from None
            return tmp / "data.jsonl"
        _write_parquet([inp_table], tmp / "data.parquet")
        return tmp / "data.parquet"
    if inp.kind == "arrow":
        _write_parquet([inp.obj], tmp / "data.parquet")
        return tmp / "data.parquet"
    if inp.kind == "hf":
        _write_parquet(inp.obj.with_format("arrow").iter(batch_size=4096), tmp / "data.parquet")
        return tmp / "data.parquet"
    try:
        inp.n = _write_jsonl(inp.obj, tmp / "data.jsonl")
    except TypeError:
        if inp.kind != "records":
            raise
        raise _unstageable(pd.DataFrame(inp.obj)) from None
    return tmp / "data.jsonl"


@contextlib.contextmanager
def _staged(inp: _Input) -> Iterator[str]:
    """The path the pipeline reads: the input's own, or a staged copy removed afterwards.

    The copy's folder is named by its checksum, so the same data has the same path (an
    output folder given with ``out`` then resumes instead of being refused)."""
    if inp.kind == "path":
        yield inp.obj
        return
    scratch = Path(tempfile.mkdtemp(prefix="thresher-stage-"))
    stable = None
    try:
        f = _stage_file(inp, scratch)
        if inp.n == 0:
            raise OptionError("data: no rows")
        stable = Path(tempfile.gettempdir()) / f"thresher-data-{file_checksum(f)[:20]}"
        stable.mkdir(exist_ok=True)
        os.replace(f, stable / f.name)
        inp.staged = stable / f.name
        yield str(inp.staged)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if stable is not None:
            shutil.rmtree(stable, ignore_errors=True)


# ------------------------------------------------------------------ running
def _steps(criteria: Optional[CriteriaArg], options: Optional[Mapping]) -> list:
    """Criteria as pipeline steps; ``options`` maps a criterion name to its options."""
    if criteria is None:
        return []
    items = [criteria] if isinstance(criteria, str) else list(criteria)
    opts = dict(options or {})
    names = {c if isinstance(c, str) else c.get("name") if isinstance(c, dict) else None for c in items}
    unknown = sorted(set(opts) - names)
    if unknown:
        raise OptionError(f"options: {unknown} not among the criteria {sorted(n for n in names if n)}")
    for name, o in opts.items():
        if not isinstance(o, Mapping):
            raise OptionError(f"options: {name!r} needs a mapping of its options, got {o!r}")
    return [{"name": c, "options": dict(opts[c])} if isinstance(c, str) and c in opts else c for c in items]


def _config(path: str, extra: dict, **fields: Any) -> PipelineConfig:
    allowed = set(PipelineConfig.__dataclass_fields__) - _OWN
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise OptionError(f"unknown keyword(s) {unknown}; the pipeline also takes {sorted(allowed)}")
    return PipelineConfig(data=path, **fields, **extra)


@contextlib.contextmanager
def _scratch(given: Optional[Any]) -> Iterator[Path]:
    """``given`` as a Path, or a temporary folder removed afterwards."""
    if given is not None:
        yield Path(given)
        return
    tmp = tempfile.mkdtemp(prefix="thresher-run-")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _run_cache(given: Optional[Any], data: Any) -> Iterator[Path]:
    """``given``, or a temporary score cache named after the data the pipeline reads (and this
    process): a call that stops (an error, Ctrl-C in a notebook) leaves it in place and warns where,
    so the same call again resumes from the shards already scored; a call that completes removes it."""
    if given is not None:
        yield Path(given)
        return
    ident = f"{os.path.abspath(str(data))}\0{os.getpid()}".encode("utf-8", "surrogatepass")
    tmp = Path(tempfile.gettempdir()) / f"thresher-cache-{hashlib.blake2b(ident, digest_size=8).hexdigest()}"
    try:
        yield tmp
    except BaseException:
        if tmp.is_dir() and any(tmp.rglob("*.parquet")):
            msg = f"thresher: the scores computed so far are kept in {tmp}; the same call resumes from them"
            warnings.warn(msg, RuntimeWarning, stacklevel=4)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def _pool_rows(n_input: int, skipped: list, table: pd.DataFrame) -> np.ndarray:
    """Per pool position, the input row (0-based). A staged input has one row a line (or a
    Parquet row), so ``source_line - 1`` when the table has it; else the rows the reader did
    not skip, in order."""
    if "source_line" in table.columns:
        return table["source_line"].to_numpy(dtype=np.int64) - 1
    bad = {int(s["line"]) - 1 for s in skipped if s.get("line") is not None}
    rows = np.asarray([i for i in range(n_input) if i not in bad], dtype=np.int64)
    return rows[: len(table)]


def _criteria_cols(res: PipelineResult) -> list:
    return [c["as"] or c["name"] for c in res.manifest.get("criteria", [])]


def _score_columns(table: pd.DataFrame, crits: list) -> list:
    """The criteria's columns: ``<criterion>`` and ``<criterion>.<part>``."""
    return [c for c in table.columns if c in crits or c.split(".", 1)[0] in crits and "." in c]


def _columns(inp: _Input, res: PipelineResult, table: pd.DataFrame, id_column: Optional[str]) -> pd.DataFrame:
    """The columns added to every input row (NaN scores and a reason for rows the reader skipped)."""
    n = inp.n
    rows = _pool_rows(n, res.skipped, table)
    out: dict = {}
    for c in _score_columns(table, _criteria_cols(res)):
        src = table[c].to_numpy()
        if src.dtype.kind in "fiub":
            arr = np.full(n, np.nan)
        else:
            arr = np.full(n, "" if c.endswith(".reason") else None, dtype=object)
        arr[rows] = src
        out[c] = arr
    for s in res.skipped:
        if s.get("line") is None or not 0 < int(s["line"]) <= n:
            continue
        for c in _criteria_cols(res):
            out.setdefault(f"{c}.reason", np.full(n, "", dtype=object))[int(s["line"]) - 1] = (
                f"input row skipped: {s.get('reason')}"
            )
    if "rank" in table.columns:
        rank = np.full(n, -1, dtype=np.int64)
        rank[rows] = table["rank"].to_numpy()
        out["selected"], out["rank"] = rank >= 0, rank
    if id_column is not None:
        ids = np.full(n, None, dtype=object)
        ids[rows] = table["id"].to_numpy()
        out[id_column] = ids
    return pd.DataFrame(out)


def _run(inp: _Input, cfg: PipelineConfig, *, select: bool) -> tuple[PipelineResult, pd.DataFrame]:
    """Run the pipeline (temporary cache and output folder unless given); the scores table."""
    given_cache, given_out = cfg.cache_dir, cfg.out if select else None
    with _run_cache(cfg.cache_dir, cfg.data) as cache, _scratch(cfg.out if select else None) as out:
        cfg.cache_dir = str(cache)
        if select:
            cfg.report = cfg.report and cfg.out is not None
            cfg.out = str(out)
        try:
            res = run_pipeline(cfg)
        except InputError as exc:
            raise _bad_input(inp, exc, given_cache, given_out) from None
        table = res.scores() if select else res.table
        return res, table


_KIND_NAMES = {"pandas": "DataFrame", "arrow": "pyarrow Table", "hf": "Dataset", "hf-iterable": "IterableDataset"}


def _where(inp: _Input, line: Optional[int]) -> str:
    """An in-memory input's bad row in the caller's terms: its position (0-based), and a
    DataFrame's index label (the staged copy has one line, or one Parquet row, a row)."""
    what = f"data ({_KIND_NAMES[inp.kind]})" if inp.kind in _KIND_NAMES else "data"
    if line is None:
        return what
    pos = int(line) - 1
    if inp.kind == "pandas" and 0 <= pos < len(inp.obj):
        return f"{what}, row {pos} (index {inp.obj.index[pos]!r})"
    return f"{what}, {'item' if inp.kind == 'records' else 'row'} {pos}"


def _bad_input(inp: _Input, exc: InputError, cache: Optional[Any], out: Optional[Any]) -> InputError:
    """The pipeline's bad-row error worded for a Python caller: an in-memory input named by its
    row (not the staged copy's path), and the hint in keyword arguments, not CLI flags (a
    temporary cache is gone when the call returns, so it is not offered for reuse)."""
    reason = getattr(exc, "row_reason", exc.reason)
    skippable = getattr(exc, "skippable", True)
    hint = "pass on_bad_row='skip' to skip bad rows" if skippable else "fix the file"
    if cache is not None:
        again = " with overwrite=True" if out is not None else ""
        what = "row" if skippable else "file"
        kept = f"the scores computed so far are kept in {cache} (fix the {what} and call again{again} to reuse them)"
        hint = f"{kept}, or {hint}" if skippable else kept
    cls = type(exc)  # DataError stays DataError
    if inp.kind == "path":
        err = cls(f"{reason}; {hint}", file=exc.file, line=exc.line, field=exc.field)
    else:
        err = cls(f"{reason}; {hint}", file=_where(inp, exc.line), field=exc.field)
    err.row_reason, err.skippable = reason, skippable
    return err


# ------------------------------------------------------------------ results
def _keep_rows(cols: pd.DataFrame, keep: str) -> Optional[np.ndarray]:
    """Input rows to return (None: all of them)."""
    if "selected" not in cols.columns or keep == "all":
        return None
    return np.flatnonzero(cols["selected"].to_numpy())


def _staged_rows(inp: _Input) -> list:
    assert inp.staged is not None
    with open(inp.staged, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@contextlib.contextmanager
def _no_datasets_bars() -> Iterator[None]:
    """HF datasets' own progress bars off (a call of the API prints nothing of its own), then as they were."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            enable_progress_bars()


def _as_kind(inp: _Input, cols: pd.DataFrame, keep: str) -> Any:
    """The input, of its own kind, with ``cols`` added (only the kept rows)."""
    idx = _keep_rows(cols, keep)
    if idx is not None:
        cols = cols.iloc[idx].drop(columns=["selected"]).reset_index(drop=True)
    if inp.kind == "pandas":
        df = inp.obj if idx is None else inp.obj.iloc[idx]
        df = df.copy()
        for c in cols.columns:
            df[c] = cols[c].to_numpy()
        return df
    if inp.kind == "arrow":
        import pyarrow as pa

        t = inp.obj if idx is None else inp.obj.take(pa.array(idx, pa.int64()))
        for c in cols.columns:
            t = t.append_column(c, pa.array(cols[c].tolist()))
        return t
    if inp.kind == "hf":
        with _no_datasets_bars():  # add_column after select flattens the indices, behind a progress bar
            ds = inp.obj if idx is None else inp.obj.select(idx.tolist())
            for c in cols.columns:
                ds = ds.add_column(c, cols[c].tolist())
        return ds
    rows = inp.obj if inp.kind == "records" else _staged_rows(inp)
    picked = rows if idx is None else [rows[i] for i in idx]
    extra = cols.to_dict("records")
    out = [{**dict(r), **e} for r, e in zip(picked, extra)]
    if inp.kind == "records":
        return out
    import datasets

    return datasets.Dataset.from_list(out)


def _result(inp: _Input, res: PipelineResult, table: pd.DataFrame, *, keep: str, id_column: Optional[str],
            out: Optional[Any]) -> Any:  # fmt: skip
    if inp.as_result:
        paths: dict = {}
        if out is not None:
            paths = {"scores": res.scores_path, "selected": res.selected_path, "report": res.report_path}
            paths = {k: Path(v) for k, v in paths.items() if v is not None}
            paths["manifest"] = Path(out) / "manifest.json"
        k = int(len(res.selected)) if "rank" in table.columns else None
        return Result(table, len(table), k, Path(out) if out is not None else None, paths, res.manifest,
                      list(res.skipped))  # fmt: skip
    return _as_kind(inp, _columns(inp, res, table, id_column), keep)


def _check_keep(keep: str, id_column: Optional[str]) -> None:
    if keep not in ("selected", "all"):
        raise OptionError(f"keep: expected 'selected' or 'all', got {keep!r}")
    if id_column is not None and (not isinstance(id_column, str) or not id_column):
        raise OptionError(f"id_column: expected a column name, got {id_column!r}")


# ------------------------------------------------------------------ the API
def score(
    data: Any,
    criteria: CriteriaArg,
    *,
    options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    model: Optional[str] = None,
    embedder: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    split: Optional[str] = None,
    streaming: bool = False,
    id_column: Optional[str] = None,
    quiet: bool = True,
    **kw: Any,
) -> Any:
    """Score every row of ``data`` with ``criteria``; the input's kind back, with score columns.

    ``criteria``: a name (``"ifd"``), a list of names, or steps ``{"name": ..., "options": {...},
    "as": COLUMN}``. ``options``: ``{criterion: {option: value}}`` (``thresher criteria NAME``
    lists them). ``model``/``embedder``: the model for every criterion that takes one.
    ``cache_dir``: keep the scores there (reused by later calls on the same rows); default a
    temporary cache. ``split``/``streaming``: for dataset ids, data folders and DatasetDicts.
    ``id_column``: also add thresher's row id (own id or content hash) under that name.
    ``**kw``: other :class:`~thresher.pipeline.PipelineConfig` fields (``fields``,
    ``on_bad_row``, ``shard_size``, ``engine``, ``plugins``, ...).

    >>> df = thresher.score(pd.read_parquet("pool.parquet"), criteria=["length", "mtld"])
    """
    _check_keep("selected", id_column)
    inp = _classify(data, split, streaming)
    with _staged(inp) as path:
        cfg = _config(path, kw, criteria=_steps(criteria, options), model=model, embedder=embedder,
                      cache_dir=cache_dir, score_only=True, quiet=quiet)  # fmt: skip
        res, table = _run(inp, cfg, select=False)
        return _result(inp, res, table, keep="selected", id_column=id_column, out=None)


def select(
    data: Any,
    *,
    recipe: Optional[str] = None,
    criteria: Optional[CriteriaArg] = None,
    selector: Optional[Union[str, Mapping[str, Any]]] = None,
    k: Optional[int] = None,
    ratio: Optional[float] = None,
    tokens: Optional[int] = None,
    options: Optional[Mapping[str, Any]] = None,
    out: Optional[Union[str, os.PathLike]] = None,
    keep: Literal["selected", "all"] = "selected",
    model: Optional[str] = None,
    embedder: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    split: Optional[str] = None,
    streaming: bool = False,
    id_column: Optional[str] = None,
    quiet: bool = True,
    **kw: Any,
) -> Any:
    """Select a subset of ``data`` by a ``recipe`` or by ``criteria`` (+ ``selector``).

    Budget: one of ``k`` (rows), ``ratio`` (of the pool) or ``tokens``; a recipe's default
    budget applies when none is given. ``options``: the recipe's options with ``recipe``,
    else ``{criterion: {option: value}}``. ``selector``: a name or ``{"name": ..., "options":
    {...}}`` (default with one criterion: its top k). ``out``: also write the run's output
    folder there (selected rows in the input's format, ``scores.parquet``, manifest, report).
    ``keep``: ``"selected"`` returns only the selected rows (input order, with ``rank``);
    ``"all"`` returns every row with ``selected`` and ``rank`` (-1: not selected).
    Other arguments as in :func:`score`.

    >>> ds = thresher.select(load_dataset("json", data_files="pool.jsonl")["train"],
    ...                      criteria=["length"], ratio=0.05)
    """
    _check_keep(keep, id_column)
    if recipe is not None and options is not None and criteria is None:
        recipe_options, crit_options = dict(options), None
    else:
        recipe_options, crit_options = {}, options
    inp = _classify(data, split, streaming)
    if inp.as_result and keep != "selected":
        raise OptionError("keep: only for in-memory data (a path's Result holds every row in .table)")
    with _staged(inp) as path:
        cfg = _config(path, kw, recipe=recipe, recipe_options=recipe_options,
                      criteria=_steps(criteria, crit_options), selector=selector, k=k, ratio=ratio,
                      tokens=tokens, model=model, embedder=embedder, cache_dir=cache_dir, out=out,
                      quiet=quiet)  # fmt: skip
        res, table = _run(inp, cfg, select=True)
        _warn_empty_token_budget(inp, res)
        return _result(inp, res, table, keep=keep, id_column=id_column, out=out)


def _warn_empty_token_budget(inp: _Input, res: PipelineResult) -> None:
    """A token budget that selects nothing says why (the first row of the order alone is over it), as the
    CLI's log does: a quiet call would otherwise return no rows without a word."""
    budget = res.manifest.get("budget") or {}
    stop = budget.get("stopped_before")
    if len(res.selected) or not stop:
        return
    where = _where(inp, stop["source_line"]) if inp.kind != "path" else f"{stop['source_file']}:{stop['source_line']}"
    warnings.warn(f"thresher: tokens={budget.get('tokens')} selected nothing: the first row of the order "
                  f"({where}) alone holds {stop['tokens']} tokens; a token budget keeps a prefix of the order",
                  RuntimeWarning, stacklevel=3)  # fmt: skip


def rank(
    scores: Any,
    objectives: Union[str, Sequence[str]],
    *,
    method: Literal["pareto", "weighted", "rrf"] = "pareto",
    k: Optional[int] = None,
    ratio: Optional[float] = None,
    weights: Optional[Sequence[float]] = None,
    normalize: Optional[str] = None,
    seed: int = 0,
) -> Any:
    """Rank a scores table by several objectives without rescoring (``thresher rank``).

    ``scores``: a DataFrame, a pyarrow Table, a :class:`Result`, or a ``.parquet``/``.csv``/
    ``.jsonl`` path. ``objectives``: ``"NAME:max"``/``"NAME:min"`` (or a bare name: its
    criterion's direction). ``normalize`` (``method="weighted"`` only): ``rank`` (default), ``minmax``,
    ``zscore``, ``quantile`` or ``none``. Returns a DataFrame (an Arrow table for an Arrow input) with
    ``rank`` (selection order, -1 beyond ``k``), ``selected`` and, for Pareto,
    ``pareto_rank`` and ``crowding``."""
    df, arrow = _scores_frame(scores)
    objs = [objectives] if isinstance(objectives, str) else list(objectives)
    if not objs:
        raise OptionError("objectives: give at least one, e.g. ['ifd:max']")
    if method not in ("pareto", "weighted", "rrf"):
        raise OptionError(f"method: expected pareto, weighted or rrf, got {method!r}")
    if k is not None and ratio is not None:
        raise OptionError("give k or ratio, not both")
    n = len(df)
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise OptionError(f"ratio: expected a fraction in (0, 1], got {ratio!r}")
        k = max(1, int(np.floor(ratio * n + 0.5)))
    opts: dict = {"objectives": objs}
    if weights is not None:
        if method == "pareto":
            raise OptionError("weights: only for method 'weighted' or 'rrf'")
        opts["weights"] = [float(w) for w in weights]
    if normalize is not None:
        if method != "weighted":
            raise OptionError(f"normalize: only for method 'weighted', not {method!r}")
        opts["normalize"] = normalize
    _load_builtins()
    order = np.asarray(SELECTORS.get(method).obj(df, n if k is None else k, seed=seed, **opts), dtype=np.int64)
    ranks = np.full(n, -1, dtype=np.int64)
    ranks[order] = np.arange(len(order))
    out = df.copy()
    if method == "pareto":
        mat, maxi, _ = objective_matrix(df, objs)
        _, out["pareto_rank"], out["crowding"] = pareto_order(mat, maxi)
    out["rank"], out["selected"] = ranks, ranks >= 0
    if arrow:
        import pyarrow as pa

        return pa.Table.from_pandas(out, preserve_index=False)
    return out


def _scores_frame(scores: Any) -> tuple[pd.DataFrame, bool]:
    if isinstance(scores, Result):
        return scores.table, False
    if isinstance(scores, pd.DataFrame):
        return scores, False
    if type(scores).__module__.split(".")[0] == "pyarrow" and hasattr(scores, "to_pandas"):
        return scores.to_pandas(), True
    if isinstance(scores, (str, os.PathLike)):
        return read_table(scores), False
    raise OptionError(f"scores: expected a DataFrame, pyarrow Table, Result or path, got {type(scores).__name__}")
