"""Splits of the pool's files (what the Ray engine's workers read): cut without parsing, and read
split by split they give exactly the records, lines and bad rows of one pass over the whole file."""

from __future__ import annotations

import json
import random

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.io import Source
from thresher.io.formats import count_lines, line_blocks, line_boundaries, line_range
from thresher.io.splits import ReadSpec, assemble, plan_splits, read_split


def _write_lines(path, lines, end="\n", bom=False, trailing=True):
    text = end.join(lines) + (end if trailing else "")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def _rows(n, seed=0):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        word = "x" * rnd.randint(0, 40)
        out.append(json.dumps({"instruction": f"q{i} {word}", "output": f"a{i} é{word}", "id": f"r{i}"}))
    return out


@pytest.mark.parametrize("step", [1, 7, 64, 333, 10**6])
@pytest.mark.parametrize("trailing", [True, False])
def test_line_boundaries_start_lines_and_cover_the_file(tmp_path, step, trailing):
    p = _write_lines(tmp_path / "a.jsonl", _rows(40), trailing=trailing)
    data = p.read_bytes()
    cuts = line_boundaries(p, step)
    assert cuts[0] == 0 and cuts[-1] == len(data) and cuts == sorted(set(cuts))
    starts = {0} | {i + 1 for i, b in enumerate(data) if b == ord("\n")}  # oracle: every line start
    assert set(cuts[:-1]) <= starts


def _whole(path, on_bad_row="skip", **kw):
    """The local reader's rows, lines and bad rows (one pass over the whole file)."""
    src = Source(path, on_bad_row=on_bad_row, shard_size=10**6, **kw)
    shards = list(src.shards())
    tab = shards[0].table if shards else None
    return src, tab, [int(x) for s in shards for x in s.lines], src.skipped


def _by_splits(path, split_bytes=None, split_rows=None, on_bad_row="skip", put=None, **kw):
    src = Source(path, on_bad_row=on_bad_row, **kw)
    opts = {k: v for k, v in (("split_bytes", split_bytes), ("split_rows", split_rows), ("put", put)) if v is not None}
    splits = list(plan_splits(src, **opts))  # with ``put``: an iterator, stored block by block as asked for
    spec = ReadSpec(src.format, src.first_schema(), on_bad_row)
    offsets, lines, bad, parts = {}, [], [], []
    for sp in splits:
        res, *tables = read_split(spec, sp)
        c = sp.chunk_rows or len(res.own)  # the good rows in tables of c rows, the last ones possibly empty
        assert len(tables) == sp.chunks and [len(t) for t in tables] == [
            max(0, min(c, len(res.own) - k * c)) for k in range(sp.chunks)
        ]
        table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        off = offsets.get(sp.file_index, 0) if sp.kind == "bytes" else 0
        offsets[sp.file_index] = off + res.lines_read
        lines += [x + off for x in res.lines]
        bad += [(b[0] + off, b[2]) for b in res.bad]
        parts.append((res, table))
    return splits, parts, lines, bad


@pytest.mark.parametrize("split_bytes", [1, 50, 200, 1 << 20])
def test_byte_splits_give_the_whole_files_rows_lines_and_bad_rows(tmp_path, split_bytes):
    lines = _rows(60)
    lines[5] = "{not json"
    lines[17] = ""  # blank: skipped silently, still counted
    lines[33] = json.dumps({"instruction": 3, "output": "x"})  # a bad field
    lines[59] = '{"instruction": "last", "output": "no newline at the end"}'
    p = _write_lines(tmp_path / "a.jsonl", lines, end="\r\n", bom=True, trailing=False)
    _, tab, want_lines, want_bad = _whole(p)
    splits, parts, got_lines, got_bad = _by_splits(p, split_bytes=split_bytes)
    assert len(splits) > 1 or split_bytes == 1 << 20
    assert got_lines == want_lines
    assert got_bad == [(b["line"], b["reason"]) for b in want_bad]
    ids = [i for res, _ in parts for i in (o if o is not None else h[:16] for o, h in zip(res.own, res.hashes))]
    idxs = [list(range(len(t))) for _, t in parts]
    got = assemble(ids, idxs, tuple(t for _, t in parts))
    assert got.equals(tab)  # same texts, same columns, BOM dropped on line 1 only


def test_an_error_row_stops_its_split_with_the_line_in_the_split(tmp_path):
    lines = _rows(30)
    lines[21] = "{broken"
    p = _write_lines(tmp_path / "a.jsonl", lines)
    with pytest.raises(Exception) as want:
        _whole(p, on_bad_row="error")
    src = Source(p)
    spec = ReadSpec("jsonl", src.first_schema(), "error")
    off = 0
    for sp in plan_splits(src, split_bytes=100):
        res, table = read_split(spec, sp)  # a byte split: one table
        if res.error is not None:
            assert res.error.line + off == want.value.line == 22
            assert len(table) == len(res.lines) and all(x < res.error.line for x in res.lines)
            break
        off += res.lines_read
    else:
        pytest.fail("no split reported the bad row")


