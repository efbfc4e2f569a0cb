"""``target_classifier``: learn what sets the target set apart from the pool.

Similarity to a target set's mean confuses sibling tasks that share their inputs and differ
in the question asked (BIG-bench families such as ``elementary_math_qa/*``). As quality
classifiers do, this criterion trains, for each target group g, an L2-regularised logistic
regression that separates

* positives: the target rows of g;
* negatives: ``negatives`` rows drawn uniformly without replacement from the pool
  (numpy PCG64 seeded with ``seed``, over the pool's rows in order; rows whose text is a
  target text or empty are not drawn) and, with ``contrast_groups``, the target rows of
  the other groups;

with both classes weighted to the same total (16 positives count as much as 1,000
negatives), and scores each row by the classifier's log-odds w.x + b; the score is the
max over groups (per-group log-odds in ``target_classifier.sim_<group>``).

Features (``features``): ``ngrams`` = DSIR's hashed unigram+bigram counts
(:class:`thresher.criteria.dsir.NgramCounts`) as log(1 + count), each row scaled to unit
norm; ``embedding`` = the L2-normalised embeddings of ``embedder`` (sentence-transformers
or ``lm:MODEL`` hidden states, as :mod:`thresher.criteria.target`); ``both`` = the two
side by side. Training: full-batch L-BFGS (torch, strong-Wolfe line search, ``steps``
iterations at most) from zero weights, loss = class-weighted mean logistic loss
+ l2/2 ||w||^2 (the bias is not penalised), on one thread: multi-threaded matrix-vector products
round differently with the thread count, and the fit amplifies that (up to 1.6% of a log-odds
between 1 and 2 threads), so the scores would depend on the machine and the engine.

The negatives come from the pool, so the criterion is pool-scoped (``scope="pool"``):
``fit(pool)`` trains on that pool, and a batch scored without ``fit`` is its own pool.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..embed import sample_texts
from ..errors import OptionError
from ..frames import as_pandas
from ..ops.threads import one_thread
from ..registry import CRITERIA, Option
from .base import Criterion, digest, sample_ids
from .dsir import NGRAM_OPTIONS, NgramCounts
from .target import (
    EMBED_OPTIONS,
    TARGET_OPTIONS,
    embed,
    embedder_key,
    group_frame,
    load_target,
    make_encoder,
    target_key,
)

FEATURES = ("ngrams", "embedding", "both")
_EMBED_ONLY = ("embedder", "layer", "pooling", "max_length")
_NGRAM_ONLY = ("buckets", "ngrams")


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float, steps: int) -> tuple[np.ndarray, float]:
    """(w, b) of a class-balanced L2-regularised logistic regression (see the module doc)."""
    X = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    Y = torch.from_numpy(np.asarray(y, np.float32))
    n_pos = float(Y.sum())
    n_neg = float(len(Y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"fit_logistic: need both classes, got {n_pos:.0f} positives and {n_neg:.0f} negatives")
    sw = torch.where(Y > 0, torch.tensor(0.5 / n_pos), torch.tensor(0.5 / n_neg))
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (sw * F.binary_cross_entropy_with_logits(X @ w + b, Y, reduction="none")).sum()
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), one_thread():
        opt.step(closure)
    return w.detach().numpy().astype(np.float64), float(b.detach()[0])


class Features:
    """The features of one table: embeddings [n, d] and/or n-gram counts."""

    def __init__(self, emb: Optional[np.ndarray], ng: Optional[NgramCounts]) -> None:
        self.emb, self.ng = emb, ng
        self.tf = ng.tf_values() if ng is not None else None

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), D] dense features of ``rows``."""
        parts = []
        if self.emb is not None:
            parts.append(self.emb[rows].astype(np.float32))
        if self.ng is not None:
            parts.append(self.ng.dense_tf(rows))
        return np.concatenate(parts, axis=1)

    def score(self, w: np.ndarray, b: float) -> np.ndarray:
        """[n] w.x + b for every row (the n-gram part through the sparse counts)."""
        out = b
        d = 0
        if self.emb is not None:
            d = self.emb.shape[1]
            out = out + self.emb.astype(np.float64) @ w[:d]
        if self.ng is not None:
            out = out + self.ng.dot(w[d:], values=self.tf)
        return np.asarray(out, np.float64)


