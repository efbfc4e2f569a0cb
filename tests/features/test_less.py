"""The `less` criterion: the scoring math against a naive oracle, and the pipeline on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from thresher.criteria.less import less_scores, subtask_means
from thresher.registry import CRITERIA


def _naive(train, targets, labels, weights):
    """Literal LESS: per (checkpoint, train, target) cosine, mean within subtask, weighted sum, max."""
    w = np.asarray(weights, float) / np.sum(weights)
    subs = sorted(set(labels))
    N = train[0].shape[0]
    out = np.zeros((N, len(subs)))
    for c in range(len(train)):
        for i in range(N):
            for s, name in enumerate(subs):
                cs = []
                for v in range(len(labels)):
                    if labels[v] != name:
                        continue
                    a, b = train[c][i], targets[c][v]
                    cs.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
                out[i, s] += w[c] * np.mean(cs)
    return out


def test_less_scores_equal_naive_loops_with_unequal_subtasks():
    rng = np.random.default_rng(0)
    C, N, d = 3, 9, 24
    labels = ["x"] * 5 + ["y"] + ["z"] * 2  # subtask sizes 5, 1, 2
    train = [rng.standard_normal((N, d)) * (c + 1) for c in range(C)]
    targets = [rng.standard_normal((len(labels), d)) for _ in range(C)]
    weights = [2e-5, 1e-5, 5e-6]
    means = []
    for c in range(C):
        names, m = subtask_means(targets[c], labels)
        means.append(m)
    assert names == ["x", "y", "z"]
    got = less_scores(train, means, weights)
    np.testing.assert_allclose(got, _naive(train, targets, labels, weights), rtol=1e-5, atol=1e-6)
    # NaN training rows stay NaN
    train[1][4] = np.nan
    assert np.isnan(less_scores(train, means, weights)[4]).all()


def test_less_scores_bad_input():
    m = [np.zeros((1, 4), np.float32)]
    with pytest.raises(ValueError, match="weights"):
        less_scores([np.ones((2, 4))], m, [-1.0])
    with pytest.raises(ValueError, match="checkpoint"):
        less_scores([np.ones((2, 4))] * 2, m, [1.0])
    with pytest.raises(ValueError, match="labels"):
        subtask_means(np.ones((3, 4)), ["a"])
    with pytest.raises(ValueError, match="empty"):
        subtask_means(np.ones((0, 4)), [])


# ------------------------------------------------------------------ pipeline on a tiny model
POOL = pd.DataFrame(
    {
        "id": [f"p{i}" for i in range(8)] + ["t0copy", "empty"],
        "instruction": [
            "Add 2 and 3.",
            "What is 10 minus 4?",
            "Translate 'chat' to English.",
            "Say hi",
            "Name a colour.",
            "Multiply 3 by 3.",
            "Translate 'hund' to English.",
            "Spell cat.",
            "Add 7 and 1.",
            "Nothing",
        ],
        "input": [""] * 10,
        "output": ["5", "6", "cat", "hi", "blue", "9", "dog", "c-a-t", "8", ""],
    }
)
TARGET = pd.DataFrame(
    {
        "id": ["t0", "t1", "t2"],
        "instruction": ["Add 7 and 1.", "Translate 'gato' to English.", "Translate 'hond' to English."],
        "input": [""] * 3,
        "output": ["8", "cat", "dog"],
        "group": ["math", "translate", "translate"],
    }
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from thresher.models import tiny_causal_lm
    from thresher.train.warmup import warmup_lora

    lm = tiny_causal_lm(seed=2, tokenizer="bytes", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)
    out = tmp_path_factory.mktemp("warm") / "w"
    res = warmup_lora(
        POOL,
        lm,
        out,
        fraction=0.8,
        epochs=2,
        lr=5e-3,
        r=4,
        alpha=8,
        targets=["q_proj", "v_proj"],
        batch_size=3,
        max_length=256,
        template="plain",
        seed=1,
        log=lambda s: None,
    )
    return lm, res


def test_warmup_writes_checkpoints(tiny):
    from thresher.features.gradients import AdamState
    from thresher.train.warmup import load_warmup

    lm, res = tiny
    w = load_warmup(res.out)
    assert [c.name for c in w.checkpoints] == ["checkpoint-1", "checkpoint-2"]
    assert len(w.lrs) == 2 and all(lr > 0 for lr in w.lrs) and abs(sum(w.weights) - 1) < 1e-12
    assert w.lrs[0] > w.lrs[1]  # linear decay
    st = AdamState.load(w.checkpoints[1] / "optimizer.safetensors")
    assert st.step == json.loads((w.checkpoints[1] / "state.json").read_text())["step"] > 0
    assert all(v.abs().sum() > 0 for v in st.exp_avg_sq.values())
    assert w.meta["model"] == lm.fingerprint and len(w.meta["train_ids"]) == 7  # "empty" has no answer
    with pytest.raises(FileExistsError):
        from thresher.train.warmup import warmup_lora

        warmup_lora(POOL, lm, res.out, epochs=1)


def test_less_scorer_end_to_end(tiny, tmp_path):
    lm, res = tiny
    assert "less" in CRITERIA.names()
    Less = CRITERIA.get("less").obj
    sc = Less(warmup=str(res.out), target=TARGET, model=lm, dim=256, seed=5, adam="none", store=str(tmp_path / "feats"))
    assert sc.subtasks == ["math", "translate"]
    df = sc(POOL)
    assert list(df.columns) == ["id", "less", "less.subtask", "less.reason"]
    assert df["id"].tolist() == POOL["id"].tolist()
    # plain gradients: a pool copy of the single 'math' target has cosine 1 at every checkpoint
    assert df.loc[df.id == "t0copy", "less"].item() == pytest.approx(1.0, abs=1e-3)
    assert df.loc[df.id == "t0copy", "less.subtask"].item() == "math"
    assert df["less"].drop(index=[8, 9]).max() < 0.999
    assert np.isnan(df.loc[df.id == "empty", "less"].item())
    assert df.loc[df.id == "empty", "less.reason"].item() == "empty answer"
    # the feature store is reused: same scores from stored fp16 features
    df2 = sc(POOL)
    np.testing.assert_allclose(df2["less"].to_numpy(), df["less"].to_numpy(), atol=2e-3)
    assert (tmp_path / "feats" / "checkpoint-1" / "manifest.json").is_file()
    # another projection seed refuses to reuse that store
    sc2 = Less(
        warmup=str(res.out), target=TARGET, model=lm, dim=256, seed=6, adam="none", store=str(tmp_path / "feats")
    )
    with pytest.raises(ValueError, match="seed="):
        sc2(POOL.iloc[:2])
    # LESS default: Adam-transformed training gradients; still finite, still ranks the copy first
    sc3 = Less(warmup=str(res.out), target=TARGET, model=lm, dim=256, seed=5)
    d3 = sc3(POOL)
    assert np.isfinite(d3["less"].iloc[:9]).all()
    assert d3["less"].iloc[:9].idxmax() == 8
    assert sc3.cache_key() != sc.cache_key()


def test_less_options_errors(tiny):
    lm, res = tiny
    Less = CRITERIA.get("less").obj
    with pytest.raises(ValueError, match="warmup"):
        Less(target=TARGET, model=lm)
    with pytest.raises(ValueError, match="target"):
        Less(warmup=str(res.out), model=lm)
    with pytest.raises(ValueError, match="dim"):
        Less(warmup=str(res.out), target=TARGET, model=lm, dim=100)
    with pytest.raises(ValueError, match="warmup.json"):
        Less(warmup=str(res.out / "checkpoint-1"), target=TARGET, model=lm)


def test_cli_warmup_and_grads(tmp_path):
    from thresher.cli.main import main
    from thresher.features.store import FeatureStore
    from thresher.models import tiny_causal_lm

    lm = tiny_causal_lm(seed=3, tokenizer="bytes", hidden=32, layers=1, heads=4, kv_heads=2, intermediate=64)
    mdir = tmp_path / "model"
    lm.model.save_pretrained(mdir)
    lm.tokenizer.save_pretrained(mdir)
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in POOL.drop(columns=["input"]).to_dict("records")))
    out = tmp_path / "warm"
    assert (
        main(
            [
                "warmup",
                str(data),
                "--out",
                str(out),
                "--fraction",
                "0.5",
                "--epochs",
                "2",
                "--model",
                str(mdir),
                "--r",
                "4",
                "--targets",
                "q_proj",
                "--template",
                "plain",
                "--lr",
                "1e-3",
            ]
        )
        == 0
    )
    assert (out / "checkpoint-2" / "optimizer.safetensors").is_file()
    store = tmp_path / "feats"
    args = ["grads", str(data), "--warmup", str(out), "--out", str(store), "--dim", "64", "--checkpoints", "2"]
    assert main(args) == 0
    st = FeatureStore(store / "checkpoint-2")
    assert len(st) == 9 and st.meta["transform"] == "less" and st.meta["dim"] == 64
    assert main(args) == 0  # resumed: nothing new
    assert len(FeatureStore(store / "checkpoint-2")) == 9
    # bad input: a dim that is not supported, a target module that does not exist, another seed
    assert main(args[:-4] + ["--dim", "60"]) == 2
    assert main(["warmup", str(data), "--out", str(tmp_path / "w2"), "--model", str(mdir), "--targets", "nope"]) == 2
    assert main(args + ["--seed", "1"]) == 2
