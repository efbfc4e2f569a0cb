"""Ray engine: each shard goes through Ray Data ``map_batches`` with the scorer
class itself (``fn_constructor_kwargs`` = its options), so every Ray actor loads
the model once and scores many batches. The same pattern drops a thresher scorer
into any Ray Data pipeline::

    ds = ray.data.read_json("pool.jsonl")            # rows with instruction/input/output/id
    ds = ds.map_batches(CRITERIA.get("ifd").obj, fn_constructor_kwargs={"model": "default"},
                        batch_format="pandas", batch_size=256, concurrency=2)

Order is restored by id after the map (Ray Data may reorder blocks). Ray is an
optional dependency (``pip install 'thresher[ray]'``): this module imports without
it, and the engine says which extra to install when it is built.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from ..extras import require
from ..registry import ENGINES, Option


class _RayScorer:
    """Handle: the class and options for the actors; a driver-side instance is built lazily, only
    for ``cache_key()`` (classes without ``cache_key_for``) and the model ``fingerprint``."""

    def __init__(self, cls: Any, options: dict) -> None:
        self.cls, self.options = cls, dict(options)
        self._local: Any = None

    def _instance(self) -> Any:
        if self._local is None:
            self._local = self.cls(**self.options)
        return self._local

    def cache_key(self) -> str:
        # only asked when the class has no cache_key_for (the pipeline tries that first)
        return str(self._instance().cache_key())

    @property
    def fingerprint(self) -> Any:
        return getattr(self._instance(), "fingerprint", None)


def _score_whole(cls: Any, options: dict, table: Any) -> Any:
    """One Ray task: build the scorer and score the whole table in one call (pool-scoped criteria)."""
    return cls(**options)(table)


def _ray() -> Any:
    """ray (optional: imported only when the engine is used), or MissingExtraError naming the extra."""
    return require("ray", "ray", what="the ray engine")


@ENGINES.register(
    "ray",
    doc="Ray Data map_batches over the scorer classes (actors load each model once)",
    options=[
        Option("address", None, "Ray cluster address (default: start a local Ray)", type=str),
        Option("num_cpus", None, "CPUs for a local Ray", type=int, min=1),
        Option("batch_size", 256, "rows per map_batches batch", min=1),
        Option("concurrency", 1, "actors per criterion", min=1),
        Option("num_gpus", 0.0, "GPUs per actor", type=float, min=0),
    ],
)
class RayEngine:
    def __init__(
        self,
        address: Optional[str] = None,
        num_cpus: Optional[int] = None,
        batch_size: int = 256,
        concurrency: int = 1,
        num_gpus: float = 0,
    ) -> None:
        ray = _ray()
        if not ray.is_initialized():
            kw: dict = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kw["address"] = address
            if num_cpus is not None:
                kw["num_cpus"] = num_cpus
            ray.init(**kw)
        self.batch_size, self.concurrency, self.num_gpus = batch_size, concurrency, num_gpus

    def make_scorer(self, cls: Any, options: dict) -> Any:
        mod = sys.modules.get(getattr(cls, "__module__", ""))
        if mod is not None and mod.__name__.startswith("thresher_plugin_"):
            # a plugin loaded from a .py file is not importable on the workers: ship it by value
            _ray().cloudpickle.register_pickle_by_value(mod)
        return _RayScorer(cls, options)

    def score_pool(self, scorer: _RayScorer, table: Any, name: str) -> Any:
        """A pool-scoped criterion (``scope="pool"``): its score of a row depends on every other row, so
        the whole pool goes to ONE scorer call (a Ray task with ``num_gpus`` of this engine), never
        split into ``map_batches`` batches."""
        ray = _ray()
        task = ray.remote(num_gpus=self.num_gpus)(_score_whole) if self.num_gpus else ray.remote(_score_whole)
        out = ray.get(task.remote(scorer.cls, scorer.options, table.reset_index(drop=True)))
        ids = table["id"].astype(str).to_numpy()
        return out.set_index(out["id"].astype(str)).reindex(ids).reset_index(drop=True)

    def score(self, scorer: _RayScorer, table: Any, name: str) -> Any:
        ray = _ray()
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ds = ray.data.from_pandas(table.reset_index(drop=True))
        kw: dict = {"concurrency": self.concurrency}
        if self.num_gpus:
            kw["num_gpus"] = self.num_gpus
        out = ds.map_batches(
            scorer.cls, fn_constructor_kwargs=scorer.options, batch_format="pandas", batch_size=self.batch_size, **kw
        ).to_pandas()
        ids = table["id"].astype(str).to_numpy()
        return out.set_index(out["id"].astype(str)).reindex(ids).reset_index(drop=True)
