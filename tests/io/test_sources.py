"""Data sources (fsspec URLs, saved DatasetDicts with splits, load_dataset folders, in-memory
tables), columnar batch reads, per-row schema detection and every chat role."""

from __future__ import annotations

import gc
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thresher.errors import InputError, OptionError
from thresher.io import DataError, Source, read_samples
from thresher.io import readers as readers_mod
from thresher.io.writers import write_selected

datasets = pytest.importorskip("datasets", reason="HF sources need `pip install datasets`")
fsspec = pytest.importorskip("fsspec")


@pytest.fixture(scope="module")
def real_rows(bigbench_path) -> list[dict]:
    rows = []
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == 40:
                break
    return rows


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def sample_cols(df: pd.DataFrame) -> list:
    cols = ["id", "instruction", "input", "output"] + [c for c in ("group",) if c in df.columns]
    return df[cols].values.tolist()


CHAT = {
    "id": "chat-1",
    "messages": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "It is 18C"}, {"type": "text", "text": "and sunny."}],
        },
    ],
}


# ------------------------------------------------------------------ URLs
def test_memory_and_file_urls_read_like_local_files(tmp_path, real_rows):
    local = write_jsonl(tmp_path / "pool.jsonl", real_rows)
    want = sample_cols(read_samples(local))
    fs = fsspec.filesystem("memory")
    fs.pipe("/h8pool/a.jsonl", local.read_bytes())
    fs.pipe("/h8pool/sub/b.jsonl", b'{"id": "extra", "instruction": "one more", "output": "row"}\n')
    try:
        src = Source("memory://h8pool/a.jsonl", shard_size=7)
        assert sample_cols(src.read_all()) == want
        fetched = src.files[0]
        assert fetched.exists() and fetched.read_bytes() == local.read_bytes()
        assert src.checksum() == Source(local).checksum()
        # a folder URL: every data file in it, in path order (a.jsonl, then sub/b.jsonl)
        folder = read_samples("memory://h8pool")
        assert folder["id"].tolist() == [r["id"] for r in real_rows] + ["extra"]
        del src
        gc.collect()
        assert not fetched.exists()  # the private copy goes with its Source
    finally:
        fs.rm("/h8pool", recursive=True)
    url = "file://" + str(local.resolve())
    src = Source(url)
    assert src.files == [local.resolve()] and sample_cols(src.read_all()) == want
    with pytest.raises(FileNotFoundError):
        Source("memory://h8-no-such/x.jsonl")
    with pytest.raises(FileNotFoundError):
        Source("file://" + str(tmp_path / "missing.jsonl"))


# ------------------------------------------------------------------ HF datasets
@pytest.fixture()
def dataset_dict(tmp_path, real_rows) -> tuple[Path, dict]:
    parts = {"train": real_rows[:25], "test": real_rows[25:33], "validation": real_rows[33:]}
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in parts.items()})
    dd.save_to_disk(str(tmp_path / "dd"))
    return tmp_path / "dd", parts


def test_saved_dataset_dict_with_split(tmp_path, dataset_dict):
    path, parts = dataset_dict
    for name, rows in parts.items():
        src = Source(path, split=name, shard_size=4)
        df = src.read_all()
        assert src.format == "hf" and df["id"].tolist() == [r["id"] for r in rows]
        assert df["output"].tolist() == [r["output"] for r in rows]
        assert src.estimate_rows() == len(rows)
    with pytest.raises(InputError, match=r"splits \['train', 'test', 'validation'\]; pass split=NAME"):
        Source(path)
    with pytest.raises(OptionError, match="'dev' is not a split"):
        Source(path, split="dev")
    with pytest.raises(OptionError, match="split: .* not a saved DatasetDict"):
        Source(path / "train", split="train")  # a single saved Dataset
    one_file = tmp_path / "rows.jsonl"
    one_file.write_text('{"instruction": "a", "output": "b"}\n')
    with pytest.raises(OptionError, match=r"split: .*rows.jsonl is one file, not a dataset with splits; drop"):
        Source(one_file, split="train")  # before: load_dataset('rows.jsonl') on the hub, half a minute of retries
    # the writers copy the selected rows of that split (the split's folder is the source's path)
    src = Source(path, split="test")
    out = write_selected(src, np.arange(1, 9), np.zeros(8, np.int64), [1, 6], tmp_path / "o")
    assert datasets.load_from_disk(str(out))["id"] == [parts["test"][1]["id"], parts["test"][6]["id"]]
    one = datasets.DatasetDict({"train": datasets.Dataset.from_list(parts["test"])})
    one.save_to_disk(str(tmp_path / "one"))
    assert read_samples(tmp_path / "one")["id"].tolist() == [r["id"] for r in parts["test"]]


def test_load_dataset_folder_split_and_streaming(tmp_path, real_rows):
    folder = tmp_path / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", real_rows[:30])
    write_jsonl(folder / "test.jsonl", real_rows[30:])
    for streaming in (False, True):
        src = Source(folder, split="test", streaming=streaming, shard_size=3)
        assert src.format == "hf"
        assert sample_cols(src.read_all()) == sample_cols(read_samples(folder / "test.jsonl"))
        assert src.estimate_rows() == (None if streaming else 10)
    with pytest.raises(InputError, match=r"splits: load_dataset\('.*splits'\) failed: Unknown split \"dev\""):
        Source(folder, split="dev")
    # HF objects in memory: Dataset, IterableDataset, DatasetDict with split
    ds = datasets.load_dataset("json", data_files=str(folder / "train.jsonl"))
    assert read_samples(ds, split="train")["id"].tolist() == [r["id"] for r in real_rows[:30]]
    assert read_samples(ds["train"].to_iterable_dataset())["id"].tolist() == [r["id"] for r in real_rows[:30]]


