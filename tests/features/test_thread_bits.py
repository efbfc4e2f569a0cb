"""Model paths whose bits do not follow the thread count: every product's row count is a multiple of the
BLAS row tile (:mod:`thresher.ops.blas`). MKL rounds a product of 5-7 or 9-11 rows differently on 1 and 2
threads (17-19 and 25-27 too on 16): short units, short continuations and narrow buckets make such
products unless their batches are padded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.features.tokens import Unit, last_position_hidden, prefix_reuse_losses, unit_losses
from thresher.models import tiny_causal_lm
from thresher.ops import BLAS_ROW_TILE, score_at_position, tiled_width
from thresher.ops.blas import tile_matmul

THREADS = (2, 8, 16)


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)


def at_threads(n: int, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def _units(lengths, seed=0):
    g = np.random.default_rng(seed)
    return [Unit(g.integers(3, 250, n).tolist(), [t > 0 for t in range(n)]) for n in lengths]


def test_tiled_width():
    assert [tiled_width(1, w) for w in range(9)] == [0, 4, 4, 4, 4, 8, 8, 8, 8]
    assert [tiled_width(2, w) for w in (1, 2, 3, 5)] == [2, 2, 4, 6]
    assert [tiled_width(4, w) for w in (1, 3, 5)] == [1, 3, 5]
    assert [tiled_width(3, w) for w in (1, 5, 8)] == [4, 8, 8]
    assert tiled_width(0, 7) == 7 and tiled_width(5, 0) == 0
    assert tiled_width(1, 5, tile=8) == 8
    with pytest.raises(ValueError, match="rows and width"):
        tiled_width(-1, 3)


def test_tiled_products_agree_across_threads():
    """The platform fact the padding rests on: a product of a multiple of 4 rows has the same bits on any thread
    count (if a BLAS breaks it, this names the row counts)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g)
    bad = []
    for m in range(BLAS_ROW_TILE, 97, BLAS_ROW_TILE):
        x = torch.randn(m, 64, generator=g)
        ref = at_threads(1, lambda x=x: torch.nn.functional.linear(x, w))
        bad += [
            (m, t) for t in THREADS if not torch.equal(at_threads(t, lambda x=x: torch.nn.functional.linear(x, w)), ref)
        ]
    assert bad == []


@pytest.mark.parametrize("mode", ["row", "bucket", "pack"])
def test_unit_losses_bits_follow_no_thread_count(lm, mode):
    """Units of 2-30 tokens (row mode: one product of that many rows per layer; bucket and pack: the same
    batches on every thread count, narrow enough that most hold one or two short units)."""
    units = _units(list(range(2, 31)) + [45, 61])
    run = lambda: unit_losses(lm, units, mode=mode, batch_tokens=23, entropy=True)  # noqa: E731
    ref = at_threads(1, run)
    for t in THREADS:
        got = at_threads(t, run)
        diff = [
            i
            for i, (a, b) in enumerate(zip(got, ref))
            if not (np.array_equal(a.nll, b.nll) and np.array_equal(a.entropy, b.entropy))
        ]
        assert diff == [], (mode, t, [len(units[i].ids) for i in diff])


def test_row_mode_pads_each_unit_to_the_tile(lm):
    units = _units([2, 3, 5, 8, 9, 13]) + [Unit([], []), Unit([7], [False])]
    st: dict = {}
    unit_losses(lm, units, mode="row", stats=st)
    assert st["batches"] == 6  # units with nothing to score run nothing
    assert st["real_tokens"] == 2 + 3 + 5 + 8 + 9 + 13
    assert st["forward_tokens"] == 4 + 4 + 8 + 8 + 12 + 16


def test_judge_readout_bits_follow_no_thread_count(lm):
    seqs = [u.ids for u in _units(range(1, 30), seed=1)]
    for one in (True, False):
        run = lambda one=one: last_position_hidden(lm, seqs, batch_tokens=64, one_per_call=one)  # noqa: E731
        ref = at_threads(1, run)
        for t in THREADS:
            assert torch.equal(at_threads(t, run), ref), (one, t)


