"""`thresher compare`: leaderboard, RUNS.yaml placement, plots, report; bad RUNS files."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from thresher.cli.main import main
from thresher.evaluation import Feasibility, feasibility_from_recipe, load_runs, parse_runs
from thresher.registry import RECIPES, Entry

PUBLISHED = [
    "IFD",
    "LESS",
    "Superfiltering",
    "SelectIT",
    "InstructionGPT-4",
    "Instruction-Mining",
    "SHED",
    "Nuggets",
    "InsTag",
    "CaR",
    "DEITA",
    "AlpaGasus",
]

FEAS = "{trained_llms: 0, steps: 3, model_free: false, dataset_free: true, proprietary_judge: false}"


def _write(tmp_path: Path, text: str, name: str = "runs.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_compare_prints_leaderboard(capsys):
    assert main(["compare"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    header = lines[0].split()
    assert header == [
        "name",
        "sdf",
        "pir",
        "residual",
        "efficiency_rank",
        "simplicity_penalty",
        "simplicity_rank",
        "flexibility_penalty",
        "flexibility_rank",
        "feasibility_rank",
    ]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:13]}
    assert sorted(rows) == sorted(PUBLISHED)
    assert rows["IFD"][1:] == ["0.05", "1.7470", "+0.3144", "1", "5", "4", "5", "4", "4"]
    assert rows["AlpaGasus"][1:] == ["0.173", "1.2840", "-0.3088", "11", "3", "1", "1", "2", "1"]
    assert rows["Instruction-Mining"][3:5] == ["+0.0000", "5"] and rows["InstructionGPT-4"][4] == "5"
    assert rows["SHED"][5:] == ["200", "8", "5", "4", "8"]
    assert "MoDS" not in rows and "excluded" in out


def test_compare_include_mods(capsys):
    assert main(["compare", "--include-mods"]) == 0
    out = capsys.readouterr().out
    mods = [ln for ln in out.splitlines() if ln.startswith("  MoDS")]
    assert len(mods) == 1 and mods[0].split()[4] == "1"


def test_compare_runs_writes_plots_and_report(tmp_path, capsys):
    runs = _write(
        tmp_path,
        f"""
runs:
  - name: mine-bench
    sdf: 0.05
    setting: same_bench
    sem: [0.52, 0.61]
    blm: [0.50, 0.58]
    feasibility: {FEAS}
  - name: mine-wins
    selected: 1000
    pool: 10000
    setting: same_win
    sem: [44, 85]
    blm: [21, 59]
    feasibility: {FEAS}
