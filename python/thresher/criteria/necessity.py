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

A stopped call resumes: with ``checkpoint_dir`` set (a pipeline run sets it inside its score cache),
the call keeps each window of stage-1 ratings (the rating scorer's own windows, so the ratings are
those of one call), the seed's LoRA once trained, each block of :data:`GEN_BLOCK_BATCHES` generation
batches' answers and their ratings (:mod:`thresher.criteria.search_checkpoint`, saved about every
``checkpoint_s`` seconds and when the call raises). A call with the same pool, model and options
computes only what it does not find, with the results of an unbroken call.

Cost: one quality pass over the pool, one embedding pass, one LoRA fine-tune on the seed
(``epochs`` over ``seed_k`` rows), generation for every non-seed HQ row (``max_new_tokens``
decoding steps each) and a second quality pass over those rows.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import pandas as pd

from ..cluster import kcenter_greedy
from ..embed import embed_texts, get_embedder, sample_texts
from ..features.gradients import load_lora
from ..features.loader import windows
from ..frames import as_pandas
from ..models import shared_lm
from ..registry import CRITERIA, SELECTORS, Option
from ..render import SampleError, render_prompt
from ..train.warmup import load_warmup, lora_for_checkpoint, warmup_resuming
from .base import (
    MODEL_OPTIONS,
    Criterion,
    digest,
    embedder_fingerprint,
    model_fingerprint,
    sample_ids,
    single_turn,
)
from .judge import Rating
from .search_checkpoint import DEFAULT_EVERY_S, SEARCH_DIR, SearchCheckpoint, search_identity
from .tags import generate_replies

