"""Scoring stages: every shard through the per-row criteria (cache first), then the
pool-scoped criteria in one call over the whole pool."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from functools import partial
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from ..cache import RowIndex, cache_key, ids_digest, row_keys
from ..embed import embed_table
from ..errors import OptionError, ThresherError
from ..plan import TOKENS, Step
from ..progress import scaled, task
from ..registry import CRITERIA
from .checkpoint import chunk_unit, drop_partial, score_checkpointed
from .lm_tokens import TOKENS_LM, TOKENS_LM_SPEC, count_shard, counting_step, lm_tokens_key, worker_spec
from .pool_entry import PoolEntry, PoolSink
from .pool_vectors import add_shard, pool_vectors
from .reading import PoolPiece, RemotePool, RemoteShard, remote_shards
from .rowstore import GroupCoder, GroupColumn
from .scoring_checks import check_scores
from .selection import Selection
from .state import Progress, RunState, ShardRef
from .streaming import score_column
from .workers import TOKENS_SPEC, CriterionSpec, ShardWorker

TOKEN_CRITERION = "length"  # token counts are the length criterion's main column, cached under its name


def token_counter() -> Any:
    return CRITERIA.get(TOKEN_CRITERION).obj(unit="tokens")


def cached(
    st: RunState,
    col: str,
    key: str,
    ids: str,
    compute: Callable[[], Any],
    step: Optional[Step] = None,
    extra: Optional[Callable[[], dict]] = None,
) -> pd.DataFrame:
    """The cache entry ``col``/``key`` covering ``ids``, computed and stored on a miss (with ``extra()``
    as more metadata of the entry)."""
    df = st.cache.get(col, key, ids)
    if df is None:
        table = compute()
        fp = st.fingerprint(step) if step else None
        df = st.cache.put(col, key, table, ids=ids, fingerprint=fp, extra=extra() if extra else None)
    return df


def _scorer_call(st: RunState, step: Step) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A shard criterion's scores of a table (of a shard, or a chunk of one), checked."""
    return lambda table: check_scores(
        st.engine.score(st.scorer_for(step), table, step.name), table, step.name, step.alias
    )


def _pool_criterion(st: RunState, step: Step, pool: pd.DataFrame) -> Callable[[], pd.DataFrame]:
    """A pool-scoped criterion over the whole pool in ONE scorer call: through the engine's
    ``score_pool`` (never its batched ``score``, whose batches would each be scored as a pool of
    their own), or the scorer handle itself when an engine has no ``score_pool``. What the scorer
    reports of the call (``run_info()``: index kind, measured recall, anchors...) goes to ``st.run_info``."""

    def compute() -> pd.DataFrame:
        scorer = st.scorer_for(step)
        whole = getattr(st.engine, "score_pool", None)
        if whole is not None:
            raw = whole(scorer, pool, step.name)
        elif callable(scorer):
            raw = scorer(pool)
        else:
            raise OptionError(
                f"engine {getattr(st.engine, 'NAME', type(st.engine).__name__)!r} has no score_pool, so it "
                f"cannot score the pool-scoped criterion {step.name!r} over the whole pool"
            )
        info = raw.attrs.get("run_info") if isinstance(raw, pd.DataFrame) else None
        if info is None and callable(getattr(scorer, "run_info", None)):
            info = scorer.run_info()
        if info is not None:
            st.run_info[step.col] = info
        return check_scores(raw, pool, step.name, step.alias)

    return compute


def _from_vectors(st: RunState, step: Step, vec: Any) -> Callable[[], pd.DataFrame]:
    """A pool-scoped criterion scored from the pool's vectors in the embeddings cache (:mod:`.pool_vectors`),
    in this process: the call :func:`_pool_criterion` makes, without the pool's texts."""

    def compute() -> pd.DataFrame:
        vec.fill(step.col)  # the rows the cache lacked, encoded now that the score is not cached
        scorer = st.scorer_for(step)
        raw = vec.score(scorer, step.col)
        if callable(getattr(scorer, "run_info", None)):
            st.run_info[step.col] = scorer.run_info()
        return check_scores(raw, pd.DataFrame({"id": vec.pool_ids()}), step.name, step.alias)

    return compute


