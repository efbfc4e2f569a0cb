"""Registries of named, documented components.

Criteria, selectors, recipes and readers register themselves here by name with
their documented options, so the CLI, config files, ``thresher recipes``, the
report and ``thresher compare`` all read the same source of truth.

Conventions shared by every component:

* A **sample table** is a ``pandas.DataFrame`` with columns ``id`` (str),
  ``instruction`` (str), ``input`` (str, may be empty), ``output`` (str) and,
  for multi-turn samples, ``conversation`` (list of ``{"role", "content"}``
  dicts, roles ``system``/``user``/``assistant``). Readers in :mod:`thresher.io`
  produce it from every supported schema.
* A **criterion** is a callable class ``Scorer(**options)``: the constructor
  loads its model once, ``scorer(batch) -> DataFrame`` returns one row per
  input row with ``id``, the criterion's main column (named like the
  criterion) and component columns ``<name>.<component>`` (e.g.
  ``ifd.loss_cond``). NaN plus a ``<name>.reason`` string for samples that
  cannot be scored. It also works on ``pyarrow.Table`` batches (see
  :func:`thresher.registry.as_pandas`).
* A **selector** is a function ``select(scores, *, k, **options) -> Selection``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

T = TypeVar("T")


@dataclass
class Option:
    name: str
    default: Any
    doc: str
    choices: Optional[tuple] = None


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    doc: str
    options: dict[str, Option] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in; unknown or out-of-choice options raise ValueError."""
        unknown = set(given) - set(self.options)
        if unknown:
            raise ValueError(
                f"{self.name}: unknown option(s) {sorted(unknown)}; "
                f"known: {sorted(self.options) or 'none'}"
            )
        out = {k: o.default for k, o in self.options.items()}
        for k, v in given.items():
            o = self.options[k]
            if o.choices is not None and v not in o.choices:
                raise ValueError(f"{self.name}: option {k}={v!r} not in {list(o.choices)}")
            out[k] = v
        return out


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, doc: str, options: Optional[list[Option]] = None,
                 **meta: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, obj, doc, {o.name: o for o in options or []}, meta)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (plugins and tests that register temporary components)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> Entry[T]:
        _load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries)) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry[T]]:
        _load_builtins()
        return iter([self._entries[k] for k in sorted(self._entries)])

    def __contains__(self, name: str) -> bool:
        _load_builtins()
        return name in self._entries


CRITERIA: Registry[Any] = Registry("criterion")
SELECTORS: Registry[Any] = Registry("selector")
RECIPES: Registry[Any] = Registry("recipe")
READERS: Registry[Any] = Registry("reader")

# Modules that register built-in components on import. Each capability adds
# its module here; a module that fails to import (missing optional extra) is
# skipped and reported by `thresher doctor`.
BUILTIN_MODULES: list[str] = [
    "thresher.io.textstats",
    "thresher.selectors.basic",
    "thresher.selectors.diversity", "thresher.criteria.diversity",
    "thresher.recipes",
    "thresher.criteria.loss", "thresher.criteria.judge", "thresher.criteria.nuggets",
    "thresher.criteria.less",
]
_loaded = False
LOAD_ERRORS: dict[str, str] = {}


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            LOAD_ERRORS[mod] = f"{type(exc).__name__}: {exc}"


def as_pandas(batch: Any):
    """Accept a pandas DataFrame, a pyarrow Table/RecordBatch or a dict of columns."""
    import pandas as pd

    if isinstance(batch, pd.DataFrame):
        return batch
    try:
        import pyarrow as pa

        if isinstance(batch, (pa.Table, pa.RecordBatch)):
            return batch.to_pandas()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(batch, dict):
        return pd.DataFrame(batch)
    raise ValueError(f"batch: expected a pandas DataFrame, pyarrow Table or dict, got {type(batch).__name__}")
