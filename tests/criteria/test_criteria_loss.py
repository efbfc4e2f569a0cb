"""Loss criteria (ifd, reverse_ifd, perplexity, entropy, el2n) against full-logits oracles."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.features.tokens import Unit, full_logits_losses, plan_buckets, plan_packs, unit_losses
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA
from thresher.render import render_sample, tokenize_rendered

ROOT = Path(__file__).resolve().parents[2]


def _load_cherry():
    from benchmarks.baselines import cherry_ifd

    return cherry_ifd


@pytest.fixture(scope="module")
def lm():
    """Byte-level tokenizer (259 tokens): full-logits oracles stay cheap."""
    return tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)


@pytest.fixture(scope="module")
def lm_smol():
    """SmolLM2's real tokenizer (BPE merges across the prompt/answer boundary happen)."""
    return tiny_causal_lm(0, init_std=0.3, hidden=32, heads=2, kv_heads=1, intermediate=64)


@pytest.fixture(scope="module")
def rows(bigbench_path):
    out = []
    with gzip.open(bigbench_path, "rt") as f:
        for line in f:
            r = json.loads(line)
            if len(r["instruction"]) < 250 and r["output"].strip():
                out.append({"id": r["id"], "instruction": r["instruction"], "input": "", "output": r["output"]})
            if len(out) >= 10:
                break
    out.append(
        {"id": "with-input", "instruction": "Translate to French.", "input": "good morning", "output": " bonjour"}
    )
    out.append({"id": "unicode", "instruction": "Reply with an emoji.", "input": "", "output": "😀 ok"})
    return out


def scorer(name, lm, **kw):
    return CRITERIA.get(name).obj(model=lm, **kw)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


# ------------------------------------------------------------------ faithfulness
def test_ifd_equals_cherry_reference(lm_smol, rows):
    lm = lm_smol
    cherry = _load_cherry()
    got = scorer("ifd", lm)(pd.DataFrame(rows))
    for r, (_, g) in zip(rows, got.iterrows()):
        ref = cherry.cherry_ifd(lm.model, lm.tokenizer, r["instruction"], r["output"], r["input"], max_length=512)
        assert ref is not None, r["id"]
        assert g["ifd.reason"] == ""
        assert g["ifd.n_tokens"] == ref["n_cond"]
        assert rel(g["ifd.loss_cond"], ref["loss_cond"]) < 1e-4, r["id"]
        assert rel(g["ifd.loss_direct"], ref["loss_direct"]) < 1e-4, r["id"]
        assert rel(g["ifd"], ref["ifd"]) < 1e-4, r["id"]


def test_ifd_wiz_template_equals_cherry(lm_smol, rows):
    lm = lm_smol
    cherry = _load_cherry()
    got = scorer("ifd", lm, template="wiz")(pd.DataFrame(rows[:4]))
    for r, v in zip(rows[:4], got["ifd"]):
        ref = cherry.cherry_ifd(lm.model, lm.tokenizer, r["instruction"], r["output"], r["input"], prompt="wiz")
        assert rel(v, ref["ifd"]) < 1e-4


def test_ifd_truncation_is_aligned(lm, rows):
    """With max_length cutting the answer, both passes score the same answer tokens."""
    row = {"id": "long", "instruction": "List numbers.", "output": " one two three four five six seven eight"}
    full = scorer("ifd", lm, max_length=512)(pd.DataFrame([row]))
    n_full = int(full["ifd.n_tokens"][0])
    r = render_sample(row, "alpaca", lm.tokenizer)
    n_text = len(tokenize_rendered(r, lm.tokenizer).ids)
    cut = scorer("ifd", lm, max_length=n_text - 3)(pd.DataFrame([row]))
    assert int(cut["ifd.n_tokens"][0]) == n_full - 3 and int(cut["ifd.truncated"][0]) == 3
    # oracle: per-token losses of the full passes, restricted to the kept answer tokens
    tok = lm.tokenizer
    cond = tokenize_rendered(r, tok)
    from thresher.render import Rendered

    d = Rendered("d", "### Response:" + row["output"], [(13, 13 + len(row["output"]))])
    direct = tokenize_rendered(d, tok)
    lc, ld = full_logits_losses(lm, [Unit(cond.ids, cond.score), Unit(direct.ids, direct.score)])
    assert direct.answer_kept == n_full
    exp_c, exp_d = lc.nll[: n_full - 3].mean(), ld.nll[: n_full - 3].mean()
    assert rel(cut["ifd.loss_cond"][0], exp_c) < 1e-5
    assert rel(cut["ifd.loss_direct"][0], exp_d) < 1e-5
    # truncated away: NaN with a reason
    gone = scorer("ifd", lm, max_length=n_text - n_full)(pd.DataFrame([row]))
    assert math.isnan(gone["ifd"][0]) and "truncated away" in gone["ifd.reason"][0]
    # left truncation keeps the whole answer
    left = scorer("ifd", lm, max_length=n_text - 5, truncation="left")(pd.DataFrame([row]))
    assert int(left["ifd.n_tokens"][0]) == n_full and left["ifd.reason"][0] == ""


