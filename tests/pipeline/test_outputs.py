"""Outputs people use downstream: ids and scores on the written rows, rejected rows, source
file/line in scores.parquet, library versions in the manifest, model-tokenizer token budgets."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import save_tiny_lm, write_bigbench_head
from thresher.errors import OptionError
from thresher.pipeline import PipelineConfig, run_pipeline

PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")
SCORE_COLS = ["fake_len", "fake_len.instruction", "fake_len.reason"]


@pytest.fixture(scope="module")
def rows(bigbench_path, tmp_path_factory) -> list[dict]:
    """300 real BIG-bench rows without their id field (ids are then content hashes); a few empty outputs."""
    p = write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("rows") / "pool.jsonl", 300)
    out = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        r = json.loads(line)
        r.pop("id")
        if i % 50 == 7:
            r["output"] = ""  # fake_len: NaN with a reason
        out.append(r)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(data, out, **kw):
    kw.setdefault("quiet", True)
    kw.setdefault("report", False)
    kw.setdefault("shard_size", 64)
    kw.setdefault("criteria", ["fake_len"])
    return run_pipeline(PipelineConfig(data=str(data), out=str(out), plugins=[PLUGIN], **kw))


def oracle_fake_len(rows: list[dict]) -> np.ndarray:
    v = np.array([len(r["output"]) for r in rows], dtype=np.float64)
    v[v == 0] = np.nan
    return v


def test_selected_rows_carry_id_and_scores_and_join_back(rows, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    lines = pool.read_text(encoding="utf-8").splitlines()
    res = run(pool, tmp_path / "o", k=30, with_scores=True, write_rejected=True)
    s = pd.read_parquet(res.scores_path)
    assert s["source_file"].unique().tolist() == ["pool.jsonl"]
    assert s["source_line"].tolist() == list(range(1, 301))  # one row a line
    by_id = s.set_index("id")
    sel = [json.loads(x) for x in (tmp_path / "o" / "selected.jsonl").read_text(encoding="utf-8").splitlines()]
    rej = [json.loads(x) for x in (tmp_path / "o" / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(sel) == 30 and len(rej) == 270
    want = oracle_fake_len(rows)
    for r in sel + rej:
        line = int(by_id.loc[r["id"], "source_line"])
        orig = json.loads(lines[line - 1])
        assert {k: v for k, v in r.items() if k not in ["id"] + SCORE_COLS} == orig  # joins back by id
        assert list(r)[: len(orig)] == list(orig)  # the input's field order, then the added fields
        assert list(r)[len(orig) :] == ["id"] + SCORE_COLS
        v = want[line - 1]
        assert (
            (r["fake_len"] is None and r["fake_len.reason"] == "empty output")
            if np.isnan(v)
            else (r["fake_len"] == v and r["fake_len.reason"] == "")
        )
        assert r["fake_len.instruction"] == len(orig["instruction"])
    assert {r["id"] for r in sel} == set(s.loc[s["selected"], "id"])
    assert {r["id"] for r in sel} | {r["id"] for r in rej} == set(s["id"]) and len(s) == 300
    # the rows keep their original bytes: the written line starts with the input line minus its closing brace
    first = (tmp_path / "o" / "selected.jsonl").read_text(encoding="utf-8").splitlines()[0]
    line = int(by_id.loc[json.loads(first)["id"], "source_line"])
    assert first.startswith(lines[line - 1][:-1] + ", ")
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert set(m["outputs"]) == {"selected.jsonl", "rejected.jsonl", "scores.parquet"}
    assert m["id_column"] == "id" and m["with_scores"] is True


def test_run_json_lists_rejected(rows, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", rows[:100])
    run(pool, tmp_path / "o", k=5, write_rejected=True)
    listed = json.loads((tmp_path / "o" / "run.json").read_text())["outputs"]
    assert "rejected.jsonl" in listed and "selected.jsonl" in listed


def test_without_scores_only_the_id_is_added(rows, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", rows[:80])
    run(pool, tmp_path / "o", k=10, id_column="sample_key")
    out = [json.loads(x) for x in (tmp_path / "o" / "selected.jsonl").read_text(encoding="utf-8").splitlines()]
    s = pd.read_parquet(tmp_path / "o" / "scores.parquet")
    assert [list(r)[-1] for r in out] == ["sample_key"] * 10
    assert {r["sample_key"] for r in out} == set(s.loc[s["selected"], "id"])
    assert not (tmp_path / "o" / "rejected.jsonl").exists()


def test_own_id_field_is_kept_verbatim(bigbench_path, tmp_path):
    pool = write_bigbench_head(bigbench_path, tmp_path / "pool.jsonl", 120)
    lines = pool.read_text(encoding="utf-8").splitlines()
    res = run(pool, tmp_path / "o", k=12)
    got = (tmp_path / "o" / "selected.jsonl").read_text(encoding="utf-8").splitlines()
    assert got == [lines[i] for i in sorted(res.selected.tolist())]


def test_a_different_user_field_is_never_overwritten(rows, bigbench_path, tmp_path):
    pool = write_bigbench_head(bigbench_path, tmp_path / "pool.jsonl", 60)
    with pytest.raises(OptionError, match="id_column.*'task'"):
        run(pool, tmp_path / "a", k=5, id_column="task")  # a field of the input that is not its id
    clash = [dict(r, fake_len="mine") for r in rows[:40]]
    p2 = write_jsonl(tmp_path / "clash.jsonl", clash)
    with pytest.raises(OptionError, match="with_scores.*'fake_len'"):
        run(p2, tmp_path / "b", k=5, with_scores=True)
    run(p2, tmp_path / "c", k=5)  # without --with-scores the field is not touched
    mixed = rows[:30] + [dict(rows[30], id="x1")] + rows[31:40]  # one later row has another "id" field
    p3 = write_jsonl(tmp_path / "mixed.jsonl", mixed)
    with pytest.raises(OptionError, match=r"mixed.jsonl, line \d+: .*'id'"):
        run(p3, tmp_path / "d", k=40)
    with pytest.raises(OptionError, match="id_column"):
        run(pool, tmp_path / "e", k=5, id_column="a/b")


def _record_lines(path: Path) -> np.ndarray:
    """The line each CSV record starts on (quoted fields may span lines)."""
    with open(path, newline="", encoding="utf-8") as fh:
        r = csv.reader(fh)
        next(r)
        starts, prev = [], r.line_num
        for _ in r:
            starts.append(prev + 1)
            prev = r.line_num
    return np.asarray(starts)


def _read_any(path: Path) -> pd.DataFrame:
    name = path.name
    if name.endswith(".parquet"):
        return pq.read_table(path).to_pandas()
    if name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as fh:
            return pd.DataFrame(list(csv.DictReader(fh)))
    if name.endswith(".json"):
        return pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
    raise AssertionError(name)


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_other_formats_carry_id_and_scores(rows, tmp_path, fmt):
    df = pd.DataFrame(rows[:90])
    p = tmp_path / f"pool.{fmt}"
    if fmt == "csv":
        df.to_csv(p, index=False)
    elif fmt == "json":
        p.write_text(json.dumps(rows[:90], ensure_ascii=False), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), p)
    res = run(p, tmp_path / "o", k=9, with_scores=True, write_rejected=True)
    s = pd.read_parquet(res.scores_path).set_index("id")
    want = oracle_fake_len(rows[:90])
    for kind, n in (("selected", 9), ("rejected", 81)):
        out = _read_any(tmp_path / "o" / f"{kind}.{fmt}")
        assert list(out.columns) == list(df.columns) + ["id"] + SCORE_COLS and len(out) == n
        row = s.index.get_indexer(out["id"])  # pool position = row of the input (no bad rows)
        assert (row >= 0).all() and (np.diff(row) > 0).all()  # input order
        starts = _record_lines(p) if fmt == "csv" else np.arange(1, 91)  # parquet: 1-based row
        if fmt != "json":  # (a one-line JSON array: every record starts on line 1)
            np.testing.assert_array_equal(s.loc[out["id"], "source_line"].to_numpy(), starts[row])
        assert out["output"].tolist() == df["output"].to_numpy()[row].tolist()
        got = pd.to_numeric(out["fake_len"].replace("", np.nan)).to_numpy(np.float64)
        np.testing.assert_array_equal(got, want[row])
    if fmt == "parquet":
        sch = pq.read_schema(tmp_path / "o" / "selected.parquet")
        assert sch.field("fake_len").type == pa.float64() and sch.field("id").type == pa.string()


def test_scores_parquet_names_file_and_line_in_a_folder(rows, tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    write_jsonl(d / "a.jsonl", rows[:40])
    # blank lines and a second file: lines are the file's own line numbers
    (d / "sub" / "b.jsonl").write_text("\n" + "".join(json.dumps(r) + "\n\n" for r in rows[40:70]), encoding="utf-8")
    res = run(d, tmp_path / "o", k=5)
    s = pd.read_parquet(res.scores_path)
    assert s["source_file"].tolist() == ["a.jsonl"] * 40 + ["sub/b.jsonl"] * 30
    assert s["source_line"].tolist() == list(range(1, 41)) + [2 + 2 * i for i in range(30)]
    for f, line, ident in zip(s["source_file"], s["source_line"], s["id"]):
        text = (d / f).read_text(encoding="utf-8").split("\n")[line - 1]
        assert (
            json.loads(text)["output"]
            == rows[(40 if f != "a.jsonl" else 0) + (line - 1 if f == "a.jsonl" else (line - 2) // 2)]["output"]
        )
        assert ident  # every row has an id


def test_manifest_versions_device_and_token_count(rows, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", rows[:50])
    run(pool, tmp_path / "o", k=5)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    env = m["environment"]
    libs = env["libraries"]
    assert libs["python"] == platform.python_version()
    assert libs["numpy"] == np.__version__ and libs["pyarrow"] == pa.__version__ and libs["pandas"] == pd.__version__
    assert libs["torch"] == importlib.metadata.version("torch")
    assert set(libs) >= {"thresher", "transformers", "faiss", "sentence-transformers"}
    assert env["device"] == "cpu"
    assert m["budget"]["token_count"] == "approximate"


def test_outputs_byte_identical_across_resume_and_folders(rows, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", rows[:200])
    kw = dict(k=20, with_scores=True, write_rejected=True, report=True)
    run(pool, tmp_path / "a", cache_dir=str(tmp_path / "cache"), **kw)
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir() if p.is_file() and p.name != "run.log"}
    run(pool, tmp_path / "a", cache_dir=str(tmp_path / "cache"), **kw)  # resume: everything from the cache
    again = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir() if p.is_file() and p.name != "run.log"}
    assert first == again
    run(pool, tmp_path / "b", **kw)  # computed afresh elsewhere
    for name in ("selected.jsonl", "rejected.jsonl", "scores.parquet", "manifest.json", "report.html"):
        assert (tmp_path / "b" / name).read_bytes() == first[name], name


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny") / "model")


def test_token_budget_counts_with_the_scoring_models_tokenizer(rows, tmp_path, tiny_model_dir):
    from thresher.render import ALPACA_INPUT, ALPACA_NO_INPUT

    pool = write_jsonl(tmp_path / "pool.jsonl", [r for r in rows[:40] if r["output"]])
    crit = [{"name": "ifd", "options": {"model": str(tiny_model_dir), "max_length": 256}}]
    res = run(pool, tmp_path / "o", criteria=crit, tokens=1500)
    s = pd.read_parquet(res.scores_path)
    # oracle: the byte tokenizer has one token per UTF-8 byte of the whole rendered sample, no specials added
    want = []
    for r in [json.loads(x) for x in pool.read_text(encoding="utf-8").splitlines()]:
        tmpl = ALPACA_INPUT if r.get("input") else ALPACA_NO_INPUT
        text = tmpl.format_map({"instruction": r["instruction"], "input": r.get("input", "")}) + r["output"]
        want.append(len(text.encode("utf-8")))
    np.testing.assert_array_equal(s["tokens"].to_numpy(), np.asarray(want, dtype=np.float64))
    sel = s[s["selected"]].sort_values("rank")
    assert sel["tokens"].sum() <= 1500 and len(sel) > 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["budget"]["token_count"].startswith("tokenizer of ifd (dir:")
    # without a token budget the approximate count stays
    res2 = run(pool, tmp_path / "o2", criteria=crit, k=3)
    s2 = pd.read_parquet(res2.scores_path)
    assert not np.array_equal(s2["tokens"].to_numpy(), s["tokens"].to_numpy())
    assert json.loads((tmp_path / "o2" / "manifest.json").read_text())["budget"]["token_count"] == "approximate"


def test_hf_dataset_rows_carry_id_and_scores(rows, tmp_path):
    datasets = pytest.importorskip("datasets")
    p = tmp_path / "ds"
    datasets.Dataset.from_list(rows[:60]).save_to_disk(str(p))
    res = run(p, tmp_path / "o", k=6, with_scores=True, write_rejected=True)
    s = pd.read_parquet(res.scores_path).set_index("id")
    assert s["source_file"].unique().tolist() == ["ds"] and s["source_line"].tolist() == list(range(1, 61))
    want = oracle_fake_len(rows[:60])
    for kind, n in (("selected", 6), ("rejected", 54)):
        out = datasets.load_from_disk(str(tmp_path / "o" / kind)).to_pandas()
        assert list(out.columns) == list(rows[0]) + ["id"] + SCORE_COLS and len(out) == n
        row = s.loc[out["id"], "source_line"].to_numpy() - 1
        assert out["output"].tolist() == [rows[i]["output"] for i in row]
        np.testing.assert_array_equal(out["fake_len"].to_numpy(np.float64, na_value=np.nan), want[row])


def test_cli_select_output_flags(rows, tmp_path):
    from thresher.cli.main import main

    pool = write_jsonl(tmp_path / "pool.jsonl", rows[:50])
    rc = main(["select", str(pool), "--criteria", "fake_len", "--k", "4", "--out", str(tmp_path / "o"),
               "--plugin", PLUGIN, "--quiet", "--no-report", "--with-scores", "--write-rejected",
               "--id-column", "row_id"])  # fmt: skip
    assert rc == 0
    sel = [json.loads(x) for x in (tmp_path / "o" / "selected.jsonl").read_text(encoding="utf-8").splitlines()]
    rej = (tmp_path / "o" / "rejected.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(sel) == 4 and len(rej) == 46 and all("row_id" in r and "fake_len" in r for r in sel)


def test_output_options_are_part_of_the_identity(rows, tmp_path):
    from thresher.errors import OutputExistsError

    pool = write_jsonl(tmp_path / "pool.jsonl", rows[:60])
    out = tmp_path / "o"
    run(pool, out, k=5, write_rejected=True)
    assert (out / "rejected.jsonl").exists()
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["output_options"] == {"id_column": "id", "with_scores": False, "write_rejected": True}
    assert ident["data"]["path"] == str(pool.resolve()) and ident["data"]["split"] is None
    # another output option is another run: refused (not resumed with a stale rejected.jsonl) ...
    for kw in ({"write_rejected": False}, {"write_rejected": True, "with_scores": True},
               {"write_rejected": True, "id_column": "key"}):  # fmt: skip
        with pytest.raises(OutputExistsError, match="differs in: output_options"):
            run(pool, out, k=5, **kw)
    # ... and --overwrite removes the previous run's rejected rows
    run(pool, out, k=5, overwrite=True)
    assert not (out / "rejected.jsonl").exists() and (out / "selected.jsonl").exists()


def test_manifest_names_a_url_as_given(rows, tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", rows[:30])
    url = pool.resolve().as_uri()  # file:///...
    run(url, tmp_path / "o", k=3)
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["inputs"][0]["path"] == url and m["inputs"][0]["split"] is None
    ident = json.loads((tmp_path / "o" / "run.json").read_text())["identity"]
    assert ident["data"]["path"] == url


def _split_folder(rows: list[dict], tmp_path: Path) -> Path:
    folder = tmp_path / "splits"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows[:50])
    write_jsonl(folder / "test.jsonl", rows[50:70])
    return folder


@pytest.mark.parametrize("streaming", [False, True])
def test_load_dataset_split_is_read_and_written(rows, tmp_path, streaming):
    """A data folder read by load_dataset (split, streaming): the split is scored and the selected
    and rejected rows are written from the loaded dataset (not load_from_disk of the folder)."""
    datasets = pytest.importorskip("datasets")
    folder = _split_folder(rows, tmp_path)
    out = tmp_path / "o"
    res = run(folder, out, k=7, split="train", streaming=streaming, with_scores=True, write_rejected=True)
    s = pd.read_parquet(res.scores_path).set_index("id")
    assert len(s) == 50 and s["source_line"].tolist() == list(range(1, 51))
    want = oracle_fake_len(rows[:50])
    np.testing.assert_array_equal(s["fake_len"].to_numpy(), want)
    for kind, n in (("selected", 7), ("rejected", 43)):
        got = datasets.load_from_disk(str(out / kind)).to_pandas()
        assert len(got) == n and list(got.columns) == list(rows[0]) + ["id"] + SCORE_COLS
        line = s.loc[got["id"], "source_line"].to_numpy()
        assert got["output"].tolist() == [rows[i - 1]["output"] for i in line]
        assert got["instruction"].tolist() == [rows[i - 1]["instruction"] for i in line]
        np.testing.assert_array_equal(got["fake_len"].to_numpy(np.float64, na_value=np.nan), want[line - 1])
    top = np.argsort(-np.nan_to_num(want, nan=-1.0), kind="stable")[:7]  # oracle: top 7 by output length
    assert sorted(s.index[s["selected"]].tolist()) == sorted(s.index[top].tolist())
    inp = json.loads((out / "manifest.json").read_text())["inputs"][0]
    assert (inp["path"], inp["split"], inp["streaming"], inp["format"]) == (str(folder.resolve()), "train",
                                                                           streaming, "hf")  # fmt: skip
    # the same folder with another split (or streaming flag) is another run
    from thresher.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="differs in: data"):
        run(folder, out, k=7, split="test", streaming=streaming, with_scores=True, write_rejected=True)
    with pytest.raises(OutputExistsError, match="differs in: data"):
        run(folder, out, k=7, split="train", streaming=not streaming, with_scores=True, write_rejected=True)
    res2 = run(folder, tmp_path / "o2", k=4, split="test", streaming=streaming)
    assert res2.n_rows == 20


def test_an_in_memory_hf_dataset_is_written_from_the_object(rows, tmp_path):
    datasets = pytest.importorskip("datasets")
    write_jsonl(tmp_path / "pool.jsonl", rows[:40])
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "pool.jsonl"), split="train")
    out = tmp_path / "o"
    res = run_pipeline(PipelineConfig(data=ds, out=str(out), plugins=[PLUGIN], criteria=["fake_len"], k=4,
                                      quiet=True, report=False, with_scores=True))  # fmt: skip
    got = datasets.load_from_disk(str(out / "selected")).to_pandas()
    s = pd.read_parquet(res.scores_path).set_index("id")
    line = s.loc[got["id"], "source_line"].to_numpy()
    assert got["output"].tolist() == [rows[i - 1]["output"] for i in line] and len(got) == 4
    want = oracle_fake_len(rows[:40])
    assert sorted(got["fake_len"].tolist()) == sorted(np.sort(np.nan_to_num(want, nan=-1))[-4:].tolist())
    assert json.loads((out / "manifest.json").read_text())["inputs"][0]["path"] == "<Dataset>"


def test_manifest_budget_base(rows, tmp_path, tiny_model_dir):
    """ifd's published budget is a fraction of the rows left after its filter (ifd <= 1), rounded down."""
    pool = write_jsonl(tmp_path / "pool.jsonl", [r for r in rows[:30] if r["output"]])
    res = run(pool, tmp_path / "o", criteria=None, recipe="ifd", ratio=0.5,
              recipe_options={"model": str(tiny_model_dir), "max_length": 128})  # fmt: skip
    s = pd.read_parquet(res.scores_path)
    v = s["ifd"].to_numpy(np.float64)
    eligible = int((~np.isnan(v) & (v <= 1)).sum())
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["budget"]["base"] == "eligible" and m["budget"]["resolved_k"] == eligible // 2 == int(s["selected"].sum())
    run(pool, tmp_path / "p", k=3)
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["budget"]["base"] == "pool"


