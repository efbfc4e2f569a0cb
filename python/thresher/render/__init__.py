"""Rendering samples into text with answer spans, and token alignment.

A sample (one row of the sample table, see :mod:`thresher.registry`) becomes a
:class:`Rendered`: the full text fed to the model and the character spans of
the answer(s) to score. Templates:

* ``chat``   - the tokenizer's own chat template (user turn = instruction, plus
  ``"\\n\\n" + input`` when there is an input; the assistant turn = output).
  Multi-turn samples (``conversation``) always go through the chat template
  (or a plain ``role: content`` layout when the tokenizer has none) and every
  assistant turn is an answer span. Tool turns (``tool``, ``function``, ...) go to
  the template as role ``tool``; a template without a tool role gets them as
  user-side context (``"Tool result:\n" + content`` as a user turn).
* ``alpaca`` - the Stanford Alpaca prompts (with / without input) followed by
  the output (the Cherry LLM ``alpaca`` prompt).
* ``wiz``    - Cherry LLM's ``wiz`` prompt: ``instruction [+ "\\nInput:" + input]
  + "\\n\\n### Response:" + output``.
* ``plain``  - ``"{instruction}\\n{input}\\n"`` (``"{instruction}\\n"`` without
  input) followed by the output (Superfiltering).

Token alignment comes from ONE tokenisation of the full text with the offset
mapping: a token is an answer token when it *starts* inside an answer span
(:func:`tokenize_rendered`). A token that straddles the prompt/answer boundary
(e.g. ``":("`` when the prompt ends with ``":"`` and the answer starts with
``"("``) belongs to the prompt, which is what Cherry LLM's count of the
separately tokenised prompt yields. The prompt is never re-tokenised separately.

Truncation (:func:`tokenize_rendered`, ``max_length``): ``"right"`` keeps the
first ``max_length`` tokens (the end of the answer is cut, Cherry's policy);
``"left"`` drops tokens from the start of the prompt first (keeping the answer
whole while it fits, then cutting its end). The number of tokens cut and of
answer tokens lost is reported in :class:`Tokenized`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..io.schema import ROLES as SCHEMA_ROLES
from ..io.schema import turn_content

TEMPLATES = ("chat", "alpaca", "wiz", "plain")
TRUNCATION = ("right", "left")

ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


class SampleError(ValueError):
    """A sample that cannot be rendered; the message names the sample id and field."""


@dataclass
class Rendered:
    """Text and the character spans [start, end) of the answers to score."""

    id: str
    text: str
    spans: list[tuple[int, int]]
    prompt: str = ""  # the text before the first answer (single-turn: the rendered prompt)
    special_in_text: bool = False  # the text already holds the special tokens (chat template)

    @property
    def answers(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]


@dataclass
class Tokenized:
    """One tokenised sequence with a per-token answer mask and its truncation report.

    ``score[t]`` is True when token t is an answer token that is scored (its loss
    is predicted from position t-1, so token 0 is never scored). ``span_of[t]``
    is the index of the answer span token t belongs to (-1 for prompt tokens).
    """

    ids: list[int]
    score: list[bool]
    span_of: list[int]
    offsets: list[tuple[int, int]]
    n_total: int  # tokens before truncation
    n_cut: int  # tokens removed by truncation
    answer_total: int  # answer tokens before truncation
    answer_kept: int  # answer tokens scored after truncation
    kept_chars: list[int] = field(default_factory=list)  # per span: answer characters kept (aligned passes)

    @property
    def truncated(self) -> bool:
        return self.n_cut > 0


# ------------------------------------------------------------------ fields
def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def get_str(row: Any, name: str, sid: str, *, required: bool) -> str:
    """A string field of a row (mapping or pandas row); SampleError naming id+field."""
    try:
        v = row[name]
    except (KeyError, IndexError):
        v = None
    if _is_missing(v):
        if required:
            raise SampleError(f"sample {sid!r}: missing field {name!r}")
        return ""
    if not isinstance(v, str):
        raise SampleError(f"sample {sid!r}: field {name!r} must be a string, got {type(v).__name__}")
    return v


# every role a turn may carry (the reader's table, see thresher.io.schema.ROLES) -> system/user/assistant/tool
ROLES = {**SCHEMA_ROLES, "bot": "assistant"}
TOOL_PREFIX = "Tool result:\n"  # a tool turn rendered as user-side context (a template without a tool role)


def _conversation_field(row: Any) -> Optional[tuple[str, Any]]:
    for key in ("conversation", "messages", "conversations"):
        try:
            v = row[key]
        except (KeyError, IndexError):
            continue
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if hasattr(v, "tolist") and not isinstance(v, (list, str)):
            v = v.tolist()
        if isinstance(v, (list, tuple)) and len(v) == 0:
            continue
        return key, v
    return None


def get_conversation(row: Any, sid: str) -> Optional[list[dict]]:
    """The ``conversation`` (or ``messages``/``conversations``) field normalised to
    [{role, content}] with roles system, user, assistant and tool (as the reader maps them:
    ``developer`` -> system, ``function``/``observation``/``ipython`` -> tool, ...), or None when
    the sample is single-turn. Content may be a string, a list of text parts, or null beside
    ``tool_calls`` (the calls as JSON), as the reader accepts it."""
    found = _conversation_field(row)
    if found is None:
        return None
    key, v = found
    if not isinstance(v, (list, tuple)):
        raise SampleError(f"sample {sid!r}: field {key!r} must be a list of messages, got {type(v).__name__}")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise SampleError(f"sample {sid!r}: {key}[{i}] must be an object, got {type(m).__name__}")
        role = m.get("role", m.get("from"))
        if not isinstance(role, str) or role.lower() not in ROLES:
            raise SampleError(f"sample {sid!r}: {key}[{i}].role {role!r} not one of {', '.join(sorted(ROLES))}")
        content = m.get("content", m.get("value"))
        if not isinstance(content, str):
            try:
                content = turn_content(m, i, file=None, line=None, field=key)
            except InputError:
                raise SampleError(
                    f"sample {sid!r}: {key}[{i}].content must be a string, got {type(content).__name__}"
                ) from None
        out.append({"role": ROLES[role.lower()], "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise SampleError(f"sample {sid!r}: field {key!r} has no assistant turn to score")
    return out


# ------------------------------------------------------------------ rendering
def render_prompt(instruction: str, input: str, template: str, tokenizer: Any = None) -> str:
    """The prompt text a single-turn sample's answer follows (no answer)."""
    if template == "alpaca":
        return (ALPACA_INPUT if input else ALPACA_NO_INPUT).format_map({"instruction": instruction, "input": input})
    if template == "wiz":
        return instruction + ("\nInput:" + input if input else "") + "\n\n### Response:"
    if template == "plain":
        return instruction + "\n" + (input + "\n" if input else "")
    if template == "chat":
        r = _render_chat(
            [
                {"role": "user", "content": instruction + ("\n\n" + input if input else "")},
                {"role": "assistant", "content": "\x00"},
            ],
            tokenizer,
            "?",
        )
        return r.text[: r.spans[0][0]]
    raise ValueError(f"template: {template!r} not one of {TEMPLATES}")


