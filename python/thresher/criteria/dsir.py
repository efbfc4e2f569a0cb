"""``dsir``: Data Selection with Importance Resampling, hashed n-gram model (Xie et al., 2023).

Features: the text (instruction, input, output joined by newlines) is lowercased and split
into word-punct tokens (runs of word characters, runs of other non-space characters);
its unigrams and bigrams (``ngrams=2``; n-grams up to ``ngrams``, tokens joined by one
space) are hashed into ``buckets`` (10,000, as the paper) with a stable hash: the first
8 bytes of blake2b of the n-gram's UTF-8 bytes, little-endian, modulo ``buckets`` (the
same bucket in every process, unlike Python's salted ``hash``).

Two bag-of-n-grams models: p_target from the target set's counts and p_pool from the
pool's counts, each with additive smoothing (``smoothing`` = 1: add-one;
p(b) = (c_b + s) / (sum c + s * buckets)). The importance weight of x is

    log w(x) = sum over buckets b of  count_x(b) * (log p_target(b) - log p_pool(b))

(``normalize="length"`` divides it by the row's n-gram count: the sum grows with the row's length,
so on a pool of mixed lengths the paper's weight ranks long rows first.)

(the released DSIR code smooths with 1e-8 on the probabilities instead; add-one keeps a
bucket unseen in a 16-row target set from dominating the sum). With target groups
(``target_field``), one p_target per group and the max over groups, as
:mod:`thresher.criteria.target` does.

p_pool is estimated over the pool, so the criterion is pool-scoped (``scope="pool"``):
the pipeline calls it once over the whole pool; ``fit(pool)`` sets the pool for later
batches; a batch scored without ``fit`` is its own pool. Select with ``topk`` or with
DSIR's resampling, the ``gumbel_topk`` selector (:mod:`thresher.selectors.gumbel`).

:class:`NgramCounts` (sparse per-row bucket counts) is shared with
:mod:`thresher.criteria.target_classifier`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..embed import sample_texts
from ..frames import as_pandas
from ..registry import CRITERIA, Option
from .base import Criterion, digest, sample_ids
from .target import TARGET_OPTIONS, group_frame, load_target, target_key

_TOKEN = re.compile(r"\w+|[^\w\s]+")
_MEMO: dict[str, int] = {}
_MEMO_MAX = 1 << 21

NGRAM_OPTIONS = [
    Option("buckets", 10000, "hash buckets of the n-gram features", min=1),
    Option("ngrams", 2, "n-grams up to this n (2: unigrams and bigrams)", min=1, max=5),
]


def ngram_hash(gram: str) -> int:
    """Stable 64-bit hash of an n-gram (blake2b, first 8 bytes, little-endian)."""
    h = _MEMO.get(gram)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(gram.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[gram] = h
    return h


def ngrams_of(text: str, n: int = 2) -> list[str]:
    """The word-punct n-grams (1..n) of the lowercased text."""
    toks = _TOKEN.findall(text.lower())
    out = list(toks)
    for k in range(2, n + 1):
        out += [" ".join(toks[i : i + k]) for i in range(len(toks) - k + 1)]
    return out


@dataclass
class NgramCounts:
    """Per-row hashed n-gram counts as (row, bucket, count) entries, sorted by row then bucket."""

    n_rows: int
    buckets: int
    row: np.ndarray
    col: np.ndarray
    count: np.ndarray

    @classmethod
    def of(cls, texts: Sequence[str], buckets: int = 10000, n: int = 2) -> "NgramCounts":
        rows: list[int] = []
        hashes: list[int] = []
        for i, t in enumerate(texts):
            hs = [ngram_hash(g) for g in ngrams_of(t, n)]
            hashes += hs
            rows += [i] * len(hs)
        h = np.array(hashes, dtype=np.uint64) % np.uint64(buckets)
        keys = np.asarray(rows, dtype=np.int64) * buckets + h.astype(np.int64)
        uniq, cnt = np.unique(keys, return_counts=True)
        return cls(len(texts), buckets, uniq // buckets, uniq % buckets, cnt.astype(np.float64))

    def totals(self, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """[buckets] counts summed over all rows (or over ``rows``)."""
        keep = slice(None) if rows is None else np.isin(self.row, rows)
        return np.bincount(self.col[keep], weights=self.count[keep], minlength=self.buckets)

    def dot(self, vec: np.ndarray, values: Optional[np.ndarray] = None) -> np.ndarray:
        """[n_rows] sum over a row's entries of value * vec[bucket] (value: the count by default)."""
        v = self.count if values is None else values
        return np.bincount(self.row, weights=v * vec[self.col], minlength=self.n_rows)

    def per_row(self) -> np.ndarray:
        """[n_rows] n-grams per row."""
        return np.bincount(self.row, weights=self.count, minlength=self.n_rows)

    def tf_values(self) -> np.ndarray:
        """log(1 + count) per entry, each row scaled to unit L2 norm (the classifier's features)."""
        v = np.log1p(self.count)
        norm = np.sqrt(np.bincount(self.row, weights=v * v, minlength=self.n_rows))
        return v / np.maximum(norm[self.row], 1e-12)

    def dense_tf(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), buckets] float32 of :meth:`tf_values` for ``rows`` (in that order)."""
        out = np.zeros((len(rows), self.buckets), np.float32)
        where = {int(r): i for i, r in enumerate(rows)}
        v = self.tf_values()
        sel = np.isin(self.row, rows)
        pos = np.fromiter((where[int(r)] for r in self.row[sel]), np.int64, int(sel.sum()))
        out[pos, self.col[sel]] = v[sel]
        return out


def log_probs(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """log of the smoothed bucket distribution (c + s) / (sum c + s * B)."""
    c = np.asarray(counts, np.float64)
    return np.log(c + smoothing) - np.log(c.sum() + smoothing * len(c))


@CRITERIA.register(
    "dsir",
    doc="DSIR importance weight: log p_target(x) - log p_pool(x) under hashed unigram+bigram "
    "bag-of-n-grams models of the target set and of the pool (add-one smoothing; max over target groups)",
    options=TARGET_OPTIONS
    + NGRAM_OPTIONS
    + [
        Option("smoothing", 1.0, "additive smoothing of both models (1: add-one)", min=0, min_exclusive=True),
        Option(
            "normalize",
            "none",
            "none: the paper's sum over the row's n-grams (it grows with the row's length, so long rows rank "
            "first); length: that sum divided by the row's n-gram count (the mean log ratio per n-gram)",
            ("none", "length"),
        ),
    ],
    direction="max",
    needs=(),
    scope="pool",
    components=("ngrams", "best", "sim_<group>"),
)
class DSIR(Criterion):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.target = load_target(o["target"], o["target_field"], self.NAME)
        tc = NgramCounts.of(self.target.texts, o["buckets"], o["ngrams"])
        self.log_target = np.stack(
            [
                log_probs(tc.totals(np.flatnonzero(self.target.inv == g)), o["smoothing"])
                for g in range(len(self.target.names))
            ]
        )
        self._log_pool: Optional[np.ndarray] = None
        self._pool_digest = ""

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out["target"] = target_key(options, cls.NAME)
        if out.get("normalize") == "none":  # the paper's weight keeps the keys it had before the option
            out.pop("normalize")
        return out

    def cache_key(self) -> str:
        key = super().cache_key()
        return key + ("-pool" + self._pool_digest if self._pool_digest else "")

    def counts(self, texts: Sequence[str]) -> NgramCounts:
        return NgramCounts.of(texts, self.options["buckets"], self.options["ngrams"])

    def fit(self, pool: Any) -> "DSIR":
        """Estimate p_pool over ``pool`` (a sample table) for later batches."""
        df = as_pandas(pool)
        texts = sample_texts(df)
        self._log_pool = log_probs(self.counts(texts).totals(), self.options["smoothing"])
        self._pool_digest = digest([sample_ids(df), texts], 16)
        return self

    def __call__(self, batch: Any) -> pd.DataFrame:
        df = as_pandas(batch)
        texts = sample_texts(df) if len(df) else []
        c = self.counts(texts)
        log_pool = self._log_pool if self._log_pool is not None else log_probs(c.totals(), self.options["smoothing"])
        per = np.stack([c.dot(lt - log_pool) for lt in self.log_target], axis=1)
        n_grams = c.per_row()
        if self.options["normalize"] == "length":
            per = per / np.maximum(n_grams, 1)[:, None]  # a row with no n-grams keeps NaN and its reason
        reasons = ["empty text" if not t.strip() else ("no n-grams" if n == 0 else "") for t, n in zip(texts, n_grams)]
        out = group_frame(self.NAME, sample_ids(df), per.reshape(len(texts), -1), self.target.names, reasons)
        out.insert(2, f"{self.NAME}.ngrams", n_grams)
        return out
