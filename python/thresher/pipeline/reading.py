"""Reading on the workers: the pool's splits are parsed by the engine's worker pool, and the driver
sees only each row's id, content hash, line and group (never its text).

The driver fixes the schema from the first good record (one record read here), cuts the files
into splits without parsing them (:func:`thresher.io.splits.plan_splits`), and sends the splits
to the pool, several in flight (``pool.read_splits``). In pool order it then assigns the ids
(own ids, else content hashes, deduplicated pool-wide as the local reader does), reports bad rows
with the file's real line, and groups the rows into shards of ``shard_size`` rows, the same
shards the local reader would build (same rows, same ids, same cache keys). A
:class:`RemoteShard` names its rows as pieces of split tables held in the cluster's object store;
the worker that scores a shard assembles its table (:func:`thresher.io.splits.assemble`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..errors import InputError
from ..io.readers import _IdAssigner, shard_key
from ..io.schema import DataError, file_error
from ..io.splits import ReadSpec, SplitRows, plan_splits
from .state import RunState


@dataclass
class RemoteShard:
    """A shard whose rows live on the cluster: pieces ``(table ref, row positions)`` of split tables."""

    index: int
    start: int
    ids: list
    hashes: list
    lines: np.ndarray
    files: list
    groups: Optional[np.ndarray]
    refs: list
    idxs: list

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def key(self) -> str:
        return shard_key(self.ids, self.hashes)

    def pieces(self) -> tuple:
        """``(ids, row positions per piece, table refs)``: the arguments of a worker's ``*_rows`` call."""
        return list(self.ids), [np.asarray(ix, dtype=np.int64) for ix in self.idxs], list(self.refs)


@dataclass
class PoolPiece:
    """What a pool-scoped criterion needs of a remote shard, kept until it scores the pool: the ids
    (``ids``: in the object store when the engine has one, ``put``; else the list) and the rows'
    pieces of split tables. Its hashes, lines, files and groups are not kept."""

    n: int
    ids: Any
    idxs: list
    refs: list

    @classmethod
    def of(cls, shard: RemoteShard, put: Optional[Callable[[Any], Any]] = None) -> "PoolPiece":
        ids = list(shard.ids)
        idxs = [np.asarray(ix, dtype=np.int64) for ix in shard.idxs]
        return cls(len(ids), put(ids) if put is not None else ids, idxs, list(shard.refs))


class RemotePool:
    """The whole pool as remote shards' pieces (pool-scoped criteria): its length here; its ids and
    texts only where the engine assembles them."""

    def __init__(self, pieces: list) -> None:
        self.pieces_ = list(pieces)

    def __len__(self) -> int:
        return sum(p.n for p in self.pieces_)

    def pieces(self) -> tuple:
        """``(id parts, row positions per piece, table refs)``: the ids as one list (or object ref)
        per shard, to be joined where the pool is assembled."""
        idxs = [ix for p in self.pieces_ for ix in p.idxs]
        return [p.ids for p in self.pieces_], idxs, [r for p in self.pieces_ for r in p.refs]


class _Builder:
    """Rows (in pool order) into remote shards of ``size`` rows."""

    def __init__(self, size: int, grouped: bool) -> None:
        self.size, self.grouped = size, grouped
        self.index = self.start = self.n = 0
        self._reset()

    def _reset(self) -> None:
        self.ids: list = []
        self.hashes: list = []
        self.lines: list = []
        self.files: list = []
        self.groups: list = []
        self.refs: list = []
        self.idxs: list = []

    def add(self, sid: str, h: str, line: int, fi: int, group: Any, ref: Any, pos: int) -> None:
        if not self.refs or self.refs[-1] is not ref:
            self.refs.append(ref)
            self.idxs.append([])
        self.idxs[-1].append(pos)
        self.ids.append(sid)
        self.hashes.append(h)
        self.lines.append(line)
        self.files.append(fi)
        if self.grouped:
            self.groups.append(group)
        self.n += 1

    def flush(self) -> RemoteShard:
        groups = np.asarray(self.groups, dtype=object) if self.grouped else None
        sh = RemoteShard(self.index, self.start, self.ids, self.hashes, np.asarray(self.lines, dtype=np.int64),
                         self.files, groups, self.refs, self.idxs)  # fmt: skip
        self.index += 1
        self.start += len(self.ids)
        self._reset()
        return sh


