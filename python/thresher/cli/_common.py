"""The one CLI vocabulary: argument builders and helpers shared by every verb.

Flags mean the same on every verb that has them:

* input: ``--format``, ``--field TARGET=COLUMN``, ``--group-field``, ``--on-bad-row error|skip``
  (default error), ``--shard-size``, ``--limit``, ``--split``;
* criteria: ``--criteria NAME[,NAME]``, ``--criterion-option NAME.KEY=VALUE``, ``--model``,
  ``--embedder`` and the options many criteria share (``--batch-tokens``, ``--max-length``,
  ``--template``, ``--dtype``, ``--device``: handed to the recipe and to every criterion that
  declares them; an error when none does);
* selection: ``--recipe``, ``--option KEY=VALUE`` (recipe options), ``--selector``,
  ``--selector-option KEY=VALUE``, ``--filter EXPR``, one budget ``--k | --ratio | --tokens``;
* run: ``--out``, ``--overwrite``, ``--cache-dir``, ``--engine``, ``--seed``, ``--plugin``, ``--quiet``;
* output: ``--json`` (a machine summary on stdout) and ``--dry-run`` (the expanded plan; reads no
  data and loads no model).

Values of ``KEY=VALUE`` are read as YAML scalars or lists (``k=3``, ``w=[1, 2]``, ``x=null``).
Older spellings (``--force``, ``--chunk``, ``--fail-fast``, ``--option CRITERION.KEY=VALUE``,
``--method``, ``--group``, ...) still work, hidden from ``--help``, and print a one-line notice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Optional

from ..device import DTYPE_CHOICES
from ..errors import OptionError
from ..pipeline import PipelineConfig, make_plan
from ..pipeline.plugins import load_plugins, plugin_names
from ..plan import CHECKPOINT_S

#: Criterion options with a flag of their own (``--max-length`` -> ``max_length``).
SHARED_CRITERION_FLAGS = ("batch_tokens", "batching", "max_length", "template", "dtype", "device", "index_kind")
INDEX_FLAG = {"exact": "exact", "ivf": "ivf_flat", "ivf_flat": "ivf_flat", "ivfpq": "ivf_pq", "ivf_pq": "ivf_pq",
              "hnsw": "hnsw"}  # fmt: skip


def index_kind(value: str) -> str:
    """``--index`` value -> the kNN criteria's ``index_kind`` option."""
    if value not in INDEX_FLAG:
        raise argparse.ArgumentTypeError(f"expected one of exact, ivf, ivfpq, hnsw; got {value!r}")
    return INDEX_FLAG[value]


# ------------------------------------------------------------------ values
def parse_kv(items: Optional[list], what: str) -> dict:
    """``["a=1", "b=[x, y]"]`` -> ``{"a": 1, "b": ["x", "y"]}`` (values read as YAML scalars/lists)."""
    import yaml

    out: dict = {}
    for it in items or []:
        if "=" not in it:
            raise OptionError(f"{what}: expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        k = k.strip()
        if not k:
            raise OptionError(f"{what}: empty key in {it!r}")
        try:
            out[k] = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError:
            out[k] = v
    return out


def notice(msg: str) -> None:
    print(f"thresher: note: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ deprecated spellings
class _Deprecated(argparse.Action):
    """An old spelling: does what ``new`` does and prints a one-line notice."""

    def __init__(self, option_strings: list, dest: str, new: str = "", flag: bool = False, **kw: Any) -> None:
        self.new, self.flag, self.const_value = new, flag, kw.pop("const", True)
        super().__init__(option_strings, dest, nargs=0 if flag else kw.pop("nargs", None), **kw)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Optional[str] = None) -> None:
        notice(f"{option_string} is deprecated; use {self.new}")
        if self.flag:
            setattr(namespace, self.dest, self.const_value)
        else:
            setattr(namespace, self.dest, values)


def deprecated(p: Any, old: str, dest: str, new: str, *, flag: bool = False, const: Any = True, **kw: Any) -> None:
    """Add ``old`` as a hidden alias writing ``dest`` (``flag``: takes no value, sets ``const``)."""
    extra = {"const": const} if flag else {}
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, flag=flag, help=argparse.SUPPRESS, **extra, **kw)


