"""Device and dtype policy, in one place, for every component that loads a model.

* :func:`resolve_device`: ``"auto"`` (or ``None``) is ``"cuda"`` when a CUDA device is
  visible and ``"cpu"`` otherwise; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` pass through
  after validation. Asking for CUDA where none is visible is a :class:`ResourceError`
  (one line), never a silent fall-back to the CPU.
* :func:`resolve_dtype`: ``"auto"`` (or ``None``) is ``bfloat16`` on a CUDA device that
  supports it and ``float32`` everywhere else (the CPU, and GPUs without bf16, where fp16
  losses can overflow); ``fp32``/``float32``, ``bf16``/``bfloat16``, ``fp16``/``float16``
  are explicit.
* :func:`dtype_name` is the canonical name of a dtype (``"bfloat16"``), used in cache
  keys and the manifest: the dtype changes a model's numbers, so score-cache keys hold
  the RESOLVED dtype; on the CPU ``auto`` resolves to ``float32``, the former default,
  so keys computed before the policy existed stay valid. The device never enters a key.

Resolving a dtype never fails for lack of a device (keys are computed where the plan is
made, which may have no GPU); only :func:`resolve_device` checks that the device exists.
torch is imported on first use, so importing this module stays cheap.

Bottom layer: imports only :mod:`thresher.errors`.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from .errors import OptionError, ResourceError

AUTO = "auto"
#: Accepted dtype spellings -> canonical names.
DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
#: The values of a ``dtype`` option (criteria, CLI --dtype).
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
_DEVICE_RE = re.compile(r"^(cpu|cuda)(:(\d+))?$")


def check_device(spec: Any) -> str:
    """``spec`` as a device string, checked for its form only (no device needs to exist):
    ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; OptionError otherwise."""
    if spec is None:
        return AUTO
    s = str(spec).strip().lower()
    if s == AUTO:
        return AUTO
    m = _DEVICE_RE.match(s)
    if m is None or (m.group(1) == "cpu" and m.group(2)):
        raise OptionError(f"device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    return s


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(spec: Any = AUTO) -> str:
    """The device a model goes to (see the module doc); ResourceError when CUDA is asked for and not visible."""
    s = check_device(spec)
    if s == AUTO:
        return "cuda" if cuda_available() else "cpu"
    if s == "cpu":
        return s
    if not cuda_available():
        raise ResourceError(
            f"device {s!r}: no CUDA device is visible (torch.cuda.is_available() is False); use device=cpu or auto"
        )
    if ":" in s:
        import torch

        n = torch.cuda.device_count()
        if int(s.split(":")[1]) >= n:
            raise ResourceError(f"device {s!r}: only {n} CUDA device(s) are visible (cuda:0 .. cuda:{n - 1})")
    return s


def _bf16_device(device: str) -> bool:
    if not device.startswith("cuda") or not cuda_available():
        return False
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported())
    except (RuntimeError, AssertionError):
        return False


def resolve_dtype(spec: Any = AUTO, device: Optional[Any] = "cpu") -> Any:
    """The torch dtype for ``spec`` on ``device`` (``auto``: bf16 on a CUDA device that supports it, else fp32)."""
    import torch

    if isinstance(spec, torch.dtype):
        return spec
    name = AUTO if spec is None else str(spec).strip().lower()
    if name == AUTO:
        dev = check_device(device)
        if dev == AUTO:
            dev = "cuda" if cuda_available() else "cpu"
        name = "bfloat16" if _bf16_device(dev) else "float32"
    if name not in DTYPE_ALIASES:
        raise OptionError(f"dtype: expected auto or one of {sorted(DTYPE_ALIASES)}, got {spec!r}")
    return getattr(torch, DTYPE_ALIASES[name])


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` or ``"bf16"`` -> ``"bfloat16"``."""
    s = str(dtype).strip().lower()
    s = s[len("torch.") :] if s.startswith("torch.") else s
    return DTYPE_ALIASES.get(s, s)


def resolved(device: Any = AUTO, dtype: Any = AUTO) -> tuple[str, Any]:
    """(device, torch dtype) both resolved: the pair a model is loaded with."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


def key_dtype(dtype: Any = AUTO, device: Any = AUTO) -> str:
    """The canonical dtype name that goes into a cache key (never raises for a missing device)."""
    return dtype_name(resolve_dtype(dtype, device))
