"""CSV/TSV files cut between records (quoted fields may hold line breaks) and read split by split on
workers give exactly the local reader's rows, line numbers and bad rows."""

from __future__ import annotations

import csv
import gzip
import io
import random

import pandas as pd
import pytest

from thresher.io import DataError, Source
from thresher.io.formats import csv_blocks, csv_header
from thresher.io.splits import ReadSpec, assemble, plan_splits, read_split


def _messy_csv(n: int, seed: int, delim: str = ",") -> str:
    """Header, quoted fields with line breaks, doubled quotes and delimiters inside, a row with too
    many cells, blank lines, CRLF endings on some rows."""
    rnd = random.Random(seed)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delim, lineterminator="\n")
    w.writerow(["id", "instruction", "output"])
    for i in range(n):
        instr = rnd.choice([f"q{i}", f"multi\nline {i}\nq", f'say "hi" {i}', f"a{delim}b {i}", f'"\n"{i}\n'])
        out = rnd.choice([f"a{i}", f"x\r\ny{i}", f"é{i} ünïcode"])
        row = [f"r{i}", instr, out] + (["extra"] if rnd.random() < 0.05 else [])
        w.writerow(row)
        if rnd.random() < 0.05:
            buf.write("\n")  # a blank line: no record
    text = buf.getvalue()
    return text.replace(f"r{n // 2}{delim}", f"r{n // 2}{delim}", 1)


def _whole(path):
    src = Source(path, on_bad_row="skip", shard_size=10**6)
    shards = list(src.shards())
    return shards[0].table, [int(x) for s in shards for x in s.lines], src.skipped


def _by_splits(path, **opts):
    src = Source(path, on_bad_row="skip")
    splits = list(plan_splits(src, **opts))
    spec = ReadSpec(src.format, src.first_schema(), "skip")
    offsets, lines, bad, parts = {}, [], [], []
    for sp in splits:
        res, table = read_split(spec, sp)
        off = offsets.get(sp.file_index, 0) if sp.kind == "bytes" else 0
        offsets[sp.file_index] = off + res.lines_read
        lines += [x + off for x in res.lines]
        bad += [(b[0] + off, b[2]) for b in res.bad]
        parts.append((res, table))
    ids = [i for res, _ in parts for i in (o if o is not None else h[:16] for o, h in zip(res.own, res.hashes))]
    table = assemble(ids, [list(range(len(t))) for _, t in parts], tuple(t for _, t in parts))
    return splits, table, lines, bad


@pytest.mark.parametrize("rows", [1, 2, 5, 13, 1000])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", ["a.csv", "a.tsv"])
def test_csv_byte_splits_give_the_local_readers_rows_lines_and_bad_rows(tmp_path, rows, seed, name):
    delim = "\t" if name.endswith(".tsv") else ","
    text = _messy_csv(40, seed, delim)
    p = tmp_path / name
    p.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # a BOM before the header
    want_tab, want_lines, want_bad = _whole(p)
    splits, tab, lines, bad = _by_splits(p, split_rows=rows)
    assert {s.kind for s in splits} == {"bytes"} and (len(splits) > 1 or rows == 1000)
    assert [s.header for s in splits[1:]] == [("id", "instruction", "output")] * (len(splits) - 1)
    assert splits[0].header is None
    assert lines == want_lines and bad == [(b["line"], b["reason"]) for b in want_bad]
    assert tab.equals(want_tab)
    assert any("\n" in t for t in want_tab["instruction"])  # the cuts had records with line breaks to avoid
    assert want_bad and all(r == "row has more cells than the header" for _, r in bad)


@pytest.mark.parametrize("rows", [1, 3, 7])
def test_gzip_csv_blocks_through_put_match_one_pass(tmp_path, rows):
    p = tmp_path / "a.csv.gz"
    text = _messy_csv(30, 3)
    p.write_bytes(gzip.compress(text.encode("utf-8")))
    stored: list = []
    want_tab, want_lines, want_bad = _whole(p)
    splits, tab, lines, bad = _by_splits(p, split_rows=rows, put=lambda b: stored.append(b) or b)
    assert {s.kind for s in splits} == {"blob"} and len(splits) > 1
    assert b"".join(stored) == text.encode("utf-8")  # decompressed once, every byte in one block
    assert lines == want_lines and bad == [(b["line"], b["reason"]) for b in want_bad]
    assert tab.equals(want_tab)


