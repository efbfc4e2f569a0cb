"""The CLI's one error path: bad input is one line naming file (and line), exit 2; a bug is a traceback, exit 1.

Model-free (the `length` criterion), on small files written here and on real BIG-bench rows.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.cli import main as cli_main
from thresher.errors import InputError, ResourceError
from thresher.io import read_samples

ROWS = [{"id": f"r{i}", "instruction": f"Say {i} twice.", "output": f"{i} {i}"} for i in range(6)]


def jsonl(path: Path, rows=ROWS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def score(data: Path, tmp_path: Path, *extra: str) -> int:
    return cli_main.main(
        ["score", str(data), "--criteria", "length", "--out", str(tmp_path / "o.parquet"), "--quiet", *extra]
    )


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("thresher: error: "), err
    return lines[0]


def test_truncated_gzip(tmp_path, capsys):
    full = gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS * 50).encode())
    p = tmp_path / "pool.jsonl.gz"
    p.write_bytes(full[: len(full) // 2])
    assert score(p, tmp_path) == 2
    line = one_error_line(capsys)
    assert str(p) in line and "truncated" in line


def test_gz_that_is_not_gzip(tmp_path, capsys):
    p = jsonl(tmp_path / "pool.jsonl.gz")
    assert score(p, tmp_path) == 2
    line = one_error_line(capsys)
    assert str(p) in line and "not a gzip file" in line


def test_invalid_utf8_names_file_and_line(tmp_path, capsys):
    p = jsonl(tmp_path / "pool.jsonl")
    lines = p.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"Say", b"S\xff\xfey")
    p.write_bytes(b"\n".join(lines))
    assert score(p, tmp_path) == 2
    line = one_error_line(capsys)
    assert f"{p}, line 3" in line and "UTF-8" in line
    # a JSON array and a CSV name the line too
    arr = tmp_path / "pool.json"
    arr.write_bytes(b"[\n" + b",\n".join(json.dumps(r).encode() for r in ROWS[:2]) + b',\n{"instruction": "\xff"}\n]')
    with pytest.raises(InputError, match=r"pool.json, line 4: not valid UTF-8"):
        read_samples(arr)
    csv = tmp_path / "pool.csv"
    csv.write_bytes(b"id,instruction,output\na,b,c\nd,\xe9,f\n")
    with pytest.raises(InputError, match=r"pool.csv, line 3: not valid UTF-8"):
        read_samples(csv)


def test_permission_errors_name_the_path(tmp_path, capsys, monkeypatch):
    p = jsonl(tmp_path / "pool.jsonl")
    from thresher.io import formats, writers

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(formats, "open", denied, raising=False)  # as if chmod 000 (tests may run as root)
        with pytest.raises(ResourceError, match="permission denied"):
            read_samples(p)
        assert score(p, tmp_path) == 2
        line = one_error_line(capsys)
        assert str(p) in line and "permission denied" in line
    monkeypatch.setattr(writers, "atomic_file", denied)
    out = tmp_path / "o.csv"
    assert cli_main.main(["score", str(p), "--criteria", "length", "--out", str(out), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert str(out) in line and "permission denied" in line and "the scores are kept in " in line
    Path(line.rsplit("kept in ", 1)[1]).unlink()  # the scores, saved where they could be written


def test_folder_mixing_formats_is_refused(tmp_path, capsys):
    d = tmp_path / "pool"
    d.mkdir()
    jsonl(d / "a.jsonl", ROWS[:3])
    pd.DataFrame(ROWS[3:]).to_csv(d / "b.csv", index=False)
    assert score(d, tmp_path) == 2
    line = one_error_line(capsys)
    assert "mixes data formats" in line and "a.jsonl" in line and "b.csv" in line
    with pytest.raises(InputError, match="mixes data formats"):
        read_samples(d, format="jsonl")


def test_bom_is_accepted_in_jsonl_and_csv(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + jsonl(tmp_path / "plain.jsonl").read_bytes())
    assert read_samples(p)["id"].tolist() == [r["id"] for r in ROWS]
    c = tmp_path / "bom.csv"
    c.write_bytes(b"\xef\xbb\xbf" + pd.DataFrame(ROWS).to_csv(index=False).encode())
    df = read_samples(c)
    assert df["id"].tolist() == [r["id"] for r in ROWS]  # the id column is kept
    assert score(p, tmp_path) == 0


def test_skip_a_bad_first_row_and_a_bad_record_in_a_json_array(tmp_path, capsys):
    p = tmp_path / "first.jsonl"
    p.write_text('{"id": "bad", "instruction": "no answer"}\n' + jsonl(tmp_path / "x.jsonl").read_text())
    assert score(p, tmp_path) == 2
    assert f"{p}, line 1" in one_error_line(capsys)
    src_rows = read_samples(p, on_bad_row="skip")
    assert src_rows["id"].tolist() == [r["id"] for r in ROWS]
    assert score(p, tmp_path, "--on-bad-row", "skip") == 0
    assert pd.read_parquet(tmp_path / "o.parquet")["id"].tolist() == [r["id"] for r in ROWS]
    capsys.readouterr()
    arr = tmp_path / "pool.json"
    body = [json.dumps(r) for r in ROWS]
    body.insert(2, '{"id": "broken", "instruction": "x", "output": }')
    arr.write_text("[\n" + ",\n".join(body) + "\n]\n")
    assert score(arr, tmp_path) == 2
    assert f"{arr}, line 4: malformed JSON" in one_error_line(capsys)
    assert read_samples(arr, on_bad_row="skip")["id"].tolist() == [r["id"] for r in ROWS]


def test_score_bigbench_rows_without_input(tmp_path, bigbench_path):
    p = write_bigbench_head(bigbench_path, tmp_path / "pool.jsonl", 40)
    assert all("input" not in json.loads(ln) for ln in p.read_text().splitlines())
    assert score(p, tmp_path) == 0
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert len(df) == 40 and df["length"].notna().all()


def test_score_messages_rows(tmp_path):
    rows = [
        {
            "id": f"m{i}",
            "messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello " * (i + 1)}],
        }
        for i in range(4)
    ]
    p = jsonl(tmp_path / "chat.jsonl", rows)
    out = tmp_path / "o.jsonl"
    assert cli_main.main(["score", str(p), "--criteria", "length", "--out", str(out), "--quiet"]) == 0
    df = pd.read_json(out, lines=True)
    assert df["id"].tolist() == [r["id"] for r in rows] and df["length"].is_monotonic_increasing


def test_a_bug_prints_a_traceback_and_exits_1(tmp_path, capsys, monkeypatch):
    from thresher.cli import cmd_score

    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(cmd_score, "run_pipeline", lambda cfg: broken(cfg))
    assert score(jsonl(tmp_path / "p.jsonl"), tmp_path) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "bug in thresher" in err


def test_error_line_is_not_glued_to_a_progress_bar(capsys):
    from tqdm import tqdm

    bar = tqdm(total=10, desc="scoring")
    bar.update(3)
    assert cli_main.report_error(InputError("bad row", file="x.jsonl", line=3)) == 2
    err = capsys.readouterr().err
    assert "\nthresher: error: x.jsonl, line 3: bad row\n" in err


# ------------------------------------------------------------------ --field mappings
CUSTOM = [{"q": f"Say {i}.", "answer": f"{i}"} for i in range(4)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_mapping_without_instruction_names_the_file(tmp_path, capsys, suffix):
    p = tmp_path / f"pool{suffix}"
    if suffix == ".csv":
        pd.DataFrame(CUSTOM).to_csv(p, index=False)
    else:
        jsonl(p, CUSTOM)
    assert score(p, tmp_path, "--field", "output=answer") == 2
    line = one_error_line(capsys)
    assert line == (
        f"thresher: error: fields: --field output=answer for {p} also needs --field instruction=COLUMN "
        "(or --field conversation=COLUMN for chat rows)"
    )
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_mapped_column_missing_from_the_file_is_not_a_bad_row(tmp_path, capsys, suffix):
    p = tmp_path / f"pool{suffix}"
    df = pd.DataFrame(CUSTOM)
    if suffix == ".csv":
        df.to_csv(p, index=False)
    elif suffix == ".parquet":
        df.to_parquet(p, index=False)
    else:
        jsonl(p, CUSTOM)
    for flags in ([], ["--on-bad-row", "skip"]):
        assert score(p, tmp_path, "--field", "instruction=q", "--field", "output=answr", *flags) == 2
        line = one_error_line(capsys)
        assert (
            line
            == f"thresher: error: {p}: no column 'answr' in this data (--field output=answr); its columns: answer, q"
        )
        assert "skip" not in line


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_group_field_no_row_has_is_an_error_not_one_empty_group(tmp_path, capsys, suffix):
    """Before: every row got the group '' and group_topk ran on one group."""
    rows = [{"instruction": f"Say {i}.", "output": f"{i}", "topic": f"t{i % 2}"} for i in range(4)]
    p = tmp_path / f"pool{suffix}"
    if suffix == ".jsonl":
        jsonl(p, rows)
    else:
        getattr(pd.DataFrame(rows), "to_csv" if suffix == ".csv" else "to_parquet")(p, index=False)
    for flags in ([], ["--on-bad-row", "skip"]):
        assert score(p, tmp_path, "--group-field", "topc", *flags) == 2
        line = one_error_line(capsys)
        assert line == (
            f"thresher: error: {p}: no column 'topc' in this data (--group-field topc); its columns: instruction, "
            "output, topic"
        )
    assert score(p, tmp_path, "--group-field", "topic") == 0
    assert pd.read_parquet(tmp_path / "o.parquet")["group"].tolist() == ["t0", "t1", "t0", "t1"]


def test_a_group_field_missing_only_from_the_first_row_is_an_empty_group(tmp_path, capsys):
    rows = [{"instruction": "Say 0.", "output": "0"}] + [{"instruction": f"Say {i}.", "output": f"{i}", "topic": "t"}
                                                          for i in range(1, 4)]  # fmt: skip
    p = jsonl(tmp_path / "pool.jsonl", rows)
    assert score(p, tmp_path, "--group-field", "topic") == 0
    assert pd.read_parquet(tmp_path / "o.parquet")["group"].tolist() == ["", "t", "t", "t"]


def test_a_mapped_column_missing_only_from_the_first_row_is_a_bad_row(tmp_path, capsys):
    rows = [{"q": "Say 0."}] + CUSTOM[1:]  # row 1 lacks 'answer', the others have it
    p = jsonl(tmp_path / "pool.jsonl", rows)
    assert score(p, tmp_path, "--field", "instruction=q", "--field", "output=answer") == 2
    line = one_error_line(capsys)
    assert (
        line.startswith(f"thresher: error: {p}, line 1, field 'answer': missing field") and "--on-bad-row skip" in line
    )
    assert score(p, tmp_path, "--field", "instruction=q", "--field", "output=answer", "--on-bad-row", "skip") == 0
    assert len(pd.read_parquet(tmp_path / "o.parquet")) == 3


def test_score_summary_lists_only_the_criteria(tmp_path, capsys):
    p = jsonl(tmp_path / "pool.jsonl")
    assert score(p, tmp_path, "--criteria", "length,mtld", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["scored"]) == ["length", "mtld"] and out["rows"] == 6
    assert cli_main.main(["score", str(p), "--criteria", "length", "--out", str(tmp_path / "o.parquet")]) == 0
    err = capsys.readouterr().err
    last = [ln for ln in err.splitlines() if ln.startswith("thresher score: wrote")]
    assert len(last) == 1 and "(6 rows; length: 6/6 scored;" in last[0]
    assert "tokens" not in last[0] and "source_file" not in last[0] and "source_line" not in last[0]


def test_a_whole_file_error_does_not_offer_skipping_rows(tmp_path, capsys):
    """--on-bad-row skip cannot get past a file that is not a JSON array or is cut short, so the
    message does not suggest it (a bad row's message does)."""
    cases = {"obj.json": '{"instruction": "a", "output": "b"}', "cut.json": '[{"instruction": "a", "output": "b"},'}
    for name, text in cases.items():
        f = tmp_path / name
        f.write_text(text, encoding="utf-8")
        for flags in ([], ["--on-bad-row", "skip"]):
            assert score(f, tmp_path, *flags) == 2
            line = one_error_line(capsys)
            assert line.endswith("; fix the file") and "--on-bad-row" not in line, line
    rows = jsonl(tmp_path / "pool.jsonl", [*ROWS[:2], {"instruction": "no answer"}])
    assert score(rows, tmp_path) == 2
    assert one_error_line(capsys).endswith("fix the row, or pass --on-bad-row skip to skip bad rows")


def test_out_and_cache_inside_the_input_folder_are_refused(tmp_path, capsys):
    """A folder is read with its subfolders: a run's outputs or cache inside it would be read as pool
    rows next time (or make it a folder of mixed formats). Refused before anything is written."""
    d = tmp_path / "pool"
    d.mkdir()
    jsonl(d / "a.jsonl")
    base = ["select", str(d), "--criteria", "length", "--k", "2", "--quiet"]
    assert cli_main.main([*base, "--out", str(d / "sel")]) == 2
    assert f"out: {d / 'sel'} is inside the input folder {d}" in one_error_line(capsys)
    assert cli_main.main([*base, "--out", str(tmp_path / "sel"), "--cache-dir", str(d / "c")]) == 2
    assert "cache_dir: " in one_error_line(capsys)
    assert sorted(p.name for p in d.iterdir()) == ["a.jsonl"]  # nothing written into it
    assert cli_main.main([*base, "--out", str(tmp_path / "sel")]) == 0
    assert cli_main.main([*base, "--out", str(tmp_path / "sel")]) == 0  # a rerun reads the same pool


def test_an_unknown_option_is_reported_with_the_verbs_usage_and_the_closest_name(tmp_path, capsys):
    """`thresher rank x --objectives a`: the verb's own usage (not the top-level one), the closest option."""
    with pytest.raises(SystemExit) as exc:
        cli_main.main(["rank", str(tmp_path / "s.parquet"), "--objectives", "a:max", "--frobnicate"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("usage: thresher rank ") and "[--objective NAME:max|min]" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("thresher rank: error: unrecognized arguments: --objectives a:max --frobnicate")
    assert "--objectives -> did you mean --objective?" in last and "--frobnicate ->" not in last
    with pytest.raises(SystemExit):
        cli_main.main(["--frobnicate"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == "thresher: error: unrecognized arguments: --frobnicate"
