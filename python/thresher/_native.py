"""Loading of the native parts: the C++ extension, the CUDA extension and the
Triton kernels. Nothing here raises: each loader records why a part is
unavailable, and `thresher doctor` prints it.

The Triton kernels live in the top-level ``kernels/`` folder of the source tree
and are installed as ``thresher.kernels`` (see pyproject.toml). When thresher
runs from a source checkout (``PYTHONPATH=python``), the folder is mounted as
``thresher.kernels`` from here.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

from .errors import MissingExtraError
from .extras import require

_errors: dict[str, str] = {}


def _record(part: str, exc: BaseException) -> None:
    _errors[part] = f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=None)
def cpu_ext() -> Optional[ModuleType]:
    """thresher._C or None (see :func:`why_unavailable`)."""
    if os.environ.get("THRESHER_DISABLE_NATIVE", "0") == "1":
        _errors["cpu"] = "disabled by THRESHER_DISABLE_NATIVE=1"
        return None
    try:
        return importlib.import_module("thresher._C")
    except Exception as exc:  # ImportError, or a broken build
        _record("cpu", exc)
        _errors["cpu"] = (
            "thresher._C is not built or failed to load "
            f"({_errors['cpu']}); running on the PyTorch reference implementations"
        )
        return None


@functools.lru_cache(maxsize=None)
def cuda_ext() -> Optional[ModuleType]:
    """thresher._cuda or None. Importing never needs a GPU."""
    if os.environ.get("THRESHER_DISABLE_NATIVE", "0") == "1":
        _errors["cuda"] = "disabled by THRESHER_DISABLE_NATIVE=1"
        return None
    try:
        return importlib.import_module("thresher._cuda")
    except Exception as exc:
        _record("cuda", exc)
        _errors["cuda"] = f"thresher._cuda is not built (no CUDA toolkit at build time?): {_errors['cuda']}"
        return None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_module() -> Optional[ModuleType]:
    """triton or None; the recorded reason names ``pip install 'thresher[triton]'`` when it is missing."""
    try:
        return require("triton", "triton", what="the Triton kernels")
    except Exception as exc:  # MissingExtraError, or a broken install
        _errors["triton"] = str(exc) if isinstance(exc, MissingExtraError) else f"{type(exc).__name__}: {exc}"
        return None


@functools.lru_cache(maxsize=None)
def kernels() -> Optional[ModuleType]:
    """The Triton kernel package ``thresher.kernels`` (None without Triton)."""
    if triton_module() is None:
        _errors["kernels"] = f"triton is not importable ({_errors.get('triton', 'not installed')})"
        return None
    try:
        return importlib.import_module("thresher.kernels")
    except ModuleNotFoundError as exc:
        if exc.name not in ("thresher.kernels",):
            _record("kernels", exc)
            return None
    # Source checkout: mount <repo>/kernels as thresher.kernels.
    src = Path(__file__).resolve().parents[2] / "kernels"
    init = src / "__init__.py"
    if not init.is_file():
        _errors["kernels"] = "thresher.kernels is not installed and no source checkout was found"
        return None
    try:
        spec = importlib.util.spec_from_file_location("thresher.kernels", init, submodule_search_locations=[str(src)])
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {init}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["thresher.kernels"] = mod
        spec.loader.exec_module(mod)
        return mod
    except Exception as exc:
        sys.modules.pop("thresher.kernels", None)
        _record("kernels", exc)
        return None


def kernel(name: str) -> Optional[ModuleType]:
    """A submodule ``thresher.kernels.<name>`` or None."""
    if kernels() is None:
        return None
    try:
        return importlib.import_module(f"thresher.kernels.{name}")
    except Exception as exc:
        _record(f"kernels.{name}", exc)
        return None


def why_unavailable(part: str) -> str:
    return _errors.get(part, "")


# ---------------------------------------------------------------- for backends
# A backend runs only after the dispatcher has checked that its part loads; these
# return the part itself (not Optional) and raise with the recorded reason otherwise.
def require_cpu() -> ModuleType:
    """thresher._C, or RuntimeError saying why it is unavailable."""
    ext = cpu_ext()
    if ext is None:
        raise RuntimeError(why_unavailable("cpu") or "thresher._C is not built")
    return ext


def require_cuda() -> ModuleType:
    """thresher._cuda, or RuntimeError saying why it is unavailable."""
    ext = cuda_ext()
    if ext is None:
        raise RuntimeError(why_unavailable("cuda") or "thresher._cuda is not built")
    return ext


def require_kernel(name: str) -> ModuleType:
    """The Triton kernel module ``thresher.kernels.<name>``, or RuntimeError saying why not."""
    mod = kernel(name)
    if mod is None:
        why = why_unavailable(f"kernels.{name}") or why_unavailable("kernels") or "triton is not installed"
        raise RuntimeError(f"thresher.kernels.{name} is unavailable: {why}")
    return mod


def cuda_device_available() -> tuple[bool, str]:
    """(usable, reason) for torch-visible CUDA devices."""
    try:
        import torch
    except Exception as exc:  # pragma: no cover - torch is a dependency
        return False, f"torch not importable: {exc}"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    return True, ""
