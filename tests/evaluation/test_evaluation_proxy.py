"""Proxy fine-tuning (`thresher evaluate`) on a tiny random model: determinism, exact match, CLI, bad input."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from thresher.cli.main import main
from thresher.evaluation import SAME_BENCH_MAP, load_runs
from thresher.evaluation.proxy import ProxyConfig, benchmark_ratio, encode, evaluate_selection, finetune, measure

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(autouse=True)
def one_thread():
    # The machine is shared: one thread is several times faster than two under contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_loader(seed: int = 0):
    from thresher.models import byte_tokenizer, tiny_causal_lm

    def load():
        tok = byte_tokenizer()
        tok.eos_token = "<|im_end|>"
        return tiny_causal_lm(seed, tokenizer=tok)

    return load


def _table(n: int, start: int = 0, groups=("a", "b")) -> pd.DataFrame:
    rows = []
    for i in range(start, start + n):
        rows.append(
            {
                "id": f"s{i}",
                "instruction": f"What is {i} plus {i % 7}?",
                "input": "",
                "output": str(i + i % 7),
                "task": groups[i % len(groups)],
            }
        )
    return pd.DataFrame(rows)


def test_teacher_forced_exact_match_equals_greedy_generation():
    tr = pd.DataFrame(
        {
            "instruction": ["Is 2 even?", "Is 3 even?", "Capital of France?", "Color of sky?"],
            "input": [""] * 4,
            "output": ["yes", "no", "Paris", "blue"],
        }
    )
    te = pd.concat(
        [tr, pd.DataFrame({"instruction": ["Zebra stripes count?"], "input": [""], "output": ["many"]})],
        ignore_index=True,
    )
    load = tiny_loader()
    tok = load().tokenizer
    cfg = ProxyConfig(
        model="tiny",
        steps=40,
        batch_size=4,
        max_length=64,
        lr=3e-2,
        target_modules=ALL_LINEAR,
        decode="generate",
        max_new_tokens=8,
    )
    lm, losses = finetune(load, encode(tr, tok, max_length=64), cfg)
    assert losses[-1] < losses[0]
    m = measure(lm, encode(te, tok, max_length=64), list(te["output"]), np.array(["x"] * 5), cfg)
    # the equivalence: teacher-forced argmax hits on answer+EOS <=> greedy decode is the answer
    assert m["teacher_exact"] == m["generate_token_exact"]
    assert any(m["teacher_exact"]) and not all(m["teacher_exact"])  # both outcomes exercised
    assert m["correct"] == m["generate_token_exact"]  # string match agrees here
    # teacher mode gives the same accuracy without generating
    m2 = measure(
        lm,
        encode(te, tok, max_length=64),
        list(te["output"]),
        np.array(["x"] * 5),
        ProxyConfig(**{**cfg.__dict__, "decode": "teacher"}),
    )
    assert m2["correct"] == m["teacher_exact"] and m2["loss"] == pytest.approx(m["loss"], rel=1e-6)


def _run(seed=0, **kw):
    pool = _table(24)
    selected = pool.iloc[[0, 3, 5, 8, 13, 21]]
    target = _table(6, start=100)
    cfg = ProxyConfig(model="tiny", steps=3, batch_size=2, max_length=32, seed=seed, metric="likelihood", **kw)
    return evaluate_selection(pool, selected, target, cfg, group="task", loader=tiny_loader())


def test_evaluate_selection_deterministic_for_a_seed():
    a, b = _run(0), _run(0)

    def dump(r):
        d = r.to_dict()
        d.pop("timings")
        return json.dumps(d, sort_keys=True, default=float)

    assert dump(a) == dump(b)
    c = _run(1)
    assert c.arms["selected"]["loss"] != a.arms["selected"]["loss"]
    assert a.sdf == 0.25 and a.pool_size == 24 and a.selected_size == 6
    assert sorted(a.arms) == ["full", "random", "selected"]
    assert sorted(a.arms["selected"]["sets"]) == ["a", "b"]
    # the arms differ (different data), the ratio follows the survey's formula
    rt = a.ratio["selected_vs_full"]
    sets = a.arms["selected"]["sets"], a.arms["full"]["sets"]
    r = np.mean([sets[0][g]["likelihood"] / sets[1][g]["likelihood"] for g in ("a", "b")])
    assert rt["r"] == pytest.approx(r, rel=1e-12)
    assert rt["pir"] == pytest.approx(3.131148 * r - 1.687459, abs=1e-5)
    assert rt["pir"] == pytest.approx(SAME_BENCH_MAP(r), rel=1e-12)


def test_benchmark_ratio_zero_blm_is_reported_not_raised():
    sem = {"sets": {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.2}}}
    blm = {"sets": {"a": {"accuracy": 0.25}, "b": {"accuracy": 0.0}}}
    rt = benchmark_ratio(sem, blm, "accuracy")
    assert rt["pir"] is None and "['b']" in rt["error"] and "likelihood" in rt["error"]
    blm["sets"]["b"]["accuracy"] = 0.4
    rt = benchmark_ratio(sem, blm, "accuracy")
    assert rt["r"] == pytest.approx(1.25) and rt["pir"] == pytest.approx(SAME_BENCH_MAP(1.25))


def test_lora_layers_limits_adapters():
    load = tiny_loader()
    enc = encode(_table(4), load().tokenizer, max_length=32)
    lm, _ = finetune(load, enc, ProxyConfig(model="tiny", steps=1, batch_size=2, max_length=32, lora_layers=1))
    names = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)


def test_encode_truncation_policy():
    tok = tiny_loader()().tokenizer
    df = pd.DataFrame({"instruction": ["x" * 200], "input": [""], "output": ["y" * 100]})
    enc = encode(df, tok, max_length=40)
    assert enc.truncated == 1
    assert len(enc.answer[0]) == 20 and len(enc.prompt[0]) + len(enc.answer[0]) == 40
    assert tok.decode(enc.prompt[0]).endswith("Answer:")  # the end of the prompt is kept


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": -1}, "batch_size"),
        ({"template": "alpaca"}, "template"),
        ({"metric": "f1"}, "metric"),
        ({"decode": "beam"}, "decode"),
        ({"lora_layers": 0}, "lora_layers"),
        ({"lr": 0.0}, "lr"),
        ({"max_length": 4}, "max_length"),
        ({"arms": ("selected", "other")}, "arms"),
        ({"threads": 0}, "threads"),
        ({"device": "tpu"}, "device"),
        ({"closed_norm": "bytes"}, "closed_norm"),
        ({"max_labels": 1}, "max_labels"),
        ({"metric": "closed"}, "metric"),
    ],
)
def test_config_validation(kw, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ProxyConfig(**kw).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_device():
    from thresher.evaluation.proxy import resolve_device

    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="device: 'cuda' requested but no CUDA device"):
        resolve_device("cuda")


def test_bad_tables():
    pool = _table(8)
    cfg = ProxyConfig(model="tiny", steps=1, batch_size=2, max_length=32)
    with pytest.raises(ValueError, match="selected: 1 selected id"):
        evaluate_selection(pool, _table(1, start=50), _table(2), cfg, loader=tiny_loader())
    with pytest.raises(ValueError, match="selected: the selection is empty"):
        evaluate_selection(pool, pool.iloc[:0], _table(2), cfg, loader=tiny_loader())
    with pytest.raises(ValueError, match="target: the target set is empty"):
        evaluate_selection(pool, pool.iloc[:2], _table(2).iloc[:0], cfg, loader=tiny_loader())
    with pytest.raises(ValueError, match="group: target data has no column 'topic'"):
        evaluate_selection(pool, pool.iloc[:2], _table(2), cfg, group="topic", loader=tiny_loader())
    with pytest.raises(ValueError, match=r"target_modules: \['w_proj'\] not found"):
        evaluate_selection(
            pool,
            pool.iloc[:2],
            _table(2),
            ProxyConfig(model="tiny", steps=1, batch_size=2, max_length=32, target_modules=("w_proj",)),
            loader=tiny_loader(),
        )


# ------------------------------------------------------------------ CLI
@pytest.fixture()
def files(tmp_path, bigbench_path):
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in itertools.islice(f, 60)]
    pool, target = rows[:40], rows[40:48]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    (tmp_path / "target.jsonl").write_text("".join(json.dumps(r) + "\n" for r in target))
    sel = tmp_path / "sel"
    sel.mkdir()
    (sel / "selected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool[::5]))
    return tmp_path


def _cli(files, *extra):
    return [
        "evaluate",
        str(files / "pool.jsonl"),
        "--selected",
        str(files / "sel"),
        "--target",
        str(files / "target.jsonl"),
        "--model",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--max-length",
        "48",
        "--threads",
        "1",
        "--quiet",
        *extra,
    ]


def test_cli_evaluate_writes_run_entry_that_compare_accepts(files, capsys):
    (files / "sel" / "manifest.json").write_text(json.dumps({"recipe": "random"}))
    assert main(_cli(files, "--metric", "likelihood")) == 0
    out = capsys.readouterr().out
    assert "SDF 0.2 (8 of 40)" in out and "selected_vs_full: r = " in out
    ev = json.loads((files / "sel" / "evaluation" / "evaluation.json").read_text())
    assert ev["sdf"] == 0.2 and set(ev["arms"]) == {"selected", "random", "full"}
    runs = yaml.safe_load((files / "sel" / "evaluation" / "run.yaml").read_text())["runs"]
    assert [r["name"] for r in runs] == ["random", "random-random"]
    assert runs[0]["recipe"] == "random" and "feasibility" not in runs[0]  # from the RECIPES registry
    assert runs[0]["sem"] == ev["ratio"]["selected_vs_full"]["sem"]
    methods = load_runs(files / "sel" / "evaluation" / "run.yaml")
    assert methods[0].pir == pytest.approx(ev["ratio"]["selected_vs_full"]["pir"], rel=1e-12)
    assert methods[0].feasibility.steps >= 1
    assert main(["compare", str(files / "sel" / "evaluation" / "run.yaml"), "--out", str(files / "cmp")]) == 0
    assert (files / "cmp" / "report.html").is_file()
    # an existing evaluation is not overwritten silently
    assert main(_cli(files, "--metric", "likelihood")) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_evaluate_zero_accuracy_gives_no_run_entry(files, capsys):
    feas = "trained_llms=0,steps=2,model_free=true,dataset_free=true,proprietary_judge=false"
    # exact match (the tiny model decodes nothing right); closed-set accuracy is the default metric
    assert main(_cli(files, "--metric", "exact", "--feasibility", feas, "--out", str(files / "ev"))) == 1
    cap = capsys.readouterr()
    assert "ratio is undefined" in cap.out and "--metric likelihood" in cap.out
    assert (files / "ev" / "evaluation.json").is_file()
    assert yaml.safe_load((files / "ev" / "run.yaml").read_text())["runs"] == []


def test_cli_evaluate_missing_feasibility_fails_before_training(files, capsys):
    assert main(_cli(files)) == 2
    err = capsys.readouterr().err
    assert "feasibility: missing feasibility inputs" in err and "--recipe" in err
    assert not (files / "sel" / "evaluation").exists()
    assert main(_cli(files, "--recipe", "no-such-recipe")) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err
    assert main(_cli(files, "--feasibility", "trained_llms=0,steps=2")) == 2
    assert "missing feasibility input(s) ['model_free'" in capsys.readouterr().err
    assert main(_cli(files, "--feasibility", "steps")) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_cli_evaluate_unknown_group_field(files, capsys):
    assert main(_cli(files, "--recipe", "random", "--group-field", "topic")) == 2
    err = capsys.readouterr().err
    assert "target.jsonl: no column 'topic' in this data (--group-field topic); its columns:" in err
    assert not (files / "sel" / "evaluation").exists()  # nothing trained or written


def test_cli_evaluate_bad_selected_dir(files, capsys):
    empty = files / "empty"
    empty.mkdir()
    args = _cli(files, "--recipe", "random")
    args[args.index(str(files / "sel"))] = str(empty)
    assert main(args) == 2
    assert "holds no selected.* file" in capsys.readouterr().err
    args[args.index(str(empty))] = str(files / "nope")
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err