def render_sample(
    row: Any, template: str = "alpaca", tokenizer: Any = None, *, sid: Optional[str] = None, allow_empty: bool = True
) -> Rendered:
    """Render one row. Raises :class:`SampleError` (a ValueError) naming the id and field."""
    if template not in TEMPLATES:
        raise ValueError(f"template: {template!r} not one of {TEMPLATES}")
    if sid is None:
        try:
            sid = str(row["id"])
        except (KeyError, IndexError):
            sid = "?"
    conv = get_conversation(row, sid)
    if conv is not None:
        return _render_chat(conv, tokenizer, sid)
    instruction = get_str(row, "instruction", sid, required=True)
    inp = get_str(row, "input", sid, required=False)
    output = get_str(row, "output", sid, required=True)
    if template == "chat":
        user = instruction + ("\n\n" + inp if inp else "")
        return _render_chat(
            [{"role": "user", "content": user}, {"role": "assistant", "content": output}], tokenizer, sid
        )
    prompt = render_prompt(instruction, inp, template)
    text = prompt + output
    return Rendered(sid, text, [(len(prompt), len(text))], prompt=prompt)


def _render_chat(messages: list[dict], tokenizer: Any, sid: str) -> Rendered:
    """Render turns through the tokenizer's chat template (``role: content`` lines without one).

    Tool turns go to the template as role ``tool``; a template that has no tool role (it raises,
    or drops the turn's text) gets them as user-side context instead: each tool turn becomes a
    user turn ``"Tool result:\n" + content``, merged with an adjacent user turn (templates that
    require alternating user/assistant turns then accept them). Only assistant turns are scored."""
    tmpl = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not tmpl:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return _locate(text, messages, sid, special=False)
    if any(m["role"] == "tool" for m in messages):
        try:
            return _locate(_apply_template(tokenizer, messages, sid), messages, sid, special=True)
        except SampleError:  # no tool role in this template: the tool turns as user-side context
            messages = tools_as_user(messages)
    return _locate(_apply_template(tokenizer, messages, sid), messages, sid, special=True)


