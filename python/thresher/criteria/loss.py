"""Loss-based criteria: ifd, reverse_ifd, perplexity, entropy, el2n.

Notation (see ``shared/reference/methods.md``): for a sample with prompt Q and
answer A, l_t is the token loss LSE(z_t) - z_t[y_t] of answer token t, s(A|Q)
the mean of l over the answer tokens after the rendered prompt, s(A) the mean
over the same answer tokens with only a short context (``context``):

* ``ifd``         = s(A|Q) / s(A) (Cherry LLM), or with ``ratio=ppl``
  PPL(A|Q) / PPL(A) = exp(s(A|Q) - s(A)) (Superfiltering).
* ``reverse_ifd`` = PPL(Q | reverse prompt holding A) / PPL(Q) (Reflection-Tuning).
* ``perplexity``  = exp(s(A|Q)); ``entropy`` = mean_t H_t with
  H_t = LSE(z_t) - sum_v p_v z_v; ``el2n`` = mean_t ||softmax(z_t) - onehot(y_t)||_2.

Every per-token quantity comes from :func:`thresher.ops.token_loss` on the
trunk's hidden states of the scored positions only (see
:mod:`thresher.features.tokens`): no [tokens x vocab] logits.

Direct-pass context for ``ifd``: ``prefix`` (default ``"### Response:"``,
Cherry: the direct text is prefix + A, prefix tokens unscored), ``bos`` (the
tokenizer's BOS, or EOS when it has none, then A: every answer token scored),
``none`` (A alone: its first token has no prediction, so it is left out of
BOTH passes, which keeps the two means over the same tokens; the
Superfiltering reference instead silently drops it from the direct pass only).

Truncation is aligned: the conditional text is cut to ``max_length`` tokens
(policy ``truncation``), and the direct pass scores only the answer characters
the conditional pass kept. Samples whose answer is empty or truncated away get
NaN and a reason in ``<name>.reason``.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Optional

import numpy as np

from ..features.tokens import Unit, unit_losses
from ..frames import as_pandas
from ..registry import CRITERIA, Option
from ..render import (TEMPLATES, TRUNCATION, Rendered, SampleError, get_conversation, get_str, render_prompt,
                      render_sample, tokenize_rendered)

VERSION = "1"

# Options shared by every LM-based criterion.
MODEL_OPTIONS = [
    Option("model", "default", "causal LM: 'default' (SmolLM2-135M-Instruct), a local path or an HF id"),
    Option("dtype", "float32", "model dtype", choices=("float32", "bfloat16", "float16")),
    Option("device", "cpu", "torch device of the model"),
    Option("batch_tokens", 4096, "token budget of one batch (rows x longest row)"),
    Option("batching", "bucket", "bucket: length-sorted buckets; pack: packed rows with position ids",
           choices=("bucket", "pack")),
    Option("backend", None, "force a thresher.ops.token_loss backend (reference|cpu|triton|...)"),
    Option("share_prefix", True, "run a bucket's common token prefix (template boilerplate) once, reusing its "
                                 "KV cache"),
]


def _opts(*extra: Option) -> list[Option]:
    return list(MODEL_OPTIONS) + list(extra)


def sample_ids(df) -> list[str]:
    """The ``id`` column as strings, or row positions when there is none."""
    if "id" in df.columns:
        out = []
        for i, v in enumerate(df["id"].tolist()):
            out.append(str(i) if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        return out
    return [str(i) for i in range(len(df))]


def _records(df) -> list[dict]:
    return df.to_dict("records")


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


class LMCriterion:
    """Base of the LM-based scorers: options, the shared model, the cache key."""

    NAME = ""
    VERSION = VERSION

    def __init__(self, **options: Any) -> None:
        from ..models import shared_lm

        self.options = CRITERIA.get(self.NAME).resolve_options(options)
        self._validate_common()
        self.lm = shared_lm(self.options["model"], dtype=self.options["dtype"], device=self.options["device"])

    def _validate_common(self) -> None:
        bt = self.options.get("batch_tokens")
        if bt is not None and (isinstance(bt, bool) or not isinstance(bt, int) or bt <= 0):
            raise ValueError(f"{self.NAME}: option batch_tokens must be a positive int, got {bt!r}")
        ml = self.options.get("max_length")
        if ml is not None and (isinstance(ml, bool) or not isinstance(ml, int) or ml < 2):
            raise ValueError(f"{self.NAME}: option max_length must be an int >= 2, got {ml!r}")

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def max_length(self) -> Optional[int]:
        ml = self.options.get("max_length")
        ctx = self.lm.max_length
        if ml is None:
            return ctx
        return min(ml, ctx) if ctx else ml

    def cache_key(self) -> str:
        opts = {k: v for k, v in self.options.items()
                if k not in ("device", "batch_tokens", "batching", "backend", "share_prefix")}
        opts["model"] = self.lm.fingerprint
        blob = json.dumps({"criterion": self.NAME, "version": self.VERSION, "options": opts},
                          sort_keys=True, default=str)
        return f"{self.NAME}-v{self.VERSION}-" + hashlib.sha256(blob.encode()).hexdigest()[:24]

    def run_units(self, units: list[Unit], **want: bool):
        o = self.options
        return unit_losses(self.lm, units, batch_tokens=o["batch_tokens"], mode=o["batching"],
                           backend=o["backend"], share_prefix=bool(o["share_prefix"]), **want)

    def context_ids(self) -> list[int]:
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise ValueError(f"{self.NAME}: context=bos but the tokenizer has neither a BOS nor an EOS token")
        return [bos]


def _empty_answer(r: Rendered) -> bool:
    return all(not r.text[a:b].strip() for a, b in r.spans)


# ====================================================================== IFD
@CRITERIA.register(
    "ifd",
    doc="Instruction-Following Difficulty (Cherry LLM): s(A|Q)/s(A), mean answer-token losses with and "
        "without the instruction; ratio=ppl gives Superfiltering's exp(s(A|Q)-s(A)). Higher = the "
        "instruction helps less. NaN for empty or truncated-away answers.",
    options=_opts(
        Option("template", "alpaca", "prompt template of the conditional pass", choices=TEMPLATES),
        Option("ratio", "loss", "loss: s(A|Q)/s(A) (Cherry); ppl: exp(s(A|Q)-s(A)) (Superfiltering)",
               choices=("loss", "ppl")),
        Option("context", "prefix", "direct-pass context: prefix | bos | none", choices=("prefix", "bos", "none")),
        Option("prefix", "### Response:", "the fixed prefix of the direct pass when context=prefix"),
        Option("max_length", 512, "max tokens of the conditional pass (aligned truncation of both passes)"),
        Option("truncation", "right", "right: cut the answer's end; left: cut the prompt's start first",
               choices=TRUNCATION),
    ),
    direction="max",
    needs=("model",),
    components=("loss_cond", "loss_direct", "n_tokens", "truncated"),
)
class IFD(LMCriterion):
    NAME = "ifd"

    def prepare(self, batch: Any) -> dict:
        """Render and tokenise: the units of both passes (``owner[i] = (sample, 'c'|'d')``),
        reasons, tokens cut. Separate from the forward so benchmarks can reuse the batches."""
        df = as_pandas(batch)
        ids = sample_ids(df)
        n = len(df)
        o = self.options
        tok = self.tokenizer
        ml = self.max_length()
        reason = [""] * n
        n_cut = np.zeros(n, dtype=np.int64)
        units: list[Unit] = []
        owner: list[tuple[int, str]] = []  # (sample, "c"|"d")
        skip_first = o["context"] == "none"
        for i, row in enumerate(_records(df)):
            try:
                r = render_sample(row, o["template"], tok, sid=ids[i])
            except SampleError as exc:
                reason[i] = str(exc)
                continue
            if _empty_answer(r):
                reason[i] = "empty answer"
                continue
            tk = tokenize_rendered(r, tok, max_length=ml, truncation=o["truncation"],
                                   skip_first_answer_token=skip_first)
            n_cut[i] = tk.n_cut
            if tk.answer_kept == 0:
                reason[i] = (f"answer truncated away (max_length={ml})" if tk.truncated and tk.answer_total
                             else "answer has no scorable token")
                continue
            units.append(Unit(tk.ids, tk.score))
            owner.append((i, "c"))
            for s, (a, b) in enumerate(r.spans):
                if tk.kept_chars[s] <= 0:
                    continue
                d = self._direct(r.text[a:b], ids[i])
                dk = tokenize_rendered(d, tok, max_length=ml, truncation="right",
                                       add_special_tokens=(o["context"] == "prefix"),
                                       prepend_ids=self.context_ids() if o["context"] == "bos" else (),
                                       skip_first_answer_token=skip_first, keep_chars=[tk.kept_chars[s]])
                units.append(Unit(dk.ids, dk.score))
                owner.append((i, "d"))
        return {"ids": ids, "n": n, "units": units, "owner": owner, "reason": reason, "n_cut": n_cut}

    def __call__(self, batch: Any):
        import pandas as pd

        prep = self.prepare(batch)
        ids, n, units, owner, reason, n_cut = (prep[k] for k in ("ids", "n", "units", "owner", "reason", "n_cut"))
        o = self.options
        losses = self.run_units(units)
        cond = [[] for _ in range(n)]
        direct = [[] for _ in range(n)]
        for (i, kind), ul in zip(owner, losses):
            (cond if kind == "c" else direct)[i].append(ul.nll)
        lc = np.full(n, np.nan)
        ld = np.full(n, np.nan)
        nt = np.zeros(n, dtype=np.int64)
        score = np.full(n, np.nan)
        for i in range(n):
            if reason[i]:
                continue
            c = np.concatenate(cond[i]) if cond[i] else np.zeros(0)
            d = np.concatenate(direct[i]) if direct[i] else np.zeros(0)
            nt[i] = c.size
            lc[i], ld[i] = _mean(c), _mean(d)
            if not d.size:
                reason[i] = "direct pass has no scorable answer token"
            elif o["ratio"] == "ppl":
                score[i] = math.exp(lc[i] - ld[i])
            elif ld[i] == 0.0:
                reason[i] = "direct loss is 0 (ratio undefined)"
            else:
                score[i] = lc[i] / ld[i]
        return pd.DataFrame({"id": ids, "ifd": score, "ifd.loss_cond": lc, "ifd.loss_direct": ld,
                             "ifd.n_tokens": nt, "ifd.truncated": n_cut, "ifd.reason": reason})

    def _direct(self, answer: str, sid: str) -> Rendered:
        ctx = self.options["prefix"] if self.options["context"] == "prefix" else ""
        if not isinstance(ctx, str):
            raise ValueError(f"ifd: option prefix must be a string, got {type(ctx).__name__}")
        text = ctx + answer
        return Rendered(sid, text, [(len(ctx), len(text))], prompt=ctx)


# ====================================================================== reverse IFD
REVERSE_PROMPT = ("Below is the response to an instruction, please guess the corresponding instruction for the "
                  "given response.\n{output}\nGenerate the instruction for the above response.")


@CRITERIA.register(
    "reverse_ifd",
    doc="Reverse IFD (Reflection-Tuning): PPL(Q | reverse prompt holding A) / PPL(Q), the instruction as the "
        "target. Lower = the answer predicts its instruction well (a feasible pair).",
    options=_opts(
        Option("template", "alpaca", "template wrapping the reverse prompt", choices=("alpaca", "wiz", "plain")),
        Option("reverse_prompt", REVERSE_PROMPT, "reverse instruction; {output} is replaced by the answer"),
        Option("context", "bos", "context of the direct pass over Q: bos | none", choices=("bos", "none")),
        Option("max_length", 512, "max tokens of the conditional pass"),
        Option("truncation", "right", "truncation policy", choices=TRUNCATION),
    ),
    direction="min",
    needs=("model",),
    components=("loss_cond", "loss_direct", "n_tokens", "truncated"),
)
class ReverseIFD(LMCriterion):
    NAME = "reverse_ifd"

    def __call__(self, batch: Any):
        import pandas as pd

        df = as_pandas(batch)
        ids = sample_ids(df)
        n = len(df)
        o = self.options
        tok = self.tokenizer
        ml = self.max_length()
        reason = [""] * n
        n_cut = np.zeros(n, dtype=np.int64)
        units, owner = [], []
        skip_first = o["context"] == "none"
        for i, row in enumerate(_records(df)):
            try:
                if get_conversation(row, ids[i]) is not None:
                    raise SampleError(f"sample {ids[i]!r}: multi-turn samples are not supported by reverse_ifd")
                instr = get_str(row, "instruction", ids[i], required=True)
                inp = get_str(row, "input", ids[i], required=False)
                out = get_str(row, "output", ids[i], required=True)
            except SampleError as exc:
                reason[i] = str(exc)
                continue
            q = instr + inp
            if not q.strip():
                reason[i] = "empty instruction"
                continue
            if not out.strip():
                reason[i] = "empty answer"
                continue
            prompt = render_prompt(o["reverse_prompt"].replace("{output}", out), "", o["template"])
            r = Rendered(ids[i], prompt + q, [(len(prompt), len(prompt) + len(q))], prompt=prompt)
            tk = tokenize_rendered(r, tok, max_length=ml, truncation=o["truncation"],
                                   skip_first_answer_token=skip_first)
            n_cut[i] = tk.n_cut
            if tk.answer_kept == 0:
                reason[i] = f"instruction truncated away (max_length={ml})" if tk.truncated else \
                    "instruction has no scorable token"
                continue
            d = Rendered(ids[i], q, [(0, len(q))])
            dk = tokenize_rendered(d, tok, max_length=ml, add_special_tokens=False,
                                   prepend_ids=self.context_ids() if o["context"] == "bos" else (),
                                   skip_first_answer_token=skip_first, keep_chars=tk.kept_chars)
            units += [Unit(tk.ids, tk.score), Unit(dk.ids, dk.score)]
            owner += [(i, "c"), (i, "d")]
        losses = self.run_units(units)
        lc = np.full(n, np.nan)
        ld = np.full(n, np.nan)
        nt = np.zeros(n, dtype=np.int64)
        for (i, kind), ul in zip(owner, losses):
            if kind == "c":
                lc[i] = _mean(ul.nll)
                nt[i] = ul.nll.size
            else:
                ld[i] = _mean(ul.nll)
        score = np.exp(lc - ld)
        for i in range(n):
            if not reason[i] and math.isnan(ld[i]):
                reason[i] = "direct pass has no scorable token"
        return pd.DataFrame({"id": ids, "reverse_ifd": score, "reverse_ifd.loss_cond": lc,
                             "reverse_ifd.loss_direct": ld, "reverse_ifd.n_tokens": nt,
                             "reverse_ifd.truncated": n_cut, "reverse_ifd.reason": reason})


# ====================================================================== answer statistics
class _AnswerStat(LMCriterion):
    """Mean of a per-token statistic over the answer tokens given the rendered prompt."""

    STAT = "nll"  # nll | entropy | el2n

    def __call__(self, batch: Any):
        import pandas as pd

        df = as_pandas(batch)
        ids = sample_ids(df)
        n = len(df)
        o = self.options
        tok = self.tokenizer
        ml = self.max_length()
        reason = [""] * n
        n_cut = np.zeros(n, dtype=np.int64)
        units, owner = [], []
        for i, row in enumerate(_records(df)):
            try:
                r = render_sample(row, o["template"], tok, sid=ids[i])
            except SampleError as exc:
                reason[i] = str(exc)
                continue
            if o["target"] == "text":
                r = Rendered(r.id, r.text, [(0, len(r.text))], special_in_text=r.special_in_text)
            elif _empty_answer(r):
                reason[i] = "empty answer"
                continue
            tk = tokenize_rendered(r, tok, max_length=ml, truncation=o["truncation"])
            n_cut[i] = tk.n_cut
            if tk.answer_kept == 0:
                reason[i] = (f"answer truncated away (max_length={ml})" if tk.truncated and tk.answer_total
                             else "no scorable token")
                continue
            units.append(Unit(tk.ids, tk.score))
            owner.append(i)
        want = {"entropy": self.STAT == "entropy", "el2n": self.STAT == "el2n"}
        losses = self.run_units(units, **want)
        mean_nll = np.full(n, np.nan)
        main = np.full(n, np.nan)
        nt = np.zeros(n, dtype=np.int64)
        for i, ul in zip(owner, losses):
            mean_nll[i] = _mean(ul.nll)
            nt[i] = ul.nll.size
            if self.STAT == "nll":
                main[i] = math.exp(mean_nll[i])
            else:
                main[i] = _mean(getattr(ul, self.STAT))
        name = self.NAME
        cols = {"id": ids, name: main}
        if self.STAT == "nll":
            cols[f"{name}.loss"] = mean_nll
        cols[f"{name}.n_tokens"] = nt
        cols[f"{name}.truncated"] = n_cut
        cols[f"{name}.reason"] = reason
        return pd.DataFrame(cols)


def _stat_opts() -> list[Option]:
    return _opts(
        Option("template", "alpaca", "prompt template", choices=TEMPLATES),
        Option("target", "answer", "answer: answer tokens given the prompt; text: every token of the text",
               choices=("answer", "text")),
        Option("max_length", 512, "max tokens per sample"),
        Option("truncation", "right", "truncation policy", choices=TRUNCATION),
    )


@CRITERIA.register("perplexity", doc="Perplexity exp(s(A|Q)) of the answer given the rendered prompt "
                   "(target=text: of the whole text). Component loss = s(A|Q).",
                   options=_stat_opts(), direction="min", needs=("model",),
                   components=("loss", "n_tokens", "truncated"))
class Perplexity(_AnswerStat):
    NAME = "perplexity"
    STAT = "nll"


@CRITERIA.register("entropy", doc="Mean predictive entropy H_t = LSE(z_t) - sum_v p_v z_v over the answer "
                   "tokens given the prompt.", options=_stat_opts(), direction="min", needs=("model",),
                   components=("n_tokens", "truncated"))
class Entropy(_AnswerStat):
    NAME = "entropy"
    STAT = "entropy"


@CRITERIA.register("el2n", doc="Mean EL2N ||softmax(z_t) - onehot(y_t)||_2 over the answer tokens given the "
                   "prompt (higher = harder example).", options=_stat_opts(), direction="max", needs=("model",),
                   components=("n_tokens", "truncated"))
class EL2N(_AnswerStat):
    NAME = "el2n"
    STAT = "el2n"