def test_ifd_options_ppl_bos_none(lm, rows):
    df = pd.DataFrame(rows[:5])
    a = scorer("ifd", lm)(df)
    p = scorer("ifd", lm, ratio="ppl")(df)
    np.testing.assert_allclose(p["ifd"], np.exp(a["ifd.loss_cond"] - a["ifd.loss_direct"]), rtol=1e-12)
    np.testing.assert_allclose(p["ifd.loss_cond"], a["ifd.loss_cond"], rtol=1e-12)
    b = scorer("ifd", lm, context="bos", template="plain")(df)
    n = scorer("ifd", lm, context="none", template="plain")(df)
    tok = lm.tokenizer
    for k, row in enumerate(rows[:5]):
        # oracle for context=bos: BOS + answer, every answer token; context=none: first token left out of both
        ans = tok(row["output"], add_special_tokens=False).input_ids
        x = torch.tensor([[tok.bos_token_id] + ans])
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(input_ids=x).logits[0].float(), -1)
        nll = -lp[torch.arange(len(ans)), x[0, 1:]].double().numpy()
        assert rel(b["ifd.loss_direct"][k], nll.mean()) < 1e-5
        if len(ans) > 1:
            # oracle for context=none: the answer alone, its first token (no predictor) left out; the
            # conditional pass leaves out the same first answer token
            a = torch.tensor([ans])
            with torch.no_grad():
                lpa = torch.log_softmax(lm.model(input_ids=a).logits[0].float(), -1)
            direct = -lpa[torch.arange(len(ans) - 1), a[0, 1:]].double().numpy()
            assert rel(n["ifd.loss_direct"][k], direct.mean()) < 1e-5
            tk = tokenize_rendered(render_sample(row, "plain", tok), tok)
            cond = full_logits_losses(lm, [Unit(tk.ids, tk.score)])[0].nll
            assert rel(n["ifd.loss_cond"][k], cond[1:].mean()) < 1e-5
            assert rel(n["ifd"][k], cond[1:].mean() / direct.mean()) < 1e-5
            assert n["ifd.n_tokens"][k] == b["ifd.n_tokens"][k] - 1
        else:
            assert math.isnan(n["ifd"][k]) and n["ifd.reason"][k]


def test_reverse_ifd_matches_oracle(lm, rows):
    from thresher.criteria.loss import REVERSE_PROMPT
    from thresher.render import ALPACA_NO_INPUT

    got = scorer("reverse_ifd", lm, max_length=2048)(pd.DataFrame(rows[:4]))
    assert (got["reverse_ifd.truncated"] == 0).all()
    tok = lm.tokenizer
    for k, row in enumerate(rows[:4]):
        prompt = ALPACA_NO_INPUT.format(instruction=REVERSE_PROMPT.replace("{output}", row["output"]))
        q = row["instruction"] + row["input"]
        enc = tok(prompt + q, return_offsets_mapping=True)
        ids = enc.input_ids
        pos = [t for t, (a, b) in enumerate(enc.offset_mapping) if a >= len(prompt) and b > a and t > 0]
        qd = [tok.bos_token_id] + tok(q, add_special_tokens=False).input_ids
        lc, ld = full_logits_losses(
            lm, [Unit(ids, [t in pos for t in range(len(ids))]), Unit(qd, [False] + [True] * (len(qd) - 1))]
        )
        assert rel(got["reverse_ifd"][k], math.exp(lc.nll.mean() - ld.nll.mean())) < 1e-4


