"""Warm-up LoRA training (LESS step 1): train LoRA on a random fraction of the pool.

Defaults are LESS's (``princeton-nlp/LESS`` warm-up scripts): LoRA r = 128, alpha = 512 on
q/k/v/o, 5% of the pool, 4 epochs, peak lr 2e-5, linear decay after a 3% linear warm-up.
A random ``fraction`` of the rows (seeded) is trained for ``epochs`` epochs with
AdamW (weight decay 0) and a linear schedule with ``warmup_ratio`` warm-up,
loss = mean over the batch of each sample's mean answer-token cross-entropy
(rendering and token alignment of :mod:`thresher.render`). After each epoch a
checkpoint folder ``checkpoint-<epoch>/`` holds ``adapter.safetensors`` (the LoRA
weights), ``optimizer.safetensors`` (Adam's exp_avg / exp_avg_sq per parameter,
step, betas, eps: what the LESS gradient transform needs) and ``state.json``
(epoch, step, mean learning rate of the epoch, loss). ``warmup.json`` at the top
lists the checkpoints, the LoRA configuration, the base model fingerprint and the
ids of the training subset; every file is written atomically. A run stopped part-way (killed, out of
time) goes on from its last saved point when it is called again on the same folder, model, options and
rows, with the result of an unbroken run (:mod:`thresher.train.progress`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..features.gradients import (
    DEFAULT_TARGETS,
    AdamState,
    Encoded,
    add_lora,
    encode_rows,
    load_lora,
    lora_named_parameters,
    pad_encoded,
    save_lora,
)
from ..frames import as_pandas
from ..fs import atomic_save, write_json_atomic
from ..ops.blas import tile_rows
from .progress import DEFAULT_CHECKPOINT_S, Point, Progress, WarmupMismatch, on_step, rows_digest


@dataclass
class WarmupResult:
    out: Path
    checkpoints: list[Path]
    lrs: list[float]
    losses: list[float]
    meta: dict = field(default_factory=dict)
    resumed_step: Optional[int] = None  # the optimizer step a stopped run was resumed at (this call only)

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
    logits = causal.get_output_embeddings()(tile_rows(h[pb, pt]))[: len(pb)].float()
    ce = F.cross_entropy(logits, ids[pb, pt + 1], reduction="none")
    counts = score[:, 1:].sum(1).clamp(min=1).to(ce.dtype)
    return (ce / counts[pb]).sum() / len(enc)


def _check_args(fraction: float, epochs: int, lr: float, out: Path) -> None:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected 0 < fraction <= 1, got {fraction}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr}")
    if (out / "warmup.json").exists():
        raise FileExistsError(f"{out}: already holds a warm-up run (warmup.json); choose another --out")


def _pick_subset(df: Any, fraction: float, max_rows: Optional[int], seed: int) -> Any:
    """The seeded random training subset (rows in pool order)."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(len(df) * fraction)))
    if max_rows is not None:
        n = min(n, max_rows)
    return df.iloc[np.sort(rng.choice(len(df), size=n, replace=False))]


def _linear_schedule(lr: float, total: int, warmup_ratio: float) -> Callable[[int], float]:
    """HF's linear schedule with warm-up: learning rate at a 0-based optimizer step."""
    n_warm = max(0, int(math.ceil(total * warmup_ratio)))

    def lr_at(step: int) -> float:
        if step < n_warm:
            return lr * (step + 1) / max(1, n_warm)
        return lr * max(0.0, (total - step) / max(1, total - n_warm))

    return lr_at


