"""Optional dependencies, one way: :func:`require` imports a module of an extra or raises
:class:`~thresher.errors.MissingExtraError` naming the ``pip install 'thresher[EXTRA]'`` line.

The extras (pyproject ``[project.optional-dependencies]``) by role:

========= ============================================= ==========================================
extra     packages                                      needed for
========= ============================================= ==========================================
lm        transformers, gguf, safetensors               causal-LM criteria (ifd, perplexity, ...)
embed     sentence-transformers                         embedding criteria and diversity selectors
train     peft                                          warm-up, gradients (LESS), ``evaluate``
faiss     faiss-cpu                                     the faiss kNN backend
faiss-gpu faiss-gpu-cu12 (Linux x86-64)                 faiss on CUDA
ray       ray[data]                                     the Ray Data engine
hf        datasets                                      Hugging Face datasets in and out
report    matplotlib                                    plots in report.html and ``compare``
triton    triton (Linux)                                the Triton kernels
========= ============================================= ==========================================

This module is at the bottom of the layer map: it imports nothing of thresher but
:mod:`thresher.errors`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from .errors import MissingExtraError


@dataclass(frozen=True)
class Extra:
    name: str
    modules: tuple[str, ...]  # import names checked by `thresher doctor`
    distributions: tuple[str, ...]  # distribution names whose versions `thresher doctor` reports
    role: str


EXTRAS: dict[str, Extra] = {
    e.name: e
    for e in (
        Extra("lm", ("transformers", "gguf", "safetensors"), ("transformers", "gguf", "safetensors"), "causal LMs"),
        Extra("embed", ("sentence_transformers",), ("sentence-transformers",), "sentence embedders"),
        Extra("train", ("peft",), ("peft",), "LoRA warm-up, gradients, proxy evaluation"),
        Extra("faiss", ("faiss",), ("faiss-cpu",), "faiss kNN backend"),
        Extra("faiss-gpu", ("faiss",), ("faiss-gpu-cu12",), "faiss kNN on CUDA"),
        Extra("ray", ("ray",), ("ray",), "Ray Data engine"),
        Extra("hf", ("datasets",), ("datasets",), "Hugging Face datasets"),
        Extra("report", ("matplotlib",), ("matplotlib",), "plots"),
        Extra("triton", ("triton",), ("triton",), "Triton kernels"),
    )
}

# import name -> the extra that provides it (the first extra listing it)
MODULE_EXTRA: dict[str, str] = {}
for _e in EXTRAS.values():
    for _m in _e.modules:
        MODULE_EXTRA.setdefault(_m, _e.name)


def extra_of(module: str) -> Optional[str]:
    """The extra that provides ``module`` (``transformers.generation`` -> ``lm``), or None."""
    return MODULE_EXTRA.get(module.split(".")[0])


def require(module: str, extra: Optional[str] = None, *, what: Optional[str] = None) -> ModuleType:
    """``import module`` or raise :class:`MissingExtraError` (one line naming the extra to install).

    ``extra`` defaults to the extra listing the module; ``what`` names the feature in the
    message (default: the module). Only a missing module becomes MissingExtraError; an
    installed package that fails while importing keeps its own error."""
    extra = extra or extra_of(module)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if extra is None or missing not in (module.split(".")[0], *(_deps_of(extra))):
            raise
        raise MissingExtraError(what or module, extra, exc) from None


def _deps_of(extra: str) -> tuple[str, ...]:
    e = EXTRAS.get(extra)
    return e.modules if e is not None else ()


def available(module: str) -> bool:
    """Whether ``module`` can be found (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version_of(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def status() -> dict[str, dict]:
    """Per extra: ``installed`` (every module found), per-package versions, the missing modules."""
    out: dict[str, dict] = {}
    for e in EXTRAS.values():
        missing = [m for m in e.modules if not available(m)]
        versions = {d: version_of(d) for d in e.distributions}
        if e.name == "faiss-gpu":  # faiss imports the same way from both wheels: the GPU wheel decides
            installed = versions["faiss-gpu-cu12"] is not None
        else:
            installed = not missing
        out[e.name] = {"installed": installed, "versions": versions, "missing": missing, "role": e.role}
    return out
