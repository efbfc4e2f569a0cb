"""MoDS (three stages) and the new recipes end to end on tiny models, each selection checked against a
straight re-implementation of the paper's rule on the same scores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import thresher.criteria.tags as tags_mod
from conftest import save_tiny_lm, write_bigbench_head
from thresher.criteria.necessity import Necessity
from thresher.criteria.shapley import Shed
from thresher.embed import embed_texts, get_embedder, sample_texts
from thresher.models import tiny_causal_lm
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.recipes import expand_recipe
from thresher.registry import CRITERIA, RECIPES, SELECTORS


def kcenter_brute(x, k, first):
    """Gonzalez greedy k-center in float64: farthest point from the chosen set, ties by lower position."""
    chosen = [first]
    d = ((x - x[first]) ** 2).sum(1)
    while len(chosen) < min(k, len(x)):
        d[chosen] = -1
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, ((x - x[nxt]) ** 2).sum(1))
    return chosen


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pool(tmp_path_factory, bigbench_path):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 24)


def test_recipes_listed_with_three_mods_stages():
    assert {"instag", "shed", "mods"} <= set(RECIPES.names())
    assert [s.name for s in expand_recipe("mods").criteria] == ["necessity"]
    assert expand_recipe("mods").selector.name == "necessity"
    assert expand_recipe("mods", {"stages": 2}).selector.name == "cascade"
    assert expand_recipe("mods", {"stages": 1}).selector.name == "threshold"
    with pytest.raises(ValueError, match="stages"):
        expand_recipe("mods", {"stages": 4})
    assert expand_recipe("shed", {"sampler": "qwcs"}).selector.options["temperature"] == 1.0


def test_necessity_stages_with_a_stub_scorer(monkeypatch):
    lm = tiny_causal_lm(0, tokenizer="bytes")
    n = 12
    df = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "instruction": [f"task {i}" for i in range(n)],
            "input": "",
            "output": ["x" * (i % 7 + 1) for i in range(n)],
        }
    )
    quality = lambda d: (d["output"].str.len().to_numpy(np.float64), [""] * len(d))  # noqa: E731
    monkeypatch.setattr(Necessity, "_quality_parts", lambda self, parts: (quality(d) for d in parts))
    trained = {}

    def fake_generate(self, seed_rows, prompts):
        trained["ids"] = seed_rows["id"].tolist()
        return ["y" * (j % 5) for j in range(len(prompts))]  # answer j has length j % 5 ("" = empty)

    monkeypatch.setattr(Necessity, "generate", fake_generate)
    vecs = np.random.default_rng(0).standard_normal((n, 3))
    enc = type(
        "E",
        (),
        {
            "dim": 3,
            "fingerprint": "t",
            "encode": lambda self, t, batch_size=64: vecs[[int(s.split()[1].split("\n")[0]) for s in t]],
        },
    )()
    out = CRITERIA.get("necessity").obj(
        model=lm, quality_model=lm, embedder=enc, seed_k=3, quality_mode="absolute", quality_value=4.0
    )(df)
    q = df["output"].str.len().to_numpy(np.float64)
    hq = np.flatnonzero(q >= 4)
    e = vecs[hq] / np.linalg.norm(vecs[hq], axis=1, keepdims=True)
    first = int(np.lexsort((hq, -q[hq]))[0])
    seed = hq[kcenter_brute(e.astype(np.float64), 3, first)]
    assert trained["ids"] == [f"r{i}" for i in seed]
    np.testing.assert_array_equal(out["necessity.seed"].to_numpy()[seed], [0.0, 1.0, 2.0])
    rest = [i for i in hq if i not in seed]
    want = np.full(n, np.nan)
    for j, i in enumerate(rest):
        want[i] = -np.inf if j % 5 == 0 else float(j % 5)
    np.testing.assert_array_equal(out["necessity"].to_numpy(), want)
    assert (out["necessity.threshold"] == 4.0).all()
    assert out["necessity.reason"][int(np.flatnonzero(q < 4)[0])] == "below the quality threshold"
    assert out["necessity.reason"][int(seed[0])] == "in the seed set"


def test_necessity_selector_against_the_rule():
    rng = np.random.default_rng(1)
    n = 15
    answer = rng.uniform(0, 6, n)
    answer[[0, 1, 2]] = np.nan  # seed rows
    answer[3] = np.nan  # below the bar
    seed = np.full(n, np.nan)
    seed[[2, 0, 1]] = [0, 1, 2]
    thr = np.full(n, 3.0)
    emb = rng.standard_normal((n, 4))
    sc = pd.DataFrame({"necessity": answer, "necessity.seed": seed, "necessity.threshold": thr})
    got = SELECTORS.get("necessity").obj(sc, 8, embeddings=emb)
    bad = [i for i in range(n) if answer[i] < 3.0]
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    first = bad.index(min(bad, key=lambda i: (answer[i], i)))
    want = [2, 0, 1] + [bad[j] for j in kcenter_brute(e[bad], 5, first)]
    assert got.tolist() == want
    assert SELECTORS.get("necessity").obj(sc, 2, embeddings=emb).tolist() == [2, 0]


def test_necessity_generate_trains_and_answers():
    lm = tiny_causal_lm(0, tokenizer="bytes")
    crit = CRITERIA.get("necessity").obj(
        model=lm, quality_model=lm, embedder=get_embedder("default"), epochs=1, max_new_tokens=3, template="plain"
    )
    rows = pd.DataFrame({"id": ["a", "b"], "instruction": ["hi", "yo"], "input": "", "output": ["there", "man"]})
    got = crit.generate(rows, ["hi\n", "what\n"])
    assert len(got) == 2 and all(isinstance(g, str) for g in got)


def test_mods_three_stages_end_to_end(pool, tiny_dir, tmp_path, monkeypatch):
    real = Necessity.generate

    def half_blank(self, seed_rows, prompts):  # the real LoRA + generation; every other answer blanked (bad)
        got = real(self, seed_rows, prompts)
        return ["" if j % 2 else g for j, g in enumerate(got)]

    monkeypatch.setattr(Necessity, "generate", half_blank)
    opts = {
        "model": str(tiny_dir),
        "seed_model": str(tiny_dir),
        "seed_k": 3,
        "epochs": 1,
        "max_new_tokens": 4,
        "quality_mode": "quantile",
        "quality_value": 0.3,
    }
    res = run_pipeline(
        PipelineConfig(
            data=str(pool), out=str(tmp_path / "o"), recipe="mods", recipe_options=opts, k=8, quiet=True, report=False
        )
    )
    s = pd.read_parquet(res.scores_path)
    sel = s[s["selected"]].sort_values("rank")
    rows = [json.loads(x) for x in pool.read_text(encoding="utf-8").splitlines()]
    emb = embed_texts(sample_texts(pd.DataFrame(rows)), get_embedder("default")).astype(np.float64)
    seed = s["necessity.seed"].to_numpy()
    seeds = [int(i) for i in np.argsort(np.where(np.isnan(seed), np.inf, seed), kind="stable") if not np.isnan(seed[i])]
    a, t = s["necessity"].to_numpy(), s["necessity.threshold"].to_numpy()
    bad = [i for i in range(len(s)) if not np.isnan(a[i]) and a[i] < t[i]]
    want = seeds[:8]
    if bad and len(want) < 8:
        first = bad.index(min(bad, key=lambda i: (a[i], i)))
        want += [bad[j] for j in kcenter_brute(emb[bad], 8 - len(want), first)]
    assert len(seeds) == 3
    assert list(s.index) == list(range(len(s))) and sel.index.tolist() == want
    assert len(bad) >= 5 and len(sel) == 8


def test_instag_end_to_end(pool, tiny_dir, tmp_path, monkeypatch):
    rows = [json.loads(x) for x in pool.read_text(encoding="utf-8").splitlines()]
    vocab = ["math", "logic", "reading", "coding", "trivia"]

    def canned(model, tokenizer, prompts, *, max_new_tokens, batch_size=8):
        out = []
        for p in prompts:
            h = sum(map(ord, p))
            tags = [vocab[(h >> s) % 5] for s in range(h % 4)]
            out.append(json.dumps([{"tag": t.upper(), "explanation": "."} for t in tags]))
        return out

    monkeypatch.setattr(tags_mod, "generate_replies", canned)
    res = run_pipeline(
        PipelineConfig(
            data=str(pool),
            out=str(tmp_path / "o"),
            recipe="instag",
            recipe_options={"model": str(tiny_dir), "min_frequency": 2},
            k=6,
            quiet=True,
            report=False,
        )
    )
    s = pd.read_parquet(res.scores_path)
    tl = [json.loads(t) for t in s["tags.tags"]]
    assert all(t == t.lower() for ts in tl for t in ts) and len(tl) == len(rows)
    # the paper's rule, straight: by complexity (stable), add a row only for new tags, rounds until k
    walk = sorted(range(len(tl)), key=lambda i: -len(tl[i]))
    want = []
    while len(want) < 6:
        cov, took = set(), False
        for i in walk:
            if i not in want and len(want) < 6 and not set(tl[i]) <= cov:
                want.append(i)
                cov |= set(tl[i])
                took = True
        if not took:
            break
    assert s[s["selected"]].sort_values("rank").index.tolist() == want and want


def test_shed_end_to_end(pool, tiny_dir, tmp_path, monkeypatch):
    def by_length(self, proxy_rows, val_rows):  # a known additive game over the proxies
        w = proxy_rows["instruction"].str.len().to_numpy(np.float64) / 100
        return lambda s: float(w[list(s)].sum())

    monkeypatch.setattr(Shed, "value_function", by_length)
    for sampler in ("qocs", "qwcs"):
        res = run_pipeline(
            PipelineConfig(
                data=str(pool),
                out=str(tmp_path / sampler),
                recipe="shed",
                recipe_options={"model": str(tiny_dir), "n_clusters": 4, "permutations": 2, "sampler": sampler},
                k=7,
                seed=3,
                quiet=True,
                report=False,
            )
        )
        s = pd.read_parquet(res.scores_path)
        got = s[s["selected"]].sort_values("rank").index.tolist()
        val, lab = s["shed"].to_numpy(), s["shed.cluster"].to_numpy().astype(int)
        assert len(np.unique(lab)) == 4
        if sampler == "qocs":
            want = [i for c in sorted(set(lab), key=lambda c: (-val[lab == c][0], c)) for i in np.flatnonzero(lab == c)]
            assert got == want[:7]
        else:
            rng = np.random.default_rng(3)
            left = {c: list(np.flatnonzero(lab == c)) for c in sorted(set(lab))}
            want = []
            for _ in range(7):
                live = [c for c in left if left[c]]
                w = np.exp([val[lab == c][0] for c in live])
                c = live[int(rng.choice(len(live), p=w / w.sum()))]
                want.append(int(left[c].pop(int(rng.integers(len(left[c]))))))
            assert got == want