def _shard_keys(st: RunState, shard: Any, tok_key: str) -> tuple[str, str, dict]:
    """A shard's ids digest, token-count cache key and each shard criterion's cache key."""
    digest = ids_digest(shard.ids)
    keys = {step.col: cache_key(step.col, st.key_for(step), shard.key) for step in st.shard_criteria()}
    return digest, cache_key(TOKEN_CRITERION, tok_key, shard.key), keys


def _token_table(st: RunState, shard: Any, tok: Any, tkey: str, digest: str) -> pd.DataFrame:
    with scaled(0, len(shard)):  # token counts are not one of the shard's shares of the bar: they do not move it
        return cached(st, TOKEN_CRITERION, tkey, digest, lambda: tok(shard.table))


def _row_index(st: RunState, step: Step) -> RowIndex:
    if step.col not in st.row_indexes:
        st.row_indexes[step.col] = RowIndex(st.cache, step.col, st.key_for(step))
    return st.row_indexes[step.col]


def _put_entry(st: RunState, step: Step, key: str, table: Any, digest: str, rk: Any, fp: Any) -> pd.DataFrame:
    extra = {"criterion": st.key_for(step)}  # lets a later run with other shards find these rows
    return st.cache.put(step.col, key, table, ids=digest, fingerprint=fp, extra=extra, rowkeys=rk)


def _reuse(st: RunState, step: Step, shard: Any, key: str, digest: str, rk: Any) -> Optional[pd.DataFrame]:
    """Resume by id, whatever the shard layout: the shard's entry assembled from the rows an earlier run
    scored in other shards (same criterion key, same ids and contents); None when any row is missing."""
    got = _row_index(st, step).assemble(rk)
    if got is None or got[0]["id"].astype(str).tolist() != shard.ids:
        return None
    st.reused_rows += len(shard)
    return _put_entry(st, step, key, got[0], digest, rk, got[1])


def _score_shard(st: RunState, shard: Any, tok: Any, tok_key: str) -> dict:
    """One shard's tables (token counts under TOKENS, then each criterion's), cached, in this process."""
    digest, tkey, keys = _shard_keys(st, shard, tok_key)
    rk = row_keys(shard.ids, shard.hashes)
    tabs = {TOKENS: _token_table(st, shard, tok, tkey, digest)}
    counting = counting_step(st.cfg, st.plan)
    if counting is not None:  # a token budget counted with a model's tokenizer: while the shard is in hand
        count_shard(st, counting, shard, digest)
    for step in st.shard_criteria():
        key = keys[step.col]
        df = st.cache.get(step.col, key, digest)
        if df is None:
            df = _reuse(st, step, shard, key, digest, rk)
        if df is None:
            unit = chunk_unit(st.scorer_for(step), getattr(st.engine, "batch_size", None))
            table = score_checkpointed(st.cache, step.col, key, shard.table, rk, _scorer_call(st, step),
                                       every_s=st.cfg.checkpoint_s, speeds=st.speeds, unit=unit)  # fmt: skip
            df = _put_entry(st, step, key, table, digest, rk, st.fingerprint(step))
            drop_partial(st.cache, step.col, key)
        tabs[step.col] = df
    st.shards.append(ShardRef(shard.key, len(shard), digest, tkey, keys))
    return tabs


def _columns(tables: Any, needed: set) -> dict:
    return {c: score_column(df[c]) for df in tables for c in df.columns if c in needed}


