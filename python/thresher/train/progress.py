"""A stopped warm-up resumes where it was: the progress file of :func:`thresher.train.warmup.warmup_lora`.

``progress.json`` in the warm-up's folder names the last saved point of the training: a folder that holds
the LoRA weights and Adam's state at that point (an epoch's ``checkpoint-<epoch>/``, or a
``progress-<step>/`` folder saved part-way through an epoch), the epoch and batch to go on from, the
optimizer step, the learning rates and losses of the epoch so far and the means of the finished epochs.
It also holds the run's identity (model, device, dtype, every training option, a digest of the encoded
training rows). A call with the same identity goes on from that point, and its result equals an unbroken
run's bit for bit: the batch order of every epoch is replayed from the seed, and the weights, Adam's
moments and the step are restored exactly. A call with another identity raises :class:`WarmupMismatch`
naming what differs (nothing of the stopped run is removed). A finished run removes the file and its
``progress-*`` folders.

Part-way saves come every ``checkpoint_s`` seconds (0: at the ends of epochs only), and never sooner than
:data:`SAVE_COST_FACTOR` times the last save's own duration, so that saving a large LoRA and its Adam state
costs at most about 1/SAVE_COST_FACTOR of the training time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..features.gradients import AdamState, load_lora, save_lora
from ..fs import atomic_save, write_json_atomic

SAVE_COST_FACTOR = 20.0
DEFAULT_CHECKPOINT_S = 60.0
PROGRESS = "progress.json"
FORMAT = 1


class WarmupMismatch(ValueError):
    """The folder holds a stopped warm-up of other options, model or rows."""


def rows_digest(enc: list) -> str:
    """Digest of the encoded training rows: ids, token ids and which tokens are scored."""
    h = hashlib.sha256()
    for e in enc:
        h.update(json.dumps([e.id, list(e.ids), [int(s) for s in e.score]]).encode())
    return h.hexdigest()[:32]


def restore_adam(opt: torch.optim.Optimizer, names: dict, st: AdamState) -> None:
    """Put ``st`` (saved by :meth:`AdamState.from_optimizer`) back into a fresh AdamW over the same parameters."""
    missing = sorted(n for n in names.values() if n not in st.exp_avg)
    if missing:
        raise ValueError(f"optimizer state lacks parameters {missing[:3]}")
    for grp in opt.param_groups:
        for p in grp["params"]:
            n = names[id(p)]
            opt.state[p] = {
                "step": torch.tensor(float(st.step), dtype=torch.float32),
                "exp_avg": st.exp_avg[n].to(p.device, p.dtype).clone(),
                "exp_avg_sq": st.exp_avg_sq[n].to(p.device, p.dtype).clone(),
            }


@dataclass
class Point:
    """Where a stopped run goes on: ``epoch`` (1-based) from batch ``batch``, after optimizer step ``step``."""

    epoch: int = 1
    batch: int = 0
    step: int = 0
    ep_lrs: list = field(default_factory=list)
    ep_loss: list = field(default_factory=list)
    ep_seconds: float = 0.0
    done_lrs: list = field(default_factory=list)
    done_loss: list = field(default_factory=list)


@dataclass
class Progress:
    """The progress file of one warm-up folder (see module doc)."""

    out: Path
    identity: dict
    checkpoint_s: float
    last: float = field(default_factory=time.monotonic)
    cost: float = 0.0
    saves: int = 0

    def due(self) -> bool:
        """Whether a part-way save is due now."""
        if self.checkpoint_s <= 0:
            return False
        waited = time.monotonic() - self.last
        return waited >= self.checkpoint_s and waited >= SAVE_COST_FACTOR * self.cost

    def load(self) -> Optional[tuple[Point, Path]]:
        """The saved point and its weights' folder, or None when there is none (or it is unreadable)."""
        f = self.out / PROGRESS
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            return None
        if rec.get("format") != FORMAT:
            return None
        old = rec.get("identity", {})
        diff = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
        if diff:
            raise WarmupMismatch(
                f"{self.out}: holds a stopped warm-up with other {', '.join(diff)}; rerun it with the same "
                "options and rows to resume it, or choose another --out"
            )
        folder = self.out / rec["folder"]
        if not all((folder / n).is_file() for n in ("adapter.safetensors", "optimizer.safetensors")):
            return None
        return Point(**rec["point"]), folder

    def restore(self, folder: Path, pm: Any, opt: Any, names: dict) -> None:
        """Load the LoRA weights and Adam's state saved in ``folder``."""
        load_lora(pm, folder / "adapter.safetensors")
        restore_adam(opt, names, AdamState.load(folder / "optimizer.safetensors"))

    def save_part(self, pm: Any, opt: Any, names: dict, pt: Point) -> None:
        """A part-way save: weights and Adam's state into ``progress-<step>/``, then the progress file."""
        t0 = time.monotonic()
        folder = self.out / f"progress-{pt.step}"
        folder.mkdir(exist_ok=True)
        atomic_save(folder / "adapter.safetensors", lambda p: save_lora(pm, p))
        st = AdamState.from_optimizer(opt, names)
        atomic_save(folder / "optimizer.safetensors", lambda p: st.save(p))
        self.point(folder.name, pt)
        self.cost = time.monotonic() - t0
        self.saves += 1

    def point(self, folder: str, pt: Point) -> None:
        """Make ``folder`` (holding the weights at ``pt``) the saved point; older part-way folders go."""
        rec = {"format": FORMAT, "identity": self.identity, "folder": folder, "point": pt.__dict__}
        write_json_atomic(rec, self.out / PROGRESS)
        self.last = time.monotonic()
        self._sweep(keep=folder)

    def finish(self) -> None:
        """The run is complete: no progress file, no part-way folders."""
        (self.out / PROGRESS).unlink(missing_ok=True)
        self._sweep(keep=None)

    def _sweep(self, keep: Optional[str]) -> None:
        for d in self.out.glob("progress-*"):
            if d.name != keep and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)


def on_step(prog: Progress, pm: Any, opt: Any, names: dict, log: Callable[[str], None]) -> Callable[[Point], None]:
    """The trainer's per-step hook: a part-way save when one is due. A save that fails (a full disk) is
    dropped with one line in ``log``, and the run goes on with saves at the ends of epochs only: a part-way
    save is a convenience, the training is the work."""

    def hook(pt: Point) -> None:
        if not prog.due():
            return
        try:
            prog.save_part(pm, opt, names, pt)
        except OSError as e:
            shutil.rmtree(prog.out / f"progress-{pt.step}", ignore_errors=True)
            prog.checkpoint_s = 0.0
            log(f"warmup: a part-way save at step {pt.step} failed ({e}); saving at the ends of epochs only")

    return hook


__all__ = [
    "Progress",
    "Point",
    "WarmupMismatch",
    "rows_digest",
    "restore_adam",
    "on_step",
    "SAVE_COST_FACTOR",
    "DEFAULT_CHECKPOINT_S",
]
