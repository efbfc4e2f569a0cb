"""JSON array files cut between their top-level elements (one vectorised scan, nothing parsed) and
read split by split on workers give exactly the local reader's rows, lines, bad rows and errors; a
file the scan cannot vouch for is left to the driver (or to one worker, whole)."""

from __future__ import annotations

import gzip
import json
import random

import pandas as pd
import pytest

from thresher.errors import InputError
from thresher.io import Source
from thresher.io.formats import byte_ranges, json_array_cuts
from thresher.io.splits import ReadSpec, assemble, plan_splits, read_split

BOM = "\ufeff"
TEXTS = [
    'say "hi"',
    "a\\",  # a string ending in a backslash: "a\\"
    '\\"',  # "\\\"": backslash, quote
    "\\\\\\",  # three backslashes
    "[x] {y}, z]",
    "}, {",
    '"], ["',
    "é ü 日本語 ✓",
    "multi\nline\r\ntext",
    "tab\there, comma, and ] bracket",
]


def _element(i: int, rnd: random.Random) -> str:
    rec = {"id": f"r{i}", "instruction": f"{rnd.choice(TEXTS)} {i}", "output": f"{rnd.choice(TEXTS)} o{i}"}
    if rnd.random() < 0.3:
        rec["meta"] = {"tags": ["a", {"b": [1, -2.5e3, None, True]}], "s": "]}", "e": {}, "l": []}
    indent = 2 if rnd.random() < 0.2 else None  # an element over many lines
    return json.dumps(rec, ensure_ascii=rnd.random() < 0.5, indent=indent)


SEPS = [",", ",\n", " ,\r\n  ", ",,", "\n,\n", " \t, ", "\n", ", ,\n,", ",\n\n\n"]
BAD = [
    '{"instruction": tru, "output": "x"}',  # malformed, brackets balanced
    '{"instruction": "a" "output": "b"}',
    '{"instruction": "a",\n "output": [1, 2}]',  # mismatched brackets that still balance
    '{"instruction": 3.5}',  # a bad field (no output)
    '"a string, not an object"',
    '[{"instruction": "nested", "output": "list"}]',
    '{"instruction": "raw\tcontrol character", "output": "x"}',
    '{"instruction": "bad \\x escape", "output": "x"}',
]