class _AppendDeprecated(argparse.Action):
    """An old flag for one ``KEY=VALUE`` of a repeatable flag (``--method rrf`` -> ``--option method=rrf``)."""

    def __init__(self, option_strings: list, dest: str, new: str = "", key: str = "", **kw: Any) -> None:
        self.new, self.key = new, key
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Optional[str] = None) -> None:
        notice(f"{option_string} is deprecated; use {self.new} {self.key}={values}")
        setattr(namespace, self.dest, list(getattr(namespace, self.dest, None) or []) + [f"{self.key}={values}"])


def deprecated_kv(p: Any, old: str, dest: str, new: str, key: str) -> None:
    """Add ``old VALUE`` as a hidden alias of ``new KEY=VALUE`` (appended to ``dest``)."""
    p.add_argument(old, dest=dest, action=_AppendDeprecated, new=new, key=key, help=argparse.SUPPRESS)


# ------------------------------------------------------------------ argument builders
def add_data_args(p: argparse.ArgumentParser, *, shard_size: int = 4096) -> None:
    g = p.add_argument_group("input")
    g.add_argument(
        "--format",
        choices=["jsonl", "json", "parquet", "csv", "hf"],
        default=None,
        help="input format (default: from the extension; folders: HF dataset or the files inside)",
    )
    g.add_argument(
        "--field",
        action="append",
        metavar="TARGET=COLUMN",
        default=None,
        help="explicit field mapping, e.g. --field instruction=question --field output=answer "
        "(targets: instruction, input, output, conversation, id, group)",
    )
    g.add_argument("--group-field", default=None, help="column holding the task/source (default: task, source, ...)")
    g.add_argument(
        "--on-bad-row",
        choices=["error", "skip"],
        default="error",
        help="error (default): stop at the first bad row naming file, line and field; skip: count and "
        "report skipped rows",
    )
    g.add_argument(
        "--shard-size",
        type=int,
        default=shard_size,
        help=f"rows per shard (memory and cache granularity; {shard_size})",
    )
    g.add_argument("--limit", type=int, default=None, help="read only the first N good rows")
    g.add_argument(
        "--split",
        default=None,
        metavar="NAME",
        help="the split to read of a saved DatasetDict folder (train, test, ...)",
    )
    deprecated(g, "--chunk", "shard_size", "--shard-size", type=int)
    deprecated(g, "--fail-fast", "on_bad_row", "--on-bad-row error (the default)", flag=True, const="error")


def add_criteria_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = p.add_argument_group("criteria")
    g.add_argument(
        "--criteria",
        required=required,
        default=None,
        metavar="NAME[,NAME]",
        help="comma-separated criteria (see `thresher criteria`); with --recipe they replace the recipe's",
    )
    g.add_argument(
        "--criterion-option",
        action="append",
        default=None,
        metavar="NAME.KEY=VALUE",
        help="option of one criterion, e.g. ifd.max_length=256 (repeatable)",
    )
    g.add_argument("--model", default=None, help="causal LM for model-based criteria: default | PATH | HF id")
    g.add_argument("--embedder", default=None, help="sentence embedder for embedding criteria: default | PATH | HF id")
    g.add_argument("--batch-tokens", type=int, default=None, help="token budget of one model batch (criteria: 4096)")
    g.add_argument(
        "--batching",
        default=None,
        choices=("bucket", "pack", "row"),
        help="how model-based criteria batch rows: bucket (default: length buckets), row (one row per forward: the "
        "same score bits under every shard layout and engine, slower) or pack (loss criteria only)",
    )
    g.add_argument("--max-length", type=int, default=None, help="max tokens per sample (default per criterion)")
    g.add_argument("--template", default=None, help="prompt template: alpaca | chat | plain | wiz")
    g.add_argument(
        "--dtype", default=None, choices=DTYPE_CHOICES, help="model dtype (default auto: bf16 on a bf16 GPU, else fp32)"
    )
    g.add_argument("--device", default=None, help="torch device: auto (default: cuda when visible), cpu, cuda, cuda:N")
    g.add_argument(
        "--index",
        dest="index_kind",
        default=None,
        type=index_kind,
        metavar="{exact,ivf,ivfpq,hnsw}",
        help="neighbour search of the kNN criteria: exact (default, at any size) or an approximate FAISS index "
        "(its recall, measured on a sample of queries, is written to the manifest)",
    )