# ------------------------------------------------------------------ columnar reads
def test_parquet_columnar_matches_jsonl_and_uses_the_fast_path(tmp_path, real_rows, monkeypatch):
    rows = [dict(r, input="ctx" if i % 3 == 0 else "") for i, r in enumerate(real_rows)]
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    want = read_samples(write_jsonl(tmp_path / "p.jsonl", rows))
    calls = []
    orig = readers_mod.normalize_record
    monkeypatch.setattr(readers_mod, "normalize_record", lambda *a, **k: calls.append(1) or orig(*a, **k))
    src = Source(tmp_path / "p.parquet", shard_size=9)
    shards = list(src.shards())
    got = pd.concat([s.table for s in shards], ignore_index=True)
    assert sample_cols(got) == sample_cols(want)
    assert np.concatenate([s.lines for s in shards]).tolist() == list(range(1, len(rows) + 1))
    assert len(calls) == 1  # only the first row (schema detection) went through the per-row reader
    assert src.columns == list(rows[0])


def test_parquet_bad_cells_name_the_row_and_fall_back_per_row(tmp_path):
    df = pd.DataFrame(
        {
            "instruction": ["a", None, "c", "d"],
            "output": ["x", "y", None, "w"],
            "messages": [None, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}], None, None],
        }
    )
    df.to_parquet(tmp_path / "m.parquet")
    with pytest.raises(DataError, match=r"m.parquet, line 3, field 'output': missing field"):
        read_samples(tmp_path / "m.parquet")
    src = Source(tmp_path / "m.parquet", on_bad_row="skip")
    got = src.read_all()
    assert got[["instruction", "output"]].values.tolist() == [["a", "x"], ["q", "r"], ["d", "w"]]
    assert [(s["line"], s["field"]) for s in src.skipped] == [(3, "output")]


def test_in_memory_sources(real_rows):
    want = sample_cols(read_samples(real_rows[:10]))
    df = pd.DataFrame(real_rows[:10])
    import pyarrow as pa

    assert sample_cols(read_samples(df)) == want
    assert sample_cols(read_samples(pa.Table.from_pandas(df))) == want
    src = Source((r for r in real_rows[:10]))  # a generator: every pass sees the same rows
    assert sample_cols(src.read_all()) == want and sample_cols(src.read_all()) == want
    with pytest.raises(OptionError, match="expected a path, URL"):
        Source(42)
    with pytest.raises(OptionError, match="split: only for HF datasets"):
        Source(df, split="train")


# ------------------------------------------------------------------ schemas
def test_mixed_pool_either_order_and_every_chat_role(tmp_path):
    alpaca = {"instruction": "Add 2 and 2", "input": "", "output": "4"}
    share = {
        "conversations": [
            {"from": "human", "value": "hi"},
            {"from": "function_call", "value": '{"name": "x"}'},
            {"from": "observation", "value": "ok"},
            {"from": "gpt", "value": "done"},
        ]
    }
    prompt = {"prompt": "P", "completion": "C"}
    for order in ([alpaca, CHAT, share, prompt], [CHAT, alpaca, prompt, share]):
        df = read_samples(write_jsonl(tmp_path / "mixed.jsonl", order))
        by = {r["instruction"]: r for r in df.to_dict("records")}
        assert by["Add 2 and 2"]["output"] == "4"
        chat = by["Weather in Paris?"]
        assert chat["id"] == "chat-1" and chat["output"] == "It is 18C\nand sunny."
        assert [t["role"] for t in chat["conversation"]] == ["system", "user", "assistant", "tool", "assistant"]
        assert json.loads(chat["conversation"][2]["content"])[0]["function"]["name"] == "weather"
        assert chat["conversation"][3]["content"] == "18C, sunny"
        assert [t["role"] for t in by["hi"]["conversation"]] == ["user", "assistant", "tool", "assistant"]
        assert by["P"]["output"] == "C"
    legacy = {"messages": [{"role": "user", "content": "q"}, {"role": "function", "name": "f", "content": "v"},
                           {"role": "developer", "content": "d"}, {"role": "assistant", "content": "a"}]}  # fmt: skip
    conv = read_samples([legacy])["conversation"][0]
    assert [t["role"] for t in conv] == ["user", "tool", "system", "assistant"]
    bad = {"messages": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}]}
    with pytest.raises(DataError, match=r"line 1, field 'messages': turn 0: unknown role 'wizard'"):
        read_samples([bad])


def test_score_columns_reads_messages_rows_and_arrow_batches():
    from thresher.engines import ScoreColumns

    df = pd.DataFrame(
        {"messages": [CHAT["messages"], None], "instruction": [None, "two words"], "output": [None, "a b c"]}
    )
    res = ScoreColumns("length")(df)
    tok = re.compile(r"\w+|[^\w\s]")
    assert res["length.output"].tolist() == [len(tok.findall("It is 18C\nand sunny.")), 3.0]
    assert res["length.instruction"].tolist() == [len(tok.findall("Weather in Paris?")), 2.0]
    import pyarrow as pa

    plain = [{"role": "system", "content": "s"}, {"role": "user", "content": "q r"},
             {"role": "tool", "content": "t"}, {"role": "assistant", "content": "x y z ."}]  # fmt: skip
    df2 = pd.DataFrame({"messages": [plain, None], "instruction": [None, "two words"], "output": [None, "a b c"]})
    arrow = ScoreColumns("length")(pa.Table.from_pandas(df2))
    assert isinstance(arrow, pa.Table)  # the batch comes back in its own kind
    assert arrow["length"].to_pylist() == [2.0 + 4.0, 2.0 + 3.0]
    assert len(ScoreColumns("length")(df.iloc[0:0])) == 0