def _messy_array(n: int, seed: int, layout: str, bad: bool = True) -> str:
    """A JSON array of ``n`` elements: escaped quotes, runs of backslashes, brackets and commas in
    strings, nested values, elements over many lines, varied separators (doubled and missing commas),
    a few malformed or bad elements, whitespace before ``[`` and garbage after ``]``."""
    rnd = random.Random(seed)
    parts = [_element(i, rnd) for i in range(n)]
    if bad:
        for j, b in enumerate(rnd.sample(BAD, 3)):
            parts.insert(n // 4 * (j + 1), b)
    if layout == "one_line":
        body = ", ".join(p.replace("\n", " ") if not p.startswith('{"instruction": "a",') else p for p in parts)
    else:
        body = "".join(p + rnd.choice(SEPS) for p in parts[:-1]) + parts[-1]
    after = rnd.choice(["", "\n", " trailing ] } [ junk\n"])
    text = " \n [" + ("\n" if layout != "one_line" else "") + body + " \n]" + after
    if layout == "crlf":
        text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    return (BOM if seed % 2 else "") + text


def _local(path, on_bad_row: str = "skip") -> dict:
    """One pass of the local reader: rows (ids, texts, lines), bad rows, or the error it stops with."""
    src = Source(path, on_bad_row=on_bad_row, shard_size=1)
    shards, err = [], None
    try:
        shards.extend(src.shards())
    except InputError as exc:
        err = exc
    if err is not None:
        return {"error": (type(err), err.reason, err.file, err.line)}
    table = pd.concat([s.table for s in shards], ignore_index=True)
    lines = [int(x) for s in shards for x in s.lines]
    return {"table": table, "lines": lines, "bad": [(b["line"], b["field"], b["reason"]) for b in src.skipped]}


def _split_read(path, on_bad_row: str = "skip", **opts) -> dict:
    """The splits read one by one, as the driver puts them together (ids as the local reader gives
    them when no id repeats); None when the file is not cut."""
    src = Source(path, on_bad_row=on_bad_row)
    splits = plan_splits(src, **opts)
    if splits is None:
        return {"splits": None}
    splits = list(splits)
    spec = ReadSpec(src.format, src.first_schema(), on_bad_row)
    lines, bad, parts = [], [], []
    for sp in splits:
        res, table = read_split(spec, sp)
        assert res.split.blob is None
        lines += res.lines
        bad += [b[:3] for b in res.bad]
        parts.append((res, table))
        if res.error is not None:
            e = res.error
            return {"splits": splits, "error": (type(e), e.reason, e.file, e.line)}
    ids = [o if o is not None else h[:16] for res, _ in parts for o, h in zip(res.own, res.hashes)]
    table = assemble(ids, [list(range(len(t))) for _, t in parts], tuple(t for _, t in parts))
    return {"splits": splits, "table": table, "lines": lines, "bad": bad}


def _same(got: dict, want: dict) -> None:
    assert got["splits"] is not None
    if "error" in want or "error" in got:
        assert got.get("error") == want.get("error")
        return
    assert got["lines"] == want["lines"] and got["bad"] == want["bad"]
    pd.testing.assert_frame_equal(got["table"], want["table"])


@pytest.mark.parametrize("step", [1, 2, 5, 13, None])
@pytest.mark.parametrize("layout", ["lines", "one_line", "crlf"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cut_arrays_give_the_local_readers_rows_lines_and_bad_rows(tmp_path, step, layout, seed):
    p = tmp_path / "a.json"
    p.write_text(_messy_array(40, seed, layout), encoding="utf-8", newline="")
    want = _local(p)
    assert len(want["bad"]) >= 3 and len(want["lines"]) >= 40  # the bad elements, and rows after them
    got = _split_read(p, split_bytes=step, split_rows=7)
    assert {s.kind for s in got["splits"]} == {"elements"}
    assert len(got["splits"]) > (30 if step else 5)  # a cut after (nearly) every element, or every 7th
    _same(got, want)
    err = _split_read(p, on_bad_row="error", split_bytes=step, split_rows=7)
    assert err["error"][0].__name__ == "DataError"
    _same(err, _local(p, on_bad_row="error"))  # the same first error, message and line


def _oracle_cuts(data: bytes) -> tuple[int, list[int], int]:
    """The opening bracket, the top-level commas and the closing bracket, found byte by byte as
    ``_value_end`` walks a value (the sequential rule)."""
    i = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    while data[i : i + 1] in (b" ", b"\t", b"\r", b"\n"):
        i += 1
    assert data[i : i + 1] == b"["
    depth, in_str, esc, commas = 1, False, False, []
    for j in range(i + 1, len(data)):
        ch = data[j : j + 1]
        if in_str:
            esc, in_str = (False, in_str) if esc else (ch == b"\\", ch != b'"')
        elif ch == b'"':
            in_str = True
        elif ch in (b"[", b"{"):
            depth += 1
        elif ch in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                return i, commas, j
        elif ch == b"," and depth == 1:
            commas.append(j)
    raise AssertionError("no closing bracket")


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 22])
@pytest.mark.parametrize("gz", [False, True])
def test_json_array_cuts_match_a_sequential_walk_at_any_block_size(tmp_path, block, gz):
    data = _messy_array(30, 3, "lines").encode("utf-8")
    p = tmp_path / ("a.json.gz" if gz else "a.json")
    p.write_bytes(gzip.compress(data) if gz else data)
    opening, commas, close = _oracle_cuts(data)
    starts = [opening + 1] + [c + 1 for c in commas]
    want = [(a, b, data.count(b"\n", 0, a)) for a, b in zip(starts, starts[1:] + [close + 1])]
    assert json_array_cuts(p, 1, block=block) == want  # a cut after every top-level comma
    by3 = json_array_cuts(p, 3, block=block)
    assert [b for _, b, _ in by3] == [c + 1 for c in commas[2::3]] + [close + 1]
    by_bytes = json_array_cuts(p, 1, step=200, block=block)
    ends = [b for _, b, _ in by_bytes]
    assert all(y - x >= 200 for x, y in zip([opening + 1] + ends, ends[:-1]))  # each at the first comma 200 bytes on
    assert set(ends[:-1]) <= {c + 1 for c in commas} and ends[-1] == close + 1


@pytest.mark.parametrize(
    "text, why",
    [
        ('[{"instruction": "a", "output": "b"}, \\ {"instruction": "c", "output": "d"}]', "backslash at the top"),
        ('[{"instruction": "a", "output": "b" \\ }, {"instruction": "c", "output": "d"}]', "backslash in an object"),
        ('[{"instruction": "a", "output": "b"}}, {"instruction": "c", "output": "d"}]', "a '}' closes the array"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d}]\n', "unterminated string"),
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}\n', "unterminated array"),
        ('{"instruction": "a", "output": "b"}\n', "an object, not an array"),
        ('x[{"instruction": "a", "output": "b"}]', "garbage before '['"),
        ('[{"instruction": "a", "output": "b"}, 12, {"instruction": "c", "output": "d"}]', "a top-level number"),
        ('[{"instruction": "a", "output": "b"}, true, {"instruction": "c", "output": "d"}]', "a top-level literal"),
        ('[{"instruction": "a", "output": "b"} x, {"instruction": "c", "output": "d"}]', "garbage at the top"),
        ("\n \n", "no array"),
    ],
)
def test_what_the_scan_cannot_vouch_for_is_left_to_the_driver(tmp_path, text, why):
    """Even a small file: read whole on a worker, it could stop at an earlier bad row than the local
    reader, which raises a fatal error found in the same batch of rows first."""
    p = tmp_path / "a.json"
    p.write_text(text, encoding="utf-8")
    assert [json_array_cuts(p, 1, block=b) for b in (1, 2, 5, 1 << 22)] == [None] * 4, why
    assert plan_splits(Source(p)) is None and plan_splits(Source(p), put=bytes) is None
    g = tmp_path / "a.json.gz"
    g.write_bytes(gzip.compress(text.encode()))
    assert plan_splits(Source(g), put=bytes) is None
    assert [s.kind for s in plan_splits(Source(g))] == ["file"]  # small, gzipped, no put: not scanned, as before


