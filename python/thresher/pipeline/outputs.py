"""The write stage: scores.parquet (streamed from the cached shards), the selected
(and, on request, the rejected) rows in the input's own format with their id and
scores, report.html and, last, manifest.json: the commit marker of a finished run (a
run killed before it exists is unfinished and resumes).

Every output joins back to the input: ``scores.parquet`` holds each row's ``id``,
``source_file`` (relative to the input folder, or the file's name) and
``source_line`` (line of a text file, 1-based row of a Parquet file or HF dataset);
the written rows carry the same id (``id_column``). Nothing written holds a time
or a host name, so a resumed run writes byte-identical files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import thresher

from ..device import key_dtype, resolve_device
from ..errors import MissingExtraError, OptionError, ResourceError
from ..fs import atomic_file, write_json_atomic
from ..io import Source, file_checksum, selected_name
from ..io.writers import AtPositions, ExtraColumns, clash, write_selected
from ..plan import TOKENS, PipelineConfig
from ..registry import CRITERIA
from ..report import write_report
from .lm_tokens import token_count_kind
from .outdir import data_label
from .plugins import loaded_records, plugin_names
from .scoring import TOKEN_CRITERION
from .state import RunState

# Distributions reported in the manifest (first installed name of each entry).
LIBRARIES = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "numpy": ("numpy",),
    "pyarrow": ("pyarrow",),
    "pandas": ("pandas",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "sentence-transformers": ("sentence-transformers",),
    "datasets": ("datasets",),
}
DECISION_COLUMNS = ("id", "group", TOKENS, "source_file", "source_line", "eligible", "selected", "rank")


def output_names(cfg: PipelineConfig, source: Source) -> list[str]:
    """The files the write stage may put into the output folder (for run.json), besides run.log."""
    names = ["scores.parquet", "manifest.json"]
    if not cfg.score_only:
        names.append(selected_name(source))
        if cfg.write_rejected:
            names.append(selected_name(source, "rejected"))
    if cfg.report:
        names.append("report.html")
    return names


def write_outputs(st: RunState) -> Optional[pd.DataFrame]:
    """Write every output into ``st.out``; with no output folder, return the scores table instead."""
    t = time.perf_counter()
    rank = None if st.out is None or st.cfg.score_only else _rank(st)  # score-only: no decisions
    if st.out is None:
        table = pd.concat([pd.DataFrame(d) for d in shard_score_tables(st, rank)], ignore_index=True)
        st.lap("write", t)
        st.manifest = manifest(st)
        return table
    check_output_columns(st)
    st.outputs["scores"] = st.out / "scores.parquet"
    write_scores(st, st.outputs["scores"], rank)
    if not st.cfg.score_only:
        _write_rows(st)
    st.lap("write", t)
    st.manifest = manifest(st)
    if st.cfg.report:
        _write_report(st)
    # last: manifest.json is the commit marker of a finished run (a run killed before it resumes)
    write_json_atomic(st.manifest, st.out / "manifest.json")
    return None


def _write_rows(st: RunState) -> None:
    """selected.<ext> and, with ``write_rejected``, rejected.<ext>: the rows with their id (and scores)."""
    order = np.asarray(st.order, dtype=np.int64)
    extra = extra_columns(st, order)
    st.outputs["selected"] = write_selected(st.source, st.lines, st.files, order, st.out, extra=extra)
    if st.cfg.write_rejected:
        keep = np.ones(st.n, dtype=bool)
        keep[order] = False
        rejected = np.flatnonzero(keep)
        extra = extra_columns(st, rejected)
        st.outputs["rejected"] = write_selected(
            st.source, st.lines, st.files, rejected, st.out, base="rejected", extra=extra
        )


def _write_report(st: RunState) -> None:
    """report.html, rendered from scores.parquet and the in-memory manifest (manifest.json is written
    after it: the commit marker of a finished run)."""
    t = time.perf_counter()
    try:
        st.outputs["report"] = write_report(
            st.out, source=st.source, embeddings=st.embeddings, manifest=st.manifest, path=st.out / "report.html"
        )
    except MissingExtraError as exc:
        st.say(f"report skipped: {exc}")
    st.lap("report", t)


class Ranks:
    """Each pool row's rank in the selection (-1: not selected), answered for a slice of rows from the
    selected positions alone (O(k), not an array of the pool's length)."""

    def __init__(self, order: Any) -> None:
        order = np.asarray(order, dtype=np.int64)
        by_pos = np.argsort(order, kind="stable")
        self.pos, self.rank = order[by_pos], by_pos.astype(np.int64)

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop = int(sl.start or 0), int(sl.stop)
        out = np.full(stop - start, -1, dtype=np.int64)
        a, b = np.searchsorted(self.pos, [start, stop])
        out[self.pos[a:b] - start] = self.rank[a:b]
        return out


def _rank(st: RunState) -> Ranks:
    return Ranks(st.order)


def id_column(cfg: Any) -> str:
    return cfg.id_column or "id"


def score_columns(st: RunState) -> list[str]:
    """The criteria's columns in scores.parquet (main, components, reasons), in table order."""
    names = pq.ParquetFile(st.outputs["scores"]).schema_arrow.names
    return [c for c in names if c not in DECISION_COLUMNS]


def check_output_columns(st: RunState) -> None:
    """Refuse, before anything is written, an id or score column that the input's first row already
    holds as another field (the writers check every row again)."""
    cols = st.source.columns or []
    schema = st.source.schema
    idc = id_column(st.cfg)
    first = st.source.files[0] if st.source.files else st.source.path
    if idc in cols and (schema is None or schema.id != idc):
        raise clash(idc, idc, first, None)
    if st.cfg.with_scores:
        for step in st.plan.criteria:
            for c in cols:
                if c == step.col or c.startswith(step.col + "."):
                    raise clash(c, idc, first, None)


def extra_columns(st: RunState, positions: np.ndarray) -> ExtraColumns:
    """The id column (and, with ``with_scores``, the score columns) of the rows at pool ``positions``,
    read from scores.parquet batch by batch (only those rows' values are kept)."""
    want = ["id"] + (score_columns(st) if st.cfg.with_scores else [])
    pos = np.unique(np.asarray(positions, dtype=np.int64))
    parts: dict = {c: [] for c in want}
    start = 0
    for batch in pq.ParquetFile(st.outputs["scores"]).iter_batches(columns=want):
        a, b = np.searchsorted(pos, [start, start + batch.num_rows])
        if b > a:
            rows = batch.take(pa.array(pos[a:b] - start, pa.int64()))
            for c in want:
                parts[c].append(_column_values(rows.column(c)))
        start += batch.num_rows
    cols = {}
    for c in want:
        vals = np.concatenate(parts[c]) if parts[c] else np.zeros(0, dtype=object if c == "id" else np.float64)
        cols[id_column(st.cfg) if c == "id" else c] = AtPositions(pos, vals)
    return ExtraColumns(cols, id_column=id_column(st.cfg))


def _column_values(arr: Any) -> np.ndarray:
    """An Arrow column as numpy: float64 for numbers, else str objects (not fixed-width unicode, 4 B a char)."""
    if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
        return arr.to_numpy(zero_copy_only=False).astype(np.float64)
    return np.asarray(arr.to_pylist(), dtype=object)


def write_scores(st: RunState, path: Path, rank: Any) -> None:
    """Stream the cached shard tables into one Parquet file with the decisions."""
    with atomic_file(path, "wb") as fh:
        out = ScoresFile(fh)
        for data in shard_score_tables(st, rank):
            out.add(data)
        out.close()


def _arrow(values: Any) -> tuple[Any, bool]:
    """A column of a shard as Arrow (numbers as they are, NaN kept; other values with pandas' missing
    values, None or a NaN in a text column, as nulls), and whether it holds no value (every one missing)."""
    v = np.asarray(values)
    missing = not len(v) or (v.dtype.kind in "fO" and bool(pd.isna(v).all()))  # (an empty shard: no type)
    if v.dtype.kind == "O":
        arr = pa.array(v, from_pandas=True)
        return (pa.nulls(len(v), pa.string()) if pa.types.is_null(arr.type) else arr), missing
    return pa.array(v), missing


class ScoresFile:
    """``scores.parquet`` written a shard's table at a time. A column's type is the first type it has in a
    shard where it holds a value: a shard whose column is all missing (a criterion's text column is all
    NaN there, hence numbers, as its cache entry holds it) does not fix it; up to ``HOLD`` tables wait
    while a column has no value yet. A column whose values change type between shards is an error
    naming it."""

    HOLD = 64

    def __init__(self, fh: Any) -> None:
        self.fh, self.writer, self.schema = fh, None, None
        self.held: list = []  # (table, columns all missing)

    def add(self, data: dict) -> None:
        cols = {c: _arrow(v) for c, v in data.items()}
        table = pa.table({c: a for c, (a, _) in cols.items()})
        missing = {c for c, (_, m) in cols.items() if m}
        if self.writer is not None:
            self.writer.write_table(self._conform(table, missing))
            return
        self.held.append((table, missing))
        unknown = set.intersection(*(m for _, m in self.held))
        if not unknown or len(self.held) >= self.HOLD:
            self._open()

    def _open(self) -> None:
        first = self.held[0][0].schema
        fields = []
        for f in first:
            typed = [t.schema.field(f.name).type for t, m in self.held if f.name not in m]
            fields.append(pa.field(f.name, typed[0] if typed else f.type))
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(self.fh, self.schema, compression="zstd")
        for table, missing in self.held:
            self.writer.write_table(self._conform(table, missing))
        self.held = []

    def _conform(self, table: Any, missing: set) -> Any:
        cols = []
        for f in self.schema:
            a = table.column(f.name)
            if a.type != f.type:
                a = pa.nulls(len(a), f.type) if f.name in missing else self._cast(a, f)
            cols.append(a)
        return pa.table(cols, schema=self.schema)

    @staticmethod
    def _cast(a: Any, f: Any) -> Any:
        try:
            return a.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"scores.parquet: column {f.name!r} holds {f.type} in an earlier shard and {a.type} "
                             f"in a later one (a criterion's output changed type): {exc}") from None  # fmt: skip

    def close(self) -> None:
        if self.writer is None and self.held:
            self._open()
        if self.writer is not None:
            self.writer.close()


