"""User runs for ``thresher compare RUNS.yaml``: parsing, validation, recipe feasibility.

A RUNS file is YAML, either a list of runs or a mapping with a ``runs:`` list::

    runs:
      - name: my-ifd-5pct          # required, unique
        sdf: 0.05                  # or: selected: 5000 and pool: 100000
        pir: 1.62                  # or: setting + sem + blm (PIR computed)
        # setting: same_bench      # same_win | same_bench | other_bench
        # sem: [0.52, 0.61]        # SEM score (or wins) per evaluation set
        # blm: [0.50, 0.58]        # BLM score (or wins); one value is broadcast
        recipe: ifd                # feasibility inputs from the RECIPES registry
        feasibility:               # or given (or overriding the recipe's) here
          trained_llms: 0
          steps: 3
          model_free: false
          dataset_free: true
          proprietary_judge: false
          # public_code: true      (default true), small_proxy: false (default)

``thresher evaluate`` writes such a file (``run.yaml``). Every error names the
file, the run and the field.

Recipes declare their feasibility inputs as ``meta["feasibility"]`` on their
RECIPES entry: a :class:`~thresher.evaluation.comparison.Feasibility` or a dict
with at least ``trained_llms``, ``steps``, ``model_free``, ``dataset_free``,
``proprietary_judge`` (optional ``public_code`` default true, ``small_proxy``
default false). :func:`feasibility_from_recipe` turns one into a Feasibility.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from ..registry import RECIPES
from .comparison import FEASIBILITY_FIELDS, Feasibility, Method, check_sdf, pir, sdf

RUN_FIELDS = (
    "name",
    "sdf",
    "selected",
    "pool",
    "pir",
    "setting",
    "sem",
    "blm",
    "recipe",
    "feasibility",
    "notes",
    "source",
    "metrics",
)


def feasibility_from_recipe(recipe: Any, *, where: str = "recipe") -> Feasibility:
    """Feasibility inputs of a recipe: a RECIPES entry, or a recipe name looked up in RECIPES."""
    entry = recipe
    if isinstance(recipe, str):
        try:
            entry = RECIPES.get(recipe)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    meta = getattr(entry, "meta", None)
    name = getattr(entry, "name", repr(recipe))
    if meta is None:
        raise ValueError(f"{where}: expected a RECIPES entry or a recipe name, got {recipe!r}")
    data = meta.get("feasibility")
    if data is None:
        raise ValueError(
            f"{where}: recipe {name!r} declares no feasibility inputs (meta['feasibility'] with "
            f"{', '.join(FEASIBILITY_FIELDS)}); give them under 'feasibility:'"
        )
    return Feasibility.from_mapping(data, where=f"{where} {name!r}: feasibility")


def _resolve_feasibility(run: Mapping[str, Any], where: str) -> Feasibility:
    given = run.get("feasibility")
    recipe = run.get("recipe")
    if given is not None and not isinstance(given, Mapping):
        raise ValueError(f"{where}: field 'feasibility': expected a mapping, got {given!r}")
    base: dict[str, Any] = {}
    if recipe is not None:
        if not isinstance(recipe, str):
            raise ValueError(f"{where}: field 'recipe': expected a recipe name, got {recipe!r}")
        base = feasibility_from_recipe(recipe, where=f"{where}: field 'recipe'").to_dict()
    merged = {**base, **dict(given or {})}
    if not merged:
        raise ValueError(
            f"{where}: missing feasibility inputs: give 'recipe: NAME' (a thresher recipe) or 'feasibility:' "
            f"with {', '.join(FEASIBILITY_FIELDS)}"
        )
    return Feasibility.from_mapping(merged, where=f"{where}: field 'feasibility'")


def run_to_method(run: Mapping[str, Any], *, where: str = "run") -> Method:
    """Validate one run mapping and turn it into a :class:`Method` (user=True)."""
    if not isinstance(run, Mapping):
        raise ValueError(f"{where}: expected a mapping with name, sdf, pir and feasibility, got {run!r}")
    name = run.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: field 'name': required, a non-empty string (got {name!r})")
    where = f"{where} ({name})"
    unknown = sorted(set(run) - set(RUN_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {', '.join(RUN_FIELDS)}")
    # SDF
    if "sdf" in run:
        if "selected" in run or "pool" in run:
            raise ValueError(f"{where}: field 'sdf': give either sdf or selected + pool, not both")
        try:
            s = check_sdf(run["sdf"], "sdf")
        except ValueError as exc:
            raise ValueError(f"{where}: field {exc}") from None
    elif "selected" in run and "pool" in run:
        try:
            s = sdf(run["selected"], run["pool"])
        except ValueError as exc:
            raise ValueError(f"{where}: field {exc}") from None
    else:
        raise ValueError(f"{where}: field 'sdf': missing (give sdf, or selected and pool)")
    # PIR
    if "pir" in run:
        if any(k in run for k in ("sem", "blm")):
            raise ValueError(f"{where}: field 'pir': give either pir or setting + sem + blm, not both")
        p = run["pir"]
        try:
            p = float(p)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: field 'pir': expected a number, got {run['pir']!r}") from None
        if p != p or p in (float("inf"), float("-inf")):
            raise ValueError(f"{where}: field 'pir': expected a finite number, got {run['pir']!r}")
    else:
        missing = [k for k in ("setting", "sem", "blm") if k not in run]
        if missing:
            raise ValueError(f"{where}: field 'pir': missing (give pir, or setting, sem and blm; missing {missing})")
        try:
            p = pir(run["setting"], run["sem"], run["blm"])
        except ValueError as exc:
            raise ValueError(f"{where}: field {exc}") from None
    feas = _resolve_feasibility(run, where)
    extra = {k: run[k] for k in ("recipe", "setting", "sem", "blm", "metrics") if k in run}
    return Method(
        name.strip(),
        s,
        p,
        feas,
        source=str(run.get("source", "user run")),
        notes=str(run.get("notes", "")),
        user=True,
        extra=extra,
    )


def parse_runs(data: Any, *, where: str = "RUNS") -> list[Method]:
    if isinstance(data, Mapping):
        unknown = sorted(set(data) - {"runs"})
        if "runs" not in data or unknown:
            raise ValueError(
                f"{where}: expected a list of runs or a mapping with a 'runs:' list"
                + (f" (unknown top-level field(s) {unknown})" if unknown else "")
            )
        data = data["runs"]
    if not isinstance(data, list):
        raise ValueError(f"{where}: field 'runs': expected a list of runs, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{where}: field 'runs': no runs")
    methods = [run_to_method(r, where=f"{where}: runs[{i}]") for i, r in enumerate(data)]
    names = [m.name for m in methods]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: duplicate run name(s) {dup}")
    return methods


def load_runs(path: Union[str, Path]) -> list[Method]:
    """Read a RUNS.yaml file; errors name the file, the run and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such RUNS file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}:{loc} malformed YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        raise ValueError(f"{path}: empty RUNS file")
    return parse_runs(data, where=str(path))


def run_entry(
    name: str,
    *,
    sdf_value: float,
    pir_value: Optional[float] = None,
    setting: Optional[str] = None,
    sem: Any = None,
    blm: Any = None,
    recipe: Optional[str] = None,
    feasibility: Optional[Union[Feasibility, Mapping[str, Any]]] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    notes: str = "",
) -> dict[str, Any]:
    """A run mapping that :func:`parse_runs` accepts (validated by building it)."""
    run: dict[str, Any] = {"name": name, "sdf": float(sdf_value)}
    if pir_value is not None:
        run["pir"] = float(pir_value)
    else:
        run.update({"setting": setting, "sem": list(sem), "blm": list(blm)})
    if recipe is not None:
        run["recipe"] = recipe
    if feasibility is not None:
        run["feasibility"] = feasibility.to_dict() if isinstance(feasibility, Feasibility) else dict(feasibility)
    if metrics:
        run["metrics"] = dict(metrics)
    if notes:
        run["notes"] = notes
    run_to_method(run)  # validate
    return run
