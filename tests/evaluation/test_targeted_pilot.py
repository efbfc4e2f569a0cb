"""The targeted benchmark's ``learnable`` pilot never sees the rows the benchmark evaluates on."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.targeted_pilot import pilot_sets, task_split


def _by_task():
    return {
        t: [{"id": f"{t}-{i}", "task": t, "instruction": f"{t} q{i}", "output": "yes" if i % 2 else "no"}
            for i in range(n)]
        for t, n in (("a", 60), ("b", 45), ("c", 80), ("d", 30))
    }  # fmt: skip


def test_task_split_depends_on_the_task_alone():
    by = _by_task()
    ref, ev, rest = task_split(by["a"], "a", 0, 5, 7)
    assert (len(ref), len(ev), len(rest)) == (5, 7, 48)
    assert sorted(r["id"] for r in ref + ev + rest) == sorted(r["id"] for r in by["a"])
    assert task_split(list(by["a"]), "a", 0, 5, 7) == (ref, ev, rest)  # no shared generator state
    assert task_split(by["a"], "a", 1, 5, 7)[1] != ev  # the seed changes it


def test_the_pilot_uses_neither_reference_nor_evaluation_rows():
    by = _by_task()
    args = SimpleNamespace(seed=3, ref=4, eval=6, pilot_eval=5)
    train, other, ev = pilot_sets(by, ["a", "b", "c"], args)
    held = {r["id"] for t in ("a", "b", "c") for r in sum(task_split(by[t], t, 3, 4, 6)[:2], [])}
    used = set(train["id"]) | set(ev["id"])
    assert not used & held and len(held) == 30
    assert len(ev) == 15 and ev["task"].value_counts().to_dict() == {"a": 5, "b": 5, "c": 5}
    assert len(train) == (60 + 45 + 80) - 30 - 15 and not set(train["id"]) & set(ev["id"])
    assert set(other["task"]) == {"d"} and len(other) == 30  # as many as there are, at most len(train)
