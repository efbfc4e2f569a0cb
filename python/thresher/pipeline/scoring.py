"""Scoring stages: every shard through the per-row criteria (cache first), then the
pool-scoped criteria in one call over the whole pool."""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from ..cache import cache_key, ids_digest
from ..embed import embed_table
from ..errors import OptionError
from ..frames import as_pandas
from ..plan import TOKENS, Step
from ..progress import scaled, task
from ..registry import CRITERIA
from .selection import Selection
from .state import Progress, RunState, ShardRef, concat

TOKEN_CRITERION = "length"  # token counts are the length criterion's main column, cached under its name


def token_counter() -> Any:
    return CRITERIA.get(TOKEN_CRITERION).obj(unit="tokens")


def check_scores(df: Any, table: Any, name: str, alias: Optional[str] = None) -> pd.DataFrame:
    """A scorer's output: one row per input row, keyed by id, main column present."""
    if not isinstance(df, pd.DataFrame):
        df = as_pandas(df)
    if "id" not in df.columns or name not in df.columns:
        raise ValueError(f"criterion {name!r}: scorer returned columns {list(df.columns)}; expected 'id' and {name!r}")
    if len(df) != len(table):
        raise ValueError(f"criterion {name!r}: scorer returned {len(df)} rows for {len(table)} samples")
    ids = table["id"].astype(str).to_numpy()
    got = df["id"].astype(str).to_numpy()
    if not np.array_equal(ids, got):
        df = df.set_index(df["id"].astype(str)).reindex(ids).reset_index(drop=True)
        if df[name].isna().all() and len(ids):
            raise ValueError(f"criterion {name!r}: scorer returned ids that do not match the batch")
        df["id"] = ids
    keep = ["id"] + [c for c in df.columns if c == name or c.startswith(name + ".")]
    df = df[keep].copy()
    if alias and alias != name:
        df.columns = ["id"] + [alias + c[len(name) :] for c in df.columns[1:]]
    for c in df.columns:
        if c.endswith(".reason"):
            df[c] = df[c].fillna("").astype(str)
        elif c != "id" and df[c].dtype == object:
            try:
                df[c] = df[c].astype(np.float64)
            except (TypeError, ValueError):
                df[c] = df[c].astype(str)
    return df


def cached(
    st: RunState, col: str, key: str, ids: str, compute: Callable[[], Any], step: Optional[Step] = None
) -> pd.DataFrame:
    """The cache entry ``col``/``key`` covering ``ids``, computed and stored on a miss."""
    df = st.cache.get(col, key, ids)
    if df is None:
        table = compute()
        df = st.cache.put(col, key, table, ids=ids, fingerprint=st.fingerprint(step) if step else None)
    return df


def _criterion(st: RunState, step: Step, table: pd.DataFrame) -> Callable[[], pd.DataFrame]:
    return lambda: check_scores(st.engine.score(st.scorer_for(step), table, step.name), table, step.name, step.alias)


def _pool_criterion(st: RunState, step: Step, pool: pd.DataFrame) -> Callable[[], pd.DataFrame]:
    """A pool-scoped criterion over the whole pool in ONE scorer call: through the engine's
    ``score_pool`` (never its batched ``score``, whose batches would each be scored as a pool of
    their own), or the scorer handle itself when an engine has no ``score_pool``."""

    def compute() -> pd.DataFrame:
        scorer = st.scorer_for(step)
        whole = getattr(st.engine, "score_pool", None)
        if whole is not None:
            df = whole(scorer, pool, step.name)
        elif callable(scorer):
            df = scorer(pool)
        else:
            raise OptionError(
                f"engine {getattr(st.engine, 'NAME', type(st.engine).__name__)!r} has no score_pool, so it "
                f"cannot score the pool-scoped criterion {step.name!r} over the whole pool"
            )
        return check_scores(df, pool, step.name, step.alias)

    return compute


def _score_shard(st: RunState, shard: Any, tok: Any, tok_key: str) -> dict:
    """One shard's tables (token counts under TOKENS, then each criterion's), cached."""
    digest = ids_digest(shard.table["id"].astype(str).tolist())
    tkey = cache_key(TOKEN_CRITERION, tok_key, shard.key)
    with scaled(0, len(shard)):  # token counts are not one of the shard's shares of the bar: they do not move it
        tabs = {TOKENS: cached(st, TOKEN_CRITERION, tkey, digest, lambda: tok(shard.table))}
    keys = {}
    for step in st.shard_criteria():
        keys[step.col] = cache_key(step.col, st.key_for(step), shard.key)
        tabs[step.col] = cached(st, step.col, keys[step.col], digest, _criterion(st, step, shard.table), step)
    st.shards.append(ShardRef(shard.key, len(shard), digest, tkey, keys))
    return tabs


