"""The Python API (thresher.score / select / rank): every input kind comes back as its own kind,
rows aligned with the input, scores checked against independent re-implementations."""

from __future__ import annotations

import gzip
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import thresher
from thresher.errors import InputError, OptionError

datasets = pytest.importorskip("datasets", reason="HF inputs need `pip install datasets`")

_TOK = re.compile(r"\w+|[^\w\s]")


def n_tok(text: str) -> int:  # the length criterion's documented unit: \w+ or one punctuation mark
    return len(_TOK.findall(text))


def length_of(row: dict) -> float:
    ins = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
    return float(n_tok(ins) + n_tok(row["output"]))


def top_rows(rows: list, ratio: float) -> tuple[list, int]:
    """Oracle for topk on length: the k longest rows (k = round(ratio * n), at least 1)."""
    k = max(1, int(math.floor(ratio * len(rows) + 0.5)))
    lengths = [length_of(r) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: -lengths[i])
    assert lengths[order[k - 1]] != lengths[order[k]], "oracle needs no tie at the cut"
    return order[:k], k


@pytest.fixture(scope="module")
def rows(bigbench_path) -> list[dict]:
    out = []
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line))
            if len(out) == 200:
                break
    return out


@pytest.fixture(scope="module")
def pool_jsonl(rows, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def test_import_is_lazy():
    code = "import sys, thresher; assert callable(thresher.score); print('torch' in sys.modules)"
    lazy = "import sys, thresher; print('torch' in sys.modules, 'pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True).stdout.split() == [
        "False",
        "False",
    ]
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_score_dataframe_from_parquet(rows, tmp_path):
    p = tmp_path / "pool.parquet"
    pd.DataFrame(rows).to_parquet(p)
    df = pd.read_parquet(p)
    df.index = [f"r{i}" for i in range(len(df))]  # the caller's index survives
    before = df.copy()
    out = thresher.score(df, criteria=["length", "mtld"], options={"mtld": {"field": "output"}})
    pd.testing.assert_frame_equal(df, before)  # the input is not modified
    assert isinstance(out, pd.DataFrame) and list(out.index) == list(df.index)
    pd.testing.assert_frame_equal(out[list(df.columns)], df)
    assert out["length"].tolist() == [length_of(r) for r in rows]
    assert out["length.output"].tolist() == [float(n_tok(r["output"])) for r in rows]
    words = [re.findall(r"\w+", r["output"]) for r in rows]
    for i, w in enumerate(words):
        if len(w) < 2:
            assert math.isnan(out["mtld"].iloc[i]) and out["mtld.reason"].iloc[i] == "fewer than 2 words"
        elif len({x.lower() for x in w}) == len(w):  # all words distinct: MTLD is the word count
            assert out["mtld"].iloc[i] == pytest.approx(len(w))
    assert not list(tmp_path.glob("**/cache"))  # nothing written beside the input


def test_select_hf_dataset_from_load_dataset(rows, pool_jsonl):
    ds = datasets.load_dataset("json", data_files=str(pool_jsonl))["train"]
    picked, k = top_rows(rows, 0.05)
    sel = thresher.select(ds, criteria=["length"], ratio=0.05)
    assert isinstance(sel, datasets.Dataset) and len(sel) == k == 10
    assert sel["id"] == [rows[i]["id"] for i in sorted(picked)]  # input order
    assert sel.column_names[: len(ds.column_names)] == ds.column_names
    by_rank = sorted(zip(sel["rank"], sel["id"]))
    assert [i for _, i in by_rank] == [rows[i]["id"] for i in picked]  # rank 0 = longest
    assert sel["length"] == [length_of(rows[i]) for i in sorted(picked)]
    # a recipe that runs without a model: random, ratio 0.05 of 200
    r1 = thresher.select(ds, recipe="random", ratio=0.05, seed=3)
    r2 = thresher.select(ds, recipe="random", ratio=0.05, seed=3)
    assert isinstance(r1, datasets.Dataset) and len(r1) == 10 and r1["id"] == r2["id"]
    assert set(r1["id"]) <= {r["id"] for r in rows} and len(set(r1["id"])) == 10