def _moved(exc: BaseException, offset: int) -> BaseException:
    """A split's error with the line counted in the whole file."""
    line = getattr(exc, "line", None)
    if not offset or line is None or not isinstance(exc, InputError):
        return exc
    return type(exc)(exc.reason, file=exc.file, line=line + offset, field=exc.field)


class _Pass:
    """The driver's side of one reading pass (ids, bad rows, shards), split by split in pool order."""

    def __init__(self, st: RunState, spec: ReadSpec) -> None:
        self.st, self.src, self.spec = st, st.source, spec
        self.ids = _IdAssigner(st.source.spill)  # the id set's runs on disk, next to the row store
        self.build = _Builder(self.src.shard_size, spec.schema.group is not None)
        self.offsets: dict = {}
        self.records = 0
        # the bad records before the first good one, as the local reader's first pass reports them:
        # workers check them against the schema fixed later, the local reader by schema detection
        self.early: dict = {}
        for b in st.source.pre_schema:
            self.early.setdefault((b["file"], b["line"]), deque()).append((b["field"], b["reason"]))

    def full(self) -> bool:
        return self.src.limit is not None and self.build.n >= self.src.limit

    def bad(self, file: Any, line: int, field: Optional[str], reason: str) -> None:
        early = self.early.get((str(file), line))
        if early:  # in reading order: a line's records before the first good one come first
            field, reason = early.popleft()
        self.src._bad(DataError(reason, file=file, line=line, field=field))

    def split(self, res: SplitRows, refs: list) -> Iterator[RemoteShard]:
        sp, f = res.split, Path(res.split.path)
        c = sp.chunk_rows or max(1, len(res.own))  # good row ``pos`` is row pos % c of table refs[pos // c]
        off = self.offsets.get(sp.file_index, 0) if sp.kind == "bytes" else 0  # other splits number the file's lines
        self.offsets[sp.file_index] = off + res.lines_read
        self.records += res.records
        bad = res.bad  # (line, field, reason, good rows before it), in reading order
        j = 0
        sids = self.ids.assign_many(list(res.own), list(res.hashes))  # rows past a limit are never used
        for pos, (own, h, line, sid) in enumerate(zip(res.own, res.hashes, res.lines, sids)):
            if self.full():
                return
            while j < len(bad) and bad[j][3] <= pos:  # bad rows in reading order with the good ones
                self.bad(f, bad[j][0] + off, bad[j][1], bad[j][2])
                j += 1
            if sid is None:
                self.bad(f, line + off, self.spec.schema.id, f"duplicate id {own!r}")
                continue
            group = res.groups[pos] if res.groups is not None else None
            self.build.add(sid, h, line + off, sp.file_index, group, refs[pos // c], pos % c)
            if len(self.build.ids) >= self.src.shard_size:
                yield self.build.flush()
        if not self.full():
            for b in bad[j:]:
                self.bad(f, b[0] + off, b[1], b[2])
            if res.error is not None:
                raise _moved(res.error, off)

    def finish(self) -> Iterator[RemoteShard]:
        src = self.src
        if self.records == 0:
            raise file_error("empty file: no records", file=src.files[0])
        if self.build.n == 0:
            first = src.skipped[0] if src.skipped else None
            raise file_error(f"no usable rows ({len(src.skipped)} skipped; first: {first})", file=src.files[0])
        if self.build.ids:
            yield self.build.flush()
        src.n_rows = self.build.n


def remote_shards(st: RunState, pool: Any) -> Optional[Iterator[RemoteShard]]:
    """The pool's shards read on ``pool``'s workers, or None when this pool or engine cannot (the
    driver then reads, as with the local engine)."""
    read = getattr(pool, "read_splits", None)
    if read is None:
        return None
    opts = getattr(pool, "split_options", {})
    splits = plan_splits(st.source, **opts)
    if not splits:
        return None
    schema = st.source.first_schema()
    if schema is None:  # no good record at all: the driver's reader says why
        return None
    spec = ReadSpec(st.source.format, schema, st.source.on_bad_row)
    return _shards(st, spec, read(spec, splits))


def _shards(st: RunState, spec: ReadSpec, results: Iterator[tuple[SplitRows, list]]) -> Iterator[RemoteShard]:
    p = _Pass(st, spec)
    st.source.skipped = []
    try:
        for res, refs in results:
            yield from p.split(res, refs)
            if p.full():
                break
        yield from p.finish()
    finally:
        p.ids.close()


__all__ = ["RemoteShard", "PoolPiece", "RemotePool", "remote_shards"]