def add_selection_args(p: argparse.ArgumentParser, *, recipe_only: bool = False) -> None:
    g = p.add_argument_group("selection")
    g.add_argument("--recipe", default=None, help="recipe name (see `thresher recipes`)")
    g.add_argument("--option", action="append", default=None, metavar="KEY=VALUE", help="recipe option (repeatable)")
    if recipe_only:
        return
    g.add_argument("--selector", default=None, help="selector (see `thresher selectors`): topk, pareto, ...")
    g.add_argument("--selector-option", action="append", default=None, metavar="KEY=VALUE", help="(repeatable)")
    g.add_argument("--filter", action="append", default=None, metavar="EXPR", help="eligibility filter, 'ifd <= 1'")


def add_output_args(p: argparse.ArgumentParser, *, dry_run: bool = True) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    if dry_run:
        g.add_argument(
            "--dry-run",
            action="store_true",
            help="print the expanded plan (criteria with resolved options, selector, filters, budget) and stop: "
            "reads no data, loads no model",
        )


def add_overwrite_arg(p: Any, what: str = "replace another run's results in --out") -> None:
    p.add_argument("--overwrite", action="store_true", help=what)
    deprecated(p, "--force", "overwrite", "--overwrite", flag=True)


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    add_overwrite_arg(g, "replace another run's results in --out (the content-keyed score cache is kept)")
    g.add_argument("--cache-dir", default=None, help="score cache folder (default OUT/cache; share it across runs)")
    add_checkpoint_arg(g)
    add_engine_args(g)
    g.add_argument("--seed", type=int, default=0)
    add_plugin_args(g)
    g.add_argument("--quiet", action="store_true", help="no progress bars or messages (the log file still is written)")


def add_checkpoint_arg(g: Any) -> None:
    g.add_argument(
        "--checkpoint-every",
        dest="checkpoint_s",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"save the work done so far every SECONDS (default {CHECKPOINT_S:g}; 0: whole shards and whole "
        "pool-wide calls only): the rows of a shard, the query blocks of a kNN search, semdedup's clusters, "
        "nuggets' candidates, SHED's coalition values, necessity's ratings, answers and seed LoRA, the steps of "
        "SHED's and necessity's LoRA fine-tunes; a killed run resumes there",
    )


ENGINE_FLAGS = {"ray_address": "address", "workers": "workers", "gpus_per_worker": "gpus_per_worker"}


def add_engine_args(g: Any, *, default: Optional[str] = "local") -> None:
    """``--engine`` and the Ray engine's ``--ray-address``, ``--workers``, ``--gpus-per-worker``."""
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default=default,
        help="local (default): this process; ray: a pool of Ray workers (pip install 'thresher[ray]')",
    )
    g.add_argument("--ray-address", default=None, help="Ray cluster to join (with --engine ray; default: a local Ray)")
    g.add_argument("--workers", type=int, default=None, help="Ray worker processes (with --engine ray; default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Ray worker (with --engine ray)")


def engine_options(args: Any) -> dict:
    """The engine options the flags give; a Ray flag without ``--engine ray`` is refused (never ignored)."""
    got = {opt: getattr(args, flag) for flag, opt in ENGINE_FLAGS.items() if getattr(args, flag, None) is not None}
    if got and getattr(args, "engine", None) != "ray":
        flags = ", ".join("--" + f.replace("_", "-") for f, o in ENGINE_FLAGS.items() if o in got)
        raise OptionError(f"{flags}: only with --engine ray")
    return got


