"""Hidden-state embeddings of a causal LM, pooled as RDS+ does (Ivison et al., 2025).

:class:`HiddenStateEncoder` runs the LM's decoder once over each text and pools the hidden
states of one layer (``layer``: an index into the model's hidden states, ``-1`` = the last
layer, after the final norm; ``0`` = the token embeddings) over the non-pad tokens:

* ``weighted_mean`` (default, RDS+; the position weighting of SGPT): token t (1-based among
  the row's non-pad tokens) gets weight ``t / sum_{s=1..L} s``, so later tokens, which have
  seen more of the text, count more;
* ``mean``: the plain mean over non-pad tokens;
* ``last``: the last non-pad token.

Works with left or right padding (positions are counted over the attention mask). Returns
float32 ``[N, d]`` in input order, not normalised (:func:`thresher.embed.embed_texts`
normalises and caches them by content under :attr:`HiddenStateEncoder.fingerprint`, which
names the model's weights, the layer, the pooling and the length cap).
:func:`hidden_encoder` keeps one loaded encoder per (model, layer, pooling, device) in the
process, so criteria sharing a model load it once.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..device import resolve_device
from ..models import load_causal_lm
from .encoders import length_order, tiled_batch

HIDDEN_VERSION = 2  # 2: batches padded to the BLAS row tile (bits that do not follow the thread count)
POOLINGS = ("weighted_mean", "mean", "last")
_LOCK = threading.Lock()


def pool_hidden(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``h`` [B, T, d] over the positions where ``mask`` [B, T] is 1 (see the module doc)."""
    m = mask.to(h.dtype)
    if pooling == "weighted_mean":
        w = torch.cumsum(m, dim=1) * m  # 1..L over the non-pad tokens, 0 on pads
        w = w / w.sum(1, keepdim=True).clamp_min(1.0)
        return (h * w.unsqueeze(-1)).sum(1)
    if pooling == "mean":
        return (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
    if pooling == "last":
        pos = torch.arange(mask.shape[1], device=h.device).expand_as(mask)
        last = torch.where(mask.bool(), pos, torch.full_like(pos, -1)).max(1).values.clamp_min(0)
        return h[torch.arange(h.shape[0], device=h.device), last]
    raise ValueError(f"pooling: expected one of {list(POOLINGS)}, got {pooling!r}")


class HiddenStateEncoder:
    """Pooled hidden states of one layer of a causal LM (``.encode``, ``.dim``, ``.fingerprint``)."""

    def __init__(
        self,
        spec: str = "default",
        *,
        layer: int = -1,
        pooling: str = "weighted_mean",
        device: Optional[str] = None,
        dtype: Any = torch.float32,
        max_length: int = 512,
        lm: Any = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {list(POOLINGS)}, got {pooling!r}")
        if lm is None:
            lm = load_causal_lm(spec, dtype=dtype, device=resolve_device(device))
        self.lm, self.spec, self.pooling = lm, spec, pooling
        n_layers = int(lm.model.config.num_hidden_layers)
        if not -(n_layers + 1) <= int(layer) <= n_layers:
            raise ValueError(f"layer: {layer} is out of range -{n_layers + 1}..{n_layers} ({n_layers} layers)")
        self.layer = int(layer)
        self.max_length = int(min(max_length, lm.max_length or max_length))
        tok = lm.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.dim = int(lm.model.config.hidden_size)
        self.fingerprint = f"lmh:{lm.fingerprint}:{pooling}:layer{self.layer}:L{self.max_length}:v{HIDDEN_VERSION}"

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        trunk = self.lm.trunk()
        if self.layer == -1:
            return trunk(input_ids=ids, attention_mask=mask).last_hidden_state
        out = trunk(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[self.layer]

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        tok, dev = self.lm.tokenizer, self.lm.device
        order = length_order(texts)
        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                sel = order[s : s + batch_size]
                enc = tiled_batch(tok([texts[i] for i in sel], return_tensors="pt", padding=True, truncation=True,
                                      max_length=self.max_length), tok.pad_token_id)  # fmt: skip
                mask = enc["attention_mask"].to(dev)
                h = self._hidden(enc["input_ids"].to(dev), mask).float()
                out[sel] = pool_hidden(h, mask, self.pooling).cpu().numpy()
        return out


@functools.lru_cache(maxsize=4)
def _cached(spec: str, layer: int, pooling: str, device: Optional[str], max_length: int) -> HiddenStateEncoder:
    return HiddenStateEncoder(spec, layer=layer, pooling=pooling, device=device, max_length=max_length)


def hidden_encoder(
    spec: str = "default",
    *,
    layer: int = -1,
    pooling: str = "weighted_mean",
    device: Optional[str] = None,
    max_length: int = 512,
) -> HiddenStateEncoder:
    """The process-wide encoder for these settings (loaded on first use)."""
    device = resolve_device(device)
    with _LOCK:
        return _cached(spec or "default", int(layer), pooling, device, int(max_length))