class _Rows:
    """What the run keeps of each scored shard, in shard order: row maps, token counts, groups,
    embeddings when needed, and the texts of pool-scoped runs; feeds the selection."""

    def __init__(self, st: RunState, selection: Selection) -> None:
        self.st, self.selection = st, selection
        # pool-scoped criteria that score from the embeddings cache keep keys, not texts (local shards)
        st.pool_vectors = pool_vectors(st)
        from_vectors = set(st.pool_vectors.specs) if st.pool_vectors is not None else set()
        self.keep_texts = any(step.col not in from_vectors for step in st.pool_criteria())
        self.keep_pieces = bool(st.pool_criteria())  # a remote shard's pieces (its texts stay on the cluster)
        # a streaming selection that embeds only its candidates (repr filter) sets wants_embeddings False
        self.want_emb = (
            st.plan.needs_embeddings and not st.cfg.score_only and getattr(selection, "wants_embeddings", True)
        )
        self.store = st.rowstore  # lines, files, token counts, group codes: on disk, not the heap
        self.coder = GroupCoder()
        self.grouped = 0  # shards that carried groups
        self.embedded = 0  # shards whose embeddings went to the row store

    def embed(self, shard: Any, vectors: Any = None) -> None:
        """Keep the shard's embeddings (``vectors``: as a worker that read the shard computed them); put a
        local shard's rows in the embeddings cache of the pool criteria that score from it."""
        if self.st.pool_vectors is not None and not isinstance(shard, RemoteShard):
            add_shard(self.st.pool_vectors, shard.table)
        if self.want_emb:
            if vectors is None:
                emb_dir = self.st.cache.root / "embeddings"
                vectors = embed_table(shard.table, self.st.cfg.embedder or "default", cache_dir=emb_dir)
            self.store.append("embeddings", vectors, np.float32)  # on disk: a memory map once read
            self.embedded += 1

    def add(self, shard: Any, tabs: dict) -> None:
        st = self.st
        self.store.append("tokens", tabs.pop(TOKENS)[TOKEN_CRITERION].to_numpy(np.float64), np.float64)
        self.selection.feed(_columns(tabs.values(), self.selection.needed), shard.start, len(shard))
        remote = isinstance(shard, RemoteShard)
        if self.keep_pieces and remote:  # a remote shard's texts stay on the cluster; its ids go to the store
            st.pool_tables.append(PoolPiece.of(shard, st.pool_put))
            st.pool_digest.update(shard.ids)
        elif self.keep_texts:
            st.pool_tables.append(shard.table)
        self.store.append("lines", shard.lines, np.int64)
        self.store.append("files", shard.files, np.int32)
        groups = None
        if remote and shard.groups is not None:
            groups = shard.groups
        elif not remote and "group" in shard.table.columns:
            groups = shard.table["group"].astype(str).to_numpy()
        if groups is not None:
            self.store.append("groups", self.coder.encode(groups), np.int32)
            self.grouped += 1
        st.n += len(shard)
        if st.on_shard is not None:
            st.on_shard(shard.index)

    def finish(self) -> None:
        st = self.st
        st.lines, st.files = self.store.column("lines", np.int64), self.store.column("files", np.int32)
        st.tokens = self.store.column("tokens", np.float64)
        grouped = self.grouped and self.grouped == len(st.shards)
        st.groups = GroupColumn(self.store.column("groups", np.int32), self.coder.labels) if grouped else None
        st.embeddings = self.store.column("embeddings", np.float32) if self.embedded else None


# ------------------------------------------------------------------ shards on an engine's worker pool
def start_pool(st: RunState) -> Any:
    """The engine's worker pool for this run (None: the engine scores in this process)."""
    start = getattr(st.engine, "start_workers", None)
    if start is None:
        return None
    specs = {}  # pool-scoped criteria too: they are scored elsewhere, but their keys resolve as on a worker
    for step in st.plan.criteria:
        cls = CRITERIA.get(step.name).obj
        st.engine.make_scorer(cls, {})  # lets the engine ship a plugin's class by value
        specs[step.col] = CriterionSpec(step.col, step.name, step.alias, cls, st.runtime_options(step))
    # token counts: computed by the worker that reads a shard (the driver never holds its texts)
    tok_cls = type(token_counter())
    specs[TOKENS_SPEC] = CriterionSpec(TOKEN_CRITERION, TOKEN_CRITERION, None, tok_cls, {"unit": "tokens"})
    counter = worker_spec(st.cfg, st.plan)  # a token budget's counts with a model's tokenizer, there too
    if counter is not None:
        specs[TOKENS_LM_SPEC] = CriterionSpec(TOKENS_LM, TOKENS, None, *counter)
    pool = start(ShardWorker, specs, str(st.cache.root), st.cfg.checkpoint_s)
    try:  # cache keys as the workers resolve them (their device and dtype), not as this process would
        if specs:
            st.keys.update(pool.result(pool.submit("criterion_keys")))
    except BaseException:
        pool.close()
        raise
    return pool


