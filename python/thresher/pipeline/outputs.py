"""The write stage: scores.parquet (streamed from the cached shards), the selected
subset in the input's own format, manifest.json and report.html."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import thresher

from ..errors import MissingExtraError, ResourceError
from ..fs import atomic_file, write_json_atomic
from ..io import file_checksum, write_selected
from ..plan import TOKENS
from ..registry import CRITERIA
from ..report import write_report
from .scoring import TOKEN_CRITERION
from .state import RunState


def write_outputs(st: RunState) -> Optional[pd.DataFrame]:
    """Write every output into ``st.out``; with no output folder, return the scores table instead."""
    t = time.perf_counter()
    rank = None if st.out is None else _rank(st)
    if st.out is None:
        table = pd.concat([pd.DataFrame(d) for d in shard_score_tables(st, rank)], ignore_index=True)
        st.lap("write", t)
        st.manifest = manifest(st)
        return table
    st.outputs["scores"] = st.out / "scores.parquet"
    write_scores(st, st.outputs["scores"], rank)
    if not st.cfg.score_only:
        st.outputs["selected"] = write_selected(st.source, st.lines, st.files, st.order, st.out)
    st.lap("write", t)
    st.manifest = manifest(st)
    write_json_atomic(st.manifest, st.out / "manifest.json")
    if st.cfg.report and not st.cfg.score_only:
        t = time.perf_counter()
        try:
            st.outputs["report"] = write_report(
                st.out, source=st.source, lines=st.lines, files=st.files, quiet=st.cfg.quiet
            )
        except MissingExtraError as exc:
            st.say(f"report skipped: {exc}")
        st.lap("report", t)
    return None


def _rank(st: RunState) -> np.ndarray:
    rank = np.full(st.n, -1, dtype=np.int64)
    rank[st.order] = np.arange(len(st.order))
    return rank


def write_scores(st: RunState, path: Path, rank: Any) -> None:
    """Stream the cached shard tables into one Parquet file with the decisions."""
    writer = None
    schema = None
    with atomic_file(path, "wb") as fh:
        for data in shard_score_tables(st, rank):
            table = pa.table(data)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(fh, schema, compression="zstd")
            else:
                try:
                    table = table.cast(schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
                    table = pa.table({f.name: pa.array(data[f.name], type=f.type, from_pandas=True) for f in schema})
            writer.write_table(table)
        if writer is not None:
            writer.close()


def _shard_parts(st: RunState, ref: Any, sl: slice) -> dict:
    parts = {}
    for step in st.plan.criteria:
        if step.col in st.pool_frames:
            parts[step.col] = st.pool_frames[step.col].iloc[sl].reset_index(drop=True)
            continue
        df = st.cache.get(step.col, ref.keys[step.col], ref.ids)
        if df is None:
            raise ResourceError(f"cache entry for {step.col} vanished or changed during the run ({st.cache.root})")
        parts[step.col] = df
    return parts


def shard_score_tables(st: RunState, rank: Any) -> Iterator[dict]:
    """Per shard: {column: array} with id, group, tokens, criteria columns and the decisions."""
    start = 0
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
        for df in parts.values():
            for c in df.columns:
                if c != "id":
                    data[c] = df[c].to_numpy()
        if rank is not None:
            data["eligible"] = st.eligible[sl]
            data["selected"] = rank[sl] >= 0
            data["rank"] = rank[sl]
        yield data
        start += ref.n


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
        }
        for c in plan.criteria
    ]
    return {
        "thresher": thresher.__version__,
        "inputs": [
            {
                "path": str(Path(cfg.data).resolve()),
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
        "selector": {"name": plan.selector.name, "options": plan.selector.options},
        "filters": plan.filters,
        "budget": {"k": cfg.k, "ratio": cfg.ratio, "tokens": cfg.tokens, "resolved_k": st.k},
        "selected": int(len(st.order)),
        "seed": cfg.seed,
        "shard_size": cfg.shard_size,
        "engine": cfg.engine,
        "outputs": {p.name: file_sha(p) for k, p in st.outputs.items() if k in ("selected", "scores")},
    }