def test_the_local_readers_errors_are_unchanged(tmp_path):
    """The messages and lines of the fatal errors (the element walk is shared with the workers)."""
    cases = {
        '[\n{"instruction": "a", "output": "b"},\n{"instruction": "c"\n': (
            "malformed JSON in the record starting here (Expecting ',' delimiter at line 4)",
            3,
        ),
        '[\n{"instruction": "a", "output": "b"}\n': ("unterminated JSON array (missing ']')", 3),
        '\n{"instruction": "a"}': ("expected a JSON array of objects ('[' ...), or use a .jsonl file", 2),
        '[{"instruction": "a", "output": "b"}},\n{"instruction": "c", "output": "d"}]': (
            "malformed JSON in the record starting here (Expecting value at line 1)",
            1,
        ),
    }
    for i, (text, (reason, line)) in enumerate(cases.items()):
        p = tmp_path / f"e{i}.json"
        p.write_text(text, encoding="utf-8")
        assert _local(p)["error"][1:] == (reason, p, line), text


def test_invalid_utf8_is_left_to_the_local_reader(tmp_path):
    p = tmp_path / "a.json"
    good = '{"instruction": "a", "output": "b"}'
    p.write_bytes(f"[\n{good},\n{good},\n".encode() + b'{"instruction": "\xff", "output": "x"}\n]')
    assert json_array_cuts(p, 1) is None and plan_splits(Source(p), split_bytes=1) is None
    assert _local(p)["error"][1:] == ("not valid UTF-8 text (invalid start byte); re-encode the file as UTF-8", p, 4)


@pytest.mark.parametrize("text", ["[]", " [ \n ] \n", "[ , ,\n, ]", "[\n\n]trailing"])
def test_empty_arrays_and_whitespace_elements(tmp_path, text):
    p = tmp_path / "a.json"
    p.write_text(text, encoding="utf-8")
    cuts = json_array_cuts(p, 1)
    assert cuts is not None and cuts[-1][1] == text.rindex("]") + 1
    spec = ReadSpec("json", Source([{"instruction": "a", "output": "b"}]).first_schema())
    for sp in plan_splits(Source(p), split_bytes=1):
        res, table = read_split(spec, sp)
        assert (res.records, res.error, len(table)) == (0, None, 0)
    with pytest.raises(InputError, match="empty file: no records"):
        list(Source(p).shards())


@pytest.mark.parametrize("step", [1, 13, None])
def test_gzipped_arrays_are_cut_into_blocks_through_put(tmp_path, step, monkeypatch):
    text = _messy_array(40, 1, "lines")
    data = text.encode("utf-8")
    p = tmp_path / "a.json.gz"
    p.write_bytes(gzip.compress(data))
    want = _local(p)
    stored: list = []
    got = _split_read(p, split_bytes=step, split_rows=5, put=lambda b: stored.append(b) or b)
    assert {s.kind for s in got["splits"]} == {"elements"} and len(got["splits"]) > 5
    opening, _, close = _oracle_cuts(data)
    assert b"".join(stored) == data[opening + 1 : close + 1]  # every element's bytes in one block, once
    _same(got, want)
    monkeypatch.setattr("thresher.io.splits.byte_range", lambda *a: pytest.fail("a gzip block re-read the file"))
    _same(_split_read(p, on_bad_row="error", split_rows=5, put=bytes), _local(p, on_bad_row="error"))


def test_gzipped_arrays_without_put_are_read_whole_or_by_the_driver(tmp_path):
    p = tmp_path / "a.json.gz"
    p.write_bytes(gzip.compress(_messy_array(20, 0, "lines").encode("utf-8")))
    assert [s.kind for s in plan_splits(Source(p), split_rows=3)] == ["file"]  # small: one split, whole
    assert plan_splits(Source(p), split_bytes=100, split_rows=3) is None  # large: no object store to put blocks in
    _same(_split_read(p, split_rows=3), _local(p))


