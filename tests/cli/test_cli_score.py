"""`thresher score`: rows in, a scores table keyed by id out; bad rows handled like every other verb."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from thresher.cli.main import main
from thresher.models import tiny_causal_lm

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "score_small.jsonl"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-model")
    lm = tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return str(d)


def test_score_bad_row_stops_naming_file_and_line(model_dir, tmp_path, capsys):
    # the same reader as every other verb: a bad row is an error (exit 2, one line), not a silent drop
    out = tmp_path / "scores.parquet"
    rc = main(["score", str(FIX), "--criteria", "ifd,perplexity", "--model", model_dir, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("thresher: error:")]
    assert len(lines) == 1 and f"{FIX}, line 4: malformed JSON" in lines[0]
    assert "Traceback" not in err
    assert not out.exists()


def test_score_fixture_with_bad_rows_skipped(model_dir, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    rc = main(
        [
            "score",
            str(FIX),
            "--criteria",
            "ifd,perplexity",
            "--model",
            model_dir,
            "--batch-tokens",
            "512",
            "--out",
            str(out),
            "--on-bad-row",
            "skip",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    df = pd.read_parquet(out)
    ids = df["id"].tolist()
    assert ids[:2] == ["good-1", "good-2"] and ids[3:] == ["empty-answer", "number-output", "chat-1"]
    assert len(ids[2]) == 16  # no own id: the content hash, as for every verb
    for c in ("ifd", "ifd.loss_cond", "ifd.loss_direct", "ifd.reason", "perplexity", "perplexity.loss"):
        assert c in df.columns
    good = df["id"] != "empty-answer"
    assert df.loc[good, "ifd"].notna().all() and df.loc[good, "perplexity"].notna().all()
    assert df.loc[~good, "ifd"].isna().all()
    assert (df.loc[good, "ifd.reason"] == "").all()
    # reports name the file, line and field
    assert f"{FIX}, line 4: malformed JSON" in err
    assert f"{FIX}, line 6, field 'output': missing field" in err
    assert "not scored: empty-answer: ifd: empty answer" in err
    assert not [p for p in tmp_path.iterdir() if p.name != "scores.parquet"]  # no temp leftovers
    # --quiet: one result line with the counts, no per-row list
    argv = ["score", str(FIX), "--criteria", "length", "--on-bad-row", "skip", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"thresher score: wrote {out} (")
    assert "bad rows skipped" in lines[0], lines


def test_same_scores_as_python_api(model_dir, tmp_path):
    from thresher.registry import CRITERIA

    out = tmp_path / "s.csv"
    assert (
        main(
            [
                "score",
                str(FIX),
                "--criteria",
                "ifd",
                "--model",
                model_dir,
                "--out",
                str(out),
                "--option",
                "ifd.ratio=ppl",
                "--max-length",
                "300",
                "--on-bad-row",
                "skip",
            ]
        )
        == 0
    )
    df = pd.read_csv(out, keep_default_na=True)
    rows = [json.loads(line) for line in FIX.read_text().splitlines() if line.startswith('{"')]
    api = CRITERIA.get("ifd").obj(model=model_dir, ratio="ppl", max_length=300)(pd.DataFrame(rows[:2]))
    # same scores up to float rounding (the CLI batches 7 rows together, the API call 2)
    assert df["ifd"][:2].tolist() == pytest.approx(api["ifd"].tolist(), rel=1e-5)


def test_fail_fast_stops_with_location(model_dir, tmp_path, capsys):
    out = tmp_path / "x.parquet"
    rc = main(["score", str(FIX), "--criteria", "perplexity", "--model", model_dir, "--out", str(out), "--fail-fast"])
    assert rc == 2
    assert f"{FIX}, line 4: malformed JSON" in capsys.readouterr().err
    assert not out.exists()


def test_gzip_input_and_limit(model_dir, tmp_path, bigbench_path):
    out = tmp_path / "bb.jsonl"
    assert (
        main(
            [
                "score",
                str(bigbench_path),
                "--criteria",
                "entropy,el2n",
                "--model",
                model_dir,
                "--limit",
                "4",
                "--out",
                str(out),
                "--max-length",
                "256",
                "--option",
                "entropy.truncation=left",
                "--option",
                "el2n.truncation=left",
            ]
        )
        == 0
    )
    df = pd.read_json(out, lines=True)
    with gzip.open(bigbench_path, "rt") as f:
        ids = [json.loads(next(f))["id"] for _ in range(4)]
    assert df["id"].tolist() == ids
    assert df["entropy"].notna().all() and df["el2n"].between(0, math.sqrt(2)).all()
    assert (df["entropy.truncated"] > 0).any()  # long BIG-bench prompts were cut from the left


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--criteria", "nope"], "unknown criterion 'nope'"),
        (["--criteria", "ifd", "--option", "ifd.ratio"], "--option"),
        (["--criteria", "ifd", "--option", "perplexity.x=1"], "not in --criteria"),
        (["--criteria", "ifd", "--batch-tokens", "0"], "--batch-tokens"),
        (["--criteria", "ifd", "--option", "ifd.ratio=cube"], "ratio"),
    ],
)
def test_bad_arguments(model_dir, tmp_path, capsys, argv, msg):
    rc = main(["score", str(FIX), "--model", model_dir, "--out", str(tmp_path / "o.parquet")] + argv)
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_missing_inputs(tmp_path, capsys):
    assert main(["score", str(tmp_path / "none.jsonl"), "--criteria", "ifd", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                str(FIX),
                "--criteria",
                "ifd",
                "--model",
                str(tmp_path / "no-model"),
                "--out",
                str(tmp_path / "o.parquet"),
                "--on-bad-row",
                "skip",
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["score", str(empty), "--criteria", "ifd", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "empty file" in capsys.readouterr().err


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("thresher: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_out_never_replaces_the_input_or_a_users_file(tmp_path, capsys, monkeypatch):
    """--out is checked before any scoring: never the input file, never inside the input folder, an
    existing file only when it is a scores table (a rerun) or with --overwrite."""
    rows = [json.loads(ln) for ln in FIX.read_text().splitlines()[:3]]
    pool = tmp_path / "pool.parquet"
    pd.DataFrame(rows).to_parquet(pool)
    before = pool.read_bytes()
    scored = []
    import thresher.cli.cmd_score as cmd_score

    real = cmd_score.run_pipeline
    monkeypatch.setattr(cmd_score, "run_pipeline", lambda cfg: scored.append(1) or real(cfg))
    for flags in ([], ["--overwrite"]):
        assert main(["score", str(pool), "--criteria", "length", "--out", str(pool), "--quiet", *flags]) == 2
        assert "is the input file" in _error_line(capsys)
    assert pool.read_bytes() == before
    folder = tmp_path / "pool"
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "a.parquet")
    assert main(["score", str(folder), "--criteria", "length", "--out", str(folder / "s.parquet"), "--quiet"]) == 2
    assert "inside the input folder" in _error_line(capsys)
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    assert main(["score", str(pool), "--criteria", "length", "--out", str(notes), "--quiet"]) == 2
    assert "is not a thresher scores table" in _error_line(capsys) and notes.read_text() == "a,b\n1,2\n"
    for name in ("x.json", "x.tsv.gz", "scores.txt", "x.jsonl.gz"):
        assert main(["score", str(pool), "--criteria", "length", "--out", str(tmp_path / name), "--quiet"]) == 2
        assert "write .parquet, .csv or .jsonl" in _error_line(capsys) and not (tmp_path / name).exists()
    assert scored == []  # every refusal came before the pipeline ran
    out = tmp_path / "s.csv"
    for _ in range(2):  # a rerun replaces its own scores table without a flag
        assert main(["score", str(pool), "--criteria", "length", "--out", str(out), "--quiet"]) == 0
    assert main(["score", str(pool), "--criteria", "length", "--out", str(notes), "--quiet", "--overwrite"]) == 0
    assert list(pd.read_csv(notes)["id"]) == list(pd.read_csv(out)["id"]) and len(scored) == 3


def test_scores_are_kept_when_the_table_cannot_be_written(tmp_path, capsys, monkeypatch):
    from thresher.io import writers

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers, "atomic_file", full)
    out = tmp_path / "s.csv"
    assert main(["score", str(FIX), "--criteria", "length", "--on-bad-row", "skip", "--out", str(out), "--quiet"]) == 2
    line = _error_line(capsys)
    assert f"{out}: cannot write (No space left on device); the scores are kept in " in line
    kept = Path(line.rsplit("kept in ", 1)[1])
    try:
        got = pd.read_parquet(kept)
        assert "length" in got.columns and len(got) > 0 and not out.exists()
    finally:
        kept.unlink()


PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")


def _scored_rows(log: Path) -> int:
    return sum(int(line.split()[1]) for line in log.read_text().splitlines()) if log.exists() else 0


def test_a_stopped_score_run_resumes_without_a_cache_dir(tmp_path, capsys, bigbench_path):
    from conftest import write_bigbench_head
    from thresher.cli.cmd_score import resume_cache

    pool = write_bigbench_head(bigbench_path, tmp_path / "pool.jsonl", 300)
    ids = [json.loads(line)["id"] for line in pool.read_text().splitlines()]
    out, log = tmp_path / "scores.parquet", tmp_path / "calls.log"
    argv = ["score", str(pool), "--criteria", "fake_len", "--plugin", PLUGIN, "--shard-size", "100",
            "--criterion-option", f"fake_len.log={log}", "--out", str(out), "--quiet"]  # fmt: skip
    own = resume_cache(pool, out)
    assert not own.exists()
    rc = main(argv + ["--criterion-option", f"fake_len.fail_on={ids[250]}"])  # shards 1-2 done, shard 3 fails
    err = capsys.readouterr().err
    assert rc == 1 and f"the scores computed so far are kept in {own}: the same command resumes" in err
    assert _scored_rows(log) == 200 and not out.exists()

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert _scored_rows(log) == 300  # the third shard only
    assert pd.read_parquet(out)["id"].tolist() == ids
    assert not own.exists()  # removed once the table is written
    assert main(argv) == 0 and _scored_rows(log) == 600  # a finished run leaves no cache: all scored again
