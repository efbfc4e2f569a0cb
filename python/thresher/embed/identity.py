"""Identity of an embedder spec without loading it (:func:`embedder_fingerprint`).

The key of the scores built on an embedder: ``lm:``/``lm-last:`` specs -> the model's fingerprint
(:func:`thresher.models.identity.model_fingerprint`); the bundled default and local folders -> the
folder's fingerprint; a hub name -> the name and its locally cached revision.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import OptionError
from ..models import DEFAULT_SPEC
from ..models.identity import hub_revision, model_fingerprint
from .encoders import DEFAULT_EMBEDDER_NAMES, ENCODER_VERSION, default_model_dir, folder_fingerprint


def embedder_fingerprint(spec: Any) -> str:
    """Identity of an embedder spec (:func:`thresher.embed.get_embedder`) without loading it."""
    if hasattr(spec, "encode") and hasattr(spec, "fingerprint"):
        return str(spec.fingerprint)
    if not isinstance(spec, str) or not spec:
        raise OptionError(f"embedder: expected a name, a path or an encoder object, got {spec!r}")
    if spec.startswith(("lm:", "lm-last:")):
        kind, _, lm_spec = spec.partition(":")
        return f"{kind}:{model_fingerprint(lm_spec or DEFAULT_SPEC)}:v{ENCODER_VERSION}"
    if spec in DEFAULT_EMBEDDER_NAMES:
        return f"st:{folder_fingerprint(default_model_dir())}:v{ENCODER_VERSION}"
    p = Path(spec).expanduser()
    if p.exists():
        return f"st:{folder_fingerprint(p)}:v{ENCODER_VERSION}"
    return f"st:{spec}@{hub_revision(spec)}:v{ENCODER_VERSION}"


__all__ = ["embedder_fingerprint"]
