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
w_m proportional to model m's parameter count and normalised to sum 1 (the
reference code's hard-coded weights do not sum to 1, and its sum runs over the
K prompts instead of the L levels, which only agree when K = L = 5; neither is
copied). The prompt layout follows the reference: ``rating prompt + "\\n" +
"Instruction:" + instruction + "\\n" + "Response:" + output + "\\nThe answer is: \\n"``.

**rating** (AlpaGasus / DEITA style): expected score sum_s value_s * p_s over
the score tokens at the first generated position of a judge prompt (optionally
wrapped in the model's chat template). A score token that is not a single token
of the tokenizer is an error, never a silent default.

Prompts longer than ``max_length`` tokens are cut from the left (the end of a
judge prompt is what the readout depends on) and the cut is reported.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..features.tokens import last_position_hidden
from ..frames import as_pandas
from ..registry import CRITERIA, Option
from ..render import SampleError, get_conversation, get_str
from .loss import MODEL_OPTIONS, VERSION, sample_ids

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


def _split_list(v: Any, name: str) -> list:
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    if isinstance(v, (list, tuple)):
        return list(v)
    raise ValueError(f"option {name}: expected a comma-separated string or a list, got {type(v).__name__}")


def score_token_ids(tokenizer: Any, tokens: Sequence[str], who: str) -> list[int]:
    """Single-token ids of the score strings; ValueError naming a string that is not one token."""
    ids = []
    for s in tokens:
        enc = tokenizer.encode(str(s), add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"{who}: score token {s!r} is {len(enc)} tokens for this tokenizer; "
                             "give score strings that are single tokens")
        ids.append(enc[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"{who}: score tokens {list(tokens)} map to repeated token ids {ids}")
    return ids


def _encode_left_cut(tokenizer: Any, text: str, max_length: Optional[int], special: bool) -> tuple[list[int], int]:
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        return list(ids[-max_length:]), len(ids) - max_length
    return list(ids), 0


def _pair(row: dict, sid: str) -> tuple[str, str, str]:
    if get_conversation(row, sid) is not None:
        raise SampleError(f"sample {sid!r}: multi-turn samples are not supported by this criterion "
                          "(score each turn as its own row)")
    return (get_str(row, "instruction", sid, required=True), get_str(row, "input", sid, required=False),
            get_str(row, "output", sid, required=True))


def _ckey(name: str, options: dict, fingerprints: list[str]) -> str:
    opts = {k: v for k, v in options.items()
            if k not in ("device", "batch_tokens", "batching", "backend", "share_prefix")}
    opts["model"] = fingerprints
    opts.pop("models", None)
    blob = json.dumps({"criterion": name, "version": VERSION, "options": opts}, sort_keys=True, default=str)
    return f"{name}-v{VERSION}-" + hashlib.sha256(blob.encode()).hexdigest()[:24]


# ------------------------------------------------------------------ SelectIT math
def selectit_token_scores(p: np.ndarray) -> np.ndarray:
    """S_tok for probabilities p [..., L] (renormalised over the L score levels)."""
    p = np.asarray(p, dtype=np.float64)
    L = p.shape[-1]
    if L < 2:
        raise ValueError("p: SelectIT needs at least 2 score levels")
    arg = np.argmax(p, axis=-1)
    pmax = np.max(p, axis=-1)
    return (arg + 1) * (pmax[..., None] - p).sum(-1) / (L - 1)


def selectit_sentence_scores(s_tok: np.ndarray, alpha: float) -> np.ndarray:
    """S_sent from S_tok [N, K]: mean_k / (1 + alpha * std_k) (population std)."""
    s_tok = np.asarray(s_tok, dtype=np.float64)
    return s_tok.mean(-1) / (1.0 + alpha * s_tok.std(-1))


@CRITERIA.register(
    "selectit",
    doc="SelectIT self-reflection score: K rating prompts, score-token probabilities at the last position; "
        "token level (argmax+1)*mean(p_max-p), sentence level mean/(1+alpha*std) over prompts, model level "
        "weighted by parameter count over several models. Higher = better.",
    options=[o for o in MODEL_OPTIONS if o.name != "model"] + [
        Option("models", "default", "comma-separated model specs (default | path | HF id); several = model level"),
        Option("model_weights", "params", "params: proportional to parameter count; or comma-separated weights"),
        Option("prompts", None, "rating prompts: a list, or a text file with one prompt per line "
                                "(default: 5 built-in prompts)"),
        Option("k", None, "use the first k prompts (default: all)"),
        Option("alpha", 0.2, "sentence-level uncertainty weight"),
        Option("score_tokens", "1,2,3,4,5", "the score strings, lowest first (single tokens each)"),
        Option("max_length", 2048, "max prompt tokens (cut from the left)"),
    ],
    direction="max",
    needs=("model",),
    components=("sentence", "token", "truncated"),
)
class SelectIT:
    NAME = "selectit"

    def __init__(self, **options: Any) -> None:
        from ..models import shared_lm

        self.options = o = CRITERIA.get(self.NAME).resolve_options(options)
        specs = o["models"] if not isinstance(o["models"], str) else _split_list(o["models"], "models")
        if not isinstance(specs, list):
            specs = [specs]
        if not specs:
            raise ValueError("selectit: option models is empty")
        self.lms = [shared_lm(s, dtype=o["dtype"], device=o["device"]) for s in specs]
        prompts = o["prompts"]
        if prompts is None:
            prompts = list(SELECTIT_PROMPTS)
        elif isinstance(prompts, str):
            pth = Path(prompts).expanduser()
            if not pth.is_file():
                raise ValueError(f"selectit: option prompts: file {prompts!r} does not exist")
            prompts = [ln.rstrip("\n") for ln in pth.read_text().splitlines() if ln.strip()]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("selectit: option prompts must hold at least one string")
        k = o["k"]
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(prompts):
                raise ValueError(f"selectit: option k must be an int in [1, {len(prompts)}], got {k!r}")
            prompts = prompts[:k]
        self.prompts = prompts
        alpha = o["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise ValueError(f"selectit: option alpha must be a number >= 0, got {alpha!r}")
        self.score_tokens = [str(s) for s in _split_list(o["score_tokens"], "score_tokens")]
        if len(self.score_tokens) < 2:
            raise ValueError("selectit: option score_tokens needs at least 2 scores")
        self.token_ids = [score_token_ids(lm.tokenizer, self.score_tokens, f"selectit ({lm.spec})")
                          for lm in self.lms]
        w = o["model_weights"]
        if w == "params":
            counts = np.array([sum(p.numel() for p in lm.model.parameters()) for lm in self.lms], dtype=np.float64)
        else:
            try:
                counts = np.array([float(x) for x in _split_list(w, "model_weights")], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"selectit: option model_weights must be 'params' or numbers, got {w!r}") from None
            if counts.size != len(self.lms) or (counts < 0).any() or counts.sum() <= 0:
                raise ValueError(f"selectit: option model_weights needs {len(self.lms)} non-negative numbers "
                                 f"with a positive sum, got {w!r}")
        self.weights = counts / counts.sum()

    def cache_key(self) -> str:
        return _ckey(self.NAME, {**self.options, "prompts": self.prompts}, [lm.fingerprint for lm in self.lms])

    def prompt_texts(self, instruction: str, inp: str, output: str) -> list[str]:
        ins = instruction + ("\n" + inp if inp else "")
        return [rp + "\n" + "Instruction:" + ins + "\n" + "Response:" + output + "\nThe answer is: \n"
                for rp in self.prompts]

    def probabilities(self, df) -> tuple[np.ndarray, list[str], np.ndarray]:
        """p [N, M models, K prompts, L levels] (NaN for bad rows), reasons, tokens cut."""
        from ..ops import score_at_position

        ids = sample_ids(df)
        n, K, L, M = len(df), len(self.prompts), len(self.score_tokens), len(self.lms)
        p = np.full((n, M, K, L), np.nan)
        reason = [""] * n
        cut = np.zeros(n, dtype=np.int64)
        texts: dict[int, list[str]] = {}
        for i, row in enumerate(df.to_dict("records")):
            try:
                ins, inp, out = _pair(row, ids[i])
            except SampleError as exc:
                reason[i] = str(exc)
                continue
            if not out.strip():
                reason[i] = "empty answer"
                continue
            texts[i] = self.prompt_texts(ins, inp, out)
        good = sorted(texts)
        for m, lm in enumerate(self.lms):
            seqs, where = [], []
            for i in good:
                for k, t in enumerate(texts[i]):
                    s, c = _encode_left_cut(lm.tokenizer, t, self.options["max_length"], True)
                    cut[i] = max(cut[i], c)
                    seqs.append(s)
                    where.append((i, k))
            if not seqs:
                continue
            h = last_position_hidden(lm, seqs, batch_tokens=self.options["batch_tokens"])
            probs = score_at_position(h, lm.head_weight(), self.token_ids[m]).double().cpu().numpy()
            for (i, k), row_p in zip(where, probs):
                p[i, m, k] = row_p
        return p, reason, cut

    def __call__(self, batch: Any):
        import pandas as pd

        df = as_pandas(batch)
        ids = sample_ids(df)
        p, reason, cut = self.probabilities(df)
        s_tok = selectit_token_scores(p)  # [N, M, K]
        s_sent = selectit_sentence_scores(s_tok, float(self.options["alpha"]))  # [N, M]
        s_model = (s_sent * self.weights[None, :]).sum(-1)
        cols = {"id": ids, "selectit": s_model, "selectit.sentence": s_sent[:, 0], "selectit.token": s_tok[:, 0, 0]}
        if len(self.lms) > 1:
            for m in range(len(self.lms)):
                cols[f"selectit.sentence_m{m}"] = s_sent[:, m]
        cols["selectit.truncated"] = cut
        cols["selectit.reason"] = reason
        return pd.DataFrame(cols)


# ------------------------------------------------------------------ rating
@CRITERIA.register(
    "rating",
    doc="Judge-prompt expected score (AlpaGasus/DEITA style): sum_s value_s * softmax(z[score tokens]) at the "
        "first generated position of a configurable prompt; no generation. Higher = better.",
    options=list(MODEL_OPTIONS) + [
        Option("prompt", RATING_PROMPT, "judge prompt; fields {instruction} {input} {input_block} {output}"),
        Option("score_tokens", "1,2,3,4,5,6", "the score strings (single tokens each)"),
        Option("values", None, "numeric value of each score token (default: the tokens read as numbers)"),
        Option("chat", "auto", "wrap the prompt in the model's chat template: auto | yes | no",
               choices=("auto", "yes", "no")),
        Option("max_length", 2048, "max prompt tokens (cut from the left)"),
    ],
    direction="max",
    needs=("model",),
    components=("argmax", "truncated"),
)
class Rating:
    NAME = "rating"

    def __init__(self, **options: Any) -> None:
        from ..models import shared_lm

        self.options = o = CRITERIA.get(self.NAME).resolve_options(options)
        self.lm = shared_lm(o["model"], dtype=o["dtype"], device=o["device"])
        self.score_tokens = [str(s) for s in _split_list(o["score_tokens"], "score_tokens")]
        if len(self.score_tokens) < 2:
            raise ValueError("rating: option score_tokens needs at least 2 scores")
        self.token_ids = score_token_ids(self.lm.tokenizer, self.score_tokens, "rating")
        vals = o["values"]
        try:
            vals = [float(v) for v in (_split_list(vals, "values") if vals is not None else self.score_tokens)]
        except (TypeError, ValueError):
            raise ValueError("rating: option values must be numbers (or give numeric score_tokens)") from None
        if len(vals) != len(self.score_tokens):
            raise ValueError(f"rating: option values needs {len(self.score_tokens)} numbers, got {len(vals)}")
        self.values = np.asarray(vals, dtype=np.float64)
        if not isinstance(o["prompt"], str) or "{output}" not in o["prompt"]:
            raise ValueError("rating: option prompt must be a string containing {output}")
        has_tmpl = bool(getattr(self.lm.tokenizer, "chat_template", None))
        if o["chat"] == "yes" and not has_tmpl:
            raise ValueError("rating: chat=yes but the tokenizer has no chat template")
        self.use_chat = o["chat"] == "yes" or (o["chat"] == "auto" and has_tmpl)

    def cache_key(self) -> str:
        return _ckey(self.NAME, self.options, [self.lm.fingerprint])

    def prompt_text(self, instruction: str, inp: str, output: str) -> str:
        try:
            body = self.options["prompt"].format(instruction=instruction, input=inp, output=output,
                                                 input_block=("\n" + inp if inp else ""))
        except (KeyError, IndexError) as exc:
            raise ValueError(f"rating: option prompt has an unknown field {exc}") from None
        if self.use_chat:
            return self.lm.tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                         add_generation_prompt=True)
        return body

    def __call__(self, batch: Any):
        import pandas as pd

        from ..ops import expected_score, score_at_position

        df = as_pandas(batch)
        ids = sample_ids(df)
        n = len(df)
        reason = [""] * n
        cut = np.zeros(n, dtype=np.int64)
        seqs, where = [], []
        for i, row in enumerate(df.to_dict("records")):
            try:
                ins, inp, out = _pair(row, ids[i])
            except SampleError as exc:
                reason[i] = str(exc)
                continue
            if not out.strip():
                reason[i] = "empty answer"
                continue
            s, c = _encode_left_cut(self.lm.tokenizer, self.prompt_text(ins, inp, out), self.options["max_length"],
                                    not self.use_chat)
            cut[i] = c
            seqs.append(s)
            where.append(i)
        score = np.full(n, np.nan)
        top = np.full(n, np.nan)
        if seqs:
            h = last_position_hidden(self.lm, seqs, batch_tokens=self.options["batch_tokens"])
            probs = score_at_position(h, self.lm.head_weight(), self.token_ids)
            exp = expected_score(probs, self.values.tolist()).double().cpu().numpy()
            pn = probs.double().cpu().numpy()
            for j, i in enumerate(where):
                score[i] = exp[j]
                top[i] = self.values[int(np.argmax(pn[j]))]
        return pd.DataFrame({"id": ids, "rating": score, "rating.argmax": top, "rating.truncated": cut,
                             "rating.reason": reason})
