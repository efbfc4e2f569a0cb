"""Loss-based criteria: ifd, reverse_ifd, perplexity, entropy, el2n.

Notation (formulas in ``docs/methods.md``): for a sample with prompt Q and answer A,
l_t is the token loss LSE(z_t) - z_t[y_t] of answer token t, s(A|Q) the mean of l over
the answer tokens after the rendered prompt, s(A) the mean over the same answer tokens
with only a short context (``context``):

* ``ifd``         = s(A|Q) / s(A) (Cherry LLM), or with ``ratio=ppl``
  PPL(A|Q) / PPL(A) = exp(s(A|Q) - s(A)) (Superfiltering).
* ``reverse_ifd`` = PPL(Q | reverse prompt holding A) / PPL(Q) (Reflection-Tuning).
* ``perplexity``  = exp(s(A|Q)); ``entropy`` = mean_t H_t with
  H_t = LSE(z_t) - sum_v p_v z_v; ``el2n`` = mean_t ||softmax(z_t) - onehot(y_t)||_2.

Every per-token quantity comes from :func:`thresher.ops.token_loss` on the trunk's
hidden states of the scored positions only (see :mod:`thresher.features.tokens`): no
[tokens x vocab] logits. Each criterion here is a :class:`LossCriterion`: it states its
units (``items``) and its columns; the batch loop, rendering, reasons and truncation
live in :mod:`thresher.criteria.base`.

Direct-pass context for ``ifd``: ``prefix`` (default ``"### Response:"``, Cherry: the
direct text is prefix + A, prefix tokens unscored), ``bos`` (the tokenizer's BOS, or EOS
when it has none, then A: every answer token scored), ``none`` (A alone: its first
token has no prediction, so by default it is left out of BOTH passes, which keeps the
two means over the same tokens; ``first_token=direct`` drops it from the direct pass
only, as the Superfiltering reference code does).

Truncation is aligned: the conditional text is cut to ``max_length`` tokens (policy
``truncation``), and the direct pass scores only the answer characters the conditional
pass kept. Samples whose answer is empty or truncated away get NaN and a reason in
``<name>.reason``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import OptionError
from ..features.tokens import LossOptions, Unit, UnitLoss, unit_losses
from ..registry import CRITERIA, Option
from ..render import TEMPLATES, TRUNCATION, Rendered, render_prompt, tokenize_rendered
from .base import MODEL_OPTIONS, Batch, LMCriterion, Skip, concat, mean_or_nan, single_turn

# Options of every criterion that runs units through unit_losses.
LOSS_OPTIONS = list(MODEL_OPTIONS) + [
    Option(
        "batching",
        "bucket",
        "bucket: length-sorted buckets; pack: packed rows with position ids; row: one row per forward (no "
        "padding, no shared prefix): scores the same bits under every shard layout, engine and thread count, "
        "slower",
        choices=("bucket", "pack", "row"),
    ),
    Option("backend", None, "force a thresher.ops.token_loss backend (reference|cpu|triton|...)", type=str),
    Option(
        "share_prefix", True, "run a bucket's common token prefix (template boilerplate) once, reusing its KV cache"
    ),
]


def _max_length(default: int, doc: str) -> Option:
    return Option("max_length", default, doc, type=int, min=2, nullable=True)


def _opts(*extra: Option) -> list[Option]:
    return list(LOSS_OPTIONS) + list(extra)


class LossCriterion(LMCriterion):
    """Items are :class:`Unit` s; ``run`` is ONE :func:`unit_losses` call over the batch."""

    WANT: dict = {}  # per-token extras for unit_losses (entropy / el2n)

    def loss_options(self, **want: bool) -> LossOptions:
        o = self.options
        return LossOptions(
            batch_tokens=o["batch_tokens"],
            mode=o["batching"],
            backend=o["backend"],
            share_prefix=o["share_prefix"],
            **want,
        )

    def run_units(self, units: list[Unit], **want: bool) -> list[UnitLoss]:
        return unit_losses(self.lm, units, self.loss_options(**want))

    def run(self, items: list) -> list:
        return self.run_units(items, **self.WANT)


# ====================================================================== IFD
@CRITERIA.register(
    "ifd",
    doc="Instruction-Following Difficulty (Cherry LLM): s(A|Q)/s(A), mean answer-token losses with and "
    "without the instruction; ratio=ppl gives Superfiltering's exp(s(A|Q)-s(A)). Higher = the "
    "instruction helps less. NaN for empty or truncated-away answers.",
    options=_opts(
        Option("template", "alpaca", "prompt template of the conditional pass", choices=TEMPLATES),
        Option(
            "ratio",
            "loss",
            "loss: s(A|Q)/s(A) (Cherry); ppl: exp(s(A|Q)-s(A)) (Superfiltering)",
            choices=("loss", "ppl"),
        ),
        Option("context", "prefix", "direct-pass context: prefix | bos | none", choices=("prefix", "bos", "none")),
        Option("prefix", "### Response:", "the fixed prefix of the direct pass when context=prefix", type=str),
        Option(
            "first_token",
            "both",
            "context=none: leave the unpredicted first answer token out of both passes (both) or of the direct "
            "pass only (direct: the Superfiltering reference code)",
            choices=("both", "direct"),
        ),
        _max_length(512, "max tokens of the conditional pass (aligned truncation of both passes)"),
        Option(
            "truncation", "right", "right: cut the answer's end; left: cut the prompt's start first", choices=TRUNCATION
        ),
    ),
    direction="max",
    needs=("model",),
    components=("loss_cond", "loss_direct", "n_tokens", "truncated"),
)
class IFD(LossCriterion):
    """Units: the conditional pass ("c") and one direct pass per kept answer span ("d")."""

    @classmethod
    def resolve(cls, options: dict) -> dict:
        o = super().resolve(options)
        if o["first_token"] == "direct" and o["context"] != "none":
            raise OptionError("ifd: option first_token=direct only applies with context=none")
        return o

    def items(self, b: Batch, i: int, row: dict) -> list:
        skip_first = self.options["context"] == "none" and self.options["first_token"] == "both"
        r = self.render(b, i, row)
        tk = self.tokenize(b, i, r, skip_first_answer_token=skip_first)
        out = [("c", Unit(tk.ids, tk.score))]
        for s, (a, e) in enumerate(r.spans):
            if tk.kept_chars[s] > 0:
                dk = self._direct(r.text[a:e], b.ids[i], tk.kept_chars[s])
                out.append(("d", Unit(dk.ids, dk.score)))
        return out

    def _direct(self, answer: str, sid: str, keep: int):
        o = self.options
        ctx = o["prefix"] if o["context"] == "prefix" else ""
        text = ctx + answer
        d = Rendered(sid, text, [(len(ctx), len(text))], prompt=ctx)
        return tokenize_rendered(
            d,
            self.tokenizer,
            max_length=self.max_length(),
            truncation="right",
            add_special_tokens=(o["context"] == "prefix"),
            prepend_ids=self.context_ids() if o["context"] == "bos" else (),
            skip_first_answer_token=o["context"] == "none",
            keep_chars=[keep],
        )

    def columns(self, b: Batch, results: list[dict]) -> dict:
        n = b.n
        lc, ld, score = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        nt = np.zeros(n, dtype=np.int64)
        for i, got in enumerate(results):
            if b.reason[i]:
                continue
            c = concat([u.nll for u in got.get("c", [])])
            d = concat([u.nll for u in got.get("d", [])])
            nt[i], lc[i], ld[i] = c.size, mean_or_nan(c), mean_or_nan(d)
            if not d.size:
                b.reason[i] = "direct pass has no scorable answer token"
            elif self.options["ratio"] == "ppl":
                score[i] = math.exp(lc[i] - ld[i])
            elif ld[i] == 0.0:
                b.reason[i] = "direct loss is 0 (ratio undefined)"
            else:
                score[i] = lc[i] / ld[i]
        return {"": score, "loss_cond": lc, "loss_direct": ld, "n_tokens": nt, "truncated": b.n_cut}


# ====================================================================== reverse IFD
REVERSE_PROMPT = (
    "Below is the response to an instruction, please guess the corresponding instruction for the "
    "given response.\n{output}\nGenerate the instruction for the above response."
)


@CRITERIA.register(
    "reverse_ifd",
    doc="Reverse IFD (Reflection-Tuning): PPL(Q | reverse prompt holding A) / PPL(Q), the instruction as the "
    "target. Lower = the answer predicts its instruction well (a feasible pair).",
    options=_opts(
        Option("template", "alpaca", "template wrapping the reverse prompt", choices=("alpaca", "wiz", "plain")),
        Option("reverse_prompt", REVERSE_PROMPT, "reverse instruction; {output} is replaced by the answer", type=str),
        Option("context", "bos", "context of the direct pass over Q: bos | none", choices=("bos", "none")),
        _max_length(512, "max tokens of the conditional pass"),
        Option("truncation", "right", "truncation policy", choices=TRUNCATION),
    ),
    direction="min",
    needs=("model",),
    components=("loss_cond", "loss_direct", "n_tokens", "truncated"),
)
class ReverseIFD(LossCriterion):
    """Units: Q after the reverse prompt holding A ("c"), and Q after one context token ("d")."""

    VERSION = "2"  # Q = instruction + "\n" + input (v1 joined them with no separator)

    def items(self, b: Batch, i: int, row: dict) -> list:
        o, sid = self.options, b.ids[i]
        instr, inp, out = single_turn(row, sid, self.NAME)
        q = instr + ("\n" + inp if inp else "")  # the separator of the other criteria (selectit, rating, embeddings)
        if not q.strip():
            raise Skip("empty instruction")
        if not out.strip():
            raise Skip("empty answer")
        skip_first = o["context"] == "none"
        prompt = render_prompt(o["reverse_prompt"].replace("{output}", out), "", o["template"])
        r = Rendered(sid, prompt + q, [(len(prompt), len(prompt) + len(q))], prompt=prompt)
        tk = self.tokenize(b, i, r, what="instruction", skip_first_answer_token=skip_first)
        dk = tokenize_rendered(
            Rendered(sid, q, [(0, len(q))]),
            self.tokenizer,
            max_length=self.max_length(),
            add_special_tokens=False,
            prepend_ids=self.context_ids() if o["context"] == "bos" else (),
            skip_first_answer_token=skip_first,
            keep_chars=tk.kept_chars,
        )
        return [("c", Unit(tk.ids, tk.score)), ("d", Unit(dk.ids, dk.score))]

    def columns(self, b: Batch, results: list[dict]) -> dict:
        n = b.n
        lc, ld = np.full(n, np.nan), np.full(n, np.nan)
        nt = np.zeros(n, dtype=np.int64)
        for i, got in enumerate(results):
            if "c" in got:
                lc[i], nt[i] = mean_or_nan(got["c"][0].nll), got["c"][0].nll.size
            if "d" in got:
                ld[i] = mean_or_nan(got["d"][0].nll)
            if not b.reason[i] and math.isnan(ld[i]):
                b.reason[i] = "direct pass has no scorable token"
        return {"": np.exp(lc - ld), "loss_cond": lc, "loss_direct": ld, "n_tokens": nt, "truncated": b.n_cut}


# ====================================================================== answer statistics
class _AnswerStat(LossCriterion):
    """Mean of a per-token statistic over the answer tokens given the rendered prompt."""

    STAT = "nll"  # nll | entropy | el2n

    def items(self, b: Batch, i: int, row: dict) -> list:
        if self.options["target"] == "text":
            r = self.render(b, i, row, require_answer=False)
            r = Rendered(r.id, r.text, [(0, len(r.text))], special_in_text=r.special_in_text)
            tk = self.tokenize(b, i, r, what="text")
        else:
            tk = self.tokenize(b, i, self.render(b, i, row))
        return [("u", Unit(tk.ids, tk.score))]

    def columns(self, b: Batch, results: list[dict]) -> dict:
        n = b.n
        mean_nll, main = np.full(n, np.nan), np.full(n, np.nan)
        nt = np.zeros(n, dtype=np.int64)
        for i, got in enumerate(results):
            if "u" not in got:
                continue
            ul = got["u"][0]
            mean_nll[i], nt[i] = mean_or_nan(ul.nll), ul.nll.size
            main[i] = math.exp(mean_nll[i]) if self.STAT == "nll" else mean_or_nan(getattr(ul, self.STAT))
        cols: dict[str, Any] = {"": main}
        if self.STAT == "nll":
            cols["loss"] = mean_nll
        cols.update({"n_tokens": nt, "truncated": b.n_cut})
        return cols


def _stat_opts() -> list[Option]:
    return _opts(
        Option("template", "alpaca", "prompt template", choices=TEMPLATES),
        Option(
            "target",
            "answer",
            "answer: answer tokens given the prompt; text: every token of the text",
            choices=("answer", "text"),
        ),
        _max_length(512, "max tokens per sample"),
        Option("truncation", "right", "truncation policy", choices=TRUNCATION),
    )


@CRITERIA.register(
    "perplexity",
    doc="Perplexity exp(s(A|Q)) of the answer given the rendered prompt "
    "(target=text: of the whole text). Component loss = s(A|Q).",
    options=_stat_opts(),
    direction="min",
    needs=("model",),
    components=("loss", "n_tokens", "truncated"),
)
class Perplexity(_AnswerStat):
    STAT = "nll"


@CRITERIA.register(
    "entropy",
    doc="Mean predictive entropy H_t = LSE(z_t) - sum_v p_v z_v over the answer tokens given the prompt.",
    options=_stat_opts(),
    direction="min",
    needs=("model",),
    components=("n_tokens", "truncated"),
)
class Entropy(_AnswerStat):
    STAT = "entropy"
    WANT = {"entropy": True}


@CRITERIA.register(
    "el2n",
    doc="Mean EL2N ||softmax(z_t) - onehot(y_t)||_2 over the answer tokens given the prompt (higher = harder example).",
    options=_stat_opts(),
    direction="max",
    needs=("model",),
    components=("n_tokens", "truncated"),
)
class EL2N(_AnswerStat):
    STAT = "el2n"
    WANT = {"el2n": True}