def _shard_parts(st: RunState, ref: Any, sl: slice) -> dict:
    parts = {}
    for step in st.plan.criteria:
        if step.col in st.pool_frames:
            frame = st.pool_frames[step.col]  # a table, or a PoolEntry read a shard's rows at a time
            parts[step.col] = frame.rows(sl) if hasattr(frame, "rows") else frame.iloc[sl].reset_index(drop=True)
            continue
        df = st.cache.get(step.col, ref.keys[step.col], ref.ids)
        if df is None:
            raise ResourceError(f"cache entry for {step.col} vanished or changed during the run ({st.cache.root})")
        parts[step.col] = df
    return parts


def shard_score_tables(st: RunState, rank: Any) -> Iterator[dict]:
    """Per shard: {column: array} with id, group, tokens, criteria columns and the decisions."""
    start = 0
    names = np.asarray(source_file_names(st.source), dtype=object)
    for ref in st.shards:
        sl = slice(start, start + ref.n)
        parts = _shard_parts(st, ref, sl)
        if parts:
            base = next(iter(parts.values()))["id"].to_numpy()
        else:  # no criteria (random selector): ids from the token counts
            lt = st.cache.get(TOKEN_CRITERION, ref.tokens_key, ref.ids)
            if lt is None:
                raise ResourceError(f"cache entry for token counts vanished during the run ({st.cache.root})")
            base = lt["id"].to_numpy()
        data = {"id": base}
        if st.groups is not None:
            data["group"] = st.groups[sl]
        data[TOKENS] = st.tokens[sl]
        data["source_file"] = names[st.files[sl]]
        data["source_line"] = st.lines[sl]
        for df in parts.values():
            for c in df.columns:
                if c != "id":
                    data[c] = df[c].to_numpy()
        if rank is not None:
            data["eligible"] = st.eligible[sl]
            data["selected"] = rank[sl] >= 0
            data["rank"] = rank[sl]
        elif st.out is not None and st.eligible is not None:  # score-only: the filters' verdict only
            data["eligible"] = st.eligible[sl]
        yield data
        start += ref.n


