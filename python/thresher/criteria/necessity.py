"""MoDS stage 3, necessity (criterion ``necessity``): what a seed-tuned model still answers badly.

Over the whole pool (``scope="pool"``):

1. **quality**: the ``rating`` criterion (``quality_model``, its default prompt) scores every
   (instruction, input, output); rows the ``threshold`` selector keeps (``quality_mode`` /
   ``quality_value``) are the high-quality set HQ, and the lowest quality among them is the bar;
2. **seed**: greedy k-center (:func:`thresher.cluster.kcenter_greedy`, from the best-rated HQ row)
   over the HQ rows' embeddings picks ``seed_k`` rows;
3. **necessity**: LoRA is trained on the seed rows (:func:`thresher.train.warmup.warmup_lora`,
   ``epochs``/``lr``/``r``/``alpha``), the tuned ``model`` answers every other HQ row's prompt
   (greedy, ``max_new_tokens``), and the same quality scorer rates (instruction, input,
   generated answer).

Main column: the rating of the seed model's answer (lower = more necessary; an empty answer is
``-inf``); NaN with a reason for seed rows and rows below the quality bar. Components:
``necessity.quality`` (stage-1 quality), ``necessity.seed`` (k-center pick order of the seed
rows), ``necessity.threshold`` (the stage-1 bar, the same on every row), ``necessity.answer``
(the generated answer). The ``necessity`` selector (:mod:`thresher.selectors.necessity`) keeps
the seed and adds a k-center set of the rows whose answer falls below the bar.

Cost: one quality pass over the pool, one embedding pass, one LoRA fine-tune on the seed
(``epochs`` over ``seed_k`` rows), generation for every non-seed HQ row (``max_new_tokens``
decoding steps each) and a second quality pass over those rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cluster import kcenter_greedy
from ..embed import embed_texts, get_embedder, sample_texts
from ..features.gradients import load_lora
from ..frames import as_pandas
from ..models import shared_lm
from ..registry import CRITERIA, SELECTORS, Option
from ..render import SampleError, render_prompt
from ..train.warmup import lora_for_checkpoint, warmup_lora
from .base import MODEL_OPTIONS, Criterion, embedder_fingerprint, model_fingerprint, sample_ids, single_turn
from .judge import Rating
from .tags import generate_replies

_TRAIN = ("epochs", "lr", "r", "alpha", "batch_size", "max_length", "template", "seed")


@CRITERIA.register(
    "necessity",
    doc="MoDS stage 3: quality threshold and k-center seed over the pool, LoRA on the seed, then the quality "
    "of the seed model's own answer to every other high-quality row (lower = more necessary).",
    options=list(MODEL_OPTIONS)
    + [
        Option("quality_model", "default", "quality scorer (the rating criterion's model)"),
        Option("quality_mode", "quantile", "stage-1 threshold mode", ("quantile", "absolute", "knee")),
        Option("quality_value", 0.5, "stage-1 quantile or absolute quality bar", type=float, nullable=True),
        Option("embedder", "default", "sentence embedder for the k-center seed"),
        Option("seed_k", 1000, "seed-set size (the paper: 1000)", min=1),
        Option("epochs", 3, "LoRA epochs on the seed", min=1),
        Option("lr", 2e-4, "LoRA learning rate", min=0, min_exclusive=True),
        Option("r", 8, "LoRA rank", min=1),
        Option("alpha", 16.0, "LoRA alpha", min=0, min_exclusive=True),
        Option("batch_size", 4, "training batch size", min=1),
        Option("max_length", 512, "max tokens per training sample", min=1),
        Option("template", "alpaca", "prompt template of training and generation", ("alpaca", "plain", "wiz")),
        Option("seed", 0, "LoRA init and data-order seed", min=0),
        Option("max_new_tokens", 256, "generation budget per answer (greedy)", min=1),
        Option("gen_batch_size", 8, "prompts per generation batch", min=1),
    ],
    direction="min",
    needs=("model", "embedder"),
    scope="pool",
    components=("quality", "seed", "threshold", "answer"),
)
class Necessity(Criterion):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.lm = shared_lm(o["model"], dtype=o["dtype"], device=o["device"])
        self.rating = Rating(model=o["quality_model"], dtype=o["dtype"], device=o["device"])
        self.encoder = get_embedder(o["embedder"])

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out["model"] = model_fingerprint(options["model"])
        out["quality_model"] = model_fingerprint(options["quality_model"])
        out["embedder"] = embedder_fingerprint(options["embedder"])
        return out

    def _quality(self, df: pd.DataFrame) -> tuple[np.ndarray, list]:
        r = self.rating(df)
        return r["rating"].to_numpy(np.float64), r["rating.reason"].tolist()

    def __call__(self, batch: Any) -> pd.DataFrame:
        df = as_pandas(batch).reset_index(drop=True)
        n = len(df)
        cols = {
            "": np.full(n, np.nan),
            "quality": np.full(n, np.nan),
            "seed": np.full(n, np.nan),
            "threshold": np.full(n, np.nan),
            "answer": [""] * n,
        }
        reasons = [""] * n
        if n:
            self._stages(df, cols, reasons)
        out = pd.DataFrame({"id": sample_ids(df), self.NAME: cols.pop("")})
        for k, v in cols.items():
            out[f"{self.NAME}.{k}"] = v
        out[f"{self.NAME}.reason"] = reasons
        return out

    def _stages(self, df: pd.DataFrame, cols: dict, reasons: list) -> None:
        o = self.options
        q, why = self._quality(df)
        passed = SELECTORS.get("threshold").obj(
            pd.DataFrame({"quality": q}),
            len(q),
            criterion="quality",
            direction="max",
            mode=o["quality_mode"],
            value=o["quality_value"],
        )
        mask = np.zeros(len(q), dtype=bool)
        mask[passed] = True
        hq = np.flatnonzero(mask)
        cols["quality"], cols["threshold"][:] = q, (q[hq].min() if len(hq) else np.nan)
        for i in np.flatnonzero(~mask):
            reasons[i] = why[i] or "below the quality threshold"
        if not len(hq):
            return
        emb = embed_texts(sample_texts(df.iloc[hq]), self.encoder)
        first = int(np.lexsort((hq, -q[hq]))[0])  # the best-rated HQ row, as the kcenter selector starts
        seed = hq[kcenter_greedy(emb, min(o["seed_k"], len(hq)), first=first)]
        cols["seed"][seed] = np.arange(len(seed), dtype=np.float64)
        for i in seed:
            reasons[i] = "in the seed set"
        rest = np.setdiff1d(hq, seed)
        if len(rest):
            self._answer(df, seed, rest, cols, reasons)

    def _answer(self, df: pd.DataFrame, seed: np.ndarray, rest: np.ndarray, cols: dict, reasons: list) -> None:
        """Tune on the seed, answer the other HQ rows, rate the answers."""
        o, tok = self.options, self.lm.tokenizer
        prompts, where = [], []
        for i in rest:
            row = df.iloc[int(i)].to_dict()
            try:
                ins, inp, _ = single_turn(row, str(row.get("id", i)), self.NAME)
            except SampleError as exc:
                reasons[i] = str(exc)
                continue
            prompts.append(render_prompt(ins, inp, o["template"], tok))
            where.append(int(i))
        if not where:
            return
        answers = self.generate(df.iloc[seed], prompts)
        asked = df.iloc[where].copy()
        asked["output"] = answers
        aq, why = self._quality(asked)
        for j, i in enumerate(where):
            cols["answer"][i] = answers[j]
            if not answers[j].strip():
                cols[""][i] = -np.inf
            elif np.isnan(aq[j]):
                reasons[i] = f"answer not rated: {why[j]}"
            else:
                cols[""][i] = aq[j]

    def generate(self, seed_rows: pd.DataFrame, prompts: list) -> list:
        """LoRA on ``seed_rows`` (``warmup_lora`` on all of them), then greedy answers to ``prompts``."""
        o = self.options
        with tempfile.TemporaryDirectory(prefix="thresher-mods-") as tmp:
            w = warmup_lora(
                seed_rows, self.lm, Path(tmp) / "seed", fraction=1.0, log=lambda _m: None, **{k: o[k] for k in _TRAIN}
            )
            pm = lora_for_checkpoint(self.lm, w)
            load_lora(pm, w.checkpoints[-1] / "adapter.safetensors")
        pm.eval()
        return generate_replies(
            pm, self.lm.tokenizer, prompts, max_new_tokens=o["max_new_tokens"], batch_size=o["gen_batch_size"]
        )