def test_a_selected_hf_dataset_prints_no_progress_bar(rows, capfd):
    """``select`` on a Dataset adds columns after ``Dataset.select``, which flattens the indices behind
    HF datasets' own bar: the call prints nothing, and the bars' setting is left as it was."""
    from datasets.utils import are_progress_bars_disabled

    ds = datasets.Dataset.from_list(rows[:40])
    capfd.readouterr()
    sel = thresher.select(ds, criteria=["length"], k=4)
    out = capfd.readouterr()
    assert len(sel) == 4 and "Flattening" not in out.err + out.out and not are_progress_bars_disabled()


def test_select_keep_all_dataframe_and_arrow(rows):
    df = pd.DataFrame(rows)
    picked, k = top_rows(rows, 0.05)
    out = thresher.select(df, criteria="length", k=k, keep="all", id_column="thresher_id")
    assert len(out) == len(df) and out["selected"].sum() == k
    assert sorted(np.flatnonzero(out["selected"].to_numpy()).tolist()) == sorted(picked)
    assert (out["rank"][~out["selected"]] == -1).all()
    assert out["thresher_id"].tolist() == df["id"].tolist()  # the rows' own ids
    t = thresher.select(pa.Table.from_pandas(df), criteria=["length"], k=k)
    assert isinstance(t, pa.Table) and t.num_rows == k
    assert t.column("id").to_pylist() == [rows[i]["id"] for i in sorted(picked)]
    s = thresher.score(pa.Table.from_pandas(df), criteria=["length"])
    assert isinstance(s, pa.Table) and s.column("length").to_pylist() == [length_of(r) for r in rows]


def test_records_and_iterable_dataset(rows, pool_jsonl):
    recs = [{"instruction": r["instruction"], "output": r["output"]} for r in rows[:30]]
    snapshot = json.dumps(recs)
    out = thresher.score(iter(recs), criteria=["length"])  # any iterable of dicts
    assert isinstance(out, list) and json.dumps(recs) == snapshot
    assert [o["length"] for o in out] == [length_of(dict(r, input="")) for r in recs]
    assert [{k: o[k] for k in ("instruction", "output")} for o in out] == recs
    picked, k = top_rows(rows[:30], 0.1)
    sel = thresher.select(recs, criteria=["length"], ratio=0.1)
    assert [s["instruction"] for s in sel] == [recs[i]["instruction"] for i in sorted(picked)]
    stream = datasets.load_dataset("json", data_files=str(pool_jsonl), streaming=True)["train"]
    got = thresher.select(stream, criteria=["length"], ratio=0.05)
    picked, k = top_rows(rows, 0.05)
    assert isinstance(got, datasets.Dataset) and got["id"] == [rows[i]["id"] for i in sorted(picked)]


def test_path_url_and_split_inputs_give_a_result(rows, pool_jsonl, tmp_path):
    picked, k = top_rows(rows, 0.05)
    res = thresher.select(str(pool_jsonl), criteria=["length"], ratio=0.05)
    assert isinstance(res, thresher.Result) and res.n_rows == 200 and res.k == k and res.paths == {}
    assert res.selected["id"].tolist() == [rows[i]["id"] for i in picked]
    assert "selected=10" in repr(res) and "<table>" in res._repr_html_() and "length" in res._repr_html_()
    out = tmp_path / "run"
    res = thresher.select("file://" + str(pool_jsonl), criteria=["length"], k=k, out=out, cache_dir=tmp_path / "c")
    assert res.paths["selected"].exists() and res.paths["scores"].exists() and res.out == out
    got = [json.loads(line)["id"] for line in res.paths["selected"].read_text().splitlines()]
    assert got == [rows[i]["id"] for i in sorted(picked)]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:50]), "test": datasets.Dataset.from_list(rows[50:80])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    sc = thresher.score(str(tmp_path / "dd"), criteria=["length"], split="test")
    assert sc.table["id"].tolist() == [r["id"] for r in rows[50:80]]
    assert sc.table["length"].tolist() == [length_of(r) for r in rows[50:80]]
    assert thresher.score(dd, criteria=["length"], split="train")["id"] == [r["id"] for r in rows[:50]]


