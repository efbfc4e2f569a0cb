"""Ray engine: a pool of long-lived Ray actors scores the pool shard by shard.

* **Each worker loads each model once for the whole job.** ``--workers N`` actors
  (``--gpus-per-worker G``, ``--cpus-per-worker C`` each) are started once per run; every
  shard the driver reads is sent to the least-loaded actor with the list of score-cache
  entries it lacks (a cached re-run sends nothing and loads no model). Up to
  ``max_in_flight`` shards (default 2 per worker) are in flight, so reading the next shards
  overlaps with scoring.
* **Workers write the score shards themselves** into the run's score cache (a path every
  node can reach: the local disk of a one-machine cluster, or a shared file system), each
  entry atomically and keyed by content. The driver reads them back in shard order.
* **Faults.** Actors restart when their process dies (up to :data:`MAX_RESTARTS` times) and their
  tasks are retried; a retried shard rewrites the same entries, so a killed worker loses no ids
  and duplicates none. A process that dies again and again (a scorer that crashes it, memory it
  cannot have) stops the run in one line instead of restarting forever.
* **Pool-scoped criteria** (``scope="pool"``: kNN distance, local density, SemDeDup,
  nuggets) see the whole pool in ONE scorer call, as a Ray task: the workers have already
  filled the embeddings cache in parallel. Without GPUs the kNN criteria split their exact
  search into (query block, base shard) tasks on the cluster (``mapper``: ``--workers`` of them
  at a time, ``--cpus-per-worker`` each), merged exactly; with ``--gpus-per-worker`` the task
  holds those GPUs and searches there (a task that asks for no GPU sees none: Ray hides them).

Plain Ray Data remains the way to drop a thresher scorer into a user's own pipeline::

    ds = ray.data.read_json("pool.jsonl")            # rows with instruction/input/output/id
    ds = ds.map_batches(ScoreColumns, fn_constructor_args=("ifd",), batch_format="pandas",
                        batch_size=256, concurrency=2)

Ray is an optional dependency (``pip install 'thresher[ray]'``): this module imports without
it, and the engine says which extra to install when it is built.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from .. import progress
from ..errors import OptionError, ResourceError, ThresherError
from ..extras import require
from ..io.splits import assemble
from ..registry import ENGINES, Option


class _RayScorer:
    """Handle of a criterion on the cluster: its class and options. Nothing is built on the driver:
    the model fingerprint is the one the remote scorer reported; ``cache_key()`` exists only for a
    class that has one and no ``cache_key_for`` (then a driver-side instance is built, once)."""

    def __init__(self, cls: Any, options: dict) -> None:
        self.cls, self.options = cls, dict(options)
        self.fingerprint: Any = None  # set from the remote scorer after a pool-scoped call
        self._local: Any = None

    def __getattr__(self, name: str) -> Any:
        if name == "cache_key" and hasattr(self.cls, "cache_key"):
            if self._local is None:
                self._local = self.cls(**self.options)
            return self._local.cache_key
        raise AttributeError(name)


def _ray() -> Any:
    """ray (optional: imported only when the engine is used), or MissingExtraError naming the extra."""
    return require("ray", "ray", what="the ray engine")


_PUT_MIN_BYTES = 1 << 16  # arrays at least this large go to the object store once, shared by every task


def _resolved(fn: Any, *packed: Any) -> Any:
    """A mapped call on a worker: fetch the shared arrays (object refs inside tuples), then call."""
    ray = _ray()

    def get(x: Any) -> Any:
        if isinstance(x, ray.ObjectRef):
            return ray.get(x)
        if isinstance(x, tuple):
            return tuple(get(y) for y in x)
        return x

    return fn(*(get(a) for a in packed))


def ray_mapper(num_cpus: float = 1, max_in_flight: int = 8, num_gpus: float = 0) -> Any:
    """A ``map(fn, *iterables)`` that runs each call as a Ray task and yields the results in order, each
    as soon as it and those before it are done (lazy, as the builtin ``map``: a consumer sees early
    results while later tasks run). Each distinct large array among the arguments (also inside tuples)
    is put in the object store ONCE and shared by the tasks that read it; at most ``max_in_flight``
    tasks run at a time."""

    def mapper(fn: Any, *iterables: Any) -> Iterator:
        ray = _ray()
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(_resolved)
        shared: dict = {}

        def pack(x: Any) -> Any:
            if isinstance(x, tuple):
                return tuple(pack(y) for y in x)
            if isinstance(x, np.ndarray) and x.nbytes >= _PUT_MIN_BYTES:
                if id(x) not in shared:
                    shared[id(x)] = (ray.put(x), x)  # the array is kept alive so its id is not reused
                return shared[id(x)][0]
            return x

        pending: deque = deque()
        for args in zip(*iterables):
            if len(pending) >= max_in_flight:
                yield ray.get(pending.popleft())
            pending.append(remote.remote(fn, *(pack(a) for a in args)))
        while pending:
            yield ray.get(pending.popleft())

    # what a scorer's run_info records as its mapper
    mapper.__name__ = f"ray_mapper(max_in_flight={max_in_flight}, num_cpus={num_cpus:g}, num_gpus={num_gpus:g})"
    # where its tasks compute: Ray hides the GPUs from a task that asks for none
    mapper.device = "cuda" if num_gpus else "cpu"  # type: ignore[attr-defined]
    return mapper


def check_fits(workers: int, cpus: float, gpus: float) -> None:
    """OptionError when the cluster, as it is now, cannot hold ``workers`` actors of ``cpus`` CPUs and
    ``gpus`` GPUs each (an actor sits on one node): Ray would wait for them forever, and the shards
    sent to a worker that never starts would never come back."""
    nodes = [n.get("Resources", {}) for n in _ray().nodes() if n.get("Alive")]

    def per_node(have: float, each: float) -> int:
        return workers if each <= 0 else int(have / each + 1e-9)

    fit = sum(min(per_node(n.get("CPU", 0.0), cpus), per_node(n.get("GPU", 0.0), gpus)) for n in nodes)
    if fit >= workers:
        return
    cpu, gpu = sum(n.get("CPU", 0.0) for n in nodes), sum(n.get("GPU", 0.0) for n in nodes)
    raise OptionError(
        f"--workers {workers} with {cpus:g} CPU and {gpus:g} GPU each: the Ray cluster has room for {fit} "
        f"({len(nodes)} node(s), {cpu:g} CPUs, {gpu:g} GPUs in all); lower --workers, --cpus-per-worker or "
        "--gpus-per-worker, or add nodes"
    )


def _warm_process(module: str) -> int:
    """A task that only imports ``module`` (a scorer's, with torch and thresher.ops under it). Ray keeps
    the process for later tasks, so the search tasks of a pool-scoped criterion, submitted once the
    whole-pool task has loaded the pool, find an interpreter that has already paid its imports."""
    import importlib

    importlib.import_module(module)
    return os.getpid()


def _joined_ids(parts: list) -> list:
    """A pool's ids from its parts: one list (or object ref of one) per shard."""
    ray = _ray()
    return [i for part in parts for i in (ray.get(part) if isinstance(part, ray.ObjectRef) else part)]


def _score_whole(cls: Any, options: dict, split: Any, sink: Any, table: Any, ids: Any = None, idxs: Any = None,
                 *tables: Any) -> Any:  # fmt: skip
    """One Ray task: build the scorer and score the whole pool in one call (pool-scoped criteria).
    ``split`` (``{"num_cpus", "max_in_flight"}``, or None: the search runs in this task, on its GPUs
    when it holds some): a scorer that can split its neighbour search (``mapper``) runs it as that many
    Ray tasks at a time. ``table`` None: the pool is assembled here from pieces of the tables the
    workers read (``ids``: one list or object ref per shard). ``sink`` (or None: the table is returned)
    is called here with ``(table of scores, pool, fingerprint, run info)``; its return value is the task's."""
    from .. import memory
    from ..embed.pool import vector_spec  # (torch: only in the task that scores)

    memory.watch(reset=True)  # this task's private peak (Ray runs tasks one after another in a process)
    spec = vector_spec(cls, options) if table is None else None
    vec = None
    if spec is not None:  # scored from the vectors in the embeddings cache: the pool's table is never built
        vec = _pieces_vectors(spec, _joined_ids(ids), idxs, tables)
    elif table is None:
        table = assemble(_joined_ids(ids), idxs, tables)
    scorer = cls(**options)
    if hasattr(scorer, "mapper") and split is not None:
        scorer.mapper = ray_mapper(**split)
    if vec is not None:
        out = vec.score(scorer, "")
        table = out[["id"]].assign(id=vec.pool_ids())  # what the sink checks: the pool's ids, in order
    else:
        out = scorer(table)
    info = getattr(scorer, "run_info", None)
    info = info() if callable(info) else None
    fp = getattr(scorer, "fingerprint", None)
    if fp is None and getattr(scorer, "lm", None) is not None:
        fp = getattr(scorer.lm, "fingerprint", None)
    fp = None if fp is None else str(fp)
    if sink is not None:
        return sink(out, table, fp, info)
    if info is not None:
        out.attrs["run_info"] = info
    out.attrs["fingerprint"] = fp
    return out


def _pieces_vectors(spec: tuple, ids: list, idxs: list, tables: tuple) -> Any:
    """The pool's :class:`~thresher.embed.pool.PoolVectors` from the pieces of the split tables the workers
    read, a piece at a time (``assemble``'s rows in its order; the workers already put them in the cache)."""
    from ..embed.pool import PoolVectors

    vec = PoolVectors({"": spec})
    pos = 0
    for t, ix in zip(tables, idxs):
        if len(ix):
            part = t.iloc[np.asarray(ix, dtype=np.int64)]
            vec.add(part, ids[pos : pos + len(part)])
            pos += len(part)
    return vec


MAX_RESTARTS = 3  # restarts of a worker actor (and retries of its tasks) before the run stops


def _unwrap(exc: Exception) -> Exception:
    """A thresher error raised on a worker, as itself (one line in the CLI); a worker process that
    kept dying, as a ResourceError; else the Ray error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ThresherError):
        return cause
    errors = sys.modules.get("ray.exceptions")
    died = tuple(getattr(errors, n) for n in ("RayActorError", "WorkerCrashedError") if hasattr(errors, n))
    if died and isinstance(exc, died):
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        return ResourceError(
            f"a Ray worker process died and was restarted {MAX_RESTARTS} times, then died again ({first}); "
            "the shards scored before are in the score cache"
        )
    return exc


class RayPool:
    """``workers`` actors of ``worker_cls``; ``submit(method, *args)`` to the least-loaded one."""

    def __init__(self, worker_cls: Any, args: tuple, workers: int, num_gpus: float, num_cpus: float,
                 max_in_flight: Optional[int], split_options: Optional[dict] = None) -> None:  # fmt: skip
        ray = _ray()
        check_fits(workers, num_cpus, num_gpus)
        actor = ray.remote(worker_cls).options(
            num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS
        )
        self.actors = [actor.remote(*args) for _ in range(workers)]
        self.load = [0] * workers
        self.max_in_flight = max_in_flight or 2 * workers
        # plan_splits options (split_bytes, split_rows), how many workers read in parallel, and where
        # the blocks of a gzipped file, decompressed once on the driver, go (the object store)
        self.split_options: dict = {**(split_options or {}), "parallel": workers, "put": ray.put}

    def submit(self, method: str, *args: Any) -> tuple:
        i = min(range(len(self.actors)), key=lambda j: self.load[j])
        self.load[i] += 1
        return i, getattr(self.actors[i], method).remote(*args)

    def result(self, handle: tuple) -> Any:
        i, ref = handle
        try:
            return _ray().get(ref)
        except Exception as exc:
            raise _unwrap(exc) from None
        finally:
            self.load[i] -= 1

    def node_problems(self, files: list, cache_root: str) -> list:
        """Whether every node of the cluster sees this run's folders as this process does: raises
        ResourceError when one cannot see ``cache_root`` (the workers write the score entries there and
        this process reads them); returns the input ``files`` some node cannot read as they are here,
        one line each (then this process reads the input and sends the rows instead)."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        root = Path(cache_root)
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".node-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        try:
            stat = [(str(Path(f).absolute()), os.path.getsize(f)) for f in files]
            task = ray.remote(num_cpus=0)(_node_view)
            nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
            on = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)) for n in nodes]
            views = ray.get([t.remote(stat, str(probe)) for t in on], timeout=NODE_CHECK_TIMEOUT_S)
        finally:
            probe.unlink(missing_ok=True)
        return node_verdict(views, root)

    def read_splits(self, spec: Any, splits: list) -> Any:
        """``(SplitRows, table refs)`` of each split in order, parsed by the actors (``ShardWorker.read``),
        up to ``max_in_flight`` at a time; the tables stay in the object store."""
        ray = _ray()
        pending: list = []
        for sp in splits:  # an iterator when blocks are stored as they are decompressed
            i = min(range(len(self.actors)), key=lambda a: self.load[a])
            self.load[i] += 1
            # a block's bytes go as an argument of their own, so that the actor gets them resolved; the
            # pending task keeps the object alive (retries included), the driver keeps no handle
            refs = self.actors[i].read.options(num_returns=1 + sp.chunks).remote(spec, replace(sp, blob=None), sp.blob)
            del sp
            pending.append((i, refs))
            while len(pending) > self.max_in_flight:
                yield self._read_result(ray, pending.pop(0))
        while pending:
            yield self._read_result(ray, pending.pop(0))

    def _read_result(self, ray: Any, handle: tuple) -> tuple:
        i, (meta, *tables) = handle
        try:
            return ray.get(meta), tables
        except Exception as exc:
            raise _unwrap(exc) from None
        finally:
            self.load[i] -= 1

    def close(self) -> None:
        ray = _ray()
        for a in self.actors:
            ray.kill(a)
        self.actors = []


