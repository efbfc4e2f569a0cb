"""Several arms x several seeds (`thresher evaluate --seeds`), on a tiny random model and a synthetic
closed-set task; closed-set accuracy re-derived here with plain torch log_softmax."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from thresher.cli.main import main
from thresher.evaluation import SAME_BENCH_MAP, load_runs
from thresher.evaluation.arms import Arm, check_arms, evaluate_arms, markdown_table, parse_seeds, write_outputs
from thresher.evaluation.lora import ProxyConfig, encode, finetune
from thresher.models import byte_tokenizer, tiny_causal_lm

COLOURS = ["blue", "green", "red"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def load():
    tok = byte_tokenizer()
    tok.eos_token = "<|im_end|>"
    return tiny_causal_lm(1, tokenizer=tok)


def row(instruction: str, output: str, task: str, **extra) -> dict:
    return {**extra, "instruction": instruction, "input": "", "output": output, "task": task}


def pool_table() -> pd.DataFrame:
    rows = []
    for i in range(24):
        rows.append(
            {
                "id": f"c{i}",
                "instruction": f"Colour of thing {i}?",
                "input": "",
                "output": COLOURS[i % 3],
                "task": "colour",
            }
        )
        rows.append({"id": f"n{i}", "instruction": f"Number {i}?", "input": "", "output": f"{i}{i}", "task": "number"})
    return pd.DataFrame(rows)


def target_table() -> pd.DataFrame:
    rows = [
        {"instruction": f"Colour of item {j}?", "input": "", "output": COLOURS[j % 3], "task": "colour"}
        for j in range(6)
    ]
    rows += [
        {"instruction": f"Parity of {j}?", "input": "", "output": ["even", "odd"][j % 2], "task": "parity"}
        for j in range(4)
    ]
    return pd.DataFrame(rows)


CFG = ProxyConfig(model="tiny", steps=3, batch_size=4, max_length=40, lr=3e-2, lora_layers=None)


def run_arms(seeds=(0, 1)):
    pool = pool_table()
    arms = [Arm("colour-only", rows=pool[pool["task"] == "colour"].iloc[:12]), Arm("random"), Arm("full")]
    return pool, evaluate_arms(pool, arms, target_table(), CFG, list(seeds), group="task", loader=load)


def oracle_closed_accuracy(lm, prompt_ids, gold, labels, eos) -> bool:
    scores = []
    for lab in labels:
        ids = lm.tokenizer(" " + lab, add_special_tokens=False)["input_ids"] + [eos]
        x = torch.tensor([prompt_ids + ids])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=x).logits[0].double(), -1)
        scores.append(sum(float(logp[len(prompt_ids) - 1 + t, tok]) for t, tok in enumerate(ids)))
    return labels[int(np.argmax(scores))] == gold


@pytest.fixture(scope="module")
def result():
    return run_arms()[1]


def test_closed_set_accuracy_per_seed_matches_an_independent_recomputation(result):
    pool = pool_table()
    target = target_table()
    assert result.closed_sets == {"colour": COLOURS, "parity": ["even", "odd"]}  # pool's colour rows counted too
    subset = pool[pool["task"] == "colour"].iloc[:12]
    lm, _ = finetune(load, encode(subset, load().tokenizer, max_length=40), replace(CFG, seed=1))
    enc = encode(target, lm.tokenizer, max_length=40)
    eos = lm.tokenizer.eos_token_id
    for task, labels in (("colour", COLOURS), ("parity", ["even", "odd"])):
        idx = [i for i in range(len(target)) if target["task"][i] == task]
        hits = [oracle_closed_accuracy(lm, enc.prompt[i], target["output"][i], labels, eos) for i in idx]
        seed1 = result.runs["colour-only"][1]
        assert seed1["seed"] == 1
        assert seed1["sets"][task]["accuracy"] == pytest.approx(np.mean(hits))


def test_summary_and_pir_table_follow_their_definitions(result):
    assert result.k == 12 and result.sdf == pytest.approx(0.25) and result.seeds == [0, 1]
    for name in ("colour-only", "random", "full"):
        per_seed = [np.mean([r["sets"][g]["accuracy"] for g in ("colour", "parity")]) for r in result.runs[name]]
        st = result.summary[name]["score"]
        assert st["mean"] == pytest.approx(np.mean(per_seed)) and st["std"] == pytest.approx(np.std(per_seed))
        assert st["min"] == pytest.approx(min(per_seed)) and st["max"] == pytest.approx(max(per_seed))
    row = next(r for r in result.table if r["arm"] == "colour-only")
    for s in range(2):
        sem, blm = result.runs["colour-only"][s]["sets"], result.runs["full"][s]["sets"]
        ps = row["vs_full"]["per_seed"][s]
        if any(blm[g]["accuracy"] == 0 for g in blm):
            assert ps["r"] is None and "error" in ps
            continue
        r = np.mean([sem[g]["accuracy"] / blm[g]["accuracy"] for g in ("colour", "parity")])
        assert ps["r"] == pytest.approx(r) and ps["pir"] == pytest.approx(SAME_BENCH_MAP(r))
    assert "vs_random" in row and "vs_random" not in next(r for r in result.table if r["arm"] == "full")
    md = markdown_table(result)
    assert md.count("\n| ") == 4 and "colour-only" in md and "PIR vs random" in md


def test_deterministic_per_seed(result):
    _, again = run_arms(seeds=(1,))

    def strip(m):
        return json.dumps(m, sort_keys=True, default=float)

    for name in ("colour-only", "random", "full"):
        assert strip(again.runs[name][0]) == strip(result.runs[name][1])
    assert strip(result.runs["random"][0]) != strip(result.runs["random"][1])  # another seed, another draw


def test_write_outputs(result, tmp_path):
    paths = write_outputs(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["k"] == 12 and set(data["runs"]) == {"colour-only", "random", "full"}
    assert paths["plot"].stat().st_size > 1000
    runs = yaml.safe_load(paths["runs"].read_text())["runs"]
    # only arms with feasibility inputs get a run entry (here random); load_runs accepts them
    assert [r["name"] for r in runs] == (["random"] if runs else [])
    if runs:
        assert load_runs(paths["runs"])[0].name == "random"


def test_check_arms_rejects_mismatched_or_unknown_rows():
    pool = pool_table()
    with pytest.raises(ValueError, match="same size k=3"):
        check_arms([Arm("a", rows=pool.iloc[:3]), Arm("b", rows=pool.iloc[:4])], pool, None)
    with pytest.raises(ValueError, match="duplicate arm name"):
        check_arms([Arm("random"), Arm("random")], pool, 3)
    with pytest.raises(ValueError, match="^k: give --k"):
        check_arms([Arm("random"), Arm("full")], pool, None)
    with pytest.raises(ValueError, match="not in the pool"):
        check_arms([Arm("a", rows=pool_table().assign(id=lambda d: "x" + d["id"]).iloc[:2])], pool, None)
    with pytest.raises(ValueError, match="^k: expected 1..48"):
        check_arms([Arm("random")], pool, 49)
    assert check_arms([Arm("random")], pool, 5) == 5


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5] and parse_seeds("7") == [7]
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(ValueError, match="^--seeds:"):
            parse_seeds(bad)


# ------------------------------------------------------------------ CLI
@pytest.fixture()
def files(tmp_path):
    pool = pool_table()
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool.to_dict("records")))
    (tmp_path / "target.jsonl").write_text("".join(json.dumps(r) + "\n" for r in target_table().to_dict("records")))
    for name, rows in (("a", pool.iloc[:8]), ("b", pool.iloc[8:16])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "selected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows.to_dict("records")))
    return tmp_path


def _cli(files, *extra):
    return ["evaluate", str(files / "pool.jsonl"), "--target", str(files / "target.jsonl"), "--model", "tiny",
            "--steps", "2", "--batch-size", "2", "--max-length", "40", "--threads", "1", "--quiet", *extra]  # fmt: skip


def test_cli_arms_with_recipe_and_seeds(files):
    out = files / "ev"
    sel = ("--selected", f"A={files / 'a'}", "--recipes", "random", "--seeds", "0,1", "--out", str(out))
    # the recipe arm "random" (run here at k = 8) and the baseline "random" would share a name
    assert main(_cli(files, *sel)) == 2
    args = _cli(files, *sel, "--baselines", "full")
    assert main(args) == 0
    data = json.loads((out / "pir.json").read_text())
    assert [a["name"] for a in data["arms"]] == ["A", "random", "full"]
    assert data["arms"][1]["recipe"] == "random" and (out / "arms" / "random" / "manifest.json").is_file()
    assert data["seeds"] == [0, 1] and data["k"] == 8 and (out / "pir.md").is_file()
    assert main(args) == 2  # pir.json exists: not replaced without --overwrite


def test_cli_arms_bad_input(files, capsys):
    out = ["--out", str(files / "ev")]
    assert main(_cli(files, "--selected", str(files / "a"), "--seeds", "0", "--tokens", "100", *out)) == 2
    assert "--tokens" in capsys.readouterr().err
    assert main(_cli(files, "--recipes", "random", "--seeds", "0", *out)) == 2
    assert "--k: give --k or --ratio" in capsys.readouterr().err
    assert main(_cli(files, "--recipes", "nope", "--k", "4", *out)) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert main(_cli(files, "--recipes", "random", "--k", "4", "--recipe-option", "less.x=1", *out)) == 2
    assert "--recipe-option" in capsys.readouterr().err
    assert main(_cli(files, "--selected", str(files / "a"), "--seeds", "0", "--baselines", "foo", *out)) == 2
    assert "--baselines" in capsys.readouterr().err
    assert main(_cli(files, "--selected", str(files / "a"), "--seeds", "0")) == 2
    assert "--out:" in capsys.readouterr().err
    assert not (files / "ev").exists()
