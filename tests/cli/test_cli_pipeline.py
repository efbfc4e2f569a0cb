"""CLI verbs select / rank / run / recipes / demo, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.cli.main import main

PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory) -> Path:
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("pool") / "pool.jsonl", 400)


def test_select_with_criteria_and_rank(pool, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(
        [
            "select",
            str(pool),
            "--criteria",
            "length,mtld",
            "--selector",
            "topk",
            "--selector-option",
            "criterion=mtld",
            "--k",
            "12",
            "--out",
            str(out),
            "--quiet",
            "--no-report",
        ]
    )
    assert rc == 0
    s = pd.read_parquet(out / "scores.parquet")
    assert int(s["selected"].sum()) == 12 and {"length", "mtld", "length.output"} <= set(s.columns)
    assert len((out / "selected.jsonl").read_text().rstrip("\n").split("\n")) == 12
    rc = main(
        [
            "rank",
            str(out / "scores.parquet"),
            "--objective",
            "length:min",
            "--objective",
            "mtld:max",
            "--method",
            "rrf",
            "--k",
            "5",
            "--out",
            str(tmp_path / "ranked.parquet"),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "5 of 400 rows selected by rrf" in printed
    r = pd.read_parquet(tmp_path / "ranked.parquet")
    assert int(r["selected"].sum()) == 5
    assert (
        main(
            [
                "rank",
                str(out / "scores.parquet"),
                "--objective",
                "length:max",
                "--k",
                "3",
                "--out",
                str(tmp_path / "ranked.parquet"),
            ]
        )
        == 2
    )
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_rank_reads_what_score_and_select_write(pool, tmp_path, capsys):
    """`thresher score --out NAME` writes Parquet without an extension and `select --out DIR` a folder: rank reads
    both (it refused a table with no known extension, and a run's folder); a file of another kind, a
    folder with no scores and a missing path are one line each."""
    table = tmp_path / "scores-no-ext"
    assert main(["score", str(pool), "--criteria", "length,mtld", "--out", str(table), "--quiet"]) == 0
    assert table.read_bytes()[:4] == b"PAR1"
    run = tmp_path / "run"
    args = ["--criteria", "length,mtld", "--selector", "topk", "--selector-option", "criterion=mtld"]
    assert main(["select", str(pool), *args, "--k", "4", "--out", str(run), "--quiet", "--no-report"]) == 0
    want = pd.read_parquet(table)
    want = want.sort_values(["length", "mtld"], ascending=False, kind="stable").head(3)["id"].tolist()
    for src in (table, run, run / "scores.parquet"):
        capsys.readouterr()
        rank = ["rank", str(src), "--objective", "length:max", "--selector", "weighted", "--k", "3"]
        assert main([*rank, "--out", str(tmp_path / f"r-{src.name}.parquet")]) == 0
        r = pd.read_parquet(tmp_path / f"r-{src.name}.parquet")
        assert r.loc[r["selected"]].sort_values("rank")["id"].tolist() == want, src
    text = tmp_path / "pool.txt"
    text.write_bytes(pool.read_bytes())
    for src, msg in (
        (text, f"scores: {text} is not a scores table"),
        (tmp_path, f"scores: {tmp_path} is a folder with no scores.parquet"),
        (tmp_path / "nope.parquet", f"scores: {tmp_path / 'nope.parquet'} does not exist"),
    ):
        capsys.readouterr()
        assert main(["rank", str(src), "--objective", "length:max", "--k", "3"]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    rank = ["rank", str(table), "--objective", "length:max", "--selector", "weighted", "--k", "3", "--quiet"]
    for name in ("r.csv", "r.jsonl"):  # by extension, as score writes (it wrote Parquet bytes into r.csv)
        assert main([*rank, "--out", str(tmp_path / name)]) == 0
        got = pd.read_csv(tmp_path / name) if name.endswith(".csv") else pd.read_json(tmp_path / name, lines=True)
        assert got.loc[got["selected"]].sort_values("rank")["id"].tolist() == want
    capsys.readouterr()
    assert main([*rank, "--out", str(tmp_path / "r.txt")]) == 2
    assert "write .parquet, .csv or .jsonl" in capsys.readouterr().err and not (tmp_path / "r.txt").exists()


def test_errors_are_one_clear_line(pool, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = pool.read_text(encoding="utf-8").split("\n")[:10]
    lines.insert(4, '{"instruction": "cut here", "output": ')
    bad.write_text("\n".join(lines) + "\n")
    args = ["--criteria", "length", "--k", "3", "--quiet", "--no-report"]
    assert main(["select", str(bad), *args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}, line 5: malformed JSON" in err and "Traceback" not in err
    assert main(["select", str(bad), *args, "--out", str(tmp_path / "b"), "--on-bad-row", "skip"]) == 0
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["inputs"][0]["skipped"] == 1 and m["inputs"][0]["rows"] == 10
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    assert main(["select", str(missing), *args, "--out", str(tmp_path / "c")]) == 2
    assert "line 2, field 'output': missing field" in capsys.readouterr().err
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"instruction": "a", "output": {"text": "b"}}\n')
    assert main(["select", str(wrong), *args, "--out", str(tmp_path / "d")]) == 2
    assert "line 1, field 'output': expected a string, got dict" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["select", str(empty), *args, "--out", str(tmp_path / "e")]) == 2
    assert "empty file" in capsys.readouterr().err
    assert main(["select", str(pool), "--recipe", "cherry", "--k", "3", "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'cherry'" in err and "ifd" in err
    assert main(["select", str(pool), "--criteria", "lenght", "--k", "3", "--out", str(tmp_path / "g")]) == 2
    assert "unknown criterion 'lenght'" in capsys.readouterr().err
    # an output folder holding another run's results
    assert main(["select", str(pool), *args, "--out", str(tmp_path / "h")]) == 0
    assert (
        main(
            [
                "select",
                str(pool),
                "--criteria",
                "length",
                "--k",
                "4",
                "--quiet",
                "--no-report",
                "--out",
                str(tmp_path / "h"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "already holds another run's results (differs in: budget)" in err and "--overwrite" in err
    assert (
        main(
            [
                "select",
                str(pool),
                "--criteria",
                "length",
                "--k",
                "4",
                "--quiet",
                "--no-report",
                "--out",
                str(tmp_path / "h"),
                "--overwrite",
            ]
        )
        == 0
    )


def test_run_config_and_recipes(pool, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {pool}\nout: res\ncriteria: [{{name: fake_len, options: {{scale: 2}}}}]\n"
        f"selector: {{name: threshold, options: {{criterion: fake_len, mode: knee}}}}\nratio: 1.0\n"
        f"plugins: [{PLUGIN}]\nreport: false\n"
    )
    assert main(["run", str(cfg), "--quiet", "--allow-plugins"]) == 0
    m = json.loads((tmp_path / "res" / "manifest.json").read_text())
    assert m["selector"]["name"] == "threshold" and 0 < m["selected"] < 400
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    for name in ("ifd", "superfiltering-d", "deita", "less", "multi-objective", "tianyi-lab/Cherry_LLM"):
        assert name in listing
    assert main(["recipes", "superfiltering"]) == 0
    detail = capsys.readouterr().out
    assert "semantics" in detail and "52002" in detail
    assert main(["recipes", "ifd", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feasibility"]["trained_llms"] == 1


@pytest.mark.slow
def test_demo_on_a_reduced_pool(tmp_path, capsys):
    """The real default models (SmolLM2 + all-MiniLM-L6-v2) on 40 rows of the bundled pool."""
    out = tmp_path / "demo"
    rc = main(["demo", "--limit", "40", "--max-length", "96", "--ratio", "0.1", "--out", str(out), "--quiet"])
    assert rc == 0
    s = pd.read_parquet(out / "scores.parquet")
    assert len(s) == 40 and {"ifd", "knn_distance", "ifd.loss_cond"} <= set(s.columns)
    assert 1 <= int(s["selected"].sum()) <= 4
    assert (s.loc[s["selected"], "ifd"] <= 1).all()
    m = json.loads((out / "manifest.json").read_text())
    assert m["recipe"]["name"] == "multi-objective" and m["models"].get("ifd")
    assert (out / "report.html").stat().st_size > 10000


def test_score_any_reader_and_pool_scoped_criteria(pool, tmp_path, capsys):
    """`thresher score` on Parquet with a pool-scoped criterion: one call over the whole pool, not per chunk."""
    from thresher.pipeline import load_plugins

    load_plugins([PLUGIN])
    df = pd.read_json(pool, lines=True)
    src = tmp_path / "pool.parquet"
    df.to_parquet(src)
    log = tmp_path / "calls.log"
    out = tmp_path / "scores.parquet"
    rc = main(
        [
            "score",
            str(src),
            "--criteria",
            "length,fake_pool",
            "--chunk",
            "100",
            "--out",
            str(out),
            "--option",
            f"fake_pool.log={log}",
            "--quiet",
        ]
    )
    assert rc == 0
    s = pd.read_parquet(out)
    assert s["id"].tolist() == df["id"].tolist()
    assert log.read_text().splitlines() == ["fake_pool 400"]
    L = df["output"].str.len().to_numpy()
    assert s["fake_pool"].to_numpy()[L.argmax()] == 1.0  # ranked within the whole pool
    assert "wrote" in capsys.readouterr().err


def test_split_of_a_saved_dataset_dict_on_the_command_line(pool, tmp_path, capsys):
    """The error for a DatasetDict without a split says '--split': select and score take it (they did not),
    and a file given a split is refused in one line instead of being looked up on the hub."""
    import datasets

    rows = [json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines()]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:30]),
                               "test": datasets.Dataset.from_list(rows[30:50])})  # fmt: skip
    dd.save_to_disk(str(tmp_path / "dd"))
    args = ["--criteria", "length", "--k", "3", "--quiet", "--no-report"]
    assert main(["select", str(tmp_path / "dd"), *args, "--out", str(tmp_path / "a")]) == 2
    assert "pass split=NAME (--split)" in capsys.readouterr().err
    assert main(["select", str(tmp_path / "dd"), *args, "--split", "test", "--out", str(tmp_path / "b"),
                 "--dry-run", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["input"]["split"] == "test"
    assert main(["select", str(tmp_path / "dd"), *args, "--split", "test", "--out", str(tmp_path / "b")]) == 0
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["inputs"][0]["split"] == "test" and m["inputs"][0]["rows"] == 20
    s = pd.read_parquet(tmp_path / "b" / "scores.parquet")
    assert s["id"].tolist() == [r["id"] for r in rows[30:50]]
    out = tmp_path / "t.parquet"
    assert main(["score", str(tmp_path / "dd"), "--criteria", "length", "--split", "train", "--out", str(out)]) == 0
    assert pd.read_parquet(out)["id"].tolist() == [r["id"] for r in rows[:30]]
    capsys.readouterr()
    assert main(["select", str(pool), *args, "--split", "train", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "is one file, not a dataset with splits" in err and len(err.strip().splitlines()) == 1, err