@dataclass
class _Trainer:
    """One LoRA warm-up: the peft model, its optimizer and the step counter."""

    pm: Any
    opt: Any
    names: dict
    enc: list
    pad: int
    batch_size: int
    lr_at: Callable[[int], float]
    step: int = 0

    def epoch(self, ep: int, order: list, pt: Point, hook: Callable[[Point], None]) -> tuple[float, float]:
        """Train epoch ``ep`` over ``order`` from batch ``pt.batch`` on (``pt`` holds the epoch's learning rates
        and losses so far, and is advanced after every step, when ``hook(pt)`` is called); returns (mean
        learning rate, mean loss) of the whole epoch."""
        causal = self.pm.get_base_model()
        dev = next(self.pm.parameters()).device
        starts = list(range(0, len(order), self.batch_size))
        for b in range(pt.batch, len(starts)):
            batch = [self.enc[i] for i in order[starts[b] : starts[b] + self.batch_size]]
            cur = self.lr_at(self.step)
            for grp in self.opt.param_groups:
                grp["lr"] = cur
            with torch.enable_grad():
                loss = _batch_loss(causal, batch, self.pad, dev)
                if not torch.isfinite(loss):
                    raise ValueError(
                        f"warm-up: non-finite loss at epoch {ep} step {self.step} "
                        f"(samples {[b.id for b in batch][:3]}); lower lr or use float32"
                    )
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
            self.opt.step()
            self.step += 1
            pt.ep_lrs.append(cur)
            pt.ep_loss.append(float(loss.detach()))
            pt.batch, pt.step = b + 1, self.step
            hook(pt)
        return float(np.mean(pt.ep_lrs)), float(np.mean(pt.ep_loss))

    def save(self, ck: Path, state: dict) -> None:
        """checkpoint folder: adapter, Adam state, state.json (each written atomically)."""
        ck.mkdir(exist_ok=True)
        atomic_save(ck / "adapter.safetensors", lambda p: save_lora(self.pm, p))
        st = AdamState.from_optimizer(self.opt, self.names)
        atomic_save(ck / "optimizer.safetensors", lambda p: st.save(p))
        write_json_atomic(state, ck / "state.json")


