"""Per-sample LoRA gradient features of a causal LM (the LESS feature extractor), batched.

For a batch of samples, one forward and one backward pass give every sample's
gradient of its own loss (mean cross-entropy over its answer tokens, the loss
engine's rendering and token alignment via :mod:`thresher.render`) with
respect to the LoRA matrices: forward hooks on every ``lora_A``/``lora_B``
linear keep its input activations X[b, t, n_in] and tensor hooks its output
gradients D[b, t, n_out]; since the batch loss is the sum of per-sample losses
and samples do not attend to each other, sample b's weight gradient is exactly
``G_b = sum_t D[b,t]^T X[b,t]``. Two feature modes:

* ``dense``: G_b is formed per module (O(T r n) per sample, cheap for LoRA),
  optionally transformed with a saved Adam state (LESS: ``(b1 m + (1-b1) g) /
  sqrt(b2 v + (1-b2) g^2 + eps)``, no bias correction; ``adam="bias_corrected"``
  divides m and v by (1 - b^(t+1)) and puts eps outside the root), then streamed
  through :class:`thresher.ops.Projector` parameter by parameter (global row
  offsets in sorted-name order, so the result equals projecting the
  concatenated gradient vector) to ``dim`` dimensions.
* ``structured``: LoGra-style :func:`thresher.ops.structured_project` of (X, D)
  per module (the rank side kept, the wide side projected to ``side_dim``),
  concatenated and projected to ``dim``; never forms G_b. Plain gradients only.

Samples with no scorable answer token get NaN features and a reason; samples
whose gradient is non-finite raise ValueError naming them (``on_nonfinite="nan"``
turns that into NaN + reason instead).
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..extras import require
from ..frames import as_pandas
from ..ops.blas import tile_rows, tiled_width
from ..ops.projection import Projector, check_dim, check_kind, random_project, structured_project
from ..render import SampleError, render_sample, tokenize_rendered

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAM_MODES = ("none", "less", "bias_corrected")


# ------------------------------------------------------------------ LoRA
def check_target_modules(model: torch.nn.Module, targets: Sequence[str]) -> None:
    """ValueError naming a LoRA target that matches no linear module of ``model``."""
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ValueError("target_modules: empty")
    lin = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in lin})
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n in lin):
            raise ValueError(
                f"target_modules: {t!r} matches no linear module of the model "
                f"(linear module names: {', '.join(leaves)})"
            )


def add_lora(
    model: torch.nn.Module,
    *,
    r: int = 8,
    alpha: float = 16,
    targets: Sequence[str] = DEFAULT_TARGETS,
    dropout: float = 0.0,
    seed: int = 0,
    copy_model: bool = True,
):
    """A peft LoRA model over (a deep copy of) ``model``; LoRA A initialised from ``seed``."""
    peft = require("peft", "train", what="LoRA (peft)")
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model
    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"r: expected a positive int, got {r!r}")
    targets = list(targets)
    check_target_modules(model, targets)
    base = copy.deepcopy(model) if copy_model else model
    base.requires_grad_(False)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout, bias="none")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft reads transformers' deprecated alias on every wrap: one FutureWarning per LoRA (SHED trains hundreds)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(seed)
        pm = get_peft_model(base, cfg)
    return pm


def lora_named_parameters(pm) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable LoRA parameters in sorted-name order (the feature's coordinate order)."""
    return sorted(((n, p) for n, p in pm.named_parameters() if p.requires_grad), key=lambda t: t[0])


def lora_modules(pm) -> dict[str, torch.nn.Linear]:
    """param name -> the nn.Linear (lora_A/lora_B) owning it."""
    mods = dict(pm.named_modules())
    out = {}
    for n, _ in lora_named_parameters(pm):
        mod_name, leaf = n.rsplit(".", 1)
        if leaf != "weight" or not isinstance(mods.get(mod_name), torch.nn.Linear):
            raise ValueError(f"LoRA parameter {n!r}: only bias-free linear LoRA factors are supported")
        out[n] = mods[mod_name]
    return out