def source_file_names(source: Source) -> list[str]:
    """Each input file's name as ``scores.parquet`` records it: its path inside the input folder, or
    the file's own name (a single file, a saved HF dataset)."""
    root = Path(source.path)
    out = []
    for f in source.files:
        f = Path(f)
        out.append(f.relative_to(root).as_posix() if root.is_dir() and f != root else f.name)
    return out


def file_sha(p: Optional[Path]) -> Optional[str]:
    if p is None or not Path(p).exists():
        return None
    if Path(p).is_dir():
        return file_checksum(Path(p))
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def _selected_tokens(st: RunState) -> int:
    """The tokens the selection holds (as the token budget counts them)."""
    order = np.asarray(st.order if st.order is not None else [], dtype=np.int64)
    return int(np.asarray(st.tokens[np.sort(order)], dtype=np.float64).sum()) if len(order) else 0


def _token_stop(st: RunState) -> Optional[dict]:
    """A token budget's first row of the order left out (it does not fit in the tokens left), as
    ``scores.parquet`` names it; None when no row of the order was left out, or with no token budget."""
    if st.token_stop is None:
        return None
    pos = int(st.token_stop)
    return {
        "source_file": source_file_names(st.source)[int(st.files[pos])],
        "source_line": int(st.lines[pos]),
        "tokens": int(st.tokens[pos]),
        "tokens_left": int(st.cfg.tokens) - _selected_tokens(st),
    }


