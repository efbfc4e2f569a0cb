"""nuggets: a call stopped part-way resumes from its checkpoint with the scores of an unbroken call,
and only for the same model, anchors and candidates."""

from __future__ import annotations

import pandas as pd
import pytest

import thresher.criteria.nuggets as nug_mod
from conftest import save_tiny_lm
from thresher.models import tiny_causal_lm
from thresher.registry import CRITERIA


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def lm():
    return tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)


def pool(n, shift=0):
    return pd.DataFrame([{"id": f"s{i}", "instruction": f"Name the number {i + shift}.", "input": "",
                          "output": f"{i + shift}"} for i in range(n)])  # fmt: skip


def nuggets(lm, seed=1, **kw):
    return CRITERIA.get("nuggets").obj(model=lm, n_anchors=4, anchor_select="random", seed=seed, batch_tokens=256,
                                       **kw)  # fmt: skip


def stopping(monkeypatch) -> dict:
    """prefix_reuse_losses counted (``calls``); raises Stop on call number ``after`` (0: never)."""
    real, st = nug_mod.prefix_reuse_losses, {"calls": 0, "after": 0}

    def counted(*a, **k):
        st["calls"] += 1
        if st["calls"] == st["after"]:
            raise Stop
        return real(*a, **k)

    monkeypatch.setattr(nug_mod, "prefix_reuse_losses", counted)
    return st


def test_a_stopped_call_resumes_with_the_scores_of_an_unbroken_one(lm, tmp_path, monkeypatch):
    monkeypatch.setattr(nug_mod, "ITEM_BLOCK", 8)
    want = nuggets(lm)(pool(30))
    st = stopping(monkeypatch)
    st["after"] = 20  # blocks 0-1 (16 candidates) done, stopped in block 2
    with pytest.raises(Stop):
        nuggets(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600)(pool(30))  # saved on the stop
    assert len(list(tmp_path.glob("*/part-*.npz"))) == 1
    st.update(calls=0, after=0)
    sc = nuggets(lm, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    got = sc(pool(30))
    pd.testing.assert_frame_equal(got, want)
    assert st["calls"] == 30 - 16  # only the candidates not saved
    info = sc.run_info()
    assert info["resumed_rows"] == 16 and info["scored_rows"] == 30 and info["checkpoint_saves"] == 0
    assert not any(tmp_path.iterdir())


def test_checkpoint_s_zero_saves_nothing_and_other_inputs_do_not_reuse_blocks(lm, tmp_path, monkeypatch):
    monkeypatch.setattr(nug_mod, "ITEM_BLOCK", 4)
    st = stopping(monkeypatch)
    st["after"] = 10
    with pytest.raises(Stop):
        nuggets(lm, checkpoint_dir=str(tmp_path), checkpoint_s=0)(pool(12))
    assert not any(tmp_path.iterdir())
    st.update(calls=0, after=10)
    with pytest.raises(Stop):
        nuggets(lm, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9)(pool(12))  # a part per block: 2
    assert len(list(tmp_path.glob("*/part-*.npz"))) == 2
    for other in (nuggets(lm, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9),  # other candidates
                  nuggets(lm, seed=2, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9)):  # other anchors  # fmt: skip
        st.update(calls=0, after=0)
        other(pool(12, shift=100) if other.options["seed"] == 1 else pool(12))
        assert st["calls"] == 12 and other.run_info()["resumed_rows"] == 0
    assert len(list(tmp_path.glob("*/part-*.npz"))) == 2  # the stopped call's blocks are still there
    st.update(calls=0, after=0)
    same = nuggets(lm, checkpoint_dir=str(tmp_path), checkpoint_s=1e-9)
    same(pool(12))
    assert st["calls"] == 4 and same.run_info()["resumed_rows"] == 8
    assert not any(tmp_path.iterdir())


def test_a_stopped_call_over_a_pool_with_an_edited_row_keeps_the_other_windows(lm, tmp_path, monkeypatch):
    monkeypatch.setattr(nug_mod, "ITEM_BLOCK", 4)
    anchors = [{"id": f"a{j}", "instruction": f"Count to {j}.", "output": " ".join(map(str, range(j + 1)))}
               for j in range(3)]  # fmt: skip
    st = stopping(monkeypatch)
    st["after"] = 13  # windows 0-2 (12 candidates) done
    with pytest.raises(Stop):
        nuggets(lm, anchors=anchors, checkpoint_dir=str(tmp_path), checkpoint_s=3600)(pool(20))
    edited = pool(20)
    edited.loc[5, "instruction"] = "Name the number five."  # window 1 (rows 4-7) is computed again
    st.update(calls=0, after=0)
    want = nuggets(lm, anchors=anchors)(edited)
    st["calls"] = 0
    sc = nuggets(lm, anchors=anchors, checkpoint_dir=str(tmp_path), checkpoint_s=3600)
    pd.testing.assert_frame_equal(sc(edited), want)
    assert st["calls"] == 20 - 8 and sc.run_info()["resumed_rows"] == 8
    assert not any(tmp_path.iterdir())


def test_a_pipeline_run_stopped_in_nuggets_resumes_from_the_candidates_it_finished(tmp_path, monkeypatch):
    from thresher.pipeline import PipelineConfig, run_pipeline

    data = tmp_path / "pool.jsonl"
    pool(40).to_json(data, orient="records", lines=True)
    model = str(save_tiny_lm(tmp_path / "tiny"))
    monkeypatch.setattr(nug_mod, "ITEM_BLOCK", 8)

    def cfg(out, cache):
        opts = {"model": model, "n_anchors": 3, "anchor_select": "random", "seed": 4, "device": "cpu"}
        return PipelineConfig(data=str(data), out=str(tmp_path / out), cache_dir=str(tmp_path / cache),
                              criteria=[{"name": "nuggets", "options": opts}], k=10, quiet=True, report=False,
                              checkpoint_s=1e-9)  # fmt: skip

    fresh = pd.read_parquet(run_pipeline(cfg("fresh", "cache-fresh")).scores_path)
    st = stopping(monkeypatch)
    st["after"] = 21  # 2 blocks of 8 candidates done (one part each), stopped in block 3
    with pytest.raises(Stop):
        run_pipeline(cfg("a", "cache"))
    assert len(list((tmp_path / "cache" / "nuggets" / "search-checkpoints").glob("*/part-*.npz"))) == 2
    st.update(calls=0, after=0)
    logs: list = []
    monkeypatch.setattr("thresher.pipeline.state.RunState.say", lambda self, msg: logs.append(msg))
    res = run_pipeline(cfg("b", "cache"))
    pd.testing.assert_frame_equal(pd.read_parquet(res.scores_path), fresh)
    assert st["calls"] == 40 - 16
    assert any("nuggets: resumed 16 of 40 rows" in m for m in logs), logs
    assert not (tmp_path / "cache" / "nuggets" / "search-checkpoints").exists()


class CountingEmbedder:
    """Fixed 2-d unit vectors (row i at angle 10 i degrees); counts the texts it encodes."""

    fingerprint = "points"
    dim = 2

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts, batch_size=64):
        import numpy as np

        self.encoded += len(texts)
        ang = np.deg2rad([10.0 * int(t.split()[3].rstrip(".")) for t in texts])
        return np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32)


