"""Rendering: templates, answer spans, one-tokenisation alignment, truncation policies."""

from __future__ import annotations

import numpy as np
import pytest

from thresher.models import byte_tokenizer, load_tokenizer
from thresher.render import (
    ALPACA_INPUT,
    ALPACA_NO_INPUT,
    Rendered,
    SampleError,
    render_prompt,
    render_sample,
    tokenize_rendered,
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("default")


def test_alpaca_with_and_without_input():
    r = render_sample({"id": "a", "instruction": "Add.", "input": "2 and 3", "output": "5"}, "alpaca")
    assert r.text == ALPACA_INPUT.format(instruction="Add.", input="2 and 3") + "5"
    assert r.answers == ["5"]
    r2 = render_sample({"id": "b", "instruction": "Add.", "output": "5"}, "alpaca")
    assert r2.text == ALPACA_NO_INPUT.format(instruction="Add.") + "5"
    assert r2.spans == [(len(r2.text) - 1, len(r2.text))]


def test_plain_and_wiz():
    r = render_sample({"id": "a", "instruction": "Q", "input": "I", "output": "A"}, "plain")
    assert r.text == "Q\nI\nA" and r.answers == ["A"]
    r = render_sample({"id": "a", "instruction": "Q", "input": "", "output": "A"}, "plain")
    assert r.text == "Q\nA"
    r = render_sample({"id": "a", "instruction": "Q", "input": "I", "output": "A"}, "wiz")
    assert r.text == "Q\nInput:I\n\n### Response:A"


def test_chat_template_single_and_multi_turn(tok):
    r = render_sample({"id": "c", "instruction": "Hi there", "input": "", "output": "Hello!"}, "chat", tok)
    assert r.answers == ["Hello!"]
    assert r.text.startswith("<|im_start|>") and r.special_in_text
    conv = [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"from": "human", "value": "three"},
        {"from": "gpt", "value": "four"},
    ]
    r = render_sample({"id": "m", "conversation": conv}, "alpaca", tok)  # conversation overrides the template
    assert r.answers == ["two", "four"]
    tk = tokenize_rendered(r, tok)
    scored = tok.decode([i for i, s in zip(tk.ids, tk.score) if s])
    assert scored == "twofour"
    assert tk.ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tk.ids.count(tk.ids[0]) == 5


def test_answer_alignment_from_one_tokenisation(tok):
    rows = [
        {"id": "1", "instruction": "What is the capital of France?", "output": " Paris, of course."},
        {"id": "2", "instruction": "Continue", "output": "ing the word"},
        {"id": "4", "instruction": "Which?", "output": "(b)"},  # ':(' merges across the boundary
        {"id": "3", "instruction": "Smile", "output": "😀 ok"},
    ]
    for row in rows:
        for template in ("alpaca", "plain", "wiz", "chat"):
            r = render_sample(row, template, tok)
            tk = tokenize_rendered(r, tok)
            a, b = r.spans[0]
            idx = [t for t, s in enumerate(tk.score) if s]
            assert idx, (row, template)
            # scored tokens are contiguous and together cover exactly the answer characters
            assert idx == list(range(idx[0], idx[-1] + 1))
            # exactly the tokens that start inside the answer are scored; the last ends with it
            starts = [t for t, (x, y) in enumerate(tk.offsets) if y > x and a <= x < b and t > 0]
            assert idx == starts
            assert tk.offsets[idx[-1]][1] == b
            assert tk.offsets[idx[0]][0] - a < 2  # at most a boundary-straddling first character
            assert tk.answer_kept == len(idx) and tk.n_cut == 0


def test_truncation_right_and_left(tok):
    row = {"id": "t", "instruction": "word " * 40, "output": "alpha beta gamma delta"}
    r = render_sample(row, "alpaca", tok)
    full = tokenize_rendered(r, tok)
    n_ans = full.answer_kept
    cut = 2
    tr = tokenize_rendered(r, tok, max_length=len(full.ids) - cut, truncation="right")
    assert tr.n_cut == cut and tr.answer_kept == n_ans - cut and len(tr.ids) == len(full.ids) - cut
    assert tr.kept_chars[0] < len("alpha beta gamma delta")
    tl = tokenize_rendered(r, tok, max_length=len(full.ids) - 10, truncation="left")
    assert tl.n_cut == 10 and tl.answer_kept == n_ans and len(tl.ids) == len(full.ids) - 10
    assert tl.ids[-n_ans:] == full.ids[-n_ans:]
    assert tl.kept_chars[0] == len("alpha beta gamma delta")
    # answer truncated away
    gone = tokenize_rendered(r, tok, max_length=5, truncation="right")
    assert gone.answer_kept == 0 and gone.answer_total == n_ans and gone.truncated
    # left truncation with a budget smaller than the answer: keeps the answer's start
    tiny = tokenize_rendered(r, tok, max_length=4, truncation="left")
    assert len(tiny.ids) == 4 and 0 < tiny.answer_kept < n_ans


