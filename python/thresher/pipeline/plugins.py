"""Plugins: user modules or ``.py`` files that register criteria, selectors or recipes.

Importing a plugin runs its code, so it happens only when the user asked for it where
the command is run: ``--plugin MODULE_OR_FILE`` on the command line (or
``PipelineConfig(plugins=[...])`` in Python code), or, for the ``plugins:`` key of a
config file, ``--allow-plugins`` (``PipelineConfig(..., allow_plugins=True)``). A config
file cannot give itself that permission. Each loaded plugin is recorded in the
manifest with its file and sha256.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from ..errors import OptionError
from ..plan import PipelineConfig

PREFIX = "thresher_plugin_"  # module names of plugins loaded from files (the Ray engine ships these by value)
_LOADED: dict = {}  # name as given -> its manifest record


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for b in iter(lambda: fh.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def is_file_spec(name: str) -> bool:
    return name.endswith(".py") or "/" in name or os.sep in name


def plugin_names(cfg: PipelineConfig) -> list:
    """The plugins a run loads: the caller's, then the config file's (these only when allowed)."""
    names: list = []
    for n in list(cfg.plugins or []) + list(cfg.config_plugins or []):
        if not isinstance(n, str) or not n:
            raise OptionError(f"plugins: expected module names or .py files, got {n!r}")
    given = {_key(n) for n in cfg.plugins or []}
    pending = [n for n in cfg.config_plugins or [] if _key(n) not in given]
    if pending and not cfg.allow_plugins:
        raise OptionError(
            f"config: plugins: {pending} would import and run code named by a config file; allow it with "
            "--allow-plugins (or name each with --plugin) on the command line, or PipelineConfig(..., "
            "allow_plugins=True) in Python"
        )
    for n in list(cfg.plugins or []) + pending:
        if _key(n) not in {_key(m) for m in names}:
            names.append(n)
    return names


def _load_file(name: str) -> dict:
    p = Path(name).expanduser().resolve()
    if not p.is_file():
        raise OptionError(f"plugin: {name} does not exist (or is not a file)")
    digest = _sha256(p)
    mod_name = f"{PREFIX}{p.stem}_{hashlib.blake2b(str(p).encode(), digest_size=4).hexdigest()}"
    if mod_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(mod_name, p)
        if spec is None or spec.loader is None:
            raise OptionError(f"plugin: {p} cannot be loaded as a Python module")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            del sys.modules[mod_name]
            raise OptionError(f"plugin: {p}: failed to load ({type(exc).__name__}: {exc})") from exc
    return {"path": str(p), "sha256": digest}


def _load_module(name: str) -> dict:
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:
        raise OptionError(f"plugin: cannot import module {name!r} ({exc})") from exc
    file: Optional[str] = getattr(mod, "__file__", None)
    return {"module": name, "path": file, "sha256": _sha256(Path(file)) if file and Path(file).is_file() else None}


def load_plugins(names: Iterable[Any]) -> list:
    """Import each module or ``.py`` file (once per process); return their manifest records."""
    records = []
    for name in names or []:
        key = _key(name)
        if key not in _LOADED:
            _LOADED[key] = _load_file(name) if is_file_spec(name) else _load_module(name)
        records.append(_LOADED[key])
    return records


def _key(name: Any) -> str:
    return str(Path(name).expanduser().resolve()) if isinstance(name, str) and is_file_spec(name) else str(name)


def loaded_records(names: Iterable[Any]) -> list:
    """The manifest records of plugins already loaded by :func:`load_plugins`."""
    return [_LOADED[_key(n)] for n in names or [] if _key(n) in _LOADED]