def test_a_stopped_call_keeps_its_kmeans_anchors_and_does_not_embed_the_pool_again(lm, tmp_path, monkeypatch):
    """The anchor choice is kept once made: the resumed call embeds nothing and scores as an unbroken call;
    another seed or an edited pool chooses again; the complete call removes what it kept."""
    monkeypatch.setattr(nug_mod, "ITEM_BLOCK", 8)

    def km(emb, **kw):
        return CRITERIA.get("nuggets").obj(model=lm, n_anchors=3, seed=kw.pop("seed", 2), embedder=emb,
                                           batch_tokens=256, checkpoint_dir=str(tmp_path), **kw)  # fmt: skip

    want = CRITERIA.get("nuggets").obj(model=lm, n_anchors=3, seed=2, embedder=CountingEmbedder(),
                                       batch_tokens=256)(pool(20))  # fmt: skip
    st = stopping(monkeypatch)
    st["after"] = 12  # window 0 (8 candidates) done
    first = CountingEmbedder()
    with pytest.raises(Stop):
        km(first, checkpoint_s=3600)(pool(20))
    assert first.encoded == 20 and len(list(tmp_path.iterdir())) == 2  # the anchors, the finished window
    for other, rows in ((km(CountingEmbedder(), seed=3, checkpoint_s=3600), pool(20)),
                        (km(CountingEmbedder(), checkpoint_s=3600), pool(20, shift=1))):  # fmt: skip
        st.update(calls=0, after=1)
        with pytest.raises(Stop):
            other(rows)
        assert other.options["embedder"].encoded == 20  # other anchors: chosen again
    st.update(calls=0, after=0)
    emb = CountingEmbedder()
    sc = km(emb, checkpoint_s=3600)
    pd.testing.assert_frame_equal(sc(pool(20)), want)
    info = sc.run_info()
    assert emb.encoded == 0 and info["resumed_anchors"] is True and info["resumed_rows"] == 8
    assert st["calls"] == 20 - 8
    assert len(list(tmp_path.iterdir())) == 2  # only the other calls' anchor choices are left
    fresh = CountingEmbedder()
    km(fresh, checkpoint_s=0)(pool(20))
    assert fresh.encoded == 20 and len(list(tmp_path.iterdir())) == 2  # checkpoint_s 0: nothing kept or read


def test_kmeans_anchors_read_the_embeddings_cache_a_knn_criterion_filled(lm, tmp_path, monkeypatch):
    """In a run, nuggets embeds the pool for its k-means anchors through the run's embeddings cache: after a
    kNN criterion (or an earlier run) embedded the pool, it loads no embedder and chooses the anchors a
    cold cache gives; the run's workers fill that cache first only when anchors come from k-means."""
    import thresher.embed as embed_mod

    rows = pool(20)
    warm, cold = str(tmp_path / "warm"), str(tmp_path / "cold")
    CRITERIA.get("knn_distance").obj(embedder="default", cache_dir=warm, k=3)(rows)
    opts = dict(model=lm, n_anchors=3, seed=2, embedder="default", batch_tokens=256)
    want = CRITERIA.get("nuggets").obj(cache_dir=cold, **opts)
    want_scores = want(rows)

    def refuse(*a, **k):
        raise AssertionError("the embedder was loaded")

    monkeypatch.setattr(embed_mod, "_cached_embedder", refuse)
    sc = CRITERIA.get("nuggets").obj(cache_dir=warm, **opts)
    pd.testing.assert_frame_equal(sc(rows), want_scores)
    assert sc.run_info()["anchor_ids"] == want.run_info()["anchor_ids"]
    cls = CRITERIA.get("nuggets").obj
    assert cls.pool_embedder(sc.options) == ("default", None)
    assert cls.pool_embedder({**sc.options, "anchor_select": "random"}) is None
    assert cls.pool_embedder({**sc.options, "anchors": [{"instruction": "a", "output": "b"}]}) is None
    assert cls.pool_embedder({**sc.options, "cache_dir": None}) is None
