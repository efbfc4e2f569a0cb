"""The Ray engine reads the input on its workers: the driver parses no row, and the run gives the
local reader's ids, bad rows (real file lines), scores, selection and selected file, byte for byte."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from thresher.errors import InputError
from thresher.io import Source
from thresher.pipeline import PipelineConfig, run_pipeline

PLUGIN = str(Path(__file__).resolve().parents[1] / "fixtures" / "pipeline_plugin.py")
pytestmark = pytest.mark.ray


def _lines(bigbench_path, n):
    with gzip.open(bigbench_path, "rt", encoding="utf-8") as fh:
        return [next(fh).rstrip("\n") for _ in range(n)]


@pytest.fixture(scope="module")
def messy(bigbench_path, tmp_path_factory):
    """150 BIG-bench rows with bad rows and repeated ids spread over the file's byte splits."""
    lines = _lines(bigbench_path, 150)
    lines[40] = "{not json"
    lines[97] = json.dumps({**json.loads(lines[97]), "id": json.loads(lines[3])["id"]})  # an id seen in split 1
    lines[120] = json.dumps({"instruction": ["a list"], "output": "x"})
    lines.insert(60, "")  # a blank line: counted, not a record
    p = tmp_path_factory.mktemp("messy") / "pool.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _cfg(data, out, **kw) -> PipelineConfig:
    base = dict(data=str(data), out=str(out), criteria=["fake_len", "length"], k=30, plugins=[PLUGIN], quiet=True,
                selector={"name": "topk", "options": {"criterion": "fake_len"}}, report=False,
                shard_size=25)  # fmt: skip
    return PipelineConfig(**{**base, **kw})


def _ray(**opts):
    return dict(engine="ray", engine_options={"workers": 2, "split_bytes": 4000, **opts})


def _same(a, b) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(a.scores_path), pd.read_parquet(b.scores_path))
    assert a.selected.tolist() == b.selected.tolist()
    sel_a, sel_b = (sorted(r.out.glob("selected.*")) for r in (a, b))
    assert [p.read_bytes() for p in sel_a] == [p.read_bytes() for p in sel_b]  # rows copied from the same lines


def test_split_reading_matches_the_local_reader_with_bad_rows(messy, tmp_path, ray_cluster, monkeypatch):
    local = run_pipeline(_cfg(messy, tmp_path / "local", on_bad_row="skip"))

    def no_driver_parse(self):
        raise AssertionError("the driver parsed the pool")

    monkeypatch.setattr(Source, "shards", no_driver_parse)  # the driver's reader; the workers are other processes
    res = run_pipeline(_cfg(messy, tmp_path / "ray", on_bad_row="skip", **_ray()))
    _same(res, local)
    assert res.manifest["engine_run"]["read_on_workers"] is True
    skipped = [(r["line"], r["reason"]) for r in res.manifest["inputs"][0]["skipped_rows"]]
    assert skipped == [(r["line"], r["reason"]) for r in local.manifest["inputs"][0]["skipped_rows"]]
    assert [line for line, _ in skipped] == [41, 99, 122]  # the file's lines (a blank line before 99 and 122)


def test_a_bad_row_in_a_late_split_names_the_files_line(messy, tmp_path, ray_cluster):
    with pytest.raises(InputError) as local:
        run_pipeline(_cfg(messy, tmp_path / "local"))
    with pytest.raises(InputError) as ray:
        run_pipeline(_cfg(messy, tmp_path / "ray", cache_dir=str(tmp_path / "cache"), **_ray()))
    why = [e.value.reason.split(";")[0] for e in (ray, local)]  # then a hint naming each run's cache
    assert (ray.value.file, ray.value.line, why[0]) == (local.value.file, local.value.line, why[1])
    assert ray.value.line == 41 and why[0].startswith("malformed JSON")
    # the shards before the bad row were scored and kept
    assert any((tmp_path / "cache").rglob("*.parquet"))


def test_limit_and_a_parquet_pool_of_many_row_groups(bigbench_path, tmp_path, ray_cluster):
    recs = [json.loads(x) for x in _lines(bigbench_path, 120)]
    p = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(recs), p, row_group_size=16)
    local = run_pipeline(_cfg(p, tmp_path / "local", limit=90))
    res = run_pipeline(_cfg(p, tmp_path / "ray", limit=90, **_ray(split_rows=20)))
    assert res.n_rows == local.n_rows == 90
    _same(res, local)
    assert res.manifest["engine_run"]["read_on_workers"] is True