def _embedders(st: RunState, want_emb: bool) -> list:
    """(embedder, device, cache folder) of each embedding the workers fill the embeddings cache with as
    they score the shards: the selector's, and each pool-scoped criterion's that embeds through the cache,
    unless its fill waits (``st.deferred_fill``): when its score cache already holds entries (a rerun,
    whose whole-pool scores may be cached, which only the pool's key, known once every shard was read,
    tells), the pool is embedded after the shard pass and only if its scores are missing
    (:func:`fill_on_workers`); a first run fills during the pass, with no second read of the input."""
    out = []
    if want_emb:
        out.append((st.cfg.embedder or "default", None, str(st.cache.root / "embeddings")))
    for step in st.pool_criteria():
        opts = st.runtime_options(step)
        reads = getattr(CRITERIA.get(step.name).obj, "pool_embedder", None)
        got = reads(opts) if reads is not None else None
        if got is None:
            continue
        spec = (got[0], got[1], str(opts["cache_dir"]))
        if spec not in out and st.cache.entries(step.col):  # (the selector's embeddings fill it anyway)
            st.deferred_fill[step.col] = spec
        else:
            out.append(spec)
    return list(dict.fromkeys(out))


def fill_on_workers(st: RunState, specs: list) -> None:
    """Fill the embeddings cache for ``specs`` ((embedder, device, folder)) with every row of the pool, on
    a worker pool that reads the input again (where the workers read it; else this process reads and sends
    the shards): the deferred fill of :func:`_embedders`. Each shard is checked against the one scored."""
    skipped = list(st.source.skipped)  # a second pass must not change what the run reports as skipped
    pool = start_pool(st)
    pending: deque = deque()
    try:
        remote = remote_shards(st, pool) if st.read_on_workers else None
        for i, shard in enumerate(remote if remote is not None else st.source.shards()):
            if i >= len(st.shards) or shard.key != st.shards[i].key:
                raise RuntimeError(f"scoring: shard {i} of the input changed since it was scored")
            if isinstance(shard, RemoteShard):
                ids, idxs, refs = shard.pieces()
                pending.append(pool.submit("embed_rows", specs, False, ids, idxs, *refs))
            else:
                pending.append(pool.submit("embed", shard.table, specs))
            while len(pending) > pool.max_in_flight:
                pool.result(pending.popleft())
        while pending:
            pool.result(pending.popleft())
    finally:
        pool.close()
        st.source.skipped = skipped


def _fill_deferred(st: RunState, step: Step, key: str) -> None:
    """Before a pool-scoped criterion is scored on a miss: its deferred embeddings (and those of every
    other criterion with the same embedder, cache folder and device), filled on the workers."""
    spec = st.deferred_fill.get(step.col)
    if spec is None or st.cache.has(step.col, key):
        return
    for col in [c for c, s in st.deferred_fill.items() if s == spec]:
        del st.deferred_fill[col]
    st.say(f"embedding the pool for {step.col} on the workers (its scores are not cached)")
    fill_on_workers(st, [spec])


def _submit(st: RunState, pool: Any, shard: Any, tok: Any, tok_key: str, embedders: list, want_emb: bool) -> tuple:
    """Send one shard to the pool (only the entries the cache lacks). Token counts are computed here,
    or, for a shard read on the workers (:class:`RemoteShard`), by the worker with its scores."""
    digest, tkey, keys = _shard_keys(st, shard, tok_key)
    rk = row_keys(shard.ids, shard.hashes)
    remote = isinstance(shard, RemoteShard)
    tokens = st.cache.get(TOKEN_CRITERION, tkey, digest) if remote else _token_table(st, shard, tok, tkey, digest)
    todo: list = [] if tokens is not None else [(TOKEN_CRITERION, tkey, None, TOKENS_SPEC)]
    todo += [
        (step.col, keys[step.col], st.key_for(step))
        for step in st.shard_criteria()
        if not st.cache.has(step.col, keys[step.col]) and _reuse(st, step, shard, keys[step.col], digest, rk) is None
    ]
    todo += _lm_tokens_todo(st, shard.key, digest)
    jobs = []
    ids, idxs, refs = shard.pieces() if remote else (None, None, [])
    if todo:
        jobs.append(pool.submit("score_rows", todo, digest, rk, ids, idxs, *refs) if remote
                    else pool.submit("score", shard.table, todo, digest, rk))  # fmt: skip
    if embedders:
        jobs.append(pool.submit("embed_rows", embedders, want_emb, ids, idxs, *refs) if remote
                    else pool.submit("embed", shard.table, embedders))  # fmt: skip
    st.shards.append(ShardRef(shard.key, len(shard), digest, tkey, keys))
    return shard, digest, keys, tokens, jobs, tkey


