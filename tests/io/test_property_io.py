"""Property-based safety net over the readers and the CLI (hypothesis).

* Random valid rows round-trip through every text format thresher reads.
* Random corruptions of a valid file (truncation, byte flips, a BOM, CRLF line ends, wrong
  types, missing fields, duplicate ids) either read correctly or fail with ONE InputError whose
  message names the file and the line; through the CLI that is exit code 2 and one stderr line,
  never a traceback.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thresher.cli.main import main as cli_main
from thresher.errors import InputError
from thresher.io import read_samples

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
row = st.fixed_dictionaries(
    {"instruction": text.filter(str.strip), "output": text.filter(str.strip)},
    optional={"input": text},
)


def valid_rows(rows: list[dict]) -> list[dict]:
    return [dict(r, id=f"r{i}") for i, r in enumerate(rows)]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


@SETTINGS
@given(rows=st.lists(row, min_size=1, max_size=12), fmt=st.sampled_from(["jsonl", "jsonl.gz", "json", "csv"]))
def test_valid_rows_round_trip(tmp_path_factory, rows, fmt):
    rows = valid_rows(rows)
    p = tmp_path_factory.mktemp("rt") / f"pool.{fmt}"
    if fmt == "jsonl":
        p.write_bytes(jsonl_bytes(rows))
    elif fmt == "jsonl.gz":
        p.write_bytes(gzip.compress(jsonl_bytes(rows)))
    elif fmt == "json":
        p.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    else:
        import pandas as pd

        if any("\r" in v for r in rows for v in r.values()):
            return  # a bare CR inside a CSV field is not portable CSV
        pd.DataFrame(rows).fillna("").to_csv(p, index=False)
    df = read_samples(p)
    assert df["id"].tolist() == [r["id"] for r in rows]
    assert df["instruction"].tolist() == [r["instruction"] for r in rows]
    assert df["output"].tolist() == [r["output"] for r in rows]
    assert df["input"].tolist() == [r.get("input", "") for r in rows]


def corrupt(data: bytes, how: str, pos: int) -> bytes:
    pos = pos % max(len(data), 1)
    if how == "truncate":
        return data[:pos]
    if how == "flip":
        return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "crlf":
        return data.replace(b"\n", b"\r\n")
    raise AssertionError(how)


def check_outcome(p: Path, expect_ok: bool = False) -> None:
    try:
        read_samples(p)
    except InputError as exc:
        assert not expect_ok, f"valid file refused: {exc}"
        msg = str(exc)
        assert msg.startswith(str(p)), msg
        assert "\n" not in msg
        assert ", line " in msg or "gzip" in msg.lower() or "empty" in msg.lower(), msg


@SETTINGS
@given(
    rows=st.lists(row, min_size=2, max_size=8),
    how=st.sampled_from(["truncate", "flip", "bom", "crlf"]),
    pos=st.integers(0, 10_000),
    gz=st.booleans(),
)
def test_byte_corruptions_read_or_name_file_and_line(tmp_path_factory, rows, how, pos, gz):
    data = corrupt(jsonl_bytes(valid_rows(rows)), how, pos)
    p = tmp_path_factory.mktemp("bytes") / ("pool.jsonl.gz" if gz else "pool.jsonl")
    p.write_bytes(gzip.compress(data) if gz else data)
    check_outcome(p, expect_ok=how in ("bom", "crlf"))


@SETTINGS
@given(
    rows=st.lists(row, min_size=2, max_size=8),
    which=st.integers(0, 7),
    how=st.sampled_from(["int", "list", "null", "missing", "dup_id"]),
)
def test_record_corruptions_read_or_name_file_and_line(tmp_path_factory, rows, which, how):
    rows = valid_rows(rows)
    i = which % len(rows)
    if how == "missing":
        del rows[i]["output"]
    elif how == "dup_id":
        rows[i]["id"] = rows[(i + 1) % len(rows)]["id"]
    else:
        rows[i]["output"] = {"int": 5, "list": ["a"], "null": None}[how]
    p = tmp_path_factory.mktemp("rec") / "pool.jsonl"
    p.write_bytes(jsonl_bytes(rows))
    try:
        read_samples(p)
    except InputError as exc:
        assert str(exc).startswith(f"{p}, line "), str(exc)
    else:
        assert how in ("int",), f"{how} corruption accepted silently"


@pytest.mark.parametrize("how", ["truncate", "flip", "missing"])
def test_cli_corruption_is_one_line_exit_2(tmp_path, capsys, bigbench_path, how):
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(next(fh)) for _ in range(20)]
    if how == "missing":
        del rows[7]["output"]
    data = jsonl_bytes(rows)
    data = {"truncate": data[: len(data) // 2 + 3], "flip": data[:500] + b"\xff\xfe" + data[502:]}.get(how, data)
    p = tmp_path / "pool.jsonl"
    p.write_bytes(data)
    rc = cli_main(["score", str(p), "--criteria", "length", "--out", str(tmp_path / "s.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len([ln for ln in err if "error" in ln]) == 1, err
    assert str(p) in err[-1] and "line " in err[-1], err
    assert not any("Traceback" in ln for ln in err)
