"""The architecture's rules as tests: one-way layers, no import cycles, small functions,
documentation inside the repo."""

from __future__ import annotations

import ast
import re

from tools.layers import PKG, ROOT, all_modules, imports_of, layer_violations

FN_LIMIT = 80


def test_imports_flow_down_the_layers():
    assert layer_violations() == []


def _graph() -> dict[str, set[str]]:
    mods = all_modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        edges = set()
        for t in imports_of(path, mod):
            while t and t not in mods:
                t = t.rpartition(".")[0]
            # a package's __init__ that only re-exports its submodules is not an edge back into them
            if t and t != mod and not (mods[t].name == "__init__.py" and mod.startswith(t + ".")):
                edges.add(t)
        graph[mod] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_function_over_the_limit():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > FN_LIMIT:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_docs_cited_by_the_code_are_in_the_repo():
    outside = []
    for path in sorted(list(PKG.rglob("*.py")) + list((ROOT / "kernels").glob("*.py"))):
        text = path.read_text(encoding="utf-8")
        if re.search(r"\.\./shared/reference|shared/reference/", text):
            outside.append(str(path.relative_to(ROOT)))
        for doc in re.findall(r"docs/[\w./-]+\.md", text):
            if not (ROOT / doc).is_file():
                outside.append(f"{path.relative_to(ROOT)} cites missing {doc}")
    assert outside == []


def test_adding_a_criterion_is_one_file(tmp_path, monkeypatch):
    """A module dropped into thresher/criteria registers its criterion with no other edit."""
    import thresher.criteria
    from thresher import registry

    (tmp_path / "my_new_criterion.py").write_text(
        "from thresher.criteria.base import Criterion\n"
        "from thresher.registry import CRITERIA, Option\n\n"
        "@CRITERIA.register('my_new_criterion', doc='test', options=[Option('scale', 1.0, 'x')])\n"
        "class MyNew(Criterion):\n"
        "    VERSION = '1'\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(thresher.criteria, "__path__", [*thresher.criteria.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        assert "thresher.criteria.my_new_criterion" in registry.builtin_modules()
        entry = registry.CRITERIA.get("my_new_criterion")
        assert entry.obj.NAME == "my_new_criterion"
        assert entry.resolve_options({"scale": 2}) == {"scale": 2.0}
    finally:
        registry.CRITERIA.unregister("my_new_criterion")
        import sys

        sys.modules.pop("thresher.criteria.my_new_criterion", None)
