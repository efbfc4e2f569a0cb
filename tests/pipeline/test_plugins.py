"""Plugins run code, so they load only when asked for where the command runs: ``--plugin``
(or ``PipelineConfig(plugins=...)`` in Python), or ``--allow-plugins`` /
``allow_plugins=True`` for the ``plugins:`` key of a config file, which a config file
cannot grant itself. The manifest records each plugin's file and sha256."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_bigbench_head
from thresher.cli.main import main
from thresher.errors import OptionError
from thresher.pipeline import PipelineConfig, run_pipeline
from thresher.registry import CRITERIA

_N = itertools.count()

PLUGIN_SRC = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

import pandas as pd
from thresher.frames import as_pandas
from thresher.registry import CRITERIA


@CRITERIA.register({name!r}, doc="output characters (test plugin)", options=[], direction="max", needs=())
class OutChars:
    def __call__(self, batch):
        df = as_pandas(batch)
        return pd.DataFrame({{"id": df["id"], {name!r}: df["output"].str.len().astype(float),
                             {name!r} + ".reason": [""] * len(df)}})

    def cache_key(self):
        return {name!r} + "/v1"
"""


@pytest.fixture(scope="module")
def pool(bigbench_path, tmp_path_factory):
    return write_bigbench_head(bigbench_path, tmp_path_factory.mktemp("plugins") / "pool.jsonl", 40)


class Plugin:
    """A plugin file registering criterion ``name``; importing it writes ``marker``."""

    def __init__(self, folder: Path, filename: str | None = None) -> None:
        self.name = f"plugin_chars_{next(_N)}_{folder.name[-6:]}".replace("-", "_")
        self.marker = folder / f"{self.name}.imported"
        self.path = folder / (filename or f"{self.name}.py")
        self.path.write_text(PLUGIN_SRC.format(marker=str(self.marker), name=self.name))

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def close(self) -> None:
        CRITERIA.unregister(self.name)


@pytest.fixture
def plugin(tmp_path):
    p = Plugin(tmp_path)
    yield p
    p.close()


def write_config(tmp_path: Path, pool: Path, plugin: Plugin, extra: str = "", plugins: str | None = None) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"data: {pool}\nout: res\ncriteria: [{plugin.name}]\nk: 5\nreport: false\nquiet: true\n"
        f"plugins: [{plugins or plugin.path}]\n{extra}"
    )
    return cfg


def oracle_chars(pool: Path) -> pd.Series:
    rows = [json.loads(x) for x in pool.read_text().splitlines()]
    return pd.Series([float(len(r["output"])) for r in rows])


def test_config_plugins_need_permission_and_nothing_runs_without_it(pool, tmp_path, plugin):
    cfg = PipelineConfig.from_file(write_config(tmp_path, pool, plugin))
    assert cfg.plugins == [] and cfg.config_plugins == [str(plugin.path)]
    with pytest.raises(OptionError, match="--allow-plugins") as err:
        run_pipeline(cfg)
    assert "\n" not in str(err.value)
    assert not plugin.marker.exists() and plugin.name not in CRITERIA.names()
    assert not (tmp_path / "res").exists()  # refused before anything was read or written


def test_a_config_cannot_allow_itself(pool, tmp_path, plugin):
    path = write_config(tmp_path, pool, plugin, extra="allow_plugins: true\n")
    with pytest.raises(OptionError, match="allow_plugins cannot be set in a config file.*--allow-plugins"):
        PipelineConfig.from_file(path)
    other = tmp_path / "other.yaml"
    other.write_text(f"data: {pool}\nconfig_plugins: [{plugin.path}]\n")
    with pytest.raises(OptionError, match=r"unknown key\(s\) \['config_plugins'\]"):
        PipelineConfig.from_file(other)
    assert not plugin.marker.exists()


def test_allowed_in_python_loads_and_the_manifest_records_path_and_sha256(pool, tmp_path, plugin):
    cfg = PipelineConfig.from_file(write_config(tmp_path, pool, plugin, plugins=plugin.path.name))  # relative
    cfg.allow_plugins = True
    res = run_pipeline(cfg)
    assert plugin.marker.exists()
    s = res.scores()
    assert s[plugin.name].tolist() == oracle_chars(pool).tolist()
    m = json.loads((tmp_path / "res" / "manifest.json").read_text())
    assert m["plugins"] == [{"path": str(plugin.path.resolve()), "sha256": plugin.sha256()}]