def test_a_gzipped_pool_decompressed_once_in_blocks_the_workers_parse(messy, tmp_path, ray_cluster, monkeypatch):
    gz = tmp_path / "pool.jsonl.gz"
    gz.write_bytes(gzip.compress(messy.read_bytes()))
    local = run_pipeline(_cfg(gz, tmp_path / "local", on_bad_row="skip"))
    # blocks of 5 lines, decompressed once on the driver, put in the object store, parsed by 2 workers
    # (not line ranges, which count the lines first and re-read the stream on the workers)
    monkeypatch.setattr("thresher.io.splits.count_lines", lambda *a: pytest.fail("planned line ranges"))
    res = run_pipeline(_cfg(gz, tmp_path / "ray", on_bad_row="skip", **_ray(split_rows=5)))
    _same(res, local)
    skipped = [(r["line"], r["reason"]) for r in res.manifest["inputs"][0]["skipped_rows"]]
    assert [line for line, _ in skipped] == [41, 99, 122]


@pytest.mark.parametrize("gz", [False, True])
def test_a_csv_pool_with_multiline_fields_is_cut_between_records_and_read_on_workers(
    bigbench_path, tmp_path, ray_cluster, monkeypatch, gz
):
    """BIG-bench rows as CSV (their texts hold line breaks, quotes and commas), a row with too many
    cells and a repeated id: Ray cuts the file between records (byte ranges, or blocks of a gzipped
    file) and gives the local reader's scores, bad rows (the line each record starts on) and
    selected file."""
    import csv
    import io

    recs = [json.loads(x) for x in _lines(bigbench_path, 150)]
    assert sum("\n" in r["instruction"] for r in recs) > 20
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "instruction", "output"])
    for i, r in enumerate(recs):
        row = [recs[3]["id"] if i == 97 else r["id"], r["instruction"], r["output"]]
        w.writerow(row + (["one too many"] if i == 40 else []))
    p = tmp_path / ("pool.csv.gz" if gz else "pool.csv")
    data = buf.getvalue().encode("utf-8")
    p.write_bytes(gzip.compress(data) if gz else data)
    local = run_pipeline(_cfg(p, tmp_path / "local", on_bad_row="skip"))
    monkeypatch.setattr(Source, "shards", lambda self: pytest.fail("the driver parsed the pool"))
    res = run_pipeline(_cfg(p, tmp_path / "ray", on_bad_row="skip", **_ray(split_rows=7)))
    _same(res, local)
    assert res.manifest["engine_run"]["read_on_workers"] is True
    skipped = [(r["line"], r["reason"]) for r in res.manifest["inputs"][0]["skipped_rows"]]
    assert skipped == [(r["line"], r["reason"]) for r in local.manifest["inputs"][0]["skipped_rows"]]
    reader, starts = csv.reader(io.StringIO(buf.getvalue(), newline="")), []
    while True:  # the oracle: the line each record starts on
        at = reader.line_num + 1
        if next(reader, None) is None:
            break
        starts.append(at)
    assert [line for line, _ in skipped] == [starts[1 + 40], starts[1 + 97]] and starts[41] > 42


