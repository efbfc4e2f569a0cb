"""Engines drive criterion (scorer) classes over sample tables: ``local`` (in this
process) and ``ray`` (Ray Data ``map_batches`` with the same classes; optional
dependency). An engine is any class satisfying :class:`Engine`, registered in
``thresher.registry.ENGINES`` with its documented options::

    @ENGINES.register("mine", doc="...", options=[Option("workers", 1, "processes", min=1)])
    class MyEngine:
        def __init__(self, workers=1): ...
        def make_scorer(self, cls, options): ...   # a handle the engine can score with
        def score(self, scorer, table, name): ...  # -> DataFrame, one row per input row
        def score_pool(self, scorer, table, name): ...  # the same, the whole pool in ONE scorer call

``score`` may split a table into batches; ``score_pool`` is used for criteria registered with
``scope="pool"`` (their score of a row depends on the other rows) and must not split it. An engine
whose worker pool reads the input (``read_splits``, as Ray's) is handed the pool as pieces
(:class:`thresher.pipeline.reading.RemotePool`) and a ``sink=``: it calls the sink where it scored,
``sink(scores, pool table, fingerprint, run info)``, which writes the cache entry, and returns what
the sink returned (the driver never holds the pool's table).

Adding an engine is one module in this package (found by ``registry.builtin_modules``) or a plugin.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..registry import ENGINES
from .local import LocalEngine, ScoreColumns


@runtime_checkable
class Engine(Protocol):
    """What the pipeline needs from an engine. ``NAME`` is set by ``ENGINES.register`` (written once)."""

    NAME: str

    def make_scorer(self, cls: Any, options: dict) -> Any:
        """A handle for scorer class ``cls`` with resolved ``options`` (it may load the model)."""
        ...

    def score(self, scorer: Any, table: Any, name: str) -> Any:
        """Score the sample table with ``scorer``: a DataFrame with one row per input row, keyed by ``id``."""
        ...

    def score_pool(self, scorer: Any, table: Any, name: str) -> Any:
        """Score a pool-scoped criterion over the whole ``table`` in one scorer call (never batched)."""
        ...


def get_engine(name: str, **options: Any) -> Engine:
    """The registered engine ``name`` built with its validated options (OptionError naming a bad one)."""
    entry = ENGINES.get(name)
    return entry.obj(**entry.resolve_options(options))


__all__ = ["Engine", "LocalEngine", "ScoreColumns", "get_engine"]
