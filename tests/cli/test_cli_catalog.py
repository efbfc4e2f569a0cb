"""`thresher criteria|selectors [NAME] [--json]`: components with their typed options."""

from __future__ import annotations

import json

import pytest

from thresher.cli.main import main
from thresher.registry import CRITERIA, SELECTORS, Option


@pytest.fixture()
def components():
    @CRITERIA.register(
        "zz_probe",
        doc="a probe criterion",
        options=[
            Option("k", 6, "neighbours", min=1),
            Option("mode", "a", "how", choices=("a", "b")),
            Option("tau", None, "threshold", type=float, min=0, max=1, max_exclusive=True),
        ],
        direction="min",
    )
    class Probe:
        def __init__(self, **o):
            pass

    @SELECTORS.register("zz_pick", doc="a probe selector", options=[Option("flag", False, "a switch")])
    def pick(scores, k, **o):
        return list(range(k))

    yield
    CRITERIA.unregister("zz_probe")
    SELECTORS.unregister("zz_pick")


def test_criterion_detail_json(components, capsys):
    assert main(["criteria", "zz_probe", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "zz_probe" and info["doc"] == "a probe criterion" and info["direction"] == "min"
    assert info["options"] == {
        "k": {"type": "int in [1, inf)", "default": 6, "doc": "neighbours", "range": [1, None]},
        "mode": {"type": "one of ['a', 'b']", "default": "a", "doc": "how", "choices": ["a", "b"]},
        "tau": {"type": "float in [0, 1) or None", "default": None, "doc": "threshold", "range": [0, 1]},
    }


def test_lists_and_text(components, capsys):
    assert main(["criteria", "--json"]) == 0
    names = [c["name"] for c in json.loads(capsys.readouterr().out)]
    assert "zz_probe" in names and "ifd" in names and names == sorted(names)
    assert main(["selectors"]) == 0
    out = capsys.readouterr().out
    assert "zz_pick  " in out or "zz_pick " in out
    assert main(["selectors", "zz_pick"]) == 0
    out = capsys.readouterr().out
    assert "zz_pick: a probe selector" in out and "flag: bool (default False)" in out
    assert main(["criteria", "zz_probe"]) == 0
    assert "k: int in [1, inf) (default 6)" in capsys.readouterr().out


def test_unknown_name_is_one_line(capsys):
    assert main(["criteria", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown criterion 'nope'" in err[0]


def test_every_registered_option_is_listed(capsys):
    """Each registered criterion/selector and each of its options appears, with a non-empty type."""
    for verb, reg in (("criteria", CRITERIA), ("selectors", SELECTORS)):
        assert main([verb, "--json"]) == 0
        got = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
        assert set(got) == set(reg.names())
        for e in reg:
            assert set(got[e.name]["options"]) == set(e.options)
            assert all(o["type"] for o in got[e.name]["options"].values())
