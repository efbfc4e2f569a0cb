"""nuggets: one-shot golden score of each candidate against an anchor set (``pldlgb/nuggets``).

For anchors (q_j, a_j), j = 1..m, and a candidate z:

    GS(z) = (1/m) * sum_j 1[ log p(a_j | z as a one-shot demonstration, q_j) > log p(a_j | q_j) ]

with log-probabilities summed over the answer tokens of a_j. The zero-shot
terms log p(a_j | q_j) are computed once per anchor set. For each candidate
the one-shot prefix (the rendered candidate followed by ``separator``) runs
through the trunk ONCE with ``use_cache=True``; its KV cache is repeated over
a batch of anchors and reused for all of them
(:func:`thresher.features.tokens.prefix_reuse_losses`), so the cost is
(prefix + m anchors) tokens per candidate instead of m x (prefix + anchor).

Token sequences: the zero-shot pass is ``tok(anchor text)`` (the tokenizer's
special tokens included), the one-shot pass is ``tok(candidate text +
separator)`` followed by ``tok(anchor text)`` without special tokens; the
answer tokens are aligned on each anchor's own tokenisation (offsets).

Anchors: ``anchors`` = a JSONL/JSON file or a list of rows; without it they are
chosen ONCE from the whole pool (the criterion is pool-scoped: the pipeline calls
it on the whole pool): ``anchor_select=kmeans`` (default, as the release) runs a
seeded k-means with ``n_anchors`` clusters over the pool's sentence embeddings
(``embedder``) and takes the row nearest each centroid; ``random`` takes a
seeded random sample. A candidate that is itself an anchor (same id) is not
compared with itself. An anchor of more than half of ``max_length`` tokens is
unusable (the prefix is cut to fit beside the longest anchor, so one very long
anchor would leave every candidate no room); run_info lists the unusable ones.

The candidates are scored window by window (:data:`ITEM_BLOCK` rows), each window rendered and
tokenised in a background thread while the model runs the one before; a window's tokens are dropped
once it is scored and each row keeps three numbers (not two per anchor), so a call's memory beyond the
pool frame is a few windows' tokens, not the pool's.

A stopped call resumes: with ``checkpoint_dir`` set (a pipeline run sets it inside its score cache), the
one-shot log-probabilities of each window are kept, saved about every ``checkpoint_s`` seconds and when
the call raises (:mod:`thresher.criteria.search_checkpoint`), with a digest of the window's candidate
tokens. A call with the same model, anchors and pool size computes only the windows it does not find
with the same digest (an edited row re-does its own window): the scores of an unbroken call. The k-means
anchors are kept there too, once chosen (identity: the pool's ids and texts, the embedder and its
device, the count and the seed), so the resumed call does not embed the pool again
(``run_info()["resumed_anchors"]``).

``scorer.run_info()`` (after a call) records the anchors of that call: how they were
chosen (``kmeans``, ``random``, ``file``, ``given``), the seed, the count asked and
chosen, how many were usable, and their ids (at most :data:`LISTED_ANCHOR_IDS`; above
that their count and a digest of the ids).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from ..cluster import kmeans, kmeans_inertia
from ..device import resolve_device
from ..embed import embed_texts, get_embedder, sample_texts
from ..features.loader import prefetch, windows
from ..features.tokens import Unit, prefix_reuse_losses
from ..frames import as_pandas
from ..progress import scaled
from ..registry import CRITERIA, Option
from ..render import TEMPLATES, SampleError, render_sample, tokenize_rendered
from .base import Batch, Skip, digest, embedder_fingerprint
from .loss import LossCriterion, _max_length, _opts
from .search_checkpoint import DEFAULT_EVERY_S, SEARCH_DIR, SearchCheckpoint, kept_or_computed, search_identity

LISTED_ANCHOR_IDS = 200  # run_info lists the anchor ids up to this many, else a digest
ITEM_BLOCK = 64  # candidates per checkpoint block


def _read_anchor_file(path: str) -> list[dict]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"nuggets: anchors file {path!r} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError(f"nuggets: {path}: expected a JSON array of rows")
        return rows
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"nuggets: {path}:{i}: invalid JSON ({exc.msg})") from None
    return rows


def _anchor_rows(anchors: Any) -> Optional[list]:
    """The anchor rows of the ``anchors`` option (None: sample them from each batch)."""
    if anchors is None:
        return None
    if isinstance(anchors, str):
        return _read_anchor_file(anchors)
    return list(anchors) if isinstance(anchors, list) else as_pandas(anchors).to_dict("records")


def kmeans_anchor_rows(emb: np.ndarray, m: int, seed: int, n_init: int = 10) -> np.ndarray:
    """Sorted row positions of the anchors: per k-means cluster (``m`` clusters, ``n_init`` seeded
    restarts, the lowest inertia kept) the member nearest its centroid (Euclidean, ties to the
    lower row); empty clusters give none."""
    x = np.ascontiguousarray(emb, dtype=np.float32)  # (k-means runs in float32; no float64 copy of the pool)
    best = None
    for t in range(n_init):  # restarts, the lowest inertia kept (a single Lloyd run can merge clusters)
        c, lb = kmeans(x, m, seed=seed * n_init + t)
        inertia = kmeans_inertia(x, c, lb)
        if best is None or inertia < best[0]:
            best = (inertia, np.asarray(c, dtype=np.float64), lb)
    _, cent, lab = best
    pick = []
    for g in range(len(cent)):
        members = np.flatnonzero(lab == g)
        if members.size:
            d = ((np.asarray(x[members], dtype=np.float64) - cent[g]) ** 2).sum(1)
            pick.append(int(members[np.lexsort((members, d))[0]]))
    return np.asarray(sorted(set(pick)), dtype=np.int64)


def _flat(seqs: list) -> np.ndarray:
    return np.asarray([t for s in seqs for t in s], np.int64)


def _lens(seqs: list) -> np.ndarray:
    return np.asarray([len(s) for s in seqs], np.int64)


def _items_digest(items: list) -> bytes:
    """A digest of a window's candidates: each one's prefix tokens and the anchors it is compared on."""
    h = hashlib.blake2b(digest_size=16)
    for prefix, keep in items:
        for arr in (prefix, keep):
            h.update(np.asarray(arr, np.int64).tobytes())
            h.update(b"|")
    return h.digest()


def _block_arrays(lp1: list, items: list) -> tuple:
    """A scored window as stored: the log-probabilities, their count per candidate, the candidates' digest."""
    flat = np.concatenate(lp1) if lp1 else np.zeros(0, np.float64)
    return flat, _lens(lp1), np.frombuffer(_items_digest(items), np.uint8)