def test_mixed_pool_with_tool_roles_and_skipped_rows():
    recs = [
        {"instruction": "Add 2 and 2", "output": "four ."},
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "weather ?"},
                {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "w"}}]},
                {"role": "tool", "content": "18C"},
                {"role": "assistant", "content": "It is 18C"},
            ]
        },
        {"instruction": "no answer"},  # bad: no output
    ]
    with pytest.raises(InputError, match=r"^data, item 2, field 'output': missing field; pass on_bad_row='skip'"):
        thresher.score(recs, criteria=["length"])
    out = thresher.score(recs, criteria=["length"], on_bad_row="skip")
    assert [o["length.output"] for o in out[:2]] == [2.0, 3.0]
    assert out[1]["length.instruction"] == 2.0  # the last user turn
    assert math.isnan(out[2]["length"]) and out[2]["length.reason"].startswith("input row skipped: missing field")


def test_a_bad_row_is_named_in_the_callers_terms(rows, tmp_path):
    """In-memory data: the row's position (and a DataFrame's index label), never the staged copy's
    path; the hint in keyword arguments, not CLI flags; a temporary cache is not offered for reuse."""
    df = pd.DataFrame(rows[:6], index=[f"r{i}" for i in range(6)])
    df.loc["r4", "output"] = None
    with pytest.raises(InputError) as exc:
        thresher.select(df, criteria=["length"], k=2)
    msg = str(exc.value)
    where = "data (DataFrame), row 4 (index 'r4'), field 'output'"
    assert msg == f"{where}: missing field (null); pass on_bad_row='skip' to skip bad rows"
    with pytest.raises(InputError, match=r"^data \(pyarrow Table\), row 4, field 'output'"):
        thresher.score(pa.Table.from_pandas(df, preserve_index=False), criteria=["length"])
    bad = tmp_path / "pool.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + '{"instruction": "x"}\n', encoding="utf-8")
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as exc:
        thresher.select(str(bad), criteria=["length"], k=1, cache_dir=cache, out=tmp_path / "sel")
    msg = str(exc.value)
    assert msg.startswith(
        f"{bad}, line 4, field 'output': missing field; the scores computed so far are kept in {cache}"
    )
    assert "overwrite=True" in msg and "on_bad_row='skip'" in msg and "--on-bad-row" not in msg