def _models(st: RunState) -> dict:
    """Model fingerprints of the criteria: from the loaded scorer, else as recorded in the cache entry."""
    models = {}
    for step in st.plan.criteria:
        fp = st.fingerprint(step)
        if fp is None:
            key = st.pool_keys.get(step.col) or (st.shards[0].keys.get(step.col) if st.shards else None)
            fp = st.cache.info(step.col, key).get("fingerprint") if key else None
        if fp is not None:
            models[step.col] = str(fp)
    return models


def manifest(st: RunState) -> dict:
    cfg, plan, source = st.cfg, st.plan, st.source
    crit = [
        {
            "name": c.name,
            "as": c.alias,
            "options": c.options,
            "cache_key": st.keys.get(c.col),
            "direction": CRITERIA.get(c.name).meta.get("direction"),
            **({"run_info": st.run_info[c.col]} if st.run_info.get(c.col) is not None else {}),
        }
        for c in plan.criteria
    ]
    return {
        "thresher": thresher.__version__,
        "inputs": [
            {
                "path": data_label(cfg.data),
                "split": cfg.split,
                "streaming": bool(cfg.streaming),
                "format": source.format,
                "sha256": st.checksum,
                "files": [str(f) for f in source.files],
                "rows": st.n,
                "skipped": len(source.skipped),
                "skipped_rows": source.skipped[:100],
                "schema": source.schema.describe() if source.schema else None,
                "columns": source.columns,
            }
        ],
        "recipe": {"name": plan.recipe, "options": plan.recipe_options} if plan.recipe else None,
        "criteria": crit,
        "models": _models(st),
        "selector": {"name": plan.selector.name, "options": plan.selector.options, "how": st.selection_kind},
        "filters": plan.filters,
        "budget": {
            "k": cfg.k,
            "ratio": cfg.ratio,
            "tokens": cfg.tokens,
            "base": plan.budget_base,
            "resolved_k": st.k,
            "token_count": token_count_kind(cfg, plan),
            "selected_tokens": _selected_tokens(st) if cfg.tokens is not None else None,
            "stopped_before": _token_stop(st),
        },
        "score_only": bool(cfg.score_only),
        "selected": int(len(st.order)),
        "seed": cfg.seed,
        "shard_size": cfg.shard_size,
        "checkpoint_s": cfg.checkpoint_s,
        "engine": cfg.engine,
        **({"engine_run": engine_run(st)} if st.workers or st.read_on_workers else {}),
        "plugins": loaded_records(plugin_names(cfg)),
        "id_column": id_column(cfg),
        "with_scores": bool(cfg.with_scores),
        "environment": environment(st),
        "outputs": {p.name: file_sha(p) for k, p in st.outputs.items() if k in ("selected", "rejected", "scores")},
    }


