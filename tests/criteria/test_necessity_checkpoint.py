"""necessity (MoDS stage 3): a call stopped in its generation resumes with the seed's LoRA and the answers
it kept, the results of an unbroken call; another pool reuses nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import thresher.criteria.necessity as nec_mod
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA


class Stop(Exception):
    pass


class Enc:
    dim, fingerprint = 3, "enc"

    def encode(self, texts, batch_size=64):
        return np.asarray([[len(t) % 5, t.count("a"), len(t) // 5 % 3] for t in texts], np.float32) + 0.1


def pool(n=30, tweak=""):
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "instruction": [f"task {i} {'a' * (i % 4)}{tweak}"
                         for i in range(n)], "input": "", "output": ["x" * (i % 7 + 1) for i in range(n)]})  # fmt: skip


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes")


def counters(monkeypatch) -> dict:
    """Counts of stage-1/answer rating windows, LoRA trainings and generation blocks; generation block number
    ``st['stop_gen']`` raises Stop (0: never)."""
    st = {"rated": 0, "trained": 0, "gen": 0, "stop_gen": 0}
    real_train, real_gen = nec_mod.warmup_resuming, nec_mod.generate_replies

    def quality(self, parts):
        for d in parts:
            st["rated"] += 1
            yield d["output"].str.len().to_numpy(np.float64) % 6, [""] * len(d)

    def train(*a, **k):
        st["trained"] += 1
        return real_train(*a, **k)

    def gen(*a, **k):
        st["gen"] += 1
        if st["gen"] == st["stop_gen"]:
            raise Stop
        return real_gen(*a, **k)

    monkeypatch.setattr(nec_mod.Necessity, "_quality_parts", quality)
    monkeypatch.setattr(nec_mod, "warmup_resuming", train)
    monkeypatch.setattr(nec_mod, "generate_replies", gen)
    monkeypatch.setattr(nec_mod, "GEN_BLOCK_BATCHES", 1)
    return st


def necessity(lm, **kw):
    kw = {"epochs": 1, **kw}
    crit = CRITERIA.get("necessity").obj(model=lm, quality_model=lm, embedder=Enc(), seed_k=3,
                                         max_new_tokens=2, gen_batch_size=3, quality_mode="absolute",
                                         quality_value=2.0, template="plain", **kw)  # fmt: skip
    crit.rating.window_rows = 8  # stage-1 ratings in windows of 8 rows: 4 blocks over 30 rows
    return crit


def test_a_call_stopped_in_generation_resumes_with_its_lora_and_answers(lm, tmp_path, monkeypatch):
    st = counters(monkeypatch)
    want = necessity(lm)(pool())
    total = dict(st)
    assert total["trained"] == 1 and total["gen"] >= 4 and total["rated"] == 4 + (total["gen"] * 3 + 7) // 8
    st.update(rated=0, trained=0, gen=0, stop_gen=3)  # the LoRA and two generation blocks done
    with pytest.raises(Stop):
        necessity(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600)(pool())
    assert sorted(p.parent.name.rsplit("-", 1)[1] for p in tmp_path.glob("*/part-*.npz")) == ["answers", "quality"]
    assert len(list(tmp_path.glob("*-lora/warmup.json"))) == 1
    st.update(rated=0, trained=0, gen=0, stop_gen=0)
    crit = necessity(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    pd.testing.assert_frame_equal(crit(pool()), want)
    assert st["trained"] == 0 and st["gen"] == total["gen"] - 2  # the LoRA loaded; two blocks of answers kept
    assert st["rated"] == total["rated"] - 4  # stage-1's four windows kept
    assert crit.run_info()["resumed_blocks"] == 4 + 1 + 2
    assert not any(tmp_path.iterdir())


def test_another_pool_reuses_nothing_and_zero_saves_nothing(lm, tmp_path, monkeypatch):
    st = counters(monkeypatch)
    st["stop_gen"] = 2
    with pytest.raises(Stop):
        necessity(lm, checkpoint_dir=str(tmp_path), checkpoint_s=0)(pool())
    assert not any(tmp_path.iterdir())
    st.update(gen=0, stop_gen=2)
    with pytest.raises(Stop):
        necessity(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600)(pool())
    st.update(rated=0, trained=0, gen=0, stop_gen=0)
    other = necessity(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    other(pool(tweak="!"))
    assert st["trained"] == 1 and other.run_info()["resumed_blocks"] == 0
    assert len(list(tmp_path.glob("*/part-*.npz"))) == 2  # the stopped call's blocks are still there
    assert len(list(tmp_path.glob("*-lora/warmup.json"))) == 1


def test_the_cache_lists_and_prunes_a_stopped_calls_stores_and_lora(lm, tmp_path, monkeypatch):
    from thresher.cache import prune, prune_candidates

    st = counters(monkeypatch)
    st["stop_gen"] = 2
    folder = tmp_path / "necessity" / "search-checkpoints"  # the pipeline's folder
    with pytest.raises(Stop):
        necessity(lm, checkpoint_dir=str(folder), checkpoint_s=3600)(pool())
    entries = prune_candidates(tmp_path, criterion="necessity")
    kinds = sorted(e.files[0].parent.name.rsplit("-", 1)[1] if "lora" not in str(e.files[0]) else "lora"
                   for e in entries)  # fmt: skip
    assert kinds == ["answers", "lora", "quality"]
    lora = next(e for e in entries if "lora" in str(e.files[0]))
    assert any(f.name == "adapter.safetensors" for f in lora.files) and lora.bytes > 0
    assert prune(tmp_path, entries)[0] == 3
    assert not (tmp_path / "necessity").exists()


def test_the_stage_one_ratings_window_by_window_equal_one_call_of_the_rating_scorer(lm):
    crit = necessity(lm)  # the rating scorer's windows: 8 rows
    df = pool(30)
    q, why = crit._rated(df, None)
    want = crit.rating(df)  # one call of the rating scorer, as necessity made before its checkpoints
    np.testing.assert_array_equal(q, want["rating"].to_numpy(np.float64))
    assert why == want["rating.reason"].tolist()
    whole = CRITERIA.get("rating").obj(model=lm)
    whole.window_rows = None  # no windows at all: other batches, the same ratings up to fp32 rounding
    np.testing.assert_allclose(q, whole(df)["rating"].to_numpy(np.float64), rtol=1e-5)


def test_a_call_stopped_in_the_seed_warm_up_goes_on_from_its_last_epoch(lm, tmp_path, monkeypatch):
    import thresher.train.warmup as warm_mod

    counters(monkeypatch)
    opts = {"epochs": 3, "batch_size": 3}  # three seed rows: one step an epoch
    want = necessity(lm, **opts)(pool())
    real, calls = warm_mod._batch_loss, [0]

    def loss(*a, **k):
        calls[0] += 1
        if calls[0] == 3:  # in the third epoch
            raise Stop
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(warm_mod, "_batch_loss", loss)
        with pytest.raises(Stop):
            necessity(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600, **opts)(pool())
    assert [p.name for p in tmp_path.glob("*-lora/progress.json")] == ["progress.json"]
    calls[0] = 0
    monkeypatch.setattr(warm_mod, "_batch_loss", lambda *a, **k: (calls.__setitem__(0, calls[0] + 1), real(*a, **k))[1])
    crit = necessity(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600, **opts)
    pd.testing.assert_frame_equal(crit(pool()), want)
    assert calls[0] == 1 and crit.run_info()["resumed_warmup_step"] == 2  # epochs 1-2 kept, only the third trained
    assert not any(tmp_path.iterdir())


def test_the_run_log_names_a_resumed_warm_up():
    from types import SimpleNamespace

    from thresher.pipeline.scoring import _say_resumed

    logs: list = []
    st = SimpleNamespace(run_info={"necessity": {"resumed_blocks": 0, "resumed_warmup_step": 2}}, say=logs.append)
    _say_resumed(st, "necessity")
    st.run_info["necessity"] = {"resumed_blocks": 3}
    _say_resumed(st, "necessity")
    st.run_info["necessity"] = {"resumed_blocks": 0}
    _say_resumed(st, "necessity")
    assert logs == [
        "necessity: resumed 0 blocks (ratings, the seed's LoRA, answers), and the seed's LoRA warm-up at step 2 "
        "from its checkpoint",
        "necessity: resumed 3 blocks (ratings, the seed's LoRA, answers) from its checkpoint",
    ]