@pytest.mark.parametrize("kind", ["pandas", "records"])
def test_an_in_memory_pool_writes_its_rows(rows, tmp_path, kind):
    """A DataFrame (read as an Arrow table) -> selected.parquet; a list of dicts -> selected.jsonl."""
    data = pd.DataFrame(rows[:40]) if kind == "pandas" else [dict(r) for r in rows[:40]]
    out = tmp_path / "o"
    res = run_pipeline(PipelineConfig(data=data, out=str(out), plugins=[PLUGIN], criteria=["fake_len"], k=5,
                                      quiet=True, report=False, with_scores=True, write_rejected=True))  # fmt: skip
    s = pd.read_parquet(res.scores_path).set_index("id")
    want = oracle_fake_len(rows[:40])
    for base, n in (("selected", 5), ("rejected", 35)):
        if kind == "pandas":
            got = pd.read_parquet(out / f"{base}.parquet")
        else:
            got = pd.DataFrame(
                [json.loads(x) for x in (out / f"{base}.jsonl").read_text(encoding="utf-8").splitlines()]
            )
        assert list(got.columns) == list(rows[0]) + ["id"] + SCORE_COLS and len(got) == n
        line = s.loc[got["id"], "source_line"].to_numpy()
        assert list(line) == sorted(line)  # input order
        assert got["output"].tolist() == [rows[i - 1]["output"] for i in line]
        np.testing.assert_array_equal(got["fake_len"].to_numpy(np.float64, na_value=np.nan), want[line - 1])
    label = "<DataFrame>" if kind == "pandas" else "<list>"
    assert json.loads((out / "manifest.json").read_text())["inputs"][0]["path"] == label