def engine_run(st: RunState) -> dict:
    """How a worker-pool engine ran: its options, and the nodes and worker processes that scored shards."""
    return {
        "options": dict(st.cfg.engine_options or {}),
        "nodes": len(st.workers),
        "worker_processes": sum(len(p) for p in st.workers.values()),
        "worker_peak_rss_mb": round(st.worker_peak_rss_mb, 1),
        "pool_task_peak_rss_mb": round(st.pool_task_peak_rss_mb, 1) if st.pool_task_peak_rss_mb else None,
        # private memory alone (sampled): the RSS figures also count object-store and memory-mapped file pages
        "worker_peak_private_mb": round(st.worker_peak_private_mb, 1) if st.worker_peak_private_mb else None,
        "pool_task_peak_private_mb": round(st.pool_task_peak_private_mb, 1) if st.pool_task_peak_private_mb else None,
        "read_on_workers": bool(st.read_on_workers),
    }


def library_versions() -> dict:
    """Installed versions of python, thresher and the libraries that shape the scores (null: not installed).

    Read from the package metadata: nothing is imported."""
    out = {"python": platform.python_version(), "thresher": thresher.__version__}
    for name, dists in LIBRARIES.items():
        out[name] = None
        for d in dists:
            try:
                out[name] = importlib.metadata.version(d)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def _resolved_device(spec: Any) -> str:
    try:
        return resolve_device(spec)
    except (OptionError, ResourceError):  # recorded as given (the run itself would have failed on it)
        return str(spec)


def run_devices(plan: Any) -> tuple[dict, dict]:
    """The device and dtype each model-based criterion ran on (its ``device``/``dtype`` options RESOLVED by
    thresher.device: ``auto`` -> ``cpu`` or ``cuda``); CUDA devices with their name."""
    devices, dtypes = {}, {}
    for step in plan.criteria:
        if "device" not in step.options:
            continue
        dev = _resolved_device(step.options["device"])
        if "dtype" in step.options:
            dtypes[step.col] = key_dtype(step.options["dtype"], dev)
        devices[step.col] = f"{dev} ({_cuda_name(dev)})" if dev.startswith("cuda") else dev
    return devices, dtypes


def _cuda_name(dev: str) -> str:
    import torch

    try:
        return str(torch.cuda.get_device_name(torch.device(dev)))
    except (RuntimeError, AssertionError, ValueError):
        return "unavailable"


def environment(st: RunState) -> dict:
    devices, dtypes = run_devices(st.plan)
    return {
        "libraries": library_versions(),
        "device": ", ".join(sorted(set(devices.values()))) or "cpu",
        "devices": devices,
        "dtypes": dtypes,
    }