def add_plugin_args(g: Any, *, config: bool = False) -> None:
    """``--plugin`` (repeatable) and, for verbs reading a config file, ``--allow-plugins``:
    the only ways a command imports user code."""
    g.add_argument(
        "--plugin",
        action="append",
        default=None,
        metavar="MODULE_OR_FILE",
        help="import a module or .py file that registers extra criteria/selectors/recipes (repeatable)",
    )
    if config:
        g.add_argument(
            "--allow-plugins",
            action="store_true",
            help="also import the plugins the config file names (its plugins: key); never done without this flag",
        )


def add_budget_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--ratio", type=float, default=None, help="select this fraction of the pool")
    g.add_argument("--k", type=int, default=None, help="select N samples")
    g.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="select the longest best-first prefix of at most T tokens (the scoring model's tokenizer when a "
        "criterion loads one, else approximate)",
    )


# ------------------------------------------------------------------ from arguments to a config
def check_positive(args: Any) -> None:
    """Integer flags that must be >= 1 (or >= 2), checked before anything runs."""
    for flag, low in (("batch_tokens", 1), ("max_length", 2), ("shard_size", 1), ("limit", 1)):
        value = getattr(args, flag, None)
        if value is not None and value < low:
            raise OptionError(f"--{flag.replace('_', '-')}: must be >= {low}, got {value}")


def split_options(args: Any) -> tuple[dict, list]:
    """``--option`` values: recipe options, and the older ``--option CRITERION.KEY=VALUE`` spelling
    (a dotted key is never a recipe option), moved to ``--criterion-option`` with a notice."""
    recipe, crit = [], list(getattr(args, "criterion_option", None) or [])
    for item in getattr(args, "option", None) or []:
        if "." in item.split("=", 1)[0]:
            notice(f"--option {item}: a criterion option; write --criterion-option {item}")
            crit.append(item)
        else:
            recipe.append(item)
    return parse_kv(recipe, "--option"), crit


def criteria_steps(spec: Optional[str], options: Optional[list]) -> list:
    """``--criteria ifd,knn_distance`` plus ``--criterion-option ifd.max_length=256``."""
    names = [c.strip() for c in (spec or "").split(",") if c.strip()]
    opts = parse_kv(options, "--criterion-option")
    if not names:
        if spec is not None:
            raise OptionError("--criteria: give at least one criterion name")
        if opts:
            raise OptionError("--criterion-option needs --criteria (a recipe's criteria take --option)")
        return []
    steps = []
    for n in names:
        o = {}
        for k, v in opts.items():
            if "." not in k:
                raise OptionError(f"--criterion-option: write CRITERION.OPTION=VALUE, got {k!r}")
            c, _, name = k.partition(".")
            if c == n:
                o[name] = v
        steps.append({"name": n, "options": o})
    unknown = {k.partition(".")[0] for k in opts} - set(names)
    if unknown:
        raise OptionError(f"--criterion-option: {sorted(unknown)} not in --criteria {names}")
    return steps


def selector_step(args: Any) -> Optional[dict]:
    if getattr(args, "selector", None):
        return {"name": args.selector, "options": parse_kv(args.selector_option, "--selector-option")}
    if getattr(args, "selector_option", None):
        raise OptionError("--selector-option needs --selector")
    return None


def criterion_defaults(args: Any) -> dict:
    """The shared criterion flags that were given (``--max-length 256`` -> ``{"max_length": 256}``)."""
    return {k: getattr(args, k) for k in SHARED_CRITERION_FLAGS if getattr(args, k, None) is not None}


def common_config(args: Any) -> dict:
    """PipelineConfig keywords from the input, criteria-wide and run flags a verb has."""
    fields = parse_kv(args.field, "--field") if getattr(args, "field", None) else None
    if fields:
        fields = {k: (None if v in (None, "") else str(v)) for k, v in fields.items()}
    return dict(
        format=args.format,
        fields=fields,
        group_field=args.group_field,
        on_bad_row=args.on_bad_row,
        shard_size=args.shard_size,
        checkpoint_s=CHECKPOINT_S if getattr(args, "checkpoint_s", None) is None else args.checkpoint_s,
        limit=args.limit,
        split=getattr(args, "split", None),
        overwrite=getattr(args, "overwrite", False),
        cache_dir=getattr(args, "cache_dir", None),
        engine=getattr(args, "engine", "local"),
        engine_options=engine_options(args),
        seed=getattr(args, "seed", 0),
        plugins=getattr(args, "plugin", None) or [],
        quiet=getattr(args, "quiet", False) or getattr(args, "json", False),
        model=getattr(args, "model", None),
        embedder=getattr(args, "embedder", None),
        criterion_defaults=criterion_defaults(args),
    )