def test_csv_blocks_cut_only_between_records(tmp_path):
    text = _messy_csv(60, 5)
    p = tmp_path / "a.csv"
    p.write_text(text, encoding="utf-8", newline="")
    data = p.read_bytes()
    records = list(csv.reader(io.StringIO(text, newline="")))
    for rows in (1, 2, 9, 100):
        blocks = list(csv_blocks(p, rows, keep=True))
        assert blocks[0][0] == 0 and blocks[0][2] == 0 and blocks[-1][3] == len(data)
        assert all(x[3] == y[2] and x[1] == y[0] for x, y in zip(blocks, blocks[1:]))  # contiguous
        assert b"".join(b[4] for b in blocks) == data
        got = [r for b in blocks for r in csv.reader(io.StringIO(b[4].decode("utf-8"), newline=""))]
        assert got == records  # each block parses on its own into whole records
    assert csv_header(p) == ("id", "instruction", "output")


def test_a_csv_error_ends_the_cutting_and_is_reported_by_the_worker(tmp_path):
    p = tmp_path / "a.csv"
    body = "".join(f"q{i},a{i}\n" for i in range(10))
    # a carriage return inside an unquoted field: a record the csv module refuses (csv.Error)
    p.write_bytes(b"instruction,output\n" + body.encode() + b"bad\rrow,x\n" + body.encode())
    blocks = list(csv_blocks(p, 2))
    assert blocks[-1][3] == p.stat().st_size and blocks[-1][2] < len(b"instruction,output\n" + body.encode()) + 1
    with pytest.raises(DataError, match="unreadable CSV record .*new-line character seen in unquoted field") as local:
        _whole(p)
    assert local.value.line == 12 and local.value.file == p
    splits = list(plan_splits(Source(p, on_bad_row="skip"), split_rows=2))
    spec = ReadSpec("csv", Source(p).first_schema(), "skip")
    off = 0
    for sp in splits:
        res, _ = read_split(spec, sp)
        if res.error is not None:
            assert isinstance(res.error, DataError) and res.error.line + off == 12
            assert sp is splits[-1]  # the cutting stopped at the refused record: the rest is one split
            break
        off += res.lines_read
    else:
        pytest.fail("no split reported the refused record")


def test_small_and_empty_csv_files(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("instruction,output\nq,a")  # no newline at the end
    splits, tab, lines, _ = _by_splits(p, split_rows=1)
    assert lines == [2] and list(tab["instruction"]) == ["q"] and len(splits) == 2
    h = tmp_path / "h.csv"
    h.write_text("instruction,output\n")
    assert [(b[0], b[1]) for b in csv_blocks(h, 1)] == [(0, 1)]
    assert list(csv_blocks(tmp_path / "h.csv", 5)) == [(0, 1, 0, 19, b"")]
    pd.testing.assert_series_equal(tab["output"], pd.Series(["a"], name="output"))


def test_fields_longer_than_pythons_default_limit_are_read(tmp_path):
    """Real texts exceed the csv module's default field limit (128 KiB): BIG-bench has such rows."""
    long = "word " * 60_000  # 300,000 characters
    p = tmp_path / "a.csv"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["instruction", "output"], ["q", "a"], [long, "b"], ["q2", "c"]])
    p.write_text(buf.getvalue(), encoding="utf-8")
    tab, lines, bad = _whole(p)
    assert list(tab["instruction"]) == ["q", long, "q2"] and lines == [2, 3, 4] and bad == []
    splits, tab2, lines2, _ = _by_splits(p, split_rows=1)
    assert len(splits) == 4 and tab2.equals(tab) and lines2 == lines
