"""The package's layer map and an import-graph checker (used by tests/test_architecture.py).

Dependencies flow one way, from the front doors down to the native kernels:

    cli -> api -> evaluation -> pipeline, engines, report -> recipes, plan, cache
        -> criteria, selectors -> features, embed, index, cluster, models, render, train
        -> ops -> _native, kernels -> io, registry, errors, fs, frames, data

A module may import modules of a lower layer, and modules of its own group (the
same top-level subpackage or module). Every import counts, module-level and
function-level alike.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "thresher"

# group -> layer (higher imports lower; equal layers are independent of each other)
LAYERS: dict[str, int] = {
    "": 100,
    "__main__": 100,  # the package itself (the public API re-exports) and `python -m thresher`
    "cli": 90,
    "api": 85,
    "evaluation": 80,
    "pipeline": 70,
    "engines": 70,
    "report": 70,
    "recipes": 60,
    "plan": 60,
    "cache": 60,
    "criteria": 50,
    "selectors": 50,
    "features": 40,
    "embed": 40,
    "index": 40,
    "cluster": 40,
    "models": 40,
    "render": 40,
    "train": 40,
    "ops": 30,
    "_native": 20,
    "kernels": 20,
    "io": 10,
    "registry": 10,
    "errors": 5,
    "fs": 5,
    "frames": 5,
    "data": 5,
    "_version": 5,
    "extras": 7,
    "progress": 7,
    "device": 7,
    "memory": 7,
}
# Lateral edges between groups of one layer that are part of the design (feature extractors build on
# the model runner and the renderer; training reuses gradient features; recipes are expanded into a plan;
# the pipeline drives the engines and writes the report).
ALLOWED_LATERAL: set[tuple[str, str]] = {
    ("features", "models"),
    ("features", "render"),
    ("render", "models"),
    ("train", "features"),
    ("train", "models"),
    ("train", "render"),
    ("embed", "models"),
    ("cluster", "index"),
    ("embed", "index"),
    ("recipes", "plan"),
    ("pipeline", "engines"),
    ("pipeline", "report"),
    ("pipeline", "cache"),
    ("io", "registry"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def group(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path, mod: str) -> set[str]:
    """thresher modules imported anywhere in ``path`` (absolute names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("thresher"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("thresher"):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
    return out


def all_modules() -> dict[str, Path]:
    mods = {}
    for dp, _, fs in os.walk(PKG):
        for f in fs:
            if f.endswith(".py"):
                p = Path(dp) / f
                mods[module_name(p)] = p
    return mods


def layer_violations() -> list[str]:
    """'a -> b' for every import of a module in a higher or unrelated same-layer group."""
    mods = all_modules()
    bad = []
    for mod, path in sorted(mods.items()):
        g = group(mod)
        if g not in LAYERS:
            bad.append(f"{mod}: group {g!r} has no layer in tools/layers.py")
            continue
        for target in sorted(imports_of(path, mod)):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            tg = group(target)
            if not target or tg == g or tg == "":
                continue
            if tg not in LAYERS:
                continue
            if LAYERS[tg] < LAYERS[g] or (g, tg) in ALLOWED_LATERAL:
                continue
            bad.append(f"{mod} -> {target} ({g} at {LAYERS[g]} imports {tg} at {LAYERS[tg]})")
    return bad


if __name__ == "__main__":
    v = layer_violations()
    print("\n".join(v) or "no layer violations")
    raise SystemExit(1 if v else 0)