def _lm_tokens_todo(st: RunState, shard_key: str, digest: str) -> list:
    """The workers' entry for a shard's counts with a model's tokenizer (a token budget), unless cached
    or counted here (a loaded model object: :func:`~.lm_tokens.model_token_counts`)."""
    step = counting_step(st.cfg, st.plan)
    if step is None or worker_spec(st.cfg, st.plan) is None:
        return []
    key = lm_tokens_key(st, step, shard_key)
    return [] if st.cache.info(TOKENS_LM, key).get("ids") == digest else [(TOKENS_LM, key, None, TOKENS_LM_SPEC)]


def _entry(st: RunState, shard: Any, col: str, key: str, digest: str) -> pd.DataFrame:
    df = st.cache.get(col, key, digest)
    if df is None:
        raise RuntimeError(
            f"criterion {col!r}: a worker reported shard {shard.index} scored, but its cache entry "
            f"{st.cache.path(col, key)} is missing or does not match"
        )
    return df


def _collect(st: RunState, pool: Any, shard: Any, digest: str, keys: dict, tokens: Any, jobs: list,
             tkey: str) -> tuple[dict, Any]:  # fmt: skip
    """Wait for a shard's jobs: its tables read back from the cache the workers wrote, and the
    vectors of the selector's embedder when a worker that read the shard embedded it."""
    vectors = None
    for job in jobs:
        receipt = pool.result(job)
        st.workers.setdefault(str(receipt.get("node")), set()).add(int(receipt.get("pid", 0)))
        st.worker_peak_rss_mb = max(st.worker_peak_rss_mb, float(receipt.get("peak_rss_mb", 0.0)))
        st.worker_peak_private_mb = max(st.worker_peak_private_mb, float(receipt.get("peak_private_mb") or 0.0))
        if "restored" in receipt:  # a worker's running count of rows restored from checkpoints
            who = (receipt.get("node"), receipt.get("pid"))
            st.worker_restored[who] = max(st.worker_restored.get(who, 0), int(receipt["restored"]))
        vectors = receipt.get("vectors", vectors)
    tabs = {TOKENS: tokens if tokens is not None else _entry(st, shard, TOKEN_CRITERION, tkey, digest)}
    for step in st.shard_criteria():
        tabs[step.col] = _entry(st, shard, step.col, keys[step.col], digest)
    return tabs, vectors


def _node_problems(st: RunState, pool: Any) -> list:
    """Input files some node of the engine cannot read as this process does (a path local to this
    machine): then this process reads the input and sends the rows. A cache folder a node cannot see
    stops the run (:meth:`~thresher.engines.ray_engine.RayPool.node_problems`)."""
    check = getattr(pool, "node_problems", None)
    if check is None:
        return []
    files = st.source.files if st.source.location.kind == "files" and st.source.format != "hf" else []
    problems = check([str(f) for f in files], str(st.cache.root))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        st.say(f"the workers cannot all read the input ({problems[0]}{more}): this process reads it instead")
    return problems


def score_shards_pooled(st: RunState, pool: Any, rows: "_Rows", prog: Any, tok: Any, tok_key: str) -> None:
    """Shards through the pool, up to ``pool.max_in_flight`` at a time, collected in shard order."""
    embedders = _embedders(st, rows.want_emb)
    pending: deque = deque()

    def collect_one() -> None:
        shard, *rest = pending.popleft()
        tabs, vectors = _collect(st, pool, shard, *rest)
        rows.embed(shard, vectors)
        rows.add(shard, tabs)
        prog.update(len(shard), cached=st.cache.hits, computed=st.cache.misses)

    try:
        remote = remote_shards(st, pool) if not _node_problems(st, pool) else None
        st.read_on_workers = remote is not None
        st.pool_put = getattr(pool, "split_options", {}).get("put") if remote is not None else None
        if remote is not None:  # the repr filter's candidates are embedded there too (the driver reads no text)
            st.remote_embed = partial(embed_on_workers, st)
        shards = remote if remote is not None else st.source.shards()
        try:
            for shard in shards:
                pending.append(_submit(st, pool, shard, tok, tok_key, embedders, rows.want_emb))
                while len(pending) > pool.max_in_flight:
                    collect_one()
        except ThresherError:  # bad input: the shards already sent are scored and cached first
            while pending:
                collect_one()
            raise
        while pending:
            collect_one()
    finally:
        pool.close()


