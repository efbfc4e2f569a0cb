"""Closed-set accuracy: pick the most likely label of a task's small label set.

For an evaluation set (a target task) whose outputs come from a small label set
(``2 <= n <= max_labels`` distinct outputs, counted over the task's rows in the
target set *and* in the pool), the prediction for a prompt is the label with the
highest log-likelihood given the prompt, as lm-evaluation-harness scores
multiple choice: ``ll(label) = sum_t log p(label_t | prompt, label_<t)`` over the
label's tokens. All labels of one example are scored in ONE batched forward pass
(``prompt + label_j`` for every label j, right padded); the per-token
log-probabilities come from :func:`thresher.ops.token_loss` over the LM head.

Label tokens are exactly the answer tokens the proxy trains on
(:func:`thresher.evaluation.lora.answer_tokens`: ``" " + label`` for the plain
template, the label itself for the chat template), followed by EOS when
``eos=True`` (default). The EOS term matters when one label is a token-prefix of
another (``"1"`` and ``"10"`` with per-digit tokens): without it the shorter label's
sum is never below the longer one's. ``eos=False`` is lm-evaluation-harness's
scoring.

Normalisation (``norm``): ``none`` (default; lm-evaluation-harness ``acc``: the
plain sum), ``tokens`` (the sum divided by the number of scored tokens) or
``chars`` (divided by the label's length in characters, as ``acc_norm`` does).
All three are computed from the same pass and reported; ``norm`` picks the one
behind ``accuracy``. Ties go to the first label in sorted order.

Open sets (more than ``max_labels`` distinct outputs, or a single one) keep exact match.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..ops import token_loss
from .lora import answer_tokens

NORMS = ("none", "tokens", "chars")
MAX_LABELS = 20


def _label(x: Any) -> str:
    return str(x).strip()


def label_sets(
    target_groups: Sequence[str],
    target_outputs: Sequence[Any],
    pool_groups: Optional[Sequence[str]] = None,
    pool_outputs: Optional[Sequence[Any]] = None,
    *,
    max_labels: int = MAX_LABELS,
) -> dict[str, Optional[list[str]]]:
    """Per evaluation set: its sorted label set when closed, None when open.

    The distinct (stripped) outputs of the set's target rows and of the pool rows with the
    same group are counted; ``2 <= count <= max_labels`` makes the set closed."""
    if isinstance(max_labels, bool) or not isinstance(max_labels, int) or max_labels < 2:
        raise ValueError(f"max_labels: expected an integer >= 2, got {max_labels!r}")
    seen: dict[str, set] = {str(g): set() for g in target_groups}
    for g, o in zip(target_groups, target_outputs):
        seen[str(g)].add(_label(o))
    if pool_groups is not None and pool_outputs is not None:
        for g, o in zip(pool_groups, pool_outputs):
            s = seen.get(str(g))
            if s is not None and len(s) <= max_labels:  # past the limit the set is open anyway
                s.add(_label(o))
    return {g: (sorted(s) if 2 <= len(s) <= max_labels else None) for g, s in seen.items()}


@dataclass
class ClosedSet:
    """Label sets of the closed evaluation sets and their token ids (see the module docstring)."""

    labels: dict[str, list[str]]  # group -> sorted labels (closed sets only)
    ids: dict[str, list[list[int]]]  # group -> token ids per label
    norm: str = "none"
    eos: bool = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"closed_norm: expected one of {list(NORMS)}, got {self.norm!r}")


def build_closed_set(
    sets: Mapping[str, Optional[list[str]]], tokenizer, *, template: str, norm: str = "none", eos: bool = True
) -> ClosedSet:
    """Tokenise the labels of every closed set (those with a label list in ``sets``)."""
    labels = {g: list(v) for g, v in sets.items() if v}
    end = [tokenizer.eos_token_id] if eos else []
    ids = {g: [answer_tokens(tokenizer, lab, template) + end for lab in v] for g, v in labels.items()}
    for g, toks in ids.items():
        empty = [lab for lab, t in zip(labels[g], toks) if not t]
        if empty:
            raise ValueError(f"closed set {g!r}: label(s) {empty} tokenise to nothing; use eos=True")
    return ClosedSet(labels, ids, norm=norm, eos=eos)


def _cache_arg(trunk) -> str:
    """The name under which the decoder takes a KV cache (``cache`` in newer transformers)."""
    params = inspect.signature(trunk.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def label_loglik(lm, prompt: Sequence[int], labels: Sequence[Sequence[int]]) -> np.ndarray:
    """Summed log-probability of each label's tokens after ``prompt``, [L] float64.

    One pass over the prompt (KV cache), then one batched pass over all labels at once (the cache
    repeated L times; labels right padded): the prompt is never recomputed per label."""
    n_lab, p = len(labels), len(prompt)
    if n_lab == 0:
        return np.zeros(0)
    if p == 0:
        raise ValueError("closed set: an empty prompt cannot condition the first label token")
    width = max(len(lab) for lab in labels)
    if min(len(lab) for lab in labels) == 0:
        raise ValueError("closed set: an empty label has no tokens to score")
    dev, trunk = lm.device, lm.trunk()
    ids = torch.zeros((n_lab, width), dtype=torch.long)
    mask = torch.zeros((n_lab, width), dtype=torch.bool)
    for j, lab in enumerate(labels):
        ids[j, : len(lab)] = torch.tensor(list(lab))
        mask[j, : len(lab)] = True
    with torch.no_grad():
        out = trunk(input_ids=torch.tensor([list(prompt)], device=dev), use_cache=True)
        first = out.last_hidden_state[:, -1:].expand(n_lab, 1, -1)  # predicts every label's first token
        hidden = first
        if width > 1:
            cache = out.past_key_values
            cache.batch_repeat_interleave(n_lab)
            att = torch.cat([torch.ones((n_lab, p), dtype=torch.long), mask[:, :-1].long()], 1).to(dev)
            pos = torch.arange(p, p + width - 1, device=dev).expand(n_lab, -1)
            kw = {_cache_arg(trunk): cache}
            rest = trunk(input_ids=ids[:, :-1].to(dev), attention_mask=att, position_ids=pos, **kw).last_hidden_state
            hidden = torch.cat([first, rest], 1)  # [L, width, H]: position t predicts label token t
        weight = lm.head_weight()
        h = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype)
        res = token_loss(h, weight, ids.reshape(-1).to(dev), mask.reshape(-1).to(dev))
    nll = res.nll.reshape(n_lab, width).double().cpu()
    return -torch.where(mask, nll, torch.zeros_like(nll)).sum(1).numpy()


def _normalised(ll: np.ndarray, labels: Sequence[str], ids: Sequence[Sequence[int]], norm: str) -> np.ndarray:
    if norm == "tokens":
        return ll / np.array([len(t) for t in ids], dtype=np.float64)
    if norm == "chars":
        return ll / np.array([max(1, len(s)) for s in labels], dtype=np.float64)
    return ll


def closed_set_predict(
    lm, prompts: Sequence[Sequence[int]], groups: Sequence[str], answers: Sequence[Any], closed: ClosedSet
) -> dict[str, Any]:
    """Per example of a closed set: the predicted label and correctness under every normalisation.

    Returns ``{"closed": bool [n], "correct": {norm: bool [n]}, "pred": {norm: list}, "loglik": list}``;
    examples of open sets have ``closed`` False, correctness False and prediction None."""
    n = len(prompts)
    is_closed = np.array([str(g) in closed.labels for g in groups], dtype=bool)
    correct = {k: np.zeros(n, dtype=bool) for k in NORMS}
    pred: dict[str, list] = {k: [None] * n for k in NORMS}
    loglik: list = [None] * n
    for i in np.flatnonzero(is_closed):
        g = str(groups[i])
        labels, ids = closed.labels[g], closed.ids[g]
        ll = label_loglik(lm, prompts[i], ids)
        loglik[i] = ll.tolist()
        gold = _label(answers[i])
        for k in NORMS:
            best = labels[int(np.argmax(_normalised(ll, labels, ids, k)))]
            pred[k][i] = best
            correct[k][i] = best == gold
    return {"closed": is_closed, "correct": correct, "pred": pred, "loglik": loglik}


def add_closed_accuracy(
    m: dict[str, Any], lm, enc, answers: Sequence[Any], groups: Sequence[str], closed: Optional[ClosedSet]
) -> dict[str, Any]:
    """Closed-set accuracy into a :func:`thresher.evaluation.lora.measure` summary ``m`` (in place).

    Per closed set: ``closed`` True, ``closed_accuracy`` {norm: accuracy} and ``accuracy`` = the
    closed-set accuracy under ``closed.norm``; open sets keep exact match (``closed`` False). The
    top level gets ``accuracy`` (per example: closed-set correctness where closed, exact match
    elsewhere), ``correct`` to match, ``closed_accuracy`` over the closed examples and ``closed_sets``."""
    groups = [str(g) for g in groups]
    if closed is None or not closed.labels:
        for v in m["sets"].values():
            v["closed"] = False
        m["closed_sets"] = []
        return m
    res = closed_set_predict(lm, enc.prompt, groups, answers, closed)
    is_closed = res["closed"]
    exact = np.asarray(m["correct"], dtype=bool)
    used = np.where(is_closed, res["correct"][closed.norm], exact)
    garr = np.asarray(groups)
    for g, v in m["sets"].items():
        v["closed"] = g in closed.labels
        if v["closed"]:
            sel = garr == g
            v["closed_accuracy"] = {k: float(res["correct"][k][sel].mean()) for k in NORMS}
            v["accuracy"] = v["closed_accuracy"][closed.norm]
            v["labels"] = len(closed.labels[g])
    m["accuracy"] = float(used.mean()) if len(used) else float("nan")
    m["correct"] = used.tolist()
    m["closed_sets"] = sorted(g for g in m["sets"] if g in closed.labels)
    if is_closed.any():
        m["closed_accuracy"] = {k: float(res["correct"][k][is_closed].mean()) for k in NORMS}
    m["closed_norm"], m["closed_eos"] = closed.norm, closed.eos
    for ex_i, ex in enumerate(m.get("examples", [])):
        if is_closed[ex_i]:
            ex["closed_prediction"] = res["pred"][closed.norm][ex_i]
    return m


__all__ = [
    "NORMS",
    "MAX_LABELS",
    "ClosedSet",
    "label_sets",
    "build_closed_set",
    "label_loglik",
    "closed_set_predict",
    "add_closed_accuracy",
]