@CRITERIA.register(
    "target_classifier",
    doc="log-odds of a logistic regression trained to tell the target set from a seeded pool sample "
    "(hashed n-grams, embeddings or LM hidden states; one classifier per target group, max over groups)",
    options=TARGET_OPTIONS
    + [
        Option("features", "ngrams", "ngrams (DSIR's hashed n-grams), embedding, or both", FEATURES),
        Option("negatives", 1000, "pool rows drawn (seeded) as the negative class", min=1),
        Option("contrast_groups", True, "the other target groups' rows are negatives too"),
        Option("l2", 1e-3, "L2 penalty on the weights", min=0),
        Option("steps", 200, "L-BFGS iterations at most", min=1),
        Option("seed", 0, "seed of the negative sample"),
    ]
    + NGRAM_OPTIONS
    + EMBED_OPTIONS,
    direction="max",
    needs=("embedder",),
    scope="pool",
    components=("best", "sim_<group>"),
)
class TargetClassifier(Criterion):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        _check_feature_options(o, self.NAME)
        self.target = load_target(o["target"], o["target_field"], self.NAME)
        self.encoder = make_encoder(o, self.NAME) if o["features"] != "ngrams" else None
        self.target_feat = self.features(self.target.texts)
        self._model: Optional[list[tuple[np.ndarray, float]]] = None
        self._pool_digest = ""

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out["target"] = target_key(options, cls.NAME)
        for k in _EMBED_ONLY if options["features"] == "ngrams" else ():
            out.pop(k, None)
        for k in _NGRAM_ONLY if options["features"] == "embedding" else ():
            out.pop(k, None)
        if options["features"] != "ngrams":
            out.update(embedder_key(options, cls.NAME))
        return out

    def cache_key(self) -> str:
        key = super().cache_key()
        return key + ("-pool" + self._pool_digest if self._pool_digest else "")

    def features(self, texts: list[str]) -> Features:
        o = self.options
        emb = embed(self.encoder, texts, o) if self.encoder is not None else None
        ng = NgramCounts.of(texts, o["buckets"], o["ngrams"]) if o["features"] != "embedding" else None
        return Features(emb, ng)

    def negative_rows(self, texts: list[str]) -> np.ndarray:
        """The seeded sample of pool positions used as negatives (see the module doc)."""
        targets = set(self.target.texts)
        ok = np.array([bool(t.strip()) and t not in targets for t in texts], dtype=bool)
        cand = np.flatnonzero(ok)
        m = min(self.options["negatives"], len(cand))
        pick = np.random.default_rng(self.options["seed"]).choice(len(cand), size=m, replace=False)
        return np.sort(cand[pick])

    def train(self, feat: Features, texts: list[str]) -> list[tuple[np.ndarray, float]]:
        """One (w, b) per target group, negatives drawn from ``feat``/``texts`` (the pool)."""
        o = self.options
        neg = feat.rows(self.negative_rows(texts))
        tf = self.target_feat.rows(np.arange(len(self.target)))
        inv = self.target.inv
        models = []
        for g in range(len(self.target.names)):
            parts = [tf[inv == g], neg] + ([tf[inv != g]] if o["contrast_groups"] else [])
            x = np.concatenate(parts, axis=0)
            y = np.zeros(len(x), np.float32)
            y[: int((inv == g).sum())] = 1.0
            if len(x) == int(y.sum()):
                raise OptionError(f"{self.NAME}: the pool has no row to contrast the target set with")
            models.append(fit_logistic(x, y, l2=o["l2"], steps=o["steps"]))
        return models

    def fit(self, pool: Any) -> "TargetClassifier":
        """Train the classifiers with negatives from ``pool`` (a sample table) for later batches."""
        df = as_pandas(pool)
        texts = sample_texts(df)
        self._model = self.train(self.features(texts), texts)
        self._pool_digest = digest([sample_ids(df), texts], 16)
        return self

    def __call__(self, batch: Any) -> pd.DataFrame:
        df = as_pandas(batch)
        texts = sample_texts(df) if len(df) else []
        if not texts:
            return group_frame(self.NAME, [], np.zeros((0, len(self.target.names))), self.target.names, [])
        feat = self.features(texts)
        models = self._model if self._model is not None else self.train(feat, texts)
        per = np.stack([feat.score(w, b) for w, b in models], axis=1).reshape(len(texts), -1)
        reasons = ["" if t.strip() else "empty text" for t in texts]
        return group_frame(self.NAME, sample_ids(df), per, self.target.names, reasons)


def _check_feature_options(o: dict, who: str) -> None:
    """No option accepted and ignored: embedding options need embedding features, n-gram options n-grams
    (an option left at its default passes: the pipeline hands criteria their resolved options)."""
    unused = _EMBED_ONLY if o["features"] == "ngrams" else _NGRAM_ONLY if o["features"] == "embedding" else ()
    defaults = CRITERIA.get(who).options
    for k in unused:
        if o[k] != defaults[k].default:
            raise OptionError(f"{who}: option {k} does not apply to features={o['features']}")