@pytest.mark.parametrize("prefix_len", [4, 7, 10])
def test_prefix_reuse_bits_follow_no_thread_count(lm, prefix_len):
    """A prefix of any length (its first multiple-of-4 tokens, then the rest against their cache) and short
    continuations, one per call and batched."""
    prefix = _units([prefix_len], seed=2)[0].ids
    conts = [Unit(u.ids, [True] * len(u.ids)) for u in _units(range(1, 14), seed=3)]
    for one in (True, False):
        run = lambda one=one: prefix_reuse_losses(lm, prefix, conts, batch_tokens=48, one_per_call=one)  # noqa: E731
        ref = at_threads(1, run)
        for t in THREADS:
            got = at_threads(t, run)
            assert all(np.array_equal(a.nll, b.nll) for a, b in zip(got, ref)), (one, t)


def test_tile_matmul_rows_are_their_own():
    """A readout's row has the same bits whichever rows share the call, wherever it sits in its tile, on any
    thread count (a plain [B, H] x [H, 6] product differs between 1 row and several), and equals float64."""
    g = torch.Generator().manual_seed(0)
    w_t = torch.randn(6, 64, generator=g).T
    x = torch.randn(23, 64, generator=g)
    ref = at_threads(1, lambda: tile_matmul(x, w_t))
    torch.testing.assert_close(ref.double(), x.double() @ w_t.double(), rtol=1e-5, atol=1e-5)
    for t in (1,) + THREADS:
        for start, n in ((0, 1), (3, 1), (1, 2), (5, 3), (2, 5), (0, 23), (7, 9)):
            got = at_threads(t, lambda s=start, n=n: tile_matmul(x[s : s + n], w_t))
            assert torch.equal(got, ref[start : start + n]), (t, start, n)
    assert tile_matmul(x[:0], w_t).shape == (0, 6)


def test_judge_scores_follow_no_companions(lm):
    """score_at_position (rating's and SelectIT's readout over their score tokens) on hidden states of one
    row per call: a row's probabilities are the same bits alone and with others."""
    seqs = [u.ids for u in _units(range(20, 33), seed=4)]
    h = last_position_hidden(lm, seqs, one_per_call=True)
    ids = [49, 50, 51, 52, 53, 54]
    whole = score_at_position(h, lm.head_weight(), ids)
    for pick in ([3], [4, 0, 3], [5, 1], list(range(12, -1, -1))):
        part = at_threads(2, lambda p=pick: score_at_position(h[p], lm.head_weight(), ids))
        assert torch.equal(part, whole[pick]), pick