CONNECT_TIMEOUT_S = 5.0
NODE_CHECK_TIMEOUT_S = 120.0


def node_verdict(views: list, cache_root: Any) -> list:
    """From each node's :func:`_node_view`: ResourceError when a node cannot see the cache folder, else
    the input problems, ``"<node>: <path>: <why>"`` each."""
    blind = [v["node"] for v in views if not v["cache"]]
    if blind:
        raise ResourceError(
            f"--cache-dir {cache_root}: not visible from node(s) {', '.join(blind)}; the workers write the scores "
            "there for this process to read: give a folder every node reaches (a shared file system)"
        )
    return [f"{v['node']}: {b}" for v in views for b in v["input"]]


def _node_view(files: list, probe: str) -> dict:
    """Run on one node (a Ray task): the input ``files`` ((path, size) as the driver sees them) it
    cannot read as the driver does, and whether it sees the driver's ``probe`` file in the cache folder."""
    bad = []
    for path, size in files:
        try:
            got = os.path.getsize(path)
        except OSError as exc:
            bad.append(f"{path}: {exc.strerror or type(exc).__name__}")
            continue
        if got != size:
            bad.append(f"{path}: {got} bytes here, {size} where the run started")
    node = f"{socket.gethostname()} ({_ray().get_runtime_context().get_node_id()[:8]})"
    return {"node": node, "input": bad, "cache": os.path.exists(probe)}