""",
    )
    out_dir = tmp_path / "report"
    assert main(["compare", str(runs), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "Efficiency" in out and "Feasibility" in out
    eff_lines = [ln for ln in out.split("Feasibility")[0].splitlines() if ln.startswith("*")]
    assert {ln.split()[2] for ln in eff_lines} == {"mine-bench", "mine-wins"}
    # mine-wins: PIR mean(44/21, 85/59) = 1.7680 at SDF 0.1, residual +0.2702: second behind IFD;
    # mine-bench: r = mean(1.04, 1.0517) -> PIR 1.5873 at SDF 0.05, residual +0.1547: third
    wins = [ln for ln in eff_lines if "mine-wins" in ln][0].split()
    assert wins[1] == "2" and wins[4] == "1.7680" and wins[5] == "+0.2702"
    bench = [ln for ln in eff_lines if "mine-bench" in ln][0].split()
    assert bench[1] == "3" and bench[4] == "1.5873" and bench[5] == "+0.1547"
    for name in ("efficiency.png", "feasibility.png", "report.html"):
        assert (out_dir / name).stat().st_size > 1000
    assert (out_dir / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out_dir / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 2 and base64.b64decode(imgs[0])[:4] == b"\x89PNG"
    assert "mine-wins" in html and html.count('class="user"') == 4  # two runs x two tables
    # existing report is not silently overwritten
    assert main(["compare", str(runs), "--out", str(out_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compare", str(runs), "--out", str(out_dir), "--overwrite"]) == 0


def test_compare_json(tmp_path, capsys):
    import json

    assert main(["compare", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 12 and {r["name"] for r in rows} == set(PUBLISHED)


# ------------------------------------------------------------------ recipes
_TEST_RECIPE = object()


@pytest.fixture(autouse=True, scope="module")
def _drop_test_recipe():
    yield
    RECIPES.unregister("_eval_test_recipe")  # keep the global registry clean for other test modules


def _test_recipe_entry():
    if "_eval_test_recipe" not in RECIPES:
        RECIPES.register(
            "_eval_test_recipe",
            doc="test only",
            feasibility={
                "trained_llms": 1,
                "steps": 3,
                "model_free": False,
                "dataset_free": False,
                "proprietary_judge": False,
            },
        )(_TEST_RECIPE)
    return RECIPES.get("_eval_test_recipe")


def test_feasibility_from_recipe_entry_and_name():
    e = _test_recipe_entry()
    f = feasibility_from_recipe(e)
    assert f == Feasibility(1, 3, False, False, False)
    assert feasibility_from_recipe("_eval_test_recipe") == f
    with pytest.raises(ValueError, match="unknown recipe 'no-such-recipe'"):
        feasibility_from_recipe("no-such-recipe")
    bare = Entry("bare", object(), "no meta")
    with pytest.raises(ValueError, match="recipe 'bare' declares no feasibility inputs"):
        feasibility_from_recipe(bare)
    partial = Entry("partial", object(), "", meta={"feasibility": {"trained_llms": 0, "steps": 2}})
    with pytest.raises(ValueError, match="partial.*missing feasibility input.*model_free"):
        feasibility_from_recipe(partial)


def test_every_registered_recipe_declares_feasibility():
    for entry in RECIPES:
        if entry.name.startswith("_"):
            continue
        f = feasibility_from_recipe(entry)  # raises naming the recipe and the missing field
        assert isinstance(f, Feasibility)


def test_run_with_recipe_needs_no_feasibility(tmp_path):
    _test_recipe_entry()
    runs = _write(
        tmp_path,
        "- {name: r1, sdf: 0.1, pir: 1.5, recipe: _eval_test_recipe}\n"
        "- {name: r2, sdf: 0.1, pir: 1.5, recipe: _eval_test_recipe, feasibility: {steps: 7}}\n",
    )
    m1, m2 = load_runs(runs)
    assert m1.feasibility == Feasibility(1, 3, False, False, False)
    assert m2.feasibility.steps == 7 and m2.feasibility.trained_llms == 1  # explicit overrides the recipe's


# ------------------------------------------------------------------ bad RUNS files
@pytest.mark.parametrize(
    "text,pattern",
    [
        ("runs: [{name: a, sdf: 0.1, pir: 1.5}]", r"runs\[0\] \(a\): missing feasibility inputs"),
        (f"runs: [{{name: a, sdf: 1.5, pir: 1.5, feasibility: {FEAS}}}]", r"runs\[0\] \(a\): field sdf: .*\(0, 1\]"),
        (f"runs: [{{name: a, sdf: 0, pir: 1.5, feasibility: {FEAS}}}]", r"field sdf"),
        (f"runs: [{{name: a, selected: 20, pool: 10, pir: 1.5, feasibility: {FEAS}}}]", r"larger than pool"),
        (
            f"runs: [{{name: a, sdf: 0.1, setting: other_win, sem: [1], blm: [1], feasibility: {FEAS}}}]",
            r"field setting: 'other_win'.*not supported",
        ),
        (
            f"runs: [{{name: a, sdf: 0.1, setting: bogus, sem: [1], blm: [1], feasibility: {FEAS}}}]",
            r"field setting: unknown setting 'bogus'",
        ),
        (
            f"runs: [{{name: a, sdf: 0.1, setting: same_bench, sem: [1, 2, 3], blm: [1, 2], feasibility: {FEAS}}}]",
            r"field blm: 2 values for 3 sem values",
        ),
        (
            f"runs: [{{name: a, sdf: 0.1, setting: same_win, sem: [4], blm: [0], feasibility: {FEAS}}}]",
            r"field blm\[0\]: zero wins",
        ),
        (
            f"runs: [{{name: a, sdf: 0.1, setting: same_bench, sem: [1], feasibility: {FEAS}}}]",
            r"field 'pir': missing.*\['blm'\]",
        ),
        (f"runs: [{{name: a, pir: 1.5, feasibility: {FEAS}}}]", r"field 'sdf': missing"),
        (f"runs: [{{name: a, sdf: 0.1, pir: abc, feasibility: {FEAS}}}]", r"field 'pir': expected a number"),
        (f"runs: [{{sdf: 0.1, pir: 1.5, feasibility: {FEAS}}}]", r"runs\[0\]: field 'name': required"),
        (
            f"runs: [{{name: a, sdf: 0.1, pir: 1.5, color: red, feasibility: {FEAS}}}]",
            r"unknown field\(s\) \['color'\]",
        ),
        (
            "runs: [{name: a, sdf: 0.1, pir: 1.5, feasibility: {trained_llms: 0, steps: 1}}]",
            r"field 'feasibility': missing feasibility input\(s\) \['model_free'",
        ),
        (
            "runs: [{name: a, sdf: 0.1, pir: 1.5, feasibility: {trained_llms: 0, steps: 1, model_free: maybe, "
            "dataset_free: true, proprietary_judge: false}}]",
            r"feasibility'.model_free: expected true or false",
        ),
        ("runs: [{name: a, sdf: 0.1, pir: 1.5, recipe: no-such-recipe}]", r"field 'recipe'.*unknown recipe"),
        (
            f"runs: [{{name: a, sdf: 0.1, pir: 1.5, feasibility: {FEAS}}}, {{name: a, sdf: 0.2, pir: 1.5, "
            f"feasibility: {FEAS}}}]",
            r"duplicate run name\(s\) \['a'\]",
        ),
        ("runs: []", r"field 'runs': no runs"),
        ("runs: {name: a}", r"field 'runs': expected a list"),
        ("name: a\nsdf: 0.1", r"expected a list of runs or a mapping with a 'runs:' list"),
        ("", r"empty RUNS file"),
        ("runs: [{name: a, sdf: 0.1\n", r"line \d+ malformed YAML"),
    ],
)
def test_bad_runs_file(tmp_path, text, pattern):
    p = _write(tmp_path, text)
    with pytest.raises(ValueError, match=pattern) as ei:
        load_runs(p)
    assert str(p) in str(ei.value)  # every error names the file


def test_bad_runs_via_cli(tmp_path, capsys):
    p = _write(tmp_path, "runs: [{name: a, sdf: 0.1, pir: 1.5}]")
    assert main(["compare", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "thresher: error:" in err and str(p) in err and "missing feasibility inputs" in err
    assert main(["compare", str(tmp_path / "missing.yaml")]) == 2
    assert "no such RUNS file" in capsys.readouterr().err


def test_run_name_clash_with_published(tmp_path, capsys):
    p = _write(tmp_path, f"runs: [{{name: IFD, sdf: 0.1, pir: 1.5, feasibility: {FEAS}}}]")
    assert main(["compare", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "clash with published methods" in capsys.readouterr().err


def test_parse_runs_accepts_plain_list():
    ms = parse_runs(
        [
            {
                "name": "x",
                "sdf": 0.5,
                "pir": 1.0,
                "feasibility": {
                    "trained_llms": 0,
                    "steps": 1,
                    "model_free": True,
                    "dataset_free": True,
                    "proprietary_judge": False,
                },
            }
        ]
    )
    assert ms[0].user and ms[0].sdf == 0.5