def test_sentence_encoder_bits_follow_no_thread_count():
    """all-MiniLM-L6-v2 one text per call (``batching="row"``; texts of 3-40 tokens) and in batches: the same
    bits on every thread count, and the library's own encode to float32 rounding."""
    from thresher.embed.encoders import SentenceEncoder

    enc = SentenceEncoder("default", device="cpu")
    line = "the quick brown fox jumps over a lazy dog while seven wise owls count stars"
    texts = [" ".join(line.split()[: 1 + i % 15] * (1 + i // 15)) for i in range(24)]
    for bs in (1, 5):
        ref = at_threads(1, lambda bs=bs: enc.encode(texts, batch_size=bs))
        for t in (2, 8):
            assert np.array_equal(at_threads(t, lambda bs=bs: enc.encode(texts, batch_size=bs)), ref), (bs, t)
    lib = enc.model.encode(texts, batch_size=1, convert_to_numpy=True, normalize_embeddings=False)
    np.testing.assert_allclose(ref, lib, rtol=1e-4, atol=1e-5)


TRAIN = pd.DataFrame(
    {
        "id": [f"r{i}" for i in range(9)],
        "instruction": [f"Add {i} and {i % 4}." for i in range(9)],
        "input": [""] * 9,
        "output": [str(i + i % 4) for i in range(9)],  # answers of 1-2 tokens: a batch's head runs on 5-11 rows
    }
)


def _tiny(seed: int):
    """A vocabulary of 272 (the byte tokenizer's 259 and 13 unused): MKL rounds a product whose column count is
    not a multiple of 16 with the thread count on 16 threads (the head of a training step: docs/methods.md)."""
    return tiny_causal_lm(seed=seed, tokenizer="bytes", vocab=272, hidden=32, layers=2, heads=4, kv_heads=2,
                          intermediate=64)  # fmt: skip


def test_lora_warmup_bits_follow_no_thread_count(tmp_path):
    """A LoRA warm-up (SHED's, LESS's and necessity's training step) ends with the same adapter on 1, 2, 3, 8 and
    16 threads: its batches' tokens and its head's answer rows are padded to the tile."""
    pytest.importorskip("peft")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from thresher.train.warmup import warmup_lora

    kw = dict(fraction=1.0, epochs=1, lr=5e-3, r=4, alpha=8, targets=["q_proj", "v_proj"], batch_size=3,
              max_length=128, template="plain", seed=1, checkpoint_s=0, log=lambda _m: None)  # fmt: skip

    def run(t: int) -> dict:
        w = at_threads(t, lambda: warmup_lora(TRAIN, _tiny(2), tmp_path / f"t{t}", **kw))
        return safetensors_torch.load_file(str(w.checkpoints[-1] / "adapter.safetensors"))

    ref = run(1)
    for t in (2, 3, 8, 16):
        got = run(t)
        assert sorted(got) == sorted(ref)
        assert [k for k in ref if not torch.equal(got[k], ref[k])] == [], t


def test_gradient_features_bits_follow_no_thread_count():
    """LESS's per-sample LoRA gradient features (one row per batch and three) on 1, 2, 3, 8 and 16 threads."""
    pytest.importorskip("peft")
    from thresher.features.gradients import GradientFeaturizer, add_lora

    pm = add_lora(_tiny(1).model, r=4, alpha=8, targets=["q_proj", "v_proj"], seed=3)
    tok = _tiny(1).tokenizer
    for bs in (1, 3):
        fz = GradientFeaturizer(pm, tok, dim=32, seed=1, batch_size=bs, max_length=128, template="plain")
        run = lambda fz=fz: fz(TRAIN)[1]  # noqa: E731
        ref = at_threads(1, run)
        for t in (2, 3, 8, 16):
            assert np.array_equal(at_threads(t, run), ref, equal_nan=True), (bs, t)


def test_blockwise_activation_bits_follow_no_thread_count():
    """SiLU and GELU on 88 x 1,536 values (torch splits them into 5 chunks on 5-64 threads, whose scalar tails
    round differently) give the 1-thread bits of the plain activation on every thread count."""
    from thresher.ops.blas import ACT_BLOCK, BlockwiseActivation

    x = torch.randn(88, 1536, generator=torch.Generator().manual_seed(0))
    for act in (torch.nn.SiLU(), torch.nn.GELU()):
        ref = at_threads(1, lambda act=act: act(x))
        wrapped = BlockwiseActivation(act)
        for t in (1, 2, 5, 7, 8, 64):
            assert torch.equal(at_threads(t, lambda w=wrapped: w(x)), ref), (act, t)
        small = x[:3]
        assert torch.equal(wrapped(small), act(small)) and small.numel() <= ACT_BLOCK
    y = torch.randn(70000, requires_grad=True)  # differentiable, blocks and all
    BlockwiseActivation(torch.nn.SiLU())(y).sum().backward()
    torch.testing.assert_close(y.grad, torch.func.grad(lambda v: torch.nn.functional.silu(v).sum())(y.detach()))


def test_model_activations_are_blockwise_and_long_rows_follow_no_thread_count():
    """SmolLM2's activations are wrapped (no state-dict key changes), and rows whose MLP activation holds over
    131,072 values (86 and 130 tokens x 1,536) give the same losses on 1, 5 and 8 threads."""
    from thresher.models.loader import load_causal_lm
    from thresher.ops.blas import BlockwiseActivation, blockwise_activations

    lm = load_causal_lm("default", device="cpu")
    acts = [m for m in lm.model.modules() if isinstance(m, BlockwiseActivation)]
    assert len(acts) == lm.model.config.num_hidden_layers
    assert blockwise_activations(lm.model) == 0  # done once
    assert not any(".act" in k for k in lm.model.state_dict())
    units = _units([86, 130], seed=5)
    run = lambda: unit_losses(lm, units, mode="row")  # noqa: E731
    ref = at_threads(1, run)
    for t in (5, 8):
        assert all(np.array_equal(a.nll, b.nll) for a, b in zip(at_threads(t, run), ref)), t