@pytest.mark.parametrize("shard", [1, 7])
def test_a_text_score_column_with_missing_values_is_written_with_nulls(rows, tmp_path, shard):
    """A criterion's text column with missing values (None, which pandas holds as NaN in a text column), in
    a shard of its own too (the first shard's column all missing): scores.parquet holds the texts and
    nulls, as the criterion returned them."""
    first = next(i for i, r in enumerate(rows) if len(r["output"]) % 5 == 0)  # fake_bucket.name: None
    pool = write_jsonl(tmp_path / "pool.jsonl", [rows[first]] + rows[:first] + rows[first + 1 : 60])
    top = {"name": "topk", "options": {"criterion": "fake_len"}}
    res = run_pipeline(PipelineConfig(data=str(pool), out=str(tmp_path / "out"), plugins=[PLUGIN],
                                      criteria=["fake_bucket", "fake_len"], selector=top, k=5, shard_size=shard,
                                      quiet=True, report=False))  # fmt: skip
    got = pq.read_table(res.scores_path).column("fake_bucket.name")
    assert pa.types.is_string(got.type) or pa.types.is_large_string(got.type)
    want = [None if len(json.loads(line)["output"]) % 5 == 0 else f"n{len(json.loads(line)['output']) % 3}"
            for line in pool.read_text(encoding="utf-8").splitlines()]  # fmt: skip
    assert got.to_pylist() == want and want[0] is None and 0 < want.count(None) < len(want)
