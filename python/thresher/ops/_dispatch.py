"""Backend dispatch for thresher's ops.

Every op is an :class:`Op` holding an ordered list of :class:`Backend` s:

* ``triton``    - Triton kernels (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1`` when forced)
* ``cuda``      - the ``thresher._cuda`` extension (CUDA tensors)
* ``cpu``       - the ``thresher._C`` C++ extension (CPU tensors)
* ``reference`` - plain PyTorch, any device: the fallback of last resort and the test oracle

The public function of an op validates its arguments (``ValueError`` naming the
argument), then calls :meth:`Op.dispatch` with the device of its tensors. A
backend is chosen as follows:

1. ``backend=`` keyword, else ``THRESHER_BACKEND_<OP>`` (e.g. ``THRESHER_BACKEND_TOPK=cpu``):
   forced; if it cannot run, a ``RuntimeError`` lists its reasons.
2. ``THRESHER_BACKEND`` (global preference): used when the op has that backend
   and it can run for these inputs, otherwise ignored.
3. The first backend of the device's order that can run: :func:`backend_order`, read from
   ``backend_order.json`` (per op, with the benchmark it was measured by).

Each backend states *why* it cannot run (``not_supported_reasons``), both for
static causes (extension not built, Triton missing) and per call (dtype, size).
``thresher doctor`` prints these for every op.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .. import _native

BACKEND_NAMES = ("triton", "cuda", "cpu", "reference")

# The order per device type is data: backend_order.json beside this module (or the file named
# by THRESHER_BACKEND_ORDER) holds a default order per device and per-op orders for CUDA
# tensors, with their provenance ("source": the GPU benchmark they come from, or a note that
# they are a default pending one). Triton on CPU tensors (interpreter) is never chosen
# automatically: it is a testing aid, forced with backend="triton".
ORDER_FILE = Path(__file__).with_name("backend_order.json")
_FALLBACK_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}


def _check_order(data: Any) -> None:
    orders = list(data.get("default", {}).values())
    orders += [e.get(dev) for e in data.get("ops", {}).values() for dev in ("cpu", "cuda") if dev in e]
    for names in orders:
        bad = [n for n in names if n not in BACKEND_NAMES]
        if bad:
            raise ValueError(f"unknown backend(s) {bad}; expected {BACKEND_NAMES}")


@functools.lru_cache(maxsize=None)
def _order_data(path: str) -> dict[str, Any]:
    """The order file; a missing or malformed one falls back to the built-in order and says so."""
    try:
        data = json.loads(Path(path).read_text())
        _check_order(data)
        return data
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        return {"source": f"built-in fallback ({path}: {exc})", "default": _FALLBACK_ORDER, "ops": {}}


def order_data() -> dict[str, Any]:
    """The parsed backend-order file (see :data:`ORDER_FILE`)."""
    return _order_data(os.environ.get("THRESHER_BACKEND_ORDER") or str(ORDER_FILE))


def backend_order(op: str, device: str) -> tuple[tuple[str, ...], str]:
    """(order of backends tried for ``op`` on ``device`` tensors, why it is so).

    The file's ``source`` (see :func:`order_data`) is the provenance of every order in it;
    an op entry may carry its own ``source``.
    """
    data = order_data()
    entry = data.get("ops", {}).get(op, {})
    if device in entry:
        why = entry.get("why", "per-op order")
        own = entry.get("source")  # an op measured apart from the file's source says so
        return tuple(entry[device]), f"{why} [source: {own}]" if own else why
    default = data.get("default", _FALLBACK_ORDER).get(device) or _FALLBACK_ORDER.get(device, ("reference",))
    return tuple(default), f"default order for {device} tensors"


OPS: dict[str, "Op"] = {}
_local = threading.local()


@dataclass
class Backend:
    """One implementation of an op.

    ``available()`` returns static reasons (empty list = installed and usable);
    ``supports(**ctx)`` returns per-call reasons for a concrete input
    (``ctx`` holds at least ``device``, a ``torch.device`` type string).
    """

    name: str
    fn: Callable[..., Any]
    devices: tuple[str, ...]
    available: Callable[[], list[str]] = lambda: []
    supports: Optional[Callable[..., list[str]]] = None
    note: str = ""

    def not_supported_reasons(self, device: Optional[str] = None, **ctx: Any) -> list[str]:
        reasons = list(self.available())
        if device is not None:
            dev_ok = device in self.devices
            if self.name == "triton" and device == "cpu":
                dev_ok = _native.triton_interpret()
                if not dev_ok:
                    reasons.append("CPU tensors need TRITON_INTERPRET=1")
            elif not dev_ok:
                reasons.append(f"does not run on {device} tensors (runs on {', '.join(self.devices)})")
            if device == "cuda" and dev_ok:
                ok, why = _native.cuda_device_available()
                if not ok:
                    reasons.append(why)
        if not reasons and self.supports is not None:
            reasons.extend(self.supports(device=device, **ctx))
        return reasons


@dataclass
class Op:
    name: str
    doc: str = ""
    backends: dict[str, Backend] = field(default_factory=dict)

    def __post_init__(self) -> None:
        OPS[self.name] = self

    # ------------------------------------------------------------- registration
    def register(
        self,
        name: str,
        devices: Iterable[str],
        available: Callable[[], list[str]] = lambda: [],
        supports: Optional[Callable[..., list[str]]] = None,
        note: str = "",
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if name not in BACKEND_NAMES:
            raise ValueError(f"unknown backend {name!r}; expected one of {BACKEND_NAMES}")

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.backends[name] = Backend(name, fn, tuple(devices), available, supports, note)
            return fn

        return deco

    @property
    def reference(self) -> Callable[..., Any]:
        return self.backends["reference"].fn

    # ----------------------------------------------------------------- choosing
    def choose(self, device: str, backend: Optional[str] = None, **ctx: Any) -> Backend:
        forced = backend or os.environ.get(f"THRESHER_BACKEND_{self.name.upper()}") or None
        if forced:
            if forced not in self.backends:
                raise ValueError(f"backend={forced!r}: op {self.name!r} has backends {list(self.backends)}")
            b = self.backends[forced]
            reasons = b.not_supported_reasons(device=device, **ctx)
            if reasons:
                raise RuntimeError(f"{self.name}: backend {forced!r} cannot run here: " + "; ".join(reasons))
            return b
        pref = os.environ.get("THRESHER_BACKEND")
        if pref and pref in self.backends:
            b = self.backends[pref]
            if not b.not_supported_reasons(device=device, **ctx):
                return b
        why: list[str] = []
        for name in backend_order(self.name, device)[0]:
            candidate = self.backends.get(name)
            if candidate is None:
                continue
            reasons = candidate.not_supported_reasons(device=device, **ctx)
            if not reasons:
                return candidate
            why.append(f"{name}: {'; '.join(reasons)}")
        raise RuntimeError(f"{self.name}: no backend can run on {device}: " + " | ".join(why))

    def dispatch(
        self,
        device: str,
        *args: Any,
        backend: Optional[str] = None,
        ctx: Optional[dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        b = self.choose(device, backend, **(ctx or {}))
        _local.last = (self.name, b.name)
        return b.fn(*args, **kwargs)

    # ------------------------------------------------------------------ report
    def table(self) -> dict[str, dict[str, Any]]:
        """{backend: {devices, cpu: reasons, cuda: reasons}} for doctor."""
        out: dict[str, dict[str, Any]] = {}
        for name in BACKEND_NAMES:
            b = self.backends.get(name)
            if b is None:
                continue
            row: dict[str, Any] = {"devices": list(b.devices), "note": b.note}
            for dev in ("cpu", "cuda"):
                if dev in b.devices or (name == "triton" and dev == "cpu"):
                    row[dev] = b.not_supported_reasons(device=dev)
            out[name] = row
        return out


def _listed(pair: tuple[tuple[str, ...], str]) -> tuple[list[str], str]:
    return list(pair[0]), pair[1]


def order_table() -> dict[str, dict[str, dict[str, Any]]]:
    """{op: {device: {"order": [...], "why": provenance}}} for doctor."""
    return {
        name: {dev: dict(zip(("order", "why"), _listed(backend_order(name, dev)))) for dev in ("cuda", "cpu")}
        for name in sorted(OPS)
    }


def last_backend() -> Optional[tuple[str, str]]:
    """(op, backend) of the last dispatch in this thread: for tests and logs."""
    return getattr(_local, "last", None)


def device_type(*tensors: Any) -> str:
    """The common device type of the given tensors (ValueError if they differ)."""
    devs = {t.device.type for t in tensors if t is not None and hasattr(t, "device")}
    if len(devs) > 1:
        raise ValueError(f"tensors are on different devices: {sorted(devs)}")
    return devs.pop() if devs else "cpu"


# ------------------------------------------------------------- common checks
def cpu_available() -> list[str]:
    return [] if _native.cpu_ext() is not None else [_native.why_unavailable("cpu") or "thresher._C not built"]


def cpu_has(symbol: str) -> Callable[[], list[str]]:
    def check() -> list[str]:
        r = cpu_available()
        if r:
            return r
        return [] if hasattr(_native.cpu_ext(), symbol) else [f"thresher._C has no {symbol} (stale build?)"]

    return check


def cuda_has(symbol: str) -> Callable[[], list[str]]:
    def check() -> list[str]:
        m = _native.cuda_ext()
        if m is None:
            return [_native.why_unavailable("cuda") or "thresher._cuda not built"]
        if not hasattr(m, symbol):
            return [f"thresher._cuda has no {symbol}"]
        err = m.device_error()
        return [err] if err else []

    return check


def triton_has(module: str) -> Callable[[], list[str]]:
    def check() -> list[str]:
        if _native.kernels() is None:
            return [_native.why_unavailable("kernels") or "triton not installed"]
        if _native.kernel(module) is None:
            return [f"thresher.kernels.{module} failed to import: {_native.why_unavailable('kernels.' + module)}"]
        return []

    return check
