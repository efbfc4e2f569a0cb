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

Anchors: ``anchors`` = a JSONL/JSON file or a list of rows; without it, a
seeded random sample of ``n_anchors`` rows of the scored batch (the release
picks 100 by k-means; the pipeline can pass such a set). A candidate that is
itself an anchor (same id) is not compared with itself.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..features.tokens import Unit, prefix_reuse_losses
from ..frames import as_pandas
from ..registry import CRITERIA, Option
from ..render import TEMPLATES, SampleError, render_sample, tokenize_rendered
from .loss import LMCriterion, _opts, _records, sample_ids


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


@CRITERIA.register(
    "nuggets",
    doc="Nuggets golden score: fraction of anchor tasks whose answer log-probability rises when the candidate "
        "is a one-shot demonstration. The candidate prefix's KV cache is computed once and reused across "
        "anchors. Higher = better.",
    options=_opts(
        Option("anchors", None, "anchor rows: JSONL/JSON path or list of rows (default: a sample of the batch)"),
        Option("n_anchors", 100, "anchors sampled from the batch when anchors is not given"),
        Option("seed", 0, "seed of the anchor sample"),
        Option("template", "alpaca", "prompt template of candidates and anchors", choices=TEMPLATES),
        Option("separator", "\n\n", "text between the one-shot demonstration and the anchor"),
        Option("max_length", 2048, "max tokens of prefix + anchor (the prefix is cut from the left)"),
    ),
    direction="max",
    needs=("model",),
    components=("mean_gain", "n_anchors", "truncated"),
)
class Nuggets(LMCriterion):
    NAME = "nuggets"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        a = self.options["anchors"]
        if isinstance(a, str):
            a = _read_anchor_file(a)
        elif a is not None:
            a = as_pandas(a).to_dict("records") if not isinstance(a, list) else list(a)
        self._anchor_rows = a
        n = self.options["n_anchors"]
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"nuggets: option n_anchors must be a positive int, got {n!r}")
        if not isinstance(self.options["separator"], str):
            raise ValueError("nuggets: option separator must be a string")
        self._zero_cache: dict = {}

    def cache_key(self) -> str:
        key = super().cache_key()
        if self._anchor_rows is not None:
            import hashlib

            blob = json.dumps(self._anchor_rows, sort_keys=True, default=str).encode()
            key += "-" + hashlib.sha256(blob).hexdigest()[:12]
        return key

    # -------------------------------------------------------------- anchors
    def _anchors(self, df) -> list[tuple[str, Any]]:
        """[(anchor id, Tokenized)] of the usable anchors."""
        tok = self.tokenizer
        if self._anchor_rows is not None:
            rows = self._anchor_rows
            aids = [str(r.get("id", f"anchor-{i}")) if isinstance(r, dict) else f"anchor-{i}"
                    for i, r in enumerate(rows)]
        else:
            recs = _records(df)
            ids = sample_ids(df)
            rng = np.random.default_rng(self.options["seed"])
            take = min(self.options["n_anchors"], len(recs))
            pick = np.sort(rng.choice(len(recs), size=take, replace=False)) if take else []
            rows = [recs[i] for i in pick]
            aids = [ids[i] for i in pick]
        out = []
        for aid, r in zip(aids, rows):
            if not isinstance(r, dict):
                raise ValueError(f"nuggets: anchor {aid!r} is not an object")
            try:
                rr = render_sample(r, self.options["template"], tok, sid=aid)
            except SampleError:
                continue  # unusable anchors are left out (the count is reported per candidate)
            if not any(rr.text[a:b].strip() for a, b in rr.spans):
                continue
            tk = tokenize_rendered(rr, tok, add_special_tokens=False)
            if tk.answer_kept == 0 or tk.score[0]:
                continue
            out.append((aid, tk))
        return out

    def _zero_shot(self, anchors) -> np.ndarray:
        """log p(a_j | q_j) per anchor (with the tokenizer's special tokens prepended as in a normal pass)."""
        key = tuple((aid, tuple(tk.ids)) for aid, tk in anchors)
        if key in self._zero_cache:
            return self._zero_cache[key]
        tok = self.tokenizer
        lead = tok("", add_special_tokens=True)["input_ids"]  # e.g. BOS for tokenizers that add one
        # (the first token of an anchor is never an answer token: checked in _anchors)
        units = [Unit(list(lead) + tk.ids, [False] * len(lead) + tk.score) for _, tk in anchors]
        losses = self.run_units(units)
        lp = np.array([-ul.nll.sum() for ul in losses])
        self._zero_cache = {key: lp}
        return lp

    # -------------------------------------------------------------- scoring
    def __call__(self, batch: Any):
        import pandas as pd

        df = as_pandas(batch)
        ids = sample_ids(df)
        n = len(df)
        o = self.options
        tok = self.tokenizer
        anchors = self._anchors(df)
        reason = [""] * n
        gs = np.full(n, np.nan)
        gain = np.full(n, np.nan)
        n_used = np.zeros(n, dtype=np.int64)
        cut = np.zeros(n, dtype=np.int64)
        if not anchors:
            reason = ["no usable anchor"] * n
        else:
            zero = self._zero_shot(anchors)
            conts = [Unit(tk.ids, tk.score) for _, tk in anchors]
            longest = max(len(u.ids) for u in conts)
            ml = self.max_length()
            for i, row in enumerate(_records(df)):
                try:
                    r = render_sample(row, o["template"], tok, sid=ids[i])
                except SampleError as exc:
                    reason[i] = str(exc)
                    continue
                if not any(r.text[a:b].strip() for a, b in r.spans):
                    reason[i] = "empty answer"
                    continue
                prefix = tok(r.text + o["separator"], add_special_tokens=True)["input_ids"]
                room = (ml - longest) if ml else len(prefix)
                if room < 1:
                    reason[i] = f"anchors leave no room for the demonstration (max_length={ml})"
                    continue
                if len(prefix) > room:
                    cut[i] = len(prefix) - room
                    prefix = prefix[-room:]
                keep = [j for j, (aid, _) in enumerate(anchors) if aid != ids[i]]
                if not keep:
                    reason[i] = "no anchor other than the sample itself"
                    continue
                one = prefix_reuse_losses(self.lm, prefix, [conts[j] for j in keep],
                                          batch_tokens=max(o["batch_tokens"], len(prefix) + longest),
                                          backend=o["backend"])
                lp1 = np.array([-ul.nll.sum() for ul in one])
                lp0 = zero[keep]
                gs[i] = float(np.mean(lp1 > lp0))
                gain[i] = float(np.mean(lp1 - lp0))
                n_used[i] = len(keep)
        return pd.DataFrame({"id": ids, "nuggets": gs, "nuggets.mean_gain": gain, "nuggets.n_anchors": n_used,
                             "nuggets.truncated": cut, "nuggets.reason": reason})
