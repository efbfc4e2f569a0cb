"""`thresher doctor`: each op x backend, whether it can run here, and why not."""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

import torch

import thresher

from .. import _native, registry
from ..ops import OPS


def collect() -> dict[str, Any]:
    cpu = _native.cpu_ext()
    cuda = _native.cuda_ext()
    tri = _native.triton_module()
    dev_ok, dev_why = _native.cuda_device_available()
    info: dict[str, Any] = {
        "thresher": thresher.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "devices": {
            "cpu": {"threads": torch.get_num_threads()},
            "cuda": (
                {"available": True, "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
                if dev_ok
                else {"available": False, "reason": dev_why}
            ),
        },
        "extensions": {
            "thresher._C": (
                {
                    "built": True,
                    "openmp": bool(cpu.has_openmp),
                    "threads": cpu.max_threads(),
                    "compiler": cpu.compiler,
                    "ops": list(cpu.registered),
                }
                if cpu is not None
                else {"built": False, "reason": _native.why_unavailable("cpu")}
            ),
            "thresher._cuda": (
                {
                    "built": True,
                    "cuda_runtime": int(cuda.cuda_runtime_version),
                    "device": cuda.device_error() or "ok",
                    "ops": list(cuda.registered),
                }
                if cuda is not None
                else {"built": False, "reason": _native.why_unavailable("cuda")}
            ),
            "triton": (
                {
                    "installed": True,
                    "version": getattr(tri, "__version__", "?"),
                    "interpret": _native.triton_interpret(),
                    "kernels": _native.kernels() is not None,
                    **({} if _native.kernels() is not None else {"reason": _native.why_unavailable("kernels")}),
                }
                if tri is not None
                else {"installed": False, "reason": _native.why_unavailable("triton")}
            ),
        },
        "ops": {name: op.table() for name, op in sorted(OPS.items())},
        "components": _components(),
    }
    return info


def _components() -> dict[str, Any]:
    """Registered criteria, selectors and recipes, and modules that failed to load."""
    out: dict[str, Any] = {}
    for reg in (registry.CRITERIA, registry.SELECTORS, registry.RECIPES, registry.READERS):
        out[reg.kind] = reg.names()
    out["load_errors"] = dict(registry.LOAD_ERRORS)
    return out


def _status(reasons: Any) -> str:
    if reasons is None:
        return "-"
    return "ok" if not reasons else "no: " + "; ".join(reasons)


def render(info: dict[str, Any]) -> str:
    lines = [
        f"thresher {info['thresher']}  python {info['python']}  torch {info['torch']}",
        f"platform: {info['platform']}",
    ]
    cuda = info["devices"]["cuda"]
    lines.append(
        "cuda device: " + (f"{cuda['name']} x{cuda['count']}" if cuda.get("available") else f"none ({cuda['reason']})")
    )
    lines.append("")
    lines.append("extensions:")
    for name, e in info["extensions"].items():
        ok = e.get("built", e.get("installed"))
        detail = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("built", "installed", "reason", "ops"))
        lines.append(f"  {name:15s} {'yes' if ok else 'no'}  {detail}" + ("" if ok else f"  ({e.get('reason', '')})"))
    lines.append("")
    lines.append("ops x backends (per tensor device; [n] = reason below, - = not applicable):")
    names = ("triton", "cuda", "cpu", "reference")
    reasons: list[str] = []

    def cell(row: Any) -> str:
        if row is None:
            return ""
        parts = []
        for dev in ("cpu", "cuda"):
            r = row.get(dev)
            if r is None:
                continue
            if not r:
                parts.append(f"{dev}:ok")
            else:
                why = "; ".join(r)
                if why not in reasons:
                    reasons.append(why)
                parts.append(f"{dev}:no[{reasons.index(why) + 1}]")
        return " ".join(parts)

    width = max([len(o) for o in info["ops"]] + [4])
    header = f"  {'op':{width}s}  " + "  ".join(f"{n:20s}" for n in names)
    lines.append(header)
    for op, backends in info["ops"].items():
        lines.append(f"  {op:{width}s}  " + "  ".join(f"{(cell(backends.get(n)) or '-'):20s}" for n in names))
    for i, why in enumerate(reasons, 1):
        lines.append(f"  [{i}] {why}")
    comp = info.get("components", {})
    if comp:
        lines.append("")
        lines.append("components:")
        for kind, names in comp.items():
            if kind == "load_errors":
                continue
            lines.append(f"  {kind:10s} {', '.join(names) or '-'}")
        for mod, err in comp.get("load_errors", {}).items():
            lines.append(f"  not loaded: {mod} ({err})")
    return "\n".join(lines)


def run(args: Any) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(render(info))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="list backends per op and why any is unavailable")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(func=run)