def test_parquet_row_group_splits_and_gzip_files(tmp_path):
    recs = [json.loads(x) for x in _rows(50)]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "p.parquet", row_group_size=7)
    splits, parts, lines, _ = _by_splits(tmp_path / "p.parquet", split_rows=10)
    assert [s.kind for s in splits] == ["rows"] * len(splits) and len(splits) == 4  # groups of 7: 14,14,14,8 rows
    assert lines == list(range(1, 51)) == _whole(tmp_path / "p.parquet")[2]
    import gzip

    d = tmp_path / "gz"
    d.mkdir()
    for j in range(3):
        with gzip.open(d / f"part{j}.jsonl.gz", "wt") as fh:
            fh.write("\n".join(_rows(5, seed=j)).replace('"r', f'"f{j}r') + "\n")
    splits, _, lines, _ = _by_splits(d, split_rows=2)
    assert [s.kind for s in splits] == ["lines"] * 9 and lines == _whole(d)[2] == [1, 2, 3, 4, 5] * 3
    splits, parts, lines, _ = _by_splits(d, split_rows=2, put=bytes)  # blocks: each file numbers its own lines
    assert [(s.kind, s.file_index, s.start, s.end) for s in splits] == [
        ("blob", f, a, min(a + 2, 5)) for f in range(3) for a in (0, 2, 4)
    ]
    assert [sp.index for sp in splits] == list(range(9)) and lines == [1, 2, 3, 4, 5] * 3
    assert [o for res, _ in parts for o in res.own] == [f"f{j}r{i}" for j in range(3) for i in range(5)]


def test_in_memory_pools_and_large_uncut_files_are_read_by_the_driver(tmp_path):
    import gzip

    assert plan_splits(Source([{"instruction": "a", "output": "b"}])) is None
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(50)]))
    assert [(s.kind, s.end - s.start) for s in plan_splits(Source(p))] == [("elements", p.stat().st_size - 1)]
    cut = plan_splits(Source(p), split_bytes=100)  # cut between its elements (tests/io/test_json_splits.py)
    assert len(cut) > 10 and {s.kind for s in cut} == {"elements"}
    pg = tmp_path / "a.json.gz"
    pg.write_bytes(gzip.compress(p.read_bytes()))
    assert [s.kind for s in plan_splits(Source(pg))] == ["file"]
    assert plan_splits(Source(pg), split_bytes=100) is None  # no object store to put its blocks in
    blocks = plan_splits(Source(pg), split_bytes=100, put=bytes)  # cut alike, the blocks put in a store
    assert [(s.start, s.end) for s in blocks] == [(s.start, s.end) for s in cut]
    g = tmp_path / "a.csv.gz"
    g.write_bytes(gzip.compress(("instruction,output\n" + "".join(f"q{i},a{i}\n" for i in range(50))).encode()))
    assert [s.kind for s in plan_splits(Source(g))] == ["file"]
    assert plan_splits(Source(g), split_bytes=100) is None  # no object store to put its blocks in
    assert {s.kind for s in plan_splits(Source(g), split_bytes=100, split_rows=7, put=bytes)} == {"blob"}


def test_first_schema_reads_one_good_record_and_keeps_no_skips(tmp_path):
    p = _write_lines(tmp_path / "a.jsonl", ["{bad", *_rows(3)])
    src = Source(p, on_bad_row="skip")
    assert src.first_schema() is not None and src.skipped == [] and src.columns == ["instruction", "output", "id"]
    with pytest.raises(Exception, match="line 1"):
        Source(p).first_schema()


@pytest.mark.parametrize("block", [1, 3, 16, 1 << 22])
@pytest.mark.parametrize("gz", [False, True])
def test_line_ranges_of_a_gzip_stream_match_plain_line_numbering(tmp_path, block, gz):
    import gzip

    body = ("\n".join(_rows(23)) + "\nlast line without newline").encode()
    p = tmp_path / ("a.jsonl.gz" if gz else "a.jsonl")
    p.write_bytes(gzip.compress(body) if gz else body)
    want = body.split(b"\n")  # oracle: the lines by plain splitting
    want = [x + b"\n" for x in want[:-1]] + [want[-1]]
    assert count_lines(p) == len(want) == 24
    for start, end in [(0, 5), (5, 6), (7, 24), (23, 24), (0, 24), (24, 24), (10, 99)]:
        got = list(line_range(p, start, end, block=block))
        assert got == [(i + 1, want[i]) for i in range(start, min(end, len(want)))]


