"""Prefetching loader (thresher.features.loader) and the windowed, prefetched criterion path.

The prefetched path must give exactly the scores and reasons of the plain path (the same
windows prepared in the caller's thread), in input order, and errors raised while
preparing a window must reach the caller. Real BIG-bench rows, tiny models built from a
config (byte-level tokenizer), plus odd rows (empty answers, multi-turn, missing fields).
"""

from __future__ import annotations

import contextvars
import gzip
import json
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from thresher.criteria.base import BatchCriterion
from thresher.features.loader import map_ranges, prefetch, prep_threads, to_device, windows
from thresher.features.tokens import Unit, full_logits_losses, unit_losses
from thresher.models import shared_lm, tiny_causal_lm
from thresher.registry import CRITERIA
from thresher.render import render_sample, tokenize_rendered

N_REAL = 30
MAX_LEN = 1024  # bytes: most BIG-bench rows fit


# ------------------------------------------------------------------ prefetch / windows
def test_prefetch_keeps_order_and_matches_the_plain_path():
    items = list(range(23))
    plain = list(prefetch(lambda x: x * x, items, depth=0))
    assert plain == [x * x for x in items]
    for depth in (1, 2, 5, 50):
        assert list(prefetch(lambda x: x * x, items, depth=depth)) == plain
    assert list(prefetch(lambda x: x, [], depth=2)) == []


def test_prefetch_runs_fn_in_a_background_thread_with_the_callers_context():
    var = contextvars.ContextVar("v", default="unset")
    var.set("caller")
    seen = list(prefetch(lambda _: (threading.get_ident(), var.get()), range(3), depth=2))
    assert all(t != threading.get_ident() for t, _ in seen)
    assert all(v == "caller" for _, v in seen)
    assert list(prefetch(lambda _: threading.get_ident(), range(2), depth=0)) == [threading.get_ident()] * 2


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_error_reaches_the_caller_at_its_item(depth):
    calls = []

    def fn(x):
        calls.append(x)
        if x == 4:
            raise KeyError(f"bad item {x}")
        return x

    got = []
    with pytest.raises(KeyError, match="bad item 4"):
        for v in prefetch(fn, range(10), depth=depth):
            got.append(v)
    assert got == [0, 1, 2, 3]  # every result before the failing item, in order
    assert calls == [0, 1, 2, 3, 4]  # nothing after it is computed


def test_prefetch_error_of_the_iterable_reaches_the_caller():
    def gen():
        yield 1
        raise OSError("source broke")

    it = prefetch(lambda x: x, gen(), depth=2)
    assert next(it) == 1
    with pytest.raises(OSError, match="source broke"):
        next(it)


def test_prefetch_stops_its_thread_when_the_caller_stops_early():
    calls = []
    before = {t.ident for t in threading.enumerate()}
    it = prefetch(lambda x: calls.append(x) or x, range(1000), depth=2)
    assert next(it) == 0
    it.close()
    left = [t for t in threading.enumerate() if t.ident not in before and t.name == "thresher-prefetch"]
    assert not left
    assert len(calls) <= 4  # the bounded queue: at most depth results (plus one being made) ahead


def test_prefetch_and_windows_reject_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(lambda x: x, [1], depth=-1))
    with pytest.raises(ValueError, match="rows"):
        windows(5, 0)


def test_windows_cover_every_row_once():
    for n, w in [(0, 3), (1, 3), (3, 3), (7, 3), (10, 1), (5, 100)]:
        sl = windows(n, w)
        covered = [i for s in sl for i in range(n)[s]]
        assert covered == list(range(n))
        assert all(0 < s.stop - s.start <= w for s in sl) or n == 0


