"""This process's peak memory, as a scheduler sizing a machine needs it.

``ru_maxrss`` (the peak resident set) counts every resident page: the process's own heap, and also
the pages of memory-mapped files (the row store, libraries) and of Ray's object store that it has
read or written, which are shared with other processes or can be dropped by the OS. A Ray worker
that has read 1,000,000 rows' blocks from the store reports them all in ``ru_maxrss``. Linux keeps
no peak of the private part (``RssAnon`` in ``/proc/self/status``), so :func:`watch` samples it on a
daemon thread; :func:`peak_private_mb` is the largest value seen (a spike shorter than the sampling
interval can be missed: a lower bound of the true peak).
"""

from __future__ import annotations

import resource
import threading
import time
from typing import Optional

STATUS = "/proc/self/status"
INTERVAL_S = 0.05


def private_mb(status: str = STATUS) -> Optional[float]:
    """This process's private resident memory now (``RssAnon``, MB); None where ``/proc`` has no such line."""
    try:
        with open(status, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """``ru_maxrss``: the peak resident set of this process (MB), shared and file-backed pages included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Watch:
    """The sampling thread of this process (one, started by the first :func:`watch`)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.peak: Optional[float] = private_mb()
        self.lock = threading.Lock()
        if self.peak is not None:
            threading.Thread(target=self._run, name="thresher-memory", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.sample()

    def sample(self) -> Optional[float]:
        now = private_mb()
        with self.lock:
            if now is not None and (self.peak is None or now > self.peak):
                self.peak = now
            return self.peak

    def reset(self) -> None:
        with self.lock:
            self.peak = private_mb()


_WATCH: Optional[_Watch] = None
_START = threading.Lock()


def watch(reset: bool = False) -> None:
    """Start sampling this process's private memory (once per process; later calls are cheap).
    ``reset``: the peak starts again from now (a long-lived process that runs one task after another)."""
    global _WATCH
    with _START:
        if _WATCH is None:
            _WATCH = _Watch(INTERVAL_S)
            return
    if reset:
        _WATCH.reset()


def peak_private_mb() -> Optional[float]:
    """The largest private resident memory seen since :func:`watch` started (or was reset), now included;
    None before :func:`watch`, or where ``/proc`` does not say."""
    return None if _WATCH is None else _WATCH.sample()


__all__ = ["watch", "peak_private_mb", "private_mb", "peak_rss_mb"]
