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

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

from .errors import OptionError

T = TypeVar("T")


_UNSET: Any = object()


@dataclass(frozen=True)
class Option:
    """A documented option with its type, range and choices, validated in one place.

    ``type``: ``int``, ``float``, ``bool``, ``str``, ``list``, ``dict`` or a tuple of
    them; left out, it is inferred from a ``bool``/``int``/``float`` default (other
    defaults leave the type open). ``min``/``max`` bound numbers (inclusive unless
    ``min_exclusive``/``max_exclusive``). ``nullable`` says whether ``None`` is
    accepted (default: when the default is ``None``). ``choices`` lists the allowed
    values. An ``int`` option takes an integral float (``6.0``); a ``float`` option
    takes an ``int``; a ``bool`` is never a number."""

    name: str
    default: Any
    doc: str
    choices: Optional[tuple] = None
    type: Any = _UNSET
    min: Optional[float] = None
    max: Optional[float] = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    nullable: Optional[bool] = None

    def kind(self) -> Any:
        if self.type is not _UNSET:
            return self.type
        d = self.default
        if isinstance(d, bool):
            return bool
        if isinstance(d, int):
            return int
        if isinstance(d, float):
            return float
        return None

    def describe_type(self) -> str:
        """``int in [1, inf)``, ``one of ['a', 'b']``, ``float or None``: for help texts."""
        k = self.kind()
        names = "/".join(t.__name__ for t in (k if isinstance(k, tuple) else (k,))) if k else "any"
        if self.choices is not None:
            names = f"one of {list(self.choices)}"
        if self.min is not None or self.max is not None:
            lo = "(" if self.min_exclusive or self.min is None else "["
            hi = ")" if self.max_exclusive or self.max is None else "]"
            names += (
                f" in {lo}{'-inf' if self.min is None else self.min}, {'inf' if self.max is None else self.max}{hi}"
            )
        if self._nullable():
            names += " or None"
        return names

    def _nullable(self) -> bool:
        return self.default is None if self.nullable is None else bool(self.nullable)

    def validate(self, value: Any, owner: str = "") -> Any:
        """The value converted to the option's type; :class:`OptionError` naming the option if it is not valid."""
        where = f"{owner}: option {self.name}" if owner else f"option {self.name}"
        if value is None:
            if self._nullable() or self.choices is not None and None in self.choices:
                return None
            raise OptionError(f"{where}: a value is required (expected {self.describe_type()})")
        k = self.kind()
        if k is not None:
            value = _convert(value, k, where, self.describe_type())
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"{where}={value!r} not in {list(self.choices)}")
        if self.min is not None or self.max is not None:
            _check_range(self, value, where)
        return value


def _convert(value: Any, kind: Any, where: str, expected: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for t in kinds:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if t is list and isinstance(value, (list, tuple)):
            return list(value)
        if t not in (bool, int, float, str, list) and isinstance(value, t):
            return value
    raise OptionError(f"{where}: expected {expected}, got {value!r} ({type(value).__name__})")


def _check_range(opt: Option, value: Any, where: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if value != value:  # NaN
        raise OptionError(f"{where}: expected {opt.describe_type()}, got nan")
    lo_bad = opt.min is not None and (value <= opt.min if opt.min_exclusive else value < opt.min)
    hi_bad = opt.max is not None and (value >= opt.max if opt.max_exclusive else value > opt.max)
    if lo_bad or hi_bad:
        raise OptionError(f"{where}: expected {opt.describe_type()}, got {value!r}")


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    doc: str
    options: dict[str, Option] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every given value validated; unknown or invalid options raise OptionError."""
        unknown = set(given) - set(self.options)
        if unknown:
            raise OptionError(
                f"{self.name}: unknown option(s) {sorted(unknown)}; known: {sorted(self.options) or 'none'}"
            )
        out = {k: o.default for k, o in self.options.items()}
        for k, v in given.items():
            out[k] = self.options[k].validate(v, self.name)
        return out


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, doc: str, options: Optional[list[Option]] = None, **meta: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, obj, doc, {o.name: o for o in options or []}, meta)
            if isinstance(obj, type) and "NAME" not in vars(obj):
                setattr(obj, "NAME", name)  # noqa: B010  (the name is written once, here; classes read self.NAME)
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
            raise OptionError(
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
ENGINES: Registry[Any] = Registry("engine")

# Built-in components register themselves when their module is imported. Every module of these
# packages is imported on first use of a registry, so adding a criterion, selector, recipe or engine
# is adding one file (modules whose name starts with "_" are skipped). A module that fails to import
# (a missing optional extra) is skipped and reported by `thresher doctor`.
BUILTIN_PACKAGES: tuple[str, ...] = ("thresher.criteria", "thresher.selectors", "thresher.recipes", "thresher.engines")
# Further modules outside those packages that register components (none today).
BUILTIN_MODULES: list[str] = []
_loaded = False
LOAD_ERRORS: dict[str, str] = {}


def builtin_modules() -> list[str]:
    """The modules that register built-in components, in import order."""
    mods: list[str] = []
    for pkg in BUILTIN_PACKAGES:
        try:
            locations = list(importlib.import_module(pkg).__path__)
        except ImportError as exc:
            LOAD_ERRORS[pkg] = f"{type(exc).__name__}: {exc}"
            continue
        mods.append(pkg)
        names = sorted({info.name for info in pkgutil.iter_modules(locations)})
        mods.extend(f"{pkg}.{name}" for name in names if not name.startswith("_"))
    return mods + [m for m in BUILTIN_MODULES if m not in mods]


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in builtin_modules():
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            LOAD_ERRORS[mod] = f"{type(exc).__name__}: {exc}"