@pytest.mark.parametrize("gz", [False, True])
def test_a_json_array_pool_is_cut_between_elements_and_read_on_workers(
    bigbench_path, tmp_path, ray_cluster, monkeypatch, gz
):
    """150 BIG-bench rows as a JSON array (a BOM, some elements over many lines, several on one line,
    a malformed element, a repeated id): Ray cuts it between its top-level elements (byte ranges, or
    blocks of the gzipped stream in the object store) and gives the local reader's scores, bad rows
    (the line each element starts on) and selected file; the driver parses no element."""
    from thresher.pipeline import reading

    recs = [json.loads(x) for x in _lines(bigbench_path, 150)]
    recs[97]["id"] = recs[3]["id"]
    parts = [json.dumps(r, ensure_ascii=i % 2 == 0, indent=2 if i % 9 == 0 else None) for i, r in enumerate(recs)]
    parts[40] = '{"instruction": tru, "output": "x"}'  # malformed; its brackets balance
    seps = [",\n" if i % 5 else ", " for i in range(1, 150)]  # every fifth element on the line of the one before
    text = "\ufeff[\n" + "".join(x + sep for x, sep in zip(parts, seps)) + parts[-1] + "\n]\n"
    starts, line = [], 2  # the oracle: the line each element starts on
    for x, sep in zip(parts, seps + [""]):
        starts.append(line)
        line += x.count("\n") + sep.count("\n")
    data = text.encode("utf-8")
    p = tmp_path / ("pool.json.gz" if gz else "pool.json")
    p.write_bytes(gzip.compress(data) if gz else data)
    local = run_pipeline(_cfg(p, tmp_path / "local", on_bad_row="skip"))
    kinds: list = []
    real = reading.plan_splits

    def spy(*a, **k):
        got = real(*a, **k)
        return None if got is None else (kinds.append(sp.kind) or sp for sp in got)

    monkeypatch.setattr(reading, "plan_splits", spy)
    monkeypatch.setattr(Source, "shards", lambda self: pytest.fail("the driver parsed the pool"))
    res = run_pipeline(_cfg(p, tmp_path / "ray", on_bad_row="skip", **_ray()))
    assert len(kinds) > 5 and set(kinds) == {"elements"}
    _same(res, local)
    assert res.manifest["engine_run"]["read_on_workers"] is True
    skipped = [(r["line"], r["reason"]) for r in res.manifest["inputs"][0]["skipped_rows"]]
    assert skipped == [(r["line"], r["reason"]) for r in local.manifest["inputs"][0]["skipped_rows"]]
    assert [line for line, _ in skipped] == [starts[40], starts[97]]
    assert skipped[0][1].startswith("malformed JSON") and skipped[1][1].startswith("duplicate id")


def test_the_repr_filter_embeds_its_candidates_on_the_workers(messy, tmp_path, ray_cluster, monkeypatch):
    """topk with ``diversity_tau`` streams: its candidates are embedded by the workers, which read the
    input again, and the selection is the local engine's (separate caches: nothing is reused)."""
    sel = {"name": "topk", "options": {"criterion": "fake_len", "diversity_tau": 0.5}}
    plain = run_pipeline(_cfg(messy, tmp_path / "plain", on_bad_row="skip"))
    local = run_pipeline(_cfg(messy, tmp_path / "local", on_bad_row="skip", selector=sel))
    assert local.selected.tolist() != plain.selected.tolist()  # the filter rejected rows
    monkeypatch.setattr(Source, "shards", lambda self: pytest.fail("the driver parsed the pool"))
    res = run_pipeline(_cfg(messy, tmp_path / "ray", on_bad_row="skip", selector=sel, **_ray()))
    _same(res, local)
    assert res.manifest["selector"]["how"] == local.manifest["selector"]["how"]
    assert "repr" in res.manifest["selector"]["how"]
    skipped = [(r["line"], r["reason"]) for r in res.manifest["inputs"][0]["skipped_rows"]]
    assert [line for line, _ in skipped] == [41, 99, 122]


def test_bad_records_before_the_first_good_one_get_the_local_readers_reasons(bigbench_path, tmp_path, ray_cluster):
    """Before the first good record no schema is fixed: the local reader checks such records by schema
    detection, the workers against the schema the driver fixed; the run reports detection's reasons."""
    lines = _lines(bigbench_path, 120)
    head = [json.dumps({"instruction": None, "output": "a"}), "{not json", json.dumps({"text": "t"})]
    late = json.dumps({"instruction": None, "output": "b"})  # the same fault after the schema is fixed
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(head + lines[:70] + [late] + lines[70:]) + "\n", encoding="utf-8")
    local = run_pipeline(_cfg(p, tmp_path / "local", on_bad_row="skip"))
    res = run_pipeline(_cfg(p, tmp_path / "ray", on_bad_row="skip", **_ray()))
    _same(res, local)
    assert res.manifest["engine_run"]["read_on_workers"] is True

    def skipped(r):
        return [(b["line"], b["field"], b["reason"]) for b in r.manifest["inputs"][0]["skipped_rows"]]

    assert skipped(res) == skipped(local)
    assert [b[0] for b in skipped(res)] == [1, 2, 3, 74]
    assert skipped(res)[0][2].startswith("cannot detect the schema") and skipped(res)[2][2].startswith("cannot detect")
    assert not skipped(res)[3][2].startswith("cannot detect")  # after the schema is fixed: the field's fault
