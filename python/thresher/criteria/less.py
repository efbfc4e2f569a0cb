"""``less``: LESS targeted selection (Xia et al., 2024) from gradient features.

score(z) = max over target subtasks j of  mean over target samples v in j of
           sum_c w_c cos(Gamma_c(z), g_c(v))
with c the warm-up checkpoints (``thresher warmup``), w_c the mean learning
rate of epoch c normalised to sum 1, Gamma_c(z) the Adam-transformed projected
LoRA gradient of training sample z at checkpoint c (LESS form by default) and
g_c(v) the plain projected gradient of target sample v. Subtasks are the
labels of the target set (``target_field``, sizes may differ). By linearity the
mean of cosines is a cosine against the subtask's mean unit vector, so the
whole score is ONE matrix product: [N, C*d] (w_c-weighted unit train features
of every checkpoint side by side) x [C*d, S] (per-subtask mean unit target
features), then a max over S (:func:`less_scores`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ..device import DTYPE_CHOICES
from ..features.gradients import AdamState, GradientFeaturizer, load_lora
from ..features.store import FeatureStore
from ..frames import as_pandas
from ..io import read_samples
from ..models import LoadedLM, shared_lm
from ..registry import CRITERIA, Option
from ..train.warmup import load_warmup, lora_for_checkpoint
from .base import Criterion, digest, file_digest, model_fingerprint, sample_ids, table_digest


# ------------------------------------------------------------------ the math
def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def subtask_means(feats: np.ndarray, labels: Sequence[Any]) -> tuple[list[str], np.ndarray]:
    """(subtask names sorted, [S, d] mean of the unit rows of each subtask)."""
    labels = np.asarray([str(v) for v in labels])
    if len(labels) != len(feats):
        raise ValueError(f"labels: {len(labels)} labels for {len(feats)} target rows")
    if len(labels) == 0:
        raise ValueError("target: empty target set")
    names, inv = np.unique(labels, return_inverse=True)
    u = torch.from_numpy(unit_rows(feats))
    sums = torch.zeros((len(names), u.shape[1]), dtype=torch.float32).index_add_(0, torch.from_numpy(inv), u)
    counts = np.bincount(inv, minlength=len(names)).astype(np.float32)
    return [str(n) for n in names], (sums.numpy() / counts[:, None])


def less_scores(
    train: Sequence[np.ndarray], target_means: Sequence[np.ndarray], weights: Sequence[float]
) -> np.ndarray:
    """[N, S] checkpoint-weighted mean cosines: one product [N, C*d] @ [C*d, S].

    ``train[c]`` [N, d] raw features at checkpoint c (normalised here; NaN rows give NaN),
    ``target_means[c]`` [S, d] from :func:`subtask_means`, ``weights`` [C].
    """
    if not (len(train) == len(target_means) == len(weights)) or not train:
        raise ValueError("train/target_means/weights: one entry per checkpoint, same count")
    w = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights: expected non-negative finite weights with a positive sum, got {weights}")
    w = w / w.sum()
    Z = np.concatenate([unit_rows(t) * np.float32(wc) for t, wc in zip(train, w)], axis=1)
    M = np.concatenate([np.asarray(m, np.float32) for m in target_means], axis=1)
    return Z @ M.T


def _labels(df, field: str) -> list[str]:
    for f in (field, "group", "task", "source"):
        if f in df.columns:
            return [str(v) for v in df[f].tolist()]
    return ["all"] * len(df)


# ------------------------------------------------------------------ scorer
@CRITERIA.register(
    "less",
    doc="LESS targeted selection: max over target subtasks of the checkpoint-weighted mean cosine between "
    "a sample's Adam-transformed projected LoRA gradient and the target samples' gradients "
    "(needs `thresher warmup` checkpoints and a target set)",
    options=[
        Option(
            "warmup", None, "folder written by `thresher warmup` (checkpoints + optimizer states)", type=(str, Path)
        ),
        Option(
            "target",
            None,
            "target set file (any reader format) or table; subtasks from `target_field`",
            type=(str, Path, pd.DataFrame, pa.Table),
        ),
        Option("target_field", "group", "column of the target set naming its subtask (missing: one subtask)", type=str),
        Option("model", "default", "causal LM the warm-up was trained on", type=(str, LoadedLM)),
        Option("dtype", "auto", "model dtype (auto: bfloat16 on a GPU with bf16, else float32)", DTYPE_CHOICES),
        Option("device", "auto", "torch device: auto (cuda when visible), cpu, cuda, cuda:N", type=str),
        Option("dim", 8192, "projection dimension (a multiple of 8)", min=8),
        Option("seed", 0, "projection seed"),
        Option("kind", "rademacher", "projection matrix", choices=("rademacher", "gaussian")),
        Option(
            "adam",
            "less",
            "training-gradient transform: less (no bias correction), bias_corrected, none",
            choices=("less", "bias_corrected", "none"),
        ),
        Option("batch_size", 8, "samples per backward pass", min=1),
        Option(
            "store", None, "folder caching the training features (one feature store per checkpoint)", type=(str, Path)
        ),
        Option("backend", None, "force a thresher.ops.random_project backend", type=str),
    ],
    direction="max",
    needs=("model",),
)
class Less(Criterion):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        _require(o)
        self.warm = load_warmup(Path(o["warmup"]))
        # a LoadedLM passed as model= is used as is; the LoRA goes on a deep copy either way
        self.lm = shared_lm(o["model"], dtype=o["dtype"], device=o["device"])
        self.pm = lora_for_checkpoint(self.lm, self.warm)
        tdf = read_samples(o["target"]) if isinstance(o["target"], (str, Path)) else as_pandas(o["target"])
        labels = _labels(tdf, o["target_field"])
        meta = self.warm.meta
        self.template, self.max_length = meta.get("template", "alpaca"), int(meta.get("max_length", 512))
        self.weights = self.warm.weights
        self.ckpt_hash = [file_digest(ck / "adapter.safetensors")[:16] for ck in self.warm.checkpoints]
        self.means, self.feat = [], []
        for ck in self.warm.checkpoints:
            load_lora(self.pm, ck / "adapter.safetensors")
            ids, f, reasons = self._featurizer(None, "none")(tdf)
            ok = [i for i, r in enumerate(reasons) if not r]
            if not ok:
                raise ValueError(f"target: no target sample could be scored ({reasons[:3]})")
            self.subtasks, m = subtask_means(f[ok], [labels[i] for i in ok])
            self.means.append(m)
            st = AdamState.load(ck / "optimizer.safetensors") if o["adam"] != "none" else None
            self.feat.append(self._featurizer(st, o["adam"]))
        self.n_target = len(tdf)

    def _featurizer(self, st, adam) -> GradientFeaturizer:
        o = self.options
        return GradientFeaturizer(
            self.pm,
            self.lm.tokenizer,
            dim=o["dim"],
            seed=o["seed"],
            kind=o["kind"],
            adam=adam,
            adam_state=st,
            batch_size=o["batch_size"],
            template=self.template,
            max_length=self.max_length,
            backend=o["backend"],
            on_nonfinite="nan",
            fingerprint=self.lm.fingerprint,
        )

    @classmethod
    def key_options(cls, options: dict) -> dict:
        """Model fingerprint, the warm-up's checkpoint files and the target set's content."""
        out = super().key_options(options)
        _require(options)
        warm = load_warmup(Path(options["warmup"]))
        out["model"] = model_fingerprint(options["model"])
        out["warmup"] = [
            [file_digest(ck / f)[:16] for f in ("adapter.safetensors", "optimizer.safetensors")]
            for ck in warm.checkpoints
        ]
        out["target"] = table_digest(options["target"])
        return out

    def features(self, batch: Any, c: int) -> tuple[list[str], np.ndarray, list[str]]:
        """Training features of ``batch`` at checkpoint c (through the feature store when set)."""
        df = as_pandas(batch)
        load_lora(self.pm, self.warm.checkpoints[c] / "adapter.safetensors")
        fz = self.feat[c]
        if not self.options["store"]:
            return fz(df)
        meta = dict(fz.describe(), checkpoint=self.ckpt_hash[c])
        store = FeatureStore(Path(self.options["store"]) / self.warm.checkpoints[c].name, meta)
        ids = sample_ids(df)
        # stored by content (id + every field of the row): an edited row with an old id is recomputed
        keys = [f"{sid}:{digest(row, 24)}" for sid, row in zip(ids, df.to_dict("records"))]
        todo = [i for i, k in enumerate(keys) if k not in store]
        reasons = [""] * len(ids)
        if todo:
            _, f, r = fz(df.iloc[todo])
            okk = [j for j, rr in enumerate(r) if not rr]
            store.write([keys[todo[j]] for j in okk], f[okk])
            for j, rr in enumerate(r):
                reasons[todo[j]] = rr
        out = np.full((len(ids), fz.dim), np.nan, np.float32)
        have = [i for i, k in enumerate(keys) if k in store]
        if have:
            out[have] = store.load([keys[i] for i in have])[1]
        return ids, out, reasons

    def __call__(self, batch: Any) -> pd.DataFrame:
        df = as_pandas(batch)
        per_ck, reasons = [], None
        for c in range(len(self.warm.checkpoints)):
            _, f, r = self.features(df, c)
            per_ck.append(f)
            reasons = r if reasons is None else [a or b for a, b in zip(reasons, r)]
        S = less_scores(per_ck, self.means, self.weights)  # [N, S], NaN rows stay NaN
        best = np.nanargmax(np.where(np.isnan(S), -np.inf, S), axis=1) if S.shape[0] else np.zeros(0, int)
        score = S.max(axis=1) if S.shape[1] else np.full(len(df), np.nan)
        out = pd.DataFrame(
            {
                "id": sample_ids(df),
                "less": score.astype(np.float64),
                "less.subtask": [self.subtasks[b] for b in best],
                "less.reason": reasons or [""] * len(df),
            }
        )
        out.loc[out["less"].isna(), "less.subtask"] = ""
        return out


def _require(o: dict) -> None:
    if not o["warmup"]:
        raise ValueError("less: option warmup= (a `thresher warmup` folder) is required")
    if o["target"] is None or (isinstance(o["target"], str) and not o["target"]):
        raise ValueError("less: option target= (the target set file) is required")
