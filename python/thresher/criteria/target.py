"""``target_similarity``: how close each sample is to a target set (RDS / RDS+).

score(x) = max over target groups g of  agg_g(x), with e(.) an L2-normalised embedding and

* ``aggregate=mean``:      cos(e(x), c_g), c_g the mean of the group's target embeddings;
* ``aggregate=max``:       max over target rows t in g of cos(e(x), e(t));
* ``aggregate=topk_mean``: mean of the ``topk`` largest cos(e(x), e(t)) over t in g.

Groups come from the target set's ``target_field`` column (``group``; the readers map
``task`` to it); without that column the whole set is one group. The max over groups is
the way LESS scores several target tasks; with more than one group each group's value
is kept as ``target_similarity.sim_<group>`` and the best group's name as
``target_similarity.best``.

Embedders: a sentence-transformers model (``default`` = all-MiniLM-L6-v2) or
``lm:MODEL`` for the LM's own hidden states (``lm:default`` = SmolLM2-135M-Instruct),
pooled with position weights as RDS+ does (:mod:`thresher.embed.hidden`; options
``layer`` and ``pooling`` apply to ``lm:`` embedders only). Vectors are cached by content
and model under ``cache_dir`` (:func:`thresher.embed.embed_texts` without ids keys a row
by its text), so scoring several targets against one pool embeds the pool once.

Each row's score depends only on the row and the target set: the criterion is
shard-scoped, and its cache key names the target set's content digest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ..embed import embed_texts, get_embedder, sample_texts
from ..embed.hidden import HIDDEN_VERSION, POOLINGS, hidden_encoder
from ..embed.pool import encoder_batch
from ..errors import OptionError
from ..frames import as_pandas
from ..io import read_samples
from ..registry import CRITERIA, Option
from .base import Criterion, embedder_fingerprint, row_batching, sample_ids, table_digest

AGGREGATES = ("mean", "max", "topk_mean")

TARGET_OPTIONS = [
    Option(
        "target",
        None,
        "target set: a file in any reader format (or a table); required",
        type=(str, Path, pd.DataFrame, pa.Table),
    ),
    Option("target_field", "group", "column of the target set naming each row's group (missing: one group)", type=str),
]

EMBED_OPTIONS = [
    # type left open: besides a name, an encoder object (.encode, .dim, .fingerprint) is accepted
    Option("embedder", "default", "sentence-transformers name/path, 'default' (all-MiniLM-L6-v2) or lm:MODEL"),
    Option("layer", None, "lm: embedders only: hidden-state layer (-1 = last, 0 = token embeddings)", type=int),
    Option("pooling", None, "lm: embedders only: weighted_mean (RDS+, default), mean or last", (None, *POOLINGS)),
    Option("max_length", 512, "lm: embedders: tokens kept per text", min=1),
    Option("batch_size", 32, "texts per encoder batch", min=1),
    row_batching("batch_size texts per encoder call, length-sorted"),
    Option("cache_dir", None, "embedding cache folder (vectors keyed by text and model)", type=(str, Path)),
    Option("device", "auto", "encoder device: auto (cuda when visible), cpu, cuda, cuda:N", type=str),
]


# ------------------------------------------------------------------ target sets
class TargetSet:
    """The target rows, their texts and their groups (``names`` sorted, ``inv`` row -> group)."""

    def __init__(self, df: pd.DataFrame, field: str, who: str) -> None:
        self.df = df.reset_index(drop=True)
        self.texts = sample_texts(self.df)
        labels = [str(v) for v in self.df[field].tolist()] if field in self.df.columns else ["all"] * len(self.df)
        keep = np.array([bool(t.strip()) for t in self.texts], dtype=bool)
        if not keep.any():
            raise OptionError(f"{who}: option target: the target set has no row with text ({len(self.df)} rows)")
        self.texts = [t for t, k in zip(self.texts, keep) if k]
        labels = [lab for lab, k in zip(labels, keep) if k]
        names, inv = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
        self.names = [str(n) for n in names]
        self.inv = inv.astype(np.int64)

    def __len__(self) -> int:
        return len(self.texts)


def load_target(target: Any, field: str, who: str) -> TargetSet:
    """The target set of option ``target`` (a file read with :func:`thresher.io.read_samples` or a table)."""
    if target is None or (isinstance(target, str) and not target.strip()):
        raise OptionError(f"{who}: option target= (the target set file) is required")
    if isinstance(target, (str, Path)):
        p = Path(target).expanduser()
        if not p.exists():
            raise OptionError(f"{who}: option target: file {str(target)!r} does not exist")
        df = read_samples(p)
    else:
        df = as_pandas(target)
    if len(df) == 0:
        raise OptionError(f"{who}: option target: the target set is empty")
    return TargetSet(df, field, who)


def target_key(options: dict, who: str) -> str:
    if options.get("target") is None:
        raise OptionError(f"{who}: option target= (the target set file) is required")
    return table_digest(options["target"])


def group_columns(names: list[str]) -> list[str]:
    """``sim_<group>`` column suffixes: characters other than letters, digits, _, -, / become _; unique."""
    out: list[str] = []
    for n in names:
        c = "sim_" + re.sub(r"[^\w/-]", "_", n)
        while c in out:
            c += "_"
        out.append(c)
    return out


# ------------------------------------------------------------------ embeddings
def is_lm_spec(embedder: Any) -> bool:
    return isinstance(embedder, str) and embedder.startswith("lm:")


def make_encoder(o: dict, who: str) -> Any:
    """The encoder of options ``o`` (``lm:`` specs through :func:`thresher.embed.hidden.hidden_encoder`)."""
    emb = o["embedder"]
    if is_lm_spec(emb):
        layer = -1 if o["layer"] is None else o["layer"]
        return hidden_encoder(
            emb[3:] or "default",
            layer=layer,
            pooling=o["pooling"] or "weighted_mean",
            device=o["device"],
            max_length=o["max_length"],
        )
    check_lm_only(o, who)
    return get_embedder(emb, device=o["device"])


def check_lm_only(o: dict, who: str) -> None:
    for name in ("layer", "pooling"):
        if o.get(name) is not None and not is_lm_spec(o["embedder"]):
            raise OptionError(f"{who}: option {name} applies to lm:MODEL embedders only (embedder={o['embedder']!r})")


def embedder_key(o: dict, who: str) -> dict:
    """The embedding options that change vectors, with the embedder replaced by its fingerprint."""
    check_lm_only(o, who)
    out = {"embedder": embedder_fingerprint(o["embedder"])}
    if is_lm_spec(o["embedder"]):
        out.update(
            layer=-1 if o["layer"] is None else o["layer"],
            pooling=o["pooling"] or "weighted_mean",
            max_length=o["max_length"],
            hidden_version=HIDDEN_VERSION,
        )
    return out


def embed(encoder: Any, texts: list[str], o: dict) -> np.ndarray:
    """L2-normalised float32 embeddings, cached by text under ``cache_dir`` when set."""
    return embed_texts(texts, encoder, batch_size=encoder_batch(o), cache_dir=o["cache_dir"])


# ------------------------------------------------------------------ the math
def group_similarity(x: np.ndarray, t: np.ndarray, inv: np.ndarray, n_groups: int, how: str, topk: int) -> np.ndarray:
    """[N, G] similarity of unit rows ``x`` [N, d] to each group of unit target rows ``t`` [M, d]."""
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    tt = torch.from_numpy(np.ascontiguousarray(t, np.float32))
    if how == "mean":
        c = torch.zeros((n_groups, tt.shape[1]), dtype=torch.float32).index_add_(0, torch.from_numpy(inv), tt)
        c = c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (xt @ c.T).numpy()
    sims = xt @ tt.T  # [N, M]
    out = np.empty((len(x), n_groups), np.float32)
    for g in range(n_groups):
        s = sims[:, torch.from_numpy(np.flatnonzero(inv == g))]
        if how == "max":
            out[:, g] = s.max(dim=1).values.numpy()
        elif how == "topk_mean":
            out[:, g] = s.topk(min(topk, s.shape[1]), dim=1).values.mean(dim=1).numpy()
        else:
            raise ValueError(f"aggregate: expected one of {list(AGGREGATES)}, got {how!r}")
    return out


def group_frame(name: str, ids: list[str], per: np.ndarray, names: list[str], reasons: list[str]) -> pd.DataFrame:
    """Main column = max over groups; ``best`` and per-group columns when there are several groups."""
    n = len(ids)
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    main = per.max(axis=1).astype(np.float64) if per.shape[1] else np.full(n, np.nan)
    main[bad] = np.nan
    out: dict = {"id": ids, name: main}
    if len(names) > 1:
        best = np.asarray(names, dtype=object)[per.argmax(axis=1)] if n else np.zeros(0, object)
        best[bad] = ""
        out[f"{name}.best"] = best
        for g, col in enumerate(group_columns(names)):
            v = per[:, g].astype(np.float64)
            v[bad] = np.nan
            out[f"{name}.{col}"] = v
    out[f"{name}.reason"] = list(reasons)
    return pd.DataFrame(out)


# ------------------------------------------------------------------ scorer
@CRITERIA.register(
    "target_similarity",
    doc="similarity to a target set (RDS; RDS+ with embedder=lm:MODEL): cosine to the target mean, max "
    "or top-k mean over target rows, max over target groups; sentence embeddings or the LM's "
    "position-weighted mean-pooled hidden states",
    options=TARGET_OPTIONS
    + [
        Option("aggregate", "mean", "mean (cosine to the group mean), max or topk_mean", AGGREGATES),
        Option("topk", 5, "aggregate=topk_mean: target rows averaged", min=1),
    ]
    + EMBED_OPTIONS,
    direction="max",
    needs=("embedder",),
    components=("best", "sim_<group>"),
)
class TargetSimilarity(Criterion):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["aggregate"] != "topk_mean" and o["topk"] != CRITERIA.get(self.NAME).options["topk"].default:
            raise OptionError(f"{self.NAME}: option topk applies to aggregate=topk_mean only")
        self.target = load_target(o["target"], o["target_field"], self.NAME)
        self.encoder = make_encoder(o, self.NAME)
        self.target_emb = embed(self.encoder, self.target.texts, o)

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out.update(embedder_key(options, cls.NAME))
        out["target"] = target_key(options, cls.NAME)
        if options["aggregate"] != "topk_mean":
            out.pop("topk", None)
        return out

    def __call__(self, batch: Any) -> pd.DataFrame:
        df = as_pandas(batch)
        texts = sample_texts(df) if len(df) else []
        reasons = ["" if t.strip() else "empty text" for t in texts]
        x = embed(self.encoder, texts, self.options) if texts else np.zeros((0, self.target_emb.shape[1]), np.float32)
        t = self.target
        per = group_similarity(x, self.target_emb, t.inv, len(t.names), self.options["aggregate"], self.options["topk"])
        return group_frame(self.NAME, sample_ids(df), per, t.names, reasons)