def test_python_plugins_argument_is_explicit(pool, tmp_path, plugin):
    res = run_pipeline(
        PipelineConfig(data=str(pool), out=str(tmp_path / "o"), criteria=[plugin.name], k=3, report=False,
                       quiet=True, plugins=[str(plugin.path)])
    )  # fmt: skip
    assert len(res.selected) == 3 and res.manifest["plugins"][0]["sha256"] == plugin.sha256()


def test_cli_run_refuses_then_allows(pool, tmp_path, plugin, capsys):
    cfg = write_config(tmp_path, pool, plugin)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("thresher: error: config: plugins:") and "--allow-plugins" in err[0]
    assert not plugin.marker.exists()
    assert main(["run", str(cfg), "--allow-plugins"]) == 0
    assert plugin.marker.exists()
    m = json.loads((tmp_path / "res" / "manifest.json").read_text())
    assert m["plugins"] == [{"path": str(plugin.path.resolve()), "sha256": plugin.sha256()}]


def test_cli_run_with_the_same_plugin_named_by_plugin_flag(pool, tmp_path, plugin):
    cfg = write_config(tmp_path, pool, plugin)
    assert main(["run", str(cfg), "--plugin", str(plugin.path)]) == 0
    m = json.loads((tmp_path / "res" / "manifest.json").read_text())
    assert [p["path"] for p in m["plugins"]] == [str(plugin.path.resolve())]  # once


def test_cli_run_plugin_flag_does_not_allow_other_config_plugins(pool, tmp_path, plugin, capsys):
    other = Plugin(tmp_path, "other_plugin.py")
    try:
        cfg = write_config(tmp_path, pool, plugin)
        assert main(["run", str(cfg), "--plugin", str(other.path)]) == 2
        assert "--allow-plugins" in capsys.readouterr().err
        assert not plugin.marker.exists()
    finally:
        other.close()


def test_select_and_score_take_plugin(pool, tmp_path, plugin, capsys):
    out = tmp_path / "sel"
    argv = ["select", str(pool), "--criteria", plugin.name, "--selector", "topk", "--k", "4", "--out", str(out)]
    assert main([*argv, "--plugin", str(plugin.path), "--quiet", "--no-report"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["plugins"] == [{"path": str(plugin.path.resolve()), "sha256": plugin.sha256()}]
    table = tmp_path / "scores.csv"
    score = ["score", str(pool), "--criteria", plugin.name, "--out", str(table), "--quiet"]
    assert main([*score, "--plugin", str(plugin.path)]) == 0
    assert pd.read_csv(table)[plugin.name].tolist() == oracle_chars(pool).tolist()


def test_a_module_plugin_records_module_file_and_sha(pool, tmp_path, monkeypatch):
    mod = f"thr_test_modplugin_{next(_N)}"
    p = Plugin(tmp_path, f"{mod}.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        res = run_pipeline(
            PipelineConfig(data=str(pool), out=str(tmp_path / "o"), criteria=[p.name], k=2, report=False,
                           quiet=True, plugins=[mod])
        )  # fmt: skip
        assert res.manifest["plugins"] == [{"module": mod, "path": str(p.path), "sha256": p.sha256()}]
    finally:
        p.close()
        sys.modules.pop(mod, None)


def test_thresher_plugins_env_var_loads_nothing(pool, tmp_path, plugin, monkeypatch, capsys):
    monkeypatch.setenv("THRESHER_PLUGINS", str(plugin.path))
    rc = main(["select", str(pool), "--criteria", "length", "--k", "2", "--out", str(tmp_path / "o"), "--quiet",
               "--no-report", "--selector", "topk"])  # fmt: skip
    assert rc == 0 and not plugin.marker.exists()


def test_bad_plugins_are_one_line_errors(pool, tmp_path, capsys):
    missing = tmp_path / "nope.py"
    assert main(["select", str(pool), "--criteria", "length", "--k", "2", "--out", str(tmp_path / "o"),
                 "--plugin", str(missing)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('plugin exploded')\n")
    assert main(["score", str(pool), "--criteria", "length", "--out", str(tmp_path / "s.csv"),
                 "--plugin", str(broken)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0] and "plugin exploded" in err[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data: {pool}\nplugins: {{a: 1}}\n")
    with pytest.raises(OptionError, match="plugins: expected a list"):
        PipelineConfig.from_file(bad)