def _rows_of(shard: RemoteShard, local: np.ndarray) -> tuple[list, list, list]:
    """``(ids, row positions per piece, table refs)`` of the rows ``local`` (sorted positions in the
    shard) of a remote shard: the arguments of a worker's ``*_rows`` call for just those rows."""
    idxs, refs = [], []
    bounds = np.cumsum([0] + [len(ix) for ix in shard.idxs])
    for j, ref in enumerate(shard.refs):
        a, b = np.searchsorted(local, [bounds[j], bounds[j + 1]])
        if b > a:
            refs.append(ref)
            idxs.append(np.asarray(shard.idxs[j], dtype=np.int64)[local[a:b] - bounds[j]])
    ids = [shard.ids[int(p)] for p in local]
    return ids, idxs, refs


def embed_on_workers(st: RunState, positions: np.ndarray) -> tuple[np.ndarray, int]:
    """Embeddings of the pool rows at ``positions`` (in that order) with the run's embedder and
    embeddings cache, computed on a worker pool that reads the input again (the driver parses no
    row); and the most rows held at once (the vectors collected). Each shard is checked against the
    one scored; reading stops after the last position's shard."""
    want = np.unique(np.asarray(positions, dtype=np.int64))
    spec = [(st.cfg.embedder or "default", None, str(st.cache.root / "embeddings"))]
    skipped = list(st.source.skipped)  # a partial pass must not change what the run reports as skipped
    pool = start_pool(st)
    jobs: list = []
    try:
        for i, shard in enumerate(remote_shards(st, pool) or ()):
            if i >= len(st.shards) or shard.key != st.shards[i].key:
                raise RuntimeError(f"selection: shard {i} of the input changed since it was scored")
            a, b = np.searchsorted(want, [shard.start, shard.start + len(shard)])
            if b > a:
                ids, idxs, refs = _rows_of(shard, want[a:b] - shard.start)
                jobs.append(pool.submit("embed_rows", spec, True, ids, idxs, *refs))
            if b == len(want):
                break
        vecs = [pool.result(j)["vectors"] for j in jobs]
    finally:
        pool.close()
        st.source.skipped = skipped
    got = sum(len(v) for v in vecs)
    if got != len(want):
        raise RuntimeError(f"selection: {len(want) - got} candidate row(s) are not in the input any more")
    emb = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)
    return emb[np.searchsorted(want, positions)], got


def score_shards(st: RunState, selection: Selection) -> None:
    """Stream the pool shard by shard: score (or read from the cache), feed the selection, keep
    only row maps, token counts, groups and, when needed, embeddings and the texts of pool-scoped runs.
    An engine with a worker pool (``start_workers``) scores the shards there, several in flight."""
    t = time.perf_counter()
    tok = token_counter()
    tok_key = tok.cache_key()
    rows = _Rows(st, selection)
    prog = Progress(st.cfg.quiet, "scoring", None if st.cfg.quiet else st.source.estimate_rows(), "rows")
    pool = start_pool(st)
    if pool is not None:
        score_shards_pooled(st, pool, rows, prog, tok, tok_key)
    else:
        # one share per criterion and embedding (the selector's; the pool criteria's wait: PoolVectors.fill)
        parts = max(1, len(st.shard_criteria()) + int(rows.want_emb))
        for shard in st.source.shards():
            with prog.share(len(shard), len(shard) * parts):  # moves by rows as far as the scorers report them
                tabs = _score_shard(st, shard, tok, tok_key)
                rows.embed(shard)
            rows.add(shard, tabs)
            prog.update(0, cached=st.cache.hits, computed=st.cache.misses)
    prog.close()
    rows.finish()
    if st.reused_rows:
        st.say(f"reused the scores of {st.reused_rows} row-criterion pairs from runs with another shard layout")
    restored = st.speeds.restored + sum(st.worker_restored.values())
    if restored:
        st.say(f"resumed {restored} row-criterion pairs from checkpoints inside shards (--checkpoint-every)")
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


