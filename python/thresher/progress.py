"""Progress bars with rate and ETA, one way for every layer.

* :func:`task` opens a bar (``with task("embedding", total=n, unit="rows") as bar: bar.update(k)``);
  it appears only once the step has run for :data:`DELAY` seconds, so quick steps print
  nothing, and it goes to stderr (never into ``--json`` output on stdout).
* :func:`quiet` silences every bar opened inside it (a run's ``--quiet``).
* A bar can hand a share of itself to the code it calls: inside ``with bar.share(units, rows):``
  every :func:`advance` (``rows`` done, called from deep inside a criterion, an embedder or a
  kNN search that knows nothing of the bar) moves the bar by ``units * done / rows``; what
  was not reported is added when the share ends. So the pipeline's scoring bar moves by
  rows within a shard as far as the scorer reports, and by whole shards otherwise.
* :func:`scaled` converts inner work to rows of the enclosing share: a criterion scoring a
  batch of ``rows`` through ``items`` model units reports each micro-batch of units, and the
  bar moves by the rows they stand for.
* :func:`library_bars` makes the bars of transformers and the hub follow :func:`quiet` while a
  model loads.
* :func:`activity` is a bar without a total (elapsed time and a spinner) for steps whose
  length is unknown, such as loading or converting a model.

Bottom layer: imports nothing of thresher.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from typing import Any, Iterator, Optional

DELAY = 2.0  # seconds before a bar appears

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("thresher_progress_quiet", default=False)
_SHARE: contextvars.ContextVar[Optional[Any]] = contextvars.ContextVar("thresher_progress_share", default=None)
_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_FORMAT_OPEN = "{desc}: {n:.0f} {unit} [{elapsed}, {rate_fmt}{postfix}]"


class Bar:
    """A tqdm bar (or nothing, when quiet); ``update`` may take fractions of a unit."""

    def __init__(self, desc: str, total: Optional[float] = None, unit: str = "rows", quiet: Optional[bool] = None):
        self.total = total
        self._lock = threading.Lock()
        self._bar: Any = None
        if quiet is None:
            quiet = _QUIET.get()
        if not quiet:
            from tqdm.auto import tqdm  # a base dependency; imported on first use

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                delay=DELAY,
                dynamic_ncols=True,
                leave=True,
                file=sys.stderr,
                bar_format=_FORMAT if total else _FORMAT_OPEN,
            )

    @property
    def n(self) -> float:
        return 0.0 if self._bar is None else float(self._bar.n)

    def update(self, n: float = 1, **postfix: Any) -> None:
        if self._bar is None or n == 0 and not postfix:
            return
        with self._lock:
            if n:
                self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def set_total(self, total: Optional[float]) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.bar_format = _FORMAT if total else _FORMAT_OPEN
            self._bar.refresh()

    @contextlib.contextmanager
    def share(self, units: float, rows: Optional[float] = None) -> Iterator[None]:
        """Hand ``units`` of this bar to :func:`advance` calls inside the block (``rows`` of work in
        all, default ``units``); the unreported rest is added at the end, even on an error."""
        sh = _Share(self, float(units), float(units if rows is None else rows))
        token = _SHARE.set(sh)
        try:
            yield
        finally:
            _SHARE.reset(token)
            sh.finish()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Share:
    def __init__(self, bar: Bar, units: float, rows: float) -> None:
        self.bar, self.units, self.rows, self.done = bar, units, max(rows, 1e-12), 0.0

    def advance(self, rows: float) -> None:
        step = min(rows, self.rows - self.done)
        if step > 0:
            self.done += step
            self.bar.update(self.units * step / self.rows)

    def finish(self) -> None:
        self.advance(self.rows - self.done)


class _Scaled:
    """A share of the enclosing share: ``items`` of inner work stand for ``rows`` of the outer one."""

    def __init__(self, parent: Optional[Any], rows: float, items: float) -> None:
        self.parent, self.rows, self.items, self.done = parent, rows, max(items, 1e-12), 0.0

    def advance(self, items: float) -> None:
        step = min(items, self.items - self.done)
        if step > 0 and self.parent is not None:
            self.done += step
            self.parent.advance(self.rows * step / self.items)

    def finish(self) -> None:
        self.advance(self.items - self.done)


@contextlib.contextmanager
def scaled(rows: float, items: Optional[float] = None) -> Iterator[None]:
    """Inside the block, :func:`advance` counts ``items`` (default ``rows``) of inner work (a model's
    units, a search's queries) that stand for ``rows`` of the enclosing share; the unreported rest
    is added when the block ends, even on an error. A no-op outside a share."""
    sh = _Scaled(_SHARE.get(), float(rows), float(rows if items is None else items))
    token = _SHARE.set(sh)  # type: ignore[arg-type]
    try:
        yield
    finally:
        _SHARE.reset(token)
        sh.finish()


def task(desc: str, total: Optional[float] = None, unit: str = "rows", quiet: Optional[bool] = None) -> Bar:
    """A new bar (a context manager closing it); quiet inside :func:`quiet` unless ``quiet=False``."""
    return Bar(desc, total, unit, quiet)


def activity(desc: str, quiet: Optional[bool] = None) -> Bar:
    """A bar without a total: elapsed time while a step of unknown length runs (model loading)."""
    return Bar(desc, None, "it", quiet)


def advance(rows: float) -> None:
    """Report ``rows`` done to the share of a bar the caller runs inside (no-op outside one)."""
    sh = _SHARE.get()
    if sh is not None:
        sh.advance(rows)


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Silence (``on``) every bar opened in this block, in this thread/context."""
    token = _QUIET.set(bool(on) or _QUIET.get())
    try:
        yield
    finally:
        _QUIET.reset(token)


def is_quiet() -> bool:
    return _QUIET.get()


_LIBRARY_LOGGING = ("transformers.utils.logging", "datasets.utils.logging")


@contextlib.contextmanager
def library_bars() -> Iterator[None]:
    """Hugging Face libraries' own bars (transformers' "Loading weights", datasets' "Saving the
    dataset", the hub's downloads) follow :func:`quiet` inside this block: off in a quiet context,
    left as they are otherwise. Only libraries already imported are touched (the caller has)."""
    mods = [m for m in map(sys.modules.get, _LIBRARY_LOGGING) if m is not None] if _QUIET.get() else []
    was = [m.is_progress_bar_enabled() for m in mods]
    for m in mods:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, on in zip(mods, was):
            if on:
                m.enable_progress_bar()