def _oracle_stats(lm, ids, score):
    x = torch.tensor([ids])
    with torch.no_grad():
        z = lm.model(input_ids=x).logits[0].double()
    pos = torch.tensor([t for t, s in enumerate(score) if s])
    zz = z[pos - 1]
    lse = torch.logsumexp(zz, -1)
    y = x[0, pos]
    nll = lse - zz[torch.arange(len(pos)), y]
    p = torch.softmax(zz, -1)
    ent = lse - (p * zz).sum(-1)
    onehot = torch.nn.functional.one_hot(y, z.shape[-1]).double()
    el2n = (p - onehot).norm(dim=-1)
    return nll.mean().item(), ent.mean().item(), el2n.mean().item()


def test_perplexity_entropy_el2n_match_full_logits(lm, rows):
    df = pd.DataFrame(rows[:4])
    ppl = scorer("perplexity", lm)(df)
    ent = scorer("entropy", lm)(df)
    e2 = scorer("el2n", lm)(df)
    for k, row in enumerate(rows[:4]):
        tk = tokenize_rendered(render_sample(row, "alpaca", lm.tokenizer), lm.tokenizer)
        nll, h, el = _oracle_stats(lm, tk.ids, tk.score)
        assert rel(ppl["perplexity.loss"][k], nll) < 1e-5
        assert rel(ppl["perplexity"][k], math.exp(nll)) < 1e-4
        assert rel(ent["entropy"][k], h) < 1e-5
        assert rel(e2["el2n"][k], el) < 1e-5
    whole = scorer("perplexity", lm, target="text")(df)
    assert (whole["perplexity.n_tokens"] > ppl["perplexity.n_tokens"]).all()


# ------------------------------------------------------------------ batching invariance
@pytest.mark.parametrize(
    "batching,bt,share",
    [
        ("bucket", 700, True),
        ("bucket", 100_000, True),
        ("bucket", 100_000, False),
        ("pack", 700, False),
        ("row", 700, True),
    ],
)
def test_batched_equals_unbatched(lm, rows, batching, bt, share):
    df = pd.DataFrame(rows[:6] + rows[-2:])
    one = scorer("ifd", lm, batch_tokens=1, share_prefix=False)(df)  # one sequence per batch
    many = scorer("ifd", lm, batch_tokens=bt, batching=batching, share_prefix=share)(df)
    for col in ("ifd", "ifd.loss_cond", "ifd.loss_direct"):
        np.testing.assert_allclose(many[col], one[col], rtol=1e-5, atol=0)


def _units(lm, rows, template="alpaca"):
    tok = lm.tokenizer
    out = []
    for r in rows:
        tk = tokenize_rendered(render_sample(r, template, tok), tok)
        out.append(Unit(tk.ids, tk.score))
    return out


def test_row_mode_bits_do_not_depend_on_companions_or_threads(lm, rows):
    """mode="row" runs each unit alone, so a unit's losses are the same bits whichever units share the
    call, in whatever order, on any thread count (short units: tests/features/test_thread_bits.py;
    what makes LM scores independent of the shard layout;
    mode="bucket" fails this: its bits follow the batch's padded length and shared prefix); they equal
    the full-logits oracle to float rounding."""
    units = _units(lm, rows) + [Unit([], [])]
    ref = full_logits_losses(lm, units)
    st: dict = {}
    whole = unit_losses(lm, units, mode="row", entropy=True, stats=st)
    assert st["batches"] == len(units) - 1  # each unit padded alone to a multiple of the BLAS row tile (4)
    assert st["forward_tokens"] % 4 == 0 and 0 <= st["forward_tokens"] - st["real_tokens"] <= 3 * st["batches"]
    assert whole[-1].nll.size == 0
    for a, b in zip(whole, ref):
        np.testing.assert_allclose(a.nll, b.nll, rtol=1e-5, atol=1e-6)
    picks = [[3], [5, 0, 3], list(range(len(units)))[::-1], [7, 3, 1]]
    threads = torch.get_num_threads()
    try:
        for n_threads, pick in zip((1, 2, 3, 1), picks):
            torch.set_num_threads(n_threads)
            part = unit_losses(lm, [units[i] for i in pick], mode="row", entropy=True)
            for j, i in enumerate(pick):
                assert np.array_equal(part[j].nll, whole[i].nll), (pick, i)
                assert np.array_equal(part[j].entropy, whole[i].entropy), (pick, i)
    finally:
        torch.set_num_threads(threads)


