"""thresher.ops: the one entry point for kernels.

Each op validates its arguments, then dispatches to a backend (see
:mod:`thresher.ops._dispatch`). ``OPS`` holds every registered op; ``thresher
doctor`` prints their backends and why any cannot run.
"""
from ._dispatch import OPS, last_backend  # noqa: F401

# Op modules register themselves on import. Keep one line per op module.