@pytest.mark.parametrize("n", [0, 1, 63, 128, 129, 1000])
@pytest.mark.parametrize("threads", [1, 3, 8])
def test_map_ranges_covers_every_row_once_in_order(n, threads):
    seen = []
    got = map_ranges(lambda r: (seen.append(threading.current_thread().name), list(r))[1], n, threads, min_rows=64)
    assert [i for part in got for i in part] == list(range(n))
    assert len(got) == max(1, min(threads, n // 64))
    if len(got) > 1:  # the ranges ran on the pool's threads, not the caller's
        assert all(name.startswith("thresher-prep") for name in seen)


def test_map_ranges_carries_the_context_and_raises_the_first_error_in_order():
    var = contextvars.ContextVar("v", default="unset")
    var.set("caller")
    assert map_ranges(lambda r: var.get(), 300, 3) == ["caller"] * 3

    def fn(r):
        if r.start > 0:
            raise KeyError(r.start)
        return r

    with pytest.raises(KeyError) as err:
        map_ranges(fn, 300, 3)
    assert err.value.args == (100,)


def test_prep_threads_policy(monkeypatch):
    monkeypatch.delenv("THRESHER_PREP_THREADS", raising=False)
    assert prep_threads("cpu") == 1
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert prep_threads("cuda:0") == 8
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert prep_threads(torch.device("cuda")) == 1
    monkeypatch.setenv("THRESHER_PREP_THREADS", "3")
    assert prep_threads("cpu") == 3
    from thresher.errors import OptionError

    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("THRESHER_PREP_THREADS", bad)
        with pytest.raises(OptionError, match="THRESHER_PREP_THREADS"):  # one line from the CLI, no traceback
            prep_threads("cpu")


def test_to_device_is_a_no_op_on_the_cpu():
    t = torch.arange(5)
    assert to_device(t, "cpu") is t
    assert to_device(t, torch.device("cpu")) is t


# ------------------------------------------------------------------ criteria
@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)


@pytest.fixture(scope="module")
def table(bigbench_path):
    rows = []
    with gzip.open(bigbench_path, "rt") as f:
        for line in f:
            r = json.loads(line)
            rows.append({"id": r["id"], "instruction": r["instruction"], "input": "", "output": r["output"]})
            if len(rows) >= N_REAL:
                break
    odd = [
        {"id": "empty-answer", "instruction": "Say nothing.", "input": "", "output": "   "},
        {"id": "with-input", "instruction": "Translate to French.", "input": "good morning", "output": " bonjour"},
        {"id": "no-output", "instruction": "Where is the answer?", "input": "", "output": None},
        {"id": "unicode", "instruction": "Reply with an emoji.", "input": "", "output": "😀 ok"},
    ]
    # the odd rows sit in different windows of 7
    for pos, r in zip((3, 11, 19, 26), odd):
        rows.insert(pos, r)
    return pd.DataFrame(rows)


def _scorer(name, lm, window, depth, **kw):
    s = CRITERIA.get(name).obj(model=lm, max_length=MAX_LEN, batch_tokens=4096, **kw)
    s.window_rows, s.prefetch = window, depth
    return s


@pytest.mark.parametrize("name", ["ifd", "perplexity", "reverse_ifd", "entropy"])
def test_prefetched_windows_give_exactly_the_plain_scores(lm, table, name):
    plain = _scorer(name, lm, 7, 0)(table)
    fetched = _scorer(name, lm, 7, 2)(table)
    pd.testing.assert_frame_equal(fetched, plain, check_exact=True)
    assert fetched["id"].tolist() == table["id"].astype(str).tolist()
    # the whole batch in one piece forms other batches: equal up to float rounding, same reasons
    whole = _scorer(name, lm, None, 0)(table)
    assert whole["id"].tolist() == plain["id"].tolist()
    assert whole[f"{name}.reason"].tolist() == plain[f"{name}.reason"].tolist()
    np.testing.assert_allclose(plain[name].to_numpy(), whole[name].to_numpy(), rtol=1e-5, equal_nan=True)


def test_reasons_survive_the_windows(lm, table):
    out = _scorer("ifd", lm, 7, 2)(table).set_index("id")
    assert out.loc["empty-answer", "ifd.reason"] == "empty answer"
    assert "output" in out.loc["no-output", "ifd.reason"]
    assert np.isnan(out.loc["empty-answer", "ifd"]) and np.isnan(out.loc["no-output", "ifd"])
    rest = out.drop(["empty-answer", "no-output"])
    cut = rest["ifd.reason"] != ""
    assert (rest.loc[cut, "ifd.reason"] == f"answer truncated away (max_length={MAX_LEN})").all()
    assert np.isnan(rest.loc[cut, "ifd"]).all() and np.isfinite(rest.loc[~cut, "ifd"]).all()
    assert (~cut).sum() >= 20


def test_windowed_perplexity_matches_a_full_logits_oracle(lm, table):
    """An independent oracle: one sample at a time, full logits, log_softmax."""
    out = _scorer("perplexity", lm, 5, 2)(table)
    sub = table.iloc[:12]
    for i, row in enumerate(sub.to_dict("records")):
        if not (row["output"] or "").strip():
            continue
        r = render_sample(row, "alpaca", lm.tokenizer, sid=str(row["id"]))
        tk = tokenize_rendered(r, lm.tokenizer, max_length=MAX_LEN, truncation="right")
        nll = full_logits_losses(lm, [Unit(tk.ids, tk.score)])[0].nll
        want = float(np.exp(nll.mean())) if nll.size else np.nan
        assert out["perplexity"].iloc[i] == pytest.approx(want, rel=1e-4, nan_ok=True)


def test_rows_without_ids_keep_their_positions_across_windows(lm, table):
    no_id = table.drop(columns=["id"])
    out = _scorer("perplexity", lm, 4, 2)(no_id)
    assert out["id"].tolist() == [str(i) for i in range(len(table))]
    ref = _scorer("perplexity", lm, 4, 0)(no_id)
    pd.testing.assert_frame_equal(out, ref, check_exact=True)


def test_stream_scores_batches_in_order(lm, table):
    s = _scorer("ifd", lm, None, 2)
    parts = [table.iloc[a:b].reset_index(drop=True) for a, b in [(0, 9), (9, 10), (10, 10), (10, len(table))]]
    streamed = list(s.stream(parts))
    assert [len(f) for f in streamed] == [9, 1, 0, len(table) - 10]
    for f, p in zip(streamed, parts):
        pd.testing.assert_frame_equal(f, s(p), check_exact=True)


def test_an_error_while_preparing_a_window_reaches_the_caller(lm, table):
    s = _scorer("ifd", lm, 6, 2)
    bad_id = table["id"].iloc[20]
    orig = s.items

    def items(b, i, row):
        if b.ids[i] == bad_id:
            raise RuntimeError(f"tokenizer exploded on {bad_id}")
        return orig(b, i, row)

    s.items = items
    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        s(table)


def test_a_criterion_with_per_batch_state_is_scored_in_one_piece(lm, table):
    seen = []

    class Anchored(type(CRITERIA.get("perplexity").obj(model=lm))):
        def begin(self, b):
            seen.append(b.n)

    s = Anchored(model=lm, max_length=MAX_LEN)
    s.window_rows, s.prefetch = 5, 2
    s(table)
    assert seen == [len(table)]
    assert not s._windowed() and BatchCriterion.window_rows is None


def test_unit_losses_flushes_losses_in_several_calls(lm, table, monkeypatch):
    """Scored hidden states gathered over many batches, losses in several flushes: same results."""
    import thresher.features.tokens as tokens

    texts = [r["instruction"] + r["output"] for r in table.to_dict("records") if isinstance(r["output"], str)]
    units = [Unit(list(t.encode())[:200], [k % 3 != 0 for k in range(min(len(t.encode()), 200))]) for t in texts]
    ref = unit_losses(lm, units, batch_tokens=400, share_prefix=False)
    monkeypatch.setattr(tokens, "LOSS_FLUSH_BYTES", 1)  # one flush per batch
    per_batch = unit_losses(lm, units, batch_tokens=400, share_prefix=False, entropy=True, rank=True)
    for a, b in zip(ref, per_batch):
        np.testing.assert_allclose(a.nll, b.nll, rtol=1e-5, atol=1e-6)
        assert b.entropy.shape == b.nll.shape and b.rank.dtype == np.int64
    oracle = full_logits_losses(lm, units[:5])
    for a, o in zip(ref, oracle):
        np.testing.assert_allclose(a.nll, o.nll, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ one model per process
def test_shared_lm_loads_each_model_once(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    lm0 = tiny_causal_lm(3, tokenizer="bytes")
    for d in (a, b):
        lm0.model.save_pretrained(d)
        lm0.tokenizer.save_pretrained(d)
    first = shared_lm(str(a), dtype="float32", device="cpu")
    assert shared_lm(str(a), dtype="float32", device="cpu") is first
    assert shared_lm(str(b), dtype="float32", device="cpu") is first  # same weights, one copy
    # a model replaced in place is loaded again
    lm1 = tiny_causal_lm(4, tokenizer="bytes")
    lm1.model.save_pretrained(a)
    again = shared_lm(str(a), dtype="float32", device="cpu")
    assert again is not first and again.fingerprint == lm1.fingerprint


@pytest.fixture(scope="module")
def lm_fast():
    """A tiny model with the default model's real (Rust, fast) tokenizer, called from several threads."""
    return tiny_causal_lm(1, init_std=0.3)


@pytest.mark.parametrize("name", ["ifd", "reverse_ifd", "perplexity"])
def test_rows_prepared_on_several_threads_give_exactly_the_one_thread_scores(lm_fast, table, name):
    big = pd.concat([table] * 8, ignore_index=True).assign(id=lambda d: [f"r{i}" for i in range(len(d))])
    one = _scorer(name, lm_fast, 256, 2)
    one.prep_threads = 1
    many = _scorer(name, lm_fast, 256, 2)
    many.prep_threads = 4
    calls = []
    real = many._items_of
    many._items_of = lambda b, r: (calls.append((threading.current_thread().name, len(r))), real(b, r))[1]
    got, want = many(big), one(big)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # windows of 256 and 16 rows: the first in 4 ranges on the pool's threads, the second in one range
    assert sum(n for _, n in calls) == len(big) == 272
    assert sorted(n for t, n in calls if t.startswith("thresher-prep")) == [64] * 4
    assert (got[f"{name}.reason"] != "").sum() >= 16  # the odd rows keep their reasons