_TRAIN = ("epochs", "lr", "r", "alpha", "batch_size", "max_length", "template", "seed")
GEN_BLOCK_BATCHES = 4  # generation batches per checkpoint block
STAGES = ("quality", "answers", "rated")  # a checkpoint store each: <identity>-<stage>; the LoRA: <identity>-lora


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
        Option(
            "checkpoint_dir",
            None,
            "folder where a call keeps its finished stages' blocks (ratings, the seed's LoRA, answers), so a "
            "stopped call resumes from them (a pipeline run: <cache>/necessity/" + SEARCH_DIR + "; None: not kept)",
            type=(str, Path),
        ),
        Option(
            "checkpoint_s",
            None,
            "seconds between saves of the finished blocks (None: the run's --checkpoint-every, "
            f"else {DEFAULT_EVERY_S:g}; 0: never saved)",
            type=(int, float),
            min=0,
        ),
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

    def _quality_parts(self, parts: Iterable[pd.DataFrame]) -> Iterator[tuple[np.ndarray, list]]:
        """(ratings, reasons) of each part in order, through the rating scorer's stream: the next part is
        rendered and tokenised while the model rates the current one."""
        for r in self.rating.stream(parts):
            yield r["rating"].to_numpy(np.float64), r["rating.reason"].tolist()

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
        self._tuned: Optional[tuple] = None
        self._lora_dir: Optional[Path] = None
        if n:
            try:
                with self._kept(df) as stores:
                    self._stages(df, cols, reasons, stores)
            finally:  # the tuned copy of the model is not kept past the call; a later generate() trains
                self._tuned, self._lora_dir = None, None  # in a temporary folder
        out = pd.DataFrame({"id": sample_ids(df), self.NAME: cols.pop("")})
        for k, v in cols.items():
            out[f"{self.NAME}.{k}"] = v
        out[f"{self.NAME}.reason"] = reasons
        return out

    @contextlib.contextmanager
    def _kept(self, df: pd.DataFrame) -> Iterator[dict]:
        """The call's checkpoint stores, one per stage of :data:`STAGES` (none when ``checkpoint_dir`` is unset
        or ``checkpoint_s`` is 0), and the folder of the seed's LoRA: their identity is the criterion's key
        (models, options), the pool's rows and the device. Kept when the call raises, removed when it
        completes; ``run_info`` then says how many blocks came from them."""
        folder, every = self.options.get("checkpoint_dir"), self.options.get("checkpoint_s")
        every = DEFAULT_EVERY_S if every is None else float(every)
        self._info = {"resumed_blocks": 0}
        if folder is None or every <= 0:
            yield {}
            return
        ident = search_identity(call="necessity", key=self.cache_key(), pool=digest(df.to_dict("records"), 32),
                                device=str(self.lm.device))  # fmt: skip
        stores = {name: SearchCheckpoint(folder, f"{ident}-{name}", every) for name in STAGES}
        self._lora_dir = Path(folder) / f"{ident}-lora"
        try:
            yield stores
        except BaseException:
            for store in stores.values():
                store.keep()  # the blocks finished so far are kept for the next call
            raise
        shutil.rmtree(self._lora_dir, ignore_errors=True)
        for store in stores.values():
            store.clear()
        self._info["checkpoint_saves"] = sum(store.saved for store in stores.values())

    def run_info(self) -> dict:
        """The last call's checkpoint: blocks resumed (ratings, answers; the LoRA counts as one) and saves."""
        return {"criterion": self.NAME, **getattr(self, "_info", {})}

    def _resumed(self) -> None:
        self._info["resumed_blocks"] = self._info.get("resumed_blocks", 0) + 1

    def _blocks(self, store: Optional[SearchCheckpoint], n: int, size: int, compute: Callable) -> list:
        """Tuples of arrays for consecutive slices of ``size`` rows: a slice an earlier call kept in ``store``
        (named by its first row) is taken from it; ``compute(slices)`` yields the others' in order, each put
        in ``store`` as it comes."""
        sls = windows(n, max(1, size)) if n else []
        kept = {sl.start: None if store is None else store.get(sl.start) for sl in sls}
        ok = lambda sl: kept[sl.start] is not None and all(len(a) == sl.stop - sl.start for a in kept[sl.start])  # noqa: E731
        fresh = compute([sl for sl in sls if not ok(sl)])
        out = []
        for sl in sls:
            if ok(sl):
                self._resumed()
                out.append(kept[sl.start])
                continue
            got = next(fresh)
            if store is not None:
                store.put(sl.start, *got)
            out.append(got)
        return out

    def _rated(self, df: pd.DataFrame, store: Optional[SearchCheckpoint]) -> tuple[np.ndarray, list]:
        """:meth:`_quality_parts` of ``df`` window by window (the rating scorer's windows: the ratings of one
        call), the windows an earlier call kept taken from ``store``."""

        def rate(sls: list) -> Iterator[tuple]:
            for q, why in self._quality_parts(df.iloc[sl] for sl in sls):
                yield np.asarray(q, np.float64), np.asarray([str(w) for w in why], dtype=str)

        got = self._blocks(store, len(df), self.rating.chunk_rows or len(df), rate)
        q = np.concatenate([g[0] for g in got]) if got else np.zeros(0)
        return q, [str(w) for g in got for w in g[1]]

    def _stages(self, df: pd.DataFrame, cols: dict, reasons: list, stores: Optional[dict] = None) -> None:
        o, stores = self.options, stores or {}
        q, why = self._rated(df, stores.get("quality"))
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
            self._answer(df, seed, rest, cols, reasons, stores)

    def _answer(
        self, df: pd.DataFrame, seed: np.ndarray, rest: np.ndarray, cols: dict, reasons: list, stores: Any = None
    ) -> None:
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
        stores = stores or {}
        gen = lambda sls: (
            (np.asarray([str(a) for a in self.generate(df.iloc[seed], prompts[sl])], dtype=str),)  # noqa: E731
            for sl in sls
        )
        blocks = self._blocks(stores.get("answers"), len(prompts), o["gen_batch_size"] * GEN_BLOCK_BATCHES, gen)
        answers = [str(a) for g in blocks for a in g[0]]
        asked = df.iloc[where].copy()
        asked["output"] = answers
        aq, why = self._rated(asked, stores.get("rated"))
        for j, i in enumerate(where):
            cols["answer"][i] = answers[j]
            if not answers[j].strip():
                cols[""][i] = -np.inf
            elif np.isnan(aq[j]):
                reasons[i] = f"answer not rated: {why[j]}"
            else:
                cols[""][i] = aq[j]

    def generate(self, seed_rows: pd.DataFrame, prompts: list) -> list:
        """Greedy answers to ``prompts`` of the model tuned on ``seed_rows`` (:meth:`tuned`)."""
        o = self.options
        return generate_replies(
            self.tuned(seed_rows), self.lm.tokenizer, prompts, max_new_tokens=o["max_new_tokens"],
            batch_size=o["gen_batch_size"],
        )  # fmt: skip

    def tuned(self, seed_rows: pd.DataFrame) -> Any:
        """The model with LoRA trained on ``seed_rows`` (``warmup_lora`` on all of them), trained once per
        seed set; with a checkpoint store, a LoRA an earlier call finished (its ``<identity>-lora`` folder) is
        loaded instead of trained, and one it stopped part-way goes on from its last saved step."""
        key = digest(seed_rows.to_dict("records"), 16)
        if getattr(self, "_tuned", None) is not None and self._tuned[0] == key:
            return self._tuned[1]
        kept = getattr(self, "_lora_dir", None)
        with tempfile.TemporaryDirectory(prefix="thresher-mods-") as tmp:
            out = Path(kept) if kept is not None else Path(tmp) / "seed"
            w = _finished_warmup(out, key)
            if w is None:
                w = self._train_seed(seed_rows, out, kept is not None)
                (out / "seed-rows.txt").write_text(key)
            else:
                self._resumed()
            pm = lora_for_checkpoint(self.lm, w)
            load_lora(pm, w.checkpoints[-1] / "adapter.safetensors")
        pm.eval()
        self._tuned = (key, pm)
        return pm

    def _train_seed(self, seed_rows: pd.DataFrame, out: Path, kept: bool) -> Any:
        """``warmup_lora`` on the seed rows into ``out``: a warm-up an earlier call stopped there on the same
        rows goes on from its last saved step (``run_info``'s ``resumed_warmup_step``), any other is removed."""
        o = self.options
        every = (DEFAULT_EVERY_S if o.get("checkpoint_s") is None else float(o["checkpoint_s"])) if kept else 0.0
        # a finished warm-up here was on other seed rows (or its seed-rows.txt was lost): trained again
        w = warmup_resuming(seed_rows, self.lm, out, fraction=1.0, log=_quiet, checkpoint_s=every,
                            **{k: o[k] for k in _TRAIN})  # fmt: skip
        if w.resumed_step is not None:
            self._info["resumed_warmup_step"] = w.resumed_step
        return w


def _quiet(_msg: str) -> None:
    """The warm-up's progress lines are not the pipeline's."""


def _finished_warmup(out: Path, key: str) -> Any:
    """The warm-up in ``out`` when an earlier call finished it on the seed rows ``key``, else None."""
    try:
        if (out / "seed-rows.txt").read_text() != key:
            return None
        return load_warmup(out)
    except (OSError, ValueError):
        return None