def test_a_token_budget_that_selects_nothing_says_why(rows, pool_jsonl):
    """A quiet call whose token budget stops before the first row of the order warns, naming that row in
    the caller's terms and its tokens; one that selects rows does not warn."""
    df = pd.DataFrame(rows[:40])
    longest = int(np.argmax(thresher.score(df, criteria="length")["length"].to_numpy()))  # first of the order
    with pytest.warns(RuntimeWarning, match=rf"tokens=5 selected nothing: the first row of the order \(data "
                      rf"\(DataFrame\), row {longest} \(index {longest}\)\) alone holds \d+ tokens"):  # fmt: skip
        assert len(thresher.select(df, criteria="length", tokens=5)) == 0
    with pytest.warns(RuntimeWarning, match=r"\(pool.jsonl:\d+\) alone holds"):
        thresher.select(pool_jsonl, criteria="length", tokens=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(thresher.select(df, criteria="length", tokens=10**7)) == 40


def test_rank_pareto_and_weighted():
    df = pd.DataFrame({"id": list("abcd"), "x": [3.0, 1.0, 2.0, 1.0], "y": [1.0, 3.0, 2.0, 1.0]})
    out = thresher.rank(df, ["x:max", "y:max"], method="pareto", k=3)
    assert out["pareto_rank"].tolist() == [0, 0, 0, 1]  # d is dominated by c
    assert out["selected"].tolist() == [True, True, True, False] and out["rank"].iloc[3] == -1
    w = thresher.rank(pa.Table.from_pandas(df), ["x:max", "y:min"], method="weighted", k=1, weights=[1, 1])
    assert isinstance(w, pa.Table) and w.column("id").to_pylist()[w.column("rank").to_pylist().index(0)] == "a"


def test_rank_weighted_takes_a_normaliser():
    """Ranks tie every row here (x rises as y falls); min-max scaling lets b's near-best y win."""
    df = pd.DataFrame({"id": list("abcd"), "x": [0.0, 1.0, 2.0, 10.0], "y": [3.0, 2.9, 1.0, 0.0]})
    top = {n: thresher.rank(df, ["x:max", "y:max"], method="weighted", k=1, normalize=n) for n in ("rank", "minmax")}
    assert top["rank"]["rank"].tolist() == [0, -1, -1, -1]  # a tie: the first row
    assert top["minmax"]["rank"].tolist() == [-1, 0, -1, -1]  # 0.1 + 0.967 against 1.0 for a and d
    assert thresher.rank(df, ["x:max", "y:max"], method="weighted", k=1)["rank"].tolist() == [0, -1, -1, -1]
    with pytest.raises(OptionError, match="normalize: only for method 'weighted', not 'rrf'"):
        thresher.rank(df, ["x:max", "y:max"], method="rrf", normalize="minmax")
    with pytest.raises(OptionError, match="normalize"):
        thresher.rank(df, ["x:max", "y:max"], method="weighted", normalize="median")


def test_errors_are_one_line_option_errors(rows):
    df = pd.DataFrame(rows[:5])
    with pytest.raises(OptionError, match=r"unknown keyword\(s\) \['bogus'\]"):
        thresher.score(df, criteria=["length"], bogus=1)
    with pytest.raises(OptionError, match=r"options: \['mtld'\] not among the criteria"):
        thresher.score(df, criteria=["length"], options={"mtld": {"field": "all"}})
    with pytest.raises(OptionError, match="keep: expected"):
        thresher.select(df, criteria=["length"], k=1, keep="some")
    with pytest.raises(OptionError, match="expected a path, URL"):
        thresher.score(42, criteria=["length"])
    with pytest.raises(OptionError, match="item 1 is a int"):
        thresher.score([{"instruction": "a", "output": "b"}, 3], criteria=["length"])
    with pytest.raises(OptionError, match="split/streaming"):
        thresher.score(df, criteria=["length"], split="train")
    with pytest.raises(OptionError, match="budget|ratio"):
        thresher.select(df, criteria=["length"], ratio=2.0)


def test_a_model_criterion_through_the_api(tmp_path, rows):
    from thresher.engines import ScoreColumns
    from thresher.models import tiny_causal_lm

    lm = tiny_causal_lm(0, tokenizer="bytes", init_std=0.3)
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    df = pd.DataFrame(rows[:12])
    out = thresher.score(df, criteria=["perplexity"], model=str(tmp_path / "m"))
    ref = ScoreColumns("perplexity", model=str(tmp_path / "m"))(df)  # no pipeline, no cache
    np.testing.assert_allclose(out["perplexity"].to_numpy(), ref["perplexity"].to_numpy(), rtol=1e-5)
    nan = out["perplexity"].isna().to_numpy()
    assert (~nan).sum() >= 6 and (out["perplexity.reason"].to_numpy()[nan] != "").all()
    assert out["perplexity.reason"].tolist() == ref["perplexity.reason"].tolist()


def test_a_column_that_cannot_be_staged_is_named(rows):
    df = pd.DataFrame(rows[:4])
    df["handle"] = [object()] * 4
    with pytest.raises(OptionError, match=r"^data: column 'handle' holds object values, which can be written neither"):
        thresher.select(df, criteria=["length"], k=2)
    recs = [{**r, "when": {1, 2}} for r in rows[:3]]  # a set: neither Arrow (from dicts: JSON lines) nor JSON
    with pytest.raises(OptionError, match=r"column 'when' holds set values"):
        thresher.score(recs, criteria=["length"])


def test_a_call_that_stops_keeps_its_scores_and_the_same_call_resumes(rows, tmp_path):
    plugin = str(Path(__file__).resolve().parent / "fixtures" / "pipeline_plugin.py")
    df = pd.DataFrame(rows)  # 200 rows, shards of 50
    log = tmp_path / "calls.log"
    opts = {"log": str(log)}

    def scored():
        return sum(int(line.split()[1]) for line in log.read_text().splitlines()) if log.exists() else 0

    kept_msg = "scores computed so far are kept in (.+); the same call resumes"
    with pytest.warns(RuntimeWarning, match=kept_msg) as w, pytest.raises(RuntimeError, match="failing on"):
        thresher.score(df, criteria="fake_len", options={"fake_len": {**opts, "fail_on": df["id"][170]}},
                       plugins=[plugin], shard_size=50)  # fmt: skip
    kept = Path(re.search(r"kept in (.+); the same", str(w[0].message)).group(1))
    assert kept.is_dir() and scored() == 150  # three shards scored and cached before the fourth failed

    got = thresher.score(df, criteria="fake_len", options={"fake_len": opts}, plugins=[plugin], shard_size=50)
    assert scored() == 200  # the fourth shard only
    assert got["fake_len"].notna().sum() > 0 and len(got) == 200
    assert not kept.exists()  # a call that completes removes its temporary cache