def test_shared_prefix_runs_template_once(lm, rows):
    tok = lm.tokenizer
    units = []
    for row in rows[:6]:
        tk = tokenize_rendered(render_sample(row, "alpaca", tok), tok)
        units.append(Unit(tk.ids, tk.score))
    ref = full_logits_losses(lm, units)
    st = {}
    out = unit_losses(lm, units, batch_tokens=100_000, stats=st, min_prefix=8)
    # the Alpaca preamble (> 100 bytes) is computed once per bucket
    assert st["batches"] < 6 and st["shared_prefix_tokens"] >= (6 - st["batches"]) * 100
    assert st["forward_tokens"] + st["shared_prefix_tokens"] >= st["real_tokens"]
    for a, b in zip(out, ref):
        np.testing.assert_allclose(a.nll, b.nll, rtol=1e-5, atol=1e-6)
    st2 = {}
    unit_losses(lm, units, batch_tokens=100_000, stats=st2, share_prefix=False)
    assert st2["shared_prefix_tokens"] == 0


@pytest.mark.parametrize("side", ["left", "right"])
def test_unit_losses_padding_sides_and_extras(lm, rows, side):
    tok = lm.tokenizer
    units = []
    for row in rows[:5] + rows[-2:]:
        tk = tokenize_rendered(render_sample(row, "chat", tok), tok)
        units.append(Unit(tk.ids, tk.score))
    units.append(Unit([5], [True]))  # token 0 is never scored
    units.append(Unit([], []))
    ref = full_logits_losses(lm, units)
    for bt in (150, 4096):
        st = {}
        out = unit_losses(lm, units, batch_tokens=bt, padding_side=side, entropy=True, el2n=True, rank=True, stats=st)
        for a, b in zip(out, ref):
            np.testing.assert_allclose(a.nll, b.nll, rtol=1e-5, atol=1e-6)
            assert a.entropy.shape == a.nll.shape and a.rank.dtype == np.int64
        assert out[-1].nll.size == 0 and out[-2].nll.size == 0
        assert st["scored_tokens"] == sum(len(b.nll) for b in ref)
        assert st["forward_tokens"] >= st["real_tokens"]


def test_bucket_and_pack_plans():
    lengths = [5, 0, 12, 3, 12, 7]
    b = plan_buckets(lengths, 24, overhead=4)
    assert sorted(i for g in b for i in g) == [0, 2, 3, 4, 5]
    for g in b:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 24
    assert b[0] == [2, 4]
    # the DP cuts where padding would cost more than an extra call
    rng = np.random.default_rng(0)
    ls = [int(x) for x in rng.integers(1, 400, size=300)]
    for ov in (0, 64):
        plan = plan_buckets(ls, 4096, overhead=ov)
        assert sorted(i for g in plan for i in g) == list(range(300))
        assert all(len(g) * max(ls[i] for i in g) <= 4096 for g in plan)
        cost = sum(len(g) * max(ls[i] for i in g) + ov for g in plan)
        greedy, cur = [], []
        for i in sorted(range(300), key=lambda i: -ls[i]):
            if cur and (len(cur) + 1) * ls[cur[0]] > 4096:
                greedy.append(cur)
                cur = []
            cur.append(i)
        greedy.append(cur)
        assert cost <= sum(len(g) * max(ls[i] for i in g) + ov for g in greedy)
    assert plan_buckets(ls, 4096, overhead=0) == [[i] for i in sorted(range(300), key=lambda i: (-ls[i], i))] or sum(
        len(g) * max(ls[i] for i in g) for g in plan_buckets(ls, 4096, overhead=0)
    ) == sum(ls)
    p = plan_packs(lengths, 20)
    assert sorted(i for g in p for i in g) == [0, 2, 3, 4, 5]
    assert all(sum(lengths[i] for i in g) <= 20 for g in p)
    assert plan_buckets([], 10) == [] and plan_buckets([50], 10) == [[0]]


def test_unit_losses_bad_arguments(lm):
    with pytest.raises(ValueError, match="batch_tokens"):
        unit_losses(lm, [], batch_tokens=0)
    with pytest.raises(ValueError, match="mode"):
        unit_losses(lm, [], mode="zip")
    with pytest.raises(ValueError, match="padding_side"):
        unit_losses(lm, [], padding_side="middle")
    with pytest.raises(ValueError, match=r"units\[0\]"):
        unit_losses(lm, [Unit([1, 2], [True])])


