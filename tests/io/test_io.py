"""Readers, schema detection, ids, bad input and writers (thresher.io)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thresher.io import DataError, Source, content_hash, open_dataset, read_samples
from thresher.io.writers import write_selected


@pytest.fixture(scope="module")
def real_rows(bigbench_path) -> list[dict]:
    rows = []
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == 60:
                break
    return rows


def write_jsonl(path: Path, rows, raw_lines=()):
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in raw_lines:
            fh.write(line + "\n")
    return path


def test_alpaca_jsonl_real_rows_shards_and_ids(tmp_path, real_rows):
    p = write_jsonl(tmp_path / "pool.jsonl", real_rows)
    src = open_dataset(p, shard_size=25)
    shards = list(src.shards())
    assert [len(s) for s in shards] == [25, 25, 10]
    assert [s.start for s in shards] == [0, 25, 50]
    assert src.schema.kind == "alpaca" and src.schema.group == "task"
    df = pd.concat([s.table for s in shards], ignore_index=True)
    assert df["id"].tolist() == [r["id"] for r in real_rows]
    assert df["instruction"].tolist() == [r["instruction"] for r in real_rows]
    assert df["group"].tolist() == [r["task"] for r in real_rows]
    assert (df["input"] == "").all()
    assert src.columns == list(real_rows[0])
    # the shard key depends on content: same file, same keys; one changed answer, one changed key
    keys = [s.key for s in shards]
    assert keys == [s.key for s in open_dataset(p, shard_size=25).shards()]
    rows2 = [dict(r) for r in real_rows]
    rows2[30]["output"] += " (changed)"
    p2 = write_jsonl(tmp_path / "pool2.jsonl", rows2)
    keys2 = [s.key for s in open_dataset(p2, shard_size=25).shards()]
    assert keys2[0] == keys[0] and keys2[2] == keys[2] and keys2[1] != keys[1]


def test_content_hash_ids_stable_and_deduplicated(tmp_path):
    rows = [
        {"instruction": "Add 2 and 2", "output": "4"},
        {"instruction": "Name a colour", "output": "red"},
        {"instruction": "Add 2 and 2", "output": "4"},
    ]
    p = write_jsonl(tmp_path / "a.jsonl", rows)
    df = read_samples(p)
    h = content_hash({"instruction": "Add 2 and 2", "input": "", "output": "4"})[:16]
    assert df["id"].tolist()[0] == h and df["id"].tolist()[2] == h + "-2"
    assert df["id"].nunique() == 3
    # independent of file position and of unrelated rows
    p2 = write_jsonl(tmp_path / "b.jsonl", rows[1:2] + rows[:1])
    assert read_samples(p2)["id"].tolist() == [df["id"][1], h]


def test_sharegpt_openai_prompt_and_mapping(tmp_path):
    share = [
        {
            "id": "s1",
            "conversations": [
                {"from": "system", "value": "be brief"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": "2+2?"},
                {"from": "gpt", "value": "4"},
            ],
        }
    ]
    df = read_samples(write_jsonl(tmp_path / "share.jsonl", share))
    assert df["instruction"][0] == "2+2?" and df["output"][0] == "4"
    assert [t["role"] for t in df["conversation"][0]] == ["system", "user", "assistant", "user", "assistant"]
    openai = [{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}]
    src = open_dataset(write_jsonl(tmp_path / "oa.jsonl", openai))
    df = src.read_all()
    assert src.schema.kind == "openai" and df["output"][0] == "A." and df["conversation"][0][0]["content"] == "Q?"
    pr = [{"prompt": "P", "completion": "C"}]
    df = read_samples(write_jsonl(tmp_path / "pr.jsonl", pr))
    assert (df["instruction"][0], df["output"][0]) == ("P", "C")
    custom = [{"uid": 7, "question": "Why?", "answer": "Because.", "ctx": "x", "topic": "t"}]
    src = open_dataset(
        write_jsonl(tmp_path / "c.jsonl", custom),
        fields={"instruction": "question", "output": "answer", "input": "ctx", "id": "uid", "group": "topic"},
    )
    df = src.read_all()
    assert df.iloc[0][["id", "instruction", "input", "output", "group"]].tolist() == ["7", "Why?", "x", "Because.", "t"]
    with pytest.raises(DataError, match="cannot detect the schema"):
        read_samples(write_jsonl(tmp_path / "u.jsonl", custom))
    with pytest.raises(ValueError, match="fields: unknown target"):
        read_samples(write_jsonl(tmp_path / "u2.jsonl", custom), fields={"question": "instruction"})


def test_json_array_streaming_with_line_numbers(tmp_path, real_rows, monkeypatch):
    p = tmp_path / "pool.json"
    p.write_text(
        "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in real_rows[:20]) + "\n]\n", encoding="utf-8"
    )
    from thresher.io import readers

    orig = readers._iter_json_array
    monkeypatch.setattr(readers, "_iter_json_array", lambda path: orig(path, chunk=7))  # force many refills
    df = read_samples(p)
    assert df["id"].tolist() == [r["id"] for r in real_rows[:20]]
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "c", "output": \n]\n')
    with pytest.raises(DataError, match=r"bad.json, line 3: malformed JSON"):
        read_samples(bad)
    notarr = tmp_path / "obj.json"
    notarr.write_text('{"instruction": "a"}')
    with pytest.raises(DataError, match="expected a JSON array"):
        read_samples(notarr)


def test_parquet_csv_and_gzip(tmp_path, real_rows):
    df0 = pd.DataFrame(real_rows[:30])
    df0.to_parquet(tmp_path / "p.parquet")
    a = read_samples(tmp_path / "p.parquet", shard_size=7)
    assert a["id"].tolist() == df0["id"].tolist()
    rows = [
        {"instruction": "line one\nline two, with comma", "output": "ok", "id": "x1"},
        {"instruction": "second", "output": "fine", "id": "x2"},
    ]
    pd.DataFrame(rows)[["id", "instruction", "output"]].to_csv(tmp_path / "c.csv", index=False)
    c = read_samples(tmp_path / "c.csv")
    assert c["instruction"].tolist() == [rows[0]["instruction"], "second"]
    with gzip.open(tmp_path / "g.jsonl.gz", "wt", encoding="utf-8") as fh:
        for r in real_rows[:5]:
            fh.write(json.dumps(r) + "\n")
    assert read_samples(tmp_path / "g.jsonl.gz")["id"].tolist() == [r["id"] for r in real_rows[:5]]


def test_hf_dataset(tmp_path, real_rows):
    datasets = pytest.importorskip("datasets", reason="saved HF datasets need `pip install datasets`")
    ds = datasets.Dataset.from_list(real_rows[:12])
    ds.save_to_disk(str(tmp_path / "hf"))
    src = open_dataset(tmp_path / "hf", shard_size=5)
    assert src.format == "hf"
    df = src.read_all()
    assert df["id"].tolist() == [r["id"] for r in real_rows[:12]]
    out = write_selected(src, np.arange(1, 13), np.zeros(12, np.int64), [0, 5, 11], tmp_path / "o")
    sel = datasets.load_from_disk(str(out))
    assert sel["id"] == [real_rows[i]["id"] for i in (0, 5, 11)]
    assert sel.column_names == list(real_rows[0])


def test_bad_rows_error_and_skip(tmp_path, real_rows):
    good = real_rows[:3]
    p = write_jsonl(
        tmp_path / "bad.jsonl",
        good,
        raw_lines=[
            '{"instruction": "x", "output": ',  # line 4: malformed
            '{"instruction": "y"}',  # line 5: missing output
            '{"instruction": ["not", "a", "string"], "output": "z"}',  # line 6: wrong type
            '"just a string"',
        ],
    )  # line 7: not an object
    with pytest.raises(DataError) as e:
        read_samples(p)
    assert "bad.jsonl, line 4: malformed JSON" in str(e.value)
    src = open_dataset(p, on_bad_row="skip")
    df = src.read_all()
    assert len(df) == 3
    assert [(s["line"], s["field"]) for s in src.skipped] == [(4, None), (5, "output"), (6, "instruction"), (7, None)]
    assert "expected a string, got list" in src.skipped[2]["reason"]
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty file"):
        read_samples(tmp_path / "empty.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty file"):
        read_samples(tmp_path / "blank.jsonl")
    dup = write_jsonl(tmp_path / "dup.jsonl", [good[0], good[0]])
    with pytest.raises(DataError, match=r"line 2, field 'id': duplicate id"):
        read_samples(dup)
    with pytest.raises(FileNotFoundError):
        read_samples(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="on_bad_row"):
        open_dataset(p, on_bad_row="ignore")


def test_a_missing_value_says_whether_the_field_is_absent_or_null(tmp_path):
    """The row's field named, and what is wrong with it: not there, or null (a table's empty cell too)."""
    p = tmp_path / "rows.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n{"instruction": "d", "output": null}\n'
                 '{"messages": null}\n')  # fmt: skip
    src = open_dataset(p, on_bad_row="skip")
    src.read_all()
    assert [(s["line"], s["field"], s["reason"]) for s in src.skipped] == [
        (2, "output", "missing field"),
        (3, "output", "missing field (null)"),
        (4, "instruction", "missing field"),  # (the file's schema: instruction/output)
    ]
    with pytest.raises(DataError, match=r"line 2, field 'output': missing field \(null\)"):
        read_samples(pd.DataFrame({"instruction": ["a", "b"], "output": ["x", np.nan]}))


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "csv", "parquet"])
def test_write_selected_keeps_format_and_field_order(tmp_path, real_rows, fmt):
    rows = [
        {"task": r["task"], "output": r["output"], "id": r["id"], "instruction": r["instruction"]}
        for r in real_rows[:20]
    ]  # an unusual field order
    p = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":
        write_jsonl(p, rows)
    elif fmt == "jsonl.gz":
        with gzip.open(p, "wt", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    elif fmt == "json":
        p.write_text(json.dumps(rows, indent=1))
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(p, index=False)
    else:
        pd.DataFrame(rows).to_parquet(p)
    src = open_dataset(p, shard_size=8)
    lines, files = [], []
    for s in src.shards():
        lines.append(s.lines)
        files.extend(s.files)
    pick = [17, 2, 9]
    out = write_selected(src, np.concatenate(lines), np.asarray(files), pick, tmp_path / "out")
    assert out.name == "selected." + fmt
    back = open_dataset(out).read_all()
    assert back["id"].tolist() == [rows[i]["id"] for i in sorted(pick)]  # input order
    src2 = open_dataset(out)
    list(src2.shards())
    assert src2.columns == list(rows[0])
    if fmt == "jsonl":  # verbatim lines
        text = out.read_text(encoding="utf-8").rstrip("\n").split("\n")
        assert text == [json.dumps(rows[i], ensure_ascii=False) for i in sorted(pick)]


def test_bad_records_before_the_first_good_one_keep_their_reasons_on_every_pass(tmp_path):
    """A later pass (streaming selection re-reads the pool) knows the schema already; records before the
    first good one are still checked by detection, so every pass and ``first_schema`` agree."""
    rows = [{"instruction": None, "output": "a"}, {"text": "t"}] + [
        {"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)
    ] + [{"instruction": None, "output": "b"}]  # fmt: skip
    p = tmp_path / "pool.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    src = Source(p, on_bad_row="skip")
    passes = []
    for _ in range(2):
        list(src.shards())
        passes.append([(b["line"], b["field"], b["reason"]) for b in src.skipped])
    assert passes[0] == passes[1] and [b[0] for b in passes[0]] == [1, 2, 8]
    assert passes[0][0][2].startswith("cannot detect the schema") and not passes[0][2][2].startswith("cannot")
    fresh = Source(p, on_bad_row="skip")
    fresh.first_schema()
    assert fresh.first_good == (0, 3)
    assert [(b["line"], b["field"], b["reason"]) for b in fresh.pre_schema] == passes[0][:2]
