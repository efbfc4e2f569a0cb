"""Warm-up LoRA training (LESS step 1): train LoRA on a random fraction of the pool.

A random ``fraction`` of the rows (seeded) is trained for ``epochs`` epochs with
AdamW (weight decay 0) and a linear schedule with ``warmup_ratio`` warm-up,
loss = mean over the batch of each sample's mean answer-token cross-entropy
(rendering and token alignment of :mod:`thresher.render`). After each epoch a
checkpoint folder ``checkpoint-<epoch>/`` holds ``adapter.safetensors`` (the LoRA
weights), ``optimizer.safetensors`` (Adam's exp_avg / exp_avg_sq per parameter,
step, betas, eps: what the LESS gradient transform needs) and ``state.json``
(epoch, step, mean learning rate of the epoch, loss). ``warmup.json`` at the top
lists the checkpoints, the LoRA configuration, the base model fingerprint and the
ids of the training subset; every file is written atomically.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..features.gradients import (DEFAULT_TARGETS, AdamState, Encoded, add_lora, encode_rows, load_lora, pad_encoded,
                                  lora_named_parameters, save_lora)


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_file(path: Path, save: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    save(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class WarmupResult:
    out: Path
    checkpoints: list[Path]
    lrs: list[float]
    losses: list[float]
    meta: dict = field(default_factory=dict)

    @property
    def weights(self) -> list[float]:
        """LESS checkpoint weights: mean learning rate of each epoch, normalised to sum 1."""
        s = sum(self.lrs)
        return [lr / s for lr in self.lrs] if s > 0 else [1.0 / len(self.lrs)] * len(self.lrs)


def _batch_loss(causal, enc: list[Encoded], pad: int, dev) -> torch.Tensor:
    ids, att, score = pad_encoded(enc, pad, dev)
    trunk = getattr(causal, causal.base_model_prefix)
    h = trunk(input_ids=ids, attention_mask=att).last_hidden_state
    pb, pt = torch.nonzero(score[:, 1:], as_tuple=True)
    logits = causal.get_output_embeddings()(h[pb, pt]).float()
    ce = F.cross_entropy(logits, ids[pb, pt + 1], reduction="none")
    counts = score[:, 1:].sum(1).clamp(min=1).to(ce.dtype)
    return (ce / counts[pb]).sum() / len(enc)


def warmup_lora(rows: Any, lm: Any, out: Path, *, fraction: float = 0.05, epochs: int = 4, lr: float = 2e-5,
                r: int = 8, alpha: float = 32, targets: Sequence[str] = DEFAULT_TARGETS, batch_size: int = 4,
                max_length: int = 512, template: str = "alpaca", seed: int = 0, warmup_ratio: float = 0.03,
                max_rows: Optional[int] = None, log: Callable[[str], None] = print) -> WarmupResult:
    """Train LoRA on a random ``fraction`` of ``rows`` (a sample table); see module doc."""
    from ..frames import as_pandas

    df = as_pandas(rows)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected 0 < fraction <= 1, got {fraction}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr}")
    out = Path(out)
    if (out / "warmup.json").exists():
        raise FileExistsError(f"{out}: already holds a warm-up run (warmup.json); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = max(1, int(round(len(df) * fraction)))
    if max_rows is not None:
        n = min(n, max_rows)
    pick = np.sort(rng.choice(len(df), size=n, replace=False))
    sub = df.iloc[pick]
    enc = [e for e in encode_rows(sub, lm.tokenizer, template=template, max_length=max_length) if not e.reason]
    if not enc:
        raise ValueError("rows: no trainable sample in the warm-up subset (all empty or truncated away)")
    pm = add_lora(lm.model, r=r, alpha=alpha, targets=targets, seed=seed)
    params = lora_named_parameters(pm)
    names = {id(p): n for n, p in params}
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(enc) / batch_size)
    total = steps_per_epoch * epochs
    n_warm = max(0, int(math.ceil(total * warmup_ratio)))

    def lr_at(step: int) -> float:  # HF linear schedule with warm-up
        if step < n_warm:
            return lr * (step + 1) / max(1, n_warm)
        return lr * max(0.0, (total - step) / max(1, total - n_warm))

    causal = pm.get_base_model()
    dev = next(pm.parameters()).device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    pm.train()
    g = torch.Generator().manual_seed(seed)
    step = 0
    ckpts, lrs, losses = [], [], []
    for ep in range(1, epochs + 1):
        order = torch.randperm(len(enc), generator=g).tolist()
        ep_lrs, ep_loss = [], []
        t0 = time.time()
        for s in range(0, len(order), batch_size):
            batch = [enc[i] for i in order[s:s + batch_size]]
            cur = lr_at(step)
            for grp in opt.param_groups:
                grp["lr"] = cur
            with torch.enable_grad():
                loss = _batch_loss(causal, batch, pad, dev)
                if not torch.isfinite(loss):
                    raise ValueError(f"warm-up: non-finite loss at epoch {ep} step {step} "
                                     f"(samples {[b.id for b in batch][:3]}); lower lr or use float32")
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            ep_lrs.append(cur)
            ep_loss.append(float(loss.detach()))
            step += 1
        ck = out / f"checkpoint-{ep}"
        ck.mkdir(exist_ok=True)
        _atomic_file(ck / "adapter.safetensors", lambda p: save_lora(pm, p))
        st = AdamState.from_optimizer(opt, names)
        _atomic_file(ck / "optimizer.safetensors", lambda p: st.save(p))
        _atomic_json(ck / "state.json", {"epoch": ep, "step": step, "lr_mean": float(np.mean(ep_lrs)),
                                         "loss_mean": float(np.mean(ep_loss)), "seconds": time.time() - t0})
        ckpts.append(ck)
        lrs.append(float(np.mean(ep_lrs)))
        losses.append(float(np.mean(ep_loss)))
        log(f"warmup: epoch {ep}/{epochs} loss {losses[-1]:.4f} mean lr {lrs[-1]:.3g} ({time.time() - t0:.1f}s)")
    pm.eval()
    meta = {"model": lm.fingerprint, "model_spec": lm.spec, "r": r, "alpha": alpha, "targets": list(targets),
            "template": template, "max_length": max_length, "seed": seed, "fraction": fraction,
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "warmup_ratio": warmup_ratio,
            "n_train": len(enc), "train_ids": [e.id for e in enc],
            "checkpoints": [c.name for c in ckpts], "lr_mean": lrs, "loss_mean": losses}
    _atomic_json(out / "warmup.json", meta)
    return WarmupResult(out, ckpts, lrs, losses, meta)


def load_warmup(out: Path) -> WarmupResult:
    """Read a warm-up folder written by :func:`warmup_lora` (ValueError naming what is missing)."""
    out = Path(out)
    f = out / "warmup.json"
    if not f.is_file():
        raise ValueError(f"{out}: no warmup.json (not a `thresher warmup` output folder)")
    meta = json.loads(f.read_text())
    ckpts = [out / c for c in meta["checkpoints"]]
    for c in ckpts:
        for name in ("adapter.safetensors", "optimizer.safetensors"):
            if not (c / name).is_file():
                raise ValueError(f"{c}: missing {name} (interrupted warm-up?)")
    return WarmupResult(out, ckpts, list(meta["lr_mean"]), list(meta["loss_mean"]), meta)


def lora_for_checkpoint(lm: Any, w: WarmupResult):
    """A peft model with the warm-up's LoRA configuration over a copy of ``lm.model``."""
    m = w.meta
    if m.get("model") and lm.fingerprint and m["model"] != lm.fingerprint:
        raise ValueError(f"warm-up {w.out} was trained on model {m['model']}, this model is {lm.fingerprint}")
    return add_lora(lm.model, r=int(m["r"]), alpha=m["alpha"], targets=m["targets"], seed=int(m["seed"]))


__all__ = ["warmup_lora", "load_warmup", "lora_for_checkpoint", "WarmupResult", "load_lora", "AdamState"]