def test_planning_parses_nothing(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    p.write_text(_messy_array(30, 2, "lines"), encoding="utf-8")
    g = tmp_path / "g.json.gz"
    g.write_bytes(gzip.compress(p.read_bytes()))
    src, gsrc = Source(p, on_bad_row="skip"), Source(g, on_bad_row="skip")

    def no(*a, **k):
        raise AssertionError("the planner parsed JSON")

    with monkeypatch.context() as m:
        for target in ("json.loads", "json.JSONDecoder.raw_decode", "json.JSONDecoder.decode"):
            m.setattr(target, no)
        splits = list(plan_splits(src, split_bytes=7))
        blocks = list(plan_splits(gsrc, split_rows=4, put=bytes))
    assert len(splits) > 20 and len(blocks) > 5
    spec = ReadSpec("json", src.first_schema(), "skip")
    assert sum(read_split(spec, sp)[0].records for sp in splits) == sum(
        read_split(spec, sp)[0].records for sp in blocks
    )


def test_random_edits_are_cut_only_when_the_splits_read_as_the_file(tmp_path):
    """Random bytes inserted or deleted (brackets, quotes, backslashes, commas...): every array the
    planner still cuts reads split by split as one pass of the local reader, errors included."""
    base = _messy_array(12, 4, "lines")
    first = base.index('"r1"')  # the first record stays good: it fixes the schema (a bad one would read
    # differently: the local reader cannot detect a schema from it, the workers have one)
    rnd = random.Random(7)
    cut = whole = 0
    for trial in range(150):
        text = list(base)
        for _ in range(rnd.randint(1, 3)):
            at = rnd.randrange(first, len(text))
            if rnd.random() < 0.5:
                text.insert(at, rnd.choice('[]{}",\\:x1- \n'))
            else:
                del text[at]
        p = tmp_path / f"t{trial}.json"
        p.write_text("".join(text), encoding="utf-8", newline="")
        assert json_array_cuts(p, 2, block=rnd.choice([1, 2, 5])) == json_array_cuts(p, 2)  # at any block size
        for mode in ("skip", "error"):
            try:
                schema = Source(p, on_bad_row=mode).first_schema()
            except InputError:
                schema = None
            if schema is None:
                continue
            got = _split_read(p, on_bad_row=mode, split_bytes=rnd.choice([1, 3, 50]), split_rows=2)
            if got["splits"] is None:
                whole += 1
                continue
            cut += 1
            _same(got, _local(p, on_bad_row=mode))
    assert cut > 50 and whole > 20  # both ways were taken


@pytest.mark.parametrize("block", [1, 4, 1 << 22])
@pytest.mark.parametrize("gz", [False, True])
def test_byte_ranges_stream_consecutive_ranges(tmp_path, block, gz):
    data = bytes(range(256)) * 3
    p = tmp_path / ("a.bin.gz" if gz else "a.bin")
    p.write_bytes(gzip.compress(data) if gz else data)
    bounds = [5, 6, 100, 101, 500, len(data)]
    assert list(byte_ranges(p, bounds, block=block)) == [data[a:b] for a, b in zip(bounds, bounds[1:])]
    with pytest.raises(InputError, match="ended at byte 768"):
        list(byte_ranges(p, [0, 10, len(data) + 1], block=block))


@pytest.mark.parametrize("layout", ["lines", "one_line"])  # one_line: rows that share a line, bad among good
def test_the_driver_puts_the_splits_together_as_the_local_reader_does(tmp_path, layout):
    """Ids, repeated ids, bad rows and shards from the splits' results, through the driver's own
    code (:func:`thresher.pipeline.reading._shards`, no engine), against one local pass."""
    from types import SimpleNamespace

    from thresher.pipeline.reading import _shards

    text = _messy_array(40, 5, layout).replace('"id": "r30"', '"id": "r12"')  # a repeated id
    p = tmp_path / "a.json"
    p.write_text(text, encoding="utf-8")
    local = Source(p, on_bad_row="skip", shard_size=7)
    want = list(local.shards())
    src = Source(p, on_bad_row="skip", shard_size=7)
    spec = ReadSpec("json", src.first_schema(), "skip")
    results = ((res, tables) for res, *tables in (read_split(spec, sp) for sp in plan_splits(src, split_rows=15)))
    got = list(_shards(SimpleNamespace(source=src), spec, results))
    assert [list(s.ids) for s in got] == [list(s.table["id"]) for s in want]
    assert [s.lines.tolist() for s in got] == [s.lines.tolist() for s in want]
    assert any("duplicate id" in b["reason"] for b in local.skipped) and len(local.skipped) >= 4
    assert src.skipped == local.skipped
