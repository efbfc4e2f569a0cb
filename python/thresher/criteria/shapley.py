"""SHED: Shapley values of cluster proxies, propagated to their clusters (criterion ``shed``).

1. **Clusters.** The pool is embedded (``embedder``) and clustered with k-means
   (:func:`thresher.cluster.kmeans`, ``n_clusters``, capped at the pool size); each cluster's
   **proxy** is its member closest to the centroid (ties by position).
2. **Shapley values.** :func:`monte_carlo_shapley` estimates each proxy's Shapley value for a
   value function v over sets of proxies by Monte-Carlo permutations: for each of
   ``permutations`` seeded random orders, the proxies are added ``group_size`` at a time and
   every member of a group gets the group's marginal contribution v(S + G) - v(S). With
   ``group_size=1`` and ``aggregate="mean"`` this is the unbiased permutation estimator of the
   Shapley value. The reference code removes 60 proxies at a time (each gets the group's
   marginal contribution) and **sums** over its iterations: ``group_size=60,
   aggregate="sum"``.
3. **Value function** (thresher's cheap proxy, as the paper allows a small proxy model):
   v(S) = L_val(base) - L_val(base + LoRA trained on S), the drop of the proxy LM's mean
   answer-token loss on a validation set after ``epochs`` epochs of LoRA on S
   (:func:`thresher.train.warmup.warmup_lora`); v(empty) = 0. The paper measures the
   accuracy of a fine-tuned LLaMA-7B on a task's dev set. ``validation``: a file of samples
   (the paper: the target task's dev set); without one, ``validation_size`` seeded random pool
   rows serve.
4. Every row gets its cluster proxy's value (main column); components ``shed.cluster`` and
   ``shed.proxy`` (1 for the proxy rows). QOCS / QWCS sampling: :mod:`thresher.selectors.shed`.

A stopped call resumes: with ``checkpoint_dir`` set (a pipeline run sets it inside its score cache),
each coalition's value is kept with the coalition (the permutations are seeded, so a call evaluates
the same coalitions in the same order), saved about every ``checkpoint_s`` seconds and when the call
raises (:mod:`thresher.criteria.search_checkpoint`); a call with the same model, options, proxies and
validation rows trains only the coalitions not kept, and gives the Shapley values of an unbroken call.

Cost: ``permutations * ceil(n_clusters / group_size)`` LoRA fine-tunes of the proxy model,
each on at most ``n_clusters`` rows, plus one validation pass each. The reference setting
(3000 proxies, groups of 60, 19 iterations, LLaMA-7B) is ~950 fine-tunes.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..cluster import kmeans
from ..embed import embed_texts, get_embedder, sample_texts
from ..features.gradients import encode_rows, load_lora, pad_encoded
from ..frames import as_pandas
from ..io import read_samples
from ..models import shared_lm
from ..registry import CRITERIA, Option
from ..train.warmup import lora_for_checkpoint, warmup_resuming
from .base import (
    MODEL_OPTIONS,
    Criterion,
    digest,
    embedder_fingerprint,
    model_fingerprint,
    sample_ids,
    table_digest,
)
from .search_checkpoint import DEFAULT_EVERY_S, SEARCH_DIR, SearchCheckpoint, search_identity


# ------------------------------------------------------------------ Monte-Carlo Shapley
def monte_carlo_shapley(
    n: int,
    value: Callable[[tuple], float],
    *,
    permutations: int,
    group_size: int = 1,
    seed: int = 0,
    aggregate: str = "mean",
) -> np.ndarray:
    """Permutation estimate of the Shapley values of players ``0..n-1`` for ``value`` (a function of a
    sorted tuple of players; memoised here). See the module doc for ``group_size`` and ``aggregate``."""
    if n < 0 or permutations < 1 or group_size < 1 or aggregate not in ("mean", "sum"):
        raise ValueError(f"shapley: bad arguments n={n} permutations={permutations} group_size={group_size}")
    memo: dict = {}

    def v(s: frozenset) -> float:
        key = tuple(sorted(s))
        if key not in memo:
            memo[key] = float(value(key))
        return memo[key]

    rng = np.random.default_rng(seed)
    total = np.zeros(n, dtype=np.float64)
    for _ in range(permutations):
        order = rng.permutation(n).tolist()
        members: frozenset = frozenset()
        prev = v(members)
        for s in range(0, n, group_size):
            grp = order[s : s + group_size]
            members = members | frozenset(grp)
            cur = v(members)
            total[grp] += cur - prev
            prev = cur
    return total / permutations if aggregate == "mean" else total


def exact_shapley(n: int, value: Callable[[tuple], float]) -> np.ndarray:
    """Exact Shapley values by the subset formula (2^n subsets): phi_i = sum_S |S|!(n-|S|-1)!/n! (v(S+i) - v(S))."""
    vals = {m: float(value(tuple(i for i in range(n) if m >> i & 1))) for m in range(1 << n)}
    phi = np.zeros(n)
    for i in range(n):
        for m in range(1 << n):
            if m >> i & 1:
                continue
            s = bin(m).count("1")
            w = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
            phi[i] += w * (vals[m | 1 << i] - vals[m])
    return phi


# ------------------------------------------------------------------ proxies
def cluster_proxies(emb: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [N], proxy position per cluster [C]): k-means, then the member closest to each centroid.
    Empty clusters are dropped and labels renumbered 0..C-1 in order of their proxy's position."""
    cent, lab = kmeans(emb, min(int(n_clusters), len(emb)), seed=seed)
    proxies = []
    for c in range(len(cent)):
        mem = np.flatnonzero(lab == c)
        if len(mem):
            d = ((emb[mem].astype(np.float64) - cent[c].astype(np.float64)) ** 2).sum(1)
            proxies.append(int(mem[np.lexsort((mem, d))[0]]))
    proxies.sort()
    remap = {int(lab[p]): j for j, p in enumerate(proxies)}
    return np.asarray([remap[int(x)] for x in lab], dtype=np.int64), np.asarray(proxies, dtype=np.int64)


