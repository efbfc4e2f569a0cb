"""One CLI vocabulary: the same flags on every verb, deprecated spellings, --json and --dry-run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from thresher.cli.main import build_parser, main

ROWS = [
    {"id": f"r{i}", "instruction": f"question {i}", "input": "", "output": " ".join(["word"] * (i + 1))}
    for i in range(12)
]


@pytest.fixture()
def pool(tmp_path) -> Path:
    p = tmp_path / "pool.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def verbs() -> dict:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def flags(parser: argparse.ArgumentParser, *, hidden: bool = False) -> dict:
    """option string -> action (visible ones, unless ``hidden``)."""
    out = {}
    for a in parser._actions:
        if a.help == argparse.SUPPRESS and not hidden:
            continue
        for s in a.option_strings:
            out[s] = a
    return out


def run_json(capsys, argv: list) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------ the flags themselves
def test_json_and_dry_run_on_every_pipeline_verb():
    v = verbs()
    for verb in ("select", "score", "run", "rank", "demo", "evaluate", "compare"):
        f = flags(v[verb])
        assert "--json" in f and "--dry-run" in f, verb
    for verb in ("doctor", "recipes", "criteria", "selectors"):
        assert "--json" in flags(v[verb]), verb


def test_select_and_score_share_input_and_criteria_flags():
    v = verbs()
    shared = {
        "--format", "--field", "--group-field", "--on-bad-row", "--shard-size", "--limit",
        "--criteria", "--criterion-option", "--model", "--embedder", "--batch-tokens", "--batching", "--max-length",
        "--template", "--dtype", "--device", "--recipe", "--option", "--cache-dir", "--engine", "--plugin",
        "--quiet", "--out",
    }  # fmt: skip
    for verb in ("select", "score"):
        f = flags(v[verb])
        assert shared <= set(f), (verb, sorted(shared - set(f)))
        assert f["--on-bad-row"].default == "error" and f["--on-bad-row"].choices == ["error", "skip"]
        assert f["--option"].metavar == "KEY=VALUE" and f["--criterion-option"].metavar == "NAME.KEY=VALUE"
    assert {"--selector", "--selector-option", "--filter", "--k", "--ratio", "--tokens", "--overwrite"} <= set(
        flags(v["select"])
    )


def test_old_spellings_are_hidden_and_one_name_is_visible():
    v = verbs()
    for verb, parser in v.items():
        visible = set(flags(parser))
        assert not visible & {"--force", "--chunk", "--fail-fast", "--method", "--group", "--r", "--alpha"}, verb
    for verb in ("select", "run", "rank", "demo", "evaluate", "compare"):
        f = flags(v[verb], hidden=True)
        assert "--overwrite" in flags(v[verb]) and "--force" in f, verb
        assert f["--force"].dest == "overwrite"
    assert flags(v["score"], hidden=True)["--chunk"].dest == "shard_size"
    assert flags(v["grads"], hidden=True)["--chunk"].dest == "shard_size"
    assert flags(v["rank"], hidden=True)["--method"].dest == "selector"
    assert flags(v["evaluate"], hidden=True)["--group"].dest == "group_field"
    assert flags(v["warmup"], hidden=True)["--r"].dest == "lora_r"


# ------------------------------------------------------------------ --dry-run: the expanded plan, nothing read
def test_dry_run_expands_options_without_reading_data(tmp_path, capsys):
    missing = tmp_path / "not-there.jsonl"  # a dry run reads no data: the file need not exist
    argv = ["select", str(missing), "--criteria", "ifd,length", "--criterion-option", "ifd.max_length=128",
            "--batch-tokens", "512", "--k", "3", "--selector", "weighted",
            "--selector-option", "objectives=[ifd:max, length.total:max]", "--out", str(tmp_path / "o"),
            "--dry-run", "--json"]  # fmt: skip
    plan = run_json(capsys, argv)
    crit = {c["name"]: c["options"] for c in plan["criteria"]}
    assert plan["dry_run"] is True and plan["budget"] == {"k": 3}
    assert crit["ifd"]["max_length"] == 128  # the criterion's own option wins over a shared flag
    assert crit["ifd"]["batch_tokens"] == 512  # the shared flag reaches the criterion that declares it
    assert crit["ifd"]["template"] == "alpaca"  # defaults resolved
    assert "batch_tokens" not in crit["length"]  # and only those
    assert plan["selector"]["name"] == "weighted"
    assert plan["selector"]["options"]["objectives"] == ["ifd:max", "length.total:max"]
    assert not (tmp_path / "o").exists()
    # --batching reaches a recipe's loss criterion (one row per forward: layout-independent bits)
    rec = run_json(capsys, ["select", str(missing), "--recipe", "ifd", "--batching", "row", "--k", "3",
                             "--out", str(tmp_path / "o"), "--dry-run", "--json"])  # fmt: skip
    assert {c["name"]: c["options"] for c in rec["criteria"]}["ifd"]["batching"] == "row"


def test_dry_run_text_and_recipe_budget(tmp_path, capsys):
    assert main(["select", "x.jsonl", "--recipe", "superfiltering", "--ratio", "0.1", "--out", str(tmp_path / "o"),
                 "--dry-run"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "recipe:   superfiltering" in out and "criterion ifd" in out and "{'ratio': 0.1}" in out


def test_shared_flag_nothing_takes_is_an_error(pool, tmp_path, capsys):
    rc = main(["score", str(pool), "--criteria", "length", "--template", "chat", "--out", str(tmp_path / "s.parquet")])
    assert rc == 2
    assert "['template']: no criterion or recipe of this run takes them" in capsys.readouterr().err


def test_old_option_syntax_becomes_a_criterion_option(tmp_path, capsys):
    plan = run_json(capsys, ["score", "x.jsonl", "--criteria", "ifd", "--option", "ifd.ratio=ppl", "--out", "s.parquet",
                             "--chunk", "7", "--fail-fast", "--dry-run", "--json"])  # fmt: skip
    assert plan["criteria"][0]["options"]["ratio"] == "ppl"
    assert plan["input"]["shard_size"] == 7 and plan["input"]["on_bad_row"] == "error"
    # the notices went to stderr (checked on a second run: run_json consumed the first capture)
    main(["score", "x.jsonl", "--criteria", "ifd", "--option", "ifd.ratio=ppl", "--out", "s.parquet", "--chunk", "7",
          "--dry-run"])  # fmt: skip
    err = capsys.readouterr().err
    assert "--chunk is deprecated; use --shard-size" in err
    assert "write --criterion-option ifd.ratio=ppl" in err


def test_demo_dry_run_and_its_old_flags(capsys):
    plan = run_json(capsys, ["demo", "--method", "rrf", "--diversity-tau", "0.8", "--dry-run", "--json"])
    assert plan["recipe"] == "multi-objective" and plan["budget"] == {"ratio": 0.05}
    assert plan["recipe_options"]["method"] == "rrf" and plan["recipe_options"]["diversity_tau"] == 0.8
    assert plan["recipe_options"]["max_length"] == 256
    assert plan["input"]["limit"] == 1500 and plan["input"]["shard_size"] == 200


# ------------------------------------------------------------------ --json summaries of real runs
def test_select_and_score_json_summaries(pool, tmp_path, capsys):
    res = run_json(capsys, ["select", str(pool), "--criteria", "length", "--k", "4", "--out", str(tmp_path / "o"),
                            "--no-report", "--json"])  # fmt: skip
    assert res["rows"] == 12 and res["selected"] == 4 and res["skipped"] == 0
    sel = [json.loads(line) for line in Path(res["outputs"]["selected"]).read_text().splitlines()]
    # top 4 by length: the 4 longest answers (r11..r8), an order checked by hand
    assert sorted(r["id"] for r in sel) == ["r10", "r11", "r8", "r9"]
    out = tmp_path / "s.csv"
    res = run_json(capsys, ["score", str(pool), "--criteria", "length,mtld", "--out", str(out), "--json"])
    assert res["rows"] == 12 and res["scored"]["length"] == 12 and res["out"] == str(out)
    assert len(pd.read_csv(out)) == 12


def test_rank_json_dry_run_and_old_method_flag(tmp_path, capsys):
    scores = tmp_path / "s.parquet"
    pd.DataFrame({"id": ["a", "b", "c", "d"], "x": [0.1, 0.9, 0.5, 0.7]}).to_parquet(scores)
    plan = run_json(capsys, ["rank", str(scores), "--objective", "x:max", "--k", "2", "--dry-run", "--json"])
    assert plan["rows"] == 4 and plan["k"] == 2 and plan["selector"] == "pareto"
    res = run_json(capsys, ["rank", str(scores), "--objective", "x:max", "--method", "weighted", "--k", "2", "--json"])
    assert res["selector"] == "weighted" and [r["id"] for r in res["top"]] == ["b", "d"]
    assert main(["rank", str(scores), "--objective", "y:max"]) == 2
    assert "['y'] not among the columns" in capsys.readouterr().err


def test_rank_weighted_normaliser_flag(tmp_path, capsys):
    scores = tmp_path / "s.parquet"
    pd.DataFrame({"id": list("abcd"), "x": [0.0, 1.0, 2.0, 10.0], "y": [3.0, 2.9, 1.0, 0.0]}).to_parquet(scores)
    argv = ["rank", str(scores), "--objective", "x:max", "--objective", "y:max", "--selector", "weighted", "--k", "1"]
    assert [r["id"] for r in run_json(capsys, [*argv, "--json"])["top"]] == ["a"]  # ranks: every row ties
    res = run_json(capsys, [*argv, "--normalize", "minmax", "--json"])
    assert res["options"]["normalize"] == "minmax" and [r["id"] for r in res["top"]] == ["b"]
    assert main(["rank", str(scores), "--objective", "x:max", "--normalize", "zscore"]) == 2
    assert "--normalize: only for --selector weighted (pareto compares the raw values)" in capsys.readouterr().err


def test_compare_dry_run_and_force_alias(tmp_path, capsys):
    out = tmp_path / "rep"
    plan = run_json(capsys, ["compare", "--out", str(out), "--dry-run", "--json"])
    assert plan["out"] == str(out) and not out.exists()
    out.mkdir()
    (out / "report.html").write_text("old")
    assert main(["compare", "--out", str(out), "--dry-run"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compare", "--out", str(out), "--force", "--dry-run"]) == 0
    assert "--force is deprecated; use --overwrite" in capsys.readouterr().err


def test_evaluate_dry_run_reads_nothing(pool, tmp_path, capsys):
    ev = str(tmp_path / "ev")
    argv = ["evaluate", str(pool), "--selected", str(pool), "--target", str(pool), "--recipe", "random", "--out", ev,
            "--steps", "3", "--dry-run", "--json"]  # fmt: skip
    plan = run_json(capsys, argv)
    assert plan["proxy"]["steps"] == 3 and plan["recipe"] == "random" and not (tmp_path / "ev").exists()