def _check_reachable(address: Optional[str]) -> None:
    """Fail at once, in one line, when nothing listens at a ``host:port`` (or ``ray://host:port``)
    address: Ray itself retries for minutes before it gives up. ``auto``/``local`` are Ray's own."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise OptionError(f"--ray-address {address}: expected HOST:PORT (the head's GCS port, 6379 by default) or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ResourceError(
            f"--ray-address {address}: no Ray cluster answers there ({reason}); start one with `ray start --head`, "
            "or leave --ray-address out to start a local Ray"
        ) from None


@ENGINES.register(
    "ray",
    doc="a pool of Ray actors: each loads each model once, scores shards and writes their cache entries",
    options=[
        Option("address", None, "Ray cluster address (default: start a local Ray)", type=str),
        Option("num_cpus", None, "CPUs for a local Ray (ignored with address: refused)", type=int, min=1),
        Option("workers", 1, "worker actors (processes) that score shards", type=int, min=1),
        Option("gpus_per_worker", 0.0, "GPUs per worker actor", type=float, min=0),
        Option("cpus_per_worker", 1.0, "CPUs per worker actor", type=float, min=0),
        Option("batch_size", None, "rows per scorer call on a worker (default: the whole shard)", type=int, min=1),
        Option("max_in_flight", None, "shards in flight at once (default 2 per worker)", type=int, min=1),
        Option("split_rows", None, "rows of a split the workers read (default: the shard size)", type=int, min=1),
        Option("split_bytes", None, "bytes of a plain JSON Lines split (default: split_rows lines)", type=int, min=1),
    ],
)
class RayEngine:
    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None, workers: int = 1,
                 gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0, batch_size: Optional[int] = None,
                 max_in_flight: Optional[int] = None, split_rows: Optional[int] = None,
                 split_bytes: Optional[int] = None) -> None:  # fmt: skip
        if address and num_cpus is not None:
            raise OptionError("num_cpus: only for a local Ray; a cluster at --ray-address has its own resources")
        ray = _ray()
        if not ray.is_initialized():
            # without an address: a new local Ray (never a cluster some `ray start` left running here)
            kw: dict = {"include_dashboard": False, "log_to_driver": False, "address": address or "local"}
            if progress.is_quiet():  # --quiet: not Ray's start-up lines either, only its errors
                kw["logging_level"] = logging.ERROR
            if num_cpus is not None:
                kw["num_cpus"] = num_cpus
            _check_reachable(address)
            try:
                ray.init(**kw)
            except ConnectionError as exc:  # `auto` with no cluster running here, a refused handshake
                raise ResourceError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc})") from None
        self.workers, self.gpus, self.cpus = workers, gpus_per_worker, cpus_per_worker
        self.batch_size, self.max_in_flight = batch_size, max_in_flight
        self.split_options = {"split_bytes": split_bytes, "split_rows": split_rows}

    def make_scorer(self, cls: Any, options: dict) -> Any:
        mod = sys.modules.get(getattr(cls, "__module__", ""))
        if mod is not None and mod.__name__.startswith("thresher_plugin_"):
            # a plugin loaded from a .py file is not importable on the workers: ship it by value
            _ray().cloudpickle.register_pickle_by_value(mod)
        return _RayScorer(cls, options)

    def start_workers(self, worker_cls: Any, specs: dict, cache_root: str, *worker_args: Any) -> RayPool:
        """The run's worker pool (see the module docstring); ``worker_args`` follow the worker's batch size."""
        args = (specs, cache_root, self.batch_size, *worker_args)
        return RayPool(worker_cls, args, self.workers, self.gpus, self.cpus, self.max_in_flight, self.split_options)

    def score_pool(self, scorer: _RayScorer, table: Any, name: str, sink: Any = None) -> Any:
        """A pool-scoped criterion: its score of a row depends on every other row, so the whole pool
        goes to ONE scorer call (a Ray task with this engine's GPUs per worker), never split. ``sink``
        (see :func:`_score_whole`): the task hands its result to it, and this returns what it returns."""
        ray = _ray()
        opts: dict = {"num_gpus": self.gpus} if self.gpus else {}
        task = ray.remote(**opts)(_score_whole) if opts else ray.remote(_score_whole)
        # the search's tasks: one worker's CPUs each, --workers at a time (the task's GPUs: no split)
        split = None if self.gpus else {"num_cpus": self.cpus, "max_in_flight": self.workers}
        if split is not None:  # their processes import the scorer's code while the whole-pool task starts
            warm = ray.remote(num_cpus=self.cpus)(_warm_process)
            for _ in range(self.workers):
                warm.remote(getattr(scorer.cls, "__module__", "thresher"))
        if hasattr(table, "pieces"):  # a pool the workers read: the task assembles its ids and texts
            ids_, idxs, refs = table.pieces()
            args: tuple = (scorer.cls, scorer.options, split, sink, None, ids_, idxs, *refs)
        else:
            args = (scorer.cls, scorer.options, split, sink, table.reset_index(drop=True))
        try:
            out = ray.get(task.remote(*args))
        except Exception as exc:
            raise _unwrap(exc) from None
        if sink is not None:
            scorer.fingerprint = out.get("fingerprint") if isinstance(out, dict) else None
            return out
        info = out.attrs.get("run_info")
        scorer.fingerprint = out.attrs.get("fingerprint")
        ids = table["id"].astype(str).to_numpy()
        out = out.set_index(out["id"].astype(str)).reindex(ids).reset_index(drop=True)
        if info is not None:
            out.attrs["run_info"] = info
        return out

    def score(self, scorer: _RayScorer, table: Any, name: str) -> Any:
        """One table in one Ray task (the pipeline scores shards through :meth:`start_workers`; this is
        for callers that score a single table with the engine)."""
        return self.score_pool(scorer, table, name)