def tools_as_user(messages: list[dict]) -> list[dict]:
    """Tool turns as user turns (``TOOL_PREFIX`` + content), adjacent user turns merged (blank line)."""
    out: list[dict] = []
    for m in messages:
        if m["role"] == "tool":
            m = {"role": "user", "content": TOOL_PREFIX + m["content"]}
        if out and m["role"] == "user" and out[-1]["role"] == "user":
            out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(dict(m))
    return out


def _apply_template(tokenizer: Any, messages: list[dict], sid: str) -> str:
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    except Exception as exc:
        raise SampleError(f"sample {sid!r}: the chat template failed ({type(exc).__name__}: {exc})") from None


def _locate(text: str, messages: list[dict], sid: str, *, special: bool) -> Rendered:
    """The assistant turns' character spans in ``text`` (each turn found verbatim, in order)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, m in enumerate(messages):
        c = m["content"]
        j = text.find(c, pos) if c else pos
        if j < 0 and c.strip():
            c = c.strip()
            j = text.find(c, pos)
        if j < 0:
            raise SampleError(f"sample {sid!r}: message {i} not found verbatim in the chat template's output")
        if m["role"] == "assistant":
            spans.append((j, j + len(c)))
        pos = j + len(c)
    prompt = text[: spans[0][0]] if spans else text
    return Rendered(sid, text, spans, prompt=prompt, special_in_text=special)


def _span_of_walk(offs: list, spans: Sequence) -> list[int]:
    """:func:`_span_of` as a walk over the tokens (the reference; used when spans are not in order)."""
    span_of = [-1] * len(offs)
    si = 0
    for t, (a, b) in enumerate(offs):
        if b <= a:  # special tokens have empty offsets
            continue
        while si < len(spans) and spans[si][1] <= a:
            si += 1
        if si < len(spans) and spans[si][0] <= a < spans[si][1]:
            span_of[t] = si
    return span_of


def _span_of(offs: list, spans: Sequence) -> list[int]:
    """Per token, the index of the answer span its first character falls in (-1: none). The walk
    of :func:`_span_of_walk` in array form: its span pointer, which never moves back, is the running
    maximum of each token's first span ending after the token's first character."""
    n = len(offs)
    if n == 0 or not spans:
        return [-1] * n
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    starts, ends = sp[:, 0], sp[:, 1]
    if np.any(ends[1:] < ends[:-1]):
        return _span_of_walk(offs, spans)
    o = np.asarray(offs, dtype=np.int64).reshape(n, 2)
    a, valid = o[:, 0], o[:, 1] > o[:, 0]  # special tokens have empty offsets: skipped by the walk
    si = np.maximum.accumulate(np.where(valid, np.searchsorted(ends, a, side="right"), 0))
    at = np.minimum(si, len(sp) - 1)
    inside = valid & (si < len(sp)) & (starts[at] <= a) & (a < ends[at])
    return np.where(inside, si, -1).tolist()


def _answer_mask(
    span_of: list, offs: list, spans: Sequence, skip_first: bool, keep_chars: Optional[Sequence[int]]
) -> list[bool]:
    """Which tokens are scored: answer tokens after the first position, minus the optional exclusions
    (the first token of each span; tokens starting ``keep_chars[s]`` characters or more into span s)."""
    s = np.asarray(span_of, dtype=np.int64)
    ans = s >= 0
    score = ans.copy()
    score[:1] = False
    if skip_first and ans.any():
        at = np.flatnonzero(ans)
        _, first = np.unique(s[at], return_index=True)
        score[at[first]] = False
    if keep_chars is not None and ans.any():
        starts = np.asarray([sp[0] for sp in spans], dtype=np.int64)
        limit = starts + np.asarray(keep_chars, dtype=np.int64)
        a = np.asarray([o[0] for o in offs], dtype=np.int64)
        score[ans & (a >= limit[np.where(ans, s, 0)])] = False
    return score.tolist()


def _kept_positions(span_of: list, n_total: int, max_length: int, truncation: str, n_prepended: int) -> list[int]:
    """Token positions kept by truncation to ``max_length``."""
    if truncation == "right":
        return list(range(max_length))
    # left: drop prompt tokens from the start (after any prepended ids / first token), then the answer end
    n_cut = n_total - max_length
    first_ans = next((t for t, s in enumerate(span_of) if s >= 0), n_total)
    head = min(max(n_prepended, 1), max_length)
    drop = min(n_cut, max(first_ans - head - 1, 0))  # keep the token right before the answer
    rest = n_cut - drop
    return list(range(0, head)) + list(range(head + drop, n_total - rest))


# ------------------------------------------------------------------ tokenisation
def tokenize_rendered(
    r: Rendered,
    tokenizer: Any,
    *,
    max_length: Optional[int] = None,
    truncation: str = "right",
    add_special_tokens: Optional[bool] = None,
    prepend_ids: Sequence[int] = (),
    skip_first_answer_token: bool = False,
    keep_chars: Optional[Sequence[int]] = None,
) -> Tokenized:
    """Tokenise ``r.text`` once (offsets) and mark its answer tokens.

    ``prepend_ids``: token ids placed before the text (e.g. BOS for a direct pass).
    ``skip_first_answer_token``: the first token of each span is not scored.
    ``keep_chars``: per span, score only tokens that start within the first
    ``keep_chars[i]`` characters of the span (aligns a second pass to the
    answer characters the first pass kept after truncation).
    """
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation: {truncation!r} not one of {TRUNCATION}")
    if add_special_tokens is None:
        add_special_tokens = not r.special_in_text
    enc = tokenizer(r.text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(prepend_ids) + list(enc["input_ids"])
    offs = [(0, 0)] * len(prepend_ids) + [tuple(o) for o in enc["offset_mapping"]]
    spans = r.spans
    span_of = _span_of(offs, spans)
    score = _answer_mask(span_of, offs, spans, skip_first_answer_token, keep_chars)
    answer_total = sum(score)
    n_total = len(ids)
    n_cut = 0
    if max_length is not None and n_total > max_length:
        n_cut = n_total - max_length
        keep = _kept_positions(span_of, n_total, max_length, truncation, len(prepend_ids))
        ids, offs = [ids[i] for i in keep], [offs[i] for i in keep]
        span_of, score = [span_of[i] for i in keep], [score[i] for i in keep]
        score[0] = False
    kept_chars = []
    for s, (a, b) in enumerate(spans):
        ends = [offs[t][1] for t in range(len(ids)) if span_of[t] == s and score[t]]
        kept_chars.append(max(0, min(b, max(ends)) - a) if ends else 0)
    return Tokenized(ids, score, span_of, offs, n_total, n_cut, answer_total, sum(score), kept_chars)