# ------------------------------------------------------------------ value function
def validation_loss(model: Any, tokenizer: Any, enc: list, batch_size: int = 8) -> float:
    """Mean over samples of the mean answer-token cross-entropy."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = next(model.parameters()).device
    losses = []
    with torch.no_grad():
        for s in range(0, len(enc), batch_size):
            ids, att, score = pad_encoded(enc[s : s + batch_size], pad, dev)
            logits = model(input_ids=ids, attention_mask=att).logits[:, :-1].float()
            ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            m = score[:, 1:].to(ce.dtype)
            losses.extend((ce * m).sum(1) / m.sum(1).clamp(min=1))
    return float(torch.stack(losses).mean())


def finetune_value(
    lm: Any,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    keep: Optional[Path] = None,
    checkpoint_s: float = 0.0,
    resumed: Optional[dict] = None,
    **train: Any,
) -> Callable:
    """v(S) = validation loss of ``lm`` minus that after LoRA training on rows S of ``train_rows``. With
    ``keep``, each fine-tune runs in that folder and saves its progress every ``checkpoint_s`` seconds, so one a
    stopped call left part-way goes on from its last saved step (:func:`thresher.train.warmup.warmup_resuming`);
    the folder is emptied after each value, and ``resumed['finetune_step']`` says where such a fine-tune went on."""
    enc = [
        e
        for e in encode_rows(val_rows, lm.tokenizer, template=train["template"], max_length=train["max_length"])
        if not e.reason
    ]
    if not enc:
        raise ValueError("shed: no usable validation sample (all empty or truncated away)")
    base = validation_loss(lm.model, lm.tokenizer, enc)

    def value(players: tuple) -> float:
        if not players:
            return 0.0
        with tempfile.TemporaryDirectory(prefix="thresher-shed-") as tmp:
            out = keep if keep is not None else Path(tmp) / "run"
            w = warmup_resuming(train_rows.iloc[list(players)], lm, out, fraction=1.0, log=lambda _m: None,
                                checkpoint_s=checkpoint_s if keep is not None else 0, **train)  # fmt: skip
            if w.resumed_step is not None and resumed is not None:
                resumed["finetune_step"] = w.resumed_step
            pm = lora_for_checkpoint(lm, w)
            load_lora(pm, w.checkpoints[-1] / "adapter.safetensors")
            pm.eval()
            val = base - validation_loss(pm, lm.tokenizer, enc)
            if keep is not None:
                shutil.rmtree(keep, ignore_errors=True)
            return val

    return value


def resumable_value(value: Callable[[tuple], float], store: SearchCheckpoint, counts: dict) -> Callable:
    """``value`` whose k-th evaluation in this call is taken from ``store`` when an earlier call kept the
    same coalition there, else computed and put there (``counts``: ``resumed`` and ``evaluated``)."""
    calls = itertools.count()

    def wrapped(players: tuple) -> float:
        k, coalition = next(calls), np.asarray(players, np.int64)
        got = store.get(k)
        if got is not None and len(got) == 2 and np.array_equal(got[1], coalition):
            counts["resumed"] += 1
            return float(got[0][0])
        val = float(value(players))
        counts["evaluated"] += 1
        store.put(k, np.asarray([val], np.float64), coalition)
        return val

    return wrapped


# ------------------------------------------------------------------ the criterion
_TRAIN = ("epochs", "lr", "r", "alpha", "batch_size", "max_length", "template", "seed")


@CRITERIA.register(
    "shed",
    doc="SHED: k-means clusters on embeddings, the proxy closest to each centroid, Monte-Carlo Shapley value "
    "of each proxy (value = drop of the proxy LM's validation loss after LoRA on a set of proxies), "
    "propagated to its cluster. Select with qocs or qwcs.",
    options=list(MODEL_OPTIONS)
    + [
        Option("embedder", "default", "sentence embedder for the clusters"),
        Option("n_clusters", 3000, "k-means clusters (capped at the pool size; the reference: 3000)", min=1),
        Option("permutations", 10, "Monte-Carlo permutations", min=1),
        Option("group_size", 1, "proxies added per step (the reference: 60)", min=1),
        Option(
            "aggregate", "mean", "mean (Shapley estimate) or sum (the reference) over permutations", ("mean", "sum")
        ),
        Option("validation", None, "validation samples (file); default: validation_size random pool rows", type=str),
        Option("validation_size", 32, "pool rows used for validation when no file is given", min=1),
        Option("epochs", 1, "LoRA epochs per coalition", min=1),
        Option("lr", 1e-4, "LoRA learning rate", min=0, min_exclusive=True),
        Option("r", 8, "LoRA rank", min=1),
        Option("alpha", 16.0, "LoRA alpha", min=0, min_exclusive=True),
        Option("batch_size", 4, "training batch size", min=1),
        Option("max_length", 512, "max tokens per sample", min=1),
        Option("template", "alpaca", "prompt template", ("alpaca", "plain", "wiz", "chat")),
        Option("seed", 0, "seed of k-means, permutations, LoRA init and the validation rows", min=0),
        Option(
            "checkpoint_dir",
            None,
            "folder where a call keeps its coalitions' values, so a stopped call resumes from them "
            "(a pipeline run: <cache>/shed/" + SEARCH_DIR + "; None: not kept)",
            type=(str, Path),
        ),
        Option(
            "checkpoint_s",
            None,
            "seconds between saves of the coalitions' values (None: the run's --checkpoint-every, "
            f"else {DEFAULT_EVERY_S:g}; 0: never saved)",
            type=(int, float),
            min=0,
        ),
    ],
    direction="max",
    needs=("model", "embedder"),
    scope="pool",
    components=("cluster", "proxy"),
)
class Shed(Criterion):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.lm = shared_lm(o["model"], dtype=o["dtype"], device=o["device"])
        self.encoder = get_embedder(o["embedder"])

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out["model"] = model_fingerprint(options["model"])
        out["embedder"] = embedder_fingerprint(options["embedder"])
        if options["validation"] is not None:
            out["validation"] = table_digest(options["validation"])
        return out

    def _validation(self, df: pd.DataFrame) -> pd.DataFrame:
        o = self.options
        if o["validation"] is not None:
            return as_pandas(read_samples(o["validation"]))
        rng = np.random.default_rng(o["seed"])
        n = min(o["validation_size"], len(df))
        return df.iloc[np.sort(rng.choice(len(df), size=n, replace=False))]

    def __call__(self, batch: Any) -> pd.DataFrame:
        df, o = as_pandas(batch).reset_index(drop=True), self.options
        ids = sample_ids(df)
        if len(df) == 0:
            return shed_frame(self.NAME, ids, np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
        emb = embed_texts(sample_texts(df), self.encoder)
        labels, proxies = cluster_proxies(emb, o["n_clusters"], o["seed"])
        proxy_rows, val_rows = df.iloc[proxies].reset_index(drop=True), self._validation(df)
        store = self._checkpoint(proxy_rows, val_rows)
        self._lora_dir = None if store is None else store.dir.with_name(store.dir.name + "-lora")
        self._resumed_ft: dict = {}
        try:
            phi = self._shapley(self.value_function(proxy_rows, val_rows), store, len(proxies))
        finally:
            self._lora_dir = None  # a later value_function() outside a call trains in a temporary folder
        return shed_frame(self.NAME, ids, phi, labels, proxies)

    def run_info(self) -> dict:
        """The last call's coalitions: how many were evaluated, and how many came from its checkpoint."""
        return {"criterion": self.NAME, **getattr(self, "_info", {})}

    def _checkpoint(self, proxy_rows: pd.DataFrame, val_rows: pd.DataFrame) -> Optional[SearchCheckpoint]:
        """The call's store of coalition values when ``checkpoint_dir`` is set and ``checkpoint_s`` is not 0;
        its identity: the criterion's key (model, options), the proxy and validation rows, the device."""
        folder, every = self.options.get("checkpoint_dir"), self.options.get("checkpoint_s")
        every = DEFAULT_EVERY_S if every is None else float(every)
        if folder is None or every <= 0:
            return None
        rows = [digest(r.to_dict("records"), 32) for r in (proxy_rows, val_rows)]
        ident = search_identity(call="shed", key=self.cache_key(), proxies=rows[0], validation=rows[1],
                                device=str(self.lm.device))  # fmt: skip
        return SearchCheckpoint(folder, ident, every)

    def _shapley(self, value: Callable, store: Optional[SearchCheckpoint], n: int) -> np.ndarray:
        o, counts = self.options, {"resumed": 0, "evaluated": 0}
        try:
            phi = monte_carlo_shapley(
                n,
                value if store is None else resumable_value(value, store, counts),
                permutations=o["permutations"],
                group_size=o["group_size"],
                seed=o["seed"],
                aggregate=o["aggregate"],
            )
        except BaseException:
            if store is not None:
                store.keep()  # the coalitions finished so far are kept for the next call
            raise
        self._info = {"proxies": n}
        ft = getattr(self, "_resumed_ft", {})
        if "finetune_step" in ft:
            self._info["resumed_finetune_step"] = ft["finetune_step"]
        if store is not None:
            self._info.update(checkpoint_saves=store.saved, resumed_coalitions=counts["resumed"],
                              coalitions=counts["resumed"] + counts["evaluated"])  # fmt: skip
            store.clear()
            shutil.rmtree(store.dir.with_name(store.dir.name + "-lora"), ignore_errors=True)
        return phi

    def value_function(self, proxy_rows: pd.DataFrame, val_rows: pd.DataFrame) -> Callable:
        """v(S) over ``proxy_rows``; a coalition's fine-tune stopped part-way goes on from its last saved step
        when the call keeps a checkpoint (``self._lora_dir``)."""
        every = self.options.get("checkpoint_s")
        every = DEFAULT_EVERY_S if every is None else float(every)
        return finetune_value(self.lm, proxy_rows, val_rows, keep=getattr(self, "_lora_dir", None),
                              resumed=getattr(self, "_resumed_ft", None),
                              checkpoint_s=every, **{k: self.options[k] for k in _TRAIN})  # fmt: skip


def shed_frame(name: str, ids: Sequence, phi: np.ndarray, labels: np.ndarray, proxies: np.ndarray) -> pd.DataFrame:
    is_proxy = np.zeros(len(ids), dtype=np.float64)
    is_proxy[proxies] = 1.0
    return pd.DataFrame(
        {
            "id": list(ids),
            name: phi[labels] if len(ids) else np.zeros(0),
            f"{name}.cluster": labels.astype(np.float64),
            f"{name}.proxy": is_proxy,
            f"{name}.reason": [""] * len(ids),
        }
    )


__all__ = ["monte_carlo_shapley", "exact_shapley", "cluster_proxies", "finetune_value", "validation_loss", "Shed"]
