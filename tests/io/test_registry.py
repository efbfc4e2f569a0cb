"""Typed options: validated in one place, with errors that name the option."""

from __future__ import annotations

import pytest

from thresher.errors import OptionError
from thresher.registry import Entry, Option, Registry


def entry(*options: Option) -> Entry:
    return Entry("thing", object(), "doc", {o.name: o for o in options})


def test_defaults_fill_in_and_types_are_inferred_from_defaults():
    e = entry(Option("k", 6, "neighbours", min=1), Option("tau", 0.9, "threshold"), Option("on", True, "flag"))
    assert e.resolve_options({}) == {"k": 6, "tau": 0.9, "on": True}
    assert e.resolve_options({"k": 7.0, "tau": 1}) == {"k": 7, "tau": 1.0, "on": True}
    for bad in ({"k": "7"}, {"k": 7.5}, {"k": True}, {"tau": [1, 2]}, {"on": 1}, {"tau": "x"}):
        with pytest.raises(OptionError, match=f"thing: option {next(iter(bad))}"):
            e.resolve_options(bad)


def test_ranges_choices_and_none():
    e = entry(
        Option("ratio", 0.5, "fraction", min=0.0, max=1.0, min_exclusive=True),
        Option("block", None, "block", type=int, min=1),
        Option("mode", "a", "mode", choices=("a", "b")),
        Option("n", 3, "count", min=0),
    )
    assert e.resolve_options({"ratio": 1.0, "block": None})["ratio"] == 1.0
    assert e.resolve_options({"block": 4})["block"] == 4
    with pytest.raises(OptionError, match=r"ratio: expected float in \(0.0, 1.0\]"):
        e.resolve_options({"ratio": 0.0})
    with pytest.raises(OptionError, match="block"):
        e.resolve_options({"block": -1})
    with pytest.raises(OptionError, match="mode='c' not in"):
        e.resolve_options({"mode": "c"})
    with pytest.raises(OptionError, match="n: a value is required"):
        e.resolve_options({"n": None})
    with pytest.raises(OptionError, match="got nan"):
        e.resolve_options({"ratio": float("nan")})


def test_unknown_options_are_refused_with_the_known_ones():
    with pytest.raises(OptionError, match=r"unknown option\(s\) \['x'\]; known: \['k'\]"):
        entry(Option("k", 1, "k")).resolve_options({"x": 1})


def test_an_option_error_is_a_value_error_for_older_callers():
    assert issubclass(OptionError, ValueError)


def test_registering_a_class_writes_its_name_once():
    reg: Registry = Registry("thing")

    @reg.register("alpha", doc="a")
    class Alpha:
        pass

    assert Alpha.NAME == "alpha"  # type: ignore[attr-defined]
    assert reg._entries["alpha"].obj is Alpha