def _column(s: pd.Series) -> np.ndarray:
    """A selected column: float64 (NaN for missing) when numeric, else the values as objects (e.g. tag lists)."""
    if pd.api.types.is_numeric_dtype(s.dtype):
        return s.to_numpy(np.float64, na_value=np.nan)
    return s.astype(object).to_numpy()


def _columns(tables: Any, needed: set) -> dict:
    return {c: _column(df[c]) for df in tables for c in df.columns if c in needed}


def score_shards(st: RunState, selection: Selection) -> None:
    """Stream the pool shard by shard: score (or read from the cache), feed the selection, keep
    only row maps, token counts, groups and, when needed, embeddings and the texts of pool-scoped runs."""
    t = time.perf_counter()
    tok = token_counter()
    tok_key = tok.cache_key()
    keep_texts = bool(st.pool_criteria())
    want_emb = st.plan.needs_embeddings and not st.cfg.score_only
    lines, files, tokens, groups, emb = [], [], [], [], []
    prog = Progress(st.cfg.quiet, "scoring", None if st.cfg.quiet else st.source.estimate_rows(), "rows")
    parts = max(1, len(st.shard_criteria()) + int(want_emb))  # a shard's rows: one share per criterion/embedding
    for shard in st.source.shards():
        with prog.share(len(shard), len(shard) * parts):  # moves by rows as far as the scorers report them
            tabs = _score_shard(st, shard, tok, tok_key)
            if want_emb:
                emb_dir = st.cache.root / "embeddings"
                emb.append(embed_table(shard.table, st.cfg.embedder or "default", cache_dir=emb_dir))
        tokens.append(tabs.pop(TOKENS)[TOKEN_CRITERION].to_numpy(np.float64))
        selection.feed(_columns(tabs.values(), selection.needed), shard.start)
        if keep_texts:
            st.pool_tables.append(shard.table)
        lines.append(shard.lines)
        files.append(np.asarray(shard.files, dtype=np.int32))
        if "group" in shard.table.columns:
            groups.append(shard.table["group"].astype(str).to_numpy())
        st.n += len(shard)
        prog.update(0, cached=st.cache.hits, computed=st.cache.misses)
        if st.on_shard is not None:
            st.on_shard(shard.index)
    prog.close()
    st.lines, st.files, st.tokens = concat(lines, np.int64), concat(files, np.int32), concat(tokens, np.float64)
    st.groups = np.concatenate(groups) if groups and len(groups) == len(st.shards) else None
    st.embeddings = np.concatenate(emb) if emb else None
    st.lap("score_shards", t)
    _report_skipped(st)


def _report_skipped(st: RunState) -> None:
    skipped = st.source.skipped
    if skipped:
        first = skipped[0]
        st.say(
            f"skipped {len(skipped)} bad row(s) (--on-bad-row skip); first: {first['file']} line "
            f"{first['line']}: {first['reason']}" + (f" (field {first['field']!r})" if first["field"] else "")
        )


def score_pool_scoped(st: RunState, selection: Selection) -> None:
    """Criteria whose score of a row depends on the other rows: one call over the whole pool."""
    steps = st.pool_criteria()
    if not steps:
        return
    t = time.perf_counter()
    pool = pd.concat(st.pool_tables, ignore_index=True)
    st.pool_tables = []
    pkey = hashlib.blake2b("".join(r.key for r in st.shards).encode(), digest_size=16).hexdigest()
    digest = ids_digest(pool["id"].astype(str).tolist())
    for step in steps:
        key = st.pool_keys[step.col] = cache_key(step.col, st.key_for(step), pkey)
        if not st.cache.has(step.col, key):
            st.say(f"scoring {step.col} over the whole pool ({st.n} rows)")
        with task(f"scoring {step.col}", total=st.n, quiet=st.cfg.quiet) as bar, bar.share(st.n):
            df = cached(st, step.col, key, digest, _pool_criterion(st, step, pool), step)
        st.pool_frames[step.col] = df
        selection.feed_pool(_columns([df], selection.needed))
    st.lap("score_pool", t)
