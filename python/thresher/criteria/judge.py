"""Judge-prompt criteria read at one position: selectit and rating.

Both build a prompt around the sample and read the model's next-token
distribution at the prompt's last position, restricted to a few score tokens,
with :func:`thresher.ops.score_at_position` (softmax over those K logits: no
``generate()``, no full LM head). The trunk runs in length buckets.

**selectit** (SelectIT, ``Blue-Raincoat/SelectIT``): for each of K rating
prompts k the score-token probabilities p (``"1".."5"``, renormalised) give
the token-level score

    S_tok(k) = (argmax p + 1) * (1 / (L - 1)) * sum_l (p_max - p_l)     (L score levels)

the sentence-level score S_sent = mean_k S_tok(k) / (1 + alpha * std_k S_tok(k))
(population std), and the model-level score S = sum_m w_m S_sent(m) with
w_m proportional to model m's parameter count and normalised to sum 1. The
reference code (``self_reflection/*.py``) differs in two places, each an option:
its token-level sum runs over the first K levels and divides by K - 1 where K is
the number of prompts (``token_sum=prompts``; equal to the paper's when K = L = 5),
and its hard-coded weights 7/20, 13/20, 70/90 are used as given, not normalised
(``normalize_weights=false``). The prompt layout follows the reference: ``rating
prompt + "\\n" + "Instruction:" + instruction + "\\n" + "Response:" + output +
"\\nThe answer is: \\n"``.

**rating** (AlpaGasus / DEITA style): expected score sum_s value_s * p_s over
the score tokens at the first generated position of a judge prompt (optionally
wrapped in the model's chat template). A score token that is not a single token
of the tokenizer is an error, never a silent default. Multi-turn rows: with
``turns=sum`` (DEITA) each (user turn, assistant reply) pair is rated on its own
and the ratings are summed; ``turns=single`` (default) gives them NaN with a reason.

Prompts longer than ``max_length`` tokens are cut from the left (the end of a
judge prompt is what the readout depends on) and the cut is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ..features.tokens import last_position_hidden
from ..models import LoadedLM, shared_lm
from ..ops import expected_score, score_at_position
from ..registry import CRITERIA, Option
from ..render import get_conversation
from .base import (
    MODEL_OPTIONS,
    Batch,
    BatchCriterion,
    LMCriterion,
    Skip,
    model_fingerprint,
    row_batching,
    single_turn,
    split_list,
)

SELECTIT_PROMPTS = (
    "Rate how well the response follows the instruction, on a scale from 1 (very poor) to 5 (excellent).",
    "On a scale of 1 to 5, how helpful and accurate is the following response to the instruction?",
    "Judge the quality of the response below as a training example for an assistant. Give a score from 1 to 5.",
    "Score the response from 1 to 5 for correctness, relevance and completeness with respect to the instruction.",
    "How good is this instruction-response pair? Answer with a single number from 1 (bad) to 5 (very good).",
)

RATING_PROMPT = (
    "You are a careful reviewer. Rate the quality of the response to the question below on a scale of 1 to 6, "
    "where 1 is useless and 6 is excellent. Reply with the score only.\n"
    "#Question#:\n{instruction}{input_block}\n#Response#:\n{output}\n##Quality: "
)


def score_token_ids(tokenizer: Any, tokens: Sequence[str], who: str) -> list[int]:
    """Single-token ids of the score strings; ValueError naming a string that is not one token."""
    ids = []
    for s in tokens:
        enc = tokenizer.encode(str(s), add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(
                f"{who}: score token {s!r} is {len(enc)} tokens for this tokenizer; "
                "give score strings that are single tokens"
            )
        ids.append(enc[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"{who}: score tokens {list(tokens)} map to repeated token ids {ids}")
    return ids


def _score_strings(v: Any, who: str) -> list[str]:
    out = [str(s) for s in split_list(v, "score_tokens")]
    if len(out) < 2:
        raise ValueError(f"{who}: option score_tokens needs at least 2 scores")
    return out


def _encode_left_cut(tokenizer: Any, text: str, max_length: Optional[int], special: bool) -> tuple[list[int], int]:
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        return list(ids[-max_length:]), len(ids) - max_length
    return list(ids), 0


def _model_specs(models: Any) -> list:
    specs = split_list(models, "models") if isinstance(models, (str, list, tuple)) else [models]
    if not specs:
        raise ValueError("selectit: option models is empty")
    return specs


def _load_prompts(prompts: Any) -> list[str]:
    """The rating prompts: the built-in ones (None), a file with one prompt per line, or a list."""
    if prompts is None:
        return list(SELECTIT_PROMPTS)
    if isinstance(prompts, str):
        pth = Path(prompts).expanduser()
        if not pth.is_file():
            raise ValueError(f"selectit: option prompts: file {prompts!r} does not exist")
        prompts = [ln.rstrip("\n") for ln in pth.read_text().splitlines() if ln.strip()]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("selectit: option prompts must hold at least one string")
    return list(prompts)


class _Judge:
    """Readout at the last prompt position: items are ``(model index, token ids)``; ``run`` runs
    the trunk once per model over all prompts of the batch and returns the score-token
    probabilities of each item."""

    lms: list
    token_ids: list[list[int]]
    options: dict

    def encode(self, b: Batch, i: int, lm: Any, text: str, special: bool) -> list[int]:
        ids, cut = _encode_left_cut(lm.tokenizer, text, self.options["max_length"], special)
        b.n_cut[i] = max(b.n_cut[i], cut)
        return ids

    def run(self, items: list) -> list:
        out: list = [None] * len(items)
        for m, lm in enumerate(self.lms):
            where = [j for j, (mm, _) in enumerate(items) if mm == m]
            if not where:
                continue
            seqs = [items[j][1] for j in where]
            o = self.options
            h = last_position_hidden(lm, seqs, batch_tokens=o["batch_tokens"], one_per_call=o["batching"] == "row")
            probs = score_at_position(h, lm.head_weight(), self.token_ids[m])
            for j, row_p in zip(where, probs):
                out[j] = row_p
        return out


JUDGE_BATCHING = row_batching("prompts in length buckets")


def _judge_opts(*extra: Option) -> list[Option]:
    return list(MODEL_OPTIONS) + [JUDGE_BATCHING] + list(extra)


# ------------------------------------------------------------------ SelectIT math
def selectit_token_scores(p: np.ndarray, n_terms: Optional[int] = None) -> np.ndarray:
    """S_tok for probabilities p [..., L] (renormalised over the L score levels).

    ``n_terms`` = None: the paper's sum over the L levels divided by L - 1; an int K
    (the reference code, K = number of prompts): the sum over the first K levels
    divided by K - 1 (K must be in [2, L])."""
    p = np.asarray(p, dtype=np.float64)
    L = p.shape[-1]
    if L < 2:
        raise ValueError("p: SelectIT needs at least 2 score levels")
    n = L if n_terms is None else int(n_terms)
    if not 2 <= n <= L:
        raise ValueError(f"selectit: token_sum=prompts needs 2 <= K (prompts) <= L ({L} score levels), got K={n}")
    arg = np.argmax(p, axis=-1)
    pmax = np.max(p, axis=-1)
    return (arg + 1) * (pmax[..., None] - p[..., :n]).sum(-1) / (n - 1)


def selectit_sentence_scores(s_tok: np.ndarray, alpha: float) -> np.ndarray:
    """S_sent from S_tok [N, K]: mean_k / (1 + alpha * std_k) (population std)."""
    s_tok = np.asarray(s_tok, dtype=np.float64)
    return s_tok.mean(-1) / (1.0 + alpha * s_tok.std(-1))


@CRITERIA.register(
    "selectit",
    doc="SelectIT self-reflection score: K rating prompts, score-token probabilities at the last position; "
    "token level (argmax+1)*mean(p_max-p), sentence level mean/(1+alpha*std) over prompts, model level "
    "weighted by parameter count over several models. Higher = better.",
    options=[o for o in MODEL_OPTIONS if o.name != "model"]
    + [JUDGE_BATCHING]
    + [
        Option(
            "models",
            "default",
            "comma-separated model specs (default | path | HF id); several = model level",
            type=(str, list, LoadedLM),
        ),
        Option(
            "model_weights",
            "params",
            "params: proportional to parameter count; or comma-separated weights",
            type=(str, list),
        ),
        Option(
            "prompts",
            None,
            "rating prompts: a list, or a text file with one prompt per line (default: 5 built-in prompts)",
            type=(str, list),
        ),
        Option("k", None, "use the first k prompts (default: all)", type=int, min=1),
        Option("alpha", 0.2, "sentence-level uncertainty weight", min=0),
        Option("score_tokens", "1,2,3,4,5", "the score strings, lowest first (single tokens each)", type=(str, list)),
        Option(
            "token_sum",
            "levels",
            "token level: levels (paper: sum over the L levels / (L-1)); prompts (reference code: over the first "
            "K levels / (K-1), K = number of prompts)",
            ("levels", "prompts"),
        ),
        Option("normalize_weights", True, "scale model_weights to sum 1 (false: the reference code's raw weights)"),
        Option("max_length", 2048, "max prompt tokens (cut from the left)", min=1),
    ],
    direction="max",
    needs=("model",),
    components=("sentence", "token", "truncated"),
)
class SelectIT(_Judge, BatchCriterion):
    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.lms = [shared_lm(s, dtype=o["dtype"], device=o["device"]) for s in _model_specs(o["models"])]
        prompts = _load_prompts(o["prompts"])
        if o["k"] is not None:
            if o["k"] > len(prompts):
                raise ValueError(f"selectit: option k must be an int in [1, {len(prompts)}], got {o['k']!r}")
            prompts = prompts[: o["k"]]
        self.prompts = prompts
        self.score_tokens = _score_strings(o["score_tokens"], "selectit")
        self.token_ids = [score_token_ids(lm.tokenizer, self.score_tokens, f"selectit ({lm.spec})") for lm in self.lms]
        self.weights = self._weights(o["model_weights"])
        if o["token_sum"] == "prompts":
            selectit_token_scores(np.zeros((1, len(self.score_tokens))), len(self.prompts))  # K within [2, L]

    def _weights(self, w: Any) -> np.ndarray:
        if w == "params":
            counts = np.array([sum(p.numel() for p in lm.model.parameters()) for lm in self.lms], dtype=np.float64)
            return counts / counts.sum()
        try:
            counts = np.array([float(x) for x in split_list(w, "model_weights")], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"selectit: option model_weights must be 'params' or numbers, got {w!r}") from None
        if counts.size != len(self.lms) or (counts < 0).any() or counts.sum() <= 0:
            raise ValueError(
                f"selectit: option model_weights needs {len(self.lms)} non-negative numbers "
                f"with a positive sum, got {w!r}"
            )
        return counts / counts.sum() if self.options["normalize_weights"] else counts

    @classmethod
    def key_options(cls, options: dict) -> dict:
        out = super().key_options(options)
        out.pop("models", None)
        out["model"] = [model_fingerprint(s) for s in _model_specs(options["models"])]
        out["prompts"] = _load_prompts(options["prompts"])
        return out

    def prompt_texts(self, instruction: str, inp: str, output: str) -> list[str]:
        ins = instruction + ("\n" + inp if inp else "")
        return [
            rp + "\n" + "Instruction:" + ins + "\n" + "Response:" + output + "\nThe answer is: \n"
            for rp in self.prompts
        ]

    def items(self, b: Batch, i: int, row: dict) -> list:
        ins, inp, out = single_turn(row, b.ids[i], self.NAME)
        if not out.strip():
            raise Skip("empty answer")
        texts = self.prompt_texts(ins, inp, out)
        return [
            ((m, k), (m, self.encode(b, i, lm, t, True))) for m, lm in enumerate(self.lms) for k, t in enumerate(texts)
        ]

    def columns(self, b: Batch, results: list[dict]) -> dict:
        M, K, L = len(self.lms), len(self.prompts), len(self.score_tokens)
        p = np.full((b.n, M, K, L), np.nan)
        for i, got in enumerate(results):
            for (m, k), (probs,) in got.items():
                p[i, m, k] = probs.double().cpu().numpy()
        s_tok = selectit_token_scores(p, K if self.options["token_sum"] == "prompts" else None)  # [N, M, K]
        s_sent = selectit_sentence_scores(s_tok, float(self.options["alpha"]))  # [N, M]
        cols = {"": (s_sent * self.weights[None, :]).sum(-1), "sentence": s_sent[:, 0], "token": s_tok[:, 0, 0]}
        if M > 1:
            cols.update({f"sentence_m{m}": s_sent[:, m] for m in range(M)})
        cols["truncated"] = b.n_cut
        return cols


# ------------------------------------------------------------------ rating
@CRITERIA.register(
    "rating",
    doc="Judge-prompt expected score (AlpaGasus/DEITA style): sum_s value_s * softmax(z[score tokens]) at the "
    "first generated position of a configurable prompt; no generation. Higher = better.",
    options=_judge_opts(
        Option("prompt", RATING_PROMPT, "judge prompt; fields {instruction} {input} {input_block} {output}", type=str),
        Option("score_tokens", "1,2,3,4,5,6", "the score strings (single tokens each)", type=(str, list)),
        Option(
            "values", None, "numeric value of each score token (default: the tokens read as numbers)", type=(str, list)
        ),
        Option(
            "chat",
            "auto",
            "wrap the prompt in the model's chat template: auto | yes | no",
            choices=("auto", "yes", "no"),
        ),
        Option("max_length", 2048, "max prompt tokens (cut from the left)", min=1),
        Option(
            "turns",
            "single",
            "multi-turn rows: single (NaN with a reason) or sum (rate each user/assistant pair, sum: DEITA)",
            ("single", "sum"),
        ),
    ),
    direction="max",
    needs=("model",),
    components=("argmax", "turns", "truncated"),
)
class Rating(_Judge, LMCriterion):
    def setup(self) -> None:
        o = self.options
        self.lms = [self.lm]
        self.score_tokens = _score_strings(o["score_tokens"], "rating")
        self.token_ids = [score_token_ids(self.lm.tokenizer, self.score_tokens, "rating")]
        vals = o["values"]
        try:
            vals = [float(v) for v in (split_list(vals, "values") if vals is not None else self.score_tokens)]
        except (TypeError, ValueError):
            raise ValueError("rating: option values must be numbers (or give numeric score_tokens)") from None
        if len(vals) != len(self.score_tokens):
            raise ValueError(f"rating: option values needs {len(self.score_tokens)} numbers, got {len(vals)}")
        self.values = np.asarray(vals, dtype=np.float64)
        if "{output}" not in o["prompt"] and "{instruction}" not in o["prompt"]:
            raise ValueError("rating: option prompt must contain {instruction} or {output}")
        self.needs_output = "{output}" in o["prompt"]  # a query-only prompt (DEITA complexity) rates the query
        has_tmpl = bool(getattr(self.lm.tokenizer, "chat_template", None))
        if o["chat"] == "yes" and not has_tmpl:
            raise ValueError("rating: chat=yes but the tokenizer has no chat template")
        self.use_chat = o["chat"] == "yes" or (o["chat"] == "auto" and has_tmpl)

    def prompt_text(self, instruction: str, inp: str, output: str) -> str:
        try:
            body = self.options["prompt"].format(
                instruction=instruction, input=inp, output=output, input_block=("\n" + inp if inp else "")
            )
        except (KeyError, IndexError) as exc:
            raise ValueError(f"rating: option prompt has an unknown field {exc}") from None
        if self.use_chat:
            return self.lm.tokenizer.apply_chat_template(
                [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
            )
        return body

    def _pairs(self, b: Batch, i: int, row: dict) -> list[tuple[str, str, str]]:
        """(instruction, input, output) per rated turn: the row itself, or with ``turns=sum`` each
        user message with the assistant reply that follows it."""
        conv = get_conversation(row, b.ids[i]) if self.options["turns"] == "sum" else None
        if conv is None:
            return [single_turn(row, b.ids[i], self.NAME)]
        pairs = [
            (m["content"], "", conv[j + 1]["content"])
            for j, m in enumerate(conv[:-1])
            if m["role"] == "user" and conv[j + 1]["role"] == "assistant"
        ]
        if not pairs:
            raise Skip("no user turn followed by an assistant reply")
        return pairs

    def items(self, b: Batch, i: int, row: dict) -> list:
        pairs = self._pairs(b, i, row)
        if self.needs_output and any(not out.strip() for _, _, out in pairs):
            raise Skip("empty answer")
        if not self.needs_output and any(not (ins + inp).strip() for ins, inp, _ in pairs):
            raise Skip("empty instruction")
        special = not self.use_chat
        return [("p", (0, self.encode(b, i, self.lm, self.prompt_text(*pr), special))) for pr in pairs]

    def columns(self, b: Batch, results: list[dict]) -> dict:
        score, top = np.full(b.n, np.nan), np.full(b.n, np.nan)
        n_turns = np.zeros(b.n, dtype=np.int64)
        rows = [i for i, got in enumerate(results) if "p" in got]
        if rows:
            probs = torch.stack([p for i in rows for p in results[i]["p"]])
            exp = expected_score(probs, self.values.tolist()).double().cpu().numpy()
            top_v = self.values[np.argmax(probs.double().cpu().numpy(), axis=1)]
            j = 0
            for i in rows:
                t = len(results[i]["p"])
                score[i], top[i], n_turns[i] = exp[j : j + t].sum(), top_v[j : j + t].sum(), t
                j += t
        return {"": score, "argmax": top, "turns": n_turns, "truncated": b.n_cut}