def test_gzip_line_splits_number_bad_rows_by_the_files_line(tmp_path):
    import gzip

    lines = _rows(30)
    lines[0] = "\ufeff" + lines[0]  # a BOM on line 1 only
    lines[12] = "{oops"
    lines[25] = "\ufeff" + lines[25]  # not a BOM: inside the file, the row is malformed
    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    _, tab, want_lines, want_bad = _whole(p)
    splits, parts, got_lines, got_bad = _by_splits(p, split_rows=4)
    assert [(s.start, s.end, s.chunks) for s in splits] == [(0, 8, 2), (8, 16, 2), (16, 24, 2), (24, 30, 2)]
    assert got_lines == want_lines
    assert [len(t) for _, t in parts] == [8, 7, 8, 5]  # lines 13 and 26 are bad
    assert got_bad == [(b["line"], b["reason"]) for b in want_bad] and [b[0] for b in got_bad] == [13, 26]


@pytest.mark.parametrize("block", [1, 5, 64, 1 << 22])
@pytest.mark.parametrize("n_lines", [0, 1, 6, 7, 13])
@pytest.mark.parametrize("trailing", [True, False])
def test_line_blocks_cut_a_stream_once_into_blocks_of_lines(tmp_path, block, n_lines, trailing):
    import gzip

    body = "\n".join(_rows(n_lines)).encode() + (b"\n" if trailing and n_lines else b"")
    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(gzip.compress(body))
    want = body.split(b"\n")  # oracle: the lines by plain splitting
    want = [x + b"\n" for x in want[:-1]] + ([want[-1]] if want[-1] else [])
    got = list(line_blocks(p, 3, block=block))
    assert b"".join(d for _, _, d in got) == body
    assert [(a, b) for a, b, _ in got] == [(a, min(a + 3, len(want))) for a in range(0, len(want), 3)]
    for a, b, data in got:
        assert data == b"".join(want[a:b])
    assert (got[-1][1] if got else 0) == count_lines(p)


def test_gzip_blob_splits_decompress_once_and_match_one_pass(tmp_path, monkeypatch):
    import gzip

    import thresher.io.formats as formats

    lines = _rows(30)
    lines[0] = "\ufeff" + lines[0]  # a BOM on line 1 only
    lines[12] = "{oops"
    lines[19] = ""  # blank: skipped silently, still counted
    lines[25] = "\ufeff" + lines[25]  # not a BOM: inside the file, the row is malformed
    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(gzip.compress("\r\n".join(lines).encode("utf-8")))
    _, tab, want_lines, want_bad = _whole(p)
    opened = []
    real = formats._open_binary
    monkeypatch.setattr(formats, "_open_binary", lambda f: opened.append(f) or real(f))
    monkeypatch.setattr("thresher.io.splits.line_range", lambda *a, **k: pytest.fail("a block re-read the file"))
    stored = []
    splits, parts, got_lines, got_bad = _by_splits(p, split_rows=4, put=lambda b: stored.append(b) or b)
    assert len(opened) == 2  # the schema's first record, then one planning pass; reading opens nothing
    assert [(s.kind, s.start, s.end) for s in splits] == [("blob", a, min(a + 4, 30)) for a in range(0, 30, 4)]
    assert b"".join(stored) == gzip.decompress(p.read_bytes())
    assert got_lines == want_lines
    assert got_bad == [(b["line"], b["reason"]) for b in want_bad] and [b[0] for b in got_bad] == [13, 26]
    assert all(res.split.blob is None for res, _ in parts)  # no bytes travel back with the rows' metadata
    ids = [i for res, _ in parts for i in (o if o is not None else h[:16] for o, h in zip(res.own, res.hashes))]
    got = assemble(ids, [list(range(len(t))) for _, t in parts], tuple(t for _, t in parts))
    assert got.equals(tab)
    stored.clear()
    lazy = plan_splits(Source(p, on_bad_row="skip"), split_rows=4, put=lambda b: stored.append(b) or b)
    assert stored == [] and next(iter(lazy)).end == 4 and len(stored) == 1  # a block is stored when asked for


def test_an_unresolved_blob_is_a_clear_error(tmp_path):
    import gzip

    p = tmp_path / "a.jsonl.gz"
    p.write_bytes(gzip.compress("\n".join(_rows(3)).encode()))
    src = Source(p)
    (sp,) = plan_splits(src, put=lambda b: object())
    with pytest.raises(TypeError, match="not resolved"):
        read_split(ReadSpec("jsonl", src.first_schema()), sp)
