"""`thresher recipes [NAME] [--json]`: the recipes with their steps, options, feasibility and sources."""

from __future__ import annotations

import json
from typing import Any

from ..registry import RECIPES


def describe(entry: Any) -> dict:
    r = entry.obj
    return {
        "name": entry.name,
        "doc": entry.doc,
        "paper": entry.meta.get("paper"),
        "sources": entry.meta.get("sources", []),
        "feasibility": entry.meta.get("feasibility"),
        "options": {
            k: {
                "type": o.describe_type(),
                "default": o.default,
                "doc": o.doc,
                **({"choices": list(o.choices)} if o.choices else {}),
            }
            for k, o in entry.options.items()
        },
        "steps": {
            "criteria": r.criteria,
            "selector": r.selector,
            "filters": r.filters,
            "budget": r.budget,
            "embeddings": r.embeddings,
            "variants": r.variants,
        },
        "notes": r.notes,
    }


def run(args: Any) -> int:

    entries = [RECIPES.get(args.name)] if args.name else list(RECIPES)
    info = [describe(e) for e in entries]
    if args.json:
        print(json.dumps(info if args.name is None else info[0], indent=2, default=str))
        return 0
    if args.name is None:
        w = max(len(e["name"]) for e in info)
        for e in info:
            print(f"{e['name']:{w}s}  {e['doc']}")
            print(
                f"{'':{w}s}  source: {'; '.join(e['sources'])}"
                + (f" | paper: {e['paper']}" if e["paper"] not in (None, "-") else "")
            )
        print("\n`thresher recipes NAME` for steps, options and feasibility inputs.")
        return 0
    e = info[0]
    print(f"{e['name']}: {e['doc']}\n")
    if e["paper"] not in (None, "-"):
        print(f"paper:   {e['paper']}")
    print(f"sources: {'; '.join(e['sources'])}")
    s = e["steps"]
    print(
        "criteria: "
        + (
            ", ".join(f"{c.get('as', c['name'])}={c['name']}{c.get('options') or ''}" for c in s["criteria"])
            or "(given by options)"
        )
    )
    print(f"selector: {s['selector']['name']} {s['selector'].get('options') or ''}")
    print(f"filters:  {s['filters'] or 'none'}   default budget: {s['budget']}   embeddings: {s['embeddings']}")
    print("options:")
    for k, o in e["options"].items():
        print(f"  {k}: {o['type']} (default {o['default']!r}): {o['doc']}")
    if s["variants"]:
        print(f"variants: {json.dumps(s['variants'])}")
    print(f"feasibility: {e['feasibility']}")
    if e["notes"]:
        print(f"\n{e['notes']}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("recipes", help="list the selection recipes with their sources")
    p.add_argument("name", nargs="?", default=None, help="show one recipe in detail")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(func=run)