@CRITERIA.register(
    "nuggets",
    doc="Nuggets golden score: fraction of anchor tasks whose answer log-probability rises when the candidate "
    "is a one-shot demonstration. The candidate prefix's KV cache is computed once and reused across "
    "anchors. Higher = better.",
    options=_opts(
        Option(
            "anchors",
            None,
            "anchor rows: JSONL/JSON path, list of rows or table (default: a sample of the batch)",
            type=(str, list, pd.DataFrame, pa.Table),
        ),
        Option("n_anchors", 100, "anchors chosen from the pool when anchors is not given", min=1),
        Option(
            "anchor_select",
            "kmeans",
            "how anchors are chosen from the pool without `anchors`: kmeans (the release: the row nearest each "
            "of n_anchors k-means centroids of the embeddings) or random (a seeded sample)",
            ("kmeans", "random"),
        ),
        Option("embedder", "default", "sentence embedder of anchor_select=kmeans (default all-MiniLM-L6-v2)"),
        Option(
            "cache_dir",
            None,
            "embeddings cache of anchor_select=kmeans (float16 vectors keyed by sample id + text; a pipeline "
            "run: its shared cache, so the pool embedded by a kNN criterion or an earlier run is not embedded "
            "again)",
            type=(str, Path),
        ),
        Option("seed", 0, "seed of the anchor k-means or sample"),
        Option("template", "alpaca", "prompt template of candidates and anchors", choices=TEMPLATES),
        Option("separator", "\n\n", "text between the one-shot demonstration and the anchor", type=str),
        _max_length(
            2048,
            "max tokens of prefix + anchor (the prefix is cut from the left); anchors of more than "
            "half of it are unusable",
        ),  # fmt: skip
        Option(
            "checkpoint_dir",
            None,
            "folder where a call keeps its finished candidates, so a stopped call "
            "resumes from them (a pipeline run: <cache>/nuggets/" + SEARCH_DIR + "; None: not kept)",
            type=(str, Path),
        ),  # fmt: skip
        Option(
            "checkpoint_s",
            None,
            "seconds between saves of the finished candidates (None: the run's "
            f"--checkpoint-every, else {DEFAULT_EVERY_S:g}; 0: never saved)",
            type=(int, float),
            min=0,
        ),
    ),
    direction="max",
    needs=("model",),
    scope="pool",
    components=("mean_gain", "n_anchors", "truncated"),
)
class Nuggets(LossCriterion):
    """Items: per candidate its one-shot prefix and the anchors it is compared on; ``run`` reuses
    each prefix's KV cache across those anchors."""

    # v2: anchors over half of max_length are unusable (v1 kept them and left every prefix no room);
    # v3: with cache_dir (every pipeline run) the k-means anchors come from the embeddings cache's float16 vectors
    VERSION = "3"

    def setup(self) -> None:
        self._anchor_rows = _anchor_rows(self.options["anchors"])
        self._zero_cache: dict = {}
        self._batch_anchors: list = []
        self._info: dict = {}
        self._anchor_store: Optional[SearchCheckpoint] = None  # the k-means anchors of the call in progress
        self._anchors_resumed: Optional[bool] = None

    def run_info(self) -> dict:
        """The anchors of the last call (JSON-serialisable); ``{"criterion", "scored": False}`` before any."""
        return {"criterion": self.NAME, "scored": bool(self._info), **self._info}

    def _record_anchors(self, b: Batch, ids: list, usable: list) -> None:
        """run_info of this call: the chosen anchors (ids, or their count and digest when many)."""
        given = self.options["anchors"]
        how = ("file" if isinstance(given, str) else "given") if given is not None else self.options["anchor_select"]
        info: dict = {"anchor_select": how, "n_anchors_requested": int(self.options["n_anchors"])}
        if given is None:
            info["seed"] = self.options["seed"]
            if how == "kmeans":
                info["embedder"] = embedder_fingerprint(self.options["embedder"])
        else:
            info.update(n_anchors_requested=None, anchors_digest=digest(self._anchor_rows, 32))
            if how == "file":
                info["anchors_file"] = str(given)
        info.update(pool_rows=int(b.n), n_anchors=len(ids), n_usable_anchors=len(usable))
        for name, lst in (("anchor_ids", ids), ("unusable_anchor_ids", sorted(set(ids) - set(usable)))):
            lst = [str(i) for i in lst]
            if len(lst) <= LISTED_ANCHOR_IDS:
                info[name] = lst
            else:
                info[name + "_digest"] = digest(lst, 32)
        self._info = info

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        rows = _anchor_rows(options["anchors"])
        out["anchors"] = None if rows is None else digest(rows, 32)  # the rows, wherever they come from
        if rows is not None or options["anchor_select"] == "random":
            out.pop("embedder", None)  # the embedder is not used
        else:
            out["embedder"] = embedder_fingerprint(options["embedder"])
        return out

    @classmethod
    def pool_embedder(cls, options: dict) -> Optional[tuple[str, Optional[str]]]:
        """The embedder of the k-means anchors (on the embedder's own device), None when no anchor is
        chosen by k-means (given anchors, a random sample)."""
        if options.get("anchors") is not None or options.get("anchor_select") != "kmeans":
            return None
        emb = options.get("embedder")
        return (emb, None) if isinstance(emb, str) and options.get("cache_dir") is not None else None

    # -------------------------------------------------------------- anchors
    def _anchor_sample(self, b: Batch) -> tuple[list[str], list]:
        if self._anchor_rows is not None:
            rows = self._anchor_rows
            return [
                str(r.get("id", f"anchor-{i}")) if isinstance(r, dict) else f"anchor-{i}" for i, r in enumerate(rows)
            ], rows
        take = min(self.options["n_anchors"], b.n)
        if self.options["anchor_select"] == "kmeans" and take:
            pick = self._kmeans_anchors(b, take)
        else:
            rng = np.random.default_rng(self.options["seed"])
            pick = np.sort(rng.choice(b.n, size=take, replace=False)) if take else np.zeros(0, np.int64)
        return [b.ids[i] for i in pick], [b.rows[i] for i in pick]

    def _kmeans_anchors(self, b: Batch, take: int) -> np.ndarray:
        """Sorted pool positions of the k-means anchors. With a checkpoint folder they are kept there once
        chosen (:func:`kept_or_computed`), so a stopped call resumes without embedding the pool again."""
        texts = sample_texts(b.df)
        self._anchor_store = self._anchors_checkpoint(b, texts, take)

        def choose() -> tuple:
            o = self.options
            if o["cache_dir"] is not None and isinstance(o["embedder"], str):  # loads the model only for misses
                emb = embed_texts(texts, o["embedder"], cache_dir=o["cache_dir"], ids=b.ids)
            else:
                emb = embed_texts(texts, get_embedder(o["embedder"]))
            return (kmeans_anchor_rows(emb, take, o["seed"]),)

        (pick,), kept = kept_or_computed(self._anchor_store, choose)
        self._anchors_resumed = kept if self._anchor_store is not None else None
        return np.asarray(pick, dtype=np.int64)

    def _anchors_checkpoint(self, b: Batch, texts: list, take: int) -> Optional[SearchCheckpoint]:
        """The store of the k-means anchor choice: its identity digests the pool's ids and texts, the
        embedder (fingerprint and device), the anchor count and the seed; None without a checkpoint folder."""
        folder, every = self.options.get("checkpoint_dir"), self.options.get("checkpoint_s")
        if folder is None or (every is not None and float(every) <= 0):
            return None
        h = hashlib.blake2b(digest_size=16)
        for sid, text in zip(b.ids, texts):
            h.update(f"{len(str(sid))}:{sid}{len(text)}:".encode())
            h.update(text.encode("utf-8", "surrogatepass"))
        ident = search_identity(np.frombuffer(h.digest(), np.uint8), call="nuggets-anchors", rows=b.n, n=take,
                                seed=self.options["seed"], embedder=embedder_fingerprint(self.options["embedder"]),
                                device=resolve_device(None), cached=self.options["cache_dir"] is not None)  # fmt: skip
        return SearchCheckpoint(folder, ident, DEFAULT_EVERY_S)

    def _anchors(self, b: Batch) -> list[tuple[str, Any]]:
        """[(anchor id, Tokenized)] of the usable anchors (chosen ONCE per call: the pool). An anchor of
        more than half of ``max_length`` tokens is unusable: the one-shot prefix is cut to fit beside
        the longest anchor, so one very long anchor would leave every candidate no room."""
        ml = self.max_length()
        limit = ml // 2 if ml else None
        out = []
        ids, rows = self._anchor_sample(b)
        for aid, r in zip(ids, rows):
            if not isinstance(r, dict):
                raise ValueError(f"nuggets: anchor {aid!r} is not an object")
            try:
                rr = render_sample(r, self.options["template"], self.tokenizer, sid=aid)
            except SampleError:
                continue  # unusable anchors are left out (the count is reported per candidate)
            if not any(rr.text[a:e].strip() for a, e in rr.spans):
                continue
            tk = tokenize_rendered(rr, self.tokenizer, add_special_tokens=False)
            if tk.answer_kept == 0 or tk.score[0] or (limit is not None and len(tk.ids) > limit):
                continue
            out.append((aid, tk))
        self._record_anchors(b, ids, [aid for aid, _ in out])
        if self._anchors_resumed is not None:
            self._info["resumed_anchors"] = self._anchors_resumed
        self._info["anchor_max_tokens"] = limit
        return out

    def _zero_shot(self, anchors) -> np.ndarray:
        """log p(a_j | q_j) per anchor (with the tokenizer's special tokens prepended as in a normal pass)."""
        key = tuple((aid, tuple(tk.ids)) for aid, tk in anchors)
        if key in self._zero_cache:
            return self._zero_cache[key]
        lead = self.tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. BOS for tokenizers that add one
        # (the first token of an anchor is never an answer token: checked in _anchors)
        units = [Unit(list(lead) + tk.ids, [False] * len(lead) + tk.score) for _, tk in anchors]
        lp = np.array([-ul.nll.sum() for ul in self.run_units(units)])
        self._zero_cache = {key: lp}
        return lp

    # -------------------------------------------------------------- scoring
    def begin(self, b: Batch) -> None:
        anchors = self._anchors(b)
        self._batch_anchors = anchors
        if not anchors:
            b.reason[:] = ["no usable anchor"] * b.n
            return
        self._zero = self._zero_shot(anchors)
        self._conts = [Unit(tk.ids, tk.score) for _, tk in anchors]
        self._longest = max(len(u.ids) for u in self._conts)

    def items(self, b: Batch, i: int, row: dict) -> list:
        r = self.render(b, i, row)
        prefix = self.tokenizer(r.text + self.options["separator"], add_special_tokens=True)["input_ids"]
        ml = self.max_length()
        room = (ml - self._longest) if ml else len(prefix)
        if room < 1:
            raise Skip(f"anchors leave no room for the demonstration (max_length={ml})")
        if len(prefix) > room:
            b.n_cut[i] = len(prefix) - room
            prefix = prefix[-room:]
        keep = [j for j, (aid, _) in enumerate(self._batch_anchors) if aid != b.ids[i]]
        if not keep:
            raise Skip("no anchor other than the sample itself")
        return [("p", (prefix, keep))]

    def _one_shot(self, prefix: list, keep: list) -> np.ndarray:
        """log p(a_j | candidate, q_j) for the anchors ``keep``, the prefix's KV cache reused."""
        one = prefix_reuse_losses(
            self.lm,
            prefix,
            [self._conts[j] for j in keep],
            batch_tokens=max(self.options["batch_tokens"], len(prefix) + self._longest),
            backend=self.options["backend"],
            one_per_call=self.options["batching"] == "row",
        )
        return np.array([-ul.nll.sum() for ul in one], dtype=np.float64)

    def _checkpoint(self, b: Batch) -> Optional[SearchCheckpoint]:
        """The call's checkpoint store when ``checkpoint_dir`` is set and ``checkpoint_s`` is not 0. Its
        identity is the model's key, the anchors and the pool's size; each block also holds a digest of its
        candidates' tokens, so a block of other candidates is computed again."""
        folder, every = self.options.get("checkpoint_dir"), self.options.get("checkpoint_s")
        every = DEFAULT_EVERY_S if every is None else float(every)
        if folder is None or every <= 0:
            return None
        conts = [u.ids for u in self._conts] + [np.flatnonzero(u.score).tolist() for u in self._conts]
        ident = search_identity(_flat(conts), _lens(conts), call="nuggets", key=self.cache_key(), rows=b.n,
                                device=str(self.lm.device), block=ITEM_BLOCK)  # fmt: skip
        return SearchCheckpoint(folder, ident, every)

    def run(self, items: list) -> list:
        """Per item its :meth:`_summary` (the candidate against the anchors it keeps)."""
        return [self._summary(self._one_shot(prefix, keep), keep) for prefix, keep in items]

    def _summary(self, lp1: np.ndarray, keep: list) -> tuple[float, float, int]:
        """(golden score, mean gain, anchors compared) of one candidate from its one-shot log-probabilities
        ``lp1`` over the anchors ``keep``: three numbers per row are kept, not two per anchor."""
        lp0 = self._zero[keep]
        return float(np.mean(lp1 > lp0)), float(np.mean(lp1 - lp0)), len(lp1)

    def __call__(self, batch: Any) -> pd.DataFrame:
        """The anchors are chosen once for the whole call; then the candidates are scored window by window
        (:data:`ITEM_BLOCK` rows), each window tokenised in a background thread while the model runs the one
        before, and its tokens dropped once scored: memory holds a window's tokens, not the pool's."""
        b = Batch.of(batch)
        self.begin(b)
        per: list[dict] = [{} for _ in range(b.n)]
        if self._batch_anchors:
            self._score_windows(b, per)
        if self._anchor_store is not None:  # the call is complete: its anchor choice is not needed again
            self._anchor_store.clear()
            self._anchor_store, self._anchors_resumed = None, None
        return self.frame(b, self.columns(b, per))

    def _window(self, b: Batch, sl: slice) -> tuple[int, list, list]:
        items, owner = self._items_of(b, range(sl.start, sl.stop))
        return sl.start, items, owner

    def _score_windows(self, b: Batch, per: list[dict]) -> None:
        store = self._checkpoint(b)
        resumed = 0
        try:
            for start, items, owner in prefetch(lambda sl: self._window(b, sl), windows(b.n, ITEM_BLOCK),
                                                depth=self.prefetch):  # fmt: skip
                got = self._stored(store, start, items)
                with scaled(min(ITEM_BLOCK, b.n - start), max(1, len(items) * len(self._conts))):
                    if got is None:
                        got = [self._one_shot(prefix, keep) for prefix, keep in items]
                        if store is not None:
                            store.put(start, *_block_arrays(got, items))
                    else:
                        resumed += len(items)
                for (i, tag), lp1, (_, keep) in zip(owner, got, items):
                    per[i].setdefault(tag, []).append(self._summary(lp1, keep))
        except BaseException:
            if store is not None:
                store.keep()  # the candidates finished so far are kept for the next call
            raise
        if store is not None:
            self._info.update(checkpoint_saves=store.saved, resumed_rows=resumed, scored_rows=b.n)
            store.clear()

    @staticmethod
    def _stored(store: Optional[SearchCheckpoint], start: int, items: list) -> Optional[list]:
        """The one-shot log-probabilities of the window at ``start`` from an earlier call, when its candidates'
        tokens are the same (their digest) and every candidate has its anchors' values; else None."""
        got = None if store is None else store.get(start)
        if got is None or len(got) != 3 or bytes(got[2].astype(np.uint8)) != _items_digest(items):
            return None
        if got[1].tolist() != [len(k) for _, k in items]:
            return None
        return np.split(got[0], np.cumsum(got[1])[:-1]) if items else []

    def columns(self, b: Batch, results: list[dict]) -> dict:
        gs, gain = np.full(b.n, np.nan), np.full(b.n, np.nan)
        n_used = np.zeros(b.n, dtype=np.int64)
        for i, got in enumerate(results):
            if "p" in got:
                gs[i], gain[i], n_used[i] = got["p"][0]
        return {"": gs, "mean_gain": gain, "n_anchors": n_used, "truncated": b.n_cut}