def _safetensors_torch() -> Any:
    return require("safetensors.torch", "lm", what="reading and writing safetensors files")


def save_lora(pm, path: Path) -> None:
    _safetensors_torch().save_file({n: p.detach().cpu().contiguous() for n, p in lora_named_parameters(pm)}, str(path))


def load_lora(pm, path: Path) -> None:
    state = _safetensors_torch().load_file(str(path))
    params = dict(lora_named_parameters(pm))
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise ValueError(
            f"{path}: LoRA weights do not match the model (missing {missing[:3]}, "
            f"unexpected {extra[:3]}): another LoRA rank/targets/model?"
        )
    with torch.no_grad():
        for n, p in params.items():
            if state[n].shape != p.shape:
                raise ValueError(f"{path}: {n} has shape {tuple(state[n].shape)}, model has {tuple(p.shape)}")
            p.copy_(state[n].to(p.dtype))


# ------------------------------------------------------------------ Adam state
@dataclass
class AdamState:
    """exp_avg / exp_avg_sq per LoRA parameter name, and the optimizer's step and betas."""

    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    step: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def transform(self, name: str, g: torch.Tensor, mode: str = "less") -> torch.Tensor:
        """g[B, *shape] -> the Adam update direction per sample (see module doc)."""
        b1, b2 = self.betas
        m = self.exp_avg[name].to(g.device, torch.float32)
        v = self.exp_avg_sq[name].to(g.device, torch.float32)
        m1 = b1 * m + (1 - b1) * g
        v1 = b2 * v + (1 - b2) * g * g
        if mode == "less":
            return m1 / torch.sqrt(v1 + self.eps)
        if mode == "bias_corrected":
            t = self.step + 1
            return (m1 / (1 - b1**t)) / (torch.sqrt(v1 / (1 - b2**t)) + self.eps)
        raise ValueError(f"adam: {mode!r} not one of {ADAM_MODES}")

    def save(self, path: Path) -> None:
        save_file = _safetensors_torch().save_file
        t = {f"exp_avg.{k}": v.contiguous().cpu() for k, v in self.exp_avg.items()}
        t.update({f"exp_avg_sq.{k}": v.contiguous().cpu() for k, v in self.exp_avg_sq.items()})
        save_file(
            t,
            str(path),
            metadata={"step": str(self.step), "betas": json.dumps(list(self.betas)), "eps": repr(self.eps)},
        )

    @classmethod
    def load(cls, path: Path) -> "AdamState":
        safe_open = require("safetensors", "lm", what="reading safetensors files").safe_open
        m, v = {}, {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                kind, name = k.split(".", 1)
                (m if kind == "exp_avg" else v)[name] = f.get_tensor(k)
        if set(m) != set(v) or not m:
            raise ValueError(f"{path}: not an Adam state (exp_avg and exp_avg_sq differ or are empty)")
        return cls(
            m,
            v,
            int(meta.get("step", 0)),
            tuple(json.loads(meta.get("betas", "[0.9, 0.999]"))),
            float(meta.get("eps", "1e-8")),
        )

    @classmethod
    def from_optimizer(cls, opt: torch.optim.Optimizer, names: dict[int, str]) -> "AdamState":
        m, v, step = {}, {}, 0
        group = opt.param_groups[0]
        for p, st in opt.state.items():
            n = names[id(p)]
            m[n] = st["exp_avg"].detach().clone()
            v[n] = st["exp_avg_sq"].detach().clone()
            step = int(st["step"])
        return cls(m, v, step, tuple(group["betas"]), float(group["eps"]))


# ------------------------------------------------------------------ encoding
@dataclass
class Encoded:
    id: str
    ids: list[int]
    score: list[bool]  # token t scored (predicted from t-1)
    reason: str = ""


def pad_encoded(enc: list["Encoded"], pad: int, dev: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad encoded samples into (ids [B,T] long, attention [B,T] long, scored [B,T] bool) on ``dev``; ``T``
    the longest sample's length or a little more (``B x T`` a multiple of :data:`~thresher.ops.BLAS_ROW_TILE`)."""
    B = len(enc)
    T = tiled_width(B, max(len(e.ids) for e in enc))  # B x T rows: a multiple of the BLAS tile (ops.blas)
    ids = torch.full((B, T), pad, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    score = torch.zeros((B, T), dtype=torch.bool)
    for b, e in enumerate(enc):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids)
        att[b, :n] = 1
        score[b, :n] = torch.tensor(e.score)
    return ids.to(dev), att.to(dev), score.to(dev)


def encode_rows(rows: Any, tokenizer: Any, *, template: str = "alpaca", max_length: int = 512) -> list[Encoded]:
    """Render + tokenise each row (the loss engine's alignment); a reason instead of raising for bad rows."""

    df = as_pandas(rows)
    out = []
    for i, row in enumerate(df.to_dict("records")):
        sid = str(row.get("id", i))
        try:
            r = render_sample(row, template, tokenizer, sid=sid)
            tk = tokenize_rendered(r, tokenizer, max_length=max_length)
        except SampleError as exc:
            out.append(Encoded(sid, [], [], str(exc)))
            continue
        if tk.answer_kept == 0:
            why = "empty answer" if tk.answer_total == 0 else "answer truncated away"
            out.append(Encoded(sid, [], [], why))
            continue
        out.append(Encoded(sid, tk.ids, tk.score))
    return out


# ------------------------------------------------------------------ featurizer
@dataclass
class GradientFeaturizer:
    """Per-sample projected LoRA gradients of a peft model ``pm`` (see module doc).

    ``__call__(rows)`` -> ``(ids, features float32 [N, dim], reasons)``; rows that cannot be
    scored hold NaN and a reason. ``describe()`` is what a feature store records.
    """

    pm: Any
    tokenizer: Any
    dim: int = 8192
    seed: int = 0
    kind: str = "rademacher"
    mode: str = "dense"
    adam: str = "none"
    adam_state: Optional[AdamState] = None
    side_dim: int = 16
    batch_size: int = 8
    template: str = "alpaca"
    max_length: int = 512
    backend: Optional[str] = None
    on_nonfinite: str = "raise"
    fingerprint: str = ""

    def __post_init__(self) -> None:
        self.dim = check_dim(self.dim)
        self.kind = check_kind(self.kind)
        if self.mode not in ("dense", "structured"):
            raise ValueError(f"mode: {self.mode!r} not one of ('dense', 'structured')")
        if self.adam not in ADAM_MODES:
            raise ValueError(f"adam: {self.adam!r} not one of {ADAM_MODES}")
        if self.adam != "none" and self.adam_state is None:
            raise ValueError(f"adam={self.adam!r} needs an optimizer state (adam_state)")
        if self.adam != "none" and self.mode == "structured":
            raise ValueError(
                "mode='structured' works on plain gradients only (the Adam transform is "
                "elementwise on the full gradient): use mode='dense' with adam"
            )
        if self.on_nonfinite not in ("raise", "nan"):
            raise ValueError(f"on_nonfinite: {self.on_nonfinite!r} not one of ('raise', 'nan')")
        if self.mode == "structured":
            check_dim(self.side_dim, "side_dim")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {self.batch_size!r}")
        self.params = lora_named_parameters(self.pm)
        if not self.params:
            raise ValueError("model: has no trainable LoRA parameters")
        self.modules = lora_modules(self.pm)
        if self.adam_state is not None:
            missing = [n for n, _ in self.params if n not in self.adam_state.exp_avg]
            if missing:
                raise ValueError(f"adam_state: no moments for {missing[:3]} (another LoRA configuration?)")
        self.n_params = sum(p.numel() for _, p in self.params)

    def describe(self) -> dict:
        return {
            "dim": self.dim,
            "seed": self.seed,
            "kind": self.kind,
            "mode": self.mode,
            "transform": self.adam if self.adam != "none" else "plain",
            "side_dim": self.side_dim if self.mode == "structured" else None,
            "model": self.fingerprint,
            "n_params": self.n_params,
            "template": self.template,
            "max_length": self.max_length,
        }

    # -- one batch: hooks -> per-module (X, D) -------------------------------
    def _capture(self, enc: list[Encoded]):
        dev = next(self.pm.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, att, score = pad_encoded(enc, pad, dev)
        acts: dict[str, torch.Tensor] = {}
        grads: dict[str, torch.Tensor] = {}
        handles = []
        for name, mod in self.modules.items():

            def fwd(m, inp, out, name=name):
                acts[name] = inp[0].detach()
                out.register_hook(lambda g, name=name: grads.__setitem__(name, g.detach()))

            handles.append(mod.register_forward_hook(fwd))
        try:
            with torch.enable_grad():
                causal = self.pm.get_base_model()
                trunk = getattr(causal, causal.base_model_prefix)
                h = trunk(input_ids=ids, attention_mask=att).last_hidden_state  # [B, T, H]
                pos_b, pos_t = torch.nonzero(score[:, 1:], as_tuple=True)  # predicts token t+1
                hs = h[pos_b, pos_t]
                head = causal.get_output_embeddings()
                logits = head(tile_rows(hs))[: len(hs)].float()
                ce = F.cross_entropy(logits, ids[pos_b, pos_t + 1], reduction="none")
                counts = score[:, 1:].sum(1).clamp(min=1).to(ce.dtype)
                loss = (ce / counts[pos_b]).sum()  # sum over samples of each sample's mean loss
                torch.autograd.grad(loss, [p for _, p in self.params])
        finally:
            for hd in handles:
                hd.remove()
        mask = att.bool()
        return acts, grads, mask

    def _features(self, enc: list[Encoded], modes: Sequence[str] = ()) -> dict:
        """{transform: [B, dim]} for each transform in ``modes`` (default: this featurizer's)."""
        modes = list(modes) or [self.adam]
        acts, grads, mask = self._capture(enc)
        B = len(enc)
        dev = next(self.pm.parameters()).device
        m = mask[..., None].to(torch.float32)
        if self.mode == "dense":
            prs = {md: Projector(B, self.dim, self.seed, self.kind, device=dev, backend=self.backend) for md in modes}
            # small parameters are buffered into blocks of >= 2^20 columns per projection call (few
            # calls, tiles amortised); the row offsets are those of the concatenated gradient
            buf: dict[str, list] = {md: [] for md in modes}
            state = {"start": 0, "cols": 0}

            def flush():
                if state["cols"]:
                    for md in modes:
                        prs[md].update(torch.cat(buf[md], 1), row_offset=state["start"])
                        buf[md].clear()
                    state["start"] += state["cols"]
                    state["cols"] = 0

            for name, _ in self.params:
                X = acts[name].to(torch.float32) * m
                D = grads[name].to(torch.float32)
                G = torch.einsum("bto,bti->boi", D, X)  # per-sample weight gradient [B, out, in]
                self._check_finite(G.reshape(B, -1), enc, name)
                G = torch.nan_to_num(G, nan=0.0, posinf=0.0, neginf=0.0)  # bad rows are marked above
                for md in modes:
                    Gt = G if md == "none" else self.adam_state.transform(name, G, md)
                    buf[md].append(Gt.reshape(B, -1))
                state["cols"] += G[0].numel()
                if state["cols"] >= 1 << 20:
                    flush()
            flush()
            return {md: pr.result() for md, pr in prs.items()}
        parts = []
        for name, mod in self.modules.items():
            X = acts[name].to(torch.float32) * m
            D = grads[name].to(torch.float32)
            a_side = mod.out_features <= mod.in_features  # lora_A: rank is the output side
            k_in, k_out = (
                (min(self.side_dim, 8 * math.ceil(mod.in_features / 8)), None)
                if a_side
                else (None, min(self.side_dim, 8 * math.ceil(mod.out_features / 8)))
            )
            sd = hash_name(name, self.seed)
            f = structured_project(X, D, k_in, k_out, sd, self.kind, backend=self.backend)
            self._check_finite(f, enc, name)
            parts.append(torch.nan_to_num(f))
        flat = torch.cat(parts, 1)
        return {"none": random_project(flat, self.dim, self.seed, self.kind, backend=self.backend)}

    def _check_finite(self, G: torch.Tensor, enc: list[Encoded], name: str) -> None:
        bad = ~torch.isfinite(G).all(1)
        if bool(bad.any()):
            ids = [enc[i].id for i in torch.nonzero(bad).flatten().tolist()]
            if self.on_nonfinite == "raise":
                raise ValueError(
                    f"non-finite gradient for sample(s) {ids[:5]} in {name} "
                    "(overflow in the model's dtype? try dtype=float32)"
                )
            for i in torch.nonzero(bad).flatten().tolist():
                enc[i].reason = enc[i].reason or f"non-finite gradient ({name})"

    def __call__(self, rows: Any, encoded: Optional[list[Encoded]] = None):
        ids, feats, reasons = self.multi(rows, [self.adam], encoded=encoded)
        return ids, feats[self.adam], reasons

    def multi(self, rows: Any, modes: Sequence[str], encoded: Optional[list[Encoded]] = None):
        """Several transforms (e.g. ``["none", "less"]``) from ONE backward pass per batch:
        ``(ids, {transform: float32 [N, dim]}, reasons)``."""
        for md in modes:
            if md not in ADAM_MODES:
                raise ValueError(f"modes: {md!r} not one of {ADAM_MODES}")
            if md != "none" and (self.adam_state is None or self.mode != "dense"):
                raise ValueError(f"modes: {md!r} needs mode='dense' and an adam_state")
        enc = (
            encoded
            if encoded is not None
            else encode_rows(rows, self.tokenizer, template=self.template, max_length=self.max_length)
        )
        enc = [Encoded(e.id, e.ids, e.score, e.reason) for e in enc]  # reasons are added per call
        N = len(enc)
        out = {md: np.full((N, self.dim), np.nan, dtype=np.float32) for md in modes}
        good = [i for i, e in enumerate(enc) if not e.reason]
        # length-sorted batches: less padding
        good.sort(key=lambda i: len(enc[i].ids))
        was_training = self.pm.training
        self.pm.eval()
        try:
            for s in range(0, len(good), self.batch_size):
                idx = good[s : s + self.batch_size]
                batch = [enc[i] for i in idx]
                fs = {md: f.cpu().numpy() for md, f in self._features(batch, modes).items()}
                for j, i in enumerate(idx):
                    if not enc[i].reason:
                        for md in modes:
                            out[md][i] = fs[md][j]
        finally:
            self.pm.train(was_training)
        return [e.id for e in enc], out, [e.reason for e in enc]


def hash_name(name: str, seed: int) -> int:
    """A 64-bit seed for one module, derived from the global seed and the parameter name."""
    import hashlib

    h = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def per_sample_grads_loop(pm, tokenizer, enc: list[Encoded]) -> torch.Tensor:
    """Oracle: one backward per sample, flattened LoRA gradient [N, n_params] in sorted-name order."""
    params = lora_named_parameters(pm)
    causal = pm.get_base_model()
    dev = next(pm.parameters()).device
    rows = []
    for e in enc:
        ids = torch.tensor([e.ids], device=dev)
        score = torch.tensor([e.score], device=dev)
        with torch.enable_grad():
            logits = causal(input_ids=ids).logits[0, :-1].float()
            tgt = ids[0, 1:]
            sel = score[0, 1:]
            loss = F.cross_entropy(logits[sel], tgt[sel])
            gs = torch.autograd.grad(loss, [p for _, p in params])
        rows.append(torch.cat([g.reshape(-1) for g in gs]).float())
    return torch.stack(rows) if rows else torch.zeros((0, sum(p.numel() for _, p in params)))
