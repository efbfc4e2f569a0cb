"""Chat rows with tool turns: the reader's roles render through the chat template (tool role),
or as user-side context where a template has none, and LM criteria score them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from thresher.io import Source
from thresher.models import byte_tokenizer, tiny_causal_lm
from thresher.registry import CRITERIA
from thresher.render import TOOL_PREFIX, SampleError, get_conversation, render_sample

CALL = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]
CALL_JSON = json.dumps(CALL, sort_keys=True)
RAW = {
    "id": "chat-1",
    "messages": [
        {"role": "developer", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": CALL},
        {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
        {"role": "function", "name": "uv", "content": "UV 3"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "It is 18C"}, {"type": "text", "text": "and sunny."}],
        },
    ],
}
TURNS = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": CALL_JSON},
    {"role": "tool", "content": "18C, sunny"},
    {"role": "tool", "content": "UV 3"},
    {"role": "assistant", "content": "It is 18C\nand sunny."},
]


def chatml(turns: list[dict]) -> list[tuple[str, bool]]:
    """The ChatML text as (piece, is_answer) pieces, written out by hand."""
    out = []
    for t in turns:
        out += [
            (f"<|im_start|>{t['role']}\n", False),
            (t["content"], t["role"] == "assistant"),
            ("<|im_end|>\n", False),
        ]
    return out


def test_get_conversation_maps_every_reader_role():
    assert get_conversation(RAW, "chat-1") == TURNS
    # the reader's own normalisation gives the same turns
    src_rows = Source([RAW]).read_all()
    assert src_rows["conversation"].iloc[0] == TURNS
    assert get_conversation({"conversation": TURNS}, "x") == TURNS
    with pytest.raises(SampleError, match=r"messages\[0\].role 'narrator'"):
        get_conversation({"messages": [{"role": "narrator", "content": "x"}]}, "x")
    with pytest.raises(SampleError, match=r"messages\[1\].content must be a string, got int"):
        get_conversation({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}]}, "x")


def test_tool_turns_render_with_the_templates_tool_role():
    tok = byte_tokenizer()
    r = render_sample({"id": "c", "conversation": TURNS}, "chat", tok)
    pieces = chatml(TURNS)
    assert r.text == "".join(p for p, _ in pieces)
    assert r.answers == [CALL_JSON, "It is 18C\nand sunny."]
    assert "<|im_start|>tool\n18C, sunny<|im_end|>" in r.text


NO_TOOL_RAISES = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "{% if loop.index0 > 1 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('roles must alternate') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
)
NO_TOOL_DROPS = (
    "{% for m in messages %}{% if m['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
)


@pytest.mark.parametrize("template", [NO_TOOL_RAISES, NO_TOOL_DROPS])
def test_a_template_without_a_tool_role_gets_tool_turns_as_user_context(template):
    tok = byte_tokenizer()
    tok.chat_template = template
    r = render_sample({"id": "c", "conversation": TURNS}, "chat", tok)
    want = TURNS[:3] + [{"role": "user", "content": TOOL_PREFIX + "18C, sunny\n\n" + TOOL_PREFIX + "UV 3"}, TURNS[5]]
    assert r.text == "".join(p for p, _ in chatml(want))
    assert r.answers == [CALL_JSON, "It is 18C\nand sunny."]
    # a row without tool turns is rendered exactly as before
    plain = TURNS[:3]
    assert render_sample({"id": "p", "conversation": plain}, "chat", tok).text == "".join(p for p, _ in chatml(plain))


def test_perplexity_scores_a_row_with_tool_turns():
    lm = tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)
    table = Source([RAW, {"instruction": "Say hi.", "output": "hi"}]).read_all()
    got = CRITERIA.get("perplexity").obj(model=lm, template="chat")(table)
    assert got["perplexity.reason"].iloc[0] == "" and not math.isnan(got["perplexity"].iloc[0])
    # oracle: the ChatML text built by hand, one byte a token, every assistant-content token scored
    ids, score = [], []
    for piece, answer in chatml(TURNS):
        enc = lm.tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += enc
        score += [answer] * len(enc)
    score[0] = False
    x = torch.tensor([ids])
    with torch.no_grad():
        z = lm.model(input_ids=x).logits[0].double()
    pos = torch.tensor([t for t, s in enumerate(score) if s])
    nll = (torch.logsumexp(z[pos - 1], -1) - z[pos - 1, x[0, pos]]).mean().item()
    assert abs(got["perplexity.loss"].iloc[0] - nll) < 1e-5 * max(1.0, abs(nll))
    assert got["perplexity.n_tokens"].iloc[0] == len(CALL_JSON) + len("It is 18C\nand sunny.")
