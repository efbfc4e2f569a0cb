"""Keeping the model busy: prefetching, windows of rows, pinned asynchronous copies.

* :func:`prefetch` yields ``fn(item)`` for each item IN ORDER while a background thread
  computes the next results (at most ``depth`` ahead, a bounded queue). The criteria use
  it to render and tokenise the next window of rows while the model scores the current
  one (:meth:`thresher.criteria.base.BatchCriterion.stream`). An exception raised by
  ``fn`` reaches the caller when it asks for that item (results before it are yielded
  first), and nothing after it is computed. ``depth=0`` is the plain path: the same
  calls, in the same order, in the caller's thread.
* :func:`windows` cuts ``n`` rows into consecutive windows; batches are packed by token
  count within a window (:func:`thresher.features.tokens.plan_groups`: length-sorted,
  filled up to ``batch_tokens``) and results are scattered back to input order.
* :func:`to_device` copies a host tensor to the model's device: through pinned memory
  with ``non_blocking=True`` on CUDA (the host never waits for the copy), unchanged on
  the CPU.

* :func:`map_ranges` runs ``fn`` over consecutive ranges of ``n`` rows on several threads
  and returns the results in range order: a window's rows are rendered and tokenised by
  :func:`prep_threads` threads (the criteria's ``prepare``), since one thread of
  tokenisation cannot keep a GPU busy.

Rendering and tokenisation are Python and Rust (the fast tokenizers release the GIL
while encoding); the model's forward releases the GIL inside its kernels, so one
background thread overlaps most of the host work with the device's, and the Rust part of
tokenisation runs in parallel on several threads.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

import torch

from ..errors import OptionError

T = TypeVar("T")
R = TypeVar("R")

_END = object()
_POLL_S = 0.05


def windows(n: int, rows: int) -> list[slice]:
    """Consecutive slices of at most ``rows`` rows covering ``range(n)`` (one empty slice when n == 0)."""
    if not isinstance(rows, int) or isinstance(rows, bool) or rows <= 0:
        raise ValueError(f"rows: expected a positive int, got {rows!r}")
    if n <= 0:
        return [slice(0, 0)]
    return [slice(s, min(s + rows, n)) for s in range(0, n, rows)]


PREP_THREADS_ENV = "THRESHER_PREP_THREADS"
MAX_PREP_THREADS = 8


def prep_threads(device: Any) -> int:
    """Threads that render and tokenise a window: ``$THRESHER_PREP_THREADS`` when set (an int >= 1),
    else 1 on the CPU (the model's own threads use the cores) and, on an accelerator, the cores
    less one for the model's thread, at most 8."""
    env = os.environ.get(PREP_THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise OptionError(f"{PREP_THREADS_ENV}: expected an int >= 1, got {env!r}")
        return int(env)
    if torch.device(device).type == "cpu":
        return 1
    return max(1, min(MAX_PREP_THREADS, (os.cpu_count() or 1) - 1))


def map_ranges(fn: Callable[[range], R], n: int, threads: int, *, min_rows: int = 64) -> list[R]:
    """``[fn(r) for r in ranges]`` over consecutive ranges covering ``range(n)``: one range on one
    thread (the caller's) when ``threads <= 1`` or ``n < 2 * min_rows``, else ``threads`` ranges
    of at least ``min_rows`` rows on as many threads, each in a copy of the caller's context.
    Results are in range order; the first exception (in range order) is raised after all ran."""
    k = max(1, min(int(threads), n // max(1, min_rows)))
    if k <= 1:
        return [fn(range(n))]
    step = -(-n // k)
    ranges = [range(s, min(s + step, n)) for s in range(0, n, step)]
    with ThreadPoolExecutor(len(ranges), thread_name_prefix="thresher-prep") as ex:
        futs = [ex.submit(contextvars.copy_context().run, fn, r) for r in ranges]
    return [f.result() for f in futs]


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer stopped (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(fn: Callable, items: Iterable, q: queue.Queue, stop: threading.Event) -> None:
    try:
        for it in items:
            if stop.is_set():
                return
            try:
                res = (True, fn(it))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                _put(q, (False, exc), stop)
                return
            if not _put(q, res, stop):
                return
    except BaseException as exc:  # noqa: BLE001 - the iterable itself failed
        _put(q, (False, exc), stop)
        return
    _put(q, (True, _END), stop)


def prefetch(fn: Callable[[T], R], items: Iterable[T], *, depth: int = 2) -> Iterator[R]:
    """``fn(item)`` for each item in order, computed up to ``depth`` items ahead in one
    background thread (the caller's context variables carried over). See the module doc."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"depth: expected an int >= 0, got {depth!r}")
    if depth == 0:
        for it in items:
            yield fn(it)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    ctx = contextvars.copy_context()
    worker = threading.Thread(
        target=ctx.run, args=(_produce, fn, items, q, stop), name="thresher-prefetch", daemon=True
    )
    worker.start()
    try:
        while True:
            ok, val = q.get()
            if not ok:
                raise val
            if val is _END:
                return
            yield val
    finally:
        stop.set()
        worker.join()


def to_device(t: torch.Tensor, device: Any) -> torch.Tensor:
    """``t`` on ``device``: pinned + ``non_blocking`` on CUDA, the same tensor when already there."""
    device = torch.device(device)
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
