"""thresher: a native-accelerated scoring engine for choosing LLM fine-tuning data.

Three stages (see README): feature extraction -> criteria -> selection and
evaluation. Hot paths go through :mod:`thresher.ops`, which dispatches to Triton,
CUDA, C++ or plain-PyTorch reference backends.

The Python API (:mod:`thresher.api`, imported on first use so that ``import
thresher`` stays fast and loads no model libraries)::

    import thresher
    df = thresher.score(pd.read_parquet("pool.parquet"), criteria=["length", "mtld"])
    ds = thresher.select(dataset, recipe="superfiltering", ratio=0.05)
    ranked = thresher.rank(df, ["length:max", "mtld:max"], method="pareto", k=100)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Imported on first use (PEP 562), by name so that no module importing ``thresher`` (for
# ``__version__``) depends on the API; typed signatures: ``from thresher.api import score``.
_API = ("Result", "rank", "score", "select")

__all__ = ["__version__", "Result", "rank", "score", "select"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module 'thresher' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