def test_keep_chars_and_skip_first(tok):
    r = Rendered("k", "### Response:alpha beta gamma", [(13, 29)])
    full = tokenize_rendered(r, tok)
    part = tokenize_rendered(r, tok, keep_chars=[len("alpha beta")])
    assert tok.decode([i for i, s in zip(part.ids, part.score) if s]) == "alpha beta"
    sk = tokenize_rendered(r, tok, skip_first_answer_token=True)
    assert sk.answer_kept == full.answer_kept - 1
    pre = tokenize_rendered(r, tok, prepend_ids=[1])
    assert pre.ids[0] == 1 and pre.ids[1:] == full.ids and pre.answer_kept == full.answer_kept


def test_byte_tokenizer_offsets_multibyte():
    bt = byte_tokenizer()
    r = Rendered("b", "Q: é?\nA: ñá", [(9, 11)])
    tk = tokenize_rendered(r, bt)
    assert sum(tk.score) == 4  # two 2-byte characters
    assert bt.decode([i for i, s in zip(tk.ids, tk.score) if s]) == "ñá"


@pytest.mark.parametrize(
    "row,msg",
    [
        ({"id": "x", "instruction": "a"}, "missing field 'output'"),
        ({"id": "x", "output": "a"}, "missing field 'instruction'"),
        ({"id": "x", "instruction": 3, "output": "a"}, "field 'instruction' must be a string"),
        ({"id": "x", "instruction": "a", "output": None}, "missing field 'output'"),
        ({"id": "x", "conversation": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
        ({"id": "x", "conversation": [{"role": "robot", "content": "hi"}]}, "role 'robot'"),
        ({"id": "x", "conversation": "hello"}, "must be a list"),
        ({"id": "x", "conversation": [{"role": "assistant", "content": 5}]}, "content must be a string"),
    ],
)
def test_bad_samples_name_id_and_field(row, msg):
    with pytest.raises(SampleError, match="sample 'x'") as ei:
        render_sample(row, "alpaca", byte_tokenizer())
    assert msg in str(ei.value)


def test_bad_template_and_truncation_raise():
    with pytest.raises(ValueError, match="template"):
        render_sample({"instruction": "a", "output": "b"}, "nope")
    with pytest.raises(ValueError, match="truncation"):
        tokenize_rendered(Rendered("a", "ab", [(1, 2)]), byte_tokenizer(), truncation="middle")
    assert render_prompt("Q", "", "plain") == "Q\n"


# ------------------------------------------------------------------ token alignment in array form
def _walk_span_of(offs, spans):
    """Oracle: the token walk (a span pointer that only moves forward)."""
    out, si = [-1] * len(offs), 0
    for t, (a, b) in enumerate(offs):
        if b <= a:
            continue
        while si < len(spans) and spans[si][1] <= a:
            si += 1
        if si < len(spans) and spans[si][0] <= a < spans[si][1]:
            out[t] = si
    return out


def _loop_mask(span_of, offs, spans, skip_first, keep_chars):
    """Oracle: answer tokens after position 0, minus each span's first token and tokens past keep_chars."""
    score = [s >= 0 and t > 0 for t, s in enumerate(span_of)]
    seen = set()
    for t, s in enumerate(span_of):
        if s < 0:
            continue
        if skip_first and s not in seen:
            score[t] = False
        seen.add(s)
        if keep_chars is not None and offs[t][0] >= spans[s][0] + keep_chars[s]:
            score[t] = False
    return score


def _random_case(rng):
    n_chars = int(rng.integers(0, 80))
    cuts = sorted(set(rng.integers(0, n_chars + 1, size=int(rng.integers(0, 8))).tolist()))
    spans = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if b > a]
    offs, pos = [], 0
    for _ in range(int(rng.integers(0, 40))):
        kind = rng.random()
        if kind < 0.1:
            offs.append((0, 0))  # a special token
        elif kind < 0.15:
            a = int(rng.integers(0, n_chars + 1))  # out of order (odd tokenizers)
            offs.append((a, a + int(rng.integers(0, 3))))
        else:
            w = int(rng.integers(0, 4))
            offs.append((pos, pos + w))  # w == 0: an empty token
            pos += w
    return offs, spans


def test_span_of_and_answer_mask_match_the_token_walk_on_random_layouts():
    from thresher.render import _answer_mask, _span_of

    rng = np.random.default_rng(7)
    for _ in range(3000):
        offs, spans = _random_case(rng)
        got = _span_of(offs, spans)
        assert got == _walk_span_of(offs, spans), (offs, spans)
        keep = [int(rng.integers(0, 6)) for _ in spans] if rng.random() < 0.5 else None
        for skip in (False, True):
            assert _answer_mask(got, offs, spans, skip, keep) == _loop_mask(got, offs, spans, skip, keep)
    # spans out of order fall back to the walk itself
    offs, spans = [(0, 2), (2, 4), (4, 6)], [(4, 6), (0, 2)]
    assert _span_of(offs, spans) == _walk_span_of(offs, spans) == [-1, -1, 0]
