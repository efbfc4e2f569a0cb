"""The bad-input campaign of issue 16, through the CLI as a new user would type it.

Each case runs ``thresher.cli.main.main([...])`` on real BIG-bench rows (model-free
criteria). A refused command exits 2 with exactly one stderr line
``thresher: error: ...`` naming the file (and line, field or option where there is
one), never a traceback; nothing outside the run's own files is ever deleted; a
command refused before scoring leaves nothing that blocks the corrected command.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.cli.main import main

N = 60


@dataclass
class Ctx:
    tmp: Path
    pool: Path  # N real BIG-bench rows (jsonl)
    rows: list
    capsys: object
    argv: list = field(default_factory=list)

    def run(self, argv: list) -> tuple[int, str]:
        self.capsys.readouterr()
        rc = main([str(a) for a in argv])
        return rc, self.capsys.readouterr().err

    def refused(self, argv: list, *needles: str) -> str:
        """Exit 2, one line, no traceback, every needle in it."""
        rc, err = self.run(argv)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert "Traceback" not in err, err
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("thresher: error: "), (rc, err)
        for n in needles:
            assert str(n) in lines[0], (n, lines[0])
        return lines[0]

    def ok(self, argv: list) -> None:
        rc, err = self.run(argv)
        assert rc == 0 and "Traceback" not in err, err


def select(data: Path, out: Path, *extra) -> list:
    return ["select", data, "--criteria", "length,mtld", "--selector", "topk", "--selector-option",
            "criterion=mtld", "--k", "7", "--out", out, "--quiet", "--no-report", *extra]  # fmt: skip


def score(data: Path, out: Path, *extra) -> list:
    return ["score", data, "--criteria", "length", "--out", out, "--quiet", *extra]


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------- the cases
def overwrite_non_thresher_folder(c: Ctx) -> None:
    out = c.tmp / "photos"
    (out / "selected_photos").mkdir(parents=True)
    (out / "selected_photos" / "cat.jpg").write_bytes(b"meow")
    (out / ".hidden").write_text("mine")
    for name in ("selected.jsonl", "run.log", "report.html", "manifest.json", "scores.parquet"):
        (out / name).write_text(f"my own {name}")
    before = tree(out)
    c.refused(select(c.pool, out, "--overwrite"), out, "no thresher run")
    assert tree(out) == before


def overwrite_from_config_non_thresher_folder(c: Ctx) -> None:
    out = c.tmp / "photos"
    (out / "selected_photos").mkdir(parents=True)
    (out / "selected_photos" / "dog.jpg").write_bytes(b"woof")
    cfg = c.tmp / "run.yaml"
    cfg.write_text(f"data: {c.pool}\nout: photos\ncriteria: [length]\nk: 3\noverwrite: true\nreport: false\n")
    before = tree(out)
    c.refused(["run", cfg, "--quiet"], out, "no thresher run")
    assert tree(out) == before


def overwrite_keeps_foreign_files(c: Ctx) -> None:
    out = c.tmp / "o"
    c.ok(select(c.pool, out))
    (out / "selected_photos").mkdir()
    (out / "selected_photos" / "cat.jpg").write_bytes(b"meow")
    (out / ".hidden").write_text("mine")
    (out / "selected.txt").write_text("notes")
    c.refused(select(c.pool, out, "--k", "9"), out, "--overwrite")  # another run's results: refused
    c.ok([*select(c.pool, out), "--k", "9", "--overwrite"])
    assert (out / "selected_photos" / "cat.jpg").read_bytes() == b"meow"
    assert (out / ".hidden").read_text() == "mine" and (out / "selected.txt").read_text() == "notes"
    assert len((out / "selected.jsonl").read_text().splitlines()) == 9


def overwrite_with_a_tampered_run_json(c: Ctx) -> None:
    out = c.tmp / "o"
    c.ok(select(c.pool, out))
    victim = c.tmp / "victim.txt"
    victim.write_text("keep me")
    run = json.loads((out / "run.json").read_text())
    run["outputs"] += ["../victim.txt", str(victim), "..", "selected_photos/../../victim.txt"]
    (out / "run.json").write_text(json.dumps(run))
    c.ok([*select(c.pool, out), "--k", "9", "--overwrite"])
    assert victim.read_text() == "keep me"


def cache_dir_with_unrelated_hidden_files(c: Ctx) -> None:
    cache = c.tmp / "mycache"
    (cache / ".git").mkdir(parents=True)
    (cache / ".git" / "config").write_text("[core]")
    (cache / ".hidden").write_text("mine")
    (cache / ".notes.thresher-tmp").write_text("looks like ours, has no writer pid")
    (cache / "length").mkdir()
    (cache / "length" / ".keep").write_text("")
    before = tree(cache)
    c.ok(select(c.pool, c.tmp / "o", "--cache-dir", cache))
    after = tree(cache)
    assert {k: after[k] for k in before} == before
    assert any(k.endswith(".parquet") for k in after)  # the cache was used


def cache_entry_with_another_shards_scores(c: Ctx) -> None:
    cache = c.tmp / "cache"
    c.ok(select(c.pool, c.tmp / "a", "--cache-dir", cache, "--shard-size", "20"))
    entries = sorted((cache / "mtld").glob("*.parquet"))
    assert len(entries) == 3
    entries[0].write_bytes(entries[1].read_bytes())  # a valid entry holding the wrong shard's scores
    c.ok(select(c.pool, c.tmp / "b", "--cache-dir", cache, "--shard-size", "20"))
    for name in ("scores.parquet", "selected.jsonl", "manifest.json"):
        assert (c.tmp / "a" / name).read_bytes() == (c.tmp / "b" / name).read_bytes(), name


def alias_dotdot(c: Ctx) -> None:
    cfg = c.tmp / "run.yaml"
    cfg.write_text(f"data: {c.pool}\nout: o\ncriteria: [{{name: length, as: ..}}]\nk: 3\nreport: false\n")
    before = sorted(p.name for p in c.tmp.iterdir())
    c.refused(["run", cfg, "--quiet"], "as: ..", "not a valid column name")
    assert sorted(p.name for p in c.tmp.iterdir()) == before and not (c.tmp / "o").exists()


def alias_single_criterion(c: Ctx) -> None:
    cfg = c.tmp / "run.yaml"
    cfg.write_text(f"data: {c.pool}\nout: o\ncriteria: [{{name: length, as: size}}]\nk: 3\nreport: false\n")
    c.ok(["run", cfg, "--quiet"])
    s = pd.read_parquet(c.tmp / "o" / "scores.parquet")
    assert "size" in s.columns and "length" not in s.columns and int(s["selected"].sum()) == 3


def score_bigbench_rows(c: Ctx) -> None:
    out = c.tmp / "s.csv"
    c.ok(score(c.pool, out, "--option", "length.unit=chars"))
    s = pd.read_csv(out, keep_default_na=False)
    assert all("input" not in r for r in c.rows)
    assert s["length.output"].tolist() == [float(len(r["output"])) for r in c.rows]  # oracle: characters


def truncated_gzip(c: Ctx) -> None:
    blob = gzip.compress(c.pool.read_bytes())
    p = c.tmp / "pool.jsonl.gz"
    p.write_bytes(blob[: len(blob) // 2])
    c.refused(score(p, c.tmp / "s.parquet"), p, "truncated")
    c.refused(select(p, c.tmp / "o"), p, "truncated")


def gz_that_is_not_gzip(c: Ctx) -> None:
    p = c.tmp / "pool.jsonl.gz"
    shutil.copy(c.pool, p)
    c.refused(score(p, c.tmp / "s.parquet"), p, "not a gzip file")


def unreadable_input(c: Ctx) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: root reads a chmod 000 file (see output_path_under_a_file)")
    p = c.tmp / "locked.jsonl"
    shutil.copy(c.pool, p)
    p.chmod(0)
    try:
        c.refused(score(p, c.tmp / "s.parquet"), p, "ermission denied")
    finally:
        p.chmod(0o644)


def output_path_under_a_file(c: Ctx) -> None:
    f = c.tmp / "afile"
    f.write_text("I am a file")
    c.refused(score(c.pool, f / "s.parquet"), f)
    c.refused(select(c.pool, f / "sub"), f)
    c.refused(select(c.pool, f), f, "not a folder")
    c.refused(select(c.pool, c.tmp / "o", "--cache-dir", f), f)
    assert f.read_text() == "I am a file"


def invalid_utf8(c: Ctx) -> None:
    lines = c.pool.read_bytes().split(b"\n")
    lines[4] = lines[4][:20] + b"\xff\xfe" + lines[4][20:]
    p = c.tmp / "bad.jsonl"
    p.write_bytes(b"\n".join(lines))
    c.refused(score(p, c.tmp / "s.parquet"), f"{p}, line 5", "UTF-8")


def mixed_format_folder(c: Ctx) -> None:
    d = c.tmp / "pool"
    d.mkdir()
    shutil.copy(c.pool, d / "a.jsonl")
    pd.DataFrame(c.rows[:5]).to_csv(d / "b.csv", index=False)
    c.refused(score(d, c.tmp / "s.parquet"), "mixes data formats", "a.jsonl", "b.csv")


def bom_jsonl(c: Ctx) -> None:
    p = c.tmp / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + c.pool.read_bytes())
    c.ok(score(p, c.tmp / "s.parquet"))
    got = pd.read_parquet(c.tmp / "s.parquet")["id"].astype(str).tolist()
    assert got == [str(r["id"]) for r in c.rows]


def bom_csv(c: Ctx) -> None:
    rows = [{"id": f"row-{i}", "instruction": r["instruction"], "output": r["output"]} for i, r in enumerate(c.rows)]
    p = c.tmp / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbf" + pd.DataFrame(rows).to_csv(index=False).encode("utf-8"))
    c.ok(score(p, c.tmp / "s.parquet"))
    assert pd.read_parquet(c.tmp / "s.parquet")["id"].tolist() == [r["id"] for r in rows]  # the id column kept


def option_wrong_type_list(c: Ctx) -> None:
    scored = ["score", c.pool, "--criteria", "mtld", "--out", c.tmp / "s.parquet"]
    c.refused([*scored, "--criterion-option", "mtld.threshold=[1,2]"], "threshold", "[1, 2]")
    c.refused([*scored, "--criterion-option", "mtld.threshold=abc"], "threshold", "abc")
    out = c.tmp / "o"
    c.refused(select(c.pool, out, "--criterion-option", "mtld.threshold=[1,2]"), "threshold")
    c.refused(select(c.pool, out, "--criterion-option", "mtld.threshold=abc"), "threshold")
    assert not out.exists()


def selector_option_wrong_type(c: Ctx) -> None:
    out = c.tmp / "o"
    argv = select(c.pool, out)
    argv[argv.index("criterion=mtld")] = "criterion=[1,2]"
    c.refused(argv, "criterion")
    assert not out.exists()


def ratio_above_one(c: Ctx) -> None:
    argv = select(c.pool, c.tmp / "o")
    i = argv.index("--k")
    c.refused([*argv[:i], "--ratio", "1.5", *argv[i + 2 :]], "ratio", "1.5")
    assert not (c.tmp / "o" / "run.json").exists()
    c.ok([*argv[:i], "--ratio", "0.5", *argv[i + 2 :]])


def tokens_zero(c: Ctx) -> None:
    argv = select(c.pool, c.tmp / "o")
    i = argv.index("--k")
    c.refused([*argv[:i], "--tokens", "0", *argv[i + 2 :]], "tokens")
    assert not (c.tmp / "o" / "run.json").exists()
    c.ok([*argv[:i], "--tokens", "500", *argv[i + 2 :]])


def bad_diversity_tau(c: Ctx) -> None:
    out = c.tmp / "o"
    base = ["select", c.pool, "--criteria", "length,mtld", "--selector", "pareto", "--k", "5", "--out", out,
            "--quiet", "--no-report", "--selector-option", "objectives=[length:max, mtld:max]"]  # fmt: skip
    c.refused([*base, "--selector-option", "diversity_tau=5"], "diversity_tau")
    c.refused([*base, "--selector-option", "diversity_tau=[1]"], "diversity_tau")
    recipe = ["select", c.pool, "--recipe", "multi-objective", "--option", "objectives=[length:max, mtld:max]",
              "--k", "5", "--out", out, "--quiet", "--no-report"]  # fmt: skip
    c.refused([*recipe, "--option", "diversity_tau=7"], "diversity_tau")
    assert not out.exists()
    c.ok([*base, "--selector-option", "diversity_tau=null"])


def skip_bad_first_row(c: Ctx) -> None:
    p = c.tmp / "first.jsonl"
    p.write_text('{"id": "bad", "instruction": "no answer"}\n' + c.pool.read_text())
    c.refused(score(p, c.tmp / "s.parquet"), f"{p}, line 1", "--on-bad-row skip")
    c.ok(score(p, c.tmp / "s.parquet", "--on-bad-row", "skip"))
    assert len(pd.read_parquet(c.tmp / "s.parquet")) == N
    c.ok(select(p, c.tmp / "o", "--on-bad-row", "skip"))
    m = json.loads((c.tmp / "o" / "manifest.json").read_text())
    assert m["inputs"][0]["rows"] == N and m["inputs"][0]["skipped"] == 1


def skip_bad_record_in_json_array(c: Ctx) -> None:
    body = [json.dumps(r) for r in c.rows]
    body.insert(3, '{"id": "broken", "instruction": "x", "output": }')
    p = c.tmp / "pool.json"
    p.write_text("[\n" + ",\n".join(body) + "\n]\n")
    c.refused(score(p, c.tmp / "s.parquet"), f"{p}, line 5")
    c.ok(score(p, c.tmp / "s.parquet", "--on-bad-row", "skip"))
    assert pd.read_parquet(c.tmp / "s.parquet")["id"].astype(str).tolist() == [str(r["id"]) for r in c.rows]


def config_plugins_without_permission(c: Ctx) -> None:
    marker = c.tmp / "ran"
    plugin = c.tmp / "evil.py"
    plugin.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('code ran')\n")
    cfg = c.tmp / "run.yaml"
    cfg.write_text(f"data: {c.pool}\nout: o\ncriteria: [length]\nk: 3\nplugins: [evil.py]\nreport: false\n")
    c.refused(["run", cfg, "--quiet"], "plugins", "--allow-plugins")
    cfg.write_text(cfg.read_text() + "allow_plugins: true\n")
    c.refused(["run", cfg, "--quiet"], "allow_plugins", "--allow-plugins")
    assert not marker.exists() and not (c.tmp / "o").exists()


def bad_config_file(c: Ctx) -> None:
    cfg = c.tmp / "run.yaml"
    cfg.write_text("data: [unclosed\n")
    c.refused(["run", cfg], cfg)
    cfg.write_text(f"data: {c.pool}\nselectr: topk\n")
    c.refused(["run", cfg], "selectr")
    c.refused(["run", c.tmp / "missing.yaml"], "missing.yaml")


def missing_input_and_bad_field(c: Ctx) -> None:
    c.refused(score(c.tmp / "nope.jsonl", c.tmp / "s.parquet"), "nope.jsonl")
    fields = ["--field", "instruction=instruction", "--field", "output=answer_text"]
    # a column the whole file lacks: the file and the column, no line and no --on-bad-row hint
    line = c.refused(
        score(c.pool, c.tmp / "s.parquet", *fields), c.pool, "no column 'answer_text'", "output=answer_text"
    )
    assert "line 1" not in line and "skip" not in line
    c.refused(score(c.pool, c.tmp / "s.parquet", "--field", "output=output"), c.pool, "--field instruction=COLUMN")


def unknown_names(c: Ctx) -> None:
    c.refused(["score", c.pool, "--criteria", "lenght", "--out", c.tmp / "s.parquet"], "lenght", "length")
    argv = select(c.pool, c.tmp / "o")
    argv[argv.index("topk")] = "topkk"
    c.refused(argv, "topkk")
    assert not (c.tmp / "o").exists()


CASES: list[Callable[[Ctx], None]] = [
    overwrite_non_thresher_folder,
    overwrite_from_config_non_thresher_folder,
    overwrite_keeps_foreign_files,
    overwrite_with_a_tampered_run_json,
    cache_dir_with_unrelated_hidden_files,
    cache_entry_with_another_shards_scores,
    alias_dotdot,
    alias_single_criterion,
    score_bigbench_rows,
    truncated_gzip,
    gz_that_is_not_gzip,
    unreadable_input,
    output_path_under_a_file,
    invalid_utf8,
    mixed_format_folder,
    bom_jsonl,
    bom_csv,
    option_wrong_type_list,
    selector_option_wrong_type,
    ratio_above_one,
    tokens_zero,
    bad_diversity_tau,
    skip_bad_first_row,
    skip_bad_record_in_json_array,
    config_plugins_without_permission,
    bad_config_file,
    missing_input_and_bad_field,
    unknown_names,
]


@pytest.fixture(scope="module")
def pool_rows(bigbench_path, tmp_path_factory) -> tuple[Path, list]:
    p = write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("campaign") / "pool.jsonl", N)
    return p, [json.loads(x) for x in p.read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[f.__name__ for f in CASES])
def test_campaign(case: Callable[[Ctx], None], pool_rows, tmp_path, capsys, monkeypatch) -> None:
    pool, rows = pool_rows
    monkeypatch.chdir(tmp_path)
    case(Ctx(tmp_path, pool, rows, capsys))
