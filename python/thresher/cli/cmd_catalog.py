"""`thresher criteria [NAME]` and `thresher selectors [NAME]`: the registered components and their options.

Each option is listed with its type and range (or choices), default and doc, as the
registry validates it; `--json` prints the same for tools. Plugins (--plugin) add
their own components to the lists.
"""

from __future__ import annotations

from typing import Any

from ..pipeline.plugins import load_plugins
from ..registry import CRITERIA, SELECTORS, Registry
from ._common import add_plugin_args, emit_json

_META_SKIP = ("reads",)  # callables: not printable


def describe_option(o: Any) -> dict:
    out = {"type": o.describe_type(), "default": o.default, "doc": o.doc}
    if o.choices is not None:
        out["choices"] = list(o.choices)
    if o.min is not None or o.max is not None:
        out["range"] = [o.min, o.max]
    return out


def describe(entry: Any) -> dict:
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in entry.meta.items() if k not in _META_SKIP}
    return {
        "name": entry.name,
        "doc": entry.doc,
        **{k: v for k, v in meta.items() if not callable(v)},
        "options": {k: describe_option(o) for k, o in entry.options.items()},
    }


def _show_one(info: dict) -> None:
    print(f"{info['name']}: {info['doc']}")
    for k in ("direction", "scope", "needs", "components"):
        if info.get(k):
            v = info[k]
            print(f"  {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}")
    if not info["options"]:
        print("  options: none")
        return
    print("  options:")
    for k, o in info["options"].items():
        print(f"    {k}: {o['type']} (default {o['default']!r})")
        if o["doc"]:
            print(f"        {o['doc']}")


def _show_all(infos: list, kind: str, verb: str) -> None:
    w = max([len(i["name"]) for i in infos] + [4])
    for i in infos:
        tag = f" [{i['direction']}]" if i.get("direction") else ""
        print(f"{i['name']:{w}s}  {i['doc']}{tag}")
    print(f"\n{len(infos)} {kind}; `thresher {verb} NAME` for the options.")


def _runner(reg: Registry, kind: str, verb: str) -> Any:
    def run(args: Any) -> int:
        load_plugins(args.plugin or [])
        infos = [describe(reg.get(args.name))] if args.name else [describe(e) for e in reg]
        if args.json:
            emit_json(infos[0] if args.name else infos)
        elif args.name:
            _show_one(infos[0])
        else:
            _show_all(infos, kind, verb)
        return 0

    return run


def register(sub: Any) -> None:
    for verb, reg, kind in (("criteria", CRITERIA, "criteria"), ("selectors", SELECTORS, "selectors")):
        p = sub.add_parser(
            verb,
            help=f"list the {kind} with their options (type, range, default)",
            description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        )
        p.add_argument("name", nargs="?", default=None, help=f"show one of the {kind} in detail")
        p.add_argument("--json", action="store_true", help="print the same as JSON")
        add_plugin_args(p)
        p.set_defaults(func=_runner(reg, kind, verb))
