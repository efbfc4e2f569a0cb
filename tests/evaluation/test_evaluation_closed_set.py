"""Closed-set accuracy on a tiny random model, against log-likelihoods computed here with plain
torch (one full forward per label + log_softmax), never with thresher's scorer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.evaluation.closed_set import (
    ClosedSet,
    add_closed_accuracy,
    build_closed_set,
    closed_set_predict,
    label_loglik,
    label_sets,
)
from thresher.evaluation.lora import ProxyConfig, encode, measure
from thresher.models import byte_tokenizer, tiny_causal_lm


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm():
    tok = byte_tokenizer()
    tok.eos_token = "<|im_end|>"
    return tiny_causal_lm(3, tokenizer=tok, init_std=0.3)


def oracle_loglik(model, prompt: list[int], label: list[int]) -> float:
    """Sum of log p(label_t | prompt, label_<t) from one plain forward pass of prompt + label."""
    ids = torch.tensor([prompt + label])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    p = len(prompt)
    return float(sum(logp[p - 1 + t, tok] for t, tok in enumerate(label)))


def label_ids(tok, label: str, eos: bool = True) -> list[int]:
    ids = tok(" " + label, add_special_tokens=False)["input_ids"]
    return ids + ([tok.eos_token_id] if eos else [])


def test_label_sets_count_target_and_pool_rows():
    sets = label_sets(
        ["a", "a", "b", "c", "d"],
        ["yes", " no ", "x", "same", "p"],
        ["a", "b", "b", "c", "e", "e", "d"] + ["d"] * 25,
        ["maybe", "y", "z", "same", "q", "r", "p"] + [f"v{i}" for i in range(25)],
        max_labels=20,
    )
    assert sets["a"] == ["maybe", "no", "yes"]  # stripped, pool rows of the same task counted
    assert sets["b"] == ["x", "y", "z"]
    assert sets["c"] is None  # a single label is no choice: exact match
    assert sets["d"] is None  # 26 distinct outputs > 20: open
    assert "e" not in sets  # pool-only groups are not evaluation sets
    assert label_sets(["a"] * 3, ["1", "2", "3"], max_labels=3)["a"] == ["1", "2", "3"]
    assert label_sets(["a"] * 3, ["1", "2", "3"], max_labels=2)["a"] is None
    assert label_sets([], []) == {}
    with pytest.raises(ValueError, match="^max_labels:"):
        label_sets(["a"], ["x"], max_labels=1)


def test_label_loglik_equals_plain_torch(lm):
    tok = lm.tokenizer
    prompt = tok("Which colour is the sky?\nAnswer:", add_special_tokens=False)["input_ids"]
    labels = ["red", "green", "blue", "a"]  # different lengths: right padding in one batch
    ids = [label_ids(tok, lab) for lab in labels]
    got = label_loglik(lm, prompt, ids)
    want = [oracle_loglik(lm.model, prompt, i) for i in ids]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert label_loglik(lm, prompt, []).shape == (0,)
    with pytest.raises(ValueError, match="empty prompt"):
        label_loglik(lm, [], ids)


def test_prefix_label_without_eos_never_loses(lm):
    # without EOS, ll(" 1" " 0") = ll(" 1") + log p("0") < ll(" 1"): the shorter label always wins
    tok = lm.tokenizer
    for q in ("How many?\nAnswer:", "Count the dots\nAnswer:"):
        prompt = tok(q, add_special_tokens=False)["input_ids"]
        ll = label_loglik(lm, prompt, [label_ids(tok, "1", eos=False), label_ids(tok, "10", eos=False)])
        assert ll[0] > ll[1]


def _task():
    rows = []
    for i in range(12):
        rows.append(
            {"instruction": f"Classify item {i} by colour.", "input": "", "output": ["red", "blue", "a"][i % 3]}
        )
        rows[-1]["task"] = "colours"
    for i in range(4):
        rows.append({"instruction": f"Say {i}", "input": "", "output": f"word{i}", "task": "open"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("eos", [True, False])
def test_closed_set_predictions_match_oracle_argmax_every_norm(lm, eos):
    tok = lm.tokenizer
    table = _task()
    enc = encode(table, tok, max_length=64)
    sets = label_sets(table["task"].tolist(), table["output"].tolist(), max_labels=3)
    assert sets == {"colours": ["a", "blue", "red"], "open": None}
    closed = build_closed_set(sets, tok, template="plain", eos=eos)
    res = closed_set_predict(lm, enc.prompt, table["task"].tolist(), table["output"].tolist(), closed)
    labels = ["a", "blue", "red"]
    for i, row in table.iterrows():
        if row["task"] != "colours":
            assert not res["closed"][i] and res["pred"]["none"][i] is None
            continue
        ll = np.array([oracle_loglik(lm.model, enc.prompt[i], label_ids(tok, lab, eos)) for lab in labels])
        n_tok = np.array([len(label_ids(tok, lab, eos)) for lab in labels])
        n_chr = np.array([len(lab) for lab in labels])
        for norm, score in (("none", ll), ("tokens", ll / n_tok), ("chars", ll / n_chr)):
            want = labels[int(np.argmax(score))]
            assert res["pred"][norm][i] == want, (i, norm)
            assert res["correct"][norm][i] == (want == row["output"])


def test_ties_go_to_the_first_label_in_sorted_order():
    tok = byte_tokenizer()
    tok.eos_token = "<|im_end|>"
    flat = tiny_causal_lm(0, tokenizer=tok)
    with torch.no_grad():
        flat.model.get_output_embeddings().weight.zero_()  # uniform next-token distribution
    closed = build_closed_set({"t": ["cc", "ab", "ba"]}, tok, template="plain")
    assert closed.labels["t"] == ["cc", "ab", "ba"]  # the caller's order (label_sets sorts)
    closed = build_closed_set(label_sets(["t"] * 3, ["cc", "ab", "ba"]), tok, template="plain")
    prompt = tok("Q\nAnswer:", add_special_tokens=False)["input_ids"]
    res = closed_set_predict(flat, [prompt], ["t"], ["ba"], closed)
    for norm in ("none", "tokens", "chars"):
        assert res["pred"][norm][0] == "ab" and not res["correct"][norm][0]


def test_measure_uses_closed_accuracy_on_closed_sets_and_exact_match_elsewhere(lm):
    tok = lm.tokenizer
    table = _task()
    enc = encode(table, tok, max_length=64)
    groups = np.array(table["task"].tolist())
    answers = table["output"].tolist()
    cfg = ProxyConfig(model="tiny", max_length=64)
    m = measure(lm, enc, answers, groups, cfg)
    exact = list(m["correct"])
    closed = build_closed_set(label_sets(groups.tolist(), answers, max_labels=3), tok, template="plain", norm="tokens")
    add_closed_accuracy(m, lm, enc, answers, groups, closed)
    labels = ["a", "blue", "red"]
    hits = []
    for i in range(12):
        score = [
            oracle_loglik(lm.model, enc.prompt[i], label_ids(tok, lab)) / len(label_ids(tok, lab)) for lab in labels
        ]
        hits.append(labels[int(np.argmax(score))] == answers[i])
    assert m["sets"]["colours"]["closed"] and not m["sets"]["open"]["closed"]
    assert m["sets"]["colours"]["accuracy"] == pytest.approx(np.mean(hits))
    assert m["sets"]["colours"]["closed_accuracy"]["tokens"] == pytest.approx(np.mean(hits))
    assert m["sets"]["colours"]["exact"] == pytest.approx(np.mean(exact[:12]))
    assert m["sets"]["open"]["accuracy"] == m["sets"]["open"]["exact"] == pytest.approx(np.mean(exact[12:]))
    assert m["accuracy"] == pytest.approx((sum(hits) + sum(exact[12:])) / 16)
    assert m["closed_sets"] == ["colours"] and m["closed_norm"] == "tokens"


def test_no_closed_sets_leaves_exact_match():
    m = {"sets": {"x": {"accuracy": 0.5, "exact": 0.5}}, "accuracy": 0.5, "correct": [True, False]}
    add_closed_accuracy(m, None, None, ["a", "b"], ["x", "x"], None)
    assert m["accuracy"] == 0.5 and m["sets"]["x"]["closed"] is False and m["closed_sets"] == []
    with pytest.raises(ValueError, match="^closed_norm:"):
        ClosedSet({}, {}, norm="bytes")