# ------------------------------------------------------------------ --dry-run and --json
def plan_preview(cfg: PipelineConfig) -> dict:
    """The expanded plan of ``cfg`` without reading data or loading a model (plugins are imported:
    they may register the components the plan names)."""
    load_plugins(plugin_names(cfg))
    plan = make_plan(cfg)
    info = plan.describe()
    info["budget"] = None if cfg.score_only else (cfg.budget() or plan.budget)
    info["score_only"] = cfg.score_only
    info["needs_embeddings"] = plan.needs_embeddings
    info.update(
        data=str(cfg.data),
        out=None if cfg.out is None else str(cfg.out),
        engine=cfg.engine,
        input={"format": cfg.format, "fields": cfg.fields, "on_bad_row": cfg.on_bad_row,
               "shard_size": cfg.shard_size, "limit": cfg.limit, "split": cfg.split},
    )  # fmt: skip
    return info


def _plain(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become null (strict JSON has neither), numpy scalars Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def emit_json(obj: Any) -> None:
    """``obj`` as strict JSON on stdout (the ``--json`` output of every verb)."""
    print(json.dumps(_plain(obj), indent=2, default=str, allow_nan=False), flush=True)


def print_plan(info: dict, as_json: bool) -> None:
    """A dry run's plan: JSON, or one line per part."""
    if as_json:
        emit_json({"dry_run": True, **info})
        return
    print(f"plan (dry run; nothing read or written): {info.get('data')} -> {info.get('out') or '-'}")
    if info.get("recipe"):
        print(f"  recipe:   {info['recipe']} {json.dumps(info.get('recipe_options') or {}, default=str)}")
    for c in info.get("criteria", []):
        alias = f" as {c['alias']}" if c.get("alias") else ""
        print(f"  criterion {c['name']}{alias}: {json.dumps(c.get('options') or {}, default=str)}")
    if not info.get("score_only", False) and info.get("selector"):
        sel = info["selector"]
        print(f"  selector: {sel['name']} {json.dumps(sel.get('options') or {}, default=str)}")
        print(f"  filters:  {info.get('filters') or 'none'}")
        print(
            f"  budget:   {info.get('budget')}"
            + (f" (ratio base {info['ratio_base']})" if info.get("ratio_base") else "")
        )
    extra = {k: v for k, v in info.items() if k in ("engine", "input")}
    print(f"  run:      {json.dumps(extra, default=str)}")


def result_summary(res: Any) -> dict:
    """The machine summary of a pipeline run (``--json``)."""
    return {
        "out": None if res.out is None else str(res.out),
        "rows": int(res.n_rows),
        "selected": int(len(res.selected)),
        "k": int(res.k),
        "outputs": {
            name: str(p)
            for name, p in (("selected", res.selected_path), ("scores", res.scores_path), ("report", res.report_path))
            if p is not None
        },
        "skipped": len(res.skipped),
        "cache": {"hits": int(res.cache_hits), "misses": int(res.cache_misses)},
        "timings": res.timings,
    }


def print_summary(res: Any, quiet: bool, as_json: bool = False) -> None:
    if as_json:
        emit_json(result_summary(res))
        return
    if quiet:
        return
    print(f"selected {len(res.selected)} of {res.n_rows} rows -> {res.out}")
    for p in (res.selected_path, res.scores_path, res.report_path):
        if p is not None:
            print(f"  {p}")
    if res.skipped:
        print(f"  skipped {len(res.skipped)} bad row(s); see manifest.json")
