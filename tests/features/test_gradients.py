"""Per-sample LoRA gradient features (thresher.features.gradients) on a tiny random model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.features.gradients import (
    AdamState,
    GradientFeaturizer,
    add_lora,
    check_target_modules,
    encode_rows,
    lora_named_parameters,
    per_sample_grads_loop,
)
from thresher.models import tiny_causal_lm
from thresher.ops import random_project

ROWS = pd.DataFrame(
    {
        "id": ["a", "b", "c", "d", "e"],
        "instruction": [
            "Add 2 and 3.",
            "Name a colour of the sky on a clear day, please.",
            "Translate 'chat'",
            "Say hi",
            "Empty answer",
        ],
        "input": ["", "", "to English", "", ""],
        "output": ["5", "Blue, usually.", "cat", "hi there, friend", ""],
    }
)


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(seed=1, tokenizer="bytes", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)


@pytest.fixture(scope="module")
def pm(lm):
    m = add_lora(lm.model, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=3)
    with torch.no_grad():  # B is zero-initialised: give it values so both factors have gradients
        g = torch.Generator().manual_seed(0)
        for _n, p in lora_named_parameters(m):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m


def _adam_state(pm, step=7):
    g = torch.Generator().manual_seed(5)
    m = {n: torch.randn(p.shape, generator=g) * 1e-3 for n, p in lora_named_parameters(pm)}
    v = {n: torch.rand(p.shape, generator=g) * 1e-5 for n, p in lora_named_parameters(pm)}
    return AdamState(m, v, step)


def test_batched_hook_gradients_equal_per_sample_loop(lm, pm):
    enc = [e for e in encode_rows(ROWS, lm.tokenizer, max_length=256) if not e.reason]
    G = per_sample_grads_loop(pm, lm.tokenizer, enc)  # oracle: one backward per sample
    assert G.abs().sum() > 0
    fz = GradientFeaturizer(pm, lm.tokenizer, dim=64, seed=9, batch_size=3, max_length=256)
    ids, feats, reasons = fz(ROWS)
    ok = [i for i, r in enumerate(reasons) if not r]
    expect = random_project(G, 64, 9, backend="reference").numpy()
    np.testing.assert_allclose(feats[ok], expect, rtol=1e-3, atol=1e-4 * np.abs(expect).max())


def test_features_do_not_depend_on_batch_composition(lm, pm):
    a = GradientFeaturizer(pm, lm.tokenizer, dim=32, seed=1, batch_size=1, max_length=256)(ROWS)[1]
    b = GradientFeaturizer(pm, lm.tokenizer, dim=32, seed=1, batch_size=4, max_length=256)(ROWS)[1]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(a)))


@pytest.mark.parametrize("mode", ["less", "bias_corrected"])
def test_adam_transform_matches_formula(lm, pm, mode):
    st = _adam_state(pm)
    enc = [e for e in encode_rows(ROWS, lm.tokenizer, max_length=256) if not e.reason]
    G = per_sample_grads_loop(pm, lm.tokenizer, enc)
    m = torch.cat([st.exp_avg[n].reshape(-1) for n, _ in lora_named_parameters(pm)])
    v = torch.cat([st.exp_avg_sq[n].reshape(-1) for n, _ in lora_named_parameters(pm)])
    m1 = 0.9 * m + 0.1 * G
    v1 = 0.999 * v + 0.001 * G * G
    if mode == "less":  # LESS reference: no bias correction, eps inside the root
        T = m1 / torch.sqrt(v1 + 1e-8)
    else:
        t = st.step + 1
        T = (m1 / (1 - 0.9**t)) / (torch.sqrt(v1 / (1 - 0.999**t)) + 1e-8)
    expect = random_project(T, 64, 2, backend="reference").numpy()
    feats = GradientFeaturizer(pm, lm.tokenizer, dim=64, seed=2, adam=mode, adam_state=st, max_length=256)(ROWS)[1][:4]
    np.testing.assert_allclose(feats, expect, rtol=2e-3, atol=2e-3 * np.abs(expect).max())
    # the transform changes the features
    plain = GradientFeaturizer(pm, lm.tokenizer, dim=64, seed=2, max_length=256)(ROWS)[1][:4]
    assert not np.allclose(plain, feats)


def test_adam_state_save_load_roundtrip(tmp_path, pm):
    st = _adam_state(pm, step=11)
    st.save(tmp_path / "o.safetensors")
    st2 = AdamState.load(tmp_path / "o.safetensors")
    assert st2.step == 11 and st2.betas == (0.9, 0.999)
    for n in st.exp_avg:
        assert torch.equal(st.exp_avg[n], st2.exp_avg[n]) and torch.equal(st.exp_avg_sq[n], st2.exp_avg_sq[n])


def test_structured_mode_tracks_dense_inner_products(lm, pm):
    d = GradientFeaturizer(pm, lm.tokenizer, dim=2048, seed=4, max_length=256)(ROWS)[1][:4]
    s = GradientFeaturizer(pm, lm.tokenizer, dim=2048, seed=4, mode="structured", side_dim=32, max_length=256)(ROWS)[1][
        :4
    ]
    assert s.shape == d.shape and np.isfinite(s).all()
    # both are unbiased sketches of the same gradients: the Gram matrices agree up to JL noise
    gd, gs = d @ d.T, s @ s.T
    scale = np.sqrt(np.outer(np.diag(gd), np.diag(gd)))
    assert np.abs((gs - gd) / scale).max() < 0.6
    assert np.corrcoef(gd.ravel(), gs.ravel())[0, 1] > 0.9


def test_unscorable_rows_get_nan_and_reason(lm, pm):
    ids, feats, reasons = GradientFeaturizer(pm, lm.tokenizer, dim=16, seed=0, max_length=256)(ROWS)
    assert ids == list(ROWS["id"])
    assert reasons[4] == "empty answer" and np.isnan(feats[4]).all()
    assert all(r == "" for r in reasons[:4]) and np.isfinite(feats[:4]).all()
    # an answer entirely cut away by truncation
    long = pd.DataFrame({"id": ["x"], "instruction": ["q" * 200], "input": [""], "output": ["a"]})
    ids, feats, reasons = GradientFeaturizer(pm, lm.tokenizer, dim=16, seed=0, max_length=16)(long)
    assert reasons == ["answer truncated away"] and np.isnan(feats).all()


def test_bad_input(lm, pm):
    with pytest.raises(ValueError, match="target_modules: 'gate_projx'"):
        check_target_modules(lm.model, ["q_proj", "gate_projx"])
    with pytest.raises(ValueError, match="target_modules"):
        add_lora(lm.model, targets=["nonexistent"])
    with pytest.raises(ValueError, match="dim"):
        GradientFeaturizer(pm, lm.tokenizer, dim=100)
    with pytest.raises(ValueError, match="adam_state"):
        GradientFeaturizer(pm, lm.tokenizer, dim=16, adam="less")
    with pytest.raises(ValueError, match="structured"):
        GradientFeaturizer(pm, lm.tokenizer, dim=16, adam="less", adam_state=_adam_state(pm), mode="structured")
    with pytest.raises(ValueError, match="adam"):
        GradientFeaturizer(pm, lm.tokenizer, dim=16, adam="sgd")


def test_non_finite_gradients(lm):
    m = add_lora(lm.model, r=4, alpha=8, targets=["q_proj"], seed=0)
    with torch.no_grad():
        for _n, p in lora_named_parameters(m):
            p.fill_(0.1)
        lin = m.get_base_model().model.layers[0].mlp.down_proj
        lin.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite gradient"):
        GradientFeaturizer(m, lm.tokenizer, dim=16, max_length=256)(ROWS.iloc[:2])
    ids, feats, reasons = GradientFeaturizer(m, lm.tokenizer, dim=16, max_length=256, on_nonfinite="nan")(ROWS.iloc[:2])
    assert all("non-finite" in r for r in reasons) and np.isnan(feats).all()


def test_multi_gives_plain_and_adam_from_one_pass(lm, pm):
    st = _adam_state(pm)
    fz = GradientFeaturizer(pm, lm.tokenizer, dim=32, seed=3, adam="less", adam_state=st, max_length=256)
    ids, fs, reasons = fz.multi(ROWS, ["none", "less"])
    np.testing.assert_array_equal(fs["less"], fz(ROWS)[1])
    plain = GradientFeaturizer(pm, lm.tokenizer, dim=32, seed=3, max_length=256)(ROWS)[1]
    np.testing.assert_array_equal(fs["none"], plain)
    with pytest.raises(ValueError, match="modes"):
        GradientFeaturizer(pm, lm.tokenizer, dim=32).multi(ROWS, ["less"])


def test_add_lora_does_not_repeat_the_deprecated_alias_warning(lm):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        add_lora(lm.model, r=2, targets=["q_proj"])
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]