# ------------------------------------------------------------------ bad input and multi-turn
def test_bad_rows_get_reasons_and_do_not_abort(lm, rows):
    bad = [
        {"id": "empty", "instruction": "x", "input": "", "output": "   "},
        {"id": "missing", "instruction": "x", "input": "", "output": None},
        {"id": "nonstr", "instruction": 7, "input": "", "output": "y"},
    ]
    df = pd.DataFrame(rows[:2] + bad)
    for name in ("ifd", "perplexity", "entropy", "el2n", "reverse_ifd"):
        out = scorer(name, lm)(df)
        assert list(out["id"]) == [r["id"] for r in rows[:2]] + ["empty", "missing", "nonstr"]
        assert out[name][:2].notna().all() and out[name][2:].isna().all()
        assert (out[f"{name}.reason"][:2] == "").all()
        reasons = list(out[f"{name}.reason"][2:])
        assert "empty" in reasons[0]
        assert "sample 'missing'" in reasons[1] and "output" in reasons[1]
        assert "sample 'nonstr'" in reasons[2] and "instruction" in reasons[2]


@pytest.mark.parametrize("which", ["lm", "lm_smol"])
def test_multi_turn_scores_every_assistant_turn(which, request):
    lm = request.getfixturevalue(which)
    conv = [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Green, or red."},
    ]
    df = pd.DataFrame([{"id": "c1", "conversation": conv}])
    ppl = scorer("perplexity", lm)(df)
    tok = lm.tokenizer
    r = render_sample({"id": "c1", "conversation": conv}, "alpaca", tok)
    tk = tokenize_rendered(r, tok)
    n_expect = sum(len(tok(c["content"], add_special_tokens=False).input_ids) for c in conv[1::2])
    assert ppl["perplexity.n_tokens"][0] == n_expect == sum(tk.score)
    nll, _, _ = _oracle_stats(lm, tk.ids, tk.score)
    assert rel(ppl["perplexity.loss"][0], nll) < 1e-5
    ifd = scorer("ifd", lm)(df)
    assert ifd["ifd.reason"][0] == "" and ifd["ifd.n_tokens"][0] == n_expect
    # direct pass = each assistant turn after the prefix, pooled
    from thresher.render import Rendered

    ds = []
    for c in conv[1::2]:
        d = Rendered("d", "### Response:" + c["content"], [(13, 13 + len(c["content"]))])
        dk = tokenize_rendered(d, tok)
        ds.append(Unit(dk.ids, dk.score))
    pooled = np.concatenate([u.nll for u in full_logits_losses(lm, ds)])
    assert rel(ifd["ifd.loss_direct"][0], pooled.mean()) < 1e-5


def test_options_validation_and_cache_key(lm):
    with pytest.raises(ValueError, match="unknown option"):
        scorer("ifd", lm, temperature=1)
    with pytest.raises(ValueError, match="ratio"):
        scorer("ifd", lm, ratio="log")
    with pytest.raises(ValueError, match="batch_tokens"):
        scorer("ifd", lm, batch_tokens=-1)
    k1 = scorer("ifd", lm).cache_key()
    assert k1 == scorer("ifd", lm, batch_tokens=7).cache_key()  # batching does not change scores
    assert k1 != scorer("ifd", lm, ratio="ppl").cache_key()
    assert k1 != scorer("ifd", tiny_causal_lm(1, tokenizer="bytes", init_std=0.3)).cache_key()
    entry = CRITERIA.get("ifd")
    assert entry.meta["direction"] == "max" and entry.meta["needs"] == ("model",)


def test_accepts_pyarrow_and_no_id(lm, rows):
    import pyarrow as pa

    t = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "id"} for r in rows[:3]])
    out = scorer("perplexity", lm)(t)
    assert list(out["id"]) == ["0", "1", "2"] and out["perplexity"].notna().all()


@pytest.mark.slow
def test_real_default_model_scores_three_samples(rows):
    from thresher.models import shared_lm

    real = shared_lm("default")
    out = scorer("ifd", real)(pd.DataFrame(rows[:3]))
    assert out["ifd"].notna().all() and (out["ifd.loss_cond"] > 0).all()
    cherry = _load_cherry()
    k = int(np.argmin([len(r["instruction"]) for r in rows[:3]]))
    r = rows[k]
    ref = cherry.cherry_ifd(real.model, real.tokenizer, r["instruction"], r["output"], r["input"])
    assert rel(out["ifd"][k], ref["ifd"]) < 1e-4
