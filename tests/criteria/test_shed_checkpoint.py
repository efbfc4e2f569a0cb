"""SHED: a call stopped part-way through its coalitions resumes from the values it kept, with the
Shapley values of an unbroken call, and only for the same model, options, proxies and validation rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thresher.criteria.shapley import Shed, monte_carlo_shapley
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA


class Stop(Exception):
    pass


class Grid:
    """A 2-D embedder: row i of the pool at a point of its own cluster (``clusters`` of them)."""

    dim, fingerprint = 2, "grid"

    def encode(self, texts, batch_size=64):
        return np.asarray([[int(t.split()[1]) % 7, int(t.split()[1]) // 7 % 3] for t in texts], np.float32)


def pool(n=21, tweak=""):
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "instruction": [f"row {i}" for i in range(n)],
                         "input": "", "output": "o" + tweak})  # fmt: skip


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes")


def game(monkeypatch) -> dict:
    """A deterministic non-additive game on the proxies' texts; ``st['calls']`` counts evaluations, and
    evaluation number ``st['after']`` raises Stop (0: never)."""
    st = {"calls": 0, "after": 0}

    def value_function(self, proxy_rows, val_rows):
        texts = zip(proxy_rows["instruction"], proxy_rows["output"])
        w = [len(t) + len(o) + 0.1 * (t.count("1") + 1) for t, o in texts]

        def v(s):
            st["calls"] += 1
            if st["calls"] == st["after"]:
                raise Stop
            return float(sum(w[i] for i in s)) ** 0.5

        return v

    monkeypatch.setattr(Shed, "value_function", value_function)
    return st


def shed(lm, **kw):
    return CRITERIA.get("shed").obj(model=lm, embedder=Grid(), n_clusters=6, permutations=3, seed=2, **kw)


def test_a_stopped_call_resumes_with_the_values_of_an_unbroken_one(lm, tmp_path, monkeypatch):
    st = game(monkeypatch)
    want = shed(lm)(pool())
    total = st["calls"]
    assert total > 10  # the game's memo: distinct coalitions over 3 permutations of 6 proxies
    st.update(calls=0, after=8)
    with pytest.raises(Stop):
        shed(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600)(pool())  # 7 values kept on the stop
    assert len(list(tmp_path.glob("*/part-*.npz"))) == 1
    st.update(calls=0, after=0)
    sc = shed(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    got = sc(pool())
    pd.testing.assert_frame_equal(got, want)
    assert st["calls"] == total - 7
    info = sc.run_info()
    assert info["resumed_coalitions"] == 7 and info["coalitions"] == total and info["checkpoint_saves"] == 0
    assert not any(tmp_path.iterdir())


def test_other_rows_or_options_reuse_nothing_and_zero_saves_nothing(lm, tmp_path, monkeypatch):
    st = game(monkeypatch)
    st["after"] = 6
    with pytest.raises(Stop):
        shed(lm, checkpoint_dir=str(tmp_path), checkpoint_s=0)(pool())
    assert not any(tmp_path.iterdir())
    st.update(calls=0, after=6)
    with pytest.raises(Stop):
        shed(lm, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9)(pool())  # a part per value: 5
    assert len(list(tmp_path.glob("*/part-*.npz"))) == 5
    for other, rows in ((shed(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600), pool(tweak="!")),
                        (shed(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600, lr=1e-3), pool())):  # fmt: skip
        st.update(calls=0, after=0)
        other(rows)
        assert other.run_info()["resumed_coalitions"] == 0 and st["calls"] == other.run_info()["coalitions"]
    assert len(list(tmp_path.glob("*/part-*.npz"))) == 5  # the stopped call's values are still there


def test_resumable_value_recomputes_a_kept_value_of_another_coalition(tmp_path):
    from thresher.criteria.search_checkpoint import SearchCheckpoint
    from thresher.criteria.shapley import resumable_value

    store = SearchCheckpoint(tmp_path, "x", every_s=3600)
    store.put(0, np.array([5.0]), np.array([0, 1]))
    store.flush()
    counts = {"resumed": 0, "evaluated": 0}
    again = SearchCheckpoint(tmp_path, "x", every_s=3600)
    v = resumable_value(lambda s: float(len(s)), again, counts)
    assert v((0, 2)) == 2.0 and v((1,)) == 1.0 and counts == {"resumed": 0, "evaluated": 2}  # (0, 1) was kept
    again.flush()
    kept = resumable_value(lambda s: -1.0, SearchCheckpoint(tmp_path, "x", every_s=3600), counts)
    assert kept((0, 2)) == 2.0 and kept((1,)) == 1.0 and counts["resumed"] == 2
    phi = monte_carlo_shapley(3, resumable_value(lambda s: float(sum(s)), SearchCheckpoint(tmp_path, "y"), counts),
                              permutations=2)  # fmt: skip
    np.testing.assert_allclose(phi, [0.0, 1.0, 2.0])


def test_a_pipeline_run_stopped_in_shed_resumes_from_its_coalitions(tmp_path, monkeypatch):
    from conftest import save_tiny_lm
    from thresher.pipeline import PipelineConfig, run_pipeline

    data = tmp_path / "pool.jsonl"
    pool().to_json(data, orient="records", lines=True)
    model = str(save_tiny_lm(tmp_path / "tiny"))
    st = game(monkeypatch)
    monkeypatch.setattr("thresher.criteria.shapley.get_embedder", lambda spec: Grid())

    def cfg(out, cache):
        opts = {"model": model, "embedder": "grid", "n_clusters": 6, "permutations": 3, "seed": 2, "device": "cpu"}
        return PipelineConfig(data=str(data), out=str(tmp_path / out), cache_dir=str(tmp_path / cache),
                              criteria=[{"name": "shed", "options": opts}], k=5, quiet=True, report=False,
                              checkpoint_s=1e-9)  # fmt: skip

    fresh = pd.read_parquet(run_pipeline(cfg("fresh", "cache-fresh")).scores_path)
    total = st["calls"]
    st.update(calls=0, after=5)
    with pytest.raises(Stop):
        run_pipeline(cfg("a", "cache"))
    assert len(list((tmp_path / "cache" / "shed" / "search-checkpoints").glob("*/part-*.npz"))) == 4
    st.update(calls=0, after=0)
    logs: list = []
    monkeypatch.setattr("thresher.pipeline.state.RunState.say", lambda self, msg: logs.append(msg))
    res = run_pipeline(cfg("b", "cache"))
    pd.testing.assert_frame_equal(pd.read_parquet(res.scores_path), fresh)
    assert st["calls"] == total - 4
    assert any(f"shed: resumed 4 of {total} coalition values" in m for m in logs), logs
    assert not (tmp_path / "cache" / "shed" / "search-checkpoints").exists()


def test_a_call_stopped_inside_a_fine_tune_goes_on_from_its_last_step(lm, tmp_path, monkeypatch):
    """The real value function (LoRA fine-tunes of the tiny model, one step per proxy row): stopped in the
    middle of a coalition's fine-tune, the next call takes the kept values, goes on with that fine-tune from
    its last saved step, and ends with the unbroken call's frame."""
    import thresher.train.progress as progress_mod
    import thresher.train.warmup as warm_mod

    monkeypatch.setattr(progress_mod, "SAVE_COST_FACTOR", 0.0)  # a part-way save after every step
    real, calls = warm_mod._batch_loss, {"n": 0, "stop": 0}

    def loss(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["stop"]:
            raise Stop
        return real(*a, **k)

    monkeypatch.setattr(warm_mod, "_batch_loss", loss)
    opts = {"batch_size": 1, "template": "plain", "max_length": 64, "validation_size": 4}
    want = shed(lm, **opts)(pool())
    total = calls["n"]
    calls.update(n=0, stop=5)  # the first permutation's coalitions train 1, 2, 3, ... steps: the 3rd, 2nd step
    with pytest.raises(Stop):
        shed(lm, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9, **opts)(pool())
    lora = [p for p in tmp_path.iterdir() if p.name.endswith("-lora")]
    assert len(lora) == 1 and (lora[0] / "progress-1").is_dir()  # the 3rd coalition's first step
    calls.update(n=0, stop=0)
    sc = shed(lm, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9, **opts)
    pd.testing.assert_frame_equal(sc(pool()), want)
    assert calls["n"] == total - 4  # the two kept values' 3 steps and the stopped fine-tune's first step
    info = sc.run_info()
    assert info["resumed_coalitions"] == 3 and info["resumed_finetune_step"] == 1  # + the empty coalition
    assert not any(tmp_path.iterdir())


def test_the_run_log_names_a_resumed_fine_tune():
    from types import SimpleNamespace

    from thresher.pipeline.scoring import _say_resumed

    logs: list = []
    info = {"resumed_coalitions": 3, "coalitions": 16, "resumed_finetune_step": 1}
    _say_resumed(SimpleNamespace(run_info={"shed": info}, say=logs.append), "shed")
    _say_resumed(
        SimpleNamespace(run_info={"shed": {"resumed_coalitions": 2, "coalitions": 16}}, say=logs.append), "shed"
    )
    assert logs == [
        "shed: resumed 3 of 16 coalition values, and a coalition's LoRA fine-tune at step 1 from its checkpoint",
        "shed: resumed 2 of 16 coalition values from its checkpoint",
    ]