def _remote_pool_entry(st: RunState, step: Step, key: str, digest: str, pool: RemotePool) -> PoolEntry:
    """A pool-scoped criterion over a pool the workers read: scored (on a miss) in the engine's task,
    which writes the cache entry itself; read back here in parts (:mod:`.pool_entry`)."""
    if not st.cache.covers(step.col, key, digest):
        sink = PoolSink(str(st.cache.root), step.col, key, digest, step.name, step.alias, st.source.shard_size)
        got = st.engine.score_pool(st.scorer_for(step), pool, step.name, sink=sink)
        st.run_info[step.col] = got.get("run_info")
        st.pool_task_peak_rss_mb = max(st.pool_task_peak_rss_mb, float(got.get("peak_rss_mb") or 0.0))
        st.pool_task_peak_private_mb = max(st.pool_task_peak_private_mb, float(got.get("peak_private_mb") or 0.0))
        if st.cache.info(step.col, key).get("ids") != digest:
            raise RuntimeError(f"criterion {step.col!r}: the pool's task reported its entry written, but "
                               f"{st.cache.path(step.col, key)} is missing or does not match")  # fmt: skip
    return PoolEntry(st.cache.path(step.col, key))


def _say_resumed(st: RunState, col: str) -> None:
    """Log a pool-scoped call that resumed from its checkpoint (run info ``resumed_queries`` of a neighbour
    search, ``resumed_rows`` of nuggets' candidates, ``resumed_coalitions`` of SHED's values,
    ``resumed_blocks`` of necessity's stages and ``resumed_warmup_step`` of its seed LoRA)."""
    info = st.run_info.get(col) or {}
    if info.get("resumed_queries"):
        st.say(f"{col}: resumed {info['resumed_queries']} of {info.get('queries')} queries of the neighbour "
               "search from its checkpoint")  # fmt: skip
    elif info.get("resumed_rows"):
        st.say(f"{col}: resumed {info['resumed_rows']} of {info.get('scored_rows')} rows from its checkpoint")
    elif info.get("resumed_coalitions"):
        step = info.get("resumed_finetune_step")
        tune = f", and a coalition's LoRA fine-tune at step {step}" if step else ""
        st.say(f"{col}: resumed {info['resumed_coalitions']} of {info.get('coalitions')} coalition values{tune} "
               "from its checkpoint")  # fmt: skip
    elif info.get("resumed_blocks") or info.get("resumed_warmup_step"):
        step = info.get("resumed_warmup_step")
        warm = f", and the seed's LoRA warm-up at step {step}" if step else ""
        st.say(f"{col}: resumed {info.get('resumed_blocks', 0)} blocks (ratings, the seed's LoRA, answers){warm} "
               "from its checkpoint")  # fmt: skip


def score_pool_scoped(st: RunState, selection: Selection) -> None:
    """Criteria whose score of a row depends on the other rows: one call over the whole pool."""
    steps = st.pool_criteria()
    if not steps:
        return
    t = time.perf_counter()
    remote = bool(st.pool_tables) and isinstance(st.pool_tables[0], PoolPiece)
    vec = st.pool_vectors
    pool: Any = None
    if remote:
        pool = RemotePool(st.pool_tables)
    elif st.pool_tables:
        pool = pd.concat(st.pool_tables, ignore_index=True)
    st.pool_tables = []
    pkey = hashlib.blake2b("".join(r.key for r in st.shards).encode(), digest_size=16).hexdigest()
    if remote:
        digest = st.pool_digest.hexdigest()
    else:
        digest = ids_digest(vec.pool_ids() if pool is None else pool["id"].astype(str).tolist())
    for step in steps:
        key = st.pool_keys[step.col] = cache_key(step.col, st.key_for(step), pkey)
        _fill_deferred(st, step, key)
        if not st.cache.has(step.col, key):
            st.say(f"scoring {step.col} over the whole pool ({st.n} rows)")
        with task(f"scoring {step.col}", total=st.n, quiet=st.cfg.quiet) as bar, bar.share(st.n):
            if remote:
                df: Any = _remote_pool_entry(st, step, key, digest, pool)
            else:
                extra = lambda col=step.col: {"run_info": st.run_info.get(col)}  # noqa: E731
                whole = _from_vectors(st, step, vec) if vec is not None and step.col in vec.specs else None
                df = cached(st, step.col, key, digest, whole or _pool_criterion(st, step, pool), step, extra)
        if step.col not in st.run_info:  # read from the cache: what the scorer reported when it ran
            st.run_info[step.col] = st.cache.info(step.col, key).get("run_info")
        else:
            _say_resumed(st, step.col)
        st.pool_frames[step.col] = df
        if selection.wants_pool:  # (a streaming selection reads the entry back a shard's rows at a time)
            cols = df.frame(selection.needed) if isinstance(df, PoolEntry) else df
            selection.feed_pool(_columns([cols], selection.needed))
    st.lap("score_pool", t)
