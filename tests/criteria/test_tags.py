"""InsTag ``tags`` criterion: reply parsing, pool normalisation, the criterion with canned tagger replies."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import thresher.criteria.tags as tags_mod
from thresher.criteria.tags import INSTAG_PROMPT, clean_tag, normalise_tags, parse_tags, stem_tag
from thresher.errors import OptionError
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes")


def test_parse_canned_replies():
    ok = '[{"tag": "Math", "explanation": "arithmetic"}, {"tag": "code generation", "explanation": "x"}]'
    assert parse_tags(ok) == ["Math", "code generation"]
    assert parse_tags('Sure! Here: [{"tag": "a", "explanation": ""}] hope it helps') == ["a"]
    assert parse_tags('{"tag": "single", "explanation": "one object"}') == ["single"]
    assert parse_tags("[]") == []
    for bad in ("Math, coding", '[{"tag": "a", "explanation": "x"', '[{"name": "a"}]', '"just a string"', "[1, 2]"):
        with pytest.raises(ValueError):
            parse_tags(bad)
    # the lenient reading extracts the pairs from broken JSON, as the reference scripts do
    assert parse_tags('[{"tag": "a", "explanation": "x"}, {"tag": "b \\"q\\"", "expl', "lenient") == ["a", 'b "q"']
    with pytest.raises(ValueError):
        parse_tags("no tags here", "lenient")


def test_rule_cleaning_and_stems():
    assert clean_tag("  Code-Generation!! ") == "code generation"
    assert clean_tag("C++ / Python") == "c python"
    assert stem_tag("math problems") == stem_tag("math problem")
    assert stem_tag("coding") == stem_tag("code")
    assert stem_tag("creative writing") == stem_tag("creative write")
    assert stem_tag("class") == "class"


def test_normalisation_on_a_hand_made_table():
    raw = [
        ["Math", "Math Problems", "Rare tag"],  # math problems and math problem merge (stem)
        ["math problem", "coding"],
        ["MATH", "Code"],  # code merges with coding (stem); math counted once per row
        None,  # unparseable row stays None
        [],
    ]
    # row frequencies after cleaning: math 2, math problems 1, math problem 1, rare tag 1, coding 1, code 1
    got = normalise_tags(raw, min_frequency=1, stem=True)
    # canonical name of a stem group: its most frequent member, ties by name
    assert got == [["math", "math problem", "rare tag"], ["math problem", "code"], ["math", "code"], None, []]
    # frequency filter applies to cleaned tags before merging: only "math" (2 rows) survives min_frequency=2
    assert normalise_tags(raw, min_frequency=2) == [["math"], [], ["math"], None, []]
    assert normalise_tags(raw, min_frequency=1, stem=False)[0] == ["math", "math problems", "rare tag"]


def test_similarity_merging_with_a_given_embedding():
    vecs = {"math": [1, 0, 0], "arithmetic": [0.96, 0.28, 0], "poetry": [0, 0, 1]}
    raw = [["math", "poetry"], ["arithmetic"], ["math"]]

    def embed(texts):
        return np.asarray([vecs[t] for t in texts], dtype=np.float64)

    # cos(math, arithmetic) = 0.96: merged into the more frequent "math" at 0.9, kept apart at 0.97
    assert normalise_tags(raw, stem=False, merge_similarity=0.9, embed=embed) == [
        ["math", "poetry"],
        ["math"],
        ["math"],
    ]
    assert normalise_tags(raw, stem=False, merge_similarity=0.97, embed=embed)[1] == ["arithmetic"]
    with pytest.raises(ValueError, match="embedder"):
        normalise_tags(raw, merge_similarity=0.9)


def _rows():
    return pd.DataFrame(
        {
            "id": ["a", "b", "c", "d", "e"],
            "instruction": ["Solve 2+2", "Write a poem", "Sort a list in Python", "Explain", ""],
            "input": ["", "about cats", "", "", ""],
            "output": ["4", "Cats...", "sorted()", "ok", "x"],
        }
    )


def test_criterion_with_canned_replies(lm, monkeypatch):
    t = '{{"tag": "{}", "explanation": "."}}'.format
    canned = {
        "Solve 2+2": '[{"tag": "Math", "explanation": "."}, {"tag": "arithmetic", "explanation": "."}]',
        "Write a poem\nabout cats": "[" + t("creative writing") + ", " + t("Math") + "]",
        "Sort a list in Python": "I think: [" + t("coding") + ", " + t("math") + "]",
        "Explain": "not json at all",
    }
    seen = []

    def fake(model, tokenizer, prompts, *, max_new_tokens, batch_size=8):
        assert max_new_tokens == 7
        seen.extend(prompts)
        return [canned[p.split("Query: ", 1)[1].rsplit("\nAssistant:", 1)[0]] for p in prompts]

    monkeypatch.setattr(tags_mod, "generate_replies", fake)
    scorer = CRITERIA.get("tags").obj(model=lm, min_frequency=2, max_new_tokens=7, chat="no")
    out = scorer(_rows())
    # prompts follow the paper's template; the empty-instruction row never reaches the tagger
    assert seen[0] == INSTAG_PROMPT.format(query="Solve 2+2") and len(seen) == 4
    # "math" is carried by 3 rows; every other tag by one row: dropped with min_frequency=2
    np.testing.assert_array_equal(out["tags"].to_numpy(), [1.0, 1.0, 1.0, np.nan, np.nan])
    assert [json.loads(t) for t in out["tags.tags"][:3]] == [["math"], ["math"], ["math"]]
    assert json.loads(out["tags.raw"][2]) == ["coding", "math"]
    assert "not valid JSON" in out["tags.reason"][3] and "empty instruction" in out["tags.reason"][4]
    assert out["tags.reason"][:3].tolist() == ["", "", ""]
    assert CRITERIA.get("tags").meta["scope"] == "pool"


def test_options_and_key(lm):
    cls = CRITERIA.get("tags").obj
    with pytest.raises(OptionError):
        cls(model=lm, min_frequency=0)
    with pytest.raises(OptionError):
        cls(model=lm, parse="xml")
    with pytest.raises(ValueError, match="query"):
        cls(model=lm, prompt="no field")
    assert cls.cache_key_for(model=lm) != cls.cache_key_for(model=lm, min_frequency=3)
    assert cls.cache_key_for(model=lm, batch_size=2) == cls.cache_key_for(model=lm, batch_size=3)


def test_real_generation_runs_on_a_tiny_model(lm):
    # a random tiny model emits garbage: the reply is kept, the row is NaN with a reason
    out = CRITERIA.get("tags").obj(model=lm, max_new_tokens=4, min_frequency=1, chat="no")(_rows().iloc[:2])
    assert len(out) == 2 and out["tags.reply"].map(len).gt(0).any()
    assert (out["tags"].isna() == out["tags.reason"].ne("")).all()