def warmup_lora(
    rows: Any,
    lm: Any,
    out: Path,
    *,
    fraction: float = 0.05,
    epochs: int = 4,
    lr: float = 2e-5,
    r: int = 128,
    alpha: float = 512,
    targets: Sequence[str] = DEFAULT_TARGETS,
    batch_size: int = 4,
    max_length: int = 512,
    template: str = "alpaca",
    seed: int = 0,
    warmup_ratio: float = 0.03,
    max_rows: Optional[int] = None,
    checkpoint_s: float = DEFAULT_CHECKPOINT_S,
    log: Callable[[str], None] = print,
) -> WarmupResult:
    """Train LoRA on a random ``fraction`` of ``rows`` (a sample table); see module doc. A run stopped in
    ``out`` with the same model, options and rows goes on from its last saved point (every ``checkpoint_s``
    seconds part-way through an epoch, and at each epoch's end; :mod:`thresher.train.progress`)."""
    df = as_pandas(rows)
    out = Path(out)
    _check_args(fraction, epochs, lr, out)
    if not (isinstance(checkpoint_s, (int, float)) and checkpoint_s >= 0):
        raise ValueError(
            f"checkpoint_s: expected a number of seconds >= 0 (0: at the ends of epochs only), got {checkpoint_s!r}"
        )
    out.mkdir(parents=True, exist_ok=True)
    sub = _pick_subset(df, fraction, max_rows, seed)
    enc = [e for e in encode_rows(sub, lm.tokenizer, template=template, max_length=max_length) if not e.reason]
    if not enc:
        raise ValueError("rows: no trainable sample in the warm-up subset (all empty or truncated away)")
    pm = add_lora(lm.model, r=r, alpha=alpha, targets=targets, seed=seed)
    params = lora_named_parameters(pm)
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    total = math.ceil(len(enc) / batch_size) * epochs
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    tr = _Trainer(
        pm, opt, {id(p): n for n, p in params}, enc, pad, batch_size, _linear_schedule(lr, total, warmup_ratio)
    )
    opts = {"r": r, "alpha": alpha, "targets": list(targets), "template": template, "max_length": max_length,
            "seed": seed, "fraction": fraction, "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "warmup_ratio": warmup_ratio}  # fmt: skip
    prog = Progress(out, _identity(lm, opts, max_rows, enc), float(checkpoint_s))
    pt = _resume(prog, tr, total, log)
    resumed = pt.step or None  # a saved point is after a step
    pm.train()
    ckpts, lrs, losses = _train(tr, prog, pt, epochs, seed, out, log)
    pm.eval()
    meta = {"model": lm.fingerprint, "model_spec": lm.spec, **opts, "n_train": len(enc),
            "train_ids": [e.id for e in enc], "checkpoints": [c.name for c in ckpts], "lr_mean": lrs,
            "loss_mean": losses}  # fmt: skip
    write_json_atomic(meta, out / "warmup.json")
    prog.finish()
    return WarmupResult(out, ckpts, lrs, losses, meta, resumed_step=resumed)


def _identity(lm: Any, opts: dict, max_rows: Optional[int], enc: list) -> dict:
    """What a stopped run must share with this one to be resumed by it."""
    p = next(lm.model.parameters())
    return {"model": lm.fingerprint, "device": str(p.device), "dtype": str(p.dtype), **opts, "max_rows": max_rows,
            "rows": rows_digest(enc)}  # fmt: skip


def _resume(prog: Progress, tr: _Trainer, total: int, log: Callable[[str], None]) -> Point:
    """The point to train from: a stopped run's (its weights and Adam state loaded into ``tr``), else the start."""
    got = prog.load()
    if got is None:
        return Point()
    pt, folder = got
    prog.restore(folder, tr.pm, tr.opt, tr.names)
    tr.step = pt.step
    log(f"warmup: resumed at epoch {pt.epoch}, step {pt.step} of {total} (saved in {folder.name})")
    return pt


def _train(tr: _Trainer, prog: Progress, pt: Point, epochs: int, seed: int, out: Path, log: Callable) -> tuple:
    """Epochs ``pt.epoch``..``epochs`` (every epoch's batch order drawn from ``seed``, the skipped ones' too), a
    checkpoint folder after each; returns (checkpoint folders, mean learning rates, mean losses)."""
    save = on_step(prog, tr.pm, tr.opt, tr.names, log)
    g = torch.Generator().manual_seed(seed)
    for ep in range(1, epochs + 1):
        order = torch.randperm(len(tr.enc), generator=g).tolist()
        if ep < pt.epoch:
            continue
        t0 = time.time() - pt.ep_seconds

        def hook(p: Point, t0: float = t0) -> None:
            p.ep_seconds = time.time() - t0
            save(p)

        lr_mean, loss_mean = tr.epoch(ep, order, pt, hook)
        secs = time.time() - t0
        ck = out / f"checkpoint-{ep}"
        tr.save(ck, {"epoch": ep, "step": tr.step, "lr_mean": lr_mean, "loss_mean": loss_mean, "seconds": secs})
        pt = Point(epoch=ep + 1, step=tr.step, done_lrs=[*pt.done_lrs, lr_mean], done_loss=[*pt.done_loss, loss_mean])
        prog.point(ck.name, pt)
        log(f"warmup: epoch {ep}/{epochs} loss {loss_mean:.4f} mean lr {lr_mean:.3g} ({secs:.1f}s)")
    return [out / f"checkpoint-{e}" for e in range(1, epochs + 1)], pt.done_lrs, pt.done_loss


def warmup_resuming(rows: Any, lm: Any, out: Path, **kw: Any) -> WarmupResult:
    """:func:`warmup_lora` into ``out`` for a caller that owns the folder (a criterion's checkpoint): a run
    stopped there on the same model, options and rows goes on; anything else there (a finished run, a stopped
    one of other options or rows) is removed first."""
    out = Path(out)
    if (out / "warmup.json").exists():
        shutil.rmtree(out, ignore_errors=True)
    try:
        return warmup_lora(rows, lm, out, **kw)
    except WarmupMismatch:
        shutil.rmtree(out, ignore_errors=True)
        return warmup_lora(rows, lm, out, **kw)


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


__all__ = [
    "WarmupMismatch",
    "warmup_lora",
    "warmup_resuming",
    "load_warmup",
    "lora_for_checkpoint",
    "WarmupResult",
    "load_lora",
    "AdamState",
]
